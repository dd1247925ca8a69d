//! Sessions as signed JWTs (HS256 only: `alg: none` and every other algorithm
//! are refused), carried as a Bearer token by API clients or an HttpOnly
//! cookie by pages. Cookie sessions must echo their CSRF value in the
//! `x-csrf-token` header on every request that changes something.
//!
//! Every token names a server-side session (`sid`), which must still be
//! active ([`Sessions`]): signing out ends it before the token expires.
//! Sign-in posts must come from this site's own pages ([`same_origin`]),
//! so that another site cannot sign a browser in to an account of its
//! choosing (login CSRF).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Method};
use axum_extra::extract::cookie::{Cookie, SameSite};
use axum_extra::extract::CookieJar;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use booking::accounts::{Resident, Staff};
use booking::sessions::{SessionId, Subject};
use booking::{Db, ResidentId, StaffId};

use crate::error::AppError;
pub use crate::sessions::Sessions;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "kontakt_session";
/// The cookie pages read their CSRF value from. Not HttpOnly on purpose: the
/// page's script must be able to copy it into a header.
pub const CSRF_COOKIE: &str = "kontakt_csrf";
/// The header that must carry the CSRF value on cookie sessions.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// Who a session belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubjectKind {
    Resident,
    Staff,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub kind: SubjectKind,
    pub iat: i64,
    pub exp: i64,
    /// Echoed in `x-csrf-token` by pages.
    pub csrf: String,
    /// The server-side session this token belongs to.
    pub sid: String,
}

impl Claims {
    /// The session the token names; `None` for a malformed id, which no
    /// session of ours has.
    pub fn session(&self) -> Option<SessionId> {
        SessionId::parse(&self.sid).ok()
    }

    /// Whose session it is; `None` for a subject that is no id of its
    /// kind, which no account of ours has.
    pub fn subject(&self) -> Option<Subject> {
        match self.kind {
            SubjectKind::Resident => ResidentId::parse(&self.sub).ok().map(Subject::Resident),
            SubjectKind::Staff => StaffId::parse(&self.sub).ok().map(Subject::Staff),
        }
    }
}

/// The resident account a session of `claims` belongs to: `None` for a
/// staff member's session, or an account that does not exist (deleted
/// since, or never ours).
pub async fn resident_of(db: &Db, claims: &Claims) -> Result<Option<Resident>, booking::Error> {
    match claims.subject() {
        Some(Subject::Resident(id)) => booking::accounts::resident_by_id(db, &id).await,
        _ => Ok(None),
    }
}

/// The staff account a session of `claims` belongs to: `None` for a
/// resident's session, or an account that does not exist.
pub async fn staff_of(db: &Db, claims: &Claims) -> Result<Option<Staff>, booking::Error> {
    match claims.subject() {
        Some(Subject::Staff(id)) => booking::accounts::staff_by_id(db, &id).await,
        _ => Ok(None),
    }
}

/// Signing and verifying keys, made from one secret.
#[derive(Clone)]
pub struct Keys {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl Keys {
    /// Keys from `secret`, which must not be empty (startup refuses any
    /// secret shorter than 32 characters, so only a bug can get here with one).
    pub fn new(secret: &[u8]) -> Keys {
        const NOT_EMPTY: &str = "the session secret is not empty";
        Keys {
            encoding: EncodingKey::from_secret(secret).expect(NOT_EMPTY),
            decoding: DecodingKey::from_secret(secret).expect(NOT_EMPTY),
        }
    }

