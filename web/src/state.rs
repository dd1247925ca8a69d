//! The state every handler can ask for, by the part it needs (`FromRef`),
//! and what the session extractors need of it (`SessionState`).

use std::sync::Arc;

use axum::extract::FromRef;
use booking::Db;
use signaling::hub::Hub;

use crate::api::precheck::limiter::PrecheckLimiter;
use crate::auth::{Keys, SessionState, SignInLimiter};
use crate::config::Settings;
use crate::sessions::Sessions;
use crate::ws::effects::TurnIssuer;
use crate::ws::ticket::Tickets;

#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub keys: Keys,
    pub settings: Arc<Settings>,
    pub sign_in_limiter: SignInLimiter,
    /// Which sessions are still active, cached, and told of revocations on
    /// other nodes over the hub's bus.
    pub sessions: Sessions,
    /// Wakes this node's mail delivery when something was put in the
    /// outbox that should go out at once (a sign-in link).
    pub mail_waker: Arc<tokio::sync::Notify>,
    /// The real-time hub behind `/ws`.
    pub hub: Hub,
    /// Single-use tickets for opening `/ws`.
    pub tickets: Tickets,
    /// TURN credentials for admitted participants; `None` while no relay is
    /// configured, and then clients connect peer to peer or not at all.
    pub turn: Option<TurnIssuer>,
    /// How often the pre-call check may fetch its TURN credentials.
    pub precheck_limiter: PrecheckLimiter,
}

impl FromRef<AppState> for Db {
    fn from_ref(state: &AppState) -> Db {
        state.db.clone()
    }
}

impl FromRef<AppState> for Arc<Settings> {
    fn from_ref(state: &AppState) -> Arc<Settings> {
        state.settings.clone()
    }
}

impl SessionState for AppState {
    fn keys(&self) -> &Keys {
        &self.keys
    }

    fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    fn db(&self) -> &Db {
        &self.db
    }
}
