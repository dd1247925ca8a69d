//! Tickets for `/ws`: browsers cannot put a Bearer header on a WebSocket
//! handshake, and a session cookie alone would let any page the resident has
//! open start a socket. So a client with a session asks the JSON API for a
//! ticket and puts it in the URL. A ticket is a JWT that lives 30 seconds and
//! is spent by its first use; even if a URL is logged, it is worthless.
//!
//! A resident without an account chats with a token for one chat instead
//! of a session ([`Tickets::issue_chat_token`]): the same JSON API turns it
//! into a ticket, and the socket it opens may act in that one chat only.
//!
//! A guest (an interpreter or a colleague) comes with a guest link instead
//! ([`Tickets::issue_guest_link`]): a token naming one meeting room and the
//! single-use invitation the room holds, valid until a while after the
//! meeting ends. It too turns into tickets only, for that one room; the room
//! itself spends the invitation on first use.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::auth::SubjectKind;

/// How long a ticket is valid, in seconds.
pub const TICKET_SECONDS: i64 = 30;

/// How long a token for one anonymous chat lets its holder reconnect, in
/// seconds: long enough for a chat that goes on to video.
pub const CHAT_TOKEN_SECONDS: i64 = 4 * 3600;

/// The `kind` every ticket carries, so that no other token of ours can pass.
const TICKET_KIND: &str = "ws_ticket";

/// The `kind` of a token for one anonymous chat.
const CHAT_TOKEN_KIND: &str = "anonymous_chat";

/// The `kind` of a guest link's token.
const GUEST_LINK_KIND: &str = "guest_link";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TicketClaims {
    sub: String,
    subject: TicketKind,
    /// The chat of an anonymous ticket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    chat: Option<AnonymousChat>,
    /// The room and invitation of a guest's ticket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    guest: Option<GuestPass>,
    kind: String,
    jti: String,
    iat: i64,
    exp: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum TicketKind {
    Resident,
    Staff,
    Anonymous,
    Guest,
}

/// One anonymous chat, as its token names it: the chat's room, the one
/// service it may be opened for, and the home municipality the resident
/// chose on the page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnonymousChat {
    /// `chat:<id>`, chosen when the token was issued.
    pub room: String,
    pub service: String,
    pub home: String,
}

/// What a guest link lets its holder into: one meeting room, through the
/// invitation the room made, in a role (for the guest page's words only:
/// the room keeps the role it granted), for a meeting at a time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestPass {
    /// `booking:<id>`.
    pub room: String,
    /// The room's single-use invitation token.
    pub invitation: String,
    /// `interpreter` or `social_worker`.
    pub role: String,
    /// The language to interpret, for an interpreter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    /// The meeting's start and end, unix seconds.
    pub starts_at: i64,
    pub ends_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct GuestLinkClaims {
    sub: String,
    kind: String,
    guest: GuestPass,
    iat: i64,
    exp: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ChatTokenClaims {
    sub: String,
    kind: String,
    chat: AnonymousChat,
    iat: i64,
    exp: i64,
}

/// Who a redeemed ticket was issued to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TicketSubject {
    /// A signed-in resident or staff member.
    Account { id: String, kind: SubjectKind },
    /// The holder of a token for one anonymous chat.
    Anonymous(AnonymousChat),
    /// The holder of a guest link to one meeting room.
    Guest(GuestPass),
}

/// Issues and redeems tickets, and the tokens of anonymous chats. Cloning
/// shares the set of spent tickets.
#[derive(Clone)]
pub struct Tickets {
    encoding: EncodingKey,
    decoding: DecodingKey,
    chat_encoding: EncodingKey,
    chat_decoding: DecodingKey,
    guest_encoding: EncodingKey,
    guest_decoding: DecodingKey,
    /// Spent ticket ids with their expiry; an id is forgotten once its
    /// ticket has expired, because expiry alone refuses it from then on.
    spent: Arc<Mutex<HashMap<String, i64>>>,
}

