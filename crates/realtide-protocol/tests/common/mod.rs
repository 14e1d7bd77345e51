//! Loading of the codec fixtures in `protocol-fixtures/` (see its README) and evaluation of the
//! encoder calls they describe. Shared by `fixtures.rs` and `no_panic.rs`.

#![allow(
    dead_code,
    reason = "each test crate uses a different part of this module"
)]

use std::error::Error;
use std::fmt::Debug;
use std::path::{Path, PathBuf};

use realtide_protocol::encode::{self, FieldTooLong, Status};
use realtide_protocol::message::JoinRequest;
use realtide_protocol::presence::{self, Group};
use realtide_protocol::system::{self, SystemStatus};
use realtide_protocol::{DecodeError, UserEncoding, Vsn};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

pub type TestResult = Result<(), Box<dyn Error>>;

/// `protocol-fixtures/` at the workspace root.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../protocol-fixtures")
}

/// One fixture file: a description and its entries.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixtureFile<T> {
    pub about: String,
    pub frames: Vec<T>,
}

/// An entry together with the file it came from.
#[derive(Debug)]
pub struct Loaded<T> {
    pub file: String,
    pub entry: T,
}

/// Loads every `*.json` file of `protocol-fixtures/<dir>`, in file-name order.
pub fn load<T: DeserializeOwned>(dir: &str) -> Result<Vec<Loaded<T>>, Box<dyn Error>> {
    let path = fixtures_dir().join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.retain(|p| p.extension().is_some_and(|ext| ext == "json"));
    files.sort();
    if files.is_empty() {
        return Err(format!("no fixture files in {}", path.display()).into());
    }
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)?;
        let parsed: FixtureFile<T> =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))?;
        if parsed.about.is_empty() || parsed.frames.is_empty() {
            return Err(format!("{}: empty fixture file", file.display()).into());
        }
        let name = format!(
            "{dir}/{}",
            file.file_name().and_then(|n| n.to_str()).unwrap_or("?")
        );
        out.extend(parsed.frames.into_iter().map(|entry| Loaded {
            file: name.clone(),
            entry,
        }));
    }
    Ok(out)
}

/// Deserializes a present field as `Some`, even when it is JSON `null`.
fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(deserializer).map(Some)
}

// ---------------------------------------------------------------------------------------------
// client-frames/

/// A client frame and what the codec must make of it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientFrame {
    pub name: String,
    pub vsn: String,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub hex: Option<String>,
    /// Human-readable field split of `hex`; not checked.
    #[serde(default)]
    pub layout: Option<String>,
    pub expect: Expect,
    /// What the logging server printed for a recorded kind-3 frame.
    #[serde(default)]
    pub recorded_decoded: Option<RecordedDecoded>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    pub join_ref: Option<String>,
    #[serde(rename = "ref")]
    pub reference: Option<String>,
    pub topic: String,
    pub event: String,
    /// The payload of a text frame, compared as JSON.
    #[serde(default, deserialize_with = "present")]
    pub payload: Option<Value>,
    /// The payload of a text frame, byte for byte.
    #[serde(default)]
    pub payload_raw: Option<String>,
    /// The data of a kind-0 push.
    #[serde(default)]
    pub binary_payload_hex: Option<String>,
    /// The body of a kind-3 push.
    #[serde(default)]
    pub user_broadcast: Option<ExpectUser>,
    pub message: ExpectMessage,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectUser {
    pub event: String,
    pub metadata: String,
    pub encoding: String,
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default)]
    pub body_hex: Option<String>,
}

impl ExpectUser {
    pub fn body_bytes(&self) -> Result<Vec<u8>, String> {
        bytes_field(self.body.as_deref(), self.body_hex.as_deref())
    }
}

/// The expected `ClientMessage`.
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ExpectMessage {
    Heartbeat,
    Join { join: ExpectJoin },
    Leave,
    BroadcastJson,
    BroadcastUser,
    PresenceTrack { meta: Value },
    PresenceUntrack,
    PresenceNoEvent,
    PresenceUnknown { event: String },
    AccessToken { token: Option<String> },
    Other,
}

