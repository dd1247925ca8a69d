//! The staff console at `/staff/console`: where a social worker takes
//! pre-assessment chats.
//!
//! The page is server-rendered with maud; everything live runs in
//! `/assets/console.js` over the real-time protocol (`docs/protocol.md`):
//! the availability switch (`staff.availability`), the queue as the hub
//! sends it (`queue.entry`, already filtered by the legal policy and
//! carrying nothing about who the resident is), claiming (`queue.claim`),
//! several chats at once with unread counts, a sound and a visible alert,
//! knocks in the waiting rooms of this staff member's meetings
//! (`lobby.knock`), and in each chat canned replies (`canned.list`),
//! transfer (`GET /api/staff/chats/{room}/colleagues`, `queue.transfer`),
//! offered times (`GET /api/staff/chats/{room}/free-times`,
//! `chat.offer_times`), video (`chat.escalate_video`) and closing with an
//! outcome (`chat.close`). The messages residents left while nobody was
//! online come from `GET /api/staff/offline-messages`.
//!
//! Every string the script shows is rendered here, translated, into a JSON
//! block and a `<template>`; the script holds none of its own.

use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use booking::catalog;
use maud::{html, Markup};
use serde_json::{Map, Value};

use super::{page, script_json, script_strings, today, tr, Ctx, PageResult};
use crate::clock::now;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/staff/console", get(console))
}

/// The outcomes a staff member closes a chat with (contract 6).
pub const OUTCOMES: [&str; 4] = ["resolved", "booked", "referred", "no_contact"];

/// The strings the script shows, by the name it uses.
const SCRIPT_TEXT: &[(&str, &str)] = &[
    ("connecting", "page.console.connecting"),
    ("connected", "page.console.connected"),
    ("reconnecting", "page.console.reconnecting"),
    ("available_on", "page.console.available_on"),
    ("available_off", "page.console.available_off"),
    ("claim", "page.console.claim"),
    ("waited", "page.console.waited"),
    ("anonymous", "page.console.anonymous"),
    ("home", "page.console.home"),
    ("home_label", "page.console.home_label"),
    ("already_taken", "page.console.already_taken"),
    ("at_limit", "page.console.at_limit"),
    ("gone", "page.console.gone"),
    ("failed", "page.console.failed"),
    ("new_entry", "page.console.new_entry"),
    ("assigned", "page.console.assigned"),
    ("new_message", "page.console.new_message"),
    ("knock", "page.console.knock"),
    ("open_meeting", "page.console.open_meeting"),
    ("dismiss", "page.console.dismiss"),
    ("unread", "page.console.unread"),
    ("you", "page.meeting.you"),
    ("role_resident", "page.meeting.role_resident"),
    ("role_social_worker", "page.chats.social_worker"),
    ("role_interpreter", "page.chats.interpreter"),
    ("assigned_you", "page.console.assigned_you"),
    ("colleague_took", "page.console.colleague_took"),
    ("in_sentence_resident", "page.role.in_sentence.resident"),
    (
        "in_sentence_social_worker",
        "page.role.in_sentence.social_worker",
    ),
    ("typing", "page.console.typing"),
    ("sent", "page.console.sent"),
    ("read", "page.console.read"),
    ("times_offered", "page.console.times_offered"),
    ("video_opened", "page.console.video_opened"),
    ("open_video", "page.console.open_video"),
    ("ended_by_resident", "page.console.ended_by_resident"),
    ("ended", "page.console.ended"),
    ("unassigned_no_answer", "page.console.unassigned.no_answer"),
    ("unassigned_offline", "page.console.unassigned.offline"),
    (
        "unassigned_transferred",
        "page.console.unassigned.transferred",
    ),
    ("not_eligible", "page.console.not_eligible"),
    ("no_colleagues", "page.console.no_colleagues"),
    ("colleague", "page.console.colleague_option"),
    ("no_times", "page.console.no_times"),
    ("choose_times", "page.console.choose_times"),
    ("outcome_missing", "page.console.outcome_missing"),
    ("handled", "page.console.handled"),
    ("mark_handled", "page.console.mark_handled"),
    ("offline_name", "page.console.offline_name"),
    ("offline_email", "page.console.offline_email"),
    ("offline_phone", "page.console.offline_phone"),
    ("offline_received", "page.console.offline_received"),
    ("time_when", "page.time.when"),
    ("time_clock", "page.time.clock"),
    ("time_range", "page.time.range"),
    ("date_long", "page.date.long"),
];

