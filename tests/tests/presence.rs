//! Presence: state, diffs, track/update/untrack, leaves on close (reference: supabase/realtime
//! `lib/realtime_web/channels/presence.ex` and `realtime_channel/presence_handler.ex`).

use anyhow::{Context, Result, ensure};
use realtide_tests::{Client, Msg, QUIET, Server, Vsn};
use serde_json::{Value, json};

async fn presence_client(server: &Server, topic: &str, key: &str) -> Result<(Client, String)> {
    let mut client = server.connect(Vsn::V2).await?;
    let join_ref = client
        .join_config(topic, json!({"presence": {"enabled": true, "key": key}}))
        .await?;
    let state = client.expect_event(topic, "presence_state").await?;
    ensure!(
        state.join_ref.as_deref() == Some(join_ref.as_str()),
        "{}",
        state.raw
    );
    Ok((client, join_ref))
}

/// Tracks and asserts the exact ok reply.
async fn track_ok(client: &mut Client, join_ref: &str, topic: &str, meta: Value) -> Result<()> {
    let reference = client.track(join_ref, topic, meta).await?;
    let reply = client.expect_reply(topic, &reference).await?;
    ensure!(
        reply.raw
            == format!(
                r#"["{join_ref}","{reference}",{},"phx_reply",{{"status":"ok","response":{{}}}}]"#,
                json!(topic)
            ),
        "{}",
        reply.raw
    );
    Ok(())
}

fn metas<'a>(diff: &'a Msg, side: &str, key: &str) -> Result<&'a Vec<Value>> {
    diff.payload
        .get(side)
        .and_then(|s| s.get(key))
        .and_then(|k| k.get("metas"))
        .and_then(Value::as_array)
        .with_context(|| format!("no {side}.{key}.metas in {}", diff.raw))
}

fn phx_ref(meta: &Value) -> Result<String> {
    meta.get("phx_ref")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .with_context(|| format!("meta without phx_ref: {meta}"))
}

fn check_diff_shape(diff: &Msg, topic: &str) -> Result<()> {
    ensure!(
        diff.event == "presence_diff" && diff.topic == topic,
        "{}",
        diff.raw
    );
    ensure!(
        diff.join_ref.is_none() && diff.reference.is_none(),
        "diff must be [null,null,...]: {}",
        diff.raw
    );
    ensure!(
        diff.payload.get("joins").is_some_and(Value::is_object),
        "{}",
        diff.raw
    );
    ensure!(
        diff.payload.get("leaves").is_some_and(Value::is_object),
        "{}",
        diff.raw
    );
    Ok(())
}

