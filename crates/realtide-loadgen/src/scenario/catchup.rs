//! `catch-up`: `postgres_changes` subscribers across a realtide outage.
//!
//! The `postgres-changes` shape (users in teams, table `team_items`, one INSERT binding per
//! subscriber, with or without the membership policy), then:
//!
//! 1. every user subscribes; rows are inserted live at `--live-rate` for `--before` seconds
//!    (the subscribers' positions move, and live delivery is checked);
//! 2. `--stop-cmd` stops the server (the bench script sends SIGTERM and waits for the exit)
//!    while rows are inserted at `--rate` for `--outage` seconds, counted from the stop;
//! 3. `--start-cmd` starts the server again on the same port with the same journal directory
//!    and slot (it prints the new server's pid as its last line and returns once the server
//!    listens); optionally rows keep coming at `--live-rate` for `--after` seconds.
//!
//! Every client whose socket ends reconnects every `--retry-ms` (±50 %) and rejoins with the
//! same join payload (same token subject, topic and bindings), so the server can resume it.
//! Measured: time from the restart to every subscriber having every row, the catch-up rate
//! (first-time deliveries after the restart per second), rejoin times, missing, duplicate and
//! out-of-order deliveries (must all be 0), `Missed changes` notices, and the restarted
//! server's CPU and peak RSS (from `/proc` of the pid `--start-cmd` printed), PostgreSQL's
//! CPU (`--pg-pid`: the postmaster and its children) and the load generator's own CPU over the
//! catch-up.

use std::collections::HashMap;
use std::net::IpAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::client::{
    ConnectOptions, Connection, Endpoint, Received, SourceAddrs, connect, payload_json, reply_ok,
};
use crate::peer::process_usage;
use crate::report::{
    LatencyRecorder, LatencySummary, Timeline, machine_info, parse_commit_timestamp, round3,
    unix_micros,
};
use crate::scenario::postgres_changes::{
    Delivery, InsertPlan, Inserted, Rls, SubStats, SystemPayload, insert_planned, join_payload,
    setup_tables, subscribe, team_of, user_token,
};

/// Parameters of the `catch-up` scenario.
#[derive(Debug, Clone, Args)]
pub struct CatchUpArgs {
    /// Subscribers, one user (and one socket) each.
    #[arg(long, default_value_t = 1000)]
    pub users: usize,
    /// Teams; users are spread evenly (user i is in team i % teams + 1).
    #[arg(long, default_value_t = 10)]
    pub teams: usize,
    /// Row level security on `team_items` (on: each row reaches its team's members only).
    #[arg(long, value_enum, default_value_t = Rls::Off)]
    pub rls: Rls,
    /// Inserts per second while the server is down.
    #[arg(long, default_value_t = 500.0)]
    pub rate: f64,
    /// Seconds from the stop command to the start command; rows are inserted all along.
    #[arg(long, default_value_t = 60.0)]
    pub outage: f64,
    /// Inserts per second while the server is up (`--before` and `--after`).
    #[arg(long, default_value_t = 50.0)]
    pub live_rate: f64,
    /// Seconds of live inserts before the stop.
    #[arg(long, default_value_t = 5.0)]
    pub before: f64,
    /// Seconds of live inserts after the restart, during the catch-up.
    #[arg(long, default_value_t = 0.0)]
    pub after: f64,
    /// Shell command (`sh -c`) that stops the server and returns once it exited.
    #[arg(long)]
    pub stop_cmd: String,
    /// Shell command (`sh -c`) that starts the server on the same address and returns once it
    /// listens; its last line of output is the server's pid. The server's own output must go
    /// elsewhere (a log file): the command's output is read until it closes.
    #[arg(long)]
    pub start_cmd: String,
    /// The first server's pid, for its CPU time and memory before the stop.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// PostgreSQL's postmaster pid, for the cluster's CPU time during the catch-up.
    #[arg(long)]
    pub pg_pid: Option<u32>,
    /// Milliseconds between reconnect attempts of a client (each attempt waits this ±50 %).
    #[arg(long, default_value_t = 200)]
    pub retry_ms: u64,
    /// Seconds one reconnect attempt (connect, join reply, `Subscribed to PostgreSQL`) may take.
    #[arg(long, default_value_t = 30.0)]
    pub attempt_timeout: f64,
    /// Seconds after the restart allowed for every subscriber to have every row.
    #[arg(long, default_value_t = 600.0)]
    pub catchup_timeout: f64,
    /// Seconds to keep reading after the last expected delivery (late duplicates).
    #[arg(long, default_value_t = 3.0)]
    pub settle: f64,
    /// Seconds to wait for the live rows of `--before` before stopping the server.
    #[arg(long, default_value_t = 15.0)]
    pub drain: f64,
    /// PostgreSQL URL (a superuser: the scenario creates tables, grants, the policy and adds
    /// the table to the publication).
    #[arg(long, env = "DB_URL", hide_env_values = true)]
    pub db_url: String,
    /// Publication the server streams.
    #[arg(long, env = "PUBLICATION", default_value = "supabase_realtime")]
    pub publication: String,
    /// Bytes of the `payload` text column of each row.
    #[arg(long, default_value_t = 32)]
    pub payload_bytes: usize,
    /// Insert tick in milliseconds (each tick inserts what is due, pipelined).
    #[arg(long, default_value_t = 10)]
    pub tick_ms: u64,
    /// `synchronous_commit` of the inserting sessions.
    #[arg(long, default_value = "on")]
    pub synchronous_commit: String,
    /// Seconds allowed for all clients to connect and be subscribed at the start.
    #[arg(long, default_value_t = 120.0)]
    pub subscribe_timeout: f64,
}

