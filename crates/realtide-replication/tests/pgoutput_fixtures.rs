//! Decodes every pgoutput message recorded from PostgreSQL 15 in `protocol-fixtures/pgoutput/`
//! (see its README and record.sh) and checks what they say; then mutates them to check that the
//! decoder never panics.
#![expect(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "test assertions on recorded data"
)]

use bytes::{BufMut, Bytes, BytesMut};
use realtide_replication::lsn::Lsn;
use realtide_replication::pgoutput::*;
use std::path::PathBuf;

const SCENARIOS: &[&str] = &[
    "message",
    "multi_tx",
    "no_pk",
    "origin",
    "replica_index",
    "toast",
    "truncate",
    "types_default",
    "types_full",
];

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../protocol-fixtures/pgoutput")
}

fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len() & 1 == 0, "odd hex line");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn raw(name: &str) -> Vec<Bytes> {
    std::fs::read_to_string(dir().join(format!("{name}.hex")))
        .unwrap_or_else(|e| panic!("fixture {name}.hex: {e}"))
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| Bytes::from(unhex(l.trim())))
        .collect()
}

fn load(name: &str) -> Vec<LogicalMessage> {
    raw(name)
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            decode_logical(m).unwrap_or_else(|e| panic!("{name}.hex line {}: {e}", i + 1))
        })
        .collect()
}

fn text(v: &ColumnValue) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not text: {v:?}"))
}

fn relations(msgs: &[LogicalMessage]) -> Vec<&Relation> {
    msgs.iter()
        .filter_map(|m| match m {
            LogicalMessage::Relation(r) => Some(r),
            _ => None,
        })
        .collect()
}

fn tags(msgs: &[LogicalMessage]) -> String {
    msgs.iter().map(|m| char::from(m.tag())).collect()
}

