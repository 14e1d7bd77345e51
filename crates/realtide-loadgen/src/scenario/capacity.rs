//! Capacity scenarios: `connections` (idle joined connections and the server's memory per
//! connection), `joins` (join rate and latency, public or RLS-authorized private), `presence`
//! (time until every member of a channel sees every other) and `db-broadcast` (`realtime.send`
//! inserts fanned out to subscribers through the replication stream).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use serde_json::{Value, json};
use tokio_postgres::NoTls;

use crate::client::{Endpoint, SourceAddrs};
use crate::peer::{Event, Peer, Protocol, now_micros};
use crate::report::{LatencyRecorder, LatencySummary, machine_info, round3};
use crate::scenario::fanout::{Dial, Receivers, connect_joined, usage, with_usage};

const PUBLIC: &str =
    r#"{"broadcast":{"self":false},"presence":{"key":"","enabled":false},"private":false}"#;

/// Parameters of `connections`.
#[derive(Debug, Clone, Args)]
pub struct ConnectionsArgs {
    /// Server protocol.
    #[arg(long, value_enum, default_value_t = Protocol::Realtide)]
    pub protocol: Protocol,
    /// Connections, each joined to one topic.
    #[arg(long, default_value_t = 10_000)]
    pub count: usize,
    /// Topics they are spread over.
    #[arg(long, default_value_t = 100)]
    pub topics: usize,
    /// Seconds to hold them open before measuring.
    #[arg(long, default_value_t = 3.0)]
    pub hold: f64,
    /// The server's process id (memory is read from /proc).
    #[arg(long)]
    pub server_pid: Option<u32>,
}

/// Runs `connections`.
pub async fn connections(
    args: &ConnectionsArgs,
    endpoint: &Endpoint,
    sources: &SourceAddrs,
    token: &str,
    concurrency: usize,
) -> Result<Value> {
    let before = usage(args.server_pid);
    let started = Instant::now();
    let topics = args.topics.max(1);
    let peers = connect_joined(
        Dial {
            endpoint,
            sources,
            protocol: args.protocol,
            token,
            concurrency,
        },
        args.count,
        |i| format!("idle-{}", i % topics),
        PUBLIC,
    )
    .await?;
    let connect_s = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs_f64(args.hold)).await;
    let after = usage(args.server_pid);
    let per_connection = match (before, after) {
        (Some(b), Some(a)) => Some(
            (a.rss_kb.saturating_sub(b.rss_kb) as f64 * 1024.0 / args.count.max(1) as f64).round(),
        ),
        _ => None,
    };
    for peer in peers {
        drop(peer);
    }
    Ok(json!({
        "scenario": "connections",
        "protocol": format!("{:?}", args.protocol).to_lowercase(),
        "machine": machine_info(),
        "params": {"count": args.count, "topics": topics, "hold_s": args.hold},
        "connected": args.count,
        "connect_s": round3(connect_s),
        "connects_per_s": round3(args.count as f64 / connect_s.max(1e-9)),
        "server_rss_kb_before": before.map(|u| u.rss_kb),
        "server_rss_kb": after.map(|u| u.rss_kb),
        "server_peak_rss_kb": after.map(|u| u.hwm_kb),
        "server_bytes_per_connection": per_connection,
        "server_cpu_s": match (before, after) { (Some(b), Some(a)) => Some(round3(a.cpu_s - b.cpu_s)), _ => None },
    }))
}

/// Parameters of `joins`.
#[derive(Debug, Clone, Args)]
pub struct JoinsArgs {
    /// Private channels (authorized by the RLS policies on realtime.messages; the bench script
    /// installs one that allows `join-%` topics).
    #[arg(long)]
    pub private: bool,
    /// Joins per second.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Connections the joins are spread over (each joins, then leaves, one topic at a time).
    #[arg(long, default_value_t = 200)]
    pub connections: usize,
    /// The server's process id.
    #[arg(long)]
    pub server_pid: Option<u32>,
}

