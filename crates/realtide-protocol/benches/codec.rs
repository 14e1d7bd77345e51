//! Frame codec micro-benchmarks: decoding the client frames realtide receives most (V2 text
//! broadcast, V2 binary kind 3, V1 join) and encoding the frames it sends most (V2/V1 text
//! broadcast, kind 4).
#![expect(
    missing_docs,
    reason = "criterion's macros generate undocumented items"
)]

use bytes::Bytes;
use criterion::{Criterion, black_box, criterion_group, criterion_main};
use realtide_protocol::frame::{decode_binary, decode_text};
use realtide_protocol::{UserEncoding, Vsn, encode};

const V2_BROADCAST: &str = r#"["9","10","realtime:room1","broadcast",{"type":"broadcast","event":"cursor","payload":{"x":10,"y":20,"user":"a2f4c1e0-0000-4000-8000-000000000001","pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}}]"#;
const V1_JOIN: &str = r#"{"topic":"realtime:room1","event":"phx_join","payload":{"config":{"broadcast":{"self":true,"ack":true},"presence":{"key":"user-1","enabled":true},"postgres_changes":[{"event":"*","schema":"public","table":"messages"}],"private":false},"access_token":"fake-anon-key"},"ref":"1","join_ref":"1"}"#;

fn kind3() -> Bytes {
    let mut out = vec![3u8, 1, 2, 14, 6, 0, 1];
    out.extend_from_slice(b"910realtime:room1cursor");
    out.extend_from_slice(br#"{"x":10,"y":20}"#);
    Bytes::from(out)
}

fn codec(c: &mut Criterion) {
    c.bench_function("decode v2 text broadcast", |b| {
        b.iter(|| decode_text(Vsn::V2, black_box(V2_BROADCAST)))
    });
    c.bench_function("decode v1 join", |b| {
        b.iter(|| decode_text(Vsn::V1, black_box(V1_JOIN)))
    });
    let frame = kind3();
    c.bench_function("decode v2 binary kind 3", |b| {
        b.iter(|| decode_binary(Vsn::V2, black_box(&frame)))
    });
    let payload = r#"{"type":"broadcast","event":"cursor","payload":{"x":10,"y":20}}"#;
    c.bench_function("encode v2 text broadcast", |b| {
        b.iter(|| {
            encode::text_frame(
                Vsn::V2,
                None,
                None,
                black_box("realtime:room1"),
                "broadcast",
                black_box(payload),
            )
        })
    });
    c.bench_function("encode v1 text broadcast", |b| {
        b.iter(|| {
            encode::text_frame(
                Vsn::V1,
                None,
                None,
                black_box("realtime:room1"),
                "broadcast",
                black_box(payload),
            )
        })
    });
    c.bench_function("encode kind 4", |b| {
        b.iter(|| {
            encode::user_broadcast_binary(
                black_box("realtime:room1"),
                "cursor",
                br#"{"id":"a2f4c1e0-0000-4000-8000-000000000001"}"#,
                UserEncoding::Json,
                black_box(br#"{"x":10,"y":20}"#),
            )
        })
    });
}

criterion_group!(benches, codec);
criterion_main!(benches);
