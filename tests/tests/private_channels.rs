//! Private channels against a real PostgreSQL: the `realtime` schema realtide
//! installs, read authorization at join through RLS on `realtime.messages`, lazy write
//! authorization, `access_token` re-evaluation, broadcast from the database through the
//! replication stream (`realtime.send`, `send_binary`, `broadcast_changes`), the HTTP
//! broadcast API, and replay. Absence is asserted with barriers (a later message the same
//! subscriber must receive, in order), never with long sleeps.
#![allow(clippy::indexing_slicing)]

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use realtide_protocol::Vsn;
use realtide_tests::{Client, Incoming, Msg, PG_WAIT, PgEnv, Server, WAIT, token, user_token};
use serde_json::{Value, json};

const ALICE: &str = "aaaaaaaa-0000-0000-0000-000000000001";
const BOB: &str = "bbbbbbbb-0000-0000-0000-000000000002";
const CAROL: &str = "cccccccc-0000-0000-0000-000000000003";

/// Rooms and members; `room:*` topics readable by members, writable by writers; `lobby`
/// readable (broadcast) by everyone authenticated; `stage` presence-only for members.
const POLICIES: &str = r#"
create table public.members (user_id uuid not null, room text not null, can_write boolean not null default false);
grant select on public.members to authenticated;
insert into public.members values
  ('aaaaaaaa-0000-0000-0000-000000000001', 'room:1', true),
  ('bbbbbbbb-0000-0000-0000-000000000002', 'room:1', false),
  ('aaaaaaaa-0000-0000-0000-000000000001', 'stage', true);
create policy member_read on realtime.messages for select to authenticated using (
  exists (select 1 from public.members m where m.user_id = auth.uid() and m.room = realtime.topic())
  and (realtime.topic() <> 'stage' or realtime.messages.extension = 'presence'));
create policy writer_write on realtime.messages for insert to authenticated with check (
  exists (select 1 from public.members m
          where m.user_id = auth.uid() and m.room = realtime.topic() and m.can_write));
create policy lobby_read on realtime.messages for select to authenticated using (
  (realtime.topic() = 'lobby' or realtime.topic() like 'lobby-%') and realtime.messages.extension = 'broadcast');
"#;

async fn env() -> Result<PgEnv> {
    PgEnv::start(&[], POLICIES).await
}

fn private_config() -> Value {
    json!({"broadcast": {"self": false, "ack": true}, "presence": {"key": "", "enabled": false}, "private": true})
}

async fn join_private(client: &mut Client, topic: &str, user_token: &str) -> Result<(String, Msg)> {
    let join_ref = client
        .send_join(
            topic,
            &json!({"config": private_config(), "access_token": user_token}),
        )
        .await?;
    let reply = client.expect_reply(topic, &join_ref).await?;
    Ok((join_ref, reply))
}

/// A kind-4 frame: `(topic, event, metadata, encoding, body)`.
fn decode_kind4(frame: &[u8]) -> Result<(String, String, String, u8, Vec<u8>)> {
    let header = frame.get(..5).context("short kind-4 frame")?;
    ensure!(header[0] == 4, "not kind 4: {}", header[0]);
    let (topic_len, event_len, meta_len) = (
        usize::from(header[1]),
        usize::from(header[2]),
        usize::from(header[3]),
    );
    let rest = &frame[5..];
    let text = |range: std::ops::Range<usize>| -> Result<String> {
        Ok(String::from_utf8(
            rest.get(range).context("short field")?.to_vec(),
        )?)
    };
    let topic = text(0..topic_len)?;
    let event = text(topic_len..topic_len + event_len)?;
    let meta = text(topic_len + event_len..topic_len + event_len + meta_len)?;
    let body = rest
        .get(topic_len + event_len + meta_len..)
        .context("no body")?
        .to_vec();
    Ok((topic, event, meta, header[4], body))
}

/// The next binary frame, skipping text frames.
async fn next_kind4(client: &mut Client) -> Result<(String, String, Value, u8, Vec<u8>)> {
    let deadline = tokio::time::Instant::now() + PG_WAIT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match client.recv_timeout(left).await? {
            Some(Incoming::Binary(frame)) => {
                let (topic, event, meta, encoding, body) = decode_kind4(&frame)?;
                let meta = if meta.is_empty() {
                    Value::Null
                } else {
                    serde_json::from_str(&meta)?
                };
                return Ok((topic, event, meta, encoding, body));
            }
            Some(item) if item.is_end() => bail!("socket ended: {item:?}"),
            Some(_) => {}
            None => bail!("no binary frame within {PG_WAIT:?}"),
        }
    }
}

async fn message_rows(env: &PgEnv) -> Result<i64> {
    Ok(env
        .db
        .query_one("select count(*) from realtime.messages", &[])
        .await?
        .get(0))
}

