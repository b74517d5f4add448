//! Diagnostics go through `tracing` to stderr; what an effe's `run` reports (errors and panics)
//! goes to syslog, tagged with the effe's name and the request id, so that it lands where the
//! platform collects application logs. Without a reachable syslog (a bare container), those
//! messages go to stderr instead, after one warning.
//!
//! Syslog can stall (a full `/dev/log`, a black-holed `tcp://` target), and `run` fails on the
//! network threads for inline effes: so a failure is only queued there, never sent. One logger
//! thread owns the syslog connection and drains the bounded queue; what does not fit is dropped,
//! counted, and reported on stderr.

use std::io::{self, BufWriter, IsTerminal};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::OnceLock;

use abi_stable::std_types::RStr;
use effe_abi::abi::HostLogV1;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use syslog::{Facility, Formatter3164, Logger, LoggerBackend};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Where Run errors go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyslogTarget {
    Off,
    Unix(PathBuf),
    Udp(String),
    Tcp(String),
}

impl SyslogTarget {
    /// Parses `off`, `udp://HOST:PORT`, `tcp://HOST:PORT` or a unix socket path.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s == "off" {
            Ok(SyslogTarget::Off)
        } else if let Some(addr) = s.strip_prefix("udp://") {
            Ok(SyslogTarget::Udp(addr.to_owned()))
        } else if let Some(addr) = s.strip_prefix("tcp://") {
            Ok(SyslogTarget::Tcp(addr.to_owned()))
        } else if s.starts_with('/') {
            Ok(SyslogTarget::Unix(PathBuf::from(s)))
        } else {
            Err(format!(
                "--syslog {s:?}: expected a unix socket path (/dev/log), udp://HOST:PORT, \
                 tcp://HOST:PORT or off"
            ))
        }
    }

    fn describe(&self) -> String {
        match self {
            SyslogTarget::Off => "off".into(),
            SyslogTarget::Unix(p) => p.display().to_string(),
            SyslogTarget::Udp(a) => format!("udp://{a}"),
            SyslogTarget::Tcp(a) => format!("tcp://{a}"),
        }
    }
}

/// How the host's own diagnostics are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event (coloured on a terminal).
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// The most verbose level kept for the `effe_log` target (what effes log through `log`), in the numbering of
/// [`HostLogV1::max_level`]: set by [`init_tracing`].
static EFFE_MAX_LEVEL: AtomicU8 = AtomicU8::new(3);
/// The loaded effe's name, for its records.
static EFFE_NAME: OnceLock<&'static str> = OnceLock::new();
/// Where the effe's errors go once serving: syslog, as run failures do.
static EFFE_ERRORS: OnceLock<Arc<RunLog>> = OnceLock::new();

/// The host's log as lent to the effe named `name` (through `log@1`): its records become
/// `tracing` events of target `effe_log` (`EFFE_LOG=info,effe_log=debug`), and its errors also go to syslog once
/// [`route_effe_errors`] has been called. Made once per process.
pub fn effe_log(name: &'static str) -> &'static HostLogV1 {
    let _ = EFFE_NAME.set(name);
    Box::leak(Box::new(HostLogV1 {
        max_level: EFFE_MAX_LEVEL.load(Ordering::Relaxed),
        log: effe_record,
    }))
}

/// From now on, the effe's error records also go to `run_log` (syslog).
pub fn route_effe_errors(run_log: Arc<RunLog>) {
    let _ = EFFE_ERRORS.set(run_log);
}

/// One record from the effe. Called through a function pointer from the effe's code, so
/// nothing may unwind out of it.
extern "C" fn effe_record(level: u8, request_id: RStr<'_>, target: RStr<'_>, message: RStr<'_>) {
    let _ = std::panic::catch_unwind(|| {
        let (id, module, message) = (request_id.as_str(), target.as_str(), message.as_str());
        let id = if id.is_empty() { "-" } else { id };
        let effe = EFFE_NAME.get().copied().unwrap_or("-");
        if level <= 1 {
            if let Some(run_log) = EFFE_ERRORS.get() {
                return run_log.effe_error(id, module, message);
            }
        }
        macro_rules! event {
            ($level:expr) => {
                tracing::event!(
                    target: "effe_log", $level, effe = %effe, request_id = %id, module = %module,
                    "{message}"
                )
            };
        }
        match level {
            0 | 1 => event!(tracing::Level::ERROR),
            2 => event!(tracing::Level::WARN),
            3 => event!(tracing::Level::INFO),
            4 => event!(tracing::Level::DEBUG),
            _ => event!(tracing::Level::TRACE),
        }
    });
}

/// Sets up `tracing` to stderr; `EFFE_LOG` (or `RUST_LOG`) filters, default `info`.
///
/// Levels by target (`debug`, `info,effe_host::server=debug`), not `EnvFilter`'s span and field
/// directives: `EnvFilter` brings two regex engines, half a megabyte of the binary, which the
/// container image's size limit has no room for.
pub fn init_tracing(format: LogFormat) {
    let filter = ["EFFE_LOG", "RUST_LOG"]
        .iter()
        .find_map(|var| std::env::var(var).ok()?.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO));
    let effe_level = [
        (5, tracing::Level::TRACE),
        (4, tracing::Level::DEBUG),
        (3, tracing::Level::INFO),
        (2, tracing::Level::WARN),
        (1, tracing::Level::ERROR),
    ]
    .into_iter()
    .find(|(_, level)| filter.would_enable("effe_log", level))
    .map_or(0, |(n, _)| n);
    EFFE_MAX_LEVEL.store(effe_level, Ordering::Relaxed);
    // The builder's own level (INFO unless told) would come before the filter's.
    let builder = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .finish()
            .with(filter)
            .init(),
        LogFormat::Json => builder.json().with_ansi(false).finish().with(filter).init(),
    }
}