#[tokio::test]
async fn presence_state_is_empty_object_after_join() -> Result<()> {
    let server = Server::start(&[]).await?;
    let mut client = server.connect(Vsn::V2).await?;
    let join_ref = client
        .send_join(
            "realtime:p",
            &json!({"config": {"presence": {"enabled": true}}}),
        )
        .await?;
    let reply = client.next_text().await?;
    ensure!(
        reply.event == "phx_reply" && reply.status() == Some("ok"),
        "{}",
        reply.raw
    );
    let state = client.next_text().await?;
    ensure!(
        state.raw == format!(r#"["{join_ref}",null,"realtime:p","presence_state",{{}}]"#),
        "{}",
        state.raw
    );
    client.assert_no_frame(QUIET).await?;
    // V1: a ref key (null), no join_ref.
    let mut v1 = server.connect(Vsn::V1).await?;
    v1.send_join(
        "realtime:p",
        &json!({"config": {"presence": {"enabled": true}}}),
    )
    .await?;
    v1.next_text().await?;
    let state = v1.next_text().await?;
    ensure!(
        state.json()?
            == json!({"topic":"realtime:p","event":"presence_state","payload":{},"ref":null}),
        "{}",
        state.raw
    );
    Ok(())
}

#[tokio::test]
async fn track_diff_reaches_tracker_and_others() -> Result<()> {
    let server = Server::start(&[]).await?;
    let topic = "realtime:track";
    let (mut me, my_ref) = presence_client(&server, topic, "user-1").await?;
    let (mut other, _) = presence_client(&server, topic, "user-2").await?;
    track_ok(
        &mut me,
        &my_ref,
        topic,
        json!({"name": "Me", "online_at": "2026-01-01T00:00:00Z"}),
    )
    .await?;
    let mine = me.expect_event(topic, "presence_diff").await?;
    let theirs = other.expect_event(topic, "presence_diff").await?;
    for diff in [&mine, &theirs] {
        check_diff_shape(diff, topic)?;
        ensure!(
            diff.payload.get("leaves") == Some(&json!({})),
            "{}",
            diff.raw
        );
        let joins = diff
            .payload
            .get("joins")
            .and_then(Value::as_object)
            .context("joins")?;
        ensure!(joins.len() == 1, "{}", diff.raw);
        let list = metas(diff, "joins", "user-1")?;
        ensure!(list.len() == 1, "{}", diff.raw);
        let meta = list.first().context("meta")?;
        ensure!(meta.get("name") == Some(&json!("Me")), "{}", diff.raw);
        ensure!(
            meta.get("online_at") == Some(&json!("2026-01-01T00:00:00Z")),
            "{}",
            diff.raw
        );
        ensure!(meta.get("phx_ref_prev").is_none(), "{}", diff.raw);
        phx_ref(meta)?;
    }
    ensure!(mine.raw == theirs.raw, "both got the same diff");
    // A second track, by another channel under its own key, gets a different phx_ref.
    let (mut third, third_ref) = presence_client(&server, topic, "user-1").await?;
    track_ok(&mut third, &third_ref, topic, json!({"name": "Me too"})).await?;
    let diff = other.expect_event(topic, "presence_diff").await?;
    let second = phx_ref(metas(&diff, "joins", "user-1")?.first().context("meta")?)?;
    let first = phx_ref(metas(&mine, "joins", "user-1")?.first().context("meta")?)?;
    ensure!(first != second, "phx_ref reused: {first}");
    // A later joiner sees both metas under the shared key.
    let mut late = server.connect(Vsn::V2).await?;
    late.join_config(topic, json!({"presence": {"enabled": true}}))
        .await?;
    let state = late.expect_event(topic, "presence_state").await?;
    let list = state
        .payload
        .pointer("/user-1/metas")
        .and_then(Value::as_array)
        .context(state.raw.clone())?;
    ensure!(list.len() == 2, "{}", state.raw);
    let refs: Vec<String> = list.iter().map(phx_ref).collect::<Result<_>>()?;
    ensure!(
        refs.contains(&first) && refs.contains(&second),
        "{}",
        state.raw
    );
    Ok(())
}

#[tokio::test]
async fn identical_retrack_is_a_noop_and_update_carries_phx_ref_prev() -> Result<()> {
    let server = Server::start(&[]).await?;
    let topic = "realtime:update";
    let (mut me, my_ref) = presence_client(&server, topic, "k").await?;
    let (mut other, _) = presence_client(&server, topic, "o").await?;
    track_ok(&mut me, &my_ref, topic, json!({"status": "online"})).await?;
    let first = other.expect_event(topic, "presence_diff").await?;
    me.expect_event(topic, "presence_diff").await?;
    let old_ref = phx_ref(metas(&first, "joins", "k")?.first().context("meta")?)?;
    // Same meta again: ok, no diff anywhere.
    track_ok(&mut me, &my_ref, topic, json!({"status": "online"})).await?;
    other.assert_no_frame(QUIET).await?;
    me.assert_no_frame(QUIET).await?;
    // New meta: leave of the old meta, join of the new one with phx_ref_prev.
    track_ok(&mut me, &my_ref, topic, json!({"status": "away"})).await?;
    let diff = other.expect_event(topic, "presence_diff").await?;
    check_diff_shape(&diff, topic)?;
    let joined = metas(&diff, "joins", "k")?
        .first()
        .context("join meta")?
        .clone();
    let left = metas(&diff, "leaves", "k")?
        .first()
        .context("leave meta")?
        .clone();
    ensure!(joined.get("status") == Some(&json!("away")), "{}", diff.raw);
    ensure!(
        joined.get("phx_ref_prev") == Some(&json!(old_ref)),
        "{}",
        diff.raw
    );
    ensure!(phx_ref(&joined)? != old_ref, "{}", diff.raw);
    ensure!(left.get("status") == Some(&json!("online")), "{}", diff.raw);
    ensure!(phx_ref(&left)? == old_ref, "{}", diff.raw);
    Ok(())
}

#[tokio::test]
async fn uppercase_event_and_python_shape_work() -> Result<()> {
    let server = Server::start(&[]).await?;
    let topic = "realtime:upper";
    let (mut me, my_ref) = presence_client(&server, topic, "u").await?;
    let reference = me
        .push(
            Some(&my_ref),
            topic,
            "presence",
            &json!({"type": "presence", "event": "TRACK", "payload": {"a": 1}}),
        )
        .await?;
    ensure!(me.expect_reply(topic, &reference).await?.status() == Some("ok"));
    let diff = me.expect_event(topic, "presence_diff").await?;
    ensure!(
        metas(&diff, "joins", "u")?.first().and_then(|m| m.get("a")) == Some(&json!(1)),
        "{}",
        diff.raw
    );
    // Python sends no `type` key.
    let reference = me
        .push(
            Some(&my_ref),
            topic,
            "presence",
            &json!({"event": "track", "payload": {"a": 2}}),
        )
        .await?;
    ensure!(me.expect_reply(topic, &reference).await?.status() == Some("ok"));
    let diff = me.expect_event(topic, "presence_diff").await?;
    ensure!(
        metas(&diff, "joins", "u")?.first().and_then(|m| m.get("a")) == Some(&json!(2)),
        "{}",
        diff.raw
    );
    // Untrack in capitals too.
    let reference = me
        .push(
            Some(&my_ref),
            topic,
            "presence",
            &json!({"type": "presence", "event": "Untrack"}),
        )
        .await?;
    ensure!(me.expect_reply(topic, &reference).await?.status() == Some("ok"));
    let diff = me.expect_event(topic, "presence_diff").await?;
    ensure!(metas(&diff, "leaves", "u")?.len() == 1, "{}", diff.raw);
    Ok(())
}

#[tokio::test]
async fn non_object_meta_is_refused_and_channel_stays_open() -> Result<()> {
    let server = Server::start(&[]).await?;
    let topic = "realtime:badmeta";
    let (mut me, my_ref) = presence_client(&server, topic, "m").await?;
    for meta in [json!("a string"), json!([1, 2]), json!(5), json!(true)] {
        let reference = me.track(&my_ref, topic, meta.clone()).await?;
        let reply = me.next_text().await?;
        ensure!(
            reply.raw
                == format!(
                    r#"["{my_ref}","{reference}","{topic}","phx_reply",{{"status":"error","response":{{"reason":"Presence track payload must be a map"}}}}]"#
                ),
            "{meta}: {}",
            reply.raw
        );
    }
    me.assert_no_frame(QUIET).await?;
    track_ok(&mut me, &my_ref, topic, json!({"fine": true})).await?;
    me.expect_event(topic, "presence_diff").await?;
    Ok(())
}

#[tokio::test]
async fn unknown_event_errors_and_missing_event_is_ok() -> Result<()> {
    let server = Server::start(&[]).await?;
    let topic = "realtime:unknown";
    let (mut me, my_ref) = presence_client(&server, topic, "m").await?;
    let reference = me
        .push(
            Some(&my_ref),
            topic,
            "presence",
            &json!({"type": "presence", "event": "dance"}),
        )
        .await?;
    let reply = me.next_text().await?;
    ensure!(
        reply.reference.as_deref() == Some(reference.as_str())
            && reply.payload == json!({"status":"error","response":{}}),
        "{}",
        reply.raw
    );
    let reference = me
        .push(
            Some(&my_ref),
            topic,
            "presence",
            &json!({"type": "presence"}),
        )
        .await?;
    let reply = me.next_text().await?;
    ensure!(
        reply.reference.as_deref() == Some(reference.as_str())
            && reply.payload == json!({"status":"ok","response":{}}),
        "{}",
        reply.raw
    );
    me.assert_no_frame(QUIET).await
}

#[tokio::test]
async fn untrack_sends_leaves() -> Result<()> {
    let server = Server::start(&[]).await?;
    let topic = "realtime:untrack";
    let (mut me, my_ref) = presence_client(&server, topic, "gone").await?;
    let (mut other, _) = presence_client(&server, topic, "stay").await?;
    track_ok(&mut me, &my_ref, topic, json!({"x": 1})).await?;
    let joined = other.expect_event(topic, "presence_diff").await?;
    let tracked_ref = phx_ref(metas(&joined, "joins", "gone")?.first().context("meta")?)?;
    let reference = me
        .push(
            Some(&my_ref),
            topic,
            "presence",
            &json!({"type": "presence", "event": "untrack"}),
        )
        .await?;
    ensure!(me.expect_reply(topic, &reference).await?.status() == Some("ok"));
    let diff = other.expect_event(topic, "presence_diff").await?;
    check_diff_shape(&diff, topic)?;
    ensure!(
        diff.payload.get("joins") == Some(&json!({})),
        "{}",
        diff.raw
    );
    let left = metas(&diff, "leaves", "gone")?;
    ensure!(
        left.len() == 1 && phx_ref(left.first().context("meta")?)? == tracked_ref,
        "{}",
        diff.raw
    );
    Ok(())
}

#[tokio::test]
async fn socket_close_and_leave_send_leaves_to_others() -> Result<()> {
    let server = Server::start(&[]).await?;
    let topic = "realtime:bye";
    let (mut watcher, _) = presence_client(&server, topic, "watcher").await?;
    // Leaves by closing the socket.
    let (mut closer, closer_ref) = presence_client(&server, topic, "closer").await?;
    track_ok(&mut closer, &closer_ref, topic, json!({"who": "closer"})).await?;
    watcher.expect_event(topic, "presence_diff").await?;
    drop(closer);
    let diff = watcher.expect_event(topic, "presence_diff").await?;
    check_diff_shape(&diff, topic)?;
    ensure!(
        metas(&diff, "leaves", "closer")?
            .first()
            .and_then(|m| m.get("who"))
            == Some(&json!("closer")),
        "{}",
        diff.raw
    );
    // Leaves by phx_leave.
    let (mut leaver, leaver_ref) = presence_client(&server, topic, "leaver").await?;
    track_ok(&mut leaver, &leaver_ref, topic, json!({"who": "leaver"})).await?;
    watcher.expect_event(topic, "presence_diff").await?;
    let reference = leaver
        .push(Some(&leaver_ref), topic, "phx_leave", &json!({}))
        .await?;
    leaver.expect_reply(topic, &reference).await?;
    let diff = watcher.expect_event(topic, "presence_diff").await?;
    ensure!(
        metas(&diff, "leaves", "leaver")?
            .first()
            .and_then(|m| m.get("who"))
            == Some(&json!("leaver")),
        "{}",
        diff.raw
    );
    // Nobody is left but the watcher (who never tracked).
    let mut late = server.connect(Vsn::V2).await?;
    late.join_config(topic, json!({"presence": {"enabled": true}}))
        .await?;
    let state = late.expect_event(topic, "presence_state").await?;
    ensure!(state.payload == json!({}), "{}", state.raw);
    Ok(())
}

#[tokio::test]
async fn later_joiner_gets_existing_presences() -> Result<()> {
    let server = Server::start(&[]).await?;
    let topic = "realtime:existing";
    let (mut a, a_ref) = presence_client(&server, topic, "alice").await?;
    track_ok(&mut a, &a_ref, topic, json!({"name": "Alice"})).await?;
    let diff = a.expect_event(topic, "presence_diff").await?;
    let alice_ref = phx_ref(metas(&diff, "joins", "alice")?.first().context("meta")?)?;
    let mut b = server.connect(Vsn::V2).await?;
    let b_ref = b
        .join_config(topic, json!({"presence": {"enabled": true, "key": "bob"}}))
        .await?;
    let state = b.next_text().await?;
    ensure!(
        state.raw
            == format!(
                r#"["{b_ref}",null,"{topic}","presence_state",{{"alice":{{"metas":[{{"phx_ref":"{alice_ref}","name":"Alice"}}]}}}}]"#
            ),
        "{}",
        state.raw
    );
    Ok(())
}

#[tokio::test]
async fn presence_disabled_public_channel_still_gets_diffs() -> Result<()> {
    let server = Server::start(&[]).await?;
    let topic = "realtime:nopresence";
    let mut passive = server.connect(Vsn::V2).await?;
    passive
        .join_config(topic, json!({"presence": {"enabled": false}}))
        .await?;
    let mut v1_passive = server.connect(Vsn::V1).await?;
    v1_passive.join_config(topic, json!({})).await?;
    // No presence_state for them.
    passive.assert_no_frame(QUIET).await?;
    v1_passive.assert_no_frame(QUIET).await?;
    let (mut tracker, tracker_ref) = presence_client(&server, topic, "t").await?;
    track_ok(&mut tracker, &tracker_ref, topic, json!({"n": 1})).await?;
    let diff = passive.next_text().await?;
    check_diff_shape(&diff, topic)?;
    metas(&diff, "joins", "t")?;
    let diff = v1_passive.next_text().await?;
    ensure!(diff.event == "presence_diff", "{}", diff.raw);
    let frame = diff.json()?;
    ensure!(
        frame.get("ref") == Some(&Value::Null) && frame.get("join_ref").is_none(),
        "{}",
        diff.raw
    );
    metas(&diff, "joins", "t")?;
    Ok(())
}

#[tokio::test]
async fn track_on_presence_disabled_channel_works_without_state() -> Result<()> {
    let server = Server::start(&[]).await?;
    let topic = "realtime:autoenable";
    let mut client = server.connect(Vsn::V2).await?;
    let join_ref = client
        .join_config(topic, json!({"presence": {"key": "auto"}}))
        .await?;
    track_ok(&mut client, &join_ref, topic, json!({"x": 1})).await?;
    let diff = client.next_text().await?;
    check_diff_shape(&diff, topic)?;
    metas(&diff, "joins", "auto")?;
    client.assert_no_frame(QUIET).await
}
