//! The sequenced history of one room: what was delivered, to whom, in which
//! order. Meeting rooms and chat conversations both keep one.

use std::collections::HashMap;

use crate::ids::{ClientMsgId, PartyId, RoomId, Seq};
use crate::protocol::RoomEvent;

/// One entry of a room's history as it is stored, so that a restarted node
/// can answer `resume` and refuse duplicate chat messages.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub room: RoomId,
    pub seq: Seq,
    pub audience: Audience,
    pub event: RoomEvent,
    /// Unix seconds, UTC, when the event happened.
    pub at: i64,
}

/// Who may see an event, now and on resume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Audience {
    /// Whoever the room lets read its history at the time they ask. Chat
    /// conversations use this, so that staff who take a chat over see all of it.
    Members,
    /// Exactly these parties. Meeting rooms use this, so that someone
    /// admitted later does not see what was said before they came.
    Parties(Vec<PartyId>),
}

impl Audience {
    pub fn includes(&self, party: &PartyId) -> bool {
        match self {
            Audience::Members => true,
            Audience::Parties(parties) => parties.contains(party),
        }
    }
}

/// A room's history in memory: the events, the next sequence number and the
/// chat messages already stored, keyed by sender and client id.
#[derive(Debug, Default)]
pub(crate) struct History {
    events: Vec<StoredEvent>,
    chat_ids: HashMap<(PartyId, ClientMsgId), Seq>,
}

impl History {
    /// Rebuilds a history from stored events, which must be in `seq` order
    /// starting at 1.
    pub(crate) fn restore(events: Vec<StoredEvent>) -> Self {
        let mut history = History::default();
        for event in events {
            history.remember_client_id(&event);
            history.events.push(event);
        }
        history
    }

    pub(crate) fn last_seq(&self) -> Seq {
        self.events.last().map_or(0, |e| e.seq)
    }

    /// The seq already given to this sender's message with this client id.
    pub(crate) fn chat_seq(&self, from: &PartyId, client_id: &ClientMsgId) -> Option<Seq> {
        self.chat_ids
            .get(&(from.clone(), client_id.clone()))
            .copied()
    }

    /// Appends an event and returns the stored form, which the caller must
    /// persist before delivering it.
    pub(crate) fn append(
        &mut self,
        room: &RoomId,
        audience: Audience,
        event: RoomEvent,
        at: i64,
    ) -> StoredEvent {
        let stored = StoredEvent {
            room: room.clone(),
            seq: self.last_seq() + 1,
            audience,
            event,
            at,
        };
        self.remember_client_id(&stored);
        self.events.push(stored.clone());
        stored
    }

    /// Events after `last_seq` that `party` may see, oldest first.
    pub(crate) fn since<'a>(
        &'a self,
        last_seq: Seq,
        party: &'a PartyId,
    ) -> impl Iterator<Item = &'a StoredEvent> + 'a {
        // Seqs start at 1 without gaps, so the index of seq n is n - 1.
        let start = usize::try_from(last_seq)
            .unwrap_or(usize::MAX)
            .min(self.events.len());
        self.events[start..]
            .iter()
            .filter(move |e| e.audience.includes(party))
    }

    /// The newest chat message in `(after, up_to]` written by someone other
    /// than `reader`, used to decide whether an ack is a read receipt.
    pub(crate) fn has_chat_from_others(&self, reader: &PartyId, after: Seq, up_to: Seq) -> bool {
        self.since(after, reader)
            .take_while(|e| e.seq <= up_to)
            .any(|e| matches!(&e.event, RoomEvent::Chat { from, .. } if from != reader))
    }

    fn remember_client_id(&mut self, event: &StoredEvent) {
        if let RoomEvent::Chat {
            from, client_id, ..
        } = &event.event
        {
            self.chat_ids
                .insert((from.clone(), client_id.clone()), event.seq);
        }
        if let RoomEvent::TimesOffered {
            from, client_id, ..
        } = &event.event
        {
            self.chat_ids
                .insert((from.clone(), client_id.clone()), event.seq);
        }
    }
}
