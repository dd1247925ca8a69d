//! The tokio driver: sockets, timers and metrics around the sans-IO [`Server`].
//!
//! Each worker is one OS thread with a current-thread runtime and a `LocalSet`, owning one
//! [`Server`], its own SO_REUSEPORT listeners and the relay sockets of its allocations. Because
//! everything a worker touches lives on its thread, the server sits in a `RefCell` instead of a
//! mutex, and relayed datagrams are handled without locks or allocations: the client socket is
//! read in batches with `recvmmsg` (through `quinn-udp`), and peer datagrams are received into a
//! buffer with headroom, where the server writes the ChannelData header in place.
//!
//! Relay sockets are not tokio sockets. They are registered with one `mio::Poll` per worker,
//! whose epoll descriptor tokio watches as a single `AsyncFd`, and one task reads whichever of
//! them are ready into buffers the worker shares. An allocation thus costs the driver a file
//! descriptor and a map entry: no task, no reactor registration and no buffer of its own.
//!
//! Sends are queued while a batch of received datagrams is handled and then go out with one
//! `sendmmsg` per socket ([`Outbox`]): every task that hands the server input flushes the
//! worker's queues before it waits again.

use std::cell::RefCell;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsFd;
use std::rc::Rc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use quinn_udp::{RecvMeta, UdpSocketState, BATCH_SIZE};
use rustc_hash::FxHashMap;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, watch};

use crate::config::{ConfigError, RelayConfig};
use crate::outbox::{Outbox, Via, SEND_BATCH};
use crate::policy::PeerPolicy;
use crate::server::{
    AddressFamily, AllocationLedger, AllocationPort, ClientSocket, Command, DropReason, PeerSocket,
    Server, ServerConfig, Stats, Transport, PEER_HEADROOM, PEER_TAILROOM,
};
use crate::stun::stream_frame_len;

/// Largest UDP payload a relay socket accepts from a peer.
const MAX_DATAGRAM: usize = 65_535;

/// Frames queued for one TCP or TLS client before further ones are dropped, so a client that
/// stops reading cannot make the relay buffer without bound.
const STREAM_QUEUE: usize = 1024;

/// A running relay. Dropping it without [`Relay::shutdown`] leaves the workers running.
pub struct Relay {
    udp_addr: Option<SocketAddr>,
    tcp_addr: Option<SocketAddr>,
    tls_addr: Option<SocketAddr>,
    ledger: Arc<AllocationLedger>,
    shutdown: watch::Sender<bool>,
    workers: Vec<JoinHandle<()>>,
}

/// Why a relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot bind {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("cannot load the TLS certificate or key: {0}")]
    Tls(String),
    #[error("cannot start a worker thread: {0}")]
    Thread(io::Error),
}

impl Relay {
    /// Binds every listener and starts the workers. Listener errors are returned here rather
    /// than logged later, so `kontakt serve` can refuse to start on a taken port.
    pub fn start(config: RelayConfig) -> Result<Relay, StartError> {
        config.validate()?;
        let workers = config.worker_count();
        let tls = match (&config.listen_tls, &config.tls_cert, &config.tls_key) {
            (Some(_), Some(cert), Some(key)) => Some(load_tls(cert, key)?),
            _ => None,
        };
        let ledger = Arc::new(AllocationLedger::new(
            config.max_allocations_per_user,
            config.max_allocations,
        ));
        let nonce_key: [u8; 32] = rand::random();
        let epoch = Instant::now();
        let epoch_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();

        let mut listeners: Vec<WorkerSockets> =
            (0..workers).map(|_| WorkerSockets::default()).collect();
        let udp_addr = bind_all(config.listen_udp, &mut listeners, bind_udp, |l, s| {
            l.udp = Some(s)
        })?;
        let tcp_addr = bind_all(config.listen_tcp, &mut listeners, bind_tcp, |l, s| {
            l.tcp = Some(s)
        })?;
        let tls_addr = bind_all(config.listen_tls, &mut listeners, bind_tcp, |l, s| {
            l.tls = Some(s)
        })?;

        let (shutdown, shutdown_rx) = watch::channel(false);
        let total_ports = u32::from(config.max_port) - u32::from(config.min_port) + 1;
        let per_worker = total_ports / workers as u32;
        let mut handles = Vec::with_capacity(workers);
        for (index, sockets) in listeners.into_iter().enumerate() {
            let first = u32::from(config.min_port) + per_worker * index as u32;
            let last = if index + 1 == workers {
                u32::from(config.max_port)
            } else {
                first + per_worker - 1
            };
            let server_config = ServerConfig {
                realm: config.realm.clone(),
                secret: config.secret.clone(),
                nonce_key,
                nonce_lifetime: Duration::from_secs(config.nonce_lifetime_secs),
                relay_ipv4: config.relay_ipv4,
                relay_ipv6: config.relay_ipv6,
                ports: first as u16..=last as u16,
                bandwidth_bytes_per_sec: (config.bandwidth_bytes_per_sec > 0)
                    .then_some(config.bandwidth_bytes_per_sec),
                policy: PeerPolicy::new(config.allowed_peer_ranges.clone()),
                rng_seed: rand::random(),
            };
            let server = Server::new(server_config, ledger.clone(), epoch, epoch_unix);
            let setup = WorkerSetup {
                server,
                sockets,
                tls: tls.clone(),
                relay_bind: (config.relay_bind_ipv4, config.relay_bind_ipv6),
                ledger: ledger.clone(),
                connected_budget: connected_budget(workers),
            };
            let shutdown_rx = shutdown_rx.clone();
            let handle = std::thread::Builder::new()
                .name(format!("media-relay-{index}"))
                .spawn(move || run_worker(setup, shutdown_rx))
                .map_err(StartError::Thread)?;
            handles.push(handle);
        }
        tracing::info!(
            ?udp_addr,
            ?tcp_addr,
            ?tls_addr,
            workers,
            "media relay started"
        );
        Ok(Relay {
            udp_addr,
            tcp_addr,
            tls_addr,
            ledger,
            shutdown,
            workers: handles,
        })
    }

