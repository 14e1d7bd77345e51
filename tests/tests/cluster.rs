//! Cluster mode: three realtide nodes sharing one PostgreSQL and one NATS with JetStream
//! (`CLUSTER_NATS_URL`), clients spread across them. A broadcast from any node (WebSocket,
//! HTTP API, `realtime.send`) reaches every subscriber on every node exactly once, in the
//! publisher's order, with the usual `self`/`ack` semantics; presence state and diffs are
//! shared; private channels are authorized on every node; postgres_changes reach each node's
//! own subscribers under their own RLS claims while one node consumes the slot;
//! `TENANT_MAX_CONCURRENT_USERS` counts the users of every node.
//!
//! Exactly-once is checked with barriers: a later message from the same publisher that every
//! receiver must get next (a duplicate or a stray message shows up before it), then a short
//! quiet window for late duplicates.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use realtide_tests::cluster::{ClusterEnv, metric_value, node_name};
use realtide_tests::{
    Client, Endpoint, Incoming, Msg, QUIET, Server, TEST_PUBLICATION, Vsn, kind3_frame, token,
    user_token,
};
use serde_json::{Value, json};

/// How long a message may take to reach another node (generous: debug builds on 2 cores).
const CROSS_WAIT: Duration = Duration::from_secs(15);

/// Something a subscriber received on a topic: a text broadcast or a kind-4 binary one.
#[derive(Debug, Clone, PartialEq)]
enum Got {
    Text {
        event: String,
        payload: Value,
    },
    Binary {
        event: String,
        encoding: u8,
        body: Vec<u8>,
    },
}

impl Got {
    fn event(&self) -> &str {
        match self {
            Got::Text { event, .. } | Got::Binary { event, .. } => event,
        }
    }
}

/// `(topic, event, encoding, body)` of a kind-4 frame (metadata skipped).
fn decode_kind4(frame: &[u8]) -> Result<(String, String, u8, Vec<u8>)> {
    let header = frame.get(..5).context("short kind-4 frame")?;
    let byte = |i: usize| header.get(i).copied().context("short header");
    ensure!(byte(0)? == 4, "not a kind-4 frame: {frame:?}");
    let (topic_len, event_len, meta_len) = (
        usize::from(byte(1)?),
        usize::from(byte(2)?),
        usize::from(byte(3)?),
    );
    let rest = frame.get(5..).context("no body")?;
    let text = |from: usize, len: usize| -> Result<String> {
        Ok(String::from_utf8(
            rest.get(from..from + len).context("short field")?.to_vec(),
        )?)
    };
    let topic = text(0, topic_len)?;
    let event = text(topic_len, event_len)?;
    let body = rest
        .get(topic_len + event_len + meta_len..)
        .context("no body")?
        .to_vec();
    Ok((topic, event, byte(4)?, body))
}

/// Broadcasts received on `topic` up to and including the first with event `last` (other
/// frames skipped; replies returned separately), within [`CROSS_WAIT`].
async fn until(client: &mut Client, topic: &str, last: &str) -> Result<(Vec<Got>, Vec<Msg>)> {
    let deadline = tokio::time::Instant::now() + CROSS_WAIT;
    let mut got = Vec::new();
    let mut replies = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let item = match client.recv_timeout(left).await? {
            Some(Incoming::Text(msg)) if msg.topic == topic && msg.event == "broadcast" => {
                Got::Text {
                    event: msg
                        .payload
                        .get("event")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                    payload: msg.payload.get("payload").cloned().unwrap_or(Value::Null),
                }
            }
            Some(Incoming::Text(msg)) if msg.event == "phx_reply" => {
                replies.push(msg);
                continue;
            }
            Some(Incoming::Binary(frame)) => {
                let (frame_topic, event, encoding, body) = decode_kind4(&frame)?;
                if frame_topic != topic {
                    continue;
                }
                Got::Binary {
                    event,
                    encoding,
                    body,
                }
            }
            Some(item) if item.is_end() => bail!("socket ended ({item:?}); received {got:?}"),
            Some(_) => continue,
            None => {
                bail!("no broadcast {last:?} on {topic} within {CROSS_WAIT:?}; received {got:?}")
            }
        };
        let done = item.event() == last;
        got.push(item);
        if done {
            return Ok((got, replies));
        }
    }
}

/// Requires that the next broadcasts on `topic` are exactly `[last]` (nothing before it).
async fn exactly(client: &mut Client, who: &str, topic: &str, last: &str) -> Result<Got> {
    let (got, _) = until(client, topic, last).await.context(who.to_owned())?;
    ensure!(
        got.len() == 1,
        "{who} expected only {last:?} next, received {got:?}"
    );
    got.into_iter().next().context("empty")
}

