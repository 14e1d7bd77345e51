//! postgres_changes against a real PostgreSQL (reference: supabase/realtime
//! `lib/extensions/postgres_cdc_rls/` and `realtime.apply_rls`): subscription results,
//! event and table selection, filters, the delivered payload, value encoding, column
//! privileges and error rows. Every test starts its own cluster (tests/pg/cluster.sh) and
//! server; the cluster is removed when the test ends, also on failure.
// `Value[&str]` never panics (it yields null), and an out-of-range binding index in a test is
// a test failure either way.
#![allow(clippy::indexing_slicing)]

use anyhow::{Context, Result, ensure};
use realtide_tests::{
    Client, Msg, PgEnv, QUIET, TEST_PUBLICATION, Vsn, is_commit_timestamp, user_token,
};
use serde_json::{Value, json};

const USER: &str = "11111111-1111-1111-1111-111111111111";

fn service() -> String {
    user_token("service_role", USER)
}

fn authenticated() -> String {
    user_token("authenticated", USER)
}

/// `data` of a postgres_changes push, after checking `ids` (as a set) and the commit
/// timestamp's shape; the timestamp is replaced by `"<ts>"` so `data` can be compared whole.
fn data(msg: &Msg, ids: &[u64]) -> Result<Value> {
    let mut got: Vec<u64> = msg.payload["ids"]
        .as_array()
        .with_context(|| format!("no ids: {}", msg.raw))?
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    got.sort_unstable();
    let mut want = ids.to_vec();
    want.sort_unstable();
    ensure!(got == want, "ids {got:?}, expected {want:?}: {}", msg.raw);
    let keys: Vec<&String> = msg.payload.as_object().context("payload")?.keys().collect();
    ensure!(
        keys == ["ids", "data"],
        "payload keys {keys:?}: {}",
        msg.raw
    );
    let mut data = msg.payload["data"].clone();
    let ts = data["commit_timestamp"].as_str().unwrap_or_default();
    ensure!(
        is_commit_timestamp(ts),
        "commit_timestamp {ts:?}: {}",
        msg.raw
    );
    data["commit_timestamp"] = json!("<ts>");
    Ok(data)
}

/// The next change on `topic`: (ids sorted, data with the timestamp replaced).
async fn next(client: &mut Client, topic: &str) -> Result<(Vec<u64>, Value)> {
    let msg = client.next_change(topic).await?;
    let mut ids: Vec<u64> = msg.payload["ids"]
        .as_array()
        .with_context(|| msg.raw.clone())?
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    ids.sort_unstable();
    let data = data(&msg, &ids)?;
    Ok((ids, data))
}

fn sorted(ids: &[u64]) -> Vec<u64> {
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids
}

fn cols(spec: &[(&str, &str)]) -> Value {
    Value::Array(
        spec.iter()
            .map(|(n, t)| json!({"name": n, "type": t}))
            .collect(),
    )
}

#[tokio::test]
async fn join_reply_ids_match_deliveries_and_subscribed_follows_the_reply() -> Result<()> {
    let env = PgEnv::start(
        &[],
        &format!(
            "create table public.items (id int8 primary key, name text);
             grant select on public.items to authenticated, service_role;
             alter publication {TEST_PUBLICATION} add table public.items;"
        ),
    )
    .await?;
    // The server created the publication (it did not exist before it started).
    let created: i64 = env
        .db
        .query_one(
            "select count(*) from pg_publication where pubname = $1",
            &[&TEST_PUBLICATION],
        )
        .await?
        .get(0);
    ensure!(created == 1, "publication not created");

    let mut client = env.client(&service()).await?;
    let topic = "realtime:items-feed";
    let bindings = json!([
        {"event": "INSERT", "schema": "public", "table": "items"},
        {"event": "*", "schema": "public", "table": "items", "filter": "name=eq.b"},
        {"event": "DELETE", "schema": "public", "table": "items"}
    ]);
    let (_join_ref, reply, system) = client
        .join_changes_raw(topic, bindings.clone(), Some(&service()))
        .await?;
    // The reply echoes each entry unchanged plus an integer id, in order.
    let entries = reply.response()["postgres_changes"]
        .as_array()
        .context("postgres_changes")?
        .clone();
    ensure!(entries.len() == 3, "{}", reply.raw);
    let mut ids = Vec::new();
    for (entry, binding) in entries.iter().zip(bindings.as_array().context("b")?) {
        let id = entry["id"].as_u64().context("id")?;
        ensure!(id != 0, "{}", reply.raw);
        let mut without_id = entry.clone();
        without_id.as_object_mut().context("entry")?.remove("id");
        ensure!(&without_id == binding, "echo {entry} for {binding}");
        ids.push(id);
    }
    ensure!(
        system.payload
            == json!({"extension": "postgres_changes", "status": "ok",
                      "message": "Subscribed to PostgreSQL", "channel": "items-feed"}),
        "{}",
        system.raw
    );

    env.exec("insert into items values (1, 'a')").await?;
    let (got, data1) = next(&mut client, topic).await?;
    ensure!(got == sorted(&[ids[0]]), "insert a: {got:?} vs {ids:?}");
    ensure!(data1["record"] == json!({"id": 1, "name": "a"}), "{data1}");

    // Two bindings match the same change: one message carrying both ids.
    env.exec("insert into items values (2, 'b')").await?;
    let (got, _) = next(&mut client, topic).await?;
    ensure!(
        got == sorted(&[ids[0], ids[1]]),
        "insert b: {got:?} vs {ids:?}"
    );

    env.exec("update items set name = 'b' where id = 1").await?;
    let (got, _) = next(&mut client, topic).await?;
    ensure!(got == sorted(&[ids[1]]), "update: {got:?} vs {ids:?}");

    env.exec("delete from items where id = 2").await?;
    let (got, _) = next(&mut client, topic).await?;
    // DELETE filters see only the old key (default replica identity): the filtered binding
    // does not match.
    ensure!(got == sorted(&[ids[2]]), "delete: {got:?} vs {ids:?}");
    client.assert_no_frame(QUIET).await?;
    Ok(())
}

