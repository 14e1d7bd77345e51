//! `phx_join` and `phx_leave`: authorization, postgres_changes bindings, presence and replay at
//! join.

use super::access_token::token_check_at;
use super::presence::new_presence_key;
use super::subscribe::SubscribeTask;
use super::*;

impl Session {
    pub(super) async fn join(
        &mut self,
        topic: Topic,
        join_ref: Option<JoinRef>,
        reference: Option<Ref>,
        request: JoinRequest,
    ) {
        // A V1 join without join_ref uses its ref, as Phoenix does.
        let join_ref = join_ref.or_else(|| reference.as_ref().map(|r| JoinRef::new(r.as_str())));
        if topic.sub_topic().is_none() {
            // Phoenix answers a join it cannot route with a null join_ref.
            self.unmatched(None, reference.as_ref(), &topic);
            return;
        }
        if let Some(old) = self.channels.remove(&topic) {
            // A duplicate join closes the old channel first, with its own join ref.
            self.close(&topic, old, true);
        }
        let joined = self
            .try_join(&topic, join_ref.clone(), reference.as_ref(), request)
            .await;
        if let Err(error) = joined {
            tracing::info!(reason = %error.reason(), "join refused");
            let frame = encode::reply(
                self.vsn,
                join_ref.as_ref().map(JoinRef::as_str),
                reference.as_ref().map(Ref::as_str),
                topic.as_str(),
                Status::Error,
                &encode::reason(&error.reason()),
            );
            let outbox = self.outbox.clone();
            let delay = self.app.config.channel_error_backoff;
            // The joins-per-second limit also disconnects the socket, after the reply.
            let disconnect = matches!(error, JoinError::TooManyJoins);
            // Join errors are delayed (CHANNEL_ERROR_BACKOFF_MS) to slow down re-join storms;
            // the session keeps serving meanwhile.
            self.app.tasks.spawn(async move {
                tokio::time::sleep(delay).await;
                outbox.text(frame);
                if disconnect {
                    outbox.push(OutFrame::Close(CLOSE_GOING_AWAY, "too many joins"));
                }
            });
        }
    }

