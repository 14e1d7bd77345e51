//! The realtide server as a library: [`run`] serves a bound listener until shutdown; the
//! `realtide` binary (`main.rs`) only parses the command line and calls it, and the `dev` and
//! `token` commands are modules here.
//!
//! Module map, from the top of the import graph down (a module imports only from the rows
//! below it; `cargo test` checks it, see `tests/layers.rs`):
//! - [`http`]: routes, the WebSocket upgrade endpoint, the broadcast API, health, metrics.
//! - [`session`]: one connection's reader loop, one file per client message kind.
//! - [`tenants`]: the projects of one process: one implicit project, or the tenants of
//!   `TENANTS_FILE`, started on first use and stopped when idle.
//! - [`app`]: the state of one project in one value ([`app::App`]).
//! - [`cluster`]: several nodes as one over NATS: broadcasts, presence and membership across
//!   nodes (the shared change stream is [`changes::shared`]).
//! - [`changes`]: postgres_changes from the replication slot to the sockets (source, journal,
//!   feed, delivery, subscriptions, resume).
//! - [`db`]: pools, TLS to PostgreSQL, schema, catalog, private-channel authorization, replay.
//! - [`channels`]: topics and fan-out, presence, the publish path, broadcast frames.
//! - [`ws`]: the transport: listener, TLS, frame reader, writer task.
//! - [`outbox`]: a connection's bounded outbound queue, change cursors and client receipts.
//! - [`config`]: typed settings from flags, file and environment, validated once.
//! - [`error`]: client-facing errors and their wire form.
//! - [`limits`], [`metrics`], [`logs`], [`shutdown`]: rate and count limits, counters, the log
//!   output, the signal thread.
//! - [`dev`], [`token`]: the `realtide dev` and `realtide token` commands.

pub mod app;
pub mod changes;
pub mod channels;
pub mod cluster;
pub mod config;
pub mod db;
pub mod dev;
pub mod error;
pub mod http;
pub mod limits;
pub mod logs;
pub mod metrics;
pub mod outbox;
pub mod session;
pub mod shutdown;
pub mod tenants;
pub mod token;
pub mod ws;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What the serving code needs from the process around it.
pub struct Process {
    /// The log output (flushed before a forced exit).
    pub logs: logs::LogOutput,
    /// Runs before a forced exit.
    pub forced_exit: Option<shutdown::ForcedExit>,
    /// How a shutdown is asked for: `None` for SIGTERM/SIGINT (with the forced exit after
    /// `SHUTDOWN_TIMEOUT_MS`); a token for a server embedded in another program (tests), which
    /// watches no signal and never exits the process.
    pub stop: Option<CancellationToken>,
}

impl std::fmt::Debug for Process {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Process")
            .field("forced_exit", &self.forced_exit.is_some())
            .finish_non_exhaustive()
    }
}

/// Binds the listen address.
pub async fn bind(config: &config::Config) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {} (PORT/HOST): {e}", config.listen))
}

