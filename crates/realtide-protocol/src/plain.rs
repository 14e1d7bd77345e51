//! The plain JSON protocol of the per-app endpoint (`/v1/{app_id}/realtime`), the one
//! backend-as-a-service platforms such as Butterbase document for their realtime service
//! (docs.butterbase.ai, "Realtime"): one JSON object per text frame, its kind in `type`.
//!
//! Client messages: `subscribe` (`table`, optional `filter` of column equalities),
//! `unsubscribe` (`table`), `presence_track` (`metadata` object), `event` (`event` name and
//! `payload`). Server messages: `connected`, `subscribed`, `unsubscribed`, `heartbeat`,
//! `change`, `presence_state`, `event_ack` and `error` (`code` and `message`).
//!
//! [`parse`] never panics on any input and refuses what it does not understand with a
//! [`PlainError`] whose [`code`](PlainError::code) goes into the `error` message; the socket
//! stays open.

use serde_json::{Map, Value, json};

/// Most columns one `filter` may name.
pub const MAX_FILTER_COLUMNS: usize = 16;
/// Longest table or column name (PostgreSQL's identifier limit).
pub const MAX_NAME_BYTES: usize = 63;
/// Longest event name.
pub const MAX_EVENT_BYTES: usize = 128;

/// A client message.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientMessage {
    /// Changes of `table` (`schema.table`, or a table of the `public` schema), only rows whose
    /// columns equal every value of `filter`.
    Subscribe {
        /// The table as given.
        table: TableName,
        /// Column equalities, in the order given.
        filter: Vec<(String, Value)>,
    },
    /// No more changes of `table`.
    Unsubscribe {
        /// The table as given.
        table: TableName,
    },
    /// This connection's presence, with its metadata (replacing the previous one).
    PresenceTrack {
        /// Free-form metadata.
        metadata: Map<String, Value>,
    },
    /// A client event, handed to the app's function for `event`.
    Event {
        /// The event's name.
        event: String,
        /// Its payload (any JSON value).
        payload: Value,
    },
}

/// A table named by a client: schema (default `public`) and name, both checked identifiers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TableName {
    /// The schema.
    pub schema: String,
    /// The table.
    pub name: String,
}

impl TableName {
    /// `table` or `schema.table`; each part 1-63 bytes of letters, digits, `_` and `$`, not
    /// starting with a digit or `$` (PostgreSQL's unquoted identifiers, any case).
    pub fn parse(text: &str) -> Option<TableName> {
        let (schema, name) = match text.split_once('.') {
            Some((schema, name)) => (schema, name),
            None => ("public", text),
        };
        (identifier(schema) && identifier(name)).then(|| TableName {
            schema: schema.to_owned(),
            name: name.to_owned(),
        })
    }

    /// The name as clients see it: `name` in `public`, `schema.name` elsewhere.
    pub fn display(&self) -> String {
        if self.schema == "public" {
            self.name.clone()
        } else {
            format!("{}.{}", self.schema, self.name)
        }
    }
}

fn identifier(text: &str) -> bool {
    let mut bytes = text.bytes();
    match bytes.next() {
        Some(first) if first.is_ascii_alphabetic() || first == b'_' => {}
        _ => return false,
    }
    text.len() <= MAX_NAME_BYTES
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$')
}

/// Why a client message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlainError {
    /// Not JSON.
    #[error("the message is not JSON")]
    NotJson,
    /// JSON, but not an object with a string `type`.
    #[error("the message must be a JSON object with a string \"type\"")]
    NotMessage,
    /// A `type` this protocol does not have.
    #[error("unknown message type {0:?}")]
    UnknownType(String),
    /// A required field is absent.
    #[error("\"{0}\" is required")]
    Missing(&'static str),
    /// A field has the wrong shape.
    #[error("\"{field}\" {why}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        why: &'static str,
    },
}

impl PlainError {
    /// The `code` of the `error` message.
    pub fn code(&self) -> &'static str {
        match self {
            PlainError::NotJson => "INVALID_JSON",
            PlainError::NotMessage => "INVALID_MESSAGE",
            PlainError::UnknownType(_) => "UNKNOWN_TYPE",
            PlainError::Missing(_) | PlainError::Invalid { .. } => "VALIDATION_ERROR",
        }
    }
}

