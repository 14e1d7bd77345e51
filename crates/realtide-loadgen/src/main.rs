//! `realtide-loadgen`: load generator for realtide (and any Supabase-Realtime-compatible
//! server). Thousands of WebSocket clients in one process, spread over loopback source
//! addresses; latency in HDR histograms; results as JSON.
//!
//! ```text
//! realtide-loadgen --server-url ws://127.0.0.1:4000/socket/websocket --secret S \
//!     --output bench/results/pg.json postgres-changes --users 1000 --rate 300 --rls on
//! ```

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use realtide_loadgen::client::{Endpoint, SourceAddrs};
use realtide_loadgen::scenario::postgres_changes::{self, PostgresChangesArgs};
use realtide_loadgen::scenario::{capacity, catchup, cluster, fanout};
use realtide_loadgen::{limits, report};

#[derive(Debug, Parser)]
#[command(name = "realtide-loadgen", version, about)]
struct Cli {
    /// WebSocket URL of the server (`ws://host:port[/socket/websocket]`).
    #[arg(
        long,
        env = "SERVER_URL",
        default_value = "ws://127.0.0.1:4000/socket/websocket",
        global = true
    )]
    server_url: String,
    /// HS256 secret the server verifies JWTs with; the load generator mints one per user.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true, global = true)]
    secret: Option<String>,
    /// Loopback source addresses to spread connections over (127.0.0.1 ..= 127.0.0.N);
    /// 0 lets the kernel choose. Ignored for non-loopback servers.
    #[arg(long, default_value_t = 8, global = true)]
    source_addrs: u8,
    /// Connections being opened and joined at the same time.
    #[arg(long, default_value_t = 200, global = true)]
    connect_concurrency: usize,
    /// Where to write the JSON report (`-` for stdout).
    #[arg(long, default_value = "-", global = true)]
    output: PathBuf,
    /// Free-form label stored in the report.
    #[arg(long, global = true)]
    label: Option<String>,
    /// Hard limit on the whole run in seconds; the process exits with an error beyond it.
    #[arg(long, default_value_t = 900, global = true)]
    max_runtime: u64,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Row changes of one RLS table streamed to many users.
    PostgresChanges(PostgresChangesArgs),
    /// postgres_changes subscribers across a server outage: stop, insert, restart, and
    /// every client reconnects and rejoins; catch-up time and rate, exactly-once checks.
    CatchUp(catchup::CatchUpArgs),
    /// P publishers, T topics, S subscribers per topic.
    Fanout(fanout::FanoutArgs),
    /// One topic, subscribers spread over the nodes of a cluster (`--nodes`), one publisher;
    /// full and half rate, latency on the publisher's node and on the others.
    Cluster(cluster::ClusterArgs),
    /// The reference's chat shape: 1-member echo channel plus a 6-member channel per user.
    Chat(fanout::ChatArgs),
    /// N idle joined connections; server memory per connection.
    Connections(capacity::ConnectionsArgs),
    /// Join rate and latency, public or private (RLS).
    Joins(capacity::JoinsArgs),
    /// M members tracking on one channel: time until everyone sees everyone.
    Presence(capacity::PresenceArgs),
    /// `realtime.send` inserts fanned out through the replication stream.
    DbBroadcast(capacity::DbBroadcastArgs),
    /// Run the raw-socket ceiling server (same frames, no server logic) on --port.
    CeilingServer {
        /// Port on 127.0.0.1 (0 picks one; the address is printed).
        #[arg(long, default_value_t = 0)]
        port: u16,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match limits::raise_nofile() {
        Ok(n) => eprintln!("open-file limit: {n}"),
        Err(e) => eprintln!("warning: could not raise the open-file limit: {e:#}"),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let max_runtime = Duration::from_secs(cli.max_runtime);
    let report = runtime.block_on(async {
        tokio::time::timeout(max_runtime, run(&cli))
            .await
            .map_err(|_| anyhow::anyhow!("run exceeded --max-runtime {max_runtime:?}"))?
    });
    // Client tasks may still be parked on sockets; do not wait for them.
    runtime.shutdown_timeout(Duration::from_secs(1));
    let mut report = report?;
    if let (Some(label), Some(obj)) = (&cli.label, report.as_object_mut()) {
        obj.insert("label".into(), serde_json::Value::String(label.clone()));
    }
    report::write_json(&cli.output, &report)?;
    let correct = report
        .get("correct")
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(true);
    if !correct {
        eprintln!(
            "ERROR: wrong, duplicate or stale deliveries (catch-up: also missing or out of order; see the report)"
        );
        std::process::exit(3);
    }
    Ok(())
}

async fn run(cli: &Cli) -> Result<serde_json::Value> {
    if let Scenario::CeilingServer { port } = &cli.scenario {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", *port)).await?;
        realtide_loadgen::ceiling::serve(listener).await?;
        return Ok(serde_json::Value::Null);
    }
    let endpoint = Endpoint::parse(&cli.server_url)?;
    let sources = SourceAddrs::loopback(cli.source_addrs, &endpoint.addr);
    let token = || -> Result<String> {
        let secret = cli
            .secret
            .as_deref()
            .context("--secret (or JWT_SECRET) is required")?;
        let now = realtide_loadgen::peer::now_micros() / 1_000_000;
        Ok(realtide_auth::sign_hs256(
            &serde_json::json!({"role": "authenticated", "sub": "00000000-0000-4000-8000-000000000001", "iat": now, "exp": now + 24 * 3600}),
            secret,
        ))
    };
    let concurrency = cli.connect_concurrency;
    let report = match &cli.scenario {
        Scenario::Fanout(args) => {
            let token = if args.protocol == realtide_loadgen::peer::Protocol::Socketio {
                String::new()
            } else {
                token()?
            };
            fanout::run(args, &endpoint, &sources, &token, concurrency).await?
        }
        Scenario::Cluster(args) => {
            cluster::run(
                args,
                &cli.server_url,
                cli.source_addrs,
                &token()?,
                concurrency,
            )
            .await?
        }
        Scenario::Chat(args) => {
            fanout::run_chat(args, &endpoint, &sources, &token()?, concurrency).await?
        }
        Scenario::Connections(args) => {
            let token = if args.protocol == realtide_loadgen::peer::Protocol::Socketio {
                String::new()
            } else {
                token()?
            };
            capacity::connections(args, &endpoint, &sources, &token, concurrency).await?
        }
        Scenario::Joins(args) => {
            capacity::joins(args, &endpoint, &sources, &token()?, concurrency).await?
        }
        Scenario::Presence(args) => {
            capacity::presence(args, &endpoint, &sources, &token()?, concurrency).await?
        }
        Scenario::DbBroadcast(args) => {
            capacity::db_broadcast(args, &endpoint, &sources, &token()?, concurrency).await?
        }
        Scenario::PostgresChanges(_) | Scenario::CatchUp(_) | Scenario::CeilingServer { .. } => {
            serde_json::Value::Null
        }
    };
    if !report.is_null() {
        eprintln!("{}", brief(&report));
        return Ok(report);
    }
    match &cli.scenario {
        Scenario::PostgresChanges(args) => {
            let secret = cli
                .secret
                .as_deref()
                .context("--secret (or JWT_SECRET) is required")?;
            let report =
                postgres_changes::run(args, &endpoint, &sources, secret, cli.connect_concurrency)
                    .await?;
            eprintln!("{}", postgres_changes::summary(&report));
            Ok(report)
        }
        Scenario::CatchUp(args) => {
            let secret = cli
                .secret
                .as_deref()
                .context("--secret (or JWT_SECRET) is required")?;
            let report =
                catchup::run(args, &endpoint, &sources, secret, cli.connect_concurrency).await?;
            eprintln!("{}", catchup::summary(&report));
            Ok(report)
        }
        _ => Ok(serde_json::Value::Null),
    }
}

/// One line for the terminal: the headline figures of any scenario's report.
fn brief(report: &serde_json::Value) -> String {
    let pick = |k: &str| report.get(k).map(|v| format!("{k}={v}"));
    [
        "scenario",
        "protocol",
        "delivered",
        "expected",
        "deliveries_per_s",
        "joins_per_s",
        "server_bytes_per_connection",
        "all_consistent",
        "server_cpu_s",
    ]
    .iter()
    .filter_map(|k| pick(k))
    .chain(
        report
            .get("latency")
            .or_else(|| report.get("time_to_consistent_ms"))
            .map(|l| {
                format!(
                    "p50={} p99={} max={}",
                    l["p50_ms"], l["p99_ms"], l["max_ms"]
                )
            }),
    )
    .collect::<Vec<_>>()
    .join(" ")
}
