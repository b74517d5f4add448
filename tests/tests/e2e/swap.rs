//! A new version swapped in on the same port with `--reuse-port` under steady HTTP/1.1
//! keep-alive and HTTP/2 load: no request fails, and the answers move from v1 to v2.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use effe_tests::{get_h1, HostCmd, Proto, PATIENCE};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};

const V1: &str = "Hello from effe"; // hello
const V2: &str = "ok\n"; // fixture-response

/// What one client saw.
#[derive(Default, Debug)]
struct Seen {
    v1: usize,
    v2: usize,
    /// Requests sent that got no complete answer, with why.
    failed: Vec<String>,
    last: Option<String>,
}

impl Seen {
    fn answered(&mut self, body: &[u8]) {
        let body = String::from_utf8_lossy(body).into_owned();
        match body.as_str() {
            V1 => self.v1 += 1,
            V2 => self.v2 += 1,
            _ => self.failed.push(format!("unexpected body {body:?}")),
        }
        self.last = Some(body);
    }
}

/// Sends requests one after another until `stop`, on one connection at a time, opening a new
/// one when the host closes it. A request the client could not send (the connection had
/// closed: hyper says canceled) is not a failure; one sent and not answered is.
async fn client(
    addr: SocketAddr,
    proto: Proto,
    stop: Arc<AtomicBool>,
    total: Arc<AtomicUsize>,
) -> Seen {
    let mut seen = Seen::default();
    // Bounded in count as well as by the test's time.
    for _ in 0..200_000 {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let tcp = match tokio::net::TcpStream::connect(addr).await {
            Ok(tcp) => tcp,
            Err(e) => {
                seen.failed.push(format!("connect: {e}"));
                continue;
            }
        };
        let io = TokioIo::new(tcp);
        match proto {
            Proto::Http1 => {
                let Ok((mut tx, conn)) = hyper::client::conn::http1::handshake(io).await else {
                    continue;
                };
                tokio::spawn(conn);
                while !stop.load(Ordering::Relaxed) && tx.ready().await.is_ok() {
                    match tx.send_request(get_h1("/")).await {
                        Ok(resp) => match resp.into_body().collect().await {
                            Ok(body) => seen.answered(&body.to_bytes()),
                            Err(e) => seen.failed.push(format!("h1 body: {e}")),
                        },
                        Err(e) if e.is_canceled() => break,
                        Err(e) => {
                            seen.failed.push(format!("h1: {e:?}"));
                            break;
                        }
                    }
                    total.fetch_add(1, Ordering::Relaxed);
                }
            }
            Proto::Http2 => {
                let Ok((mut tx, conn)) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await
                else {
                    continue;
                };
                tokio::spawn(conn);
                while !stop.load(Ordering::Relaxed) && tx.ready().await.is_ok() {
                    let req = http::Request::get(format!("http://{addr}/"))
                        .body(Full::new(Bytes::new()))
                        .unwrap();
                    match tx.send_request(req).await {
                        Ok(resp) => match resp.into_body().collect().await {
                            Ok(body) => seen.answered(&body.to_bytes()),
                            Err(e) => seen.failed.push(format!("h2 body: {e}")),
                        },
                        // Refused by the GOAWAY, unprocessed: the client may send it again.
                        Err(e) if e.is_canceled() || refused_stream(&e) => break,
                        Err(e) => {
                            seen.failed.push(format!("h2: {e:?}"));
                            break;
                        }
                    }
                    total.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
    seen
}

fn refused_stream(e: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        if cause.to_string().contains("refused") {
            return true;
        }
        source = cause.source();
    }
    false
}

/// Waits (bounded) until `total` has grown by `more`.
async fn after(total: &AtomicUsize, more: usize) {
    let until = total.load(Ordering::Relaxed) + more;
    let began = Instant::now();
    while total.load(Ordering::Relaxed) < until {
        assert!(began.elapsed() < PATIENCE, "the load stalled");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reuse_port_swap_under_load_fails_no_request() {
    let v1 = HostCmd::new("hello").spawn();
    let addr = v1.addr;
    let (stop, total) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    let clients: Vec<_> = (0..8)
        .map(|i| if i < 6 { Proto::Http1 } else { Proto::Http2 })
        .map(|proto| tokio::spawn(client(addr, proto, stop.clone(), total.clone())))
        .collect();
    after(&total, 2_000).await;

    let v2 = HostCmd::new("fixture-response")
        .args(["--listen", &addr.to_string(), "--reuse-port"])
        .spawn();
    after(&total, 2_000).await;
    let (status, stderr) = v1.stop();
    assert!(status.success(), "{stderr}");
    after(&total, 4_000).await;
    stop.store(true, Ordering::Relaxed);

    let mut seen = Vec::new();
    for c in clients {
        seen.push(tokio::time::timeout(PATIENCE, c).await.unwrap().unwrap());
    }
    let failed: Vec<_> = seen.iter().flat_map(|s| &s.failed).collect();
    let (from_v1, from_v2): (usize, usize) = (
        seen.iter().map(|s| s.v1).sum(),
        seen.iter().map(|s| s.v2).sum(),
    );
    eprintln!(
        "swap: {from_v1} answers from v1, {from_v2} from v2, {} failed",
        failed.len()
    );
    assert!(failed.is_empty(), "{failed:?}");
    assert!(from_v1 > 0 && from_v2 > 0);
    for s in &seen {
        assert_eq!(s.last.as_deref(), Some(V2), "a client still on v1: {s:?}");
    }
    let (status, stderr) = v2.stop();
    assert!(status.success(), "{stderr}");
}
