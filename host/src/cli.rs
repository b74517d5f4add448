//! Command-line flags (each with an `EFFE_*` variable), validated into a [`Config`] before any
//! side effect: nothing is loaded or bound until every flag is known to make sense. Every value
//! is checked as it is parsed (a zero timeout, a size without a known unit, an address that is
//! not one), and clap's own errors are folded into the host's one-line form.

use std::ffi::OsString;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use clap::error::{ContextKind, ContextValue};
use clap::{CommandFactory, Parser, Subcommand};

use crate::error::Fatal;
use crate::log::SyslogTarget;

/// Serve one effe (a Rust cdylib built against effe-abi) over HTTP/1.1 and HTTP/2.
// A command is only recognised before any flag (`args_conflicts_with_subcommands`), so every
// serving command line means what it always meant, and `--plugin` is not required with one.
#[derive(Parser, Debug)]
#[command(
    name = "effe-host",
    version,
    about,
    max_term_width = 100,
    after_help = AFTER_HELP,
    override_usage = USAGE,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// The effe to serve: a shared library built with `effe_abi::export_effe!`.
    #[arg(
        long,
        env = "EFFE_PLUGIN",
        value_name = "PATH",
        required_unless_present = "probe"
    )]
    pub plugin: Option<PathBuf>,

    /// Check a running host and exit: GET this path on the admin listener (`--admin-listen`,
    /// its loopback address when it listens everywhere), or this `http://` URL; exit 0 on a 2xx
    /// answer, 1 otherwise. For an image's HEALTHCHECK, which has no shell or curl to run.
    #[arg(long, value_name = "PATH|URL", num_args = 0..=1, default_missing_value = "/readyz")]
    pub probe: Option<String>,

    /// Print the effe's metadata as one JSON object and exit (Init is not called). Kept for
    /// scripts: `effe-host check --plugin PATH` is its new name, and also says the effe's panic
    /// strategy.
    #[arg(long, env = "EFFE_INFO", value_parser = parse_bool)]
    pub info: bool,

    /// Address to listen on, for HTTP/1.1 and cleartext HTTP/2 (prior knowledge): `PORT` or
    /// `:PORT` (every IPv4 interface, 0.0.0.0), `IP:PORT`, `[IPv6]:PORT`, or `HOST:PORT` (the
    /// host name is resolved once, at startup, and its first address is used).
    #[arg(
        long,
        env = "EFFE_LISTEN",
        value_name = "ADDR",
        default_value = "0.0.0.0:8080",
        value_parser = Listen::parse
    )]
    pub listen: Listen,

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

    /// How long a client may take to complete the TLS handshake (more than 0).
    #[arg(long, env = "EFFE_TLS_HANDSHAKE_TIMEOUT", value_name = "DURATION", default_value = "10s",
          value_parser = parse_timeout)]
    pub tls_handshake_timeout: Duration,

    /// Contexts started before the listener accepts, and kept however idle.
    #[arg(long, env = "EFFE_MIN_CONTEXTS", value_name = "N", default_value_t = 1)]
    pub min_contexts: usize,

    /// Most Contexts alive at once (at least 1): the host's concurrency limit (and so the most
    /// database connections an effe that opens one per Context holds).
    #[arg(
        long,
        env = "EFFE_MAX_CONTEXTS",
        value_name = "N",
        default_value_t = 16,
        value_parser = parse_at_least_one
    )]
    pub max_contexts: usize,

    /// How long a request waits for a free Context before it gets 503 with Retry-After (more
    /// than 0: a Context started for the request needs time too).
    #[arg(long, env = "EFFE_QUEUE_TIMEOUT", value_name = "DURATION", default_value = "1s",
          value_parser = parse_timeout)]
    pub queue_timeout: Duration,

    /// Most requests waiting for a Context; beyond it, 503 at once (0: none waits for a busy
    /// Context; a request still waits for a Context started for it).
    #[arg(long, env = "EFFE_MAX_QUEUE", value_name = "N", default_value_t = 1024)]
    pub max_queue: usize,

    /// Contexts idle longer than this (more than 0) are stopped, down to --min-contexts.
    #[arg(long, env = "EFFE_IDLE_TIMEOUT", value_name = "DURATION", default_value = "60s",
          value_parser = parse_timeout)]
    pub idle_timeout: Duration,

    /// Largest request body accepted; larger ones get 413. Bytes, or a number with a unit: B,
    /// KB, MB, GB (powers of 1000) or KiB, MiB, GiB (powers of 1024), e.g. 6MiB, 512KB.
    #[arg(long, env = "EFFE_MAX_BODY_SIZE", value_name = "SIZE", default_value = "6MiB",
          value_parser = parse_size)]
    pub max_body_size: usize,

    /// How long a client may take to send a request's head: from the connection's first byte
    /// (a connection that sends nothing, or part of the HTTP/2 preface, is closed after it) and
    /// between requests on a kept-alive HTTP/1.1 connection.
    #[arg(long, env = "EFFE_HEADER_READ_TIMEOUT", value_name = "DURATION", default_value = "30s",
          value_parser = parse_timeout)]
    pub header_read_timeout: Duration,

    /// How long a connection may stay open with no request in progress (as nginx's
    /// keepalive_timeout): then it is closed gracefully (a GOAWAY on HTTP/2). An idle
    /// HTTP/1.1 connection is also closed at the header read timeout, if that comes first:
    /// hyper counts the wait for the next request's head.
    #[arg(long, env = "EFFE_KEEP_ALIVE_TIMEOUT", value_name = "DURATION", default_value = "75s",
          value_parser = parse_timeout)]
    pub keep_alive_timeout: Duration,

    /// How long a request body may go without a byte arriving (as nginx's
    /// client_body_timeout): then 408 and the connection closes. The body is read before a
    /// Context is taken, so a slow body holds none.
    #[arg(long, env = "EFFE_BODY_READ_TIMEOUT", value_name = "DURATION", default_value = "30s",
          value_parser = parse_timeout)]
    pub body_read_timeout: Duration,

    /// Largest request head (request line and headers) on HTTP/1.1, and header list on HTTP/2;
    /// beyond it, 431 (at least 8KiB).
    #[arg(long, env = "EFFE_MAX_HEADER_SIZE", value_name = "BYTES", default_value = "64KiB",
          value_parser = parse_head_size)]
    pub max_header_size: usize,

    /// Most headers in an HTTP/1.1 request; beyond it, 431. (Any value other than 100 costs an
    /// allocation per request: hyper keeps 100 on the stack.)
    #[arg(long, env = "EFFE_MAX_HEADERS", value_name = "N", default_value_t = 100,
          value_parser = parse_at_least_one)]
    pub max_headers: usize,

    /// Most HTTP/2 streams open at once on one connection (SETTINGS_MAX_CONCURRENT_STREAMS).
    #[arg(long, env = "EFFE_MAX_STREAMS", value_name = "N", default_value_t = 128,
          value_parser = parse_at_least_one)]
    pub max_streams: usize,

    /// How often an HTTP/2 connection is PINGed; a peer that does not answer within as long
    /// again is taken for dead and its connection closed (0: never, the default: hyper's PING
    /// bookkeeping takes a lock on every frame, measured at about 650 instructions per h2c
    /// request; turn it on where peers vanish without closing, e.g. behind some NATs).
    #[arg(long, env = "EFFE_H2_PING_INTERVAL", value_name = "DURATION", default_value = "0",
          value_parser = parse_duration)]
    pub h2_ping_interval: Duration,

    /// How long a response write may wait for the client to read (as nginx's send_timeout):
    /// a client that stops reading is disconnected after it.
    #[arg(long, env = "EFFE_WRITE_TIMEOUT", value_name = "DURATION", default_value = "30s",
          value_parser = parse_timeout)]
    pub write_timeout: Duration,

    /// Most client connections open at once, over every network thread: at the cap the host
    /// stops accepting (the kernel's backlog holds new ones) until a connection closes.
    #[arg(long, env = "EFFE_MAX_CONNECTIONS", value_name = "N", default_value_t = 10_000,
          value_parser = parse_at_least_one)]
    pub max_connections: usize,

    /// Share `--listen` with another process already listening on it (SO_REUSEPORT; the
    /// kernel splits new connections between the two): a new version started beside the old
    /// one, which is then sent SIGTERM. Without it, a port another socket holds is refused.
    #[arg(long, env = "EFFE_REUSE_PORT", value_parser = parse_bool)]
    pub reuse_port: bool,

    /// On SIGTERM/SIGINT, how long to keep serving, with readiness already failing, before the
    /// drain begins: a load balancer (Kubernetes' endpoints) may still send requests for a
    /// moment after the signal. A second signal ends the delay.
    #[arg(long, env = "EFFE_SHUTDOWN_DELAY", value_name = "DURATION", default_value = "0",
          value_parser = parse_duration)]
    pub shutdown_delay: Duration,

    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish (0: do not wait; their
    /// connections are closed at once).
    #[arg(long, env = "EFFE_SHUTDOWN_TIMEOUT", value_name = "DURATION", default_value = "30s",
          value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    /// After the shutdown timeout, how long the effe's Stops may still take (more than 0). The
    /// host exits non-zero (16) if a Context was not stopped by then.
    #[arg(long, env = "EFFE_STOP_TIMEOUT", value_name = "DURATION", default_value = "5s",
          value_parser = parse_timeout)]
    pub stop_timeout: Duration,

    /// How long one Run may take (0: no limit). Past it the client gets 504, and a Run on a
    /// blocking thread keeps its Context quarantined (never reused, its slot taken) until it
    /// returns, then the Context is stopped. The effe reads its deadline from the request
    /// (`effe-deadline-ms`); a `NONBLOCKING` effe runs on a network thread and cannot be cut off.
    #[arg(long, env = "EFFE_TIMEOUT", value_name = "DURATION", default_value = "60s",
          value_parser = parse_duration)]
    pub timeout: Duration,

    /// Liveness fails once more Contexts than this are quarantined (Runs past --timeout that
    /// have not returned): the orchestrator then restarts a host whose effe hangs. Default: half
    /// of --max-contexts (at least 1).
    #[arg(long, env = "EFFE_MAX_QUARANTINED", value_name = "N")]
    pub max_quarantined: Option<usize>,

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

    /// Load the plugin even if someone other than root or the host's user could write or
    /// replace it.
    #[arg(long, env = "EFFE_ALLOW_INSECURE_PLUGIN", value_parser = parse_bool)]
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

    /// How the host's own diagnostics are written to stderr: `text` (one line per event) or
    /// `json` (one object per line). Filtered by `EFFE_LOG`.
    #[arg(
        long,
        env = "EFFE_LOG_FORMAT",
        value_name = "FORMAT",
        default_value = "text"
    )]
    pub log_format: crate::log::LogFormat,

    /// Log every answered request on stderr, one line each in --log-format (time, request id,
    /// method, target, protocol, status, response bytes, duration, peer), written by a thread
    /// of its own: lines stderr cannot take in time are dropped and counted, never waited for.
    /// The admin listener's probes and scrapes are never logged.
    #[arg(long, env = "EFFE_ACCESS_LOG", value_parser = parse_bool)]
    pub access_log: bool,

    /// The admin listener (`/livez`, `/healthz`, `/readyz`, `/metrics`), which the effe never
    /// sees: an address in any form --listen takes, or `off`.
    #[arg(
        long,
        env = "EFFE_ADMIN_LISTEN",
        value_name = "ADDR",
        default_value = "0.0.0.0:9090"
    )]
    pub admin_listen: String,
}

