//! postgres_changes row level security against a real PostgreSQL (reference: supabase/realtime
//! `realtime.apply_rls`, `priv/repo/tenant_schema/realtime/functions/apply_rls.sql`): every
//! subscriber receives exactly the INSERT/UPDATE rows it may SELECT under its own JWT claims,
//! DELETEs are judged on the old row where it exists (else follow the reference), and policy
//! changes and token refreshes take effect without a restart. Absence is asserted with barriers
//! (a later change the subscriber must see, delivered in commit order), never with long sleeps.
// `Value[&str]` never panics (it yields null), and an out-of-range binding index in a test is
// a test failure either way.
#![allow(clippy::indexing_slicing)]

use anyhow::{Context, Result, ensure};
use realtide_tests::{Client, PgEnv, QUIET, TEST_PUBLICATION, user_token};
use serde_json::{Value, json};

const USERS: [&str; 4] = [
    "aaaaaaaa-0000-0000-0000-000000000001",
    "bbbbbbbb-0000-0000-0000-000000000002",
    "cccccccc-0000-0000-0000-000000000003",
    "dddddddd-0000-0000-0000-000000000004",
];

/// `(type, id)` of a change: `record.id`, or `old_record.id` for DELETE.
fn kind_id(data: &Value) -> (String, i64) {
    let kind = data["type"].as_str().unwrap_or_default().to_owned();
    let row = if kind == "DELETE" {
        &data["old_record"]
    } else {
        &data["record"]
    };
    (kind, row["id"].as_i64().unwrap_or(-1))
}

/// A subscriber: its socket, topic and the ids of its bindings.
struct Sub {
    name: String,
    client: Client,
    topic: String,
    ids: Vec<u64>,
}

impl Sub {
    async fn new(env: &PgEnv, name: &str, token: &str, bindings: Value) -> Result<Sub> {
        let mut client = env.client(token).await?;
        let topic = format!("realtime:{name}");
        let (_, ids) = client.join_changes(&topic, bindings, Some(token)).await?;
        Ok(Sub {
            name: name.to_owned(),
            client,
            topic,
            ids,
        })
    }

    /// The next change's data (ids must be a subset of this channel's bindings).
    async fn next(&mut self) -> Result<Value> {
        let msg = self.client.next_change(&self.topic).await?;
        let ids = msg.payload["ids"].as_array().context("ids")?;
        ensure!(
            !ids.is_empty()
                && ids
                    .iter()
                    .all(|id| id.as_u64().is_some_and(|id| self.ids.contains(&id))),
            "{}: ids {ids:?} not in {:?}",
            self.name,
            self.ids
        );
        Ok(msg.payload["data"].clone())
    }

    /// The next `n` changes as `(type, id)`.
    async fn take(&mut self, n: usize) -> Result<Vec<(String, i64)>> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(kind_id(&self.next().await?));
        }
        Ok(out)
    }

    /// Requires exactly `want` next (in order), then no further frame for a moment.
    async fn expect_exactly(&mut self, want: &[(&str, i64)]) -> Result<()> {
        let got = self.take(want.len()).await?;
        let want: Vec<(String, i64)> = want.iter().map(|(k, i)| ((*k).to_owned(), *i)).collect();
        ensure!(
            got == want,
            "{} received {got:?}, expected exactly {want:?}",
            self.name
        );
        Ok(())
    }
}

fn ins(ids: impl IntoIterator<Item = i64>) -> Vec<(&'static str, i64)> {
    ids.into_iter().map(|i| ("INSERT", i)).collect()
}

fn notes_setup(extra: &str) -> String {
    format!(
        "create table public.notes (id int8 primary key, owner uuid not null, body text);
         alter table public.notes enable row level security;
         create policy own on public.notes for select to authenticated using (owner = auth.uid());
         grant select on public.notes to anon, authenticated, service_role;
         create table public.open_board (id int8 primary key, body text);
         grant select on public.open_board to anon, authenticated, service_role;
         alter publication {TEST_PUBLICATION} add table public.notes, public.open_board;
         {extra}"
    )
}