    pub(super) async fn try_join(
        &mut self,
        topic: &Topic,
        join_ref: Option<JoinRef>,
        reference: Option<&Ref>,
        mut request: JoinRequest,
    ) -> Result<(), JoinError> {
        // The project's presence flag turns presence on for joins that did not ask for it.
        request.presence_enabled |= self.app.limits.settings.presence_enabled;
        let sub_topic = topic.sub_topic().unwrap_or_default();
        if sub_topic.is_empty() {
            return Err(JoinError::TopicNameRequired);
        }
        if self.app.shutdown.is_cancelled() {
            return Err(JoinError::Restarting);
        }
        let limits = &self.app.limits;
        if limits.settings.private_only && !request.private {
            return Err(JoinError::PrivateOnly);
        }
        if self.channels.is_empty() && !self.counted_user && limits.users_full() {
            return Err(JoinError::TooManyUsers);
        }
        limits.joins.add(1);
        if limits.joins.tripped() {
            return Err(JoinError::TooManyJoins);
        }
        if self.channels.len() >= self.app.config.max_channels_per_client {
            return Err(JoinError::TooManyChannels);
        }
        let token = request
            .token
            .clone()
            .unwrap_or_else(|| self.socket_token.clone());
        let claims = self
            .app
            .config
            .jwt
            .verify(&token)
            .map_err(JoinError::Token)?;
        let private = if request.private {
            Some(self.authorize_join(sub_topic, &claims, &request).await?)
        } else {
            None
        };
        let replayed = match (&request.replay, &private) {
            (None, _) => Vec::new(),
            (Some(_), None) => return Err(JoinError::ReplayOnPublic),
            (Some(replay), Some(private)) => {
                let params = ReplayParams::parse(replay).ok_or(JoinError::ReplayInvalid)?;
                match &self.app.postgres {
                    Some(postgres) if private.policies.broadcast_read.granted() => replay::fetch(
                        &postgres.pool,
                        sub_topic,
                        params,
                    )
                    .await
                    .map_err(|error| {
                        tracing::warn!(error = %crate::logs::error_chain(&error), "replay failed");
                        JoinError::ReplayFailed
                    })?,
                    _ => Vec::new(),
                }
            }
        };
        let reads = private.as_ref().map(|p| {
            // Replayed ids are fixed at join; later live copies are suppressed.
            Arc::new(Reads {
                broadcast: AtomicBool::new(p.policies.broadcast_read.granted()),
                presence: AtomicBool::new(p.policies.presence_read.granted()),
                replayed: replayed.iter().map(|m| m.id.as_str().into()).collect(),
            })
        });
        let private = private.map(|p| PrivateChannel {
            reads: reads.clone().unwrap_or_default(),
            ..p
        });
        let presence_visible = private
            .as_ref()
            .is_none_or(|p| p.policies.presence_read.granted());

        let id = self.app.registry.next_channel_id();
        let key = TopicKey {
            private: private.is_some(),
            sub_topic: sub_topic.into(),
        };
        let presence_key = request
            .presence_key
            .clone()
            .unwrap_or_else(new_presence_key);
        let response = join_response(&request.postgres_changes);
        let reply = encode::reply(
            self.vsn,
            join_ref.as_ref().map(JoinRef::as_str),
            reference.map(Ref::as_str),
            topic.as_str(),
            Status::Ok,
            &response,
        );
        // In a cluster, the topic first links to the other nodes (their broadcasts, and for a
        // presence-enabled join their members), so nothing sent after the reply is missed.
        let opened = match &self.app.cluster {
            Some(cluster) => {
                let opening = self.app.registry.open(&key);
                cluster
                    .ready(opening.room(), request.presence_enabled && presence_visible)
                    .await;
                Some(opening)
            }
            None => None,
        };
        let outbox = self.outbox.clone();
        let vsn = self.vsn;
        let topic_arc = self.app.registry.subscribe(
            &key,
            id,
            Subscriber {
                vsn,
                outbox: outbox.clone(),
                reads,
                control: self.control.clone(),
            },
            |state| {
                // Reply, state and replay are queued under the topic's presence lock, so no
                // diff can overtake them.
                outbox.text(reply);
                if request.presence_enabled && presence_visible {
                    // The state is the topic's shared rendering; only the refs around it are
                    // this joiner's.
                    let (head, tail) = encode::text_frame_parts(
                        vsn,
                        join_ref.as_ref().map(JoinRef::as_str),
                        None,
                        topic.as_str(),
                        "presence_state",
                    );
                    outbox.push(OutFrame::Framed {
                        head: head.into(),
                        body: state(),
                        tail: tail.into(),
                    });
                }
                let join_ref = join_ref.as_ref().map(JoinRef::as_str);
                for message in &replayed {
                    if let Some(frame) = replay_frame(vsn, join_ref, topic.as_str(), message) {
                        outbox.push(frame);
                    }
                }
            },
        );
        // The subscription keeps the topic now.
        drop(opened);
        let channel = Channel {
            id,
            join_ref,
            key,
            topic: topic_arc,
            broadcast_self: request.broadcast_self,
            broadcast_ack: request.broadcast_ack,
            presence_key,
            token,
            token_check_at: token_check_at(&claims),
            private,
            presence_window: PresenceWindow::new(),
        };
        if !request.postgres_changes.is_empty() {
            match &self.app.postgres {
                None => {
                    let payload = system_payload(
                        "postgres_changes",
                        SystemStatus::Error,
                        "Unable to subscribe to changes: no database is configured (set DB_URL)",
                        Some(channel.sub_topic()),
                    );
                    self.channel_push(&channel, topic, "system", &payload);
                }
                Some(postgres) => {
                    postgres
                        .subscriptions
                        .open(id, Arc::new(ClaimsGroup::new(&claims)));
                    let task = SubscribeTask {
                        postgres: postgres.clone(),
                        channel: id,
                        entries: request.postgres_changes,
                        limits: self.app.config.subscribe,
                        vsn,
                        outbox: self.outbox.clone(),
                        topic: topic.clone(),
                        join_ref: channel.join_ref.clone(),
                    };
                    self.app.tasks.spawn(task.run());
                }
            }
        }
        self.app.metrics.channel_joined();
        self.channels.insert(topic.clone(), channel);
        if request.presence_enabled && presence_visible {
            // The presence_state push counts as a presence event.
            self.app.limits.presence.add(1);
            if self.app.limits.presence.tripped() {
                self.shutdown_channel(topic, TOO_MANY_PRESENCE);
            }
        }
        Ok(())
    }

