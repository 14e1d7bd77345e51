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
    client: async_nats::Client,
    js: jetstream::Context,
    stream: String,
    subject: String,
    /// Whether this node consumes the replication slot now.
    pub holding_slot: AtomicBool,
    /// Whether this node was refused the slot because another node held it.
    pub refused: AtomicBool,
    /// Woken when another node said it released the slot (its drain at SIGTERM).
    pub slot_freed: tokio::sync::Notify,
    /// While NATS is away, the consuming node hands its transactions straight to its own
    /// reader (its subscribers keep getting changes; the slot is not confirmed, so they are
    /// appended to the stream for the other nodes once NATS is back).
    local: tokio::sync::mpsc::Sender<Vec<Record>>,
    /// The reader's end of `local`, taken once by the reader.
    pub local_reader: parking_lot::Mutex<Option<tokio::sync::mpsc::Receiver<Vec<Record>>>>,
}

impl SharedStream {
    /// Creates the stream `realtide_<scope>` (or updates its limits).
    pub async fn open(
        client: async_nats::Client,
        scope: &str,
        max_age: Duration,
        replicas: usize,
    ) -> Result<SharedStream, SharedError> {
        let js = jetstream::new(client.clone());
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
        let (local, local_reader) = tokio::sync::mpsc::channel(64);
        Ok(SharedStream {
            local,
            local_reader: parking_lot::Mutex::new(Some(local_reader)),
            client,
            js,
            stream,
            subject,
            holding_slot: AtomicBool::new(false),
            refused: AtomicBool::new(false),
            slot_freed: tokio::sync::Notify::new(),
        })
    }

    /// Appends records and waits until JetStream stored them. A message over the NATS
    /// server's `max_payload` (a row of several megabytes) goes in parts, each stored before the
    /// next is sent; readers put the parts together again.
    pub async fn append(&self, records: &[Record], metrics: &Metrics) -> Result<(), SharedError> {
        let payload = peer::encode_records(records);
        let (first, last) = (lsn_of(records.first()), lsn_of(records.last()));
        // Identical content gets an identical id, so JetStream drops an identical re-append.
        let id = format!(
            "{first:x}-{last:x}-{}-{:08x}",
            records.len(),
            crc32fast::hash(&payload)
        );
        let limit = self
            .client
            .server_info()
            .max_payload
            .saturating_sub(PART_HEADROOM)
            .max(PART_HEADROOM);
        if payload.len() <= limit {
            return self.store(payload.into(), id, None, metrics).await;
        }
        let parts: Vec<&[u8]> = payload.chunks(limit).collect();
        let count = parts.len();
        for (index, part) in parts.into_iter().enumerate() {
            self.store(
                bytes::Bytes::copy_from_slice(part),
                format!("{id}-p{index}"),
                Some(format!("{index}/{count}/{id}")),
                metrics,
            )
            .await?;
        }
        Ok(())
    }

    async fn store(
        &self,
        payload: bytes::Bytes,
        id: String,
        part: Option<String>,
        metrics: &Metrics,
    ) -> Result<(), SharedError> {
        let size = payload.len();
        let mut publish = jetstream::context::Publish::build()
            .payload(payload)
            .message_id(id);
        if let Some(part) = part {
            publish = publish.header(PART_HEADER, part.as_str());
        }
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

/// The header of a part of a message split over several stream messages: `index/count/id`.
pub const PART_HEADER: &str = "Rt-Part";
/// Room left under `max_payload` for headers.
const PART_HEADROOM: usize = 16 * 1024;

/// Puts the parts of split messages together again, in stream order.
#[derive(Debug, Default)]
pub struct Parts {
    id: String,
    next: usize,
    bytes: Vec<u8>,
}

impl Parts {
    /// Takes a part (`index/count/id` and its bytes); returns the whole message after its
    /// last part. A part out of order (a consumer died in the middle; the new one appends the
    /// message again from its first part) drops what was gathered.
    pub fn take(&mut self, header: &str, bytes: &[u8]) -> Option<Vec<u8>> {
        let mut fields = header.splitn(3, '/');
        let index: usize = fields.next()?.parse().ok()?;
        let count: usize = fields.next()?.parse().ok()?;
        let id = fields.next()?;
        if index == 0 {
            self.id = id.to_owned();
            self.next = 0;
            self.bytes.clear();
        }
        if id != self.id || index != self.next {
            self.next = usize::MAX;
            return None;
        }
        self.bytes.extend_from_slice(bytes);
        self.next += 1;
        if self.next == count {
            self.next = usize::MAX;
            return Some(std::mem::take(&mut self.bytes));
        }
        None
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
    /// Whether the NATS connection is up.
    pub fn connected(&self) -> bool {
        matches!(
            self.client.connection_state(),
            async_nats::connection::State::Connected
        )
    }

    /// Hands records to this node's own reader (NATS is away).
    pub async fn hand_locally(&self, records: Vec<Record>) {
        let _ = self.local.send(records).await;
    }

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

#[cfg(test)]
mod tests {
    use super::Parts;

    #[test]
    fn parts_join_in_order_and_restart_after_a_gap() {
        let mut parts = Parts::default();
        assert_eq!(parts.take("0/3/a", b"x"), None);
        assert_eq!(parts.take("1/3/a", b"y"), None);
        assert_eq!(parts.take("2/3/a", b"z"), Some(b"xyz".to_vec()));
        // A consumer died after part 1; the new one appends from part 0 again.
        assert_eq!(parts.take("0/2/b", b"1"), None);
        assert_eq!(parts.take("0/2/b", b"1"), None);
        assert_eq!(parts.take("1/2/b", b"2"), Some(b"12".to_vec()));
        // A part without its beginning is dropped, and so is the rest of that message.
        assert_eq!(parts.take("1/2/c", b"2"), None);
        assert_eq!(parts.take("nonsense", b""), None);
        assert_eq!(parts.take("0/1/d", b"q"), Some(b"q".to_vec()));
    }
}
