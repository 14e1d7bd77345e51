//! A small RFC 6455 client: the HTTP/1.1 upgrade handshake and frame codec over a `TcpStream`.
//!
//! Kept deliberately minimal and allocation-light for thousands of connections in one process:
//! the reader parses frames out of one growable buffer per connection (cancel-safe: a
//! `select!` that drops [`WsReader::next`] loses no bytes), text and binary payloads are handed
//! out as `Bytes` split off that buffer without copying, fragmented messages are reassembled,
//! and the writer masks every frame as a client must. Extensions (permessage-deflate) are never
//! offered, so reserved bits set by the server are a protocol error.

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::{Buf, Bytes, BytesMut};
use sha1::{Digest, Sha1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
const MAX_HANDSHAKE_BYTES: usize = 16 * 1024;

/// Opcodes of RFC 6455, section 5.2.
mod opcode {
    pub const CONTINUATION: u8 = 0x0;
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
    pub const PONG: u8 = 0xA;
}

/// A whole WebSocket message received from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A text message (UTF-8 is checked by whoever reads it as a `str`).
    Text(Bytes),
    /// A binary message.
    Binary(Bytes),
    /// A ping; the caller answers with a pong carrying the same data.
    Ping(Bytes),
    /// A pong.
    Pong(Bytes),
    /// A close frame with its status code, if any.
    Close(Option<u16>),
}

/// Performs the client handshake on a connected stream: `GET path` with `Host: host`, checks
/// the `101` status and `Sec-WebSocket-Accept`. Bytes the server sent after the response head
/// (an early first frame) are returned so that no frame is lost.
pub async fn handshake(
    stream: &mut TcpStream,
    host: &str,
    path_and_query: &str,
    timeout: Duration,
) -> Result<BytesMut> {
    tokio::time::timeout(timeout, handshake_inner(stream, host, path_and_query))
        .await
        .map_err(|_| anyhow!("websocket handshake timed out after {timeout:?}"))?
}

