//! End-to-end tests of the relay over real loopback sockets, with our own test client.
//! They need no external programs.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use common::*;
use media_relay::stun::{
    attr, write_channel_data_header, ChannelData, Class, Message, MessageBuilder, Method,
};

fn peer_socket() -> UdpSocket {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(TIMEOUT)).unwrap();
    socket
}

fn check_round_trip(mut client: TurnClient) {
    let reply = client.allocate();
    assert_eq!(reply.code, 200);
    let relayed = TurnClient::relayed_address(&reply);
    let peer = peer_socket();
    let peer_addr = peer.local_addr().unwrap();

    // Send indication out, Data indication back.
    assert_eq!(client.create_permission(peer_addr), 200);
    let mut send = MessageBuilder::new(Method::Send, Class::Indication, [1; 12]);
    send.add_xor_address(attr::XOR_PEER_ADDRESS, peer_addr)
        .add(attr::DONT_FRAGMENT, &[])
        .add(attr::DATA, b"hello peer");
    client.link.send(&send.finish());
    let mut buf = [0u8; 2048];
    let (len, from) = peer.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..len], b"hello peer");
    assert_eq!(from, relayed);
    peer.send_to(b"hello client", relayed).unwrap();
    let data = client.link.recv();
    let message = Message::parse(&data).unwrap();
    assert_eq!(message.method(), Method::Data);
    assert_eq!(message.get(attr::DATA), Some(&b"hello client"[..]));
    assert_eq!(
        message.get_xor_address(attr::XOR_PEER_ADDRESS),
        Some(peer_addr)
    );

    // ChannelData both ways.
    assert_eq!(client.channel_bind(0x4001, peer_addr), 200);
    let mut frame = vec![0u8; 4];
    write_channel_data_header(&mut frame, 0x4001, 5);
    frame.extend_from_slice(b"abcde\0\0\0");
    client.link.send(&frame);
    let (len, _) = peer.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..len], b"abcde");
    peer.send_to(b"xyz", relayed).unwrap();
    let back = client.link.recv();
    let channel_data = ChannelData::parse(&back).unwrap();
    assert_eq!(channel_data.channel, 0x4001);
    assert_eq!(channel_data.payload, b"xyz");

    // Refresh with lifetime 0 ends the allocation; later requests get 437.
    let reply = client.request(Method::Refresh, |b| {
        b.add_u32(attr::LIFETIME, 0);
    });
    assert_eq!(reply.code, 200);
    assert_eq!(reply.message().get_u32(attr::LIFETIME), Some(0));
    assert_eq!(client.create_permission(peer_addr), 437);
}

#[test]
fn udp_client_relays_through_send_indications_and_channels() {
    let relay = start(loopback_config());
    check_round_trip(TurnClient::new(
        Link::udp(relay.udp_addr().unwrap()),
        credentials_for("udp", 600),
    ));
    relay.shutdown();
}

#[test]
fn tcp_client_relays_through_send_indications_and_channels() {
    let relay = start(loopback_config());
    check_round_trip(TurnClient::new(
        Link::tcp(relay.tcp_addr().unwrap()),
        credentials_for("tcp", 600),
    ));
    relay.shutdown();
}

#[test]
fn binding_request_reports_the_mapped_address() {
    let relay = start(loopback_config());
    let mut link = Link::udp(relay.udp_addr().unwrap());
    let Link::Udp(socket, _) = &link else {
        unreachable!()
    };
    let local = socket.local_addr().unwrap();
    let mut request = MessageBuilder::new(Method::Binding, Class::Request, [2; 12]);
    request.add_fingerprint();
    link.send(&request.finish());
    let response = link.recv();
    let message = Message::parse(&response).unwrap();
    assert_eq!(message.class(), Class::Success);
    assert!(message.has_fingerprint());
    assert_eq!(
        message.get_xor_address(attr::XOR_MAPPED_ADDRESS),
        Some(local)
    );
    relay.shutdown();
}