/// Fails if a broadcast (text or binary) arrives within [`QUIET`].
async fn no_more_broadcasts(client: &mut Client, who: &str) -> Result<()> {
    let items = client.drain(QUIET).await?;
    let stray: Vec<&Incoming> = items
        .iter()
        .filter(|i| match i {
            Incoming::Binary(_) => true,
            Incoming::Text(m) => m.event == "broadcast",
            _ => false,
        })
        .collect();
    ensure!(stray.is_empty(), "{who} received more: {stray:?}");
    Ok(())
}

async fn joined(
    node: &Endpoint,
    vsn: Vsn,
    topic: &str,
    broadcast: Value,
) -> Result<(Client, String)> {
    let mut client = node.connect(vsn).await?;
    let join_ref = client
        .join_config(topic, json!({"broadcast": broadcast}))
        .await?;
    Ok((client, join_ref))
}

#[tokio::test]
async fn health_and_metrics_show_the_cluster() -> Result<()> {
    let mut env = ClusterEnv::start(3, &[], "").await?;
    let outcome = health_and_metrics_show_the_cluster_body(&mut env).await;
    outcome.with_context(|| env.logs())
}

async fn health_and_metrics_show_the_cluster_body(env: &mut ClusterEnv) -> Result<()> {
    let holder = env.wait_formed(Duration::from_secs(20)).await?;
    let names: Vec<String> = (0..3).map(node_name).collect();
    for node in &env.nodes {
        let health = node.cluster_health().await?;
        ensure!(health.node == node.name, "{}: {health:?}", node.name);
        ensure!(health.nats == "connected", "{}: {health:?}", node.name);
        ensure!(health.nodes == names, "{}: {health:?}", node.name);
        ensure!(
            health.slot_holder.as_deref() == Some(holder.as_str()),
            "{}: {health:?}",
            node.name
        );
    }
    // One walsender streams the shared slot.
    let active: i64 = env
        .db
        .query_one(
            "select count(*) from pg_replication_slots where active and slot_name = $1",
            &[&realtide_tests::TEST_SLOT],
        )
        .await?
        .get(0);
    ensure!(active == 1, "{active} active slots");

    // A broadcast from node-1 to node-2 moves the cluster counters.
    let topic = "realtime:metrics";
    let (mut sender, sender_ref) = joined(env.node(0)?, Vsn::V2, topic, json!({})).await?;
    let (mut receiver, _) = joined(env.node(1)?, Vsn::V2, topic, json!({})).await?;
    let before_out = env.node(0)?.metrics_text().await?;
    let before_in = env.node(1)?.metrics_text().await?;
    sender
        .broadcast(&sender_ref, topic, "m", json!({"x": 1}))
        .await?;
    exactly(&mut receiver, "node-2 receiver", topic, "m").await?;
    let after_out = env.node(0)?.metrics_text().await?;
    let after_in = env.node(1)?.metrics_text().await?;
    for (text, series) in [
        (
            &after_out,
            r#"realtide_cluster_messages_total{direction="in"}"#,
        ),
        (
            &after_out,
            r#"realtide_cluster_messages_total{direction="out"}"#,
        ),
        (
            &after_out,
            r#"realtide_cluster_bytes_total{direction="in"}"#,
        ),
        (
            &after_out,
            r#"realtide_cluster_bytes_total{direction="out"}"#,
        ),
        (&after_out, "realtide_cluster_stream_lag"),
        (&after_out, "realtide_cluster_failovers_total"),
    ] {
        ensure!(
            metric_value(text, series).is_some(),
            "/metrics lacks {series}:\n{text}"
        );
    }
    let grew = |before: &str, after: &str, series: &str| -> Result<()> {
        let b = metric_value(before, series).unwrap_or(0.0);
        let a = metric_value(after, series).with_context(|| format!("no {series}"))?;
        ensure!(a > b, "{series} did not grow: {b} -> {a}");
        Ok(())
    };
    grew(
        &before_out,
        &after_out,
        r#"realtide_cluster_messages_total{direction="out"}"#,
    )?;
    grew(
        &before_out,
        &after_out,
        r#"realtide_cluster_bytes_total{direction="out"}"#,
    )?;
    grew(
        &before_in,
        &after_in,
        r#"realtide_cluster_messages_total{direction="in"}"#,
    )?;
    grew(
        &before_in,
        &after_in,
        r#"realtide_cluster_bytes_total{direction="in"}"#,
    )?;

    // Without CLUSTER_NATS_URL the health has no cluster (absent or null).
    let single = Server::start(&[]).await?;
    let health = single.health().await?;
    ensure!(
        health.get("cluster").is_none_or(Value::is_null),
        "single node: {health}"
    );
    Ok(())
}

