//! A protocol-neutral client for the comparison scenarios: the same load against realtide
//! (Phoenix V2 text frames), the raw ceiling server (which speaks the same frames), or a
//! Socket.IO 4 server (Engine.IO v4 over WebSocket).
//!
//! Deliveries are recognized by their frame prefix and their send timestamp (`"t":<unix µs>`)
//! is read without parsing the JSON, so that the load generator stays cheap per message.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use clap::ValueEnum;
use tokio::net::TcpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::client::Endpoint;
use crate::ws::{Message, WsReader, WsWriter, handshake};

/// Which server protocol to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Protocol {
    /// realtide or any Supabase Realtime server (Phoenix V2 serializer).
    Realtide,
    /// A Socket.IO 4 server (`bench/peers/socketio`): rooms joined with an acknowledged
    /// `join` event, `pub` events relayed to the room as `m`.
    Socketio,
}

enum Out {
    Text(String),
    Pong(Bytes),
    Close,
}

/// One open connection.
pub struct Peer {
    protocol: Protocol,
    reader: WsReader,
    out: mpsc::UnboundedSender<Out>,
    writer: JoinHandle<()>,
    heartbeat: Option<JoinHandle<()>>,
    next_ref: u64,
    /// Join refs by topic (realtide: pushes carry the channel's join ref).
    joins: Vec<(String, String)>,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("protocol", &self.protocol)
            .finish_non_exhaustive()
    }
}

/// What [`Peer::next`] returns.
#[derive(Debug)]
pub enum Event {
    /// A relayed message (the whole frame text).
    Delivery(Bytes),
    /// Any other text frame.
    Other(Bytes),
    /// A binary frame.
    Binary(Bytes),
}

