//! The messages realtide nodes of one cluster exchange over NATS, and their binary form.
//!
//! Every message starts with a version byte and a kind byte; fields follow as fixed-width
//! big-endian integers and length-prefixed (`u32`) byte strings. Decoding never panics on any
//! input: every read is checked, and unknown versions or kinds decode to an error. Peers are
//! other realtide nodes, but their bytes cross a network and a broker, so they are parsed with
//! the same care as a client's.

/// Version byte of every message; a node refuses messages of another version.
pub const VERSION: u8 = 1;

/// Why a peer message did not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    /// The message ended inside a field.
    #[error("peer message truncated")]
    Truncated,
    /// Another protocol version.
    #[error("peer message version {0} is not {VERSION}")]
    Version(u8),
    /// An unknown message or field kind.
    #[error("unknown peer message kind {0}")]
    Kind(u8),
    /// A text field is not UTF-8.
    #[error("peer message text is not UTF-8")]
    Utf8,
    /// Bytes were left after the message.
    #[error("peer message has trailing bytes")]
    Trailing,
}

/// Appends fields to a message.
#[derive(Debug, Default)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// A message of `kind`.
    pub fn new(kind: u8) -> Self {
        Self {
            buf: vec![VERSION, kind],
        }
    }

    /// The encoded message.
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }

    /// One byte.
    pub fn u8(&mut self, value: u8) -> &mut Self {
        self.buf.push(value);
        self
    }

    /// A boolean as one byte.
    pub fn bool(&mut self, value: bool) -> &mut Self {
        self.u8(u8::from(value))
    }

    /// A big-endian `u32`.
    pub fn u32(&mut self, value: u32) -> &mut Self {
        self.buf.extend_from_slice(&value.to_be_bytes());
        self
    }

    /// A big-endian `u64`.
    pub fn u64(&mut self, value: u64) -> &mut Self {
        self.buf.extend_from_slice(&value.to_be_bytes());
        self
    }

    /// A big-endian `i64`.
    pub fn i64(&mut self, value: i64) -> &mut Self {
        self.buf.extend_from_slice(&value.to_be_bytes());
        self
    }

    /// Length-prefixed bytes. Longer than `u32::MAX` is cut, which no bounded message reaches.
    pub fn bytes(&mut self, value: &[u8]) -> &mut Self {
        let len = u32::try_from(value.len()).unwrap_or(u32::MAX);
        self.u32(len);
        self.buf
            .extend_from_slice(value.get(..len as usize).unwrap_or(value));
        self
    }

    /// Length-prefixed UTF-8.
    pub fn str(&mut self, value: &str) -> &mut Self {
        self.bytes(value.as_bytes())
    }

    /// An optional string: a presence byte, then the string.
    pub fn opt_str(&mut self, value: Option<&str>) -> &mut Self {
        match value {
            None => self.u8(0),
            Some(value) => self.u8(1).str(value),
        }
    }
}

