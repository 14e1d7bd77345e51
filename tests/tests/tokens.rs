//! Channel tokens: `access_token` refreshes and the periodic expiry check (reference:
//! supabase/realtime `lib/realtime_web/channels/realtime_channel.ex` and
//! `test/integration/rt_channel/token_handling_test.exs`).

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use realtide_tests::{Client, Msg, QUIET, Server, Vsn, sign, token, unix_now};
use serde_json::{Value, json};

async fn refresh(client: &mut Client, join_ref: &str, topic: &str, value: Value) -> Result<()> {
    client
        .push(
            Some(join_ref),
            topic,
            "access_token",
            &json!({"access_token": value}),
        )
        .await?;
    Ok(())
}

/// Asserts the shutdown sequence: `system` error (channel push), then `phx_close`; returns the
/// system message's `message`.
async fn expect_shutdown(
    client: &mut Client,
    join_ref: &str,
    topic: &str,
    sub_topic: &str,
) -> Result<String> {
    let system: Msg = client.expect_event(topic, "system").await?;
    ensure!(
        system.join_ref.as_deref() == Some(join_ref) && system.reference.is_none(),
        "{}",
        system.raw
    );
    let message = system
        .payload
        .get("message")
        .and_then(Value::as_str)
        .context(system.raw.clone())?
        .to_owned();
    ensure!(
        system.payload
            == json!({"extension": "system", "status": "error", "message": message, "channel": sub_topic}),
        "{}",
        system.raw
    );
    let close = client.next_text().await?;
    ensure!(
        close.raw
            == format!(
                r#"["{join_ref}","{join_ref}",{},"phx_close",{{}}]"#,
                json!(topic)
            ),
        "{}",
        close.raw
    );
    Ok(message)
}

async fn assert_channel_works(client: &mut Client, join_ref: &str, topic: &str) -> Result<()> {
    let reference = client
        .broadcast(join_ref, topic, "still", json!({}))
        .await?;
    let reply = client.expect_reply(topic, &reference).await?;
    ensure!(reply.status() == Some("ok"), "{}", reply.raw);
    Ok(())
}

fn seconds_ago(message: &str) -> Result<i64> {
    Ok(message
        .strip_prefix("Token has expired ")
        .and_then(|rest| rest.strip_suffix(" seconds ago"))
        .with_context(|| format!("message {message:?}"))?
        .parse()?)
}

#[tokio::test]
async fn valid_new_token_is_accepted_silently() -> Result<()> {
    let server = Server::start(&[]).await?;
    let mut client = server.connect(Vsn::V2).await?;
    let topic = "realtime:refresh";
    let join_ref = client
        .join_config(topic, json!({"broadcast": {"ack": true}}))
        .await?;
    refresh(
        &mut client,
        &join_ref,
        topic,
        json!(token("authenticated", 7200)),
    )
    .await?;
    client.assert_no_frame(QUIET).await?;
    assert_channel_works(&mut client, &join_ref, topic).await
}

#[tokio::test]
async fn same_null_sb_and_non_string_tokens_are_ignored() -> Result<()> {
    let server = Server::start(&[]).await?;
    let mut client = server.connect(Vsn::V2).await?;
    let topic = "realtime:ignored";
    let current = token("anon", 3600);
    let (join_ref, _) = client
        .join(
            topic,
            &json!({"config": {"broadcast": {"ack": true}}, "access_token": current}),
        )
        .await?;
    for value in [
        json!(current),
        Value::Null,
        json!("sb_publishable_x"),
        json!("sb_x"),
        json!(42),
        json!({"a": 1}),
    ] {
        refresh(&mut client, &join_ref, topic, value.clone()).await?;
        client
            .assert_no_frame(Duration::from_millis(200))
            .await
            .with_context(|| format!("after access_token {value}"))?;
    }
    // A payload without the key at all.
    client
        .push(Some(&join_ref), topic, "access_token", &json!({}))
        .await?;
    client.assert_no_frame(QUIET).await?;
    assert_channel_works(&mut client, &join_ref, topic).await
}

#[tokio::test]
async fn empty_token_closes_the_channel() -> Result<()> {
    let server = Server::start(&[]).await?;
    let mut client = server.connect(Vsn::V2).await?;
    let topic = "realtime:room:empty";
    let join_ref = client.join_config(topic, json!({})).await?;
    let other_ref = client
        .join_config("realtime:other", json!({"broadcast": {"ack": true}}))
        .await?;
    refresh(&mut client, &join_ref, topic, json!("")).await?;
    let message = expect_shutdown(&mut client, &join_ref, topic, "room:empty").await?;
    ensure!(
        message == "The token provided is not a valid JWT",
        "{message}"
    );
    client.assert_no_frame(QUIET).await?;
    // Only that channel: the socket and the other channel live on.
    client.heartbeat().await?;
    assert_channel_works(&mut client, &other_ref, "realtime:other").await?;
    // The closed channel is gone.
    let reference = client.broadcast(&join_ref, topic, "e", json!({})).await?;
    let reply = client.expect_reply(topic, &reference).await?;
    ensure!(
        reply.payload == json!({"status":"error","response":{"reason":"unmatched topic"}}),
        "{}",
        reply.raw
    );
    Ok(())
}

