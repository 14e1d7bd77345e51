//! Property tests: the decoders never panic and never misreport on mutated recorded frames, and
//! the encoders' output always decodes back to what was encoded.
//!
//! Deterministic: a fixed-seed xorshift generator, so a failure reproduces exactly. Set
//! `REALTIDE_PROPTEST_CASES` to run more (or fewer) cases.

mod common;

use bytes::Bytes;
use common::{ClientFrame, MalformedFrame, Output, ServerFrame, TestResult, evaluate, load};
use realtide_protocol::encode::{self, Status};
use realtide_protocol::frame::{
    KIND_PUSH, KIND_USER_BROADCAST, KIND_USER_BROADCAST_PUSH, decode_binary, decode_text,
};
use realtide_protocol::presence;
use realtide_protocol::system::{self, SystemStatus};
use realtide_protocol::{ClientMessage, DecodeError, Inbound, InboundPayload, UserEncoding, Vsn};
use serde_json::{Map, Value};

/// xorshift64*: tiny, fast and good enough to drive mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform-ish in `0..n` (`0` when `n` is 0).
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        usize::try_from(self.next() % u64::try_from(n).unwrap_or(u64::MAX)).unwrap_or(0)
    }

    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }

    fn byte(&mut self) -> u8 {
        self.next().to_le_bytes().first().copied().unwrap_or(0)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        items.get(self.below(items.len()))
    }
}

fn cases(default: usize) -> usize {
    std::env::var("REALTIDE_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Every frame in the fixtures, as raw bytes: client frames, malformed frames and the encoders'
/// expected outputs.
fn seeds() -> Result<Vec<Vec<u8>>, Box<dyn std::error::Error>> {
    let mut out = Vec::new();
    for loaded in load::<ClientFrame>("client-frames")? {
        out.push(loaded.entry.bytes()?);
    }
    for loaded in load::<MalformedFrame>("malformed")? {
        out.push(loaded.entry.bytes()?);
    }
    for loaded in load::<ServerFrame>("server-frames")? {
        match evaluate(&loaded.entry.encode)? {
            Output::Text(text) => out.push(text.into_bytes()),
            Output::Binary(bytes) => out.push(bytes),
            Output::TooLong(_) => {}
        }
    }
    Ok(out)
}

/// Bytes that steer the parsers into their interesting branches.
const INTERESTING: &[u8] = &[
    0, 1, 2, 3, 4, 5, 0x7f, 0x80, 0xc3, 0xff, b'[', b']', b'{', b'}', b'"', b'\\', b',', b':',
    b'n', b'0', b'-', b'e', b' ',
];

/// JSON fragments for structure-aware splicing.
const TOKENS: &[&str] = &[
    "[",
    "]",
    "{",
    "}",
    ",",
    ":",
    "null",
    "true",
    "false",
    "0",
    "-1",
    "1e999",
    "1.5",
    "\"\"",
    "\"phoenix\"",
    "\"heartbeat\"",
    "\"phx_join\"",
    "\"phx_leave\"",
    "\"broadcast\"",
    "\"presence\"",
    "\"access_token\"",
    "\"realtime:room1\"",
    "\"topic\"",
    "\"event\"",
    "\"payload\"",
    "\"ref\"",
    "\"join_ref\"",
    "\"config\"",
    "\"track\"",
    "\"\\u0000\"",
    "\"\\ud800\"",
    "\"é\"",
    " ",
    "\n",
];

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>], input: &mut Vec<u8>) {
    let len = input.len();
    match rng.below(11) {
        // Flip one bit.
        0 => {
            if let Some(b) = input.get_mut(rng.below(len)) {
                *b ^= 1 << rng.below(8);
            }
        }
        // Truncate.
        1 => input.truncate(rng.below(len + 1)),
        // Overwrite with a random byte.
        2 => {
            let value = rng.byte();
            if let Some(b) = input.get_mut(rng.below(len)) {
                *b = value;
            }
        }
        // Overwrite with an interesting byte.
        3 => {
            let value = rng.pick(INTERESTING).copied().unwrap_or(0);
            if let Some(b) = input.get_mut(rng.below(len)) {
                *b = value;
            }
        }
        // Insert random bytes.
        4 => {
            let at = rng.below(len + 1);
            let count = 1 + rng.below(8);
            let extra: Vec<u8> = (0..count).map(|_| rng.byte()).collect();
            input.splice(at..at, extra);
        }
        // Delete a range.
        5 => {
            let start = rng.below(len + 1);
            let end = (start + 1 + rng.below(16)).min(len);
            if start < end {
                input.drain(start..end);
            }
        }
        // Rewrite a binary header size byte (the first 7 bytes are the kind-3 header).
        6 => {
            let value = if rng.chance(2) {
                rng.byte()
            } else {
                u8::try_from(rng.below(20)).unwrap_or(0)
            };
            if let Some(b) = input.get_mut(rng.below(len.min(7))) {
                *b = value;
            }
        }
        // Set the kind byte.
        7 => {
            let kind = [
                KIND_PUSH,
                1,
                2,
                KIND_USER_BROADCAST_PUSH,
                KIND_USER_BROADCAST,
                5,
                255,
            ];
            let value = rng.pick(&kind).copied().unwrap_or(0);
            if let Some(b) = input.first_mut() {
                *b = value;
            }
        }
        // Splice in a JSON token.
        8 => {
            let at = rng.below(len + 1);
            let token = rng.pick(TOKENS).copied().unwrap_or("");
            input.splice(at..at, token.bytes());
        }
        // Cross over with another seed.
        9 => {
            if let Some(other) = rng.pick(seeds) {
                let cut = rng.below(len + 1);
                let from = rng.below(other.len() + 1);
                input.truncate(cut);
                input.extend_from_slice(other.get(from..).unwrap_or_default());
            }
        }
        // Duplicate a range (repeats elements, nests brackets).
        _ => {
            let start = rng.below(len + 1);
            let end = (start + rng.below(32)).min(len);
            let chunk = input.get(start..end).unwrap_or_default().to_vec();
            input.splice(start..start, chunk);
        }
    }
}

