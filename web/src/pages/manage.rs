//! Managing a booking by the token in its confirmation mail, without signing
//! in: see it, cancel it, or move it to another free time. The token in the
//! address is the authority, so these forms need no session.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect};
use axum::routing::{get, post};
use axum::Router;
use booking::bookings::{self, Authority};
use booking::BookingStatus;
use serde::Deserialize;

use super::{
    enc, esc, free_times_by_day, municipality_name, page, rule_text, service_name, status_text, t,
    time_picker, tr, when, zone_note, Ctx, PageForm, PageQuery, PageResult,
};
use crate::api::{now, parse_time};
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
#[tracing::instrument(skip_all)]
async fn show(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(token): Path<String>,
    PageQuery(done): PageQuery<Done>,
) -> PageResult {
    let now = now();
    let b = bookings::read_by_token(&state.db, &token, now).await?;
    let by = municipality_name(&state.db, &b.performed_by).await?;
    let message = match done.done.as_deref() {
        Some("cancelled") => Some(t("page.my.cancelled")),
        Some("moved") => Some(t("page.my.moved")),
        _ => None,
    };
    let mut body = format!("<h1 id=\"page-title\">{}</h1>", t("page.manage.title"));
    if let Some(message) = message {
        body.push_str(&format!(
            "<div class=\"success\" role=\"status\" tabindex=\"-1\" data-focus><p>{message}</p></div>"
        ));
    }
    body.push_str(&format!(
        r#"<dl class="facts">
<dt>{service_label}</dt><dd>{service}</dd>
<dt>{status_label}</dt><dd class="status status-{status_code}">{status}</dd>
<dt>{time_label}</dt><dd>{when}</dd>
<dt>{by_label}</dt><dd>{by}</dd>
<dt>{rule_label}</dt><dd>{rule}</dd>
</dl>
<p class="zone">{zone}</p>"#,
        service_label = t("page.confirm.service"),
        service = service_name(&b.service),
        status_label = t("page.my.status"),
        status_code = b.status.as_str(),
        status = status_text(b.status),
        time_label = t("page.confirm.time"),
        when = when(&b.range),
        by_label = t("page.my.performed_by"),
        by = esc(&by),
        rule_label = t("page.my.rule"),
        rule = rule_text(&b.rule, b.agreement_id.as_deref()),
        zone = zone_note(),
    ));
    if b.status == BookingStatus::Booked && b.range.start() > now {
        let base = format!("/b/{}", enc(&token));
        let days = free_times_by_day(&state.db, &b.service, &b.performed_for, None, now).await?;
        body.push_str(&format!(
            r#"<h2>{cancel_title}</h2>
<form method="post" action="{base}/cancel"><button type="submit" class="secondary">{cancel}</button></form>
<h2>{move_title}</h2>
{picker}"#,
            cancel_title = t("page.manage.cancel_title"),
            base = esc(&base),
            cancel = t("page.my.cancel"),
            move_title = t("page.reschedule.pick"),
            picker = time_picker(&format!("{base}/reschedule"), None, &days),
        ));
    }
    Ok(page(&ctx, &tr("page.manage.title"), &body).into_response())
}

/// Cancels by manage token.
#[tracing::instrument(skip_all)]
async fn cancel(State(state): State<AppState>, Path(token): Path<String>) -> PageResult {
    bookings::cancel(&state.db, Authority::Token(&token), None, now()).await?;
    Ok(Redirect::to(&format!("/b/{}?done=cancelled", enc(&token))).into_response())
}

#[derive(Debug, Deserialize)]
struct MoveForm {
    starts_at: String,
}

/// Moves a booking by manage token; the token keeps working.
#[tracing::instrument(skip_all)]
async fn reschedule(
    State(state): State<AppState>,
    Path(token): Path<String>,
    PageForm(form): PageForm<MoveForm>,
) -> PageResult {
    let starts_at = parse_time("starts_at", &form.starts_at)?;
    bookings::reschedule(&state.db, Authority::Token(&token), None, starts_at, now()).await?;
    Ok(Redirect::to(&format!("/b/{}?done=moved", enc(&token))).into_response())
}
