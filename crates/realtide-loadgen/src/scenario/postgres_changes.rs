//! `postgres-changes`: row changes of one table streamed to many subscribers, each under its
//! own user, with or without row level security.
//!
//! Shape: `--users` users in `--teams` teams (user `i` is in team `i % teams + 1`); table
//! `public.team_items` whose RLS policy lets a user read the rows of their team through a
//! `team_members` subquery on `auth.uid()`. Every user opens a socket with
//! their own JWT (`role` authenticated, `sub` = the user's uuid) and joins with one INSERT
//! binding on the table. Once every client has its `Subscribed to PostgreSQL`, a separate
//! database connection inserts rows at `--rate` per second for `--duration` seconds, teams in
//! round robin, one row per autocommitted statement (statements of one tick pipelined).
//!
//! Measured: authorized deliveries per second (total and per subscriber), correctness (with
//! RLS every subscriber must get exactly its team's rows: wrong deliveries must be 0, missing
//! and duplicate ones are counted; without RLS every subscriber must get every row), and
//! commit-to-delivery latency: the payload's `commit_timestamp` (PostgreSQL's commit time,
//! millisecond precision) against the client's wall clock at receipt, same machine.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, ValueEnum};
use futures_util::future::join_all;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio_postgres::NoTls;
use tokio_util::sync::CancellationToken;

use crate::client::{
    ConnectOptions, Connection, Endpoint, Received, SourceAddrs, connect, payload_json, reply_ok,
};
use crate::report::{
    LatencyRecorder, LatencySummary, Timeline, machine_info, parse_commit_timestamp, round3,
    unix_micros,
};

/// Row level security on the benchmark table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Rls {
    /// Policy enforced: each subscriber gets its team's rows only.
    On,
    /// RLS disabled on the table: each subscriber gets every row.
    Off,
}

/// Parameters of the `postgres-changes` scenario.
#[derive(Debug, Clone, Args)]
pub struct PostgresChangesArgs {
    /// Subscribers, one user (and one socket) each.
    #[arg(long, default_value_t = 1000)]
    pub users: usize,
    /// Teams; users are spread evenly (user i is in team i % teams + 1).
    #[arg(long, default_value_t = 10)]
    pub teams: usize,
    /// Target inserts per second.
    #[arg(long, default_value_t = 300.0)]
    pub rate: f64,
    /// Seconds of inserting.
    #[arg(long, default_value_t = 20.0)]
    pub duration: f64,
    /// Row level security on `team_items`.
    #[arg(long, value_enum, default_value_t = Rls::On)]
    pub rls: Rls,
    /// PostgreSQL URL (a superuser: the scenario creates tables, roles' grants, the policy and
    /// adds the table to the publication).
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
    /// Give every client its own topic (`realtime:team_items-<i>`) instead of a shared one.
    #[arg(long)]
    pub topic_per_client: bool,
    /// `synchronous_commit` of the inserting session. PostgreSQL's default `on` flushes WAL at
    /// each commit, which wakes the walsender at once; with `off` (the test cluster's server
    /// default) committed changes reach the walsender only when the WAL writer flushes, every
    /// `wal_writer_delay` (200 ms), which would dominate commit-to-delivery latency.
    #[arg(long, default_value = "on")]
    pub synchronous_commit: String,
    /// Seconds allowed for all clients to connect and be subscribed.
    #[arg(long, default_value_t = 120.0)]
    pub subscribe_timeout: f64,
    /// Seconds to wait after the last insert for outstanding deliveries.
    #[arg(long, default_value_t = 15.0)]
    pub drain: f64,
    /// WebSocket URLs of the nodes of a cluster, comma-separated: subscriber `i` connects to
    /// node `i % nodes` (default: the global `--server-url` only). The report then has each
    /// node's deliveries and latency.
    #[arg(long, value_delimiter = ',')]
    pub nodes: Vec<String>,
}

