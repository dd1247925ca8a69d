//! Server-side sessions: signing out, "sign out everywhere" and deactivating
//! a staff account end a session at once, for the API, the pages and the
//! WebSocket, on this node and (with NATS) on every other node.
//!
//! Regression: signing out only cleared the cookies, so the same Bearer
//! token or a copy of the cookie went on working until it expired.

use std::time::Duration;

use futures::StreamExt;
use kontakt_tests::{spawn_apps, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// How long a test waits for a revocation to reach another node.
const ACROSS_NODES_WITHIN: Duration = Duration::from_secs(5);

/// Whether `token` still opens the staff API.
async fn staff_me(app: &TestApp, token: &str) -> StatusCode {
    app.get("/api/staff/me", Some(token)).await.status()
}

/// A page fetched with `token` as the session cookie, not following
/// redirects: (status, Location).
async fn page_with_cookie(app: &TestApp, token: &str, path: &str) -> (u16, String) {
    let response = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(app.url(path))
        .header("cookie", format!("{}={token}", web::auth::SESSION_COOKIE))
        .send()
        .await
        .unwrap();
    let location = response
        .headers()
        .get("location")
        .and_then(|l| l.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (response.status().as_u16(), location)
}

/// Opens `/ws` with a fresh ticket for `token`; the status of the refusal of
/// the ticket, or 101 once the socket is open.
async fn open_socket(app: &TestApp, token: &str) -> u16 {
    let response = app.post("/api/ws/ticket", Some(token), &json!({})).await;
    if response.status() != StatusCode::OK {
        return response.status().as_u16();
    }
    let body: Value = response.json().await.unwrap();
    let url = format!(
        "{}/ws?ticket={}",
        app.address.replacen("http://", "ws://", 1),
        body["ticket"].as_str().unwrap()
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("the socket opens");
    // The server speaks first (`welcome`): the socket is really open.
    tokio::time::timeout(Duration::from_secs(10), socket.next())
        .await
        .expect("a welcome frame")
        .expect("a frame")
        .expect("not an error");
    101
}

#[tokio::test]
async fn signing_out_ends_the_session_for_bearer_cookie_pages_and_sockets() {
    for app in spawn_apps().await {
        let email = "handlaggare.lycksele@kontakt.demo";
        let (token, csrf) = app.staff_session(email).await;
        let (other, _) = app.staff_session(email).await;
        assert_eq!(staff_me(&app, &token).await, 200);
        assert_eq!(page_with_cookie(&app, &token, "/staff").await.0, 200);
        assert_eq!(open_socket(&app, &token).await, 101);

        // The page session signs out with its cookie and CSRF header.
        let signed_out = reqwest::Client::new()
            .post(app.url("/api/auth/sign-out"))
            .header("cookie", format!("{}={token}", web::auth::SESSION_COOKIE))
            .header(web::auth::CSRF_HEADER, &csrf)
            .send()
            .await
            .unwrap();
        assert_eq!(signed_out.status(), 204);

        assert_eq!(staff_me(&app, &token).await, 401, "{}: bearer", app.backend);
        let (status, location) = page_with_cookie(&app, &token, "/staff").await;
        assert_eq!(
            (status, location.as_str()),
            (303, "/staff/login"),
            "{}: a kept copy of the cookie",
            app.backend
        );
        assert_eq!(open_socket(&app, &token).await, 401, "no new ticket");
        assert_eq!(
            staff_me(&app, &other).await,
            200,
            "another session of the same account goes on"
        );

        // A resident's Bearer session signs out by the API too.
        let anna = app.resident("anna@example.se").await;
        let resident = app.resident_token(&anna).await;
        assert_eq!(
            app.get("/api/bookings", Some(&resident)).await.status(),
            200
        );
        let out = app
            .post("/api/auth/sign-out", Some(&resident), &json!({}))
            .await;
        assert_eq!(out.status(), 204);
        assert_eq!(
            app.get("/api/bookings", Some(&resident)).await.status(),
            401
        );
    }
}

#[tokio::test]
async fn signing_out_everywhere_ends_every_session_of_the_account() {
    for app in spawn_apps().await {
        let email = "handlaggare.lycksele@kontakt.demo";
        let (first, _) = app.staff_session(email).await;
        let (second, _) = app.staff_session(email).await;
        let (colleague, _) = app.staff_session("handlaggare.mala@kontakt.demo").await;
        let out = app
            .post("/api/auth/sign-out-everywhere", Some(&first), &json!({}))
            .await;
        assert_eq!(out.status(), 200);
        let body: Value = out.json().await.unwrap();
        assert_eq!(body["ended"], 2, "{}", app.backend);
        assert_eq!(staff_me(&app, &first).await, 401);
        assert_eq!(staff_me(&app, &second).await, 401);
        assert_eq!(
            staff_me(&app, &colleague).await,
            200,
            "others' sessions live"
        );

        // The button on "My pages" does the same for a resident.
        let anna = app.resident("anna@example.se").await;
        let (token, claims) = app.resident_session(&anna).await;
        let (elsewhere, _) = app.resident_session(&anna).await;
        let cookie = format!("{}={token}", web::auth::SESSION_COOKIE);
        let my = reqwest::Client::new()
            .get(app.url("/my"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(my.contains("action=\"/sign-out-everywhere\""), "the button");
        let pressed = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
            .post(app.url("/sign-out-everywhere"))
            .header("cookie", &cookie)
            .form(&[("csrf", claims.csrf.as_str())])
            .send()
            .await
            .unwrap();
        assert_eq!(pressed.status(), 303);
        assert_eq!(
            app.get("/api/bookings", Some(&elsewhere)).await.status(),
            401
        );
    }
}

#[tokio::test]
async fn a_deactivated_staff_account_is_signed_out_and_cannot_sign_in() {
    for app in spawn_apps().await {
        let email = "handlaggare.lycksele@kontakt.demo";
        let (token, _) = app.staff_session(email).await;
        let me: Value = app
            .get("/api/staff/me", Some(&token))
            .await
            .json()
            .await
            .unwrap();
        let id = me["id"].as_str().unwrap().to_owned();
        let path = format!("/api/admin/staff/{id}/deactivate");

        let (plain, _) = app.staff_session("handlaggare.mala@kontakt.demo").await;
        assert_eq!(
            app.post(&path, Some(&plain), &json!({})).await.status(),
            403
        );
        let (admin, _) = app.staff_session("admin.lycksele@kontakt.demo").await;
        assert_eq!(
            app.post(&path, Some(&admin), &json!({})).await.status(),
            204
        );
        assert_eq!(staff_me(&app, &token).await, 401, "{}", app.backend);
        let login = app
            .post(
                "/api/auth/staff/login",
                None,
                &json!({"email": email, "password": booking::seed::DEMO_PASSWORD}),
            )
            .await;
        assert_eq!(login.status(), 401, "no new sign-in");
        assert_eq!(
            app.post(&path, Some(&admin), &json!({})).await.status(),
            404,
            "once"
        );
        let audit = booking::audit::recent(&app.db, None, 50).await.unwrap();
        assert!(audit
            .iter()
            .any(|r| r.action == "staff.deactivate" && r.subject == format!("staff:{id}")));
    }
}

/// With NATS, a sign-out on node A is refused on node B at once, although B
/// had the session in its cache (which alone would trust it for
/// `ACTIVE_TTL`, 30 seconds). Needs PostgreSQL and NATS.
#[tokio::test]
async fn a_sign_out_on_one_node_is_refused_on_the_other_at_once() {
    let Some(cluster) = crate::nodes::cluster().await else {
        return;
    };
    let (a, b) = (&cluster.a, &cluster.b);
    let (token, _) = a.staff_session("handlaggare.lycksele@kontakt.demo").await;
    assert_eq!(staff_me(b, &token).await, 200, "b caches the session");

    // Hear the revocation as the nodes do, to wait on it rather than sleep.
    let nats = std::env::var("NATS_URL").expect("the cluster needs NATS_URL");
    let bus = signaling::bus::NatsBus::connect(&nats).await.unwrap();
    let mut revoked = signaling::bus::Bus::subscribe(&bus, web::sessions::REVOKED_SUBJECT)
        .await
        .unwrap();
    assert_eq!(
        a.post("/api/auth/sign-out", Some(&token), &json!({}))
            .await
            .status(),
        204
    );
    tokio::time::timeout(ACROSS_NODES_WITHIN, revoked.next())
        .await
        .expect("the revocation crosses the bus")
        .expect("a message");
    // B heard the same message; it may still be applying it, so ask until
    // it refuses, within a bound far below the cache's lifetime.
    let refused = tokio::time::timeout(ACROSS_NODES_WITHIN, async {
        loop {
            if staff_me(b, &token).await == 401 {
                return;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(refused.is_ok(), "node b still accepts a signed-out session");
    assert!(web::sessions::ACTIVE_TTL > ACROSS_NODES_WITHIN * 2);
}