#[tokio::test]
async fn broadcast_crosses_nodes_with_self_ack_and_binary() -> Result<()> {
    let mut env = ClusterEnv::start(3, &[], "").await?;
    let outcome = broadcast_crosses_nodes_with_self_ack_and_binary_body(&mut env).await;
    outcome.with_context(|| env.logs())
}

async fn broadcast_crosses_nodes_with_self_ack_and_binary_body(env: &mut ClusterEnv) -> Result<()> {
    let topic = "realtime:xroom";
    let (mut a, a_ref) = joined(
        env.node(0)?,
        Vsn::V2,
        topic,
        json!({"self": true, "ack": true}),
    )
    .await?;
    let (mut b, b_ref) = joined(env.node(1)?, Vsn::V2, topic, json!({"self": false})).await?;
    let (mut c, _) = joined(env.node(2)?, Vsn::V1, topic, json!({})).await?;
    let (mut d, d_ref) = joined(env.node(2)?, Vsn::V2, topic, json!({})).await?;

    // 1. a (node-1, self + ack): its echo and ack, and one copy on every other node.
    let reference = a.broadcast(&a_ref, topic, "one", json!({"n": 1})).await?;
    let (got, replies) = until(&mut a, topic, "one").await?;
    ensure!(
        got == [Got::Text {
            event: "one".into(),
            payload: json!({"n": 1})
        }],
        "a's echo: {got:?}"
    );
    let ack = match replies
        .into_iter()
        .find(|m| m.reference.as_deref() == Some(reference.as_str()))
    {
        Some(reply) => reply,
        None => a.expect_reply(topic, &reference).await?,
    };
    ensure!(
        ack.payload == json!({"status": "ok", "response": {}}),
        "ack {}",
        ack.raw
    );
    for (who, client) in [("b", &mut b), ("c (V1)", &mut c), ("d", &mut d)] {
        let got = exactly(client, who, topic, "one").await?;
        ensure!(
            got == Got::Text {
                event: "one".into(),
                payload: json!({"n": 1})
            },
            "{who}: {got:?}"
        );
    }

    // 2. b (node-2, self: false): every other node, not b (checked at step 3).
    b.broadcast(&b_ref, topic, "two", json!({"n": 2})).await?;
    for (who, client) in [("a", &mut a), ("c (V1)", &mut c), ("d", &mut d)] {
        exactly(client, who, topic, "two").await?;
    }

    // 3. d (node-3) sends a JSON kind-3 binary broadcast: kind 4 to V2 subscribers on every
    //    node, JSON text to V1.
    d.send_binary(&kind3_frame(
        &d_ref,
        "30",
        topic,
        "three",
        b"",
        1,
        br#"{"n":3}"#,
    )?)
    .await?;
    for (who, client) in [("a", &mut a), ("b", &mut b)] {
        let got = exactly(client, who, topic, "three").await?;
        ensure!(
            got == Got::Binary {
                event: "three".into(),
                encoding: 1,
                body: br#"{"n":3}"#.to_vec()
            },
            "{who}: {got:?}"
        );
    }
    let got = exactly(&mut c, "c (V1)", topic, "three").await?;
    ensure!(
        got == Got::Text {
            event: "three".into(),
            payload: json!({"n": 3})
        },
        "c: {got:?}"
    );

    // 4. A raw binary body: V2 subscribers only.
    d.send_binary(&kind3_frame(
        &d_ref,
        "31",
        topic,
        "four",
        b"",
        0,
        &[0, 1, 255],
    )?)
    .await?;
    for (who, client) in [("a", &mut a), ("b", &mut b)] {
        let got = exactly(client, who, topic, "four").await?;
        ensure!(
            got == Got::Binary {
                event: "four".into(),
                encoding: 0,
                body: vec![0, 1, 255]
            },
            "{who}: {got:?}"
        );
    }

    // 5. The barrier: every subscriber gets `end` next (c never got `four`, d never got its
    //    own messages), then nothing more.
    a.broadcast(&a_ref, topic, "end", json!({})).await?;
    for (who, client) in [
        ("a", &mut a),
        ("b", &mut b),
        ("c (V1)", &mut c),
        ("d", &mut d),
    ] {
        exactly(client, who, topic, "end").await?;
    }
    for (who, client) in [
        ("a", &mut a),
        ("b", &mut b),
        ("c (V1)", &mut c),
        ("d", &mut d),
    ] {
        no_more_broadcasts(client, who).await?;
    }
    Ok(())
}

#[tokio::test]
async fn one_publishers_messages_arrive_once_and_in_order_on_every_node() -> Result<()> {
    let mut env = ClusterEnv::start(3, &[], "").await?;
    let outcome =
        one_publishers_messages_arrive_once_and_in_order_on_every_node_body(&mut env).await;
    outcome.with_context(|| env.logs())
}

