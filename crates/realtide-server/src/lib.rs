//! The realtide server as a library: [`run`] serves a bound listener until shutdown; the
//! `realtide` binary (`main.rs`) only parses the command line and calls it, and the `dev` and
//! `token` commands are modules here.
//!
//! Module map:
//! - [`config`]: typed settings from flags and the environment, validated once.
//! - [`app`]: shared state, HTTP routes, listening and graceful shutdown.
//! - [`socket`]: the WebSocket endpoint and connect-time checks.
//! - [`api`]: the HTTP broadcast API (`/api/broadcast`, `/api/ping`).
//! - [`authorization`]: private-channel RLS checks on `realtime.messages`.
//! - [`broadcast`]: user broadcasts from the database and HTTP, and their frames.
//! - [`replay`]: replay of stored private broadcasts at join.
//! - [`schema`]: the `realtime` schema migrations and message partitions.
//! - [`postgres`], [`database`], [`catalog`], [`changes`], [`delivery`], [`replication`]:
//!   postgres_changes and the replication stream.
//! - [`journal`], [`feed`], [`resume`]: the change journal on disk, the task that delivers
//!   from it (cohorts, backpressure, retries, drain), and resume records of departed
//!   subscribers.
//! - [`session`]: one connection's reader loop and its channels (join, leave, broadcast,
//!   presence, tokens).
//! - [`frames`]: the WebSocket frame reader (small, growable buffers).
//! - [`outbox`]: the bounded per-connection outbound queue and the writer task.
//! - [`registry`]: topics, subscribers and fan-out.
//! - [`presence`]: presence state of a topic.
//! - [`error`]: client-facing errors and their wire form.
//! - [`metrics`]: process-wide counters.
//! - [`limits`]: rate counters, connection/user counts and the presence call window.
//! - [`token`]: the `realtide token` command.
//! - [`postgres_tls`]: TLS to PostgreSQL (`DB_SSL`).
//! - [`listener`]: accepted sockets counted from accept and given `HANDSHAKE_TIMEOUT_MS`.
//! - [`tls`]: native TLS for the listener (`TLS_CERT`, `TLS_KEY`).
//! - [`dev`]: the `realtide dev` command (private PostgreSQL + realtide).
//! - [`logs`]: the log output (a bounded queue to one writer thread; never blocks a task).
//! - [`shutdown`]: the signal thread and the bound on the drain (`SHUTDOWN_TIMEOUT_MS`).

pub mod api;
pub mod app;
pub mod authorization;
pub mod broadcast;
pub mod catalog;
pub mod changes;
pub mod config;
pub mod database;
pub mod delivery;
pub mod dev;
pub mod error;
pub mod feed;
pub mod frames;
pub mod journal;
pub mod limits;
pub mod listener;
pub mod logs;
pub mod metrics;
pub mod outbox;
pub mod postgres;
pub mod postgres_tls;
pub mod presence;
pub mod publish;
pub mod registry;
pub mod replay;
pub mod replication;
pub mod resume;
pub mod schema;
pub mod session;
pub mod shutdown;
pub mod socket;
pub mod tls;
pub mod token;

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// What the serving code needs from the process around it.
pub struct Process {
    /// The log output (flushed before a forced exit).
    pub logs: logs::LogOutput,
    /// Runs before a forced exit.
    pub forced_exit: Option<shutdown::ForcedExit>,
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
    let app = app::App::new(config)
        .map_err(|e| anyhow::anyhow!("{} (CHANGES_DIR)", logs::error_chain(&e)))?;
    shutdown::watch(
        app.shutdown.clone(),
        app.config.shutdown_timeout,
        process.logs,
        process.forced_exit,
    )
    .map_err(|e| anyhow::anyhow!("cannot watch for signals: {e}"))?;
    app.tasks
        .spawn(app.limits.clone().run(app.shutdown.clone()));
    // Shutdown runs in stages: the signal stops the accept loop and the replication stream;
    // the change feed hands what was decoded to the sockets; then sessions close; then the
    // slot is confirmed and positions saved. Without a database, sessions close at once.
    let stages = feed::Stages {
        shutdown: app.shutdown.clone(),
        replication_stopped: CancellationToken::new(),
        disconnect: app.disconnect.clone(),
    };
    let finished = CancellationToken::new();
    let background = tokio_util::task::TaskTracker::new();
    if let Some(postgres) = app.postgres.clone() {
        let outlet = replication::Outlet {
            publisher: app.publisher.clone(),
            max_payload: app.config.max_payload_bytes,
        };
        background.spawn(replication::run(
            postgres.clone(),
            outlet,
            app.metrics.clone(),
            stages.clone(),
            finished.clone(),
        ));
        background.spawn(feed::run(
            postgres.clone(),
            app.limits.clone(),
            app.metrics.clone(),
            delivery::RenderLimits {
                max_record_bytes: postgres.config.max_record_bytes,
            },
            stages.clone(),
        ));
        background.spawn(feed::keeper(postgres.clone(), finished.clone()));
        app.tasks
            .spawn(schema::janitor(postgres, app.shutdown.clone()));
    } else {
        let disconnect = app.disconnect.clone();
        let shutdown = app.shutdown.clone();
        tokio::spawn(async move {
            shutdown.cancelled().await;
            disconnect.cancel();
        });
    }
    // Tests and scripts read the actual port from this line.
    logs::say(&format!("realtide listening on {local}"));
    tracing::info!(addr = %local, tls = app.config.tls.is_some(), "listening");
    app::serve(app, listener).await?;
    // Every session closed: confirm the slot and save positions.
    finished.cancel();
    background.close();
    if tokio::time::timeout(Duration::from_secs(30), background.wait())
        .await
        .is_err()
    {
        tracing::warn!("replication did not stop in time");
    }
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
