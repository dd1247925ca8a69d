//! Server-side sessions. Every session token names one row here by its id,
//! so that a session can end before its token expires: on sign-out, on "sign
//! out everywhere", and when a staff account is deactivated. The web layer
//! caches what it reads here; this module is the truth it falls back on.

use std::fmt;

use sqlx::{AnyConnection, Row};

use crate::db::Db;
use crate::{Error, ResidentId, StaffId};

/// The id of one session: a random UUID, carried in the token's `sid` claim.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionId(String);

impl SessionId {
    /// A new, unguessable id.
    pub fn random() -> SessionId {
        SessionId(uuid::Uuid::new_v4().to_string())
    }

    /// Accepts only the form [`SessionId::random`] makes, so that nothing
    /// else reaches a query or a cache.
    pub fn parse(raw: &str) -> Result<SessionId, crate::InvalidValue> {
        uuid::Uuid::try_parse(raw)
            .map(|u| SessionId(u.to_string()))
            .map_err(|_| crate::InvalidValue {
                field: "session",
                reason: "not a session id".into(),
            })
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whose session it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    Resident(ResidentId),
    Staff(StaffId),
}

impl Subject {
    fn kind(&self) -> &'static str {
        match self {
            Subject::Resident(_) => "resident",
            Subject::Staff(_) => "staff",
        }
    }

    fn id(&self) -> &str {
        match self {
            Subject::Resident(id) => id.as_str(),
            Subject::Staff(id) => id.as_str(),
        }
    }
}

/// Records a new session of `subject` that ends at `expires_at` (unix
/// seconds) unless revoked first.
pub async fn create(
    db: &Db,
    subject: &Subject,
    now: i64,
    expires_at: i64,
) -> Result<SessionId, Error> {
    let id = SessionId::random();
    let _turn = db.write_turn().await;
    sqlx::query(
        "INSERT INTO sessions (id, subject_kind, subject_id, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(id.as_str())
    .bind(subject.kind())
    .bind(subject.id())
    .bind(now)
    .bind(expires_at)
    .execute(db.pool())
    .await?;
    Ok(id)
}

/// Whether session `id` exists, has not expired and was not revoked. A
/// token naming a session this database never recorded is refused, too.
pub async fn is_active(db: &Db, id: &SessionId, now: i64) -> Result<bool, Error> {
    let row = sqlx::query(
        "SELECT 1 AS one FROM sessions WHERE id = $1 AND revoked_at IS NULL AND expires_at > $2",
    )
    .bind(id.as_str())
    .bind(now)
    .fetch_optional(db.pool())
    .await?;
    Ok(row.is_some())
}

/// Ends one session. Returns whether it was still active.
pub async fn revoke(db: &Db, id: &SessionId, now: i64) -> Result<bool, Error> {
    let _turn = db.write_turn().await;
    let done =
        sqlx::query("UPDATE sessions SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
            .bind(now)
            .bind(id.as_str())
            .execute(db.pool())
            .await?;
    Ok(done.rows_affected() > 0)
}

/// Ends every session of `subject` ("sign out everywhere") and returns the
/// ids it ended, for the caches of other nodes.
pub async fn revoke_all(db: &Db, subject: &Subject, now: i64) -> Result<Vec<SessionId>, Error> {
    let _turn = db.write_turn().await;
    let mut conn = db.pool().acquire().await?;
    Ok(revoke_all_on(&mut conn, subject, now).await?)
}

/// As [`revoke_all`], on the caller's connection (inside its transaction).
pub(crate) async fn revoke_all_on(
    conn: &mut AnyConnection,
    subject: &Subject,
    now: i64,
) -> Result<Vec<SessionId>, sqlx::Error> {
    let rows = sqlx::query(
        "UPDATE sessions SET revoked_at = $1 \
         WHERE subject_kind = $2 AND subject_id = $3 AND revoked_at IS NULL AND expires_at > $1 \
         RETURNING id",
    )
    .bind(now)
    .bind(subject.kind())
    .bind(subject.id())
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| r.try_get::<String, _>("id").map(SessionId))
        .collect()
}

/// Deletes sessions that expired before `before`: they are refused by
/// their expiry anyway, and nothing else reads them.
pub async fn purge_expired(db: &Db, before: i64) -> Result<u64, Error> {
    let _turn = db.write_turn().await;
    let done = sqlx::query("DELETE FROM sessions WHERE expires_at < $1")
        .bind(before)
        .execute(db.pool())
        .await?;
    Ok(done.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_session_lives_until_it_is_revoked_or_expires() {
        for test in crate::testing::databases().await {
            let db = &test.db;
            let anna = Subject::Resident(ResidentId::parse("r1").unwrap());
            let first = create(db, &anna, 100, 200).await.unwrap();
            let second = create(db, &anna, 100, 200).await.unwrap();
            let other = create(db, &Subject::Staff(StaffId::parse("r1").unwrap()), 100, 200)
                .await
                .unwrap();
            assert!(is_active(db, &first, 150).await.unwrap());
            assert!(!is_active(db, &first, 200).await.unwrap(), "expired");
            assert!(!is_active(db, &SessionId::random(), 150).await.unwrap());

            assert!(revoke(db, &first, 150).await.unwrap());
            assert!(!revoke(db, &first, 151).await.unwrap(), "once");
            assert!(!is_active(db, &first, 152).await.unwrap());
            assert!(is_active(db, &second, 152).await.unwrap());

            let ended = revoke_all(db, &anna, 160).await.unwrap();
            assert_eq!(ended, vec![second.clone()]);
            assert!(!is_active(db, &second, 161).await.unwrap());
            assert!(
                is_active(db, &other, 161).await.unwrap(),
                "a staff session with the same id string is another subject"
            );
            assert_eq!(purge_expired(db, 201).await.unwrap(), 3);
        }
    }

    #[test]
    fn only_uuids_are_session_ids() {
        assert!(SessionId::parse(SessionId::random().as_str()).is_ok());
        for bad in ["", "x", "' OR 1=1 --"] {
            assert!(SessionId::parse(bad).is_err(), "{bad}");
        }
    }
}
