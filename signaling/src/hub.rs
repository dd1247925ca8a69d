//! The hub: the async layer the WebSocket endpoint talks to. It owns the
//! meeting rooms and the chat queue, feeds them client messages and timer
//! ticks, and carries out what they return: storing events before anyone sees
//! them, delivering messages to per-connection channels, publishing events on
//! the bus, and handing audit entries, booking outcomes and TURN requests to
//! the caller through [`Effects`].
//!
//! All state sits behind one async mutex, and every input is applied under
//! it in turn. An output that stores events waits in a queue for the writer
//! task, which stores all that waits in one batch with the mutex free, then
//! carries the outputs out in the order they were made (see
//! [`Hub::carry_out`]). So per-room order stays simple to reason about, and
//! a busy node writes many events per transaction instead of one.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot, Mutex};

use crate::bus::{room_subject, Bus, BusError, Subscription};
use crate::cluster::{
    input_subject, node_subject, reply_subject, Delivery, Envelope, Input, Lease, MeetingSpec,
    LEASE_EVERY, LEASE_TTL,
};
use crate::ids::{
    BookingId, ConnectionId, InvitationToken, MunicipalityCode, PartyId, ResidentId, RoomId,
    ServiceId, StaffId,
};
use crate::outbound::{AdHocMeeting, AuditEntry, Outbound};
use crate::protocol::{
    BookingOutcome, CannedResponse, ClientMessage, CloseReason, ErrorCode, Language, Participant,
    ServerMessage, TurnCredentials,
};
use crate::queue::{NewConversation, Queue, QueueInput, QueueRules, StaffProfile};
use crate::room::{ClockAnchor, Joiner, MeetingSetup, Room, RoomInput, Signal, StaffAccess};
use crate::store::{Appended, EventRow, QueueEntryRow, Store, StoreError};

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

