//! postgres_changes durability against a real PostgreSQL: the persistent
//! slot is confirmed after delivery and resumed after a realtide restart without re-delivering
//! acknowledged changes, and a PostgreSQL restart keeps WebSocket clients connected while
//! realtide reconnects and delivers what was committed meanwhile.
// `Value[&str]` never panics (it yields null), and an out-of-range binding index in a test is
// a test failure either way.
#![allow(clippy::indexing_slicing)]

use std::time::Duration;

use anyhow::{Result, ensure};
use realtide_tests::{
    Client, PG_WAIT, PgEnv, QUIET, Server, TEST_PUBLICATION, TEST_SLOT, user_token,
};
use serde_json::{Value, json};

fn service() -> String {
    user_token("service_role", "11111111-1111-1111-1111-111111111111")
}

fn setup() -> String {
    format!(
        "create table public.items (id int8 primary key, name text);
         grant select on public.items to service_role;
         alter publication {TEST_PUBLICATION} add table public.items;"
    )
}

async fn subscribe(env: &PgEnv, topic: &str) -> Result<Client> {
    let mut client = env.client(&service()).await?;
    client
        .join_changes(
            topic,
            json!([{"event": "*", "schema": "public", "table": "items"}]),
            Some(&service()),
        )
        .await?;
    Ok(client)
}

async fn next_id(client: &mut Client, topic: &str) -> Result<Value> {
    let msg = client.next_change(topic).await?;
    Ok(msg.payload["data"]["record"]["id"].clone())
}

/// Record ids of the changes received up to and including row `last`.
async fn ids_until(client: &mut Client, topic: &str, last: i64) -> Result<Vec<Value>> {
    let mut ids = Vec::new();
    loop {
        let id = next_id(client, topic).await?;
        let done = id == last;
        ids.push(id);
        if done {
            return Ok(ids);
        }
    }
}

async fn insert(
    db: &tokio_postgres::Client,
    pg: &realtide_tests::PgCluster,
    id: i64,
) -> Result<String> {
    db.batch_execute(&format!("insert into items values ({id}, 'row {id}')"))
        .await?;
    pg.current_lsn(db).await
}

