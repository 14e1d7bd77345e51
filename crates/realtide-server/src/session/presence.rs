//! `presence` track and untrack: read/write authorization, limits, the topic's state.

use super::*;

/// Reason of a track refused by `PRESENCE_MAX_STATE_BYTES` or `PRESENCE_MAX_TOTAL_BYTES`.
pub(super) const PRESENCE_FULL: &str = "Presence state size exceeded";

impl Session {
    /// Presence-read of a private channel joined with presence disabled, checked on first track.
    pub(super) async fn ensure_presence_read(&mut self, topic: &Topic) {
        let Some(postgres) = self.app.postgres.clone() else {
            return;
        };
        let Some(private) = self.channels.get(topic).and_then(|c| c.private.as_ref()) else {
            return;
        };
        if private.policies.presence_read != Grant::Unknown {
            return;
        }
        let requester = Requester {
            claims: &private.claims,
            headers: &self.headers,
        };
        let sub_topic = topic.sub_topic().unwrap_or_default();
        if let Ok(granted) = postgres
            .authorizer
            .presence_read(sub_topic, requester)
            .await
            && let Some(private) = self
                .channels
                .get_mut(topic)
                .and_then(|c| c.private.as_mut())
        {
            private.policies.presence_read = if granted {
                Grant::Granted
            } else {
                Grant::Denied
            };
            private.reads.presence.store(granted, Ordering::Relaxed);
        }
    }

    pub(super) async fn presence(
        &mut self,
        topic: &Topic,
        reference: Option<&Ref>,
        push: PresencePush,
    ) {
        if matches!(push, PresencePush::Track(_) | PresencePush::Untrack) {
            let settings = self.app.limits.settings;
            let within = self.channels.get_mut(topic).is_some_and(|channel| {
                channel
                    .presence_window
                    .allow(settings.presence_calls, settings.presence_window)
            });
            if !within {
                self.shutdown_channel(topic, "Client presence rate limit exceeded");
                return;
            }
            if self.app.limits.presence.tripped() {
                self.shutdown_channel(topic, TOO_MANY_PRESENCE);
                return;
            }
        }
        if matches!(push, PresencePush::Track(Value::Object(_))) {
            self.ensure_presence_read(topic).await;
            if !self.may_write(topic, Extension::Presence).await {
                tracing::info!("presence track denied on private channel");
                self.channel_reply(topic, reference, Status::Error, "{}");
                return;
            }
        }
        let Some(channel) = self.channels.get(topic) else {
            return;
        };
        match push {
            PresencePush::Track(Value::Object(meta)) => {
                let size = Value::Object(meta.clone()).to_string().len();
                if size > self.app.config.max_payload_bytes {
                    self.shutdown_channel(topic, "Track message size exceeded");
                    return;
                }
                let accepted = || self.channel_reply(topic, reference, Status::Ok, "{}");
                match channel
                    .topic
                    .track(channel.id, &channel.presence_key, meta, accepted)
                {
                    Ok(()) => {}
                    Err(full) => {
                        tracing::info!(?full, "presence track refused: presence memory bound");
                        self.channel_reply(
                            topic,
                            reference,
                            Status::Error,
                            &encode::reason(PRESENCE_FULL),
                        );
                    }
                }
            }
            PresencePush::Track(_) => {
                self.channel_reply(
                    topic,
                    reference,
                    Status::Error,
                    &encode::reason("Presence track payload must be a map"),
                );
            }
            PresencePush::Untrack => {
                self.channel_reply(topic, reference, Status::Ok, "{}");
                channel.topic.untrack(channel.id);
            }
            PresencePush::NoEvent => self.channel_reply(topic, reference, Status::Ok, "{}"),
            PresencePush::Unknown(event) => {
                tracing::info!(event = %event, "unknown presence event");
                self.channel_reply(topic, reference, Status::Error, "{}");
            }
        }
    }
}

pub(super) fn new_presence_key() -> String {
    // UUID v1, as the reference generates; the node id is random per key.
    let node: [u8; 6] = rand::random();
    uuid::Uuid::now_v1(&node).to_string()
}
