//! `cluster`: one topic, `--subscribers` spread round robin over the nodes of a cluster
//! (`--nodes`, WebSocket URLs), one publisher on node `--publisher-node`. Works with one node
//! too, so that the same load can be measured against a single server.
//!
//! After the joins, a warm-up publishes a message every 200 ms until every subscriber has
//! received one (the nodes have learned each other's interest in the topic), then two phases
//! run on the same connections: `full` at `--rate` messages per second and `half` at
//! `--half-rate` (default half of `--rate`). Each message carries its send time and a
//! sequence number; per phase the report has the deliveries per second, the latency of all
//! subscribers, of those on the publisher's node (`local`) and of those on other nodes
//! (`remote`), per-node deliveries and latency, duplicates (a message delivered twice to one
//! subscriber: must be 0), and with `--server-pids` the CPU time of every node. Around each
//! phase the `/metrics` of every node are read and the deltas of the `realtide_cluster_*`
//! series (and of the delivery counters) are reported per node, with the inter-node messages
//! and bytes per broadcast.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::{Map, Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::client::{Endpoint, SourceAddrs};
use crate::peer::{self, Event, Peer, Protocol, find, now_micros, timestamp};
use crate::report::{LatencyRecorder, LatencySummary, machine_info, round3};
use crate::scenario::fanout::{Dial, Usage, connect_joined, usage};

/// Parameters of `cluster`.
#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// WebSocket URLs of the nodes, comma-separated (`ws://127.0.0.1:4001,ws://...`);
    /// subscriber `i` connects to node `i % nodes`. Default: the global `--server-url`.
    #[arg(long, value_delimiter = ',')]
    pub nodes: Vec<String>,
    /// Index (in `--nodes`) of the node the publisher connects to.
    #[arg(long, default_value_t = 0)]
    pub publisher_node: usize,
    /// Subscribers in total, all on one topic.
    #[arg(long, default_value_t = 10_000)]
    pub subscribers: usize,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Messages per second of the `full` phase.
    #[arg(long, default_value_t = 28.0)]
    pub rate: f64,
    /// Messages per second of the `half` phase (default: half of `--rate`; 0 skips it).
    #[arg(long)]
    pub half_rate: Option<f64>,
    /// Seconds of sending per phase.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds to wait for outstanding deliveries after each phase.
    #[arg(long, default_value_t = 10.0)]
    pub drain: f64,
    /// Seconds the warm-up may take before the run goes on with the subscribers reached.
    #[arg(long, default_value_t = 30.0)]
    pub warmup_timeout: f64,
    /// Process ids of the nodes, comma-separated, in the order of `--nodes`: their CPU time
    /// per phase (summed and per node).
    #[arg(long, value_delimiter = ',')]
    pub server_pids: Vec<u32>,
    /// Process ids of other server-side processes (e.g. the NATS server), comma-separated:
    /// their CPU time per phase, reported apart from the nodes'.
    #[arg(long, value_delimiter = ',')]
    pub aux_pids: Vec<u32>,
    /// Do not read the nodes' `/metrics`.
    #[arg(long)]
    pub no_metrics: bool,
    /// Topic name.
    #[arg(long, default_value = "cluster-bench")]
    pub topic: String,
}

/// Highest sequence number tracked per subscriber for duplicates (later ones are counted but
/// not checked).
const MAX_TRACKED_SEQ: u64 = 1 << 16;

/// One measured phase's counters.
#[derive(Debug)]
struct Phase {
    /// Unix µs at which its first message was sent (`u64::MAX` until it starts).
    start: AtomicU64,
    /// Unix µs of its latest delivery.
    last: AtomicU64,
    /// Deliveries per node.
    delivered: Vec<AtomicU64>,
    /// Latency per node.
    latency: Vec<LatencyRecorder>,
    duplicates: AtomicU64,
}

impl Phase {
    fn new(nodes: usize) -> Result<Phase> {
        Ok(Phase {
            start: AtomicU64::new(u64::MAX),
            last: AtomicU64::new(0),
            delivered: (0..nodes).map(|_| AtomicU64::new(0)).collect(),
            latency: (0..nodes)
                .map(|_| LatencyRecorder::new(16))
                .collect::<Result<_>>()?,
            duplicates: AtomicU64::new(0),
        })
    }

