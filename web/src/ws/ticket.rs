//! Tickets for `/ws`: browsers cannot put a Bearer header on a WebSocket
//! handshake, and a session cookie alone would let any page the resident has
//! open start a socket. So a client with a session asks the JSON API for a
//! ticket and puts it in the URL. A ticket is a JWT that lives 30 seconds and
//! is spent by its first use; even if a URL is logged, it is worthless.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::auth::SubjectKind;

/// How long a ticket is valid, in seconds.
pub const TICKET_SECONDS: i64 = 30;

/// The `kind` every ticket carries, so that no other token of ours can pass.
const TICKET_KIND: &str = "ws_ticket";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TicketClaims {
    sub: String,
    subject: SubjectKind,
    kind: String,
    jti: String,
    iat: i64,
    exp: i64,
}

/// Who a redeemed ticket was issued to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketSubject {
    pub id: String,
    pub kind: SubjectKind,
}

/// Issues and redeems tickets. Cloning shares the set of spent tickets.
#[derive(Clone)]
pub struct Tickets {
    encoding: EncodingKey,
    decoding: DecodingKey,
    /// Spent ticket ids with their expiry; an id is forgotten once its
    /// ticket has expired, because expiry alone refuses it from then on.
    spent: Arc<Mutex<HashMap<String, i64>>>,
}

impl Tickets {
    /// Keys derived from the session secret with a suffix, so that a session
    /// token never verifies as a ticket, nor a ticket as a session.
    pub fn new(secret: &[u8]) -> Tickets {
        let key = [secret, b"/ws-ticket"].concat();
        Tickets {
            encoding: EncodingKey::from_secret(&key),
            decoding: DecodingKey::from_secret(&key),
            spent: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// A new ticket for `id`, valid from `now` (unix seconds).
    pub fn issue(&self, id: &str, kind: SubjectKind, now: i64) -> String {
        let claims = TicketClaims {
            sub: id.to_owned(),
            subject: kind,
            kind: TICKET_KIND.to_owned(),
            jti: uuid::Uuid::new_v4().simple().to_string(),
            iat: now,
            exp: now + TICKET_SECONDS,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing cannot fail")
    }

    /// Verifies a ticket and spends it. `None` if it is forged, expired, not
    /// a ticket, or spent before.
    pub fn redeem(&self, ticket: &str, now: i64) -> Option<TicketSubject> {
        let mut validation = Validation::new(Algorithm::HS256);
        // Expiry is checked below against the caller's `now`, so that the
        // clock is read once, by the handler.
        validation.validate_exp = false;
        validation.set_required_spec_claims(&["exp", "sub"]);
        let claims = jsonwebtoken::decode::<TicketClaims>(ticket, &self.decoding, &validation)
            .ok()?
            .claims;
        if claims.kind != TICKET_KIND || claims.exp <= now {
            return None;
        }
        let mut spent = self.spent.lock().unwrap_or_else(|e| e.into_inner());
        spent.retain(|_, exp| *exp > now);
        if spent.insert(claims.jti, claims.exp).is_some() {
            return None;
        }
        Some(TicketSubject {
            id: claims.sub,
            kind: claims.subject,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_works_once_and_only_until_it_expires() {
        let tickets = Tickets::new(b"secret");
        let ticket = tickets.issue("r1", SubjectKind::Resident, 1_000);
        let subject = tickets.redeem(&ticket, 1_001).expect("a fresh ticket");
        assert_eq!(subject.id, "r1");
        assert_eq!(subject.kind, SubjectKind::Resident);
        assert!(tickets.redeem(&ticket, 1_002).is_none(), "spent");
        let late = tickets.issue("r1", SubjectKind::Resident, 1_000);
        assert!(
            tickets.redeem(&late, 1_000 + TICKET_SECONDS).is_none(),
            "expired"
        );
    }

    #[test]
    fn sessions_and_other_keys_are_not_tickets() {
        let tickets = Tickets::new(b"secret");
        let (session, _) = crate::auth::Keys::new(b"secret").issue(
            "r1",
            SubjectKind::Resident,
            &booking::sessions::SessionId::random(),
            5,
            jsonwebtoken::get_current_timestamp() as i64,
        );
        let now = jsonwebtoken::get_current_timestamp() as i64;
        assert!(tickets.redeem(&session, now).is_none());
        let foreign = Tickets::new(b"other").issue("r1", SubjectKind::Resident, now);
        assert!(tickets.redeem(&foreign, now).is_none());
    }
}
