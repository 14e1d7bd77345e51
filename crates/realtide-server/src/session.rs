//! One WebSocket connection: the reader loop that owns the connection's channels.
//!
//! The session task reads frames, decodes them into [`ClientMessage`]s and dispatches them with
//! an exhaustive `match`. Everything it sends goes through the connection's [`Outbox`]; the
//! writer task ([`crate::outbox::run_writer`]) owns the socket's write half. Timers (idle
//! timeout, channel token expiry) are arms of the same `select!`, so a channel's state is only
//! ever touched by this one task.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use realtide_auth::Claims;
use realtide_protocol::encode::{self, Status};
use realtide_protocol::message::{BroadcastPush, JoinRequest, PresencePush, binding_id};
use realtide_protocol::system::{SystemStatus, system_payload};
use realtide_protocol::wsframe::Assembler;
use realtide_protocol::{ClientMessage, Inbound, JoinRef, Ref, Topic, UserEncoding, Vsn};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite, ReadHalf};
use tokio::time::Instant;

use crate::app::App;
use crate::authorization::{
    AuthzError, Extension, Grant, Policies, Requester, lost_read_message, no_read_message,
};
use crate::broadcast::{self, Body, StoredMessage};
use crate::changes::{self, ChannelChanges, ClaimsGroup, Registered, unix_now};
use crate::error::{JoinError, token_shutdown_message};
use crate::frames::{FrameError, FrameReader, Opcode, ReadError};
use crate::limits::PresenceWindow;
use crate::outbox::{
    self, CLOSE_GOING_AWAY, CLOSE_PROTOCOL, CLOSE_RESTART, CLOSE_TOO_BIG, Cursor, OutFrame, Outbox,
};
use crate::postgres::Postgres;
use crate::publish::{Message, Origin};
use crate::registry::{
    ChannelControl, ChannelId, ControlSender, Reads, Subscriber, TOO_MANY_PRESENCE, TopicKey,
};
use crate::replay::{self, ReplayParams};
use crate::resume::{self, Resume};

/// Longest interval between two checks of a channel token.
const TOKEN_CHECK_INTERVAL: i64 = 5 * 60;

/// A joined channel, owned by its session.
#[derive(Debug)]
struct Channel {
    id: ChannelId,
    join_ref: Option<JoinRef>,
    key: TopicKey,
    topic: Arc<crate::registry::Room>,
    broadcast_self: bool,
    broadcast_ack: bool,
    presence_key: String,
    token: String,
    token_check_at: Instant,
    /// Private channels: cached policies and the claims they were evaluated with.
    private: Option<PrivateChannel>,
    /// Presence calls in the current `CLIENT_PRESENCE_WINDOW_MS`.
    presence_window: PresenceWindow,
}

/// A private channel's authorization state (cached for the channel's lifetime, re-evaluated on
/// `access_token`).
#[derive(Debug)]
struct PrivateChannel {
    policies: Policies,
    claims: ClaimsGroup,
    /// Shared with the topic's subscriber entry.
    reads: Arc<Reads>,
}

impl Channel {
    fn join_ref(&self) -> Option<&str> {
        self.join_ref.as_ref().map(JoinRef::as_str)
    }

    fn sub_topic(&self) -> &str {
        &self.key.sub_topic
    }
}

/// Next token check: `min(5 min, exp - now)` from now.
fn token_check_at(claims: &Claims) -> Instant {
    let now = unix_now();
    let secs = claims.expires_in(now).clamp(0, TOKEN_CHECK_INTERVAL);
    Instant::now() + Duration::from_secs(secs.unsigned_abs())
}

/// Verifies a channel token as the reference's `confirm_token` does: a valid JWT whose `exp`
/// is still in the future.
fn verify_channel_token(app: &App, token: &str) -> Result<Claims, realtide_auth::AuthError> {
    let now = unix_now();
    let claims = app.config.jwt.verify_at(token, now)?;
    claims.confirm_expiry(now)?;
    Ok(claims)
}

