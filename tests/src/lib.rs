//! Test harness for the realtide integration tests.
//!
//! - [`Server`] runs the real `realtide` binary on a free port and kills it on drop.
//! - [`Client`] is a small WebSocket client (RFC 6455 framing from [`realtide_protocol::wsframe`]
//!   over a `TcpStream`) that speaks the Supabase Realtime wire protocol with `realtide-protocol`:
//!   text frames are encoded with [`realtide_protocol::encode::text_frame`] (V2) or as V1
//!   objects, decoded with [`realtide_protocol::frame::decode_text`]; kind-3 binary pushes are
//!   built by [`kind3_frame`].
//! - [`token`] / [`sign`] mint HS256 JWTs with the test secret through `realtide-auth`.
//! - [`nats`] runs a throwaway `nats-server` with JetStream; [`cluster`] runs N realtide
//!   nodes sharing one PostgreSQL and that NATS (cluster mode).
//!
//! Everything returns `anyhow::Result`; timeouts are generous and only bound how long a test
//! waits, they are never asserted on.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use bytes::BytesMut;
use realtide_protocol::Inbound;
pub use realtide_protocol::Vsn;
use realtide_protocol::frame::{InboundPayload, decode_text};
pub use realtide_protocol::wsframe::Opcode;
use realtide_protocol::wsframe::{Assembler, Message, Rules, push_frame, take_frame};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

pub mod cluster;
pub mod nats;

/// The HS256 secret every test server is started with.
pub const SECRET: &str = "realtide-integration-test-secret-0123456789";

/// Default wait for a frame that is expected to arrive.
pub const WAIT: Duration = Duration::from_secs(5);

/// Default window for "nothing arrives".
pub const QUIET: Duration = Duration::from_millis(400);

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Signs `claims` with the test secret (HS256).
pub fn sign(claims: &Value) -> String {
    realtide_auth::sign_hs256(claims, SECRET)
}

/// Signs `claims` with another secret (for signature failures).
pub fn sign_with(claims: &Value, secret: &str) -> String {
    realtide_auth::sign_hs256(claims, secret)
}

/// A valid-looking token: `{"role": role, "exp": now + exp_offset_secs, "iat": now, "sub": ...}`.
/// A negative offset gives an expired token.
pub fn token(role: &str, exp_offset_secs: i64) -> String {
    let now = unix_now();
    sign(&json!({
        "role": role,
        "exp": now + exp_offset_secs,
        "iat": now,
        "sub": "00000000-0000-0000-0000-000000000001",
    }))
}

/// An `anon` token valid for an hour.
pub fn anon() -> String {
    token("anon", 3600)
}

/// The `vsn` query value for a serializer.
pub fn vsn_str(vsn: Vsn) -> &'static str {
    match vsn {
        Vsn::V1 => "1.0.0",
        Vsn::V2 => "2.0.0",
    }
}

/// Path of the `realtide` binary: `REALTIDE_BIN`, else `<workspace>/target/debug/realtide`
/// (or under `CARGO_TARGET_DIR`), built once per test process with
/// `cargo build -p realtide-server --bin realtide` unless `REALTIDE_BIN` is set.
pub fn binary() -> Result<PathBuf> {
    static BIN: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| locate_binary().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!(e))
}

fn locate_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("REALTIDE_BIN") {
        let path = PathBuf::from(path);
        ensure!(
            path.exists(),
            "REALTIDE_BIN={} does not exist",
            path.display()
        );
        return Ok(path);
    }
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .context("tests crate has no parent directory")?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|dir| {
            if dir.is_absolute() {
                dir
            } else {
                workspace.join(dir)
            }
        })
        .unwrap_or_else(|| workspace.join("target"));
    let path = target
        .join("debug")
        .join(format!("realtide{}", std::env::consts::EXE_SUFFIX));
    // Always (re)build so that the tests never run a stale server; a no-op when fresh.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = std::process::Command::new(cargo)
        .args([
            "build",
            "--quiet",
            "-p",
            "realtide-server",
            "--bin",
            "realtide",
        ])
        .current_dir(&workspace)
        .status()
        .context("running cargo build for the realtide binary")?;
    ensure!(
        status.success(),
        "cargo build -p realtide-server --bin realtide failed: {status}"
    );
    ensure!(path.exists(), "{} missing after build", path.display());
    Ok(path)
}

/// A running `realtide` process; killed when dropped. Connects through its [`Endpoint`].
#[derive(Debug)]
pub struct Server {
    child: Child,
    endpoint: Endpoint,
    stderr: Arc<Mutex<String>>,
}

/// Where a realtide server listens, and the clients that connect to it (for a server process
/// and for one running in the test's own process alike).
#[derive(Debug, Clone, Copy)]
pub struct Endpoint {
    /// The address it listens on.
    pub addr: SocketAddr,
}

impl std::ops::Deref for Server {
    type Target = Endpoint;

    fn deref(&self) -> &Endpoint {
        &self.endpoint
    }
}

/// Settings every test server gets unless overridden.
const DEFAULT_ENV: &[(&str, &str)] = &[
    ("HOST", "127.0.0.1"),
    ("PORT", "0"),
    ("JWT_SECRET", SECRET),
    ("CHANNEL_ERROR_BACKOFF_MS", "50"),
    ("CONNECT_ERROR_BACKOFF_MS", "50"),
    ("RUST_LOG", "info"),
];

/// Variables that would change the server's behaviour if inherited from the caller's shell.
const SCRUBBED_ENV: &[&str] = &[
    "API_JWT_SECRET",
    "JWT_JWKS",
    "JWT_CLAIM_VALIDATORS",
    "DB_URL",
    "TENANT_MAX_PAYLOAD_SIZE_IN_KB",
    "TENANT_MAX_CHANNELS_PER_CLIENT",
    "WEBSOCKET_MAX_FRAME_SIZE",
    "WEBSOCKET_IDLE_TIMEOUT_MS",
    "OUTBOUND_QUEUE_MESSAGES",
    "OUTBOUND_QUEUE_BYTES",
    "LOG_FORMAT",
    "REALTIDE_CONFIG",
    "DB_HOST",
    "DB_PORT",
    "DB_USER",
    "DB_PASSWORD",
    "DB_NAME",
    "TENANT_MAX_EVENTS_PER_SECOND",
    "TENANT_MAX_JOINS_PER_SECOND",
    "TENANT_MAX_PRESENCE_EVENTS_PER_SECOND",
    "TENANT_MAX_CONCURRENT_USERS",
    "MAX_CONNECTIONS",
    "CLIENT_PRESENCE_MAX_CALLS",
    "PRIVATE_ONLY",
    "CLUSTER_NATS_URL",
    "CLUSTER_NODE_NAME",
    "CLUSTER_NATS_CREDS",
    "CLUSTER_NATS_TOKEN",
    "CLUSTER_NATS_TLS_CA",
    "CLUSTER_HEARTBEAT_MS",
    "CLUSTER_NODE_TIMEOUT_MS",
    "TENANTS_FILE",
    "TENANT_IDLE_STOP_SECS",
];

