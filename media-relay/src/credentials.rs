//! TURN REST credentials, the scheme coturn implements as `use-auth-secret`.
//!
//! The username is `<expiry-unix-seconds>:<subject>` and the password is
//! `base64(HMAC-SHA1(secret, username))`. Anyone holding the shared secret can issue
//! credentials, so `kontakt` and any number of relays (ours or coturn) agree without talking.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha1::Sha1;

/// The start of the subject of credentials for the pre-call check, which tests whether a
/// browser reaches the relay before a meeting. The relay gives each such username one
/// allocation, ever, and refuses it when it is valid for longer than [`PRECHECK_MAX_TTL`].
/// A relay that does not know the form (coturn) takes it as an ordinary subject.
pub const PRECHECK_PREFIX: &str = "precheck.";

/// The longest a pre-call check credential may be valid for. The relay refuses longer ones,
/// which also bounds how long it must remember that one was used.
pub const PRECHECK_MAX_TTL: Duration = Duration::from_secs(300);

/// Issues a username and password valid until `now + ttl` for `subject`.
///
/// The subject must not contain `:`; it identifies the holder for per-user quotas.
pub fn issue(secret: &str, subject: &str, ttl: Duration, now: SystemTime) -> (String, String) {
    let expiry = now.duration_since(UNIX_EPOCH).unwrap_or_default() + ttl;
    let username = format!("{}:{}", expiry.as_secs(), subject);
    let password = password_for(secret, &username);
    (username, password)
}

/// Issues credentials for one allocation of the pre-call check, valid until `now + ttl` (at
/// most [`PRECHECK_MAX_TTL`]). `id` must be unique per credential and must not contain `:`.
pub fn issue_precheck(secret: &str, id: &str, ttl: Duration, now: SystemTime) -> (String, String) {
    let subject = format!("{PRECHECK_PREFIX}{id}");
    issue(secret, &subject, ttl.min(PRECHECK_MAX_TTL), now)
}

/// The password that belongs to `username` under `secret`.
pub fn password_for(secret: &str, username: &str) -> String {
    let mut mac =
        Hmac::<Sha1>::new_from_slice(secret.as_bytes()).expect("HMAC accepts keys of any length");
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// A parsed REST username.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestUsername<'a> {
    pub expiry_unix: u64,
    pub subject: &'a str,
}

impl<'a> RestUsername<'a> {
    /// Parses `<expiry>:<subject>`. coturn also accepts a bare timestamp, so the subject may be
    /// empty.
    pub fn parse(username: &'a str) -> Option<Self> {
        let (expiry, subject) = match username.split_once(':') {
            Some((expiry, subject)) => (expiry, subject),
            None => (username, ""),
        };
        Some(Self {
            expiry_unix: expiry.parse().ok()?,
            subject,
        })
    }

    /// Whether these are credentials of the pre-call check ([`PRECHECK_PREFIX`]).
    pub fn is_precheck(&self) -> bool {
        self.subject.starts_with(PRECHECK_PREFIX)
    }
}

/// The long-term credential key `MD5(username ":" realm ":" password)` (RFC 8489, section 9.2.2).
pub fn long_term_key(username: &str, realm: &str, password: &str) -> [u8; 16] {
    let mut hasher = Md5::new();
    hasher.update(username.as_bytes());
    hasher.update(b":");
    hasher.update(realm.as_bytes());
    hasher.update(b":");
    hasher.update(password.as_bytes());
    hasher.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_username_carries_expiry_and_subject() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let (username, password) = issue("s3cret", "room-42", Duration::from_secs(3600), now);
        assert_eq!(username, "1700003600:room-42");
        let parsed = RestUsername::parse(&username).unwrap();
        assert_eq!(parsed.expiry_unix, 1_700_003_600);
        assert_eq!(parsed.subject, "room-42");
        assert_eq!(password, password_for("s3cret", &username));
        assert_ne!(password, password_for("other", &username));
    }

    #[test]
    fn password_matches_independent_hmac_sha1_vector() {
        // RFC 2202 test case 2: HMAC-SHA1("Jefe", "what do ya want for nothing?").
        let password = password_for("Jefe", "what do ya want for nothing?");
        let raw = base64::engine::general_purpose::STANDARD
            .decode(password)
            .unwrap();
        let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79");
    }

    #[test]
    fn precheck_credentials_are_marked_and_short_lived() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let (username, password) = issue_precheck("s3cret", "abc", Duration::from_secs(90), now);
        assert_eq!(username, "1700000090:precheck.abc");
        assert_eq!(password, password_for("s3cret", &username));
        assert!(RestUsername::parse(&username).unwrap().is_precheck());
        let (long, _) = issue_precheck("s3cret", "abc", Duration::from_secs(86_400), now);
        assert_eq!(
            RestUsername::parse(&long).unwrap().expiry_unix,
            1_700_000_000 + PRECHECK_MAX_TTL.as_secs(),
            "a longer TTL is cut to the most a precheck credential may have"
        );
        let (ordinary, _) = issue("s3cret", "resident-r1", Duration::from_secs(90), now);
        assert!(!RestUsername::parse(&ordinary).unwrap().is_precheck());
    }

    #[test]
    fn garbage_usernames_do_not_parse() {
        assert_eq!(RestUsername::parse("abc:def"), None);
        assert_eq!(RestUsername::parse(""), None);
        assert_eq!(RestUsername::parse("12").unwrap().subject, "");
    }
}
