//! The change journal: committed row changes on disk, so that delivery can run behind the
//! replication stream (large transactions, slow readers) and subscribers that lost their socket
//! or a restarted server can resume where they were.
//!
//! Layout: `<CHANGES_DIR>/<slot>/` holds a `LOCK` file (one process per journal) and segment
//! files `<first seq>.log`. A segment is a sequence of frames `len u32 | crc32 u32 | body`
//! (little endian); a body is a change (`C`) or the end of a transaction (`T`, carrying the
//! next sequence number and the commit's end LSN). Every change gets a sequence number
//! ([`Seq`]) that only grows, also across restarts. Only whole transactions count: at open, a
//! torn or unfinished tail is cut off (the replication slot streams it again, because it was
//! never confirmed past it).
//!
//! Recent committed changes are also kept in memory (bounded), so that live delivery never
//! reads the disk; older ones are read back in chunks through a sparse index.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::changes::change::ChangeKind;
use crate::changes::change::{Cell, Change};

/// A change's position in the journal. Position `n` is the `n`th change ever journaled.
pub type Seq = u64;

/// A segment is closed (and a new one started) at the first commit past this size.
const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Every this many changes, a segment's sparse index records an offset.
const INDEX_EVERY: u64 = 128;
/// Committed changes kept in memory for live delivery.
const CACHE_CHANGES: usize = 20_000;
/// Bytes (estimated) of committed changes kept in memory.
const CACHE_BYTES: usize = 32 * 1024 * 1024;
/// A transaction larger than this is not held in memory: delivery reads it from disk.
const PENDING_CHANGES: usize = 10_000;
/// Bytes (estimated) of one transaction held in memory.
const PENDING_BYTES: usize = 16 * 1024 * 1024;
/// Largest frame accepted when reading (a corrupt length must not allocate gigabytes).
const MAX_FRAME: usize = 1 << 30;

const TAG_CHANGE: u8 = b'C';
const TAG_COMMIT: u8 = b'T';

/// Why the journal could not be used.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Another process holds the journal.
    #[error("the change journal {0} is in use by another realtide process")]
    Locked(PathBuf),
    /// A file operation failed.
    #[error("change journal {path}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A change read back from disk: tuples aligned to the columns named in `columns` (the table's
/// columns when it was journaled).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredChange {
    /// Position.
    pub seq: Seq,
    /// Transaction id.
    pub xid: u32,
    /// Commit time, microseconds since 2000-01-01 (pgoutput's epoch).
    pub commit_micros: i64,
    /// Table oid.
    pub oid: u32,
    /// INSERT, UPDATE or DELETE.
    pub kind: ChangeKind,
    /// Whether `old` holds only the replica identity.
    pub old_key_only: bool,
    /// Column names, in the order of the tuples.
    pub columns: Vec<String>,
    /// New tuple.
    pub new: Option<Vec<Cell>>,
    /// Old tuple.
    pub old: Option<Vec<Cell>>,
}

/// What a read found.
#[derive(Debug)]
pub enum Chunk {
    /// From memory.
    Cached(Vec<Arc<Change>>),
    /// From disk.
    Stored(Vec<StoredChange>),
    /// The position was pruned (beyond the retention bounds).
    Gone,
}

#[derive(Debug)]
struct Segment {
    first: Seq,
    path: PathBuf,
    /// (seq, offset of its frame), every [`INDEX_EVERY`] changes.
    index: Vec<(Seq, u64)>,
    bytes: u64,
    /// One past the last committed change in it.
    end: Seq,
}

#[derive(Debug)]
struct State {
    segments: Vec<Segment>,
    out: BufWriter<File>,
    /// Bytes in the current segment (written or buffered).
    out_offset: u64,
    /// Offset just after the last commit frame of the current segment.
    committed_offset: u64,
    next_seq: Seq,
    last_end_lsn: u64,
    /// Committed changes ending at `head`, contiguous.
    cache: VecDeque<Arc<Change>>,
    cache_bytes: usize,
    /// The open transaction's changes, unless it grew too large (then `spilled`).
    pending: Vec<Arc<Change>>,
    pending_bytes: usize,
    spilled: bool,
    /// Bytes of all segments.
    total_bytes: u64,
    scratch: Vec<u8>,
}

