//! Streaming, both ways: flushed responses that reach the client while Run is still running
//! (HTTP/1.1 chunked, h2c, TLS), back-pressure from a slow reader, a client that goes away, an
//! error or a deadline after the head was sent, request bodies read as they arrive, and the
//! buffered path left as it was. The memory tests print the host's peak RSS (`--nocapture`).

use std::convert::Infallible;
use std::future::Future;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use effe_tests::tls::{client, connect, negotiated, pki};
use effe_tests::{metric, Host, HostCmd, Proto, PATIENCE};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// Fails the test instead of hanging it when `fut` takes longer than [`PATIENCE`].
async fn bounded<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {PATIENCE:?}"))
}

/// A response whose body is still to come, and the task driving its connection (abort it to
/// drop the connection).
struct Opened {
    resp: http::Response<Incoming>,
    conn: tokio::task::JoinHandle<()>,
}

/// Sends `req` on `stream` speaking `proto`, and returns as soon as the head has arrived.
async fn open<S, B>(stream: S, addr: SocketAddr, proto: Proto, mut req: http::Request<B>) -> Opened
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let io = TokioIo::new(stream);
    let exchange = async {
        match proto {
            Proto::Http1 => {
                let (mut tx, conn) = hyper::client::conn::http1::handshake(io).await.expect("h1");
                let conn = tokio::spawn(async move {
                    let _ = conn.await;
                });
                req.headers_mut()
                    .insert(http::header::HOST, addr.to_string().parse().unwrap());
                let resp = tx.send_request(req).await.expect("h1 request");
                Opened { resp, conn }
            }
            Proto::Http2 => {
                let (mut tx, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                        .await
                        .expect("h2 handshake");
                let conn = tokio::spawn(async move {
                    let _ = conn.await;
                });
                *req.uri_mut() = format!("http://{addr}{}", req.uri()).parse().unwrap();
                let resp = tx.send_request(req).await.expect("h2 request");
                Opened { resp, conn }
            }
        }
    };
    bounded("the response head", exchange).await
}

async fn tcp(addr: SocketAddr) -> tokio::net::TcpStream {
    let connect = tokio::net::TcpStream::connect(addr);
    bounded("connect", connect).await.expect("connect")
}

/// `open` over a new TCP connection.
async fn open_tcp<B>(addr: SocketAddr, proto: Proto, req: http::Request<B>) -> Opened
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    open(tcp(addr).await, addr, proto, req).await
}

/// One HTTP/2 connection for several requests in turn (`open` makes one per request).
struct H2 {
    addr: SocketAddr,
    tx: hyper::client::conn::http2::SendRequest<http_body_util::Empty<Bytes>>,
}

impl H2 {
    async fn connect(addr: SocketAddr) -> H2 {
        let io = TokioIo::new(tcp(addr).await);
        let handshake = hyper::client::conn::http2::handshake(TokioExecutor::new(), io);
        let (tx, conn) = bounded("h2 handshake", handshake).await.expect("h2");
        tokio::spawn(conn);
        H2 { addr, tx }
    }

    /// `GET path` with `x-request-id: id`, up to its head.
    async fn get(&mut self, path: &str, id: &str) -> http::Response<Incoming> {
        let uri = format!("http://{}{path}", self.addr);
        let sent = self.tx.send_request(get_with_id(&uri, id));
        bounded("h2 head", sent).await.expect("h2 response")
    }
}

/// A body as the client read it: each piece with when it came, and how the body ended.
struct Timed {
    pieces: Vec<(Instant, Bytes)>,
    end: Instant,
    result: Result<(), hyper::Error>,
}

impl Timed {
    async fn read(mut body: Incoming) -> Timed {
        let read = async {
            let mut pieces = Vec::new();
            loop {
                match body.frame().await {
                    None => return (pieces, Ok(())),
                    Some(Err(err)) => return (pieces, Err(err)),
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            pieces.push((Instant::now(), data));
                        }
                    }
                }
            }
        };
        let (pieces, result) = bounded("the body", read).await;
        Timed {
            pieces,
            end: Instant::now(),
            result,
        }
    }

    fn text(&self) -> String {
        let bytes: Vec<u8> = self.pieces.iter().flat_map(|(_, b)| b.to_vec()).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Each server-sent event (`data: N`) with when its last byte came.
    fn events(&self) -> Vec<(String, Instant)> {
        let (mut events, mut pending) = (Vec::new(), String::new());
        for (at, piece) in &self.pieces {
            pending.push_str(&String::from_utf8_lossy(piece));
            while let Some(end) = pending.find("\n\n") {
                events.push((pending[..end].to_owned(), *at));
                pending.drain(..end + 2);
            }
        }
        events
    }
}

