//! Datagrams queued while one batch of received datagrams is handled, then sent with one
//! `sendmmsg` per socket.
//!
//! A worker handles up to 32 client datagrams per `recvmmsg`, and many peer datagrams per
//! wake-up of its relay sockets. Sending each answer with its own `sendto` made the send side
//! cost one system call per packet; queueing them and sending the queue per socket costs one
//! per batch. The queue keeps its buffers between batches, so queueing does not allocate once
//! they have grown to the largest batch.
//!
//! A send that finds the socket's buffer full drops what is left of that socket's queue and
//! counts it, as a full buffer is a drop for real-time media: queueing it for later would only
//! deliver it late.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::os::fd::BorrowedFd;

use rustix::net::{sendmmsg, MMsgHdr, SendAncillaryBuffer, SendFlags, SocketAddrAny};

/// Datagrams handed to one `sendmmsg` call at most; the same as a `recvmmsg` batch.
pub(crate) const SEND_BATCH: usize = 32;

/// The socket a run of queued datagrams leaves from.
#[derive(Clone, Copy)]
pub(crate) enum Via<'s> {
    /// An unconnected socket: each datagram names its destination.
    Addressed(BorrowedFd<'s>),
    /// A socket connected to the destination of every datagram queued for it, which the
    /// kernel then sends without a route lookup; datagrams go without an address.
    Connected(BorrowedFd<'s>),
}

impl<'s> Via<'s> {
    pub(crate) fn fd(self) -> BorrowedFd<'s> {
        match self {
            Via::Addressed(fd) | Via::Connected(fd) => fd,
        }
    }
}

/// Datagrams to send, each from the socket its key names, in the order they were queued.
pub(crate) struct Outbox<K> {
    /// Payloads back to back.
    bytes: Vec<u8>,
    datagrams: Vec<Queued<K>>,
}

struct Queued<K> {
    socket: K,
    to: SocketAddrAny,
    start: usize,
    end: usize,
}

impl<K: Copy + Ord> Outbox<K> {
    pub(crate) fn new() -> Self {
        Self {
            bytes: Vec::new(),
            datagrams: Vec::new(),
        }
    }

    /// Queues `payload` for `to`, to be sent from the socket `socket` names.
    pub(crate) fn push(&mut self, socket: K, to: SocketAddr, payload: &[u8]) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(payload);
        self.datagrams.push(Queued {
            socket,
            to: SocketAddrAny::from(to),
            start,
            end: self.bytes.len(),
        });
    }

    pub(crate) fn len(&self) -> usize {
        self.datagrams.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.datagrams.is_empty()
    }

    /// Sends everything queued and empties the queue. `socket_of` gives the socket for a key,
    /// or `None` if it has gone (its allocation was freed), in which case its datagrams are
    /// dropped without being counted, as before they were queued. Returns how many datagrams
    /// the kernel refused.
    pub(crate) fn flush<'s>(&mut self, mut socket_of: impl FnMut(K) -> Option<Via<'s>>) -> u64 {
        // Datagrams for one socket go out together and in the order they came; a stable sort
        // keeps that order.
        if self
            .datagrams
            .windows(2)
            .any(|w| w[0].socket != w[1].socket)
        {
            self.datagrams.sort_by_key(|d| d.socket);
        }
        let bytes = &self.bytes;
        let mut failed = 0;
        for run in self.datagrams.chunk_by(|a, b| a.socket == b.socket) {
            if let Some(via) = socket_of(run[0].socket) {
                failed += send_all(run, |batch| send_batch(via, bytes, batch));
            }
        }
        self.datagrams.clear();
        self.bytes.clear();
        failed
    }
}

