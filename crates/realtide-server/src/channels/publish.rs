//! The one publish path of user broadcasts: client sends, the HTTP broadcast API and database
//! broadcasts all end in [`Publisher::publish`], which counts the event, fans the message out
//! to this process's subscribers of the topic (encoded once per serializer) and hands it to the
//! [`Peers`] of the process. Checks that depend on who publishes (payload size, the sender's
//! write permission, `429` while the events limit is tripped) stay with the callers; what every
//! publish does is here, so a message bus between processes plugs in as one [`Peers`]
//! implementation instead of edits to three callers.

use std::sync::Arc;

use crate::channels::broadcast::{self, StoredMessage};
use crate::channels::id::ChannelId;
use crate::channels::registry::{Audience, Registry, Room, TopicKey};
use crate::limits::Limits;
use realtide_protocol::encode::UserBody;

/// Who published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A joined channel of this process; `echo` is its `broadcast.self`.
    Client {
        /// The sending channel.
        channel: ChannelId,
        /// Whether the sender receives its own message.
        echo: bool,
    },
    /// `POST /api/broadcast...`.
    Http,
    /// `realtime.send` & co. through the replication stream.
    Database,
}

/// What is published.
#[derive(Debug, Clone, Copy)]
pub enum Message<'a> {
    /// A whole broadcast payload (`{"type":"broadcast","event":...,"payload":...}`), relayed
    /// verbatim in a text frame.
    Payload(&'a str),
    /// A user broadcast: event and body (JSON or binary), with optional metadata
    /// (`{"id":...}`, `{"replayed":...}`).
    User {
        /// The user event.
        event: &'a str,
        /// The body.
        body: UserBody<'a>,
        /// Metadata, as JSON text.
        meta: Option<&'a str>,
    },
}

/// Other processes serving the same topics. A single process has none ([`NoPeers`]).
pub trait Peers: Send + Sync + std::fmt::Debug {
    /// Hands a message published here to the peers with subscribers of `topic`.
    fn forward(&self, origin: Origin, topic: &TopicKey, id: Option<&str>, message: Message<'_>);
}

/// A process on its own: nothing to forward.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoPeers;

impl Peers for NoPeers {
    fn forward(&self, _: Origin, _: &TopicKey, _: Option<&str>, _: Message<'_>) {}
}

/// Publishes user broadcasts locally and to the peers.
#[derive(Debug, Clone)]
pub struct Publisher {
    registry: Arc<Registry>,
    limits: Arc<Limits>,
    peers: Arc<dyn Peers>,
}

impl Publisher {
    /// A publisher over this process's registry and limits.
    pub fn new(registry: Arc<Registry>, limits: Arc<Limits>, peers: Arc<dyn Peers>) -> Self {
        Self {
            registry,
            limits,
            peers,
        }
    }

    /// The process's limits (callers check the events limit before publishing).
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Counts the publish as one event, delivers it to the local subscribers of `topic` (the
    /// sender excluded unless it echoes) and forwards it to the peers. `id` is the stored
    /// message's id, which replay uses to suppress duplicates. Returns the local deliveries.
    pub fn publish(
        &self,
        origin: Origin,
        topic: &TopicKey,
        id: Option<&str>,
        message: Message<'_>,
    ) -> usize {
        let room = self.registry.get(topic);
        self.publish_to(room.as_deref(), topic, origin, id, message)
    }

    /// As [`Publisher::publish`], for a sender that already holds its topic's room.
    pub fn publish_in(
        &self,
        room: &Room,
        topic: &TopicKey,
        origin: Origin,
        message: Message<'_>,
    ) -> usize {
        self.publish_to(Some(room), topic, origin, None, message)
    }

    fn publish_to(
        &self,
        room: Option<&Room>,
        topic: &TopicKey,
        origin: Origin,
        id: Option<&str>,
        message: Message<'_>,
    ) -> usize {
        self.limits.events.add(1);
        let delivered = room.map_or(0, |room| deliver(room, origin, id, message));
        self.peers.forward(origin, topic, id, message);
        delivered
    }
}

fn deliver(room: &Room, origin: Origin, id: Option<&str>, message: Message<'_>) -> usize {
    let exclude = match origin {
        Origin::Client {
            channel,
            echo: false,
        } => Some(channel),
        Origin::Client { echo: true, .. } | Origin::Http | Origin::Database => None,
    };
    let name = room.name();
    room.fanout(Audience::Broadcast { id }, exclude, &|vsn| match message {
        Message::Payload(payload) => Some(broadcast::text_frame(vsn, name, payload)),
        Message::User { event, body, meta } => {
            broadcast::user_frame(vsn, None, name, event, body, meta)
        }
    })
}

/// Fans a broadcast published on another node of the cluster out to this node's subscribers
/// of `room` (the sender is not here, so nobody is excluded). Not counted as a published
/// event here: the publishing node counted it.
pub fn deliver_from_peer(room: &Room, id: Option<&str>, message: Message<'_>) -> usize {
    deliver(room, Origin::Http, id, message)
}

/// Publishes a stored message to its topic with metadata `{"id": ...}`. Messages over
/// `max_payload`, or arriving while the events limit is tripped, are dropped, as the reference
/// does.
pub fn deliver_stored(publisher: &Publisher, message: &StoredMessage, max_payload: usize) -> usize {
    if publisher.limits().events.tripped() {
        // Counted all the same: a flood keeps the limit tripped.
        publisher.limits().events.add(1);
        tracing::warn!("dropping database broadcast: too many messages per second");
        return 0;
    }
    if message.body().len() > max_payload {
        publisher.limits().events.add(1);
        tracing::warn!(
            size = message.body().len(),
            "dropping database broadcast over the payload size limit"
        );
        return 0;
    }
    let key = TopicKey {
        private: message.private,
        sub_topic: message.topic.as_str().into(),
    };
    let meta = realtide_protocol::encode::id_meta(&message.id);
    publisher.publish(
        Origin::Database,
        &key,
        Some(&message.id),
        Message::User {
            event: &message.event,
            body: message.body(),
            meta: Some(&meta),
        },
    )
}