/// One subscriber's results.
#[derive(Debug, Default)]
pub(crate) struct SubStats {
    pub(crate) subscribed: bool,
    pub(crate) error: Option<String>,
    pub(crate) team: i32,
    /// Index of the node it is connected to (`--nodes`).
    pub(crate) node: usize,
    /// Correct, first-time deliveries of rows of this run.
    pub(crate) correct: u64,
    /// Rows this subscriber must not see (another team's, with RLS on).
    pub(crate) wrong: u64,
    /// Rows delivered more than once.
    pub(crate) duplicates: u64,
    /// Rows from before this run.
    pub(crate) stale: u64,
    /// `postgres_changes` messages that could not be read.
    pub(crate) unparsed: u64,
    /// Other `system` errors after subscribing.
    pub(crate) system_errors: u64,
    /// Bit `k` set: row `base + 1 + k` received.
    pub(crate) seen: Vec<u64>,
}

impl SubStats {
    /// Records row `base + 1 + offset`; false when it was already received.
    pub(crate) fn mark(&mut self, offset: usize) -> bool {
        let word = offset / 64;
        if self.seen.len() <= word {
            self.seen.resize(word + 1, 0);
        }
        match self.seen.get_mut(word) {
            Some(w) => {
                let bit = 1u64 << (offset % 64);
                let fresh = *w & bit == 0;
                *w |= bit;
                fresh
            }
            None => false,
        }
    }

    /// Whether row `base + 1 + offset` was received.
    pub(crate) fn has(&self, offset: usize) -> bool {
        self.seen
            .get(offset / 64)
            .is_some_and(|w| w & (1u64 << (offset % 64)) != 0)
    }
}

/// What all subscriber tasks share.
#[derive(Debug)]
struct Shared {
    rls: Rls,
    base_id: i64,
    latency: LatencyRecorder,
    /// Latency per node (`--nodes`).
    node_latency: Vec<LatencyRecorder>,
    /// Set when inserting starts.
    timeline: OnceLock<Timeline>,
    insert_start: OnceLock<Instant>,
    /// Microseconds after `insert_start` of the latest delivery.
    last_delivery_us: AtomicU64,
    delivered: AtomicU64,
    subscribed: AtomicUsize,
    finished_subscribing: AtomicUsize,
    stop: CancellationToken,
}

/// The parts of a `postgres_changes` payload the scenarios read.
#[derive(Deserialize)]
pub(crate) struct Delivery<'a> {
    #[serde(borrow)]
    pub(crate) data: DeliveryData<'a>,
}

#[derive(Deserialize)]
pub(crate) struct DeliveryData<'a> {
    #[serde(borrow)]
    pub(crate) commit_timestamp: &'a str,
    pub(crate) record: Option<Row>,
}

/// A `team_items` row as delivered.
#[derive(Deserialize)]
pub(crate) struct Row {
    pub(crate) id: i64,
    pub(crate) team_id: i32,
}

/// A `system` message's payload.
#[derive(Deserialize)]
pub(crate) struct SystemPayload {
    pub(crate) status: Option<String>,
    pub(crate) message: Option<String>,
}

pub(crate) fn sql_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The uuid of user `i` (also used in SQL, see [`setup`]).
fn user_uuid(i: usize) -> String {
    format!("00000000-0000-4000-8000-{:012x}", i + 1)
}

pub(crate) fn team_of(i: usize, teams: usize) -> i32 {
    i32::try_from(i % teams.max(1) + 1).unwrap_or(i32::MAX)
}

/// Creates (idempotently) the tables, members, grants, policy and publication membership;
/// empties `team_items` and returns an id below every row this run will insert.
async fn setup(args: &PostgresChangesArgs) -> Result<i64> {
    setup_tables(
        &args.db_url,
        &args.publication,
        args.users,
        args.teams,
        args.rls,
    )
    .await
}

