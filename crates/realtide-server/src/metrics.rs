//! Process-wide counters, updated with relaxed atomics on the hot path.

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};

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
    presence_events: AtomicU64,
    bytes_in: AtomicU64,
    /// Frames queued minus frames taken by writers (frames dropped with a closed connection's
    /// queue are subtracted when the session ends).
    queued_frames: AtomicI64,
    /// Commit-to-delivery delay of the last delivered transaction, in microseconds.
    replication_delay_micros: AtomicU64,
    /// Between the nodes of a cluster.
    pub cluster: ClusterCounters,
}

/// What crosses between the nodes of a cluster.
#[derive(Debug, Default)]
pub struct ClusterCounters {
    /// Messages received from NATS.
    pub messages_in: AtomicU64,
    /// Messages published to NATS.
    pub messages_out: AtomicU64,
    /// Payload bytes received.
    pub bytes_in: AtomicU64,
    /// Payload bytes published.
    pub bytes_out: AtomicU64,
    /// Messages that could not be published (the outgoing queue was full).
    pub dropped_out: AtomicU64,
    /// Change stream messages not yet applied by this node.
    pub stream_lag: AtomicU64,
    /// Times this node took the replication slot over from another node.
    pub failovers: AtomicU64,
}

impl ClusterCounters {
    /// One message received.
    pub fn received(&self, bytes: usize) {
        self.messages_in.fetch_add(1, Ordering::Relaxed);
        self.bytes_in.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// One message published.
    pub fn sent(&self, bytes: usize) {
        self.messages_out.fetch_add(1, Ordering::Relaxed);
        self.bytes_out.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// The Prometheus text lines of these counters.
    pub fn render(&self) -> String {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "# TYPE realtide_cluster_messages_total counter\n\
             realtide_cluster_messages_total{{direction=\"in\"}} {}\n\
             realtide_cluster_messages_total{{direction=\"out\"}} {}\n\
             # TYPE realtide_cluster_bytes_total counter\n\
             realtide_cluster_bytes_total{{direction=\"in\"}} {}\n\
             realtide_cluster_bytes_total{{direction=\"out\"}} {}\n\
             # TYPE realtide_cluster_dropped_total counter\n\
             realtide_cluster_dropped_total {}\n\
             # TYPE realtide_cluster_stream_lag gauge\n\
             realtide_cluster_stream_lag {}\n\
             # TYPE realtide_cluster_failovers_total counter\n\
             realtide_cluster_failovers_total {}\n",
            get(&self.messages_in),
            get(&self.messages_out),
            get(&self.bytes_in),
            get(&self.bytes_out),
            get(&self.dropped_out),
            get(&self.stream_lag),
            get(&self.failovers),
        )
    }
}

/// A point-in-time copy of the counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
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
    /// postgres_changes messages and database broadcasts delivered since start.
    pub database_events: u64,
    /// Presence diffs delivered since start.
    pub presence_events: u64,
    /// Bytes of client messages received since start.
    pub bytes_in: u64,
    /// Frames waiting in outbound queues.
    pub outbound_queue_frames: u64,
    /// Bytes of broadcast and presence frames held for all connections (set by the caller
    /// from the outbound budget).
    pub outbound_held_bytes: u64,
    /// Log lines dropped because the log destination was full, slow or closed (set by the
    /// caller from the log output).
    pub log_lines_dropped: u64,
    /// Seconds between the commit of the last delivered transaction and its delivery.
    pub replication_lag_seconds: f64,
}