/// Reads fields of a message, checking every length.
#[derive(Debug)]
pub struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Checks the version and returns the message kind and a reader over its fields.
    pub fn open(message: &'a [u8]) -> Result<(u8, Reader<'a>), PeerError> {
        let mut reader = Reader { rest: message };
        let version = reader.u8()?;
        if version != VERSION {
            return Err(PeerError::Version(version));
        }
        let kind = reader.u8()?;
        Ok((kind, reader))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], PeerError> {
        let (head, tail) = self.rest.split_at_checked(n).ok_or(PeerError::Truncated)?;
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], PeerError> {
        self.take(N)?.try_into().map_err(|_| PeerError::Truncated)
    }

    /// One byte.
    pub fn u8(&mut self) -> Result<u8, PeerError> {
        Ok(u8::from_be_bytes(self.array()?))
    }

    /// A boolean byte (anything but 0 is true).
    pub fn bool(&mut self) -> Result<bool, PeerError> {
        Ok(self.u8()? != 0)
    }

    /// A big-endian `u32`.
    pub fn u32(&mut self) -> Result<u32, PeerError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    /// A big-endian `u64`.
    pub fn u64(&mut self) -> Result<u64, PeerError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// A big-endian `i64`.
    pub fn i64(&mut self) -> Result<i64, PeerError> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    /// Length-prefixed bytes.
    pub fn bytes(&mut self) -> Result<&'a [u8], PeerError> {
        let len = self.u32()? as usize;
        self.take(len)
    }

    /// Length-prefixed UTF-8.
    pub fn str(&mut self) -> Result<&'a str, PeerError> {
        std::str::from_utf8(self.bytes()?).map_err(|_| PeerError::Utf8)
    }

    /// An optional string.
    pub fn opt_str(&mut self) -> Result<Option<&'a str>, PeerError> {
        match self.u8()? {
            0 => Ok(None),
            1 => self.str().map(Some),
            other => Err(PeerError::Kind(other)),
        }
    }

    /// A count of following items, bounded by the bytes left (each item takes at least
    /// `min_item` bytes), so a forged count cannot make a caller reserve memory.
    pub fn count(&mut self, min_item: usize) -> Result<usize, PeerError> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min_item.max(1)) > self.rest.len() {
            return Err(PeerError::Truncated);
        }
        Ok(n)
    }

    /// Whether every byte was read.
    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// Fails when bytes are left.
    pub fn end(&self) -> Result<(), PeerError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(PeerError::Trailing)
        }
    }
}

/// Message kinds.
pub mod kind {
    /// A user broadcast.
    pub const BROADCAST: u8 = 1;
    /// A presence change of one node in one topic.
    pub const PRESENCE: u8 = 2;
    /// A node's heartbeat (or goodbye).
    pub const HEARTBEAT: u8 = 3;
    /// A node asks for the presences of one topic.
    pub const SYNC: u8 = 4;
    /// The answer to [`SYNC`].
    pub const SYNCED: u8 = 5;
    /// Records of the change stream.
    pub const RECORDS: u8 = 6;
}

/// A broadcast's body as it crossed the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BroadcastBody {
    /// A whole `{"type":"broadcast",...}` payload, relayed verbatim.
    Payload(String),
    /// A user event with a JSON or binary body and optional metadata (JSON text).
    User {
        /// The event.
        event: String,
        /// True for a binary body.
        binary: bool,
        /// The body.
        body: Vec<u8>,
        /// Metadata.
        meta: Option<String>,
    },
}

/// A user broadcast published on another node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broadcast {
    /// Private topic.
    pub private: bool,
    /// Sub-topic.
    pub topic: String,
    /// Stored message id (replay dedup).
    pub id: Option<String>,
    /// The body.
    pub body: BroadcastBody,
}

impl Broadcast {
    /// Encodes the message.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new(kind::BROADCAST);
        w.bool(self.private)
            .str(&self.topic)
            .opt_str(self.id.as_deref());
        match &self.body {
            BroadcastBody::Payload(payload) => {
                w.u8(0).str(payload);
            }
            BroadcastBody::User {
                event,
                binary,
                body,
                meta,
            } => {
                w.u8(1)
                    .str(event)
                    .bool(*binary)
                    .bytes(body)
                    .opt_str(meta.as_deref());
            }
        }
        w.finish()
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, PeerError> {
        let private = r.bool()?;
        let topic = r.str()?.to_owned();
        let id = r.opt_str()?.map(str::to_owned);
        let body = match r.u8()? {
            0 => BroadcastBody::Payload(r.str()?.to_owned()),
            1 => {
                let event = r.str()?.to_owned();
                let binary = r.bool()?;
                let body = r.bytes()?.to_vec();
                if !binary && std::str::from_utf8(&body).is_err() {
                    return Err(PeerError::Utf8);
                }
                BroadcastBody::User {
                    event,
                    binary,
                    body,
                    meta: r.opt_str()?.map(str::to_owned),
                }
            }
            other => return Err(PeerError::Kind(other)),
        };
        Ok(Self {
            private,
            topic,
            id,
            body,
        })
    }
}

