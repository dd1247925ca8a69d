//! One connection's loop: frames from the socket go through the rate limit
//! and the parser into the hub, messages from the hub go out as frames, and
//! regular pings find connections that died silently.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use booking::{chats, Db, ServiceCode};
use futures::future::join_all;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, SinkExt, StreamExt};
use signaling::hub::Hub;
use signaling::identity::{ConversationRequest, Identity};
use signaling::ids::{ConnectionId, MunicipalityCode, RoomId, ServiceId};
use signaling::protocol::{
    parse_client_frame, ClientMessage, ErrorCode, ProtocolError, RateLimiter, ServerMessage,
};
use tokio::sync::mpsc;

use super::AnonymousChat;

/// How a connection is kept honest: the settings `ws_ping_ms` and
/// `ws_pong_timeout_ms`.
#[derive(Debug, Clone, Copy)]
pub struct Liveness {
    /// How often the server pings.
    pub ping_every: Duration,
    /// How long the server waits for a pong, or any frame, before it gives
    /// the peer up.
    pub pong_within: Duration,
}

/// Close code 1008 (policy violation, RFC 6455 section 7.4.1): the hub gave
/// up on a connection that did not keep up with its messages.
const CLOSE_TOO_SLOW: u16 = 1008;
/// Close code 1001 (going away, RFC 6455 section 7.4.1): no pong in time.
const CLOSE_GOING_AWAY: u16 = 1001;

/// Messages a connection may have handed to the hub that are not yet
/// stored and carried out. Past this, the loop stops reading frames until
/// one settles, so a connection cannot queue without bound; below it, a
/// connection's messages share the writer's batches instead of waiting a
/// whole write each.
const IN_FLIGHT: usize = 16;

/// At most how many messages from the hub go out with one flush; see
/// [`send_queued`].
const SEND_BATCH: usize = 64;

/// Runs the connection until either side ends it, then detaches it from the
/// hub.
/// `chat` is the one chat of an anonymous identity, as its token named it.
pub async fn run(
    socket: WebSocket,
    hub: Hub,
    db: Db,
    identity: Identity,
    chat: Option<AnonymousChat>,
    liveness: Liveness,
) {
    let (conn, mut from_hub) = hub.connect(identity.clone()).await;
    let (mut sink, mut stream) = socket.split();
    let mut limiter = RateLimiter::for_connection(Instant::now());
    let start = tokio::time::Instant::now();
    let mut ping = tokio::time::interval_at(start + liveness.ping_every, liveness.ping_every);
    let pong_deadline = tokio::time::sleep_until(start + liveness.pong_within);
    tokio::pin!(pong_deadline);
    let mut in_flight = FuturesUnordered::<InFlight>::new();
    loop {
        tokio::select! {
            message = from_hub.recv() => {
                let Some(message) = message else {
                    close(&mut sink, CLOSE_TOO_SLOW, "too slow").await;
                    break;
                };
                if send_queued(&mut sink, message, &mut from_hub).await.is_err() {
                    break;
                }
            }
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            frame = stream.next(), if in_flight.len() < IN_FLIGHT => {
                let frame = match frame {
                    Some(Ok(frame)) => frame,
                    Some(Err(e)) => {
                        // A frame the socket refused to read is answered
                        // with the close code the protocol promises for it;
                        // any other read error means the peer is gone.
                        if let Some(refused) = refused_frame(&e) {
                            if let Some(code) = refused.close_code() {
                                close(&mut sink, code, &refused.to_string()).await;
                            }
                        }
                        break;
                    }
                    None => break,
                };
                // Any frame shows the peer is alive, not only a pong.
                pong_deadline.as_mut().reset(tokio::time::Instant::now() + liveness.pong_within);
                let reply = match frame {
                    Message::Text(text) => match limiter.check(Instant::now()) {
                        Err(e) => Reply::Error(e),
                        Ok(()) => match parse_client_frame(text.as_str()) {
                            Err(e) => Reply::Error(e),
                            Ok(message) => match apply(&hub, &db, conn, &identity, chat.as_ref(), message, &mut in_flight).await {
                                Some(answer) => Reply::Message(answer),
                                None => Reply::None,
                            },
                        },
                    },
                    Message::Binary(_) => Reply::Error(ProtocolError::Binary),
                    Message::Pong(_) => Reply::None,
                    // The socket answers pings itself.
                    Message::Ping(_) => Reply::None,
                    Message::Close(_) => break,
                };
                let answer = match reply {
                    Reply::None => continue,
                    Reply::Message(message) => message,
                    Reply::Error(e) => {
                        if let Some(code) = e.close_code() {
                            close(&mut sink, code, &e.to_string()).await;
                            break;
                        }
                        e.to_message()
                    }
                };
                if sink.send(text(&answer)).await.is_err() {
                    break;
                }
            }
            _ = ping.tick() => {
                if sink.send(Message::Ping(Vec::new().into())).await.is_err() {
                    break;
                }
            }
            _ = &mut pong_deadline => {
                close(&mut sink, CLOSE_GOING_AWAY, "no pong").await;
                break;
            }
        }
    }
    hub.disconnect(conn).await;
}

