//! The server side of RFC 6455 framing for reads: client frames (masked) parsed from a small
//! buffer that grows only for large messages and is released afterwards.
//!
//! Idle connections dominate a realtime server's memory, so the read buffer starts empty and
//! grows on demand (a fixed 8 KiB buffer per socket was the largest single cost). Reading is
//! cancel-safe: bytes stay in the buffer until a whole frame is there, so the session's
//! `select!` can poll [`FrameReader::next`] afresh on every turn.

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// First allocation of a read buffer; enough for a join or a small broadcast.
const INITIAL: usize = 512;
/// A buffer that grew beyond this is released once empty.
const KEEP: usize = 16 * 1024;

/// A frame's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    /// Continuation of a fragmented message.
    Continuation,
    /// UTF-8 text (validated by the caller).
    Text,
    /// Binary.
    Binary,
    /// Close.
    Close,
    /// Ping.
    Ping,
    /// Pong.
    Pong,
}

/// One frame, unmasked.
#[derive(Debug)]
pub struct Frame {
    /// Last frame of its message.
    pub fin: bool,
    /// Type.
    pub opcode: Opcode,
    /// Payload.
    pub payload: Bytes,
}

/// Why reading stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The socket failed.
    #[error("socket read failed")]
    Io(#[from] std::io::Error),
    /// The peer closed the connection.
    #[error("connection closed")]
    Closed,
    /// A frame announced more than the maximum message size.
    #[error("frame too large")]
    TooLarge,
    /// The peer broke the framing rules (unmasked frame, reserved bits, bad control frame).
    #[error("protocol error: {0}")]
    Protocol(&'static str),
}

/// Reads client frames from `io`.
#[derive(Debug)]
pub struct FrameReader<R> {
    io: R,
    buf: BytesMut,
    max: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// A reader accepting frames of at most `max` payload bytes.
    pub fn new(io: R, max: usize) -> FrameReader<R> {
        FrameReader {
            io,
            buf: BytesMut::new(),
            max,
        }
    }

    /// The next frame. Cancel-safe.
    pub async fn next(&mut self) -> Result<Frame, ReadError> {
        loop {
            if let Some(frame) = self.parse()? {
                return Ok(frame);
            }
            if self.buf.capacity() == self.buf.len() {
                self.buf.reserve(INITIAL);
            }
            if self.io.read_buf(&mut self.buf).await? == 0 {
                return Err(ReadError::Closed);
            }
        }
    }

    /// Takes one whole frame from the buffer, or reserves room for the rest of it.
    fn parse(&mut self) -> Result<Option<Frame>, ReadError> {
        let Some(header) = parse_header(&self.buf, self.max)? else {
            return Ok(None);
        };
        let total = header.header_len + header.len;
        if self.buf.len() < total {
            self.buf.reserve(total - self.buf.len());
            return Ok(None);
        }
        let head = self.buf.split_to(header.header_len);
        let mut payload = self.buf.split_to(header.len);
        let mask = head
            .get(header.header_len - 4..)
            .and_then(|m| <[u8; 4]>::try_from(m).ok())
            .unwrap_or([0; 4]);
        for (byte, key) in payload.iter_mut().zip(mask.iter().cycle()) {
            *byte ^= key;
        }
        if self.buf.is_empty() && self.buf.capacity() > KEEP {
            // A large message passed: do not keep its buffer on an idle socket.
            self.buf = BytesMut::new();
        }
        Ok(Some(Frame {
            fin: header.fin,
            opcode: header.opcode,
            payload: payload.freeze(),
        }))
    }
}

struct Header {
    fin: bool,
    opcode: Opcode,
    header_len: usize,
    len: usize,
}

/// Parses a frame header (with its mask key) from the front of `buf`; `None` when incomplete.
fn parse_header(buf: &[u8], max: usize) -> Result<Option<Header>, ReadError> {
    let (Some(&b0), Some(&b1)) = (buf.first(), buf.get(1)) else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(ReadError::Protocol("reserved bits set"));
    }
    if b1 & 0x80 == 0 {
        return Err(ReadError::Protocol("client frame not masked"));
    }
    let fin = b0 & 0x80 != 0;
    let opcode = match b0 & 0x0F {
        0x0 => Opcode::Continuation,
        0x1 => Opcode::Text,
        0x2 => Opcode::Binary,
        0x8 => Opcode::Close,
        0x9 => Opcode::Ping,
        0xA => Opcode::Pong,
        _ => return Err(ReadError::Protocol("unknown opcode")),
    };
    let (len_bytes, len) = match b1 & 0x7F {
        126 => match buf.get(2..4) {
            Some(&[a, b]) => (2, u64::from(u16::from_be_bytes([a, b]))),
            _ => return Ok(None),
        },
        127 => match buf.get(2..10).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
            Some(bytes) => (8, u64::from_be_bytes(bytes)),
            None => return Ok(None),
        },
        short => (0, u64::from(short)),
    };
    let control = matches!(opcode, Opcode::Close | Opcode::Ping | Opcode::Pong);
    if control && (!fin || len > 125) {
        return Err(ReadError::Protocol("invalid control frame"));
    }
    let len = usize::try_from(len).map_err(|_| ReadError::TooLarge)?;
    if len > max {
        return Err(ReadError::TooLarge);
    }
    let header_len = 2 + len_bytes + 4;
    if buf.len() < header_len {
        return Ok(None);
    }
    Ok(Some(Header {
        fin,
        opcode,
        header_len,
        len,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame.
    fn client_frame(b0: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut out = vec![b0];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xFFFF => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
        out
    }

    async fn read_all(bytes: Vec<u8>, max: usize) -> Vec<Result<(bool, Opcode, Vec<u8>), String>> {
        let mut reader = FrameReader::new(&bytes[..], max);
        let mut out = Vec::new();
        loop {
            match reader.next().await {
                Ok(frame) => out.push(Ok((frame.fin, frame.opcode, frame.payload.to_vec()))),
                Err(ReadError::Closed) => return out,
                Err(e) => {
                    out.push(Err(e.to_string()));
                    return out;
                }
            }
        }
    }

    #[tokio::test]
    async fn frames_of_every_length_class() {
        let mut bytes = client_frame(0x81, b"hello", [1, 2, 3, 4]);
        let medium = vec![7u8; 300];
        bytes.extend(client_frame(0x82, &medium, [9, 8, 7, 6]));
        let large = vec![5u8; 70_000];
        bytes.extend(client_frame(0x82, &large, [0, 1, 0, 1]));
        bytes.extend(client_frame(0x89, b"p", [1, 1, 1, 1]));
        let frames = read_all(bytes, 100_000).await;
        assert_eq!(frames.len(), 4);
        assert_eq!(
            frames.first(),
            Some(&Ok((true, Opcode::Text, b"hello".to_vec())))
        );
        assert_eq!(frames.get(1), Some(&Ok((true, Opcode::Binary, medium))));
        assert_eq!(frames.get(2), Some(&Ok((true, Opcode::Binary, large))));
        assert_eq!(
            frames.get(3),
            Some(&Ok((true, Opcode::Ping, b"p".to_vec())))
        );
    }

    #[tokio::test]
    async fn refuses_what_the_protocol_forbids() {
        let too_big = client_frame(0x82, &[0u8; 2000], [1, 2, 3, 4]);
        assert_eq!(
            read_all(too_big, 1000).await,
            vec![Err("frame too large".into())]
        );
        let mut unmasked = client_frame(0x81, b"x", [0; 4]);
        if let Some(b) = unmasked.get_mut(1) {
            *b &= 0x7F;
        }
        assert!(
            read_all(unmasked, 1000)
                .await
                .first()
                .is_some_and(Result::is_err)
        );
        let fragmented_ping = client_frame(0x09, b"x", [1, 2, 3, 4]);
        assert!(
            read_all(fragmented_ping, 1000)
                .await
                .first()
                .is_some_and(Result::is_err)
        );
        let reserved = client_frame(0xC1, b"x", [1, 2, 3, 4]);
        assert!(
            read_all(reserved, 1000)
                .await
                .first()
                .is_some_and(Result::is_err)
        );
        // A truncated frame is not a frame.
        let mut truncated = client_frame(0x81, b"hello", [1, 2, 3, 4]);
        truncated.truncate(8);
        assert_eq!(read_all(truncated, 1000).await, vec![]);
    }
}
