//! Identifiers shared by the protocol, the state machines and the store.
//!
//! They are newtypes so that a room id cannot be passed where a party id is
//! expected. Their constructors check length and characters, because every
//! one of them can arrive from a client and ends up in logs and store keys.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// The longest id accepted from a client. UUIDs with a prefix fit easily.
pub const MAX_ID_LEN: usize = 128;

/// Why a string was refused as an id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an id must be 1 to {MAX_ID_LEN} characters of A-Z, a-z, 0-9, '-', '_', ':' or '.'")]
pub struct InvalidId;

fn check_id(s: &str) -> Result<(), InvalidId> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | ':' | '.');
    if s.is_empty() || s.len() > MAX_ID_LEN || !s.chars().all(allowed) {
        return Err(InvalidId);
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Parses an id, refusing empty, overlong or oddly spelled ones.
            pub fn parse(s: impl Into<String>) -> Result<Self, InvalidId> {
                let s = s.into();
                check_id(&s)?;
                Ok(Self(s))
            }

            /// The id as text, as it is stored and sent.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = InvalidId;

            fn from_str(s: &str) -> Result<Self, InvalidId> {
                Self::parse(s)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(
    /// A meeting room or a chat conversation: anything with its own sequence
    /// of delivered events. Meeting rooms and conversations share one id space
    /// so that `ack`, `resume` and `chat.send` work the same for both.
    RoomId
);
id_type!(
    /// Someone who can be in a room: `staff:<id>`, `resident:<id>`,
    /// `guest:<invitation>` or `anonymous:<conversation>`.
    PartyId
);
id_type!(
    /// An id the client picks for a chat message, so that a retried send is
    /// stored once.
    ClientMsgId
);
id_type!(
    /// A municipality code, such as "0180".
    MunicipalityCode
);
id_type!(
    /// A service, such as "ekonomiskt-bistand".
    ServiceId
);
id_type!(
    /// A staff member's account id.
    StaffId
);
id_type!(
    /// A resident's account id.
    ResidentId
);
id_type!(
    /// The secret part of a single-use guest link.
    InvitationToken
);
id_type!(
    /// A booking in the `booking` crate.
    BookingId
);

impl PartyId {
    /// The party of a staff member.
    pub fn staff(id: &StaffId) -> Self {
        Self(format!("staff:{id}"))
    }

    /// The party of a signed-in resident.
    pub fn resident(id: &ResidentId) -> Self {
        Self(format!("resident:{id}"))
    }

    /// The party of a guest who came through an invitation.
    pub fn guest(token: &InvitationToken) -> Self {
        Self(format!("guest:{token}"))
    }

    /// The party of an anonymous resident, which exists only in one conversation.
    pub fn anonymous(conversation: &RoomId) -> Self {
        Self(format!("anonymous:{conversation}"))
    }
}

/// A connection to the hub, one per WebSocket. It is never sent to clients,
/// but it crosses the bus between nodes, so each node draws its ids from a
/// range of its own (see `Hub::new`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct ConnectionId(pub u64);

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn-{}", self.0)
    }
}

/// A position in a room's sequence of delivered events. The first is 1.
pub type Seq = u64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_refuse_bad_text() {
        assert!(RoomId::parse("booking:3f2a-11").is_ok());
        assert_eq!(RoomId::parse(""), Err(InvalidId));
        assert_eq!(RoomId::parse("a b"), Err(InvalidId));
        assert_eq!(RoomId::parse("x".repeat(MAX_ID_LEN + 1)), Err(InvalidId));
        assert!(serde_json::from_str::<RoomId>("\"a/b\"").is_err());
    }
}
