//! An in-process test harness over the library: [`TestApp`] runs `realtide_server::run` in the
//! test's own runtime on a loopback port, so a test can put faults between the server and what
//! it talks to (a database behind a [`Gate`] that stops answering, a client that never reads)
//! and still use the same clients as the binary-level tests in `tests/` (through
//! [`realtide_tests::Endpoint`]). The binary-level tests stay the reference for everything a
//! user runs; this harness is for faults that need a hand inside the process's surroundings.

use std::net::SocketAddr;
use std::ops::Deref;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use realtide_server::Process;
use realtide_server::config::ServeArgs;
use realtide_tests::Endpoint;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    serve: ServeArgs,
}

/// A realtide server running in this process.
#[derive(Debug)]
pub struct TestApp {
    endpoint: Endpoint,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Deref for TestApp {
    type Target = Endpoint;

    fn deref(&self) -> &Endpoint {
        &self.endpoint
    }
}

/// Settings for a [`TestApp`], as command-line flags (`--db-url`, `--slot-name`, ...).
#[derive(Debug, Default)]
pub struct TestAppBuilder {
    flags: Vec<String>,
}

impl TestApp {
    /// A server on 127.0.0.1 with the test secret and short error backoffs.
    pub fn builder() -> TestAppBuilder {
        TestAppBuilder::default()
    }

    /// Asks for a graceful shutdown and waits up to `limit` for `run` to return.
    pub async fn stop(self, limit: Duration) -> Result<()> {
        self.stop.cancel();
        match tokio::time::timeout(limit, self.task).await {
            Ok(joined) => joined.context("the server task panicked")?,
            Err(_) => bail!("the server did not stop within {limit:?}"),
        }
    }
}

impl TestAppBuilder {
    /// Adds `--flag value`.
    pub fn setting(mut self, flag: &str, value: &str) -> Self {
        self.flags.push(flag.to_owned());
        self.flags.push(value.to_owned());
        self
    }

    /// Validates the settings as the binary does, binds a loopback port and starts serving.
    pub async fn start(self) -> Result<TestApp> {
        let mut argv: Vec<String> = [
            "realtide",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--jwt-secret",
            realtide_tests::SECRET,
            "--channel-error-backoff-ms",
            "50",
            "--connect-error-backoff-ms",
            "50",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        argv.extend(self.flags);
        let cli = Cli::try_parse_from(&argv).context("test server settings")?;
        let config = cli.serve.into_config().context("test server config")?;
        let listener = realtide_server::bind(&config).await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let process = Process {
            logs: realtide_server::logs::LogOutput::stderr(),
            forced_exit: None,
            stop: Some(stop.clone()),
        };
        let task = tokio::spawn(realtide_server::run(config, listener, process));
        Ok(TestApp {
            endpoint: Endpoint { addr },
            stop,
            task,
        })
    }
}

/// A TCP relay in front of a server (PostgreSQL) that can be frozen: while frozen it forwards
/// nothing in either direction and keeps every connection open, as a database that stopped
/// answering (a stuck host, a full disk, a network partition without resets).
#[derive(Debug)]
pub struct Gate {
    /// Where clients connect instead of the server.
    pub addr: SocketAddr,
    frozen: watch::Sender<bool>,
    stop: CancellationToken,
}

impl Gate {
    /// Relays 127.0.0.1:<new port> to `target`.
    pub async fn open(target: SocketAddr) -> Result<Gate> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (frozen, watching) = watch::channel(false);
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    biased;
                    () = stopped.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                let Ok((inbound, _)) = accepted else { continue };
                let Ok(outbound) = TcpStream::connect(target).await else {
                    continue;
                };
                let (in_read, in_write) = inbound.into_split();
                let (out_read, out_write) = outbound.into_split();
                tokio::spawn(relay(in_read, out_write, watching.clone(), stopped.clone()));
                tokio::spawn(relay(out_read, in_write, watching.clone(), stopped.clone()));
            }
        });
        Ok(Gate { addr, frozen, stop })
    }

    /// Stops forwarding (connections stay open).
    pub fn freeze(&self) {
        self.frozen.send_replace(true);
    }

    /// Forwards again, including what was held back.
    pub fn thaw(&self) {
        self.frozen.send_replace(false);
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn relay(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut frozen: watch::Receiver<bool>,
    stop: CancellationToken,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        // Frozen: read nothing, so the sender's buffers fill as with a stuck peer.
        if frozen.wait_for(|f| !*f).await.is_err() {
            return;
        }
        let read = tokio::select! {
            biased;
            () = stop.cancelled() => return,
            read = from.read(&mut buffer) => read,
            // Freezing while a read waits: go back and wait for the thaw.
            _ = frozen.wait_for(|f| *f) => continue,
        };
        let n = match read {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if frozen.wait_for(|f| !*f).await.is_err() {
            return;
        }
        if to
            .write_all(buffer.get(..n).unwrap_or_default())
            .await
            .is_err()
        {
            return;
        }
    }
}
