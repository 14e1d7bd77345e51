//! Server frames.
//!
//! V1 frames are `{"topic","event","payload","ref"}` objects and never carry `join_ref`;
//! V2 frames are `[join_ref, ref, topic, event, payload]` arrays. Payloads are passed in as
//! JSON text so callers can encode a broadcast once and share the bytes.

use crate::frame::{KIND_USER_BROADCAST, UserEncoding};
use crate::id::Vsn;

/// A kind-4 header field longer than its one-byte size allows.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{field} is {len} bytes; binary frame fields are limited to 255")]
pub struct FieldTooLong {
    /// The field's name.
    pub field: &'static str,
    /// Its length in bytes.
    pub len: usize,
}

/// Appends `s` as a JSON string literal.
pub fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                out.push_str(&format!("\\u{:04x}", u32::from(c)));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn push_opt_str(out: &mut String, s: Option<&str>) {
    match s {
        Some(s) => push_json_str(out, s),
        None => out.push_str("null"),
    }
}

/// Encodes a text frame. `payload` must be JSON text.
pub fn text_frame(
    vsn: Vsn,
    join_ref: Option<&str>,
    reference: Option<&str>,
    topic: &str,
    event: &str,
    payload: &str,
) -> String {
    let mut out = String::with_capacity(payload.len() + topic.len() + event.len() + 48);
    match vsn {
        Vsn::V1 => {
            out.push_str("{\"topic\":");
            push_json_str(&mut out, topic);
            out.push_str(",\"event\":");
            push_json_str(&mut out, event);
            out.push_str(",\"payload\":");
            out.push_str(payload);
            out.push_str(",\"ref\":");
            push_opt_str(&mut out, reference);
            out.push('}');
        }
        Vsn::V2 => {
            out.push('[');
            push_opt_str(&mut out, join_ref);
            out.push(',');
            push_opt_str(&mut out, reference);
            out.push(',');
            push_json_str(&mut out, topic);
            out.push(',');
            push_json_str(&mut out, event);
            out.push(',');
            out.push_str(payload);
            out.push(']');
        }
    }
    out
}

/// A text frame split around its payload: `head + payload + tail` equals [`text_frame`] with
/// that payload. Lets a large payload (a topic's `presence_state`) be shared by many frames
/// that differ only in their refs.
pub fn text_frame_parts(
    vsn: Vsn,
    join_ref: Option<&str>,
    reference: Option<&str>,
    topic: &str,
    event: &str,
) -> (String, String) {
    let mut head = text_frame(vsn, join_ref, reference, topic, event, "");
    let tail = match vsn {
        Vsn::V1 => {
            let mut tail = String::from(",\"ref\":");
            push_opt_str(&mut tail, reference);
            tail.push('}');
            tail
        }
        Vsn::V2 => String::from("]"),
    };
    head.truncate(head.len().saturating_sub(tail.len()));
    (head, tail)
}

/// Reply status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// `ok`
    Ok,
    /// `error`
    Error,
}

/// Encodes a `phx_reply`; `response` must be JSON text.
pub fn reply(
    vsn: Vsn,
    join_ref: Option<&str>,
    reference: Option<&str>,
    topic: &str,
    status: Status,
    response: &str,
) -> String {
    let status = match status {
        Status::Ok => "ok",
        Status::Error => "error",
    };
    let payload = format!("{{\"status\":\"{status}\",\"response\":{response}}}");
    text_frame(vsn, join_ref, reference, topic, "phx_reply", &payload)
}

/// The response of an error reply carrying a reason: `{"reason":"..."}`.
pub fn reason(text: &str) -> String {
    let mut out = String::from("{\"reason\":");
    push_json_str(&mut out, text);
    out.push('}');
    out
}

/// Encodes `phx_close` / `phx_error`, whose ref is the channel's join ref.
pub fn channel_end(vsn: Vsn, join_ref: Option<&str>, topic: &str, event: &str) -> String {
    text_frame(vsn, join_ref, join_ref, topic, event, "{}")
}

