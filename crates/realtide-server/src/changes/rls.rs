//! Row level security for postgres_changes: which (claims group, change) pairs may be read,
//! checked once per role and table in pipelined transactions (`select ... join unnest($keys)`
//! under the subscriber's role and claims), after the changes' transactions are visible; and
//! which columns a subscriber sees.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::maybe_done;
use indexmap::IndexMap;

use crate::changes::change::{Cell, Change, ChangeKind};
use crate::changes::subscriptions::ChannelChanges;
use crate::db::catalog::Table;
use crate::db::claims::ClaimsGroup;
use crate::db::pool::{DbError, Pool};
use realtide_replication::sql::quote_ident;

/// Waits briefly for the transactions `xids` to become visible to a new snapshot; returns
/// [`DbError::NotVisible`] when one still is not (the caller retries later).
pub(crate) async fn ensure_visible(pool: &Pool, xids: &[u32]) -> Result<(), DbError> {
    // The 32-bit xids from pgoutput are widened to full ones next to the snapshot's xmax (a
    // running transaction is within 2^31 of it), then tested against the current snapshot.
    const SQL: &str = "select coalesce(bool_and(pg_visible_in_snapshot(\
        (case when f > m + 2147483648 then f - 4294967296 \
              when f < m - 2147483648 then f + 4294967296 else f end)::text::xid8, s)), true) \
        from (select s, pg_snapshot_xmax(s)::text::int8 as m from pg_current_snapshot() s) snap, \
        lateral (select ((m >> 32) << 32) + x as f from unnest($1::int8[]) x) full_xids";
    let xids: Vec<i64> = xids.iter().map(|x| i64::from(*x)).collect();
    let conn = pool.client().await?;
    let statement = conn.prepared(SQL).await?;
    let mut delay = Duration::from_millis(2);
    let started = std::time::Instant::now();
    loop {
        let row = conn
            .query_one(&statement, &[&xids])
            .await
            .map_err(DbError::query("visibility check"))?;
        if row.get::<_, bool>(0) {
            return Ok(());
        }
        if started.elapsed() > Duration::from_millis(200) {
            return Err(DbError::NotVisible);
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(50));
    }
}

/// RLS applies to INSERT/UPDATE on tables with row level security and a primary key the role
/// may select, and to DELETE where the old row came whole (`REPLICA IDENTITY FULL`): it is
/// then judged on that image ([`old_image_visible`]). A DELETE with only the key keeps the
/// reference's rule (every subscriber gets the key). Without a key (`Error 400`) or without
/// SELECT on it (`Error 401`) the subscriber gets the reference's error row, which carries no
/// row data, instead.
pub(crate) fn needs_rls(change: &Change, selectable: &[bool]) -> bool {
    let table = &change.table;
    table.rls
        && (change.kind != ChangeKind::Delete || has_old_image(change))
        && !table.primary_key.is_empty()
        && table
            .primary_key
            .iter()
            .all(|i| selectable.get(*i).copied().unwrap_or(false))
}

/// A DELETE whose old row came whole, every value present.
fn has_old_image(change: &Change) -> bool {
    change.kind == ChangeKind::Delete
        && !change.old_key_only
        && change
            .old
            .as_ref()
            .is_some_and(|old| !old.iter().any(|cell| matches!(cell, Cell::Toast)))
}

/// Columns a channel sees: selectable by its role, and within its `select` lists (plus keys).
pub(crate) fn visibility(
    change: &Change,
    selectable: &[bool],
    channel: &ChannelChanges,
    ids: &[u32],
) -> Vec<bool> {
    let table = &change.table;
    let mut selected: Option<Vec<bool>> = None;
    for binding in channel.bindings.iter().filter(|b| ids.contains(&b.id)) {
        match &binding.select {
            None => {
                selected = None;
                break;
            }
            Some(names) => {
                let mask = selected.get_or_insert_with(|| vec![false; table.columns.len()]);
                for (i, column) in table.columns.iter().enumerate() {
                    if (names.contains(&column.name) || table.primary_key.contains(&i))
                        && let Some(slot) = mask.get_mut(i)
                    {
                        *slot = true;
                    }
                }
            }
        }
    }
    (0..table.columns.len())
        .map(|i| {
            selectable.get(i).copied().unwrap_or(false)
                && selected
                    .as_ref()
                    .is_none_or(|m| m.get(i).copied().unwrap_or(false))
        })
        .collect()
}

