//! Supabase Realtime (Phoenix channels, V2 serializer) clients for load scenarios.
//!
//! [`Endpoint`] is the parsed server URL, [`SourceAddrs`] spreads connections over loopback
//! source addresses (each `127.0.0.x` has its own ephemeral port range towards the server),
//! and [`Connection`] is one WebSocket: the scenario task owns the receiving side and reads
//! whole frames, while a small writer task owns the sending side so that pongs, heartbeats and
//! pushes can be queued from anywhere without blocking reads.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use realtide_protocol::Vsn;
use realtide_protocol::encode::text_frame;
use realtide_protocol::frame::{Inbound, InboundPayload, decode_text};
use tokio::net::TcpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::ws::{Message, WsReader, WsWriter, handshake};

/// A `ws://host:port/path?query` server URL.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `host:port` as sent in the `Host` header.
    pub host_header: String,
    /// The resolved server address.
    pub addr: SocketAddr,
    /// Path, e.g. `/socket/websocket`.
    pub path: String,
    /// Query parameters given in the URL (without `?`), kept in every request.
    pub query: String,
}

impl Endpoint {
    /// Parses a `ws://` URL (`wss` is not supported: the load generator measures the server,
    /// not TLS). A URL without path gets `/socket/websocket`.
    pub fn parse(url: &str) -> Result<Endpoint> {
        let rest = url
            .strip_prefix("ws://")
            .or_else(|| url.strip_prefix("http://"))
            .ok_or_else(|| anyhow!("server url must start with ws:// (got {url})"))?;
        let (authority, path_query) = match rest.find('/') {
            Some(pos) => rest.split_at(pos),
            None => (rest, "/socket/websocket"),
        };
        let (path, query) = match path_query.split_once('?') {
            Some((path, query)) => (path.to_owned(), query.to_owned()),
            None => (path_query.to_owned(), String::new()),
        };
        let authority_with_port = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        let addr = authority_with_port
            .to_socket_addrs()
            .with_context(|| format!("resolving {authority_with_port}"))?
            .next()
            .ok_or_else(|| anyhow!("{authority_with_port} resolves to nothing"))?;
        Ok(Endpoint {
            host_header: authority.to_owned(),
            addr,
            path,
            query,
        })
    }

    /// Path and query for a socket: the URL's own query plus `params` (values must already be
    /// URL-safe, as JWTs and version strings are).
    pub fn path_and_query(&self, params: &[(&str, &str)]) -> String {
        let mut out = self.path.clone();
        let mut sep = '?';
        if !self.query.is_empty() {
            out.push(sep);
            out.push_str(&self.query);
            sep = '&';
        }
        for (name, value) in params {
            out.push(sep);
            out.push_str(name);
            out.push('=');
            out.push_str(value);
            sep = '&';
        }
        out
    }

    /// The usual Realtime socket path: `apikey` and `vsn=2.0.0`.
    pub fn socket_path(&self, apikey: &str) -> String {
        self.path_and_query(&[("apikey", apikey), ("vsn", "2.0.0")])
    }
}

/// Loopback source addresses to bind client sockets to, so that many connections to one
/// server port do not exhaust one address's ephemeral ports (about 28,000 per source address
/// with Linux's default range).
#[derive(Debug, Clone)]
pub struct SourceAddrs {
    ips: Vec<IpAddr>,
}

impl SourceAddrs {
    /// `127.0.0.1 ..= 127.0.0.count` when the server is on loopback; no binding otherwise or
    /// when `count` is 0 (the kernel then picks the source address).
    pub fn loopback(count: u8, server: &SocketAddr) -> SourceAddrs {
        if !server.ip().is_loopback() {
            return SourceAddrs { ips: Vec::new() };
        }
        let ips = (1..=count)
            .map(|last| IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))
            .collect();
        SourceAddrs { ips }
    }

    /// The source address of the `index`-th connection (round robin).
    pub fn pick(&self, index: usize) -> Option<IpAddr> {
        match self.ips.len() {
            0 => None,
            n => self.ips.get(index % n).copied(),
        }
    }

    /// How many addresses are in use (0: kernel's choice).
    pub fn len(&self) -> usize {
        self.ips.len()
    }

    /// Whether the kernel chooses the source address.
    pub fn is_empty(&self) -> bool {
        self.ips.is_empty()
    }
}

