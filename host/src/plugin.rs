//! Loading an effe and calling its entry points. The only module that touches effe-abi's FFI
//! types: the rest of the host sees [`Plugin`], [`Context`], [`Failure`] and [`Info`].

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use abi_stable::library::{LibraryError, RootModule};
use bytes::Bytes;
use effe_abi::{EffeError, EffeModuleRef, ErrorKind, Header, HttpVersion, RawContext, Request};
use effe_abi::{RequestParts, ResponseBuffer};

use crate::error::{Fatal, LoadFailure};

/// A loaded effe. Copyable: the library is never unloaded.
#[derive(Clone, Copy)]
pub struct Plugin {
    module: EffeModuleRef,
}

/// An effe's metadata.
#[derive(Debug, Clone, Copy)]
pub struct Info {
    pub name: &'static str,
    pub version: &'static str,
    pub description: &'static str,
    pub abi_version: &'static str,
    pub nonblocking: bool,
}

impl Info {
    /// The metadata as one JSON object (what `--info` prints).
    pub fn to_json(self) -> String {
        serde_json::json!({
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "abi_version": self.abi_version,
            "nonblocking": self.nonblocking,
        })
        .to_string()
    }
}

/// One Context made by the effe's `start`: owned here, given back to `stop` exactly once.
#[derive(Debug)]
pub struct Context(RawContext);

/// An entry point's failure.
#[derive(Debug, Clone)]
pub struct Failure {
    pub panicked: bool,
    pub message: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.panicked {
            write!(f, "panicked: {}", self.message)
        } else {
            write!(f, "failed: {}", self.message)
        }
    }
}

impl From<EffeError> for Failure {
    #[cold]
    fn from(err: EffeError) -> Self {
        Failure {
            panicked: err.kind() == ErrorKind::Panicked,
            message: err.message().to_owned(),
        }
    }
}

/// What `run` receives, in the host's own types.
pub struct Call<'a> {
    pub parts: &'a http::request::Parts,
    pub body: &'a Bytes,
    pub peer_addr: &'a str,
    pub request_id: &'a str,
}

fn refuse(path: &Path, kind: LoadFailure, reason: impl Into<String>) -> Fatal {
    Fatal::Load {
        path: path.to_owned(),
        kind,
        reason: reason.into(),
    }
}

/// abi_stable's errors span several lines (and layout mismatches whole pages): keep the first
/// meaningful line, trimmed, so the error stays one line.
fn one_line(text: &str) -> String {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("unknown error");
    let mut line: String = line.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.len() > 300 {
        let mut end = 300;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        line.truncate(end);
        line.push('…');
    }
    line
}

fn classify(err: &LibraryError) -> (LoadFailure, String) {
    match err {
        LibraryError::OpenError { err, .. } => (
            LoadFailure::NotALibrary,
            format!(
                "not a loadable shared library: {}",
                one_line(&err.to_string())
            ),
        ),
        LibraryError::GetSymbolError { .. } => (
            LoadFailure::NoRootModule,
            "no effe root module in this library (is it built with effe_abi::export_effe!?)"
                .to_owned(),
        ),
        LibraryError::IncompatibleVersionNumber {
            expected_version,
            actual_version,
            ..
        } => (
            LoadFailure::Incompatible,
            format!(
                "incompatible effe ABI: the effe was built against effe-abi {actual_version}, \
                 this host needs effe-abi {expected_version}"
            ),
        ),
        LibraryError::AbiInstability(_) => (
            LoadFailure::Incompatible,
            format!(
                "incompatible effe ABI: its type layouts differ from effe-abi {} (rebuild the \
                 effe against the effe-abi this host uses)",
                effe_abi::ABI_VERSION
            ),
        ),
        LibraryError::RootModule { err, .. } => (
            LoadFailure::NoRootModule,
            format!(
                "the effe root module failed to load: {}",
                one_line(&err.to_string())
            ),
        ),
        LibraryError::Many(errs) if !errs.is_empty() => classify(&errs[0]),
        other => (
            LoadFailure::Incompatible,
            format!("incompatible effe ABI: {}", one_line(&other.to_string())),
        ),
    }
}