#[tokio::test]
async fn schema_is_installed_idempotently_and_concurrently() -> Result<()> {
    let env = env().await?;
    let row = env
        .db
        .query_one(
            "select (select array_agg(version order by version) from realtime.realtide_migrations)::text,
                    (select count(*) from pg_inherits where inhparent = 'realtime.messages'::regclass),
                    to_regclass(format('realtime.messages_%s', to_char(current_date, 'YYYY_MM_DD'))) is not null,
                    to_regclass(format('realtime.messages_%s', to_char(current_date + 3, 'YYYY_MM_DD'))) is not null,
                    (select relrowsecurity from pg_class where oid = 'realtime.messages'::regclass),
                    has_function_privilege('authenticated', 'realtime.send(jsonb, text, text, boolean)', 'execute'),
                    has_table_privilege('anon', 'realtime.messages', 'insert')",
            &[],
        )
        .await?;
    ensure!(
        row.get::<_, String>(0) == "{1}",
        "versions {:?}",
        row.get::<_, String>(0)
    );
    ensure!(row.get::<_, i64>(1) == 5, "partitions yesterday..today+3");
    ensure!(
        row.get::<_, bool>(2) && row.get::<_, bool>(3),
        "today's and today+3's partitions"
    );
    ensure!(
        row.get::<_, bool>(4),
        "row level security on realtime.messages"
    );
    ensure!(row.get::<_, bool>(5) && row.get::<_, bool>(6), "grants");

    // Three more processes starting at once against the same database (own slots) each see
    // the schema applied exactly once.
    let slots = ["second_a", "second_b", "second_c"];
    let starts = slots.map(|slot| Server::start_pg(&env.pg, slot, "other_pub", &[]));
    let servers = futures_util::future::join_all(starts).await;
    for server in servers {
        server?;
    }
    let versions: i64 = env
        .db
        .query_one("select count(*) from realtime.realtide_migrations", &[])
        .await?
        .get(0);
    ensure!(versions == 1, "migration recorded {versions} times");

    // realtime.topic(): null when unset or empty.
    let row = env
        .db
        .query_one(
            "select realtime.topic() is null,
                    (select set_config('realtime.topic', '', false)) = '' and realtime.topic() is null,
                    (select set_config('realtime.topic', 'x', false)) = 'x' and realtime.topic() = 'x'",
            &[],
        )
        .await?;
    ensure!(row.get::<_, bool>(0) && row.get::<_, bool>(1) && row.get::<_, bool>(2));

    // Expired partitions are dropped by the retention sweep; current ones are kept.
    env.exec(
        "create table realtime.messages_2001_01_01 partition of realtime.messages
           for values from ('2001-01-01') to ('2001-01-02')",
    )
    .await?;
    let dropped: i32 = env
        .db
        .query_one(
            "select realtime.drop_messages_partitions(now()::timestamp - interval '72 hours')",
            &[],
        )
        .await?
        .get(0);
    ensure!(dropped == 1, "dropped {dropped}");
    Ok(())
}

#[tokio::test]
async fn private_join_is_authorized_by_read_policies() -> Result<()> {
    let env = env().await?;
    let alice = user_token("authenticated", ALICE);
    let carol = user_token("authenticated", CAROL);

    let mut client = env.client(&alice).await?;
    let (_, reply) = join_private(&mut client, "realtime:room:1", &alice).await?;
    ensure!(reply.status() == Some("ok"), "member join: {}", reply.raw);

    // Not a member: the exact reference reason.
    let mut outsider = env.client(&carol).await?;
    let (_, reply) = join_private(&mut outsider, "realtime:room:1", &carol).await?;
    ensure!(
        reply.payload
            == json!({"status": "error", "response": {"reason": "Unauthorized: You do not have permissions to read from this Channel topic: room:1"}}),
        "outsider join: {}",
        reply.raw
    );
    // The socket stays usable.
    outsider.heartbeat().await?;

    // Presence-read only: allowed when presence is enabled (presence is checked), refused
    // when only broadcast is checked.
    let (_, reply) = join_private(&mut client, "realtime:stage", &alice).await?;
    ensure!(
        reply.status() == Some("error"),
        "stage without presence: {}",
        reply.raw
    );
    let join_ref = client
        .send_join(
            "realtime:stage",
            &json!({"config": {"broadcast": {"self": true}, "presence": {"key": "a", "enabled": true}, "private": true}, "access_token": alice}),
        )
        .await?;
    let reply = client.expect_reply("realtime:stage", &join_ref).await?;
    ensure!(
        reply.status() == Some("ok"),
        "stage with presence: {}",
        reply.raw
    );

    // service_role bypasses RLS; anon has no policy.
    let service = token("service_role", 3600);
    let (_, reply) = join_private(&mut client, "realtime:room:9", &service).await?;
    ensure!(reply.status() == Some("ok"), "service_role: {}", reply.raw);
    let (_, reply) = join_private(&mut client, "realtime:lobby", &token("anon", 3600)).await?;
    ensure!(reply.status() == Some("error"), "anon lobby: {}", reply.raw);

    // A role that does not exist is a policy error: refused with the same reason.
    let ghost =
        realtide_tests::sign(&json!({"role": "ghost", "exp": realtide_tests::unix_now() + 600}));
    let (_, reply) = join_private(&mut client, "realtime:lobby", &ghost).await?;
    ensure!(
        reply.response()["reason"]
            == "Unauthorized: You do not have permissions to read from this Channel topic: lobby",
        "ghost role: {}",
        reply.raw
    );

    // Public and private channels of the same name are different topics.
    let mut public = env.client(&alice).await?;
    public
        .join_config("realtime:room:1", json!({"broadcast": {"self": false}}))
        .await?;

    // Probes were rolled back: nothing was stored.
    ensure!(message_rows(&env).await? == 0, "probe rows left behind");
    Ok(())
}

