//! `GET /metrics`: Prometheus text read from the live counters, optionally guarded by a bearer JWT
//! signed with `METRICS_JWT_SECRET` (403 with an empty body otherwise, as the reference).

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use realtide_tests::{HttpResponse, PgEnv, SECRET, Server, Vsn, sign_with, unix_now, user_token};
use serde_json::json;

const METRICS_SECRET: &str = "realtide-metrics-test-secret-0123456789";

/// Scrapes `/metrics` (with optional headers) and checks it is 200 Prometheus text.
async fn scrape(server: &Server, headers: &[(&str, &str)]) -> Result<String> {
    let response = server.http("GET", "/metrics", headers).await?;
    ensure!(response.status == 200, "{response:?}");
    let content_type = response.header("content-type").unwrap_or_default();
    ensure!(
        content_type.starts_with("text/plain"),
        "content-type {content_type:?}"
    );
    Ok(response.body)
}

/// The value of an unlabelled series in a Prometheus text body.
fn value(body: &str, name: &str) -> Result<f64> {
    body.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.split_once(' ')?;
            (series == name).then(|| value.trim().parse::<f64>().ok())?
        })
        .with_context(|| format!("no {name} in:\n{body}"))
}

/// Scrapes until `name` equals `expected` (counters settle after the socket task runs).
async fn wait_for(server: &Server, name: &str, expected: f64) -> Result<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let body = scrape(server, &[]).await?;
        if value(&body, name)? == expected {
            return Ok(body);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{name} never reached {expected}:\n{body}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn exports_every_series_without_a_database() -> Result<()> {
    let server = Server::start(&[]).await?;
    let body = scrape(&server, &[]).await?;
    for name in [
        "realtide_connections",
        "realtide_channels",
        "realtide_topics",
        "realtide_joins_total",
        "realtide_events_in_total",
        "realtide_events_out_total",
        "realtide_bytes_out_total",
        "realtide_slow_consumer_disconnects_total",
        "realtide_database_events_total",
        "realtide_bytes_in_total",
        "realtide_presence_events_total",
        "realtide_outbound_queue_frames",
    ] {
        value(&body, name)?;
    }
    ensure!(body.contains("# TYPE realtide_connections gauge"), "{body}");
    ensure!(
        body.contains("# TYPE realtide_joins_total counter"),
        "{body}"
    );
    ensure!(
        !body.contains("realtide_replication"),
        "replication series without a database:\n{body}"
    );
    Ok(())
}

#[tokio::test]
async fn connections_and_events_in_move() -> Result<()> {
    let server = Server::start(&[]).await?;
    wait_for(&server, "realtide_connections", 0.0).await?;
    let mut client = server.connect(Vsn::V2).await?;
    let body = wait_for(&server, "realtide_connections", 1.0).await?;
    let before = value(&body, "realtide_events_in_total")?;

    client.heartbeat().await?;
    let body = scrape(&server, &[]).await?;
    let after = value(&body, "realtide_events_in_total")?;
    ensure!(
        after > before,
        "events_in did not increase: {before} -> {after}"
    );
    ensure!(value(&body, "realtide_connections")? == 1.0, "{body}");

    let (_, joined) = client.join("realtime:metrics", &json!({})).await?;
    ensure!(joined.status() == Some("ok"), "{joined:?}");
    let body = wait_for(&server, "realtide_channels", 1.0).await?;
    ensure!(value(&body, "realtide_joins_total")? >= 1.0, "{body}");
    ensure!(value(&body, "realtide_topics")? == 1.0, "{body}");

    drop(client);
    wait_for(&server, "realtide_connections", 0.0).await?;
    wait_for(&server, "realtide_channels", 0.0).await?;
    Ok(())
}

fn metrics_token(secret: &str, claims: serde_json::Value) -> String {
    sign_with(&claims, secret)
}

fn forbidden(response: &HttpResponse) -> Result<()> {
    ensure!(response.status == 403, "{response:?}");
    ensure!(response.body.is_empty(), "{response:?}");
    Ok(())
}

#[tokio::test]
async fn metrics_jwt_secret_guards_the_route() -> Result<()> {
    let server = Server::start(&[("METRICS_JWT_SECRET", METRICS_SECRET)]).await?;
    let now = unix_now();
    let valid = metrics_token(
        METRICS_SECRET,
        json!({"role": "metrics", "exp": now + 3600, "iat": now}),
    );

    forbidden(&server.http("GET", "/metrics", &[]).await?)?;
    // Signed with the socket secret, not the metrics one.
    let other = metrics_token(SECRET, json!({"role": "metrics", "exp": now + 3600}));
    let header = format!("Bearer {other}");
    forbidden(
        &server
            .http("GET", "/metrics", &[("Authorization", &header)])
            .await?,
    )?;
    // Expired.
    let expired = metrics_token(METRICS_SECRET, json!({"role": "metrics", "exp": now - 10}));
    let header = format!("Bearer {expired}");
    forbidden(
        &server
            .http("GET", "/metrics", &[("Authorization", &header)])
            .await?,
    )?;
    // Not a bearer header.
    forbidden(
        &server
            .http("GET", "/metrics", &[("Authorization", &valid)])
            .await?,
    )?;

    let header = format!("Bearer {valid}");
    let body = scrape(&server, &[("Authorization", &header)]).await?;
    value(&body, "realtide_connections")?;

    // The guard does not affect the other routes.
    let health = server.http("GET", "/healthcheck", &[]).await?;
    ensure!(health.status == 200, "{health:?}");
    Ok(())
}

/// The series a database adds, and the named series moving under real traffic: bytes in,
/// presence diffs, database events (a `realtime.send` broadcast), the authorization latency
/// histogram (a private join), and `/api/health`'s database fields.
#[tokio::test]
async fn named_series_move_with_a_database() -> Result<()> {
    let env = PgEnv::start(
        &[],
        "create policy all_read on realtime.messages for select to authenticated using (true);
         create policy all_write on realtime.messages for insert to authenticated with check (true);",
    )
    .await?;
    let server = &env.server;
    let before = scrape(server, &[]).await?;
    for name in [
        "realtide_replication_connected",
        "realtide_replication_lag_bytes",
        "realtide_replication_lag_seconds",
    ] {
        value(&before, name)?;
    }
    ensure!(
        value(&before, "realtide_replication_connected")? == 1.0,
        "{before}"
    );
    let token = user_token("authenticated", "aaaaaaaa-0000-0000-0000-000000000001");
    let mut client = env.client(&token).await?;
    let join_ref = client
        .send_join(
            "realtime:metered",
            &json!({"config": {"private": true, "presence": {"key": "k", "enabled": true}}, "access_token": token}),
        )
        .await?;
    let reply = client.expect_reply("realtime:metered", &join_ref).await?;
    ensure!(reply.status() == Some("ok"), "{}", reply.raw);
    client
        .track(&join_ref, "realtime:metered", json!({"here": true}))
        .await?;
    client
        .expect_event("realtime:metered", "presence_diff")
        .await?;
    env.exec("select realtime.send('{\"x\":1}'::jsonb, 'e', 'metered')")
        .await?;
    client.next_binary().await?;

    let after = scrape(server, &[]).await?;
    ensure!(
        value(&after, "realtide_bytes_in_total")? > value(&before, "realtide_bytes_in_total")?,
        "bytes in did not move"
    );
    ensure!(
        value(&after, "realtide_presence_events_total")? >= 1.0,
        "{after}"
    );
    ensure!(
        value(&after, "realtide_database_events_total")? >= 1.0,
        "{after}"
    );
    ensure!(
        value(&after, "realtide_authorization_seconds_count")? >= 1.0,
        "{after}"
    );
    ensure!(
        after.contains("realtide_authorization_seconds_bucket{le=\"+Inf\"}"),
        "{after}"
    );
    ensure!(
        value(&after, "realtide_replication_lag_seconds")? >= 0.0,
        "{after}"
    );

    let health = server.http("GET", "/api/health", &[]).await?;
    let health: serde_json::Value = serde_json::from_str(&health.body)?;
    ensure!(
        health.get("database_connected") == Some(&json!(true))
            && health.get("replication_connected") == Some(&json!(true))
            && health.get("connections") == Some(&json!(1))
            && health.get("channels") == Some(&json!(1)),
        "{health}"
    );
    Ok(())
}