impl Metrics {
    /// A connection opened; returns the new count.
    pub fn connection_opened(&self) -> usize {
        self.connections.fetch_add(1, Ordering::Relaxed) + 1
    }
    /// Open connections.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
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
    /// Presence diffs were handed to subscribers.
    pub fn presence_events(&self, n: u64) {
        self.presence_events.fetch_add(n, Ordering::Relaxed);
    }
    /// A client message of `n` bytes arrived.
    pub fn add_bytes_in(&self, n: usize) {
        self.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
    }
    /// `n` frames entered outbound queues.
    pub fn frames_queued(&self, n: i64) {
        self.queued_frames.fetch_add(n, Ordering::Relaxed);
    }
    /// `n` frames left outbound queues (written, or dropped with their connection).
    pub fn frames_dequeued(&self, n: i64) {
        self.queued_frames.fetch_sub(n, Ordering::Relaxed);
    }
    /// A transaction committed at `commit_micros` (Unix) was delivered now.
    pub fn replication_delivered(&self, commit_unix_micros: i64) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        let delay = now.saturating_sub(commit_unix_micros).max(0);
        self.replication_delay_micros
            .store(delay.unsigned_abs(), Ordering::Relaxed);
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
            presence_events: self.presence_events.load(Ordering::Relaxed),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            outbound_queue_frames: self
                .queued_frames
                .load(Ordering::Relaxed)
                .max(0)
                .unsigned_abs(),
            outbound_held_bytes: 0,
            log_lines_dropped: 0,
            replication_lag_seconds: self.replication_delay_micros.load(Ordering::Relaxed) as f64
                / 1e6,
        }
    }
}

/// The authorization latency histogram's name.
const AUTHORIZATION_SECONDS: &str = "realtide_authorization_seconds";
/// Its buckets, in seconds.
const AUTHORIZATION_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Database-side values read at scrape time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicationSample {
    /// Whether the replication stream is connected.
    pub connected: bool,
    /// Server WAL end minus the confirmed position, in bytes.
    pub lag_bytes: u64,
}

/// The Prometheus exporter behind `GET /metrics`.
///
/// The hot path only touches the relaxed atomics of [`Metrics`]; a scrape copies them into
/// `metrics` handles registered on a private (non-global) Prometheus recorder and renders it.
pub struct Exporter {
    handle: metrics_exporter_prometheus::PrometheusHandle,
    connections: metrics::Gauge,
    channels: metrics::Gauge,
    topics: metrics::Gauge,
    joins: metrics::Counter,
    events_in: metrics::Counter,
    events_out: metrics::Counter,
    bytes_out: metrics::Counter,
    slow_consumer_disconnects: metrics::Counter,
    database_events: metrics::Counter,
    bytes_in: metrics::Counter,
    presence_events: metrics::Counter,
    outbound_queue_frames: metrics::Gauge,
    outbound_held_bytes: metrics::Gauge,
    log_lines_dropped: metrics::Counter,
    authorization: metrics::Histogram,
    replication: Option<(metrics::Gauge, metrics::Gauge, metrics::Gauge)>,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter").finish_non_exhaustive()
    }
}

