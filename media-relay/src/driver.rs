//! The tokio driver: sockets, timers and metrics around the sans-IO [`Server`].
//!
//! Each worker is one OS thread with a current-thread runtime and a `LocalSet`, owning one
//! [`Server`], its own SO_REUSEPORT listeners and the relay sockets of its allocations. Because
//! everything a worker touches lives on its thread, the server sits in a `RefCell` instead of a
//! mutex, and relayed datagrams are handled without locks or allocations: the client socket is
//! read in batches with `recvmmsg` (through `quinn-udp`), and peer datagrams are received into a
//! buffer with headroom, where the server writes the ChannelData header in place.

use std::cell::RefCell;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use quinn_udp::{RecvMeta, UdpSocketState, BATCH_SIZE};
use rustc_hash::FxHashMap;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle as TaskHandle;

use crate::config::{ConfigError, RelayConfig};
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

fn bind_udp(addr: SocketAddr) -> io::Result<(std::net::UdpSocket, SocketAddr)> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_port(true)?;
    // The kernel's default buffer sizes are kept on purpose: a multi-megabyte receive queue
    // turns overload into seconds of delay, which makes clients time out and retransmit
    // requests, instead of the brief loss that real-time media copes with.
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

/// Sends a datagram with a plain `sendto` on the non-blocking socket. Tokio's `try_send_to`
/// would refuse until the reactor has seen the socket become writable, which a relay socket
/// bound a moment ago has not, and UDP sends need no readiness tracking: a full buffer is a drop.
fn send_now(socket: &impl std::os::fd::AsFd, bytes: &[u8], to: SocketAddr) -> io::Result<usize> {
    socket2::SockRef::from(socket).send_to(bytes, &to.into())
}

fn bind_relay(ip: IpAddr, port: u16) -> io::Result<RelayFd> {
    let addr = SocketAddr::new(ip, port);
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    let socket: std::net::UdpSocket = socket.into();
    let state = UdpSocketState::new((&socket).into())?;
    Ok(RelayFd {
        fd: UdpSocket::from_std(socket)?,
        state,
    })
}

/// A relay socket with its `quinn-udp` state for `recvmmsg`. Sends bypass the reactor
/// (see [`send_now`]).
struct RelayFd {
    fd: UdpSocket,
    state: UdpSocketState,
}

/// Datagrams read from a relay socket per `recvmmsg` call. Peer traffic per allocation is
/// light, so a small batch usually drains the queue and tells us so.
const RELAY_BATCH: usize = 8;

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
    relays: RefCell<FxHashMap<AllocationPort, RelaySocket>>,
    streams: RefCell<FxHashMap<ClientSocket, mpsc::Sender<Vec<u8>>>>,
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

struct RelaySocket {
    socket: Rc<RelayFd>,
    task: TaskHandle<()>,
}

async fn worker_main(setup: WorkerSetup, mut shutdown: watch::Receiver<bool>) {
    let WorkerSetup {
        server,
        sockets,
        tls,
        relay_bind,
        ledger,
    } = setup;
    let udp = match sockets.udp.map(UdpSocket::from_std).transpose() {
        Ok(udp) => udp.map(Rc::new),
        Err(error) => {
            tracing::error!(%error, "cannot register the UDP listener");
            return;
        }
    };
    let worker = Rc::new(Worker {
        server: RefCell::new(server),
        udp,
        relays: RefCell::new(FxHashMap::default()),
        streams: RefCell::new(FxHashMap::default()),
        peer_buffer: RefCell::new(vec![0; PEER_HEADROOM + MAX_DATAGRAM + PEER_TAILROOM]),
        relay_batch: RefCell::new(RelayBatch {
            storage: Vec::new(),
            metas: [RecvMeta::default(); RELAY_BATCH],
        }),
        relay_bind,
        send_failures: std::cell::Cell::new(0),
    });
    SELF.with(|cell| *cell.borrow_mut() = Some(worker.clone()));
    let mut tasks = Vec::new();
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
    for (_, relay) in worker.relays.borrow_mut().drain() {
        relay.task.abort();
    }
    worker.streams.borrow_mut().clear();
    SELF.with(|cell| cell.borrow_mut().take());
}

impl Worker {
    /// Feeds one client datagram or frame to the server and relays what it returns.
    fn on_client_data(&self, client: ClientSocket, bytes: &[u8], now: Instant) {
        let forward = self
            .server
            .borrow_mut()
            .handle_client_input(client, bytes, now);
        if let Some(forward) = forward {
            let relays = self.relays.borrow();
            if let Some(relay) = relays.get(&forward.port) {
                if send_now(&relay.socket.fd, forward.payload, forward.peer.addr()).is_err() {
                    self.send_failures.set(self.send_failures.get() + 1);
                }
            }
        }
        self.run_commands();
    }

