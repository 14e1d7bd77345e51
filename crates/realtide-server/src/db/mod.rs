//! The database as a service to the rest: pools, TLS, schema, catalog, authorization, replay.
//!
//! - [`pool`]: query connections (lazy, bounded, reconnecting) and [`pool::DbError`].
//! - [`tls`]: TLS to PostgreSQL (`DB_SSL`).
//! - [`schema`]: the `realtime` schema migrations and message partitions.
//! - [`catalog`]: table, column and privilege cache.
//! - [`authorization`]: private-channel RLS checks on `realtime.messages`.
//! - [`claims`]: a channel's claims, grouped for batched RLS checks.
//! - [`replay`]: stored private broadcasts for a join's replay.
//!
//! Imports run one way: this folder uses `channels` (stored broadcast bodies) and the
//! foundation; nothing here imports `changes`, `session`, `ws` or `http`.

pub mod authorization;
pub mod catalog;
pub mod claims;
pub mod pool;
pub mod replay;
pub mod schema;
pub mod tls;