impl Exporter {
    /// Registers every series; the replication series only when a database is configured.
    pub fn new(database: bool) -> Exporter {
        use metrics::{
            Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
        };
        let builder = metrics_exporter_prometheus::PrometheusBuilder::new();
        // Buckets (not a summary) so that latencies aggregate across processes.
        let builder = builder
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full(AUTHORIZATION_SECONDS.into()),
                &AUTHORIZATION_BUCKETS,
            )
            .unwrap_or_else(|_| metrics_exporter_prometheus::PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            describe_gauge!("realtide_connections", "Open WebSocket connections.");
            describe_gauge!("realtide_channels", "Joined channels.");
            describe_gauge!("realtide_topics", "Topics with at least one subscriber.");
            describe_counter!("realtide_joins_total", "Successful channel joins.");
            describe_counter!("realtide_events_in_total", "Client messages received.");
            describe_counter!("realtide_events_out_total", "Frames queued to clients.");
            describe_counter!(
                "realtide_bytes_out_total",
                Unit::Bytes,
                "Bytes written to clients."
            );
            describe_counter!(
                "realtide_slow_consumer_disconnects_total",
                "Connections closed for exceeding their outbound queue bound."
            );
            describe_counter!(
                "realtide_database_events_total",
                "postgres_changes messages delivered."
            );
            describe_counter!(
                "realtide_bytes_in_total",
                Unit::Bytes,
                "Bytes of client messages received."
            );
            describe_counter!(
                "realtide_presence_events_total",
                "Presence diffs delivered to subscribers."
            );
            describe_gauge!(
                "realtide_outbound_queue_frames",
                "Frames waiting in the connections' outbound queues."
            );
            describe_gauge!(
                "realtide_outbound_held_bytes",
                Unit::Bytes,
                "Bytes of broadcast and presence frames held for all connections (bounded by OUTBOUND_TOTAL_BYTES)."
            );
            describe_counter!(
                "realtide_log_lines_dropped_total",
                "Log lines dropped because the log output was full, slow or closed."
            );
            describe_histogram!(
                AUTHORIZATION_SECONDS,
                Unit::Seconds,
                "Private channel authorization checks (RLS on realtime.messages)."
            );
            let replication = database.then(|| {
                describe_gauge!(
                    "realtide_replication_lag_seconds",
                    Unit::Seconds,
                    "Commit-to-delivery delay of the last delivered transaction."
                );
                describe_gauge!(
                    "realtide_replication_connected",
                    "1 while the logical replication stream is connected."
                );
                describe_gauge!(
                    "realtide_replication_lag_bytes",
                    Unit::Bytes,
                    "Server WAL end minus the position confirmed to the slot."
                );
                (
                    gauge!("realtide_replication_connected"),
                    gauge!("realtide_replication_lag_bytes"),
                    gauge!("realtide_replication_lag_seconds"),
                )
            });
            Exporter {
                handle,
                connections: gauge!("realtide_connections"),
                channels: gauge!("realtide_channels"),
                topics: gauge!("realtide_topics"),
                joins: counter!("realtide_joins_total"),
                events_in: counter!("realtide_events_in_total"),
                events_out: counter!("realtide_events_out_total"),
                bytes_out: counter!("realtide_bytes_out_total"),
                slow_consumer_disconnects: counter!("realtide_slow_consumer_disconnects_total"),
                database_events: counter!("realtide_database_events_total"),
                bytes_in: counter!("realtide_bytes_in_total"),
                presence_events: counter!("realtide_presence_events_total"),
                outbound_queue_frames: gauge!("realtide_outbound_queue_frames"),
                outbound_held_bytes: gauge!("realtide_outbound_held_bytes"),
                log_lines_dropped: counter!("realtide_log_lines_dropped_total"),
                authorization: histogram!(AUTHORIZATION_SECONDS),
                replication,
            }
        })
    }

    /// The authorization latency histogram (recorded by the authorizer).
    pub fn authorization_histogram(&self) -> metrics::Histogram {
        self.authorization.clone()
    }

    /// Copies the current values in and renders the Prometheus text exposition.
    pub fn render(
        &self,
        snapshot: Snapshot,
        topics: usize,
        replication: Option<ReplicationSample>,
    ) -> String {
        self.connections.set(snapshot.connections as f64);
        self.channels.set(snapshot.channels as f64);
        self.topics.set(topics as f64);
        self.joins.absolute(snapshot.joins);
        self.events_in.absolute(snapshot.events_in);
        self.events_out.absolute(snapshot.events_out);
        self.bytes_out.absolute(snapshot.bytes_out);
        self.slow_consumer_disconnects
            .absolute(snapshot.slow_consumer_disconnects);
        self.database_events.absolute(snapshot.database_events);
        self.bytes_in.absolute(snapshot.bytes_in);
        self.presence_events.absolute(snapshot.presence_events);
        self.outbound_queue_frames
            .set(snapshot.outbound_queue_frames as f64);
        self.outbound_held_bytes
            .set(snapshot.outbound_held_bytes as f64);
        self.log_lines_dropped.absolute(snapshot.log_lines_dropped);
        if let (Some((connected, lag, seconds)), Some(sample)) = (&self.replication, replication) {
            connected.set(if sample.connected { 1.0 } else { 0.0 });
            lag.set(sample.lag_bytes as f64);
            seconds.set(snapshot.replication_lag_seconds);
        }
        self.handle.render()
    }
}