const USAGE: &str = "\
effe-host --plugin <PATH> [OPTIONS]
       effe-host --probe [PATH|URL] [--admin-listen <ADDR>]
       effe-host new <NAME> [--path <DIR>] [--effe-abi <SOURCE>]
       effe-host check --plugin <PATH>";

/// What `effe-host` does instead of serving.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Make a new effe crate: Cargo.toml, src/lib.rs with a unit test, README, .gitignore, and
    /// the effe-abi it builds against. Then `cargo test`, `cargo build --release`, serve.
    #[command(after_help = NEW_AFTER_HELP)]
    New(NewArgs),
    /// Load an effe and verify it without calling Init, print its metadata as one JSON object
    /// (name, version, the effe-abi it was built against, NONBLOCKING, panic strategy), and
    /// exit 0, or with the load failure's exit code: for a Docker build step or CI.
    #[command(after_help = CHECK_AFTER_HELP)]
    Check(CheckArgs),
}

/// `effe-host new`.
#[derive(clap::Args, Debug)]
pub struct NewArgs {
    /// The crate's name: ASCII letters, digits, `-` and `_`, starting with a letter. The library
    /// is then `libNAME.so`, with `_` for `-`.
    #[arg(value_name = "NAME")]
    pub name: String,

    /// The directory to make (default: ./NAME); it must not exist, or be empty.
    #[arg(long, value_name = "DIR")]
    pub path: Option<PathBuf>,

