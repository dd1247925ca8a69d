//! Shared helpers for the system tests: [`spawn_app`] boots the real
//! `kontakt` server on port 0 with a fresh database.

use booking::accounts::{self, Resident};
use booking::outbox::Message;
use booking::testing::TestDb;
use booking::{Db, EmailAddress, Language, MunicipalityCode};
use std::time::Duration;

use reqwest::{Client, Response};
use serde_json::Value;
use web::auth::{Keys, SubjectKind};
use web::{Application, Settings};

/// The secret the test servers sign sessions with, so tests can mint tokens.
pub const TEST_SECRET: &str = "test-secret-that-is-long-enough-for-hs256";

/// A running server and a client for it.
pub struct TestApp {
    pub address: String,
    pub db: Db,
    pub backend: &'static str,
    pub client: Client,
    /// The embedded TURN relay's UDP address.
    pub relay_udp: Option<std::net::SocketAddr>,
    /// Where `/metrics` is served, apart from `address`.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// The server's signaling hub, whose timers a test may run at an
    /// instant of its choosing (`hub.tick(now + grace)`).
    pub hub: signaling::hub::Hub,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    /// `None` for a second node over another app's database.
    _database: Option<TestDb>,
    _dir: TempDir,
}

/// Boots one server per database: SQLite always, PostgreSQL when
/// `DATABASE_URL` is set.
pub async fn spawn_apps() -> Vec<TestApp> {
    let mut apps = vec![spawn_app(TestDb::sqlite().await, "sqlite").await];
    if let Some(pg) = TestDb::postgres().await {
        apps.push(spawn_app(pg, "postgres").await);
    }
    apps
}

/// Boots the real server on port 0 over `database`, seeded with the demo.
pub async fn spawn_app(database: TestDb, backend: &'static str) -> TestApp {
    spawn_app_with(database, backend, |_| {}).await
}

/// As [`spawn_app`], with `adjust` applied to the settings first.
pub async fn spawn_app_with(
    database: TestDb,
    backend: &'static str,
    adjust: impl FnOnce(&mut Settings),
) -> TestApp {
    let url = database.url.clone();
    spawn(Some(database), &url, backend, adjust).await
}

/// Boots one more server over the database at `database_url`, which the
/// caller keeps alive: a second node of a cluster.
pub async fn spawn_node(
    database_url: &str,
    backend: &'static str,
    adjust: impl FnOnce(&mut Settings),
) -> TestApp {
    spawn(None, database_url, backend, adjust).await
}

