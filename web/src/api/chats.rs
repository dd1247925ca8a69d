//! Chat pre-assessment over HTTP: which services offer chat, tokens for
//! anonymous chats, the offline form and its messages in the console. The
//! chat itself runs over `/ws`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use booking::chats::{self, NewOfflineMessage, OfflineMessage};
use booking::{
    catalog, DateRange, Db, EmailAddress, LocalDate, MessageText, MunicipalityCode, PersonName,
    PhoneNumber, ServiceCode,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{non_empty, show_time, ApiJson, ApiJsonLong, ApiQuery, LongFields};
use crate::auth::{CurrentResident, CurrentStaff};
use crate::clock::now;
use crate::error::{path_id, AppError, ErrorBody};
use crate::i18n::current_locale;
use crate::state::AppState;
use crate::ws::AnonymousChat;
use signaling::ids::RoomId;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/chats/services", get(chat_services))
        .route("/api/chats/anonymous", post(anonymous_chat))
        .route("/api/chats/offline", post(offline_message))
        .route("/api/chats/mine", get(my_chats))
        .route("/api/chats/mine/{room}", get(my_chat))
        .route("/api/staff/offline-messages", get(offline_messages))
        .route(
            "/api/staff/offline-messages/{id}/handled",
            post(offline_message_handled),
        )
        .route("/api/staff/chats/{room}/colleagues", get(colleagues))
        .route("/api/staff/chats/{room}/free-times", get(free_times))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ChatServicesParams {
    /// The resident's home municipality (kommunkod).
    pub home: String,
    /// The page language, read by the locale middleware.
    #[allow(dead_code)]
    pub lang: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ChatServiceDto {
    /// A service code; `general` is "I don't know".
    pub code: String,
    /// The name in the caller's language.
    pub name: String,
    /// Whether the chat may be anonymous (`POST /api/chats/anonymous`).
    pub anonymous_chat: bool,
}

/// The services that offer "Chat with us now" to a resident of `home`:
/// chat is allowed for their pre-assessment and the policy lets some
/// municipality do it for `home`. `general` ("I don't know") comes last.
#[utoipa::path(get, path = "/api/chats/services", params(ChatServicesParams), responses(
    (status = 200, body = [ChatServiceDto]),
    (status = 404, description = "Unknown municipality", body = ErrorBody),
    (status = 422, body = ErrorBody),
))]
#[tracing::instrument(skip(db))]
pub async fn chat_services(
    State(db): State<Db>,
    ApiQuery(params): ApiQuery<ChatServicesParams>,
) -> Result<Json<Vec<ChatServiceDto>>, AppError> {
    let home = MunicipalityCode::parse(&params.home)?;
    if booking::catalog::municipality(&db, &home).await?.is_none() {
        return Err(AppError::NotFound);
    }
    let locale = current_locale();
    let offered = chats::offered(&db, &home, now()).await?;
    Ok(Json(
        offered
            .into_iter()
            .map(|s| ChatServiceDto {
                name: rust_i18n::t!(&s.name_key, locale = locale.code()).into_owned(),
                code: s.code.to_string(),
                anonymous_chat: s.anonymous_chat,
            })
            .collect(),
    ))
}

#[derive(Serialize, ToSchema)]
pub struct MyChatDto {
    /// The conversation's room, as in `GET /api/chats/mine/{room}`.
    pub room: String,
    /// The service's code.
    pub service: String,
    /// `waiting`, `assigned` or `closed`.
    pub state: String,
    /// RFC 3339, when the resident opened it.
    pub started_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct MyChatTranscriptDto {
    pub chat: MyChatDto,
    /// What the resident may read of the conversation, oldest first.
    pub events: Vec<TranscriptEventDto>,
}

#[derive(Serialize, ToSchema)]
pub struct TranscriptEventDto {
    pub seq: u64,
    /// RFC 3339, when it happened.
    pub at: String,
    /// The event as the socket delivers it (`docs/protocol.md`, `event`).
    #[schema(value_type = Object)]
    pub event: signaling::protocol::RoomEvent,
}

fn my_chat_dto(entry: &booking::events::QueueEntryRow) -> Result<MyChatDto, AppError> {
    Ok(MyChatDto {
        room: entry.room.clone(),
        service: entry.service.clone(),
        state: entry.state.clone(),
        started_at: show_time(unix_time(entry.enqueued_at)?),
    })
}

fn unix_time(at: i64) -> Result<jiff::Timestamp, AppError> {
    jiff::Timestamp::from_second(at).map_err(|e| AppError::Internal(e.into()))
}

/// The chat conversations the signed-in resident opened while signed in,
/// newest first. Anonymous ones are not among them. The read is
/// audit-logged.
#[utoipa::path(get, path = "/api/chats/mine", security(("bearer" = [])), responses(
    (status = 200, body = [MyChatDto]),
    (status = 401, body = ErrorBody),
))]
#[tracing::instrument(skip(db, resident), fields(resident = %resident.id))]
pub async fn my_chats(
    State(db): State<Db>,
    CurrentResident(resident): CurrentResident,
) -> Result<Json<Vec<MyChatDto>>, AppError> {
    let conversations = chats::conversations_of(&db, &resident, now()).await?;
    Ok(Json(
        conversations
            .iter()
            .map(my_chat_dto)
            .collect::<Result<_, _>>()?,
    ))
}

