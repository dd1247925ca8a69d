//! The hub: the async shell the WebSocket endpoint talks to. It owns the
//! meeting rooms and the chat queue, feeds them client messages and timer
//! ticks, and carries out what they return: storing events before anyone sees
//! them, delivering messages to per-connection channels, publishing events on
//! the bus, and handing audit entries, booking outcomes and notifications to
//! the caller through [`Effects`].
//!
//! What to do is decided by the switchboard ([`crate::switchboard`]), which
//! does no I/O. All its state sits behind one async mutex, and every input
//! is applied under it in turn; nothing under the mutex waits on the outside
//! world. Sends go straight into the connections' buffers. An output that
//! stores events waits in a queue for the writer task, which stores all
//! that waits in one batch with the mutex free, then carries the outputs out
//! in the order they were made (see [`Hub::carry_out`]). Everything else
//! that waits (bus publishes, queue entries, the caller's effects) goes to
//! a lane per room, run by a task of its own after the mutex is let go, in
//! the order it was made ([`Hub::run_later`]). So per-room order stays
//! simple to reason about, a busy node writes many events per transaction
//! instead of one, and a slow audit write delays no other room.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot, Mutex};

use crate::bus::{room_subject, Bus, BusError, Subscription};
use crate::cluster::{
    self, ClusterLink, Delivery, Envelope, Input, Lease, LeaseStep, MeetingSpec, OwnerTask,
    LEASE_EVERY,
};
use crate::history::StoredEvent;
use crate::identity::{ConversationRequest, Identity};
use crate::ids::{BookingId, ConnectionId, MunicipalityCode, PartyId, RoomId, ServiceId, StaffId};
use crate::outbound::{AuditEntry, Outbound};
use crate::protocol::{
    BookingOutcome, CannedResponse, ClientMessage, Language, Participant, ServerMessage,
    TurnCredentials,
};
use crate::queue::{NewConversation, Queue, QueueEntryRecord, QueueInput, QueueRules};
use crate::room::{ClockAnchor, MeetingSetup, Room, RoomInput};
use crate::store::{Appended, QueueEntryRow, Store, StoreError};
use crate::switchboard::{
    self, attach, deliver, deliver_knock, detach, forget_closed_rooms, new_room_id, route,
    Connection, Context, Effect, HubState, Knock, Lane, Role, Sink, Written, KNOCK_SUBJECT,
};

/// What the hub asks of the rest of the system. The web crate implements it
/// with the `booking` crate (audit log, booking status) and the TURN secret.
///
/// The hub runs the async ones after it has let go of its state, in one
/// lane per room: those of one room one after the other, in the order the
/// room made them, and those of different rooms side by side. So an audit
/// entry is written after the read it records was delivered, and a slow
/// one delays only the later effects of its own room. They must not call
/// back into the [`Hub`] and wait for it.
#[async_trait]
pub trait Effects: Send + Sync + 'static {
    /// Writes a staff read to the audit log.
    async fn audit(&self, entry: AuditEntry);
    /// Marks a booking `completed` or `no_show`.
    async fn booking_outcome(&self, booking: &BookingId, outcome: BookingOutcome);
    /// Makes TURN REST credentials for an admitted participant, or `None`
    /// when no relay is configured. The hub calls it with its state locked,
    /// so that the credentials reach the connection in order with the rest:
    /// it must not wait on I/O (TURN REST credentials are an HMAC under the
    /// relay's secret).
    fn turn_credentials(&self, room: &RoomId, party: &PartyId) -> Option<TurnCredentials>;
    /// Someone knocked and no staff member was in the room. Consoles that
    /// are connected already got `lobby.knock`; this is for other channels.
    async fn staff_notified(
        &self,
        room: &RoomId,
        municipality: &MunicipalityCode,
        staff: Option<&StaffId>,
        participant: &Participant,
    );
    /// A chat closed; the caller keeps a signed-in resident's transcript on
    /// "My pages" and applies retention to an anonymous one.
    async fn conversation_closed(&self, room: &RoomId, resident: &PartyId, anonymous: bool);
}

/// The hub's settings, from the caller's configuration.
#[derive(Debug, Clone)]
pub struct HubSettings {
    /// The queue's rules, per municipality.
    pub queue: QueueRules,
    /// How many messages may wait for one connection before the hub gives
    /// up on it as too slow and closes its channel.
    pub connection_buffer: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("no such connection")]
    UnknownConnection,
    #[error("only residents can open a chat")]
    NotAResident,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("the node that owns the queue did not answer")]
    NoAnswer,
}

/// The real-time hub. Cloning it is cheap and shares the same state.
#[derive(Clone)]
pub struct Hub {
    shared: Arc<Shared>,
}

impl Hub {
    /// A hub that owns every room and the queue itself: one node, or
    /// several that only share events for live views.
    pub fn new(
        settings: HubSettings,
        store: Arc<dyn Store>,
        bus: Arc<dyn Bus>,
        effects: Arc<dyn Effects>,
    ) -> Self {
        Self::build(settings, store, bus, effects, None)
    }

    /// A hub that shares rooms and the queue with the other nodes of
    /// `cluster` on `bus`: whichever node holds `lease` owns them, and the
    /// others forward to it (see [`crate::cluster`]). Call
    /// [`Hub::spawn_cluster`] before accepting connections.
    pub fn clustered(
        settings: HubSettings,
        store: Arc<dyn Store>,
        bus: Arc<dyn Bus>,
        effects: Arc<dyn Effects>,
        cluster: &str,
        lease: Arc<dyn Lease>,
    ) -> Self {
        Self::build(
            settings,
            store,
            bus,
            effects,
            Some((cluster.to_owned(), lease)),
        )
    }

