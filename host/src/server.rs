//! The HTTP side: one task per connection (HTTP/1.1 or HTTP/2 with prior knowledge, chosen by
//! hyper-util's auto builder), every request handed to the effe through the Context pool, and a
//! graceful drain on SIGTERM/SIGINT.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use effe_abi::ResponseBuffer;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body as _, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{oneshot, watch};

use crate::cli::{CallMode, Config};
use crate::error::Fatal;
use crate::log::RunLog;
use crate::plugin::{Call, Context, Plugin};
use crate::pool::{AcquireError, Lease, Manager, Pool};
use crate::tls::Tls;

/// The pool's view of the effe: Start and Stop, with failures logged.
pub struct Effes(Plugin);

impl Effes {
    pub fn new(plugin: Plugin) -> Self {
        Effes(plugin)
    }
}

impl Manager for Effes {
    type Context = Context;

    fn start(&self) -> Result<Context, String> {
        self.0.start().map_err(|f| f.to_string())
    }

    fn stop(&self, ctx: Context) {
        if let Err(f) = self.0.stop(ctx) {
            tracing::error!(effe = self.0.info().name, "stop {f}");
        }
    }
}

/// Everything a request needs, shared by all connections.
struct App {
    plugin: Plugin,
    pool: Pool<Effes>,
    call_mode: CallMode,
    max_body_size: usize,
    run_log: RunLog,
    ids: RequestIds,
}

type Body = Full<Bytes>;

/// Request ids: a per-process random prefix and a counter, unless the client (an Ingress) sent
/// a usable `x-request-id`.
struct RequestIds {
    prefix: u32,
    next: AtomicU64,
}

impl RequestIds {
    fn new() -> Self {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        RequestIds {
            prefix: h.finish() as u32,
            next: AtomicU64::new(1),
        }
    }

    /// `pppppppp-n`: the prefix and the counter in hex, formatted without allocating (this runs
    /// for every request).
    fn next(&self) -> RequestId {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut id = RequestId {
            buf: [0; 25],
            len: 0,
        };
        for shift in (0..8).rev() {
            id.push(HEX[(self.prefix >> (shift * 4)) as usize & 0xf]);
        }
        id.push(b'-');
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let digits = (64 - n.leading_zeros()).div_ceil(4).max(1);
        for shift in (0..digits).rev() {
            id.push(HEX[(n >> (shift * 4)) as usize & 0xf]);
        }
        id
    }
}

/// A generated request id (at most 8 + 1 + 16 ASCII bytes).
struct RequestId {
    buf: [u8; 25],
    len: usize,
}

impl RequestId {
    fn push(&mut self, b: u8) {
        self.buf[self.len] = b;
        self.len += 1;
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).expect("hex digits are ASCII")
    }
}

/// A constant, so that the per-request lookup does not parse the name.
const X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

fn usable_request_id(v: &HeaderValue) -> Option<&str> {
    let bytes = v.as_bytes();
    let ok = !bytes.is_empty() && bytes.len() <= 128 && bytes.iter().all(|b| b.is_ascii_graphic());
    if ok {
        v.to_str().ok()
    } else {
        None
    }
}