fn random_input(rng: &mut Rng) -> Vec<u8> {
    let len = rng.below(64);
    if rng.chance(2) {
        (0..len).map(|_| rng.byte()).collect()
    } else {
        // Random JSON-ish token soup.
        (0..len)
            .flat_map(|_| rng.pick(TOKENS).copied().unwrap_or("").bytes())
            .collect()
    }
}

#[derive(Debug, Default)]
struct Tally {
    inputs: usize,
    text_ok: usize,
    binary_ok: usize,
    plain_ok: usize,
    errors: Vec<String>,
}

/// The invariants of a decoded text frame.
fn check_text(text: &str, inbound: &Inbound) -> Result<(), String> {
    match &inbound.payload {
        InboundPayload::Json(raw) if text.contains(raw.get()) => Ok(()),
        InboundPayload::Json(raw) => Err(format!("payload {:?} not verbatim", raw.get())),
        other => Err(format!("text frame with payload {other:?}")),
    }
}

/// The invariants of a decoded binary frame: re-encoding the decoded fields gives back exactly
/// the input (empty join_ref / ref decode to `None`).
fn check_binary(input: &[u8], inbound: &Inbound) -> Result<(), String> {
    let text = |s: Option<&str>| s.unwrap_or("").as_bytes().to_vec();
    let join_ref = text(inbound.join_ref.as_ref().map(|r| r.as_str()));
    let reference = text(inbound.reference.as_ref().map(|r| r.as_str()));
    let size = |b: &[u8]| u8::try_from(b.len()).map_err(|_| format!("field of {} bytes", b.len()));
    let rebuilt = match &inbound.payload {
        InboundPayload::Binary(data) => {
            let mut out = vec![
                KIND_PUSH,
                size(&join_ref)?,
                size(&reference)?,
                size(inbound.topic.as_str().as_bytes())?,
                size(inbound.event.as_bytes())?,
            ];
            out.extend_from_slice(&join_ref);
            out.extend_from_slice(&reference);
            out.extend_from_slice(inbound.topic.as_str().as_bytes());
            out.extend_from_slice(inbound.event.as_bytes());
            out.extend_from_slice(data);
            out
        }
        InboundPayload::UserBroadcast(user) => {
            if inbound.event != "broadcast" {
                return Err(format!("kind 3 decoded to event {:?}", inbound.event));
            }
            // Any non-zero encoding byte reads as JSON: keep the input's byte.
            let encoding = input.get(6).copied().unwrap_or(0);
            if (encoding == 0) != (user.encoding == UserEncoding::Binary) {
                return Err(format!(
                    "encoding byte {encoding} read as {:?}",
                    user.encoding
                ));
            }
            if !user.metadata.is_empty()
                && serde_json::from_slice::<serde::de::IgnoredAny>(&user.metadata).is_err()
            {
                return Err("accepted metadata that is not JSON".to_owned());
            }
            let mut out = vec![
                KIND_USER_BROADCAST_PUSH,
                size(&join_ref)?,
                size(&reference)?,
                size(inbound.topic.as_str().as_bytes())?,
                size(user.event.as_bytes())?,
                size(&user.metadata)?,
                encoding,
            ];
            out.extend_from_slice(&join_ref);
            out.extend_from_slice(&reference);
            out.extend_from_slice(inbound.topic.as_str().as_bytes());
            out.extend_from_slice(user.event.as_bytes());
            out.extend_from_slice(&user.metadata);
            out.extend_from_slice(&user.body);
            out
        }
        InboundPayload::Json(_) => return Err("binary frame with a JSON payload".to_owned()),
    };
    if rebuilt == input {
        Ok(())
    } else {
        Err(format!("re-encoded as {rebuilt:?}"))
    }
}

