//! Load scenarios. Each has a clap `Args` struct with its parameters and a `run` function that
//! drives the server and returns a JSON report (see [`crate::report`]).

pub mod capacity;
pub mod catchup;
pub mod cluster;
pub mod fanout;
pub mod postgres_changes;