/// The console of the signed-in staff member. Only staff may open it; what
/// it shows is what the hub and the staff API let this staff member see.
#[tracing::instrument(skip(state, ctx))]
async fn console(State(state): State<AppState>, ctx: Ctx) -> PageResult {
    let staff = ctx.staff()?;
    let services = catalog::services(&state.db).await?;
    let municipalities = catalog::municipalities(&state.db).await?;
    let mut names = Map::new();
    for service in &services {
        let key = format!("service.{}", service.code);
        let name = tr(&key);
        let name = if name == key {
            service.code.to_string()
        } else {
            name
        };
        names.insert(service.code.to_string(), Value::String(name));
    }
    let places: Map<String, Value> = municipalities
        .iter()
        .map(|m| (m.code.to_string(), Value::String(m.name.clone())))
        .collect();
    let data = serde_json::json!({
        "text": script_strings(SCRIPT_TEXT),
        "services": names,
        "municipalities": places,
        "weekdays": (1..=7).map(|d| tr(&format!("page.weekday.{d}"))).collect::<Vec<_>>(),
        "months": (1..=12).map(|m| tr(&format!("page.month.{m}"))).collect::<Vec<_>>(),
        "languages": booking::Language::ALL
            .iter()
            .map(|l| (l.code().to_owned(), Value::String(tr(&format!("page.language.{}", l.code())))))
            .collect::<Map<String, Value>>(),
    });
    let body = body(&ctx, staff.id.as_str(), &today(now()).to_string(), &data);
    Ok(page(&ctx, &tr("page.console.title"), body).into_response())
}

fn body(ctx: &Ctx, staff_id: &str, today: &str, data: &Value) -> Markup {
    html! {
        h1 #page-title { (tr("page.console.title")) }
        p { (tr("page.console.intro")) }
        noscript { p .problem { (tr("page.console.needs_script")) } }
        div #console .console
            data-csrf=(ctx.csrf())
            data-me={ "staff:" (staff_id) }
            data-language=(ctx.locale.code())
            data-today=(today)
        {
            p #console-status .meeting-status role="status" { (tr("page.console.connecting")) }
            div #console-alert .console-alert aria-live="assertive" aria-atomic="true" {}

            section .availability aria-labelledby="availability-title" {
                h2 #availability-title { (tr("page.console.availability")) }
                div .choice {
                    input #taking-chats type="checkbox" role="switch" disabled;
                    label for="taking-chats" { (tr("page.console.taking")) }
                }
                div .field {
                    label for="max-chats" { (tr("page.console.max_chats")) }
                    input #max-chats .narrow type="number" min="1" max="10" value="2" inputmode="numeric" disabled;
                }
                p #availability-state .hint {}
            }

            div .console-columns {
                section .queue aria-labelledby="queue-title" {
                    h2 #queue-title { (tr("page.console.queue")) }
                    p #queue-empty { (tr("page.console.queue_empty")) }
                    ul #queue-list .cards role="list" {}
                }
                section .knocks aria-labelledby="knocks-title" {
                    h2 #knocks-title { (tr("page.console.knocks")) }
                    p #knocks-empty { (tr("page.console.knocks_empty")) }
                    ul #knock-list .cards role="list" {}
                }
            }

            section .mine aria-labelledby="mine-title" {
                h2 #mine-title { (tr("page.console.mine")) }
                p #mine-empty { (tr("page.console.mine_empty")) }
                ul #chat-switch .chat-switch role="list" aria-labelledby="mine-title" {}
                div #chat-panels {}
            }

            section .offline aria-labelledby="offline-title" {
                h2 #offline-title { (tr("page.console.offline")) }
                p .hint { (tr("page.console.offline_hint")) }
                button #offline-refresh .secondary type="button" { (tr("page.console.refresh")) }
                p #offline-empty hidden { (tr("page.console.offline_empty")) }
                ul #offline-list .cards role="list" {}
            }
        }
        (chat_template())
        (script_json("console-data", data))
        script type="module" src=(crate::assets::url("console.js")) {}
    }
}