fn plain(status: StatusCode) -> Response<Body> {
    let text = status.canonical_reason().unwrap_or("Error");
    let mut resp = Response::new(Full::new(Bytes::from(format!("{text}\n"))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn internal_error(request_id: &str) -> Response<Body> {
    let mut resp = plain(StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = HeaderValue::from_str(request_id) {
        resp.headers_mut().insert(X_REQUEST_ID, v);
    }
    resp
}

fn unavailable(err: &AcquireError) -> Response<Body> {
    tracing::debug!(error = %err, "503");
    let mut resp = plain(StatusCode::SERVICE_UNAVAILABLE);
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    resp
}

/// One connection's view of the app: what hyper calls for each request on it.
#[derive(Clone)]
struct ConnService {
    app: Arc<App>,
    peer: Arc<str>,
}

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Reply;

    fn call(&self, req: Request<Incoming>) -> Reply {
        self.app.serve(req, &self.peer)
    }
}

/// A response computed during `call` (no future state to move around: the common case of an
/// inline effe, a request without a body and an idle Context), or the general path, boxed.
enum Reply {
    Ready(Option<Response<Body>>),
    Later(Pin<Box<dyn Future<Output = Response<Body>> + Send>>),
}

impl Future for Reply {
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Reply::Ready(resp) => Poll::Ready(Ok(resp.take().expect("polled after completion"))),
            Reply::Later(fut) => fut.as_mut().poll(cx).map(Ok),
        }
    }
}

impl App {
    fn serve(self: &Arc<Self>, req: Request<Incoming>, peer: &Arc<str>) -> Reply {
        if self.call_mode == CallMode::Inline && req.body().is_end_stream() {
            if let Some(mut lease) = self.pool.try_idle() {
                let (parts, _) = req.into_parts();
                return Reply::Ready(Some(self.invoke(&mut lease, &parts, &Bytes::new(), peer)));
            }
        }
        Reply::Later(Box::pin(self.clone().handle(req, peer.clone())))
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>, peer: Arc<str>) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let body = if body.is_end_stream() {
            // GETs and the like: skip the collect machinery.
            Bytes::new()
        } else {
            match self.read_body(body).await {
                Ok(body) => body,
                Err(resp) => return resp,
            }
        };
        let mut lease = match self.pool.acquire().await {
            Ok(lease) => lease,
            Err(e) => return unavailable(&e),
        };
        match self.call_mode {
            CallMode::Inline => self.invoke(&mut lease, &parts, &body, &peer),
            CallMode::Thread => {
                let app = self.clone();
                tokio::task::spawn_blocking(move || app.invoke(&mut lease, &parts, &body, &peer))
                    .await
                    .unwrap_or_else(|_| plain(StatusCode::INTERNAL_SERVER_ERROR))
            }
        }
    }

    /// The whole body, at most `--max-body-size` bytes (413 beyond, 400 if the client fails).
    async fn read_body(&self, body: Incoming) -> Result<Bytes, Response<Body>> {
        match Limited::new(body, self.max_body_size).collect().await {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                Err(plain(StatusCode::PAYLOAD_TOO_LARGE))
            }
            Err(_) => Err(plain(StatusCode::BAD_REQUEST)),
        }
    }

    /// Calls Run and turns what it wrote into a response. Never panics: an effe panic arrives
    /// here as a value.
    fn invoke(
        &self,
        lease: &mut Lease<Effes>,
        parts: &http::request::Parts,
        body: &Bytes,
        peer: &str,
    ) -> Response<Body> {
        let generated;
        let request_id = match parts.headers.get(X_REQUEST_ID).and_then(usable_request_id) {
            Some(id) => id,
            None => {
                generated = self.ids.next();
                generated.as_str()
            }
        };
        let call = Call {
            parts,
            body,
            peer_addr: peer,
            request_id,
        };
        let mut out = ResponseBuffer::new();
        match self.plugin.run(lease.context(), &call, &mut out) {
            Ok(()) => into_response(out),
            Err(failure) => {
                self.run_log.run_failed(request_id, &failure);
                if failure.panicked {
                    lease.retire();
                    internal_error(request_id)
                } else if out.is_written() {
                    into_response(out)
                } else {
                    internal_error(request_id)
                }
            }
        }
    }
}

fn into_response(out: ResponseBuffer) -> Response<Body> {
    let (status, headers, body) = out.into_parts();
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    resp
}

/// A single-threaded runtime: one per network thread. Tasks never migrate between threads,
/// which spares the work-stealing scheduler's bookkeeping on every wake-up.
fn runtime(config: &Config) -> Result<tokio::runtime::Runtime, Fatal> {
    tokio::runtime::Builder::new_current_thread()
        // Run calls (thread mode), Starts and Stops: bounded by the pool, plus headroom.
        .max_blocking_threads(config.pool.max * 2 + 16)
        .enable_all()
        .build()
        .map_err(|e| Fatal::Runtime(format!("cannot start the runtime: {e}")))
}

/// `threads` listening sockets on `addr`, sharing it through SO_REUSEPORT: the kernel spreads
/// new connections over them, one per network thread, with no hand-off between threads.
fn bind(addr: SocketAddr, threads: usize) -> Result<Vec<std::net::TcpListener>, Fatal> {
    let mut listeners: Vec<std::net::TcpListener> = Vec::with_capacity(threads);
    for _ in 0..threads {
        // The first socket settles the port (`:0` picks one); the others join it.
        let at = listeners.first().map_or(Ok(addr), |l| l.local_addr());
        let socket = at
            .and_then(|at| {
                let socket = if at.is_ipv4() {
                    tokio::net::TcpSocket::new_v4()?
                } else {
                    tokio::net::TcpSocket::new_v6()?
                };
                socket.set_reuseaddr(true)?;
                socket.set_reuseport(true)?;
                socket.bind(at)?;
                socket.listen(1024)
            })
            .and_then(|l| l.into_std());
        listeners.push(socket.map_err(|e| Fatal::Listen(addr, e))?);
    }
    Ok(listeners)
}

