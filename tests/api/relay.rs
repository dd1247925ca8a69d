//! `kontakt serve` embeds the TURN relay, and the credentials it hands to room
//! participants open allocations on it.

use std::net::SocketAddr;
use std::time::Duration;

use media_relay::credentials;
use media_relay::stun::{attr, Class, Message, MessageBuilder, Method};
use signaling::ids::PartyId;
use tokio::net::UdpSocket;
use web::ws::TurnIssuer;

pub(crate) async fn exchange(socket: &UdpSocket, relay: SocketAddr, request: &[u8]) -> Vec<u8> {
    socket.send_to(request, relay).await.expect("sent");
    let mut buf = vec![0u8; 2048];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut buf))
        .await
        .expect("the relay answers within 5 s")
        .expect("received");
    buf.truncate(n);
    buf
}

pub(crate) fn error_code(message: &Message<'_>) -> Option<u16> {
    message
        .get(attr::ERROR_CODE)
        .map(|v| u16::from(v[2] & 0x07) * 100 + u16::from(v[3]))
}

#[tokio::test]
async fn the_embedded_relay_accepts_the_credentials_kontakt_issues() {
    let app = kontakt_tests::spawn_app(booking::testing::TestDb::sqlite().await, "sqlite").await;
    let relay = app.relay_udp.expect("the relay runs by default");
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();

    let binding = MessageBuilder::new(Method::Binding, Class::Request, [1; 12]).finish();
    let reply = exchange(&socket, relay, &binding).await;
    let reply = Message::parse(&reply).expect("a STUN response");
    assert_eq!(reply.class(), Class::Success);
    assert_eq!(
        reply.get_xor_address(attr::XOR_MAPPED_ADDRESS),
        Some(socket.local_addr().unwrap())
    );

    let allocate = |tid: u8, auth: Option<(&str, &str, &str, &str)>| {
        let mut b = MessageBuilder::new(Method::Allocate, Class::Request, [tid; 12]);
        b.add(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        if let Some((user, realm, nonce, password)) = auth {
            b.add(attr::USERNAME, user.as_bytes())
                .add(attr::REALM, realm.as_bytes())
                .add(attr::NONCE, nonce.as_bytes())
                .add_integrity(&credentials::long_term_key(user, realm, password));
        }
        b.add_fingerprint();
        b.finish()
    };
    let challenge = exchange(&socket, relay, &allocate(2, None)).await;
    let challenge = Message::parse(&challenge).unwrap();
    assert_eq!(
        error_code(&challenge),
        Some(401),
        "unauthenticated Allocate is challenged"
    );
    let realm = challenge.get_str(attr::REALM).unwrap().to_owned();
    let nonce = challenge.get_str(attr::NONCE).unwrap().to_owned();

    let secret = std::fs::read_to_string(app.data_dir().join("turn-secret"))
        .expect("kontakt generated the TURN secret");
    let issuer = TurnIssuer::new(secret.trim(), vec![], 600);
    let party = PartyId::parse("resident:r1").unwrap();
    let issued = issuer.issue(&party, kontakt_tests::now());
    let granted = exchange(
        &socket,
        relay,
        &allocate(
            3,
            Some((&issued.username, &realm, &nonce, &issued.password)),
        ),
    )
    .await;
    let granted = Message::parse(&granted).unwrap();
    assert_eq!(
        granted.class(),
        Class::Success,
        "error {:?}",
        error_code(&granted)
    );
    assert!(granted.get_xor_address(attr::XOR_RELAYED_ADDRESS).is_some());

    let forged = TurnIssuer::new("another-secret-of-at-least-32-characters", vec![], 600)
        .issue(&party, kontakt_tests::now());
    let socket2 = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let refused = exchange(
        &socket2,
        relay,
        &allocate(
            4,
            Some((&forged.username, &realm, &nonce, &forged.password)),
        ),
    )
    .await;
    let refused = Message::parse(&refused).unwrap();
    assert_eq!(
        error_code(&refused),
        Some(401),
        "credentials under another secret are refused"
    );
}
