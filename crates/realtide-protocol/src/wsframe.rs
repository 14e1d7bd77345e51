//! RFC 6455 framing (section 5): opcodes, header encoding, masking, a frame parser that never
//! panics on peer bytes, and reassembly of fragmented messages.
//!
//! Pure: the server, the load generator and the tests' client own their sockets and buffers and
//! call in here. The parser checks what both ends of a realtide connection rely on: the
//! masking rule of the sending side, zero reserved bits (no extension is ever negotiated),
//! known opcodes, whole and short control frames, a 64-bit length with its top bit clear, and
//! the reader's payload limit, which is checked as soon as the length is readable so that an
//! announced giant frame is refused before any of it is buffered.

use bytes::{Buf, Bytes, BytesMut};

/// Largest payload of a control frame (section 5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

const FIN: u8 = 0x80;
const RSV: u8 = 0x70;
const OPCODE: u8 = 0x0F;
const MASKED: u8 = 0x80;
const LEN7: u8 = 0x7F;
/// 7-bit length values announcing a 16-bit and a 64-bit length.
const LEN16: u8 = 126;
const LEN64: u8 = 127;

/// A frame's type (section 5.2). Reserved opcodes have no value: converting one is an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Opcode {
    /// A further fragment of the message in progress.
    Continuation,
    /// UTF-8 text (checked by whoever reads it as text).
    Text,
    /// Binary data.
    Binary,
    /// Close, with an optional status code and reason.
    Close,
    /// Ping.
    Ping,
    /// Pong.
    Pong,
}

impl Opcode {
    /// The 4-bit value on the wire.
    pub const fn bits(self) -> u8 {
        match self {
            Opcode::Continuation => 0x0,
            Opcode::Text => 0x1,
            Opcode::Binary => 0x2,
            Opcode::Close => 0x8,
            Opcode::Ping => 0x9,
            Opcode::Pong => 0xA,
        }
    }

    /// Close, ping and pong: never fragmented, at most 125 bytes, allowed between fragments.
    pub const fn is_control(self) -> bool {
        matches!(self, Opcode::Close | Opcode::Ping | Opcode::Pong)
    }
}

impl TryFrom<u8> for Opcode {
    type Error = FrameError;

    /// The opcode of a 4-bit value; reserved values (and anything above 4 bits) are an error.
    fn try_from(bits: u8) -> Result<Opcode, FrameError> {
        match bits {
            0x0 => Ok(Opcode::Continuation),
            0x1 => Ok(Opcode::Text),
            0x2 => Ok(Opcode::Binary),
            0x8 => Ok(Opcode::Close),
            0x9 => Ok(Opcode::Ping),
            0xA => Ok(Opcode::Pong),
            other => Err(FrameError::ReservedOpcode(other)),
        }
    }
}

/// Why bytes are not an acceptable frame or a fragment does not fit the message in progress.
/// Every variant is fatal for the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// RSV1-3 set; realtide never negotiates an extension that would define them.
    #[error("reserved bits set without an extension")]
    ReservedBits,
    /// An opcode RFC 6455 reserves.
    #[error("reserved opcode {0:#x}")]
    ReservedOpcode(u8),
    /// A client frame without a masking key (section 5.1).
    #[error("client frame not masked")]
    UnmaskedClientFrame,
    /// A server frame with a masking key (section 5.1).
    #[error("server frame is masked")]
    MaskedServerFrame,
    /// A close, ping or pong without FIN.
    #[error("fragmented control frame")]
    FragmentedControlFrame,
    /// A close, ping or pong announcing more than 125 bytes.
    #[error("control frame of {0} bytes, more than 125")]
    LongControlFrame(u64),
    /// A 64-bit length with its most significant bit set (section 5.2).
    #[error("64-bit payload length with its most significant bit set")]
    LengthTopBitSet,
    /// A frame announcing more payload than the reader accepts.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// The announced payload length.
        len: u64,
        /// The reader's limit.
        max: usize,
    },
    /// Fragments adding up to more than the message limit.
    #[error("fragmented message exceeds the limit of {max} bytes")]
    MessageTooLarge {
        /// The assembler's limit.
        max: usize,
    },
    /// A continuation frame with no fragmented message in progress.
    #[error("continuation frame without a started message")]
    UnexpectedContinuation,
    /// A text or binary frame while a fragmented message is still in progress.
    #[error("new message inside a fragmented one")]
    InterruptedMessage,
}

