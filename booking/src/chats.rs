//! Chat pre-assessment: which services a resident may chat about, who may
//! answer, and the offline form's messages, routed as a chat would be. The
//! queue itself lives in `signaling`; this module gives it the policy's
//! answers.

use jiff::Timestamp;
use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::accounts::{Resident, Staff};
use crate::audit::{self, Actor, Entry, Outcome};
use crate::bookings::{decide_in, search_with_municipalities, FreeTimeAt, SearchQuery};
use crate::catalog::{self, Service};
use crate::db::built_sql;
use crate::db::Db;
use crate::domain::{
    DateRange, EmailAddress, InvalidValue, Language, MessageText, MunicipalityCode, PersonName,
    PhoneNumber, ServiceCode, SlotRange, Step,
};
use crate::events::{self, QueueEntryRow};
use crate::ids;
use crate::outbox::{self, Message, NeutralTitle};
use crate::snapshot::{self, Snapshot};
use crate::{Error, ResidentId, RoomId};
use signaling::history::{transcript_for, StoredEvent};
use signaling::ids::PartyId;

/// The municipalities whose staff may perform the pre-assessment of
/// `service` for a resident of `home` at `at`, under the policy, in code
/// order; `None` when there is no such service or municipality. The queue
/// shows a chat to the staff of these municipalities only, and the offline
/// form routes a message the same way.
pub async fn pre_assessors(
    db: &Db,
    service: &ServiceCode,
    home: &MunicipalityCode,
    at: Timestamp,
) -> Result<Option<Vec<MunicipalityCode>>, Error> {
    pre_assessors_in(&*snapshot::current(db).await?, service, home, at)
}

/// [`pre_assessors`] over a catalog the caller already holds.
fn pre_assessors_in(
    catalog: &Snapshot,
    service: &ServiceCode,
    home: &MunicipalityCode,
    at: Timestamp,
) -> Result<Option<Vec<MunicipalityCode>>, Error> {
    if !catalog.services.contains_key(service) || catalog.municipality(home).is_none() {
        return Ok(None);
    }
    let mut eligible = Vec::new();
    for municipality in &catalog.municipalities {
        let decision = decide_in(
            catalog,
            &municipality.code,
            home,
            service,
            Step::PreAssessment,
            at,
        )?;
        if decision.allowed() {
            eligible.push(municipality.code.clone());
        }
    }
    eligible.sort();
    Ok(Some(eligible))
}

/// The services that offer "Chat with us now" to a resident of `home`:
/// those whose pre-assessment may be done by chat and that the policy lets
/// some municipality pre-assess for `home`, bookable services first in
/// code order and [`catalog::GENERAL`] last. Empty for an unknown `home`.
/// The start page asks this for every visitor, so it reads the catalog
/// once, from the snapshot, instead of once per service.
pub async fn offered(
    db: &Db,
    home: &MunicipalityCode,
    at: Timestamp,
) -> Result<Vec<Service>, Error> {
    let catalog = snapshot::current(db).await?;
    let mut offered = Vec::new();
    for service in catalog.services.values().filter(|s| s.chat) {
        let eligible = pre_assessors_in(&catalog, &service.code, home, at)?;
        if eligible.is_some_and(|e| !e.is_empty()) {
            offered.push(service.clone());
        }
    }
    offered.sort_by_key(|s| (s.is_general(), s.code.clone()));
    Ok(offered)
}

impl Resident {
    /// The resident's party in the hub, as the hub names it
    /// ([`PartyId::resident`]).
    pub fn party(&self) -> PartyId {
        PartyId::resident(&self.id)
    }

    /// Whether the resident may read the chat conversation `entry`: only one
    /// they opened while signed in. An anonymous conversation is nobody's to
    /// read afterwards, since nothing ties it to the person asking.
    pub fn may_read_chat(&self, entry: &QueueEntryRow) -> bool {
        !entry.anonymous && entry.resident == self.party().as_str()
    }
}

/// One chat conversation as its resident reads it: its queue entry and the
/// events the resident may see, oldest first, by the hub's own audience rule
/// (`signaling::history::transcript_for`).
#[derive(Debug, Clone, PartialEq)]
pub struct Conversation {
    pub entry: QueueEntryRow,
    pub events: Vec<StoredEvent>,
}

