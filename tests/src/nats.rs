//! A throwaway `nats-server` with JetStream for the cluster tests: a temporary store directory
//! and a free loopback port, both kept across [`Nats::stop`] / [`Nats::start_again`] (the
//! NATS-restart fault test); killed and removed on drop.
//!
//! The binary is `NATS_SERVER` when set, else `nats-server` on `PATH`, else
//! `/usr/sbin/nats-server` or `/usr/local/bin/nats-server` (Debian's package `nats-server`).
//! Without one, [`Nats::start`] fails with a message saying how to install it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// How long a start may take before it counts as failed.
const START_WAIT: Duration = Duration::from_secs(20);

/// File in a store directory naming the test process that owns it (for reaping orphans).
const OWNER_FILE: &str = "realtide-tests.owner";
/// File in a store directory holding the nats-server's pid (`-P`).
const PID_FILE: &str = "nats-server.pid";

/// Where the `nats-server` binary is, or why there is none.
pub fn nats_server_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("NATS_SERVER") {
        let path = PathBuf::from(path);
        ensure!(
            path.is_file(),
            "NATS_SERVER={} does not exist",
            path.display()
        );
        return Ok(path);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("nats-server");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    for candidate in ["/usr/sbin/nats-server", "/usr/local/bin/nats-server"] {
        if Path::new(candidate).is_file() {
            return Ok(PathBuf::from(candidate));
        }
    }
    bail!(
        "the cluster tests need nats-server (2.9 or newer, with JetStream): install it \
         (`apt-get install nats-server`; .ci/run does this) or point NATS_SERVER at the binary"
    )
}

/// A running (or stopped, restartable) `nats-server -js` on a fixed loopback port and store
/// directory.
#[derive(Debug)]
pub struct Nats {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    log: Arc<Mutex<String>>,
}

/// Kills nats-servers left behind by test processes that no longer exist and removes their
/// directories. Directories whose owner is alive, or without an owner file, are left alone.
fn reap_orphans() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let ours = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("realtide-nats."));
        if !ours {
            continue;
        }
        let Ok(owner) = std::fs::read_to_string(path.join(OWNER_FILE)) else {
            continue;
        };
        let alive = |pid: &str| {
            pid.trim()
                .parse::<u32>()
                .is_ok_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
        };
        if alive(&owner) {
            continue;
        }
        if let Ok(pid) = std::fs::read_to_string(path.join(PID_FILE))
            && alive(&pid)
        {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", pid.trim()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&path);
    }
}

fn free_port() -> Result<u16> {
    let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(probe.local_addr()?.port())
}

impl Nats {
    /// Starts a nats-server with JetStream in a new temporary directory on a free port, and
    /// waits until it accepts clients with JetStream enabled.
    pub async fn start() -> Result<Nats> {
        nats_server_binary()?;
        reap_orphans();
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "realtide-nats.{}.{}.{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(dir.join(OWNER_FILE), std::process::id().to_string())?;
        let mut nats = Nats {
            child: None,
            port: 0,
            dir,
            log: Arc::new(Mutex::new(String::new())),
        };
        // A port found free may be taken before the server binds it: try a few.
        let mut last = None;
        for _ in 0..4 {
            nats.port = free_port()?;
            match nats.start_again().await {
                Ok(()) => return Ok(nats),
                Err(error) => last = Some(error),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("nats-server did not start")))
    }

    /// The client URL (`nats://127.0.0.1:<port>`).
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The port it listens on (the same across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The JetStream store directory's parent (the same across restarts).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether a server process is running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// Whether the server process is alive (not exited, not a zombie), without reaping it.
    pub fn alive(&self) -> bool {
        let Some(pid) = self.child.as_ref().and_then(Child::id) else {
            return false;
        };
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| {
                stat.rsplit_once(')')
                    .map(|(_, rest)| rest.trim_start().starts_with('Z'))
            })
            .is_some_and(|zombie| !zombie)
    }

