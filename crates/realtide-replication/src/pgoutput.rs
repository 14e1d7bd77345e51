//! Pure decoder for the walsender copy-data messages and for pgoutput's logical messages.
//!
//! Two layers, both free of I/O:
//! - [`decode_copy_data`] reads one `CopyData` payload of a `START_REPLICATION` stream:
//!   [`XLogData`] (`w`) or [`PrimaryKeepalive`] (`k`); [`StandbyStatusUpdate::encode`] writes
//!   the client's `r` reply.
//! - [`decode_logical`] reads the pgoutput message inside an `XLogData` (protocol version 1, as
//!   PostgreSQL 15 sends with `proto_version '1'`); [`decode_logical_streamed`] also reads the
//!   protocol-2 streaming messages and the xid that precedes data messages inside a streamed block.
//!
//! Every read is bounds-checked: any input, however malformed, yields a [`DecodeError`] and never
//! a panic. Column values and message contents are [`Bytes`] slices of the input (no copy).
//!
//! Reference: PostgreSQL documentation, "Logical Replication Message Formats" and
//! "Streaming Replication Protocol".

use bytes::{BufMut, Bytes, BytesMut};

use crate::lsn::Lsn;

/// Microseconds from the Unix epoch (1970-01-01) to PostgreSQL's epoch (2000-01-01).
pub const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

/// Why a message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The message has no bytes at all.
    #[error("empty {context} message")]
    Empty {
        /// Which layer: `"copy data"` or `"pgoutput"`.
        context: &'static str,
    },
    /// The first byte names no message this decoder knows.
    #[error("unknown {context} message tag 0x{tag:02x}")]
    UnknownTag {
        /// Which layer: `"copy data"` or `"pgoutput"`.
        context: &'static str,
        /// The tag byte.
        tag: u8,
    },
    /// The message ended before a field it announces.
    #[error("truncated {context} message: {needed} more byte(s) needed at offset {offset}")]
    Truncated {
        /// The message being read.
        context: &'static str,
        /// Offset (from the tag byte) of the field that did not fit.
        offset: usize,
        /// How many bytes were missing.
        needed: usize,
    },
    /// A string field has no terminating NUL byte.
    #[error("unterminated string in {context} message at offset {offset}")]
    UnterminatedString {
        /// The message being read.
        context: &'static str,
        /// Offset where the string starts.
        offset: usize,
    },
    /// A name (schema, table, column, type, origin, prefix) is not valid UTF-8.
    #[error("invalid UTF-8 in {context} message at offset {offset}")]
    BadUtf8 {
        /// The message being read.
        context: &'static str,
        /// Offset where the string starts.
        offset: usize,
    },
    /// A count or length field is negative.
    #[error("negative count or length {value} in {context} message")]
    NegativeLength {
        /// The message being read.
        context: &'static str,
        /// The value read.
        value: i64,
    },
    /// A tuple column kind other than `n`, `u`, `t`, `b`.
    #[error("unknown tuple column kind 0x{0:02x}")]
    UnknownColumnKind(u8),
    /// A replica identity setting other than `d`, `n`, `f`, `i`.
    #[error("unknown replica identity 0x{0:02x}")]
    UnknownReplicaIdentity(u8),
    /// An Update/Delete tuple marker that is not one of the expected `K`, `O`, `N`.
    #[error("unexpected tuple marker 0x{found:02x} in {context} message")]
    UnexpectedTupleMarker {
        /// The message being read.
        context: &'static str,
        /// The byte found.
        found: u8,
    },
    /// Bytes left over after the last field.
    #[error("{count} trailing byte(s) after {context} message")]
    TrailingBytes {
        /// The message being read.
        context: &'static str,
        /// How many bytes were left.
        count: usize,
    },
}

// ---------------------------------------------------------------------------------------------
// Copy-data layer
// ---------------------------------------------------------------------------------------------

