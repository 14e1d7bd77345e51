//! The topic registry: who is subscribed to which topic, and fan-out to them.
//!
//! Topics live in a sharded map ([`DashMap`]); a shard lock is held only to find, create or
//! remove a topic, never across I/O. Each topic keeps its subscribers in a dense map behind a
//! read-write lock: a fan-out takes the read lock, hands every subscriber the same pre-encoded
//! bytes with a non-blocking push, and never awaits. Presence state sits beside the subscribers
//! behind its own mutex (lock order: presence, then subscribers).

use std::cell::OnceCell;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use dashmap::DashMap;
use indexmap::IndexMap;
use parking_lot::{Mutex, RwLock};
use realtide_protocol::Vsn;

use crate::channels::id::ChannelId;
use crate::limits::Limits;
use crate::metrics::Metrics;

/// Shutdown reason of a channel receiving while the events limit is tripped.
pub const TOO_MANY_MESSAGES: &str = "Too many messages per second";
/// Shutdown reason of a channel while the presence events limit is tripped.
pub const TOO_MANY_PRESENCE: &str = "Too many presence messages per second";
use crate::channels::presence::{Presence, PresenceFull};
use crate::outbox::{OutFrame, Outbox};

/// A topic namespace key: public and private channels with the same name are different topics.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TopicKey {
    /// Private (RLS-authorized) namespace.
    pub private: bool,
    /// The sub-topic (without `realtime:`).
    pub sub_topic: Box<str>,
}

/// A subscriber's delivery handle.
#[derive(Debug, Clone)]
pub struct Subscriber {
    /// The subscriber's serializer.
    pub vsn: Vsn,
    /// Its connection's outbound queue.
    pub outbox: Outbox,
    /// Private channels only: what the subscriber may receive.
    pub reads: Option<Arc<Reads>>,
    /// Its session's control queue (rate-limit shutdowns decided during someone's fan-out).
    pub control: ControlSender,
}

/// A request to a session to shut one of its channels down, raised by a fan-out running in
/// another task.
#[derive(Debug, Clone, Copy)]
pub struct ChannelControl {
    /// The channel.
    pub channel: ChannelId,
    /// The `system` message it is shut down with.
    pub reason: &'static str,
}

/// Sending side of a session's control queue.
pub type ControlSender = tokio::sync::mpsc::UnboundedSender<ChannelControl>;

/// A private subscriber's read state, shared between its session and the topic.
#[derive(Debug, Default)]
pub struct Reads {
    /// Broadcast-read granted (a channel joined with presence-read only receives no
    /// broadcasts); changed by `access_token` re-evaluation.
    pub broadcast: AtomicBool,
    /// Presence-read granted: without it no `presence_diff` is delivered, as no
    /// `presence_state` is; changed by `access_token` re-evaluation and by the presence-read
    /// check of a first track.
    pub presence: AtomicBool,
    /// Ids of the messages replayed at join: their live copies are not delivered again.
    pub replayed: HashSet<Box<str>>,
}

/// Who a fan-out reaches (and which rate counter it is accounted to).
#[derive(Debug, Clone, Copy)]
pub enum Audience<'a> {
    /// Subscribers allowed to read presence: presence diffs.
    Presence,
    /// Subscribers allowed to read broadcasts; `id` is the message id, when it has one.
    Broadcast {
        /// Message id (`meta.id`).
        id: Option<&'a str>,
    },
}

impl Audience<'_> {
    fn admits(&self, subscriber: &Subscriber) -> bool {
        match (self, &subscriber.reads) {
            (Audience::Presence | Audience::Broadcast { .. }, None) => true,
            (Audience::Presence, Some(reads)) => reads.presence.load(Ordering::Relaxed),
            (Audience::Broadcast { id }, Some(reads)) => {
                reads.broadcast.load(Ordering::Relaxed)
                    && id.is_none_or(|id| !reads.replayed.contains(id))
            }
        }
    }
}

/// The live state of one topic (its subscribers and presence); named apart from the
/// protocol's `Topic`, which is only the name.
#[derive(Debug)]
pub struct Room {
    /// Wire name, `realtime:<sub-topic>`.
    name: String,
    metrics: Arc<Metrics>,
    limits: Arc<Limits>,
    subscribers: RwLock<IndexMap<ChannelId, Subscriber>>,
    presence: Mutex<Presence>,
}

/// All topics of the process.
#[derive(Debug)]
pub struct Registry {
    topics: DashMap<TopicKey, Arc<Room>>,
    next_channel: AtomicU64,
    metrics: Arc<Metrics>,
    limits: Arc<Limits>,
}

impl Registry {
    /// An empty registry.
    pub fn new(metrics: Arc<Metrics>, limits: Arc<Limits>) -> Self {
        Self {
            topics: DashMap::new(),
            next_channel: AtomicU64::new(1),
            metrics,
            limits,
        }
    }

    /// A fresh channel id.
    pub fn next_channel_id(&self) -> ChannelId {
        ChannelId(self.next_channel.fetch_add(1, Ordering::Relaxed))
    }

    /// Number of topics with at least one subscriber or presence.
    pub fn topic_count(&self) -> usize {
        self.topics.len()
    }

