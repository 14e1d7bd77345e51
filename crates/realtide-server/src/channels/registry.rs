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
use crate::channels::presence::{LocalChange, Presence, PresenceFull};
use crate::outbox::{OutFrame, Outbox};
use realtide_protocol::peer::Member;

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

/// Told about topics opening and closing on this process and about their local presence
/// changes: how a cluster subscribes to exactly the topics this node has subscribers of.
/// Called under the registry's or the topic's locks, so implementations must not block.
pub trait Watch: Send + Sync + std::fmt::Debug {
    /// A topic got its first subscriber (or a join is preparing one).
    fn opened(&self, room: &Arc<Room>);
    /// A topic lost its last subscriber and local presence.
    fn closed(&self, room: &Arc<Room>);
    /// A local presence joined, updated or left.
    fn presence(&self, room: &Room, change: LocalChange);
}

/// How far a topic's link to the other nodes of a cluster is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Link {
    /// Not yet receiving the other nodes' messages.
    Opening,
    /// Receiving the other nodes' broadcasts and presence changes.
    Subscribed,
    /// Also holds the other nodes' presences as of the subscription.
    Synced,
}

/// A topic kept open for a join in progress (see [`Registry::open`]).
#[derive(Debug)]
pub struct Opening {
    registry: Arc<Registry>,
    room: Arc<Room>,
}

impl Opening {
    /// The topic.
    pub fn room(&self) -> &Arc<Room> {
        &self.room
    }
}

impl Drop for Opening {
    fn drop(&mut self) {
        self.registry.opened(&self.room);
    }
}

/// The live state of one topic (its subscribers and presence); named apart from the
/// protocol's `Topic`, which is only the name.
#[derive(Debug)]
pub struct Room {
    /// Its key.
    key: TopicKey,
    /// Wire name, `realtime:<sub-topic>`.
    name: String,
    /// Joins between [`Registry::open`] and their subscription: the topic is kept meanwhile.
    joining: std::sync::atomic::AtomicUsize,
    /// The link to the other nodes (always `Synced` on a single node).
    link: tokio::sync::watch::Sender<Link>,
    /// Whether a presence sync with the other nodes was started.
    pub sync_started: AtomicBool,
    metrics: Arc<Metrics>,
    limits: Arc<Limits>,
    subscribers: RwLock<IndexMap<ChannelId, Subscriber>>,
    presence: Mutex<Presence>,
    watch: Option<Arc<dyn Watch>>,
}

/// All topics of the process.
#[derive(Debug)]
pub struct Registry {
    topics: DashMap<TopicKey, Arc<Room>>,
    next_channel: AtomicU64,
    metrics: Arc<Metrics>,
    limits: Arc<Limits>,
    /// The cluster, when this process is a node of one.
    watch: std::sync::OnceLock<Arc<dyn Watch>>,
}

impl Registry {
    /// An empty registry.
    pub fn new(metrics: Arc<Metrics>, limits: Arc<Limits>) -> Self {
        Self {
            topics: DashMap::new(),
            next_channel: AtomicU64::new(1),
            metrics,
            limits,
            watch: std::sync::OnceLock::new(),
        }
    }

    /// Installs the cluster's watch (once, before serving).
    pub fn set_watch(&self, watch: Arc<dyn Watch>) {
        let _ = self.watch.set(watch);
    }

    fn new_room(&self, key: &TopicKey) -> Arc<Room> {
        let link = if self.watch.get().is_some() {
            Link::Opening
        } else {
            Link::Synced
        };
        Arc::new(Room {
            key: key.clone(),
            name: format!("{}{}", realtide_protocol::id::TOPIC_PREFIX, key.sub_topic),
            joining: std::sync::atomic::AtomicUsize::new(0),
            link: tokio::sync::watch::Sender::new(link),
            sync_started: AtomicBool::new(false),
            metrics: self.metrics.clone(),
            limits: self.limits.clone(),
            subscribers: RwLock::new(IndexMap::new()),
            presence: Mutex::new(Presence::default()),
            watch: self.watch.get().cloned(),
        })
    }

    /// The topic of `key`, created when absent, kept (not dropped while empty) while the
    /// returned [`Opening`] lives: a join awaits the topic's cluster link meanwhile. Dropping it
    /// (the join subscribed, failed, or its socket went away mid-wait) releases the topic.
    pub fn open(self: &Arc<Self>, key: &TopicKey) -> Opening {
        Opening {
            room: self.open_room(key),
            registry: self.clone(),
        }
    }

    fn open_room(&self, key: &TopicKey) -> Arc<Room> {
        let mut created = false;
        let entry = self.topics.entry(key.clone()).or_insert_with(|| {
            created = true;
            self.new_room(key)
        });
        let room = entry.value().clone();
        room.joining.fetch_add(1, Ordering::Relaxed);
        drop(entry);
        if created && let Some(watch) = self.watch.get() {
            watch.opened(&room);
        }
        room
    }

