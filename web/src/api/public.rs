//! What anyone may read: municipalities, services, the legal map, free times.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use booking::bookings::SearchQuery;
use booking::{catalog, DateRange, Db, Language, LocalDate, MunicipalityCode, ServiceCode};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{show_time, ApiQuery};
use crate::clock::now;
use crate::error::{AppError, ErrorBody};
use crate::i18n::current_locale;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/municipalities", get(municipalities))
        .route("/api/services", get(services))
        .route("/api/policy", get(policy))
        .route("/api/search", get(search))
}

#[derive(Serialize, ToSchema)]
pub struct MunicipalityDto {
    /// The four-digit kommunkod.
    pub code: String,
    pub name: String,
}

#[derive(Serialize, ToSchema)]
pub struct ServiceDto {
    pub code: String,
    /// The name in the caller's language.
    pub name: String,
    /// Whether its pre-assessment may be done by chat. A resident is
    /// offered "Chat with us now" for it where the policy lets some
    /// municipality pre-assess for their home (`/api/chats/services`).
    pub chat: bool,
    pub anonymous_chat: bool,
    pub slot_minutes: i64,
}

#[derive(Serialize, ToSchema)]
pub struct PolicyRuleDto {
    pub service: String,
    pub service_name: String,
    /// information, pre_assessment, meeting, investigation, decision or follow_up.
    pub step: String,
    /// open, agreement or home_only.
    pub rule: String,
    pub legal_basis: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct SearchParams {
    /// A service code from `/api/services`.
    pub service: String,
    /// The resident's home municipality (kommunkod).
    pub home: String,
    /// First local date, `YYYY-MM-DD`, from 2000-01-01 to 2199-12-31.
    pub from: String,
    /// Last local date, `YYYY-MM-DD`, at most 62 days after `from`.
    pub to: String,
    /// Only staff who speak this language: sv, en, fi or ar.
    pub language: Option<String>,
    /// The page language, read by the locale middleware; accepted here so
    /// that links can carry it.
    #[allow(dead_code)]
    pub lang: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct FreeTimeDto {
    /// RFC 3339 in Europe/Stockholm.
    pub starts_at: String,
    pub ends_at: String,
    /// How many staff members are free then.
    pub free_staff: usize,
}

/// The participating municipalities.
#[utoipa::path(get, path = "/api/municipalities", responses((status = 200, body = [MunicipalityDto])))]
#[tracing::instrument(skip(db))]
pub async fn municipalities(State(db): State<Db>) -> Result<Json<Vec<MunicipalityDto>>, AppError> {
    let list = catalog::municipalities(&db).await?;
    Ok(Json(
        list.into_iter()
            .map(|m| MunicipalityDto {
                code: m.code.to_string(),
                name: m.name,
            })
            .collect(),
    ))
}

/// The services with times to book, named in the caller's language. The
/// "I don't know" chat, `general`, is not among them: it books nothing
/// (see `/api/chats/services`).
#[utoipa::path(get, path = "/api/services", responses((status = 200, body = [ServiceDto])))]
#[tracing::instrument(skip(db))]
pub async fn services(State(db): State<Db>) -> Result<Json<Vec<ServiceDto>>, AppError> {
    let locale = current_locale();
    let list = catalog::services(&db).await?;
    Ok(Json(
        list.into_iter()
            .map(|s| ServiceDto {
                name: rust_i18n::t!(&s.name_key, locale = locale.code()).into_owned(),
                code: s.code.to_string(),
                chat: s.chat,
                anonymous_chat: s.anonymous_chat,
                slot_minutes: s.slot_minutes,
            })
            .collect(),
    ))
}

/// The legal map: for each service and step, what may cross a municipal
/// border and why.
#[utoipa::path(get, path = "/api/policy", responses((status = 200, body = [PolicyRuleDto])))]
#[tracing::instrument(skip(db))]
pub async fn policy(State(db): State<Db>) -> Result<Json<Vec<PolicyRuleDto>>, AppError> {
    let locale = current_locale();
    let rules = catalog::policy(&db).await?;
    Ok(Json(
        rules
            .into_iter()
            .map(|r| PolicyRuleDto {
                service_name: rust_i18n::t!(
                    format!("service.{}", r.service),
                    locale = locale.code()
                )
                .into_owned(),
                service: r.service.to_string(),
                step: r.step.as_str().to_owned(),
                rule: r.rule.as_str().to_owned(),
                legal_basis: r.legal_basis,
            })
            .collect(),
    ))
}

/// Free times for a resident of `home`, from every staff member the policy
/// lets serve them. Times only: never who.
#[utoipa::path(get, path = "/api/search", params(SearchParams), responses(
    (status = 200, body = [FreeTimeDto]),
    (status = 404, description = "Unknown service or municipality", body = ErrorBody),
    (status = 422, body = ErrorBody),
))]
#[tracing::instrument(skip(db))]
pub async fn search(
    State(db): State<Db>,
    ApiQuery(params): ApiQuery<SearchParams>,
) -> Result<Json<Vec<FreeTimeDto>>, AppError> {
    let query = SearchQuery {
        service: ServiceCode::parse(&params.service)?,
        home: MunicipalityCode::parse(&params.home)?,
        dates: DateRange::new(
            LocalDate::parse("from", &params.from)?,
            LocalDate::parse("to", &params.to)?,
        )?,
        language: params
            .language
            .as_deref()
            .map(Language::parse)
            .transpose()?,
    };
    let found = booking::bookings::search(&db, &query, now()).await?;
    Ok(Json(
        found
            .into_iter()
            .map(|f| FreeTimeDto {
                starts_at: show_time(f.range.start()),
                ends_at: show_time(f.range.end()),
                free_staff: f.free_staff,
            })
            .collect(),
    ))
}