/// What the hub asks of the rest of the system. The web crate implements it
/// with the `booking` crate (audit log, booking status) and the TURN secret.
///
/// The hub awaits these while it holds its state, so that an audit entry is
/// written before the read it records is delivered. They must therefore not
/// call back into the [`Hub`], and should be quick.
#[async_trait]
pub trait Effects: Send + Sync + 'static {
    /// Writes a staff read to the audit log.
    async fn audit(&self, entry: AuditEntry);
    /// Marks a booking `completed` or `no_show`.
    async fn booking_outcome(&self, booking: &BookingId, outcome: BookingOutcome);
    /// Makes TURN REST credentials for an admitted participant, or `None`
    /// when no relay is configured.
    async fn turn_credentials(&self, room: &RoomId, party: &PartyId) -> Option<TurnCredentials>;
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
        let link = ClusterLink {
            name: cluster.to_owned(),
            lease,
        };
        Self::build(settings, store, bus, effects, Some(link))
    }

    fn build(
        settings: HubSettings,
        store: Arc<dyn Store>,
        bus: Arc<dyn Bus>,
        effects: Arc<dyn Effects>,
        cluster: Option<ClusterLink>,
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
        Hub {
            shared: Arc::new(Shared {
                state: Mutex::new(HubState {
                    connections: HashMap::new(),
                    rooms: HashMap::new(),
                    queue: Queue::new(settings.queue.clone(), clock),
                    canned: BTreeMap::new(),
                    role,
                    specs: HashMap::new(),
                    outbox: None,
                    writer: Writer::default(),
                    epochs: HashMap::new(),
                }),
                store,
                bus,
                effects,
                clock,
                settings,
                next_conn: AtomicU64::new((node_bits << 40) | 1),
                node: uuid::Uuid::new_v4().simple().to_string(),
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
        let mut state = self.shared.state.lock().await;
        if !matches!(state.role, Role::Owner) {
            // A follower holds no chats; the owner restores them.
            return Ok(0);
        }
        self.restore_queue(&mut state).await
    }

    async fn restore_queue(&self, state: &mut HubState) -> Result<usize, HubError> {
        let rows = self.shared.store.open_queue_entries().await?;
        let now = Instant::now();
        for row in &rows {
            let record = row.to_record()?;
            let events = self.load_events(&record.room).await?;
            state.queue.restore(record, events, now);
        }
        Ok(rows.len())
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
        self.open_room(&mut state, setup).await
    }

    async fn open_room(&self, state: &mut HubState, setup: MeetingSetup) -> Result<(), HubError> {
        if let Some(room) = state.rooms.get_mut(&setup.room) {
            // Who may enter is decided anew each time the room is opened,
            // so that a change of policy or staff reaches an open room.
            room.set_staff_access(setup.staff_access);
            return Ok(());
        }
        let events = self.load_events(&setup.room).await?;
        state
            .rooms
            .insert(setup.room.clone(), Room::restore(setup, events));
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
    /// caused is stored and carried out. Messages are applied in the order
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
        state: &mut HubState,
        conn: ConnectionId,
        message: ClientMessage,
        now: Instant,
    ) -> Option<oneshot::Receiver<()>> {
        let identity = state.connections.get(&conn).map(|c| c.identity.clone())?;
        let out = route(state, conn, &identity, message, now);
        self.carry_out(state, Some(conn), out, now).await
    }
}

/// Registers a connection with the owner's state and returns its welcome,
/// the knocks and queue entries its console should see.
fn attach(
    state: &mut HubState,
    conn: ConnectionId,
    identity: Identity,
    sink: Sink,
    now: Instant,
) -> Vec<Outbound> {
    let party = identity.party();
    let mut out = vec![Outbound::Send {
        to: conn,
        message: ServerMessage::Welcome { party },
    }];
    if let Identity::Staff {
        id,
        municipality,
        may_handle,
    } = &identity
    {
        let profile = StaffProfile {
            id: id.clone(),
            municipality: municipality.clone(),
            services: may_handle.clone(),
        };
        // Knocks that came before this console connected are still news,
        // in the rooms this staff member may enter.
        for room in state.rooms.values() {
            if room.admits_staff(id) {
                for participant in room.waiting() {
                    out.push(Outbound::Send {
                        to: conn,
                        message: ServerMessage::LobbyKnock {
                            room: room.id().clone(),
                            participant,
                        },
                    });
                }
            }
        }
        state.connections.insert(
            conn,
            Connection {
                identity: identity.clone(),
                sink,
            },
        );
        out.extend(state.queue.handle(
            QueueInput::StaffConnected {
                conn,
                staff: profile,
            },
            now,
        ));
    } else {
        state
            .connections
            .insert(conn, Connection { identity, sink });
    }
    out
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
        state: &mut HubState,
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
        let (outbox, mut outgoing) = mpsc::unbounded_channel::<(String, Vec<u8>)>();
        self.shared.state.lock().await.outbox = Some(outbox);
        let mut tasks = Vec::new();
        let bus = self.shared.bus.clone();
        let name = cluster.name.clone();
        tasks.push(tokio::spawn(async move {
            while let Some((node, payload)) = outgoing.recv().await {
                if let Err(e) = bus.publish(&node_subject(&name, &node), payload).await {
                    tracing::warn!(%node, error = %e, "publishing a delivery failed");
                }
            }
        }));
        let mut deliveries = self
            .shared
            .bus
            .subscribe(&node_subject(&cluster.name, &self.shared.node))
            .await?;
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
            state.role = Role::Follower { owner: None };
            drop(state);
            if let Err(e) = cluster.lease.release(&self.shared.node).await {
                tracing::warn!(error = %e, "releasing the hub lease failed");
            }
        }
    }

    /// One round of the lease: renew or take it, and act on a change of
    /// owner. `owning` holds the task that applies forwarded inputs while
    /// this node owns.
    async fn hold_lease(&self, owning: &mut Option<OwnerTask>) {
        let Some(cluster) = &self.shared.cluster else {
            return;
        };
        let node = &self.shared.node;
        let holder = match cluster.lease.hold(node).await {
            Ok(holder) => holder,
            Err(e) => {
                tracing::warn!(error = %e, "reading the hub lease failed");
                // An owner that cannot renew must stop before its lease
                // lapses and another node takes over.
                if owning
                    .as_ref()
                    .is_some_and(|o| o.renewed.elapsed() >= LEASE_TTL - LEASE_EVERY)
                {
                    self.step_down(owning, None).await;
                }
                return;
            }
        };
        match holder {
            Some(holder) if holder == *node => {
                if let Some(task) = owning {
                    task.renewed = Instant::now();
                } else {
                    match self.take_over().await {
                        Ok(task) => *owning = Some(task),
                        Err(e) => {
                            tracing::error!(error = %e, "taking over rooms and queue failed");
                            if let Err(e) = cluster.lease.release(node).await {
                                tracing::warn!(error = %e, "releasing the hub lease failed");
                            }
                        }
                    }
                }
            }
            other => {
                if owning.is_some() {
                    self.step_down(owning, other.clone()).await;
                }
                let changed = {
                    let mut state = self.shared.state.lock().await;
                    match &mut state.role {
                        Role::Follower { owner } if other.is_some() && *owner != other => {
                            owner.clone_from(&other);
                            true
                        }
                        _ => false,
                    }
                };
                if changed {
                    tracing::info!(owner = ?other, "the hub has a new owner");
                    self.register_again().await;
                }
            }
        }
    }

    /// Becomes the owner: hears forwarded inputs, restores the queue and
    /// the known meeting rooms from the store, and welcomes this node's own
    /// connections again.
    async fn take_over(&self) -> Result<OwnerTask, HubError> {
        let cluster = self.shared.cluster.as_ref().expect("only in a cluster");
        let mut inputs = self
            .shared
            .bus
            .subscribe(&input_subject(&cluster.name))
            .await?;
        let now = Instant::now();
        let mut state = self.shared.state.lock().await;
        self.forget_owned(&mut state);
        self.restore_queue(&mut state).await?;
        let specs: Vec<MeetingSpec> = state.specs.values().cloned().collect();
        for spec in specs {
            self.open_room(&mut state, spec.to_setup(self.shared.clock))
                .await?;
        }
        state.role = Role::Owner;
        tracing::info!(node = %self.shared.node, "this node owns the rooms and the queue");
        let locals: Vec<(ConnectionId, Identity)> = state
            .connections
            .iter()
            .map(|(conn, c)| (*conn, c.identity.clone()))
            .collect();
        for (conn, identity) in locals {
            let Some(connection) = state.connections.remove(&conn) else {
                continue;
            };
            let out = attach(&mut state, conn, identity, connection.sink, now);
            let _ = self.carry_out(&mut state, None, out, now).await;
        }
        drop(state);
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

    /// Forgets what only an owner holds: the rooms, the queue and other
    /// nodes' connections. The store has all that matters.
    fn forget_owned(&self, state: &mut HubState) {
        state.rooms.clear();
        state.queue = Queue::new(self.shared.settings.queue.clone(), self.shared.clock);
        state
            .connections
            .retain(|_, c| matches!(c.sink, Sink::Local(_)));
    }

    /// Stops owning: forgets the rooms, the queue and other nodes'
    /// connections. The store has all that matters for the next owner.
    async fn step_down(&self, owning: &mut Option<OwnerTask>, owner: Option<String>) {
        // Dropping the task stops it.
        drop(owning.take());
        let mut state = self.shared.state.lock().await;
        self.forget_owned(&mut state);
        state.role = Role::Follower { owner: None };
        tracing::warn!(?owner, "this node no longer owns the rooms and the queue");
    }

    /// Tells a new owner about this node's meeting rooms and connections.
    /// Each connection gets a new `welcome` from it, the client's cue to
    /// join its rooms again and resume.
    async fn register_again(&self) {
        let (specs, locals) = {
            let state = self.shared.state.lock().await;
            let specs: Vec<MeetingSpec> = state.specs.values().cloned().collect();
            let locals: Vec<(ConnectionId, Identity)> = state
                .connections
                .iter()
                .map(|(conn, c)| (*conn, c.identity.clone()))
                .collect();
            (specs, locals)
        };
        for spec in specs {
            if let Err(e) = self.forward(Input::OpenMeeting(spec)).await {
                tracing::warn!(error = %e, "forwarding a meeting room failed");
            }
        }
        for (conn, identity) in locals {
            if let Err(e) = self.forward(Input::Connect { conn, identity }).await {
                tracing::warn!(%conn, error = %e, "forwarding a connection failed");
            }
        }
    }

    /// Sends an input to the owner.
    async fn forward(&self, input: Input) -> Result<(), HubError> {
        let Some(cluster) = &self.shared.cluster else {
            return Ok(());
        };
        let envelope = Envelope {
            node: self.shared.node.clone(),
            input,
        };
        let payload = serde_json::to_vec(&envelope).expect("hub inputs always serialise");
        self.shared
            .bus
            .publish(&input_subject(&cluster.name), payload)
            .await?;
        Ok(())
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
                if let Err(e) = self.open_room(&mut state, setup).await {
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
        for conn in dropped {
            tracing::warn!(%conn, "dropping a connection that does not keep up");
            state.connections.remove(&conn);
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
        let reply = reply_subject(&cluster.name, &self.shared.node);
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

    async fn load_events(
        &self,
        room: &RoomId,
    ) -> Result<Vec<crate::history::StoredEvent>, HubError> {
        let rows = self.shared.store.events_after(room.as_str(), 0).await?;
        rows.iter()
            .map(EventRow::to_event)
            .collect::<Result<_, _>>()
            .map_err(HubError::from)
    }

    /// Carries out `out` in order: at once if it stores nothing and nothing
    /// is waiting to be stored, or else after everything before it, by the
    /// writer task. The returned receiver (if any) fires once `out` is
    /// carried out; wait on it with [`settle`] after releasing the lock.
    ///
    /// The writer takes everything waiting, stores all its events in one
    /// batch while the lock is free for other inputs, then carries the
    /// outputs out in the order they were made. So a `Send` after a
    /// `Persist` still happens only once the event is stored, per-room order
    /// holds (one writer, first in first out), and a busy node writes many
    /// events per transaction instead of one.
    async fn carry_out(
        &self,
        state: &mut HubState,
        origin: Option<ConnectionId>,
        out: Vec<Outbound>,
        now: Instant,
    ) -> Option<oneshot::Receiver<()>> {
        let (mut origin, mut out) = (origin, out);
        loop {
            let persists = out.iter().any(|o| matches!(o, Outbound::Persist(_)));
            if persists || state.writer.busy {
                return Some(self.enqueue(state, origin, out, now));
            }
            // What dropped connections leave behind comes next.
            out = self.execute(state, origin, out, Vec::new(), now).await;
            forget_closed_rooms(state);
            if out.is_empty() {
                return None;
            }
            origin = None;
        }
    }

    /// Queues `out` for the writer, and starts the writer if it is idle.
    fn enqueue(
        &self,
        state: &mut HubState,
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
                                rows.push(EventRow::from_event(event));
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
                let left = self
                    .execute(
                        &mut state,
                        pending.origin,
                        pending.out,
                        written,
                        pending.now,
                    )
                    .await;
                if !left.is_empty() {
                    // Nobody waits for it.
                    drop(self.enqueue(&mut state, None, left, pending.now));
                }
                let _ = pending.done.send(());
            }
            forget_closed_rooms(&mut state);
        }
    }

    /// Carries out `out` in order, given what became of its events
    /// (`written`, one per `Persist`). A failed store write stops the batch,
    /// so nothing after it is shown, and reloads the room's history so that
    /// memory matches the store again. Returns what the connections it had
    /// to drop leave behind, for the caller to carry out next.
    async fn execute(
        &self,
        state: &mut HubState,
        origin: Option<ConnectionId>,
        out: Vec<Outbound>,
        written: Vec<Written>,
        now: Instant,
    ) -> Vec<Outbound> {
        let mut written = written.into_iter();
        let mut dropped = Vec::new();
        for outbound in out {
            match outbound {
                Outbound::Send { to, message } => deliver(state, to, message, &mut dropped),
                Outbound::Persist(event) => {
                    let room = event.room.clone();
                    let outcome = written.next().unwrap_or(Written::Stale);
                    let failure = match outcome {
                        Written::Stored => None,
                        Written::Failed(failure) => Some(failure),
                        Written::Stale => {
                            // Made from a history that a failed write has
                            // since reloaded: memory already matches the
                            // store, so only the sender needs telling.
                            tell_not_stored(state, origin, &room, &mut dropped);
                            break;
                        }
                    };
                    if let Some(failure) = failure {
                        tracing::error!(%room, seq = event.seq, %failure, "storing a room event failed");
                        self.recover(state, &room, origin, &mut dropped).await;
                        break;
                    }
                    let frame = ServerMessage::Event {
                        room: room.clone(),
                        seq: event.seq,
                        event: event.event,
                    }
                    .to_frame();
                    if let Err(e) = self
                        .shared
                        .bus
                        .publish(&room_subject(&room), frame.into_bytes())
                        .await
                    {
                        tracing::warn!(%room, error = %e, "publishing a room event failed");
                    }
                }
                Outbound::PersistQueueEntry(record) => {
                    if let Err(e) = self
                        .shared
                        .store
                        .save_queue_entry(QueueEntryRow::from_record(&record))
                        .await
                    {
                        // The chat goes on in memory; only a restart before
                        // the next successful write would lose its state.
                        tracing::error!(room = %record.room, error = %e, "storing a queue entry failed");
                    }
                }
                Outbound::IssueTurnCredentials { to, room, party } => {
                    if let Some(credentials) =
                        self.shared.effects.turn_credentials(&room, &party).await
                    {
                        let message = ServerMessage::TurnCredentials { room, credentials };
                        deliver(state, to, message, &mut dropped);
                    }
                }
                Outbound::Audit(entry) => self.shared.effects.audit(entry).await,
                Outbound::BookingOutcome { booking, outcome } => {
                    self.shared.effects.booking_outcome(&booking, outcome).await
                }
                Outbound::NotifyStaff {
                    room,
                    municipality,
                    staff,
                    staff_access,
                    participant,
                } => {
                    let knock = Knock {
                        node: self.shared.node.clone(),
                        staff_access,
                        room: room.clone(),
                        participant: participant.clone(),
                    };
                    deliver_knock(state, &knock, &mut dropped);
                    // Consoles on other nodes hear it through the bus.
                    let payload = serde_json::to_vec(&knock).expect("knocks always serialise");
                    if let Err(e) = self.shared.bus.publish(KNOCK_SUBJECT, payload).await {
                        tracing::warn!(%room, error = %e, "publishing a knock failed");
                    }
                    self.shared
                        .effects
                        .staff_notified(&room, &municipality, staff.as_ref(), &participant)
                        .await;
                }
                Outbound::OpenAdHocMeeting(meeting) => {
                    let setup = ad_hoc_setup(meeting, self.shared.clock);
                    state.rooms.insert(setup.room.clone(), Room::new(setup));
                }
                Outbound::ConversationClosed {
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
        let mut left = Vec::new();
        for conn in dropped {
            tracing::warn!(%conn, "dropping a connection that does not keep up");
            left.extend(detach(state, conn, now));
        }
        left
    }

    /// After a failed write: tells the sender, and makes memory match the
    /// store so that sequence numbers stay without gaps.
    async fn recover(
        &self,
        state: &mut HubState,
        room: &RoomId,
        origin: Option<ConnectionId>,
        dropped: &mut Vec<ConnectionId>,
    ) {
        tell_not_stored(state, origin, room, dropped);
        // Outputs made from the history that is now reloaded are stale.
        *state.epochs.entry(room.clone()).or_default() += 1;
        match self.load_events(room).await {
            Ok(events) => {
                if let Some(meeting) = state.rooms.get_mut(room) {
                    meeting.reload_history(events);
                } else {
                    state.queue.reload_history(room, events);
                }
            }
            Err(e) => {
                // The store is down: close the meeting room so that nobody
                // goes on from a history the store does not have. It is
                // restored from the store when it is opened again.
                tracing::error!(%room, error = %e, "cannot reload a room's history");
                if let Some(meeting) = state.rooms.remove(room) {
                    for conn in meeting.connections().collect::<Vec<_>>() {
                        let message = ServerMessage::RoomClosed {
                            room: room.clone(),
                            reason: CloseReason::StorageUnavailable,
                        };
                        deliver(state, conn, message, dropped);
                    }
                }
            }
        }
    }
}

struct Shared {
    state: Mutex<HubState>,
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

/// The bus subject on which nodes tell each other about knocks.
const KNOCK_SUBJECT: &str = "kontakt.knocks";

/// A knock as it crosses the bus between nodes. It carries who may hear
/// it, because only the receiving node knows whose consoles it holds.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Knock {
    node: String,
    staff_access: StaffAccess,
    room: RoomId,
    participant: Participant,
}

/// Sends a knock to this node's consoles of the staff the room admits.
fn deliver_knock(state: &HubState, knock: &Knock, dropped: &mut Vec<ConnectionId>) {
    let consoles: Vec<ConnectionId> = state
        .connections
        .iter()
        .filter(|(_, c)| {
            matches!(&c.identity, Identity::Staff { id, .. } if knock.staff_access.admits(id))
        })
        .map(|(conn, _)| *conn)
        .collect();
    for conn in consoles {
        let message = ServerMessage::LobbyKnock {
            room: knock.room.clone(),
            participant: knock.participant.clone(),
        };
        deliver(state, conn, message, dropped);
    }
}

struct HubState {
    /// On the owner, every connection of the cluster; on a follower, its
    /// own connections only.
    connections: HashMap<ConnectionId, Connection>,
    rooms: HashMap<RoomId, Room>,
    queue: Queue,
    canned: BTreeMap<(ServiceId, Language), Vec<CannedResponse>>,
    role: Role,
    /// Meeting rooms opened through this node, told again to a new owner.
    specs: HashMap<RoomId, MeetingSpec>,
    /// Deliveries for connections on other nodes: `(node, payload)`,
    /// published in order by the task [`Hub::spawn_cluster`] starts.
    outbox: Option<mpsc::UnboundedSender<(String, Vec<u8>)>>,
    /// Outputs waiting for the writer; see [`Hub::carry_out`].
    writer: Writer,
    /// How often each room's history was reloaded after a failed write.
    /// An output made before the last reload is stale: its events are not
    /// stored, as their seqs no longer follow the store's.
    epochs: HashMap<RoomId, u64>,
}

impl HubState {
    fn epoch(&self, room: &RoomId) -> u64 {
        self.epochs.get(room).copied().unwrap_or(0)
    }
}

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

/// What became of one event of an output.
enum Written {
    Stored,
    Failed(String),
    /// Not written: made before its room's history was reloaded.
    Stale,
}

/// Completes once outputs handed to the writer are carried out: those a
/// submitted message caused (see [`Hub::submit`]), or those handed to
/// [`Hub::carry_out`].
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

/// Tells the sender of an input that its event was not stored.
fn tell_not_stored(
    state: &HubState,
    origin: Option<ConnectionId>,
    room: &RoomId,
    dropped: &mut Vec<ConnectionId>,
) {
    if let Some(conn) = origin {
        let message = ServerMessage::error(
            ErrorCode::StorageUnavailable,
            "not stored; try again",
            Some(room.clone()),
        );
        deliver(state, conn, message, dropped);
    }
}

/// Whether this node holds the rooms and the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Role {
    Owner,
    /// Forwards to the owner, whose node id is known once the lease is read.
    Follower {
        owner: Option<String>,
    },
}

/// The task that applies forwarded inputs while this node owns, and when
/// the lease was last renewed.
struct OwnerTask {
    task: tokio::task::JoinHandle<()>,
    renewed: Instant,
}

impl Drop for OwnerTask {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct ClusterLink {
    name: String,
    lease: Arc<dyn Lease>,
}

struct Connection {
    identity: Identity,
    sink: Sink,
}

/// Where a connection's messages go.
enum Sink {
    /// A socket on this node.
    Local(mpsc::Sender<ServerMessage>),
    /// A socket on another node of the cluster, by node id.
    Remote(String),
}

/// Turns a client message into inputs for the room or the queue it is for.
fn route(
    state: &mut HubState,
    conn: ConnectionId,
    identity: &Identity,
    message: ClientMessage,
    now: Instant,
) -> Vec<Outbound> {
    use ClientMessage as M;
    let reply = |message: ServerMessage| vec![Outbound::Send { to: conn, message }];
    let not_found = |room: &RoomId| {
        reply(ServerMessage::error(
            ErrorCode::NotFound,
            "no such room",
            Some(room.clone()),
        ))
    };
    // Messages that are not about one room.
    match &message {
        M::Ping => return reply(ServerMessage::Pong),
        M::QueueOpen { .. } => {
            return reply(ServerMessage::error(
                ErrorCode::NotHandledHere,
                "the endpoint opens chats through Hub::open_conversation",
                None,
            ))
        }
        M::StaffAvailability {
            available,
            max_chats,
        } => {
            return state.queue.handle(
                QueueInput::Availability {
                    conn,
                    available: *available,
                    max_chats: *max_chats,
                },
                now,
            )
        }
        M::CannedList { service, language } => {
            let allowed = matches!(identity, Identity::Staff { may_handle, .. } if may_handle.contains(service));
            if !allowed {
                return reply(ServerMessage::error(
                    ErrorCode::Forbidden,
                    "staff of this service only",
                    None,
                ));
            }
            let asked = language.unwrap_or_default();
            // A language without responses of its own gets the Swedish ones.
            let language = if state
                .canned
                .get(&(service.clone(), asked))
                .is_some_and(|r| !r.is_empty())
            {
                asked
            } else {
                Language::Sv
            };
            let responses = state
                .canned
                .get(&(service.clone(), language))
                .cloned()
                .unwrap_or_default();
            return reply(ServerMessage::CannedResponses {
                service: service.clone(),
                language,
                responses,
            });
        }
        _ => {}
    }
    let room = message
        .room()
        .expect("every other message names a room")
        .clone();
    if let Identity::Guest { room: own, .. } = identity {
        // A guest link opens one room and nothing else.
        if *own != room {
            return not_found(&room);
        }
    }
    if let Identity::Anonymous { conversation } = identity {
        // A token for one chat opens that chat and the meeting rooms it
        // was escalated to, whose resident is this chat's, and nothing else.
        let party = identity.party();
        let own = *conversation == room
            || state
                .rooms
                .get(&room)
                .is_some_and(|meeting| meeting.setup().resident == party);
        if !own {
            return not_found(&room);
        }
    }
    if let Some(meeting) = state.rooms.get_mut(&room) {
        if let Identity::Staff { id, .. } = identity {
            // Whatever staff the room does not admit ask of it, the answer
            // is the same as for a room that does not exist.
            if !meeting.admits_staff(id) {
                return meeting.refuse_staff(conn, id);
            }
        }
        let input = match message {
            M::Join { invitation, .. } => RoomInput::Join {
                conn,
                joiner: match (identity, invitation) {
                    (Identity::Staff { id, .. }, _) => Joiner::Staff { id: id.clone() },
                    (Identity::Guest { invitation, .. }, _) => Joiner::Guest {
                        invitation: invitation.clone(),
                    },
                    (_, _) => Joiner::Resident {
                        party: identity.party(),
                    },
                },
            },
            M::Leave { .. } => RoomInput::Leave { conn },
            M::Resume { last_seq, .. } => RoomInput::Resume { conn, last_seq },
            M::Ack { seq, .. } => RoomInput::Ack { conn, seq },
            M::ChatSend {
                client_id, text, ..
            } => RoomInput::Chat {
                conn,
                client_id,
                text,
            },
            M::ChatTyping { typing, .. } => RoomInput::Typing { conn, typing },
            M::LobbyAdmit { party, .. } => RoomInput::Admit { conn, party },
            M::LobbyDecline { party, .. } => RoomInput::Decline { conn, party },
            M::LobbySendBack { party, .. } => RoomInput::SendBack { conn, party },
            M::SignalOffer { to, sdp, .. } => RoomInput::Signal {
                conn,
                to,
                signal: Signal::Offer(sdp),
            },
            M::SignalAnswer { to, sdp, .. } => RoomInput::Signal {
                conn,
                to,
                signal: Signal::Answer(sdp),
            },
            M::SignalIce { to, candidate, .. } => RoomInput::Signal {
                conn,
                to,
                signal: Signal::Ice(candidate),
            },
            M::MeetingInvite { role, .. } => RoomInput::Invite {
                conn,
                role,
                token: InvitationToken::parse(uuid::Uuid::new_v4().simple().to_string())
                    .expect("a UUID is a valid token"),
            },
            M::MeetingEnd { .. } => RoomInput::End { conn },
            _ => {
                return reply(ServerMessage::error(
                    ErrorCode::InvalidState,
                    "not a message for a meeting room",
                    Some(room),
                ))
            }
        };
        return meeting.handle(input, now);
    }
    if !state.queue.contains(&room) {
        return not_found(&room);
    }
    let input = match message {
        M::Join { .. } => QueueInput::Join {
            conn,
            party: identity.party(),
            room,
        },
        // Detaching one connection from a chat is not worth its own input:
        // the chat keeps the connection until it closes.
        M::Leave { .. } => return Vec::new(),
        M::Resume { last_seq, .. } => QueueInput::Resume {
            conn,
            room,
            last_seq,
        },
        M::Ack { seq, .. } => QueueInput::Ack { conn, room, seq },
        M::ChatSend {
            client_id, text, ..
        } => QueueInput::Chat {
            conn,
            room,
            client_id,
            text,
        },
        M::ChatTyping { typing, .. } => QueueInput::Typing { conn, room, typing },
        M::QueueLeave { .. } => QueueInput::Leave { conn, room },
        M::QueueClaim { .. } => QueueInput::Claim { conn, room },
        M::QueueAccept { .. } => QueueInput::Accept { conn, room },
        M::QueueTransfer { to, .. } => QueueInput::Transfer { conn, room, to },
        M::ChatOfferTimes {
            client_id, times, ..
        } => QueueInput::OfferTimes {
            conn,
            room,
            client_id,
            times,
        },
        M::ChatEscalateVideo { .. } => QueueInput::EscalateVideo {
            conn,
            room,
            meeting_room: new_room_id("adhoc"),
        },
        M::ChatClose { outcome, .. } => QueueInput::Close {
            conn,
            room,
            outcome,
        },
        _ => {
            return reply(ServerMessage::error(
                ErrorCode::InvalidState,
                "not a message for a chat",
                Some(room),
            ))
        }
    };
    state.queue.handle(input, now)
}

/// Removes a connection from everything and returns what that causes.
fn detach(state: &mut HubState, conn: ConnectionId, now: Instant) -> Vec<Outbound> {
    let mut out = Vec::new();
    for room in state.rooms.values_mut() {
        if room.party_of(conn).is_some() {
            out.extend(room.handle(RoomInput::Leave { conn }, now));
        }
    }
    out.extend(state.queue.handle(QueueInput::Disconnected { conn }, now));
    state.connections.remove(&conn);
    out
}

/// Forgets the rooms that have closed. It looks at every room, so it runs
/// once per batch of outputs carried out rather than once per output.
fn forget_closed_rooms(state: &mut HubState) {
    let closed: Vec<RoomId> = state
        .rooms
        .iter()
        .filter(|(_, room)| room.is_closed())
        .map(|(id, _)| id.clone())
        .collect();
    for room in closed {
        state.rooms.remove(&room);
        state.specs.remove(&room);
    }
}

fn deliver(
    state: &HubState,
    to: ConnectionId,
    message: ServerMessage,
    dropped: &mut Vec<ConnectionId>,
) {
    let Some(connection) = state.connections.get(&to) else {
        return;
    };
    match &connection.sink {
        Sink::Local(tx) => {
            if tx.try_send(message).is_err() && !dropped.contains(&to) {
                dropped.push(to);
            }
        }
        Sink::Remote(node) => {
            // The node that holds the connection drops it if it is slow.
            if let Some(outbox) = &state.outbox {
                let delivery = Delivery { conn: to, message };
                let payload = serde_json::to_vec(&delivery).expect("deliveries always serialise");
                let _ = outbox.send((node.clone(), payload));
            }
        }
    }
}

fn ad_hoc_setup(meeting: AdHocMeeting, clock: ClockAnchor) -> MeetingSetup {
    MeetingSetup {
        room: meeting.room,
        booking: None,
        performing_municipality: meeting.performing_municipality,
        // Only the staff member who escalated the chat, who already reads
        // it, may enter the meeting it became.
        staff_access: StaffAccess::only([meeting.staff.clone()]),
        staff: Some(meeting.staff),
        resident: meeting.resident.clone(),
        home_municipality: Some(meeting.home_municipality),
        starts_at: None,
        no_show_grace: Duration::ZERO,
        // The staff member chose to meet this resident by escalating.
        pre_admitted: vec![meeting.resident],
        clock,
    }
}

fn new_room_id(prefix: &str) -> RoomId {
    RoomId::parse(format!("{prefix}:{}", uuid::Uuid::new_v4().simple()))
        .expect("a prefix and a UUID make a valid id")
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
