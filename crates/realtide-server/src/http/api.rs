//! The HTTP broadcast API: `POST /api/broadcast` (batch), `POST /api/broadcast/:topic/events/
//! :event` (single, JSON or raw bytes) and `GET /api/ping`, each also under `/realtime/v1`.
//!
//! Authenticated by `Authorization: Bearer <jwt>` or the `apikey` header; query parameters
//! (the WebSocket's `apikey`, `vsn`, ... leak into the URLs the clients build) are ignored
//! except `private`. Private messages need write permission on their topic (the same RLS check
//! as a channel's first send, with the request's headers exposed as `request.headers`).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use realtide_auth::Claims;
use serde_json::{Map, Value};

use crate::app::App;
use crate::channels::publish::{Message, Origin};
use crate::channels::registry::TopicKey;
use crate::db::authorization::{AuthzError, Extension, Requester, request_headers};
use crate::db::claims::ClaimsGroup;
use realtide_protocol::encode::UserBody;

/// Largest request body (as the reference's 8 MB octet-stream read limit).
const BODY_LIMIT: usize = 8 * 1024 * 1024;

/// The API routes, at `/api` and `/realtime/v1/api`.
pub fn routes() -> Router<Arc<crate::http::Server>> {
    let mut router = Router::new();
    for base in ["/api", "/realtime/v1/api"] {
        router = router
            .route(&format!("{base}/ping"), get(ping))
            .route(&format!("{base}/broadcast"), post(batch).options(preflight))
            .route(
                &format!("{base}/broadcast/{{topic}}/events/{{event}}"),
                post(single).options(preflight),
            );
    }
    router
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::map_response(open_cors))
}

/// CORS `*`, as the reference's `:open_cors` pipeline.
async fn open_cors(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    response
}

async fn preflight() -> Response {
    (
        StatusCode::NO_CONTENT,
        [
            (
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("GET, POST, OPTIONS"),
            ),
            (
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static(
                    "authorization, apikey, content-type, x-client-info, accept",
                ),
            ),
            (
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static("86400"),
            ),
        ],
    )
        .into_response()
}

/// `GET /api/ping`.
async fn ping() -> Response {
    json(StatusCode::OK, &serde_json::json!({"message": "Success"}))
}

fn json(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn message(status: StatusCode, text: &str) -> Response {
    json(status, &serde_json::json!({ "message": text }))
}

/// The request's JWT: `Authorization: Bearer` (any case) first, then the `apikey` header.
fn request_token(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    bearer
        .or_else(|| headers.get("apikey").and_then(|v| v.to_str().ok()))
        .filter(|t| !t.is_empty())
}

fn authenticate(app: &App, headers: &HeaderMap) -> Result<Claims, Box<Response>> {
    let unauthorized = || Box::new(message(StatusCode::UNAUTHORIZED, "Unauthorized"));
    let token = request_token(headers).ok_or_else(unauthorized)?;
    app.config.jwt.verify(token).map_err(|error| {
        tracing::info!(%error, "http broadcast refused");
        unauthorized()
    })
}

/// Write check for a private topic. `Ok(false)` = denied.
async fn may_write(
    app: &App,
    claims: &ClaimsGroup,
    headers: &str,
    sub_topic: &str,
) -> Result<bool, AuthzError> {
    let Some(postgres) = &app.postgres else {
        // Without a database no policy can grant anything.
        return Ok(false);
    };
    postgres
        .authorizer
        .write(
            sub_topic,
            Requester { claims, headers },
            Extension::Broadcast,
        )
        .await
}

fn topic_key(private: bool, sub_topic: &str) -> TopicKey {
    TopicKey {
        private,
        sub_topic: sub_topic.into(),
    }
}

/// One validated batch message.
struct BatchMessage {
    topic: String,
    event: String,
    payload: String,
    private: bool,
    id: Option<String>,
}

/// Validates one batch entry; `Err` holds its field errors.
fn validate(entry: &Value, max_payload: usize) -> Result<BatchMessage, Map<String, Value>> {
    let mut errors = Map::new();
    let blank = || Value::from(vec!["can't be blank"]);
    let invalid = || Value::from(vec!["is invalid"]);
    let text = |name: &str, errors: &mut Map<String, Value>| match entry.get(name) {
        None | Some(Value::Null) => {
            errors.insert(name.into(), blank());
            None
        }
        Some(Value::String(s)) if s.is_empty() => {
            errors.insert(name.into(), blank());
            None
        }
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            errors.insert(name.into(), invalid());
            None
        }
    };
    let topic = text("topic", &mut errors);
    let event = text("event", &mut errors);
    let payload = match entry.get("payload") {
        None | Some(Value::Null) => {
            errors.insert("payload".into(), blank());
            None
        }
        Some(payload @ Value::Object(_)) => {
            let payload = payload.to_string();
            if payload.len() > max_payload {
                errors.insert(
                    "payload".into(),
                    Value::from(vec!["Payload size exceeds tenant limit"]),
                );
                None
            } else {
                Some(payload)
            }
        }
        Some(_) => {
            errors.insert("payload".into(), invalid());
            None
        }
    };
    let private = match entry.get("private") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            errors.insert("private".into(), invalid());
            false
        }
    };
    let id = match entry.get("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            errors.insert("id".into(), invalid());
            None
        }
    };
    match (topic, event, payload) {
        (Some(topic), Some(event), Some(payload)) if errors.is_empty() => Ok(BatchMessage {
            topic,
            event,
            payload,
            private,
            id,
        }),
        _ => Err(errors),
    }
}

