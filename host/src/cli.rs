//! Command-line flags (each with an `EFFE_*` variable), validated into a [`Config`] before any
//! side effect: nothing is loaded or bound until every flag is known to make sense.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::error::Fatal;
use crate::log::SyslogTarget;

/// Serve one effe (a Rust cdylib built against effe-abi) over HTTP/1.1 and HTTP/2.
#[derive(Parser, Debug)]
#[command(name = "effe-host", version, about, max_term_width = 100)]
pub struct Args {
    /// The effe to serve: a shared library built with `effe_abi::export_effe!`.
    #[arg(long, env = "EFFE_PLUGIN", value_name = "PATH")]
    pub plugin: PathBuf,

    /// Print the effe's metadata as one JSON object and exit (Init is not called).
    #[arg(long, env = "EFFE_INFO")]
    pub info: bool,

    /// Address to listen on, for HTTP/1.1 and cleartext HTTP/2 (prior knowledge).
    #[arg(
        long,
        env = "EFFE_LISTEN",
        value_name = "ADDR",
        default_value = "0.0.0.0:8080"
    )]
    pub listen: SocketAddr,

    /// Serve HTTPS (HTTP/1.1 and HTTP/2 by ALPN) on --listen with this PEM certificate chain
    /// (leaf first, then intermediates). Reloaded on SIGHUP.
    #[arg(long, env = "EFFE_TLS_CERT", value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert: PEM, PKCS#8, PKCS#1 (RSA) or SEC1 (EC). Reloaded on SIGHUP.
    #[arg(long, env = "EFFE_TLS_KEY", value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Require client certificates signed by one of these CAs (mutual TLS).
    #[arg(
        long,
        env = "EFFE_TLS_CLIENT_CA",
        value_name = "PEM",
        requires = "tls_cert"
    )]
    pub tls_client_ca: Option<PathBuf>,

    /// How long a client may take to complete the TLS handshake.
    #[arg(long, env = "EFFE_TLS_HANDSHAKE_TIMEOUT", value_name = "DURATION", default_value = "10s",
          value_parser = parse_duration)]
    pub tls_handshake_timeout: Duration,

    /// Contexts started before the listener accepts, and kept however idle.
    #[arg(long, env = "EFFE_MIN_CONTEXTS", value_name = "N", default_value_t = 1)]
    pub min_contexts: usize,

    /// Most Contexts alive at once: the host's concurrency limit (and so the most database
    /// connections an effe that opens one per Context holds).
    #[arg(
        long,
        env = "EFFE_MAX_CONTEXTS",
        value_name = "N",
        default_value_t = 16
    )]
    pub max_contexts: usize,

    /// How long a request waits for a free Context before it gets 503 with Retry-After.
    #[arg(long, env = "EFFE_QUEUE_TIMEOUT", value_name = "DURATION", default_value = "1s",
          value_parser = parse_duration)]
    pub queue_timeout: Duration,

    /// Most requests waiting for a Context; beyond it, 503 at once.
    #[arg(long, env = "EFFE_MAX_QUEUE", value_name = "N", default_value_t = 1024)]
    pub max_queue: usize,

    /// Contexts idle longer than this are stopped, down to --min-contexts.
    #[arg(long, env = "EFFE_IDLE_TIMEOUT", value_name = "DURATION", default_value = "60s",
          value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// Largest request body accepted; larger ones get 413.
    #[arg(long, env = "EFFE_MAX_BODY_SIZE", value_name = "BYTES", default_value_t = 6 * 1024 * 1024)]
    pub max_body_size: usize,

    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish.
    #[arg(long, env = "EFFE_SHUTDOWN_TIMEOUT", value_name = "DURATION", default_value = "30s",
          value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    /// After the shutdown timeout, how long the effe's Stops may still take. The host exits
    /// non-zero (16) if a Context was not stopped by then.
    #[arg(long, env = "EFFE_STOP_TIMEOUT", value_name = "DURATION", default_value = "5s",
          value_parser = parse_duration)]
    pub stop_timeout: Duration,

    /// Where errors returned by Run (and panics) are logged: a unix socket path,
    /// `udp://HOST:PORT`, `tcp://HOST:PORT`, or `off` (stderr only). Falls back to stderr, with
    /// one warning, when the syslog cannot be reached.
    #[arg(
        long,
        env = "EFFE_SYSLOG",
        value_name = "TARGET",
        default_value = "/dev/log"
    )]
    pub syslog: String,

    /// Load the plugin even if group or others may write to it.
    #[arg(long, env = "EFFE_ALLOW_INSECURE_PLUGIN")]
    pub allow_insecure_plugin: bool,

    /// How Run is called: `auto` follows the effe's declaration (NONBLOCKING effes run on the
    /// network threads, others on a thread where blocking is harmless), `inline` or `thread`
    /// force one.
    #[arg(long, env = "EFFE_CALL_MODE", value_name = "MODE", default_value = "auto",
          value_parser = ["auto", "inline", "thread"])]
    pub call_mode: String,

    /// Network threads, each with its own runtime and its own SO_REUSEPORT listener on --listen
    /// (0: one per CPU available to the process).
    #[arg(long, env = "EFFE_THREADS", value_name = "N", default_value_t = 0)]
    pub threads: usize,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 500ms, 2s, 1m)"))
}

