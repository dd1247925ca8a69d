//! The sequenced history of one room: what was delivered, to whom, in which
//! order. Meeting rooms and chat conversations both keep one.

use std::collections::HashMap;

use crate::ids::{ClientMsgId, PartyId, RoomId, Seq};
use crate::protocol::RoomEvent;
use crate::store::{EventRow, StoreError};

/// What `viewer` may read of a room's stored `rows`, typed and in seq order:
/// the events whose audience includes them, by [`Audience::includes`], the
/// rule the hub delivers and replays by. A transcript read from the
/// database later thus shows exactly what a `resume` from the start would
/// have sent the viewer (the property test below holds the two together),
/// and a reader outside the hub needs no rule of its own.
pub fn transcript_for(viewer: &PartyId, rows: &[EventRow]) -> Result<Vec<StoredEvent>, StoreError> {
    let mut events = rows
        .iter()
        .map(StoredEvent::from_row)
        .collect::<Result<Vec<_>, _>>()?;
    events.sort_by_key(|e| e.seq);
    events.retain(|e| e.audience.includes(viewer));
    Ok(events)
}

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

/// The stored form of an event and back, beside the event itself so that
/// `store` needs nothing of the history.
impl StoredEvent {
    /// The row this event is stored as.
    pub fn to_row(&self) -> EventRow {
        let event = self;
        let (sender, client_id) = match &event.event {
            RoomEvent::Chat {
                from, client_id, ..
            }
            | RoomEvent::TimesOffered {
                from, client_id, ..
            } => (
                Some(from.as_str().to_owned()),
                Some(client_id.as_str().to_owned()),
            ),
            _ => (None, None),
        };
        let body = serde_json::to_value(&event.event).expect("events always serialise");
        EventRow {
            room: event.room.as_str().to_owned(),
            seq: i64::try_from(event.seq).unwrap_or(i64::MAX),
            audience: match &event.audience {
                Audience::Members => None,
                Audience::Parties(parties) => {
                    Some(serde_json::to_string(parties).expect("ids always serialise"))
                }
            },
            kind: body["kind"].as_str().unwrap_or_default().to_owned(),
            sender,
            client_id,
            body: body.to_string(),
            at: event.at,
        }
    }

    /// The event a stored row holds; a row that does not parse is corrupt.
    pub fn from_row(row: &EventRow) -> Result<StoredEvent, StoreError> {
        let corrupt = |what: &str, e: String| {
            StoreError::Corrupt(format!("{} seq {}: {what}: {e}", row.room, row.seq))
        };
        Ok(StoredEvent {
            room: RoomId::parse(&row.room).map_err(|e| corrupt("room", e.to_string()))?,
            seq: u64::try_from(row.seq).map_err(|e| corrupt("seq", e.to_string()))?,
            audience: match &row.audience {
                None => Audience::Members,
                Some(json) => Audience::Parties(
                    serde_json::from_str(json).map_err(|e| corrupt("audience", e.to_string()))?,
                ),
            },
            event: serde_json::from_str(&row.body).map_err(|e| corrupt("body", e.to_string()))?,
            at: row.at,
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::protocol::Role;

    const PARTIES: [&str; 4] = ["resident:r1", "staff:s1", "staff:s2", "guest:tok1"];

    fn party(i: usize) -> PartyId {
        PartyId::parse(PARTIES[i % PARTIES.len()]).unwrap()
    }

    /// An event's audience: every member, or a subset of [`PARTIES`] given
    /// as a bit mask.
    fn audience(mask: Option<u8>) -> Audience {
        match mask {
            None => Audience::Members,
            Some(mask) => Audience::Parties(
                (0..PARTIES.len())
                    .filter(|i| mask & (1 << i) != 0)
                    .map(party)
                    .collect(),
            ),
        }
    }

    fn history(audiences: &[Option<u8>]) -> (History, Vec<EventRow>) {
        let room = RoomId::parse("chat:1").unwrap();
        let mut history = History::default();
        let mut rows = Vec::new();
        for (i, mask) in audiences.iter().enumerate() {
            let from = party(i);
            let event = RoomEvent::Chat {
                from,
                role: Role::Resident,
                client_id: format!("m{i}").parse().unwrap(),
                text: format!("message {i}"),
                sent_at: i as i64,
            };
            let stored = history.append(&room, audience(*mask), event, i as i64);
            rows.push(stored.to_row());
        }
        (history, rows)
    }

    proptest! {
        /// A transcript holds exactly the events the hub replays to the
        /// viewer on a resume from the start, in the same order, whatever
        /// order the rows come in.
        #[test]
        fn a_transcript_is_what_a_resume_from_the_start_replays(
            audiences in prop::collection::vec(prop::option::of(0u8..16), 0..24),
            viewer in 0usize..5,
            shuffle in any::<u64>(),
        ) {
            let (history, mut rows) = history(&audiences);
            // Four known parties, and one who is in no audience.
            let viewer = if viewer < PARTIES.len() { party(viewer) } else { PartyId::parse("resident:r9").unwrap() };
            let replayed: Vec<StoredEvent> = history.since(0, &viewer).cloned().collect();
            if !rows.is_empty() {
                let by = usize::try_from(shuffle).unwrap_or(0) % rows.len();
                rows.rotate_left(by);
            }
            let transcript = transcript_for(&viewer, &rows).unwrap();
            prop_assert_eq!(&transcript, &replayed);
            for event in &transcript {
                prop_assert!(event.audience.includes(&viewer));
            }
        }
    }

    #[test]
    fn a_corrupt_row_is_an_error_not_a_gap() {
        let (_, mut rows) = history(&[None, None]);
        rows[1].body = "{".into();
        let viewer = party(0);
        assert!(matches!(
            transcript_for(&viewer, &rows),
            Err(StoreError::Corrupt(_))
        ));
    }
}
