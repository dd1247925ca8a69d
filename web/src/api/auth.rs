//! Signing in: staff with a password, residents with a one-time email link.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::{Json, Router};
use axum_extra::extract::CookieJar;
use booking::accounts::{Resident, Staff};
use booking::outbox::Registration;
use booking::sessions::Subject;
use booking::{accounts, throttle, EmailAddress, Language, MunicipalityCode, Password, PersonName};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::ApiJson;
use crate::auth::{cleared_cookies, same_origin, session_cookies, sign_in, Session};
use crate::clock::now;
use crate::error::{AppError, ErrorBody};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/auth/staff/login", post(staff_login))
        .route("/api/auth/resident/link", post(resident_link))
        .route("/api/auth/resident/redeem", post(resident_redeem))
        .route("/api/auth/sign-out", post(sign_out))
        .route("/api/auth/sign-out-everywhere", post(sign_out_everywhere))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StaffLogin {
    pub email: String,
    pub password: String,
}

#[derive(Serialize, ToSchema)]
pub struct SessionDto {
    /// A Bearer token for the API.
    pub token: String,
    /// Unix seconds.
    pub expires_at: i64,
    /// Echo this in `x-csrf-token` when using the session cookie instead.
    pub csrf: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResidentLinkRequest {
    pub email: String,
    /// For a first sign-in: the resident's name.
    pub name: Option<String>,
    /// For a first sign-in: the home municipality (kommunkod).
    pub home_municipality: Option<String>,
    /// For a first sign-in: sv, en, fi or ar.
    pub language: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RedeemRequest {
    pub token: String,
}

/// Signs a staff member in. Also sets the page session cookies. Limited per
/// client address and account ([`crate::auth::SignInLimiter`]) and per
/// account across addresses and nodes (`booking::throttle`).
#[utoipa::path(post, path = "/api/auth/staff/login", request_body = StaffLogin, responses(
    (status = 200, body = SessionDto),
    (status = 401, body = ErrorBody),
    (status = 403, description = "Posted from another site", body = ErrorBody),
    (status = 429, body = ErrorBody),
))]
#[tracing::instrument(skip(state, jar, headers, body), fields(client = %client))]
pub async fn staff_login(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    jar: CookieJar,
    ApiJson(body): ApiJson<StaffLogin>,
) -> Result<impl IntoResponse, AppError> {
    same_origin(&headers, &state.settings.public_url)?;
    let staff = check_staff_password(&state, client.ip(), &body.email, &body.password)
        .await?
        .ok_or(AppError::Unauthorized)?;
    let (token, claims) = sign_in(
        &state.keys,
        &state.sessions,
        &Subject::Staff(staff.id.clone()),
        state.settings.staff_session_minutes,
        now().as_second(),
    )
    .await?;
    let [a, b] = session_cookies(token.clone(), &claims, state.settings.secure_cookies);
    let body = SessionDto {
        token,
        expires_at: claims.exp,
        csrf: claims.csrf,
    };
    Ok((jar.add(a).add(b), Json(body)))
}

/// Checks a staff sign-in under both limits, shared by the API and the
/// sign-in page: `Ok(None)` for a wrong address or password, and
/// `RateLimited` while the address and account, or the account alone, must
/// wait. The account is the address as typed, known or not, so that a wait
/// does not tell which accounts exist.
pub(crate) async fn check_staff_password(
    state: &AppState,
    client: IpAddr,
    email: &str,
    password: &str,
) -> Result<Option<Staff>, AppError> {
    let account = email.trim().to_lowercase();
    let started = Instant::now();
    state.sign_in_limiter.check(client, &account, started)?;
    let now = now().as_second();
    if let Some(until) = throttle::locked_until(&state.db, &account, now).await? {
        return Err(AppError::RateLimited {
            retry_after_seconds: (until - now).max(1) as u64,
        });
    }
    let staff = match (EmailAddress::parse(&account), Password::parse(password)) {
        (Ok(email), Ok(password)) => {
            accounts::verify_staff_password(&state.db, &email, &password).await?
        }
        _ => None,
    };
    match staff {
        Some(staff) => {
            throttle::record_success(&state.db, &account).await?;
            Ok(Some(staff))
        }
        None => {
            metrics::counter!("kontakt_sign_in_failures_total", "kind" => "staff").increment(1);
            state.sign_in_limiter.failed(client, &account, started);
            throttle::record_failure(&state.db, &account, now).await?;
            Ok(None)
        }
    }
}

