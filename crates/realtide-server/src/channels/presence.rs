//! Presence state of one topic.
//!
//! Each tracked channel has one meta under its presence key. Metas are rendered to JSON once,
//! when tracked; states and diffs are assembled from the rendered texts.

use std::sync::atomic::{AtomicU64, Ordering};

use indexmap::IndexMap;
use realtide_protocol::presence::{Group, render_diff, render_meta, render_state};
use serde_json::{Map, Value};

use bytes::Bytes;

use crate::channels::id::ChannelId;
use crate::limits::Limits;
use realtide_protocol::peer::Member;

#[derive(Debug)]
struct Tracked {
    channel: ChannelId,
    phx_ref: String,
    meta: Map<String, Value>,
    rendered: String,
}

impl Tracked {
    /// Memory it holds, as counted against the presence bounds: the rendered meta and the
    /// parsed one (taken to be the same size again).
    fn cost(&self) -> usize {
        self.rendered.len().saturating_mul(2)
    }
}

/// A track refused because it would exceed a presence memory bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenceFull {
    /// `PRESENCE_MAX_STATE_BYTES` of this topic.
    Topic,
    /// `PRESENCE_MAX_TOTAL_BYTES` of the process.
    Process,
}

/// Presences of one topic, grouped by key in first-tracked order.
#[derive(Debug, Default)]
pub struct Presence {
    by_key: IndexMap<String, Vec<Tracked>>,
    /// Key each tracked channel uses, for untrack.
    keys: IndexMap<ChannelId, String>,
    /// Sum of the tracked presences' costs.
    bytes: usize,
    /// The rendered `presence_state` payload, shared by every join until presence changes.
    state: Option<Bytes>,
    /// Members tracked on the other nodes of a cluster, by node. Each node owns its own
    /// sockets' presences and bounds them; here they are only mirrored.
    remote: IndexMap<String, RemoteNode>,
}

/// What one other node has tracked in this topic.
#[derive(Debug, Default)]
struct RemoteNode {
    /// The node's change counter last applied.
    seq: u64,
    /// Members by `phx_ref`.
    members: IndexMap<String, Member>,
}

/// A local presence change, for the other nodes of a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalChange {
    /// A member joined, or updated (`replaces` is its previous `phx_ref`).
    Joined {
        /// The member.
        member: Member,
        /// The `phx_ref` it replaces.
        replaces: Option<String>,
    },
    /// A member left.
    Left {
        /// Its `phx_ref`.
        phx_ref: String,
    },
}

/// A tracked presence's diff and what changed.
#[derive(Debug, PartialEq, Eq)]
pub struct TrackedChange {
    /// The `presence_diff` payload.
    pub diff: String,
    /// The change, for the other nodes.
    pub change: LocalChange,
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

    /// The `presence_state` payload, rendered once per change of the presences and shared.
    /// It counts in the outbound budget while joiners' queues hold it.
    pub fn state(&mut self, limits: &Limits) -> Bytes {
        if let Some(state) = &self.state {
            return state.clone();
        }
        let state = limits.outbound.hold(Bytes::from(self.render_state()));
        self.state = Some(state.clone());
        state
    }

    /// The `presence_state` payload, rendered.
    pub fn render_state(&self) -> String {
        if self.remote.is_empty() {
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
            return render_state(&group);
        }
        // Local members first, then each node's in the order the nodes were first heard of:
        // every node renders the same topic's state in its own deterministic order.
        let mut merged: IndexMap<&str, Vec<&str>> = IndexMap::new();
        for (key, list) in &self.by_key {
            merged
                .entry(key.as_str())
                .or_default()
                .extend(list.iter().map(|t| t.rendered.as_str()));
        }
        for node in self.remote.values() {
            for member in node.members.values() {
                merged
                    .entry(member.key.as_str())
                    .or_default()
                    .push(member.rendered.as_str());
            }
        }
        let group: Group<'_> = merged.into_iter().collect();
        render_state(&group)
    }

