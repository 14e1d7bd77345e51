//! A subscriber that never reads is disconnected once its bounded outbound queue overflows;
//! well-behaved subscribers of the same topic lose nothing.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use realtide_tests::{Client, Incoming, Server, Vsn};
use serde_json::{Value, json};

const TOPIC: &str = "realtime:flood";
const TOTAL: usize = 1500;
const BURST: usize = 20;

/// Reads until `count` more broadcasts arrived; returns their `i` values.
async fn read_broadcasts(
    client: &mut Client,
    count: usize,
    slow_left: &mut bool,
) -> Result<Vec<u64>> {
    let mut seen = Vec::with_capacity(count);
    while seen.len() < count {
        match client.recv().await? {
            Incoming::Text(msg) if msg.event == "broadcast" => {
                let i = msg
                    .payload
                    .pointer("/payload/i")
                    .and_then(Value::as_u64)
                    .context("broadcast without i")?;
                seen.push(i);
            }
            // Presence diffs (the slow client's join, later its leave) are not counted.
            Incoming::Text(msg) if msg.event == "presence_diff" => {
                if msg.payload.pointer("/leaves/slow").is_some() {
                    *slow_left = true;
                }
            }
            other => bail!("good subscriber got {other:?}"),
        }
    }
    Ok(seen)
}

#[tokio::test]
async fn slow_consumer_is_disconnected_and_others_get_everything() -> Result<()> {
    let server = Server::start(&[("OUTBOUND_QUEUE_MESSAGES", "50")]).await?;
    let mut publisher = server.connect(Vsn::V2).await?;
    let pub_ref = publisher.join_config(TOPIC, json!({})).await?;
    let mut good = server.connect(Vsn::V2).await?;
    good.join_config(TOPIC, json!({})).await?;

    // The slow client joins and tracks presence, but never reads.
    let mut slow = server.connect_paused(Vsn::V2).await?;
    let slow_ref = slow
        .send_join(
            TOPIC,
            &json!({"config": {"presence": {"enabled": true, "key": "slow"}}}),
        )
        .await?;
    slow.track(&slow_ref, TOPIC, json!({"slow": true})).await?;
    // Once the good subscriber sees that presence, the slow client is subscribed.
    let diff = good.expect_event(TOPIC, "presence_diff").await?;
    ensure!(
        diff.payload.pointer("/joins/slow").is_some(),
        "{}",
        diff.raw
    );

    let pad = "x".repeat(16_000);
    let mut received = Vec::with_capacity(TOTAL);
    let mut sent = 0;
    let mut slow_left = false;
    while sent < TOTAL {
        let burst = BURST.min(TOTAL - sent);
        for _ in 0..burst {
            publisher
                .broadcast(&pub_ref, TOPIC, "flood", json!({"i": sent, "pad": pad}))
                .await?;
            sent += 1;
        }
        // Pace the publisher by the well-behaved subscriber, so only the slow one falls behind.
        received.extend(read_broadcasts(&mut good, burst, &mut slow_left).await?);
    }
    let expected: Vec<u64> = (0..TOTAL as u64).collect();
    ensure!(
        received == expected,
        "good subscriber missed or reordered messages"
    );

    // Now read what the slow client got: a prefix of the flood, then the end of the socket.
    slow.start_reading();
    let mut slow_broadcasts = 0usize;
    let mut ended = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline {
        match slow.recv_timeout(Duration::from_secs(5)).await? {
            Some(Incoming::Text(msg)) if msg.event == "broadcast" => slow_broadcasts += 1,
            Some(Incoming::Text(_)) | Some(Incoming::Ping(_)) | Some(Incoming::Pong(_)) => {}
            Some(Incoming::Binary(bytes)) => bail!("slow V2 client got binary {bytes:?}"),
            Some(Incoming::BadText(text)) => bail!("undecodable frame {text:?}"),
            Some(end @ (Incoming::Close(..) | Incoming::Eof(_))) => {
                ended = Some(end);
                break;
            }
            None => bail!(
                "slow client still connected and idle after reading {slow_broadcasts} broadcasts"
            ),
        }
    }
    let ended = ended.context("slow client was never disconnected")?;
    ensure!(
        slow_broadcasts < TOTAL,
        "slow client got all {TOTAL} messages ({ended:?})"
    );
    eprintln!("slow client: {slow_broadcasts} of {TOTAL} broadcasts, then {ended:?}");

    // Its presence left, and the good subscriber still works.
    if !slow_left {
        good.expect_text(|m| {
            m.event == "presence_diff" && m.payload.pointer("/leaves/slow").is_some()
        })
        .await?;
    }
    good.heartbeat().await?;
    Ok(())
}
