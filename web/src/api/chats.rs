//! Chat pre-assessment over HTTP: which services offer chat. The chat itself
//! runs over `/ws`.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use booking::{chats, Db, MunicipalityCode};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{now, ApiQuery};
use crate::error::{AppError, ErrorBody};
use crate::i18n::current_locale;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/api/chats/services", get(chat_services))
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