    /// A signed token for session `sid` of `sub`, valid for `minutes`. The
    /// session must be recorded first ([`sign_in`] does both).
    pub fn issue(
        &self,
        sub: &str,
        kind: SubjectKind,
        sid: &SessionId,
        minutes: i64,
        now: i64,
    ) -> (String, Claims) {
        let claims = Claims {
            sub: sub.to_owned(),
            kind,
            iat: now,
            exp: now + minutes * 60,
            csrf: random_csrf(),
            sid: sid.as_str().to_owned(),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing cannot fail");
        (token, claims)
    }

    /// Verifies signature, algorithm and expiry (with no leeway).
    pub fn verify(&self, token: &str) -> Option<Claims> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        // A token from before sessions were recorded has no `sid` and fails
        // to decode, which refuses it.
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .ok()
            .map(|data| data.claims)
    }
}

fn random_csrf() -> String {
    use base64::Engine;
    use rand::RngCore;
    let mut bytes = [0u8; 18];
    rand::thread_rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The cookies that carry a page session.
pub fn session_cookies(token: String, claims: &Claims, secure: bool) -> [Cookie<'static>; 2] {
    let max_age = time_duration(claims.exp - claims.iat);
    let mut session = Cookie::new(SESSION_COOKIE, token);
    session.set_http_only(true);
    session.set_same_site(SameSite::Lax);
    session.set_path("/");
    session.set_secure(secure);
    session.set_max_age(max_age);
    let mut csrf = Cookie::new(CSRF_COOKIE, claims.csrf.clone());
    csrf.set_same_site(SameSite::Strict);
    csrf.set_path("/");
    csrf.set_secure(secure);
    csrf.set_max_age(max_age);
    [session, csrf]
}

/// Cookies that end a page session.
pub fn cleared_cookies() -> [Cookie<'static>; 2] {
    let mut a = Cookie::new(SESSION_COOKIE, "");
    a.set_path("/");
    a.make_removal();
    let mut b = Cookie::new(CSRF_COOKIE, "");
    b.set_path("/");
    b.make_removal();
    [a, b]
}

fn time_duration(seconds: i64) -> cookie::time::Duration {
    cookie::time::Duration::seconds(seconds)
}

/// What the session extractors need of the app's state: the signing keys,
/// the live sessions and the database. The app's state implements it, so
/// that this module need not name the state that holds it.
pub trait SessionState: Send + Sync {
    fn keys(&self) -> &Keys;
    fn sessions(&self) -> &Sessions;
    fn db(&self) -> &Db;
}

/// A verified session, from the Bearer header or the session cookie.
#[derive(Debug, Clone)]
pub struct Session {
    pub claims: Claims,
}

impl<S> FromRequestParts<S> for Session
where
    S: SessionState,
{
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let keys = state.keys();
        let claims = if let Some(value) = parts.headers.get(header::AUTHORIZATION) {
            let value = value.to_str().map_err(|_| AppError::Unauthorized)?;
            let token = value
                .strip_prefix("Bearer ")
                .ok_or(AppError::Unauthorized)?;
            keys.verify(token.trim()).ok_or(AppError::Unauthorized)?
        } else {
            let token =
                cookie_value(&parts.headers, SESSION_COOKIE).ok_or(AppError::Unauthorized)?;
            let claims = keys.verify(&token).ok_or(AppError::Unauthorized)?;
            let safe = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
            if !safe {
                let echoed = parts.headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
                if echoed != Some(claims.csrf.as_str()) {
                    return Err(AppError::Forbidden("missing or wrong CSRF token".into()));
                }
            }
            claims
        };
        if !is_live(state.sessions(), &claims).await? {
            return Err(AppError::Unauthorized);
        }
        Ok(Session { claims })
    }
}

/// Whether the session that verified `claims` name is still active: the one
/// check every way of being signed in (API, pages, `/ws` tickets) goes
/// through.
pub async fn is_live(sessions: &Sessions, claims: &Claims) -> Result<bool, AppError> {
    let Some(sid) = claims.session() else {
        return Ok(false);
    };
    Ok(sessions
        .is_active(&sid, jsonwebtoken::get_current_timestamp() as i64)
        .await?)
}

/// Records a new session of `subject` and signs its token, valid for
/// `minutes`: what every sign-in ends with.
pub async fn sign_in(
    keys: &Keys,
    sessions: &Sessions,
    subject: &Subject,
    minutes: i64,
    now: i64,
) -> Result<(String, Claims), AppError> {
    let (sub, kind) = match subject {
        Subject::Resident(id) => (id.as_str(), SubjectKind::Resident),
        Subject::Staff(id) => (id.as_str(), SubjectKind::Staff),
    };
    let sid = sessions.open(subject, now, now + minutes * 60).await?;
    Ok(keys.issue(sub, kind, &sid, minutes, now))
}

/// The value of cookie `name`, if the request carries it. The one reader of
/// request cookies outside handlers that take a `CookieJar`.
pub fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    CookieJar::from_headers(headers)
        .get(name)
        .map(|cookie| cookie.value().to_owned())
}

/// The database and the claims of a verified session of `kind`.
async fn subject_of<S>(
    parts: &mut Parts,
    state: &S,
    kind: SubjectKind,
) -> Result<(Db, Claims), AppError>
where
    S: SessionState,
{
    let session = Session::from_request_parts(parts, state).await?;
    if session.claims.kind != kind {
        return Err(AppError::Unauthorized);
    }
    Ok((state.db().clone(), session.claims))
}

/// The signed-in resident.
#[derive(Debug, Clone)]
pub struct CurrentResident(pub Resident);

impl<S> FromRequestParts<S> for CurrentResident
where
    S: SessionState,
{
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let (db, claims) = subject_of(parts, state, SubjectKind::Resident).await?;
        let resident = resident_of(&db, &claims)
            .await?
            .ok_or(AppError::Unauthorized)?;
        Ok(CurrentResident(resident))
    }
}

/// The signed-in staff member, of any role.
#[derive(Debug, Clone)]
pub struct CurrentStaff(pub Staff);