/// [`setup`] for any scenario using the `team_items` shape.
pub(crate) async fn setup_tables(
    db_url: &str,
    publication: &str,
    users: usize,
    teams: usize,
    rls: Rls,
) -> Result<i64> {
    let (db, conn) = tokio_postgres::connect(db_url, NoTls)
        .await
        .context("connecting to the database for setup")?;
    let conn_task = tokio::spawn(conn);
    let publication = sql_literal(publication);
    let rls = match rls {
        Rls::On => "enable",
        Rls::Off => "disable",
    };
    let sql = format!(
        r#"
        create table if not exists public.team_members (
          team_id int not null,
          user_id uuid not null,
          primary key (team_id, user_id)
        );
        create table if not exists public.team_items (
          id bigserial primary key,
          team_id int not null,
          payload text,
          created_at timestamptz not null default clock_timestamp()
        );
        truncate public.team_members;
        insert into public.team_members (team_id, user_id)
          select (g % {teams}) + 1, ('00000000-0000-4000-8000-' || lpad(to_hex(g + 1), 12, '0'))::uuid
          from generate_series(0, {last_user}) g;
        truncate public.team_items;
        grant usage on schema public to authenticated;
        grant select on public.team_members, public.team_items to authenticated;
        drop policy if exists "team members read team items" on public.team_items;
        create policy "team members read team items" on public.team_items
          for select to authenticated
          using (exists (select 1 from public.team_members m
                         where m.team_id = team_items.team_id and m.user_id = auth.uid()));
        alter table public.team_items {rls} row level security;
        do $$ begin
          if not exists (select 1 from pg_publication where pubname = {publication}) then
            execute format('create publication %I', {publication});
          end if;
          if not exists (select 1 from pg_publication_tables
                         where pubname = {publication} and schemaname = 'public'
                           and tablename = 'team_items') then
            execute format('alter publication %I add table public.team_items', {publication});
          end if;
        end $$;
        analyze public.team_members;
        "#,
        teams = teams.max(1),
        last_user = users.saturating_sub(1),
    );
    db.batch_execute(&sql).await.context("setting up schema")?;
    let row = db
        .query_one(
            "select nextval(pg_get_serial_sequence('public.team_items', 'id'))",
            &[],
        )
        .await?;
    let base: i64 = row.try_get(0)?;
    drop(db);
    let _ = conn_task.await;
    Ok(base)
}

pub(crate) fn join_payload(token: &str) -> String {
    json!({
        "config": {
            "broadcast": {"ack": false, "self": false},
            "presence": {"enabled": false},
            "postgres_changes": [
                {"event": "INSERT", "schema": "public", "table": "team_items"}
            ],
            "private": false
        },
        "access_token": token
    })
    .to_string()
}

pub(crate) fn user_token(i: usize, secret: &str) -> String {
    let now = unix_micros(SystemTime::now()) / 1_000_000;
    realtide_auth::sign_hs256(
        &json!({
            "role": "authenticated",
            "aud": "authenticated",
            "sub": user_uuid(i),
            "iat": now,
            "exp": now + 24 * 3600,
        }),
        secret,
    )
}

/// Connects, joins and waits for `Subscribed to PostgreSQL`.
pub(crate) async fn subscribe(
    endpoint: &Endpoint,
    source: Option<std::net::IpAddr>,
    token: &str,
    topic: &str,
    permits: &Semaphore,
    timeout: Duration,
) -> Result<Connection> {
    let permit = permits.acquire().await?;
    let mut conn = connect(
        endpoint,
        source,
        &endpoint.socket_path(token),
        ConnectOptions::default(),
    )
    .await?;
    let join_ref = conn.join(topic, &join_payload(token))?;
    let mut reply = None;
    conn.recv_until(timeout, |m| {
        reply = reply_ok(m, &join_ref);
        reply.is_some()
    })
    .await?;
    reply.unwrap_or_else(|| Err(anyhow!("no join reply")))?;
    drop(permit);
    let mut status = None;
    conn.recv_until(timeout, |m| {
        if m.event != "system" {
            return false;
        }
        let payload: Option<SystemPayload> = serde_json::from_str(payload_json(m)).ok();
        status = payload.map(|p| (p.status, p.message));
        true
    })
    .await?;
    match status {
        Some((Some(s), Some(msg))) if s == "ok" && msg == "Subscribed to PostgreSQL" => {}
        other => bail!("subscription refused: {other:?}"),
    }
    conn.start_heartbeat(Duration::from_secs(25));
    Ok(conn)
}

