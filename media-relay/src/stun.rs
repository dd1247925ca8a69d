//! STUN message and TURN ChannelData encoding and decoding (RFC 8489, RFC 8656).
//!
//! The decoder borrows the datagram and never allocates: a [`Message`] is a header plus
//! up to [`MAX_ATTRIBUTES`] attribute offsets. The encoder writes into a `Vec<u8>` that the
//! caller owns, so control responses cost one allocation and relayed data none.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use hmac::{Hmac, Mac};
use sha1::Sha1;

/// The fixed value in bytes 4..8 of every STUN message (RFC 8489, section 5).
pub const MAGIC_COOKIE: u32 = 0x2112_A442;

/// Size of the STUN header (RFC 8489, section 5).
pub const HEADER_LEN: usize = 20;

/// Size of the ChannelData header (RFC 8656, section 12.4).
pub const CHANNEL_DATA_HEADER_LEN: usize = 4;

/// The value XORed into the CRC-32 of a FINGERPRINT attribute (RFC 8489, section 14.7).
pub const FINGERPRINT_XOR: u32 = 0x5354_554E;

/// The decoder keeps at most this many attribute offsets. Real clients send fewer than 16;
/// a message with more is rejected as malformed instead of growing a buffer.
pub const MAX_ATTRIBUTES: usize = 32;

/// Lowest channel number a client may bind (RFC 8656, section 12).
pub const CHANNEL_MIN: u16 = 0x4000;

/// Highest channel number a client may bind. RFC 8656 (section 12) reserves 0x5000..=0x7FFF,
/// but RFC 5766 allowed them and deployed clients such as coturn's own pick from the whole
/// range, so this server accepts them like coturn does; they demultiplex the same way.
pub const CHANNEL_MAX: u16 = 0x7FFF;

/// STUN methods used by a TURN server (RFC 8489, section 18.2; RFC 8656, section 17).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Binding (RFC 8489, section 18.2).
    Binding,
    /// Allocate (RFC 8656, section 7).
    Allocate,
    /// Refresh (RFC 8656, section 8).
    Refresh,
    /// Send indication (RFC 8656, section 11).
    Send,
    /// Data indication (RFC 8656, section 11).
    Data,
    /// CreatePermission (RFC 8656, section 10).
    CreatePermission,
    /// ChannelBind (RFC 8656, section 12).
    ChannelBind,
    /// A method this server does not implement.
    Other(u16),
}

impl Method {
    /// The 12-bit method number.
    pub fn code(self) -> u16 {
        match self {
            Method::Binding => 0x001,
            Method::Allocate => 0x003,
            Method::Refresh => 0x004,
            Method::Send => 0x006,
            Method::Data => 0x007,
            Method::CreatePermission => 0x008,
            Method::ChannelBind => 0x009,
            Method::Other(code) => code,
        }
    }

    fn from_code(code: u16) -> Self {
        match code {
            0x001 => Method::Binding,
            0x003 => Method::Allocate,
            0x004 => Method::Refresh,
            0x006 => Method::Send,
            0x007 => Method::Data,
            0x008 => Method::CreatePermission,
            0x009 => Method::ChannelBind,
            other => Method::Other(other),
        }
    }
}

/// The two class bits of a STUN message type (RFC 8489, section 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Request,
    Indication,
    Success,
    Error,
}