    fn build(
        settings: HubSettings,
        store: Arc<dyn Store>,
        bus: Arc<dyn Bus>,
        effects: Arc<dyn Effects>,
        cluster: Option<(String, Arc<dyn Lease>)>,
    ) -> Self {
        let clock = ClockAnchor {
            instant: Instant::now(),
            unix: unix_now(),
        };
        // Connection ids cross the bus, so each node counts in a range of
        // its own: 24 random bits of node above a 40-bit counter.
        let node_bits = u64::from(uuid::Uuid::new_v4().as_u128() as u32 & 0x00ff_ffff);
        let role = if cluster.is_some() {
            Role::Follower { owner: None }
        } else {
            Role::Owner
        };
        let node = uuid::Uuid::new_v4().simple().to_string();
        let cluster =
            cluster.map(|(name, lease)| ClusterLink::new(&name, lease, &node, bus.clone()));
        Hub {
            shared: Arc::new(Shared {
                owning: AtomicBool::new(role == Role::Owner),
                state: Mutex::new(Locked {
                    board: HubState::new(Queue::new(settings.queue.clone(), clock), role),
                    writer: Writer::default(),
                }),
                lanes: std::sync::Mutex::new(HashMap::new()),
                store,
                bus,
                effects,
                clock,
                settings,
                next_conn: AtomicU64::new((node_bits << 40) | 1),
                node,
                cluster,
            }),
        }
    }

    /// The bus this hub speaks over, for other node-to-node messages (ended
    /// sessions) that should not open a second connection.
    pub fn bus(&self) -> Arc<dyn Bus> {
        self.shared.bus.clone()
    }

    /// Whether this node owns the rooms and the queue now. Always true
    /// without a cluster.
    pub async fn is_owner(&self) -> bool {
        matches!(self.shared.state.lock().await.role, Role::Owner)
    }

    /// The hub's tie between `Instant` and Unix time, for building a
    /// [`MeetingSetup`].
    pub fn clock(&self) -> ClockAnchor {
        self.shared.clock
    }

    /// Loads the open chats from the store after a restart. Call once,
    /// before accepting connections.
    pub async fn restore(&self) -> Result<usize, HubError> {
        if !self.shared.owning.load(Ordering::Acquire) {
            // A follower holds no chats; the owner restores them.
            return Ok(0);
        }
        let chats = self.load_queue().await?;
        let restored = chats.len();
        let mut state = self.shared.state.lock().await;
        restore_chats(&mut state, chats, Instant::now());
        Ok(restored)
    }

    /// The open chats and their histories, as the store has them.
    async fn load_queue(&self) -> Result<Vec<(QueueEntryRecord, Vec<StoredEvent>)>, HubError> {
        let rows = self.shared.store.open_queue_entries().await?;
        let mut chats = Vec::with_capacity(rows.len());
        for row in &rows {
            let record = row.to_record()?;
            let events = self.load_events(&record.room).await?;
            chats.push((record, events));
        }
        Ok(chats)
    }

    /// Opens (or restores from the store) the meeting room of a booking, or
    /// only takes its `staff_access` anew if it is open. Call it when a booking's join link is
    /// used, or for all of today's bookings at start-up.
    pub async fn open_meeting(&self, setup: MeetingSetup) -> Result<(), HubError> {
        let spec = MeetingSpec::from_setup(&setup);
        let mut state = self.shared.state.lock().await;
        if self.shared.cluster.is_some() {
            // Remembered so that a new owner hears of it again.
            state.specs.insert(setup.room.clone(), spec.clone());
        }
        if !matches!(state.role, Role::Owner) {
            drop(state);
            return self.forward(Input::OpenMeeting(spec)).await;
        }
        drop(state);
        self.open_room(setup).await
    }

    /// Opens a meeting room on the owner. A room that is not open yet is
    /// restored from its history, which is read with the lock free: nobody
    /// writes a room's events but the owner while it holds the room, so the
    /// history cannot change before the room is in memory (and if another
    /// input opened it meanwhile, that one stands).
    async fn open_room(&self, setup: MeetingSetup) -> Result<(), HubError> {
        let mut setup = Some(setup);
        let events = {
            let mut state = self.shared.state.lock().await;
            let room = &setup.as_ref().expect("not taken yet").room;
            match state.rooms.get_mut(room) {
                Some(open) => {
                    let setup = setup.take().expect("not taken yet");
                    // Who may enter is decided anew each time the room is
                    // opened, so that a change of policy or staff reaches
                    // an open room.
                    open.set_staff_access(setup.staff_access);
                    return Ok(());
                }
                None => room.clone(),
            }
        };
        let events = self.load_events(&events).await?;
        let setup = setup.take().expect("not taken yet");
        let mut state = self.shared.state.lock().await;
        if !matches!(state.role, Role::Owner) {
            // Stepped down meanwhile; the next owner opens it from `specs`.
            return Ok(());
        }
        match state.rooms.entry(setup.room.clone()) {
            Entry::Occupied(mut open) => open.get_mut().set_staff_access(setup.staff_access),
            Entry::Vacant(absent) => {
                absent.insert(Room::restore(setup, events));
            }
        }
        Ok(())
    }

    /// Closes a booking's meeting room because the booking was cancelled or
    /// moved. Its history stays in the store.
    pub async fn cancel_meeting(&self, room: &RoomId) {
        let now = Instant::now();
        let mut state = self.shared.state.lock().await;
        state.specs.remove(room);
        if !matches!(state.role, Role::Owner) {
            drop(state);
            let input = Input::CancelMeeting { room: room.clone() };
            if let Err(e) = self.forward(input).await {
                tracing::warn!(%room, error = %e, "forwarding a cancellation failed");
            }
            return;
        }
        let Some(meeting) = state.rooms.get_mut(room) else {
            return;
        };
        let out = meeting.cancel();
        let wait = self.carry_out(&mut state, None, out, now).await;
        drop(state);
        Settled(wait).await;
    }