/// Reads `body` until `n` whole events have come; returns them.
async fn read_events(body: &mut Incoming, n: usize) -> Vec<String> {
    let read = async {
        let mut text = String::new();
        while text.matches("\n\n").count() < n {
            let frame = body.frame().await.expect("more events").expect("a frame");
            if let Ok(data) = frame.into_data() {
                text.push_str(&String::from_utf8_lossy(&data));
            }
        }
        text.split_terminator("\n\n").map(str::to_owned).collect()
    };
    bounded("the first events", read).await
}

fn get_with_id(path: &str, id: &str) -> http::Request<http_body_util::Empty<Bytes>> {
    http::Request::get(path)
        .header("x-request-id", id)
        .body(http_body_util::Empty::new())
        .unwrap()
}

/// `data: 1` … `data: n`.
fn numbered(n: u32) -> Vec<String> {
    (1..=n).map(|i| format!("data: {i}")).collect()
}

fn sse_tls() -> HostCmd {
    HostCmd::new("sse")
        .args(["--tls-cert".as_ref(), pki("chain-ec.pem").as_os_str()])
        .args(["--tls-key".as_ref(), pki("leaf-ec.key").as_os_str()])
}

/// `GET /?10` of the sse effe (a second of events): the head, the timed body, and when the
/// request was sent.
async fn ten_events<S>(
    stream: S,
    addr: SocketAddr,
    proto: Proto,
) -> (http::response::Parts, Timed, Instant)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let sent = Instant::now();
    let opened = open(stream, addr, proto, get_with_id("/?10", "ten")).await;
    let (parts, body) = opened.resp.into_parts();
    (parts, Timed::read(body).await, sent)
}

/// The events of `GET /?10` came one by one while Run was running, not all at its end.
fn check_streamed(
    label: &str,
    proto: Proto,
    (parts, timed, sent): (http::response::Parts, Timed, Instant),
) {
    assert_eq!(parts.status, 200, "{label}");
    assert_eq!(
        parts.headers["content-type"], "text/event-stream",
        "{label}"
    );
    assert_eq!(parts.headers["cache-control"], "no-cache", "{label}");
    assert!(
        !parts.headers.contains_key("content-length"),
        "{label}: {:?}",
        parts.headers
    );
    if proto == Proto::Http1 {
        assert_eq!(parts.version, http::Version::HTTP_11, "{label}");
        assert_eq!(parts.headers["transfer-encoding"], "chunked", "{label}");
    } else {
        assert_eq!(parts.version, http::Version::HTTP_2, "{label}");
    }
    timed.result.as_ref().expect("a whole body");
    let events = timed.events();
    let names: Vec<String> = events.iter().map(|(e, _)| e.clone()).collect();
    assert_eq!(names, numbered(10), "{label}");
    let (first, last) = (events[0].1, events[9].1);
    eprintln!(
        "{label}: first event after {:?}, last after {:?}, end after {:?}",
        first - sent,
        last - sent,
        timed.end - sent
    );
    // The effe sleeps 100 ms between two events: its last write is at least 900 ms after its
    // first, so this holds however loaded the machine.
    assert!(last - sent >= Duration::from_millis(900), "{label}");
    // Buffered, the first event would come with the end of the stream, in the same write.
    // Streamed, it comes ~900 ms before the end. Both are measured by this one client on its
    // one connection: a loaded machine slows the delivery of the first event and of the end
    // alike, and the test fails only if the first is held back 400 ms more than the end.
    assert!(
        timed.end - first >= Duration::from_millis(500),
        "{label}: the first event came {:?} before the end: the stream was buffered",
        timed.end - first
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushed_events_reach_the_client_while_run_is_still_running() {
    let plain = HostCmd::new("sse").spawn();
    let tls = sse_tls().spawn();
    let over_tls = |alpn: &'static str, want: Proto| {
        let addr = tls.addr;
        async move {
            let handshake = connect(addr, client(&[alpn], None));
            let stream = bounded("TLS", handshake).await.expect("handshake");
            assert_eq!(negotiated(&stream), want);
            ten_events(stream, addr, want).await
        }
    };
    let cleartext = |proto| {
        let addr = plain.addr;
        async move { ten_events(tcp(addr).await, addr, proto).await }
    };
    // At once: a second each.
    let (h1, h2c, tls_h1, tls_h2) = tokio::join!(
        cleartext(Proto::Http1),
        cleartext(Proto::Http2),
        over_tls("http/1.1", Proto::Http1),
        over_tls("h2", Proto::Http2),
    );
    check_streamed("HTTP/1.1", Proto::Http1, h1);
    check_streamed("h2c", Proto::Http2, h2c);
    check_streamed("TLS HTTP/1.1", Proto::Http1, tls_h1);
    check_streamed("TLS h2", Proto::Http2, tls_h2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buffered_response_still_has_a_content_length() {
    let host = HostCmd::new("hello").spawn();
    for proto in [Proto::Http1, Proto::Http2] {
        let reply = effe_tests::send(host.addr, proto, effe_tests::get("/")).await;
        assert_eq!(reply.text(), "Hello from effe");
        assert_eq!(reply.headers["content-length"], "15", "{proto:?}");
        assert!(
            !reply.headers.contains_key("transfer-encoding"),
            "{proto:?}: {:?}",
            reply.headers
        );
    }
    // And an effe that can stream, when it does not flush: sse with no events.
    let host = HostCmd::new("sse").spawn();
    let reply = effe_tests::send(host.addr, Proto::Http1, effe_tests::get("/?0")).await;
    assert_eq!((reply.status, reply.body.len()), (200, 0));
    assert_eq!(reply.headers["content-length"], "0");
}

/// The host's peak resident memory so far (`VmHWM`), in KiB.
fn peak_rss_kib(host: &Host) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", host.pid())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM in:\n{status}"))
}