#[tokio::test]
async fn v1_clients_get_the_same_ids_and_payload() -> Result<()> {
    let env = PgEnv::start(
        &[],
        &format!(
            "create table public.items (id int8 primary key, name text);
             grant select on public.items to service_role;
             alter publication {TEST_PUBLICATION} add table public.items;"
        ),
    )
    .await?;
    let mut client = env.server.connect_token(Vsn::V1, &service()).await?;
    let topic = "realtime:v1";
    let (_, ids) = client
        .join_changes(
            topic,
            json!([{"event": "*", "schema": "public", "table": "items"}]),
            Some(&service()),
        )
        .await?;
    env.exec("insert into items values (7, 'seven')").await?;
    let msg = client.next_change(topic).await?;
    let frame = msg.json()?;
    ensure!(
        frame["ref"].is_null() && frame["topic"] == topic && frame["event"] == "postgres_changes",
        "{}",
        msg.raw
    );
    let data = data(&msg, &ids)?;
    ensure!(
        data == json!({"schema": "public", "table": "items", "commit_timestamp": "<ts>",
                       "type": "INSERT", "columns": cols(&[("id", "int8"), ("name", "text")]),
                       "record": {"id": 7, "name": "seven"}, "errors": null}),
        "{data}"
    );
    Ok(())
}

/// Joins with one binding and returns the `system` message (the join itself must succeed).
async fn subscribe_result(client: &mut Client, topic: &str, binding: Value) -> Result<Value> {
    let (_, _, system) = client
        .join_changes_raw(topic, json!([binding]), Some(&service()))
        .await?;
    Ok(system.payload)
}

fn error_system(channel: &str, message: &str) -> Value {
    json!({"extension": "postgres_changes", "status": "error", "message": message, "channel": channel})
}

#[tokio::test]
async fn invalid_subscriptions_give_the_reference_errors_without_closing() -> Result<()> {
    let env = PgEnv::start(
        &[],
        &format!(
            "create table public.items (id int8 primary key, name text);
             create table public.nope (id int8 primary key);
             grant select on public.items, public.nope to service_role;
             alter publication {TEST_PUBLICATION} add table public.items;"
        ),
    )
    .await?;
    let mut client = env.client(&service()).await?;

    let got = subscribe_result(
        &mut client,
        "realtime:e1",
        json!({"event": "*", "schema": "public", "table": "nope"}),
    )
    .await?;
    let want = error_system(
        "e1",
        "Unable to subscribe to changes with given parameters. Please check Realtime is enabled \
         for the given connect parameters: [event: *, schema: public, table: nope, filters: [], select: nil]",
    );
    ensure!(got == want, "not in publication: {got}");

    let got = subscribe_result(
        &mut client,
        "realtime:e2",
        json!({"event": "*", "schema": "public", "table": "items", "filter": "bogus=eq.1"}),
    )
    .await?;
    let want = error_system(
        "e2",
        "Unable to subscribe to changes with given parameters. An exception happened so please \
         check your connect parameters: [event: *, schema: public, table: items, filters: \
         [{\"bogus\", \"eq\", \"1\", false}], select: nil]. Exception: ERROR P0001 \
         (raise_exception) invalid column for filter bogus",
    );
    ensure!(got == want, "missing filter column: {got}");

    let got = subscribe_result(
        &mut client,
        "realtime:e3",
        json!({"event": "*", "schema": "public", "table": "items", "filter": "wrong"}),
    )
    .await?;
    let want = error_system("e3", "Error parsing `filter` params: [\"wrong\"]");
    ensure!(got == want, "bad filter grammar: {got}");

    // The exact text (the parameters in Elixir `inspect` form) is checked by
    // `missing_schema_and_table_error_inspects_the_params`.
    let got = subscribe_result(&mut client, "realtime:e4", json!({"event": "INSERT"})).await?;
    let message = got["message"].as_str().unwrap_or_default();
    ensure!(
        got["status"] == "error"
            && got["channel"] == "e4"
            && message.starts_with(
                "No subscription params provided. Please provide at least a `schema` or `table` \
                 to subscribe to: "
            ),
        "no schema/table: {got}"
    );

    // None of these closes the channel, and the channels still work.
    let items = client.drain(QUIET).await?;
    ensure!(
        items
            .iter()
            .all(|i| i.text().is_none_or(|m| m.event != "phx_close")),
        "phx_close after a subscription error: {items:?}"
    );
    for topic in ["realtime:e1", "realtime:e2", "realtime:e3", "realtime:e4"] {
        let reference = client
            .push(
                None,
                topic,
                "broadcast",
                &json!({"type": "broadcast", "event": "x", "payload": {}}),
            )
            .await?;
        let frames = client.drain(QUIET).await?;
        ensure!(
            frames
                .iter()
                .all(|i| i.text().is_none_or(|m| m.event != "phx_close"
                    && !(m.reference.as_deref() == Some(reference.as_str())
                        && m.status() == Some("error")))),
            "{topic} not joined any more: {frames:?}"
        );
    }
    client.heartbeat().await?;
    Ok(())
}

