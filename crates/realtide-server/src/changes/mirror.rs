//! Every node's reader of the cluster's change stream ([`crate::changes::shared`]): applies
//! the records to this node's change journal, from where the change feed delivers them to this
//! node's subscribers, and hands database broadcasts to this node's subscribers only.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream;
use futures_util::StreamExt;
use realtide_protocol::peer::{self, PeerMessage, Record, Value};
use tokio_util::sync::CancellationToken;

use crate::changes::change::{Cell, Change, ChangeKind};
use crate::changes::postgres::Postgres;
use crate::changes::shared::SharedStream;
use crate::channels::broadcast::{StoredBody, StoredMessage};
use crate::channels::publish::Publisher;
use crate::metrics::Metrics;

/// Where the reader stopped: the stream sequence of the last message applied and synced.
fn position_path(postgres: &Postgres) -> std::path::PathBuf {
    postgres.config.changes.dir.join("cluster_position")
}

fn load_position(postgres: &Postgres) -> Option<u64> {
    std::fs::read_to_string(position_path(postgres))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn save_position(postgres: &Postgres, seq: u64) {
    let path = position_path(postgres);
    let temporary = path.with_extension("tmp");
    let saved = std::fs::write(&temporary, seq.to_string())
        .and_then(|()| std::fs::rename(&temporary, &path));
    if let Err(error) = saved {
        tracing::warn!(%error, "could not save the change stream position");
    }
}

/// The transaction being applied from the stream.
#[derive(Debug, Default)]
struct Open {
    final_lsn: u64,
    xid: u32,
    commit_micros: i64,
    commit_timestamp: Arc<str>,
    /// Already in the journal (a copy appended again after a failover): skipped.
    replayed: bool,
    /// Whether its changes are journaled (someone may need them).
    journaling: bool,
    messages: Vec<StoredMessage>,
}

/// What the reader works with.
struct Context<'a> {
    postgres: &'a Arc<Postgres>,
    publisher: &'a Publisher,
    max_payload: usize,
    metrics: &'a Metrics,
    shutdown: &'a CancellationToken,
}

