//! `fanout`: P publishers, T topics, S subscribers per topic. Publishers send `--rate` messages
//! per second in total (topics in round robin), each carrying its send time; every subscriber
//! of the topic must receive it. Also the `chat` shape (see [`ChatArgs`]).
//!
//! Runs against realtide, the raw ceiling server (`ceiling-server`, same frames) or a
//! Socket.IO 4 server (`--protocol socketio`). With `--server-pid`, the server's CPU time and
//! resident memory are read from `/proc` before and after the send phase.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use futures_util::future::join_all;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::client::{Endpoint, SourceAddrs};
use crate::peer::{self, Event, Peer, Protocol, now_micros, process_usage, timestamp};
use crate::report::{LatencyRecorder, LatencySummary, machine_info, round3};

/// Parameters of `fanout`.
#[derive(Debug, Clone, Args)]
pub struct FanoutArgs {
    /// Server protocol.
    #[arg(long, value_enum, default_value_t = Protocol::Realtide)]
    pub protocol: Protocol,
    /// Publishing connections.
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    /// Topics.
    #[arg(long, default_value_t = 1)]
    pub topics: usize,
    /// Subscribers per topic.
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Messages per second, all publishers together.
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// Seconds of sending.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds to wait for outstanding deliveries after the last send.
    #[arg(long, default_value_t = 10.0)]
    pub drain: f64,
    /// The server's process id, to report its CPU time and memory.
    #[arg(long)]
    pub server_pid: Option<u32>,
}

/// Counters shared by the receiving tasks.
#[derive(Debug)]
pub struct Receivers {
    /// Deliveries of this run's messages.
    pub delivered: AtomicU64,
    /// Unix µs of the latest delivery.
    pub last: AtomicU64,
    /// Latencies.
    pub latency: LatencyRecorder,
    /// Stops the receivers.
    pub stop: CancellationToken,
}

impl Receivers {
    /// Fresh counters.
    pub fn new(shards: usize) -> Result<Arc<Receivers>> {
        Ok(Arc::new(Receivers {
            delivered: AtomicU64::new(0),
            last: AtomicU64::new(0),
            latency: LatencyRecorder::new(shards)?,
            stop: CancellationToken::new(),
        }))
    }

    /// Waits until `expected()` deliveries have arrived, or `drain` has passed.
    pub async fn drain(&self, expected: impl Fn() -> u64, drain: Duration) {
        let until = Instant::now() + drain;
        while self.delivered.load(Ordering::Relaxed) < expected() && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the receivers and waits briefly for their tasks; returns the deliveries and the
    /// seconds from `started` (unix µs) to the last one.
    pub async fn stop(&self, tasks: Vec<tokio::task::JoinHandle<()>>, started: u64) -> (u64, f64) {
        self.stop.cancel();
        for task in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
        }
        let last = self.last.load(Ordering::Relaxed);
        (
            self.delivered.load(Ordering::Relaxed),
            last.saturating_sub(started) as f64 / 1e6,
        )
    }