/// Lines waiting for the logger thread. Enough to ride out a burst of failures while syslog is
/// briefly slow; with [`MAX_MESSAGE`], at most about 4 MiB.
const QUEUE_CAPACITY: usize = 1024;
/// An effe's error message is cut to this many bytes: a queued line must stay small.
const MAX_MESSAGE: usize = 4096;
/// A syslog that takes longer than this to accept one message is treated as unreachable (its
/// messages go to stderr): without it, a black-holed target would hold the logger thread for
/// the kernel's TCP retry time (minutes) and its drops would go unreported.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// For `tcp://`: the kernel's default would be minutes against a black hole.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// After a failure, the next attempt waits this long, doubling up to `RETRY_MAX`.
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// While messages keep being dropped, at most one warning per this interval (one more when the
/// queue empties).
const REPORT_EVERY: Duration = Duration::from_secs(10);

type SyslogLogger = Logger<LoggerBackend, Formatter3164>;

/// The log of what effes report from `run`.
pub struct RunLog {
    effe: String,
    /// None with `--syslog off` (or without a logger thread): straight to stderr.
    queue: Option<Queue>,
}

/// The callers' side of the logger thread.
struct Queue {
    /// Taken by [`RunLog::close`]: the thread then sees the end of the queue.
    tx: RwLock<Option<SyncSender<String>>>,
    shared: Arc<Shared>,
    /// Disconnected when the logger thread has ended.
    done: Mutex<Receiver<()>>,
}

/// What the callers and the logger thread both see.
struct Shared {
    target: String,
    /// Locked by the thread only to take a line, never while sending one: at shutdown,
    /// [`RunLog::close`] takes what a stuck thread left.
    rx: Mutex<Receiver<String>>,
    /// Lines accepted into the queue.
    queued: AtomicU64,
    /// Lines the thread has sent to syslog, or written to stderr when it could not.
    delivered: AtomicU64,
    /// Lines refused because the queue was full.
    dropped: AtomicU64,
    /// Drops already warned about.
    reported: AtomicU64,
}

impl Shared {
    fn rx(&self) -> MutexGuard<'_, Receiver<String>> {
        self.rx.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One warning for the drops since the last one; true if there were any.
    fn report_drops(&self) -> bool {
        let dropped = self.dropped.load(Ordering::Relaxed);
        let before = self.reported.fetch_max(dropped, Ordering::Relaxed);
        if dropped <= before {
            return false;
        }
        tracing::warn!(
            syslog = %self.target,
            "{} effe log messages dropped: the syslog queue was full",
            dropped - before
        );
        true
    }
}

impl RunLog {
    /// Starts the logger thread for `target`, which connects. An unreachable syslog is not
    /// fatal: messages go to stderr.
    pub fn connect(target: SyslogTarget, effe: &str) -> RunLog {
        RunLog::with_capacity(target, effe, QUEUE_CAPACITY)
    }

