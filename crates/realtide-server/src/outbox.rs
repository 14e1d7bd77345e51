//! The per-connection outbound queue and the writer task that owns the socket's write half.
//!
//! Everything that wants to send to a client pushes a pre-encoded [`OutFrame`] into the
//! connection's [`Outbox`] with a non-blocking `try_send`. The queue is bounded in messages and
//! in bytes; a push that would exceed either bound marks the connection as a slow consumer, and
//! the writer closes it. One slow client therefore never slows a fan-out or another client.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use realtide_protocol::wsframe::{Opcode, push_frame, push_header};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::limits::OutboundBudget;
use crate::metrics::Metrics;

/// Close code sent to a slow consumer (1008, policy violation).
pub const CLOSE_SLOW_CONSUMER: u16 = 1008;
/// Close code for a frame over the size limit (1009, message too big).
pub const CLOSE_TOO_BIG: u16 = 1009;
/// Close code for a server restart (1012, service restart).
pub const CLOSE_RESTART: u16 = 1012;
/// Close code when the socket is closed for going away (idle timeout, 1001).
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code: protocol error (RFC 6455, section 7.4.1).
pub const CLOSE_PROTOCOL: u16 = 1002;

/// How far a channel's `postgres_changes` delivery got (journal positions, see
/// [`crate::journal`]). The delivery task moves `next`; the writer moves `written` once a
/// change frame is in the socket.
#[derive(Debug)]
pub struct Cursor {
    /// The next journal position to deliver (everything before it was queued or skipped).
    next: AtomicU64,
    /// One past the last change frame written to the socket.
    written: AtomicU64,
    /// Change frames queued and not yet written.
    inflight: AtomicUsize,
    /// The position of the first change frame written but not yet acknowledged by the client
    /// ([`NONE_UNREAD`] when every written frame was acknowledged, or the connection does not
    /// answer pings). Only changed under the connection's [`Receipts`] lock.
    unread: AtomicU64,
    /// Closed cursors take no more frames (the channel left; a resume may take over).
    gate: parking_lot::Mutex<bool>,
}

impl Cursor {
    /// A cursor starting at `next`.
    pub fn new(next: u64) -> Arc<Cursor> {
        Arc::new(Cursor {
            next: AtomicU64::new(next),
            written: AtomicU64::new(next),
            inflight: AtomicUsize::new(0),
            unread: AtomicU64::new(NONE_UNREAD),
            gate: parking_lot::Mutex::new(false),
        })
    }

    /// Where a subscriber that lost this cursor's socket resumes: the first change the client
    /// has not acknowledged reading (see [`Receipts`]), else [`Cursor::done`]. Frames that
    /// reached the socket but not the client (they were in a kernel buffer when the peer went
    /// away) are sent again rather than lost.
    pub fn resume_position(&self) -> u64 {
        let done = self.done();
        done.min(self.unread.load(Ordering::Acquire))
    }

    /// The next position to deliver.
    pub fn next(&self) -> u64 {
        self.next.load(Ordering::Acquire)
    }

    /// Everything before this position reached the socket or was not for this channel.
    pub fn done(&self) -> u64 {
        // `next` first: a push raises `inflight` before it moves `next`, so a `next` read
        // here is never ahead of frames that `inflight` does not show.
        let next = self.next.load(Ordering::Acquire);
        if self.inflight.load(Ordering::Acquire) == 0 {
            next
        } else {
            self.written.load(Ordering::Acquire)
        }
    }

    /// Runs `deliver` unless the cursor is closed; it may queue frames and move `next`.
    pub fn with_gate<T>(&self, deliver: impl FnOnce(&CursorGate<'_>) -> T) -> Option<T> {
        let closed = self.gate.lock();
        if *closed {
            return None;
        }
        Some(deliver(&CursorGate { cursor: self }))
    }

    /// Takes no more frames; returns once no delivery is in progress.
    pub fn close(&self) {
        *self.gate.lock() = true;
    }
}

/// A cursor held open for one delivery step.
#[derive(Debug)]
pub struct CursorGate<'a> {
    cursor: &'a Cursor,
}

