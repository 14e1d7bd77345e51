//! postgres_changes: from the replication slot to the subscribers' sockets.
//!
//! - [`change`]: one committed row change ([`change::Change`], [`change::ChangeKind`]).
//! - [`source`]: the replication task: reads the slot, decodes, journals, confirms, and sends
//!   database broadcasts.
//! - [`journal`]: the change journal on disk (segments, index, cache, spill).
//! - [`feed`]: the task that delivers journaled changes to subscriber cursors (cohorts,
//!   backpressure, retries, drain).
//! - [`delivery`]: one delivery step: match a batch against a cohort, check, render, offer.
//! - [`rls`]: row level security checks and column visibility.
//! - [`render`]: the `data` object of a change.
//! - [`matching`]: a cohort's bindings indexed by table, and a binding's match of a change.
//! - [`subscriptions`]: channels' postgres_changes bindings and their cursors.
//! - [`resume`]: positions of departed subscribers, for a resume without a gap.
//! - [`progress`]: replication status, problems and positions ([`progress::Progress`]).
//! - [`postgres`]: the database side of a project in one value (pools, catalog,
//!   subscriptions, journal, replication status).
//!
//! Imports run one way: this folder uses `db`, `channels`, `outbox`; nothing here imports
//! `session`, `ws` or `http`.

pub mod change;
pub mod delivery;
pub mod feed;
pub mod journal;
pub mod matching;
pub mod mirror;
pub mod postgres;
pub mod progress;
pub mod render;
pub mod resume;
pub mod rls;
pub mod shared;
pub mod source;
pub mod subscriptions;
