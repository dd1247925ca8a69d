//! The transactional outbox: what somebody should be told, written in the same
//! transaction as the change that causes it, so that a crash can neither lose
//! nor invent a mail. `notify` claims and delivers the rows through
//! [`delivery`], which holds the worker's side of the table.
//!
//! A [`Message`] carries ids, times and one-time tokens, never a service name,
//! chat text, a note, a staff member's name or the performing municipality:
//! whatever goes into a mail must be safe to show to anyone who sees the inbox.

pub mod delivery;

use serde::{Deserialize, Serialize};
use sqlx::AnyConnection;

use crate::batch::Statement;
use crate::domain::{EmailAddress, InvalidValue, Language, MunicipalityCode, PersonName};
use crate::{BookingId, RoomId};

/// The neutral word a discreet mail and its calendar entry use instead of
/// "social services": a mail's subject shows on a lock screen and an entry's
/// title in a shared family calendar, where naming the social services can
/// put a resident who seeks help against violence at risk. The resident
/// picks one at booking from this fixed set; there is no free text, so that
/// nothing they type can leak into a subject.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NeutralTitle {
    /// "Meeting": the default.
    #[default]
    Meeting,
    /// "Appointment".
    Appointment,
    /// "Call".
    Call,
}

impl NeutralTitle {
    pub const ALL: [NeutralTitle; 3] = [
        NeutralTitle::Meeting,
        NeutralTitle::Appointment,
        NeutralTitle::Call,
    ];

    /// The stored and submitted form, also the last part of its locale keys.
    pub fn as_str(self) -> &'static str {
        match self {
            NeutralTitle::Meeting => "meeting",
            NeutralTitle::Appointment => "appointment",
            NeutralTitle::Call => "call",
        }
    }

    pub fn parse(raw: &str) -> Result<NeutralTitle, InvalidValue> {
        NeutralTitle::ALL
            .into_iter()
            .find(|t| t.as_str() == raw.trim())
            .ok_or_else(|| InvalidValue {
                field: "neutral_title",
                reason: "expected meeting, appointment or call".into(),
            })
    }
}

/// One thing to tell one person. Links are built by `notify` from its public
/// base URL and the tokens and ids here, using the paths documented on each
/// variant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Message {
    /// Someone asked for a sign-in link for the recipient's address. The web
    /// layer writes this for every well-formed request, known address or
    /// not, so that its answer does the same work and takes the same time
    /// either way; the delivery worker then asks
    /// [`crate::accounts::answer_sign_in_request`], which turns the row into
    /// a [`Message::SignInLink`] for a resident (registering a first-time
    /// one) or lets it go unsent. Never rendered as it is.
    SignInRequest {
        /// Given on a first sign-in; ignored for a known address.
        registration: Option<Registration>,
    },
    /// A resident's one-time sign-in link: `/auth/resident/callback?token=`.
    SignInLink { token: String, expires_at: i64 },
    /// A new booking. Manage link: `/b/{manage_token}`; join: `/join/{booking_id}`.
    BookingConfirmed {
        booking_id: BookingId,
        starts_at: i64,
        ends_at: i64,
        sequence: i64,
        manage_token: String,
    },
    /// A booking moved to a new time. The calendar event keeps its UID and
    /// gets the new `sequence`.
    BookingRescheduled {
        booking_id: BookingId,
        starts_at: i64,
        ends_at: i64,
        previous_starts_at: i64,
        sequence: i64,
        manage_token: String,
    },
    /// A booking cancelled: calendars should remove the event.
    BookingCancelled {
        booking_id: BookingId,
        starts_at: i64,
        ends_at: i64,
        sequence: i64,
    },
    /// A reminder `minutes_before` the meeting (1440 or 60).
    Reminder {
        booking_id: BookingId,
        starts_at: i64,
        ends_at: i64,
        minutes_before: i64,
        manage_token: String,
    },
    /// A staff member picked up the resident's chat.
    ChatPickedUp { conversation_id: RoomId },
    /// Staff shared a new note on "My pages".
    NoteShared,
    /// A resident knocks in a waiting room of a staff member who is not in
    /// the console. Link: `/staff`.
    Knock {
        booking_id: BookingId,
        starts_at: i64,
    },
    /// The sender's message from the offline form has arrived; someone
    /// will be in touch as they asked. Names neither the service nor the
    /// message.
    OfflineMessageReceived,
    /// A guest (an interpreter or a colleague) is invited to a meeting:
    /// the time and the guest link `/guest/{token}`, and nothing else, not
    /// even the social services.
    GuestInvitation {
        token: String,
        starts_at: i64,
        ends_at: i64,
    },
}

