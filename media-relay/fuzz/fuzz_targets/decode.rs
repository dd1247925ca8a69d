//! The STUN and ChannelData decoders must reject any input without panicking, and whatever
//! they accept must be internally consistent.

#![no_main]

use libfuzzer_sys::fuzz_target;
use media_relay::stun::{stream_frame_len, ChannelData, Message};

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = Message::parse(data) {
        for attribute in message.attributes() {
            assert!(attribute.offset + 4 + attribute.value.len() <= data.len());
        }
        let _ = message.unknown_required();
        let _ = message.verify_integrity(b"key");
        let _ = message.get_xor_address(0x0020);
    }
    if let Ok(channel_data) = ChannelData::parse(data) {
        assert!(channel_data.payload.len() + 4 <= data.len());
    }
    if let Some(Ok(len)) = stream_frame_len(data) {
        assert!(len >= 4);
    }
});
