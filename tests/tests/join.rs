//! Channel join: replies, lenient config, token precedence, errors, duplicate joins, leave
//! (reference: supabase/realtime `lib/realtime_web/channels/realtime_channel.ex`,
//! `lib/realtime_web/channels/payloads/` and `lib/realtime_web/channels/auth/jwt_verification.ex`).

use anyhow::{Context, Result, ensure};
use realtide_tests::{Client, Msg, QUIET, SECRET, Server, Vsn, sign, sign_with, token, unix_now};
use serde_json::{Value, json};

/// Sends a join and returns (join_ref, reply).
async fn join_raw(client: &mut Client, topic: &str, payload: Value) -> Result<(String, Msg)> {
    let join_ref = client.send_join(topic, &payload).await?;
    let reply = client.expect_reply(topic, &join_ref).await?;
    Ok((join_ref, reply))
}

/// Asserts the exact V2 join error reply and that nothing (no phx_close) follows.
async fn assert_join_error(
    client: &mut Client,
    topic: &str,
    payload: Value,
    reason: &str,
) -> Result<()> {
    let join_ref = client.send_join(topic, &payload).await?;
    let reply = client.next_text().await?;
    let expected = format!(
        r#"["{join_ref}","{join_ref}",{},"phx_reply",{{"status":"error","response":{{"reason":{}}}}}]"#,
        json!(topic),
        json!(reason)
    );
    ensure!(
        reply.raw == expected,
        "got {}\nexpected {expected}",
        reply.raw
    );
    client
        .assert_no_frame(QUIET)
        .await
        .context("after a failed join")?;
    // The channel is not joined.
    let reference = client
        .push(
            Some(&join_ref),
            topic,
            "broadcast",
            &json!({"event":"e","payload":{}}),
        )
        .await?;
    let reply = client.next_text().await?;
    ensure!(
        reply.reference.as_deref() == Some(reference.as_str())
            && reply.payload == json!({"status":"error","response":{"reason":"unmatched topic"}}),
        "push after failed join: {}",
        reply.raw
    );
    Ok(())
}

