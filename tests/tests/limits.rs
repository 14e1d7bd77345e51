//! Limits with the reference's messages (supabase/realtime: the join checks of
//! `lib/realtime_web/channels/realtime_channel.ex`, the tenant limits of
//! `lib/realtime/api/tenant.ex` and `lib/realtime/rate_counter/rate_counter.ex`): events, joins
//! and presence events per second (windowed rate counters; a short `RATE_COUNTER_TICK_MS` keeps
//! these tests quick), concurrent users, the per-channel presence call window, `PRIVATE_ONLY`,
//! and `MAX_CONNECTIONS`.

use std::time::Duration;

use anyhow::{Result, ensure};
use realtide_tests::{Client, Connect, Opcode, Server, Vsn, WAIT, anon};
use serde_json::{Value, json};

const TICK: &str = "200";

fn system_error(message: &str, channel: &str) -> Value {
    json!({"extension": "system", "status": "error", "message": message, "channel": channel})
}

/// Expects the channel's shutdown: `system` error with `message`, then `phx_close`.
async fn expect_shutdown(client: &mut Client, topic: &str, message: &str) -> Result<()> {
    let sub_topic = topic.trim_start_matches("realtime:");
    let system = client.expect_event(topic, "system").await?;
    ensure!(
        system.payload == system_error(message, sub_topic),
        "system: {}",
        system.raw
    );
    client.expect_event(topic, "phx_close").await?;
    Ok(())
}

async fn refused(server: &Server) -> Result<realtide_tests::HttpResponse> {
    let query = format!("apikey={}&vsn=2.0.0", anon());
    server
        .try_connect(Vsn::V2, "/socket/websocket", &query, &[])
        .await?
        .refused()
}

