use base64::Engine;
use booking::outbox::Message;
use kontakt_tests::{spawn_app_with, spawn_apps, TEST_SECRET};
use serde_json::json;
use web::auth::{Keys, SubjectKind};

#[tokio::test]
async fn a_resident_signs_in_once_with_the_emailed_link() {
    for app in spawn_apps().await {
        let sent = app
            .post(
                "/api/auth/resident/link",
                None,
                &json!({"email": "anna@example.se"}),
            )
            .await;
        assert_eq!(sent.status(), 202);
        let Some(Message::SignInLink { token, .. }) =
            app.last_message("anna@example.se", "sign_in_link").await
        else {
            panic!("no sign-in link in the outbox");
        };
        let redeemed = app
            .post("/api/auth/resident/redeem", None, &json!({"token": token}))
            .await;
        assert_eq!(redeemed.status(), 200, "{}", app.backend);
        let session: serde_json::Value = redeemed.json().await.unwrap();
        let bearer = session["token"].as_str().unwrap();
        assert_eq!(app.get("/api/bookings", Some(bearer)).await.status(), 200);
        let again = app
            .post("/api/auth/resident/redeem", None, &json!({"token": token}))
            .await;
        assert_eq!(again.status(), 401, "a link works once");
    }
}

#[tokio::test]
async fn an_unknown_address_gets_the_same_answer_and_no_mail() {
    for app in spawn_apps().await {
        let sent = app
            .post(
                "/api/auth/resident/link",
                None,
                &json!({"email": "nobody@example.se"}),
            )
            .await;
        assert_eq!(sent.status(), 202);
        assert!(app
            .last_message("nobody@example.se", "sign_in_link")
            .await
            .is_none());
    }
}

#[tokio::test]
async fn a_first_sign_in_registers_the_resident() {
    for app in spawn_apps().await {
        let body = json!({"email": "ny@example.se", "name": "Ny Person", "home_municipality": "2463", "language": "fi"});
        assert_eq!(
            app.post("/api/auth/resident/link", None, &body)
                .await
                .status(),
            202
        );
        let resident = app.resident("ny@example.se").await;
        assert_eq!(resident.home.as_str(), "2463");
        assert!(app
            .last_message("ny@example.se", "sign_in_link")
            .await
            .is_some());
        let bad = json!({"email": "x@example.se", "name": "X", "home_municipality": "9999"});
        assert_eq!(
            app.post("/api/auth/resident/link", None, &bad)
                .await
                .status(),
            422
        );
    }
}

#[tokio::test]
async fn expired_tampered_foreign_and_unsigned_tokens_are_refused() {
    for app in spawn_apps().await {
        let anna = app.resident("anna@example.se").await;
        let keys = Keys::new(TEST_SECRET.as_bytes());
        let now = kontakt_tests::now();
        let (expired, _) = keys.issue(&anna.id, SubjectKind::Resident, -1, now);
        let (foreign, _) = Keys::new(b"some-other-secret-of-enough-length!!").issue(
            &anna.id,
            SubjectKind::Resident,
            30,
            now,
        );
        let (good, _) = keys.issue(&anna.id, SubjectKind::Resident, 30, now);
        let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut claims: serde_json::Value =
            serde_json::from_slice(&b64.decode(&parts[1]).unwrap()).unwrap();
        claims["kind"] = json!("staff");
        parts[1] = b64.encode(claims.to_string());
        let tampered = parts.join(".");
        let unsigned = format!(
            "{}.{}.",
            b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
            parts[1]
        );
        for (name, token) in [
            ("expired", expired),
            ("foreign", foreign),
            ("tampered", tampered),
            ("alg none", unsigned),
            ("garbage", "x.y.z".into()),
        ] {
            let status = app.get("/api/bookings", Some(&token)).await.status();
            assert_eq!(status, 401, "{name} token on {}", app.backend);
        }
        assert_eq!(app.get("/api/bookings", Some(&good)).await.status(), 200);
        let staff_route = app.get("/api/staff/me", Some(&good)).await.status();
        assert_eq!(
            staff_route, 401,
            "a resident session is not a staff session"
        );
    }
}

#[tokio::test]
async fn staff_sign_in_checks_the_password() {
    for app in spawn_apps().await {
        let wrong = app
            .post("/api/auth/staff/login", None, &json!({"email": "handlaggare.lycksele@kontakt.demo", "password": "not-the-password"}))
            .await;
        assert_eq!(wrong.status(), 401);
        let token = app.staff_token("handlaggare.lycksele@kontakt.demo").await;
        let me: serde_json::Value = app
            .get("/api/staff/me", Some(&token))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(me["municipality"], "2481");
    }
}

#[tokio::test]
async fn sign_in_is_rate_limited() {
    let app = spawn_app_with(booking::testing::TestDb::sqlite().await, "sqlite", |s| {
        s.sign_in_per_minute = 3
    })
    .await;
    let body = json!({"email": "handlaggare.lycksele@kontakt.demo", "password": "wrong-password"});
    for _ in 0..3 {
        assert_eq!(
            app.post("/api/auth/staff/login", None, &body)
                .await
                .status(),
            401
        );
    }
    let limited = app.post("/api/auth/staff/login", None, &body).await;
    assert_eq!(limited.status(), 429);
    assert!(limited.headers().get("retry-after").is_some());
    let link = app
        .post(
            "/api/auth/resident/link",
            None,
            &json!({"email": "anna@example.se"}),
        )
        .await;
    assert_eq!(link.status(), 429, "the resident link shares the limit");
}

#[tokio::test]
async fn cookie_sessions_need_the_csrf_header_to_change_things() {
    for app in spawn_apps().await {
        // The client keeps the session cookie from the sign-in response.
        let login = app
            .post("/api/auth/staff/login", None, &json!({"email": "handlaggare.lycksele@kontakt.demo", "password": booking::seed::DEMO_PASSWORD}))
            .await;
        let csrf = login.json::<serde_json::Value>().await.unwrap()["csrf"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(
            app.get("/api/staff/me", None).await.status(),
            200,
            "the cookie signs in reads"
        );
        let body = json!({"resident_email": "anna@example.se", "service": "stod-till-anhoriga", "starts_at": "2030-01-01T10:00:00+01:00"});
        let without = app
            .client
            .post(app.url("/api/staff/bookings"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(without.status(), 403, "no CSRF header");
        let with = app
            .client
            .post(app.url("/api/staff/bookings"))
            .header("x-csrf-token", csrf)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_ne!(
            with.status(),
            403,
            "with the CSRF header the request reaches the handler"
        );
    }
}
