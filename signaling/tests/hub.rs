//! The hub end to end, without a network: a memory store, the in-process
//! bus and an `Effects` that records what it is asked to do.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use signaling::bus::InProcessBus;
use signaling::hub::{Effects, Hub, HubSettings, Settled};
use signaling::identity::{ConversationRequest, Identity};
use signaling::ids::{BookingId, ConnectionId, MunicipalityCode, PartyId, RoomId, Seq, StaffId};
use signaling::outbound::AuditEntry;
use signaling::protocol::{
    BookingOutcome, ClientMessage, ErrorCode, Participant, ServerMessage, TurnCredentials,
};
use signaling::queue::{QueueMode, QueueSettings};
use signaling::room::{MeetingSetup, StaffAccess};
use signaling::store::{MemoryStore, Store};
use tokio::sync::mpsc::Receiver;

#[derive(Default)]
struct Recorded {
    audits: Mutex<Vec<AuditEntry>>,
    outcomes: Mutex<Vec<(BookingId, BookingOutcome)>>,
    closed: Mutex<Vec<RoomId>>,
}

#[async_trait]
impl Effects for Recorded {
    async fn audit(&self, entry: AuditEntry) {
        self.audits.lock().unwrap().push(entry);
    }
    async fn booking_outcome(&self, booking: &BookingId, outcome: BookingOutcome) {
        self.outcomes
            .lock()
            .unwrap()
            .push((booking.clone(), outcome));
    }
    fn turn_credentials(&self, _room: &RoomId, party: &PartyId) -> Option<TurnCredentials> {
        Some(TurnCredentials {
            urls: vec!["turn:127.0.0.1:3478".into()],
            username: format!("9999999999:{party}"),
            password: "secret".into(),
            ttl_secs: 3600,
        })
    }
    async fn staff_notified(
        &self,
        _room: &RoomId,
        _municipality: &MunicipalityCode,
        _staff: Option<&StaffId>,
        _participant: &Participant,
    ) {
    }
    async fn conversation_closed(&self, room: &RoomId, _resident: &PartyId, _anonymous: bool) {
        self.closed.lock().unwrap().push(room.clone());
    }
}

fn settings() -> HubSettings {
    HubSettings {
        queue: QueueSettings {
            mode: QueueMode::Manual,
            answer_timeout: Duration::from_secs(60),
            abandon_after: Duration::from_secs(300),
            average_chat: Duration::from_secs(600),
        }
        .into(),
        connection_buffer: 256,
    }
}

fn hub_with(store: Arc<MemoryStore>) -> (Hub, Arc<Recorded>) {
    let effects = Arc::new(Recorded::default());
    let hub = Hub::new(
        settings(),
        store,
        Arc::new(InProcessBus::default()),
        effects.clone(),
    );
    (hub, effects)
}

fn id<T: std::str::FromStr>(s: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    s.parse().unwrap()
}

fn staff(name: &str, municipality: &str) -> Identity {
    Identity::Staff {
        id: id(name),
        municipality: id(municipality),
        may_handle: BTreeSet::from([id("stod")]),
    }
}

fn resident(name: &str) -> Identity {
    Identity::Resident {
        id: id(name),
        home_municipality: id("0181"),
    }
}

fn meeting(hub: &Hub) -> MeetingSetup {
    let clock = hub.clock();
    MeetingSetup {
        room: id("booking:b1"),
        booking: Some(id("b1")),
        performing_municipality: id("0180"),
        // As the caller's policy decided: s1 and s2 may handle the booking;
        // s3, of the same municipality, may not.
        staff_access: StaffAccess::only([id("s1"), id("s2")]),
        staff: Some(id("s1")),
        resident: id("resident:r1"),
        home_municipality: Some(id("0181")),
        starts_at: Some(clock.instant + Duration::from_secs(60)),
        no_show_grace: Duration::from_secs(600),
        pre_admitted: Vec::new(),
        clock,
    }
}

/// Reads messages until one matches, failing after five seconds. Returns
/// the match and everything read before it.
async fn expect(
    rx: &mut Receiver<ServerMessage>,
    what: &str,
    pred: impl Fn(&ServerMessage) -> bool,
) -> (ServerMessage, Vec<ServerMessage>) {
    let mut skipped = Vec::new();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}; got {skipped:#?}"))
            .unwrap_or_else(|| panic!("channel closed waiting for {what}"));
        if pred(&next) {
            return (next, skipped);
        }
        skipped.push(next);
    }
}

/// Everything already waiting on the channel, without waiting for more.
fn drain(rx: &mut Receiver<ServerMessage>) -> Vec<ServerMessage> {
    let mut all = Vec::new();
    while let Ok(m) = rx.try_recv() {
        all.push(m);
    }
    all
}

fn chat(room: &str, client_id: &str, text: &str) -> ClientMessage {
    ClientMessage::ChatSend {
        room: id(room),
        client_id: id(client_id),
        text: text.into(),
    }
}

fn join(room: &str) -> ClientMessage {
    ClientMessage::Join {
        room: id(room),
        invitation: None,
    }
}

async fn admitted_meeting(
    hub: &Hub,
) -> (
    ConnectionId,
    Receiver<ServerMessage>,
    ConnectionId,
    Receiver<ServerMessage>,
) {
    hub.open_meeting(meeting(hub)).await.unwrap();
    let (s, mut srx) = hub.connect(staff("s1", "0180")).await;
    let (r, mut rrx) = hub.connect(resident("r1")).await;
    hub.handle(r, join("booking:b1")).await;
    let (status, _) = expect(&mut rrx, "lobby status", |m| {
        matches!(m, ServerMessage::LobbyStatus { .. })
    })
    .await;
    assert_eq!(
        status,
        ServerMessage::LobbyStatus {
            room: id("booking:b1"),
            staff_present: false
        }
    );
    // The staff member's console hears the knock before they are in the room.
    expect(&mut srx, "knock", |m| {
        matches!(m, ServerMessage::LobbyKnock { .. })
    })
    .await;
    hub.handle(s, join("booking:b1")).await;
    expect(&mut rrx, "staff present", |m| {
        matches!(
            m,
            ServerMessage::LobbyStatus {
                staff_present: true,
                ..
            }
        )
    })
    .await;
    hub.handle(
        s,
        ClientMessage::LobbyAdmit {
            room: id("booking:b1"),
            party: id("resident:r1"),
        },
    )
    .await;
    expect(&mut rrx, "turn credentials", |m| {
        matches!(m, ServerMessage::TurnCredentials { .. })
    })
    .await;
    (s, srx, r, rrx)
}

