use std::time::Duration;

use base64::Engine;
use kontakt_tests::{spawn_app_with, spawn_apps, TEST_SECRET};
use serde_json::json;
use web::auth::{Keys, SubjectKind};

/// How long a test waits for the delivery worker to answer a sign-in
/// request; it is woken by the request, so this is only an upper bound.
const MAIL_WITHIN: Duration = Duration::from_secs(20);

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
        let token = app
            .sign_in_link("anna@example.se", MAIL_WITHIN)
            .await
            .expect("a sign-in link in the outbox");
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

/// Regression: a known address with a bad field was answered 202 and an
/// unknown one 422, and only a known one did the work of writing a link.
/// Now the whole request is checked first, and every outcome is the same
/// answer after the same write.
#[tokio::test]
async fn known_and_unknown_addresses_get_the_same_answers() {
    for app in spawn_apps().await {
        let answer = |body: serde_json::Value| {
            let app = &app;
            async move {
                let response = app.post("/api/auth/resident/link", None, &body).await;
                let status = response.status().as_u16();
                (status, response.text().await.unwrap())
            }
        };
        let known = "anna@example.se";
        let unknown = "nobody@example.se";
        let variants = [
            (json!({"language": "xx"}), 422),
            (json!({"name": "Anna", "home_municipality": "9999"}), 422),
            (json!({"name": "Anna", "home_municipality": "24"}), 422),
            (json!({"name": "Anna"}), 422),
            (json!({}), 202),
            (json!({"language": "fi"}), 202),
        ];
        for (fields, expected) in variants {
            let with = |email: &str| {
                let mut body = fields.clone();
                body["email"] = json!(email);
                body
            };
            let for_known = answer(with(known)).await;
            let for_unknown = answer(with(unknown)).await;
            assert_eq!(for_known.0, expected, "{fields} ({})", app.backend);
            assert_eq!(
                for_known, for_unknown,
                "{fields}: the same status and body ({})",
                app.backend
            );
        }
        assert!(
            app.sign_in_link(known, MAIL_WITHIN).await.is_some(),
            "the known address gets its link ({})",
            app.backend
        );
        assert!(app.last_message(unknown, "sign_in_link").await.is_none());
        assert!(
            app.resident(known).await.language == booking::Language::Sv,
            "a known resident's details are not changed by a request"
        );
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
        assert!(app
            .sign_in_link("ny@example.se", MAIL_WITHIN)
            .await
            .is_some());
        let resident = app.resident("ny@example.se").await;
        assert_eq!(resident.home.as_str(), "2463");
        assert_eq!(resident.language, booking::Language::Fi);
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
        let (good, claims) = app.resident_session(&anna).await;
        let sid = claims.session().expect("a session id");
        let (expired, _) = keys.issue(anna.id.as_str(), SubjectKind::Resident, &sid, -1, now);
        let (foreign, _) = Keys::new(b"some-other-secret-of-enough-length!!").issue(
            anna.id.as_str(),
            SubjectKind::Resident,
            &sid,
            30,
            now,
        );
        let unrecorded = booking::sessions::SessionId::random();
        let (no_session, _) = keys.issue(
            anna.id.as_str(),
            SubjectKind::Resident,
            &unrecorded,
            30,
            now,
        );
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
            ("a session never recorded", no_session),
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

/// Failures are counted per address and account: one person's failures
/// lock out their own account from that address, not a colleague behind
/// the same office address.
#[tokio::test]
async fn sign_in_is_rate_limited_per_address_and_account() {
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
    // A colleague at the same address still signs in, and a resident there
    // still gets a link.
    app.staff_token("handlaggare.mala@kontakt.demo").await;
    let link = app
        .post(
            "/api/auth/resident/link",
            None,
            &json!({"email": "anna@example.se"}),
        )
        .await;
    assert_eq!(
        link.status(),
        202,
        "one person's failures lock out no one else"
    );
}

/// Regression: the only limit was per address, so one account could be
/// tried from many addresses without end. After a few failures the account
/// itself must wait, whatever address or node the next try comes from, and
/// even the right password is refused until then.
#[tokio::test]
async fn an_account_waits_after_repeated_failures_from_any_address() {
    for app in spawn_apps().await {
        let email = "handlaggare.lycksele@kontakt.demo";
        let wrong = json!({"email": email, "password": "wrong-password"});
        for n in 1..booking::throttle::FREE_FAILURES {
            let status = app
                .post("/api/auth/staff/login", None, &wrong)
                .await
                .status();
            assert_eq!(status, 401, "failure {n} ({})", app.backend);
        }
        // The test servers allow 1000 attempts a minute per address, so
        // only the per-account limit can refuse from here on.
        let last = app.post("/api/auth/staff/login", None, &wrong).await;
        assert_eq!(last.status(), 401);
        let right = json!({"email": email, "password": booking::seed::DEMO_PASSWORD});
        let locked = app.post("/api/auth/staff/login", None, &right).await;
        assert_eq!(locked.status(), 429, "locked ({})", app.backend);
        let retry: u64 = locked.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            (1..=booking::throttle::FIRST_WAIT_SECS as u64).contains(&retry),
            "{retry}"
        );
        // The lock is the account's, kept in the database: another address
        // (here, anyone with the database) sees it too.
        assert!(
            booking::throttle::locked_until(&app.db, email, kontakt_tests::now())
                .await
                .unwrap()
                .is_some()
        );
        // Other accounts are not affected; an unknown account is counted
        // the same, so a lock reveals nothing.
        app.staff_token("handlaggare.mala@kontakt.demo").await;
        let ghost = json!({"email": "ghost@kontakt.demo", "password": "wrong-password"});
        for _ in 0..booking::throttle::FREE_FAILURES {
            app.post("/api/auth/staff/login", None, &ghost).await;
        }
        assert_eq!(
            app.post("/api/auth/staff/login", None, &ghost)
                .await
                .status(),
            429
        );
    }
}

/// Regression (login CSRF): a form on another site could post to
/// `/staff/login` and sign the browser in to an account of its choosing.
#[tokio::test]
async fn sign_in_forms_posted_from_another_site_are_refused() {
    for app in spawn_apps().await {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let form = [
            ("email", "handlaggare.lycksele@kontakt.demo"),
            ("password", booking::seed::DEMO_PASSWORD),
        ];
        let cross = client
            .post(app.url("/staff/login"))
            .header("origin", "https://evil.example")
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(cross.status(), 403, "cross-origin ({})", app.backend);
        assert!(cross.headers().get("set-cookie").is_none(), "no session");
        let fetched = client
            .post(app.url("/staff/login"))
            .header("sec-fetch-site", "cross-site")
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(fetched.status(), 403, "Sec-Fetch-Site: cross-site");
        let page = client
            .post(app.url("/sign-in"))
            .header("origin", "https://evil.example")
            .form(&[("email", "anna@example.se")])
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), 403, "the resident sign-in form");
        let link = client
            .post(app.url("/api/auth/resident/link"))
            .header("origin", "https://evil.example")
            .json(&json!({"email": "anna@example.se"}))
            .send()
            .await
            .unwrap();
        assert_eq!(link.status(), 403, "the resident link API");
        let api = client
            .post(app.url("/api/auth/staff/login"))
            .header("origin", "https://evil.example")
            .json(&json!({"email": form[0].1, "password": form[1].1}))
            .send()
            .await
            .unwrap();
        assert_eq!(api.status(), 403, "the API's sign-in too");

        let same = client
            .post(app.url("/staff/login"))
            .header("origin", &app.address)
            .header("sec-fetch-site", "same-origin")
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(same.status(), 303, "same-origin ({})", app.backend);
        assert!(same.headers().get("set-cookie").is_some());
    }
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
