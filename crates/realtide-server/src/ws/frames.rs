//! The server side of RFC 6455 framing for reads: client frames (masked) parsed by
//! [`realtide_protocol::wsframe`] from a small buffer that grows only for large messages and is
//! released afterwards.
//!
//! Idle connections dominate a realtime server's memory, so the read buffer starts empty and
//! grows on demand (a fixed 8 KiB buffer per socket was the largest single cost). Reading is
//! cancel-safe: bytes stay in the buffer until a whole frame is there, so the session's
//! `select!` can poll [`FrameReader::next`] afresh on every turn.

use bytes::BytesMut;
pub use realtide_protocol::wsframe::{Frame, FrameError, Opcode};
use realtide_protocol::wsframe::{Rules, take_frame};
use tokio::io::{AsyncRead, AsyncReadExt};

/// First allocation of a read buffer; enough for a join or a small broadcast.
const INITIAL: usize = 512;
/// A buffer that grew beyond this is released once empty.
const KEEP: usize = 16 * 1024;

/// Why reading stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The socket failed.
    #[error("socket read failed")]
    Io(#[from] std::io::Error),
    /// The peer closed the connection.
    #[error("connection closed")]
    Closed,
    /// The peer broke the framing rules or exceeded the frame size limit.
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// Reads client frames from `io`.
#[derive(Debug)]
pub struct FrameReader<R> {
    io: R,
    buf: BytesMut,
    rules: Rules,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// A reader accepting masked client frames of at most `max` payload bytes.
    pub fn new(io: R, max: usize) -> FrameReader<R> {
        FrameReader {
            io,
            buf: BytesMut::new(),
            rules: Rules::from_client(max),
        }
    }

    /// The next frame, unmasked. Cancel-safe.
    pub async fn next(&mut self) -> Result<Frame, ReadError> {
        loop {
            // Takes nothing until the whole frame is buffered (and reserves room for it).
            if let Some(frame) = take_frame(&mut self.buf, self.rules)? {
                if self.buf.is_empty() && self.buf.capacity() > KEEP {
                    // A large message passed: do not keep its buffer on an idle socket.
                    self.buf = BytesMut::new();
                }
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
            vec![Err("frame of 2000 bytes exceeds the limit of 1000".into())]
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
