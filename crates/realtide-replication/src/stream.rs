//! Walsender transport: our own minimal client over `postgres-protocol` + tokio rather than the
//! `pgwire-replication` crate, which runs its own worker task sending feedback on a timer,
//! decodes and strips Begin/Commit/Message from the raw stream, never creates slots, brings
//! rustls by default and needs Rust 1.88. Ours is one task-free struct: persistent slot creation,
//! `START_REPLICATION` from the slot's confirmed position, raw copy data decoded by our pgoutput
//! module, status updates only with the LSN we confirm; trust/password/md5/SCRAM auth, no TLS yet.
//!
//! Confirming: call [`ReplicationStream::confirm`] with a transaction's `Commit::end_lsn` once
//! its changes were handed to every subscriber queue. While no transaction is in flight and all
//! earlier ones are confirmed, a keepalive's `wal_end` may be confirmed too (so an idle slot does
//! not hold WAL). A keepalive that asks for a reply is answered automatically with the position
//! already confirmed, never a newer one (or none, see `queue_reply`).

use crate::sql::{quote_ident, quote_literal};
use std::io;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::lsn::Lsn;
use crate::pgoutput::{
    self, CopyDataMessage, DecodeError, LogicalMessage, PrimaryKeepalive, StandbyStatusUpdate,
};

/// Where and what to stream.
#[derive(Debug, Clone)]
pub struct ReplicationConfig {
    /// libpq URL `postgres://user:password@host:port/database` (`postgresql://` too;
    /// percent-encoded user and password; port defaults to 5432, database to the user;
    /// `sslmode` absent, `disable`, `allow` or `prefer` for plain TCP; `require`, `verify-ca` or
    /// `verify-full` make TLS mandatory and need [`ReplicationConfig::tls`]).
    pub conn: String,
    /// Logical replication slot name (`[a-z0-9_]{1,63}`); created persistent if absent.
    pub slot: String,
    /// Publications to stream (created by the caller over a normal connection).
    pub publications: Vec<String>,
    /// TLS: when set, the connection must be encrypted (the caller's connector decides how the
    /// server certificate is checked). `sslmode=require` in the URL needs it too.
    pub tls: Option<std::sync::Arc<tokio_rustls::rustls::ClientConfig>>,
}

/// The connection's byte stream: plain TCP or TLS over TCP.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + std::fmt::Debug {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + std::fmt::Debug> Io for T {}
type BoxIo = Box<dyn Io>;

