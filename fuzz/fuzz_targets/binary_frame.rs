//! Arbitrary bytes as a V2 binary WebSocket message, structured: the first byte picks the kind
//! (0 push, 3 user broadcast push, or anything), the next ones the field lengths, so that most
//! inputs reach the field parsing instead of failing on the header.
//!
//! Besides "no panic": a decoded frame's topic (and a push's event, a user broadcast's own
//! event) are verbatim bytes of the frame, its body is the frame's tail, a user broadcast's
//! event is the synthesized `broadcast`, and V1 refuses every binary frame.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use realtide_protocol::{InboundPayload, Vsn};
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
        let contains = |part: &[u8]| part.is_empty() || bytes.windows(part.len()).any(|w| w == part);
        // Topic (and a push's event) are verbatim bytes of the frame, at most 255 each.
        assert!(inbound.topic.as_str().len() <= 255);
        assert!(contains(inbound.topic.as_str().as_bytes()));
        match &inbound.payload {
            InboundPayload::Binary(body) => {
                assert!(contains(inbound.event.as_bytes()));
                assert!(bytes.ends_with(body), "a push's body is the frame's tail");
            }
            InboundPayload::UserBroadcast(user) => {
                // Kind 3: the event is the synthesized `broadcast`; the user's event is verbatim.
                assert_eq!(inbound.event, "broadcast");
                assert!(contains(user.event.as_bytes()));
                assert!(bytes.ends_with(&user.body), "a user broadcast's body is the frame's tail");
            }
            InboundPayload::Json(_) => panic!("a binary frame decoded as JSON"),
        }
    }
});