/// One subscriber: subscribe, then count deliveries until stopped.
async fn subscriber(
    index: usize,
    (team, node): (i32, usize),
    conn: Result<Connection>,
    shared: Arc<Shared>,
) -> SubStats {
    let mut stats = SubStats {
        team,
        node,
        ..SubStats::default()
    };
    let mut conn = match conn {
        Ok(conn) => conn,
        Err(e) => {
            stats.error = Some(format!("{e:#}"));
            shared.finished_subscribing.fetch_add(1, Ordering::Relaxed);
            return stats;
        }
    };
    stats.subscribed = true;
    shared.subscribed.fetch_add(1, Ordering::Relaxed);
    shared.finished_subscribing.fetch_add(1, Ordering::Relaxed);
    loop {
        let received = tokio::select! {
            biased;
            () = shared.stop.cancelled() => break,
            r = conn.recv() => r,
        };
        let inbound = match received {
            Ok(Some(Received::Phoenix(inbound))) => inbound,
            Ok(Some(Received::Binary(_))) => continue,
            Ok(None) => {
                stats.error = Some("server closed the connection".into());
                break;
            }
            Err(e) => {
                stats.error = Some(format!("{e:#}"));
                break;
            }
        };
        match inbound.event.as_str() {
            "postgres_changes" => on_delivery(index, payload_json(&inbound), &mut stats, &shared),
            "system" => {
                let payload: Option<SystemPayload> =
                    serde_json::from_str(payload_json(&inbound)).ok();
                if payload.and_then(|p| p.status).as_deref() != Some("ok") {
                    stats.system_errors += 1;
                }
            }
            _ => {}
        }
    }
    conn.close().await;
    stats
}

fn on_delivery(index: usize, payload: &str, stats: &mut SubStats, shared: &Shared) {
    let now = SystemTime::now();
    let now_instant = Instant::now();
    let Ok(delivery) = serde_json::from_str::<Delivery<'_>>(payload) else {
        stats.unparsed += 1;
        return;
    };
    let (Some(row), Some(committed)) = (
        delivery.data.record,
        parse_commit_timestamp(delivery.data.commit_timestamp),
    ) else {
        stats.unparsed += 1;
        return;
    };
    if row.id <= shared.base_id {
        stats.stale += 1;
        return;
    }
    if shared.rls == Rls::On && row.team_id != stats.team {
        stats.wrong += 1;
        return;
    }
    let offset = usize::try_from(row.id - shared.base_id - 1).unwrap_or(usize::MAX / 2);
    if !stats.mark(offset) {
        stats.duplicates += 1;
        return;
    }
    stats.correct += 1;
    shared.delivered.fetch_add(1, Ordering::Relaxed);
    let latency = u64::try_from(unix_micros(now).saturating_sub(committed).max(0)).unwrap_or(0);
    shared.latency.record(index, latency);
    if let Some(node) = shared.node_latency.get(stats.node) {
        node.record(index, latency);
    }
    if let Some(timeline) = shared.timeline.get() {
        timeline.add(now_instant, 1);
    }
    if let Some(start) = shared.insert_start.get() {
        let us = u64::try_from(now_instant.saturating_duration_since(*start).as_micros())
            .unwrap_or(u64::MAX);
        shared.last_delivery_us.fetch_max(us, Ordering::Relaxed);
    }
}

