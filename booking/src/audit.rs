//! The audit log: who read or changed a resident's data, when, on whose
//! behalf, and under which rule. Entries are written on the same connection
//! (and so in the same transaction) as the access they record.

use serde::Serialize;
use sqlx::{AnyConnection, Row};

use crate::batch::Statement;
use crate::db::Db;
use crate::domain::Basis;
use crate::{ids, ResidentId, StaffId};

/// Who acted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    Resident(ResidentId),
    Staff(StaffId),
    Guest(String),
    System,
    Anonymous,
}

impl Actor {
    pub fn label(&self) -> String {
        match self {
            Actor::Resident(id) => format!("resident:{id}"),
            Actor::Staff(id) => format!("staff:{id}"),
            Actor::Guest(id) => format!("guest:{id}"),
            Actor::System => "system".to_owned(),
            Actor::Anonymous => "anonymous".to_owned(),
        }
    }
}

/// Whether the access went through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Allowed,
    Denied,
}

/// One audit entry.
#[derive(Debug, Clone)]
pub struct Entry<'a> {
    pub actor: &'a Actor,
    /// What was done, e.g. `booking.read`, `booking.cancel`.
    pub action: &'a str,
    /// What it was done to, e.g. `booking:<id>`.
    pub subject: String,
    pub resident_id: Option<&'a ResidentId>,
    /// The home municipality the work was done for.
    pub on_behalf_of: Option<&'a str>,
    pub rule: Option<Basis>,
    pub agreement_id: Option<&'a str>,
    pub outcome: Outcome,
}

/// An entry as read back for admins.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    pub id: String,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub subject: String,
    pub resident_id: Option<ResidentId>,
    pub on_behalf_of: Option<String>,
    pub rule: Option<Basis>,
    pub agreement_id: Option<String>,
    pub outcome: String,
}

pub async fn record(conn: &mut AnyConnection, entry: &Entry<'_>, now: i64) -> sqlx::Result<()> {
    statement(entry, now).execute(conn).await.map(|_| ())
}

/// The insert that [`record`] runs, for a [`crate::batch`] transaction.
pub fn statement(entry: &Entry<'_>, now: i64) -> Statement {
    Statement::new(
        "INSERT INTO audit_log (id, at, actor, action, subject, resident_id, on_behalf_of, rule, agreement_id, outcome) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(uuid::Uuid::now_v7().to_string())
    .bind(now)
    .bind(entry.actor.label())
    .bind(entry.action)
    .bind(entry.subject.clone())
    .bind(entry.resident_id.map(ResidentId::as_str))
    .bind(entry.on_behalf_of)
    .bind(entry.rule.map(|b| b.as_str()))
    .bind(entry.agreement_id)
    .bind(match entry.outcome {
        Outcome::Allowed => "allowed",
        Outcome::Denied => "denied",
    })
}

/// Writes one entry on its own connection, for reads that need no transaction.
pub async fn record_now(db: &Db, entry: &Entry<'_>, now: i64) -> sqlx::Result<()> {
    let _turn = db.write_turn().await;
    let mut conn = db.pool().acquire().await?;
    record(&mut conn, entry, now).await
}

/// The newest entries, optionally for one resident.
pub async fn recent(
    db: &Db,
    resident_id: Option<&ResidentId>,
    limit: i64,
) -> Result<Vec<Record>, crate::Error> {
    let rows = sqlx::query(
        "SELECT id, at, actor, action, subject, resident_id, on_behalf_of, rule, agreement_id, outcome \
         FROM audit_log WHERE ($1 IS NULL OR resident_id = $1) ORDER BY at DESC, id LIMIT $2",
    )
    .bind(resident_id.map(ResidentId::as_str))
    .bind(limit)
    .fetch_all(db.pool())
    .await?;
    rows.iter()
        .map(|r| -> Result<Record, crate::Error> {
            Ok(Record {
                id: r.try_get("id")?,
                at: r.try_get("at")?,
                actor: r.try_get("actor")?,
                action: r.try_get("action")?,
                subject: r.try_get("subject")?,
                resident_id: ids::stored_opt(r, "resident_id")?,
                on_behalf_of: r.try_get("on_behalf_of")?,
                rule: r
                    .try_get::<Option<String>, _>("rule")?
                    .as_deref()
                    .map(Basis::parse)
                    .transpose()?,
                agreement_id: r.try_get("agreement_id")?,
                outcome: r.try_get("outcome")?,
            })
        })
        .collect()
}
