//! Several projects in one process (`TENANTS_FILE`): each tenant has its own database, secret,
//! slot and limits, is chosen by a `/t/{tenant}` path prefix or the first label of `Host`, and
//! nothing crosses from one tenant to another: tokens, topics, presence, HTTP and database
//! broadcasts, postgres_changes. One PostgreSQL cluster holds one database per tenant.
#![allow(clippy::indexing_slicing)]

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use realtide_tests::{
    Client, Incoming, PgCluster, Server, TEST_PUBLICATION, Vsn, sign_with, unix_now,
};
use serde_json::{Value, json};

const ACME_SECRET: &str = "acme-tenant-secret-0123456789-abcdefghij";
const GLOBEX_SECRET: &str = "globex-tenant-secret-0123456789-abcdefgh";
const USER: &str = "11111111-1111-1111-1111-111111111111";

/// Setup SQL of each tenant's database: a published table everyone may read.
const TABLE_SQL: &str =
    "create table items (id bigint primary key, owner text not null, note text);
alter table items replica identity full;
grant select on items to authenticated, anon;";

fn token(secret: &str, role: &str) -> String {
    sign_with(
        &json!({"role": role, "sub": USER, "exp": unix_now() + 3600}),
        secret,
    )
}

/// A PostgreSQL cluster with the databases `acme` and `globex`, and a realtide serving the
/// tenants `acme`, `globex`, `frozen` (suspended) and `broken` (its database does not exist
/// on a port nothing listens on).
struct Tenants {
    server: Server,
    pg: PgCluster,
    /// The server's settings (tenants file, journal directory, extra env), for a restart.
    env: Vec<(String, String)>,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn db_url(pg: &PgCluster, name: &str) -> String {
    match pg.url.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{name}"),
        None => pg.url.clone(),
    }
}

async fn connect_db(url: &str) -> Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    tokio::spawn(connection);
    Ok(client)
}

