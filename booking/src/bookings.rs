//! Search, booking, cancelling and rescheduling, the staff day view and the
//! load figures.
//!
//! Double booking is refused by the database itself (a unique index plus an
//! overlap trigger on SQLite, an exclusion constraint on PostgreSQL). The code
//! here picks a staff member and tries to insert; when the database says the
//! time is taken it moves on to the next candidate, so two requests racing for
//! the last free time can never both win.

use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{Span, Timestamp};
use rand::seq::SliceRandom;
use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::accounts::{self, random_token, token_hash, Resident, Staff};
use crate::audit::{self, Actor, Entry, Outcome};
use crate::batch::Statement;
use crate::catalog::{self, Service};
use crate::db::{is_booking_conflict, Backend, Db, Hold};
use crate::domain::{
    BookingStatus, DateRange, EmailAddress, Language, LocalDate, MunicipalityCode, ServiceCode,
    SlotRange, Step,
};
use crate::load;
use crate::outbox::{self, Message, NeutralTitle};
use crate::policy::{self, Agreement, Decision};
use crate::slots::{self, SlotShape, Template};
use crate::snapshot::{self, Snapshot};
use crate::Error;

/// The zone times are shown in unless a municipality says otherwise.
pub const DISPLAY_ZONE: &str = "Europe/Stockholm";

/// The longest a booking may last; the schema refuses longer ones.
pub const MAX_BOOKING_SECONDS: i64 = 24 * 60 * 60;

/// Reminders go out this many minutes before a meeting.
pub const REMINDER_MINUTES: [i64; 2] = [24 * 60, 60];

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Booking {
    pub id: String,
    pub resident_id: String,
    pub staff_id: String,
    pub service: ServiceCode,
    pub step: Step,
    pub range: SlotRange,
    pub status: BookingStatus,
    /// The municipality whose staff performs the meeting.
    pub performed_by: MunicipalityCode,
    /// The resident's home municipality, which stays responsible.
    pub performed_for: MunicipalityCode,
    pub agreement_id: Option<String>,
    /// `home`, or the cross-border rule the booking relied on.
    pub rule: String,
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

#[derive(Debug, Clone)]
pub struct SearchQuery {
    pub service: ServiceCode,
    pub home: MunicipalityCode,
    /// The local dates to search, at most [`MAX_SEARCH_DAYS`] apart.
    pub dates: DateRange,
    pub language: Option<Language>,
}

/// A bookable time. The resident sees a time, never a person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FreeTime {
    pub range: SlotRange,
    /// How many staff members are free then: a hint for load, not a name.
    pub free_staff: usize,
}

/// The longest range one search may cover.
pub const MAX_SEARCH_DAYS: i64 = 62;

/// Free times for a resident of `query.home` under the policy, from now on.
pub async fn search(db: &Db, query: &SearchQuery, now: Timestamp) -> Result<Vec<FreeTime>, Error> {
    let found = free_candidates(db, query, now).await?;
    Ok(found
        .into_iter()
        .map(|(range, candidates)| FreeTime {
            range,
            free_staff: candidates.len(),
        })
        .collect())
}

/// The staff free at each time of `query`, under the policy.
async fn free_candidates(
    db: &Db,
    query: &SearchQuery,
    now: Timestamp,
) -> Result<BTreeMap<SlotRange, Vec<Candidate>>, Error> {
    let dates = query.dates.at_most(MAX_SEARCH_DAYS)?;
    let catalog = snapshot::current(db).await?;
    let tz = zone(DISPLAY_ZONE)?;
    let busy = busy_times(
        db,
        day_bounds(dates.from(), &tz)?.0,
        day_bounds(dates.to(), &tz)?.1,
        None,
    )
    .await?;
    let wanted = Wanted {
        service: &query.service,
        home: &query.home,
        language: query.language,
        only_staff: None,
    };
    free_slots(
        &catalog,
        &wanted,
        dates.from(),
        dates.to(),
        now,
        None,
        &busy,
    )
}

/// A free time with the municipalities whose staff are free then, for
/// staff who offer times: each may perform the meeting for the resident's
/// home under the policy. Still no person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FreeTimeAt {
    pub range: SlotRange,
    /// In code order, each once.
    pub municipalities: Vec<MunicipalityCode>,
}

/// [`search`], saying for each time which municipalities could perform it.
pub async fn search_with_municipalities(
    db: &Db,
    query: &SearchQuery,
    now: Timestamp,
) -> Result<Vec<FreeTimeAt>, Error> {
    let found = free_candidates(db, query, now).await?;
    Ok(found
        .into_iter()
        .map(|(range, candidates)| {
            let mut municipalities: Vec<MunicipalityCode> =
                candidates.into_iter().map(|c| c.municipality).collect();
            municipalities.sort();
            municipalities.dedup();
            FreeTimeAt {
                range,
                municipalities,
            }
        })
        .collect())
}

/// Books the time starting at `starts_at` for `resident`, picking the staff
/// member by load.
pub async fn book(
    db: &Db,
    resident: &Resident,
    service: &ServiceCode,
    starts_at: Timestamp,
    language: Option<Language>,
    now: Timestamp,
) -> Result<Ticket, Error> {
    book_titled(db, resident, service, starts_at, language, None, now).await
}

/// [`book`], with the neutral title the resident chose for the booking's
/// mail and calendar entry should they be discreet (see [`discretion`]).
pub async fn book_titled(
    db: &Db,
    resident: &Resident,
    service: &ServiceCode,
    starts_at: Timestamp,
    language: Option<Language>,
    neutral_title: Option<NeutralTitle>,
    now: Timestamp,
) -> Result<Ticket, Error> {
    let actor = Actor::Resident(resident.id.clone());
    let wanted = Wanted {
        service,
        home: &resident.home,
        language,
        only_staff: None,
    };
    book_new(db, &actor, resident, &wanted, starts_at, neutral_title, now).await
}

