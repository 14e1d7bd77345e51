//! Arbitrary bytes as walsender copy data and as a pgoutput message body, as the replication
//! stream receives them from PostgreSQL.
//!
//! Besides "no panic" (a malformed or hostile WAL stream must never take the process down):
//! - decoding is deterministic (the same bytes decode to the same message twice), which the
//!   replay of a transaction after a reconnect relies on.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use realtide_replication::pgoutput::{decode_copy_data, decode_logical, decode_logical_streamed};

fuzz_target!(|data: &[u8]| {
    let bytes = Bytes::copy_from_slice(data);
    let copy = decode_copy_data(bytes.clone()).map(|m| format!("{m:?}"));
    let copy_again = decode_copy_data(bytes.clone()).map(|m| format!("{m:?}"));
    assert_eq!(copy.ok(), copy_again.ok());
    let first = decode_logical(bytes.clone()).map(|m| format!("{m:?}"));
    let second = decode_logical(bytes.clone()).map(|m| format!("{m:?}"));
    assert_eq!(first.ok(), second.ok());
    let _ = decode_logical_streamed(bytes);
});
