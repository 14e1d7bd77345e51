//! The log output: formatted lines go through a bounded queue to one writer thread, so that a
//! slow, full or closed log destination (a dead log shipper, `realtide | head`) never blocks,
//! fails or panics a task. Lines that find the queue full or whose write fails are dropped
//! and counted ([`lost_lines`], exported as `realtide_log_lines_dropped_total`).
//!
//! Also the process's few direct lines on standard output and error (`realtide listening on`,
//! start-up errors): [`say`] and [`complain`] ignore write errors instead of panicking as
//! `println!` does on a closed pipe.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::Duration;

/// Lines the queue holds before new ones are dropped.
const QUEUE_LINES: usize = 8192;

/// Lines dropped because the queue was full or the write failed (process-wide counter).
static LOST: AtomicU64 = AtomicU64::new(0);

/// Log lines dropped so far.
pub fn lost_lines() -> u64 {
    LOST.load(Ordering::Relaxed)
}

#[derive(Debug)]
enum Item {
    Line(Vec<u8>),
    Flush(std::sync::mpsc::Sender<()>),
}

/// The writer end handed to `tracing_subscriber` (cheap to clone).
#[derive(Debug, Clone)]
pub struct LogOutput {
    queue: SyncSender<Item>,
}

impl LogOutput {
    /// Starts the writer thread over standard error.
    pub fn stderr() -> Self {
        let (queue, lines) = std::sync::mpsc::sync_channel(QUEUE_LINES);
        let started = std::thread::Builder::new()
            .name("realtide-log".into())
            .spawn(move || write_lines(lines, &mut std::io::stderr()));
        if started.is_err() {
            // No thread: every line is dropped (and counted), nothing blocks.
            complain("realtide: cannot start the log writer thread; logs are dropped");
        }
        Self { queue }
    }

    /// Waits at most `limit` for queued lines to be written (at exit).
    pub fn flush(&self, limit: Duration) {
        let (done, wait) = std::sync::mpsc::channel();
        if self.queue.try_send(Item::Flush(done)).is_ok() {
            let _ = wait.recv_timeout(limit);
        }
    }

    fn send(&self, line: Vec<u8>) {
        match self.queue.try_send(Item::Line(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                LOST.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Writes queued lines in batches until every sender is gone. Write errors drop the batch.
fn write_lines(lines: Receiver<Item>, out: &mut dyn Write) {
    let mut batch: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut in_batch = 0u64;
    let mut flushed = Vec::new();
    loop {
        let Ok(first) = lines.recv() else {
            return;
        };
        let mut next = Some(first);
        while let Some(item) = next {
            match item {
                Item::Line(line) => {
                    batch.extend_from_slice(&line);
                    in_batch += 1;
                }
                Item::Flush(done) => flushed.push(done),
            }
            next = if batch.len() < 256 * 1024 {
                lines.try_recv().ok()
            } else {
                None
            };
        }
        if !batch.is_empty() && out.write_all(&batch).and_then(|()| out.flush()).is_err() {
            LOST.fetch_add(in_batch, Ordering::Relaxed);
        }
        batch.clear();
        in_batch = 0;
        for done in flushed.drain(..) {
            let _ = done.send(());
        }
    }
}

/// One formatted event; queued when dropped.
#[derive(Debug)]
pub struct LineWriter {
    output: LogOutput,
    line: Vec<u8>,
}

impl Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.line.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if !self.line.is_empty() {
            self.output.send(std::mem::take(&mut self.line));
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogOutput {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            output: self.clone(),
            line: Vec::with_capacity(256),
        }
    }
}

/// Installs the global subscriber (`RUST_LOG`, default `info` with PostgreSQL notices kept to
/// warnings) writing through a [`LogOutput`], which it returns for the final flush.
pub fn init(json: bool) -> LogOutput {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tokio_postgres=warn"));
    let output = LogOutput::stderr();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(output.clone());
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
    output
}

/// An error and its sources, `: `-separated, for a log line or a start-up message.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A line on standard output; a closed or full pipe is not an error worth dying for.
pub fn say(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

/// A line on standard error, ignoring failures.
pub fn complain(text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A destination whose writes always fail (a closed pipe).
    struct Closed;

    impl Write for Closed {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn failed_writes_are_counted_and_flush_still_answers() {
        let (queue, lines) = std::sync::mpsc::sync_channel(16);
        let thread = std::thread::spawn(move || write_lines(lines, &mut Closed));
        let output = LogOutput { queue };
        let before = lost_lines();
        for _ in 0..3 {
            let mut writer = tracing_subscriber::fmt::MakeWriter::make_writer(&output);
            assert!(writer.write_all(b"line\n").is_ok());
        }
        output.flush(Duration::from_secs(5));
        assert!(lost_lines() >= before + 3);
        drop(output);
        assert!(thread.join().is_ok());
    }

    #[test]
    fn a_full_queue_drops_instead_of_blocking() {
        // No reader: the queue fills, and further lines are dropped at once.
        let (queue, _lines) = std::sync::mpsc::sync_channel(2);
        let output = LogOutput { queue };
        let before = lost_lines();
        for _ in 0..10 {
            output.send(b"x\n".to_vec());
        }
        assert!(lost_lines() >= before + 8);
    }
}