    /// The bound UDP listener, with the real port when the configuration asked for port 0.
    pub fn udp_addr(&self) -> Option<SocketAddr> {
        self.udp_addr
    }

    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp_addr
    }

    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// Allocations currently held across all workers.
    pub fn allocation_count(&self) -> u32 {
        self.ledger.total()
    }

    /// Stops the workers and waits for their threads; sockets are closed when this returns.
    pub fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for worker in self.workers {
            let _ = worker.join();
        }
    }
}

#[derive(Default)]
struct WorkerSockets {
    udp: Option<std::net::UdpSocket>,
    tcp: Option<std::net::TcpListener>,
    tls: Option<std::net::TcpListener>,
}

struct WorkerSetup {
    server: Server,
    sockets: WorkerSockets,
    tls: Option<tokio_rustls::TlsAcceptor>,
    relay_bind: (Ipv4Addr, Ipv6Addr),
    ledger: Arc<AllocationLedger>,
    /// Connected relay sockets the worker may open ([`connected_budget`]).
    connected_budget: usize,
}

/// Binds one socket per worker. The first binds the configured address; the others bind the
/// address it got, so that port 0 yields one shared port.
fn bind_all<S>(
    addr: Option<SocketAddr>,
    workers: &mut [WorkerSockets],
    bind: impl Fn(SocketAddr) -> io::Result<(S, SocketAddr)>,
    store: impl Fn(&mut WorkerSockets, S),
) -> Result<Option<SocketAddr>, StartError> {
    let Some(mut addr) = addr else {
        return Ok(None);
    };
    for (index, worker) in workers.iter_mut().enumerate() {
        let (socket, bound) = bind(addr).map_err(|source| StartError::Bind { addr, source })?;
        if index == 0 {
            addr = bound;
        }
        store(worker, socket);
    }
    Ok(Some(addr))
}

/// The receive buffer of a worker's client socket, in bytes.
const CLIENT_RECV_BUFFER: usize = 1024 * 1024;

fn bind_udp(addr: SocketAddr) -> io::Result<(std::net::UdpSocket, SocketAddr)> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_port(true)?;
    // Every client of a worker shares this socket, so its receive queue takes their bursts
    // together: the kernel's default (about 200 KiB, some 250 small datagrams) overflowed
    // under 100,000 datagrams a second. A megabyte holds a few milliseconds of such load;
    // more would turn overload into seconds of delay, which makes clients time out and
    // retransmit requests, instead of the brief loss that real-time media copes with. The
    // kernel caps it at `net.core.rmem_max`.
    socket.set_recv_buffer_size(CLIENT_RECV_BUFFER)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    let socket: std::net::UdpSocket = socket.into();
    let bound = socket.local_addr()?;
    Ok((socket, bound))
}

fn bind_tcp(addr: SocketAddr) -> io::Result<(std::net::TcpListener, SocketAddr)> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    let listener: std::net::TcpListener = socket.into();
    let bound = listener.local_addr()?;
    Ok((listener, bound))
}

/// Datagrams queued for one kind of socket before they are sent without waiting for the end
/// of the batch, which bounds the queue when a wake-up drains many relay sockets.
const FLUSH_AT: usize = 4 * SEND_BATCH;

