//! The change feed: moves every `postgres_changes` subscriber through the journal.
//!
//! The replication task only writes committed changes to the [`Journal`]; this task delivers
//! them. Subscribers whose cursors stand at the same position form a cohort and are served
//! together (one read, one RLS check per claims group, one frame per distinct payload), so
//! that live subscribers (all at the head) cost what one batch costs, while a subscriber that
//! resumed from an earlier position or fell behind catches up at its own pace from the
//! journal. A subscriber is offered changes only while its queue is less than half full; one
//! that makes no progress reading its socket for `CHANGES_STALL_TIMEOUT` is disconnected
//! (and can resume). A database error moves no cursor: the same changes are retried.
//!
//! The keeper task expires resume records, prunes journal segments nobody needs, and writes
//! the subscribers' positions to disk every second.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use realtide_replication::pgoutput::format_commit_timestamp;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::changes::change::{Cell, Change};
use crate::changes::delivery;
use crate::changes::journal::{Chunk, JournalError, StoredChange};
use crate::changes::postgres::Postgres;
use crate::changes::render::RenderLimits;
use crate::changes::subscriptions::ChannelChanges;
use crate::db::catalog::Catalog;
use crate::db::pool::DbError;
use crate::limits::Limits;
use crate::metrics::Metrics;

