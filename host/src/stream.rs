//! Streaming both ways. A response the effe flushes goes to hyper as it is written: the head
//! through a oneshot to the request's future, the body through a bounded channel whose full
//! queue blocks the effe's write (the back-pressure that keeps memory bounded). A request body
//! the effe reads as it arrives is pumped from hyper through another bounded channel, with the
//! host's size limit and read timeout.
//!
//! Only Runs on the blocking threads stream: they may block on a full queue or an empty one.

use std::fmt;
use std::future::Future as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use effe_abi::abi::{BodySource, StreamSink};
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Sleep;

/// Chunks in flight between a streaming Run and its connection: with chunks of at most
/// `effe_abi::abi::CHUNK` (16 KiB), 64 KiB per stream besides what hyper buffers.
const QUEUE: usize = 4;

/// A response body: whole (the usual case, with its `content-length`), or streamed.
pub enum Body {
    Full(Full<Bytes>),
    /// Boxed: every response moves a `Body` around, and most are `Full`.
    Stream(Box<StreamBody>),
}

impl Body {
    pub fn full(bytes: impl Into<Bytes>) -> Body {
        Body::Full(Full::new(bytes.into()))
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = Cut;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Cut>>> {
        match self.get_mut() {
            Body::Full(full) => Pin::new(full)
                .poll_frame(cx)
                .map_err(|never| match never {}),
            Body::Stream(stream) => Pin::new(&mut **stream).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Full(full) => full.is_end_stream(),
            Body::Stream(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(full) => full.size_hint(),
            Body::Stream(_) => SizeHint::default(),
        }
    }
}

/// Why a streamed response ends early: the client gets it cut (HTTP/1.1: the connection closes
/// without the last chunk; HTTP/2: RST_STREAM), never a short body that looks whole.
#[derive(Debug)]
pub struct Cut(&'static str);

impl fmt::Display for Cut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for Cut {}

/// What goes down a stream's queue.
enum Piece {
    Data(Bytes),
    /// The Run failed after the head was sent.
    Cut,
}

/// The body of a streamed response, as hyper polls it.
pub struct StreamBody {
    rx: mpsc::Receiver<Piece>,
    /// The Run's deadline (`--timeout`): past it the stream is cut.
    deadline: Option<Pin<Box<Sleep>>>,
    passed: Arc<AtomicBool>,
    /// Logs and counts the Run as timed out, when the deadline cuts the stream.
    on_deadline: Option<OnDeadline>,
    /// The Run failed: the cut is due at the next poll.
    cutting: bool,
    /// Held until the stream ends: the connection counts as busy meanwhile.
    _busy: Option<Box<dyn Send + Sync>>,
}

/// What a stream does when the Run's deadline cuts it.
pub type OnDeadline = Box<dyn FnOnce() + Send + Sync>;

impl hyper::body::Body for StreamBody {
    type Data = Bytes;
    type Error = Cut;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Cut>>> {
        if self.cutting {
            return Poll::Ready(Some(Err(Cut("the Run failed"))));
        }
        if let Some(deadline) = &mut self.deadline {
            if deadline.as_mut().poll(cx).is_ready() {
                self.passed.store(true, Ordering::Release);
                if let Some(report) = self.on_deadline.take() {
                    report();
                }
                // The Run's next write fails: its queue's end is gone.
                self.rx.close();
                return Poll::Ready(Some(Err(Cut("the Run's deadline passed"))));
            }
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Piece::Data(bytes))) => Poll::Ready(Some(Ok(Frame::data(bytes)))),
            // What was sent before the failure is on its way: HTTP/2 would drop what its
            // connection has not written yet when the stream is reset, so the reset waits one
            // turn of the scheduler, in which the connection task (woken by the last DATA)
            // writes it. Then the cut: the client cannot take the stream for a whole response.
            Poll::Ready(Some(Piece::Cut)) => {
                self.cutting = true;
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The host's end of one Run's response, should the effe flush it.
pub struct Streamer {
    head: Option<oneshot::Sender<Response<Body>>>,
    tx: Option<mpsc::Sender<Piece>>,
    request_id: Option<HeaderValue>,
    deadline: Option<Instant>,
    passed: Arc<AtomicBool>,
    on_deadline: Option<OnDeadline>,
    busy: Option<Box<dyn Send + Sync>>,
}

impl fmt::Debug for Streamer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Streamer")
    }
}

/// The request's side: where the head of a streamed response arrives.
pub struct Heads {
    pub rx: oneshot::Receiver<Response<Body>>,
    /// Set when the stream was cut at the Run's deadline.
    pub passed: Arc<AtomicBool>,
}

impl Streamer {
    /// A streamer for one Run, and where its head will arrive. `deadline` is the Run's
    /// (`--timeout`), and `on_deadline` what to do if it cuts the stream; `busy` is kept until
    /// the stream ends.
    pub fn new(
        deadline: Option<(Instant, OnDeadline)>,
        busy: Box<dyn Send + Sync>,
    ) -> (Streamer, Heads) {
        let (deadline, on_deadline) = deadline.unzip();
        let (head, rx) = oneshot::channel();
        let passed = Arc::new(AtomicBool::new(false));
        let streamer = Streamer {
            head: Some(head),
            tx: None,
            request_id: None,
            deadline,
            passed: passed.clone(),
            on_deadline,
            busy: Some(busy),
        };
        (streamer, Heads { rx, passed })
    }

    /// With the `x-request-id` its response is to carry.
    pub fn with_request_id(mut self, id: Option<HeaderValue>) -> Streamer {
        self.request_id = id;
        self
    }

    fn gone(&self) -> String {
        if self.passed.load(Ordering::Acquire) {
            "the Run's deadline passed: the stream was cut".to_owned()
        } else {
            "the client went away".to_owned()
        }
    }
}

impl StreamSink for Streamer {
    fn head(&mut self, status: StatusCode, headers: HeaderMap) -> Result<(), String> {
        let head = self.head.take().ok_or("the head was sent already")?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let body = StreamBody {
            rx,
            deadline: self
                .deadline
                .map(|at| Box::pin(tokio::time::sleep_until(at.into()))),
            passed: self.passed.clone(),
            on_deadline: self.on_deadline.take(),
            cutting: false,
            _busy: self.busy.take(),
        };
        let mut resp = Response::new(Body::Stream(Box::new(body)));
        *resp.status_mut() = status;
        *resp.headers_mut() = headers;
        if let Some(id) = self.request_id.take() {
            resp.headers_mut().insert("x-request-id", id);
        }
        self.tx = Some(tx);
        head.send(resp).map_err(|_| self.gone())
    }

    fn data(&mut self, chunk: Vec<u8>) -> Result<(), String> {
        let Some(tx) = &self.tx else {
            return Err("no head was sent".to_owned());
        };
        // On a blocking thread (only those stream): waits while the queue is full.
        tx.blocking_send(Piece::Data(Bytes::from(chunk)))
            .map_err(|_| self.gone())
    }

    fn cut(self: Box<Self>) {
        if let Some(tx) = &self.tx {
            // Queued behind what was sent; the client is gone if there is no room.
            let _ = tx.blocking_send(Piece::Cut);
        }
    }
}

/// Why a streamed request body failed, and what the client is answered for it (if the
/// response has not begun).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFailure {
    TooLarge,
    TooSlow,
    Broken,
}

impl BodyFailure {
    pub fn status(self) -> StatusCode {
        match self {
            BodyFailure::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            BodyFailure::TooSlow => StatusCode::REQUEST_TIMEOUT,
            BodyFailure::Broken => StatusCode::BAD_REQUEST,
        }
    }

    fn message(self, limit: u64) -> String {
        match self {
            BodyFailure::TooLarge => format!("request body larger than {limit} bytes"),
            BodyFailure::TooSlow => {
                "request body too slow: no bytes within the read timeout".into()
            }
            BodyFailure::Broken => "request body broken off by the client".into(),
        }
    }
}

/// The effe's end of a streamed request body.
#[derive(Debug)]
pub struct Pumped {
    rx: mpsc::Receiver<Result<Bytes, BodyFailure>>,
    left: Bytes,
    limit: u64,
    failed: Option<BodyFailure>,
}

impl BodySource for Pumped {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, String> {
        if let Some(failure) = self.failed {
            return Err(failure.message(self.limit));
        }
        while self.left.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(bytes)) => self.left = bytes,
                Some(Err(failure)) => {
                    self.failed = Some(failure);
                    return Err(failure.message(self.limit));
                }
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.left.len());
        buf[..n].copy_from_slice(&self.left[..n]);
        self.left.advance(n);
        Ok(n)
    }
}