#[tokio::test]
async fn missing_schema_and_table_error_inspects_the_params() -> Result<()> {
    let env = PgEnv::start(&[], "").await?;
    let mut client = env.client(&service()).await?;
    let prefix = "No subscription params provided. Please provide at least a `schema` or `table` \
                  to subscribe to: ";
    let mut failures = Vec::new();
    for (n, (binding, inspected)) in [
        (json!({}), "%{}"),
        (json!({"event": "INSERT"}), "%{\"event\" => \"INSERT\"}"),
    ]
    .into_iter()
    .enumerate()
    {
        let channel = format!("missing{n}");
        let got = subscribe_result(&mut client, &format!("realtime:{channel}"), binding).await?;
        let want = error_system(&channel, &format!("{prefix}{inspected}"));
        if got != want {
            failures.push(format!("got {got}, expected {want}"));
        }
    }
    client.heartbeat().await?;
    ensure!(failures.is_empty(), "{failures:#?}");
    Ok(())
}

/// `(type, record or old_record id)` of a change, for sequence assertions.
fn kind_id(data: &Value) -> (String, i64) {
    let kind = data["type"].as_str().unwrap_or_default().to_owned();
    let row = if kind == "DELETE" {
        &data["old_record"]
    } else {
        &data["record"]
    };
    (kind, row["id"].as_i64().unwrap_or(-1))
}

#[tokio::test]
async fn event_filter_is_case_insensitive_and_unknown_events_mean_all() -> Result<()> {
    let env = PgEnv::start(
        &[],
        &format!(
            "create table public.ev (id int8 primary key, v text);
             grant select on public.ev to service_role;
             alter publication {TEST_PUBLICATION} add table public.ev;"
        ),
    )
    .await?;
    let events = ["INSERT", "update", "Delete", "*", "something"];
    let mut clients = Vec::new();
    for (n, event) in events.iter().enumerate() {
        let mut client = env.client(&service()).await?;
        let topic = format!("realtime:ev{n}");
        let (_, ids) = client
            .join_changes(
                &topic,
                json!([{"event": event, "schema": "public", "table": "ev"}]),
                Some(&service()),
            )
            .await?;
        clients.push((client, topic, ids));
    }
    for id in [1, 2] {
        env.exec(&format!(
            "insert into ev values ({id}, 'a'); update ev set v = 'b' where id = {id}; \
             delete from ev where id = {id};"
        ))
        .await?;
    }
    let all: Vec<(String, i64)> = [1, 2]
        .iter()
        .flat_map(|id| ["INSERT", "UPDATE", "DELETE"].map(|k| (k.to_owned(), *id)))
        .collect();
    for (n, (client, topic, ids)) in clients.iter_mut().enumerate() {
        let want: Vec<(String, i64)> = match n {
            0 => all.iter().filter(|(k, _)| k == "INSERT").cloned().collect(),
            1 => all.iter().filter(|(k, _)| k == "UPDATE").cloned().collect(),
            2 => all.iter().filter(|(k, _)| k == "DELETE").cloned().collect(),
            _ => all.clone(),
        };
        let mut got = Vec::new();
        for _ in 0..want.len() {
            let (msg_ids, data) = next(client, topic).await?;
            ensure!(msg_ids == *ids, "{topic}: ids {msg_ids:?} vs {ids:?}");
            got.push(kind_id(&data));
        }
        ensure!(
            got == want,
            "event {}: got {got:?}, want {want:?}",
            events[n]
        );
        client.assert_no_frame(QUIET).await?;
    }
    Ok(())
}