/// One subscriber's results.
#[derive(Debug, Default)]
struct CatchStats {
    rows: SubStats,
    /// Highest row id received so far.
    last_id: i64,
    /// First-time deliveries of a row below one already received.
    out_of_order: u64,
    /// First-time deliveries before the restart.
    before_restart: u64,
    /// First-time deliveries after the restart.
    after_restart: u64,
    /// Deliveries between a rejoin's join reply and its `Subscribed to PostgreSQL`.
    early: u64,
    /// Microseconds after the restart of the last first-time delivery of a row committed
    /// before it.
    backlog_done_us: Option<u64>,
    /// Sockets that ended while the run went on.
    disconnects: u32,
    /// `system` `Server requested disconnect` messages.
    server_disconnect_notices: u32,
    /// `phx_close` / `phx_error` of the channel.
    channel_closed: u32,
    /// `Missed changes` notices.
    missed_notices: u64,
    /// Reconnect attempts (connect + join) and how many failed.
    attempts: u64,
    failed_attempts: u64,
    last_attempt_error: Option<String>,
    /// Successful rejoins.
    rejoins: u32,
    /// Microseconds after the restart of the first successful rejoin after it.
    rejoined_us: Option<u64>,
}

/// What all subscriber tasks share.
#[derive(Debug)]
struct Shared {
    rls: Rls,
    base_id: i64,
    /// Set when the start command is run.
    restart: OnceLock<Instant>,
    /// Highest row id committed before the restart.
    backlog_last_id: OnceLock<i64>,
    /// Per second after the restart.
    timeline: OnceLock<Timeline>,
    /// Commit-to-delivery of deliveries before the restart.
    live_latency: LatencyRecorder,
    /// Commit-to-delivery (age) of deliveries after the restart.
    catchup_age: LatencyRecorder,
    /// First-time deliveries, all phases.
    delivered: AtomicU64,
    /// First-time deliveries after the restart, and the µs after it of the first and last.
    after_restart: AtomicU64,
    first_after_us: AtomicU64,
    last_after_us: AtomicU64,
    subscribed: AtomicUsize,
    finished_subscribing: AtomicUsize,
    /// Subscribed clients per team.
    subscribed_per_team: Mutex<HashMap<i32, u64>>,
    stop: CancellationToken,
}

impl Shared {
    fn since_restart_us(&self, at: Instant) -> Option<u64> {
        self.restart.get().map(|restart| {
            u64::try_from(at.saturating_duration_since(*restart).as_micros()).unwrap_or(u64::MAX)
        })
    }
}

/// How one client (re)connects.
#[derive(Debug)]
struct Dialer {
    endpoint: Endpoint,
    source: Option<IpAddr>,
    token: String,
    topic: String,
    permits: Arc<Semaphore>,
    retry: Duration,
    attempt_timeout: Duration,
    subscribe_timeout: Duration,
}

impl Dialer {
    /// The wait before a reconnect attempt: `retry` ±50 %.
    fn jittered(&self) -> Duration {
        let base = u64::try_from(self.retry.as_micros()).unwrap_or(u64::MAX);
        let half = (base / 2).max(1);
        Duration::from_micros(half + rand::random::<u64>() % (2 * half))
    }