/// The claims groups (by claims text) to check against one table for one role.
pub(crate) type TableChecks<'a> = (Arc<Table>, IndexMap<&'a str, GroupCheck>);

/// The changes one claims group must be checked for.
#[derive(Debug)]
pub(crate) struct GroupCheck {
    pub(crate) claims: Arc<ClaimsGroup>,
    pub(crate) indices: Vec<usize>,
}

/// Checks a chunk of claims groups of one role on one connection. First all together in one
/// pipelined transaction; if anything in it fails, each group alone, so that one failing
/// group cannot hide rows from the others. A group whose check fails gets nothing.
///
/// A failure to reach the database is returned (the batch is retried later); a group whose
/// check itself fails (a policy that raises an error for its claims) gets nothing.
pub(crate) async fn check_chunk(
    pool: &Pool,
    slot: usize,
    role: &str,
    table: Arc<Table>,
    changes: &[Arc<Change>],
    groups: Vec<GroupCheck>,
) -> Result<Vec<(Arc<ClaimsGroup>, Vec<usize>)>, DbError> {
    // Deleted rows are judged on their old image; the rest by key against the table.
    let is_image = |ci: &usize| changes.get(*ci).is_some_and(|c| has_old_image(c));
    if groups.iter().any(|g| g.indices.iter().any(is_image)) {
        let (mut imaged, mut keyed) = (Vec::new(), Vec::new());
        for group in groups {
            let (images, keys): (Vec<usize>, Vec<usize>) =
                group.indices.iter().partition(|ci| is_image(ci));
            imaged.push(GroupCheck {
                claims: group.claims.clone(),
                indices: images,
            });
            keyed.push(GroupCheck {
                claims: group.claims,
                indices: keys,
            });
        }
        let mut results = old_images_visible(pool, slot, role, &table, changes, &imaged).await?;
        keyed.retain(|g| !g.indices.is_empty());
        if !keyed.is_empty() {
            let by_key = Box::pin(check_chunk(pool, slot, role, table, changes, keyed)).await?;
            results.extend(by_key);
        }
        return Ok(results);
    }
    let looped = match rls_visible_looped(pool, slot, role, &table, changes, &groups).await {
        Ok(allowed) => Ok(allowed),
        Err(error) if error.is_transient() => return Err(error),
        Err(error) => {
            tracing::debug!(%error, role, "looped row level security check failed; pipelining");
            rls_visible_many(pool, slot, role, &table, changes, &groups).await
        }
    };
    match looped {
        Ok(allowed) => Ok(groups.into_iter().map(|g| g.claims).zip(allowed).collect()),
        Err(error) if error.is_transient() => Err(error),
        Err(error) => {
            tracing::debug!(%error, role, "batched row level security check failed; checking groups one by one");
            let mut results = Vec::with_capacity(groups.len());
            for group in groups {
                let alone = std::slice::from_ref(&group);
                let allowed = match rls_visible_many(pool, slot, role, &table, changes, alone).await
                {
                    Ok(mut allowed) => allowed.pop().unwrap_or_default(),
                    Err(error) if error.is_transient() => return Err(error),
                    Err(error) => {
                        // Never deliver a row we could not check.
                        tracing::warn!(%error, role, "row level security check failed");
                        Vec::new()
                    }
                };
                results.push((group.claims, allowed));
            }
            Ok(results)
        }
    }
}

/// Primary key values of the changes, one text array per key column.
fn key_arrays(
    table: &Table,
    changes: &[Arc<Change>],
    indices: &[usize],
) -> Vec<Vec<Option<String>>> {
    table
        .primary_key
        .iter()
        .map(|column| {
            indices
                .iter()
                .map(|ci| {
                    changes
                        .get(*ci)
                        .and_then(|c| c.pk_text(*column))
                        .map(str::to_owned)
                })
                .collect()
        })
        .collect()
}

