//! Delivery of row changes to `postgres_changes` subscribers.
//!
//! A batch of committed changes is matched against every subscription (operation, schema,
//! table, filters), then checked for row level security once per claims group and table with
//! one pipelined transaction (`select ... join unnest($keys)` under the subscriber's role and
//! claims), then rendered: the `data` object once per change and column-visibility, the frame
//! once per `ids` list and serializer, and handed to each channel's outbox.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::join_all;
use indexmap::IndexMap;
use realtide_protocol::Vsn;
use realtide_protocol::encode::{postgres_changes_payload, text_frame};

use crate::changes::change::Change;
use crate::changes::matching::{TableIndex, matching_ids};
use crate::changes::subscriptions::ChannelChanges;
use crate::db::catalog::{Catalog, ColumnMask};
use crate::db::claims::ClaimsGroup;
use crate::db::pool::{DbError, Pool};
use crate::metrics::Metrics;
use crate::outbox::Offer;

use crate::changes::render::{RenderLimits, render_data};
use crate::changes::rls::{
    GroupCheck, TableChecks, check_chunk, ensure_visible, needs_rls, visibility,
};

/// A change matched for a channel: (change index, channel, its claims, matched binding ids).
type Candidate = (usize, Arc<ChannelChanges>, Arc<ClaimsGroup>, Vec<u32>);
/// A rendered frame is shared by channels with the same data, ids, serializer and topic.
type FrameKey = (Arc<str>, Vec<u32>, Vsn, Arc<str>);

/// Delivers the changes `[.., end)` of the journal to `channels` (a cohort whose cursors are
/// all at the first of them); returns the number of messages queued.
///
/// A channel whose queue has no room stops at the first change it could not take (its cursor
/// stays there); the others move to `end`. A database error that may pass (connection,
/// timeout, a transaction not yet visible) moves no cursor: the caller retries later, so a
/// change is never dropped or delivered unchecked because the database was unavailable.
pub async fn deliver(
    changes: &[Arc<Change>],
    channels: &[Arc<ChannelChanges>],
    end: u64,
    catalog: &Catalog,
    pool: &Pool,
    metrics: &Metrics,
    limits: RenderLimits,
) -> Result<usize, DbError> {
    // Channels that can take nothing more now, with the position they stopped at.
    let mut stopped: HashMap<usize, u64> = HashMap::new();
    let candidates = match_cohort(changes, channels, &mut stopped).await;
    if candidates.is_empty() {
        advance(channels, &stopped, end);
        return Ok(0);
    }
    let privileges = privileges(changes, &candidates, catalog).await?;
    let visible = readable(changes, &candidates, &privileges, pool).await?;
    let delivered = hand_out(
        changes,
        &candidates,
        &privileges,
        &visible,
        &mut stopped,
        limits,
    );
    advance(channels, &stopped, end);
    metrics.frames_queued(delivered as i64);
    metrics.events_out(delivered as u64);
    Ok(delivered)
}

/// Column privileges per (role, table oid), from the catalog's cache.
type Privileges<'a> = HashMap<(&'a str, u32), ColumnMask>;

fn selectable(privileges: &Privileges<'_>, claims: &ClaimsGroup, change: &Change) -> ColumnMask {
    privileges
        .get(&(claims.role.as_str(), change.table.oid))
        .cloned()
        .unwrap_or_default()
}

/// Step 1, match: (change index, channel, its claims, matched binding ids), change by change, each
/// change against the channels bound to its table. Channels whose token expired stop there.
async fn match_cohort(
    changes: &[Arc<Change>],
    channels: &[Arc<ChannelChanges>],
    stopped: &mut HashMap<usize, u64>,
) -> Vec<Candidate> {
    let mut candidates: Vec<Candidate> = Vec::new();
    let now = crate::db::claims::unix_now();
    let mut evaluated = 0usize;
    let mut index = TableIndex::new(channels);
    for (ci, change) in changes.iter().enumerate() {
        for &at in index.channels_for(&change.table).iter() {
            let Some(channel) = channels.get(at) else {
                continue;
            };
            if stopped.contains_key(&channel_key(channel)) {
                continue;
            }
            // Matching is bounded per binding (pattern length, bindings per channel) but a
            // batch may hold many; let the worker serve other tasks (heartbeats, other
            // sockets) between slices of it.
            evaluated += channel.bindings.len();
            if evaluated >= MATCH_SLICE {
                evaluated = 0;
                tokio::task::yield_now().await;
            }
            let ids = matching_ids(channel, change);
            if !ids.is_empty() {
                // The claims in force now decide, not those of the join: a token that expired
                // gets nothing more (its session is closing the channel; the position stays
                // here, so a rejoin with a fresh token resumes from it).
                let claims = channel.claims.read().clone();
                if claims.expired(now) {
                    stopped.insert(channel_key(channel), change.seq);
                    continue;
                }
                candidates.push((ci, channel.clone(), claims, ids));
            }
        }
    }
    candidates
}

/// Step 2: column privileges per role and table (cached by the catalog).
async fn privileges<'a>(
    changes: &[Arc<Change>],
    candidates: &'a [Candidate],
    catalog: &Catalog,
) -> Result<Privileges<'a>, DbError> {
    let mut privileges: HashMap<(&str, u32), ColumnMask> = HashMap::new();
    for (ci, _, claims, _) in candidates {
        let Some(change) = changes.get(*ci) else {
            continue;
        };
        let key = (claims.role.as_str(), change.table.oid);
        if let std::collections::hash_map::Entry::Vacant(slot) = privileges.entry(key) {
            slot.insert(catalog.selectable(&claims.role, &change.table).await?);
        }
    }

    Ok(privileges)
}