/// The default `CHANGES_DIR` of test servers using the database at `url`.
pub fn changes_dir_for(url: &str) -> std::path::PathBuf {
    let hash = url.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    std::env::temp_dir()
        .join("realtide-test-changes")
        .join(format!("{hash:016x}"))
}

/// The realtide command with the test defaults overridden by `env`.
fn server_command(env: &[(&str, &str)]) -> Result<Command> {
    let mut command = Command::new(binary()?);
    for name in SCRUBBED_ENV {
        command.env_remove(name);
    }
    for (name, value) in DEFAULT_ENV.iter().chain(env) {
        command.env(name, value);
    }
    // The change journal of a server with a database lives in a directory of that database
    // (its URL names a test cluster's unique port), so that a restarted server finds its
    // journal and parallel tests never share one.
    if !env.iter().any(|(name, _)| *name == "CHANGES_DIR")
        && let Some((_, url)) = env.iter().find(|(name, _)| *name == "DB_URL")
    {
        command.env("CHANGES_DIR", changes_dir_for(url));
    }
    Ok(command)
}

impl Server {
    /// Starts the server with the default settings overridden by `env`, and waits for its
    /// `realtide listening on <addr>` line.
    pub async fn start(env: &[(&str, &str)]) -> Result<Server> {
        let mut command = server_command(env)?;
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().context("spawning realtide")?;
        let stderr = Arc::new(Mutex::new(String::new()));
        if let Some(err) = child.stderr.take() {
            let sink = stderr.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(err).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Ok(mut text) = sink.lock()
                        && text.len() < 1 << 20
                    {
                        text.push_str(&line);
                        text.push('\n');
                    }
                }
            });
        }
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let found = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(addr) = line.trim().strip_prefix("realtide listening on ") {
                    return Ok::<_, anyhow::Error>(Some(addr.parse::<SocketAddr>()?));
                }
            }
            Ok(None)
        })
        .await;
        let addr = match found {
            Ok(Ok(Some(addr))) => addr,
            other => {
                let _ = child.start_kill();
                let status = child.wait().await.ok();
                tokio::time::sleep(Duration::from_millis(50)).await;
                let log = stderr.lock().map(|s| s.clone()).unwrap_or_default();
                bail!(
                    "realtide did not report its address ({other:?}, exit {status:?}); stderr:\n{log}"
                );
            }
        };
        // Keep draining stdout so the server never blocks on it.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Server {
            child,
            endpoint: Endpoint { addr },
            stderr,
        })
    }

    /// Starts the server with its standard output and error both going to `output` (a pipe
    /// the test controls), on a port picked here; ready once `/healthcheck` answers.
    pub async fn start_with_output(
        env: &[(&str, &str)],
        output: std::io::PipeWriter,
    ) -> Result<Server> {
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
            probe.local_addr()?.port()
        };
        let port_text = port.to_string();
        let mut command = server_command(env)?;
        command
            .env("PORT", &port_text)
            .stdin(Stdio::null())
            .stdout(output.try_clone()?)
            .stderr(output)
            .kill_on_drop(true);
        let mut child = command.spawn().context("spawning realtide")?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut stream) = TcpStream::connect(addr).await {
                let request = "GET /healthcheck HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";
                stream.write_all(request.as_bytes()).await?;
                let mut answer = String::new();
                let _ = stream.read_to_string(&mut answer).await;
                if answer.starts_with("HTTP/1.1 200") {
                    break;
                }
            }
            if let Some(status) = child.try_wait()? {
                bail!("realtide exited before serving: {status}");
            }
            ensure!(
                tokio::time::Instant::now() < deadline,
                "realtide did not serve within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Server {
            child,
            endpoint: Endpoint { addr },
            stderr: Arc::new(Mutex::new(String::new())),
        })
    }

    /// Sends SIGTERM and waits up to `limit` for the exit.
    pub async fn terminate(&mut self, limit: Duration) -> Result<Option<std::process::ExitStatus>> {
        let pid = self.child.id().context("already exited")?;
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()?;
        ensure!(sent.success(), "kill -TERM {pid} failed");
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => Ok(Some(status?)),
            Err(_) => Ok(None),
        }
    }

    /// Starts the server with the default settings.
    pub async fn default_server() -> Result<Server> {
        Server::start(&[]).await
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Whether the process has exited (and how).
    pub fn try_exit_status(&mut self) -> Result<Option<std::process::ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// What the server wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Endpoint {
    /// Connects to `/socket/websocket?apikey=<anon>&vsn=<vsn>`.
    pub async fn connect(&self, vsn: Vsn) -> Result<Client> {
        self.connect_token(vsn, &anon()).await
    }

    /// Connects with a given socket token.
    pub async fn connect_token(&self, vsn: Vsn, token: &str) -> Result<Client> {
        let query = format!("apikey={token}&vsn={}", vsn_str(vsn));
        self.connect_url(vsn, "/socket/websocket", &query, &[])
            .await
    }

    /// Connects to `path?query` with extra request headers; fails unless the upgrade succeeds.
    /// `vsn` is the serializer the client expects (it must match what the query selects).
    pub async fn connect_url(
        &self,
        vsn: Vsn,
        path: &str,
        query: &str,
        headers: &[(&str, &str)],
    ) -> Result<Client> {
        match self.try_connect(vsn, path, query, headers).await? {
            Connect::Open(client) => Ok(client),
            Connect::Refused(response) => bail!("connect refused: {response:?}"),
        }
    }

    /// The `Host` line, unless `headers` bring their own (a tenant chosen by host name).
    fn default_host(&self, headers: &[(&str, &str)]) -> String {
        if headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("host"))
        {
            String::new()
        } else {
            format!("Host: {}\r\n", self.addr)
        }
    }

    /// Attempts a WebSocket upgrade; returns the client or the HTTP refusal.
    pub async fn try_connect(
        &self,
        vsn: Vsn,
        path: &str,
        query: &str,
        headers: &[(&str, &str)],
    ) -> Result<Connect> {
        self.upgrade(vsn, path, query, headers, true).await
    }

    async fn upgrade(
        &self,
        vsn: Vsn,
        path: &str,
        query: &str,
        headers: &[(&str, &str)],
        start_reading: bool,
    ) -> Result<Connect> {
        let target = if query.is_empty() {
            path.to_owned()
        } else {
            format!("{path}?{query}")
        };
        let mut request = format!(
            "GET {target} HTTP/1.1\r\n{}Upgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
            self.default_host(headers)
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        let mut stream = TcpStream::connect(self.addr).await?;
        stream.set_nodelay(true)?;
        stream.write_all(request.as_bytes()).await?;
        let head = tokio::time::timeout(Duration::from_secs(10), read_head(&mut stream))
            .await
            .context("timed out waiting for the upgrade response")??;
        if head.status == 101 {
            ensure!(
                head.header("sec-websocket-accept") == Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
                "bad Sec-WebSocket-Accept in {head:?}"
            );
            return Ok(Connect::Open(Client::from_stream(
                vsn,
                stream,
                start_reading,
            )));
        }
        let body = read_body(&mut stream, &head).await?;
        Ok(Connect::Refused(HttpResponse {
            status: head.status,
            headers: head.headers,
            body,
        }))
    }

    /// Connects and returns a client whose frames are not read until
    /// [`Client::start_reading`] (a consumer that never reads).
    pub async fn connect_paused(&self, vsn: Vsn) -> Result<Client> {
        match self
            .upgrade(
                vsn,
                "/socket/websocket",
                &format!("apikey={}&vsn={}", anon(), vsn_str(vsn)),
                &[],
                false,
            )
            .await?
        {
            Connect::Open(client) => Ok(client),
            Connect::Refused(response) => bail!("connect refused: {response:?}"),
        }
    }

    /// A plain HTTP request (`Connection: close`); returns status, headers and body.
    pub async fn http(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
    ) -> Result<HttpResponse> {
        self.http_body(method, target, headers, None).await
    }

    /// An HTTP request with a body (sent with its `content-length`).
    pub async fn http_body(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<HttpResponse> {
        let mut request = format!(
            "{method} {target} HTTP/1.1\r\n{}Connection: close\r\n",
            self.default_host(headers)
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        if let Some(body) = body {
            request.push_str(&format!("content-length: {}\r\n", body.len()));
        }
        request.push_str("\r\n");
        let mut bytes = request.into_bytes();
        bytes.extend_from_slice(body.unwrap_or_default());
        let mut stream = TcpStream::connect(self.addr).await?;
        stream.write_all(&bytes).await?;
        let head = tokio::time::timeout(Duration::from_secs(10), read_head(&mut stream))
            .await
            .context("timed out waiting for the response")??;
        let body = read_body(&mut stream, &head).await?;
        Ok(HttpResponse {
            status: head.status,
            headers: head.headers,
            body,
        })
    }
}

/// Outcome of a WebSocket connect attempt.
#[derive(Debug)]
pub enum Connect {
    /// Upgraded.
    Open(Client),
    /// Refused with an HTTP response.
    Refused(HttpResponse),
}

impl Connect {
    /// The refusal, or an error when the socket was opened.
    pub fn refused(self) -> Result<HttpResponse> {
        match self {
            Connect::Refused(response) => Ok(response),
            Connect::Open(_) => bail!("expected the connect to be refused, but it was upgraded"),
        }
    }

    /// The client, or an error when refused.
    pub fn open(self) -> Result<Client> {
        match self {
            Connect::Open(client) => Ok(client),
            Connect::Refused(response) => bail!("connect refused: {response:?}"),
        }
    }
}

/// An HTTP response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// Body as text.
    pub body: String,
}

impl HttpResponse {
    /// First header with that (lower-case) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug)]
struct Head {
    status: u16,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads a response head byte by byte, so nothing after it is consumed.
async fn read_head(stream: &mut TcpStream) -> Result<Head> {
    let mut raw = Vec::new();
    while !raw.ends_with(b"\r\n\r\n") {
        let byte = stream
            .read_u8()
            .await
            .context("connection closed in the response head")?;
        raw.push(byte);
        ensure!(raw.len() < 64 * 1024, "response head too long");
    }
    let text = String::from_utf8(raw)?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .context("no status code")?
        .parse::<u16>()?;
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok(Head { status, headers })
}

async fn read_body(stream: &mut TcpStream, head: &Head) -> Result<String> {
    let body = if let Some(len) = head.header("content-length") {
        let len: usize = len.parse()?;
        let mut body = vec![0; len];
        tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut body))
            .await
            .context("timed out reading the body")??;
        body
    } else if head
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        let mut reader = BufReader::new(stream);
        let mut body = Vec::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).await?;
            let size = usize::from_str_radix(line.trim(), 16)?;
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).await?;
            chunk.truncate(size);
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk);
        }
        body
    } else {
        let mut body = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut body)).await;
        body
    };
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// A decoded server text frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Msg {
    /// `join_ref` (always `None` for V1, whose server frames have none).
    pub join_ref: Option<String>,
    /// `ref`.
    pub reference: Option<String>,
    /// Topic.
    pub topic: String,
    /// Event.
    pub event: String,
    /// Payload.
    pub payload: Value,
    /// The frame text exactly as received.
    pub raw: String,
}