impl Tenants {
    async fn start(env: &[(&str, &str)]) -> Result<Tenants> {
        let pg = PgCluster::start().await?;
        let admin = pg.connect().await?;
        for name in ["acme", "globex"] {
            admin
                .batch_execute(&format!("create database {name}"))
                .await?;
        }
        let dead_port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
            probe.local_addr()?.port()
        };
        let dir = std::env::temp_dir().join(format!(
            "realtide-tenants-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&dir)?;
        let file = dir.join("tenants.toml");
        std::fs::write(
            &file,
            format!(
                r#"
[[tenant]]
external_id = "acme"
name = "Acme"
jwt_secret = "{ACME_SECRET}"
db_url = "{acme}"
publication = "{TEST_PUBLICATION}"

[[tenant]]
external_id = "globex"
jwt_secret = "{GLOBEX_SECRET}"
db_url = "{globex}"
publication = "{TEST_PUBLICATION}"

[[tenant]]
external_id = "frozen"
jwt_secret = "{ACME_SECRET}"
suspended = true

[[tenant]]
external_id = "lobby"
jwt_secret = "{ACME_SECRET}"
presence_enabled = true

[[tenant]]
external_id = "noisy"
jwt_secret = "{ACME_SECRET}"
max_events_per_second = 5

[[tenant]]
external_id = "broken"
jwt_secret = "{ACME_SECRET}"
db_url = "postgres://postgres@127.0.0.1:{dead_port}/broken"
"#,
                acme = db_url(&pg, "acme"),
                globex = db_url(&pg, "globex"),
            ),
        )?;
        let file_text = file.to_string_lossy().into_owned();
        let changes = dir.join("changes").to_string_lossy().into_owned();
        let mut all: Vec<(String, String)> = vec![
            ("TENANTS_FILE".to_owned(), file_text),
            ("CHANGES_DIR".to_owned(), changes),
        ];
        all.extend(env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        let borrowed: Vec<(&str, &str)> =
            all.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let server = Server::start(&borrowed).await?;
        Ok(Tenants {
            server,
            pg,
            env: all,
            _dir: TempDir(dir),
        })
    }

    /// Kills the server (SIGKILL) and starts it again with the same settings.
    async fn kill(&mut self) -> Result<()> {
        self.server.kill().await
    }

    async fn start_again(&mut self) -> Result<()> {
        let borrowed: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        self.server = Server::start(&borrowed).await?;
        Ok(())
    }

    /// Connects to `tenant` through the `/t/{tenant}` prefix.
    async fn client(&self, tenant: &str, token: &str) -> Result<Client> {
        self.server
            .connect_url(
                Vsn::V2,
                &format!("/t/{tenant}/realtime/v1/websocket"),
                &format!("apikey={token}&vsn=2.0.0"),
                &[],
            )
            .await
    }

    /// `POST /t/{tenant}/api/broadcast` of one message `event` to the topic `room`.
    async fn http_broadcast(
        &self,
        tenant: &str,
        token: &str,
        event: &str,
    ) -> Result<realtide_tests::HttpResponse> {
        let body = json!({"messages": [{"topic": "room", "event": event, "payload": {"n": 2}}]})
            .to_string();
        self.server
            .http_body(
                "POST",
                &format!("/t/{tenant}/api/broadcast"),
                &[
                    ("content-type", "application/json"),
                    ("authorization", &format!("Bearer {token}")),
                ],
                Some(body.as_bytes()),
            )
            .await
    }

    /// Sets up the tenant's table (after its first request started it, so that the
    /// publication exists) and waits until its slot streams.
    async fn prepare(&self, tenant: &str) -> Result<tokio_postgres::Client> {
        let db = connect_db(&db_url(&self.pg, tenant)).await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let rows = db
                .query(
                    "select 1 from pg_publication where pubname = $1",
                    &[&TEST_PUBLICATION],
                )
                .await?;
            if !rows.is_empty() {
                break;
            }
            ensure!(
                tokio::time::Instant::now() < deadline,
                "publication of {tenant} not created; stderr:\n{}",
                self.server.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        db.batch_execute(TABLE_SQL).await?;
        db.batch_execute(&format!(
            "alter publication {TEST_PUBLICATION} add table items"
        ))
        .await?;
        self.pg
            .wait_slot_active(&format!("realtide_{tenant}"))
            .await?;
        Ok(db)
    }
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default()
}

#[tokio::test]
async fn unknown_and_suspended_tenants_are_refused_before_the_upgrade() -> Result<()> {
    let env = Tenants::start(&[]).await?;
    let anon = token(ACME_SECRET, "anon");
    let query = format!("apikey={anon}&vsn=2.0.0");
    let unknown = env
        .server
        .try_connect(Vsn::V2, "/t/nope/realtime/v1/websocket", &query, &[])
        .await?
        .refused()?;
    ensure!(unknown.status == 404, "{unknown:?}");
    ensure!(
        serde_json::from_str::<Value>(&unknown.body)? == json!({"error": "Tenant not found"}),
        "{unknown:?}"
    );
    // No prefix, and a Host whose first label is no tenant.
    let by_address = env
        .server
        .try_connect(Vsn::V2, "/socket/websocket", &query, &[])
        .await?
        .refused()?;
    ensure!(by_address.status == 404, "{by_address:?}");
    let suspended = env
        .server
        .try_connect(Vsn::V2, "/t/frozen/socket/websocket", &query, &[])
        .await?
        .refused()?;
    ensure!(suspended.status == 403, "{suspended:?}");
    ensure!(
        serde_json::from_str::<Value>(&suspended.body)?
            == json!({"error": "Realtime was disabled for this tenant"}),
        "{suspended:?}"
    );
    let ping = env.server.http("GET", "/t/nope/api/ping", &[]).await?;
    ensure!(
        ping.status == 401
            && serde_json::from_str::<Value>(&ping.body)?
                == json!({"message": "Tenant not found in database"}),
        "{ping:?}"
    );
    let ping = env.server.http("GET", "/t/frozen/api/ping", &[]).await?;
    ensure!(
        ping.status == 403
            && serde_json::from_str::<Value>(&ping.body)?
                == json!({"message": "Tenant is suspended"}),
        "{ping:?}"
    );
    // The first label of Host names the tenant too.
    let mut by_host = env
        .server
        .connect_url(
            Vsn::V2,
            "/socket/websocket",
            &query,
            &[("Host", "acme.realtime.example.com")],
        )
        .await?;
    by_host.heartbeat().await?;
    let ping = env
        .server
        .http("GET", "/api/ping", &[("Host", "acme.localhost:4000")])
        .await?;
    ensure!(ping.status == 200, "{ping:?}");
    Ok(())
}

#[tokio::test]
async fn a_token_of_one_tenant_is_refused_by_another() -> Result<()> {
    let env = Tenants::start(&[]).await?;
    let acme_token = token(ACME_SECRET, "authenticated");
    let refused = env
        .server
        .try_connect(
            Vsn::V2,
            "/t/globex/realtime/v1/websocket",
            &format!("apikey={acme_token}&vsn=2.0.0"),
            &[],
        )
        .await?
        .refused()?;
    ensure!(
        refused.status == 401
            && serde_json::from_str::<Value>(&refused.body)?
                == json!({"error": "Failed to validate JWT signature"}),
        "{refused:?}"
    );
    // A channel token of another tenant is refused at join too.
    let mut globex = env.client("globex", &token(GLOBEX_SECRET, "anon")).await?;
    let join_ref = globex
        .send_join(
            "realtime:room",
            &json!({"config": {}, "access_token": acme_token}),
        )
        .await?;
    let reply = globex.expect_reply("realtime:room", &join_ref).await?;
    ensure!(
        reply.status() == Some("error") && reply.raw.contains("Failed to validate JWT signature"),
        "{}",
        reply.raw
    );
    // The HTTP API checks the tenant's own secret.
    let response = env.http_broadcast("globex", &acme_token, "e").await?;
    ensure!(response.status == 401, "{response:?}");
    env.client("acme", &acme_token).await?.heartbeat().await?;
    Ok(())
}

#[tokio::test]
async fn equal_topic_names_stay_in_their_tenant() -> Result<()> {
    let env = Tenants::start(&[]).await?;
    let acme_token = token(ACME_SECRET, "anon");
    let globex_token = token(GLOBEX_SECRET, "anon");
    let mut a1 = env.client("acme", &acme_token).await?;
    let mut a2 = env.client("acme", &acme_token).await?;
    let mut g1 = env.client("globex", &globex_token).await?;
    let config =
        json!({"config": {"broadcast": {"self": false}, "presence": {"key": "", "enabled": true}}});
    let (a1_ref, _) = a1.join("realtime:room", &config).await?;
    a2.join("realtime:room", &config).await?;
    let (_, reply) = g1.join("realtime:room", &config).await?;
    ensure!(reply.status() == Some("ok"), "{}", reply.raw);
    g1.drain(Duration::from_millis(300)).await?;
    a2.drain(Duration::from_millis(300)).await?;

    a1.broadcast(&a1_ref, "realtime:room", "hello", json!({"n": 1}))
        .await?;
    let got = a2.expect_event("realtime:room", "broadcast").await?;
    ensure!(got.payload["payload"] == json!({"n": 1}), "{}", got.raw);
    a1.track(&a1_ref, "realtime:room", json!({"who": "acme"}))
        .await?;
    let diff = a2.expect_event("realtime:room", "presence_diff").await?;
    ensure!(
        diff.raw.contains("acme"),
        "acme's presence diff: {}",
        diff.raw
    );
    // An HTTP broadcast to globex's `room` reaches globex only.
    let response = env
        .http_broadcast("globex", &globex_token, "from-http")
        .await?;
    ensure!(response.status == 202, "{response:?}");
    let got = g1.expect_event("realtime:room", "broadcast").await?;
    ensure!(
        got.payload["event"] == "from-http",
        "globex got {}",
        got.raw
    );
    // Globex saw neither acme's broadcast nor its presence; acme did not see globex's.
    g1.assert_no_frame(Duration::from_millis(500)).await?;
    a2.assert_no_frame(Duration::from_millis(300)).await?;
    let mut g2 = env.client("globex", &globex_token).await?;
    g2.join("realtime:room", &config).await?;
    let state = g2.expect_event("realtime:room", "presence_state").await?;
    ensure!(state.payload == json!({}), "globex presence {}", state.raw);
    Ok(())
}

#[tokio::test]
async fn postgres_changes_and_database_broadcasts_stay_in_their_tenant() -> Result<()> {
    let env = Tenants::start(&[]).await?;
    let acme_token = token(ACME_SECRET, "authenticated");
    let globex_token = token(GLOBEX_SECRET, "authenticated");
    let mut acme = env.client("acme", &acme_token).await?;
    let mut globex = env.client("globex", &globex_token).await?;
    let acme_db = env.prepare("acme").await?;
    let globex_db = env.prepare("globex").await?;
    let bindings = json!([{"event": "*", "schema": "public", "table": "items"}]);
    acme.join_changes("realtime:items", bindings.clone(), None)
        .await?;
    globex
        .join_changes("realtime:items", bindings, None)
        .await?;
    acme.join_config("realtime:feed", json!({"broadcast": {"self": false}}))
        .await?;
    globex
        .join_config("realtime:feed", json!({"broadcast": {"self": false}}))
        .await?;

    acme_db
        .batch_execute("insert into items values (1, 'acme', 'a')")
        .await?;
    globex_db
        .batch_execute("insert into items values (2, 'globex', 'g')")
        .await?;
    let got = acme.next_change("realtime:items").await?;
    ensure!(
        got.payload["data"]["record"]["owner"] == "acme",
        "acme got {}",
        got.raw
    );
    let got = globex.next_change("realtime:items").await?;
    ensure!(
        got.payload["data"]["record"]["owner"] == "globex",
        "globex got {}",
        got.raw
    );
    // A database broadcast from acme's database reaches acme's `feed` only.
    acme_db
        .batch_execute("select realtime.send('{\"n\": 1}'::jsonb, 'tick', 'feed', false)")
        .await?;
    // A JSON database broadcast reaches vsn 2.0.0 subscribers as a binary (kind 4) frame.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match acme.recv_timeout(left).await? {
            Some(Incoming::Binary(frame)) if frame.windows(4).any(|w| w == b"tick") => break,
            Some(_) => continue,
            None => anyhow::bail!("acme's database broadcast did not arrive"),
        }
    }
    // Barrier: one more globex row; nothing of acme's came before it.
    globex_db
        .batch_execute("insert into items values (3, 'globex', 'g')")
        .await?;
    let got = globex
        .expect_text_within(Duration::from_secs(30), |m| {
            m.event != "presence_state" && m.topic != "phoenix"
        })
        .await?;
    ensure!(
        got.event == "postgres_changes" && got.payload["data"]["record"]["id"] == 3,
        "globex got {}",
        got.raw
    );
    acme.assert_no_frame(Duration::from_millis(500)).await?;
    Ok(())
}

#[tokio::test]
async fn a_tenant_whose_database_is_down_does_not_affect_another() -> Result<()> {
    let env = Tenants::start(&[]).await?;
    // `broken` starts, and its replication keeps failing in the background.
    let mut broken = env.client("broken", &token(ACME_SECRET, "anon")).await?;
    let (_, reply) = broken.join("realtime:room", &json!({"config": {}})).await?;
    ensure!(reply.status() == Some("ok"), "{}", reply.raw);
    let health = env.server.http("GET", "/t/broken/api/health", &[]).await?;
    ensure!(health.status == 503, "broken health {health:?}");
    // Globex joins and broadcasts as usual, at once.
    let globex_token = token(GLOBEX_SECRET, "anon");
    let mut g1 = env.client("globex", &globex_token).await?;
    let mut g2 = env.client("globex", &globex_token).await?;
    let config = json!({"config": {"broadcast": {"self": false}}});
    let started = tokio::time::Instant::now();
    let (g1_ref, reply) = g1.join("realtime:room", &config).await?;
    ensure!(reply.status() == Some("ok"), "{}", reply.raw);
    g2.join("realtime:room", &config).await?;
    for n in 0..20 {
        g1.broadcast(&g1_ref, "realtime:room", "tick", json!({"n": n}))
            .await?;
        let got = g2.expect_event("realtime:room", "broadcast").await?;
        ensure!(got.payload["payload"]["n"] == n, "{}", got.raw);
    }
    ensure!(
        started.elapsed() < Duration::from_secs(10),
        "globex was slowed down: {:?}",
        started.elapsed()
    );
    // Globex's own replication comes up while broken's keeps failing.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let health = env.server.http("GET", "/t/globex/api/health", &[]).await?;
        if health.status == 200 {
            break;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "globex health {health:?}\n{}",
            env.server.stderr()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let health = env.server.http("GET", "/t/broken/api/health", &[]).await?;
    ensure!(health.status == 503, "broken health {health:?}");
    Ok(())
}

#[tokio::test]
async fn health_and_metrics_name_the_tenants_and_idle_tenants_stop() -> Result<()> {
    let env = Tenants::start(&[("TENANT_IDLE_STOP_SECS", "1")]).await?;
    let mut acme = env.client("acme", &token(ACME_SECRET, "anon")).await?;
    acme.join("realtime:room", &json!({"config": {}})).await?;
    let health = env.server.http("GET", "/t/acme/api/health", &[]).await?;
    let body: Value = serde_json::from_str(&health.body)?;
    ensure!(body["tenant"] == "acme", "{body}");
    let process: Value =
        serde_json::from_str(&env.server.http("GET", "/api/health", &[]).await?.body)?;
    ensure!(
        process["tenants"] == json!({"configured": 6, "running": ["acme"]}),
        "{process}"
    );
    let metrics = env.server.http("GET", "/metrics", &[]).await?;
    ensure!(
        metrics
            .body
            .contains("realtide_connections{tenant=\"acme\"} 1"),
        "metrics:\n{}",
        metrics.body
    );
    // With its socket gone, acme stops after the idle period, and starts again on demand.
    drop(acme);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let process: Value =
            serde_json::from_str(&env.server.http("GET", "/api/health", &[]).await?.body)?;
        if process["tenants"]["running"] == json!([]) {
            break;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "acme still running: {process}\n{}",
            env.server.stderr()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut again = env.client("acme", &token(ACME_SECRET, "anon")).await?;
    let (_, reply) = again.join("realtime:room", &json!({"config": {}})).await?;
    ensure!(reply.status() == Some("ok"), "{}", reply.raw);
    Ok(())
}

/// Joins `topic` for changes of `items` as `token`'s user.
async fn join_items(client: &mut Client, topic: &str) -> Result<()> {
    client
        .join_changes(
            topic,
            json!([{"event": "INSERT", "schema": "public", "table": "items"}]),
            None,
        )
        .await?;
    Ok(())
}

/// Ids of the next changes on `topic` up to and including `last`.
async fn ids_until(client: &mut Client, topic: &str, last: i64) -> Result<Vec<i64>> {
    let mut ids = Vec::new();
    loop {
        let msg = client.next_change(topic).await?;
        let id = msg.payload["data"]["record"]["id"].as_i64().unwrap_or(-1);
        ids.push(id);
        if id == last {
            return Ok(ids);
        }
    }
}

#[tokio::test]
async fn a_restart_resumes_every_tenants_slot_without_skipping_changes() -> Result<()> {
    let mut env = Tenants::start(&[]).await?;
    let acme_token = token(ACME_SECRET, "authenticated");
    let globex_token = token(GLOBEX_SECRET, "authenticated");
    let topic = "realtime:durable";
    let mut acme = env.client("acme", &acme_token).await?;
    let mut globex = env.client("globex", &globex_token).await?;
    let acme_db = env.prepare("acme").await?;
    let globex_db = env.prepare("globex").await?;
    join_items(&mut acme, topic).await?;
    join_items(&mut globex, topic).await?;
    acme_db
        .batch_execute("insert into items values (1, 'acme', 'a')")
        .await?;
    globex_db
        .batch_execute("insert into items values (10, 'globex', 'g')")
        .await?;
    ensure!(ids_until(&mut acme, topic, 1).await? == [1]);
    ensure!(ids_until(&mut globex, topic, 10).await? == [10]);
    // Delivered and confirmed, and the subscribers' positions saved (every 100 ms).
    for (db, slot) in [(&acme_db, "realtide_acme"), (&globex_db, "realtide_globex")] {
        let lsn: String = db
            .query_one("select pg_current_wal_lsn()::text", &[])
            .await?
            .get(0);
        env.pg.wait_confirmed(slot, &lsn).await?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // kill -9, and rows committed in both tenants while the process is down.
    env.kill().await?;
    drop(acme);
    drop(globex);
    acme_db
        .batch_execute("insert into items values (2, 'acme', 'a')")
        .await?;
    globex_db
        .batch_execute("insert into items values (20, 'globex', 'g')")
        .await?;
    env.start_again().await?;

    // The same subscribers rejoin: each gets what its tenant committed while down, then the
    // next row, once and in order, and nothing of the other tenant.
    let mut acme = env.client("acme", &acme_token).await?;
    let mut globex = env.client("globex", &globex_token).await?;
    join_items(&mut acme, topic).await?;
    join_items(&mut globex, topic).await?;
    acme_db
        .batch_execute("insert into items values (3, 'acme', 'a')")
        .await?;
    globex_db
        .batch_execute("insert into items values (30, 'globex', 'g')")
        .await?;
    let got = ids_until(&mut acme, topic, 3).await?;
    ensure!(
        got == [2, 3],
        "acme after the restart: {got:?}\n{}",
        env.server.stderr()
    );
    let got = ids_until(&mut globex, topic, 30).await?;
    ensure!(
        got == [20, 30],
        "globex after the restart: {got:?}\n{}",
        env.server.stderr()
    );
    acme.assert_no_frame(Duration::from_millis(500)).await?;
    globex.assert_no_frame(Duration::from_millis(300)).await?;
    Ok(())
}

#[tokio::test]
async fn an_idle_tenant_past_the_resume_window_gives_its_slot_back() -> Result<()> {
    let env = Tenants::start(&[
        ("TENANT_IDLE_STOP_SECS", "2"),
        ("CHANGES_RESUME_WINDOW", "1"),
    ])
    .await?;
    let acme_token = token(ACME_SECRET, "authenticated");
    let mut acme = env.client("acme", &acme_token).await?;
    let acme_db = env.prepare("acme").await?;
    join_items(&mut acme, "realtime:items").await?;
    drop(acme);
    // Stopped when idle, its slot dropped (no WAL held for nobody) and its journal removed.
    let admin = env.pg.connect().await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let slots = admin
            .query(
                "select 1 from pg_replication_slots where slot_name = 'realtide_acme'",
                &[],
            )
            .await?;
        if slots.is_empty() {
            break;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "acme's slot still there\n{}",
            env.server.stderr()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The next request starts it again with a new slot, and changes flow.
    let mut acme = env.client("acme", &acme_token).await?;
    env.pg.wait_slot_active("realtide_acme").await?;
    join_items(&mut acme, "realtime:items").await?;
    acme_db
        .batch_execute("insert into items values (7, 'acme', 'a')")
        .await?;
    ensure!(ids_until(&mut acme, "realtime:items", 7).await? == [7]);
    Ok(())
}

#[tokio::test]
async fn a_tenants_presence_flag_turns_presence_on_for_every_join() -> Result<()> {
    let env = Tenants::start(&[]).await?;
    let anon = token(ACME_SECRET, "anon");
    // `lobby` has presence_enabled: a join that does not ask for presence gets its state.
    let mut lobby = env.client("lobby", &anon).await?;
    lobby.join("realtime:room", &json!({"config": {}})).await?;
    let state = lobby
        .expect_event("realtime:room", "presence_state")
        .await?;
    ensure!(state.payload == json!({}), "{}", state.raw);
    // `acme` has not: the same join gets no presence.
    let mut acme = env.client("acme", &anon).await?;
    acme.join("realtime:room", &json!({"config": {}})).await?;
    acme.assert_no_frame(Duration::from_millis(500)).await?;
    Ok(())
}

#[tokio::test]
async fn one_tenants_event_limit_does_not_touch_another() -> Result<()> {
    let env = Tenants::start(&[("RATE_COUNTER_TICK_MS", "200")]).await?;
    let topic = "realtime:busy";
    let config = json!({"config": {"broadcast": {"self": false}}});
    // `noisy` (5 events/s) and `globex` (no limit) carry the same traffic on the same topic.
    let noisy_token = token(ACME_SECRET, "anon");
    let globex_token = token(GLOBEX_SECRET, "anon");
    let mut noisy_sender = env.client("noisy", &noisy_token).await?;
    let mut noisy_receiver = env.client("noisy", &noisy_token).await?;
    let mut sender = env.client("globex", &globex_token).await?;
    let mut receiver = env.client("globex", &globex_token).await?;
    let (noisy_ref, _) = noisy_sender.join(topic, &config).await?;
    noisy_receiver.join(topic, &config).await?;
    let (sender_ref, _) = sender.join(topic, &config).await?;
    receiver.join(topic, &config).await?;
    for n in 0..10 {
        noisy_sender
            .broadcast(&noisy_ref, topic, "e", json!({ "n": n }))
            .await?;
        sender
            .broadcast(&sender_ref, topic, "e", json!({ "n": n }))
            .await?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    noisy_sender
        .broadcast(&noisy_ref, topic, "e", json!({"n": "late"}))
        .await?;
    // Noisy's receiving channel is shut down for its tenant's limit ...
    let system = noisy_receiver
        .expect_text(|m| m.topic == topic && m.event == "system")
        .await?;
    ensure!(
        system.payload["message"] == "Too many messages per second",
        "{}",
        system.raw
    );
    // ... while globex, over the same rate, keeps delivering everything, in order.
    for n in 10..60 {
        sender
            .broadcast(&sender_ref, topic, "e", json!({ "n": n }))
            .await?;
    }
    let mut got = Vec::new();
    while got.len() < 60 {
        let msg = receiver.expect_event(topic, "broadcast").await?;
        got.push(msg.payload["payload"]["n"].as_i64().unwrap_or(-1));
    }
    ensure!(got == (0..60).collect::<Vec<i64>>(), "globex got {got:?}");
    Ok(())
}