    fn with_capacity(target: SyslogTarget, effe: &str, capacity: usize) -> RunLog {
        let queue = match target {
            SyslogTarget::Off => None,
            target => match Queue::start(target, capacity) {
                Ok(queue) => Some(queue),
                Err(e) => {
                    tracing::warn!(
                        error = %e,
                        "cannot start the syslog thread; effe errors are logged to stderr instead"
                    );
                    None
                }
            },
        };
        RunLog {
            effe: effe.to_owned(),
            queue,
        }
    }

    /// Logs what `run` reported for request `request_id`. Never blocks on syslog: the line is
    /// queued, or dropped (and counted) when the queue is full.
    pub fn run_failed(&self, request_id: &str, failure: &crate::plugin::Failure) {
        self.send(self.line(request_id, failure));
    }

    /// Logs an error the effe reported through `log` (from `module`; `request_id` empty
    /// outside `run`), as [`run_failed`](Self::run_failed) does.
    pub fn effe_error(&self, request_id: &str, module: &str, message: &str) {
        let id = if request_id.is_empty() {
            "-"
        } else {
            request_id
        };
        self.send(self.format(id, &format!("error in {module}"), message));
    }

    fn send(&self, line: String) {
        let unqueued = match &self.queue {
            Some(queue) => queue.push(line),
            None => Some(line),
        };
        if let Some(line) = unqueued {
            tracing::error!(target: "effe", "{line}");
        }
    }

    fn line(&self, request_id: &str, failure: &crate::plugin::Failure) -> String {
        let what = if failure.panicked {
            "run panicked"
        } else {
            "run failed"
        };
        self.format(request_id, what, &failure.message)
    }

    fn format(&self, request_id: &str, what: &str, message: &str) -> String {
        if message.len() <= MAX_MESSAGE {
            return format!(
                "effe={} request_id={request_id} {what}: {message}",
                self.effe
            );
        }
        let mut cut = MAX_MESSAGE;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        format!(
            "effe={} request_id={request_id} {what}: {} [cut at {MAX_MESSAGE} bytes]",
            self.effe,
            &message[..cut]
        )
    }

    /// Messages dropped so far because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.queue
            .as_ref()
            .map_or(0, |q| q.shared.dropped.load(Ordering::Relaxed))
    }

    /// At exit: stops queueing (later failures go straight to stderr), lets the logger thread
    /// deliver what is queued for up to `timeout`, then writes whatever it could not take to
    /// stderr, so that nothing queued is lost silently.
    pub fn close(&self, timeout: Duration) {
        let Some(queue) = &self.queue else { return };
        drop(queue.tx.write().unwrap_or_else(|e| e.into_inner()).take());
        let finished = queue
            .done
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .recv_timeout(timeout)
            != Err(RecvTimeoutError::Timeout);
        let shared = &queue.shared;
        let left: Vec<String> = shared.rx().try_iter().collect();
        if !finished {
            tracing::warn!(
                syslog = %shared.target,
                "syslog did not take the queued effe errors within {timeout:?}; the {} left \
                 follow on stderr",
                left.len()
            );
        }
        for line in &left {
            tracing::error!(target: "effe", "{line}");
        }
        let handled = shared.delivered.load(Ordering::Relaxed) + left.len() as u64;
        let in_flight = shared
            .queued
            .load(Ordering::Relaxed)
            .saturating_sub(handled);
        if in_flight > 0 {
            tracing::warn!(
                syslog = %shared.target,
                "{in_flight} effe log message(s) were being sent to syslog at exit and may be lost"
            );
        }
        shared.report_drops();
    }
}

impl Queue {
    fn start(target: SyslogTarget, capacity: usize) -> io::Result<Queue> {
        let (tx, rx) = mpsc::sync_channel(capacity);
        let (done_tx, done) = mpsc::channel();
        let shared = Arc::new(Shared {
            target: target.describe(),
            rx: Mutex::new(rx),
            queued: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            reported: AtomicU64::new(0),
        });
        let thread = LoggerThread {
            shared: shared.clone(),
            syslog: Syslog::new(target),
            last_report: None,
        };
        std::thread::Builder::new()
            .name("effe-syslog".into())
            .spawn(move || {
                thread.run();
                drop(done_tx);
            })?;
        Ok(Queue {
            tx: RwLock::new(Some(tx)),
            shared,
            done: Mutex::new(done),
        })
    }

