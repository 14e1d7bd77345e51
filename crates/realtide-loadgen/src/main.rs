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
    /// Row changes of one RLS table streamed to many users (issue 3 point 5).
    PostgresChanges(PostgresChangesArgs),
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
        eprintln!("ERROR: wrong, duplicate or stale deliveries (see the report)");
        std::process::exit(3);
    }
    Ok(())
}

async fn run(cli: &Cli) -> Result<serde_json::Value> {
    let endpoint = Endpoint::parse(&cli.server_url)?;
    let sources = SourceAddrs::loopback(cli.source_addrs, &endpoint.addr);
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
    }
}