/// `POST /api/broadcast`: `{"messages":[{topic, event, payload, private?, id?}]}` → 202.
async fn batch(
    axum::Extension(app): axum::Extension<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let claims = match authenticate(&app, &headers) {
        Ok(claims) => claims,
        Err(response) => return *response,
    };
    if app.limits.events.tripped() {
        return rate_limited();
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return message(StatusCode::BAD_REQUEST, "Invalid JSON body");
    };
    let Some(entries) = body.get("messages").and_then(Value::as_array) else {
        return json(
            StatusCode::UNPROCESSABLE_ENTITY,
            &serde_json::json!({"errors": {"messages": ["can't be blank"]}}),
        );
    };
    let max = app.config.max_payload_bytes;
    let validated: Vec<_> = entries.iter().map(|e| validate(e, max)).collect();
    if validated.iter().any(Result::is_err) {
        let errors: Vec<Value> = validated
            .into_iter()
            .map(|r| Value::Object(r.err().unwrap_or_default()))
            .collect();
        return json(
            StatusCode::UNPROCESSABLE_ENTITY,
            &serde_json::json!({"errors": {"messages": errors}}),
        );
    }
    let messages: Vec<BatchMessage> = validated.into_iter().filter_map(Result::ok).collect();

    // One write check per private topic; denied topics are skipped and the answer is still 202.
    let group = ClaimsGroup::new(&claims);
    let request_headers = request_headers(&headers, false);
    let mut allowed: HashMap<&str, bool> = HashMap::new();
    for message in messages.iter().filter(|m| m.private) {
        if allowed.contains_key(message.topic.as_str()) {
            continue;
        }
        let granted = match may_write(&app, &group, &request_headers, &message.topic).await {
            Ok(granted) => granted,
            Err(error) => {
                tracing::warn!(error = %error, "http broadcast authorization failed");
                false
            }
        };
        allowed.insert(message.topic.as_str(), granted);
    }

    for message in &messages {
        if message.private
            && !allowed
                .get(message.topic.as_str())
                .copied()
                .unwrap_or(false)
        {
            continue;
        }
        app.metrics.event_in();
        let meta = message
            .id
            .as_deref()
            .map(realtide_protocol::encode::id_meta);
        let payload = realtide_protocol::encode::user_broadcast_json(
            &message.event,
            &message.payload,
            meta.as_deref(),
        );
        app.publisher.publish(
            Origin::Http,
            &topic_key(message.private, &message.topic),
            message.id.as_deref(),
            Message::Payload(&payload),
        );
    }
    StatusCode::ACCEPTED.into_response()
}

/// Whether the content type is JSON, raw bytes, or neither. A missing header means JSON.
#[derive(Debug, PartialEq, Eq)]
enum Content {
    Json,
    Octets,
}

