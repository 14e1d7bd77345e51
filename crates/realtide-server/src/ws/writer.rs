//! The writer task: one per connection, it owns the socket's write half and drains the
//! connection's outbox into it in batches (RFC 6455 server frames, unmasked), ending each batch
//! of change frames with a numbered ping (see [`crate::outbox::Receipts`]).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use realtide_protocol::wsframe::{Opcode, push_frame, push_header};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::metrics::Metrics;
use crate::outbox::{CLOSE_SLOW_CONSUMER, Cursor, OutFrame, OutboxReceiver, Shared, WRITE_BATCH};

/// Payloads from this size on are written from their shared buffer instead of being copied
/// into the batch: a large broadcast to many slow readers is then held once, not once per
/// writer.
const SHARED_PAYLOAD: usize = 16 * 1024;

/// One write's worth of frames: small frames and every header copied into `own`, large
/// payloads kept as the shared buffers the fan-out handed out, in stream order.
#[derive(Debug, Default)]
struct Batch {
    own: Vec<u8>,
    /// (offset in `own` the payload follows, payload).
    shared: Vec<(usize, Bytes)>,
    /// Bytes in the batch: `own` plus the shared payloads.
    len: usize,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn len(&self) -> usize {
        self.len
    }

    /// Appends a frame, sharing a large payload instead of copying it.
    fn frame(&mut self, opcode: Opcode, payload: &Bytes) {
        self.framed(opcode, &[], payload, &[]);
    }

    /// Appends a frame whose payload is `head + body + tail`, sharing a large body.
    fn framed(&mut self, opcode: Opcode, head: &[u8], body: &Bytes, tail: &[u8]) {
        let before = self.own.len();
        push_header(
            &mut self.own,
            opcode,
            true,
            head.len() + body.len() + tail.len(),
            None,
        );
        self.own.extend_from_slice(head);
        if body.len() < SHARED_PAYLOAD {
            self.own.extend_from_slice(body);
        } else {
            self.shared.push((self.own.len(), body.clone()));
            self.len += body.len();
        }
        self.own.extend_from_slice(tail);
        self.len += self.own.len() - before;
    }

    /// Appends a small frame built from a slice.
    fn small(&mut self, opcode: Opcode, payload: &[u8]) {
        let before = self.own.len();
        push_frame(&mut self.own, opcode, payload, None);
        self.len += self.own.len() - before;
    }

    /// The bytes from stream offset `at` to the end of the piece that holds it.
    fn rest(&self, at: usize) -> &[u8] {
        // Walk the pieces: own bytes up to each shared payload, the payload, ... own tail.
        let (mut stream, mut own) = (0usize, 0usize);
        for (offset, payload) in &self.shared {
            let piece = self.own.get(own..*offset).unwrap_or_default();
            if at < stream + piece.len() {
                return piece.get(at - stream..).unwrap_or_default();
            }
            stream += piece.len();
            if at < stream + payload.len() {
                return payload.get(at - stream..).unwrap_or_default();
            }
            stream += payload.len();
            own = *offset;
        }
        let tail = self.own.get(own..).unwrap_or_default();
        tail.get(at.saturating_sub(stream)..).unwrap_or_default()
    }

    fn clear(&mut self) {
        self.own.clear();
        self.shared.clear();
        self.len = 0;
        if self.own.capacity() > WRITE_BATCH * 2 {
            // Do not keep a large buffer alive on an idle connection.
            self.own = Vec::new();
        }
    }
}

/// Runs the writer: drains the queue in batches into the socket until a close frame, the end of
/// the queue, a write error or a slow-consumer overflow. A slow consumer's last batch and close
/// frame are still written, for up to `grace`, so that a client that reads again in time gets
/// every frame it was sent and a clean close (and its pongs acknowledge them).
pub async fn run_writer<W: AsyncWrite + Unpin>(
    mut socket: W,
    mut queue: OutboxReceiver,
    metrics: Arc<Metrics>,
    grace: Duration,
) {
    let overflowed = queue.shared.overflowed.clone();
    let receipts = &queue.shared.receipts;
    // Ends `grace` after the connection was cut as a slow consumer.
    let cut_expired = async {
        overflowed.cancelled().await;
        tokio::time::sleep(grace).await;
    };
    tokio::pin!(cut_expired);
    let mut batch = Batch::default();
    if let Some(number) = receipts.first_ping() {
        batch.small(Opcode::Ping, &number.to_be_bytes());
    }
    // Change frames in the batch (cursor, position, offset of the frame's end in the batch):
    // their cursors move once the socket took the frame.
    let mut marks: Vec<(Arc<Cursor>, u64, usize)> = Vec::new();
    let mut expired = false;
    loop {
        let mut closing = false;
        if batch.is_empty() {
            let first = tokio::select! {
                // Overflow first: a slow consumer gets no more frames even when some are waiting.
                biased;
                () = overflowed.cancelled() => break,
                frame = queue.rx.recv() => match frame {
                    Some(frame) => frame,
                    None => break,
                },
            };
            closing = encode_into(&mut batch, &first, &queue.shared, &mut marks);
            let mut frames = 1;
            while !closing && batch.len() < WRITE_BATCH {
                match queue.rx.try_recv() {
                    Ok(frame) => {
                        closing = encode_into(&mut batch, &frame, &queue.shared, &mut marks);
                        frames += 1;
                    }
                    Err(_) => break,
                }
            }
            metrics.frames_dequeued(frames);
            if !marks.is_empty()
                && !closing
                && let Some(number) = receipts.writing(&marks)
            {
                batch.small(Opcode::Ping, &number.to_be_bytes());
            }
        }
        // Written piece by piece, so that change frames count as written as soon as the
        // socket took all of their bytes.
        let mut sent = 0;
        let mut marked = 0;
        let written: std::io::Result<()> = loop {
            if sent >= batch.len() {
                break Ok(());
            }
            let rest = batch.rest(sent);
            let result = tokio::select! {
                biased;
                () = &mut cut_expired => {
                    expired = true;
                    break Err(std::io::ErrorKind::TimedOut.into());
                }
                result = socket.write(rest) => result,
            };
            match result {
                Ok(0) => break Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    sent += n;
                    queue.shared.writes.fetch_add(1, Ordering::Relaxed);
                    while let Some((cursor, end, offset)) = marks.get(marked) {
                        if *offset > sent {
                            break;
                        }
                        cursor.written.fetch_max(*end, Ordering::AcqRel);
                        cursor.inflight.fetch_sub(1, Ordering::AcqRel);
                        marked += 1;
                    }
                }
                Err(error) => break Err(error),
            }
        };
        metrics.add_bytes_out(sent);
        // Frames the socket never took stay in their cursors' in-flight count: `done` stays
        // at what was written.
        marks.clear();
        batch.clear();
        if written.is_err() {
            break;
        }
        if closing {
            receipts.close_sent.store(true, Ordering::Release);
            break;
        }
        if overflowed.is_cancelled() {
            break;
        }
    }
    // Frames still queued will never be written: take them out of the queue-depth gauge.
    queue.rx.close();
    let mut left = 0;
    while queue.rx.try_recv().is_ok() {
        left += 1;
    }
    metrics.frames_dequeued(left);
    if overflowed.is_cancelled() {
        metrics.slow_consumer_disconnect();
        tracing::info!("closing slow consumer");
        if !expired {
            let mut close = Vec::new();
            push_close(&mut close, CLOSE_SLOW_CONSUMER, "slow consumer");
            let wrote = tokio::select! {
                biased;
                () = &mut cut_expired => false,
                result = socket.write_all(&close) => result.is_ok(),
            };
            if wrote {
                receipts.close_sent.store(true, Ordering::Release);
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), socket.shutdown()).await;
}

