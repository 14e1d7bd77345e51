//! The management API of tenants, in the reference's shapes: `GET/POST /api/tenants`,
//! `GET/PUT/PATCH/DELETE /api/tenants/{id}`, `POST /api/tenants/{id}/reload` and `/shutdown`,
//! `GET /api/tenants/{id}/health`. Every request needs `Authorization: Bearer <JWT>` signed
//! with `API_JWT_SECRET` (otherwise 403 with an empty body). Writes need the control database
//! (`TENANTS_DB_URL`); a `TENANTS_FILE` is read-only. Database passwords and JWT secrets are
//! never in a response.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use crate::config::tenants::{TenantId, TenantSettings};
use crate::http::Server;
use crate::tenants::store::Record;
use crate::tenants::{Set, Tenants};

/// The routes (not behind the tenant lookup).
pub fn routes() -> Router<Arc<Server>> {
    Router::new()
        .route("/api/tenants", get(list).post(create))
        .route(
            "/api/tenants/{id}",
            get(show).put(update).patch(update).delete(remove),
        )
        .route("/api/tenants/{id}/reload", post(reload))
        .route("/api/tenants/{id}/shutdown", post(shutdown))
        .route("/api/tenants/{id}/health", get(health))
}

/// The tenant set, when the caller's token is signed with `API_JWT_SECRET`.
fn authorize(server: &Server, headers: &HeaderMap) -> Result<Arc<Set>, Box<Response>> {
    let Tenants::Many(set) = &server.tenants else {
        return Err(Box::new(not_found()));
    };
    let authorized = set.api_jwt().is_some_and(|verifier| {
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .is_some_and(|token| verifier.verify(token.trim()).is_ok())
    });
    if authorized {
        Ok(set.clone())
    } else {
        Err(Box::new(StatusCode::FORBIDDEN.into_response()))
    }
}

/// The tenant set and the tenant id of a route, for an authorized caller (404 for an id that
/// cannot be a tenant's).
fn named(
    server: &Server,
    headers: &HeaderMap,
    id: &str,
) -> Result<(TenantId, Arc<Set>), Box<Response>> {
    let set = authorize(server, headers)?;
    let id = TenantId::parse(id).ok_or_else(|| Box::new(not_found()))?;
    Ok((id, set))
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, Json(json!({"message": "not found"}))).into_response()
}

fn invalid(field: &str, message: impl Into<String>) -> Response {
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        Json(json!({"errors": {field: [message.into()]}})),
    )
        .into_response()
}

fn failed(message: impl std::fmt::Display) -> Response {
    tracing::error!(error = %message, "tenant management failed");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(json!({"message": "Internal server error"})),
    )
        .into_response()
}

fn read_only() -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        Json(json!({"message": "tenants come from TENANTS_FILE, which is read-only; use TENANTS_DB_URL to manage them here"})),
    )
        .into_response()
}

/// A tenant as the reference renders it, with the effective limits; no password, no secret.
fn render(set: &Set, id: &TenantId, record: &Record) -> Value {
    let s = &record.settings;
    let base = set.base();
    let extensions = if s.db_url.is_some() || s.db_host.is_some() {
        vec![json!({
            "type": "postgres_cdc_rls",
            "settings": {
                "db_host": s.db_host,
                "db_port": s.db_port.unwrap_or(base.db_port),
                "db_user": s.db_user.clone().unwrap_or_else(|| base.db_user.clone()),
                "db_name": s.db_name.clone().unwrap_or_else(|| base.db_name.clone()),
                "ssl_enforced": s.db_ssl.unwrap_or(base.db_ssl),
                "publication": s.publication.clone().unwrap_or_else(|| base.publication.clone()),
                "slot_name": s.slot(id),
            }
        })]
    } else {
        Vec::new()
    };
    json!({
        "id": record.uuid,
        "external_id": id.as_str(),
        "name": s.name.clone().unwrap_or_else(|| id.to_string()),
        "max_concurrent_users": s.max_concurrent_users.unwrap_or(base.max_concurrent_users),
        "max_channels_per_client": s.max_channels_per_client.unwrap_or(base.max_channels_per_client),
        "max_events_per_second": s.max_events_per_second.unwrap_or(base.max_events_per_second),
        "max_joins_per_second": s.max_joins_per_second.unwrap_or(base.max_joins_per_second),
        "max_client_presence_events_per_window": s.max_client_presence_events_per_window.unwrap_or(base.client_presence_max_calls),
        "client_presence_window_ms": s.client_presence_window_ms.unwrap_or(base.client_presence_window_ms),
        "private_only": s.private_only.unwrap_or(base.private_only),
        "presence_enabled": s.presence_enabled.unwrap_or(base.presence_enabled),
        "suspend": s.suspended,
        "inserted_at": record.inserted_at,
        "extensions": extensions,
    })
}