    /// Registers a connection. Messages for it arrive on the receiver; when
    /// the receiver yields `None` the hub has dropped the connection (it was
    /// too slow) and the endpoint should close the socket.
    pub async fn connect(
        &self,
        identity: Identity,
    ) -> (ConnectionId, mpsc::Receiver<ServerMessage>) {
        self.connect_at(identity, Instant::now()).await
    }

    pub async fn connect_at(
        &self,
        identity: Identity,
        now: Instant,
    ) -> (ConnectionId, mpsc::Receiver<ServerMessage>) {
        let conn = ConnectionId(self.shared.next_conn.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = mpsc::channel(self.shared.settings.connection_buffer.max(16));
        let mut state = self.shared.state.lock().await;
        if !matches!(state.role, Role::Owner) {
            let connection = Connection {
                identity: identity.clone(),
                sink: Sink::Local(tx),
            };
            state.connections.insert(conn, connection);
            drop(state);
            if let Err(e) = self.forward(Input::Connect { conn, identity }).await {
                // The connection gets its welcome when a new owner is known.
                tracing::warn!(%conn, error = %e, "forwarding a connection failed");
            }
            return (conn, rx);
        }
        let out = attach(&mut state, conn, identity, Sink::Local(tx), now);
        let wait = self.carry_out(&mut state, Some(conn), out, now).await;
        drop(state);
        Settled(wait).await;
        (conn, rx)
    }

    /// Applies one client message and waits until what it caused is
    /// carried out.
    pub async fn handle(&self, conn: ConnectionId, message: ClientMessage) {
        self.handle_at(conn, message, Instant::now()).await
    }

    pub async fn handle_at(&self, conn: ConnectionId, message: ClientMessage, now: Instant) {
        self.submit_at(conn, message, now).await.await
    }

    /// Applies one client message and returns without waiting for the
    /// writer: the returned [`Settled`] completes once what the message
    /// caused is stored and carried out, its effects included. Messages are
    /// applied in the order
    /// they are submitted, so a connection may submit its next message
    /// before the last one settles; that lets one connection's messages
    /// share a write batch instead of taking one each.
    pub async fn submit(&self, conn: ConnectionId, message: ClientMessage) -> Settled {
        self.submit_at(conn, message, Instant::now()).await
    }

    async fn submit_at(&self, conn: ConnectionId, message: ClientMessage, now: Instant) -> Settled {
        let mut state = self.shared.state.lock().await;
        if !matches!(state.role, Role::Owner) {
            let local = state.connections.contains_key(&conn);
            drop(state);
            if local {
                if let Err(e) = self.forward(Input::Message { conn, message }).await {
                    tracing::warn!(%conn, error = %e, "forwarding a message failed");
                }
            }
            return Settled(None);
        }
        Settled(self.apply_message(&mut state, conn, message, now).await)
    }

    async fn apply_message(
        &self,
        state: &mut Locked,
        conn: ConnectionId,
        message: ClientMessage,
        now: Instant,
    ) -> Option<oneshot::Receiver<()>> {
        let identity = state.connections.get(&conn).map(|c| c.identity.clone())?;
        let out = route(state, conn, &identity, message, now);
        self.carry_out(state, Some(conn), out, now).await
    }
}

impl Hub {
    /// Opens a pre-assessment chat for a resident's connection and queues
    /// it. The endpoint calls this for `queue.open`, after computing
    /// eligibility.
    pub async fn open_conversation(
        &self,
        conn: ConnectionId,
        request: ConversationRequest,
    ) -> Result<RoomId, HubError> {
        self.open_conversation_at(conn, request, Instant::now())
            .await
    }

    pub async fn open_conversation_at(
        &self,
        conn: ConnectionId,
        request: ConversationRequest,
        now: Instant,
    ) -> Result<RoomId, HubError> {
        let mut state = self.shared.state.lock().await;
        let identity = state
            .connections
            .get(&conn)
            .map(|c| c.identity.clone())
            .ok_or(HubError::UnknownConnection)?;
        let room = match &identity {
            Identity::Resident { .. } => new_room_id("chat"),
            Identity::Anonymous { conversation } => conversation.clone(),
            _ => return Err(HubError::NotAResident),
        };
        if !matches!(state.role, Role::Owner) {
            drop(state);
            let input = Input::OpenConversation {
                conn,
                room: room.clone(),
                request,
            };
            self.forward(input).await?;
            return Ok(room);
        }
        let (room, wait) = self
            .open_in(&mut state, conn, &identity, room, request, now)
            .await?;
        drop(state);
        Settled(wait).await;
        Ok(room)
    }

    async fn open_in(
        &self,
        state: &mut Locked,
        conn: ConnectionId,
        identity: &Identity,
        room: RoomId,
        request: ConversationRequest,
        now: Instant,
    ) -> Result<(RoomId, Option<oneshot::Receiver<()>>), HubError> {
        // A signed-in resident's home municipality comes from the sign-in,
        // never from the request; an anonymous resident chooses it.
        let (anonymous, home_municipality) = match identity {
            Identity::Resident {
                home_municipality, ..
            } => (false, home_municipality.clone()),
            Identity::Anonymous { .. } => (true, request.home_municipality),
            _ => return Err(HubError::NotAResident),
        };
        let out = state.queue.handle(
            QueueInput::Open {
                conn,
                conversation: NewConversation {
                    room: room.clone(),
                    service: request.service,
                    home_municipality,
                    resident: identity.party(),
                    anonymous,
                    eligible_municipalities: request.eligible_municipalities,
                },
            },
            now,
        );
        let wait = self.carry_out(state, Some(conn), out, now).await;
        Ok((room, wait))
    }

    /// The connection closed: it leaves every room and the staff console.
    pub async fn disconnect(&self, conn: ConnectionId) {
        self.disconnect_at(conn, Instant::now()).await
    }