/// One of the signed-in resident's conversations with what they may read
/// of it, by the hub's own audience rule. Another resident's conversation,
/// an anonymous one and a missing one all answer 404 alike; every read,
/// and every refusal of another's conversation, is audit-logged.
#[utoipa::path(get, path = "/api/chats/mine/{room}", security(("bearer" = [])), responses(
    (status = 200, body = MyChatTranscriptDto),
    (status = 401, body = ErrorBody),
    (status = 404, body = ErrorBody),
))]
#[tracing::instrument(skip(db, resident), fields(resident = %resident.id))]
pub async fn my_chat(
    State(db): State<Db>,
    CurrentResident(resident): CurrentResident,
    Path(room): Path<String>,
) -> Result<Json<MyChatTranscriptDto>, AppError> {
    let conversation = chats::conversation_of(&db, &resident, &path_id(&room)?, now()).await?;
    Ok(Json(MyChatTranscriptDto {
        chat: my_chat_dto(&conversation.entry)?,
        events: conversation
            .events
            .into_iter()
            .map(|e| {
                Ok(TranscriptEventDto {
                    seq: e.seq,
                    at: show_time(unix_time(e.at)?),
                    event: e.event,
                })
            })
            .collect::<Result<_, AppError>>()?,
    }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AnonymousChatRequest {
    /// A service that allows anonymous chat.
    pub service: String,
    /// The resident's home municipality, as they chose it on the page.
    pub municipality: String,
}

#[derive(Serialize, ToSchema)]
pub struct AnonymousChatDto {
    /// A token for this one chat: send it as `Authorization: Bearer` to
    /// `POST /api/ws/ticket`, and `queue.open` the service on the socket.
    /// It is no sign-in: nothing else accepts it.
    pub token: String,
    /// RFC 3339; until then the token gets tickets to reconnect.
    pub expires_at: String,
}

/// A token for one anonymous chat, where the service allows it. Nothing
/// about the chat is kept for the holder afterwards: the transcript is
/// theirs to save before they close it.
#[utoipa::path(post, path = "/api/chats/anonymous", request_body = AnonymousChatRequest, responses(
    (status = 201, body = AnonymousChatDto),
    (status = 404, description = "No such service or municipality, or the service allows no anonymous chat", body = ErrorBody),
    (status = 422, body = ErrorBody),
))]
#[tracing::instrument(skip_all)]
pub async fn anonymous_chat(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<AnonymousChatRequest>,
) -> Result<(StatusCode, Json<AnonymousChatDto>), AppError> {
    let service = ServiceCode::parse(&body.service)?;
    let home = MunicipalityCode::parse(&body.municipality)?;
    let allowed = catalog::service(&state.db, &service)
        .await?
        .is_some_and(|s| s.chat && s.anonymous_chat);
    if !allowed || catalog::municipality(&state.db, &home).await?.is_none() {
        return Err(AppError::NotFound);
    }
    let chat = AnonymousChat {
        room: format!("chat:{}", uuid::Uuid::new_v4().simple()),
        service: service.to_string(),
        home: home.to_string(),
    };
    let now = now();
    let (token, expires) = state.tickets.issue_chat_token(&chat, now.as_second());
    let expires_at =
        jiff::Timestamp::from_second(expires).map_err(|e| AppError::Internal(e.into()))?;
    Ok((
        StatusCode::CREATED,
        Json(AnonymousChatDto {
            token,
            expires_at: show_time(expires_at),
        }),
    ))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OfflineRequest {
    /// The service the resident wanted to chat about; `general` too.
    pub service: String,
    /// The home municipality: required without a sign-in; a signed-in
    /// resident's own is used whatever this says.
    pub municipality: Option<String>,
    /// 1 to 2000 characters.
    pub message: String,
    pub name: Option<String>,
    /// At least one of `contact_email` and `contact_phone`.
    pub contact_email: Option<String>,
    pub contact_phone: Option<String>,
}

impl LongFields for OfflineRequest {
    // 2000 characters of up to four bytes each.
    const LONG_FIELDS: &'static [(&'static str, usize)] =
        &[("message", 4 * MessageText::MAX_CHARS)];
}

#[derive(Serialize, ToSchema)]
pub struct OfflineReceivedDto {
    pub id: String,
}