#[tokio::test]
async fn write_permission_is_checked_lazily_and_denied_sends_vanish() -> Result<()> {
    let env = env().await?;
    let alice = user_token("authenticated", ALICE);
    let bob = user_token("authenticated", BOB);
    let mut writer = env.client(&alice).await?;
    let (writer_ref, _) = join_private(&mut writer, "realtime:room:1", &alice).await?;
    let mut reader = env.client(&bob).await?;
    let (reader_ref, _) = join_private(&mut reader, "realtime:room:1", &bob).await?;
    // A public subscriber of the same name must receive nothing of the private topic.
    let mut public = env.client(&bob).await?;
    public
        .join_config("realtime:room:1", json!({"broadcast": {"self": false}}))
        .await?;

    // Bob may read but not write: his ack'd send gets no reply and reaches nobody.
    let denied = reader
        .broadcast(
            &reader_ref,
            "realtime:room:1",
            "msg",
            json!({"from": "bob"}),
        )
        .await?;
    // Alice may write: ack ok, and Bob receives it.
    let allowed = writer
        .broadcast(
            &writer_ref,
            "realtime:room:1",
            "msg",
            json!({"from": "alice"}),
        )
        .await?;
    let reply = writer.expect_reply("realtime:room:1", &allowed).await?;
    ensure!(reply.status() == Some("ok"), "writer ack: {}", reply.raw);
    let got = reader.expect_event("realtime:room:1", "broadcast").await?;
    ensure!(
        got.payload["payload"] == json!({"from": "alice"}),
        "got {}",
        got.raw
    );
    // Barrier on Bob's own socket: a heartbeat after his denied send; no reply to it came first.
    let items = reader.drain(Duration::from_millis(300)).await?;
    ensure!(
        !items.iter().any(|i| i
            .text()
            .is_some_and(|m| m.reference.as_deref() == Some(denied.as_str()))),
        "denied send was answered"
    );
    // The cached denial holds for later sends too; Alice (self: false) never hears Bob.
    reader
        .broadcast(
            &reader_ref,
            "realtime:room:1",
            "msg",
            json!({"from": "bob2"}),
        )
        .await?;
    writer
        .broadcast(
            &writer_ref,
            "realtime:room:1",
            "msg",
            json!({"from": "alice2"}),
        )
        .await?;
    let got = reader.expect_event("realtime:room:1", "broadcast").await?;
    ensure!(
        got.payload["payload"] == json!({"from": "alice2"}),
        "got {}",
        got.raw
    );
    ensure!(
        public
            .drain(Duration::from_millis(200))
            .await?
            .iter()
            .all(|i| i.text().is_none_or(|m| m.event != "broadcast")),
        "public channel received a private broadcast"
    );

    // Presence on a private channel without presence-write: error reply, channel stays.
    let track = reader
        .track(&reader_ref, "realtime:room:1", json!({"status": "here"}))
        .await?;
    let reply = reader.expect_reply("realtime:room:1", &track).await?;
    ensure!(
        reply.payload == json!({"status": "error", "response": {}}),
        "track without write: {}",
        reply.raw
    );
    let track = writer
        .track(&writer_ref, "realtime:room:1", json!({"status": "here"}))
        .await?;
    let reply = writer.expect_reply("realtime:room:1", &track).await?;
    ensure!(
        reply.status() == Some("ok"),
        "track with write: {}",
        reply.raw
    );
    ensure!(message_rows(&env).await? == 0, "write probes left behind");
    Ok(())
}

