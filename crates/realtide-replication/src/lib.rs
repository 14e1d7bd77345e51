//! Logical replication for realtide: from PostgreSQL's pgoutput stream to typed changes.
//!
//! Module map:
//! - [`lsn`]: the `Lsn` newtype (`X/Y` text form).
//! - [`pgoutput`]: pure decoder of walsender copy-data messages (XLogData, keepalive) and of
//!   pgoutput logical messages (Begin, Commit, Relation, Type, Insert, Update, Delete, Truncate,
//!   Origin, Message), and the encoder of standby status updates. Never panics on any input.
//! - [`sql`]: quoting identifiers and literals into SQL text.
//! - [`stream`]: the replication connection: slot and publication setup, `START_REPLICATION`,
//!   reading copy data, sending status updates.
//! - [`value`]: column values from pgoutput's text format to JSON exactly as `to_jsonb` renders
//!   them.
//! - [`filter`]: the `postgres_changes` filter grammar (`col=op.value`, `not.`, comma = AND) and
//!   its evaluation against a row.

pub mod filter;
pub mod lsn;
pub mod pgoutput;
pub mod sql;
pub mod stream;
pub mod value;
