//! The JSON API under `/api`, described by OpenAPI at `/api/openapi.json`.

pub(crate) mod auth;
mod bookings;
mod public;
mod staff;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use jiff::Timestamp;
use serde::de::DeserializeOwned;
use utoipa::OpenApi;

use crate::error::{AppError, ErrorBody};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .merge(public::router())
        .merge(auth::router())
        .merge(bookings::router())
        .merge(staff::router())
        .merge(crate::ws::router())
        .route(
            "/api/openapi.json",
            get(|| async { Json(ApiDoc::openapi()) }),
        )
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Kontakt", description = "Booking, video and chat contact with the social services of participating municipalities."),
    paths(
        public::municipalities, public::services, public::policy, public::search,
        auth::staff_login, auth::resident_link, auth::resident_redeem, auth::sign_out,
        auth::sign_out_everywhere, staff::deactivate_staff,
        bookings::book, bookings::mine, bookings::one, bookings::cancel, bookings::reschedule,
        bookings::by_token, bookings::cancel_by_token, bookings::reschedule_by_token,
        staff::me, staff::day, staff::booking, staff::book_for_resident,
        staff::templates, staff::add_template, staff::delete_template, staff::load, staff::audit,
        crate::ws::issue_ticket, crate::ws::open_meeting,
    ),
    components(schemas(ErrorBody)),
    modifiers(&BearerAuth),
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// `Json` whose rejections are ours: a syntax error is 400, a body that does
/// not fit the schema (unknown field, wrong type) is 422, and a body over the
/// limit is 413, each with a clear message.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> AppError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return AppError::TooLarge;
    }
    match rejection {
        JsonRejection::JsonDataError(e) => AppError::Invalid(e.body_text()),
        JsonRejection::MissingJsonContentType(_) => {
            AppError::BadJson("send Content-Type: application/json".into())
        }
        other => AppError::BadJson(other.body_text()),
    }
}

/// `Query` whose rejection is a 400 with the reason.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|e: QueryRejection| AppError::Invalid(e.body_text()))
    }
}

/// Parses an RFC 3339 time such as `2026-12-03T10:00:00+01:00`.
pub fn parse_time(field: &'static str, raw: &str) -> Result<Timestamp, AppError> {
    raw.parse::<Timestamp>()
        .map_err(|e| AppError::Invalid(format!("{field}: expected an RFC 3339 time: {e}")))
}

/// A time as RFC 3339 in Europe/Stockholm, the way the API shows times.
pub fn show_time(at: Timestamp) -> String {
    let tz = booking::bookings::zone(booking::bookings::DISPLAY_ZONE).expect("bundled zone");
    at.to_zoned(tz).strftime("%Y-%m-%dT%H:%M:%S%:z").to_string()
}

/// The current time. Handlers read the clock once, here, and pass it down.
pub fn now() -> Timestamp {
    Timestamp::now()
}