/// Attribute types (RFC 8489 section 18.3, RFC 8656 section 18, RFC 8445 section 16.1).
pub mod attr {
    pub const MAPPED_ADDRESS: u16 = 0x0001;
    pub const USERNAME: u16 = 0x0006;
    pub const MESSAGE_INTEGRITY: u16 = 0x0008;
    pub const ERROR_CODE: u16 = 0x0009;
    pub const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
    pub const CHANNEL_NUMBER: u16 = 0x000C;
    pub const LIFETIME: u16 = 0x000D;
    pub const XOR_PEER_ADDRESS: u16 = 0x0012;
    pub const DATA: u16 = 0x0013;
    pub const REALM: u16 = 0x0014;
    pub const NONCE: u16 = 0x0015;
    pub const XOR_RELAYED_ADDRESS: u16 = 0x0016;
    pub const REQUESTED_ADDRESS_FAMILY: u16 = 0x0017;
    pub const EVEN_PORT: u16 = 0x0018;
    pub const REQUESTED_TRANSPORT: u16 = 0x0019;
    pub const DONT_FRAGMENT: u16 = 0x001A;
    pub const MESSAGE_INTEGRITY_SHA256: u16 = 0x001C;
    pub const PASSWORD_ALGORITHM: u16 = 0x001D;
    pub const USERHASH: u16 = 0x001E;
    pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
    pub const RESERVATION_TOKEN: u16 = 0x0022;
    pub const PRIORITY: u16 = 0x0024;
    pub const USE_CANDIDATE: u16 = 0x0025;
    pub const ADDITIONAL_ADDRESS_FAMILY: u16 = 0x8000;
    pub const SOFTWARE: u16 = 0x8022;
    pub const FINGERPRINT: u16 = 0x8028;

    /// Comprehension-required attributes this server understands. Any other attribute
    /// below 0x8000 in a request earns a 420 (RFC 8489, section 14).
    pub const UNDERSTOOD_REQUIRED: &[u16] = &[
        MAPPED_ADDRESS,
        USERNAME,
        MESSAGE_INTEGRITY,
        ERROR_CODE,
        UNKNOWN_ATTRIBUTES,
        CHANNEL_NUMBER,
        LIFETIME,
        XOR_PEER_ADDRESS,
        DATA,
        REALM,
        NONCE,
        XOR_RELAYED_ADDRESS,
        REQUESTED_ADDRESS_FAMILY,
        EVEN_PORT,
        REQUESTED_TRANSPORT,
        DONT_FRAGMENT,
        MESSAGE_INTEGRITY_SHA256,
        PASSWORD_ALGORITHM,
        USERHASH,
        XOR_MAPPED_ADDRESS,
        RESERVATION_TOKEN,
        PRIORITY,
        USE_CANDIDATE,
    ];
}

/// Why a datagram is not a well-formed STUN message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("shorter than its header or its declared length")]
    Truncated,
    #[error("the first two bits are not zero")]
    NotStun,
    #[error("the magic cookie is wrong")]
    BadCookie,
    #[error("the length is not a multiple of four")]
    BadLength,
    #[error("an attribute runs past the end of the message")]
    BadAttribute,
    #[error("more than MAX_ATTRIBUTES attributes")]
    TooManyAttributes,
    #[error("FINGERPRINT does not match")]
    BadFingerprint,
}

/// The kind of framed message a datagram or stream frame starts with (RFC 8656, section 12.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    Stun,
    ChannelData,
    Invalid,
}

/// Tells STUN from ChannelData by the first two bits (RFC 8656, section 12.4).
pub fn frame_kind(first_byte: u8) -> FrameKind {
    match first_byte >> 6 {
        0b00 => FrameKind::Stun,
        0b01 => FrameKind::ChannelData,
        _ => FrameKind::Invalid,
    }
}

/// The length of the complete frame at the start of `buf` on a stream transport, or `None`
/// while fewer than four bytes are buffered. ChannelData is padded to a multiple of four over
/// TCP and TLS (RFC 8656, section 12.5).
pub fn stream_frame_len(buf: &[u8]) -> Option<Result<usize, DecodeError>> {
    if buf.len() < 4 {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
    Some(match frame_kind(buf[0]) {
        FrameKind::Stun => Ok(HEADER_LEN + len),
        FrameKind::ChannelData => Ok(CHANNEL_DATA_HEADER_LEN + padded(len)),
        FrameKind::Invalid => Err(DecodeError::NotStun),
    })
}

/// A borrowed ChannelData message (RFC 8656, section 12.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelData<'a> {
    pub channel: u16,
    pub payload: &'a [u8],
}

