//! Cluster mode under faults: `kill -9` of a node that does not consume the slot (its
//! presences leave on the others within 15 s), `kill -9` of the consuming node during a stream
//! of inserts (another node takes the slot within 10 s and a subscriber on a surviving node
//! receives every committed row and database broadcast exactly once, in order), a NATS restart
//! during traffic (clients stay connected, broadcasts after recovery reach every node, presence
//! is whole again, rows committed meanwhile reach every node once), SIGTERM of the
//! consuming node (its presences leave at once, another node takes the slot), and an
//! unreachable `CLUSTER_NATS_URL` at start (exit 2, one line naming the setting).
//!
//! The only time bounds asserted are the documented ones (15 s, 10 s); every other wait only
//! bounds how long a test waits.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use realtide_tests::cluster::{ClusterEnv, FORM_WAIT, metric_value};
use realtide_tests::{
    Client, Endpoint, Incoming, Msg, PG_WAIT, QUIET, SECRET, TEST_PUBLICATION, TEST_SLOT, Vsn,
    binary, user_token,
};
use serde_json::{Value, json};
use tokio::time::Instant;

/// The bound on members of a killed node leaving on the others.
const KILLED_MEMBERS_LEAVE: Duration = Duration::from_secs(15);
/// The bound on another node taking the slot after the consumer was killed.
const SLOT_TAKEOVER: Duration = Duration::from_secs(10);
/// How long a message may take to reach another node (generous: only bounds the wait).
const CROSS_WAIT: Duration = Duration::from_secs(15);

async fn presence_client(node: &Endpoint, topic: &str, key: &str) -> Result<(Client, String, Msg)> {
    let mut client = node.connect(Vsn::V2).await?;
    let join_ref = client
        .join_config(topic, json!({"presence": {"enabled": true, "key": key}}))
        .await?;
    let state = client
        .expect_text_within(CROSS_WAIT, |m| {
            m.topic == topic && m.event == "presence_state"
        })
        .await?;
    Ok((client, join_ref, state))
}

async fn track_ok(client: &mut Client, join_ref: &str, topic: &str, meta: Value) -> Result<()> {
    let reference = client.track(join_ref, topic, meta).await?;
    let reply = client.expect_reply(topic, &reference).await?;
    ensure!(reply.status() == Some("ok"), "track: {}", reply.raw);
    Ok(())
}

fn has_key(payload: &Value, side: &str, key: &str) -> bool {
    payload.get(side).and_then(|s| s.get(key)).is_some()
}

/// Waits until `deadline` for a presence_diff on `topic` with `key` under `side`.
async fn diff_by(
    client: &mut Client,
    who: &str,
    topic: &str,
    side: &str,
    key: &str,
    deadline: Instant,
) -> Result<Msg> {
    let left = deadline.saturating_duration_since(Instant::now());
    client
        .expect_text_within(left, |m| {
            m.topic == topic && m.event == "presence_diff" && has_key(&m.payload, side, key)
        })
        .await
        .with_context(|| format!("{who} waiting for the {side} of {key}"))
}

/// Indexes of the nodes other than `skip`.
fn others(env: &ClusterEnv, skip: usize) -> Vec<usize> {
    (0..env.nodes.len()).filter(|&i| i != skip).collect()
}

#[tokio::test]
async fn kill_of_a_non_consuming_node_makes_its_members_leave_elsewhere() -> Result<()> {
    let mut env = ClusterEnv::start(3, &[], "").await?;
    let outcome =
        kill_of_a_non_consuming_node_makes_its_members_leave_elsewhere_body(&mut env).await;
    outcome.with_context(|| env.logs())
}