    /// Connects, joins with the usual payload and waits for `Subscribed to PostgreSQL`;
    /// deliveries that arrive before it are counted too (none should).
    async fn rejoin(
        &self,
        index: usize,
        stats: &mut CatchStats,
        shared: &Shared,
    ) -> Result<Connection> {
        let timeout = self.attempt_timeout;
        let permit = self.permits.acquire().await?;
        let mut conn = connect(
            &self.endpoint,
            self.source,
            &self.endpoint.socket_path(&self.token),
            ConnectOptions {
                timeout,
                ..ConnectOptions::default()
            },
        )
        .await?;
        let join_ref = conn.join(&self.topic, &join_payload(&self.token))?;
        let mut reply = None;
        conn.recv_until(timeout, |m| {
            reply = reply_ok(m, &join_ref);
            reply.is_some()
        })
        .await?;
        reply.unwrap_or_else(|| Err(anyhow!("no join reply")))?;
        drop(permit);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let received = tokio::time::timeout_at(deadline, conn.recv())
                .await
                .map_err(|_| anyhow!("no `Subscribed to PostgreSQL` within {timeout:?}"))??;
            let inbound = match received {
                Some(Received::Phoenix(inbound)) => inbound,
                Some(Received::Binary(_)) => continue,
                None => bail!("server closed the connection before `Subscribed to PostgreSQL`"),
            };
            match inbound.event.as_str() {
                "postgres_changes" => {
                    stats.early += 1;
                    on_delivery(index, payload_json(&inbound), stats, shared);
                }
                "system" => {
                    let payload: Option<SystemPayload> =
                        serde_json::from_str(payload_json(&inbound)).ok();
                    let (status, message) =
                        payload.map(|p| (p.status, p.message)).unwrap_or_default();
                    match (status.as_deref(), message.as_deref()) {
                        (Some("ok"), Some("Subscribed to PostgreSQL")) => break,
                        (Some("ok"), _) => {}
                        other => bail!("subscription refused: {other:?}"),
                    }
                }
                _ => {}
            }
        }
        conn.start_heartbeat(Duration::from_secs(25));
        Ok(conn)
    }
}

/// How a connection's read loop ended.
enum Ended {
    /// The run is over.
    Stopped,
    /// The socket or the channel ended.
    Lost,
}

/// One subscriber: subscribe, read, and after every lost socket reconnect and rejoin until
/// the run stops.
async fn subscriber(index: usize, team: i32, dialer: Dialer, shared: Arc<Shared>) -> CatchStats {
    let mut stats = CatchStats {
        rows: SubStats {
            team,
            ..SubStats::default()
        },
        ..CatchStats::default()
    };
    let first = subscribe(
        &dialer.endpoint,
        dialer.source,
        &dialer.token,
        &dialer.topic,
        &dialer.permits,
        dialer.subscribe_timeout,
    )
    .await;
    let mut conn = match first {
        Ok(conn) => conn,
        Err(e) => {
            stats.rows.error = Some(format!("{e:#}"));
            shared.finished_subscribing.fetch_add(1, Ordering::Relaxed);
            return stats;
        }
    };
    stats.rows.subscribed = true;
    *shared.subscribed_per_team.lock().entry(team).or_default() += 1;
    shared.subscribed.fetch_add(1, Ordering::Relaxed);
    shared.finished_subscribing.fetch_add(1, Ordering::Relaxed);
    loop {
        match read(&mut conn, index, &mut stats, &shared).await {
            Ended::Stopped => {
                conn.close().await;
                return stats;
            }
            Ended::Lost => {
                drop(conn);
                stats.disconnects += 1;
            }
        }
        conn = loop {
            tokio::select! {
                biased;
                () = shared.stop.cancelled() => return stats,
                () = tokio::time::sleep(dialer.jittered()) => {}
            }
            stats.attempts += 1;
            let attempt = tokio::select! {
                biased;
                () = shared.stop.cancelled() => return stats,
                attempt = dialer.rejoin(index, &mut stats, &shared) => attempt,
            };
            match attempt {
                Ok(conn) => break conn,
                Err(e) => {
                    stats.failed_attempts += 1;
                    stats.last_attempt_error = Some(format!("{e:#}"));
                }
            }
        };
        stats.rejoins += 1;
        if stats.rejoined_us.is_none() {
            stats.rejoined_us = shared.since_restart_us(Instant::now());
        }
    }
}

/// Reads deliveries until the run stops or the socket (or the channel) ends.
async fn read(
    conn: &mut Connection,
    index: usize,
    stats: &mut CatchStats,
    shared: &Shared,
) -> Ended {
    loop {
        let received = tokio::select! {
            biased;
            () = shared.stop.cancelled() => return Ended::Stopped,
            r = conn.recv() => r,
        };
        let inbound = match received {
            Ok(Some(Received::Phoenix(inbound))) => inbound,
            Ok(Some(Received::Binary(_))) => continue,
            Ok(None) => return Ended::Lost,
            Err(e) => {
                stats.rows.error = Some(format!("{e:#}"));
                return Ended::Lost;
            }
        };
        match inbound.event.as_str() {
            "postgres_changes" => on_delivery(index, payload_json(&inbound), stats, shared),
            "system" => {
                let payload: Option<SystemPayload> =
                    serde_json::from_str(payload_json(&inbound)).ok();
                let (status, message) = payload.map(|p| (p.status, p.message)).unwrap_or_default();
                let message = message.unwrap_or_default();
                if message == "Server requested disconnect" {
                    stats.server_disconnect_notices += 1;
                } else if status.as_deref() != Some("ok") {
                    if message.starts_with("Missed changes") {
                        stats.missed_notices += 1;
                    } else {
                        stats.rows.system_errors += 1;
                    }
                }
            }
            "phx_close" | "phx_error" => {
                stats.channel_closed += 1;
                return Ended::Lost;
            }
            _ => {}
        }
    }
}

