//! The delivery worker runs inside `kontakt serve`: what booking writes to the
//! outbox arrives as mail, and in demo mode `/dev/mail` shows it.

use std::time::Duration;

use kontakt_tests::spawn_apps;
use serde_json::json;

#[tokio::test]
async fn a_sign_in_link_arrives_as_mail_and_shows_on_the_dev_page() {
    for app in spawn_apps().await {
        let sent = app
            .post(
                "/api/auth/resident/link",
                None,
                &json!({"email": "anna@example.se"}),
            )
            .await;
        assert_eq!(sent.status(), 202);
        // The worker polls the outbox; wait until the page lists the mail.
        let mail = app
            .dev_mail_to("anna@example.se", Duration::from_secs(20))
            .await;
        assert!(
            mail.contains("/auth/resident/callback?token="),
            "the mail carries the sign-in link"
        );
        assert!(
            !mail.contains("Ekonomiskt"),
            "no service name in a sign-in mail"
        );
    }
}

#[tokio::test]
async fn the_dev_mail_page_exists_only_in_demo_mode() {
    let app =
        kontakt_tests::spawn_app_with(booking::testing::TestDb::sqlite().await, "sqlite", |s| {
            s.demo = false
        })
        .await;
    assert_eq!(app.get("/dev/mail", None).await.status(), 404);
}

/// A page session for `resident`, as the sign-in link would set it: the
/// cookie header and the session's CSRF value for forms.
async fn page_session(
    app: &kontakt_tests::TestApp,
    resident: &booking::accounts::Resident,
) -> (String, String) {
    let (token, claims) = app.resident_session(resident).await;
    (
        format!("{}={token}", web::auth::SESSION_COOKIE),
        claims.csrf,
    )
}

/// Posts a page form with the session cookie and returns the status of the
/// page it ends on.
async fn post_form(app: &kontakt_tests::TestApp, cookie: &str, path: &str, form: &[(&str, &str)]) {
    let response = reqwest::Client::new()
        .post(app.url(path))
        .header("cookie", cookie)
        .form(form)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200, "{path} on {}", app.backend);
}

/// The mails written for `recipient`, as the file transport stored them,
/// once at least `n` have arrived.
async fn mails_for(app: &kontakt_tests::TestApp, recipient: &str, n: usize) -> Vec<Vec<u8>> {
    let dir = app.data_dir().join("outbox");
    kontakt_tests::eventually(Duration::from_secs(20), || async {
        let raws: Vec<Vec<u8>> = std::fs::read_dir(&dir)
            .map(|entries| {
                entries
                    .filter_map(|e| std::fs::read(e.ok()?.path()).ok())
                    .filter(|raw| {
                        notify::mailbox::parse("m", raw).is_some_and(|m| m.to == recipient)
                    })
                    .collect()
            })
            .unwrap_or_default();
        (raws.len() >= n).then_some(raws)
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "{n} mails for {recipient} did not arrive on {}",
            app.backend
        )
    })
}

/// Words a discreet mail must not contain, lower case: the social services
/// in the four languages, and the demo's discreet services.
const NOT_IN_DISCREET_MAIL: &[&str] = &[
    "socialtjänst",
    "social services",
    "sosiaalipalvel",
    "الخدمات الاجتماعية",
    "våld",
    "missbruk",
    "stöd till anhöriga",
];

fn assert_discreet(raw: &[u8], backend: &str) -> notify::mailbox::StoredMail {
    let mail = notify::mailbox::parse("m", raw).expect("a parsable mail");
    let ics = mail
        .calendar
        .as_ref()
        .map(|c| c.ics.replace("\r\n ", ""))
        .unwrap_or_default();
    let raw_text = String::from_utf8_lossy(raw);
    for text in [
        &mail.subject,
        &mail.text,
        &mail.html,
        &ics,
        &raw_text.to_string(),
    ] {
        let lower = text.to_lowercase();
        for word in NOT_IN_DISCREET_MAIL {
            assert!(!lower.contains(word), "{backend}: {word:?} in {text}");
        }
    }
    assert!(ics.contains("ORGANIZER;CN="), "{backend}: {ics}");
    mail
}

