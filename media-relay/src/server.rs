//! The sans-IO TURN server: allocations, permissions, channel bindings, nonces,
//! authentication, quotas and the peer address policy.
//!
//! [`Server`] holds no sockets and never reads the clock. The driver feeds it datagrams with
//! the time they arrived and carries out the [`Command`]s it returns. Relayed data never goes
//! through the command queue: [`Server::handle_client_input`] returns the payload to forward as
//! a borrowed slice, and [`Server::handle_peer_traffic`] writes the ChannelData or Data
//! indication header in place in front of the payload, so the data path neither allocates nor
//! locks.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use rustc_hash::FxHashMap;
use sha1::Sha1;

use crate::credentials::{long_term_key, password_for, RestUsername, PRECHECK_MAX_TTL};
use crate::policy::PeerPolicy;
use crate::stun::{
    attr, write_channel_data_header, write_data_indication_in_place, ChannelData, Class, FrameKind,
    Message, MessageBuilder, Method, CHANNEL_MAX, CHANNEL_MIN,
};

/// Bytes a driver must leave free in front of a peer datagram, so the server can write the
/// largest header (a Data indication with an IPv6 XOR-PEER-ADDRESS: 20 + 24 + 4) in place.
pub const PEER_HEADROOM: usize = 48;

/// Bytes a driver must leave free after a peer datagram for padding to four bytes.
pub const PEER_TAILROOM: usize = 4;

/// The allocation lifetime used when the client asks for less or nothing (RFC 8656, section 7.2).
pub const DEFAULT_ALLOCATION_LIFETIME: Duration = Duration::from_secs(600);

/// The longest allocation lifetime granted; the RFC recommends an hour (RFC 8656, section 7.2).
pub const MAX_ALLOCATION_LIFETIME: Duration = Duration::from_secs(3600);

/// Permissions last five minutes unless refreshed (RFC 8656, section 9).
pub const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);

/// Channel bindings last ten minutes unless refreshed (RFC 8656, section 12).
pub const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);

/// How long a port reserved with EVEN-PORT's R bit is held (RFC 8656, section 7.2 suggests
/// about 30 seconds).
pub const RESERVATION_LIFETIME: Duration = Duration::from_secs(30);

/// How many ports an allocation tries before it fails with 508 Insufficient Capacity.
pub const MAX_BIND_ATTEMPTS: u8 = 8;

/// How often expired allocations, permissions and channels are swept. Expiry is also checked
/// on every packet, so the sweep only reclaims memory and ports.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// The REQUESTED-TRANSPORT value for UDP, the only relayed transport (RFC 8656, section 18.1).
const PROTOCOL_UDP: u8 = 17;

/// The transport a client reached us over. Part of the 5-tuple (RFC 8656, section 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

/// A client's address and transport: the client side of an allocation's 5-tuple.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientSocket {
    transport: Transport,
    addr: SocketAddr,
}

impl ClientSocket {
    pub fn new(transport: Transport, addr: SocketAddr) -> Self {
        Self { transport, addr }
    }

    pub fn transport(&self) -> Transport {
        self.transport
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn is_stream(&self) -> bool {
        self.transport != Transport::Udp
    }
}

/// A peer's address as seen from a relayed transport address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerSocket(SocketAddr);

impl PeerSocket {
    pub fn new(addr: SocketAddr) -> Self {
        Self(addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.0
    }
}

/// The UDP port of a relayed transport address; it identifies an allocation on this server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AllocationPort(u16);

impl AllocationPort {
    pub fn new(port: u16) -> Self {
        Self(port)
    }

    pub fn value(&self) -> u16 {
        self.0
    }
}

/// The address family of a relayed transport address (RFC 8656, section 18.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressFamily {
    V4,
    V6,
}

impl AddressFamily {
    fn of(addr: SocketAddr) -> Self {
        if addr.is_ipv4() {
            Self::V4
        } else {
            Self::V6
        }
    }
}

/// Settings of one [`Server`]; the driver derives them from [`crate::RelayConfig`].
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub realm: String,
    pub secret: String,
    /// Key for the stateless nonces; shared by all workers of one relay.
    pub nonce_key: [u8; 32],
    pub nonce_lifetime: Duration,
    /// The advertised IPv4 address of relayed transport addresses, if IPv4 is relayed.
    pub relay_ipv4: Option<Ipv4Addr>,
    /// The advertised IPv6 address of relayed transport addresses, if IPv6 is relayed.
    pub relay_ipv6: Option<Ipv6Addr>,
    /// The ports this server hands out. Workers of one relay get disjoint ranges.
    pub ports: RangeInclusive<u16>,
    /// Bytes per second per allocation, both directions together; `None` is unlimited.
    pub bandwidth_bytes_per_sec: Option<u64>,
    pub policy: PeerPolicy,
    /// Seed for port choice and Data indication transaction ids, so tests are reproducible.
    pub rng_seed: u64,
}

/// State shared by every worker of a relay: allocation counts per user and in total, the
/// relayed ports in use, port reservations made with EVEN-PORT, and which ports hold the bound
/// relay socket of an allocation.
///
/// Its lock is taken only when an allocation is created or freed, never on the data path. Ports
/// live here rather than in each worker because a reservation made on one worker may be
/// redeemed by a client whose datagrams the kernel hands to another, and because a client of
/// one worker may talk to an allocation of another.
#[derive(Debug)]
pub struct AllocationLedger {
    max_per_user: u32,
    max_total: u32,
    state: Mutex<LedgerState>,
    /// Ports where an IPv4 allocation's relay socket is bound. Unlike `LedgerState::ports`,
    /// which also holds ports reserved with EVEN-PORT and ports whose bind is still to be
    /// tried, these are ports where a datagram reaches one of our allocations. Read without the
    /// lock, on the data path, for peers that only this tells apart from internal services.
    bound_v4: PortBitmap,
    /// The same for IPv6 allocations, whose sockets are IPv6-only: an IPv6 allocation on a
    /// port says nothing of who holds that port for IPv4, and the other way round.
    bound_v6: PortBitmap,
}

#[derive(Debug, Default)]
struct LedgerState {
    per_user: FxHashMap<Box<str>, u32>,
    total: u32,
    ports: rustc_hash::FxHashSet<u16>,
    reservations: FxHashMap<[u8; 8], (u16, Instant)>,
    /// Pre-call check usernames that have had their one allocation, with their expiry in unix
    /// seconds. Kept until they expire, after which authentication refuses them anyway.
    spent: FxHashMap<Box<str>, u64>,
}

/// One bit per UDP port, read and written without a lock.
struct PortBitmap(Box<[AtomicU64; 1024]>);

impl PortBitmap {
    fn new() -> Self {
        Self(Box::new([const { AtomicU64::new(0) }; 1024]))
    }

    fn word_and_bit(&self, port: u16) -> (&AtomicU64, u64) {
        (&self.0[usize::from(port >> 6)], 1 << (port & 63))
    }

    // Each bit is a fact on its own, published with no other data, so the orderings need only
    // keep it coherent. Allocations set their bit after their socket is bound and clear it
    // before their socket is closed, so a reader that is a moment behind errs towards refusing.
    fn insert(&self, port: u16) {
        let (word, bit) = self.word_and_bit(port);
        word.fetch_or(bit, Ordering::Release);
    }

    fn remove(&self, port: u16) {
        let (word, bit) = self.word_and_bit(port);
        word.fetch_and(!bit, Ordering::Release);
    }

    fn contains(&self, port: u16) -> bool {
        let (word, bit) = self.word_and_bit(port);
        word.load(Ordering::Acquire) & bit != 0
    }
}

impl std::fmt::Debug for PortBitmap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ports = (0..=u16::MAX).filter(|port| self.contains(*port));
        f.debug_set().entries(ports).finish()
    }
}

impl AllocationLedger {
    pub fn new(max_per_user: u32, max_total: u32) -> Self {
        Self {
            max_per_user,
            max_total,
            state: Mutex::new(LedgerState::default()),
            bound_v4: PortBitmap::new(),
            bound_v6: PortBitmap::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LedgerState> {
        // The state stays consistent even if a holder panicked, since every update is a
        // single insert or remove.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn try_reserve(&self, subject: &str) -> bool {
        let mut state = self.lock();
        if state.total >= self.max_total {
            return false;
        }
        let count = state.per_user.get(subject).copied().unwrap_or(0);
        if count >= self.max_per_user {
            return false;
        }
        state.per_user.insert(subject.into(), count + 1);
        state.total += 1;
        true
    }

    /// Records that the pre-call check credential `username`, valid until `expiry_unix`, has
    /// its allocation; false when it had one already. Forgets those that expired by `now_unix`.
    fn spend_once(&self, username: &str, expiry_unix: u64, now_unix: u64) -> bool {
        let mut state = self.lock();
        state.spent.retain(|_, expiry| *expiry >= now_unix);
        if state.spent.contains_key(username) {
            return false;
        }
        state.spent.insert(username.into(), expiry_unix);
        true
    }

    /// Gives a pre-call check credential its allocation back, when the relay could not make it.
    fn unspend(&self, username: &str) {
        self.lock().spent.remove(username);
    }

    fn release(&self, subject: &str) {
        let mut state = self.lock();
        state.total = state.total.saturating_sub(1);
        if let Some(count) = state.per_user.get_mut(subject) {
            *count -= 1;
            if *count == 0 {
                state.per_user.remove(subject);
            }
        }
    }

    /// Claims the first free candidate port; with `reserve_next` also reserves the port after
    /// it under `token` until `expires` (RFC 8656, section 7.2, EVEN-PORT with the R bit).
    fn claim_port(
        &self,
        candidates: impl Iterator<Item = u16>,
        reserve_next: Option<([u8; 8], Instant)>,
    ) -> Option<u16> {
        let mut state = self.lock();
        for port in candidates {
            if state.ports.contains(&port) {
                continue;
            }
            match reserve_next {
                None => {
                    state.ports.insert(port);
                    return Some(port);
                }
                Some((token, expires)) => {
                    let Some(next) = port.checked_add(1) else {
                        continue;
                    };
                    if state.ports.contains(&next) {
                        continue;
                    }
                    state.ports.insert(port);
                    state.ports.insert(next);
                    state.reservations.insert(token, (next, expires));
                    return Some(port);
                }
            }
        }
        None
    }

    /// Takes the port reserved under `token`, if the reservation is still valid.
    fn redeem(&self, token: &[u8], now: Instant) -> Option<u16> {
        let token: [u8; 8] = token.try_into().ok()?;
        let mut state = self.lock();
        let (port, expires) = state.reservations.remove(&token)?;
        if expires <= now {
            state.ports.remove(&port);
            return None;
        }
        Some(port)
    }

    /// Gives `port` back. An allocation there stops counting as bound before its socket
    /// closes, which the driver does only after this returns.
    fn release_port(&self, port: u16) {
        let mut state = self.lock();
        self.bound_v4.remove(port);
        self.bound_v6.remove(port);
        state.ports.remove(&port);
    }

    /// Records that the relay socket of an allocation on `port` is bound, so a datagram sent
    /// to this relay's address of `family` on `port` reaches that allocation.
    fn mark_bound(&self, port: u16, family: AddressFamily) {
        self.bound(family).insert(port);
    }

    /// Whether an allocation's relay socket of `family` is bound on `port`, on any worker.
    /// Lock-free, for the data path.
    fn is_bound(&self, port: u16, family: AddressFamily) -> bool {
        self.bound(family).contains(port)
    }

    fn bound(&self, family: AddressFamily) -> &PortBitmap {
        match family {
            AddressFamily::V4 => &self.bound_v4,
            AddressFamily::V6 => &self.bound_v6,
        }
    }

    fn expire_reservations(&self, now: Instant) {
        let mut state = self.lock();
        let expired: Vec<([u8; 8], u16)> = state
            .reservations
            .iter()
            .filter(|(_, (_, expires))| *expires <= now)
            .map(|(token, (port, _))| (*token, *port))
            .collect();
        for (token, port) in expired {
            state.reservations.remove(&token);
            state.ports.remove(&port);
        }
    }

    /// The number of allocations across all workers.
    pub fn total(&self) -> u32 {
        self.lock().total
    }
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Send a STUN response to a client.
    SendToClient { to: ClientSocket, payload: Vec<u8> },
    /// Bind a relay socket on `port`. If that works, call [`Server::handle_allocation_bound`]
    /// and send `on_success` to the client; otherwise call
    /// [`Server::handle_allocation_failed`], which tries another port.
    CreateAllocation {
        port: AllocationPort,
        family: AddressFamily,
        client: ClientSocket,
        on_success: Vec<u8>,
    },
    /// Close the relay socket on `port`.
    FreeAllocation { port: AllocationPort },
}

/// A datagram to send from the relay socket on `port` to `peer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forward<'a> {
    pub port: AllocationPort,
    pub peer: PeerSocket,
    pub payload: &'a [u8],
}

/// Why a datagram was dropped; the label of the `relay_drops_total` metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    Malformed,
    NoAllocation,
    NoPermission,
    NoChannel,
    /// To or from an address the peer policy refuses, on a port that is not (or no longer) a
    /// relayed port of this relay, though the permission or channel was granted for one.
    Forbidden,
    Bandwidth,
    Unexpected,
}

