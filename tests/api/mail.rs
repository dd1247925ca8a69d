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
        let page = app
            .wait_for_page("/dev/mail", Duration::from_secs(20), |html| {
                html.contains("anna@example.se")
            })
            .await
            .unwrap_or_else(|| panic!("no mail reached /dev/mail on {}", app.backend));
        let id = page
            .split("href=\"/dev/mail/")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("a link to the mail");
        let mail = app
            .get(&format!("/dev/mail/{id}"), None)
            .await
            .text()
            .await
            .unwrap();
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