fn is_commit_timestamp(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 24
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'.',
            23 => *c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

/// Every transaction is Begin … Commit with matching LSN and time; commit times format well.
fn check_transactions(name: &str, msgs: &[LogicalMessage]) -> usize {
    let mut open: Option<Begin> = None;
    let mut count = 0;
    for m in msgs {
        match m {
            LogicalMessage::Begin(b) => {
                assert!(open.is_none(), "{name}: nested Begin");
                open = Some(*b);
            }
            LogicalMessage::Commit(c) => {
                let b = open
                    .take()
                    .unwrap_or_else(|| panic!("{name}: Commit without Begin"));
                assert_eq!(c.commit_lsn, b.final_lsn, "{name}");
                assert!(c.end_lsn > c.commit_lsn, "{name}");
                assert_eq!(c.commit_time_micros, b.commit_time_micros, "{name}");
                assert_eq!(c.flags, 0);
                let ts = format_commit_timestamp(c.commit_time_micros);
                assert!(is_commit_timestamp(&ts), "{name}: {ts}");
                assert!(ts.as_str() > "2020", "{name}: {ts}");
                count += 1;
            }
            LogicalMessage::Message(msg) if !msg.transactional() => {}
            _ => assert!(open.is_some(), "{name}: {m:?} outside a transaction"),
        }
    }
    assert!(open.is_none(), "{name}: unterminated transaction");
    count
}

#[test]
fn every_fixture_decodes_into_whole_transactions() {
    for name in SCENARIOS {
        let msgs = load(name);
        assert!(!msgs.is_empty(), "{name}");
        assert!(check_transactions(name, &msgs) > 0, "{name}");
        // the companion SQL file is there
        assert!(dir().join(format!("{name}.sql")).is_file(), "{name}.sql");
    }
}

const ALL_TYPES_COLUMNS: &[(&str, u32)] = &[
    ("id", 23),
    ("c_int2", 21),
    ("c_int8", 20),
    ("c_numeric", 1700),
    ("c_float4", 700),
    ("c_float8", 701),
    ("c_bool", 16),
    ("c_text", 25),
    ("c_varchar", 1043),
    ("c_char", 1042),
    ("c_uuid", 2950),
    ("c_json", 114),
    ("c_jsonb", 3802),
    ("c_date", 1082),
    ("c_time", 1083),
    ("c_timetz", 1266),
    ("c_timestamp", 1114),
    ("c_timestamptz", 1184),
    ("c_interval", 1186),
    ("c_bytea", 17),
    ("c_int4_arr", 1007),
    ("c_text_arr", 1009),
    ("c_mood", 0),   // enum: OID assigned at CREATE TYPE
    ("c_posint", 0), // domain: likewise
];

const ALL_TYPES_ROW: &[&str] = &[
    "1",
    "-32768",
    "9007199254740993",
    "12345.678",
    "1.5",
    "-2.25e-10",
    "t",
    "héllo \"world\"",
    "varchar",
    "ab   ",
    "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
    r#"{"a": [1, 2, {"b": null}]}"#,
    r#"{"a": "x", "z": 1}"#,
    "2024-02-29",
    "13:14:15.5",
    "13:14:15+02",
    "2024-02-29 13:14:15.123456",
    "2024-02-29 13:14:15.123456+00",
    "1 year 2 mons 3 days 04:05:06",
    "\\xdeadbeef",
    "{1,2,NULL,4}",
    r#"{"a b","c,d",NULL}"#,
    "happy",
    "7",
];

fn check_all_types(name: &str, full: bool) {
    let msgs = load(name);
    assert_eq!(tags(&msgs), "BYYRICBICBUCBUCBDC", "{name}");
    let (mood, domain_base) = match (&msgs[1], &msgs[2]) {
        (LogicalMessage::Type(a), LogicalMessage::Type(b)) => (a, b),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        (mood.namespace.as_str(), mood.name.as_str()),
        ("public", "mood")
    );
    // for a domain column pgoutput describes the domain's base type (pg_catalog is sent as "")
    assert_eq!(
        (domain_base.namespace.as_str(), domain_base.name.as_str()),
        ("", "int4")
    );

    let rel = relations(&msgs)[0];
    assert_eq!(
        (rel.namespace.as_str(), rel.name.as_str()),
        ("public", "all_types")
    );
    let identity = if full {
        ReplicaIdentity::Full
    } else {
        ReplicaIdentity::Default
    };
    assert_eq!(rel.replica_identity, identity);
    assert_eq!(rel.columns.len(), ALL_TYPES_COLUMNS.len());
    for (col, (cname, oid)) in rel.columns.iter().zip(ALL_TYPES_COLUMNS) {
        assert_eq!(col.name, *cname);
        if *oid != 0 {
            assert_eq!(col.type_oid, *oid, "{cname}");
        }
        assert_eq!(col.is_key(), full || *cname == "id", "{cname}");
    }
    assert_eq!(rel.columns[22].type_oid, mood.oid);
    assert_eq!(rel.columns[23].type_oid, domain_base.oid);
    // numeric(12,3): typmod = ((12 << 16) | 3) + 4; varchar(20): 20 + 4; char(5): 5 + 4
    assert_eq!(rel.columns[3].type_modifier, ((12 << 16) | 3) + 4);
    assert_eq!(rel.columns[8].type_modifier, 24);
    assert_eq!(rel.columns[9].type_modifier, 9);
    assert_eq!(rel.columns[0].type_modifier, -1);

    let LogicalMessage::Insert(ins) = &msgs[4] else {
        panic!("{:?}", msgs[4])
    };
    assert_eq!(ins.relation_oid, rel.oid);
    let row: Vec<&str> = ins.new.iter().map(text).collect();
    assert_eq!(row, ALL_TYPES_ROW);

    let LogicalMessage::Insert(ins2) = &msgs[7] else {
        panic!()
    };
    assert_eq!(text(&ins2.new[0]), "2");
    assert!(ins2.new[1..].iter().all(|v| *v == ColumnValue::Null));

    // UPDATE c_text, c_int8 of row 1: no key change, so no old tuple unless FULL
    let LogicalMessage::Update(up) = &msgs[10] else {
        panic!()
    };
    assert_eq!(text(&up.new[2]), "-1");
    assert_eq!(text(&up.new[7]), "changed");
    if full {
        let old = up.old.as_ref().unwrap();
        assert_eq!(old.kind, OldKind::Full);
        let old_row: Vec<&str> = old.data.iter().map(text).collect();
        assert_eq!(old_row, ALL_TYPES_ROW);
    } else {
        assert_eq!(up.old, None);
    }

    // UPDATE id 2 -> 3: the key changed, old key sent ('K'), or the full old row ('O')
    let LogicalMessage::Update(up) = &msgs[13] else {
        panic!()
    };
    let old = up.old.as_ref().unwrap();
    assert_eq!(old.kind, if full { OldKind::Full } else { OldKind::Key });
    assert_eq!(text(&old.data[0]), "2");
    assert_eq!(text(&up.new[0]), "3");

    let LogicalMessage::Delete(del) = &msgs[16] else {
        panic!()
    };
    assert_eq!(text(&del.old.data[0]), "1");
    if full {
        assert_eq!(del.old.kind, OldKind::Full);
        assert_eq!(text(&del.old.data[7]), "changed");
    } else {
        assert_eq!(del.old.kind, OldKind::Key);
        assert!(del.old.data[1..].iter().all(|v| *v == ColumnValue::Null));
    }
}

#[test]
fn types_default_identity() {
    check_all_types("types_default", false);
}

#[test]
fn types_replica_identity_full() {
    check_all_types("types_full", true);
}

#[test]
fn toast_unchanged_marker() {
    let msgs = load("toast");
    assert_eq!(tags(&msgs), "BRICBRICBUCBUCBDC");
    let rels = relations(&msgs);
    assert_eq!(rels[0].name, "docs");
    assert_eq!(rels[1].name, "docs_full");
    assert_eq!(rels[1].replica_identity, ReplicaIdentity::Full);

    let LogicalMessage::Insert(ins) = &msgs[2] else {
        panic!()
    };
    let body = text(&ins.new[1]).to_owned();
    assert_eq!(body.len(), 12_000);
    assert!(body.bytes().all(|b| (32..=126).contains(&b)));

    // docs (default identity): UPDATE n leaves the TOASTed body out
    let LogicalMessage::Update(up) = &msgs[9] else {
        panic!()
    };
    assert_eq!(up.relation_oid, rels[0].oid);
    assert_eq!(up.old, None);
    assert_eq!(text(&up.new[0]), "1");
    assert_eq!(up.new[1], ColumnValue::UnchangedToast);
    assert_eq!(text(&up.new[2]), "1");

    // docs_full: the old row carries the whole value, the new one still says 'u'
    let LogicalMessage::Update(up) = &msgs[12] else {
        panic!()
    };
    assert_eq!(up.relation_oid, rels[1].oid);
    let old = up.old.as_ref().unwrap();
    assert_eq!(old.kind, OldKind::Full);
    assert_eq!(text(&old.data[1]), body);
    assert_eq!(text(&old.data[2]), "0");
    assert_eq!(up.new[1], ColumnValue::UnchangedToast);

    let LogicalMessage::Delete(del) = &msgs[15] else {
        panic!()
    };
    assert_eq!(del.old.kind, OldKind::Key);
    assert_eq!(
        del.old.data,
        vec![
            ColumnValue::Text(Bytes::from_static(b"1")),
            ColumnValue::Null,
            ColumnValue::Null
        ]
    );
}

#[test]
fn truncate_options_and_relations() {
    let msgs = load("truncate");
    assert_eq!(tags(&msgs), "BRTCBRRTC");
    let rels = relations(&msgs);
    let (child, parent) = (rels[0].oid, rels[1].oid);
    assert_eq!(rels[1].name, "parent");
    let LogicalMessage::Truncate(t) = &msgs[2] else {
        panic!()
    };
    assert_eq!(t.relation_oids, vec![child]);
    assert!(!t.cascade() && !t.restart_identity());
    let LogicalMessage::Truncate(t) = &msgs[7] else {
        panic!()
    };
    assert_eq!(t.relation_oids, vec![parent, child]);
    assert_eq!(t.options, 3);
    assert!(t.cascade() && t.restart_identity());
}

#[test]
fn table_without_primary_key() {
    let msgs = load("no_pk");
    assert_eq!(tags(&msgs), "BRIICBRICBUCBDC");
    let rels = relations(&msgs);
    assert_eq!(rels[0].name, "nopk");
    assert_eq!(rels[0].replica_identity, ReplicaIdentity::Default);
    assert!(rels[0].columns.iter().all(|c| !c.is_key()));
    assert_eq!(rels[1].replica_identity, ReplicaIdentity::Full);
    assert!(rels[1].columns.iter().all(Column::is_key));
    let LogicalMessage::Insert(ins) = &msgs[3] else {
        panic!()
    };
    assert_eq!(
        ins.new,
        vec![
            ColumnValue::Text(Bytes::from_static(b"2")),
            ColumnValue::Null
        ]
    );
    let LogicalMessage::Update(up) = &msgs[10] else {
        panic!()
    };
    let old = up.old.as_ref().unwrap();
    assert_eq!((old.kind, text(&old.data[1])), (OldKind::Full, "one"));
    assert_eq!(text(&up.new[1]), "uno");
    let LogicalMessage::Delete(del) = &msgs[13] else {
        panic!()
    };
    assert_eq!(
        (del.old.kind, text(&del.old.data[1])),
        (OldKind::Full, "uno")
    );
}

#[test]
fn replica_identity_index_and_nothing() {
    let msgs = load("replica_index");
    assert_eq!(tags(&msgs), "BRICBUCBUCBDCBRIC");
    let rels = relations(&msgs);
    assert_eq!(rels[0].replica_identity, ReplicaIdentity::Index);
    let keys: Vec<bool> = rels[0].columns.iter().map(Column::is_key).collect();
    assert_eq!(keys, vec![false, true, false]);
    assert_eq!(rels[1].replica_identity, ReplicaIdentity::Nothing);
    // the primary key is not flagged under REPLICA IDENTITY NOTHING
    assert!(rels[1].columns.iter().all(|c| !c.is_key()));

    let LogicalMessage::Update(up) = &msgs[5] else {
        panic!()
    };
    assert_eq!(up.old, None);
    let LogicalMessage::Update(up) = &msgs[8] else {
        panic!()
    };
    let old = up.old.as_ref().unwrap();
    assert_eq!(old.kind, OldKind::Key);
    assert_eq!(old.data[0], ColumnValue::Null);
    assert_eq!(text(&old.data[1]), "k1");
    assert_eq!(text(&up.new[1]), "k2");
    let LogicalMessage::Delete(del) = &msgs[11] else {
        panic!()
    };
    assert_eq!(text(&del.old.data[1]), "k2");
}

#[test]
fn logical_messages() {
    let msgs = load("message");
    assert_eq!(tags(&msgs), "BMCMBRIMC");
    let m = |i: usize| match &msgs[i] {
        LogicalMessage::Message(m) => m.clone(),
        other => panic!("{other:?}"),
    };
    let (a, b, c) = (m(1), m(3), m(7));
    assert!(a.transactional());
    assert_eq!((a.prefix.as_str(), &a.content[..]), ("p", &b"x"[..]));
    let LogicalMessage::Begin(begin) = &msgs[0] else {
        panic!()
    };
    assert_eq!(a.lsn, begin.final_lsn);
    assert!(!b.transactional());
    assert_eq!((b.prefix.as_str(), &b.content[..]), ("np", &b"hello"[..]));
    assert!(c.transactional());
    assert_eq!(&c.content[..], &[0x00, 0xff]);
}

#[test]
fn multi_statement_transaction() {
    let msgs = load("multi_tx");
    assert_eq!(tags(&msgs), "BRIIURIDCBIC");
    assert_eq!(check_transactions("multi_tx", &msgs), 2);
    let rels = relations(&msgs);
    assert_eq!(rels[1].name, "ledger");
    assert_eq!(rels[1].columns[0].type_oid, 20);
    let LogicalMessage::Update(up) = &msgs[4] else {
        panic!()
    };
    assert_eq!(text(&up.new[1]), "70");
    let LogicalMessage::Delete(del) = &msgs[7] else {
        panic!()
    };
    assert_eq!(del.relation_oid, rels[0].oid);
    assert_eq!(text(&del.old.data[0]), "2");
    let (LogicalMessage::Commit(c1), LogicalMessage::Begin(b2)) = (&msgs[8], &msgs[9]) else {
        panic!()
    };
    assert!(b2.final_lsn > c1.end_lsn);
}

#[test]
fn origin_and_fixed_commit_time() {
    let msgs = load("origin");
    assert_eq!(tags(&msgs), "BORIC");
    let LogicalMessage::Origin(o) = &msgs[1] else {
        panic!()
    };
    assert_eq!(o.name, "upstream");
    assert_eq!(o.lsn, "0/1234ABCD".parse::<Lsn>().unwrap());
    // pg_replication_origin_xact_setup set the commit timestamp
    let LogicalMessage::Commit(c) = &msgs[4] else {
        panic!()
    };
    assert_eq!(c.commit_time_micros, 768_294_489_123_456);
    assert_eq!(
        format_commit_timestamp(c.commit_time_micros),
        "2024-05-06T07:08:09.123Z"
    );
    assert_eq!(
        pg_to_unix_micros(c.commit_time_micros),
        1_714_979_289_123_456
    );
}

#[test]
fn wrapped_in_xlogdata() {
    for m in raw("multi_tx") {
        let mut b = BytesMut::new();
        b.put_u8(b'w');
        b.put_u64(0x16_0000_0028);
        b.put_u64(0x16_0000_0100);
        b.put_i64(42);
        b.put_slice(&m);
        let CopyDataMessage::XLogData(x) = decode_copy_data(b.freeze()).unwrap() else {
            panic!()
        };
        assert_eq!(x.wal_start.to_string(), "16/28");
        assert_eq!(x.wal_end, Lsn(0x16_0000_0100));
        assert_eq!(x.data, m);
        decode_logical(x.data).unwrap();
    }
}

#[test]
fn truncations_are_errors() {
    for name in SCENARIOS {
        for m in raw(name) {
            for cut in 0..m.len() {
                let r = decode_logical(m.slice(..cut));
                assert!(r.is_err(), "{name}: prefix {cut} of {} decoded", m.len());
            }
        }
    }
}

/// xorshift64*: deterministic mutations without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..=rng.below(4) {
        match rng.below(7) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = rng.next() as u8;
            }
            2 => v.truncate(rng.below(v.len() + 1)),
            3 => {
                let i = rng.below(v.len() + 1);
                v.insert(i, rng.next() as u8);
            }
            4 if v.len() >= 4 => {
                // overwrite a would-be length or count with an extreme value
                let i = rng.below(v.len() - 3);
                let x: [u8; 4] = match rng.below(4) {
                    0 => [0xff; 4],
                    1 => [0x7f, 0xff, 0xff, 0xff],
                    2 => [0x80, 0, 0, 0],
                    _ => [0, 0, 0x7f, 0xff],
                };
                v[i..i + 4].copy_from_slice(&x);
            }
            5 if !v.is_empty() => {
                let i = rng.below(v.len());
                v.remove(i);
            }
            _ => {
                // swap the tag for another known one
                if let Some(t) = v.first_mut() {
                    *t = b"BCORYIUDTMSEcAwk"[rng.below(16)];
                }
            }
        }
    }
    v
}

#[test]
fn mutated_fixtures_never_panic() {
    let corpus: Vec<Bytes> = SCENARIOS.iter().flat_map(|n| raw(n)).collect();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut decoded = 0usize;
    let rounds = 150_000;
    for i in 0..rounds {
        let base = &corpus[i % corpus.len()];
        let m = Bytes::from(mutate(&mut rng, base));
        if decode_logical(m.clone()).is_ok() {
            decoded += 1;
        }
        let _ = decode_logical_streamed(m.clone());
        let _ = decode_copy_data(m);
    }
    // most mutations must be rejected, some (e.g. changed values) still decode
    assert!(decoded > 0 && decoded < rounds, "{decoded}");
}