/// `{"tenant": {...}}` laid over `existing`: the reference's field names (`suspend`,
/// `extensions: [{"type": "postgres_cdc_rls", "settings": {...}}]`) or realtide's flat ones.
fn settings_from(
    body: &[u8],
    existing: Option<&TenantSettings>,
    id: Option<&str>,
) -> Result<TenantSettings, Box<Response>> {
    let body: Value = serde_json::from_slice(body)
        .map_err(|e| Box::new(invalid("tenant", format!("the body is not JSON: {e}"))))?;
    let Some(Value::Object(given)) = body.get("tenant").cloned() else {
        return Err(Box::new(invalid("tenant", "can't be blank")));
    };
    let mut merged = match existing {
        Some(settings) => match serde_json::to_value(settings) {
            Ok(Value::Object(map)) => map,
            _ => serde_json::Map::new(),
        },
        None => serde_json::Map::new(),
    };
    for (key, value) in given {
        match key.as_str() {
            "suspend" => {
                merged.insert("suspended".to_owned(), value);
            }
            "extensions" => {
                let Some(list) = value.as_array() else {
                    return Err(Box::new(invalid("extensions", "must be a list")));
                };
                for extension in list {
                    let kind = extension.get("type").and_then(Value::as_str);
                    if !matches!(kind, Some("postgres_cdc_rls" | "postgres")) {
                        return Err(Box::new(invalid(
                            "extensions",
                            "only postgres_cdc_rls is supported",
                        )));
                    }
                    let Some(Value::Object(settings)) = extension.get("settings") else {
                        return Err(Box::new(invalid("extensions", "settings can't be blank")));
                    };
                    for (name, value) in settings {
                        let name = match name.as_str() {
                            "ssl_enforced" => "db_ssl",
                            "region"
                            | "poll_interval_ms"
                            | "poll_max_changes"
                            | "poll_max_record_bytes"
                            | "ip_version" => continue,
                            "db_port" => {
                                // The reference sends ports as strings.
                                let port = match value {
                                    Value::String(text) => text.parse::<u16>().ok(),
                                    other => other.as_u64().and_then(|p| u16::try_from(p).ok()),
                                };
                                let Some(port) = port else {
                                    return Err(Box::new(invalid(
                                        "db_port",
                                        "must be a port number",
                                    )));
                                };
                                merged.insert("db_port".to_owned(), json!(port));
                                continue;
                            }
                            other => other,
                        };
                        merged.insert(name.to_owned(), value.clone());
                    }
                }
            }
            _ => {
                merged.insert(key, value);
            }
        }
    }
    if let Some(id) = id {
        merged.insert("external_id".to_owned(), json!(id));
    }
    serde_json::from_value(Value::Object(merged)).map_err(|e| {
        let text = e.to_string();
        // serde names the field: "unknown field `x`" / "invalid type ... for `x`".
        let field = text
            .split('`')
            .nth(1)
            .filter(|f| !f.contains(' '))
            .unwrap_or("tenant")
            .to_owned();
        Box::new(invalid(&field, text))
    })
}

/// Checks `settings` as a tenant's configuration; 422 naming the problem.
fn check(set: &Set, settings: &TenantSettings) -> Result<TenantId, Box<Response>> {
    let Some(id) = TenantId::parse(&settings.external_id) else {
        return Err(Box::new(invalid(
            "external_id",
            "must be 1-63 characters of a-z, 0-9, _ and -",
        )));
    };
    settings
        .config(&id, set.base())
        .map_err(|e| Box::new(invalid("tenant", crate::logs::error_chain(&e))))?;
    Ok(id)
}

async fn list(State(server): State<Arc<Server>>, headers: HeaderMap) -> Response {
    let set = match authorize(&server, &headers) {
        Ok(set) => set,
        Err(response) => return *response,
    };
    match set.list().await {
        Ok(tenants) => Json(json!({
            "data": tenants.iter().map(|(id, record)| render(&set, id, record)).collect::<Vec<_>>()
        }))
        .into_response(),
        Err(error) => failed(error),
    }
}

async fn show(
    State(server): State<Arc<Server>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let (id, set) = match named(&server, &headers, &id) {
        Ok(found) => found,
        Err(response) => return *response,
    };
    match set.lookup(&id).await {
        Ok(Some(record)) => Json(json!({"data": render(&set, &id, &record)})).into_response(),
        Ok(None) => not_found(),
        Err(error) => failed(error),
    }
}

async fn create(State(server): State<Arc<Server>>, headers: HeaderMap, body: Bytes) -> Response {
    let set = match authorize(&server, &headers) {
        Ok(set) => set,
        Err(response) => return *response,
    };
    let settings = match settings_from(&body, None, None) {
        Ok(settings) => settings,
        Err(response) => return *response,
    };
    write(&set, settings).await
}