fn on_delivery(index: usize, payload: &str, stats: &mut CatchStats, shared: &Shared) {
    let now = SystemTime::now();
    let now_instant = Instant::now();
    let Ok(delivery) = serde_json::from_str::<Delivery<'_>>(payload) else {
        stats.rows.unparsed += 1;
        return;
    };
    let (Some(row), Some(committed)) = (
        delivery.data.record,
        parse_commit_timestamp(delivery.data.commit_timestamp),
    ) else {
        stats.rows.unparsed += 1;
        return;
    };
    if row.id <= shared.base_id {
        stats.rows.stale += 1;
        return;
    }
    if shared.rls == Rls::On && row.team_id != stats.rows.team {
        stats.rows.wrong += 1;
        return;
    }
    let offset = usize::try_from(row.id - shared.base_id - 1).unwrap_or(usize::MAX / 2);
    if !stats.rows.mark(offset) {
        stats.rows.duplicates += 1;
        return;
    }
    if row.id < stats.last_id {
        stats.out_of_order += 1;
    }
    stats.last_id = stats.last_id.max(row.id);
    stats.rows.correct += 1;
    shared.delivered.fetch_add(1, Ordering::Relaxed);
    let age = u64::try_from(unix_micros(now).saturating_sub(committed).max(0)).unwrap_or(0);
    match shared.since_restart_us(now_instant) {
        Some(us) => {
            stats.after_restart += 1;
            shared.after_restart.fetch_add(1, Ordering::Relaxed);
            shared.first_after_us.fetch_min(us, Ordering::Relaxed);
            shared.last_after_us.fetch_max(us, Ordering::Relaxed);
            shared.catchup_age.record(index, age);
            if let Some(timeline) = shared.timeline.get() {
                timeline.add(now_instant, 1);
            }
            if shared
                .backlog_last_id
                .get()
                .is_some_and(|last| row.id <= *last)
            {
                stats.backlog_done_us = Some(us);
            }
        }
        None => {
            stats.before_restart += 1;
            shared.live_latency.record(index, age);
        }
    }
}

/// Runs `sh -c command`; returns its output and how long it took.
async fn run_hook(what: &str, command: &str) -> Result<(String, Duration)> {
    let started = Instant::now();
    let output = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("running the {what} command"))?;
    if !output.status.success() {
        bail!("the {what} command failed ({})", output.status);
    }
    Ok((
        String::from_utf8_lossy(&output.stdout).into_owned(),
        started.elapsed(),
    ))
}

/// CPU seconds of a process and its live children, plus its reaped children (PostgreSQL: the
/// postmaster and its backends). Clock ticks of 1/100 s, as `/proc` reports on Linux.
fn tree_cpu_s(root: u32) -> Option<f64> {
    let fields = |pid: &str| -> Option<Vec<f64>> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let rest = stat.rsplit_once(')').map(|(_, r)| r)?;
        // After the ')': state, ppid, ..., utime (11), stime (12), cutime (13), cstime (14).
        Some(
            rest.split_whitespace()
                .take(15)
                .map(|v| v.parse::<f64>().unwrap_or(0.0))
                .collect(),
        )
    };
    let sum = |f: &[f64], from: usize, to: usize| -> f64 {
        f.get(from..to).map_or(0.0, |s| s.iter().sum::<f64>())
    };
    let own = fields(&root.to_string())?;
    let mut ticks = sum(&own, 11, 15);
    let root_text = root.to_string();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str() else { continue };
        if pid == root_text || !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let raw = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let ppid = raw
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(root)
            && let Some(f) = fields(pid)
        {
            ticks += sum(&f, 11, 13);
        }
    }
    Some(ticks / 100.0)
}

/// CPU seconds and peak RSS of a process, when it is readable.
fn cpu_and_peak(pid: Option<u32>) -> Option<(f64, f64, u64, u64)> {
    let (rss_kb, hwm_kb, user_s, sys_s) = process_usage(pid?).ok()?;
    Some((user_s + sys_s, sys_s, rss_kb, hwm_kb))
}

/// p50 / p95 / max of `values` (seconds).
fn spread(values: &mut [f64]) -> Value {
    if values.is_empty() {
        return json!(null);
    }
    values.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let index = ((values.len() - 1) as f64 * q).round() as usize;
        values.get(index).copied().map_or(0.0, round3)
    };
    json!({"p50_s": at(0.5), "p95_s": at(0.95), "max_s": at(1.0), "count": values.len()})
}

