//! Which channels of a cohort a change may concern, by table: the cohort's bindings are indexed
//! once per delivery step by the schema and table they name, so each change looks at the
//! channels bound to its table (and those bound with `*`) instead of every channel.

use std::collections::HashMap;
use std::sync::Arc;

use crate::changes::change::Change;
use crate::changes::subscriptions::{ChannelChanges, Pattern};
use crate::db::catalog::Table;

/// A cohort's channels (by index) keyed by the schema and table patterns of their bindings.
#[derive(Debug, Default)]
pub struct TableIndex<'a> {
    /// `schema.table` named exactly.
    exact: HashMap<(&'a str, &'a str), Vec<usize>>,
    /// `*.table`.
    any_schema: HashMap<&'a str, Vec<usize>>,
    /// `schema.*`.
    any_table: HashMap<&'a str, Vec<usize>>,
    /// `*.*`.
    any: Vec<usize>,
    /// Channels per table (oid, with the names it had), resolved once per step.
    resolved: HashMap<u32, (String, String, Arc<[usize]>)>,
}

impl<'a> TableIndex<'a> {
    /// Indexes `channels` (their order is kept in every answer).
    pub fn new(channels: &'a [Arc<ChannelChanges>]) -> TableIndex<'a> {
        let mut index = TableIndex::default();
        for (at, channel) in channels.iter().enumerate() {
            for binding in &channel.bindings {
                let list = match (&binding.schema, &binding.table) {
                    (Pattern::Name(schema), Pattern::Name(table)) => {
                        index.exact.entry((schema, table)).or_default()
                    }
                    (Pattern::Any, Pattern::Name(table)) => {
                        index.any_schema.entry(table).or_default()
                    }
                    (Pattern::Name(schema), Pattern::Any) => {
                        index.any_table.entry(schema).or_default()
                    }
                    (Pattern::Any, Pattern::Any) => &mut index.any,
                };
                // A channel's bindings come together: one entry per channel and list.
                if list.last() != Some(&at) {
                    list.push(at);
                }
            }
        }
        index
    }

    /// The channels with a binding that names `table` (or matches it with `*`), in cohort
    /// order, each once.
    pub fn channels_for(&mut self, table: &Table) -> Arc<[usize]> {
        if let Some((schema, name, found)) = self.resolved.get(&table.oid)
            && *schema == table.schema
            && *name == table.name
        {
            return found.clone();
        }
        let empty = Vec::new();
        let lists = [
            self.exact
                .get(&(table.schema.as_str(), table.name.as_str()))
                .unwrap_or(&empty),
            self.any_schema.get(table.name.as_str()).unwrap_or(&empty),
            self.any_table.get(table.schema.as_str()).unwrap_or(&empty),
            &self.any,
        ];
        let mut channels: Vec<usize> = lists.iter().flat_map(|l| l.iter().copied()).collect();
        channels.sort_unstable();
        channels.dedup();
        let channels: Arc<[usize]> = channels.into();
        self.resolved.insert(
            table.oid,
            (table.schema.clone(), table.name.clone(), channels.clone()),
        );
        channels
    }
}

/// The ids of `channel`'s bindings that select `change` (operation, table, filters), each once.
pub fn matching_ids(channel: &ChannelChanges, change: &Change) -> Vec<u32> {
    let mut ids: Vec<u32> = Vec::new();
    for binding in &channel.bindings {
        if !binding.targets(&change.table, change.kind) {
            continue;
        }
        let Some(filters) = binding.filters_for(&change.table) else {
            continue;
        };
        if filters
            .iter()
            .all(|(i, f)| f.matches(change.filter_value(*i)))
            && !ids.contains(&binding.id)
        {
            ids.push(binding.id);
        }
    }
    ids
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::changes::change::{Cell, ChangeKind};
    use crate::changes::subscriptions::parse_binding;
    use crate::db::catalog::Column;
    use crate::db::claims::ClaimsGroup;
    use crate::limits::{LimitSettings, Limits};
    use crate::metrics::Metrics;
    use crate::outbox::{Cursor, OutboxLimits, OutboxReceiver};

    fn table(oid: u32, schema: &str, name: &str) -> Arc<Table> {
        Arc::new(Table {
            oid,
            schema: schema.into(),
            name: name.into(),
            columns: vec![Column::test("id", "int8")],
            primary_key: vec![0],
            rls: false,
        })
    }

    /// One channel per list of (event, schema, table, filter) bindings.
    fn channels(
        specs: &[&[(&str, &str, &str, &str)]],
    ) -> (Vec<Arc<ChannelChanges>>, Vec<OutboxReceiver>) {
        let limits = Limits::new(LimitSettings::unlimited());
        let claims = Arc::new(ClaimsGroup {
            claims: "{}".into(),
            role: "anon".into(),
            sub: None,
            exp: i64::MAX,
        });
        let mut out = Vec::new();
        let mut receivers = Vec::new();
        for (n, spec) in specs.iter().enumerate() {
            let (outbox, rx) = crate::outbox::outbox(
                OutboxLimits {
                    messages: 8,
                    bytes: 1024,
                },
                Arc::new(Metrics::default()),
                limits.outbound.clone(),
            );
            receivers.push(rx);
            let bindings = spec
                .iter()
                .filter_map(|(event, schema, table, filter)| {
                    let mut entry = serde_json::Map::new();
                    entry.insert("event".into(), (*event).into());
                    entry.insert("schema".into(), (*schema).into());
                    entry.insert("table".into(), (*table).into());
                    if !filter.is_empty() {
                        entry.insert("filter".into(), (*filter).into());
                    }
                    parse_binding(&entry).ok()
                })
                .collect();
            out.push(Arc::new(ChannelChanges {
                vsn: realtide_protocol::Vsn::V2,
                outbox,
                topic: Arc::from(format!("realtime:c{n}").as_str()),
                bindings,
                claims: parking_lot::RwLock::new(claims.clone()),
                cursor: Cursor::new(0),
                identity: n as u64,
            }));
        }
        (out, receivers)
    }

    fn insert(table: &Arc<Table>, id: &str) -> Change {
        Change {
            seq: 0,
            xid: 1,
            commit_micros: 0,
            table: table.clone(),
            kind: ChangeKind::Insert,
            new: Some(vec![Cell::Text(id.into())]),
            old: None,
            old_key_only: false,
            commit_timestamp: Arc::from("2026-12-04T00:00:00.000Z"),
        }
    }

    #[test]
    fn channels_are_found_by_table_and_by_wildcards_each_once_in_cohort_order() {
        let (channels, _rx) = channels(&[
            &[("*", "public", "todos", "")],                           // 0: exact
            &[("INSERT", "public", "notes", "")],                      // 1: another table
            &[("*", "*", "todos", "")],                                // 2: any schema
            &[("*", "public", "*", ""), ("*", "public", "todos", "")], // 3: any table, twice
            &[("*", "*", "*", "")],                                    // 4: everything
            &[("*", "private", "todos", "")],                          // 5: other schema
        ]);
        let mut index = TableIndex::new(&channels);
        let todos = table(1, "public", "todos");
        assert_eq!(&*index.channels_for(&todos), &[0, 2, 3, 4]);
        assert_eq!(
            &*index.channels_for(&table(2, "public", "notes")),
            &[1, 3, 4]
        );
        assert_eq!(
            &*index.channels_for(&table(3, "private", "todos")),
            &[2, 4, 5]
        );
        assert_eq!(&*index.channels_for(&table(4, "other", "x")), &[4]);
        // A table renamed under the same oid is looked up again.
        assert_eq!(
            &*index.channels_for(&table(1, "public", "renamed")),
            &[3, 4]
        );
    }

    #[test]
    fn a_channel_matches_by_operation_and_filter_with_each_binding_id_once() {
        let (channels, _rx) = channels(&[&[
            ("INSERT", "public", "todos", "id=eq.7"),
            ("DELETE", "public", "todos", ""),
            ("*", "public", "todos", ""),
        ]]);
        let Some(channel) = channels.first() else {
            return;
        };
        let todos = table(1, "public", "todos");
        let ids = |change: &Change| matching_ids(channel, change);
        let all: Vec<u32> = channel.bindings.iter().map(|b| b.id).collect();
        let (eq7, star) = (all.first().copied(), all.get(2).copied());
        assert_eq!(
            ids(&insert(&todos, "7")),
            [eq7, star].into_iter().flatten().collect::<Vec<_>>()
        );
        assert_eq!(
            ids(&insert(&todos, "8")),
            star.into_iter().collect::<Vec<_>>()
        );
    }
}