    /// Where the effe-abi dependency comes from (it is not on crates.io): `vendor` (a copy of
    /// the effe-abi this effe-host was built with, in NAME/effe-abi), `path:DIR` (an effe-abi
    /// checkout, e.g. effe-host's own effe-abi/), or `git:URL[#REV]` (a repository holding it).
    #[arg(
        long = "effe-abi",
        value_name = "SOURCE",
        default_value = "vendor",
        value_parser = crate::scaffold::AbiSource::parse
    )]
    pub effe_abi: crate::scaffold::AbiSource,
}

const NEW_AFTER_HELP: &str = "\
Exit codes: 0 made, 2 a bad name or --effe-abi, or a directory that is not empty, 1 a file could
not be written.";

/// `effe-host check`.
#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// The effe to check: a shared library built with `effe_abi::export_effe!`.
    #[arg(long, env = "EFFE_PLUGIN", value_name = "PATH")]
    pub plugin: PathBuf,

    /// Check the plugin even if someone other than root or this user could write or replace
    /// it (otherwise that is a failure, exit 7, as when serving).
    #[arg(long, env = "EFFE_ALLOW_INSECURE_PLUGIN", value_parser = parse_bool)]
    pub allow_insecure_plugin: bool,
}

const CHECK_AFTER_HELP: &str = "\
Exit codes: 0 the host would load it; 3 missing or unreadable; 4 not a shared library; 5 no
effe root module; 6 built against an incompatible effe-abi, or with panic = \"abort\"; 7 writable
or replaceable by someone else; 2 a usage error. Each failure is one line on stderr.";

