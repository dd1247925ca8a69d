//! The resident's chat pre-assessment: where a chat starts ("Chat with us
//! now" on the start page and on My pages, with "I don't know" for the
//! general queue), the chat page at `/chat/{service}`, and the ad-hoc video
//! room a chat moves to, `/meeting/adhoc/{id}`.
//!
//! The chat page is HTML with its strings translated here; the chat runs in
//! `chat-page.js` over `/ws` (`protocol.js`, `chat.js`): the queue position,
//! the estimated wait and whether anyone who may answer is online, typing and
//! read receipts both ways, leaving the queue and closing the chat, offered
//! times booked with one click, the move to video, and the offline form when
//! nobody is online. A signed-in resident's chat is kept on My pages
//! (`chats.rs`). Where a service allows it, a visitor who is not signed in
//! chats anonymously: they pick their home municipality, the page gets a
//! token for that one chat (`POST /api/chats/anonymous`) and keeps it in
//! the tab's sessionStorage only, and at the end they may save the
//! conversation as a text file made in the browser; nothing else keeps it.
//!
//! The ad-hoc room page is the meeting page's call (`meeting.js`) on an
//! `adhoc:` room, joined without the lobby. The page shows nothing of the
//! room; whether someone may enter is the hub's rule on `join`.

use axum::extract::{Path, Query, State};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use booking::catalog::{self, Service};
use booking::{MunicipalityCode, ServiceCode};
use maud::{html, Markup};
use serde::Deserialize;

use super::{
    page, script_json, script_strings, service_name, tr, tr_with, Ctx, PageError, PageResult, Who,
};
use crate::clock::now;
use crate::error::AppError;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/chat/{service}", get(chat_page))
        .route("/meeting/adhoc/{id}", get(adhoc_page))
}

/// The strings `chat-page.js` and `chat.js` show, by the name they use.
const SCRIPT_TEXT: &[(&str, &str)] = &[
    ("connecting", "page.meeting.connecting"),
    ("reconnecting", "page.meeting.reconnecting"),
    ("position", "page.chat.position"),
    ("eta", "page.chat.eta"),
    ("eta_one", "page.chat.eta_one"),
    ("staff_online", "page.chat.staff_online"),
    ("staff_offline", "page.chat.staff_offline"),
    ("waiting", "page.chat.waiting"),
    ("in_chat", "page.chat.in_chat"),
    ("assigned", "page.chats.assigned"),
    ("ended", "page.chats.ended"),
    ("left", "page.chat.left"),
    ("gone", "page.chat.gone"),
    ("start_failed", "page.chat.start_failed"),
    ("home_missing", "page.chat.home_missing"),
    ("typing", "page.chat.typing"),
    ("sent", "page.chat.sent"),
    ("read", "page.chat.read"),
    ("you", "page.chats.you"),
    ("role_resident", "page.meeting.role_resident"),
    ("role_social_worker", "page.chats.social_worker"),
    ("in_sentence_resident", "page.role.in_sentence.resident"),
    (
        "in_sentence_social_worker",
        "page.role.in_sentence.social_worker",
    ),
    ("times_offered", "page.chat.times_offered"),
    ("book", "page.chat.book"),
    ("when", "page.chat.when"),
    ("booked", "page.chat.booked"),
    ("taken", "page.chat.taken"),
    ("book_failed", "page.chat.book_failed"),
    ("sign_in_to_book", "page.chat.sign_in_to_book"),
    ("sign_in", "page.nav.sign_in"),
    ("my_pages", "page.nav.my"),
    ("video_opened", "page.chat.video_opened"),
    ("join_video", "page.chat.join_video"),
    ("transcript_header", "page.chat.transcript_header"),
    ("offline_needs_message", "page.chat.offline_needs_message"),
    ("offline_needs_contact", "page.chat.offline_needs_contact"),
    ("offline_failed", "page.chat.offline_failed"),
];

/// "Chat with us now": a link to the chat of each service that offers it to
/// a resident of `home` (every service that allows chat when the home is not
/// known yet), and "I don't know" for the general queue. Empty when none
/// does. For the start page and My pages.
pub async fn start_points(state: &AppState, home: Option<&str>) -> Result<Markup, PageError> {
    let home = home.and_then(|h| MunicipalityCode::parse(h).ok());
    let services: Vec<Service> = match &home {
        Some(home) => booking::chats::offered(&state.db, home, now()).await?,
        None => catalog::all_services(&state.db)
            .await?
            .into_iter()
            .filter(|s| s.chat)
            .collect(),
    };
    let (general, services): (Vec<Service>, Vec<Service>) =
        services.into_iter().partition(Service::is_general);
    if services.is_empty() && general.is_empty() {
        return Ok(html! {});
    }
    Ok(html! {
        section.chat-start aria-labelledby="chat-start-title" {
            h2 #chat-start-title { (tr("page.chat.start_title")) }
            p { (tr("page.chat.start_intro")) }
            ul.chat-services role="list" {
                @for service in &services {
                    li { a.button.secondary href={ "/chat/" (service.code) } { (service_name(&service.code)) } }
                }
                @for service in &general {
                    li { a.button.secondary href={ "/chat/" (service.code) } { (tr("page.chat.dont_know")) } }
                }
            }
        }
    })
}

