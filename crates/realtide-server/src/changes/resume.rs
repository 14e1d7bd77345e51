//! Where departed `postgres_changes` subscribers were, so that a rejoin resumes without a gap.
//!
//! A subscriber is identified by its topic, its token's subject (or role when the token has
//! no `sub`) and its bindings: the identity a client has when it rejoins after a lost socket
//! or a server restart. When its channel goes away for any reason but an explicit leave, its
//! cursor is kept here for the resume window; a rejoin with the same identity takes it over
//! and delivery continues from where the socket stopped. Records are kept on disk
//! (`subscribers.json` next to the journal, rewritten every second and at shutdown), with the
//! positions of live subscribers too, so that a killed process resumes them as well.
//!
//! A record that expired (window, count or journal-size bound) leaves a marker, so that a late
//! rejoin is told that changes were missed instead of hearing nothing.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::changes::journal::Seq;
use crate::config::ResumeLimits;
use crate::outbox::Cursor;

/// How long a missed-changes marker is kept after its record expired.
const MARKER_KEEP: Duration = Duration::from_secs(3600);
/// Most markers kept.
const MARKERS_MAX: usize = 100_000;

/// A subscriber identity: hash of topic, subject and bindings.
pub type Identity = u64;

/// The identity of a subscriber.
pub fn identity(topic: &str, subject: &str, binding_ids: &[u32]) -> Identity {
    let mut ids = binding_ids.to_vec();
    ids.sort_unstable();
    let mut text = String::with_capacity(topic.len() + subject.len() + ids.len() * 8 + 2);
    text.push_str(topic);
    text.push('\0');
    text.push_str(subject);
    text.push('\0');
    for id in ids {
        text.push_str(&id.to_string());
        text.push(',');
    }
    realtide_protocol::message::fnv1a(text.as_bytes())
}

#[derive(Debug, Clone)]
enum Position {
    /// A cursor whose writer may still be flushing; read when needed.
    Live(Arc<Cursor>),
    /// Loaded from disk.
    Stored(Seq),
}

impl Position {
    fn seq(&self) -> Seq {
        match self {
            Position::Live(cursor) => cursor.resume_position(),
            Position::Stored(seq) => *seq,
        }
    }
}

#[derive(Debug, Clone)]
struct Departed {
    at: SystemTime,
    position: Position,
}

/// Where a new subscription starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    /// At the journal's head (no record).
    Fresh,
    /// At a departed subscriber's position.
    From(Seq),
    /// A record existed but expired: changes between `since` and now were missed.
    Missed {
        /// When the subscriber left.
        since: SystemTime,
    },
}

/// The departed subscribers.
#[derive(Debug)]
pub struct ResumeBook {
    limits: ResumeLimits,
    path: PathBuf,
    departed: HashMap<Identity, VecDeque<Departed>>,
    count: usize,
    markers: HashMap<Identity, SystemTime>,
    dirty: bool,
}

#[derive(Debug, Serialize, Deserialize)]
struct SavedRecord {
    identity: String,
    at_ms: u64,
    next: Seq,
}

#[derive(Debug, Serialize, Deserialize, Default)]
struct SavedBook {
    departed: Vec<SavedRecord>,
    missed: Vec<SavedRecord>,
}