async fn update(
    State(server): State<Arc<Server>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let set = match authorize(&server, &headers) {
        Ok(set) => set,
        Err(response) => return *response,
    };
    let Some(tenant) = TenantId::parse(&id) else {
        return invalid(
            "external_id",
            "must be 1-63 characters of a-z, 0-9, _ and -",
        );
    };
    let existing = match set.lookup(&tenant).await {
        Ok(existing) => existing,
        Err(error) => return failed(error),
    };
    let settings = match settings_from(&body, existing.as_ref().map(|r| &r.settings), Some(&id)) {
        Ok(settings) => settings,
        Err(response) => return *response,
    };
    write(&set, settings).await
}

/// Stores a created or updated tenant. A running tenant whose settings changed is stopped
/// (its sockets get `Server requested disconnect`) and starts again with the new ones on the
/// next request; a new tenant is started at once so its migrations run.
async fn write(set: &Arc<Set>, settings: TenantSettings) -> Response {
    let id = match check(set, &settings) {
        Ok(id) => id,
        Err(response) => return *response,
    };
    let Some(store) = set.store() else {
        return read_only();
    };
    let (record, created) = match store.put(&id, &settings).await {
        Ok(stored) => stored,
        Err(error) => return failed(crate::logs::error_chain(&error)),
    };
    set.invalidate(&id).await;
    set.stop(&id).await;
    tracing::info!(tenant = %id, created, "tenant stored");
    if created && (settings.db_url.is_some() || settings.db_host.is_some()) {
        // Run its migrations now (bounded): the tenant starts and creates its schema.
        if let Ok(app) = set.app(&id).await
            && let Some(postgres) = app.postgres.clone()
        {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            while !postgres
                .schema_ready
                .load(std::sync::atomic::Ordering::Relaxed)
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let body = Json(json!({"data": render(set, &id, &record)}));
    if created {
        (
            StatusCode::CREATED,
            [(header::LOCATION, format!("/api/tenants/{id}"))],
            body,
        )
            .into_response()
    } else {
        body.into_response()
    }
}

async fn remove(
    State(server): State<Arc<Server>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let set = match authorize(&server, &headers) {
        Ok(set) => set,
        Err(response) => return *response,
    };
    let Some(store) = set.store() else {
        return read_only();
    };
    let Some(id) = TenantId::parse(&id) else {
        return StatusCode::NO_CONTENT.into_response();
    };
    let record = match set.lookup(&id).await {
        Ok(record) => record,
        Err(error) => return failed(error),
    };
    // Drain its sockets and stop its replication before its slot goes.
    set.stop(&id).await;
    if let Err(error) = store.delete(&id).await {
        return failed(crate::logs::error_chain(&error));
    }
    set.invalidate(&id).await;
    if let Some(record) = record
        && let Ok(config) = record.settings.config(&id, set.base())
        && let Some(database) = config.database
    {
        crate::tenants::forget_stream(&database).await;
    }
    tracing::info!(tenant = %id, "tenant deleted");
    StatusCode::NO_CONTENT.into_response()
}

async fn reload(
    State(server): State<Arc<Server>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    stop_tenant(&server, &headers, &id, true).await
}

/// `POST /api/tenants/{id}/shutdown`: as reload, keeping what is cached.
async fn shutdown(
    State(server): State<Arc<Server>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    stop_tenant(&server, &headers, &id, false).await
}

/// Stops a running tenant (its sockets get `Server requested disconnect`, 1012); it starts
/// again on the next request. With `reread`, its settings are read again then.
async fn stop_tenant(server: &Server, headers: &HeaderMap, id: &str, reread: bool) -> Response {
    let (id, set) = match named(server, headers, id) {
        Ok(found) => found,
        Err(response) => return *response,
    };
    if reread {
        set.invalidate(&id).await;
    }
    match set.lookup(&id).await {
        Ok(Some(_)) => {
            set.stop(&id).await;
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(None) => not_found(),
        Err(error) => failed(error),
    }
}

async fn health(
    State(server): State<Arc<Server>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let (tenant, set) = match named(&server, &headers, &id) {
        Ok(found) => found,
        Err(response) => return *response,
    };
    // As the reference, asking starts the tenant (and its pending migrations).
    let app = match set.app(&tenant).await {
        Ok(app) => app,
        Err(crate::tenants::TenantError::NotFound) => return not_found(),
        Err(error) => return failed(error),
    };
    let db_connected = match &app.postgres {
        Some(postgres) => postgres.ping().await,
        None => false,
    };
    let replication_connected = app
        .postgres
        .as_ref()
        .is_some_and(|p| p.replication_streaming());
    let connected = app.metrics.connections();
    Json(json!({"data": {
        "healthy": !(connected > 0 && app.postgres.is_some() && !db_connected),
        "db_connected": db_connected,
        "replication_connected": replication_connected,
        "connected_cluster": connected,
        "region": null,
        "node": null,
    }}))
    .into_response()
}
