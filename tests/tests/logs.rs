//! Logs: with `LOG_FORMAT=json` every line is a JSON object with a level and
//! fields, and at the most verbose level no line carries a token, a broadcast payload, a
//! presence meta or a row value, even when requests fail.

use anyhow::{Result, ensure};
use realtide_tests::{PgEnv, TEST_PUBLICATION, sign, unix_now};
use serde_json::json;

const ROW_SECRET: &str = "row-value-7c1e9a";
const PAYLOAD_SECRET: &str = "payload-value-53bd02";
const META_SECRET: &str = "presence-meta-91aa4f";

#[tokio::test]
async fn json_logs_never_carry_tokens_payloads_or_rows() -> Result<()> {
    let env = PgEnv::start(
        &[("LOG_FORMAT", "json"), ("RUST_LOG", "debug")],
        &format!(
            "create table public.secrets (id int primary key, value text);
             grant select on public.secrets to authenticated;
             alter publication {TEST_PUBLICATION} add table public.secrets;
             create policy open_read on realtime.messages for select to authenticated using (true);"
        ),
    )
    .await?;
    let token = sign(&json!({
        "role": "authenticated",
        "sub": "aaaaaaaa-0000-0000-0000-000000000001",
        "exp": unix_now() + 600,
    }));
    let mut client = env.client(&token).await?;
    let topic = "realtime:logged";
    let (join_ref, _) = client
        .join_changes(
            topic,
            json!([{"event": "*", "schema": "public", "table": "secrets"}]),
            Some(&token),
        )
        .await?;
    client
        .broadcast(&join_ref, topic, "e", json!({ "secret": PAYLOAD_SECRET }))
        .await?;
    client
        .track(&join_ref, topic, json!({ "secret": META_SECRET }))
        .await?;
    env.exec(&format!(
        "insert into public.secrets values (1, '{ROW_SECRET}')"
    ))
    .await?;
    client.next_change(topic).await?;
    // Failures log their reasons, not their inputs.
    let bad = format!("{token}x");
    client
        .send_join(
            "realtime:bad",
            &json!({"config": {"private": true}, "access_token": bad}),
        )
        .await?;
    client
        .send_join(
            "realtime:private",
            &json!({"config": {"private": true}, "access_token": token}),
        )
        .await?;
    let response = env
        .server
        .http_body(
            "POST",
            "/api/broadcast",
            &[("authorization", &format!("Bearer {bad}"))],
            Some(format!("{{\"messages\":[{{\"topic\":\"t\",\"event\":\"e\",\"payload\":{{\"s\":\"{PAYLOAD_SECRET}\"}}}}]}}").as_bytes()),
        )
        .await?;
    ensure!(response.status == 401, "{response:?}");
    client.heartbeat().await?;
    drop(client);

    let logs = env.server.stderr();
    ensure!(logs.lines().count() > 5, "too few log lines:\n{logs}");
    for line in logs.lines().filter(|l| !l.trim().is_empty()) {
        let parsed: serde_json::Value =
            serde_json::from_str(line).map_err(|e| anyhow::anyhow!("not JSON ({e}): {line}"))?;
        ensure!(
            parsed
                .get("level")
                .is_some_and(serde_json::Value::is_string),
            "no level: {line}"
        );
        for secret in [token.as_str(), PAYLOAD_SECRET, META_SECRET, ROW_SECRET] {
            ensure!(
                !line.contains(secret),
                "a log line carries {secret:?}: {line}"
            );
        }
        // Not even the signature part of the token.
        if let Some(signature) = token.rsplit('.').next() {
            ensure!(!line.contains(signature), "token signature in: {line}");
        }
    }
    Ok(())
}