impl Peer {
    /// Connects (from `source` when given) and completes the protocol's opening.
    pub async fn connect(
        endpoint: &Endpoint,
        source: Option<IpAddr>,
        protocol: Protocol,
        token: &str,
        timeout: Duration,
    ) -> Result<Peer> {
        let socket = match endpoint.addr {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        if let Some(ip) = source {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        let mut stream = tokio::time::timeout(timeout, socket.connect(endpoint.addr))
            .await
            .map_err(|_| anyhow!("tcp connect timed out"))??;
        stream.set_nodelay(true)?;
        let path = match protocol {
            Protocol::Realtide => endpoint.socket_path(token),
            Protocol::Socketio => "/socket.io/?EIO=4&transport=websocket".to_owned(),
        };
        let leftover = handshake(&mut stream, &endpoint.host_header, &path, timeout).await?;
        let (rd, wr) = stream.into_split();
        let (out, rx) = mpsc::unbounded_channel();
        let writer = tokio::spawn(write_loop(WsWriter::new(wr), rx));
        let mut peer = Peer {
            protocol,
            reader: WsReader::new(rd, leftover, 16 * 1024 * 1024),
            out,
            writer,
            heartbeat: None,
            next_ref: 1,
            joins: Vec::new(),
        };
        if protocol == Protocol::Socketio {
            // Engine.IO open packet, then connect to the default namespace.
            peer.wait_text(timeout, |t| t.starts_with(b"0{")).await?;
            peer.send("40".to_owned())?;
            peer.wait_text(timeout, |t| t.starts_with(b"40")).await?;
        } else {
            peer.start_heartbeat();
        }
        Ok(peer)
    }

    fn send(&self, text: String) -> Result<()> {
        self.out
            .send(Out::Text(text))
            .map_err(|_| anyhow!("connection writer stopped"))
    }

    fn reference(&mut self) -> String {
        let r = self.next_ref;
        self.next_ref += 1;
        r.to_string()
    }

    /// Phoenix heartbeats every 25 s keep idle connections past the server's idle timeout.
    fn start_heartbeat(&mut self) {
        let out = self.out.clone();
        self.heartbeat = Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(25));
            tick.tick().await;
            let mut n = 1_000_000_000u64;
            loop {
                tick.tick().await;
                n += 1;
                let frame = format!("[null,\"{n}\",\"phoenix\",\"heartbeat\",{{}}]");
                if out.send(Out::Text(frame)).is_err() {
                    return;
                }
            }
        }));
    }

    /// Joins `topic` (realtide: `realtime:<topic>`; Socket.IO: room `topic`) with `config`
    /// (realtide join config JSON) and waits for the acknowledgement.
    pub async fn join(&mut self, topic: &str, config: &str, timeout: Duration) -> Result<()> {
        let reference = self.reference();
        match self.protocol {
            Protocol::Realtide => {
                self.send(format!(
                    "[\"{reference}\",\"{reference}\",\"realtime:{topic}\",\"phx_join\",{{\"config\":{config}}}]"
                ))?;
                let needle = format!(",\"{reference}\",\"realtime:{topic}\",\"phx_reply\"");
                let reply = self
                    .wait_text(timeout, |t| find(t, needle.as_bytes()).is_some())
                    .await?;
                if find(&reply, b"\"status\":\"ok\"").is_none() {
                    bail!("join refused: {}", String::from_utf8_lossy(&reply));
                }
                self.joins.push((topic.to_owned(), reference));
            }
            Protocol::Socketio => {
                self.send(format!("42{reference}[\"join\",\"{topic}\"]"))?;
                let needle = format!("43{reference}[");
                self.wait_text(timeout, |t| t.starts_with(needle.as_bytes()))
                    .await?;
            }
        }
        Ok(())
    }

    /// Sends `payload` (a JSON object) to everyone else on `topic`; `ack` asks realtide for a
    /// reply (returned by [`Peer::next`] as [`Event::Other`]).
    pub fn publish(&mut self, topic: &str, payload: &str, ack: bool) -> Result<()> {
        match self.protocol {
            Protocol::Realtide => {
                let join_ref = self
                    .joins
                    .iter()
                    .find(|(t, _)| t == topic)
                    .map(|(_, r)| r.clone())
                    .unwrap_or_default();
                let reference = if ack { self.reference() } else { String::new() };
                let reference = if ack {
                    format!("\"{reference}\"")
                } else {
                    "null".to_owned()
                };
                self.send(format!(
                    "[\"{join_ref}\",{reference},\"realtime:{topic}\",\"broadcast\",{{\"type\":\"broadcast\",\"event\":\"m\",\"payload\":{payload}}}]"
                ))
            }
            Protocol::Socketio => self.send(format!("42[\"pub\",\"{topic}\",{payload}]")),
        }
    }

    /// Sends a raw text frame (scenario-specific pushes).
    pub fn send_text(&self, text: String) -> Result<()> {
        self.send(text)
    }

    /// The next data frame; pings (WebSocket and Engine.IO) are answered. `None` on close.
    pub async fn next(&mut self) -> Result<Option<Event>> {
        loop {
            match self.reader.next().await? {
                None | Some(Message::Close(_)) => return Ok(None),
                Some(Message::Ping(data)) => {
                    let _ = self.out.send(Out::Pong(data));
                }
                Some(Message::Pong(_)) => {}
                Some(Message::Binary(data)) => return Ok(Some(Event::Binary(data))),
                Some(Message::Text(text)) => {
                    if self.protocol == Protocol::Socketio && text.as_ref() == b"2" {
                        let _ = self.out.send(Out::Text("3".to_owned()));
                        continue;
                    }
                    let delivery = match self.protocol {
                        Protocol::Realtide => {
                            text.starts_with(b"[null,null,")
                                && find(&text, b",\"broadcast\",").is_some()
                        }
                        Protocol::Socketio => text.starts_with(b"42[\"m\""),
                    };
                    return Ok(Some(if delivery {
                        Event::Delivery(text)
                    } else {
                        Event::Other(text)
                    }));
                }
            }
        }
    }

    async fn wait_text(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&[u8]) -> bool,
    ) -> Result<Bytes> {
        let wait = async {
            loop {
                match self.next().await? {
                    Some(Event::Other(t) | Event::Delivery(t)) if pred(&t) => return Ok(t),
                    Some(_) => {}
                    None => bail!("server closed the connection"),
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| anyhow!("no expected frame within {timeout:?}"))?
    }

    /// Closes the connection (best effort).
    pub async fn close(mut self) {
        if let Some(h) = &self.heartbeat {
            h.abort();
        }
        let _ = self.out.send(Out::Close);
        let _ = tokio::time::timeout(Duration::from_secs(1), &mut self.writer).await;
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Some(h) = &self.heartbeat {
            h.abort();
        }
    }
}

async fn write_loop(mut writer: WsWriter, mut rx: mpsc::UnboundedReceiver<Out>) {
    while let Some(item) = rx.recv().await {
        let result = match item {
            Out::Text(text) => writer.send_text(&text).await,
            Out::Pong(data) => writer.send_pong(&data).await,
            Out::Close => {
                let _ = writer.close().await;
                return;
            }
        };
        if result.is_err() {
            return;
        }
    }
}

/// Position of `needle` in `haystack`.
pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The send timestamp `"t":<digits>` carried in a payload, in unix microseconds.
pub fn timestamp(frame: &[u8]) -> Option<u64> {
    let mut start = find(frame, b"\"t\":")? + 4;
    // jsonb renders `"t": 1`.
    while frame.get(start) == Some(&b' ') {
        start += 1;
    }
    let digits = frame.get(start..)?;
    let end = digits
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(digits.len());
    std::str::from_utf8(digits.get(..end)?).ok()?.parse().ok()
}

/// Unix time in microseconds now.
pub fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A payload object of about `size` bytes carrying the send time and a sequence number.
pub fn payload(size: usize, seq: u64) -> String {
    let head = format!("{{\"t\":{},\"s\":{seq},\"p\":\"", now_micros());
    let pad = size.saturating_sub(head.len() + 2);
    let mut out = String::with_capacity(head.len() + pad + 2);
    out.push_str(&head);
    out.extend(std::iter::repeat_n('x', pad));
    out.push_str("\"}");
    out
}

/// Reads `/proc/<pid>/status` `VmRSS` and `VmHWM` in KiB, and `/proc/<pid>/stat` user and
/// system CPU seconds.
pub fn process_usage(pid: u32) -> Result<(u64, u64, f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 (1-based) of stat, i.e. 11 and 12 after the ')'.
    Ok((
        field("VmRSS:"),
        field("VmHWM:"),
        ticks(11) / 100.0,
        ticks(12) / 100.0,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_timestamps_and_builds_payloads() {
        let p = payload(100, 7);
        assert!(p.len() >= 100 && p.len() <= 102, "{}", p.len());
        let v: serde_json::Value = serde_json::from_str(&p).unwrap_or_default();
        assert_eq!(v.get("s"), Some(&serde_json::json!(7)));
        let frame = format!(
            "[null,null,\"realtime:a\",\"broadcast\",{{\"type\":\"broadcast\",\"event\":\"m\",\"payload\":{p}}}]"
        );
        assert!(timestamp(frame.as_bytes()).is_some_and(|t| t > 1_600_000_000_000_000));
        assert_eq!(timestamp(b"{\"x\":1}"), None);
        assert_eq!(timestamp(b"{\"s\": 1, \"t\": 42}"), Some(42));
    }
}
