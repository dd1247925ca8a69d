//! Two in-process WebRTC peers (the `webrtc` crate), forced onto relay candidates
//! (`ice_transport_policy: relay`), open a data channel and exchange messages through our relay
//! on loopback. This is the path every Kontakt meeting takes. It needs no external programs.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{credentials_for, loopback_config, start};
use tokio::sync::mpsc;
use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder,
    RTCIceGatheringState, RTCIceServer, RTCIceTransportPolicy, RTCPeerConnectionIceErrorEvent,
    RTCPeerConnectionState, RTCSessionDescription,
};

/// How long any one step may take before the test fails; generous for a loaded machine.
const STEP: Duration = Duration::from_secs(30);

/// What a peer connection reports, forwarded to the test as channel messages.
enum Event {
    Gathered,
    State(RTCPeerConnectionState),
    CandidateError(String),
    DataChannel(Arc<dyn DataChannel>),
}

struct Forwarder(mpsc::UnboundedSender<Event>);

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Forwarder {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            let _ = self.0.send(Event::Gathered);
        }
    }

    async fn on_ice_candidate_error(&self, event: RTCPeerConnectionIceErrorEvent) {
        let _ = self.0.send(Event::CandidateError(format!("{event:?}")));
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let _ = self.0.send(Event::State(state));
    }

    async fn on_data_channel(&self, data_channel: Arc<dyn DataChannel>) {
        let _ = self.0.send(Event::DataChannel(data_channel));
    }
}

/// A peer connection and the events it reported.
struct Peer {
    connection: Box<dyn PeerConnection>,
    events: mpsc::UnboundedReceiver<Event>,
    /// Whether the connection has reported `Connected`, whatever was being waited for then.
    connected: bool,
}

impl Peer {
    async fn new(ice_server: RTCIceServer) -> Peer {
        let (tx, events) = mpsc::unbounded_channel();
        let configuration = RTCConfigurationBuilder::new()
            .with_ice_servers(vec![ice_server])
            .with_ice_transport_policy(RTCIceTransportPolicy::Relay)
            .build();
        let connection = PeerConnectionBuilder::new()
            .with_configuration(configuration)
            .with_handler(Arc::new(Forwarder(tx)))
            .with_udp_addrs(vec!["127.0.0.1:0"])
            .build()
            .await
            .expect("peer connection builds");
        Peer {
            connection: Box::new(connection),
            events,
            connected: false,
        }
    }

    /// Waits for the next event `select` picks, failing on a failed connection.
    async fn wait_for<T>(&mut self, what: &str, mut select: impl FnMut(Event) -> Option<T>) -> T {
        let mut errors = Vec::new();
        let connected = &mut self.connected;
        let events = &mut self.events;
        let wait = async {
            loop {
                match events.recv().await.expect("the handler lives") {
                    Event::State(RTCPeerConnectionState::Failed) => {
                        panic!("the connection failed while waiting for {what}; {errors:?}")
                    }
                    Event::CandidateError(error) => errors.push(error),
                    event => {
                        if matches!(event, Event::State(RTCPeerConnectionState::Connected)) {
                            *connected = true;
                        }
                        if let Some(found) = select(event) {
                            return found;
                        }
                    }
                }
            }
        };
        tokio::time::timeout(STEP, wait)
            .await
            .unwrap_or_else(|_| panic!("no {what} within {STEP:?}"))
    }

    async fn wait_until_connected(&mut self, who: &str) {
        if !self.connected {
            self.wait_for(&format!("the {who} to connect"), |event| {
                matches!(event, Event::State(RTCPeerConnectionState::Connected)).then_some(())
            })
            .await;
        }
    }

    /// Sets the local description and returns it once ICE gathering is complete, so it carries
    /// every candidate and no trickling is needed.
    async fn gathered_description(&mut self, description: RTCSessionDescription) -> String {
        self.connection
            .set_local_description(description)
            .await
            .expect("local description");
        self.wait_for("complete ICE gathering", |event| {
            matches!(event, Event::Gathered).then_some(())
        })
        .await;
        self.connection
            .local_description()
            .await
            .expect("a local description")
            .sdp
    }
}

