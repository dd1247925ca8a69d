//! A booking as stored, and finding one: the row and its columns, reading
//! it by id or by manage token, how a caller proves the right to change it,
//! and the audit entry that names it. `search`, `place`, `manage` and
//! `views` all build on this, and it calls none of them.

use jiff::Timestamp;
use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::accounts::{self, token_hash, Resident};
use crate::audit::{self, Actor, Entry, Outcome};
use crate::db::{built_sql, Db};
use crate::domain::{Basis, BookingStatus, MunicipalityCode, ServiceCode, SlotRange, Step};
use crate::ids;
use crate::outbox::NeutralTitle;
use crate::{BookingId, Error, ResidentId, StaffId};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Booking {
    pub id: BookingId,
    pub resident_id: ResidentId,
    pub staff_id: StaffId,
    pub service: ServiceCode,
    pub step: Step,
    pub range: SlotRange,
    pub status: BookingStatus,
    /// The municipality whose staff performs the meeting.
    pub performed_by: MunicipalityCode,
    /// The resident's home municipality, which stays responsible.
    pub performed_for: MunicipalityCode,
    pub agreement_id: Option<String>,
    /// The home municipality, or the cross-border rule the booking relied on.
    pub rule: Basis,
    /// Bumped on every change, for calendar invitations.
    pub sequence: i64,
    /// The neutral title the resident chose at booking for discreet mail;
    /// `None` means the default, [`NeutralTitle::Meeting`].
    pub neutral_title: Option<NeutralTitle>,
}

impl Booking {
    /// Whether its meeting can be entered at `now`: it is booked and has not
    /// ended. The join links, the meeting page and the API that opens the
    /// room all ask this.
    pub fn is_joinable(&self, now: Timestamp) -> bool {
        self.status == BookingStatus::Booked && self.range.end() > now
    }

    /// Whether it can still be cancelled or moved at `now`: it is booked and
    /// has not started.
    pub fn is_changeable(&self, now: Timestamp) -> bool {
        self.status == BookingStatus::Booked && self.range.start() > now
    }
}

/// A booking made or moved, with the token that manages it. The token is
/// shown once (and mailed); only its hash is stored.
#[derive(Debug, Clone)]
pub struct Ticket {
    pub booking: Booking,
    pub manage_token: String,
}

pub(super) const BOOKING_COLUMNS: &str =
    "id, resident_id, staff_id, service_code, step, starts_at, ends_at, status, \
    performed_by, performed_for, agreement_id, rule, sequence, neutral_title";

pub(super) fn booking_from_row(r: &AnyRow) -> Result<Booking, Error> {
    Ok(Booking {
        id: ids::stored(r, "id")?,
        resident_id: ids::stored(r, "resident_id")?,
        staff_id: ids::stored(r, "staff_id")?,
        service: ServiceCode::parse(&r.try_get::<String, _>("service_code")?)?,
        step: Step::parse(&r.try_get::<String, _>("step")?)?,
        range: SlotRange::from_unix(r.try_get("starts_at")?, r.try_get("ends_at")?)?,
        status: BookingStatus::parse(&r.try_get::<String, _>("status")?)?,
        performed_by: MunicipalityCode::parse(&r.try_get::<String, _>("performed_by")?)?,
        performed_for: MunicipalityCode::parse(&r.try_get::<String, _>("performed_for")?)?,
        agreement_id: r.try_get("agreement_id")?,
        rule: Basis::parse(&r.try_get::<String, _>("rule")?)?,
        sequence: r.try_get("sequence")?,
        neutral_title: r
            .try_get::<Option<String>, _>("neutral_title")?
            .as_deref()
            .map(NeutralTitle::parse)
            .transpose()?,
    })
}

/// One booking by id, unchecked: for the functions here that decide who
/// may see it.
pub(super) async fn by_id(db: &Db, id: &BookingId) -> Result<Option<Booking>, Error> {
    let row = sqlx::query(built_sql(format!(
        "SELECT {BOOKING_COLUMNS} FROM bookings WHERE id = $1"
    )))
    .bind(id.as_str())
    .fetch_optional(db.pool())
    .await?;
    row.as_ref().map(booking_from_row).transpose()
}

