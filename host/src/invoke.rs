//! From request to effe to response: the per-connection service, the fast inline path, the
//! general path (body, waiting for a Context, Run on a blocking thread), request ids, and what
//! the client gets when the effe fails or no Context is free.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::Poll;

use bytes::Bytes;
use effe_abi::abi::ResponseBuffer;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::{Body as _, Incoming};

use std::sync::atomic::AtomicU8;
use std::time::{Duration, Instant};

use crate::access::{AccessLog, Entry};
use crate::cli::CallMode;
use crate::log::RunLog;
use crate::metrics::{Conn, Metrics, Proto, Shard, Unavailable};
use crate::plugin::{Call, Context, Failure, Plugin};
use crate::pool::{AcquireError, Lease, Manager, Pool};
use crate::rules;
use crate::tls::ClientCert;

/// The pool's view of the effe: Start and Stop, counted, with failures logged.
pub struct Effes {
    plugin: Plugin,
    metrics: Arc<Metrics>,
}

impl Effes {
    pub fn new(plugin: Plugin, metrics: Arc<Metrics>) -> Self {
        Effes { plugin, metrics }
    }
}

impl Manager for Effes {
    type Context = Context;

    fn start(&self) -> Result<Context, String> {
        let began = Instant::now();
        let started = self.plugin.start();
        self.metrics.started(began.elapsed(), started.is_ok());
        started.map_err(|f| f.to_string())
    }

    fn stop(&self, ctx: Context) {
        let stopped = self.plugin.stop(ctx);
        self.metrics.stopped();
        if let Err(f) = stopped {
            tracing::error!(effe = self.plugin.info().name, "stop {f}");
        }
    }
}

/// Everything a request needs, shared by all connections.
pub(crate) struct App {
    pub(crate) plugin: Plugin,
    pub(crate) pool: Pool<Effes>,
    pub(crate) call_mode: CallMode,
    pub(crate) max_body_size: usize,
    pub(crate) run_log: Arc<RunLog>,
    pub(crate) ids: RequestIds,
    pub(crate) metrics: Arc<Metrics>,
    /// `--timeout`: how long a Run may take (enforced on the blocking threads only).
    pub(crate) timeout: Option<Duration>,
    pub(crate) access: Option<Arc<AccessLog>>,
    pub(crate) http: crate::server::HttpLimits,
    pub(crate) body_read_timeout: Duration,
    pub(crate) write_timeout: Duration,
    pub(crate) max_connections: usize,
    /// Places for `--max-connections`, shared by every network thread.
    pub(crate) connections: Arc<tokio::sync::Semaphore>,
    /// At the cap now (for one warning per episode).
    pub(crate) capped: std::sync::atomic::AtomicBool,
    /// Shutdown has begun: HTTP/1.x answers say `connection: close`.
    pub(crate) draining: std::sync::atomic::AtomicBool,
}

use crate::stream::{Body, BodyFailure, Heads, Pumped, Streamer};

/// Request ids: a per-process random prefix and a counter, unless the client (an Ingress) sent
/// a usable `x-request-id`.
pub(crate) struct RequestIds {
    prefix: u32,
    next: AtomicU64,
}

impl RequestIds {
    pub(crate) fn new() -> Self {
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

/// A request's id: the client's, or one made here.
enum Id<'p> {
    /// The client's, with its header value (cloned into the response without a copy).
    Sent(&'p str, &'p HeaderValue),
    Made(RequestId),
    /// Decided before the Run (where a 504 may need it).
    Given(&'p str),
}

impl Id<'_> {
    fn as_str(&self) -> &str {
        match self {
            Id::Sent(id, _) | Id::Given(id) => id,
            Id::Made(id) => id.as_str(),
        }
    }

    /// The id as the response's `x-request-id`.
    fn header_value(&self) -> Option<HeaderValue> {
        let mut value = match self {
            Id::Sent(_, value) => (*value).clone(),
            Id::Made(id) => id.header_value()?,
            Id::Given(id) => HeaderValue::from_str(id).ok()?,
        };
        // A value that differs on every response: HPACK would insert each into its dynamic
        // table, evicting the entries that do repeat. "Never indexed" skips the table.
        value.set_sensitive(true);
        Some(value)
    }
}

/// A Run's deadline, `timeout` from now, in milliseconds since the Unix epoch. (Seconds and
/// milliseconds apart: `as_millis` would take 128-bit arithmetic on every request.)
fn deadline_ms(timeout: Duration) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let at = now.saturating_add(timeout);
    at.as_secs()
        .saturating_mul(1000)
        .saturating_add(u64::from(at.subsec_millis()))
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