/// Runs `joins`.
pub async fn joins(
    args: &JoinsArgs,
    endpoint: &Endpoint,
    sources: &SourceAddrs,
    token: &str,
    concurrency: usize,
) -> Result<Value> {
    let count = args.connections.max(1);
    let peers = connect_joined(
        Dial {
            endpoint,
            sources,
            protocol: Protocol::Realtide,
            token,
            concurrency,
        },
        count,
        |i| format!("home-{i}"),
        PUBLIC,
    )
    .await?;
    let latency = Arc::new(LatencyRecorder::new(64)?);
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let total = (args.rate * args.duration) as u64;
    let per_connection_interval = Duration::from_secs_f64(count as f64 / args.rate.max(0.001));
    let config = if args.private {
        r#"{"broadcast":{"self":false},"presence":{"key":"","enabled":false},"private":true}"#
    } else {
        PUBLIC
    };
    let before = usage(args.server_pid);
    let start = Instant::now();
    let tasks: Vec<_> = peers
        .into_iter()
        .enumerate()
        .map(|(k, mut peer)| {
            let latency = latency.clone();
            let done = done.clone();
            let failed = failed.clone();
            let token = token.to_owned();
            tokio::spawn(async move {
                let offset = per_connection_interval.mul_f64(k as f64 / count as f64);
                let mut n = 0u64;
                loop {
                    let index = n * count as u64 + k as u64;
                    if index >= total {
                        break;
                    }
                    let due = start + offset + per_connection_interval.mul_f64(n as f64);
                    tokio::time::sleep_until(due.into()).await;
                    let topic = format!("join-{index}");
                    // `Peer::join` sends {"config": <this>}: the token rides along after it.
                    let config = format!("{config},\"access_token\":\"{token}\"");
                    let sent = Instant::now();
                    let joined = peer.join(&topic, &config, Duration::from_secs(30)).await;
                    match joined {
                        Ok(()) => {
                            latency.record(k, sent.elapsed().as_micros() as u64);
                            done.fetch_add(1, Ordering::Relaxed);
                            let _ = peer.send_text(format!(
                                "[null,null,\"realtime:{topic}\",\"phx_leave\",{{}}]"
                            ));
                        }
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    n += 1;
                }
                peer.close().await;
            })
        })
        .collect();
    for task in tasks {
        let _ = task.await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let after = usage(args.server_pid);
    let joined = done.load(Ordering::Relaxed);
    let report = json!({
        "scenario": "joins",
        "machine": machine_info(),
        "params": {"private": args.private, "rate": args.rate, "duration_s": args.duration, "connections": count},
        "attempted": total,
        "joined": joined,
        "failed": failed.load(Ordering::Relaxed),
        "joins_per_s": round3(joined as f64 / elapsed.max(1e-9)),
        "latency": LatencySummary::from_micros(&latency.merged()?),
    });
    Ok(with_usage(report, before, after, joined))
}

/// Parameters of `presence`.
#[derive(Debug, Clone, Args)]
pub struct PresenceArgs {
    /// Members of the channel.
    #[arg(long, default_value_t = 1000)]
    pub members: usize,
    /// Seconds allowed to reach a consistent state.
    #[arg(long, default_value_t = 60.0)]
    pub timeout: f64,
    /// The server's process id.
    #[arg(long)]
    pub server_pid: Option<u32>,
}

/// Keys joined (and left) in a `presence_state` or `presence_diff` frame.
fn presence_keys(frame: &[u8], seen: &mut HashSet<String>) {
    let Ok(parts) = serde_json::from_slice::<Vec<Value>>(frame) else {
        return;
    };
    let (Some(event), Some(payload)) = (parts.get(3).and_then(Value::as_str), parts.get(4)) else {
        return;
    };
    match event {
        "presence_state" => {
            if let Some(map) = payload.as_object() {
                seen.extend(map.keys().cloned());
            }
        }
        "presence_diff" => {
            if let Some(joins) = payload.get("joins").and_then(Value::as_object) {
                seen.extend(joins.keys().cloned());
            }
            if let Some(leaves) = payload.get("leaves").and_then(Value::as_object) {
                for key in leaves.keys() {
                    seen.remove(key);
                }
            }
        }
        _ => {}
    }
}

/// Runs `presence`.
pub async fn presence(
    args: &PresenceArgs,
    endpoint: &Endpoint,
    sources: &SourceAddrs,
    token: &str,
    concurrency: usize,
) -> Result<Value> {
    let members = args.members.max(1);
    let mut peers = Vec::with_capacity(members);
    for chunk_start in (0..members).step_by(concurrency.max(1)) {
        let chunk_end = (chunk_start + concurrency.max(1)).min(members);
        let batch = futures_util::future::join_all((chunk_start..chunk_end).map(|i| async move {
            let mut peer = Peer::connect(
                endpoint,
                sources.pick(i),
                Protocol::Realtide,
                token,
                Duration::from_secs(30),
            )
            .await?;
            let config = format!(
                r#"{{"broadcast":{{"self":false}},"presence":{{"key":"m-{i}","enabled":true}},"private":false}}"#
            );
            peer.join("presence-room", &config, Duration::from_secs(30))
                .await?;
            Ok::<Peer, anyhow::Error>(peer)
        }))
        .await;
        for peer in batch {
            peers.push(peer.context("presence member")?);
        }
    }
    let before = usage(args.server_pid);
    let start = Instant::now();
    let consistent = Arc::new(LatencyRecorder::new(16)?);
    let reached = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = peers
        .into_iter()
        .enumerate()
        .map(|(i, mut peer)| {
            let consistent = consistent.clone();
            let reached = reached.clone();
            let timeout = Duration::from_secs_f64(args.timeout);
            tokio::spawn(async move {
                let _ = peer.send_text(format!(
                    "[\"1\",\"t{i}\",\"realtime:presence-room\",\"presence\",{{\"type\":\"presence\",\"event\":\"track\",\"payload\":{{\"i\":{i}}}}}]"
                ));
                let mut seen = HashSet::new();
                let wait = async {
                    while seen.len() < members {
                        match peer.next().await {
                            Ok(Some(Event::Other(frame))) => presence_keys(&frame, &mut seen),
                            Ok(Some(_)) => {}
                            Ok(None) | Err(_) => return false,
                        }
                    }
                    true
                };
                if tokio::time::timeout(timeout, wait).await == Ok(true) {
                    consistent.record(i, start.elapsed().as_micros() as u64);
                    reached.fetch_add(1, Ordering::Relaxed);
                }
                peer
            })
        })
        .collect();
    let mut peers = Vec::with_capacity(members);
    for task in tasks {
        if let Ok(peer) = task.await {
            peers.push(peer);
        }
    }
    let after = usage(args.server_pid);
    let summary = LatencySummary::from_micros(&consistent.merged()?);
    let reached = reached.load(Ordering::Relaxed);
    drop(peers);
    let diffs = (members * members) as u64;
    let report = json!({
        "scenario": "presence",
        "machine": machine_info(),
        "params": {"members": members},
        "members_consistent": reached,
        "all_consistent": reached == members as u64,
        "time_to_consistent_ms": summary,
        "diff_deliveries": diffs,
    });
    Ok(with_usage(report, before, after, diffs))
}

/// Parameters of `db-broadcast`.
#[derive(Debug, Clone, Args)]
pub struct DbBroadcastArgs {
    /// PostgreSQL URL (the server's database).
    #[arg(long, env = "DB_URL", hide_env_values = true)]
    pub db_url: String,
    /// Subscribers of the topic.
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,
    /// `realtime.send` calls per second.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Seconds of inserting.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Broadcast on the private channel (the bench script installs a read policy for `dbb-%`).
    #[arg(long)]
    pub private: bool,
    /// The server's process id.
    #[arg(long)]
    pub server_pid: Option<u32>,
}

/// Runs `db-broadcast`.
pub async fn db_broadcast(
    args: &DbBroadcastArgs,
    endpoint: &Endpoint,
    sources: &SourceAddrs,
    token: &str,
    concurrency: usize,
) -> Result<Value> {
    let (db, connection) = tokio_postgres::connect(&args.db_url, NoTls)
        .await
        .context("connecting to DB_URL")?;
    tokio::spawn(connection);
    db.batch_execute("set synchronous_commit = on").await?;
    let config = if args.private {
        format!(
            r#"{{"broadcast":{{"self":false}},"presence":{{"key":"","enabled":false}},"private":true}},"access_token":"{token}""#
        )
    } else {
        PUBLIC.to_owned()
    };
    let peers = connect_joined(
        Dial {
            endpoint,
            sources,
            protocol: Protocol::Realtide,
            token,
            concurrency,
        },
        args.subscribers,
        |_| "dbb-0".to_owned(),
        &config,
    )
    .await?;
    let receivers = Receivers::new(64)?;
    let since = Arc::new(AtomicU64::new(u64::MAX));
    let tasks: Vec<_> = peers
        .into_iter()
        .enumerate()
        .map(|(i, peer)| tokio::spawn(receivers.clone().receive(peer, i, since.clone())))
        .collect();
    let statement = db
        .prepare("select realtime.send(jsonb_build_object('t', $1::int8, 's', $2::int8), 'm', 'dbb-0', $3)")
        .await?;
    let before = usage(args.server_pid);
    let started = now_micros();
    since.store(started, Ordering::Relaxed);
    let start = Instant::now();
    let mut sent = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while start.elapsed().as_secs_f64() < args.duration {
        tick.tick().await;
        let due = (start.elapsed().as_secs_f64() * args.rate) as u64;
        let mut batch = Vec::new();
        while sent < due {
            let t = i64::try_from(now_micros()).unwrap_or(i64::MAX);
            let s = i64::try_from(sent).unwrap_or(i64::MAX);
            batch.push((t, s));
            sent += 1;
        }
        let private = args.private;
        let calls = batch.into_iter().map(|(t, s)| {
            let db = &db;
            let statement = &statement;
            async move { db.execute(statement, &[&t, &s, &private]).await }
        });
        // Pipelined on the connection: one round trip per tick.
        for result in futures_util::future::join_all(calls).await {
            result?;
        }
    }
    let expected = sent * args.subscribers as u64;
    receivers.drain(|| expected, Duration::from_secs(15)).await;
    let after = usage(args.server_pid);
    let (delivered, elapsed_s) = receivers.stop(tasks, started).await;
    let report = json!({
        "scenario": "db-broadcast",
        "machine": machine_info(),
        "params": {"subscribers": args.subscribers, "rate": args.rate, "duration_s": args.duration, "private": args.private},
        "sent": sent,
        "expected": expected,
        "delivered": delivered,
        "missing": expected.saturating_sub(delivered),
        "deliveries_per_s": if elapsed_s > 0.0 { round3(delivered as f64 / elapsed_s) } else { 0.0 },
        "latency": LatencySummary::from_micros(&receivers.latency.merged()?),
    });
    Ok(with_usage(report, before, after, delivered))
}