/// The expected `JoinRequest`, field by field.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectJoin {
    pub has_config: bool,
    pub broadcast_self: bool,
    pub broadcast_ack: bool,
    pub replication_ready: bool,
    pub replay: Option<Value>,
    pub presence_enabled: bool,
    pub presence_key: Option<String>,
    pub postgres_changes: Vec<Map<String, Value>>,
    pub private: bool,
    pub token: Option<String>,
}

impl ExpectJoin {
    pub fn to_request(&self) -> JoinRequest {
        JoinRequest {
            has_config: self.has_config,
            broadcast_self: self.broadcast_self,
            broadcast_ack: self.broadcast_ack,
            replication_ready: self.replication_ready,
            replay: self.replay.clone(),
            presence_enabled: self.presence_enabled,
            presence_key: self.presence_key.clone(),
            postgres_changes: self.postgres_changes.clone(),
            private: self.private,
            token: self.token.clone(),
        }
    }
}

/// The logging server's `decoded=` line for a kind-3 frame.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordedDecoded {
    pub kind: String,
    pub join_ref: String,
    #[serde(rename = "ref")]
    pub reference: String,
    pub topic: String,
    #[serde(rename = "userEvent")]
    pub user_event: String,
    pub metadata: String,
    pub payload_encoding: String,
    pub payload: Value,
}