/// Picks the staff member for a new booking, holds them and writes the
/// booking with its mail, load and audit entry in one transaction. When
/// another process booked the pick meanwhile, it looks again.
async fn book_new(
    db: &Db,
    actor: &Actor,
    resident: &Resident,
    wanted: &Wanted<'_>,
    starts_at: Timestamp,
    neutral_title: Option<NeutralTitle>,
    now: Timestamp,
) -> Result<Ticket, Error> {
    let tz = zone(DISPLAY_ZONE)?;
    let token = random_token();
    let discreet_service = service_is_discreet(db, wanted.service).await?;
    for _ in 0..PLACE_ATTEMPTS {
        let (candidate, _hold) = best_free(db, wanted, starts_at, now, None).await?;
        let booking = new_booking(resident, wanted.service, &candidate, neutral_title);
        let discreet = discretion(discreet_service, resident, &booking);
        let statements = [
            insert_statement(&booking, &token, now),
            load::adjust(&booking.staff_id, &booking.range, 1, &tz),
            announce(
                resident,
                confirmation(&booking, &token),
                &booking,
                &token,
                discreet,
                now,
            ),
            audit::statement(
                &booking_entry(actor, "booking.create", &booking, Outcome::Allowed),
                now.as_second(),
            ),
        ];
        match db.run(&statements).await {
            Ok(()) => {
                return Ok(Ticket {
                    booking,
                    manage_token: token,
                })
            }
            // Booked by another process since we looked: look again.
            Err(e) if is_booking_conflict(&e) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::Conflict("that time is no longer available".into()))
}

/// A staff member books one of their own free times for the resident with
/// address `email`, which the policy must allow their municipality to do.
/// An unknown address and a resident the policy keeps from this staff
/// member are one answer, `NotFound`, each with a denied audit entry: the
/// answer must not tell staff who is registered.
pub async fn book_as_staff(
    db: &Db,
    staff: &Staff,
    email: &EmailAddress,
    service: &ServiceCode,
    starts_at: Timestamp,
    now: Timestamp,
) -> Result<Ticket, Error> {
    let actor = Actor::Staff(staff.id.clone());
    let Some(resident) = accounts::resident_by_email(db, email).await? else {
        let entry = Entry {
            actor: &actor,
            action: "booking.create",
            subject: "resident:unknown".to_owned(),
            resident_id: None,
            on_behalf_of: None,
            rule: None,
            agreement_id: None,
            outcome: Outcome::Denied,
        };
        audit::record_now(db, &entry, now.as_second()).await?;
        return Err(Error::NotFound);
    };
    let resident = &resident;
    let decision = decide_for(
        db,
        &staff.municipality,
        &resident.home,
        service,
        Step::Meeting,
        starts_at,
    )
    .await?;
    if !decision.allowed() || !staff.handles(service) {
        let entry = Entry {
            actor: &actor,
            action: "booking.create",
            subject: format!("resident:{}", resident.id),
            resident_id: Some(&resident.id),
            on_behalf_of: Some(resident.home.as_str()),
            rule: Some(decision.rule_label()),
            agreement_id: None,
            outcome: Outcome::Denied,
        };
        audit::record_now(db, &entry, now.as_second()).await?;
        return Err(Error::NotFound);
    }
    let wanted = Wanted {
        service,
        home: &resident.home,
        language: None,
        only_staff: Some(&staff.id),
    };
    book_new(db, &actor, resident, &wanted, starts_at, None, now)
        .await
        .map_err(|e| match e {
            Error::Conflict(_) => Error::Conflict("you have no free time then".into()),
            e => e,
        })
}

/// How a caller proves the right to change a booking.
#[derive(Debug, Clone, Copy)]
pub enum Authority<'a> {
    /// The token from the confirmation mail.
    Token(&'a str),
    /// The signed-in resident who owns the booking.
    Resident(&'a Resident),
}

/// Cancels a booking. A token is spent by cancelling: afterwards it finds
/// nothing.
pub async fn cancel(
    db: &Db,
    authority: Authority<'_>,
    booking_id: Option<&str>,
    now: Timestamp,
) -> Result<Booking, Error> {
    let (booking, resident) = find_active(db, authority, booking_id, now, "cancelled").await?;
    let discreet = discretion(
        service_is_discreet(db, &booking.service).await?,
        &resident,
        &booking,
    );
    let _turn = db.write_turn().await;
    let mut tx = db.pool().begin().await?;
    let row = sqlx::query(&format!(
        "UPDATE bookings SET status = 'cancelled', manage_token_spent = 1, sequence = sequence + 1, updated_at = $1 \
         WHERE id = $2 AND status = 'booked' RETURNING {BOOKING_COLUMNS}"
    ))
    .bind(now.as_second())
    .bind(&booking.id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        return Err(Error::Conflict("the booking was changed meanwhile".into()));
    };
    let cancelled = booking_from_row(&row)?;
    load::adjust(
        &cancelled.staff_id,
        &cancelled.range,
        -1,
        &zone(DISPLAY_ZONE)?,
    )
    .execute(&mut tx)
    .await?;
    outbox::supersede_reminders(&mut tx, &cancelled.id).await?;
    let message = Message::BookingCancelled {
        booking_id: cancelled.id.clone(),
        starts_at: cancelled.range.start().as_second(),
        ends_at: cancelled.range.end().as_second(),
        sequence: cancelled.sequence,
    };
    outbox::enqueue(
        &mut tx,
        &resident.email,
        resident.language,
        &message,
        discreet,
        now.as_second(),
        now.as_second(),
    )
    .await?;
    let actor = authority_actor(authority);
    audit::record(
        &mut tx,
        &booking_entry(&actor, "booking.cancel", &cancelled, Outcome::Allowed),
        now.as_second(),
    )
    .await?;
    tx.commit().await?;
    Ok(cancelled)
}

/// Moves a booking to the free time at `starts_at`, keeping its id, its
/// calendar UID and its manage token.
pub async fn reschedule(
    db: &Db,
    authority: Authority<'_>,
    booking_id: Option<&str>,
    starts_at: Timestamp,
    now: Timestamp,
) -> Result<Ticket, Error> {
    let (booking, resident) = find_active(db, authority, booking_id, now, "rescheduled").await?;
    let discreet = discretion(
        service_is_discreet(db, &booking.service).await?,
        &resident,
        &booking,
    );
    let wanted = Wanted {
        service: &booking.service,
        home: &resident.home,
        language: None,
        only_staff: None,
    };
    let actor = authority_actor(authority);
    let tz = zone(DISPLAY_ZONE)?;
    for _ in 0..PLACE_ATTEMPTS {
        let (candidate, _hold) = best_free(db, &wanted, starts_at, now, Some(&booking.id)).await?;
        let _turn = db.write_turn().await;
        let mut tx = db.pool().begin().await?;
        let updated = sqlx::query(&format!(
            "UPDATE bookings SET staff_id = $1, starts_at = $2, ends_at = $3, performed_by = $4, agreement_id = $5, \
             rule = $6, sequence = sequence + 1, updated_at = $7 \
             WHERE id = $8 AND status = 'booked' AND staff_id = $9 AND starts_at = $10 RETURNING {BOOKING_COLUMNS}"
        ))
        .bind(&candidate.staff_id)
        .bind(candidate.range.start().as_second())
        .bind(candidate.range.end().as_second())
        .bind(candidate.municipality.as_str())
        .bind(candidate.decision.agreement_id())
        .bind(candidate.decision.rule_label())
        .bind(now.as_second())
        .bind(&booking.id)
        .bind(&booking.staff_id)
        .bind(booking.range.start().as_second())
        .fetch_optional(&mut *tx)
        .await;
        let row = match updated {
            Ok(Some(row)) => row,
            Ok(None) => return Err(Error::Conflict("the booking was changed meanwhile".into())),
            Err(e) if is_booking_conflict(&e) => {
                tx.rollback().await?;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let moved = booking_from_row(&row)?;
        load::adjust(&booking.staff_id, &booking.range, -1, &tz)
            .execute(&mut tx)
            .await?;
        load::adjust(&moved.staff_id, &moved.range, 1, &tz)
            .execute(&mut tx)
            .await?;
        outbox::supersede_reminders(&mut tx, &moved.id).await?;
        // The token stays valid, so the link in the first mail still manages
        // the booking; the mail about the move does not need to carry it anew.
        let token = match authority {
            Authority::Token(t) => t.to_owned(),
            Authority::Resident(_) => String::new(),
        };
        let message = Message::BookingRescheduled {
            booking_id: moved.id.clone(),
            starts_at: moved.range.start().as_second(),
            ends_at: moved.range.end().as_second(),
            previous_starts_at: booking.range.start().as_second(),
            sequence: moved.sequence,
            manage_token: token.clone(),
        };
        announce(&resident, message, &moved, &token, discreet, now)
            .execute(&mut tx)
            .await?;
        audit::record(
            &mut tx,
            &booking_entry(&actor, "booking.reschedule", &moved, Outcome::Allowed),
            now.as_second(),
        )
        .await?;
        tx.commit().await?;
        return Ok(Ticket {
            booking: moved,
            manage_token: token,
        });
    }
    Err(Error::Conflict("that time is no longer available".into()))
}

/// The booking a manage token belongs to, for the manage page. The read is
/// audit-logged as the token holder's, who is anonymous to us. A token that
/// cancelled its booking, or whose meeting is over, is `NotFound`, exactly as
/// one that never existed.
pub async fn read_by_token(db: &Db, token: &str, now: Timestamp) -> Result<Booking, Error> {
    let booking = by_token(db, token, now).await?;
    audit::record_now(
        db,
        &booking_entry(
            &Actor::Anonymous,
            "booking.read",
            &booking,
            Outcome::Allowed,
        ),
        now.as_second(),
    )
    .await?;
    Ok(booking)
}

/// The booking a manage token belongs to, unaudited: the callers audit what
/// they do with it.
///
/// A token works until it has cancelled its booking or the meeting has
/// ended. The mail that carries it stays in an inbox for years, and whoever
/// reads that inbox later should learn nothing from the link: after that, the
/// token is as unknown as a made-up one. Moving the booking moves the end, so
/// a moved booking's token lasts until the new end.
async fn by_token(db: &Db, token: &str, now: Timestamp) -> Result<Booking, Error> {
    let row = sqlx::query(&format!(
        "SELECT {BOOKING_COLUMNS} FROM bookings \
         WHERE manage_token_hash = $1 AND manage_token_spent = 0 AND ends_at > $2"
    ))
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

/// A resident's own bookings, newest first. The read is audit-logged like
/// anyone else's: one entry for the list.
pub async fn for_resident(
    db: &Db,
    resident: &Resident,
    now: Timestamp,
) -> Result<Vec<Booking>, Error> {
    let rows = sqlx::query(&format!(
        "SELECT {BOOKING_COLUMNS} FROM bookings WHERE resident_id = $1 ORDER BY starts_at DESC"
    ))
    .bind(&resident.id)
    .fetch_all(db.pool())
    .await?;
    let list = rows
        .iter()
        .map(booking_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    let actor = Actor::Resident(resident.id.clone());
    audit::record_now(
        db,
        &Entry {
            actor: &actor,
            action: "booking.list",
            subject: format!("resident:{}", resident.id),
            resident_id: Some(&resident.id),
            on_behalf_of: Some(resident.home.as_str()),
            rule: None,
            agreement_id: None,
            outcome: Outcome::Allowed,
        },
        now.as_second(),
    )
    .await?;
    Ok(list)
}

/// One of a resident's own bookings, the read audit-logged. Somebody else's
/// booking is `NotFound`, exactly as a missing one, and the attempt is
/// audit-logged as denied.
pub async fn for_resident_by_id(
    db: &Db,
    resident: &Resident,
    id: &str,
    now: Timestamp,
) -> Result<Booking, Error> {
    let booking = find_managed(db, Authority::Resident(resident), Some(id), now).await?;
    let actor = Actor::Resident(resident.id.clone());
    audit::record_now(
        db,
        &booking_entry(&actor, "booking.read", &booking, Outcome::Allowed),
        now.as_second(),
    )
    .await?;
    Ok(booking)
}

/// A staff member's bookings on one local day, each read audit-logged.
pub async fn staff_day(
    db: &Db,
    staff: &Staff,
    day: LocalDate,
    now: Timestamp,
) -> Result<Vec<(Booking, Resident)>, Error> {
    let tz = zone(DISPLAY_ZONE)?;
    let (from, to) = day_bounds(day.date(), &tz)?;
    let rows = sqlx::query(&format!(
        "SELECT {BOOKING_COLUMNS} FROM bookings WHERE staff_id = $1 AND starts_at >= $2 AND starts_at < $3 ORDER BY starts_at"
    ))
    .bind(&staff.id)
    .bind(from.as_second())
    .bind(to.as_second())
    .fetch_all(db.pool())
    .await?;
    let actor = Actor::Staff(staff.id.clone());
    let mut out = Vec::with_capacity(rows.len());
    let mut conn = db.pool().acquire().await?;
    for row in &rows {
        let booking = booking_from_row(row)?;
        let Some(resident) = accounts::resident_by_id(db, &booking.resident_id).await? else {
            continue;
        };
        audit::record(
            &mut conn,
            &booking_entry(&actor, "booking.read", &booking, Outcome::Allowed),
            now.as_second(),
        )
        .await?;
        out.push((booking, resident));
    }
    Ok(out)
}

/// A booking with its resident, for a staff member who may handle it
/// ([`Staff::may_handle_booking`]). Anyone else gets `NotFound`, and the
/// attempt is audit-logged either way.
pub async fn for_staff(
    db: &Db,
    staff: &Staff,
    id: &str,
    now: Timestamp,
) -> Result<(Booking, Resident), Error> {
    let actor = Actor::Staff(staff.id.clone());
    let Some(booking) = by_id(db, id).await? else {
        return Err(Error::NotFound);
    };
    let catalog = snapshot::current(db).await?;
    let allowed = staff.may_handle_booking(&booking, &catalog)?.allowed();
    let outcome = if allowed {
        Outcome::Allowed
    } else {
        Outcome::Denied
    };
    audit::record_now(
        db,
        &booking_entry(&actor, "booking.read", &booking, outcome),
        now.as_second(),
    )
    .await?;
    if !allowed {
        return Err(Error::NotFound);
    }
    let resident = accounts::resident_by_id(db, &booking.resident_id)
        .await?
        .ok_or(Error::NotFound)?;
    Ok((booking, resident))
}

/// Whether a staff member may handle a booking, and what that relied on:
/// the answer of [`Staff::may_handle_booking`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BookingAccess {
    /// The staff member the booking is with.
    BookedStaff,
    /// Staff who handle the booking's service, of a municipality the policy
    /// lets perform the booking's step for the resident on its date.
    Policy(Decision),
    /// The policy lets the staff member's municipality act, but they do not
    /// handle the service (schedulers and admins handle none).
    NotTheirService,
    /// The policy does not let the staff member's municipality act.
    RefusedByPolicy(Decision),
}

impl BookingAccess {
    pub fn allowed(&self) -> bool {
        matches!(self, BookingAccess::BookedStaff | BookingAccess::Policy(_))
    }
}

impl Staff {
    /// The one rule for who may handle a booking: read it, open its meeting
    /// page, enter its meeting room, hear its knocks, and admit, decline,
    /// send back or end there. The API, the pages and the meeting rooms all
    /// ask this (the rooms through [`staff_who_may_handle`]), so that they
    /// cannot disagree about who sees a resident's meeting.
    pub fn may_handle_booking(
        &self,
        booking: &Booking,
        catalog: &Snapshot,
    ) -> Result<BookingAccess, Error> {
        if booking.staff_id == self.id {
            return Ok(BookingAccess::BookedStaff);
        }
        let decision = decide_in(
            catalog,
            &self.municipality,
            &booking.performed_for,
            &booking.service,
            booking.step,
            booking.range.start(),
        )?;
        Ok(if !decision.allowed() {
            BookingAccess::RefusedByPolicy(decision)
        } else if !self.handles(&booking.service) {
            BookingAccess::NotTheirService
        } else {
            BookingAccess::Policy(decision)
        })
    }
}

/// The ids of every staff member who may handle `booking`, by
/// [`Staff::may_handle_booking`]: who may enter its meeting room and hear
/// its knocks. The caller passes them to the signaling hub, which knows no
/// policy of its own.
pub async fn staff_who_may_handle(db: &Db, booking: &Booking) -> Result<Vec<String>, Error> {
    let catalog = snapshot::current(db).await?;
    let mut out = Vec::new();
    for staff in &catalog.staff {
        if staff.may_handle_booking(booking, &catalog)?.allowed() {
            out.push(staff.id.clone());
        }
    }
    Ok(out)
}

/// Records a staff member's access to a booking's meeting room (entering
/// it, or being refused) in the audit log, with the booking's rule and
/// agreement, as [`for_staff`] records a read through the API. A booking
/// that no longer exists is recorded without them.
pub async fn audit_meeting_access(
    db: &Db,
    staff_id: &str,
    booking_id: &str,
    action: &str,
    outcome: Outcome,
    now: Timestamp,
) -> Result<(), Error> {
    let actor = Actor::Staff(staff_id.to_owned());
    let booking = by_id(db, booking_id).await?;
    let entry = match &booking {
        Some(booking) => booking_entry(&actor, action, booking, outcome),
        None => Entry {
            actor: &actor,
            action,
            subject: format!("booking:{booking_id}"),
            resident_id: None,
            on_behalf_of: None,
            rule: None,
            agreement_id: None,
            outcome,
        },
    };
    audit::record_now(db, &entry, now.as_second()).await?;
    Ok(())
}

/// One booking by id, unchecked: for the functions here that decide who
/// may see it.
async fn by_id(db: &Db, id: &str) -> Result<Option<Booking>, Error> {
    let row = sqlx::query(&format!(
        "SELECT {BOOKING_COLUMNS} FROM bookings WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(db.pool())
    .await?;
    row.as_ref().map(booking_from_row).transpose()
}

/// Every active booking's staff member and time: the double-booking check of
/// the contention test and benchmark.
pub async fn active_ranges(db: &Db) -> Result<Vec<(String, SlotRange)>, Error> {
    let rows = sqlx::query("SELECT staff_id, starts_at, ends_at FROM bookings WHERE status = 'booked' ORDER BY staff_id, starts_at")
        .fetch_all(db.pool())
        .await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get("staff_id")?,
                SlotRange::from_unix(r.try_get("starts_at")?, r.try_get("ends_at")?)?,
            ))
        })
        .collect()
}

/// Load figures for one municipality over a period.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Load {
    pub municipality: MunicipalityCode,
    pub name: String,
    pub published_minutes: i64,
    pub booked_minutes: i64,
    pub bookings: i64,
    pub completed: i64,
    pub no_shows: i64,
    pub cancelled: i64,
    /// Meetings performed for residents of other municipalities.
    pub performed_for_others: i64,
    /// Booked minutes over published minutes, 0 when nothing is published.
    pub utilisation: f64,
}

/// The bookings of every status that start in `$1..$2`, counted per
/// municipality that performs them and status, through the index on the
/// start (`bookings_time`).
const LOAD_SQL: &str = "SELECT performed_by, status, CAST(COUNT(*) AS BIGINT) AS n, CAST(SUM(ends_at - starts_at) AS BIGINT) AS seconds, \
     CAST(SUM(CASE WHEN performed_by <> performed_for THEN 1 ELSE 0 END) AS BIGINT) AS for_others \
     FROM bookings WHERE starts_at >= $1 AND starts_at < $2 GROUP BY performed_by, status";

/// The longest range one load report may cover.
pub const MAX_LOAD_DAYS: i64 = 366;

/// Load per municipality over `dates`, at most [`MAX_LOAD_DAYS`] apart.
pub async fn load(db: &Db, dates: DateRange) -> Result<Vec<Load>, Error> {
    let dates = dates.at_most(MAX_LOAD_DAYS)?;
    let (from, to) = (dates.from(), dates.to());
    let tz = zone(DISPLAY_ZONE)?;
    let (start, _) = day_bounds(from, &tz)?;
    let (_, end) = day_bounds(to, &tz)?;
    let catalog = snapshot::current(db).await?;
    let municipalities = catalog.municipalities.clone();
    let mut published: HashMap<String, i64> = HashMap::new();
    for s in &catalog.staff {
        let own = catalog.templates_of(&s.id);
        let mut day = from;
        while day <= to {
            let minutes: i64 = own.iter().map(|t| t.minutes_on(day, &tz)).sum();
            *published
                .entry(s.municipality.as_str().to_owned())
                .or_default() += minutes;
            day = day
                .checked_add(Span::new().days(1))
                .map_err(|e| Error::Corrupt(e.to_string()))?;
        }
    }
    let rows = sqlx::query(LOAD_SQL)
        .bind(start.as_second())
        .bind(end.as_second())
        .fetch_all(db.pool())
        .await?;
    let mut out: Vec<Load> = municipalities
        .into_iter()
        .map(|m| Load {
            published_minutes: published.get(m.code.as_str()).copied().unwrap_or(0),
            municipality: m.code,
            name: m.name,
            booked_minutes: 0,
            bookings: 0,
            completed: 0,
            no_shows: 0,
            cancelled: 0,
            performed_for_others: 0,
            utilisation: 0.0,
        })
        .collect();
    for r in &rows {
        let code: String = r.try_get("performed_by")?;
        let status = BookingStatus::parse(&r.try_get::<String, _>("status")?)?;
        let n: i64 = r.try_get("n")?;
        let seconds: i64 = r.try_get("seconds")?;
        let for_others: i64 = r.try_get("for_others")?;
        let Some(load) = out.iter_mut().find(|l| l.municipality.as_str() == code) else {
            continue;
        };
        match status {
            BookingStatus::Cancelled => load.cancelled += n,
            other => {
                load.bookings += n;
                load.booked_minutes += seconds / 60;
                load.performed_for_others += for_others;
                match other {
                    BookingStatus::Completed => load.completed += n,
                    BookingStatus::NoShow => load.no_shows += n,
                    _ => {}
                }
            }
        }
    }
    for load in &mut out {
        if load.published_minutes > 0 {
            load.utilisation = load.booked_minutes as f64 / load.published_minutes as f64;
        }
    }
    Ok(out)
}

/// Every availability template.
pub async fn all_templates(db: &Db) -> Result<Vec<Template>, Error> {
    templates_where(db, None).await
}

/// One staff member's availability templates.
pub async fn templates_for(db: &Db, staff_id: &str) -> Result<Vec<Template>, Error> {
    templates_where(db, Some(staff_id)).await
}

async fn templates_where(db: &Db, staff_id: Option<&str>) -> Result<Vec<Template>, Error> {
    let rows = sqlx::query(
        "SELECT id, staff_id, weekday, start_minute, end_minute, valid_from, valid_to FROM availability_templates \
         WHERE ($1 IS NULL OR staff_id = $1) ORDER BY staff_id, weekday, start_minute",
    )
    .bind(staff_id)
    .fetch_all(db.pool())
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Template {
                id: r.try_get("id")?,
                staff_id: r.try_get("staff_id")?,
                weekday: r.try_get::<i64, _>("weekday")? as i8,
                start_minute: r.try_get::<i64, _>("start_minute")? as i16,
                end_minute: r.try_get::<i64, _>("end_minute")? as i16,
                valid_from: catalog::parse_date(&r.try_get::<String, _>("valid_from")?)?,
                valid_to: catalog::parse_date(&r.try_get::<String, _>("valid_to")?)?,
            })
        })
        .collect()
}