#[tokio::test]
async fn meeting_chat_is_stored_delivered_and_resumed_after_a_restart() {
    let store = Arc::new(MemoryStore::new());
    let (hub, effects) = hub_with(store.clone());
    let (s, mut srx, r, mut rrx) = admitted_meeting(&hub).await;
    hub.handle(r, chat("booking:b1", "m1", "Hej")).await;
    let (stored, _) = expect(&mut rrx, "chat.stored", |m| {
        matches!(m, ServerMessage::ChatStored { .. })
    })
    .await;
    let ServerMessage::ChatStored { seq, .. } = stored else {
        unreachable!()
    };
    expect(
        &mut srx,
        "the chat",
        |m| matches!(m, ServerMessage::Event { seq: n, .. } if *n == seq),
    )
    .await;
    assert!(
        !effects.audits.lock().unwrap().is_empty(),
        "staff entering is audited"
    );

    // A new node on the same store: the room continues from the store.
    let (hub2, _) = hub_with(store.clone());
    hub2.open_meeting(meeting(&hub2)).await.unwrap();
    let (r2, mut rrx2) = hub2.connect(resident("r1")).await;
    hub2.handle(r2, join("booking:b1")).await;
    // The history remembers the admission: the resident is back in the
    // room without knocking again, and the room counts on from its history.
    let last_seq = admitted(&mut rrx2).await;
    assert!(last_seq >= seq, "{last_seq:?}");
    let (s2, mut srx2) = hub2.connect(staff("s1", "0180")).await;
    hub2.handle(s2, join("booking:b1")).await;
    hub2.handle(
        s2,
        ClientMessage::Resume {
            room: id("booking:b1"),
            last_seq: 0,
        },
    )
    .await;
    hub2.handle(s2, ClientMessage::Ping).await;
    let (_, before_pong) = expect(&mut srx2, "pong", |m| matches!(m, ServerMessage::Pong)).await;
    // Live events come before `joined`; the replay comes after it.
    let joined_at = before_pong
        .iter()
        .position(|m| matches!(m, ServerMessage::Joined { .. }))
        .expect("joined");
    let replayed: Vec<u64> = before_pong[joined_at..]
        .iter()
        .filter_map(|m| match m {
            ServerMessage::Event { seq, .. } => Some(*seq),
            _ => None,
        })
        .collect();
    assert!(replayed.windows(2).all(|w| w[0] < w[1]), "{replayed:?}");
    assert!(
        replayed.contains(&seq),
        "resume replays the chat: {replayed:?}"
    );
    // The same message sent again after the restart is not stored twice.
    hub2.handle(r2, chat("booking:b1", "m1", "Hej")).await;
    let (again, _) = expect(&mut rrx2, "chat.stored", |m| {
        matches!(m, ServerMessage::ChatStored { .. })
    })
    .await;
    assert_eq!(
        again,
        ServerMessage::ChatStored {
            room: id("booking:b1"),
            client_id: id("m1"),
            seq
        }
    );
    let _ = (s, drain(&mut rrx));
}

#[tokio::test]
async fn a_failed_store_write_shows_nothing_and_leaves_no_gap() {
    let store = Arc::new(MemoryStore::new());
    let (hub, _) = hub_with(store.clone());
    let (_s, mut srx, r, mut rrx) = admitted_meeting(&hub).await;
    drain(&mut srx);
    store.set_failing(true);
    hub.handle(r, chat("booking:b1", "m1", "lost?")).await;
    let (error, _) = expect(&mut rrx, "error", |m| {
        matches!(m, ServerMessage::Error { .. })
    })
    .await;
    assert!(matches!(
        error,
        ServerMessage::Error {
            code: ErrorCode::StorageUnavailable,
            ..
        }
    ));
    // The store stayed down through the reload, so the room closed.
    expect(&mut rrx, "room closed", |m| {
        matches!(m, ServerMessage::RoomClosed { .. })
    })
    .await;
    assert!(drain(&mut srx)
        .iter()
        .all(|m| !matches!(m, ServerMessage::Event { .. })));
    store.set_failing(false);
    // Reopened from the store, the room goes on from the last stored seq.
    hub.open_meeting(meeting(&hub)).await.unwrap();
    let (s2, mut srx2) = hub.connect(staff("s1", "0180")).await;
    hub.handle(s2, join("booking:b1")).await;
    let (joined, _) = expect(&mut srx2, "joined", |m| {
        matches!(m, ServerMessage::Joined { .. })
    })
    .await;
    let ServerMessage::Joined { last_seq, .. } = joined else {
        unreachable!()
    };
    let stored: Vec<i64> = store
        .events_after("booking:b1", 0)
        .await
        .unwrap()
        .iter()
        .map(|row| row.seq)
        .collect();
    assert_eq!(stored, (1..=last_seq as i64).collect::<Vec<_>>());
}

/// A memory store whose batch writes fail every third time once told to,
/// while reads keep working: a database that drops some commits.
struct FlakyStore {
    inner: MemoryStore,
    flaky: std::sync::atomic::AtomicBool,
    batches: std::sync::atomic::AtomicUsize,
}

#[async_trait]
impl Store for FlakyStore {
    async fn append_event(
        &self,
        row: signaling::store::EventRow,
    ) -> Result<signaling::store::Appended, signaling::store::StoreError> {
        self.inner.append_event(row).await
    }
    async fn append_events(
        &self,
        rows: Vec<signaling::store::EventRow>,
    ) -> Vec<Result<signaling::store::Appended, signaling::store::StoreError>> {
        use std::sync::atomic::Ordering::SeqCst;
        if self.flaky.load(SeqCst) && self.batches.fetch_add(1, SeqCst) % 3 == 1 {
            let down = signaling::store::StoreError::Unavailable("commit failed".into());
            return rows.iter().map(|_| Err(down.clone())).collect();
        }
        self.inner.append_events(rows).await
    }
    async fn events_after(
        &self,
        room: &str,
        after_seq: i64,
    ) -> Result<Vec<signaling::store::EventRow>, signaling::store::StoreError> {
        self.inner.events_after(room, after_seq).await
    }
    async fn save_queue_entry(
        &self,
        row: signaling::store::QueueEntryRow,
    ) -> Result<(), signaling::store::StoreError> {
        self.inner.save_queue_entry(row).await
    }
    async fn open_queue_entries(
        &self,
    ) -> Result<Vec<signaling::store::QueueEntryRow>, signaling::store::StoreError> {
        self.inner.open_queue_entries().await
    }
}

