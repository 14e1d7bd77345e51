//! Shutdown on SIGTERM / SIGINT, bounded in every state.
//!
//! A dedicated OS thread (not a runtime task: a wedged runtime or a task stuck on anything
//! cannot delay it) waits for the signals. The first one cancels the shutdown token, which
//! starts the staged drain; a second one, or `SHUTDOWN_TIMEOUT_MS` passing without the drain
//! finishing, ends the process at once. Ending early is safe for data: the replication slot is
//! only confirmed for what reached the sockets, so what was not confirmed is streamed again by
//! the next start, as after a kill -9.

use std::time::{Duration, Instant};

use signal_hook::consts::{SIGINT, SIGTERM};
use tokio_util::sync::CancellationToken;

/// Runs when the process ends without finishing its drain (the dev command stops its
/// PostgreSQL there).
pub type ForcedExit = Box<dyn Fn() + Send + 'static>;

/// Starts the signal thread.
pub fn watch(
    shutdown: CancellationToken,
    limit: Duration,
    logs: crate::logs::LogOutput,
    forced: Option<ForcedExit>,
) -> std::io::Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])?;
    std::thread::Builder::new()
        .name("realtide-signals".into())
        .spawn(move || {
            let Some(first) = signals.forever().next() else {
                return;
            };
            // Cancel first: nothing (not even logging) may come between the signal and the
            // drain starting.
            shutdown.cancel();
            tracing::info!(
                signal = first,
                limit_ms = limit.as_millis() as u64,
                "shutdown requested"
            );
            let deadline = Instant::now() + limit;
            let reason = loop {
                if signals.pending().next().is_some() {
                    break "a second signal arrived";
                }
                if Instant::now() >= deadline {
                    break "SHUTDOWN_TIMEOUT_MS passed";
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            tracing::error!(reason, "shutdown did not finish; exiting now");
            logs.flush(Duration::from_millis(500));
            if let Some(forced) = forced {
                forced();
            }
            std::process::exit(1);
        })?;
    Ok(())
}