/// Sends `queue` in batches of at most [`SEND_BATCH`] through `send`, which returns how many
/// of the batch's first datagrams the kernel took. Returns how many were refused.
fn send_all<K>(
    queue: &[Queued<K>],
    mut send: impl FnMut(&[Queued<K>]) -> rustix::io::Result<usize>,
) -> u64 {
    let mut rest = queue;
    let mut failed = 0;
    while !rest.is_empty() {
        match send(&rest[..rest.len().min(SEND_BATCH)]) {
            // The kernel may take a prefix of the batch; the rest is tried again.
            Ok(sent) => rest = &rest[sent.clamp(1, rest.len())..],
            Err(rustix::io::Errno::INTR) => {}
            Err(rustix::io::Errno::AGAIN) => {
                failed += rest.len() as u64;
                break;
            }
            Err(error) => {
                // The first datagram was refused, e.g. too large, or an ICMP error from an
                // earlier send was reported by this one; the others may still go.
                tracing::trace!(error = %io::Error::from(error), "send failed");
                failed += 1;
                rest = &rest[1..];
            }
        }
    }
    failed
}

/// One `sendmmsg` of up to [`SEND_BATCH`] datagrams. The headers live on the stack, so that a
/// batch costs no allocation.
fn send_batch<K>(via: Via<'_>, bytes: &[u8], batch: &[Queued<K>]) -> rustix::io::Result<usize> {
    debug_assert!(!batch.is_empty() && batch.len() <= SEND_BATCH);
    let (fd, connected) = (via.fd(), matches!(via, Via::Connected(_)));
    if let [one] = batch {
        // One datagram is cheaper to hand over without a message header array.
        let payload = &bytes[one.start..one.end];
        let sent = if connected {
            rustix::net::send(fd, payload, SendFlags::empty())
        } else {
            rustix::net::sendto(fd, payload, SendFlags::empty(), &one.to)
        };
        return sent.map(|_| 1);
    }
    // Slots past the batch's end repeat its last datagram; they are not passed to the kernel.
    let at = |i: usize| &batch[i.min(batch.len() - 1)];
    let slices: [[IoSlice<'_>; 1]; SEND_BATCH] =
        std::array::from_fn(|i| [IoSlice::new(&bytes[at(i).start..at(i).end])]);
    let mut controls: [SendAncillaryBuffer<'_, '_, '_>; SEND_BATCH] =
        std::array::from_fn(|_| SendAncillaryBuffer::default());
    let mut parts = slices.iter().zip(controls.iter_mut());
    let mut headers: [MMsgHdr<'_>; SEND_BATCH] = std::array::from_fn(|i| {
        let (slice, control) = parts.next().expect("one slice and control per slot");
        if connected {
            MMsgHdr::new(slice, control)
        } else {
            MMsgHdr::new_with_addr(&at(i).to, slice, control)
        }
    });
    sendmmsg(fd, &mut headers[..batch.len()], SendFlags::empty())
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, UdpSocket};
    use std::time::Duration;

    use std::os::fd::AsFd;

    use super::*;

    fn bound() -> UdpSocket {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        socket
    }

    /// Receives `count` datagrams, waiting for each at most the socket's read timeout.
    fn receive(socket: &UdpSocket, count: usize) -> Vec<Vec<u8>> {
        let mut buffer = [0u8; 2048];
        (0..count)
            .map(|_| {
                let (len, _) = socket.recv_from(&mut buffer).unwrap();
                buffer[..len].to_vec()
            })
            .collect()
    }

    #[test]
    fn sends_every_queued_datagram_in_order_per_socket() {
        let (a, b) = (bound(), bound());
        let (to_a, to_b) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        let (from_1, from_2) = (bound(), bound());
        let mut outbox = Outbox::new();
        // More than one sendmmsg's worth from socket 1, interleaved with socket 2.
        for i in 0..(SEND_BATCH + 5) as u32 {
            outbox.push(1u8, to_a, &i.to_be_bytes());
            if i % 4 == 0 {
                outbox.push(2u8, to_b, &[b'x'; 3]);
            }
        }
        let failed = outbox.flush(|key| {
            Some(Via::Addressed(
                if key == 1 { &from_1 } else { &from_2 }.as_fd(),
            ))
        });
        assert_eq!(failed, 0);
        assert!(outbox.is_empty());

        let expected: Vec<Vec<u8>> = (0..(SEND_BATCH + 5) as u32)
            .map(|i| i.to_be_bytes().to_vec())
            .collect();
        assert_eq!(receive(&a, SEND_BATCH + 5), expected);
        assert_eq!(receive(&b, 10), vec![b"xxx".to_vec(); 10]);
    }

    #[test]
    fn one_refused_datagram_does_not_stop_the_others() {
        let receiver = bound();
        let to = receiver.local_addr().unwrap();
        let sender = bound();
        let mut outbox = Outbox::new();
        outbox.push((), to, b"first");
        // Larger than any UDP datagram can be: EMSGSIZE for this one only.
        outbox.push((), to, &vec![0u8; 70_000]);
        outbox.push((), to, b"third");
        assert_eq!(outbox.flush(|()| Some(Via::Addressed(sender.as_fd()))), 1);
        assert_eq!(
            receive(&receiver, 2),
            vec![b"first".to_vec(), b"third".to_vec()]
        );
    }

    /// A connected socket sends batches and single datagrams without an address, to its peer.
    #[test]
    fn a_connected_socket_sends_without_addresses() {
        let receiver = bound();
        let to = receiver.local_addr().unwrap();
        let sender = bound();
        sender.connect(to).unwrap();
        let mut outbox = Outbox::new();
        for i in 0..3u8 {
            outbox.push((), to, &[i]);
        }
        assert_eq!(outbox.flush(|()| Some(Via::Connected(sender.as_fd()))), 0);
        outbox.push((), to, b"alone");
        assert_eq!(outbox.flush(|()| Some(Via::Connected(sender.as_fd()))), 0);
        assert_eq!(
            receive(&receiver, 4),
            vec![vec![0], vec![1], vec![2], b"alone".to_vec()]
        );
    }

    /// Runs [`send_all`] over `queued` datagrams with a kernel that answers each call with the
    /// next of `answers`, and returns the refused count and each call's (first index, length).
    fn check_send_all(
        queued: usize,
        answers: &[rustix::io::Result<usize>],
    ) -> (u64, Vec<(usize, usize)>) {
        let to = SocketAddrAny::from(SocketAddr::from((Ipv4Addr::LOCALHOST, 9)));
        let queue: Vec<Queued<()>> = (0..queued)
            .map(|i| Queued {
                socket: (),
                to: to.clone(),
                start: i,
                end: i,
            })
            .collect();
        let mut answers = answers.iter();
        let mut calls = Vec::new();
        let failed = send_all(&queue, |batch| {
            calls.push((batch[0].start, batch.len()));
            *answers.next().expect("more sends than answers")
        });
        assert!(answers.next().is_none(), "fewer sends than answers");
        (failed, calls)
    }

    // A full socket buffer cannot be produced on loopback, which frees a sent datagram's
    // buffer space at once, so the kernel's answers are scripted here.
    #[test]
    fn a_partial_send_is_resumed_and_would_block_drops_the_rest() {
        use rustix::io::Errno;
        // 40 queued: a batch of 32 of which 10 go, a retry after EINTR, 22 more, then the
        // buffer is full with 8 left.
        let (failed, calls) =
            check_send_all(40, &[Ok(10), Err(Errno::INTR), Ok(22), Err(Errno::AGAIN)]);
        assert_eq!(failed, 8);
        assert_eq!(calls, vec![(0, 32), (10, 30), (10, 30), (32, 8)]);
    }

    #[test]
    fn a_refused_first_datagram_is_skipped() {
        use rustix::io::Errno;
        let (failed, calls) = check_send_all(3, &[Err(Errno::MSGSIZE), Ok(2)]);
        assert_eq!(failed, 1);
        assert_eq!(calls, vec![(0, 3), (1, 2)]);
    }

    #[test]
    fn datagrams_for_a_missing_socket_are_discarded_uncounted() {
        let receiver = bound();
        let to = receiver.local_addr().unwrap();
        let sender = bound();
        let mut outbox = Outbox::new();
        outbox.push(1u8, to, b"gone");
        outbox.push(2u8, to, b"kept");
        let failed = outbox.flush(|key| (key == 2).then(|| Via::Addressed(sender.as_fd())));
        assert_eq!(failed, 0);
        assert_eq!(receive(&receiver, 1), vec![b"kept".to_vec()]);
    }
}