impl DropReason {
    pub const ALL: [DropReason; 7] = [
        DropReason::Malformed,
        DropReason::NoAllocation,
        DropReason::NoPermission,
        DropReason::NoChannel,
        DropReason::Forbidden,
        DropReason::Bandwidth,
        DropReason::Unexpected,
    ];

    pub fn label(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::NoAllocation => "no_allocation",
            DropReason::NoPermission => "no_permission",
            DropReason::NoChannel => "no_channel",
            DropReason::Forbidden => "forbidden",
            DropReason::Bandwidth => "bandwidth",
            DropReason::Unexpected => "unexpected",
        }
    }
}

/// Counters since the last [`Server::take_stats`]; the driver turns them into metrics, so the
/// data path touches plain integers instead of a metrics registry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub client_to_peer_packets: u64,
    pub client_to_peer_bytes: u64,
    pub peer_to_client_packets: u64,
    pub peer_to_client_bytes: u64,
    /// Indexed like [`DropReason::ALL`].
    pub drops: [u64; DropReason::ALL.len()],
    pub auth_failures: u64,
    pub allocations_created: u64,
    pub allocations_freed: u64,
}

/// The sans-IO TURN server of one worker.
pub struct Server {
    config: ServerConfig,
    ledger: Arc<AllocationLedger>,
    epoch: Instant,
    epoch_unix: u64,
    /// Boxed, so the table holds a pointer per slot rather than a whole allocation, and its
    /// spare capacity costs little.
    allocations: FxHashMap<AllocationPort, Box<Allocation>>,
    by_client: FxHashMap<ClientSocket, AllocationPort>,
    commands: VecDeque<Command>,
    stats: Stats,
    rng: u64,
    next_sweep: Instant,
}

struct Allocation {
    client: ClientSocket,
    relayed: SocketAddr,
    username: Box<str>,
    /// Where the subject (the quota key) starts in `username`.
    subject_at: u16,
    key: [u8; 16],
    allocate_transaction: [u8; 12],
    /// Whether the Allocate request carried FINGERPRINT, so late answers can too.
    fingerprint: bool,
    /// Whether the client asked for an even port.
    even: bool,
    bind_attempts: u8,
    reservation: Option<[u8; 8]>,
    expires_at: Instant,
    permissions: Vec<Permission>,
    channels: Vec<Channel>,
    bucket: Option<TokenBucket>,
}

struct Permission {
    ip: IpAddr,
    expires_at: Instant,
    /// Whether the peer policy refuses `ip`, which was allowed only as the address of this
    /// relay's own allocations: then each datagram to or from it checks that its port is one.
    own_allocations_only: bool,
}

struct Channel {
    number: u16,
    peer: PeerSocket,
    expires_at: Instant,
    /// Whether `peer` was bound only as the relayed address of another allocation of this
    /// relay: then each datagram checks that the allocation is still there, since its port may
    /// since have been freed and taken by another program.
    own_allocation: bool,
}

/// Why a peer may be reached, as [`Server::check_peer`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admission {
    /// The peer policy permits the address.
    Policy,
    /// The policy refuses the address, but the peer is the relayed transport address of an
    /// allocation of this relay, such as the other side of a call between two relay-only
    /// clients when `relay_ipv4` is loopback or private.
    OwnAllocation,
}

/// Bandwidth limiter with a one-second burst.
struct TokenBucket {
    rate: u64,
    tokens: u64,
    updated: Instant,
}

impl TokenBucket {
    fn new(rate: u64, now: Instant) -> Self {
        Self {
            rate,
            tokens: rate,
            updated: now,
        }
    }

    fn take(&mut self, bytes: usize, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.updated);
        if !elapsed.is_zero() {
            let refill = (elapsed.as_nanos().min(u128::from(u64::MAX)) as u64 / 1000)
                .saturating_mul(self.rate)
                / 1_000_000;
            if refill > 0 {
                self.tokens = (self.tokens.saturating_add(refill)).min(self.rate);
                self.updated = now;
            }
        }
        let bytes = bytes as u64;
        if self.tokens >= bytes {
            self.tokens -= bytes;
            true
        } else {
            false
        }
    }
}

impl Allocation {
    fn subject(&self) -> &str {
        self.username
            .get(usize::from(self.subject_at)..)
            .unwrap_or_default()
    }

    /// The live permission for `ip`, if there is one.
    fn permission(&self, ip: IpAddr, now: Instant) -> Option<&Permission> {
        self.permissions
            .iter()
            .find(|p| p.ip == ip && p.expires_at > now)
    }

    fn add_permission(&mut self, ip: IpAddr, admission: Admission, now: Instant) {
        let expires_at = now + PERMISSION_LIFETIME;
        // The policy does not change while the server runs, so an address is admitted the same
        // way every time and a refreshed permission keeps its flag.
        let own_allocations_only = admission == Admission::OwnAllocation;
        match self.permissions.iter_mut().find(|p| p.ip == ip) {
            Some(permission) => permission.expires_at = expires_at,
            None => {
                // Most allocations talk to one or two peers; growing one entry at a time keeps
                // a Vec from reserving room for four.
                self.permissions.reserve_exact(1);
                self.permissions.push(Permission {
                    ip,
                    expires_at,
                    own_allocations_only,
                });
            }
        }
    }

    fn allow_bytes(&mut self, len: usize, now: Instant) -> bool {
        self.bucket
            .as_mut()
            .is_none_or(|bucket| bucket.take(len, now))
    }
}

/// What authentication of a request concluded.
enum Auth {
    Ok {
        username: Box<str>,
        subject_at: u16,
        key: [u8; 16],
    },
    Respond,
}

impl Server {
    /// Creates a server. `epoch` and `epoch_unix` tie the monotonic clock the driver passes in
    /// to wall-clock seconds, which credentials and nonces are expressed in.
    pub fn new(
        config: ServerConfig,
        ledger: Arc<AllocationLedger>,
        epoch: Instant,
        epoch_unix: u64,
    ) -> Self {
        let rng = config.rng_seed | 1;
        Self {
            config,
            ledger,
            epoch,
            epoch_unix,
            allocations: FxHashMap::default(),
            by_client: FxHashMap::default(),
            commands: VecDeque::new(),
            stats: Stats::default(),
            rng,
            next_sweep: epoch + SWEEP_INTERVAL,
        }
    }