    pub async fn disconnect_at(&self, conn: ConnectionId, now: Instant) {
        let mut state = self.shared.state.lock().await;
        if !matches!(state.role, Role::Owner) {
            if state.connections.remove(&conn).is_some() {
                drop(state);
                if let Err(e) = self.forward(Input::Disconnect { conn }).await {
                    tracing::warn!(%conn, error = %e, "forwarding a disconnect failed");
                }
            }
            return;
        }
        let out = detach(&mut state, conn, now);
        let wait = self.carry_out(&mut state, None, out, now).await;
        drop(state);
        Settled(wait).await;
    }

    /// Runs timers due at `now`: no-shows, unanswered and abandoned chats.
    pub async fn tick(&self, now: Instant) {
        let mut state = self.shared.state.lock().await;
        let mut out = state.queue.handle(QueueInput::Tick, now);
        for room in state.rooms.values_mut() {
            if room.next_deadline().is_some_and(|d| now >= d) {
                out.extend(room.handle(RoomInput::Tick, now));
            }
        }
        let wait = self.carry_out(&mut state, None, out, now).await;
        drop(state);
        Settled(wait).await;
    }

    /// The earliest instant at which [`Hub::tick`] has something to do.
    pub async fn next_deadline(&self) -> Option<Instant> {
        let state = self.shared.state.lock().await;
        let rooms = state.rooms.values().filter_map(Room::next_deadline);
        rooms.chain(state.queue.next_deadline()).min()
    }

    /// Spawns the task that calls [`Hub::tick`] when a deadline passes,
    /// checking at least once a second for deadlines added meanwhile.
    pub fn spawn_timer(&self) -> tokio::task::JoinHandle<()> {
        let hub = self.clone();
        tokio::spawn(async move {
            loop {
                let soon = Instant::now() + Duration::from_secs(1);
                let wake = hub.next_deadline().await.map_or(soon, |d| d.min(soon));
                tokio::time::sleep_until(wake.into()).await;
                hub.tick(Instant::now()).await;
            }
        })
    }

    /// Subscribes to what other nodes publish for this one (knocks for
    /// staff consoles) and spawns the task that delivers it. Call once at
    /// start-up when more than one node shares the bus.
    pub async fn spawn_bus_listener(&self) -> Result<tokio::task::JoinHandle<()>, HubError> {
        let mut knocks = self.shared.bus.subscribe(KNOCK_SUBJECT).await?;
        let hub = self.clone();
        Ok(tokio::spawn(async move {
            while let Some(payload) = futures::StreamExt::next(&mut knocks).await {
                let knock: Knock = match serde_json::from_slice(&payload) {
                    Ok(knock) => knock,
                    Err(e) => {
                        tracing::warn!(error = %e, "ignoring a malformed knock from the bus");
                        continue;
                    }
                };
                if knock.node == hub.shared.node {
                    continue;
                }
                if hub.shared.cluster.is_some() {
                    // In a cluster the owner delivers knocks to every console.
                    continue;
                }
                let mut state = hub.shared.state.lock().await;
                let mut dropped = Vec::new();
                deliver_knock(&state, &knock, &mut dropped);
                let now = Instant::now();
                for conn in dropped {
                    let out = detach(&mut state, conn, now);
                    // Carried out in order; nothing here needs to wait.
                    let _ = hub.carry_out(&mut state, None, out, now).await;
                }
            }
        }))
    }

