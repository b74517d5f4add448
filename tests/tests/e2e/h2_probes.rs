//! HTTP/2 frame-level probes (RFC 9113), each over h2c and over TLS (ALPN h2): floods (rapid
//! reset, CONTINUATION, SETTINGS, PING), a zero flow-control window, oversized and misshapen
//! frames, stream id misuse and malformed requests. Each asserts the answer RFC 9113 requires
//! (or the bound the host keeps) and that another client is served during the probe and after.
//!
//! The raw client is in `raw`, the one-answer cases in `cases`. Where hyper/h2 answers
//! otherwise than the RFC requires, the case says so and asserts what is observed: the test
//! fails if either changes.

mod raw;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use effe_tests::tls::{client, connect, negotiated, pki};
use effe_tests::{get, send, send_on, Host, HostCmd, Proto, Reply, PATIENCE};
use tokio::io::{AsyncRead, AsyncWrite};

use raw::*;

/// How long a probe waits for an answer that should come at once.
const WAIT: Duration = Duration::from_secs(10);

/// How long a flood's write may make no progress before the host is taken to have stopped
/// reading (it is then read from, so a slow host only delays the probe).
const STALL: Duration = Duration::from_millis(300);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wire {
    H2c,
    Tls,
}

/// One test per wire: `name::h2c` and `name::tls` run `name(Wire)`, with the attributes given.
macro_rules! on_both_wires {
    ($($(#[$attr:meta])* $name:ident),* $(,)?) => {$(
        mod $name {
            $(#[$attr])*
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn h2c() {
                super::$name(super::Wire::H2c).await;
            }

            $(#[$attr])*
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn tls() {
                super::$name(super::Wire::Tls).await;
            }
        }
    )*};
}

on_both_wires!(
    rapid_reset,
    induced_resets,
    continuation_flood,
    oversized_header_list,
    settings_flood,
    ping_flood,
    zero_window,
);

// After the macro, which it uses.
mod cases;

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

type Raw = Conn<Box<dyn Io>>;

/// A host serving h2c, or TLS with ALPN.
struct Target {
    host: Host,
    wire: Wire,
}

impl Target {
    fn spawn(wire: Wire, plugin: &str, args: &[&str]) -> Target {
        let mut cmd = HostCmd::new(plugin).args(args);
        if wire == Wire::Tls {
            cmd = cmd
                .args(["--tls-cert".as_ref(), pki("chain-ec.pem").as_os_str()])
                .args(["--tls-key".as_ref(), pki("leaf-ec.key").as_os_str()]);
        }
        Target {
            host: cmd.spawn(),
            wire,
        }
    }

    /// A raw HTTP/2 connection, past the preface and the SETTINGS exchange.
    async fn raw(&self, settings: &[(u16, u32)]) -> Raw {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        self.raw_over(socket, settings).await
    }

    /// A raw HTTP/2 connection whose socket buffers are small: what the host sends and the
    /// client does not read soon fills them, so the host's own buffering is what shows.
    async fn raw_small_buffers(&self) -> Raw {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        socket.set_send_buffer_size(4096).expect("SO_SNDBUF");
        self.raw_over(socket, &[]).await
    }

    async fn raw_over(&self, socket: tokio::net::TcpSocket, settings: &[(u16, u32)]) -> Raw {
        let connect = async {
            let tcp = socket.connect(self.host.addr).await.expect("connect");
            let io: Box<dyn Io> = match self.wire {
                Wire::H2c => Box::new(tcp),
                Wire::Tls => {
                    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
                    let tls = tokio_rustls::TlsConnector::from(client(&["h2"], None))
                        .connect(name, tcp)
                        .await
                        .expect("TLS handshake");
                    assert_eq!(negotiated(&tls), Proto::Http2, "ALPN chose h2");
                    Box::new(tls)
                }
            };
            io
        };
        let io = tokio::time::timeout(WAIT, connect)
            .await
            .expect("connected within WAIT");
        Conn::handshake(io, settings, WAIT).await
    }

    /// The pseudo-header fields of a valid `GET path`.
    fn request<'a>(&self, method: &'a str, path: &'a str) -> Vec<(&'a str, &'a str)> {
        let scheme = match self.wire {
            Wire::H2c => "http",
            Wire::Tls => "https",
        };
        vec![
            (":method", method),
            (":scheme", scheme),
            (":path", path),
            (":authority", "localhost"),
        ]
    }

    /// A normal client's `GET /` on a connection of its own.
    fn bystander(&self, proto: Proto) -> Bystander {
        let (addr, wire) = (self.host.addr, self.wire);
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let mut served = 0;
            // At least one request, however soon the probe ends; a pause between them, so
            // that the bystander does not take the CPU the probe needs.
            while served < 10_000 {
                let reply = normal_get(addr, wire, proto).await;
                assert_eq!(reply.status, 200, "the bystander was not served");
                served += 1;
                if stopped.load(Ordering::Relaxed) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            served
        });
        Bystander { stop, task }
    }

    /// The host still serves a normal client, over HTTP/1.1 and HTTP/2.
    async fn still_serves(&self) {
        for proto in [Proto::Http1, Proto::Http2] {
            let reply = normal_get(self.host.addr, self.wire, proto).await;
            assert_eq!(reply.status, 200, "{proto:?} after the probe");
        }
    }

    /// Requests served over HTTP/2 so far, all status classes (the hello effe is inline: one
    /// per Run).
    async fn h2_requests(&self) -> f64 {
        let scrape = self.host.admin_get("/metrics").await.text();
        ["1xx", "2xx", "3xx", "4xx", "5xx"]
            .iter()
            .map(|class| {
                effe_tests::metric(
                    &scrape,
                    &format!("effe_requests_total{{protocol=\"h2\",code=\"{class}\"}}"),
                )
            })
            .sum()
    }
}

/// `GET /` from a normal (hyper) client on a new connection.
async fn normal_get(addr: std::net::SocketAddr, wire: Wire, proto: Proto) -> Reply {
    match wire {
        Wire::H2c => send(addr, proto, get("/")).await,
        Wire::Tls => {
            let alpn = match proto {
                Proto::Http1 => "http/1.1",
                Proto::Http2 => "h2",
            };
            let exchange = async {
                let tls = connect(addr, client(&[alpn], None))
                    .await
                    .expect("TLS handshake");
                send_on(tls, addr, proto, get("/")).await
            };
            tokio::time::timeout(PATIENCE, exchange)
                .await
                .expect("a normal client served within PATIENCE")
        }
    }
}

/// A normal client sending requests, one after the other, while a probe runs.
struct Bystander {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<u32>,
}

impl Bystander {
    /// Stops after the request in progress; how many were served (at least one).
    async fn finish(self) -> u32 {
        self.stop.store(true, Ordering::Relaxed);
        match tokio::time::timeout(PATIENCE, self.task).await {
            Ok(Ok(served)) => served,
            Ok(Err(panicked)) => std::panic::resume_unwind(panicked.into_panic()),
            Err(_) => panic!("the bystander got no answer within {PATIENCE:?}"),
        }
    }
}

/// The GOAWAY the host sent before it closed the connection, with the code `code`.
fn expect_goaway(seen: &Seen, code: u32) -> GoAway {
    let away = seen.goaway().unwrap_or_else(|| panic!("no GOAWAY: {seen}"));
    assert_eq!(code_name(away.code), code_name(code), "{seen}");
    assert_eq!(seen.end, End::Closed, "not closed after GOAWAY: {seen}");
    away
}

// ---------------------------------------------------------------------------------------------
// Floods.

/// CVE-2023-44487: streams opened and at once cancelled, thousands of them, in one burst.
/// RFC 9113 §10.5 lets an endpoint treat such activity as a connection error of type
/// ENHANCE_YOUR_CALM; h2 does once more than `max_pending_accept_reset_streams` (20) streams
/// are reset before the server has taken them.
async fn rapid_reset(wire: Wire) {
    const STREAMS: u32 = 5_000;
    let t = Target::spawn(wire, "hello", &[]);
    // Over HTTP/1.1, so that the HTTP/2 request count is the probe's alone.
    let bystander = t.bystander(Proto::Http1);
    let before = t.h2_requests().await;
    let mut conn = t.raw(&[]).await;
    let fields = t.request("GET", "/");
    let mut burst = Vec::new();
    for id in (1..).step_by(2).take(STREAMS as usize) {
        burst.extend(headers(id, END_STREAM | END_HEADERS, &fields));
        burst.extend(rst_stream(id, CANCEL));
    }
    // The host may close before it has read it all.
    let _ = conn.send(&burst, WAIT).await;
    let seen = conn.read_to_close(WAIT).await;
    let calls = t.h2_requests().await - before;
    let served = bystander.finish().await;
    eprintln!("rapid reset, {wire:?}: {seen}; effe calls: {calls}; bystander served {served}");
    let away = expect_goaway(&seen, ENHANCE_YOUR_CALM);
    assert!(
        away.last < 2 * STREAMS - 1,
        "every stream was taken: {seen}"
    );
    // The effe ran at most once per stream the host took before it gave up, a small part of
    // the burst.
    assert!(
        calls <= f64::from(away.last.div_ceil(2)),
        "{calls} calls: {seen}"
    );
    assert!(calls < f64::from(STREAMS / 10), "{calls} calls: {seen}");
    t.still_serves().await;
}

/// CVE-2025-8671 ("MadeYouReset"): requests the host must reset itself (malformed: no
/// `:path`, RFC 9113 §8.3.1), thousands in one burst. h2 answers ENHANCE_YOUR_CALM once it has
/// reset or refused (past SETTINGS_MAX_CONCURRENT_STREAMS) more than
/// `max_local_error_reset_streams` (1024) streams on one connection.
async fn induced_resets(wire: Wire) {
    const STREAMS: u32 = 5_000;
    let t = Target::spawn(wire, "hello", &[]);
    let bystander = t.bystander(Proto::Http1);
    let before = t.h2_requests().await;
    let mut conn = t.raw(&[]).await;
    let fields: Vec<_> = t
        .request("GET", "/")
        .into_iter()
        .filter(|(name, _)| *name != ":path")
        .collect();
    let mut burst = Vec::new();
    for id in (1..).step_by(2).take(STREAMS as usize) {
        burst.extend(headers(id, END_STREAM | END_HEADERS, &fields));
    }
    let _ = conn.send(&burst, WAIT).await;
    let seen = conn.read_to_close(WAIT).await;
    let calls = t.h2_requests().await - before;
    let served = bystander.finish().await;
    eprintln!("induced resets, {wire:?}: {seen}; effe calls: {calls}; bystander served {served}");
    let away = expect_goaway(&seen, ENHANCE_YOUR_CALM);
    assert!(
        away.last < 2 * STREAMS - 1,
        "every stream was taken: {seen}"
    );
    assert_eq!(calls, 0.0, "a malformed request reached the effe");
    t.still_serves().await;
}

/// HEADERS without END_HEADERS, then CONTINUATION frames that never end the block. RFC 9113
/// §6.10 sets no count, §10.5.1 lets a server refuse a field block it will not process, and
/// §10.5 allows ENHANCE_YOUR_CALM for abuse; h2 answers it past a few frames (what
/// `max_header_list_size` needs at most, plus a quarter), before any memory grows with them.
async fn continuation_flood(wire: Wire) {
    const FRAMES: usize = 10_000;
    let t = Target::spawn(wire, "hello", &[]);
    let bystander = t.bystander(Proto::Http2);
    let mut conn = t.raw(&[]).await;
    let mut flood = headers(1, END_STREAM, &t.request("GET", "/"));
    let one = frame(CONTINUATION, 0, 1, &header_block(&[("x-flood", "a")]));
    for _ in 0..FRAMES {
        flood.extend_from_slice(&one);
    }
    let _ = conn.send(&flood, WAIT).await;
    let seen = conn.read_to_close(WAIT).await;
    let served = bystander.finish().await;
    eprintln!("CONTINUATION flood, {wire:?}: {seen}; bystander served {served}");
    let away = expect_goaway(&seen, ENHANCE_YOUR_CALM);
    assert_eq!(away.last, 0, "the flooded stream was never opened: {seen}");
    t.still_serves().await;
}

/// A field block larger than the host's SETTINGS_MAX_HEADER_LIST_SIZE (64 KiB by default),
/// spread over CONTINUATION frames: RFC 9113 §10.5.1 "A server that receives a larger field
/// block than it is willing to handle can send an HTTP 431 (Request Header Fields Too Large)
/// status code"; the block must still be decoded (HPACK state), and the connection lives on.
async fn oversized_header_list(wire: Wire) {
    let t = Target::spawn(wire, "hello", &[]);
    let bystander = t.bystander(Proto::Http2);
    let mut conn = t.raw(&[]).await;
    let big = "v".repeat(4096);
    let mut fields = t.request("GET", "/");
    let names: Vec<String> = (0..20).map(|i| format!("x-big-{i}")).collect();
    fields.extend(names.iter().map(|n| (n.as_str(), big.as_str())));
    let block = header_block(&fields);
    let mut bytes = Vec::new();
    let chunks: Vec<&[u8]> = block.chunks(DEFAULT_MAX_FRAME_SIZE).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let (kind, flags) = if i == 0 {
            (HEADERS, END_STREAM)
        } else {
            (CONTINUATION, 0)
        };
        let end = if i + 1 == chunks.len() {
            END_HEADERS
        } else {
            0
        };
        bytes.extend(frame(kind, flags | end, 1, chunk));
    }
    conn.send(&bytes, WAIT).await.expect("send the field block");
    let seen = conn
        .read_until(
            |f| f.kind == GOAWAY || (f.stream == 1 && f.kind == HEADERS),
            WAIT,
        )
        .await;
    eprintln!("oversized header list, {wire:?}: {seen}");
    assert_eq!(seen.status_of(1), Some(431), "{seen}");
    // The connection lives on: the next request on it is served.
    let next = headers(3, END_STREAM | END_HEADERS, &t.request("GET", "/"));
    conn.send(&next, WAIT).await.expect("send the next request");
    let after = conn
        .read_until(
            |f| f.kind == GOAWAY || (f.stream == 3 && f.kind == HEADERS),
            WAIT,
        )
        .await;
    assert_eq!(after.status_of(3), Some(200), "{after}");
    bystander.finish().await;
    t.still_serves().await;
}