/// The journal of one replication slot.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    _lock: File,
    state: Mutex<State>,
    /// One past the last committed change.
    head: AtomicU64,
    /// One past the last change known to be on stable storage.
    synced: AtomicU64,
    /// Sends `head` whenever a transaction is committed.
    head_tx: tokio::sync::watch::Sender<Seq>,
}

impl Journal {
    /// Opens (or creates) the journal in `dir`, cutting off an unfinished tail.
    pub fn open(dir: &Path) -> Result<Journal, JournalError> {
        fs::create_dir_all(dir).map_err(io_error(dir))?;
        let lock_path = dir.join("LOCK");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_error(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(JournalError::Locked(dir.to_owned())),
            Err(fs::TryLockError::Error(e)) => return Err(io_error(&lock_path)(e)),
        }
        let mut names: Vec<(Seq, PathBuf)> = fs::read_dir(dir)
            .map_err(io_error(dir))?
            .filter_map(Result::ok)
            .filter_map(|entry| {
                let path = entry.path();
                let first = path
                    .file_name()?
                    .to_str()?
                    .strip_suffix(".log")?
                    .parse::<Seq>()
                    .ok()?;
                Some((first, path))
            })
            .collect();
        names.sort();
        let mut segments: Vec<Segment> = Vec::new();
        let mut next_seq: Seq = 1;
        let mut last_end_lsn = 0;
        let mut broken = false;
        for (first, path) in names {
            if broken {
                // Everything after a damaged segment is unusable: its changes were never
                // confirmed to the slot after the damage point, so they are streamed again.
                fs::remove_file(&path).map_err(io_error(&path))?;
                continue;
            }
            let scan = scan_segment(&path).map_err(io_error(&path))?;
            if scan.committed_len < scan.file_len {
                tracing::warn!(path = %path.display(), kept = scan.committed_len, "cutting the change journal's unfinished tail");
                let file = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_error(&path))?;
                file.set_len(scan.committed_len).map_err(io_error(&path))?;
                file.sync_all().map_err(io_error(&path))?;
                broken = scan.damaged;
            }
            if let Some((end, lsn)) = scan.last_commit {
                next_seq = end;
                last_end_lsn = lsn;
            }
            segments.push(Segment {
                first: first.min(next_seq),
                path,
                index: scan.index,
                bytes: scan.committed_len,
                end: scan.last_commit.map_or(first, |(end, _)| end),
            });
        }
        // Empty segments other than the last carry nothing.
        let last = segments.len().saturating_sub(1);
        let mut kept = Vec::with_capacity(segments.len());
        for (n, segment) in segments.into_iter().enumerate() {
            if segment.bytes == 0 && n != last {
                fs::remove_file(&segment.path).map_err(io_error(&segment.path))?;
            } else {
                kept.push(segment);
            }
        }
        let mut segments = kept;
        if segments.is_empty() {
            let path = dir.join(segment_name(next_seq));
            segments.push(Segment {
                first: next_seq,
                path,
                index: Vec::new(),
                bytes: 0,
                end: next_seq,
            });
        }
        let current = segments.last().map(|s| (s.path.clone(), s.bytes));
        let (path, offset) = current.unwrap_or_else(|| (dir.join(segment_name(next_seq)), 0));
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_error(&path))?;
        file.seek(SeekFrom::Start(offset))
            .map_err(io_error(&path))?;
        let total_bytes = segments.iter().map(|s| s.bytes).sum();
        let (head_tx, _) = tokio::sync::watch::channel(next_seq);
        Ok(Journal {
            dir: dir.to_owned(),
            _lock: lock,
            state: Mutex::new(State {
                segments,
                out: BufWriter::with_capacity(64 * 1024, file),
                out_offset: offset,
                committed_offset: offset,
                next_seq,
                last_end_lsn,
                cache: VecDeque::new(),
                cache_bytes: 0,
                pending: Vec::new(),
                pending_bytes: 0,
                spilled: false,
                total_bytes,
                scratch: Vec::new(),
            }),
            head: AtomicU64::new(next_seq),
            synced: AtomicU64::new(next_seq),
            head_tx,
        })
    }

    /// One past the last committed change: where a new subscriber starts.
    pub fn head(&self) -> Seq {
        self.head.load(Ordering::Acquire)
    }

    /// One past the last change on stable storage.
    pub fn synced(&self) -> Seq {
        self.synced.load(Ordering::Acquire)
    }

    /// Watches `head`.
    pub fn watch(&self) -> tokio::sync::watch::Receiver<Seq> {
        self.head_tx.subscribe()
    }

    /// The end LSN of the last journaled transaction: transactions that commit before it are
    /// already in the journal (the slot streams them again after a reconnect).
    pub fn last_end_lsn(&self) -> u64 {
        self.state.lock().last_end_lsn
    }

    /// The oldest change still available.
    pub fn first(&self) -> Seq {
        let state = self.state.lock();
        state.segments.first().map_or(state.next_seq, |s| s.first)
    }

    /// Bytes on disk.
    pub fn bytes(&self) -> u64 {
        self.state.lock().total_bytes
    }

    /// Appends a change of the open transaction; returns its position.
    pub fn append(&self, mut change: Change) -> Result<Seq, JournalError> {
        let mut state = self.state.lock();
        let state = &mut *state;
        let seq = state.next_seq;
        change.seq = seq;
        let mut scratch = std::mem::take(&mut state.scratch);
        scratch.clear();
        encode_change(&mut scratch, &change);
        let offset = state.out_offset;
        let written = write_frame(&mut state.out, &scratch);
        state.scratch = scratch;
        let written = written.map_err(io_error(self.current_path(state)))?;
        state.out_offset += written;
        if seq.is_multiple_of(INDEX_EVERY)
            && let Some(segment) = state.segments.last_mut()
        {
            segment.index.push((seq, offset));
        }
        state.next_seq += 1;
        if !state.spilled {
            let size = change.estimated_bytes();
            if state.pending.len() >= PENDING_CHANGES || state.pending_bytes + size > PENDING_BYTES
            {
                // Too large to hold: delivery reads this transaction back from disk.
                state.spilled = true;
                state.pending = Vec::new();
                state.pending_bytes = 0;
            } else {
                state.pending_bytes += size;
                state.pending.push(Arc::new(change));
            }
        }
        Ok(seq)
    }

    /// Ends the open transaction (possibly empty) at `end_lsn`: its changes become readable.
    pub fn commit(&self, end_lsn: u64) -> Result<Seq, JournalError> {
        let mut state = self.state.lock();
        let state = &mut *state;
        let mut body = Vec::with_capacity(17);
        body.push(TAG_COMMIT);
        body.extend_from_slice(&state.next_seq.to_le_bytes());
        body.extend_from_slice(&end_lsn.to_le_bytes());
        let path = self.current_path(state).to_owned();
        let written = write_frame(&mut state.out, &body).map_err(io_error(&path))?;
        state.out_offset += written;
        // Readers use their own file handles: the committed bytes must reach the file.
        state.out.flush().map_err(io_error(&path))?;
        let added = state.out_offset - state.committed_offset;
        state.committed_offset = state.out_offset;
        state.total_bytes += added;
        state.last_end_lsn = end_lsn;
        let head = state.next_seq;
        if let Some(segment) = state.segments.last_mut() {
            segment.bytes = state.out_offset;
            segment.end = head;
        }
        if state.spilled {
            state.cache.clear();
            state.cache_bytes = 0;
        } else {
            state.cache.extend(state.pending.drain(..));
            state.cache_bytes += state.pending_bytes;
        }
        state.pending_bytes = 0;
        state.spilled = false;
        while state.cache.len() > CACHE_CHANGES || state.cache_bytes > CACHE_BYTES {
            match state.cache.pop_front() {
                Some(old) => {
                    state.cache_bytes = state.cache_bytes.saturating_sub(old.estimated_bytes());
                }
                None => break,
            }
        }
        if state.out_offset >= SEGMENT_BYTES {
            self.rotate(state, head)?;
        }
        self.head.store(head, Ordering::Release);
        self.head_tx.send_replace(head);
        Ok(head)
    }

    /// Drops the open transaction's changes (the stream broke before its commit).
    pub fn abort(&self) -> Result<(), JournalError> {
        let mut state = self.state.lock();
        let state = &mut *state;
        let path = self.current_path(state).to_owned();
        if state.out_offset == state.committed_offset && state.pending.is_empty() {
            return Ok(());
        }
        state.out.flush().map_err(io_error(&path))?;
        let committed = state.committed_offset;
        state
            .out
            .get_ref()
            .set_len(committed)
            .map_err(io_error(&path))?;
        state
            .out
            .seek(SeekFrom::Start(committed))
            .map_err(io_error(&path))?;
        state.out_offset = committed;
        state.next_seq = self.head();
        let head = state.next_seq;
        if let Some(segment) = state.segments.last_mut() {
            segment.index.retain(|(seq, _)| *seq < head);
        }
        state.pending.clear();
        state.pending_bytes = 0;
        state.spilled = false;
        Ok(())
    }

    /// Puts everything committed so far on stable storage; returns the position it covers.
    pub async fn sync(&self) -> Result<Seq, JournalError> {
        let (file, head, path) = {
            let mut state = self.state.lock();
            let path = self.current_path(&state).to_owned();
            state.out.flush().map_err(io_error(&path))?;
            let file = state.out.get_ref().try_clone().map_err(io_error(&path))?;
            (file, self.head(), path)
        };
        if head <= self.synced() {
            return Ok(head);
        }
        let synced = tokio::task::spawn_blocking(move || file.sync_data())
            .await
            .map_err(|e| io_error(&path)(io::Error::other(e)))?;
        synced.map_err(io_error(&path))?;
        self.synced.fetch_max(head, Ordering::AcqRel);
        Ok(head)
    }

    /// Ties the journal to a database cluster (its system identifier). A journal written for
    /// another cluster (the database was recreated) is emptied: its positions mean nothing
    /// there. Sequence numbers keep growing. Returns whether it was emptied.
    pub fn bind_system(&self, system_id: &str) -> Result<bool, JournalError> {
        let path = self.dir.join("SYSTEM");
        let known = fs::read_to_string(&path).ok();
        if known.as_deref() == Some(system_id) {
            return Ok(false);
        }
        let reset = known.is_some();
        if reset {
            let mut state = self.state.lock();
            let state = &mut *state;
            let head = self.head();
            let segments = std::mem::take(&mut state.segments);
            for segment in segments {
                fs::remove_file(&segment.path).map_err(io_error(&segment.path))?;
            }
            let segment_path = self.dir.join(segment_name(head));
            let file = OpenOptions::new()
                .create(true)
                .truncate(true)
                .read(true)
                .write(true)
                .open(&segment_path)
                .map_err(io_error(&segment_path))?;
            state.out = BufWriter::with_capacity(64 * 1024, file);
            state.out_offset = 0;
            state.committed_offset = 0;
            state.next_seq = head;
            state.last_end_lsn = 0;
            state.cache.clear();
            state.cache_bytes = 0;
            state.pending.clear();
            state.pending_bytes = 0;
            state.spilled = false;
            state.total_bytes = 0;
            state.segments.push(Segment {
                first: head,
                path: segment_path,
                index: Vec::new(),
                bytes: 0,
                end: head,
            });
        }
        fs::write(&path, system_id).map_err(io_error(&path))?;
        Ok(reset)
    }

    /// Reads up to `max` committed changes from `from` on.
    pub fn read(&self, from: Seq, max: usize) -> Result<Chunk, JournalError> {
        let (path, start, end) = {
            let state = self.state.lock();
            let head = self.head();
            let end = head.min(from.saturating_add(max as u64));
            if let Some(front) = state.cache.front()
                && front.seq <= from
            {
                let skip = usize::try_from(from - front.seq).unwrap_or(usize::MAX);
                let take = usize::try_from(end.saturating_sub(from)).unwrap_or(0);
                return Ok(Chunk::Cached(
                    state.cache.iter().skip(skip).take(take).cloned().collect(),
                ));
            }
            let first = state.segments.first().map_or(head, |s| s.first);
            if from < first {
                return Ok(Chunk::Gone);
            }
            if from >= head {
                return Ok(Chunk::Stored(Vec::new()));
            }
            let Some(segment) = state.segments.iter().rev().find(|s| s.first <= from) else {
                return Ok(Chunk::Gone);
            };
            let start = segment
                .index
                .iter()
                .rev()
                .find(|(seq, _)| *seq <= from)
                .map_or(0, |(_, offset)| *offset);
            (segment.path.clone(), start, end)
        };
        let changes = read_segment(&path, start, from, end).map_err(io_error(&path))?;
        Ok(Chunk::Stored(changes))
    }

    /// Deletes whole segments that end at or before `keep_from` (never the current one).
    pub fn prune(&self, keep_from: Seq) -> Result<(), JournalError> {
        let mut state = self.state.lock();
        while state.segments.len() > 1 {
            let Some(first) = state.segments.first() else {
                break;
            };
            if first.end > keep_from {
                break;
            }
            let segment = state.segments.remove(0);
            state.total_bytes = state.total_bytes.saturating_sub(segment.bytes);
            fs::remove_file(&segment.path).map_err(io_error(&segment.path))?;
            tracing::debug!(
                first = segment.first,
                end = segment.end,
                "pruned a change journal segment"
            );
        }
        Ok(())
    }

    fn current_path<'a>(&'a self, state: &'a State) -> &'a Path {
        state
            .segments
            .last()
            .map_or(self.dir.as_path(), |s| s.path.as_path())
    }

    fn rotate(&self, state: &mut State, head: Seq) -> Result<(), JournalError> {
        let path = self.dir.join(segment_name(head));
        state.out.flush().map_err(io_error(&path))?;
        // The closed segment goes to disk before the new one is used.
        state.out.get_ref().sync_data().map_err(io_error(&path))?;
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_error(&path))?;
        state.out = BufWriter::with_capacity(64 * 1024, file);
        state.out_offset = 0;
        state.committed_offset = 0;
        state.segments.push(Segment {
            first: head,
            path,
            index: Vec::new(),
            bytes: 0,
            end: head,
        });
        Ok(())
    }
}