impl FrameError {
    /// Errors about size, which a server answers with close code 1009 (message too big)
    /// rather than 1002 (protocol error). A length with its top bit set announces at least
    /// 2^63 bytes, more than any limit.
    pub fn is_too_large(&self) -> bool {
        matches!(
            self,
            FrameError::TooLarge { .. }
                | FrameError::MessageTooLarge { .. }
                | FrameError::LengthTopBitSet
        )
    }
}

/// Which end of the connection sent the frames being read: clients must mask, servers must not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    /// Frames from a client, read by a server.
    Client,
    /// Frames from a server, read by a client.
    Server,
}

/// What a reader accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// The side that sent the frames.
    pub sender: Sender,
    /// Largest payload of one frame. The buffer grows to hold a whole frame this large.
    pub max_payload: usize,
}

impl Rules {
    /// Rules for a server reading client frames (masked).
    pub const fn from_client(max_payload: usize) -> Rules {
        Rules {
            sender: Sender::Client,
            max_payload,
        }
    }

    /// Rules for a client reading server frames (unmasked).
    pub const fn from_server(max_payload: usize) -> Rules {
        Rules {
            sender: Sender::Server,
            max_payload,
        }
    }
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Last frame of its message.
    pub fin: bool,
    /// The frame's type.
    pub opcode: Opcode,
    /// The masking key, present exactly on client frames.
    pub mask: Option<[u8; 4]>,
    /// Bytes of header, masking key included.
    pub header_len: usize,
    /// Bytes of payload after the header.
    pub payload_len: usize,
}

impl Header {
    /// Bytes of the whole frame.
    pub fn frame_len(&self) -> usize {
        // At most isize::MAX: `parse_header` refuses longer frames.
        self.header_len.saturating_add(self.payload_len)
    }
}

/// One frame, unmasked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Last frame of its message.
    pub fin: bool,
    /// The frame's type.
    pub opcode: Opcode,
    /// The payload.
    pub payload: Bytes,
}

/// Parses the header at the front of `buf`: `Ok(None)` when more bytes are needed to tell,
/// an error as soon as the bytes read so far break a rule.
pub fn parse_header(buf: &[u8], rules: Rules) -> Result<Option<Header>, FrameError> {
    let (Some(&b0), Some(&b1)) = (buf.first(), buf.get(1)) else {
        return Ok(None);
    };
    if b0 & RSV != 0 {
        return Err(FrameError::ReservedBits);
    }
    let masked = b1 & MASKED != 0;
    match (rules.sender, masked) {
        (Sender::Client, false) => return Err(FrameError::UnmaskedClientFrame),
        (Sender::Server, true) => return Err(FrameError::MaskedServerFrame),
        _ => {}
    }
    let fin = b0 & FIN != 0;
    let opcode = Opcode::try_from(b0 & OPCODE)?;
    let (len_bytes, len) = match b1 & LEN7 {
        LEN16 => match buf.get(2..4) {
            Some(&[a, b]) => (2, u64::from(u16::from_be_bytes([a, b]))),
            _ => return Ok(None),
        },
        LEN64 => match buf.get(2..10).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
            Some(bytes) => (8, u64::from_be_bytes(bytes)),
            None => return Ok(None),
        },
        short => (0, u64::from(short)),
    };
    if len >> 63 != 0 {
        return Err(FrameError::LengthTopBitSet);
    }
    if opcode.is_control() {
        if !fin {
            return Err(FrameError::FragmentedControlFrame);
        }
        if len > MAX_CONTROL_PAYLOAD as u64 {
            return Err(FrameError::LongControlFrame(len));
        }
    }
    let too_large = FrameError::TooLarge {
        len,
        max: rules.max_payload,
    };
    let payload_len = match usize::try_from(len) {
        Ok(n) if n <= rules.max_payload => n,
        _ => return Err(too_large),
    };
    let key_at = 2 + len_bytes;
    let (mask, header_len) = if masked {
        match buf
            .get(key_at..key_at + 4)
            .and_then(|k| <[u8; 4]>::try_from(k).ok())
        {
            Some(key) => (Some(key), key_at + 4),
            None => return Ok(None),
        }
    } else {
        (None, key_at)
    };
    // No buffer can hold more than isize::MAX bytes: refused here, not a panic in `reserve`.
    if payload_len > isize::MAX.unsigned_abs() - header_len {
        return Err(too_large);
    }
    Ok(Some(Header {
        fin,
        opcode,
        mask,
        header_len,
        payload_len,
    }))
}

