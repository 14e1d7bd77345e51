//! The replication task: streams pgoutput from the slot and writes committed transactions to
//! the change [`Journal`](crate::changes::journal::Journal) (the change feed delivers from there).
//! A transaction's end LSN is confirmed to the slot only once the journal holds it on stable
//! storage and every live subscriber's socket got (or did not need) each of its changes.
//!
//! On any error (PostgreSQL restarting, the connection dropping) it reconnects with capped
//! exponential backoff; WebSocket clients stay connected. Transactions that were not confirmed
//! are streamed again after a reconnect; those already in the journal are skipped, so nothing
//! committed is skipped and nothing is delivered twice (database broadcasts included).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use realtide_replication::lsn::Lsn;
use realtide_replication::pgoutput::{self, ColumnValue, LogicalMessage, OldKind, Relation};
use realtide_replication::stream::{self, ReplicationConfig, StreamError, WalMessage};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::changes::change::ChangeKind;
use crate::changes::change::{Cell, Change};
use crate::changes::feed::Stages;
use crate::changes::journal::{JournalError, Seq};
use crate::changes::postgres::Postgres;
use crate::changes::progress::{Problem, ReplicationStatus};
use crate::changes::shared::{self, SharedError};
use crate::channels::broadcast::{StoredBody, StoredMessage};
use crate::db::catalog::Table;
use crate::db::pool::DbError;
use crate::db::schema;
use crate::metrics::Metrics;
use realtide_protocol::peer::Record;
use realtide_replication::sql::quote_ident;

