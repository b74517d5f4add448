//! A client that keeps sending through a version swap: one connection at a time, a new one
//! when the host closes it, every answer counted by its body. Used by the e2e swap test (two
//! processes) and, as `effe-swap-load`, by the deployment checks (two containers).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::{get_h1, Proto};

/// What one client saw.
#[derive(Default, Debug)]
pub struct Seen {
    /// Answers by body.
    pub bodies: BTreeMap<String, usize>,
    /// Requests sent that got no complete answer, with why.
    pub failed: Vec<String>,
    /// The last answer's body.
    pub last: Option<String>,
}

impl Seen {
    fn answered(&mut self, status: http::StatusCode, body: &[u8]) {
        let body = String::from_utf8_lossy(body).into_owned();
        if status != http::StatusCode::OK {
            self.failed.push(format!("{status}: {body:?}"));
            return;
        }
        *self.bodies.entry(body.clone()).or_default() += 1;
        self.last = Some(body);
    }
}

/// Sends `GET /` one request after another (at most one every `pace`) until `stop`, counting
/// each answer in `total`. A request the client could not send (the connection had closed:
/// hyper says canceled, or HTTP/2 refused it with the GOAWAY) is not a failure, and goes on a
/// new connection; one that was sent and not answered is.
pub async fn client(
    addr: SocketAddr,
    proto: Proto,
    pace: Duration,
    stop: Arc<AtomicBool>,
    total: Arc<AtomicUsize>,
) -> Seen {
    let mut seen = Seen::default();
    // Zero: as fast as answers come.
    let mut tick = (!pace.is_zero()).then(|| {
        let mut tick = tokio::time::interval(pace);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick
    });

    // Bounded in count as well as by the caller's time.
    for _ in 0..200_000 {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let tcp = match tokio::net::TcpStream::connect(addr).await {
            Ok(tcp) => tcp,
            Err(e) => {
                seen.failed.push(format!("connect: {e}"));
                pace_on(&mut tick).await;
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
                    pace_on(&mut tick).await;
                    match tx.send_request(get_h1("/")).await {
                        Ok(resp) => {
                            let status = resp.status();
                            match resp.into_body().collect().await {
                                Ok(body) => seen.answered(status, &body.to_bytes()),
                                Err(e) => seen.failed.push(format!("h1 body: {e}")),
                            }
                        }
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
                    pace_on(&mut tick).await;
                    let req = http::Request::get(format!("http://{addr}/"))
                        .body(Full::new(Bytes::new()))
                        .unwrap();
                    match tx.send_request(req).await {
                        Ok(resp) => {
                            let status = resp.status();
                            match resp.into_body().collect().await {
                                Ok(body) => seen.answered(status, &body.to_bytes()),
                                Err(e) => seen.failed.push(format!("h2 body: {e}")),
                            }
                        }
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

async fn pace_on(tick: &mut Option<tokio::time::Interval>) {
    if let Some(tick) = tick.as_mut() {
        tick.tick().await;
    }
}

/// A stream the server refused unprocessed (REFUSED_STREAM, or above a GOAWAY's last id).
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