    fn send_to_client(&self, client: ClientSocket, bytes: &[u8]) {
        let sent = match client.transport() {
            Transport::Udp => self
                .udp
                .as_ref()
                .is_some_and(|udp| send_now(udp, bytes, client.addr()).is_ok()),
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
                    match bind_relay(ip, port.value()) {
                        Ok(socket) => {
                            let socket = Rc::new(socket);
                            let task = tokio::task::spawn_local(relay_loop(
                                self.self_rc(),
                                socket.clone(),
                                port,
                            ));
                            self.relays
                                .borrow_mut()
                                .insert(port, RelaySocket { socket, task });
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
                    if let Some(relay) = self.relays.borrow_mut().remove(&port) {
                        relay.task.abort();
                    }
                }
            }
        }
    }

    fn self_rc(&self) -> Rc<Worker> {
        SELF.with(|cell| cell.borrow().clone().expect("worker registered before use"))
    }
}

thread_local! {
    /// The worker of this thread, so that commands run from any of its tasks can spawn relay
    /// tasks that hold the worker.
    static SELF: RefCell<Option<Rc<Worker>>> = const { RefCell::new(None) };
}

async fn client_udp_loop(worker: Rc<Worker>) {
    let Some(socket) = worker.udp.clone() else {
        return;
    };
    let state = match UdpSocketState::new((&*socket).into()) {
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

async fn relay_loop(worker: Rc<Worker>, socket: Rc<RelayFd>, port: AllocationPort) {
    // With GRO the kernel may coalesce several datagrams of one peer into one buffer.
    let slot = if socket.state.gro_segments() > 1 {
        MAX_DATAGRAM
    } else {
        2048
    };
    loop {
        if socket.fd.readable().await.is_err() {
            return;
        }
        let now = Instant::now();
        loop {
            let mut batch = worker.relay_batch.borrow_mut();
            let RelayBatch { storage, metas } = &mut *batch;
            if storage.len() < slot * RELAY_BATCH {
                storage.resize(slot * RELAY_BATCH, 0);
            }
            // A short batch means the queue is empty. Reporting it to tokio as WouldBlock
            // clears the readiness flag now, which saves the read that would only return
            // EAGAIN; tokio keeps the flag if a datagram arrived meanwhile, so none is missed.
            let mut drained = 0;
            let received = {
                let mut chunks = storage.chunks_mut(slot);
                let mut buffers: [IoSliceMut<'_>; RELAY_BATCH] =
                    std::array::from_fn(|_| IoSliceMut::new(chunks.next().unwrap_or_default()));
                socket.fd.try_io(tokio::io::Interest::READABLE, || {
                    let count = socket
                        .state
                        .recv((&socket.fd).into(), &mut buffers, metas)?;
                    if count < RELAY_BATCH {
                        drained = count;
                        return Err(io::ErrorKind::WouldBlock.into());
                    }
                    Ok(count)
                })
            };
            let (count, last) = match received {
                Ok(count) => (count, false),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => (drained, true),
                Err(error) => {
                    // ICMP errors from earlier sends surface here; the next read goes on.
                    tracing::trace!(%error, port = port.value(), "relay receive failed");
                    continue;
                }
            };
            let mut buffer = worker.peer_buffer.borrow_mut();
            for (index, meta) in metas.iter().take(count).enumerate() {
                let data = &storage[index * slot..index * slot + meta.len];
                let from = PeerSocket::new(normalise(meta.addr));
                for segment in data.chunks(meta.stride.max(1)) {
                    // The copy leaves room in front for the ChannelData or Data indication
                    // header; for media-sized datagrams it costs less than the syscall saved.
                    buffer[PEER_HEADROOM..PEER_HEADROOM + segment.len()].copy_from_slice(segment);
                    let out = worker.server.borrow_mut().handle_peer_traffic(
                        port,
                        from,
                        &mut buffer,
                        segment.len(),
                        now,
                    );
                    if let Some((client, bytes)) = out {
                        worker.send_to_client(client, bytes);
                    }
                }
            }
            if last {
                break;
            }
        }
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
        buffer.copy_within(start..filled, 0);
        filled -= start;
    }
    worker.streams.borrow_mut().remove(&client);
    worker
        .server
        .borrow_mut()
        .handle_client_disconnected(client);
    worker.run_commands();
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
