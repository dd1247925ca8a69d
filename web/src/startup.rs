//! Building and running the application: the database, the router, the
//! listener and the background work, stopped together on shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use anyhow::Context;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use axum::Router;
use booking::seed::DemoSignIn;
use booking::Db;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tower_http::trace::TraceLayer;

use crate::auth::{Keys, SignInLimiter};
use crate::config::{MetricsListen, Settings};
use crate::security_headers::SecurityHeaders;
use crate::state::AppState;
use crate::ws::TurnIssuer;

/// A built application, bound to its port but not yet serving.
pub struct Application {
    listener: TcpListener,
    port: u16,
    /// The listener of `/metrics`, apart from the public one.
    metrics: Option<TcpListener>,
    router: Router,
    db: Db,
    demo_sign_ins: Vec<DemoSignIn>,
    mail: notify::Worker,
    relay: Option<media_relay::Relay>,
    /// The hub's timer and bus listener.
    hub_tasks: Vec<tokio::task::JoinHandle<()>>,
    hub: signaling::hub::Hub,
}

impl Application {
    /// Opens and migrates the database, seeds the demo into an empty one when
    /// `settings.demo` is on, and binds the listener. With the demo off it
    /// refuses to start while the demo's accounts exist.
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        prometheus();
        let db = open_database(&settings).await?;
        if !settings.demo {
            refuse_demo_accounts(&db, &settings).await?;
        }
        let demo_sign_ins = if settings.demo && booking::seed::is_empty(&db).await? {
            let tz = booking::bookings::zone(booking::bookings::DISPLAY_ZONE)?;
            let now = jiff::Timestamp::now();
            let sign_ins = booking::seed::demo(&db, now.to_zoned(tz).date(), now.as_second())
                .await
                .context("seeding demo data")?;
            tracing::info!("seeded demo data");
            sign_ins
        } else {
            Vec::new()
        };
        // "I don't know" and the demo's services get their canned replies
        // the first time, the hub reads them below.
        booking::seed::canned_responses(&db)
            .await
            .context("seeding canned responses")?;
        let secret = secret_file(&settings, settings.jwt_secret.as_deref(), "jwt-secret")?;
        let (relay, turn) = start_relay(&settings)?;
        let queue = settings
            .queue
            .rules()
            .map_err(|e| anyhow::anyhow!("the queue settings: {e}"))?;
        let (hub, hub_tasks) = crate::ws::start_hub(
            &db,
            queue,
            settings.nats_url.as_deref(),
            &settings.cluster,
            turn.clone(),
        )
        .await
        .context("starting the signaling hub")?;
        let sessions = crate::sessions::Sessions::new(db.clone(), hub.bus());
        let mut hub_tasks = hub_tasks;
        hub_tasks.push(
            sessions
                .listen()
                .await
                .context("listening for ended sessions")?,
        );
        let mail = notify::Worker::new(db.clone(), settings.notify())
            .context("setting up mail delivery")?;
        let state = AppState {
            db: db.clone(),
            keys: Keys::new(secret.as_bytes()),
            sign_in_limiter: SignInLimiter::new(settings.sign_in_per_minute),
            sessions,
            mail_waker: mail.waker(),
            settings: Arc::new(settings.clone()),
            hub: hub.clone(),
            tickets: crate::ws::Tickets::new(secret.as_bytes()),
            turn,
            precheck_limiter: crate::api::precheck::PrecheckLimiter::new(
                settings.precheck_per_minute,
            ),
        };
        let router = router(state, settings.max_body_bytes);
        let listener = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("binding {}", settings.listen))?;
        let port = listener.local_addr()?.port();
        let metrics = bind_metrics(settings.metrics_listen).await?;
        Ok(Application {
            listener,
            port,
            metrics,
            router,
            db,
            demo_sign_ins,
            mail,
            hub_tasks,
            hub,
            relay,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Where `/metrics` is served, when it is.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The embedded relay's UDP address, when it runs.
    pub fn relay_udp_addr(&self) -> Option<SocketAddr> {
        self.relay.as_ref().and_then(|r| r.udp_addr())
    }

    /// The signaling hub, for tests that drive its timers with an
    /// instant of their own (`Hub::tick`) instead of waiting.
    pub fn hub(&self) -> &signaling::hub::Hub {
        &self.hub
    }

    /// The demo sign-ins, when this start seeded them.
    pub fn demo_sign_ins(&self) -> &[DemoSignIn] {
        &self.demo_sign_ins
    }

    /// Serves HTTP and delivers mail until `shutdown` resolves, then lets
    /// requests in flight and the mail batch under way finish.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mail = self.mail;
        let mut mail_stopped = stopped.clone();
        let mail_task = tokio::spawn(async move {
            mail.run(async move {
                let _ = mail_stopped.wait_for(|s| *s).await;
            })
            .await;
        });
        let metrics_task = self
            .metrics
            .map(|listener| serve_metrics(listener, stopped.clone()));
        let service = self
            .router
            .into_make_service_with_connect_info::<SocketAddr>();
        // Small WebSocket frames go out at once: with Nagle's algorithm a
        // second frame in a row (a claim's `queue.assigned` after its
        // `queue.entry_removed`) waited for the client's delayed ACK.
        let listener = self.listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "could not set TCP_NODELAY");
            }
        });
        let served = axum::serve(listener, service)
            .with_graceful_shutdown(async move {
                shutdown.await;
                let _ = stop.send(true);
            })
            .await
            .context("serving HTTP");
        drop(stopped);
        let _ = mail_task.await;
        if let Some(task) = metrics_task {
            let _ = task.await;
        }
        // The hub's timers would otherwise go on writing to a closed pool.
        for task in self.hub_tasks {
            task.abort();
        }
        // Another node of the cluster takes the rooms over at once.
        self.hub.leave_cluster().await;
        if let Some(relay) = self.relay {
            relay.shutdown();
        }
        self.db.close().await;
        served
    }
}