/// Why the replication connection failed.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The connection URL, slot or publication name is not usable.
    #[error("replication config: {0}")]
    Config(String),
    /// Socket error, including the server closing the connection.
    #[error("replication connection: {0}")]
    Io(#[from] io::Error),
    /// Authentication was refused or uses an unsupported method.
    #[error("replication authentication: {0}")]
    Auth(String),
    /// The server answered with an error.
    #[error("PostgreSQL error {code}: {message}")]
    Server {
        /// SQLSTATE (`55006`: the slot is in use by another connection, e.g. one still exiting).
        code: String,
        /// Message text.
        message: String,
    },
    /// The server sent something this client does not expect.
    #[error("replication protocol: {0}")]
    Protocol(String),
    /// A copy-data or pgoutput message did not decode.
    #[error("pgoutput decode: {0}")]
    Decode(#[from] DecodeError),
    /// The slot exists but is not a logical pgoutput slot of this database.
    #[error("replication slot {slot:?} is unusable: {reason}")]
    SlotMismatch {
        /// Slot name.
        slot: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl StreamError {
    /// The SQLSTATE of a server error.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            StreamError::Server { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// One message from the replication stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalMessage {
    /// An `XLogData` message holding one decoded pgoutput message.
    Data {
        /// WAL start of this message (0/0 for some messages, e.g. Relation).
        wal_start: Lsn,
        /// Server's current WAL end.
        wal_end: Lsn,
        /// Server clock, microseconds since 2000-01-01 UTC.
        server_time_micros: i64,
        /// The pgoutput message.
        message: LogicalMessage,
    },
    /// A primary keepalive (a requested reply has already been queued).
    Keepalive(PrimaryKeepalive),
}

/// An established `START_REPLICATION` stream.
///
/// [`next`](Self::next) is cancel-safe: it only awaits cancel-safe socket reads and writes of
/// buffered bytes, so it can sit in a `select!` beside a channel of LSNs to confirm. Outgoing
/// status updates are queued in a buffer; [`confirm`](Self::confirm) and
/// [`keepalive_reply`](Self::keepalive_reply) flush it, and if they are cancelled midway the rest
/// is written by the next call, so the stream never sees half a message.
#[derive(Debug)]
pub struct ReplicationStream {
    reader: tokio::io::ReadHalf<BoxIo>,
    writer: tokio::io::WriteHalf<BoxIo>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// Highest position confirmed to the server (starts at the slot's `confirmed_flush_lsn`).
    confirmed: Lsn,
    /// Highest WAL end seen in the stream.
    received: Lsn,
    done: bool,
    system_id: String,
}

/// Connect, ensure the slot exists (creating it persistent if absent), and start streaming from
/// the slot's confirmed position with `proto_version '1'`, the publications and `messages 'true'`.
pub async fn connect(cfg: &ReplicationConfig) -> Result<ReplicationStream, StreamError> {
    let url = ConnUrl::parse(&cfg.conn)?;
    check_slot_name(&cfg.slot)?;
    if cfg.publications.is_empty()
        || cfg
            .publications
            .iter()
            .any(|p| p.is_empty() || p.contains('\0'))
    {
        return Err(StreamError::Config("invalid publication name".into()));
    }
    let mut conn = Conn::connect(&url, cfg.tls.as_ref()).await?;

    // The cluster's identity: positions (LSNs) only compare within one cluster.
    let system_id = conn
        .simple_query("IDENTIFY_SYSTEM")
        .await?
        .first()
        .and_then(|row| row.first().cloned().flatten())
        .unwrap_or_default();
    let confirmed = ensure_slot(&mut conn, &cfg.slot).await?;

    let names: Vec<String> = cfg.publications.iter().map(|p| quote_ident(p)).collect();
    let publication = quote_literal(&names.join(","));
    let start = format!(
        "START_REPLICATION SLOT \"{}\" LOGICAL 0/0 (proto_version '1', publication_names {publication}, messages 'true')",
        cfg.slot
    );
    conn.send_query(&start).await?;
    loop {
        let (tag, body) = conn.read_frame().await?;
        match tag {
            b'W' => break,
            b'E' => {
                let err = server_error(&body);
                conn.drain_until_ready().await?;
                return Err(err);
            }
            b'N' | b'S' => {}
            other => {
                return Err(StreamError::Protocol(format!(
                    "unexpected message {:?} after START_REPLICATION",
                    char::from(other)
                )));
            }
        }
    }
    let Conn { stream, rbuf } = conn;
    let (reader, writer) = tokio::io::split(stream);
    Ok(ReplicationStream {
        reader,
        writer,
        rbuf,
        wbuf: BytesMut::new(),
        confirmed,
        received: confirmed,
        done: false,
        system_id,
    })
}

/// Look the slot up; create it if missing. Returns its confirmed position (0/0 when new).
async fn ensure_slot(conn: &mut Conn, slot: &str) -> Result<Lsn, StreamError> {
    let lookup = format!(
        "SELECT plugin, slot_type, database = current_database(), confirmed_flush_lsn::text \
         FROM pg_catalog.pg_replication_slots WHERE slot_name = '{slot}'"
    );
    let rows = conn.simple_query(&lookup).await?;
    if let Some(row) = rows.first() {
        let field = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
        let mismatch = |reason: String| StreamError::SlotMismatch {
            slot: slot.to_owned(),
            reason,
        };
        if field(1) != "logical" || field(0) != "pgoutput" {
            return Err(mismatch(format!(
                "type {:?} with plugin {:?}, expected a logical pgoutput slot",
                field(1),
                field(0)
            )));
        }
        if field(2) != "t" {
            return Err(mismatch("it belongs to another database".into()));
        }
        let confirmed = field(3);
        return Ok(confirmed.parse().unwrap_or(Lsn::ZERO));
    }
    let create = format!("CREATE_REPLICATION_SLOT \"{slot}\" LOGICAL pgoutput NOEXPORT_SNAPSHOT");
    match conn.simple_query(&create).await {
        Ok(rows) => {
            // columns: slot_name, consistent_point, snapshot_name, output_plugin
            let point = rows
                .first()
                .and_then(|r| r.get(1).cloned().flatten())
                .and_then(|s| s.parse().ok())
                .unwrap_or(Lsn::ZERO);
            tracing::info!(slot, %point, "created logical replication slot");
            Ok(point)
        }
        // created concurrently by another process: fine
        Err(e) if e.sqlstate() == Some("42710") => Ok(Lsn::ZERO),
        Err(e) => Err(e),
    }
}

impl ReplicationStream {
    /// The next message, or `None` once the server ended the stream. Cancel-safe.
    ///
    /// Decode errors are returned as [`StreamError::Decode`]; the offending message is consumed.
    pub async fn next(&mut self) -> Result<Option<WalMessage>, StreamError> {
        loop {
            if let Some((tag, body)) = take_frame(&mut self.rbuf)? {
                match tag {
                    b'd' => match pgoutput::decode_copy_data(body)? {
                        CopyDataMessage::XLogData(x) => {
                            self.received = self.received.max(x.wal_end);
                            let message = pgoutput::decode_logical(x.data)?;
                            return Ok(Some(WalMessage::Data {
                                wal_start: x.wal_start,
                                wal_end: x.wal_end,
                                server_time_micros: x.server_time_micros,
                                message,
                            }));
                        }
                        CopyDataMessage::PrimaryKeepalive(k) => {
                            self.received = self.received.max(k.wal_end);
                            if k.reply_requested {
                                self.queue_reply();
                            }
                            return Ok(Some(WalMessage::Keepalive(k)));
                        }
                    },
                    b'c' => {
                        // Server ended the copy: answer with CopyDone, then the stream is over.
                        self.done = true;
                        frontend::copy_done(&mut self.wbuf);
                        self.flush().await?;
                        return Ok(None);
                    }
                    b'E' => return Err(server_error(&body)),
                    b'N' => {
                        let notice = server_error(&body);
                        tracing::info!(%notice, "replication notice");
                    }
                    _ if self.done => {}
                    other => {
                        return Err(StreamError::Protocol(format!(
                            "unexpected message {:?} in the replication stream",
                            char::from(other)
                        )));
                    }
                }
                continue;
            }
            if self.done {
                return Ok(None);
            }
            self.rbuf.reserve(64 * 1024);
            if self.wbuf.is_empty() {
                let n = self.reader.read_buf(&mut self.rbuf).await?;
                if n == 0 {
                    return Err(eof());
                }
            } else {
                tokio::select! {
                    r = self.reader.read_buf(&mut self.rbuf) => {
                        if r? == 0 {
                            return Err(eof());
                        }
                    }
                    w = self.writer.write_buf(&mut self.wbuf) => { w?; }
                }
            }
        }
    }

    /// Confirm that everything up to `lsn` (normally a `Commit::end_lsn`) has been handled: the
    /// slot may advance to it and the server may recycle older WAL. Positions below the current
    /// confirmed one are ignored. Sends a standby status update at once.
    pub async fn confirm(&mut self, lsn: Lsn) -> Result<(), StreamError> {
        self.confirmed = self.confirmed.max(lsn);
        self.queue_status(false);
        self.flush().await
    }

    /// Send a status update with the already confirmed position (keeps the connection alive;
    /// does not advance the slot).
    pub async fn keepalive_reply(&mut self) -> Result<(), StreamError> {
        self.queue_status(false);
        self.flush().await
    }

    /// The highest position confirmed so far (the slot's position at connect time, then the
    /// highest given to [`confirm`](Self::confirm)).
    pub fn confirmed(&self) -> Lsn {
        self.confirmed
    }

    /// The cluster's system identifier (`IDENTIFY_SYSTEM`).
    pub fn system_id(&self) -> &str {
        &self.system_id
    }

    /// The highest WAL end the server has reported on this stream.
    pub fn received(&self) -> Lsn {
        self.received
    }

    /// End the connection cleanly (pending status updates are sent first).
    pub async fn close(mut self) -> Result<(), StreamError> {
        frontend::terminate(&mut self.wbuf);
        self.flush().await?;
        self.writer.shutdown().await?;
        Ok(())
    }

    fn queue_status(&mut self, reply_requested: bool) {
        self.queue_update(self.confirmed, reply_requested);
    }

    /// Answers a keepalive that asked for a reply. While something received is not confirmed
    /// yet, the flush position is left out (sent as invalid): a walsender that is shutting down
    /// waits until the flush position (or, when that is invalid, the write position) reaches
    /// everything it sent, and a flush position held back by a subscriber that is not reading,
    /// or by checks failing because the database is going down, would make the server's
    /// shutdown wait forever. An invalid flush position never moves the slot, so this confirms
    /// nothing; the stream restarts from the confirmed position after the server comes back.
    fn queue_reply(&mut self) {
        let flushed = if self.confirmed < self.received {
            Lsn::ZERO
        } else {
            self.confirmed
        };
        self.queue_update(flushed, false);
    }

    fn queue_update(&mut self, flushed: Lsn, reply_requested: bool) {
        let update = StandbyStatusUpdate {
            written: self.received.max(self.confirmed),
            flushed,
            applied: flushed,
            client_time_micros: pgoutput::now_pg_micros(),
            reply_requested,
        };
        let mut payload = BytesMut::with_capacity(StandbyStatusUpdate::LEN);
        update.encode_into(&mut payload);
        // CopyData frame: 'd', length, payload
        self.wbuf.put_u8(b'd');
        self.wbuf.put_i32(4 + StandbyStatusUpdate::LEN as i32);
        self.wbuf.put_slice(&payload);
    }

    async fn flush(&mut self) -> Result<(), StreamError> {
        while self.wbuf.has_remaining() {
            self.writer.write_buf(&mut self.wbuf).await?;
        }
        Ok(())
    }
}

fn eof() -> StreamError {
    StreamError::Io(io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "server closed the replication connection",
    ))
}

/// Split one complete backend message (tag, body) off the front of `buf`.
fn take_frame(buf: &mut BytesMut) -> Result<Option<(u8, Bytes)>, StreamError> {
    let Some(header) = buf.get(..5) else {
        return Ok(None);
    };
    let mut header = header;
    let tag = header.get_u8();
    let len = header.get_i32();
    let len = usize::try_from(len)
        .ok()
        .filter(|l| *l >= 4)
        .ok_or_else(|| StreamError::Protocol(format!("invalid message length {len}")))?;
    let total = len + 1;
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    let mut frame = buf.split_to(total);
    frame.advance(5);
    Ok(Some((tag, frame.freeze())))
}

/// Read the SQLSTATE and message of an ErrorResponse/NoticeResponse body.
fn server_error(body: &[u8]) -> StreamError {
    let mut code = String::new();
    let mut message = String::new();
    let mut detail = String::new();
    let mut rest = body;
    while let Some((&kind, tail)) = rest.split_first() {
        if kind == 0 {
            break;
        }
        let Some(end) = tail.iter().position(|&b| b == 0) else {
            break;
        };
        let (value, after) = tail.split_at(end);
        let value = String::from_utf8_lossy(value).into_owned();
        match kind {
            b'C' => code = value,
            b'M' => message = value,
            b'D' => detail = value,
            _ => {}
        }
        rest = after.get(1..).unwrap_or_default();
    }
    if !detail.is_empty() {
        message = format!("{message} ({detail})");
    }
    StreamError::Server { code, message }
}

fn check_slot_name(slot: &str) -> Result<(), StreamError> {
    let ok = !slot.is_empty()
        && slot.len() <= 63
        && slot
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(StreamError::Config(format!(
            "invalid slot name {slot:?}: use 1 to 63 of a-z, 0-9 and _"
        )))
    }
}

/// Checks that `url` is a connection URL this client can use (`postgres://...`), without
/// connecting; the error never repeats the password.
pub fn check_url(url: &str) -> Result<(), StreamError> {
    ConnUrl::parse(url).map(|_| ())
}

/// The parts of a libpq URL this client uses.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ConnUrl {
    /// `sslmode=require` (or stricter) was given.
    require_tls: bool,
    user: String,
    password: Option<String>,
    host: String,
    port: u16,
    database: String,
}

