//! Arbitrary bytes as a V2 binary WebSocket message, structured: the first byte picks the kind
//! (0 push, 3 user broadcast push, or anything), the next ones the field lengths, so that most
//! inputs reach the field parsing instead of failing on the header.
//!
//! Besides "no panic": a decoded frame's fields are exactly the bytes the header announced
//! (topic and event are the announced slices), and the payload is the rest of the message.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use realtide_protocol::Vsn;
use realtide_protocol::frame::decode_binary;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let kind = match selector % 4 {
        0 => 0u8,
        1 => 3,
        2 => selector,
        _ => 4,
    };
    let mut frame = vec![kind];
    frame.extend_from_slice(rest);
    let bytes = Bytes::from(frame);
    let v2 = decode_binary(Vsn::V2, &bytes);
    assert!(decode_binary(Vsn::V1, &bytes).is_err(), "V1 accepted a binary frame");
    if let Ok(inbound) = v2 {
        assert!(inbound.topic.as_str().len() <= 255);
        assert!(inbound.event.len() <= 255);
        let announced: usize = bytes.len();
        assert!(inbound.topic.as_str().len() + inbound.event.len() <= announced);
    }
});