/// A discreet service's mail goes out under the neutral title: the demo
/// marks violence in close relationships as discreet, so its confirmation
/// says "Mötet är bekräftat" and nothing about the social services.
#[tokio::test]
async fn a_discreet_services_mail_does_not_name_the_social_services() {
    for app in spawn_apps().await {
        let resident = app
            .new_resident("discreet-service@example.se", "2418")
            .await;
        let (cookie, csrf) = page_session(&app, &resident).await;
        let times = app.free_times("vald-i-nara-relationer", "2418", 13).await;
        let at = times[0]["starts_at"].as_str().unwrap();
        let confirm = reqwest::Client::new()
            .get(app.url(&format!(
                "/book?service=vald-i-nara-relationer&home=2418&starts_at={}",
                at.replace('+', "%2B")
            )))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            confirm.contains("name=\"neutral_title\""),
            "{}: a discreet booking offers neutral titles",
            app.backend
        );
        post_form(
            &app,
            &cookie,
            "/book",
            &[
                ("csrf", &csrf),
                ("service", "vald-i-nara-relationer"),
                ("starts_at", at),
                ("language", ""),
            ],
        )
        .await;
        let raws = mails_for(&app, "discreet-service@example.se", 1).await;
        let mail = assert_discreet(&raws[0], app.backend);
        assert_eq!(mail.subject, "Mötet är bekräftat", "{}", app.backend);
    }
}

/// "Discreet mail for all my bookings" on My pages: the form needs the
/// session's CSRF value, makes an ordinary service's mail discreet under
/// the title chosen at booking, and makes mail already queued discreet.
#[tokio::test]
async fn discreet_mail_for_all_bookings_is_a_choice_on_my_pages() {
    for app in spawn_apps().await {
        let resident = app.new_resident("discreet-all@example.se", "2418").await;
        let (cookie, csrf) = page_session(&app, &resident).await;
        let my = reqwest::Client::new()
            .get(app.url("/my"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(my.contains("action=\"/my/discreet-mail\""), "{my}");

        // An ordinary booking first: its reminders wait in the outbox.
        let times = app.free_times("stod-till-anhoriga", "2418", 13).await;
        let later = times.last().unwrap()["starts_at"].as_str().unwrap();
        post_form(
            &app,
            &cookie,
            "/book",
            &[
                ("csrf", &csrf),
                ("service", "stod-till-anhoriga"),
                ("starts_at", later),
            ],
        )
        .await;
        let queued = |app: &kontakt_tests::TestApp| {
            let db = app.db.clone();
            async move {
                booking::outbox::pending_discretion(
                    &db,
                    &booking::EmailAddress::parse("discreet-all@example.se").unwrap(),
                    "reminder",
                )
                .await
                .unwrap()
            }
        };
        let before = queued(&app).await;
        assert!(!before.is_empty(), "{}: reminders are queued", app.backend);
        assert!(before.iter().all(Option::is_none), "{before:?}");

        // Without the CSRF value the choice is refused and nothing changes.
        let refused = reqwest::Client::new()
            .post(app.url("/my/discreet-mail"))
            .header("cookie", &cookie)
            .form(&[("csrf", "wrong"), ("discreet", "on")])
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 403, "{}", app.backend);
        assert!(!app.resident("discreet-all@example.se").await.discreet_mail);

        post_form(
            &app,
            &cookie,
            "/my/discreet-mail",
            &[("csrf", &csrf), ("discreet", "on")],
        )
        .await;
        assert!(app.resident("discreet-all@example.se").await.discreet_mail);
        let after = queued(&app).await;
        assert!(
            after
                .iter()
                .all(|t| *t == Some(booking::outbox::NeutralTitle::Meeting)),
            "{}: queued reminders became discreet: {after:?}",
            app.backend
        );

        // A new booking of an ordinary service now goes out discreet, under
        // the title the resident picks.
        let first = times[0]["starts_at"].as_str().unwrap();
        post_form(
            &app,
            &cookie,
            "/book",
            &[
                ("csrf", &csrf),
                ("service", "stod-till-anhoriga"),
                ("starts_at", first),
                ("neutral_title", "call"),
            ],
        )
        .await;
        let raws = mails_for(&app, "discreet-all@example.se", 2).await;
        let subjects: Vec<String> = raws
            .iter()
            .map(|raw| notify::mailbox::parse("m", raw).unwrap().subject)
            .collect();
        let discreet = raws
            .iter()
            .find(|raw| {
                notify::mailbox::parse("m", raw).unwrap().subject == "Samtalet är bekräftat"
            })
            .unwrap_or_else(|| panic!("{}: no discreet confirmation in {subjects:?}", app.backend));
        assert_discreet(discreet, app.backend);
        // A title outside the fixed set is refused.
        let bad = reqwest::Client::new()
            .post(app.url("/book"))
            .header("cookie", &cookie)
            .form(&[
                ("csrf", csrf.as_str()),
                ("service", "stod-till-anhoriga"),
                ("starts_at", times[1]["starts_at"].as_str().unwrap()),
                ("neutral_title", "Socialtjänsten"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(bad.status(), 422, "{}", app.backend);
    }
}