    /// Everything the server logged (all generations), for failure messages.
    pub fn log(&self) -> String {
        self.log.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Starts the server (again) on the same port and store directory and waits until it
    /// accepts clients with JetStream enabled. A no-op while one runs.
    pub async fn start_again(&mut self) -> Result<()> {
        if self.is_running() {
            return Ok(());
        }
        let binary = nats_server_binary()?;
        let store = self.dir.join("store");
        let port = self.port.to_string();
        let deadline = tokio::time::Instant::now() + START_WAIT;
        // After a stop the port may linger for a moment: retry while the new process dies.
        loop {
            let mut child = Command::new(&binary)
                .arg("-js")
                .arg("-sd")
                .arg(&store)
                .args(["-a", "127.0.0.1", "-p", &port])
                .arg("-P")
                .arg(self.dir.join(PID_FILE))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("spawning {}", binary.display()))?;
            for stream in [
                child
                    .stdout
                    .take()
                    .map(|s| Box::new(s) as Box<dyn AsyncReadLog>),
                child
                    .stderr
                    .take()
                    .map(|s| Box::new(s) as Box<dyn AsyncReadLog>),
            ]
            .into_iter()
            .flatten()
            {
                let sink = self.log.clone();
                tokio::spawn(async move {
                    let mut lines = BufReader::new(stream).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        if let Ok(mut text) = sink.lock()
                            && text.len() < 1 << 20
                        {
                            text.push_str(&line);
                            text.push('\n');
                        }
                    }
                });
            }
            match self.wait_ready(&mut child, deadline).await {
                Ok(()) => {
                    self.child = Some(child);
                    return Ok(());
                }
                Err(error) => {
                    let _ = child.start_kill();
                    let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
                    if tokio::time::Instant::now() >= deadline {
                        bail!(
                            "{error:#}\nnats-server on port {port} did not start within \
                             {START_WAIT:?}; its log:\n{}",
                            self.log()
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
    }

    /// Waits until the port answers with an INFO line announcing JetStream.
    async fn wait_ready(&self, child: &mut Child, deadline: tokio::time::Instant) -> Result<()> {
        loop {
            if let Some(status) = child.try_wait()? {
                bail!("nats-server exited: {status}");
            }
            if let Ok(Ok(mut stream)) = tokio::time::timeout(
                Duration::from_secs(1),
                TcpStream::connect(("127.0.0.1", self.port)),
            )
            .await
            {
                let mut head = vec![0u8; 4096];
                if let Ok(Ok(n)) =
                    tokio::time::timeout(Duration::from_secs(2), stream.read(&mut head)).await
                {
                    let text = String::from_utf8_lossy(head.get(..n).unwrap_or_default());
                    if text.starts_with("INFO ") {
                        ensure!(
                            text.contains("\"jetstream\":true"),
                            "nats-server runs without JetStream: {text}"
                        );
                        return Ok(());
                    }
                }
            }
            ensure!(
                tokio::time::Instant::now() < deadline,
                "nats-server did not accept clients in time"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the server gracefully (SIGTERM), bounded: SIGKILL after 10 s. The port and store
    /// directory are kept for [`Nats::start_again`].
    pub async fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if let Some(pid) = child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        if tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .is_err()
        {
            child.start_kill()?;
            child.wait().await?;
        }
        Ok(())
    }

    /// Kills the server (SIGKILL) and waits for it to exit.
    pub async fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.start_kill()?;
            child.wait().await?;
        }
        Ok(())
    }

    /// [`Nats::stop`], `down` of nothing, then [`Nats::start_again`].
    pub async fn restart(&mut self, down: Duration) -> Result<()> {
        self.stop().await?;
        tokio::time::sleep(down).await;
        self.start_again().await
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
            if let Some(pid) = child.id() {
                // Wait (bounded) so that the directory is not removed under a live process.
                for _ in 0..100 {
                    if !Path::new(&format!("/proc/{pid}")).exists()
                        || child.try_wait().is_ok_and(|s| s.is_some())
                    {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// stdout or stderr of the child, read line by line into the log.
trait AsyncReadLog: tokio::io::AsyncRead + Unpin + Send + 'static {}
impl<T: tokio::io::AsyncRead + Unpin + Send + 'static> AsyncReadLog for T {}
