//! The pre-call check's credentials (`POST /api/precheck/turn`): who gets
//! them, what they are good for on the embedded relay, and how often.
//! The relay tests need Debian's `turnutils_uclient` (coturn) as a real
//! TURN client.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use booking::testing::TestDb;
use kontakt_tests::{now, spawn_app_with, spawn_apps, TestApp};
use media_relay::credentials;
use media_relay::stun::{attr, Class, Message, MessageBuilder, Method};
use serde_json::{json, Value};
use tokio::net::UdpSocket;

use crate::relay::{error_code, exchange};

const CHECK: &str = "/api/precheck/turn";

/// The credentials of one transport from a precheck answer.
fn transport<'a>(body: &'a Value, name: &str) -> &'a Value {
    body["transports"]
        .as_array()
        .expect("transports")
        .iter()
        .find(|t| t["transport"] == name)
        .unwrap_or_else(|| panic!("{name} in {body}"))
}

fn credential(body: &Value, name: &str, index: usize) -> (String, String) {
    let c = &transport(body, name)["credentials"][index];
    (
        c["username"].as_str().expect("a username").to_owned(),
        c["password"].as_str().expect("a password").to_owned(),
    )
}

async fn check(app: &TestApp, token: Option<&str>) -> reqwest::Response {
    app.client
        .post(app.url(CHECK))
        .bearer_auth(token.unwrap_or_default())
        .send()
        .await
        .expect("request sent")
}

#[tokio::test]
async fn precheck_credentials_are_for_signed_in_people_and_scoped_to_the_check() {
    for app in spawn_apps().await {
        let backend = app.backend;
        let anonymous = app.client.post(app.url(CHECK)).send().await.unwrap();
        assert_eq!(anonymous.status(), 401, "{backend}");
        let forged = check(&app, Some("not-a-token")).await;
        assert_eq!(forged.status(), 401, "{backend}");

        let resident = app.new_resident("precheck@example.se", "2418").await;
        let (token, claims) = app.resident_session(&resident).await;
        let answer = check(&app, Some(&token)).await;
        assert_eq!(answer.status(), 200, "{backend}");
        let body: Value = answer.json().await.unwrap();
        assert_eq!(body["ttl_secs"], 90, "{body}");
        let names: Vec<&str> = body["transports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["transport"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["udp", "tcp"], "the test relay listens on both");
        let relay = app.relay_udp.expect("the relay runs");
        assert_eq!(
            transport(&body, "udp")["urls"],
            json!([format!("turn:127.0.0.1:{}?transport=udp", relay.port())])
        );
        let tcp_url = transport(&body, "tcp")["urls"][0].as_str().unwrap();
        assert!(tcp_url.ends_with("?transport=tcp"), "{tcp_url}");

        let mut usernames = Vec::new();
        for name in ["udp", "tcp"] {
            for index in [0, 1] {
                let (username, _) = credential(&body, name, index);
                let (expiry, subject) = username.split_once(':').expect("<expiry>:<subject>");
                let expiry: i64 = expiry.parse().unwrap();
                let now = now();
                assert!(
                    expiry > now && expiry <= now + 90,
                    "{username} expires within 90 s"
                );
                assert!(subject.starts_with("precheck."), "{username}");
                usernames.push(username);
            }
        }
        usernames.sort();
        usernames.dedup();
        assert_eq!(usernames.len(), 4, "every credential is its own");

        // A cookie session must echo its CSRF value, as on every post.
        let cookie = format!("{}={token}", web::auth::SESSION_COOKIE);
        let without_csrf = app
            .client
            .post(app.url(CHECK))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(without_csrf.status(), 403, "{backend}");
        let with_csrf = app
            .client
            .post(app.url(CHECK))
            .header("cookie", &cookie)
            .header(web::auth::CSRF_HEADER, &claims.csrf)
            .send()
            .await
            .unwrap();
        assert_eq!(with_csrf.status(), 200, "{backend}");

        let staff = app.staff_token("handlaggare.lycksele@kontakt.demo").await;
        assert_eq!(check(&app, Some(&staff)).await.status(), 200, "{backend}");

        // The holder of an anonymous chat's token may check too.
        let issued = app
            .post(
                "/api/chats/anonymous",
                None,
                &json!({"service": "stod-till-anhoriga", "municipality": "2418"}),
            )
            .await;
        assert_eq!(issued.status(), 201, "{backend}");
        let issued: Value = issued.json().await.unwrap();
        let chat_token = issued["token"].as_str().unwrap();
        assert_eq!(check(&app, Some(chat_token)).await.status(), 200);

        // A signed-out session gets nothing.
        let signed_out = app
            .post("/api/auth/sign-out", Some(&token), &json!({}))
            .await;
        assert!(signed_out.status().is_success(), "{backend}");
        assert_eq!(check(&app, Some(&token)).await.status(), 401, "{backend}");
    }
}

#[tokio::test]
async fn precheck_credentials_are_rate_limited_per_caller() {
    let mut databases = vec![(TestDb::sqlite().await, "sqlite")];
    if let Some(pg) = TestDb::postgres().await {
        databases.push((pg, "postgres"));
    }
    for (database, backend) in databases {
        let app = spawn_app_with(database, backend, |s| s.precheck_per_minute = 2).await;
        let resident = app.new_resident("often@example.se", "2418").await;
        let token = app.resident_token(&resident).await;
        for _ in 0..2 {
            assert_eq!(check(&app, Some(&token)).await.status(), 200, "{backend}");
        }
        let refused = check(&app, Some(&token)).await;
        assert_eq!(refused.status(), 429, "{backend}");
        let retry_after: u64 = refused.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=60).contains(&retry_after), "{retry_after}");
        let body: Value = refused.json().await.unwrap();
        assert_eq!(body["error"], "rate_limited", "{body}");

        // Another session has its own allowance.
        let other = app.resident_token(&resident).await;
        assert_eq!(check(&app, Some(&other)).await.status(), 200, "{backend}");
    }
}

