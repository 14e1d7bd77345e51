//! `realtide`: a Supabase Realtime compatible server.
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

mod api;
mod app;
mod authorization;
mod broadcast;
mod catalog;
mod changes;
mod config;
mod database;
mod delivery;
mod dev;
mod error;
mod feed;
mod frames;
mod journal;
mod limits;
mod listener;
mod logs;
mod metrics;
mod outbox;
mod postgres;
mod postgres_tls;
mod presence;
mod registry;
mod replay;
mod replication;
mod resume;
mod schema;
mod session;
mod shutdown;
mod socket;
mod tls;
mod token;

use std::process::ExitCode;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use clap::{Parser, Subcommand};

use crate::config::ServeArgs;

/// realtide: a Supabase Realtime compatible server.
#[derive(Debug, Parser)]
#[command(
    name = "realtide",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (the default).
    Serve(ServeArgs),
    /// Start a private PostgreSQL and realtide against it (local development).
    Dev(dev::DevArgs),
    /// Print a JWT signed with the configured secret (HS256).
    Token(token::TokenArgs),
}

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let mut command = <Cli as clap::CommandFactory>::command();
    let file = match config::config_file(&args) {
        Ok(file) => file,
        Err(error) => {
            logs::complain(&format!("realtide: {error}"));
            return ExitCode::from(2);
        }
    };
    if let Some(file) = &file {
        command = match config::apply_file(command, file) {
            Ok(command) => command,
            Err(error) => {
                logs::complain(&format!("realtide: {error}"));
                return ExitCode::from(2);
            }
        };
    }
    let parsed = command
        .clone()
        .try_get_matches_from(&args)
        .and_then(|matches| {
            let cli = <Cli as clap::FromArgMatches>::from_arg_matches(&matches)?;
            // `realtide dev` binds loopback unless an address was asked for.
            let host_given = matches.subcommand_matches("dev").is_some_and(|dev| {
                matches!(
                    dev.value_source("host"),
                    Some(
                        clap::parser::ValueSource::CommandLine
                            | clap::parser::ValueSource::EnvVariable
                    )
                )
            });
            Ok((cli, host_given))
        });
    let (cli, host_given) = match parsed {
        Ok(parsed) => parsed,
        Err(error) if !error.use_stderr() => {
            // --help / --version
            let _ = error.print();
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            // One line naming the setting and where its value came from, not clap's usage
            // block.
            logs::complain(&format!(
                "realtide: {}",
                config::describe_args_error(&command, &error, file.as_ref())
            ));
            return ExitCode::from(2);
        }
    };
    let args = match cli.command {
        Some(Command::Serve(args)) => args,
        Some(Command::Token(args)) => return token::print(args),
        Some(Command::Dev(args)) => return dev::run(args, host_given),
        None => cli.serve,
    };
    let config = match args.into_config() {
        Ok(config) => config,
        Err(error) => {
            logs::complain(&format!("realtide: {error}"));
            return ExitCode::from(2);
        }
    };
    let logs = logs::init(config.json_logs);
    raise_open_files();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            logs::complain(&format!("realtide: cannot start the runtime: {error}"));
            return ExitCode::FAILURE;
        }
    };
    let process = Process {
        logs: logs.clone(),
        forced_exit: None,
    };
    let result = runtime.block_on(run(config, process));
    // Tasks still waiting on something are not waited for.
    runtime.shutdown_background();
    logs.flush(Duration::from_millis(500));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            logs::complain(&format!("realtide: {error:#}"));
            ExitCode::FAILURE
        }
    }
}

/// What the serving code needs from the process around it.
pub(crate) struct Process {
    /// The log output (flushed before a forced exit).
    pub logs: logs::LogOutput,
    /// Runs before a forced exit.
    pub forced_exit: Option<shutdown::ForcedExit>,
}

async fn run(config: config::Config, process: Process) -> anyhow::Result<()> {
    let (listener, local) = bind(&config).await?;
    serve_on(config, listener, local, process).await
}

/// Binds the listen address.
pub(crate) async fn bind(
    config: &config::Config,
) -> anyhow::Result<(tokio::net::TcpListener, std::net::SocketAddr)> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {} (PORT/HOST): {e}", config.listen))?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

/// Serves on a bound listener until a shutdown signal.
pub(crate) async fn serve_on(
    config: config::Config,
    listener: tokio::net::TcpListener,
    local: std::net::SocketAddr,
    process: Process,
) -> anyhow::Result<()> {
    let app = app::App::new(config)
        .map_err(|e| anyhow::anyhow!("{} (CHANGES_DIR)", replication::error_chain(&e)))?;
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
            registry: app.registry.clone(),
            limits: app.limits.clone(),
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
pub(crate) fn raise_open_files() {
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
