//! Settings: defaults, then `kontakt.toml` (if present), then environment
//! variables. Every key can be set as `KONTAKT_<KEY>`; the database, SMTP and
//! NATS URLs also answer to their conventional names `DATABASE_URL`,
//! `SMTP_URL` and `NATS_URL`. The README lists every key.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Where HTTP listens. Port 0 picks a free port (the tests do).
    pub listen: SocketAddr,
    /// The address residents reach Kontakt at, used in links in mail.
    pub public_url: String,
    /// `sqlite://...` or `postgres://...`.
    pub database_url: String,
    /// Connections in the database pool.
    pub database_max_connections: u32,
    /// Where SQLite, mail files and the generated secret live.
    pub data_dir: PathBuf,
    /// Seed demo data into an empty database, and show the mail Kontakt
    /// writes at `/dev/mail` when `listen` is a loopback address. On by
    /// default, so that `cargo run --release` shows the whole product. Off is
    /// production: `serve` then refuses to start while the demo's accounts,
    /// whose password is published, are in the database.
    pub demo: bool,
    /// The HMAC secret for session tokens. Generated into `data_dir` when unset.
    pub jwt_secret: Option<String>,
    /// How long a staff session lasts, in minutes.
    pub staff_session_minutes: i64,
    /// How long a resident session lasts, in minutes.
    pub resident_session_minutes: i64,
    /// Sign-in attempts allowed per client address per minute.
    pub sign_in_per_minute: u32,
    /// The largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Set the `Secure` flag on cookies (on whenever `public_url` is https).
    pub secure_cookies: bool,
    /// `smtp://user:pass@host:587` or `smtps://...`; mail goes to
    /// `data_dir/outbox` as `.eml` files when unset.
    pub smtp_url: Option<String>,
    /// NATS for several nodes; in-process when unset.
    pub nats_url: Option<String>,
    /// With NATS: the nodes with the same cluster name share rooms and the
    /// chat queue.
    pub cluster: String,
    /// The `From` of every mail.
    pub mail_from: String,
    /// Run the TURN relay inside `kontakt serve`.
    pub relay_enabled: bool,
    /// The interface the embedded relay listens on and opens relayed ports
    /// on, wherever `[relay]` leaves them on the wildcard address (as its
    /// defaults do). Unset means the IP of `listen`, so that a server that
    /// answers HTTP only on loopback does not open TURN to the network;
    /// `0.0.0.0` means every interface.
    pub relay_listen_ip: Option<IpAddr>,
    /// The embedded relay's settings, the same keys as the standalone
    /// `media-relay` binary: `[relay]` in the file, `KONTAKT_RELAY__<KEY>` in
    /// the environment. An empty `secret` is generated into `data_dir`.
    #[serde(default, skip_serializing)]
    pub relay: media_relay::RelayConfig,
    /// TURN URLs handed to clients; derived from the embedded relay when empty.
    pub turn_urls: Vec<String>,
    /// How long TURN credentials last, in seconds.
    pub turn_ttl_secs: u64,
    /// How many times a minute one caller may fetch the pre-call check's
    /// TURN credentials (`POST /api/precheck/turn`); one address may
    /// twenty times as often.
    pub precheck_per_minute: u32,
    /// `text` or `json` logs.
    pub log_format: String,
    /// How often `/ws` pings each connection, in milliseconds.
    pub ws_ping_ms: u64,
    /// A `/ws` connection that answers no ping for this long, in
    /// milliseconds, is closed with 1001.
    pub ws_pong_timeout_ms: u64,
    /// Where Prometheus metrics are served: an address of their own, never
    /// the public port; loopback by default.
    pub metrics_listen: MetricsListen,
    /// The chat queue's rules: `[queue]`, and `[queue.municipalities."<code>"]`
    /// for a municipality that sets its own.
    #[serde(default)]
    pub queue: QueueConfig,
}

/// How chats reach staff, as the settings name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueModeSetting {
    /// Staff see the queue and claim chats.
    Manual,
    /// Each chat goes to the eligible staff member with the fewest chats.
    Automatic,
}

/// `[queue]`: the rules of the chat queue. A chat follows the rules of its
/// resident's home municipality: that municipality's entry under
/// `municipalities`, whose unset keys fall back to these, or these.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    pub mode: QueueModeSetting,
    /// How long staff have to answer a chat they were given before it
    /// returns to its place in the queue.
    pub answer_timeout_secs: u64,
    /// How long a waiting chat stays after its resident's last tab closed.
    pub abandon_after_secs: u64,
    /// The average length of a chat, for the estimated wait.
    pub average_chat_secs: u64,
    /// Rules of their own, by kommunkod.
    pub municipalities: std::collections::BTreeMap<String, QueueOverride>,
}

