//! The per-app endpoint's plain JSON protocol (`realtide_protocol::plain`): parsing any text
//! never panics, a refusal always has a code, and what is accepted keeps the parser's bounds
//! (identifier table names, at most 16 scalar filter values, event names of 1-128 bytes).
#![no_main]

use libfuzzer_sys::fuzz_target;
use realtide_protocol::plain::{self, ClientMessage, MAX_EVENT_BYTES, MAX_FILTER_COLUMNS};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match plain::parse(text) {
        Err(error) => assert!(!error.code().is_empty()),
        Ok(ClientMessage::Subscribe { table, filter }) => {
            assert_eq!(
                plain::TableName::parse(&format!("{}.{}", table.schema, table.name)),
                Some(table)
            );
            assert!(filter.len() <= MAX_FILTER_COLUMNS);
            assert!(filter.iter().all(|(_, v)| !v.is_array() && !v.is_object()));
        }
        Ok(ClientMessage::Event { event, .. }) => {
            assert!(!event.is_empty() && event.len() <= MAX_EVENT_BYTES);
        }
        Ok(ClientMessage::Unsubscribe { .. } | ClientMessage::PresenceTrack { .. }) => {}
    }
});