#[test]
fn unauthenticated_allocate_gets_401() {
    let relay = start(loopback_config());
    let mut link = Link::udp(relay.udp_addr().unwrap());
    let mut request = MessageBuilder::new(Method::Allocate, Class::Request, [3; 12]);
    request.add(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    link.send(&request.finish());
    let response = link.recv();
    let message = Message::parse(&response).unwrap();
    assert_eq!(code_of(&message), 401);
    assert_eq!(message.get_str(attr::REALM), Some(REALM));
    assert!(message.get(attr::NONCE).is_some());
    relay.shutdown();
}

#[test]
fn expired_or_forged_credentials_are_refused() {
    let relay = start(loopback_config());
    let mut expired = TurnClient::new(
        Link::udp(relay.udp_addr().unwrap()),
        credentials_for("old", -10),
    );
    assert_eq!(expired.allocate().code, 401);
    let (username, _) = credentials_for("forger", 600);
    let mut forged = TurnClient::new(
        Link::udp(relay.udp_addr().unwrap()),
        (username, "not-the-password".into()),
    );
    assert_eq!(forged.allocate().code, 401);
    assert_eq!(relay.allocation_count(), 0);
    relay.shutdown();
}

#[test]
fn expired_nonce_gets_438() {
    let relay = start(media_relay::RelayConfig {
        nonce_lifetime_secs: 0,
        ..loopback_config()
    });
    let mut link = Link::udp(relay.udp_addr().unwrap());
    let (username, password) = credentials_for("nonce", 600);
    // A nonce issued with a zero lifetime has expired by the time it comes back.
    let mut first = MessageBuilder::new(Method::Allocate, Class::Request, [4; 12]);
    first.add(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    link.send(&first.finish());
    let challenge = link.recv();
    let nonce = Message::parse(&challenge)
        .unwrap()
        .get_str(attr::NONCE)
        .unwrap()
        .to_owned();
    let key = media_relay::credentials::long_term_key(&username, REALM, &password);
    let mut second = MessageBuilder::new(Method::Allocate, Class::Request, [5; 12]);
    second
        .add(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
        .add(attr::USERNAME, username.as_bytes())
        .add(attr::REALM, REALM.as_bytes())
        .add(attr::NONCE, nonce.as_bytes())
        .add_integrity(&key);
    link.send(&second.finish());
    let response = link.recv();
    let message = Message::parse(&response).unwrap();
    assert_eq!(code_of(&message), 438);
    assert!(message.get(attr::NONCE).is_some());
    relay.shutdown();
}

#[test]
fn internal_peers_get_403_without_an_allow_list() {
    let config = media_relay::RelayConfig {
        allowed_peer_ranges: Vec::new(),
        relay_ipv6: Some("::1".parse().unwrap()),
        relay_bind_ipv6: "::1".parse().unwrap(),
        ..loopback_config()
    };
    let relay = start(config);
    let mut v4 = TurnClient::new(
        Link::udp(relay.udp_addr().unwrap()),
        credentials_for("policy", 600),
    );
    assert_eq!(v4.allocate().code, 200);
    // Port 9 is outside the relay's port range, so no allocation of the relay's own, which
    // it would let clients reach on 127.0.0.1 and ::1, can be there.
    // The special-purpose ranges that are not globally reachable are refused as well, not
    // only loopback, private and link-local (issue 24).
    for peer in [
        "127.0.0.1:9",
        "0.0.0.0:9",
        "10.0.0.1:9",
        "169.254.1.1:9",
        "198.18.0.1:9",
        "192.0.0.170:9",
        "203.0.113.1:9",
    ] {
        let peer: SocketAddr = peer.parse().unwrap();
        assert_eq!(v4.create_permission(peer), 403, "{peer}");
        assert_eq!(v4.channel_bind(0x4000, peer), 403, "{peer}");
    }
    let mut v6 = TurnClient::new(
        Link::udp(relay.udp_addr().unwrap()),
        credentials_for("policy6", 600),
    );
    let reply = v6.request(Method::Allocate, |b| {
        b.add(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        b.add(attr::REQUESTED_ADDRESS_FAMILY, &[0x02, 0, 0, 0]);
    });
    assert_eq!(reply.code, 200);
    assert!(TurnClient::relayed_address(&reply).is_ipv6());
    for peer in [
        "[::ffff:127.0.0.1]:9",
        "[::1]:9",
        "[::]:9",
        "[::ffff:10.0.0.1]:9",
        "[64:ff9b::c612:1]:9",
        "[2001:db8::1]:9",
    ] {
        assert_eq!(v6.create_permission(peer.parse().unwrap()), 403, "{peer}");
    }
    relay.shutdown();
}

/// Two clients of one relay whose relayed addresses are loopback reach each other through
/// them with an empty allow-list, as two relay-only WebRTC clients do, whichever workers their
/// allocations are on. Other loopback ports stay out of reach.
#[test]
fn clients_of_one_relay_reach_each_other_without_an_allow_list() {
    let config = media_relay::RelayConfig {
        allowed_peer_ranges: Vec::new(),
        ..loopback_config()
    };
    let relay = start(config);
    let server = relay.udp_addr().unwrap();
    let mut a = TurnClient::new(Link::udp(server), credentials_for("caller", 600));
    let mut b = TurnClient::new(Link::udp(server), credentials_for("callee", 600));
    let a_relayed = TurnClient::relayed_address(&a.allocate());
    let b_relayed = TurnClient::relayed_address(&b.allocate());
    assert_eq!(a.create_permission(b_relayed), 200);
    assert_eq!(b.create_permission(a_relayed), 200);

    // A local program on loopback is no allocation of the relay.
    let bystander = peer_socket();
    let bystander_addr = bystander.local_addr().unwrap();
    assert_eq!(a.create_permission(bystander_addr), 403);
    assert_eq!(a.channel_bind(0x4000, bystander_addr), 403);

    // A Send indication to B's relayed address arrives as a Data indication from A's. One to
    // the bystander, sent first from the same relay socket, is dropped although A holds a
    // permission for 127.0.0.1.
    for (peer, data) in [
        (bystander_addr, &b"probe"[..]),
        (b_relayed, &b"hello b"[..]),
    ] {
        let mut send = MessageBuilder::new(Method::Send, Class::Indication, [7; 12]);
        send.add_xor_address(attr::XOR_PEER_ADDRESS, peer)
            .add(attr::DATA, data);
        a.link.send(&send.finish());
    }
    let data = b.link.recv();
    let message = Message::parse(&data).unwrap();
    assert_eq!(message.method(), Method::Data);
    assert_eq!(message.get(attr::DATA), Some(&b"hello b"[..]));
    assert_eq!(
        message.get_xor_address(attr::XOR_PEER_ADDRESS),
        Some(a_relayed)
    );
    // Loopback delivers as it sends, so the probe would be waiting by now.
    bystander.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 64];
    assert!(bystander.recv_from(&mut buf).is_err());

    // ChannelData from B reaches A.
    assert_eq!(b.channel_bind(0x4001, a_relayed), 200);
    let mut frame = vec![0u8; 4];
    write_channel_data_header(&mut frame, 0x4001, 7);
    frame.extend_from_slice(b"hello a\0");
    b.link.send(&frame);
    let data = a.link.recv();
    let message = Message::parse(&data).unwrap();
    assert_eq!(message.get(attr::DATA), Some(&b"hello a"[..]));
    assert_eq!(
        message.get_xor_address(attr::XOR_PEER_ADDRESS),
        Some(b_relayed)
    );
    relay.shutdown();
}

#[test]
fn exceeding_the_quota_gets_486() {
    let config = media_relay::RelayConfig {
        max_allocations_per_user: 2,
        max_allocations: 3,
        ..loopback_config()
    };
    let relay = start(config);
    let server = relay.udp_addr().unwrap();
    let creds = credentials_for("quota", 600);
    let mut clients: Vec<TurnClient> = (0..3)
        .map(|_| TurnClient::new(Link::udp(server), creds.clone()))
        .collect();
    assert_eq!(clients[0].allocate().code, 200);
    assert_eq!(clients[1].allocate().code, 200);
    assert_eq!(clients[2].allocate().code, 486, "per-user quota");
    let mut other = TurnClient::new(Link::udp(server), credentials_for("someone-else", 600));
    assert_eq!(other.allocate().code, 200);
    let mut fourth = TurnClient::new(Link::udp(server), credentials_for("third-user", 600));
    assert_eq!(fourth.allocate().code, 486, "total quota");
    relay.shutdown();
}

#[test]
fn bandwidth_cap_drops_excess_traffic() {
    let config = media_relay::RelayConfig {
        bandwidth_bytes_per_sec: 10_000,
        ..loopback_config()
    };
    let relay = start(config);
    let mut client = TurnClient::new(
        Link::udp(relay.udp_addr().unwrap()),
        credentials_for("bw", 600),
    );
    let reply = client.allocate();
    let relayed = TurnClient::relayed_address(&reply);
    let peer = peer_socket();
    assert_eq!(client.channel_bind(0x4002, peer.local_addr().unwrap()), 200);
    // Sixty 1000-byte datagrams at once are six times the one-second budget.
    let mut frame = vec![0u8; 4];
    write_channel_data_header(&mut frame, 0x4002, 1000);
    frame.extend_from_slice(&[7u8; 1000]);
    for _ in 0..60 {
        client.link.send(&frame);
    }
    peer.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 2048];
    let mut received = 0;
    while peer.recv_from(&mut buf).is_ok() {
        received += 1;
    }
    assert!((5..=20).contains(&received), "received {received} of 60");
    let _ = relayed;
    relay.shutdown();
}

#[test]
fn garbage_and_bad_integrity_are_survived() {
    let relay = start(loopback_config());
    let server = relay.udp_addr().unwrap();
    let mut link = Link::udp(server);
    let mut valid = MessageBuilder::new(Method::Binding, Class::Request, [6; 12]);
    valid.add_fingerprint();
    let valid = valid.finish();
    let mut bad_fingerprint = valid.clone();
    let last = bad_fingerprint.len() - 1;
    bad_fingerprint[last] ^= 0xFF;
    let inputs: Vec<Vec<u8>> = vec![
        vec![],
        vec![0],
        valid[..10].to_vec(),
        valid[..valid.len() - 2].to_vec(),
        vec![0xFF; 100],
        vec![0x40, 0x00, 0xFF, 0xFF, 1, 2, 3],
        vec![0u8; 65_000],
        bad_fingerprint,
    ];
    for input in &inputs {
        link.send(input);
    }
    // None of those is answered (RFC 8489, section 6.3: malformed messages are discarded).
    assert_eq!(link.recv_within(Duration::from_millis(300)), None);

    // A request whose MESSAGE-INTEGRITY is wrong gets 401, not an allocation.
    let (username, _) = credentials_for("integrity", 600);
    let mut client = TurnClient::new(Link::udp(server), (username, "wrong".into()));
    assert_eq!(client.allocate().code, 401);

    // The relay still answers.
    link.send(&valid);
    assert_eq!(code_of(&Message::parse(&link.recv()).unwrap()), 200);

    // A TCP client that sends nonsense is disconnected without harm to others.
    let mut tcp = Link::tcp(relay.tcp_addr().unwrap());
    tcp.send(&[0xC0; 64]);
    assert_eq!(tcp.recv_within(Duration::from_secs(2)), None);
    link.send(&valid);
    assert_eq!(code_of(&Message::parse(&link.recv()).unwrap()), 200);
    relay.shutdown();
}

#[test]
fn closing_a_tcp_connection_frees_its_allocation() {
    let relay = start(loopback_config());
    let mut client = TurnClient::new(
        Link::tcp(relay.tcp_addr().unwrap()),
        credentials_for("tcp-close", 600),
    );
    assert_eq!(client.allocate().code, 200);
    assert_eq!(relay.allocation_count(), 1);
    drop(client);
    let deadline = std::time::Instant::now() + TIMEOUT;
    while relay.allocation_count() != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "allocation outlived its connection"
        );
        std::thread::yield_now();
    }
    relay.shutdown();
}