/// The chat page of one service: a signed-in resident's chat, or an
/// anonymous one where the service allows it; anyone else signs in first.
#[tracing::instrument(skip(state, ctx))]
async fn chat_page(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(service): Path<String>,
) -> PageResult {
    let Ok(code) = ServiceCode::parse(&service) else {
        return Err(AppError::NotFound.into());
    };
    let service = match catalog::service(&state.db, &code).await? {
        Some(service) if service.chat => service,
        _ => return Err(AppError::NotFound.into()),
    };
    let resident = match &ctx.who {
        Who::Resident { resident, .. } => Some(resident),
        _ if service.anonymous_chat => None,
        _ => {
            return Err(PageError::SignIn {
                next: ctx.here.clone(),
            })
        }
    };
    let municipalities = match resident {
        Some(_) => Vec::new(),
        None => catalog::municipalities(&state.db).await?,
    };
    let title = if service.is_general() {
        tr("page.chat.title_general")
    } else {
        tr_with(
            "page.chat.title",
            &[("service", &tr(&format!("service.{}", service.code)))],
        )
    };
    let anonymous = resident.is_none();
    let body = html! {
        h1 #page-title { (title) }
        noscript { p.error { (tr("page.chat.needs_script")) } }
        div #chat-page .chat-page
            data-service=(service.code)
            data-service-name=(tr(&format!("service.{}", service.code)))
            data-mode=(if anonymous { "anonymous" } else { "resident" })
            data-csrf=(ctx.csrf()) {
            section #chat-start aria-labelledby="chat-start-title" {
                h2 #chat-start-title .visually-hidden { (tr("page.chat.start")) }
                form #chat-start-form novalidate {
                    @if anonymous {
                        p { (tr("page.chat.intro_anonymous")) }
                        div.field {
                            label for="chat-home" { (tr("page.chat.home")) }
                            select #chat-home name="municipality" required aria-describedby="chat-home-hint" {
                                option value="" { (tr("page.start.choose")) }
                                @for m in &municipalities {
                                    option value=(m.code) { (m.name) }
                                }
                            }
                            p.hint #chat-home-hint { (tr("page.chat.home_hint")) }
                        }
                    } @else {
                        p { (tr("page.chat.intro_signed_in")) }
                    }
                    p #chat-start-error .error role="alert" hidden {}
                    button type="submit" #chat-open { (tr("page.chat.start")) }
                }
            }
            section #chat-live .chat-live hidden aria-labelledby="chat-live-title" {
                h2 #chat-live-title .visually-hidden { (tr("page.chat.conversation")) }
                div #queue-status .queue-status role="status" aria-live="polite" hidden {
                    p #queue-position {}
                    p #queue-eta {}
                    p #queue-online {}
                }
                p #chat-state .chat-state role="status" aria-live="polite" { (tr("page.meeting.connecting")) }
                ol #chat-log .transcript .chat-log aria-label=(tr("page.chat.messages")) {}
                p #chat-typing .typing aria-live="polite" {}
                form #chat-form .chat-form {
                    div.field {
                        label for="chat-text" { (tr("page.chat.message")) }
                        textarea #chat-text name="text" rows="3" maxlength="4000" disabled {}
                    }
                    button type="submit" #chat-send disabled { (tr("page.chat.send")) }
                }
                div.actions {
                    button type="button" #chat-leave .secondary hidden { (tr("page.chat.leave")) }
                    button type="button" #chat-close .secondary hidden { (tr("page.chat.close")) }
                }
            }
            section #chat-ended .chat-ended hidden aria-labelledby="chat-ended-title" {
                h2 #chat-ended-title tabindex="-1" { (tr("page.chat.ended_title")) }
                p #chat-ended-text {}
                @if anonymous {
                    div #chat-save-box hidden {
                        p { (tr("page.chat.save_hint")) }
                        button type="button" #chat-save { (tr("page.chat.save")) }
                    }
                } @else {
                    p { a href="/my" { (tr("page.chat.kept_on_my_pages")) } }
                }
                p.actions {
                    a.button.secondary href={ "/chat/" (service.code) } #chat-again { (tr("page.chat.new_chat")) }
                    " "
                    a href="/" { (tr("page.chat.back_to_start")) }
                }
            }
            section #chat-offline .chat-offline hidden aria-labelledby="chat-offline-title" {
                h2 #chat-offline-title tabindex="-1" { (tr("page.chat.offline_title")) }
                form #offline-form novalidate {
                    p { (tr("page.chat.offline_intro")) }
                    div.field {
                        label for="offline-message" { (tr("page.chat.offline_message")) }
                        textarea #offline-message name="message" rows="4" maxlength="2000" required {}
                    }
                    div.field {
                        label for="offline-name" { (tr("page.chat.offline_name")) }
                        input #offline-name name="name" type="text" autocomplete="name" maxlength="200";
                    }
                    fieldset {
                        legend { (tr("page.chat.offline_contact_hint")) }
                        div.field {
                            label for="offline-email" { (tr("page.chat.offline_email")) }
                            input #offline-email name="contact_email" type="email" autocomplete="email" maxlength="254"
                                value=(resident.map(|r| r.email.to_string()).unwrap_or_default());
                        }
                        div.field {
                            label for="offline-phone" { (tr("page.chat.offline_phone")) }
                            input #offline-phone name="contact_phone" type="tel" autocomplete="tel" maxlength="40";
                        }
                    }
                    p #offline-error .error role="alert" hidden {}
                    button type="submit" #offline-send { (tr("page.chat.offline_send")) }
                }
                div #offline-done .success role="status" tabindex="-1" hidden {
                    p { (tr("page.chat.offline_sent")) }
                }
            }
        }
        (script_json("chat-strings", &script_strings(SCRIPT_TEXT)))
        script type="module" src=(crate::assets::url("chat-page.js")) {}
    };
    Ok(page(&ctx, &title, body).into_response())
}