/// One tracked presence, as its owning node rendered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Presence key.
    pub key: String,
    /// Its `phx_ref` (unique in the cluster).
    pub phx_ref: String,
    /// The rendered meta (JSON object text).
    pub rendered: String,
}

/// A presence change of one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresenceChange {
    /// A member joined (or updated: a leave of the old `phx_ref` comes with it).
    Join {
        /// The new member.
        member: Member,
        /// The `phx_ref` it replaces, for an update.
        replaces: Option<String>,
    },
    /// A member left.
    Leave {
        /// Its `phx_ref`.
        phx_ref: String,
    },
    /// Every member the node has in the topic, replacing what was known of it.
    Snapshot {
        /// The members.
        members: Vec<Member>,
    },
}

/// A node's presence change in one topic. `seq` grows with every change the node makes in
/// any topic, so a receiver ignores what it already applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    /// The owning node.
    pub node: String,
    /// The node's change counter.
    pub seq: u64,
    /// Private topic.
    pub private: bool,
    /// Sub-topic.
    pub topic: String,
    /// The change.
    pub change: PresenceChange,
}

fn put_member(w: &mut Writer, member: &Member) {
    w.str(&member.key)
        .str(&member.phx_ref)
        .str(&member.rendered);
}

fn read_member(r: &mut Reader<'_>) -> Result<Member, PeerError> {
    Ok(Member {
        key: r.str()?.to_owned(),
        phx_ref: r.str()?.to_owned(),
        rendered: r.str()?.to_owned(),
    })
}

impl Presence {
    /// Encodes the message.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new(kind::PRESENCE);
        w.str(&self.node)
            .u64(self.seq)
            .bool(self.private)
            .str(&self.topic);
        match &self.change {
            PresenceChange::Join { member, replaces } => {
                w.u8(0);
                put_member(&mut w, member);
                w.opt_str(replaces.as_deref());
            }
            PresenceChange::Leave { phx_ref } => {
                w.u8(1).str(phx_ref);
            }
            PresenceChange::Snapshot { members } => {
                w.u8(2)
                    .u32(u32::try_from(members.len()).unwrap_or(u32::MAX));
                for member in members {
                    put_member(&mut w, member);
                }
            }
        }
        w.finish()
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, PeerError> {
        let node = r.str()?.to_owned();
        let seq = r.u64()?;
        let private = r.bool()?;
        let topic = r.str()?.to_owned();
        let change = match r.u8()? {
            0 => PresenceChange::Join {
                member: read_member(r)?,
                replaces: r.opt_str()?.map(str::to_owned),
            },
            1 => PresenceChange::Leave {
                phx_ref: r.str()?.to_owned(),
            },
            2 => {
                let n = r.count(12)?;
                let members = (0..n)
                    .map(|_| read_member(r))
                    .collect::<Result<Vec<_>, _>>()?;
                PresenceChange::Snapshot { members }
            }
            other => return Err(PeerError::Kind(other)),
        };
        Ok(Self {
            node,
            seq,
            private,
            topic,
            change,
        })
    }
}

/// A node's periodic announcement (or its goodbye at shutdown).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    /// The node.
    pub node: String,
    /// Random per process start: a node restarted under the same name is a new incarnation.
    pub incarnation: u64,
    /// Sockets with at least one channel on the node.
    pub users: u64,
    /// Whether the node consumes the replication slot.
    pub slot_holder: bool,
    /// The node is shutting down: forget it now.
    pub bye: bool,
}