/// Parses one client text frame.
pub fn parse(text: &str) -> Result<ClientMessage, PlainError> {
    let value: Value = serde_json::from_str(text).map_err(|_| PlainError::NotJson)?;
    let Value::Object(mut object) = value else {
        return Err(PlainError::NotMessage);
    };
    let kind = match object.get("type") {
        Some(Value::String(kind)) => kind.clone(),
        _ => return Err(PlainError::NotMessage),
    };
    match kind.as_str() {
        "subscribe" => {
            let table = table(&object)?;
            let filter = match object.remove("filter") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Object(columns)) => {
                    if columns.len() > MAX_FILTER_COLUMNS {
                        return Err(PlainError::Invalid {
                            field: "filter",
                            why: "names more than 16 columns",
                        });
                    }
                    let mut filter = Vec::with_capacity(columns.len());
                    for (column, value) in columns {
                        if !identifier(&column) {
                            return Err(PlainError::Invalid {
                                field: "filter",
                                why: "has a column name that is not an identifier",
                            });
                        }
                        if matches!(value, Value::Array(_) | Value::Object(_)) {
                            return Err(PlainError::Invalid {
                                field: "filter",
                                why: "values must be strings, numbers, booleans or null",
                            });
                        }
                        filter.push((column, value));
                    }
                    filter
                }
                Some(_) => {
                    return Err(PlainError::Invalid {
                        field: "filter",
                        why: "must be an object of column values",
                    });
                }
            };
            Ok(ClientMessage::Subscribe { table, filter })
        }
        "unsubscribe" => Ok(ClientMessage::Unsubscribe {
            table: table(&object)?,
        }),
        "presence_track" => match object.remove("metadata") {
            None | Some(Value::Null) => Ok(ClientMessage::PresenceTrack {
                metadata: Map::new(),
            }),
            Some(Value::Object(metadata)) => Ok(ClientMessage::PresenceTrack { metadata }),
            Some(_) => Err(PlainError::Invalid {
                field: "metadata",
                why: "must be an object",
            }),
        },
        "event" => {
            let event = match object.get("event") {
                Some(Value::String(event)) => event.clone(),
                Some(_) => {
                    return Err(PlainError::Invalid {
                        field: "event",
                        why: "must be a string",
                    });
                }
                None => return Err(PlainError::Missing("event")),
            };
            if event.is_empty() || event.len() > MAX_EVENT_BYTES {
                return Err(PlainError::Invalid {
                    field: "event",
                    why: "must be 1-128 bytes",
                });
            }
            let payload = object.remove("payload").unwrap_or(Value::Null);
            Ok(ClientMessage::Event { event, payload })
        }
        _ => Err(PlainError::UnknownType(kind.chars().take(64).collect())),
    }
}

fn table(object: &Map<String, Value>) -> Result<TableName, PlainError> {
    match object.get("table") {
        Some(Value::String(text)) => TableName::parse(text).ok_or(PlainError::Invalid {
            field: "table",
            why: "must be a table name (letters, digits, _; optionally schema.table)",
        }),
        Some(_) => Err(PlainError::Invalid {
            field: "table",
            why: "must be a string",
        }),
        None => Err(PlainError::Missing("table")),
    }
}

/// A change's operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// A row was inserted.
    Insert,
    /// A row was updated.
    Update,
    /// A row was deleted.
    Delete,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "INSERT",
            Op::Update => "UPDATE",
            Op::Delete => "DELETE",
        }
    }
}

/// A member of an app's presence.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    /// The connection's id.
    pub client_id: String,
    /// The user's id (`sub`), when the token had one.
    pub user_id: Option<String>,
    /// What it tracked.
    pub metadata: Map<String, Value>,
}

