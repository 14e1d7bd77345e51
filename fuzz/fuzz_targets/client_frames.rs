//! Arbitrary bytes as the stream a client sends after the upgrade, read by the server's frame
//! reader (`crates/realtide-server/src/ws/frames.rs`, compiled in here): no panic, every frame
//! returned fits the limit, control frames are whole and short, and the reader never reports
//! more payload than the stream carried.

#![no_main]

#[path = "../../crates/realtide-server/src/ws/frames.rs"]
#[allow(dead_code, unused_imports)]
mod frames;

use std::future::Future;
use std::task::{Context, Poll, Waker};

use frames::{FrameReader, Opcode};
use libfuzzer_sys::fuzz_target;

const MAX: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let mut reader = FrameReader::new(data, MAX);
    let mut cx = Context::from_waker(Waker::noop());
    let mut payload_total = 0usize;
    loop {
        // An in-memory reader never pends: one poll finishes each call.
        let mut next = Box::pin(reader.next());
        let Poll::Ready(result) = next.as_mut().poll(&mut cx) else {
            panic!("reading from a slice pended");
        };
        drop(next);
        let Ok(frame) = result else { break };
        assert!(frame.payload.len() <= MAX);
        if matches!(frame.opcode, Opcode::Close | Opcode::Ping | Opcode::Pong) {
            assert!(frame.fin && frame.payload.len() <= 125);
        }
        payload_total += frame.payload.len();
        assert!(payload_total <= data.len());
    }
});