fn millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn from_millis(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

impl ResumeBook {
    /// Loads the book kept in `dir` (empty when there is none or it cannot be read).
    pub fn load(dir: &Path, limits: ResumeLimits) -> ResumeBook {
        let path = dir.join("subscribers.json");
        let mut book = ResumeBook {
            limits,
            path,
            departed: HashMap::new(),
            count: 0,
            markers: HashMap::new(),
            dirty: false,
        };
        let saved: SavedBook = match std::fs::read(&book.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|error| {
                tracing::warn!(%error, path = %book.path.display(), "ignoring an unreadable subscriber positions file");
                SavedBook::default()
            }),
            Err(_) => SavedBook::default(),
        };
        for record in saved.departed {
            if let Ok(identity) = u64::from_str_radix(&record.identity, 16) {
                book.insert(
                    identity,
                    Departed {
                        at: from_millis(record.at_ms),
                        position: Position::Stored(record.next),
                    },
                );
            }
        }
        for record in saved.missed {
            if let Ok(identity) = u64::from_str_radix(&record.identity, 16) {
                book.markers.insert(identity, from_millis(record.at_ms));
            }
        }
        book
    }

    fn insert(&mut self, identity: Identity, departed: Departed) {
        self.departed
            .entry(identity)
            .or_default()
            .push_back(departed);
        self.count += 1;
        self.dirty = true;
    }

    /// Records a departed subscriber.
    pub fn depart(&mut self, identity: Identity, cursor: Arc<Cursor>) {
        self.insert(
            identity,
            Departed {
                at: SystemTime::now(),
                position: Position::Live(cursor),
            },
        );
        self.enforce_count();
    }

    /// Where a subscription of `identity` starts; takes its oldest record. `first` is the
    /// oldest position the journal still has.
    pub fn take(&mut self, identity: Identity, first: Seq) -> Resume {
        if let Some(queue) = self.departed.get_mut(&identity)
            && let Some(departed) = queue.pop_front()
        {
            if queue.is_empty() {
                self.departed.remove(&identity);
            }
            self.count = self.count.saturating_sub(1);
            self.dirty = true;
            let fresh = departed
                .at
                .elapsed()
                .map_or(true, |age| age <= self.limits.window);
            let seq = departed.position.seq();
            return if fresh && seq >= first {
                Resume::From(seq)
            } else {
                Resume::Missed { since: departed.at }
            };
        }
        if let Some(since) = self.markers.remove(&identity) {
            self.dirty = true;
            return Resume::Missed { since };
        }
        Resume::Fresh
    }

    /// Expires records past the window or behind `first`; returns the oldest position a record
    /// still needs.
    pub fn expire(&mut self, first: Seq) -> Option<Seq> {
        let window = self.limits.window;
        let now = SystemTime::now();
        let mut expired = Vec::new();
        let mut oldest: Option<Seq> = None;
        self.departed.retain(|identity, queue| {
            queue.retain(|departed| {
                let age = now.duration_since(departed.at).unwrap_or_default();
                let seq = departed.position.seq();
                if age > window || seq < first {
                    expired.push((*identity, departed.at));
                    false
                } else {
                    oldest = Some(oldest.map_or(seq, |o| o.min(seq)));
                    true
                }
            });
            !queue.is_empty()
        });
        if !expired.is_empty() {
            self.count = self.count.saturating_sub(expired.len());
            self.dirty = true;
            for (identity, at) in expired {
                tracing::info!(
                    identity = format_args!("{identity:016x}"),
                    "a departed subscriber's resume record expired"
                );
                self.markers.insert(identity, at);
            }
        }
        let before = self.markers.len();
        self.markers
            .retain(|_, at| now.duration_since(*at).unwrap_or_default() < MARKER_KEEP);
        if self.markers.len() > MARKERS_MAX {
            let mut ages: Vec<(SystemTime, Identity)> =
                self.markers.iter().map(|(i, at)| (*at, *i)).collect();
            ages.sort_unstable();
            for (_, identity) in ages.iter().take(self.markers.len() - MARKERS_MAX) {
                self.markers.remove(identity);
            }
        }
        self.dirty |= before != self.markers.len();
        oldest
    }

    /// Gives up the records holding the oldest positions (the journal grew past its bound);
    /// returns how many were dropped.
    pub fn drop_oldest(&mut self, below: Seq) -> usize {
        let mut dropped = Vec::new();
        self.departed.retain(|identity, queue| {
            queue.retain(|departed| {
                if departed.position.seq() < below {
                    dropped.push((*identity, departed.at));
                    false
                } else {
                    true
                }
            });
            !queue.is_empty()
        });
        self.count = self.count.saturating_sub(dropped.len());
        let n = dropped.len();
        for (identity, at) in dropped {
            self.markers.insert(identity, at);
        }
        self.dirty |= n > 0;
        n
    }

    fn enforce_count(&mut self) {
        while self.count > self.limits.max_records {
            // Drop the oldest departure.
            let oldest = self
                .departed
                .iter()
                .filter_map(|(identity, queue)| queue.front().map(|d| (d.at, *identity)))
                .min();
            let Some((at, identity)) = oldest else {
                break;
            };
            if let Some(queue) = self.departed.get_mut(&identity) {
                queue.pop_front();
                if queue.is_empty() {
                    self.departed.remove(&identity);
                }
            }
            self.count = self.count.saturating_sub(1);
            self.markers.insert(identity, at);
            self.dirty = true;
        }
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether no record is kept.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Writes the book, with `live` subscribers (identity, position) as departed now, to disk
    /// (write to a temporary file, then rename). `durable`: also wait for stable storage (a
    /// crash of the process alone does not lose what was written).
    pub fn save(&mut self, live: &[(Identity, Seq)], durable: bool) -> std::io::Result<()> {
        let now = millis(SystemTime::now());
        let mut saved = SavedBook::default();
        for (identity, queue) in &self.departed {
            for departed in queue {
                saved.departed.push(SavedRecord {
                    identity: format!("{identity:016x}"),
                    at_ms: millis(departed.at),
                    next: departed.position.seq(),
                });
            }
        }
        for (identity, next) in live {
            saved.departed.push(SavedRecord {
                identity: format!("{identity:016x}"),
                at_ms: now,
                next: *next,
            });
        }
        for (identity, at) in &self.markers {
            saved.missed.push(SavedRecord {
                identity: format!("{identity:016x}"),
                at_ms: millis(*at),
                next: 0,
            });
        }
        let bytes = serde_json::to_vec(&saved).map_err(std::io::Error::other)?;
        let temporary = self.path.with_extension("json.tmp");
        {
            use std::io::Write;
            let mut file = std::fs::File::create(&temporary)?;
            file.write_all(&bytes)?;
            if durable {
                file.sync_data()?;
            }
        }
        std::fs::rename(&temporary, &self.path)?;
        self.dirty = false;
        Ok(())
    }

    /// Whether records changed since the last save.
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }
}