/// Takes one whole frame from the front of `buf`, unmasked. `Ok(None)` when the frame is not
/// all there yet; the buffer then has room reserved for the rest of it, and nothing was taken,
/// so a caller may read more and call again.
pub fn take_frame(buf: &mut BytesMut, rules: Rules) -> Result<Option<Frame>, FrameError> {
    let Some(header) = parse_header(buf, rules)? else {
        return Ok(None);
    };
    let total = header.frame_len();
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    // In bounds: `buf` holds `total` = header + payload bytes.
    buf.advance(header.header_len);
    let mut payload = buf.split_to(header.payload_len);
    if let Some(key) = header.mask {
        apply_mask(&mut payload, key);
    }
    Ok(Some(Frame {
        fin: header.fin,
        opcode: header.opcode,
        payload: payload.freeze(),
    }))
}

/// XORs `data` with the masking key repeated from its first byte (section 5.3); masking and
/// unmasking are the same operation.
pub fn apply_mask(data: &mut [u8], key: [u8; 4]) {
    let [k0, k1, k2, k3] = key;
    let wide = u64::from_ne_bytes([k0, k1, k2, k3, k0, k1, k2, k3]);
    let mut words = data.chunks_exact_mut(8);
    for word in &mut words {
        if let Ok(bytes) = <[u8; 8]>::try_from(&*word) {
            word.copy_from_slice(&(u64::from_ne_bytes(bytes) ^ wide).to_ne_bytes());
        }
    }
    // The tail starts at a multiple of 8, so at key byte 0.
    for (byte, k) in words.into_remainder().iter_mut().zip(key.iter().cycle()) {
        *byte ^= k;
    }
}

/// Appends the header of a frame with a payload of `len` bytes; with `mask`, the frame is a
/// client's and the payload that follows must be masked with the same key.
pub fn push_header(
    out: &mut Vec<u8>,
    opcode: Opcode,
    fin: bool,
    len: usize,
    mask: Option<[u8; 4]>,
) {
    out.push(if fin { FIN } else { 0 } | opcode.bits());
    let masked = if mask.is_some() { MASKED } else { 0 };
    if let Some(short) = u8::try_from(len).ok().filter(|&n| n < LEN16) {
        out.push(masked | short);
    } else if let Ok(medium) = u16::try_from(len) {
        out.push(masked | LEN16);
        out.extend_from_slice(&medium.to_be_bytes());
    } else {
        out.push(masked | LEN64);
        // usize is at most 64 bits on every supported target.
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    if let Some(key) = mask {
        out.extend_from_slice(&key);
    }
}

/// Appends a final frame carrying `payload`, masked with `mask` when given.
pub fn push_frame(out: &mut Vec<u8>, opcode: Opcode, payload: &[u8], mask: Option<[u8; 4]>) {
    push_header(out, opcode, true, payload.len(), mask);
    let start = out.len();
    out.extend_from_slice(payload);
    if let (Some(key), Some(body)) = (mask, out.get_mut(start..)) {
        apply_mask(body, key);
    }
}

/// A whole message: a data message reassembled from its fragments, or a control frame passed
/// through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Text or binary (the opcode of the first fragment), or the control frame's opcode.
    pub opcode: Opcode,
    /// The whole payload.
    pub payload: Bytes,
}

/// Reassembles fragmented messages (section 5.4), bounded in total size. Control frames may
/// arrive between fragments and come out at once; the message in progress is kept.
#[derive(Debug)]
pub struct Assembler {
    /// Opcode of the message in progress.
    started: Option<Opcode>,
    buffer: BytesMut,
    max_message: usize,
}

impl Assembler {
    /// An assembler for messages of at most `max_message` bytes.
    pub fn new(max_message: usize) -> Assembler {
        Assembler {
            started: None,
            buffer: BytesMut::new(),
            max_message,
        }
    }

