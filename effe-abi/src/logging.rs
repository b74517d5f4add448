//! The effe's end of logging: a `log` facade logger that forwards each record to the host's
//! log ([`HostLogV1`], lent once through `log@1`) with the request id of the call in progress.
//! Without a host that lends its log (an older one), records go to stderr; in the testing kit,
//! to the test's [`TestHost`](crate::testing::TestHost).

use std::cell::RefCell;
use std::sync::OnceLock;

use log::{Level, LevelFilter, Log, Metadata, Record};

use crate::interfaces::{HostLogV1, LogV1};

/// The host's log, once it has lent it.
static HOST: OnceLock<&'static HostLogV1> = OnceLock::new();

extern "C" fn attach(log: &'static HostLogV1) {
    let _ = HOST.set(log);
}

/// What the effe offers as `log@1`.
pub(crate) static LOG_V1: LogV1 = LogV1 { attach };

thread_local! {
    /// Records kept for a [`TestHost`](crate::testing::TestHost) call on this thread.
    static CAPTURED: RefCell<Option<Vec<String>>> = const { RefCell::new(None) };
}

struct Forward;

static FORWARD: Forward = Forward;

/// Makes [`Forward`] the effe's logger, unless the effe set one of its own first; called by
/// `init`'s shim (after the host lent its log) and by the testing kit.
pub(crate) fn install() {
    if log::set_logger(&FORWARD).is_ok() {
        log::set_max_level(max_level());
    }
}

fn max_level() -> LevelFilter {
    match HOST.get().map(|host| host.max_level) {
        Some(0) => LevelFilter::Off,
        Some(1) => LevelFilter::Error,
        Some(2) => LevelFilter::Warn,
        Some(4) => LevelFilter::Debug,
        Some(5) => LevelFilter::Trace,
        _ => LevelFilter::Info,
    }
}

/// Runs `f` with this thread's records kept, and returns them with its result.
pub(crate) fn captured<T>(f: impl FnOnce() -> T) -> (T, Vec<String>) {
    let outer = CAPTURED.with(|c| c.borrow_mut().replace(Vec::new()));
    let out = f();
    let records = CAPTURED.with(|c| std::mem::replace(&mut *c.borrow_mut(), outer));
    (out, records.unwrap_or_default())
}

/// Keeps `line` for the testing kit if it is capturing on this thread.
pub(crate) fn keep(line: impl FnOnce() -> String) -> bool {
    CAPTURED.with(|c| match c.try_borrow_mut() {
        Ok(mut c) => c.as_mut().map(|records| records.push(line())).is_some(),
        Err(_) => false,
    })
}

impl Log for Forward {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = record.level();
        if keep(|| format!("{}: {}", level.as_str().to_lowercase(), record.args())) {
            return;
        }
        let message = record.args().to_string();
        match HOST.get() {
            Some(host) => crate::ffi::with_request_id(|id| {
                (host.log)(
                    level as u8,
                    id.into(),
                    record.target().into(),
                    message.as_str().into(),
                )
            }),
            None => eprintln!("{} {}: {message}", level_word(level), record.target()),
        }
    }

    fn flush(&self) {}
}

fn level_word(level: Level) -> &'static str {
    match level {
        Level::Error => "ERROR",
        Level::Warn => "WARN",
        Level::Info => "INFO",
        Level::Debug => "DEBUG",
        Level::Trace => "TRACE",
    }
}
