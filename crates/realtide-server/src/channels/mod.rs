//! Channels: topics and their subscribers, fan-out, presence and the publish path.
//!
//! - [`registry`]: topics (rooms), their subscribers by audience, fan-out of frames.
//! - [`id`]: [`id::ChannelId`], one socket's membership of one topic.
//! - [`presence`]: the presence state of a topic and its diffs.
//! - [`publish`]: the one publish path of user broadcasts (client, HTTP, database), and the
//!   seam for forwarding to peers.
//! - [`broadcast`]: user broadcast bodies and their frames.
//!
//! Imports run one way: this folder uses `outbox`, `limits`, `metrics`; nothing here imports
//! `session`, `ws`, `http`, `changes` or `db`.

pub mod broadcast;
pub mod id;
pub mod presence;
pub mod publish;
pub mod registry;