#[tokio::test]
async fn realtide_restart_resumes_the_slot_and_the_subscriber_without_redelivery() -> Result<()> {
    let mut env = PgEnv::start(&[], &setup()).await?;
    let topic = "realtime:durable";
    let mut client = subscribe(&env, topic).await?;
    let lsn1 = insert(&env.db, &env.pg, 1).await?;
    ensure!(next_id(&mut client, topic).await? == 1);
    // Delivered, then confirmed: the slot advances past the change.
    env.pg.wait_confirmed(TEST_SLOT, &lsn1).await?;

    // Kill realtide (SIGKILL): the slot stays, persistent and idle.
    env.server.kill().await?;
    let deadline = tokio::time::Instant::now() + PG_WAIT;
    loop {
        let slot = env.pg.slot(&env.db, TEST_SLOT).await?;
        match slot {
            Some((false, _, temporary)) => {
                ensure!(!temporary, "the slot must be persistent");
                break;
            }
            Some((true, _, _)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => anyhow::bail!("slot after the kill: {other:?}"),
        }
    }
    // Committed while realtide is down: not consumed yet.
    let lsn2 = insert(&env.db, &env.pg, 2).await?;
    let behind: bool = env
        .db
        .query_one(
            "select confirmed_flush_lsn < $1::text::pg_lsn from pg_replication_slots \
             where slot_name = $2",
            &[&lsn2, &TEST_SLOT],
        )
        .await?
        .get(0);
    ensure!(
        behind,
        "the slot advanced while realtide was down: {:?}, row 2 at {lsn2}",
        env.pg.slot(&env.db, TEST_SLOT).await?
    );

    // Restart against the same slot: streaming resumes from it and consumes row 2.
    drop(client);
    env.server = Server::start_pg(&env.pg, TEST_SLOT, TEST_PUBLICATION, &[]).await?;
    env.pg.wait_confirmed(TEST_SLOT, &lsn2).await?;
    let slots: i64 = env
        .db
        .query_one(
            "select count(*) from pg_replication_slots where slot_name = $1",
            &[&TEST_SLOT],
        )
        .await?
        .get(0);
    ensure!(slots == 1, "{slots} slots named {TEST_SLOT}");

    // The same subscriber (topic, token subject, bindings) rejoining resumes: it gets row 2,
    // committed while realtide was down, then row 3; row 1, which its socket got before the
    // kill, is not delivered again. A subscriber of another topic starts at the head.
    let mut rejoined = subscribe(&env, topic).await?;
    let mut other = subscribe(&env, "realtime:durable-other").await?;
    let lsn3 = insert(&env.db, &env.pg, 3).await?;
    let got = ids_until(&mut rejoined, topic, 3).await?;
    ensure!(
        got == [Value::from(2), Value::from(3)],
        "after the restart the rejoined subscriber must get rows 2 and 3, got {got:?}"
    );
    rejoined.assert_no_frame(QUIET).await?;
    let first = next_id(&mut other, "realtime:durable-other").await?;
    ensure!(
        first == 3,
        "a new subscriber starts at the head, got row {first}"
    );
    other.assert_no_frame(QUIET).await?;
    env.pg.wait_confirmed(TEST_SLOT, &lsn3).await?;
    Ok(())
}

#[tokio::test]
async fn postgres_restart_keeps_clients_connected_and_resumes_delivery() -> Result<()> {
    let env = PgEnv::start(&[], &setup()).await?;
    let topic = "realtime:pg-restart";
    let mut client = subscribe(&env, topic).await?;
    let lsn1 = insert(&env.db, &env.pg, 1).await?;
    ensure!(next_id(&mut client, topic).await? == 1);
    env.pg.wait_confirmed(TEST_SLOT, &lsn1).await?;

    let before = env.pg.slot(&env.db, TEST_SLOT).await?;
    // PostgreSQL down for a while: the WebSocket stays open and heartbeats are answered.
    env.pg.stop_server().await?;
    for _ in 0..3 {
        client.heartbeat().await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    client.heartbeat().await?;
    env.pg.start_server().await?;
    // Committed as soon as PostgreSQL is back (likely before realtide has reconnected).
    let db = env.pg.connect_retry(PG_WAIT).await?;
    let after = env.pg.slot(&db, TEST_SLOT).await?;
    insert(&db, &env.pg, 2).await?;
    // Row 2 must arrive; nothing confirmed before the restart may arrive again. Duplicates
    // are recorded and reported at the end so the rest of the scenario still runs.
    let mut failures = Vec::new();
    let got = ids_until(&mut client, topic, 2).await?;
    if got != [json!(2)] {
        failures.push(format!(
            "after the PostgreSQL stop/start: received rows {got:?}, expected only row 2 (row 1 \
             at {lsn1} was confirmed before the restart: {before:?}; slot after the restart: \
             {after:?})"
        ));
    }
    client.heartbeat().await?;

    // A plain `pg_ctl restart` too.
    let before = env.pg.slot(&db, TEST_SLOT).await?;
    env.pg.restart_server().await?;
    client.heartbeat().await?;
    let db = env.pg.connect_retry(PG_WAIT).await?;
    let after = env.pg.slot(&db, TEST_SLOT).await?;
    insert(&db, &env.pg, 3).await?;
    let got = ids_until(&mut client, topic, 3).await?;
    if got != [json!(3)] {
        failures.push(format!(
            "after pg_ctl restart: received rows {got:?}, expected only row 3 (slot before: \
             {before:?}, after: {after:?})"
        ));
    }
    ensure!(failures.is_empty(), "{failures:#?}");
    client.assert_no_frame(QUIET).await?;
    client.heartbeat().await?;
    ensure!(
        env.server.stderr().contains("replication"),
        "no replication log lines"
    );
    Ok(())
}