impl<S> FromRequestParts<S> for CurrentStaff
where
    S: SessionState,
{
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let (db, claims) = subject_of(parts, state, SubjectKind::Staff).await?;
        let staff = staff_of(&db, &claims)
            .await?
            .ok_or(AppError::Unauthorized)?;
        Ok(CurrentStaff(staff))
    }
}

/// Fixed-window limits on failed sign-ins from one client address, kept by
/// each node. Only failures count, and they count per pair of address and
/// account: many people signing in from one office address (one NAT) do not
/// use up each other's allowance, and one person's typos lock out only
/// their own account from that address. A much higher cap per address
/// stops one address from trying many accounts. The per-account limit that
/// holds across addresses and nodes is `booking::throttle`.
#[derive(Clone)]
pub struct SignInLimiter {
    per_minute: u32,
    windows: Arc<Mutex<HashMap<Window, (Instant, u32)>>>,
}

/// How many times an account's allowance one address may fail in a minute,
/// over all accounts: room for an office of people who mistype.
pub const ADDRESS_CAP_FACTOR: u32 = 20;

#[derive(Clone, PartialEq, Eq, Hash)]
enum Window {
    Address(IpAddr),
    Account(IpAddr, String),
}

impl SignInLimiter {
    pub fn new(per_minute: u32) -> SignInLimiter {
        SignInLimiter {
            per_minute,
            windows: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Refuses an attempt at `account` from `ip` once this minute's failures
    /// of the pair, or of the address as a whole, reached their cap.
    pub fn check(&self, ip: IpAddr, account: &str, now: Instant) -> Result<(), AppError> {
        let windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let pair = Window::Account(ip, account.to_lowercase());
        let caps = [
            (pair, self.per_minute),
            (
                Window::Address(ip),
                self.per_minute.saturating_mul(ADDRESS_CAP_FACTOR),
            ),
        ];
        for (window, cap) in caps {
            if let Some((start, failures)) = windows.get(&window) {
                let elapsed = now.duration_since(*start);
                if elapsed < MINUTE && *failures >= cap {
                    return Err(AppError::RateLimited {
                        retry_after_seconds: MINUTE.saturating_sub(elapsed).as_secs().max(1),
                    });
                }
            }
        }
        Ok(())
    }

    /// Counts a failed attempt at `account` from `ip`.
    pub fn failed(&self, ip: IpAddr, account: &str, now: Instant) {
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        if windows.len() > 100_000 {
            windows.retain(|_, (start, _)| now.duration_since(*start) < MINUTE);
        }
        for window in [
            Window::Account(ip, account.to_lowercase()),
            Window::Address(ip),
        ] {
            let entry = windows.entry(window).or_insert((now, 0));
            if now.duration_since(entry.0) >= MINUTE {
                *entry = (now, 0);
            }
            entry.1 = entry.1.saturating_add(1);
        }
    }
}

const MINUTE: Duration = Duration::from_secs(60);

/// Refuses a sign-in post that a browser sent from another site: the
/// `Origin` header (or, without it, `Sec-Fetch-Site`) must name this site:
/// `public_url`, or the `Host` the request was sent to. Without this, another site could post its own account's
/// credentials and sign the visitor in as that account (login CSRF).
/// Clients that send neither header (scripts, tests) are not browsers
/// acting for someone and are let through.
///
/// Every page is sent with `Referrer-Policy: no-referrer`, under which a
/// browser posts a form with `Origin: null`. That opaque origin says
/// nothing, so the decision then rests on `Sec-Fetch-Site`, which pages
/// cannot set and which must say `same-origin`.
pub fn same_origin(headers: &HeaderMap, public_url: &str) -> Result<(), AppError> {
    let refused = || AppError::Forbidden("this form must be posted from this site".into());
    let fetch_site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    let origin = headers.get(header::ORIGIN);
    if origin.is_some_and(|o| o.as_bytes() == b"null") {
        return match fetch_site {
            Some("same-origin") => Ok(()),
            _ => Err(refused()),
        };
    }
    if let Some(origin) = origin {
        let origin = origin.to_str().map_err(|_| refused())?;
        let origin = origin_of(origin);
        // The site is `public_url`, or whatever host the browser reached
        // (a demo opened as `localhost` rather than `127.0.0.1`): a form on
        // another site sends that site's origin, which matches neither.
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(|h| h.to_ascii_lowercase());
        let reached = host.is_some_and(|h| origin.split_once("://").map(|(_, a)| a) == Some(&h));
        return if origin == origin_of(public_url) || reached {
            Ok(())
        } else {
            Err(refused())
        };
    }
    match fetch_site {
        None | Some("same-origin") | Some("none") => Ok(()),
        Some(_) => Err(refused()),
    }
}

/// `scheme://host[:port]` of a URL, lower case, without a default port.
fn origin_of(url: &str) -> String {
    let url = url.trim().to_ascii_lowercase();
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url.as_str()));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let authority = match (scheme, authority.rsplit_once(':')) {
        ("http", Some((host, "80"))) | ("https", Some((host, "443"))) => host,
        _ => authority,
    };
    format!("{scheme}://{authority}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_and_tampering_is_refused() {
        let keys = Keys::new(b"secret-one");
        let (token, claims) = keys.issue(
            "r1",
            SubjectKind::Resident,
            &SessionId::random(),
            5,
            jsonwebtoken::get_current_timestamp() as i64,
        );
        assert_eq!(keys.verify(&token).unwrap().sub, claims.sub);
        assert!(
            Keys::new(b"secret-two").verify(&token).is_none(),
            "another key"
        );
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        parts[1].push('A');
        assert!(keys.verify(&parts.join(".")).is_none(), "tampered payload");
    }

