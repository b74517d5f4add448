//! Fatal errors: each prints as one line (`effe-host: what: why`) and maps to its own exit code,
//! so that an operator (or a container orchestrator) can tell failures apart.

use std::path::PathBuf;
use std::process::ExitCode;

/// A failure that stops the host.
#[derive(Debug, thiserror::Error)]
pub enum Fatal {
    /// Flags that make no sense together (clap reports its own usage errors with code 2 too).
    #[error("{0}")]
    Usage(String),
    /// The plugin could not be loaded.
    #[error("cannot load plugin {path}: {reason}", path = .path.display())]
    Load {
        path: PathBuf,
        kind: LoadFailure,
        reason: String,
    },
    /// The effe's Init failed or panicked.
    #[error("effe {0}: init {1}")]
    Init(String, String),
    /// A Start at boot (for --min-contexts) failed. The reason says how (`failed: …`,
    /// `panicked: …`: see [`crate::plugin::Failure`]).
    #[error("effe {0}: a start for --min-contexts {1}")]
    BootStart(String, String),
    /// The listener could not be set up.
    #[error("cannot listen on {0}: {1}")]
    Listen(std::net::SocketAddr, std::io::Error),
    /// The TLS files could not be used.
    #[error("TLS: {path}: {reason}", path = .path.display())]
    Tls {
        path: PathBuf,
        kind: TlsFailure,
        reason: String,
    },
    /// Shutdown ended with Contexts that were never stopped (a Run, Start or Stop still
    /// running at the deadline).
    #[error(
        "shutdown incomplete: {} Context(s) not stopped by the deadline ({} still in Run, {} still \
         starting, {} still stopping)",
        .0.total(), .0.in_run, .0.starting, .0.stopping
    )]
    Unstopped(crate::pool::Unstopped),
    /// Anything else at run time (the runtime could not be built, …).
    #[error("{0}")]
    Runtime(String),
}

/// Why a plugin was refused; each has its own exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadFailure {
    /// Missing or unreadable file.
    Missing,
    /// Not a shared library (dlopen refused it).
    NotALibrary,
    /// A shared library without the effe root module.
    NoRootModule,
    /// Built against an incompatible effe-abi (version or type layouts).
    Incompatible,
    /// Writable by group or others.
    Insecure,
}

/// Why the TLS setup failed; each has its own exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFailure {
    /// A PEM file is missing or unreadable.
    Unreadable,
    /// No certificate in the certificate (or client CA) file.
    NoCertificate,
    /// No usable private key in the key file.
    NoKey,
    /// The key does not match the certificate.
    KeyMismatch,
    /// The client CA file cannot be used to verify clients.
    BadClientCa,
}

impl Fatal {
    /// The process exit code. Documented in the README; never reuse a number.
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(match self {
            Fatal::Usage(_) => 2,
            Fatal::Load { kind, .. } => match kind {
                LoadFailure::Missing => 3,
                LoadFailure::NotALibrary => 4,
                LoadFailure::NoRootModule => 5,
                LoadFailure::Incompatible => 6,
                LoadFailure::Insecure => 7,
            },
            Fatal::Init(..) => 8,
            Fatal::BootStart(..) => 9,
            Fatal::Listen(..) => 10,
            Fatal::Tls { kind, .. } => match kind {
                TlsFailure::Unreadable => 11,
                TlsFailure::NoCertificate => 12,
                TlsFailure::NoKey => 13,
                TlsFailure::KeyMismatch => 14,
                TlsFailure::BadClientCa => 15,
            },
            Fatal::Unstopped(_) => 16,
            Fatal::Runtime(_) => 1,
        })
    }
}
