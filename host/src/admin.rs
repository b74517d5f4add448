//! The admin listener, a port of its own that the effe never sees: `/livez` (or `/healthz`),
//! `/readyz` and `/metrics`.
//!
//! Rules (the README's "Probes" section says the same):
//! - live: every network thread has run its heartbeat within [`STALE`] (a thread stuck in an
//!   inline Run, or a stalled runtime, fails it), and no more Contexts are quarantined than
//!   `--max-quarantined` (Runs past their deadline that have not returned): either way the
//!   orchestrator should restart the host. Once draining, the network threads end one by one:
//!   liveness then holds as long as the admin listener answers.
//! - ready: the minimum Contexts have started and the listeners accept; not while draining;
//!   not while Starts keep failing (inside a backoff window) with no Context alive to serve.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::pool::PoolStats;

/// How often each network thread proves it runs.
pub const BEAT: Duration = Duration::from_secs(1);
/// A network thread silent for longer fails liveness.
pub const STALE: Duration = Duration::from_secs(10);

/// What the probes look at, set by the serving code.
pub struct Health {
    epoch: Instant,
    /// Per network thread: milliseconds since `epoch` at its last heartbeat.
    beats: Box<[AtomicU64]>,
    booted: AtomicBool,
    draining: AtomicBool,
    max_quarantined: usize,
}

impl Health {
    pub fn new(threads: usize, max_quarantined: usize) -> Health {
        Health {
            max_quarantined,
            epoch: Instant::now(),
            beats: (0..threads).map(|_| AtomicU64::new(0)).collect(),
            booted: AtomicBool::new(false),
            draining: AtomicBool::new(false),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Network thread `thread` is running.
    pub fn beat(&self, thread: usize) {
        self.beats[thread].store(self.now_ms(), Ordering::Relaxed);
    }

    /// The minimum Contexts are up and every listener accepts.
    pub fn booted(&self) {
        self.booted.store(true, Ordering::Relaxed);
    }

    /// Shutdown began.
    pub fn draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    fn live(&self, pool: PoolStats) -> Result<(), String> {
        if self.draining.load(Ordering::Relaxed) || !self.booted.load(Ordering::Relaxed) {
            return Ok(());
        }
        if pool.quarantined > self.max_quarantined {
            return Err(format!(
                "{} Contexts quarantined (Runs past their deadline), more than \
                 --max-quarantined {}",
                pool.quarantined, self.max_quarantined
            ));
        }
        let now = self.now_ms();
        let stale = u64::try_from(STALE.as_millis()).unwrap_or(u64::MAX);
        for (thread, beat) in self.beats.iter().enumerate() {
            let silent = now.saturating_sub(beat.load(Ordering::Relaxed));
            if silent > stale {
                return Err(format!(
                    "network thread {thread} has not run for {:.1} s",
                    silent as f64 / 1000.0
                ));
            }
        }
        Ok(())
    }

    fn ready(&self, pool: PoolStats) -> Result<(), &'static str> {
        if self.draining.load(Ordering::Relaxed) || pool.closed {
            Err("draining")
        } else if !self.booted.load(Ordering::Relaxed) {
            Err("starting")
        } else if pool.live == 0 && pool.backing_off {
            Err("Starts are failing and no Context is alive")
        } else {
            Ok(())
        }
    }
}

/// Everything the admin listener answers from.
pub struct Admin {
    pub health: Arc<Health>,
    pub registry: Registry,
    pub pool: Box<dyn Fn() -> PoolStats + Send + Sync>,
}

/// Serves the admin listener until the process ends. Connections are HTTP/1.1, one task each.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let reply = answer(&admin, &req);
                async move { Ok::<_, Infallible>(reply) }
            });
            let mut http1 = hyper::server::conn::http1::Builder::new();
            http1
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10));
            let _ = http1.serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn answer(admin: &Admin, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/livez" | "/healthz" => match admin.health.live((admin.pool)()) {
            Ok(()) => text(StatusCode::OK, "ok\n".into()),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not live: {why}\n"),
            ),
        },
        "/readyz" => match admin.health.ready((admin.pool)()) {
            Ok(()) => text(StatusCode::OK, "ready\n".into()),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            ),
        },
        "/metrics" => {
            let mut resp = text(StatusCode::OK, crate::metrics::encode(&admin.registry));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            resp
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: the admin listener serves /livez, /healthz, /readyz and /metrics\n".into(),
        ),
    }
}