impl CursorGate<'_> {
    /// Moves the cursor to `next`.
    pub fn advance(&self, next: u64) {
        self.cursor.next.fetch_max(next, Ordering::AcqRel);
    }
}

/// Change frames are queued only while a connection's queue holds less than this many frames
/// and bytes: enough to keep a socket busy between two feed passes, small enough that 1,000
/// subscribers catching up at once hold tens of megabytes of frames, not gigabytes (the changes
/// themselves wait in the journal).
const CHANGE_WINDOW_FRAMES: usize = 1024;
/// See [`CHANGE_WINDOW_FRAMES`].
const CHANGE_WINDOW_BYTES: usize = 256 * 1024;

/// [`Cursor::unread`] when nothing written is unacknowledged.
const NONE_UNREAD: u64 = u64::MAX;

/// Pings awaiting their pong, at most; past it batches go without a ping until pongs return
/// (later pings acknowledge everything before them). Well under 60: the Node `ws` client
/// (supabase-js's transport there) terminates a connection with 60 answers to pings not yet
/// flushed (`maxPendingAutoPongs`, default 60 in ws 8.23), which a client catching up
/// would reach when it reads that many pings in one go.
const MAX_PINGS_IN_FLIGHT: usize = 32;
const _: () = assert!(
    MAX_PINGS_IN_FLIGHT < 60,
    "ws terminates at 60 pending pongs"
);

/// What the client acknowledged reading.
///
/// A byte the socket accepted is not a byte the client read: it may sit in a kernel buffer when
/// the peer's process dies, its network drops or it stops reading and is cut. WebSocket
/// clients answer a ping with a pong once they have processed every frame before it (the
/// supabase-js `ws` transport, browsers and Python `websockets` all do so automatically, in
/// order). So the writer ends every batch that carries change frames with a ping whose payload
/// numbers it, and remembers how far each cursor had been written at that ping; a pong moves
/// the cursors' acknowledged position up to that mark, and a close frame answering ours
/// acknowledges everything. A subscriber that loses its socket resumes from the first change
/// not acknowledged. Connections that never answer a ping are not tracked (their resume
/// position is what was written).
#[derive(Debug, Default)]
pub struct Receipts {
    ledger: parking_lot::Mutex<Ledger>,
    /// Set once our close frame was written in full.
    close_sent: std::sync::atomic::AtomicBool,
}

#[derive(Debug, Default)]
struct Ledger {
    /// The peer answered one of our pings.
    answering: bool,
    next_ping: u64,
    /// Pings sent and not answered: (ping number, cursors with their written end at the ping).
    pings: std::collections::VecDeque<(u64, CursorEnds)>,
    /// Every cursor this connection wrote for, with the end of its last frame written.
    cursors: CursorEnds,
}

/// Cursors with a position each (a connection has a handful: one per joined channel).
type CursorEnds = Vec<(Arc<Cursor>, u64)>;

impl Ledger {
    fn set_last_end(&mut self, cursor: &Arc<Cursor>, end: u64) {
        match self
            .cursors
            .iter_mut()
            .find(|(c, _)| Arc::ptr_eq(c, cursor))
        {
            Some(entry) => entry.1 = end,
            None => self.cursors.push((cursor.clone(), end)),
        }
    }

    fn last_end(&self, cursor: &Arc<Cursor>) -> Option<u64> {
        self.cursors
            .iter()
            .find(|(c, _)| Arc::ptr_eq(c, cursor))
            .map(|(_, end)| *end)
    }
}