/// A connection's state.
struct Session {
    app: Arc<App>,
    vsn: Vsn,
    outbox: Outbox,
    socket_token: String,
    /// The upgrade request's `x-*` headers as JSON, for `request.headers` in policies.
    headers: Arc<str>,
    /// Handed to this session's subscriptions: fan-outs elsewhere ask it to shut channels.
    control: ControlSender,
    /// Whether this socket counts as a user (has at least one channel).
    counted_user: bool,
    channels: HashMap<Topic, Channel>,
}

/// What the loop does after a frame.
enum Flow {
    Continue,
    Stop,
}

/// Why [`Session::serve`] returned.
enum Ending {
    /// The server is shutting down; the sessions sent their closing frames.
    Server,
    /// A slow consumer was cut.
    Cut,
    /// The client closed, the socket failed, or a protocol or idle close.
    Other,
}

/// How long a closing server waits for each client to answer its close frame.
const SERVER_CLOSE_LINGER: Duration = Duration::from_secs(2);
/// The slow-consumer grace without a database (no change stall timeout configured).
const CUT_GRACE: Duration = Duration::from_secs(10);

/// After the server closed a socket: reads the client's last pongs and its answering close
/// frame (which acknowledges everything written before ours), for up to `limit`.
async fn read_receipts<R: AsyncRead>(
    reader: &mut FrameReader<ReadHalf<R>>,
    receipts: &outbox::Receipts,
    limit: Duration,
) {
    let deadline = Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, reader.next()).await {
            Ok(Ok(frame)) => match frame.opcode {
                Opcode::Pong => receipts.pong(&frame.payload),
                Opcode::Close => {
                    receipts.peer_closed();
                    return;
                }
                _ => {}
            },
            Ok(Err(_)) | Err(_) => return,
        }
    }
}

/// Runs a connection until it closes.
pub async fn run<S>(app: Arc<App>, stream: S, vsn: Vsn, socket_token: String, headers: Arc<str>)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (read_half, write_half) = tokio::io::split(stream);
    let (outbox, queue) = outbox::outbox(
        app.config.outbox,
        app.metrics.clone(),
        app.limits.outbound.clone(),
    );
    let (control_tx, control_rx) = tokio::sync::mpsc::unbounded_channel();
    // A slow consumer's socket stays open this long for it to read what it was already sent.
    let grace = app
        .config
        .database
        .as_ref()
        .map_or(CUT_GRACE, |database| database.changes.stall_timeout);
    let writer = tokio::spawn(outbox::run_writer(
        write_half,
        queue,
        app.metrics.clone(),
        grace,
    ));

    let mut reader = FrameReader::new(read_half, app.config.max_frame_size);

    let mut session = Session {
        app: app.clone(),
        vsn,
        outbox: outbox.clone(),
        socket_token,
        headers,
        control: control_tx,
        counted_user: false,
        channels: HashMap::new(),
    };
    let ending = session.serve(&mut reader, control_rx).await;
    // Departures first, so that a quick rejoin finds them; their positions keep moving while
    // the client's last pongs arrive.
    session.leave_all();
    let linger = match ending {
        Ending::Server => Some(SERVER_CLOSE_LINGER),
        Ending::Cut => Some(grace),
        Ending::Other => None,
    };
    if let Some(limit) = linger {
        read_receipts(&mut reader, outbox.receipts(), limit).await;
    }
    drop(session);
    drop(outbox);
    let _ = writer.await;
}

