//! Client broadcasts: write authorization of private channels, then the publish path.

use super::*;

impl Session {
    pub(super) async fn broadcast(
        &mut self,
        topic: &Topic,
        reference: Option<&Ref>,
        push: BroadcastPush,
    ) {
        let Some(channel) = self.channels.get(topic) else {
            return;
        };
        let max = self.app.config.max_payload_bytes;
        let size = match &push {
            BroadcastPush::Json(raw) => raw.get().len(),
            BroadcastPush::User(user) => user.body.len(),
        };
        if size > max {
            if channel.broadcast_ack {
                self.channel_reply(
                    topic,
                    reference,
                    Status::Error,
                    r#"{"error":"payload_size_exceeded"}"#,
                );
            }
            return;
        }
        // Private channels: without write permission the message is dropped with no reply,
        // even with ack (as the reference).
        if !self.may_write(topic, Extension::Broadcast).await {
            return;
        }
        let Some(channel) = self.channels.get(topic) else {
            return;
        };
        let origin = Origin::Client {
            channel: channel.id,
            echo: channel.broadcast_self,
        };
        // The send itself is an event, as each delivery is.
        match &push {
            BroadcastPush::Json(raw) => {
                self.app.publisher.publish_in(
                    &channel.topic,
                    &channel.key,
                    origin,
                    Message::Payload(raw.get()),
                );
            }
            BroadcastPush::User(user) => {
                let body = match user.encoding {
                    UserEncoding::Json => match std::str::from_utf8(&user.body) {
                        Ok(text) => UserBody::Json(text),
                        Err(_) => UserBody::Binary(&user.body),
                    },
                    UserEncoding::Binary => UserBody::Binary(&user.body),
                };
                self.app.publisher.publish_in(
                    &channel.topic,
                    &channel.key,
                    origin,
                    Message::User {
                        event: &user.event,
                        body,
                        meta: None,
                    },
                );
            }
        }
        if channel.broadcast_ack {
            self.channel_reply(topic, reference, Status::Ok, "{}");
        }
    }

    /// Whether the channel may send (`Broadcast`) or track (`Presence`). Public channels always
    /// may; private ones check the write policy on first use and cache the answer.
    pub(super) async fn may_write(&mut self, topic: &Topic, extension: Extension) -> bool {
        let Some(channel) = self.channels.get(topic) else {
            return false;
        };
        let Some(private) = &channel.private else {
            return true;
        };
        let grant = match extension {
            Extension::Broadcast => private.policies.broadcast_write,
            Extension::Presence => private.policies.presence_write,
        };
        match grant {
            Grant::Granted => return true,
            Grant::Denied => return false,
            Grant::Unknown => {}
        }
        let Some(postgres) = self.app.postgres.clone() else {
            return false;
        };
        let requester = Requester {
            claims: &private.claims,
            headers: &self.headers,
        };
        let sub_topic = channel.sub_topic();
        let checked = postgres
            .authorizer
            .write(sub_topic, requester, extension)
            .await;
        let granted = match checked {
            Ok(granted) => granted,
            // Not cached: the next message checks again.
            Err(_) => return false,
        };
        if let Some(private) = self
            .channels
            .get_mut(topic)
            .and_then(|c| c.private.as_mut())
        {
            let grant = if granted {
                Grant::Granted
            } else {
                Grant::Denied
            };
            match extension {
                Extension::Broadcast => private.policies.broadcast_write = grant,
                Extension::Presence => private.policies.presence_write = grant,
            }
        }
        granted
    }
}
