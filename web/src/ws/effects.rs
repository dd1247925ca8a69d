//! What the hub asks of the rest of `kontakt`: audit entries and booking
//! outcomes go to `booking`, TURN credentials come from the relay's shared
//! secret when a relay is configured.

use async_trait::async_trait;
use booking::audit::{self, Actor, Entry, Outcome};
use booking::{BookingStatus, Db};
use signaling::hub::Effects;
use signaling::ids::{BookingId, MunicipalityCode, PartyId, ResidentId, RoomId, StaffId};
use signaling::outbound::AuditEntry;
use signaling::protocol::{BookingOutcome, Participant, TurnCredentials};

/// Makes TURN REST credentials (the time-limited username/password scheme
/// coturn and the media relay accept): the username is
/// `<expiry unix seconds>:<party>` and the password is the base64 of its
/// HMAC-SHA1 under the secret the relay shares.
#[derive(Clone)]
pub struct TurnIssuer {
    secret: String,
    urls: Vec<String>,
    ttl_secs: u64,
}

impl TurnIssuer {
    pub fn new(secret: &str, urls: Vec<String>, ttl_secs: u64) -> TurnIssuer {
        TurnIssuer {
            secret: secret.to_owned(),
            urls,
            ttl_secs,
        }
    }

    /// Credentials for `party`, valid `ttl_secs` from `now` (unix seconds).
    /// The relay counts quotas per subject, the part after the expiry; a
    /// party id's own `:` becomes `-` so that the username has exactly one.
    pub fn issue(&self, party: &PartyId, now: i64) -> TurnCredentials {
        let subject = party.to_string().replace(':', "-");
        let at =
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(now).unwrap_or(0));
        let (username, password) = media_relay::credentials::issue(
            &self.secret,
            &subject,
            std::time::Duration::from_secs(self.ttl_secs),
            at,
        );
        TurnCredentials {
            urls: self.urls.clone(),
            username,
            password,
            ttl_secs: self.ttl_secs,
        }
    }
}

impl TurnIssuer {
    /// The TURN URLs clients are given, in the configured order.
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// A username and password for one allocation of the pre-call check,
    /// valid `ttl_secs` from `now` (unix seconds; at most
    /// [`media_relay::credentials::PRECHECK_MAX_TTL`]). Each has a random
    /// subject of its own, so that the relay's one allocation per
    /// credential is one per credential issued.
    pub fn issue_precheck(&self, ttl_secs: u64, now: i64) -> (String, String) {
        use base64::Engine as _;
        use rand::RngCore as _;
        let mut id = [0u8; 12];
        rand::thread_rng().fill_bytes(&mut id);
        let id = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id);
        let at =
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(now).unwrap_or(0));
        media_relay::credentials::issue_precheck(
            &self.secret,
            &id,
            std::time::Duration::from_secs(ttl_secs),
            at,
        )
    }
}

/// The hub's effects on the database, the relay and the logs.
pub struct AppEffects {
    db: Db,
    turn: Option<TurnIssuer>,
}

impl AppEffects {
    pub fn new(db: Db, turn: Option<TurnIssuer>) -> AppEffects {
        AppEffects { db, turn }
    }
}

#[async_trait]
impl Effects for AppEffects {
    async fn audit(&self, entry: AuditEntry) {
        let actor = actor_of(&entry.actor);
        let outcome = if entry.action.refused() {
            Outcome::Denied
        } else {
            Outcome::Allowed
        };
        let booking = entry
            .room
            .as_str()
            .strip_prefix("booking:")
            .map(BookingId::parse);
        let written = match (&actor, booking) {
            // A booking's meeting is recorded as the API records a read of
            // the booking: with its rule and agreement.
            (Actor::Staff(staff), Some(Ok(booking))) => {
                booking::bookings::audit_meeting_access(
                    &self.db,
                    staff,
                    &booking,
                    entry.action.as_str(),
                    outcome,
                    jiff::Timestamp::now(),
                )
                .await
            }
            // Anything else as the hub describes it. A booking room whose
            // id is no booking id names no booking, so it is recorded as
            // `audit_meeting_access` records a missing booking: with no
            // resident and no municipality.
            (actor_kind, booking) => {
                let names_no_booking =
                    matches!((actor_kind, &booking), (Actor::Staff(_), Some(Err(_))));
                let resident_id = entry
                    .subject
                    .as_str()
                    .strip_prefix("resident:")
                    .and_then(|id| ResidentId::parse(id).ok())
                    .filter(|_| !names_no_booking);
                let on_behalf_of = entry
                    .on_behalf_of
                    .as_ref()
                    .map(|m| m.as_str())
                    .filter(|_| !names_no_booking);
                let record = Entry {
                    actor: &actor,
                    action: entry.action.as_str(),
                    subject: entry.room.as_str().to_owned(),
                    resident_id: resident_id.as_ref(),
                    on_behalf_of,
                    rule: None,
                    agreement_id: None,
                    outcome,
                };
                audit::record_now(&self.db, &record, now())
                    .await
                    .map_err(booking::Error::from)
            }
        };
        if let Err(e) = written {
            // The hub has no way to take back a read it already allowed, so
            // a lost audit entry is an error for operators to see.
            tracing::error!(error = %e, room = %entry.room, action = entry.action.as_str(), "writing an audit entry failed");
        }
    }

