//! Rendering a change's `data` object (as the reference: `schema`, `table`, `commit_timestamp`,
//! `eventType`, `new`/`old`, `columns`, `errors`), with oversized records reduced to their
//! small fields.

use realtide_protocol::encode::push_json_str;
use realtide_replication::value::to_json_text;

use crate::changes::change::{Cell, Change, ChangeKind};

/// Limits applied while rendering.
#[derive(Debug, Clone, Copy)]
pub struct RenderLimits {
    /// Records above this size keep only small fields (`Error 413`).
    pub max_record_bytes: usize,
}

/// Renders the `data` object of a change for one column visibility.
pub(crate) fn render_data(
    change: &Change,
    mask: &[bool],
    selectable: &[bool],
    limits: RenderLimits,
) -> String {
    let table = &change.table;
    let kind = change.kind.label();
    let with_record = matches!(change.kind, ChangeKind::Insert | ChangeKind::Update);
    let with_old = matches!(change.kind, ChangeKind::Update | ChangeKind::Delete);
    let error = if change.kind == ChangeKind::Delete {
        None
    } else if table.primary_key.is_empty() {
        Some("Error 400: Bad Request, no primary key")
    } else if table
        .primary_key
        .iter()
        .any(|i| !selectable.get(*i).copied().unwrap_or(false))
    {
        Some("Error 401: Unauthorized")
    } else {
        None
    };
    let mut out = String::with_capacity(256);
    out.push_str("{\"schema\":");
    push_json_str(&mut out, &table.schema);
    out.push_str(",\"table\":");
    push_json_str(&mut out, &table.name);
    if let Some(error) = error {
        out.push_str(",\"commit_timestamp\":null,\"type\":\"");
        out.push_str(kind);
        out.push_str("\",\"columns\":[]");
        if with_record {
            out.push_str(",\"record\":{}");
        }
        if with_old {
            out.push_str(",\"old_record\":{}");
        }
        out.push_str(",\"errors\":[");
        push_json_str(&mut out, error);
        out.push_str("]}");
        return out;
    }
    out.push_str(",\"commit_timestamp\":");
    push_json_str(&mut out, &change.commit_timestamp);
    out.push_str(",\"type\":\"");
    out.push_str(kind);
    out.push_str("\",\"columns\":[");
    let mut first = true;
    for (column, _) in table.columns.iter().zip(mask).filter(|(_, m)| **m) {
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str("{\"name\":");
        push_json_str(&mut out, &column.name);
        out.push_str(",\"type\":");
        push_json_str(&mut out, &column.ty.name);
        out.push('}');
    }
    out.push(']');
    let record = with_record.then(|| record_fields(change, mask));
    let old = with_old.then(|| old_fields(change, mask));
    let size: usize = record
        .iter()
        .chain(old.iter())
        .flatten()
        .map(|(k, v)| k.len() + v.len() + 4)
        .sum();
    let too_big = size > limits.max_record_bytes;
    if let Some(fields) = &record {
        out.push_str(",\"record\":");
        push_object(&mut out, fields, too_big);
    }
    if let Some(fields) = &old {
        out.push_str(",\"old_record\":");
        push_object(&mut out, fields, too_big);
    }
    if too_big {
        out.push_str(",\"errors\":[\"Error 413: Payload Too Large\"]}");
    } else {
        out.push_str(",\"errors\":null}");
    }
    out
}

/// Fields of an over-size record that are kept: those whose JSON text is at most 64 bytes.
const SMALL_FIELD: usize = 64;

fn push_object(out: &mut String, fields: &[(&str, String)], small_only: bool) {
    out.push('{');
    let mut first = true;
    for (name, value) in fields {
        if small_only && value.len() > SMALL_FIELD {
            continue;
        }
        if !first {
            out.push(',');
        }
        first = false;
        push_json_str(out, name);
        out.push(':');
        out.push_str(value);
    }
    out.push('}');
}

fn render_cell(change: &Change, index: usize, cell: &Cell) -> Option<String> {
    let column = change.table.columns.get(index)?;
    match cell {
        Cell::Null => Some("null".to_owned()),
        Cell::Text(text) => Some(to_json_text(&column.ty, text)),
        // Unchanged TOAST: taken from the old tuple when it has the value, else left out.
        Cell::Toast => match change.old.as_ref().and_then(|r| r.get(index)) {
            Some(Cell::Text(text)) => Some(to_json_text(&column.ty, text)),
            _ => None,
        },
    }
}

fn record_fields<'a>(change: &'a Change, mask: &[bool]) -> Vec<(&'a str, String)> {
    let Some(new) = change.new.as_ref() else {
        return Vec::new();
    };
    change
        .table
        .columns
        .iter()
        .enumerate()
        .filter(|(i, _)| mask.get(*i).copied().unwrap_or(false))
        .filter_map(|(i, column)| {
            let cell = new.get(i)?;
            Some((column.name.as_str(), render_cell(change, i, cell)?))
        })
        .collect()
}

fn old_fields<'a>(change: &'a Change, mask: &[bool]) -> Vec<(&'a str, String)> {
    let table = &change.table;
    // Keys only: default replica identity, or a DELETE on a table with row level security.
    let keys_only = change.old_key_only
        || change.old.is_none()
        || (change.kind == ChangeKind::Delete && table.rls);
    let source = match change.old.as_ref() {
        Some(old) => old,
        // UPDATE without an old tuple: the key did not change, so the new row has it.
        None => match change.new.as_ref() {
            Some(new) => new,
            None => return Vec::new(),
        },
    };
    table
        .columns
        .iter()
        .enumerate()
        .filter(|(i, _)| mask.get(*i).copied().unwrap_or(false))
        .filter(|(i, _)| !keys_only || table.primary_key.contains(i))
        .filter_map(|(i, column)| {
            let value = match source.get(i)? {
                Cell::Null => "null".to_owned(),
                Cell::Text(text) => to_json_text(&column.ty, text),
                Cell::Toast => return None,
            };
            Some((column.name.as_str(), value))
        })
        .collect()
}
