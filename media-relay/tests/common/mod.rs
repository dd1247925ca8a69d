//! Shared by the integration tests: a relay on loopback and a small blocking TURN client
//! built on the crate's own codec.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, SystemTime};

use media_relay::credentials;
use media_relay::stun::{attr, stream_frame_len, Class, Message, MessageBuilder, Method};
use media_relay::{Relay, RelayConfig};

pub const SECRET: &str = "integration-secret";
pub const REALM: &str = "kontakt";
/// How long a test waits for an answer before it fails.
pub const TIMEOUT: Duration = Duration::from_secs(5);

static NEXT_PORTS: AtomicU16 = AtomicU16::new(0);

/// A configuration on loopback with its own relay port range, so tests in one binary do not
/// compete for ports.
pub fn loopback_config() -> RelayConfig {
    let slot = NEXT_PORTS.fetch_add(1, Ordering::Relaxed);
    // Below the kernel's ephemeral range (32768 and up), so client sockets never hold them.
    let min_port = 20_000 + (std::process::id() % 10) as u16 * 1000 + slot * 50;
    RelayConfig {
        listen_udp: Some("127.0.0.1:0".parse().unwrap()),
        listen_tcp: Some("127.0.0.1:0".parse().unwrap()),
        relay_ipv4: Some("127.0.0.1".parse().unwrap()),
        relay_bind_ipv4: "127.0.0.1".parse().unwrap(),
        min_port,
        max_port: min_port + 49,
        realm: REALM.into(),
        secret: SECRET.into(),
        workers: Some(2),
        allowed_peer_ranges: vec!["127.0.0.0/8".parse().unwrap()],
        ..RelayConfig::default()
    }
}

pub fn credentials_for(subject: &str, ttl_secs: i64) -> (String, String) {
    let now = SystemTime::now();
    if ttl_secs >= 0 {
        credentials::issue(SECRET, subject, Duration::from_secs(ttl_secs as u64), now)
    } else {
        // An expired credential: issued as if long ago.
        let past = now - Duration::from_secs((-ttl_secs) as u64 + 3600);
        credentials::issue(SECRET, subject, Duration::from_secs(3600), past)
    }
}

/// Where a client's bytes go: a UDP socket or a TCP stream.
pub enum Link {
    Udp(UdpSocket, SocketAddr),
    Tcp(TcpStream, Vec<u8>),
}

impl Link {
    pub fn udp(server: SocketAddr) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_read_timeout(Some(TIMEOUT)).unwrap();
        Link::Udp(socket, server)
    }

    pub fn tcp(server: SocketAddr) -> Self {
        let stream = TcpStream::connect(server).unwrap();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        Link::Tcp(stream, Vec::new())
    }

    pub fn send(&mut self, bytes: &[u8]) {
        match self {
            Link::Udp(socket, server) => {
                socket.send_to(bytes, *server).unwrap();
            }
            Link::Tcp(stream, _) => stream.write_all(bytes).unwrap(),
        }
    }

    /// The next datagram or frame, or `None` when nothing arrives within `timeout`.
    pub fn recv_within(&mut self, timeout: Duration) -> Option<Vec<u8>> {
        match self {
            Link::Udp(socket, _) => {
                socket.set_read_timeout(Some(timeout)).unwrap();
                let mut buf = vec![0u8; 70_000];
                let result = socket
                    .recv_from(&mut buf)
                    .ok()
                    .map(|(len, _)| buf[..len].to_vec());
                socket.set_read_timeout(Some(TIMEOUT)).unwrap();
                result
            }
            Link::Tcp(stream, pending) => {
                stream.set_read_timeout(Some(timeout)).unwrap();
                let result = loop {
                    if let Some(Ok(len)) = stream_frame_len(pending) {
                        if pending.len() >= len {
                            break Some(pending.drain(..len).collect());
                        }
                    }
                    let mut buf = [0u8; 4096];
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break None,
                        Ok(n) => pending.extend_from_slice(&buf[..n]),
                    }
                };
                stream.set_read_timeout(Some(TIMEOUT)).unwrap();
                result
            }
        }
    }

    pub fn recv(&mut self) -> Vec<u8> {
        self.recv_within(TIMEOUT).expect("an answer from the relay")
    }
}

/// A TURN client that answers the 401 challenge itself.
pub struct TurnClient {
    pub link: Link,
    pub username: String,
    pub password: String,
    nonce: Option<String>,
    next_tid: u32,
}

/// The class and error code (200 for success) of a response, with the response bytes.
pub struct Reply {
    pub code: u16,
    pub bytes: Vec<u8>,
}

impl Reply {
    pub fn message(&self) -> Message<'_> {
        Message::parse(&self.bytes).unwrap()
    }
}

pub fn code_of(message: &Message<'_>) -> u16 {
    match message.class() {
        Class::Success => 200,
        Class::Error => {
            let value = message.get(attr::ERROR_CODE).expect("ERROR-CODE");
            u16::from(value[2]) * 100 + u16::from(value[3])
        }
        other => panic!("not a response: {other:?}"),
    }
}

impl TurnClient {
    pub fn new(link: Link, (username, password): (String, String)) -> Self {
        Self {
            link,
            username,
            password,
            nonce: None,
            next_tid: 1,
        }
    }