/// A non-blocking UDP socket for a relayed address `addr`, not yet bound. An IPv6 one carries
/// IPv6 only: a relayed address has one family.
fn relay_udp_socket(addr: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// Binds a relay socket. Its `quinn-udp` state is returned too, having set the socket options
/// that `recvmmsg` relies on; reading needs only one state per worker, so the caller keeps at
/// most one.
fn bind_relay(ip: IpAddr, port: u16) -> io::Result<(mio::net::UdpSocket, UdpSocketState)> {
    let addr = SocketAddr::new(ip, port);
    let socket = relay_udp_socket(addr)?;
    socket.bind(&addr.into())?;
    // Bound first without SO_REUSEPORT, so that the bind fails if any socket holds the port
    // (another relay on the same range, say). Allowed from now on, so that the allocation's
    // connected sockets can bind the same port: only sockets of this user that ask for it too.
    socket.set_reuse_port(true)?;
    let socket: std::net::UdpSocket = socket.into();
    let state = UdpSocketState::new((&socket).into())?;
    without_ancillary_data(&socket, addr)?;
    Ok((mio::net::UdpSocket::from_std(socket), state))
}

/// Opens a socket on an allocation's relayed address `local` (whose socket [`bind_relay`] made)
/// connected to `peer`. The kernel hands it the datagrams from `peer`, so the allocation reads
/// it too, and sends through it skip the route lookup of an unconnected send: a tenth of the
/// cost of each datagram sent on loopback (BENCHMARKS.md, media-relay). Unlike the bound
/// socket it also hears of ICMP errors from its peer: the kernel reports each once, to the next
/// read (which the drain skips) or the next send (whose datagram is then counted as failed).
fn connect_relay(local: SocketAddr, peer: SocketAddr) -> io::Result<mio::net::UdpSocket> {
    let socket = relay_udp_socket(local)?;
    socket.set_reuse_port(true)?;
    socket.bind(&local.into())?;
    socket.connect(&peer.into())?;
    without_ancillary_data(&socket, local)?;
    Ok(mio::net::UdpSocket::from_std(socket.into()))
}

/// Peers of one allocation that get a connected socket of their own; datagrams to and from
/// any others use the allocation's bound socket. A call relayed both ways has one peer: the
/// other side's relayed address.
const CONNECTED_PER_ALLOCATION: usize = 2;

/// The sockets of one allocation.
struct RelaySockets {
    /// Bound to the relayed transport address; it carries every peer without a socket below.
    bound: mio::net::UdpSocket,
    /// Bound to the same address and connected to one peer each, in the order they were made;
    /// a socket's place is its slot, less one, until the allocation is freed.
    connected: Vec<(SocketAddr, mio::net::UdpSocket)>,
}

impl RelaySockets {
    /// The socket in `slot`: 0 is the bound one, then the connected ones.
    fn get(&self, slot: u8) -> Option<Via<'_>> {
        match slot {
            0 => Some(Via::Addressed(self.bound.as_fd())),
            n => self
                .connected
                .get(usize::from(n) - 1)
                .map(|(_, socket)| Via::Connected(socket.as_fd())),
        }
    }
}

/// A socket of an allocation: its port and its slot in [`RelaySockets`]. Its `mio` token
/// carries both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct RelaySocket {
    port: AllocationPort,
    slot: u8,
}

impl RelaySocket {
    fn token(self) -> mio::Token {
        mio::Token(usize::from(self.port.value()) | usize::from(self.slot) << 16)
    }

    fn from_token(token: mio::Token) -> Option<Self> {
        let port = u16::try_from(token.0 & 0xffff).ok()?;
        let slot = u8::try_from(token.0 >> 16).ok()?;
        Some(Self {
            port: AllocationPort::new(port),
            slot,
        })
    }
}

/// Connected relay sockets a worker may hold in all, out of the process's descriptor limit:
/// a quarter of it shared by the workers, so that allocations, whose bound sockets need one
/// each, never run short because of them.
fn connected_budget(workers: usize) -> usize {
    let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(soft, _)| soft);
    usize::try_from(soft / 4).unwrap_or(usize::MAX) / workers.max(1)
}

/// Turns off the per-datagram control messages that `UdpSocketState::new` asks for on a socket
/// bound to `addr`: the destination address (`IP_PKTINFO`) and the traffic class (ECN). The
/// relay reads neither: a socket bound to one address knows its destination, a wildcard
/// listener answers through the kernel's choice of source, and TURN does not carry ECN. Left
/// on, the kernel builds two control messages for every datagram received, which was about a
/// twentieth of the relay's CPU time in `cargo xtask bench relay`. Segment counts from GRO
/// (`UDP_GRO`) stay on, since the driver splits coalesced datagrams by them.
fn without_ancillary_data(socket: &impl AsFd, addr: SocketAddr) -> io::Result<()> {
    use nix::sys::socket::{setsockopt, sockopt};
    let v4 = match addr {
        SocketAddr::V4(_) => true,
        SocketAddr::V6(_) => !socket2::SockRef::from(socket).only_v6()?,
    };
    if v4 {
        rustix::net::sockopt::set_ip_recvtos(socket, false)?;
        setsockopt(socket, sockopt::Ipv4PacketInfo, &false)?;
    }
    if addr.is_ipv6() {
        rustix::net::sockopt::set_ipv6_recvtclass(socket, false)?;
        setsockopt(socket, sockopt::Ipv6RecvPacketInfo, &false)?;
    }
    Ok(())
}

/// Datagrams read from a relay socket per `recvmmsg` call. Peer traffic per allocation is
/// light, so a small batch usually drains the queue and tells us so.
const RELAY_BATCH: usize = 8;

