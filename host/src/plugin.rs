//! Loading an effe and calling its entry points. The only module that touches effe-abi's FFI
//! types: the rest of the host sees [`Plugin`], [`Context`], [`Failure`] and [`Info`].

use std::fs;
use std::os::fd::IntoRawFd;
use std::path::{Path, PathBuf};

use abi_stable::library::{LibraryError, RootModule};
use bytes::Bytes;
use effe_abi::abi::{EffeError, EffeInterfaces, EffeModuleRef, ErrorKind, RawContext};
use effe_abi::abi::{LayoutMismatch, LogV1, MetaV1, PanicStrategy, RunV2, LOG_V1, META_V1, RUN_V2};
use effe_abi::abi::{RequestParts, ResponseBuffer};
use effe_abi::{Header, HttpVersion, Request, DEADLINE_HEADER};
use effe_abi::{CLIENT_CERT_HEADER, CLIENT_SUBJECT_HEADER};

use crate::error::{Fatal, LoadFailure};
use crate::tls::ClientCert;
use crate::trust;

/// A loaded effe. Copyable: the library is never unloaded.
#[derive(Clone, Copy)]
pub struct Plugin {
    module: EffeModuleRef,
    /// `run@2`, when the effe offers it (built against effe-abi 0.1.1 or later).
    run_v2: Option<&'static RunV2>,
    /// From `meta@1` (effe-abi 0.1.2 and later); `None` for an older effe.
    panic: Option<PanicStrategy>,
    /// The effe reads request bodies as they arrive (`meta@1`).
    stream_request_body: bool,
    /// Its own limit on a streamed body, over the host's `--max-body-size`.
    max_streamed_body_size: Option<u64>,
    /// The interfaces beyond the baseline that the effe offers and this host uses.
    interfaces: &'static [&'static str],
}

/// An effe's metadata.
#[derive(Debug, Clone, Copy)]
pub struct Info {
    pub name: &'static str,
    pub version: &'static str,
    pub description: &'static str,
    pub abi_version: &'static str,
    pub nonblocking: bool,
    /// How the effe was built to handle panics (`unwind`; `abort` is refused at load), `None`
    /// for an effe built before effe-abi said (0.1.2).
    pub panic: Option<&'static str>,
    /// Whether the effe reads request bodies as they arrive (`STREAM_REQUEST_BODY`).
    pub stream_request_body: bool,
    /// Its own limit on those bodies (`MAX_STREAMED_BODY_SIZE`), if it sets one.
    pub max_streamed_body_size: Option<u64>,
    /// The interfaces beyond the baseline that the effe offers and this host uses.
    pub interfaces: &'static [&'static str],
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
            "panic": self.panic.unwrap_or("unknown"),
            "stream_request_body": self.stream_request_body,
            "max_streamed_body_size": self.max_streamed_body_size,
            "interfaces": self.interfaces,
        })
        .to_string()
    }
}

/// One Context made by the effe's `start`: owned here, given back to `stop` exactly once.
#[derive(Debug)]
pub struct Context(RawContext);

