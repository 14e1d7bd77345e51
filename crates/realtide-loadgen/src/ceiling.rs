//! The raw-socket ceiling: a minimal WebSocket server that accepts the same Phoenix V2 joins
//! and broadcast pushes as realtide and writes one pre-encoded frame to every other socket of
//! the topic, with no other logic (no auth, no limits, no presence, no per-socket state beyond
//! a queue). Fan-out figures are given as a ratio to what this reaches on the same machine.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};
use bytes::{Buf, Bytes, BytesMut};
use parking_lot::Mutex;
use realtide_protocol::wsframe::{Frame, Opcode, Rules, push_frame, take_frame};
use serde_json::value::RawValue;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::ws::accept_key;

type Subscribers = Vec<(u64, mpsc::UnboundedSender<Bytes>)>;

#[derive(Default)]
struct State {
    topics: Mutex<HashMap<String, Subscribers>>,
    next_id: AtomicU64,
}

/// Serves until the process is killed.
pub async fn serve(listener: TcpListener) -> Result<()> {
    let state = Arc::new(State::default());
    println!("ceiling listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        tokio::spawn(async move {
            let _ = connection(stream, state).await;
        });
    }
}

/// Largest client frame accepted: realtide's default `WEBSOCKET_MAX_FRAME_SIZE`.
const MAX_FRAME: usize = 5_000_000;

/// A server frame (unmasked).
fn frame(opcode: Opcode, payload: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(payload.len() + 10);
    push_frame(&mut out, opcode, payload, None);
    Bytes::from(out)
}

async fn connection(mut stream: TcpStream, state: Arc<State>) -> Result<()> {
    let mut buf = BytesMut::with_capacity(4096);
    let head_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        if stream.read_buf(&mut buf).await? == 0 || buf.len() > 16 * 1024 {
            return Ok(());
        }
    };
    let head = String::from_utf8_lossy(buf.get(..head_end).unwrap_or_default()).into_owned();
    buf.advance(head_end);
    let key = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| n.trim().eq_ignore_ascii_case("sec-websocket-key"))
        .map(|(_, v)| v.trim().to_owned())
        .context("no Sec-WebSocket-Key")?;
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        accept_key(&key)
    );
    stream.write_all(response.as_bytes()).await?;
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
    let writer = tokio::spawn(async move {
        let mut batch = Vec::with_capacity(64 * 1024);
        while let Some(first) = rx.recv().await {
            batch.extend_from_slice(&first);
            while batch.len() < 64 * 1024 {
                match rx.try_recv() {
                    Ok(more) => batch.extend_from_slice(&more),
                    Err(_) => break,
                }
            }
            if wr.write_all(&batch).await.is_err() {
                return;
            }
            batch.clear();
        }
    });
    let id = state.next_id.fetch_add(1, Ordering::Relaxed);
    let mut joined: Vec<String> = Vec::new();
    let result = async {
        loop {
            let Some(Frame {
                opcode, payload, ..
            }) = next_frame(&mut rd, &mut buf).await?
            else {
                return Ok::<(), anyhow::Error>(());
            };
            match opcode {
                Opcode::Close => return Ok(()),
                Opcode::Ping => {
                    let _ = tx.send(frame(Opcode::Pong, &payload));
                }
                Opcode::Text => on_text(&state, id, &tx, &payload, &mut joined),
                _ => {}
            }
        }
    }
    .await;
    {
        let mut topics = state.topics.lock();
        for topic in &joined {
            if let Some(subs) = topics.get_mut(topic) {
                subs.retain(|(sid, _)| *sid != id);
            }
        }
    }
    drop(tx);
    let _ = writer.await;
    result
}

fn on_text(
    state: &State,
    id: u64,
    tx: &mpsc::UnboundedSender<Bytes>,
    payload: &[u8],
    joined: &mut Vec<String>,
) {
    let Ok(parts) = serde_json::from_slice::<Vec<&RawValue>>(payload) else {
        return;
    };
    let text = |i: usize| parts.get(i).map(|v| v.get()).unwrap_or("null");
    let (reference, topic, event) = (text(1), text(2), text(3));
    match event {
        "\"broadcast\"" => {
            let out = frame(
                Opcode::Text,
                format!("[null,null,{topic},\"broadcast\",{}]", text(4)).as_bytes(),
            );
            let topics = state.topics.lock();
            if let Some(subs) = topics.get(topic) {
                for (sid, sub) in subs {
                    if *sid != id {
                        let _ = sub.send(out.clone());
                    }
                }
            }
        }
        "\"phx_join\"" => {
            state
                .topics
                .lock()
                .entry(topic.to_owned())
                .or_default()
                .push((id, tx.clone()));
            joined.push(topic.to_owned());
            let reply = format!(
                "[{reference},{reference},{topic},\"phx_reply\",{{\"status\":\"ok\",\"response\":{{}}}}]"
            );
            let _ = tx.send(frame(Opcode::Text, reply.as_bytes()));
        }
        _ => {
            let reply = format!(
                "[null,{reference},{topic},\"phx_reply\",{{\"status\":\"ok\",\"response\":{{}}}}]"
            );
            let _ = tx.send(frame(Opcode::Text, reply.as_bytes()));
        }
    }
}

/// Reads one client frame (masked; fragments are not expected from the load generator).
async fn next_frame(
    rd: &mut tokio::net::tcp::OwnedReadHalf,
    buf: &mut BytesMut,
) -> Result<Option<Frame>> {
    loop {
        if let Some(frame) = take_frame(buf, Rules::from_client(MAX_FRAME))? {
            return Ok(Some(frame));
        }
        if rd.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}