/// A WAL data message (`w`): one pgoutput message in `data`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XLogData {
    /// Starting point of the WAL data in this message.
    pub wal_start: Lsn,
    /// Current end of WAL on the server.
    pub wal_end: Lsn,
    /// Server clock at transmission, microseconds since 2000-01-01 UTC.
    pub server_time_micros: i64,
    /// The pgoutput message (decode with [`decode_logical`]).
    pub data: Bytes,
}

/// A primary keepalive message (`k`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrimaryKeepalive {
    /// Current end of WAL on the server.
    pub wal_end: Lsn,
    /// Server clock at transmission, microseconds since 2000-01-01 UTC.
    pub server_time_micros: i64,
    /// The server asks for a status update soon to avoid a timeout disconnect.
    pub reply_requested: bool,
}

/// A message the server sends inside the `CopyBoth` stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyDataMessage {
    /// `w`
    XLogData(XLogData),
    /// `k`
    PrimaryKeepalive(PrimaryKeepalive),
}

/// The client's standby status update (`r`), reporting its WAL positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StandbyStatusUpdate {
    /// Last WAL byte + 1 received and written.
    pub written: Lsn,
    /// Last WAL byte + 1 flushed (for a logical slot: the position it may confirm).
    pub flushed: Lsn,
    /// Last WAL byte + 1 applied.
    pub applied: Lsn,
    /// Client clock, microseconds since 2000-01-01 UTC.
    pub client_time_micros: i64,
    /// Ask the server to reply immediately (with a keepalive).
    pub reply_requested: bool,
}

impl StandbyStatusUpdate {
    /// Encoded length: tag, three LSNs, a timestamp and a flag.
    pub const LEN: usize = 34;

    /// The `CopyData` payload of this update.
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(Self::LEN);
        self.encode_into(&mut b);
        b.freeze()
    }

    /// Append the `CopyData` payload of this update to `buf`.
    pub fn encode_into(&self, buf: &mut BytesMut) {
        buf.put_u8(b'r');
        buf.put_u64(self.written.0);
        buf.put_u64(self.flushed.0);
        buf.put_u64(self.applied.0);
        buf.put_i64(self.client_time_micros);
        buf.put_u8(u8::from(self.reply_requested));
    }
}

/// Decode one `CopyData` payload from the server.
pub fn decode_copy_data(buf: Bytes) -> Result<CopyDataMessage, DecodeError> {
    let mut r = Reader::new(buf, "copy data");
    let tag = r.u8().map_err(|_| DecodeError::Empty {
        context: "copy data",
    })?;
    match tag {
        b'w' => {
            r.context = "XLogData";
            let wal_start = r.lsn()?;
            let wal_end = r.lsn()?;
            let server_time_micros = r.i64()?;
            let data = r.rest();
            Ok(CopyDataMessage::XLogData(XLogData {
                wal_start,
                wal_end,
                server_time_micros,
                data,
            }))
        }
        b'k' => {
            r.context = "PrimaryKeepalive";
            let wal_end = r.lsn()?;
            let server_time_micros = r.i64()?;
            let reply_requested = r.u8()? != 0;
            r.finish()?;
            Ok(CopyDataMessage::PrimaryKeepalive(PrimaryKeepalive {
                wal_end,
                server_time_micros,
                reply_requested,
            }))
        }
        tag => Err(DecodeError::UnknownTag {
            context: "copy data",
            tag,
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// pgoutput layer
// ---------------------------------------------------------------------------------------------

/// `B`: start of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Begin {
    /// LSN of the transaction's commit record.
    pub final_lsn: Lsn,
    /// Commit time, microseconds since 2000-01-01 UTC.
    pub commit_time_micros: i64,
    /// Transaction id.
    pub xid: u32,
}

/// `C`: end of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Commit {
    /// Flags (currently unused by PostgreSQL, 0).
    pub flags: u8,
    /// LSN of the commit record.
    pub commit_lsn: Lsn,
    /// End LSN of the transaction: the position to confirm once it is handled.
    pub end_lsn: Lsn,
    /// Commit time, microseconds since 2000-01-01 UTC.
    pub commit_time_micros: i64,
}

/// `O`: the transaction came from another replication origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// Commit LSN on the origin server.
    pub lsn: Lsn,
    /// Origin name.
    pub name: String,
}

/// A table's `REPLICA IDENTITY` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplicaIdentity {
    /// `d`: the primary key (if any).
    Default,
    /// `n`: nothing.
    Nothing,
    /// `f`: all columns.
    Full,
    /// `i`: a chosen unique index.
    Index,
}