/// An entry point's failure. Displayed as `failed: …` or `panicked: …`, to follow the entry
/// point's name (`init failed: …`): a message around it must not say "failed" again.
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
    /// The Run's deadline in milliseconds since the Unix epoch, told to the effe in the
    /// `effe-deadline-ms` header.
    pub deadline_ms: Option<u64>,
    /// Under mutual TLS, the client's certificate, told to the effe in the
    /// `effe-client-subject` and `effe-client-cert` headers.
    pub client: Option<&'a ClientCert>,
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
        LibraryError::OpenError { err, path } => {
            // dlerror starts with the path it was given, which the refusal names already.
            let why = err.to_string();
            let prefix = format!("{}: ", path.display());
            let why = why.strip_prefix(&prefix).unwrap_or(&why);
            (
                LoadFailure::NotALibrary,
                format!("not a loadable shared library: {}", one_line(why)),
            )
        }
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
    /// Loads the effe at `path`. dlopen runs the library's constructors, so unless
    /// `allow_insecure` the file must be one that only root or the host's own user can write or
    /// replace (see [`check_trusted`]): anyone else who could would be running code in the host.
    ///
    /// The checks and the load use one descriptor: the file is opened once, checked with
    /// `fstat`, and dlopen'ed as `/proc/self/fd/N`, so the inode checked is the inode loaded,
    /// whatever happens to the path in between. (So the loader's `$ORIGIN` is /proc/self/fd:
    /// an effe cannot find libraries next to itself through an `$ORIGIN` runpath.)
    pub fn load(path: &Path, allow_insecure: bool) -> Result<Plugin, Fatal> {
        // dlopen of a bare name searches the library path, not the working directory; the
        // canonical path is also what the directory checks walk.
        let canonical: PathBuf = path
            .canonicalize()
            .map_err(|e| refuse(path, LoadFailure::Missing, e.to_string()))?;
        let file = fs::File::open(&canonical)
            .map_err(|e| refuse(path, LoadFailure::Missing, e.to_string()))?;
        let meta = file
            .metadata()
            .map_err(|e| refuse(path, LoadFailure::Missing, e.to_string()))?;
        if !meta.is_file() {
            return Err(refuse(path, LoadFailure::NotALibrary, "not a regular file"));
        }
        let by_descriptor = trust::descriptor_path(&file, &meta);
        if !allow_insecure {
            // Without /proc (a bare chroot; a container always has it) the file could only be
            // loaded by path, which is what the checks cannot vouch for: refuse rather than
            // check one file and load another.
            if by_descriptor.is_none() {
                return Err(refuse(
                    path,
                    LoadFailure::Insecure,
                    "cannot load the checked file: /proc is not mounted (the host loads the \
                     plugin through /proc/self/fd); mount /proc, or pass --allow-insecure-plugin",
                ));
            }
            trust::check_trusted(&canonical, &meta)
                .map_err(|why| refuse(path, LoadFailure::Insecure, why))?;
        }
        // With --allow-insecure-plugin and no /proc, the path is all there is.
        let load_path = by_descriptor.unwrap_or_else(|| canonical.clone());
        let module = EffeModuleRef::load_from_file(&load_path).map_err(|e| {
            let (kind, reason) = classify(&e);
            // dlerror names the path it was given: name the plugin's file instead.
            let reason =
                reason.replace(&*load_path.to_string_lossy(), &canonical.to_string_lossy());
            refuse(path, kind, reason)
        })?;
        // The library is never unloaded and the loader knows it as /proc/self/fd/N (dladdr and
        // backtraces open that name): keep N open for good, so that the name keeps naming this
        // file and never another one that reuses the number.
        let _ = file.into_raw_fd();
        // What the effe offers beyond the baseline (nothing, if built against effe-abi 0.1.0).
        let interfaces = EffeInterfaces::of_library(&load_path)
            .map_err(|why| refuse(path, LoadFailure::Incompatible, why))?;
        let mismatched = |mismatch: LayoutMismatch| {
            refuse(
                path,
                LoadFailure::Incompatible,
                format!(
                    "incompatible effe ABI: {mismatch} (rebuild the effe against effe-abi {})",
                    effe_abi::abi::ABI_VERSION
                ),
            )
        };
        let run_v2 = interfaces.get::<RunV2>().map_err(mismatched)?;
        let meta = interfaces.get::<MetaV1>().map_err(mismatched)?;
        let log = interfaces.get::<LogV1>().map_err(mismatched)?;
        let panic = meta.map(|meta| meta.panic);
        let stream_request_body = meta.is_some_and(|meta| meta.stream_request_body);
        let max_streamed_body_size = meta
            .map(|meta| meta.max_streamed_body_size)
            .filter(|&max| max > 0);
        if panic == Some(PanicStrategy::Abort) {
            return Err(refuse(
                path,
                LoadFailure::Incompatible,
                "the effe was built with panic = \"abort\": its first panic would end the \
                 host; rebuild it with panic = \"unwind\" (the default)",
            ));
        }
        let mut used = Vec::new();
        for (name, present) in [
            (RUN_V2, run_v2.is_some()),
            (META_V1, meta.is_some()),
            (LOG_V1, log.is_some()),
        ] {
            if present {
                used.push(name);
            }
        }
        let plugin = Plugin {
            module,
            run_v2,
            panic,
            stream_request_body,
            max_streamed_body_size,
            // Once per process: the list lives as long as the library.
            interfaces: Box::leak(used.into_boxed_slice()),
        };
        if let Some(log) = log {
            // Before anything of the effe's runs: its `init` may log.
            (log.attach)(crate::log::effe_log(plugin.info().name));
        }
        Ok(plugin)
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
            panic: self.panic.map(PanicStrategy::as_str),
            stream_request_body: self.stream_request_body,
            max_streamed_body_size: self.max_streamed_body_size,
            interfaces: self.interfaces,
        }
    }

    /// Whether the effe reads request bodies as they arrive, and its own limit on them (`None`:
    /// the host's `--max-body-size`).
    pub fn streamed_body(&self) -> Option<Option<u64>> {
        self.stream_request_body
            .then_some(self.max_streamed_body_size)
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
        let mut digits = [0u8; 20];
        let deadline = call
            .deadline_ms
            .map(|ms| Header::new(DEADLINE_HEADER, decimal(ms, &mut digits)));
        // Under mutual TLS: borrowed from the connection, which worked them out once.
        let subject = call.client.and_then(ClientCert::subject);
        let cert = call.client.map(ClientCert::der_base64);
        let added = [
            authority_as_host(call.parts),
            deadline,
            subject.map(|s| Header::new(CLIENT_SUBJECT_HEADER, s.as_bytes())),
            cert.map(|c| Header::new(CLIENT_CERT_HEADER, c.as_bytes())),
        ];
        let count = call.parts.headers.len() + added.iter().flatten().count();
        let headers: &[Header<'_>] = if count <= ON_STACK {
            let mut n = 0;
            for (name, value) in &call.parts.headers {
                if !host_only(name.as_str()) {
                    on_stack[n] = Header::new(name.as_str(), value.as_bytes());
                    n += 1;
                }
            }
            for header in added.into_iter().flatten() {
                on_stack[n] = header;
                n += 1;
            }
            &on_stack[..n]
        } else {
            spilled = spill(&call.parts.headers, added);
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
        let result = match self.run_v2 {
            Some(run_v2) => (run_v2.run)(&mut ctx.0, &request, out.host_call()),
            None => (self.module.run())(&mut ctx.0, &request, &mut out.raw_writer()),
        };
        result.into_result().map_err(Failure::from)
    }
}

