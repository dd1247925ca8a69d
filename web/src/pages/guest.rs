//! The guest page at `/guest/{token}`, where a guest link leads an
//! interpreter or a colleague: no sign-in, a display name, the camera and
//! microphone check, then the meeting's waiting room like the resident's.
//!
//! The page shows the guest nothing of the booking: not the service, not
//! the resident, not the staff member, only the time and the role they were
//! invited in. The token is a guest link (`ws::Tickets::verify_guest_link`);
//! the script turns it into tickets for that one room, and the room lets the
//! link in once (a second use is told so on the page). An expired or forged
//! link gets a page that says so, and nothing else.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use booking::SlotRange;
use maud::html;

use super::{page, script_json, tr, tr_with, when, Ctx, PageResult};
use crate::api::guests::INTERPRETER_LANGUAGES;
use crate::clock::now;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/guest/{token}", get(guest))
}

#[tracing::instrument(skip_all)]
async fn guest(State(state): State<AppState>, ctx: Ctx, Path(token): Path<String>) -> PageResult {
    let title = tr("page.guest.title");
    let Some(pass) = state.tickets.verify_guest_link(&token, now().as_second()) else {
        let body = html! {
            h1 id="page-title" { (title) }
            p class="error" role="alert" { (tr("page.guest.invalid")) }
        };
        return Ok((StatusCode::NOT_FOUND, page(&ctx, &title, body)).into_response());
    };
    let intro = match pass.language.as_deref() {
        Some(code) if pass.role == "interpreter" && INTERPRETER_LANGUAGES.contains(&code) => {
            tr_with(
                "page.guest.intro_interpreter",
                &[("language", &tr(&format!("page.guest.language.{code}")))],
            )
        }
        _ => tr("page.guest.intro_colleague"),
    };
    let range = SlotRange::from_unix(pass.starts_at, pass.ends_at).ok();
    let body = html! {
        h1 id="page-title" { (title) }
        p { (intro) }
        @if let Some(range) = &range { p { (when(range)) } }
        noscript { p class="error" { (tr("page.meeting.needs_script")) } }
        div class="meeting" id="meeting" data-room=(pass.room) data-guest-token=(token)
            data-role="guest" {
            p { (tr("page.guest.steps")) }
            form id="guest-form" class="guest-form" {
                div class="field" {
                    label for="guest-name" { (tr("page.guest.name")) }
                    input type="text" id="guest-name" name="name" required maxlength="60"
                        autocomplete="name" aria-describedby="guest-name-hint";
                    p id="guest-name-hint" class="hint" { (tr("page.guest.name_hint")) }
                }
                // The pre-call check (precheck.js, built separately) goes
                // here, between the name and the button that joins.
                div id="precheck" {}
                button type="submit" id="guest-join" { (tr("page.guest.join")) }
            }
            p id="meeting-status" class="meeting-status" role="status" aria-live="polite" {}
            p id="call-quality" class="call-quality" aria-live="polite" {}
            div class="videos" {
                figure class="tile self" {
                    video id="self-video" autoplay muted playsinline {}
                    figcaption id="self-caption" { (tr("page.meeting.you")) }
                }
                div id="remote-videos" class="remote" {}
            }
            div class="controls" {
                button type="button" id="toggle-mic" aria-pressed="false" { (tr("page.meeting.mute")) }
                button type="button" id="toggle-camera" aria-pressed="false" { (tr("page.meeting.camera_off")) }
                button type="button" id="leave-meeting" class="secondary" { (tr("page.meeting.leave")) }
            }
            section class="chat" aria-labelledby="chat-title" {
                h2 id="chat-title" { (tr("page.meeting.chat")) }
                ol id="chat-log" class="transcript" aria-live="polite" aria-label=(tr("page.meeting.chat")) {}
                form id="chat-form" class="chat-form" {
                    div class="field" {
                        label for="chat-text" { (tr("page.meeting.message")) }
                        textarea id="chat-text" name="text" rows="2" maxlength="4000" disabled {}
                    }
                    button type="submit" id="chat-send" disabled { (tr("page.meeting.send")) }
                }
            }
        }
        (script_json("meeting-text", &super::meeting::script_text()))
        script type="module" src=(crate::assets::url("meeting.js")) {}
    };
    Ok(page(&ctx, &title, body).into_response())
}