/// `[queue.municipalities."<code>"]`: what one municipality sets apart from
/// `[queue]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueOverride {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<QueueModeSetting>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answer_timeout_secs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abandon_after_secs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub average_chat_secs: Option<u64>,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            mode: QueueModeSetting::Manual,
            answer_timeout_secs: 120,
            abandon_after_secs: 300,
            average_chat_secs: 15 * 60,
            municipalities: Default::default(),
        }
    }
}

impl QueueConfig {
    /// The rules as the queue takes them, or what is wrong with them: a
    /// code that is no kommunkod, or a time of zero seconds.
    pub fn rules(&self) -> Result<signaling::queue::QueueRules, String> {
        use signaling::queue::{QueueMode, QueueRules, QueueSettings};
        let settings = |at: &str,
                        mode: QueueModeSetting,
                        answer: u64,
                        abandon: u64,
                        average: u64|
         -> Result<QueueSettings, String> {
            for (key, secs) in [
                ("answer_timeout_secs", answer),
                ("abandon_after_secs", abandon),
                ("average_chat_secs", average),
            ] {
                if secs == 0 {
                    return Err(format!("{at}.{key} must be at least 1 second"));
                }
            }
            Ok(QueueSettings {
                mode: match mode {
                    QueueModeSetting::Manual => QueueMode::Manual,
                    QueueModeSetting::Automatic => QueueMode::Automatic,
                },
                answer_timeout: std::time::Duration::from_secs(answer),
                abandon_after: std::time::Duration::from_secs(abandon),
                average_chat: std::time::Duration::from_secs(average),
            })
        };
        let defaults = settings(
            "queue",
            self.mode,
            self.answer_timeout_secs,
            self.abandon_after_secs,
            self.average_chat_secs,
        )?;
        let mut municipalities = std::collections::BTreeMap::new();
        for (code, own) in &self.municipalities {
            let at = format!("queue.municipalities.{code:?}");
            let parsed = booking::MunicipalityCode::parse(code)
                .ok()
                .and_then(|c| signaling::ids::MunicipalityCode::parse(c.as_str()).ok())
                .ok_or_else(|| format!("{at}: a kommunkod is four digits"))?;
            let rules = settings(
                &at,
                own.mode.unwrap_or(self.mode),
                own.answer_timeout_secs.unwrap_or(self.answer_timeout_secs),
                own.abandon_after_secs.unwrap_or(self.abandon_after_secs),
                own.average_chat_secs.unwrap_or(self.average_chat_secs),
            )?;
            municipalities.insert(parsed, rules);
        }
        Ok(QueueRules {
            defaults,
            municipalities,
        })
    }
}

/// Where `/metrics` listens: an address, or nowhere. Written as an address
/// such as `127.0.0.1:9464`, or as `off` or an empty value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum MetricsListen {
    Off,
    At(SocketAddr),
}

impl TryFrom<String> for MetricsListen {
    type Error = String;

    fn try_from(raw: String) -> Result<Self, Self::Error> {
        let raw = raw.trim();
        if raw.is_empty() || raw.eq_ignore_ascii_case("off") {
            return Ok(MetricsListen::Off);
        }
        raw.parse().map(MetricsListen::At).map_err(|_| {
            format!(
                "metrics_listen: expected an address such as 127.0.0.1:9464, or off; got {raw:?}"
            )
        })
    }
}

impl From<MetricsListen> for String {
    fn from(listen: MetricsListen) -> String {
        match listen {
            MetricsListen::Off => "off".to_owned(),
            MetricsListen::At(addr) => addr.to_string(),
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            listen: "127.0.0.1:8080".parse().expect("a valid address"),
            public_url: "http://127.0.0.1:8080".into(),
            database_url: "sqlite://./data/kontakt.db?mode=rwc".into(),
            database_max_connections: 16,
            data_dir: PathBuf::from("./data"),
            demo: true,
            jwt_secret: None,
            staff_session_minutes: 10 * 60,
            resident_session_minutes: 60,
            sign_in_per_minute: 10,
            max_body_bytes: 64 * 1024,
            secure_cookies: false,
            smtp_url: None,
            nats_url: None,
            cluster: "kontakt".into(),
            mail_from: "Kontakt <no-reply@kontakt.localhost>".into(),
            relay_enabled: true,
            relay_listen_ip: None,
            relay: media_relay::RelayConfig::default(),
            turn_urls: Vec::new(),
            turn_ttl_secs: 4 * 3600,
            precheck_per_minute: 6,
            log_format: "text".into(),
            ws_ping_ms: 20_000,
            ws_pong_timeout_ms: 40_000,
            metrics_listen: MetricsListen::At("127.0.0.1:9464".parse().expect("a valid address")),
            queue: QueueConfig::default(),
        }
    }
}

