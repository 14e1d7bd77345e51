//! The codec against the recorded and specified frames in `protocol-fixtures/`.
//!
//! - `client-frames/*.json`: every client frame must decode to exactly the recorded fields and
//!   classify as the recorded `ClientMessage`.
//! - `server-frames/*.json`: every encoder call must produce exactly the recorded text or bytes.
//! - `malformed/*.json`: every frame must be refused with the recorded error.

mod common;

use std::collections::BTreeSet;

use bytes::Bytes;
use common::{
    ClientFrame, Failures, Loaded, MalformedFrame, Output, ServerFrame, TestResult, error_name,
    evaluate, from_hex, load, parse_encoding, parse_vsn, to_hex,
};
use realtide_protocol::frame::{decode_binary, decode_text};
use realtide_protocol::message::{BroadcastPush, PresencePush};
use realtide_protocol::{
    ClientMessage, DecodeError, Inbound, InboundPayload, JoinRef, Ref, UserEncoding, Vsn,
};
use serde_json::Value;

use crate::common::ExpectMessage;

fn decode(vsn: Vsn, text: Option<&str>, bytes: &[u8]) -> Result<Inbound, DecodeError> {
    match text {
        Some(text) => decode_text(vsn, text),
        None => decode_binary(vsn, &Bytes::copy_from_slice(bytes)),
    }
}

#[test]
fn fixture_files_load_and_names_are_unique() -> TestResult {
    let client = load::<ClientFrame>("client-frames")?;
    let server = load::<ServerFrame>("server-frames")?;
    let malformed = load::<MalformedFrame>("malformed")?;
    let mut names = BTreeSet::new();
    let mut failures = Failures::default();
    let all = client
        .iter()
        .map(|l| (&l.file, &l.entry.name))
        .chain(server.iter().map(|l| (&l.file, &l.entry.name)))
        .chain(malformed.iter().map(|l| (&l.file, &l.entry.name)));
    for (file, name) in all {
        failures.check(names.insert((file.clone(), name.clone())), || {
            format!("{file}: duplicate name {name:?}")
        });
    }
    // Every line of the recorded transcripts A.1-A.16 (protocol-fixtures/README.md) is present:
    // 75 C→S lines (72 decodable + 3 cut off by the recorder) and 116 S→C lines.
    let from_appendix = |name: &str| name.starts_with("A.");
    let c2s = client
        .iter()
        .filter(|l| from_appendix(&l.entry.name))
        .count()
        + malformed
            .iter()
            .filter(|l| from_appendix(&l.entry.name))
            .count();
    let s2c = server
        .iter()
        .filter(|l| from_appendix(&l.entry.name))
        .count();
    failures.eq("Appendix A", "C→S frames", &c2s, &75);
    failures.eq("Appendix A", "S→C frames", &s2c, &116);
    failures.finish()
}

fn check_message(
    f: &mut Failures,
    ctx: &str,
    inbound: &Inbound,
    expected: &ExpectMessage,
) -> Result<(), String> {
    let message = ClientMessage::from_inbound(inbound.clone());
    match (&message, expected) {
        (ClientMessage::Heartbeat, ExpectMessage::Heartbeat)
        | (ClientMessage::Leave, ExpectMessage::Leave)
        | (ClientMessage::Presence(PresencePush::Untrack), ExpectMessage::PresenceUntrack)
        | (ClientMessage::Presence(PresencePush::NoEvent), ExpectMessage::PresenceNoEvent)
        | (ClientMessage::Other, ExpectMessage::Other) => {}
        (ClientMessage::Join(join), ExpectMessage::Join { join: expected }) => {
            f.eq(ctx, "join request", &**join, &expected.to_request());
        }
        (ClientMessage::Broadcast(BroadcastPush::Json(raw)), ExpectMessage::BroadcastJson) => {
            // Relayed verbatim: the very text the client sent.
            let InboundPayload::Json(sent) = &inbound.payload else {
                return Err("json broadcast from a non-json payload".to_owned());
            };
            f.eq(ctx, "relayed broadcast payload", raw.get(), sent.get());
        }
        (ClientMessage::Broadcast(BroadcastPush::User(user)), ExpectMessage::BroadcastUser) => {
            let InboundPayload::UserBroadcast(sent) = &inbound.payload else {
                return Err("user broadcast from a non-kind-3 payload".to_owned());
            };
            f.eq(ctx, "user broadcast", user, sent);
        }
        (
            ClientMessage::Presence(PresencePush::Track(meta)),
            ExpectMessage::PresenceTrack { meta: expected },
        ) => f.eq(ctx, "presence meta", meta, expected),
        (
            ClientMessage::Presence(PresencePush::Unknown(event)),
            ExpectMessage::PresenceUnknown { event: expected },
        ) => f.eq(ctx, "presence event", event, expected),
        (ClientMessage::AccessToken(token), ExpectMessage::AccessToken { token: expected }) => {
            f.eq(ctx, "access token", token, expected);
        }
        (actual, expected) => f.fail(format!(
            "{ctx}: message\n    actual:   {actual:?}\n    expected: {expected:?}"
        )),
    }
    Ok(())
}