impl ReplicaIdentity {
    /// The setting from its wire byte.
    pub fn from_byte(b: u8) -> Result<Self, DecodeError> {
        match b {
            b'd' => Ok(Self::Default),
            b'n' => Ok(Self::Nothing),
            b'f' => Ok(Self::Full),
            b'i' => Ok(Self::Index),
            other => Err(DecodeError::UnknownReplicaIdentity(other)),
        }
    }

    /// The wire byte.
    pub fn as_byte(self) -> u8 {
        match self {
            Self::Default => b'd',
            Self::Nothing => b'n',
            Self::Full => b'f',
            Self::Index => b'i',
        }
    }
}

/// One column of a [`Relation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Flags: bit 1 marks a column of the replica identity key.
    pub flags: u8,
    /// Column name.
    pub name: String,
    /// Data type OID.
    pub type_oid: u32,
    /// Type modifier (`atttypmod`), -1 when none.
    pub type_modifier: i32,
}

impl Column {
    /// Whether the column is part of the replica identity key (the primary key under the
    /// default identity, every column under `FULL`).
    pub fn is_key(&self) -> bool {
        self.flags & 1 != 0
    }
}

/// `R`: a table's schema, sent before the first change to it in a session and after a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// Table OID.
    pub oid: u32,
    /// Schema name (`pg_catalog` is sent as an empty string).
    pub namespace: String,
    /// Table name.
    pub name: String,
    /// Replica identity setting.
    pub replica_identity: ReplicaIdentity,
    /// Columns in attribute order (dropped and generated columns excluded).
    pub columns: Vec<Column>,
}

/// `Y`: a non-builtin data type used by a following relation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeMessage {
    /// Type OID.
    pub oid: u32,
    /// Schema name (`pg_catalog` is sent as an empty string).
    pub namespace: String,
    /// Type name.
    pub name: String,
}

/// One column value of a tuple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnValue {
    /// `n`: SQL NULL.
    Null,
    /// `u`: an unchanged TOASTed value that was not sent.
    UnchangedToast,
    /// `t`: the value in the type's text output format.
    Text(Bytes),
    /// `b`: the value in the type's binary format (only with the `binary` option).
    Binary(Bytes),
}

impl ColumnValue {
    /// The text-format bytes, if this is a text value.
    pub fn as_text(&self) -> Option<&[u8]> {
        match self {
            ColumnValue::Text(b) => Some(b),
            _ => None,
        }
    }

    /// The text-format value as `&str`, if it is text and valid UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        self.as_text().and_then(|b| std::str::from_utf8(b).ok())
    }
}

/// A row: its column values in the relation's column order.
pub type TupleData = Vec<ColumnValue>;

/// Which old values an Update or Delete carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OldKind {
    /// `K`: only the replica identity key columns are set (others are null).
    Key,
    /// `O`: the whole old row (`REPLICA IDENTITY FULL`).
    Full,
}

/// The old row of an Update or Delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OldTuple {
    /// Key only or full row.
    pub kind: OldKind,
    /// The values.
    pub data: TupleData,
}

/// `I`: a row was inserted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insert {
    /// Table OID (see the preceding [`Relation`]).
    pub relation_oid: u32,
    /// The new row.
    pub new: TupleData,
}

/// `U`: a row was updated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    /// Table OID.
    pub relation_oid: u32,
    /// Old values: present when the key changed (`K`) or under `REPLICA IDENTITY FULL` (`O`).
    pub old: Option<OldTuple>,
    /// The new row; TOASTed columns not changed are [`ColumnValue::UnchangedToast`].
    pub new: TupleData,
}

/// `D`: a row was deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    /// Table OID.
    pub relation_oid: u32,
    /// The old key (`K`) or row (`O`).
    pub old: OldTuple,
}

