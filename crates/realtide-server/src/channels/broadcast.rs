//! User broadcasts from outside a channel (the database, the HTTP API) and the frames every
//! broadcast path shares.
//!
//! A user broadcast has an event, a body (JSON text or raw bytes) and optional metadata (`id`,
//! `replayed`). V2 subscribers get the binary kind-4 frame; V1 subscribers get the JSON text
//! form, and never binary bodies.

use realtide_protocol::encode;
use realtide_protocol::{UserEncoding, Vsn};

use crate::outbox::OutFrame;

/// A broadcast body.
#[derive(Debug, Clone, Copy)]
pub enum Body<'a> {
    /// JSON text (must be valid JSON).
    Json(&'a str),
    /// Raw bytes.
    Binary(&'a [u8]),
}

impl Body<'_> {
    fn encoding(&self) -> UserEncoding {
        match self {
            Body::Json(_) => UserEncoding::Json,
            Body::Binary(_) => UserEncoding::Binary,
        }
    }

    fn bytes(&self) -> &[u8] {
        match self {
            Body::Json(text) => text.as_bytes(),
            Body::Binary(bytes) => bytes,
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

/// A user broadcast for one serializer: kind 4 for V2; the JSON text form for V1, which never
/// receives binary payloads. `meta` is a JSON object's text.
pub fn user_frame(
    vsn: Vsn,
    join_ref: Option<&str>,
    topic: &str,
    event: &str,
    body: Body<'_>,
    meta: Option<&str>,
) -> Option<OutFrame> {
    let json_form = || {
        let Body::Json(text) = body else {
            return None;
        };
        serde_json::from_str::<&serde_json::value::RawValue>(text).ok()?;
        let payload = encode::user_broadcast_json(event, text, meta);
        Some(OutFrame::Text(
            encode::text_frame(vsn, join_ref, None, topic, "broadcast", &payload).into(),
        ))
    };
    match vsn {
        Vsn::V2 => {
            let metadata = meta.unwrap_or("").as_bytes();
            match encode::user_broadcast_binary(
                topic,
                event,
                metadata,
                body.encoding(),
                body.bytes(),
            ) {
                Ok(frame) => Some(OutFrame::Binary(frame.into())),
                // Header fields over 255 bytes cannot be framed; JSON bodies still go as text.
                Err(_) => json_form(),
            }
        }
        Vsn::V1 => json_form(),
    }
}

/// The text broadcast form for every serializer (client JSON pushes, HTTP batch messages).
pub fn text_frame(vsn: Vsn, topic: &str, payload: &str) -> OutFrame {
    OutFrame::Text(encode::text_frame(vsn, None, None, topic, "broadcast", payload).into())
}

/// `{"id": <id>}`, the metadata of a stored message.
pub fn id_meta(id: &str) -> String {
    let mut out = String::with_capacity(id.len() + 10);
    out.push_str("{\"id\":");
    encode::push_json_str(&mut out, id);
    out.push('}');
    out
}

/// `{"replayed":true,"id": <id>}`, the metadata of a replayed message.
pub fn replayed_meta(id: &str) -> String {
    let mut out = String::with_capacity(id.len() + 26);
    out.push_str("{\"replayed\":true,\"id\":");
    encode::push_json_str(&mut out, id);
    out.push('}');
    out
}

/// A broadcast stored in `realtime.messages`, as the replication stream delivers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Sub-topic.
    pub topic: String,
    /// Private or public namespace.
    pub private: bool,
    /// User event.
    pub event: String,
    /// Row id.
    pub id: String,
    /// JSON text, or bytes from `binary_payload`.
    pub body: StoredBody,
}

/// A stored message's body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredBody {
    /// `payload` (jsonb text).
    Json(String),
    /// `binary_payload`.
    Binary(Vec<u8>),
}

impl StoredMessage {
    /// The body as a [`Body`].
    pub fn body(&self) -> Body<'_> {
        match &self.body {
            StoredBody::Json(text) => Body::Json(text),
            StoredBody::Binary(bytes) => Body::Binary(bytes),
        }
    }
}

#[cfg(test)]
#[expect(clippy::panic, reason = "test assertions on known shapes")]
mod tests {
    use super::*;

    #[test]
    fn binary_user_broadcasts_never_reach_v1() {
        let binary = Body::Binary(b"\x01");
        assert!(user_frame(Vsn::V1, None, "realtime:a", "e", binary, None).is_none());
        let bad = Body::Json("{bad");
        assert!(user_frame(Vsn::V1, None, "realtime:a", "e", bad, None).is_none());
        let Some(OutFrame::Text(text)) = user_frame(
            Vsn::V1,
            None,
            "realtime:a",
            "e",
            Body::Json(r#"{"x":1}"#),
            Some(&id_meta("m1")),
        ) else {
            panic!("expected a text frame");
        };
        assert_eq!(
            &text[..],
            br#"{"topic":"realtime:a","event":"broadcast","payload":{"type":"broadcast","event":"e","payload":{"x":1},"meta":{"id":"m1"}},"ref":null}"#
        );
        assert!(matches!(
            user_frame(Vsn::V2, None, "realtime:a", "e", binary, None),
            Some(OutFrame::Binary(_))
        ));
    }

    #[test]
    fn v2_metadata_is_carried_in_the_binary_header() {
        let Some(OutFrame::Binary(frame)) = user_frame(
            Vsn::V2,
            None,
            "realtime:room1",
            "cursor",
            Body::Json(r#"{"x":3,"y":4}"#),
            Some(&replayed_meta("msg-uuid-1")),
        ) else {
            panic!("expected a binary frame");
        };
        let meta = replayed_meta("msg-uuid-1");
        let mut expected = vec![4u8, 14, 6, meta.len() as u8, 1];
        expected.extend_from_slice(b"realtime:room1cursor");
        expected.extend_from_slice(meta.as_bytes());
        expected.extend_from_slice(br#"{"x":3,"y":4}"#);
        assert_eq!(&frame[..], &expected[..]);
    }
}