#[derive(Debug, Deserialize)]
struct AdhocQuery {
    /// The service of the chat the room came from, to lead back to it and,
    /// for an anonymous chat, to find its token in sessionStorage.
    chat: Option<String>,
}

/// The ad-hoc video room a chat moved to: the meeting page's call, without
/// the lobby.
#[tracing::instrument(skip(ctx))]
async fn adhoc_page(ctx: Ctx, Path(id): Path<String>, Query(q): Query<AdhocQuery>) -> PageResult {
    let room = format!("adhoc:{id}");
    if !is_room_id(&room) {
        return Err(AppError::NotFound.into());
    }
    let chat = q.chat.as_deref().and_then(|c| ServiceCode::parse(c).ok());
    let is_staff = matches!(ctx.who, Who::Staff { .. });
    let token_key = match (&ctx.who, &chat) {
        (Who::Anonymous, Some(service)) => Some(format!("kontakt.chat.{service}.token")),
        _ => None,
    };
    let title = tr("page.adhoc.title");
    let body = adhoc_markup(&ctx, &room, is_staff, token_key.as_deref(), chat.as_ref());
    Ok(page(&ctx, &title, body).into_response())
}

fn adhoc_markup(
    ctx: &Ctx,
    room: &str,
    is_staff: bool,
    token_key: Option<&str>,
    chat: Option<&ServiceCode>,
) -> Markup {
    html! {
        h1 #page-title { (tr("page.adhoc.title")) }
        noscript { p.error { (tr("page.meeting.needs_script")) } }
        div.meeting #meeting data-room=(room) data-csrf=(ctx.csrf())
            data-role=(if is_staff { "staff" } else { "resident" })
            data-token-key=[token_key] {
            p #meeting-status .meeting-status role="status" aria-live="polite" { (tr("page.meeting.connecting")) }
            p #call-quality .call-quality aria-live="polite" {}
            div.videos {
                figure.tile.self {
                    video #self-video autoplay muted playsinline {}
                    figcaption { (tr("page.meeting.you")) }
                }
                div #remote-videos .remote {}
            }
            div.controls {
                button type="button" #toggle-mic aria-pressed="false" { (tr("page.meeting.mute")) }
                button type="button" #toggle-camera aria-pressed="false" { (tr("page.meeting.camera_off")) }
                @if is_staff {
                    button type="button" #end-meeting .danger { (tr("page.meeting.end")) }
                }
                button type="button" #leave-meeting .secondary { (tr("page.meeting.leave")) }
            }
            section.chat aria-labelledby="chat-title" {
                h2 #chat-title { (tr("page.meeting.chat")) }
                ol #chat-log .transcript aria-live="polite" aria-label=(tr("page.meeting.chat")) {}
                form #chat-form .chat-form {
                    div.field {
                        label for="chat-text" { (tr("page.meeting.message")) }
                        textarea #chat-text name="text" rows="2" maxlength="4000" disabled {}
                    }
                    button type="submit" #chat-send disabled { (tr("page.meeting.send")) }
                }
            }
        }
        @if let Some(service) = chat {
            p { a href={ "/chat/" (service) } { (tr("page.adhoc.back")) } }
        }
        (script_json("meeting-text", &super::meeting::script_text()))
        script type="module" src=(crate::assets::url("meeting.js")) {}
    }
}

/// Whether `room` is a well-formed room id of the protocol: 1 to 128 of
/// `A-Z a-z 0-9 - _ : .`.
fn is_room_id(room: &str) -> bool {
    (1..=128).contains(&room.len())
        && room
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b':' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_script_string_is_translated_in_every_language() {
        super::super::assert_translated_everywhere(SCRIPT_TEXT);
    }

    #[test]
    fn only_protocol_room_ids_get_a_page() {
        assert!(is_room_id("adhoc:5d2-a_b.c"));
        for bad in ["adhoc:a/b", "adhoc:a b", "adhoc:<x>", "adhoc:ä"] {
            assert!(!is_room_id(bad), "{bad}");
        }
        assert!(!is_room_id(&format!("adhoc:{}", "a".repeat(200))));
    }
}