/// How the host calls Run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallMode {
    /// On the thread that polls the connection: no hand-off, but Run must not block.
    Inline,
    /// On a blocking-pool thread: Run may block.
    Thread,
}

/// Validated settings.
#[derive(Debug)]
pub struct Config {
    pub plugin: PathBuf,
    pub info: bool,
    pub listen: SocketAddr,
    pub tls: Option<crate::tls::TlsConfig>,
    pub pool: crate::pool::PoolConfig,
    pub max_body_size: usize,
    pub shutdown_timeout: Duration,
    pub stop_timeout: Duration,
    pub syslog: SyslogTarget,
    pub allow_insecure_plugin: bool,
    /// `None`: follow the effe's declaration.
    pub call_mode: Option<CallMode>,
    pub threads: usize,
}

impl Args {
    /// Checks what clap cannot: relations between flags.
    pub fn validate(self) -> Result<Config, Fatal> {
        let usage = |msg: String| Err(Fatal::Usage(msg));
        if self.max_contexts == 0 {
            return usage("--max-contexts must be at least 1".into());
        }
        if self.min_contexts > self.max_contexts {
            return usage(format!(
                "--min-contexts ({}) is larger than --max-contexts ({})",
                self.min_contexts, self.max_contexts
            ));
        }
        if self.idle_timeout.is_zero() {
            return usage("--idle-timeout must be more than 0".into());
        }
        let syslog = SyslogTarget::parse(&self.syslog).map_err(Fatal::Usage)?;
        let call_mode = match self.call_mode.as_str() {
            "inline" => Some(CallMode::Inline),
            "thread" => Some(CallMode::Thread),
            _ => None,
        };
        let threads = match self.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        Ok(Config {
            plugin: self.plugin,
            info: self.info,
            listen: self.listen,
            tls: self
                .tls_cert
                .zip(self.tls_key)
                .map(|(cert, key)| crate::tls::TlsConfig {
                    cert,
                    key,
                    client_ca: self.tls_client_ca,
                    handshake_timeout: self.tls_handshake_timeout,
                }),
            pool: crate::pool::PoolConfig {
                min: self.min_contexts,
                max: self.max_contexts,
                queue_timeout: self.queue_timeout,
                max_queue: self.max_queue,
                idle_timeout: self.idle_timeout,
            },
            max_body_size: self.max_body_size,
            shutdown_timeout: self.shutdown_timeout,
            stop_timeout: self.stop_timeout,
            syslog,
            allow_insecure_plugin: self.allow_insecure_plugin,
            call_mode,
            threads,
        })
    }
}
