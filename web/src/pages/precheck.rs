//! The pre-call check as a piece of a page: choose the camera and the
//! microphone, see oneself, a microphone level meter, and a test of the
//! connection through the relay (`assets/precheck.js`, which mounts itself
//! on the section). The meeting page shows it before the meeting; a guest
//! page adds [`section`] with the address its credentials come from.
//!
//! The labels are rendered here; the sentences the script shows come as
//! page data (`precheck-text`), and the credentials from
//! `POST /api/precheck/turn` (`api/precheck.rs`), which decides who may
//! run the check.

use maud::{html, Markup};

use super::{script_json, script_strings, tr};

/// The strings the script shows, by the name it uses.
const SCRIPT_TEXT: &[(&str, &str)] = &[
    ("devices_starting", "page.precheck.devices_starting"),
    ("devices_ok", "page.precheck.devices_ok"),
    ("level_heard", "page.precheck.level_heard"),
    ("level_quiet", "page.precheck.level_quiet"),
    ("camera_blocked", "page.precheck.camera_blocked"),
    ("camera_missing", "page.precheck.camera_missing"),
    ("devices_missing", "page.precheck.devices_missing"),
    ("camera_in_use", "page.precheck.camera_in_use"),
    ("devices_failed", "page.precheck.devices_failed"),
    ("no_webrtc", "page.precheck.no_webrtc"),
    ("testing", "page.precheck.testing"),
    ("testing_transport", "page.precheck.testing_transport"),
    ("transport_works", "page.precheck.transport_works"),
    ("transport_blocked", "page.precheck.transport_blocked"),
    ("works", "page.precheck.works"),
    ("works_fallback", "page.precheck.works_fallback"),
    ("nothing_works", "page.precheck.nothing_works"),
    ("no_relay", "page.precheck.no_relay"),
    ("rate_limited", "page.precheck.rate_limited"),
    ("check_failed", "page.precheck.check_failed"),
];

/// Where a signed-in resident or staff member gets the check's credentials.
pub const CREDENTIALS_URL: &str = "/api/precheck/turn";

/// The check, for a page whose caller fetches credentials at
/// `credentials_url`. With a cookie session's CSRF value the module mounts
/// itself; with none, the page's script mounts it with the Bearer token it
/// holds (a guest's): `mountPrecheck(root, { token })`.
pub fn section(credentials_url: &str, csrf: Option<&str>) -> Markup {
    html! {
        details class="precheck" id="precheck" open
            data-precheck=(if csrf.is_some() { "auto" } else { "" })
            data-credentials-url=(credentials_url) data-csrf=[csrf] {
            summary { h2 id="precheck-title" { (tr("page.precheck.title")) } }
            p { (tr("page.precheck.intro")) }
            div class="precheck-devices" {
                div class="field" {
                    label for="precheck-camera" { (tr("page.precheck.camera")) }
                    select id="precheck-camera" disabled {}
                }
                div class="field" {
                    label for="precheck-microphone" { (tr("page.precheck.microphone")) }
                    select id="precheck-microphone" disabled {}
                }
            }
            figure class="tile self precheck-self" {
                video id="precheck-video" autoplay muted playsinline {}
                figcaption { (tr("page.precheck.you")) }
            }
            div class="precheck-level" {
                label for="precheck-level" { (tr("page.precheck.level")) }
                meter id="precheck-level" min="0" max="100" low="5" value="0" {}
                span id="precheck-level-text" {}
            }
            p id="precheck-devices-status" role="status" aria-live="polite" {}
            button type="button" id="precheck-run" { (tr("page.precheck.run")) }
            div id="precheck-result" role="status" aria-live="polite" {
                p id="precheck-summary" {}
                ul id="precheck-transports" role="list" {}
            }
        }
        (script_json("precheck-text", &script_strings(SCRIPT_TEXT)))
        script type="module" src=(crate::assets::url("precheck.js")) {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_script_string_is_translated_in_every_language() {
        super::super::assert_translated_everywhere(SCRIPT_TEXT);
    }
}