fn no_rows() -> Result<Inserted> {
    Ok(Inserted {
        rows: Vec::new(),
        failed: 0,
        elapsed: Duration::ZERO,
        roundtrip: LatencySummary::from_micros(&LatencyRecorder::new(1)?.merged()?),
    })
}

/// Runs the scenario and returns its JSON report.
pub async fn run(
    args: &CatchUpArgs,
    endpoint: &Endpoint,
    sources: &SourceAddrs,
    secret: &str,
    connect_concurrency: usize,
) -> Result<Value> {
    let started_at = unix_micros(SystemTime::now()) / 1_000_000;
    let teams = args.teams.max(1);
    eprintln!(
        "catch-up: setup ({} users, {teams} teams, rls {:?})",
        args.users, args.rls
    );
    let base_id =
        setup_tables(&args.db_url, &args.publication, args.users, teams, args.rls).await?;
    let shared = Arc::new(Shared {
        rls: args.rls,
        base_id,
        restart: OnceLock::new(),
        backlog_last_id: OnceLock::new(),
        timeline: OnceLock::new(),
        live_latency: LatencyRecorder::new(64)?,
        catchup_age: LatencyRecorder::new(64)?,
        delivered: AtomicU64::new(0),
        after_restart: AtomicU64::new(0),
        first_after_us: AtomicU64::new(u64::MAX),
        last_after_us: AtomicU64::new(0),
        subscribed: AtomicUsize::new(0),
        finished_subscribing: AtomicUsize::new(0),
        subscribed_per_team: Mutex::new(HashMap::new()),
        stop: CancellationToken::new(),
    });

    // 1. Subscribe everyone.
    let permits = Arc::new(Semaphore::new(connect_concurrency.max(1)));
    let subscribe_timeout = Duration::from_secs_f64(args.subscribe_timeout.max(1.0));
    let connect_start = Instant::now();
    let mut tasks = Vec::with_capacity(args.users);
    for i in 0..args.users {
        let team = team_of(i, teams);
        let dialer = Dialer {
            endpoint: endpoint.clone(),
            source: sources.pick(i),
            token: user_token(i, secret),
            topic: "realtime:team_items".to_owned(),
            permits: Arc::clone(&permits),
            retry: Duration::from_millis(args.retry_ms.max(1)),
            attempt_timeout: Duration::from_secs_f64(args.attempt_timeout.max(1.0)),
            subscribe_timeout,
        };
        let shared = Arc::clone(&shared);
        tasks.push(tokio::spawn(subscriber(i, team, dialer, shared)));
    }
    let deadline = connect_start + subscribe_timeout + Duration::from_secs(5);
    while shared.finished_subscribing.load(Ordering::Relaxed) < args.users
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let subscribe_secs = connect_start.elapsed().as_secs_f64();
    let subscribed = shared.subscribed.load(Ordering::Relaxed);
    eprintln!(
        "catch-up: {subscribed}/{} subscribed in {subscribe_secs:.1} s",
        args.users
    );
    if subscribed == 0 {
        shared.stop.cancel();
        bail!("no client subscribed");
    }
    let per_team = shared.subscribed_per_team.lock().clone();
    let expected_for = |rows: &[(i64, i32)]| -> u64 {
        match args.rls {
            Rls::On => rows
                .iter()
                .map(|(_, team)| per_team.get(team).copied().unwrap_or(0))
                .sum(),
            Rls::Off => rows.len() as u64 * subscribed as u64,
        }
    };
    let plan = |rate: f64, duration: f64, first: usize| InsertPlan {
        db_url: &args.db_url,
        synchronous_commit: &args.synchronous_commit,
        payload_bytes: args.payload_bytes,
        tick_ms: args.tick_ms,
        teams,
        rate,
        duration,
        first: first as u64,
    };

    // 2. Live rows before the stop.
    let mut all_rows: Vec<(i64, i32)> = Vec::new();
    let before = if args.before > 0.0 && args.live_rate > 0.0 {
        eprintln!(
            "catch-up: live inserts, {} rows/s for {} s",
            args.live_rate, args.before
        );
        insert_planned(&plan(args.live_rate, args.before, 0)).await?
    } else {
        no_rows()?
    };
    all_rows.extend_from_slice(&before.rows);
    let before_expected = expected_for(&before.rows);
    let drain_until = Instant::now() + Duration::from_secs_f64(args.drain.max(0.0));
    while shared.delivered.load(Ordering::Relaxed) < before_expected && Instant::now() < drain_until
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before_delivered = shared.delivered.load(Ordering::Relaxed);
    let first_server = cpu_and_peak(args.server_pid);

    // 3. Stop the server while inserting for the outage.
    eprintln!(
        "catch-up: stopping the server; inserting {} rows/s for {} s",
        args.rate, args.outage
    );
    let outage_start = Instant::now();
    let outage_plan = plan(args.rate, args.outage, all_rows.len());
    let (stopped, outage) = tokio::join!(
        run_hook("stop", &args.stop_cmd),
        insert_planned(&outage_plan),
    );
    let (_, stop_took) = stopped?;
    let outage = outage?;
    all_rows.extend_from_slice(&outage.rows);
    let backlog_last_id = all_rows.iter().map(|&(id, _)| id).max().unwrap_or(base_id);
    let _ = shared.backlog_last_id.set(backlog_last_id);
    let backlog_rows = all_rows.len();

    // 4. Restart; everyone reconnects and rejoins by itself.
    let restart = Instant::now();
    let outage_secs = restart
        .saturating_duration_since(outage_start)
        .as_secs_f64();
    let horizon = (args.catchup_timeout + args.after + args.settle + 10.0).ceil() as usize;
    let _ = shared.timeline.set(Timeline::new(restart, horizon));
    let _ = shared.restart.set(restart);
    let pg_at_restart = args.pg_pid.and_then(tree_cpu_s);
    let loadgen_at_restart = cpu_and_peak(Some(std::process::id()));
    eprintln!("catch-up: {backlog_rows} rows committed; restarting the server");
    let (started, start_took) = run_hook("start", &args.start_cmd).await?;
    let server_pid = started
        .lines()
        .rev()
        .find_map(|l| l.trim().parse::<u32>().ok());
    if server_pid.is_none() {
        eprintln!("warning: the start command printed no pid; no server usage figures");
    }
    let samples: Arc<Mutex<Vec<Value>>> = Arc::new(Mutex::new(Vec::new()));
    let sampler = {
        let samples = Arc::clone(&samples);
        let stop = shared.stop.clone();
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    biased;
                    () = stop.cancelled() => break,
                    _ = tick.tick() => {}
                }
                if let Some((cpu, _, rss, _)) = cpu_and_peak(server_pid) {
                    samples.lock().push(json!({
                        "t_s": round3(restart.elapsed().as_secs_f64()),
                        "server_cpu_s": round3(cpu),
                        "server_rss_kb": rss,
                        "delivered_after_restart": shared.after_restart.load(Ordering::Relaxed),
                    }));
                }
            }
        })
    };
    let after = if args.after > 0.0 && args.live_rate > 0.0 {
        eprintln!(
            "catch-up: live inserts during the catch-up, {} rows/s for {} s",
            args.live_rate, args.after
        );
        insert_planned(&plan(args.live_rate, args.after, all_rows.len())).await?
    } else {
        no_rows()?
    };
    all_rows.extend_from_slice(&after.rows);

    // 5. Wait until every subscriber has every row.
    let expected_total = expected_for(&all_rows);
    let timeout = Duration::from_secs_f64(args.catchup_timeout.max(1.0));
    let mut last_report = Instant::now();
    while shared.delivered.load(Ordering::Relaxed) < expected_total && restart.elapsed() < timeout {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if last_report.elapsed() >= Duration::from_secs(10) {
            last_report = Instant::now();
            eprintln!(
                "catch-up: {:.0} s after the restart: {} of {expected_total} delivered",
                restart.elapsed().as_secs_f64(),
                shared.delivered.load(Ordering::Relaxed)
            );
        }
    }
    let waited = restart.elapsed().as_secs_f64();
    let server_done = cpu_and_peak(server_pid);
    let pg_done = args.pg_pid.and_then(tree_cpu_s);
    let loadgen_done = cpu_and_peak(Some(std::process::id()));
    tokio::time::sleep(Duration::from_secs_f64(args.settle.max(0.0))).await;
    shared.stop.cancel();
    let _ = sampler.await;

    let mut stats = Vec::with_capacity(tasks.len());
    for task in tasks {
        match tokio::time::timeout(Duration::from_secs(10), task).await {
            Ok(Ok(s)) => stats.push(s),
            Ok(Err(e)) => stats.push(CatchStats {
                rows: SubStats {
                    error: Some(format!("task failed: {e}")),
                    ..SubStats::default()
                },
                ..CatchStats::default()
            }),
            Err(_) => stats.push(CatchStats {
                rows: SubStats {
                    error: Some("task did not stop".into()),
                    ..SubStats::default()
                },
                ..CatchStats::default()
            }),
        }
    }

    // Per-client accounting against what was committed.
    let mut rows_per_team: HashMap<i32, Vec<i64>> = HashMap::new();
    for &(id, team) in &all_rows {
        rows_per_team.entry(team).or_default().push(id);
    }
    let all_ids: Vec<i64> = all_rows.iter().map(|&(id, _)| id).collect();
    let mut totals: HashMap<&str, u64> = HashMap::new();
    let mut add = |key: &'static str, n: u64| *totals.entry(key).or_default() += n;
    let mut clients_complete = 0usize;
    let mut complete_s: Vec<f64> = Vec::new();
    let mut rejoin_s: Vec<f64> = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    let mut attempt_errors: Vec<String> = Vec::new();
    for s in &stats {
        if let Some(e) = &s.rows.error
            && errors.len() < 5
        {
            errors.push(e.clone());
        }
        if let Some(e) = &s.last_attempt_error
            && attempt_errors.len() < 5
            && !attempt_errors.contains(e)
        {
            attempt_errors.push(e.clone());
        }
        if !s.rows.subscribed {
            continue;
        }
        let ids: &[i64] = match args.rls {
            Rls::On => rows_per_team.get(&s.rows.team).map_or(&[], Vec::as_slice),
            Rls::Off => &all_ids,
        };
        let missing = ids
            .iter()
            .filter(|&&id| {
                let offset = usize::try_from(id - base_id - 1).unwrap_or(usize::MAX / 2);
                !s.rows.has(offset)
            })
            .count() as u64;
        if missing == 0 {
            clients_complete += 1;
            complete_s.push(s.backlog_done_us.unwrap_or(0) as f64 / 1e6);
        }
        if let Some(us) = s.rejoined_us {
            rejoin_s.push(us as f64 / 1e6);
        }
        add("expected", ids.len() as u64);
        add("missing", missing);
        add("delivered", s.rows.correct);
        add("before_restart", s.before_restart);
        add("after_restart", s.after_restart);
        add("wrong", s.rows.wrong);
        add("duplicates", s.rows.duplicates);
        add("out_of_order", s.out_of_order);
        add("stale", s.rows.stale);
        add("unparsed", s.rows.unparsed);
        add("system_errors", s.rows.system_errors);
        add("missed_notices", s.missed_notices);
        add("early", s.early);
        add("disconnects", u64::from(s.disconnects));
        add(
            "server_disconnect_notices",
            u64::from(s.server_disconnect_notices),
        );
        add("channel_closed", u64::from(s.channel_closed));
        add("attempts", s.attempts);
        add("failed_attempts", s.failed_attempts);
        add("rejoins", u64::from(s.rejoins));
        add("not_rejoined", u64::from(s.rejoined_us.is_none()));
    }
    let total = |key: &str| totals.get(key).copied().unwrap_or(0);
    let failed_subscriptions = stats.iter().filter(|s| !s.rows.subscribed).count();
    let all_complete = clients_complete == subscribed && failed_subscriptions == 0;
    let time_to_all_s = if all_complete {
        complete_s.iter().copied().fold(0.0f64, f64::max)
    } else {
        f64::NAN
    };

    let after_restart = shared.after_restart.load(Ordering::Relaxed);
    let first_after = shared.first_after_us.load(Ordering::Relaxed);
    let last_after = shared.last_after_us.load(Ordering::Relaxed);
    let (first_after_s, last_after_s) = if after_restart > 0 {
        (first_after as f64 / 1e6, last_after as f64 / 1e6)
    } else {
        (0.0, 0.0)
    };
    let per_s = |n: u64, secs: f64| {
        if secs > 0.0 {
            round3(n as f64 / secs)
        } else {
            0.0
        }
    };
    let timeline = shared
        .timeline
        .get()
        .map(Timeline::counts)
        .unwrap_or_default();
    let peak_per_s = timeline.iter().copied().max().unwrap_or(0);

    let usage = |done: Option<(f64, f64, u64, u64)>| -> Value {
        match done {
            Some((cpu, sys, rss, hwm)) => json!({
                "cpu_s": round3(cpu),
                "sys_s": round3(sys),
                "rss_kb": rss,
                "peak_rss_kb": hwm,
                "cpu_us_per_catchup_delivery":
                    if after_restart > 0 { round3(cpu * 1e6 / after_restart as f64) } else { 0.0 },
            }),
            None => json!(null),
        }
    };
    let delta = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => json!(round3(b - a)),
        _ => json!(null),
    };
    let loadgen_cpu = delta(loadgen_at_restart.map(|u| u.0), loadgen_done.map(|u| u.0));
    let correct = total("wrong") == 0
        && total("duplicates") == 0
        && total("stale") == 0
        && total("out_of_order") == 0
        && total("missing") == 0
        && total("missed_notices") == 0;
    let inserts = |i: &Inserted| {
        json!({
            "committed": i.rows.len(),
            "failed": i.failed,
            "seconds": round3(i.elapsed.as_secs_f64()),
            "per_s": per_s(i.rows.len() as u64, i.elapsed.as_secs_f64()),
            "roundtrip_ms": i.roundtrip,
        })
    };

    Ok(json!({
        "scenario": "catch-up",
        "started_at_unix": started_at,
        "machine": machine_info(),
        "params": {
            "users": args.users,
            "teams": teams,
            "rls": matches!(args.rls, Rls::On),
            "rate": args.rate,
            "outage_s": args.outage,
            "live_rate": args.live_rate,
            "before_s": args.before,
            "after_s": args.after,
            "retry_ms": args.retry_ms,
            "payload_bytes": args.payload_bytes,
            "synchronous_commit": args.synchronous_commit,
            "server": endpoint.addr.to_string(),
            "source_addrs": sources.len(),
            "connect_concurrency": connect_concurrency,
        },
        "subscribe": {
            "requested": args.users,
            "subscribed": subscribed,
            "failed": failed_subscriptions,
            "seconds": round3(subscribe_secs),
            "errors": errors,
        },
        "before": {
            "inserts": inserts(&before),
            "expected": before_expected,
            "delivered_before_stop": before_delivered,
            "latency_ms": LatencySummary::from_micros(&shared.live_latency.merged()?),
            "server": first_server.map(|(cpu, _, _, hwm)| json!({"cpu_s": round3(cpu), "peak_rss_kb": hwm})),
        },
        "outage": {
            "seconds": round3(outage_secs),
            "stop_cmd_s": round3(stop_took.as_secs_f64()),
            "inserts": inserts(&outage),
            "backlog_rows": backlog_rows,
            "backlog_last_id": backlog_last_id,
        },
        "restart": {
            "start_cmd_s": round3(start_took.as_secs_f64()),
            "server_pid": server_pid,
            "after_inserts": inserts(&after),
        },
        "rejoin": {
            "rejoined": rejoin_s.len(),
            "not_rejoined": total("not_rejoined"),
            "after_restart": spread(&mut rejoin_s),
            "disconnects": total("disconnects"),
            "server_disconnect_notices": total("server_disconnect_notices"),
            "channel_closed": total("channel_closed"),
            "attempts": total("attempts"),
            "failed_attempts": total("failed_attempts"),
            "rejoins": total("rejoins"),
            "attempt_errors": attempt_errors,
        },
        "catchup": {
            "deliveries": after_restart,
            "time_to_all_s": if time_to_all_s.is_finite() { json!(round3(time_to_all_s)) } else { json!(null) },
            "first_delivery_s": round3(first_after_s),
            "last_delivery_s": round3(last_after_s),
            "per_s_from_restart": per_s(after_restart, last_after_s),
            "per_s_while_delivering": per_s(after_restart, last_after_s - first_after_s),
            "peak_1s_per_s": peak_per_s,
            "subscriber_complete": spread(&mut complete_s),
            "waited_s": round3(waited),
            "age_at_delivery_ms": LatencySummary::from_micros(&shared.catchup_age.merged()?),
            "timeline_per_s": timeline,
        },
        "deliveries": {
            "expected": total("expected"),
            "delivered": total("delivered"),
            "before_restart": total("before_restart"),
            "after_restart": total("after_restart"),
            "missing": total("missing"),
            "duplicates": total("duplicates"),
            "out_of_order": total("out_of_order"),
            "wrong": total("wrong"),
            "stale": total("stale"),
            "unparsed": total("unparsed"),
            "system_errors": total("system_errors"),
            "missed_notices": total("missed_notices"),
            "before_subscribed": total("early"),
            "clients_complete": clients_complete,
        },
        "server": usage(server_done),
        "server_samples": samples.lock().clone(),
        "postgres": {"cpu_s": delta(pg_at_restart, pg_done)},
        "loadgen": {"cpu_s": loadgen_cpu},
        "complete": all_complete,
        "correct": correct,
    }))
}