async fn handshake_inner(
    stream: &mut TcpStream,
    host: &str,
    path_and_query: &str,
) -> Result<BytesMut> {
    let key = BASE64.encode(rand::random::<[u8; 16]>());
    let request = format!(
        "GET {path_and_query} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\
         User-Agent: realtide-loadgen\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;

    let mut buf = BytesMut::with_capacity(1024);
    let head_len = loop {
        if let Some(pos) = find_subslice(&buf, b"\r\n\r\n") {
            break pos + 4;
        }
        ensure!(
            buf.len() < MAX_HANDSHAKE_BYTES,
            "handshake response head too large"
        );
        let n = stream.read_buf(&mut buf).await?;
        ensure!(n > 0, "connection closed during websocket handshake");
    };
    let head = buf.split_to(head_len);
    let head = std::str::from_utf8(&head).context("handshake response is not utf-8")?;
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    if !status.starts_with("HTTP/1.1 101") {
        bail!("websocket upgrade refused: {status}");
    }
    let expected = accept_key(&key);
    let accepted = lines
        .filter_map(|line| line.split_once(':'))
        .any(|(name, value)| {
            name.trim().eq_ignore_ascii_case("sec-websocket-accept") && value.trim() == expected
        });
    ensure!(accepted, "missing or wrong Sec-WebSocket-Accept");
    Ok(buf)
}

/// `base64(sha1(key + GUID))` (RFC 6455, section 4.2.2).
pub fn accept_key(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(GUID.as_bytes());
    BASE64.encode(sha.finalize())
}

fn find_subslice(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// One parsed frame header plus payload.
#[derive(Debug)]
struct Frame {
    fin: bool,
    opcode: u8,
    payload: Bytes,
}

/// Parses one frame from the front of `buf` if it is complete. Server frames must be unmasked
/// and must not set reserved bits.
fn parse_frame(buf: &mut BytesMut, max_payload: usize) -> Result<Option<Frame>> {
    let (b0, b1) = match buf.get(..2) {
        Some(&[b0, b1]) => (b0, b1),
        _ => return Ok(None),
    };
    ensure!(b0 & 0x70 == 0, "reserved bits set without an extension");
    ensure!(b1 & 0x80 == 0, "server frame is masked");
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0F;
    let (header_len, len) = match b1 & 0x7F {
        126 => match buf.get(2..4) {
            Some(&[a, b]) => (4usize, u64::from(u16::from_be_bytes([a, b]))),
            _ => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(bytes) => {
                let mut raw = [0u8; 8];
                raw.copy_from_slice(bytes);
                (10usize, u64::from_be_bytes(raw))
            }
            None => return Ok(None),
        },
        short => (2usize, u64::from(short)),
    };
    let len = usize::try_from(len).map_err(|_| anyhow!("frame too large"))?;
    ensure!(
        len <= max_payload,
        "frame of {len} bytes exceeds {max_payload}"
    );
    if opcode >= opcode::CLOSE {
        ensure!(fin && len <= 125, "invalid control frame");
    }
    if buf.len() < header_len + len {
        buf.reserve(header_len + len - buf.len());
        return Ok(None);
    }
    buf.advance(header_len);
    let payload = buf.split_to(len).freeze();
    Ok(Some(Frame {
        fin,
        opcode,
        payload,
    }))
}

/// The receiving half of a client connection.
#[derive(Debug)]
pub struct WsReader {
    rd: OwnedReadHalf,
    buf: BytesMut,
    /// A fragmented message being reassembled: its opcode and the data so far.
    partial: Option<(u8, BytesMut)>,
    max_message: usize,
}

impl WsReader {
    /// Wraps a read half; `leftover` holds bytes already read past the handshake.
    pub fn new(rd: OwnedReadHalf, leftover: BytesMut, max_message: usize) -> Self {
        let mut buf = leftover;
        buf.reserve(8 * 1024);
        WsReader {
            rd,
            buf,
            partial: None,
            max_message,
        }
    }

    /// The next whole message, or `None` when the server closed the TCP connection.
    /// Cancel-safe: bytes read so far stay in the reader's buffer.
    pub async fn next(&mut self) -> Result<Option<Message>> {
        loop {
            while let Some(frame) = parse_frame(&mut self.buf, self.max_message)? {
                if let Some(message) = self.assemble(frame)? {
                    return Ok(Some(message));
                }
            }
            if self.buf.capacity() - self.buf.len() < 4096 {
                self.buf.reserve(8 * 1024);
            }
            let n = self.rd.read_buf(&mut self.buf).await?;
            if n == 0 {
                return Ok(None);
            }
        }
    }

    fn assemble(&mut self, frame: Frame) -> Result<Option<Message>> {
        match frame.opcode {
            opcode::PING => return Ok(Some(Message::Ping(frame.payload))),
            opcode::PONG => return Ok(Some(Message::Pong(frame.payload))),
            opcode::CLOSE => {
                let code = match frame.payload.get(..2) {
                    Some(&[a, b]) => Some(u16::from_be_bytes([a, b])),
                    _ => None,
                };
                return Ok(Some(Message::Close(code)));
            }
            opcode::TEXT | opcode::BINARY => {
                ensure!(
                    self.partial.is_none(),
                    "new message inside a fragmented one"
                );
                if frame.fin {
                    return Ok(Some(data_message(frame.opcode, frame.payload)));
                }
                self.partial = Some((frame.opcode, BytesMut::from(frame.payload.as_ref())));
            }
            opcode::CONTINUATION => {
                let Some((op, mut data)) = self.partial.take() else {
                    bail!("continuation frame without a message");
                };
                ensure!(
                    data.len() + frame.payload.len() <= self.max_message,
                    "fragmented message too large"
                );
                data.extend_from_slice(&frame.payload);
                if frame.fin {
                    return Ok(Some(data_message(op, data.freeze())));
                }
                self.partial = Some((op, data));
            }
            other => bail!("unknown opcode {other:#x}"),
        }
        Ok(None)
    }
}

fn data_message(op: u8, payload: Bytes) -> Message {
    if op == opcode::TEXT {
        Message::Text(payload)
    } else {
        Message::Binary(payload)
    }
}

/// The sending half of a client connection. Every frame is masked with a fresh key.
#[derive(Debug)]
pub struct WsWriter {
    wr: OwnedWriteHalf,
    scratch: Vec<u8>,
}

impl WsWriter {
    /// Wraps a write half.
    pub fn new(wr: OwnedWriteHalf) -> Self {
        WsWriter {
            wr,
            scratch: Vec::with_capacity(512),
        }
    }

    /// Sends a text message in one frame.
    pub async fn send_text(&mut self, text: &str) -> Result<()> {
        self.send_frame(opcode::TEXT, text.as_bytes()).await
    }

    /// Sends a binary message in one frame.
    pub async fn send_binary(&mut self, data: &[u8]) -> Result<()> {
        self.send_frame(opcode::BINARY, data).await
    }

    /// Answers a ping.
    pub async fn send_pong(&mut self, data: &[u8]) -> Result<()> {
        self.send_frame(opcode::PONG, data).await
    }

    /// Sends a close frame with status 1000 and shuts the write side down.
    pub async fn close(&mut self) -> Result<()> {
        self.send_frame(opcode::CLOSE, &1000u16.to_be_bytes())
            .await?;
        self.wr.shutdown().await?;
        Ok(())
    }

    async fn send_frame(&mut self, op: u8, payload: &[u8]) -> Result<()> {
        encode_frame(&mut self.scratch, op, payload, rand::random::<[u8; 4]>());
        self.wr.write_all(&self.scratch).await?;
        Ok(())
    }
}

/// Encodes one final, masked client frame into `out` (cleared first).
fn encode_frame(out: &mut Vec<u8>, op: u8, payload: &[u8], mask: [u8; 4]) {
    out.clear();
    out.push(0x80 | op);
    let len = payload.len();
    if len < 126 {
        // `len < 126` fits in the 7-bit length field.
        out.push(0x80 | len as u8);
    } else if let Ok(short) = u16::try_from(len) {
        out.push(0x80 | 126);
        out.extend_from_slice(&short.to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    if let Some(body) = out.get_mut(start..) {
        for (byte, key) in body.iter_mut().zip(mask.iter().cycle()) {
            *byte ^= key;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_frame(fin: bool, op: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![if fin { 0x80 } else { 0 } | op];
        let len = payload.len();
        if len < 126 {
            out.push(len as u8);
        } else if len <= 0xFFFF {
            out.push(126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn accept_key_matches_rfc_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn parses_frames_of_every_length_class_incrementally() -> Result<()> {
        for len in [0usize, 5, 125, 126, 300, 65_535, 65_536, 100_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let wire = server_frame(true, opcode::BINARY, &payload);
            let mut buf = BytesMut::new();
            let mut parsed = None;
            for chunk in wire.chunks(977) {
                assert!(parsed.is_none());
                buf.extend_from_slice(chunk);
                parsed = parse_frame(&mut buf, 1 << 20)?;
            }
            let frame = parsed.ok_or_else(|| anyhow!("frame of {len} not parsed"))?;
            assert_eq!(frame.payload.as_ref(), payload.as_slice());
            assert!(buf.is_empty());
        }
        Ok(())
    }

    #[test]
    fn rejects_masked_server_frames_and_oversize() {
        let mut buf = BytesMut::from(&[0x81u8, 0x81, 1, 2, 3, 4, 5][..]);
        assert!(parse_frame(&mut buf, 100).is_err());
        let mut buf = BytesMut::from(&server_frame(true, opcode::TEXT, &[b'a'; 200])[..]);
        assert!(parse_frame(&mut buf, 100).is_err());
    }

    #[test]
    fn encodes_masked_frames() {
        let mut out = Vec::new();
        let mask = [1, 2, 3, 4];
        encode_frame(&mut out, opcode::TEXT, b"hello", mask);
        assert_eq!(out.get(..2), Some(&[0x81u8, 0x85][..]));
        assert_eq!(out.get(2..6), Some(&mask[..]));
        let unmasked: Vec<u8> = out
            .iter()
            .skip(6)
            .zip(mask.iter().cycle())
            .map(|(b, k)| b ^ k)
            .collect();
        assert_eq!(unmasked, b"hello");
        encode_frame(&mut out, opcode::BINARY, &[0u8; 70_000], mask);
        assert_eq!(out.get(1), Some(&0xFFu8));
        assert_eq!(out.len(), 2 + 8 + 4 + 70_000);
    }

    #[tokio::test]
    async fn reassembles_fragments_around_control_frames() -> Result<()> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await?;
            let mut wire = server_frame(false, opcode::TEXT, b"hel");
            wire.extend(server_frame(true, opcode::PING, b"p"));
            wire.extend(server_frame(true, opcode::CONTINUATION, b"lo"));
            wire.extend(server_frame(true, opcode::CLOSE, &1000u16.to_be_bytes()));
            sock.write_all(&wire).await?;
            anyhow::Ok(())
        });
        let stream = TcpStream::connect(addr).await?;
        let (rd, _wr) = stream.into_split();
        let mut reader = WsReader::new(rd, BytesMut::new(), 1 << 20);
        assert_eq!(
            reader.next().await?,
            Some(Message::Ping(Bytes::from_static(b"p")))
        );
        assert_eq!(
            reader.next().await?,
            Some(Message::Text(Bytes::from_static(b"hello")))
        );
        assert_eq!(reader.next().await?, Some(Message::Close(Some(1000))));
        server.await??;
        Ok(())
    }
}
