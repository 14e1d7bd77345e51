//! Client broadcasts: verbatim relay, self/ack, kind 3 → kind 4 / V1 JSON, namespaces, size
//! limit (reference: supabase/realtime `lib/realtime_web/socket/v2_serializer.ex` and
//! `lib/realtime_web/channels/realtime_channel/broadcast_handler.ex`).

use anyhow::{Context, Result, ensure};
use realtide_tests::{Client, Incoming, QUIET, Server, Vsn, kind3_frame, kind4_frame};
use serde_json::{Value, json};

/// Joins `topic` on a fresh socket with the given broadcast config.
async fn joined(
    server: &Server,
    vsn: Vsn,
    topic: &str,
    broadcast: Value,
) -> Result<(Client, String)> {
    let mut client = server.connect(vsn).await?;
    let join_ref = client
        .join_config(topic, json!({"broadcast": broadcast}))
        .await?;
    Ok((client, join_ref))
}

#[tokio::test]
async fn odd_payloads_are_relayed_verbatim() -> Result<()> {
    let server = Server::start(&[]).await?;
    let topic = "realtime:verbatim";
    let (mut sender, jr) = joined(&server, Vsn::V2, topic, json!({})).await?;
    let (mut v2, _) = joined(&server, Vsn::V2, topic, json!({})).await?;
    let (mut v1, _) = joined(&server, Vsn::V1, topic, json!({})).await?;
    for payload in [
        // No `type`, no `event`.
        r#"{"foo":"bar","nested":{"a":[1,2,3]}}"#,
        // A string payload.
        r#""just a string""#,
        r#"[1,"two",null,true]"#,
        r#"{"type":"broadcast","event":"cursor","payload":{"x":10,"y":20},"extra":"kept"}"#,
        r#"{"type":"something-else","event":42,"payload":null}"#,
        r#"{"unicode":"é✓\u0000\"quoted\"","empty":{}}"#,
    ] {
        sender
            .send_text(&format!(r#"["{jr}","9","{topic}","broadcast",{payload}]"#))
            .await?;
        let got = v2.next_text().await?;
        ensure!(
            got.raw == format!(r#"[null,null,"{topic}","broadcast",{payload}]"#),
            "V2 got {}",
            got.raw
        );
        let got = v1.next_text().await?;
        let expected: Value = serde_json::from_str(payload)?;
        ensure!(
            got.json()?
                == json!({"topic": topic, "event": "broadcast", "payload": expected, "ref": null}),
            "V1 got {}",
            got.raw
        );
        ensure!(got.json()?.get("join_ref").is_none(), "{}", got.raw);
    }
    // Unusual number formatting: the values survive (Phoenix re-encodes, so compare values).
    let payload =
        r#"{"event":"n","payload":{"a":1.50,"b":1e3,"c":-0.0,"d":12345678901234567890,"e":1E-7}}"#;
    sender
        .send_text(&format!(r#"["{jr}","10","{topic}","broadcast",{payload}]"#))
        .await?;
    let expected: Value = serde_json::from_str(payload)?;
    let got = v2.next_text().await?;
    ensure!(
        got.payload == expected && got.event == "broadcast",
        "V2 got {}",
        got.raw
    );
    ensure!(
        got.join_ref.is_none() && got.reference.is_none(),
        "{}",
        got.raw
    );
    let got = v1.next_text().await?;
    ensure!(got.payload == expected, "V1 got {}", got.raw);
    // self is false by default: nothing back to the sender.
    sender.assert_no_frame(QUIET).await
}

#[tokio::test]
async fn self_false_and_true() -> Result<()> {
    let server = Server::start(&[]).await?;
    let topic = "realtime:self";
    let (mut quiet, quiet_ref) = joined(&server, Vsn::V2, topic, json!({"self": false})).await?;
    let (mut echo, echo_ref) = joined(&server, Vsn::V2, topic, json!({"self": true})).await?;
    quiet
        .broadcast(&quiet_ref, topic, "from-quiet", json!({"n": 1}))
        .await?;
    let got = echo.next_text().await?;
    ensure!(
        got.raw
            == format!(
                r#"[null,null,"{topic}","broadcast",{{"type":"broadcast","event":"from-quiet","payload":{{"n":1}}}}]"#
            ),
        "{}",
        got.raw
    );
    quiet.assert_no_frame(QUIET).await?;
    echo.broadcast(&echo_ref, topic, "from-echo", json!({"n": 2}))
        .await?;
    let expected = format!(
        r#"[null,null,"{topic}","broadcast",{{"type":"broadcast","event":"from-echo","payload":{{"n":2}}}}]"#
    );
    let own = echo.next_text().await?;
    ensure!(own.raw == expected, "self echo {}", own.raw);
    let other = quiet.next_text().await?;
    ensure!(other.raw == expected, "{}", other.raw);
    echo.assert_no_frame(QUIET).await?;
    quiet.assert_no_frame(QUIET).await
}

#[tokio::test]
async fn ack_reply_only_when_asked() -> Result<()> {
    let server = Server::start(&[]).await?;
    let topic = "realtime:ack";
    let (mut acked, acked_ref) = joined(&server, Vsn::V2, topic, json!({"ack": true})).await?;
    let (mut plain, plain_ref) = joined(&server, Vsn::V2, topic, json!({"ack": false})).await?;
    let reference = acked.broadcast(&acked_ref, topic, "e", json!({})).await?;
    let reply = acked.next_text().await?;
    ensure!(
        reply.raw
            == format!(
                r#"["{acked_ref}","{reference}","{topic}","phx_reply",{{"status":"ok","response":{{}}}}]"#
            ),
        "{}",
        reply.raw
    );
    plain.expect_event(topic, "broadcast").await?;
    plain.broadcast(&plain_ref, topic, "e", json!({})).await?;
    acked.expect_event(topic, "broadcast").await?;
    plain.assert_no_frame(QUIET).await?;
    // V1 ack.
    let mut v1 = server.connect(Vsn::V1).await?;
    let v1_ref = v1
        .join_config(topic, json!({"broadcast": {"ack": true}}))
        .await?;
    let reference = v1.broadcast(&v1_ref, topic, "e", json!({})).await?;
    let reply = v1.next_text().await?;
    ensure!(
        reply.json()?
            == json!({"topic": topic, "event": "phx_reply", "payload": {"status":"ok","response":{}}, "ref": reference}),
        "{}",
        reply.raw
    );
    Ok(())
}

#[tokio::test]
async fn kind3_becomes_kind4_for_v2_and_json_for_v1() -> Result<()> {
    let server = Server::start(&[]).await?;
    let topic = "realtime:room1";
    let (mut sender, jr) =
        joined(&server, Vsn::V2, topic, json!({"self": true, "ack": true})).await?;
    let (mut v2, _) = joined(&server, Vsn::V2, topic, json!({})).await?;
    let (mut v1, _) = joined(&server, Vsn::V1, topic, json!({})).await?;
    // The recorded realtime-js frame, with client metadata (which must not be re-broadcast).
    let body = br#"{"x":10,"y":20}"#;
    let frame = kind3_frame(
        &jr,
        "10",
        topic,
        "cursor",
        br#"{"persist":{"ttl":60}}"#,
        1,
        body,
    )?;
    sender.send_binary(&frame).await?;
    let expected: Vec<u8> = [&[4u8, 14, 6, 0, 1][..], b"realtime:room1", b"cursor", body].concat();
    ensure!(
        kind4_frame(topic, "cursor", 1, body)? == expected,
        "harness kind-4 encoding"
    );
    let got = v2.next_binary().await?;
    ensure!(got == expected, "V2 got {got:?}\nexpected {expected:?}");
    let got = v1.next_text().await?;
    ensure!(
        got.json()?
            == json!({"topic": topic, "event": "broadcast", "payload": {"type":"broadcast","event":"cursor","payload":{"x":10,"y":20}}, "ref": null}),
        "V1 got {}",
        got.raw
    );
    // The sender (self: true) gets the kind-4 echo and the ack, in either order.
    let mut echo = None;
    let mut ack = None;
    for _ in 0..2 {
        match sender.recv().await? {
            Incoming::Binary(bytes) => echo = Some(bytes),
            Incoming::Text(msg) => ack = Some(msg),
            other => anyhow::bail!("sender got {other:?}"),
        }
    }
    ensure!(
        echo.as_deref() == Some(expected.as_slice()),
        "echo {echo:?}"
    );
    let ack = ack.context("no ack")?;
    ensure!(
        ack.raw
            == format!(r#"["{jr}","10","{topic}","phx_reply",{{"status":"ok","response":{{}}}}]"#),
        "{}",
        ack.raw
    );
    v1.assert_no_frame(QUIET).await?;
    v2.assert_no_frame(QUIET).await
}

#[tokio::test]
async fn binary_kind3_reaches_v2_only() -> Result<()> {
    let server = Server::start(&[]).await?;
    let topic = "realtime:bin";
    let (mut sender, jr) = joined(&server, Vsn::V2, topic, json!({})).await?;
    let (mut v2, _) = joined(&server, Vsn::V2, topic, json!({})).await?;
    let (mut v1, _) = joined(&server, Vsn::V1, topic, json!({})).await?;
    let body = [0u8, 1, 2, 255, 254, b'{'];
    sender
        .send_binary(&kind3_frame(&jr, "5", topic, "blob", b"", 0, &body)?)
        .await?;
    let got = v2.next_binary().await?;
    let expected: Vec<u8> = [&[4u8, 12, 4, 0, 0][..], topic.as_bytes(), b"blob", &body].concat();
    ensure!(got == expected, "V2 got {got:?}");
    // A JSON-encoded kind 3 after it: V1 gets only that one, as text.
    sender
        .send_binary(&kind3_frame(&jr, "6", topic, "json", b"", 1, b"[1,2]")?)
        .await?;
    let got = v1.next_text().await?;
    ensure!(
        got.payload == json!({"type":"broadcast","event":"json","payload":[1,2]}),
        "V1 got {}",
        got.raw
    );
    ensure!(v2.next_binary().await?.first() == Some(&4), "second kind 4");
    // V1 never receives a binary frame.
    match v1.recv_timeout(QUIET).await? {
        None => Ok(()),
        Some(other) => anyhow::bail!("V1 got {other:?}"),
    }
}

#[tokio::test]
async fn v1_text_broadcast_stays_text_for_v2() -> Result<()> {
    let server = Server::start(&[]).await?;
    let topic = "realtime:text";
    let (mut v1, jr) = joined(&server, Vsn::V1, topic, json!({})).await?;
    let (mut v2, _) = joined(&server, Vsn::V2, topic, json!({})).await?;
    v1.send_text(&format!(
        r#"{{"topic":"{topic}","event":"broadcast","payload":{{"type":"broadcast","event":"cursor","payload":{{"x":10,"y":20}}}},"ref":"10","join_ref":"{jr}"}}"#
    ))
    .await?;
    let got = v2.next_text().await?;
    ensure!(
        got.raw
            == format!(
                r#"[null,null,"{topic}","broadcast",{{"type":"broadcast","event":"cursor","payload":{{"x":10,"y":20}}}}]"#
            ),
        "{}",
        got.raw
    );
    Ok(())
}

#[tokio::test]
async fn topics_do_not_cross_talk_and_colons_work() -> Result<()> {
    let server = Server::start(&[]).await?;
    let (mut a, a_ref) = joined(&server, Vsn::V2, "realtime:a", json!({})).await?;
    let (mut b, b_ref) = joined(&server, Vsn::V2, "realtime:b", json!({})).await?;
    let (mut room, room_ref) = joined(&server, Vsn::V2, "realtime:room", json!({})).await?;
    let (mut colon, colon_ref) = joined(&server, Vsn::V2, "realtime:room:123", json!({})).await?;
    let (mut colon2, _) = joined(&server, Vsn::V2, "realtime:room:123", json!({})).await?;
    a.broadcast(&a_ref, "realtime:a", "e", json!({"from": "a"}))
        .await?;
    b.broadcast(&b_ref, "realtime:b", "e", json!({"from": "b"}))
        .await?;
    colon
        .broadcast(
            &colon_ref,
            "realtime:room:123",
            "e",
            json!({"from": "colon"}),
        )
        .await?;
    room.broadcast(&room_ref, "realtime:room", "e", json!({"from": "room"}))
        .await?;
    let got = colon2.next_text().await?;
    ensure!(
        got.topic == "realtime:room:123"
            && got.payload.pointer("/payload/from") == Some(&json!("colon")),
        "{}",
        got.raw
    );
    // Nobody else shares a topic with a, b or room, and self is false: they hear nothing;
    // realtime:room does not receive realtime:room:123 and vice versa.
    colon.assert_no_frame(QUIET).await?;
    a.assert_no_frame(QUIET).await?;
    b.assert_no_frame(QUIET).await?;
    room.assert_no_frame(QUIET).await?;
    colon2.assert_no_frame(QUIET).await
}

#[tokio::test]
async fn oversize_payload_with_ack_is_refused() -> Result<()> {
    let server = Server::start(&[("TENANT_MAX_PAYLOAD_SIZE_IN_KB", "1")]).await?;
    let topic = "realtime:big";
    let (mut sender, jr) = joined(&server, Vsn::V2, topic, json!({"ack": true})).await?;
    let (mut receiver, _) = joined(&server, Vsn::V2, topic, json!({})).await?;
    // Under 1500 bytes: delivered.
    let reference = sender
        .broadcast(&jr, topic, "e", json!({"pad": "x".repeat(1000)}))
        .await?;
    ensure!(sender.expect_reply(topic, &reference).await?.status() == Some("ok"));
    receiver.expect_event(topic, "broadcast").await?;
    // Well over: error reply, no delivery.
    let reference = sender
        .broadcast(&jr, topic, "e", json!({"pad": "x".repeat(3000)}))
        .await?;
    let reply = sender.next_text().await?;
    ensure!(
        reply.raw
            == format!(
                r#"["{jr}","{reference}","{topic}","phx_reply",{{"status":"error","response":{{"error":"payload_size_exceeded"}}}}]"#
            ),
        "{}",
        reply.raw
    );
    // Same through a kind-3 frame.
    let body = format!(r#"{{"pad":"{}"}}"#, "y".repeat(3000));
    sender
        .send_binary(&kind3_frame(
            &jr,
            "77",
            topic,
            "e",
            b"",
            1,
            body.as_bytes(),
        )?)
        .await?;
    let reply = sender.next_text().await?;
    ensure!(
        reply.reference.as_deref() == Some("77")
            && reply.payload
                == json!({"status":"error","response":{"error":"payload_size_exceeded"}}),
        "{}",
        reply.raw
    );
    receiver.assert_no_frame(QUIET).await?;
    // The channel is still usable.
    let reference = sender
        .broadcast(&jr, topic, "e", json!({"small": true}))
        .await?;
    ensure!(sender.expect_reply(topic, &reference).await?.status() == Some("ok"));
    receiver.expect_event(topic, "broadcast").await?;
    Ok(())
}

#[tokio::test]
async fn oversize_payload_without_ack_is_dropped_silently() -> Result<()> {
    let server = Server::start(&[("TENANT_MAX_PAYLOAD_SIZE_IN_KB", "1")]).await?;
    let topic = "realtime:big2";
    let (mut sender, jr) = joined(&server, Vsn::V2, topic, json!({})).await?;
    let (mut receiver, _) = joined(&server, Vsn::V2, topic, json!({})).await?;
    sender
        .broadcast(&jr, topic, "e", json!({"pad": "x".repeat(3000)}))
        .await?;
    sender.assert_no_frame(QUIET).await?;
    receiver.assert_no_frame(QUIET).await?;
    sender.broadcast(&jr, topic, "e", json!({"ok": 1})).await?;
    let got = receiver.next_text().await?;
    ensure!(
        got.payload.pointer("/payload/ok") == Some(&json!(1)),
        "{}",
        got.raw
    );
    sender.heartbeat().await?;
    Ok(())
}