/// Most changes read and delivered to one cohort in one step.
const CHUNK: usize = 2_000;
/// How often a subscriber waiting for room in its queue is looked at again.
const ROOM_POLL: Duration = Duration::from_millis(10);
/// How long a shutdown waits for live subscribers to receive what was decoded.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(10);
/// 2000-01-01 (PostgreSQL's epoch) in Unix microseconds.
const POSTGRES_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// Why a delivery step failed.
#[derive(Debug, thiserror::Error)]
enum StepError {
    #[error("database")]
    Db(#[from] DbError),
    #[error("journal")]
    Journal(#[from] JournalError),
}

/// The tokens of a shutdown, in the order they fire.
#[derive(Debug, Clone)]
pub struct Stages {
    /// Stop taking new changes (the signal).
    pub shutdown: CancellationToken,
    /// The replication task journaled what it decoded and stopped reading.
    pub replication_stopped: CancellationToken,
    /// Decoded changes reached the live subscribers: sessions may close.
    pub disconnect: CancellationToken,
}

/// Runs until every live subscriber has what was decoded at shutdown.
pub async fn run(
    postgres: Arc<Postgres>,
    limits: Arc<Limits>,
    metrics: Arc<Metrics>,
    render: RenderLimits,
    stages: Stages,
) {
    let mut feed = Feed {
        postgres: postgres.clone(),
        limits,
        metrics,
        render,
        stalls: HashMap::new(),
        stall_timeout: postgres.config.changes.stall_timeout,
    };
    let mut head = postgres.journal.watch();
    let mut backoff = Duration::from_millis(10);
    let mut drain_started: Option<Instant> = None;
    loop {
        if stages.replication_stopped.is_cancelled() {
            let started = *drain_started.get_or_insert_with(Instant::now);
            if feed.caught_up() || started.elapsed() > DRAIN_DEADLINE {
                if !feed.caught_up() {
                    tracing::warn!(
                        "shutdown: some subscribers did not take every change in time; they resume on rejoin"
                    );
                }
                stages.disconnect.cancel();
                return;
            }
        }
        let blocked = match feed.step().await {
            Ok(Step::Progress) => {
                backoff = Duration::from_millis(10);
                tokio::task::yield_now().await;
                continue;
            }
            Ok(Step::Idle { blocked }) => blocked,
            Err(error) => {
                tracing::warn!(error = %crate::logs::error_chain(&error), retry_ms = backoff.as_millis() as u64, "change delivery failed; retrying the same changes");
                tokio::select! {
                    biased;
                    () = stages.replication_stopped.cancelled(), if drain_started.is_none() => {}
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        tokio::select! {
            // The shutdown stages first (they change what "done" means); then new changes,
            // new subscribers, and room in a queue.
            biased;
            () = stages.replication_stopped.cancelled(), if drain_started.is_none() => {}
            changed = head.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            () = postgres.subscriptions.registered.notified() => {}
            () = tokio::time::sleep(ROOM_POLL), if blocked || drain_started.is_some() => {}
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

enum Step {
    /// Something was delivered; look again at once.
    Progress,
    /// Nothing to do; `blocked` when some subscriber waits for room.
    Idle { blocked: bool },
}

struct Feed {
    postgres: Arc<Postgres>,
    limits: Arc<Limits>,
    metrics: Arc<Metrics>,
    render: RenderLimits,
    /// Subscribers waiting for room: (their writer's progress count, since when unchanged).
    stalls: HashMap<usize, (u64, Instant)>,
    stall_timeout: Duration,
}

impl Feed {
    /// Whether every live subscriber is at the journal's head.
    fn caught_up(&self) -> bool {
        let head = self.postgres.journal.head();
        self.postgres
            .subscriptions
            .snapshot()
            .iter()
            .all(|c| c.cursor.next() >= head || c.outbox.is_closed())
    }

    async fn step(&mut self) -> Result<Step, StepError> {
        let journal = &self.postgres.journal;
        let head = journal.head();
        let mut cohorts: BTreeMap<u64, Vec<Arc<ChannelChanges>>> = BTreeMap::new();
        let mut blocked = false;
        let mut waiting = HashMap::new();
        for channel in self.postgres.subscriptions.snapshot() {
            let next = channel.cursor.next();
            if next >= head || channel.outbox.is_closed() {
                continue;
            }
            if !channel.outbox.has_room() {
                blocked = true;
                let key = Arc::as_ptr(&channel.cursor) as usize;
                let writes = channel.outbox.writes();
                let (seen, since) = self
                    .stalls
                    .get(&key)
                    .copied()
                    .filter(|(seen, _)| *seen == writes)
                    .unwrap_or((writes, Instant::now()));
                if since.elapsed() > self.stall_timeout {
                    tracing::info!(
                        stalled_s = since.elapsed().as_secs(),
                        "disconnecting a postgres_changes subscriber that stopped reading"
                    );
                    channel.outbox.cut();
                } else {
                    waiting.insert(key, (seen, since));
                }
                continue;
            }
            cohorts.entry(next).or_default().push(channel);
        }
        self.stalls = waiting;
        if cohorts.is_empty() {
            return Ok(Step::Idle { blocked });
        }
        for (position, cohort) in cohorts {
            let (changes, end) = match journal.read(position, CHUNK)? {
                Chunk::Cached(changes) => {
                    let end = changes.last().map_or(position, |c| c.seq + 1);
                    (changes, end)
                }
                Chunk::Stored(stored) => {
                    let end = stored.last().map_or(position, |c| c.seq + 1);
                    (restore(&self.postgres.catalog, stored).await?, end)
                }
                Chunk::Gone => {
                    // Only reachable when the journal bound dropped what a lagging subscriber
                    // still needed: it is told, and continues with what is left.
                    let first = journal.first();
                    for channel in &cohort {
                        tracing::warn!("a subscriber's changes were pruned from the journal");
                        channel.cursor.with_gate(|gate| gate.advance(first));
                    }
                    continue;
                }
            };
            if end <= position {
                continue;
            }
            if self.limits.db_events.tripped() {
                // As the reference's db_events counter: over the rate limit, changes are not
                // delivered (documented in the configuration).
                tracing::warn!(
                    changes = changes.len(),
                    "dropping changes: too many messages per second"
                );
                for channel in &cohort {
                    channel.cursor.with_gate(|gate| gate.advance(end));
                }
                continue;
            }
            let delivered = delivery::deliver(
                &changes,
                &cohort,
                end,
                &self.postgres.catalog,
                &self.postgres.pool,
                &self.metrics,
                self.render,
            )
            .await?;
            self.limits.db_events.add(delivered as u64);
            self.metrics.database_events(delivered as u64);
            if let Some(last) = changes.last() {
                self.metrics.replication_delivered(
                    last.commit_micros.saturating_add(POSTGRES_EPOCH_MICROS),
                );
            }
        }
        Ok(Step::Progress)
    }
}

/// Changes read back from disk, aligned to the tables' current columns by name. A change of a
/// table that no longer exists is left out.
async fn restore(
    catalog: &Catalog,
    stored: Vec<StoredChange>,
) -> Result<Vec<Arc<Change>>, DbError> {
    let mut out = Vec::with_capacity(stored.len());
    for change in stored {
        let Some(table) = catalog.table(change.oid).await? else {
            continue;
        };
        let positions: Vec<Option<usize>> = table
            .columns
            .iter()
            .map(|c| change.columns.iter().position(|name| *name == c.name))
            .collect();
        let align = |cells: Option<Vec<Cell>>| {
            cells.map(|cells| {
                positions
                    .iter()
                    .map(|p| p.and_then(|p| cells.get(p).cloned()).unwrap_or(Cell::Null))
                    .collect()
            })
        };
        out.push(Arc::new(Change {
            seq: change.seq,
            xid: change.xid,
            commit_micros: change.commit_micros,
            commit_timestamp: Arc::from(format_commit_timestamp(change.commit_micros)),
            table,
            kind: change.kind,
            new: align(change.new),
            old: align(change.old),
            old_key_only: change.old_key_only,
        }));
    }
    Ok(out)
}

/// Expires resume records and prunes the journal every second; saves positions every 100 ms
/// while they move (less often when a save is slow: it may take at most a tenth of the time).
/// At `finished` (all sessions closed) saves a last time, durably, and returns.
pub async fn keeper(postgres: Arc<Postgres>, finished: CancellationToken) {
    let mut tick = tokio::time::interval(SAVE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut saved_head = u64::MAX;
    let mut last_upkeep = Instant::now();
    let mut next_save = Instant::now();
    loop {
        let last = tokio::select! {
            biased;
            () = finished.cancelled() => true,
            _ = tick.tick() => false,
        };
        if last || last_upkeep.elapsed() >= Duration::from_secs(1) {
            upkeep(&postgres);
            last_upkeep = Instant::now();
        }
        if last || Instant::now() >= next_save {
            let started = Instant::now();
            save(&postgres, &mut saved_head, last);
            next_save = Instant::now() + started.elapsed() * 10;
        }
        if last {
            return;
        }
    }
}

/// How often moving positions are saved (the bound on what a subscriber may receive twice
/// after a crash of realtide).
pub const SAVE_EVERY: Duration = Duration::from_millis(100);

fn upkeep(postgres: &Postgres) {
    let journal = &postgres.journal;
    let live = postgres.subscriptions.live_positions();
    let head = journal.head();
    let live_min = live.iter().map(|(_, seq)| *seq).min().unwrap_or(head);
    let mut book = postgres.subscriptions.book();
    if journal.bytes() > postgres.config.changes.max_bytes {
        let dropped = book.drop_oldest(live_min);
        if dropped > 0 {
            tracing::warn!(
                dropped,
                max_bytes = postgres.config.changes.max_bytes,
                "change journal over CHANGES_MAX_BYTES: gave up the oldest resume records"
            );
        }
    }
    let departed_min = book.expire(journal.first());
    let keep_from = departed_min.map_or(live_min, |d| d.min(live_min));
    if let Err(error) = journal.prune(keep_from) {
        tracing::warn!(error = %crate::logs::error_chain(&error), "could not prune the change journal");
    }
}

fn save(postgres: &Postgres, saved_head: &mut u64, last: bool) {
    let live = postgres.subscriptions.live_positions();
    let moved = live
        .iter()
        .map(|(_, seq)| *seq)
        .fold(0u64, |acc, seq| acc.wrapping_mul(31).wrapping_add(seq));
    let mut book = postgres.subscriptions.book();
    if last || book.is_dirty() || (!live.is_empty() && *saved_head != moved) {
        match book.save(&live, last) {
            Ok(()) => *saved_head = moved,
            Err(error) => tracing::warn!(%error, "could not save subscriber positions"),
        }
    }
}