#[tokio::test]
async fn access_token_refresh_re_evaluates_private_reads() -> Result<()> {
    let env = env().await?;
    let bob = user_token("authenticated", BOB);
    let mut client = env.client(&bob).await?;
    let (join_ref, _) = join_private(&mut client, "realtime:room:1", &bob).await?;
    // Still a member: a new token keeps the channel.
    let refreshed = realtide_tests::sign(
        &json!({"role": "authenticated", "sub": BOB, "exp": realtide_tests::unix_now() + 7200}),
    );
    client
        .push(
            Some(&join_ref),
            "realtime:room:1",
            "access_token",
            &json!({"access_token": refreshed}),
        )
        .await?;
    client.heartbeat().await?;
    // Membership revoked: the next refresh shuts the channel down.
    env.exec("delete from public.members where user_id = 'bbbbbbbb-0000-0000-0000-000000000002'")
        .await?;
    let again = realtide_tests::sign(
        &json!({"role": "authenticated", "sub": BOB, "exp": realtide_tests::unix_now() + 7300}),
    );
    client
        .push(
            Some(&join_ref),
            "realtime:room:1",
            "access_token",
            &json!({"access_token": again}),
        )
        .await?;
    let system = client.expect_event("realtime:room:1", "system").await?;
    ensure!(
        system.payload
            == json!({"extension": "system", "status": "error", "message": "You do not have permissions to read from this Channel topic: room:1", "channel": "room:1"}),
        "system: {}",
        system.raw
    );
    client.expect_event("realtime:room:1", "phx_close").await?;

    // One of two reads lost: `stage` with presence enabled reads presence; granting broadcast
    // too and then taking broadcast away keeps presence, which is "no longer".
    let alice = user_token("authenticated", ALICE);
    env.exec(
        "create policy stage_broadcast on realtime.messages for select to authenticated using (
           realtime.topic() = 'stage' and realtime.messages.extension = 'broadcast'
           and exists (select 1 from public.members m
                       where m.user_id = auth.uid() and m.room = 'stage' and m.can_write))",
    )
    .await?;
    let mut client = env.client(&alice).await?;
    let join_ref = client
        .send_join(
            "realtime:stage",
            &json!({"config": {"presence": {"key": "a", "enabled": true}, "private": true}, "access_token": alice}),
        )
        .await?;
    let reply = client.expect_reply("realtime:stage", &join_ref).await?;
    ensure!(reply.status() == Some("ok"), "stage: {}", reply.raw);
    env.exec("update public.members set can_write = false where room = 'stage'")
        .await?;
    let newer = realtide_tests::sign(
        &json!({"role": "authenticated", "sub": ALICE, "exp": realtide_tests::unix_now() + 7200}),
    );
    client
        .push(
            Some(&join_ref),
            "realtime:stage",
            "access_token",
            &json!({"access_token": newer}),
        )
        .await?;
    let system = client.expect_event("realtime:stage", "system").await?;
    ensure!(
        system.payload["message"]
            == "You no longer have permission to read from this Channel topic: stage",
        "system: {}",
        system.raw
    );
    Ok(())
}