#[tokio::test]
async fn schema_only_table_only_and_wildcard_bindings() -> Result<()> {
    let env = PgEnv::start(
        &[],
        &format!(
            "create schema other;
             grant usage on schema other to service_role;
             create table public.a (id int8 primary key);
             create table public.b (id int8 primary key);
             create table other.c (id int8 primary key);
             create table public.unpub (id int8 primary key);
             grant select on all tables in schema public, other to service_role;
             alter publication {TEST_PUBLICATION} add table public.a, public.b, other.c;"
        ),
    )
    .await?;
    let cases = [
        ("schema", json!({"event": "*", "schema": "public"})),
        ("table", json!({"event": "*", "table": "a"})),
        (
            "star",
            json!({"event": "*", "schema": "public", "table": "*"}),
        ),
        ("other", json!({"event": "*", "schema": "other"})),
        (
            "any",
            json!({"event": "INSERT", "schema": "*", "table": "*"}),
        ),
    ];
    let mut clients = Vec::new();
    for (name, binding) in &cases {
        let mut client = env.client(&service()).await?;
        let topic = format!("realtime:{name}");
        let (_, ids) = client
            .join_changes(&topic, json!([binding]), Some(&service()))
            .await?;
        clients.push((client, topic, ids));
    }
    env.exec(
        "insert into a values (1); insert into b values (1); insert into other.c values (1);
         insert into unpub values (1); insert into a values (2); insert into other.c values (2);",
    )
    .await?;
    let expected: [&[(&str, &str, i64)]; 5] = [
        &[("public", "a", 1), ("public", "b", 1), ("public", "a", 2)],
        &[("public", "a", 1), ("public", "a", 2)],
        &[("public", "a", 1), ("public", "b", 1), ("public", "a", 2)],
        &[("other", "c", 1), ("other", "c", 2)],
        &[
            ("public", "a", 1),
            ("public", "b", 1),
            ("other", "c", 1),
            ("public", "a", 2),
            ("other", "c", 2),
        ],
    ];
    for ((client, topic, ids), want) in clients.iter_mut().zip(expected) {
        let mut got = Vec::new();
        for _ in 0..want.len() {
            let (msg_ids, data) = next(client, topic).await?;
            ensure!(msg_ids == *ids, "{topic}: ids {msg_ids:?} vs {ids:?}");
            got.push((
                data["schema"].as_str().unwrap_or_default().to_owned(),
                data["table"].as_str().unwrap_or_default().to_owned(),
                data["record"]["id"].as_i64().unwrap_or(-1),
            ));
        }
        let want: Vec<(String, String, i64)> = want
            .iter()
            .map(|(s, t, i)| ((*s).to_owned(), (*t).to_owned(), *i))
            .collect();
        ensure!(got == want, "{topic}: got {got:?}, want {want:?}");
        client.assert_no_frame(QUIET).await?;
    }
    Ok(())
}

#[tokio::test]
async fn insert_filters_select_the_matching_bindings() -> Result<()> {
    let env = PgEnv::start(
        &[],
        &format!(
            "create table public.f (id int8 primary key, n int4, name text, tag text, flag bool);
             grant select on public.f to service_role;
             alter publication {TEST_PUBLICATION} add table public.f;"
        ),
    )
    .await?;
    let filters: [Option<&str>; 14] = [
        None,
        Some("n=eq.5"),
        Some("n=neq.5"),
        Some("n=lt.3"),
        Some("n=gt.7"),
        Some("name=in.(alice,bob)"),
        Some("name=like.%li%"),
        Some("tag=is.null"),
        Some("n=not.eq.5"),
        Some("n=gt.2,name=eq.bob"),
        Some("flag=eq.true"),
        Some("name=not.in.(alice,bob)"),
        Some("n=gte.9"),
        Some("name=ilike.CAR%"),
    ];
    let bindings: Vec<Value> = filters
        .iter()
        .map(|f| match f {
            None => json!({"event": "INSERT", "schema": "public", "table": "f"}),
            Some(f) => json!({"event": "INSERT", "schema": "public", "table": "f", "filter": f}),
        })
        .collect();
    let mut client = env.client(&service()).await?;
    let topic = "realtime:filters";
    let (_, ids) = client
        .join_changes(topic, Value::Array(bindings), Some(&service()))
        .await?;
    let rows: [(&str, &[usize]); 5] = [
        ("(1, 5, 'alice', null, true)", &[0, 1, 5, 6, 7, 10]),
        ("(2, 1, 'bob', 'x', false)", &[0, 2, 3, 5, 8]),
        ("(3, 9, 'bob', null, false)", &[0, 2, 4, 5, 7, 8, 9, 12]),
        ("(4, 4, 'carol', 'y', true)", &[0, 2, 8, 10, 11, 13]),
        ("(5, 3, 'charlie', null, null)", &[0, 2, 6, 7, 8, 11]),
    ];
    for (values, _) in &rows {
        env.exec(&format!("insert into f values {values}")).await?;
    }
    let mut failures = Vec::new();
    for (n, (values, matching)) in rows.iter().enumerate() {
        let (got, data) = next(&mut client, topic).await?;
        ensure!(
            data["record"]["id"] == json!(n + 1),
            "out of order: {data} for row {values}"
        );
        let want = sorted(
            &matching
                .iter()
                .filter_map(|i| ids.get(*i).copied())
                .collect::<Vec<_>>(),
        );
        if got != want {
            let names = |set: &[u64]| -> Vec<&str> {
                set.iter()
                    .filter_map(|id| ids.iter().position(|x| x == id))
                    .map(|i| filters[i].unwrap_or("<none>"))
                    .collect()
            };
            failures.push(format!(
                "row {values}: matched {:?}, expected {:?}",
                names(&got),
                names(&want)
            ));
        }
    }
    ensure!(failures.is_empty(), "{failures:#?}");
    client.assert_no_frame(QUIET).await?;
    Ok(())
}

