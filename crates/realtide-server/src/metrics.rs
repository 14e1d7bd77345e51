//! Process-wide counters, updated with relaxed atomics on the hot path.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Counters read by health and metrics endpoints.
#[derive(Debug, Default)]
pub struct Metrics {
    connections: AtomicUsize,
    channels: AtomicUsize,
    joins: AtomicU64,
    events_in: AtomicU64,
    events_out: AtomicU64,
    bytes_out: AtomicU64,
    slow_consumer_disconnects: AtomicU64,
    database_events: AtomicU64,
}

/// A point-in-time copy of the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Snapshot {
    /// Open WebSocket connections.
    pub connections: usize,
    /// Joined channels.
    pub channels: usize,
    /// Successful joins since start.
    pub joins: u64,
    /// Client messages received since start.
    pub events_in: u64,
    /// Frames queued to clients since start.
    pub events_out: u64,
    /// Bytes written to clients since start.
    pub bytes_out: u64,
    /// Connections closed for being slow consumers.
    pub slow_consumer_disconnects: u64,
    /// postgres_changes messages delivered since start.
    pub database_events: u64,
}

impl Metrics {
    /// A connection opened; returns the new count.
    pub fn connection_opened(&self) -> usize {
        self.connections.fetch_add(1, Ordering::Relaxed) + 1
    }
    /// A connection closed.
    pub fn connection_closed(&self) {
        self.connections.fetch_sub(1, Ordering::Relaxed);
    }
    /// A channel joined.
    pub fn channel_joined(&self) {
        self.channels.fetch_add(1, Ordering::Relaxed);
        self.joins.fetch_add(1, Ordering::Relaxed);
    }
    /// A channel ended.
    pub fn channel_left(&self) {
        self.channels.fetch_sub(1, Ordering::Relaxed);
    }
    /// A client message arrived.
    pub fn event_in(&self) {
        self.events_in.fetch_add(1, Ordering::Relaxed);
    }
    /// Frames were handed to subscribers.
    pub fn events_out(&self, n: u64) {
        self.events_out.fetch_add(n, Ordering::Relaxed);
    }
    /// Bytes were written to a socket.
    pub fn add_bytes_out(&self, n: usize) {
        self.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
    }
    /// A slow consumer was disconnected.
    pub fn slow_consumer_disconnect(&self) {
        self.slow_consumer_disconnects
            .fetch_add(1, Ordering::Relaxed);
    }
    /// postgres_changes messages were delivered.
    pub fn database_events(&self, n: u64) {
        self.database_events.fetch_add(n, Ordering::Relaxed);
    }
    /// Reads every counter.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            connections: self.connections.load(Ordering::Relaxed),
            channels: self.channels.load(Ordering::Relaxed),
            joins: self.joins.load(Ordering::Relaxed),
            events_in: self.events_in.load(Ordering::Relaxed),
            events_out: self.events_out.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            slow_consumer_disconnects: self.slow_consumer_disconnects.load(Ordering::Relaxed),
            database_events: self.database_events.load(Ordering::Relaxed),
        }
    }
}