#[tokio::test]
async fn database_broadcasts_reach_subscribers_through_replication() -> Result<()> {
    let env = env().await?;
    let alice = user_token("authenticated", ALICE);
    let carol = user_token("authenticated", CAROL);
    let mut v2 = env.client(&alice).await?;
    join_private(&mut v2, "realtime:room:1", &alice).await?;
    let mut v1 = env.server.connect_token(Vsn::V1, &alice).await?;
    let (_, reply) = join_private(&mut v1, "realtime:room:1", &alice).await?;
    ensure!(reply.status() == Some("ok"), "v1 join {}", reply.raw);
    // Carol subscribes to the public `room:1` and to the readable lobby.
    let mut public = env.client(&carol).await?;
    public
        .join_config("realtime:room:1", json!({"broadcast": {"self": false}}))
        .await?;

    env.exec("select realtime.send('{\"n\": 1}'::jsonb, 'tick', 'room:1')")
        .await?;
    let (topic, event, meta, encoding, body) = next_kind4(&mut v2).await?;
    ensure!(
        topic == "realtime:room:1" && event == "tick" && encoding == 1,
        "{topic} {event} {encoding}"
    );
    let body: Value = serde_json::from_slice(&body)?;
    let id = meta["id"].as_str().context("meta.id")?.to_owned();
    ensure!(body == json!({"n": 1, "id": id}), "body {body}");
    let msg = v1
        .expect_text_within(PG_WAIT, |m| m.event == "broadcast")
        .await?;
    ensure!(
        msg.payload
            == json!({"type": "broadcast", "event": "tick", "payload": {"n": 1, "id": id}, "meta": {"id": id}}),
        "v1 {}",
        msg.raw
    );

    // Binary: V2 gets encoding 0; V1 gets nothing (barrier: the next JSON message).
    env.exec("select realtime.send_binary('\\x010203'::bytea, 'raw', 'room:1')")
        .await?;
    env.exec("select realtime.send('{\"n\": 2}'::jsonb, 'tick', 'room:1')")
        .await?;
    let (_, event, _, encoding, body) = next_kind4(&mut v2).await?;
    ensure!(
        event == "raw" && encoding == 0 && body == [1, 2, 3],
        "binary {event} {encoding} {body:?}"
    );
    let msg = v1
        .expect_text_within(PG_WAIT, |m| m.event == "broadcast")
        .await?;
    ensure!(
        msg.payload["payload"]["n"] == 2,
        "v1 got {} before the barrier",
        msg.raw
    );
    let (_, event, _, _, _) = next_kind4(&mut v2).await?;
    ensure!(event == "tick", "v2 barrier {event}");

    // Public sends reach the public channel only.
    env.exec("select realtime.send('{\"p\": true}'::jsonb, 'pub', 'room:1', false)")
        .await?;
    let (topic, event, _, _, _) = next_kind4(&mut public).await?;
    ensure!(
        topic == "realtime:room:1" && event == "pub",
        "public got {topic} {event}"
    );

    // broadcast_changes from a trigger.
    env.exec(
        "create table public.entries (id int primary key, room text, body text);
         create function public.entries_fanout() returns trigger language plpgsql as $$
         begin
           perform realtime.broadcast_changes(new.room, tg_op, tg_op, tg_table_name, tg_table_schema, new, old);
           return null;
         end $$;
         create trigger entries_fanout after insert or update on public.entries
           for each row execute function public.entries_fanout();
         insert into public.entries values (1, 'room:1', 'hello');
         update public.entries set body = 'edited' where id = 1;",
    )
    .await?;
    let (_, event, meta, _, body) = next_kind4(&mut v2).await?;
    let body: Value = serde_json::from_slice(&body)?;
    ensure!(event == "INSERT", "event {event}");
    ensure!(
        body["operation"] == "INSERT"
            && body["table"] == "entries"
            && body["schema"] == "public"
            && body["record"] == json!({"id": 1, "room": "room:1", "body": "hello"})
            && body["old_record"].is_null()
            && body["id"] == meta["id"],
        "insert body {body}"
    );
    let (_, event, _, _, body) = next_kind4(&mut v2).await?;
    let body: Value = serde_json::from_slice(&body)?;
    ensure!(
        event == "UPDATE"
            && body["old_record"]["body"] == "hello"
            && body["record"]["body"] == "edited",
        "update body {body}"
    );
    // A failing send never fails the caller's transaction.
    env.exec("select realtime.send('{}'::jsonb, 'e', null)")
        .await?;
    Ok(())
}