#[tokio::test]
async fn delete_filters_use_the_old_identity_columns() -> Result<()> {
    let env = PgEnv::start(
        &[],
        &format!(
            "create table public.full_t (id int8 primary key, name text);
             alter table public.full_t replica identity full;
             create table public.key_t (id int8 primary key, name text);
             grant select on public.full_t, public.key_t to service_role;
             insert into full_t values (1, 'alice'), (2, 'bob');
             insert into key_t values (1, 'alice'), (2, 'bob');
             alter publication {TEST_PUBLICATION} add table public.full_t, public.key_t;"
        ),
    )
    .await?;
    let mut client = env.client(&service()).await?;
    let topic = "realtime:deletes";
    let (_, ids) = client
        .join_changes(
            topic,
            json!([
                {"event": "DELETE", "schema": "public", "table": "full_t"},
                {"event": "DELETE", "schema": "public", "table": "full_t", "filter": "name=eq.bob"},
                {"event": "DELETE", "schema": "public", "table": "key_t"},
                {"event": "DELETE", "schema": "public", "table": "key_t", "filter": "name=eq.bob"}
            ]),
            Some(&service()),
        )
        .await?;
    env.exec(
        "delete from full_t where id = 1; delete from full_t where id = 2;
         delete from key_t where id = 1; delete from key_t where id = 2;",
    )
    .await?;
    let expected = [
        (vec![ids[0]], json!({"id": 1, "name": "alice"})),
        (vec![ids[0], ids[1]], json!({"id": 2, "name": "bob"})),
        (vec![ids[2]], json!({"id": 1})),
        // The filtered column is not in the old key: the filtered binding does not match.
        (vec![ids[2]], json!({"id": 2})),
    ];
    for (want_ids, old) in expected {
        let (got, data) = next(&mut client, topic).await?;
        ensure!(
            got == sorted(&want_ids) && data["old_record"] == old && data["type"] == "DELETE",
            "got ids {got:?} {data}, expected ids {want_ids:?} old_record {old}"
        );
        ensure!(data.get("record").is_none(), "DELETE with a record: {data}");
    }
    client.assert_no_frame(QUIET).await?;
    Ok(())
}

#[tokio::test]
async fn payload_shapes_for_insert_update_delete_with_default_and_full_identity() -> Result<()> {
    let env = PgEnv::start(
        &[],
        &format!(
            "create table public.shape (id int8 primary key, body text, n int4);
             create table public.shape_full (id int8 primary key, body text, n int4);
             alter table public.shape_full replica identity full;
             grant select on public.shape, public.shape_full to authenticated;
             alter publication {TEST_PUBLICATION} add table public.shape, public.shape_full;"
        ),
    )
    .await?;
    let token = authenticated();
    let mut client = env.client(&token).await?;
    let topic = "realtime:shapes";
    let (_, ids) = client
        .join_changes(
            topic,
            json!([
                {"event": "*", "schema": "public", "table": "shape"},
                {"event": "*", "schema": "public", "table": "shape_full"}
            ]),
            Some(&token),
        )
        .await?;
    let columns = cols(&[("id", "int8"), ("body", "text"), ("n", "int4")]);
    for (table, id, full) in [("shape", ids[0], false), ("shape_full", ids[1], true)] {
        env.exec(&format!(
            "insert into {table} values (1, 'hello', 10);
             update {table} set body = 'changed' where id = 1;
             delete from {table} where id = 1;"
        ))
        .await?;
        let old_update = if full {
            json!({"id": 1, "body": "hello", "n": 10})
        } else {
            json!({"id": 1})
        };
        let old_delete = if full {
            json!({"id": 1, "body": "changed", "n": 10})
        } else {
            json!({"id": 1})
        };
        let base = |kind: &str| {
            json!({"schema": "public", "table": table, "commit_timestamp": "<ts>", "type": kind,
                   "columns": columns, "errors": null})
        };
        let mut insert = base("INSERT");
        insert["record"] = json!({"id": 1, "body": "hello", "n": 10});
        let mut update = base("UPDATE");
        update["record"] = json!({"id": 1, "body": "changed", "n": 10});
        update["old_record"] = old_update;
        let mut delete = base("DELETE");
        delete["old_record"] = old_delete;
        for want in [insert, update, delete] {
            let msg = client.next_change(topic).await?;
            let got = data(&msg, &[id])?;
            ensure!(got == want, "{table}: got {got}, expected {want}");
            // Key order as the reference: schema, table, commit_timestamp, type, columns, ...
            let keys: Vec<&str> = msg.payload["data"]
                .as_object()
                .context("data")?
                .keys()
                .map(String::as_str)
                .collect();
            let kind = want["type"].as_str().unwrap_or_default();
            let mut want_keys = vec!["schema", "table", "commit_timestamp", "type", "columns"];
            if kind != "DELETE" {
                want_keys.push("record");
            }
            if kind != "INSERT" {
                want_keys.push("old_record");
            }
            want_keys.push("errors");
            ensure!(keys == want_keys, "data keys {keys:?}: {}", msg.raw);
        }
    }
    client.assert_no_frame(QUIET).await?;
    Ok(())
}

