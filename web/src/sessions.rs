//! Which sessions are still active, asked on every authenticated request.
//!
//! The database (`booking::sessions`) is the truth. In front of it sits a
//! per-node cache, so that the common case costs no database round trip:
//!
//! - a session found active is trusted for [`ACTIVE_TTL`] before it is read
//!   again;
//! - a session found or made inactive is remembered as such, and wins over
//!   an active entry;
//! - a node that ends sessions publishes their ids on the bus
//!   ([`REVOKED_SUBJECT`]), and every node (itself included) drops them from
//!   its cache as the message arrives. With NATS that reaches every node of
//!   the cluster at once; if a message is lost (the bus delivers at most
//!   once), [`ACTIVE_TTL`] bounds how long another node may still accept the
//!   session.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use booking::sessions::{self, SessionId, Subject};
use booking::Db;
use futures::StreamExt;
use signaling::bus::{Bus, BusError};

/// How long a node trusts that a session it found active still is, when
/// no revocation reached it over the bus.
pub const ACTIVE_TTL: Duration = Duration::from_secs(30);

/// The bus subject on which nodes announce ended sessions: a JSON array of
/// session ids.
pub const REVOKED_SUBJECT: &str = "kontakt.sessions.revoked";

/// How long an ended session is remembered: longer than any session lives,
/// so that its token expires before the cache forgets it.
const REMEMBER_ENDED: Duration = Duration::from_secs(48 * 60 * 60);

/// Entries past which the cache sweeps out what it no longer needs.
const SWEEP_ABOVE: usize = 50_000;

/// The sessions of this node, cheap to clone.
#[derive(Clone)]
pub struct Sessions {
    db: Db,
    bus: Arc<dyn Bus>,
    cache: Arc<Mutex<Cache>>,
}

#[derive(Default)]
struct Cache {
    /// When each session was last read as active.
    active: HashMap<SessionId, Instant>,
    /// When each session was seen to have ended.
    ended: HashMap<SessionId, Instant>,
}

impl Sessions {
    pub fn new(db: Db, bus: Arc<dyn Bus>) -> Sessions {
        Sessions {
            db,
            bus,
            cache: Arc::new(Mutex::new(Cache::default())),
        }
    }

    /// Subscribes to the revocations other nodes announce and applies them
    /// as they arrive. The subscription is in place when this returns, so a
    /// revocation published afterwards is not missed. Abort the task on
    /// shutdown.
    pub async fn listen(&self) -> Result<tokio::task::JoinHandle<()>, BusError> {
        let mut revoked = self.bus.subscribe(REVOKED_SUBJECT).await?;
        let this = self.clone();
        Ok(tokio::spawn(async move {
            while let Some(payload) = revoked.next().await {
                match serde_json::from_slice::<Vec<String>>(&payload) {
                    Ok(ids) => {
                        let ids: Vec<SessionId> = ids
                            .iter()
                            .filter_map(|id| SessionId::parse(id).ok())
                            .collect();
                        this.forget(&ids, Instant::now());
                    }
                    Err(e) => tracing::warn!(error = %e, "ignoring a malformed revocation"),
                }
            }
        }))
    }

    /// Records a new session of `subject` ending at `expires_at`.
    pub async fn open(
        &self,
        subject: &Subject,
        now: i64,
        expires_at: i64,
    ) -> Result<SessionId, booking::Error> {
        let id = sessions::create(&self.db, subject, now, expires_at).await?;
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .active
            .insert(id.clone(), Instant::now());
        Ok(id)
    }

    /// Whether session `id` may still be used: from the cache when it can
    /// answer, else from the database.
    pub async fn is_active(&self, id: &SessionId, now: i64) -> Result<bool, booking::Error> {
        if let Some(answer) = self.cached(id, Instant::now()) {
            return Ok(answer);
        }
        let active = sessions::is_active(&self.db, id, now).await?;
        let at = Instant::now();
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        // A revocation that arrived while the database was read wins: it
        // may have been committed after the read.
        if cache.ended.contains_key(id) {
            return Ok(false);
        }
        cache.sweep(at);
        if active {
            cache.active.insert(id.clone(), at);
        } else {
            cache.ended.insert(id.clone(), at);
        }
        Ok(active)
    }