#[tokio::test]
async fn http_broadcast_api() -> Result<()> {
    let env = env().await?;
    let alice = user_token("authenticated", ALICE);
    let bob = user_token("authenticated", BOB);
    let mut private = env.client(&bob).await?;
    join_private(&mut private, "realtime:room:1", &bob).await?;
    let mut public = env.server.connect_token(Vsn::V1, &bob).await?;
    public
        .join_config("realtime:news", json!({"broadcast": {"self": false}}))
        .await?;

    let ping = env.server.http("GET", "/api/ping", &[]).await?;
    ensure!(
        ping.status == 200 && ping.body == r#"{"message":"Success"}"#,
        "{ping:?}"
    );

    // Batch: authenticated by bearer; the leaked WebSocket query is ignored.
    let bearer = format!("Bearer {alice}");
    let batch = json!({"messages": [
        {"topic": "news", "event": "e1", "payload": {"a": 1}},
        {"topic": "news", "event": "e2", "payload": {"a": 2}, "id": "m-2"},
        {"topic": "room:1", "event": "p", "payload": {"secret": 1}, "private": true}
    ]})
    .to_string();
    let response = env
        .server
        .http_body(
            "POST",
            "/realtime/v1/api/broadcast?apikey=x&vsn=2.0.0",
            &[
                ("authorization", bearer.as_str()),
                ("content-type", "application/json"),
            ],
            Some(batch.as_bytes()),
        )
        .await?;
    ensure!(
        response.status == 202 && response.body.is_empty(),
        "{response:?}"
    );
    let m1 = public
        .expect_text_within(WAIT, |m| m.event == "broadcast")
        .await?;
    ensure!(
        m1.payload == json!({"type": "broadcast", "event": "e1", "payload": {"a": 1}}),
        "{}",
        m1.raw
    );
    let m2 = public
        .expect_text_within(WAIT, |m| m.event == "broadcast")
        .await?;
    ensure!(m2.payload["meta"] == json!({"id": "m-2"}), "{}", m2.raw);
    let got = private
        .expect_text_within(WAIT, |m| m.event == "broadcast")
        .await?;
    ensure!(
        got.payload["payload"] == json!({"secret": 1}),
        "{}",
        got.raw
    );

    // Bob may not write room:1: his private message is skipped, still 202.
    let denied = json!({"messages": [{"topic": "room:1", "event": "p", "payload": {"from": "bob"}, "private": true}]}).to_string();
    let response = env
        .server
        .http_body(
            "POST",
            "/api/broadcast",
            &[("apikey", bob.as_str())],
            Some(denied.as_bytes()),
        )
        .await?;
    ensure!(response.status == 202, "{response:?}");

    // Validation and authentication.
    let invalid =
        json!({"messages": [{"topic": "news"}, {"topic": "news", "event": "e", "payload": {}}]})
            .to_string();
    let response = env
        .server
        .http_body(
            "POST",
            "/api/broadcast",
            &[("apikey", alice.as_str())],
            Some(invalid.as_bytes()),
        )
        .await?;
    ensure!(response.status == 422, "{response:?}");
    let body: Value = serde_json::from_str(&response.body)?;
    ensure!(
        body == json!({"errors": {"messages": [{"event": ["can't be blank"], "payload": ["can't be blank"]}, {}]}}),
        "{body}"
    );
    let response = env
        .server
        .http_body(
            "POST",
            "/api/broadcast",
            &[("authorization", "Bearer nope")],
            Some(batch.as_bytes()),
        )
        .await?;
    ensure!(
        response.status == 401 && response.body == r#"{"message":"Unauthorized"}"#,
        "{response:?}"
    );

    // Single: JSON to V1 as text, raw bytes never to V1.
    let response = env
        .server
        .http_body(
            "POST",
            "/api/broadcast/news/events/single?apikey=x",
            &[
                ("apikey", alice.as_str()),
                ("content-type", "application/json"),
            ],
            Some(br#"{ "x" : 1 }"#),
        )
        .await?;
    ensure!(response.status == 202, "{response:?}");
    let got = public
        .expect_text_within(WAIT, |m| m.event == "broadcast")
        .await?;
    ensure!(
        got.payload == json!({"type": "broadcast", "event": "single", "payload": {"x": 1}}),
        "{}",
        got.raw
    );
    let response = env
        .server
        .http_body(
            "POST",
            "/api/broadcast/news/events/raw",
            &[
                ("apikey", alice.as_str()),
                ("content-type", "application/octet-stream"),
            ],
            Some(&[1, 2, 3]),
        )
        .await?;
    ensure!(response.status == 202, "{response:?}");
    let response = env
        .server
        .http_body(
            "POST",
            "/api/broadcast/news/events/x",
            &[("apikey", alice.as_str()), ("content-type", "text/plain")],
            Some(b"hi"),
        )
        .await?;
    ensure!(
        response.status == 415
            && response.body
                == r#"{"error":"Unsupported Media Type. Use application/json or application/octet-stream"}"#,
        "{response:?}"
    );
    // Private single: 403 for Bob, 202 for Alice (Bob's channel receives a kind-4 frame).
    let response = env
        .server
        .http_body(
            "POST",
            "/api/broadcast/room%3A1/events/x?private=true",
            &[("apikey", bob.as_str())],
            Some(br#"{"b":1}"#),
        )
        .await?;
    ensure!(
        response.status == 403 && response.body == r#"{"message":"Unauthorized"}"#,
        "{response:?}"
    );
    let response = env
        .server
        .http_body(
            "POST",
            "/realtime/v1/api/broadcast/room%3A1/events/ok?private=true",
            &[("authorization", bearer.as_str())],
            Some(br#"{"a":1}"#),
        )
        .await?;
    ensure!(response.status == 202, "{response:?}");
    let (topic, event, _, encoding, body) = next_kind4(&mut private).await?;
    ensure!(
        topic == "realtime:room:1" && event == "ok" && encoding == 1 && body == br#"{"a":1}"#,
        "{topic} {event}"
    );
    // The V1 public subscriber never got the raw body: its next broadcast is the barrier.
    let response = env
        .server
        .http_body(
            "POST",
            "/api/broadcast/news/events/last",
            &[("apikey", alice.as_str())],
            Some(b"{}"),
        )
        .await?;
    ensure!(response.status == 202, "{response:?}");
    let got = public
        .expect_text_within(WAIT, |m| m.event == "broadcast")
        .await?;
    ensure!(got.payload["event"] == "last", "V1 got {}", got.raw);
    ensure!(
        message_rows(&env).await? == 0,
        "HTTP broadcasts are not stored"
    );
    Ok(())
}

#[tokio::test]
async fn replay_delivers_the_newest_stored_messages_oldest_first() -> Result<()> {
    let env = env().await?;
    let alice = user_token("authenticated", ALICE);
    let since = realtide_tests::unix_now() * 1000 - 60_000;
    for n in 1..=5 {
        env.exec(&format!(
            "select realtime.send('{{\"n\": {n}}}'::jsonb, 'm', 'room:1')"
        ))
        .await?;
    }
    env.exec("select realtime.send_binary('\\xff'::bytea, 'bin', 'room:1')")
        .await?;
    env.exec("select realtime.send('{\"other\": 1}'::jsonb, 'm', 'room:2')")
        .await?;
    let ids: Vec<String> = env
        .db
        .query(
            "select id::text from realtime.messages where topic = 'room:1' order by inserted_at",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    ensure!(ids.len() == 6, "stored {ids:?}");

    // V1: limit 3 → the newest three JSON-or-binary rows; binary skipped for V1.
    let mut v1 = env.server.connect_token(Vsn::V1, &alice).await?;
    let join_ref = v1
        .send_join(
            "realtime:room:1",
            &json!({"config": {"broadcast": {"replay": {"since": since, "limit": 3}}, "private": true}, "access_token": alice}),
        )
        .await?;
    let reply = v1.expect_reply("realtime:room:1", &join_ref).await?;
    ensure!(reply.status() == Some("ok"), "{}", reply.raw);
    let m = v1
        .expect_text_within(WAIT, |m| m.event == "broadcast")
        .await?;
    ensure!(
        m.payload
            == json!({"type": "broadcast", "event": "m", "payload": {"n": 4, "id": ids[3]}, "meta": {"replayed": true, "id": ids[3]}}),
        "{}",
        m.raw
    );
    let m = v1
        .expect_text_within(WAIT, |m| m.event == "broadcast")
        .await?;
    ensure!(m.payload["payload"]["n"] == 5, "{}", m.raw);

    // V2: default limit 25 → all six, oldest first; JSON ones as text with the join ref.
    let mut v2 = env.client(&alice).await?;
    let join_ref = v2
        .send_join(
            "realtime:room:1",
            &json!({"config": {"broadcast": {"replay": {"since": since}}, "private": true}, "access_token": alice}),
        )
        .await?;
    v2.expect_reply("realtime:room:1", &join_ref).await?;
    for n in 1..=5 {
        let m = v2
            .expect_text_within(WAIT, |m| m.event == "broadcast")
            .await?;
        ensure!(
            m.payload["payload"]["n"] == n && m.join_ref.as_deref() == Some(join_ref.as_str()),
            "{}",
            m.raw
        );
    }
    let (_, event, meta, encoding, body) = next_kind4(&mut v2).await?;
    ensure!(
        event == "bin"
            && encoding == 0
            && body == [0xff]
            && meta == json!({"replayed": true, "id": ids[5]}),
        "{event} {meta}"
    );

    // `since` after everything: nothing replayed, the live copy of a new message arrives once.
    env.exec("select realtime.send('{\"n\": 6}'::jsonb, 'm', 'room:1')")
        .await?;
    let (_, _, meta, _, body) = next_kind4(&mut v2).await?;
    let body: Value = serde_json::from_slice(&body)?;
    ensure!(
        body["n"] == 6 && meta.get("replayed").is_none(),
        "{body} {meta}"
    );

    // Errors.
    let join_ref = v2
        .send_join(
            "realtime:room:1",
            &json!({"config": {"broadcast": {"replay": {}}, "private": true}, "access_token": alice}),
        )
        .await?;
    let reply = v2.expect_reply("realtime:room:1", &join_ref).await?;
    ensure!(
        reply.response()["reason"] == "UnableToReplayMessages: Replay params are not valid",
        "{}",
        reply.raw
    );
    let join_ref = v2
        .send_join(
            "realtime:room:1",
            &json!({"config": {"broadcast": {"replay": {"since": "yesterday"}}, "private": true}, "access_token": alice}),
        )
        .await?;
    let reply = v2.expect_reply("realtime:room:1", &join_ref).await?;
    ensure!(
        reply.response()["reason"] == "UnableToReplayMessages: Replay params are not valid",
        "{}",
        reply.raw
    );
    let join_ref = v2
        .send_join(
            "realtime:public-room",
            &json!({"config": {"broadcast": {"replay": {"since": since}}, "private": false}}),
        )
        .await?;
    let reply = v2.expect_reply("realtime:public-room", &join_ref).await?;
    ensure!(
        reply.response()["reason"]
            == "UnableToReplayMessages: Replay is not allowed for public channels",
        "{}",
        reply.raw
    );
    Ok(())
}

#[tokio::test]
async fn replayed_ids_are_not_delivered_again_live() -> Result<()> {
    // A message committed just before the join can be both replayed and streamed live; the
    // live copy is suppressed. To make the overlap likely, the replication connection is cut
    // (realtide reconnects after a 200 ms backoff) and the message is committed and the join
    // made meanwhile, so the live copy arrives after the replay.
    let env = env().await?;
    let alice = user_token("authenticated", ALICE);
    let since = realtide_tests::unix_now() * 1000 - 60_000;
    let mut v2 = env.client(&alice).await?;
    env.exec(
        "select pg_terminate_backend(active_pid) from pg_replication_slots
          where slot_name = 'realtide_test_slot'",
    )
    .await?;
    env.exec("select realtime.send('{\"n\": 1}'::jsonb, 'm', 'room:1')")
        .await?;
    let join_ref = v2
        .send_join(
            "realtime:room:1",
            &json!({"config": {"broadcast": {"replay": {"since": since}}, "private": true}, "access_token": alice}),
        )
        .await?;
    v2.expect_reply("realtime:room:1", &join_ref).await?;
    env.exec("select realtime.send('{\"n\": 2}'::jsonb, 'm', 'room:1')")
        .await?;
    // Exactly: n=1 once (replayed, text) and then n=2 (live, binary).
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + PG_WAIT;
    while !seen.iter().any(|(n, _)| *n == 2) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match v2.recv_timeout(left).await? {
            Some(Incoming::Text(m)) if m.event == "broadcast" => {
                seen.push((m.payload["payload"]["n"].as_i64().unwrap_or(0), true));
            }
            Some(Incoming::Binary(frame)) => {
                let (_, _, _, _, body) = decode_kind4(&frame)?;
                let body: Value = serde_json::from_slice(&body)?;
                seen.push((body["n"].as_i64().unwrap_or(0), false));
            }
            Some(item) if item.is_end() => bail!("ended {item:?}"),
            Some(_) => {}
            None => bail!("timed out; seen {seen:?}"),
        }
    }
    ensure!(seen == vec![(1, true), (2, false)], "seen {seen:?}");
    Ok(())
}

#[tokio::test]
async fn two_hundred_concurrent_private_joins_use_a_bounded_pool() -> Result<()> {
    let env = env().await?;
    let alice = user_token("authenticated", ALICE);
    let before: i64 = env
        .db
        .query_one(
            "select count(*) from pg_stat_activity where backend_type = 'client backend'",
            &[],
        )
        .await?
        .get(0);
    let mut clients = Vec::new();
    for _ in 0..20 {
        clients.push(env.client(&alice).await?);
    }
    let joins = clients.iter_mut().enumerate().map(|(c, client)| {
        let alice = alice.clone();
        async move {
            let mut refs = Vec::new();
            for t in 0..10 {
                // Half readable (members' `room:1` under distinct names is not possible: one
                // topic per socket), half not.
                let topic = if t % 2 == 0 {
                    format!("realtime:lobby-{c}-{t}")
                } else {
                    format!("realtime:closed-{c}-{t}")
                };
                let join_ref = client
                    .send_join(
                        &topic,
                        &json!({"config": private_config(), "access_token": alice}),
                    )
                    .await?;
                refs.push((topic, join_ref));
            }
            // Refusals are answered after CHANNEL_ERROR_BACKOFF_MS, so replies come out of
            // order: collect them all.
            let mut ok = 0;
            let mut refused = 0;
            while ok + refused < refs.len() {
                let reply = client
                    .expect_text(|m| {
                        m.event == "phx_reply"
                            && refs.iter().any(|(t, r)| {
                                m.topic == *t && m.reference.as_deref() == Some(r.as_str())
                            })
                    })
                    .await?;
                match reply.status() {
                    Some("ok") => ok += 1,
                    _ => refused += 1,
                }
            }
            Ok::<_, anyhow::Error>((ok, refused))
        }
    });
    let results = futures_util::future::join_all(joins).await;
    let mut ok = 0;
    let mut refused = 0;
    for result in results {
        let (o, r) = result?;
        ok += o;
        refused += r;
    }
    ensure!(ok == 100 && refused == 100, "ok {ok}, refused {refused}");
    let after: i64 = env
        .db
        .query_one(
            "select count(*) from pg_stat_activity where backend_type = 'client backend'",
            &[],
        )
        .await?
        .get(0);
    // The authorization pool (2) plus at most the query pool (4) beyond what was open before.
    ensure!(
        after - before <= 6,
        "connections grew from {before} to {after}"
    );
    ensure!(message_rows(&env).await? == 0, "probe rows left behind");
    Ok(())
}

#[tokio::test]
async fn private_joins_without_a_database_are_refused() -> Result<()> {
    let server = Server::default_server().await?;
    let mut client = server.connect(Vsn::V2).await?;
    let join_ref = client
        .send_join("realtime:room:1", &json!({"config": {"private": true}}))
        .await?;
    let reply = client.expect_reply("realtime:room:1", &join_ref).await?;
    ensure!(
        reply.response()["reason"]
            == "Unauthorized: You do not have permissions to read from this Channel topic: room:1",
        "{}",
        reply.raw
    );
    Ok(())
}