/// Adds a template after checking it does not overlap the staff member's
/// other windows on the same weekday and dates.
pub async fn add_template(db: &Db, template: &Template) -> Result<Template, Error> {
    template.validate()?;
    let existing = templates_for(db, &template.staff_id).await?;
    let clash = existing.iter().any(|t| {
        t.weekday == template.weekday
            && t.start_minute < template.end_minute
            && template.start_minute < t.end_minute
            && t.valid_from <= template.valid_to
            && template.valid_from <= t.valid_to
    });
    if clash {
        return Err(Error::Conflict(
            "the window overlaps another window of the same staff member".into(),
        ));
    }
    let mut stored = template.clone();
    stored.id = uuid::Uuid::new_v4().to_string();
    let _turn = db.write_turn().await;
    let mut tx = db.pool().begin().await?;
    sqlx::query(
        "INSERT INTO availability_templates (id, staff_id, weekday, start_minute, end_minute, valid_from, valid_to) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&stored.id)
    .bind(&stored.staff_id)
    .bind(i64::from(stored.weekday))
    .bind(i64::from(stored.start_minute))
    .bind(i64::from(stored.end_minute))
    .bind(stored.valid_from.to_string())
    .bind(stored.valid_to.to_string())
    .execute(&mut *tx)
    .await?;
    crate::snapshot::bump(&mut tx).await?;
    tx.commit().await?;
    Ok(stored)
}

pub async fn delete_template(db: &Db, staff_id: &str, id: &str) -> Result<(), Error> {
    let _turn = db.write_turn().await;
    let mut tx = db.pool().begin().await?;
    let done = sqlx::query("DELETE FROM availability_templates WHERE id = $1 AND staff_id = $2")
        .bind(id)
        .bind(staff_id)
        .execute(&mut *tx)
        .await?;
    if done.rows_affected() == 0 {
        return Err(Error::NotFound);
    }
    crate::snapshot::bump(&mut tx).await?;
    tx.commit().await?;
    Ok(())
}

/// Records how a meeting went: `completed` or `no_show`, and only for a
/// booking that is still `booked`, so a cancelled booking never turns into a
/// meeting. Returns the booking as it is now, or `Conflict` if it was not
/// booked. The change is audit-logged as the system's.
pub async fn record_outcome(
    db: &Db,
    booking_id: &str,
    outcome: BookingStatus,
    now: Timestamp,
) -> Result<Booking, Error> {
    if !matches!(outcome, BookingStatus::Completed | BookingStatus::NoShow) {
        return Err(Error::Conflict(format!(
            "a meeting cannot end as {}",
            outcome.as_str()
        )));
    }
    let _turn = db.write_turn().await;
    let mut tx = db.pool().begin().await?;
    let row = sqlx::query(&format!(
        "UPDATE bookings SET status = $1, sequence = sequence + 1, updated_at = $2 \
         WHERE id = $3 AND status = 'booked' RETURNING {BOOKING_COLUMNS}"
    ))
    .bind(outcome.as_str())
    .bind(now.as_second())
    .bind(booking_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        return Err(Error::Conflict("the booking is not booked".into()));
    };
    let booking = booking_from_row(&row)?;
    let action = format!("booking.{}", outcome.as_str());
    audit::record(
        &mut tx,
        &booking_entry(&Actor::System, &action, &booking, Outcome::Allowed),
        now.as_second(),
    )
    .await?;
    tx.commit().await?;
    Ok(booking)
}

/// The policy's answer for `host` acting for a resident of `home` at `at`.
pub async fn decide_for(
    db: &Db,
    host: &MunicipalityCode,
    home: &MunicipalityCode,
    service: &ServiceCode,
    step: Step,
    at: Timestamp,
) -> Result<Decision, Error> {
    let catalog = snapshot::current(db).await?;
    decide_in(&catalog, host, home, service, step, at)
}

/// [`decide_for`] over a catalog the caller already holds.
pub(crate) fn decide_in(
    catalog: &Snapshot,
    host: &MunicipalityCode,
    home: &MunicipalityCode,
    service: &ServiceCode,
    step: Step,
    at: Timestamp,
) -> Result<Decision, Error> {
    let rule = catalog.rule(service, step);
    let agreements = catalog.agreements_for(home);
    let date = at.to_zoned(zone(DISPLAY_ZONE)?).date();
    Ok(policy::decide(
        rule,
        host,
        home,
        service,
        step,
        date,
        &agreements,
    ))
}

// ---------------------------------------------------------------------------

const BOOKING_COLUMNS: &str =
    "id, resident_id, staff_id, service_code, step, starts_at, ends_at, status, \
    performed_by, performed_for, agreement_id, rule, sequence, neutral_title";

fn booking_from_row(r: &AnyRow) -> Result<Booking, Error> {
    Ok(Booking {
        id: r.try_get("id")?,
        resident_id: r.try_get("resident_id")?,
        staff_id: r.try_get("staff_id")?,
        service: ServiceCode::parse(&r.try_get::<String, _>("service_code")?)?,
        step: Step::parse(&r.try_get::<String, _>("step")?)?,
        range: SlotRange::from_unix(r.try_get("starts_at")?, r.try_get("ends_at")?)?,
        status: BookingStatus::parse(&r.try_get::<String, _>("status")?)?,
        performed_by: MunicipalityCode::parse(&r.try_get::<String, _>("performed_by")?)?,
        performed_for: MunicipalityCode::parse(&r.try_get::<String, _>("performed_for")?)?,
        agreement_id: r.try_get("agreement_id")?,
        rule: r.try_get("rule")?,
        sequence: r.try_get("sequence")?,
        neutral_title: r
            .try_get::<Option<String>, _>("neutral_title")?
            .as_deref()
            .map(NeutralTitle::parse)
            .transpose()?,
    })
}

/// A staff member free at a time, with the policy decision that lets them
/// serve the resident.
#[derive(Debug, Clone)]
struct Candidate {
    staff_id: String,
    municipality: MunicipalityCode,
    range: SlotRange,
    decision: Decision,
}

/// What a search or a booking asks for.
struct Wanted<'a> {
    service: &'a ServiceCode,
    home: &'a MunicipalityCode,
    language: Option<Language>,
    /// Staff booking for a resident book only their own time.
    only_staff: Option<&'a str>,
}