/// Readiness events taken from the relay sockets' `mio::Poll` at once.
const RELAY_EVENTS: usize = 256;

fn load_tls(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<tokio_rustls::TlsAcceptor, StartError> {
    let error = |e: &dyn std::fmt::Display| StartError::Tls(e.to_string());
    let cert_pem = std::fs::read(cert).map_err(|e| error(&format!("{}: {e}", cert.display())))?;
    let key_pem = std::fs::read(key).map_err(|e| error(&format!("{}: {e}", key.display())))?;
    let certs = rustls_pemfile::certs(&mut &cert_pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(&e))?;
    let key = rustls_pemfile::private_key(&mut &key_pem[..])
        .map_err(|e| error(&e))?
        .ok_or_else(|| error(&"no private key in the key file"))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| error(&e))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| error(&e))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

fn run_worker(setup: WorkerSetup, shutdown: watch::Receiver<bool>) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "cannot build the relay worker runtime");
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, worker_main(setup, shutdown));
}

/// State of one worker, shared by its tasks on one thread.
struct Worker {
    server: RefCell<Server>,
    udp: Option<Rc<UdpSocket>>,
    /// The relay sockets of each allocation, registered with `relay_registry` under their
    /// [`RelaySocket::token`].
    relays: RefCell<FxHashMap<AllocationPort, RelaySockets>>,
    /// Connected relay sockets this worker may still open.
    connected_budget: std::cell::Cell<usize>,
    relay_registry: mio::Registry,
    /// The `quinn-udp` state used to read every relay socket; set when the first is bound.
    relay_state: std::cell::OnceCell<UdpSocketState>,
    streams: RefCell<FxHashMap<ClientSocket, mpsc::Sender<Vec<u8>>>>,
    /// Datagrams for UDP clients, sent from `udp`. Sends are plain system calls on the
    /// non-blocking socket rather than tokio's, which would refuse until the reactor has seen
    /// a socket become writable (a relay socket bound a moment ago has not), and UDP sends
    /// need no readiness tracking: a full buffer is a drop.
    to_clients: RefCell<Outbox<()>>,
    /// Datagrams for peers, each sent from a relay socket of its allocation.
    to_peers: RefCell<Outbox<RelaySocket>>,
    peer_buffer: RefCell<Vec<u8>>,
    relay_batch: RefCell<RelayBatch>,
    relay_bind: (Ipv4Addr, Ipv6Addr),
    send_failures: std::cell::Cell<u64>,
}

/// Receive buffers shared by all relay sockets of a worker; only one is read at a time.
struct RelayBatch {
    storage: Vec<u8>,
    metas: [RecvMeta; RELAY_BATCH],
}