#[tokio::test]
async fn events_per_second_shut_receiving_channels_and_refuse_http() -> Result<()> {
    let server = Server::start(&[
        ("TENANT_MAX_EVENTS_PER_SECOND", "5"),
        ("RATE_COUNTER_TICK_MS", TICK),
    ])
    .await?;
    let mut sender = server.connect(Vsn::V2).await?;
    let mut receiver = server.connect(Vsn::V2).await?;
    let topic = "realtime:busy";
    let sender_ref = sender
        .join_config(topic, json!({"broadcast": {"self": false}}))
        .await?;
    receiver
        .join_config(topic, json!({"broadcast": {"self": false}}))
        .await?;
    // 10 sends + 10 deliveries in one 200 ms bucket: 100 events/s on average.
    for n in 0..10 {
        sender
            .broadcast(&sender_ref, topic, "e", json!({ "n": n }))
            .await?;
    }
    for _ in 0..10 {
        receiver.expect_event(topic, "broadcast").await?;
    }
    // Once the counter has ticked, the next broadcast shuts the receiving channel down.
    tokio::time::sleep(Duration::from_millis(500)).await;
    sender
        .broadcast(&sender_ref, topic, "e", json!({"n": "late"}))
        .await?;
    expect_shutdown(&mut receiver, topic, "Too many messages per second").await?;
    // Only the channel ends; the socket keeps working.
    receiver.heartbeat().await?;

    let response = server
        .http_body(
            "POST",
            "/api/broadcast",
            &[("apikey", anon().as_str())],
            Some(br#"{"messages":[{"topic":"busy","event":"e","payload":{}}]}"#),
        )
        .await?;
    ensure!(
        response.status == 429
            && response.body == r#"{"message":"You have exceeded your rate limit"}"#,
        "{response:?}"
    );
    Ok(())
}

#[tokio::test]
async fn joins_per_second_refuse_the_join_and_close_the_socket() -> Result<()> {
    let server = Server::start(&[
        ("TENANT_MAX_JOINS_PER_SECOND", "2"),
        ("RATE_COUNTER_TICK_MS", TICK),
    ])
    .await?;
    let mut client = server.connect(Vsn::V2).await?;
    for n in 0..5 {
        client
            .join_config(&format!("realtime:j{n}"), json!({}))
            .await?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let join_ref = client
        .send_join("realtime:one-more", &json!({"config": {}}))
        .await?;
    let reply = client.expect_reply("realtime:one-more", &join_ref).await?;
    ensure!(
        reply.response()["reason"] == "ClientJoinRateLimitReached: Too many joins per second",
        "{}",
        reply.raw
    );
    let (code, _) = client.expect_end(WAIT).await?;
    ensure!(code == Some(1001), "close code {code:?}");
    // While tripped, connects are refused too.
    let response = refused(&server).await?;
    ensure!(
        response.status == 429 && response.body == r#"{"error":"Too many joins per second"}"#,
        "{response:?}"
    );
    Ok(())
}

#[tokio::test]
async fn concurrent_users_count_sockets_with_channels() -> Result<()> {
    let server = Server::start(&[("TENANT_MAX_CONCURRENT_USERS", "1")]).await?;
    let mut late = server.connect(Vsn::V2).await?;
    let mut first = server.connect(Vsn::V2).await?;
    let first_ref = first.join_config("realtime:u", json!({})).await?;
    // A second channel of the same socket is fine: it is one user.
    first.join_config("realtime:u2", json!({})).await?;
    let join_ref = late.send_join("realtime:u", &json!({"config": {}})).await?;
    let reply = late.expect_reply("realtime:u", &join_ref).await?;
    ensure!(
        reply.response()["reason"] == "ConnectionRateLimitReached: Too many connected users",
        "{}",
        reply.raw
    );
    let response = refused(&server).await?;
    ensure!(
        response.status == 429 && response.body == r#"{"error":"Too many connected users"}"#,
        "{response:?}"
    );
    // Once the first socket has no channel left, the other may join.
    first
        .push(Some(&first_ref), "realtime:u", "phx_leave", &json!({}))
        .await?;
    let second = first
        .send_join("realtime:u2", &json!({"config": {}}))
        .await?;
    first.expect_reply("realtime:u2", &second).await?;
    let leave = first
        .push(None, "realtime:u2", "phx_leave", &json!({}))
        .await?;
    first.expect_reply("realtime:u2", &leave).await?;
    late.join_config("realtime:u", json!({})).await?;
    Ok(())
}

#[tokio::test]
async fn private_only_refuses_public_channels() -> Result<()> {
    let server = Server::start(&[("PRIVATE_ONLY", "true")]).await?;
    let mut client = server.connect(Vsn::V1).await?;
    let join_ref = client
        .send_join("realtime:open", &json!({"config": {"private": false}}))
        .await?;
    let reply = client.expect_reply("realtime:open", &join_ref).await?;
    ensure!(
        reply.response()["reason"] == "PrivateOnly: This project only allows private channels",
        "{}",
        reply.raw
    );
    Ok(())
}

#[tokio::test]
async fn presence_call_window_and_presence_rate() -> Result<()> {
    let server = Server::start(&[("CLIENT_PRESENCE_MAX_CALLS", "2")]).await?;
    let mut client = server.connect(Vsn::V2).await?;
    let topic = "realtime:pres";
    let join_ref = client
        .join_config(topic, json!({"presence": {"key": "k", "enabled": true}}))
        .await?;
    for n in 0..2 {
        let reference = client.track(&join_ref, topic, json!({ "n": n })).await?;
        let reply = client.expect_reply(topic, &reference).await?;
        ensure!(reply.status() == Some("ok"), "{}", reply.raw);
    }
    client.track(&join_ref, topic, json!({"n": 3})).await?;
    expect_shutdown(&mut client, topic, "Client presence rate limit exceeded").await?;

    let server = Server::start(&[
        ("TENANT_MAX_PRESENCE_EVENTS_PER_SECOND", "1"),
        ("RATE_COUNTER_TICK_MS", TICK),
    ])
    .await?;
    let mut client = server.connect(Vsn::V2).await?;
    let join_ref = client
        .join_config(topic, json!({"presence": {"key": "k", "enabled": true}}))
        .await?;
    let reference = client.track(&join_ref, topic, json!({"n": 1})).await?;
    client.expect_reply(topic, &reference).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    client.track(&join_ref, topic, json!({"n": 2})).await?;
    expect_shutdown(&mut client, topic, "Too many presence messages per second").await?;
    Ok(())
}

#[tokio::test]
async fn max_connections_refuses_upgrades_with_503() -> Result<()> {
    let server = Server::start(&[("MAX_CONNECTIONS", "2")]).await?;
    let mut one = server.connect(Vsn::V2).await?;
    let _two = server.connect(Vsn::V2).await?;
    let response = refused(&server).await?;
    ensure!(
        response.status == 503 && response.body == r#"{"error":"Too many connections"}"#,
        "{response:?}"
    );
    one.send_raw(Opcode::Close, &[0x03, 0xe8]).await?;
    one.expect_end(WAIT).await?;
    // The slot is released when the connection ends.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let query = format!("apikey={}&vsn=2.0.0", anon());
        match server
            .try_connect(Vsn::V2, "/socket/websocket", &query, &[])
            .await?
        {
            Connect::Open(_) => return Ok(()),
            Connect::Refused(response) => {
                ensure!(
                    tokio::time::Instant::now() < deadline,
                    "still refused: {response:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