impl ConnUrl {
    fn parse(url: &str) -> Result<Self, StreamError> {
        let bad = |why: &str| StreamError::Config(format!("connection URL: {why}"));
        let rest = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"))
            .ok_or_else(|| bad("expected postgres://user:password@host:port/database"))?;
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match rest.split_once('/') {
            Some((a, p)) => (a, p),
            None => (rest, ""),
        };
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| bad("invalid percent-encoding"))
        };
        let (user, password) = match userinfo {
            Some(u) => match u.split_once(':') {
                Some((u, p)) => (decode(u)?, Some(decode(p)?)),
                None => (decode(u)?, None),
            },
            None => (String::new(), None),
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| bad("unclosed [ in host"))?;
            (h.to_owned(), after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), Some(p)),
                None => (hostport.to_owned(), None),
            }
        };
        let port = match port {
            Some(p) => p.parse().map_err(|_| bad("invalid port"))?,
            None => 5432,
        };
        let host = if host.is_empty() {
            "localhost".to_owned()
        } else {
            decode(&host)?
        };
        let user = if user.is_empty() {
            std::env::var("USER").unwrap_or_else(|_| "postgres".into())
        } else {
            user
        };
        let database = if path.is_empty() {
            user.clone()
        } else {
            decode(path)?
        };
        let mut require_tls = false;
        for pair in query.unwrap_or_default().split('&') {
            let mode = pair.strip_prefix("sslmode=").unwrap_or("disable");
            match mode {
                "disable" | "allow" | "prefer" => {}
                "require" | "verify-ca" | "verify-full" => require_tls = true,
                other => return Err(bad(&format!("sslmode={other} is not supported"))),
            }
        }
        Ok(ConnUrl {
            require_tls,
            user,
            password,
            host,
            port,
            database,
        })
    }
}