/// `T`: tables were truncated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncate {
    /// Option bits: 1 = `CASCADE`, 2 = `RESTART IDENTITY`.
    pub options: u8,
    /// The truncated tables.
    pub relation_oids: Vec<u32>,
}

impl Truncate {
    /// `CASCADE` was given.
    pub fn cascade(&self) -> bool {
        self.options & 1 != 0
    }
    /// `RESTART IDENTITY` was given.
    pub fn restart_identity(&self) -> bool {
        self.options & 2 != 0
    }
}

/// `M`: a message from `pg_logical_emit_message` (sent with the `messages` option).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Flags: bit 1 = transactional.
    pub flags: u8,
    /// LSN of the message.
    pub lsn: Lsn,
    /// The prefix given to `pg_logical_emit_message`.
    pub prefix: String,
    /// The content.
    pub content: Bytes,
}

impl Message {
    /// Whether the message was emitted transactionally.
    pub fn transactional(&self) -> bool {
        self.flags & 1 != 0
    }
}

/// `c` (protocol 2): commit of a streamed transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamCommit {
    /// Transaction id.
    pub xid: u32,
    /// Flags (0).
    pub flags: u8,
    /// LSN of the commit record.
    pub commit_lsn: Lsn,
    /// End LSN of the transaction.
    pub end_lsn: Lsn,
    /// Commit time, microseconds since 2000-01-01 UTC.
    pub commit_time_micros: i64,
}

/// A decoded pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogicalMessage {
    /// `B`
    Begin(Begin),
    /// `C`
    Commit(Commit),
    /// `O`
    Origin(Origin),
    /// `R`
    Relation(Relation),
    /// `Y`
    Type(TypeMessage),
    /// `I`
    Insert(Insert),
    /// `U`
    Update(Update),
    /// `D`
    Delete(Delete),
    /// `T`
    Truncate(Truncate),
    /// `M`
    Message(Message),
    /// `S` (protocol 2): a block of a streamed, still running transaction starts.
    StreamStart {
        /// Transaction id.
        xid: u32,
        /// Whether this is the transaction's first block.
        first_segment: bool,
    },
    /// `E` (protocol 2): the block ends.
    StreamStop,
    /// `c` (protocol 2)
    StreamCommit(StreamCommit),
    /// `A` (protocol 2): a streamed (sub)transaction aborted.
    StreamAbort {
        /// Top-level transaction id.
        xid: u32,
        /// Aborted subtransaction id (equal to `xid` for the top level).
        subxid: u32,
    },
}

impl LogicalMessage {
    /// The one-byte tag of this message.
    pub fn tag(&self) -> u8 {
        match self {
            LogicalMessage::Begin(_) => b'B',
            LogicalMessage::Commit(_) => b'C',
            LogicalMessage::Origin(_) => b'O',
            LogicalMessage::Relation(_) => b'R',
            LogicalMessage::Type(_) => b'Y',
            LogicalMessage::Insert(_) => b'I',
            LogicalMessage::Update(_) => b'U',
            LogicalMessage::Delete(_) => b'D',
            LogicalMessage::Truncate(_) => b'T',
            LogicalMessage::Message(_) => b'M',
            LogicalMessage::StreamStart { .. } => b'S',
            LogicalMessage::StreamStop => b'E',
            LogicalMessage::StreamCommit(_) => b'c',
            LogicalMessage::StreamAbort { .. } => b'A',
        }
    }
}

/// Decode one pgoutput message (protocol version 1, outside streamed transactions).
///
/// Also decodes the protocol-2 stream control messages (`S`, `E`, `c`, `A`); data messages inside
/// a streamed block carry an xid and need [`decode_logical_streamed`].
pub fn decode_logical(buf: Bytes) -> Result<LogicalMessage, DecodeError> {
    decode_inner(buf, false).map(|(_, m)| m)
}