impl<'a> ChannelData<'a> {
    /// Parses a ChannelData message. Trailing bytes past the declared length are padding and
    /// are ignored; a declared length past the end of the buffer is an error, and the RFC says
    /// such a message is discarded.
    pub fn parse(buf: &'a [u8]) -> Result<Self, DecodeError> {
        if buf.len() < CHANNEL_DATA_HEADER_LEN {
            return Err(DecodeError::Truncated);
        }
        let channel = u16::from_be_bytes([buf[0], buf[1]]);
        if !(0x4000..=0x7FFF).contains(&channel) {
            return Err(DecodeError::NotStun);
        }
        let len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
        let payload = buf
            .get(CHANNEL_DATA_HEADER_LEN..CHANNEL_DATA_HEADER_LEN + len)
            .ok_or(DecodeError::Truncated)?;
        Ok(Self { channel, payload })
    }
}

/// Writes a ChannelData header into `header` (four bytes).
pub fn write_channel_data_header(header: &mut [u8], channel: u16, len: u16) {
    header[0..2].copy_from_slice(&channel.to_be_bytes());
    header[2..4].copy_from_slice(&len.to_be_bytes());
}

/// A raw attribute: its type and its value without padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawAttribute<'a> {
    pub kind: u16,
    pub value: &'a [u8],
    /// Offset of the attribute header from the start of the message.
    pub offset: usize,
}

/// A decoded STUN message that borrows its datagram.
#[derive(Debug, Clone)]
pub struct Message<'a> {
    bytes: &'a [u8],
    method: Method,
    class: Class,
    transaction_id: [u8; 12],
    attributes: [(u16, u16, u16); MAX_ATTRIBUTES],
    attribute_count: usize,
    /// Index of MESSAGE-INTEGRITY, if present. Attributes after it other than FINGERPRINT
    /// must be ignored (RFC 8489, section 14.5).
    integrity_index: Option<usize>,
    has_fingerprint: bool,
}