#[tokio::test]
async fn plain_join_reply_is_exact() -> Result<()> {
    let server = Server::start(&[]).await?;
    let mut client = server.connect(Vsn::V2).await?;
    client
        .send_text(r#"["1","1","realtime:room1","phx_join",{"config":{"broadcast":{"self":false,"ack":false},"presence":{"enabled":false},"postgres_changes":[],"private":false}}]"#)
        .await?;
    let reply = client.next_text().await?;
    ensure!(
        reply.raw
            == r#"["1","1","realtime:room1","phx_reply",{"status":"ok","response":{"postgres_changes":[]}}]"#,
        "{}",
        reply.raw
    );
    client.assert_no_frame(QUIET).await
}

#[tokio::test]
async fn v1_join_reply_and_leave() -> Result<()> {
    let server = Server::start(&[]).await?;
    let mut client = server.connect(Vsn::V1).await?;
    // V1 join without join_ref: the ref is the join_ref.
    client
        .send_text(
            r#"{"topic":"realtime:room1","event":"phx_join","payload":{"config":{}},"ref":"1"}"#,
        )
        .await?;
    let reply = client.next_text().await?;
    ensure!(
        reply.json()?
            == json!({"topic":"realtime:room1","event":"phx_reply","payload":{"status":"ok","response":{"postgres_changes":[]}},"ref":"1"}),
        "{}",
        reply.raw
    );
    ensure!(reply.json()?.get("join_ref").is_none(), "{}", reply.raw);
    client
        .send_text(r#"{"topic":"realtime:room1","event":"phx_leave","payload":{},"ref":"2","join_ref":"1"}"#)
        .await?;
    let reply = client.next_text().await?;
    ensure!(
        reply.json()?
            == json!({"topic":"realtime:room1","event":"phx_reply","payload":{"status":"ok","response":{}},"ref":"2"}),
        "{}",
        reply.raw
    );
    let close = client.next_text().await?;
    ensure!(
        close.json()?
            == json!({"topic":"realtime:room1","event":"phx_close","payload":{},"ref":"1"}),
        "{}",
        close.raw
    );
    client.assert_no_frame(QUIET).await
}

#[tokio::test]
async fn postgres_changes_are_echoed_verbatim_with_ids() -> Result<()> {
    let server = Server::start(&[]).await?;
    let mut client = server.connect(Vsn::V2).await?;
    let requested = json!([
        {"event":"*","schema":"public","table":"messages"},
        {"event":"INSERT","schema":"public","table":"users","filter":"id=eq.1","select":["id","name"],"extra":{"nested":[1,2.5,"x"]}},
        {"event":"*","schema":"public","table":"messages"},
        {"event":"delete","schema":"Public","table":"Odd Name","filter":"status=in.(\"a,b\",c)"},
        {"event":"UPDATE","schema":"public"}
    ]);
    let (_join_ref, reply) = join_raw(
        &mut client,
        "realtime:pg",
        json!({"config": {"postgres_changes": requested}}),
    )
    .await?;
    ensure!(reply.status() == Some("ok"), "{}", reply.raw);
    let echoed = reply
        .response()
        .get("postgres_changes")
        .and_then(Value::as_array)
        .context("no postgres_changes array")?
        .clone();
    let requested = requested.as_array().context("array")?;
    ensure!(echoed.len() == requested.len(), "{}", reply.raw);
    let mut ids = Vec::new();
    for (sent, got) in requested.iter().zip(&echoed) {
        let mut got = got.as_object().context("entry is not an object")?.clone();
        let id = got.remove("id").context("entry without id")?;
        ensure!(id.is_u64() || id.is_i64(), "id {id} is not an integer");
        let id = id.as_i64().context("id")?;
        ensure!(id != 0, "id 0 in {}", reply.raw);
        ensure!(
            &Value::Object(got.clone()) == sent,
            "entry {got:?} != {sent}"
        );
        // Key order is kept too (verbatim echo).
        let sent_keys: Vec<&String> = sent.as_object().context("object")?.keys().collect();
        let got_keys: Vec<&String> = got.keys().collect();
        ensure!(
            sent_keys == got_keys,
            "key order {got_keys:?} != {sent_keys:?}"
        );
        ids.push(id);
    }
    ensure!(
        ids.first() == ids.get(2),
        "identical entries must share an id: {ids:?}"
    );
    ensure!(
        ids.first() != ids.get(1),
        "different entries got the same id: {ids:?}"
    );
    Ok(())
}

#[tokio::test]
async fn null_postgres_changes_entries_are_dropped() -> Result<()> {
    let server = Server::start(&[]).await?;
    let mut client = server.connect(Vsn::V2).await?;
    let (_, reply) = join_raw(
        &mut client,
        "realtime:a",
        json!({"config": {"postgres_changes": null}}),
    )
    .await?;
    ensure!(
        reply.payload == json!({"status":"ok","response":{"postgres_changes":[]}}),
        "{}",
        reply.raw
    );
    client.assert_no_frame(QUIET).await?;
    let (_, reply) = join_raw(
        &mut client,
        "realtime:b",
        json!({"config": {"postgres_changes": [null, {"event":"*","schema":"public"}, null]}}),
    )
    .await?;
    let entries = reply
        .response()
        .get("postgres_changes")
        .and_then(Value::as_array)
        .context("array")?;
    ensure!(entries.len() == 1, "{}", reply.raw);
    ensure!(
        entries.first().and_then(|e| e.get("schema")) == Some(&json!("public")),
        "{}",
        reply.raw
    );
    Ok(())
}

#[tokio::test]
async fn postgres_changes_without_database_pushes_a_system_error_and_keeps_the_channel()
-> Result<()> {
    let server = Server::start(&[]).await?;
    let mut client = server.connect(Vsn::V2).await?;
    let (join_ref, reply) = join_raw(
        &mut client,
        "realtime:room:42",
        json!({"config": {"broadcast": {"ack": true}, "postgres_changes": [{"event":"*","schema":"public","table":"t"}]}}),
    )
    .await?;
    ensure!(reply.status() == Some("ok"), "{}", reply.raw);
    let system = client.next_text().await?;
    ensure!(
        system.event == "system" && system.topic == "realtime:room:42",
        "{}",
        system.raw
    );
    ensure!(
        system.join_ref.as_deref() == Some(join_ref.as_str()),
        "system push join_ref: {}",
        system.raw
    );
    ensure!(
        system.reference.is_none(),
        "system push ref: {}",
        system.raw
    );
    ensure!(
        system.payload.get("extension") == Some(&json!("postgres_changes")),
        "{}",
        system.raw
    );
    ensure!(
        system.payload.get("status") == Some(&json!("error")),
        "{}",
        system.raw
    );
    ensure!(
        system.payload.get("channel") == Some(&json!("room:42")),
        "{}",
        system.raw
    );
    ensure!(
        system.payload.get("message").is_some_and(Value::is_string),
        "{}",
        system.raw
    );
    // Not followed by phx_close; the channel still works.
    client.assert_no_frame(QUIET).await?;
    let reference = client
        .broadcast(&join_ref, "realtime:room:42", "e", json!({}))
        .await?;
    let ack = client.next_text().await?;
    ensure!(
        ack.reference.as_deref() == Some(reference.as_str()) && ack.status() == Some("ok"),
        "{}",
        ack.raw
    );
    Ok(())
}

#[tokio::test]
async fn lenient_config_strings_and_numeric_presence_key() -> Result<()> {
    let server = Server::start(&[]).await?;
    let mut client = server.connect(Vsn::V2).await?;
    let topic = "realtime:lenient";
    let (join_ref, reply) = join_raw(
        &mut client,
        topic,
        json!({"config": {
            "broadcast": {"self": "TRUE", "ack": "true"},
            "presence": {"enabled": "True", "key": 42},
            "private": "false"
        }}),
    )
    .await?;
    ensure!(reply.status() == Some("ok"), "{}", reply.raw);
    let state = client.next_text().await?;
    ensure!(
        state.event == "presence_state" && state.payload == json!({}),
        "{}",
        state.raw
    );
    // ack "true" → reply; self "TRUE" → own message delivered.
    let reference = client
        .broadcast(&join_ref, topic, "ping", json!({"n": 1}))
        .await?;
    let mut got_ack = false;
    let mut got_self = false;
    for _ in 0..2 {
        let msg = client.next_text().await?;
        if msg.event == "phx_reply" && msg.reference.as_deref() == Some(reference.as_str()) {
            ensure!(msg.status() == Some("ok"), "{}", msg.raw);
            got_ack = true;
        } else if msg.event == "broadcast" {
            got_self = true;
        }
    }
    ensure!(got_ack && got_self, "ack {got_ack}, self {got_self}");
    // Numeric key shows up as a string key.
    let reference = client.track(&join_ref, topic, json!({"a": 1})).await?;
    let reply = client.expect_reply(topic, &reference).await?;
    ensure!(reply.status() == Some("ok"), "{}", reply.raw);
    let diff = client.expect_event(topic, "presence_diff").await?;
    ensure!(
        diff.payload.pointer("/joins/42/metas").is_some(),
        "{}",
        diff.raw
    );
    // A second client sees the key "42" in its presence_state.
    let mut other = server.connect(Vsn::V2).await?;
    other
        .join_config(topic, json!({"presence": {"enabled": true}}))
        .await?;
    let state = other.expect_event(topic, "presence_state").await?;
    let keys: Vec<&String> = state
        .payload
        .as_object()
        .context("object")?
        .keys()
        .collect();
    ensure!(keys == ["42"], "{}", state.raw);
    Ok(())
}

#[tokio::test]
async fn missing_booleans_default_to_false_and_invalid_fields_do_not_fail() -> Result<()> {
    let server = Server::start(&[]).await?;
    let mut client = server.connect(Vsn::V2).await?;
    let mut watcher = server.connect(Vsn::V2).await?;
    let topic = "realtime:defaults";
    watcher.join_config(topic, json!({})).await?;
    let (join_ref, reply) = join_raw(
        &mut client,
        topic,
        json!({"config": {"broadcast": {}, "presence": 5, "private": "maybe", "junk": [1]}}),
    )
    .await?;
    ensure!(reply.status() == Some("ok"), "{}", reply.raw);
    client
        .broadcast(&join_ref, topic, "e", json!({"x": 1}))
        .await?;
    let got = watcher.expect_event(topic, "broadcast").await?;
    ensure!(
        got.payload.pointer("/payload/x") == Some(&json!(1)),
        "{}",
        got.raw
    );
    // No ack, no self echo, no presence_state.
    client.assert_no_frame(QUIET).await?;
    // Completely invalid config shapes still join.
    let (_, reply) = join_raw(
        &mut client,
        "realtime:junk",
        json!({"config": {"broadcast": "yes", "postgres_changes": "x"}}),
    )
    .await?;
    ensure!(
        reply.payload == json!({"status":"ok","response":{"postgres_changes":[]}}),
        "{}",
        reply.raw
    );
    Ok(())
}

#[tokio::test]
async fn default_presence_key_is_a_uuid() -> Result<()> {
    let server = Server::start(&[]).await?;
    let mut client = server.connect(Vsn::V2).await?;
    let topic = "realtime:uuidkey";
    for (i, key) in [json!(null), json!(""), Value::Null]
        .into_iter()
        .enumerate()
    {
        let topic = format!("{topic}{i}");
        let presence = if i == 2 {
            json!({"enabled": true})
        } else {
            json!({"enabled": true, "key": key})
        };
        let join_ref = client
            .join_config(&topic, json!({"presence": presence}))
            .await?;
        client.expect_event(&topic, "presence_state").await?;
        let reference = client.track(&join_ref, &topic, json!({})).await?;
        client.expect_reply(&topic, &reference).await?;
        let diff = client.expect_event(&topic, "presence_diff").await?;
        let joins = diff
            .payload
            .get("joins")
            .and_then(Value::as_object)
            .context("joins")?;
        let key = joins.keys().next().context("no join")?;
        ensure!(is_uuid(key), "presence key {key:?} is not a UUID");
    }
    Ok(())
}

fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && s.chars().all(|c| c == '-' || c.is_ascii_hexdigit())
}

#[tokio::test]
async fn channel_token_precedence() -> Result<()> {
    let server = Server::start(&[]).await?;
    let mut client = server.connect(Vsn::V2).await?;
    let good = token("authenticated", 3600);
    let expired = token("authenticated", -100);
    // access_token wins over user_token.
    let (_, reply) = join_raw(
        &mut client,
        "realtime:p1",
        json!({"config": {}, "access_token": good, "user_token": expired}),
    )
    .await?;
    ensure!(reply.status() == Some("ok"), "{}", reply.raw);
    let (_, reply) = join_raw(
        &mut client,
        "realtime:p2",
        json!({"config": {}, "access_token": expired, "user_token": good}),
    )
    .await?;
    ensure!(reply.status() == Some("error"), "{}", reply.raw);
    // user_token wins over the socket token.
    let (_, reply) = join_raw(
        &mut client,
        "realtime:p3",
        json!({"config": {}, "user_token": expired}),
    )
    .await?;
    let reason = reply
        .response()
        .get("reason")
        .and_then(Value::as_str)
        .unwrap_or_default();
    ensure!(
        reason.starts_with("InvalidJWTToken: Token has expired"),
        "{}",
        reply.raw
    );
    // Neither: the socket token.
    let (_, reply) = join_raw(&mut client, "realtime:p4", json!({"config": {}})).await?;
    ensure!(reply.status() == Some("ok"), "{}", reply.raw);
    // An opaque sb_ key falls back to the socket token.
    let (_, reply) = join_raw(
        &mut client,
        "realtime:p5",
        json!({"config": {}, "access_token": "sb_publishable_abc123"}),
    )
    .await?;
    ensure!(reply.status() == Some("ok"), "{}", reply.raw);
    // And with an expired socket token behind it, the socket token is what gets checked.
    let (_, reply) = join_raw(
        &mut client,
        "realtime:p6",
        json!({"config": {}, "access_token": "sb_secret_xyz"}),
    )
    .await?;
    ensure!(reply.status() == Some("ok"), "{}", reply.raw);
    Ok(())
}

#[tokio::test]
async fn sb_access_token_uses_the_socket_token() -> Result<()> {
    let server = Server::start(&[]).await?;
    // The socket token is valid now but the join sees it as the channel token: a garbage
    // access_token would fail, an sb_ one must not.
    let mut client = server.connect(Vsn::V2).await?;
    let (_, reply) = join_raw(
        &mut client,
        "realtime:sb",
        json!({"config": {}, "access_token": "sb_publishable_not_a_jwt"}),
    )
    .await?;
    ensure!(reply.status() == Some("ok"), "{}", reply.raw);
    let (_, reply) = join_raw(
        &mut client,
        "realtime:sb2",
        json!({"config": {}, "access_token": "not_a_jwt"}),
    )
    .await?;
    ensure!(
        reply.payload
            == json!({"status":"error","response":{"reason":"MalformedJWT: The token provided is not a valid JWT"}}),
        "{}",
        reply.raw
    );
    Ok(())
}

#[tokio::test]
async fn join_error_topic_name_required() -> Result<()> {
    let server = Server::start(&[]).await?;
    let mut client = server.connect(Vsn::V2).await?;
    assert_join_error(
        &mut client,
        "realtime:",
        json!({"config": {}}),
        "TopicNameRequired: You must provide a topic name",
    )
    .await
}

#[tokio::test]
async fn join_error_expired_token_says_how_long_ago() -> Result<()> {
    let server = Server::start(&[]).await?;
    let mut client = server.connect(Vsn::V2).await?;
    let expired = token("anon", -100);
    let (join_ref, reply) = join_raw(
        &mut client,
        "realtime:exp",
        json!({"config": {}, "access_token": expired}),
    )
    .await?;
    ensure!(
        reply.join_ref.as_deref() == Some(join_ref.as_str()),
        "{}",
        reply.raw
    );
    ensure!(reply.status() == Some("error"), "{}", reply.raw);
    let reason = reply
        .response()
        .get("reason")
        .and_then(Value::as_str)
        .context("reason")?;
    let seconds: i64 = reason
        .strip_prefix("InvalidJWTToken: Token has expired ")
        .and_then(|rest| rest.strip_suffix(" seconds ago"))
        .context(format!("reason {reason:?}"))?
        .parse()?;
    ensure!((100..=160).contains(&seconds), "N = {seconds}");
    client.assert_no_frame(QUIET).await
}

#[tokio::test]
async fn join_error_malformed_token() -> Result<()> {
    let server = Server::start(&[]).await?;
    let mut client = server.connect(Vsn::V2).await?;
    assert_join_error(
        &mut client,
        "realtime:m",
        json!({"config": {}, "access_token": "garbage"}),
        "MalformedJWT: The token provided is not a valid JWT",
    )
    .await
}

#[tokio::test]
async fn join_error_bad_signature() -> Result<()> {
    let server = Server::start(&[]).await?;
    let mut client = server.connect(Vsn::V2).await?;
    let other = sign_with(
        &json!({"role": "anon", "exp": unix_now() + 3600}),
        &format!("x{SECRET}"),
    );
    assert_join_error(
        &mut client,
        "realtime:s",
        json!({"config": {}, "access_token": other}),
        "JwtSignatureError: Failed to validate JWT signature",
    )
    .await
}

#[tokio::test]
async fn join_error_missing_claims() -> Result<()> {
    let server = Server::start(&[]).await?;
    let mut client = server.connect(Vsn::V2).await?;
    let no_role = sign(&json!({"exp": unix_now() + 3600}));
    assert_join_error(
        &mut client,
        "realtime:c",
        json!({"config": {}, "access_token": no_role}),
        "InvalidJWTToken: Fields `role` and `exp` are required in JWT",
    )
    .await
}

#[tokio::test]
async fn join_error_private_channel_unauthorized() -> Result<()> {
    let server = Server::start(&[]).await?;
    let mut client = server.connect(Vsn::V2).await?;
    assert_join_error(
        &mut client,
        "realtime:room:secret",
        json!({"config": {"private": true}}),
        "Unauthorized: You do not have permissions to read from this Channel topic: room:secret",
    )
    .await
}

#[tokio::test]
async fn join_error_replay_on_public_channel() -> Result<()> {
    let server = Server::start(&[]).await?;
    let mut client = server.connect(Vsn::V2).await?;
    assert_join_error(
        &mut client,
        "realtime:replay",
        json!({"config": {"broadcast": {"replay": {"since": 1_700_000_000_000_i64, "limit": 10}}}}),
        "UnableToReplayMessages: Replay is not allowed for public channels",
    )
    .await
}

#[tokio::test]
async fn join_error_too_many_channels() -> Result<()> {
    let server = Server::start(&[("TENANT_MAX_CHANNELS_PER_CLIENT", "2")]).await?;
    let mut client = server.connect(Vsn::V2).await?;
    let first = client.join_config("realtime:one", json!({})).await?;
    client.join_config("realtime:two", json!({})).await?;
    assert_join_error(
        &mut client,
        "realtime:three",
        json!({"config": {}}),
        "ChannelRateLimitReached: Too many channels",
    )
    .await?;
    // Another socket has its own budget.
    let mut other = server.connect(Vsn::V2).await?;
    other.join_config("realtime:three", json!({})).await?;
    // Leaving frees a slot.
    let reference = client
        .push(Some(&first), "realtime:one", "phx_leave", &json!({}))
        .await?;
    client.expect_reply("realtime:one", &reference).await?;
    client.expect_event("realtime:one", "phx_close").await?;
    client.join_config("realtime:three", json!({})).await?;
    Ok(())
}

#[tokio::test]
async fn join_to_a_non_realtime_topic_is_unmatched() -> Result<()> {
    let server = Server::start(&[]).await?;
    let mut client = server.connect(Vsn::V2).await?;
    for topic in ["room1", "Realtime:room1", "phoenix:x"] {
        let join_ref = client.send_join(topic, &json!({"config": {}})).await?;
        let reply = client.next_text().await?;
        // The reference routes only `realtime:*` topics; Phoenix replies to any other like
        // this, with a null join_ref.
        let expected = format!(
            r#"[null,"{join_ref}",{},"phx_reply",{{"status":"error","response":{{"reason":"unmatched topic"}}}}]"#,
            json!(topic)
        );
        ensure!(
            reply.raw == expected,
            "got {}\nexpected {expected}",
            reply.raw
        );
    }
    client.assert_no_frame(QUIET).await
}

#[tokio::test]
async fn duplicate_join_closes_the_old_channel_first() -> Result<()> {
    let server = Server::start(&[]).await?;
    let mut client = server.connect(Vsn::V2).await?;
    let topic = "realtime:dup";
    let old = client.join_config(topic, json!({})).await?;
    let new = client
        .send_join(topic, &json!({"config": {"broadcast": {"ack": true}}}))
        .await?;
    let mut frames = vec![client.next_text().await?.raw, client.next_text().await?.raw];
    frames.sort();
    let close = format!(r#"["{old}","{old}","realtime:dup","phx_close",{{}}]"#);
    let reply = format!(
        r#"["{new}","{new}","realtime:dup","phx_reply",{{"status":"ok","response":{{"postgres_changes":[]}}}}]"#
    );
    let mut expected = vec![close, reply];
    expected.sort();
    ensure!(frames == expected, "got {frames:?}\nexpected {expected:?}");
    client.assert_no_frame(QUIET).await?;
    // The new channel is the live one (its ack config applies).
    let reference = client.broadcast(&new, topic, "e", json!({})).await?;
    let ack = client.next_text().await?;
    ensure!(
        ack.raw
            == format!(
                r#"["{new}","{reference}","realtime:dup","phx_reply",{{"status":"ok","response":{{}}}}]"#
            ),
        "{}",
        ack.raw
    );
    Ok(())
}

#[tokio::test]
async fn duplicate_join_that_fails_still_closes_the_old_channel() -> Result<()> {
    let server = Server::start(&[]).await?;
    let mut client = server.connect(Vsn::V2).await?;
    let topic = "realtime:dup2";
    let old = client.join_config(topic, json!({})).await?;
    let new = client
        .send_join(
            topic,
            &json!({"config": {}, "access_token": token("anon", -10)}),
        )
        .await?;
    let mut got_close = false;
    let mut got_error = false;
    for _ in 0..2 {
        let msg = client.next_text().await?;
        if msg.event == "phx_close" {
            ensure!(
                msg.raw == format!(r#"["{old}","{old}","realtime:dup2","phx_close",{{}}]"#),
                "{}",
                msg.raw
            );
            got_close = true;
        } else if msg.event == "phx_reply" {
            ensure!(
                msg.join_ref.as_deref() == Some(new.as_str()) && msg.status() == Some("error"),
                "{}",
                msg.raw
            );
            got_error = true;
        }
    }
    ensure!(
        got_close && got_error,
        "close {got_close}, error {got_error}"
    );
    client.assert_no_frame(QUIET).await
}

#[tokio::test]
async fn leave_replies_ok_then_closes() -> Result<()> {
    let server = Server::start(&[]).await?;
    let mut client = server.connect(Vsn::V2).await?;
    let mut other = server.connect(Vsn::V2).await?;
    let topic = "realtime:leave";
    let join_ref = client.join_config(topic, json!({})).await?;
    let other_ref = other.join_config(topic, json!({})).await?;
    let reference = client
        .push(Some(&join_ref), topic, "phx_leave", &json!({}))
        .await?;
    let reply = client.next_text().await?;
    ensure!(
        reply.raw
            == format!(
                r#"["{join_ref}","{reference}","realtime:leave","phx_reply",{{"status":"ok","response":{{}}}}]"#
            ),
        "{}",
        reply.raw
    );
    let close = client.next_text().await?;
    ensure!(
        close.raw == format!(r#"["{join_ref}","{join_ref}","realtime:leave","phx_close",{{}}]"#),
        "{}",
        close.raw
    );
    // No more deliveries after leaving.
    other.broadcast(&other_ref, topic, "e", json!({})).await?;
    client.assert_no_frame(QUIET).await?;
    Ok(())
}
