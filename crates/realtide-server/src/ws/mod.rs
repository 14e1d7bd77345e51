//! The WebSocket transport under a session: accepting, TLS, reading frames, writing batches.
//!
//! - [`listener`]: accepted sockets counted from accept and given `HANDSHAKE_TIMEOUT_MS`.
//! - [`tls`]: native TLS for the listener (`TLS_CERT`, `TLS_KEY`).
//! - [`frames`]: the frame reader (small, growable buffers).
//! - [`writer`]: the writer task: drains a connection's outbox into the socket in batches.
//!
//! Imports run one way: this folder uses `outbox`, `metrics`, `limits`; nothing here imports
//! `session` or `http`.

pub mod frames;
pub mod listener;
pub mod tls;
pub mod writer;
