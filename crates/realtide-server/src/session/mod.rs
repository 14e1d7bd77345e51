//! One WebSocket connection: the reader loop that owns the connection's channels.
//!
//! The session task reads frames, decodes them into [`ClientMessage`]s and dispatches them with
//! an exhaustive `match`. Everything it sends goes through the connection's [`Outbox`]; the
//! writer task ([`crate::ws::writer::run_writer`]) owns the socket's write half. Timers (idle
//! timeout, channel token expiry) are arms of the same `select!`, so a channel's state is only
//! ever touched by this one task.
//!
//! One file per client message kind (as mini-redis's `cmd/`): [`join`] (join and leave, with
//! replay), [`broadcast`], [`presence`], [`access_token`] (token switches and expiry), and
//! [`subscribe`] (the task that creates a channel's postgres_changes subscriptions).

mod access_token;
mod broadcast;
mod join;
mod presence;
mod subscribe;

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
use crate::changes::postgres::Postgres;
use crate::changes::resume::{self, Resume};
use crate::changes::subscriptions::{self as changes, ChannelChanges, Registered};
use crate::channels::broadcast::StoredMessage;
use crate::channels::id::ChannelId;
use crate::channels::publish::{Message, Origin};
use crate::channels::registry::{
    ChannelControl, ControlSender, Reads, Subscriber, TOO_MANY_PRESENCE, TopicKey,
};
use crate::db::authorization::{
    AuthzError, Extension, Grant, Policies, Requester, lost_read_message, no_read_message,
};
use crate::db::claims::{ClaimsGroup, unix_now};
use crate::db::replay::{self, ReplayParams};
use crate::error::{JoinError, token_shutdown_message};
use crate::limits::PresenceWindow;
use crate::outbox::{
    self, CLOSE_GOING_AWAY, CLOSE_PROTOCOL, CLOSE_RESTART, CLOSE_TOO_BIG, Cursor, OutFrame, Outbox,
};
use crate::ws::frames::{FrameError, FrameReader, Opcode, ReadError};
use realtide_protocol::encode::UserBody;

/// A joined channel, owned by its session.
#[derive(Debug)]
struct Channel {
    id: ChannelId,
    join_ref: Option<JoinRef>,
    key: TopicKey,
    topic: Arc<crate::channels::registry::Room>,
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
    let writer = tokio::spawn(crate::ws::writer::run_writer(
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