impl Session {
    async fn serve(
        &mut self,
        reader: &mut FrameReader<ReadHalf<impl AsyncRead + Send + 'static>>,
        mut control: tokio::sync::mpsc::UnboundedReceiver<ChannelControl>,
    ) -> Ending {
        let app = self.app.clone();
        let idle = app.config.idle_timeout;
        // One idle timer per idle period: frames only record their arrival time, and the timer
        // is pushed forward when it fires early.
        let mut last_frame = Instant::now();
        let idle_timer = tokio::time::sleep_until(last_frame + idle);
        tokio::pin!(idle_timer);
        // Fragments add up to at most the frame size limit.
        let mut assembler = Assembler::new(app.config.max_frame_size);
        loop {
            let token_check = self.next_token_check();
            tokio::select! {
                // Server shutdown first: every channel hears about it before anything else.
                biased;
                () = app.disconnect.cancelled() => {
                    self.server_disconnect();
                    return Ending::Server;
                }
                // A slow consumer is being closed by its writer; stop reading for it.
                () = self.outbox.overflowed().cancelled() => return Ending::Cut,
                // Rate-limit shutdowns of this socket's channels, decided by other fan-outs.
                Some(order) = control.recv() => {
                    self.on_control(order);
                    continue;
                }
                () = &mut idle_timer => {
                    let deadline = last_frame + idle;
                    if deadline > Instant::now() {
                        idle_timer.as_mut().reset(deadline);
                        continue;
                    }
                    tracing::debug!("closing idle socket");
                    self.outbox.push(OutFrame::Close(CLOSE_GOING_AWAY, "idle timeout"));
                    return Ending::Other;
                }
                () = tokio::time::sleep_until(token_check.unwrap_or(last_frame + idle)),
                    if token_check.is_some() => {
                        self.check_tokens();
                        self.sync_user();
                    }
                // Reads are cancel-safe: a frame stays buffered until it is whole.
                result = reader.next() => {
                    let frame = match result {
                        Ok(frame) => frame,
                        Err(ReadError::Frame(error)) => {
                            self.close_on(&error);
                            return Ending::Other;
                        }
                        Err(error) => {
                            tracing::debug!(%error, "socket read ended");
                            return Ending::Other;
                        }
                    };
                    last_frame = Instant::now();
                    let flow = match frame.opcode {
                        Opcode::Close => {
                            self.outbox.push(OutFrame::CloseEcho(frame.payload));
                            Flow::Stop
                        }
                        Opcode::Ping => {
                            self.outbox.push(OutFrame::Pong(frame.payload));
                            Flow::Continue
                        }
                        Opcode::Pong => {
                            self.outbox.receipts().pong(&frame.payload);
                            Flow::Continue
                        }
                        _ => match assembler.push(frame) {
                            // Boxed: the join/authorization futures are large and rare; they
                            // must not inflate every idle session's future.
                            Ok(Some(message)) => {
                                Box::pin(self.on_message(message.opcode, message.payload)).await
                            }
                            Ok(None) => Flow::Continue,
                            Err(error) => {
                                self.close_on(&error);
                                Flow::Stop
                            }
                        },
                    };
                    if let Flow::Stop = flow {
                        return Ending::Other;
                    }
                }
            }
        }
    }

    /// Closes the socket on a framing error: 1009 for sizes over the limit, 1002 otherwise.
    fn close_on(&self, error: &FrameError) {
        if error.is_too_large() {
            self.outbox
                .push(OutFrame::Close(CLOSE_TOO_BIG, "frame too large"));
        } else {
            tracing::debug!(%error, "closing socket on a framing error");
            self.outbox
                .push(OutFrame::Close(CLOSE_PROTOCOL, "protocol error"));
        }
    }

    async fn on_message(&mut self, opcode: Opcode, message: Bytes) -> Flow {
        self.app.metrics.add_bytes_in(message.len());
        let decoded = match opcode {
            Opcode::Text => match std::str::from_utf8(&message) {
                Ok(text) => realtide_protocol::frame::decode_text(self.vsn, text),
                Err(_) => {
                    tracing::debug!("dropping text frame that is not utf-8");
                    return Flow::Continue;
                }
            },
            _ => realtide_protocol::frame::decode_binary(self.vsn, &message),
        };
        match decoded {
            Ok(inbound) => {
                self.dispatch(inbound).await;
                self.sync_user();
            }
            Err(error) => tracing::debug!(%error, "dropping malformed frame"),
        }
        Flow::Continue
    }