/// How often booking looks again after the database refused its pick. Only
/// a booking at another, overlapping start can cause that, so a second look
/// almost always succeeds.
const PLACE_ATTEMPTS: usize = 3;

/// How often a booking reads again when the catalog changed since this
/// process loaded it; each time loads the newer one.
const CATALOG_ATTEMPTS: usize = 3;

/// The free slots in `from..=to` (or only the one starting at `exact_start`),
/// each with the staff who could take it, given who is `busy` when.
fn free_slots(
    catalog: &Snapshot,
    wanted: &Wanted<'_>,
    from: Date,
    to: Date,
    now: Timestamp,
    exact_start: Option<Timestamp>,
    busy: &HashMap<String, Vec<SlotRange>>,
) -> Result<BTreeMap<SlotRange, Vec<Candidate>>, Error> {
    let service_code = wanted.service;
    let home = wanted.home;
    let service = catalog.services.get(service_code).ok_or(Error::NotFound)?;
    catalog.municipality(home).ok_or(Error::NotFound)?;
    let rule = catalog.rule(service_code, Step::Meeting);
    let agreements: Vec<Agreement> = catalog.agreements_for(home);
    let tz = zone(DISPLAY_ZONE)?;
    let staff = catalog
        .staff
        .iter()
        .filter(|s| s.handles(service_code))
        .filter(|s| wanted.language.is_none_or(|l| s.languages.contains(&l)))
        .filter(|s| wanted.only_staff.is_none_or(|id| s.id == id));
    let shape = SlotShape {
        slot_minutes: service.slot_minutes,
        buffer_minutes: service.buffer_minutes,
    };
    let mut out: BTreeMap<SlotRange, Vec<Candidate>> = BTreeMap::new();
    let mut decisions: HashMap<(MunicipalityCode, Date), Decision> = HashMap::new();
    for s in staff {
        let own = catalog.templates_of(&s.id);
        if own.is_empty() {
            continue;
        }
        let taken = busy.get(&s.id).map(Vec::as_slice).unwrap_or_default();
        let (exact, day);
        let ranges: &[SlotRange] = match exact_start {
            // Booking: one time on one day.
            Some(start) if from == to => {
                exact = slots::slot_at(own, shape, from, start, &tz);
                exact.as_slice()
            }
            _ => {
                day = slots::generate(own, shape, from, to, &tz);
                &day
            }
        };
        for &range in ranges {
            if range.start() <= now
                || exact_start.is_some_and(|t| t != range.start())
                || conflicts(&range, taken, service)
            {
                continue;
            }
            let date = range.start().to_zoned(tz.clone()).date();
            let decision = decisions
                .entry((s.municipality.clone(), date))
                .or_insert_with(|| {
                    policy::decide(
                        rule,
                        &s.municipality,
                        home,
                        service_code,
                        Step::Meeting,
                        date,
                        &agreements,
                    )
                })
                .clone();
            if !decision.allowed() {
                continue;
            }
            out.entry(range).or_default().push(Candidate {
                staff_id: s.id.clone(),
                municipality: s.municipality.clone(),
                range,
                decision,
            });
        }
    }
    Ok(out)
}

