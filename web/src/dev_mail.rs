//! `/dev/mail`: in demo mode, the mail the file transport wrote, so that a
//! newcomer without a mail server can read it and click the sign-in link.
//! It answers only when `Settings::serves_dev_mail` says so (the demo, on a
//! loopback listener), and 404 otherwise.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::Html;
use axum::routing::get;
use axum::Router;
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
    let mut rows = String::new();
    for m in &mails {
        let date = m.date.map(crate::api::show_time).unwrap_or_default();
        rows.push_str(&format!(
            "<tr><td><a href=\"/dev/mail/{id}\">{subject}</a></td><td>{to}</td><td><time>{date}</time></td></tr>",
            id = escape(&m.id),
            subject = escape(&m.subject),
            to = escape(&m.to),
        ));
    }
    let body = if mails.is_empty() {
        format!("<p>{}</p>", t!("devmail.empty", locale = lang))
    } else {
        format!(
            "<table><caption>{caption}</caption><thead><tr><th scope=\"col\">{subject}</th><th scope=\"col\">{to}</th><th scope=\"col\">{date}</th></tr></thead><tbody>{rows}</tbody></table>",
            caption = t!("devmail.caption", locale = lang),
            subject = t!("devmail.subject", locale = lang),
            to = t!("devmail.to", locale = lang),
            date = t!("devmail.date", locale = lang),
        )
    };
    Ok(Html(page(lang, &t!("devmail.title", locale = lang), &body)))
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
    let links: String = mail
        .links
        .iter()
        .map(|l| format!("<li><a href=\"{0}\">{0}</a></li>", escape(l)))
        .collect();
    let calendar = match &mail.calendar {
        Some(c) => format!(
            "<h2>{}</h2><p>METHOD: {}</p><pre>{}</pre>",
            t!("devmail.calendar", locale = lang),
            escape(c.method.as_deref().unwrap_or("-")),
            escape(&c.ics)
        ),
        None => String::new(),
    };
    let body = format!(
        "<p><a href=\"/dev/mail\">{back}</a></p><dl><dt>{to}</dt><dd>{to_v}</dd><dt>{subject}</dt><dd>{subject_v}</dd></dl>\
         <h2>{links_h}</h2><ul>{links}</ul><h2>{text_h}</h2><pre>{text}</pre>\
         <h2>{html_h}</h2><iframe title=\"{html_h}\" sandbox srcdoc=\"{html}\" style=\"width:100%;min-height:20rem;border:1px solid #888\"></iframe>{calendar}",
        back = t!("devmail.back", locale = lang),
        to = t!("devmail.to", locale = lang),
        to_v = escape(&mail.to),
        subject = t!("devmail.subject", locale = lang),
        subject_v = escape(&mail.subject),
        links_h = t!("devmail.links", locale = lang),
        text_h = t!("devmail.text", locale = lang),
        text = escape(&mail.text),
        html_h = t!("devmail.html", locale = lang),
        html = escape(&mail.html),
    );
    Ok(Html(page(lang, &mail.subject, &body)))
}

fn page(lang: &str, title: &str, body: &str) -> String {
    let dir = if lang == "ar" { "rtl" } else { "ltr" };
    format!(
        "<!doctype html><html lang=\"{lang}\" dir=\"{dir}\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{title}</title>\
         <style>body{{font-family:system-ui,sans-serif;max-width:60rem;margin:auto;padding:1rem}}table{{border-collapse:collapse;width:100%}}\
         td,th{{border-bottom:1px solid #ccc;padding:.4rem;text-align:start}}pre{{white-space:pre-wrap}}a:focus{{outline:3px solid #1a5fb4}}</style></head>\
         <body><main><h1>{title}</h1><p>{note}</p>{body}</main></body></html>",
        title = escape(title),
        note = t!("devmail.note", locale = lang),
    )
}

/// Escapes text for HTML content and attribute values.
pub fn escape(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}
