//! Honest subscription status: while the replication stream cannot run (here: a cluster with
//! `wal_level=replica`), realtide logs what to fix at error level, `/api/health` answers 503
//! `degraded`, and a postgres_changes subscriber gets a `system` error saying why instead of
//! `Subscribed to PostgreSQL`; once the cause is fixed, the subscriber gets
//! `Subscribed to PostgreSQL` and its changes without rejoining.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use realtide_tests::{PgCluster, Server, TEST_PUBLICATION, TEST_SLOT, Vsn, token};
use serde_json::json;

#[tokio::test]
async fn wal_level_replica_is_reported_until_fixed() -> Result<()> {
    let pg = PgCluster::start_opts("-c wal_level=replica").await?;
    let db = pg.connect().await?;
    db.batch_execute(&format!(
        "create table public.items (id int primary key, name text);
         grant select on public.items to service_role;
         create publication {TEST_PUBLICATION} for table public.items;"
    ))
    .await?;
    let server = Server::start(&[
        ("DB_URL", pg.url.as_str()),
        ("SLOT_NAME", TEST_SLOT),
        ("PUBLICATION", TEST_PUBLICATION),
    ])
    .await?;

    // The log says what to fix, at error level.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !server.stderr().contains("wal_level must be logical") {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "no wal_level line; stderr:\n{}",
            server.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let line = server
        .stderr()
        .lines()
        .find(|l| l.contains("wal_level must be logical"))
        .map(str::to_owned)
        .unwrap_or_default();
    ensure!(line.contains("ERROR"), "not at error level: {line}");

    // Readiness fails, and says why.
    let health = server.http("GET", "/api/health", &[]).await?;
    ensure!(health.status == 503, "{health:?}");
    let body: serde_json::Value = serde_json::from_str(&health.body)?;
    ensure!(
        body.pointer("/status") == Some(&json!("degraded")),
        "{body}"
    );
    ensure!(
        body.pointer("/replication") == Some(&json!("down")),
        "{body}"
    );
    ensure!(
        body.pointer("/problem")
            .and_then(|p| p.as_str())
            .is_some_and(|p| p.contains("wal_level must be logical")),
        "{body}"
    );
    // Liveness stays up.
    ensure!(server.http("GET", "/healthcheck", &[]).await?.status == 200);

    // The subscriber is told why, and is not told it is subscribed.
    let service = token("service_role", 3600);
    let mut client = server.connect_token(Vsn::V1, &service).await?;
    let topic = "realtime:items";
    let join_ref = client
        .send_join(
            topic,
            &json!({"config": {"postgres_changes": [{"event": "*", "schema": "public", "table": "items"}]}}),
        )
        .await?;
    let reply = client.expect_reply(topic, &join_ref).await?;
    ensure!(reply.status() == Some("ok"), "{reply:?}");
    let system = client.expect_event(topic, "system").await?;
    ensure!(
        system.payload
            == json!({
                "extension": "postgres_changes",
                "status": "error",
                "channel": "items",
                "message": "Realtime was unable to start replication: wal_level must be logical: set wal_level = logical in postgresql.conf and restart PostgreSQL",
            }),
        "{system:?}"
    );
    let quiet = client.drain(Duration::from_millis(1500)).await?;
    ensure!(
        !format!("{quiet:?}").contains("Subscribed to PostgreSQL"),
        "{quiet:?}"
    );

    // Fixed: PostgreSQL restarts with wal_level=logical; the waiting subscriber gets its
    // success message and then the changes, without rejoining.
    drop(db);
    pg.stop_server().await?;
    let opts_file = pg.dir.join("data").join("postmaster.opts");
    let opts = std::fs::read_to_string(&opts_file)?
        .replace("\"wal_level=replica\"", "\"wal_level=logical\"");
    std::fs::write(&opts_file, opts)?;
    pg.start_server().await?;
    let subscribed = client
        .expect_text_within(Duration::from_secs(60), |m| {
            m.event == "system"
                && m.payload.pointer("/message") == Some(&json!("Subscribed to PostgreSQL"))
        })
        .await
        .with_context(|| format!("stderr:\n{}", server.stderr()))?;
    ensure!(
        subscribed.payload.pointer("/status") == Some(&json!("ok")),
        "{subscribed:?}"
    );
    let health = server.http("GET", "/api/health", &[]).await?;
    ensure!(health.status == 200, "{health:?}");
    let db = pg.connect().await?;
    db.batch_execute("insert into public.items values (1, 'first')")
        .await?;
    let change = client.next_change(topic).await?;
    ensure!(
        change.payload.pointer("/data/record") == Some(&json!({"id": 1, "name": "first"})),
        "{change:?}"
    );
    Ok(())
}