    /// Joins the cluster: takes the lease if nobody holds it (or learns who
    /// does) before it returns, then spawns the tasks that renew it, take
    /// over when the owner goes, carry deliveries between nodes and, while
    /// this node owns, apply what followers forward. Without a cluster it
    /// spawns nothing.
    pub async fn spawn_cluster(&self) -> Result<Vec<tokio::task::JoinHandle<()>>, HubError> {
        let Some(cluster) = &self.shared.cluster else {
            return Ok(Vec::new());
        };
        let (outbox, publishing) = cluster.spawn_outbox();
        self.shared.state.lock().await.outbox = Some(outbox);
        let mut tasks = vec![publishing];
        let mut deliveries = cluster.deliveries().await?;
        let hub = self.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(payload) = futures::StreamExt::next(&mut deliveries).await {
                match serde_json::from_slice::<Delivery>(&payload) {
                    Ok(delivery) => hub.deliver_local(delivery).await,
                    Err(e) => tracing::warn!(error = %e, "ignoring a malformed delivery"),
                }
            }
        }));
        let mut owning = None;
        self.hold_lease(&mut owning).await;
        let hub = self.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::time::sleep(LEASE_EVERY).await;
                hub.hold_lease(&mut owning).await;
            }
        }));
        Ok(tasks)
    }

    /// Gives up the lease if this node holds it, so that another node takes
    /// over at once. Call on shutdown, after stopping the cluster tasks.
    pub async fn leave_cluster(&self) {
        let Some(cluster) = &self.shared.cluster else {
            return;
        };
        let mut state = self.shared.state.lock().await;
        if matches!(state.role, Role::Owner) {
            self.set_role(&mut state, Role::Follower { owner: None });
            drop(state);
            if let Err(e) = cluster.lease.release(&self.shared.node).await {
                tracing::warn!(error = %e, "releasing the hub lease failed");
            }
        }
    }

    /// One round of the lease: renew or take it, and act on a change of
    /// owner as [`cluster::lease_step`] decides. `owning` holds the task
    /// that applies forwarded inputs while this node owns.
    async fn hold_lease(&self, owning: &mut Option<OwnerTask>) {
        let Some(cluster) = &self.shared.cluster else {
            return;
        };
        let node = &self.shared.node;
        let read = match cluster.lease.hold(node).await {
            Ok(holder) => Some(holder),
            Err(e) => {
                tracing::warn!(error = %e, "reading the hub lease failed");
                None
            }
        };
        let renewed = owning.as_ref().map(|task| task.renewed);
        match cluster::lease_step(node, read, renewed, Instant::now()) {
            LeaseStep::Stay => {}
            LeaseStep::Renewed => {
                if let Some(task) = owning {
                    task.renewed = Instant::now();
                }
            }
            LeaseStep::TakeOver => match self.take_over().await {
                Ok(task) => *owning = Some(task),
                Err(e) => {
                    tracing::error!(error = %e, "taking over rooms and queue failed");
                    if let Err(e) = cluster.lease.release(node).await {
                        tracing::warn!(error = %e, "releasing the hub lease failed");
                    }
                }
            },
            LeaseStep::StepDown => self.step_down(owning, None).await,
            LeaseStep::Follow { step_down, owner } => {
                if step_down {
                    self.step_down(owning, owner.clone()).await;
                }
                let changed = {
                    let mut state = self.shared.state.lock().await;
                    cluster::follow(&mut state, owner.clone())
                };
                if changed {
                    tracing::info!(?owner, "the hub has a new owner");
                    self.register_again().await;
                }
            }
        }
    }

    /// Becomes the owner: hears forwarded inputs, restores the queue and
    /// the known meeting rooms from the store, and welcomes this node's own
    /// connections again ([`cluster::take_over`]).
    async fn take_over(&self) -> Result<OwnerTask, HubError> {
        let cluster = self.shared.cluster.as_ref().expect("only in a cluster");
        let mut inputs = cluster.inputs().await?;
        // What the store holds is read before the lock is taken, so that
        // this node's own connections are served meanwhile.
        let specs: Vec<MeetingSpec> = {
            let state = self.shared.state.lock().await;
            state.specs.values().cloned().collect()
        };
        let chats = self.load_queue().await?;
        let mut meetings = Vec::with_capacity(specs.len());
        for spec in specs {
            let events = self.load_events(spec.room()).await?;
            meetings.push((spec.to_setup(self.shared.clock), events));
        }
        let now = Instant::now();
        let mut state = self.shared.state.lock().await;
        let (out, late) = cluster::take_over(&mut state, self.fresh_queue(), chats, meetings, now);
        self.set_role(&mut state, Role::Owner);
        tracing::info!(node = %self.shared.node, "this node owns the rooms and the queue");
        let _ = self.carry_out(&mut state, None, out, now).await;
        drop(state);
        for spec in late {
            let room = spec.room().clone();
            if let Err(e) = self.open_room(spec.to_setup(self.shared.clock)).await {
                tracing::warn!(%room, error = %e, "opening a meeting room failed");
            }
        }
        let hub = self.clone();
        let task = tokio::spawn(async move {
            while let Some(payload) = futures::StreamExt::next(&mut inputs).await {
                match serde_json::from_slice::<Envelope>(&payload) {
                    Ok(envelope) => hub.apply_forwarded(envelope).await,
                    Err(e) => tracing::warn!(error = %e, "ignoring a malformed hub input"),
                }
            }
        });
        Ok(OwnerTask {
            task,
            renewed: Instant::now(),
        })
    }

    /// An empty queue with this hub's rules.
    fn fresh_queue(&self) -> Queue {
        Queue::new(self.shared.settings.queue.clone(), self.shared.clock)
    }

    /// Stops owning ([`cluster::step_down`]).
    async fn step_down(&self, owning: &mut Option<OwnerTask>, owner: Option<String>) {
        // Dropping the task stops it.
        drop(owning.take());
        let mut state = self.shared.state.lock().await;
        cluster::step_down(&mut state, self.fresh_queue());
        self.set_role(&mut state, Role::Follower { owner: None });
        tracing::warn!(?owner, "this node no longer owns the rooms and the queue");
    }

    /// Tells a new owner about this node's meeting rooms and connections
    /// ([`cluster::registrations`]).
    async fn register_again(&self) {
        let inputs = cluster::registrations(&*self.shared.state.lock().await);
        for input in inputs {
            if let Err(e) = self.forward(input).await {
                tracing::warn!(error = %e, "registering with a new owner failed");
            }
        }
    }

    /// Sends an input to the owner.
    async fn forward(&self, input: Input) -> Result<(), HubError> {
        match &self.shared.cluster {
            Some(cluster) => Ok(cluster.forward(input).await?),
            None => Ok(()),
        }
    }

    /// Applies an input a follower forwarded, as the owner.
    async fn apply_forwarded(&self, envelope: Envelope) {
        let now = Instant::now();
        let mut state = self.shared.state.lock().await;
        if !matches!(state.role, Role::Owner) {
            return;
        }
        match envelope.input {
            Input::Connect { conn, identity } => {
                if state.connections.contains_key(&conn) {
                    return;
                }
                let out = attach(&mut state, conn, identity, Sink::Remote(envelope.node), now);
                let _ = self.carry_out(&mut state, Some(conn), out, now).await;
            }
            Input::Message { conn, message } => {
                let _ = self.apply_message(&mut state, conn, message, now).await;
            }
            Input::OpenConversation {
                conn,
                room,
                request,
            } => {
                let Some(identity) = state.connections.get(&conn).map(|c| c.identity.clone())
                else {
                    return;
                };
                if let Err(e) = self
                    .open_in(&mut state, conn, &identity, room.clone(), request, now)
                    .await
                {
                    tracing::warn!(%room, error = %e, "opening a forwarded chat failed");
                }
            }
            Input::Disconnect { conn } => {
                let out = detach(&mut state, conn, now);
                let _ = self.carry_out(&mut state, None, out, now).await;
            }
            Input::OpenMeeting(spec) => {
                let room = spec.room().clone();
                let setup = spec.to_setup(self.shared.clock);
                drop(state);
                // Forwarded inputs are applied one after the other, so the
                // room is open before the next one.
                if let Err(e) = self.open_room(setup).await {
                    tracing::warn!(%room, error = %e, "opening a forwarded meeting room failed");
                }
            }
            Input::TransferCandidates { room, staff, reply } => {
                let answer = state.queue.transfer_candidates(&room, &staff);
                drop(state);
                let payload = serde_json::to_vec(&answer).expect("ids always serialise");
                if let Err(e) = self.shared.bus.publish(&reply, payload).await {
                    tracing::warn!(%room, error = %e, "answering a follower failed");
                }
            }
            Input::CancelMeeting { room } => {
                let Some(meeting) = state.rooms.get_mut(&room) else {
                    return;
                };
                let out = meeting.cancel();
                let _ = self.carry_out(&mut state, None, out, now).await;
            }
        }
    }

    /// Hands a message from the owner to a connection on this node.
    async fn deliver_local(&self, delivery: Delivery) {
        let mut state = self.shared.state.lock().await;
        let mut dropped = Vec::new();
        deliver(&state, delivery.conn, delivery.message, &mut dropped);
        for conn in &dropped {
            tracing::warn!(%conn, "dropping a connection that does not keep up");
            state.connections.remove(conn);
        }
        drop(state);
        for conn in dropped {
            if let Err(e) = self.forward(Input::Disconnect { conn }).await {
                tracing::warn!(%conn, error = %e, "forwarding a disconnect failed");
            }
        }
    }

    /// The colleagues `staff` may hand `room` to now (see
    /// [`Queue::transfer_candidates`]); `None` unless the chat is open and
    /// theirs. A follower asks the owner over the bus.
    pub async fn transfer_candidates(
        &self,
        room: &RoomId,
        staff: &StaffId,
    ) -> Result<Option<Vec<StaffId>>, HubError> {
        let state = self.shared.state.lock().await;
        if matches!(state.role, Role::Owner) {
            return Ok(state.queue.transfer_candidates(room, staff));
        }
        drop(state);
        let cluster = self
            .shared
            .cluster
            .as_ref()
            .expect("only a cluster has followers");
        let reply = cluster.reply_subject();
        let mut answers = self.shared.bus.subscribe(&reply).await?;
        self.forward(Input::TransferCandidates {
            room: room.clone(),
            staff: staff.clone(),
            reply,
        })
        .await?;
        let answer = tokio::time::timeout(REPLY_WITHIN, futures::StreamExt::next(&mut answers))
            .await
            .ok()
            .flatten()
            .ok_or(HubError::NoAnswer)?;
        serde_json::from_slice(&answer).map_err(|_| HubError::NoAnswer)
    }

    /// Sets the canned responses staff can pick from for a service in a
    /// language. Every node of a cluster keeps its own copy, as any of them
    /// may come to own the queue.
    pub async fn set_canned_responses(
        &self,
        service: ServiceId,
        language: Language,
        responses: Vec<CannedResponse>,
    ) {
        self.shared
            .state
            .lock()
            .await
            .canned
            .insert((service, language), responses);
    }

    /// Events of a room as they happen, as JSON frames, from any node. The
    /// web crate uses this for live updates on "My pages".
    pub async fn subscribe_room(&self, room: &RoomId) -> Result<Subscription, HubError> {
        Ok(self.shared.bus.subscribe(&room_subject(room)).await?)
    }

    async fn load_events(&self, room: &RoomId) -> Result<Vec<StoredEvent>, HubError> {
        let rows = self.shared.store.events_after(room.as_str(), 0).await?;
        rows.iter()
            .map(StoredEvent::from_row)
            .collect::<Result<_, _>>()
            .map_err(HubError::from)
    }

    /// Carries out `out` in order: at once if it stores nothing and nothing
    /// is waiting to be stored, or else after everything before it, by the
    /// writer task. The returned receiver (if any) fires once `out` is
    /// carried out, its effects included; wait on it with [`Settled`] after
    /// releasing the lock.
    ///
    /// The writer takes everything waiting, stores all its events in one
    /// batch while the lock is free for other inputs, then carries the
    /// outputs out in the order they were made. So a `Send` after a
    /// `Persist` still happens only once the event is stored, per-room order
    /// holds (one writer, first in first out), and a busy node writes many
    /// events per transaction instead of one.
    ///
    /// Carrying out waits on nothing outside the process: messages go into
    /// the connections' buffers, and whatever waits on the bus, the store or
    /// the caller's [`Effects`] goes to its lane ([`Hub::run_later`]). The
    /// one exception is reloading a room's history after a failed write
    /// (see [`Hub::execute`]).
    async fn carry_out(
        &self,
        state: &mut Locked,
        origin: Option<ConnectionId>,
        out: Vec<Outbound>,
        now: Instant,
    ) -> Option<oneshot::Receiver<()>> {
        if stores(&out) || state.writer.busy {
            return Some(self.enqueue(state, origin, out, now));
        }
        let (done, wait) = oneshot::channel();
        let done = Arc::new(Completion(Some(done)));
        let mut left = self
            .execute(state, origin, out, Vec::new(), now, Some(&done))
            .await;
        forget_closed_rooms(state);
        // What dropped connections leave behind comes next; nobody waits
        // for it.
        while !left.is_empty() {
            if stores(&left) || state.writer.busy {
                drop(self.enqueue(state, None, left, now));
                break;
            }
            left = self.execute(state, None, left, Vec::new(), now, None).await;
            forget_closed_rooms(state);
        }
        // Without effects still running there is nothing to wait for.
        (Arc::strong_count(&done) > 1).then_some(wait)
    }

    /// Queues `out` for the writer, and starts the writer if it is idle.
    fn enqueue(
        &self,
        state: &mut Locked,
        origin: Option<ConnectionId>,
        out: Vec<Outbound>,
        now: Instant,
    ) -> oneshot::Receiver<()> {
        let epochs = out
            .iter()
            .filter_map(|o| match o {
                Outbound::Persist(event) => Some(state.epoch(&event.room)),
                _ => None,
            })
            .collect();
        let (done, wait) = oneshot::channel();
        state.writer.queue.push_back(Pending {
            origin,
            out,
            epochs,
            now,
            done,
        });
        if !state.writer.busy {
            state.writer.busy = true;
            let hub = self.clone();
            tokio::spawn(async move { hub.write_pending().await });
        }
        wait
    }

    /// The writer task: stores and carries out what waits, batch after
    /// batch, and ends when nothing is left.
    async fn write_pending(&self) {
        loop {
            let (batch, rows, fates) = {
                let mut state = self.shared.state.lock().await;
                if state.writer.queue.is_empty() {
                    state.writer.busy = false;
                    return;
                }
                let batch: Vec<Pending> = state.writer.queue.drain(..).collect();
                let mut rows = Vec::new();
                // For each pending output, for each of its events: the index
                // of its row, or `None` if it is stale.
                let mut fates: Vec<Vec<Option<usize>>> = Vec::with_capacity(batch.len());
                for pending in &batch {
                    let events = pending.out.iter().filter_map(|o| match o {
                        Outbound::Persist(event) => Some(event),
                        _ => None,
                    });
                    let fate = events
                        .zip(&pending.epochs)
                        .map(|(event, epoch)| {
                            (state.epoch(&event.room) == *epoch).then(|| {
                                rows.push(event.to_row());
                                rows.len() - 1
                            })
                        })
                        .collect();
                    fates.push(fate);
                }
                (batch, rows, fates)
            };
            let mut outcomes: Vec<Option<Result<Appended, StoreError>>> = if rows.is_empty() {
                Vec::new()
            } else {
                self.shared
                    .store
                    .append_events(rows)
                    .await
                    .into_iter()
                    .map(Some)
                    .collect()
            };
            let mut state = self.shared.state.lock().await;
            for (pending, fate) in batch.into_iter().zip(fates) {
                let written = fate
                    .into_iter()
                    .map(
                        |index| match index.and_then(|i| outcomes.get_mut(i)?.take()) {
                            None => Written::Stale,
                            Some(Ok(Appended::Stored)) => Written::Stored,
                            Some(Ok(Appended::Duplicate { seq })) => Written::Failed(format!(
                                "the store already holds this message as seq {seq}"
                            )),
                            Some(Err(e)) => Written::Failed(e.to_string()),
                        },
                    )
                    .collect();
                let done = Arc::new(Completion(Some(pending.done)));
                let left = self
                    .execute(
                        &mut state,
                        pending.origin,
                        pending.out,
                        written,
                        pending.now,
                        Some(&done),
                    )
                    .await;
                if !left.is_empty() {
                    // Nobody waits for it.
                    drop(self.enqueue(&mut state, None, left, pending.now));
                }
            }
            forget_closed_rooms(&mut state);
        }
    }

    /// Carries out `out` in order, given what became of its events
    /// (`written`, one per `Persist`), through [`switchboard::switch`], and
    /// queues its effects, each holding `done` until it has run. Returns
    /// what the connections it had to drop leave behind, for the caller to
    /// carry out next.
    ///
    /// A failed store write reloads the room's history from the store with
    /// the lock held. That is the one wait under the lock, kept on purpose:
    /// until the reload, the room's memory holds an event the store refused,
    /// and any input applied to it meanwhile could show that event (in a
    /// `join`'s or `resume`'s history) or number a new one after it. The
    /// epochs only keep stale events from being stored; they do not keep a
    /// read from the wrong memory. It happens only after a failed write.
    async fn execute(
        &self,
        state: &mut Locked,
        origin: Option<ConnectionId>,
        out: Vec<Outbound>,
        written: Vec<Written>,
        now: Instant,
        done: Option<&Arc<Completion>>,
    ) -> Vec<Outbound> {
        let turn =
            |room: &RoomId, party: &PartyId| self.shared.effects.turn_credentials(room, party);
        let cx = Context {
            node: &self.shared.node,
            clock: self.shared.clock,
            turn: &turn,
        };
        let switched = switchboard::switch(state, &cx, origin, out, written);
        for effect in switched.effects {
            self.run_later(effect, done.cloned());
        }
        let mut dropped = switched.dropped;
        if let Some(room) = switched.reload {
            let loaded = match self.load_events(&room).await {
                Ok(events) => Some(events),
                Err(e) => {
                    tracing::error!(%room, error = %e, "cannot reload a room's history");
                    None
                }
            };
            switchboard::reload(state, &room, loaded, &mut dropped);
        }
        switchboard::drop_connections(state, dropped, now)
    }

    /// Queues `effect` in its lane and starts the lane's task if it is
    /// idle. It is called with the state locked, so each lane holds its
    /// effects in the order they were made: one room's events are published
    /// in seq order, its queue entry saved in order, its audit entries
    /// written in order. Lanes run side by side, so a slow audit write
    /// holds up only the effects of its own room, and no delivery at all.
    fn run_later(&self, effect: Effect, done: Option<Arc<Completion>>) {
        let lane = effect.lane();
        let mut lanes = self.shared.lanes.lock().unwrap_or_else(|e| e.into_inner());
        match lanes.entry(lane) {
            Entry::Occupied(mut waiting) => waiting.get_mut().push_back((effect, done)),
            Entry::Vacant(idle) => {
                let lane = idle.key().clone();
                idle.insert(VecDeque::from([(effect, done)]));
                let hub = self.clone();
                tokio::spawn(async move { hub.run_lane(lane).await });
            }
        }
    }

    /// A lane's task: runs its effects one by one, and ends (removing the
    /// lane, so that the next effect starts a new task) once none is left.
    async fn run_lane(&self, lane: Lane) {
        loop {
            let next = {
                let mut lanes = self.shared.lanes.lock().unwrap_or_else(|e| e.into_inner());
                let Some(waiting) = lanes.get_mut(&lane) else {
                    return;
                };
                match waiting.pop_front() {
                    Some(next) => next,
                    None => {
                        lanes.remove(&lane);
                        return;
                    }
                }
            };
            let (effect, done) = next;
            // A panicking effect must not leave its lane taken for good.
            let run = std::panic::AssertUnwindSafe(self.run(effect));
            if futures::FutureExt::catch_unwind(run).await.is_err() {
                tracing::error!(?lane, "an effect panicked");
            }
            drop(done);
        }
    }

    /// Runs one effect.
    async fn run(&self, effect: Effect) {
        match effect {
            Effect::PublishEvent { room, frame } => {
                let subject = room_subject(&room);
                if let Err(e) = self.shared.bus.publish(&subject, frame.into_bytes()).await {
                    tracing::warn!(%room, error = %e, "publishing a room event failed");
                }
            }
            Effect::PublishKnock(knock) => {
                let payload = serde_json::to_vec(&knock).expect("knocks always serialise");
                if let Err(e) = self.shared.bus.publish(KNOCK_SUBJECT, payload).await {
                    tracing::warn!(room = %knock.room, error = %e, "publishing a knock failed");
                }
            }
            Effect::SaveQueueEntry(record) => {
                if !self.shared.owning.load(Ordering::Acquire) {
                    // A node that stepped down leaves the entries to the
                    // new owner, which restored them from the store.
                    tracing::warn!(room = %record.room, "not storing a queue entry after stepping down");
                    return;
                }
                let row = QueueEntryRow::from_record(&record);
                if let Err(e) = self.shared.store.save_queue_entry(row).await {
                    // The chat goes on in memory; only a restart before
                    // the next successful write would lose its state.
                    tracing::error!(room = %record.room, error = %e, "storing a queue entry failed");
                }
            }
            Effect::Audit(entry) => self.shared.effects.audit(entry).await,
            Effect::BookingOutcome { booking, outcome } => {
                self.shared.effects.booking_outcome(&booking, outcome).await
            }
            Effect::StaffNotified {
                room,
                municipality,
                staff,
                participant,
            } => {
                self.shared
                    .effects
                    .staff_notified(&room, &municipality, staff.as_ref(), &participant)
                    .await
            }
            Effect::ConversationClosed {
                room,
                resident,
                anonymous,
            } => {
                self.shared
                    .effects
                    .conversation_closed(&room, &resident, anonymous)
                    .await
            }
        }
    }
}