impl Msg {
    /// `payload.status` of a reply.
    pub fn status(&self) -> Option<&str> {
        self.payload.get("status").and_then(Value::as_str)
    }

    /// `payload.response` of a reply.
    pub fn response(&self) -> &Value {
        self.payload.get("response").unwrap_or(&Value::Null)
    }

    /// The frame parsed as JSON (array for V2, object for V1).
    pub fn json(&self) -> Result<Value> {
        Ok(serde_json::from_str(&self.raw)?)
    }
}

/// Something the client received.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// A text frame decoded with `realtide-protocol`.
    Text(Msg),
    /// A text frame that `realtide-protocol` could not decode for this serializer.
    BadText(String),
    /// A binary frame.
    Binary(Vec<u8>),
    /// A close frame (code, reason).
    Close(Option<u16>, String),
    /// A ping.
    Ping(Vec<u8>),
    /// A pong.
    Pong(Vec<u8>),
    /// The TCP stream ended (or failed) without a close frame.
    Eof(String),
}

impl Incoming {
    /// The text message, if any.
    pub fn text(&self) -> Option<&Msg> {
        match self {
            Incoming::Text(msg) => Some(msg),
            _ => None,
        }
    }

    /// True for close frames and the end of the stream.
    pub fn is_end(&self) -> bool {
        matches!(self, Incoming::Close(..) | Incoming::Eof(_))
    }
}