/// Shown after the flags in `--help`. The exit codes are the README's table, condensed: keep
/// the two in step (a test checks that both list the same codes).
const AFTER_HELP: &str = "\
Values:
  Boolean variables (EFFE_INFO, EFFE_ALLOW_INSECURE_PLUGIN) take true/false, 1/0, yes/no or
  on/off, in any case. Durations read like 500ms, 2s, 1m, 1h (at most 1 year). Sizes are bytes,
  or a number with B, KB, MB, GB (powers of 1000) or KiB, MiB, GiB (powers of 1024).

Environment:
  EFFE_LOG    filter for the host's own diagnostics on stderr, e.g. debug or
              effe_host=debug,hyper=info (default info; RUST_LOG is read if it is unset)

Exit codes:
   0  clean shutdown: in-flight requests finished, every Context stopped
   1  runtime failure (a network thread or the runtime could not start, ...)
   2  usage error: a bad flag, value or flag combination
   3  plugin file missing or unreadable
   4  plugin is not a shared library
   5  shared library without the effe root module (not built with export_effe!)
   6  effe built against an incompatible effe-abi
   7  plugin that someone other than root or the host's user could write or replace
      (see --allow-insecure-plugin)
   8  the effe's init failed or panicked
   9  a start for --min-contexts failed at boot
  10  the listener could not be set up (address in use, ...)
  11  TLS: a PEM file is missing or unreadable
  12  TLS: no certificate in the certificate (or client CA) file
  13  TLS: no usable private key in the key file
  14  TLS: the key does not match the certificate
  15  TLS: the client CA file cannot be used to verify clients
  16  shutdown incomplete: a Context was not stopped by the deadlines
--probe: 0 healthy (a 2xx answer), 1 not

Every refusal is one line on stderr: effe-host: what: why";

/// The longest duration any flag takes: longer is surely a typo, and the bound keeps every
/// deadline made from one (now + duration) from overflowing `Instant`, which would panic. One
/// year as humantime counts it (365.25 days).
const MAX_DURATION: Duration = Duration::from_secs(31_557_600);

const DURATION_EXAMPLES: &str = "expected a duration such as 500ms, 2s, 1m";

/// A duration, `0` included (a bare `0` needs no unit).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let d = humantime::parse_duration(s).map_err(|e| match e {
        humantime::DurationError::NumberOverflow => "too long: at most 1 year".to_owned(),
        _ if s.bytes().all(|b| b.is_ascii_digit()) => {
            "a duration needs a unit, such as 500ms, 2s, 1m".to_owned()
        }
        _ => DURATION_EXAMPLES.to_owned(),
    })?;
    if d > MAX_DURATION {
        return Err("too long: at most 1 year".to_owned());
    }
    Ok(d)
}

/// A duration that must not be zero: a zero timeout would fail every handshake, request or
/// Stop it bounds.
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err("must be more than 0".to_owned()),
        d => Ok(d),
    }
}

fn parse_at_least_one(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(n) => Ok(n),
        Err(_) => Err("expected a whole number such as 16".to_owned()),
    }
}

/// The usual spellings of a boolean, in any case: what container environments are written with.
pub fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" | "" => Ok(false),
        _ => Err("expected true/false, 1/0, yes/no or on/off".to_owned()),
    }
}

/// A head size: at least 8 KiB, hyper's smallest read buffer.
fn parse_head_size(s: &str) -> Result<usize, String> {
    match parse_size(s)? {
        n if n < 8192 => Err("must be at least 8KiB".to_owned()),
        n => Ok(n),
    }
}

/// Bytes, or a whole number with a unit: SI (KB = 1000) or binary (KiB = 1024), any case.
pub fn parse_size(s: &str) -> Result<usize, String> {
    const UNITS: &str =
        "expected bytes, or a number with B, KB, MB, GB, KiB, MiB or GiB (e.g. 6MiB)";
    let s = s.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(digits);
    if number.is_empty() {
        return Err(UNITS.to_owned());
    }
    let scale: u64 = match unit.trim_start().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1000,
        "mb" => 1000 * 1000,
        "gb" => 1000 * 1000 * 1000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        _ => return Err(UNITS.to_owned()),
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| "too large".to_owned())
}

/// Where to listen, as given: an address, or a host name resolved by [`Listen::resolve`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Addr(SocketAddr),
    Host(String, u16),
}