impl Hub {
    fn set_role(&self, state: &mut Locked, role: Role) {
        self.shared
            .owning
            .store(role == Role::Owner, Ordering::Release);
        state.role = role;
    }
}

/// Puts the open chats read from the store back in the queue.
fn restore_chats(
    state: &mut HubState,
    chats: Vec<(QueueEntryRecord, Vec<StoredEvent>)>,
    now: Instant,
) {
    for (record, events) in chats {
        state.queue.restore(record, events, now);
    }
}

/// Whether an output stores events, and so goes through the writer.
fn stores(out: &[Outbound]) -> bool {
    out.iter().any(|o| matches!(o, Outbound::Persist(_)))
}

/// An effect waiting in its lane, with the completion of the output that
/// made it, if anyone waits for that.
type Job = (Effect, Option<Arc<Completion>>);

/// Fires its sender when dropped: shared by the effects of one output, it
/// tells the output's [`Settled`] once the last of them has run.
struct Completion(Option<oneshot::Sender<()>>);

impl Drop for Completion {
    fn drop(&mut self) {
        if let Some(done) = self.0.take() {
            let _ = done.send(());
        }
    }
}

/// The state behind the hub's lock: the switchboard's, and the outputs
/// waiting for the writer.
struct Locked {
    board: HubState,
    writer: Writer,
}