    /// This node's members, for a snapshot to the other nodes.
    pub fn local_members(&self) -> Vec<Member> {
        self.by_key
            .iter()
            .flat_map(|(key, list)| {
                list.iter().map(|t| Member {
                    key: key.clone(),
                    phx_ref: t.phx_ref.clone(),
                    rendered: t.rendered.clone(),
                })
            })
            .collect()
    }

    /// Whether this node tracks anyone here (remote members do not keep a topic).
    pub fn has_local(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The change counter last applied from `node`.
    pub fn remote_seq(&self, node: &str) -> Option<u64> {
        self.remote.get(node).map(|n| n.seq)
    }

    /// Applies another node's change; returns the diff for this node's subscribers.
    pub fn apply_remote(
        &mut self,
        node: &str,
        seq: u64,
        change: realtide_protocol::peer::PresenceChange,
    ) -> Option<String> {
        use realtide_protocol::peer::PresenceChange;
        let entry = self.remote.entry(node.to_owned()).or_default();
        entry.seq = entry.seq.max(seq);
        let (joins, leaves): (Vec<Member>, Vec<Member>) = match change {
            PresenceChange::Join { member, replaces } => {
                let left = replaces.and_then(|r| entry.members.shift_remove(&r));
                entry.members.insert(member.phx_ref.clone(), member.clone());
                (vec![member], left.into_iter().collect())
            }
            PresenceChange::Leave { phx_ref } => (
                vec![],
                entry.members.shift_remove(&phx_ref).into_iter().collect(),
            ),
            PresenceChange::Snapshot { members } => {
                let new: IndexMap<String, Member> = members
                    .into_iter()
                    .map(|m| (m.phx_ref.clone(), m))
                    .collect();
                let leaves = entry
                    .members
                    .values()
                    .filter(|m| !new.contains_key(&m.phx_ref))
                    .cloned()
                    .collect();
                let joins = new
                    .values()
                    .filter(|m| !entry.members.contains_key(&m.phx_ref))
                    .cloned()
                    .collect();
                entry.members = new;
                (joins, leaves)
            }
        };
        self.remote_diff(&joins, &leaves)
    }

    /// Forgets every member of `node` (it left the cluster); returns the leave diff.
    pub fn forget_node(&mut self, node: &str) -> Option<String> {
        let gone = self.remote.shift_remove(node)?;
        let leaves: Vec<Member> = gone.members.into_values().collect();
        self.remote_diff(&[], &leaves)
    }

    fn remote_diff(&mut self, joins: &[Member], leaves: &[Member]) -> Option<String> {
        if joins.is_empty() && leaves.is_empty() {
            return None;
        }
        self.state = None;
        Some(render_diff(&group_members(joins), &group_members(leaves)))
    }

    /// Tracks `meta` for `channel` under `key`; returns the diff to fan out, or `None` for a
    /// no-op (same meta as last time). Refused, changing nothing, when the topic's or the
    /// process's presence bytes would pass their bound.
    pub fn track(
        &mut self,
        channel: ChannelId,
        key: &str,
        meta: Map<String, Value>,
        limits: &Limits,
    ) -> Result<Option<TrackedChange>, PresenceFull> {
        let phx_ref = new_phx_ref();
        let existing = self
            .by_key
            .get(key)
            .and_then(|list| list.iter().find(|t| t.channel == channel));
        if existing.is_some_and(|t| t.meta == meta) {
            return Ok(None);
        }
        let rendered = render_meta(&meta, &phx_ref, existing.map(|t| t.phx_ref.as_str()));
        let old_cost = existing.map_or(0, Tracked::cost);
        let new_cost = rendered.len().saturating_mul(2);
        let bytes = self.bytes - old_cost + new_cost;
        if new_cost > old_cost {
            if bytes > limits.settings.presence_state_bytes {
                return Err(PresenceFull::Topic);
            }
            if !limits.reserve_presence(new_cost - old_cost) {
                return Err(PresenceFull::Process);
            }
        } else {
            limits.release_presence(old_cost - new_cost);
        }
        self.bytes = bytes;
        self.state = None;
        let list = self.by_key.entry(key.to_owned()).or_default();
        Ok(match list.iter_mut().find(|t| t.channel == channel) {
            Some(existing) => {
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
                Some(TrackedChange {
                    diff: render_diff(&joins, &leaves),
                    change: LocalChange::Joined {
                        member: Member {
                            key: key.to_owned(),
                            phx_ref: existing.phx_ref.clone(),
                            rendered: existing.rendered.clone(),
                        },
                        replaces: Some(old.phx_ref),
                    },
                })
            }
            None => {
                let diff = render_diff(&vec![(key, vec![rendered.as_str()])], &vec![]);
                let change = LocalChange::Joined {
                    member: Member {
                        key: key.to_owned(),
                        phx_ref: phx_ref.clone(),
                        rendered: rendered.clone(),
                    },
                    replaces: None,
                };
                list.push(Tracked {
                    channel,
                    phx_ref,
                    meta,
                    rendered,
                });
                self.keys.insert(channel, key.to_owned());
                Some(TrackedChange { diff, change })
            }
        })
    }

    /// Removes `channel`'s presence; returns the leave diff when it was tracked.
    pub fn untrack(&mut self, channel: ChannelId, limits: &Limits) -> Option<TrackedChange> {
        let key = self.keys.swap_remove(&channel)?;
        let list = self.by_key.get_mut(&key)?;
        let position = list.iter().position(|t| t.channel == channel)?;
        let old = list.remove(position);
        self.bytes = self.bytes.saturating_sub(old.cost());
        limits.release_presence(old.cost());
        self.state = None;
        if list.is_empty() {
            self.by_key.shift_remove(&key);
        }
        Some(TrackedChange {
            diff: render_diff(&vec![], &vec![(key.as_str(), vec![old.rendered.as_str()])]),
            change: LocalChange::Left {
                phx_ref: old.phx_ref,
            },
        })
    }
}

/// Members grouped by key, in order.
fn group_members(members: &[Member]) -> Group<'_> {
    let mut by_key: IndexMap<&str, Vec<&str>> = IndexMap::new();
    for m in members {
        by_key
            .entry(m.key.as_str())
            .or_default()
            .push(m.rendered.as_str());
    }
    by_key.into_iter().collect()
}

