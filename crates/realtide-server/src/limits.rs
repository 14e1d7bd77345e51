//! Process-wide limits with the reference's semantics: rate counters for events, joins,
//! presence events and database events; the concurrent-users and connection counts; and the
//! per-channel presence call window.
//!
//! The hot path only touches atomics (a relaxed add and a relaxed load of the tripped flag).
//! One ticker task folds the counts into a sliding window every `RATE_COUNTER_TICK_MS` (5 s):
//! `avg = sum(buckets) / len(buckets) / tick`; a counter trips when `avg >= limit` at a tick and
//! clears at the first tick where `avg < limit`, as the reference's `RateCounter`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Buckets in a rate counter's window (12 × 5 s = 60 s).
const WINDOW_BUCKETS: usize = 12;

/// A windowed events-per-second counter with a trip flag. `limit == 0` disables it.
#[derive(Debug)]
pub struct RateCounter {
    limit: u64,
    current: AtomicU64,
    tripped: AtomicBool,
    window: Mutex<VecDeque<u64>>,
}

impl RateCounter {
    fn new(limit: u64) -> RateCounter {
        RateCounter {
            limit,
            current: AtomicU64::new(0),
            tripped: AtomicBool::new(false),
            window: Mutex::new(VecDeque::with_capacity(WINDOW_BUCKETS)),
        }
    }

    /// Counts `n` events.
    pub fn add(&self, n: u64) {
        if self.limit != 0 && n != 0 {
            self.current.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Whether the limit is currently exceeded.
    pub fn tripped(&self) -> bool {
        self.limit != 0 && self.tripped.load(Ordering::Relaxed)
    }

    /// Folds the current count into the window and updates the trip flag.
    fn tick(&self, tick: Duration) {
        if self.limit == 0 {
            return;
        }
        let count = self.current.swap(0, Ordering::Relaxed);
        let mut window = self.window.lock();
        if window.len() == WINDOW_BUCKETS {
            window.pop_front();
        }
        window.push_back(count);
        let sum: u64 = window.iter().sum();
        let seconds = tick.as_secs_f64().max(0.001);
        let average = sum as f64 / window.len() as f64 / seconds;
        let tripped = average >= self.limit as f64;
        if tripped != self.tripped.swap(tripped, Ordering::Relaxed) {
            tracing::info!(
                limit = self.limit,
                average,
                tripped,
                "rate limit state changed"
            );
        }
    }
}

/// Limit settings (0 disables a limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitSettings {
    /// `TENANT_MAX_EVENTS_PER_SECOND`.
    pub events_per_second: u64,
    /// `TENANT_MAX_JOINS_PER_SECOND`.
    pub joins_per_second: u64,
    /// `TENANT_MAX_PRESENCE_EVENTS_PER_SECOND`.
    pub presence_events_per_second: u64,
    /// `TENANT_MAX_CONCURRENT_USERS`.
    pub concurrent_users: usize,
    /// `MAX_CONNECTIONS`.
    pub connections: usize,
    /// `CLIENT_PRESENCE_MAX_CALLS` per `CLIENT_PRESENCE_WINDOW_MS`.
    pub presence_calls: u32,
    /// `CLIENT_PRESENCE_WINDOW_MS`.
    pub presence_window: Duration,
    /// `PRIVATE_ONLY`.
    pub private_only: bool,
    /// `PRESENCE_ENABLED`: presence for every join.
    pub presence_enabled: bool,
    /// `OUTBOUND_TOTAL_BYTES`.
    pub outbound_total_bytes: usize,
    /// `PRESENCE_MAX_STATE_BYTES` (per topic).
    pub presence_state_bytes: usize,
    /// `PRESENCE_MAX_TOTAL_BYTES`.
    pub presence_total_bytes: usize,
    /// `RATE_COUNTER_TICK_MS`.
    pub tick: Duration,
}

impl LimitSettings {
    /// No limits (unit tests and benchmarks).
    pub fn unlimited() -> LimitSettings {
        LimitSettings {
            events_per_second: 0,
            joins_per_second: 0,
            presence_events_per_second: 0,
            concurrent_users: 0,
            connections: 0,
            presence_calls: 0,
            presence_window: Duration::from_secs(30),
            private_only: false,
            presence_enabled: false,
            outbound_total_bytes: usize::MAX,
            presence_state_bytes: usize::MAX,
            presence_total_bytes: usize::MAX,
            tick: Duration::from_secs(5),
        }
    }
}

/// The process's limit state.
#[derive(Debug)]
pub struct Limits {
    /// Settings.
    pub settings: LimitSettings,
    /// Client pushes, deliveries, HTTP and database broadcasts.
    pub events: RateCounter,
    /// Join attempts.
    pub joins: RateCounter,
    /// `presence_state` pushes and `presence_diff` deliveries.
    pub presence: RateCounter,
    /// postgres_changes deliveries (capped by the events limit, as the reference).
    pub db_events: RateCounter,
    /// Broadcast and presence frames held for all connections.
    pub outbound: std::sync::Arc<OutboundBudget>,
    /// Rendered presence metas held by all topics.
    presence_bytes: AtomicUsize,
    users: AtomicUsize,
    /// Users on the other nodes of a cluster, from their last heartbeats.
    remote_users: AtomicUsize,
    connections: AtomicUsize,
}

impl Limits {
    /// Limits from settings.
    pub fn new(settings: LimitSettings) -> Limits {
        Limits {
            settings,
            events: RateCounter::new(settings.events_per_second),
            joins: RateCounter::new(settings.joins_per_second),
            presence: RateCounter::new(settings.presence_events_per_second),
            db_events: RateCounter::new(settings.events_per_second),
            outbound: std::sync::Arc::new(OutboundBudget {
                held: AtomicUsize::new(0),
                limit: settings.outbound_total_bytes,
            }),
            presence_bytes: AtomicUsize::new(0),
            users: AtomicUsize::new(0),
            remote_users: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
        }
    }

