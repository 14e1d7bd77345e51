//! The WebSocket endpoint: connect-time checks, then the upgrade that starts a session.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Extension;
use axum::extract::Query;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use fastwebsockets::upgrade::IncomingUpgrade;
use realtide_protocol::Vsn;

use tracing::Instrument;

use crate::app::App;
use crate::error::ConnectError;
use crate::session;

/// `GET /socket/websocket` and `GET /realtime/v1/websocket`.
pub async fn websocket(
    Extension(app): Extension<Arc<App>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    upgrade: IncomingUpgrade,
) -> Response {
    // An unknown serializer version is refused with an empty 403, before authentication.
    let Some(vsn) = Vsn::parse(query.get("vsn").map(String::as_str)) else {
        return StatusCode::FORBIDDEN.into_response();
    };
    let token = match connect_token(&headers, &query) {
        Some(token) => token,
        None => return refuse(&app, ConnectError::MissingApiKey).await,
    };
    if let Err(error) = app.config.jwt.verify(&token) {
        return refuse(&app, ConnectError::Token(error)).await;
    }
    if app.limits.users_full() {
        return refuse(&app, ConnectError::TooManyUsers).await;
    }
    if app.limits.joins.tripped() {
        return refuse(&app, ConnectError::TooManyJoins).await;
    }
    // The slot is taken before the upgrade and held by the session task.
    let Some(slot) = app.limits.connection() else {
        // Answered at once: the back-off would hold the very resources that are short.
        let (status, message) = ConnectError::TooManyConnections.response_parts();
        tracing::warn!(
            status = status.as_u16(),
            "refusing connection: MAX_CONNECTIONS reached"
        );
        let body = serde_json::json!({ "error": message }).to_string();
        return (status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
    };
    let (response, pending) = match upgrade.upgrade() {
        Ok(parts) => parts,
        Err(error) => {
            tracing::debug!(%error, "websocket upgrade failed");
            return StatusCode::BAD_REQUEST.into_response();
        }
    };
    let request_headers: Arc<str> =
        crate::db::authorization::request_headers(&headers, true).into();
    let session_app = app.clone();
    let span = app.span();
    app.tasks.spawn(
        async move {
            let _slot = slot;
            match pending.await {
                Ok(socket) => {
                    let opened = session_app.metrics.connection_opened();
                    tracing::debug!(connections = opened, ?vsn, "socket connected");
                    session::run(
                        session_app.clone(),
                        socket.into_inner(),
                        vsn,
                        token,
                        request_headers,
                    )
                    .await;
                    session_app.metrics.connection_closed();
                }
                Err(error) => tracing::debug!(%error, "websocket upgrade did not complete"),
            }
        }
        .instrument(span),
    );
    response.into_response()
}

/// The connect token: the `x-api-key` header wins over the `apikey` query parameter.
fn connect_token(headers: &HeaderMap, query: &HashMap<String, String>) -> Option<String> {
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| query.get("apikey").cloned())
        .filter(|t| !t.is_empty())
}

/// Answers a refused connect after `CONNECT_ERROR_BACKOFF_MS`, with `{"error": ...}`.
async fn refuse(app: &App, error: ConnectError) -> Response {
    let (status, message) = error.response_parts();
    tracing::info!(status = status.as_u16(), reason = %message, "connect refused");
    tokio::time::sleep(app.config.connect_error_backoff).await;
    let body = serde_json::json!({ "error": message }).to_string();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}