impl Receipts {
    /// Records change frames about to be written (cursor, end) and returns the number of the
    /// ping to send after them, if one should be sent.
    fn writing(&self, marks: &[(Arc<Cursor>, u64, usize)]) -> Option<u64> {
        let mut ledger = self.ledger.lock();
        let answering = ledger.answering;
        let mut touched: CursorEnds = Vec::new();
        for (cursor, end, _) in marks {
            ledger.set_last_end(cursor, *end);
            if answering && cursor.unread.load(Ordering::Acquire) == NONE_UNREAD {
                cursor
                    .unread
                    .store(end.saturating_sub(1), Ordering::Release);
            }
            match touched.iter_mut().find(|(c, _)| Arc::ptr_eq(c, cursor)) {
                Some(entry) => entry.1 = *end,
                None => touched.push((cursor.clone(), *end)),
            }
        }
        self.ping_with(&mut ledger, touched)
    }

    /// The number of a ping that acknowledges nothing yet (sent when the writer starts, so
    /// that the first pong tells whether the client answers pings before changes flow).
    fn first_ping(&self) -> Option<u64> {
        let mut ledger = self.ledger.lock();
        self.ping_with(&mut ledger, Vec::new())
    }

    fn ping_with(&self, ledger: &mut Ledger, marks: CursorEnds) -> Option<u64> {
        if ledger.pings.len() >= MAX_PINGS_IN_FLIGHT {
            return None;
        }
        let number = ledger.next_ping;
        ledger.next_ping += 1;
        ledger.pings.push_back((number, marks));
        Some(number)
    }

    /// A pong arrived: acknowledges everything written before the ping it answers.
    pub fn pong(&self, payload: &[u8]) {
        let Ok(number) = <[u8; 8]>::try_from(payload).map(u64::from_be_bytes) else {
            return;
        };
        let mut ledger = self.ledger.lock();
        if number >= ledger.next_ping {
            return;
        }
        ledger.answering = true;
        while let Some((ping, _)) = ledger.pings.front() {
            if *ping > number {
                break;
            }
            let Some((_, marks)) = ledger.pings.pop_front() else {
                break;
            };
            for (cursor, end) in marks {
                // Everything before `end` was read; what was written after it starts at `end`.
                let unread = if ledger.last_end(&cursor) == Some(end) {
                    NONE_UNREAD
                } else {
                    end
                };
                cursor.unread.store(unread, Ordering::Release);
            }
        }
    }

    /// The client answered our close frame: it read everything written before it.
    pub fn peer_closed(&self) {
        if !self.close_sent.load(Ordering::Acquire) {
            return;
        }
        let mut ledger = self.ledger.lock();
        ledger.pings.clear();
        for (cursor, _) in &ledger.cursors {
            cursor.unread.store(NONE_UNREAD, Ordering::Release);
        }
    }
}

/// Whether a change frame was queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Queued.
    Queued,
    /// The queue has no room for changes now; try again later.
    Full,
    /// The connection is gone.
    Closed,
}

/// A frame ready to be written.
#[derive(Debug, Clone)]
pub enum OutFrame {
    /// A text frame (JSON).
    Text(Bytes),
    /// A `postgres_changes` text frame at journal position `end - 1` of `cursor`.
    Change {
        /// The encoded frame.
        frame: Bytes,
        /// Its channel's cursor.
        cursor: Arc<Cursor>,
        /// One past its journal position.
        end: u64,
    },
    /// A text frame made of a head and tail of its own around a shared body (a topic's
    /// `presence_state` payload, identical for every joiner but for the refs around it).
    Framed {
        /// Text before the body.
        head: Bytes,
        /// The shared body.
        body: Bytes,
        /// Text after the body.
        tail: Bytes,
    },
    /// A binary frame (V2 kind 4).
    Binary(Bytes),
    /// A pong answering a ping.
    Pong(Bytes),
    /// A close frame; the writer stops after it.
    Close(u16, &'static str),
    /// Echo of the client's close frame payload; the writer stops after it.
    CloseEcho(Bytes),
}

impl OutFrame {
    /// The frame with its payload counted in `budget` while any copy of it lives.
    pub fn held(self, budget: &Arc<OutboundBudget>) -> OutFrame {
        match self {
            OutFrame::Text(b) => OutFrame::Text(budget.hold(b)),
            OutFrame::Binary(b) => OutFrame::Binary(budget.hold(b)),
            OutFrame::Framed { head, body, tail } => OutFrame::Framed {
                head,
                body: budget.hold(body),
                tail,
            },
            other => other,
        }
    }