/// The staff member who should take the slot starting exactly at
/// `starts_at`, held for the caller: the least loaded that week relative to
/// their published time, ties broken toward the resident's home
/// municipality, then at random. Staff another booking in this process holds
/// are passed over. No one free is a conflict.
async fn best_free(
    db: &Db,
    wanted: &Wanted<'_>,
    starts_at: Timestamp,
    now: Timestamp,
    moving: Option<&str>,
) -> Result<(Candidate, Hold), Error> {
    let tz = zone(DISPLAY_ZONE)?;
    let day = starts_at.to_zoned(tz.clone()).date();
    let monday = load::week_of(starts_at, &tz);
    let around = |delta: i64| {
        Timestamp::from_second(starts_at.as_second() + delta)
            .map_err(|e| Error::Corrupt(e.to_string()))
    };
    // The catalog this process has, checked against the version read with
    // the busy times; a newer one is loaded and the times read again, since
    // the service's slot length sets how far around the start to look.
    let mut catalog = match snapshot::last_loaded(db) {
        Some(catalog) => catalog,
        None => snapshot::current(db).await?,
    };
    let mut read = None;
    for _ in 0..CATALOG_ATTEMPTS {
        let service = catalog
            .services
            .get(wanted.service)
            .ok_or(Error::NotFound)?;
        // Only bookings near the start matter, however full the day is.
        let margin = (service.slot_minutes + 2 * service.buffer_minutes) * 60;
        let seen = surroundings(db, around(-margin)?, around(margin)?, moving, monday).await?;
        if seen.catalog_version == catalog.version() {
            read = Some(seen);
            break;
        }
        catalog = snapshot::at_version(db, seen.catalog_version).await?;
    }
    let Some(Surroundings { busy, booked, .. }) = read else {
        return Err(Error::Conflict(
            "the catalog changed while the time was being booked; try again".into(),
        ));
    };
    let found = free_slots(&catalog, wanted, day, day, now, Some(starts_at), &busy)?;
    let candidates: Vec<Candidate> = found.into_values().flatten().collect();
    if candidates.is_empty() {
        return Err(Error::Conflict("that time is not available".into()));
    }
    let published_in_week = catalog.published_in_week(monday)?;
    let mut ranked: Vec<(f64, bool, Candidate)> = candidates
        .into_iter()
        .map(|c| {
            let minutes = booked.get(&c.staff_id).copied().unwrap_or(0) / 60;
            let published = published_in_week.get(&c.staff_id).copied().unwrap_or(0);
            let away = &c.municipality != wanted.home;
            (minutes as f64 / published.max(1) as f64, away, c)
        })
        .collect();
    // Equals stay in random order, so that bookings spread over them.
    ranked.shuffle(&mut rand::thread_rng());
    ranked.sort_by(|(ra, aa, _), (rb, ab, _)| ra.total_cmp(rb).then(aa.cmp(ab)));
    ranked
        .into_iter()
        .find_map(|(_, _, c)| {
            db.hold(&c.staff_id, c.range.start().as_second())
                .map(|hold| (c, hold))
        })
        .ok_or_else(|| Error::Conflict("that time is no longer available".into()))
}

/// Active bookings per staff member that touch `[from, to)`, leaving out
/// `ignore_booking` (the one being moved).
///
/// The database joins each staff member's ranges into one text, so that a
/// month's search reads one row per staff member instead of one per booking:
/// sqlx hands over SQLite's rows at about 2 µs each, and a month in a busy
/// municipality holds tens of thousands of bookings (BENCHMARKS.md).
async fn busy_times(
    db: &Db,
    from: Timestamp,
    to: Timestamp,
    ignore_booking: Option<&str>,
) -> Result<HashMap<String, Vec<SlotRange>>, Error> {
    // PostgreSQL plans a prepared statement once for all values after a few
    // runs, with the table as big as it was then. A plan made while the
    // table was small scans every active booking through another partial
    // index once it has grown (0.6 ms a booking at 10,000), and stays until
    // the next ANALYZE. Planned afresh for each call, it uses the range.
    // (`surroundings_sql` shows how a prepared statement can be kept from
    // outliving the table its plan was made for.)
    let query = busy_query(busy_sql(ignore_booking.is_some()), from, to, ignore_booking)
        .persistent(db.backend() == Backend::Sqlite);
    let mut busy = HashMap::new();
    for r in query.fetch_all(db.pool()).await? {
        let ranges: String = r.try_get("ranges")?;
        busy.insert(r.try_get("staff_id")?, parse_ranges(&ranges)?);
    }
    Ok(busy)
}

/// What picking a staff member for a time reads, in one trip to the
/// database: the busy times around it as [`busy_times`], the booked
/// seconds of its week per staff member, and the catalog's version. The
/// week's load comes joined into one row (`staff:seconds,...`), not a row
/// per staff member: a busy week holds some fifty, and a row costs kontakt
/// more than its part of a text (a tenth of kontakt's CPU per booking in
/// the booking benchmark, BENCHMARKS.md).
struct Surroundings {
    busy: HashMap<String, Vec<SlotRange>>,
    booked: HashMap<String, i64>,
    catalog_version: i64,
}