/// `n` in decimal, written into `buf` (a u64 has at most 20 digits): no allocation. The last
/// deadline formatted on this thread is kept: requests in the same millisecond (dozens, under
/// load) reuse its digits.
fn decimal(n: u64, buf: &mut [u8; 20]) -> &[u8] {
    thread_local! {
        static LAST: std::cell::Cell<(u64, [u8; 20], u8)> = const {
            std::cell::Cell::new((u64::MAX, [0; 20], 0))
        };
    }
    let (last, digits, len) = LAST.get();
    if last == n {
        *buf = digits;
        return &buf[20 - usize::from(len)..];
    }
    let len = format_decimal(n, buf).len();
    LAST.set((n, *buf, len as u8));
    &buf[20 - len..]
}

fn format_decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[at..];
        }
    }
}

/// Whether `name` is a header only the host may say (the deadline, the client's certificate):
/// a client's own is never shown to the effe, on any connection. Checked for every header of
/// every request: a length test (the names are 16 and 19 bytes long) settles almost any other.
fn host_only(name: &str) -> bool {
    matches!(
        name,
        DEADLINE_HEADER | CLIENT_SUBJECT_HEADER | CLIENT_CERT_HEADER
    )
}

/// More headers than fit on the stack: rare, and kept out of the hot path.
#[cold]
#[inline(never)]
fn spill<'a>(headers: &'a http::HeaderMap, added: [Option<Header<'a>>; 4]) -> Vec<Header<'a>> {
    headers
        .iter()
        .filter(|(name, _)| !host_only(name.as_str()))
        .map(|(name, value)| Header::new(name.as_str(), value.as_bytes()))
        .chain(added.into_iter().flatten())
        .collect()
}

/// HTTP/2's `:authority` as the `host` an effe reads, when the client sent no `host` (RFC 9113
/// §8.3.1: what a gateway to HTTP/1.1 does; `rules` refuses a `host` that disagrees with it).
/// Borrowed, not inserted into the request's headers: no allocation.
fn authority_as_host(parts: &http::request::Parts) -> Option<Header<'_>> {
    if parts.version != http::Version::HTTP_2 || parts.headers.contains_key(http::header::HOST) {
        return None;
    }
    let authority = parts.uri.authority()?;
    Some(Header::new("host", authority.as_str().as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn decimal_digits() {
        let mut buf = [0; 20];
        assert_eq!(super::decimal(0, &mut buf), b"0");
        assert_eq!(
            super::decimal(1_764_412_345_678, &mut buf),
            b"1764412345678"
        );
        assert_eq!(super::decimal(u64::MAX, &mut buf), b"18446744073709551615");
        // Again: from the thread's last one.
        assert_eq!(
            super::decimal(u64::MAX, &mut [7; 20]),
            b"18446744073709551615"
        );
        assert_eq!(super::decimal(42, &mut buf), b"42");
    }

    #[test]
    fn one_line_keeps_the_first_meaningful_line() {
        assert_eq!(one_line("\n  a   b\nc\n"), "a b");
        assert_eq!(one_line(""), "unknown error");
        assert!(one_line(&"é".repeat(400)).ends_with('…'));
    }
}
