//! Replay: a private channel joined with `config.broadcast.replay {since, limit}` first receives
//! the newest stored broadcasts of its topic (database-originated ones, from
//! `realtime.messages`), oldest first, marked `meta.replayed: true`.

use serde_json::Value;

use crate::channels::broadcast::{StoredBody, StoredMessage};
use crate::db::pool::{DbError, Pool};

/// Most (and default) messages replayed.
pub const MAX_LIMIT: i64 = 25;

/// Validated replay parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayParams {
    /// Unix time in milliseconds.
    pub since_ms: i64,
    /// 1..=25.
    pub limit: i64,
}

impl ReplayParams {
    /// Parses `config.broadcast.replay`: `since` must be an integer; `limit`, when present,
    /// too (clamped to 1..=25, default 25). `None` means the parameters are not valid.
    pub fn parse(value: &Value) -> Option<ReplayParams> {
        let since_ms = value.get("since")?.as_i64()?;
        let limit = match value.get("limit") {
            None | Some(Value::Null) => MAX_LIMIT,
            Some(limit) => limit.as_i64()?.clamp(1, MAX_LIMIT),
        };
        Some(ReplayParams { since_ms, limit })
    }
}

/// The newest `limit` private broadcasts of `sub_topic` since `since`, oldest first.
pub async fn fetch(
    pool: &Pool,
    sub_topic: &str,
    params: ReplayParams,
) -> Result<Vec<StoredMessage>, DbError> {
    let conn = pool.client().await?;
    let statement = conn
        .prepared(
            "select id::text, coalesce(event, ''), payload::text, binary_payload \
               from realtime.messages \
              where topic = $1 and private is true and extension = 'broadcast' \
                and inserted_at >= (to_timestamp($2::float8 / 1000.0) at time zone 'UTC') \
                and inserted_at < (now() at time zone 'UTC') + interval '1 minute' \
              order by inserted_at desc \
              limit $3",
        )
        .await?;
    let since = params.since_ms as f64;
    let rows = conn
        .query(&statement, &[&sub_topic, &since, &params.limit])
        .await
        .map_err(DbError::query("replay"))?;
    let mut messages: Vec<StoredMessage> = rows
        .iter()
        .filter_map(|row| {
            let body = match (
                row.get::<_, Option<String>>(2),
                row.get::<_, Option<Vec<u8>>>(3),
            ) {
                (_, Some(bytes)) => StoredBody::Binary(bytes),
                (Some(json), None) => StoredBody::Json(json),
                (None, None) => return None,
            };
            Some(StoredMessage {
                topic: sub_topic.to_owned(),
                private: true,
                event: row.get(1),
                id: row.get(0),
                body,
            })
        })
        .collect();
    messages.reverse();
    Ok(messages)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params() {
        let parse =
            |text: &str| ReplayParams::parse(&serde_json::from_str(text).unwrap_or_default());
        assert_eq!(
            parse(r#"{"since":1,"limit":5}"#),
            Some(ReplayParams {
                since_ms: 1,
                limit: 5
            })
        );
        assert_eq!(parse(r#"{"since":1}"#).map(|p| p.limit), Some(25));
        assert_eq!(
            parse(r#"{"since":1,"limit":500}"#).map(|p| p.limit),
            Some(25)
        );
        assert_eq!(parse(r#"{"since":1,"limit":0}"#).map(|p| p.limit), Some(1));
        assert_eq!(parse(r#"{}"#), None);
        assert_eq!(parse(r#"{"since":"1"}"#), None);
        assert_eq!(parse(r#"{"since":1,"limit":"2"}"#), None);
        assert_eq!(parse(r#"{"since":1.5}"#), None);
    }
}