/// The chat conversations `resident` opened while signed in, newest first,
/// whatever their state. The read is audit-logged (`chat.list`) after it,
/// and nothing is returned unless that entry was written.
pub async fn conversations_of(
    db: &Db,
    resident: &Resident,
    now: Timestamp,
) -> Result<Vec<QueueEntryRow>, Error> {
    let party = resident.party();
    let conversations = events::resident_conversations(db, &party).await?;
    chat_read(
        db,
        resident,
        "chat.list",
        party.to_string(),
        Some(&resident.id),
        Some(resident.home.as_str()),
        Outcome::Allowed,
        now,
    )
    .await?;
    Ok(conversations)
}

/// The conversation in `room`, if `resident` may read it
/// ([`Resident::may_read_chat`]); otherwise `NotFound`, as for a missing one.
/// A read is audit-logged (`chat.read`) after it, and nothing is returned
/// unless that entry was written; a refused read of another's conversation
/// is audit-logged too, naming whose it was.
pub async fn conversation_of(
    db: &Db,
    resident: &Resident,
    room: &RoomId,
    now: Timestamp,
) -> Result<Conversation, Error> {
    let entry = match events::queue_entry(db, room).await? {
        Some(entry) if resident.may_read_chat(&entry) => entry,
        Some(entry) => {
            chat_read(
                db,
                resident,
                "chat.read",
                entry.room.clone(),
                resident_of(&entry)?.as_ref(),
                Some(&entry.home_municipality),
                Outcome::Denied,
                now,
            )
            .await?;
            return Err(Error::NotFound);
        }
        None => return Err(Error::NotFound),
    };
    let rows = events::events_after(db, room, 0).await?;
    let events =
        transcript_for(&resident.party(), &rows).map_err(|e| Error::Corrupt(e.to_string()))?;
    chat_read(
        db,
        resident,
        "chat.read",
        entry.room.clone(),
        Some(&resident.id),
        Some(&entry.home_municipality),
        Outcome::Allowed,
        now,
    )
    .await?;
    Ok(Conversation { entry, events })
}

/// The signed-in resident who opened the conversation of `entry`, or
/// `None` for an anonymous one.
fn resident_of(entry: &QueueEntryRow) -> Result<Option<ResidentId>, Error> {
    entry
        .resident
        .strip_prefix("resident:")
        .map(|id| ids::parse_stored("queue entry resident", id))
        .transpose()
}

/// Audits a resident's read of chat conversations, now: `owner` is the
/// resident whose conversation it is.
#[allow(clippy::too_many_arguments)]
async fn chat_read(
    db: &Db,
    resident: &Resident,
    action: &str,
    subject: String,
    owner: Option<&ResidentId>,
    on_behalf_of: Option<&str>,
    outcome: Outcome,
    now: Timestamp,
) -> Result<(), Error> {
    let actor = Actor::Resident(resident.id.clone());
    let entry = Entry {
        actor: &actor,
        action,
        subject,
        resident_id: owner,
        on_behalf_of,
        rule: None,
        agreement_id: None,
        outcome,
    };
    audit::record_now(db, &entry, now.as_second()).await?;
    Ok(())
}

/// A message left through the offline form, as the web layer checked it.
#[derive(Debug, Clone)]
pub struct NewOfflineMessage {
    pub service: ServiceCode,
    /// The sender's home municipality: a signed-in resident's own, or the
    /// one an anonymous sender chose.
    pub home: MunicipalityCode,
    /// The signed-in resident who sent it, if any.
    pub resident: Option<Resident>,
    pub message: MessageText,
    pub name: Option<PersonName>,
    pub contact_email: Option<EmailAddress>,
    pub contact_phone: Option<PhoneNumber>,
    /// The language of the confirmation mail.
    pub language: Language,
}

/// A stored offline message, as staff read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OfflineMessage {
    pub id: String,
    pub service: ServiceCode,
    pub home: MunicipalityCode,
    pub message: String,
    pub name: Option<String>,
    pub contact_email: Option<String>,
    pub contact_phone: Option<String>,
    /// Unix seconds, UTC.
    pub created_at: i64,
    pub handled_at: Option<i64>,
}

/// The most offline messages one staff member's list holds, newest first.
pub const OFFLINE_LIST_LIMIT: i64 = 200;