async fn surroundings(
    db: &Db,
    from: Timestamp,
    to: Timestamp,
    ignore_booking: Option<&str>,
    monday: Date,
) -> Result<Surroundings, Error> {
    let sql = surroundings_sql(db.backend(), ignore_booking.is_some(), db.bookings_scale());
    // Prepared on both databases (see `surroundings_sql`).
    let query = busy_query(sql, from, to, ignore_booking).bind(monday.to_string());
    let mut out = Surroundings {
        busy: HashMap::new(),
        booked: HashMap::new(),
        catalog_version: -1,
    };
    let number = |v: &str| {
        v.parse::<i64>()
            .map_err(|_| Error::Corrupt(format!("{v:?} where a number belongs")))
    };
    for r in query.fetch_all(db.pool()).await? {
        let kind: String = r.try_get("kind")?;
        let value: String = r.try_get("value")?;
        match kind.as_str() {
            "busy" => out
                .busy
                .entry(r.try_get("staff_id")?)
                .or_default()
                .extend(parse_ranges(&value)?),
            "load" => {
                for pair in value.split(',').filter(|p| !p.is_empty()) {
                    let (staff_id, seconds) = pair.rsplit_once(':').ok_or_else(|| {
                        Error::Corrupt(format!("{pair:?} where staff:seconds belongs"))
                    })?;
                    out.booked.insert(staff_id.to_owned(), number(seconds)?);
                }
            }
            "version" => out.catalog_version = number(&value)?,
            "pages" => db.set_bookings_scale(size_class(number(&value)?)),
            other => return Err(Error::Corrupt(format!("a row of kind {other:?}"))),
        }
    }
    Ok(out)
}

/// The size class of a table of `pages` pages: it grows by one each time
/// the table doubles.
fn size_class(pages: i64) -> u32 {
    (u64::try_from(pages).unwrap_or(0) + 1).ilog2()
}

/// The active bookings that touch the range `$1` to `$2`, as the `FROM`
/// and `WHERE` of [`busy_sql`] and [`surroundings_sql`]; `$3` is a day
/// before `$1`. A booking is at most a day long (the schema checks it), so
/// the ones that touch the range start at most a day before it: that bound
/// keeps the index scan to the range instead of everything before it.
macro_rules! active_near {
    () => {
        "FROM bookings WHERE status = 'booked' AND starts_at > $3 AND starts_at < $2 AND ends_at > $1"
    };
}

/// The query of [`surroundings`]: the placeholders of [`busy_sql`] and
/// after them one more, the week. Unlike [`busy_sql`] it reads a row per
/// booking, not per staff member: the window around one time holds a few
/// bookings per staff member at most, and without the GROUP BY PostgreSQL
/// plans it faster and sorts nothing (8 % less of its CPU per booking).
///
/// Planning it cost PostgreSQL more than running it (0.1 ms against
/// 0.05 ms), once per booking, so it is prepared there too, where after five
/// runs PostgreSQL keeps one plan for all values. That plan is only as good
/// as the table was big when it was made: made while `bookings` held a few
/// pages it reads the whole table, and stays until the next ANALYZE, while a
/// busy hour may multiply the table first (2.9 ms a read in the booking
/// benchmark). So on PostgreSQL the query also reads the table's size in
/// pages, and its text names the size class `scale` that the last read saw
/// ([`size_class`]): each doubling of the table makes it a new statement,
/// planned afresh for the table as it is then. The plan of a class is thus
/// never used on a table more than twice the size it was made for.
fn surroundings_sql(backend: Backend, but_one: bool, scale: u32) -> &'static str {
    macro_rules! load_and_version {
        ($week:literal) => {
            concat!(
                " UNION ALL SELECT 'load', '', COALESCE(string_agg(staff_id || ':' || booked_seconds, ','), '') FROM staff_week_load WHERE week = ",
                $week,
                " UNION ALL SELECT 'version', '', CAST(version AS TEXT) FROM catalog_version WHERE id = 1"
            )
        };
    }
    const ALL: &str = concat!(
        "SELECT 'busy' AS kind, staff_id, starts_at || ':' || ends_at AS value ",
        active_near!(),
        load_and_version!("$4")
    );
    const BUT_ONE: &str = concat!(
        "SELECT 'busy' AS kind, staff_id, starts_at || ':' || ends_at AS value ",
        active_near!(),
        " AND id <> $4",
        load_and_version!("$5")
    );
    // PostgreSQL's texts, made once per size class (at most 64, as the
    // class of a 64-bit page count) rather than once per booking.
    static POSTGRES: [[OnceLock<String>; 64]; 2] = [const { [const { OnceLock::new() }; 64] }; 2];
    let sql = if but_one { BUT_ONE } else { ALL };
    match backend {
        Backend::Sqlite => sql,
        Backend::Postgres => POSTGRES[usize::from(but_one)][scale.min(63) as usize].get_or_init(|| {
            format!(
                "{sql} UNION ALL SELECT 'pages', '', CAST(pg_relation_size('bookings') / 8192 AS TEXT) \
                 /* planned for bookings of size class {scale} */"
            )
        }),
    }
}

/// The busy-times query: `$1` and `$2` the range, `$3` the earliest start
/// that can reach into it, and `$4` the booking to leave out if `but_one`.
fn busy_sql(but_one: bool) -> &'static str {
    const ALL: &str = concat!(
        "SELECT staff_id, string_agg(starts_at || ':' || ends_at, ',') AS ranges ",
        active_near!(),
        " GROUP BY staff_id"
    );
    const BUT_ONE: &str = concat!(
        "SELECT staff_id, string_agg(starts_at || ':' || ends_at, ',') AS ranges ",
        active_near!(),
        " AND id <> $4 GROUP BY staff_id"
    );
    if but_one {
        BUT_ONE
    } else {
        ALL
    }
}

/// `sql`, which holds the placeholders of [`busy_sql`], with the busy-times
/// values bound. sqlx prepares it; [`busy_times`] says why it does not keep
/// it on PostgreSQL.
fn busy_query<'q>(
    sql: &'q str,
    from: Timestamp,
    to: Timestamp,
    ignore_booking: Option<&'q str>,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    let query = sqlx::query(sql)
        .bind(from.as_second())
        .bind(to.as_second())
        .bind(from.as_second() - MAX_BOOKING_SECONDS);
    match ignore_booking {
        Some(id) => query.bind(id),
        None => query,
    }
}

/// `start:end,start:end,...` in Unix seconds, as [`busy_times`] asks the
/// database to join them.
fn parse_ranges(joined: &str) -> Result<Vec<SlotRange>, Error> {
    let corrupt = || Error::Corrupt("busy ranges that are not start:end pairs".into());
    joined
        .split(',')
        .map(|pair| {
            let (start, end) = pair.split_once(':').ok_or_else(corrupt)?;
            let start = start.parse().map_err(|_| corrupt())?;
            let end = end.parse().map_err(|_| corrupt())?;
            SlotRange::from_unix(start, end).map_err(Error::from)
        })
        .collect()
}

/// Whether `range` collides with a booking, keeping the service's buffer free
/// on both sides.
fn conflicts(range: &SlotRange, taken: &[SlotRange], service: &Service) -> bool {
    let buffer = service.buffer_minutes * 60;
    taken.iter().any(|b| {
        b.start().as_second() < range.end().as_second() + buffer
            && range.start().as_second() < b.end().as_second() + buffer
    })
}

/// The neutral title a mail about `booking` goes out under, or `None` for an
/// ordinary mail: the one place that decides whether a booking's mail is
/// discreet. It is when its service is, or when the resident asked for
/// discreet mail for all their bookings.
pub fn discretion(
    discreet_service: bool,
    resident: &Resident,
    booking: &Booking,
) -> Option<NeutralTitle> {
    (discreet_service || resident.discreet_mail).then(|| booking.neutral_title.unwrap_or_default())
}

/// Whether `service`'s mail must be discreet. An unknown service counts as
/// discreet: the safe side when the catalog and a booking disagree.
async fn service_is_discreet(db: &Db, service: &ServiceCode) -> Result<bool, Error> {
    Ok(snapshot::current(db)
        .await?
        .services
        .get(service)
        .is_none_or(|s| s.discreet))
}

fn new_booking(
    resident: &Resident,
    service: &ServiceCode,
    candidate: &Candidate,
    neutral_title: Option<NeutralTitle>,
) -> Booking {
    Booking {
        id: uuid::Uuid::now_v7().to_string(),
        resident_id: resident.id.clone(),
        staff_id: candidate.staff_id.clone(),
        service: service.clone(),
        step: Step::Meeting,
        range: candidate.range,
        status: BookingStatus::Booked,
        performed_by: candidate.municipality.clone(),
        performed_for: resident.home.clone(),
        agreement_id: candidate.decision.agreement_id().map(str::to_owned),
        rule: candidate.decision.rule_label().to_owned(),
        sequence: 0,
        neutral_title,
    }
}

fn insert_statement(booking: &Booking, token: &str, now: Timestamp) -> Statement {
    Statement::new(
        "INSERT INTO bookings (id, resident_id, staff_id, service_code, step, starts_at, ends_at, status, performed_by, \
         performed_for, agreement_id, rule, manage_token_hash, created_at, updated_at, neutral_title) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'booked', $8, $9, $10, $11, $12, $13, $13, $14)",
    )
    .bind(booking.id.as_str())
    .bind(booking.resident_id.as_str())
    .bind(booking.staff_id.as_str())
    .bind(booking.service.as_str())
    .bind(booking.step.as_str())
    .bind(booking.range.start().as_second())
    .bind(booking.range.end().as_second())
    .bind(booking.performed_by.as_str())
    .bind(booking.performed_for.as_str())
    .bind(booking.agreement_id.as_deref())
    .bind(booking.rule.as_str())
    .bind(token_hash(token))
    .bind(now.as_second())
    .bind(booking.neutral_title.map(NeutralTitle::as_str))
}