async fn worker_main(setup: WorkerSetup, mut shutdown: watch::Receiver<bool>) {
    let WorkerSetup {
        server,
        sockets,
        tls,
        relay_bind,
        ledger,
        connected_budget,
    } = setup;
    let udp = match sockets.udp.map(UdpSocket::from_std).transpose() {
        Ok(udp) => udp.map(Rc::new),
        Err(error) => {
            tracing::error!(%error, "cannot register the UDP listener");
            return;
        }
    };
    let relay_poll = match mio::Poll::new() {
        Ok(poll) => poll,
        Err(error) => {
            tracing::error!(%error, "cannot create the relay sockets' poll");
            return;
        }
    };
    let relay_registry = match relay_poll.registry().try_clone() {
        Ok(registry) => registry,
        Err(error) => {
            tracing::error!(%error, "cannot share the relay sockets' registry");
            return;
        }
    };
    let worker = Rc::new(Worker {
        server: RefCell::new(server),
        udp,
        relays: RefCell::new(FxHashMap::default()),
        connected_budget: std::cell::Cell::new(connected_budget),
        relay_registry,
        relay_state: std::cell::OnceCell::new(),
        streams: RefCell::new(FxHashMap::default()),
        to_clients: RefCell::new(Outbox::new()),
        to_peers: RefCell::new(Outbox::new()),
        peer_buffer: RefCell::new(vec![0; PEER_HEADROOM + MAX_DATAGRAM + PEER_TAILROOM]),
        relay_batch: RefCell::new(RelayBatch {
            storage: Vec::new(),
            metas: [RecvMeta::default(); RELAY_BATCH],
        }),
        relay_bind,
        send_failures: std::cell::Cell::new(0),
    });
    let mut tasks = Vec::new();
    tasks.push(tokio::task::spawn_local(relay_loop(
        worker.clone(),
        relay_poll,
    )));
    if worker.udp.is_some() {
        tasks.push(tokio::task::spawn_local(client_udp_loop(worker.clone())));
    }
    for (listener, transport) in [(sockets.tcp, Transport::Tcp), (sockets.tls, Transport::Tls)] {
        let Some(listener) = listener else { continue };
        match TcpListener::from_std(listener) {
            Ok(listener) => tasks.push(tokio::task::spawn_local(accept_loop(
                worker.clone(),
                listener,
                transport,
                tls.clone(),
            ))),
            Err(error) => tracing::error!(%error, "cannot register a TCP listener"),
        }
    }
    tasks.push(tokio::task::spawn_local(timer_loop(worker.clone(), ledger)));

    // A closed channel means the Relay handle is gone without shutdown(); keep serving then.
    while !*shutdown.borrow() {
        if shutdown.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
    for task in tasks {
        task.abort();
    }
    worker.relays.borrow_mut().clear();
    worker.streams.borrow_mut().clear();
}

impl Worker {
    /// Feeds one client datagram or frame to the server and queues what it returns. The
    /// caller flushes the queues with [`Worker::flush`].
    fn on_client_data(&self, client: ClientSocket, bytes: &[u8], now: Instant) {
        let forward = self
            .server
            .borrow_mut()
            .handle_client_input(client, bytes, now);
        if let Some(forward) = forward {
            let socket = self.relay_socket_for(forward.port, forward.peer.addr());
            let queued = {
                let mut to_peers = self.to_peers.borrow_mut();
                to_peers.push(socket, forward.peer.addr(), forward.payload);
                to_peers.len()
            };
            if queued >= FLUSH_AT {
                self.flush_to_peers();
            }
        }
        self.run_commands();
    }

    /// Queues a datagram for a UDP client, or hands a frame to a stream client's writer.
    fn send_to_client(&self, client: ClientSocket, bytes: &[u8]) {
        let sent = match client.transport() {
            Transport::Udp => {
                if self.udp.is_none() {
                    false
                } else {
                    let queued = {
                        let mut to_clients = self.to_clients.borrow_mut();
                        to_clients.push((), client.addr(), bytes);
                        to_clients.len()
                    };
                    if queued >= FLUSH_AT {
                        self.flush_to_clients();
                    }
                    true
                }
            }
            Transport::Tcp | Transport::Tls => self
                .streams
                .borrow()
                .get(&client)
                .is_some_and(|tx| tx.try_send(bytes.to_vec()).is_ok()),
        };
        if !sent {
            self.send_failures.set(self.send_failures.get() + 1);
        }
    }

    /// Sends every queued datagram.
    fn flush(&self) {
        self.flush_to_peers();
        self.flush_to_clients();
    }

    fn flush_to_peers(&self) {
        let mut to_peers = self.to_peers.borrow_mut();
        if to_peers.is_empty() {
            return;
        }
        let relays = self.relays.borrow();
        let failed = to_peers.flush(|socket| {
            relays
                .get(&socket.port)
                .and_then(|sockets| sockets.get(socket.slot))
        });
        self.send_failures.set(self.send_failures.get() + failed);
    }

    fn flush_to_clients(&self) {
        let mut to_clients = self.to_clients.borrow_mut();
        if to_clients.is_empty() {
            return;
        }
        let failed = match &self.udp {
            Some(udp) => to_clients.flush(|()| Some(Via::Addressed(udp.as_fd()))),
            None => to_clients.flush(|()| None),
        };
        self.send_failures.set(self.send_failures.get() + failed);
    }

    /// Carries out queued commands. The server is borrowed for each `poll_command` only, since
    /// a failed bind calls back into it.
    fn run_commands(self: &Worker) {
        loop {
            let command = self.server.borrow_mut().poll_command();
            let Some(command) = command else { return };
            match command {
                Command::SendToClient { to, payload } => self.send_to_client(to, &payload),
                Command::CreateAllocation {
                    port,
                    family,
                    client,
                    on_success,
                } => {
                    let ip = match family {
                        AddressFamily::V4 => IpAddr::V4(self.relay_bind.0),
                        AddressFamily::V6 => IpAddr::V6(self.relay_bind.1),
                    };
                    match self.add_relay(ip, port) {
                        Ok(()) => {
                            // Before the client learns its relayed address, so the other side
                            // of a call, who learns it from the client, is never refused it.
                            self.server.borrow_mut().handle_allocation_bound(port);
                            self.send_to_client(client, &on_success);
                        }
                        Err(error) => {
                            tracing::warn!(%error, port = port.value(), "cannot bind a relay port");
                            self.server
                                .borrow_mut()
                                .handle_allocation_failed(port, Instant::now());
                        }
                    }
                }
                Command::FreeAllocation { port } => {
                    // What the allocation queued goes out before its socket closes.
                    self.flush_to_peers();
                    if let Some(mut sockets) = self.relays.borrow_mut().remove(&port) {
                        let _ = self.relay_registry.deregister(&mut sockets.bound);
                        for (_, socket) in &mut sockets.connected {
                            let _ = self.relay_registry.deregister(socket);
                        }
                        self.connected_budget
                            .set(self.connected_budget.get() + sockets.connected.len());
                    }
                }
            }
        }
    }

    /// Binds the relay socket of an allocation and registers it for reading.
    fn add_relay(&self, ip: IpAddr, port: AllocationPort) -> io::Result<()> {
        let (mut socket, state) = bind_relay(ip, port.value())?;
        self.relay_registry.register(
            &mut socket,
            RelaySocket { port, slot: 0 }.token(),
            mio::Interest::READABLE,
        )?;
        let _ = self.relay_state.set(state);
        self.relays.borrow_mut().insert(
            port,
            RelaySockets {
                bound: socket,
                connected: Vec::new(),
            },
        );
        Ok(())
    }

    /// The socket of allocation `port` to send to `peer` from: the one connected to `peer`,
    /// opened now if the allocation and the worker have room for it, or else the bound one.
    /// Which peers the allocation may reach is the server's decision, made before this.
    fn relay_socket_for(&self, port: AllocationPort, peer: SocketAddr) -> RelaySocket {
        let bound = RelaySocket { port, slot: 0 };
        let mut relays = self.relays.borrow_mut();
        let Some(sockets) = relays.get_mut(&port) else {
            return bound;
        };
        let slot = |index: usize| RelaySocket {
            port,
            slot: u8::try_from(index + 1).unwrap_or(0),
        };
        if let Some(index) = sockets.connected.iter().position(|(to, _)| *to == peer) {
            return slot(index);
        }
        if sockets.connected.len() >= CONNECTED_PER_ALLOCATION || self.connected_budget.get() == 0 {
            return bound;
        }
        let socket = slot(sockets.connected.len());
        let opened = sockets.bound.local_addr().and_then(|local| {
            let mut connected = connect_relay(local, peer)?;
            self.relay_registry.register(
                &mut connected,
                socket.token(),
                mio::Interest::READABLE,
            )?;
            Ok(connected)
        });
        match opened {
            Ok(connected) => {
                sockets.connected.push((peer, connected));
                self.connected_budget.set(self.connected_budget.get() - 1);
                socket
            }
            Err(error) => {
                tracing::debug!(%error, port = port.value(), %peer, "cannot connect a relay socket");
                bound
            }
        }
    }

    /// Reads a relay socket until its queue is empty, relaying each datagram.
    fn drain_relay(&self, relay: RelaySocket, now: Instant) {
        let port = relay.port;
        let Some(state) = self.relay_state.get() else {
            return;
        };
        // With GRO the kernel may coalesce several datagrams of one peer into one buffer.
        let slot = if state.gro_segments() > 1 {
            MAX_DATAGRAM
        } else {
            2048
        };
        loop {
            let relays = self.relays.borrow();
            // The allocation may have gone since the event was queued.
            let Some(socket) = relays
                .get(&port)
                .and_then(|sockets| sockets.get(relay.slot))
                .map(Via::fd)
            else {
                return;
            };
            let mut batch = self.relay_batch.borrow_mut();
            let RelayBatch { storage, metas } = &mut *batch;
            if storage.len() < slot * RELAY_BATCH {
                storage.resize(slot * RELAY_BATCH, 0);
            }
            let received = {
                let mut chunks = storage.chunks_mut(slot);
                let mut buffers: [IoSliceMut<'_>; RELAY_BATCH] =
                    std::array::from_fn(|_| IoSliceMut::new(chunks.next().unwrap_or_default()));
                state.recv((&socket).into(), &mut buffers, metas)
            };
            let count = match received {
                Ok(count) => count,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    // ICMP errors from earlier sends surface here, once each; reading goes on.
                    tracing::trace!(%error, port = port.value(), "relay receive failed");
                    continue;
                }
            };
            let mut buffer = self.peer_buffer.borrow_mut();
            for (index, meta) in metas.iter().take(count).enumerate() {
                let data = &storage[index * slot..index * slot + meta.len];
                let from = PeerSocket::new(normalise(meta.addr));
                for segment in data.chunks(meta.stride.max(1)) {
                    // The copy leaves room in front for the ChannelData or Data indication
                    // header; for media-sized datagrams it costs less than the syscall saved.
                    buffer[PEER_HEADROOM..PEER_HEADROOM + segment.len()].copy_from_slice(segment);
                    let out = self.server.borrow_mut().handle_peer_traffic(
                        port,
                        from,
                        &mut buffer,
                        segment.len(),
                        now,
                    );
                    if let Some((client, bytes)) = out {
                        self.send_to_client(client, bytes);
                    }
                }
            }
            // A short batch means the queue is empty. The socket is registered edge-triggered,
            // so a datagram arriving from now on raises a new event; no EAGAIN read is needed.
            if count < RELAY_BATCH {
                return;
            }
        }
    }
}

async fn client_udp_loop(worker: Rc<Worker>) {
    let Some(socket) = worker.udp.clone() else {
        return;
    };
    let configured = UdpSocketState::new((&*socket).into()).and_then(|state| {
        without_ancillary_data(&*socket, socket.local_addr()?)?;
        Ok(state)
    });
    let state = match configured {
        Ok(state) => state,
        Err(error) => {
            tracing::error!(%error, "cannot configure the UDP listener");
            return;
        }
    };
    // With GRO the kernel may hand over several datagrams of one flow in one buffer.
    let slot = if state.gro_segments() > 1 {
        MAX_DATAGRAM
    } else {
        2048
    };
    let mut storage = vec![0u8; slot * BATCH_SIZE];
    let mut metas = [RecvMeta::default(); BATCH_SIZE];
    loop {
        if socket.readable().await.is_err() {
            return;
        }
        loop {
            let received = {
                let mut chunks = storage.chunks_mut(slot);
                let mut buffers: [IoSliceMut<'_>; BATCH_SIZE] =
                    std::array::from_fn(|_| IoSliceMut::new(chunks.next().unwrap_or_default()));
                socket.try_io(tokio::io::Interest::READABLE, || {
                    state.recv((&*socket).into(), &mut buffers, &mut metas)
                })
            };
            let count = match received {
                Ok(count) => count,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) => {
                    tracing::debug!(%error, "UDP receive failed");
                    break;
                }
            };
            let now = Instant::now();
            for (index, meta) in metas.iter().take(count).enumerate() {
                let data = &storage[index * slot..index * slot + meta.len];
                let client = ClientSocket::new(Transport::Udp, normalise(meta.addr));
                for segment in data.chunks(meta.stride.max(1)) {
                    worker.on_client_data(client, segment, now);
                }
            }
            worker.flush();
        }
    }
}

/// A dual-stack socket reports IPv4 clients as IPv4-mapped IPv6; replies must go to the same
/// form, but the server keys allocations by the plain form.
fn normalise(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

/// Reads the worker's relay sockets. Tokio watches the `mio::Poll` as one descriptor; each of
/// its events names a socket with data, by port, which is then drained.
async fn relay_loop(worker: Rc<Worker>, poll: mio::Poll) {
    // Tokio deprecates the safe constructor because a `T` could close or swap its descriptor
    // behind the registration. `mio::Poll` owns its epoll descriptor for its whole life and
    // never replaces it, so that cannot happen here; the replacement is `unsafe`, which this
    // workspace forbids.
    #[allow(deprecated)]
    let registered = AsyncFd::with_interest(poll, tokio::io::Interest::READABLE);
    let mut poll = match registered {
        Ok(poll) => poll,
        Err(error) => {
            tracing::error!(%error, "cannot watch the relay sockets");
            return;
        }
    };
    let mut events = mio::Events::with_capacity(RELAY_EVENTS);
    loop {
        let Ok(mut guard) = poll.readable_mut().await else {
            return;
        };
        if let Err(error) = guard
            .get_inner_mut()
            .poll(&mut events, Some(Duration::ZERO))
        {
            if error.kind() != io::ErrorKind::Interrupted {
                tracing::error!(%error, "polling the relay sockets failed");
                return;
            }
            continue;
        }
        if events.is_empty() {
            // Tokio keeps the readiness if the poll became ready again meanwhile.
            guard.clear_ready();
            continue;
        }
        let now = Instant::now();
        for event in events.iter() {
            if let Some(socket) = RelaySocket::from_token(event.token()) {
                worker.drain_relay(socket, now);
            }
        }
        worker.flush();
    }
}

async fn accept_loop(
    worker: Rc<Worker>,
    listener: TcpListener,
    transport: Transport,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    loop {
        let (stream, addr) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::debug!(%error, "accept failed");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let client = ClientSocket::new(transport, normalise(addr));
        let worker = worker.clone();
        match (transport, tls.clone()) {
            (Transport::Tls, Some(acceptor)) => {
                tokio::task::spawn_local(async move {
                    // A handshake that stalls must not hold a connection open for ever.
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(stream)) => serve_stream(worker, stream, client).await,
                        Ok(Err(error)) => tracing::debug!(%error, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                });
            }
            _ => {
                tokio::task::spawn_local(serve_stream(worker, stream, client));
            }
        }
    }
}

async fn serve_stream<S>(worker: Rc<Worker>, stream: S, client: ClientSocket)
where
    S: AsyncRead + AsyncWrite + 'static,
{
    let (mut reader, mut writer) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(STREAM_QUEUE);
    worker.streams.borrow_mut().insert(client, tx);
    let writer_task = tokio::task::spawn_local(async move {
        while let Some(frame) = rx.recv().await {
            if writer.write_all(&frame).await.is_err() {
                return;
            }
        }
    });
    let mut buffer = vec![0u8; 4 + MAX_DATAGRAM + 4];
    let mut filled = 0;
    'read: loop {
        match reader.read(&mut buffer[filled..]).await {
            Ok(0) | Err(_) => break,
            Ok(n) => filled += n,
        }
        let now = Instant::now();
        let mut start = 0;
        while let Some(length) = stream_frame_len(&buffer[start..filled]) {
            let Ok(length) = length else {
                // Neither STUN nor ChannelData: the stream cannot be re-synchronised.
                break 'read;
            };
            if filled - start < length {
                break;
            }
            worker.on_client_data(client, &buffer[start..start + length], now);
            start += length;
        }
        worker.flush();
        buffer.copy_within(start..filled, 0);
        filled -= start;
    }
    worker.streams.borrow_mut().remove(&client);
    worker
        .server
        .borrow_mut()
        .handle_client_disconnected(client);
    worker.run_commands();
    worker.flush();
    writer_task.abort();
}

async fn timer_loop(worker: Rc<Worker>, ledger: Arc<AllocationLedger>) {
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let stats = {
            let mut server = worker.server.borrow_mut();
            server.handle_timeout(Instant::now());
            server.take_stats()
        };
        worker.run_commands();
        worker.flush();
        let send_failures = worker.send_failures.replace(0);
        record_metrics(&stats, send_failures, ledger.total());
    }
}