    /// Handles a datagram (UDP) or frame (TCP/TLS) from a client. Returns data to relay, if
    /// it was a ChannelData message or a Send indication; responses are queued as commands.
    pub fn handle_client_input<'a>(
        &mut self,
        from: ClientSocket,
        bytes: &'a [u8],
        now: Instant,
    ) -> Option<Forward<'a>> {
        match bytes.first().map(|b| crate::stun::frame_kind(*b)) {
            Some(FrameKind::ChannelData) => self.handle_channel_data(from, bytes, now),
            Some(FrameKind::Stun) => match Message::parse(bytes) {
                Ok(message) => self.handle_stun(from, &message, now),
                Err(_) => {
                    // Malformed STUN, including a bad FINGERPRINT, is silently discarded
                    // (RFC 8489, section 6.3).
                    self.drop_packet(DropReason::Malformed);
                    None
                }
            },
            _ => {
                self.drop_packet(DropReason::Malformed);
                None
            }
        }
    }

    /// Handles a datagram that arrived on the relay socket `port` from `from`.
    ///
    /// `buf[PEER_HEADROOM..PEER_HEADROOM + len]` holds the payload, and `buf` must extend
    /// [`PEER_TAILROOM`] bytes past it. Returns the client and the finished ChannelData message
    /// or Data indication, built in place within `buf`.
    pub fn handle_peer_traffic<'b>(
        &mut self,
        port: AllocationPort,
        from: PeerSocket,
        buf: &'b mut [u8],
        len: usize,
        now: Instant,
    ) -> Option<(ClientSocket, &'b [u8])> {
        if buf.len() < PEER_HEADROOM + len + PEER_TAILROOM {
            self.drop_packet(DropReason::Malformed);
            return None;
        }
        let Some(allocation) = self.allocations.get_mut(&port) else {
            self.drop_packet(DropReason::NoAllocation);
            return None;
        };
        if allocation.expires_at <= now {
            self.drop_packet(DropReason::NoAllocation);
            return None;
        }
        let Some(permission) = allocation.permission(from.0.ip(), now) else {
            // Data from peers without a permission is silently discarded (RFC 8656, section 11.5).
            self.drop_packet(DropReason::NoPermission);
            return None;
        };
        // A permission covers every port of its address, but on an address the policy refuses
        // only this relay's allocations may be heard.
        if permission.own_allocations_only && !is_own_relayed(&self.config, &self.ledger, from.0) {
            self.drop_packet(DropReason::Forbidden);
            return None;
        }
        if !allocation.allow_bytes(len, now) {
            self.drop_packet(DropReason::Bandwidth);
            return None;
        }
        let client = allocation.client;
        let channel = allocation
            .channels
            .iter()
            .find(|c| c.peer == from && c.expires_at > now)
            .map(|c| c.number);
        let range = match channel {
            Some(number) if len <= usize::from(u16::MAX) => {
                let start = PEER_HEADROOM - 4;
                write_channel_data_header(&mut buf[start..PEER_HEADROOM], number, len as u16);
                let mut end = PEER_HEADROOM + len;
                if client.is_stream() {
                    // ChannelData over TCP and TLS is padded to four bytes (RFC 8656, section 12.5).
                    let padded = (len + 3) & !3;
                    buf[end..PEER_HEADROOM + padded].fill(0);
                    end = PEER_HEADROOM + padded;
                }
                start..end
            }
            Some(_) => {
                self.drop_packet(DropReason::Malformed);
                return None;
            }
            None => {
                let transaction = self.random_transaction();
                match write_data_indication_in_place(buf, PEER_HEADROOM, len, from.0, transaction) {
                    Some(range) => range,
                    None => {
                        self.drop_packet(DropReason::Malformed);
                        return None;
                    }
                }
            }
        };
        self.stats.peer_to_client_packets += 1;
        self.stats.peer_to_client_bytes += len as u64;
        Some((client, &buf[range]))
    }

    /// A TCP or TLS client went away; its allocation goes with it (RFC 8656, section 3.1).
    pub fn handle_client_disconnected(&mut self, client: ClientSocket) {
        if let Some(port) = self.by_client.get(&client).copied() {
            self.free(port);
        }
    }

    /// The driver bound the relay socket for `port`. From now on the allocation there may be
    /// reached as a peer by the other allocations of this relay, even when the peer policy
    /// refuses this relay's own address: a datagram sent to it lands in our socket, not in
    /// another program's.
    pub fn handle_allocation_bound(&mut self, port: AllocationPort) {
        if let Some(allocation) = self.allocations.get(&port) {
            self.ledger
                .mark_bound(port.0, AddressFamily::of(allocation.relayed));
        }
    }

    /// The driver could not bind the relay socket for `port`, usually because another
    /// program holds it. The allocation moves to another port, up to
    /// [`MAX_BIND_ATTEMPTS`] times, and then fails with 508 (RFC 8656, section 7.2).
    pub fn handle_allocation_failed(&mut self, port: AllocationPort, now: Instant) {
        let Some(mut allocation) = self.allocations.remove(&port) else {
            return;
        };
        self.by_client.remove(&allocation.client);
        self.ledger.release_port(port.0);
        allocation.bind_attempts += 1;
        let retry =
            if allocation.reservation.is_none() && allocation.bind_attempts < MAX_BIND_ATTEMPTS {
                self.pick_port(port.0.is_multiple_of(2) && allocation.even, None)
            } else {
                None
            };
        let Some(new_port) = retry else {
            self.ledger.release(allocation.subject());
            self.stats.allocations_freed += 1;
            let mut builder = MessageBuilder::new(
                Method::Allocate,
                Class::Error,
                allocation.allocate_transaction,
            );
            builder.add_error(508, "Insufficient Capacity");
            let payload = finish_with(builder, allocation.fingerprint, Some(allocation.key));
            self.commands.push_back(Command::SendToClient {
                to: allocation.client,
                payload,
            });
            return;
        };
        allocation.relayed.set_port(new_port.0);
        let on_success = self.allocate_success(&allocation, now);
        let client = allocation.client;
        let family = AddressFamily::of(allocation.relayed);
        self.allocations.insert(new_port, allocation);
        self.by_client.insert(client, new_port);
        self.commands.push_back(Command::CreateAllocation {
            port: new_port,
            family,
            client,
            on_success,
        });
    }

    /// Expires allocations, permissions and channel bindings.
    pub fn handle_timeout(&mut self, now: Instant) {
        if now < self.next_sweep {
            return;
        }
        self.next_sweep = now + SWEEP_INTERVAL;
        self.ledger.expire_reservations(now);
        let expired: Vec<AllocationPort> = self
            .allocations
            .iter()
            .filter(|(_, a)| a.expires_at <= now)
            .map(|(port, _)| *port)
            .collect();
        for port in expired {
            self.free(port);
        }
        for allocation in self.allocations.values_mut() {
            allocation.permissions.retain(|p| p.expires_at > now);
            allocation.channels.retain(|c| c.expires_at > now);
        }
    }

    /// When [`Server::handle_timeout`] next has work to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        Some(self.next_sweep)
    }

    pub fn poll_command(&mut self) -> Option<Command> {
        self.commands.pop_front()
    }

    /// Counters since the previous call.
    pub fn take_stats(&mut self) -> Stats {
        std::mem::take(&mut self.stats)
    }

    pub fn allocation_count(&self) -> usize {
        self.allocations.len()
    }

    fn drop_packet(&mut self, reason: DropReason) {
        let index = DropReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        self.stats.drops[index] += 1;
    }

    fn unix_now(&self, now: Instant) -> u64 {
        self.epoch_unix + now.saturating_duration_since(self.epoch).as_secs()
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64*: the values need to be unpredictable enough to spread ports and avoid
        // transaction id collisions, not to be secret.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn random_transaction(&mut self) -> [u8; 12] {
        let a = self.next_random().to_be_bytes();
        let b = self.next_random().to_be_bytes();
        let mut tid = [0u8; 12];
        tid[..8].copy_from_slice(&a);
        tid[8..].copy_from_slice(&b[..4]);
        tid
    }

    fn handle_channel_data<'a>(
        &mut self,
        from: ClientSocket,
        bytes: &'a [u8],
        now: Instant,
    ) -> Option<Forward<'a>> {
        let Ok(data) = ChannelData::parse(bytes) else {
            self.drop_packet(DropReason::Malformed);
            return None;
        };
        let Some(port) = self.by_client.get(&from).copied() else {
            self.drop_packet(DropReason::NoAllocation);
            return None;
        };
        let Some(allocation) = self.allocations.get_mut(&port) else {
            self.drop_packet(DropReason::NoAllocation);
            return None;
        };
        if allocation.expires_at <= now {
            self.drop_packet(DropReason::NoAllocation);
            return None;
        }
        let Some((peer, own_allocation)) = allocation
            .channels
            .iter()
            .find(|c| c.number == data.channel && c.expires_at > now)
            .map(|c| (c.peer, c.own_allocation))
        else {
            self.drop_packet(DropReason::NoChannel);
            return None;
        };
        // Channels to ordinary peers pay one test of a flag they already share a cache line
        // with; only channels to another allocation of this relay look it up again.
        if own_allocation && !is_own_relayed(&self.config, &self.ledger, peer.0) {
            self.drop_packet(DropReason::Forbidden);
            return None;
        }
        if !allocation.allow_bytes(data.payload.len(), now) {
            self.drop_packet(DropReason::Bandwidth);
            return None;
        }
        self.stats.client_to_peer_packets += 1;
        self.stats.client_to_peer_bytes += data.payload.len() as u64;
        Some(Forward {
            port,
            peer,
            payload: data.payload,
        })
    }

    fn handle_stun<'a>(
        &mut self,
        from: ClientSocket,
        message: &Message<'a>,
        now: Instant,
    ) -> Option<Forward<'a>> {
        match (message.class(), message.method()) {
            (Class::Request, Method::Binding) => {
                self.handle_binding(from, message);
                None
            }
            (Class::Indication, Method::Send) => self.handle_send(from, message, now),
            (Class::Indication, _) => None,
            (Class::Request, Method::Allocate)
            | (Class::Request, Method::Refresh)
            | (Class::Request, Method::CreatePermission)
            | (Class::Request, Method::ChannelBind) => {
                self.handle_authenticated_request(from, message, now);
                None
            }
            (Class::Request, _) => {
                // An unknown method in a request earns a 400 (RFC 8489, section 6.3.1).
                self.respond_error(from, message, 400, "Bad Request", None);
                None
            }
            _ => {
                self.drop_packet(DropReason::Unexpected);
                None
            }
        }
    }

    fn handle_binding(&mut self, from: ClientSocket, message: &Message<'_>) {
        let unknown = message.unknown_required();
        if !unknown.is_empty() {
            self.respond_unknown(from, message, &unknown, None);
            return;
        }
        let mut builder =
            MessageBuilder::new(Method::Binding, Class::Success, message.transaction_id());
        builder.add_xor_address(attr::XOR_MAPPED_ADDRESS, from.addr);
        self.send(from, message, builder, None);
    }

    fn handle_send<'a>(
        &mut self,
        from: ClientSocket,
        message: &Message<'a>,
        now: Instant,
    ) -> Option<Forward<'a>> {
        let Some(port) = self.by_client.get(&from).copied() else {
            self.drop_packet(DropReason::NoAllocation);
            return None;
        };
        let (Some(peer), Some(payload)) = (
            message.get_xor_address(attr::XOR_PEER_ADDRESS),
            message.get(attr::DATA),
        ) else {
            self.drop_packet(DropReason::Malformed);
            return None;
        };
        let allocation = self.allocations.get_mut(&port)?;
        if allocation.expires_at <= now {
            self.drop_packet(DropReason::NoAllocation);
            return None;
        }
        let Some(permission) = allocation.permission(peer.ip(), now) else {
            // Send indications without a permission are silently discarded
            // (RFC 8656, section 11.2).
            self.drop_packet(DropReason::NoPermission);
            return None;
        };
        // A permission covers every port of its address (RFC 8656, section 9), but on an
        // address the policy refuses only the ports of this relay's allocations may be reached.
        if permission.own_allocations_only && !is_own_relayed(&self.config, &self.ledger, peer) {
            self.drop_packet(DropReason::Forbidden);
            return None;
        }
        if !allocation.allow_bytes(payload.len(), now) {
            self.drop_packet(DropReason::Bandwidth);
            return None;
        }
        self.stats.client_to_peer_packets += 1;
        self.stats.client_to_peer_bytes += payload.len() as u64;
        Some(Forward {
            port,
            peer: PeerSocket(peer),
            payload,
        })
    }

    fn handle_authenticated_request(
        &mut self,
        from: ClientSocket,
        message: &Message<'_>,
        now: Instant,
    ) {
        let Auth::Ok {
            username,
            subject_at,
            key,
        } = self.authenticate(from, message, now)
        else {
            return;
        };
        // Unknown comprehension-required attributes are checked once the credentials are,
        // so the 420 can carry MESSAGE-INTEGRITY (RFC 8489, section 6.3.1).
        let unknown = message.unknown_required();
        if !unknown.is_empty() {
            self.respond_unknown(from, message, &unknown, Some(key));
            return;
        }
        if message.method() != Method::Allocate {
            let Some(port) = self.by_client.get(&from).copied() else {
                self.respond_error(from, message, 437, "Allocation Mismatch", Some(key));
                return;
            };
            if self
                .allocations
                .get(&port)
                .is_some_and(|a| *a.username != *username)
            {
                self.respond_error(from, message, 441, "Wrong Credentials", Some(key));
                return;
            }
            match message.method() {
                Method::Refresh => self.handle_refresh(from, message, port, key, now),
                Method::CreatePermission => {
                    self.handle_create_permission(from, message, port, key, now)
                }
                Method::ChannelBind => self.handle_channel_bind(from, message, port, key, now),
                _ => {}
            }
            return;
        }
        self.handle_allocate(from, message, username, subject_at, key, now);
    }

    fn authenticate(&mut self, from: ClientSocket, message: &Message<'_>, now: Instant) -> Auth {
        if !message.has_integrity() {
            self.respond_challenge(from, message, 401, "Unauthorized", now);
            return Auth::Respond;
        }
        let (Some(username), Some(realm), Some(nonce)) = (
            message.get_str(attr::USERNAME),
            message.get_str(attr::REALM),
            message.get_str(attr::NONCE),
        ) else {
            self.respond_error(from, message, 400, "Bad Request", None);
            return Auth::Respond;
        };
        if realm != self.config.realm {
            self.stats.auth_failures += 1;
            self.respond_challenge(from, message, 401, "Unauthorized", now);
            return Auth::Respond;
        }
        if !self.nonce_is_valid(nonce, now) {
            self.respond_challenge(from, message, 438, "Stale Nonce", now);
            return Auth::Respond;
        }
        let Some(rest) = RestUsername::parse(username) else {
            self.stats.auth_failures += 1;
            self.respond_challenge(from, message, 401, "Unauthorized", now);
            return Auth::Respond;
        };
        let unix_now = self.unix_now(now);
        // A pre-call check credential valid for longer than such credentials may be was not
        // issued for the check, and the ledger would have to remember it for that long.
        if rest.expiry_unix < unix_now
            || (rest.is_precheck() && rest.expiry_unix > unix_now + PRECHECK_MAX_TTL.as_secs())
        {
            self.stats.auth_failures += 1;
            self.respond_challenge(from, message, 401, "Unauthorized", now);
            return Auth::Respond;
        }
        let password = password_for(&self.config.secret, username);
        let key = long_term_key(username, &self.config.realm, &password);
        if !message.verify_integrity(&key) {
            self.stats.auth_failures += 1;
            self.respond_challenge(from, message, 401, "Unauthorized", now);
            return Auth::Respond;
        }
        // The subject is the tail of the username, so its offset is all there is to keep.
        let subject_at = u16::try_from(username.len() - rest.subject.len()).unwrap_or(u16::MAX);
        Auth::Ok {
            username: username.into(),
            subject_at,
            key,
        }
    }

    fn handle_allocate(
        &mut self,
        from: ClientSocket,
        message: &Message<'_>,
        username: Box<str>,
        subject_at: u16,
        key: [u8; 16],
        now: Instant,
    ) {
        let subject = username.get(usize::from(subject_at)..).unwrap_or_default();
        if let Some(port) = self.by_client.get(&from).copied() {
            let retransmission = self
                .allocations
                .get(&port)
                .is_some_and(|a| a.allocate_transaction == message.transaction_id());
            if retransmission {
                // A retransmitted Allocate gets the original answer (RFC 8656, section 7.2).
                let response = self.allocate_success(&self.allocations[&port], now);
                self.commands.push_back(Command::SendToClient {
                    to: from,
                    payload: response,
                });
            } else {
                self.respond_error(from, message, 437, "Allocation Mismatch", Some(key));
            }
            return;
        }
        match message.get(attr::REQUESTED_TRANSPORT) {
            None => return self.respond_error(from, message, 400, "Bad Request", Some(key)),
            Some(value) if value.first() != Some(&PROTOCOL_UDP) => {
                return self.respond_error(
                    from,
                    message,
                    442,
                    "Unsupported Transport Protocol",
                    Some(key),
                )
            }
            Some(_) => {}
        }
        let token = message.get(attr::RESERVATION_TOKEN);
        let even_port = message.get(attr::EVEN_PORT);
        if token.is_some()
            && (even_port.is_some() || message.get(attr::REQUESTED_ADDRESS_FAMILY).is_some())
        {
            // RESERVATION-TOKEN excludes EVEN-PORT and REQUESTED-ADDRESS-FAMILY
            // (RFC 8656, section 7.2, steps 4 and 6).
            return self.respond_error(from, message, 400, "Bad Request", Some(key));
        }
        let requested = message.get(attr::REQUESTED_ADDRESS_FAMILY);
        if requested.is_some() && message.get(attr::ADDITIONAL_ADDRESS_FAMILY).is_some() {
            return self.respond_error(from, message, 400, "Bad Request", Some(key));
        }
        let ip = match requested.map(|v| v.first().copied()) {
            None | Some(Some(0x01)) => self.config.relay_ipv4.map(IpAddr::V4),
            Some(Some(0x02)) => self.config.relay_ipv6.map(IpAddr::V6),
            Some(_) => None,
        };
        let Some(ip) = ip else {
            return self.respond_error(
                from,
                message,
                440,
                "Address Family not Supported",
                Some(key),
            );
        };
        if !self.ledger.try_reserve(subject) {
            return self.respond_error(from, message, 486, "Allocation Quota Reached", Some(key));
        }
        // A pre-call check credential opens one allocation in its life, not one at a time.
        let precheck = RestUsername::parse(&username).filter(RestUsername::is_precheck);
        if let Some(rest) = &precheck {
            if !self
                .ledger
                .spend_once(&username, rest.expiry_unix, self.unix_now(now))
            {
                self.ledger.release(subject);
                return self.respond_error(
                    from,
                    message,
                    486,
                    "Allocation Quota Reached",
                    Some(key),
                );
            }
        }
        let mut reservation = None;
        let port = match (token, even_port) {
            (Some(token), _) => self.ledger.redeem(token, now).map(AllocationPort),
            (None, Some(flags)) => {
                // The R bit asks for the next port to be held for a second allocation.
                if flags.first().is_some_and(|f| f & 0x80 != 0) {
                    let token = self.next_random().to_be_bytes();
                    reservation = Some(token);
                    self.pick_port(true, Some((token, now + RESERVATION_LIFETIME)))
                } else {
                    self.pick_port(true, None)
                }
            }
            (None, None) => self.pick_port(false, None),
        };
        let Some(port) = port else {
            self.ledger.release(subject);
            if precheck.is_some() {
                self.ledger.unspend(&username);
            }
            return self.respond_error(from, message, 508, "Insufficient Capacity", Some(key));
        };
        let lifetime = granted_lifetime(message.get_u32(attr::LIFETIME));
        let allocation = Box::new(Allocation {
            client: from,
            relayed: SocketAddr::new(ip, port.0),
            username,
            subject_at,
            key,
            allocate_transaction: message.transaction_id(),
            fingerprint: message.has_fingerprint(),
            even: even_port.is_some(),
            bind_attempts: 0,
            reservation,
            expires_at: now + lifetime,
            permissions: Vec::new(),
            channels: Vec::new(),
            bucket: self
                .config
                .bandwidth_bytes_per_sec
                .map(|rate| TokenBucket::new(rate, now)),
        });
        let on_success = self.allocate_success(&allocation, now);
        self.allocations.insert(port, allocation);
        self.by_client.insert(from, port);
        self.stats.allocations_created += 1;
        self.commands.push_back(Command::CreateAllocation {
            port,
            family: AddressFamily::of(SocketAddr::new(ip, port.0)),
            client: from,
            on_success,
        });
    }

    fn allocate_success(&self, allocation: &Allocation, now: Instant) -> Vec<u8> {
        let remaining = allocation
            .expires_at
            .saturating_duration_since(now)
            .as_secs() as u32;
        let mut builder = MessageBuilder::new(
            Method::Allocate,
            Class::Success,
            allocation.allocate_transaction,
        );
        builder
            .add_xor_address(attr::XOR_RELAYED_ADDRESS, allocation.relayed)
            .add_xor_address(attr::XOR_MAPPED_ADDRESS, allocation.client.addr)
            .add_u32(attr::LIFETIME, remaining);
        if let Some(token) = allocation.reservation {
            builder.add(attr::RESERVATION_TOKEN, &token);
        }
        finish_with(builder, allocation.fingerprint, Some(allocation.key))
    }

    fn handle_refresh(
        &mut self,
        from: ClientSocket,
        message: &Message<'_>,
        port: AllocationPort,
        key: [u8; 16],
        now: Instant,
    ) {
        let requested = message.get_u32(attr::LIFETIME);
        let granted = if requested == Some(0) {
            self.free(port);
            0
        } else {
            let lifetime = granted_lifetime(requested);
            if let Some(allocation) = self.allocations.get_mut(&port) {
                allocation.expires_at = now + lifetime;
            }
            lifetime.as_secs() as u32
        };
        let mut builder =
            MessageBuilder::new(Method::Refresh, Class::Success, message.transaction_id());
        builder.add_u32(attr::LIFETIME, granted);
        self.send(from, message, builder, Some(key));
    }

    /// Validates every XOR-PEER-ADDRESS before installing any, as the RFC requires
    /// (RFC 8656, section 10.2).
    fn handle_create_permission(
        &mut self,
        from: ClientSocket,
        message: &Message<'_>,
        port: AllocationPort,
        key: [u8; 16],
        now: Instant,
    ) {
        let Some(family) = self
            .allocations
            .get(&port)
            .map(|a| AddressFamily::of(a.relayed))
        else {
            return;
        };
        let mut peers: Vec<(IpAddr, Admission)> = Vec::new();
        for peer in message.xor_addresses(attr::XOR_PEER_ADDRESS) {
            let Some(peer) = peer else {
                return self.respond_error(from, message, 400, "Bad Request", Some(key));
            };
            match self.check_peer(peer, family) {
                Ok(admission) => peers.push((peer.ip(), admission)),
                Err((code, reason)) => {
                    return self.respond_error(from, message, code, reason, Some(key))
                }
            }
        }
        if peers.is_empty() {
            return self.respond_error(from, message, 400, "Bad Request", Some(key));
        }
        if let Some(allocation) = self.allocations.get_mut(&port) {
            for (ip, admission) in peers {
                allocation.add_permission(ip, admission, now);
            }
        }
        let builder = MessageBuilder::new(
            Method::CreatePermission,
            Class::Success,
            message.transaction_id(),
        );
        self.send(from, message, builder, Some(key));
    }

    fn handle_channel_bind(
        &mut self,
        from: ClientSocket,
        message: &Message<'_>,
        port: AllocationPort,
        key: [u8; 16],
        now: Instant,
    ) {
        let Some(family) = self
            .allocations
            .get(&port)
            .map(|a| AddressFamily::of(a.relayed))
        else {
            return;
        };
        let number = message
            .get(attr::CHANNEL_NUMBER)
            .filter(|v| v.len() == 4)
            .map(|v| u16::from_be_bytes([v[0], v[1]]));
        let (Some(number), Some(peer)) = (number, message.get_xor_address(attr::XOR_PEER_ADDRESS))
        else {
            return self.respond_error(from, message, 400, "Bad Request", Some(key));
        };
        if !(CHANNEL_MIN..=CHANNEL_MAX).contains(&number) {
            return self.respond_error(from, message, 400, "Bad Request", Some(key));
        }
        let admission = match self.check_peer(peer, family) {
            Ok(admission) => admission,
            Err((code, reason)) => {
                return self.respond_error(from, message, code, reason, Some(key))
            }
        };
        let own_allocation = admission == Admission::OwnAllocation;
        let peer = PeerSocket(peer);
        let Some(allocation) = self.allocations.get_mut(&port) else {
            return;
        };
        // A channel is bound to one peer and a peer to one channel while the binding lives
        // (RFC 8656, section 12.2). Binding the same channel to the same peer again refreshes
        // it, which also makes a retransmitted request succeed. An expired binding no longer
        // counts, so its channel and its peer may be bound afresh; waiting five minutes before
        // doing so is the client's duty (RFC 8656, section 12).
        let live = || allocation.channels.iter().filter(|c| c.expires_at > now);
        let reason = if live().any(|c| c.number == number && c.peer != peer) {
            Some("Channel Bound To Another Peer")
        } else if live().any(|c| c.peer == peer && c.number != number) {
            Some("Peer Bound To Another Channel")
        } else {
            None
        };
        if let Some(reason) = reason {
            return self.respond_error(from, message, 400, reason, Some(key));
        }
        match allocation.channels.iter_mut().find(|c| c.number == number) {
            Some(channel) => {
                channel.peer = peer;
                channel.expires_at = now + CHANNEL_LIFETIME;
                channel.own_allocation = own_allocation;
            }
            None => {
                allocation.channels.reserve_exact(1);
                allocation.channels.push(Channel {
                    number,
                    peer,
                    expires_at: now + CHANNEL_LIFETIME,
                    own_allocation,
                });
            }
        }
        allocation.add_permission(peer.0.ip(), admission, now);
        let builder = MessageBuilder::new(
            Method::ChannelBind,
            Class::Success,
            message.transaction_id(),
        );
        self.send(from, message, builder, Some(key));
    }

    /// Whether a client whose allocation is of `family` may install a permission or a channel
    /// for `peer`: when the policy permits its address, or when it is the relayed transport
    /// address of an allocation of this relay. Only the port is judged for the latter, so the
    /// data path checks it again for every datagram (see [`Permission::own_allocations_only`]).
    fn check_peer(
        &self,
        peer: SocketAddr,
        family: AddressFamily,
    ) -> Result<Admission, (u16, &'static str)> {
        // The policy goes first, so a refused address is refused the same way whatever the
        // allocation's family.
        let admission = if self.config.policy.permits(peer.ip()) {
            Admission::Policy
        } else if is_own_relayed(&self.config, &self.ledger, peer) {
            Admission::OwnAllocation
        } else {
            return Err((403, "Forbidden"));
        };
        if AddressFamily::of(peer) != family {
            return Err((443, "Peer Address Family Mismatch"));
        }
        Ok(admission)
    }

    fn pick_port(
        &mut self,
        even: bool,
        reserve_next: Option<([u8; 8], Instant)>,
    ) -> Option<AllocationPort> {
        let start = u32::from(*self.config.ports.start());
        let size = u32::from(*self.config.ports.end()).checked_sub(start)? + 1;
        let offset = (self.next_random() % u64::from(size)) as u32;
        let candidates = (0..size)
            .map(move |i| (start + (offset + i) % size) as u16)
            .filter(move |port| !even || port % 2 == 0);
        self.ledger
            .claim_port(candidates, reserve_next)
            .map(AllocationPort)
    }

    fn free(&mut self, port: AllocationPort) {
        if let Some(allocation) = self.allocations.remove(&port) {
            self.by_client.remove(&allocation.client);
            self.ledger.release(allocation.subject());
            self.ledger.release_port(port.0);
            self.stats.allocations_freed += 1;
            self.commands.push_back(Command::FreeAllocation { port });
        }
    }

    fn make_nonce(&self, now: Instant) -> String {
        let expiry = self.unix_now(now) + self.config.nonce_lifetime.as_secs();
        format!("{expiry:016x}{}", hex(&self.nonce_tag(expiry)))
    }

    fn nonce_tag(&self, expiry: u64) -> [u8; 8] {
        let mut mac = Hmac::<Sha1>::new_from_slice(&self.config.nonce_key)
            .expect("HMAC accepts keys of any length");
        mac.update(&expiry.to_be_bytes());
        let full = mac.finalize().into_bytes();
        let mut tag = [0u8; 8];
        tag.copy_from_slice(&full[..8]);
        tag
    }

    /// Nonces are stateless: an expiry time and a MAC over it, so any worker can check them
    /// and none has to remember them.
    fn nonce_is_valid(&self, nonce: &str, now: Instant) -> bool {
        if nonce.len() != 32 || !nonce.is_ascii() {
            return false;
        }
        let Ok(expiry) = u64::from_str_radix(&nonce[..16], 16) else {
            return false;
        };
        hex(&self.nonce_tag(expiry)) == nonce[16..] && expiry > self.unix_now(now)
    }

    fn respond_challenge(
        &mut self,
        to: ClientSocket,
        message: &Message<'_>,
        code: u16,
        reason: &str,
        now: Instant,
    ) {
        let nonce = self.make_nonce(now);
        let mut builder =
            MessageBuilder::new(message.method(), Class::Error, message.transaction_id());
        builder
            .add_error(code, reason)
            .add(attr::REALM, self.config.realm.as_bytes())
            .add(attr::NONCE, nonce.as_bytes());
        self.send(to, message, builder, None);
    }

    fn respond_unknown(
        &mut self,
        to: ClientSocket,
        message: &Message<'_>,
        unknown: &[u16],
        key: Option<[u8; 16]>,
    ) {
        let mut builder =
            MessageBuilder::new(message.method(), Class::Error, message.transaction_id());
        let list: Vec<u8> = unknown.iter().flat_map(|kind| kind.to_be_bytes()).collect();
        builder
            .add_error(420, "Unknown Attribute")
            .add(attr::UNKNOWN_ATTRIBUTES, &list);
        self.send(to, message, builder, key);
    }

    fn respond_error(
        &mut self,
        to: ClientSocket,
        message: &Message<'_>,
        code: u16,
        reason: &str,
        key: Option<[u8; 16]>,
    ) {
        let payload = self.error_bytes(message, code, reason, key);
        self.commands
            .push_back(Command::SendToClient { to, payload });
    }

    fn error_bytes(
        &self,
        message: &Message<'_>,
        code: u16,
        reason: &str,
        key: Option<[u8; 16]>,
    ) -> Vec<u8> {
        let mut builder =
            MessageBuilder::new(message.method(), Class::Error, message.transaction_id());
        builder.add_error(code, reason);
        finish(builder, message, key)
    }

    fn send(
        &mut self,
        to: ClientSocket,
        message: &Message<'_>,
        builder: MessageBuilder,
        key: Option<[u8; 16]>,
    ) {
        let payload = finish(builder, message, key);
        self.commands
            .push_back(Command::SendToClient { to, payload });
    }
}

