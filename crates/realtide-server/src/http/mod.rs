//! HTTP: the routes, the WebSocket upgrade endpoint, the broadcast API, health and metrics.
//!
//! - [`socket`]: `GET /realtime/v1/websocket` and connect-time checks, then a session.
//! - [`api`]: the HTTP broadcast API (`/api/broadcast`, `/api/ping`).
//! - [`health`]: `/healthcheck`, `/api/health` and the Prometheus `/metrics`.
//!
//! Every route but `/healthcheck` is a project's: [`tenant_layer`] finds the project a request
//! names (the implicit one, or a tenant by `/t/{tenant}` prefix or `Host`) before routing and
//! hands it to the handlers as an `Extension<Arc<App>>`.
//!
//! The top of the import graph: uses `session`, `tenants`, `app` and everything below.

pub mod api;
pub mod health;
pub mod socket;
pub mod tenants;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tower::Layer;

use crate::app::ProcessParts;
use crate::config::Config;
use crate::tenants::{TenantError, Tenants, routing};

/// The serving process: its projects, what they share, and the process's settings.
#[derive(Debug)]
pub struct Server {
    /// The projects.
    pub tenants: Tenants,
    /// Shutdown signal, connection tasks, socket count.
    pub process: ProcessParts,
    /// The process's settings (listener, TLS, timeouts; with tenants, not a project's).
    pub config: Config,
}

/// The HTTP routes.
pub fn router(server: Arc<Server>) -> Router {
    Router::new()
        .route("/socket/websocket", get(socket::websocket))
        .route("/realtime/v1/websocket", get(socket::websocket))
        .route("/healthcheck", get(health::healthcheck))
        .route("/api/health", get(health::health))
        .route("/metrics", get(health::prometheus))
        .merge(api::routes())
        .merge(tenants::routes())
        .with_state(server)
}

/// Wraps the routes in the tenant lookup, which runs before routing (so that it can take a
/// `/t/{tenant}` prefix off the path).
pub fn with_tenants(
    server: Arc<Server>,
    routes: Router,
) -> impl Clone
+ Send
+ 'static
+ tower::Service<
    Request,
    Response = Response,
    Error = std::convert::Infallible,
    Future = impl Send,
> {
    axum::middleware::from_fn_with_state(server, resolve).layer(routes)
}

/// Finds the request's project and puts it in the request's extensions; a request for an
/// unknown or suspended tenant gets the reference's refusal for its route.
pub async fn resolve(
    State(server): State<Arc<Server>>,
    mut request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path().to_owned();
    let (named, path) = match routing::from_path(&path) {
        Some((tenant, rest)) => {
            let tenant = tenant.to_owned();
            let rest = rest.to_owned();
            let uri = match request.uri().query() {
                Some(query) => format!("{rest}?{query}"),
                None => rest.clone(),
            };
            match uri.parse::<Uri>() {
                Ok(uri) => *request.uri_mut() = uri,
                Err(_) => return StatusCode::BAD_REQUEST.into_response(),
            }
            (Some(tenant), rest)
        }
        None => {
            let host = request
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .or_else(|| request.uri().host())
                .and_then(routing::from_host)
                .map(str::to_ascii_lowercase);
            (host, path)
        }
    };
    // The process's own routes: liveness, and the management API of tenants.
    if path == "/healthcheck" || path == "/api/tenants" || path.starts_with("/api/tenants/") {
        return next.run(request).await;
    }
    match server.tenants.resolve(named.as_deref()).await {
        Ok(app) => {
            let span = app.span();
            request.extensions_mut().insert(app);
            tracing::Instrument::instrument(next.run(request), span).await
        }
        // The process's own health and metrics answer requests that name no tenant.
        Err(TenantError::NotFound) if path == "/api/health" || path == "/metrics" => {
            next.run(request).await
        }
        Err(error) => refuse(&server, &path, named.as_deref(), &error).await,
    }
}

/// The refusal of a request whose tenant cannot serve it, in the shape of its route.
async fn refuse(server: &Server, path: &str, named: Option<&str>, error: &TenantError) -> Response {
    let json = |status: StatusCode, body: serde_json::Value| {
        (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response()
    };
    match error {
        TenantError::Start { tenant, message } => {
            tracing::error!(%tenant, %message, "tenant could not start");
        }
        TenantError::Store(message) => tracing::error!(%message, "tenant lookup failed"),
        TenantError::NotFound | TenantError::Suspended => {}
    }
    if path.ends_with("/websocket") {
        let (status, message) = match error {
            TenantError::NotFound => (StatusCode::NOT_FOUND, "Tenant not found"),
            TenantError::Suspended => (
                StatusCode::FORBIDDEN,
                "Realtime was disabled for this tenant",
            ),
            TenantError::Start { .. } | TenantError::Store(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "Error connecting to Realtime",
            ),
        };
        tracing::info!(
            tenant = named.unwrap_or_default(),
            status = status.as_u16(),
            reason = message,
            "connect refused"
        );
        // As every refused connect: later, to slow reconnect storms down.
        tokio::time::sleep(server.config.connect_error_backoff).await;
        return json(status, serde_json::json!({ "error": message }));
    }
    let (status, message) = match error {
        TenantError::NotFound => (StatusCode::UNAUTHORIZED, "Tenant not found in database"),
        TenantError::Suspended => (StatusCode::FORBIDDEN, "Tenant is suspended"),
        TenantError::Start { .. } | TenantError::Store(_) => {
            (StatusCode::INTERNAL_SERVER_ERROR, "Internal server error")
        }
    };
    json(status, serde_json::json!({ "message": message }))
}
