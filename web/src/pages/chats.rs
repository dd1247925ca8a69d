//! A signed-in resident's chat conversations on "My pages": a list on the
//! page itself, and each transcript as the resident saw it. Every read is
//! audit-logged like a staff member's; another resident's conversation, an
//! anonymous one and a missing one all answer 404 alike.

use axum::extract::{Path, State};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use booking::accounts::Resident;
use booking::chats::{conversation_of, conversations_of};
use booking::events::QueueEntryRow;
use booking::ServiceCode;
use jiff::Timestamp;
use signaling::history::StoredEvent;
use signaling::protocol::{ChatOutcome, Role, RoomEvent};

use maud::{html, Markup};

use super::{clock, enc, local, long_date, page, rfc3339, service_name, tr, Ctx, PageResult};
use crate::clock::now;
use crate::error::{path_id, AppError};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/my/chats/{room}", get(transcript))
}

/// The "Your chats" section of "My pages": each conversation the resident
/// opened while signed in, newest first, linking to its transcript.
pub async fn section(state: &AppState, resident: &Resident) -> Result<Markup, AppError> {
    let conversations = conversations_of(&state.db, resident, now()).await?;
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
    let conversation = conversation_of(&state.db, resident, &path_id(&room)?, now()).await?;
    let entry = &conversation.entry;
    let lines: Vec<Markup> = conversation.events.iter().filter_map(line).collect();
    let body = html! {
        h1 id="page-title" { (service_of(entry)) }
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

/// One transcript line, or `None` for events a resident has no use for
/// (joins, knocks).
fn line(stored: &StoredEvent) -> Option<Markup> {
    let (who, text, at) = match &stored.event {
        RoomEvent::Chat {
            role,
            text,
            sent_at,
            ..
        } => {
            let who = match role {
                Role::Resident => tr("page.chats.you"),
                Role::Interpreter => tr("page.chats.interpreter"),
                Role::SocialWorker => tr("page.chats.social_worker"),
            };
            (Some(who), text.clone(), *sent_at)
        }
        RoomEvent::TimesOffered { .. } => (
            Some(tr("page.chats.social_worker")),
            tr("page.chats.times_offered"),
            stored.at,
        ),
        RoomEvent::Assigned { .. } => (None, tr("page.chats.assigned"), stored.at),
        RoomEvent::VideoOpened { .. } => (None, tr("page.chats.video_opened"), stored.at),
        RoomEvent::Ended { outcome, .. } => (None, tr(ended_key(*outcome)), stored.at),
        _ => return None,
    };
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

/// The transcript's words for the end of a chat, with how it ended when
/// the social worker who closed it said so.
fn ended_key(outcome: Option<ChatOutcome>) -> &'static str {
    match outcome {
        Some(ChatOutcome::Resolved) => "page.chats.ended_resolved",
        Some(ChatOutcome::Booked) => "page.chats.ended_booked",
        Some(ChatOutcome::Referred) => "page.chats.ended_referred",
        Some(ChatOutcome::NoContact) => "page.chats.ended_no_contact",
        None => "page.chats.ended",
    }
}
