//! The messages cluster nodes exchange over NATS (`realtide_protocol::peer`): decoding any
//! bytes never panics, and a decoded message encodes back to bytes that decode to the same
//! message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use realtide_protocol::peer::{self, PeerMessage};

fuzz_target!(|data: &[u8]| {
    let Ok(message) = peer::decode(data) else {
        return;
    };
    let encoded = match &message {
        PeerMessage::Broadcast(m) => m.encode(),
        PeerMessage::Presence(m) => m.encode(),
        PeerMessage::Heartbeat(m) => m.encode(),
        PeerMessage::Sync(m) => m.encode(),
        PeerMessage::Synced(m) => m.encode(),
        PeerMessage::Records(records) => peer::encode_records(records),
    };
    assert_eq!(peer::decode(&encoded).ok(), Some(message));
});
