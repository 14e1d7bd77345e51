//! Micro-benchmarks of the server's hot paths, through the server library: one
//! broadcast fanned out to a topic's subscribers (encode once, push shared bytes into every
//! outbound queue) and a presence track with its diff rendered.
#![expect(
    missing_docs,
    reason = "criterion's macros generate undocumented items"
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use realtide_protocol::{Vsn, encode};

use realtide_server::channels::id::ChannelId;
use realtide_server::channels::registry::{Audience, Registry, Subscriber, TopicKey};
use realtide_server::channels::{presence, registry};
use realtide_server::limits::{LimitSettings, Limits};
use realtide_server::metrics::Metrics;
use realtide_server::outbox;
use realtide_server::outbox::{OutFrame, OutboxLimits, OutboxReceiver};

fn limits() -> Arc<Limits> {
    Arc::new(Limits::new(LimitSettings {
        events_per_second: 0,
        joins_per_second: 0,
        presence_events_per_second: 0,
        concurrent_users: 0,
        connections: 0,
        presence_calls: 0,
        presence_window: Duration::from_secs(30),
        private_only: false,
        presence_enabled: false,
        outbound_total_bytes: usize::MAX,
        presence_state_bytes: usize::MAX,
        presence_total_bytes: usize::MAX,
        tick: Duration::from_secs(5),
    }))
}

/// A topic with `n` subscribers; the receivers are kept so that queues stay open.
fn topic(n: usize) -> (Arc<registry::Room>, Vec<OutboxReceiver>) {
    let metrics = Arc::new(Metrics::default());
    let limits = limits();
    let registry = Registry::new(metrics.clone(), limits.clone());
    let key = TopicKey {
        private: false,
        sub_topic: "bench".into(),
    };
    let (control, _) = tokio::sync::mpsc::unbounded_channel();
    let mut receivers = Vec::with_capacity(n);
    let mut topic = None;
    for i in 0..n {
        let (outbox, rx) = outbox::outbox(
            OutboxLimits {
                messages: 1 << 16,
                bytes: 1 << 30,
            },
            metrics.clone(),
            limits.outbound.clone(),
        );
        receivers.push(rx);
        let vsn = if i % 4 == 0 { Vsn::V1 } else { Vsn::V2 };
        topic = Some(registry.subscribe(
            &key,
            ChannelId(i as u64 + 1),
            Subscriber {
                vsn,
                outbox,
                reads: None,
                control: control.clone(),
            },
            |_| {},
        ));
    }
    (topic.unwrap_or_else(|| unreachable!("n > 0")), receivers)
}

fn fanout(c: &mut Criterion) {
    let payload = r#"{"type":"broadcast","event":"cursor","payload":{"x":10,"y":20,"pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}}"#;
    for n in [1_000usize, 10_000] {
        c.bench_function(&format!("fanout to {n} subscribers"), |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                let mut state = topic(n);
                for i in 0..iters {
                    // Fresh queues now and then, outside the measurement, so they never fill.
                    if i % 1000 == 999 {
                        state = topic(n);
                    }
                    let name = state.0.name().to_owned();
                    let start = Instant::now();
                    state
                        .0
                        .fanout(Audience::Broadcast { id: None }, None, &|vsn| {
                            let text =
                                encode::text_frame(vsn, None, None, &name, "broadcast", payload);
                            Some(OutFrame::Text(text.into()))
                        });
                    spent += start.elapsed();
                }
                spent
            })
        });
    }
}

fn presence(c: &mut Criterion) {
    let limits = limits();
    let limits = &*limits;
    c.bench_function("presence track among 1000 members (diff rendered)", |b| {
        let mut state = presence::Presence::default();
        for i in 0..1000u64 {
            let mut meta = serde_json::Map::new();
            meta.insert("i".into(), serde_json::Value::from(i));
            let _ = state.track(ChannelId(i), &format!("member-{i}"), meta, limits);
        }
        let mut n = 0u64;
        b.iter(|| {
            n += 1;
            let mut meta = serde_json::Map::new();
            meta.insert("n".into(), serde_json::Value::from(n));
            state.track(
                ChannelId(n % 1000),
                &format!("member-{}", n % 1000),
                meta,
                limits,
            )
        })
    });
    c.bench_function("presence state of 1000 members rendered", |b| {
        let mut state = presence::Presence::default();
        for i in 0..1000u64 {
            let mut meta = serde_json::Map::new();
            meta.insert("i".into(), serde_json::Value::from(i));
            let _ = state.track(ChannelId(i), &format!("member-{i}"), meta, limits);
        }
        b.iter(|| state.render_state())
    });
}

criterion_group!(benches, fanout, presence);
criterion_main!(benches);
