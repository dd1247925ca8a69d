//! The meeting page at `/join/{booking_id}`, where the confirmation mail's
//! join link and the staff day view lead. It shows the camera before the
//! meeting, the waiting room, the video call and the in-meeting chat; staff
//! also see who waits, admit or decline them, and end the meeting.
//!
//! The page itself is plain HTML with its strings translated here; the call
//! runs in `/assets/meeting.js`, which opens the meeting room through the
//! API, connects to `/ws` with a ticket and speaks the protocol in
//! `docs/protocol.md`. Media goes through the TURN relay only
//! (`iceTransportPolicy: "relay"`), so that neither party learns the other's
//! address. Who may open the page is the API's rule: the booking's resident,
//! and staff the policy lets handle it; every open is audit-logged by the
//! booking reads it makes, and anyone else gets 404.

use axum::extract::{Path, State};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use booking::bookings;
use booking::BookingStatus;

use maud::html;

use super::{page, script_json, script_strings, status_text, tr, when, Ctx, PageResult, Who};
use crate::clock::now;
use crate::error::path_id;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/join/{booking_id}", get(join))
}

/// The strings the script shows, by the name it uses.
const SCRIPT_TEXT: &[(&str, &str)] = &[
    ("connecting", "page.meeting.connecting"),
    ("reconnecting", "page.meeting.reconnecting"),
    ("reconnected", "page.meeting.reconnected"),
    ("participant_away", "page.meeting.participant_away"),
    ("participant_back", "page.meeting.participant_back"),
    ("camera_failed", "page.meeting.camera_failed"),
    ("lobby_waiting", "page.meeting.lobby_waiting"),
    ("lobby_staff_here", "page.meeting.lobby_staff_here"),
    ("admitted", "page.meeting.admitted"),
    ("alone", "page.meeting.alone"),
    ("declined", "page.meeting.declined"),
    ("sent_back", "page.meeting.sent_back"),
    ("left", "page.meeting.left"),
    ("closed_meeting_ended", "page.meeting.closed.meeting_ended"),
    ("closed_no_show", "page.meeting.closed.no_show"),
    ("closed_cancelled", "page.meeting.closed.cancelled"),
    ("closed_other", "page.meeting.closed.other"),
    ("not_open", "page.meeting.not_open"),
    ("failed", "page.meeting.failed"),
    ("connected_to", "page.meeting.connected_to"),
    ("joined", "page.meeting.participant_joined"),
    ("participant_left", "page.meeting.participant_left"),
    ("knock", "page.meeting.knock"),
    ("admit", "page.meeting.admit"),
    ("decline", "page.meeting.decline"),
    ("you", "page.meeting.you"),
    ("role_resident", "page.meeting.role_resident"),
    ("role_social_worker", "page.chats.social_worker"),
    ("role_interpreter", "page.chats.interpreter"),
    ("in_sentence_resident", "page.role.in_sentence.resident"),
    (
        "in_sentence_social_worker",
        "page.role.in_sentence.social_worker",
    ),
    (
        "in_sentence_interpreter",
        "page.role.in_sentence.interpreter",
    ),
    ("chat_not_sent", "page.meeting.chat_not_sent"),
    ("full", "page.meeting.full"),
    ("send_back", "page.meeting.send_back"),
    ("link_used", "page.guest.used"),
    ("link_invalid", "page.guest.invalid"),
    ("invite_created", "page.meeting.invite.created"),
    ("invite_mailed", "page.meeting.invite.mailed"),
    ("invite_copied", "page.meeting.invite.copied"),
    ("invite_failed", "page.meeting.invite.failed"),
    ("share_started", "page.meeting.share_started"),
    ("share_stopped", "page.meeting.share_stopped"),
    ("share_failed", "page.meeting.share_failed"),
    ("quality_poor", "page.meeting.quality_poor"),
    ("quality_good", "page.meeting.quality_good"),
];