/// Decodes a server text frame with `realtide-protocol`'s decoder (server frames have the same
/// shape as client frames).
pub fn decode_server_text(vsn: Vsn, text: &str) -> Option<Msg> {
    let Inbound {
        join_ref,
        reference,
        topic,
        event,
        payload,
    } = decode_text(vsn, text).ok()?;
    let payload = match payload {
        InboundPayload::Json(raw) => serde_json::from_str(raw.get()).ok()?,
        _ => return None,
    };
    Some(Msg {
        join_ref: join_ref.map(|r| r.as_str().to_owned()),
        reference: reference.map(|r| r.as_str().to_owned()),
        topic: topic.as_str().to_owned(),
        event,
        payload,
        raw: text.to_owned(),
    })
}

/// Builds a V2 kind-3 user broadcast push (client → server).
pub fn kind3_frame(
    join_ref: &str,
    reference: &str,
    topic: &str,
    user_event: &str,
    metadata: &[u8],
    encoding: u8,
    body: &[u8],
) -> Result<Vec<u8>> {
    let len = |field: &str, value: &[u8]| {
        u8::try_from(value.len()).map_err(|_| anyhow!("{field} longer than 255 bytes"))
    };
    let mut out = vec![
        3,
        len("join_ref", join_ref.as_bytes())?,
        len("ref", reference.as_bytes())?,
        len("topic", topic.as_bytes())?,
        len("event", user_event.as_bytes())?,
        len("metadata", metadata)?,
        encoding,
    ];
    for part in [
        join_ref.as_bytes(),
        reference.as_bytes(),
        topic.as_bytes(),
        user_event.as_bytes(),
        metadata,
        body,
    ] {
        out.extend_from_slice(part);
    }
    Ok(out)
}

/// The kind-4 frame the reference sends for a user broadcast without metadata.
pub fn kind4_frame(topic: &str, user_event: &str, encoding: u8, body: &[u8]) -> Result<Vec<u8>> {
    Ok(realtide_protocol::encode::user_broadcast_binary(
        topic,
        user_event,
        b"",
        if encoding == 0 {
            realtide_protocol::UserEncoding::Binary
        } else {
            realtide_protocol::UserEncoding::Json
        },
        body,
    )?)
}

/// Largest server frame, and reassembled message, the client accepts.
const MAX_MESSAGE: usize = 256 * 1024 * 1024;

/// A WebSocket client speaking the Realtime protocol.
#[derive(Debug)]
pub struct Client {
    /// The serializer this client speaks.
    pub vsn: Vsn,
    writer: OwnedWriteHalf,
    reader: Option<OwnedReadHalf>,
    rx: Option<mpsc::UnboundedReceiver<Incoming>>,
    buffered: VecDeque<Incoming>,
    next_ref: u64,
    mask_seed: u32,
}

impl Client {
    fn from_stream(vsn: Vsn, stream: TcpStream, start: bool) -> Client {
        let (reader, writer) = stream.into_split();
        let mut client = Client {
            vsn,
            writer,
            reader: Some(reader),
            rx: None,
            buffered: VecDeque::new(),
            next_ref: 0,
            mask_seed: 0x1234_5678,
        };
        if start {
            client.start_reading();
        }
        client
    }

