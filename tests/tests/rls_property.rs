//! Row level security as a property: random users, team memberships, policies (owner,
//! membership, a restrictive one, a column without SELECT) and a random sequence of INSERT,
//! UPDATE and DELETE (owner and team changes included), membership changes and token switches
//! mid-stream. After every change the test asks PostgreSQL what each subscriber's current
//! identity may SELECT (for a DELETE: the row just before it), and at the end compares every
//! delivery with that: 0 wrong deliveries, 0 missing, 0 duplicated, in commit order, and no
//! column without SELECT ever sent.
//!
//! The server judges a change when it delivers it (by key for INSERT/UPDATE, on the old image
//! for a DELETE of a `REPLICA IDENTITY FULL` table). So that "the moment" of the oracle and of
//! the server are the same, changes go in batches of distinct rows (a row's visibility depends
//! only on that row and the memberships), and before the next batch, a membership change or a
//! token switch, the test waits until a `service_role` sentinel in the same cohort received the
//! batch's last change: by then every subscriber's decision for the batch is made.
//!
//! Size and seed: `RLS_PROPERTY_CHANGES` (default 1,000, the CI run) and `RLS_PROPERTY_SEED`
//! (default fixed). The long run (`RLS_PROPERTY_CHANGES=100000`) is described in
//! docs/SECURITY.md with its figures.
// Test-only indexing into vectors this test sized itself.
#![allow(clippy::indexing_slicing)]

use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use realtide_tests::{Client, Incoming, PgEnv, TEST_PUBLICATION, user_token};
use serde_json::{Value, json};

const USERS: usize = 5;
const TEAMS: i32 = 3;

/// splitmix64: a fixed seed reproduces a run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn uid(user: usize) -> String {
    format!("{user:08x}-0000-4000-8000-000000000000")
}

/// What a subscriber must receive: `(type, id, version)`; the version is the row's `body`
/// (unique per change) for INSERT/UPDATE, and 0 for DELETE (ids are never reused).
type Expected = (String, i64, i64);

struct Subscriber {
    client: Client,
    topic: String,
    join_ref: String,
    /// The user whose token is in force on the channel.
    identity: usize,
    expected: Vec<Expected>,
    received: Vec<Value>,
}

/// `(type, id, version)` of a delivered change.
fn key_of(data: &Value) -> Expected {
    let kind = data["type"].as_str().unwrap_or_default().to_owned();
    if kind == "DELETE" {
        return (kind, data["old_record"]["id"].as_i64().unwrap_or(-1), 0);
    }
    let record = &data["record"];
    let version = record["body"]
        .as_str()
        .and_then(|b| b.strip_prefix('v'))
        .and_then(|v| v.parse().ok())
        .unwrap_or(-1);
    (kind, record["id"].as_i64().unwrap_or(-1), version)
}

/// Whether `user` (role `authenticated`, its claims) may SELECT row `id` now.
async fn may_select(env: &PgEnv, user: usize, id: i64) -> Result<bool> {
    let sub = uid(user);
    let claims = json!({"role": "authenticated", "sub": sub}).to_string();
    env.db
        .batch_execute(&format!(
            "begin; set local role authenticated; \
             select set_config('request.jwt.claims', '{claims}', true), \
                    set_config('request.jwt.claim.sub', '{sub}', true);"
        ))
        .await?;
    let row = env
        .db
        .query_one(
            "select exists(select 1 from public.p_docs where id = $1)",
            &[&id],
        )
        .await;
    env.db.batch_execute("rollback").await?;
    Ok(row?.get(0))
}

/// Changes applied between two waits for the sentinel (on distinct rows, so none of them
/// changes what another one shows: a row's visibility depends on that row and memberships).
const BATCH: usize = 50;

/// Waits until the sentinel received `last` (every decision up to it is made), then reads
/// what the subscribers received.
async fn settle(
    sentinel: &mut Client,
    topic: &str,
    last: &mut Option<Expected>,
    touched: &mut std::collections::HashSet<i64>,
    subs: &mut [Subscriber],
) -> Result<()> {
    if let Some(want) = last.take() {
        loop {
            let msg = sentinel.next_change(topic).await?;
            if key_of(&msg.payload["data"]) == want {
                break;
            }
        }
    }
    touched.clear();
    for sub in subs {
        drain(sub).await?;
    }
    Ok(())
}

/// Reads what arrived on a subscriber's socket without waiting.
async fn drain(sub: &mut Subscriber) -> Result<()> {
    while let Some(item) = sub
        .client
        .recv_timeout(std::time::Duration::from_millis(0))
        .await?
    {
        match item {
            Incoming::Text(msg) if msg.topic == sub.topic && msg.event == "postgres_changes" => {
                sub.received.push(msg.payload["data"].clone());
            }
            Incoming::Eof(why) => bail!("subscriber socket ended: {why}"),
            _ => {}
        }
    }
    Ok(())
}

