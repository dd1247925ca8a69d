//! What the delivery worker and the templates need to know, passed in
//! explicitly by the `kontakt` binary from its configuration file and
//! environment.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Email settings. Every field except `public_url` has a default, so a
/// configuration file only names what differs.
#[derive(Clone, Deserialize)]
pub struct Settings {
    /// Where to send mail, e.g. `smtp://user:pass@host:587` (STARTTLS),
    /// `smtps://user:pass@host:465` (implicit TLS) or `smtp://127.0.0.1:2525`
    /// (plain, allowed without `?tls=` only for a loopback host). `None`
    /// writes `.eml` files to `outbox_dir` instead.
    #[serde(default)]
    pub smtp_url: Option<String>,
    /// The `From` of every mail.
    #[serde(default = "default_from")]
    pub from: String,
    /// The base of every link in a mail, e.g. `https://kontakt.example.se`.
    pub public_url: String,
    /// Where the file transport writes `.eml` files.
    #[serde(default = "default_outbox_dir")]
    pub outbox_dir: PathBuf,
    /// Tries before a row is parked as failed for an admin to look at.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// How long the worker sleeps when it found nothing due.
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// Rows claimed at a time.
    #[serde(default = "default_batch_size")]
    pub batch_size: u32,
    /// Mails of one batch sent at the same time.
    #[serde(default = "default_concurrency")]
    pub concurrency: u32,
    /// The first retry waits about this long; each later one twice as long.
    #[serde(default = "default_retry_base_secs")]
    pub retry_base_secs: u64,
    /// No retry waits longer than this.
    #[serde(default = "default_retry_max_secs")]
    pub retry_max_secs: u64,
    /// How long a claim holds a row. A worker that dies mid-batch leaves its
    /// rows to another worker once this has passed, so it must be longer than
    /// any one send (see `smtp_timeout_secs`).
    #[serde(default = "default_lease_secs")]
    pub lease_secs: u64,
    /// How long one SMTP command may take before the send counts as failed.
    #[serde(default = "default_smtp_timeout_secs")]
    pub smtp_timeout_secs: u64,
}

impl Settings {
    /// Settings with every default and the given public base URL.
    pub fn new(public_url: impl Into<String>) -> Settings {
        Settings {
            smtp_url: None,
            from: default_from(),
            public_url: public_url.into(),
            outbox_dir: default_outbox_dir(),
            max_attempts: default_max_attempts(),
            poll_interval_ms: default_poll_interval_ms(),
            batch_size: default_batch_size(),
            concurrency: default_concurrency(),
            retry_base_secs: default_retry_base_secs(),
            retry_max_secs: default_retry_max_secs(),
            lease_secs: default_lease_secs(),
            smtp_timeout_secs: default_smtp_timeout_secs(),
        }
    }

    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms)
    }

    /// `public_url` without a trailing slash, ready to have a path appended.
    pub(crate) fn base_url(&self) -> &str {
        self.public_url.trim_end_matches('/')
    }
}

// The SMTP URL may carry a password, so it is never printed.
impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("smtp_url", &self.smtp_url.as_ref().map(|_| "<redacted>"))
            .field("from", &self.from)
            .field("public_url", &self.public_url)
            .field("outbox_dir", &self.outbox_dir)
            .field("max_attempts", &self.max_attempts)
            .field("poll_interval_ms", &self.poll_interval_ms)
            .field("batch_size", &self.batch_size)
            .field("concurrency", &self.concurrency)
            .field("retry_base_secs", &self.retry_base_secs)
            .field("retry_max_secs", &self.retry_max_secs)
            .field("lease_secs", &self.lease_secs)
            .field("smtp_timeout_secs", &self.smtp_timeout_secs)
            .finish()
    }
}

fn default_from() -> String {
    "Kontakt <no-reply@kontakt.localhost>".to_owned()
}
fn default_outbox_dir() -> PathBuf {
    PathBuf::from("./data/outbox")
}
fn default_max_attempts() -> u32 {
    8
}
fn default_poll_interval_ms() -> u64 {
    2000
}
fn default_batch_size() -> u32 {
    32
}
fn default_concurrency() -> u32 {
    4
}
fn default_retry_base_secs() -> u64 {
    30
}
fn default_retry_max_secs() -> u64 {
    3600
}
fn default_lease_secs() -> u64 {
    300
}
fn default_smtp_timeout_secs() -> u64 {
    30
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_what_the_file_leaves_out() {
        let settings: Settings =
            serde_json::from_str(r#"{"public_url": "https://kontakt.example.se/"}"#).unwrap();
        assert_eq!(settings.from, "Kontakt <no-reply@kontakt.localhost>");
        assert_eq!(settings.outbox_dir, PathBuf::from("./data/outbox"));
        assert_eq!(settings.max_attempts, 8);
        assert_eq!(settings.smtp_url, None);
        assert_eq!(settings.base_url(), "https://kontakt.example.se");
        assert!(
            serde_json::from_str::<Settings>("{}").is_err(),
            "public_url is required"
        );
    }

    #[test]
    fn debug_output_hides_the_smtp_password() {
        let mut settings = Settings::new("http://localhost");
        settings.smtp_url = Some("smtp://user:hunter2@mail.example.se:587".into());
        let printed = format!("{settings:?}");
        assert!(!printed.contains("hunter2"), "{printed}");
    }
}