#[cfg(test)]
#[expect(clippy::indexing_slicing, reason = "test assertions on known shapes")]
mod tests {
    use super::*;
    use crate::limits::LimitSettings;
    use serde_json::json;

    fn meta(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn track_update_noop_untrack() {
        let limits = Limits::new(LimitSettings::unlimited());
        let mut p = Presence::default();
        let a = ChannelId(1);
        let diff = p
            .track(a, "u1", meta(json!({"n": 1})), &limits)
            .ok()
            .flatten()
            .map(|t| t.diff)
            .unwrap_or_default();
        assert!(
            diff.starts_with(r#"{"joins":{"u1":{"metas":[{"phx_ref":"F"#),
            "{diff}"
        );
        assert!(diff.ends_with(r#","n":1}]}},"leaves":{}}"#), "{diff}");
        assert_eq!(
            p.track(a, "u1", meta(json!({"n": 1})), &limits)
                .ok()
                .flatten()
                .map(|t| t.diff),
            None
        );
        let update = p
            .track(a, "u1", meta(json!({"n": 2})), &limits)
            .ok()
            .flatten()
            .map(|t| t.diff)
            .unwrap_or_default();
        assert!(update.contains("phx_ref_prev"), "{update}");
        assert!(
            update.contains(r#""leaves":{"u1":{"metas":[{"phx_ref":"#),
            "{update}"
        );
        p.track(ChannelId(2), "u1", meta(json!({"n": 3})), &limits)
            .ok()
            .flatten();
        let state: Value = serde_json::from_str(&p.render_state()).unwrap_or_default();
        assert_eq!(state["u1"]["metas"].as_array().map(Vec::len), Some(2));
        let leave = p.untrack(a, &limits).map(|t| t.diff).unwrap_or_default();
        assert!(
            leave.starts_with(r#"{"joins":{},"leaves":{"u1""#),
            "{leave}"
        );
        assert!(p.untrack(a, &limits).is_none());
        p.untrack(ChannelId(2), &limits);
        assert!(p.is_empty());
        assert_eq!(p.render_state(), "{}");
    }

    #[test]
    fn tracks_past_the_bounds_are_refused_and_leaves_release() {
        let limits = Limits::new(LimitSettings {
            presence_state_bytes: 400,
            presence_total_bytes: 500,
            ..LimitSettings::unlimited()
        });
        let big = |n: usize| meta(json!({ "pad": "x".repeat(n) }));
        let mut topic = Presence::default();
        let mut other = Presence::default();
        assert!(matches!(
            topic.track(ChannelId(1), "a", big(100), &limits),
            Ok(Some(_))
        ));
        // The same topic past 400 bytes.
        assert_eq!(
            topic.track(ChannelId(2), "b", big(100), &limits),
            Err(PresenceFull::Topic)
        );
        // Another topic: the process total (500) is reached first.
        assert_eq!(
            other.track(ChannelId(3), "c", big(150), &limits),
            Err(PresenceFull::Process)
        );
        // A leave releases its bytes; the state is rendered again.
        let before = topic.state(&limits);
        assert!(topic.untrack(ChannelId(1), &limits).is_some());
        assert_ne!(topic.state(&limits), before);
        assert!(matches!(
            other.track(ChannelId(3), "c", big(150), &limits),
            Ok(Some(_))
        ));
    }

    #[test]
    fn other_nodes_members_merge_into_the_state_and_leave_with_their_node() {
        use realtide_protocol::peer::PresenceChange;
        let limits = Limits::new(LimitSettings::unlimited());
        let mut p = Presence::default();
        p.track(ChannelId(1), "local", meta(json!({"n": 0})), &limits)
            .ok();
        let member = |key: &str, r: &str| Member {
            key: key.to_owned(),
            phx_ref: r.to_owned(),
            rendered: format!(r#"{{"phx_ref":"{r}"}}"#),
        };
        // A snapshot of node b: two members, one sharing the local key.
        let diff = p.apply_remote(
            "b",
            3,
            PresenceChange::Snapshot {
                members: vec![member("local", "B1"), member("bob", "B2")],
            },
        );
        let diff = diff.unwrap_or_default();
        assert!(
            diff.contains(r#""bob":{"metas":[{"phx_ref":"B2"}]}"#),
            "{diff}"
        );
        assert_eq!(p.remote_seq("b"), Some(3));
        let state: Value = serde_json::from_str(&p.render_state()).unwrap_or_default();
        assert_eq!(state["local"]["metas"].as_array().map(Vec::len), Some(2));
        assert_eq!(state["bob"]["metas"][0]["phx_ref"], "B2");
        // The same snapshot again changes nothing; an update replaces a member.
        assert_eq!(
            p.apply_remote(
                "b",
                4,
                PresenceChange::Snapshot {
                    members: vec![member("local", "B1"), member("bob", "B2")],
                },
            ),
            None
        );
        let update = p
            .apply_remote(
                "b",
                5,
                PresenceChange::Join {
                    member: member("bob", "B3"),
                    replaces: Some("B2".to_owned()),
                },
            )
            .unwrap_or_default();
        assert!(
            update.contains(r#""leaves":{"bob":{"metas":[{"phx_ref":"B2"}]}}"#),
            "{update}"
        );
        // Remote members do not keep the topic; their node leaving takes them all.
        assert!(p.has_local());
        let gone = p.forget_node("b").unwrap_or_default();
        assert!(gone.starts_with(r#"{"joins":{},"leaves":{"#), "{gone}");
        assert!(gone.contains("B1") && gone.contains("B3"), "{gone}");
        let state: Value = serde_json::from_str(&p.render_state()).unwrap_or_default();
        assert_eq!(state.as_object().map(|o| o.len()), Some(1));
        assert_eq!(p.forget_node("b"), None);
    }
}
