//! The safe trait an effe author implements.

use crate::{Error, Request, ResponseWriter};

/// One function served by `effe-host`.
///
/// The value returned by [`init`](Effe::init) lives for the whole process and is shared by every
/// Context (put read-only configuration there). A [`Context`](Effe::Context) is one concurrent
/// worker's resources: a database connection, an HTTP client, scratch buffers.
///
/// # Lifecycle
///
/// - `init` runs once, before anything else. An error or panic stops the host before it serves.
/// - `start` runs whenever the host's pool needs one more Context: at boot for the minimum, later
///   under load. An error answers the waiting request `503`.
/// - `run` handles one request with exclusive use of one Context. It may block (a database
///   call) unless the effe sets [`NONBLOCKING`](Effe::NONBLOCKING). An error is logged with the
///   request id; if nothing was written the client gets `500`. A panic gives `500` and the host
///   retires that Context (calls `stop`).
/// - `stop` runs exactly once for every Context that `start` made: when it has been idle too
///   long, after its `run` panicked, or at shutdown.
///
/// Contexts carry no promise of which request gets which: keep no per-user state in them.
/// Panics are caught inside the effe in every entry point; nothing unwinds into the host.
pub trait Effe: Sized + Send + Sync + 'static {
    /// One worker's resources. Moved between threads, never shared.
    type Context: Send + 'static;

    /// Set to `true` only if `run` never blocks (no I/O, no locks held long, no sleeps): the host
    /// then calls it directly on its network threads, which is markedly faster. Left `false`,
    /// the host runs each call on a thread where blocking is harmless.
    const NONBLOCKING: bool = false;

    /// Set to `true` to read request bodies as they arrive: the host then calls `run` as soon
    /// as a request's head has arrived, [`Request::body`] is empty, and
    /// [`Request::body_reader`] yields the body, blocking until its next bytes come. For
    /// uploads larger than should be held in memory. Left `false`, the host reads the whole
    /// body first (up to its `--max-body-size`).
    ///
    /// Needs a `run` that may block (not [`NONBLOCKING`](Effe::NONBLOCKING)), and a host
    /// built with effe-abi 0.1.2 or later; otherwise the body is read whole first and
    /// `body_reader` reads it from memory, so the same code works either way.
    const STREAM_REQUEST_BODY: bool = false;

    /// The most bytes a streamed request body may have: `None` keeps the host's
    /// `--max-body-size`; `Some(u64::MAX)` lifts the limit. A read past it fails, and the
    /// client gets `413`.
    const MAX_STREAMED_BODY_SIZE: Option<u64> = None;

    /// Once per process, before any `start`.
    ///
    /// # Errors
    ///
    /// An error makes the host exit without serving.
    fn init() -> Result<Self, Error>;

    /// Makes one Context.
    ///
    /// # Errors
    ///
    /// The request waiting for this Context gets `503`; the host logs the error and backs off.
    fn start(&self) -> Result<Self::Context, Error>;

    /// Handles one request.
    ///
    /// # Errors
    ///
    /// Logged to syslog with the request id; the client gets `500` if nothing was written.
    fn run(
        &self,
        ctx: &mut Self::Context,
        req: &Request<'_>,
        resp: &mut ResponseWriter<'_>,
    ) -> Result<(), Error>;

    /// Closes what `start` opened. The default drops the Context.
    ///
    /// # Errors
    ///
    /// Logged; the Context is gone either way.
    fn stop(&self, ctx: Self::Context) -> Result<(), Error> {
        drop(ctx);
        Ok(())
    }
}