/// A request body to stream to the effe: the effe's end, and the pump to drive beside the Run.
/// [`Pump::failure`] tells, once the Run has returned, whether the body failed.
pub fn pump(body: Incoming, limit: u64, read_timeout: Duration) -> (Pumped, Pump) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let pumped = Pumped {
        rx,
        left: Bytes::new(),
        limit,
        failed: None,
    };
    let pump = Pump {
        body,
        tx,
        limit,
        read_timeout,
        failed: Arc::new(OnceLock::new()),
    };
    (pumped, pump)
}

/// Reads a request body from hyper into the effe's queue, as fast as the effe reads it.
pub struct Pump {
    body: Incoming,
    tx: mpsc::Sender<Result<Bytes, BodyFailure>>,
    limit: u64,
    read_timeout: Duration,
    /// Set before the effe hears of a failure: by the time its Run returns, it is known here.
    failed: Arc<OnceLock<BodyFailure>>,
}

impl Pump {
    /// How the body failed, if it did (see [`pump`]).
    pub fn failure(&self) -> Arc<OnceLock<BodyFailure>> {
        self.failed.clone()
    }

    /// Runs until the body ends, fails, or the effe stops reading (drops its end).
    pub async fn run(mut self) {
        if let Some(failure) = self.pumped().await {
            let _ = self.failed.set(failure);
            let _ = self.tx.send(Err(failure)).await;
        }
    }

    /// Feeds the body to the effe; its failure, if it fails.
    async fn pumped(&mut self) -> Option<BodyFailure> {
        if self.body.size_hint().lower() > self.limit {
            return Some(BodyFailure::TooLarge);
        }
        let mut seen: u64 = 0;
        loop {
            let frame = match tokio::time::timeout(self.read_timeout, self.body.frame()).await {
                Err(_) => Err(BodyFailure::TooSlow),
                Ok(None) => return None,
                Ok(Some(Ok(frame))) => Ok(frame),
                Ok(Some(Err(_))) => Err(BodyFailure::Broken),
            };
            let data = match frame {
                Ok(frame) => match frame.into_data() {
                    Ok(data) => data,
                    Err(_) => continue, // trailers
                },
                Err(failure) => return Some(failure),
            };
            seen += data.len() as u64;
            if seen > self.limit {
                return Some(BodyFailure::TooLarge);
            }
            if self.tx.send(Ok(data)).await.is_err() {
                // The effe stopped reading: the rest is not wanted.
                return None;
            }
        }
    }
}