/// Connects to the configured database and applies migrations.
pub async fn open_database(settings: &Settings) -> anyhow::Result<Db> {
    let db = Db::connect(&settings.database_url, settings.database_max_connections)
        .await
        .with_context(|| format!("opening the database at {}", redact(&settings.database_url)))?;
    db.migrate().await.context("applying migrations")?;
    Ok(db)
}

/// Fails while the database holds accounts the demo seeded. Their password is
/// published in the README and printed at every demo start, so a server
/// that is not a demo must not let anyone sign in as them.
async fn refuse_demo_accounts(db: &Db, settings: &Settings) -> anyhow::Result<()> {
    let accounts = booking::seed::demo_accounts(db).await?;
    anyhow::ensure!(
        accounts.is_empty(),
        "demo is off, but the database at {url} holds the demo's accounts, whose password is \
         published: {list}. Demo data does not belong in production: point database_url \
         (DATABASE_URL) at a new, empty database, which kontakt sets up on start, or set \
         demo = true (KONTAKT_DEMO=true) to go on running the demo",
        url = redact(&settings.database_url),
        list = accounts.join(", "),
    );
    Ok(())
}

/// A URL with any password replaced, for logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Starts the embedded TURN relay when it is enabled, and the issuer of the
/// credentials that rooms hand to admitted participants. With the relay off,
/// credentials are still issued when `turn_urls` names relays run elsewhere
/// (standalone `media-relay` processes or coturn sharing the secret).
fn start_relay(
    settings: &Settings,
) -> anyhow::Result<(Option<media_relay::Relay>, Option<TurnIssuer>)> {
    let configured = (!settings.relay.secret.is_empty()).then_some(settings.relay.secret.as_str());
    let secret = secret_file(settings, configured, "turn-secret")?;
    let mut urls = settings.turn_urls.clone();
    let relay = if settings.relay_enabled {
        let mut config = settings.relay_config();
        config.secret = secret.clone();
        let relay = media_relay::Relay::start(config).context("starting the TURN relay")?;
        if urls.is_empty() {
            let host = settings
                .relay
                .relay_ipv4
                .map(|ip| ip.to_string())
                .unwrap_or_else(|| "127.0.0.1".to_owned());
            if let Some(a) = relay.udp_addr() {
                urls.push(format!("turn:{host}:{}?transport=udp", a.port()));
            }
            if let Some(a) = relay.tcp_addr() {
                urls.push(format!("turn:{host}:{}?transport=tcp", a.port()));
            }
            if let Some(a) = relay.tls_addr() {
                urls.push(format!("turns:{host}:{}?transport=tcp", a.port()));
            }
        }
        Some(relay)
    } else {
        None
    };
    let turn = (!urls.is_empty()).then(|| TurnIssuer::new(&secret, urls, settings.turn_ttl_secs));
    Ok((relay, turn))
}