/// Stores an offline message for the staff the policy lets pre-assess its
/// service for its home, as the queue would route a chat, and, in the same
/// transaction, a confirmation to the sender's address (the one given, or
/// a signed-in resident's own) that names neither the service nor the
/// message. Returns its id. `NotFound` for a service that offers no chat
/// or an unknown municipality; `Invalid` without a way to be contacted.
pub async fn leave_offline_message(
    db: &Db,
    new: &NewOfflineMessage,
    now: Timestamp,
) -> Result<String, Error> {
    if new.contact_email.is_none() && new.contact_phone.is_none() {
        return Err(Error::Invalid(InvalidValue {
            field: "contact_email",
            reason: "give an email address or a telephone number to be contacted at".into(),
        }));
    }
    let service = catalog::service(db, &new.service)
        .await?
        .filter(|s| s.chat)
        .ok_or(Error::NotFound)?;
    let eligible = pre_assessors(db, &new.service, &new.home, now)
        .await?
        .ok_or(Error::NotFound)?;
    let id = uuid::Uuid::now_v7().to_string();
    let at = now.as_second();
    let confirm_to = new
        .contact_email
        .clone()
        .or_else(|| new.resident.as_ref().map(|r| r.email.clone()));
    let discreet = service.discreet || new.resident.as_ref().is_some_and(|r| r.discreet_mail);
    let _turn = db.write_turn().await;
    let mut tx = db.pool().begin().await?;
    sqlx::query(
        "INSERT INTO offline_messages (id, service_code, home_code, resident_id, message, name, contact_email, contact_phone, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(&id)
    .bind(new.service.as_str())
    .bind(new.home.as_str())
    .bind(new.resident.as_ref().map(|r| r.id.as_str()))
    .bind(new.message.as_str())
    .bind(new.name.as_ref().map(PersonName::as_str))
    .bind(new.contact_email.as_ref().map(EmailAddress::as_str))
    .bind(new.contact_phone.as_ref().map(PhoneNumber::as_str))
    .bind(at)
    .execute(&mut *tx)
    .await?;
    for municipality in &eligible {
        sqlx::query(
            "INSERT INTO offline_message_municipalities (message_id, municipality_code) VALUES ($1, $2)",
        )
        .bind(&id)
        .bind(municipality.as_str())
        .execute(&mut *tx)
        .await?;
    }
    if let Some(recipient) = confirm_to {
        // Someone who shares the inbox must not learn what the message was
        // about: a discreet one does not even name the social services.
        outbox::enqueue(
            &mut tx,
            &recipient,
            new.language,
            &Message::OfflineMessageReceived,
            discreet.then_some(NeutralTitle::default()),
            at,
            at,
        )
        .await?;
    }
    tx.commit().await?;
    Ok(id)
}

/// The offline messages `staff` may handle, newest first: those routed to
/// their municipality for a service whose chats they take. Each one is a
/// read of a resident's data, audit-logged in the same transaction.
pub async fn offline_messages_for(
    db: &Db,
    staff: &Staff,
    now: Timestamp,
) -> Result<Vec<OfflineMessage>, Error> {
    let services = staff.chat_services();
    if services.is_empty() {
        return Ok(Vec::new());
    }
    let placeholders: Vec<String> = (0..services.len()).map(|i| format!("${}", i + 3)).collect();
    let sql = format!(
        "SELECT m.id, m.service_code, m.home_code, m.resident_id, m.message, m.name, m.contact_email, \
         m.contact_phone, m.created_at, m.handled_at \
         FROM offline_messages m JOIN offline_message_municipalities e ON e.message_id = m.id \
         WHERE e.municipality_code = $1 AND m.service_code IN ({}) \
         ORDER BY m.created_at DESC, m.id DESC LIMIT $2",
        placeholders.join(", ")
    );
    let _turn = db.write_turn().await;
    let mut tx = db.pool().begin().await?;
    let mut query = sqlx::query(built_sql(sql))
        .bind(staff.municipality.as_str())
        .bind(OFFLINE_LIST_LIMIT);
    for service in &services {
        query = query.bind(service.as_str());
    }
    let rows = query.fetch_all(&mut *tx).await?;
    let actor = Actor::Staff(staff.id.clone());
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        let message = offline_from_row(row)?;
        let resident_id: Option<ResidentId> = ids::stored_opt(row, "resident_id")?;
        let entry = Entry {
            actor: &actor,
            action: "offline_message.read",
            subject: format!("offline_message:{}", message.id),
            resident_id: resident_id.as_ref(),
            on_behalf_of: Some(message.home.as_str()),
            rule: None,
            agreement_id: None,
            outcome: Outcome::Allowed,
        };
        audit::record(&mut tx, &entry, now.as_second()).await?;
        out.push(message);
    }
    tx.commit().await?;
    Ok(out)
}