    /// The id as a header value, its bytes carved from a per-thread block (one allocation per
    /// few thousand ids instead of one per response).
    fn header_value(&self) -> Option<HeaderValue> {
        const BLOCK: usize = 64 * 1024;
        thread_local! {
            static BLOCK_LEFT: std::cell::RefCell<bytes::BytesMut> =
                std::cell::RefCell::new(bytes::BytesMut::new());
        }
        let bytes = BLOCK_LEFT.with(|block| {
            let mut block = block.borrow_mut();
            if block.capacity() < self.len {
                *block = bytes::BytesMut::with_capacity(BLOCK);
            }
            block.extend_from_slice(&self.buf[..self.len]);
            block.split().freeze()
        });
        HeaderValue::from_maybe_shared(bytes).ok()
    }
}

/// A constant, so that the per-request lookup does not parse the name.
const X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

pub fn usable_request_id(v: &HeaderValue) -> Option<&str> {
    let bytes = v.as_bytes();
    let ok = !bytes.is_empty() && bytes.len() <= 128 && bytes.iter().all(|b| b.is_ascii_graphic());
    if ok {
        v.to_str().ok()
    } else {
        None
    }
}

#[cold]
#[inline(never)]
fn plain(status: StatusCode) -> Response<Body> {
    let text = status.canonical_reason().unwrap_or("Error");
    let mut resp = Response::new(Body::full(format!("{text}\n")));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// The answer to a request that breaks a rule of [`rules`].
#[cold]
#[inline(never)]
fn refused(
    status: StatusCode,
    version: http::Version,
    metrics: &Metrics,
    shard: usize,
    began: Instant,
) -> Response<Body> {
    let mut resp = plain(status);
    if version != http::Version::HTTP_2 {
        // The request may have been framed otherwise than its client meant: nothing more is
        // read from this connection.
        close_after(&mut resp);
    }
    metrics
        .shard(shard)
        .request(Proto::of(version), status, began.elapsed());
    resp
}

/// 413: the connection closes after it rather than read the rest of the body (as nginx).
#[cold]
#[inline(never)]
fn too_large() -> Response<Body> {
    let mut resp = plain(StatusCode::PAYLOAD_TOO_LARGE);
    close_after(&mut resp);
    resp
}

/// 408 for a body that stalled: the connection closes after it (what was left of the body
/// cannot be told from the next request).
#[cold]
#[inline(never)]
fn too_slow() -> Response<Body> {
    let mut resp = plain(StatusCode::REQUEST_TIMEOUT);
    close_after(&mut resp);
    resp
}

/// `connection: close`: hyper ends an HTTP/1.x connection after this answer (HTTP/2 strips it).
fn close_after(resp: &mut Response<Body>) {
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
}

#[cold]
#[inline(never)]
fn internal_error(request_id: &str) -> Response<Body> {
    with_id(plain(StatusCode::INTERNAL_SERVER_ERROR), request_id)
}

/// `resp` with `x-request-id: request_id` (off the fast path, which carves the value itself).
fn with_id(mut resp: Response<Body>, request_id: &str) -> Response<Body> {
    if let Ok(v) = HeaderValue::from_str(request_id) {
        resp.headers_mut().insert(X_REQUEST_ID, v);
    }
    resp
}

#[cold]
#[inline(never)]
fn unavailable(err: &AcquireError, metrics: &Metrics) -> Response<Body> {
    tracing::debug!(error = %err, "503");
    metrics.unavailable(match err {
        AcquireError::QueueFull => Unavailable::QueueFull,
        AcquireError::QueueTimeout => Unavailable::QueueTimeout,
        AcquireError::StartFailed(_) => Unavailable::StartFailed,
        AcquireError::Closed => Unavailable::ShuttingDown,
    });
    let mut resp = plain(StatusCode::SERVICE_UNAVAILABLE);
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    resp
}

/// One connection's view of the app: what hyper calls for each request on it.
#[derive(Clone)]
pub(crate) struct ConnService {
    pub(crate) app: Arc<App>,
    pub(crate) peer: Arc<str>,
    /// The network thread's metrics shard.
    pub(crate) shard: usize,
    pub(crate) conn: Arc<ConnGauge>,
    /// Under mutual TLS, the certificate its client presented (known once the handshake is
    /// done); `None` otherwise, which is all a request pays for it.
    pub(crate) client: Option<Arc<ClientCert>>,
}

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Reply;

    fn call(&self, req: Request<Incoming>) -> Reply {
        let now = Instant::now();
        let version = req.version();
        self.conn.on_request(version, now);
        let reply = self.app.serve(
            req,
            &self.peer,
            self.client.as_ref(),
            self.shard,
            &self.conn,
            now,
        );
        if self.app.draining.load(Ordering::Relaxed) && version != http::Version::HTTP_2 {
            return reply.closing();
        }
        reply
    }
}

