//! One committed row change as decoded from pgoutput, journaled and delivered.

use std::sync::Arc;

use crate::db::catalog::Table;

/// What happened to a row. (A binding's event filter, which also has `*`, is
/// [`crate::changes::subscriptions::Action`].)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    /// `INSERT`
    Insert,
    /// `UPDATE`
    Update,
    /// `DELETE`
    Delete,
}

impl ChangeKind {
    /// The name on the wire (`eventType`, `type`).
    pub fn label(self) -> &'static str {
        match self {
            ChangeKind::Insert => "INSERT",
            ChangeKind::Update => "UPDATE",
            ChangeKind::Delete => "DELETE",
        }
    }
}

/// A column value as pgoutput sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cell {
    /// SQL NULL.
    Null,
    /// An unchanged TOASTed value that was not sent.
    Toast,
    /// The value's text output.
    Text(String),
}

/// One committed row change, with tuples aligned to the table's current columns.
#[derive(Debug, Clone)]
pub struct Change {
    /// Position in the change journal (set when journaled).
    pub seq: u64,
    /// The transaction's id (for the visibility check before row level security).
    pub xid: u32,
    /// Commit time, microseconds since 2000-01-01 (pgoutput's epoch).
    pub commit_micros: i64,
    /// The table.
    pub table: Arc<Table>,
    /// INSERT, UPDATE or DELETE.
    pub kind: ChangeKind,
    /// New tuple (INSERT, UPDATE).
    pub new: Option<Vec<Cell>>,
    /// Old tuple (UPDATE with replica identity or key change, DELETE).
    pub old: Option<Vec<Cell>>,
    /// Whether `old` holds only the replica-identity key.
    pub old_key_only: bool,
    /// `YYYY-MM-DDTHH:MM:SS.mmmZ`.
    pub commit_timestamp: Arc<str>,
}

impl Change {
    /// Rough memory size, for the journal's in-memory bounds.
    pub fn estimated_bytes(&self) -> usize {
        let cells = |row: &Option<Vec<Cell>>| {
            row.as_ref().map_or(0, |cells| {
                cells
                    .iter()
                    .map(|c| match c {
                        Cell::Text(t) => t.len() + 32,
                        Cell::Null | Cell::Toast => 32,
                    })
                    .sum()
            })
        };
        160 + cells(&self.new) + cells(&self.old)
    }

    /// The value a filter sees: the new row for INSERT/UPDATE (unchanged TOAST taken from the
    /// old row), the old row for DELETE.
    pub(crate) fn filter_value(&self, index: usize) -> Option<&str> {
        let row = if self.kind == ChangeKind::Delete {
            self.old.as_ref()
        } else {
            self.new.as_ref()
        };
        match row.and_then(|r| r.get(index)) {
            Some(Cell::Text(text)) => Some(text),
            Some(Cell::Toast) => match self.old.as_ref().and_then(|r| r.get(index)) {
                Some(Cell::Text(text)) => Some(text),
                _ => None,
            },
            _ => None,
        }
    }

    pub(crate) fn pk_text(&self, index: usize) -> Option<&str> {
        match self.new.as_ref().and_then(|r| r.get(index)) {
            Some(Cell::Text(text)) => Some(text),
            _ => None,
        }
    }
}