/// The connection before streaming: startup, authentication and simple queries.
struct Conn {
    stream: BoxIo,
    rbuf: BytesMut,
}

/// `SSLRequest`: length 8, code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

type Row = Vec<Option<String>>;

impl Conn {
    async fn connect(
        url: &ConnUrl,
        tls: Option<&std::sync::Arc<tokio_rustls::rustls::ClientConfig>>,
    ) -> Result<Conn, StreamError> {
        let mut tcp = TcpStream::connect((url.host.as_str(), url.port)).await?;
        tcp.set_nodelay(true)?;
        let stream: BoxIo = match tls {
            None if url.require_tls => {
                return Err(StreamError::Config(
                    "sslmode requires TLS, but no TLS settings were given".into(),
                ));
            }
            None => Box::new(tcp),
            Some(config) => {
                let connector = tokio_rustls::TlsConnector::from(config.clone());
                tcp.write_all(&SSL_REQUEST).await?;
                let mut answer = [0u8; 1];
                tcp.read_exact(&mut answer).await?;
                if answer != *b"S" {
                    return Err(StreamError::Config(
                        "the server does not accept TLS connections".into(),
                    ));
                }
                let name = tokio_rustls::rustls::pki_types::ServerName::try_from(url.host.clone())
                    .map_err(|e| StreamError::Config(format!("TLS server name: {e}")))?;
                Box::new(connector.connect(name, tcp).await?)
            }
        };
        let mut conn = Conn {
            stream,
            rbuf: BytesMut::with_capacity(64 * 1024),
        };
        let mut out = BytesMut::new();
        frontend::startup_message(
            [
                ("user", url.user.as_str()),
                ("database", url.database.as_str()),
                ("replication", "database"),
                ("application_name", "realtide"),
                ("client_encoding", "UTF8"),
                // Values are rendered from their text output: pin the styles to_jsonb assumes.
                ("TimeZone", "UTC"),
                ("DateStyle", "ISO, MDY"),
                ("IntervalStyle", "postgres"),
            ],
            &mut out,
        )?;
        conn.write(&out).await?;
        conn.authenticate(url).await?;
        conn.drain_until_ready().await?;
        Ok(conn)
    }