    fn cost(&self) -> usize {
        match self {
            OutFrame::Text(b)
            | OutFrame::Change { frame: b, .. }
            | OutFrame::Binary(b)
            | OutFrame::Pong(b)
            | OutFrame::CloseEcho(b) => b.len(),
            OutFrame::Framed { head, body, tail } => head.len() + body.len() + tail.len(),
            OutFrame::Close(_, reason) => reason.len() + 2,
        }
    }
}

/// Bounds of one connection's outbound queue.
#[derive(Debug, Clone, Copy)]
pub struct OutboxLimits {
    /// Maximum queued frames.
    pub messages: usize,
    /// Maximum queued bytes.
    pub bytes: usize,
}

#[derive(Debug)]
struct Shared {
    /// Process-wide counters (queued frames for the queue-depth gauge).
    metrics: Arc<Metrics>,
    queued_bytes: AtomicUsize,
    max_bytes: usize,
    max_messages: usize,
    /// Batches written so far (progress, for the stalled-reader check).
    writes: AtomicU64,
    overflowed: CancellationToken,
    receipts: Receipts,
    /// The process-wide budget of held broadcast and presence frames.
    budget: Arc<OutboundBudget>,
}

/// Sending side of a connection's outbound queue; cheap to clone.
#[derive(Debug, Clone)]
pub struct Outbox {
    tx: mpsc::Sender<OutFrame>,
    shared: Arc<Shared>,
}

/// Receiving side, owned by the writer task.
#[derive(Debug)]
pub struct OutboxReceiver {
    rx: mpsc::Receiver<OutFrame>,
    shared: Arc<Shared>,
}

/// Creates a bounded outbound queue.
pub fn outbox(
    limits: OutboxLimits,
    metrics: Arc<Metrics>,
    budget: Arc<OutboundBudget>,
) -> (Outbox, OutboxReceiver) {
    let (tx, rx) = mpsc::channel(limits.messages.max(1));
    let shared = Arc::new(Shared {
        metrics,
        queued_bytes: AtomicUsize::new(0),
        max_bytes: limits.bytes,
        max_messages: limits.messages.max(1),
        writes: AtomicU64::new(0),
        overflowed: CancellationToken::new(),
        receipts: Receipts::default(),
        budget,
    });
    (
        Outbox {
            tx,
            shared: shared.clone(),
        },
        OutboxReceiver { rx, shared },
    )
}

impl Outbox {
    /// Queues a frame without waiting. Returns `false` when the frame was not queued: the
    /// connection is gone, or it just became (or already was) a slow consumer.
    pub fn push(&self, frame: OutFrame) -> bool {
        let queued = self.push_uncounted(frame);
        if queued {
            self.shared.metrics.frames_queued(1);
        }
        queued
    }