fn all_notes() -> Value {
    json!([{"event": "*", "schema": "public", "table": "notes"}])
}

#[tokio::test]
async fn owner_policy_each_user_receives_exactly_their_own_rows() -> Result<()> {
    let env = PgEnv::start(&[], &notes_setup("")).await?;
    let mut users = Vec::new();
    for (n, user) in USERS.iter().take(3).enumerate() {
        let token = user_token("authenticated", user);
        users.push(Sub::new(&env, &format!("user{n}"), &token, all_notes()).await?);
    }
    // Rows 1..=9 owned round-robin by users 0, 1, 2.
    for id in 1..=9_i64 {
        let owner = USERS[usize::try_from(id % 3)?];
        env.exec(&format!(
            "insert into notes values ({id}, '{owner}', 'note {id}')"
        ))
        .await?;
    }
    for id in 1..=9_i64 {
        env.exec(&format!(
            "update notes set body = 'edited {id}' where id = {id}"
        ))
        .await?;
    }
    // Barrier: a final row for each user.
    for (n, user) in USERS.iter().take(3).enumerate() {
        env.exec(&format!(
            "insert into notes values ({}, '{user}', 'last')",
            100 + n
        ))
        .await?;
    }
    for (n, sub) in users.iter_mut().enumerate() {
        let own: Vec<i64> = (1..=9)
            .filter(|id| id % 3 == i64::try_from(n).unwrap_or(0))
            .collect();
        let mut want: Vec<(&str, i64)> = ins(own.iter().copied());
        want.extend(own.iter().map(|id| ("UPDATE", *id)));
        want.push(("INSERT", 100 + i64::try_from(n)?));
        sub.expect_exactly(&want).await?;
        sub.client.assert_no_frame(QUIET).await?;
    }
    Ok(())
}

#[tokio::test]
async fn own_row_payload_is_complete_under_rls() -> Result<()> {
    let env = PgEnv::start(&[], &notes_setup("")).await?;
    let token = user_token("authenticated", USERS[0]);
    let mut sub = Sub::new(&env, "payload", &token, all_notes()).await?;
    env.exec(&format!(
        "insert into notes values (1, '{}', 'mine')",
        USERS[0]
    ))
    .await?;
    let data = sub.next().await?;
    ensure!(
        data["record"] == json!({"id": 1, "owner": USERS[0], "body": "mine"})
            && data["errors"].is_null()
            && data["type"] == "INSERT",
        "{data}"
    );
    Ok(())
}

#[tokio::test]
async fn membership_policy_users_see_only_their_teams_rows() -> Result<()> {
    let env = PgEnv::start(
        &[],
        &format!(
            "create table public.members (team_id int4, user_id uuid, primary key (team_id, user_id));
             grant select on public.members to authenticated;
             insert into members values (1, '{a}'), (1, '{b}'), (2, '{c}'), (1, '{d}'), (2, '{d}');
             create table public.tasks (id int8 primary key, team_id int4 not null, title text);
             alter table public.tasks enable row level security;
             create policy team_read on public.tasks for select to authenticated using (
               exists (select 1 from public.members m
                       where m.team_id = tasks.team_id and m.user_id = auth.uid()));
             grant select on public.tasks to authenticated;
             alter publication {TEST_PUBLICATION} add table public.tasks;",
            a = USERS[0],
            b = USERS[1],
            c = USERS[2],
            d = USERS[3]
        ),
    )
    .await?;
    let bindings = json!([{"event": "*", "schema": "public", "table": "tasks"}]);
    let mut subs = Vec::new();
    for (n, user) in USERS.iter().enumerate() {
        let token = user_token("authenticated", user);
        subs.push(Sub::new(&env, &format!("member{n}"), &token, bindings.clone()).await?);
    }
    // Teams 1, 2, 3 round-robin; nobody is in team 3.
    for id in 1..=9_i64 {
        let team = (id - 1) % 3 + 1;
        env.exec(&format!(
            "insert into tasks values ({id}, {team}, 'task {id}')"
        ))
        .await?;
    }
    env.exec("update tasks set title = 'edited' where id in (1, 2, 3)")
        .await?;
    // Barrier: one row for team 1 and one for team 2.
    env.exec(
        "insert into tasks values (100, 1, 'last'); insert into tasks values (200, 2, 'last');",
    )
    .await?;
    let team1 = [1, 4, 7];
    let team2 = [2, 5, 8];
    let mut want1 = ins(team1);
    want1.extend([("UPDATE", 1), ("INSERT", 100)]);
    let mut want2 = ins(team2);
    want2.extend([("UPDATE", 2), ("INSERT", 200)]);
    let mut want_both = ins([1, 2, 4, 5, 7, 8]);
    want_both.extend([
        ("UPDATE", 1),
        ("UPDATE", 2),
        ("INSERT", 100),
        ("INSERT", 200),
    ]);
    for (n, sub) in subs.iter_mut().enumerate() {
        let want = match n {
            0 | 1 => &want1,
            2 => &want2,
            _ => &want_both,
        };
        sub.expect_exactly(want).await?;
        sub.client.assert_no_frame(QUIET).await?;
    }
    Ok(())
}