/// What the loop sends back for one frame, besides what the hub sends.
enum Reply {
    None,
    Message(ServerMessage),
    Error(ProtocolError),
}

/// A message the hub has yet to store and carry out, its effects included.
type InFlight = Pin<Box<dyn Future<Output = ()> + Send + Sync>>;

/// Hands one message to the hub, and returns an answer the endpoint gives
/// itself, if any. What the hub has yet to store and carry out joins
/// `in_flight`. `queue.open` is the one message the endpoint handles,
/// because eligibility comes from `booking`.
///
/// A `ping` is a barrier: the hub gets it, and answers `pong`, only once
/// everything this connection sent before it is carried out, effects
/// included (audit entries, mail, booking outcomes), which the hub runs
/// after delivering, off its lock. The loop goes on reading and sending
/// meanwhile.
async fn apply(
    hub: &Hub,
    db: &Db,
    conn: ConnectionId,
    identity: &Identity,
    chat: Option<&AnonymousChat>,
    message: ClientMessage,
    in_flight: &mut FuturesUnordered<InFlight>,
) -> Option<ServerMessage> {
    if matches!(message, ClientMessage::Ping) && !in_flight.is_empty() {
        let before: Vec<InFlight> = std::mem::take(in_flight).into_iter().collect();
        let hub = hub.clone();
        let (settled, carried_out) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            join_all(before).await;
            hub.submit(conn, message).await.await;
            let _ = settled.send(());
        });
        in_flight.push(Box::pin(carried_out.map(|_| ())));
        return None;
    }
    let ClientMessage::QueueOpen { service } = message else {
        in_flight.push(Box::pin(hub.submit(conn, message).await));
        return None;
    };
    let home_municipality = match (identity, chat) {
        (
            Identity::Resident {
                home_municipality, ..
            },
            _,
        ) => home_municipality.clone(),
        (Identity::Anonymous { conversation }, Some(chat)) => {
            match anonymous_opening(db, conversation, chat, &service).await {
                Ok(Ok(home)) => home,
                Ok(Err(refusal)) => return Some(refusal),
                Err(e) => {
                    tracing::error!(error = ?e, "checking an anonymous chat failed");
                    return Some(ServerMessage::error(
                        ErrorCode::StorageUnavailable,
                        "not opened; try again",
                        None,
                    ));
                }
            }
        }
        _ => {
            return Some(ServerMessage::error(
                ErrorCode::Forbidden,
                "only residents can open a chat",
                None,
            ))
        }
    };
    let anonymous = chat.is_some();
    let eligible = match chat_eligibility(db, &home_municipality, &service, anonymous).await {
        Ok(Ok(eligible)) => eligible,
        Ok(Err(refusal)) => return Some(refusal),
        Err(e) => {
            tracing::error!(error = ?e, %service, "computing chat eligibility failed");
            return Some(ServerMessage::error(
                ErrorCode::StorageUnavailable,
                "not opened; try again",
                None,
            ));
        }
    };
    let request = ConversationRequest {
        service,
        home_municipality,
        eligible_municipalities: eligible,
    };
    match hub.open_conversation(conn, request).await {
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(error = %e, "opening a chat failed");
            Some(ServerMessage::error(
                ErrorCode::StorageUnavailable,
                "not opened; try again",
                None,
            ))
        }
    }
}