fn record_metrics(stats: &Stats, send_failures: u64, allocations: u32) {
    metrics::gauge!("relay_allocations").set(f64::from(allocations));
    metrics::counter!("relay_allocations_created_total").increment(stats.allocations_created);
    metrics::counter!("relay_packets_total", "direction" => "client_to_peer")
        .increment(stats.client_to_peer_packets);
    metrics::counter!("relay_packets_total", "direction" => "peer_to_client")
        .increment(stats.peer_to_client_packets);
    metrics::counter!("relay_bytes_total", "direction" => "client_to_peer")
        .increment(stats.client_to_peer_bytes);
    metrics::counter!("relay_bytes_total", "direction" => "peer_to_client")
        .increment(stats.peer_to_client_bytes);
    for (reason, count) in DropReason::ALL.iter().zip(stats.drops) {
        metrics::counter!("relay_drops_total", "reason" => reason.label()).increment(count);
    }
    metrics::counter!("relay_drops_total", "reason" => "send_failed").increment(send_failures);
    metrics::counter!("relay_auth_failures_total").increment(stats.auth_failures);
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Receives one datagram on `socket`, waiting at most five seconds.
    fn receive_one(socket: &std::net::UdpSocket) -> (Vec<u8>, SocketAddr) {
        socket.set_nonblocking(false).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buffer = [0u8; 2048];
        let (len, from) = socket.recv_from(&mut buffer).unwrap();
        (buffer[..len].to_vec(), from)
    }

    /// The kernel hands an allocation's connected socket the datagrams of its peer and the
    /// bound socket everyone else's; what the connected one sends leaves from the relayed
    /// address. Another socket that does not share the port still cannot bind it.
    #[test]
    fn a_connected_relay_socket_takes_its_peers_datagrams_and_no_others() {
        let (bound, _) = bind_relay(IpAddr::V4(Ipv4Addr::LOCALHOST), 0).unwrap();
        let local = bound.local_addr().unwrap();
        let peer = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let other = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let connected = connect_relay(local, peer.local_addr().unwrap()).unwrap();
        let bound = std::net::UdpSocket::from(bound);
        let connected = std::net::UdpSocket::from(connected);

        other.send_to(b"from another peer", local).unwrap();
        peer.send_to(b"from the peer", local).unwrap();
        assert_eq!(
            receive_one(&connected),
            (b"from the peer".to_vec(), peer.local_addr().unwrap())
        );
        assert_eq!(
            receive_one(&bound),
            (b"from another peer".to_vec(), other.local_addr().unwrap())
        );

        connected.send(b"to the peer").unwrap();
        assert_eq!(receive_one(&peer), (b"to the peer".to_vec(), local));

        let taken = std::net::UdpSocket::bind(local).unwrap_err();
        assert_eq!(taken.kind(), io::ErrorKind::AddrInUse);
    }

    #[test]
    fn a_relay_socket_token_carries_its_port_and_slot() {
        for (port, slot) in [
            (0, 0),
            (1, 2),
            (u16::MAX, 0),
            (49_152, 2),
            (u16::MAX, u8::MAX),
        ] {
            let socket = RelaySocket {
                port: AllocationPort::new(port),
                slot,
            };
            assert_eq!(RelaySocket::from_token(socket.token()), Some(socket));
        }
    }

    /// A relay socket still receives, with each datagram's source, but without the control
    /// messages `quinn-udp` asked for (it reports the destination address only from them).
    #[test]
    fn relay_sockets_receive_without_control_messages() {
        let (socket, state) = bind_relay(IpAddr::V4(Ipv4Addr::LOCALHOST), 0).unwrap();
        let socket: std::net::UdpSocket = std::net::UdpSocket::from(socket);
        socket.set_nonblocking(false).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let sender = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        sender
            .send_to(b"media", socket.local_addr().unwrap())
            .unwrap();

        let mut storage = [0u8; 2048];
        let mut buffers = [IoSliceMut::new(&mut storage)];
        let mut metas = [RecvMeta::default()];
        let count = state
            .recv((&socket).into(), &mut buffers, &mut metas)
            .unwrap();
        assert_eq!(count, 1);
        assert_eq!(&storage[..metas[0].len], b"media");
        assert_eq!(metas[0].addr, sender.local_addr().unwrap());
        assert_eq!(metas[0].dst_ip, None);
        assert_eq!(metas[0].ecn, None);
    }
}
