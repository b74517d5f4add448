//! The access log: one line per answered request, on stderr, in the host's log format.
//!
//! A request only formats its line and `try_send`s it into a bounded queue; one thread writes
//! the lines through a buffer, flushed whenever the queue runs dry. A full queue (stderr not
//! keeping up) drops lines and counts them, reported on stderr now and then: a log must never
//! hold a request up. Off by default (`--access-log`): at tens of thousands of requests per
//! second a line each is a cost an operator should choose.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use std::time::{Duration, SystemTime};
use tracing::warn;

use crate::log::LogFormat;

/// Lines waiting for the writer thread.
const QUEUE: usize = 8192;

/// What one line says.
pub struct Entry<'a> {
    pub request_id: &'a str,
    pub method: &'a str,
    pub target: &'a str,
    pub protocol: &'a str,
    pub status: u16,
    pub bytes: u64,
    pub took: Duration,
    pub peer: &'a str,
}

/// The access log's queue; writes happen on its own thread.
pub struct AccessLog {
    format: LogFormat,
    tx: SyncSender<String>,
    dropped: Arc<AtomicU64>,
    done: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl AccessLog {
    /// Starts the writer thread.
    pub fn start(format: LogFormat) -> std::io::Result<AccessLog> {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let counted = dropped.clone();
        let writer = std::thread::Builder::new()
            .name("effe-access".into())
            .spawn(move || write_lines(rx, &counted))?;
        Ok(AccessLog {
            format,
            tx,
            dropped,
            done: Mutex::new(Some(writer)),
        })
    }

    /// Queues one line; never blocks.
    pub fn log(&self, entry: &Entry<'_>) {
        let line = self.line(entry);
        if let Err(TrySendError::Full(_)) = self.tx.try_send(line) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn line(&self, e: &Entry<'_>) -> String {
        let time = humantime::format_rfc3339_millis(SystemTime::now());
        let ms = e.took.as_secs_f64() * 1000.0;
        match self.format {
            LogFormat::Text => format!(
                "{time} access request_id={} method={} target={:?} protocol={} status={} \
                 bytes={} duration_ms={ms:.3} peer={}",
                e.request_id, e.method, e.target, e.protocol, e.status, e.bytes, e.peer
            ),
            LogFormat::Json => serde_json::json!({
                "timestamp": time.to_string(),
                "access": true,
                "request_id": e.request_id,
                "method": e.method,
                "target": e.target,
                "protocol": e.protocol,
                "status": e.status,
                "bytes": e.bytes,
                "duration_ms": (ms * 1000.0).round() / 1000.0,
                "peer": e.peer,
            })
            .to_string(),
        }
    }

    /// At exit: writes what is queued (bounded by the writer, which only waits on stderr).
    pub fn close(&self) {
        // An empty line ends the writer: requests still hold senders.
        let _ = self.tx.send(String::new());
        if let Some(writer) = self.done.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = writer.join();
        }
    }
}

fn write_lines(rx: Receiver<String>, dropped: &AtomicU64) {
    // Not `stderr().lock()` for good: the host's own diagnostics write to stderr too.
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, std::io::stderr());
    let mut reported = 0;
    let mut open = true;
    while open {
        let Ok(first) = rx.recv() else { break };
        for line in std::iter::once(first).chain(rx.try_iter()) {
            if line.is_empty() {
                open = false;
                break;
            }
            let _ = writeln!(out, "{line}");
        }
        // Caught up: what was written so far goes out now, not when the buffer fills.
        let _ = out.flush();
        let now = dropped.load(Ordering::Relaxed);
        if now > reported {
            warn!(
                "{} access log lines dropped: stderr did not keep up",
                now - reported
            );
            reported = now;
        }
    }
}
