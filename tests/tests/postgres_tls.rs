//! TLS to PostgreSQL (`DB_SSL`, `DB_SSL_CA_CERT`) against a cluster that
//! accepts TCP connections only over TLS: the replication stream, the query pool and the
//! authorization pool all connect encrypted, with and without certificate verification, and a
//! server without `DB_SSL` is refused by PostgreSQL while its sockets keep working.

use std::time::Duration;

use anyhow::{Result, ensure};
use realtide_tests::{PgCluster, Server, TEST_PUBLICATION, Vsn, user_token};
use serde_json::json;

/// realtide's connections to the cluster, as `(ssl, count)`.
async fn realtide_connections(pg: &PgCluster) -> Result<Vec<(bool, i64)>> {
    let db = pg.connect().await?;
    let rows = db
        .query(
            "select s.ssl, count(*) from pg_stat_activity a join pg_stat_ssl s using (pid)
              where a.application_name = 'realtide' group by s.ssl",
            &[],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

async fn streams_and_authorizes(pg: &PgCluster, env: &[(&str, &str)], slot: &str) -> Result<()> {
    let server = Server::start_pg(pg, slot, TEST_PUBLICATION, env).await?;
    let db = pg.connect().await?;
    // Idempotent: the second round finds the objects in place.
    db.batch_execute(&format!(
        "create table if not exists public.notes (id int primary key, body text);
         grant select on public.notes to authenticated;
         do $$ begin
           if not exists (select 1 from pg_publication_tables
                           where pubname = '{TEST_PUBLICATION}' and tablename = 'notes') then
             alter publication {TEST_PUBLICATION} add table public.notes;
           end if;
         end $$;
         drop policy if exists if_read on realtime.messages;
         create policy if_read on realtime.messages for select to authenticated using (true);"
    ))
    .await?;
    let token = user_token("authenticated", "aaaaaaaa-0000-0000-0000-000000000001");
    let mut client = server.connect_token(Vsn::V2, &token).await?;
    // A private join: the authorization pool's TLS connection.
    let join_ref = client
        .send_join(
            "realtime:secure",
            &json!({"config": {"private": true}, "access_token": token}),
        )
        .await?;
    let reply = client.expect_reply("realtime:secure", &join_ref).await?;
    ensure!(reply.status() == Some("ok"), "{}", reply.raw);
    // A change: the replication stream's and the query pool's TLS connections.
    let topic = format!("realtime:notes-{slot}");
    client
        .join_changes(
            &topic,
            json!([{"event": "INSERT", "schema": "public", "table": "notes"}]),
            Some(&token),
        )
        .await?;
    let id = if slot.ends_with("ca") { 2 } else { 1 };
    db.execute("insert into public.notes values ($1, 'over tls')", &[&id])
        .await?;
    let change = client.next_change(&topic).await?;
    ensure!(
        change.payload.pointer("/data/record") == Some(&json!({"id": id, "body": "over tls"})),
        "{}",
        change.raw
    );
    let connections = realtide_connections(pg).await?;
    ensure!(
        !connections.is_empty() && connections.iter().all(|(ssl, _)| *ssl),
        "realtide connections (ssl, count): {connections:?}"
    );
    drop(client);
    drop(server);
    Ok(())
}

#[tokio::test]
async fn every_connection_is_encrypted_with_db_ssl() -> Result<()> {
    let pg = PgCluster::start_ssl().await?;
    streams_and_authorizes(&pg, &[("DB_SSL", "true")], "tls_slot").await?;
    // Verifying the certificate and host name against its CA.
    let ca = pg.dir.join("ca.crt").display().to_string();
    streams_and_authorizes(&pg, &[("DB_SSL_CA_CERT", ca.as_str())], "tls_slot_ca").await?;
    Ok(())
}

#[tokio::test]
async fn without_db_ssl_postgres_refuses_and_sockets_keep_working() -> Result<()> {
    let pg = PgCluster::start_ssl().await?;
    let server = Server::start(&[
        ("DB_URL", pg.url.as_str()),
        ("SLOT_NAME", "plain_slot"),
        ("PUBLICATION", TEST_PUBLICATION),
    ])
    .await?;
    let mut client = server.connect(Vsn::V2).await?;
    client.join_config("realtime:still-here", json!({})).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let health = server.http("GET", "/api/health", &[]).await?;
    let health: serde_json::Value = serde_json::from_str(&health.body)?;
    ensure!(
        health.get("replication_connected") == Some(&json!(false))
            && health.get("database_connected") == Some(&json!(false)),
        "{health}"
    );
    client.heartbeat().await?;
    ensure!(
        server.stderr().contains("no encryption") || server.stderr().contains("pg_hba"),
        "{}",
        server.stderr()
    );
    Ok(())
}