fn check_client_frame(f: &mut Failures, loaded: &Loaded<ClientFrame>) -> Result<(), String> {
    let frame = &loaded.entry;
    let ctx = format!("{} / {}", loaded.file, frame.name);
    let vsn = parse_vsn(&frame.vsn)?;
    let bytes = frame.bytes()?;
    let inbound = decode(vsn, frame.text.as_deref(), &bytes)
        .map_err(|e| format!("decode failed: {e} ({e:?})"))?;
    let expect = &frame.expect;

    f.eq(
        &ctx,
        "join_ref",
        &inbound.join_ref,
        &expect.join_ref.clone().map(JoinRef::new),
    );
    f.eq(
        &ctx,
        "ref",
        &inbound.reference,
        &expect.reference.clone().map(Ref::new),
    );
    f.eq(&ctx, "topic", inbound.topic.as_str(), &expect.topic);
    f.eq(&ctx, "event", &inbound.event, &expect.event);

    match &inbound.payload {
        InboundPayload::Json(raw) => {
            let parsed: Value = serde_json::from_str(raw.get()).map_err(|e| e.to_string())?;
            f.eq(&ctx, "payload", &Some(parsed), &expect.payload);
            if let Some(text) = &frame.text {
                f.check(text.contains(raw.get()), || {
                    format!(
                        "{ctx}: payload {:?} is not verbatim from the frame",
                        raw.get()
                    )
                });
            }
            if let Some(exact) = &expect.payload_raw {
                f.eq(&ctx, "payload text", raw.get(), exact);
            }
            f.check(
                expect.user_broadcast.is_none() && expect.binary_payload_hex.is_none(),
                || format!("{ctx}: decoded a JSON payload, expected a binary one"),
            );
        }
        InboundPayload::UserBroadcast(user) => {
            let Some(exp) = &expect.user_broadcast else {
                return Err(format!("decoded a user broadcast {user:?}, expected none"));
            };
            f.eq(&ctx, "user event", &user.event, &exp.event);
            f.eq(
                &ctx,
                "metadata",
                &user.metadata[..],
                exp.metadata.as_bytes(),
            );
            f.eq(
                &ctx,
                "encoding",
                &user.encoding,
                &parse_encoding(&exp.encoding)?,
            );
            f.eq(&ctx, "body", &user.body[..], &exp.body_bytes()?[..]);
        }
        InboundPayload::Binary(data) => {
            f.eq(
                &ctx,
                "binary payload",
                &Some(to_hex(data)),
                &expect.binary_payload_hex,
            );
        }
    }

    if let Some(recorded) = &frame.recorded_decoded {
        // The logging server's independent decode of the same bytes.
        let InboundPayload::UserBroadcast(user) = &inbound.payload else {
            return Err("recorded_decoded on a frame that is not kind 3".to_owned());
        };
        f.eq(
            &ctx,
            "recorded kind",
            recorded.kind.as_str(),
            "userBroadcastPush(3)",
        );
        f.eq(
            &ctx,
            "recorded join_ref",
            &inbound.join_ref,
            &Some(JoinRef::new(recorded.join_ref.clone())),
        );
        f.eq(
            &ctx,
            "recorded ref",
            &inbound.reference,
            &Some(Ref::new(recorded.reference.clone())),
        );
        f.eq(
            &ctx,
            "recorded topic",
            inbound.topic.as_str(),
            &recorded.topic,
        );
        f.eq(
            &ctx,
            "recorded userEvent",
            &user.event,
            &recorded.user_event,
        );
        f.eq(
            &ctx,
            "recorded metadata",
            &user.metadata[..],
            recorded.metadata.as_bytes(),
        );
        let encoding = match recorded.payload_encoding.as_str() {
            "json(1)" => UserEncoding::Json,
            "binary(0)" => UserEncoding::Binary,
            other => return Err(format!("unknown recorded encoding {other}")),
        };
        f.eq(&ctx, "recorded encoding", &user.encoding, &encoding);
        let body: Value = serde_json::from_slice(&user.body).map_err(|e| e.to_string())?;
        f.eq(&ctx, "recorded payload", &body, &recorded.payload);
    }

    check_message(f, &ctx, &inbound, &expect.message)
}