/// Counts one connection in the open-connections gauge, from its first request (when its
/// protocol is known, even on cleartext where HTTP/2 is sniffed) until it is dropped.
///
/// It also keeps the connection's activity for the idle timeout: when its latest request came
/// or ended, and how many are on the general path still.
pub(crate) struct ConnGauge {
    metrics: Arc<Metrics>,
    tls: bool,
    counted: std::sync::OnceLock<Conn>,
    /// Woken by the first request (for a connection served during the drain).
    arrived: tokio::sync::Notify,
    /// When the connection was accepted: activity is counted from here.
    born: Instant,
    /// Nanoseconds from `born` to the latest request's arrival, or end on the general path.
    last: AtomicU64,
    /// Requests on the general path (a body, a wait for a Context, a blocking Run) not yet
    /// answered. The fast path answers within hyper's call: nothing to count.
    busy: AtomicU32,
}

impl ConnGauge {
    pub(crate) fn new(metrics: Arc<Metrics>, tls: bool) -> Arc<ConnGauge> {
        Arc::new(ConnGauge {
            metrics,
            tls,
            counted: std::sync::OnceLock::new(),
            arrived: tokio::sync::Notify::new(),
            born: Instant::now(),
            last: AtomicU64::new(0),
            busy: AtomicU32::new(0),
        })
    }

    /// When the connection was accepted.
    pub(crate) fn born(&self) -> Instant {
        self.born
    }

    /// When the connection was last seen active, if no request is in progress on it.
    pub(crate) fn idle_since(&self) -> Option<Instant> {
        if self.busy.load(Ordering::Acquire) > 0 {
            return None;
        }
        Some(self.born + Duration::from_nanos(self.last.load(Ordering::Relaxed)))
    }