/// The confirmation of a new booking.
fn confirmation(booking: &Booking, token: &str) -> Message {
    Message::BookingConfirmed {
        booking_id: booking.id.clone(),
        starts_at: booking.range.start().as_second(),
        ends_at: booking.range.end().as_second(),
        sequence: booking.sequence,
        manage_token: token.to_owned(),
    }
}

/// `first`, due now, and the reminders of `booking`, as one insert to run in
/// the transaction that makes the change.
fn announce(
    resident: &Resident,
    first: Message,
    booking: &Booking,
    token: &str,
    discreet: Option<NeutralTitle>,
    now: Timestamp,
) -> Statement {
    let mut messages = vec![(first, now.as_second())];
    for minutes in REMINDER_MINUTES {
        let due = booking.range.start().as_second() - minutes * 60;
        if due <= now.as_second() {
            continue;
        }
        let message = Message::Reminder {
            booking_id: booking.id.clone(),
            starts_at: booking.range.start().as_second(),
            ends_at: booking.range.end().as_second(),
            minutes_before: minutes,
            manage_token: token.to_owned(),
        };
        messages.push((message, due));
    }
    outbox::enqueue_all(
        &resident.email,
        resident.language,
        &messages,
        discreet,
        now.as_second(),
    )
}

/// Finds the booking a caller may manage. A token finds its own booking; a
/// resident finds only their own, and asking for another's is audit-logged and
/// answered exactly as a missing booking.
/// The still-booked booking a caller may change, with its resident. Any
/// other status is a conflict: a cancelled booking cannot be `verb`.
async fn find_active(
    db: &Db,
    authority: Authority<'_>,
    booking_id: Option<&str>,
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

async fn find_managed(
    db: &Db,
    authority: Authority<'_>,
    booking_id: Option<&str>,
    now: Timestamp,
) -> Result<Booking, Error> {
    match authority {
        // A spent or expired token finds nothing (`by_token` says why).
        Authority::Token(token) => by_token(db, token, now).await,
        Authority::Resident(resident) => {
            let id = booking_id.ok_or(Error::NotFound)?;
            let row = sqlx::query(&format!(
                "SELECT {BOOKING_COLUMNS} FROM bookings WHERE id = $1"
            ))
            .bind(id)
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

fn authority_actor(authority: Authority<'_>) -> Actor {
    match authority {
        Authority::Token(_) => Actor::Anonymous,
        Authority::Resident(r) => Actor::Resident(r.id.clone()),
    }
}

fn booking_entry<'a>(
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
        rule: Some(&booking.rule),
        agreement_id: booking.agreement_id.as_deref(),
        outcome,
    }
}

/// The time zone named `name`, from the bundled database.
pub fn zone(name: &str) -> Result<TimeZone, Error> {
    TimeZone::get(name).map_err(|e| Error::Corrupt(format!("time zone {name}: {e}")))
}

/// The absolute start of `day` and of the day after, in `tz`.
pub fn day_bounds(day: Date, tz: &TimeZone) -> Result<(Timestamp, Timestamp), Error> {
    // Only a date at the very end of the calendar has no next day; it came
    // from a caller, not from storage, so it is invalid input.
    let beyond = |e: jiff::Error| {
        Error::Invalid(crate::InvalidValue {
            field: "date",
            reason: e.to_string(),
        })
    };
    let start = day.to_zoned(tz.clone()).map_err(beyond)?;
    let end = start.tomorrow().map_err(beyond)?;
    Ok((start.timestamp(), end.timestamp()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The demo seed, a Helsingborg resident, and the first staff member
    /// by id, whose 45-minute bookings for that resident the tests write
    /// directly.
    struct OneStaff {
        resident: Resident,
        staff_id: String,
        municipality: MunicipalityCode,
    }

    impl OneStaff {
        async fn seeded(db: &Db, name: &str, now: Timestamp) -> OneStaff {
            let today = now.to_zoned(zone(DISPLAY_ZONE).unwrap()).date();
            crate::seed::demo(db, today, now.as_second()).await.unwrap();
            let resident = crate::accounts::create_resident(
                db,
                &crate::EmailAddress::parse(&format!("{name}@example.se")).unwrap(),
                &crate::PersonName::parse(name).unwrap(),
                &MunicipalityCode::parse("1283").unwrap(),
                Language::Sv,
                now.as_second(),
            )
            .await
            .unwrap();
            let row = sqlx::query("SELECT id, municipality_code FROM staff ORDER BY id LIMIT 1")
                .fetch_one(db.pool())
                .await
                .unwrap();
            let municipality: String = row.try_get("municipality_code").unwrap();
            OneStaff {
                resident,
                staff_id: row.try_get("id").unwrap(),
                municipality: MunicipalityCode::parse(&municipality).unwrap(),
            }
        }

        /// Writes `count` active bookings an hour apart from `from`.
        async fn book_hourly(&self, db: &Db, from: i64, count: i64, now: Timestamp) {
            for i in 0..count {
                let booking = self.booking(from + i * 3600, BookingStatus::Booked);
                db.run(&[insert_statement(&booking, &random_token(), now)])
                    .await
                    .unwrap();
            }
        }

        fn booking(&self, start: i64, status: BookingStatus) -> Booking {
            Booking {
                id: uuid::Uuid::now_v7().to_string(),
                resident_id: self.resident.id.clone(),
                staff_id: self.staff_id.clone(),
                service: ServiceCode::parse("stod-till-anhoriga").unwrap(),
                step: Step::Meeting,
                range: SlotRange::from_unix(start, start + 2700).unwrap(),
                status,
                performed_by: self.municipality.clone(),
                performed_for: self.resident.home.clone(),
                agreement_id: None,
                rule: "home".into(),
                sequence: 0,
                neutral_title: None,
            }
        }
    }

    /// Overlapping bookings of one staff member that reach the database at
    /// once, so that they share a batch (on PostgreSQL, one statement):
    /// one of each pair stands, and the other is refused as a conflict.
    #[tokio::test]
    async fn overlapping_bookings_written_together_are_refused_by_the_database() {
        for database in crate::testing::databases().await {
            let db = &database.db;
            let now = Timestamp::now();
            let one = OneStaff::seeded(db, "overlap", now).await;
            let staff_id = &one.staff_id;
            let booking = |start: i64| one.booking(start, BookingStatus::Booked);
            // Sixteen pairs an hour apart, the second of each starting 15
            // minutes into the first.
            let base = now.as_second() + 30 * 86400;
            let writes: Vec<Vec<Statement>> = (0..16)
                .flat_map(|i| [base + i * 3600, base + i * 3600 + 900])
                .map(|start| vec![insert_statement(&booking(start), &random_token(), now)])
                .collect();
            let results = futures::future::join_all(writes.iter().map(|w| db.run(w))).await;
            for (i, pair) in results.chunks(2).enumerate() {
                let refused = pair
                    .iter()
                    .filter(|r| matches!(r, Err(e) if is_booking_conflict(e)))
                    .count();
                let stood = pair.iter().filter(|r| r.is_ok()).count();
                assert_eq!(
                    (stood, refused),
                    (1, 1),
                    "{} pair {i}: {pair:?}",
                    database.url
                );
            }
            let active: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM bookings WHERE staff_id = $1 AND status = 'booked' AND starts_at >= $2",
            )
            .bind(staff_id)
            .bind(base)
            .fetch_one(db.pool())
            .await
            .unwrap();
            assert_eq!(active, 16, "{}", database.url);
        }
    }

    /// What booking reads around a time holds every active booking of a
    /// staff member in the window, one row each, and leaves out the one
    /// being moved and those outside the window or cancelled.
    #[tokio::test]
    async fn the_surroundings_of_a_time_hold_each_booking_near_it() {
        for database in crate::testing::databases().await {
            let db = &database.db;
            let now = Timestamp::now();
            let tz = zone(DISPLAY_ZONE).unwrap();
            let one = OneStaff::seeded(db, "around", now).await;
            let staff_id = &one.staff_id;
            let base = now.as_second() + 30 * 86400;
            let mut written = Vec::new();
            // Before, at and after `base`, one far away, and one cancelled.
            for (start, status) in [
                (base - 3600, BookingStatus::Booked),
                (base, BookingStatus::Booked),
                (base + 3600, BookingStatus::Booked),
                (base + 5 * 86400, BookingStatus::Booked),
                (base + 7200, BookingStatus::Cancelled),
            ] {
                let booking = one.booking(start, status);
                db.run(&[insert_statement(&booking, &random_token(), now)])
                    .await
                    .unwrap();
                if status == BookingStatus::Cancelled {
                    sqlx::query("UPDATE bookings SET status = 'cancelled' WHERE id = $1")
                        .bind(&booking.id)
                        .execute(db.pool())
                        .await
                        .unwrap();
                }
                written.push(booking);
            }
            let at = |s: i64| Timestamp::from_second(s).unwrap();
            let monday = load::week_of(at(base), &tz);
            let (from, to) = (at(base - 4 * 3600), at(base + 4 * 3600));
            let near: Vec<SlotRange> = written[..3].iter().map(|b| b.range).collect();

            // The week's load: none, then the one at `base` counted twice
            // for this staff member and once for another.
            let seen = surroundings(db, from, to, None, monday).await.unwrap();
            assert!(seen.booked.is_empty(), "{}", database.url);
            let counted = load::adjust(staff_id, &written[1].range, 1, &tz);
            db.run(std::slice::from_ref(&counted)).await.unwrap();
            db.run(&[counted]).await.unwrap();
            let other: String =
                sqlx::query_scalar("SELECT id FROM staff ORDER BY id LIMIT 1 OFFSET 1")
                    .fetch_one(db.pool())
                    .await
                    .unwrap();
            db.run(&[load::adjust(&other, &written[1].range, 1, &tz)])
                .await
                .unwrap();

            let seen = surroundings(db, from, to, None, monday).await.unwrap();
            let mut busy = seen.busy.get(staff_id).cloned().unwrap_or_default();
            busy.sort();
            assert_eq!(busy, near, "{}", database.url);
            assert!(seen.catalog_version >= 0, "{}", database.url);
            let seconds = written[1].range.end().as_second() - written[1].range.start().as_second();
            assert_eq!(
                seen.booked,
                HashMap::from([(staff_id.clone(), 2 * seconds), (other, seconds)]),
                "{}",
                database.url
            );

            let moving = written[1].id.as_str();
            let seen = surroundings(db, from, to, Some(moving), monday)
                .await
                .unwrap();
            let mut busy = seen.busy.get(staff_id).cloned().unwrap_or_default();
            busy.sort();
            assert_eq!(busy, vec![near[0], near[2]], "{}", database.url);
        }
    }

    /// The size class grows by one each time the table doubles.
    #[test]
    fn a_size_class_grows_with_each_doubling() {
        let classes: Vec<u32> = [-1, 0, 1, 2, 3, 6, 7, 1_000_000]
            .into_iter()
            .map(size_class)
            .collect();
        assert_eq!(classes, [0, 0, 1, 1, 2, 2, 3, 19]);
    }

    /// On PostgreSQL a read around a time notes how big `bookings` has
    /// grown, and the next read is a statement of its own, planned for that
    /// size. SQLite plans each statement once per connection anyway.
    #[tokio::test]
    async fn a_read_around_a_time_is_planned_again_when_bookings_has_grown() {
        for database in crate::testing::databases().await {
            let db = &database.db;
            let now = Timestamp::now();
            let tz = zone(DISPLAY_ZONE).unwrap();
            let one = OneStaff::seeded(db, "growing", now).await;
            let base = now.as_second() + 30 * 86400;
            let at = |s: i64| Timestamp::from_second(s).unwrap();
            let monday = load::week_of(at(base), &tz);
            let read = || surroundings(db, at(base - 3600), at(base + 3600), None, monday);

            read().await.unwrap();
            let before = db.bookings_scale();
            // A few hundred bookings take several pages.
            one.book_hourly(db, base, 400, now).await;
            // The window holds the first of them only.
            let seen = read().await.unwrap();
            assert_eq!(seen.busy.get(&one.staff_id).map(Vec::len), Some(1));
            let after = db.bookings_scale();
            match db.backend() {
                Backend::Sqlite => assert_eq!((before, after), (0, 0)),
                Backend::Postgres => {
                    let pages: i64 =
                        sqlx::query_scalar("SELECT pg_relation_size('bookings') / 8192")
                            .fetch_one(db.pool())
                            .await
                            .unwrap();
                    assert!(pages >= 4, "{pages} pages");
                    assert_eq!(after, size_class(pages));
                    assert!(after > before, "{before} then {after}");
                    assert_ne!(
                        surroundings_sql(Backend::Postgres, false, before),
                        surroundings_sql(Backend::Postgres, false, after)
                    );
                }
            }
        }
    }

    /// Booking checks the catalog it holds against the version it reads
    /// with the busy times: staff added after this process loaded the
    /// catalog are offered at once.
    #[tokio::test]
    async fn a_booking_sees_staff_added_after_the_catalog_was_loaded() {
        for database in crate::testing::databases().await {
            let db = &database.db;
            let now = Timestamp::now();
            let tz = zone(DISPLAY_ZONE).unwrap();
            let today = now.to_zoned(tz.clone()).date();
            crate::seed::demo(db, today, now.as_second()).await.unwrap();
            let helsingborg = MunicipalityCode::parse("1283").unwrap();
            let service = ServiceCode::parse("stod-till-anhoriga").unwrap();
            let resident = crate::accounts::create_resident(
                db,
                &crate::EmailAddress::parse("night@example.se").unwrap(),
                &crate::PersonName::parse("Night").unwrap(),
                &helsingborg,
                Language::Sv,
                now.as_second(),
            )
            .await
            .unwrap();
            // Cached before the new staff member exists.
            let before = snapshot::current(db).await.unwrap();
            let password = crate::domain::NewPassword::parse("a night shift password").unwrap();
            let staff = crate::accounts::create_staff(
                db,
                &crate::accounts::NewStaff {
                    municipality: helsingborg.clone(),
                    email: crate::EmailAddress::parse("night@kontakt.test").unwrap(),
                    name: crate::PersonName::parse("Night Shift").unwrap(),
                    role: crate::domain::Role::Staff,
                    services: vec![service.clone()],
                    languages: vec![Language::Sv],
                    password_hash: crate::accounts::hash_password(&password).await.unwrap(),
                },
                now.as_second(),
            )
            .await
            .unwrap();
            // Two in the night, when nobody from the demo works.
            let day = today.checked_add(Span::new().days(3)).unwrap();
            add_template(
                db,
                &Template {
                    id: String::new(),
                    staff_id: staff.id.clone(),
                    weekday: day.weekday().to_monday_one_offset(),
                    start_minute: 2 * 60,
                    end_minute: 4 * 60,
                    valid_from: today,
                    valid_to: day,
                },
            )
            .await
            .unwrap();
            let starts_at = day.at(2, 0, 0, 0).to_zoned(tz.clone()).unwrap().timestamp();
            let ticket = book(db, &resident, &service, starts_at, None, now)
                .await
                .unwrap();
            assert_eq!(ticket.booking.staff_id, staff.id, "{}", database.url);
            let after = snapshot::last_loaded(db).unwrap();
            assert!(after.version() > before.version(), "{}", database.url);
        }
    }

    /// The load figures read the days asked for through the index on the
    /// start, not the whole table (nor, on SQLite, a whole index in the
    /// order of the grouping), on both databases. PostgreSQL is given
    /// enough bookings, and statistics, to prefer the index over reading a
    /// small table whole.
    #[tokio::test]
    async fn the_load_figures_read_only_the_days_asked_for() {
        for database in crate::testing::databases().await {
            let db = &database.db;
            let now = Timestamp::now();
            let one = OneStaff::seeded(db, "counted", now).await;
            let base = now.as_second() + 30 * 86400;
            one.book_hourly(db, base, 2000, now).await;
            sqlx::query("ANALYZE").execute(db.pool()).await.unwrap();
            let (explain, detail) = match db.backend() {
                Backend::Sqlite => ("EXPLAIN QUERY PLAN", "detail"),
                Backend::Postgres => ("EXPLAIN", "QUERY PLAN"),
            };
            let plan: Vec<String> = sqlx::query(&format!("{explain} {LOAD_SQL}"))
                .bind(base)
                .bind(base + 7 * 86400)
                .fetch_all(db.pool())
                .await
                .unwrap()
                .iter()
                .map(|r| r.try_get::<String, _>(detail).unwrap())
                .collect();
            assert!(
                plan.iter()
                    .any(|step| step.contains("bookings_time") && !step.contains("SCAN")),
                "{plan:?}"
            );
        }
    }

    #[test]
    fn joined_busy_ranges_parse_in_order_and_anything_else_is_corrupt() {
        let ranges = parse_ranges("1800000000:1800001800,1800003600:1800005400").unwrap();
        let unix: Vec<(i64, i64)> = ranges
            .iter()
            .map(|r| (r.start().as_second(), r.end().as_second()))
            .collect();
        assert_eq!(unix, [(1800000000, 1800001800), (1800003600, 1800005400)]);
        for bad in [
            "",
            "1800000000",
            "1800000000:x",
            "1800001800:1800000000",
            "1:2,",
        ] {
            assert!(
                matches!(
                    parse_ranges(bad),
                    Err(Error::Corrupt(_) | Error::Invalid(_))
                ),
                "{bad:?}"
            );
        }
    }
}
