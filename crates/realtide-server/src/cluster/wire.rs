//! The cluster's NATS subjects and the one queue every outgoing message goes through.
//!
//! Messages are published by one task in the order they were queued, so one node's messages
//! on one subject reach the others in order (a broadcast publisher's order, a presence
//! snapshot before the answer that announces it). Queueing never blocks: the callers are
//! fan-outs and presence changes holding locks. A full queue (NATS unreachable for long)
//! drops the message and counts it (`realtide_cluster_dropped_total`); presence is repaired by
//! the snapshots published when the connection returns.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use base64::Engine as _;
use bytes::Bytes;
use tokio::sync::mpsc;

use crate::channels::registry::TopicKey;
use crate::metrics::Metrics;

/// Messages waiting to be published.
const QUEUE: usize = 65_536;
/// Bytes waiting to be published: a NATS outage with large broadcasts must not hold more.
const QUEUE_BYTES: usize = 256 * 1024 * 1024;

/// The subjects of one cluster scope.
#[derive(Debug, Clone)]
pub struct Subjects {
    prefix: String,
    /// Heartbeats and goodbyes.
    pub node: String,
    /// Presence sync requests.
    pub sync: String,
}

impl Subjects {
    /// Subjects under `rt.<scope>`.
    pub fn new(scope: &str) -> Subjects {
        let prefix = format!("rt.{scope}");
        Subjects {
            node: format!("{prefix}.node"),
            sync: format!("{prefix}.sync"),
            prefix,
        }
    }

    /// A topic's subject: topic names may hold any character, subjects may not, so the name
    /// is base64url-encoded (one token; `x` keeps an empty name a valid token).
    pub fn topic(&self, key: &TopicKey) -> String {
        let namespace = if key.private { 'p' } else { 's' };
        let name =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key.sub_topic.as_bytes());
        format!("{}.t.{namespace}.x{name}", self.prefix)
    }
}

/// One message to publish.
#[derive(Debug)]
pub struct Outbound {
    subject: String,
    payload: Bytes,
    reply: Option<String>,
}

/// The sending side of the outgoing queue.
#[derive(Debug, Clone)]
pub struct Outgoing {
    sender: mpsc::Sender<Outbound>,
    metrics: Option<Arc<Metrics>>,
    /// Payload bytes queued.
    queued: Arc<std::sync::atomic::AtomicUsize>,
}

impl Outgoing {
    /// A queue and its receiving end (for [`publish`]).
    pub fn new(metrics: Arc<Metrics>) -> (Outgoing, Queue) {
        let (sender, receiver) = mpsc::channel(QUEUE);
        let queued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        (
            Outgoing {
                sender,
                metrics: Some(metrics),
                queued: queued.clone(),
            },
            Queue { receiver, queued },
        )
    }

    /// Queues a message without waiting.
    pub fn send(&self, subject: String, payload: Bytes, reply: Option<String>) {
        let size = payload.len();
        let queued = if self.queued.fetch_add(size, Ordering::Relaxed) + size > QUEUE_BYTES {
            Err(())
        } else {
            self.sender
                .try_send(Outbound {
                    subject,
                    payload,
                    reply,
                })
                .map_err(|_| ())
        };
        if queued.is_err() {
            self.queued.fetch_sub(size, Ordering::Relaxed);
        }
        if queued.is_err()
            && let Some(metrics) = &self.metrics
        {
            metrics.cluster.dropped_out.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The receiving end of the outgoing queue.
#[derive(Debug)]
pub struct Queue {
    receiver: mpsc::Receiver<Outbound>,
    queued: Arc<std::sync::atomic::AtomicUsize>,
}

/// Publishes queued messages in order until every sender is gone.
pub async fn publish(client: async_nats::Client, mut queue: Queue, metrics: Arc<Metrics>) {
    while let Some(message) = queue.receiver.recv().await {
        let size = message.payload.len();
        queue.queued.fetch_sub(size, Ordering::Relaxed);
        if !matches!(
            client.connection_state(),
            async_nats::connection::State::Connected
        ) {
            // NATS is away: the message is dropped rather than held (memory stays bounded);
            // presence is published whole again once the connection is back.
            metrics.cluster.dropped_out.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let sent = match message.reply {
            None => client.publish(message.subject, message.payload).await,
            Some(reply) => {
                client
                    .publish_with_reply(message.subject, reply, message.payload)
                    .await
            }
        };
        match sent {
            Ok(()) => metrics.cluster.sent(size),
            Err(error) => {
                metrics.cluster.dropped_out.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, size, "could not publish to the cluster");
            }
        }
    }
}