#[tokio::test]
async fn anon_without_policy_gets_nothing_and_service_role_gets_everything() -> Result<()> {
    let env = PgEnv::start(&[], &notes_setup("")).await?;
    let bindings = json!([
        {"event": "*", "schema": "public", "table": "notes"},
        {"event": "*", "schema": "public", "table": "open_board"}
    ]);
    let anon_token = user_token("anon", USERS[0]);
    let mut anon = Sub::new(&env, "anon", &anon_token, bindings.clone()).await?;
    let service_token = user_token("service_role", USERS[3]);
    let mut service = Sub::new(&env, "service", &service_token, bindings).await?;
    for id in 1..=3_i64 {
        env.exec(&format!(
            "insert into notes values ({id}, '{}', 'x')",
            USERS[usize::try_from(id - 1)?]
        ))
        .await?;
    }
    env.exec("update notes set body = 'y' where id = 1").await?;
    // Barrier: a row of a table without RLS, committed after the others.
    env.exec("insert into open_board values (1000, 'hello')")
        .await?;
    let first = anon.next().await?;
    ensure!(
        first["table"] == "open_board" && first["record"]["id"] == 1000,
        "anon (no policy) must not receive RLS rows; got {first}"
    );
    anon.client.assert_no_frame(QUIET).await?;
    service
        .expect_exactly(&[
            ("INSERT", 1),
            ("INSERT", 2),
            ("INSERT", 3),
            ("UPDATE", 1),
            ("INSERT", 1000),
        ])
        .await?;
    Ok(())
}

#[tokio::test]
async fn deletes_with_the_old_row_reach_only_subscribers_whose_policies_admitted_it() -> Result<()>
{
    let env = PgEnv::start(
        &[],
        &notes_setup("alter table public.notes replica identity full;"),
    )
    .await?;
    let mut subs = Vec::new();
    for (n, user) in USERS.iter().take(2).enumerate() {
        let token = user_token("authenticated", user);
        let bindings = json!([{"event": "DELETE", "schema": "public", "table": "notes"}]);
        subs.push(Sub::new(&env, &format!("deleter{n}"), &token, bindings).await?);
    }
    env.exec(&format!(
        "insert into notes values (1, '{a}', 'a'), (2, '{b}', 'b'), (3, '{a}', 'a'), (4, '{b}', 'b');
         delete from notes where id = 1; delete from notes where id = 2;
         delete from notes where id = 3; delete from notes where id = 4;",
        a = USERS[0],
        b = USERS[1]
    ))
    .await?;
    // Each owner gets its own deletes only (the later one is the barrier: commit order), with
    // the key only, as the reference's DELETE on an RLS table.
    for (sub, own) in subs.iter_mut().zip([[1, 3], [2, 4]]) {
        for id in own {
            let data = sub.next().await?;
            ensure!(
                data["type"] == "DELETE"
                    && data["old_record"] == json!({"id": id})
                    && data.get("record").is_none()
                    && data["errors"].is_null(),
                "{}: expected its own delete {id} with only the key: {data}",
                sub.name
            );
        }
        sub.client.assert_no_frame(QUIET).await?;
    }
    Ok(())
}