async fn one_publishers_messages_arrive_once_and_in_order_on_every_node_body(
    env: &mut ClusterEnv,
) -> Result<()> {
    let topic = "realtime:ordered";
    let (mut publisher, publisher_ref) = joined(env.node(0)?, Vsn::V2, topic, json!({})).await?;
    let mut receivers = vec![
        (
            "node-1",
            joined(env.node(0)?, Vsn::V2, topic, json!({})).await?.0,
        ),
        (
            "node-2",
            joined(env.node(1)?, Vsn::V2, topic, json!({})).await?.0,
        ),
        (
            "node-3",
            joined(env.node(2)?, Vsn::V2, topic, json!({})).await?.0,
        ),
        (
            "node-3 V1",
            joined(env.node(2)?, Vsn::V1, topic, json!({})).await?.0,
        ),
    ];
    const N: u64 = 200;
    for i in 0..N {
        publisher
            .broadcast(&publisher_ref, topic, "seq", json!({"i": i}))
            .await?;
    }
    publisher
        .broadcast(&publisher_ref, topic, "end", json!({}))
        .await?;
    for (who, client) in &mut receivers {
        let (got, _) = until(client, topic, "end").await.context(who.to_owned())?;
        let seqs: Vec<Option<u64>> = got
            .iter()
            .filter(|g| g.event() == "seq")
            .map(|g| match g {
                Got::Text { payload, .. } => payload.get("i").and_then(Value::as_u64),
                Got::Binary { .. } => None,
            })
            .collect();
        let want: Vec<Option<u64>> = (0..N).map(Some).collect();
        ensure!(
            seqs == want && got.len() == usize::try_from(N)? + 1,
            "{who} received {} messages, not 0..{N} once each in order then `end`: {seqs:?}",
            got.len()
        );
    }
    for (who, client) in &mut receivers {
        no_more_broadcasts(client, who).await?;
    }
    no_more_broadcasts(&mut publisher, "the publisher (self: false)").await
}

#[tokio::test]
async fn http_api_and_realtime_send_reach_every_node_once() -> Result<()> {
    let mut env = ClusterEnv::start(3, &[], "").await?;
    let outcome = http_api_and_realtime_send_reach_every_node_once_body(&mut env).await;
    outcome.with_context(|| env.logs())
}

async fn http_api_and_realtime_send_reach_every_node_once_body(env: &mut ClusterEnv) -> Result<()> {
    let topic = "realtime:news";
    let mut subscribers = Vec::new();
    for i in 0..3 {
        let (client, _) = joined(env.node(i)?, Vsn::V2, topic, json!({})).await?;
        subscribers.push((node_name(i), client));
    }
    let (v1, _) = joined(env.node(1)?, Vsn::V1, topic, json!({})).await?;
    subscribers.push(("node-2 V1".to_owned(), v1));
    let service = token("service_role", 3600);

    // The batch endpoint on node-2.
    let batch = json!({"messages": [
        {"topic": "news", "event": "http", "payload": {"via": "batch"}}
    ]})
    .to_string();
    let response = env
        .node(1)?
        .http_body(
            "POST",
            "/api/broadcast",
            &[
                ("apikey", service.as_str()),
                ("content-type", "application/json"),
            ],
            Some(batch.as_bytes()),
        )
        .await?;
    ensure!(response.status == 202, "{response:?}");
    for (who, client) in &mut subscribers {
        let got = exactly(client, who, topic, "http").await?;
        ensure!(
            got == Got::Text {
                event: "http".into(),
                payload: json!({"via": "batch"})
            },
            "{who}: {got:?}"
        );
    }

    // realtime.send in the database: the slot holder reads it, every node delivers it.
    env.exec("select realtime.send('{\"via\": \"db\"}'::jsonb, 'db', 'news', false)")
        .await?;
    for (who, client) in &mut subscribers {
        let got = exactly(client, who, topic, "db").await?;
        match &got {
            Got::Text { payload, .. } => {
                ensure!(payload.get("via") == Some(&json!("db")), "{who}: {got:?}")
            }
            Got::Binary { body, .. } => {
                let body: Value = serde_json::from_slice(body)?;
                ensure!(body.get("via") == Some(&json!("db")), "{who}: {body}");
            }
        }
    }

    // The single-message endpoint on node-3 is the barrier.
    let response = env
        .node(2)?
        .http_body(
            "POST",
            "/api/broadcast/news/events/end",
            &[
                ("apikey", service.as_str()),
                ("content-type", "application/json"),
            ],
            Some(b"{}"),
        )
        .await?;
    ensure!(response.status == 202, "{response:?}");
    for (who, client) in &mut subscribers {
        exactly(client, who, topic, "end").await?;
    }
    for (who, client) in &mut subscribers {
        no_more_broadcasts(client, who).await?;
    }
    Ok(())
}

