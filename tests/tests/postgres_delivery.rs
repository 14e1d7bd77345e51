//! postgres_changes delivery guarantees at the wire, against a real PostgreSQL and the real
//! binary: a transaction larger than a subscriber's queue waits for a reader that does not read
//! (no disconnect, nothing lost); a reader stalled past `CHANGES_STALL_TIMEOUT` is cut and
//! resumes without a gap or a duplicate; a lost socket rejoining within the window gets what
//! it missed; a late rejoin is told `Missed changes`; an explicit leave does not resume; a
//! transaction streamed before it is visible is RLS-checked once it is (synchronous standby
//! that never answers, then released).
// `Value[&str]` never panics (it yields null).
#![allow(clippy::indexing_slicing)]

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use realtide_protocol::Vsn;
use realtide_tests::{Client, Incoming, PG_WAIT, PgEnv, QUIET, TEST_PUBLICATION, user_token};
use serde_json::{Value, json};

const OWNER: &str = "11111111-1111-1111-1111-111111111111";

fn service() -> String {
    user_token("service_role", OWNER)
}

fn setup() -> String {
    format!(
        "create table public.items (id int8 primary key, name text);
         grant select on public.items to service_role;
         create table public.notes (id int8 primary key, owner uuid not null);
         alter table public.notes enable row level security;
         grant select on public.notes to authenticated;
         create policy owner_only on public.notes for select to authenticated
           using (owner = nullif(current_setting('request.jwt.claim.sub', true), '')::uuid);
         alter publication {TEST_PUBLICATION} add table public.items, public.notes;"
    )
}

fn bindings() -> Value {
    json!([{"event": "*", "schema": "public", "table": "items"}])
}

fn join_payload(token: &str) -> Value {
    json!({"config": {"postgres_changes": bindings()}, "access_token": token})
}

async fn subscribe(env: &PgEnv, topic: &str) -> Result<Client> {
    let mut client = env.client(&service()).await?;
    client
        .join_changes(topic, bindings(), Some(&service()))
        .await?;
    Ok(client)
}

/// Record ids of the next `count` changes on `topic`.
async fn ids(client: &mut Client, topic: &str, count: usize) -> Result<Vec<i64>> {
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        let msg = client
            .next_change(topic)
            .await
            .with_context(|| format!("after {} changes", out.len()))?;
        out.push(
            msg.payload["data"]["record"]["id"]
                .as_i64()
                .context("record id")?,
        );
    }
    Ok(out)
}

/// Every change frame on `topic` until the socket ends: (record ids, close code).
async fn ids_until_end(client: &mut Client, topic: &str) -> Result<(Vec<i64>, Option<u16>)> {
    let mut out = Vec::new();
    loop {
        match client.recv_timeout(PG_WAIT).await? {
            Some(Incoming::Text(msg)) if msg.topic == topic && msg.event == "postgres_changes" => {
                out.push(
                    msg.payload["data"]["record"]["id"]
                        .as_i64()
                        .context("record id")?,
                );
            }
            Some(Incoming::Close(code, _)) => return Ok((out, code)),
            Some(Incoming::Eof(_)) => return Ok((out, None)),
            Some(_) => {}
            None => anyhow::bail!("socket still open; {} changes so far", out.len()),
        }
    }
}

