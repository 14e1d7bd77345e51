//! Matching cost of postgres_changes: 10,000 channels subscribed to 100 tables (one INSERT
//! binding each, a tenth of them with an `eq` filter), and a batch of 1,000 changes spread over
//! the 100 tables. `by_table` is what delivery does (the cohort indexed by table once per
//! step); `every_channel` is the scan it replaced (every change against every channel), kept
//! here as the baseline.
#![expect(
    missing_docs,
    reason = "criterion's macros generate undocumented items"
)]

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use realtide_protocol::Vsn;
use serde_json::{Map, Value, json};

use realtide_server::changes::change::{Cell, Change, ChangeKind};
use realtide_server::changes::matching::{TableIndex, matching_ids};
use realtide_server::changes::subscriptions::{ChannelChanges, parse_binding};
use realtide_server::db::catalog::{Column, Table};
use realtide_server::db::claims::ClaimsGroup;
use realtide_server::limits::{LimitSettings, Limits};
use realtide_server::metrics::Metrics;
use realtide_server::outbox::{self, Cursor, OutboxLimits, OutboxReceiver};

const CHANNELS: usize = 10_000;
const TABLES: u32 = 100;
const BATCH: u32 = 1_000;

fn table(n: u32) -> Arc<Table> {
    Arc::new(Table {
        oid: 16_384 + n,
        schema: "public".into(),
        name: format!("t{n}"),
        columns: vec![Column::test("id", "int8")],
        primary_key: vec![0],
        rls: false,
    })
}

fn channels() -> (Vec<Arc<ChannelChanges>>, Vec<OutboxReceiver>) {
    let metrics = Arc::new(Metrics::default());
    let limits = Limits::new(LimitSettings::unlimited());
    let claims = Arc::new(ClaimsGroup {
        claims: "{}".into(),
        role: "anon".into(),
        sub: None,
        exp: i64::MAX,
    });
    let mut channels = Vec::with_capacity(CHANNELS);
    let mut receivers = Vec::with_capacity(CHANNELS);
    for i in 0..CHANNELS {
        let (outbox, rx) = outbox::outbox(
            OutboxLimits {
                messages: 1024,
                bytes: 1 << 20,
            },
            metrics.clone(),
            limits.outbound.clone(),
        );
        receivers.push(rx);
        let mut entry: Map<String, Value> = Map::new();
        entry.insert("event".into(), json!("INSERT"));
        entry.insert("schema".into(), json!("public"));
        entry.insert("table".into(), json!(format!("t{}", i as u32 % TABLES)));
        if i % 10 == 0 {
            entry.insert("filter".into(), json!(format!("id=eq.{i}")));
        }
        let Ok(binding) = parse_binding(&entry) else {
            continue;
        };
        channels.push(Arc::new(ChannelChanges {
            vsn: Vsn::V2,
            outbox,
            topic: Arc::from(format!("realtime:c{i}").as_str()),
            bindings: vec![binding],
            claims: parking_lot::RwLock::new(claims.clone()),
            cursor: Cursor::new(0),
            identity: i as u64,
        }));
    }
    (channels, receivers)
}

fn batch() -> Vec<Arc<Change>> {
    let tables: Vec<Arc<Table>> = (0..TABLES).map(table).collect();
    (0..BATCH)
        .filter_map(|n| {
            let table = tables.get((n % TABLES) as usize)?.clone();
            Some(Arc::new(Change {
                seq: u64::from(n),
                xid: 1,
                commit_micros: 0,
                table,
                kind: ChangeKind::Insert,
                new: Some(vec![Cell::Text(n.to_string())]),
                old: None,
                old_key_only: false,
                commit_timestamp: Arc::from("2026-12-04T00:00:00.000Z"),
            }))
        })
        .collect()
}

fn matching(c: &mut Criterion) {
    let (channels, _receivers) = channels();
    let changes = batch();
    let mut group = c.benchmark_group("postgres_changes matching, 10k channels on 100 tables");
    group.sample_size(10);
    group.bench_function("1,000 changes: by_table", |b| {
        b.iter(|| {
            let mut index = TableIndex::new(&channels);
            let mut matched = 0usize;
            for change in &changes {
                for &at in index.channels_for(&change.table).iter() {
                    if let Some(channel) = channels.get(at) {
                        matched += matching_ids(channel, change).len();
                    }
                }
            }
            matched
        });
    });
    group.bench_function("1,000 changes: every_channel (the scan it replaced)", |b| {
        b.iter(|| {
            let mut matched = 0usize;
            for change in &changes {
                for channel in &channels {
                    matched += matching_ids(channel, change).len();
                }
            }
            matched
        });
    });
    group.finish();
}

criterion_group!(benches, matching);
criterion_main!(benches);
