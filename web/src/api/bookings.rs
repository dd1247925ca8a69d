//! A resident's bookings: book, list, read, cancel, reschedule, by session or
//! by the manage token from the confirmation mail.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use booking::bookings::{self, Authority, Booking};
use booking::{catalog, Db, Language, ServiceCode};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{parse_time, show_time, ApiJson};
use crate::auth::CurrentResident;
use crate::clock::now;
use crate::error::{path_id, AppError, ErrorBody};
use crate::i18n::current_locale;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/bookings", post(book).get(mine))
        .route("/api/bookings/{id}", get(one))
        .route("/api/bookings/{id}/cancel", post(cancel))
        .route("/api/bookings/{id}/reschedule", post(reschedule))
        .route("/api/manage/{token}", get(by_token))
        .route("/api/manage/{token}/cancel", post(cancel_by_token))
        .route("/api/manage/{token}/reschedule", post(reschedule_by_token))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BookRequest {
    pub service: String,
    /// RFC 3339, one of the `starts_at` values from `/api/search`.
    pub starts_at: String,
    /// Only staff who speak this language: sv, en, fi or ar.
    pub language: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RescheduleRequest {
    pub starts_at: String,
}

/// A booking as its resident sees it: the time, the service, and which
/// municipality performs it under which rule, but never a staff member.
#[derive(Serialize, ToSchema)]
pub struct BookingDto {
    pub id: String,
    pub service: String,
    pub service_name: String,
    pub starts_at: String,
    pub ends_at: String,
    /// booked, cancelled, completed or no_show.
    pub status: String,
    pub performed_by: String,
    pub performed_by_name: String,
    pub performed_for: String,
    /// home, open or agreement.
    pub rule: String,
    pub agreement_id: Option<String>,
}

/// A booking as a bare manage token's holder sees it: a meeting with the
/// social services, its time and its status. Unlike [`BookingDto`] it names
/// no service and no municipality, since whoever holds the mailed link (a
/// shared inbox, a forwarded mail) need not be the resident.
#[derive(Serialize, ToSchema)]
pub struct ManagedBookingDto {
    pub id: String,
    pub starts_at: String,
    pub ends_at: String,
    /// booked, cancelled, completed or no_show.
    pub status: String,
}

impl From<Booking> for ManagedBookingDto {
    fn from(b: Booking) -> Self {
        ManagedBookingDto {
            starts_at: show_time(b.range.start()),
            ends_at: show_time(b.range.end()),
            status: b.status.as_str().to_owned(),
            id: b.id.to_string(),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct BookedDto {
    pub booking: BookingDto,
    /// Manages the booking without signing in: `/api/manage/{manage_token}`.
    pub manage_token: String,
}

pub(crate) async fn booking_dto(db: &Db, b: Booking) -> Result<BookingDto, AppError> {
    let locale = current_locale();
    // A booking request has just loaded the catalogue.
    let performed_by_name = catalog::municipality_name(db, &b.performed_by).await?;
    Ok(BookingDto {
        service_name: rust_i18n::t!(format!("service.{}", b.service), locale = locale.code())
            .into_owned(),
        service: b.service.to_string(),
        starts_at: show_time(b.range.start()),
        ends_at: show_time(b.range.end()),
        status: b.status.as_str().to_owned(),
        performed_by: b.performed_by.to_string(),
        performed_by_name,
        performed_for: b.performed_for.to_string(),
        rule: b.rule.as_str().to_owned(),
        agreement_id: b.agreement_id,
        id: b.id.to_string(),
    })
}

/// Books a free time for the signed-in resident. The staff member is chosen
/// by load; two residents racing for the last staff member at a time get one
/// booking and one 409.
#[utoipa::path(post, path = "/api/bookings", request_body = BookRequest, security(("bearer" = [])), responses(
    (status = 201, body = BookedDto),
    (status = 401, body = ErrorBody),
    (status = 409, description = "The time is no longer free", body = ErrorBody),
    (status = 422, body = ErrorBody),
))]
#[tracing::instrument(skip(db, resident, body), fields(resident = %resident.id))]
pub async fn book(
    State(db): State<Db>,
    CurrentResident(resident): CurrentResident,
    ApiJson(body): ApiJson<BookRequest>,
) -> Result<(StatusCode, Json<BookedDto>), AppError> {
    let service = ServiceCode::parse(&body.service)?;
    let starts_at = parse_time("starts_at", &body.starts_at)?;
    let language = body.language.as_deref().map(Language::parse).transpose()?;
    let ticket = bookings::book(&db, &resident, &service, starts_at, language, now()).await?;
    metrics::counter!("kontakt_bookings_total").increment(1);
    let dto = BookedDto {
        booking: booking_dto(&db, ticket.booking).await?,
        manage_token: ticket.manage_token,
    };
    Ok((StatusCode::CREATED, Json(dto)))
}

/// The signed-in resident's bookings, newest first.
#[utoipa::path(get, path = "/api/bookings", security(("bearer" = [])), responses((status = 200, body = [BookingDto]), (status = 401, body = ErrorBody)))]
#[tracing::instrument(skip(db, resident), fields(resident = %resident.id))]
pub async fn mine(
    State(db): State<Db>,
    CurrentResident(resident): CurrentResident,
) -> Result<Json<Vec<BookingDto>>, AppError> {
    let mut out = Vec::new();
    for b in bookings::for_resident(&db, &resident, now()).await? {
        out.push(booking_dto(&db, b).await?);
    }
    Ok(Json(out))
}

/// One of the signed-in resident's bookings. Another resident's booking
/// answers 404, exactly as a missing one, and is audit-logged.
#[utoipa::path(get, path = "/api/bookings/{id}", security(("bearer" = [])), responses((status = 200, body = BookingDto), (status = 404, body = ErrorBody)))]
#[tracing::instrument(skip(db, resident), fields(resident = %resident.id))]
pub async fn one(
    State(db): State<Db>,
    CurrentResident(resident): CurrentResident,
    Path(id): Path<String>,
) -> Result<Json<BookingDto>, AppError> {
    let b = bookings::for_resident_by_id(&db, &resident, &path_id(&id)?, now()).await?;
    Ok(Json(booking_dto(&db, b).await?))
}

/// Cancels one of the signed-in resident's bookings.
#[utoipa::path(post, path = "/api/bookings/{id}/cancel", security(("bearer" = [])), responses((status = 200, body = BookingDto), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
#[tracing::instrument(skip(db, resident), fields(resident = %resident.id))]
pub async fn cancel(
    State(db): State<Db>,
    CurrentResident(resident): CurrentResident,
    Path(id): Path<String>,
) -> Result<Json<BookingDto>, AppError> {
    let id = path_id(&id)?;
    let b = bookings::cancel(&db, Authority::Resident(&resident), Some(&id), now()).await?;
    Ok(Json(booking_dto(&db, b).await?))
}

/// Moves one of the signed-in resident's bookings to another free time. A
/// cancelled booking cannot be moved (409).
#[utoipa::path(post, path = "/api/bookings/{id}/reschedule", request_body = RescheduleRequest, security(("bearer" = [])), responses((status = 200, body = BookingDto), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
#[tracing::instrument(skip(db, resident, body), fields(resident = %resident.id))]
pub async fn reschedule(
    State(db): State<Db>,
    CurrentResident(resident): CurrentResident,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<RescheduleRequest>,
) -> Result<Json<BookingDto>, AppError> {
    let starts_at = parse_time("starts_at", &body.starts_at)?;
    let id = path_id(&id)?;
    let ticket = bookings::reschedule(
        &db,
        Authority::Resident(&resident),
        Some(&id),
        starts_at,
        now(),
    )
    .await?;
    Ok(Json(booking_dto(&db, ticket.booking).await?))
}

/// The booking a manage token belongs to. A token answers 404, exactly as an
/// unknown one, once it has cancelled its booking or the meeting has ended.
#[utoipa::path(get, path = "/api/manage/{token}", responses((status = 200, body = ManagedBookingDto), (status = 404, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn by_token(
    State(db): State<Db>,
    Path(token): Path<String>,
) -> Result<Json<ManagedBookingDto>, AppError> {
    let b = bookings::read_by_token(&db, &token, now()).await?;
    Ok(Json(b.into()))
}

/// Cancels by manage token. The token is spent: afterwards it answers 404.
#[utoipa::path(post, path = "/api/manage/{token}/cancel", responses((status = 200, body = ManagedBookingDto), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn cancel_by_token(
    State(db): State<Db>,
    Path(token): Path<String>,
) -> Result<Json<ManagedBookingDto>, AppError> {
    let b = bookings::cancel(&db, Authority::Token(&token), None, now()).await?;
    Ok(Json(b.into()))
}

/// Moves a booking by manage token; the token keeps working afterwards,
/// until the new meeting ends.
#[utoipa::path(post, path = "/api/manage/{token}/reschedule", request_body = RescheduleRequest, responses((status = 200, body = ManagedBookingDto), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn reschedule_by_token(
    State(db): State<Db>,
    Path(token): Path<String>,
    ApiJson(body): ApiJson<RescheduleRequest>,
) -> Result<Json<ManagedBookingDto>, AppError> {
    let starts_at = parse_time("starts_at", &body.starts_at)?;
    let ticket =
        bookings::reschedule(&db, Authority::Token(&token), None, starts_at, now()).await?;
    Ok(Json(ticket.booking.into()))
}