/// Forwards a data channel's messages to a channel, and its opening to another.
fn pump(
    channel: Arc<dyn DataChannel>,
) -> (mpsc::UnboundedReceiver<()>, mpsc::UnboundedReceiver<String>) {
    let (open_tx, open_rx) = mpsc::unbounded_channel();
    let (message_tx, message_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(event) = channel.poll().await {
            match event {
                DataChannelEvent::OnOpen => {
                    let _ = open_tx.send(());
                }
                DataChannelEvent::OnMessage(message) => {
                    let _ = message_tx.send(String::from_utf8_lossy(&message.data).into_owned());
                }
                DataChannelEvent::OnClose => break,
                _ => {}
            }
        }
    });
    (open_rx, message_rx)
}

async fn next<T>(receiver: &mut mpsc::UnboundedReceiver<T>, what: &str) -> T {
    tokio::time::timeout(STEP, receiver.recv())
        .await
        .unwrap_or_else(|_| panic!("no {what} within {STEP:?}"))
        .unwrap_or_else(|| panic!("{what}: the channel closed"))
}

/// The candidate types an SDP offers, e.g. `["relay", "relay"]`.
fn candidate_types(sdp: &str) -> Vec<String> {
    sdp.lines()
        .filter(|line| line.starts_with("a=candidate:"))
        .filter_map(|line| line.split(" typ ").nth(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_only_peers_exchange_data_channel_messages_through_the_relay() {
    // No allow-list, as in production: each side's peer is a relayed address of this relay,
    // which it lets clients reach although it is a loopback address.
    let relay = start(media_relay::RelayConfig {
        allowed_peer_ranges: Vec::new(),
        ..loopback_config()
    });
    let server = relay.udp_addr().unwrap();
    let ice_server = |subject: &str| {
        let (username, credential) = credentials_for(subject, 600);
        RTCIceServer {
            urls: vec![format!("turn:{server}?transport=udp")],
            username,
            credential,
        }
    };
    let mut offerer = Peer::new(ice_server("offerer")).await;
    let mut answerer = Peer::new(ice_server("answerer")).await;

    let channel = offerer
        .connection
        .create_data_channel("chat", None)
        .await
        .expect("data channel");
    let (mut offerer_open, mut offerer_messages) = pump(channel.clone());
    let offer = offerer.connection.create_offer(None).await.expect("offer");
    let offer_sdp = offerer.gathered_description(offer).await;
    let offer = offerer.connection.local_description().await.unwrap();

    answerer
        .connection
        .set_remote_description(offer)
        .await
        .expect("remote offer");
    let answer = answerer
        .connection
        .create_answer(None)
        .await
        .expect("answer");
    let answer_sdp = answerer.gathered_description(answer).await;
    let answer = answerer.connection.local_description().await.unwrap();
    offerer
        .connection
        .set_remote_description(answer)
        .await
        .expect("remote answer");

    // Each side offers only relayed candidates, all allocated on our relay.
    for (side, sdp) in [("offer", &offer_sdp), ("answer", &answer_sdp)] {
        let types = candidate_types(sdp);
        assert!(!types.is_empty(), "the {side} has no candidates:\n{sdp}");
        assert!(types.iter().all(|t| t == "relay"), "{side}: {types:?}");
    }
    assert!(
        relay.allocation_count() >= 2,
        "{}",
        relay.allocation_count()
    );

    let answerer_channel = answerer
        .wait_for("a data channel", |event| match event {
            Event::DataChannel(channel) => Some(channel),
            _ => None,
        })
        .await;
    let (mut answerer_open, mut answerer_messages) = pump(answerer_channel.clone());
    offerer.wait_until_connected("offerer").await;
    answerer.wait_until_connected("answerer").await;
    next(&mut offerer_open, "open offerer channel").await;

    for i in 0..5 {
        let text = format!("offerer says {i}");
        channel.send_text(&text).await.expect("send");
        assert_eq!(
            next(&mut answerer_messages, "message to answerer").await,
            text
        );
    }
    // The answerer's channel may report opening before or after the first message.
    let _ = answerer_open.try_recv();
    for i in 0..5 {
        let text = format!("answerer says {i}");
        answerer_channel.send_text(&text).await.expect("send");
        assert_eq!(
            next(&mut offerer_messages, "message to offerer").await,
            text
        );
    }

    offerer.connection.close().await.expect("close");
    answerer.connection.close().await.expect("close");
    relay.shutdown();
}
