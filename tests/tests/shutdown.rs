//! Shutdown is bounded in every state, and a failing log output changes nothing.
//!
//! The log output of these servers is a pipe whose reader stops after 300 bytes and closes it
//! (a log shipper that died, `realtide | head -c 300`): later log writes fail with EPIPE.

use std::io::Read;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use realtide_tests::{Server, Vsn};
use serde_json::{Value, json};

/// A pipe whose reader takes 300 bytes, then closes its end.
fn closing_log_pipe() -> Result<(std::io::PipeWriter, std::thread::JoinHandle<()>)> {
    let (mut reader, writer) = std::io::pipe()?;
    let closer = std::thread::spawn(move || {
        let mut taken = [0u8; 300];
        let _ = reader.read_exact(&mut taken);
        drop(reader);
    });
    Ok((writer, closer))
}

/// Waits (bounded) until the reader closed its end; `Err` when the server wrote too little.
async fn wait_closed(closer: &std::thread::JoinHandle<()>) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !closer.is_finished() {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the server wrote fewer than 300 bytes of logs"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// `metrics.log_lines_dropped` of `/api/health`.
async fn dropped_lines(server: &Server) -> Result<u64> {
    let health = server.http("GET", "/api/health", &[]).await?;
    let body: Value = serde_json::from_str(&health.body).context("health body")?;
    body.pointer("/metrics/log_lines_dropped")
        .and_then(Value::as_u64)
        .with_context(|| format!("no log_lines_dropped in {body}"))
}

/// A port nothing listens on: the database is unreachable.
fn closed_port() -> Result<u16> {
    let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(probe.local_addr()?.port())
}

/// The reported reproduction: log output to a pipe whose reader is gone, a database that
/// cannot be reached, then SIGTERM. The process must exit, well within its drain bound.
#[tokio::test]
async fn sigterm_stops_with_a_closed_log_pipe_and_an_unreachable_database() -> Result<()> {
    let (writer, closer) = closing_log_pipe()?;
    let db_url = format!("postgres://postgres@127.0.0.1:{}/postgres", closed_port()?);
    let mut server = Server::start_with_output(
        &[
            ("DB_URL", db_url.as_str()),
            ("SHUTDOWN_TIMEOUT_MS", "5000"),
            ("RUST_LOG", "debug"),
        ],
        writer,
    )
    .await?;
    wait_closed(&closer).await?;
    // The replication retries keep logging into the closed pipe.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while dropped_lines(&server).await? == 0 {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "no log line was dropped"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Bounded wait: SHUTDOWN_TIMEOUT_MS (5 s) plus slack for a loaded machine.
    let status = server.terminate(Duration::from_secs(20)).await?;
    ensure!(status.is_some(), "realtide still runs 20 s after SIGTERM");
    Ok(())
}

/// Clients keep working while every log line fails, and the failures are counted.
#[tokio::test]
async fn a_closed_log_pipe_during_traffic_leaves_clients_unaffected() -> Result<()> {
    let (writer, closer) = closing_log_pipe()?;
    let mut server = Server::start_with_output(&[("RUST_LOG", "trace")], writer).await?;
    wait_closed(&closer).await?;
    let topic = "realtime:logs-closed";
    let mut receiver = server.connect(Vsn::V2).await?;
    receiver.join_config(topic, json!({})).await?;
    let mut sender = server.connect(Vsn::V2).await?;
    let (join_ref, _) = sender.join(topic, &json!({"config": {}})).await?;
    for round in 0..200 {
        sender
            .broadcast(&join_ref, topic, "tick", json!({ "round": round }))
            .await?;
        let got = receiver
            .expect_text_within(Duration::from_secs(10), |m| m.event == "broadcast")
            .await
            .with_context(|| format!("round {round}"))?;
        ensure!(
            got.payload.pointer("/payload/round") == Some(&json!(round)),
            "{got:?}"
        );
    }
    // New connections and heartbeats still work.
    let mut late = server.connect(Vsn::V1).await?;
    let reply = late.heartbeat().await?;
    ensure!(reply.status() == Some("ok"), "{reply:?}");
    ensure!(dropped_lines(&server).await? > 0, "no log line was dropped");
    let status = server.terminate(Duration::from_secs(20)).await?;
    ensure!(
        status.is_some_and(|s| s.success()),
        "graceful shutdown failed: {status:?}"
    );
    Ok(())
}

/// A database that accepts connections and never answers: whatever the drain waits on, the
/// process exits by SHUTDOWN_TIMEOUT_MS.
#[tokio::test]
async fn shutdown_is_bounded_when_the_database_hangs() -> Result<()> {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = silent.local_addr()?.port();
    let held = tokio::spawn(async move {
        let mut sockets = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            sockets.push(socket);
        }
    });
    let (writer, closer) = closing_log_pipe()?;
    let db_url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let mut server = Server::start_with_output(
        &[
            ("DB_URL", db_url.as_str()),
            ("SHUTDOWN_TIMEOUT_MS", "2000"),
            ("RUST_LOG", "debug"),
        ],
        writer,
    )
    .await?;
    wait_closed(&closer).await?;
    let mut client = server.connect(Vsn::V1).await?;
    client
        .send_join(
            "realtime:hang",
            &json!({"config": {"postgres_changes": [{"event": "*", "schema": "public", "table": "t"}]}}),
        )
        .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = server.terminate(Duration::from_secs(20)).await?;
    held.abort();
    ensure!(status.is_some(), "realtide still runs 20 s after SIGTERM");
    Ok(())
}