/// How much more than idle the host may take for one stream of any size: a few chunks in
/// flight and the buffers of one connection, against the 50 or 100 MB a buffered body takes.
const RSS_BOUND_KIB: u64 = 20 * 1024;

/// The data plugins/digest streams: byte `i` is `i % 251`. A block is whole periods of it, so
/// every block is the same.
const BLOCK: usize = 251 * 261;

fn pattern_block() -> Bytes {
    (0..BLOCK)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into()
}

/// Checks that `data`, found at `offset` of a download, is the pattern.
fn is_pattern(block: &[u8], offset: u64, data: &[u8]) -> bool {
    let mut at = (offset % 251) as usize;
    data.chunks(BLOCK - 251).all(|piece| {
        let same = piece == &block[at..at + piece.len()];
        at = (at + piece.len()) % 251;
        same
    })
}

/// Reads a download like a slow client: 64 KiB, then a pause, checking every byte; returns
/// the length.
async fn read_slowly(mut body: Incoming) -> u64 {
    let block = pattern_block();
    let (mut len, mut since_pause) = (0u64, 0usize);
    while let Some(frame) = body.frame().await {
        let data = frame
            .expect("the download ends well")
            .into_data()
            .unwrap_or_default();
        assert!(is_pattern(&block, len, &data), "wrong bytes at {len}");
        len += data.len() as u64;
        since_pause += data.len();
        if since_pause >= 64 * 1024 {
            since_pause = 0;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    len
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_50_mb_stream_to_a_slow_reader_keeps_the_host_memory_bounded() {
    const SIZE: u64 = 50_000_000;
    let host = HostCmd::new("digest").spawn();
    // Idle, after one small download over each protocol (threads and buffers made once).
    for proto in [Proto::Http1, Proto::Http2] {
        let opened = open_tcp(host.addr, proto, get_with_id("/?bytes=100000", "warm")).await;
        assert_eq!(read_slowly(opened.resp.into_body()).await, 100_000);
    }
    let idle = peak_rss_kib(&host);
    for proto in [Proto::Http1, Proto::Http2] {
        let started = Instant::now();
        let path = format!("/?bytes={SIZE}");
        let opened = open_tcp(host.addr, proto, get_with_id(&path, "slow")).await;
        assert_eq!(opened.resp.status(), 200);
        // About 2 s: 760 pauses of 2 ms at least.
        let len = bounded("the slow read", read_slowly(opened.resp.into_body())).await;
        assert_eq!(len, SIZE, "{proto:?}");
        eprintln!("{proto:?}: 50 MB read slowly in {:?}", started.elapsed());
    }
    let peak = peak_rss_kib(&host);
    eprintln!(
        "peak RSS: idle {idle} KiB, after the 50 MB streams {peak} KiB (+{} KiB)",
        peak - idle
    );
    assert!(
        peak - idle < RSS_BOUND_KIB,
        "the host grew by {} KiB streaming 50 MB: buffered, not back-pressured",
        peak - idle
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_mid_stream_is_a_write_error_and_the_context_is_reused() {
    let host = HostCmd::new("sse")
        .args(["--min-contexts", "1", "--max-contexts", "1"])
        .spawn();
    let gone = |id: &str| {
        let id = format!("request_id={id} ");
        host.wait_stderr(move |s| {
            s.lines()
                .any(|l| l.contains(&id) && l.contains("WARN") && l.contains("stopped at event"))
        })
    };

    // HTTP/1.1: the client reads three events of a hundred seconds' worth and closes.
    let mut opened = open_tcp(host.addr, Proto::Http1, get_with_id("/?1000", "gone-h1")).await;
    let events = read_events(opened.resp.body_mut(), 3).await;
    assert_eq!(events[..3], numbered(3));
    opened.conn.abort();
    drop(opened);
    gone("gone-h1");
    // The one Context is free again: this is served, not queued behind the first Run.
    let opened = open_tcp(host.addr, Proto::Http1, get_with_id("/?2", "next-h1")).await;
    let timed = Timed::read(opened.resp.into_body()).await;
    assert_eq!(timed.text(), "data: 1\n\ndata: 2\n\n");

    // HTTP/2: the client resets the stream (drops the body) and keeps the connection.
    let mut h2 = H2::connect(host.addr).await;
    let mut resp = h2.get("/?1000", "gone-h2").await;
    assert_eq!(read_events(resp.body_mut(), 3).await[..3], numbered(3));
    drop(resp);
    gone("gone-h2");
    let resp = h2.get("/?2", "next-h2").await;
    assert_eq!(
        Timed::read(resp.into_body()).await.text(),
        "data: 1\n\ndata: 2\n\n"
    );

    // The same Context served all four: started once at boot, never stopped.
    let metrics = host.admin_get("/metrics").await.text();
    assert_eq!(
        metric(&metrics, "effe_context_starts_total"),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "effe_context_stops_total"),
        0.0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_after_the_first_flush_cuts_the_stream_and_is_logged() {
    let host = HostCmd::new("sse").spawn();
    let logged = |id: &str| {
        let id = format!("request_id={id} ");
        host.wait_stderr(move |s| {
            s.lines()
                .any(|l| l.contains(&id) && l.contains("failing after event 2, as asked"))
        })
    };

    let h1 = open_tcp(host.addr, Proto::Http1, get_with_id("/?3&fail=2", "cut-h1")).await;
    let h1 = (h1.resp.status(), Timed::read(h1.resp.into_body()).await);
    // HTTP/2 on a connection kept for one more request.
    let mut conn = H2::connect(host.addr).await;
    let h2 = conn.get("/?3&fail=2", "cut-h2").await;
    let h2 = (h2.status(), Timed::read(h2.into_body()).await);
    let seen = format!(
        "HTTP/1.1 got {:?}, then {:?}; h2 got {:?}, then {:?}",
        h1.1.text(),
        h1.1.result,
        h2.1.text(),
        h2.1.result
    );

    for (status, timed) in [&h1, &h2] {
        assert_eq!(*status, 200, "the head went out with event 1: {seen}");
        // Flushed before the error: sent, as `flush` said.
        assert_eq!(timed.text(), "data: 1\n\ndata: 2\n\n", "{seen}");
    }
    // HTTP/1.1: the body ends without its last chunk, which the client cannot take for a
    // whole body.
    let eof = h1.1.result.as_ref().err().and_then(|err| {
        let io = std::error::Error::source(err)?.downcast_ref::<std::io::Error>()?;
        Some(io.kind())
    });
    assert_eq!(eof, Some(std::io::ErrorKind::UnexpectedEof), "{seen}");
    // HTTP/2: the stream is reset, and the connection carries on.
    assert!(
        format!("{:?}", h2.1.result).contains("Reset("),
        "RST_STREAM expected: {seen}"
    );
    let resp = conn.get("/?1", "after").await;
    assert_eq!(Timed::read(resp.into_body()).await.text(), "data: 1\n\n");
    logged("cut-h1");
    logged("cut-h2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_deadline_cuts_the_stream_and_retires_the_context() {
    let host = HostCmd::new("sse")
        .args([
            "--timeout",
            "1s",
            "--min-contexts",
            "1",
            "--max-contexts",
            "1",
        ])
        .spawn();
    // Five seconds of events: the deadline cuts it after about ten.
    let opened = open_tcp(host.addr, Proto::Http1, get_with_id("/?50", "late")).await;
    assert_eq!(opened.resp.status(), 200);
    let timed = Timed::read(opened.resp.into_body()).await;
    timed.result.as_ref().expect_err("a cut stream");
    let got = timed.events().len();
    assert!((1..50).contains(&got), "{got} events");
    // The effe's next write failed, so it stopped; its Context was retired then.
    host.wait_stderr(|s| {
        s.lines()
            .any(|l| l.contains("request_id=late ") && l.contains("stopped at event"))
    });
    // The next request is served by a fresh Context: the cut one was stopped.
    let opened = open_tcp(host.addr, Proto::Http1, get_with_id("/?1", "next")).await;
    assert_eq!(
        Timed::read(opened.resp.into_body()).await.text(),
        "data: 1\n\n"
    );
    let metrics = wait_metric(&host, "effe_context_stops_total", 1.0).await;
    assert_eq!(
        metric(&metrics, "effe_context_starts_total"),
        2.0,
        "{metrics}"
    );
    // Like any Run past its deadline: logged with the request id (at the deadline, long
    // before the Context was stopped), and counted.
    let stderr = host.stderr();
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("request_id=late ") && l.contains("timed out")),
        "{stderr}"
    );
    assert_eq!(
        metric(&metrics, "effe_run_failures_total{kind=\"timeout\"}"),
        1.0,
        "{stderr}"
    );
}

/// Scrapes the host's metrics until `series` is `value` (bounded by [`PATIENCE`]): the pool
/// stops a retired Context on its own time.
async fn wait_metric(host: &Host, series: &str, value: f64) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let metrics = host.admin_get("/metrics").await.text();
        if metric(&metrics, series) == value {
            return metrics;
        }
        assert!(
            Instant::now() < deadline,
            "{series} never {value}:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A request body of `left` bytes of the pattern, made as it is sent; of a known length or
/// not (chunked on HTTP/1.1). With `stall`, it never ends after them.
struct Pattern {
    left: u64,
    block: Bytes,
    exact: bool,
    stall: bool,
}

impl Pattern {
    fn new(len: u64) -> Pattern {
        Pattern {
            left: len,
            block: pattern_block(),
            exact: false,
            stall: false,
        }
    }
}

impl Body for Pattern {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            // Never woken: the request is abandoned with it.
            return if self.stall {
                Poll::Pending
            } else {
                Poll::Ready(None)
            };
        }
        let n = self.left.min(BLOCK as u64) as usize;
        self.left -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(self.block.slice(..n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0 && !self.stall
    }

    fn size_hint(&self) -> SizeHint {
        if self.exact {
            SizeHint::with_exact(self.left)
        } else {
            SizeHint::default()
        }
    }
}

/// The SHA-256 of `len` bytes of the pattern, by coreutils' `sha256sum`: not the code the
/// effe uses.
fn sha256sum_of_pattern(len: u64) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum (coreutils)");
    let mut stdin = child.stdin.take().unwrap();
    let feed = std::thread::spawn(move || {
        let block = pattern_block();
        let mut left = len;
        while left > 0 {
            let n = left.min(BLOCK as u64) as usize;
            stdin.write_all(&block[..n]).unwrap();
            left -= n as u64;
        }
    });
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    feed.join().unwrap();
    assert!(child.wait().unwrap().success());
    out.split_whitespace().next().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mb_upload_is_digested_in_bounded_memory() {
    const SIZE: u64 = 100_000_000;
    let expected = bounded(
        "sha256sum",
        tokio::task::spawn_blocking(|| sha256sum_of_pattern(SIZE)),
    )
    .await
    .unwrap();
    let host = HostCmd::new("digest").spawn();
    // Idle, after one small upload over each protocol.
    for proto in [Proto::Http1, Proto::Http2] {
        let opened = open_tcp(
            host.addr,
            proto,
            http::Request::post("/").body(Pattern::new(1000)).unwrap(),
        )
        .await;
        assert_eq!(opened.resp.status(), 200);
    }
    let idle = peak_rss_kib(&host);
    // HTTP/1.1 chunked, HTTP/1.1 with a content-length, h2.
    for (proto, exact) in [
        (Proto::Http1, false),
        (Proto::Http1, true),
        (Proto::Http2, false),
    ] {
        let started = Instant::now();
        let body = Pattern {
            exact,
            ..Pattern::new(SIZE)
        };
        let opened = open_tcp(
            host.addr,
            proto,
            http::Request::post("/").body(body).unwrap(),
        )
        .await;
        let status = opened.resp.status();
        let timed = Timed::read(opened.resp.into_body()).await;
        assert_eq!(status, 200, "{proto:?}: {}", timed.text());
        assert_eq!(timed.text(), format!("{expected} {SIZE}\n"), "{proto:?}");
        eprintln!(
            "{proto:?} (length known: {exact}): 100 MB digested in {:?}",
            started.elapsed()
        );
    }
    let peak = peak_rss_kib(&host);
    eprintln!(
        "peak RSS: idle {idle} KiB, after the 100 MB uploads {peak} KiB (+{} KiB)",
        peak - idle
    );
    assert!(
        peak - idle < RSS_BOUND_KIB,
        "the host grew by {} KiB digesting 100 MB: the body was buffered",
        peak - idle
    );
}

/// Sends a chunked request head and `body` as one chunk, without the last chunk, on a raw
/// connection; returns the first bytes of the answer.
async fn raw_chunk(addr: SocketAddr, body: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tcp(addr).await;
    let mut req = b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    req.extend(format!("{:x}\r\n", body.len()).as_bytes());
    req.extend(body);
    req.extend(b"\r\n");
    bounded("the request", tcp.write_all(&req)).await.unwrap();
    // All of it sent and nothing more to come: nothing is left unread when the host closes.
    let mut head = [0u8; 12];
    bounded("an answer", tcp.read_exact(&mut head))
        .await
        .unwrap();
    String::from_utf8_lossy(&head).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_body_over_the_hosts_limit_is_413_unless_the_effe_lifts_it() {
    // fixture-streamed-body streams its body but keeps the host's limit.
    let host = HostCmd::new("fixture-streamed-body")
        .args(["--max-body-size", "1KiB"])
        .spawn();
    // At the limit, chunked: read and counted.
    for proto in [Proto::Http1, Proto::Http2] {
        let req = http::Request::post("/").body(Pattern::new(1024)).unwrap();
        let opened = open_tcp(host.addr, proto, req).await;
        assert_eq!(opened.resp.status(), 200, "{proto:?}");
        assert_eq!(Timed::read(opened.resp.into_body()).await.text(), "1024\n");
    }
    // Past it, with no length declared: the read past the limit fails, and the client gets 413.
    assert_eq!(raw_chunk(host.addr, &[7; 2048]).await, "HTTP/1.1 413");
    let req = http::Request::post("/")
        .body(Pattern {
            stall: true,
            ..Pattern::new(2048)
        })
        .unwrap();
    let opened = open_tcp(host.addr, Proto::Http2, req).await;
    assert_eq!(opened.resp.status(), 413, "h2");

    // digest lifts it: the same body is read whole.
    let host = HostCmd::new("digest")
        .args(["--max-body-size", "1KiB"])
        .spawn();
    let req = http::Request::post("/").body(Pattern::new(2048)).unwrap();
    let opened = open_tcp(host.addr, Proto::Http1, req).await;
    assert_eq!(opened.resp.status(), 200);
    assert!(Timed::read(opened.resp.into_body())
        .await
        .text()
        .ends_with(" 2048\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_body_that_stalls_gets_408() {
    let host = HostCmd::new("digest")
        .args(["--body-read-timeout", "1s"])
        .spawn();
    // Run has started and waits in its read; the body stops coming.
    assert_eq!(raw_chunk(host.addr, b"hello").await, "HTTP/1.1 408");
}
