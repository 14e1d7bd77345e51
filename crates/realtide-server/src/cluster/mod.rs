//! A realtide cluster on NATS: several nodes behind a load balancer behave as one.
//!
//! - Broadcasts: a message published on a node is fanned out to that node's subscribers and
//!   published once on its topic's subject (`rt.<scope>.t.<p|s>.<topic>`); NATS hands it once
//!   to every node subscribed to that subject, and each node fans it out to its own
//!   subscribers. A node subscribes to a topic's subject exactly while it has subscribers of
//!   the topic (the registry's [`Watch`]), so topics nobody here uses never reach it. One
//!   connection per node keeps one publisher's messages in order.
//! - Presence: each node owns its own sockets' presences and publishes their changes on the
//!   topic's subject; the others mirror them (merged into their `presence_state`). A node that
//!   opens a topic asks every live node for its members (`rt.<scope>.sync`) before the first
//!   presence-enabled join is answered.
//! - Membership: nodes announce themselves every `CLUSTER_HEARTBEAT_MS` (`rt.<scope>.node`); a
//!   node silent for `CLUSTER_NODE_TIMEOUT_MS`, or saying goodbye, is gone and its members
//!   leave everywhere. A node (re)appearing gets every other node's members again.
//! - Changes: see [`crate::changes::shared`] (one slot consumer, one JetStream stream).
//!
//! - [`wire`]: subjects and the outgoing queue.

pub mod wire;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use futures_util::StreamExt;
use parking_lot::Mutex;
use realtide_protocol::encode::UserBody;
use realtide_protocol::peer::{
    self, Broadcast, BroadcastBody, Heartbeat, PeerMessage, PresenceChange,
};
use tokio_util::sync::CancellationToken;

use crate::changes::postgres::Postgres;
use crate::channels::presence::LocalChange;
use crate::channels::publish::{Message, Origin, Peers};
use crate::channels::registry::{Link, Registry, Room, TopicKey, Watch};
use crate::config::ClusterConfig;
use crate::limits::Limits;
use crate::metrics::Metrics;
use wire::{Outgoing, Subjects};

/// How long a join waits for its topic's subscription, and then for the other nodes'
/// presences; past it the join proceeds with what arrived (later changes come as diffs).
const LINK_WAIT: Duration = Duration::from_secs(2);
/// How long a starting node waits for the other nodes to answer its first heartbeat.
const SETTLE: Duration = Duration::from_millis(300);
/// How long a presence sync waits for the other nodes' answers.
const SYNC_WAIT: Duration = Duration::from_secs(1);

/// Why joining the cluster failed at start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// NATS could not be reached or refused the connection.
    #[error("CLUSTER_NATS_URL: cannot connect to NATS at {urls}: {message}")]
    Connect {
        /// The URLs tried.
        urls: String,
        /// Why.
        message: String,
    },
    /// A credentials file could not be read.
    #[error("CLUSTER_NATS_CREDS: {0}")]
    Creds(#[source] std::io::Error),
    /// The JetStream change stream could not be set up.
    #[error("CLUSTER_NATS_URL: JetStream: {0}")]
    Stream(#[source] crate::changes::shared::SharedError),
}

/// Connects to NATS (failing at once on a wrong URL or refused credentials); later outages
/// are survived by reconnecting forever.
pub async fn connect(config: &ClusterConfig) -> Result<Connection, ClusterError> {
    let disconnects = Arc::new(AtomicU64::new(0));
    let counted = disconnects.clone();
    let mut options = async_nats::ConnectOptions::new()
        .event_callback(move |event| {
            if matches!(event, async_nats::Event::Disconnected) {
                counted.fetch_add(1, Ordering::Relaxed);
            }
            async {}
        })
        .name(format!("realtide {}", config.node))
        // A node never needs its own messages back.
        .no_echo()
        .connection_timeout(Duration::from_secs(5))
        .max_reconnects(None::<usize>)
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((100 * 2u64.saturating_pow(attempts.min(6) as u32)).min(2_000))
        });
    if let Some(creds) = &config.creds {
        options = options
            .credentials_file(creds)
            .await
            .map_err(ClusterError::Creds)?;
    }
    if let Some(token) = &config.token {
        options = options.token(token.clone());
    }
    if let Some(ca) = &config.tls_ca {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    let urls: Vec<async_nats::ServerAddr> =
        config.urls.iter().filter_map(|u| u.parse().ok()).collect();
    let client = options
        .connect(urls)
        .await
        .map_err(|e| ClusterError::Connect {
            urls: config
                .urls
                .iter()
                .map(|u| redact(u))
                .collect::<Vec<_>>()
                .join(","),
            message: e.to_string(),
        })?;
    Ok(Connection {
        client,
        disconnects,
    })
}