async fn kill_of_a_non_consuming_node_makes_its_members_leave_elsewhere_body(
    env: &mut ClusterEnv,
) -> Result<()> {
    let holder = env.holder().await?;
    let victim = others(env, holder)
        .first()
        .copied()
        .context("no second node")?;
    let survivors = others(env, victim);
    let topic = "realtime:kill-members";

    let mut observers = Vec::new();
    for &i in &survivors {
        let (client, _, _) = presence_client(env.node(i)?, topic, &format!("observer-{i}")).await?;
        observers.push((env.node(i)?.name.clone(), client));
    }
    let (mut doomed, doomed_ref, _) = presence_client(env.node(victim)?, topic, "doomed").await?;
    track_ok(&mut doomed, &doomed_ref, topic, json!({"on": "victim"})).await?;
    let (mut kept, kept_ref, _) = presence_client(env.node(holder)?, topic, "kept").await?;
    track_ok(&mut kept, &kept_ref, topic, json!({"on": "holder"})).await?;
    let far = Instant::now() + CROSS_WAIT;
    for (who, client) in &mut observers {
        diff_by(client, who, topic, "joins", "doomed", far).await?;
        diff_by(client, who, topic, "joins", "kept", far).await?;
    }

    env.node_mut(victim)?.server.kill().await?;
    let deadline = Instant::now() + KILLED_MEMBERS_LEAVE;
    for (who, client) in &mut observers {
        diff_by(client, who, topic, "leaves", "doomed", deadline)
            .await
            .with_context(|| {
                format!(
                    "after kill -9 of {}",
                    env.nodes
                        .get(victim)
                        .map(|n| n.name.as_str())
                        .unwrap_or("?")
                )
            })?;
    }

    // The survivors agree on the two of them; the slot stays where it was.
    let after = env.wait_agree(&survivors, FORM_WAIT).await?;
    ensure!(
        env.index_of(&after)? == holder,
        "the slot moved from {} to {after} though its holder lives",
        env.node(holder)?.name
    );
    // A late joiner on a survivor sees the survivor's member, not the dead node's.
    let (_, _, state) = presence_client(env.node(holder)?, topic, "late").await?;
    ensure!(
        state.payload.get("kept").is_some() && state.payload.get("doomed").is_none(),
        "state after the kill: {}",
        state.raw
    );
    Ok(())
}

fn items_setup() -> String {
    format!(
        "create table public.items (seq bigserial primary key, note text);
         grant select on public.items to service_role;
         alter publication {TEST_PUBLICATION} add table public.items;"
    )
}

fn service() -> String {
    user_token("service_role", "11111111-1111-1111-1111-111111111111")
}

async fn subscribe_items(node: &Endpoint, topic: &str) -> Result<Client> {
    let token = service();
    let mut client = node.connect_token(Vsn::V2, &token).await?;
    client
        .join_changes(
            topic,
            json!([{"event": "INSERT", "schema": "public", "table": "items"}]),
            Some(&token),
        )
        .await?;
    Ok(client)
}

/// Inserts one row per transaction, every `every`, until stopped; returns how many.
fn start_inserter(
    db: tokio_postgres::Client,
    every: Duration,
) -> (Arc<AtomicBool>, tokio::task::JoinHandle<Result<u64>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let task = tokio::spawn(async move {
        let mut n = 0u64;
        while !flag.load(Ordering::Relaxed) {
            db.batch_execute("insert into public.items (note) values ('x')")
                .await?;
            n += 1;
            tokio::time::sleep(every).await;
        }
        Ok(n)
    });
    (stop, task)
}

/// Sends `realtime.send({"n": i}, 'tick', <topic>, false)` for i = 1, 2, ..., one transaction
/// each, every `every`, until stopped; returns the last `i` sent.
fn start_db_sender(
    db: tokio_postgres::Client,
    topic: &'static str,
    every: Duration,
) -> (Arc<AtomicBool>, tokio::task::JoinHandle<Result<i64>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let task = tokio::spawn(async move {
        let mut n = 0i64;
        while !flag.load(Ordering::Relaxed) {
            db.execute(
                "select realtime.send(jsonb_build_object('n', $1::int8), 'tick', $2, false)",
                &[&(n + 1), &topic],
            )
            .await?;
            n += 1;
            tokio::time::sleep(every).await;
        }
        Ok(n)
    });
    (stop, task)
}

/// The `n` of every `tick` broadcast a V1 client received on `topic` until `last` arrived.
async fn ticks_until(client: &mut Client, topic: &str, last: i64) -> Result<Vec<i64>> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut ns = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = client
            .expect_text_within(left.min(PG_WAIT), |m| {
                m.topic == topic
                    && m.event == "broadcast"
                    && m.payload.get("event") == Some(&json!("tick"))
            })
            .await
            .with_context(|| {
                format!("received {} ticks so far, up to {:?}", ns.len(), ns.last())
            })?;
        let n = msg
            .payload
            .pointer("/payload/n")
            .and_then(Value::as_i64)
            .with_context(|| format!("no payload.n in {}", msg.raw))?;
        ns.push(n);
        if n == last {
            return Ok(ns);
        }
    }
}

