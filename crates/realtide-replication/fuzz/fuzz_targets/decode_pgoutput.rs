//! Feeds arbitrary bytes to every decoder of `realtide_replication::pgoutput`: none may panic.
//!
//! `cargo fuzz run decode_pgoutput corpus/decode_pgoutput seeds/decode_pgoutput`
//! (seeds: the recorded PostgreSQL 15 messages of protocol-fixtures/pgoutput, one file each,
//! plus the same wrapped in XLogData; regenerate with `./make-seeds.sh`).
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use realtide_replication::pgoutput::{
    CopyDataMessage, decode_copy_data, decode_logical, decode_logical_streamed,
    format_commit_timestamp,
};

fuzz_target!(|data: &[u8]| {
    let bytes = Bytes::copy_from_slice(data);
    if let Ok(msg) = decode_logical(bytes.clone()) {
        if let realtide_replication::pgoutput::LogicalMessage::Commit(c) = msg {
            let _ = format_commit_timestamp(c.commit_time_micros);
        }
    }
    let _ = decode_logical_streamed(bytes.clone());
    if let Ok(CopyDataMessage::XLogData(x)) = decode_copy_data(bytes) {
        let _ = decode_logical(x.data);
    }
});