/// A NATS connection and the count of times it was lost.
#[derive(Debug, Clone)]
pub struct Connection {
    /// The client.
    pub client: async_nats::Client,
    /// Disconnections so far: a node that lost the connection, even briefly, publishes its
    /// presences again once it is back (messages queued meanwhile may have been dropped).
    pub disconnects: Arc<AtomicU64>,
}

/// A URL without its password.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!(
                "{}://***@{}",
                url.get(..scheme).unwrap_or_default(),
                url.get(at + 1..).unwrap_or_default()
            )
        }
        _ => url.to_owned(),
    }
}

/// What this node knows of another.
#[derive(Debug, Clone)]
struct Seen {
    incarnation: u64,
    last: Instant,
    users: u64,
    slot_holder: bool,
}

/// One topic this node is subscribed to.
#[derive(Debug)]
struct Interest {
    room: Weak<Room>,
    task: tokio::task::AbortHandle,
}

/// This node's membership in a cluster.
#[derive(Debug)]
pub struct Cluster {
    config: ClusterConfig,
    client: async_nats::Client,
    subjects: Subjects,
    incarnation: u64,
    registry: Arc<Registry>,
    limits: Arc<Limits>,
    metrics: Arc<Metrics>,
    postgres: Option<Arc<Postgres>>,
    out: Outgoing,
    interests: DashMap<TopicKey, Interest>,
    nodes: Mutex<BTreeMap<String, Seen>>,
    /// This node's presence change counter.
    seq: AtomicU64,
    /// Stops the heartbeat after the goodbye.
    stop: CancellationToken,
    /// See [`Connection::disconnects`].
    disconnects: Arc<AtomicU64>,
    /// Itself, for the tasks the registry's callbacks start.
    me: Weak<Cluster>,
}

impl Cluster {
    /// The cluster state of a node; [`Cluster::start`] runs it.
    pub fn new(
        config: ClusterConfig,
        connection: Connection,
        registry: Arc<Registry>,
        limits: Arc<Limits>,
        metrics: Arc<Metrics>,
        postgres: Option<Arc<Postgres>>,
    ) -> Arc<Cluster> {
        let Connection {
            client,
            disconnects,
        } = connection;
        let subjects = Subjects::new(&config.scope);
        let (out, queue) = Outgoing::new(metrics.clone());
        let cluster = Arc::new_cyclic(|me| Cluster {
            me: me.clone(),
            disconnects,
            subjects,
            incarnation: rand::random(),
            out,
            interests: DashMap::new(),
            nodes: Mutex::new(BTreeMap::new()),
            seq: AtomicU64::new(0),
            stop: CancellationToken::new(),
            config,
            client: client.clone(),
            registry,
            limits,
            metrics: metrics.clone(),
            postgres,
        });
        tokio::spawn(wire::publish(client, queue, metrics));
        cluster
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.config.node
    }

    /// Starts the heartbeat and the membership and sync listeners.
    pub fn start(self: &Arc<Self>) {
        tokio::spawn(self.clone().heartbeat());
        tokio::spawn(self.clone().listen());
    }

