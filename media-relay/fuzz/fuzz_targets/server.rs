//! Drives the sans-IO server with arbitrary datagrams from two clients and a peer, moving the
//! clock forward between them. Nothing may panic, and only responses or allocation commands
//! may come out.

#![no_main]

use std::sync::Arc;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use media_relay::policy::PeerPolicy;
use media_relay::server::{
    AllocationLedger, AllocationPort, ClientSocket, PeerSocket, Server, ServerConfig, Transport,
    PEER_HEADROOM, PEER_TAILROOM,
};

fuzz_target!(|data: &[u8]| {
    let start = Instant::now();
    let mut server = Server::new(
        ServerConfig {
            realm: "fuzz".into(),
            secret: "fuzz".into(),
            nonce_key: [1; 32],
            nonce_lifetime: Duration::from_secs(600),
            relay_ipv4: Some("203.0.113.1".parse().unwrap()),
            relay_ipv6: Some("2001:db8::1".parse().unwrap()),
            ports: 50000..=50010,
            bandwidth_bytes_per_sec: Some(10_000),
            // The peers below are in documentation ranges, which the policy refuses; opening
            // them lets input reach the data path as a real peer's would.
            policy: PeerPolicy::new(vec![
                "198.51.100.0/24".parse().unwrap(),
                "2001:db8::/32".parse().unwrap(),
            ]),
            rng_seed: 1,
        },
        Arc::new(AllocationLedger::new(2, 4)),
        start,
        1_800_000_000,
    );
    let clients = [
        ClientSocket::new(Transport::Udp, "192.0.2.1:1000".parse().unwrap()),
        ClientSocket::new(Transport::Tcp, "192.0.2.2:1000".parse().unwrap()),
    ];
    let mut now = start;
    // Each chunk: selector byte, length byte, then that many bytes of input.
    let mut rest = data;
    while rest.len() >= 2 {
        let (selector, len) = (rest[0], usize::from(rest[1]));
        let body = &rest[2..(2 + len).min(rest.len())];
        rest = &rest[(2 + len).min(rest.len())..];
        now += Duration::from_secs(u64::from(selector >> 4) * 37);
        match selector & 0x3 {
            0 | 1 => {
                let _ = server.handle_client_input(clients[usize::from(selector & 1)], body, now);
            }
            2 => {
                let mut buf = vec![0u8; PEER_HEADROOM + body.len() + PEER_TAILROOM];
                buf[PEER_HEADROOM..PEER_HEADROOM + body.len()].copy_from_slice(body);
                let peer = PeerSocket::new("198.51.100.1:9".parse().unwrap());
                let port = AllocationPort::new(50000 + u16::from(selector >> 4) % 11);
                let _ = server.handle_peer_traffic(port, peer, &mut buf, body.len(), now);
            }
            _ => {
                server.handle_timeout(now);
                server.handle_client_disconnected(clients[1]);
            }
        }
        while server.poll_command().is_some() {}
    }
});