#[tokio::test]
async fn unchanged_toast_is_absent_with_default_identity_and_present_with_full() -> Result<()> {
    let env = PgEnv::start(
        &[],
        &format!(
            "create table public.toasty (id int8 primary key, big text, n int4);
             create table public.toasty_full (id int8 primary key, big text, n int4);
             alter table public.toasty alter column big set storage external;
             alter table public.toasty_full alter column big set storage external;
             alter table public.toasty_full replica identity full;
             grant select on public.toasty, public.toasty_full to service_role;
             alter publication {TEST_PUBLICATION} add table public.toasty, public.toasty_full;"
        ),
    )
    .await?;
    let big: String = env
        .db
        .query_one(
            "select string_agg(md5(i::text), '') from generate_series(1, 200) i",
            &[],
        )
        .await?
        .get(0);
    let mut client = env.client(&service()).await?;
    let topic = "realtime:toast";
    let (_, ids) = client
        .join_changes(
            topic,
            json!([
                {"event": "UPDATE", "schema": "public", "table": "toasty"},
                {"event": "UPDATE", "schema": "public", "table": "toasty_full"}
            ]),
            Some(&service()),
        )
        .await?;
    for table in ["toasty", "toasty_full"] {
        env.db
            .execute(
                &format!("insert into {table} values (1, $1, 1)"),
                &[&big.as_str()],
            )
            .await?;
        env.exec(&format!("update {table} set n = 2 where id = 1"))
            .await?;
    }
    let (got, data) = next(&mut client, topic).await?;
    ensure!(got == vec![ids[0]], "{got:?}");
    ensure!(
        data["record"] == json!({"id": 1, "n": 2}) && data["old_record"] == json!({"id": 1}),
        "default identity: unchanged TOAST value must be absent from record: {}",
        short(&data)
    );
    ensure!(
        data["columns"] == cols(&[("id", "int8"), ("big", "text"), ("n", "int4")]),
        "{}",
        short(&data)
    );
    let (got, data) = next(&mut client, topic).await?;
    ensure!(got == vec![ids[1]], "{got:?}");
    ensure!(
        data["record"] == json!({"id": 1, "big": big, "n": 2})
            && data["old_record"] == json!({"id": 1, "big": big, "n": 1}),
        "full identity: unchanged TOAST value taken from the old row: {}",
        short(&data)
    );
    Ok(())
}

/// A JSON value with long strings shortened, for failure messages.
fn short(value: &Value) -> String {
    let text = value.to_string();
    if text.len() > 600 {
        format!("{}...({} bytes)", &text[..600], text.len())
    } else {
        text
    }
}

#[tokio::test]
async fn select_limits_columns_to_the_selected_and_primary_keys() -> Result<()> {
    let env = PgEnv::start(
        &[],
        &format!(
            "create table public.sel (id int8 primary key, name text, secret text, n int4);
             grant select on public.sel to service_role;
             alter publication {TEST_PUBLICATION} add table public.sel;"
        ),
    )
    .await?;
    let mut client = env.client(&service()).await?;
    let topic = "realtime:select";
    let (_, ids) = client
        .join_changes(
            topic,
            json!([{"event": "*", "schema": "public", "table": "sel", "select": ["name"]}]),
            Some(&service()),
        )
        .await?;
    env.exec(
        "insert into sel values (1, 'one', 's', 5); update sel set n = 6 where id = 1;
         delete from sel where id = 1;",
    )
    .await?;
    let columns = cols(&[("id", "int8"), ("name", "text")]);
    let want = [
        json!({"schema": "public", "table": "sel", "commit_timestamp": "<ts>", "type": "INSERT",
               "columns": columns, "record": {"id": 1, "name": "one"}, "errors": null}),
        json!({"schema": "public", "table": "sel", "commit_timestamp": "<ts>", "type": "UPDATE",
               "columns": columns, "record": {"id": 1, "name": "one"}, "old_record": {"id": 1},
               "errors": null}),
        json!({"schema": "public", "table": "sel", "commit_timestamp": "<ts>", "type": "DELETE",
               "columns": columns, "old_record": {"id": 1}, "errors": null}),
    ];
    for want in want {
        let msg = client.next_change(topic).await?;
        let got = data(&msg, &ids)?;
        ensure!(got == want, "got {got}, expected {want}");
    }

    // Selecting a column that does not exist is refused.
    let got = subscribe_result(
        &mut client,
        "realtime:select-bad",
        json!({"event": "*", "schema": "public", "table": "sel", "select": ["nope"]}),
    )
    .await?;
    let want = error_system(
        "select-bad",
        "Unable to subscribe to changes with given parameters. An exception happened so please \
         check your connect parameters: [event: *, schema: public, table: sel, filters: [], \
         select: [\"nope\"]]. Exception: ERROR P0001 (raise_exception) invalid column for select nope",
    );
    ensure!(got == want, "select of a missing column: {got}");
    Ok(())
}