#[test]
fn client_frames_decode_as_recorded() -> TestResult {
    let mut failures = Failures::default();
    for loaded in load::<ClientFrame>("client-frames")? {
        let ctx = format!("{} / {}", loaded.file, loaded.entry.name);
        let result = check_client_frame(&mut failures, &loaded);
        failures.record(&ctx, result);
    }
    failures.finish()
}

/// A recorded V1 frame as the real server would send it: without the `join_ref` key the logging
/// server added.
fn without_join_ref(mut value: Value) -> Value {
    if let Value::Object(map) = &mut value {
        map.shift_remove("join_ref");
    }
    value
}

fn check_server_frame(f: &mut Failures, loaded: &Loaded<ServerFrame>) -> Result<(), String> {
    let frame = &loaded.entry;
    let ctx = format!("{} / {}", loaded.file, frame.name);
    let output = evaluate(&frame.encode)?;
    match (&output, &frame.text, &frame.hex, &frame.error) {
        (Output::Text(text), Some(expected), None, None) => {
            f.eq(&ctx, "text", text, expected);
            // A server text frame has the client frame shape too; it must decode back.
            let vsn = if text.starts_with('[') {
                Vsn::V2
            } else {
                Vsn::V1
            };
            let is_frame = !matches!(
                frame.encode,
                common::Encode::Reason { .. }
                    | common::Encode::SystemPayload { .. }
                    | common::Encode::RenderState { .. }
                    | common::Encode::RenderDiff { .. }
                    | common::Encode::RenderMeta(_)
                    | common::Encode::UserBroadcastJson { .. }
            );
            if is_frame {
                let decoded = decode_text(vsn, text).map_err(|e| format!("decode back: {e}"))?;
                let parsed: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
                let (join_ref, reference) = match &parsed {
                    Value::Array(items) => (items.first(), items.get(1)),
                    _ => (None, parsed.get("ref")),
                };
                f.eq(
                    &ctx,
                    "decoded join_ref",
                    &decoded.join_ref.as_ref().map(JoinRef::as_str),
                    &join_ref.and_then(Value::as_str),
                );
                f.eq(
                    &ctx,
                    "decoded ref",
                    &decoded.reference.as_ref().map(Ref::as_str),
                    &reference.and_then(Value::as_str),
                );
            }
            if let Some(recorded) = &frame.recorded {
                f.check(frame.note.is_some(), || {
                    format!("{ctx}: a recorded frame that differs needs a note")
                });
                let recorded: Value = serde_json::from_str(recorded).map_err(|e| e.to_string())?;
                let produced: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
                // Same JSON (key order aside) once the logging server's V1 join_ref is removed.
                f.eq(
                    &ctx,
                    "recorded (as JSON)",
                    &produced,
                    &without_join_ref(recorded),
                );
            }
        }
        (Output::Binary(bytes), None, Some(expected), None) => {
            f.eq(&ctx, "hex", &to_hex(bytes), expected);
            // Kind 4 is server→client only: a client sending it is refused.
            f.check(
                matches!(
                    decode_binary(Vsn::V2, &Bytes::copy_from_slice(bytes)),
                    Err(DecodeError::UnknownKind(4))
                ),
                || format!("{ctx}: kind 4 must not decode as a client frame"),
            );
        }
        (Output::TooLong(error), None, None, Some(expected)) => {
            f.eq(&ctx, "refused field", error.field, expected.field.as_str());
            f.eq(&ctx, "refused length", &error.len, &expected.len);
        }
        (output, ..) => f.fail(format!(
            "{ctx}: encoder gave {output:?}, fixture expects text={:?} hex={:?} error={:?}",
            frame.text, frame.hex, frame.error
        )),
    }
    Ok(())
}

#[test]
fn server_frames_encode_as_recorded() -> TestResult {
    let mut failures = Failures::default();
    for loaded in load::<ServerFrame>("server-frames")? {
        let ctx = format!("{} / {}", loaded.file, loaded.entry.name);
        let result = check_server_frame(&mut failures, &loaded);
        failures.record(&ctx, result);
    }
    failures.finish()
}