    /// Starts the background reader (a no-op when it runs already).
    pub fn start_reading(&mut self) {
        if self.rx.is_some() {
            return;
        }
        let Some(reader) = self.reader.take() else {
            return;
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let vsn = self.vsn;
        tokio::spawn(read_loop(vsn, reader, tx));
        self.rx = Some(rx);
    }

    /// A fresh ref from this socket's counter.
    pub fn make_ref(&mut self) -> String {
        self.next_ref += 1;
        self.next_ref.to_string()
    }

    /// Sends one unfragmented frame with an opcode.
    pub async fn send_raw(&mut self, opcode: Opcode, payload: &[u8]) -> Result<()> {
        self.mask_seed = self
            .mask_seed
            .wrapping_mul(1_664_525)
            .wrapping_add(1_013_904_223);
        let mut out = Vec::with_capacity(payload.len() + 14);
        push_frame(
            &mut out,
            opcode,
            payload,
            Some(self.mask_seed.to_be_bytes()),
        );
        self.writer.write_all(&out).await?;
        Ok(())
    }

    /// Sends a text frame.
    pub async fn send_text(&mut self, text: &str) -> Result<()> {
        self.send_raw(Opcode::Text, text.as_bytes()).await
    }

    /// Sends a binary frame.
    pub async fn send_binary(&mut self, bytes: &[u8]) -> Result<()> {
        self.send_raw(Opcode::Binary, bytes).await
    }

    /// Encodes a client push for this socket's serializer: a V2 array (via
    /// `realtide_protocol::encode::text_frame`) or a V1 object with `join_ref` when given.
    pub fn encode(
        &self,
        join_ref: Option<&str>,
        reference: Option<&str>,
        topic: &str,
        event: &str,
        payload: &Value,
    ) -> String {
        match self.vsn {
            Vsn::V2 => realtide_protocol::encode::text_frame(
                Vsn::V2,
                join_ref,
                reference,
                topic,
                event,
                &payload.to_string(),
            ),
            Vsn::V1 => {
                let mut object = json!({
                    "topic": topic,
                    "event": event,
                    "payload": payload,
                    "ref": reference,
                });
                if let (Some(join_ref), Some(map)) = (join_ref, object.as_object_mut()) {
                    map.insert("join_ref".into(), json!(join_ref));
                }
                object.to_string()
            }
        }
    }

    /// Sends a push with an explicit ref.
    pub async fn push_with_ref(
        &mut self,
        join_ref: Option<&str>,
        reference: Option<&str>,
        topic: &str,
        event: &str,
        payload: &Value,
    ) -> Result<()> {
        let text = self.encode(join_ref, reference, topic, event, payload);
        self.send_text(&text).await
    }

    /// Sends a push with a fresh ref; returns the ref.
    pub async fn push(
        &mut self,
        join_ref: Option<&str>,
        topic: &str,
        event: &str,
        payload: &Value,
    ) -> Result<String> {
        let reference = self.make_ref();
        self.push_with_ref(join_ref, Some(&reference), topic, event, payload)
            .await?;
        Ok(reference)
    }

    /// Sends `phx_join` whose join_ref is its own ref; returns that ref.
    pub async fn send_join(&mut self, topic: &str, payload: &Value) -> Result<String> {
        let reference = self.make_ref();
        self.push_with_ref(
            Some(&reference),
            Some(&reference),
            topic,
            "phx_join",
            payload,
        )
        .await?;
        Ok(reference)
    }

    /// Joins and waits for the reply, which must be `ok`; returns the join_ref and the reply.
    pub async fn join(&mut self, topic: &str, payload: &Value) -> Result<(String, Msg)> {
        let join_ref = self.send_join(topic, payload).await?;
        let reply = self.expect_reply(topic, &join_ref).await?;
        ensure!(
            reply.status() == Some("ok"),
            "join of {topic} failed: {}",
            reply.raw
        );
        Ok((join_ref, reply))
    }

    /// Joins with `{"config": config}`.
    pub async fn join_config(&mut self, topic: &str, config: Value) -> Result<String> {
        Ok(self.join(topic, &json!({ "config": config })).await?.0)
    }

    /// Sends a heartbeat; returns its ref.
    pub async fn send_heartbeat(&mut self) -> Result<String> {
        self.push(None, "phoenix", "heartbeat", &json!({})).await
    }

    /// Sends a heartbeat and waits for its `ok` reply (skipping other frames).
    pub async fn heartbeat(&mut self) -> Result<Msg> {
        let reference = self.send_heartbeat().await?;
        let reply = self.expect_reply("phoenix", &reference).await?;
        ensure!(
            reply.payload == json!({"status":"ok","response":{}}),
            "bad heartbeat reply {}",
            reply.raw
        );
        Ok(reply)
    }

    /// Sends a broadcast push (text frame); returns its ref.
    pub async fn broadcast(
        &mut self,
        join_ref: &str,
        topic: &str,
        event: &str,
        payload: Value,
    ) -> Result<String> {
        self.push(
            Some(join_ref),
            topic,
            "broadcast",
            &json!({"type": "broadcast", "event": event, "payload": payload}),
        )
        .await
    }

    /// Sends a presence track; returns its ref.
    pub async fn track(&mut self, join_ref: &str, topic: &str, meta: Value) -> Result<String> {
        self.push(
            Some(join_ref),
            topic,
            "presence",
            &json!({"type": "presence", "event": "track", "payload": meta}),
        )
        .await
    }

    /// The next item, waiting at most `wait`; `None` on timeout.
    pub async fn recv_timeout(&mut self, wait: Duration) -> Result<Option<Incoming>> {
        if let Some(item) = self.buffered.pop_front() {
            return Ok(Some(item));
        }
        let rx = self
            .rx
            .as_mut()
            .context("reader not started (call start_reading)")?;
        match tokio::time::timeout(wait, rx.recv()).await {
            Ok(Some(item)) => Ok(Some(item)),
            Ok(None) => Ok(Some(Incoming::Eof("reader ended".into()))),
            Err(_) => Ok(None),
        }
    }

    /// The next item within [`WAIT`]; an error on timeout.
    pub async fn recv(&mut self) -> Result<Incoming> {
        self.recv_timeout(WAIT)
            .await?
            .context("no frame within 5 s")
    }

    /// The next frame, which must be a text frame.
    pub async fn next_text(&mut self) -> Result<Msg> {
        match self.recv().await? {
            Incoming::Text(msg) => Ok(msg),
            other => bail!("expected a text frame, got {other:?}"),
        }
    }

    /// The next frame, which must be binary.
    pub async fn next_binary(&mut self) -> Result<Vec<u8>> {
        match self.recv().await? {
            Incoming::Binary(bytes) => Ok(bytes),
            other => bail!("expected a binary frame, got {other:?}"),
        }
    }

    /// Waits for the first text frame with this topic and event, skipping any other frame;
    /// fails if the socket ends first.
    pub async fn expect_event(&mut self, topic: &str, event: &str) -> Result<Msg> {
        self.expect_text(|m| m.topic == topic && m.event == event)
            .await
            .with_context(|| format!("waiting for {event} on {topic}"))
    }

    /// Waits for the reply with this ref on this topic, skipping other frames.
    pub async fn expect_reply(&mut self, topic: &str, reference: &str) -> Result<Msg> {
        self.expect_text(|m| {
            m.topic == topic && m.event == "phx_reply" && m.reference.as_deref() == Some(reference)
        })
        .await
        .with_context(|| format!("waiting for the reply to ref {reference} on {topic}"))
    }

    /// Waits for the first text frame matching `pred`, skipping others, within [`WAIT`].
    pub async fn expect_text(&mut self, pred: impl Fn(&Msg) -> bool) -> Result<Msg> {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut skipped = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv_timeout(left).await? {
                Some(Incoming::Text(msg)) if pred(&msg) => return Ok(msg),
                Some(item) if item.is_end() => {
                    bail!("socket ended ({item:?}); skipped {skipped:?}")
                }
                Some(item) => skipped.push(item),
                None => bail!("timed out; skipped {skipped:?}"),
            }
        }
    }

    /// Fails if any frame (or the end of the socket) arrives within `wait`.
    pub async fn assert_no_frame(&mut self, wait: Duration) -> Result<()> {
        match self.recv_timeout(wait).await? {
            None => Ok(()),
            Some(item) => bail!("expected no frame, got {item:?}"),
        }
    }

    /// Collects every item arriving within `wait`.
    pub async fn drain(&mut self, wait: Duration) -> Result<Vec<Incoming>> {
        let mut items = Vec::new();
        while let Some(item) = self.recv_timeout(wait).await? {
            let end = item.is_end();
            items.push(item);
            if end {
                break;
            }
        }
        Ok(items)
    }

    /// Waits (up to `wait`) for the socket to end, skipping other frames; returns the close
    /// frame's code (`None` for a bare TCP end) and the frames skipped.
    pub async fn expect_end(&mut self, wait: Duration) -> Result<(Option<u16>, Vec<Incoming>)> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut skipped = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv_timeout(left).await? {
                Some(Incoming::Close(code, _)) => return Ok((code, skipped)),
                Some(Incoming::Eof(_)) => return Ok((None, skipped)),
                Some(item) => skipped.push(item),
                None => bail!(
                    "socket still open after {wait:?}; {} frames skipped",
                    skipped.len()
                ),
            }
        }
    }
}