    /// Takes the next frame: the message it completes, if any.
    pub fn push(&mut self, frame: Frame) -> Result<Option<Message>, FrameError> {
        let Frame {
            fin,
            opcode,
            payload,
        } = frame;
        match (opcode, self.started) {
            (Opcode::Close | Opcode::Ping | Opcode::Pong, _) => {
                Ok(Some(Message { opcode, payload }))
            }
            // A single-frame message: already bounded by the frame limit, handed on uncopied.
            (Opcode::Text | Opcode::Binary, None) if fin => Ok(Some(Message { opcode, payload })),
            (Opcode::Text | Opcode::Binary, None) => {
                self.started = Some(opcode);
                self.append(&payload)?;
                Ok(None)
            }
            (Opcode::Continuation, Some(started)) => {
                self.append(&payload)?;
                if !fin {
                    return Ok(None);
                }
                self.started = None;
                Ok(Some(Message {
                    opcode: started,
                    payload: std::mem::take(&mut self.buffer).freeze(),
                }))
            }
            (Opcode::Continuation, None) => Err(FrameError::UnexpectedContinuation),
            (Opcode::Text | Opcode::Binary, Some(_)) => Err(FrameError::InterruptedMessage),
        }
    }

    fn append(&mut self, payload: &[u8]) -> Result<(), FrameError> {
        if self.buffer.len().saturating_add(payload.len()) > self.max_message {
            self.started = None;
            self.buffer = BytesMut::new();
            return Err(FrameError::MessageTooLarge {
                max: self.max_message,
            });
        }
        self.buffer.extend_from_slice(payload);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 4] = [0x37, 0xFA, 0x21, 0x3D];

    fn client_frame(opcode: Opcode, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        push_header(&mut out, opcode, fin, payload.len(), Some(KEY));
        let start = out.len();
        out.extend_from_slice(payload);
        if let Some(body) = out.get_mut(start..) {
            apply_mask(body, KEY);
        }
        out
    }

    fn server_frame(opcode: Opcode, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        push_header(&mut out, opcode, fin, payload.len(), None);
        out.extend_from_slice(payload);
        out
    }

    fn take_all(wire: &[u8], rules: Rules) -> Result<Vec<Frame>, FrameError> {
        let mut buf = BytesMut::from(wire);
        let mut frames = Vec::new();
        while let Some(frame) = take_frame(&mut buf, rules)? {
            frames.push(frame);
        }
        assert!(buf.is_empty(), "{} bytes left over", buf.len());
        Ok(frames)
    }

    fn first_error(wire: &[u8], rules: Rules) -> Option<FrameError> {
        take_frame(&mut BytesMut::from(wire), rules).err()
    }

    #[test]
    fn opcodes_convert_both_ways_and_reserved_ones_are_errors() {
        for bits in 0u8..=255 {
            match Opcode::try_from(bits) {
                Ok(opcode) => assert_eq!(opcode.bits(), bits),
                Err(error) => {
                    assert_eq!(error, FrameError::ReservedOpcode(bits));
                    assert!(matches!(bits, 0x3..=0x7 | 0xB..));
                }
            }
        }
        assert!(Opcode::Ping.is_control() && !Opcode::Continuation.is_control());
    }

    #[test]
    fn every_length_encoding_boundary_round_trips_masked_and_unmasked() {
        let cases = [
            (0usize, 2usize),
            (1, 2),
            (125, 2),
            (126, 4),
            (65_535, 4),
            (65_536, 10),
            (70_000, 10),
        ];
        for (len, header_len) in cases {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let server = server_frame(Opcode::Binary, true, &payload);
            assert_eq!(server.len(), header_len + len);
            let header = parse_header(&server, Rules::from_server(1 << 20));
            assert_eq!(
                header,
                Ok(Some(Header {
                    fin: true,
                    opcode: Opcode::Binary,
                    mask: None,
                    header_len,
                    payload_len: len,
                }))
            );
            let frames = take_all(&server, Rules::from_server(1 << 20));
            assert_eq!(
                frames.map(|f| f.into_iter().map(|f| f.payload).collect::<Vec<_>>()),
                Ok(vec![Bytes::from(payload.clone())])
            );

            let mut client = Vec::new();
            push_frame(&mut client, Opcode::Text, &payload, Some(KEY));
            assert_eq!(client.len(), header_len + 4 + len);
            if len > 0 {
                assert_ne!(client.get(header_len + 4..), Some(payload.as_slice()));
            }
            let frames = take_all(&client, Rules::from_client(1 << 20));
            assert_eq!(
                frames,
                Ok(vec![Frame {
                    fin: true,
                    opcode: Opcode::Text,
                    payload: Bytes::from(payload),
                }])
            );
        }
    }

