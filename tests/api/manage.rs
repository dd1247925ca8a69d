//! The manage link in a booking's mail. Whoever holds it (a shared inbox, a
//! forwarded mail, an old mail found years later) sees a meeting with the
//! social services and its time, never the service; and the link stops
//! working once it has cancelled its booking or the meeting is over.

use std::time::Duration;

use booking::accounts;
use booking::bookings::{self, DISPLAY_ZONE};
use booking::slots::{self, Template};
use booking::ServiceCode;
use kontakt_tests::{spawn_apps, TestApp};
use serde_json::{json, Value};

/// Every service's code and its name in every language, as the public API
/// gives them, and each name as it appears escaped in HTML.
async fn service_words(app: &TestApp) -> Vec<String> {
    let mut words = Vec::new();
    for lang in ["sv", "en", "fi", "ar"] {
        let services: Vec<Value> = app
            .get(&format!("/api/services?lang={lang}"), None)
            .await
            .json()
            .await
            .expect("json");
        assert_eq!(services.len(), 5, "the demo's five services");
        for s in services {
            let name = s["name"].as_str().expect("a name");
            words.push(name.to_owned());
            words.push(escaped(name));
            words.push(s["code"].as_str().expect("a code").to_owned());
        }
    }
    words.sort();
    words.dedup();
    words
}

