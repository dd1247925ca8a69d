//! Signing in: staff with a password, residents with a one-time email link.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::post;
use axum::{Json, Router};
use axum_extra::extract::CookieJar;
use booking::{accounts, EmailAddress, Language, MunicipalityCode, Password, PersonName};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{now, ApiJson};
use crate::auth::{cleared_cookies, session_cookies, SubjectKind};
use crate::error::{AppError, ErrorBody};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/auth/staff/login", post(staff_login))
        .route("/api/auth/resident/link", post(resident_link))
        .route("/api/auth/resident/redeem", post(resident_redeem))
        .route("/api/auth/sign-out", post(sign_out))
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

/// Signs a staff member in. Also sets the page session cookies.
#[utoipa::path(post, path = "/api/auth/staff/login", request_body = StaffLogin, responses(
    (status = 200, body = SessionDto),
    (status = 401, body = ErrorBody),
    (status = 429, body = ErrorBody),
))]
#[tracing::instrument(skip(state, jar, body), fields(client = %client))]
pub async fn staff_login(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    jar: CookieJar,
    ApiJson(body): ApiJson<StaffLogin>,
) -> Result<impl IntoResponse, AppError> {
    state.sign_in_limiter.check(client.ip(), Instant::now())?;
    let email = EmailAddress::parse(&body.email).map_err(|_| AppError::Unauthorized)?;
    let password = Password::parse(&body.password).map_err(|_| AppError::Unauthorized)?;
    let Some(staff) = accounts::verify_staff_password(&state.db, &email, &password).await? else {
        metrics::counter!("kontakt_sign_in_failures_total", "kind" => "staff").increment(1);
        return Err(AppError::Unauthorized);
    };
    let (token, claims) = state.keys.issue(
        &staff.id,
        SubjectKind::Staff,
        state.settings.staff_session_minutes,
        now().as_second(),
    );
    let [a, b] = session_cookies(token.clone(), &claims, state.settings.secure_cookies);
    let body = SessionDto {
        token,
        expires_at: claims.exp,
        csrf: claims.csrf,
    };
    Ok((jar.add(a).add(b), Json(body)))
}

/// Sends a one-time sign-in link by email. Answers 202 whether or not the
/// address is known, so the answer reveals nobody's contact with the social
/// services. A first sign-in registers the resident when name and home
/// municipality are given.
#[utoipa::path(post, path = "/api/auth/resident/link", request_body = ResidentLinkRequest, responses(
    (status = 202, description = "A link is on its way if the address is known"),
    (status = 422, body = ErrorBody),
    (status = 429, body = ErrorBody),
))]
#[tracing::instrument(skip(state, body), fields(client = %client))]
pub async fn resident_link(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    ApiJson(body): ApiJson<ResidentLinkRequest>,
) -> Result<StatusCode, AppError> {
    send_sign_in_link(&state, client.ip(), &body).await?;
    Ok(StatusCode::ACCEPTED)
}

/// What `POST /api/auth/resident/link` does, shared with the sign-in page:
/// counts the attempt, registers a first-time resident when name and home
/// municipality are given, and puts a link in the outbox for a known one.
pub(crate) async fn send_sign_in_link(
    state: &AppState,
    client: IpAddr,
    body: &ResidentLinkRequest,
) -> Result<(), AppError> {
    state.sign_in_limiter.check(client, Instant::now())?;
    let email = EmailAddress::parse(&body.email)?;
    let now = now().as_second();
    let resident = match accounts::resident_by_email(&state.db, &email).await? {
        Some(r) => Some(r),
        None => match (&body.name, &body.home_municipality) {
            (Some(name), Some(home)) if !name.trim().is_empty() => {
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
                let language = body
                    .language
                    .as_deref()
                    .map(Language::parse)
                    .transpose()?
                    .unwrap_or_default();
                Some(
                    accounts::create_resident(&state.db, &email, &name, &home, language, now)
                        .await?,
                )
            }
            _ => None,
        },
    };
    if let Some(resident) = resident {
        accounts::issue_sign_in_link(&state.db, &resident, now).await?;
        tracing::info!(resident = %resident.id, "sign-in link written to the outbox");
    }
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
    state.sign_in_limiter.check(client.ip(), Instant::now())?;
    let now = now().as_second();
    let Some(resident) = accounts::redeem_sign_in_link(&state.db, body.token.trim(), now).await?
    else {
        metrics::counter!("kontakt_sign_in_failures_total", "kind" => "resident").increment(1);
        return Err(AppError::Unauthorized);
    };
    let (token, claims) = state.keys.issue(
        &resident.id,
        SubjectKind::Resident,
        state.settings.resident_session_minutes,
        now,
    );
    let [a, b] = session_cookies(token.clone(), &claims, state.settings.secure_cookies);
    let body = SessionDto {
        token,
        expires_at: claims.exp,
        csrf: claims.csrf,
    };
    Ok((jar.add(a).add(b), Json(body)))
}

/// Ends the page session.
#[utoipa::path(post, path = "/api/auth/sign-out", responses((status = 204)))]
pub async fn sign_out(jar: CookieJar) -> impl IntoResponse {
    let [a, b] = cleared_cookies();
    (jar.add(a).add(b), StatusCode::NO_CONTENT)
}
