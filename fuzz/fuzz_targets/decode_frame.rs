//! Arbitrary bytes as a client WebSocket frame: as a text frame for both serializers (when the
//! bytes are UTF-8) and as a binary frame, then classified like the server does.
//!
//! Besides "no panic", checks the invariants the server relies on:
//! - a text frame's payload is a verbatim slice of the frame (broadcasts are relayed unparsed);
//! - a V1 socket refuses every binary frame;
//! - a decoded binary frame re-encodes to exactly the input bytes.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use realtide_protocol::frame::{KIND_PUSH, KIND_USER_BROADCAST_PUSH, decode_binary, decode_text};
use realtide_protocol::{ClientMessage, DecodeError, Inbound, InboundPayload, UserEncoding, Vsn};

fn reencode(input: &[u8], inbound: &Inbound) -> Vec<u8> {
    let join_ref = inbound.join_ref.as_ref().map_or("", |r| r.as_str()).as_bytes();
    let reference = inbound.reference.as_ref().map_or("", |r| r.as_str()).as_bytes();
    let topic = inbound.topic.as_str().as_bytes();
    let len = |b: &[u8]| u8::try_from(b.len()).expect("decoded field over 255 bytes");
    match &inbound.payload {
        InboundPayload::Binary(data) => [
            &[KIND_PUSH, len(join_ref), len(reference), len(topic), len(inbound.event.as_bytes())][..],
            join_ref,
            reference,
            topic,
            inbound.event.as_bytes(),
            data,
        ]
        .concat(),
        InboundPayload::UserBroadcast(user) => {
            assert_eq!(inbound.event, "broadcast");
            let encoding = input[6];
            assert_eq!(encoding == 0, user.encoding == UserEncoding::Binary);
            if !user.metadata.is_empty() {
                serde_json::from_slice::<serde::de::IgnoredAny>(&user.metadata)
                    .expect("accepted kind-3 metadata that is not JSON");
            }
            [
                &[
                    KIND_USER_BROADCAST_PUSH,
                    len(join_ref),
                    len(reference),
                    len(topic),
                    len(user.event.as_bytes()),
                    len(&user.metadata),
                    encoding,
                ][..],
                join_ref,
                reference,
                topic,
                user.event.as_bytes(),
                &user.metadata,
                &user.body,
            ]
            .concat()
        }
        InboundPayload::Json(_) => panic!("binary frame decoded to a JSON payload"),
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        for vsn in [Vsn::V1, Vsn::V2] {
            if let Ok(inbound) = decode_text(vsn, text) {
                match &inbound.payload {
                    InboundPayload::Json(raw) => assert!(text.contains(raw.get())),
                    other => panic!("text frame decoded to {other:?}"),
                }
                let _ = ClientMessage::from_inbound(inbound);
            }
        }
    }
    let bytes = Bytes::copy_from_slice(data);
    assert!(matches!(decode_binary(Vsn::V1, &bytes), Err(DecodeError::BinaryOnV1)));
    if let Ok(inbound) = decode_binary(Vsn::V2, &bytes) {
        assert_eq!(reencode(data, &inbound), data);
        let _ = ClientMessage::from_inbound(inbound);
    }
});
