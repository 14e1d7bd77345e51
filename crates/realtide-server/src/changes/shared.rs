//! The change stream a cluster shares, in NATS JetStream.
//!
//! One node at a time consumes the replication slot (PostgreSQL refuses a second consumer of an
//! active slot). It encodes each committed transaction as records ([`Record`]: begin, changes,
//! stored broadcasts, commit), appends them to the JetStream stream, and confirms the slot only
//! after JetStream acknowledged them as stored. Every node, the consumer included, reads the
//! stream ([`crate::changes::mirror`]) into its own change journal; from there its own change
//! feed filters, checks RLS and delivers to its own subscribers, exactly as on a single node.
//!
//! Duplicates: the stream deduplicates identical appends by message id, and a reader skips
//! every transaction whose commit LSN is not past the last one its journal holds, so a new
//! consumer that streams again what the old one appended but had not confirmed delivers nothing
//! twice. A transaction cut off by a dying consumer is aborted in the journal when the new
//! consumer's copy of it begins.

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use async_nats::jetstream;
use realtide_protocol::peer::{self, Record, Value};

use crate::changes::change::{Cell, Change, ChangeKind};
use crate::channels::broadcast::{StoredBody, StoredMessage};
use crate::metrics::Metrics;

/// A transaction's records are appended in messages of at most about this size.
pub const CHUNK_BYTES: usize = 256 * 1024;
/// Longest wait for JetStream to acknowledge an append.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the shared stream failed.
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    /// The stream could not be created or looked up.
    #[error("JetStream stream {stream}: {message}")]
    Stream {
        /// Its name.
        stream: String,
        /// What failed.
        message: String,
    },
    /// An append was not acknowledged.
    #[error("JetStream append: {0}")]
    Append(String),
}

/// The cluster's change stream.
#[derive(Debug)]
pub struct SharedStream {
    js: jetstream::Context,
    stream: String,
    subject: String,
    /// Whether this node consumes the replication slot now.
    pub holding_slot: AtomicBool,
    /// Whether this node was refused the slot because another node held it.
    pub refused: AtomicBool,
    /// Woken when another node said it released the slot (its drain at SIGTERM).
    pub slot_freed: tokio::sync::Notify,
}

impl SharedStream {
    /// Creates the stream `realtide_<scope>` (or updates its limits).
    pub async fn open(
        client: async_nats::Client,
        scope: &str,
        max_age: Duration,
        replicas: usize,
    ) -> Result<SharedStream, SharedError> {
        let js = jetstream::new(client);
        let stream = format!("realtide_{scope}");
        let subject = format!("rt.{scope}.changes");
        let config = jetstream::stream::Config {
            name: stream.clone(),
            subjects: vec![subject.clone()],
            max_age,
            num_replicas: replicas,
            storage: jetstream::stream::StorageType::File,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        };
        let failed = |e: &dyn std::fmt::Display| SharedError::Stream {
            stream: stream.clone(),
            message: e.to_string(),
        };
        match js.get_stream(&stream).await {
            Ok(_) => {
                js.update_stream(&config).await.map_err(|e| failed(&e))?;
            }
            Err(_) => {
                if let Err(error) = js.create_stream(config).await {
                    // Another node created it meanwhile.
                    js.get_stream(&stream).await.map_err(|_| failed(&error))?;
                }
            }
        }
        Ok(SharedStream {
            js,
            stream,
            subject,
            holding_slot: AtomicBool::new(false),
            refused: AtomicBool::new(false),
            slot_freed: tokio::sync::Notify::new(),
        })
    }

    /// Appends records and waits until JetStream stored them.
    pub async fn append(&self, records: &[Record], metrics: &Metrics) -> Result<(), SharedError> {
        let payload = peer::encode_records(records);
        let (first, last) = (lsn_of(records.first()), lsn_of(records.last()));
        // Identical content gets an identical id, so JetStream drops an identical re-append.
        let id = format!(
            "{first:x}-{last:x}-{}-{:08x}",
            records.len(),
            crc32fast::hash(&payload)
        );
        let size = payload.len();
        let publish = jetstream::context::Publish::build()
            .payload(payload.into())
            .message_id(id);
        let acked = async {
            self.js
                .send_publish(self.subject.clone(), publish)
                .await
                .map_err(|e| SharedError::Append(e.to_string()))?
                .await
                .map_err(|e| SharedError::Append(e.to_string()))
        };
        tokio::time::timeout(ACK_TIMEOUT, acked)
            .await
            .map_err(|_| SharedError::Append("not acknowledged in time".to_owned()))??;
        metrics.cluster.sent(size);
        Ok(())
    }
}

fn lsn_of(record: Option<&Record>) -> u64 {
    match record {
        Some(Record::Begin { final_lsn, .. } | Record::Commit { final_lsn, .. }) => *final_lsn,
        _ => 0,
    }
}

/// The record of a decoded change.
pub fn record_of(change: &Change) -> Record {
    let values = |cells: &Option<Vec<Cell>>| {
        cells.as_ref().map(|cells| {
            cells
                .iter()
                .map(|cell| match cell {
                    Cell::Null => Value::Null,
                    Cell::Toast => Value::Toast,
                    Cell::Text(text) => Value::Text(text.clone()),
                })
                .collect()
        })
    };
    Record::Change {
        relation: change.table.oid,
        kind: match change.kind {
            ChangeKind::Insert => 0,
            ChangeKind::Update => 1,
            ChangeKind::Delete => 2,
        },
        columns: change
            .table
            .columns
            .iter()
            .map(|c| c.name.clone())
            .collect(),
        new: values(&change.new),
        old: values(&change.old),
        old_key_only: change.old_key_only,
    }
}

/// The record of a stored broadcast.
pub fn message_record(message: StoredMessage) -> Record {
    let (binary, body) = match message.body {
        StoredBody::Json(text) => (false, text.into_bytes()),
        StoredBody::Binary(bytes) => (true, bytes),
    };
    Record::Message {
        topic: message.topic,
        private: message.private,
        event: message.event,
        id: message.id,
        binary,
        body,
    }
}

/// Approximate encoded size of a record (for chunking).
pub fn record_size(record: &Record) -> usize {
    match record {
        Record::Begin { .. } | Record::Commit { .. } => 24,
        Record::Change {
            columns, new, old, ..
        } => {
            let values = |v: &Option<Vec<Value>>| {
                v.as_ref().map_or(0, |v| {
                    v.iter()
                        .map(|v| match v {
                            Value::Text(t) => t.len() + 5,
                            Value::Null | Value::Toast => 1,
                        })
                        .sum()
                })
            };
            16 + columns.iter().map(|c| c.len() + 4).sum::<usize>() + values(new) + values(old)
        }
        Record::Message {
            topic,
            event,
            id,
            body,
            ..
        } => 24 + topic.len() + event.len() + id.len() + body.len(),
    }
}

impl SharedStream {
    /// Its JetStream stream.
    pub async fn stream(&self) -> Result<jetstream::stream::Stream, SharedError> {
        self.js
            .get_stream(&self.stream)
            .await
            .map_err(|e| SharedError::Stream {
                stream: self.stream.clone(),
                message: e.to_string(),
            })
    }

    /// The stream's name.
    pub fn name(&self) -> &str {
        &self.stream
    }
}