impl Listen {
    const EXPECTED: &str =
        "expected PORT, :PORT, HOST:PORT or [IPv6]:PORT, such as 8080, :8080, localhost:8080, \
         [::1]:8080";

    pub fn parse(s: &str) -> Result<Listen, String> {
        let s = s.trim();
        // Escaped: the refusal is one line, whatever the value holds.
        let port = |p: &str| {
            p.parse::<u16>()
                .map_err(|_| format!("invalid port '{}': expected 0 to 65535", p.escape_debug()))
        };
        let any = |port| Listen::Addr(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port));
        if s.bytes().all(|b| b.is_ascii_digit()) && !s.is_empty() {
            return port(s).map(any);
        }
        if let Some(p) = s.strip_prefix(':').filter(|p| !p.contains(':')) {
            return port(p).map(any);
        }
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(Listen::Addr(addr));
        }
        if s.starts_with('[') {
            return Err(Self::EXPECTED.to_owned());
        }
        let Some((host, p)) = s.rsplit_once(':') else {
            return Err(format!("no port: {}", Self::EXPECTED));
        };
        if host.contains(':') {
            return Err("an IPv6 address needs brackets, such as [::1]:8080".to_owned());
        }
        let port = port(p)?;
        let name_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_';
        if host.is_empty() || !host.chars().all(name_char) {
            return Err(Self::EXPECTED.to_owned());
        }
        Ok(Listen::Host(host.to_owned(), port))
    }

    /// The address to bind: a host name's first address (as the resolver orders them).
    pub fn resolve(&self) -> Result<SocketAddr, String> {
        match self {
            Listen::Addr(addr) => Ok(*addr),
            Listen::Host(host, port) => (host.as_str(), *port)
                .to_socket_addrs()
                .map_err(|e| format!("--listen {self}: cannot resolve {host}: {e}"))?
                .next()
                .ok_or_else(|| format!("--listen {self}: {host} has no address")),
        }
    }
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Listen::Addr(addr) => write!(f, "{addr}"),
            Listen::Host(host, port) => write!(f, "{host}:{port}"),
        }
    }
}

/// clap's error (several lines: the error, tips, a usage line, a pointer to --help) as one line
/// in the host's form, without the `effe-host: ` prefix: the error, what was expected, a short
/// tip ("did you mean …?"), and the variable the value came from when it was not a flag.
/// `argv` is the command line, to tell a flag's value from its variable's.
pub fn usage_line(err: &clap::Error, argv: &[OsString]) -> String {
    let text = err.render().to_string();
    let mut message = String::new();
    let mut tips = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with("Usage:") || line.starts_with("For more information") {
            break;
        }
        if line.is_empty() {
            continue;
        }
        if let Some(tip) = line.strip_prefix("tip: ") {
            tips.push(tip);
        } else if message.is_empty() {
            message.push_str(line.strip_prefix("error: ").unwrap_or(line));
        } else if message.ends_with(':') {
            message.push(' ');
            message.push_str(line);
        } else {
            // `[possible values: a, b]` and the like: what was expected.
            let line = line.trim_start_matches('[').trim_end_matches(']');
            let line = line.replace("possible values: ", "expected one of ");
            message.push_str(if message.contains(": ") { "; " } else { ": " });
            message.push_str(&line);
        }
    }
    for tip in tips {
        let short = match tip.split_once("exists: ") {
            Some((_, suggestion)) => format!("did you mean {suggestion}?"),
            None => tip.to_owned(),
        };
        if short.len() <= 60 {
            message.push_str(&format!(" ({short})"));
        }
    }
    if let Some(var) = value_from_env(err, argv) {
        message.push_str(&format!(" (from {var})"));
    }
    if let Some(var) = missing_env(err) {
        message.push_str(&format!(" (or set {var})"));
    }
    message
}

/// For a missing flag: its variable, the way containers set it.
fn missing_env(err: &clap::Error) -> Option<String> {
    if err.kind() != clap::error::ErrorKind::MissingRequiredArgument {
        return None;
    }
    let Some(ContextValue::Strings(missing)) = err.get(ContextKind::InvalidArg) else {
        return None;
    };
    let [arg] = missing.as_slice() else {
        return None;
    };
    env_of(arg)
}

/// The variable of the flag named in `arg` (`--queue-timeout <DURATION>`).
fn env_of(arg: &str) -> Option<String> {
    let long = arg.split_whitespace().next()?.strip_prefix("--")?;
    let command = Args::command();
    let var = command
        .get_arguments()
        .find(|a| a.get_long() == Some(long))?
        .get_env()?;
    Some(var.to_string_lossy().into_owned())
}