/// Encodes a V2 kind-4 user broadcast.
pub fn user_broadcast_binary(
    topic: &str,
    event: &str,
    metadata: &[u8],
    encoding: UserEncoding,
    body: &[u8],
) -> Result<Vec<u8>, FieldTooLong> {
    let size = |field: &'static str, len: usize| {
        u8::try_from(len).map_err(|_| FieldTooLong { field, len })
    };
    let header = [
        KIND_USER_BROADCAST,
        size("topic", topic.len())?,
        size("event", event.len())?,
        size("metadata", metadata.len())?,
        encoding.wire_byte(),
    ];
    let mut out =
        Vec::with_capacity(header.len() + topic.len() + event.len() + metadata.len() + body.len());
    out.extend_from_slice(&header);
    out.extend_from_slice(topic.as_bytes());
    out.extend_from_slice(event.as_bytes());
    out.extend_from_slice(metadata);
    out.extend_from_slice(body);
    Ok(out)
}

/// The JSON broadcast payload a V1 receiver gets for a user broadcast with a JSON body:
/// `{"type":"broadcast","event":...,"payload":...,"meta"?:...}`. `body` and `meta` must be JSON.
pub fn user_broadcast_json(event: &str, body: &str, meta: Option<&str>) -> String {
    let mut out = String::with_capacity(body.len() + event.len() + 48);
    out.push_str("{\"type\":\"broadcast\",\"event\":");
    push_json_str(&mut out, event);
    out.push_str(",\"payload\":");
    out.push_str(body);
    if let Some(meta) = meta {
        out.push_str(",\"meta\":");
        out.push_str(meta);
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_parts_surround_the_payload() {
        for vsn in [Vsn::V1, Vsn::V2] {
            for (join_ref, reference) in [(None, None), (Some("1"), Some("2\"x"))] {
                let (head, tail) =
                    text_frame_parts(vsn, join_ref, reference, "realtime:a", "presence_state");
                let payload = "{\"k\":[1]}";
                assert_eq!(
                    format!("{head}{payload}{tail}"),
                    text_frame(
                        vsn,
                        join_ref,
                        reference,
                        "realtime:a",
                        "presence_state",
                        payload
                    )
                );
            }
        }
    }

    #[test]
    fn heartbeat_replies() {
        assert_eq!(
            reply(Vsn::V2, None, Some("14"), "phoenix", Status::Ok, "{}"),
            r#"[null,"14","phoenix","phx_reply",{"status":"ok","response":{}}]"#
        );
        assert_eq!(
            reply(Vsn::V1, None, None, "phoenix", Status::Ok, "{}"),
            r#"{"topic":"phoenix","event":"phx_reply","payload":{"status":"ok","response":{}},"ref":null}"#
        );
    }

    #[test]
    fn v1_never_has_join_ref() {
        let frame = channel_end(Vsn::V1, Some("1"), "realtime:room1", "phx_close");
        assert_eq!(
            frame,
            r#"{"topic":"realtime:room1","event":"phx_close","payload":{},"ref":"1"}"#
        );
    }

    #[test]
    fn escaping() {
        let mut out = String::new();
        push_json_str(&mut out, "a\"b\\c\n\u{1}é");
        assert_eq!(out, r#""a\"b\\c\n\u0001é""#);
        let parsed: Result<String, _> = serde_json::from_str(&out);
        assert_eq!(parsed.ok().as_deref(), Some("a\"b\\c\n\u{1}é"));
    }

    #[test]
    fn kind4_recorded_frame() {
        let frame = user_broadcast_binary(
            "realtime:room1",
            "cursor",
            br#"{"id":"msg-uuid-1","replayed":true}"#,
            UserEncoding::Json,
            br#"{"x":3,"y":4}"#,
        );
        let expected: Vec<u8> = [
            &[4u8, 14, 6, 35, 1][..],
            b"realtime:room1",
            b"cursor",
            br#"{"id":"msg-uuid-1","replayed":true}"#,
            br#"{"x":3,"y":4}"#,
        ]
        .concat();
        assert_eq!(frame, Ok(expected));
        let long = "x".repeat(256);
        assert!(user_broadcast_binary(&long, "e", b"", UserEncoding::Binary, b"").is_err());
    }
}