impl Tickets {
    /// Keys derived from the session secret with a suffix each, so that no
    /// session token verifies as a ticket or a chat token, nor any of them
    /// as another.
    pub fn new(secret: &[u8]) -> Tickets {
        let key = [secret, b"/ws-ticket"].concat();
        let chat_key = [secret, b"/anonymous-chat"].concat();
        let guest_key = [secret, b"/guest-link"].concat();
        const SUFFIXED: &str = "a key with a suffix is never empty";
        Tickets {
            encoding: EncodingKey::from_secret(&key).expect(SUFFIXED),
            decoding: DecodingKey::from_secret(&key).expect(SUFFIXED),
            chat_encoding: EncodingKey::from_secret(&chat_key).expect(SUFFIXED),
            chat_decoding: DecodingKey::from_secret(&chat_key).expect(SUFFIXED),
            guest_encoding: EncodingKey::from_secret(&guest_key).expect(SUFFIXED),
            guest_decoding: DecodingKey::from_secret(&guest_key).expect(SUFFIXED),
            spent: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// A new ticket for `id`, valid from `now` (unix seconds).
    pub fn issue(&self, id: &str, kind: SubjectKind, now: i64) -> String {
        let subject = match kind {
            SubjectKind::Resident => TicketKind::Resident,
            SubjectKind::Staff => TicketKind::Staff,
        };
        self.sign(id, subject, None, None, now)
    }

    /// A new ticket for the holder of a token for `chat`.
    pub fn issue_anonymous(&self, chat: &AnonymousChat, now: i64) -> String {
        self.sign(
            &chat.room,
            TicketKind::Anonymous,
            Some(chat.clone()),
            None,
            now,
        )
    }

    /// A new ticket for the holder of a guest link.
    pub fn issue_guest(&self, guest: &GuestPass, now: i64) -> String {
        self.sign(
            &guest.invitation,
            TicketKind::Guest,
            None,
            Some(guest.clone()),
            now,
        )
    }

    fn sign(
        &self,
        sub: &str,
        subject: TicketKind,
        chat: Option<AnonymousChat>,
        guest: Option<GuestPass>,
        now: i64,
    ) -> String {
        let claims = TicketClaims {
            sub: sub.to_owned(),
            subject,
            chat,
            guest,
            kind: TICKET_KIND.to_owned(),
            jti: uuid::Uuid::new_v4().simple().to_string(),
            iat: now,
            exp: now + TICKET_SECONDS,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing cannot fail")
    }

    /// A token for one anonymous chat, valid for [`CHAT_TOKEN_SECONDS`]
    /// from `now`, and its expiry (unix seconds). It is no session: it opens
    /// nothing but tickets for that chat.
    pub fn issue_chat_token(&self, chat: &AnonymousChat, now: i64) -> (String, i64) {
        let exp = now + CHAT_TOKEN_SECONDS;
        let claims = ChatTokenClaims {
            sub: chat.room.clone(),
            kind: CHAT_TOKEN_KIND.to_owned(),
            chat: chat.clone(),
            iat: now,
            exp,
        };
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.chat_encoding)
                .expect("HS256 signing cannot fail");
        (token, exp)
    }

    /// The chat a token names, if it is ours, a chat token and unexpired.
    pub fn verify_chat_token(&self, token: &str, now: i64) -> Option<AnonymousChat> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.validate_exp = false;
        validation.set_required_spec_claims(&["exp", "sub"]);
        let claims =
            jsonwebtoken::decode::<ChatTokenClaims>(token, &self.chat_decoding, &validation)
                .ok()?
                .claims;
        (claims.kind == CHAT_TOKEN_KIND && claims.exp > now).then_some(claims.chat)
    }

    /// A guest link's token for `guest`, valid until `expires_at` (unix
    /// seconds). It is no session: it opens nothing but tickets for that
    /// one room, and the room lets it in once.
    pub fn issue_guest_link(&self, guest: &GuestPass, now: i64, expires_at: i64) -> String {
        let claims = GuestLinkClaims {
            sub: guest.invitation.clone(),
            kind: GUEST_LINK_KIND.to_owned(),
            guest: guest.clone(),
            iat: now,
            exp: expires_at,
        };
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &self.guest_encoding,
        )
        .expect("HS256 signing cannot fail")
    }