    #[test]
    fn headers_match_the_rfc_examples() {
        // Section 5.7: a single-frame unmasked "Hello", and the same masked.
        let mut out = Vec::new();
        push_frame(&mut out, Opcode::Text, b"Hello", None);
        assert_eq!(out, [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
        out.clear();
        push_frame(&mut out, Opcode::Text, b"Hello", Some(KEY));
        assert_eq!(
            out,
            [
                0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58
            ]
        );
        // A 256-byte and a 64 KiB unmasked binary message.
        out.clear();
        push_header(&mut out, Opcode::Binary, true, 256, None);
        assert_eq!(out, [0x82, 0x7E, 0x01, 0x00]);
        out.clear();
        push_header(&mut out, Opcode::Binary, true, 65_536, None);
        assert_eq!(out, [0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0]);
        out.clear();
        push_header(&mut out, Opcode::Continuation, false, 3, None);
        assert_eq!(out, [0x00, 0x03]);
    }

    #[test]
    fn masking_matches_the_bytewise_definition_and_undoes_itself() {
        for len in 0..40 {
            let original: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let mut masked = original.clone();
            apply_mask(&mut masked, KEY);
            let expected: Vec<u8> = original
                .iter()
                .zip(KEY.iter().cycle())
                .map(|(b, k)| b ^ k)
                .collect();
            assert_eq!(masked, expected);
            apply_mask(&mut masked, KEY);
            assert_eq!(masked, original);
        }
    }

    #[test]
    fn incomplete_frames_need_more_bytes_and_take_nothing() {
        let wire = client_frame(Opcode::Binary, true, &[9u8; 300]);
        for cut in 0..wire.len() {
            let mut buf = BytesMut::from(wire.get(..cut).unwrap_or_default());
            assert_eq!(
                take_frame(&mut buf, Rules::from_client(1000)),
                Ok(None),
                "cut at {cut}"
            );
            assert_eq!(buf.len(), cut);
        }
        // Once the header is there, room for the whole frame is reserved.
        let mut buf = BytesMut::from(wire.get(..8).unwrap_or_default());
        assert_eq!(take_frame(&mut buf, Rules::from_client(1000)), Ok(None));
        assert!(buf.capacity() >= wire.len());
    }

    #[test]
    fn a_fragmented_message_with_a_ping_in_between() -> Result<(), FrameError> {
        let mut wire = client_frame(Opcode::Text, false, b"he");
        wire.extend(client_frame(Opcode::Ping, true, b"p"));
        wire.extend(client_frame(Opcode::Continuation, false, b"l"));
        wire.extend(client_frame(Opcode::Continuation, true, b"lo"));
        wire.extend(client_frame(Opcode::Binary, true, b"\x00\x01"));
        let mut assembler = Assembler::new(100);
        let mut messages = Vec::new();
        for frame in take_all(&wire, Rules::from_client(100))? {
            if let Some(message) = assembler.push(frame)? {
                messages.push((message.opcode, message.payload));
            }
        }
        assert_eq!(
            messages,
            vec![
                (Opcode::Ping, Bytes::from_static(b"p")),
                (Opcode::Text, Bytes::from_static(b"hello")),
                (Opcode::Binary, Bytes::from_static(b"\x00\x01")),
            ]
        );
        Ok(())
    }

    #[test]
    fn the_assembler_refuses_broken_sequences_and_oversize_messages() {
        let frame = |opcode, fin, payload: &'static [u8]| Frame {
            fin,
            opcode,
            payload: Bytes::from_static(payload),
        };
        let mut assembler = Assembler::new(4);
        assert_eq!(
            assembler.push(frame(Opcode::Continuation, true, b"x")),
            Err(FrameError::UnexpectedContinuation)
        );
        assert_eq!(assembler.push(frame(Opcode::Text, false, b"ab")), Ok(None));
        assert_eq!(
            assembler.push(frame(Opcode::Binary, true, b"c")),
            Err(FrameError::InterruptedMessage)
        );
        let mut assembler = Assembler::new(4);
        assert_eq!(
            assembler.push(frame(Opcode::Binary, false, b"ab")),
            Ok(None)
        );
        assert_eq!(
            assembler.push(frame(Opcode::Continuation, false, b"cd")),
            Ok(None)
        );
        let error = assembler.push(frame(Opcode::Continuation, true, b"e"));
        assert_eq!(error, Err(FrameError::MessageTooLarge { max: 4 }));
        assert!(error.is_err_and(|e| e.is_too_large()));
    }

    #[test]
    fn oversize_frames_are_refused_as_soon_as_their_length_is_known() {
        let wire = client_frame(Opcode::Binary, true, &[0u8; 2000]);
        // Only the 4 bytes up to the 16-bit length: no mask key, no payload yet.
        let head = wire.get(..4).unwrap_or_default();
        let error = first_error(head, Rules::from_client(1000));
        assert_eq!(
            error,
            Some(FrameError::TooLarge {
                len: 2000,
                max: 1000
            })
        );
        assert!(error.is_some_and(|e| e.is_too_large()));
        assert_eq!(
            take_all(&wire, Rules::from_client(2000)).map(|f| f.len()),
            Ok(1)
        );
    }

    #[test]
    fn the_masking_rule_of_each_side() {
        let unmasked = server_frame(Opcode::Text, true, b"x");
        assert_eq!(
            first_error(&unmasked, Rules::from_client(100)),
            Some(FrameError::UnmaskedClientFrame)
        );
        let masked = client_frame(Opcode::Text, true, b"x");
        assert_eq!(
            first_error(&masked, Rules::from_server(100)),
            Some(FrameError::MaskedServerFrame)
        );
    }

    #[test]
    fn reserved_opcodes_and_bits_are_refused() {
        for bits in [0x3u8, 0x7, 0xB, 0xF] {
            let wire = [0x80 | bits, 0x80, 1, 2, 3, 4];
            assert_eq!(
                first_error(&wire, Rules::from_client(100)),
                Some(FrameError::ReservedOpcode(bits))
            );
        }
        for rsv in [0x40u8, 0x20, 0x10] {
            let wire = [0x81 | rsv, 0x00];
            assert_eq!(
                first_error(&wire, Rules::from_server(100)),
                Some(FrameError::ReservedBits)
            );
        }
    }

    #[test]
    fn control_frames_are_whole_and_short() {
        let unfinished = client_frame(Opcode::Ping, false, b"x");
        assert_eq!(
            first_error(&unfinished, Rules::from_client(1000)),
            Some(FrameError::FragmentedControlFrame)
        );
        let long = server_frame(Opcode::Close, true, &[0u8; 126]);
        assert_eq!(
            first_error(&long, Rules::from_server(1000)),
            Some(FrameError::LongControlFrame(126))
        );
        let longest = server_frame(Opcode::Pong, true, &[7u8; 125]);
        assert_eq!(
            take_all(&longest, Rules::from_server(1000)).map(|f| f.len()),
            Ok(1)
        );
    }

    #[test]
    fn a_64_bit_length_must_have_its_top_bit_clear() {
        let mut wire = vec![0x82, 0x7F];
        wire.extend_from_slice(&(1u64 << 63).to_be_bytes());
        let error = first_error(&wire, Rules::from_server(usize::MAX));
        assert_eq!(error, Some(FrameError::LengthTopBitSet));
        // Largest legal announcement, over any realistic limit.
        let mut wire = vec![0x82, 0x7F];
        wire.extend_from_slice(&(u64::MAX >> 1).to_be_bytes());
        assert!(first_error(&wire, Rules::from_server(1 << 30)).is_some_and(|e| e.is_too_large()));
        // Even without a limit, no buffer could hold it: too large, not a panic.
        assert!(
            first_error(&wire, Rules::from_server(usize::MAX)).is_some_and(|e| e.is_too_large())
        );
    }

    #[test]
    fn no_two_byte_start_panics_or_hangs() {
        for b0 in 0u8..=255 {
            for b1 in 0u8..=255 {
                let wire = [b0, b1, 0, 0, 0, 3, 1, 2, 3, 4, 5, 6, 7, 8];
                for rules in [Rules::from_client(4), Rules::from_server(4)] {
                    for cut in [1, 2, 4, 6, 10, wire.len()] {
                        let mut buf = BytesMut::from(wire.get(..cut).unwrap_or_default());
                        let before = buf.len();
                        match take_frame(&mut buf, rules) {
                            Ok(Some(frame)) => {
                                assert!(frame.payload.len() <= 4);
                                assert!(buf.len() < before);
                            }
                            Ok(None) | Err(_) => assert_eq!(buf.len(), before),
                        }
                    }
                }
            }
        }
    }
}