/// The variable that supplied the refused value, when its flag is not on the command line.
fn value_from_env(err: &clap::Error, argv: &[OsString]) -> Option<String> {
    let Some(ContextValue::String(arg)) = err.get(ContextKind::InvalidArg) else {
        return None;
    };
    let flag = arg.split_whitespace().next()?;
    let on_command_line = argv.iter().filter_map(|a| a.to_str()).any(|a| {
        a == flag
            || a.strip_prefix(flag)
                .is_some_and(|rest| rest.starts_with('='))
    });
    if on_command_line {
        return None;
    }
    env_of(arg).filter(|var| std::env::var_os(var).is_some())
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
    pub body_read_timeout: Duration,
    pub write_timeout: Duration,
    pub max_connections: usize,
    pub http: crate::server::HttpLimits,
    pub reuse_port: bool,
    pub shutdown_delay: Duration,
    pub shutdown_timeout: Duration,
    pub stop_timeout: Duration,
    /// `None`: Runs have no deadline.
    pub timeout: Option<Duration>,
    pub max_quarantined: usize,
    pub syslog: SyslogTarget,
    pub allow_insecure_plugin: bool,
    /// `None`: follow the effe's declaration.
    pub call_mode: Option<CallMode>,
    pub threads: usize,
    /// `None`: off.
    pub admin_listen: Option<SocketAddr>,
    /// The access log's format, when on.
    pub access_log: Option<crate::log::LogFormat>,
}

impl Args {
    /// Checks what clap cannot: relations between flags.
    pub fn validate(self) -> Result<Config, Fatal> {
        let usage = |msg: String| Err(Fatal::Usage(msg));
        if self.min_contexts > self.max_contexts {
            return usage(format!(
                "--min-contexts ({}) is larger than --max-contexts ({})",
                self.min_contexts, self.max_contexts
            ));
        }
        let listen = self.listen.resolve().map_err(Fatal::Usage)?;
        let syslog = SyslogTarget::parse(&self.syslog).map_err(Fatal::Usage)?;
        let admin_listen = match self.admin_listen.trim() {
            "off" => None,
            addr => Some(
                Listen::parse(addr)
                    .and_then(|listen| listen.resolve())
                    .map_err(|why| {
                        Fatal::Usage(format!("--admin-listen {addr:?}: {why}, or off"))
                    })?,
            ),
        };
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
            plugin: self
                .plugin
                .ok_or_else(|| Fatal::Usage("--plugin is required".into()))?,
            info: self.info,
            listen,
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
            body_read_timeout: self.body_read_timeout,
            write_timeout: self.write_timeout,
            max_connections: self.max_connections,
            http: crate::server::HttpLimits {
                header_read_timeout: self.header_read_timeout,
                keep_alive_timeout: self.keep_alive_timeout,
                max_header_size: self.max_header_size,
                max_headers: self.max_headers,
                max_streams: u32::try_from(self.max_streams).unwrap_or(u32::MAX),
                h2_ping_interval: (!self.h2_ping_interval.is_zero())
                    .then_some(self.h2_ping_interval),
            },
            reuse_port: self.reuse_port,
            shutdown_delay: self.shutdown_delay,
            shutdown_timeout: self.shutdown_timeout,
            stop_timeout: self.stop_timeout,
            timeout: (!self.timeout.is_zero()).then_some(self.timeout),
            max_quarantined: self
                .max_quarantined
                .unwrap_or((self.max_contexts / 2).max(1)),
            syslog,
            allow_insecure_plugin: self.allow_insecure_plugin,
            call_mode,
            threads,
            admin_listen,
            access_log: self.access_log.then_some(self.log_format),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(flags: &[&str]) -> Result<Args, clap::Error> {
        let argv = ["effe-host", "--plugin", "libx.so"].iter().chain(flags);
        Args::try_parse_from(argv)
    }

    fn error_line(flags: &[&str]) -> String {
        let argv: Vec<OsString> = ["effe-host"].iter().chain(flags).map(Into::into).collect();
        let err = Args::try_parse_from(&argv).expect_err("refused");
        usage_line(&err, &argv)
    }

    #[test]
    fn booleans_take_the_usual_spellings() {
        for yes in ["true", "TRUE", "1", "yes", "Yes", "on", "ON"] {
            assert_eq!(parse_bool(yes), Ok(true), "{yes}");
        }
        for no in ["false", "False", "0", "no", "NO", "off", "Off", ""] {
            assert_eq!(parse_bool(no), Ok(false), "{no}");
        }
        for bad in ["maybe", "2", "y", "enable"] {
            assert!(parse_bool(bad).is_err(), "{bad}");
        }
        assert!(args(&["--info"]).unwrap().info);
        assert!(!args(&[]).unwrap().info);
    }

    #[test]
    fn sizes_take_bytes_or_si_or_binary_units() {
        assert_eq!(parse_size("100"), Ok(100));
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("7B"), Ok(7));
        assert_eq!(parse_size("512KB"), Ok(512_000));
        assert_eq!(parse_size("1kib"), Ok(1024));
        assert_eq!(parse_size("6MiB"), Ok(6 * 1024 * 1024));
        assert_eq!(parse_size("6 MB"), Ok(6_000_000));
        assert_eq!(parse_size("2GB"), Ok(2_000_000_000));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        for bad in ["", "MiB", "6XB", "1.5MB", "-1", "6 M", "0x10"] {
            assert!(
                parse_size(bad).unwrap_err().starts_with("expected bytes"),
                "{bad}"
            );
        }
        assert_eq!(parse_size("99999999999GiB"), Err("too large".into()));
        assert_eq!(args(&[]).unwrap().max_body_size, 6 * 1024 * 1024);
    }