impl Settings {
    /// Reads the settings from `file` (if it exists) and the environment.
    pub fn load(file: &Path) -> Result<Settings, Box<figment::Error>> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        if file.exists() {
            figment = figment.merge(Toml::file(file));
        }
        figment = figment
            .merge(
                Env::raw()
                    .only(&["DATABASE_URL", "SMTP_URL", "NATS_URL"])
                    .map(|k| k.as_str().to_ascii_lowercase().into()),
            )
            .merge(Env::prefixed("KONTAKT_").split("__"));
        let settings: Settings = figment.extract().map_err(Box::new)?;
        Ok(settings.normalised())
    }

    /// Settings as `load` hands them out. A blank URL counts as unset, as it
    /// does for most tools: `NATS_URL=` left in an environment file means no
    /// NATS, not a connection to an empty address, and a blank database URL
    /// means the default SQLite file. Cookies are `Secure` whenever the
    /// public address is https.
    fn normalised(mut self) -> Settings {
        let blank = |url: &String| url.trim().is_empty();
        self.smtp_url = self.smtp_url.filter(|url| !blank(url));
        self.nats_url = self.nats_url.filter(|url| !blank(url));
        if blank(&self.database_url) {
            self.database_url = Settings::default().database_url;
        }
        if self.public_url.starts_with("https://") {
            self.secure_cookies = true;
        }
        self
    }

    /// Whether `/dev/mail` answers. It shows every mail, live sign-in links
    /// included, to anyone who can reach it, so it needs the demo and an
    /// HTTP listener that only this machine can reach.
    pub fn serves_dev_mail(&self) -> bool {
        self.demo && self.listen.ip().is_loopback()
    }

    /// The embedded relay's settings: `[relay]`, with its wildcard listeners
    /// and relay socket bindings narrowed to `relay_listen_ip`, or to the IP
    /// of `listen` when that is unset. Ports and explicit addresses are kept.
    ///
    /// An address narrows the wildcards of its own family; loopback narrows
    /// both, so that `listen = "[::1]:8080"` keeps the relay on `127.0.0.1`
    /// too, where the default `relay_ipv4` sends clients. Any other address
    /// of the other family leaves a wildcard as it is, since no interface
    /// address of that family is known.
    pub fn relay_config(&self) -> media_relay::RelayConfig {
        let ip = self.relay_listen_ip.unwrap_or(self.listen.ip());
        let narrowed = |wildcard: IpAddr| -> Option<IpAddr> {
            match (wildcard, ip) {
                (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => Some(ip),
                (IpAddr::V4(_), IpAddr::V6(v6)) if v6.is_loopback() => {
                    Some(Ipv4Addr::LOCALHOST.into())
                }
                (IpAddr::V6(_), IpAddr::V4(v4)) if v4.is_loopback() => {
                    Some(Ipv6Addr::LOCALHOST.into())
                }
                _ => None,
            }
        };
        let mut relay = self.relay.clone();
        for listener in [
            &mut relay.listen_udp,
            &mut relay.listen_tcp,
            &mut relay.listen_tls,
        ]
        .into_iter()
        .flatten()
        {
            if listener.ip().is_unspecified() {
                if let Some(ip) = narrowed(listener.ip()) {
                    listener.set_ip(ip);
                }
            }
        }
        if relay.relay_bind_ipv4.is_unspecified() {
            if let Some(IpAddr::V4(v4)) = narrowed(Ipv4Addr::UNSPECIFIED.into()) {
                relay.relay_bind_ipv4 = v4;
            }
        }
        if relay.relay_bind_ipv6.is_unspecified() {
            if let Some(IpAddr::V6(v6)) = narrowed(Ipv6Addr::UNSPECIFIED.into()) {
                relay.relay_bind_ipv6 = v6;
            }
        }
        relay
    }

    /// Where the file transport writes mail, and `/dev/mail` reads it.
    pub fn outbox_dir(&self) -> PathBuf {
        self.data_dir.join("outbox")
    }

    /// The mail settings this configuration implies.
    pub fn notify(&self) -> notify::Settings {
        let mut mail = notify::Settings::new(self.public_url.clone());
        mail.smtp_url = self.smtp_url.clone();
        mail.from = self.mail_from.clone();
        mail.outbox_dir = self.outbox_dir();
        mail
    }

    /// Settings for a test: port 0, everything under `data_dir`.
    pub fn for_tests(data_dir: PathBuf, database_url: String) -> Settings {
        Settings {
            listen: "127.0.0.1:0".parse().expect("a valid address"),
            database_url,
            data_dir,
            jwt_secret: Some("test-secret-that-is-long-enough-for-hs256".into()),
            relay: test_relay(),
            metrics_listen: MetricsListen::At("127.0.0.1:0".parse().expect("a valid address")),
            ..Settings::default()
        }
    }
}

