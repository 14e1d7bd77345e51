//! Load generator for realtide (and any Supabase-Realtime-compatible server).
//!
//! - [`ws`]: a minimal RFC 6455 client codec (handshake, cancel-safe frame reader, masked
//!   writer);
//! - [`client`]: Phoenix V2 connections on top of it, server URL parsing and loopback source
//!   address spreading;
//! - [`report`]: sharded HDR latency histograms, per-second timelines, JSON output;
//! - [`scenario`]: the load scenarios;
//! - [`limits`]: the process's open-file limit;
//! - [`peer`]: a protocol-neutral client (realtide, the ceiling, Socket.IO 4) for comparisons;
//! - [`ceiling`]: the raw-socket ceiling server.

pub mod ceiling;
pub mod client;
pub mod limits;
pub mod peer;
pub mod report;
pub mod scenario;
pub mod ws;