    pub(super) fn leave(
        &mut self,
        topic: &Topic,
        join_ref: Option<&JoinRef>,
        reference: Option<&Ref>,
    ) {
        match self.channels.remove(topic) {
            Some(channel) => {
                self.reply(
                    channel.join_ref(),
                    reference,
                    topic.as_str(),
                    Status::Ok,
                    "{}",
                );
                self.close(topic, channel, false);
            }
            None => self.reply(
                join_ref.map(JoinRef::as_str),
                reference,
                topic.as_str(),
                Status::Ok,
                "{}",
            ),
        }
    }

    /// Read authorization of a private join: allowed when broadcast-read or presence-read is.
    pub(super) async fn authorize_join(
        &self,
        sub_topic: &str,
        claims: &Claims,
        request: &JoinRequest,
    ) -> Result<PrivateChannel, JoinError> {
        let unauthorized = || JoinError::Unauthorized {
            sub_topic: sub_topic.to_owned(),
        };
        let Some(postgres) = &self.app.postgres else {
            // Without a database no policy can grant anything.
            return Err(unauthorized());
        };
        let group = ClaimsGroup::new(claims);
        let requester = Requester {
            claims: &group,
            headers: &self.headers,
        };
        let policies = postgres
            .authorizer
            .read(sub_topic, requester, request.presence_enabled)
            .await
            .map_err(|source| JoinError::Authorization {
                sub_topic: sub_topic.to_owned(),
                source,
            })?;
        if !policies.broadcast_read.granted() && !policies.presence_read.granted() {
            return Err(unauthorized());
        }
        Ok(PrivateChannel {
            policies,
            claims: group,
            reads: Arc::default(),
        })
    }
}

/// The join reply's response: each requested `postgres_changes` entry echoed verbatim, in
/// order, plus its integer `id`.
fn join_response(bindings: &[serde_json::Map<String, Value>]) -> String {
    let entries: Vec<Value> = bindings
        .iter()
        .map(|entry| {
            let mut echoed = entry.clone();
            echoed.insert("id".into(), Value::from(binding_id(entry)));
            Value::Object(echoed)
        })
        .collect();
    serde_json::json!({ "postgres_changes": entries }).to_string()
}

/// A replayed message: JSON rows as a text push with the channel's join ref, binary rows as a
/// kind-4 frame (V2 only); both with metadata `{"replayed":true,"id":...}`.
fn replay_frame(
    vsn: Vsn,
    join_ref: Option<&str>,
    topic: &str,
    message: &StoredMessage,
) -> Option<OutFrame> {
    let meta = realtide_protocol::encode::replayed_meta(&message.id);
    match message.body() {
        UserBody::Json(text) => {
            let payload = encode::user_broadcast_json(&message.event, text, Some(&meta));
            let frame = encode::text_frame(vsn, join_ref, None, topic, "broadcast", &payload);
            Some(OutFrame::Text(frame.into()))
        }
        body @ UserBody::Binary(_) => crate::channels::broadcast::user_frame(
            vsn,
            None,
            topic,
            &message.event,
            body,
            Some(&meta),
        ),
    }
}

#[cfg(test)]
#[expect(clippy::indexing_slicing, reason = "test assertions on known shapes")]
mod tests {
    use super::*;

    #[test]
    fn join_response_echoes_entries_in_order() {
        let bindings: Vec<serde_json::Map<String, Value>> = serde_json::from_str(
            r#"[{"event":"*","schema":"public","table":"messages"},{"event":"INSERT","schema":"public","table":"users","filter":"id=eq.1","extra":[1]}]"#,
        )
        .unwrap_or_default();
        let response: Value = serde_json::from_str(&join_response(&bindings)).unwrap_or_default();
        let entries = response["postgres_changes"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1]["filter"], "id=eq.1");
        assert_eq!(entries[1]["extra"], serde_json::json!([1]));
        assert!(entries[0]["id"].as_u64().unwrap_or(0) > 0);
        assert_ne!(entries[0]["id"], entries[1]["id"]);
        assert_eq!(join_response(&[]), r#"{"postgres_changes":[]}"#);
    }
}
