//! `realtide`: a Supabase Realtime compatible server. This binary parses the command line
//! and runs the library ([`realtide_server::run`]) or one of its commands (`dev`, `token`).

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use realtide_server::config::{self, ServeArgs};
use realtide_server::{Process, dev, logs, token};

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
    realtide_server::raise_open_files();
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
        stop: None,
    };
    let result = runtime.block_on(serve(config, process));
    // Tasks still waiting on something are not waited for.
    runtime.shutdown_background();
    logs.flush(Duration::from_millis(500));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            logs::complain(&format!("realtide: {error:#}"));
            // Settings that turn out unusable only when used (an unreachable NATS) exit like
            // the ones rejected before start.
            if error.downcast_ref::<config::ConfigError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

async fn serve(config: config::Config, process: Process) -> anyhow::Result<()> {
    let listener = realtide_server::bind(&config).await?;
    realtide_server::run(config, listener, process).await
}
