//! Pure codec for the Supabase Realtime wire protocol (Phoenix channels).
//!
//! No I/O and no async runtime: bytes in, typed values out, and back.
//!
//! Module map:
//! - [`id`]: newtypes for the identifiers on the wire (`Topic`, `JoinRef`, `Ref`) and [`id::Vsn`].
//! - [`frame`]: decoding of client frames (V1 JSON objects, V2 JSON arrays, V2 binary kinds 0 and 3)
//!   into an [`frame::Inbound`]; never panics on any input.
//! - [`message`]: the typed client messages ([`message::ClientMessage`]) built from an inbound frame,
//!   including the lenient join-config parsing.
//! - [`encode`]: server frames: replies, pushes, broadcasts, V2 kind-4 user broadcasts.
//! - [`presence`]: rendering of presence metas, `presence_state` and `presence_diff` payloads.
//! - [`system`]: `system` message payloads.
//! - [`plain`]: the plain JSON protocol of the per-app endpoint (`subscribe`, `change`,
//!   `presence_state`, ...): typed client messages with error codes, server messages.
//! - [`peer`]: the binary messages realtide nodes of a cluster exchange over NATS (broadcasts,
//!   presence, heartbeats, change stream records); decoding never panics.
//! - [`wsframe`]: RFC 6455 framing shared by the server, the load generator and the tests'
//!   client: opcodes, header encoding, masking, a frame parser that never panics on peer bytes
//!   (client or server rules, a payload limit), and reassembly of fragmented messages.

pub mod encode;
pub mod frame;
pub mod id;
pub mod message;
pub mod peer;
pub mod plain;
pub mod presence;
pub mod system;
pub mod wsframe;

pub use frame::{DecodeError, Inbound, InboundPayload, UserBroadcast, UserEncoding};
pub use id::{JoinRef, Ref, Topic, Vsn};
pub use message::ClientMessage;
