//! Socket-level behaviour: heartbeats, malformed frames, frame size, unjoined topics, join_ref
//! leniency and the idle timeout (reference: supabase/realtime `lib/realtime_web/socket.ex`,
//! `lib/realtime_web/endpoint.ex`, its Phoenix fork `supabase/phoenix` `lib/phoenix/socket.ex`,
//! and `test/integration/rt_channel/connection_lifecycle_test.exs`).

use std::time::Duration;

use anyhow::{Result, bail, ensure};
use realtide_tests::{Incoming, Opcode, QUIET, Server, Vsn, anon, kind3_frame};
use serde_json::json;

#[tokio::test]
async fn v2_heartbeat_reply_is_exact() -> Result<()> {
    let server = Server::start(&[]).await?;
    let mut client = server.connect(Vsn::V2).await?;
    client
        .send_text(r#"[null,"5","phoenix","heartbeat",{}]"#)
        .await?;
    let reply = client.next_text().await?;
    ensure!(
        reply.raw == r#"[null,"5","phoenix","phx_reply",{"status":"ok","response":{}}]"#,
        "{}",
        reply.raw
    );
    Ok(())
}

#[tokio::test]
async fn v1_heartbeat_echoes_null_ref_and_has_no_join_ref() -> Result<()> {
    let server = Server::start(&[]).await?;
    let mut client = server.connect(Vsn::V1).await?;
    // Python's heartbeat: ref and join_ref are null.
    client
        .send_text(
            r#"{"event":"heartbeat","payload":{},"topic":"phoenix","ref":null,"join_ref":null}"#,
        )
        .await?;
    let reply = client.next_text().await?;
    let frame = reply.json()?;
    ensure!(
        frame
            == json!({"topic":"phoenix","event":"phx_reply","payload":{"status":"ok","response":{}},"ref":null}),
        "{}",
        reply.raw
    );
    ensure!(frame.get("ref").is_some(), "ref key missing: {}", reply.raw);
    ensure!(
        frame.get("join_ref").is_none(),
        "V1 frame with join_ref: {}",
        reply.raw
    );
    // JS vsn 1: a string ref.
    client
        .send_text(r#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"14"}"#)
        .await?;
    let reply = client.next_text().await?;
    let frame = reply.json()?;
    ensure!(
        frame
            == json!({"topic":"phoenix","event":"phx_reply","payload":{"status":"ok","response":{}},"ref":"14"}),
        "{}",
        reply.raw
    );
    ensure!(
        frame.get("join_ref").is_none(),
        "V1 frame with join_ref: {}",
        reply.raw
    );
    Ok(())
}

#[tokio::test]
async fn malformed_v2_frames_are_dropped_and_the_socket_survives() -> Result<()> {
    let server = Server::start(&[]).await?;
    let mut client = server.connect(Vsn::V2).await?;
    for text in [
        r#"[null,"1","phoenix","heartbeat"]"#,
        r#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"2"}"#,
        "",
        "not json at all",
        r#"[null,"3","phoenix","heartbeat",{}"#,
        "[]",
        "42",
    ] {
        client.send_text(text).await?;
        client
            .assert_no_frame(Duration::from_millis(150))
            .await
            .map_err(|e| e.context(format!("after {text:?}")))?;
    }
    for bytes in [
        vec![9u8, 0, 0],
        vec![7u8],
        vec![],
        // Truncated kind 3: header promises a 14-byte topic that never comes.
        vec![3u8, 1, 2, 14, 6, 0, 1, b'9', b'1', b'0', b'r', b'e'],
        // A kind 3 whose header alone is cut short.
        vec![3u8, 1, 2],
    ] {
        client.send_binary(&bytes).await?;
        client
            .assert_no_frame(Duration::from_millis(150))
            .await
            .map_err(|e| e.context(format!("after binary {bytes:?}")))?;
    }
    let reply = client.heartbeat().await?;
    ensure!(reply.reference.is_some());
    client.assert_no_frame(QUIET).await
}

#[tokio::test]
async fn malformed_v1_frames_are_dropped_and_the_socket_survives() -> Result<()> {
    let server = Server::start(&[]).await?;
    let mut client = server.connect(Vsn::V1).await?;
    for text in [
        // `ref` key missing.
        r#"{"topic":"phoenix","event":"heartbeat","payload":{}}"#,
        // `payload` missing.
        r#"{"topic":"phoenix","event":"heartbeat","ref":"1"}"#,
        r#"[null,"1","phoenix","heartbeat",{}]"#,
        "",
        "{",
    ] {
        client.send_text(text).await?;
        client
            .assert_no_frame(Duration::from_millis(150))
            .await
            .map_err(|e| e.context(format!("after {text:?}")))?;
    }
    // A kind-3 binary frame on a V1 socket.
    let frame = kind3_frame("1", "2", "realtime:room1", "e", b"", 1, b"{}")?;
    client.send_binary(&frame).await?;
    client.assert_no_frame(Duration::from_millis(150)).await?;
    client.heartbeat().await?;
    Ok(())
}

#[tokio::test]
async fn frame_over_max_size_closes_with_1009() -> Result<()> {
    let server = Server::start(&[("WEBSOCKET_MAX_FRAME_SIZE", "10000")]).await?;
    let mut client = server.connect(Vsn::V2).await?;
    // Under the limit: fine.
    let small = format!(
        r#"[null,"1","phoenix","heartbeat",{{"pad":"{}"}}]"#,
        "x".repeat(9000)
    );
    client.send_text(&small).await?;
    let reply = client.next_text().await?;
    ensure!(
        reply.event == "phx_reply" && reply.status() == Some("ok"),
        "{}",
        reply.raw
    );
    // Over the limit: the connection is closed with 1009 (message too big).
    let big = format!(
        r#"[null,"2","phoenix","heartbeat",{{"pad":"{}"}}]"#,
        "x".repeat(20_000)
    );
    client.send_text(&big).await?;
    let (code, skipped) = client.expect_end(Duration::from_secs(5)).await?;
    ensure!(skipped.is_empty(), "frames before the close: {skipped:?}");
    ensure!(code == Some(1009), "close code {code:?}");
    Ok(())
}

#[tokio::test]
async fn pushes_to_unjoined_topics_get_unmatched_topic() -> Result<()> {
    let server = Server::start(&[]).await?;
    let mut client = server.connect(Vsn::V2).await?;
    for (event, payload) in [
        (
            "broadcast",
            json!({"type":"broadcast","event":"e","payload":{}}),
        ),
        (
            "presence",
            json!({"type":"presence","event":"track","payload":{}}),
        ),
        ("access_token", json!({"access_token": anon()})),
        ("custom_event", json!({})),
    ] {
        let reference = client
            .push(Some("1"), "realtime:not-joined", event, &payload)
            .await?;
        let reply = client.next_text().await?;
        ensure!(
            reply.event == "phx_reply"
                && reply.topic == "realtime:not-joined"
                && reply.reference.as_deref() == Some(reference.as_str()),
            "{event}: {}",
            reply.raw
        );
        ensure!(
            reply.payload == json!({"status":"error","response":{"reason":"unmatched topic"}}),
            "{event}: {}",
            reply.raw
        );
    }
    client.assert_no_frame(QUIET).await
}

#[tokio::test]
async fn leave_on_unjoined_topic_is_ok_without_close() -> Result<()> {
    let server = Server::start(&[]).await?;
    let mut client = server.connect(Vsn::V2).await?;
    // The queued-leave artifact of realtime-js: join_ref null.
    client
        .send_text(r#"[null,"3","realtime:rest-only","phx_leave",{}]"#)
        .await?;
    let reply = client.next_text().await?;
    ensure!(
        reply.raw == r#"[null,"3","realtime:rest-only","phx_reply",{"status":"ok","response":{}}]"#,
        "{}",
        reply.raw
    );
    client.assert_no_frame(QUIET).await
}

#[tokio::test]
async fn stale_or_missing_join_ref_is_still_routed() -> Result<()> {
    let server = Server::start(&[]).await?;
    let mut sender = server.connect(Vsn::V2).await?;
    let mut receiver = server.connect(Vsn::V2).await?;
    let topic = "realtime:lenient";
    let join_ref = sender
        .join_config(topic, json!({"broadcast": {"ack": true}}))
        .await?;
    receiver.join_config(topic, json!({})).await?;
    for stale in [None, Some("999"), Some("")] {
        let payload = json!({"type":"broadcast","event":"e","payload":{"stale": stale}});
        let reference = sender.push(stale, topic, "broadcast", &payload).await?;
        let reply = sender.expect_reply(topic, &reference).await?;
        ensure!(reply.status() == Some("ok"), "{stale:?}: {}", reply.raw);
        ensure!(
            reply.join_ref.as_deref() == Some(join_ref.as_str()),
            "reply should carry the channel's join_ref: {}",
            reply.raw
        );
        let got = receiver.expect_event(topic, "broadcast").await?;
        ensure!(got.payload == payload, "{stale:?}: {}", got.raw);
    }
    Ok(())
}

#[tokio::test]
async fn idle_socket_is_closed() -> Result<()> {
    let server = Server::start(&[("WEBSOCKET_IDLE_TIMEOUT_MS", "500")]).await?;
    let mut client = server.connect(Vsn::V2).await?;
    client.heartbeat().await?;
    let (_code, skipped) = client.expect_end(Duration::from_secs(10)).await?;
    ensure!(skipped.is_empty(), "unexpected frames: {skipped:?}");
    Ok(())
}

#[tokio::test]
async fn heartbeats_keep_a_socket_alive() -> Result<()> {
    let server = Server::start(&[("WEBSOCKET_IDLE_TIMEOUT_MS", "2000")]).await?;
    let mut client = server.connect(Vsn::V2).await?;
    for _ in 0..16 {
        client.heartbeat().await?;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    match client.recv_timeout(Duration::from_millis(1)).await? {
        None => Ok(()),
        Some(Incoming::Text(msg)) => bail!("unexpected frame {}", msg.raw),
        Some(other) => bail!("socket ended while heartbeating: {other:?}"),
    }
}

#[tokio::test]
async fn text_frames_that_are_not_utf8_are_dropped_and_the_socket_survives() -> Result<()> {
    // The reference does not validate UTF-8 (`validate_utf8: false`) and drops undecodable
    // frames without closing the socket.
    let server = Server::start(&[]).await?;
    let mut client = server.connect(Vsn::V2).await?;
    client
        .send_raw(
            Opcode::Text,
            b"[null,\"1\",\"phoenix\",\"heart\xffbeat\",{}]",
        )
        .await?;
    client.send_raw(Opcode::Text, &[0xc3, 0x28]).await?;
    client.assert_no_frame(Duration::from_millis(150)).await?;
    let reply = client.heartbeat().await?;
    ensure!(reply.reference.is_some());
    Ok(())
}