    /// Ends session `id` (sign-out).
    pub async fn end(&self, id: &SessionId, now: i64) -> Result<(), booking::Error> {
        sessions::revoke(&self.db, id, now).await?;
        self.announce(std::slice::from_ref(id)).await;
        Ok(())
    }

    /// Ends every session of `subject` ("sign out everywhere") and returns
    /// how many there were.
    pub async fn end_all(&self, subject: &Subject, now: i64) -> Result<usize, booking::Error> {
        let ended = sessions::revoke_all(&self.db, subject, now).await?;
        self.announce(&ended).await;
        Ok(ended.len())
    }

    /// Tells this node's cache and every other node that `ids` ended in the
    /// database. Call it after the commit that ended them.
    pub async fn announce(&self, ids: &[SessionId]) {
        if ids.is_empty() {
            return;
        }
        self.forget(ids, Instant::now());
        let payload = serde_json::to_vec(&ids.iter().map(SessionId::as_str).collect::<Vec<_>>())
            .expect("strings always serialise");
        if let Err(e) = self.bus.publish(REVOKED_SUBJECT, payload).await {
            tracing::warn!(error = %e, "could not announce ended sessions; other nodes learn within the cache's lifetime");
        }
    }

    fn cached(&self, id: &SessionId, at: Instant) -> Option<bool> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.ended.contains_key(id) {
            return Some(false);
        }
        match cache.active.get(id) {
            Some(read) if at.duration_since(*read) < ACTIVE_TTL => Some(true),
            _ => None,
        }
    }

    fn forget(&self, ids: &[SessionId], at: Instant) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.sweep(at);
        for id in ids {
            cache.active.remove(id);
            cache.ended.insert(id.clone(), at);
        }
    }
}

impl Cache {
    /// Drops entries that no longer decide anything, once the cache is big.
    fn sweep(&mut self, at: Instant) {
        if self.active.len() > SWEEP_ABOVE {
            self.active
                .retain(|_, read| at.duration_since(*read) < ACTIVE_TTL);
        }
        if self.ended.len() > SWEEP_ABOVE {
            self.ended
                .retain(|_, seen| at.duration_since(*seen) < REMEMBER_ENDED);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use signaling::bus::InProcessBus;

    #[tokio::test]
    async fn a_cached_session_ends_at_once_on_every_node_that_hears_of_it() {
        let test = booking::testing::TestDb::sqlite().await;
        let bus: Arc<dyn Bus> = Arc::new(InProcessBus::default());
        let a = Sessions::new(test.db.clone(), bus.clone());
        let b = Sessions::new(test.db.clone(), bus.clone());
        let listening = b.listen().await.unwrap();
        let mut heard = bus.subscribe(REVOKED_SUBJECT).await.unwrap();
        let anna = Subject::Resident(booking::ResidentId::parse("r1").unwrap());
        let id = a.open(&anna, 100, 10_000).await.unwrap();
        assert!(b.is_active(&id, 101).await.unwrap());
        assert_eq!(b.cached(&id, Instant::now()), Some(true), "b cached it");

        a.end(&id, 102).await.unwrap();
        assert!(!a.is_active(&id, 103).await.unwrap(), "at once on a");
        // b's listener and this subscription hear the same message; wait for
        // it here, then for b's listener to have applied it.
        tokio::time::timeout(Duration::from_secs(5), heard.next())
            .await
            .expect("the revocation is published");
        tokio::time::timeout(Duration::from_secs(5), async {
            while b.cached(&id, Instant::now()) != Some(false) {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("b applies the revocation");
        assert!(!b.is_active(&id, 103).await.unwrap());
        listening.abort();
    }

    #[tokio::test]
    async fn an_unknown_session_is_refused_and_the_refusal_is_cached() {
        let test = booking::testing::TestDb::sqlite().await;
        let sessions = Sessions::new(test.db.clone(), Arc::new(InProcessBus::default()));
        let stranger = SessionId::random();
        assert!(!sessions.is_active(&stranger, 100).await.unwrap());
        assert_eq!(sessions.cached(&stranger, Instant::now()), Some(false));
    }
}