    async fn authenticate(&mut self, url: &ConnUrl) -> Result<(), StreamError> {
        let password = || {
            url.password
                .as_deref()
                .ok_or_else(|| StreamError::Auth("the server asks for a password".into()))
        };
        let mut scram: Option<ScramSha256> = None;
        loop {
            let (tag, body) = self.read_frame().await?;
            match tag {
                b'E' => return Err(server_error(&body)),
                b'N' => continue,
                b'R' => {}
                other => {
                    return Err(StreamError::Protocol(format!(
                        "unexpected message {:?} during authentication",
                        char::from(other)
                    )));
                }
            }
            let mut b = body;
            if b.remaining() < 4 {
                return Err(StreamError::Protocol("short authentication message".into()));
            }
            let code = b.get_i32();
            let mut out = BytesMut::new();
            match code {
                0 => return Ok(()),
                3 => frontend::password_message(password()?.as_bytes(), &mut out)?,
                5 => {
                    let salt: [u8; 4] = b
                        .get(..4)
                        .and_then(|s| s.try_into().ok())
                        .ok_or_else(|| StreamError::Protocol("short md5 salt".into()))?;
                    let hash = md5_hash(url.user.as_bytes(), password()?.as_bytes(), salt);
                    frontend::password_message(hash.as_bytes(), &mut out)?;
                }
                10 => {
                    let offers_scram = b.split(|&c| c == 0).any(|m| m == SCRAM_SHA_256.as_bytes());
                    if !offers_scram {
                        return Err(StreamError::Auth(
                            "the server offers no SASL mechanism this client supports".into(),
                        ));
                    }
                    let s = ScramSha256::new(password()?.as_bytes(), ChannelBinding::unsupported());
                    frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), &mut out)?;
                    scram = Some(s);
                }
                11 => {
                    let s = scram.as_mut().ok_or_else(|| {
                        StreamError::Protocol("SASL continue without start".into())
                    })?;
                    s.update(&b).map_err(|e| StreamError::Auth(e.to_string()))?;
                    frontend::sasl_response(s.message(), &mut out)?;
                }
                12 => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| StreamError::Protocol("SASL final without start".into()))?;
                    s.finish(&b).map_err(|e| StreamError::Auth(e.to_string()))?;
                    continue;
                }
                other => {
                    return Err(StreamError::Auth(format!(
                        "unsupported authentication method (code {other})"
                    )));
                }
            }
            self.write(&out).await?;
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), StreamError> {
        self.stream.write_all(bytes).await?;
        Ok(())
    }

    async fn read_frame(&mut self) -> Result<(u8, Bytes), StreamError> {
        loop {
            if let Some(frame) = take_frame(&mut self.rbuf)? {
                return Ok(frame);
            }
            self.rbuf.reserve(8 * 1024);
            if self.stream.read_buf(&mut self.rbuf).await? == 0 {
                return Err(eof());
            }
        }
    }

    async fn send_query(&mut self, sql: &str) -> Result<(), StreamError> {
        let mut out = BytesMut::new();
        frontend::query(sql, &mut out)?;
        self.write(&out).await
    }

    /// Read until ReadyForQuery; the first error seen is returned after it.
    async fn drain_until_ready(&mut self) -> Result<(), StreamError> {
        let mut err = None;
        loop {
            let (tag, body) = self.read_frame().await?;
            match tag {
                b'Z' => return err.map_or(Ok(()), Err),
                b'E' => {
                    err.get_or_insert(server_error(&body));
                }
                _ => {}
            }
        }
    }

    /// Run one simple query; rows in text format.
    async fn simple_query(&mut self, sql: &str) -> Result<Vec<Row>, StreamError> {
        self.send_query(sql).await?;
        let mut rows = Vec::new();
        let mut err = None;
        loop {
            let (tag, body) = self.read_frame().await?;
            match tag {
                b'Z' => return err.map_or(Ok(rows), Err),
                b'E' => {
                    err.get_or_insert(server_error(&body));
                }
                b'D' => rows.push(parse_data_row(body)?),
                _ => {}
            }
        }
    }
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").finish_non_exhaustive()
    }
}