/// An Allocate over UDP from `socket`, answered with the relay's challenge
/// first; the error code of the answer, or `None` for a success.
async fn allocate(
    socket: &UdpSocket,
    relay: SocketAddr,
    username: &str,
    password: &str,
) -> Option<u16> {
    let request = |tid: u8, auth: Option<(&str, &str)>| {
        let mut b = MessageBuilder::new(Method::Allocate, Class::Request, [tid; 12]);
        b.add(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        if let Some((realm, nonce)) = auth {
            b.add(attr::USERNAME, username.as_bytes())
                .add(attr::REALM, realm.as_bytes())
                .add(attr::NONCE, nonce.as_bytes())
                .add_integrity(&credentials::long_term_key(username, realm, password));
        }
        b.add_fingerprint();
        b.finish()
    };
    let challenge = exchange(socket, relay, &request(1, None)).await;
    let challenge = Message::parse(&challenge).unwrap();
    assert_eq!(error_code(&challenge), Some(401));
    let realm = challenge.get_str(attr::REALM).unwrap().to_owned();
    let nonce = challenge.get_str(attr::NONCE).unwrap().to_owned();
    let answer = exchange(socket, relay, &request(2, Some((&realm, &nonce)))).await;
    let answer = Message::parse(&answer).unwrap();
    match answer.class() {
        Class::Success => None,
        _ => error_code(&answer),
    }
}

#[tokio::test]
async fn the_relay_gives_a_precheck_credential_one_allocation_and_refuses_expired_and_forged_ones()
{
    let app = kontakt_tests::spawn_app(TestDb::sqlite().await, "sqlite").await;
    let relay = app.relay_udp.expect("the relay runs");
    let resident = app.new_resident("once@example.se", "2418").await;
    let token = app.resident_token(&resident).await;
    let body: Value = check(&app, Some(&token)).await.json().await.unwrap();
    let (username, password) = credential(&body, "udp", 0);

    let first = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    assert_eq!(allocate(&first, relay, &username, &password).await, None);
    let second = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    assert_eq!(
        allocate(&second, relay, &username, &password).await,
        Some(486),
        "a second allocation with the same credential"
    );
    let (other, other_password) = credential(&body, "udp", 1);
    assert_eq!(
        allocate(&second, relay, &other, &other_password).await,
        None
    );

    let secret = std::fs::read_to_string(app.data_dir().join("turn-secret")).unwrap();
    let secret = secret.trim();
    let at = |unix: i64| std::time::UNIX_EPOCH + Duration::from_secs(unix as u64);
    let fresh = || UdpSocket::bind("127.0.0.1:0");
    let (expired, expired_password) =
        credentials::issue_precheck(secret, "old", Duration::from_secs(90), at(now() - 120));
    assert_eq!(
        allocate(&fresh().await.unwrap(), relay, &expired, &expired_password).await,
        Some(401),
        "expired"
    );
    let (forged, forged_password) = credentials::issue_precheck(
        "another-secret-of-at-least-32-characters",
        "forged",
        Duration::from_secs(90),
        at(now()),
    );
    assert_eq!(
        allocate(&fresh().await.unwrap(), relay, &forged, &forged_password).await,
        Some(401),
        "signed with another secret"
    );
    let (long, long_password) = credentials::issue(
        secret,
        "precheck.long",
        Duration::from_secs(3600),
        at(now()),
    );
    assert_eq!(
        allocate(&fresh().await.unwrap(), relay, &long, &long_password).await,
        Some(401),
        "a precheck username valid for an hour was not issued for the check"
    );
}

/// Runs `turnutils_uclient` (verbose) with one client and no RTCP
/// allocation against `relay`, sending to `peer`, and returns whether it
/// exited successfully and its output.
async fn uclient(
    relay: SocketAddr,
    peer: SocketAddr,
    username: &str,
    password: &str,
) -> (bool, String) {
    let run = tokio::process::Command::new("turnutils_uclient")
        .args([
            "-v", "-u", username, "-w", password, "-c", "-n", "3", "-m", "1",
        ])
        .args(["-e", &peer.ip().to_string(), "-r", &peer.port().to_string()])
        .args(["-p", &relay.port().to_string(), &relay.ip().to_string()])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("turnutils_uclient ends within 30 s")
        .expect("turnutils_uclient runs (Debian's coturn package)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[tokio::test]
async fn turnutils_uclient_allocates_once_with_a_precheck_credential() {
    let app = kontakt_tests::spawn_app(TestDb::sqlite().await, "sqlite").await;
    let relay = app.relay_udp.expect("the relay runs");
    // The peer echoes what the relay brings it, as turnutils_peer would.
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let echo = tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        loop {
            let Ok((n, from)) = peer.recv_from(&mut buf).await else {
                return;
            };
            let _ = peer.send_to(&buf[..n], from).await;
        }
    });
    let resident = app.new_resident("uclient@example.se", "2418").await;
    let token = app.resident_token(&resident).await;
    let body: Value = check(&app, Some(&token)).await.json().await.unwrap();
    let (username, password) = credential(&body, "udp", 0);

    // uclient opens a second allocation beside its client's, on another
    // socket, before it sends: the first is granted, the second refused.
    let (ok, output) = uclient(relay, peer_addr, &username, &password).await;
    let granted = output.matches("Received relay addr").count();
    assert_eq!(granted, 1, "the first allocation works:\n{output}");
    assert!(
        output.contains("error 486 (Allocation Quota Reached)"),
        "the second is refused for the quota:\n{output}"
    );
    assert!(!ok, "so uclient cannot run its test:\n{output}");
    // Nor does the credential open one later, the first one freed or not.
    let (ok, output) = uclient(relay, peer_addr, &username, &password).await;
    assert!(!ok, "{output}");
    assert!(!output.contains("Received relay addr"), "{output}");
    assert!(output.contains("error 486"), "{output}");

    // A fresh credential's first allocation is granted: the refusals above
    // are the credential's, not the relay's or the client's.
    let (fresh, fresh_password) = credential(&body, "udp", 1);
    let (_, output) = uclient(relay, peer_addr, &fresh, &fresh_password).await;
    assert_eq!(output.matches("Received relay addr").count(), 1, "{output}");
    echo.abort();
}