    /// Queues `line`, or drops and counts it; gives it back once the queue is closed.
    fn push(&self, line: String) -> Option<String> {
        let tx = self.tx.read().unwrap_or_else(|e| e.into_inner());
        let Some(tx) = tx.as_ref() else {
            return Some(line);
        };
        match tx.try_send(line) {
            Ok(()) => {
                self.shared.queued.fetch_add(1, Ordering::Relaxed);
                None
            }
            Err(TrySendError::Full(_)) => {
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                None
            }
            Err(TrySendError::Disconnected(line)) => Some(line),
        }
    }
}

/// The logger thread: takes lines off the queue and delivers them.
struct LoggerThread {
    shared: Arc<Shared>,
    syslog: Syslog,
    last_report: Option<Instant>,
}

impl LoggerThread {
    /// Until the queue is closed and empty.
    fn run(mut self) {
        self.syslog.connect();
        loop {
            // Its own statement: the lock must be released before the blocking `recv` below.
            let next = self.shared.rx().try_recv();
            let line = match next {
                Ok(line) => line,
                Err(TryRecvError::Empty) => {
                    // Caught up: the drops of the last burst are reported now, not later.
                    self.report_drops();
                    match self.shared.rx().recv() {
                        Ok(line) => line,
                        Err(_) => break,
                    }
                }
                Err(TryRecvError::Disconnected) => break,
            };
            self.syslog.deliver(&line);
            self.shared.delivered.fetch_add(1, Ordering::Relaxed);
            if self
                .last_report
                .is_none_or(|at| at.elapsed() >= REPORT_EVERY)
            {
                self.report_drops();
            }
        }
        self.report_drops();
    }

    fn report_drops(&mut self) {
        if self.shared.report_drops() {
            self.last_report = Some(Instant::now());
        }
    }
}

/// The syslog connection, owned by the logger thread.
struct Syslog {
    target: SyslogTarget,
    conn: Option<SyslogLogger>,
    /// While disconnected after a failure: no attempt before this.
    retry_at: Instant,
    backoff: Duration,
    warned: bool,
}

impl Syslog {
    fn new(target: SyslogTarget) -> Syslog {
        Syslog {
            target,
            conn: None,
            retry_at: Instant::now(),
            backoff: RETRY_MIN,
            warned: false,
        }
    }

    /// To syslog, or to stderr when syslog cannot take it.
    fn deliver(&mut self, line: &str) {
        if !self.send(line) {
            tracing::error!(target: "effe", "{line}");
        }
    }

    fn send(&mut self, line: &str) -> bool {
        if self.conn.is_none() && (Instant::now() < self.retry_at || !self.connect()) {
            return false;
        }
        let Some(conn) = self.conn.as_mut() else {
            return false;
        };
        match conn.err(line) {
            Ok(()) => {
                self.backoff = RETRY_MIN;
                true
            }
            Err(e) => {
                // The daemon may have restarted: a new connection, after the backoff.
                self.conn = None;
                self.failed(&e.to_string());
                false
            }
        }
    }

    fn connect(&mut self) -> bool {
        match open(&self.target) {
            Ok(conn) => {
                self.conn = Some(conn);
                true
            }
            Err(e) => {
                self.failed(&e);
                false
            }
        }
    }

    fn failed(&mut self, why: &str) {
        if !self.warned {
            self.warned = true;
            tracing::warn!(
                syslog = %self.target.describe(),
                error = %why,
                "syslog unreachable; effe errors are logged to stderr instead"
            );
        }
        self.retry_at = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(RETRY_MAX);
    }
}

fn open(target: &SyslogTarget) -> Result<SyslogLogger, String> {
    let formatter = Formatter3164 {
        facility: Facility::LOG_USER,
        hostname: None,
        process: "effe-host".into(),
        pid: std::process::id(),
    };
    let logger = match target {
        SyslogTarget::Off => return Err("off".into()),
        SyslogTarget::Unix(path) => syslog::unix_custom(formatter, path),
        SyslogTarget::Udp(addr) => {
            let local = if addr.starts_with('[') {
                "[::]:0"
            } else {
                "0.0.0.0:0"
            };
            syslog::udp(formatter, local, addr.as_str())
        }
        SyslogTarget::Tcp(addr) => {
            let stream = connect_tcp(addr).map_err(|e| e.to_string())?;
            Ok(Logger::new(
                LoggerBackend::Tcp(BufWriter::new(stream)),
                formatter,
            ))
        }
    }
    .map_err(|e| e.to_string())?;
    send_timeout(&logger.backend, SEND_TIMEOUT).map_err(|e| e.to_string())?;
    Ok(logger)
}