    async fn dispatch(&mut self, inbound: Inbound) {
        self.app.metrics.event_in();
        let join_ref = inbound.join_ref.clone();
        let reference = inbound.reference.clone();
        let topic = inbound.topic.clone();
        match ClientMessage::from_inbound(inbound) {
            ClientMessage::Heartbeat => {
                self.reply(None, reference.as_ref(), topic.as_str(), Status::Ok, "{}");
            }
            ClientMessage::Join(request) => self.join(topic, join_ref, reference, *request).await,
            ClientMessage::Leave => self.leave(&topic, join_ref.as_ref(), reference.as_ref()),
            ClientMessage::Broadcast(push) => {
                if self.channels.contains_key(&topic) {
                    self.broadcast(&topic, reference.as_ref(), push).await;
                } else {
                    self.unmatched(join_ref.as_ref(), reference.as_ref(), &topic);
                }
            }
            ClientMessage::Presence(push) => {
                if self.channels.contains_key(&topic) {
                    self.presence(&topic, reference.as_ref(), push).await;
                } else {
                    self.unmatched(join_ref.as_ref(), reference.as_ref(), &topic);
                }
            }
            ClientMessage::AccessToken(token) => {
                if self.channels.contains_key(&topic) {
                    self.access_token(&topic, token).await;
                } else {
                    self.unmatched(join_ref.as_ref(), reference.as_ref(), &topic);
                }
            }
            ClientMessage::Other => {
                if !self.channels.contains_key(&topic) {
                    self.unmatched(join_ref.as_ref(), reference.as_ref(), &topic);
                }
            }
        }
    }

    fn reply(
        &self,
        join_ref: Option<&str>,
        reference: Option<&Ref>,
        topic: &str,
        status: Status,
        response: &str,
    ) {
        let frame = encode::reply(
            self.vsn,
            join_ref,
            reference.map(Ref::as_str),
            topic,
            status,
            response,
        );
        self.outbox.text(frame);
    }

    /// Replies on a joined channel; the channel's current join ref is used so that clients
    /// that sent a stale or missing one still match the reply.
    fn channel_reply(
        &self,
        topic: &Topic,
        reference: Option<&Ref>,
        status: Status,
        response: &str,
    ) {
        let join_ref = self.channels.get(topic).and_then(Channel::join_ref);
        self.reply(join_ref, reference, topic.as_str(), status, response);
    }

    fn unmatched(&self, join_ref: Option<&JoinRef>, reference: Option<&Ref>, topic: &Topic) {
        self.reply(
            join_ref.map(JoinRef::as_str),
            reference,
            topic.as_str(),
            Status::Error,
            &encode::reason("unmatched topic"),
        );
    }

    /// A push on a channel: `[join_ref, null, topic, event, payload]`.
    fn channel_push(&self, channel: &Channel, topic: &Topic, event: &str, payload: &str) {
        let frame = encode::text_frame(
            self.vsn,
            channel.join_ref(),
            None,
            topic.as_str(),
            event,
            payload,
        );
        self.outbox.text(frame);
    }

