//! A TURN/STUN relay (RFC 8656, RFC 8489): a sans-IO core with no sockets and
//! no clock, plus a thin tokio driver. `kontakt serve` embeds it, and the
//! `media-relay` binary runs it standalone.
