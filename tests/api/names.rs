//! Names people type: at most 100 characters, no control or text direction
//! characters, refused with a clear 422 that loses nothing; and staff pages
//! isolate names with `<bdi>`, so that a name's direction cannot reorder the
//! page around it.

use booking::EmailAddress;
use kontakt_tests::{spawn_apps, TestApp};
use serde_json::{json, Value};

/// Asks for a first sign-in link as a new resident of Helsingborg.
async fn register(app: &TestApp, email: &str, name: &str) -> reqwest::Response {
    app.post(
        "/api/auth/resident/link",
        None,
        &json!({"email": email, "name": name, "home_municipality": "1283", "language": "sv"}),
    )
    .await
}

/// Waits until the delivery worker has answered a first sign-in request,
/// which is when the resident is registered.
async fn registered(app: &TestApp, email: &str) {
    app.sign_in_link(email, std::time::Duration::from_secs(10))
        .await
        .expect("the sign-in mail that registers the resident");
}

async fn exists(app: &TestApp, email: &str) -> bool {
    booking::accounts::resident_by_email(&app.db, &EmailAddress::parse(email).unwrap())
        .await
        .unwrap()
        .is_some()
}

#[tokio::test]
async fn a_name_too_long_or_with_direction_controls_is_refused_and_nothing_is_made() {
    for app in spawn_apps().await {
        let cases = [
            ("long@example.se", "a".repeat(20_000)),
            ("just-over@example.se", "å".repeat(101)),
            ("override@example.se", "Anna \u{202E}nossrednA".to_owned()),
            ("isolate@example.se", "Anna \u{2067}X\u{2069}".to_owned()),
            ("newline@example.se", "Anna\nLindqvist".to_owned()),
        ];
        for (email, name) in &cases {
            let answer = register(&app, email, name).await;
            assert_eq!(answer.status(), 422, "{email} on {}", app.backend);
            let body: Value = answer.json().await.unwrap();
            assert_eq!(body["error"], "invalid");
            assert!(
                body["detail"].as_str().unwrap().contains("name"),
                "the answer says what was wrong: {body}"
            );
            assert!(!exists(&app, email).await, "{email} was not registered");
        }

        // The longest name allowed, and a right-to-left one, are welcome.
        let longest = "å".repeat(100);
        for (email, name) in [
            ("longest@example.se", longest.as_str()),
            ("rtl@example.se", "ليلى حداد"),
        ] {
            let answer = register(&app, email, name).await;
            assert_eq!(answer.status(), 202, "{email} on {}", app.backend);
            registered(&app, email).await;
            let resident = app.resident(email).await;
            assert_eq!(resident.name, name);
        }
    }
}

#[tokio::test]
async fn staff_pages_isolate_resident_names() {
    for app in spawn_apps().await {
        let answer = register(&app, "rtl@example.se", "ليلى حداد").await;
        assert_eq!(answer.status(), 202);
        registered(&app, "rtl@example.se").await;
        let resident = app.resident("rtl@example.se").await;
        // Barn och familj meetings are home_only: Helsingborg's one staff
        // member for it serves this Helsingborg resident.
        let times = app.free_times("barn-och-familj", "1283", 14).await;
        let at = times[0]["starts_at"].as_str().unwrap();
        let booked = app
            .post(
                "/api/bookings",
                Some(&app.resident_token(&resident).await),
                &json!({"service": "barn-och-familj", "starts_at": at}),
            )
            .await;
        assert_eq!(booked.status(), 201, "{}", app.backend);

        let staff = app
            .staff_token("handlaggare.helsingborg@kontakt.demo")
            .await;
        let day = reqwest::Client::new()
            .get(app.url(&format!("/staff?date={}", &at[..10])))
            .header("cookie", format!("{}={staff}", web::auth::SESSION_COOKIE))
            .send()
            .await
            .expect("sent");
        assert_eq!(day.status(), 200, "{}", app.backend);
        let html = day.text().await.unwrap();
        assert!(
            html.contains("<bdi>ليلى حداد</bdi>"),
            "the day's table isolates the name: {html}"
        );
    }
}