    fn active_at(&self, now: Instant) {
        let nanos = now.saturating_duration_since(self.born).as_nanos();
        self.last
            .store(u64::try_from(nanos).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Whether this connection's requests are HTTP/2 (known from its first).
    pub(crate) fn is_h2(&self) -> bool {
        matches!(self.counted.get(), Some(Conn::Http2 | Conn::Http2Tls))
    }

    /// Whether a request has come on this connection.
    pub(crate) fn seen(&self) -> bool {
        self.counted.get().is_some()
    }

    /// Resolves once the connection's first request has come.
    pub(crate) async fn arrived(&self) {
        if !self.seen() {
            self.arrived.notified().await;
        }
    }

    fn on_request(&self, version: http::Version, now: Instant) {
        self.active_at(now);
        if self.counted.get().is_none() {
            self.count(version);
        }
    }

    #[cold]
    #[inline(never)]
    fn count(&self, version: http::Version) {
        let conn = match (Proto::of(version), self.tls) {
            (Proto::Http1, false) => Conn::Http1,
            (Proto::Http2, false) => Conn::Http2,
            (Proto::Http1, true) => Conn::Http1Tls,
            (Proto::Http2, true) => Conn::Http2Tls,
        };
        if self.counted.set(conn).is_ok() {
            self.metrics.connection(conn, 1);
            // Kept as a permit if nobody waits yet.
            self.arrived.notify_one();
        }
    }
}

impl Drop for ConnGauge {
    fn drop(&mut self) {
        if let Some(conn) = self.counted.get() {
            self.metrics.connection(*conn, -1);
        }
    }
}

/// A request on the general path, counted as the connection's activity until it is answered
/// (or its client goes away).
struct Busy(Arc<ConnGauge>);

impl Busy {
    fn new(conn: &Arc<ConnGauge>) -> Self {
        conn.busy.fetch_add(1, Ordering::AcqRel);
        Busy(conn.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.active_at(Instant::now());
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A general-path request in flight: counted while it lives, whether it completes or its
/// client goes away.
struct InFlight<'a>(&'a Shard);

impl<'a> InFlight<'a> {
    fn new(shard: &'a Shard) -> Self {
        shard.in_flight(1);
        InFlight(shard)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight(-1);
    }
}

/// A response computed during `call` (no future state to move around: the common case of an
/// inline effe, a request without a body and an idle Context), or the general path, boxed.
pub(crate) enum Reply {
    Ready(Option<Response<Body>>),
    Later(Pin<Box<dyn Future<Output = Response<Body>> + Send>>),
}

impl Reply {
    /// With `connection: close`: during the drain, an HTTP/1.x client learns from its answer
    /// that the connection ends, instead of finding it closed under its next request.
    #[cold]
    #[inline(never)]
    fn closing(self) -> Reply {
        match self {
            Reply::Ready(Some(mut resp)) => {
                close_after(&mut resp);
                Reply::Ready(Some(resp))
            }
            Reply::Later(later) => Reply::Later(Box::pin(async move {
                let mut resp = later.await;
                close_after(&mut resp);
                resp
            })),
            done => done,
        }
    }
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
    fn serve(
        self: &Arc<Self>,
        mut req: Request<Incoming>,
        peer: &Arc<str>,
        client: Option<&Arc<ClientCert>>,
        shard: usize,
        conn: &Arc<ConnGauge>,
        began: Instant,
    ) -> Reply {
        if let Err(status) = rules::check(&mut req) {
            let resp = refused(status, req.version(), &self.metrics, shard, began);
            return Reply::Ready(Some(resp));
        }
        if self.call_mode == CallMode::Inline && req.body().is_end_stream() {
            if let Some(mut lease) = self.pool.try_idle() {
                let (parts, _) = req.into_parts();
                let client = client.map(Arc::as_ref);
                let resp = self.invoke(&mut lease, &parts, &Bytes::new(), peer, client, None);
                let shard = self.metrics.shard(shard);
                let took = began.elapsed();
                shard.request(Proto::of(parts.version), resp.status(), took);
                if let Some(access) = &self.access {
                    log_access(
                        access,
                        &parts.method,
                        &parts.uri,
                        parts.version,
                        &resp,
                        took,
                        peer,
                    );
                }
                return Reply::Ready(Some(resp));
            }
        }
        let busy = Busy::new(conn);
        Reply::Later(Box::pin(self.clone().handle(
            req,
            peer.clone(),
            client.cloned(),
            shard,
            began,
            busy,
        )))
    }

    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: Arc<str>,
        client: Option<Arc<ClientCert>>,
        shard: usize,
        began: Instant,
        busy: Busy,
    ) -> Response<Body> {
        let proto = Proto::of(req.version());
        let sent = req.headers().get(X_REQUEST_ID).cloned();
        let line = self.access.as_ref().map(|access| {
            (
                access.clone(),
                req.method().clone(),
                req.uri().clone(),
                req.version(),
            )
        });
        let mut resp = {
            let shard = self.metrics.shard(shard);
            let _in_flight = InFlight::new(shard);
            self.respond(req, peer.clone(), client, shard, busy).await
        };
        if !resp.headers().contains_key(X_REQUEST_ID) {
            // Answered before Run (413, 400, 503): the id is still the client's, or a new one.
            self.stamp_id(&mut resp, sent);
        }
        let shard = self.metrics.shard(shard);
        let took = began.elapsed();
        shard.request(proto, resp.status(), took);
        if let Some((access, method, uri, version)) = line {
            log_access(&access, &method, &uri, version, &resp, took, &peer);
        }
        resp
    }

    async fn respond(
        self: &Arc<Self>,
        req: Request<Incoming>,
        peer: Arc<str>,
        client: Option<Arc<ClientCert>>,
        shard: &Shard,
        busy: Busy,
    ) -> Response<Body> {
        let (parts, incoming) = req.into_parts();
        let mut body = BodyIn::Whole(Bytes::new());
        if !incoming.is_end_stream() {
            // An effe that reads bodies as they arrive gets its Run first, on a blocking thread.
            match self.plugin.streamed_body() {
                Some(limit) if self.call_mode == CallMode::Thread => {
                    let limit = limit.unwrap_or(self.max_body_size as u64);
                    let (pumped, pump) =
                        crate::stream::pump(incoming, limit, self.body_read_timeout);
                    let failed = pump.failure();
                    body = BodyIn::Streamed(pumped, tokio::spawn(pump.run()), failed);
                }
                // Read whole (on the network threads, a Run may not wait for its body), under
                // the effe's own limit if it lifted the host's.
                Some(limit) => match self
                    .read_body(incoming, limit_of(limit, self.max_body_size))
                    .await
                {
                    Ok(whole) => body = BodyIn::Whole(whole),
                    Err(resp) => return resp,
                },
                None => match self.read_body(incoming, self.max_body_size).await {
                    Ok(whole) => body = BodyIn::Whole(whole),
                    Err(resp) => return resp,
                },
            }
        }
        let waiting = Instant::now();
        let acquired = self.pool.acquire().await;
        shard.waited(waiting.elapsed());
        let mut lease = match acquired {
            Ok(lease) => lease,
            Err(e) => return unavailable(&e, &self.metrics),
        };
        match (self.call_mode, body) {
            (CallMode::Inline, BodyIn::Whole(body)) => {
                self.invoke(&mut lease, &parts, &body, &peer, client.as_deref(), None)
            }
            (_, body) => self.on_thread(lease, parts, body, peer, client, busy).await,
        }
    }

    /// Run on a blocking thread, where it may stream, waited for until its head is sent (it
    /// flushed) or it returns; with `--timeout`, until then at most: then the client gets 504
    /// and the Context is quarantined (a thread cannot be stopped): kept out of use, its slot
    /// still taken, and stopped when its Run returns. A stream past the deadline is cut.
    async fn on_thread(
        self: &Arc<Self>,
        mut lease: Lease<Effes>,
        parts: http::request::Parts,
        body: BodyIn,
        peer: Arc<str>,
        client: Option<Arc<ClientCert>>,
        busy: Busy,
    ) -> Response<Body> {
        const RUNNING: u8 = 0;
        const DONE: u8 = 1;
        const ABANDONED: u8 = 2;
        let deadline = self.timeout.map(|timeout| Instant::now() + timeout);
        // Made here, where a 504 may need it, and given to the Run.
        let id = deadline.map(|_| self.request_id(&parts).as_str().to_owned());
        let on_deadline = deadline.zip(id.clone()).map(|(at, id)| {
            let app = self.clone();
            let report: crate::stream::OnDeadline = Box::new(move || app.stream_timed_out(&id));
            (at, report)
        });
        let (streamer, heads) = Streamer::new(on_deadline, Box::new(busy));
        let Heads {
            rx: mut head,
            passed,
        } = heads;
        let (whole, streamed, pump) = match body {
            BodyIn::Whole(whole) => (whole, None, None),
            BodyIn::Streamed(pumped, pump, failed) => {
                (Bytes::new(), Some(pumped), Some((pump, failed)))
            }
        };
        let outcome = Arc::new(AtomicU8::new(RUNNING));
        let (app, ran, given) = (self.clone(), outcome.clone(), id.clone());
        let mut run = tokio::task::spawn_blocking(move || {
            let extras = Extras {
                stream: streamer,
                body: streamed,
                id: given,
            };
            let resp = app.invoke(
                &mut lease,
                &parts,
                &whole,
                &peer,
                client.as_deref(),
                Some(extras),
            );
            if passed.load(Ordering::Acquire) {
                // Cut at its deadline while it streamed: as a Run that timed out, not reused.
                lease.retire();
            }
            let finished = ran.compare_exchange(RUNNING, DONE, Ordering::AcqRel, Ordering::Acquire);
            if finished.is_err() {
                // Given up on: this Context's state is unknown, it is never reused.
                lease.end_quarantine();
            }
            resp
        });
        let failed = |_| plain(StatusCode::INTERNAL_SERVER_ERROR);
        let expiry = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(expiry);
        let mut head_open = true;
        loop {
            tokio::select! {
                biased;
                sent = &mut head, if head_open => match sent {
                    // It flushed: the response streams from here; the Run goes on.
                    Ok(resp) => return resp,
                    // It returned without flushing: its answer is on the way.
                    Err(_) => head_open = false,
                },
                joined = &mut run => {
                    if let Ok(resp) = head.try_recv() {
                        return resp;
                    }
                    let resp = joined.unwrap_or_else(failed);
                    return match pump {
                        Some((pump, failed)) => after_streamed_body(resp, &pump, &failed),
                        None => resp,
                    };
                }
                () = &mut expiry => break,
            }
        }
        let id = id.unwrap_or_default();
        // Counted before the Run can see it abandoned (and uncount it when it ends).
        self.pool.quarantine_begun();
        match outcome.compare_exchange(RUNNING, ABANDONED, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => self.timed_out(&id),
            Err(_) => {
                // It returned just now: its answer is on the way.
                self.pool.quarantine_cancelled();
                match run.await {
                    Ok(resp) => head.try_recv().unwrap_or(resp),
                    Err(e) => failed(e),
                }
            }
        }
    }

    /// A stream cut at the Run's deadline: logged and counted as a Run that timed out.
    #[cold]
    #[inline(never)]
    fn stream_timed_out(&self, request_id: &str) {
        self.run_timed_out(
            request_id,
            " while streaming: the stream was cut; its Context is retired when the Run returns",
        );
    }

    #[cold]
    #[inline(never)]
    fn timed_out(&self, request_id: &str) -> Response<Body> {
        self.run_timed_out(
            request_id,
            "; its Context is quarantined until the Run returns",
        );
        with_id(plain(StatusCode::GATEWAY_TIMEOUT), request_id)
    }

    /// A Run past `--timeout`, logged (`then` goes on to say what became of it) and counted.
    fn run_timed_out(&self, request_id: &str, then: &str) {
        self.metrics.run_timed_out();
        let took = humantime::format_duration(self.timeout.unwrap_or_default());
        self.run_log.run_failed(
            request_id,
            &Failure {
                panicked: false,
                message: format!("timed out after {took}{then}"),
            },
        );
    }

    /// The whole body, at most `--max-body-size` bytes (413 beyond, 400 if the client fails),
    /// with no more than `--body-read-timeout` between two of its reads (408 and the connection
    /// closed beyond: the client is too slow, or gone).
    async fn read_body(&self, body: Incoming, max: usize) -> Result<Bytes, Response<Body>> {
        // A declared length over the limit is refused before the first read, which is what
        // would answer `Expect: 100-continue`: the client is not invited to send it.
        if body.size_hint().lower() > max as u64 {
            return Err(too_large());
        }
        let mut body = Limited::new(body, max);
        // One frame is the usual case: kept as it came, without a copy.
        let mut first: Option<Bytes> = None;
        let mut more = bytes::BytesMut::new();
        loop {
            let frame = match tokio::time::timeout(self.body_read_timeout, body.frame()).await {
                Err(_) => return Err(too_slow()),
                Ok(None) => break,
                Ok(Some(Ok(frame))) => frame,
                Ok(Some(Err(e))) if e.is::<http_body_util::LengthLimitError>() => {
                    return Err(too_large())
                }
                Ok(Some(Err(_))) => return Err(plain(StatusCode::BAD_REQUEST)),
            };
            let Ok(data) = frame.into_data() else {
                continue; // trailers
            };
            match &first {
                None if more.is_empty() => first = Some(data),
                _ => {
                    if let Some(first) = first.take() {
                        more.extend_from_slice(&first);
                    }
                    more.extend_from_slice(&data);
                }
            }
        }
        Ok(first.unwrap_or_else(|| more.freeze()))
    }

    /// Calls Run and turns what it wrote into a response. Never panics: an effe panic arrives
    /// here as a value.
    fn invoke(
        &self,
        lease: &mut Lease<Effes>,
        parts: &http::request::Parts,
        body: &Bytes,
        peer: &str,
        client: Option<&ClientCert>,
        extras: Option<Extras>,
    ) -> Response<Body> {
        let (streams, given) = match extras {
            Some(Extras { stream, body, id }) => (Some((stream, body)), id),
            None => (None, None),
        };
        let id = match given.as_deref() {
            Some(given) => Id::Given(given),
            None => self.request_id(parts),
        };
        let request_id = id.as_str();
        let deadline_ms = self.timeout.map(deadline_ms);
        let call = Call {
            parts,
            body,
            peer_addr: peer,
            request_id,
            deadline_ms,
            client,
        };
        let mut out = ResponseBuffer::new();
        // Made once: the streamed head and the whole answer carry the same value.
        let mut id_value = None;
        if let Some((stream, body)) = streams {
            id_value = id.header_value();
            out.stream_to(Box::new(stream.with_request_id(id_value.clone())));
            if let Some(body) = body {
                out.body_from(Box::new(body));
            }
        }
        let ran = self.plugin.run(lease.context(), &call, &mut out);
        if out.retire_requested() {
            // The effe found its Context broken (a lost connection): a fresh one next time.
            lease.retire();
        }
        if out.is_streaming() {
            return self.stream_ended(lease, request_id, ran, out);
        }
        match ran {
            Ok(()) if !out.is_broken() => {
                let mut resp = into_response(out);
                if let Some(v) = id_value.or_else(|| id.header_value()) {
                    resp.headers_mut().insert(X_REQUEST_ID, v);
                }
                resp
            }
            // The response could not be kept whole (a cap, no memory): fail as if run had.
            Ok(()) => {
                let message = out.failure().unwrap_or_default().to_owned();
                let failure = Failure {
                    panicked: false,
                    message,
                };
                self.run_failed(lease, request_id, failure, out)
            }
            Err(failure) => self.run_failed(lease, request_id, failure, out),
        }
    }

    /// After a Run whose response streamed: its end sent, or the stream cut if it failed (the
    /// failure logged like any other). What is returned is never sent: the head went first.
    #[cold]
    #[inline(never)]
    fn stream_ended(
        &self,
        lease: &mut Lease<Effes>,
        request_id: &str,
        ran: Result<(), Failure>,
        out: ResponseBuffer,
    ) -> Response<Body> {
        let failure = match ran {
            Ok(()) => out.failure().map(|why| Failure {
                panicked: false,
                message: why.to_owned(),
            }),
            Err(failure) => Some(failure),
        };
        out.finish_stream(failure.is_none());
        if let Some(failure) = failure {
            self.run_log.run_failed(request_id, &failure);
            self.metrics.run_failed(failure.panicked);
            if failure.panicked {
                lease.retire();
            }
        }
        plain(StatusCode::INTERNAL_SERVER_ERROR)
    }

    #[cold]
    #[inline(never)]
    fn stamp_id(&self, resp: &mut Response<Body>, sent: Option<HeaderValue>) {
        let id = match sent.filter(|v| usable_request_id(v).is_some()) {
            Some(v) => Some(v),
            None => self.ids.next().header_value(),
        };
        if let Some(v) = id {
            resp.headers_mut().insert(X_REQUEST_ID, v);
        }
    }

    /// The client's usable `x-request-id`, else a new one.
    fn request_id<'p>(&self, parts: &'p http::request::Parts) -> Id<'p> {
        let sent = parts.headers.get(X_REQUEST_ID);
        match sent.and_then(|v| Some((usable_request_id(v)?, v))) {
            Some((id, value)) => Id::Sent(id, value),
            None => Id::Made(self.ids.next()),
        }
    }

    /// Logs what Run reported and decides what the client gets; out of line, away from the
    /// per-request path.
    #[cold]
    #[inline(never)]
    fn run_failed(
        &self,
        lease: &mut Lease<Effes>,
        request_id: &str,
        failure: Failure,
        out: ResponseBuffer,
    ) -> Response<Body> {
        self.run_log.run_failed(request_id, &failure);
        self.metrics.run_failed(failure.panicked);
        if failure.panicked {
            lease.retire();
            internal_error(request_id)
        } else if out.is_written() && !out.is_broken() {
            with_id(into_response(out), request_id)
        } else {
            internal_error(request_id)
        }
    }
}

/// A request body on its way to the Run: read whole, or streamed as the Run reads it (with
/// the task that pumps it, and how the body failed if it did).
enum BodyIn {
    Whole(Bytes),
    Streamed(
        Pumped,
        tokio::task::JoinHandle<()>,
        Arc<OnceLock<BodyFailure>>,
    ),
}

/// The body limit for an effe that streams its bodies (`Some` its own), as a size in memory.
fn limit_of(own: Option<u64>, host: usize) -> usize {
    own.map_or(host, |own| usize::try_from(own).unwrap_or(usize::MAX))
}

/// The answer to a request whose body streamed: if the body failed (too large, too slow,
/// broken), that failure, whatever the Run answered (it saw its reads fail), and the
/// connection closes. A body the Run did not read to its end is read no further.
fn after_streamed_body(
    resp: Response<Body>,
    pump: &tokio::task::JoinHandle<()>,
    failed: &OnceLock<BodyFailure>,
) -> Response<Body> {
    pump.abort();
    match failed.get() {
        Some(failure) => {
            let mut failed = plain(failure.status());
            close_after(&mut failed);
            failed
        }
        None => resp,
    }
}

/// What a Run on a blocking thread gets beyond the request: where its response may stream,
/// its streamed body, and its request id when decided before.
struct Extras {
    stream: Streamer,
    body: Option<Pumped>,
    id: Option<String>,
}

/// One access-log line for an answered request (out of line: the log is off by default).
#[cold]
#[inline(never)]
fn log_access(
    access: &AccessLog,
    method: &http::Method,
    uri: &http::Uri,
    version: http::Version,
    resp: &Response<Body>,
    took: Duration,
    peer: &str,
) {
    let id = resp.headers().get(X_REQUEST_ID);
    access.log(&Entry {
        request_id: id.and_then(|v| v.to_str().ok()).unwrap_or("-"),
        method: method.as_str(),
        target: uri.path_and_query().map_or("/", |pq| pq.as_str()),
        protocol: if version == http::Version::HTTP_2 {
            "h2"
        } else {
            "http/1.1"
        },
        status: resp.status().as_u16(),
        bytes: resp.body().size_hint().exact().unwrap_or(0),
        took,
        peer,
    });
}

fn into_response(out: ResponseBuffer) -> Response<Body> {
    let (status, headers, body) = out.into_parts();
    // RFC 9110 §15.3.6: a 205 has no content (hyper drops it only for 204 and 304).
    let body = if status == StatusCode::RESET_CONTENT {
        Vec::new()
    } else {
        body
    };
    let mut resp = Response::new(Body::full(body));
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    resp
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