    /// Adds a subscriber to a topic (creating it). `on_joined` runs while the topic's presence
    /// lock is held and gets the rendered `presence_state`, so that the caller can queue its
    /// join reply and state before any later diff.
    pub fn subscribe(
        &self,
        key: &TopicKey,
        id: ChannelId,
        subscriber: Subscriber,
        on_joined: impl FnOnce(&mut dyn FnMut() -> Bytes),
    ) -> Arc<Room> {
        let shard_entry = self.topics.entry(key.clone()).or_insert_with(|| {
            Arc::new(Room {
                name: format!("{}{}", realtide_protocol::id::TOPIC_PREFIX, key.sub_topic),
                metrics: self.metrics.clone(),
                limits: self.limits.clone(),
                subscribers: RwLock::new(IndexMap::new()),
                presence: Mutex::new(Presence::default()),
            })
        });
        let topic = shard_entry.value().clone();
        // The shard lock is still held: a concurrent `release` cannot drop this topic between
        // creation and subscription.
        let mut presence = topic.presence.lock();
        topic.subscribers.write().insert(id, subscriber);
        on_joined(&mut || presence.state(&topic.limits));
        drop(presence);
        drop(shard_entry);
        topic
    }

    /// The topic of `key`, when anyone is subscribed.
    pub fn get(&self, key: &TopicKey) -> Option<Arc<Room>> {
        self.topics.get(key).map(|entry| entry.value().clone())
    }

    /// Removes a channel from its topic: its presence leaves (with a diff to the others), and
    /// the topic is dropped once nobody is left.
    pub fn unsubscribe(&self, key: &TopicKey, topic: &Arc<Room>, id: ChannelId) {
        {
            let mut presence = topic.presence.lock();
            topic.subscribers.write().swap_remove(&id);
            if let Some(diff) = presence.untrack(id, &topic.limits) {
                topic.fanout(Audience::Presence, None, &|vsn| {
                    topic.diff_frame(vsn, &diff)
                });
            }
        }
        self.topics
            .remove_if(key, |_, t| Arc::ptr_eq(t, topic) && t.is_empty());
    }
}

impl Room {
    /// The topic's wire name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn is_empty(&self) -> bool {
        let presence = self.presence.lock();
        presence.is_empty() && self.subscribers.read().is_empty()
    }

    /// Hands a message to every subscriber except `exclude`. `encode` is called at most once
    /// per serializer; `None` means "not deliverable to that serializer" (e.g. binary to V1).
    /// Deliveries count against the events (or presence) rate limit; while that limit is
    /// tripped nothing is delivered and each receiving channel is told to shut down, as the
    /// reference's receiving channels do. Returns the number of deliveries.
    pub fn fanout(
        &self,
        audience: Audience<'_>,
        exclude: Option<ChannelId>,
        encode: &dyn Fn(Vsn) -> Option<OutFrame>,
    ) -> usize {
        let (counter, reason) = match audience {
            Audience::Presence => (&self.limits.presence, TOO_MANY_PRESENCE),
            Audience::Broadcast { .. } => (&self.limits.events, TOO_MANY_MESSAGES),
        };
        let tripped = counter.tripped();
        let cache: [OnceCell<Option<OutFrame>>; 2] = [OnceCell::new(), OnceCell::new()];
        let subscribers = self.subscribers.read();
        let mut delivered = 0;
        for (id, subscriber) in subscribers.iter() {
            if Some(*id) == exclude || !audience.admits(subscriber) {
                continue;
            }
            if tripped {
                let _ = subscriber.control.send(ChannelControl {
                    channel: *id,
                    reason,
                });
                continue;
            }
            let Some(cell) = cache.get(subscriber.vsn.index()) else {
                continue;
            };
            // Counted in the process's outbound budget until the last copy is written or
            // dropped.
            if let Some(frame) = cell.get_or_init(|| {
                encode(subscriber.vsn).map(|frame| frame.held(&self.limits.outbound))
            }) && subscriber.outbox.push_uncounted(frame.clone())
            {
                delivered += 1;
            }
        }
        drop(subscribers);
        counter.add(delivered as u64);
        self.metrics.events_out(delivered as u64);
        self.metrics.frames_queued(delivered as i64);
        if matches!(audience, Audience::Presence) {
            self.metrics.presence_events(delivered as u64);
        }
        delivered
    }

    fn diff_frame(&self, vsn: Vsn, diff: &str) -> Option<OutFrame> {
        let text = realtide_protocol::encode::text_frame(
            vsn,
            None,
            None,
            &self.name,
            "presence_diff",
            diff,
        );
        Some(OutFrame::Text(text.into()))
    }

    /// Tracks (or updates) a channel's presence and fans the diff out to every subscriber,
    /// the tracker included. Identical re-tracks are no-ops; tracks past the presence memory
    /// bounds are refused and change nothing. `accepted` runs once the track is taken, before
    /// its diff goes out (the tracker's reply comes first).
    pub fn track(
        &self,
        id: ChannelId,
        key: &str,
        meta: serde_json::Map<String, serde_json::Value>,
        accepted: impl FnOnce(),
    ) -> Result<(), PresenceFull> {
        let mut presence = self.presence.lock();
        let diff = presence.track(id, key, meta, &self.limits)?;
        accepted();
        if let Some(diff) = diff {
            self.fanout(Audience::Presence, None, &|vsn| self.diff_frame(vsn, &diff));
        }
        Ok(())
    }

    /// Removes a channel's presence, fanning out the leave.
    pub fn untrack(&self, id: ChannelId) {
        let mut presence = self.presence.lock();
        if let Some(diff) = presence.untrack(id, &self.limits) {
            self.fanout(Audience::Presence, None, &|vsn| self.diff_frame(vsn, &diff));
        }
    }
}
