//! The task that creates a channel's postgres_changes subscriptions after its join reply.

use super::*;

/// Creates a channel's postgres_changes subscriptions after its join reply, then reports the
/// outcome with a `system` message. Database errors are retried every 5-10 s while the channel
/// stays open, as the reference does; parameter errors are final. The claims are those in force
/// on the channel at each attempt (an `access_token` may replace them at any moment).
pub(super) struct SubscribeTask {
    pub(super) postgres: Arc<Postgres>,
    pub(super) channel: ChannelId,
    pub(super) entries: Vec<serde_json::Map<String, Value>>,
    pub(super) limits: crate::config::SubscribeLimits,
    pub(super) vsn: Vsn,
    pub(super) outbox: Outbox,
    pub(super) topic: Topic,
    pub(super) join_ref: Option<JoinRef>,
}

impl SubscribeTask {
    fn system(&self, status: SystemStatus, message: &str) {
        let sub_topic = self.topic.sub_topic().unwrap_or_default();
        let payload = system_payload("postgres_changes", status, message, Some(sub_topic));
        let frame = encode::text_frame(
            self.vsn,
            self.join_ref.as_ref().map(JoinRef::as_str),
            None,
            self.topic.as_str(),
            "system",
            &payload,
        );
        self.outbox.text(frame);
    }

    /// Waits until the replication stream runs: `Subscribed to PostgreSQL` would otherwise
    /// promise changes that cannot arrive. While it is down the subscriber gets a `system`
    /// error saying why (once per distinct reason). False when the channel closed meanwhile.
    async fn replication_running(&self) -> bool {
        let mut status = self.postgres.replication.subscribe();
        let mut told: Option<String> = None;
        loop {
            let current = status.borrow_and_update().clone();
            if current == crate::changes::progress::ReplicationStatus::Streaming {
                return true;
            }
            if let Some(message) = current.subscriber_message()
                && told.as_ref() != Some(&message)
            {
                self.system(SystemStatus::Error, &message);
                told = Some(message);
            }
            tokio::select! {
                biased;
                changed = status.changed() => {
                    if changed.is_err() {
                        return false;
                    }
                }
                // The channel may close while nothing changes.
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            if !self.postgres.subscriptions.is_open(self.channel) {
                return false;
            }
        }
    }

    pub(super) async fn run(self) {
        let postgres = &self.postgres;
        loop {
            if !self.replication_running().await {
                return;
            }
            let Some(claims) = postgres.subscriptions.current_claims(self.channel) else {
                return;
            };
            let outcome = changes::prepare(
                &postgres.catalog,
                &postgres.config.publication,
                &claims.role,
                &self.entries,
                self.limits,
            )
            .await;
            match outcome {
                Ok(bindings) => {
                    let ids: Vec<u32> = bindings.iter().map(|b| b.id).collect();
                    let subject = claims.sub.as_deref().unwrap_or(&claims.role);
                    let identity = resume::identity(self.topic.as_str(), subject, &ids);
                    let registered = postgres.subscriptions.register(
                        self.channel,
                        ChannelChanges {
                            vsn: self.vsn,
                            outbox: self.outbox.clone(),
                            topic: Arc::from(self.topic.as_str()),
                            bindings,
                            claims: parking_lot::RwLock::new(claims.clone()),
                            cursor: Cursor::new(0),
                            identity,
                        },
                        &postgres.journal,
                        |resume| {
                            self.system(SystemStatus::Ok, "Subscribed to PostgreSQL");
                            if let Resume::Missed { since } = resume {
                                self.system(
                                    SystemStatus::Error,
                                    &resume::missed_message(*since, postgres.config.resume.window),
                                );
                            }
                        },
                    );
                    match registered {
                        Registered::Live(Resume::From(seq)) => {
                            tracing::debug!(from = seq, "postgres_changes subscription resumed");
                        }
                        Registered::Live(_) | Registered::Closed => {}
                        // The token changed meanwhile: check the bindings again under it.
                        Registered::Stale => continue,
                    }
                    return;
                }
                Err(changes::SubscribeError::Refused { message }) => {
                    self.system(SystemStatus::Error, &message);
                    return;
                }
                Err(changes::SubscribeError::Database(error)) => {
                    tracing::warn!(%error, "postgres_changes subscription failed; retrying");
                    self.system(
                        SystemStatus::Error,
                        "Realtime was unable to connect to the project database",
                    );
                    let delay = Duration::from_millis(5000 + rand::random::<u64>() % 5000);
                    tokio::time::sleep(delay).await;
                    if !postgres.subscriptions.is_open(self.channel) {
                        return;
                    }
                }
            }
        }
    }
}