fn segment_name(first: Seq) -> String {
    format!("{first:020}.log")
}

fn write_frame(out: &mut BufWriter<File>, body: &[u8]) -> io::Result<u64> {
    let len = u32::try_from(body.len()).map_err(|_| io::Error::other("change too large"))?;
    let crc = crc32fast::hash(body);
    out.write_all(&len.to_le_bytes())?;
    out.write_all(&crc.to_le_bytes())?;
    out.write_all(body)?;
    Ok(8 + u64::from(len))
}

fn kind_byte(kind: ChangeKind) -> u8 {
    match kind {
        ChangeKind::Insert => 1,
        ChangeKind::Update => 2,
        ChangeKind::Delete => 3,
    }
}

fn encode_cells(out: &mut Vec<u8>, cells: Option<&Vec<Cell>>) {
    let Some(cells) = cells else {
        out.push(0);
        return;
    };
    out.push(1);
    out.extend_from_slice(&u32::try_from(cells.len()).unwrap_or(0).to_le_bytes());
    for cell in cells {
        match cell {
            Cell::Null => out.push(0),
            Cell::Toast => out.push(1),
            Cell::Text(text) => {
                out.push(2);
                out.extend_from_slice(&u32::try_from(text.len()).unwrap_or(0).to_le_bytes());
                out.extend_from_slice(text.as_bytes());
            }
        }
    }
}