/// Feeds one input to every decoder and classifies every success.
fn exercise(input: &[u8], tally: &mut Tally) {
    tally.inputs += 1;
    let mut texts = Vec::new();
    if let Ok(text) = std::str::from_utf8(input) {
        texts.push(text.to_owned());
    } else {
        texts.push(String::from_utf8_lossy(input).into_owned());
    }
    for text in &texts {
        for vsn in [Vsn::V1, Vsn::V2] {
            if let Ok(inbound) = decode_text(vsn, text) {
                tally.text_ok += 1;
                if let Err(e) = check_text(text, &inbound) {
                    tally.errors.push(format!("{vsn:?} text {text:?}: {e}"));
                }
                let _ = ClientMessage::from_inbound(inbound);
            }
        }
        // The per-app endpoint's plain JSON protocol reads the same text frames.
        if let Ok(message) = realtide_protocol::plain::parse(text) {
            tally.plain_ok += 1;
            if let realtide_protocol::plain::ClientMessage::Subscribe { table, filter } = &message
                && (table.name.is_empty()
                    || filter.len() > realtide_protocol::plain::MAX_FILTER_COLUMNS)
            {
                tally
                    .errors
                    .push(format!("plain {text:?} gave {message:?}"));
            }
        }
    }
    let bytes = Bytes::copy_from_slice(input);
    match decode_binary(Vsn::V1, &bytes) {
        Err(DecodeError::BinaryOnV1) => {}
        other => tally
            .errors
            .push(format!("V1 binary {input:?} gave {other:?}")),
    }
    if let Ok(inbound) = decode_binary(Vsn::V2, &bytes) {
        tally.binary_ok += 1;
        if let Err(e) = check_binary(input, &inbound) {
            tally.errors.push(format!("binary {input:?}: {e}"));
        }
        let _ = ClientMessage::from_inbound(inbound);
    }
}