/// Connection tunables.
#[derive(Debug, Clone, Copy)]
pub struct ConnectOptions {
    /// Bound on TCP connect plus the upgrade handshake.
    pub timeout: Duration,
    /// Largest accepted message.
    pub max_message: usize,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            timeout: Duration::from_secs(15),
            max_message: 8 * 1024 * 1024,
        }
    }
}

/// What the writer task sends.
#[derive(Debug)]
enum Outgoing {
    Text(String),
    Pong(Bytes),
    Close,
}

/// A received frame.
#[derive(Debug)]
pub enum Received {
    /// A text frame, decoded as a V2 Phoenix message.
    Phoenix(Inbound),
    /// A binary frame (V2 user broadcast), undecoded.
    Binary(Bytes),
}

/// One open WebSocket speaking the V2 serializer.
#[derive(Debug)]
pub struct Connection {
    reader: WsReader,
    out: mpsc::UnboundedSender<Outgoing>,
    writer: JoinHandle<Result<()>>,
    heartbeat: Option<JoinHandle<()>>,
    refs: Arc<AtomicU64>,
    /// The local address (source IP and port) of the socket.
    pub local_addr: SocketAddr,
}

/// Opens a connection: bind to `source` (if any), connect, upgrade with `path_and_query`.
pub async fn connect(
    endpoint: &Endpoint,
    source: Option<IpAddr>,
    path_and_query: &str,
    options: ConnectOptions,
) -> Result<Connection> {
    let socket = match endpoint.addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Some(ip) = source {
        socket
            .bind(SocketAddr::new(ip, 0))
            .with_context(|| format!("binding source address {ip}"))?;
    }
    let mut stream = tokio::time::timeout(options.timeout, socket.connect(endpoint.addr))
        .await
        .map_err(|_| anyhow!("tcp connect to {} timed out", endpoint.addr))?
        .with_context(|| format!("connecting to {}", endpoint.addr))?;
    stream.set_nodelay(true)?;
    let local_addr = stream.local_addr()?;
    let leftover = handshake(
        &mut stream,
        &endpoint.host_header,
        path_and_query,
        options.timeout,
    )
    .await?;
    let (rd, wr) = stream.into_split();
    let (out, rx) = mpsc::unbounded_channel();
    let writer = tokio::spawn(write_loop(WsWriter::new(wr), rx));
    Ok(Connection {
        reader: WsReader::new(rd, leftover, options.max_message),
        out,
        writer,
        heartbeat: None,
        refs: Arc::new(AtomicU64::new(1)),
        local_addr,
    })
}

async fn write_loop(mut writer: WsWriter, mut rx: mpsc::UnboundedReceiver<Outgoing>) -> Result<()> {
    while let Some(item) = rx.recv().await {
        match item {
            Outgoing::Text(text) => writer.send_text(&text).await?,
            Outgoing::Pong(data) => writer.send_pong(&data).await?,
            Outgoing::Close => {
                writer.close().await?;
                break;
            }
        }
    }
    Ok(())
}

impl Connection {
    /// A fresh message ref.
    pub fn next_ref(&self) -> String {
        self.refs.fetch_add(1, Ordering::Relaxed).to_string()
    }

    /// Queues a raw text frame.
    pub fn send_text(&self, text: String) -> Result<()> {
        self.out
            .send(Outgoing::Text(text))
            .map_err(|_| anyhow!("connection writer stopped"))
    }

    /// Queues a V2 push `[join_ref, ref, topic, event, payload]`; returns its ref.
    /// `payload` must be JSON text.
    pub fn push(
        &self,
        join_ref: Option<&str>,
        topic: &str,
        event: &str,
        payload: &str,
    ) -> Result<String> {
        let reference = self.next_ref();
        let frame = text_frame(Vsn::V2, join_ref, Some(&reference), topic, event, payload);
        self.send_text(frame)?;
        Ok(reference)
    }

    /// Queues a `phx_join` of `topic` with the given join payload; the ref doubles as join ref.
    pub fn join(&self, topic: &str, payload: &str) -> Result<String> {
        let reference = self.next_ref();
        let frame = text_frame(
            Vsn::V2,
            Some(&reference),
            Some(&reference),
            topic,
            "phx_join",
            payload,
        );
        self.send_text(frame)?;
        Ok(reference)
    }

