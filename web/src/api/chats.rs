//! Chat pre-assessment over HTTP: which services offer chat, and tokens for
//! anonymous chats. The chat itself runs over `/ws`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use booking::{catalog, chats, Db, MunicipalityCode, ServiceCode};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{now, show_time, ApiJson, ApiQuery};
use crate::error::{AppError, ErrorBody};
use crate::i18n::current_locale;
use crate::state::AppState;
use crate::ws::AnonymousChat;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/chats/services", get(chat_services))
        .route("/api/chats/anonymous", post(anonymous_chat))
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