fn finish(name: &str, tally: Tally, min_ok: usize) -> TestResult {
    eprintln!(
        "{name}: {} inputs, {} text decodes, {} binary decodes, {} plain messages, {} invariant failures",
        tally.inputs,
        tally.text_ok,
        tally.binary_ok,
        tally.plain_ok,
        tally.errors.len()
    );
    if let Some(first) = tally.errors.first() {
        return Err(format!("{} failures, first: {first}", tally.errors.len()).into());
    }
    // Guard against a mutator that only ever produces garbage.
    if tally.text_ok < min_ok || tally.binary_ok < min_ok {
        return Err(format!("too few successful decodes to mean anything: {tally:?}").into());
    }
    Ok(())
}

#[test]
fn decoders_survive_mutated_recorded_frames() -> TestResult {
    let seeds = seeds()?;
    let mut rng = Rng(0x5eed_f00d_cafe_d00d);
    let mut tally = Tally::default();
    for seed in &seeds {
        exercise(seed, &mut tally);
    }
    for _ in 0..cases(40_000) {
        let mut input = if rng.chance(20) {
            random_input(&mut rng)
        } else {
            rng.pick(&seeds).cloned().unwrap_or_default()
        };
        let rounds = if rng.chance(2) { 1 } else { 1 + rng.below(4) };
        for _ in 0..rounds {
            mutate(&mut rng, &seeds, &mut input);
        }
        exercise(&input, &mut tally);
    }
    finish("mutated frames", tally, 500)
}

#[test]
fn decoders_survive_extreme_inputs() -> TestResult {
    let mut tally = Tally::default();
    let deep = |open: &str, close: &str, n: usize| format!("{}{}", open.repeat(n), close.repeat(n));
    let inputs = [
        deep("[", "]", 100_000),
        deep("{\"a\":", "}", 50_000),
        format!(
            "[null,\"1\",\"phoenix\",\"heartbeat\",{}]",
            deep("[", "]", 100_000)
        ),
        format!(
            "[\"1\",\"1\",\"realtime:r\",\"phx_join\",{{\"config\":{}}}]",
            deep("[", "]", 10_000)
        ),
        format!(
            "[\"1\",\"1\",\"realtime:r\",\"presence\",{{\"event\":\"track\",\"payload\":{}}}]",
            deep("{\"a\":", "}", 10_000)
        ),
        format!(
            "{{\"topic\":\"phoenix\",\"event\":\"heartbeat\",\"payload\":{},\"ref\":null}}",
            deep("[", "]", 100_000)
        ),
        "\"".repeat(100_000),
        "1".repeat(100_000),
        format!("[{}]", "null,".repeat(100_000) + "null"),
    ];
    for input in &inputs {
        exercise(input.as_bytes(), &mut tally);
    }
    let mut big = vec![KIND_USER_BROADCAST_PUSH, 255, 255, 255, 255, 255, 1];
    big.extend(std::iter::repeat_n(b'a', 255 * 4));
    big.extend_from_slice(b"\"");
    big.extend(std::iter::repeat_n(b'm', 253));
    big.extend_from_slice(b"\"");
    big.extend(std::iter::repeat_n(0xff, 5_000_000));
    exercise(&big, &mut tally);
    for kind in 0..=u8::MAX {
        for len in 0..12 {
            exercise(
                &[vec![kind], vec![len; usize::from(len)]].concat(),
                &mut tally,
            );
        }
    }
    finish("extreme inputs", tally, 1)
}

// ---------------------------------------------------------------------------------------------
// Encoder round trips

/// Characters that exercise JSON escaping: quotes, backslashes, every control character,
/// DEL, separators U+2028/2029, multi-byte UTF-8.
fn random_string(rng: &mut Rng, max_bytes: usize) -> String {
    const POOL: &[char] = &[
        'a', 'Z', '0', ':', ' ', '"', '\\', '/', '\u{7f}', '\u{80}', 'é', '€', '\u{2028}',
        '\u{2029}', '\u{feff}', '😀', '{', '[', ',',
    ];
    let mut out = String::new();
    for _ in 0..rng.below(24) {
        let c = if rng.chance(3) {
            char::from_u32(u32::try_from(rng.below(0x20)).unwrap_or(0)).unwrap_or('x')
        } else {
            rng.pick(POOL).copied().unwrap_or('x')
        };
        if out.len() + c.len_utf8() > max_bytes {
            break;
        }
        out.push(c);
    }
    out
}