/// Decode one pgoutput message sent between Stream Start and Stream Stop (protocol 2): Relation,
/// Type, Insert, Update, Delete, Truncate and Message carry the transaction's xid first, which is
/// returned beside the message (`None` for the other messages).
pub fn decode_logical_streamed(buf: Bytes) -> Result<(Option<u32>, LogicalMessage), DecodeError> {
    decode_inner(buf, true)
}

fn decode_inner(buf: Bytes, streamed: bool) -> Result<(Option<u32>, LogicalMessage), DecodeError> {
    let mut r = Reader::new(buf, "pgoutput");
    let tag = r.u8().map_err(|_| DecodeError::Empty {
        context: "pgoutput",
    })?;
    let has_xid = streamed && matches!(tag, b'R' | b'Y' | b'I' | b'U' | b'D' | b'T' | b'M');
    let xid = if has_xid { Some(r.u32()?) } else { None };
    let msg = match tag {
        b'B' => {
            r.context = "Begin";
            LogicalMessage::Begin(Begin {
                final_lsn: r.lsn()?,
                commit_time_micros: r.i64()?,
                xid: r.u32()?,
            })
        }
        b'C' => {
            r.context = "Commit";
            LogicalMessage::Commit(Commit {
                flags: r.u8()?,
                commit_lsn: r.lsn()?,
                end_lsn: r.lsn()?,
                commit_time_micros: r.i64()?,
            })
        }
        b'O' => {
            r.context = "Origin";
            LogicalMessage::Origin(Origin {
                lsn: r.lsn()?,
                name: r.string()?,
            })
        }
        b'R' => {
            r.context = "Relation";
            let oid = r.u32()?;
            let namespace = r.string()?;
            let name = r.string()?;
            let replica_identity = ReplicaIdentity::from_byte(r.u8()?)?;
            let n = r.count16()?;
            let mut columns = Vec::with_capacity(n.min(r.remaining() / 10));
            for _ in 0..n {
                columns.push(Column {
                    flags: r.u8()?,
                    name: r.string()?,
                    type_oid: r.u32()?,
                    type_modifier: r.i32()?,
                });
            }
            LogicalMessage::Relation(Relation {
                oid,
                namespace,
                name,
                replica_identity,
                columns,
            })
        }
        b'Y' => {
            r.context = "Type";
            LogicalMessage::Type(TypeMessage {
                oid: r.u32()?,
                namespace: r.string()?,
                name: r.string()?,
            })
        }
        b'I' => {
            r.context = "Insert";
            let relation_oid = r.u32()?;
            let marker = r.u8()?;
            if marker != b'N' {
                return Err(r.unexpected_marker(marker));
            }
            LogicalMessage::Insert(Insert {
                relation_oid,
                new: r.tuple()?,
            })
        }
        b'U' => {
            r.context = "Update";
            let relation_oid = r.u32()?;
            let mut marker = r.u8()?;
            let old = match marker {
                b'K' | b'O' => {
                    let kind = if marker == b'K' {
                        OldKind::Key
                    } else {
                        OldKind::Full
                    };
                    let data = r.tuple()?;
                    marker = r.u8()?;
                    Some(OldTuple { kind, data })
                }
                _ => None,
            };
            if marker != b'N' {
                return Err(r.unexpected_marker(marker));
            }
            LogicalMessage::Update(Update {
                relation_oid,
                old,
                new: r.tuple()?,
            })
        }
        b'D' => {
            r.context = "Delete";
            let relation_oid = r.u32()?;
            let kind = match r.u8()? {
                b'K' => OldKind::Key,
                b'O' => OldKind::Full,
                other => return Err(r.unexpected_marker(other)),
            };
            LogicalMessage::Delete(Delete {
                relation_oid,
                old: OldTuple {
                    kind,
                    data: r.tuple()?,
                },
            })
        }
        b'T' => {
            r.context = "Truncate";
            let n = r.count32()?;
            let options = r.u8()?;
            let mut relation_oids = Vec::with_capacity(n.min(r.remaining() / 4));
            for _ in 0..n {
                relation_oids.push(r.u32()?);
            }
            LogicalMessage::Truncate(Truncate {
                options,
                relation_oids,
            })
        }
        b'M' => {
            r.context = "Message";
            let flags = r.u8()?;
            let lsn = r.lsn()?;
            let prefix = r.string()?;
            let len = r.count32()?;
            LogicalMessage::Message(Message {
                flags,
                lsn,
                prefix,
                content: r.bytes(len)?,
            })
        }
        b'S' => {
            r.context = "Stream Start";
            LogicalMessage::StreamStart {
                xid: r.u32()?,
                first_segment: r.u8()? == 1,
            }
        }
        b'E' => LogicalMessage::StreamStop,
        b'c' => {
            r.context = "Stream Commit";
            LogicalMessage::StreamCommit(StreamCommit {
                xid: r.u32()?,
                flags: r.u8()?,
                commit_lsn: r.lsn()?,
                end_lsn: r.lsn()?,
                commit_time_micros: r.i64()?,
            })
        }
        b'A' => {
            r.context = "Stream Abort";
            LogicalMessage::StreamAbort {
                xid: r.u32()?,
                subxid: r.u32()?,
            }
        }
        tag => {
            return Err(DecodeError::UnknownTag {
                context: "pgoutput",
                tag,
            });
        }
    };
    r.finish()?;
    Ok((xid, msg))
}

