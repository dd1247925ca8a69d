//! Managing a booking by the token in its confirmation mail, without signing
//! in: see it, cancel it, or move it to another free time. The token in the
//! address is the authority, so these forms need no session. It works until
//! it cancels its booking or the meeting ends (`booking::bookings::cancel`
//! and `by_token` say why).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use booking::bookings::{self, Authority, Booking};
use serde::Deserialize;

use maud::{html, Markup};

use super::{
    enc, free_times_by_day, page, status_text, time_picker, tr, when, zone_note, Ctx, PageForm,
    PageQuery, PageResult,
};
use crate::api::parse_time;
use crate::clock::now;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/b/{token}", get(show))
        .route("/b/{token}/cancel", post(cancel))
        .route("/b/{token}/reschedule", post(reschedule))
}

#[derive(Debug, Deserialize)]
struct Done {
    done: Option<String>,
}

/// The booking behind a manage token, with cancel and reschedule.
///
/// The page names no service and no municipality: whoever holds the link
/// (someone who shares the inbox, or finds the mail years later) learns only
/// that there is a meeting with the social services, and when.
#[tracing::instrument(skip_all)]
async fn show(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(token): Path<String>,
    PageQuery(done): PageQuery<Done>,
) -> PageResult {
    let now = now();
    let b = match bookings::read_by_token(&state.db, &token, now).await {
        Err(booking::Error::NotFound) => return Ok(gone(&ctx)),
        found => found?,
    };
    let message = match done.done.as_deref() {
        Some("moved") => Some(tr("page.my.moved")),
        _ => None,
    };
    let actions = if b.is_changeable(now) {
        let base = format!("/b/{}", enc(&token));
        let days = free_times_by_day(&state.db, &b.service, &b.performed_for, None, now).await?;
        Some(html! {
            h2 { (tr("page.manage.cancel_title")) }
            form method="post" action={ (base) "/cancel" } {
                button type="submit" class="secondary" { (tr("page.my.cancel")) }
            }
            h2 { (tr("page.reschedule.pick")) }
            (time_picker(&format!("{base}/reschedule"), None, &days))
        })
    } else {
        None
    };
    let body = html! {
        (facts(message, &b))
        @if let Some(actions) = actions { (actions) }
    };
    Ok(page(&ctx, &tr("page.manage.title"), body).into_response())
}

/// Cancels by manage token, which spends it. The answer is the cancelled
/// booking itself rather than a redirect to the manage page, which no longer
/// opens for this token.
#[tracing::instrument(skip_all)]
async fn cancel(State(state): State<AppState>, ctx: Ctx, Path(token): Path<String>) -> PageResult {
    let cancelled = match bookings::cancel(&state.db, Authority::Token(&token), None, now()).await {
        Err(booking::Error::NotFound) => return Ok(gone(&ctx)),
        done => done?,
    };
    let body = facts(Some(tr("page.manage.cancelled")), &cancelled);
    Ok(page(&ctx, &tr("page.manage.title"), body).into_response())
}

#[derive(Debug, Deserialize)]
struct MoveForm {
    starts_at: String,
}

/// Moves a booking by manage token; the token keeps working.
#[tracing::instrument(skip_all)]
async fn reschedule(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(token): Path<String>,
    PageForm(form): PageForm<MoveForm>,
) -> PageResult {
    let starts_at = parse_time("starts_at", &form.starts_at)?;
    match bookings::reschedule(&state.db, Authority::Token(&token), None, starts_at, now()).await {
        Err(booking::Error::NotFound) => return Ok(gone(&ctx)),
        done => done?,
    };
    Ok(Redirect::to(&format!("/b/{}?done=moved", enc(&token))).into_response())
}

/// The title, an optional message, and what a token holder may know of the
/// booking: that it is a meeting with the social services, its status and
/// its time.
fn facts(message: Option<String>, b: &Booking) -> Markup {
    html! {
        h1 id="page-title" { (tr("page.manage.title")) }
        @if let Some(message) = message {
            div class="success" role="status" tabindex="-1" data-focus { p { (message) } }
        }
        p { (tr("page.manage.meeting")) }
        dl class="facts" {
            dt { (tr("page.my.status")) }
            dd class={ "status status-" (b.status.as_str()) } { (status_text(b.status)) }
            dt { (tr("page.confirm.time")) }
            dd { (when(&b.range)) }
        }
        p class="zone" { (zone_note()) }
    }
}

/// The answer to a token that manages nothing: never issued, spent by a
/// cancellation, or past its meeting. The three look the same, so the page
/// tells nobody which, and points to "My pages", where a signed-in resident
/// sees their bookings.
fn gone(ctx: &Ctx) -> Response {
    let body = html! {
        h1 id="page-title" { (tr("page.manage.gone_title")) }
        p role="alert" { (tr("page.manage.gone")) }
        p { a href="/my" { (tr("page.nav.my")) } }
    };
    (
        StatusCode::NOT_FOUND,
        page(ctx, &tr("page.manage.gone_title"), body),
    )
        .into_response()
}