/// Starts the minimum Contexts, listens on every network thread, serves until SIGTERM/SIGINT,
/// drains, stops every Context.
pub fn run(config: Config, plugin: Plugin, tls: Option<Tls>) -> Result<(), Fatal> {
    let runtime = runtime(&config)?;
    let result = runtime.block_on(serve(config, plugin, tls));
    // A Run stuck past the shutdown deadline must not keep the process alive.
    runtime.shutdown_timeout(Duration::from_millis(100));
    result
}

async fn serve(config: Config, plugin: Plugin, tls: Option<Tls>) -> Result<(), Fatal> {
    let info = plugin.info();
    // Installed first, so that a signal during boot is a clean shutdown, not a kill.
    let mut sigterm = signal(SignalKind::terminate()).map_err(|e| Fatal::Runtime(e.to_string()))?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| Fatal::Runtime(e.to_string()))?;
    let sighup = signal(SignalKind::hangup()).map_err(|e| Fatal::Runtime(e.to_string()))?;
    let tls = tls.map(Arc::new);
    tokio::spawn(reload_on_sighup(sighup, tls.clone()));

    let call_mode = config.call_mode.unwrap_or(if info.nonblocking {
        CallMode::Inline
    } else {
        CallMode::Thread
    });
    // The pool's own tasks (Starts, Stops, maintenance) live on this, the main, runtime.
    let pool = Pool::new(
        Effes::new(plugin),
        config.pool.clone(),
        tokio::runtime::Handle::current(),
    );
    let filler = pool.clone();
    tokio::task::spawn_blocking(move || filler.fill())
        .await
        .map_err(|e| Fatal::Runtime(e.to_string()))?
        .map_err(|e| Fatal::BootStart(info.name.to_owned(), e))?;

    let listeners = match bind(config.listen, config.threads) {
        Ok(l) => l,
        Err(e) => {
            pool.close(Instant::now() + config.shutdown_timeout).await;
            return Err(e);
        }
    };
    let addr = listeners[0]
        .local_addr()
        .map_err(|e| Fatal::Listen(config.listen, e))?;
    let app = Arc::new(App {
        plugin,
        pool: pool.clone(),
        call_mode,
        max_body_size: config.max_body_size,
        run_log: RunLog::connect(config.syslog.clone(), info.name),
        ids: RequestIds::new(),
    });
    tokio::spawn(pool.clone().maintain());

    // The shutdown deadline, once a signal came.
    let (stop_tx, stop_rx) = watch::channel(None::<Instant>);
    let mut listeners = listeners.into_iter();
    let main_listener = listeners.next().expect("at least one network thread");
    let mut others = Vec::new();
    for (i, listener) in listeners.enumerate() {
        let (done_tx, done_rx) = oneshot::channel::<()>();
        let (app, tls, stop) = (app.clone(), tls.clone(), stop_rx.clone());
        let thread_runtime = runtime(&config)?;
        std::thread::Builder::new()
            .name(format!("effe-net-{}", i + 1))
            .spawn(move || {
                thread_runtime.block_on(network_thread(listener, app, tls, stop));
                thread_runtime.shutdown_timeout(Duration::from_millis(100));
                let _ = done_tx.send(());
            })
            .map_err(|e| Fatal::Runtime(format!("cannot start a network thread: {e}")))?;
        others.push(done_rx);
    }
    let main_thread = tokio::spawn(network_thread(main_listener, app, tls.clone(), stop_rx));
    tracing::info!(
        %addr,
        tls = tls.as_ref().map_or("off".to_owned(), |t| t.describe()),
        effe = info.name,
        version = info.version,
        call = ?call_mode,
        threads = config.threads,
        min_contexts = config.pool.min,
        max_contexts = config.pool.max,
        "listening"
    );

    let signal_name = tokio::select! {
        _ = sigterm.recv() => "SIGTERM",
        _ = sigint.recv() => "SIGINT",
    };
    let deadline = Instant::now() + config.shutdown_timeout;
    tracing::info!(
        signal = signal_name,
        "shutting down: draining in-flight requests"
    );
    let _ = stop_tx.send(Some(deadline));
    let _ = main_thread.await;
    for done in others {
        let _ = done.await;
    }
    let left = pool.close(deadline).await;
    if left > 0 {
        return Err(Fatal::Runtime(format!(
            "{left} Context(s) still in Run at the shutdown deadline; exiting without stopping them"
        )));
    }
    tracing::info!("all Contexts stopped; bye");
    Ok(())
}

