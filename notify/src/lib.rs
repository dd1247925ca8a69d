//! Email for every step: the delivery worker for `booking`'s outbox, lettre
//! transports (SMTP and `.eml` files), localised templates, calendar (ICS)
//! attachments and reminders. It knows nothing about HTTP.
//!
//! - [`render`] turns an outbox [`Message`](booking::outbox::Message) into a
//!   [`RenderedMail`] in the recipient's language.
//! - [`Worker`] claims due outbox rows, sends them and records the outcome,
//!   retrying with backoff and parking rows that keep failing, through
//!   `booking::outbox::delivery`, which holds the outbox's SQL (and lets
//!   admins list parked rows and send them again).
//! - [`mailbox`] reads the `.eml` files of the file transport for the demo
//!   page `/dev/mail`.

pub mod calendar;
pub mod mailbox;
pub mod render;
pub mod settings;
pub mod transport;
pub mod worker;

pub use calendar::{CalendarMethod, Invitation};
pub use render::{render, render_discreet, Link, RenderedMail};
pub use settings::Settings;
pub use worker::{DeliveryReport, Worker};

rust_i18n::i18n!("locales", fallback = "sv");

/// Why the worker could not start or finish a batch. Failures of single mails
/// are not errors: they are recorded on their outbox rows.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("invalid sender address {0:?}")]
    InvalidFrom(String),
    #[error("invalid SMTP_URL: {0}")]
    InvalidSmtpUrl(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// The bare address in a `From` such as `Kontakt <no-reply@example.se>`.
/// Percent-encodes everything but RFC 3986 unreserved characters (section
/// 2.3), so that a token or id is safe both as a path segment and as a query
/// value. The one encoder of links, for mails and web's pages alike.
pub fn percent_encode(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for byte in raw.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

pub(crate) fn mail_address(from: &str) -> &str {
    match (from.rfind('<'), from.rfind('>')) {
        (Some(open), Some(close)) if open < close => from[open + 1..close].trim(),
        _ => from.trim(),
    }
}

/// The domain of the sender, which scopes `Message-ID`s and calendar `UID`s.
pub(crate) fn mail_domain(from: &str) -> &str {
    let address = mail_address(from);
    address
        .rsplit_once('@')
        .map(|(_, domain)| domain)
        .filter(|domain| !domain.is_empty())
        .unwrap_or("kontakt.localhost")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_encoding_keeps_only_unreserved_characters() {
        assert_eq!(percent_encode("aZ09-._~"), "aZ09-._~");
        assert_eq!(
            percent_encode("chat:1 /?&=å"),
            "chat%3A1%20%2F%3F%26%3D%C3%A5"
        );
    }

    #[test]
    fn sender_address_and_domain() {
        assert_eq!(
            mail_address("Kontakt <no-reply@kontakt.localhost>"),
            "no-reply@kontakt.localhost"
        );
        assert_eq!(mail_address("a@b.se"), "a@b.se");
        assert_eq!(
            mail_domain("Kontakt <no-reply@k.example.se>"),
            "k.example.se"
        );
        assert_eq!(mail_domain("nonsense"), "kontakt.localhost");
    }
}