/// Reads server frames until the stream ends; forwards each message to `tx`.
async fn read_loop<R: AsyncRead + Unpin>(
    vsn: Vsn,
    mut reader: R,
    tx: mpsc::UnboundedSender<Incoming>,
) {
    let mut buf = BytesMut::with_capacity(8 * 1024);
    let mut assembler = Assembler::new(MAX_MESSAGE);
    loop {
        let message = match next_message(&mut reader, &mut buf, &mut assembler).await {
            Ok(message) => message,
            Err(error) => {
                let _ = tx.send(Incoming::Eof(format!("{error:#}")));
                return;
            }
        };
        let payload = message.payload;
        let item = match message.opcode {
            Opcode::Close => {
                let code = match payload.get(..2) {
                    Some(&[a, b]) => Some(u16::from_be_bytes([a, b])),
                    _ => None,
                };
                let reason = String::from_utf8_lossy(payload.get(2..).unwrap_or_default());
                let _ = tx.send(Incoming::Close(code, reason.into_owned()));
                return;
            }
            // realtide pings after change frames to learn what the client has read; this client
            // does not answer them (it then counts as one that does not acknowledge) and does
            // not show them to the tests, like the WebSocket libraries of the real clients.
            Opcode::Ping => continue,
            Opcode::Pong => Incoming::Pong(payload.to_vec()),
            Opcode::Binary => Incoming::Binary(payload.to_vec()),
            Opcode::Text | Opcode::Continuation => complete_text(vsn, payload.to_vec()),
        };
        let end = item.is_end();
        if tx.send(item).is_err() || end {
            return;
        }
    }
}

/// The next whole message (fragments reassembled, control frames as they come) from unmasked
/// server frames.
async fn next_message<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    assembler: &mut Assembler,
) -> Result<Message> {
    loop {
        while let Some(frame) = take_frame(buf, Rules::from_server(MAX_MESSAGE))? {
            if let Some(message) = assembler.push(frame)? {
                return Ok(message);
            }
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(8 * 1024);
        }
        if reader.read_buf(buf).await? == 0 {
            bail!("early eof");
        }
    }
}