/// Why a replication session ended.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    /// The walsender stream failed.
    #[error("replication stream")]
    Stream(#[from] StreamError),
    /// A query failed.
    #[error("database")]
    Db(#[from] DbError),
    /// The change journal failed.
    #[error("change journal")]
    Journal(#[from] JournalError),
    /// The cluster's change stream did not store an append.
    #[error("cluster change stream")]
    Shared(#[from] SharedError),
    /// NATS is back after an outage: what was delivered locally meanwhile is streamed again
    /// from the slot's confirmed position, for the other nodes.
    #[error("NATS is back; streaming again from the confirmed position for the other nodes")]
    Restream,
    /// The server ended the stream.
    #[error("the server ended the replication stream")]
    Ended,
}

/// The journal is synced (and the slot confirmed) at most this long after a commit, so that
/// busy streams share one sync.
const SYNC_WINDOW: Duration = Duration::from_millis(5);
/// While changes wait to be confirmed, the confirmable position is looked at this often.
const CONFIRM_POLL: Duration = Duration::from_millis(50);
/// Longest wait between reconnects.
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How often a cluster node asks for the slot another node holds.
const SLOT_RETRY: Duration = Duration::from_millis(1_000);

/// Whether the walsender refused the slot because another connection holds it.
fn slot_in_use(error: &ReplicationError) -> bool {
    matches!(error, ReplicationError::Stream(e) if e.sqlstate() == Some("55006"))
        || matches!(error, ReplicationError::Stream(StreamError::Server { message, .. }) if message.contains("is active for PID"))
}

/// Runs until shutdown. At shutdown, journals what it decoded, fires
/// `stages.replication_stopped`, and once `finished` (every session closed) confirms what the
/// journal holds and ends the stream.
pub async fn run(
    postgres: Arc<Postgres>,
    outlet: Outlet,
    metrics: Arc<Metrics>,
    stages: Stages,
    finished: CancellationToken,
) {
    let shutdown = stages.shutdown.clone();
    let mut backoff = Duration::from_millis(200);
    loop {
        let started = Instant::now();
        // The session watches the shutdown token itself, so that it can journal and confirm
        // what it already received before stopping.
        let result = session(&postgres, &outlet, &metrics, &stages, &finished).await;
        if shutdown.is_cancelled() {
            stages.replication_stopped.cancel();
        }
        if let Some(shared) = &postgres.shared {
            shared.holding_slot.store(false, Ordering::Relaxed);
        } else if let Err(error) = postgres.journal.abort() {
            tracing::warn!(error = %crate::logs::error_chain(&error), "could not cut an unfinished transaction from the change journal");
        }
        if let (Some(shared), Err(error)) = (&postgres.shared, &result)
            && slot_in_use(error)
        {
            // Another node of the cluster consumes the slot; its changes reach this node
            // through the shared stream. Ask again soon: when that node dies, the slot is free.
            shared.refused.store(true, Ordering::Relaxed);
            postgres
                .replication
                .send_replace(ReplicationStatus::Streaming);
            tokio::select! {
                biased;
                () = shutdown.cancelled() => {
                    stages.replication_stopped.cancel();
                    return;
                }
                () = shared.slot_freed.notified() => {}
                () = tokio::time::sleep(SLOT_RETRY) => {}
            }
            backoff = Duration::from_millis(200);
            continue;
        }
        if matches!(result, Err(ReplicationError::Restream)) {
            tracing::info!(
                "NATS is back; appending what was delivered locally to the cluster's change stream"
            );
            continue;
        }
        match result {
            Ok(()) => {
                postgres
                    .replication
                    .send_replace(ReplicationStatus::Starting);
                if postgres.config.drop_slot_on_shutdown {
                    drop_slot(&postgres).await;
                }
                return;
            }
            Err(error) => {
                let problem = Problem::of(&error, &postgres.config.url);
                let down = ReplicationStatus::Down {
                    problem: Arc::from(problem.text.as_str()),
                    configuration: problem.configuration,
                };
                let changed = *postgres.replication.borrow() != down;
                if problem.configuration && changed {
                    tracing::error!(
                        problem = %problem.text,
                        error = %crate::logs::error_chain(&error),
                        "replication cannot run: postgres_changes and database broadcasts wait until this is fixed"
                    );
                } else {
                    tracing::warn!(error = %crate::logs::error_chain(&error), "replication stopped; reconnecting");
                }
                postgres.replication.send_replace(down);
            }
        }
        if started.elapsed() > Duration::from_secs(60) {
            backoff = Duration::from_millis(200);
        }
        tokio::select! {
            biased;
            () = shutdown.cancelled() => {
                stages.replication_stopped.cancel();
                return;
            }
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Drops the slot (SLOT_DROP_ON_SHUTDOWN). The walsender may hold it for a moment after the
/// stream closed, so a busy slot is retried briefly.
async fn drop_slot(postgres: &Postgres) {
    for _ in 0..20 {
        let dropped = async {
            let client = postgres.pool.client().await?;
            client
                .execute(
                    "select pg_drop_replication_slot(slot_name) from pg_replication_slots \
                     where slot_name = $1 and not active",
                    &[&postgres.config.slot],
                )
                .await
                .map_err(DbError::query("drop slot"))
        }
        .await;
        match dropped {
            Ok(1) => {
                tracing::info!(slot = %postgres.config.slot, "dropped replication slot");
                return;
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(error) => {
                tracing::warn!(error = %crate::logs::error_chain(&error), "could not drop the replication slot");
                return;
            }
        }
    }
    tracing::warn!(slot = %postgres.config.slot, "replication slot still active; not dropped");
}

/// Creates the publication when it does not exist (empty: users add their tables).
async fn ensure_publication(postgres: &Postgres) -> Result<(), DbError> {
    let client = postgres.pool.client().await?;
    let name = &postgres.config.publication;
    let exists = client
        .query_opt("select 1 from pg_publication where pubname = $1", &[name])
        .await
        .map_err(DbError::query("publication lookup"))?
        .is_some();
    if !exists {
        let created = client
            .batch_execute(&format!("create publication {}", quote_ident(name)))
            .await;
        match created {
            Ok(()) => tracing::info!(publication = %name, "created publication"),
            // Another realtide created it meanwhile.
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_OBJECT) => {}
            Err(e) => return Err(DbError::query("create publication")(e)),
        }
    }
    Ok(())
}

/// Where database broadcasts go.
#[derive(Debug, Clone)]
pub struct Outlet {
    /// The process's publish path.
    pub publisher: crate::channels::publish::Publisher,
    /// Largest deliverable payload.
    pub max_payload: usize,
}

/// `realtime.messages` (published through its partition root), or one of its partitions.
fn is_messages_table(relation: &Relation) -> bool {
    relation.namespace == "realtime" && relation.name.starts_with("messages")
}

/// A broadcast row of `realtime.messages`; `None` for other extensions or incomplete rows.
fn stored_message(relation: &Relation, tuple: &[ColumnValue]) -> Option<StoredMessage> {
    let text = |name: &str| -> Option<&[u8]> {
        let index = relation.columns.iter().position(|c| c.name == name)?;
        match tuple.get(index)? {
            ColumnValue::Text(bytes) => Some(bytes),
            ColumnValue::Null | ColumnValue::UnchangedToast | ColumnValue::Binary(_) => None,
        }
    };
    let string = |name: &str| text(name).map(|b| String::from_utf8_lossy(b).into_owned());
    if text("extension")? != b"broadcast" {
        return None;
    }
    let body = match text("binary_payload") {
        Some(hex) => StoredBody::Binary(decode_bytea(hex)?),
        None => StoredBody::Json(string("payload")?),
    };
    Some(StoredMessage {
        topic: string("topic")?,
        private: text("private") == Some(b"t"),
        event: string("event").unwrap_or_default(),
        id: string("id")?,
        body,
    })
}

/// `bytea` in PostgreSQL's hex output form (`\x0102...`).
fn decode_bytea(text: &[u8]) -> Option<Vec<u8>> {
    let hex = text.strip_prefix(b"\\x")?;
    if hex.len() % 2 != 0 {
        return None;
    }
    hex.chunks_exact(2)
        .map(|pair| {
            let digit = |b: u8| (b as char).to_digit(16);
            u8::try_from(digit(*pair.first()?)? * 16 + digit(*pair.get(1)?)?).ok()
        })
        .collect()
}

/// Maps a relation's pgoutput columns onto the catalog table's columns by name.
struct Layout {
    table: Arc<Table>,
    /// For each table column, its position in the relation message.
    positions: Vec<Option<usize>>,
}

struct Decoder {
    relations: HashMap<u32, Relation>,
    layouts: HashMap<u32, Layout>,
}

impl Decoder {
    async fn layout(&mut self, postgres: &Postgres, oid: u32) -> Result<Option<&Layout>, DbError> {
        let Some(table) = postgres.catalog.table(oid).await? else {
            return Ok(None);
        };
        let stale = self
            .layouts
            .get(&oid)
            .is_none_or(|l| !Arc::ptr_eq(&l.table, &table));
        if stale {
            let Some(relation) = self.relations.get(&oid) else {
                return Ok(None);
            };
            let positions = table
                .columns
                .iter()
                .map(|c| relation.columns.iter().position(|rc| rc.name == c.name))
                .collect();
            self.layouts.insert(oid, Layout { table, positions });
        }
        Ok(self.layouts.get(&oid))
    }
}

fn cells(layout: &Layout, tuple: &[ColumnValue]) -> Vec<Cell> {
    layout
        .positions
        .iter()
        .map(|position| match position.and_then(|p| tuple.get(p)) {
            Some(ColumnValue::Text(bytes)) => {
                Cell::Text(String::from_utf8_lossy(bytes).into_owned())
            }
            Some(ColumnValue::UnchangedToast) => Cell::Toast,
            // Binary values are not requested; a column missing from the relation is unknown.
            Some(ColumnValue::Null | ColumnValue::Binary(_)) | None => Cell::Null,
        })
        .collect()
}

/// Transactions journaled and not yet confirmed to the slot: (one past their last change,
/// their end LSN), in commit order.
#[derive(Debug, Default)]
struct Unconfirmed {
    commits: std::collections::VecDeque<(Seq, Lsn)>,
    /// In a cluster: the end LSN of the last transaction the shared stream stored.
    stored: Lsn,
    /// In a cluster: records not yet appended to the shared stream, and their size.
    pending: Vec<Record>,
    pending_bytes: usize,
    /// In a cluster: NATS was away and records went to this node's reader only.
    degraded: bool,
}

impl Unconfirmed {
    /// Appends the pending records (up to the last commit among them when `whole`) to the
    /// shared stream and waits until it stored them.
    async fn flush(
        &mut self,
        shared: &shared::SharedStream,
        metrics: &Metrics,
        whole: bool,
    ) -> Result<(), ReplicationError> {
        let take = if whole {
            self.pending
                .iter()
                .rposition(|r| matches!(r, Record::Commit { .. }))
                .map_or(0, |i| i + 1)
        } else {
            self.pending.len()
        };
        if take == 0 {
            return Ok(());
        }
        let batch: Vec<Record> = self.pending.drain(..take).collect();
        self.pending_bytes = self.pending.iter().map(shared::record_size).sum();
        if !self.degraded && shared.connected() {
            match shared.append(&batch, metrics).await {
                Ok(()) => {}
                Err(error) => {
                    tracing::warn!(%error, "cannot append to the cluster's change stream; delivering to this node's subscribers alone until NATS is back");
                    self.degraded = true;
                }
            }
        } else {
            self.degraded = true;
        }
        if self.degraded {
            // Not stored: nothing is confirmed, so the slot streams it again afterwards.
            shared.hand_locally(batch).await;
            return Ok(());
        }
        if let Some(end) = batch.iter().rev().find_map(|r| match r {
            Record::Commit { end_lsn, .. } => Some(*end_lsn),
            _ => None,
        }) {
            self.stored = self.stored.max(Lsn(end));
        }
        Ok(())
    }

    fn push(&mut self, record: Record) {
        self.pending_bytes += shared::record_size(&record);
        self.pending.push(record);
    }
}

impl Unconfirmed {
    /// The newest end LSN that may be confirmed: the journal has it on stable storage and
    /// every live subscriber has everything before it.
    fn confirmable(&mut self, postgres: &Postgres) -> Option<Lsn> {
        if postgres.shared.is_some() {
            // In a cluster: once the shared stream stored it.
            let mut lsn = None;
            while let Some((_, commit)) = self.commits.front().copied() {
                if commit > self.stored {
                    break;
                }
                lsn = Some(commit);
                self.commits.pop_front();
            }
            return lsn;
        }
        let front = self.commits.front()?.0;
        let mut done = postgres.journal.synced();
        if let Some(live) = postgres.subscriptions.min_live_position() {
            done = done.min(live);
        }
        if done < front {
            return None;
        }
        let mut lsn = None;
        while let Some((end, commit)) = self.commits.front().copied() {
            if end > done {
                break;
            }
            lsn = Some(commit);
            self.commits.pop_front();
        }
        lsn
    }
}

/// Hands a decoded change to the journal, or in a cluster to the shared stream's batch.
fn emit(
    shared: Option<&shared::SharedStream>,
    journal: &crate::changes::journal::Journal,
    unconfirmed: &mut Unconfirmed,
    change: Change,
) -> Result<(), ReplicationError> {
    if shared.is_some() {
        unconfirmed.push(shared::record_of(&change));
    } else {
        journal.append(change)?;
    }
    Ok(())
}

async fn confirm(
    postgres: &Postgres,
    stream: &mut stream::ReplicationStream,
    unconfirmed: &mut Unconfirmed,
) -> Result<(), ReplicationError> {
    if let Some(lsn) = unconfirmed.confirmable(postgres) {
        stream.confirm(lsn).await?;
        postgres.progress.set_confirmed(stream.confirmed());
    }
    Ok(())
}

async fn session(
    postgres: &Arc<Postgres>,
    outlet: &Outlet,
    metrics: &Metrics,
    stages: &Stages,
    finished: &CancellationToken,
) -> Result<(), ReplicationError> {
    let shutdown = &stages.shutdown;
    let journal = &postgres.journal;
    let config = ReplicationConfig {
        conn: postgres.config.url.clone(),
        slot: postgres.config.slot.clone(),
        publications: vec![
            postgres.config.publication.clone(),
            schema::MESSAGES_PUBLICATION.to_owned(),
        ],
        tls: postgres.config.tls.clone(),
    };
    let connecting = async {
        if !postgres.schema_ready.load(Ordering::Relaxed) {
            // The messages publication must exist before the slot streams it.
            schema::migrate(
                &postgres.config.url,
                postgres.config.tls.as_ref(),
                postgres.config.messages_retention,
            )
            .await?;
            postgres.schema_ready.store(true, Ordering::Relaxed);
        }
        ensure_publication(postgres).await?;
        Ok::<_, ReplicationError>(stream::connect(&config).await?)
    };
    let mut stream = tokio::select! {
        biased;
        () = shutdown.cancelled() => return Ok(()),
        stream = connecting => stream?,
    };
    let shared = postgres.shared.clone();
    if let Some(shared) = &shared {
        shared.holding_slot.store(true, Ordering::Relaxed);
        if shared.refused.swap(false, Ordering::Relaxed) {
            metrics.cluster.failovers.fetch_add(1, Ordering::Relaxed);
            tracing::info!(slot = %config.slot, "took over the replication slot from another node");
        }
    } else if journal.bind_system(stream.system_id())? {
        tracing::warn!("the change journal belonged to another database cluster; it was emptied");
    }
    postgres
        .replication
        .send_replace(ReplicationStatus::Streaming);
    // What this process already confirmed. PostgreSQL 15 does not always persist a slot's
    // confirmed position across its own restart, so the slot may resend transactions we
    // confirmed (or journaled): those are skipped, and the position is confirmed again.
    let resume = postgres.progress.confirmed();
    if resume > stream.confirmed() {
        stream.confirm(resume).await?;
    }
    postgres.progress.raise_confirmed(stream.confirmed());
    tracing::info!(slot = %config.slot, from = %stream.confirmed(), journal_head = journal.head(), "replication streaming");

    let mut decoder = Decoder {
        relations: HashMap::new(),
        layouts: HashMap::new(),
    };
    let mut in_transaction = false;
    // The open transaction was journaled (or delivered) before: skip it.
    let mut replayed = false;
    // Whether the open transaction's changes go to the journal: someone may need them.
    let mut journaling = false;
    let mut xid = 0u32;
    let mut commit_micros = 0i64;
    let mut commit_timestamp: Arc<str> = Arc::from("");
    let mut messages: Vec<StoredMessage> = Vec::new();
    let mut unconfirmed = Unconfirmed::default();
    let mut sync_due: Option<Instant> = None;
    let max_bytes = postgres.config.changes.max_bytes;

    loop {
        // Backpressure: while the journal is over its bound and live subscribers still need
        // all of it, stop reading (keeping the walsender's connection alive).
        while shared.is_none()
            && !in_transaction
            && journal.bytes() > max_bytes
            && !shutdown.is_cancelled()
        {
            tracing::warn!(
                bytes = journal.bytes(),
                max_bytes,
                "change journal full; pausing the replication stream"
            );
            tokio::select! {
                biased;
                () = shutdown.cancelled() => {}
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
            confirm(postgres, &mut stream, &mut unconfirmed).await?;
            stream.keepalive_reply().await?;
        }
        if let Some(shared) = &shared
            && unconfirmed.pending_bytes > shared::CHUNK_BYTES
        {
            // A large transaction goes to the shared stream in chunks.
            unconfirmed.flush(shared, metrics, false).await?;
        }
        let poll = (!unconfirmed.commits.is_empty()).then(|| Instant::now() + CONFIRM_POLL);
        let message = tokio::select! {
            // Shutdown first; then a due sync; then confirmations; then the stream.
            biased;
            () = shutdown.cancelled() => {
                if let Some(shared) = &shared {
                    // What committed goes to the shared stream and is confirmed; the open
                    // transaction is cut off (the next consumer streams it again).
                    unconfirmed.flush(shared, metrics, true).await?;
                    confirm(postgres, &mut stream, &mut unconfirmed).await?;
                    stages.replication_stopped.cancel();
                    tracing::info!(confirmed = %stream.confirmed(), "replication stopped at shutdown");
                    stream.close().await?;
                    shared.holding_slot.store(false, Ordering::Relaxed);
                    return Ok(());
                }
                // Everything decoded and committed is in the journal; the open transaction is
                // cut off (the slot streams it again after the restart).
                journal.abort()?;
                journal.sync().await?;
                stages.replication_stopped.cancel();
                // Sessions close once the change feed delivered the journal to them; then
                // everything in the journal reached a socket or a resume record.
                let deadline = crate::changes::feed::DRAIN_DEADLINE + Duration::from_secs(15);
                tokio::select! {
                    biased;
                    () = finished.cancelled() => {}
                    () = tokio::time::sleep(deadline) => {}
                }
                confirm(postgres, &mut stream, &mut unconfirmed).await?;
                tracing::info!(confirmed = %stream.confirmed(), "replication stopped at shutdown");
                stream.close().await?;
                return Ok(());
            }
            () = tokio::time::sleep_until(sync_due.unwrap_or_else(Instant::now)), if sync_due.is_some() => {
                if let Some(shared) = &shared {
                    unconfirmed.flush(shared, metrics, false).await?;
                } else {
                    journal.sync().await?;
                }
                sync_due = None;
                confirm(postgres, &mut stream, &mut unconfirmed).await?;
                continue;
            }
            () = tokio::time::sleep_until(poll.unwrap_or_else(Instant::now)), if poll.is_some() => {
                if unconfirmed.degraded && shared.as_ref().is_some_and(|s| s.connected()) {
                    return Err(ReplicationError::Restream);
                }
                confirm(postgres, &mut stream, &mut unconfirmed).await?;
                continue;
            }
            message = stream.next() => message?,
        };
        let Some(message) = message else {
            return Err(ReplicationError::Ended);
        };
        let (wal_end, message) = match message {
            WalMessage::Keepalive(keepalive) => {
                postgres.progress.saw_server_end(keepalive.wal_end);
                let lag = postgres.lag_bytes();
                if lag > postgres.config.lag_warn_bytes {
                    tracing::warn!(lag_bytes = lag, "replication slot is lagging");
                }
                confirm(postgres, &mut stream, &mut unconfirmed).await?;
                if !in_transaction
                    && unconfirmed.commits.is_empty()
                    && unconfirmed.pending.is_empty()
                    && sync_due.is_none()
                {
                    // Nothing in flight: the slot may advance over WAL with no changes for us.
                    stream.confirm(keepalive.wal_end).await?;
                    postgres.progress.set_confirmed(stream.confirmed());
                }
                continue;
            }
            WalMessage::Data {
                wal_end, message, ..
            } => (wal_end, message),
        };
        postgres.progress.saw_server_end(wal_end);
        match message {
            LogicalMessage::Begin(begin) => {
                in_transaction = true;
                // A transaction whose commit lies before what we confirmed or journaled was
                // handled before the reconnect.
                replayed = begin.final_lsn < resume
                    || (shared.is_none() && begin.final_lsn.0 < journal.last_end_lsn());
                // In a cluster every transaction goes to the shared stream: other nodes may
                // have subscribers.
                journaling = !replayed
                    && (shared.is_some()
                        || !postgres.subscriptions.is_empty()
                        || !postgres.subscriptions.book().is_empty());
                if shared.is_some() && !replayed {
                    unconfirmed.push(Record::Begin {
                        final_lsn: begin.final_lsn.0,
                        xid: begin.xid,
                        commit_micros: begin.commit_time_micros,
                    });
                }
                xid = begin.xid;
                commit_micros = begin.commit_time_micros;
                commit_timestamp =
                    Arc::from(pgoutput::format_commit_timestamp(begin.commit_time_micros));
            }
            LogicalMessage::Commit(commit) => {
                in_transaction = false;
                if replayed {
                    messages.clear();
                    continue;
                }
                if shared.is_some() {
                    for message in messages.drain(..) {
                        unconfirmed.push(shared::message_record(message));
                    }
                    unconfirmed.push(Record::Commit {
                        final_lsn: commit.commit_lsn.0,
                        end_lsn: commit.end_lsn.0,
                    });
                    unconfirmed.commits.push_back((0, commit.end_lsn));
                    if sync_due.is_none() {
                        sync_due = Some(Instant::now() + SYNC_WINDOW);
                    }
                    continue;
                }
                let end = if journaling || !messages.is_empty() {
                    // Also for broadcasts only: the commit record is what tells a replayed
                    // transaction from a new one after a reconnect.
                    journal.commit(commit.end_lsn.0)?
                } else {
                    journal.head()
                };
                unconfirmed.commits.push_back((end, commit.end_lsn));
                // Database broadcasts go out now (fan-out never waits); the slot is confirmed
                // past this transaction only later, after its changes too.
                for message in messages.drain(..) {
                    crate::channels::publish::deliver_stored(
                        &outlet.publisher,
                        &message,
                        outlet.max_payload,
                    );
                    metrics.database_events(1);
                }
                if sync_due.is_none() {
                    sync_due = Some(Instant::now() + SYNC_WINDOW);
                }
            }
            LogicalMessage::Relation(relation) => {
                postgres.catalog.invalidate(relation.oid);
                decoder.layouts.remove(&relation.oid);
                decoder.relations.insert(relation.oid, relation);
            }
            LogicalMessage::Insert(insert) => {
                if let Some(relation) = decoder.relations.get(&insert.relation_oid)
                    && is_messages_table(relation)
                {
                    if !replayed && let Some(message) = stored_message(relation, &insert.new) {
                        messages.push(message);
                    }
                    continue;
                }
                if !journaling {
                    continue;
                }
                if let Some(layout) = decoder.layout(postgres, insert.relation_oid).await? {
                    emit(
                        shared.as_deref(),
                        journal,
                        &mut unconfirmed,
                        Change {
                            seq: 0,
                            xid,
                            commit_micros,
                            table: layout.table.clone(),
                            kind: ChangeKind::Insert,
                            new: Some(cells(layout, &insert.new)),
                            old: None,
                            old_key_only: false,
                            commit_timestamp: commit_timestamp.clone(),
                        },
                    )?;
                }
            }
            LogicalMessage::Update(update) => {
                if !journaling {
                    continue;
                }
                if let Some(layout) = decoder.layout(postgres, update.relation_oid).await? {
                    emit(
                        shared.as_deref(),
                        journal,
                        &mut unconfirmed,
                        Change {
                            seq: 0,
                            xid,
                            commit_micros,
                            table: layout.table.clone(),
                            kind: ChangeKind::Update,
                            new: Some(cells(layout, &update.new)),
                            old_key_only: update
                                .old
                                .as_ref()
                                .is_some_and(|o| o.kind == OldKind::Key),
                            old: update.old.as_ref().map(|o| cells(layout, &o.data)),
                            commit_timestamp: commit_timestamp.clone(),
                        },
                    )?;
                }
            }
            LogicalMessage::Delete(delete) => {
                if !journaling {
                    continue;
                }
                if let Some(layout) = decoder.layout(postgres, delete.relation_oid).await? {
                    emit(
                        shared.as_deref(),
                        journal,
                        &mut unconfirmed,
                        Change {
                            seq: 0,
                            xid,
                            commit_micros,
                            table: layout.table.clone(),
                            kind: ChangeKind::Delete,
                            new: None,
                            old_key_only: delete.old.kind == OldKind::Key,
                            old: Some(cells(layout, &delete.old.data)),
                            commit_timestamp: commit_timestamp.clone(),
                        },
                    )?;
                }
            }
            // TRUNCATE is not delivered (as the reference); the rest carries nothing for us.
            LogicalMessage::Truncate(_)
            | LogicalMessage::Origin(_)
            | LogicalMessage::Type(_)
            | LogicalMessage::Message(_)
            | LogicalMessage::StreamStart { .. }
            | LogicalMessage::StreamStop
            | LogicalMessage::StreamCommit(_)
            | LogicalMessage::StreamAbort { .. } => {}
        }
    }
}