// ------------------------------------------------------------------------------- presence

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

/// The `phx_ref` of the first meta of `key` under `side` (`joins`/`leaves`) of a diff, or of
/// a presence_state (`side` empty).
fn meta_ref(payload: &Value, side: &str, key: &str) -> Option<String> {
    let base = if side.is_empty() {
        Some(payload)
    } else {
        payload.get(side)
    };
    base?
        .get(key)?
        .get("metas")?
        .get(0)?
        .get("phx_ref")?
        .as_str()
        .map(str::to_owned)
}

fn meta_field(payload: &Value, side: &str, key: &str, field: &str) -> Option<Value> {
    let base = if side.is_empty() {
        Some(payload)
    } else {
        payload.get(side)
    };
    base?.get(key)?.get("metas")?.get(0)?.get(field).cloned()
}

/// Waits for a presence_diff on `topic` with `key` under `side`; returns its meta's phx_ref.
async fn diff_with(
    client: &mut Client,
    who: &str,
    topic: &str,
    side: &str,
    key: &str,
) -> Result<String> {
    let diff = client
        .expect_text_within(CROSS_WAIT, |m| {
            m.topic == topic
                && m.event == "presence_diff"
                && meta_ref(&m.payload, side, key).is_some()
        })
        .await
        .with_context(|| format!("{who} waiting for {side} of {key}"))?;
    meta_ref(&diff.payload, side, key).context("no phx_ref")
}

async fn track_ok(client: &mut Client, join_ref: &str, topic: &str, meta: Value) -> Result<()> {
    let reference = client.track(join_ref, topic, meta).await?;
    let reply = client.expect_reply(topic, &reference).await?;
    ensure!(reply.status() == Some("ok"), "track: {}", reply.raw);
    Ok(())
}

#[tokio::test]
async fn presence_state_and_diffs_are_shared_across_nodes() -> Result<()> {
    let mut env = ClusterEnv::start(3, &[], "").await?;
    let outcome = presence_state_and_diffs_are_shared_across_nodes_body(&mut env).await;
    outcome.with_context(|| env.logs())
}

async fn presence_state_and_diffs_are_shared_across_nodes_body(env: &mut ClusterEnv) -> Result<()> {
    let topic = "realtime:presence-x";
    let (mut o2, _, _) = presence_client(env.node(1)?, topic, "observer-2").await?;
    let (mut o3, _, _) = presence_client(env.node(2)?, topic, "observer-3").await?;

    // u1 tracks on node-1: the observers on node-2 and node-3 see the join.
    let (mut p1, p1_ref, state) = presence_client(env.node(0)?, topic, "u1").await?;
    ensure!(state.payload == json!({}), "first state {}", state.raw);
    track_ok(&mut p1, &p1_ref, topic, json!({"name": "one"})).await?;
    let u1_ref = diff_with(&mut p1, "p1", topic, "joins", "u1").await?;
    for (who, client) in [("o2", &mut o2), ("o3", &mut o3)] {
        let seen = diff_with(client, who, topic, "joins", "u1").await?;
        ensure!(
            seen == u1_ref,
            "{who} saw phx_ref {seen}, the tracker {u1_ref}"
        );
    }

    // A join on node-2 gets a state holding node-1's member.
    let (mut p2, p2_ref, state) = presence_client(env.node(1)?, topic, "u2").await?;
    ensure!(
        meta_ref(&state.payload, "", "u1").as_deref() == Some(u1_ref.as_str())
            && meta_field(&state.payload, "", "u1", "name") == Some(json!("one")),
        "node-2 state lacks u1: {}",
        state.raw
    );
    track_ok(&mut p2, &p2_ref, topic, json!({"name": "two"})).await?;
    let u2_ref = diff_with(&mut p2, "p2", topic, "joins", "u2").await?;
    for (who, client) in [("p1", &mut p1), ("o3", &mut o3)] {
        let seen = diff_with(client, who, topic, "joins", "u2").await?;
        ensure!(
            seen == u2_ref,
            "{who} saw phx_ref {seen}, the tracker {u2_ref}"
        );
    }

    // A join on node-3 sees both.
    let (mut p3, _, state) = presence_client(env.node(2)?, topic, "u3").await?;
    ensure!(
        meta_ref(&state.payload, "", "u1").as_deref() == Some(u1_ref.as_str())
            && meta_ref(&state.payload, "", "u2").as_deref() == Some(u2_ref.as_str())
            && meta_field(&state.payload, "", "u2", "name") == Some(json!("two")),
        "node-3 state: {}",
        state.raw
    );

    // A node that joins the cluster now: its first joiner's state already holds both.
    let node4 = env.start_node("node-4").await?;
    env.nodes.push(node4);
    let (_, _, state) = presence_client(env.node(3)?, topic, "u5").await?;
    ensure!(
        meta_ref(&state.payload, "", "u1").as_deref() == Some(u1_ref.as_str())
            && meta_ref(&state.payload, "", "u2").as_deref() == Some(u2_ref.as_str()),
        "state on a node started after the tracks: {}",
        state.raw
    );

    // u2's socket goes away: it leaves on node-1 and node-3.
    drop(p2);
    for (who, client) in [("p1", &mut p1), ("o3", &mut o3), ("p3", &mut p3)] {
        let seen = diff_with(client, who, topic, "leaves", "u2").await?;
        ensure!(seen == u2_ref, "{who}: leave of {seen}, joined as {u2_ref}");
    }

    // u1 untracks on node-1: it leaves on node-2 and node-3.
    let reference = p1
        .push(
            Some(&p1_ref),
            topic,
            "presence",
            &json!({"type": "presence", "event": "untrack"}),
        )
        .await?;
    let reply = p1.expect_reply(topic, &reference).await?;
    ensure!(reply.status() == Some("ok"), "untrack: {}", reply.raw);
    for (who, client) in [("o2", &mut o2), ("o3", &mut o3), ("p3", &mut p3)] {
        let seen = diff_with(client, who, topic, "leaves", "u1").await?;
        ensure!(seen == u1_ref, "{who}: leave of {seen}, joined as {u1_ref}");
    }
    // A late joiner on node-2 sees neither.
    let (_, _, state) = presence_client(env.node(1)?, topic, "u4").await?;
    ensure!(
        state.payload.get("u1").is_none() && state.payload.get("u2").is_none(),
        "state after the leaves: {}",
        state.raw
    );
    Ok(())
}