    /// Ends an [`Registry::open`]: the topic is dropped if the join did not subscribe.
    fn opened(&self, room: &Arc<Room>) {
        room.joining.fetch_sub(1, Ordering::Relaxed);
        self.release(room);
    }

    /// Drops a topic nobody uses any more.
    fn release(&self, room: &Arc<Room>) {
        let removed = self
            .topics
            .remove_if(&room.key, |_, t| Arc::ptr_eq(t, room) && t.is_empty());
        if removed.is_some()
            && let Some(watch) = self.watch.get()
        {
            watch.closed(room);
        }
    }

    /// Every topic (for a cluster's resynchronization).
    pub fn rooms(&self) -> Vec<Arc<Room>> {
        self.topics.iter().map(|e| e.value().clone()).collect()
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
        let mut created = false;
        let shard_entry = self.topics.entry(key.clone()).or_insert_with(|| {
            created = true;
            self.new_room(key)
        });
        let topic = shard_entry.value().clone();
        // The shard lock is still held: a concurrent `release` cannot drop this topic between
        // creation and subscription.
        let mut presence = topic.presence.lock();
        topic.subscribers.write().insert(id, subscriber);
        on_joined(&mut || presence.state(&topic.limits));
        drop(presence);
        drop(shard_entry);
        if created && let Some(watch) = self.watch.get() {
            watch.opened(&topic);
        }
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
            if let Some(tracked) = presence.untrack(id, &topic.limits) {
                topic.fanout(Audience::Presence, None, &|vsn| {
                    topic.diff_frame(vsn, &tracked.diff)
                });
                if let Some(watch) = &topic.watch {
                    watch.presence(topic, tracked.change);
                }
            }
        }
        debug_assert_eq!(key, &topic.key);
        self.release(topic);
    }
}

impl Room {
    /// The topic's wire name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its key.
    pub fn key(&self) -> &TopicKey {
        &self.key
    }

    fn is_empty(&self) -> bool {
        let presence = self.presence.lock();
        presence.is_empty()
            && self.subscribers.read().is_empty()
            && self.joining.load(Ordering::Relaxed) == 0
    }

    /// Whether this node tracks presences here.
    pub fn has_local_presence(&self) -> bool {
        !self.presence.lock().is_empty()
    }

    /// The link to the other nodes.
    pub fn link(&self) -> Link {
        *self.link.borrow()
    }

    /// Moves the link forward (never back).
    pub fn set_link(&self, link: Link) {
        self.link.send_if_modified(|current| {
            let forward = link > *current;
            if forward {
                *current = link;
            }
            forward
        });
    }

    /// Waits until the link reaches `link`, at most `within`.
    pub async fn wait_link(&self, link: Link, within: std::time::Duration) -> bool {
        let mut watch = self.link.subscribe();
        tokio::time::timeout(within, watch.wait_for(|l| *l >= link))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Applies a presence change of another node and fans the diff out here.
    pub fn apply_remote(
        &self,
        node: &str,
        seq: u64,
        change: realtide_protocol::peer::PresenceChange,
    ) {
        let mut presence = self.presence.lock();
        if let Some(diff) = presence.apply_remote(node, seq, change) {
            self.fanout(Audience::Presence, None, &|vsn| self.diff_frame(vsn, &diff));
        }
    }

    /// Forgets a node that left the cluster: its members leave here.
    pub fn forget_node(&self, node: &str) {
        let mut presence = self.presence.lock();
        if let Some(diff) = presence.forget_node(node) {
            self.fanout(Audience::Presence, None, &|vsn| self.diff_frame(vsn, &diff));
        }
    }

    /// The change counter last applied from `node`'s presences.
    pub fn remote_seq(&self, node: &str) -> Option<u64> {
        self.presence.lock().remote_seq(node)
    }

    /// Runs `f` with this node's members under the presence lock (a snapshot for the other
    /// nodes is published from inside, so no local change can slip between).
    pub fn with_local_members<T>(&self, f: impl FnOnce(Vec<Member>) -> T) -> T {
        let presence = self.presence.lock();
        f(presence.local_members())
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
        let tracked = presence.track(id, key, meta, &self.limits)?;
        accepted();
        if let Some(tracked) = tracked {
            self.fanout(Audience::Presence, None, &|vsn| {
                self.diff_frame(vsn, &tracked.diff)
            });
            if let Some(watch) = &self.watch {
                watch.presence(self, tracked.change);
            }
        }
        Ok(())
    }

    /// Removes a channel's presence, fanning out the leave.
    pub fn untrack(&self, id: ChannelId) {
        let mut presence = self.presence.lock();
        if let Some(tracked) = presence.untrack(id, &self.limits) {
            self.fanout(Audience::Presence, None, &|vsn| {
                self.diff_frame(vsn, &tracked.diff)
            });
            if let Some(watch) = &self.watch {
                watch.presence(self, tracked.change);
            }
        }
    }
}
