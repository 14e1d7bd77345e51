//! `/healthcheck`, `/api/health` (readiness: 503 while the database or replication is down)
//! and the Prometheus `/metrics`.

use std::sync::Arc;

use axum::Extension;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::app::App;
use crate::http::Server;
use crate::metrics::ReplicationSample;

pub(crate) async fn healthcheck() -> &'static str {
    "ok"
}

/// `GET /api/health`: 200 `ok`, or 503 `degraded` while a configured database cannot be
/// reached or replication cannot run (the readiness probe of the deploy files).
pub(crate) async fn health(
    State(server): State<Arc<Server>>,
    app: Option<Extension<Arc<App>>>,
) -> Response {
    match app {
        Some(Extension(app)) => project_health(&app).await,
        None => process_health(&server),
    }
}

/// With tenants, `/api/health` of no tenant: the process, and which tenants run.
fn process_health(server: &Server) -> Response {
    let mut running: Vec<String> = server
        .tenants
        .running()
        .iter()
        .filter_map(|app| app.tenant.as_ref().map(ToString::to_string))
        .collect();
    running.sort();
    Json(serde_json::json!({
        "status": "ok",
        "sockets": server.process.sockets.open(),
        "tenants": {
            "configured": match &server.config.tenants {
                Some(crate::config::tenants::TenantsConfig {
                    source: crate::config::tenants::TenantSource::File { tenants, .. },
                    ..
                }) => Some(tenants.len()),
                _ => None,
            },
            "running": running,
        },
    }))
    .into_response()
}

async fn project_health(app: &App) -> Response {
    let database_connected = match &app.postgres {
        Some(postgres) => Some(postgres.ping().await),
        None => None,
    };
    let replication = app
        .postgres
        .as_ref()
        .map(|p| p.replication.borrow().clone());
    let problem = match &replication {
        Some(crate::changes::progress::ReplicationStatus::Down { problem, .. }) => {
            Some(problem.to_string())
        }
        Some(crate::changes::progress::ReplicationStatus::Starting) => {
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
        "tenant": app.tenant.as_ref().map(ToString::to_string),
        "problem": problem,
        "replication": replication.as_ref().map(crate::changes::progress::ReplicationStatus::name),
        "database_configured": app.config.database.is_some(),
        "database_connected": database_connected,
        "connections": snapshot.connections,
        // Accepted sockets are the process's: not shown for one tenant of several.
        "sockets": app.tenant.is_none().then(|| app.sockets.open()),
        "channels": snapshot.channels,
        "replication_lag_seconds": app.postgres.as_ref().map(|_| snapshot.replication_lag_seconds),
        "replication_connected": app.postgres.as_ref().is_some_and(|p| p.replication_streaming()),
        "replication_lag_bytes": app.postgres.as_ref().map(|p| p.lag_bytes()),
        "topics": app.registry.topic_count(),
        "metrics": snapshot,
        "cluster": app.cluster.as_ref().map(|c| c.health()),
    }));
    (code, body).into_response()
}

/// `GET /metrics`: Prometheus text. With `METRICS_JWT_SECRET` set, a request without a valid
/// `Authorization: Bearer <JWT>` gets 403 with an empty body, as the reference. With tenants, a
/// request that names none gets every running tenant's series, labelled `tenant`.
pub(crate) async fn prometheus(
    State(server): State<Arc<Server>>,
    app: Option<Extension<Arc<App>>>,
    headers: HeaderMap,
) -> Response {
    if let Some(verifier) = &server.config.metrics_jwt {
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
    let body = match app {
        Some(Extension(app)) => project_metrics(&app),
        None => {
            let mut apps = server.tenants.running();
            apps.sort_by(|a, b| a.tenant.cmp(&b.tenant));
            let rendered: Vec<(String, String)> = apps
                .iter()
                .map(|app| {
                    (
                        app.tenant
                            .as_ref()
                            .map(ToString::to_string)
                            .unwrap_or_default(),
                        project_metrics(app),
                    )
                })
                .collect();
            crate::metrics::label_tenants(&rendered)
        }
    };
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

fn project_metrics(app: &App) -> String {
    let replication = app.postgres.as_ref().map(|p| ReplicationSample {
        connected: p.replication_streaming(),
        lag_bytes: p.lag_bytes(),
    });
    let mut snapshot = app.metrics.snapshot();
    snapshot.outbound_held_bytes = app.limits.outbound.held() as u64;
    snapshot.log_lines_dropped = crate::logs::lost_lines();
    let mut body = app
        .exporter
        .render(snapshot, app.registry.topic_count(), replication);
    if app.cluster.is_some() {
        body.push_str(&app.metrics.cluster.render());
    }
    body
}
