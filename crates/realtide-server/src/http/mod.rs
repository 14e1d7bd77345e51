//! HTTP: the routes, the WebSocket upgrade endpoint, the broadcast API, health and metrics.
//!
//! - [`socket`]: `GET /realtime/v1/websocket` and connect-time checks, then a session.
//! - [`api`]: the HTTP broadcast API (`/api/broadcast`, `/api/ping`).
//! - [`health`]: `/healthcheck`, `/api/health` and the Prometheus `/metrics`.
//!
//! The top of the import graph: uses `session`, `app` and everything below.

pub mod api;
pub mod health;
pub mod socket;

use std::sync::Arc;

use axum::Router;
use axum::routing::get;

use crate::app::App;

/// The HTTP routes.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/socket/websocket", get(socket::websocket))
        .route("/realtime/v1/websocket", get(socket::websocket))
        .route("/healthcheck", get(health::healthcheck))
        .route("/api/health", get(health::health))
        .route("/metrics", get(health::prometheus))
        .merge(api::routes())
        .with_state(app)
}