#[test]
fn malformed_frames_are_refused() -> TestResult {
    let mut failures = Failures::default();
    for loaded in load::<MalformedFrame>("malformed")? {
        let frame = &loaded.entry;
        let ctx = format!("{} / {}", loaded.file, frame.name);
        let Some(vsn) = failures.record(&ctx, parse_vsn(&frame.vsn)) else {
            continue;
        };
        let Some(bytes) = failures.record(&ctx, frame.bytes()) else {
            continue;
        };
        match decode(vsn, frame.text.as_deref(), &bytes) {
            Ok(inbound) => failures.fail(format!("{ctx}: decoded to {inbound:?}")),
            Err(error) => failures.eq(&ctx, "error", &error_name(&error), &frame.error),
        }
    }
    failures.finish()
}

/// Every prefix of a valid binary client frame: shorter than its header and fields says is
/// `Truncated`; anything longer is the same frame with a shorter body.
#[test]
fn binary_frame_prefixes() -> TestResult {
    let mut failures = Failures::default();
    for loaded in load::<ClientFrame>("client-frames")? {
        let frame = &loaded.entry;
        let Some(hex) = &frame.hex else { continue };
        let ctx = format!("{} / {}", loaded.file, frame.name);
        let Some(bytes) = failures.record(&ctx, from_hex(hex)) else {
            continue;
        };
        let full = decode_binary(Vsn::V2, &Bytes::copy_from_slice(&bytes))?;
        let body_len = match &full.payload {
            InboundPayload::UserBroadcast(user) => user.body.len(),
            InboundPayload::Binary(data) => data.len(),
            InboundPayload::Json(_) => return Err(format!("{ctx}: binary frame as JSON").into()),
        };
        let fields_end = bytes.len() - body_len;
        for cut in 0..bytes.len() {
            let prefix = Bytes::copy_from_slice(bytes.get(..cut).unwrap_or_default());
            match decode_binary(Vsn::V2, &prefix) {
                Err(DecodeError::Truncated) if cut < fields_end => {}
                Err(DecodeError::Json(_)) if cut < fields_end => {
                    // Cut inside kind-3 metadata: what remains is shorter than the size byte,
                    // so only `Truncated` is possible there.
                    failures.fail(format!("{ctx}: cut at {cut} gave Json, expected Truncated"));
                }
                Ok(prefix_frame) if cut >= fields_end => {
                    let body = match &prefix_frame.payload {
                        InboundPayload::UserBroadcast(user) => user.body.clone(),
                        InboundPayload::Binary(data) => data.clone(),
                        InboundPayload::Json(_) => Bytes::new(),
                    };
                    failures.eq(
                        &ctx,
                        &format!("body of the prefix cut at {cut}"),
                        &body[..],
                        bytes.get(fields_end..cut).unwrap_or_default(),
                    );
                    failures.eq(&ctx, "prefix topic", &prefix_frame.topic, &full.topic);
                }
                other => failures.fail(format!(
                    "{ctx}: prefix cut at {cut} (fields end at {fields_end}) gave {other:?}"
                )),
            }
        }
    }
    failures.finish()
}

/// Binary frames are refused on V1 sockets, whatever they contain.
#[test]
fn binary_frames_are_refused_on_v1() -> TestResult {
    let mut failures = Failures::default();
    for loaded in load::<ClientFrame>("client-frames")? {
        let Some(hex) = &loaded.entry.hex else {
            continue;
        };
        let result = decode_binary(Vsn::V1, &Bytes::from(from_hex(hex)?));
        failures.check(matches!(result, Err(DecodeError::BinaryOnV1)), || {
            format!("{}: {result:?}", loaded.entry.name)
        });
    }
    failures.finish()
}

/// A V2 text frame is never accepted as V1 and the other way round (the serializers differ).
#[test]
fn text_frames_only_decode_with_their_serializer() -> TestResult {
    let mut failures = Failures::default();
    for loaded in load::<ClientFrame>("client-frames")? {
        let frame = &loaded.entry;
        let Some(text) = &frame.text else { continue };
        let other = match parse_vsn(&frame.vsn)? {
            Vsn::V1 => Vsn::V2,
            Vsn::V2 => Vsn::V1,
        };
        let result = decode_text(other, text);
        failures.check(result.is_err(), || {
            format!("{}: also decodes as {other:?}: {result:?}", frame.name)
        });
    }
    failures.finish()
}