/// Sends a one-time sign-in link by email. The whole request is checked
/// first (422 for anything malformed, whether or not the address is
/// known); then every request answers 202 with no body after the same one
/// write, a request in the outbox, so that neither the answer nor its
/// timing reveals anybody's contact with the social services. The delivery
/// worker sends the link to a known address, registers a first-time
/// resident when name and home municipality came with it, and sends
/// nothing otherwise.
#[utoipa::path(post, path = "/api/auth/resident/link", request_body = ResidentLinkRequest, responses(
    (status = 202, description = "A link is on its way if the address is known"),
    (status = 403, description = "Posted from another site", body = ErrorBody),
    (status = 422, body = ErrorBody),
    (status = 429, body = ErrorBody),
))]
#[tracing::instrument(skip(state, headers, body), fields(client = %client))]
pub async fn resident_link(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<ResidentLinkRequest>,
) -> Result<StatusCode, AppError> {
    same_origin(&headers, &state.settings.public_url)?;
    send_sign_in_link(&state, client.ip(), &body).await?;
    Ok(StatusCode::ACCEPTED)
}

/// A sign-in link request, checked in full.
struct LinkRequest {
    email: EmailAddress,
    language: Language,
    registration: Option<Registration>,
}

impl LinkRequest {
    /// Checks every field, whoever the address belongs to. Name and home
    /// municipality come together (a first sign-in) or not at all.
    async fn parse(state: &AppState, body: &ResidentLinkRequest) -> Result<LinkRequest, AppError> {
        let email = EmailAddress::parse(body.email.trim())?;
        let language = body
            .language
            .as_deref()
            .map(Language::parse)
            .transpose()?
            .unwrap_or_default();
        let name = body
            .name
            .as_deref()
            .map(str::trim)
            .filter(|n| !n.is_empty());
        let home = body
            .home_municipality
            .as_deref()
            .map(str::trim)
            .filter(|h| !h.is_empty());
        let registration = match (name, home) {
            (None, None) => None,
            (Some(name), Some(home)) => {
                let name = PersonName::parse(name)?;
                let home = MunicipalityCode::parse(home)?;
                if booking::catalog::municipality(&state.db, &home)
                    .await?
                    .is_none()
                {
                    return Err(AppError::Invalid(
                        "home_municipality: not a participating municipality".into(),
                    ));
                }
                Some(Registration {
                    name,
                    home,
                    language,
                })
            }
            _ => {
                return Err(AppError::Invalid(
                    "name and home_municipality: a first sign-in gives both".into(),
                ))
            }
        };
        Ok(LinkRequest {
            email,
            language,
            registration,
        })
    }
}

/// What `POST /api/auth/resident/link` does, shared with the sign-in page:
/// checks the limit and the whole request, then puts the request in the
/// outbox and wakes the delivery worker.
pub(crate) async fn send_sign_in_link(
    state: &AppState,
    client: IpAddr,
    body: &ResidentLinkRequest,
) -> Result<(), AppError> {
    let account = body.email.trim().to_lowercase();
    let started = Instant::now();
    state.sign_in_limiter.check(client, &account, started)?;
    // Every request counts: each one may send a mail.
    state.sign_in_limiter.failed(client, &account, started);
    let request = LinkRequest::parse(state, body).await?;
    accounts::request_sign_in_link(
        &state.db,
        &request.email,
        request.language,
        request.registration,
        now().as_second(),
    )
    .await?;
    state.mail_waker.notify_one();
    Ok(())
}