fn push_close(out: &mut Vec<u8>, code: u16, reason: &str) {
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(reason.as_bytes());
    push_frame(out, Opcode::Close, &payload, None);
}

/// Encodes one queued frame; returns true for close frames.
fn encode_into(
    batch: &mut Batch,
    frame: &OutFrame,
    shared: &Shared,
    marks: &mut Vec<(Arc<Cursor>, u64, usize)>,
) -> bool {
    shared
        .queued_bytes
        .fetch_sub(frame.cost(), Ordering::Relaxed);
    match frame {
        OutFrame::Text(b) => batch.frame(Opcode::Text, b),
        OutFrame::Change { frame, cursor, end } => {
            batch.frame(Opcode::Text, frame);
            marks.push((cursor.clone(), *end, batch.len()));
        }
        OutFrame::Framed { head, body, tail } => batch.framed(Opcode::Text, head, body, tail),
        OutFrame::Binary(b) => batch.frame(Opcode::Binary, b),
        OutFrame::Pong(b) => batch.small(Opcode::Pong, b),
        OutFrame::Close(code, reason) => {
            let mut close = Vec::new();
            push_close(&mut close, *code, reason);
            batch.own.extend_from_slice(&close);
            batch.len += close.len();
            return true;
        }
        OutFrame::CloseEcho(b) => {
            batch.small(Opcode::Close, b);
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_headers() {
        let mut out = Vec::new();
        push_frame(&mut out, Opcode::Text, b"hi", None);
        assert_eq!(out, [0x81, 2, b'h', b'i']);
        out.clear();
        push_frame(&mut out, Opcode::Binary, &[0u8; 300], None);
        assert_eq!(out.get(..4), Some(&[0x82, 126, 1, 44][..]));
        out.clear();
        push_frame(&mut out, Opcode::Text, &vec![0u8; 70_000], None);
        assert_eq!(
            out.get(..10),
            Some(&[0x81, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70][..])
        );
    }

    #[test]
    fn batches_share_large_payloads_and_write_the_same_bytes() {
        let small = Bytes::from_static(b"{\"a\":1}");
        let large = Bytes::from(vec![b'x'; SHARED_PAYLOAD + 5]);
        let mut batch = Batch::default();
        let mut expected = Vec::new();
        for (opcode, payload) in [
            (Opcode::Text, &small),
            (Opcode::Text, &large),
            (Opcode::Binary, &large),
            (Opcode::Text, &small),
        ] {
            batch.frame(opcode, payload);
            push_frame(&mut expected, opcode, payload, None);
        }
        batch.small(Opcode::Ping, &7u64.to_be_bytes());
        push_frame(&mut expected, Opcode::Ping, &7u64.to_be_bytes(), None);
        assert_eq!(batch.len(), expected.len());
        // Two large payloads are referenced, not copied.
        assert_eq!(batch.shared.len(), 2);
        assert!(batch.own.len() < 100);
        // Reading piece by piece from every offset yields the stream.
        let mut written = Vec::new();
        while written.len() < batch.len() {
            let rest = batch.rest(written.len());
            assert!(!rest.is_empty());
            // Take at most 1000 bytes at a time, as a partial socket write would.
            written.extend_from_slice(rest.get(..rest.len().min(1000)).unwrap_or_default());
        }
        assert_eq!(written, expected);
        for at in [0, 1, 9, 10, 11, SHARED_PAYLOAD, expected.len() - 1] {
            assert_eq!(batch.rest(at).first(), expected.get(at));
        }
    }
}
