//! The bus that fans room and queue events out across `kontakt` nodes:
//! in-process by default, NATS when `NATS_URL` is set.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Mutex;

use async_trait::async_trait;
use futures::{Stream, StreamExt};
use tokio::sync::broadcast;

/// A stream of payloads published on one subject.
pub type Subscription = Pin<Box<dyn Stream<Item = Vec<u8>> + Send>>;

/// Publish/subscribe on subjects such as `kontakt.room.booking:b1`.
/// Delivery is at most once and in publish order per publisher; the store,
/// not the bus, is what makes events durable.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    async fn publish(&self, subject: &str, payload: Vec<u8>) -> Result<(), BusError>;
    async fn subscribe(&self, subject: &str) -> Result<Subscription, BusError>;
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("cannot connect to the bus: {0}")]
    Connect(String),
    #[error("bus operation failed: {0}")]
    Failed(String),
}

/// The subject for a room's events.
pub fn room_subject(room: &crate::ids::RoomId) -> String {
    format!("kontakt.room.{room}")
}

/// The bus a node should use: NATS when a URL is configured (`NATS_URL`),
/// else the in-process bus. The caller reads the configuration.
pub async fn connect_bus(nats_url: Option<&str>) -> Result<std::sync::Arc<dyn Bus>, BusError> {
    Ok(match nats_url {
        Some(url) => std::sync::Arc::new(NatsBus::connect(url).await?),
        None => std::sync::Arc::new(InProcessBus::default()),
    })
}

/// The bus within one process.
#[derive(Debug)]
pub struct InProcessBus {
    capacity: usize,
    subjects: Mutex<HashMap<String, broadcast::Sender<Vec<u8>>>>,
}

impl InProcessBus {
    /// A subscriber more than `capacity` messages behind loses the oldest.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            subjects: Mutex::new(HashMap::new()),
        }
    }

    /// The sender of `subject`, made if nobody has subscribed to it yet.
    fn subscribed_sender(&self, subject: &str) -> broadcast::Sender<Vec<u8>> {
        let mut subjects = self.subjects.lock().unwrap_or_else(|e| e.into_inner());
        // Forget subjects nobody listens to any more, so that one subject
        // per room does not grow without bound. Subscribing is rare next to
        // publishing, so the sweep is done here and not on every publish.
        subjects.retain(|_, s| s.receiver_count() > 0);
        subjects
            .entry(subject.to_owned())
            .or_insert_with(|| broadcast::channel(self.capacity).0)
            .clone()
    }
}

impl Default for InProcessBus {
    fn default() -> Self {
        Self::new(1024)
    }
}

#[async_trait]
impl Bus for InProcessBus {
    async fn publish(&self, subject: &str, payload: Vec<u8>) -> Result<(), BusError> {
        // Sending with no subscriber is not an error: nobody was listening.
        // Publishing looks a subject up and never makes one, which would
        // cost a channel's whole buffer for a message nobody receives.
        let mut subjects = self.subjects.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(sender) = subjects.get(subject) {
            if sender.send(payload).is_err() {
                subjects.remove(subject);
            }
        }
        Ok(())
    }

    async fn subscribe(&self, subject: &str) -> Result<Subscription, BusError> {
        let receiver = self.subscribed_sender(subject).subscribe();
        let stream = futures::stream::unfold(receiver, |mut receiver| async move {
            loop {
                match receiver.recv().await {
                    Ok(payload) => return Some((payload, receiver)),
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "bus subscriber lagged; resume covers the gap");
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        });
        Ok(stream.boxed())
    }
}

/// The bus over NATS core publish/subscribe.
#[derive(Debug, Clone)]
pub struct NatsBus {
    client: async_nats::Client,
}

impl NatsBus {
    /// Connects to `url`, such as `nats://127.0.0.1:4222`.
    pub async fn connect(url: &str) -> Result<Self, BusError> {
        let client = async_nats::connect(url)
            .await
            .map_err(|e| BusError::Connect(e.to_string()))?;
        Ok(Self { client })
    }
}

#[async_trait]
impl Bus for NatsBus {
    async fn publish(&self, subject: &str, payload: Vec<u8>) -> Result<(), BusError> {
        self.client
            .publish(subject.to_owned(), payload.into())
            .await
            .map_err(|e| BusError::Failed(e.to_string()))
    }

    async fn subscribe(&self, subject: &str) -> Result<Subscription, BusError> {
        let subscriber = self
            .client
            .subscribe(subject.to_owned())
            .await
            .map_err(|e| BusError::Failed(e.to_string()))?;
        // The server must have registered the subscription before this
        // returns, or messages another node publishes right after are lost.
        // A flush only empties our socket buffer; a message to ourselves on
        // the same connection is processed after the SUB, so its arrival
        // proves the SUB is in place.
        let barrier = self.client.new_inbox();
        let mut probe = self
            .client
            .subscribe(barrier.clone())
            .await
            .map_err(|e| BusError::Failed(e.to_string()))?;
        self.client
            .publish(barrier, Vec::new().into())
            .await
            .map_err(|e| BusError::Failed(e.to_string()))?;
        tokio::time::timeout(std::time::Duration::from_secs(10), probe.next())
            .await
            .map_err(|_| {
                BusError::Failed("the NATS server did not confirm a subscription".into())
            })?;
        Ok(subscriber.map(|m| m.payload.to_vec()).boxed())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Publishes three payloads and expects them back in order, each within
    /// a few seconds.
    async fn check(bus: &dyn Bus, subject: &str) {
        let mut sub = bus.subscribe(subject).await.unwrap();
        let mut other = bus.subscribe(&format!("{subject}.other")).await.unwrap();
        for n in 0..3u8 {
            bus.publish(subject, vec![n]).await.unwrap();
        }
        for n in 0..3u8 {
            let got = tokio::time::timeout(Duration::from_secs(5), sub.next())
                .await
                .expect("message arrives");
            assert_eq!(got, Some(vec![n]));
        }
        let nothing = tokio::time::timeout(Duration::from_millis(50), other.next()).await;
        assert!(nothing.is_err(), "another subject got a message");
    }

    #[tokio::test]
    async fn in_process_bus_delivers_in_order() {
        check(&InProcessBus::default(), "kontakt.room.test").await;
    }

    #[tokio::test]
    async fn in_process_bus_keeps_no_subject_nobody_listens_to() {
        let bus = InProcessBus::default();
        let subjects = || bus.subjects.lock().unwrap().len();
        for room in 0..100 {
            bus.publish(&format!("kontakt.room.{room}"), vec![1])
                .await
                .unwrap();
        }
        assert_eq!(subjects(), 0, "publishing made subjects");

        let sub = bus.subscribe("kontakt.room.kept").await.unwrap();
        assert_eq!(subjects(), 1);
        drop(sub);
        bus.publish("kontakt.room.kept", vec![2]).await.unwrap();
        assert_eq!(subjects(), 0, "a subject outlived its last subscriber");
    }

    /// Needs a NATS server: runs against `NATS_URL` when it is set.
    #[tokio::test]
    async fn nats_bus_delivers_in_order_when_nats_url_is_set() {
        let Ok(url) = std::env::var("NATS_URL") else {
            eprintln!("NATS_URL is not set; skipping the NATS bus test");
            return;
        };
        let bus = NatsBus::connect(&url).await.expect("connect to NATS_URL");
        let subject = format!("kontakt.test.{}", uuid::Uuid::new_v4());
        check(&bus, &subject).await;
    }
}