impl Plugin {
    /// Loads the effe at `path`, after checking that it exists and that only its owner may write
    /// it (dlopen runs the library's constructors: a writable library is a code-injection door).
    pub fn load(path: &Path, allow_insecure: bool) -> Result<Plugin, Fatal> {
        // dlopen of a bare name searches the library path, not the working directory.
        let canonical: PathBuf = path
            .canonicalize()
            .map_err(|e| refuse(path, LoadFailure::Missing, e.to_string()))?;
        let meta = fs::metadata(&canonical)
            .map_err(|e| refuse(path, LoadFailure::Missing, e.to_string()))?;
        if !meta.is_file() {
            return Err(refuse(path, LoadFailure::NotALibrary, "not a regular file"));
        }
        let mode = meta.permissions().mode();
        if mode & 0o022 != 0 && !allow_insecure {
            return Err(refuse(
                path,
                LoadFailure::Insecure,
                format!(
                    "writable by group or others (mode {:o}); fix with chmod go-w, or pass \
                     --allow-insecure-plugin",
                    mode & 0o7777
                ),
            ));
        }
        fs::File::open(&canonical)
            .map_err(|e| refuse(path, LoadFailure::Missing, e.to_string()))?;
        let module = EffeModuleRef::load_from_file(&canonical).map_err(|e| {
            let (kind, reason) = classify(&e);
            refuse(path, kind, reason)
        })?;
        Ok(Plugin { module })
    }

    /// The effe's metadata.
    pub fn info(&self) -> Info {
        let info = self.module.info();
        Info {
            name: info.name(),
            version: info.version(),
            description: info.description(),
            abi_version: info.abi_version(),
            nonblocking: info.nonblocking(),
        }
    }

    /// Calls `init`. The caller guarantees it is called once, before any `start`.
    pub fn init(&self) -> Result<(), Failure> {
        (self.module.init())().into_result().map_err(Failure::from)
    }

    /// Calls `start`: may block.
    pub fn start(&self) -> Result<Context, Failure> {
        (self.module.start())()
            .into_result()
            .map(Context)
            .map_err(Failure::from)
    }

    /// Calls `stop`, handing `ctx` back to the effe.
    pub fn stop(&self, ctx: Context) -> Result<(), Failure> {
        (self.module.stop())(ctx.0)
            .into_result()
            .map_err(Failure::from)
    }

    /// Calls `run` with `call`, collecting the response into `out`.
    pub fn run(
        &self,
        ctx: &mut Context,
        call: &Call<'_>,
        out: &mut ResponseBuffer,
    ) -> Result<(), Failure> {
        // On the stack for the usual couple of dozen headers: this runs for every request.
        const ON_STACK: usize = 24;
        let mut on_stack = [Header::new("", b""); ON_STACK];
        let spilled: Vec<Header<'_>>;
        let views = call
            .parts
            .headers
            .iter()
            .map(|(name, value)| Header::new(name.as_str(), value.as_bytes()));
        let headers: &[Header<'_>] = if call.parts.headers.len() <= ON_STACK {
            let mut n = 0;
            for (slot, view) in on_stack.iter_mut().zip(views) {
                *slot = view;
                n += 1;
            }
            &on_stack[..n]
        } else {
            spilled = spill(views);
            &spilled
        };
        let target = call
            .parts
            .uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str());
        let request = Request::new(RequestParts {
            method: call.parts.method.as_str(),
            target,
            version: HttpVersion::from(call.parts.version),
            headers,
            body: call.body,
            peer_addr: call.peer_addr,
            request_id: call.request_id,
        });
        let mut writer = out.writer();
        let result = (self.module.run())(&mut ctx.0, &request, &mut writer);
        result.into_result().map_err(Failure::from)
    }
}

/// More headers than fit on the stack: rare, and kept out of the hot path.
#[cold]
#[inline(never)]
fn spill<'a>(views: impl Iterator<Item = Header<'a>>) -> Vec<Header<'a>> {
    views.collect()
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn one_line_keeps_the_first_meaningful_line() {
        assert_eq!(one_line("\n  a   b\nc\n"), "a b");
        assert_eq!(one_line(""), "unknown error");
        assert!(one_line(&"é".repeat(400)).ends_with('…'));
    }
}