    fn tid(&mut self) -> [u8; 12] {
        self.next_tid += 1;
        let mut tid = [0x5A; 12];
        tid[..4].copy_from_slice(&self.next_tid.to_be_bytes());
        tid
    }

    /// Sends a request signed with the client's credentials, retrying once after a 401 or
    /// 438 challenge as a real client does.
    pub fn request(&mut self, method: Method, attrs: impl Fn(&mut MessageBuilder)) -> Reply {
        for _ in 0..3 {
            let tid = self.tid();
            let mut builder = MessageBuilder::new(method, Class::Request, tid);
            attrs(&mut builder);
            if let Some(nonce) = &self.nonce {
                let key = credentials::long_term_key(&self.username, REALM, &self.password);
                builder
                    .add(attr::USERNAME, self.username.as_bytes())
                    .add(attr::REALM, REALM.as_bytes())
                    .add(attr::NONCE, nonce.as_bytes())
                    .add_integrity(&key);
            }
            builder.add_fingerprint();
            self.link.send(&builder.finish());
            let bytes = self.link.recv();
            let message = Message::parse(&bytes).expect("a well-formed response");
            assert_eq!(message.transaction_id(), tid);
            let code = code_of(&message);
            if (code == 401 || code == 438) && message.get(attr::NONCE).is_some() {
                let fresh = message.get_str(attr::NONCE).map(str::to_owned);
                if self.nonce.is_some() && code == 401 {
                    return Reply { code, bytes };
                }
                self.nonce = fresh;
                continue;
            }
            return Reply { code, bytes };
        }
        panic!("the relay kept challenging");
    }

    pub fn allocate(&mut self) -> Reply {
        self.request(Method::Allocate, |b| {
            b.add(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        })
    }

    pub fn relayed_address(reply: &Reply) -> SocketAddr {
        reply
            .message()
            .get_xor_address(attr::XOR_RELAYED_ADDRESS)
            .expect("XOR-RELAYED-ADDRESS")
    }

    pub fn create_permission(&mut self, peer: SocketAddr) -> u16 {
        self.request(Method::CreatePermission, |b| {
            b.add_xor_address(attr::XOR_PEER_ADDRESS, peer);
        })
        .code
    }

    pub fn channel_bind(&mut self, channel: u16, peer: SocketAddr) -> u16 {
        self.request(Method::ChannelBind, |b| {
            b.add_u32(attr::CHANNEL_NUMBER, u32::from(channel) << 16);
            b.add_xor_address(attr::XOR_PEER_ADDRESS, peer);
        })
        .code
    }
}

pub fn start(config: RelayConfig) -> Relay {
    Relay::start(config).expect("relay starts")
}

/// Whether an external program is on PATH. When it is not, the test prints a notice and
/// passes, except under CI (env `CI` set), where a missing program is a failure.
pub fn require_binary(name: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(name).is_file()));
    if !found {
        if std::env::var_os("CI").is_some() {
            panic!("`{name}` is required under CI: apt-get install -y coturn");
        }
        eprintln!("notice: `{name}` is not installed (apt-get install -y coturn); skipping");
    }
    found
}

/// A free UDP port on loopback, for an external program to bind.
pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Sends `probe` to `target` until something answers, so a test starts only once an external
/// server is listening.
pub fn wait_until_answering(target: SocketAddr, probe: &[u8], timeout: Duration) {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let deadline = std::time::Instant::now() + timeout;
    let mut buf = [0u8; 1024];
    while std::time::Instant::now() < deadline {
        socket.send_to(probe, target).unwrap();
        if socket.recv_from(&mut buf).is_ok() {
            return;
        }
    }
    panic!("{target} did not answer within {timeout:?}");
}

/// A STUN Binding request, the cheapest probe a TURN server answers.
pub fn binding_request() -> Vec<u8> {
    MessageBuilder::new(Method::Binding, Class::Request, [0x42; 12]).finish()
}

/// Runs a command to completion within `timeout` and returns its combined output.
pub fn run_with_timeout(command: std::process::Command, timeout: Duration) -> String {
    match run_bounded(command, timeout) {
        Ok(output) => output,
        Err(output) => panic!("did not finish within {timeout:?}; output so far:\n{output}"),
    }
}

/// Runs a command for at most `timeout`. Returns its output, as `Err` when it had to be killed.
pub fn run_bounded(command: std::process::Command, timeout: Duration) -> Result<String, String> {
    let mut command = command;
    use std::process::Stdio;
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let text = |output: std::process::Output| {
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        text
    };
    match rx.recv_timeout(timeout) {
        Ok(Ok(output)) => Ok(text(output)),
        Ok(Err(error)) => panic!("{command:?} failed: {error}"),
        Err(_) => {
            let _ = std::process::Command::new("kill")
                .arg(pid.to_string())
                .status();
            // Once killed, the waiting thread hands over what the program printed.
            match rx.recv_timeout(TIMEOUT) {
                Ok(Ok(output)) => Err(text(output)),
                _ => Err(String::new()),
            }
        }
    }
}

/// Kills a child process when the test ends, pass or fail.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