/// The configured secret, or one generated once into `data_dir/name`.
fn secret_file(
    settings: &Settings,
    configured: Option<&str>,
    name: &str,
) -> anyhow::Result<String> {
    if let Some(secret) = configured {
        anyhow::ensure!(
            secret.len() >= 32,
            "the {name} setting must be at least 32 characters"
        );
        return Ok(secret.to_owned());
    }
    let path = settings.data_dir.join(name);
    if let Ok(existing) = std::fs::read_to_string(&path) {
        let existing = existing.trim();
        anyhow::ensure!(
            existing.len() >= 32,
            "{} must hold at least 32 characters; delete it to have a new secret made",
            path.display()
        );
        return Ok(existing.to_owned());
    }
    std::fs::create_dir_all(&settings.data_dir)?;
    let secret = random_secret();
    std::fs::write(&path, &secret).with_context(|| format!("writing {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(secret)
}

fn random_secret() -> String {
    use base64::Engine;
    use rand::RngCore;
    let mut bytes = [0u8; 48];
    rand::thread_rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn router(state: AppState, max_body_bytes: usize) -> Router {
    Router::new()
        .merge(crate::api::router())
        .merge(crate::pages::router())
        .merge(crate::assets::router())
        .merge(crate::dev_mail::router())
        .route("/healthz", get(healthz))
        .fallback(|| async { crate::error::AppError::NotFound })
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(middleware::from_fn(crate::i18n::negotiate))
        .layer(middleware::from_fn(record_metrics))
        .layer(TraceLayer::new_for_http())
        // Outermost, so that every response gets the headers, whichever
        // layer or handler made it.
        .layer(middleware::from_fn_with_state(
            SecurityHeaders::for_public_url(&state.settings.public_url),
            crate::security_headers::set,
        ))
        .with_state(state)
}

async fn healthz(State(db): State<Db>) -> Response {
    match db.ping().await {
        Ok(_) => (StatusCode::OK, "ok").into_response(),
        Err(e) => {
            tracing::error!(error = %e, "health check failed");
            (StatusCode::SERVICE_UNAVAILABLE, "database unavailable").into_response()
        }
    }
}

/// The process-wide Prometheus recorder, installed on first use.
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        PrometheusBuilder::new()
            .install_recorder()
            .expect("no other metrics recorder is installed")
    })
}

async fn metrics_text() -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        prometheus().render(),
    )
}

/// Binds the listener of `/metrics`. The figures tell how the service is
/// used (requests per route, sign-in failures), so they are served on an
/// address of their own, loopback by default, where only the operator's
/// scraper reaches them, and never on the public port.
async fn bind_metrics(listen: MetricsListen) -> anyhow::Result<Option<TcpListener>> {
    let MetricsListen::At(addr) = listen else {
        return Ok(None);
    };
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding metrics_listen {addr}"))?;
    tracing::info!(addr = %listener.local_addr()?, "serving /metrics");
    Ok(Some(listener))
}

/// Serves `/metrics` and nothing else on `listener` until `stopped` turns
/// true.
fn serve_metrics(
    listener: TcpListener,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let router = Router::new().route("/metrics", get(metrics_text));
    tokio::spawn(async move {
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = stopped.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "serving /metrics failed");
        }
    })
}

async fn record_metrics(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = request.method().to_string();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("kontakt_http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("kontakt_http_request_seconds", "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}