fn connect_tcp(addr: &str) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::InvalidInput, "no address");
    for at in addr.to_socket_addrs()? {
        match TcpStream::connect_timeout(&at, CONNECT_TIMEOUT) {
            Ok(stream) => return Ok(stream),
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn send_timeout(backend: &LoggerBackend, timeout: Duration) -> io::Result<()> {
    match backend {
        LoggerBackend::Unix(s) => s.set_write_timeout(Some(timeout)),
        LoggerBackend::UnixStream(s) => s.get_ref().set_write_timeout(Some(timeout)),
        LoggerBackend::Udp(s, _) => s.set_write_timeout(Some(timeout)),
        LoggerBackend::Tcp(s) => s.get_ref().set_write_timeout(Some(timeout)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_targets() {
        assert_eq!(SyslogTarget::parse("off"), Ok(SyslogTarget::Off));
        assert_eq!(
            SyslogTarget::parse("udp://127.0.0.1:514"),
            Ok(SyslogTarget::Udp("127.0.0.1:514".into()))
        );
        assert_eq!(
            SyslogTarget::parse("/dev/log"),
            Ok(SyslogTarget::Unix("/dev/log".into()))
        );
        assert!(SyslogTarget::parse("dev/log").is_err());
    }

    use std::os::unix::net::UnixDatagram;

    fn failure(n: usize) -> crate::plugin::Failure {
        crate::plugin::Failure {
            panicked: false,
            message: format!("boom {n}"),
        }
    }

    /// A syslog socket that nobody reads: it fills after a few messages and then blocks.
    fn unread_socket(name: &str) -> (UnixDatagram, PathBuf) {
        let path = std::env::temp_dir().join(format!("effe-{}-{name}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        (UnixDatagram::bind(&path).unwrap(), path)
    }

    /// Runs `f` on its own thread; fails the test if it does not return within 10 s.
    fn bounded<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || tx.send(f()));
        rx.recv_timeout(Duration::from_secs(10))
            .expect("blocked on a full syslog")
    }

    #[test]
    fn a_full_syslog_drops_and_counts_instead_of_blocking() {
        let (sock, path) = unread_socket("full");
        let log = Arc::new(RunLog::with_capacity(
            SyslogTarget::Unix(path.clone()),
            "t",
            8,
        ));
        let sender = log.clone();
        // Far more than the socket and the queue hold together.
        bounded(move || (0..2000).for_each(|n| sender.run_failed(&n.to_string(), &failure(n))));
        let shared = &log.queue.as_ref().unwrap().shared;
        let queued = shared.queued.load(Ordering::Relaxed);
        assert_eq!(queued + log.dropped(), 2000);
        assert!(log.dropped() > 0);

        // What syslog got is in order, RFC 3164, starting with the first failure.
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).unwrap();
        let msg = String::from_utf8_lossy(&buf[..n]);
        assert!(msg.starts_with("<11>"), "{msg}");
        assert!(
            msg.ends_with("effe=t request_id=0 run failed: boom 0"),
            "{msg}"
        );
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn close_gives_up_on_a_stuck_syslog_and_takes_what_is_queued() {
        let (_sock, path) = unread_socket("stuck");
        let log = Arc::new(RunLog::with_capacity(
            SyslogTarget::Unix(path.clone()),
            "t",
            QUEUE_CAPACITY,
        ));
        let closer = log.clone();
        bounded(move || {
            (0..200).for_each(|n| closer.run_failed(&n.to_string(), &failure(n)));
            // The thread is stuck in a send for SEND_TIMEOUT; close must not wait that long.
            closer.close(Duration::from_millis(200));
        });
        let shared = &log.queue.as_ref().unwrap().shared;
        assert_eq!(log.dropped(), 0);
        assert!(shared.rx().try_recv().is_err(), "close left lines queued");
        // Closed: a later failure is not queued (it goes to stderr).
        let queued = shared.queued.load(Ordering::Relaxed);
        log.run_failed("late", &failure(0));
        assert_eq!(shared.queued.load(Ordering::Relaxed), queued);
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn close_lets_a_working_syslog_take_everything_queued() {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let target = SyslogTarget::Udp(sock.local_addr().unwrap().to_string());
        let log = RunLog::connect(target, "t");
        (0..50).for_each(|n| log.run_failed(&n.to_string(), &failure(n)));
        log.close(Duration::from_secs(10));
        sock.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 512];
        let received = std::iter::from_fn(|| sock.recv(&mut buf).ok()).count();
        assert_eq!(received, 50);
    }
}
