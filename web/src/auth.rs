//! Sessions as signed JWTs (HS256 only: `alg: none` and every other algorithm
//! are refused), carried as a Bearer token by API clients or an HttpOnly
//! cookie by pages. Cookie sessions must echo their CSRF value in the
//! `x-csrf-token` header on every request that changes something.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, Method};
use axum_extra::extract::cookie::{Cookie, SameSite};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use booking::accounts::{Resident, Staff};
use booking::{Db, Role};

use crate::error::AppError;

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
}

/// Signing and verifying keys, made from one secret.
#[derive(Clone)]
pub struct Keys {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl Keys {
    pub fn new(secret: &[u8]) -> Keys {
        Keys {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
        }
    }

    /// A signed session for `sub`, valid for `minutes`.
    pub fn issue(&self, sub: &str, kind: SubjectKind, minutes: i64, now: i64) -> (String, Claims) {
        let claims = Claims {
            sub: sub.to_owned(),
            kind,
            iat: now,
            exp: now + minutes * 60,
            csrf: random_csrf(),
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

/// A verified session, from the Bearer header or the session cookie.
#[derive(Debug, Clone)]
pub struct Session {
    pub claims: Claims,
}

impl<S> FromRequestParts<S> for Session
where
    Keys: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let keys = Keys::from_ref(state);
        if let Some(value) = parts.headers.get(header::AUTHORIZATION) {
            let value = value.to_str().map_err(|_| AppError::Unauthorized)?;
            let token = value
                .strip_prefix("Bearer ")
                .ok_or(AppError::Unauthorized)?;
            let claims = keys.verify(token.trim()).ok_or(AppError::Unauthorized)?;
            return Ok(Session { claims });
        }
        let token = cookie_value(parts, SESSION_COOKIE).ok_or(AppError::Unauthorized)?;
        let claims = keys.verify(&token).ok_or(AppError::Unauthorized)?;
        let safe = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
        if !safe {
            let echoed = parts.headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
            if echoed != Some(claims.csrf.as_str()) {
                return Err(AppError::Forbidden("missing or wrong CSRF token".into()));
            }
        }
        Ok(Session { claims })
    }
}

/// The value of cookie `name`, if the request carries it.
pub fn cookie_value(parts: &Parts, name: &str) -> Option<String> {
    parts
        .headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// The database and the subject of a verified session of `kind`.
async fn subject_of<S>(
    parts: &mut Parts,
    state: &S,
    kind: SubjectKind,
) -> Result<(Db, String), AppError>
where
    Keys: FromRef<S>,
    Db: FromRef<S>,
    S: Send + Sync,
{
    let session = Session::from_request_parts(parts, state).await?;
    if session.claims.kind != kind {
        return Err(AppError::Unauthorized);
    }
    Ok((Db::from_ref(state), session.claims.sub))
}

/// The signed-in resident.
#[derive(Debug, Clone)]
pub struct CurrentResident(pub Resident);

impl<S> FromRequestParts<S> for CurrentResident
where
    Keys: FromRef<S>,
    Db: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let (db, sub) = subject_of(parts, state, SubjectKind::Resident).await?;
        let resident = booking::accounts::resident_by_id(&db, &sub)
            .await?
            .ok_or(AppError::Unauthorized)?;
        Ok(CurrentResident(resident))
    }
}

/// The signed-in staff member, of any role.
#[derive(Debug, Clone)]
pub struct CurrentStaff(pub Staff);

impl CurrentStaff {
    /// Refuses unless the staff member has one of `roles`.
    pub fn require(&self, roles: &[Role]) -> Result<&Staff, AppError> {
        if roles.contains(&self.0.role) {
            Ok(&self.0)
        } else {
            Err(AppError::Forbidden(format!(
                "this needs the role {}",
                roles
                    .iter()
                    .map(|r| r.as_str())
                    .collect::<Vec<_>>()
                    .join(" or ")
            )))
        }
    }
}

impl<S> FromRequestParts<S> for CurrentStaff
where
    Keys: FromRef<S>,
    Db: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let (db, sub) = subject_of(parts, state, SubjectKind::Staff).await?;
        let staff = booking::accounts::staff_by_id(&db, &sub)
            .await?
            .ok_or(AppError::Unauthorized)?;
        Ok(CurrentStaff(staff))
    }
}

/// A fixed-window limit on sign-in attempts per client address.
#[derive(Clone)]
pub struct SignInLimiter {
    per_minute: u32,
    windows: Arc<Mutex<HashMap<IpAddr, (Instant, u32)>>>,
}

impl SignInLimiter {
    pub fn new(per_minute: u32) -> SignInLimiter {
        SignInLimiter {
            per_minute,
            windows: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Counts one attempt from `ip` at `now`; refuses once the minute's
    /// allowance is used up.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), AppError> {
        let minute = Duration::from_secs(60);
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        if windows.len() > 100_000 {
            windows.retain(|_, (start, _)| now.duration_since(*start) < minute);
        }
        let entry = windows.entry(ip).or_insert((now, 0));
        if now.duration_since(entry.0) >= minute {
            *entry = (now, 0);
        }
        if entry.1 >= self.per_minute {
            let retry = minute
                .saturating_sub(now.duration_since(entry.0))
                .as_secs()
                .max(1);
            return Err(AppError::RateLimited {
                retry_after_seconds: retry,
            });
        }
        entry.1 += 1;
        Ok(())
    }
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
    fn the_limiter_allows_a_minute_of_attempts_then_refuses() {
        let limiter = SignInLimiter::new(3);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            limiter.check(ip, t0).unwrap();
        }
        assert!(limiter.check(ip, t0).is_err());
        assert!(
            limiter.check("192.0.2.2".parse().unwrap(), t0).is_ok(),
            "per address"
        );
        limiter.check(ip, t0 + Duration::from_secs(61)).unwrap();
    }
}
