//! One error type for every handler. Each library error maps to a status code
//! and a stable `error` code; the `message` is translated into the caller's
//! language. A 500 never shows its cause: it is logged once, here.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::i18n::{current_locale, Locale};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    BadJson(String),
    #[error("the request body is too large")]
    TooLarge,
    #[error("sign in first")]
    Unauthorized,
    #[error("too many attempts")]
    RateLimited { retry_after_seconds: u64 },
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// The JSON body of every error response.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// A stable code a client can switch on.
    pub error: &'static str,
    /// A sentence for people, in the caller's language.
    pub message: String,
    /// What exactly was wrong, in English, for developers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl AppError {
    /// `Ok` when `allowed`, else forbidden because of `why`: how a handler
    /// answers a capability of `booking::accounts::Staff` it asked.
    pub fn unless(allowed: bool, why: &str) -> Result<(), AppError> {
        if allowed {
            Ok(())
        } else {
            Err(AppError::Forbidden(why.to_owned()))
        }
    }

    /// The status and the stable code of this error: the one table that the
    /// JSON API and the pages both answer by.
    pub(crate) fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            AppError::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            AppError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            AppError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            AppError::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid"),
            AppError::BadJson(_) => (StatusCode::BAD_REQUEST, "bad_json"),
            AppError::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            AppError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            AppError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            AppError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    /// Logs an internal error: the one place a 500 is logged, whether it
    /// is answered as JSON or as a page.
    pub(crate) fn log_if_internal(&self) {
        if let AppError::Internal(e) = self {
            tracing::error!(error = ?e, "request failed");
        }
    }

    /// The response in `locale`.
    pub fn localised(self, locale: Locale) -> Response {
        let (status, code) = self.parts();
        let detail = match &self {
            AppError::Conflict(d)
            | AppError::Forbidden(d)
            | AppError::Invalid(d)
            | AppError::BadJson(d) => Some(d.clone()),
            _ => None,
        };
        self.log_if_internal();
        let body = ErrorBody {
            error: code,
            message: rust_i18n::t!(format!("error.{code}"), locale = locale.code()).into_owned(),
            detail,
        };
        let mut response = (status, Json(body)).into_response();
        if let AppError::RateLimited {
            retry_after_seconds,
        } = self
        {
            if let Ok(v) = retry_after_seconds.to_string().parse() {
                response.headers_mut().insert("retry-after", v);
            }
        }
        response
    }
}

/// The id in `raw`, a part of the request that names a record (a path
/// segment, mostly). Text that is no id names no record, so it is answered
/// as a missing record is (404), not as a malformed request.
pub fn path_id<T: std::str::FromStr>(raw: &str) -> Result<T, AppError> {
    raw.parse().map_err(|_| AppError::NotFound)
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        // The locale middleware runs every request inside a scope that holds
        // the caller's language, so even extractor rejections are translated.
        self.localised(current_locale())
    }
}

impl From<booking::Error> for AppError {
    fn from(err: booking::Error) -> Self {
        match err {
            booking::Error::NotFound => AppError::NotFound,
            booking::Error::Conflict(m) => AppError::Conflict(m),
            booking::Error::Forbidden(m) => AppError::Forbidden(m),
            booking::Error::Invalid(v) => AppError::Invalid(v.to_string()),
            other => AppError::Internal(anyhow::Error::new(other)),
        }
    }
}

impl From<booking::InvalidValue> for AppError {
    fn from(err: booking::InvalidValue) -> Self {
        AppError::Invalid(err.to_string())
    }
}