/// A server message.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerMessage<'a> {
    /// Sent once, when the socket opened.
    Connected {
        /// The app.
        app_id: &'a str,
        /// The role the token was given.
        role: &'a str,
    },
    /// A `subscribe` took effect.
    Subscribed {
        /// The table, as clients name it.
        table: &'a str,
    },
    /// An `unsubscribe` took effect.
    Unsubscribed {
        /// The table, as clients name it.
        table: &'a str,
    },
    /// Every heartbeat interval.
    Heartbeat {
        /// Now, RFC 3339.
        timestamp: &'a str,
    },
    /// A row change the connection may read.
    Change {
        /// The table, as clients name it.
        table: &'a str,
        /// Its operation.
        op: Op,
        /// The new row (null for DELETE).
        record: Option<&'a Value>,
        /// The old row (null for INSERT, and for UPDATE without the old values).
        old_record: Option<&'a Value>,
        /// The commit time, RFC 3339.
        timestamp: &'a str,
    },
    /// The app's members, after any of them joined, changed or left.
    PresenceState {
        /// Every member.
        clients: &'a [Member],
    },
    /// An `event` was accepted for delivery to the app's function.
    EventAck {
        /// The event's name.
        event: &'a str,
    },
    /// A refused client message (the socket stays open).
    Error {
        /// A stable code (`INVALID_JSON`, `VALIDATION_ERROR`, ...).
        code: &'a str,
        /// A readable explanation.
        message: &'a str,
    },
}

/// Encodes a server message as the text of one frame.
pub fn encode(message: &ServerMessage<'_>) -> String {
    let value = match message {
        ServerMessage::Connected { app_id, role } => {
            json!({"type": "connected", "app_id": app_id, "role": role})
        }
        ServerMessage::Subscribed { table } => json!({"type": "subscribed", "table": table}),
        ServerMessage::Unsubscribed { table } => {
            json!({"type": "unsubscribed", "table": table})
        }
        ServerMessage::Heartbeat { timestamp } => {
            json!({"type": "heartbeat", "timestamp": timestamp})
        }
        ServerMessage::Change {
            table,
            op,
            record,
            old_record,
            timestamp,
        } => json!({
            "type": "change",
            "table": table,
            "op": op.as_str(),
            "record": record,
            "old_record": old_record,
            "timestamp": timestamp,
        }),
        ServerMessage::PresenceState { clients } => json!({
            "type": "presence_state",
            "clients": clients
                .iter()
                .map(|m| json!({"client_id": m.client_id, "user_id": m.user_id, "metadata": m.metadata}))
                .collect::<Vec<_>>(),
        }),
        ServerMessage::EventAck { event } => json!({"type": "event_ack", "event": event}),
        ServerMessage::Error { code, message } => {
            json!({"type": "error", "code": code, "message": message})
        }
    };
    value.to_string()
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "test assertions on known inputs")]
mod tests {
    use super::*;

