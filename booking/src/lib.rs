//! Municipalities, services, the legal policy, agreements, staff, residents,
//! availability, slots, bookings, eligibility and load balancing, and the
//! audit log, persisted with sqlx on SQLite or PostgreSQL.
//!
//! This crate knows nothing about HTTP, WebSockets or email: it records what
//! somebody should be told in the [`outbox`], and `notify` delivers it.

pub mod accounts;
pub mod audit;
mod batch;
pub mod bookings;
pub mod catalog;
pub mod chats;
mod db;
mod domain;
pub mod events;
pub mod load;
pub mod outbox;
mod passwords;
mod policy;
mod pool;
pub mod seed;
pub mod sessions;
pub mod slots;
mod snapshot;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod throttle;
mod time;

pub use db::{Backend, Db, DbError, Hold, WriteTurn};
pub use domain::{
    Basis, BookingStatus, DateRange, EmailAddress, InvalidValue, Language, LocalDate, MessageText,
    MunicipalityCode, NewPassword, Password, PersonName, PhoneNumber, Role, Rule, ServiceCode,
    SlotRange, Step,
};
pub use pool::Pool;

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