/// Frames that each call for an acknowledgement, written without reading one: the host must
/// not queue acknowledgements without bound (CVE-2019-9512, CVE-2019-9515; RFC 9113 §10.5
/// names both). h2 holds at most one unsent ACK and reads nothing more until it is written, so
/// a client that does not read soon finds the host not reading either (past what the kernel's
/// socket buffers hold: a few MB here); once read, every frame taken is acknowledged.
async fn flood_of_acks(wire: Wire, what: &str, one: Vec<u8>) {
    // Far more than the socket buffers on both sides hold; only what the host takes is sent.
    const FLOOD: usize = 64 << 20;
    let t = Target::spawn(wire, "hello", &[]);
    let bystander = t.bystander(Proto::Http2);
    let mut conn = t.raw_small_buffers().await;
    let bytes = one.repeat(FLOOD / one.len());
    let (kind, len) = (one[3], one.len());
    let is_ack = move |f: &Frame| f.kind == kind && f.flags & ACK != 0;
    let flood = conn.flood(&bytes, len, STALL, is_ack, PATIENCE).await;
    let served = bystander.finish().await;
    eprintln!(
        "{what} flood, {wire:?}: the host stopped reading after {} of {} frames ({} bytes; \
         stalled: {}); then {}; bystander served {served}",
        flood.taken,
        bytes.len() / len,
        flood.taken * len,
        flood.stalled,
        flood.seen
    );
    assert!(
        flood.stalled,
        "the host took all {} bytes unanswered",
        bytes.len()
    );
    assert!(flood.seen.goaway().is_none(), "{}", flood.seen);
    assert_eq!(flood.seen.count(is_ack), flood.taken, "{}", flood.seen);
    // The connection still serves.
    let req = headers(1, END_STREAM | END_HEADERS, &t.request("GET", "/"));
    conn.send(&req, WAIT).await.expect("send a request");
    let after = conn
        .read_until(
            |f| f.kind == GOAWAY || (f.stream == 1 && f.kind == HEADERS),
            WAIT,
        )
        .await;
    assert_eq!(after.status_of(1), Some(200), "{after}");
    t.still_serves().await;
}

