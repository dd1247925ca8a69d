//! Turning a [`RenderedMail`] into MIME and handing it to SMTP or to a
//! folder of `.eml` files.

use std::error::Error as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use booking::EmailAddress;
use lettre::message::header::{ContentType, Header, HeaderName, HeaderValue};
use lettre::message::{Attachment, Mailbox, MultiPart};
use lettre::transport::smtp::PoolConfig;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use crate::{NotifyError, RenderedMail, Settings};

/// Where mail goes: an SMTP server when `SMTP_URL` is set, otherwise `.eml`
/// files that the demo page `/dev/mail` shows.
#[derive(Clone)]
pub enum Transport {
    Smtp {
        transport: AsyncSmtpTransport<Tokio1Executor>,
        /// Host and port only: the URL may hold a password.
        server: String,
    },
    Files(PathBuf),
}

/// A send that did not go through. A permanent failure (an SMTP 5xx reply,
/// such as 550 for an unknown mailbox) will not succeed on a retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendFailure {
    pub permanent: bool,
    pub reason: String,
}

impl Transport {
    /// Call it inside a tokio runtime: the SMTP connection pool starts a
    /// task.
    pub fn from_settings(settings: &Settings) -> Result<Transport, NotifyError> {
        match &settings.smtp_url {
            Some(url) => smtp(
                url,
                Duration::from_secs(settings.smtp_timeout_secs),
                settings.concurrency.max(1),
            ),
            None => Ok(Transport::Files(settings.outbox_dir.clone())),
        }
    }

    /// Sends `email`. The file transport names the file `{file_stem}.eml`, so
    /// a retry of the same outbox row replaces the file instead of adding a
    /// second one.
    pub async fn send(&self, email: &lettre::Message, file_stem: &str) -> Result<(), SendFailure> {
        match self {
            Transport::Smtp { transport, .. } => {
                transport
                    .send(email.clone())
                    .await
                    .map(drop)
                    .map_err(|err| {
                        let mut reason = err.to_string();
                        // lettre keeps the socket or TLS error as the source, and
                        // "connection refused" is what an admin needs to see.
                        if let Some(source) = err.source() {
                            reason = format!("{reason}: {source}");
                        }
                        SendFailure {
                            permanent: err.is_permanent(),
                            reason,
                        }
                    })
            }
            Transport::Files(dir) => {
                write_eml(dir, file_stem, &email.formatted())
                    .await
                    .map_err(|err| SendFailure {
                        permanent: false,
                        reason: format!("writing to {}: {err}", dir.display()),
                    })
            }
        }
    }

    /// Where mail goes, for logs, without credentials.
    pub fn describe(&self) -> String {
        match self {
            Transport::Smtp { server, .. } => format!("SMTP {server}"),
            Transport::Files(dir) => format!(".eml files in {}", dir.display()),
        }
    }
}

/// The `Message-ID` of the mail for an outbox row: the same on every retry,
/// so a mail sent twice after a crash is recognisably one mail.
pub fn message_id(row_id: &str, settings: &Settings) -> String {
    format!("<outbox.{row_id}@{}>", crate::mail_domain(&settings.from))
}

/// Wraps `mail` in MIME: `multipart/alternative` with the text and HTML parts,
/// inside `multipart/mixed` with an `invite.ics` attachment when there is an
/// invitation.
pub fn build_email(
    mail: &RenderedMail,
    from: &Mailbox,
    to: &EmailAddress,
    message_id: &str,
    date: SystemTime,
) -> Result<lettre::Message, String> {
    let to: Mailbox = to
        .as_str()
        .parse()
        .map_err(|err| format!("recipient: {err}"))?;
    let builder = lettre::Message::builder()
        .from(from.clone())
        .to(to)
        .subject(mail.subject.clone())
        .date(date)
        .message_id(Some(message_id.to_owned()))
        .header(ContentLanguage(mail.language.code().to_owned()))
        .header(AutoSubmitted);
    let alternative = MultiPart::alternative_plain_html(mail.text.clone(), mail.html.clone());
    let built = match &mail.invitation {
        None => builder.multipart(alternative),
        Some(invitation) => {
            let content_type = ContentType::parse(&format!(
                "text/calendar; charset=utf-8; method={}",
                invitation.method.as_str()
            ))
            .map_err(|err| format!("calendar content type: {err}"))?;
            let ics =
                Attachment::new("invite.ics".to_owned()).body(invitation.ics.clone(), content_type);
            builder.multipart(MultiPart::mixed().multipart(alternative).singlepart(ics))
        }
    };
    built.map_err(|err| err.to_string())
}

/// `Content-Language` (RFC 3282), so mail clients and tests know the
/// language without guessing.
#[derive(Debug, Clone)]
struct ContentLanguage(String);

impl Header for ContentLanguage {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("Content-Language")
    }
    fn parse(s: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(ContentLanguage(s.trim().to_owned()))
    }
    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), self.0.clone())
    }
}