fn encode_change(out: &mut Vec<u8>, change: &Change) {
    out.push(TAG_CHANGE);
    out.extend_from_slice(&change.seq.to_le_bytes());
    out.extend_from_slice(&change.xid.to_le_bytes());
    out.extend_from_slice(&change.commit_micros.to_le_bytes());
    out.extend_from_slice(&change.table.oid.to_le_bytes());
    out.push(kind_byte(change.kind));
    out.push(u8::from(change.old_key_only));
    let columns = &change.table.columns;
    out.extend_from_slice(&u32::try_from(columns.len()).unwrap_or(0).to_le_bytes());
    for column in columns {
        out.extend_from_slice(&u32::try_from(column.name.len()).unwrap_or(0).to_le_bytes());
        out.extend_from_slice(column.name.as_bytes());
    }
    encode_cells(out, change.new.as_ref());
    encode_cells(out, change.old.as_ref());
}

/// Checked reading of a frame body: never panics on bad bytes.
struct Body<'a> {
    bytes: &'a [u8],
}

impl<'a> Body<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.bytes.split_at_checked(n)?;
        self.bytes = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1)?.first().copied()
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn string(&mut self) -> Option<String> {
        let len = usize::try_from(self.u32()?).ok()?;
        Some(String::from_utf8_lossy(self.take(len)?).into_owned())
    }
    fn cells(&mut self) -> Option<Option<Vec<Cell>>> {
        if self.u8()? == 0 {
            return Some(None);
        }
        let count = usize::try_from(self.u32()?).ok()?;
        // Each cell takes at least one byte: a bad count cannot allocate more than the body.
        let mut cells = Vec::with_capacity(count.min(self.bytes.len()));
        for _ in 0..count {
            cells.push(match self.u8()? {
                0 => Cell::Null,
                1 => Cell::Toast,
                2 => Cell::Text(self.string()?),
                _ => return None,
            });
        }
        Some(Some(cells))
    }
}