/// A relay for tests: loopback, ports picked by the kernel, one worker, and
/// loopback peers allowed so that tests can relay to themselves.
fn test_relay() -> media_relay::RelayConfig {
    media_relay::RelayConfig {
        listen_udp: Some("127.0.0.1:0".parse().expect("a valid address")),
        listen_tcp: Some("127.0.0.1:0".parse().expect("a valid address")),
        relay_bind_ipv4: std::net::Ipv4Addr::LOCALHOST,
        allowed_peer_ranges: vec!["127.0.0.0/8".parse().expect("a valid range")],
        workers: Some(1),
        ..media_relay::RelayConfig::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blank_urls_count_as_unset() {
        let settings = Settings {
            database_url: " ".into(),
            smtp_url: Some(String::new()),
            nats_url: Some("  ".into()),
            ..Settings::default()
        }
        .normalised();
        assert_eq!(settings.database_url, Settings::default().database_url);
        assert_eq!(settings.smtp_url, None);
        assert_eq!(settings.nats_url, None);

        let set = Settings {
            database_url: "postgres://db/kontakt".into(),
            smtp_url: Some("smtp://mail:587".into()),
            nats_url: Some("nats://bus:4222".into()),
            ..Settings::default()
        }
        .normalised();
        assert_eq!(set.database_url, "postgres://db/kontakt");
        assert_eq!(set.smtp_url.as_deref(), Some("smtp://mail:587"));
        assert_eq!(set.nats_url.as_deref(), Some("nats://bus:4222"));
    }

    #[test]
    fn the_embedded_relay_listens_where_http_does_unless_told_otherwise() {
        let local = Settings::default().relay_config();
        assert_eq!(local.listen_udp, Some("127.0.0.1:3478".parse().unwrap()));
        assert_eq!(local.listen_tcp, Some("127.0.0.1:3478".parse().unwrap()));
        assert_eq!(local.relay_bind_ipv4, std::net::Ipv4Addr::LOCALHOST);

        let everywhere = Settings {
            listen: "0.0.0.0:8080".parse().unwrap(),
            ..Settings::default()
        }
        .relay_config();
        assert_eq!(everywhere.listen_udp, Some("0.0.0.0:3478".parse().unwrap()));
        assert!(everywhere.relay_bind_ipv4.is_unspecified());

        let told = Settings {
            relay_listen_ip: Some("0.0.0.0".parse().unwrap()),
            ..Settings::default()
        }
        .relay_config();
        assert_eq!(told.listen_udp, Some("0.0.0.0:3478".parse().unwrap()));

        let ipv6_loopback = Settings {
            listen: "[::1]:8080".parse().unwrap(),
            ..Settings::default()
        }
        .relay_config();
        assert_eq!(
            ipv6_loopback.listen_udp,
            Some("127.0.0.1:3478".parse().unwrap())
        );
        assert_eq!(ipv6_loopback.relay_bind_ipv6, Ipv6Addr::LOCALHOST);

        let ipv6_everywhere = Settings {
            listen: "[::]:8080".parse().unwrap(),
            ..Settings::default()
        }
        .relay_config();
        assert_eq!(
            ipv6_everywhere.listen_udp,
            Some("0.0.0.0:3478".parse().unwrap())
        );

        let mut explicit = Settings::default();
        explicit.relay.listen_udp = Some("10.1.2.3:3479".parse().unwrap());
        explicit.relay.listen_tcp = None;
        let explicit = explicit.relay_config();
        assert_eq!(explicit.listen_udp, Some("10.1.2.3:3479".parse().unwrap()));
        assert_eq!(explicit.listen_tcp, None);
    }

    #[test]
    fn dev_mail_needs_the_demo_and_a_loopback_listener() {
        assert!(Settings::default().serves_dev_mail());
        let open = Settings {
            listen: "0.0.0.0:8080".parse().unwrap(),
            ..Settings::default()
        };
        assert!(!open.serves_dev_mail());
        let ipv6_loopback = Settings {
            listen: "[::1]:8080".parse().unwrap(),
            ..Settings::default()
        };
        assert!(ipv6_loopback.serves_dev_mail());
        let production = Settings {
            demo: false,
            ..Settings::default()
        };
        assert!(!production.serves_dev_mail());
    }

    #[test]
    fn metrics_listen_is_an_address_or_off() {
        let parse = |raw: &str| MetricsListen::try_from(raw.to_owned());
        assert_eq!(
            parse("127.0.0.1:9464"),
            Ok(MetricsListen::At("127.0.0.1:9464".parse().unwrap()))
        );
        assert_eq!(
            parse("[::1]:9000"),
            Ok(MetricsListen::At("[::1]:9000".parse().unwrap()))
        );
        for off in ["", " ", "off", "OFF"] {
            assert_eq!(parse(off), Ok(MetricsListen::Off), "{off:?}");
        }
        for bad in ["9464", "localhost", "127.0.0.1"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        let round_trip = String::from(Settings::default().metrics_listen);
        assert_eq!(round_trip, "127.0.0.1:9464");
    }

    #[test]
    fn metrics_listen_reads_from_the_settings_file() {
        let read = |toml: &str| -> Result<Settings, Box<figment::Error>> {
            Figment::from(Serialized::defaults(Settings::default()))
                .merge(Toml::string(toml))
                .extract()
                .map_err(Box::new)
        };
        assert_eq!(
            read("metrics_listen = \"off\"").unwrap().metrics_listen,
            MetricsListen::Off
        );
        assert_eq!(
            read("metrics_listen = \"127.0.0.1:9999\"")
                .unwrap()
                .metrics_listen,
            MetricsListen::At("127.0.0.1:9999".parse().unwrap())
        );
        assert!(read("metrics_listen = \"everywhere\"").is_err());
    }

    #[test]
    fn an_https_public_address_makes_cookies_secure() {
        let settings = Settings {
            public_url: "https://kontakt.example.se".into(),
            ..Settings::default()
        }
        .normalised();
        assert!(settings.secure_cookies);
        assert!(!Settings::default().normalised().secure_cookies);
    }

    #[test]
    fn queue_rules_come_from_the_file_per_municipality() {
        let read = |toml: &str| -> Result<Settings, Box<figment::Error>> {
            Figment::from(Serialized::defaults(Settings::default()))
                .merge(Toml::string(toml))
                .extract()
                .map_err(Box::new)
        };
        let settings = read(
            r#"
[queue]
answer_timeout_secs = 90

[queue.municipalities."2481"]
mode = "automatic"
average_chat_secs = 600
"#,
        )
        .unwrap();
        let rules = settings.queue.rules().unwrap();
        let code = |c: &str| signaling::ids::MunicipalityCode::parse(c).unwrap();
        let lycksele = rules.of(&code("2481"));
        assert_eq!(lycksele.mode, signaling::queue::QueueMode::Automatic);
        assert_eq!(lycksele.average_chat.as_secs(), 600);
        assert_eq!(
            lycksele.answer_timeout.as_secs(),
            90,
            "unset keys fall back"
        );
        let elsewhere = rules.of(&code("2418"));
        assert_eq!(elsewhere.mode, signaling::queue::QueueMode::Manual);
        assert_eq!(elsewhere.answer_timeout.as_secs(), 90);
        assert_eq!(elsewhere.abandon_after.as_secs(), 300, "the default");
        assert_eq!(elsewhere.average_chat.as_secs(), 900);

        assert!(read("[queue]\nmode = \"sometimes\"").is_err());
        assert!(read("[queue]\nanswer_timeout = 5").is_err(), "unknown key");
        let zero = read("[queue.municipalities.\"2481\"]\nanswer_timeout_secs = 0").unwrap();
        assert!(zero
            .queue
            .rules()
            .unwrap_err()
            .contains("answer_timeout_secs"));
        let not_a_code = read("[queue.municipalities.\"Lycksele\"]\nmode = \"manual\"").unwrap();
        assert!(not_a_code.queue.rules().unwrap_err().contains("kommunkod"));
        assert_eq!(
            Settings::default().queue.rules().unwrap(),
            signaling::queue::QueueRules::from(signaling::queue::QueueSettings {
                mode: signaling::queue::QueueMode::Manual,
                answer_timeout: std::time::Duration::from_secs(120),
                abandon_after: std::time::Duration::from_secs(300),
                average_chat: std::time::Duration::from_secs(900),
            })
        );
    }
}