/// Serves `config` on a bound listener until a shutdown signal (SIGTERM/SIGINT), then drains
/// within `SHUTDOWN_TIMEOUT_MS`.
pub async fn run(
    config: config::Config,
    listener: tokio::net::TcpListener,
    process: Process,
) -> anyhow::Result<()> {
    let local = listener.local_addr()?;
    let link = match &config.cluster {
        None => None,
        Some(settings) => {
            let connection = cluster::connect(settings)
                .await
                // An unreachable NATS at start is a settings problem: one line, exit code 2.
                .map_err(|e| config::ConfigError::Cluster(logs::error_chain(&e)))?;
            let client = connection.client.clone();
            let shared = match &config.database {
                None => None,
                Some(_) => Some(Arc::new(
                    changes::shared::SharedStream::open(
                        client.clone(),
                        &settings.scope,
                        settings.stream_max_age,
                        settings.stream_replicas,
                    )
                    .await
                    .map_err(|e| {
                        anyhow::anyhow!("{}", logs::error_chain(&cluster::ClusterError::Stream(e)))
                    })?,
                )),
            };
            let nats_max = client.server_info().max_payload;
            if nats_max < config.max_payload_bytes + 1024 {
                tracing::warn!(
                    nats_max_payload = nats_max,
                    payload_limit = config.max_payload_bytes,
                    "the NATS server's max_payload is below TENANT_MAX_PAYLOAD_SIZE_IN_KB: larger broadcasts reach this node's subscribers only; raise max_payload in the NATS configuration"
                );
            }
            tracing::info!(node = %settings.node, "joined the cluster");
            Some(app::ClusterLink { connection, shared })
        }
    };
    let process_parts = app::ProcessParts::new(&config);
    let root = process_parts.shutdown.clone();
    match process.stop {
        None => shutdown::watch(
            root.clone(),
            config.shutdown_timeout,
            process.logs,
            process.forced_exit,
        )
        .map_err(|e| anyhow::anyhow!("cannot watch for signals: {e}"))?,
        Some(stop) => {
            let shutdown = root.clone();
            tokio::spawn(async move {
                stop.cancelled().await;
                shutdown.cancel();
            });
        }
    }
    let tenants = match config.tenants.clone() {
        Some(settings) => tenants::Tenants::many(settings, process_parts.clone()),
        None => {
            let app = app::App::new(config.clone(), link, &process_parts, None, root.clone())
                .map_err(|e| anyhow::anyhow!("{} (CHANGES_DIR)", logs::error_chain(&e)))?;
            if let Some(cluster) = &app.cluster {
                cluster.start();
                cluster.settle().await;
            }
            tenants::Tenants::one(app)
        }
    };
    // Tests and scripts read the actual port from this line.
    logs::say(&format!("realtide listening on {local}"));
    tracing::info!(addr = %local, tls = config.tls.is_some(), tenants = config.tenants.is_some(), "listening");
    let server = Arc::new(http::Server {
        tenants,
        process: process_parts,
        config,
    });
    serve(server.clone(), listener).await?;
    // Every session closed: confirm the slots and save positions.
    server.tenants.finish().await;
    tracing::info!("stopped");
    Ok(())
}

/// Every connection is a file descriptor: raise the soft limit to the hard one (and the hard
/// one too when privileged) so that MAX_CONNECTIONS, not the default 1024, bounds them.
pub fn raise_open_files() {
    let wanted = 1u64 << 20;
    if let Ok((_, hard)) = rlimit::Resource::NOFILE.get()
        && hard < wanted
    {
        let _ = rlimit::Resource::NOFILE.set(wanted, wanted);
    }
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open-file limit"),
        Err(error) => tracing::warn!(%error, "could not raise the open-file limit"),
    }
}

/// How long shutdown waits for sessions to flush their goodbyes.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);

/// Serves until the process's shutdown token is cancelled, then drains: every session sends
/// `Server requested disconnect` and closes with 1012, within a deadline.
async fn serve(server: Arc<http::Server>, listener: TcpListener) -> std::io::Result<()> {
    let shutdown = server.process.shutdown.clone();
    let stop = async move { shutdown.cancelled().await };
    let routes = http::router(server.clone()).layer(axum::middleware::from_fn(
        crate::ws::listener::request_deadline,
    ));
    // The tenant is chosen (and a `/t/{tenant}` prefix taken off the path) before routing.
    let routes = http::with_tenants(server.clone(), routes);
    let connected = axum::ServiceExt::<axum::extract::Request>::into_make_service_with_connect_info::<
        crate::ws::listener::Connection,
    >(routes);
    match server.config.tls.clone() {
        None => {
            let listener =
                crate::ws::listener::GuardedListener::new(listener, server.process.sockets.clone());
            axum::serve(listener, connected)
                .with_graceful_shutdown(stop)
                .await?
        }
        Some(tls) => {
            let listener = crate::ws::tls::TlsListener::new(
                listener,
                tls.acceptor,
                server.process.sockets.clone(),
                server.config.handshake_timeout,
            )?;
            axum::serve(listener, connected)
                .with_graceful_shutdown(stop)
                .await?
        }
    }
    // axum's graceful shutdown does not cover upgraded sockets: sessions watch their project's
    // disconnect token, which fires once decoded changes were handed to them (bounded by the
    // feed's drain deadline).
    server.tenants.disconnect_all().await;
    let tasks = &server.process.tasks;
    tasks.close();
    if tokio::time::timeout(SHUTDOWN_DEADLINE, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("shutdown deadline passed with sessions still open");
    }
    Ok(())
}
