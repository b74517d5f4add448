//! SIGTERM under load, HTTP/1.1 and HTTP/2: no request the host accepted fails.
//!
//! What counts: a request the host *accepted* must get a whole 200. Not accepted, and so not a
//! failure: a connection refused (the listener is closed), and a request the host never took:
//! on HTTP/1.1, a connection that ends (closed or reset) before a single byte of a response to
//! it (a request written on a keep-alive connection the host was closing as idle, or on a
//! connection still in the kernel's backlog when the listener closed); on HTTP/2, a request
//! hyper's client never sent, a stream on a connection the host never sent a byte on (the
//! backlog again), or a stream refused by the GOAWAY (above its last-stream-id: h2 reports it
//! as the GOAWAY's NO_ERROR, or REFUSED_STREAM). Anything else fails: another status, a reset
//! or close after part of a response, a cut body, or any of the above before the signal.
//!
//! The client cannot tell a stream refused by the GOAWAY from one the host took and then
//! dropped (h2 gives both the GOAWAY's error), nor, on HTTP/1.1, a request the host read and
//! dropped from one it never read: the effe settles it. Every request is `/sleep?MS`, which the
//! fixture records as it begins to run it, so every Run must have reached its client as a 200:
//! Runs == 200s.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use effe_tests::{count, events, EventLog, PATIENCE};
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::raw::{exchange, get_raw, Outcome};
use super::{fixture, join_all, tail, wait_until};

/// Concurrent requests in flight, either protocol.
const IN_FLIGHT: usize = 64;
/// HTTP/2: streams at once on one connection.
const STREAMS: usize = 4;

#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    /// 200s to requests sent before the signal and answered after it.
    across_signal: AtomicUsize,
    /// Requests not taken, by reason.
    not_taken: Mutex<std::collections::BTreeMap<String, usize>>,
    failures: Mutex<Vec<String>>,
    signalled: AtomicBool,
}

impl Tally {
    fn fail(&self, what: String) {
        self.failures.lock().unwrap().push(what);
    }

    fn answered(&self, sent_before_signal: bool) {
        self.ok.fetch_add(1, Ordering::Relaxed);
        if sent_before_signal && self.signalled.load(Ordering::SeqCst) {
            self.across_signal.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A request the host did not take: expected after the signal only.
    fn not_taken(&self, why: String) {
        if self.signalled.load(Ordering::SeqCst) {
            *self.not_taken.lock().unwrap().entry(why).or_default() += 1;
        } else {
            self.fail(format!("not taken before the signal: {why}"));
        }
    }
}

/// Half the requests take 200 ms, half none.
fn sleep_path(k: usize) -> String {
    format!("/sleep?{}", if k % 2 == 0 { 200 } else { 0 })
}

/// One HTTP/1.1 client: keep-alive requests one after another, a new connection when the host
/// closes one, until a connect is refused.
async fn h1_client(addr: SocketAddr, mut k: usize, tally: Arc<Tally>) {
    loop {
        let mut tcp = match TcpStream::connect(addr).await {
            Ok(tcp) => tcp,
            Err(e) => return tally.not_taken(format!("connect: {e}")),
        };
        loop {
            k += 1;
            let before = !tally.signalled.load(Ordering::SeqCst);
            match exchange(&mut tcp, &get_raw(&sleep_path(k))).await {
                Outcome::Answered(a) if a.status == 200 => {
                    tally.answered(before);
                    if a.closes() {
                        break;
                    }
                }
                Outcome::Answered(a) => return tally.fail(format!("status {}", a.status)),
                Outcome::NotTaken(why) => {
                    tally.not_taken(why);
                    break;
                }
                Outcome::Broken(why) => return tally.fail(why),
            }
        }
    }
}

/// A connection that counts the bytes it has read: none means the host never served it.
struct Heard {
    tcp: TcpStream,
    bytes: Arc<AtomicUsize>,
}

impl AsyncRead for Heard {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.tcp).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.bytes.fetch_add(n, Ordering::Relaxed);
        polled
    }
}

impl AsyncWrite for Heard {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// An error and its sources on one line.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        line.push_str(": ");
        line.push_str(&cause.to_string());
        source = cause.source();
    }
    line
}

