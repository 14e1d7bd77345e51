//! Decoding of client frames.
//!
//! Text frames are V1 JSON objects or V2 JSON arrays; binary frames are V2 kinds 0 (push) and
//! 3 (user broadcast push). The payload of a text frame is kept as raw JSON text so that a
//! broadcast is relayed verbatim without being parsed.

use bytes::Bytes;
use serde::Deserialize;
use serde::de::{self, Deserializer};
use serde_json::value::RawValue;

use crate::id::{JoinRef, Ref, Topic, Vsn};

/// Binary kind of a V2 client push.
pub const KIND_PUSH: u8 = 0;
/// Binary kind of a V2 client user-broadcast push.
pub const KIND_USER_BROADCAST_PUSH: u8 = 3;
/// Binary kind of a V2 server user broadcast.
pub const KIND_USER_BROADCAST: u8 = 4;

/// Why a frame could not be decoded. The server drops such frames and keeps the socket.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Text that is not the JSON shape of the serializer, or kind-3 metadata that is not JSON.
    #[error("invalid json frame")]
    Json(#[source] serde_json::Error),
    /// V2 text that is not an array of at least five elements.
    #[error("expected V2 array of at least 5 elements")]
    ShortArray,
    /// A binary frame on a V1 socket.
    #[error("binary frames are not accepted with vsn 1.0.0")]
    BinaryOnV1,
    /// A binary frame shorter than its header says.
    #[error("binary frame truncated")]
    Truncated,
    /// A binary header field that is not UTF-8.
    #[error("binary frame field is not utf-8")]
    NotUtf8,
    /// A binary kind clients never send.
    #[error("unknown binary kind {0}")]
    UnknownKind(u8),
}

/// Payload encoding of a user broadcast (kind 3 / kind 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserEncoding {
    /// Raw bytes (`0` on the wire).
    Binary,
    /// JSON text (`1` on the wire; any non-zero value in kind 3).
    Json,
}

impl UserEncoding {
    /// The byte written in a kind-4 header.
    pub fn wire_byte(self) -> u8 {
        match self {
            UserEncoding::Binary => 0,
            UserEncoding::Json => 1,
        }
    }
}

/// A user broadcast: the decoded body of a kind-3 push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserBroadcast {
    /// The user event name.
    pub event: String,
    /// Client metadata (JSON text, checked to parse, or empty); not re-broadcast.
    pub metadata: Bytes,
    /// How `body` is encoded.
    pub encoding: UserEncoding,
    /// The user payload.
    pub body: Bytes,
}

/// The payload of an inbound frame.
#[derive(Debug, Clone)]
pub enum InboundPayload {
    /// Raw JSON text of a text frame's payload.
    Json(Box<RawValue>),
    /// A kind-3 user broadcast push.
    UserBroadcast(UserBroadcast),
    /// The data of a kind-0 binary push.
    Binary(Bytes),
}

/// A decoded client frame.
#[derive(Debug, Clone)]
pub struct Inbound {
    /// The join ref, when the client sent one.
    pub join_ref: Option<JoinRef>,
    /// The message ref (`null` is allowed, e.g. Python heartbeats).
    pub reference: Option<Ref>,
    /// The topic.
    pub topic: Topic,
    /// The event name.
    pub event: String,
    /// The payload.
    pub payload: InboundPayload,
}

/// A ref field: a string, `null`, or (leniently) a number.
struct RefField(Option<String>);

impl<'de> Deserialize<'de> for RefField {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(deserializer)? {
            serde_json::Value::Null => Ok(RefField(None)),
            serde_json::Value::String(s) => Ok(RefField(Some(s))),
            serde_json::Value::Number(n) => Ok(RefField(Some(n.to_string()))),
            _ => Err(de::Error::custom("ref must be a string, a number or null")),
        }
    }
}

#[derive(Deserialize)]
struct V1Frame<'a> {
    topic: String,
    event: String,
    #[serde(borrow)]
    payload: &'a RawValue,
    #[serde(rename = "ref")]
    reference: RefField,
    #[serde(default)]
    join_ref: Option<RefField>,
}

/// A V1 frame, which must be a JSON object. (A derived struct deserializer would also accept a
/// JSON array, field by field; Phoenix's V1 serializer refuses anything but a map.)
struct V1Object<'a>(V1Frame<'a>);

impl<'de: 'a, 'a> Deserialize<'de> for V1Object<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectOnly;

        impl<'de> de::Visitor<'de> for ObjectOnly {
            type Value = V1Frame<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a V1 frame object")
            }

            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                V1Frame::deserialize(de::value::MapAccessDeserializer::new(map))
            }
        }

        deserializer.deserialize_map(ObjectOnly).map(V1Object)
    }
}