/// `text` as HTML shows it: the escaper's five characters replaced.
fn escaped(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

fn assert_names_none(words: &[String], text: &str, what: &str) {
    for word in words {
        assert!(!text.contains(word.as_str()), "{what} names {word:?}");
    }
}

/// Books the first free time of `service` for `email`'s resident through the
/// API and returns the answer.
async fn book(app: &TestApp, email: &str, service: &str, home: &str) -> Value {
    let resident = app.resident(email).await;
    let times = app.free_times(service, home, 14).await;
    let booked = app
        .post(
            "/api/bookings",
            Some(&app.resident_token(&resident).await),
            &json!({"service": service, "starts_at": times[0]["starts_at"]}),
        )
        .await;
    assert_eq!(booked.status(), 201, "{}", app.backend);
    booked.json().await.expect("json")
}

#[tokio::test]
async fn the_mail_its_manage_link_and_the_manage_api_name_no_service() {
    for app in spawn_apps().await {
        let words = service_words(&app).await;
        let booked = book(&app, "erik@example.se", "missbruk-beroende", "1283").await;
        let token = booked["manage_token"].as_str().expect("a token");

        // The confirmation mail, its calendar invitation and its links.
        let mail = app
            .dev_mail_to("erik@example.se", Duration::from_secs(20))
            .await;
        assert!(
            mail.contains("BEGIN:VCALENDAR"),
            "the mail has its invitation"
        );
        let link = format!("/b/{token}");
        assert!(mail.contains(&link), "the mail carries the manage link");
        assert_names_none(&words, &mail, "the confirmation mail");

        // The page the link opens, in every language, and the API.
        for lang in ["sv", "en", "fi", "ar"] {
            let page = app.get(&format!("{link}?lang={lang}"), None).await;
            assert_eq!(page.status(), 200, "{lang} on {}", app.backend);
            let html = page.text().await.unwrap();
            assert!(html.contains("<time"), "the page shows the time");
            assert_names_none(&words, &html, &format!("the manage page in {lang}"));
        }
        let api = app.get(&format!("/api/manage/{token}"), None).await;
        assert_eq!(api.status(), 200);
        let api = api.text().await.unwrap();
        assert_names_none(&words, &api, "the manage API");
        let seen: Value = serde_json::from_str(&api).unwrap();
        assert_eq!(seen["starts_at"], booked["booking"]["starts_at"]);
        assert_eq!(seen["status"], "booked");
        for field in [
            "service",
            "service_name",
            "performed_by",
            "performed_by_name",
        ] {
            assert!(seen.get(field).is_none(), "{field} in {seen}");
        }
    }
}

#[tokio::test]
async fn cancelling_by_the_manage_page_spends_the_link() {
    for app in spawn_apps().await {
        let booked = book(&app, "anna@example.se", "stod-till-anhoriga", "2418").await;
        let token = booked["manage_token"].as_str().expect("a token");
        let cancelled = app
            .client
            .post(app.url(&format!("/b/{token}/cancel")))
            .form(&[("x", "")])
            .send()
            .await
            .expect("sent");
        assert_eq!(cancelled.status(), 200, "{}", app.backend);
        let html = cancelled.text().await.unwrap();
        assert!(html.contains("Bokningen är avbokad"), "{html}");
        assert!(html.contains("status-cancelled"), "{html}");

        let again = app.get(&format!("/b/{token}"), None).await;
        assert_eq!(again.status(), 404, "{}", app.backend);
        let again = again.text().await.unwrap();
        assert!(again.contains("Länken fungerar inte längre"), "{again}");
        let unknown = app.get("/b/not-a-token", None).await;
        assert_eq!(unknown.status(), 404);
        // The pages differ only in the address, which the language links
        // repeat.
        assert_eq!(
            again.replace(token, "not-a-token"),
            unknown.text().await.unwrap(),
            "a spent link looks exactly like one that never existed"
        );
        let second = app
            .client
            .post(app.url(&format!("/b/{token}/cancel")))
            .form(&[("x", "")])
            .send()
            .await
            .expect("sent");
        assert_eq!(second.status(), 404);
        let api = app.get(&format!("/api/manage/{token}"), None).await;
        assert_eq!(api.status(), 404);

        // Nothing was lost: the resident still sees the cancelled booking.
        let anna = app.resident("anna@example.se").await;
        let id = booked["booking"]["id"].as_str().unwrap();
        let mine: Value = app
            .get(
                &format!("/api/bookings/{id}"),
                Some(&app.resident_token(&anna).await),
            )
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(mine["status"], "cancelled");
    }
}

#[tokio::test]
async fn a_manage_link_stops_working_when_its_meeting_is_over() {
    for app in spawn_apps().await {
        // Yesterday's meeting: the Helsingborg staff member worked yesterday
        // evening, and the resident booked it the day before.
        let tz = bookings::zone(DISPLAY_ZONE).unwrap();
        let today = jiff::Timestamp::now().to_zoned(tz.clone()).date();
        let yesterday = today.yesterday().unwrap();
        let staff = accounts::all_staff(&app.db)
            .await
            .unwrap()
            .into_iter()
            .find(|s| s.email.as_str() == "handlaggare.helsingborg@kontakt.demo")
            .expect("the demo's Helsingborg staff member");
        slots::add_template(
            &app.db,
            &Template {
                id: String::new(),
                staff_id: staff.id.clone(),
                weekday: yesterday.weekday().to_monday_one_offset(),
                start_minute: 18 * 60,
                end_minute: 19 * 60,
                valid_from: yesterday,
                valid_to: yesterday,
            },
        )
        .await
        .unwrap();
        let starts_at = yesterday.at(18, 0, 0, 0).to_zoned(tz).unwrap().timestamp();
        let the_day_before = starts_at
            .checked_sub(jiff::SignedDuration::from_hours(24))
            .unwrap();
        let erik = app.resident("erik@example.se").await;
        let past = bookings::book(
            &app.db,
            &erik,
            &ServiceCode::parse("stod-till-anhoriga").unwrap(),
            starts_at,
            None,
            the_day_before,
        )
        .await
        .expect("booked the day before");
        assert!(past.booking.range.end() < jiff::Timestamp::now());

        let page = app.get(&format!("/b/{}", past.manage_token), None).await;
        assert_eq!(page.status(), 404, "{}", app.backend);
        assert!(page
            .text()
            .await
            .unwrap()
            .contains("Länken fungerar inte längre"));
        let api = app
            .get(&format!("/api/manage/{}", past.manage_token), None)
            .await;
        assert_eq!(api.status(), 404);
        let cancel = app
            .post(
                &format!("/api/manage/{}/cancel", past.manage_token),
                None,
                &json!({}),
            )
            .await;
        assert_eq!(cancel.status(), 404);

        // A meeting still to come keeps its link.
        let coming = book(&app, "erik@example.se", "stod-till-anhoriga", "1283").await;
        let token = coming["manage_token"].as_str().unwrap();
        assert_eq!(
            app.get(&format!("/api/manage/{token}"), None)
                .await
                .status(),
            200
        );
    }
}
