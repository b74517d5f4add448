//! effe-host: parse and validate flags → load the effe → Init → start the minimum Contexts →
//! serve → on SIGTERM/SIGINT drain, Stop every Context, exit 0.
//!
//! Fatal errors print one line, `effe-host: what: why`, and exit with a code per cause (see
//! `error.rs` and the README). The binary is `main.rs`; the library exists so that the
//! benchmarks can drive the pool and the ABI call without the network.

pub mod access;
pub mod admin;
pub mod check;
pub mod cli;
pub mod drain;
pub mod error;
pub mod idle;
pub mod invoke;
pub mod log;
pub mod metrics;
pub mod plugin;
pub mod pool;
pub mod probe;
pub mod rules;
pub mod scaffold;
pub mod server;
pub mod stream;
pub mod tls;
pub mod trust;
pub mod write_timeout;

/// What the fuzz targets in `fuzz/` call: the parsers of the host's own text input, public
/// only for them.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::cli::{parse_bool, parse_duration, parse_size, parse_timeout, Listen};
    pub use crate::invoke::usable_request_id;
    pub use crate::log::SyslogTarget;
}

use std::process::ExitCode;

use clap::Parser;

use crate::error::Fatal;
use crate::plugin::Plugin;

/// The whole program; returns the process exit code.
pub fn main() -> ExitCode {
    let argv: Vec<_> = std::env::args_os().collect();
    let args = match cli::Args::try_parse_from(&argv) {
        Ok(args) => args,
        // --help and --version: printed to stdout as clap does, exit 0.
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => return refuse(Fatal::Usage(cli::usage_line(&e, &argv))),
    };
    if let Some(target) = &args.probe {
        return probe::run(target, &args.admin_listen);
    }
    log::init_tracing(args.log_format);
    let done = match &args.command {
        Some(cli::Command::New(new)) => scaffold::new(new),
        Some(cli::Command::Check(check)) => check::run(check),
        None => run(args),
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(fatal) => refuse(fatal),
    }
}

fn refuse(fatal: Fatal) -> ExitCode {
    eprintln!("effe-host: {fatal}");
    fatal.exit_code()
}

fn run(args: cli::Args) -> Result<(), Fatal> {
    let config = args.validate()?;
    // TLS files are checked before anything is loaded: a typo fails fast, with nothing to undo.
    let tls = match &config.tls {
        Some(tls) if !config.info => Some(tls::Tls::new(tls.clone())?),
        _ => None,
    };
    let plugin = Plugin::load(&config.plugin, config.allow_insecure_plugin)?;
    let info = plugin.info();
    if config.info {
        println!("{}", info.to_json());
        return Ok(());
    }
    // Signals are handled from before Init on: a SIGHUP (certificate rotation) while a slow
    // Init runs must not kill the host.
    let runtime = server::runtime(&config)?;
    let signals = {
        let _entered = runtime.enter();
        server::Signals::install()?
    };
    let began = std::time::Instant::now();
    plugin
        .init()
        .map_err(|f| Fatal::Init(info.name.to_owned(), f.to_string()))?;
    let init_took = began.elapsed();

    server::run(runtime, config, plugin, tls, signals, init_took)
}