/// One HTTP/2 client: [`STREAMS`] request loops on one connection, a new connection when
/// they end, until a connect is refused.
async fn h2_client(addr: SocketAddr, k: usize, tally: Arc<Tally>) {
    loop {
        let tcp = match TcpStream::connect(addr).await {
            Ok(tcp) => tcp,
            Err(e) => return tally.not_taken(format!("connect: {e}")),
        };
        let heard = Arc::new(AtomicUsize::new(0));
        let io = hyper_util::rt::TokioIo::new(Heard {
            tcp,
            bytes: heard.clone(),
        });
        let (h2, conn) =
            match hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
            {
                Ok(pair) => pair,
                Err(e) => return tally.fail(format!("h2 handshake: {}", chain(&e))),
            };
        tokio::spawn(conn);
        let loops = (0..STREAMS)
            .map(|s| {
                let (h2, heard, tally) = (h2.clone(), heard.clone(), tally.clone());
                tokio::spawn(h2_stream_loop(addr, k * STREAMS + s, h2, heard, tally))
            })
            .collect();
        join_all(loops, PATIENCE).await;
    }
}

/// Requests one after another on `h2` until one is not taken (or fails).
async fn h2_stream_loop(
    addr: SocketAddr,
    mut k: usize,
    mut h2: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    heard: Arc<AtomicUsize>,
    tally: Arc<Tally>,
) {
    loop {
        k += STREAMS;
        let req = http::Request::get(format!("http://{addr}{}", sleep_path(k / STREAMS)))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let before = !tally.signalled.load(Ordering::SeqCst);
        let exchange = async {
            match h2.try_send_request(req).await {
                Ok(resp) => {
                    let status = resp.status();
                    match resp.into_body().collect().await {
                        Ok(_) if status == 200 => Ok(()),
                        Ok(_) => Err(Some(format!("status {status}"))),
                        Err(e) => Err(Some(format!("{status}, then the body: {}", chain(&e)))),
                    }
                }
                Err(e) => {
                    let why = chain(e.error());
                    let refused = e.message().is_some()
                        || heard.load(Ordering::Relaxed) == 0
                        || why.ends_with("connection error received: not a result of an error")
                        || why.contains("refused stream before processing any application logic");
                    if refused {
                        tally.not_taken(why);
                        Err(None)
                    } else {
                        Err(Some(why))
                    }
                }
            }
        };
        match tokio::time::timeout(PATIENCE, exchange).await {
            Ok(Ok(())) => tally.answered(before),
            Ok(Err(None)) => return,
            Ok(Err(Some(why))) => return tally.fail(why),
            Err(_) => return tally.fail(format!("no answer within {PATIENCE:?}")),
        }
    }
}

async fn sigterm_under_load(h2: bool) {
    let log = EventLog::new();
    let host = fixture(&log)
        .args([
            "--min-contexts",
            "2",
            "--max-contexts",
            &(2 * IN_FLIGHT).to_string(),
        ])
        .args(["--queue-timeout", "10s"])
        .spawn();
    let tally = Arc::new(Tally::default());
    let clients: Vec<_> = if h2 {
        (0..IN_FLIGHT / STREAMS)
            .map(|i| tokio::spawn(h2_client(host.addr, i, tally.clone())))
            .collect()
    } else {
        (0..IN_FLIGHT)
            .map(|i| tokio::spawn(h1_client(host.addr, i, tally.clone())))
            .collect()
    };
    // Under load: some hundreds answered, 200 ms requests in flight all the time.
    wait_until("500 answers", || tally.ok.load(Ordering::Relaxed) >= 500).await;
    tally.signalled.store(true, Ordering::SeqCst);
    host.sigterm();
    join_all(clients, PATIENCE).await;
    let (status, stderr) = host.wait();
    let failures = tally.failures.lock().unwrap().clone();
    let ok = tally.ok.load(Ordering::Relaxed);
    let across = tally.across_signal.load(Ordering::Relaxed);
    eprintln!(
        "SIGTERM under {} load: {ok} answered 200 ({across} of them across the signal), {} \
         failed; not taken: {:?}",
        if h2 { "HTTP/2" } else { "HTTP/1.1" },
        failures.len(),
        tally.not_taken.lock().unwrap(),
    );
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(status.success(), "exit {status:?}: {}", tail(&stderr));
    assert!(across > 0, "no request was in flight at the signal");
    let ev = events(&log);
    assert_eq!(count(&ev, "sleep "), ok, "every Run reached its client");
    let starts = count(&ev, "start ");
    assert_eq!(starts, count(&ev, "stop "), "Starts and Stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_http1_load_fails_no_accepted_request() {
    sigterm_under_load(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_http2_load_fails_no_accepted_request() {
    sigterm_under_load(true).await;
}