/// One chat's panel. The script clones it per chat and makes each `data-id`
/// and `data-for` into a unique `id` and `for`.
fn chat_template() -> Markup {
    html! {
        template #chat-template {
            section .chat-panel {
                h3 .chat-title data-id="title" tabindex="-1" {}
                p .chat-state role="status" {}
                div .log role="log" tabindex="0" {
                    ol .transcript {}
                }
                p .typing aria-live="polite" {}
                form .chat-form {
                    div .field {
                        label data-for="text" { (tr("page.console.message")) }
                        textarea data-id="text" name="text" rows="3" maxlength="4000" {}
                    }
                    button type="submit" { (tr("page.console.send")) }
                }
                div .chat-tools {
                    div .tool .canned {
                        label data-for="canned" { (tr("page.console.canned")) }
                        div .row {
                            select data-id="canned" {
                                option value="" { (tr("page.console.canned_choose")) }
                            }
                            button .secondary .insert-canned type="button" { (tr("page.console.insert")) }
                        }
                    }
                    fieldset .tool .offer {
                        legend { (tr("page.console.offer")) }
                        div .row {
                            div .field {
                                label data-for="from" { (tr("page.console.from_date")) }
                                input data-id="from" type="date";
                            }
                            button .secondary .show-times type="button" { (tr("page.console.show_times")) }
                        }
                        div .times {}
                        p .zone { (tr("page.times.zone")) }
                        button .send-times type="button" hidden { (tr("page.console.send_times")) }
                    }
                    div .tool .transfer {
                        label data-for="colleague" { (tr("page.console.transfer")) }
                        div .row {
                            select data-id="colleague" {}
                            button .secondary .refresh-colleagues type="button" { (tr("page.console.refresh")) }
                            button .do-transfer type="button" { (tr("page.console.transfer_button")) }
                        }
                        p .hint .colleagues-note {}
                    }
                    div .tool .video {
                        button .start-video type="button" { (tr("page.console.video")) }
                        p .video-link {}
                    }
                    div .tool .close {
                        label data-for="outcome" { (tr("page.console.outcome")) }
                        div .row {
                            select data-id="outcome" {
                                option value="" { (tr("page.console.outcome_choose")) }
                                @for outcome in OUTCOMES {
                                    option value=(outcome) { (tr(&format!("page.console.outcome.{outcome}"))) }
                                }
                            }
                            button .danger .close-chat type="button" { (tr("page.console.close")) }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_script_string_is_translated_in_every_language() {
        super::super::assert_translated_everywhere(SCRIPT_TEXT);
        for language in booking::Language::ALL {
            for outcome in OUTCOMES {
                let key = format!("page.console.outcome.{outcome}");
                let text = rust_i18n::t!(&key, locale = language.code());
                assert_ne!(text, key, "{}", language.code());
            }
        }
    }

    #[test]
    fn the_data_block_cannot_end_its_script_element() {
        let data = serde_json::json!({ "text": "</script><script>alert(1)</script>" });
        let ctx = Ctx {
            locale: booking::Language::Sv,
            here: "/staff/console".into(),
            who: super::super::Who::Anonymous,
            session: None,
        };
        let html = body(&ctx, "s1", "2026-01-01", &data).into_string();
        assert!(!html.contains("</script><script>"), "{html}");
        assert!(html.contains(r#"data-me="staff:s1""#), "{html}");
    }
}