impl ClientFrame {
    /// The raw frame bytes.
    pub fn bytes(&self) -> Result<Vec<u8>, String> {
        match (&self.text, &self.hex) {
            (Some(text), None) => Ok(text.as_bytes().to_vec()),
            (None, Some(hex)) => from_hex(hex),
            _ => Err(format!("{}: needs exactly one of text / hex", self.name)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// malformed/

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MalformedFrame {
    pub name: String,
    pub vsn: String,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub hex: Option<String>,
    #[serde(default)]
    pub layout: Option<String>,
    /// `Json`, `ShortArray`, `BinaryOnV1`, `Truncated`, `NotUtf8` or `UnknownKind(<n>)`.
    pub error: String,
}

impl MalformedFrame {
    pub fn bytes(&self) -> Result<Vec<u8>, String> {
        match (&self.text, &self.hex) {
            (Some(text), None) => Ok(text.as_bytes().to_vec()),
            (None, Some(hex)) => from_hex(hex),
            _ => Err(format!("{}: needs exactly one of text / hex", self.name)),
        }
    }
}

/// The fixture spelling of a decode error.
pub fn error_name(error: &DecodeError) -> String {
    match error {
        DecodeError::Json(_) => "Json".to_owned(),
        DecodeError::ShortArray => "ShortArray".to_owned(),
        DecodeError::BinaryOnV1 => "BinaryOnV1".to_owned(),
        DecodeError::Truncated => "Truncated".to_owned(),
        DecodeError::NotUtf8 => "NotUtf8".to_owned(),
        DecodeError::UnknownKind(kind) => format!("UnknownKind({kind})"),
    }
}

// ---------------------------------------------------------------------------------------------
// server-frames/

/// An encoder call and its exact output.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFrame {
    pub name: String,
    pub encode: Encode,
    /// Exact text output.
    #[serde(default)]
    pub text: Option<String>,
    /// Exact binary output.
    #[serde(default)]
    pub hex: Option<String>,
    #[serde(default)]
    pub layout: Option<String>,
    /// The expected refusal of a kind-4 field over 255 bytes.
    #[serde(default)]
    pub error: Option<ExpectTooLong>,
    /// The frame as recorded, when the real server's form differs (see `note`).
    #[serde(default)]
    pub recorded: Option<String>,
    #[serde(default)]
    pub note: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectTooLong {
    pub field: String,
    pub len: usize,
}

/// A call of one of the crate's encoders.
#[derive(Debug, Deserialize)]
#[serde(tag = "fn", rename_all = "snake_case")]
pub enum Encode {
    TextFrame {
        vsn: String,
        join_ref: Option<String>,
        #[serde(rename = "ref")]
        reference: Option<String>,
        topic: String,
        event: String,
        payload: PayloadSpec,
    },
    Reply {
        vsn: String,
        join_ref: Option<String>,
        #[serde(rename = "ref")]
        reference: Option<String>,
        topic: String,
        status: String,
        response: PayloadSpec,
    },
    ChannelEnd {
        vsn: String,
        join_ref: Option<String>,
        topic: String,
        event: String,
    },
    UserBroadcastBinary {
        topic: String,
        event: String,
        metadata: String,
        encoding: String,
        #[serde(default)]
        body: Option<String>,
        #[serde(default)]
        body_hex: Option<String>,
    },
    UserBroadcastJson {
        event: String,
        body: PayloadSpec,
        meta: Option<PayloadSpec>,
    },
    Reason {
        text: String,
    },
    SystemPayload {
        extension: String,
        status: String,
        message: String,
        channel: Option<String>,
    },
    RenderState {
        group: Vec<GroupSpec>,
    },
    RenderDiff {
        joins: Vec<GroupSpec>,
        leaves: Vec<GroupSpec>,
    },
    RenderMeta(MetaSpec),
}

/// JSON text handed to an encoder: a value (written compactly, keys in order), raw text, or the
/// output of another encoder.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PayloadSpec {
    Json(Value),
    Raw(String),
    Encode(Box<Encode>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupSpec {
    pub key: String,
    pub metas: Vec<MetaSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetaSpec {
    pub meta: Map<String, Value>,
    pub phx_ref: String,
    pub phx_ref_prev: Option<String>,
}

/// What an encoder produced.
#[derive(Debug)]
pub enum Output {
    Text(String),
    Binary(Vec<u8>),
    TooLong(FieldTooLong),
}

pub fn parse_vsn(vsn: &str) -> Result<Vsn, String> {
    match vsn {
        "1.0.0" => Ok(Vsn::V1),
        "2.0.0" => Ok(Vsn::V2),
        other => Err(format!("unknown vsn {other:?}")),
    }
}

fn parse_status(status: &str) -> Result<Status, String> {
    match status {
        "ok" => Ok(Status::Ok),
        "error" => Ok(Status::Error),
        other => Err(format!("unknown status {other:?}")),
    }
}

pub fn parse_encoding(encoding: &str) -> Result<UserEncoding, String> {
    match encoding {
        "json" => Ok(UserEncoding::Json),
        "binary" => Ok(UserEncoding::Binary),
        other => Err(format!("unknown encoding {other:?}")),
    }
}

fn bytes_field(text: Option<&str>, hex: Option<&str>) -> Result<Vec<u8>, String> {
    match (text, hex) {
        (Some(text), None) => Ok(text.as_bytes().to_vec()),
        (None, Some(hex)) => from_hex(hex),
        _ => Err("needs exactly one of body / body_hex".to_owned()),
    }
}

fn render_group(spec: &[GroupSpec]) -> Vec<(&str, Vec<String>)> {
    spec.iter()
        .map(|g| {
            let metas = g
                .metas
                .iter()
                .map(|m| presence::render_meta(&m.meta, &m.phx_ref, m.phx_ref_prev.as_deref()))
                .collect();
            (g.key.as_str(), metas)
        })
        .collect()
}

fn borrow_group<'a>(rendered: &'a [(&'a str, Vec<String>)]) -> Group<'a> {
    rendered
        .iter()
        .map(|(key, metas)| (*key, metas.iter().map(String::as_str).collect()))
        .collect()
}

/// The JSON text a payload spec stands for.
pub fn payload_text(spec: &PayloadSpec) -> Result<String, String> {
    match spec {
        PayloadSpec::Json(value) => serde_json::to_string(value).map_err(|e| e.to_string()),
        PayloadSpec::Raw(text) => Ok(text.clone()),
        PayloadSpec::Encode(call) => match evaluate(call)? {
            Output::Text(text) => Ok(text),
            other => Err(format!("nested encoder gave {other:?}, not text")),
        },
    }
}

/// Runs an encoder call.
pub fn evaluate(call: &Encode) -> Result<Output, String> {
    Ok(match call {
        Encode::TextFrame {
            vsn,
            join_ref,
            reference,
            topic,
            event,
            payload,
        } => Output::Text(encode::text_frame(
            parse_vsn(vsn)?,
            join_ref.as_deref(),
            reference.as_deref(),
            topic,
            event,
            &payload_text(payload)?,
        )),
        Encode::Reply {
            vsn,
            join_ref,
            reference,
            topic,
            status,
            response,
        } => Output::Text(encode::reply(
            parse_vsn(vsn)?,
            join_ref.as_deref(),
            reference.as_deref(),
            topic,
            parse_status(status)?,
            &payload_text(response)?,
        )),
        Encode::ChannelEnd {
            vsn,
            join_ref,
            topic,
            event,
        } => Output::Text(encode::channel_end(
            parse_vsn(vsn)?,
            join_ref.as_deref(),
            topic,
            event,
        )),
        Encode::UserBroadcastBinary {
            topic,
            event,
            metadata,
            encoding,
            body,
            body_hex,
        } => {
            let body = bytes_field(body.as_deref(), body_hex.as_deref())?;
            match encode::user_broadcast_binary(
                topic,
                event,
                metadata.as_bytes(),
                parse_encoding(encoding)?,
                &body,
            ) {
                Ok(bytes) => Output::Binary(bytes),
                Err(too_long) => Output::TooLong(too_long),
            }
        }
        Encode::UserBroadcastJson { event, body, meta } => {
            let meta = meta.as_ref().map(payload_text).transpose()?;
            Output::Text(encode::user_broadcast_json(
                event,
                &payload_text(body)?,
                meta.as_deref(),
            ))
        }
        Encode::Reason { text } => Output::Text(encode::reason(text)),
        Encode::SystemPayload {
            extension,
            status,
            message,
            channel,
        } => {
            let status = match status.as_str() {
                "ok" => SystemStatus::Ok,
                "error" => SystemStatus::Error,
                other => return Err(format!("unknown system status {other:?}")),
            };
            Output::Text(system::system_payload(
                extension,
                status,
                message,
                channel.as_deref(),
            ))
        }
        Encode::RenderState { group } => {
            let rendered = render_group(group);
            Output::Text(presence::render_state(&borrow_group(&rendered)))
        }
        Encode::RenderDiff { joins, leaves } => {
            let joins = render_group(joins);
            let leaves = render_group(leaves);
            Output::Text(presence::render_diff(
                &borrow_group(&joins),
                &borrow_group(&leaves),
            ))
        }
        Encode::RenderMeta(meta) => Output::Text(presence::render_meta(
            &meta.meta,
            &meta.phx_ref,
            meta.phx_ref_prev.as_deref(),
        )),
    })
}

// ---------------------------------------------------------------------------------------------
// Helpers

pub fn from_hex(hex: &str) -> Result<Vec<u8>, String> {
    let pairs = hex.as_bytes().chunks_exact(2);
    if !pairs.remainder().is_empty() {
        return Err(format!("odd-length hex {hex:?}"));
    }
    pairs
        .map(|pair| {
            std::str::from_utf8(pair)
                .ok()
                .and_then(|digits| u8::from_str_radix(digits, 16).ok())
                .ok_or_else(|| format!("bad hex digits {pair:?}"))
        })
        .collect()
}

pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Collects every mismatch so one run reports them all.
#[derive(Debug, Default)]
pub struct Failures {
    list: Vec<String>,
    checked: usize,
}

impl Failures {
    pub fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        self.checked += 1;
        if !ok {
            self.list.push(what());
        }
    }

    pub fn eq<T: PartialEq + Debug + ?Sized>(
        &mut self,
        ctx: &str,
        field: &str,
        actual: &T,
        expected: &T,
    ) {
        self.check(actual == expected, || {
            format!("{ctx}: {field}\n    actual:   {actual:?}\n    expected: {expected:?}")
        });
    }

    pub fn fail(&mut self, message: String) {
        self.checked += 1;
        self.list.push(message);
    }

    /// Records the error of a fallible step.
    pub fn record<T>(&mut self, ctx: &str, result: Result<T, String>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(e) => {
                self.fail(format!("{ctx}: {e}"));
                None
            }
        }
    }

    pub fn checked(&self) -> usize {
        self.checked
    }

    pub fn finish(self) -> TestResult {
        if self.list.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{} of {} checks failed:\n{}",
                self.list.len(),
                self.checked,
                self.list.join("\n")
            )
            .into())
        }
    }
}