    async fn booking_outcome(&self, booking: &BookingId, outcome: BookingOutcome) {
        let status = match outcome {
            BookingOutcome::Completed => BookingStatus::Completed,
            BookingOutcome::NoShow => BookingStatus::NoShow,
        };
        let now = jiff::Timestamp::now();
        match booking::bookings::record_outcome(&self.db, booking, status, now).await {
            Ok(_) => {
                tracing::info!(%booking, outcome = status.as_str(), "booking outcome recorded")
            }
            // A booking cancelled or already ended keeps its status.
            Err(booking::Error::Conflict(reason)) => {
                tracing::info!(%booking, outcome = status.as_str(), %reason, "booking outcome not recorded")
            }
            Err(e) => {
                tracing::error!(%booking, outcome = status.as_str(), error = ?e, "recording a booking outcome failed")
            }
        }
    }

    fn turn_credentials(&self, _room: &RoomId, party: &PartyId) -> Option<TurnCredentials> {
        self.turn.as_ref().map(|issuer| issuer.issue(party, now()))
    }

    async fn staff_notified(
        &self,
        room: &RoomId,
        municipality: &MunicipalityCode,
        staff: Option<&StaffId>,
        participant: &Participant,
    ) {
        // Consoles that are connected have the knock already. The staff
        // member booked for the meeting also gets a mail, which names only
        // the meeting's time, in case they are not at the console.
        tracing::info!(%room, %municipality, staff = ?staff.map(StaffId::as_str), party = %participant.party, "knock with no staff in the room");
        let Some(Ok(booking_id)) = room.as_str().strip_prefix("booking:").map(BookingId::parse)
        else {
            return;
        };
        match booking::bookings::knock(&self.db, &booking_id, now()).await {
            Ok(true) => tracing::info!(%room, "knock mailed to the booked staff member"),
            Ok(false) => {}
            Err(e) => tracing::error!(%room, error = ?e, "mailing a knock failed"),
        }
    }

    async fn conversation_closed(&self, room: &RoomId, resident: &PartyId, anonymous: bool) {
        // The transcript stays in `signaling_events`, where "My pages"
        // shows a signed-in resident's (`pages/chats.rs`); retention of
        // anonymous chats is a later step.
        tracing::info!(%room, %resident, anonymous, "chat closed");
    }
}

/// The actor of `party`. The hub names staff and residents by
/// [`PartyId::staff`] and [`PartyId::resident`], so their ids parse.
fn actor_of(party: &PartyId) -> Actor {
    let text = party.as_str();
    if let Some(id) = text
        .strip_prefix("staff:")
        .and_then(|id| StaffId::parse(id).ok())
    {
        Actor::Staff(id)
    } else if let Some(id) = text
        .strip_prefix("resident:")
        .and_then(|id| ResidentId::parse(id).ok())
    {
        Actor::Resident(id)
    } else if let Some(id) = text.strip_prefix("guest:") {
        Actor::Guest(id.to_owned())
    } else {
        Actor::Anonymous
    }
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use hmac::{Hmac, Mac};

    #[test]
    fn turn_credentials_follow_the_rest_scheme() {
        let issuer = TurnIssuer::new("secret", vec!["turn:relay.example:3478".into()], 600);
        let party = PartyId::parse("resident:r1").unwrap();
        let credentials = issuer.issue(&party, 1000);
        assert_eq!(credentials.username, "1600:resident-r1");
        let mut mac = Hmac::<sha1::Sha1>::new_from_slice(b"secret").unwrap();
        mac.update(b"1600:resident-r1");
        let expected =
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        assert_eq!(credentials.password, expected);
        assert_eq!(credentials.ttl_secs, 600);
    }

    #[test]
    fn actors_come_from_party_prefixes() {
        let actor = |s: &str| actor_of(&PartyId::parse(s).unwrap());
        assert_eq!(
            actor("staff:s1"),
            Actor::Staff(StaffId::parse("s1").unwrap())
        );
        assert_eq!(
            actor("resident:r1"),
            Actor::Resident(ResidentId::parse("r1").unwrap())
        );
        assert_eq!(actor("anonymous:chat:1"), Actor::Anonymous);
    }
}
