//! Arbitrary bytes through `realtide_protocol::wsframe`: the parser (client or server rules),
//! the encoder and the fragment assembler. The first input byte picks the rules: bit 0 the
//! sender (0 client, 1 server), bits 1-3 the payload limit, bits 4-7 the read size (1-16 bytes)
//! for an incremental pass. Besides "no panic" it checks that
//! - reading the stream in small pieces gives the same frames and the same final error, or the
//!   same need for more bytes, as reading it whole ("need more bytes" is never an error);
//! - every frame fits the limit, control frames are whole and at most 125 bytes, and the
//!   frames never carry more payload than the stream did;
//! - re-encoding a frame (same opcode, FIN and key) parses back to the same frame, and gives
//!   back exactly its bytes when its length was minimally encoded;
//! - the assembler's messages are what a plain reference reassembly yields.

#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use realtide_protocol::wsframe::{
    Assembler, Frame, FrameError, Header, Opcode, Rules, parse_header, push_header, take_frame,
};

const MAX_PAYLOADS: [usize; 8] = [0, 1, 125, 126, 1000, 4096, 65_535, 65_536];

/// Frames taken, each with its header and wire bytes, then how the stream ended and how many
/// of its bytes were not taken.
struct Read {
    frames: Vec<(Header, Vec<u8>, Frame)>,
    end: Result<(), FrameError>,
    left: usize,
}

fn read_whole(data: &[u8], rules: Rules) -> Read {
    let mut buf = BytesMut::from(data);
    let mut frames = Vec::new();
    loop {
        // What is left of the stream: `buf` must equal it whenever nothing was taken.
        let rest = data.get(data.len() - buf.len()..).unwrap_or_default();
        let header = parse_header(&buf, rules);
        match take_frame(&mut buf, rules) {
            Ok(Some(frame)) => {
                let Ok(Some(header)) = header else {
                    panic!("a frame was taken without a complete header: {header:?}");
                };
                let wire = rest.get(..header.frame_len()).unwrap_or_default().to_vec();
                assert_eq!(wire.len(), header.frame_len());
                assert_eq!(buf.len() + wire.len(), rest.len());
                frames.push((header, wire, frame));
            }
            Ok(None) => {
                assert_eq!(&buf[..], rest, "an incomplete frame consumed bytes");
                return Read {
                    frames,
                    end: Ok(()),
                    left: buf.len(),
                };
            }
            Err(error) => {
                assert_eq!(header.err(), Some(error.clone()));
                assert_eq!(&buf[..], rest, "a refused frame consumed bytes");
                return Read {
                    frames,
                    end: Err(error),
                    left: buf.len(),
                };
            }
        }
    }
}

/// The same stream arriving `piece` bytes at a time; the count of bytes not taken includes
/// those that had not arrived when an error stopped the reading.
fn read_in_pieces(
    data: &[u8],
    rules: Rules,
    piece: usize,
) -> (Vec<Frame>, Result<(), FrameError>, usize) {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut arrived = 0;
    for chunk in data.chunks(piece) {
        buf.extend_from_slice(chunk);
        arrived += chunk.len();
        loop {
            match take_frame(&mut buf, rules) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(error) => return (frames, Err(error), buf.len() + data.len() - arrived),
            }
        }
    }
    let left = buf.len();
    (frames, Ok(()), left)
}

/// Reassembly as section 5.4 states it, for comparison with [`Assembler`].
fn reference_messages(frames: &[Frame], max: usize) -> (Vec<(Opcode, Bytes)>, Option<FrameError>) {
    let mut out = Vec::new();
    let mut partial: Option<(Opcode, Vec<u8>)> = None;
    for frame in frames {
        match frame.opcode {
            Opcode::Close | Opcode::Ping | Opcode::Pong => {
                out.push((frame.opcode, frame.payload.clone()));
            }
            Opcode::Text | Opcode::Binary => {
                if partial.is_some() {
                    return (out, Some(FrameError::InterruptedMessage));
                }
                if frame.fin {
                    out.push((frame.opcode, frame.payload.clone()));
                } else {
                    partial = Some((frame.opcode, frame.payload.to_vec()));
                }
            }
            Opcode::Continuation => {
                let Some((opcode, mut data)) = partial.take() else {
                    return (out, Some(FrameError::UnexpectedContinuation));
                };
                data.extend_from_slice(&frame.payload);
                if data.len() > max {
                    return (out, Some(FrameError::MessageTooLarge { max }));
                }
                if frame.fin {
                    out.push((opcode, Bytes::from(data)));
                } else {
                    partial = Some((opcode, data));
                }
            }
        }
    }
    (out, None)
}

fuzz_target!(|input: &[u8]| {
    let Some((&control, data)) = input.split_first() else {
        return;
    };
    let max = MAX_PAYLOADS
        .get(usize::from((control >> 1) & 7))
        .copied()
        .unwrap_or(0);
    let rules = if control & 1 == 0 {
        Rules::from_client(max)
    } else {
        Rules::from_server(max)
    };
    let piece = usize::from(control >> 4) + 1;

    let whole = read_whole(data, rules);
    let mut payload_total = 0usize;
    for (header, wire, frame) in &whole.frames {
        assert!(frame.payload.len() <= max);
        assert_eq!(frame.payload.len(), header.payload_len);
        assert_eq!((frame.fin, frame.opcode), (header.fin, header.opcode));
        assert_eq!(header.mask.is_some(), control & 1 == 0);
        if frame.opcode.is_control() {
            assert!(frame.fin && frame.payload.len() <= 125);
        }
        payload_total += frame.payload.len();
        assert!(payload_total <= data.len());

        let mut again = Vec::new();
        push_header(
            &mut again,
            frame.opcode,
            frame.fin,
            frame.payload.len(),
            header.mask,
        );
        let key_len = if header.mask.is_some() { 4 } else { 0 };
        let minimal = match frame.payload.len() {
            0..=125 => 2,
            126..=65_535 => 4,
            _ => 10,
        };
        assert_eq!(again.len(), minimal + key_len);
        let start = again.len();
        again.extend_from_slice(&frame.payload);
        if let (Some(key), Some(body)) = (header.mask, again.get_mut(start..)) {
            realtide_protocol::wsframe::apply_mask(body, key);
        }
        if header.header_len == minimal + key_len {
            assert_eq!(&again, wire);
        }
        let mut buf = BytesMut::from(again.as_slice());
        assert_eq!(take_frame(&mut buf, rules), Ok(Some(frame.clone())));
        assert!(buf.is_empty());
    }

    let (frames, end, left) = read_in_pieces(data, rules, piece);
    let whole_frames: Vec<Frame> = whole.frames.iter().map(|(_, _, f)| f.clone()).collect();
    assert_eq!(frames, whole_frames);
    assert_eq!(end, whole.end);
    assert_eq!(left, whole.left);

    let max_message = max.saturating_mul(2);
    let mut assembler = Assembler::new(max_message);
    let mut messages = Vec::new();
    let mut refused = None;
    for frame in whole_frames.iter().cloned() {
        match assembler.push(frame) {
            Ok(Some(message)) => {
                if !message.opcode.is_control() {
                    assert!(message.payload.len() <= max_message.max(max));
                }
                messages.push((message.opcode, message.payload));
            }
            Ok(None) => {}
            Err(error) => {
                refused = Some(error);
                break;
            }
        }
    }
    assert_eq!(
        (messages, refused),
        reference_messages(&whole_frames, max_message)
    );
});