    /// Says goodbye (at the end of a drain): the other nodes forget this node's members at
    /// once and, when it held the replication slot, ask for the slot at once.
    pub async fn goodbye(&self, slot_released: bool) {
        self.stop.cancel();
        let bye = Heartbeat {
            node: self.config.node.clone(),
            incarnation: self.incarnation,
            users: 0,
            slot_holder: slot_released,
            bye: true,
        };
        let payload = bye.encode();
        self.metrics.cluster.sent(payload.len());
        let _ = self
            .client
            .publish(self.subjects.node.clone(), payload.into())
            .await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.client.flush()).await;
    }

    /// Whether this node holds the replication slot.
    fn holding_slot(&self) -> bool {
        self.postgres
            .as_ref()
            .and_then(|p| p.shared.as_ref())
            .is_some_and(|s| s.holding_slot.load(Ordering::Relaxed))
    }

    /// The cluster part of `/api/health`.
    pub fn health(&self) -> serde_json::Value {
        let nodes = self.nodes.lock();
        let mut names: Vec<&str> = nodes.keys().map(String::as_str).collect();
        names.push(&self.config.node);
        names.sort_unstable();
        let holder = if self.holding_slot() {
            Some(self.config.node.as_str())
        } else {
            nodes
                .iter()
                .find(|(_, seen)| seen.slot_holder)
                .map(|(name, _)| name.as_str())
        };
        let nats = match self.client.connection_state() {
            async_nats::connection::State::Connected => "connected",
            async_nats::connection::State::Disconnected
            | async_nats::connection::State::Pending => "disconnected",
        };
        serde_json::json!({
            "node": self.config.node,
            "nats": nats,
            "nodes": names,
            "slot_holder": holder,
        })
    }

    /// Waits (bounded) until `room` receives the other nodes' messages, and for a
    /// presence-enabled join also holds their members.
    pub async fn ready(&self, room: &Arc<Room>, presence: bool) {
        if !self.connected() {
            // NATS is away: this node serves its own clients alone meanwhile; the topic links
            // (and presences are exchanged again) when the connection returns.
            return;
        }
        if room.link() < Link::Subscribed && !room.wait_link(Link::Subscribed, LINK_WAIT).await {
            tracing::warn!("topic subscription to the cluster not ready in time; joining anyway");
            return;
        }
        if !presence || room.link() >= Link::Synced {
            return;
        }
        if room
            .sync_started
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            room.wait_link(Link::Synced, LINK_WAIT).await;
            return;
        }
        self.sync(room).await;
        room.set_link(Link::Synced);
    }

    /// Asks every live node for its members of `room`'s topic and waits until their snapshots
    /// were applied here.
    async fn sync(&self, room: &Arc<Room>) {
        let expected: Vec<String> = self.nodes.lock().keys().cloned().collect();
        if expected.is_empty() {
            return;
        }
        let deadline = tokio::time::Instant::now() + SYNC_WAIT;
        let inbox = self.client.new_inbox();
        let Ok(mut answers) = self.client.subscribe(inbox.clone()).await else {
            return;
        };
        let request = peer::Sync {
            node: self.config.node.clone(),
            private: room.key().private,
            topic: room.key().sub_topic.to_string(),
        }
        .encode();
        self.out
            .send(self.subjects.sync.clone(), request.into(), Some(inbox));
        let mut waiting: std::collections::BTreeSet<String> = expected.into_iter().collect();
        let mut snapshots: Vec<(String, u64)> = Vec::new();
        while !waiting.is_empty() {
            let next = tokio::time::timeout_at(deadline, answers.next()).await;
            let Ok(Some(message)) = next else { break };
            self.metrics.cluster.received(message.payload.len());
            if let Ok(PeerMessage::Synced(synced)) = peer::decode(&message.payload) {
                waiting.remove(&synced.node);
                if let Some(seq) = synced.snapshot {
                    snapshots.push((synced.node, seq));
                }
            }
        }
        // The snapshots travel on the topic's subject, in order with that node's changes.
        while snapshots
            .iter()
            .any(|(node, seq)| room.remote_seq(node).is_none_or(|s| s < *seq))
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    fn connected(&self) -> bool {
        matches!(
            self.client.connection_state(),
            async_nats::connection::State::Connected
        )
    }

    fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Publishes this node's members of `room` as a snapshot; returns its counter.
    fn publish_snapshot(&self, room: &Room) -> u64 {
        room.with_local_members(|members| {
            let seq = self.next_seq();
            let message = peer::Presence {
                node: self.config.node.clone(),
                seq,
                private: room.key().private,
                topic: room.key().sub_topic.to_string(),
                change: PresenceChange::Snapshot { members },
            };
            self.out.send(
                self.subjects.topic(room.key()),
                message.encode().into(),
                None,
            );
            seq
        })
    }

    /// Publishes snapshots of every topic where this node has members (another node appeared,
    /// or this node reconnected to NATS).
    fn publish_all_snapshots(&self) {
        for room in self.registry.rooms() {
            if room.has_local_presence() {
                self.publish_snapshot(&room);
            }
        }
    }

    /// Forgets a node: its members leave every topic here.
    fn forget(&self, node: &str, slot_holder: bool) {
        for room in self.registry.rooms() {
            room.forget_node(node);
        }
        if slot_holder && let Some(shared) = self.postgres.as_ref().and_then(|p| p.shared.as_ref())
        {
            shared.slot_freed.notify_one();
        }
        self.update_remote_users();
    }

    fn update_remote_users(&self) {
        let users: u64 = self.nodes.lock().values().map(|s| s.users).sum();
        self.limits
            .set_remote_users(usize::try_from(users).unwrap_or(usize::MAX));
    }

    fn beat(&self) {
        let beat = Heartbeat {
            node: self.config.node.clone(),
            incarnation: self.incarnation,
            users: self.limits.users() as u64,
            slot_holder: self.holding_slot(),
            bye: false,
        };
        self.out
            .send(self.subjects.node.clone(), beat.encode().into(), None);
    }

    /// Announces this node and waits briefly for the others' answers, so the first joins
    /// already know every node.
    pub async fn settle(&self) {
        self.beat();
        tokio::time::sleep(SETTLE).await;
    }

    async fn heartbeat(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.config.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut was_connected = true;
        let mut seen_disconnects = 0;
        loop {
            tokio::select! {
                biased;
                () = self.stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let connected = self.connected();
            let disconnects = self.disconnects.load(Ordering::Relaxed);
            if connected && (!was_connected || disconnects != seen_disconnects) {
                seen_disconnects = disconnects;
                tracing::info!("reconnected to NATS; publishing this node's presences again");
                self.publish_all_snapshots();
            } else if !connected && was_connected {
                tracing::warn!(
                    "lost the connection to NATS; serving this node's clients alone until it returns"
                );
            }
            was_connected = connected;
            self.beat();
            let timeout = self.config.node_timeout;
            let gone: Vec<(String, bool)> = {
                let mut nodes = self.nodes.lock();
                let gone: Vec<(String, bool)> = nodes
                    .iter()
                    .filter(|(_, seen)| seen.last.elapsed() > timeout)
                    .map(|(name, seen)| (name.clone(), seen.slot_holder))
                    .collect();
                for (name, _) in &gone {
                    nodes.remove(name);
                }
                gone
            };
            for (name, slot_holder) in gone {
                tracing::warn!(node = %name, "cluster node not heard from; its presences leave");
                self.forget(&name, slot_holder);
            }
        }
    }

    async fn listen(self: Arc<Self>) {
        let subscribed = async {
            let nodes = self.client.subscribe(self.subjects.node.clone()).await?;
            let syncs = self.client.subscribe(self.subjects.sync.clone()).await?;
            Ok::<_, async_nats::SubscribeError>((nodes, syncs))
        };
        let (mut nodes, mut syncs) = match subscribed.await {
            Ok(subs) => subs,
            Err(error) => {
                tracing::error!(%error, "cannot subscribe to the cluster's control subjects");
                return;
            }
        };
        loop {
            let message = tokio::select! {
                biased;
                () = self.stop.cancelled() => return,
                Some(message) = nodes.next() => message,
                Some(message) = syncs.next() => message,
                else => return,
            };
            self.metrics.cluster.received(message.payload.len());
            match peer::decode(&message.payload) {
                Ok(PeerMessage::Heartbeat(beat)) => self.on_heartbeat(beat),
                Ok(PeerMessage::Sync(sync)) => {
                    if let Some(reply) = message.reply {
                        self.on_sync(sync, reply.to_string());
                    }
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "undecodable cluster message ignored"),
            }
        }
    }

    fn on_heartbeat(&self, beat: Heartbeat) {
        if beat.node == self.config.node {
            return;
        }
        if beat.bye {
            let known = self.nodes.lock().remove(&beat.node);
            if known.is_some() || beat.slot_holder {
                tracing::info!(node = %beat.node, "cluster node said goodbye");
                self.forget(&beat.node, beat.slot_holder);
            }
            return;
        }
        let (appeared, restarted) = {
            let mut nodes = self.nodes.lock();
            let seen = Seen {
                incarnation: beat.incarnation,
                last: Instant::now(),
                users: beat.users,
                slot_holder: beat.slot_holder,
            };
            match nodes.insert(beat.node.clone(), seen) {
                None => (true, false),
                Some(old) => (
                    old.incarnation != beat.incarnation,
                    old.incarnation != beat.incarnation,
                ),
            }
        };
        if restarted {
            // The node restarted under the same name: its old members are gone.
            for room in self.registry.rooms() {
                room.forget_node(&beat.node);
            }
        }
        if appeared {
            tracing::info!(node = %beat.node, "cluster node joined");
            // Answer at once, so a node that just started knows every other node within a
            // round trip (its presence syncs wait for the nodes it knows).
            self.beat();
            self.publish_all_snapshots();
        }
        self.update_remote_users();
    }

    fn on_sync(&self, sync: peer::Sync, reply: String) {
        if sync.node == self.config.node {
            return;
        }
        let key = TopicKey {
            private: sync.private,
            sub_topic: sync.topic.into(),
        };
        let snapshot = self
            .registry
            .get(&key)
            .filter(|room| room.has_local_presence())
            .map(|room| self.publish_snapshot(&room));
        let answer = peer::Synced {
            node: self.config.node.clone(),
            snapshot,
        };
        self.out.send(reply, answer.encode().into(), None);
    }

    /// Receives one topic's messages from the other nodes while this node has the topic.
    async fn follow(self: Arc<Self>, room: Weak<Room>, key: TopicKey) {
        let subject = self.subjects.topic(&key);
        let mut subscription = loop {
            match self.client.subscribe(subject.clone()).await {
                Ok(subscription) => break subscription,
                Err(error) => {
                    tracing::warn!(%error, "cannot subscribe to a topic's cluster subject; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        };
        // Once the server has the subscription, every later publish reaches this node.
        let _ = tokio::time::timeout(LINK_WAIT, self.client.flush()).await;
        match room.upgrade() {
            Some(room) => room.set_link(Link::Subscribed),
            None => return,
        }
        while let Some(message) = subscription.next().await {
            self.metrics.cluster.received(message.payload.len());
            let Some(room) = room.upgrade() else { return };
            match peer::decode(&message.payload) {
                Ok(PeerMessage::Broadcast(broadcast)) => deliver(&room, &broadcast),
                Ok(PeerMessage::Presence(presence)) if presence.node != self.config.node => {
                    room.apply_remote(&presence.node, presence.seq, presence.change);
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "undecodable cluster message ignored"),
            }
        }
    }
}

/// Fans a broadcast from another node out to this node's subscribers.
fn deliver(room: &Room, broadcast: &Broadcast) {
    let id = broadcast.id.as_deref();
    match &broadcast.body {
        BroadcastBody::Payload(payload) => {
            crate::channels::publish::deliver_from_peer(room, id, Message::Payload(payload));
        }
        BroadcastBody::User {
            event,
            binary,
            body,
            meta,
        } => {
            let body = if *binary {
                UserBody::Binary(body)
            } else {
                match std::str::from_utf8(body) {
                    Ok(text) => UserBody::Json(text),
                    Err(_) => return,
                }
            };
            crate::channels::publish::deliver_from_peer(
                room,
                id,
                Message::User {
                    event,
                    body,
                    meta: meta.as_deref(),
                },
            );
        }
    }
}

impl Watch for Cluster {
    fn opened(&self, room: &Arc<Room>) {
        // `self` is reached through the registry, which holds an `Arc<dyn Watch>`; the task
        // needs an owned handle.
        let Some(this) = self.me.upgrade() else {
            return;
        };
        let task = tokio::spawn(Cluster::follow(
            this,
            Arc::downgrade(room),
            room.key().clone(),
        ));
        let previous = self.interests.insert(
            room.key().clone(),
            Interest {
                room: Arc::downgrade(room),
                task: task.abort_handle(),
            },
        );
        if let Some(previous) = previous {
            previous.task.abort();
        }
    }

    fn closed(&self, room: &Arc<Room>) {
        let removed = self.interests.remove_if(room.key(), |_, interest| {
            interest
                .room
                .upgrade()
                .is_none_or(|r| Arc::ptr_eq(&r, room))
        });
        if let Some((_, interest)) = removed {
            // Dropping the subscription tells NATS this node no longer wants the topic.
            interest.task.abort();
        }
    }

    fn presence(&self, room: &Room, change: LocalChange) {
        let change = match change {
            LocalChange::Joined { member, replaces } => PresenceChange::Join { member, replaces },
            LocalChange::Left { phx_ref } => PresenceChange::Leave { phx_ref },
        };
        let message = peer::Presence {
            node: self.config.node.clone(),
            seq: self.next_seq(),
            private: room.key().private,
            topic: room.key().sub_topic.to_string(),
            change,
        };
        self.out.send(
            self.subjects.topic(room.key()),
            message.encode().into(),
            None,
        );
    }
}

impl Peers for Cluster {
    fn forward(&self, origin: Origin, topic: &TopicKey, id: Option<&str>, message: Message<'_>) {
        if origin == Origin::Database {
            // Every node reads database broadcasts from the shared change stream itself.
            return;
        }
        let body = match message {
            Message::Payload(payload) => BroadcastBody::Payload(payload.to_owned()),
            Message::User { event, body, meta } => {
                let (binary, bytes) = match body {
                    UserBody::Json(text) => (false, text.as_bytes().to_vec()),
                    UserBody::Binary(bytes) => (true, bytes.to_vec()),
                };
                BroadcastBody::User {
                    event: event.to_owned(),
                    binary,
                    body: bytes,
                    meta: meta.map(str::to_owned),
                }
            }
        };
        let broadcast = Broadcast {
            private: topic.private,
            topic: topic.sub_topic.to_string(),
            id: id.map(str::to_owned),
            body,
        };
        self.out.send(
            self.subjects.topic(topic),
            Bytes::from(broadcast.encode()),
            None,
        );
    }
}