/// Decodes a change frame body (`None` for a malformed one).
pub fn decode_change(bytes: &[u8]) -> Option<StoredChange> {
    let mut body = Body { bytes };
    if body.u8()? != TAG_CHANGE {
        return None;
    }
    let seq = body.u64()?;
    let xid = body.u32()?;
    let commit_micros = i64::from_le_bytes(body.take(8)?.try_into().ok()?);
    let oid = body.u32()?;
    let kind = match body.u8()? {
        1 => ChangeKind::Insert,
        2 => ChangeKind::Update,
        3 => ChangeKind::Delete,
        _ => return None,
    };
    let old_key_only = body.u8()? != 0;
    let count = usize::try_from(body.u32()?).ok()?;
    let mut columns = Vec::with_capacity(count.min(body.bytes.len()));
    for _ in 0..count {
        columns.push(body.string()?);
    }
    let new = body.cells()?;
    let old = body.cells()?;
    Some(StoredChange {
        seq,
        xid,
        commit_micros,
        oid,
        kind,
        old_key_only,
        columns,
        new,
        old,
    })
}

/// Reads one frame; `Ok(None)` at a clean end, `Err` on a torn or corrupt frame.
fn read_frame<R: Read>(reader: &mut R, body: &mut Vec<u8>) -> io::Result<Option<()>> {
    let mut header = [0u8; 8];
    let mut got = 0;
    while got < header.len() {
        let n = reader.read(header.get_mut(got..).unwrap_or_default())?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "torn frame header",
                ))
            };
        }
        got += n;
    }
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    if len > MAX_FRAME {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "frame length"));
    }
    body.clear();
    body.resize(len, 0);
    reader.read_exact(body)?;
    if crc32fast::hash(body) != crc {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "frame checksum"));
    }
    Ok(Some(()))
}

