//! Typed client messages.
//!
//! [`ClientMessage::from_inbound`] turns a decoded frame into the message the server dispatches
//! on with an exhaustive `match`. Join configs are parsed leniently, as the reference does:
//! invalid fields fall back to their defaults instead of failing the join.

use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::frame::{Inbound, InboundPayload, UserBroadcast};

/// The topic of socket-level messages.
pub const PHOENIX_TOPIC: &str = "phoenix";

/// What a client asked for.
#[derive(Debug, Clone)]
pub enum ClientMessage {
    /// `heartbeat` on topic `phoenix`.
    Heartbeat,
    /// `phx_join`.
    Join(Box<JoinRequest>),
    /// `phx_leave`.
    Leave,
    /// `broadcast`, as text (payload relayed verbatim) or as a kind-3 user broadcast.
    Broadcast(BroadcastPush),
    /// `presence` track / untrack.
    Presence(PresencePush),
    /// `access_token` refresh; `None` when the value is not a string (ignored).
    AccessToken(Option<String>),
    /// Any other event; counted and ignored on joined channels.
    Other,
}

/// A client broadcast.
#[derive(Debug, Clone)]
pub enum BroadcastPush {
    /// A text-frame broadcast: the whole payload is relayed verbatim.
    Json(Box<RawValue>),
    /// A kind-3 binary user broadcast push.
    User(UserBroadcast),
}

/// A presence push.
#[derive(Debug, Clone, PartialEq)]
pub enum PresencePush {
    /// `track` with its meta (not yet checked to be an object).
    Track(Value),
    /// `untrack`.
    Untrack,
    /// A payload without `event`: accepted and ignored.
    NoEvent,
    /// An unknown event name.
    Unknown(String),
}

/// A parsed `phx_join` payload.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JoinRequest {
    /// Whether the payload had a `config` key at all (absent = legacy Postgres-changes mode).
    pub has_config: bool,
    /// `config.broadcast.self`.
    pub broadcast_self: bool,
    /// `config.broadcast.ack`.
    pub broadcast_ack: bool,
    /// `config.broadcast.replication_ready`.
    pub replication_ready: bool,
    /// `config.broadcast.replay`, raw.
    pub replay: Option<Value>,
    /// `config.presence.enabled`.
    pub presence_enabled: bool,
    /// `config.presence.key`; `None` means "generate one".
    pub presence_key: Option<String>,
    /// `config.postgres_changes` entries, raw and in order (`null` entries dropped).
    pub postgres_changes: Vec<Map<String, Value>>,
    /// `config.private`.
    pub private: bool,
    /// The channel token (`access_token`, else `user_token`), `None` when absent or an opaque
    /// `sb_` API key (then the socket token is used).
    pub token: Option<String>,
}

impl ClientMessage {
    /// Classifies a decoded frame.
    pub fn from_inbound(inbound: Inbound) -> ClientMessage {
        let Inbound {
            topic,
            event,
            payload,
            ..
        } = inbound;
        if topic.as_str() == PHOENIX_TOPIC && event == "heartbeat" {
            return ClientMessage::Heartbeat;
        }
        match (event.as_str(), payload) {
            ("broadcast", InboundPayload::Json(raw)) => {
                ClientMessage::Broadcast(BroadcastPush::Json(raw))
            }
            ("broadcast", InboundPayload::UserBroadcast(user)) => {
                ClientMessage::Broadcast(BroadcastPush::User(user))
            }
            ("phx_join", InboundPayload::Json(raw)) => {
                ClientMessage::Join(Box::new(JoinRequest::parse(&parse_value(&raw))))
            }
            ("phx_leave", _) => ClientMessage::Leave,
            ("presence", InboundPayload::Json(raw)) => {
                ClientMessage::Presence(PresencePush::parse(&parse_value(&raw)))
            }
            ("access_token", InboundPayload::Json(raw)) => {
                let token = parse_value(&raw)
                    .get("access_token")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                ClientMessage::AccessToken(token)
            }
            _ => ClientMessage::Other,
        }
    }
}

fn parse_value(raw: &RawValue) -> Value {
    serde_json::from_str(raw.get()).unwrap_or(Value::Null)
}

/// A boolean as the reference accepts it: JSON booleans or `"true"`/`"false"` in any case.
/// Anything else falls back to `false`.
pub fn flexible_bool(value: Option<&Value>) -> bool {
    match value {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
        _ => false,
    }
}