    #[test]
    fn client_messages_parse_into_their_kinds() {
        assert_eq!(
            parse(r#"{"type":"subscribe","table":"messages"}"#),
            Ok(ClientMessage::Subscribe {
                table: TableName::parse("messages").unwrap(),
                filter: vec![],
            })
        );
        assert_eq!(
            parse(
                r#"{"type":"subscribe","table":"app.todos","filter":{"room_id":7,"done":false}}"#
            ),
            Ok(ClientMessage::Subscribe {
                table: TableName {
                    schema: "app".into(),
                    name: "todos".into()
                },
                filter: vec![("room_id".into(), json!(7)), ("done".into(), json!(false))],
            })
        );
        assert_eq!(
            parse(r#"{"type":"unsubscribe","table":"messages"}"#),
            Ok(ClientMessage::Unsubscribe {
                table: TableName::parse("messages").unwrap()
            })
        );
        assert_eq!(
            parse(r#"{"type":"presence_track","metadata":{"name":"ada"}}"#),
            Ok(ClientMessage::PresenceTrack {
                metadata: json!({"name":"ada"}).as_object().unwrap().clone()
            })
        );
        assert_eq!(
            parse(r#"{"type":"event","event":"ping","payload":{"n":1}}"#),
            Ok(ClientMessage::Event {
                event: "ping".into(),
                payload: json!({"n": 1})
            })
        );
    }

    #[test]
    fn bad_messages_name_what_is_wrong() {
        let code = |text: &str| parse(text).unwrap_err().code();
        assert_eq!(code("not json"), "INVALID_JSON");
        assert_eq!(code("[1,2]"), "INVALID_MESSAGE");
        assert_eq!(code(r#"{"type":7}"#), "INVALID_MESSAGE");
        assert_eq!(code(r#"{"type":"dance"}"#), "UNKNOWN_TYPE");
        assert_eq!(code(r#"{"type":"subscribe"}"#), "VALIDATION_ERROR");
        assert_eq!(
            parse(r#"{"type":"subscribe","table":"a;drop table x"}"#),
            Err(PlainError::Invalid {
                field: "table",
                why: "must be a table name (letters, digits, _; optionally schema.table)"
            })
        );
        assert_eq!(
            code(r#"{"type":"subscribe","table":"t","filter":{"c":[1]}}"#),
            "VALIDATION_ERROR"
        );
        assert_eq!(
            code(r#"{"type":"subscribe","table":"t","filter":{"1c":1}}"#),
            "VALIDATION_ERROR"
        );
        assert_eq!(
            code(r#"{"type":"subscribe","table":"t","filter":"c=1"}"#),
            "VALIDATION_ERROR"
        );
        assert_eq!(
            code(r#"{"type":"presence_track","metadata":[]}"#),
            "VALIDATION_ERROR"
        );
        assert_eq!(code(r#"{"type":"event"}"#), "VALIDATION_ERROR");
        assert_eq!(code(r#"{"type":"event","event":""}"#), "VALIDATION_ERROR");
        let many: Map<String, Value> = (0..17).map(|i| (format!("c{i}"), json!(i))).collect();
        let text = json!({"type": "subscribe", "table": "t", "filter": many}).to_string();
        assert_eq!(code(&text), "VALIDATION_ERROR");
        // An unknown type is echoed at most 64 characters long.
        let long = json!({"type": "x".repeat(1000)}).to_string();
        assert!(matches!(parse(&long), Err(PlainError::UnknownType(t)) if t.len() == 64));
    }

    #[test]
    fn table_names_are_identifiers() {
        assert!(TableName::parse("_t1$").is_some());
        assert!(TableName::parse("Messages").is_some());
        assert!(TableName::parse("").is_none());
        assert!(TableName::parse("1t").is_none());
        assert!(TableName::parse("a.b.c").is_none());
        assert!(TableName::parse("a\"b").is_none());
        assert!(TableName::parse(&"t".repeat(64)).is_none());
        assert_eq!(TableName::parse("public.t").unwrap().display(), "t");
        assert_eq!(TableName::parse("app.t").unwrap().display(), "app.t");
    }

    #[test]
    fn server_messages_have_the_documented_shapes() {
        let row = json!({"id": 1});
        assert_eq!(
            serde_json::from_str::<Value>(&encode(&ServerMessage::Change {
                table: "messages",
                op: Op::Insert,
                record: Some(&row),
                old_record: None,
                timestamp: "2026-12-04T10:00:00Z",
            }))
            .unwrap(),
            json!({"type": "change", "table": "messages", "op": "INSERT", "record": {"id": 1},
                   "old_record": null, "timestamp": "2026-12-04T10:00:00Z"})
        );
        let members = [Member {
            client_id: "c1".into(),
            user_id: None,
            metadata: Map::new(),
        }];
        assert_eq!(
            serde_json::from_str::<Value>(&encode(&ServerMessage::PresenceState {
                clients: &members
            }))
            .unwrap(),
            json!({"type": "presence_state", "clients": [{"client_id": "c1", "user_id": null, "metadata": {}}]})
        );
        assert_eq!(
            encode(&ServerMessage::Error {
                code: "UNKNOWN_TYPE",
                message: "x"
            }),
            r#"{"type":"error","code":"UNKNOWN_TYPE","message":"x"}"#
        );
    }

    #[test]
    fn the_fuzz_seeds_parse_as_named() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/plain");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            assert_eq!(parse(&text).is_err(), name.contains("bad"), "{name}");
            n += 1;
        }
        assert!(n >= 10, "{n} seeds");
    }
}