/// The `seq` of every change received on `topic` until `last` arrived (bounded overall).
async fn seqs_until(client: &mut Client, topic: &str, last: i64) -> Result<Vec<i64>> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seqs = Vec::new();
    while Instant::now() < deadline {
        let msg = client.next_change(topic).await.with_context(|| {
            format!(
                "received {} rows so far, up to {:?}",
                seqs.len(),
                seqs.last()
            )
        })?;
        let seq = msg
            .payload
            .pointer("/data/record/seq")
            .and_then(|v| {
                v.as_i64()
                    .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            })
            .with_context(|| format!("no record.seq in {}", msg.raw))?;
        seqs.push(seq);
        if seq == last {
            return Ok(seqs);
        }
    }
    bail!("row {last} did not arrive; received {} rows", seqs.len())
}

/// `1-5, 9, 12-20` of ascending values.
fn ranges(values: &[i64]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut iter = values.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end += 1;
            iter.next();
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    out.join(", ")
}

/// `seqs` compared with `expected` (each once, in order): the differences, readable.
fn delivery_problems(seqs: &[i64], expected: &[i64]) -> Option<String> {
    if seqs == expected {
        return None;
    }
    let got: std::collections::BTreeMap<i64, usize> =
        seqs.iter().fold(Default::default(), |mut m, s| {
            *m.entry(*s).or_insert(0) += 1;
            m
        });
    let missing: Vec<i64> = expected
        .iter()
        .filter(|s| !got.contains_key(s))
        .copied()
        .collect();
    let duplicated: Vec<i64> = got
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(s, _)| *s)
        .collect();
    let inversions = seqs.windows(2).filter(|w| w.first() >= w.get(1)).count();
    Some(format!(
        "received {} rows for {} committed: missing [{}], duplicated [{}], {inversions} out of order",
        seqs.len(),
        expected.len(),
        ranges(&missing),
        ranges(&duplicated)
    ))
}

#[tokio::test]
async fn kill_of_the_consuming_node_during_inserts_delivers_every_row_once() -> Result<()> {
    let mut env = ClusterEnv::start(3, &[], &items_setup()).await?;
    let outcome =
        kill_of_the_consuming_node_during_inserts_delivers_every_row_once_body(&mut env).await;
    outcome.with_context(|| env.logs())
}