impl JoinRequest {
    /// Parses a join payload leniently.
    pub fn parse(payload: &Value) -> JoinRequest {
        let config = payload.get("config");
        let broadcast = config.and_then(|c| c.get("broadcast"));
        let presence = config.and_then(|c| c.get("presence"));
        let presence_key = match presence.and_then(|p| p.get("key")) {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        let postgres_changes = match config.and_then(|c| c.get("postgres_changes")) {
            Some(Value::Array(entries)) => entries
                .iter()
                .filter_map(|e| e.as_object().cloned())
                .collect(),
            _ => Vec::new(),
        };
        let token = ["access_token", "user_token"]
            .iter()
            .find_map(|key| payload.get(key).and_then(Value::as_str))
            .filter(|t| !t.starts_with("sb_"))
            .map(str::to_owned);
        JoinRequest {
            has_config: config.is_some(),
            broadcast_self: flexible_bool(broadcast.and_then(|b| b.get("self"))),
            broadcast_ack: flexible_bool(broadcast.and_then(|b| b.get("ack"))),
            replication_ready: flexible_bool(broadcast.and_then(|b| b.get("replication_ready"))),
            replay: broadcast.and_then(|b| b.get("replay")).cloned(),
            presence_enabled: flexible_bool(presence.and_then(|p| p.get("enabled"))),
            presence_key,
            postgres_changes,
            private: flexible_bool(config.and_then(|c| c.get("private"))),
            token,
        }
    }
}

impl PresencePush {
    /// Parses a presence payload (`{"type":"presence","event":"track","payload":{...}}`).
    pub fn parse(payload: &Value) -> PresencePush {
        let Some(event) = payload.get("event").and_then(Value::as_str) else {
            return PresencePush::NoEvent;
        };
        match event.to_ascii_lowercase().as_str() {
            "track" => PresencePush::Track(match payload.get("payload") {
                None | Some(Value::Null) => Value::Object(Map::new()),
                Some(meta) => meta.clone(),
            }),
            "untrack" => PresencePush::Untrack,
            _ => PresencePush::Unknown(event.to_owned()),
        }
    }
}

/// FNV-1a (64 bit): a small hash that is the same in every process and release.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The integer id the server gives a `postgres_changes` binding: deterministic per entry
/// (identical entries share an id), in `1..2^27`, never 0 (clients treat 0 as "no id").
pub fn binding_id(entry: &Map<String, Value>) -> u32 {
    // FNV-1a over the entry's JSON text: stable across processes and releases.
    let hash = fnv1a(Value::Object(entry.clone()).to_string().as_bytes());
    let id = u32::try_from(hash % (1 << 27)).unwrap_or(1);
    id.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn join_defaults() {
        let join = JoinRequest::parse(&json!({}));
        assert!(!join.has_config && !join.broadcast_ack && !join.broadcast_self && !join.private);
        assert_eq!(join.token, None);
        assert_eq!(join.presence_key, None);
    }

    #[test]
    fn join_lenient_values() {
        let join = JoinRequest::parse(&json!({
            "config": {
                "broadcast": {"self": "TRUE", "ack": "nope"},
                "presence": {"enabled": "true", "key": 42},
                "postgres_changes": [null, {"event": "*", "schema": "public", "select": ["a"]}, 3],
                "private": "False"
            },
            "user_token": "tok"
        }));
        assert!(join.has_config && join.broadcast_self && !join.broadcast_ack);
        assert!(join.presence_enabled && !join.private);
        assert_eq!(join.presence_key.as_deref(), Some("42"));
        assert_eq!(join.postgres_changes.len(), 1);
        assert_eq!(join.token.as_deref(), Some("tok"));
    }

    #[test]
    fn join_token_precedence_and_sb_keys() {
        let pick = |v: Value| JoinRequest::parse(&v).token;
        assert_eq!(
            pick(json!({"access_token": "a", "user_token": "u"})).as_deref(),
            Some("a")
        );
        assert_eq!(
            pick(json!({"access_token": null, "user_token": "u"})).as_deref(),
            Some("u")
        );
        assert_eq!(pick(json!({"access_token": "sb_publishable_x"})), None);
        assert_eq!(pick(json!({"access_token": ""})).as_deref(), Some(""));
    }

    #[test]
    fn presence_parsing() {
        assert_eq!(
            PresencePush::parse(&json!({"event": "TRACK", "payload": {"a": 1}})),
            PresencePush::Track(json!({"a": 1}))
        );
        assert_eq!(
            PresencePush::parse(&json!({"event": "track"})),
            PresencePush::Track(json!({}))
        );
        assert_eq!(
            PresencePush::parse(&json!({"event": "untrack"})),
            PresencePush::Untrack
        );
        assert_eq!(PresencePush::parse(&json!({})), PresencePush::NoEvent);
        assert_eq!(
            PresencePush::parse(&json!({"event": "dance"})),
            PresencePush::Unknown("dance".into())
        );
    }

    #[test]
    fn binding_ids_are_stable_and_non_zero() {
        let a = json!({"event": "*", "schema": "public", "table": "t"});
        let b = json!({"event": "INSERT", "schema": "public", "table": "t"});
        let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
            unreachable!("literals are objects")
        };
        assert_eq!(binding_id(a), binding_id(&a.clone()));
        assert_ne!(binding_id(a), binding_id(b));
        assert!(binding_id(a) > 0 && binding_id(a) < (1 << 27));
    }
}