    /// [`Outbox::push`] without the process-wide queue-depth count: a fan-out adds its total
    /// once ([`crate::metrics::Metrics::frames_queued`]) instead of touching that shared
    /// counter once per subscriber.
    pub fn push_uncounted(&self, frame: OutFrame) -> bool {
        if self.shared.overflowed.is_cancelled() {
            return false;
        }
        // Past the process-wide budget, connections that are behind are the ones holding the
        // frames alive: they are cut, which drops what they hold.
        if self.shared.budget.exceeded()
            && self.shared.queued_bytes.load(Ordering::Relaxed) > WRITE_BATCH
        {
            self.shared.overflowed.cancel();
            return false;
        }
        let cost = frame.cost();
        let before = self.shared.queued_bytes.fetch_add(cost, Ordering::Relaxed);
        if before + cost > self.shared.max_bytes {
            self.shared.queued_bytes.fetch_sub(cost, Ordering::Relaxed);
            self.shared.overflowed.cancel();
            return false;
        }
        match self.tx.try_send(frame) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.shared.queued_bytes.fetch_sub(cost, Ordering::Relaxed);
                self.shared.overflowed.cancel();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.shared.queued_bytes.fetch_sub(cost, Ordering::Relaxed);
                false
            }
        }
    }

    /// Queues a change frame if the queue is less than half full (in frames and in bytes);
    /// never marks the connection as a slow consumer: the delivery task waits for room
    /// instead, so that other frames (replies, broadcasts) keep the other half.
    pub fn offer(&self, frame: Bytes, cursor: &Arc<Cursor>, end: u64) -> Offer {
        if self.shared.overflowed.is_cancelled() || self.tx.is_closed() {
            return Offer::Closed;
        }
        if !self.has_room() {
            return Offer::Full;
        }
        let cost = frame.len();
        self.shared.queued_bytes.fetch_add(cost, Ordering::Relaxed);
        cursor.inflight.fetch_add(1, Ordering::AcqRel);
        let frame = OutFrame::Change {
            frame,
            cursor: cursor.clone(),
            end,
        };
        match self.tx.try_send(frame) {
            Ok(()) => Offer::Queued,
            Err(error) => {
                self.shared.queued_bytes.fetch_sub(cost, Ordering::Relaxed);
                cursor.inflight.fetch_sub(1, Ordering::AcqRel);
                match error {
                    mpsc::error::TrySendError::Full(_) => Offer::Full,
                    mpsc::error::TrySendError::Closed(_) => Offer::Closed,
                }
            }
        }
    }

    /// Whether change frames may be queued now: the queue is less than half full, and holds
    /// less than [`CHANGE_WINDOW_FRAMES`] frames and [`CHANGE_WINDOW_BYTES`] bytes.
    pub fn has_room(&self) -> bool {
        let queued = self.shared.max_messages - self.tx.capacity();
        queued < (self.shared.max_messages / 2).min(CHANGE_WINDOW_FRAMES)
            && self.shared.queued_bytes.load(Ordering::Relaxed)
                < (self.shared.max_bytes / 2).min(CHANGE_WINDOW_BYTES)
    }

    /// Whether the connection is gone.
    pub fn is_closed(&self) -> bool {
        self.shared.overflowed.is_cancelled() || self.tx.is_closed()
    }

    /// Batches written to the socket so far.
    pub fn writes(&self) -> u64 {
        self.shared.writes.load(Ordering::Relaxed)
    }

    /// Closes the connection as a slow consumer (close 1008).
    pub fn cut(&self) {
        self.shared.overflowed.cancel();
    }

    /// Queues a text frame.
    pub fn text(&self, text: String) -> bool {
        self.push(OutFrame::Text(Bytes::from(text)))
    }

    /// What the client acknowledged reading.
    pub fn receipts(&self) -> &Receipts {
        &self.shared.receipts
    }

    /// Cancelled once the connection has been marked as a slow consumer.
    pub fn overflowed(&self) -> &CancellationToken {
        &self.shared.overflowed
    }
}

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