#[tokio::test]
async fn rls_deliveries_match_what_each_user_may_select() -> Result<()> {
    let changes: usize = std::env::var("RLS_PROPERTY_CHANGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let seed: u64 = std::env::var("RLS_PROPERTY_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_2026);
    let mut rng = Rng(seed);
    // Policies drawn from the seed: the owner policy always, the others sometimes.
    let team_policy = rng.below(4) != 0;
    let restrictive = rng.below(2) == 0;
    let mut setup = format!(
        "create table public.p_members (team int4, member uuid, primary key (team, member));
         grant select on public.p_members to authenticated;
         create table public.p_docs (id int8 primary key, owner uuid not null, team int4 not null,
                                     level int4 not null, body text not null, secret text);
         alter table public.p_docs replica identity full;
         alter table public.p_docs enable row level security;
         create policy p_owner on public.p_docs for select to authenticated using (owner = auth.uid());
         grant select (id, owner, team, level, body) on public.p_docs to authenticated;
         grant select on public.p_docs to service_role;
         alter publication {TEST_PUBLICATION} add table public.p_docs;"
    );
    if team_policy {
        setup.push_str(
            "create policy p_team on public.p_docs for select to authenticated using
               (team in (select m.team from public.p_members m where m.member = auth.uid()));",
        );
    }
    if restrictive {
        setup.push_str(
            "create policy p_level on public.p_docs as restrictive for select to authenticated
               using (level < 3);",
        );
    }
    for user in 0..USERS {
        for team in 0..TEAMS {
            if rng.below(3) == 0 {
                setup.push_str(&format!(
                    "insert into public.p_members values ({team}, '{}');",
                    uid(user)
                ));
            }
        }
    }
    let env = PgEnv::start(&[], &setup).await?;
    let bindings = json!([{"event": "*", "schema": "public", "table": "p_docs"}]);
    let mut subs = Vec::new();
    for user in 0..USERS {
        let token = user_token("authenticated", &uid(user));
        let mut client = env.client(&token).await?;
        let topic = format!("realtime:rls-property-{user}");
        let (join_ref, _) = client
            .join_changes(&topic, bindings.clone(), Some(&token))
            .await?;
        subs.push(Subscriber {
            client,
            topic,
            join_ref,
            identity: user,
            expected: Vec::new(),
            received: Vec::new(),
        });
    }
    let service = user_token("service_role", &uid(99));
    let mut sentinel = env.client(&service).await?;
    let sentinel_topic = "realtime:rls-property-sentinel";
    sentinel
        .join_changes(sentinel_topic, bindings, Some(&service))
        .await?;

    let started = Instant::now();
    let mut rows: Vec<i64> = Vec::new();
    let mut next_id = 1i64;
    let (mut switches, mut memberships, mut row_changes) = (0, 0, 0);
    let mut heartbeat_at = Instant::now();
    let mut last: Option<Expected> = None;
    let mut touched = std::collections::HashSet::new();
    for version in 0..changes as i64 {
        // Sockets that send nothing are closed after WEBSOCKET_IDLE_TIMEOUT_MS.
        if heartbeat_at.elapsed() > std::time::Duration::from_secs(15) {
            heartbeat_at = Instant::now();
            sentinel.send_heartbeat().await?;
            for sub in &mut subs {
                sub.client.send_heartbeat().await?;
            }
        }
        let op = rng.below(100);
        // Memberships and token switches change what every row shows: everything before them
        // is decided first.
        if op >= 85 || touched.len() >= BATCH {
            settle(
                &mut sentinel,
                sentinel_topic,
                &mut last,
                &mut touched,
                &mut subs,
            )
            .await?;
        }
        let change = if op < 40 || rows.is_empty() {
            let id = next_id;
            next_id += 1;
            let owner = rng.below(USERS as u64) as usize;
            let team = rng.below(TEAMS as u64);
            let level = rng.below(4);
            env.exec(&format!(
                "insert into public.p_docs values ({id}, '{}', {team}, {level}, 'v{version}', 'secret')",
                uid(owner)
            ))
            .await?;
            rows.push(id);
            Some(("INSERT", id, version))
        } else if op < 70 {
            let id = rows[rng.below(rows.len() as u64) as usize];
            if touched.contains(&id) {
                settle(
                    &mut sentinel,
                    sentinel_topic,
                    &mut last,
                    &mut touched,
                    &mut subs,
                )
                .await?;
            }
            let set = match rng.below(3) {
                0 => format!("owner = '{}'", uid(rng.below(USERS as u64) as usize)),
                1 => format!("team = {}", rng.below(TEAMS as u64)),
                _ => format!("level = {}", rng.below(4)),
            };
            env.exec(&format!(
                "update public.p_docs set {set}, body = 'v{version}' where id = {id}"
            ))
            .await?;
            Some(("UPDATE", id, version))
        } else if op < 85 {
            let at = rng.below(rows.len() as u64) as usize;
            let id = rows.swap_remove(at);
            if touched.contains(&id) {
                settle(
                    &mut sentinel,
                    sentinel_topic,
                    &mut last,
                    &mut touched,
                    &mut subs,
                )
                .await?;
            }
            // A DELETE is judged on the row just before it.
            for sub in &mut subs {
                if may_select(&env, sub.identity, id).await? {
                    sub.expected.push(("DELETE".into(), id, 0));
                }
            }
            env.exec(&format!("delete from public.p_docs where id = {id}"))
                .await?;
            Some(("DELETE", id, 0))
        } else if op < 95 {
            let team = rng.below(TEAMS as u64);
            let member = uid(rng.below(USERS as u64) as usize);
            env.exec(&format!(
                "delete from public.p_members where team = {team} and member = '{member}';
                 insert into public.p_members select {team}, '{member}' where {};",
                rng.below(2) == 0
            ))
            .await?;
            memberships += 1;
            None
        } else {
            // Token switch: every decision so far was made (the sentinel got the last change).
            let at = rng.below(USERS as u64) as usize;
            let to = rng.below(USERS as u64) as usize;
            let sub = &mut subs[at];
            let token = user_token("authenticated", &uid(to));
            let join_ref = sub.join_ref.clone();
            let topic = sub.topic.clone();
            sub.client
                .push(
                    Some(&join_ref),
                    &topic,
                    "access_token",
                    &json!({"access_token": token}),
                )
                .await?;
            // Processed in order: once the heartbeat is answered, the switch is in force.
            // (Changes arriving meanwhile are kept.)
            let reference = sub.client.send_heartbeat().await?;
            loop {
                match sub.client.recv().await? {
                    Incoming::Text(msg)
                        if msg.topic == "phoenix"
                            && msg.reference.as_deref() == Some(reference.as_str()) =>
                    {
                        break;
                    }
                    Incoming::Text(msg)
                        if msg.topic == topic && msg.event == "postgres_changes" =>
                    {
                        sub.received.push(msg.payload["data"].clone());
                    }
                    item if item.is_end() => bail!("socket ended during a token switch: {item:?}"),
                    _ => {}
                }
            }
            sub.identity = to;
            switches += 1;
            None
        };
        let Some((kind, id, version)) = change else {
            continue;
        };
        row_changes += 1;
        if kind != "DELETE" {
            for sub in &mut subs {
                if may_select(&env, sub.identity, id).await? {
                    sub.expected.push((kind.into(), id, version));
                }
            }
        }
        last = Some((kind.into(), id, version));
        touched.insert(id);
    }
    settle(
        &mut sentinel,
        sentinel_topic,
        &mut last,
        &mut touched,
        &mut subs,
    )
    .await?;
    // Barrier: a row each subscriber's current identity owns, inserted last (others may see
    // them too, through a team).
    let mut barrier_ids = Vec::new();
    for sub in &subs {
        let id = next_id;
        next_id += 1;
        let version = changes as i64 + id;
        env.exec(&format!(
            "insert into public.p_docs values ({id}, '{}', 0, 0, 'v{version}', 'secret')",
            uid(sub.identity)
        ))
        .await?;
        barrier_ids.push((id, version));
    }
    for (id, version) in barrier_ids {
        for sub in &mut subs {
            if may_select(&env, sub.identity, id).await? {
                sub.expected.push(("INSERT".into(), id, version));
            }
        }
    }
    let mut deliveries = 0;
    for sub in &mut subs {
        let last = sub.expected.last().cloned().context("no barrier")?;
        let deadline = Instant::now() + std::time::Duration::from_secs(60);
        while sub.received.last().map(key_of) != Some(last.clone()) {
            ensure!(
                Instant::now() < deadline,
                "{}: barrier {last:?} not delivered",
                sub.topic
            );
            if let Some(Incoming::Text(msg)) = sub
                .client
                .recv_timeout(std::time::Duration::from_millis(200))
                .await?
                && msg.topic == sub.topic
                && msg.event == "postgres_changes"
            {
                sub.received.push(msg.payload["data"].clone());
            }
        }
        for data in &sub.received {
            for side in ["record", "old_record"] {
                ensure!(
                    data[side].get("secret").is_none(),
                    "{}: a column without SELECT was sent: {data}",
                    sub.topic
                );
            }
        }
        let got: Vec<Expected> = sub.received.iter().map(key_of).collect();
        let wrong: Vec<&Expected> = got.iter().filter(|g| !sub.expected.contains(g)).collect();
        let missing: Vec<&Expected> = sub.expected.iter().filter(|e| !got.contains(e)).collect();
        ensure!(
            wrong.is_empty() && missing.is_empty() && got == sub.expected,
            "{}: wrong {wrong:?}, missing {missing:?} (seed {seed}, team policy {team_policy}, restrictive {restrictive})",
            sub.topic
        );
        deliveries += got.len();
    }
    println!(
        "rls property: seed={seed} changes={row_changes} memberships={memberships} switches={switches} \
         deliveries={deliveries} wrong=0 missing=0 duplicate=0 team_policy={team_policy} \
         restrictive={restrictive} elapsed={:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