/// Step 3, row level security: which (claims group, change) pairs may be read, as claims text ->
/// indices of the changes it may read. Groups sharing a role and a table are checked together,
/// so the role (and the query plan) stays put.
async fn readable(
    changes: &[Arc<Change>],
    candidates: &[Candidate],
    privileges: &Privileges<'_>,
    pool: &Pool,
) -> Result<HashMap<Arc<str>, HashSet<usize>>, DbError> {
    let mut checks: HashMap<(&str, u32), TableChecks<'_>> = HashMap::new();
    for (ci, _, claims, _) in candidates {
        let Some(change) = changes.get(*ci) else {
            continue;
        };
        if needs_rls(change, &selectable(privileges, claims, change)) {
            let (_, groups) = checks
                .entry((claims.role.as_str(), change.table.oid))
                .or_insert_with(|| (change.table.clone(), IndexMap::new()));
            let group = groups
                .entry(claims.claims.as_str())
                .or_insert_with(|| GroupCheck {
                    claims: claims.clone(),
                    indices: Vec::new(),
                });
            // Candidates come in change order, so a repeat is always the last one pushed.
            if group.indices.last() != Some(ci) {
                group.indices.push(*ci);
            }
        }
    }
    // A change is checked only once its transaction is visible to the checking sessions: the
    // walsender may stream a commit before it is (synchronous replication waits, or the race
    // between WAL flush and the commit becoming visible), and the check would miss the row.
    let mut xids: Vec<u32> = checks
        .values()
        .flat_map(|(_, groups)| groups.values())
        .flat_map(|g| g.indices.iter())
        .filter_map(|ci| changes.get(*ci).map(|c| c.xid))
        .collect();
    xids.sort_unstable();
    xids.dedup();
    if !xids.is_empty() {
        ensure_visible(pool, &xids).await?;
    }
    let mut jobs = Vec::new();
    let mut slot = 0;
    for ((role, _), (table, groups)) in checks {
        let groups: Vec<GroupCheck> = groups.into_values().collect();
        let per_connection = groups.len().div_ceil(pool.size()).max(1);
        let mut rest = groups;
        while !rest.is_empty() {
            let tail = rest.split_off(per_connection.min(rest.len()));
            let chunk = std::mem::replace(&mut rest, tail);
            jobs.push(check_chunk(pool, slot, role, table.clone(), changes, chunk));
            slot += 1;
        }
    }
    // Claims text -> indices of the changes it may read.
    let mut visible: HashMap<Arc<str>, HashSet<usize>> = HashMap::new();
    for results in join_all(jobs).await {
        for (claims, allowed) in results? {
            visible
                .entry(Arc::from(claims.claims.as_str()))
                .or_default()
                .extend(allowed);
        }
    }

    Ok(visible)
}

/// Step 4, render and hand out: the `data` object once per change and column visibility, the frame
/// once per `ids` list, serializer and topic; offered to each channel's queue. Returns the
/// number of frames queued.
fn hand_out(
    changes: &[Arc<Change>],
    candidates: &[Candidate],
    privileges: &Privileges<'_>,
    visible: &HashMap<Arc<str>, HashSet<usize>>,
    stopped: &mut HashMap<usize, u64>,
    limits: RenderLimits,
) -> usize {
    let mut data_cache: HashMap<(usize, Vec<bool>), Arc<str>> = HashMap::new();
    let mut frame_cache: HashMap<FrameKey, Bytes> = HashMap::new();
    let mut delivered = 0;
    for (ci, channel, claims, ids) in candidates {
        let ci = *ci;
        let Some(change) = changes.get(ci) else {
            continue;
        };
        if stopped.contains_key(&channel_key(channel)) {
            continue;
        }
        let selectable = selectable(privileges, claims, change);
        if needs_rls(change, &selectable)
            && !visible
                .get(claims.claims.as_str())
                .is_some_and(|readable| readable.contains(&ci))
        {
            continue;
        }
        let mask = visibility(change, &selectable, channel, ids);
        let data = data_cache
            .entry((ci, mask.clone()))
            .or_insert_with(|| Arc::from(render_data(change, &mask, &selectable, limits)))
            .clone();
        let frame = frame_cache
            .entry((
                data.clone(),
                ids.clone(),
                channel.vsn,
                channel.topic.clone(),
            ))
            .or_insert_with(|| {
                let payload = postgres_changes_payload(ids, &data);
                Bytes::from(text_frame(
                    channel.vsn,
                    None,
                    None,
                    &channel.topic,
                    "postgres_changes",
                    &payload,
                ))
            })
            .clone();
        let offered = channel
            .cursor
            .with_gate(|_| channel.outbox.offer(frame, &channel.cursor, change.seq + 1));
        match offered {
            Some(Offer::Queued) => delivered += 1,
            Some(Offer::Full) => {
                stopped.insert(channel_key(channel), change.seq);
            }
            // Gone: nothing more for it (a resume continues from what reached its socket).
            Some(Offer::Closed) | None => {
                stopped.insert(channel_key(channel), change.seq);
            }
        }
    }
    delivered
}

/// Bindings matched between two yields to the runtime.
const MATCH_SLICE: usize = 4096;

/// A channel's key in the `stopped` map: its address (a plain number, so the map may be held
/// across the checks' awaits).
fn channel_key(channel: &Arc<ChannelChanges>) -> usize {
    Arc::as_ptr(channel) as usize
}

/// Moves every channel's cursor to `end`, or to where it stopped.
fn advance(channels: &[Arc<ChannelChanges>], stopped: &HashMap<usize, u64>, end: u64) {
    for channel in channels {
        let next = stopped.get(&channel_key(channel)).copied().unwrap_or(end);
        channel.cursor.with_gate(|gate| gate.advance(next));
    }
}
