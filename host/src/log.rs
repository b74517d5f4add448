//! Diagnostics go through `tracing` to stderr; what an effe's `run` reports (errors and panics)
//! goes to syslog, tagged with the effe's name and the request id, so that it lands where the
//! platform collects application logs. Without a reachable syslog (a bare container), those
//! messages go to stderr instead, after one warning.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use syslog::{Facility, Formatter3164, Logger, LoggerBackend};
use tracing_subscriber::EnvFilter;

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

/// Sets up `tracing` to stderr; `EFFE_LOG` (or `RUST_LOG`) filters, default `info`.
pub fn init_tracing() {
    let filter = EnvFilter::try_from_env("EFFE_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

type SyslogLogger = Logger<LoggerBackend, Formatter3164>;

/// The log of what effes report from `run`.
pub struct RunLog {
    target: SyslogTarget,
    effe: String,
    logger: Mutex<Option<SyslogLogger>>,
    warned: AtomicBool,
}

impl RunLog {
    /// Connects to `target`. An unreachable syslog is not fatal: messages go to stderr.
    pub fn connect(target: SyslogTarget, effe: &str) -> RunLog {
        let log = RunLog {
            logger: Mutex::new(None),
            target,
            effe: effe.to_owned(),
            warned: AtomicBool::new(false),
        };
        if log.target != SyslogTarget::Off {
            match log.open() {
                Ok(l) => *log.lock() = Some(l),
                Err(e) => log.warn_once(&e),
            }
        }
        log
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<SyslogLogger>> {
        self.logger.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn open(&self) -> Result<SyslogLogger, String> {
        let formatter = Formatter3164 {
            facility: Facility::LOG_USER,
            hostname: None,
            process: "effe-host".into(),
            pid: std::process::id(),
        };
        let result = match &self.target {
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
            SyslogTarget::Tcp(addr) => syslog::tcp(formatter, addr.as_str()),
        };
        result.map_err(|e| e.to_string())
    }

    fn warn_once(&self, why: &str) {
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                syslog = %self.target.describe(),
                error = %why,
                "syslog unreachable; effe errors are logged to stderr instead"
            );
        }
    }

    /// Logs what `run` reported for request `request_id`.
    pub fn run_failed(&self, request_id: &str, failure: &crate::plugin::Failure) {
        let what = if failure.panicked {
            "panicked"
        } else {
            "failed"
        };
        let line = format!(
            "effe={} request_id={} run {}: {}",
            self.effe, request_id, what, failure.message
        );
        if self.target != SyslogTarget::Off && self.send(&line) {
            return;
        }
        tracing::error!(target: "effe", "{line}");
    }

    /// Sends to syslog, reconnecting once (the daemon may have restarted); false if it could not.
    fn send(&self, line: &str) -> bool {
        let mut logger = self.lock();
        for _ in 0..2 {
            if logger.is_none() {
                match self.open() {
                    Ok(l) => *logger = Some(l),
                    Err(e) => {
                        self.warn_once(&e);
                        return false;
                    }
                }
            }
            match logger.as_mut().map(|l| l.err(line)) {
                Some(Ok(())) => return true,
                Some(Err(e)) => {
                    *logger = None;
                    self.warn_once(&e.to_string());
                }
                None => return false,
            }
        }
        false
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
}