/// Marks an offline message handled by `staff`, with an audit entry, if it
/// is one they may handle; otherwise `NotFound`, as for a missing one, and
/// the refusal is audit-logged too. Marking it again keeps the first time.
pub async fn mark_offline_message_handled(
    db: &Db,
    staff: &Staff,
    id: &str,
    now: Timestamp,
) -> Result<(), Error> {
    let at = now.as_second();
    let actor = Actor::Staff(staff.id.clone());
    let _turn = db.write_turn().await;
    let mut tx = db.pool().begin().await?;
    let row = sqlx::query(
        "SELECT m.service_code, m.home_code, m.resident_id FROM offline_messages m \
         JOIN offline_message_municipalities e ON e.message_id = m.id \
         WHERE m.id = $1 AND e.municipality_code = $2",
    )
    .bind(id)
    .bind(staff.municipality.as_str())
    .fetch_optional(&mut *tx)
    .await?;
    // The resident and home of a message this staff member may handle;
    // `None` for one they may not, or that does not exist.
    let visible: Option<(Option<ResidentId>, String)> = match &row {
        Some(row)
            if staff.takes_chats_of(&ServiceCode::parse(
                &row.try_get::<String, _>("service_code")?,
            )?) =>
        {
            Some((
                ids::stored_opt(row, "resident_id")?,
                row.try_get("home_code")?,
            ))
        }
        _ => None,
    };
    let (resident_id, home) = match &visible {
        Some((resident, home)) => (resident.as_ref(), Some(home.as_str())),
        None => (None, None),
    };
    let entry = Entry {
        actor: &actor,
        action: "offline_message.handle",
        subject: format!("offline_message:{id}"),
        resident_id,
        on_behalf_of: home,
        rule: None,
        agreement_id: None,
        outcome: if visible.is_some() {
            Outcome::Allowed
        } else {
            Outcome::Denied
        },
    };
    audit::record(&mut tx, &entry, at).await?;
    if visible.is_some() {
        sqlx::query(
            "UPDATE offline_messages SET handled_at = $1, handled_by = $2 WHERE id = $3 AND handled_at IS NULL",
        )
        .bind(at)
        .bind(staff.id.as_str())
        .bind(id)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    if visible.is_some() {
        Ok(())
    } else {
        Err(Error::NotFound)
    }
}

fn offline_from_row(row: &AnyRow) -> Result<OfflineMessage, Error> {
    Ok(OfflineMessage {
        id: row.try_get("id")?,
        service: ServiceCode::parse(&row.try_get::<String, _>("service_code")?)?,
        home: MunicipalityCode::parse(&row.try_get::<String, _>("home_code")?)?,
        message: row.try_get("message")?,
        name: row.try_get("name")?,
        contact_email: row.try_get("contact_email")?,
        contact_phone: row.try_get("contact_phone")?,
        created_at: row.try_get("created_at")?,
        handled_at: row.try_get("handled_at")?,
    })
}

/// A reply staff pick from in a chat, stored per service and language.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CannedResponse {
    pub service: ServiceCode,
    pub language: Language,
    pub id: String,
    pub title: String,
    pub text: String,
}

/// Every canned response, by service, language and their order.
pub async fn canned_responses(db: &Db) -> Result<Vec<CannedResponse>, Error> {
    let rows = sqlx::query(
        "SELECT service_code, language, id, title, body FROM canned_responses \
         ORDER BY service_code, language, position, id",
    )
    .fetch_all(db.pool())
    .await?;
    rows.iter()
        .map(|r| {
            Ok(CannedResponse {
                service: ServiceCode::parse(&r.try_get::<String, _>("service_code")?)?,
                language: Language::parse(&r.try_get::<String, _>("language")?)?,
                id: r.try_get("id")?,
                title: r.try_get("title")?,
                text: r.try_get("body")?,
            })
        })
        .collect()
}