impl Heartbeat {
    /// Encodes the message.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new(kind::HEARTBEAT);
        w.str(&self.node)
            .u64(self.incarnation)
            .u64(self.users)
            .bool(self.slot_holder)
            .bool(self.bye);
        w.finish()
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, PeerError> {
        Ok(Self {
            node: r.str()?.to_owned(),
            incarnation: r.u64()?,
            users: r.u64()?,
            slot_holder: r.bool()?,
            bye: r.bool()?,
        })
    }
}

/// A node asks every node for its presences in one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sync {
    /// The asking node.
    pub node: String,
    /// Private topic.
    pub private: bool,
    /// Sub-topic.
    pub topic: String,
}

impl Sync {
    /// Encodes the message.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new(kind::SYNC);
        w.str(&self.node).bool(self.private).str(&self.topic);
        w.finish()
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, PeerError> {
        Ok(Self {
            node: r.str()?.to_owned(),
            private: r.bool()?,
            topic: r.str()?.to_owned(),
        })
    }
}

/// The answer to a [`Sync`]: the node published its snapshot of the topic (with change
/// counter `seq`) on the topic's presence subject, or has no members there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Synced {
    /// The answering node.
    pub node: String,
    /// The snapshot's counter, when one was published.
    pub snapshot: Option<u64>,
}

impl Synced {
    /// Encodes the message.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new(kind::SYNCED);
        w.str(&self.node);
        match self.snapshot {
            None => w.u8(0),
            Some(seq) => w.u8(1).u64(seq),
        };
        w.finish()
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, PeerError> {
        let node = r.str()?.to_owned();
        let snapshot = match r.u8()? {
            0 => None,
            1 => Some(r.u64()?),
            other => return Err(PeerError::Kind(other)),
        };
        Ok(Self { node, snapshot })
    }
}

/// A column value of a change record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// An unchanged TOASTed value that was not sent.
    Toast,
    /// The value's text output.
    Text(String),
}

/// One record of the change stream: transactions as the slot's consumer decoded them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A transaction starts; `final_lsn` is its commit record's position (its identity).
    Begin {
        /// Commit LSN.
        final_lsn: u64,
        /// Transaction id.
        xid: u32,
        /// Commit time, microseconds since 2000-01-01.
        commit_micros: i64,
    },
    /// A row change.
    Change {
        /// The table's oid.
        relation: u32,
        /// 0 insert, 1 update, 2 delete.
        kind: u8,
        /// Column names the tuples are aligned to.
        columns: Vec<String>,
        /// New tuple.
        new: Option<Vec<Value>>,
        /// Old tuple.
        old: Option<Vec<Value>>,
        /// Whether `old` is only the replica-identity key.
        old_key_only: bool,
    },
    /// A broadcast stored in `realtime.messages`.
    Message {
        /// Sub-topic.
        topic: String,
        /// Private topic.
        private: bool,
        /// Event.
        event: String,
        /// Row id.
        id: String,
        /// True for a binary body.
        binary: bool,
        /// The body.
        body: Vec<u8>,
    },
    /// The transaction committed; `end_lsn` is where the slot may be confirmed.
    Commit {
        /// Commit LSN (as in `Begin`).
        final_lsn: u64,
        /// End LSN.
        end_lsn: u64,
    },
}

fn put_values(w: &mut Writer, values: Option<&[Value]>) {
    match values {
        None => {
            w.u8(0);
        }
        Some(values) => {
            w.u8(1).u32(u32::try_from(values.len()).unwrap_or(u32::MAX));
            for value in values {
                match value {
                    Value::Null => w.u8(0),
                    Value::Toast => w.u8(1),
                    Value::Text(text) => w.u8(2).str(text),
                };
            }
        }
    }
}