/// One network thread: accepts on its own listener until the shutdown deadline is set, then
/// lets its connections finish their in-flight requests (until the deadline).
async fn network_thread(
    listener: std::net::TcpListener,
    app: Arc<App>,
    tls: Option<Arc<Tls>>,
    mut stop: watch::Receiver<Option<Instant>>,
) {
    let listener = match listener
        .set_nonblocking(true)
        .and_then(|()| TcpListener::from_std(listener))
    {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "network thread cannot use its listener");
            return;
        }
    };
    let stopped = async {
        let _ = stop.wait_for(Option::is_some).await;
    };
    let graceful = accept_loop(listener, app, tls, stopped).await;
    let deadline = stop.borrow().unwrap_or_else(Instant::now);
    drain(graceful, deadline).await;
}

async fn drain(graceful: GracefulShutdown, deadline: Instant) {
    if tokio::time::timeout_at(deadline.into(), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open at the shutdown deadline");
    }
}

/// On SIGHUP, re-reads the TLS certificate and key; a bad pair is refused and the old one kept.
async fn reload_on_sighup(mut sighup: tokio::signal::unix::Signal, tls: Option<Arc<Tls>>) {
    while sighup.recv().await.is_some() {
        match &tls {
            None => tracing::info!("SIGHUP: no TLS certificate to reload"),
            Some(tls) => match tls.reload() {
                Ok(()) => tracing::info!("SIGHUP: TLS certificate reloaded"),
                Err(e) => tracing::error!(
                    "SIGHUP: TLS certificate reload refused, keeping the current one: {e}"
                ),
            },
        }
    }
}

/// The protocol builders, made once and cloned into each connection task.
#[derive(Clone)]
struct Builders {
    /// Cleartext: HTTP/1.1, or HTTP/2 when the client opens with the h2 preface.
    auto: auto::Builder<TokioExecutor>,
    /// TLS: the protocol is the one ALPN chose (hyper-util's auto builder would ignore it).
    http1: hyper::server::conn::http1::Builder,
    http2: hyper::server::conn::http2::Builder<TokioExecutor>,
}

impl Builders {
    fn new() -> Self {
        let mut auto = auto::Builder::new(TokioExecutor::new());
        auto.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT);
        auto.http2().timer(TokioTimer::new());
        let mut http1 = hyper::server::conn::http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT);
        let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        http2.timer(TokioTimer::new());
        Builders { auto, http1, http2 }
    }
}

const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Accepts until `shutdown` resolves; returns the connections to drain.
async fn accept_loop(
    listener: TcpListener,
    app: Arc<App>,
    tls: Option<Arc<Tls>>,
    shutdown: impl std::future::Future<Output = ()>,
) -> GracefulShutdown {
    let builders = Builders::new();
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let peer: Arc<str> = peer.to_string().into();
        let service = ConnService {
            app: app.clone(),
            peer,
        };
        let watcher = graceful.watcher();
        let builders = builders.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let result = match tls {
                None => {
                    let conn = builders
                        .auto
                        .serve_connection(TokioIo::new(stream), service);
                    watcher.watch(conn.into_owned()).await
                }
                Some(tls) => {
                    // The handshake runs here, in the connection's own task, bounded: a client
                    // that never finishes it holds nothing but this task.
                    let handshake = tls.acceptor().accept(stream);
                    let stream =
                        match tokio::time::timeout(tls.handshake_timeout(), handshake).await {
                            Ok(Ok(stream)) => stream,
                            Ok(Err(e)) => {
                                tracing::debug!(error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!("TLS handshake timed out");
                                return;
                            }
                        };
                    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                    let io = TokioIo::new(stream);
                    if h2 {
                        let conn = builders.http2.serve_connection(io, service);
                        watcher.watch(conn).await.map_err(Into::into)
                    } else {
                        let conn = builders.http1.serve_connection(io, service);
                        watcher.watch(conn).await.map_err(Into::into)
                    }
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    graceful
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_request_ids_are_prefix_dash_counter_in_hex() {
        let ids = RequestIds {
            prefix: 0x00ab_cdef,
            next: AtomicU64::new(0),
        };
        assert_eq!(ids.next().as_str(), "00abcdef-0");
        assert_eq!(ids.next().as_str(), "00abcdef-1");
        ids.next.store(0x1f, Ordering::Relaxed);
        assert_eq!(ids.next().as_str(), "00abcdef-1f");
        ids.next.store(u64::MAX, Ordering::Relaxed);
        assert_eq!(ids.next().as_str(), "00abcdef-ffffffffffffffff");
    }
}