    async fn join(
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

    async fn try_join(
        &mut self,
        topic: &Topic,
        join_ref: Option<JoinRef>,
        reference: Option<&Ref>,
        request: JoinRequest,
    ) -> Result<(), JoinError> {
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

    fn leave(&mut self, topic: &Topic, join_ref: Option<&JoinRef>, reference: Option<&Ref>) {
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

    async fn broadcast(&mut self, topic: &Topic, reference: Option<&Ref>, push: BroadcastPush) {
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
                        Ok(text) => Body::Json(text),
                        Err(_) => Body::Binary(&user.body),
                    },
                    UserEncoding::Binary => Body::Binary(&user.body),
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
    async fn may_write(&mut self, topic: &Topic, extension: Extension) -> bool {
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

    /// Presence-read of a private channel joined with presence disabled, checked on first track.
    async fn ensure_presence_read(&mut self, topic: &Topic) {
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

    async fn presence(&mut self, topic: &Topic, reference: Option<&Ref>, push: PresencePush) {
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

    /// Read authorization of a private join: allowed when broadcast-read or presence-read is.
    async fn authorize_join(
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

    async fn access_token(&mut self, topic: &Topic, token: Option<String>) {
        let Some(channel) = self.channels.get(topic) else {
            return;
        };
        let Some(token) = token else {
            return;
        };
        if token.starts_with("sb_") || token == channel.token {
            return;
        }
        let claims = match verify_channel_token(&self.app, &token) {
            Ok(claims) => claims,
            Err(error) => {
                let message = token_shutdown_message(&error);
                self.shutdown_channel(topic, &message);
                return;
            }
        };
        let group = ClaimsGroup::new(&claims);
        // Private channels re-evaluate their read policies with the new claims.
        let mut policies = None;
        if let (Some(private), Some(postgres)) = (&channel.private, self.app.postgres.clone()) {
            let old = private.policies;
            let requester = Requester {
                claims: &group,
                headers: &self.headers,
            };
            let presence = old.presence_read != Grant::Unknown;
            let sub_topic = channel.sub_topic().to_owned();
            let checked = postgres
                .authorizer
                .read(&sub_topic, requester, presence)
                .await;
            let new = match checked {
                Ok(new) => new,
                Err(AuthzError::Policy(_)) => {
                    self.shutdown_channel(topic, &no_read_message(&sub_topic));
                    return;
                }
                Err(_) => {
                    self.shutdown_channel(
                        topic,
                        "Realtime was unable to connect to the project database",
                    );
                    return;
                }
            };
            let lost = |was: Grant, now: Grant| was.granted() && !now.granted();
            if !new.broadcast_read.granted() && !new.presence_read.granted() {
                self.shutdown_channel(topic, &no_read_message(&sub_topic));
                return;
            }
            if lost(old.broadcast_read, new.broadcast_read)
                || lost(old.presence_read, new.presence_read)
            {
                self.shutdown_channel(topic, &lost_read_message(&sub_topic));
                return;
            }
            policies = Some(new);
        }
        let Some(channel) = self.channels.get_mut(topic) else {
            return;
        };
        channel.token = token;
        channel.token_check_at = token_check_at(&claims);
        if let (Some(private), Some(new)) = (channel.private.as_mut(), policies) {
            // Reads as just evaluated; writes are checked again on next use.
            private.policies = Policies {
                broadcast_read: new.broadcast_read,
                presence_read: new.presence_read,
                ..Policies::default()
            };
            private
                .reads
                .broadcast
                .store(new.broadcast_read.granted(), Ordering::Relaxed);
            private
                .reads
                .presence
                .store(new.presence_read.granted(), Ordering::Relaxed);
            private.claims = group.clone();
        }
        if let Some(postgres) = &self.app.postgres {
            // Later changes are checked with the new claims.
            postgres
                .subscriptions
                .update_claims(channel.id, Arc::new(group));
        }
    }

    /// Shuts a channel down on another fan-out's request (ignored when it is already gone, e.g.
    /// a second request raced with the first).
    fn on_control(&mut self, order: ChannelControl) {
        let topic = self
            .channels
            .iter()
            .find(|(_, channel)| channel.id == order.channel)
            .map(|(topic, _)| topic.clone());
        if let Some(topic) = topic {
            self.shutdown_channel(&topic, order.reason);
        }
        self.sync_user();
    }

    /// Keeps the concurrent-users count: a socket is a user while it has a channel.
    fn sync_user(&mut self) {
        let has_channels = !self.channels.is_empty();
        if has_channels != self.counted_user {
            self.counted_user = has_channels;
            if has_channels {
                self.app.limits.user_joined();
            } else {
                self.app.limits.user_left();
            }
        }
    }

    fn next_token_check(&self) -> Option<Instant> {
        self.channels.values().map(|c| c.token_check_at).min()
    }

    fn check_tokens(&mut self) {
        let now = Instant::now();
        let due: Vec<Topic> = self
            .channels
            .iter()
            .filter(|(_, c)| c.token_check_at <= now)
            .map(|(t, _)| t.clone())
            .collect();
        for topic in due {
            let Some(channel) = self.channels.get_mut(&topic) else {
                continue;
            };
            match verify_channel_token(&self.app, &channel.token) {
                Ok(claims) => channel.token_check_at = token_check_at(&claims),
                Err(error) => {
                    let message = token_shutdown_message(&error);
                    self.shutdown_channel(&topic, &message);
                }
            }
        }
    }

    /// Ends a channel from the server side: `system` error, then `phx_close`.
    fn shutdown_channel(&mut self, topic: &Topic, message: &str) {
        let Some(channel) = self.channels.remove(topic) else {
            return;
        };
        tracing::info!(reason = message, "shutting down channel");
        let payload = system_payload(
            "system",
            SystemStatus::Error,
            message,
            Some(channel.sub_topic()),
        );
        self.channel_push(&channel, topic, "system", &payload);
        self.close(topic, channel, true);
    }

    /// Server shutdown: every channel is told, then the socket closes with 1012.
    fn server_disconnect(&mut self) {
        let payload = system_payload(
            "system",
            SystemStatus::Ok,
            "Server requested disconnect",
            None,
        );
        for (topic, channel) in &self.channels {
            self.channel_push(channel, topic, "system", &payload);
        }
        self.outbox
            .push(OutFrame::Close(CLOSE_RESTART, "server restart"));
    }

    /// Ends a channel: `phx_close` with its join ref (which is also the close's ref), then
    /// release. `depart`: keep its postgres_changes position for a resume (every end but an
    /// explicit leave).
    fn close(&self, topic: &Topic, channel: Channel, depart: bool) {
        let frame = encode::channel_end(self.vsn, channel.join_ref(), topic.as_str(), "phx_close");
        self.outbox.text(frame);
        self.release(channel, depart);
    }

    fn release(&self, channel: Channel, depart: bool) {
        if let Some(postgres) = &self.app.postgres {
            postgres.subscriptions.close(channel.id, depart);
        }
        self.app
            .registry
            .unsubscribe(&channel.key, &channel.topic, channel.id);
        self.app.metrics.channel_left();
    }

    fn leave_all(&mut self) {
        for (_, channel) in std::mem::take(&mut self.channels) {
            self.release(channel, true);
        }
        self.sync_user();
    }
}

/// Creates a channel's postgres_changes subscriptions after its join reply, then reports the
/// outcome with a `system` message. Database errors are retried every 5-10 s while the channel
/// stays open, as the reference does; parameter errors are final. The claims are those in force
/// on the channel at each attempt (an `access_token` may replace them at any moment).
struct SubscribeTask {
    postgres: Arc<Postgres>,
    channel: ChannelId,
    entries: Vec<serde_json::Map<String, Value>>,
    limits: changes::SubscribeLimits,
    vsn: Vsn,
    outbox: Outbox,
    topic: Topic,
    join_ref: Option<JoinRef>,
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
            if current == crate::replication::ReplicationStatus::Streaming {
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

    async fn run(self) {
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
    let meta = broadcast::replayed_meta(&message.id);
    match message.body() {
        Body::Json(text) => {
            let payload = encode::user_broadcast_json(&message.event, text, Some(&meta));
            let frame = encode::text_frame(vsn, join_ref, None, topic, "broadcast", &payload);
            Some(OutFrame::Text(frame.into()))
        }
        body @ Body::Binary(_) => {
            broadcast::user_frame(vsn, None, topic, &message.event, body, Some(&meta))
        }
    }
}

/// Reason of a track refused by `PRESENCE_MAX_STATE_BYTES` or `PRESENCE_MAX_TOTAL_BYTES`.
const PRESENCE_FULL: &str = "Presence state size exceeded";

fn new_presence_key() -> String {
    // UUID v1, as the reference generates; the node id is random per key.
    let node: [u8; 6] = rand::random();
    uuid::Uuid::now_v1(&node).to_string()
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