    fn delivered(&self) -> u64 {
        self.delivered
            .iter()
            .map(|d| d.load(Ordering::Relaxed))
            .sum()
    }
}

/// What the subscriber tasks share.
#[derive(Debug)]
struct Shared {
    phases: Vec<Phase>,
    /// Subscribers that have received at least one message.
    reached: AtomicUsize,
    /// Reached subscribers per node.
    reached_per_node: Vec<AtomicUsize>,
    stop: CancellationToken,
}

impl Shared {
    /// The phase a message sent at `sent` belongs to (none: warm-up).
    fn phase_of(&self, sent: u64) -> Option<&Phase> {
        self.phases
            .iter()
            .rev()
            .find(|p| p.start.load(Ordering::Relaxed) <= sent)
    }
}

/// The sequence number `"s":<digits>` of a payload.
fn sequence(frame: &[u8]) -> Option<u64> {
    let start = find(frame, b"\"s\":")? + 4;
    let digits = frame.get(start..)?;
    let end = digits
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(digits.len());
    std::str::from_utf8(digits.get(..end)?).ok()?.parse().ok()
}

/// Reads deliveries on one subscriber until stopped.
async fn receive(shared: Arc<Shared>, mut peer: Peer, index: usize, node: usize) {
    let mut reached = false;
    let mut seen: Vec<u64> = Vec::new();
    loop {
        let event = tokio::select! {
            biased;
            () = shared.stop.cancelled() => break,
            event = peer.next() => event,
        };
        let frame = match event {
            Ok(Some(Event::Delivery(frame) | Event::Binary(frame))) => frame,
            Ok(Some(Event::Other(_))) => continue,
            Ok(None) | Err(_) => break,
        };
        let now = now_micros();
        let Some(sent) = timestamp(&frame) else {
            continue;
        };
        if !reached {
            reached = true;
            shared.reached.fetch_add(1, Ordering::Relaxed);
            if let Some(r) = shared.reached_per_node.get(node) {
                r.fetch_add(1, Ordering::Relaxed);
            }
        }
        let Some(phase) = shared.phase_of(sent) else {
            continue;
        };
        if let Some(seq) = sequence(&frame).filter(|s| *s < MAX_TRACKED_SEQ) {
            let word = usize::try_from(seq / 64).unwrap_or(0);
            if seen.len() <= word {
                seen.resize(word + 1, 0);
            }
            if let Some(w) = seen.get_mut(word) {
                let bit = 1u64 << (seq % 64);
                if *w & bit != 0 {
                    phase.duplicates.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                *w |= bit;
            }
        }
        if let Some(d) = phase.delivered.get(node) {
            d.fetch_add(1, Ordering::Relaxed);
        }
        phase.last.fetch_max(now, Ordering::Relaxed);
        if let Some(l) = phase.latency.get(node) {
            l.record(index, now.saturating_sub(sent));
        }
    }
    peer.close().await;
}

/// `GET /metrics` of the node behind `endpoint` (HTTP/1.0, so the body is not chunked):
/// every sample as `name{labels}` → value.
pub async fn scrape_metrics(endpoint: &Endpoint) -> Result<Map<String, Value>> {
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(endpoint.addr).await?;
        stream
            .write_all(
                format!(
                    "GET /metrics HTTP/1.0\r\nHost: {}\r\nConnection: close\r\n\r\n",
                    endpoint.host_header
                )
                .as_bytes(),
            )
            .await?;
        let mut body = Vec::new();
        stream.read_to_end(&mut body).await?;
        Ok::<Vec<u8>, std::io::Error>(body)
    };
    let raw = tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .context("reading /metrics timed out")?
        .context("reading /metrics")?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or(("", ""));
    if !head.starts_with("HTTP/1.") || !head.contains(" 200 ") {
        bail!(
            "/metrics answered {}",
            head.lines().next().unwrap_or("nothing")
        );
    }
    Ok(parse_metrics(body))
}