#[tokio::test]
async fn deletes_without_the_old_row_keep_the_reference_rule() -> Result<()> {
    let env = PgEnv::start(&[], &notes_setup("")).await?;
    let mut subs = Vec::new();
    for (n, user) in USERS.iter().take(2).enumerate() {
        let token = user_token("authenticated", user);
        let bindings = json!([{"event": "DELETE", "schema": "public", "table": "notes"}]);
        subs.push(Sub::new(&env, &format!("keyed{n}"), &token, bindings).await?);
    }
    env.exec(&format!(
        "insert into notes values (1, '{a}', 'a'), (2, '{b}', 'b');
         delete from notes where id = 1; delete from notes where id = 2;",
        a = USERS[0],
        b = USERS[1]
    ))
    .await?;
    // Without REPLICA IDENTITY FULL there is no old row to judge: every subscriber gets every
    // delete, with the key only.
    for sub in &mut subs {
        for id in [1, 2] {
            let data = sub.next().await?;
            ensure!(
                data["type"] == "DELETE" && data["old_record"] == json!({"id": id}),
                "{}: delete {id} must carry only the primary key: {data}",
                sub.name
            );
        }
        sub.client.assert_no_frame(QUIET).await?;
    }
    Ok(())
}

#[tokio::test]
async fn deleted_rows_are_judged_by_membership_and_restrictive_policies() -> Result<()> {
    let env = PgEnv::start(
        &[],
        &format!(
            "create table public.members (team int4, member uuid);
             grant select on public.members to authenticated;
             insert into public.members values (1, '{a}'), (2, '{b}');
             create table public.docs (id int8 primary key, team int4 not null, status text not null, secret text);
             alter table public.docs replica identity full;
             alter table public.docs enable row level security;
             create policy team_reads on public.docs for select to authenticated
               using (team in (select m.team from public.members m where m.member = auth.uid()));
             create policy no_drafts on public.docs as restrictive for select to authenticated
               using (docs.status <> 'draft');
             grant select (id, team, status) on public.docs to authenticated;
             grant select on public.docs to service_role;
             alter publication {TEST_PUBLICATION} add table public.docs;",
            a = USERS[0],
            b = USERS[1]
        ),
    )
    .await?;
    let bindings = json!([{"event": "DELETE", "schema": "public", "table": "docs"}]);
    let mut subs = Vec::new();
    for (n, user) in USERS.iter().take(2).enumerate() {
        let token = user_token("authenticated", user);
        subs.push(Sub::new(&env, &format!("team{n}"), &token, bindings.clone()).await?);
    }
    let service = user_token("service_role", USERS[2]);
    let mut service = Sub::new(&env, "service", &service, bindings).await?;
    env.exec(
        "insert into docs values (1, 1, 'open', 's1'), (2, 2, 'open', 's2'), (3, 1, 'draft', 's3'),
                                 (4, 1, 'open', 's4'), (5, 2, 'open', 's5');
         delete from docs where id = 1; delete from docs where id = 2; delete from docs where id = 3;
         delete from docs where id = 4; delete from docs where id = 5;",
    )
    .await?;
    // Team 1's member: 1 and 4 (3 is a draft, refused by the restrictive policy); team 2's: 2, 5.
    for (sub, own) in subs.iter_mut().zip([[1, 4], [2, 5]]) {
        for id in own {
            let data = sub.next().await?;
            ensure!(
                data["type"] == "DELETE" && data["old_record"]["id"] == json!(id),
                "{}: expected delete {id}: {data}",
                sub.name
            );
            ensure!(
                data["old_record"].get("secret").is_none(),
                "{}: a column without SELECT was sent: {data}",
                sub.name
            );
        }
        sub.client.assert_no_frame(QUIET).await?;
    }
    // BYPASSRLS: every delete.
    for id in 1..=5 {
        let data = service.next().await?;
        ensure!(
            data["old_record"]["id"] == json!(id),
            "service: expected delete {id}: {data}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn policy_changes_apply_to_the_next_change_without_restart() -> Result<()> {
    let env = PgEnv::start(
        &[],
        &format!(
            "create table public.notes (id int8 primary key, owner uuid not null, body text);
             grant select on public.notes to authenticated;
             alter publication {TEST_PUBLICATION} add table public.notes;"
        ),
    )
    .await?;
    let (a, b) = (USERS[0], USERS[1]);
    let mut sub_a = Sub::new(
        &env,
        "policy-a",
        &user_token("authenticated", a),
        all_notes(),
    )
    .await?;
    let mut sub_b = Sub::new(
        &env,
        "policy-b",
        &user_token("authenticated", b),
        all_notes(),
    )
    .await?;

    // 0. No row level security: everyone reads everything.
    env.exec(&format!("insert into notes values (1, '{a}', 'open')"))
        .await?;
    sub_a.expect_exactly(&[("INSERT", 1)]).await?;
    sub_b.expect_exactly(&[("INSERT", 1)]).await?;

    // 1. RLS enabled with an owner-only policy.
    env.exec(
        "alter table notes enable row level security;
         create policy own on notes for select to authenticated using (owner = auth.uid());",
    )
    .await?;
    env.exec(&format!(
        "insert into notes values (2, '{a}', 'a'); insert into notes values (3, '{b}', 'b');"
    ))
    .await?;
    sub_a.expect_exactly(&[("INSERT", 2)]).await?;
    sub_b.expect_exactly(&[("INSERT", 3)]).await?;

    // 2. The policy replaced by one that lets everyone read.
    env.exec(
        "drop policy own on notes;
         create policy everyone on notes for select to authenticated using (true);",
    )
    .await?;
    env.exec(&format!("insert into notes values (4, '{a}', 'a')"))
        .await?;
    sub_a.expect_exactly(&[("INSERT", 4)]).await?;
    sub_b.expect_exactly(&[("INSERT", 4)]).await?;

    // 3. Back to owner-only.
    env.exec(
        "drop policy everyone on notes;
         create policy own_again on notes for select to authenticated using (owner = auth.uid());",
    )
    .await?;
    env.exec(&format!(
        "insert into notes values (5, '{a}', 'a'); insert into notes values (6, '{b}', 'b');"
    ))
    .await?;
    sub_a.expect_exactly(&[("INSERT", 5)]).await?;
    sub_b.expect_exactly(&[("INSERT", 6)]).await?;
    sub_a.client.assert_no_frame(QUIET).await?;
    sub_b.client.assert_no_frame(QUIET).await?;
    Ok(())
}

#[tokio::test]
async fn access_token_refresh_switches_the_claims_used_for_rls() -> Result<()> {
    let env = PgEnv::start(&[], &notes_setup("")).await?;
    let (a, b) = (USERS[0], USERS[1]);
    let token_a = user_token("authenticated", a);
    let token_b = user_token("authenticated", b);
    let mut client = env.client(&token_a).await?;
    let topic = "realtime:refresh";
    let (join_ref, _) = client
        .join_changes(topic, all_notes(), Some(&token_a))
        .await?;
    env.exec(&format!(
        "insert into notes values (1, '{b}', 'b'); insert into notes values (2, '{a}', 'a');"
    ))
    .await?;
    let first = client.next_change(topic).await?;
    ensure!(
        first.payload["data"]["record"]["id"] == 2,
        "before the refresh only user A's row: {}",
        first.raw
    );

    client
        .push(
            Some(&join_ref),
            topic,
            "access_token",
            &json!({"access_token": token_b}),
        )
        .await?;
    // The socket handles pushes in order: once the heartbeat is answered, the refresh is done.
    client.heartbeat().await?;
    env.exec(&format!(
        "insert into notes values (3, '{a}', 'a'); insert into notes values (4, '{b}', 'b');"
    ))
    .await?;
    let next = client.next_change(topic).await?;
    ensure!(
        next.payload["data"]["record"]["id"] == 4,
        "after refreshing to user B's token, user A's row 3 must not arrive: {}",
        next.raw
    );
    client.assert_no_frame(QUIET).await?;
    Ok(())
}