/// Reads the shared stream into this node's journal until shutdown; database broadcasts go to
/// this node's subscribers only (every node reads them from the stream).
pub async fn read(
    postgres: Arc<Postgres>,
    publisher: Publisher,
    max_payload: usize,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let Some(shared) = postgres.shared.clone() else {
        return;
    };
    let mut backoff = Duration::from_millis(200);
    // The last message applied, across reconnects; at start, where the last run stopped.
    let mut position = load_position(&postgres);
    let Some(mut local) = shared.local_reader.lock().take() else {
        return;
    };
    let mut open: Option<Open> = None;
    let ctx = Context {
        postgres: &postgres,
        publisher: &publisher,
        max_payload,
        metrics: &metrics,
        shutdown: &shutdown,
    };
    loop {
        let result = read_session(&ctx, &shared, &mut position, &mut open, &mut local).await;
        if open.take().is_some()
            && let Err(error) = postgres.journal.abort()
        {
            tracing::warn!(error = %crate::logs::error_chain(&error), "could not cut an unfinished transaction from the change journal");
        }
        if let Err(error) = postgres.journal.sync().await {
            tracing::warn!(error = %crate::logs::error_chain(&error), "could not sync the change journal");
        }
        match result {
            Ok(()) => return,
            Err(error) => {
                tracing::warn!(%error, "change stream reader stopped; reconnecting");
            }
        }
        // While the stream is unreachable, this node's own transactions (when it consumes the
        // slot) still come through the local hand-over.
        let retry = tokio::time::sleep(backoff);
        tokio::pin!(retry);
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                () = &mut retry => break,
                Some(records) = local.recv() => {
                    for record in records {
                        if let Err(error) = apply(&ctx, &mut open, record).await {
                            tracing::warn!(%error, "could not apply a local transaction");
                        }
                    }
                    if let Err(error) = postgres.journal.sync().await {
                        tracing::warn!(error = %crate::logs::error_chain(&error), "could not sync the change journal");
                    }
                }
            }
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn read_session(
    ctx: &Context<'_>,
    shared: &SharedStream,
    position: &mut Option<u64>,
    open: &mut Option<Open>,
    local: &mut tokio::sync::mpsc::Receiver<Vec<Record>>,
) -> Result<(), String> {
    let Context {
        postgres,
        metrics,
        shutdown,
        ..
    } = *ctx;
    let stream = shared.stream().await.map_err(|e| e.to_string())?;
    let state = stream.get_info().await.map_err(|e| e.to_string())?.state;
    match *position {
        // First start: what is stored already was delivered by the nodes that were running;
        // from here on this node reads everything, also across the reconnects that follow (a
        // "new messages only" consumer made after a NATS restart would skip what the slot
        // holder appended in between).
        None => *position = Some(state.last_sequence),
        // The stream was made again (its store was lost): read all of it; records already in
        // the journal are skipped by their commit position.
        Some(seq) if state.last_sequence < seq => {
            tracing::warn!(
                position = seq,
                last = state.last_sequence,
                "the change stream is behind this node's position; reading it from its start"
            );
            *position = Some(state.first_sequence.saturating_sub(1));
        }
        Some(_) => {}
    }
    let deliver_policy = match *position {
        Some(seq) => jetstream::consumer::DeliverPolicy::ByStartSequence {
            start_sequence: seq + 1,
        },
        None => jetstream::consumer::DeliverPolicy::New,
    };
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            deliver_policy,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
    // Changes reach this node's subscribers from now on.
    postgres
        .replication
        .send_if_modified(|status| match status {
            crate::changes::progress::ReplicationStatus::Starting => {
                *status = crate::changes::progress::ReplicationStatus::Streaming;
                true
            }
            _ => false,
        });
    tracing::info!(stream = %shared.name(), "reading the cluster's change stream");
    let journal = &postgres.journal;
    let mut unsynced: Option<u64> = None;
    // A NATS server restart loses the consumer; it is made again from the last position.
    let mut was_lost = false;
    let mut check = tokio::time::interval(Duration::from_millis(500));
    let mut parts = crate::changes::shared::Parts::default();
    loop {
        // Backpressure: while the journal is over its bound, stop reading (the stream keeps
        // the messages).
        while journal.bytes() > postgres.config.changes.max_bytes && !shutdown.is_cancelled() {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => {}
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
        let next = tokio::select! {
            biased;
            () = shutdown.cancelled() => return Ok(()),
            // Nothing waiting: make what was applied durable and remember the position.
            () = tokio::time::sleep(Duration::from_millis(5)), if unsynced.is_some() => {
                if let Some(seq) = unsynced.take() {
                    journal.sync().await.map_err(|e| e.to_string())?;
                    save_position(postgres, seq);
                }
                continue;
            }
            _ = check.tick() => {
                if !shared.connected() {
                    was_lost = true;
                } else if was_lost {
                    return Err("NATS reconnected; reading the change stream again from the last position".to_owned());
                }
                continue;
            }
            // This node consumes the slot and NATS is away: its transactions come straight.
            Some(records) = local.recv() => {
                for record in records {
                    apply(ctx, open, record).await?;
                }
                journal.sync().await.map_err(|e| e.to_string())?;
                continue;
            }
            next = messages.next() => next,
        };
        let Some(message) = next else {
            return Err("the change stream consumer ended".to_owned());
        };
        let message = message.map_err(|e| e.to_string())?;
        let (seq, pending) = match message.info() {
            Ok(info) => (info.stream_sequence, info.pending),
            Err(error) => return Err(error.to_string()),
        };
        metrics.cluster.received(message.payload.len());
        metrics.cluster.stream_lag.store(pending, Ordering::Relaxed);
        let whole;
        let payload: &[u8] = match message
            .headers
            .as_ref()
            .and_then(|h| h.get(crate::changes::shared::PART_HEADER))
        {
            None => &message.payload,
            Some(part) => match parts.take(part.as_str(), &message.payload) {
                Some(bytes) => {
                    whole = bytes;
                    &whole
                }
                // The position stays before the message's first part until its last one
                // arrived, so a restart reads the whole message again.
                None => continue,
            },
        };
        let records = match peer::decode(payload) {
            Ok(PeerMessage::Records(records)) => records,
            Ok(_) | Err(_) => {
                tracing::error!(seq, "undecodable change stream message skipped");
                continue;
            }
        };
        for record in records {
            apply(ctx, open, record).await?;
        }
        *position = Some(seq);
        unsynced = Some(seq);
        if pending == 0 || unsynced.is_some_and(|_| journal.head() > journal.synced() + 4096) {
            journal.sync().await.map_err(|e| e.to_string())?;
            save_position(postgres, seq);
            unsynced = None;
        }
    }
}

async fn apply(ctx: &Context<'_>, open: &mut Option<Open>, record: Record) -> Result<(), String> {
    let Context {
        postgres,
        publisher,
        max_payload,
        metrics,
        shutdown,
    } = *ctx;
    let journal = &postgres.journal;
    match record {
        Record::Begin {
            final_lsn,
            xid,
            commit_micros,
        } => {
            if open.take().is_some() {
                // The consumer that appended it died before its commit; this is the new
                // consumer's copy (or the next transaction).
                journal.abort().map_err(|e| e.to_string())?;
            }
            let replayed = final_lsn < journal.last_end_lsn();
            *open = Some(Open {
                final_lsn,
                xid,
                commit_micros,
                commit_timestamp: Arc::from(
                    realtide_replication::pgoutput::format_commit_timestamp(commit_micros),
                ),
                replayed,
                journaling: !replayed
                    && (!postgres.subscriptions.is_empty()
                        || !postgres.subscriptions.book().is_empty()),
                messages: Vec::new(),
            });
        }
        Record::Change {
            relation,
            kind,
            columns,
            new,
            old,
            old_key_only,
        } => {
            let Some(txn) = open.as_ref().filter(|t| t.journaling) else {
                return Ok(());
            };
            let Some(mut table) = table(postgres, relation, shutdown).await? else {
                return Ok(());
            };
            let same = |table: &crate::db::catalog::Table| {
                table.columns.len() == columns.len()
                    && table
                        .columns
                        .iter()
                        .zip(&columns)
                        .all(|(c, n)| c.name == *n)
            };
            if !same(&table) {
                // The consuming node saw a DDL change this node's catalog cache has not: look
                // the table up again (the consumer invalidates its cache on Relation messages).
                postgres.catalog.invalidate(relation);
                match self::table(postgres, relation, shutdown).await? {
                    Some(fresh) => table = fresh,
                    None => return Ok(()),
                }
            }
            let align = |values: Option<Vec<Value>>| {
                values.map(|values| {
                    table
                        .columns
                        .iter()
                        .map(|column| {
                            let at = columns.iter().position(|c| *c == column.name);
                            match at.and_then(|at| values.get(at)) {
                                Some(Value::Text(text)) => Cell::Text(text.clone()),
                                Some(Value::Toast) => Cell::Toast,
                                Some(Value::Null) | None => Cell::Null,
                            }
                        })
                        .collect()
                })
            };
            journal
                .append(Change {
                    seq: 0,
                    xid: txn.xid,
                    commit_micros: txn.commit_micros,
                    table: table.clone(),
                    kind: match kind {
                        0 => ChangeKind::Insert,
                        1 => ChangeKind::Update,
                        _ => ChangeKind::Delete,
                    },
                    new: align(new),
                    old: align(old),
                    old_key_only,
                    commit_timestamp: txn.commit_timestamp.clone(),
                })
                .map_err(|e| e.to_string())?;
        }
        Record::Message {
            topic,
            private,
            event,
            id,
            binary,
            body,
        } => {
            if let Some(txn) = open.as_mut().filter(|t| !t.replayed) {
                let body = if binary {
                    StoredBody::Binary(body)
                } else {
                    StoredBody::Json(String::from_utf8_lossy(&body).into_owned())
                };
                txn.messages.push(StoredMessage {
                    topic,
                    private,
                    event,
                    id,
                    body,
                });
            }
        }
        Record::Commit { final_lsn, end_lsn } => {
            let Some(txn) = open.take() else {
                return Ok(());
            };
            if txn.final_lsn != final_lsn || txn.replayed {
                if !txn.replayed {
                    journal.abort().map_err(|e| e.to_string())?;
                }
                return Ok(());
            }
            // Always committed, also without changes: the commit record is what tells a
            // transaction appended again from a new one.
            journal.commit(end_lsn).map_err(|e| e.to_string())?;
            for message in &txn.messages {
                crate::channels::publish::deliver_stored(publisher, message, max_payload);
                metrics.database_events(1);
            }
        }
    }
    Ok(())
}

/// The catalog's table of `oid`; a database error is retried (it delays, never drops).
async fn table(
    postgres: &Postgres,
    oid: u32,
    shutdown: &CancellationToken,
) -> Result<Option<Arc<crate::db::catalog::Table>>, String> {
    let mut backoff = Duration::from_millis(50);
    loop {
        match postgres.catalog.table(oid).await {
            Ok(table) => return Ok(table),
            Err(error) => {
                tracing::warn!(error = %crate::logs::error_chain(&error), "catalog lookup failed; retrying");
            }
        }
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return Err("shutdown".to_owned()),
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