fn read_values(r: &mut Reader<'_>) -> Result<Option<Vec<Value>>, PeerError> {
    if !r.bool()? {
        return Ok(None);
    }
    let n = r.count(1)?;
    (0..n)
        .map(|_| {
            Ok(match r.u8()? {
                0 => Value::Null,
                1 => Value::Toast,
                2 => Value::Text(r.str()?.to_owned()),
                other => return Err(PeerError::Kind(other)),
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

impl Record {
    /// Appends the record to a [`kind::RECORDS`] message.
    pub fn put(&self, w: &mut Writer) {
        match self {
            Record::Begin {
                final_lsn,
                xid,
                commit_micros,
            } => {
                w.u8(0).u64(*final_lsn).u32(*xid).i64(*commit_micros);
            }
            Record::Change {
                relation,
                kind,
                columns,
                new,
                old,
                old_key_only,
            } => {
                w.u8(1)
                    .u32(*relation)
                    .u8(*kind)
                    .bool(*old_key_only)
                    .u32(u32::try_from(columns.len()).unwrap_or(u32::MAX));
                for column in columns {
                    w.str(column);
                }
                put_values(w, new.as_deref());
                put_values(w, old.as_deref());
            }
            Record::Message {
                topic,
                private,
                event,
                id,
                binary,
                body,
            } => {
                w.u8(2)
                    .str(topic)
                    .bool(*private)
                    .str(event)
                    .str(id)
                    .bool(*binary)
                    .bytes(body);
            }
            Record::Commit { final_lsn, end_lsn } => {
                w.u8(3).u64(*final_lsn).u64(*end_lsn);
            }
        }
    }

    fn read(r: &mut Reader<'_>) -> Result<Record, PeerError> {
        Ok(match r.u8()? {
            0 => Record::Begin {
                final_lsn: r.u64()?,
                xid: r.u32()?,
                commit_micros: r.i64()?,
            },
            1 => {
                let relation = r.u32()?;
                let kind = r.u8()?;
                if kind > 2 {
                    return Err(PeerError::Kind(kind));
                }
                let old_key_only = r.bool()?;
                let n = r.count(4)?;
                let columns = (0..n)
                    .map(|_| r.str().map(str::to_owned))
                    .collect::<Result<Vec<_>, _>>()?;
                Record::Change {
                    relation,
                    kind,
                    columns,
                    new: read_values(r)?,
                    old: read_values(r)?,
                    old_key_only,
                }
            }
            2 => {
                let topic = r.str()?.to_owned();
                let private = r.bool()?;
                let event = r.str()?.to_owned();
                let id = r.str()?.to_owned();
                let binary = r.bool()?;
                let body = r.bytes()?.to_vec();
                if !binary && std::str::from_utf8(&body).is_err() {
                    return Err(PeerError::Utf8);
                }
                Record::Message {
                    topic,
                    private,
                    event,
                    id,
                    binary,
                    body,
                }
            }
            3 => Record::Commit {
                final_lsn: r.u64()?,
                end_lsn: r.u64()?,
            },
            other => return Err(PeerError::Kind(other)),
        })
    }
}

/// Encodes records into one [`kind::RECORDS`] message.
pub fn encode_records(records: &[Record]) -> Vec<u8> {
    let mut w = Writer::new(kind::RECORDS);
    w.u32(u32::try_from(records.len()).unwrap_or(u32::MAX));
    for record in records {
        record.put(&mut w);
    }
    w.finish()
}

/// Any peer message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerMessage {
    /// See [`Broadcast`].
    Broadcast(Broadcast),
    /// See [`Presence`].
    Presence(Presence),
    /// See [`Heartbeat`].
    Heartbeat(Heartbeat),
    /// See [`Sync`].
    Sync(Sync),
    /// See [`Synced`].
    Synced(Synced),
    /// Change stream records, in order.
    Records(Vec<Record>),
}

/// Decodes a peer message.
pub fn decode(message: &[u8]) -> Result<PeerMessage, PeerError> {
    let (kind, mut r) = Reader::open(message)?;
    let decoded = match kind {
        kind::BROADCAST => PeerMessage::Broadcast(Broadcast::decode(&mut r)?),
        kind::PRESENCE => PeerMessage::Presence(Presence::decode(&mut r)?),
        kind::HEARTBEAT => PeerMessage::Heartbeat(Heartbeat::decode(&mut r)?),
        kind::SYNC => PeerMessage::Sync(Sync::decode(&mut r)?),
        kind::SYNCED => PeerMessage::Synced(Synced::decode(&mut r)?),
        kind::RECORDS => {
            let n = r.count(9)?;
            let records = (0..n)
                .map(|_| Record::read(&mut r))
                .collect::<Result<Vec<_>, _>>()?;
            PeerMessage::Records(records)
        }
        other => return Err(PeerError::Kind(other)),
    };
    r.end()?;
    Ok(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<(Vec<u8>, PeerMessage)> {
        let b = Broadcast {
            private: true,
            topic: "device:1".into(),
            id: Some("abc".into()),
            body: BroadcastBody::User {
                event: "e".into(),
                binary: true,
                body: vec![0, 255, 3],
                meta: Some("{\"id\":\"abc\"}".into()),
            },
        };
        let p = Presence {
            node: "n1".into(),
            seq: 7,
            private: false,
            topic: "room".into(),
            change: PresenceChange::Snapshot {
                members: vec![Member {
                    key: "k".into(),
                    phx_ref: "F1".into(),
                    rendered: "{\"phx_ref\":\"F1\"}".into(),
                }],
            },
        };
        let h = Heartbeat {
            node: "n2".into(),
            incarnation: 9,
            users: 3,
            slot_holder: true,
            bye: false,
        };
        let records = vec![
            Record::Begin {
                final_lsn: 10,
                xid: 5,
                commit_micros: -1,
            },
            Record::Change {
                relation: 16384,
                kind: 1,
                columns: vec!["id".into(), "body".into()],
                new: Some(vec![Value::Text("1".into()), Value::Toast]),
                old: Some(vec![Value::Text("1".into()), Value::Null]),
                old_key_only: true,
            },
            Record::Message {
                topic: "t".into(),
                private: false,
                event: "e".into(),
                id: "i".into(),
                binary: false,
                body: b"{}".to_vec(),
            },
            Record::Commit {
                final_lsn: 10,
                end_lsn: 11,
            },
        ];
        vec![
            (b.encode(), PeerMessage::Broadcast(b)),
            (p.encode(), PeerMessage::Presence(p)),
            (h.encode(), PeerMessage::Heartbeat(h)),
            (encode_records(&records), PeerMessage::Records(records)),
        ]
    }

    #[test]
    fn messages_round_trip() {
        for (bytes, message) in samples() {
            assert_eq!(decode(&bytes), Ok(message));
        }
    }

    #[test]
    fn every_truncation_and_corruption_is_an_error_not_a_panic() {
        for (bytes, _) in samples() {
            for cut in 0..bytes.len() {
                assert!(decode(bytes.get(..cut).unwrap_or_default()).is_err());
            }
            for at in 0..bytes.len() {
                let mut flipped = bytes.clone();
                if let Some(b) = flipped.get_mut(at) {
                    *b ^= 0xff;
                }
                let _ = decode(&flipped);
            }
        }
        assert_eq!(decode(&[2, 1]), Err(PeerError::Version(2)));
        // A forged count does not reserve memory for items that are not there.
        let mut w = Writer::new(kind::PRESENCE);
        w.str("n").u64(1).bool(false).str("t").u8(2).u32(u32::MAX);
        assert_eq!(decode(&w.finish()), Err(PeerError::Truncated));
    }

    #[test]
    fn the_fuzz_seeds_decode_as_named() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/peer");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let bytes = std::fs::read(entry.path()).unwrap_or_default();
            let invalid = ["forged", "truncated", "wrong-version"]
                .iter()
                .any(|bad| name.contains(bad));
            assert_eq!(decode(&bytes).is_err(), invalid, "{name}");
            n += 1;
        }
        assert!(n >= 10, "{n} seeds");
    }
}
