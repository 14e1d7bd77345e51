//! Presence state of one topic.
//!
//! Each tracked channel has one meta under its presence key. Metas are rendered to JSON once,
//! when tracked; states and diffs are assembled from the rendered texts.

use std::sync::atomic::{AtomicU64, Ordering};

use indexmap::IndexMap;
use realtide_protocol::presence::{Group, render_diff, render_meta, render_state};
use serde_json::{Map, Value};

use crate::registry::ChannelId;

#[derive(Debug)]
struct Tracked {
    channel: ChannelId,
    phx_ref: String,
    meta: Map<String, Value>,
    rendered: String,
}

/// Presences of one topic, grouped by key in first-tracked order.
#[derive(Debug, Default)]
pub struct Presence {
    by_key: IndexMap<String, Vec<Tracked>>,
    /// Key each tracked channel uses, for untrack.
    keys: IndexMap<ChannelId, String>,
}

static NEXT_REF: AtomicU64 = AtomicU64::new(1);
static REF_PREFIX: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    // A per-process prefix keeps refs unique across restarts; clients compare them for equality.
    let nonce: u32 = rand::random();
    format!("F{nonce:08x}")
});

fn new_phx_ref() -> String {
    format!(
        "{}{:x}",
        *REF_PREFIX,
        NEXT_REF.fetch_add(1, Ordering::Relaxed)
    )
}

impl Presence {
    /// True when nobody is tracked.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The `presence_state` payload.
    pub fn render_state(&self) -> String {
        let group: Group<'_> = self
            .by_key
            .iter()
            .map(|(key, list)| {
                (
                    key.as_str(),
                    list.iter().map(|t| t.rendered.as_str()).collect(),
                )
            })
            .collect();
        render_state(&group)
    }

    /// Tracks `meta` for `channel` under `key`; returns the diff to fan out, or `None` for a
    /// no-op (same meta as last time).
    pub fn track(
        &mut self,
        channel: ChannelId,
        key: &str,
        meta: Map<String, Value>,
    ) -> Option<String> {
        let list = self.by_key.entry(key.to_owned()).or_default();
        let phx_ref = new_phx_ref();
        match list.iter_mut().find(|t| t.channel == channel) {
            Some(existing) if existing.meta == meta => None,
            Some(existing) => {
                let rendered = render_meta(&meta, &phx_ref, Some(&existing.phx_ref));
                let old = std::mem::replace(
                    existing,
                    Tracked {
                        channel,
                        phx_ref,
                        meta,
                        rendered,
                    },
                );
                let joins: Group<'_> = vec![(key, vec![existing.rendered.as_str()])];
                let leaves: Group<'_> = vec![(key, vec![old.rendered.as_str()])];
                Some(render_diff(&joins, &leaves))
            }
            None => {
                let rendered = render_meta(&meta, &phx_ref, None);
                let diff = render_diff(&vec![(key, vec![rendered.as_str()])], &vec![]);
                list.push(Tracked {
                    channel,
                    phx_ref,
                    meta,
                    rendered,
                });
                self.keys.insert(channel, key.to_owned());
                Some(diff)
            }
        }
    }

    /// Removes `channel`'s presence; returns the leave diff when it was tracked.
    pub fn untrack(&mut self, channel: ChannelId) -> Option<String> {
        let key = self.keys.swap_remove(&channel)?;
        let list = self.by_key.get_mut(&key)?;
        let position = list.iter().position(|t| t.channel == channel)?;
        let old = list.remove(position);
        if list.is_empty() {
            self.by_key.shift_remove(&key);
        }
        Some(render_diff(
            &vec![],
            &vec![(key.as_str(), vec![old.rendered.as_str()])],
        ))
    }
}

#[cfg(test)]
#[expect(clippy::indexing_slicing, reason = "test assertions on known shapes")]
mod tests {
    use super::*;
    use serde_json::json;

    fn meta(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn track_update_noop_untrack() {
        let mut p = Presence::default();
        let a = ChannelId(1);
        let diff = p.track(a, "u1", meta(json!({"n": 1}))).unwrap_or_default();
        assert!(
            diff.starts_with(r#"{"joins":{"u1":{"metas":[{"phx_ref":"F"#),
            "{diff}"
        );
        assert!(diff.ends_with(r#","n":1}]}},"leaves":{}}"#), "{diff}");
        assert_eq!(p.track(a, "u1", meta(json!({"n": 1}))), None);
        let update = p.track(a, "u1", meta(json!({"n": 2}))).unwrap_or_default();
        assert!(update.contains("phx_ref_prev"), "{update}");
        assert!(
            update.contains(r#""leaves":{"u1":{"metas":[{"phx_ref":"#),
            "{update}"
        );
        p.track(ChannelId(2), "u1", meta(json!({"n": 3})));
        let state: Value = serde_json::from_str(&p.render_state()).unwrap_or_default();
        assert_eq!(state["u1"]["metas"].as_array().map(Vec::len), Some(2));
        let leave = p.untrack(a).unwrap_or_default();
        assert!(
            leave.starts_with(r#"{"joins":{},"leaves":{"u1""#),
            "{leave}"
        );
        assert_eq!(p.untrack(a), None);
        p.untrack(ChannelId(2));
        assert!(p.is_empty());
        assert_eq!(p.render_state(), "{}");
    }
}