/// Whether `addr` is the relayed transport address of an allocation of this relay, on any
/// worker, whose socket is bound: this relay's advertised address of that family, on a port
/// where such an allocation lives now. Ports that are merely claimed (reserved with EVEN-PORT,
/// or waiting for their bind) do not count, since another program may hold them.
fn is_own_relayed(config: &ServerConfig, ledger: &AllocationLedger, addr: SocketAddr) -> bool {
    match addr {
        SocketAddr::V4(v4) => {
            config.relay_ipv4 == Some(*v4.ip()) && ledger.is_bound(v4.port(), AddressFamily::V4)
        }
        SocketAddr::V6(v6) => {
            config.relay_ipv6 == Some(*v6.ip()) && ledger.is_bound(v6.port(), AddressFamily::V6)
        }
    }
}

/// Adds MESSAGE-INTEGRITY when the request was authenticated, and FINGERPRINT when the request
/// carried one, as clients that use FINGERPRINT expect it back.
fn finish(builder: MessageBuilder, request: &Message<'_>, key: Option<[u8; 16]>) -> Vec<u8> {
    finish_with(builder, request.has_fingerprint(), key)
}

fn finish_with(mut builder: MessageBuilder, fingerprint: bool, key: Option<[u8; 16]>) -> Vec<u8> {
    if let Some(key) = key {
        builder.add_integrity(&key);
    }
    if fingerprint {
        builder.add_fingerprint();
    }
    builder.finish()
}