    #[test]
    fn expired_and_unsigned_tokens_are_refused() {
        use base64::Engine;
        let keys = Keys::new(b"secret");
        let (expired, _) = keys.issue(
            "r1",
            SubjectKind::Resident,
            &SessionId::random(),
            -1,
            jsonwebtoken::get_current_timestamp() as i64,
        );
        assert!(keys.verify(&expired).is_none());
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let none = format!(
            "{}.{}.",
            b64(r#"{"alg":"none","typ":"JWT"}"#),
            b64(r#"{"sub":"r1","kind":"resident","iat":0,"exp":99999999999,"csrf":"x"}"#)
        );
        assert!(keys.verify(&none).is_none());
    }

    #[test]
    fn the_limiter_counts_failures_per_address_and_account() {
        let limiter = SignInLimiter::new(3);
        let office: IpAddr = "192.0.2.1".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            limiter.check(office, "a@x.se", t0).unwrap();
            limiter.failed(office, "a@x.se", t0);
        }
        assert!(
            limiter.check(office, "A@x.se", t0).is_err(),
            "a's allowance"
        );
        limiter
            .check(office, "b@x.se", t0)
            .expect("a colleague at the same address goes on");
        limiter
            .check("192.0.2.2".parse().unwrap(), "a@x.se", t0)
            .expect("another address");
        limiter
            .check(office, "a@x.se", t0 + Duration::from_secs(61))
            .expect("the next minute");
    }

    #[test]
    fn one_address_may_not_fail_for_many_accounts_without_end() {
        let limiter = SignInLimiter::new(3);
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        let t0 = Instant::now();
        for n in 0..3 * ADDRESS_CAP_FACTOR {
            limiter.failed(ip, &format!("user{n}@x.se"), t0);
        }
        assert!(limiter.check(ip, "fresh@x.se", t0).is_err());
    }

    #[test]
    fn only_this_sites_origin_may_post_sign_ins() {
        use axum::http::{HeaderMap, HeaderValue};
        let check = |name: &'static str, value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(name, HeaderValue::from_static(value));
            same_origin(&headers, "https://kontakt.example.se/").is_ok()
        };
        assert!(check("origin", "https://kontakt.example.se"));
        assert!(check("origin", "https://KONTAKT.example.se:443"));
        assert!(!check("origin", "https://evil.example"));
        assert!(!check("origin", "http://kontakt.example.se"));
        assert!(!check("origin", "null"));
        assert!(check("sec-fetch-site", "same-origin"));
        assert!(!check("sec-fetch-site", "cross-site"));
        assert!(!check("sec-fetch-site", "same-site"));
        assert!(same_origin(&HeaderMap::new(), "https://kontakt.example.se").is_ok());
        let mut reached = HeaderMap::new();
        reached.insert("origin", HeaderValue::from_static("http://localhost:8080"));
        reached.insert("host", HeaderValue::from_static("localhost:8080"));
        assert!(
            same_origin(&reached, "http://127.0.0.1:8080").is_ok(),
            "the host reached"
        );
        reached.insert("origin", HeaderValue::from_static("http://evil.example"));
        assert!(same_origin(&reached, "http://127.0.0.1:8080").is_err());

        // Under `Referrer-Policy: no-referrer` a browser posts a form with
        // `Origin: null`; `Sec-Fetch-Site` then decides.
        let opaque = |site: Option<&'static str>| {
            let mut headers = HeaderMap::new();
            headers.insert("origin", HeaderValue::from_static("null"));
            if let Some(site) = site {
                headers.insert("sec-fetch-site", HeaderValue::from_static(site));
            }
            same_origin(&headers, "https://kontakt.example.se/").is_ok()
        };
        assert!(opaque(Some("same-origin")));
        assert!(!opaque(Some("cross-site")));
        assert!(!opaque(Some("same-site")));
        assert!(!opaque(Some("none")));
        assert!(!opaque(None));
    }
}