fn assert_sequence(got: &[i64], from: i64, to: i64) -> Result<()> {
    let expected: Vec<i64> = (from..=to).collect();
    if got != expected {
        let first_bad = got
            .iter()
            .zip(&expected)
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(expected.len()));
        anyhow::bail!(
            "expected ids {from}..={to} in order ({} ids), got {} ids; first difference at index {first_bad}: got {:?}, expected {:?}",
            expected.len(),
            got.len(),
            got.get(first_bad),
            expected.get(first_bad)
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_transaction_larger_than_the_queue_waits_for_a_reader_that_does_not_read() -> Result<()> {
    let env = PgEnv::start(&[("OUTBOUND_QUEUE_MESSAGES", "1000")], &setup()).await?;
    let topic = "realtime:big";
    let mut client = env.server.connect_paused(Vsn::V2).await?;
    client.send_join(topic, &join_payload(&service())).await?;
    // The subscription is registered server-side while the client reads nothing.
    tokio::time::sleep(Duration::from_secs(2)).await;
    env.exec("insert into public.items select g, 'row ' || g from generate_series(1, 10500) g")
        .await?;
    // Ten times the queue, to a socket nobody reads for 3 s: no slow-consumer cut.
    tokio::time::sleep(Duration::from_secs(3)).await;
    client.start_reading();
    let system = client.expect_event(topic, "system").await?;
    ensure!(
        system.payload["message"] == "Subscribed to PostgreSQL",
        "{}",
        system.raw
    );
    let got = ids(&mut client, topic, 10_500).await?;
    assert_sequence(&got, 1, 10_500)?;
    client.assert_no_frame(QUIET).await?;
    ensure!(
        env.server.stderr().matches("slow consumer").count() == 0,
        "no slow-consumer close expected:\n{}",
        env.server.stderr()
    );
    Ok(())
}

#[tokio::test]
async fn a_reader_stalled_past_the_timeout_is_cut_and_resumes_without_gap_or_duplicate()
-> Result<()> {
    let env = PgEnv::start(
        &[
            ("OUTBOUND_QUEUE_MESSAGES", "1000"),
            ("CHANGES_STALL_TIMEOUT", "2"),
        ],
        &setup(),
    )
    .await?;
    let topic = "realtime:stalled";
    let mut client = env.server.connect_paused(Vsn::V2).await?;
    client.send_join(topic, &join_payload(&service())).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    env.exec(
        "insert into public.items select g, repeat('x', 200) from generate_series(1, 20000) g",
    )
    .await?;
    // Longer than the stall timeout: the server cuts the socket.
    tokio::time::sleep(Duration::from_secs(6)).await;
    client.start_reading();
    let (first, code) = ids_until_end(&mut client, topic).await?;
    ensure!(
        code == Some(1008) || code.is_none(),
        "expected the slow-consumer close, got {code:?}"
    );
    ensure!(
        first.len() < 20_000,
        "the stalled reader was not cut ({} changes)",
        first.len()
    );
    assert_sequence(&first, 1, i64::try_from(first.len())?)?;
    // The same subscriber rejoins: the rest, from exactly where its socket stopped.
    let mut again = subscribe(&env, topic).await?;
    let rest = ids(&mut again, topic, 20_000 - first.len()).await?;
    assert_sequence(&rest, i64::try_from(first.len())? + 1, 20_000)?;
    again.assert_no_frame(QUIET).await?;
    Ok(())
}

#[tokio::test]
async fn a_lost_socket_rejoining_within_the_window_gets_what_it_missed_then_live() -> Result<()> {
    let env = PgEnv::start(&[], &setup()).await?;
    let topic = "realtime:lost";
    let mut client = subscribe(&env, topic).await?;
    env.exec("insert into public.items values (1, 'a')").await?;
    assert_sequence(&ids(&mut client, topic, 1).await?, 1, 1)?;
    drop(client);
    tokio::time::sleep(Duration::from_millis(300)).await;
    env.exec("insert into public.items select g, 'b' from generate_series(2, 50) g")
        .await?;
    let mut again = subscribe(&env, topic).await?;
    env.exec("insert into public.items values (51, 'c')")
        .await?;
    assert_sequence(&ids(&mut again, topic, 50).await?, 2, 51)?;
    again.assert_no_frame(QUIET).await?;
    // Another subject on the same topic is another subscriber: it starts at the head.
    let mut other = env.client(&service()).await?;
    let other_token = user_token("service_role", "22222222-2222-2222-2222-222222222222");
    other
        .join_changes(topic, bindings(), Some(&other_token))
        .await?;
    env.exec("insert into public.items values (52, 'd')")
        .await?;
    assert_sequence(&ids(&mut other, topic, 1).await?, 52, 52)?;
    Ok(())
}

#[tokio::test]
async fn a_late_rejoin_is_told_that_changes_were_missed() -> Result<()> {
    let env = PgEnv::start(&[("CHANGES_RESUME_WINDOW", "1")], &setup()).await?;
    let topic = "realtime:late";
    let mut client = subscribe(&env, topic).await?;
    env.exec("insert into public.items values (1, 'a')").await?;
    assert_sequence(&ids(&mut client, topic, 1).await?, 1, 1)?;
    drop(client);
    env.exec("insert into public.items values (2, 'b')").await?;
    // Beyond the window (records expire on the keeper's next pass).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut again = env.client(&service()).await?;
    let (_, _, subscribed) = again
        .join_changes_raw(topic, bindings(), Some(&service()))
        .await?;
    ensure!(
        subscribed.payload["message"] == "Subscribed to PostgreSQL",
        "{}",
        subscribed.raw
    );
    let missed = again.expect_event(topic, "system").await?;
    ensure!(
        missed.payload["status"] == "error"
            && missed.payload["extension"] == "postgres_changes"
            && missed.payload["channel"] == "late"
            && missed.payload["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("Missed changes")),
        "expected the missed-changes notice, got {}",
        missed.raw
    );
    env.exec("insert into public.items values (3, 'c')").await?;
    assert_sequence(&ids(&mut again, topic, 1).await?, 3, 3)?;
    Ok(())
}

#[tokio::test]
async fn an_explicit_leave_does_not_resume() -> Result<()> {
    let env = PgEnv::start(&[], &setup()).await?;
    let topic = "realtime:leave";
    let mut client = env.client(&service()).await?;
    let (join_ref, _) = client
        .join_changes(topic, bindings(), Some(&service()))
        .await?;
    env.exec("insert into public.items values (1, 'a')").await?;
    assert_sequence(&ids(&mut client, topic, 1).await?, 1, 1)?;
    let reference = client
        .push(Some(&join_ref), topic, "phx_leave", &json!({}))
        .await?;
    client.expect_reply(topic, &reference).await?;
    env.exec("insert into public.items values (2, 'b')").await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    client
        .join_changes(topic, bindings(), Some(&service()))
        .await?;
    env.exec("insert into public.items values (3, 'c')").await?;
    assert_sequence(&ids(&mut client, topic, 1).await?, 3, 3)?;
    client.assert_no_frame(QUIET).await?;
    Ok(())
}

#[tokio::test]
async fn a_commit_streamed_before_it_is_visible_is_checked_once_visible() -> Result<()> {
    let env = PgEnv::start(&[], &setup()).await?;
    let topic = "realtime:visible";
    let token = user_token("authenticated", OWNER);
    let mut client = env.client(&token).await?;
    client
        .join_changes(
            topic,
            json!([{"event": "INSERT", "schema": "public", "table": "notes"}]),
            Some(&token),
        )
        .await?;
    // A synchronous standby that never answers: the commit is flushed and streamed by the
    // walsender, but the committing session waits and its rows are not visible to others.
    env.exec("alter system set synchronous_standby_names = 'nobody'")
        .await?;
    env.exec("select pg_reload_conf()").await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let writer = env.pg.connect().await?;
    let insert = tokio::spawn(async move {
        writer
            .batch_execute(&format!(
                "set synchronous_commit = on; insert into public.notes values (1, '{OWNER}')"
            ))
            .await
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    ensure!(
        !insert.is_finished(),
        "the commit should wait for the standby"
    );
    let visible: bool = env
        .db
        .query_one(
            "select exists (select 1 from public.notes where id = 1)",
            &[],
        )
        .await?
        .get(0);
    ensure!(!visible, "the row must not be visible yet");
    // Released: the commit completes, and the subscriber gets the row exactly once.
    env.exec("alter system reset synchronous_standby_names")
        .await?;
    env.exec("select pg_reload_conf()").await?;
    insert.await??;
    let msg = client.next_change(topic).await?;
    ensure!(msg.payload["data"]["record"]["id"] == 1, "{}", msg.raw);
    client.assert_no_frame(QUIET).await?;
    Ok(())
}