/// How a caller proves the right to change a booking.
#[derive(Debug, Clone, Copy)]
pub enum Authority<'a> {
    /// The token from the confirmation mail.
    Token(&'a str),
    /// The signed-in resident who owns the booking.
    Resident(&'a Resident),
}

/// The booking a manage token belongs to, unaudited: the callers audit what
/// they do with it.
///
/// A token works until it has cancelled its booking or the meeting has
/// ended. The mail that carries it stays in an inbox for years, and whoever
/// reads that inbox later should learn nothing from the link: after that, the
/// token is as unknown as a made-up one. Moving the booking moves the end, so
/// a moved booking's token lasts until the new end.
pub(super) async fn by_token(db: &Db, token: &str, now: Timestamp) -> Result<Booking, Error> {
    let row = sqlx::query(built_sql(format!(
        "SELECT {BOOKING_COLUMNS} FROM bookings \
         WHERE manage_token_hash = $1 AND manage_token_spent = 0 AND ends_at > $2"
    )))
    .bind(token_hash(token))
    .bind(now.as_second())
    .fetch_optional(db.pool())
    .await?;
    let booking = row
        .as_ref()
        .map(booking_from_row)
        .transpose()?
        .ok_or(Error::NotFound)?;
    Ok(booking)
}

/// The still-booked booking a caller may change, with its resident. Any
/// other status is a conflict: a cancelled booking cannot be `verb`.
pub(super) async fn find_active(
    db: &Db,
    authority: Authority<'_>,
    booking_id: Option<&BookingId>,
    now: Timestamp,
    verb: &str,
) -> Result<(Booking, Resident), Error> {
    let booking = find_managed(db, authority, booking_id, now).await?;
    if booking.status != BookingStatus::Booked {
        return Err(Error::Conflict(format!(
            "a {} booking cannot be {verb}",
            booking.status.as_str()
        )));
    }
    let resident = accounts::resident_by_id(db, &booking.resident_id)
        .await?
        .ok_or(Error::NotFound)?;
    Ok((booking, resident))
}

/// Finds the booking a caller may manage. A token finds its own booking; a
/// resident finds only their own, and asking for another's is audit-logged and
/// answered exactly as a missing booking.
pub(super) async fn find_managed(
    db: &Db,
    authority: Authority<'_>,
    booking_id: Option<&BookingId>,
    now: Timestamp,
) -> Result<Booking, Error> {
    match authority {
        // A spent or expired token finds nothing (`by_token` says why).
        Authority::Token(token) => by_token(db, token, now).await,
        Authority::Resident(resident) => {
            let id = booking_id.ok_or(Error::NotFound)?;
            let row = sqlx::query(built_sql(format!(
                "SELECT {BOOKING_COLUMNS} FROM bookings WHERE id = $1"
            )))
            .bind(id.as_str())
            .fetch_optional(db.pool())
            .await?;
            let booking = row.as_ref().map(booking_from_row).transpose()?;
            match booking {
                Some(b) if b.resident_id == resident.id => Ok(b),
                Some(b) => {
                    let actor = Actor::Resident(resident.id.clone());
                    audit::record_now(
                        db,
                        &booking_entry(&actor, "booking.read", &b, Outcome::Denied),
                        now.as_second(),
                    )
                    .await?;
                    Err(Error::NotFound)
                }
                None => Err(Error::NotFound),
            }
        }
    }
}

pub(super) fn authority_actor(authority: Authority<'_>) -> Actor {
    match authority {
        Authority::Token(_) => Actor::Anonymous,
        Authority::Resident(r) => Actor::Resident(r.id.clone()),
    }
}

pub(super) fn booking_entry<'a>(
    actor: &'a Actor,
    action: &'a str,
    booking: &'a Booking,
    outcome: Outcome,
) -> Entry<'a> {
    Entry {
        actor,
        action,
        subject: format!("booking:{}", booking.id),
        resident_id: Some(&booking.resident_id),
        on_behalf_of: Some(booking.performed_for.as_str()),
        rule: Some(booking.rule),
        agreement_id: booking.agreement_id.as_deref(),
        outcome,
    }
}