/// Both parties chat at once while some batch writes fail: what was
/// acknowledged or shown is stored under the same seq, the stored history
/// has no gap, and nobody sees a seq twice or out of order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_chat_through_failing_batch_writes_stays_gapless() {
    let store = Arc::new(FlakyStore {
        inner: MemoryStore::new(),
        flaky: false.into(),
        batches: 0.into(),
    });
    let hub = Hub::new(
        HubSettings {
            connection_buffer: 4096,
            ..settings()
        },
        store.clone(),
        Arc::new(InProcessBus::default()),
        Arc::new(Recorded::default()),
    );
    let (s, mut srx, r, mut rrx) = admitted_meeting(&hub).await;
    drain(&mut srx);
    drain(&mut rrx);
    store.flaky.store(true, std::sync::atomic::Ordering::SeqCst);
    let send = |conn: ConnectionId, who: &'static str| {
        let hub = hub.clone();
        tokio::spawn(async move {
            for i in 0..100 {
                hub.handle(conn, chat("booking:b1", &format!("{who}{i}"), "hej"))
                    .await;
            }
        })
    };
    let (a, b) = (send(r, "r"), send(s, "s"));
    a.await.unwrap();
    b.await.unwrap();
    store
        .flaky
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let stored = store.events_after("booking:b1", 0).await.unwrap();
    let seqs: Vec<i64> = stored.iter().map(|row| row.seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>());
    let mut refused = 0;
    for rx in [&mut srx, &mut rrx] {
        let mut last = 0;
        for message in drain(rx) {
            match message {
                ServerMessage::Event { seq, event, .. } => {
                    assert!(seq > last, "seq {seq} after {last}");
                    last = seq;
                    let row = &stored[seq as usize - 1];
                    assert_eq!(
                        signaling::history::StoredEvent::from_row(row)
                            .unwrap()
                            .event,
                        event
                    );
                }
                ServerMessage::ChatStored { client_id, seq, .. } => {
                    let row = &stored[seq as usize - 1];
                    assert_eq!(row.client_id.as_deref(), Some(client_id.as_str()));
                }
                ServerMessage::Error {
                    code: ErrorCode::StorageUnavailable,
                    ..
                } => refused += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    assert!(refused > 0, "some writes failed");
    let chats = stored.iter().filter(|row| row.kind == "chat").count();
    assert_eq!(chats + refused, 200, "each message stored or refused");
}

#[tokio::test]
async fn no_show_is_reported_after_the_grace_period() {
    let (hub, effects) = hub_with(Arc::new(MemoryStore::new()));
    hub.open_meeting(meeting(&hub)).await.unwrap();
    let deadline = hub.next_deadline().await.expect("a no-show deadline");
    hub.tick(deadline - Duration::from_secs(1)).await;
    assert!(effects.outcomes.lock().unwrap().is_empty());
    hub.tick(deadline).await;
    assert_eq!(
        *effects.outcomes.lock().unwrap(),
        vec![(id("b1"), BookingOutcome::NoShow)]
    );
}

#[tokio::test]
async fn racing_claims_give_the_chat_to_exactly_one() {
    let (hub, effects) = hub_with(Arc::new(MemoryStore::new()));
    let (a, mut arx) = hub.connect(staff("a", "0180")).await;
    let (b, mut brx) = hub.connect(staff("b", "0180")).await;
    let (x, mut xrx) = hub.connect(staff("x", "0999")).await;
    let (r, mut rrx) = hub.connect(resident("r1")).await;
    let room = hub
        .open_conversation(
            r,
            ConversationRequest {
                service: id("stod"),
                home_municipality: id("0181"),
                eligible_municipalities: BTreeSet::from([id("0180"), id("0181")]),
            },
        )
        .await
        .unwrap();
    expect(&mut rrx, "queue status", |m| {
        matches!(m, ServerMessage::QueueStatus { position: 1, .. })
    })
    .await;
    expect(&mut arx, "queue entry", |m| {
        matches!(m, ServerMessage::QueueEntry { .. })
    })
    .await;
    expect(&mut brx, "queue entry", |m| {
        matches!(m, ServerMessage::QueueEntry { .. })
    })
    .await;
    let claim = ClientMessage::QueueClaim { room: room.clone() };
    tokio::join!(
        hub.handle(a, claim.clone()),
        hub.handle(b, claim.clone()),
        hub.handle(x, claim)
    );
    let a_won = drain(&mut arx)
        .iter()
        .any(|m| matches!(m, ServerMessage::QueueAssigned { .. }));
    let b_msgs = drain(&mut brx);
    let b_won = b_msgs
        .iter()
        .any(|m| matches!(m, ServerMessage::QueueAssigned { .. }));
    assert!(a_won != b_won, "exactly one claim wins");
    let loser = if a_won { b_msgs } else { drain(&mut arx) };
    let _ = loser;
    let x_msgs = drain(&mut xrx);
    assert!(
        x_msgs.iter().all(|m| matches!(
            m,
            ServerMessage::Welcome { .. }
                | ServerMessage::Error {
                    code: ErrorCode::NotFound,
                    ..
                }
        )),
        "the excluded municipality saw {x_msgs:#?}"
    );
    assert_eq!(effects.audits.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn escalating_a_chat_opens_a_room_the_resident_enters_directly() {
    let (hub, _) = hub_with(Arc::new(MemoryStore::new()));
    let (a, mut arx) = hub.connect(staff("a", "0180")).await;
    let (r, mut rrx) = hub.connect(resident("r1")).await;
    let room = hub
        .open_conversation(
            r,
            ConversationRequest {
                service: id("stod"),
                home_municipality: id("0181"),
                eligible_municipalities: BTreeSet::from([id("0180")]),
            },
        )
        .await
        .unwrap();
    hub.handle(a, ClientMessage::QueueClaim { room: room.clone() })
        .await;
    hub.handle(a, chat(room.as_str(), "s1", "Hej, vill du ses på video?"))
        .await;
    hub.handle(a, ClientMessage::ChatEscalateVideo { room: room.clone() })
        .await;
    let meeting_room = video_opened(&mut rrx, &room).await;
    hub.handle(r, join(meeting_room.as_str())).await;
    admitted(&mut rrx).await;
    hub.handle(a, join(meeting_room.as_str())).await;
    hub.handle(
        r,
        ClientMessage::SignalOffer {
            room: meeting_room.clone(),
            to: id("staff:a"),
            sdp: "v=0".into(),
        },
    )
    .await;
    expect(&mut arx, "offer", |m| {
        matches!(m, ServerMessage::SignalOffer { .. })
    })
    .await;
    // Another staff member of the municipality, who did not take the chat,
    // does not enter the meeting it became.
    let (b, mut brx) = hub.connect(staff("b", "0180")).await;
    hub.handle(b, join(meeting_room.as_str())).await;
    let (answer, _) = expect(&mut brx, "an error", |m| {
        matches!(m, ServerMessage::Error { .. })
    })
    .await;
    assert_eq!(
        answer,
        ServerMessage::error(ErrorCode::NotFound, "no such room", Some(meeting_room))
    );
}

/// The meeting room a `video_opened` event in `room` names, read from `rx`.
async fn video_opened(rx: &mut Receiver<ServerMessage>, room: &RoomId) -> RoomId {
    let (opened, _) = expect(rx, "video opened", |m| {
        matches!(
            m,
            ServerMessage::Event {
                room: r,
                event: signaling::protocol::RoomEvent::VideoOpened { .. },
                ..
            } if r == room
        )
    })
    .await;
    let ServerMessage::Event {
        event: signaling::protocol::RoomEvent::VideoOpened { meeting_room },
        ..
    } = opened
    else {
        unreachable!()
    };
    meeting_room
}

/// Waits for `joined` and checks that it admits the party straight into the
/// room, not to the waiting room; returns the room's last seq.
async fn admitted(rx: &mut Receiver<ServerMessage>) -> Seq {
    let (joined, _) = expect(rx, "joined", |m| matches!(m, ServerMessage::Joined { .. })).await;
    match joined {
        ServerMessage::Joined {
            state: signaling::protocol::PresenceState::Admitted,
            last_seq,
            ..
        } => last_seq,
        other => panic!("not admitted: {other:?}"),
    }
}

#[tokio::test]
async fn an_anonymous_resident_acts_in_their_one_chat_and_the_video_it_became_only() {
    let (hub, _) = hub_with(Arc::new(MemoryStore::new()));
    let request = || ConversationRequest {
        service: id("stod"),
        home_municipality: id("0181"),
        eligible_municipalities: BTreeSet::from([id("0180")]),
    };
    let (a, mut arx) = hub.connect(staff("a", "0180")).await;
    hub.handle(
        a,
        ClientMessage::StaffAvailability {
            available: true,
            max_chats: 2,
        },
    )
    .await;
    let (r, _rrx) = hub.connect(resident("r1")).await;
    let others = hub.open_conversation(r, request()).await.unwrap();
    let own: RoomId = id("chat:anon1");
    let (x, mut xrx) = hub
        .connect(Identity::Anonymous {
            conversation: own.clone(),
        })
        .await;
    let opened = hub.open_conversation(x, request()).await.unwrap();
    assert_eq!(opened, own, "an anonymous chat's room is its token's");
    hub.handle(a, ClientMessage::QueueClaim { room: own.clone() })
        .await;
    hub.handle(a, ClientMessage::ChatEscalateVideo { room: own.clone() })
        .await;
    let own_video = video_opened(&mut xrx, &own).await;
    hub.handle(x, join(own_video.as_str())).await;
    admitted(&mut xrx).await;
    expect(&mut xrx, "TURN credentials", |m| {
        matches!(m, ServerMessage::TurnCredentials { .. })
    })
    .await;
    // Someone else's chat, and the meeting room it became, answer as if
    // they did not exist.
    hub.handle(
        a,
        ClientMessage::QueueClaim {
            room: others.clone(),
        },
    )
    .await;
    hub.handle(
        a,
        ClientMessage::ChatEscalateVideo {
            room: others.clone(),
        },
    )
    .await;
    let others_video = video_opened(&mut arx, &others).await;
    for (room, message) in [
        (others.clone(), join(others.as_str())),
        (
            others.clone(),
            ClientMessage::Resume {
                room: others.clone(),
                last_seq: 0,
            },
        ),
        (others.clone(), chat(others.as_str(), "x1", "hello?")),
        (others_video.clone(), join(others_video.as_str())),
    ] {
        hub.handle(x, message).await;
        let (answer, _) = expect(&mut xrx, "an error", |m| {
            matches!(m, ServerMessage::Error { .. })
        })
        .await;
        assert_eq!(
            answer,
            ServerMessage::error(ErrorCode::NotFound, "no such room", Some(room))
        );
    }
}

#[tokio::test]
async fn canned_responses_are_per_service_and_language_with_swedish_to_fall_back_on() {
    use signaling::protocol::{CannedResponse, Language};
    let (hub, _) = hub_with(Arc::new(MemoryStore::new()));
    let reply = |title: &str| CannedResponse {
        id: "welcome".into(),
        title: title.into(),
        text: "...".into(),
    };
    hub.set_canned_responses(id("stod"), Language::Sv, vec![reply("Hälsning")])
        .await;
    hub.set_canned_responses(id("stod"), Language::Fi, vec![reply("Tervehdys")])
        .await;
    let (a, mut arx) = hub.connect(staff("a", "0180")).await;
    for (asked, got, title) in [
        (None, Language::Sv, "Hälsning"),
        (Some(Language::Fi), Language::Fi, "Tervehdys"),
        (Some(Language::Ar), Language::Sv, "Hälsning"),
    ] {
        hub.handle(
            a,
            ClientMessage::CannedList {
                service: id("stod"),
                language: asked,
            },
        )
        .await;
        let (answer, _) = expect(&mut arx, "canned responses", |m| {
            matches!(m, ServerMessage::CannedResponses { .. })
        })
        .await;
        assert_eq!(
            answer,
            ServerMessage::CannedResponses {
                service: id("stod"),
                language: got,
                responses: vec![reply(title)],
            },
            "asked for {asked:?}"
        );
    }
}

#[tokio::test]
async fn room_events_reach_bus_subscribers() {
    let (hub, _) = hub_with(Arc::new(MemoryStore::new()));
    let mut events = hub.subscribe_room(&id("booking:b1")).await.unwrap();
    let (_s, _srx, r, _rrx) = admitted_meeting(&hub).await;
    hub.handle(r, chat("booking:b1", "m1", "Hej")).await;
    let mut seen = Vec::new();
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(5), events.next())
            .await
            .expect("an event on the bus")
            .expect("stream open");
        let message = ServerMessage::from_frame(std::str::from_utf8(&frame).unwrap()).unwrap();
        let is_chat = matches!(
            &message,
            ServerMessage::Event {
                event: signaling::protocol::RoomEvent::Chat { .. },
                ..
            }
        );
        seen.push(message);
        if is_chat {
            break;
        }
    }
    assert!(!seen.is_empty());
}

/// Needs a NATS server: runs against `NATS_URL` when it is set. Two hubs
/// share the bus, as two nodes would; a subscriber on one sees the events of
/// a room that lives on the other.
#[tokio::test]
async fn room_events_cross_nodes_over_nats_when_nats_url_is_set() {
    let Ok(url) = std::env::var("NATS_URL") else {
        eprintln!("NATS_URL is not set; skipping the cross-node NATS test");
        return;
    };
    let node = |bus: Arc<signaling::bus::NatsBus>| {
        Hub::new(
            settings(),
            Arc::new(MemoryStore::new()),
            bus,
            Arc::new(Recorded::default()),
        )
    };
    let bus1 = Arc::new(signaling::bus::NatsBus::connect(&url).await.unwrap());
    let bus2 = Arc::new(signaling::bus::NatsBus::connect(&url).await.unwrap());
    let (hub1, hub2) = (node(bus1), node(bus2));
    let room: RoomId = id(&format!("booking:{}", uuid::Uuid::new_v4().simple()));
    let mut events = hub2.subscribe_room(&room).await.unwrap();
    let mut setup = meeting(&hub1);
    setup.room = room.clone();
    hub1.open_meeting(setup).await.unwrap();
    let (s, _srx) = hub1.connect(staff("s1", "0180")).await;
    hub1.handle(s, join(room.as_str())).await;
    hub1.handle(s, chat(room.as_str(), "m1", "Hej från nod 1"))
        .await;
    let mut seqs = Vec::new();
    while seqs.len() < 2 {
        let frame = tokio::time::timeout(Duration::from_secs(5), events.next())
            .await
            .expect("an event over NATS")
            .expect("stream open");
        match ServerMessage::from_frame(std::str::from_utf8(&frame).unwrap()).unwrap() {
            ServerMessage::Event { seq, .. } => seqs.push(seq),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seqs, vec![1, 2]);
}

#[tokio::test]
async fn a_console_that_connects_later_still_sees_the_knock_and_others_do_not() {
    let (hub, _) = hub_with(Arc::new(MemoryStore::new()));
    hub.open_meeting(meeting(&hub)).await.unwrap();
    let (r, mut rrx) = hub.connect(resident("r1")).await;
    hub.handle(r, join("booking:b1")).await;
    expect(&mut rrx, "lobby status", |m| {
        matches!(m, ServerMessage::LobbyStatus { .. })
    })
    .await;
    let (_s, mut srx) = hub.connect(staff("s2", "0180")).await;
    let (knock, _) = expect(&mut srx, "knock", |m| {
        matches!(m, ServerMessage::LobbyKnock { .. })
    })
    .await;
    assert_eq!(
        knock,
        ServerMessage::LobbyKnock {
            room: id("booking:b1"),
            participant: Participant {
                party: id("resident:r1"),
                role: signaling::protocol::Role::Resident
            },
        }
    );
    // Neither staff of another municipality nor staff of the performing
    // one whom the room does not admit hear of it.
    for outsider in [staff("x", "0999"), staff("s3", "0180")] {
        let (x, mut xrx) = hub.connect(outsider).await;
        hub.handle(x, ClientMessage::Ping).await;
        let (_, before) = expect(&mut xrx, "pong", |m| matches!(m, ServerMessage::Pong)).await;
        assert!(
            before
                .iter()
                .all(|m| matches!(m, ServerMessage::Welcome { .. })),
            "{before:#?}"
        );
    }
}

/// Staff the room does not admit, even of the performing municipality, are
/// answered exactly as for a room that does not exist, whatever they ask,
/// and each refusal is audited; once the caller lets them in (the room is
/// opened again with new access), they enter.
#[tokio::test]
async fn staff_the_room_does_not_admit_get_no_such_room_and_an_audit_entry() {
    let (hub, recorded) = hub_with(Arc::new(MemoryStore::new()));
    let (_s, _srx, _r, mut rrx) = admitted_meeting(&hub).await;
    let (x, mut xrx) = hub.connect(staff("s3", "0180")).await;
    let missing =
        |room: &str| ServerMessage::error(ErrorCode::NotFound, "no such room", Some(id(room)));
    let asks = [
        join("booking:b1"),
        ClientMessage::LobbyAdmit {
            room: id("booking:b1"),
            party: id("resident:r1"),
        },
        ClientMessage::LobbyDecline {
            room: id("booking:b1"),
            party: id("resident:r1"),
        },
        ClientMessage::LobbySendBack {
            room: id("booking:b1"),
            party: id("resident:r1"),
        },
        ClientMessage::MeetingEnd {
            room: id("booking:b1"),
        },
        chat("booking:b1", "x1", "hello"),
    ];
    let asked = asks.len();
    for ask in asks {
        hub.handle(x, ask).await;
        let (answer, _) = expect(&mut xrx, "an error", |m| {
            matches!(m, ServerMessage::Error { .. })
        })
        .await;
        assert_eq!(answer, missing("booking:b1"));
    }
    // The same as a room that does not exist.
    hub.handle(x, join("booking:nothing")).await;
    let (answer, _) = expect(&mut xrx, "an error", |m| {
        matches!(m, ServerMessage::Error { .. })
    })
    .await;
    assert_eq!(answer, missing("booking:nothing"));
    let refusals: Vec<AuditEntry> = recorded
        .audits
        .lock()
        .unwrap()
        .iter()
        .filter(|a| a.action.refused())
        .cloned()
        .collect();
    assert_eq!(refusals.len(), asked, "{refusals:#?}");
    assert!(refusals.iter().all(|a| a.actor == id::<PartyId>("staff:s3")
        && a.room == id::<RoomId>("booking:b1")
        && a.subject == id::<PartyId>("resident:r1")
        && a.on_behalf_of == Some(id("0181"))));
    // The resident heard nothing of it: the meeting goes on undisturbed.
    hub.handle(x, ClientMessage::Ping).await;
    expect(&mut xrx, "pong", |m| matches!(m, ServerMessage::Pong)).await;
    assert!(drain(&mut rrx)
        .iter()
        .all(|m| !format!("{m:?}").contains("s3")));
    // The caller's policy changes and the room is opened again: s3 enters.
    let mut setup = meeting(&hub);
    setup.staff_access = StaffAccess::only([id("s1"), id("s3")]);
    hub.open_meeting(setup).await.unwrap();
    hub.handle(x, join("booking:b1")).await;
    expect(&mut xrx, "turn credentials", |m| {
        matches!(m, ServerMessage::TurnCredentials { .. })
    })
    .await;
}

#[tokio::test]
async fn a_cancelled_booking_closes_its_room_without_an_outcome() {
    let (hub, effects) = hub_with(Arc::new(MemoryStore::new()));
    hub.open_meeting(meeting(&hub)).await.unwrap();
    let (r, mut rrx) = hub.connect(resident("r1")).await;
    hub.handle(r, join("booking:b1")).await;
    hub.cancel_meeting(&id("booking:b1")).await;
    let (closed, _) = expect(&mut rrx, "room.closed", |m| {
        matches!(m, ServerMessage::RoomClosed { .. })
    })
    .await;
    assert_eq!(
        closed,
        ServerMessage::RoomClosed {
            room: id("booking:b1"),
            reason: signaling::protocol::CloseReason::Cancelled
        }
    );
    assert!(effects.outcomes.lock().unwrap().is_empty());
    hub.handle(r, join("booking:b1")).await;
    let (error, _) = expect(&mut rrx, "error", |m| {
        matches!(m, ServerMessage::Error { .. })
    })
    .await;
    assert!(matches!(
        error,
        ServerMessage::Error {
            code: ErrorCode::NotFound,
            ..
        }
    ));
}

#[tokio::test]
async fn a_connection_that_does_not_read_is_dropped() {
    let (hub, _) = hub_with(Arc::new(MemoryStore::new()));
    let (c, mut rx) = hub.connect(resident("r1")).await;
    // The buffer holds 256 messages; the welcome and 300 pongs overflow it.
    for _ in 0..300 {
        hub.handle(c, ClientMessage::Ping).await;
    }
    let mut received = 0;
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
        received += 1;
    }
    assert_eq!(received, 256, "the hub closed the channel once it was full");
}

/// Two nodes share a bus: a knock in a room on one reaches the console of
/// the right municipality on the other, once, and no other console.
async fn check_knock_crosses_nodes(
    bus1: Arc<dyn signaling::bus::Bus>,
    bus2: Arc<dyn signaling::bus::Bus>,
) {
    let node = |bus: Arc<dyn signaling::bus::Bus>| {
        Hub::new(
            settings(),
            Arc::new(MemoryStore::new()),
            bus,
            Arc::new(Recorded::default()),
        )
    };
    let (hub1, hub2) = (node(bus1), node(bus2));
    let _listener1 = hub1.spawn_bus_listener().await.unwrap();
    let _listener2 = hub2.spawn_bus_listener().await.unwrap();
    let room: RoomId = id(&format!("booking:{}", uuid::Uuid::new_v4().simple()));
    let mut setup = meeting(&hub1);
    setup.room = room.clone();
    hub1.open_meeting(setup).await.unwrap();
    let (_s, mut srx) = hub2.connect(staff("s1", "0180")).await;
    let (x, mut xrx) = hub2.connect(staff("x", "0999")).await;
    // Of the performing municipality, but the room does not admit them: the
    // receiving node must filter by the knock's access, not by municipality.
    let (y, mut yrx) = hub2.connect(staff("s3", "0180")).await;
    let (r, _rrx) = hub1.connect(resident("r1")).await;
    hub1.handle(r, join(room.as_str())).await;
    let (knock, _) = expect(&mut srx, "knock from the other node", |m| {
        matches!(m, ServerMessage::LobbyKnock { .. })
    })
    .await;
    assert!(matches!(knock, ServerMessage::LobbyKnock { room: r, .. } if r == room));
    for (conn, rx) in [(x, &mut xrx), (y, &mut yrx)] {
        hub2.handle(conn, ClientMessage::Ping).await;
        let (_, before) = expect(rx, "pong", |m| matches!(m, ServerMessage::Pong)).await;
        assert!(
            before
                .iter()
                .all(|m| matches!(m, ServerMessage::Welcome { .. })),
            "{before:#?}"
        );
    }
}

#[tokio::test]
async fn knocks_cross_nodes_on_a_shared_in_process_bus() {
    let bus: Arc<dyn signaling::bus::Bus> = Arc::new(InProcessBus::default());
    check_knock_crosses_nodes(bus.clone(), bus).await;
}

/// Needs a NATS server: runs against `NATS_URL` when it is set.
#[tokio::test]
async fn knocks_cross_nodes_over_nats_when_nats_url_is_set() {
    let Ok(url) = std::env::var("NATS_URL") else {
        eprintln!("NATS_URL is not set; skipping the cross-node knock test");
        return;
    };
    let bus1 = signaling::bus::connect_bus(Some(&url)).await.unwrap();
    let bus2 = signaling::bus::connect_bus(Some(&url)).await.unwrap();
    check_knock_crosses_nodes(bus1, bus2).await;
}

#[tokio::test]
async fn open_chats_survive_a_restart_at_their_place_with_their_history() {
    let store = Arc::new(MemoryStore::new());
    let (hub, _) = hub_with(store.clone());
    let (a, _arx) = hub.connect(staff("a", "0180")).await;
    let request = ConversationRequest {
        service: id("stod"),
        home_municipality: id("0181"),
        eligible_municipalities: BTreeSet::from([id("0180")]),
    };
    let (r1, _r1rx) = hub.connect(resident("r1")).await;
    let first = hub.open_conversation(r1, request.clone()).await.unwrap();
    let anonymous_room: RoomId = id("chat:anon1");
    let (r2, _r2rx) = hub
        .connect(Identity::Anonymous {
            conversation: anonymous_room.clone(),
        })
        .await;
    let second = hub.open_conversation(r2, request).await.unwrap();
    assert_eq!(second, anonymous_room);
    hub.handle(
        a,
        ClientMessage::QueueClaim {
            room: first.clone(),
        },
    )
    .await;
    hub.handle(r1, chat(first.as_str(), "m1", "Jag behöver hjälp"))
        .await;

    let (hub2, _) = hub_with(store);
    assert_eq!(hub2.restore().await.unwrap(), 2);
    let (r1b, mut r1rx) = hub2.connect(resident("r1")).await;
    hub2.handle(r1b, join(first.as_str())).await;
    hub2.handle(
        r1b,
        ClientMessage::Resume {
            room: first.clone(),
            last_seq: 0,
        },
    )
    .await;
    hub2.handle(r1b, ClientMessage::Ping).await;
    let (_, got) = expect(&mut r1rx, "pong", |m| matches!(m, ServerMessage::Pong)).await;
    let texts: Vec<&str> = got
        .iter()
        .filter_map(|m| match m {
            ServerMessage::Event {
                event: signaling::protocol::RoomEvent::Chat { text, .. },
                ..
            } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(texts, vec!["Jag behöver hjälp"]);
    // The claimed chat waits again, ahead of the anonymous one that came later.
    let positions: Vec<u32> = got
        .iter()
        .filter_map(|m| match m {
            ServerMessage::QueueStatus { position, .. } => Some(*position),
            _ => None,
        })
        .collect();
    assert_eq!(positions, vec![1]);
}

/// A node of a cluster over the NATS server at `url`, sharing `store`.
async fn cluster_node(
    url: &str,
    cluster: &str,
    store: Arc<MemoryStore>,
    lease: Arc<signaling::cluster::MemoryLease>,
) -> (Hub, Vec<tokio::task::JoinHandle<()>>) {
    let bus = signaling::bus::NatsBus::connect(url).await.unwrap();
    let hub = Hub::clustered(
        settings(),
        store,
        Arc::new(bus),
        Arc::new(Recorded::default()),
        cluster,
        lease,
    );
    let tasks = hub.spawn_cluster().await.unwrap();
    (hub, tasks)
}

/// Needs NATS with JetStream: runs against `NATS_URL` when it is set. Staff
/// on the owner and a resident on a follower share a room; when the owner
/// leaves, the follower takes over from the store and the resident resumes.
#[tokio::test]
async fn two_nodes_share_a_room_and_the_survivor_takes_over_when_nats_url_is_set() {
    let Ok(url) = std::env::var("NATS_URL") else {
        eprintln!("notice: NATS_URL is not set; skipping the two-node hub test");
        return;
    };
    let cluster = format!("hubtest{}", uuid::Uuid::new_v4().simple());
    let store = Arc::new(MemoryStore::new());
    let lease = Arc::new(signaling::cluster::MemoryLease::default());
    let (a, a_tasks) = cluster_node(&url, &cluster, store.clone(), lease.clone()).await;
    let (b, b_tasks) = cluster_node(&url, &cluster, store.clone(), lease).await;
    assert!(a.is_owner().await, "the first node takes the lease");
    assert!(!b.is_owner().await);

    a.open_meeting(meeting(&a)).await.unwrap();
    b.open_meeting(meeting(&b)).await.unwrap();
    let (s, mut srx) = a.connect(staff("s1", "0180")).await;
    let (r, mut rrx) = b.connect(resident("r1")).await;
    expect(&mut rrx, "welcome", |m| {
        matches!(m, ServerMessage::Welcome { .. })
    })
    .await;
    b.handle(r, join("booking:b1")).await;
    expect(&mut srx, "knock", |m| {
        matches!(m, ServerMessage::LobbyKnock { .. })
    })
    .await;
    a.handle(s, join("booking:b1")).await;
    a.handle(
        s,
        ClientMessage::LobbyAdmit {
            room: id("booking:b1"),
            party: id("resident:r1"),
        },
    )
    .await;
    expect(&mut rrx, "admitted", |m| {
        matches!(m, ServerMessage::LobbyAdmitted { .. })
    })
    .await;
    b.handle(r, chat("booking:b1", "c1", "Hej")).await;
    let (stored, _) = expect(&mut rrx, "stored", |m| {
        matches!(m, ServerMessage::ChatStored { .. })
    })
    .await;
    let ServerMessage::ChatStored { seq: before, .. } = stored else {
        unreachable!()
    };
    expect(
        &mut srx,
        "chat",
        |m| matches!(m, ServerMessage::Event { seq, .. } if *seq == before),
    )
    .await;
    assert_ne!(s, r, "connection ids differ across nodes");

    // The owner goes away.
    for task in a_tasks {
        task.abort();
    }
    a.leave_cluster().await;
    expect(&mut rrx, "a new welcome", |m| {
        matches!(m, ServerMessage::Welcome { .. })
    })
    .await;
    assert!(b.is_owner().await, "the survivor owns the rooms now");
    b.handle(r, join("booking:b1")).await;
    let last_seq = admitted(&mut rrx).await;
    assert!(last_seq >= before, "{last_seq:?}");
    b.handle(r, chat("booking:b1", "c1", "Hej")).await;
    let (again, _) = expect(&mut rrx, "stored again", |m| {
        matches!(m, ServerMessage::ChatStored { .. })
    })
    .await;
    assert!(
        matches!(again, ServerMessage::ChatStored { seq, .. } if seq == before),
        "the same message keeps its seq"
    );
    b.handle(r, chat("booking:b1", "c2", "Är någon där?")).await;
    let (next, _) = expect(&mut rrx, "stored next", |m| {
        matches!(m, ServerMessage::ChatStored { .. })
    })
    .await;
    assert!(matches!(next, ServerMessage::ChatStored { seq, .. } if seq > before));
    for task in b_tasks {
        task.abort();
    }
    b.leave_cluster().await;
}

/// Effects whose audit writes wait at a gate the test opens, like a store
/// that has stalled; every other effect is immediate. Each audit says when
/// it began, and is recorded once it got through.
struct GatedAudits {
    open: tokio::sync::watch::Sender<bool>,
    began: tokio::sync::mpsc::UnboundedSender<AuditEntry>,
    written: Mutex<Vec<AuditEntry>>,
}

impl GatedAudits {
    fn new(open: bool) -> (Arc<Self>, tokio::sync::mpsc::UnboundedReceiver<AuditEntry>) {
        let (began, begun) = tokio::sync::mpsc::unbounded_channel();
        let gated = GatedAudits {
            open: tokio::sync::watch::Sender::new(open),
            began,
            written: Mutex::new(Vec::new()),
        };
        (Arc::new(gated), begun)
    }

    fn set_open(&self, open: bool) {
        self.open.send_replace(open);
    }

    fn written(&self) -> Vec<(PartyId, &'static str)> {
        let written = self.written.lock().unwrap();
        written
            .iter()
            .map(|a| (a.actor.clone(), a.action.as_str()))
            .collect()
    }
}

#[async_trait]
impl Effects for GatedAudits {
    async fn audit(&self, entry: AuditEntry) {
        let _ = self.began.send(entry.clone());
        let mut open = self.open.subscribe();
        open.wait_for(|open| *open)
            .await
            .expect("the gate outlives the hub");
        self.written.lock().unwrap().push(entry);
    }
    async fn booking_outcome(&self, _booking: &BookingId, _outcome: BookingOutcome) {}
    fn turn_credentials(&self, _room: &RoomId, _party: &PartyId) -> Option<TurnCredentials> {
        None
    }
    async fn staff_notified(
        &self,
        _room: &RoomId,
        _municipality: &MunicipalityCode,
        _staff: Option<&StaffId>,
        _participant: &Participant,
    ) {
    }
    async fn conversation_closed(&self, _room: &RoomId, _resident: &PartyId, _anonymous: bool) {}
}

/// The second booking's meeting: resident r2 (admitted when they come) and
/// staff s2 only.
fn second_meeting(hub: &Hub) -> MeetingSetup {
    let mut setup = meeting(hub);
    setup.room = id("booking:b2");
    setup.booking = Some(id("b2"));
    setup.resident = id("resident:r2");
    setup.staff = Some(id("s2"));
    setup.staff_access = StaffAccess::only([id("s2")]);
    setup.pre_admitted = vec![id("resident:r2")];
    setup
}

/// Waits for `submit` to apply its message, which must not wait for any
/// effect of it.
async fn applied(submit: impl std::future::Future<Output = Settled>) -> Settled {
    tokio::time::timeout(Duration::from_secs(5), submit)
        .await
        .expect("applying a message waited for an effect")
}

async fn began(begun: &mut tokio::sync::mpsc::UnboundedReceiver<AuditEntry>) -> AuditEntry {
    tokio::time::timeout(Duration::from_secs(5), begun.recv())
        .await
        .expect("timed out waiting for an audit write to begin")
        .expect("the effects outlive the test")
}

/// An audit write that does not return (a stalled database) holds up
/// nothing outside its room: while room A's audit is stuck, chat in room
/// B is stored and delivered, and inputs to A itself are still applied.
#[tokio::test]
async fn a_stuck_audit_write_delays_no_chat_in_another_room() {
    let (effects, mut begun) = GatedAudits::new(true);
    let hub = Hub::new(
        settings(),
        Arc::new(MemoryStore::new()),
        Arc::new(InProcessBus::default()),
        effects.clone(),
    );
    hub.open_meeting(meeting(&hub)).await.unwrap();
    hub.open_meeting(second_meeting(&hub)).await.unwrap();
    // Room B is under way before the store stalls.
    let (rb, mut rbrx) = hub.connect(resident("r2")).await;
    hub.handle(rb, join("booking:b2")).await;
    admitted(&mut rbrx).await;
    let (sb, mut sbrx) = hub.connect(staff("s2", "0180")).await;
    hub.handle(sb, join("booking:b2")).await;
    admitted(&mut sbrx).await;
    began(&mut begun).await;

    effects.set_open(false);
    let (sa, mut sarx) = hub.connect(staff("s1", "0180")).await;
    let entering = applied(hub.submit(sa, join("booking:b1"))).await;
    let stuck = began(&mut begun).await;
    assert_eq!(stuck.room, id::<RoomId>("booking:b1"));
    // The read it records was delivered all the same.
    admitted(&mut sarx).await;

    let sent = tokio::time::timeout(
        Duration::from_secs(5),
        hub.handle(rb, chat("booking:b2", "m1", "Hej")),
    )
    .await;
    assert!(sent.is_ok(), "chat in room B waited for room A's audit");
    let (stored, _) = expect(&mut rbrx, "chat.stored", |m| {
        matches!(m, ServerMessage::ChatStored { .. })
    })
    .await;
    let ServerMessage::ChatStored { seq, .. } = stored else {
        unreachable!()
    };
    expect(
        &mut sbrx,
        "the chat in room B",
        |m| matches!(m, ServerMessage::Event { seq: n, .. } if *n == seq),
    )
    .await;
    // Room A goes on too; only its audit entry waits.
    hub.handle(sa, ClientMessage::Ping).await;
    expect(&mut sarx, "pong", |m| matches!(m, ServerMessage::Pong)).await;
    assert_eq!(
        effects.written(),
        vec![(id("staff:s2"), "meeting.read")],
        "room A's entry is still at the gate"
    );

    effects.set_open(true);
    tokio::time::timeout(Duration::from_secs(5), entering)
        .await
        .expect("the join settles once its audit entry is written");
    assert_eq!(
        effects.written(),
        vec![
            (id("staff:s2"), "meeting.read"),
            (id("staff:s1"), "meeting.read")
        ]
    );
}

/// A slow audit write still happens, after the read it records was
/// delivered, and the entries of one room are written in the order the
/// reads happened, refusals included.
#[tokio::test]
async fn slow_audit_entries_are_written_after_delivery_and_in_order() {
    let (effects, mut begun) = GatedAudits::new(false);
    let hub = Hub::new(
        settings(),
        Arc::new(MemoryStore::new()),
        Arc::new(InProcessBus::default()),
        effects.clone(),
    );
    hub.open_meeting(meeting(&hub)).await.unwrap();
    let (s1, mut s1rx) = hub.connect(staff("s1", "0180")).await;
    let (s3, mut s3rx) = hub.connect(staff("s3", "0180")).await;
    let (s2, mut s2rx) = hub.connect(staff("s2", "0180")).await;
    let mut settling = Vec::new();
    settling.push(applied(hub.submit(s1, join("booking:b1"))).await);
    admitted(&mut s1rx).await;
    settling.push(applied(hub.submit(s3, join("booking:b1"))).await);
    expect(&mut s3rx, "no such room", |m| {
        matches!(
            m,
            ServerMessage::Error {
                code: ErrorCode::NotFound,
                ..
            }
        )
    })
    .await;
    settling.push(applied(hub.submit(s2, join("booking:b1"))).await);
    admitted(&mut s2rx).await;
    let resume = ClientMessage::Resume {
        room: id("booking:b1"),
        last_seq: 0,
    };
    settling.push(applied(hub.submit(s1, resume)).await);
    // Everything was delivered, and the first entry is still at the gate.
    assert_eq!(began(&mut begun).await.actor, id::<PartyId>("staff:s1"));
    assert!(effects.written().is_empty());

    effects.set_open(true);
    let all = futures::future::join_all(settling);
    tokio::time::timeout(Duration::from_secs(5), all)
        .await
        .expect("every read settles once its entry is written");
    assert_eq!(
        effects.written(),
        vec![
            (id("staff:s1"), "meeting.read"),
            (id("staff:s3"), "meeting.enter"),
            (id("staff:s2"), "meeting.read"),
            (id("staff:s1"), "meeting.read"),
        ]
    );
}