// ------------------------------------------------------------------------ private channels

const ALICE: &str = "aaaaaaaa-0000-0000-0000-000000000001";
const BOB: &str = "bbbbbbbb-0000-0000-0000-000000000002";
const CAROL: &str = "cccccccc-0000-0000-0000-000000000003";

/// `room:1` readable by Alice and Bob, writable by Alice only.
const POLICIES: &str = r#"
create table public.members (user_id uuid not null, room text not null, can_write boolean not null default false);
grant select on public.members to authenticated;
insert into public.members values
  ('aaaaaaaa-0000-0000-0000-000000000001', 'room:1', true),
  ('bbbbbbbb-0000-0000-0000-000000000002', 'room:1', false);
create policy member_read on realtime.messages for select to authenticated using (
  exists (select 1 from public.members m where m.user_id = auth.uid() and m.room = realtime.topic()));
create policy writer_write on realtime.messages for insert to authenticated with check (
  exists (select 1 from public.members m
          where m.user_id = auth.uid() and m.room = realtime.topic() and m.can_write));
"#;

async fn join_private(node: &Endpoint, topic: &str, user: &str) -> Result<(Client, String, Msg)> {
    let mut client = node.connect_token(Vsn::V2, user).await?;
    let join_ref = client
        .send_join(
            topic,
            &json!({"config": {"broadcast": {"self": false, "ack": true}, "private": true},
                    "access_token": user}),
        )
        .await?;
    let reply = client.expect_reply(topic, &join_ref).await?;
    Ok((client, join_ref, reply))
}

#[tokio::test]
async fn private_channels_are_authorized_on_every_node() -> Result<()> {
    let mut env = ClusterEnv::start(3, &[], POLICIES).await?;
    let outcome = private_channels_are_authorized_on_every_node_body(&mut env).await;
    outcome.with_context(|| env.logs())
}