/// The meeting of one booking, for its resident or for staff who may
/// handle it.
#[tracing::instrument(skip(state, ctx))]
async fn join(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(booking_id): Path<String>,
) -> PageResult {
    let now = now();
    let booking = match &ctx.who {
        Who::Staff { staff, .. } => {
            bookings::for_staff(&state.db, staff, &path_id(&booking_id)?, now)
                .await?
                .0
        }
        _ => {
            let resident = ctx.resident()?;
            bookings::for_resident_by_id(&state.db, resident, &path_id(&booking_id)?, now).await?
        }
    };
    let is_staff = matches!(ctx.who, Who::Staff { .. });
    let heading = html! {
        h1 id="page-title" { (tr("page.meeting.title")) }
        p { (when(&booking.range)) }
    };
    if booking.status != BookingStatus::Booked {
        let body = html! {
            (heading)
            p class={ "status status-" (booking.status.as_str()) } { (status_text(booking.status)) }
            p { (tr("page.meeting.no_meeting")) }
        };
        return Ok(page(&ctx, &tr("page.meeting.title"), body).into_response());
    }
    let chat = tr("page.meeting.chat");
    let body = html! {
        (heading)
        noscript { p class="error" { (tr("page.meeting.needs_script")) } }
        (super::precheck::section(super::precheck::CREDENTIALS_URL, Some(ctx.csrf())))
        div class="meeting" id="meeting" data-booking=(booking.id) data-csrf=(ctx.csrf())
            data-role=(if is_staff { "staff" } else { "resident" }) {
            p id="meeting-status" class="meeting-status" role="status" aria-live="polite" {
                (tr("page.meeting.connecting"))
            }
            p id="call-quality" class="call-quality" aria-live="polite" {}
            div class="videos" {
                figure class="tile self" {
                    video id="self-video" autoplay muted playsinline {}
                    figcaption { (tr("page.meeting.you")) }
                }
                div id="remote-videos" class="remote" {}
            }
            div class="controls" {
                button type="button" id="toggle-mic" aria-pressed="false" { (tr("page.meeting.mute")) }
                button type="button" id="toggle-camera" aria-pressed="false" { (tr("page.meeting.camera_off")) }
                @if is_staff {
                    button type="button" id="share-screen" aria-pressed="false" { (tr("page.meeting.share_screen")) }
                    button type="button" id="end-meeting" class="danger" { (tr("page.meeting.end")) }
                }
                button type="button" id="leave-meeting" class="secondary" { (tr("page.meeting.leave")) }
            }
            @if is_staff {
                section class="lobby" aria-labelledby="lobby-title" {
                    h2 id="lobby-title" { (tr("page.meeting.lobby_title")) }
                    p id="lobby-empty" { (tr("page.meeting.lobby_empty")) }
                    ul id="lobby-list" role="list" {}
                }
                section class="lobby" aria-labelledby="present-title" {
                    h2 id="present-title" { (tr("page.meeting.in_meeting")) }
                    ul id="present-list" role="list" {}
                }
                (invite_form())
            }
            section class="chat" aria-labelledby="chat-title" {
                h2 id="chat-title" { (chat) }
                ol id="chat-log" class="transcript" aria-live="polite" aria-label=(chat) {}
                form id="chat-form" class="chat-form" {
                    div class="field" {
                        label for="chat-text" { (tr("page.meeting.message")) }
                        textarea id="chat-text" name="text" rows="2" maxlength="4000" disabled {}
                    }
                    button type="submit" id="chat-send" disabled { (tr("page.meeting.send")) }
                }
            }
        }
        (script_json("meeting-text", &script_text()))
        script type="module" src=(crate::assets::url("meeting.js")) {}
    };
    Ok(page(&ctx, &tr("page.meeting.title"), body).into_response())
}

/// Staff's form for a guest link: the role, the language an interpreter
/// interprets, and where to mail the link if anywhere. The script asks the
/// room for the invitation and the API for the link, then shows the link
/// with a copy button.
fn invite_form() -> maud::Markup {
    html! {
        section class="invite" aria-labelledby="invite-title" {
            h2 id="invite-title" { (tr("page.meeting.invite.title")) }
            form id="invite-form" {
                div class="field" {
                    label for="invite-role" { (tr("page.meeting.invite.role")) }
                    select id="invite-role" name="role" {
                        option value="interpreter" { (tr("page.chats.interpreter")) }
                        option value="social_worker" { (tr("page.meeting.invite.role_colleague")) }
                    }
                }
                div class="field" id="invite-language-field" {
                    label for="invite-language" { (tr("page.meeting.invite.language")) }
                    select id="invite-language" name="interpreting" {
                        @for code in crate::api::guests::INTERPRETER_LANGUAGES {
                            option value=(code) { (tr(&format!("page.guest.language.{code}"))) }
                        }
                    }
                }
                div class="field" {
                    label for="invite-email" { (tr("page.meeting.invite.email")) }
                    input type="email" id="invite-email" name="email" autocomplete="off"
                        aria-describedby="invite-email-hint";
                    p id="invite-email-hint" class="hint" { (tr("page.meeting.invite.email_hint")) }
                }
                button type="submit" id="invite-create" disabled { (tr("page.meeting.invite.create")) }
            }
            div id="invite-result" hidden {
                div class="field" {
                    label for="invite-link" { (tr("page.meeting.invite.link")) }
                    input type="text" id="invite-link" readonly dir="ltr";
                }
                button type="button" id="invite-copy" class="secondary" { (tr("page.meeting.invite.copy")) }
            }
            p id="invite-status" role="status" aria-live="polite" {}
        }
    }
}

/// The call script's strings.
pub(super) fn script_text() -> serde_json::Value {
    script_strings(SCRIPT_TEXT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_script_string_is_translated_in_every_language() {
        super::super::assert_translated_everywhere(SCRIPT_TEXT);
    }
}