    /// Sends a Phoenix heartbeat every `every` until the connection is dropped (the server
    /// closes sockets that stay silent for its idle timeout, 60 s by default).
    pub fn start_heartbeat(&mut self, every: Duration) {
        let out = self.out.clone();
        let refs = Arc::clone(&self.refs);
        self.heartbeat = Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let reference = refs.fetch_add(1, Ordering::Relaxed).to_string();
                let frame = text_frame(
                    Vsn::V2,
                    None,
                    Some(&reference),
                    "phoenix",
                    "heartbeat",
                    "{}",
                );
                if out.send(Outgoing::Text(frame)).is_err() {
                    break;
                }
            }
        }));
    }

    /// The next data message; pings are answered and pongs skipped. `None` when the server
    /// closed the connection (close frame or EOF).
    pub async fn recv(&mut self) -> Result<Option<Received>> {
        loop {
            match self.reader.next().await? {
                None | Some(Message::Close(_)) => return Ok(None),
                Some(Message::Ping(data)) => {
                    // A failed pong means the writer is gone; the next read will tell.
                    let _ = self.out.send(Outgoing::Pong(data));
                }
                Some(Message::Pong(_)) => {}
                Some(Message::Binary(data)) => return Ok(Some(Received::Binary(data))),
                Some(Message::Text(data)) => {
                    let text = std::str::from_utf8(&data).context("text frame is not utf-8")?;
                    let inbound = decode_text(Vsn::V2, text)
                        .map_err(|e| anyhow!("undecodable frame {text:.200}: {e}"))?;
                    return Ok(Some(Received::Phoenix(inbound)));
                }
            }
        }
    }

    /// Reads until a Phoenix message satisfies `pred`, failing on close or timeout.
    pub async fn recv_until<F>(&mut self, timeout: Duration, mut pred: F) -> Result<Inbound>
    where
        F: FnMut(&Inbound) -> bool,
    {
        let wait = async {
            loop {
                match self.recv().await? {
                    Some(Received::Phoenix(inbound)) if pred(&inbound) => return Ok(inbound),
                    Some(_) => {}
                    None => bail!("server closed the connection"),
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| anyhow!("no expected message within {timeout:?}"))?
    }

    /// Sends a close frame and waits briefly for the writer to finish.
    pub async fn close(mut self) {
        if let Some(heartbeat) = &self.heartbeat {
            heartbeat.abort();
        }
        let _ = self.out.send(Outgoing::Close);
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut self.writer).await;
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if let Some(heartbeat) = &self.heartbeat {
            heartbeat.abort();
        }
    }
}

/// The raw JSON text of a message's payload (`""` for binary payloads).
pub fn payload_json(inbound: &Inbound) -> &str {
    match &inbound.payload {
        InboundPayload::Json(raw) => raw.get(),
        _ => "",
    }
}

/// Whether `inbound` is the `phx_reply` to `reference` with status `ok`; `Err` with the
/// payload when the reply is an error.
pub fn reply_ok(inbound: &Inbound, reference: &str) -> Option<Result<()>> {
    if inbound.event != "phx_reply"
        || inbound.reference.as_ref().map(|r| r.as_str()) != Some(reference)
    {
        return None;
    }
    let payload = payload_json(inbound);
    let ok = serde_json::from_str::<serde_json::Value>(payload)
        .ok()
        .and_then(|v| v.get("status").and_then(|s| s.as_str()).map(|s| s == "ok"))
        .unwrap_or(false);
    Some(if ok {
        Ok(())
    } else {
        Err(anyhow!("join refused: {payload:.300}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() -> Result<()> {
        let e = Endpoint::parse("ws://127.0.0.1:4000/socket/websocket?log_level=info")?;
        assert_eq!(e.addr, "127.0.0.1:4000".parse()?);
        assert_eq!(e.host_header, "127.0.0.1:4000");
        assert_eq!(
            e.socket_path("tok"),
            "/socket/websocket?log_level=info&apikey=tok&vsn=2.0.0"
        );
        let e = Endpoint::parse("ws://127.0.0.1:4001")?;
        assert_eq!(e.socket_path("t"), "/socket/websocket?apikey=t&vsn=2.0.0");
        assert!(Endpoint::parse("wss://x").is_err());
        Ok(())
    }

    #[test]
    fn spreads_source_addresses() -> Result<()> {
        let server: SocketAddr = "127.0.0.1:4000".parse()?;
        let addrs = SourceAddrs::loopback(4, &server);
        assert_eq!(addrs.pick(0), Some("127.0.0.1".parse()?));
        assert_eq!(addrs.pick(5), Some("127.0.0.2".parse()?));
        let remote: SocketAddr = "10.0.0.1:4000".parse()?;
        assert!(SourceAddrs::loopback(4, &remote).is_empty());
        Ok(())
    }
}
