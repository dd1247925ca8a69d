//! The server's part of the pre-call check (`assets/precheck.js`): TURN
//! credentials that are good for the check and nothing else.
//!
//! The check calls itself through the relay, once per transport (UDP, then
//! TCP, then TLS where configured), with two peer connections that each
//! open one allocation. So every transport gets two credentials, and each
//! credential is scoped to the check:
//! - it lives [`PRECHECK_TTL_SECS`], not the hours of a meeting's;
//! - its username has the precheck form, which our relay gives one
//!   allocation in its life and refuses when it is valid for longer than
//!   the check's credentials may be (`media_relay::credentials`);
//! - it is handed out a few times a minute per caller and per address
//!   (`precheck_per_minute`), and 429 beyond that.
//!
//! Who may ask is decided in one place, [`checker`]: a signed-in resident
//! or staff member, or the holder of an anonymous chat's token. Another
//! kind of guest adds its token there.

use std::net::SocketAddr;
use std::time::Instant;

use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Json, Router};
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::{resident_of, staff_of, Session, SubjectKind};
use crate::error::{AppError, ErrorBody};
use crate::state::AppState;

pub mod limiter;

pub use limiter::{Checker, PrecheckLimiter, ADDRESS_CAP_FACTOR};

/// How long the check's credentials last: the check takes seconds, and a
/// page fetches new ones for every run.
pub const PRECHECK_TTL_SECS: u64 = 90;

pub fn router() -> Router<AppState> {
    Router::new().route("/api/precheck/turn", post(precheck_turn))
}

/// Who is asking, or 401: a live session of an existing account, or an
/// anonymous chat's token as a Bearer token. The one rule for who may run
/// the check; a new kind of guest token is one more arm here.
pub async fn checker(
    state: &AppState,
    session: Result<Session, AppError>,
    headers: &HeaderMap,
    now: i64,
) -> Result<Checker, AppError> {
    match session {
        Ok(session) => {
            // A session of an account deleted since sign-in runs no check.
            let exists = match session.claims.kind {
                SubjectKind::Resident => resident_of(&state.db, &session.claims).await?.is_some(),
                SubjectKind::Staff => staff_of(&state.db, &session.claims).await?.is_some(),
            };
            if !exists {
                return Err(AppError::Unauthorized);
            }
            Ok(Checker::Session(session.claims.sid))
        }
        Err(refusal) => {
            let chat = crate::ws::bearer(headers)
                .and_then(|token| state.tickets.verify_chat_token(token, now))
                .ok_or(refusal)?;
            Ok(Checker::AnonymousChat(chat.room))
        }
    }
}

/// The credentials for one run of the check.
#[derive(Debug, Serialize, ToSchema)]
pub struct PrecheckDto {
    /// Seconds from now the credentials stay valid.
    pub ttl_secs: u64,
    /// The relay's transports in the order to try them: `udp`, `tcp`,
    /// `tls`, each only when the relay listens on it. Empty when no relay
    /// is configured.
    pub transports: Vec<PrecheckTransport>,
}

/// One transport to test.
#[derive(Debug, Serialize, ToSchema)]
pub struct PrecheckTransport {
    /// `udp`, `tcp` or `tls`.
    pub transport: &'static str,
    /// The relay's TURN URLs over this transport.
    pub urls: Vec<String>,
    /// Two credentials, one for each end of the call to oneself; each
    /// opens one allocation.
    pub credentials: Vec<PrecheckCredential>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PrecheckCredential {
    pub username: String,
    pub password: String,
}

/// TURN credentials for the pre-call check: for a signed-in resident or
/// staff member (cookie sessions echo their CSRF value), or with an
/// anonymous chat's token. Each credential opens one allocation on the
/// relay, within [`PRECHECK_TTL_SECS`] seconds.
#[utoipa::path(post, path = "/api/precheck/turn", security(("bearer" = [])), responses(
    (status = 200, body = PrecheckDto),
    (status = 401, body = ErrorBody),
    (status = 403, description = "A cookie session without its CSRF header", body = ErrorBody),
    (status = 429, description = "Too many checks; see Retry-After", body = ErrorBody),
))]
#[tracing::instrument(skip_all)]
pub async fn precheck_turn(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    session: Result<Session, AppError>,
    headers: HeaderMap,
) -> Result<Json<PrecheckDto>, AppError> {
    let now = crate::clock::now().as_second();
    let checker = checker(&state, session, &headers, now).await?;
    state
        .precheck_limiter
        .take(&checker, client.ip(), Instant::now())?;
    let transports = match &state.turn {
        None => Vec::new(),
        Some(issuer) => [
            RelayTransport::Udp,
            RelayTransport::Tcp,
            RelayTransport::Tls,
        ]
        .into_iter()
        .filter_map(|transport| {
            let urls: Vec<String> = issuer
                .urls()
                .iter()
                .filter(|url| RelayTransport::of(url) == Some(transport))
                .cloned()
                .collect();
            if urls.is_empty() {
                return None;
            }
            let credential = || {
                let (username, password) = issuer.issue_precheck(PRECHECK_TTL_SECS, now);
                PrecheckCredential { username, password }
            };
            Some(PrecheckTransport {
                transport: transport.name(),
                urls,
                credentials: vec![credential(), credential()],
            })
        })
        .collect(),
    };
    Ok(Json(PrecheckDto {
        ttl_secs: PRECHECK_TTL_SECS,
        transports,
    }))
}

/// How a browser reaches the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayTransport {
    Udp,
    Tcp,
    Tls,
}

impl RelayTransport {
    /// The transport of a TURN URL (RFC 7065): `turns:` is TLS, `turn:` is
    /// UDP unless `?transport=tcp`. STUN URLs test no relay, so `None`.
    pub fn of(url: &str) -> Option<RelayTransport> {
        let url = url.trim().to_ascii_lowercase();
        let tcp = url
            .split_once('?')
            .is_some_and(|(_, query)| query.split('&').any(|p| p == "transport=tcp"));
        if url.starts_with("turns:") {
            Some(RelayTransport::Tls)
        } else if url.starts_with("turn:") {
            Some(if tcp {
                RelayTransport::Tcp
            } else {
                RelayTransport::Udp
            })
        } else {
            None
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            RelayTransport::Udp => "udp",
            RelayTransport::Tcp => "tcp",
            RelayTransport::Tls => "tls",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turn_urls_name_their_transport() {
        let check = |url: &str, expected: Option<RelayTransport>| {
            assert_eq!(RelayTransport::of(url), expected, "{url}");
        };
        check(
            "turn:127.0.0.1:3478?transport=udp",
            Some(RelayTransport::Udp),
        );
        check("turn:relay.example.se:3478", Some(RelayTransport::Udp));
        check(
            "turn:127.0.0.1:3478?transport=tcp",
            Some(RelayTransport::Tcp),
        );
        check("TURN:host:3478?transport=TCP", Some(RelayTransport::Tcp));
        check(
            "turns:relay.example.se:443?transport=tcp",
            Some(RelayTransport::Tls),
        );
        check("turns:relay.example.se:443", Some(RelayTransport::Tls));
        check("stun:stun.example.se:3478", None);
    }
}