/// The inserter's results.
#[derive(Debug)]
pub(crate) struct Inserted {
    /// (id, team) of every committed row.
    pub(crate) rows: Vec<(i64, i32)>,
    pub(crate) failed: u64,
    pub(crate) elapsed: Duration,
    pub(crate) roundtrip: LatencySummary,
}

/// What and how fast an inserter inserts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct InsertPlan<'a> {
    pub(crate) db_url: &'a str,
    pub(crate) synchronous_commit: &'a str,
    pub(crate) payload_bytes: usize,
    pub(crate) tick_ms: u64,
    pub(crate) teams: usize,
    /// Rows per second.
    pub(crate) rate: f64,
    /// Seconds.
    pub(crate) duration: f64,
    /// Index of the first row: row `k` goes to team `team_of(k)`.
    pub(crate) first: u64,
}

/// Inserts at `rate` rows/s for `duration`, one autocommitted statement per row, the rows
/// due in one tick pipelined on the connection.
async fn insert_rows(args: &PostgresChangesArgs) -> Result<Inserted> {
    insert_planned(&InsertPlan {
        db_url: &args.db_url,
        synchronous_commit: &args.synchronous_commit,
        payload_bytes: args.payload_bytes,
        tick_ms: args.tick_ms,
        teams: args.teams,
        rate: args.rate,
        duration: args.duration,
        first: 0,
    })
    .await
}