impl Message {
    /// The stable name stored in the `kind` column.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::SignInRequest { .. } => "sign_in_request",
            Message::SignInLink { .. } => "sign_in_link",
            Message::BookingConfirmed { .. } => "booking_confirmed",
            Message::BookingRescheduled { .. } => "booking_rescheduled",
            Message::BookingCancelled { .. } => "booking_cancelled",
            Message::Reminder { .. } => "reminder",
            Message::ChatPickedUp { .. } => "chat_picked_up",
            Message::NoteShared => "note_shared",
            Message::Knock { .. } => "knock",
            Message::OfflineMessageReceived => "offline_message_received",
            Message::GuestInvitation { .. } => "guest_invitation",
        }
    }

    /// The booking a message is about, if any: used to supersede reminders
    /// when the booking moves or is cancelled.
    pub fn booking_id(&self) -> Option<&BookingId> {
        match self {
            Message::BookingConfirmed { booking_id, .. }
            | Message::BookingRescheduled { booking_id, .. }
            | Message::BookingCancelled { booking_id, .. }
            | Message::Reminder { booking_id, .. }
            | Message::Knock { booking_id, .. } => Some(booking_id),
            _ => None,
        }
    }
}

/// What a first sign-in registers, checked before it was written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    pub name: PersonName,
    pub home: MunicipalityCode,
    pub language: Language,
}

/// A row as the delivery worker sees it.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    pub id: String,
    pub recipient: EmailAddress,
    pub language: Language,
    pub message: Message,
    /// The neutral title of a discreet mail, `None` for an ordinary one.
    pub discreet: Option<NeutralTitle>,
    pub attempts: i64,
}

/// Writes `message` for `recipient`, due at `due_at` (unix seconds), on the
/// caller's connection, which should be inside the transaction that makes the
/// change the message reports. A `discreet` message is rendered with that
/// neutral title and never names the social services.
#[allow(clippy::too_many_arguments)]
pub async fn enqueue(
    conn: &mut AnyConnection,
    recipient: &EmailAddress,
    language: Language,
    message: &Message,
    discreet: Option<NeutralTitle>,
    due_at: i64,
    now: i64,
) -> Result<String, sqlx::Error> {
    let id = uuid::Uuid::now_v7().to_string();
    let payload = serde_json::to_string(message).expect("a Message always serialises");
    sqlx::query(
        "INSERT INTO outbox (id, kind, recipient, language, payload, status, attempts, due_at, created_at, booking_id, discreet) \
         VALUES ($1, $2, $3, $4, $5, 'pending', 0, $6, $7, $8, $9)",
    )
    .bind(&id)
    .bind(message.kind())
    .bind(recipient.as_str())
    .bind(language.code())
    .bind(payload)
    .bind(due_at)
    .bind(now)
    .bind(message.booking_id().map(BookingId::as_str))
    .bind(discreet.map(NeutralTitle::as_str))
    .execute(conn)
    .await?;
    Ok(id)
}

