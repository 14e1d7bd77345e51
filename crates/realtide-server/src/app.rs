//! The server: shared state, HTTP routes, listening and graceful shutdown.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::metrics::{Exporter, Metrics, ReplicationSample};
use crate::postgres::Postgres;
use crate::registry::Registry;
use crate::socket;

/// How long shutdown waits for sessions to flush their goodbyes.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);

/// State shared by every connection.
#[derive(Debug)]
pub struct App {
    /// Validated configuration.
    pub config: Config,
    /// Topics and subscribers.
    pub registry: Arc<Registry>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Rate and count limits.
    pub limits: Arc<crate::limits::Limits>,
    /// The publish path of user broadcasts (client, HTTP and database).
    pub publisher: crate::publish::Publisher,
    /// Cancelled when the server shuts down.
    pub shutdown: CancellationToken,
    /// Cancelled after `shutdown` once decoded changes were handed to the sockets: sessions
    /// then say goodbye and close.
    pub disconnect: CancellationToken,
    /// Every connection task and delayed reply, awaited at shutdown.
    pub tasks: TaskTracker,
    /// Database state, when `DB_URL` is set.
    pub postgres: Option<Arc<Postgres>>,
    /// Prometheus exporter behind `GET /metrics`.
    pub exporter: Exporter,
    /// Accepted sockets, counted from accept.
    pub sockets: Arc<crate::listener::Sockets>,
}

impl App {
    /// Builds the shared state.
    pub fn new(config: Config) -> Result<Arc<App>, crate::journal::JournalError> {
        let metrics = Arc::new(Metrics::default());
        let limits = Arc::new(crate::limits::Limits::new(config.limits));
        let exporter = Exporter::new(config.database.is_some());
        let (config_limits_connections, handshake_timeout) =
            (config.limits.connections, config.handshake_timeout);
        let postgres = config
            .database
            .clone()
            .map(|database| Postgres::new(database, exporter.authorization_histogram()))
            .transpose()?;
        let registry = Arc::new(Registry::new(metrics.clone(), limits.clone()));
        let publisher = crate::publish::Publisher::new(
            registry.clone(),
            limits.clone(),
            Arc::new(crate::publish::NoPeers),
        );
        Ok(Arc::new(App {
            exporter,
            postgres,
            config,
            registry,
            publisher,
            limits,
            metrics,
            shutdown: CancellationToken::new(),
            disconnect: CancellationToken::new(),
            tasks: TaskTracker::new(),
            sockets: crate::listener::Sockets::new(config_limits_connections, handshake_timeout),
        }))
    }
}

/// The HTTP routes.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/socket/websocket", get(socket::websocket))
        .route("/realtime/v1/websocket", get(socket::websocket))
        .route("/healthcheck", get(healthcheck))
        .route("/api/health", get(health))
        .route("/metrics", get(prometheus))
        .merge(crate::api::routes())
        .with_state(app)
}

async fn healthcheck() -> &'static str {
    "ok"
}

/// `GET /api/health`: 200 `ok`, or 503 `degraded` while a configured database cannot be
/// reached or replication cannot run (the readiness probe of the deploy files).
async fn health(State(app): State<Arc<App>>) -> Response {
    let database_connected = match &app.postgres {
        Some(postgres) => Some(postgres.ping().await),
        None => None,
    };
    let replication = app
        .postgres
        .as_ref()
        .map(|p| p.replication.borrow().clone());
    let problem = match &replication {
        Some(crate::replication::ReplicationStatus::Down { problem, .. }) => {
            Some(problem.to_string())
        }
        Some(crate::replication::ReplicationStatus::Starting) => {
            Some("replication is starting".to_owned())
        }
        _ if database_connected == Some(false) => Some("the database does not answer".to_owned()),
        _ => None,
    };
    let mut snapshot = app.metrics.snapshot();
    snapshot.outbound_held_bytes = app.limits.outbound.held() as u64;
    snapshot.log_lines_dropped = crate::logs::lost_lines();
    let code = if problem.is_some() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let body = Json(serde_json::json!({
        "status": if problem.is_some() { "degraded" } else { "ok" },
        "problem": problem,
        "replication": replication.as_ref().map(crate::replication::ReplicationStatus::name),
        "database_configured": app.config.database.is_some(),
        "database_connected": database_connected,
        "connections": snapshot.connections,
        "sockets": app.sockets.open(),
        "channels": snapshot.channels,
        "replication_lag_seconds": app.postgres.as_ref().map(|_| snapshot.replication_lag_seconds),
        "replication_connected": app.postgres.as_ref().is_some_and(|p| p.replication_streaming()),
        "replication_lag_bytes": app.postgres.as_ref().map(|p| p.lag_bytes()),
        "topics": app.registry.topic_count(),
        "metrics": snapshot,
    }));
    (code, body).into_response()
}

/// `GET /metrics`: Prometheus text. With `METRICS_JWT_SECRET` set, a request without a valid
/// `Authorization: Bearer <JWT>` gets 403 with an empty body, as the reference.
async fn prometheus(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Some(verifier) = &app.config.metrics_jwt {
        let authorized = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| {
                value
                    .strip_prefix("Bearer ")
                    .or_else(|| value.strip_prefix("bearer "))
            })
            .is_some_and(|token| verifier.verify(token.trim()).is_ok());
        if !authorized {
            return StatusCode::FORBIDDEN.into_response();
        }
    }
    let replication = app.postgres.as_ref().map(|p| ReplicationSample {
        connected: p.replication_streaming(),
        lag_bytes: p.lag_bytes(),
    });
    let mut snapshot = app.metrics.snapshot();
    snapshot.outbound_held_bytes = app.limits.outbound.held() as u64;
    snapshot.log_lines_dropped = crate::logs::lost_lines();
    let body = app
        .exporter
        .render(snapshot, app.registry.topic_count(), replication);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// Serves until `app.shutdown` is cancelled, then drains: every session sends
/// `Server requested disconnect` and closes with 1012, within a deadline.
pub async fn serve(app: Arc<App>, listener: TcpListener) -> std::io::Result<()> {
    let shutdown = app.shutdown.clone();
    let stop = async move { shutdown.cancelled().await };
    let routes =
        router(app.clone()).layer(axum::middleware::from_fn(crate::listener::request_deadline));
    let connected = routes.into_make_service_with_connect_info::<crate::listener::Connection>();
    match app.config.tls.clone() {
        None => {
            let listener = crate::listener::GuardedListener::new(listener, app.sockets.clone());
            axum::serve(listener, connected)
                .with_graceful_shutdown(stop)
                .await?
        }
        Some(tls) => {
            let listener = crate::tls::TlsListener::new(
                listener,
                tls.acceptor,
                app.sockets.clone(),
                app.config.handshake_timeout,
            )?;
            axum::serve(listener, connected)
                .with_graceful_shutdown(stop)
                .await?
        }
    }
    // axum's graceful shutdown does not cover upgraded sockets: sessions watch the disconnect
    // token, which fires once decoded changes were handed to them (bounded by the feed's drain
    // deadline).
    let _ = tokio::time::timeout(
        crate::feed::DRAIN_DEADLINE + Duration::from_secs(2),
        app.disconnect.cancelled(),
    )
    .await;
    app.disconnect.cancel();
    app.tasks.close();
    if tokio::time::timeout(SHUTDOWN_DEADLINE, app.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("shutdown deadline passed with sessions still open");
    }
    Ok(())
}
