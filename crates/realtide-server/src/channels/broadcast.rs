//! User broadcasts from outside a channel (the database, the HTTP API) and the frames every
//! broadcast path shares.
//!
//! A user broadcast has an event, a body (JSON text or raw bytes) and optional metadata (`id`,
//! `replayed`). V2 subscribers get the binary kind-4 frame; V1 subscribers get the JSON text
//! form, and never binary bodies.

use realtide_protocol::Vsn;
use realtide_protocol::encode::{self, EncodedFrame, UserBody};

use crate::outbox::OutFrame;

/// A user broadcast for one serializer, as an outbound frame (see
/// [`encode::user_broadcast`]).
pub fn user_frame(
    vsn: Vsn,
    join_ref: Option<&str>,
    topic: &str,
    event: &str,
    body: UserBody<'_>,
    meta: Option<&str>,
) -> Option<OutFrame> {
    Some(
        match encode::user_broadcast(vsn, join_ref, topic, event, body, meta)? {
            EncodedFrame::Text(text) => OutFrame::Text(text.into()),
            EncodedFrame::Binary(bytes) => OutFrame::Binary(bytes.into()),
        },
    )
}

/// The text broadcast form for every serializer (client JSON pushes, HTTP batch messages).
pub fn text_frame(vsn: Vsn, topic: &str, payload: &str) -> OutFrame {
    OutFrame::Text(encode::text_frame(vsn, None, None, topic, "broadcast", payload).into())
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
    /// The body as a [`UserBody`].
    pub fn body(&self) -> UserBody<'_> {
        match &self.body {
            StoredBody::Json(text) => UserBody::Json(text),
            StoredBody::Binary(bytes) => UserBody::Binary(bytes),
        }
    }
}

#[cfg(test)]
#[expect(clippy::panic, reason = "test assertions on known shapes")]
mod tests {
    use super::*;

    #[test]
    fn binary_user_broadcasts_never_reach_v1() {
        let binary = UserBody::Binary(b"\x01");
        assert!(user_frame(Vsn::V1, None, "realtime:a", "e", binary, None).is_none());
        let bad = UserBody::Json("{bad");
        assert!(user_frame(Vsn::V1, None, "realtime:a", "e", bad, None).is_none());
        let Some(OutFrame::Text(text)) = user_frame(
            Vsn::V1,
            None,
            "realtime:a",
            "e",
            UserBody::Json(r#"{"x":1}"#),
            Some(&encode::id_meta("m1")),
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
            UserBody::Json(r#"{"x":3,"y":4}"#),
            Some(&encode::replayed_meta("msg-uuid-1")),
        ) else {
            panic!("expected a binary frame");
        };
        let meta = encode::replayed_meta("msg-uuid-1");
        let mut expected = vec![4u8, 14, 6, meta.len() as u8, 1];
        expected.extend_from_slice(b"realtime:room1cursor");
        expected.extend_from_slice(meta.as_bytes());
        expected.extend_from_slice(br#"{"x":3,"y":4}"#);
        assert_eq!(&frame[..], &expected[..]);
    }
}
