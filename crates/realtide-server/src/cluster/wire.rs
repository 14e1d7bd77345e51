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
}

impl Outgoing {
    /// A queue and its receiving end (for [`publish`]).
    pub fn new(metrics: Arc<Metrics>) -> (Outgoing, mpsc::Receiver<Outbound>) {
        let (sender, receiver) = mpsc::channel(QUEUE);
        (
            Outgoing {
                sender,
                metrics: Some(metrics),
            },
            receiver,
        )
    }

    /// Queues a message without waiting.
    pub fn send(&self, subject: String, payload: Bytes, reply: Option<String>) {
        let queued = self.sender.try_send(Outbound {
            subject,
            payload,
            reply,
        });
        if queued.is_err()
            && let Some(metrics) = &self.metrics
        {
            metrics.cluster.dropped_out.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Publishes queued messages in order until every sender is gone.
pub async fn publish(
    client: async_nats::Client,
    mut queue: mpsc::Receiver<Outbound>,
    metrics: Arc<Metrics>,
) {
    while let Some(message) = queue.recv().await {
        let size = message.payload.len();
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