impl<'a> Message<'a> {
    /// Decodes one STUN message. `bytes` must hold exactly the message; over UDP a datagram
    /// longer than the declared length is rejected because STUN is never padded past it.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        if bytes.len() < HEADER_LEN {
            return Err(DecodeError::Truncated);
        }
        if bytes[0] >> 6 != 0 {
            return Err(DecodeError::NotStun);
        }
        let message_type = u16::from_be_bytes([bytes[0], bytes[1]]);
        let length = usize::from(u16::from_be_bytes([bytes[2], bytes[3]]));
        if u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) != MAGIC_COOKIE {
            return Err(DecodeError::BadCookie);
        }
        if length % 4 != 0 {
            return Err(DecodeError::BadLength);
        }
        if bytes.len() != HEADER_LEN + length {
            return Err(DecodeError::Truncated);
        }
        let mut transaction_id = [0u8; 12];
        transaction_id.copy_from_slice(&bytes[8..20]);
        let method = Method::from_code(
            (message_type & 0x000F)
                | ((message_type & 0x00E0) >> 1)
                | ((message_type & 0x3E00) >> 2),
        );
        let class = match ((message_type >> 4) & 1) | ((message_type >> 7) & 2) {
            0 => Class::Request,
            1 => Class::Indication,
            2 => Class::Success,
            _ => Class::Error,
        };

        let mut message = Self {
            bytes,
            method,
            class,
            transaction_id,
            attributes: [(0, 0, 0); MAX_ATTRIBUTES],
            attribute_count: 0,
            integrity_index: None,
            has_fingerprint: false,
        };
        let mut offset = HEADER_LEN;
        while offset < bytes.len() {
            if offset + 4 > bytes.len() {
                return Err(DecodeError::BadAttribute);
            }
            let kind = u16::from_be_bytes([bytes[offset], bytes[offset + 1]]);
            let len = usize::from(u16::from_be_bytes([bytes[offset + 2], bytes[offset + 3]]));
            let end = offset + 4 + len;
            if end > bytes.len() {
                return Err(DecodeError::BadAttribute);
            }
            if message.has_fingerprint {
                // FINGERPRINT must be the last attribute (RFC 8489, section 14.7).
                return Err(DecodeError::BadAttribute);
            }
            if message.attribute_count == MAX_ATTRIBUTES {
                return Err(DecodeError::TooManyAttributes);
            }
            // Offsets fit in u16 because a STUN message is at most 20 + 65535 bytes long and
            // every attribute offset is smaller than the total length.
            message.attributes[message.attribute_count] = (kind, offset as u16, len as u16);
            if kind == attr::MESSAGE_INTEGRITY && message.integrity_index.is_none() {
                message.integrity_index = Some(message.attribute_count);
            }
            if kind == attr::FINGERPRINT {
                message.has_fingerprint = true;
                if len != 4 {
                    return Err(DecodeError::BadAttribute);
                }
                let stored = u32::from_be_bytes([
                    bytes[offset + 4],
                    bytes[offset + 5],
                    bytes[offset + 6],
                    bytes[offset + 7],
                ]);
                if fingerprint(bytes, offset) != stored {
                    return Err(DecodeError::BadFingerprint);
                }
            }
            message.attribute_count += 1;
            offset += 4 + padded(len);
        }
        if offset != bytes.len() {
            return Err(DecodeError::BadAttribute);
        }
        Ok(message)
    }

    pub fn method(&self) -> Method {
        self.method
    }

    pub fn class(&self) -> Class {
        self.class
    }

    pub fn transaction_id(&self) -> [u8; 12] {
        self.transaction_id
    }

    pub fn has_fingerprint(&self) -> bool {
        self.has_fingerprint
    }

    pub fn has_integrity(&self) -> bool {
        self.integrity_index.is_some()
    }

    /// Attributes that count: those before MESSAGE-INTEGRITY (RFC 8489, section 14.5).
    pub fn attributes(&self) -> impl Iterator<Item = RawAttribute<'a>> + '_ {
        let end = self.integrity_index.map_or(self.attribute_count, |i| i + 1);
        self.attributes[..end]
            .iter()
            .map(|&(kind, offset, len)| RawAttribute {
                kind,
                value: &self.bytes
                    [usize::from(offset) + 4..usize::from(offset) + 4 + usize::from(len)],
                offset: usize::from(offset),
            })
    }

    /// The first attribute of a type.
    pub fn get(&self, kind: u16) -> Option<&'a [u8]> {
        self.attributes().find(|a| a.kind == kind).map(|a| a.value)
    }

    /// Comprehension-required attributes this server does not understand (RFC 8489, section 14).
    pub fn unknown_required(&self) -> Vec<u16> {
        self.attributes()
            .filter(|a| a.kind < 0x8000 && !attr::UNDERSTOOD_REQUIRED.contains(&a.kind))
            .map(|a| a.kind)
            .collect()
    }

    /// A UTF-8 string attribute, such as USERNAME, REALM or NONCE.
    pub fn get_str(&self, kind: u16) -> Option<&'a str> {
        self.get(kind).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// An XOR-encoded address attribute (RFC 8489, section 14.2).
    pub fn get_xor_address(&self, kind: u16) -> Option<SocketAddr> {
        decode_xor_address(self.get(kind)?, &self.transaction_id)
    }

    /// All XOR-PEER-ADDRESS attributes; CreatePermission may carry several (RFC 8656, section 10).
    pub fn xor_addresses(&self, kind: u16) -> impl Iterator<Item = Option<SocketAddr>> + '_ {
        let tid = self.transaction_id;
        self.attributes()
            .filter(move |a| a.kind == kind)
            .map(move |a| decode_xor_address(a.value, &tid))
    }

    /// A 32-bit attribute such as LIFETIME.
    pub fn get_u32(&self, kind: u16) -> Option<u32> {
        let v = self.get(kind)?;
        Some(u32::from_be_bytes(v.try_into().ok()?))
    }

    /// Checks MESSAGE-INTEGRITY (RFC 8489, section 14.5): the HMAC-SHA1 over the message up to
    /// the attribute, with the header length covering the attribute itself.
    pub fn verify_integrity(&self, key: &[u8]) -> bool {
        let Some(index) = self.integrity_index else {
            return false;
        };
        let (_, offset, len) = self.attributes[index];
        if len != 20 {
            return false;
        }
        let offset = usize::from(offset);
        let expected = integrity(self.bytes, offset, key);
        let stored = &self.bytes[offset + 4..offset + 24];
        // Constant-time comparison, so timing does not reveal how many bytes matched.
        expected
            .iter()
            .zip(stored)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

fn decode_xor_address(value: &[u8], transaction_id: &[u8; 12]) -> Option<SocketAddr> {
    if value.len() < 4 {
        return None;
    }
    let port = u16::from_be_bytes([value[2], value[3]]) ^ (MAGIC_COOKIE >> 16) as u16;
    match (value[1], value.len()) {
        (0x01, 8) => {
            let raw = u32::from_be_bytes([value[4], value[5], value[6], value[7]]) ^ MAGIC_COOKIE;
            Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(raw)), port))
        }
        (0x02, 20) => {
            let mut key = [0u8; 16];
            key[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
            key[4..].copy_from_slice(transaction_id);
            let mut raw = [0u8; 16];
            for (i, byte) in raw.iter_mut().enumerate() {
                *byte = value[4 + i] ^ key[i];
            }
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(raw)), port))
        }
        _ => None,
    }
}