fn complete_text(vsn: Vsn, payload: Vec<u8>) -> Incoming {
    match String::from_utf8(payload) {
        Ok(text) => match decode_server_text(vsn, &text) {
            Some(msg) => Incoming::Text(msg),
            None => Incoming::BadText(text),
        },
        Err(error) => Incoming::BadText(String::from_utf8_lossy(error.as_bytes()).into_owned()),
    }
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL: throwaway clusters (tests/pg/cluster.sh) and servers streaming postgres_changes.
// ---------------------------------------------------------------------------------------------

/// Wait for a `postgres_changes` delivery (or a subscription result) that is expected to arrive.
/// Generous: it only bounds how long a test waits.
pub const PG_WAIT: Duration = Duration::from_secs(30);

/// File in a cluster directory naming the test process that owns it (for reaping orphans).
const OWNER_FILE: &str = "realtide-tests.owner";

fn workspace_dir() -> Result<PathBuf> {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .context("tests crate has no parent directory")
}

fn cluster_script() -> Result<PathBuf> {
    Ok(workspace_dir()?.join("tests").join("pg").join("cluster.sh"))
}

/// The directory holding `pg_ctl` (as `tests/pg/cluster.sh` finds it).
fn pg_bindir() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("pg_ctl");
            if candidate.is_file()
                && let Ok(real) = std::fs::canonicalize(&candidate)
                && let Some(parent) = real.parent()
            {
                return Ok(parent.to_path_buf());
            }
        }
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .context("no pg_ctl on PATH and no /usr/lib/postgresql")?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|d| d.join("pg_ctl").is_file())
        .collect();
    dirs.sort();
    dirs.pop().context("no PostgreSQL binaries found")
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Stops clusters left behind by test processes that no longer exist (e.g. killed by a
/// timeout before their [`PgCluster`] guard could run). Clusters without an owner file are
/// someone else's and are left alone.
fn reap_orphan_clusters(script: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir("/tmp") else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let is_cluster = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("realtide-pg."));
        if !is_cluster {
            continue;
        }
        let Ok(owner) = std::fs::read_to_string(path.join(OWNER_FILE)) else {
            continue;
        };
        let alive = owner
            .trim()
            .parse::<u32>()
            .is_ok_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
        if !alive {
            let _ = std::process::Command::new(script)
                .arg("stop")
                .arg(&path)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A throwaway PostgreSQL cluster (wal_level=logical, Supabase-like roles and `auth.*`
/// helpers) started with `tests/pg/cluster.sh start`; stopped and removed on drop, also when
/// the test fails.
#[derive(Debug)]
pub struct PgCluster {
    /// `postgres://postgres@127.0.0.1:<port>/postgres`
    pub url: String,
    /// TCP connections must use TLS (`hostssl` only); the test's own connections then go
    /// through the Unix socket in [`PgCluster::dir`].
    pub ssl: bool,
    /// The cluster directory (`/tmp/realtide-pg.*`); the data directory is `<dir>/data`.
    pub dir: PathBuf,
}

impl PgCluster {
    /// Starts a new cluster.
    pub async fn start() -> Result<PgCluster> {
        PgCluster::start_with(false, "").await
    }

    /// Starts a new cluster with extra server options after the defaults (`-c name=value`).
    pub async fn start_opts(extra: &str) -> Result<PgCluster> {
        PgCluster::start_with(false, extra).await
    }

    /// Starts a cluster that accepts TCP connections only over TLS (certificate for
    /// `127.0.0.1` signed by the test CA `<dir>/ca.crt`).
    pub async fn start_ssl() -> Result<PgCluster> {
        PgCluster::start_with(true, "").await
    }

    async fn start_with(ssl: bool, extra: &str) -> Result<PgCluster> {
        let script = cluster_script()?;
        reap_orphan_clusters(&script);
        let output = Command::new("bash")
            .arg(&script)
            .arg("start")
            .env("PG_SSL", if ssl { "1" } else { "0" })
            .env("PG_EXTRA_OPTS", extra)
            .stdin(Stdio::null())
            .output()
            .await
            .context("running tests/pg/cluster.sh start")?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let field = |name: &str| {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(name).map(str::to_owned))
        };
        // Take ownership of the directory first so a failure below still removes it.
        let dir = field("PG_DIR=").map(PathBuf::from);
        if let Some(dir) = &dir {
            let _ = std::fs::write(dir.join(OWNER_FILE), std::process::id().to_string());
        }
        let (Some(url), Some(dir)) = (field("DB_URL="), dir) else {
            if let Some(dir) = field("PG_DIR=") {
                let _ = std::process::Command::new(&script)
                    .arg("stop")
                    .arg(dir)
                    .status();
            }
            bail!(
                "cluster.sh start failed ({}): {stdout}{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        };
        Ok(PgCluster { url, ssl, dir })
    }

    /// The server's port.
    pub fn port(&self) -> Result<u16> {
        self.url
            .rsplit_once(':')
            .and_then(|(_, rest)| rest.split('/').next())
            .and_then(|port| port.parse().ok())
            .context("no port in the cluster URL")
    }

    /// A new SQL connection (driven on a background task).
    pub async fn connect(&self) -> Result<tokio_postgres::Client> {
        let target = if self.ssl {
            format!(
                "host={} port={} user=postgres dbname=postgres",
                self.dir.display(),
                self.port()?
            )
        } else {
            self.url.clone()
        };
        let (client, connection) = tokio_postgres::connect(&target, tokio_postgres::NoTls)
            .await
            .with_context(|| format!("connecting to {target}"))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    /// Connects, retrying for up to `wait` (while the server restarts).
    pub async fn connect_retry(&self, wait: Duration) -> Result<tokio_postgres::Client> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match self.connect().await {
                Ok(client) => return Ok(client),
                Err(error) if tokio::time::Instant::now() >= deadline => return Err(error),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// Runs SQL statements on a fresh connection.
    pub async fn exec(&self, sql: &str) -> Result<()> {
        self.connect()
            .await?
            .batch_execute(sql)
            .await
            .with_context(|| format!("executing {sql}"))
    }

    fn pg_ctl(&self) -> Result<std::process::Command> {
        let pg_ctl = pg_bindir()?.join("pg_ctl");
        let mut command = if is_root() {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(pg_ctl);
            c
        } else {
            std::process::Command::new(pg_ctl)
        };
        command
            .arg("-D")
            .arg(self.dir.join("data"))
            .stdin(Stdio::null());
        Ok(command)
    }

    async fn run_pg_ctl(&self, args: Vec<String>) -> Result<()> {
        let mut command = self.pg_ctl()?;
        command.args(&args);
        let output = tokio::task::spawn_blocking(move || command.output())
            .await?
            .context("running pg_ctl")?;
        ensure!(
            output.status.success(),
            "pg_ctl {args:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(())
    }

    /// Stops the PostgreSQL server (fast shutdown: a checkpoint persists the slots); the
    /// cluster stays on disk for [`PgCluster::start_server`].
    pub async fn stop_server(&self) -> Result<()> {
        self.run_pg_ctl(vec!["-m".into(), "fast".into(), "-w".into(), "stop".into()])
            .await
    }

    /// Starts the PostgreSQL server again with the options it ran with before (port, WAL
    /// settings), as `pg_ctl restart` would.
    pub async fn start_server(&self) -> Result<()> {
        let opts = std::fs::read_to_string(self.dir.join("data").join("postmaster.opts"))
            .context("reading postmaster.opts")?;
        let opts = opts.trim();
        // "<binary>" "-D" "<dir>" "-p" ...: everything after the program is passed on.
        let args = opts
            .split_once(" \"")
            .map(|(_, rest)| format!("\"{rest}"))
            .unwrap_or_default();
        self.run_pg_ctl(vec![
            "-l".into(),
            self.dir.join("server.log").display().to_string(),
            "-w".into(),
            "-t".into(),
            "60".into(),
            "-o".into(),
            args,
            "start".into(),
        ])
        .await
    }

    /// `pg_ctl restart -m fast`.
    pub async fn restart_server(&self) -> Result<()> {
        self.run_pg_ctl(vec![
            "-l".into(),
            self.dir.join("server.log").display().to_string(),
            "-m".into(),
            "fast".into(),
            "-w".into(),
            "-t".into(),
            "60".into(),
            "restart".into(),
        ])
        .await
    }

    /// The slot's row: `(active, confirmed_flush_lsn as text, temporary)`, `None` when absent.
    pub async fn slot(
        &self,
        client: &tokio_postgres::Client,
        slot: &str,
    ) -> Result<Option<(bool, Option<String>, bool)>> {
        let row = client
            .query_opt(
                "select active, confirmed_flush_lsn::text, temporary from pg_replication_slots \
                 where slot_name = $1",
                &[&slot],
            )
            .await?;
        Ok(row.map(|r| (r.get(0), r.get(1), r.get(2))))
    }

    /// Waits until the slot exists and is streamed by a walsender.
    pub async fn wait_slot_active(&self, slot: &str) -> Result<()> {
        let client = self.connect_retry(PG_WAIT).await?;
        let deadline = tokio::time::Instant::now() + PG_WAIT;
        loop {
            if let Some((true, _, _)) = self.slot(&client, slot).await? {
                return Ok(());
            }
            ensure!(
                tokio::time::Instant::now() < deadline,
                "slot {slot} not active within {PG_WAIT:?}: {:?}",
                self.slot(&client, slot).await?
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the slot's confirmed_flush_lsn is at least `lsn` (text form).
    pub async fn wait_confirmed(&self, slot: &str, lsn: &str) -> Result<()> {
        let client = self.connect_retry(PG_WAIT).await?;
        let deadline = tokio::time::Instant::now() + PG_WAIT;
        loop {
            let row = client
                .query_one(
                    "select coalesce((select confirmed_flush_lsn >= $2::text::pg_lsn \
                     from pg_replication_slots where slot_name = $1), false)",
                    &[&slot, &lsn],
                )
                .await?;
            if row.get::<_, bool>(0) {
                return Ok(());
            }
            ensure!(
                tokio::time::Instant::now() < deadline,
                "slot {slot} did not confirm {lsn} within {PG_WAIT:?}: {:?}",
                self.slot(&client, slot).await?
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `pg_current_wal_insert_lsn()` as text: the end of everything committed so far (the
    /// write position may lag with `synchronous_commit=off`).
    pub async fn current_lsn(&self, client: &tokio_postgres::Client) -> Result<String> {
        Ok(client
            .query_one("select pg_current_wal_insert_lsn()::text", &[])
            .await?
            .get(0))
    }

    /// The server log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if let Ok(script) = cluster_script() {
            let _ = std::process::Command::new(script)
                .arg("stop")
                .arg(&self.dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Server {
    /// Starts a server streaming postgres_changes from `pg` with this slot and publication
    /// (`DB_URL`, `SLOT_NAME`, `PUBLICATION`, plus `env`), and waits until its slot is active.
    pub async fn start_pg(
        pg: &PgCluster,
        slot: &str,
        publication: &str,
        env: &[(&str, &str)],
    ) -> Result<Server> {
        let mut all: Vec<(&str, &str)> = vec![
            ("DB_URL", pg.url.as_str()),
            ("SLOT_NAME", slot),
            ("PUBLICATION", publication),
        ];
        all.extend_from_slice(env);
        let server = Server::start(&all).await?;
        if let Err(error) = pg.wait_slot_active(slot).await {
            bail!("{error:#}\nrealtide stderr:\n{}", server.stderr());
        }
        Ok(server)
    }

    /// Kills the process (SIGKILL) and waits for it to exit.
    pub async fn kill(&mut self) -> Result<()> {
        self.child.start_kill()?;
        self.child.wait().await?;
        Ok(())
    }
}

/// Whether `text` has the shape `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn is_commit_timestamp(text: &str) -> bool {
    const SHAPE: &[u8] = b"dddd-dd-ddTdd:dd:dd.dddZ";
    text.len() == SHAPE.len()
        && text.bytes().zip(SHAPE).all(|(c, s)| match s {
            b'd' => c.is_ascii_digit(),
            other => c == *other,
        })
}

/// An HS256 token for a user: `role`, `sub`, an hour of validity.
pub fn user_token(role: &str, sub: &str) -> String {
    let now = unix_now();
    sign(&json!({"role": role, "sub": sub, "exp": now + 3600, "iat": now}))
}

impl Client {
    /// Waits up to `wait` for the first text frame matching `pred`, skipping others.
    pub async fn expect_text_within(
        &mut self,
        wait: Duration,
        pred: impl Fn(&Msg) -> bool,
    ) -> Result<Msg> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut skipped = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv_timeout(left).await? {
                Some(Incoming::Text(msg)) if pred(&msg) => return Ok(msg),
                Some(item) if item.is_end() => {
                    bail!("socket ended ({item:?}); skipped {skipped:?}")
                }
                Some(item) => skipped.push(item),
                None => bail!("timed out after {wait:?}; skipped {skipped:?}"),
            }
        }
    }

    /// Joins `topic` with `postgres_changes` bindings (and `access_token` when given), checks
    /// the `ok` reply, and returns the join_ref, the reply and the `system` message that
    /// follows it (not checked).
    pub async fn join_changes_raw(
        &mut self,
        topic: &str,
        bindings: Value,
        access_token: Option<&str>,
    ) -> Result<(String, Msg, Msg)> {
        let mut payload = json!({"config": {"postgres_changes": bindings}});
        if let (Some(token), Some(map)) = (access_token, payload.as_object_mut()) {
            map.insert("access_token".into(), json!(token));
        }
        let join_ref = self.send_join(topic, &payload).await?;
        // The reply must come before the subscription result.
        let first = self
            .expect_text_within(PG_WAIT, |m| {
                m.topic == topic && (m.event == "phx_reply" || m.event == "system")
            })
            .await?;
        ensure!(
            first.event == "phx_reply" && first.reference.as_deref() == Some(join_ref.as_str()),
            "expected the join reply first, got {}",
            first.raw
        );
        ensure!(
            first.status() == Some("ok"),
            "join of {topic} failed: {}",
            first.raw
        );
        let system = self
            .expect_text_within(PG_WAIT, |m| m.topic == topic && m.event == "system")
            .await?;
        Ok((join_ref, first, system))
    }

    /// Joins with bindings and requires `Subscribed to PostgreSQL`; returns the join_ref and
    /// the ids of the reply, in binding order.
    pub async fn join_changes(
        &mut self,
        topic: &str,
        bindings: Value,
        access_token: Option<&str>,
    ) -> Result<(String, Vec<u64>)> {
        let (join_ref, reply, system) =
            self.join_changes_raw(topic, bindings, access_token).await?;
        let sub_topic = topic.strip_prefix("realtime:").unwrap_or(topic);
        ensure!(
            system.payload
                == json!({"extension": "postgres_changes", "status": "ok",
                          "message": "Subscribed to PostgreSQL", "channel": sub_topic}),
            "subscription failed: {}",
            system.raw
        );
        let ids = reply
            .response()
            .get("postgres_changes")
            .and_then(Value::as_array)
            .context("no postgres_changes in the reply")?
            .iter()
            .map(|e| {
                e.get("id")
                    .and_then(Value::as_u64)
                    .context("binding without an integer id")
            })
            .collect::<Result<Vec<u64>>>()?;
        Ok((join_ref, ids))
    }

    /// The next `postgres_changes` push on `topic` (within [`PG_WAIT`]), skipping other frames.
    pub async fn next_change(&mut self, topic: &str) -> Result<Msg> {
        self.expect_text_within(PG_WAIT, |m| {
            m.topic == topic && m.event == "postgres_changes"
        })
        .await
        .with_context(|| format!("waiting for postgres_changes on {topic}"))
    }
}

/// Slot name test servers stream from (each test has its own cluster).
pub const TEST_SLOT: &str = "realtide_test_slot";
/// Publication test servers use; the server creates it (empty) at start.
pub const TEST_PUBLICATION: &str = "realtide_test_pub";

/// A cluster, a SQL connection to it and a server streaming from it. Dropped in field order:
/// the server is killed first, then the cluster is removed.
#[derive(Debug)]
pub struct PgEnv {
    /// The realtide server (`DB_URL`, [`TEST_SLOT`], [`TEST_PUBLICATION`]).
    pub server: Server,
    /// A superuser connection for setup SQL and changes.
    pub db: tokio_postgres::Client,
    /// The cluster.
    pub pg: PgCluster,
}

impl PgEnv {
    /// Starts a cluster and a server with extra `env`, then runs `sql` (after the server has
    /// created the publication, so `sql` may add tables to it).
    pub async fn start(env: &[(&str, &str)], sql: &str) -> Result<PgEnv> {
        let pg = PgCluster::start().await?;
        let server = Server::start_pg(&pg, TEST_SLOT, TEST_PUBLICATION, env).await?;
        let db = pg.connect().await?;
        if !sql.is_empty() {
            db.batch_execute(sql)
                .await
                .with_context(|| format!("setup SQL failed: {sql}"))?;
        }
        Ok(PgEnv { server, db, pg })
    }

    /// Runs SQL statements on [`PgEnv::db`].
    pub async fn exec(&self, sql: &str) -> Result<()> {
        self.db
            .batch_execute(sql)
            .await
            .with_context(|| format!("executing {sql}"))
    }

    /// A V2 client whose socket token is `token`.
    pub async fn client(&self, token: &str) -> Result<Client> {
        self.server.connect_token(Vsn::V2, token).await
    }
}