/// The `system` message text for missed changes.
pub fn missed_message(since: SystemTime, window: Duration) -> String {
    let secs = SystemTime::now()
        .duration_since(since)
        .unwrap_or_default()
        .as_secs();
    format!(
        "Missed changes: this subscriber left {secs} s ago, beyond what realtide keeps for a resume (CHANGES_RESUME_WINDOW {} s, or the journal bounds); changes committed meanwhile were not delivered",
        window.as_secs()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ResumeLimits {
        ResumeLimits {
            window: Duration::from_secs(60),
            max_records: 2,
        }
    }

    #[test]
    fn take_resume_miss_and_persist() -> std::io::Result<()> {
        let dir = std::env::temp_dir().join(format!("realtide-resume-{}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir)?;
        let mut book = ResumeBook::load(&dir, limits());
        let a = identity("realtime:a", "user-1", &[2, 1]);
        assert_eq!(a, identity("realtime:a", "user-1", &[1, 2]));
        assert_ne!(a, identity("realtime:a", "user-2", &[1, 2]));
        assert_eq!(book.take(a, 0), Resume::Fresh);
        book.depart(a, Cursor::new(10));
        assert_eq!(book.take(a, 0), Resume::From(10));
        // Behind the journal's first position: missed.
        book.depart(a, Cursor::new(10));
        assert!(matches!(book.take(a, 11), Resume::Missed { .. }));
        // The count bound turns the oldest record into a marker.
        for n in 0..3 {
            book.depart(identity("t", "s", &[n]), Cursor::new(5));
        }
        assert_eq!(book.len(), 2);
        assert!(matches!(
            book.take(identity("t", "s", &[0]), 0),
            Resume::Missed { .. }
        ));
        book.save(&[(a, 42)], true)?;
        let mut loaded = ResumeBook::load(&dir, limits());
        assert_eq!(loaded.take(a, 0), Resume::From(42));
        assert_eq!(loaded.take(identity("t", "s", &[1]), 0), Resume::From(5));
        assert_eq!(loaded.drop_oldest(100), 1);
        assert!(matches!(
            loaded.take(identity("t", "s", &[2]), 0),
            Resume::Missed { .. }
        ));
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }
}