struct Scan {
    file_len: u64,
    committed_len: u64,
    last_commit: Option<(Seq, u64)>,
    index: Vec<(Seq, u64)>,
    /// A frame was corrupt (not merely cut off).
    damaged: bool,
}

fn scan_segment(path: &Path) -> io::Result<Scan> {
    let file = File::open(path)?;
    let file_len = file.metadata()?.len();
    let mut reader = io::BufReader::with_capacity(256 * 1024, file);
    let mut body = Vec::new();
    let mut offset = 0u64;
    let mut scan = Scan {
        file_len,
        committed_len: 0,
        last_commit: None,
        index: Vec::new(),
        damaged: false,
    };
    let mut uncommitted_index = Vec::new();
    loop {
        match read_frame(&mut reader, &mut body) {
            Ok(Some(())) => {}
            Ok(None) => break,
            Err(error) => {
                scan.damaged = error.kind() == io::ErrorKind::InvalidData;
                break;
            }
        }
        let frame_offset = offset;
        offset += 8 + body.len() as u64;
        match body.first() {
            Some(&TAG_CHANGE) => {
                let seq = body
                    .get(1..9)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_le_bytes);
                if let Some(seq) = seq
                    && seq.is_multiple_of(INDEX_EVERY)
                {
                    uncommitted_index.push((seq, frame_offset));
                }
            }
            Some(&TAG_COMMIT) => {
                let mut b = Body {
                    bytes: body.get(1..).unwrap_or_default(),
                };
                if let (Some(end), Some(lsn)) = (b.u64(), b.u64()) {
                    scan.last_commit = Some((end, lsn));
                    scan.committed_len = offset;
                    scan.index.append(&mut uncommitted_index);
                }
            }
            _ => {
                scan.damaged = true;
                break;
            }
        }
    }
    Ok(scan)
}