fn random_value(rng: &mut Rng, depth: usize) -> Value {
    match rng.below(if depth > 3 { 4 } else { 6 }) {
        0 => Value::Null,
        1 => Value::Bool(rng.chance(2)),
        2 => Value::from(rng.next() % 100_000),
        3 => Value::String(random_string(rng, 40)),
        4 => Value::Array(
            (0..rng.below(4))
                .map(|_| random_value(rng, depth + 1))
                .collect(),
        ),
        _ => Value::Object(random_map(rng, depth + 1)),
    }
}

fn random_map(rng: &mut Rng, depth: usize) -> Map<String, Value> {
    (0..rng.below(4))
        .map(|_| (random_string(rng, 16), random_value(rng, depth)))
        .collect()
}

fn parse(text: &str) -> Result<Value, String> {
    serde_json::from_str(text).map_err(|e| format!("{e} in {text:?}"))
}

#[test]
fn encoded_frames_decode_back() -> TestResult {
    let mut rng = Rng(0x00c0_ffee_1234_5678);
    let mut errors = Vec::new();
    for _ in 0..cases(40_000) / 4 {
        let topic = random_string(&mut rng, 255);
        let event = random_string(&mut rng, 255);
        let join_ref = rng.chance(3).then(|| random_string(&mut rng, 40));
        let reference = rng.chance(3).then(|| random_string(&mut rng, 40));
        let payload = serde_json::to_string(&random_value(&mut rng, 0))?;

        // Text frames, both serializers.
        for vsn in [Vsn::V1, Vsn::V2] {
            let text = encode::text_frame(
                vsn,
                join_ref.as_deref(),
                reference.as_deref(),
                &topic,
                &event,
                &payload,
            );
            match decode_text(vsn, &text) {
                Ok(inbound) => {
                    let expected_join_ref = match vsn {
                        Vsn::V1 => None, // V1 server frames never carry join_ref.
                        Vsn::V2 => join_ref.as_deref(),
                    };
                    let raw = match &inbound.payload {
                        InboundPayload::Json(raw) => raw.get(),
                        _ => "",
                    };
                    let same = inbound.join_ref.as_ref().map(|r| r.as_str()) == expected_join_ref
                        && inbound.reference.as_ref().map(|r| r.as_str()) == reference.as_deref()
                        && inbound.topic.as_str() == topic
                        && inbound.event == event
                        && raw == payload;
                    if !same {
                        errors.push(format!("{vsn:?} {text:?} decoded as {inbound:?}"));
                    }
                }
                Err(e) => errors.push(format!("{vsn:?} {text:?} does not decode: {e}")),
            }
        }

        // Reply payload shape.
        let reply = encode::reply(
            Vsn::V2,
            join_ref.as_deref(),
            reference.as_deref(),
            &topic,
            Status::Error,
            &encode::reason(&event),
        );
        let expected = serde_json::json!({"status": "error", "response": {"reason": event}});
        match parse(&reply) {
            Ok(Value::Array(items)) if items.get(4) == Some(&expected) => {}
            other => errors.push(format!("reply {reply:?} parsed as {other:?}")),
        }

        // System payloads.
        let channel = rng.chance(2).then(|| random_string(&mut rng, 40));
        let text = system::system_payload(&topic, SystemStatus::Ok, &event, channel.as_deref());
        let mut expected =
            serde_json::json!({"extension": topic, "status": "ok", "message": event});
        if let (Some(channel), Value::Object(map)) = (&channel, &mut expected) {
            map.insert("channel".to_owned(), Value::String(channel.clone()));
        }
        match parse(&text) {
            Ok(value) if value == expected => {}
            other => errors.push(format!("system payload {text:?} parsed as {other:?}")),
        }

        // Presence metas, state and diff.
        let user = random_map(&mut rng, 0);
        let prev = rng.chance(2).then(|| random_string(&mut rng, 20));
        let meta = presence::render_meta(&user, &event, prev.as_deref());
        let mut expected = user.clone();
        expected.shift_remove("phx_ref");
        expected.shift_remove("phx_ref_prev");
        expected.insert("phx_ref".to_owned(), Value::String(event.clone()));
        if let Some(prev) = &prev {
            expected.insert("phx_ref_prev".to_owned(), Value::String(prev.clone()));
        }
        match parse(&meta) {
            Ok(Value::Object(map)) if map == expected => {}
            other => errors.push(format!("meta {meta:?} parsed as {other:?}")),
        }
        let diff = presence::render_diff(&vec![(topic.as_str(), vec![meta.as_str()])], &vec![]);
        let expected =
            serde_json::json!({"joins": {topic.clone(): {"metas": [parse(&meta)?]}}, "leaves": {}});
        match parse(&diff) {
            Ok(value) if value == expected => {}
            other => errors.push(format!("diff {diff:?} parsed as {other:?}")),
        }

        // V1 conversion of a user broadcast.
        let meta_json = rng.chance(2).then(|| payload.clone());
        let text = encode::user_broadcast_json(&event, &payload, meta_json.as_deref());
        match parse(&text) {
            Ok(Value::Object(map))
                if map.get("type") == Some(&Value::from("broadcast"))
                    && map.get("event") == Some(&Value::from(event.clone()))
                    && map.get("payload") == Some(&parse(&payload)?)
                    && map.contains_key("meta") == meta_json.is_some() => {}
            other => errors.push(format!("user broadcast json {text:?} parsed as {other:?}")),
        }

        // Kind 4 layout, and a kind-3 push built from the same fields decodes to them.
        let metadata = if rng.chance(2) {
            String::new()
        } else {
            let mut m = String::new();
            encode::push_json_str(&mut m, &random_string(&mut rng, 200));
            m
        };
        let encoding = if rng.chance(2) {
            UserEncoding::Json
        } else {
            UserEncoding::Binary
        };
        let body: Vec<u8> = (0..rng.below(64)).map(|_| rng.byte()).collect();
        match encode::user_broadcast_binary(&topic, &event, metadata.as_bytes(), encoding, &body) {
            Ok(frame) => {
                let expected = [
                    &[
                        KIND_USER_BROADCAST,
                        u8::try_from(topic.len())?,
                        u8::try_from(event.len())?,
                        u8::try_from(metadata.len())?,
                        encoding.wire_byte(),
                    ][..],
                    topic.as_bytes(),
                    event.as_bytes(),
                    metadata.as_bytes(),
                    &body,
                ]
                .concat();
                if frame != expected {
                    errors.push(format!("kind 4 {frame:?}, expected {expected:?}"));
                }
                // The same frame as a client push: kind 3 has join_ref and ref on top.
                let jr = join_ref.clone().unwrap_or_default();
                let rf = reference.clone().unwrap_or_default();
                let push = [
                    &[
                        KIND_USER_BROADCAST_PUSH,
                        u8::try_from(jr.len())?,
                        u8::try_from(rf.len())?,
                    ][..],
                    frame.get(1..5).unwrap_or_default(),
                    jr.as_bytes(),
                    rf.as_bytes(),
                    frame.get(5..).unwrap_or_default(),
                ]
                .concat();
                match decode_binary(Vsn::V2, &Bytes::from(push.clone())) {
                    Ok(inbound) => {
                        if let Err(e) = check_binary(&push, &inbound) {
                            errors.push(format!("kind 3 {push:?}: {e}"));
                        }
                    }
                    Err(e) => errors.push(format!("kind 3 {push:?} does not decode: {e}")),
                }
            }
            Err(e) => errors.push(format!("kind 4 refused fields within 255 bytes: {e}")),
        }
    }
    match errors.first() {
        None => Ok(()),
        Some(first) => Err(format!("{} failures, first: {first}", errors.len()).into()),
    }
}