/// `select <ordinal> from unnest($keys) join <table> on <primary key>`: the positions of the
/// keys whose rows the current role and claims can read.
fn visibility_sql(table: &Table) -> String {
    let key_columns: Vec<_> = table
        .primary_key
        .iter()
        .filter_map(|i| table.columns.get(*i))
        .collect();
    // The keys are cast as whole arrays, outside the table's row security barrier: a cast
    // inside the join condition is not leakproof, which would keep PostgreSQL from using the
    // primary key index and make it filter the whole table through the policy.
    let params: Vec<String> = key_columns
        .iter()
        .enumerate()
        .map(|(n, column)| format!("${}::text[]::{}[]", n + 1, column.type_sql))
        .collect();
    let names: Vec<String> = (1..=key_columns.len()).map(|n| format!("k{n}")).collect();
    let join: Vec<String> = key_columns
        .iter()
        .zip(&names)
        .map(|(column, name)| format!("t.{} = u.{name}", quote_ident(&column.name)))
        .collect();
    format!(
        "select (u.n - 1)::int4 from unnest({}) with ordinality as u({}, n) join {} t on {}",
        params.join(", "),
        names.join(", "),
        table.qualified_name(),
        join.join(" and ")
    )
}

/// Checks claims groups of one role with one call to a session function that loops over the
/// groups inside PostgreSQL: per group it sets the claims and runs the visibility query, whose
/// plan PL/pgSQL caches (the role does not change within the call; the generic plan is forced,
/// as custom plans for the key slices cost about four times more). One statement per chunk
/// instead of two per group.
async fn rls_visible_looped(
    pool: &Pool,
    slot: usize,
    role: &str,
    table: &Table,
    changes: &[Arc<Change>],
    groups: &[GroupCheck],
) -> Result<Vec<Vec<usize>>, DbError> {
    let conn = pool.client_at(slot).await?;
    let key_columns: Vec<_> = table
        .primary_key
        .iter()
        .filter_map(|i| table.columns.get(*i))
        .collect();
    let args: Vec<String> = (1..=key_columns.len())
        .map(|n| format!("keys{n} text[]"))
        .collect();
    // The text key arrays are cast to the key types once per call, into local arrays that are
    // then sliced per group: slicing the text parameter and casting per group cost about twice
    // as much per (group, key) pair (measured: 5.3 µs against 2.8 µs with a membership policy).
    let locals: Vec<String> = key_columns
        .iter()
        .enumerate()
        .map(|(n, c)| {
            format!(
                "kv{n1} {t}[] := keys{n1}::{t}[];",
                n1 = n + 1,
                t = c.type_sql
            )
        })
        .collect();
    let unnest: Vec<String> = (1..=key_columns.len())
        .map(|n| format!("kv{n}[starts[i]:starts[i + 1] - 1]"))
        .collect();
    let names: Vec<String> = (1..=key_columns.len()).map(|n| format!("k{n}")).collect();
    let join: Vec<String> = key_columns
        .iter()
        .zip(&names)
        .map(|(column, name)| format!("t.{} = u.{name}", quote_ident(&column.name)))
        .collect();
    let body = format!(
        "create or replace function pg_temp.{{name}}(claims text[], subs text[], starts int4[], {}) \
         returns table(grp int4, pos int4) language plpgsql \
         set plan_cache_mode = force_generic_plan as $realtide$ \
         #variable_conflict use_column\n\
         declare i int4; {} \
         begin \
           for i in 1 .. coalesce(array_length(claims, 1), 0) loop \
             perform set_config('request.jwt.claims', claims[i], true), set_config('request.jwt.claim.sub', subs[i], true); \
             return query select i, (u.ord - 1)::int4 from unnest({}) with ordinality as u({}, ord) join {} t on {}; \
           end loop; \
         end $realtide$",
        args.join(", "),
        locals.join(" "),
        unnest.join(", "),
        names.join(", "),
        table.qualified_name(),
        join.join(" and ")
    );
    let name = format!(
        "realtide_rls_{:016x}",
        realtide_protocol::message::fnv1a(body.as_bytes())
    );
    conn.ensure(&name, &body.replace("{name}", &name)).await?;
    let params: Vec<String> = (1..=key_columns.len() + 3)
        .map(|n| format!("${n}"))
        .collect();
    let call = conn
        .prepared(&format!(
            "select grp, pos from pg_temp.{name}({})",
            params.join(", ")
        ))
        .await?;
    let begin = conn.prepared("begin").await?;
    let set_role = conn
        .prepared(
            "select set_config('role', $1, true), set_config('request.jwt.claim.role', $1, true)",
        )
        .await?;
    let rollback = conn.prepared("rollback").await?;

    let claims: Vec<&str> = groups.iter().map(|g| g.claims.claims.as_str()).collect();
    let subs: Vec<&str> = groups
        .iter()
        .map(|g| g.claims.sub.as_deref().unwrap_or(""))
        .collect();
    let mut starts: Vec<i32> = Vec::with_capacity(groups.len() + 1);
    let mut keys: Vec<Vec<Option<&str>>> = vec![Vec::new(); key_columns.len()];
    let mut next = 1i32;
    for group in groups {
        starts.push(next);
        for ci in &group.indices {
            for (array, column) in keys.iter_mut().zip(&table.primary_key) {
                array.push(changes.get(*ci).and_then(|c| c.pk_text(*column)));
            }
            next += 1;
        }
    }
    starts.push(next);
    let mut call_params: Vec<SqlParam<'_>> = vec![&claims, &subs, &starts];
    call_params.extend(keys.iter().map(|k| k as SqlParam<'_>));
    let role_param: [SqlParam<'_>; 1] = [&role];
    // Sent back to back: one round trip.
    let (began, set, rows, ended) = tokio::join!(
        conn.execute(&begin, &[]),
        conn.execute(&set_role, &role_param),
        conn.query(&call, &call_params),
        conn.execute(&rollback, &[]),
    );
    began.map_err(DbError::query("rls begin"))?;
    set.map_err(DbError::query("rls role"))?;
    ended.map_err(DbError::query("rls rollback"))?;
    let rows = rows.map_err(DbError::query("rls function"))?;
    let mut allowed = vec![Vec::new(); groups.len()];
    for row in rows {
        let group = usize::try_from(row.get::<_, i32>(0))
            .ok()
            .and_then(|g| g.checked_sub(1));
        let position = usize::try_from(row.get::<_, i32>(1)).ok();
        if let (Some(group), Some(position)) = (group, position)
            && let (Some(slot), Some(index)) = (
                allowed.get_mut(group),
                groups.get(group).and_then(|g| g.indices.get(position)),
            )
        {
            slot.push(*index);
        }
    }
    Ok(allowed)
}

type SqlParam<'a> = &'a (dyn tokio_postgres::types::ToSql + Sync);

/// How a role's SELECT policies apply to a table, as PostgreSQL would apply them: whether row
/// level security applies to the role at all (not for superusers, `BYPASSRLS` roles and the
/// owner unless `FORCE ROW LEVEL SECURITY`), and the policies' `USING` expressions for that
/// role, deparsed: permissive ones OR'ed (none: nothing is visible), restrictive ones AND'ed.
const POLICIES_SQL: &str = "\
    with target as (select c.oid, c.relrowsecurity, c.relforcerowsecurity, c.relowner \
                    from pg_class c where c.oid = $1), \
         applicable as (select p.polpermissive, pg_get_expr(p.polqual, p.polrelid) as qual \
                    from pg_policy p join target t on p.polrelid = t.oid \
                    where p.polcmd in ('r', '*') and p.polqual is not null \
                      and (0::oid = any(p.polroles) or exists (select 1 from unnest(p.polroles) r \
                           where r <> 0 and pg_has_role($2, r, 'MEMBER')))) \
    select t.relrowsecurity and not coalesce((select rolsuper or rolbypassrls from pg_roles \
                                              where rolname = $2), false) \
             and (t.relforcerowsecurity or not pg_has_role($2, t.relowner, 'USAGE')), \
           coalesce((select string_agg('(' || qual || ')', ' or ') from applicable \
                     where polpermissive), 'false'), \
           coalesce((select string_agg('(' || qual || ')', ' and ') from applicable \
                     where not polpermissive), 'true') \
    from target t";

/// Checks deleted rows on their old image: under each group's role and claims, the table's
/// SELECT policies are evaluated on a row built from the old values (cast to the columns'
/// types, under the table's name, so the policies' column references resolve), never by
/// writing to the table. Returns, per group, the changes whose old row the group could read.
async fn old_images_visible(
    pool: &Pool,
    slot: usize,
    role: &str,
    table: &Table,
    changes: &[Arc<Change>],
    groups: &[GroupCheck],
) -> Result<Vec<(Arc<ClaimsGroup>, Vec<usize>)>, DbError> {
    let conn = pool.client_at(slot).await?;
    let policies = conn.prepared(POLICIES_SQL).await?;
    let row = conn
        .query(&policies, &[&table.oid, &role])
        .await
        .map_err(DbError::query("row level security policies"))?;
    let Some(row) = row.first() else {
        // The table is gone: nothing can be judged, nothing is delivered.
        return Ok(groups
            .iter()
            .map(|g| (g.claims.clone(), Vec::new()))
            .collect());
    };
    let applies: bool = row.get(0);
    if !applies {
        return Ok(groups
            .iter()
            .map(|g| (g.claims.clone(), g.indices.clone()))
            .collect());
    }
    let permissive: String = row.get(1);
    let restrictive: String = row.get(2);
    let width = table.columns.len();
    let columns: Vec<String> = table
        .columns
        .iter()
        .enumerate()
        .map(|(i, column)| {
            format!(
                "($1::text[])[(__realtide_s.__realtide_n - 1) * {width} + {}]::{} as {}",
                i + 1,
                column.type_sql,
                quote_ident(&column.name)
            )
        })
        .collect();
    let sql = format!(
        "select (__realtide_s.__realtide_n - 1)::int4 \
         from generate_series(1, $2::int4) as __realtide_s(__realtide_n), \
         lateral (select {}) as {} where ({permissive}) and ({restrictive})",
        columns.join(", "),
        quote_ident(&table.name),
    );
    let visible = conn.prepared(&sql).await?;
    let begin = conn.prepared("begin").await?;
    let set_role = conn
        .prepared(
            "select set_config('role', $1, true), set_config('request.jwt.claim.role', $1, true)",
        )
        .await?;
    let set_claims = conn
        .prepared(
            "select set_config('request.jwt.claims', $1, true), set_config('request.jwt.claim.sub', $2, true)",
        )
        .await?;
    let rollback = conn.prepared("rollback").await?;
    let mut results = Vec::with_capacity(groups.len());
    for group in groups {
        if group.indices.is_empty() {
            results.push((group.claims.clone(), Vec::new()));
            continue;
        }
        let mut values: Vec<Option<&str>> = Vec::with_capacity(group.indices.len() * width);
        for ci in &group.indices {
            let old = changes.get(*ci).and_then(|c| c.old.as_ref());
            for i in 0..width {
                values.push(match old.and_then(|o| o.get(i)) {
                    Some(Cell::Text(text)) => Some(text.as_str()),
                    _ => None,
                });
            }
        }
        let count = i32::try_from(group.indices.len()).unwrap_or(i32::MAX);
        let sub = group.claims.sub.clone().unwrap_or_default();
        let role_param: [SqlParam<'_>; 1] = [&role];
        let claim_params: [SqlParam<'_>; 2] = [&group.claims.claims, &sub];
        let query_params: [SqlParam<'_>; 2] = [&values, &count];
        let (began, set, claimed, rows, ended) = tokio::join!(
            conn.execute(&begin, &[]),
            conn.execute(&set_role, &role_param),
            conn.execute(&set_claims, &claim_params),
            conn.query(&visible, &query_params),
            conn.execute(&rollback, &[]),
        );
        began.map_err(DbError::query("rls begin"))?;
        ended.map_err(DbError::query("rls rollback"))?;
        let allowed = match (set, claimed, rows) {
            (Ok(_), Ok(_), Ok(rows)) => rows
                .iter()
                .filter_map(|row| usize::try_from(row.get::<_, i32>(0)).ok())
                .filter_map(|n| group.indices.get(n).copied())
                .collect(),
            (set, claimed, rows) => {
                let error = [set.err(), claimed.err(), rows.err()]
                    .into_iter()
                    .flatten()
                    .next();
                if let Some(error) = error {
                    let error = DbError::query("rls old row")(error);
                    if error.is_transient() {
                        return Err(error);
                    }
                    // Never deliver a row we could not check.
                    tracing::warn!(%error, role, "row level security check of a deleted row failed");
                }
                Vec::new()
            }
        };
        results.push((group.claims.clone(), allowed));
    }
    Ok(results)
}

/// Polls futures in order (each sends its request on its first poll, so they reach the
/// connection in this order) and collects their outputs.
async fn join_ordered<F: std::future::Future>(futures: Vec<F>) -> Vec<Option<F::Output>> {
    let mut futures: Vec<_> = futures
        .into_iter()
        .map(|f| Box::pin(maybe_done(f)))
        .collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for future in &mut futures {
            if future.as_mut().poll(cx).is_pending() {
                done = false;
            }
        }
        if done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    futures
        .iter_mut()
        .map(|f| f.as_mut().take_output())
        .collect()
}

/// Checks several claims groups of one role in one pipelined transaction: the role is set once
/// (so the prepared query's plan is reused), then each group's claims and its query.
async fn rls_visible_many(
    pool: &Pool,
    slot: usize,
    role: &str,
    table: &Table,
    changes: &[Arc<Change>],
    groups: &[GroupCheck],
) -> Result<Vec<Vec<usize>>, DbError> {
    let conn = pool.client_at(slot).await?;
    let begin = conn.prepared("begin").await?;
    let set_role = conn
        .prepared(
            "select set_config('role', $1, true), set_config('request.jwt.claim.role', $1, true)",
        )
        .await?;
    let set_claims = conn
        .prepared(
            "select set_config('request.jwt.claims', $1, true), set_config('request.jwt.claim.sub', $2, true)",
        )
        .await?;
    let visible = conn.prepared(&visibility_sql(table)).await?;
    let rollback = conn.prepared("rollback").await?;
    let keys: Vec<Vec<Vec<Option<String>>>> = groups
        .iter()
        .map(|g| key_arrays(table, changes, &g.indices))
        .collect();
    let subs: Vec<String> = groups
        .iter()
        .map(|g| g.claims.sub.clone().unwrap_or_default())
        .collect();
    let role_param: [SqlParam<'_>; 1] = [&role];
    let claim_params: Vec<[SqlParam<'_>; 2]> = groups
        .iter()
        .zip(&subs)
        .map(|(g, sub)| [&g.claims.claims as SqlParam<'_>, sub])
        .collect();
    let key_params: Vec<Vec<SqlParam<'_>>> = keys
        .iter()
        .map(|arrays| arrays.iter().map(|a| a as SqlParam<'_>).collect())
        .collect();

    type Step<'a> = std::pin::Pin<
        Box<
            dyn std::future::Future<
                    Output = Result<Option<Vec<tokio_postgres::Row>>, tokio_postgres::Error>,
                > + Send
                + 'a,
        >,
    >;
    let mut steps: Vec<Step<'_>> = Vec::with_capacity(3 + groups.len() * 2);
    steps.push(Box::pin(async {
        conn.execute(&begin, &[]).await.map(|_| None)
    }));
    steps.push(Box::pin(async {
        conn.execute(&set_role, &role_param).await.map(|_| None)
    }));
    for (claims, params) in claim_params.iter().zip(&key_params) {
        steps.push(Box::pin(async {
            conn.execute(&set_claims, claims).await.map(|_| None)
        }));
        steps.push(Box::pin(async {
            conn.query(&visible, params).await.map(Some)
        }));
    }
    steps.push(Box::pin(async {
        conn.execute(&rollback, &[]).await.map(|_| None)
    }));

    let mut allowed = Vec::with_capacity(groups.len());
    let outputs = join_ordered(steps).await;
    let mut rows_of_groups = Vec::with_capacity(groups.len());
    for output in outputs {
        match output {
            Some(Ok(Some(rows))) => rows_of_groups.push(rows),
            Some(Ok(None)) => {}
            Some(Err(error)) => return Err(DbError::query("rls batch")(error)),
            None => return Err(DbError::NoConnections),
        }
    }
    for (group, rows) in groups.iter().zip(rows_of_groups) {
        allowed.push(
            rows.iter()
                .filter_map(|row| usize::try_from(row.get::<_, i32>(0)).ok())
                .filter_map(|n| group.indices.get(n).copied())
                .collect(),
        );
    }
    Ok(allowed)
}
