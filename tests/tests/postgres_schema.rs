//! postgres_changes across schema changes without restarting realtide:
//! ALTER TABLE ADD/DROP COLUMN and publication membership changes.
// `Value[&str]` never panics (it yields null), and an out-of-range binding index in a test is
// a test failure either way.
#![allow(clippy::indexing_slicing)]

use anyhow::{Result, ensure};
use realtide_tests::{Client, PgEnv, QUIET, TEST_PUBLICATION, user_token};
use serde_json::{Value, json};

fn cols(spec: &[(&str, &str)]) -> Value {
    Value::Array(
        spec.iter()
            .map(|(n, t)| json!({"name": n, "type": t}))
            .collect(),
    )
}

async fn next_data(client: &mut Client, topic: &str) -> Result<Value> {
    Ok(client.next_change(topic).await?.payload["data"].clone())
}

#[tokio::test]
async fn added_and_dropped_columns_show_in_later_payloads() -> Result<()> {
    let env = PgEnv::start(
        &[],
        &format!(
            "create table public.sc (id int8 primary key, a text);
             grant select on public.sc to authenticated;
             alter publication {TEST_PUBLICATION} add table public.sc;"
        ),
    )
    .await?;
    let token = user_token("authenticated", "11111111-1111-1111-1111-111111111111");
    let mut client = env.client(&token).await?;
    let topic = "realtime:schema";
    client
        .join_changes(
            topic,
            json!([{"event": "*", "schema": "public", "table": "sc"}]),
            Some(&token),
        )
        .await?;

    env.exec("insert into sc values (1, 'one')").await?;
    let data = next_data(&mut client, topic).await?;
    ensure!(
        data["columns"] == cols(&[("id", "int8"), ("a", "text")])
            && data["record"] == json!({"id": 1, "a": "one"}),
        "{data}"
    );

    env.exec("alter table sc add column b int4 default 7; insert into sc values (2, 'two');")
        .await?;
    let data = next_data(&mut client, topic).await?;
    ensure!(
        data["columns"] == cols(&[("id", "int8"), ("a", "text"), ("b", "int4")])
            && data["record"] == json!({"id": 2, "a": "two", "b": 7}),
        "after ADD COLUMN: {data}"
    );

    env.exec("alter table sc drop column a; insert into sc values (3, 8);")
        .await?;
    let data = next_data(&mut client, topic).await?;
    ensure!(
        data["columns"] == cols(&[("id", "int8"), ("b", "int4")])
            && data["record"] == json!({"id": 3, "b": 8}),
        "after DROP COLUMN: {data}"
    );

    env.exec("alter table sc add column c jsonb; update sc set c = '{\"k\": 1}' where id = 1;")
        .await?;
    let data = next_data(&mut client, topic).await?;
    ensure!(
        data["type"] == "UPDATE"
            && data["columns"] == cols(&[("id", "int8"), ("b", "int4"), ("c", "jsonb")])
            && data["record"] == json!({"id": 1, "b": 7, "c": {"k": 1}})
            && data["old_record"] == json!({"id": 1}),
        "after a second ADD COLUMN: {data}"
    );
    client.assert_no_frame(QUIET).await?;
    Ok(())
}

#[tokio::test]
async fn tables_added_to_the_publication_later_reach_schema_bindings() -> Result<()> {
    let env = PgEnv::start(
        &[],
        &format!(
            "create table public.first (id int8 primary key);
             grant select on public.first to service_role;
             alter publication {TEST_PUBLICATION} add table public.first;"
        ),
    )
    .await?;
    let token = user_token("service_role", "11111111-1111-1111-1111-111111111111");
    let mut subs = Vec::new();
    for (name, binding) in [
        ("schema-only", json!({"event": "*", "schema": "public"})),
        (
            "star",
            json!({"event": "*", "schema": "public", "table": "*"}),
        ),
    ] {
        let mut client = env.client(&token).await?;
        let topic = format!("realtime:{name}");
        let (_, ids) = client
            .join_changes(&topic, json!([binding]), Some(&token))
            .await?;
        subs.push((client, topic, ids));
    }
    env.exec(&format!(
        "create table public.later (id int8 primary key, v text);
         grant select on public.later to service_role;
         alter publication {TEST_PUBLICATION} add table public.later;
         insert into later values (1, 'new table');"
    ))
    .await?;
    // Removed from the publication: no longer delivered (barrier: a later row of `later`).
    env.exec(&format!(
        "alter publication {TEST_PUBLICATION} drop table public.first;
         insert into first values (1);
         insert into later values (2, 'barrier');"
    ))
    .await?;
    for (client, topic, ids) in &mut subs {
        for id in [1, 2] {
            let msg = client.next_change(topic).await?;
            let data = &msg.payload["data"];
            ensure!(
                msg.payload["ids"] == json!(ids)
                    && data["table"] == "later"
                    && data["record"]["id"] == id,
                "{topic}: expected row {id} of the table added later, got {}",
                msg.raw
            );
        }
        client.assert_no_frame(QUIET).await?;
    }
    Ok(())
}