    #[test]
    fn durations_are_bounded_and_timeouts_not_zero() {
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1y"), Ok(MAX_DURATION));
        assert_eq!(parse_duration("2y"), Err("too long: at most 1 year".into()));
        assert_eq!(
            parse_duration("99999999999999999999y"),
            Err("too long: at most 1 year".into())
        );
        assert_eq!(parse_duration("soon"), Err(DURATION_EXAMPLES.into()));
        assert!(parse_duration("5").unwrap_err().contains("needs a unit"));
        assert_eq!(parse_timeout("1ms"), Ok(Duration::from_millis(1)));
        for zero in ["0", "0s", "0ms"] {
            assert_eq!(parse_timeout(zero), Err("must be more than 0".into()));
        }
        assert_eq!(parse_at_least_one("0"), Err("must be at least 1".into()));
        assert_eq!(parse_at_least_one("3"), Ok(3));
    }

    #[test]
    fn which_zeros_are_refused() {
        for flag in [
            "--tls-handshake-timeout",
            "--queue-timeout",
            "--idle-timeout",
            "--stop-timeout",
        ] {
            let line = error_line(&["--plugin", "x", flag, "0s"]);
            assert!(line.ends_with("': must be more than 0"), "{line}");
        }
        let zero_ok = args(&[
            "--shutdown-timeout",
            "0",
            "--max-queue",
            "0",
            "--threads",
            "0",
        ]);
        let zero_ok = zero_ok.unwrap();
        assert!(zero_ok.shutdown_timeout.is_zero());
        assert_eq!(zero_ok.max_queue, 0);
        assert!(args(&["--min-contexts", "0"]).is_ok());
        assert!(args(&["--max-body-size", "0"]).is_ok());
        assert!(args(&["--max-contexts", "0"]).is_err());
    }

    #[test]
    fn listen_takes_a_port_an_address_or_a_host() {
        let any = |port| Listen::Addr(SocketAddr::from(([0, 0, 0, 0], port)));
        assert_eq!(Listen::parse("8080"), Ok(any(8080)));
        assert_eq!(Listen::parse(":8080"), Ok(any(8080)));
        assert_eq!(Listen::parse("0"), Ok(any(0)));
        assert_eq!(
            Listen::parse("127.0.0.1:80"),
            Ok(Listen::Addr(SocketAddr::from(([127, 0, 0, 1], 80))))
        );
        assert_eq!(
            Listen::parse("[::1]:8080"),
            Ok(Listen::Addr("[::1]:8080".parse().unwrap()))
        );
        assert_eq!(
            Listen::parse("localhost:8080"),
            Ok(Listen::Host("localhost".into(), 8080))
        );
        assert_eq!(
            Listen::parse("effe-1.svc.cluster.local:80"),
            Ok(Listen::Host("effe-1.svc.cluster.local".into(), 80))
        );
        assert!(Listen::parse("localhost")
            .unwrap_err()
            .starts_with("no port"));
        assert!(Listen::parse("::1:80")
            .unwrap_err()
            .contains("needs brackets"));
        assert!(Listen::parse("host:99999")
            .unwrap_err()
            .contains("invalid port '99999'"));
        assert!(Listen::parse(":http").unwrap_err().contains("invalid port"));
        // Found by fuzz/flag_values: the refusal must stay one line.
        assert_eq!(
            Listen::parse(":1\n2"),
            Err("invalid port '1\\n2': expected 0 to 65535".into())
        );
        for bad in ["", "[::1]", "[::1:80", "a b:80", "/tmp/sock:80"] {
            assert!(
                Listen::parse(bad).unwrap_err().contains("expected PORT"),
                "{bad}"
            );
        }
        assert_eq!(args(&[]).unwrap().listen, any(8080));
    }

    #[test]
    fn a_host_name_resolves_to_its_first_address() {
        let addr = Listen::Host("localhost".into(), 8080).resolve().unwrap();
        // From /etc/hosts: no DNS needed.
        assert!(addr.ip().is_loopback() && addr.port() == 8080, "{addr}");
    }

