//! `/dev/mail`: in demo mode, the mail the file transport wrote, so that a
//! newcomer without a mail server can read it and click the sign-in link.
//! It answers only when `Settings::serves_dev_mail` says so (the demo, on a
//! loopback listener), and 404 otherwise.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::Html;
use axum::routing::get;
use axum::Router;
use maud::{html, Markup, PreEscaped, DOCTYPE};
use rust_i18n::t;

use crate::config::Settings;
use crate::error::AppError;
use crate::i18n::current_locale;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/dev/mail", get(list))
        .route("/dev/mail/{id}", get(one))
}

#[tracing::instrument(skip(settings))]
async fn list(State(settings): State<Arc<Settings>>) -> Result<Html<String>, AppError> {
    if !settings.serves_dev_mail() {
        return Err(AppError::NotFound);
    }
    let locale = current_locale();
    let lang = locale.code();
    let mails =
        notify::mailbox::list(&settings.outbox_dir()).map_err(|e| AppError::Internal(e.into()))?;
    let body = html! {
        @if mails.is_empty() {
            p { (t!("devmail.empty", locale = lang)) }
        } @else {
            table {
                caption { (t!("devmail.caption", locale = lang)) }
                thead {
                    tr {
                        th scope="col" { (t!("devmail.subject", locale = lang)) }
                        th scope="col" { (t!("devmail.to", locale = lang)) }
                        th scope="col" { (t!("devmail.date", locale = lang)) }
                    }
                }
                tbody {
                    @for m in &mails {
                        tr {
                            td { a href={ "/dev/mail/" (m.id) } { (m.subject) } }
                            td { (m.to) }
                            td { time { (m.date.map(crate::api::show_time).unwrap_or_default()) } }
                        }
                    }
                }
            }
        }
    };
    Ok(Html(page(lang, &t!("devmail.title", locale = lang), body)))
}

#[tracing::instrument(skip(settings))]
async fn one(
    State(settings): State<Arc<Settings>>,
    Path(id): Path<String>,
) -> Result<Html<String>, AppError> {
    if !settings.serves_dev_mail() {
        return Err(AppError::NotFound);
    }
    let locale = current_locale();
    let lang = locale.code();
    let mail = notify::mailbox::read(&settings.outbox_dir(), &id)
        .map_err(|e| AppError::Internal(e.into()))?
        .ok_or(AppError::NotFound)?;
    let html_title = t!("devmail.html", locale = lang);
    let body = html! {
        p { a href="/dev/mail" { (t!("devmail.back", locale = lang)) } }
        dl {
            dt { (t!("devmail.to", locale = lang)) }
            dd { (mail.to) }
            dt { (t!("devmail.subject", locale = lang)) }
            dd { (mail.subject) }
        }
        h2 { (t!("devmail.links", locale = lang)) }
        ul {
            @for l in &mail.links {
                li { a href=(l) { (l) } }
            }
        }
        h2 { (t!("devmail.text", locale = lang)) }
        pre { (mail.text) }
        h2 { (html_title) }
        iframe title=(html_title) sandbox srcdoc=(mail.html)
            style="width:100%;min-height:20rem;border:1px solid #888" {}
        @if let Some(c) = &mail.calendar {
            h2 { (t!("devmail.calendar", locale = lang)) }
            p { "METHOD: " (c.method.as_deref().unwrap_or("-")) }
            pre { (c.ics) }
        }
    };
    Ok(Html(page(lang, &mail.subject, body)))
}

/// The mailbox's own small style sheet: a fixed text, not from any mail.
const STYLE: &str =
    "body{font-family:system-ui,sans-serif;max-width:60rem;margin:auto;padding:1rem}\
table{border-collapse:collapse;width:100%}\
td,th{border-bottom:1px solid #ccc;padding:.4rem;text-align:start}\
pre{white-space:pre-wrap}a:focus{outline:3px solid #1a5fb4}";

fn page(lang: &str, title: &str, body: Markup) -> String {
    let dir = if lang == "ar" { "rtl" } else { "ltr" };
    html! {
        (DOCTYPE)
        html lang=(lang) dir=(dir) {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) }
                style { (PreEscaped(STYLE)) }
            }
            body {
                main {
                    h1 { (title) }
                    p { (t!("devmail.note", locale = lang)) }
                    (body)
                }
            }
        }
    }
    .into_string()
}