/// Merges the Prometheus text of several tenants (id, text) into one exposition: each metric
/// family once (its `# HELP` and `# TYPE` lines, then every tenant's samples together, as the
/// text format wants), every sample labelled `tenant="<id>"`. Tenant ids need no escaping
/// (`a-z`, `0-9`, `_`, `-`).
pub fn label_tenants(rendered: &[(String, String)]) -> String {
    let mut families: indexmap::IndexMap<String, (Vec<String>, Vec<String>)> =
        indexmap::IndexMap::new();
    for (tenant, text) in rendered {
        let mut current: Option<String> = None;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# ") {
                let name = rest.split(' ').nth(1).unwrap_or_default().to_owned();
                let (headers, _) = families.entry(name.clone()).or_default();
                if !headers.iter().any(|h| h == line) {
                    headers.push(line.to_owned());
                }
                current = Some(name);
                continue;
            }
            if line.trim().is_empty() {
                continue;
            }
            let name_end = line.find(['{', ' ']).unwrap_or(line.len());
            let (name, rest) = line.split_at(name_end);
            let family = match &current {
                Some(family) if name.starts_with(family.as_str()) => family.clone(),
                _ => name.to_owned(),
            };
            let labelled = match rest.strip_prefix('{') {
                Some(labels) if labels.starts_with('}') => {
                    format!("{name}{{tenant=\"{tenant}\"{labels}")
                }
                Some(labels) => format!("{name}{{tenant=\"{tenant}\",{labels}"),
                None => format!("{name}{{tenant=\"{tenant}\"}}{rest}"),
            };
            families.entry(family).or_default().1.push(labelled);
        }
    }
    let mut out = String::new();
    for (_, (headers, samples)) in families {
        for line in headers.iter().chain(samples.iter()) {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_series_from_the_atomics() {
        let metrics = Metrics::default();
        metrics.connection_opened();
        metrics.channel_joined();
        metrics.event_in();
        metrics.event_in();
        metrics.add_bytes_out(42);
        let exporter = Exporter::new(true);
        let text = exporter.render(
            metrics.snapshot(),
            3,
            Some(ReplicationSample {
                connected: true,
                lag_bytes: 7,
            }),
        );
        for line in [
            "realtide_connections 1",
            "realtide_channels 1",
            "realtide_topics 3",
            "realtide_joins_total 1",
            "realtide_events_in_total 2",
            "realtide_events_out_total 0",
            "realtide_bytes_out_total 42",
            "realtide_slow_consumer_disconnects_total 0",
            "realtide_database_events_total 0",
            "realtide_replication_connected 1",
            "realtide_replication_lag_bytes 7",
            "realtide_bytes_in_total 0",
            "realtide_presence_events_total 0",
            "realtide_outbound_queue_frames 0",
            "realtide_replication_lag_seconds 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing in:\n{text}"
            );
        }
        exporter.authorization_histogram().record(0.002);
        let text = exporter.render(metrics.snapshot(), 3, None);
        assert!(
            text.contains("realtide_authorization_seconds_bucket{le=\"0.0025\"} 1"),
            "{text}"
        );
        // A second exporter (another App in the same process) is independent.
        let other = Exporter::new(false).render(Snapshot::default(), 0, None);
        assert!(other.contains("realtide_connections 0"), "{other}");
        assert!(!other.contains("realtide_replication"), "{other}");
    }

    #[test]
    fn tenants_series_are_labelled_and_grouped_by_family() {
        let a = "# HELP x_total things\n# TYPE x_total counter\nx_total 1\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_sum 3\nh_count 2\n";
        let b = "# HELP x_total things\n# TYPE x_total counter\nx_total 5\n# TYPE h histogram\nh_bucket{le=\"1\"} 7\nh_sum 8\nh_count 7\n";
        let merged = label_tenants(&[
            ("a".to_owned(), a.to_owned()),
            ("b".to_owned(), b.to_owned()),
        ]);
        assert_eq!(
            merged,
            "# HELP x_total things\n# TYPE x_total counter\nx_total{tenant=\"a\"} 1\nx_total{tenant=\"b\"} 5\n# TYPE h histogram\nh_bucket{tenant=\"a\",le=\"1\"} 2\nh_sum{tenant=\"a\"} 3\nh_count{tenant=\"a\"} 2\nh_bucket{tenant=\"b\",le=\"1\"} 7\nh_sum{tenant=\"b\"} 8\nh_count{tenant=\"b\"} 7\n"
        );
    }
}