    #[test]
    fn clap_errors_are_one_line() {
        assert_eq!(
            error_line(&["--plugin", "x", "--queue-timeout", "soon"]),
            "invalid value 'soon' for '--queue-timeout <DURATION>': expected a duration such as \
             500ms, 2s, 1m"
        );
        assert_eq!(
            error_line(&["--plugin", "x", "--thread", "2"]),
            "unexpected argument '--thread' found (did you mean '--threads'?)"
        );
        assert_eq!(
            error_line(&["--plugin", "x", "--call-mode", "inlin"]),
            "invalid value 'inlin' for '--call-mode <MODE>': expected one of auto, inline, \
             thread (did you mean 'inline'?)"
        );
        assert_eq!(
            error_line(&["--plugin", "x", "--tls-key", "k.pem"]),
            "the following required arguments were not provided: --tls-cert <PEM> (or set \
             EFFE_TLS_CERT)"
        );
        for flags in [&["--plugin"][..], &["--plugin", "x", "--info=yes"], &["-x"]] {
            let line = error_line(flags);
            assert!(!line.contains('\n') && !line.starts_with("error"), "{line}");
        }
    }

    fn command(argv: &[&str]) -> Option<Command> {
        let argv = ["effe-host"].iter().chain(argv);
        Args::try_parse_from(argv).expect("parses").command
    }

    #[test]
    fn commands_come_first_and_leave_the_serving_flags_alone() {
        let Some(Command::New(new)) = command(&["new", "greet"]) else {
            panic!("not new")
        };
        assert_eq!((new.name.as_str(), new.path), ("greet", None));
        assert_eq!(new.effe_abi, crate::scaffold::AbiSource::Vendor);
        let Some(Command::New(new)) = command(&[
            "new",
            "greet",
            "--path",
            "/tmp/g",
            "--effe-abi",
            "git:https://example.com/effe#v1",
        ]) else {
            panic!("not new")
        };
        assert_eq!(new.path, Some(PathBuf::from("/tmp/g")));
        assert!(matches!(
            new.effe_abi,
            crate::scaffold::AbiSource::Git { .. }
        ));
        let Some(Command::Check(check)) =
            command(&["check", "--plugin", "libx.so", "--allow-insecure-plugin"])
        else {
            panic!("not check")
        };
        assert_eq!(check.plugin, PathBuf::from("libx.so"));
        assert!(check.allow_insecure_plugin);

        // What always worked still means what it meant.
        let serve = args(&["--listen", "8081"]).unwrap();
        assert!(serve.command.is_none() && !serve.info);
        assert_eq!(serve.plugin, Some(PathBuf::from("libx.so")));
        assert!(args(&["--info"]).unwrap().command.is_none());
        assert!(command(&["--probe"]).is_none());
        // A plugin named like a command is a plugin.
        assert_eq!(args(&[]).unwrap().plugin, Some(PathBuf::from("libx.so")));
        let named_new = Args::try_parse_from(["effe-host", "--plugin", "new"]).unwrap();
        assert!(named_new.command.is_none());
        assert_eq!(named_new.plugin, Some(PathBuf::from("new")));

        assert_eq!(
            error_line(&["--plugin", "x", "new", "greet"]),
            "the subcommand 'new' cannot be used with '--plugin <PATH>'"
        );
        assert_eq!(
            error_line(&["check"]),
            "the following required arguments were not provided: --plugin <PATH> (or set \
             EFFE_PLUGIN)"
        );
        assert_eq!(
            error_line(&["new", "greet", "--effe-abi", "crates-io"]),
            "invalid value 'crates-io' for '--effe-abi <SOURCE>': expected vendor, path:DIR or \
             git:URL[#REV]"
        );
        let help = Args::command().render_long_help().to_string();
        assert!(help.contains("effe-host new <NAME>") && help.contains("effe-host check"));
        assert!(
            help.contains("  new ") && help.contains("  check "),
            "{help}"
        );
    }

    #[test]
    fn help_lists_the_exit_codes_of_the_readme() {
        let codes = |lines: &mut dyn Iterator<Item = &str>| -> Vec<u8> {
            lines.filter_map(|l| l.parse().ok()).collect()
        };
        let readme = include_str!("../../README.md");
        let table = readme
            .split("### Exit codes")
            .nth(1)
            .expect("README has an exit code table");
        let in_readme = codes(
            &mut table
                .lines()
                .take_while(|l| !l.starts_with("##"))
                .filter_map(|l| l.strip_prefix("| ")?.split(" |").next()),
        );
        let in_help = codes(
            &mut AFTER_HELP
                .split("Exit codes:")
                .nth(1)
                .unwrap()
                .lines()
                .filter_map(|l| l.split_whitespace().next()),
        );
        let all: Vec<u8> = (0..=16).collect();
        assert_eq!(in_readme, all);
        assert_eq!(in_help, all);
    }
}
