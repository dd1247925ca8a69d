//! A signed-in resident's chat conversations on "My pages": a list on the
//! page itself, and each transcript as the resident saw it. Every read is
//! audit-logged like a staff member's; another resident's conversation, an
//! anonymous one and a missing one all answer 404 alike.

use axum::extract::{Path, State};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use booking::accounts::Resident;
use booking::audit::{self, Actor, Entry, Outcome};
use booking::events::{self, EventRow, QueueEntryRow};
use booking::ServiceCode;
use jiff::Timestamp;
use serde_json::Value;

use maud::{html, Markup};

use super::{clock, enc, local, long_date, page, rfc3339, service_name, tr, Ctx, PageResult};
use crate::api::now;
use crate::error::AppError;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/my/chats/{room}", get(transcript))
}

/// The hub's party id of a signed-in resident.
fn party(resident: &Resident) -> String {
    format!("resident:{}", resident.id)
}

/// The "Your chats" section of "My pages": each conversation the resident
/// opened while signed in, newest first, linking to its transcript.
pub async fn section(state: &AppState, resident: &Resident) -> Result<Markup, AppError> {
    let conversations = events::resident_conversations(&state.db, &party(resident)).await?;
    record(
        state,
        resident,
        "chat.list",
        format!("resident:{}", resident.id),
        Some(&resident.id),
        resident.home.as_str(),
        Outcome::Allowed,
    )
    .await?;
    Ok(html! {
        h2 { (tr("page.chats.title")) }
        @if conversations.is_empty() {
            p { (tr("page.chats.none")) }
        } @else {
            ul class="bookings" role="list" {
                @for c in &conversations {
                    @let anchor = format!("c-{}", c.room.replace(':', "-"));
                    li class="booking" {
                        article aria-labelledby=(anchor) {
                            h3 id=(anchor) { a href={ "/my/chats/" (enc(&c.room)) } { (service_of(c)) } }
                            dl class="facts" {
                                dt { (tr("page.chats.started")) }
                                dd { (moment(c.enqueued_at)) }
                                dt { (tr("page.my.status")) }
                                dd { (state_text(&c.state)) }
                            }
                        }
                    }
                }
            }
        }
    })
}

/// One conversation's transcript: what was said, by role, and when it was
/// picked up, moved to video and closed.
#[tracing::instrument(skip(state, ctx))]
async fn transcript(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(room): Path<String>,
) -> PageResult {
    let resident = ctx.resident()?;
    let mine = party(resident);
    let entry = events::queue_entry(&state.db, &room).await?;
    let entry = match entry {
        Some(e) if e.resident == mine && !e.anonymous => e,
        Some(e) => {
            // Somebody else's conversation: refused, and the attempt is kept.
            record(
                &state,
                resident,
                "chat.read",
                room.clone(),
                e.resident.strip_prefix("resident:"),
                &e.home_municipality,
                Outcome::Denied,
            )
            .await?;
            return Err(AppError::NotFound.into());
        }
        None => return Err(AppError::NotFound.into()),
    };
    let rows = events::events_after(&state.db, &entry.room, 0).await?;
    record(
        &state,
        resident,
        "chat.read",
        entry.room.clone(),
        Some(&resident.id),
        &entry.home_municipality,
        Outcome::Allowed,
    )
    .await?;

    let lines: Vec<Markup> = rows
        .iter()
        .filter(|row| seen_by(row, &mine))
        .filter_map(line)
        .collect();
    let body = html! {
        h1 id="page-title" { (service_of(&entry)) }
        p {
            (tr("page.chats.started")) ": " (moment(entry.enqueued_at)) ". "
            (tr("page.my.status")) ": " (state_text(&entry.state)) "."
        }
        @if lines.is_empty() {
            p { (tr("page.chats.empty")) }
        } @else {
            ol class="transcript" aria-label=(tr("page.chats.transcript")) {
                @for line in &lines { (line) }
            }
        }
        p { a href="/my" { (tr("page.reschedule.back")) } }
    };
    Ok(page(&ctx, &tr("page.chats.transcript"), body).into_response())
}