#[tokio::test]
async fn expired_token_closes_the_channel() -> Result<()> {
    let server = Server::start(&[]).await?;
    let mut client = server.connect(Vsn::V2).await?;
    let topic = "realtime:expired";
    let join_ref = client.join_config(topic, json!({})).await?;
    refresh(&mut client, &join_ref, topic, json!(token("anon", -30))).await?;
    let message = expect_shutdown(&mut client, &join_ref, topic, "expired").await?;
    let n = seconds_ago(&message)?;
    ensure!((30..=90).contains(&n), "{message}");
    client.heartbeat().await?;
    Ok(())
}

#[tokio::test]
async fn token_without_claims_closes_the_channel() -> Result<()> {
    let server = Server::start(&[]).await?;
    let mut client = server.connect(Vsn::V2).await?;
    let topic = "realtime:claims";
    let join_ref = client.join_config(topic, json!({})).await?;
    refresh(
        &mut client,
        &join_ref,
        topic,
        json!(sign(&json!({"exp": unix_now() + 3600}))),
    )
    .await?;
    let message = expect_shutdown(&mut client, &join_ref, topic, "claims").await?;
    ensure!(
        message == "Fields `role` and `exp` are required in JWT",
        "{message}"
    );
    Ok(())
}

#[tokio::test]
async fn periodic_check_closes_an_expiring_channel() -> Result<()> {
    let server = Server::start(&[]).await?;
    let mut client = server.connect(Vsn::V2).await?;
    let topic = "realtime:periodic";
    let (join_ref, _) = client
        .join(
            topic,
            &json!({"config": {}, "access_token": token("anon", 2)}),
        )
        .await?;
    let long_ref = client
        .join_config("realtime:long", json!({"broadcast": {"ack": true}}))
        .await?;
    // Wait (up to 12 s) for the shutdown.
    let system = tokio::time::timeout(Duration::from_secs(12), async {
        loop {
            if let Some(item) = client.recv_timeout(Duration::from_secs(1)).await? {
                return Ok::<_, anyhow::Error>(item);
            }
        }
    })
    .await
    .context("channel not closed within 12 s")??;
    let system = system.text().context(format!("{system:?}"))?.clone();
    ensure!(
        system.event == "system" && system.topic == topic,
        "{}",
        system.raw
    );
    let message = system
        .payload
        .get("message")
        .and_then(Value::as_str)
        .context(system.raw.clone())?;
    ensure!(seconds_ago(message)? >= 0, "{message}");
    ensure!(
        system.payload
            == json!({"extension":"system","status":"error","message":message,"channel":"periodic"}),
        "{}",
        system.raw
    );
    let close = client.next_text().await?;
    ensure!(
        close.raw == format!(r#"["{join_ref}","{join_ref}","{topic}","phx_close",{{}}]"#),
        "{}",
        close.raw
    );
    // The socket stays open and the other channel keeps working.
    client.heartbeat().await?;
    assert_channel_works(&mut client, &long_ref, "realtime:long").await
}

#[tokio::test]
async fn sb_access_token_follows_the_socket_token_expiry() -> Result<()> {
    let server = Server::start(&[]).await?;
    let mut client = server.connect_token(Vsn::V2, &token("anon", 2)).await?;
    let topic = "realtime:sbexp";
    let (join_ref, _) = client
        .join(
            topic,
            &json!({"config": {}, "access_token": "sb_publishable_abc"}),
        )
        .await?;
    let system = tokio::time::timeout(
        Duration::from_secs(12),
        client.expect_event(topic, "system"),
    )
    .await
    .context("not closed")?;
    let system = match system {
        Ok(msg) => msg,
        // expect_event waits 5 s at most; try once more.
        Err(_) => client.expect_event(topic, "system").await?,
    };
    let message = system
        .payload
        .get("message")
        .and_then(Value::as_str)
        .context(system.raw.clone())?;
    ensure!(seconds_ago(message)? >= 0, "{}", system.raw);
    let close = client.next_text().await?;
    ensure!(
        close.raw == format!(r#"["{join_ref}","{join_ref}","{topic}","phx_close",{{}}]"#),
        "{}",
        close.raw
    );
    client.heartbeat().await?;
    Ok(())
}

#[tokio::test]
async fn refresh_extends_an_expiring_channel() -> Result<()> {
    let server = Server::start(&[]).await?;
    let mut client = server.connect(Vsn::V2).await?;
    let topic = "realtime:extend";
    let (join_ref, _) = client
        .join(
            topic,
            &json!({"config": {"broadcast": {"ack": true}}, "access_token": token("anon", 2)}),
        )
        .await?;
    refresh(&mut client, &join_ref, topic, json!(token("anon", 3600))).await?;
    // Well past the first token's expiry: nothing happens.
    client.assert_no_frame(Duration::from_secs(4)).await?;
    assert_channel_works(&mut client, &join_ref, topic).await
}