#[tokio::test]
async fn values_are_encoded_as_to_jsonb_with_bytea_as_bare_hex() -> Result<()> {
    let env = PgEnv::start(
        &[],
        &format!(
            "create type public.mood as enum ('sad', 'happy');
             create table public.types (
               id int8 primary key, i2 int2, i4 int4, num numeric, f4 float4, f8 float8,
               b bool, t text, vc varchar(10), u uuid, j json, jb jsonb, d date, tm time,
               ts timestamp, tstz timestamptz, ai int4[], at text[], m public.mood, by bytea,
               nothing text);
             grant select on public.types to service_role;
             alter publication {TEST_PUBLICATION} add table public.types;"
        ),
    )
    .await?;
    let mut client = env.client(&service()).await?;
    let topic = "realtime:types";
    let (_, ids) = client
        .join_changes(
            topic,
            json!([{"event": "INSERT", "schema": "public", "table": "types"}]),
            Some(&service()),
        )
        .await?;
    env.exec(
        r#"insert into types values (
             1234567890123, -2, 42, 1.50, 1.25, 2.5, true, 'hello "quoted" ü', 'vc',
             'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"b": 1, "a": [1, 2]}',
             '{"nested": {"x": [true, null]}}', '2024-02-29', '12:34:56',
             '2024-02-29 12:34:56.789', '2024-02-29 12:34:56.789+02', '{1,2,3}',
             '{a,"b c",NULL}', 'happy', '\x0102ff', null)"#,
    )
    .await?;
    let msg = client.next_change(topic).await?;
    let got = data(&msg, &ids)?;
    let columns = cols(&[
        ("id", "int8"),
        ("i2", "int2"),
        ("i4", "int4"),
        ("num", "numeric"),
        ("f4", "float4"),
        ("f8", "float8"),
        ("b", "bool"),
        ("t", "text"),
        ("vc", "varchar"),
        ("u", "uuid"),
        ("j", "json"),
        ("jb", "jsonb"),
        ("d", "date"),
        ("tm", "time"),
        ("ts", "timestamp"),
        ("tstz", "timestamptz"),
        ("ai", "_int4"),
        ("at", "_text"),
        ("m", "mood"),
        ("by", "bytea"),
        ("nothing", "text"),
    ]);
    ensure!(got["columns"] == columns, "columns {}", got["columns"]);
    let record = json!({
        "id": 1234567890123_i64, "i2": -2, "i4": 42, "num": 1.5, "f4": 1.25, "f8": 2.5,
        "b": true, "t": "hello \"quoted\" ü", "vc": "vc",
        "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "j": {"a": [1, 2], "b": 1},
        "jb": {"nested": {"x": [true, null]}}, "d": "2024-02-29", "tm": "12:34:56",
        "ts": "2024-02-29T12:34:56.789", "tstz": "2024-02-29T10:34:56.789+00:00",
        "ai": [1, 2, 3], "at": ["a", "b c", null], "m": "happy", "by": "0102ff",
        "nothing": null
    });
    ensure!(
        got["record"] == record,
        "record {}\nexpected {record}",
        got["record"]
    );
    // numeric keeps its scale, as to_jsonb does.
    ensure!(
        msg.raw.contains(r#""num":1.50"#),
        "numeric 1.50: {}",
        msg.raw
    );
    // Everything but bytea equals PostgreSQL's own to_jsonb of the row.
    let own: String = env
        .db
        .query_one("select (to_jsonb(r) - 'by')::text from types r", &[])
        .await?
        .get(0);
    let own: Value = serde_json::from_str(&own)?;
    let mut without_bytea = got["record"].clone();
    without_bytea
        .as_object_mut()
        .context("record")?
        .remove("by");
    ensure!(
        without_bytea == own,
        "record {without_bytea}\nto_jsonb {own}"
    );
    Ok(())
}

#[tokio::test]
async fn columns_are_limited_to_what_the_role_may_select() -> Result<()> {
    let env = PgEnv::start(
        &[],
        &format!(
            "create table public.priv (id int8 primary key, name text, secret text);
             grant select (id, name) on public.priv to authenticated;
             grant select on public.priv to service_role;
             create table public.hidden_key (id int8 primary key, name text);
             grant select (name) on public.hidden_key to authenticated;
             alter publication {TEST_PUBLICATION} add table public.priv, public.hidden_key;"
        ),
    )
    .await?;
    let user = authenticated();
    let mut limited = env.client(&user).await?;
    let (_, limited_ids) = limited
        .join_changes(
            "realtime:limited",
            json!([{"event": "*", "schema": "public", "table": "priv"},
                   {"event": "*", "schema": "public", "table": "hidden_key"}]),
            Some(&user),
        )
        .await?;
    let mut full = env.client(&service()).await?;
    let (_, full_ids) = full
        .join_changes(
            "realtime:full",
            json!([{"event": "*", "schema": "public", "table": "priv"}]),
            Some(&service()),
        )
        .await?;
    env.exec("insert into priv values (1, 'n', 's'); insert into hidden_key values (1, 'n');")
        .await?;
    let (got, data) = next(&mut limited, "realtime:limited").await?;
    ensure!(got == vec![limited_ids[0]], "{got:?}");
    ensure!(
        data["columns"] == cols(&[("id", "int8"), ("name", "text")])
            && data["record"] == json!({"id": 1, "name": "n"}),
        "authenticated may not select secret: {data}"
    );
    let (got, data) = next(&mut full, "realtime:full").await?;
    ensure!(got == full_ids, "{got:?}");
    ensure!(
        data["columns"] == cols(&[("id", "int8"), ("name", "text"), ("secret", "text")])
            && data["record"] == json!({"id": 1, "name": "n", "secret": "s"}),
        "service_role selects everything: {data}"
    );
    // A role that may not select the primary key gets the 401 error row.
    let msg = limited.next_change("realtime:limited").await?;
    let data = &msg.payload["data"];
    ensure!(
        msg.payload["ids"] == json!([limited_ids[1]])
            && data["errors"] == json!(["Error 401: Unauthorized"])
            && data["type"] == "INSERT"
            && data["table"] == "hidden_key"
            && data["schema"] == "public",
        "{}",
        msg.raw
    );
    ensure!(
        data.get("record").is_none_or(|r| r == &json!({})),
        "401 row with a record: {}",
        msg.raw
    );

    // A filter on a column the role may not select is refused.
    let (_, _, system) = limited
        .join_changes_raw(
            "realtime:secret-filter2",
            json!([{"event": "*", "schema": "public", "table": "priv", "filter": "secret=eq.s"}]),
            Some(&user),
        )
        .await?;
    let want = error_system(
        "secret-filter2",
        "Unable to subscribe to changes with given parameters. An exception happened so please \
         check your connect parameters: [event: *, schema: public, table: priv, filters: \
         [{\"secret\", \"eq\", \"s\", false}], select: nil]. Exception: ERROR P0001 \
         (raise_exception) invalid column for filter secret",
    );
    ensure!(
        system.payload == want,
        "filter on a hidden column: {}",
        system.raw
    );
    Ok(())
}

