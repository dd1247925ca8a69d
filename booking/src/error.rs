//! The one error type of the booking domain.

use crate::domain::InvalidValue;

/// What can go wrong in the booking domain. The web layer maps each variant to
/// a status code; `Db` and `Corrupt` are never shown to clients.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Missing, or not visible to the caller: the two are indistinguishable on
    /// purpose.
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Forbidden(String),
    #[error(transparent)]
    Invalid(#[from] InvalidValue),
    #[error("database error")]
    Db(#[from] sqlx::Error),
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
}

impl Error {
    /// Maps a unique-constraint violation to a conflict with `message`.
    pub(crate) fn from_unique(err: sqlx::Error, message: &str) -> Error {
        match &err {
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                Error::Conflict(message.to_owned())
            }
            _ => Error::Db(err),
        }
    }
}