// ---------------------------------------------------------------------------------------------
// Checked reader
// ---------------------------------------------------------------------------------------------

struct Reader {
    buf: Bytes,
    /// Offset of `buf`'s first byte within the original message.
    offset: usize,
    context: &'static str,
}

impl Reader {
    fn new(buf: Bytes, context: &'static str) -> Self {
        Reader {
            buf,
            offset: 0,
            context,
        }
    }

    fn remaining(&self) -> usize {
        self.buf.len()
    }

    fn truncated(&self, needed: usize) -> DecodeError {
        DecodeError::Truncated {
            context: self.context,
            offset: self.offset,
            needed: needed.saturating_sub(self.buf.len()),
        }
    }

    fn unexpected_marker(&self, found: u8) -> DecodeError {
        DecodeError::UnexpectedTupleMarker {
            context: self.context,
            found,
        }
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let head = self.buf.get(..N).ok_or_else(|| self.truncated(N))?;
        let out: [u8; N] = head.try_into().map_err(|_| self.truncated(N))?;
        self.advance(N);
        Ok(out)
    }

    /// Drop `n` bytes known to be present.
    fn advance(&mut self, n: usize) {
        let n = n.min(self.buf.len());
        let _ = self.buf.split_to(n);
        self.offset += n;
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(u8::from_be_bytes(self.array::<1>()?))
    }
    fn i16(&mut self) -> Result<i16, DecodeError> {
        Ok(i16::from_be_bytes(self.array::<2>()?))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array::<4>()?))
    }
    fn i32(&mut self) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array::<4>()?))
    }
    fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array::<8>()?))
    }
    fn lsn(&mut self) -> Result<Lsn, DecodeError> {
        Ok(Lsn(u64::from_be_bytes(self.array::<8>()?)))
    }

    fn count16(&mut self) -> Result<usize, DecodeError> {
        let v = self.i16()?;
        usize::try_from(v).map_err(|_| DecodeError::NegativeLength {
            context: self.context,
            value: i64::from(v),
        })
    }

    fn count32(&mut self) -> Result<usize, DecodeError> {
        let v = self.i32()?;
        usize::try_from(v).map_err(|_| DecodeError::NegativeLength {
            context: self.context,
            value: i64::from(v),
        })
    }

    fn bytes(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        if n > self.buf.len() {
            return Err(self.truncated(n));
        }
        let out = self.buf.split_to(n);
        self.offset += n;
        Ok(out)
    }

    fn rest(&mut self) -> Bytes {
        let n = self.buf.len();
        self.offset += n;
        self.buf.split_to(n)
    }

    /// A NUL-terminated UTF-8 string.
    fn string(&mut self) -> Result<String, DecodeError> {
        let start = self.offset;
        let nul = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or(DecodeError::UnterminatedString {
                context: self.context,
                offset: start,
            })?;
        let raw = self.bytes(nul)?;
        self.advance(1);
        String::from_utf8(raw.to_vec()).map_err(|_| DecodeError::BadUtf8 {
            context: self.context,
            offset: start,
        })
    }

    fn tuple(&mut self) -> Result<TupleData, DecodeError> {
        let n = self.count16()?;
        let mut out = Vec::with_capacity(n.min(self.remaining()));
        for _ in 0..n {
            let v = match self.u8()? {
                b'n' => ColumnValue::Null,
                b'u' => ColumnValue::UnchangedToast,
                b't' => {
                    let len = self.count32()?;
                    ColumnValue::Text(self.bytes(len)?)
                }
                b'b' => {
                    let len = self.count32()?;
                    ColumnValue::Binary(self.bytes(len)?)
                }
                other => return Err(DecodeError::UnknownColumnKind(other)),
            };
            out.push(v);
        }
        Ok(out)
    }

    fn finish(&self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes {
                context: self.context,
                count: self.buf.len(),
            })
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Timestamps
// ---------------------------------------------------------------------------------------------

