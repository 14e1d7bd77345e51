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

/// A user broadcast's body: JSON text or raw bytes.
#[derive(Debug, Clone, Copy)]
pub enum UserBody<'a> {
    /// JSON text (must be valid JSON).
    Json(&'a str),
    /// Raw bytes.
    Binary(&'a [u8]),
}

impl UserBody<'_> {
    /// The kind-4 encoding byte's meaning for this body.
    pub fn encoding(&self) -> UserEncoding {
        match self {
            UserBody::Json(_) => UserEncoding::Json,
            UserBody::Binary(_) => UserEncoding::Binary,
        }
    }

    /// The body's bytes.
    pub fn bytes(&self) -> &[u8] {
        match self {
            UserBody::Json(text) => text.as_bytes(),
            UserBody::Binary(bytes) => bytes,
        }
    }

    /// Size counted against the payload limit.
    pub fn len(&self) -> usize {
        self.bytes().len()
    }

    /// Whether the body has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An encoded server frame: text (JSON) or binary (V2 kind 4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EncodedFrame {
    /// A text frame.
    Text(String),
    /// A binary frame.
    Binary(Vec<u8>),
}

/// A user broadcast for one serializer: kind 4 for V2; the JSON text form for V1, which never
/// receives binary payloads (`None`), nor a body that is not JSON. `meta` is a JSON object's
/// text.
pub fn user_broadcast(
    vsn: Vsn,
    join_ref: Option<&str>,
    topic: &str,
    event: &str,
    body: UserBody<'_>,
    meta: Option<&str>,
) -> Option<EncodedFrame> {
    let json_form = || {
        let UserBody::Json(text) = body else {
            return None;
        };
        serde_json::from_str::<&serde_json::value::RawValue>(text).ok()?;
        let payload = user_broadcast_json(event, text, meta);
        Some(EncodedFrame::Text(text_frame(
            vsn,
            join_ref,
            None,
            topic,
            "broadcast",
            &payload,
        )))
    };
    match vsn {
        Vsn::V2 => {
            let metadata = meta.unwrap_or("").as_bytes();
            match user_broadcast_binary(topic, event, metadata, body.encoding(), body.bytes()) {
                Ok(frame) => Some(EncodedFrame::Binary(frame)),
                // Header fields over 255 bytes cannot be framed; JSON bodies still go as text.
                Err(_) => json_form(),
            }
        }
        Vsn::V1 => json_form(),
    }
}

/// `{"id": <id>}`, the metadata of a stored message.
pub fn id_meta(id: &str) -> String {
    let mut out = String::with_capacity(id.len() + 10);
    out.push_str("{\"id\":");
    push_json_str(&mut out, id);
    out.push('}');
    out
}

/// `{"replayed":true,"id": <id>}`, the metadata of a replayed message.
pub fn replayed_meta(id: &str) -> String {
    let mut out = String::with_capacity(id.len() + 26);
    out.push_str("{\"replayed\":true,\"id\":");
    push_json_str(&mut out, id);
    out.push('}');
    out
}

/// The payload of a `postgres_changes` push: `{"ids":[...],"data":<data>}` (`data` is JSON).
pub fn postgres_changes_payload(ids: &[u32], data: &str) -> String {
    let mut out = String::with_capacity(data.len() + 16 + ids.len() * 8);
    out.push_str("{\"ids\":[");
    for (n, id) in ids.iter().enumerate() {
        if n > 0 {
            out.push(',');
        }
        out.push_str(&id.to_string());
    }
    out.push_str("],\"data\":");
    out.push_str(data);
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

    #[test]
    fn metas_and_postgres_changes_payloads() {
        assert_eq!(id_meta("a\"b"), r#"{"id":"a\"b"}"#);
        assert_eq!(replayed_meta("m1"), r#"{"replayed":true,"id":"m1"}"#);
        assert_eq!(
            postgres_changes_payload(&[3, 17], r#"{"x":1}"#),
            r#"{"ids":[3,17],"data":{"x":1}}"#
        );
        assert_eq!(
            postgres_changes_payload(&[], "{}"),
            r#"{"ids":[],"data":{}}"#
        );
    }

    #[test]
    fn user_broadcasts_per_serializer() {
        let binary = UserBody::Binary(b"\x01");
        assert_eq!(
            user_broadcast(Vsn::V1, None, "realtime:a", "e", binary, None),
            None
        );
        let bad = UserBody::Json("{bad");
        assert_eq!(
            user_broadcast(Vsn::V1, None, "realtime:a", "e", bad, None),
            None
        );
        assert_eq!(
            user_broadcast(Vsn::V1, None, "realtime:a", "e", UserBody::Json(r#"{"x":1}"#), Some(&id_meta("m1"))),
            Some(EncodedFrame::Text(
                r#"{"topic":"realtime:a","event":"broadcast","payload":{"type":"broadcast","event":"e","payload":{"x":1},"meta":{"id":"m1"}},"ref":null}"#.into()
            ))
        );
        assert!(matches!(
            user_broadcast(Vsn::V2, None, "realtime:a", "e", binary, None),
            Some(EncodedFrame::Binary(_))
        ));
        // A topic too long for the kind-4 header: JSON still goes as text, bytes not at all.
        let long = "t".repeat(300);
        assert!(matches!(
            user_broadcast(Vsn::V2, None, &long, "e", UserBody::Json("1"), None),
            Some(EncodedFrame::Text(_))
        ));
        assert_eq!(
            user_broadcast(Vsn::V2, None, &long, "e", binary, None),
            None
        );
    }
}