fn content(headers: &HeaderMap) -> Option<Content> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Some(Content::Json);
    };
    let essence = value
        .to_str()
        .ok()?
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/json" => Some(Content::Json),
        "application/octet-stream" => Some(Content::Octets),
        _ => None,
    }
}

/// `POST /api/broadcast/:topic/events/:event[?private=true]` with a JSON or raw body → 202.
async fn single(
    axum::Extension(app): axum::Extension<Arc<App>>,
    Path((sub_topic, event)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let claims = match authenticate(&app, &headers) {
        Ok(claims) => claims,
        Err(response) => return *response,
    };
    if app.limits.events.tripped() {
        return rate_limited();
    }
    let Some(content) = content(&headers) else {
        return json(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            &serde_json::json!({"error": "Unsupported Media Type. Use application/json or application/octet-stream"}),
        );
    };
    let private = query
        .get("private")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let json_text;
    let body = match content {
        Content::Octets => UserBody::Binary(&body),
        Content::Json => {
            // Re-encoded compactly, as the reference does.
            match serde_json::from_slice::<Value>(&body) {
                Ok(value @ Value::Object(_)) => {
                    json_text = value.to_string();
                    UserBody::Json(&json_text)
                }
                Ok(_) => {
                    return message(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "Payload must be a JSON object",
                    );
                }
                Err(_) => return message(StatusCode::BAD_REQUEST, "Invalid JSON body"),
            }
        }
    };
    if body.len() > app.config.max_payload_bytes {
        return message(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Payload size exceeds tenant limit",
        );
    }
    if private {
        let group = ClaimsGroup::new(&claims);
        match may_write(&app, &group, &request_headers(&headers, false), &sub_topic).await {
            Ok(true) => {}
            Ok(false) => return message(StatusCode::FORBIDDEN, "Unauthorized"),
            Err(error) => return authz_response(&error),
        }
    }
    app.metrics.event_in();
    app.publisher.publish(
        Origin::Http,
        &topic_key(private, &sub_topic),
        None,
        Message::User {
            event: &event,
            body,
            meta: None,
        },
    );
    StatusCode::ACCEPTED.into_response()
}

/// 429 while the events-per-second limit is tripped.
fn rate_limited() -> Response {
    message(
        StatusCode::TOO_MANY_REQUESTS,
        "You have exceeded your rate limit",
    )
}

/// The reference's answers when a private write check cannot be made.
fn authz_response(error: &AuthzError) -> Response {
    match error {
        AuthzError::Policy(_) => message(StatusCode::UNPROCESSABLE_ENTITY, "RLS policy error"),
        AuthzError::Canceled(_) => message(StatusCode::UNPROCESSABLE_ENTITY, "Query canceled"),
        AuthzError::MissingPartition(_) => message(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Missing messages partition",
        ),
        AuthzError::Timeout => message(StatusCode::TOO_MANY_REQUESTS, "Connection pool exhausted"),
        AuthzError::Unavailable(_) => message(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Realtime was unable to connect to the project database",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_from_headers() {
        let mut headers = HeaderMap::new();
        headers.insert("apikey", HeaderValue::from_static("k1"));
        assert_eq!(request_token(&headers), Some("k1"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("bEaReR t2"));
        assert_eq!(request_token(&headers), Some("t2"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic x"));
        assert_eq!(request_token(&headers), Some("k1"));
    }

    #[test]
    fn content_types() {
        let mut headers = HeaderMap::new();
        assert_eq!(content(&headers), Some(Content::Json));
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        assert_eq!(content(&headers), Some(Content::Json));
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("Application/Octet-Stream"),
        );
        assert_eq!(content(&headers), Some(Content::Octets));
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        assert_eq!(content(&headers), None);
    }

    #[test]
    fn batch_validation() {
        let entry: Value = serde_json::json!({"topic": "t"});
        let errors = validate(&entry, 100).err().unwrap_or_default();
        assert_eq!(
            errors.get("event"),
            Some(&Value::from(vec!["can't be blank"]))
        );
        assert_eq!(
            errors.get("payload"),
            Some(&Value::from(vec!["can't be blank"]))
        );
        let entry: Value = serde_json::json!({"topic": "t", "event": "e", "payload": {"a": 1}});
        assert!(validate(&entry, 100).is_ok());
        assert!(validate(&entry, 3).is_err());
    }
}