async fn kill_of_the_consuming_node_during_inserts_delivers_every_row_once_body(
    env: &mut ClusterEnv,
) -> Result<()> {
    let holder = env.holder().await?;
    let holder_name = env.node(holder)?.name.clone();
    let survivors = others(env, holder);
    let watcher = survivors.first().copied().context("no survivor")?;
    let topic = "realtime:items";
    let mut subscriber = subscribe_items(env.node(watcher)?, topic).await?;
    // Database broadcasts ride the same replication stream: a V1 subscriber of them on the
    // other survivor.
    let ticker_node = survivors.get(1).copied().context("no second survivor")?;
    let mut ticker = env.node(ticker_node)?.connect(Vsn::V1).await?;
    ticker
        .join_config("realtime:ticks", json!({"broadcast": {"self": false}}))
        .await?;

    let (stop, inserter) = start_inserter(env.pg.connect().await?, Duration::from_millis(20));
    let (stop_ticks, sender) =
        start_db_sender(env.pg.connect().await?, "ticks", Duration::from_millis(50));
    // Some rows before the kill (pacing, not a measurement).
    tokio::time::sleep(Duration::from_secs(2)).await;
    env.node_mut(holder)?.server.kill().await?;
    let killed_at = Instant::now();

    // Another node takes the slot within the bound: the survivors name one of them and the
    // slot streams again.
    let deadline = killed_at + SLOT_TAKEOVER;
    let mut last = Vec::new();
    let new_holder = loop {
        last.clear();
        let mut holders = Vec::new();
        for &i in &survivors {
            match env.node(i)?.cluster_health().await {
                Ok(health) => {
                    holders.push(health.slot_holder.clone());
                    last.push(format!("{}: {health:?}", env.node(i)?.name));
                }
                Err(error) => last.push(format!("{error:#}")),
            }
        }
        let first = holders.first().cloned().flatten();
        let agreed = holders.len() == survivors.len() && holders.iter().all(|h| *h == first);
        let active = match env.pg.slot(&env.db, TEST_SLOT).await? {
            Some((active, _, _)) => active,
            None => false,
        };
        if agreed
            && active
            && let Some(name) = first
            && name != holder_name
        {
            break name;
        }
        if Instant::now() >= deadline {
            stop.store(true, Ordering::Relaxed);
            stop_ticks.store(true, Ordering::Relaxed);
            bail!(
                "no other node took the slot within {SLOT_TAKEOVER:?} of kill -9 of {holder_name}:\n{}",
                last.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    ensure!(
        survivors.contains(&env.index_of(&new_holder)?),
        "the new holder {new_holder} is not a survivor"
    );

    // More rows under the new consumer, then stop and account for every committed row.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    stop_ticks.store(true, Ordering::Relaxed);
    let inserted = inserter.await??;
    let last_tick = sender.await??;
    let expected: Vec<i64> = env
        .db
        .query("select seq from public.items order by seq", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    ensure!(
        expected.len() == usize::try_from(inserted)?,
        "{inserted} inserts but {} rows",
        expected.len()
    );
    let last_seq = *expected.last().context("no rows committed")?;
    let seqs = seqs_until(&mut subscriber, topic, last_seq).await?;
    if let Some(problems) = delivery_problems(&seqs, &expected) {
        bail!("subscriber on {}: {problems}", env.node(watcher)?.name);
    }
    let ticks = ticks_until(&mut ticker, "realtime:ticks", last_tick).await?;
    let want: Vec<i64> = (1..=last_tick).collect();
    if let Some(problems) = delivery_problems(&ticks, &want) {
        bail!(
            "database broadcasts on {}: {problems}",
            env.node(ticker_node)?.name
        );
    }
    let extra = subscriber.drain(QUIET).await?;
    ensure!(
        !extra
            .iter()
            .any(|i| i.text().is_some_and(|m| m.event == "postgres_changes")),
        "changes after the last row: {extra:?}"
    );
    // The survivors settle on the two of them; the new holder counted its takeover, and each
    // survivor has applied the whole change stream.
    env.wait_agree(&survivors, FORM_WAIT).await?;
    let text = env.node(env.index_of(&new_holder)?)?.metrics_text().await?;
    ensure!(
        metric_value(&text, "realtide_cluster_failovers_total").is_some_and(|n| n >= 1.0),
        "{new_holder} took the slot over but realtide_cluster_failovers_total says otherwise:\n{text}"
    );
    for &i in &survivors {
        let deadline = Instant::now() + FORM_WAIT;
        loop {
            let text = env.node(i)?.metrics_text().await?;
            let lag = metric_value(&text, "realtide_cluster_stream_lag");
            if lag == Some(0.0) {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "{}: realtide_cluster_stream_lag stays {lag:?} after every row was delivered",
                env.node(i)?.name
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

/// Broadcasts on `topic` up to and including the one with event `last`; fails if the socket
/// ends (the client was disconnected).
async fn events_until(
    client: &mut Client,
    who: &str,
    topic: &str,
    last: &str,
) -> Result<Vec<String>> {
    let deadline = Instant::now() + CROSS_WAIT;
    let mut events = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match client.recv_timeout(left).await? {
            Some(Incoming::Text(m)) if m.topic == topic && m.event == "broadcast" => {
                let event = m
                    .payload
                    .get("event")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                let done = event == last;
                events.push(event);
                if done {
                    return Ok(events);
                }
            }
            Some(item) if item.is_end() => bail!("{who}: the socket ended ({item:?})"),
            Some(_) => {}
            None => bail!("{who}: no {last:?} within {CROSS_WAIT:?}; received {events:?}"),
        }
    }
}

#[tokio::test]
async fn nats_restart_during_traffic_keeps_clients_connected() -> Result<()> {
    // A short node timeout, so that the outage below outlasts it: the nodes stop showing each
    // other's members, and must show them all again once NATS is back.
    let mut env = ClusterEnv::start(
        3,
        &[
            ("CLUSTER_HEARTBEAT_MS", "300"),
            ("CLUSTER_NODE_TIMEOUT_MS", "1500"),
        ],
        &items_setup(),
    )
    .await?;
    let outcome = nats_restart_during_traffic_keeps_clients_connected_body(&mut env).await;
    outcome.with_context(|| env.logs())
}

async fn nats_restart_during_traffic_keeps_clients_connected_body(
    env: &mut ClusterEnv,
) -> Result<()> {
    let topic = "realtime:nats-restart";
    let presence_topic = "realtime:nats-restart-presence";
    // Rows committed before, during and after the outage reach a subscriber on every node,
    // each once and in order.
    let mut row_subscribers = Vec::new();
    for i in 0..3 {
        let changes_topic = format!("realtime:items-{i}");
        let client = subscribe_items(env.node(i)?, &changes_topic).await?;
        row_subscribers.push((env.node(i)?.name.clone(), changes_topic, client));
    }
    let (stop_rows, inserter) = start_inserter(env.pg.connect().await?, Duration::from_millis(50));
    let mut members = Vec::new();
    for i in 0..3 {
        let key = format!("member-{i}");
        let (mut client, join_ref, _) = presence_client(env.node(i)?, presence_topic, &key).await?;
        track_ok(&mut client, &join_ref, presence_topic, json!({"node": i})).await?;
        members.push((key, client));
    }
    let mut clients = Vec::new();
    for i in 0..3 {
        let mut client = env.node(i)?.connect(Vsn::V2).await?;
        let join_ref = client
            .join_config(topic, json!({"broadcast": {"self": false}}))
            .await?;
        clients.push((env.node(i)?.name.clone(), client, join_ref));
    }
    // Traffic before the restart reaches every node.
    for k in 0..clients.len() {
        let event = format!("before-{k}");
        {
            let (_, client, join_ref) = clients.get_mut(k).context("client")?;
            let join_ref = join_ref.clone();
            client
                .broadcast(&join_ref, topic, &event, json!({}))
                .await?;
        }
        for (j, (who, client, _)) in clients.iter_mut().enumerate() {
            if j != k {
                events_until(client, who, topic, &event).await?;
            }
        }
    }

    // NATS goes away while the clients keep sending; it comes back on the same port and store.
    env.nats.stop().await?;
    for round in 0..15 {
        for (who, client, join_ref) in &mut clients {
            let join_ref = join_ref.clone();
            client
                .broadcast(&join_ref, topic, &format!("during-{round}"), json!({}))
                .await
                .with_context(|| format!("{who} sending during the outage"))?;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (who, client, _) in &mut clients {
        client
            .heartbeat()
            .await
            .with_context(|| format!("{who} during the NATS outage"))?;
    }
    env.nats.start_again().await?;
    env.wait_formed(Duration::from_secs(30)).await?;

    // After recovery, a broadcast from each node reaches both others exactly once.
    for k in 0..clients.len() {
        let event = format!("after-{k}");
        {
            let (_, client, join_ref) = clients.get_mut(k).context("client")?;
            let join_ref = join_ref.clone();
            client
                .broadcast(&join_ref, topic, &event, json!({}))
                .await?;
        }
        for (j, (who, client, _)) in clients.iter_mut().enumerate() {
            if j != k {
                let events = events_until(client, who, topic, &event).await?;
                ensure!(
                    events.iter().filter(|e| e.starts_with("after-")).count() == 1,
                    "{who} received {events:?}"
                );
            }
        }
    }
    // Presence is whole again: a joiner on each node sees the members of all three.
    let keys: Vec<String> = members.iter().map(|(k, _)| k.clone()).collect();
    for i in 0..3 {
        let deadline = Instant::now() + CROSS_WAIT;
        loop {
            let (_, _, state) =
                presence_client(env.node(i)?, presence_topic, &format!("late-{i}")).await?;
            if keys.iter().all(|k| state.payload.get(k).is_some()) {
                break;
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} does not show every member after NATS returned: {}",
                    env.node(i)?.name,
                    state.raw
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    // Rows keep coming for a while after the recovery (pacing, not a measurement).
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop_rows.store(true, Ordering::Relaxed);
    let inserted = inserter.await??;
    let expected: Vec<i64> = env
        .db
        .query("select seq from public.items order by seq", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    ensure!(
        expected.len() == usize::try_from(inserted)?,
        "{inserted} inserts but {} rows",
        expected.len()
    );
    let last_seq = *expected.last().context("no rows committed")?;
    // Every node's account first, then the verdict.
    let mut problems = Vec::new();
    for (who, changes_topic, client) in &mut row_subscribers {
        match seqs_until(client, changes_topic, last_seq).await {
            Ok(seqs) => {
                if let Some(problem) = delivery_problems(&seqs, &expected) {
                    problems.push(format!("row subscriber on {who}: {problem}"));
                }
            }
            Err(error) => problems.push(format!("row subscriber on {who}: {error:#}")),
        }
    }
    if !problems.is_empty() {
        bail!(
            "rows committed across the NATS restart (1..={last_seq}):\n{}\nthe nodes now:\n{}",
            problems.join("\n"),
            env.diagnostics().await
        );
    }
    for (key, client) in &mut members {
        client
            .heartbeat()
            .await
            .with_context(|| format!("presence client {key}"))?;
    }
    for (who, client, _) in &mut clients {
        let items = client.drain(QUIET).await?;
        ensure!(
            !items.iter().any(|i| i.is_end()
                || i.text().is_some_and(|m| m
                    .payload
                    .get("event")
                    .and_then(Value::as_str)
                    .is_some_and(|e| e.starts_with("after-")))),
            "{who} after recovery: {items:?}"
        );
        client.heartbeat().await.with_context(|| who.clone())?;
    }
    Ok(())
}

#[tokio::test]
async fn sigterm_of_the_consuming_node_makes_its_members_leave_and_hands_over_the_slot()
-> Result<()> {
    // A node timeout far above the waits below: leaves and the handover must come from the
    // orderly shutdown, not from the others noticing the silence.
    let mut env =
        ClusterEnv::start(3, &[("CLUSTER_NODE_TIMEOUT_MS", "60000")], &items_setup()).await?;
    let outcome = sigterm_body(&mut env).await;
    outcome.with_context(|| env.logs())
}

async fn sigterm_body(env: &mut ClusterEnv) -> Result<()> {
    let holder = env.holder().await?;
    let holder_name = env.node(holder)?.name.clone();
    let survivors = others(env, holder);
    let topic = "realtime:sigterm";
    let mut observers = Vec::new();
    for &i in &survivors {
        let (client, _, _) = presence_client(env.node(i)?, topic, &format!("observer-{i}")).await?;
        observers.push((env.node(i)?.name.clone(), client));
    }
    let (mut leaving, leaving_ref, _) =
        presence_client(env.node(holder)?, topic, "leaving").await?;
    track_ok(&mut leaving, &leaving_ref, topic, json!({"on": "holder"})).await?;
    let far = Instant::now() + CROSS_WAIT;
    for (who, client) in &mut observers {
        diff_by(client, who, topic, "joins", "leaving", far).await?;
    }
    let watcher = survivors.first().copied().context("no survivor")?;
    let changes_topic = "realtime:items-sigterm";
    let mut subscriber = subscribe_items(env.node(watcher)?, changes_topic).await?;

    let status = env
        .node_mut(holder)?
        .server
        .terminate(Duration::from_secs(40))
        .await?
        .with_context(|| format!("{holder_name} did not exit within 40 s of SIGTERM"))?;
    ensure!(status.success(), "{holder_name} exited with {status}");
    let deadline = Instant::now() + KILLED_MEMBERS_LEAVE;
    for (who, client) in &mut observers {
        diff_by(client, who, topic, "leaves", "leaving", deadline).await?;
    }
    let new_holder = env.wait_agree(&survivors, Duration::from_secs(45)).await?;
    ensure!(
        new_holder != holder_name,
        "the slot stayed with {holder_name}"
    );
    env.pg.wait_slot_active(TEST_SLOT).await?;
    env.exec("insert into public.items (note) values ('after the handover')")
        .await?;
    let msg = subscriber.next_change(changes_topic).await?;
    ensure!(
        msg.payload.pointer("/data/record/note") == Some(&json!("after the handover")),
        "{}",
        msg.raw
    );
    Ok(())
}

#[tokio::test]
async fn unreachable_nats_at_start_fails_with_exit_2_naming_the_setting() -> Result<()> {
    realtide_tests::nats::nats_server_binary()?;
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
        probe.local_addr()?.port()
    };
    let url = format!("nats://127.0.0.1:{port}");
    let mut command = tokio::process::Command::new(binary()?);
    for name in [
        "DB_URL",
        "RUST_LOG",
        "LOG_FORMAT",
        "REALTIDE_CONFIG",
        "CLUSTER_NODE_NAME",
    ] {
        command.env_remove(name);
    }
    command
        .env("HOST", "127.0.0.1")
        .env("PORT", "0")
        .env("JWT_SECRET", SECRET)
        .env("CLUSTER_NATS_URL", &url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = command.spawn()?;
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .context("realtide did not exit within 60 s with an unreachable CLUSTER_NATS_URL")??;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.code() == Some(2),
        "exit {:?}; stderr {stderr:?}",
        output.status
    );
    ensure!(!stdout.contains("listening"), "stdout {stdout:?}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    ensure!(
        lines.len() == 1 && lines.iter().all(|l| l.contains("CLUSTER_NATS_URL")),
        "stderr is not one line naming CLUSTER_NATS_URL: {stderr:?}"
    );
    Ok(())
}
