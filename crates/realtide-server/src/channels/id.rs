//! The identity of one joined channel.

/// Identifies one joined channel (one socket's membership of one topic) process-wide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelId(pub u64);