/// [`insert_rows`] for any scenario using the `team_items` shape.
pub(crate) async fn insert_planned(plan: &InsertPlan<'_>) -> Result<Inserted> {
    let (db, conn) = tokio_postgres::connect(plan.db_url, NoTls)
        .await
        .context("connecting the inserter")?;
    let conn_task = tokio::spawn(conn);
    db.batch_execute(&format!(
        "set synchronous_commit = {}",
        sql_literal(plan.synchronous_commit)
    ))
    .await
    .context("setting synchronous_commit")?;
    let stmt = db
        .prepare("insert into public.team_items (team_id, payload) values ($1, $2) returning id")
        .await?;
    let payload = "x".repeat(plan.payload_bytes);
    let teams = plan.teams.max(1);
    let total = (plan.rate * plan.duration).round().max(0.0) as u64;
    let roundtrips = LatencyRecorder::new(1)?;
    let mut rows = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    let mut failed = 0u64;
    let mut done = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(plan.tick_ms.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let start = Instant::now();
    while done < total {
        tick.tick().await;
        let due = ((plan.rate * start.elapsed().as_secs_f64()) as u64).min(total);
        if due <= done {
            continue;
        }
        let batch = (done..due).map(|k| {
            let team = team_of(usize::try_from(k + plan.first).unwrap_or(0), teams);
            let db = &db;
            let stmt = &stmt;
            let payload = &payload;
            let roundtrips = &roundtrips;
            async move {
                let sent = Instant::now();
                let result = db.query_one(stmt, &[&team, payload]).await;
                let us = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                roundtrips.record(0, us);
                result
                    .and_then(|row| row.try_get::<_, i64>(0))
                    .map(|id| (id, team))
            }
        });
        for result in join_all(batch).await {
            match result {
                Ok(row) => rows.push(row),
                Err(e) => {
                    failed += 1;
                    if failed <= 3 {
                        eprintln!("insert failed: {e}");
                    }
                }
            }
        }
        done = due;
    }
    let elapsed = start.elapsed();
    drop(db);
    let _ = conn_task.await;
    Ok(Inserted {
        rows,
        failed,
        elapsed,
        roundtrip: LatencySummary::from_micros(&roundtrips.merged()?),
    })
}

/// Runs the scenario and returns its JSON report.
pub async fn run(
    args: &PostgresChangesArgs,
    endpoint: &Endpoint,
    sources: &SourceAddrs,
    secret: &str,
    connect_concurrency: usize,
) -> Result<Value> {
    let started_at = unix_micros(SystemTime::now()) / 1_000_000;
    let teams = args.teams.max(1);
    eprintln!(
        "postgres-changes: setup ({} users, {} teams, rls {:?})",
        args.users, teams, args.rls
    );
    let base_id = setup(args).await?;
    let endpoints = if args.nodes.is_empty() {
        vec![endpoint.clone()]
    } else {
        args.nodes
            .iter()
            .map(|u| Endpoint::parse(u.trim()))
            .collect::<Result<Vec<_>>>()?
    };
    let nodes = endpoints.len();

    let shared = Arc::new(Shared {
        rls: args.rls,
        base_id,
        latency: LatencyRecorder::new(64)?,
        node_latency: (0..nodes)
            .map(|_| LatencyRecorder::new(16))
            .collect::<Result<_>>()?,
        timeline: OnceLock::new(),
        insert_start: OnceLock::new(),
        last_delivery_us: AtomicU64::new(0),
        delivered: AtomicU64::new(0),
        subscribed: AtomicUsize::new(0),
        finished_subscribing: AtomicUsize::new(0),
        stop: CancellationToken::new(),
    });
    let permits = Arc::new(Semaphore::new(connect_concurrency.max(1)));
    let subscribe_timeout = Duration::from_secs_f64(args.subscribe_timeout.max(1.0));
    let connect_start = Instant::now();
    let mut tasks = Vec::with_capacity(args.users);
    for i in 0..args.users {
        let team = team_of(i, teams);
        let token = user_token(i, secret);
        let topic = if args.topic_per_client {
            format!("realtime:team_items-{i}")
        } else {
            "realtime:team_items".to_owned()
        };
        let node = i % nodes;
        let endpoint = endpoints.get(node).unwrap_or(endpoint).clone();
        let source = sources.pick(i);
        let permits = Arc::clone(&permits);
        let shared = Arc::clone(&shared);
        tasks.push(tokio::spawn(async move {
            let conn = subscribe(
                &endpoint,
                source,
                &token,
                &topic,
                &permits,
                subscribe_timeout,
            )
            .await;
            subscriber(i, (team, node), conn, shared).await
        }));
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
        "postgres-changes: {subscribed}/{} subscribed in {subscribe_secs:.1} s; inserting {} rows/s for {} s",
        args.users, args.rate, args.duration
    );

    let insert_start = Instant::now();
    let horizon = (args.duration + args.drain + 5.0).ceil() as usize;
    let _ = shared.timeline.set(Timeline::new(insert_start, horizon));
    let _ = shared.insert_start.set(insert_start);
    let inserted = if subscribed > 0 {
        insert_rows(args).await?
    } else {
        Inserted {
            rows: Vec::new(),
            failed: 0,
            elapsed: Duration::ZERO,
            roundtrip: LatencySummary::from_micros(&LatencyRecorder::new(1)?.merged()?),
        }
    };

    // Expected deliveries: with RLS each row goes to its team's subscribed members, without
    // it to every subscribed client.
    let mut rows_per_team: HashMap<i32, Vec<i64>> = HashMap::new();
    for &(id, team) in &inserted.rows {
        rows_per_team.entry(team).or_default().push(id);
    }
    let members_subscribed = |team: i32| -> u64 {
        // Subscribers that failed are excluded below from the per-client check; for the
        // drain target count the ones that subscribed (tracked only in aggregate), assuming
        // failures are spread evenly when any occurred.
        let members = (0..args.users)
            .filter(|&i| team_of(i, teams) == team)
            .count();
        let ratio = subscribed as f64 / args.users.max(1) as f64;
        (members as f64 * ratio).round() as u64
    };
    let expected_estimate: u64 = match args.rls {
        Rls::On => rows_per_team
            .iter()
            .map(|(team, ids)| ids.len() as u64 * members_subscribed(*team))
            .sum(),
        Rls::Off => inserted.rows.len() as u64 * subscribed as u64,
    };
    let insert_end = Instant::now();
    let drain = Duration::from_secs_f64(args.drain.max(0.0));
    while shared.delivered.load(Ordering::Relaxed) < expected_estimate
        && insert_end.elapsed() < drain
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shared.stop.cancel();

    let mut stats = Vec::with_capacity(tasks.len());
    for task in tasks {
        match tokio::time::timeout(Duration::from_secs(10), task).await {
            Ok(Ok(s)) => stats.push(s),
            Ok(Err(e)) => stats.push(SubStats {
                error: Some(format!("task failed: {e}")),
                ..SubStats::default()
            }),
            Err(_) => stats.push(SubStats {
                error: Some("task did not stop".into()),
                ..SubStats::default()
            }),
        }
    }

    // Per-client accounting against what was actually inserted.
    let all_ids: Vec<i64> = inserted.rows.iter().map(|&(id, _)| id).collect();
    let (mut expected, mut correct, mut wrong, mut duplicates, mut stale, mut unparsed) =
        (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    let mut missing = 0u64;
    let mut clients_complete = 0usize;
    let mut system_errors = 0u64;
    let mut errors: Vec<String> = Vec::new();
    let mut per_subscriber: Vec<u64> = Vec::new();
    for s in &stats {
        if let Some(e) = &s.error
            && errors.len() < 5
        {
            errors.push(e.clone());
        }
        if !s.subscribed {
            continue;
        }
        let ids: &[i64] = match args.rls {
            Rls::On => rows_per_team.get(&s.team).map_or(&[], Vec::as_slice),
            Rls::Off => &all_ids,
        };
        let miss = ids
            .iter()
            .filter(|&&id| {
                let offset = usize::try_from(id - base_id - 1).unwrap_or(usize::MAX / 2);
                !s.has(offset)
            })
            .count() as u64;
        if miss == 0 {
            clients_complete += 1;
        }
        expected += ids.len() as u64;
        missing += miss;
        correct += s.correct;
        wrong += s.wrong;
        duplicates += s.duplicates;
        stale += s.stale;
        unparsed += s.unparsed;
        system_errors += s.system_errors;
        per_subscriber.push(s.correct);
    }
    let failed_subscriptions = stats.iter().filter(|s| !s.subscribed).count();
    let per_node: Vec<Value> = (0..nodes)
        .map(|k| {
            let on_node = stats.iter().filter(|s| s.subscribed && s.node == k);
            let (subscribers, delivered) =
                on_node.fold((0u64, 0u64), |(n, d), s| (n + 1, d + s.correct));
            json!({
                "url": endpoints.get(k).map(|e| e.addr.to_string()),
                "subscribed": subscribers,
                "delivered": delivered,
                "latency_ms": shared
                    .node_latency
                    .get(k)
                    .and_then(|l| l.merged().ok())
                    .map(|h| LatencySummary::from_micros(&h)),
            })
        })
        .collect();

    let last_delivery_s = shared.last_delivery_us.load(Ordering::Relaxed) as f64 / 1e6;
    let insert_secs = inserted.elapsed.as_secs_f64();
    let deliveries_per_s = if last_delivery_s > 0.0 {
        correct as f64 / last_delivery_s
    } else {
        0.0
    };
    let offered_per_s = if insert_secs > 0.0 {
        expected as f64 / insert_secs
    } else {
        0.0
    };
    let timeline = shared
        .timeline
        .get()
        .map(Timeline::counts)
        .unwrap_or_default();
    // Steady state: whole seconds inside the insert window, without the first one.
    let window = (insert_secs.floor() as usize).min(timeline.len());
    let steady: Vec<u64> = timeline.iter().take(window).skip(1).copied().collect();
    let steady_per_s = if steady.is_empty() {
        0.0
    } else {
        steady.iter().sum::<u64>() as f64 / steady.len() as f64
    };
    let drain_lag_ms = (last_delivery_s - insert_secs).max(0.0) * 1000.0;
    let latency = LatencySummary::from_micros(&shared.latency.merged()?);
    per_subscriber.sort_unstable();
    let quantile = |q: f64| -> u64 {
        let n = per_subscriber.len();
        if n == 0 {
            return 0;
        }
        let index = ((n - 1) as f64 * q).round() as usize;
        per_subscriber.get(index).copied().unwrap_or(0)
    };
    let kept_up = missing == 0 && failed_subscriptions == 0 && drain_lag_ms <= 1000.0;

    let report = json!({
        "scenario": "postgres-changes",
        "started_at_unix": started_at,
        "machine": machine_info(),
        "params": {
            "users": args.users,
            "teams": teams,
            "rate": args.rate,
            "duration_s": args.duration,
            "rls": matches!(args.rls, Rls::On),
            "payload_bytes": args.payload_bytes,
            "synchronous_commit": args.synchronous_commit,
            "topic_per_client": args.topic_per_client,
            "server": endpoint.addr.to_string(),
            "nodes": endpoints.iter().map(|e| e.addr.to_string()).collect::<Vec<_>>(),
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
        "inserts": {
            "committed": inserted.rows.len(),
            "failed": inserted.failed,
            "seconds": round3(insert_secs),
            "per_s": round3(if insert_secs > 0.0 { inserted.rows.len() as f64 / insert_secs } else { 0.0 }),
            "roundtrip_ms": inserted.roundtrip,
        },
        "deliveries": {
            "expected": expected,
            "delivered": correct,
            "missing": missing,
            "wrong": wrong,
            "duplicates": duplicates,
            "stale": stale,
            "unparsed": unparsed,
            "system_errors": system_errors,
            "clients_complete": clients_complete,
            "offered_per_s": round3(offered_per_s),
            "per_s": round3(deliveries_per_s),
            "steady_per_s": round3(steady_per_s),
            "per_subscriber_per_s": round3(if subscribed > 0 { deliveries_per_s / subscribed as f64 } else { 0.0 }),
            "per_subscriber_count": {"min": quantile(0.0), "p50": quantile(0.5), "max": quantile(1.0)},
            "last_delivery_s": round3(last_delivery_s),
            "drain_lag_ms": round3(drain_lag_ms),
            "timeline_per_s": timeline,
        },
        "latency_ms": latency,
        "per_node": per_node,
        "kept_up": kept_up,
        "correct": wrong == 0 && duplicates == 0 && stale == 0,
    });
    Ok(report)
}

/// A one-paragraph human summary of a report.
pub fn summary(report: &Value) -> String {
    let v = |pointer: &str| -> String {
        report
            .pointer(pointer)
            .map_or_else(|| "?".to_owned(), Value::to_string)
    };
    format!(
        "postgres-changes rls={} rate={}/s: subscribed {}/{}; inserts {} ({}/s); deliveries {} of {} \
         ({} /s, steady {} /s, offered {} /s), missing {}, wrong {}, duplicates {}; \
         latency p50 {} ms p95 {} ms p99 {} ms max {} ms; drain lag {} ms; kept up: {}",
        v("/params/rls"),
        v("/params/rate"),
        v("/subscribe/subscribed"),
        v("/subscribe/requested"),
        v("/inserts/committed"),
        v("/inserts/per_s"),
        v("/deliveries/delivered"),
        v("/deliveries/expected"),
        v("/deliveries/per_s"),
        v("/deliveries/steady_per_s"),
        v("/deliveries/offered_per_s"),
        v("/deliveries/missing"),
        v("/deliveries/wrong"),
        v("/deliveries/duplicates"),
        v("/latency_ms/p50_ms"),
        v("/latency_ms/p95_ms"),
        v("/latency_ms/p99_ms"),
        v("/latency_ms/max_ms"),
        v("/deliveries/drain_lag_ms"),
        v("/kept_up"),
    )
}