async fn private_channels_are_authorized_on_every_node_body(env: &mut ClusterEnv) -> Result<()> {
    let topic = "realtime:room:1";
    let alice = user_token("authenticated", ALICE);
    let bob = user_token("authenticated", BOB);
    let carol = user_token("authenticated", CAROL);
    let (mut writer, writer_ref, reply) = join_private(env.node(0)?, topic, &alice).await?;
    ensure!(
        reply.status() == Some("ok"),
        "alice on node-1: {}",
        reply.raw
    );
    let (mut reader, reader_ref, reply) = join_private(env.node(2)?, topic, &bob).await?;
    ensure!(reply.status() == Some("ok"), "bob on node-3: {}", reply.raw);
    let (_, _, reply) = join_private(env.node(1)?, topic, &carol).await?;
    ensure!(
        reply.status() == Some("error"),
        "carol (not a member) on node-2: {}",
        reply.raw
    );
    // Carol's public channel of the same name on node-2 never sees private messages.
    let mut public = env.client(1, &carol).await?;
    public
        .join_config(topic, json!({"broadcast": {"self": false}}))
        .await?;

    // Alice writes on node-1: ack, and Bob on node-3 receives it.
    let sent = writer
        .broadcast(&writer_ref, topic, "msg", json!({"from": "alice"}))
        .await?;
    let ack = writer.expect_reply(topic, &sent).await?;
    ensure!(ack.status() == Some("ok"), "alice's ack: {}", ack.raw);
    let got = exactly(&mut reader, "bob", topic, "msg").await?;
    ensure!(
        got == Got::Text {
            event: "msg".into(),
            payload: json!({"from": "alice"})
        },
        "bob: {got:?}"
    );

    // Bob may read but not write: his send reaches nobody.
    reader
        .broadcast(&reader_ref, topic, "denied", json!({"from": "bob"}))
        .await?;
    let sent = writer
        .broadcast(&writer_ref, topic, "msg2", json!({"from": "alice"}))
        .await?;
    writer.expect_reply(topic, &sent).await?;
    exactly(&mut reader, "bob", topic, "msg2").await?;

    // Barriers from the database: a private send reaches Alice (node-1) and Bob (node-3),
    // a public one reaches Carol's public channel (node-2); nothing came before them.
    env.exec("select realtime.send('{\"n\": 1}'::jsonb, 'end', 'room:1', true)")
        .await?;
    env.exec("select realtime.send('{\"n\": 2}'::jsonb, 'public-end', 'room:1', false)")
        .await?;
    exactly(&mut writer, "alice", topic, "end").await?;
    exactly(&mut reader, "bob", topic, "end").await?;
    exactly(&mut public, "carol (public)", topic, "public-end").await?;
    Ok(())
}

// ------------------------------------------------------------------------ postgres_changes

fn notes_setup() -> String {
    format!(
        "create table public.notes (id int8 primary key, owner uuid not null, body text);
         alter table public.notes enable row level security;
         create policy own on public.notes for select to authenticated using (owner = auth.uid());
         grant select on public.notes to anon, authenticated, service_role;
         alter publication {TEST_PUBLICATION} add table public.notes;"
    )
}

/// `(type, id)` of the next `n` changes on `topic`.
async fn changes(client: &mut Client, topic: &str, n: usize) -> Result<Vec<(String, i64)>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let msg = client.next_change(topic).await?;
        let data = msg.payload.get("data").context("no data")?;
        let kind = data
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let row = if kind == "DELETE" {
            "/old_record/id"
        } else {
            "/record/id"
        };
        out.push((
            kind,
            data.pointer(row).and_then(Value::as_i64).unwrap_or(-1),
        ));
    }
    Ok(out)
}

fn kinds(list: &[(&str, i64)]) -> Vec<(String, i64)> {
    list.iter().map(|(k, i)| ((*k).to_owned(), *i)).collect()
}

#[tokio::test]
async fn postgres_changes_with_rls_on_every_node() -> Result<()> {
    let mut env = ClusterEnv::start(3, &[], &notes_setup()).await?;
    let outcome = postgres_changes_with_rls_on_every_node_body(&mut env).await;
    outcome.with_context(|| env.logs())
}

async fn postgres_changes_with_rls_on_every_node_body(env: &mut ClusterEnv) -> Result<()> {
    let bindings = json!([{"event": "*", "schema": "public", "table": "notes"}]);
    let a = user_token("authenticated", ALICE);
    let b = user_token("authenticated", BOB);
    let service = user_token("service_role", CAROL);
    let mut user_a = env.client(0, &a).await?;
    user_a
        .join_changes("realtime:notes-a", bindings.clone(), Some(&a))
        .await?;
    let mut all = env.client(1, &service).await?;
    all.join_changes("realtime:notes-all", bindings.clone(), Some(&service))
        .await?;
    let mut user_b = env.client(2, &b).await?;
    user_b
        .join_changes("realtime:notes-b", bindings, Some(&b))
        .await?;

    for (id, owner) in [(1, ALICE), (2, BOB), (3, ALICE), (4, BOB), (5, ALICE)] {
        env.exec(&format!(
            "insert into public.notes values ({id}, '{owner}', 'note {id}')"
        ))
        .await?;
    }
    env.exec("update public.notes set body = 'edited' where id = 3")
        .await?;
    // The last rows are the barriers: each user's list ends with one of its own rows.
    env.exec(&format!(
        "insert into public.notes values (6, '{BOB}', 'b'), (7, '{ALICE}', 'a')"
    ))
    .await?;

    let got = changes(&mut user_a, "realtime:notes-a", 5).await?;
    let want = kinds(&[
        ("INSERT", 1),
        ("INSERT", 3),
        ("INSERT", 5),
        ("UPDATE", 3),
        ("INSERT", 7),
    ]);
    ensure!(
        got == want,
        "user A on node-1 received {got:?}, expected {want:?}"
    );
    let got = changes(&mut user_b, "realtime:notes-b", 3).await?;
    let want = kinds(&[("INSERT", 2), ("INSERT", 4), ("INSERT", 6)]);
    ensure!(
        got == want,
        "user B on node-3 received {got:?}, expected {want:?}"
    );
    let got = changes(&mut all, "realtime:notes-all", 8).await?;
    let want = kinds(&[
        ("INSERT", 1),
        ("INSERT", 2),
        ("INSERT", 3),
        ("INSERT", 4),
        ("INSERT", 5),
        ("UPDATE", 3),
        ("INSERT", 6),
        ("INSERT", 7),
    ]);
    ensure!(
        got == want,
        "service_role on node-2 received {got:?}, expected {want:?}"
    );
    for (who, client) in [
        ("A", &mut user_a),
        ("B", &mut user_b),
        ("service", &mut all),
    ] {
        let items = client.drain(QUIET).await?;
        ensure!(
            !items
                .iter()
                .any(|i| i.text().is_some_and(|m| m.event == "postgres_changes")),
            "{who} received more changes: {items:?}"
        );
    }
    Ok(())
}