fn padded(len: usize) -> usize {
    (len + 3) & !3
}

fn integrity(bytes: &[u8], offset: usize, key: &[u8]) -> [u8; 20] {
    let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(key) else {
        // HMAC accepts keys of any length, so this branch cannot be taken.
        return [0; 20];
    };
    let adjusted_len = (offset + 24 - HEADER_LEN) as u16;
    mac.update(&bytes[0..2]);
    mac.update(&adjusted_len.to_be_bytes());
    mac.update(&bytes[4..offset]);
    mac.finalize().into_bytes().into()
}

fn fingerprint(bytes: &[u8], offset: usize) -> u32 {
    let adjusted_len = (offset + 8 - HEADER_LEN) as u16;
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&bytes[0..2]);
    hasher.update(&adjusted_len.to_be_bytes());
    hasher.update(&bytes[4..offset]);
    hasher.finalize() ^ FINGERPRINT_XOR
}

/// Builds a STUN message in a caller-owned buffer.
pub struct MessageBuilder {
    buf: Vec<u8>,
}

impl MessageBuilder {
    pub fn new(method: Method, class: Class, transaction_id: [u8; 12]) -> Self {
        let mut buf = Vec::with_capacity(128);
        Self::write_header(&mut buf, method, class, &transaction_id);
        Self { buf }
    }