/// Bytes gathered into one write before flushing to the socket.
const WRITE_BATCH: usize = 64 * 1024;

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

    #[test]
    fn pongs_acknowledge_what_was_written_before_their_ping() {
        let cursor = Cursor::new(0);
        let receipts = Receipts::default();
        let mark = |end: u64| (cursor.clone(), end, 0usize);
        // Before the client answered any ping nothing is tracked.
        assert_eq!(receipts.first_ping(), Some(0));
        assert_eq!(receipts.writing(&[mark(1)]), Some(1));
        assert_eq!(cursor.unread.load(Ordering::Acquire), NONE_UNREAD);
        // Bogus pongs change nothing.
        receipts.pong(&7u64.to_be_bytes());
        receipts.pong(b"abc");
        assert!(!receipts.ledger.lock().answering);
        receipts.pong(&0u64.to_be_bytes());
        assert!(receipts.ledger.lock().answering);
        // Frame at position 1 (end 2) and 2 (end 3): unread from 1.
        assert_eq!(receipts.writing(&[mark(2), mark(3)]), Some(2));
        assert_eq!(cursor.unread.load(Ordering::Acquire), 1);
        assert_eq!(receipts.writing(&[mark(4)]), Some(3));
        // Ping 1 covered end 1, ping 2 end 3; frame at 3 (end 4) is still unread.
        receipts.pong(&2u64.to_be_bytes());
        assert_eq!(cursor.unread.load(Ordering::Acquire), 3);
        receipts.pong(&3u64.to_be_bytes());
        assert_eq!(cursor.unread.load(Ordering::Acquire), NONE_UNREAD);
        // A close answer counts only once our close frame was written.
        assert_eq!(receipts.writing(&[mark(5)]), Some(4));
        receipts.peer_closed();
        assert_eq!(cursor.unread.load(Ordering::Acquire), 4);
        receipts.close_sent.store(true, Ordering::Release);
        receipts.peer_closed();
        assert_eq!(cursor.unread.load(Ordering::Acquire), NONE_UNREAD);
        // The resume position is the first unread change, never past what was written.
        assert_eq!(receipts.writing(&[mark(6)]), Some(5));
        cursor.next.store(6, Ordering::Release);
        assert_eq!(cursor.resume_position(), 5);
    }

    #[test]
    fn overflow_by_bytes_and_messages() {
        let metrics = Arc::new(Metrics::default());
        let (outbox, _rx) = outbox(
            OutboxLimits {
                messages: 2,
                bytes: 10,
            },
            metrics.clone(),
            unlimited(),
        );
        assert!(outbox.push(OutFrame::Text(Bytes::from_static(b"12345"))));
        assert!(!outbox.push(OutFrame::Text(Bytes::from_static(b"123456"))));
        assert!(outbox.overflowed().is_cancelled());
        let (outbox, _rx) = super::outbox(
            OutboxLimits {
                messages: 1,
                bytes: 1000,
            },
            metrics.clone(),
            unlimited(),
        );
        assert!(outbox.push(OutFrame::Text(Bytes::from_static(b"a"))));
        assert!(!outbox.push(OutFrame::Text(Bytes::from_static(b"b"))));
        assert!(outbox.overflowed().is_cancelled());
        // Two frames were queued in all (none written).
        assert_eq!(metrics.snapshot().outbound_queue_frames, 2);
    }

    fn unlimited() -> Arc<OutboundBudget> {
        crate::limits::Limits::new(crate::limits::LimitSettings::unlimited())
            .outbound
            .clone()
    }

    #[test]
    fn past_the_total_budget_connections_that_are_behind_are_cut() {
        let metrics = Arc::new(Metrics::default());
        let limits = crate::limits::Limits::new(crate::limits::LimitSettings {
            outbound_total_bytes: 100_000,
            ..crate::limits::LimitSettings::unlimited()
        });
        let budget = limits.outbound.clone();
        let queue = OutboxLimits {
            messages: 100,
            bytes: 10_000_000,
        };
        let (behind, _behind_rx) = outbox(queue, metrics.clone(), budget.clone());
        let (current, mut current_rx) = outbox(queue, metrics.clone(), budget.clone());
        // One 70 kB frame shared by both: counted once.
        let frame = OutFrame::Text(Bytes::from(vec![b'x'; 70_000])).held(&budget);
        assert!(behind.push(frame.clone()));
        assert!(current.push(frame.clone()));
        drop(frame);
        assert_eq!(budget.held(), 70_000);
        // `current` reads its frame; `behind` does not.
        let read = current_rx.rx.try_recv();
        assert!(read.is_ok());
        // (What the writer does when it takes a frame.)
        current
            .shared
            .queued_bytes
            .fetch_sub(70_000, Ordering::Relaxed);
        let second = OutFrame::Text(Bytes::from(vec![b'y'; 40_000])).held(&budget);
        assert!(budget.exceeded());
        // Over the budget: the connection with 70 kB queued is cut, the other one is served.
        assert!(!behind.push(second.clone()));
        assert!(behind.overflowed().is_cancelled());
        assert!(current.push(second));
        assert!(!current.overflowed().is_cancelled());
    }
}