#[derive(Serialize, ToSchema)]
pub struct OfflineMessageDto {
    pub id: String,
    pub service: String,
    /// The sender's home municipality.
    pub municipality: String,
    pub message: String,
    pub name: Option<String>,
    pub contact_email: Option<String>,
    pub contact_phone: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339, once a staff member marked it handled.
    pub handled_at: Option<String>,
}

/// Leaves a message for the social services while nobody who could take
/// the chat is online. It goes to the staff the policy lets pre-assess the
/// service for the sender's home, as a chat would, and a confirmation
/// that names neither the service nor the message goes to `contact_email`
/// (or a signed-in resident's own address).
#[utoipa::path(post, path = "/api/chats/offline", request_body = OfflineRequest, responses(
    (status = 202, body = OfflineReceivedDto),
    (status = 403, description = "A cookie session without its CSRF header", body = ErrorBody),
    (status = 404, description = "No such service offering chat, or no such municipality", body = ErrorBody),
    (status = 422, description = "No way to be contacted, no municipality, or a message that is empty or over 2000 characters", body = ErrorBody),
))]
#[tracing::instrument(skip_all)]
pub async fn offline_message(
    State(db): State<Db>,
    resident: Result<CurrentResident, AppError>,
    ApiJsonLong(body): ApiJsonLong<OfflineRequest>,
) -> Result<(StatusCode, Json<OfflineReceivedDto>), AppError> {
    let resident = match resident {
        Ok(CurrentResident(resident)) => Some(resident),
        // Not signed in (or signed in as staff): an anonymous sender.
        Err(AppError::Unauthorized) => None,
        Err(refusal) => return Err(refusal),
    };
    let home = match (&resident, non_empty(&body.municipality)) {
        (Some(resident), _) => resident.home.clone(),
        (None, Some(code)) => MunicipalityCode::parse(code)?,
        (None, None) => {
            return Err(AppError::Invalid(
                "municipality: required without a sign-in".into(),
            ))
        }
    };
    let new = NewOfflineMessage {
        service: ServiceCode::parse(&body.service)?,
        home,
        message: MessageText::parse(&body.message)?,
        name: non_empty(&body.name).map(PersonName::parse).transpose()?,
        contact_email: non_empty(&body.contact_email)
            .map(EmailAddress::parse)
            .transpose()?,
        contact_phone: non_empty(&body.contact_phone)
            .map(PhoneNumber::parse)
            .transpose()?,
        language: current_locale(),
        resident,
    };
    let id = chats::leave_offline_message(&db, &new, now()).await?;
    Ok((StatusCode::ACCEPTED, Json(OfflineReceivedDto { id })))
}

fn offline_dto(m: OfflineMessage) -> Result<OfflineMessageDto, AppError> {
    let time = |at: i64| {
        jiff::Timestamp::from_second(at)
            .map(show_time)
            .map_err(|e| AppError::Internal(e.into()))
    };
    Ok(OfflineMessageDto {
        created_at: time(m.created_at)?,
        handled_at: m.handled_at.map(time).transpose()?,
        id: m.id,
        service: m.service.to_string(),
        municipality: m.home.to_string(),
        message: m.message,
        name: m.name,
        contact_email: m.contact_email,
        contact_phone: m.contact_phone,
    })
}

/// The offline messages this staff member may handle, newest first: those
/// for their municipality under the policy, for services whose chats they
/// take. Each one shown is an audited read.
#[utoipa::path(get, path = "/api/staff/offline-messages", security(("bearer" = [])), responses(
    (status = 200, body = [OfflineMessageDto]),
    (status = 401, body = ErrorBody),
))]
#[tracing::instrument(skip_all, fields(staff = %staff.0.id))]
pub async fn offline_messages(
    State(db): State<Db>,
    staff: CurrentStaff,
) -> Result<Json<Vec<OfflineMessageDto>>, AppError> {
    let list = chats::offline_messages_for(&db, &staff.0, now()).await?;
    Ok(Json(
        list.into_iter()
            .map(offline_dto)
            .collect::<Result<_, _>>()?,
    ))
}

/// Marks an offline message handled. One this staff member may not handle
/// answers 404, as a missing one; both are audit-logged.
#[utoipa::path(post, path = "/api/staff/offline-messages/{id}/handled", security(("bearer" = [])), responses(
    (status = 204),
    (status = 401, body = ErrorBody),
    (status = 404, body = ErrorBody),
))]
#[tracing::instrument(skip_all, fields(staff = %staff.0.id))]
pub async fn offline_message_handled(
    State(db): State<Db>,
    staff: CurrentStaff,
    Path(id): Path<String>,
) -> Result<StatusCode, AppError> {
    if id.len() > 64 {
        return Err(AppError::NotFound);
    }
    chats::mark_offline_message_handled(&db, &staff.0, &id, now()).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize, ToSchema)]