/// PostgreSQL-epoch microseconds (2000-01-01) to Unix-epoch microseconds (saturating).
pub fn pg_to_unix_micros(pg_micros: i64) -> i64 {
    pg_micros.saturating_add(PG_EPOCH_OFFSET_MICROS)
}

/// Unix-epoch microseconds to PostgreSQL-epoch microseconds (saturating).
pub fn unix_to_pg_micros(unix_micros: i64) -> i64 {
    unix_micros.saturating_sub(PG_EPOCH_OFFSET_MICROS)
}

/// The current time in PostgreSQL-epoch microseconds (for status updates).
pub fn now_pg_micros() -> i64 {
    let unix = match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_micros()).map_or(i64::MIN, |v| -v),
    };
    unix_to_pg_micros(unix)
}

/// Civil date (year, month 1–12, day 1–31) of a day count from 1970-01-01
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    let d = doy - (153 * mp + 2) / 5 + 1; // [1, 31]
    let m = if mp < 10 { mp + 3 } else { mp - 9 }; // [1, 12]
    let y = if m <= 2 { y + 1 } else { y };
    (y, m as u32, d as u32)
}

/// Format a PostgreSQL-epoch timestamp as the `commit_timestamp` of a `postgres_changes`
/// payload: `YYYY-MM-DDTHH:MM:SS.mmmZ` in UTC with exactly three fractional digits (truncated,
/// not rounded).
pub fn format_commit_timestamp(pg_micros: i64) -> String {
    format_unix_micros(pg_to_unix_micros(pg_micros))
}