/// Decodes a text frame for the given serializer.
pub fn decode_text(vsn: Vsn, text: &str) -> Result<Inbound, DecodeError> {
    match vsn {
        Vsn::V1 => {
            let V1Object(frame) = serde_json::from_str(text).map_err(DecodeError::Json)?;
            Ok(Inbound {
                join_ref: frame.join_ref.and_then(|r| r.0).map(JoinRef::new),
                reference: frame.reference.0.map(Ref::new),
                topic: Topic::new(frame.topic),
                event: frame.event,
                payload: InboundPayload::Json(frame.payload.to_owned()),
            })
        }
        Vsn::V2 => {
            let items: Vec<&RawValue> = serde_json::from_str(text).map_err(DecodeError::Json)?;
            let [join_ref, reference, topic, event, payload, ..] = items.as_slice() else {
                return Err(DecodeError::ShortArray);
            };
            let join_ref: RefField =
                serde_json::from_str(join_ref.get()).map_err(DecodeError::Json)?;
            let reference: RefField =
                serde_json::from_str(reference.get()).map_err(DecodeError::Json)?;
            let topic: String = serde_json::from_str(topic.get()).map_err(DecodeError::Json)?;
            let event: String = serde_json::from_str(event.get()).map_err(DecodeError::Json)?;
            Ok(Inbound {
                join_ref: join_ref.0.map(JoinRef::new),
                reference: reference.0.map(Ref::new),
                topic: Topic::new(topic),
                event,
                payload: InboundPayload::Json((*payload).to_owned()),
            })
        }
    }
}

/// Checked reader over a binary frame.
struct Cursor<'a> {
    bytes: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn u8(&mut self) -> Result<u8, DecodeError> {
        let (&first, rest) = self.bytes.split_first().ok_or(DecodeError::Truncated)?;
        self.bytes = rest;
        Ok(first)
    }

    fn take(&mut self, len: u8) -> Result<&'a [u8], DecodeError> {
        let len = usize::from(len);
        if self.bytes.len() < len {
            return Err(DecodeError::Truncated);
        }
        let (head, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        Ok(head)
    }

    fn text(&mut self, len: u8) -> Result<String, DecodeError> {
        let raw = self.take(len)?;
        std::str::from_utf8(raw)
            .map(str::to_owned)
            .map_err(|_| DecodeError::NotUtf8)
    }

    fn opt_text(&mut self, len: u8) -> Result<Option<String>, DecodeError> {
        let text = self.text(len)?;
        Ok((!text.is_empty()).then_some(text))
    }
}

/// Kind-3 metadata is empty or JSON text. The reference decodes it (`Jason.decode!` in
/// `V2Serializer.decode_binary/1`) and so drops the frame when it is not JSON.
fn check_metadata(metadata: &[u8]) -> Result<(), DecodeError> {
    if metadata.is_empty() {
        return Ok(());
    }
    let text = std::str::from_utf8(metadata).map_err(|_| DecodeError::NotUtf8)?;
    serde_json::from_str::<de::IgnoredAny>(text)
        .map(|_| ())
        .map_err(DecodeError::Json)
}

