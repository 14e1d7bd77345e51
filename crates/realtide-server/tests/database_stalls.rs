//! A database that stops answering, in the middle of serving (the [`support::Gate`] in front
//! of a real PostgreSQL freezes: connections stay open, nothing moves). realtide must keep
//! serving what does not need the database, answer what does within its timeouts instead of
//! hanging, report itself degraded, and recover by itself once the database answers again.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use realtide_protocol::Vsn;
use realtide_tests::{Client, Endpoint, PG_WAIT, PgCluster, WAIT, user_token};
use serde_json::{Value, json};
use support::{Gate, TestApp};

const ALICE: &str = "aaaaaaaa-0000-0000-0000-000000000001";

/// Polls `/api/health` until its status is `want` (or `limit` passes); returns the last body.
async fn health_becomes(app: &Endpoint, want: u16, limit: Duration) -> Result<String> {
    let deadline = Instant::now() + limit;
    loop {
        let response = app.http("GET", "/api/health", &[]).await?;
        if response.status == want {
            return Ok(response.body);
        }
        ensure!(
            Instant::now() < deadline,
            "/api/health stayed {} (wanted {want}) for {limit:?}: {}",
            response.status,
            response.body
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Joins a public channel; returns its join ref once the reply is `ok`.
async fn join_public(client: &mut Client, topic: &str) -> Result<String> {
    let config = json!({"config": {"broadcast": {"self": false, "ack": false}, "presence": {"key": "", "enabled": false}, "private": false}});
    let (join_ref, reply) = client.join(topic, &config).await?;
    ensure!(
        reply.payload.pointer("/status").and_then(Value::as_str) == Some("ok"),
        "public join: {}",
        reply.raw
    );
    Ok(join_ref)
}

async fn private_join(client: &mut Client, topic: &str) -> Result<Value> {
    let join_ref = client
        .send_join(
            topic,
            &json!({
                "config": {"broadcast": {"self": false, "ack": false}, "presence": {"key": "", "enabled": false}, "private": true},
                "access_token": user_token("authenticated", ALICE),
            }),
        )
        .await?;
    Ok(client.expect_reply(topic, &join_ref).await?.payload)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_stops_answering_delays_only_what_needs_it() -> Result<()> {
    let pg = PgCluster::start().await?;
    let pg_addr: SocketAddr = format!("127.0.0.1:{}", pg.port()?).parse()?;
    let gate = Gate::open(pg_addr).await?;
    let changes = tempdir()?;
    let app = TestApp::builder()
        .setting(
            "--db-url",
            &format!("postgres://postgres@{}/postgres", gate.addr),
        )
        .setting("--slot-name", "stall_test")
        .setting("--authorization-timeout-ms", "1000")
        .setting("--changes-dir", &changes.display().to_string())
        .start()
        .await?;
    health_becomes(&app, 200, PG_WAIT).await?;
    let db = pg.connect().await?;
    db.batch_execute(
        "create policy lobby_read on realtime.messages for select to authenticated \
         using (realtime.topic() = 'lobby')",
    )
    .await?;
    let mut before = app.connect(Vsn::V2).await?;
    let reply = private_join(&mut before, "realtime:lobby").await?;
    ensure!(
        reply.pointer("/status").cloned().unwrap_or_default() == "ok",
        "private join before the stall: {reply}"
    );

    gate.freeze();
    let frozen_at = Instant::now();
    // A join that needs the database gets an answer within the authorization timeout, not never.
    let mut during = app.connect(Vsn::V2).await?;
    let reply = private_join(&mut during, "realtime:lobby").await?;
    let answered_in = frozen_at.elapsed();
    ensure!(
        reply.pointer("/status").cloned().unwrap_or_default() == "error",
        "a private join with the database frozen must be refused: {reply}"
    );
    ensure!(
        answered_in < Duration::from_secs(5),
        "answered after {answered_in:?}"
    );
    // Public channels do not need the database: a broadcast round trip still works.
    let mut sender = app.connect(Vsn::V2).await?;
    let mut receiver = app.connect(Vsn::V2).await?;
    join_public(&mut receiver, "realtime:public-room").await?;
    let join_ref = join_public(&mut sender, "realtime:public-room").await?;
    sender
        .broadcast(&join_ref, "realtime:public-room", "ping", json!({"n": 1}))
        .await?;
    let got = tokio::time::timeout(
        WAIT,
        receiver.expect_event("realtime:public-room", "broadcast"),
    )
    .await
    .context("a public broadcast while the database is frozen")??;
    ensure!(
        got.payload
            .pointer("/payload/n")
            .cloned()
            .unwrap_or_default()
            == 1,
        "{}",
        got.raw
    );
    // The readiness probe says so.
    let body = health_becomes(&app, 503, Duration::from_secs(10)).await?;
    ensure!(body.contains("degraded"), "{body}");

    gate.thaw();
    health_becomes(&app, 200, PG_WAIT).await?;
    let mut after = app.connect(Vsn::V2).await?;
    let reply = private_join(&mut after, "realtime:lobby").await?;
    ensure!(
        reply.pointer("/status").cloned().unwrap_or_default() == "ok",
        "private join after the stall: {reply}"
    );
    app.stop(Duration::from_secs(30)).await?;
    let _ = std::fs::remove_dir_all(&changes);
    Ok(())
}

fn tempdir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "realtide-stall-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos().into())
        .unwrap_or(0)
}