/// One insert of several messages for one recipient, each with its due
/// time: a confirmation and its reminders, say. Run it in the transaction
/// that makes the change the messages report. `discreet` applies to all of
/// them, as to [`enqueue`].
pub fn enqueue_all(
    recipient: &EmailAddress,
    language: Language,
    messages: &[(Message, i64)],
    discreet: Option<NeutralTitle>,
    now: i64,
) -> Statement {
    let mut sql = String::from(
        "INSERT INTO outbox (id, kind, recipient, language, payload, status, attempts, due_at, created_at, booking_id, discreet) VALUES ",
    );
    for i in 0..messages.len() {
        let p = i * 9;
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&format!(
            "(${}, ${}, ${}, ${}, ${}, 'pending', 0, ${}, ${}, ${}, ${})",
            p + 1,
            p + 2,
            p + 3,
            p + 4,
            p + 5,
            p + 6,
            p + 7,
            p + 8,
            p + 9
        ));
    }
    let mut statement = Statement::new(sql);
    for (message, due_at) in messages {
        statement = statement
            .bind(uuid::Uuid::now_v7().to_string())
            .bind(message.kind())
            .bind(recipient.as_str())
            .bind(language.code())
            .bind(serde_json::to_string(message).expect("a Message always serialises"))
            .bind(*due_at)
            .bind(now)
            .bind(message.booking_id().map(BookingId::as_str))
            .bind(discreet.map(NeutralTitle::as_str));
    }
    statement
}

/// The newest message of `kind` (see [`Message::kind`]) written for
/// `recipient`, whatever its delivery state: for tests.
pub async fn latest_for(
    db: &crate::Db,
    recipient: &EmailAddress,
    kind: &str,
) -> Result<Option<Message>, crate::Error> {
    use sqlx::Row;
    let row = sqlx::query(
        "SELECT payload FROM outbox WHERE recipient = $1 AND kind = $2 ORDER BY created_at DESC, due_at DESC LIMIT 1",
    )
    .bind(recipient.as_str())
    .bind(kind)
        .fetch_optional(db.pool())
        .await?;
    match row {
        Some(r) => {
            let payload: String = r.try_get("payload")?;
            serde_json::from_str(&payload)
                .map(Some)
                .map_err(|e| crate::Error::Corrupt(format!("outbox payload: {e}")))
        }
        None => Ok(None),
    }
}

/// The neutral titles of the pending messages of `kind` for `recipient`,
/// `None` for each ordinary one: for tests.
pub async fn pending_discretion(
    db: &crate::Db,
    recipient: &EmailAddress,
    kind: &str,
) -> Result<Vec<Option<NeutralTitle>>, crate::Error> {
    use sqlx::Row;
    let rows = sqlx::query(
        "SELECT discreet FROM outbox WHERE recipient = $1 AND kind = $2 AND status = 'pending'",
    )
    .bind(recipient.as_str())
    .bind(kind)
    .fetch_all(db.pool())
    .await?;
    rows.iter()
        .map(|r| {
            let stored: Option<String> = r.try_get("discreet")?;
            Ok(stored.as_deref().map(NeutralTitle::parse).transpose()?)
        })
        .collect()
}

/// Marks the pending reminders of a booking as superseded, because it moved or
/// was cancelled. Call it in the same transaction as that change.
pub async fn supersede_reminders(
    conn: &mut AnyConnection,
    booking_id: &BookingId,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE outbox SET status = 'superseded' \
         WHERE booking_id = $1 AND kind = 'reminder' AND status = 'pending'",
    )
    .bind(booking_id.as_str())
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// Mails a guest link to `recipient`, due now. The link is the guest's
/// only key to the meeting, and the mail says nothing else about it.
pub async fn guest_invitation(
    db: &crate::Db,
    recipient: &EmailAddress,
    language: Language,
    token: &str,
    starts_at: i64,
    ends_at: i64,
    now: i64,
) -> Result<(), crate::Error> {
    let message = Message::GuestInvitation {
        token: token.to_owned(),
        starts_at,
        ends_at,
    };
    let _turn = db.write_turn().await;
    let mut conn = db.pool().acquire().await?;
    enqueue(&mut conn, recipient, language, &message, None, now, now).await?;
    Ok(())
}

/// How many messages of `kind` were written for `recipient`: for tests.
pub async fn count_for(
    db: &crate::Db,
    recipient: &EmailAddress,
    kind: &str,
) -> Result<i64, crate::Error> {
    use sqlx::Row;
    let row = sqlx::query("SELECT COUNT(*) AS n FROM outbox WHERE recipient = $1 AND kind = $2")
        .bind(recipient.as_str())
        .bind(kind)
        .fetch_one(db.pool())
        .await?;
    Ok(row.try_get("n")?)
}