/// The home municipality an anonymous chat is opened for, or why it may
/// not be: a token opens one chat, once, for the service it names. `room`
/// is the chat's conversation, the room its token names.
async fn anonymous_opening(
    db: &Db,
    room: &RoomId,
    chat: &AnonymousChat,
    service: &ServiceId,
) -> Result<Result<MunicipalityCode, ServerMessage>, booking::Error> {
    if service.as_str() != chat.service {
        return Ok(Err(ServerMessage::error(
            ErrorCode::Forbidden,
            "this chat is for another service",
            None,
        )));
    }
    // Its room is fixed by the token, so a chat that closed must not open
    // again under the same id.
    if booking::events::queue_entry(db, room).await?.is_some() {
        return Ok(Err(ServerMessage::error(
            ErrorCode::InvalidState,
            "this chat was opened before; ask for a new one",
            None,
        )));
    }
    let home = MunicipalityCode::parse(&chat.home)
        .map_err(|_| booking::Error::Corrupt("a chat token's home is not a code".into()))?;
    Ok(Ok(home))
}

/// The municipalities whose staff may do the pre-assessment of `service`
/// for a resident of `home`, now, under the policy; or the error to answer
/// `queue.open` with when there is no such service, it offers no chat, or
/// no anonymous chat for an `anonymous` resident.
async fn chat_eligibility(
    db: &Db,
    home: &MunicipalityCode,
    service: &ServiceId,
    anonymous: bool,
) -> Result<Result<BTreeSet<MunicipalityCode>, ServerMessage>, booking::Error> {
    let no_service = || ServerMessage::error(ErrorCode::NotFound, "no such service", None);
    let Ok(code) = ServiceCode::parse(service.as_str()) else {
        return Ok(Err(no_service()));
    };
    let Some(found) = booking::catalog::service(db, &code).await? else {
        return Ok(Err(no_service()));
    };
    if !found.chat {
        return Ok(Err(ServerMessage::error(
            ErrorCode::NotEligible,
            "this service offers no chat; book a meeting instead",
            None,
        )));
    }
    if anonymous && !found.anonymous_chat {
        return Ok(Err(ServerMessage::error(
            ErrorCode::NotEligible,
            "this service offers no anonymous chat; sign in first",
            None,
        )));
    }
    let home = booking::MunicipalityCode::parse(home.as_str())?;
    let Some(eligible) = chats::pre_assessors(db, &code, &home, jiff::Timestamp::now()).await?
    else {
        return Ok(Err(no_service()));
    };
    Ok(Ok(eligible
        .iter()
        .filter_map(|m| MunicipalityCode::parse(m.as_str()).ok())
        .collect()))
}

/// Sends `first` and what else the hub has queued for this connection
/// meanwhile, up to [`SEND_BATCH`], and flushes once. When the hub carries
/// out a write batch it hands a busy connection the acknowledgements of its
/// own messages and the deliveries of the other party's together; one write
/// to the socket then carries them all, instead of a system call each.
async fn send_queued<S>(
    sink: &mut S,
    first: ServerMessage,
    from_hub: &mut mpsc::Receiver<ServerMessage>,
) -> Result<(), S::Error>
where
    S: futures::Sink<Message> + Unpin,
{
    sink.feed(text(&first)).await?;
    for _ in 1..SEND_BATCH {
        let Ok(next) = from_hub.try_recv() else {
            break;
        };
        sink.feed(text(&next)).await?;
    }
    sink.flush().await
}