/// The lifetime granted for a requested LIFETIME (RFC 8656, sections 7.2 and 8).
fn granted_lifetime(requested: Option<u32>) -> Duration {
    match requested {
        Some(seconds) => Duration::from_secs(u64::from(seconds))
            .clamp(DEFAULT_ALLOCATION_LIFETIME, MAX_ALLOCATION_LIFETIME),
        None => DEFAULT_ALLOCATION_LIFETIME,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials;
    use proptest::prelude::*;

    const SECRET: &str = "core-secret";
    const REALM: &str = "test";
    const EPOCH_UNIX: u64 = 1_800_000_000;

    fn client() -> ClientSocket {
        ClientSocket::new(Transport::Udp, "192.0.2.10:5000".parse().unwrap())
    }

    fn peer() -> PeerSocket {
        PeerSocket::new("198.51.100.7:6000".parse().unwrap())
    }

    /// A relay on a public address. Its tests use the documentation ranges (RFC 5737) for
    /// addresses, which the peer policy refuses, so its allow-list opens TEST-NET-2 (the
    /// peers) and TEST-NET-3 (the relay itself) as an operator would open a range.
    fn config() -> ServerConfig {
        ServerConfig {
            realm: REALM.into(),
            secret: SECRET.into(),
            nonce_key: [9; 32],
            nonce_lifetime: Duration::from_secs(600),
            relay_ipv4: Some(Ipv4Addr::new(203, 0, 113, 1)),
            relay_ipv6: None,
            ports: 50000..=50099,
            bandwidth_bytes_per_sec: None,
            policy: PeerPolicy::new(vec![
                "198.51.100.0/24".parse().unwrap(),
                "203.0.113.0/24".parse().unwrap(),
            ]),
            rng_seed: 7,
        }
    }

    /// A relay whose relayed addresses are loopback, which the peer policy refuses, as in the
    /// one-machine default, with an empty allow-list.
    fn loopback_config() -> ServerConfig {
        ServerConfig {
            relay_ipv4: Some(Ipv4Addr::LOCALHOST),
            relay_ipv6: Some(Ipv6Addr::LOCALHOST),
            policy: PeerPolicy::default(),
            ..config()
        }
    }

    /// Drives one server through requests signed with valid credentials.
    struct Harness {
        server: Server,
        now: Instant,
        username: String,
        key: [u8; 16],
        next_tid: u8,
    }

    impl Harness {
        fn new() -> Self {
            Self::with_config(config())
        }

        fn with_config(config: ServerConfig) -> Self {
            Self::with(config, Arc::new(AllocationLedger::new(10, 100)), "alice")
        }

        fn with_ledger(ledger: Arc<AllocationLedger>, subject: &str) -> Self {
            Self::with(config(), ledger, subject)
        }

        fn with(config: ServerConfig, ledger: Arc<AllocationLedger>, subject: &str) -> Self {
            let now = Instant::now();
            let wall = std::time::UNIX_EPOCH + Duration::from_secs(EPOCH_UNIX);
            let (username, password) =
                credentials::issue(SECRET, subject, Duration::from_secs(86_400), wall);
            let key = credentials::long_term_key(&username, REALM, &password);
            Self {
                server: Server::new(config, ledger, now, EPOCH_UNIX),
                now,
                username,
                key,
                next_tid: 1,
            }
        }

        /// A server whose requests carry the pre-call check credential `id`, valid `ttl` from
        /// the server's start; `forged_ttl` issues it as an ordinary credential would be, past
        /// the cut that [`credentials::issue_precheck`] makes.
        fn precheck(ledger: Arc<AllocationLedger>, id: &str, ttl: Duration) -> Self {
            let mut h = Self::with(config(), ledger, "unused");
            let wall = std::time::UNIX_EPOCH + Duration::from_secs(EPOCH_UNIX);
            let (username, password) = credentials::issue_precheck(SECRET, id, ttl, wall);
            h.key = credentials::long_term_key(&username, REALM, &password);
            h.username = username;
            h
        }

        fn forged_precheck(id: &str, ttl: Duration) -> Self {
            let mut h = Self::new();
            let wall = std::time::UNIX_EPOCH + Duration::from_secs(EPOCH_UNIX);
            let subject = format!("{}{id}", credentials::PRECHECK_PREFIX);
            let (username, password) = credentials::issue(SECRET, &subject, ttl, wall);
            h.key = credentials::long_term_key(&username, REALM, &password);
            h.username = username;
            h
        }

        /// The response code of an Allocate from `from`.
        fn allocate_code(&mut self, from: ClientSocket) -> u16 {
            let request = self.request(from, Method::Allocate, |b| {
                b.add(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
            });
            let commands = self.call(from, &request);
            match &commands[..] {
                [Command::CreateAllocation { port, .. }] => {
                    self.server.handle_allocation_bound(*port);
                    200
                }
                other => response_code(other),
            }
        }

        fn request(
            &mut self,
            _from: ClientSocket,
            method: Method,
            attrs: impl FnOnce(&mut MessageBuilder),
        ) -> Vec<u8> {
            self.next_tid += 1;
            let mut builder = MessageBuilder::new(method, Class::Request, [self.next_tid; 12]);
            attrs(&mut builder);
            let nonce = self.server.make_nonce(self.now);
            builder
                .add(attr::USERNAME, self.username.as_bytes())
                .add(attr::REALM, REALM.as_bytes())
                .add(attr::NONCE, nonce.as_bytes())
                .add_integrity(&self.key);
            builder.finish()
        }

        /// Sends a request and returns the single response it produced.
        fn call(&mut self, from: ClientSocket, bytes: &[u8]) -> Vec<Command> {
            assert_eq!(self.server.handle_client_input(from, bytes, self.now), None);
            std::iter::from_fn(|| self.server.poll_command()).collect()
        }

        /// Allocates, and binds the relay socket as the driver would.
        fn allocate(&mut self, from: ClientSocket, lifetime: Option<u32>) -> AllocationPort {
            let (port, _) = self.allocate_unbound(from, |b| {
                if let Some(lifetime) = lifetime {
                    b.add_u32(attr::LIFETIME, lifetime);
                }
            });
            self.server.handle_allocation_bound(port);
            port
        }

        /// Allocates with extra attributes and returns the port and the success response,
        /// leaving the driver's bind to the test.
        fn allocate_unbound(
            &mut self,
            from: ClientSocket,
            attrs: impl FnOnce(&mut MessageBuilder),
        ) -> (AllocationPort, Vec<u8>) {
            let request = self.request(from, Method::Allocate, |b| {
                b.add(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
                attrs(b);
            });
            match &self.call(from, &request)[..] {
                [Command::CreateAllocation {
                    port,
                    client,
                    on_success,
                    ..
                }] => {
                    assert_eq!(*client, from);
                    let response = Message::parse(on_success).unwrap();
                    assert_eq!(response.class(), Class::Success);
                    assert!(response.verify_integrity(&self.key));
                    (*port, on_success.clone())
                }
                other => panic!("unexpected {other:?}"),
            }
        }

        fn send_indication(
            &mut self,
            from: ClientSocket,
            peer: SocketAddr,
            payload: &[u8],
        ) -> Option<(AllocationPort, PeerSocket)> {
            let mut send = MessageBuilder::new(Method::Send, Class::Indication, [3; 12]);
            send.add_xor_address(attr::XOR_PEER_ADDRESS, peer)
                .add(attr::DATA, payload);
            let send = send.finish();
            let forward = self.server.handle_client_input(from, &send, self.now);
            if let Some(forward) = forward {
                assert_eq!(forward.payload, payload);
            }
            forward.map(|f| (f.port, f.peer))
        }

        fn channel_data(
            &mut self,
            from: ClientSocket,
            channel: u16,
            payload: &[u8],
        ) -> Option<(AllocationPort, PeerSocket)> {
            let bytes = channel_data(channel, payload);
            let forward = self.server.handle_client_input(from, &bytes, self.now);
            if let Some(forward) = forward {
                assert_eq!(forward.payload, payload);
            }
            forward.map(|f| (f.port, f.peer))
        }

        /// The drops counted since the last call, by reason.
        fn take_drops(&mut self) -> Vec<(DropReason, u64)> {
            let drops = self.server.take_stats().drops;
            DropReason::ALL
                .into_iter()
                .zip(drops)
                .filter(|(_, count)| *count > 0)
                .collect()
        }

        fn create_permission(&mut self, from: ClientSocket, peer: SocketAddr) -> u16 {
            let request = self.request(from, Method::CreatePermission, |b| {
                b.add_xor_address(attr::XOR_PEER_ADDRESS, peer);
            });
            response_code(&self.call(from, &request))
        }

        fn channel_bind(&mut self, from: ClientSocket, channel: u16, peer: SocketAddr) -> u16 {
            let request = self.request(from, Method::ChannelBind, |b| {
                b.add_u32(attr::CHANNEL_NUMBER, u32::from(channel) << 16);
                b.add_xor_address(attr::XOR_PEER_ADDRESS, peer);
            });
            response_code(&self.call(from, &request))
        }

        fn peer_data(
            &mut self,
            port: AllocationPort,
            from: PeerSocket,
            payload: &[u8],
        ) -> Option<(ClientSocket, Vec<u8>)> {
            let mut buf = vec![0u8; PEER_HEADROOM + payload.len() + PEER_TAILROOM];
            buf[PEER_HEADROOM..PEER_HEADROOM + payload.len()].copy_from_slice(payload);
            self.server
                .handle_peer_traffic(port, from, &mut buf, payload.len(), self.now)
                .map(|(client, bytes)| (client, bytes.to_vec()))
        }
    }

    /// 200 for a success response, the error code otherwise.
    fn response_code(commands: &[Command]) -> u16 {
        match commands {
            [Command::SendToClient { payload, .. }] => {
                let message = Message::parse(payload).unwrap();
                match message.class() {
                    Class::Success => 200,
                    Class::Error => {
                        let value = message.get(attr::ERROR_CODE).unwrap();
                        u16::from(value[2]) * 100 + u16::from(value[3])
                    }
                    other => panic!("unexpected class {other:?}"),
                }
            }
            other => panic!("expected one response, got {other:?}"),
        }
    }

    fn channel_data(channel: u16, payload: &[u8]) -> Vec<u8> {
        let mut bytes = vec![0u8; 4];
        write_channel_data_header(&mut bytes, channel, payload.len() as u16);
        bytes.extend_from_slice(payload);
        bytes
    }

    #[test]
    fn allocate_without_credentials_is_challenged() {
        let mut h = Harness::new();
        let mut builder = MessageBuilder::new(Method::Allocate, Class::Request, [1; 12]);
        builder.add(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        let commands = h.call(client(), &builder.finish());
        assert_eq!(response_code(&commands), 401);
        let Command::SendToClient { payload, .. } = &commands[0] else {
            unreachable!()
        };
        let message = Message::parse(payload).unwrap();
        assert_eq!(message.get_str(attr::REALM), Some(REALM));
        assert!(h
            .server
            .nonce_is_valid(message.get_str(attr::NONCE).unwrap(), h.now));
    }

    #[test]
    fn stale_nonce_gets_438_and_a_fresh_nonce() {
        let mut h = Harness::new();
        let request = h.request(client(), Method::Allocate, |b| {
            b.add(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        });
        h.now += Duration::from_secs(601);
        assert_eq!(response_code(&h.call(client(), &request)), 438);
    }

    #[test]
    fn unknown_required_attribute_gets_420_listing_it() {
        let mut h = Harness::new();
        let request = h.request(client(), Method::Allocate, |b| {
            b.add(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
            b.add(0x0077, &[1, 2, 3, 4]);
        });
        let commands = h.call(client(), &request);
        assert_eq!(response_code(&commands), 420);
        let Command::SendToClient { payload, .. } = &commands[0] else {
            unreachable!()
        };
        assert_eq!(
            Message::parse(payload)
                .unwrap()
                .get(attr::UNKNOWN_ATTRIBUTES),
            Some(&[0x00, 0x77][..])
        );
    }

    #[test]
    fn dont_fragment_and_even_port_are_accepted() {
        let mut h = Harness::new();
        let request = h.request(client(), Method::Allocate, |b| {
            b.add(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
            b.add(attr::DONT_FRAGMENT, &[]);
            b.add(attr::EVEN_PORT, &[0]);
        });
        match &h.call(client(), &request)[..] {
            [Command::CreateAllocation { port, .. }] => assert_eq!(port.value() % 2, 0),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn requests_on_another_five_tuple_get_437() {
        let mut h = Harness::new();
        h.allocate(client(), None);
        let other = ClientSocket::new(Transport::Tcp, client().addr());
        assert_eq!(h.create_permission(other, peer().addr()), 437);
    }

    #[test]
    fn quota_per_user_gets_486() {
        let ledger = Arc::new(AllocationLedger::new(1, 100));
        let mut h = Harness::with_ledger(ledger, "bob");
        h.allocate(client(), None);
        let second = ClientSocket::new(Transport::Udp, "192.0.2.10:5001".parse().unwrap());
        let request = h.request(second, Method::Allocate, |b| {
            b.add(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        });
        assert_eq!(response_code(&h.call(second, &request)), 486);
    }

    #[test]
    fn a_precheck_credential_opens_one_allocation_in_its_life() {
        let ledger = Arc::new(AllocationLedger::new(10, 100));
        let mut h = Harness::precheck(ledger.clone(), "c1", Duration::from_secs(90));
        let second = ClientSocket::new(Transport::Udp, "192.0.2.10:5001".parse().unwrap());
        let over_tcp = ClientSocket::new(Transport::Tcp, "192.0.2.10:5002".parse().unwrap());
        assert_eq!(h.allocate_code(client()), 200);
        assert_eq!(h.allocate_code(second), 486, "a second one at once");
        assert_eq!(h.allocate_code(over_tcp), 486, "over another transport");

        // Freeing the allocation does not give the credential another.
        let request = h.request(client(), Method::Refresh, |b| {
            b.add_u32(attr::LIFETIME, 0);
        });
        let commands = h.call(client(), &request);
        assert!(matches!(commands[0], Command::FreeAllocation { .. }));
        assert_eq!(ledger.total(), 0);
        assert_eq!(
            h.allocate_code(second),
            486,
            "one after the first was freed"
        );
        assert_eq!(ledger.total(), 0, "a refused credential holds no quota");

        // Another precheck credential on the same relay has its own one.
        let mut other = Harness::precheck(ledger.clone(), "c2", Duration::from_secs(90));
        assert_eq!(other.allocate_code(second), 200);
        assert_eq!(other.allocate_code(client()), 486);

        // Ordinary credentials keep their quota of several.
        let mut ordinary = Harness::with_ledger(ledger, "resident-r1");
        assert_eq!(ordinary.allocate_code(client()), 200);
        assert_eq!(ordinary.allocate_code(over_tcp), 200);
    }

    #[test]
    fn a_precheck_credential_lives_briefly() {
        let ledger = Arc::new(AllocationLedger::new(10, 100));
        let mut h = Harness::precheck(ledger, "c1", Duration::from_secs(90));
        h.now += Duration::from_secs(91);
        assert_eq!(h.allocate_code(client()), 401, "expired");

        // Valid for longer than a precheck credential may be: not issued for the check.
        let mut long = Harness::forged_precheck("c2", PRECHECK_MAX_TTL + Duration::from_secs(1));
        assert_eq!(long.allocate_code(client()), 401);
        let mut longest = Harness::forged_precheck("c3", PRECHECK_MAX_TTL);
        assert_eq!(longest.allocate_code(client()), 200);
    }

    #[test]
    fn spent_precheck_credentials_are_forgotten_once_expired() {
        let ledger = AllocationLedger::new(10, 100);
        assert!(ledger.spend_once("100:precheck.a", 100, 50));
        assert!(!ledger.spend_once("100:precheck.a", 100, 100));
        assert!(ledger.spend_once("200:precheck.b", 200, 100));
        assert_eq!(ledger.lock().spent.len(), 2);
        // By 101 the first has expired, so authentication refuses it and it need not be kept.
        assert!(ledger.spend_once("300:precheck.c", 300, 101));
        assert_eq!(ledger.lock().spent.len(), 2);
        ledger.unspend("300:precheck.c");
        assert!(ledger.spend_once("300:precheck.c", 300, 101));
    }

    #[test]
    fn forbidden_peers_get_403() {
        // Also on a relay whose own address is loopback: port 1 is outside its port range, so
        // no allocation of its own can make 127.0.0.1:1 reachable.
        for config in [config(), loopback_config()] {
            let mut h = Harness::with_config(config);
            h.allocate(client(), None);
            for peer in [
                "127.0.0.1:1",
                "0.0.0.0:1",
                "10.0.0.1:1",
                "169.254.1.1:1",
                "[::ffff:127.0.0.1]:1",
            ] {
                assert_eq!(
                    h.create_permission(client(), peer.parse().unwrap()),
                    403,
                    "{peer}"
                );
                assert_eq!(
                    h.channel_bind(client(), 0x4000, peer.parse().unwrap()),
                    403,
                    "{peer}"
                );
            }
            // A globally reachable IPv6 peer is permitted, but not from an IPv4 allocation.
            assert_eq!(
                h.create_permission(client(), "[2a00:1450:4001:800::200e]:1".parse().unwrap()),
                443
            );
        }
    }

    /// Special-purpose ranges that are not globally reachable, which the policy used to let
    /// through, and IPv6 forms that carry them, are refused on every path into a permission;
    /// a Send indication to them finds none. The allow-list opens them again.
    #[test]
    fn special_purpose_peers_get_403_unless_allow_listed() {
        let refused = [
            "198.18.0.1:9",
            "198.19.255.254:9",
            "192.0.0.170:9",
            "192.0.2.1:9",
            "240.0.0.1:9",
            "[64:ff9b::c612:1]:9",
            "[2001:db8::1]:9",
            "[2002:c612:1::1]:9",
        ];
        let mut h = Harness::new();
        h.allocate(client(), None);
        for peer in refused {
            let peer: SocketAddr = peer.parse().unwrap();
            assert_eq!(h.create_permission(client(), peer), 403, "{peer}");
            assert_eq!(h.channel_bind(client(), 0x4000, peer), 403, "{peer}");
            assert_eq!(h.send_indication(client(), peer, b"probe"), None, "{peer}");
        }
        assert_eq!(
            h.take_drops(),
            [(DropReason::NoPermission, refused.len() as u64)]
        );

        let mut config = config();
        config.policy = PeerPolicy::new(vec!["198.18.0.0/15".parse().unwrap()]);
        let mut h = Harness::with_config(config);
        let port = h.allocate(client(), None);
        let benchmark: SocketAddr = "198.18.0.1:9".parse().unwrap();
        assert_eq!(h.create_permission(client(), benchmark), 200);
        assert_eq!(
            h.send_indication(client(), benchmark, b"probe"),
            Some((port, PeerSocket::new(benchmark)))
        );
    }

    fn other_client() -> ClientSocket {
        ClientSocket::new(Transport::Udp, "192.0.2.20:5000".parse().unwrap())
    }

    fn loopback(port: AllocationPort) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, port.value()))
    }

    /// Two relay-only WebRTC clients on one relay reach each other through their relayed
    /// addresses, which on a loopback or private `relay_ipv4` the policy would refuse.
    #[test]
    fn clients_of_one_relay_reach_each_other_without_an_allow_list() {
        let mut h = Harness::with_config(loopback_config());
        let a = h.allocate(client(), None);
        let b = h.allocate(other_client(), None);
        let (a_relayed, b_relayed) = (loopback(a), loopback(b));

        assert_eq!(h.create_permission(client(), b_relayed), 200);
        assert_eq!(h.channel_bind(client(), 0x4000, b_relayed), 200);
        assert_eq!(h.create_permission(other_client(), a_relayed), 200);
        assert_eq!(h.channel_bind(other_client(), 0x4001, a_relayed), 200);

        let to_b = Some((a, PeerSocket::new(b_relayed)));
        assert_eq!(h.channel_data(client(), 0x4000, b"over the channel"), to_b);
        assert_eq!(h.send_indication(client(), b_relayed, b"indicated"), to_b);
        let to_a = Some((b, PeerSocket::new(a_relayed)));
        assert_eq!(h.channel_data(other_client(), 0x4001, b"back"), to_a);

        // What A's socket sends arrives at B's socket from A's relayed address, and the
        // other way round.
        let at_b = h.peer_data(b, PeerSocket::new(a_relayed), b"media");
        assert_eq!(at_b, Some((other_client(), channel_data(0x4001, b"media"))));
        let at_a = h.peer_data(a, PeerSocket::new(b_relayed), b"media");
        assert_eq!(at_a, Some((client(), channel_data(0x4000, b"media"))));
        assert_eq!(h.take_drops(), []);
    }

    #[test]
    fn only_allocated_ports_of_the_relay_address_are_reachable() {
        let mut h = Harness::with_config(loopback_config());
        let a = h.allocate(client(), None);
        let b = h.allocate(other_client(), None);
        let free = (50000..=50099)
            .find(|port| ![a.value(), b.value()].contains(port))
            .unwrap();
        for peer in [
            SocketAddr::from((Ipv4Addr::LOCALHOST, free)),
            // The relay's own listener, and a port outside the relay's range.
            "127.0.0.1:3478".parse().unwrap(),
            "127.0.0.1:9".parse().unwrap(),
            // Another address of the same host, and B's address in other notations.
            SocketAddr::from((Ipv4Addr::new(127, 0, 0, 2), b.value())),
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, b.value())),
            SocketAddr::from((Ipv4Addr::LOCALHOST.to_ipv6_mapped(), b.value())),
        ] {
            assert_eq!(h.create_permission(client(), peer), 403, "{peer}");
            assert_eq!(h.channel_bind(client(), 0x4000, peer), 403, "{peer}");
        }

        // A permission is per address, so with one for B, A could otherwise reach every port
        // of 127.0.0.1; each Send indication is checked against the allocated ports.
        assert_eq!(h.create_permission(client(), loopback(b)), 200);
        let elsewhere = SocketAddr::from((Ipv4Addr::LOCALHOST, free));
        assert_eq!(h.send_indication(client(), elsewhere, b"probe"), None);
        assert_eq!(
            h.send_indication(client(), "127.0.0.1:3478".parse().unwrap(), b"probe"),
            None
        );
        assert_eq!(h.take_drops(), [(DropReason::Forbidden, 2)]);
        // Nor is A's client told what other programs on that address send.
        assert_eq!(h.peer_data(a, PeerSocket::new(elsewhere), b"hi"), None);
        assert_eq!(h.take_drops(), [(DropReason::Forbidden, 1)]);
        assert!(h.send_indication(client(), loopback(b), b"to b").is_some());
    }

    #[test]
    fn a_freed_allocation_is_no_longer_reachable() {
        let mut h = Harness::with_config(loopback_config());
        let a = h.allocate(client(), None);
        let b = h.allocate(other_client(), None);
        assert_eq!(h.channel_bind(client(), 0x4000, loopback(b)), 200);
        assert!(h.channel_data(client(), 0x4000, b"before").is_some());

        let request = h.request(other_client(), Method::Refresh, |b| {
            b.add_u32(attr::LIFETIME, 0);
        });
        let commands = h.call(other_client(), &request);
        assert_eq!(commands[0], Command::FreeAllocation { port: b });

        // The channel and the permission live on, but B's port may now be another program's.
        assert_eq!(h.channel_data(client(), 0x4000, b"after"), None);
        assert_eq!(h.send_indication(client(), loopback(b), b"after"), None);
        assert_eq!(
            h.peer_data(a, PeerSocket::new(loopback(b)), b"from b"),
            None
        );
        assert_eq!(h.take_drops(), [(DropReason::Forbidden, 3)]);
        assert_eq!(h.create_permission(client(), loopback(b)), 403);
        assert_eq!(h.channel_bind(client(), 0x4001, loopback(b)), 403);
    }

    #[test]
    fn ports_reserved_with_even_port_are_not_reachable_until_redeemed() {
        let mut h = Harness::with_config(loopback_config());
        h.allocate(client(), None);
        let (even, response) = h.allocate_unbound(other_client(), |b| {
            b.add(attr::EVEN_PORT, &[0x80]);
        });
        h.server.handle_allocation_bound(even);
        let reserved = SocketAddr::from((Ipv4Addr::LOCALHOST, even.value() + 1));
        assert_eq!(h.create_permission(client(), loopback(even)), 200);
        assert_eq!(h.create_permission(client(), reserved), 403);
        assert_eq!(h.send_indication(client(), reserved, b"x"), None);

        let token = Message::parse(&response)
            .unwrap()
            .get(attr::RESERVATION_TOKEN)
            .unwrap()
            .to_vec();
        let third = ClientSocket::new(Transport::Udp, "192.0.2.30:5000".parse().unwrap());
        let (odd, _) = h.allocate_unbound(third, |b| {
            b.add(attr::RESERVATION_TOKEN, &token);
        });
        assert_eq!(odd.value(), even.value() + 1);
        h.server.handle_allocation_bound(odd);
        assert_eq!(h.create_permission(client(), reserved), 200);
    }

    #[test]
    fn allocations_count_only_once_their_socket_is_bound() {
        let mut h = Harness::with_config(loopback_config());
        h.allocate(client(), None);
        let (port, _) = h.allocate_unbound(other_client(), |_| {});
        // Until the driver has bound the port, another program may hold it.
        assert_eq!(h.create_permission(client(), loopback(port)), 403);
        h.server.handle_allocation_failed(port, h.now);
        let moved = match &std::iter::from_fn(|| h.server.poll_command()).collect::<Vec<_>>()[..] {
            [Command::CreateAllocation { port, .. }] => *port,
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(h.create_permission(client(), loopback(port)), 403);
        assert_eq!(h.create_permission(client(), loopback(moved)), 403);
        h.server.handle_allocation_bound(moved);
        assert_eq!(h.create_permission(client(), loopback(moved)), 200);
        assert_eq!(h.create_permission(client(), loopback(port)), 403);
    }

    /// IPv6 relay sockets are IPv6-only, so an IPv6 allocation on a port makes this relay's
    /// IPv6 address reachable on it, never its IPv4 address.
    #[test]
    fn own_allocations_are_reachable_only_in_their_family() {
        let mut h = Harness::with_config(loopback_config());
        let v4 = h.allocate(client(), None);
        let v6_client = ClientSocket::new(Transport::Udp, "192.0.2.40:5000".parse().unwrap());
        let (v6, _) = h.allocate_unbound(v6_client, |b| {
            b.add(attr::REQUESTED_ADDRESS_FAMILY, &[0x02, 0, 0, 0]);
        });
        h.server.handle_allocation_bound(v6);
        let v6_relayed = SocketAddr::from((Ipv6Addr::LOCALHOST, v6.value()));
        let second_v6 = ClientSocket::new(Transport::Udp, "192.0.2.41:5000".parse().unwrap());
        h.allocate_unbound(second_v6, |b| {
            b.add(attr::REQUESTED_ADDRESS_FAMILY, &[0x02, 0, 0, 0]);
        });
        assert_eq!(h.create_permission(second_v6, v6_relayed), 200);
        assert_eq!(h.create_permission(client(), loopback(v6)), 403);
        // The IPv6 address is this relay's, so the IPv4 allocation is told the family is wrong.
        assert_eq!(h.create_permission(client(), v6_relayed), 443);
        assert_eq!(
            h.create_permission(
                v6_client,
                SocketAddr::from((Ipv6Addr::LOCALHOST, v4.value()))
            ),
            403
        );
    }

    #[test]
    fn refresh_with_lifetime_zero_frees_the_allocation() {
        let mut h = Harness::new();
        let port = h.allocate(client(), None);
        let request = h.request(client(), Method::Refresh, |b| {
            b.add_u32(attr::LIFETIME, 0);
        });
        let commands = h.call(client(), &request);
        assert_eq!(commands[0], Command::FreeAllocation { port });
        assert_eq!(response_code(&commands[1..]), 200);
        assert_eq!(h.create_permission(client(), peer().addr()), 437);
        assert_eq!(h.server.ledger.total(), 0);
    }

    #[test]
    fn channel_conflicts_get_400() {
        let mut h = Harness::new();
        h.allocate(client(), None);
        assert_eq!(h.channel_bind(client(), 0x4000, peer().addr()), 200);
        assert_eq!(
            h.channel_bind(client(), 0x4000, "198.51.100.8:1".parse().unwrap()),
            400
        );
        assert_eq!(h.channel_bind(client(), 0x4001, peer().addr()), 400);
        assert_eq!(
            h.channel_bind(client(), 0x3FFF, "198.51.100.8:1".parse().unwrap()),
            400
        );
        // Refreshing the same binding is fine.
        assert_eq!(h.channel_bind(client(), 0x4000, peer().addr()), 200);
    }

    #[test]
    fn channel_bind_refreshes_and_rebinds_as_rfc_8656_says() {
        let mut h = Harness::new();
        let port = h.allocate(client(), Some(3600));
        let other: SocketAddr = "198.51.100.8:1".parse().unwrap();
        let request = h.request(client(), Method::ChannelBind, |b| {
            b.add_u32(attr::CHANNEL_NUMBER, 0x4000 << 16);
            b.add_xor_address(attr::XOR_PEER_ADDRESS, peer().addr());
        });
        assert_eq!(response_code(&h.call(client(), &request)), 200);
        // A retransmission of the same request, as a client sends when the answer is lost.
        assert_eq!(response_code(&h.call(client(), &request)), 200);

        // A refresh just before expiry extends the binding by another ten minutes.
        h.now += CHANNEL_LIFETIME - Duration::from_secs(1);
        assert_eq!(h.channel_bind(client(), 0x4000, peer().addr()), 200);
        h.now += CHANNEL_LIFETIME - Duration::from_secs(1);
        let bytes = channel_data(0x4000, b"still bound");
        let forward = h.server.handle_client_input(client(), &bytes, h.now);
        assert_eq!(forward.map(|f| f.peer), Some(peer()));

        // While it lives, neither the channel nor the peer can be bound elsewhere.
        assert_eq!(h.channel_bind(client(), 0x4000, other), 400);
        assert_eq!(h.channel_bind(client(), 0x4001, peer().addr()), 400);

        // Once expired, both are free again, before any sweep has run.
        h.now += Duration::from_secs(2);
        assert_eq!(h.channel_bind(client(), 0x4001, peer().addr()), 200);
        assert_eq!(h.channel_bind(client(), 0x4000, other), 200);
        let forward = h.server.handle_client_input(client(), &bytes, h.now);
        assert_eq!(forward.map(|f| f.peer.addr()), Some(other));
        let back = h.peer_data(port, peer(), b"answer");
        assert_eq!(back, Some((client(), channel_data(0x4001, b"answer"))));
    }

    #[test]
    fn channel_conflicts_say_which_binding_is_in_the_way() {
        let mut h = Harness::new();
        h.allocate(client(), None);
        assert_eq!(h.channel_bind(client(), 0x4000, peer().addr()), 200);
        let reason = |h: &mut Harness, channel: u16, peer: SocketAddr| {
            let request = h.request(client(), Method::ChannelBind, |b| {
                b.add_u32(attr::CHANNEL_NUMBER, u32::from(channel) << 16);
                b.add_xor_address(attr::XOR_PEER_ADDRESS, peer);
            });
            let commands = h.call(client(), &request);
            let Command::SendToClient { payload, .. } = &commands[0] else {
                unreachable!()
            };
            let message = Message::parse(payload).unwrap();
            String::from_utf8_lossy(&message.get(attr::ERROR_CODE).unwrap()[4..]).into_owned()
        };
        let other = "198.51.100.8:1".parse().unwrap();
        assert_eq!(
            reason(&mut h, 0x4000, other),
            "Channel Bound To Another Peer"
        );
        assert_eq!(
            reason(&mut h, 0x4001, peer().addr()),
            "Peer Bound To Another Channel"
        );
    }

    #[test]
    fn failed_binds_move_to_another_port_then_answer_508() {
        let mut h = Harness::new();
        let mut port = h.allocate(client(), None);
        for _ in 1..MAX_BIND_ATTEMPTS {
            h.server.handle_allocation_failed(port, h.now);
            match std::iter::from_fn(|| h.server.poll_command())
                .collect::<Vec<_>>()
                .as_slice()
            {
                [Command::CreateAllocation {
                    port: next,
                    on_success,
                    ..
                }] => {
                    assert_ne!(*next, port);
                    let response = Message::parse(on_success).unwrap();
                    let relayed = response.get_xor_address(attr::XOR_RELAYED_ADDRESS).unwrap();
                    assert_eq!(relayed.port(), next.value());
                    port = *next;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        h.server.handle_allocation_failed(port, h.now);
        let commands: Vec<Command> = std::iter::from_fn(|| h.server.poll_command()).collect();
        assert_eq!(response_code(&commands), 508);
        assert_eq!(h.server.allocation_count(), 0);
        assert_eq!(h.server.ledger.total(), 0);
    }

    /// What the relay's clients do in [`own_allocation_exception_admits_exactly_bound_ports`].
    #[derive(Debug, Clone)]
    enum Step {
        /// Allocate, with the R bit of EVEN-PORT when `reserve` is set, and with the driver's
        /// bind reported when `bind` is set.
        Allocate {
            client: usize,
            reserve: bool,
            bind: bool,
        },
        /// The driver reports the pending bind of the client's allocation.
        Bind { client: usize },
        /// The driver reports that the bind failed, so the allocation moves or fails.
        FailBind { client: usize },
        /// Refresh with lifetime 0.
        Free { client: usize },
        /// CreatePermission, a Send indication and a datagram back, on 127.0.0.1:port.
        Probe { client: usize, port: u16 },
    }

    const STEP_CLIENTS: usize = 4;

    fn step() -> impl Strategy<Value = Step> {
        let client = 0..STEP_CLIENTS;
        prop_oneof![
            (client.clone(), any::<bool>(), any::<bool>()).prop_map(|(client, reserve, bind)| {
                Step::Allocate {
                    client,
                    reserve,
                    bind,
                }
            }),
            client.clone().prop_map(|client| Step::Bind { client }),
            client.clone().prop_map(|client| Step::FailBind { client }),
            client.clone().prop_map(|client| Step::Free { client }),
            (client, 49_998u16..=50_009).prop_map(|(client, port)| Step::Probe { client, port }),
        ]
    }

    /// The model's view of one client's allocation.
    #[derive(Debug, Clone, Copy)]
    struct Modelled {
        port: AllocationPort,
        bound: bool,
        /// Whether a permission for 127.0.0.1 was granted.
        permitted: bool,
    }

    fn step_client(index: usize) -> ClientSocket {
        ClientSocket::new(
            Transport::Udp,
            SocketAddr::from(([192, 0, 2, 50 + index as u8], 5000)),
        )
    }

    proptest! {
        /// On a loopback relay with an empty allow-list, whatever clients allocate, reserve,
        /// bind, fail to bind and free, 127.0.0.1:port is reachable (CreatePermission, Send
        /// indications, datagrams back) exactly while an allocation's socket is bound on that
        /// port: never a port that is only reserved, waiting for its bind, freed, or outside
        /// the range.
        #[test]
        fn own_allocation_exception_admits_exactly_bound_ports(
            steps in proptest::collection::vec(step(), 1..40),
        ) {
            let mut h = Harness::with_config(ServerConfig {
                ports: 50_000..=50_007,
                ..loopback_config()
            });
            let mut model: [Option<Modelled>; STEP_CLIENTS] = [None; STEP_CLIENTS];
            for step in steps {
                match step {
                    Step::Allocate { client, reserve, bind } => {
                        if model[client].is_some() {
                            continue;
                        }
                        let from = step_client(client);
                        let request = h.request(from, Method::Allocate, |b| {
                            b.add(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
                            if reserve {
                                b.add(attr::EVEN_PORT, &[0x80]);
                            }
                        });
                        // With eight ports, some allocations fail with 508.
                        if let [Command::CreateAllocation { port, .. }] = &h.call(from, &request)[..] {
                            if bind {
                                h.server.handle_allocation_bound(*port);
                            }
                            model[client] = Some(Modelled { port: *port, bound: bind, permitted: false });
                        }
                    }
                    Step::Bind { client } => {
                        if let Some(allocation) = &mut model[client] {
                            h.server.handle_allocation_bound(allocation.port);
                            allocation.bound = true;
                        }
                    }
                    Step::FailBind { client } => {
                        // A socket that is bound does not fail to bind afterwards.
                        let Some(allocation) = model[client].filter(|a| !a.bound) else {
                            continue;
                        };
                        h.server.handle_allocation_failed(allocation.port, h.now);
                        let commands: Vec<Command> = std::iter::from_fn(|| h.server.poll_command()).collect();
                        model[client] = match &commands[..] {
                            [Command::CreateAllocation { port, .. }] => {
                                Some(Modelled { port: *port, ..allocation })
                            }
                            _ => None,
                        };
                    }
                    Step::Free { client } => {
                        if model[client].take().is_some() {
                            let from = step_client(client);
                            let request = h.request(from, Method::Refresh, |b| {
                                b.add_u32(attr::LIFETIME, 0);
                            });
                            h.call(from, &request);
                        }
                    }
                    Step::Probe { client, port } => {
                        let Some(allocation) = model[client] else {
                            continue;
                        };
                        let from = step_client(client);
                        let peer = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
                        let reachable = model
                            .iter()
                            .flatten()
                            .any(|a| a.bound && a.port.value() == port);
                        let code = h.create_permission(from, peer);
                        prop_assert_eq!(code, if reachable { 200 } else { 403 }, "{:?}", peer);
                        let permitted = allocation.permitted || reachable;
                        model[client] = Some(Modelled { permitted, ..allocation });
                        let sent = h.send_indication(from, peer, b"probe");
                        prop_assert_eq!(sent.is_some(), permitted && reachable, "{:?}", peer);
                        let heard = h.peer_data(allocation.port, PeerSocket::new(peer), b"back");
                        prop_assert_eq!(heard.is_some(), permitted && reachable, "{:?}", peer);
                    }
                }
            }
        }

        /// ChannelData from the client is forwarded byte for byte while the binding lives
        /// (ten minutes). The peer's answer comes back as ChannelData on the same channel only
        /// while the permission the binding installed lives (five minutes), because traffic from
        /// peers always needs a permission (RFC 8656, section 12).
        #[test]
        fn channel_data_round_trip_until_expiry(
            payload in proptest::collection::vec(any::<u8>(), 0..1200),
            channel in CHANNEL_MIN..=CHANNEL_MAX,
            skip_secs in 0u64..1200,
        ) {
            let mut h = Harness::new();
            let port = h.allocate(client(), Some(3600));
            prop_assert_eq!(h.channel_bind(client(), channel, peer().addr()), 200);
            h.now += Duration::from_secs(skip_secs);
            let alive = Duration::from_secs(skip_secs) < CHANNEL_LIFETIME;
            let bytes = channel_data(channel, &payload);
            let forward = h.server.handle_client_input(client(), &bytes, h.now);
            let expected_forward = alive.then_some(Forward { port, peer: peer(), payload: &payload });
            prop_assert_eq!(forward, expected_forward);
            let permitted = Duration::from_secs(skip_secs) < PERMISSION_LIFETIME;
            let back = h.peer_data(port, peer(), &payload);
            let expected_back = permitted.then(|| (client(), channel_data(channel, &payload)));
            prop_assert_eq!(back, expected_back);
            prop_assert_eq!(h.server.poll_command(), None);
        }

        /// A permission lets Send indications out and Data indications in for five minutes.
        #[test]
        fn permission_lifetime_governs_send_and_data(
            payload in proptest::collection::vec(any::<u8>(), 1..600),
            skip_secs in 0u64..700,
        ) {
            let mut h = Harness::new();
            let port = h.allocate(client(), Some(3600));
            prop_assert_eq!(h.create_permission(client(), peer().addr()), 200);
            h.now += Duration::from_secs(skip_secs);
            let alive = Duration::from_secs(skip_secs) < PERMISSION_LIFETIME;
            let mut send = MessageBuilder::new(Method::Send, Class::Indication, [3; 12]);
            send.add_xor_address(attr::XOR_PEER_ADDRESS, peer().addr()).add(attr::DATA, &payload);
            let send = send.finish();
            let forward = h.server.handle_client_input(client(), &send, h.now);
            prop_assert_eq!(forward, alive.then_some(Forward { port, peer: peer(), payload: &payload }));
            let back = h.peer_data(port, peer(), &payload);
            prop_assert_eq!(back.is_some(), alive);
            if let Some((to, bytes)) = back {
                prop_assert_eq!(to, client());
                let message = Message::parse(&bytes).unwrap();
                prop_assert_eq!(message.method(), Method::Data);
                prop_assert_eq!(message.get_xor_address(attr::XOR_PEER_ADDRESS), Some(peer().addr()));
                prop_assert_eq!(message.get(attr::DATA), Some(&payload[..]));
            }
        }

        /// Allocations expire at the granted lifetime: the sweep frees exactly then.
        #[test]
        fn allocation_expires_at_granted_lifetime(requested in any::<u32>(), skip_secs in 0u64..4000) {
            let mut h = Harness::new();
            let port = h.allocate(client(), Some(requested.max(1)));
            let granted = granted_lifetime(Some(requested.max(1)));
            h.now += Duration::from_secs(skip_secs);
            h.server.handle_timeout(h.now);
            let freed: Vec<Command> = std::iter::from_fn(|| h.server.poll_command()).collect();
            if Duration::from_secs(skip_secs) >= granted {
                prop_assert_eq!(freed, vec![Command::FreeAllocation { port }]);
                prop_assert_eq!(h.server.allocation_count(), 0);
            } else {
                prop_assert_eq!(freed, vec![]);
                prop_assert_eq!(h.server.allocation_count(), 1);
            }
        }

        /// No input, however malformed, panics or produces anything but responses.
        #[test]
        fn arbitrary_client_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut h = Harness::new();
            h.allocate(client(), None);
            let _ = h.server.handle_client_input(client(), &bytes, h.now);
            while let Some(command) = h.server.poll_command() {
                let is_response = matches!(command, Command::SendToClient { .. });
                prop_assert!(is_response);
            }
        }
    }
}