#[tokio::test]
async fn table_without_primary_key_gives_the_400_error_row() -> Result<()> {
    let env = PgEnv::start(
        &[],
        &format!(
            "create table public.nopk (a int4, b text);
             grant select on public.nopk to service_role;
             alter publication {TEST_PUBLICATION} add table public.nopk;"
        ),
    )
    .await?;
    let mut client = env.client(&service()).await?;
    let topic = "realtime:nopk";
    let (_, ids) = client
        .join_changes(
            topic,
            json!([{"event": "*", "schema": "public", "table": "nopk"}]),
            Some(&service()),
        )
        .await?;
    env.exec("insert into nopk values (1, 'x')").await?;
    let msg = client.next_change(topic).await?;
    ensure!(msg.payload["ids"] == json!(ids), "{}", msg.raw);
    let data = &msg.payload["data"];
    ensure!(
        data["errors"] == json!(["Error 400: Bad Request, no primary key"])
            && data["schema"] == "public"
            && data["table"] == "nopk"
            && data["type"] == "INSERT",
        "{}",
        msg.raw
    );
    ensure!(
        data.get("record").is_none_or(|r| r == &json!({})),
        "400 row with a record: {}",
        msg.raw
    );
    Ok(())
}

#[tokio::test]
async fn truncate_is_not_delivered() -> Result<()> {
    let env = PgEnv::start(
        &[],
        &format!(
            "create table public.tr (id int8 primary key);
             grant select on public.tr to service_role;
             insert into tr values (1), (2);
             alter publication {TEST_PUBLICATION} add table public.tr;"
        ),
    )
    .await?;
    let mut client = env.client(&service()).await?;
    let topic = "realtime:truncate";
    client
        .join_changes(
            topic,
            json!([{"event": "*", "schema": "public", "table": "tr"}]),
            Some(&service()),
        )
        .await?;
    env.exec("truncate tr; insert into tr values (3);").await?;
    let (_, data) = next(&mut client, topic).await?;
    ensure!(
        data["type"] == "INSERT" && data["record"] == json!({"id": 3}),
        "the first delivery after TRUNCATE must be the later insert: {data}"
    );
    client.assert_no_frame(QUIET).await?;
    Ok(())
}

#[tokio::test]
async fn oversized_records_keep_small_fields_and_carry_413() -> Result<()> {
    let env = PgEnv::start(
        &[("POSTGRES_CHANGES_MAX_RECORD_BYTES", "2000")],
        &format!(
            "create table public.large (id int8 primary key, small text, big text);
             grant select on public.large to service_role;
             alter publication {TEST_PUBLICATION} add table public.large;"
        ),
    )
    .await?;
    let mut client = env.client(&service()).await?;
    let topic = "realtime:large";
    let (_, ids) = client
        .join_changes(
            topic,
            json!([{"event": "INSERT", "schema": "public", "table": "large"}]),
            Some(&service()),
        )
        .await?;
    env.exec(
        "insert into large values (1, 'tiny', repeat('x', 3000));
         insert into large values (2, 'fits', 'also small');",
    )
    .await?;
    let msg = client.next_change(topic).await?;
    ensure!(msg.payload["ids"] == json!(ids), "{}", msg.raw);
    let data = &msg.payload["data"];
    ensure!(
        data["errors"] == json!(["Error 413: Payload Too Large"])
            && data["record"] == json!({"id": 1, "small": "tiny"})
            && data["type"] == "INSERT"
            && data["columns"] == cols(&[("id", "int8"), ("small", "text"), ("big", "text")]),
        "{}",
        short(data)
    );
    let (_, data) = next(&mut client, topic).await?;
    ensure!(
        data["errors"].is_null()
            && data["record"] == json!({"id": 2, "small": "fits", "big": "also small"}),
        "{data}"
    );
    Ok(())
}
