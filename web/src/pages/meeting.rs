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

use super::{esc, page, status_text, t, tr, when, Ctx, PageResult, Who};
use crate::api::now;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/join/{booking_id}", get(join))
}

/// The strings the script shows, by the name it uses.
const SCRIPT_TEXT: &[(&str, &str)] = &[
    ("connecting", "page.meeting.connecting"),
    ("reconnecting", "page.meeting.reconnecting"),
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
            bookings::for_staff(&state.db, staff, &booking_id, now)
                .await?
                .0
        }
        _ => bookings::for_resident_by_id(&state.db, ctx.resident()?, &booking_id, now).await?,
    };
    let is_staff = matches!(ctx.who, Who::Staff { .. });
    let mut body = format!(
        "<h1 id=\"page-title\">{title}</h1><p>{when}</p>",
        title = t("page.meeting.title"),
        when = when(&booking.range),
    );
    if booking.status != BookingStatus::Booked {
        body.push_str(&format!(
            "<p class=\"status status-{code}\">{status}</p><p>{none}</p>",
            code = booking.status.as_str(),
            status = status_text(booking.status),
            none = t("page.meeting.no_meeting"),
        ));
        return Ok(page(&ctx, &tr("page.meeting.title"), &body).into_response());
    }
    let staff_only = |html: String| if is_staff { html } else { String::new() };
    body.push_str(&format!(
        r#"<noscript><p class="error">{needs_script}</p></noscript>
<div class="meeting" id="meeting" data-booking="{id}" data-csrf="{csrf}" data-role="{role}">
<p id="meeting-status" class="meeting-status" role="status" aria-live="polite">{connecting}</p>
<div class="videos">
<figure class="tile self"><video id="self-video" autoplay muted playsinline></video><figcaption>{you}</figcaption></figure>
<div id="remote-videos" class="remote"></div>
</div>
<div class="controls">
<button type="button" id="toggle-mic" aria-pressed="false">{mute}</button>
<button type="button" id="toggle-camera" aria-pressed="false">{camera_off}</button>
{end}<button type="button" id="leave-meeting" class="secondary">{leave}</button>
</div>
{lobby}<section class="chat" aria-labelledby="chat-title">
<h2 id="chat-title">{chat}</h2>
<ol id="chat-log" class="transcript" aria-live="polite" aria-label="{chat}"></ol>
<form id="chat-form" class="chat-form">
<div class="field"><label for="chat-text">{message}</label>
<textarea id="chat-text" name="text" rows="2" maxlength="4000" disabled></textarea></div>
<button type="submit" id="chat-send" disabled>{send}</button>
</form>
</section>
</div>
<script type="application/json" id="meeting-text">{text}</script>
<script type="module" src="{script}"></script>"#,
        needs_script = t("page.meeting.needs_script"),
        id = esc(&booking.id),
        csrf = esc(ctx.csrf()),
        role = if is_staff { "staff" } else { "resident" },
        connecting = t("page.meeting.connecting"),
        you = t("page.meeting.you"),
        mute = t("page.meeting.mute"),
        camera_off = t("page.meeting.camera_off"),
        end = staff_only(format!(
            "<button type=\"button\" id=\"end-meeting\" class=\"danger\">{}</button>\n",
            t("page.meeting.end")
        )),
        leave = t("page.meeting.leave"),
        lobby = staff_only(format!(
            r#"<section class="lobby" aria-labelledby="lobby-title">
<h2 id="lobby-title">{waiting}</h2>
<p id="lobby-empty">{nobody}</p>
<ul id="lobby-list" role="list"></ul>
</section>
"#,
            waiting = t("page.meeting.lobby_title"),
            nobody = t("page.meeting.lobby_empty"),
        )),
        chat = t("page.meeting.chat"),
        message = t("page.meeting.message"),
        send = t("page.meeting.send"),
        text = script_text(),
        script = crate::assets::url("meeting.js"),
    ));
    Ok(page(&ctx, &tr("page.meeting.title"), &body).into_response())
}

/// The script's strings as JSON that is safe inside a `<script>` element.
pub(super) fn script_text() -> String {
    let map: serde_json::Map<String, serde_json::Value> = SCRIPT_TEXT
        .iter()
        .map(|(name, key)| ((*name).to_owned(), serde_json::Value::String(tr(key))))
        .collect();
    serde_json::Value::Object(map)
        .to_string()
        .replace("</", "<\\/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_script_string_is_translated_in_every_language() {
        for language in booking::Language::ALL {
            for (name, key) in SCRIPT_TEXT {
                let text = rust_i18n::t!(*key, locale = language.code());
                assert_ne!(text, *key, "{name} ({key}) in {}", language.code());
            }
        }
    }

    #[test]
    fn script_text_cannot_end_its_script_element() {
        let text = script_text();
        assert!(!text.contains("</"), "{text}");
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed.as_object().unwrap().len(), SCRIPT_TEXT.len());
    }
}