    /// Reads deliveries on `peer` until stopped or closed; only messages sent at or after
    /// `since` (unix µs) count.
    pub async fn receive(self: Arc<Self>, mut peer: Peer, index: usize, since: Arc<AtomicU64>) {
        loop {
            let event = tokio::select! {
                biased;
                () = self.stop.cancelled() => break,
                event = peer.next() => event,
            };
            match event {
                // Text deliveries, or V2 kind-4 frames (database broadcasts).
                Ok(Some(Event::Delivery(frame) | Event::Binary(frame))) => {
                    let now = now_micros();
                    if let Some(sent) = timestamp(&frame)
                        && sent >= since.load(Ordering::Relaxed)
                    {
                        self.delivered.fetch_add(1, Ordering::Relaxed);
                        self.last.fetch_max(now, Ordering::Relaxed);
                        self.latency.record(index, now.saturating_sub(sent));
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        peer.close().await;
    }
}

/// Where and how connections are opened.
#[derive(Debug, Clone, Copy)]
pub struct Dial<'a> {
    /// The server.
    pub endpoint: &'a Endpoint,
    /// Loopback source addresses.
    pub sources: &'a SourceAddrs,
    /// Its protocol.
    pub protocol: Protocol,
    /// The token (realtide).
    pub token: &'a str,
    /// Connections opened at the same time.
    pub concurrency: usize,
}

/// Opens `count` connections and joins each to `topic_of(i)`, `concurrency` at a time.
pub async fn connect_joined(
    dial: Dial<'_>,
    count: usize,
    topic_of: impl Fn(usize) -> String,
    config: &str,
) -> Result<Vec<Peer>> {
    let Dial {
        endpoint,
        sources,
        protocol,
        token,
        concurrency,
    } = dial;
    let permits = Semaphore::new(concurrency.max(1));
    let timeout = Duration::from_secs(30);
    let attempts = (0..count).map(|i| {
        let topic = topic_of(i);
        let permits = &permits;
        async move {
            let _permit = permits.acquire().await?;
            let mut peer =
                Peer::connect(endpoint, sources.pick(i), protocol, token, timeout).await?;
            peer.join(&topic, config, timeout).await?;
            Ok::<Peer, anyhow::Error>(peer)
        }
    });
    let results = join_all(attempts).await;
    let mut peers = Vec::with_capacity(count);
    for (i, result) in results.into_iter().enumerate() {
        peers.push(result.with_context(|| format!("connection {i}"))?);
    }
    Ok(peers)
}

/// Server CPU seconds and memory at one moment.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    /// Resident KiB.
    pub rss_kb: u64,
    /// Peak resident KiB.
    pub hwm_kb: u64,
    /// CPU seconds used so far.
    pub cpu_s: f64,
    /// Of which in the kernel.
    pub sys_s: f64,
}

/// Reads the server's usage, when its pid is known.
pub fn usage(pid: Option<u32>) -> Option<Usage> {
    let (rss_kb, hwm_kb, user_s, sys_s) = process_usage(pid?).ok()?;
    Some(Usage {
        rss_kb,
        hwm_kb,
        cpu_s: user_s + sys_s,
        sys_s,
    })
}

/// Adds the server usage between two samples to `report`.
pub fn with_usage(
    mut report: Value,
    before: Option<Usage>,
    after: Option<Usage>,
    deliveries: u64,
) -> Value {
    if let (Some(obj), Value::Object(extra)) = (
        report.as_object_mut(),
        usage_report(before, after, deliveries),
    ) {
        obj.extend(extra);
    }
    report
}

/// Server usage between two samples, as report fields.
pub fn usage_report(before: Option<Usage>, after: Option<Usage>, deliveries: u64) -> Value {
    match (before, after) {
        (Some(b), Some(a)) => {
            let cpu = a.cpu_s - b.cpu_s;
            json!({
                "server_cpu_s": round3(cpu),
                "server_sys_s": round3(a.sys_s - b.sys_s),
                "server_cpu_us_per_delivery": if deliveries > 0 { round3(cpu * 1e6 / deliveries as f64) } else { 0.0 },
                "server_rss_kb": a.rss_kb,
                "server_peak_rss_kb": a.hwm_kb,
            })
        }
        _ => json!({}),
    }
}

/// Sends `rate` messages per second for `duration` over `publishers`, topics in round robin;
/// returns how many were sent.
pub async fn publish(
    publishers: &mut [Peer],
    topics: &[String],
    rate: f64,
    duration: Duration,
    size: usize,
) -> Result<u64> {
    if publishers.is_empty() || topics.is_empty() {
        bail!("no publisher or no topic");
    }
    let start = Instant::now();
    let mut sent = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while start.elapsed() < duration {
        tick.tick().await;
        let due = (start.elapsed().as_secs_f64() * rate) as u64;
        while sent < due {
            let n = usize::try_from(sent).unwrap_or(0);
            let topic = topics
                .get(n % topics.len())
                .map(String::as_str)
                .unwrap_or("");
            if let Some(publisher) = publishers.get_mut(n % publishers.len()) {
                publisher.publish(topic, &peer::payload(size, sent), false)?;
            }
            sent += 1;
        }
    }
    Ok(sent)
}

/// Runs `fanout`.
pub async fn run(
    args: &FanoutArgs,
    endpoint: &Endpoint,
    sources: &SourceAddrs,
    token: &str,
    concurrency: usize,
) -> Result<Value> {
    let topics: Vec<String> = (0..args.topics.max(1))
        .map(|t| format!("fan-{t}"))
        .collect();
    let config = r#"{"broadcast":{"self":false,"ack":false},"presence":{"key":"","enabled":false},"private":false}"#;
    let total = topics.len() * args.subscribers;
    eprintln!("connecting {total} subscribers");
    let connect_start = Instant::now();
    let subscribers = connect_joined(
        Dial {
            endpoint,
            sources,
            protocol: args.protocol,
            token,
            concurrency,
        },
        total,
        |i| topics.get(i % topics.len()).cloned().unwrap_or_default(),
        config,
    )
    .await?;
    let connect_s = connect_start.elapsed().as_secs_f64();
    let mut publishers = connect_joined(
        Dial {
            endpoint,
            sources,
            protocol: args.protocol,
            token,
            concurrency,
        },
        args.publishers.max(1),
        |i| topics.get(i % topics.len()).cloned().unwrap_or_default(),
        config,
    )
    .await?;
    // Realtide publishers must have joined every topic they send to.
    if args.protocol == Protocol::Realtide {
        for publisher in &mut publishers {
            for topic in &topics {
                publisher
                    .join(topic, config, Duration::from_secs(30))
                    .await
                    .ok();
            }
        }
    }
    let receivers = Receivers::new(64)?;
    let since = Arc::new(AtomicU64::new(u64::MAX));
    let tasks: Vec<_> = subscribers
        .into_iter()
        .enumerate()
        .map(|(i, peer)| tokio::spawn(receivers.clone().receive(peer, i, since.clone())))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let before = usage(args.server_pid);
    let own_before = usage(Some(std::process::id()));
    let started = now_micros();
    since.store(started, Ordering::Relaxed);
    let sent = publish(
        &mut publishers,
        &topics,
        args.rate,
        Duration::from_secs_f64(args.duration),
        args.size,
    )
    .await?;
    let expected = sent * args.subscribers as u64;
    receivers
        .drain(|| expected, Duration::from_secs_f64(args.drain))
        .await;
    let after = usage(args.server_pid);
    let own_after = usage(Some(std::process::id()));
    for publisher in publishers {
        publisher.close().await;
    }
    let (delivered, elapsed_s) = receivers.stop(tasks, started).await;
    let latency = LatencySummary::from_micros(&receivers.latency.merged()?);
    let report = json!({
        "scenario": "fanout",
        "protocol": format!("{:?}", args.protocol).to_lowercase(),
        "machine": machine_info(),
        "params": {
            "publishers": args.publishers, "topics": topics.len(),
            "subscribers_per_topic": args.subscribers, "size": args.size,
            "rate": args.rate, "duration_s": args.duration,
        },
        "connect_s": round3(connect_s),
        "sent": sent,
        "expected": expected,
        "delivered": delivered,
        "missing": expected.saturating_sub(delivered),
        "offered_per_s": round3(args.rate * args.subscribers as f64),
        "deliveries_per_s": if elapsed_s > 0.0 { round3(delivered as f64 / elapsed_s) } else { 0.0 },
        "latency": latency,
        "loadgen_cpu_s": match (own_before, own_after) {
            (Some(b), Some(a)) => Some(round3(a.cpu_s - b.cpu_s)),
            _ => None,
        },
    });
    Ok(with_usage(report, before, after, delivered))
}

/// Parameters of `chat`: the reference's benchmark shape on one box. Each user has a
/// 1-member echo channel (`self: true`) and is in one 6-member channel; it sends `--per-channel`
/// messages per second to each.
#[derive(Debug, Clone, Args)]
pub struct ChatArgs {
    /// Users (one connection each).
    #[arg(long, default_value_t = 4000)]
    pub users: usize,
    /// Members of each group channel.
    #[arg(long, default_value_t = 6)]
    pub group: usize,
    /// Messages per second each user sends to each of its two channels.
    #[arg(long, default_value_t = 2.0)]
    pub per_channel: f64,
    /// Seconds of sending.
    #[arg(long, default_value_t = 20.0)]
    pub duration: f64,
    /// Payload bytes.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// The server's process id.
    #[arg(long)]
    pub server_pid: Option<u32>,
}

/// Runs `chat` (realtide protocol).
pub async fn run_chat(
    args: &ChatArgs,
    endpoint: &Endpoint,
    sources: &SourceAddrs,
    token: &str,
    concurrency: usize,
) -> Result<Value> {
    let group = args.group.max(1);
    let config = r#"{"broadcast":{"self":true,"ack":false},"presence":{"key":"","enabled":false},"private":false}"#;
    eprintln!("connecting {} users", args.users);
    let mut peers = connect_joined(
        Dial {
            endpoint,
            sources,
            protocol: Protocol::Realtide,
            token,
            concurrency,
        },
        args.users,
        |i| format!("echo-{i}"),
        config,
    )
    .await?;
    for (i, peer) in peers.iter_mut().enumerate() {
        peer.join(
            &format!("group-{}", i / group),
            config,
            Duration::from_secs(30),
        )
        .await?;
    }
    // Every user is both a sender and a receiver: split each connection's work into a sender
    // loop on the same task as its receiver.
    let receivers = Receivers::new(64)?;
    let since = Arc::new(AtomicU64::new(0));
    let before = usage(args.server_pid);
    let started = now_micros();
    since.store(started, Ordering::Relaxed);
    let duration = Duration::from_secs_f64(args.duration);
    let sent = Arc::new(AtomicU64::new(0));
    let expected = Arc::new(AtomicU64::new(0));
    let group_sizes: Vec<u64> = (0..args.users)
        .map(|i| {
            let g = i / group;
            let members = args.users.saturating_sub(g * group).min(group);
            members as u64
        })
        .collect();
    let tasks: Vec<_> = peers
        .into_iter()
        .enumerate()
        .map(|(i, mut peer)| {
            let receivers = receivers.clone();
            let sent = sent.clone();
            let expected = expected.clone();
            let members = group_sizes.get(i).copied().unwrap_or(1);
            let size = args.size;
            let interval = Duration::from_secs_f64(1.0 / args.per_channel.max(0.01));
            tokio::spawn(async move {
                let echo = format!("echo-{i}");
                let room = format!("group-{}", i / group);
                let start = Instant::now();
                // Stagger the first send over one interval.
                let offset = interval.mul_f64((i % 100) as f64 / 100.0);
                let mut next = start + offset;
                let mut seq = 0u64;
                loop {
                    let sending = start.elapsed() < duration;
                    tokio::select! {
                        biased;
                        () = receivers.stop.cancelled() => break,
                        () = tokio::time::sleep_until(next.into()), if sending => {
                            let _ = peer.publish(&echo, &peer::payload(size, seq), false);
                            let _ = peer.publish(&room, &peer::payload(size, seq), false);
                            seq += 1;
                            sent.fetch_add(2, Ordering::Relaxed);
                            expected.fetch_add(1 + members, Ordering::Relaxed);
                            next += interval;
                        }
                        event = peer.next() => match event {
                            Ok(Some(Event::Delivery(frame))) => {
                                let now = now_micros();
                                if let Some(t) = timestamp(&frame) {
                                    receivers.delivered.fetch_add(1, Ordering::Relaxed);
                                    receivers.last.fetch_max(now, Ordering::Relaxed);
                                    receivers.latency.record(i, now.saturating_sub(t));
                                }
                            }
                            Ok(Some(_)) => {}
                            Ok(None) | Err(_) => break,
                        },
                    }
                }
                peer.close().await;
            })
        })
        .collect();
    tokio::time::sleep(duration).await;
    receivers
        .drain(|| expected.load(Ordering::Relaxed), Duration::from_secs(10))
        .await;
    let after = usage(args.server_pid);
    let (delivered, elapsed_s) = receivers.stop(tasks, started).await;
    let report = json!({
        "scenario": "chat",
        "machine": machine_info(),
        "params": {"users": args.users, "group": group, "per_channel_per_s": args.per_channel,
                   "duration_s": args.duration, "size": args.size},
        "sent": sent.load(Ordering::Relaxed),
        "expected": expected.load(Ordering::Relaxed),
        "delivered": delivered,
        "deliveries_per_s": if elapsed_s > 0.0 { round3(delivered as f64 / elapsed_s) } else { 0.0 },
        "latency": LatencySummary::from_micros(&receivers.latency.merged()?),
    });
    Ok(with_usage(report, before, after, delivered))
}