async fn settings_flood(wire: Wire) {
    flood_of_acks(wire, "SETTINGS", settings(&[])).await;
}

async fn ping_flood(wire: Wire) {
    flood_of_acks(wire, "PING", ping(0x0123_4567_89ab_cdef)).await;
}

// ---------------------------------------------------------------------------------------------
// Flow control.

/// A client that opens no flow-control window (RFC 9113 §6.9) and waits: with
/// SETTINGS_INITIAL_WINDOW_SIZE 0 no byte of the response body may be sent; with the default
/// window and never a WINDOW_UPDATE, no byte past 65,535. The host must not hold such a stream
/// (and its connection, and the response) for ever. `--write-timeout` does not see it (it runs
/// while a socket write waits, and a stream blocked by flow control writes nothing); the
/// keep-alive timeout does: once answered, the request is no longer in progress, the idle
/// connection gets its GOAWAY, and is closed when still open as long again.
async fn zero_window(wire: Wire) {
    let t = Target::spawn(wire, "echo", &["--keep-alive-timeout", "1s"]);
    let bystander = t.bystander(Proto::Http2);
    let no_window = async {
        let mut conn = t.raw(&[(SETTINGS_INITIAL_WINDOW_SIZE, 0)]).await;
        let req = headers(1, END_STREAM | END_HEADERS, &t.request("GET", "/"));
        conn.send(&req, WAIT).await.expect("send the request");
        // HEADERS are not flow-controlled: the response head comes, its body cannot.
        let mut seen = conn
            .read_until(|f| f.stream == 1 && f.kind == HEADERS, WAIT)
            .await;
        seen.extend(conn.read_to_close(Duration::from_secs(8)).await);
        seen
    };
    let no_update = async {
        let mut conn = t.raw(&[]).await;
        // Echo answers the body twice (as text and hex): past the default window.
        let body = vec![b'x'; 48 << 10];
        let mut req = headers(1, END_HEADERS, &t.request("POST", "/"));
        for (i, chunk) in body.chunks(DEFAULT_MAX_FRAME_SIZE).enumerate() {
            let last = (i + 1) * DEFAULT_MAX_FRAME_SIZE >= body.len();
            req.extend(frame(DATA, if last { END_STREAM } else { 0 }, 1, chunk));
        }
        conn.send(&req, WAIT).await.expect("send the request");
        conn.read_to_close(Duration::from_secs(10)).await
    };
    let began = Instant::now();
    let (no_window, no_update) = tokio::join!(no_window, no_update);
    let served = bystander.finish().await;
    eprintln!(
        "zero window, {wire:?}: {no_window}; no WINDOW_UPDATE: {no_update}; after {:?}; \
         bystander served {served}",
        began.elapsed()
    );
    assert_eq!(no_window.status_of(1), Some(200), "{no_window}");
    assert_eq!(no_window.count(|f| f.kind == DATA), 0, "{no_window}");
    let sent: usize = no_update
        .frames()
        .filter(|f| f.kind == DATA)
        .map(|f| f.payload.len())
        .sum();
    assert!(sent <= 65_535, "{sent} bytes past the window: {no_update}");
    assert_eq!(
        no_window.end,
        End::Closed,
        "held past twice the keep-alive timeout: {no_window}"
    );
    assert_eq!(
        no_update.end,
        End::Closed,
        "held past twice the keep-alive timeout: {no_update}"
    );
    t.still_serves().await;
}