/// Decodes a binary frame. Only V2 sockets accept binary frames.
pub fn decode_binary(vsn: Vsn, frame: &Bytes) -> Result<Inbound, DecodeError> {
    if vsn == Vsn::V1 {
        return Err(DecodeError::BinaryOnV1);
    }
    let mut cursor = Cursor { bytes: frame };
    match cursor.u8()? {
        KIND_PUSH => {
            let (jr_len, ref_len, topic_len, event_len) =
                (cursor.u8()?, cursor.u8()?, cursor.u8()?, cursor.u8()?);
            let join_ref = cursor.opt_text(jr_len)?;
            let reference = cursor.opt_text(ref_len)?;
            let topic = cursor.text(topic_len)?;
            let event = cursor.text(event_len)?;
            let body = frame.slice(frame.len() - cursor.bytes.len()..);
            Ok(Inbound {
                join_ref: join_ref.map(JoinRef::new),
                reference: reference.map(Ref::new),
                topic: Topic::new(topic),
                event,
                payload: InboundPayload::Binary(body),
            })
        }
        KIND_USER_BROADCAST_PUSH => {
            let (jr_len, ref_len, topic_len, event_len, meta_len) = (
                cursor.u8()?,
                cursor.u8()?,
                cursor.u8()?,
                cursor.u8()?,
                cursor.u8()?,
            );
            let encoding = match cursor.u8()? {
                0 => UserEncoding::Binary,
                _ => UserEncoding::Json,
            };
            let join_ref = cursor.opt_text(jr_len)?;
            let reference = cursor.opt_text(ref_len)?;
            let topic = cursor.text(topic_len)?;
            let user_event = cursor.text(event_len)?;
            let meta_start = frame.len() - cursor.bytes.len();
            check_metadata(cursor.take(meta_len)?)?;
            let body_start = frame.len() - cursor.bytes.len();
            Ok(Inbound {
                join_ref: join_ref.map(JoinRef::new),
                reference: reference.map(Ref::new),
                topic: Topic::new(topic),
                event: "broadcast".to_owned(),
                payload: InboundPayload::UserBroadcast(UserBroadcast {
                    event: user_event,
                    metadata: frame.slice(meta_start..body_start),
                    encoding,
                    body: frame.slice(body_start..),
                }),
            })
        }
        other => Err(DecodeError::UnknownKind(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload_text(inbound: &Inbound) -> &str {
        match &inbound.payload {
            InboundPayload::Json(raw) => raw.get(),
            _ => "<not json>",
        }
    }

    #[test]
    fn v1_requires_ref_key_but_allows_null() {
        let ok = decode_text(
            Vsn::V1,
            r#"{"event":"heartbeat","payload":{},"topic":"phoenix","ref":null,"join_ref":null}"#,
        );
        let ok = ok.map_err(|e| e.to_string());
        assert!(matches!(
            ok,
            Ok(Inbound {
                reference: None,
                join_ref: None,
                ..
            })
        ));
        assert!(decode_text(Vsn::V1, r#"{"event":"x","payload":{},"topic":"t"}"#).is_err());
        assert!(decode_text(Vsn::V1, r#"[null,"1","t","e",{}]"#).is_err());
        // A derived deserializer would take this array positionally as topic/event/payload/ref.
        assert!(decode_text(Vsn::V1, r#"["t","e",{},"1"]"#).is_err());
    }

    #[test]
    fn v2_array_keeps_payload_verbatim() -> Result<(), DecodeError> {
        let frame = decode_text(
            Vsn::V2,
            r#"["9","10","realtime:room1","broadcast",{"b":1.50, "a":[1e3]},"extra"]"#,
        )?;
        assert_eq!(frame.join_ref, Some(JoinRef::new("9")));
        assert_eq!(frame.reference, Some(Ref::new("10")));
        assert_eq!(payload_text(&frame), r#"{"b":1.50, "a":[1e3]}"#);
        Ok(())
    }

    #[test]
    fn v2_rejects_short_and_non_arrays() {
        for bad in [
            r#"[null,"1","t","e"]"#,
            r#"{"topic":"t"}"#,
            "",
            "not json",
            "[1,2,3,4,5]",
        ] {
            assert!(decode_text(Vsn::V2, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn kind3_recorded_frame() -> Result<(), DecodeError> {
        // Recorded from supabase-js 2.119.1: channel.send cursor {x:10,y:20}, join_ref 9, ref 10.
        let bytes: Vec<u8> = [
            &[3u8, 1, 2, 14, 6, 0, 1][..],
            b"9",
            b"10",
            b"realtime:room1",
            b"cursor",
            br#"{"x":10,"y":20}"#,
        ]
        .concat();
        let frame = decode_binary(Vsn::V2, &Bytes::from(bytes))?;
        assert_eq!(frame.event, "broadcast");
        assert_eq!(frame.topic.as_str(), "realtime:room1");
        let InboundPayload::UserBroadcast(user) = frame.payload else {
            return Err(DecodeError::UnknownKind(99));
        };
        assert_eq!(user.event, "cursor");
        assert_eq!(user.encoding, UserEncoding::Json);
        assert!(user.metadata.is_empty());
        assert_eq!(&user.body[..], br#"{"x":10,"y":20}"#);
        Ok(())
    }

    #[test]
    fn truncated_binary_is_an_error() {
        let full: Vec<u8> = [
            &[3u8, 1, 2, 14, 6, 0, 1][..],
            b"9",
            b"10",
            b"realtime:room1",
        ]
        .concat();
        for cut in 0..full.len() {
            let part = Bytes::copy_from_slice(full.get(..cut).unwrap_or_default());
            assert!(decode_binary(Vsn::V2, &part).is_err());
        }
        assert!(decode_binary(Vsn::V1, &Bytes::from_static(&[3])).is_err());
        assert!(matches!(
            decode_binary(Vsn::V2, &Bytes::from_static(&[9, 0])),
            Err(DecodeError::UnknownKind(9))
        ));
    }
}