// ------------------------------------------------------------------------------------ limits

#[tokio::test]
async fn concurrent_users_are_counted_across_the_cluster() -> Result<()> {
    let mut env = ClusterEnv::start(
        3,
        &[
            ("TENANT_MAX_CONCURRENT_USERS", "2"),
            ("CLUSTER_HEARTBEAT_MS", "200"),
        ],
        "",
    )
    .await?;
    let outcome = concurrent_users_body(&mut env).await;
    outcome.with_context(|| env.logs())
}

/// A fresh socket of node `i` joining `topic`: `Ok(Ok((client, reply)))`, or `Ok(Err(refusal))`
/// when the upgrade itself is refused.
async fn try_join(
    env: &ClusterEnv,
    i: usize,
    topic: &str,
) -> Result<std::result::Result<(Client, Msg), realtide_tests::HttpResponse>> {
    let query = format!("apikey={}&vsn=2.0.0", token("anon", 3600));
    let mut client = match env
        .node(i)?
        .try_connect(Vsn::V2, "/socket/websocket", &query, &[])
        .await?
    {
        realtide_tests::Connect::Open(client) => client,
        realtide_tests::Connect::Refused(response) => return Ok(Err(response)),
    };
    let join_ref = client.send_join(topic, &json!({"config": {}})).await?;
    let reply = client.expect_reply(topic, &join_ref).await?;
    Ok(Ok((client, reply)))
}

/// Whether a connect or join attempt was refused for too many users (as a single node
/// refuses: 429 on the upgrade, or the join's reason).
fn too_many_users(
    attempt: &std::result::Result<(Client, Msg), realtide_tests::HttpResponse>,
) -> bool {
    match attempt {
        Err(response) => {
            response.status == 429 && response.body == r#"{"error":"Too many connected users"}"#
        }
        Ok((_, reply)) => {
            reply.response().get("reason")
                == Some(&json!(
                    "ConnectionRateLimitReached: Too many connected users"
                ))
        }
    }
}

async fn concurrent_users_body(env: &mut ClusterEnv) -> Result<()> {
    let topic = "realtime:users";
    let Ok((mut first, reply)) = try_join(env, 0, topic).await? else {
        bail!("user 1 refused on node-1");
    };
    ensure!(
        reply.status() == Some("ok"),
        "user 1 on node-1: {}",
        reply.raw
    );
    let first_ref = reply.join_ref.clone().context("no join_ref")?;
    let Ok((_second, reply)) = try_join(env, 1, topic).await? else {
        bail!("user 2 refused on node-2");
    };
    ensure!(
        reply.status() == Some("ok"),
        "user 2 on node-2: {}",
        reply.raw
    );
    // Several heartbeats later every node counts both.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let third = try_join(env, 2, topic).await?;
    ensure!(
        too_many_users(&third),
        "a third user on node-3 while two are connected on node-1 and node-2: {:?}",
        third.map(|(_, reply)| reply.raw)
    );
    // User 1 leaves: node-3 admits a user again (bounded retries).
    first
        .push(Some(&first_ref), topic, "phx_leave", &json!({}))
        .await?;
    let deadline = tokio::time::Instant::now() + CROSS_WAIT;
    loop {
        let attempt = try_join(env, 2, topic).await?;
        if let Ok((_, reply)) = &attempt
            && reply.status() == Some("ok")
        {
            return Ok(());
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "node-3 still refuses after user 1 left: {:?}",
            attempt.map(|(_, reply)| reply.raw)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