/// Prometheus text samples (comments skipped) as `name{labels}` → value.
pub fn parse_metrics(body: &str) -> Map<String, Value> {
    let mut out = Map::new();
    for line in body.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some((name, value)) = line.rsplit_once(' ')
            && let Ok(v) = value.parse::<f64>()
        {
            out.insert(name.trim().to_owned(), json!(v));
        }
    }
    out
}

/// Series whose deltas are reported.
fn tracked(name: &str) -> bool {
    name.starts_with("realtide_cluster_")
        || name.starts_with("realtide_events_out_total")
        || name.starts_with("realtide_events_in_total")
        || name.starts_with("realtide_bytes_out_total")
        || name.starts_with("realtide_database_events_total")
}

/// `after - before` of the tracked series (gauges such as the stream lag: the value after).
fn metrics_delta(before: &Map<String, Value>, after: &Map<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    for (name, value) in after {
        if !tracked(name) {
            continue;
        }
        let a = value.as_f64().unwrap_or(0.0);
        let v = if name.ends_with("_total") || name.contains("_total{") {
            a - before.get(name).and_then(Value::as_f64).unwrap_or(0.0)
        } else {
            a
        };
        out.insert(name.clone(), json!(round3(v)));
    }
    out
}

/// Sum over nodes of the delta of `series` (e.g. `realtide_cluster_bytes_total{direction="out"}`).
fn sum_series(deltas: &[Option<Map<String, Value>>], series: &str) -> Option<f64> {
    let values: Vec<f64> = deltas
        .iter()
        .flatten()
        .filter_map(|m| m.get(series).and_then(Value::as_f64))
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

async fn scrape_all(endpoints: &[Endpoint], skip: bool) -> Vec<Option<Map<String, Value>>> {
    let mut out = Vec::with_capacity(endpoints.len());
    for endpoint in endpoints {
        out.push(if skip {
            None
        } else {
            match scrape_metrics(endpoint).await {
                Ok(m) => Some(m),
                Err(e) => {
                    eprintln!("warning: /metrics of {}: {e:#}", endpoint.addr);
                    None
                }
            }
        });
    }
    out
}

fn usages(pids: &[u32]) -> Vec<Option<Usage>> {
    pids.iter().map(|pid| usage(Some(*pid))).collect()
}

/// Publishes at `rate` for `duration`; `seq` numbers messages across phases.
async fn publish(
    publisher: &mut Peer,
    topic: &str,
    rate: f64,
    duration: Duration,
    size: usize,
    seq: &mut u64,
) -> Result<u64> {
    let start = Instant::now();
    let mut sent = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while start.elapsed() < duration {
        tick.tick().await;
        let due = (start.elapsed().as_secs_f64() * rate) as u64;
        while sent < due {
            publisher.publish(topic, &peer::payload(size, *seq), false)?;
            *seq += 1;
            sent += 1;
        }
    }
    Ok(sent)
}

/// Runs `cluster`.
pub async fn run(
    args: &ClusterArgs,
    default_url: &str,
    source_addrs: u8,
    token: &str,
    concurrency: usize,
) -> Result<Value> {
    let urls: Vec<String> = if args.nodes.is_empty() {
        vec![default_url.to_owned()]
    } else {
        args.nodes.iter().map(|u| u.trim().to_owned()).collect()
    };
    let endpoints = urls
        .iter()
        .map(|u| Endpoint::parse(u))
        .collect::<Result<Vec<_>>>()?;
    let n = endpoints.len();
    if args.publisher_node >= n {
        bail!("--publisher-node {} but {n} nodes", args.publisher_node);
    }
    if !args.server_pids.is_empty() && args.server_pids.len() != n {
        bail!("--server-pids needs one pid per node ({n})");
    }
    let config = r#"{"broadcast":{"self":false,"ack":false},"presence":{"key":"","enabled":false},"private":false}"#;
    let topic = args.topic.as_str();
    let half_rate = args.half_rate.unwrap_or(args.rate / 2.0);
    let mut plan = vec![("full", args.rate)];
    if half_rate > 0.0 {
        plan.push(("half", half_rate));
    }

    // Subscribers: node k gets indexes k, k + n, k + 2n, ...
    eprintln!("connecting {} subscribers over {n} nodes", args.subscribers);
    let connect_start = Instant::now();
    let mut peers: Vec<(usize, usize, Peer)> = Vec::with_capacity(args.subscribers);
    let mut per_node = vec![0usize; n];
    for (k, endpoint) in endpoints.iter().enumerate() {
        let sources = SourceAddrs::loopback(source_addrs, &endpoint.addr);
        let count = (args.subscribers + n - 1 - k) / n;
        let joined = connect_joined(
            Dial {
                endpoint,
                sources: &sources,
                protocol: Protocol::Realtide,
                token,
                concurrency,
            },
            count,
            |_| topic.to_owned(),
            config,
        )
        .await
        .with_context(|| format!("node {k} ({})", urls.get(k).map_or("", String::as_str)))?;
        if let Some(c) = per_node.get_mut(k) {
            *c = joined.len();
        }
        peers.extend(
            joined
                .into_iter()
                .enumerate()
                .map(|(j, peer)| (j * n + k, k, peer)),
        );
    }
    let connect_s = connect_start.elapsed().as_secs_f64();
    let publisher_endpoint = endpoints
        .get(args.publisher_node)
        .context("publisher node")?;
    let mut publisher = connect_joined(
        Dial {
            endpoint: publisher_endpoint,
            sources: &SourceAddrs::loopback(source_addrs, &publisher_endpoint.addr),
            protocol: Protocol::Realtide,
            token,
            concurrency,
        },
        1,
        |_| topic.to_owned(),
        config,
    )
    .await?
    .pop()
    .context("no publisher")?;

    let shared = Arc::new(Shared {
        phases: plan.iter().map(|_| Phase::new(n)).collect::<Result<_>>()?,
        reached: AtomicUsize::new(0),
        reached_per_node: (0..n).map(|_| AtomicUsize::new(0)).collect(),
        stop: CancellationToken::new(),
    });
    let total = peers.len();
    let tasks: Vec<_> = peers
        .into_iter()
        .map(|(index, node, peer)| tokio::spawn(receive(shared.clone(), peer, index, node)))
        .collect();

    // Warm-up: until every subscriber has received a message.
    eprintln!("warm-up: publishing until all {total} subscribers receive");
    let warmup_start = Instant::now();
    let warmup_limit = Duration::from_secs_f64(args.warmup_timeout.max(1.0));
    let mut seq = MAX_TRACKED_SEQ; // warm-up messages are not checked for duplicates
    let mut warmup_sent = 0u64;
    while shared.reached.load(Ordering::Relaxed) < total && warmup_start.elapsed() < warmup_limit {
        publisher.publish(topic, &peer::payload(args.size, seq), false)?;
        seq += 1;
        warmup_sent += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let warmup_s = warmup_start.elapsed().as_secs_f64();
    let reached = shared.reached.load(Ordering::Relaxed);
    let reached_per_node: Vec<usize> = shared
        .reached_per_node
        .iter()
        .map(|r| r.load(Ordering::Relaxed))
        .collect();
    eprintln!("warm-up: {reached}/{total} reached in {warmup_s:.1} s ({reached_per_node:?})");
    // Let the last warm-up deliveries settle.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut phases_out = Vec::new();
    seq = 0;
    for (p, (name, rate)) in plan.iter().enumerate() {
        let Some(phase) = shared.phases.get(p) else {
            continue;
        };
        eprintln!("phase {name}: {rate} msgs/s for {} s", args.duration);
        let metrics_before = scrape_all(&endpoints, args.no_metrics).await;
        let cpu_before = usages(&args.server_pids);
        let aux_before = usages(&args.aux_pids);
        let own_before = usage(Some(std::process::id()));
        let started = now_micros();
        phase.start.store(started, Ordering::Relaxed);
        let sent = publish(
            &mut publisher,
            topic,
            *rate,
            Duration::from_secs_f64(args.duration),
            args.size,
            &mut seq,
        )
        .await?;
        let expected = sent * total as u64;
        let drain_until = Instant::now() + Duration::from_secs_f64(args.drain);
        while phase.delivered() < expected && Instant::now() < drain_until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let cpu_after = usages(&args.server_pids);
        let aux_after = usages(&args.aux_pids);
        let own_after = usage(Some(std::process::id()));
        let metrics_after = scrape_all(&endpoints, args.no_metrics).await;
        let delivered = phase.delivered();
        let elapsed_s = phase.last.load(Ordering::Relaxed).saturating_sub(started) as f64 / 1e6;

        // Latency: per node, the publisher's node, the others, all.
        let mut all = LatencyRecorder::new(1)?.merged()?;
        let mut remote = LatencyRecorder::new(1)?.merged()?;
        let mut local = LatencyRecorder::new(1)?.merged()?;
        let mut nodes_out = Vec::with_capacity(n);
        let mut deltas = Vec::with_capacity(n);
        for k in 0..n {
            let h = phase.latency.get(k).context("node latency")?.merged()?;
            all.add(&h).context("merging")?;
            if k == args.publisher_node {
                local.add(&h).context("merging")?;
            } else {
                remote.add(&h).context("merging")?;
            }
            let delta = match (metrics_before.get(k), metrics_after.get(k)) {
                (Some(Some(b)), Some(Some(a))) => Some(metrics_delta(b, a)),
                _ => None,
            };
            let cpu = match (cpu_before.get(k), cpu_after.get(k)) {
                (Some(Some(b)), Some(Some(a))) => Some(round3(a.cpu_s - b.cpu_s)),
                _ => None,
            };
            let rss = cpu_after.get(k).copied().flatten().map(|a| a.hwm_kb);
            nodes_out.push(json!({
                "url": urls.get(k),
                "subscribers": per_node.get(k),
                "publisher": k == args.publisher_node,
                "expected": sent * per_node.get(k).copied().unwrap_or(0) as u64,
                "delivered": phase.delivered.get(k).map(|d| d.load(Ordering::Relaxed)),
                "latency": LatencySummary::from_micros(&h),
                "server_cpu_s": cpu,
                "server_peak_rss_kb": rss,
                "metrics_delta": delta,
            }));
            deltas.push(delta);
        }
        let cpu_s: Option<f64> = if args.server_pids.is_empty() {
            None
        } else {
            Some(
                cpu_before
                    .iter()
                    .zip(&cpu_after)
                    .map(|(b, a)| match (b, a) {
                        (Some(b), Some(a)) => a.cpu_s - b.cpu_s,
                        _ => 0.0,
                    })
                    .sum(),
            )
        };
        let aux_cpu_s: Option<f64> = (!args.aux_pids.is_empty()).then(|| {
            aux_before
                .iter()
                .zip(&aux_after)
                .map(|(b, a)| match (b, a) {
                    (Some(b), Some(a)) => a.cpu_s - b.cpu_s,
                    _ => 0.0,
                })
                .sum()
        });
        let sys_s: Option<f64> = (!args.server_pids.is_empty()).then(|| {
            cpu_before
                .iter()
                .zip(&cpu_after)
                .map(|(b, a)| match (b, a) {
                    (Some(b), Some(a)) => a.sys_s - b.sys_s,
                    _ => 0.0,
                })
                .sum()
        });
        let per_broadcast = |series: &str| {
            sum_series(&deltas, series).map(|v| {
                if sent > 0 {
                    round3(v / sent as f64)
                } else {
                    0.0
                }
            })
        };
        let summary = json!({
            "messages_out_per_broadcast": per_broadcast("realtide_cluster_messages_total{direction=\"out\"}"),
            "messages_in_per_broadcast": per_broadcast("realtide_cluster_messages_total{direction=\"in\"}"),
            "bytes_out_per_broadcast": per_broadcast("realtide_cluster_bytes_total{direction=\"out\"}"),
            "bytes_in_per_broadcast": per_broadcast("realtide_cluster_bytes_total{direction=\"in\"}"),
            "bytes_out": sum_series(&deltas, "realtide_cluster_bytes_total{direction=\"out\"}"),
            "bytes_in": sum_series(&deltas, "realtide_cluster_bytes_total{direction=\"in\"}"),
        });
        let duplicates = phase.duplicates.load(Ordering::Relaxed);
        let dps = if elapsed_s > 0.0 {
            round3(delivered as f64 / elapsed_s)
        } else {
            0.0
        };
        eprintln!(
            "phase {name}: {delivered}/{expected} delivered, {dps}/s, duplicates {duplicates}"
        );
        phases_out.push(json!({
            "name": name,
            "rate": rate,
            "sent": sent,
            "expected": expected,
            "delivered": delivered,
            "missing": expected.saturating_sub(delivered),
            "duplicates": duplicates,
            "offered_per_s": round3(rate * total as f64),
            "deliveries_per_s": dps,
            "latency": LatencySummary::from_micros(&all),
            "latency_local": LatencySummary::from_micros(&local),
            "latency_remote": if n > 1 { Some(LatencySummary::from_micros(&remote)) } else { None },
            "server_cpu_s": cpu_s.map(round3),
            "server_sys_s": sys_s.map(round3),
            "server_cpu_us_per_delivery": cpu_s.map(|c| if delivered > 0 { round3(c * 1e6 / delivered as f64) } else { 0.0 }),
            "aux_cpu_s": aux_cpu_s.map(round3),
            "loadgen_cpu_s": match (own_before, own_after) {
                (Some(b), Some(a)) => Some(round3(a.cpu_s - b.cpu_s)),
                _ => None,
            },
            "cluster": summary,
            "nodes": nodes_out,
        }));
        // A pause between phases so that late deliveries of one do not overlap the next.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    publisher.close().await;
    shared.stop.cancel();
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
    }

    let first = phases_out.first().cloned().unwrap_or(Value::Null);
    let duplicates: u64 = phases_out
        .iter()
        .filter_map(|p| p.get("duplicates").and_then(Value::as_u64))
        .sum();
    Ok(json!({
        "scenario": "cluster",
        "machine": machine_info(),
        "params": {
            "nodes": urls,
            "publisher_node": args.publisher_node,
            "subscribers": args.subscribers,
            "subscribers_per_node": per_node,
            "size": args.size,
            "rate": args.rate,
            "half_rate": half_rate,
            "duration_s": args.duration,
        },
        "connect_s": round3(connect_s),
        "warmup": {
            "seconds": round3(warmup_s),
            "messages": warmup_sent,
            "reached": reached,
            "reached_per_node": reached_per_node,
            "subscribers": total,
        },
        // The full phase's headline figures, for one-line summaries.
        "delivered": first.get("delivered"),
        "expected": first.get("expected"),
        "deliveries_per_s": first.get("deliveries_per_s"),
        "latency": first.get("latency"),
        "server_cpu_s": first.get("server_cpu_s"),
        "phases": phases_out,
        "correct": duplicates == 0,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_sequences_and_metrics() {
        let p = peer::payload(100, 4242);
        let frame = format!(
            "[null,null,\"realtime:a\",\"broadcast\",{{\"type\":\"broadcast\",\"event\":\"m\",\"payload\":{p}}}]"
        );
        assert_eq!(sequence(frame.as_bytes()), Some(4242));
        let m = parse_metrics(
            "# TYPE x counter\nrealtide_cluster_bytes_total{direction=\"out\"} 1200\n\
             realtide_cluster_stream_lag 3\nrealtide_connections 5\n",
        );
        assert_eq!(
            m.get("realtide_cluster_bytes_total{direction=\"out\"}"),
            Some(&json!(1200.0))
        );
        let before = parse_metrics("realtide_cluster_bytes_total{direction=\"out\"} 200\n");
        let d = metrics_delta(&before, &m);
        assert_eq!(
            d.get("realtide_cluster_bytes_total{direction=\"out\"}"),
            Some(&json!(1000.0))
        );
        assert_eq!(d.get("realtide_cluster_stream_lag"), Some(&json!(3.0)));
        assert!(!d.contains_key("realtide_connections"));
        assert_eq!(
            sum_series(
                &[Some(d.clone()), None, Some(d)],
                "realtide_cluster_stream_lag"
            ),
            Some(6.0)
        );
    }
}