pub struct ColleagueDto {
    /// The staff id `queue.transfer` takes as `to`.
    pub id: String,
    pub name: String,
    /// Their municipality (kommunkod).
    pub municipality: String,
}

/// The colleagues this staff member may hand one of their chats to now:
/// online, taking chats, eligible for it and under their limit. 404 for a
/// chat that is not this staff member's.
#[utoipa::path(get, path = "/api/staff/chats/{room}/colleagues", security(("bearer" = [])), responses(
    (status = 200, body = [ColleagueDto]),
    (status = 401, body = ErrorBody),
    (status = 404, description = "No such chat, or not this staff member's", body = ErrorBody),
))]
#[tracing::instrument(skip(state, staff), fields(staff = %staff.0.id))]
pub async fn colleagues(
    State(state): State<AppState>,
    staff: CurrentStaff,
    Path(room): Path<String>,
) -> Result<Json<Vec<ColleagueDto>>, AppError> {
    let room: RoomId = path_id(&room)?;
    let candidates = state
        .hub
        .transfer_candidates(&room, &staff.0.id)
        .await
        .map_err(|e| AppError::Internal(anyhow::anyhow!("asking the hub: {e}")))?
        .ok_or(AppError::NotFound)?;
    let mut out = Vec::with_capacity(candidates.len());
    for id in candidates {
        // Someone deleted since they connected is no candidate.
        if let Some(colleague) = booking::accounts::staff_by_id(&state.db, &id).await? {
            out.push(ColleagueDto {
                id: colleague.id.to_string(),
                name: colleague.name,
                municipality: colleague.municipality.to_string(),
            });
        }
    }
    Ok(Json(out))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct FreeTimesParams {
    /// First local date, `YYYY-MM-DD`; today when absent.
    pub from: Option<String>,
    /// How many days from `from`, 1 to 14; 7 when absent.
    pub days: Option<i64>,
    /// Another service the staff member handles, to offer its times
    /// instead of the chat's own (an "I don't know" chat has none).
    pub service: Option<String>,
    /// The page language, read by the locale middleware.
    #[allow(dead_code)]
    pub lang: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct OfferableTimeDto {
    /// RFC 3339 in Europe/Stockholm; book it with `POST /api/bookings`.
    pub starts_at: String,
    pub ends_at: String,
    /// The municipality likeliest to perform it: the resident's home when
    /// its staff are free then, else the first other that may. Booking picks
    /// the staff member by load among all that may.
    pub municipality: String,
    pub municipality_name: String,
}

/// The free times staff may offer in one of their chats: times of the
/// chat's service for its resident's home municipality under the policy.
/// Audit-logged; 404 for a chat that is not the caller's.
#[utoipa::path(get, path = "/api/staff/chats/{room}/free-times", params(FreeTimesParams), security(("bearer" = [])), responses(
    (status = 200, body = [OfferableTimeDto]),
    (status = 401, body = ErrorBody),
    (status = 404, description = "No such chat, not this staff member's, or a service they do not handle", body = ErrorBody),
    (status = 422, body = ErrorBody),
))]
#[tracing::instrument(skip(db, staff), fields(staff = %staff.0.id))]
pub async fn free_times(
    State(db): State<Db>,
    staff: CurrentStaff,
    Path(room): Path<String>,
    ApiQuery(params): ApiQuery<FreeTimesParams>,
) -> Result<Json<Vec<OfferableTimeDto>>, AppError> {
    let now = now();
    let days = params.days.unwrap_or(7);
    if !(1..=chats::MAX_OFFER_DAYS).contains(&days) {
        return Err(AppError::Invalid(format!(
            "days: 1 to {}",
            chats::MAX_OFFER_DAYS
        )));
    }
    let from = match &params.from {
        Some(raw) => LocalDate::parse("from", raw)?,
        None => {
            let tz = booking::bookings::zone(booking::bookings::DISPLAY_ZONE)?;
            LocalDate::new("from", now.to_zoned(tz).date())?
        }
    };
    let dates = DateRange::starting(from.date(), days - 1)?;
    let service = params
        .service
        .as_deref()
        .map(ServiceCode::parse)
        .transpose()?;
    let found =
        chats::free_times_for_chat(&db, &staff.0, &room, service.as_ref(), dates, now).await?;
    let names = catalog::municipalities(&db).await?;
    let out = found
        .into_iter()
        .map(|time| OfferableTimeDto {
            starts_at: show_time(time.range.start()),
            ends_at: show_time(time.range.end()),
            municipality_name: names
                .iter()
                .find(|m| m.code == time.municipality)
                .map(|m| m.name.clone())
                .unwrap_or_default(),
            municipality: time.municipality.to_string(),
        })
        .collect();
    Ok(Json(out))
}
