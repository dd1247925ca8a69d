//! The JSON API under `/api`, described by OpenAPI at `/api/openapi.json`.

pub(crate) mod auth;
mod bookings;
pub(crate) mod chats;
pub(crate) mod guests;
pub mod precheck;
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
        .merge(chats::router())
        .merge(guests::router())
        .merge(precheck::router())
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
        chats::chat_services, chats::anonymous_chat, chats::offline_message,
        chats::offline_messages, chats::offline_message_handled, chats::colleagues,
        chats::free_times, chats::my_chats, chats::my_chat,
        auth::staff_login, auth::resident_link, auth::resident_redeem, auth::sign_out,
        auth::sign_out_everywhere, staff::deactivate_staff,
        bookings::book, bookings::mine, bookings::one, bookings::cancel, bookings::reschedule,
        bookings::by_token, bookings::cancel_by_token, bookings::reschedule_by_token,
        staff::me, staff::day, staff::booking, staff::book_for_resident,
        staff::templates, staff::add_template, staff::delete_template, staff::load, staff::audit,
        crate::ws::issue_ticket, crate::ws::open_meeting, guests::guest_link, precheck::precheck_turn,
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
        checked_json(req, state, &[]).await.map(ApiJson)
    }
}

/// A request body with a top-level text field longer than
/// [`MAX_FIELD_BYTES`], such as a message a resident writes.
pub trait LongFields {
    /// Top-level fields and the most bytes each may hold.
    const LONG_FIELDS: &'static [(&'static str, usize)];
}

/// [`ApiJson`] for a body whose [`LongFields`] may be longer than
/// [`MAX_FIELD_BYTES`]; every other field keeps that limit.
pub struct ApiJsonLong<T>(pub T);

impl<T: DeserializeOwned + LongFields, S: Send + Sync> FromRequest<S> for ApiJsonLong<T> {
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        checked_json(req, state, T::LONG_FIELDS)
            .await
            .map(ApiJsonLong)
    }
}

async fn checked_json<T: DeserializeOwned, S: Send + Sync>(
    req: Request,
    state: &S,
    long: &[(&str, usize)],
) -> Result<T, AppError> {
    let Json(value) = Json::<serde_json::Value>::from_request(req, state)
        .await
        .map_err(json_rejection)?;
    if let Some((field, max)) = oversized_json_field(&value, "", long) {
        return Err(AppError::Invalid(format!("{field}: at most {max} bytes")));
    }
    serde_json::from_value(value).map_err(|e| AppError::Invalid(e.to_string()))
}

/// The longest text one field of a request may hold, in bytes. Every field
/// Kontakt takes is shorter (an email at most 254 bytes, a password 1024),
/// so a longer one is refused where it comes in, whatever the field, and no
/// handler stores it, looks it up or writes it to a log. Domain values keep
/// their own, tighter limits.
pub const MAX_FIELD_BYTES: usize = 1024;

/// The name of the first query or form field over [`MAX_FIELD_BYTES`].
pub fn oversized_pair(pairs: &[(String, String)]) -> Option<String> {
    pairs
        .iter()
        .find(|(name, value)| name.len() > MAX_FIELD_BYTES || value.len() > MAX_FIELD_BYTES)
        .map(|(name, _)| name.chars().take(64).collect())
}

/// The refusal of a field over [`MAX_FIELD_BYTES`].
pub fn too_long(field: &str) -> AppError {
    AppError::Invalid(format!("{field}: at most {MAX_FIELD_BYTES} bytes"))
}

/// The path of the first string (or key) in `value` over
/// [`MAX_FIELD_BYTES`], such as `name` or `items[2].text`, with the limit
/// it broke. A top-level field named in `long` has that limit instead.
fn oversized_json_field(
    value: &serde_json::Value,
    at: &str,
    long: &[(&str, usize)],
) -> Option<(String, usize)> {
    use serde_json::Value;
    match value {
        Value::String(s) if s.len() > MAX_FIELD_BYTES => Some((
            if at.is_empty() {
                "body".to_owned()
            } else {
                at.to_owned()
            },
            MAX_FIELD_BYTES,
        )),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| oversized_json_field(v, &format!("{at}[{i}]"), &[])),
        Value::Object(map) => map.iter().find_map(|(k, v)| {
            let key: String = k.chars().take(64).collect();
            let path = if at.is_empty() {
                key
            } else {
                format!("{at}.{key}")
            };
            let own = at
                .is_empty()
                .then(|| long.iter().find(|(name, _)| name == k))
                .flatten();
            match (own, v) {
                _ if k.len() > MAX_FIELD_BYTES => Some((path, MAX_FIELD_BYTES)),
                (Some((_, max)), Value::String(s)) => (s.len() > *max).then_some((path, *max)),
                _ => oversized_json_field(v, &path, &[]),
            }
        }),
        _ => None,
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
        let pairs = axum::extract::Query::<Vec<(String, String)>>::from_request_parts(parts, state)
            .await
            .map_err(|e: QueryRejection| AppError::Invalid(e.body_text()))?;
        if let Some(field) = oversized_pair(&pairs) {
            return Err(too_long(&field));
        }
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|e: QueryRejection| AppError::Invalid(e.body_text()))
    }
}

/// Parses an RFC 3339 time such as `2026-12-03T10:00:00+01:00`, on a date
/// within [`booking::LocalDate`]'s bounds.
pub fn parse_time(field: &'static str, raw: &str) -> Result<Timestamp, AppError> {
    let at = raw
        .parse::<Timestamp>()
        .map_err(|e| AppError::Invalid(format!("{field}: expected an RFC 3339 time: {e}")))?;
    booking::LocalDate::holds(field, at)?;
    Ok(at)
}

/// A time as RFC 3339 in Europe/Stockholm, the way the API shows times.
pub fn show_time(at: Timestamp) -> String {
    let tz = booking::bookings::zone(booking::bookings::DISPLAY_ZONE).expect("bundled zone");
    at.to_zoned(tz).strftime("%Y-%m-%dT%H:%M:%S%:z").to_string()
}

/// `None` for a missing or blank value, as an empty form field, query
/// parameter or JSON string is.
pub fn non_empty(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}
