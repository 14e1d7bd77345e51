//! A small RFC 6455 client over a `TcpStream`: the HTTP/1.1 upgrade handshake here, the frame
//! codec in [`realtide_protocol::wsframe`].
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
use bytes::{Bytes, BytesMut};
use realtide_protocol::wsframe::{self, Assembler, Opcode, Rules, push_frame, take_frame};
use sha1::{Digest, Sha1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
const MAX_HANDSHAKE_BYTES: usize = 16 * 1024;

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

/// The receiving half of a client connection.
#[derive(Debug)]
pub struct WsReader {
    rd: OwnedReadHalf,
    buf: BytesMut,
    rules: Rules,
    assembler: Assembler,
}

impl WsReader {
    /// Wraps a read half; `leftover` holds bytes already read past the handshake. Frames and
    /// reassembled messages are bounded by `max_message` bytes.
    pub fn new(rd: OwnedReadHalf, leftover: BytesMut, max_message: usize) -> Self {
        let mut buf = leftover;
        buf.reserve(8 * 1024);
        WsReader {
            rd,
            buf,
            rules: Rules::from_server(max_message),
            assembler: Assembler::new(max_message),
        }
    }

    /// The next whole message, or `None` when the server closed the TCP connection.
    /// Cancel-safe: bytes read so far stay in the reader's buffer.
    pub async fn next(&mut self) -> Result<Option<Message>> {
        loop {
            while let Some(frame) = take_frame(&mut self.buf, self.rules)? {
                if let Some(message) = self.assembler.push(frame)? {
                    return Ok(Some(Message::from(message)));
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
}

impl From<wsframe::Message> for Message {
    fn from(message: wsframe::Message) -> Message {
        let payload = message.payload;
        match message.opcode {
            Opcode::Ping => Message::Ping(payload),
            Opcode::Pong => Message::Pong(payload),
            Opcode::Close => Message::Close(match payload.get(..2) {
                Some(&[a, b]) => Some(u16::from_be_bytes([a, b])),
                _ => None,
            }),
            Opcode::Text => Message::Text(payload),
            // The assembler hands out no continuation: a reassembled message has its first
            // fragment's opcode.
            Opcode::Binary | Opcode::Continuation => Message::Binary(payload),
        }
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
        self.send_frame(Opcode::Text, text.as_bytes()).await
    }

    /// Sends a binary message in one frame.
    pub async fn send_binary(&mut self, data: &[u8]) -> Result<()> {
        self.send_frame(Opcode::Binary, data).await
    }

    /// Answers a ping.
    pub async fn send_pong(&mut self, data: &[u8]) -> Result<()> {
        self.send_frame(Opcode::Pong, data).await
    }

    /// Sends a close frame with status 1000 and shuts the write side down.
    pub async fn close(&mut self) -> Result<()> {
        self.send_frame(Opcode::Close, &1000u16.to_be_bytes())
            .await?;
        self.wr.shutdown().await?;
        Ok(())
    }

    async fn send_frame(&mut self, opcode: Opcode, payload: &[u8]) -> Result<()> {
        self.scratch.clear();
        push_frame(
            &mut self.scratch,
            opcode,
            payload,
            Some(rand::random::<[u8; 4]>()),
        );
        self.wr.write_all(&self.scratch).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Framing rules are tested in `realtide_protocol::wsframe`; these test the halves around it.

    fn server_frame(fin: bool, opcode: Opcode, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        wsframe::push_header(&mut out, opcode, fin, payload.len(), None);
        out.extend_from_slice(payload);
        out
    }

    /// A reader over a socket whose other end sends `wire` and closes.
    async fn reader_of(wire: Vec<u8>, max_message: usize) -> Result<WsReader> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await?;
            sock.write_all(&wire).await?;
            anyhow::Ok(())
        });
        let (rd, _wr) = TcpStream::connect(addr).await?.into_split();
        Ok(WsReader::new(rd, BytesMut::new(), max_message))
    }

    #[test]
    fn accept_key_matches_rfc_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[tokio::test]
    async fn reassembles_fragments_around_control_frames() -> Result<()> {
        let mut wire = server_frame(false, Opcode::Text, b"hel");
        wire.extend(server_frame(true, Opcode::Ping, b"p"));
        wire.extend(server_frame(true, Opcode::Continuation, b"lo"));
        wire.extend(server_frame(true, Opcode::Binary, &[0u8; 70_000]));
        wire.extend(server_frame(true, Opcode::Close, &1000u16.to_be_bytes()));
        let mut reader = reader_of(wire, 1 << 20).await?;
        assert_eq!(
            reader.next().await?,
            Some(Message::Ping(Bytes::from_static(b"p")))
        );
        assert_eq!(
            reader.next().await?,
            Some(Message::Text(Bytes::from_static(b"hello")))
        );
        assert_eq!(
            reader.next().await?,
            Some(Message::Binary(Bytes::from(vec![0u8; 70_000])))
        );
        assert_eq!(reader.next().await?, Some(Message::Close(Some(1000))));
        assert_eq!(reader.next().await?, None);
        Ok(())
    }

    #[tokio::test]
    async fn refuses_masked_server_frames_and_oversize() -> Result<()> {
        let mut masked = Vec::new();
        push_frame(&mut masked, Opcode::Text, b"x", Some([1, 2, 3, 4]));
        assert!(reader_of(masked, 100).await?.next().await.is_err());
        let large = server_frame(true, Opcode::Text, &[b'a'; 200]);
        assert!(reader_of(large, 100).await?.next().await.is_err());
        Ok(())
    }

    #[tokio::test]
    async fn the_writer_masks_every_frame() -> Result<()> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (_rd, wr) = TcpStream::connect(addr).await?.into_split();
        let (mut peer, _) = listener.accept().await?;
        let mut writer = WsWriter::new(wr);
        writer.send_text("hello").await?;
        writer.send_binary(&[7u8; 300]).await?;
        writer.close().await?;
        let mut wire = Vec::new();
        peer.read_to_end(&mut wire).await?;
        let mut buf = BytesMut::from(wire.as_slice());
        let mut frames = Vec::new();
        while let Some(frame) = take_frame(&mut buf, Rules::from_client(1000))? {
            frames.push((frame.opcode, frame.payload));
        }
        assert!(buf.is_empty());
        assert_eq!(
            frames,
            vec![
                (Opcode::Text, Bytes::from_static(b"hello")),
                (Opcode::Binary, Bytes::from(vec![7u8; 300])),
                (Opcode::Close, Bytes::from_static(&[0x03, 0xE8])),
            ]
        );
        Ok(())
    }
}