fn parse_data_row(mut b: Bytes) -> Result<Row, StreamError> {
    let short = || StreamError::Protocol("truncated DataRow".into());
    if b.remaining() < 2 {
        return Err(short());
    }
    let n = b.get_i16();
    let mut row = Vec::new();
    for _ in 0..n.max(0) {
        if b.remaining() < 4 {
            return Err(short());
        }
        let len = b.get_i32();
        match usize::try_from(len) {
            Err(_) => row.push(None),
            Ok(len) if len <= b.remaining() => {
                let v = b.split_to(len);
                row.push(Some(String::from_utf8_lossy(&v).into_owned()));
            }
            Ok(_) => return Err(short()),
        }
    }
    Ok(row)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = ConnUrl::parse("postgres://al%40ice:p%3Ass@127.0.0.1:6543/my%20db?sslmode=disable");
        assert_eq!(
            u.ok(),
            Some(ConnUrl {
                require_tls: false,
                user: "al@ice".into(),
                password: Some("p:ss".into()),
                host: "127.0.0.1".into(),
                port: 6543,
                database: "my db".into(),
            })
        );
        let u = ConnUrl::parse("postgresql://bob@[::1]/").ok();
        assert_eq!(u.as_ref().map(|u| u.host.as_str()), Some("::1"));
        assert_eq!(u.as_ref().map(|u| u.port), Some(5432));
        assert_eq!(u.as_ref().map(|u| u.database.as_str()), Some("bob"));
        assert!(ConnUrl::parse("mysql://x").is_err());
        assert!(ConnUrl::parse("postgres://x@h:notaport/db").is_err());
        assert!(ConnUrl::parse("postgres://x@h/db?sslmode=require").is_ok_and(|u| u.require_tls));
        assert!(ConnUrl::parse("postgres://x@h/db?sslmode=bogus").is_err());
    }

    #[test]
    fn names_and_frames() {
        assert!(check_slot_name("realtide_1").is_ok());
        assert!(check_slot_name("Realtide").is_err());
        assert!(check_slot_name("a\"b").is_err());
        assert!(check_slot_name("").is_err());
        assert_eq!(
            quote_literal(&quote_ident("we'ird\"pub")),
            "'\"we''ird\"\"pub\"'"
        );

        let mut buf = BytesMut::from(&b"Z\0\0\0\x05I d\0\0"[..]);
        let f = take_frame(&mut buf).ok().flatten();
        assert_eq!(f, Some((b'Z', Bytes::from_static(b"I"))));
        assert_eq!(take_frame(&mut buf).ok().flatten(), None);
        let mut bad = BytesMut::from(&b"d\0\0\0\x01"[..]);
        assert!(take_frame(&mut bad).is_err());

        let e = server_error(b"SERROR\0C55006\0Mslot busy\0\0");
        assert_eq!(e.sqlstate(), Some("55006"));
        assert!(e.to_string().contains("slot busy"));
    }
}