    /// Ticks the counters until shutdown.
    pub async fn run(self: std::sync::Arc<Self>, shutdown: CancellationToken) {
        let tick = self.settings.tick;
        let mut interval = tokio::time::interval_at(Instant::now() + tick, tick);
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                _ = interval.tick() => {
                    for counter in [&self.events, &self.joins, &self.presence, &self.db_events] {
                        counter.tick(tick);
                    }
                }
            }
        }
    }

    /// Whether another user (a socket with a first channel) would exceed the limit.
    pub fn users_full(&self) -> bool {
        let max = self.settings.concurrent_users;
        max != 0
            && self
                .users
                .load(Ordering::Relaxed)
                .saturating_add(self.remote_users.load(Ordering::Relaxed))
                >= max
    }

    /// Users of this process (sockets with at least one channel).
    pub fn users(&self) -> usize {
        self.users.load(Ordering::Relaxed)
    }

    /// Users on the other nodes of the cluster, as their heartbeats last said: the users limit
    /// counts the whole cluster, within one heartbeat of accuracy.
    pub fn set_remote_users(&self, users: usize) {
        self.remote_users.store(users, Ordering::Relaxed);
    }

    /// A socket joined its first channel.
    pub fn user_joined(&self) {
        self.users.fetch_add(1, Ordering::Relaxed);
    }

    /// A socket left its last channel.
    pub fn user_left(&self) {
        self.users.fetch_sub(1, Ordering::Relaxed);
    }

    /// Reserves `bytes` of presence metas process-wide; `false` (nothing reserved) past
    /// `PRESENCE_MAX_TOTAL_BYTES`.
    pub fn reserve_presence(&self, bytes: usize) -> bool {
        let before = self.presence_bytes.fetch_add(bytes, Ordering::Relaxed);
        if before.saturating_add(bytes) > self.settings.presence_total_bytes {
            self.presence_bytes.fetch_sub(bytes, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Releases presence bytes reserved with [`Limits::reserve_presence`].
    pub fn release_presence(&self, bytes: usize) {
        self.presence_bytes.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Takes a connection slot; `None` when `MAX_CONNECTIONS` are open.
    pub fn connection(self: &std::sync::Arc<Self>) -> Option<ConnectionSlot> {
        let max = self.settings.connections;
        let previous = self.connections.fetch_add(1, Ordering::Relaxed);
        if max != 0 && previous >= max {
            self.connections.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(ConnectionSlot {
            limits: self.clone(),
        })
    }
}

/// The bytes of broadcast and presence frames alive for all connections (in queues or being
/// written). Frames are counted once however many connections share them: a fan-out's frame
/// is wrapped by [`OutboundBudget::hold`] and uncounted when its last copy is dropped.
#[derive(Debug)]
pub struct OutboundBudget {
    held: AtomicUsize,
    limit: usize,
}

impl OutboundBudget {
    /// Counts `bytes` until its last clone is dropped.
    pub fn hold(self: &std::sync::Arc<Self>, bytes: bytes::Bytes) -> bytes::Bytes {
        self.held.fetch_add(bytes.len(), Ordering::Relaxed);
        bytes::Bytes::from_owner(HeldBytes {
            bytes,
            budget: self.clone(),
        })
    }

    /// Whether more than `OUTBOUND_TOTAL_BYTES` are held.
    pub fn exceeded(&self) -> bool {
        self.held.load(Ordering::Relaxed) > self.limit
    }

    /// Bytes held now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }
}

/// A frame counted in an [`OutboundBudget`].
struct HeldBytes {
    bytes: bytes::Bytes,
    budget: std::sync::Arc<OutboundBudget>,
}

impl AsRef<[u8]> for HeldBytes {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for HeldBytes {
    fn drop(&mut self) {
        self.budget
            .held
            .fetch_sub(self.bytes.len(), Ordering::Relaxed);
    }
}

/// An open connection's slot, released on drop.
#[derive(Debug)]
pub struct ConnectionSlot {
    limits: std::sync::Arc<Limits>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.limits.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A channel's fixed window of presence calls.
#[derive(Debug, Clone, Copy)]
pub struct PresenceWindow {
    started: Instant,
    calls: u32,
}

impl PresenceWindow {
    /// A fresh window.
    pub fn new() -> PresenceWindow {
        PresenceWindow {
            started: Instant::now(),
            calls: 0,
        }
    }

    /// Counts a call; false when it exceeds `max` calls within `window` (0 disables).
    pub fn allow(&mut self, max: u32, window: Duration) -> bool {
        if max == 0 {
            return true;
        }
        let now = Instant::now();
        if now.duration_since(self.started) >= window {
            self.started = now;
            self.calls = 0;
        }
        self.calls += 1;
        self.calls <= max
    }
}

impl Default for PresenceWindow {
    fn default() -> Self {
        PresenceWindow::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trips_on_average_and_clears() {
        let counter = RateCounter::new(10);
        let tick = Duration::from_secs(1);
        counter.add(9);
        counter.tick(tick);
        assert!(!counter.tripped());
        counter.add(11);
        counter.tick(tick);
        // (9 + 11) / 2 = 10 >= 10
        assert!(counter.tripped());
        counter.tick(tick);
        // 20 / 3 < 10
        assert!(!counter.tripped());
        let off = RateCounter::new(0);
        off.add(1_000_000);
        off.tick(tick);
        assert!(!off.tripped());
    }

    #[test]
    fn presence_window() {
        let mut window = PresenceWindow::new();
        let long = Duration::from_secs(3600);
        assert!((0..5).all(|_| window.allow(5, long)));
        assert!(!window.allow(5, long));
        assert!(window.allow(5, Duration::ZERO));
        assert!(window.allow(0, long));
    }
}