async fn spawn(
    database: Option<TestDb>,
    database_url: &str,
    backend: &'static str,
    adjust: impl FnOnce(&mut Settings),
) -> TestApp {
    let dir = TempDir::new();
    let mut settings = Settings::for_tests(dir.path.clone(), database_url.to_owned());
    settings.sign_in_per_minute = 1000;
    adjust(&mut settings);
    let app = Application::build(settings)
        .await
        .expect("the application builds");
    let address = format!("http://127.0.0.1:{}", app.port());
    let db = app.db().clone();
    let relay_udp = app.relay_udp_addr();
    let metrics_addr = app.metrics_addr();
    let hub = app.hub().clone();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.run_until_stopped(async move {
        let _ = rx.await;
    }));
    TestApp {
        address,
        db,
        backend,
        client: Client::builder()
            .cookie_store(true)
            .build()
            .expect("a client"),
        relay_udp,
        metrics_addr,
        hub,
        shutdown: Some(tx),
        _database: database,
        _dir: dir,
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl TestApp {
    /// The server's data directory (SQLite aside: secrets, mail files).
    pub fn data_dir(&self) -> &std::path::Path {
        &self._dir.path
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Response {
        let mut req = self.client.get(self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.expect("request sent")
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> Response {
        let mut req = self.client.post(self.url(path)).json(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.expect("request sent")
    }

    /// Fetches `path` until `ready` accepts its body or `within` passes. For
    /// work the server does in the background, such as delivering mail.
    pub async fn wait_for_page(
        &self,
        path: &str,
        within: Duration,
        ready: impl Fn(&str) -> bool,
    ) -> Option<String> {
        eventually(within, || async {
            let body = self.get(path, None).await.text().await.expect("a body");
            ready(&body).then_some(body)
        })
        .await
    }

    /// A session token for a resident, minted with the test secret for a
    /// session recorded in the server's database, as signing in would.
    pub async fn resident_token(&self, resident: &Resident) -> String {
        self.resident_session(resident).await.0
    }

    /// As [`TestApp::resident_token`], with the token's claims (its CSRF
    /// value, for cookie sessions).
    pub async fn resident_session(&self, resident: &Resident) -> (String, web::auth::Claims) {
        let now = now();
        let sid = booking::sessions::create(
            &self.db,
            &booking::sessions::Subject::Resident(resident.id.clone()),
            now,
            now + 30 * 60,
        )
        .await
        .expect("a session recorded");
        Keys::new(TEST_SECRET.as_bytes()).issue(
            resident.id.as_str(),
            SubjectKind::Resident,
            &sid,
            30,
            now,
        )
    }

    /// The Bearer token and CSRF value of a staff sign-in through the API.
    pub async fn staff_session(&self, email: &str) -> (String, String) {
        let response = self
            .post(
                "/api/auth/staff/login",
                None,
                &serde_json::json!({"email": email, "password": booking::seed::DEMO_PASSWORD}),
            )
            .await;
        assert_eq!(response.status(), 200, "staff sign-in for {email}");
        let body: Value = response.json().await.expect("json");
        (
            body["token"].as_str().expect("a token").to_owned(),
            body["csrf"].as_str().expect("a csrf value").to_owned(),
        )
    }

    /// The link token of the sign-in mail to `email`, once the delivery
    /// worker has answered the request (it is woken by the request, so this
    /// waits on that, within `within`).
    pub async fn sign_in_link(&self, email: &str, within: Duration) -> Option<String> {
        eventually(within, || async {
            match self.last_message(email, "sign_in_link").await {
                Some(Message::SignInLink { token, .. }) => Some(token),
                _ => None,
            }
        })
        .await
    }

    /// Signs a staff member in through the API and returns the Bearer token.
    pub async fn staff_token(&self, email: &str) -> String {
        self.staff_session(email).await.0
    }

    /// The first mail `/dev/mail` lists (headers, parts and the calendar
    /// invitation), once the delivery worker has written one to `email`,
    /// within `within`. Tests that use it send one mail.
    pub async fn dev_mail_to(&self, email: &str, within: Duration) -> String {
        let list = self
            .wait_for_page("/dev/mail", within, |html| html.contains(email))
            .await
            .unwrap_or_else(|| panic!("no mail to {email} reached /dev/mail on {}", self.backend));
        let id = list
            .split("href=\"/dev/mail/")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("a link to the mail");
        self.get(&format!("/dev/mail/{id}"), None)
            .await
            .text()
            .await
            .expect("the mail page")
    }

    /// The audit log's entries about the resident `resident_id`, newest
    /// first (at most 100).
    pub async fn audit_about(&self, resident_id: &booking::ResidentId) -> AuditLog {
        AuditLog(
            booking::audit::recent(&self.db, Some(resident_id), 100)
                .await
                .expect("audit"),
        )
    }

    /// The staff member `resident`'s booking `id` is with, read as the
    /// domain reads it.
    pub async fn booked_staff(&self, resident: &Resident, id: &str) -> booking::accounts::Staff {
        let staff_id = booking::bookings::for_resident_by_id(
            &self.db,
            resident,
            &booking::BookingId::parse(id).expect("a booking id"),
            jiff::Timestamp::now(),
        )
        .await
        .expect("the booking")
        .staff_id;
        booking::accounts::staff_by_id(&self.db, &staff_id)
            .await
            .expect("query")
            .expect("the booking's staff member")
    }

    pub async fn resident(&self, email: &str) -> Resident {
        accounts::resident_by_email(&self.db, &EmailAddress::parse(email).expect("an email"))
            .await
            .expect("query")
            .expect("a seeded resident")
    }

    /// Creates a resident of `home`.
    pub async fn new_resident(&self, email: &str, home: &str) -> Resident {
        accounts::create_resident(
            &self.db,
            &EmailAddress::parse(email).expect("an email"),
            &booking::PersonName::parse("Test Person").expect("a name"),
            &MunicipalityCode::parse(home).expect("a code"),
            Language::Sv,
            now(),
        )
        .await
        .expect("resident created")
    }

    /// The newest outbox message of `kind` for `recipient`.
    pub async fn last_message(&self, recipient: &str, kind: &str) -> Option<Message> {
        booking::outbox::latest_for(
            &self.db,
            &EmailAddress::parse(recipient).expect("an email"),
            kind,
        )
        .await
        .expect("outbox query")
    }

    /// Free times for a resident of `home`, from tomorrow for `days` days.
    pub async fn free_times(&self, service: &str, home: &str, days: i64) -> Vec<Value> {
        let tz = booking::bookings::zone(booking::bookings::DISPLAY_ZONE).expect("zone");
        let today = jiff::Timestamp::now().to_zoned(tz).date();
        let from = today.tomorrow().expect("a date");
        let to = from
            .checked_add(jiff::Span::new().days(days))
            .expect("a date");
        let response = self
            .get(
                &format!("/api/search?service={service}&home={home}&from={from}&to={to}"),
                None,
            )
            .await;
        assert_eq!(response.status(), 200);
        response.json::<Vec<Value>>().await.expect("json")
    }
}

/// Audit entries, as [`TestApp::audit_about`] reads them.
#[derive(Debug)]
pub struct AuditLog(pub Vec<booking::audit::Record>);

impl AuditLog {
    /// How many entries have this actor (`resident:<id>`), action and
    /// outcome (`allowed` or `denied`).
    pub fn count(&self, actor: &str, action: &str, outcome: &str) -> usize {
        self.0
            .iter()
            .filter(|r| r.actor == actor && r.action == action && r.outcome == outcome)
            .count()
    }
}

pub fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// A directory removed when dropped.
pub struct TempDir {
    pub path: std::path::PathBuf,
}

impl TempDir {
    pub fn new() -> TempDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "kontakt-app-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).expect("a temporary directory");
        TempDir { path }
    }
}

impl Default for TempDir {
    fn default() -> Self {
        TempDir::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Asks `check` until it answers `Some` or `within` passes, for work the
/// server does in the background (mail delivery, the outbox worker) that
/// tells no one when it is done. One place for the tests' deadline loop.
pub async fn eventually<T, F, Fut>(within: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(found) = check().await {
            return Some(found);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