fn read_segment(path: &Path, start: u64, from: Seq, end: Seq) -> io::Result<Vec<StoredChange>> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(start))?;
    let mut reader = io::BufReader::with_capacity(256 * 1024, file);
    let mut body = Vec::new();
    let mut out = Vec::new();
    while read_frame(&mut reader, &mut body)?.is_some() {
        if body.first() != Some(&TAG_CHANGE) {
            continue;
        }
        let Some(change) = decode_change(&body) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "malformed change",
            ));
        };
        if change.seq < from {
            continue;
        }
        if change.seq >= end {
            break;
        }
        out.push(change);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::catalog::{Column, Table};

    fn table() -> Arc<Table> {
        Arc::new(Table {
            oid: 42,
            schema: "public".into(),
            name: "t".into(),
            columns: vec![Column::test("id", "int8"), Column::test("body", "text")],
            primary_key: vec![0],
            rls: false,
        })
    }

    fn change(n: u64) -> Change {
        Change {
            seq: 0,
            xid: 7,
            commit_micros: 1_000,
            commit_timestamp: Arc::from("2000-01-01T00:00:00.001Z"),
            table: table(),
            kind: ChangeKind::Insert,
            new: Some(vec![Cell::Text(n.to_string()), Cell::Null]),
            old: None,
            old_key_only: false,
        }
    }

    fn stored_ids(chunk: Chunk) -> Vec<String> {
        match chunk {
            Chunk::Stored(changes) => changes
                .into_iter()
                .filter_map(|c| match c.new?.first()? {
                    Cell::Text(t) => Some(t.clone()),
                    _ => None,
                })
                .collect(),
            Chunk::Cached(changes) => changes
                .iter()
                .filter_map(|c| match c.new.as_ref()?.first()? {
                    Cell::Text(t) => Some(t.clone()),
                    _ => None,
                })
                .collect(),
            Chunk::Gone => vec!["gone".into()],
        }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "realtide-journal-{name}-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn reopen_cuts_the_unfinished_tail_and_keeps_positions() -> Result<(), JournalError> {
        let dir = temp_dir("reopen");
        {
            let journal = Journal::open(&dir)?;
            assert_eq!(journal.head(), 1);
            for n in 0..300 {
                journal.append(change(n))?;
            }
            assert_eq!(journal.commit(1000)?, 301);
            journal.append(change(999))?;
            // No commit: the process dies here.
            let other = Journal::open(&dir);
            assert!(matches!(other, Err(JournalError::Locked(_))));
        }
        let journal = Journal::open(&dir)?;
        assert_eq!(journal.head(), 301);
        assert_eq!(journal.last_end_lsn(), 1000);
        let ids = stored_ids(journal.read(130, 5)?);
        assert_eq!(ids, ["129", "130", "131", "132", "133"]);
        assert_eq!(stored_ids(journal.read(299, 10)?), ["298", "299"]);
        assert_eq!(journal.append(change(5))?, 301);
        journal.commit(2000)?;
        assert_eq!(stored_ids(journal.read(301, 10)?), ["5"]);
        let _ = fs::remove_dir_all(&dir);
        Ok(())
    }

    #[test]
    fn corrupt_tail_is_cut() -> Result<(), JournalError> {
        let dir = temp_dir("corrupt");
        let path = {
            let journal = Journal::open(&dir)?;
            journal.append(change(1))?;
            journal.commit(10)?;
            journal.append(change(2))?;
            journal.commit(20)?;
            journal.state.lock().segments.last().map(|s| s.path.clone())
        };
        let path = path.unwrap_or_default();
        let mut bytes = fs::read(&path).map_err(io_error(&path))?;
        let len = bytes.len();
        // Flip a byte of the last frame.
        if let Some(b) = bytes.get_mut(len - 3) {
            *b ^= 0xff;
        }
        fs::write(&path, &bytes).map_err(io_error(&path))?;
        let journal = Journal::open(&dir)?;
        assert_eq!(journal.head(), 2);
        assert_eq!(journal.last_end_lsn(), 10);
        let _ = fs::remove_dir_all(&dir);
        Ok(())
    }

    #[test]
    fn abort_and_spill() -> Result<(), JournalError> {
        let dir = temp_dir("spill");
        let journal = Journal::open(&dir)?;
        journal.append(change(1))?;
        journal.abort()?;
        assert_eq!(journal.head(), 1);
        for n in 0..(PENDING_CHANGES as u64 + 5) {
            journal.append(change(n))?;
        }
        journal.commit(5)?;
        // A spilled transaction is read from disk.
        assert!(matches!(journal.read(1, 2)?, Chunk::Stored(_)));
        assert_eq!(stored_ids(journal.read(1, 2)?), ["0", "1"]);
        journal.append(change(77))?;
        let head = journal.commit(6)?;
        assert!(matches!(journal.read(head - 1, 2)?, Chunk::Cached(_)));
        let _ = fs::remove_dir_all(&dir);
        Ok(())
    }

    #[test]
    fn any_damage_keeps_a_committed_prefix() -> Result<(), JournalError> {
        let dir = temp_dir("damage");
        let path = {
            let journal = Journal::open(&dir)?;
            for txn in 0..20u64 {
                for n in 0..5 {
                    journal.append(change(txn * 5 + n))?;
                }
                journal.commit(txn + 1)?;
            }
            journal.state.lock().segments.last().map(|s| s.path.clone())
        };
        let path = path.unwrap_or_default();
        let pristine = fs::read(&path).map_err(io_error(&path))?;
        for round in 0..200u64 {
            let mut bytes = pristine.clone();
            let at = usize::try_from(rand::random::<u64>() % bytes.len() as u64).unwrap_or(0);
            if round % 2 == 0 {
                bytes.truncate(at);
            } else if let Some(b) = bytes.get_mut(at) {
                *b ^= 1 << (round % 8);
            }
            fs::write(&path, &bytes).map_err(io_error(&path))?;
            let journal = Journal::open(&dir)?;
            let head = journal.head();
            // Whole transactions only, and what is left reads back exactly.
            assert_eq!((head - 1) % 5, 0, "round {round}: head {head}");
            let ids = stored_ids(journal.read(1, 200)?);
            let expected: Vec<String> = (0..head - 1).map(|n| n.to_string()).collect();
            assert_eq!(ids, expected, "round {round}");
            drop(journal);
        }
        let _ = fs::remove_dir_all(&dir);
        Ok(())
    }

    #[test]
    fn garbage_never_panics() {
        for len in 0..64 {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 % 251) as u8).collect();
            let _ = decode_change(&bytes);
            let mut tagged = vec![TAG_CHANGE];
            tagged.extend_from_slice(&bytes);
            let _ = decode_change(&tagged);
        }
        let mut huge = vec![TAG_CHANGE];
        huge.extend_from_slice(&[0xff; 40]);
        assert!(decode_change(&huge).is_none());
    }
}