/// `Auto-Submitted: auto-generated` (RFC 3834), so that autoresponders do not
/// answer a no-reply address.
#[derive(Debug, Clone)]
struct AutoSubmitted;

impl Header for AutoSubmitted {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("Auto-Submitted")
    }
    fn parse(_: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(AutoSubmitted)
    }
    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), "auto-generated".to_owned())
    }
}

fn smtp(raw: &str, timeout: Duration, connections: u32) -> Result<Transport, NotifyError> {
    let url = rewrite(raw)?;
    let parsed =
        url::Url::parse(&url).map_err(|err| NotifyError::InvalidSmtpUrl(err.to_string()))?;
    let server = format!(
        "{}://{}:{}",
        parsed.scheme(),
        parsed.host_str().unwrap_or_default(),
        parsed.port().map(|p| p.to_string()).unwrap_or_default()
    );
    let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(&url)
        .map_err(|err| NotifyError::InvalidSmtpUrl(err.to_string()))?
        .timeout(Some(timeout))
        // One connection per concurrent send: each mail waits on the server's
        // replies, so parallel connections are what raises the rate.
        .pool_config(PoolConfig::new().max_size(connections))
        .build();
    Ok(Transport::Smtp { transport, server })
}

/// Turns `SMTP_URL` into the URL lettre understands: a remote `smtp://`
/// server gets `?tls=required` (STARTTLS), and `?tls=none` is dropped.
fn rewrite(raw: &str) -> Result<String, NotifyError> {
    // The parse error never contains the URL, so it cannot leak a password.
    let mut url =
        url::Url::parse(raw).map_err(|err| NotifyError::InvalidSmtpUrl(err.to_string()))?;
    let tls = url
        .query_pairs()
        .find(|(key, _)| key == "tls")
        .map(|(_, value)| value.into_owned());
    let loopback = match url.host() {
        // `smtp` is not a scheme the url crate knows, so an IPv4 address
        // arrives as a domain.
        Some(url::Host::Domain(host)) => {
            host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
        }
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    };
    match (url.scheme(), tls.as_deref()) {
        // Credentials and mail must not cross a network in clear, so a remote
        // smtp:// server gets STARTTLS unless the URL says `?tls=none`.
        ("smtp", None) if !loopback => {
            url.query_pairs_mut().append_pair("tls", "required");
        }
        ("smtp", Some("none")) => url.set_query(None),
        _ => {}
    }
    Ok(url.into())
}

async fn write_eml(dir: &Path, stem: &str, bytes: &[u8]) -> std::io::Result<()> {
    tokio::fs::create_dir_all(dir).await?;
    // Write then rename, so the dev page never reads half a file.
    let tmp = dir.join(format!(".{stem}.tmp"));
    tokio::fs::write(&tmp, bytes).await?;
    tokio::fs::rename(&tmp, dir.join(format!("{stem}.eml"))).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_of(url: &str) -> Result<String, String> {
        let mut settings = Settings::new("http://localhost");
        settings.smtp_url = Some(url.to_owned());
        Transport::from_settings(&settings)
            .map(|t| t.describe())
            .map_err(|e| e.to_string())
    }

    /// Whether `url` would send without TLS. lettre does not expose its
    /// settings, so this checks the URL rewriting directly.
    fn is_plain(url: &str) -> bool {
        !rewrite(url).unwrap().contains("tls=")
    }

    // The pooled SMTP transport starts a tokio task when it is built.
    #[tokio::test]
    async fn smtp_urls() {
        assert_eq!(
            server_of("smtp://127.0.0.1:2525").unwrap(),
            "SMTP smtp://127.0.0.1:2525"
        );
        assert_eq!(
            server_of("smtp://user:secret@mail.example.se:587").unwrap(),
            "SMTP smtp://mail.example.se:587"
        );
        assert!(server_of("smtps://user:secret@mail.example.se").is_ok());
        assert!(server_of("smtp://relay.internal:25?tls=none").is_ok());
        let err = server_of("ftp://user:secret@x.se").unwrap_err();
        assert!(!err.contains("secret"), "{err}");
        assert!(server_of("not a url").is_err());
        assert!(is_plain("smtp://127.0.0.1:2525"));
        assert!(is_plain("smtp://localhost:2525"));
        assert!(is_plain("smtp://[::1]:2525"));
        assert!(
            !is_plain("smtp://10.0.0.1:25"),
            "a remote server gets STARTTLS"
        );
        assert!(!is_plain("smtp://mail.example.se:587"));
    }

    #[test]
    fn without_smtp_url_mail_goes_to_files() {
        let settings = Settings::new("http://localhost");
        let transport = Transport::from_settings(&settings).unwrap();
        assert_eq!(transport.describe(), ".eml files in ./data/outbox");
    }
}