/// Format Unix-epoch microseconds as `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC, milliseconds truncated).
pub fn format_unix_micros(unix_micros: i64) -> String {
    const DAY: i64 = 86_400_000_000;
    let days = unix_micros.div_euclid(DAY);
    let in_day = unix_micros.rem_euclid(DAY); // [0, DAY)
    let (y, mo, d) = civil_from_days(days);
    let secs = in_day / 1_000_000;
    let millis = (in_day % 1_000_000) / 1000;
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(format_commit_timestamp(0), "2000-01-01T00:00:00.000Z");
        assert_eq!(format_unix_micros(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_unix_micros(-1), "1969-12-31T23:59:59.999Z");
        // 2024-02-29T13:14:15.123456Z truncates to .123
        assert_eq!(
            format_unix_micros(1_709_212_455_123_456),
            "2024-02-29T13:14:15.123Z"
        );
        assert_eq!(
            format_unix_micros(1_709_212_455_999_999),
            "2024-02-29T13:14:15.999Z"
        );
        assert_eq!(
            format_unix_micros(951_782_400_000_000),
            "2000-02-29T00:00:00.000Z"
        );
        assert_eq!(
            format_unix_micros(4_107_542_400_000_000),
            "2100-03-01T00:00:00.000Z"
        );
        assert_eq!(pg_to_unix_micros(0), PG_EPOCH_OFFSET_MICROS);
        assert_eq!(unix_to_pg_micros(PG_EPOCH_OFFSET_MICROS), 0);
        // extremes do not panic
        let _ = format_commit_timestamp(i64::MAX);
        let _ = format_commit_timestamp(i64::MIN);
        assert!(now_pg_micros() > 0);
    }

    #[test]
    fn status_update_roundtrip_layout() {
        let u = StandbyStatusUpdate {
            written: Lsn(1),
            flushed: Lsn(2),
            applied: Lsn(3),
            client_time_micros: 4,
            reply_requested: true,
        };
        let b = u.encode();
        assert_eq!(b.len(), StandbyStatusUpdate::LEN);
        assert_eq!(b.first(), Some(&b'r'));
        assert_eq!(b.last(), Some(&1));
    }

    #[test]
    fn copy_data() {
        let mut b = BytesMut::new();
        b.put_u8(b'k');
        b.put_u64(0x10);
        b.put_i64(5);
        b.put_u8(1);
        assert_eq!(
            decode_copy_data(b.freeze()),
            Ok(CopyDataMessage::PrimaryKeepalive(PrimaryKeepalive {
                wal_end: Lsn(0x10),
                server_time_micros: 5,
                reply_requested: true
            }))
        );
        let mut b = BytesMut::new();
        b.put_u8(b'w');
        b.put_u64(1);
        b.put_u64(2);
        b.put_i64(3);
        b.put_slice(b"E");
        let Ok(CopyDataMessage::XLogData(x)) = decode_copy_data(b.freeze()) else {
            unreachable!("decodes")
        };
        assert_eq!(decode_logical(x.data), Ok(LogicalMessage::StreamStop));
        assert!(matches!(
            decode_copy_data(Bytes::new()),
            Err(DecodeError::Empty { .. })
        ));
        assert!(matches!(
            decode_copy_data(Bytes::from_static(b"w\0\0")),
            Err(DecodeError::Truncated { .. })
        ));
        assert!(matches!(
            decode_copy_data(Bytes::from_static(b"z")),
            Err(DecodeError::UnknownTag { tag: b'z', .. })
        ));
    }

    #[test]
    fn streamed_xid() {
        let mut b = BytesMut::new();
        b.put_u8(b'I');
        b.put_u32(77);
        b.put_u32(16384);
        b.put_u8(b'N');
        b.put_i16(1);
        b.put_u8(b't');
        b.put_i32(1);
        b.put_u8(b'5');
        let (xid, m) = decode_logical_streamed(b.freeze()).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(xid, Some(77));
        assert_eq!(
            m,
            LogicalMessage::Insert(Insert {
                relation_oid: 16384,
                new: vec![ColumnValue::Text(Bytes::from_static(b"5"))]
            })
        );
    }

    #[test]
    fn errors() {
        assert!(matches!(
            decode_logical(Bytes::from_static(b"R\0\0\0\x01pub\xfflic\0t\0d\0\0")),
            Err(DecodeError::BadUtf8 { .. })
        ));
        assert!(matches!(
            decode_logical(Bytes::from_static(b"R\0\0\0\x01public")),
            Err(DecodeError::UnterminatedString { .. })
        ));
        assert!(matches!(
            decode_logical(Bytes::from_static(b"I\0\0\0\x01N\xff\xff")),
            Err(DecodeError::NegativeLength { .. })
        ));
        assert!(matches!(
            decode_logical(Bytes::from_static(b"I\0\0\0\x01N\0\x01x")),
            Err(DecodeError::UnknownColumnKind(b'x'))
        ));
        assert!(matches!(
            decode_logical(Bytes::from_static(b"I\0\0\0\x01N\0\0!")),
            Err(DecodeError::TrailingBytes { count: 1, .. })
        ));
        assert!(matches!(
            decode_logical(Bytes::from_static(b"D\0\0\0\x01N\0\0")),
            Err(DecodeError::UnexpectedTupleMarker { found: b'N', .. })
        ));
        assert!(matches!(
            decode_logical(Bytes::from_static(b"?")),
            Err(DecodeError::UnknownTag { tag: b'?', .. })
        ));
    }
}
