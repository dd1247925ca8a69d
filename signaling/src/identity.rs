//! Who is behind a connection, and what the endpoint gives to open a chat:
//! the values the WebSocket endpoint hands the hub, which also cross the
//! bus between the nodes of a cluster.

use std::collections::BTreeSet;

use crate::ids::{
    InvitationToken, MunicipalityCode, PartyId, ResidentId, RoomId, ServiceId, StaffId,
};

/// Who is behind a connection, as the endpoint learnt it from the ticket.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Identity {
    Resident {
        id: ResidentId,
        home_municipality: MunicipalityCode,
    },
    Staff {
        id: StaffId,
        municipality: MunicipalityCode,
        /// The services this staff member may handle.
        may_handle: BTreeSet<ServiceId>,
    },
    /// Someone who came through a single-use guest link to one room. The
    /// role comes from the invitation the room holds, not from the link.
    Guest {
        room: RoomId,
        invitation: InvitationToken,
    },
    /// A resident without an account, scoped to one chat conversation.
    Anonymous { conversation: RoomId },
}

impl Identity {
    pub fn party(&self) -> PartyId {
        match self {
            Identity::Resident { id, .. } => PartyId::resident(id),
            Identity::Staff { id, .. } => PartyId::staff(id),
            Identity::Guest { invitation, .. } => PartyId::guest(invitation),
            Identity::Anonymous { conversation } => PartyId::anonymous(conversation),
        }
    }
}

/// What the endpoint gives to open a pre-assessment chat.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConversationRequest {
    pub service: ServiceId,
    /// Used for anonymous residents only; a signed-in resident's comes from
    /// their identity.
    pub home_municipality: MunicipalityCode,
    /// From the `booking` crate's policy: the municipalities whose staff may
    /// perform `pre_assessment` of this service for this resident.
    pub eligible_municipalities: BTreeSet<MunicipalityCode>,
}

/// The staff members who may enter a room and run it, as the caller's
/// policy decided (for a booking, everyone the `booking` crate lets handle
/// it). Anyone else is answered as if the room did not exist.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StaffAccess(BTreeSet<StaffId>);

impl StaffAccess {
    /// Access for exactly these staff members.
    pub fn only(staff: impl IntoIterator<Item = StaffId>) -> Self {
        StaffAccess(staff.into_iter().collect())
    }

    pub fn admits(&self, staff: &StaffId) -> bool {
        self.0.contains(staff)
    }

    /// Whether `party` is a staff member this access admits.
    pub(crate) fn admits_party(&self, party: &PartyId) -> bool {
        self.0.iter().any(|staff| PartyId::staff(staff) == *party)
    }
}