    fn write_header(buf: &mut Vec<u8>, method: Method, class: Class, transaction_id: &[u8; 12]) {
        let m = method.code();
        let c: u16 = match class {
            Class::Request => 0,
            Class::Indication => 1,
            Class::Success => 2,
            Class::Error => 3,
        };
        let message_type = (m & 0x000F)
            | ((c & 1) << 4)
            | ((m & 0x0070) << 1)
            | ((c & 2) << 7)
            | ((m & 0x0F80) << 2);
        buf.extend_from_slice(&message_type.to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        buf.extend_from_slice(transaction_id);
    }

    fn transaction_id(&self) -> [u8; 12] {
        let mut tid = [0u8; 12];
        tid.copy_from_slice(&self.buf[8..20]);
        tid
    }

    fn set_length(&mut self, len: usize) {
        let len = (len - HEADER_LEN) as u16;
        self.buf[2..4].copy_from_slice(&len.to_be_bytes());
    }

    pub fn add(&mut self, kind: u16, value: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(&kind.to_be_bytes());
        self.buf
            .extend_from_slice(&(value.len() as u16).to_be_bytes());
        self.buf.extend_from_slice(value);
        let pad = padded(value.len()) - value.len();
        self.buf.extend_from_slice(&[0u8; 3][..pad]);
        let len = self.buf.len();
        self.set_length(len);
        self
    }

    pub fn add_u32(&mut self, kind: u16, value: u32) -> &mut Self {
        self.add(kind, &value.to_be_bytes())
    }

    /// Adds an XOR-encoded address (RFC 8489, section 14.2).
    pub fn add_xor_address(&mut self, kind: u16, addr: SocketAddr) -> &mut Self {
        let mut value = [0u8; 20];
        let len = encode_xor_address(&mut value, addr, &self.transaction_id());
        self.add(kind, &value[..len])
    }

    /// Adds ERROR-CODE with its class/number split (RFC 8489, section 14.8).
    pub fn add_error(&mut self, code: u16, reason: &str) -> &mut Self {
        let mut value = Vec::with_capacity(4 + reason.len());
        value.extend_from_slice(&[0, 0, (code / 100) as u8, (code % 100) as u8]);
        value.extend_from_slice(reason.as_bytes());
        self.add(attr::ERROR_CODE, &value)
    }

    /// Adds MESSAGE-INTEGRITY computed with `key` (RFC 8489, section 14.5).
    pub fn add_integrity(&mut self, key: &[u8]) -> &mut Self {
        let offset = self.buf.len();
        let mac = integrity(&self.buf, offset, key);
        self.add(attr::MESSAGE_INTEGRITY, &mac)
    }

    /// Adds FINGERPRINT (RFC 8489, section 14.7). It must be the last attribute.
    pub fn add_fingerprint(&mut self) -> &mut Self {
        let offset = self.buf.len();
        let crc = fingerprint(&self.buf, offset);
        self.add_u32(attr::FINGERPRINT, crc)
    }

    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// Writes an XOR-encoded address into `out` and returns its length (8 or 20).
pub fn encode_xor_address(
    out: &mut [u8; 20],
    addr: SocketAddr,
    transaction_id: &[u8; 12],
) -> usize {
    let port = addr.port() ^ (MAGIC_COOKIE >> 16) as u16;
    out[0] = 0;
    out[2..4].copy_from_slice(&port.to_be_bytes());
    match addr.ip() {
        IpAddr::V4(ip) => {
            out[1] = 0x01;
            out[4..8].copy_from_slice(&(u32::from(ip) ^ MAGIC_COOKIE).to_be_bytes());
            8
        }
        IpAddr::V6(ip) => {
            out[1] = 0x02;
            let mut key = [0u8; 16];
            key[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
            key[4..].copy_from_slice(transaction_id);
            for (i, byte) in ip.octets().iter().enumerate() {
                out[4 + i] = byte ^ key[i];
            }
            20
        }
    }
}

/// Writes a Data indication header in place, so that it ends exactly where the payload
/// begins (RFC 8656, section 11.4). `buf[start..start + len]` must hold the payload and three
/// bytes of room must follow it for padding. Returns the range of the finished message.
pub fn write_data_indication_in_place(
    buf: &mut [u8],
    start: usize,
    len: usize,
    peer: SocketAddr,
    transaction_id: [u8; 12],
) -> Option<std::ops::Range<usize>> {
    let mut address = [0u8; 20];
    let address_len = encode_xor_address(&mut address, peer, &transaction_id);
    let prefix = HEADER_LEN + 4 + address_len + 4;
    let begin = start.checked_sub(prefix)?;
    let pad = padded(len) - len;
    let end = start + len + pad;
    if end > buf.len() || len > usize::from(u16::MAX) - prefix {
        return None;
    }
    buf[start + len..end].fill(0);
    let mut builder = MessageBuilder { buf: Vec::new() };
    // Header written through the builder's routine into a small stack copy.
    MessageBuilder::write_header(
        &mut builder.buf,
        Method::Data,
        Class::Indication,
        &transaction_id,
    );
    let header = &mut buf[begin..begin + HEADER_LEN];
    header.copy_from_slice(&builder.buf);
    let body_len = (end - begin - HEADER_LEN) as u16;
    header[2..4].copy_from_slice(&body_len.to_be_bytes());
    let mut at = begin + HEADER_LEN;
    buf[at..at + 2].copy_from_slice(&attr::XOR_PEER_ADDRESS.to_be_bytes());
    buf[at + 2..at + 4].copy_from_slice(&(address_len as u16).to_be_bytes());
    buf[at + 4..at + 4 + address_len].copy_from_slice(&address[..address_len]);
    at += 4 + address_len;
    buf[at..at + 2].copy_from_slice(&attr::DATA.to_be_bytes());
    buf[at + 2..at + 4].copy_from_slice(&(len as u16).to_be_bytes());
    Some(begin..end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| c.is_ascii_hexdigit()).collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// RFC 5769, section 2.1: a request with USERNAME padded with spaces, short-term password.
    const SAMPLE_REQUEST: &str = "
        00 01 00 58 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
        80 22 00 10 53 54 55 4e 20 74 65 73 74 20 63 6c 69 65 6e 74
        00 24 00 04 6e 00 01 ff 80 29 00 08 93 2f f9 b1 51 26 3b 36
        00 06 00 09 65 76 74 6a 3a 68 36 76 59 20 20 20 00 08 00 14
        9a ea a7 0c bf d8 cb 56 78 1e f2 b5 b2 d3 f2 49 c1 b5 71 a2
        80 28 00 04 e5 7a 3b cf";

    /// RFC 5769, section 2.2: an IPv4 response.
    const SAMPLE_IPV4_RESPONSE: &str = "
        01 01 00 3c 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
        80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20 00 20 00 08
        00 01 a1 47 e1 12 a6 43 00 08 00 14 2b 91 f5 99 fd 9e 90 c3
        8c 74 89 f9 2a f9 ba 53 f0 6b e7 d7 80 28 00 04 c0 7d 4c 96";

    /// RFC 5769, section 2.3: an IPv6 response.
    const SAMPLE_IPV6_RESPONSE: &str = "
        01 01 00 48 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
        80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20 00 20 00 14
        00 02 a1 47 01 13 a9 fa a5 d3 f1 79 bc 25 f4 b5 be d2 b9 d9
        00 08 00 14 a3 82 95 4e 4b e6 7b f1 17 84 c9 7c 82 92 c2 75
        bf e3 ed 41 80 28 00 04 c8 fb 0b 4c";

    /// RFC 5769, section 2.4: a request with long-term credentials.
    const SAMPLE_LONG_TERM_REQUEST: &str = "
        00 01 00 60 21 12 a4 42 78 ad 34 33 c6 ad 72 c0 29 da 41 2e
        00 06 00 12 e3 83 9e e3 83 88 e3 83 aa e3 83 83 e3 82 af e3
        82 b9 00 00 00 15 00 1c 66 2f 2f 34 39 39 6b 39 35 34 64 36
        4f 4c 33 34 6f 4c 39 46 53 54 76 79 36 34 73 41 00 14 00 0b
        65 78 61 6d 70 6c 65 2e 6f 72 67 00 00 08 00 14 f6 70 24 65
        6d d6 4a 3e 02 b8 e0 71 2e 85 c9 a2 8c a8 96 66";

    #[test]
    fn rfc5769_request_with_short_term_credentials() {
        let bytes = hex(SAMPLE_REQUEST);
        let message = Message::parse(&bytes).unwrap();
        assert_eq!(message.method(), Method::Binding);
        assert_eq!(message.class(), Class::Request);
        assert!(message.has_fingerprint());
        // The USERNAME value keeps its trailing spaces; padding is not part of the value.
        assert_eq!(message.get_str(attr::USERNAME), Some("evtj:h6vY"));
        assert_eq!(message.get(attr::SOFTWARE), Some(&b"STUN test client"[..]));
        assert!(message.verify_integrity(b"VOkJxbRl1RmTxUk/WvJxBt"));
        assert!(!message.verify_integrity(b"VOkJxbRl1RmTxUk/WvJxBu"));
    }

    #[test]
    fn rfc5769_ipv4_response() {
        let bytes = hex(SAMPLE_IPV4_RESPONSE);
        let message = Message::parse(&bytes).unwrap();
        assert_eq!(message.class(), Class::Success);
        assert_eq!(
            message.get_xor_address(attr::XOR_MAPPED_ADDRESS),
            Some("192.0.2.1:32853".parse().unwrap())
        );
        assert!(message.verify_integrity(b"VOkJxbRl1RmTxUk/WvJxBt"));
    }

    #[test]
    fn rfc5769_ipv6_response() {
        let bytes = hex(SAMPLE_IPV6_RESPONSE);
        let message = Message::parse(&bytes).unwrap();
        assert_eq!(
            message.get_xor_address(attr::XOR_MAPPED_ADDRESS),
            Some(
                "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
                    .parse()
                    .unwrap()
            )
        );
        assert!(message.verify_integrity(b"VOkJxbRl1RmTxUk/WvJxBt"));
    }

    #[test]
    fn rfc5769_long_term_request() {
        let bytes = hex(SAMPLE_LONG_TERM_REQUEST);
        let message = Message::parse(&bytes).unwrap();
        let username = message.get_str(attr::USERNAME).unwrap();
        assert_eq!(username, "\u{30DE}\u{30C8}\u{30EA}\u{30C3}\u{30AF}\u{30B9}");
        assert_eq!(message.get_str(attr::REALM), Some("example.org"));
        // The password "The<U+00AD>M<U+00AA>tr<U+2168>" becomes "TheMatrIX" after SASLprep.
        let key = crate::credentials::long_term_key(username, "example.org", "TheMatrIX");
        assert!(message.verify_integrity(&key));
    }

    #[test]
    fn builder_output_matches_rfc5769_ipv4_response() {
        let expected = hex(SAMPLE_IPV4_RESPONSE);
        let tid: [u8; 12] = expected[8..20].try_into().unwrap();
        let mut builder = MessageBuilder::new(Method::Binding, Class::Success, tid);
        builder
            .add(attr::SOFTWARE, b"test vector")
            .add_xor_address(attr::XOR_MAPPED_ADDRESS, "192.0.2.1:32853".parse().unwrap())
            .add_integrity(b"VOkJxbRl1RmTxUk/WvJxBt")
            .add_fingerprint();
        // The RFC pads SOFTWARE with a space (0x20) rather than zero; padding content is not
        // covered by the standard, so compare everything except that byte and the checksums.
        let built = builder.finish();
        assert_eq!(built.len(), expected.len());
        let parsed = Message::parse(&built).unwrap();
        assert!(parsed.verify_integrity(b"VOkJxbRl1RmTxUk/WvJxBt"));
        assert_eq!(built[..35], expected[..35]);
        assert_eq!(built[36..48], expected[36..48]);
    }

    #[test]
    fn corrupted_fingerprint_is_rejected() {
        let mut bytes = hex(SAMPLE_REQUEST);
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert_eq!(
            Message::parse(&bytes).unwrap_err(),
            DecodeError::BadFingerprint
        );
    }

    #[test]
    fn truncated_and_garbage_inputs_are_errors() {
        let bytes = hex(SAMPLE_REQUEST);
        for len in 0..bytes.len() {
            assert!(
                Message::parse(&bytes[..len]).is_err(),
                "prefix of {len} bytes"
            );
        }
        assert_eq!(
            Message::parse(&[0xFF; 40]).unwrap_err(),
            DecodeError::NotStun
        );
        let mut bad_cookie = bytes.clone();
        bad_cookie[4] = 0;
        assert_eq!(
            Message::parse(&bad_cookie).unwrap_err(),
            DecodeError::BadCookie
        );
    }

    #[test]
    fn channel_data_round_trip_and_bounds() {
        let mut buf = vec![0u8; 4];
        write_channel_data_header(&mut buf, 0x4001, 3);
        buf.extend_from_slice(b"abc\0");
        let parsed = ChannelData::parse(&buf).unwrap();
        assert_eq!(parsed.channel, 0x4001);
        assert_eq!(parsed.payload, b"abc");
        assert_eq!(
            ChannelData::parse(&buf[..5]).unwrap_err(),
            DecodeError::Truncated
        );
        assert_eq!(stream_frame_len(&buf), Some(Ok(8)));
    }

    #[test]
    fn data_indication_written_in_place_parses() {
        let peer: SocketAddr = "[2001:db8::1]:5000".parse().unwrap();
        let mut buf = vec![0u8; 48 + 5 + 4];
        buf[48..53].copy_from_slice(b"hello");
        let range = write_data_indication_in_place(&mut buf, 48, 5, peer, [7; 12]).unwrap();
        let message = Message::parse(&buf[range]).unwrap();
        assert_eq!(message.method(), Method::Data);
        assert_eq!(message.class(), Class::Indication);
        assert_eq!(message.get_xor_address(attr::XOR_PEER_ADDRESS), Some(peer));
        assert_eq!(message.get(attr::DATA), Some(&b"hello"[..]));
    }
}