    /// The room a guest link opens, if the link is ours, a guest link and
    /// unexpired.
    pub fn verify_guest_link(&self, token: &str, now: i64) -> Option<GuestPass> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.validate_exp = false;
        validation.set_required_spec_claims(&["exp", "sub"]);
        let claims =
            jsonwebtoken::decode::<GuestLinkClaims>(token, &self.guest_decoding, &validation)
                .ok()?
                .claims;
        (claims.kind == GUEST_LINK_KIND && claims.exp > now).then_some(claims.guest)
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
        match (claims.subject, claims.chat, claims.guest) {
            (TicketKind::Resident, None, None) => Some(TicketSubject::Account {
                id: claims.sub,
                kind: SubjectKind::Resident,
            }),
            (TicketKind::Staff, None, None) => Some(TicketSubject::Account {
                id: claims.sub,
                kind: SubjectKind::Staff,
            }),
            (TicketKind::Anonymous, Some(chat), None) => Some(TicketSubject::Anonymous(chat)),
            (TicketKind::Guest, None, Some(guest)) => Some(TicketSubject::Guest(guest)),
            _ => None,
        }
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
        assert_eq!(
            subject,
            TicketSubject::Account {
                id: "r1".into(),
                kind: SubjectKind::Resident
            }
        );
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

    #[test]
    fn a_chat_token_opens_tickets_for_its_one_chat_until_it_expires() {
        let tickets = Tickets::new(b"secret");
        let chat = AnonymousChat {
            room: "chat:abc".into(),
            service: "stod-till-anhoriga".into(),
            home: "2418".into(),
        };
        let (token, expires) = tickets.issue_chat_token(&chat, 1_000);
        assert_eq!(expires, 1_000 + CHAT_TOKEN_SECONDS);
        assert_eq!(tickets.verify_chat_token(&token, 1_001), Some(chat.clone()));
        assert_eq!(tickets.verify_chat_token(&token, expires), None, "expired");
        let ticket = tickets.issue_anonymous(&chat, 1_001);
        assert_eq!(
            tickets.redeem(&ticket, 1_002),
            Some(TicketSubject::Anonymous(chat.clone()))
        );
        // Neither passes for the other, nor for a session or another key.
        assert_eq!(tickets.redeem(&token, 1_002), None);
        assert_eq!(tickets.verify_chat_token(&ticket, 1_002), None);
        let (session, _) = crate::auth::Keys::new(b"secret").issue(
            "r1",
            SubjectKind::Resident,
            &booking::sessions::SessionId::random(),
            5,
            1_000,
        );
        assert_eq!(tickets.verify_chat_token(&session, 1_001), None);
        let (foreign, _) = Tickets::new(b"other").issue_chat_token(&chat, 1_000);
        assert_eq!(tickets.verify_chat_token(&foreign, 1_001), None);
    }

    #[test]
    fn a_guest_link_opens_tickets_for_its_one_room_until_it_expires() {
        let tickets = Tickets::new(b"secret");
        let guest = GuestPass {
            room: "booking:b1".into(),
            invitation: "inv1".into(),
            role: "interpreter".into(),
            language: Some("ar".into()),
            starts_at: 1_000,
            ends_at: 2_000,
        };
        let link = tickets.issue_guest_link(&guest, 900, 3_000);
        assert_eq!(tickets.verify_guest_link(&link, 2_999), Some(guest.clone()));
        assert_eq!(tickets.verify_guest_link(&link, 3_000), None, "expired");
        let ticket = tickets.issue_guest(&guest, 1_001);
        assert_eq!(
            tickets.redeem(&ticket, 1_002),
            Some(TicketSubject::Guest(guest.clone()))
        );
        // A link is no ticket, nor a chat token, nor is anything else a link.
        assert_eq!(tickets.redeem(&link, 1_002), None);
        assert_eq!(tickets.verify_chat_token(&link, 1_002), None);
        assert_eq!(tickets.verify_guest_link(&ticket, 1_002), None);
        let chat = AnonymousChat {
            room: "chat:abc".into(),
            service: "stod-till-anhoriga".into(),
            home: "2418".into(),
        };
        let (chat_token, _) = tickets.issue_chat_token(&chat, 1_000);
        assert_eq!(tickets.verify_guest_link(&chat_token, 1_001), None);
        let foreign = Tickets::new(b"other").issue_guest_link(&guest, 900, 3_000);
        assert_eq!(tickets.verify_guest_link(&foreign, 1_001), None);
    }
}