/// Stores `responses` for their service and language, in the order given,
/// except for a service and language that has responses already; returns
/// how many were stored. Two nodes starting at once store them once.
pub async fn add_canned_responses(db: &Db, responses: &[CannedResponse]) -> Result<usize, Error> {
    let _turn = db.write_turn().await;
    let mut tx = db.pool().begin().await?;
    let mut stored = 0;
    let mut decided: Vec<((ServiceCode, Language), bool)> = Vec::new();
    for (position, response) in responses.iter().enumerate() {
        let key = (response.service.clone(), response.language);
        let wanted = match decided.iter().find(|(k, _)| *k == key) {
            Some((_, wanted)) => *wanted,
            None => {
                let existing: i64 = sqlx::query(
                    "SELECT COUNT(*) AS n FROM canned_responses WHERE service_code = $1 AND language = $2",
                )
                .bind(response.service.as_str())
                .bind(response.language.code())
                .fetch_one(&mut *tx)
                .await?
                .try_get("n")?;
                decided.push((key, existing == 0));
                existing == 0
            }
        };
        if !wanted {
            continue;
        }
        let done = sqlx::query(
            "INSERT INTO canned_responses (service_code, language, id, position, title, body) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        )
        .bind(response.service.as_str())
        .bind(response.language.code())
        .bind(&response.id)
        .bind(i64::try_from(position).unwrap_or(i64::MAX))
        .bind(&response.title)
        .bind(&response.text)
        .execute(&mut *tx)
        .await?;
        stored += usize::try_from(done.rows_affected()).unwrap_or(0);
    }
    tx.commit().await?;
    Ok(stored)
}

/// The most days of free times one chat's offer may look through.
pub const MAX_OFFER_DAYS: i64 = 14;

/// A time staff may offer in a chat, with the municipality likeliest to
/// perform it: the resident's home when its staff are free then, else the
/// first other that may (booking picks the staff member by load among all
/// that may only when the resident books).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OfferableTime {
    pub range: SlotRange,
    pub municipality: MunicipalityCode,
}

/// The free times staff may offer in the chat `requested`: times of its service
/// (or of `service`, another one they handle) for its resident's home
/// municipality under the policy, within `dates`. Only the staff member the chat is
/// assigned to may ask; for anyone else, and for a chat that does not
/// exist, it is `NotFound`. Either way it is audit-logged, since it tells
/// staff where the resident lives.
pub async fn free_times_for_chat(
    db: &Db,
    staff: &Staff,
    requested: &str,
    service: Option<&ServiceCode>,
    dates: DateRange,
    now: Timestamp,
) -> Result<Vec<OfferableTime>, Error> {
    // The audit entry names the room as it was asked for, so text that is
    // no room id at all is refused here, and recorded, as an unknown room.
    let room = RoomId::parse(requested).ok();
    let room = room.as_ref();
    let dates = dates.at_most(MAX_OFFER_DAYS)?;
    let entry = match room {
        Some(room) => events::queue_entry(db, room).await?,
        None => None,
    };
    let holds = entry
        .as_ref()
        .is_some_and(|e| e.state == "assigned" && e.staff.as_deref() == Some(staff.id.as_str()));
    let service = match (holds, service, &entry) {
        (true, None, Some(e)) => Some(ServiceCode::parse(&e.service)?),
        (true, Some(other), _) if staff.handles(other) => Some(other.clone()),
        _ => None,
    };
    let resident_id = match entry.as_ref().filter(|_| service.is_some()) {
        Some(e) => resident_of(e)?,
        None => None,
    };
    let home = entry
        .as_ref()
        .filter(|_| service.is_some())
        .map(|e| e.home_municipality.as_str());
    let actor = Actor::Staff(staff.id.clone());
    let record = Entry {
        actor: &actor,
        action: "chat.free_times",
        subject: requested.chars().take(140).collect(),
        resident_id: resident_id.as_ref(),
        on_behalf_of: home,
        rule: None,
        agreement_id: None,
        outcome: if service.is_some() {
            Outcome::Allowed
        } else {
            Outcome::Denied
        },
    };
    audit::record_now(db, &record, now.as_second()).await?;
    let (Some(service), Some(home)) = (service, home) else {
        return Err(Error::NotFound);
    };
    let home = MunicipalityCode::parse(home)?;
    let query = SearchQuery {
        service,
        home: home.clone(),
        dates,
        language: None,
    };
    let found = search_with_municipalities(db, &query, now).await?;
    Ok(found
        .into_iter()
        .filter_map(
            |FreeTimeAt {
                 range,
                 municipalities,
             }| {
                let municipality = municipalities
                    .iter()
                    .find(|m| **m == home)
                    .or_else(|| municipalities.first())?
                    .clone();
                Some(OfferableTime {
                    range,
                    municipality,
                })
            },
        )
        .collect())
}