/// A one-paragraph human summary of a report.
pub fn summary(report: &Value) -> String {
    let v = |pointer: &str| -> String {
        report
            .pointer(pointer)
            .map_or_else(|| "?".to_owned(), Value::to_string)
    };
    format!(
        "catch-up rls={} outage={} s at {}/s: subscribed {}/{}; backlog {} rows; rejoined {} \
         (max {} s after the restart); catch-up deliveries {} in {} s ({} /s from the restart, \
         {} /s while delivering); expected {}, delivered {}, missing {}, duplicates {}, \
         out of order {}, wrong {}, missed notices {}; server cpu {} s, peak rss {} kB",
        v("/params/rls"),
        v("/params/outage_s"),
        v("/params/rate"),
        v("/subscribe/subscribed"),
        v("/subscribe/requested"),
        v("/outage/backlog_rows"),
        v("/rejoin/rejoined"),
        v("/rejoin/after_restart/max_s"),
        v("/catchup/deliveries"),
        v("/catchup/time_to_all_s"),
        v("/catchup/per_s_from_restart"),
        v("/catchup/per_s_while_delivering"),
        v("/deliveries/expected"),
        v("/deliveries/delivered"),
        v("/deliveries/missing"),
        v("/deliveries/duplicates"),
        v("/deliveries/out_of_order"),
        v("/deliveries/wrong"),
        v("/deliveries/missed_notices"),
        v("/server/cpu_s"),
        v("/server/peak_rss_kb"),
    )
}