/// Whether the resident was in an event's audience: chat conversations show
/// their whole history to members, but an event meant for named parties only
/// stays theirs.
fn seen_by(row: &EventRow, party: &str) -> bool {
    match &row.audience {
        None => true,
        Some(json) => serde_json::from_str::<Vec<String>>(json)
            .map(|parties| parties.iter().any(|p| p == party))
            .unwrap_or(false),
    }
}

/// One transcript line, or `None` for events a resident has no use for
/// (joins, knocks).
fn line(row: &EventRow) -> Option<Markup> {
    let event: Value = serde_json::from_str(&row.body).ok()?;
    let (who, text) = match row.kind.as_str() {
        "chat" => {
            let role = event["role"].as_str().unwrap_or_default();
            let who = match role {
                "resident" => tr("page.chats.you"),
                "interpreter" => tr("page.chats.interpreter"),
                _ => tr("page.chats.social_worker"),
            };
            (
                Some(who),
                event["text"].as_str().unwrap_or_default().to_owned(),
            )
        }
        "times_offered" => (
            Some(tr("page.chats.social_worker")),
            tr("page.chats.times_offered"),
        ),
        "assigned" => (None, tr("page.chats.assigned")),
        "video_opened" => (None, tr("page.chats.video_opened")),
        "ended" => (None, tr(ended_key(&event))),
        _ => return None,
    };
    let at = event["sent_at"].as_i64().unwrap_or(row.at);
    let time = Timestamp::from_second(at).ok()?;
    let stamp = html! { time datetime=(rfc3339(time)) { (clock(time)) } };
    Some(match who {
        Some(who) => html! {
            li class="said" { p class="who" { (who) " " (stamp) } p { (text) } }
        },
        None => html! { li class="note" { p { (stamp) " " (text) } } },
    })
}

fn service_of(entry: &QueueEntryRow) -> String {
    ServiceCode::parse(&entry.service)
        .map(|s| service_name(&s))
        .unwrap_or_else(|_| entry.service.clone())
}

fn state_text(state: &str) -> String {
    match state {
        "waiting" => tr("page.chats.state.waiting"),
        "assigned" => tr("page.chats.state.assigned"),
        _ => tr("page.chats.state.closed"),
    }
}

/// A point in time as a `<time>` element: its date and clock time.
fn moment(at: i64) -> Markup {
    let Ok(time) = Timestamp::from_second(at) else {
        return Markup::default();
    };
    html! {
        time datetime=(rfc3339(time)) { (long_date(local(time).date())) " " (clock(time)) }
    }
}

/// Audits a resident's read, now: `owner` is the resident whose conversation
/// it is.
async fn record(
    state: &AppState,
    resident: &Resident,
    action: &str,
    subject: String,
    owner: Option<&str>,
    on_behalf_of: &str,
    outcome: Outcome,
) -> Result<(), AppError> {
    let actor = Actor::Resident(resident.id.clone());
    let entry = Entry {
        actor: &actor,
        action,
        subject,
        resident_id: owner,
        on_behalf_of: Some(on_behalf_of),
        rule: None,
        agreement_id: None,
        outcome,
    };
    audit::record_now(&state.db, &entry, now().as_second())
        .await
        .map_err(booking::Error::from)?;
    Ok(())
}

/// The transcript's words for the end of a chat, with how it ended when
/// the social worker who closed it said so.
fn ended_key(event: &Value) -> &'static str {
    match event["outcome"].as_str() {
        Some("resolved") => "page.chats.ended_resolved",
        Some("booked") => "page.chats.ended_booked",
        Some("referred") => "page.chats.ended_referred",
        Some("no_contact") => "page.chats.ended_no_contact",
        _ => "page.chats.ended",
    }
}
