//! The replication task: streams pgoutput from the slot, turns committed transactions into
//! [`Change`]s, delivers them, and only then confirms the transaction's end LSN to the slot.
//!
//! On any error (PostgreSQL restarting, the connection dropping) it reconnects with capped
//! exponential backoff; WebSocket clients stay connected. Changes that were not confirmed are
//! streamed again after a reconnect, so nothing committed is skipped.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use realtide_replication::lsn::Lsn;
use realtide_replication::pgoutput::{self, ColumnValue, LogicalMessage, OldKind, Relation};
use realtide_replication::stream::{self, ReplicationConfig, StreamError, WalMessage};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::broadcast::{self, StoredBody, StoredMessage};
use crate::catalog::{Table, quote_ident};
use crate::changes::Action;
use crate::database::DbError;
use crate::delivery::{self, Cell, Change, RenderLimits};
use crate::metrics::Metrics;
use crate::postgres::Postgres;
use crate::registry::Registry;
use crate::schema;

/// Why a replication session ended.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    /// The walsender stream failed.
    #[error("replication stream")]
    Stream(#[from] StreamError),
    /// A query failed.
    #[error("database")]
    Db(#[from] DbError),
    /// The server ended the stream.
    #[error("the server ended the replication stream")]
    Ended,
}

/// 2000-01-01 (PostgreSQL's epoch) in Unix microseconds.
const POSTGRES_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// Committed changes are delivered at most this long after the first of them arrived, so
/// that busy streams are delivered in batches (one RLS round trip per claims group and batch).
const BATCH_WINDOW: Duration = Duration::from_millis(5);
/// A batch is delivered at once when it holds this many changes.
const BATCH_MAX: usize = 5_000;
/// A transaction larger than this is delivered in parts before its commit is confirmed.
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Runs until shutdown.
pub async fn run(
    postgres: Arc<Postgres>,
    outlet: Outlet,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let started = Instant::now();
        // The session watches the shutdown token itself, so that it can deliver and confirm
        // what it already received before stopping.
        let result = session(&postgres, &outlet, &metrics, &shutdown).await;
        postgres
            .replication_connected
            .store(false, Ordering::Relaxed);
        match result {
            Ok(()) => {
                if postgres.config.drop_slot_on_shutdown {
                    drop_slot(&postgres).await;
                }
                return;
            }
            Err(error) => {
                tracing::warn!(error = %error_chain(&error), "replication stopped; reconnecting");
            }
        }
        if started.elapsed() > Duration::from_secs(60) {
            backoff = Duration::from_millis(200);
        }
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
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
                tracing::warn!(error = %error_chain(&error), "could not drop the replication slot");
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
    /// The process's topics.
    pub registry: Arc<Registry>,
    /// Rate limits (database broadcasts and postgres_changes deliveries count).
    pub limits: Arc<crate::limits::Limits>,
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

async fn session(
    postgres: &Arc<Postgres>,
    outlet: &Outlet,
    metrics: &Metrics,
    shutdown: &CancellationToken,
) -> Result<(), ReplicationError> {
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
    postgres
        .replication_connected
        .store(true, Ordering::Relaxed);
    // What this process already delivered and confirmed. PostgreSQL 15 does not always persist
    // a slot's confirmed position across its own restart, so the slot may resend transactions
    // we confirmed: those are skipped, and the position is confirmed again.
    let resume = Lsn(postgres.confirmed_lsn.load(Ordering::Relaxed));
    if resume > stream.confirmed() {
        stream.confirm(resume).await?;
    }
    postgres
        .confirmed_lsn
        .fetch_max(stream.confirmed().0, Ordering::Relaxed);
    let mut replayed = false;
    tracing::info!(slot = %config.slot, from = %stream.confirmed(), "replication streaming");

    let limits = RenderLimits {
        max_record_bytes: postgres.config.max_record_bytes,
    };
    let mut decoder = Decoder {
        relations: HashMap::new(),
        layouts: HashMap::new(),
    };
    let mut in_transaction = false;
    let mut commit_timestamp: Arc<str> = Arc::from("");
    let mut pending: Vec<Change> = Vec::new();
    let mut messages: Vec<StoredMessage> = Vec::new();
    let mut batch: Vec<Change> = Vec::new();
    let mut batch_end: Option<Lsn> = None;
    let mut deadline: Option<Instant> = None;

    loop {
        let due = deadline.filter(|_| batch_end.is_some());
        let message = tokio::select! {
            // Shutdown first; then a due batch; then the stream.
            biased;
            () = shutdown.cancelled() => {
                flush(postgres, &outlet.limits, metrics, limits, &mut stream, &mut batch, &mut batch_end).await?;
                tracing::info!(confirmed = %stream.confirmed(), "replication stopped at shutdown");
                stream.close().await?;
                return Ok(());
            }
            () = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                flush(postgres, &outlet.limits, metrics, limits, &mut stream, &mut batch, &mut batch_end).await?;
                deadline = None;
                continue;
            }
            message = stream.next() => message?,
        };
        let Some(message) = message else {
            return Err(ReplicationError::Ended);
        };
        let (wal_end, message) = match message {
            WalMessage::Keepalive(keepalive) => {
                postgres
                    .server_lsn
                    .fetch_max(keepalive.wal_end.0, Ordering::Relaxed);
                let lag = postgres.lag_bytes();
                if lag > postgres.config.lag_warn_bytes {
                    tracing::warn!(lag_bytes = lag, "replication slot is lagging");
                }
                if !in_transaction && batch_end.is_none() && pending.is_empty() {
                    // Nothing in flight: the slot may advance over WAL with no changes for us.
                    stream.confirm(keepalive.wal_end).await?;
                    postgres
                        .confirmed_lsn
                        .store(stream.confirmed().0, Ordering::Relaxed);
                }
                continue;
            }
            WalMessage::Data {
                wal_end, message, ..
            } => (wal_end, message),
        };
        postgres.server_lsn.fetch_max(wal_end.0, Ordering::Relaxed);
        match message {
            LogicalMessage::Begin(begin) => {
                in_transaction = true;
                // A transaction whose commit lies before what we confirmed was delivered.
                replayed = begin.final_lsn < resume;
                commit_timestamp =
                    Arc::from(pgoutput::format_commit_timestamp(begin.commit_time_micros));
                // pgoutput counts from 2000-01-01.
                postgres.batch_commit_micros.store(
                    begin
                        .commit_time_micros
                        .saturating_add(POSTGRES_EPOCH_MICROS),
                    Ordering::Relaxed,
                );
            }
            LogicalMessage::Commit(commit) => {
                in_transaction = false;
                if replayed {
                    pending.clear();
                    messages.clear();
                    continue;
                }
                // Database broadcasts go out at once (fan-out never waits); the slot is
                // confirmed past this transaction only later, after its changes too.
                for message in messages.drain(..) {
                    broadcast::deliver_stored(
                        &outlet.registry,
                        &outlet.limits,
                        &message,
                        outlet.max_payload,
                    );
                    metrics.database_events(1);
                }
                batch.append(&mut pending);
                batch_end = Some(commit.end_lsn);
                if deadline.is_none() {
                    deadline = Some(Instant::now() + BATCH_WINDOW);
                }
                if batch.len() >= BATCH_MAX {
                    flush(
                        postgres,
                        &outlet.limits,
                        metrics,
                        limits,
                        &mut stream,
                        &mut batch,
                        &mut batch_end,
                    )
                    .await?;
                    deadline = None;
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
                    if let Some(message) = stored_message(relation, &insert.new) {
                        messages.push(message);
                    }
                    continue;
                }
                if postgres.subscriptions.is_empty() {
                    continue;
                }
                if let Some(layout) = decoder.layout(postgres, insert.relation_oid).await? {
                    pending.push(Change {
                        table: layout.table.clone(),
                        action: Action::Insert,
                        new: Some(cells(layout, &insert.new)),
                        old: None,
                        old_key_only: false,
                        commit_timestamp: commit_timestamp.clone(),
                    });
                }
            }
            LogicalMessage::Update(update) => {
                if postgres.subscriptions.is_empty() {
                    continue;
                }
                if let Some(layout) = decoder.layout(postgres, update.relation_oid).await? {
                    pending.push(Change {
                        table: layout.table.clone(),
                        action: Action::Update,
                        new: Some(cells(layout, &update.new)),
                        old_key_only: update.old.as_ref().is_some_and(|o| o.kind == OldKind::Key),
                        old: update.old.as_ref().map(|o| cells(layout, &o.data)),
                        commit_timestamp: commit_timestamp.clone(),
                    });
                }
            }
            LogicalMessage::Delete(delete) => {
                if postgres.subscriptions.is_empty() {
                    continue;
                }
                if let Some(layout) = decoder.layout(postgres, delete.relation_oid).await? {
                    pending.push(Change {
                        table: layout.table.clone(),
                        action: Action::Delete,
                        new: None,
                        old_key_only: delete.old.kind == OldKind::Key,
                        old: Some(cells(layout, &delete.old.data)),
                        commit_timestamp: commit_timestamp.clone(),
                    });
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

/// Delivers the committed batch, then confirms its end to the slot.
async fn flush(
    postgres: &Postgres,
    limits: &crate::limits::Limits,
    metrics: &Metrics,
    render: RenderLimits,
    stream: &mut stream::ReplicationStream,
    batch: &mut Vec<Change>,
    batch_end: &mut Option<Lsn>,
) -> Result<(), ReplicationError> {
    let Some(end) = *batch_end else {
        return Ok(());
    };
    // While the events limit is tripped, changes are not delivered (as the reference's
    // db_events counter); the slot still advances past them.
    let delivered = if limits.db_events.tripped() {
        tracing::warn!(
            changes = batch.len(),
            "dropping changes: too many messages per second"
        );
        0
    } else {
        delivery::deliver(
            batch,
            &postgres.subscriptions,
            &postgres.catalog,
            &postgres.pool,
            metrics,
            render,
        )
        .await?
    };
    limits.db_events.add(delivered as u64);
    metrics.database_events(delivered as u64);
    metrics.replication_delivered(postgres.batch_commit_micros.load(Ordering::Relaxed));
    batch.clear();
    *batch_end = None;
    stream.confirm(end).await?;
    postgres
        .confirmed_lsn
        .store(stream.confirmed().0, Ordering::Relaxed);
    Ok(())
}