/// The protocol's name for a frame that the WebSocket library refused to
/// read: one over its size limit (the endpoint sets it at twice
/// [`signaling::protocol::MAX_FRAME_BYTES`]) or a text frame that is not
/// UTF-8. The library checks both before the loop sees the frame, so the
/// loop learns of them only as a read error.
fn refused_frame(error: &axum::Error) -> Option<ProtocolError> {
    use tungstenite::error::{CapacityError, Error};
    let source = std::error::Error::source(error)?;
    match source.downcast_ref::<Error>()? {
        Error::Capacity(CapacityError::MessageTooLong { size, .. }) => {
            Some(ProtocolError::TooLarge(*size))
        }
        Error::Utf8(_) => Some(ProtocolError::InvalidUtf8),
        _ => None,
    }
}

/// A message from the hub or the endpoint as a text frame.
fn text(message: &ServerMessage) -> Message {
    Message::Text(message.to_frame().into())
}

async fn close<S>(sink: &mut S, code: u16, reason: &str)
where
    S: futures::Sink<Message> + Unpin,
{
    let frame = CloseFrame {
        code,
        reason: reason.chars().take(60).collect::<String>().into(),
    };
    let _ = sink.send(Message::Close(Some(frame))).await;
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use signaling::protocol::ErrorCode;

    use super::*;

    /// A sink that records the frames it is given and the flushes.
    #[derive(Default)]
    struct Recorder {
        frames: Vec<String>,
        flushes: usize,
    }

    impl futures::Sink<Message> for Recorder {
        type Error = std::convert::Infallible;

        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn start_send(mut self: Pin<&mut Self>, item: Message) -> Result<(), Self::Error> {
            if let Message::Text(text) = item {
                self.frames.push(text.as_str().to_owned());
            }
            Ok(())
        }

        fn poll_flush(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Result<(), Self::Error>> {
            self.flushes += 1;
            Poll::Ready(Ok(()))
        }

        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
    }

    fn numbered(n: usize) -> ServerMessage {
        ServerMessage::error(ErrorCode::NotFound, format!("message {n}"), None)
    }

    /// The library's refusals map to the protocol's errors, and so to the
    /// close codes `docs/protocol.md` promises; other read errors close
    /// nothing, because the peer is gone.
    #[test]
    fn refused_frames_map_to_their_close_codes() {
        use tungstenite::error::{CapacityError, Error};
        let refused = |e: Error| refused_frame(&axum::Error::new(e));
        let too_long = refused(Error::Capacity(CapacityError::MessageTooLong {
            size: 200_000,
            max_size: 131_072,
        }))
        .unwrap();
        assert_eq!(too_long, ProtocolError::TooLarge(200_000));
        assert_eq!(too_long.close_code(), Some(1009));
        let not_utf8 = refused(Error::Utf8("invalid".into())).unwrap();
        assert_eq!(not_utf8.close_code(), Some(1007));
        assert_eq!(refused(Error::ConnectionClosed), None);
        assert_eq!(
            refused_frame(&axum::Error::new(std::io::Error::other("reset"))),
            None
        );
    }

    /// What waits goes out in order with one flush, at most a batch at a
    /// time; the rest stays queued for the next turn of the loop.
    #[tokio::test]
    async fn queued_messages_go_out_in_order_with_one_flush_per_batch() {
        let (tx, mut rx) = mpsc::channel(SEND_BATCH * 2);
        for n in 1..SEND_BATCH + 10 {
            tx.try_send(numbered(n)).unwrap();
        }
        let mut sink = Recorder::default();
        send_queued(&mut sink, numbered(0), &mut rx).await.unwrap();
        assert_eq!(sink.flushes, 1);
        let expected: Vec<String> = (0..SEND_BATCH).map(|n| numbered(n).to_frame()).collect();
        assert_eq!(sink.frames, expected);
        assert_eq!(rx.len(), 10, "the rest waits for the next batch");

        let mut sink = Recorder::default();
        let first = rx.recv().await.unwrap();
        send_queued(&mut sink, first, &mut rx).await.unwrap();
        assert_eq!(sink.flushes, 1);
        let expected: Vec<String> = (SEND_BATCH..SEND_BATCH + 10)
            .map(|n| numbered(n).to_frame())
            .collect();
        assert_eq!(sink.frames, expected);
    }
}