/// Redeems a sign-in link for a session. A link works once, for 15 minutes.
#[utoipa::path(post, path = "/api/auth/resident/redeem", request_body = RedeemRequest, responses(
    (status = 200, body = SessionDto),
    (status = 401, body = ErrorBody),
))]
#[tracing::instrument(skip(state, jar, body), fields(client = %client))]
pub async fn resident_redeem(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    jar: CookieJar,
    ApiJson(body): ApiJson<RedeemRequest>,
) -> Result<impl IntoResponse, AppError> {
    let resident = redeem_link(&state, client.ip(), &body.token)
        .await?
        .ok_or(AppError::Unauthorized)?;
    let (token, claims) = sign_in(
        &state.keys,
        &state.sessions,
        &Subject::Resident(resident.id.clone()),
        state.settings.resident_session_minutes,
        now().as_second(),
    )
    .await?;
    let [a, b] = session_cookies(token.clone(), &claims, state.settings.secure_cookies);
    let body = SessionDto {
        token,
        expires_at: claims.exp,
        csrf: claims.csrf,
    };
    Ok((jar.add(a).add(b), Json(body)))
}

/// The account name under which failed link redemptions from one address
/// are counted: links are long random tokens, so there is no account to
/// guess, only the address to slow down.
const REDEEM_ACCOUNT: &str = "(sign-in link)";

/// Redeems a sign-in link under the address limit, shared with the page
/// the mailed link opens.
pub(crate) async fn redeem_link(
    state: &AppState,
    client: IpAddr,
    token: &str,
) -> Result<Option<Resident>, AppError> {
    let started = Instant::now();
    state
        .sign_in_limiter
        .check(client, REDEEM_ACCOUNT, started)?;
    let token = token.trim();
    let resident = if token.is_empty() {
        None
    } else {
        accounts::redeem_sign_in_link(&state.db, token, now().as_second()).await?
    };
    if resident.is_none() {
        metrics::counter!("kontakt_sign_in_failures_total", "kind" => "resident").increment(1);
        state
            .sign_in_limiter
            .failed(client, REDEEM_ACCOUNT, started);
    }
    Ok(resident)
}

/// Ends the session the request carries (Bearer token, or cookie with its
/// CSRF header), so that its token stops working at once on every node, and
/// clears the page cookies. A request without a valid session is answered
/// the same, since there is nothing left to end.
#[utoipa::path(post, path = "/api/auth/sign-out", responses((status = 204)))]
pub async fn sign_out(
    State(state): State<AppState>,
    session: Result<Session, AppError>,
    jar: CookieJar,
) -> Result<impl IntoResponse, AppError> {
    if let Some(sid) = session.ok().and_then(|s| s.claims.session()) {
        state.sessions.end(&sid, now().as_second()).await?;
    }
    let [a, b] = cleared_cookies();
    Ok((jar.add(a).add(b), StatusCode::NO_CONTENT))
}

#[derive(Serialize, ToSchema)]
pub struct SignedOutDto {
    /// How many sessions ended, this one included.
    pub ended: usize,
}

/// Ends every session of the signed-in resident or staff member, on every
/// device, and clears this browser's cookies.
#[utoipa::path(post, path = "/api/auth/sign-out-everywhere", security(("bearer" = [])), responses(
    (status = 200, body = SignedOutDto),
    (status = 401, body = ErrorBody),
))]
#[tracing::instrument(skip_all, fields(sub = %session.claims.sub))]
pub async fn sign_out_everywhere(
    State(state): State<AppState>,
    session: Session,
    jar: CookieJar,
) -> Result<impl IntoResponse, AppError> {
    let subject = session.claims.subject().ok_or(AppError::Unauthorized)?;
    let ended = state.sessions.end_all(&subject, now().as_second()).await?;
    let [a, b] = cleared_cookies();
    Ok((jar.add(a).add(b), Json(SignedOutDto { ended })))
}