impl std::ops::Deref for Locked {
    type Target = HubState;

    fn deref(&self) -> &HubState {
        &self.board
    }
}

impl std::ops::DerefMut for Locked {
    fn deref_mut(&mut self) -> &mut HubState {
        &mut self.board
    }
}

struct Shared {
    state: Mutex<Locked>,
    /// Effects waiting to run, per lane; a lane is here while its task
    /// runs (see [`Hub::run_later`]).
    lanes: std::sync::Mutex<HashMap<Lane, VecDeque<Job>>>,
    /// Whether `role` is `Owner`, for the lanes, which do not take the
    /// state's lock: a node that stepped down stores no more queue entries.
    owning: AtomicBool,
    /// The cluster this node shares rooms and the queue with, if any.
    cluster: Option<ClusterLink>,
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    effects: Arc<dyn Effects>,
    clock: ClockAnchor,
    settings: HubSettings,
    next_conn: AtomicU64,
    /// This node's id, so that it ignores its own knocks on the bus.
    node: String,
}

/// How long a follower waits for the owner to answer a question.
const REPLY_WITHIN: Duration = Duration::from_secs(2);

#[derive(Default)]
struct Writer {
    queue: VecDeque<Pending>,
    /// Whether the writer task runs; it holds the outputs it took until it
    /// has carried them out.
    busy: bool,
}

/// An output waiting to be stored and carried out.
struct Pending {
    origin: Option<ConnectionId>,
    out: Vec<Outbound>,
    /// The room's epoch when each `Persist` of `out` was made, in order.
    epochs: Vec<u64>,
    now: Instant,
    done: oneshot::Sender<()>,
}

/// Completes once outputs are carried out, their effects included (an
/// audit entry written, an event published): those a submitted message
/// caused (see [`Hub::submit`]), or those handed to [`Hub::carry_out`].
#[derive(Debug)]
#[must_use = "dropping it does not undo the message, but loses the moment it settles"]
pub struct Settled(Option<oneshot::Receiver<()>>);

impl std::future::Future for Settled {
    type Output = ();

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        match &mut self.get_mut().0 {
            None => std::task::Poll::Ready(()),
            // An error means the writer is gone, with the runtime.
            Some(wait) => std::pin::Pin::new(wait).poll(cx).map(|_| ()),
        }
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
