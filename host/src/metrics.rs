//! The host's metrics, exposed on the admin listener's `/metrics` (OpenMetrics text, encoded by
//! `prometheus-client`).
//!
//! The request path only bumps relaxed atomics in its network thread's own [`Shard`] (one cache
//! line set per thread: no lock, no allocation, no line shared between threads); rare events
//! (Starts, Stops, 503s, errors, connections) bump shared atomics. Everything is read and summed
//! on scrape, by a `prometheus-client` collector, so that the exposition format is the
//! library's, never hand-written.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::pool::PoolStats;

/// Upper bounds of the latency histograms, in seconds: from sub-millisecond answers of an
/// in-memory effe to Runs that wait on slow upstreams.
const BOUNDS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// [`BOUNDS`] in nanoseconds, so that an update compares integers.
const BOUND_NANOS: [u64; BOUNDS.len()] = {
    let mut nanos = [0; BOUNDS.len()];
    let mut i = 0;
    while i < BOUNDS.len() {
        nanos[i] = (BOUNDS[i] * 1e9) as u64;
        i += 1;
    }
    nanos
};

/// A histogram of durations whose every update is three relaxed atomic additions.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Per bucket, not cumulative; the last is `+Inf`.
    counts: [AtomicU64; BOUNDS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, took: Duration) {
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let bucket = BOUND_NANOS
            .iter()
            .position(|b| nanos <= *b)
            .unwrap_or(BOUNDS.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Adds this histogram's counts into `into`: (sum in nanoseconds, per-bucket counts).
    fn add_to(&self, into: &mut (u64, [u64; BOUNDS.len() + 1])) {
        into.0 = into.0.wrapping_add(self.sum_nanos.load(Ordering::Relaxed));
        for (total, count) in into.1.iter_mut().zip(&self.counts) {
            *total += count.load(Ordering::Relaxed);
        }
    }
}

/// The protocol of a request, as a label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Http1 = 0,
    Http2 = 1,
}

impl Proto {
    pub fn of(version: http::Version) -> Proto {
        if version == http::Version::HTTP_2 {
            Proto::Http2
        } else {
            Proto::Http1
        }
    }

    fn label(i: usize) -> &'static str {
        ["http/1.1", "h2"][i]
    }
}

/// What one network thread counts per request. Aligned so that two threads' shards never share
/// a cache line.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct Shard {
    /// By protocol, then status class (1xx..5xx).
    requests: [[AtomicU64; 5]; 2],
    in_flight: AtomicI64,
    duration: Histogram,
    wait: Histogram,
}

impl Shard {
    /// A finished request: its protocol, status and time from headers to response.
    pub fn request(&self, proto: Proto, status: http::StatusCode, took: Duration) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.requests[proto as usize][class].fetch_add(1, Ordering::Relaxed);
        self.duration.observe(took);
    }

    /// A request on the general path (a body to read, a Context to wait for, Run on another
    /// thread) began (+1) or ended (-1).
    pub fn in_flight(&self, delta: i64) {
        self.in_flight.fetch_add(delta, Ordering::Relaxed);
    }

    /// How long a request waited for a Context (the general path only; the fast path takes an
    /// idle one without waiting).
    pub fn waited(&self, took: Duration) {
        self.wait.observe(took);
    }
}

/// Why a request got 503.
#[derive(Debug, Clone, Copy)]
pub enum Unavailable {
    QueueFull = 0,
    QueueTimeout = 1,
    StartFailed = 2,
    ShuttingDown = 3,
}

const UNAVAILABLE: [&str; 4] = [
    "queue_full",
    "queue_timeout",
    "start_failed",
    "shutting_down",
];

/// Open connections, by protocol and transport.
#[derive(Debug, Clone, Copy)]
pub enum Conn {
    Http1 = 0,
    Http2 = 1,
    Http1Tls = 2,
    Http2Tls = 3,
}

/// The effe and host versions, for the build-info metric.
#[derive(Debug, Clone)]
pub struct Build {
    pub effe: &'static str,
    pub effe_version: &'static str,
    pub effe_abi: &'static str,
}

/// Every metric of the host.
#[derive(Debug)]
pub struct Metrics {
    shards: Box<[Shard]>,
    build: Build,
    init_nanos: AtomicU64,
    starts: AtomicU64,
    start_failures: AtomicU64,
    stops: AtomicU64,
    start_duration: Histogram,
    unavailable: [AtomicU64; 4],
    run_errors: AtomicU64,
    run_panics: AtomicU64,
    run_timeouts: AtomicU64,
    connections: [AtomicI64; 4],
    tls_handshake_failures: AtomicU64,
    connection_cap_reached: AtomicU64,
}

impl Metrics {
    /// Metrics for `threads` network threads.
    pub fn new(threads: usize, build: Build) -> Metrics {
        Metrics {
            shards: (0..threads.max(1)).map(|_| Shard::default()).collect(),
            build,
            init_nanos: AtomicU64::new(0),
            starts: AtomicU64::new(0),
            start_failures: AtomicU64::new(0),
            stops: AtomicU64::new(0),
            start_duration: Histogram::default(),
            unavailable: Default::default(),
            run_errors: AtomicU64::new(0),
            run_panics: AtomicU64::new(0),
            run_timeouts: AtomicU64::new(0),
            connections: Default::default(),
            tls_handshake_failures: AtomicU64::new(0),
            connection_cap_reached: AtomicU64::new(0),
        }
    }

    /// Network thread `thread`'s shard.
    pub fn shard(&self, thread: usize) -> &Shard {
        &self.shards[thread % self.shards.len()]
    }

    pub fn init_took(&self, took: Duration) {
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.init_nanos.store(nanos, Ordering::Relaxed);
    }

    pub fn started(&self, took: Duration, ok: bool) {
        self.start_duration.observe(took);
        let counter = if ok {
            &self.starts
        } else {
            &self.start_failures
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn stopped(&self) {
        self.stops.fetch_add(1, Ordering::Relaxed);
    }

    pub fn unavailable(&self, why: Unavailable) {
        self.unavailable[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn run_failed(&self, panicked: bool) {
        let counter = if panicked {
            &self.run_panics
        } else {
            &self.run_errors
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn run_timed_out(&self) {
        self.run_timeouts.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection of kind `conn` opened (+1) or closed (-1).
    pub fn connection(&self, conn: Conn, delta: i64) {
        self.connections[conn as usize].fetch_add(delta, Ordering::Relaxed);
    }

    pub fn connection_cap_reached(&self) {
        self.connection_cap_reached.fetch_add(1, Ordering::Relaxed);
    }

    pub fn tls_handshake_failed(&self) {
        self.tls_handshake_failures.fetch_add(1, Ordering::Relaxed);
    }
}

/// The registry `/metrics` encodes: these metrics and the pool's state, read on each scrape.
pub fn registry(
    metrics: Arc<Metrics>,
    pool: impl Fn() -> PoolStats + Send + Sync + 'static,
) -> Registry {
    let mut registry = Registry::with_prefix("effe");
    registry.register_collector(Box::new(Scrape {
        metrics,
        pool: Box::new(pool),
    }));
    registry
}

/// Reads everything at scrape time.
struct Scrape {
    metrics: Arc<Metrics>,
    pool: Box<dyn Fn() -> PoolStats + Send + Sync>,
}

impl std::fmt::Debug for Scrape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scrape")
    }
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: &[(&[(&str, &str)], u64)],
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in values {
        ConstCounter::new(*value).encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    values: &[(&[(&str, &str)], i64)],
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    for (labels, value) in values {
        ConstGauge::new(*value).encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

fn histogram(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    (sum_nanos, counts): (u64, [u64; BOUNDS.len() + 1]),
) -> Result<(), std::fmt::Error> {
    let mut buckets: Vec<(f64, u64)> = BOUNDS.iter().copied().zip(counts).collect();
    buckets.push((f64::INFINITY, counts[BOUNDS.len()]));
    let count = counts.iter().sum();
    let metric =
        encoder.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?;
    let mut metric = metric;
    metric.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
        sum_nanos as f64 / 1e9,
        count,
        &buckets,
        None,
    )
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let m = &*self.metrics;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);

        let mut requests = [[0u64; 5]; 2];
        let mut in_flight = 0;
        let mut duration = (0, [0; BOUNDS.len() + 1]);
        let mut wait = (0, [0; BOUNDS.len() + 1]);
        for shard in m.shards.iter() {
            for (p, by_class) in shard.requests.iter().enumerate() {
                for (c, n) in by_class.iter().enumerate() {
                    requests[p][c] += load(n);
                }
            }
            in_flight += shard.in_flight.load(Ordering::Relaxed);
            shard.duration.add_to(&mut duration);
            shard.wait.add_to(&mut wait);
        }
        const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
        let labels: Vec<[(&str, &str); 2]> = (0..2)
            .flat_map(|p| {
                (0..5).map(move |c| [("protocol", Proto::label(p)), ("code", CLASSES[c])])
            })
            .collect();
        let values: Vec<(&[(&str, &str)], u64)> = labels
            .iter()
            .zip(requests.iter().flatten())
            .map(|(l, n)| (&l[..], *n))
            .collect();
        counter(
            &mut encoder,
            "requests",
            "Requests answered, by protocol and status class",
            &values,
        )?;
        histogram(
            &mut encoder,
            "request_duration",
            "From request headers to response, for answered requests",
            duration,
        )?;
        gauge(
            &mut encoder,
            "requests_in_flight",
            "Requests reading their body, waiting for a Context or in a Run on another thread",
            None,
            &[(&[], in_flight)],
        )?;
        histogram(
            &mut encoder,
            "context_wait",
            "How long requests that could not take an idle Context at once waited for one",
            wait,
        )?;
        let unavailable: Vec<[(&str, &str); 1]> =
            UNAVAILABLE.iter().map(|r| [("reason", *r)]).collect();
        let values: Vec<(&[(&str, &str)], u64)> = unavailable
            .iter()
            .zip(&m.unavailable)
            .map(|(l, n)| (&l[..], load(n)))
            .collect();
        counter(
            &mut encoder,
            "unavailable",
            "Requests answered 503, by reason",
            &values,
        )?;
        counter(
            &mut encoder,
            "run_failures",
            "Runs that returned an error, panicked, or overran --timeout",
            &[
                (&[("kind", "error")], load(&m.run_errors)),
                (&[("kind", "panic")], load(&m.run_panics)),
                (&[("kind", "timeout")], load(&m.run_timeouts)),
            ],
        )?;

        let pool = (self.pool)();
        let as_i64 = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        gauge(
            &mut encoder,
            "contexts",
            "Contexts by state: idle, busy (lent to a request), quarantined (lent to a Run that \
             overran its deadline), starting, stopping",
            None,
            &[
                (&[("state", "idle")], as_i64(pool.idle)),
                (&[("state", "busy")], as_i64(pool.busy())),
                (&[("state", "quarantined")], as_i64(pool.quarantined)),
                (&[("state", "starting")], as_i64(pool.starting)),
                (&[("state", "stopping")], as_i64(pool.stopping)),
            ],
        )?;
        gauge(
            &mut encoder,
            "requests_waiting",
            "Requests queued for a Context",
            None,
            &[(&[], as_i64(pool.waiting))],
        )?;
        counter(
            &mut encoder,
            "context_starts",
            "Starts that returned a Context",
            &[(&[], load(&m.starts))],
        )?;
        counter(
            &mut encoder,
            "context_start_failures",
            "Starts that failed or panicked",
            &[(&[], load(&m.start_failures))],
        )?;
        counter(
            &mut encoder,
            "context_stops",
            "Stops called (each Context that started is stopped once)",
            &[(&[], load(&m.stops))],
        )?;
        let mut starts = (0, [0; BOUNDS.len() + 1]);
        m.start_duration.add_to(&mut starts);
        histogram(
            &mut encoder,
            "context_start_duration",
            "How long Starts took",
            starts,
        )?;
        {
            let metric = encoder.encode_descriptor(
                "init_duration",
                "How long the effe's Init took (the cold start before any Start)",
                Some(&Unit::Seconds),
                MetricType::Gauge,
            )?;
            let mut metric = metric;
            metric.encode_gauge(&(load(&m.init_nanos) as f64 / 1e9))?;
        }

        let conns = |c: Conn| m.connections[c as usize].load(Ordering::Relaxed);
        gauge(
            &mut encoder,
            "connections_open",
            "Open client connections, by protocol and TLS (counted from their first request)",
            None,
            &[
                (
                    &[("protocol", "http/1.1"), ("tls", "false")],
                    conns(Conn::Http1),
                ),
                (&[("protocol", "h2"), ("tls", "false")], conns(Conn::Http2)),
                (
                    &[("protocol", "http/1.1"), ("tls", "true")],
                    conns(Conn::Http1Tls),
                ),
                (
                    &[("protocol", "h2"), ("tls", "true")],
                    conns(Conn::Http2Tls),
                ),
            ],
        )?;
        counter(
            &mut encoder,
            "tls_handshake_failures",
            "TLS handshakes that failed or timed out",
            &[(&[], load(&m.tls_handshake_failures))],
        )?;
        counter(
            &mut encoder,
            "connection_cap_reached",
            "Times the host reached --max-connections and stopped accepting",
            &[(&[], load(&m.connection_cap_reached))],
        )?;
        let build = &m.build;
        let mut metric = encoder.encode_descriptor(
            "build",
            "The host's and the effe's versions",
            None,
            MetricType::Info,
        )?;
        metric.encode_info(&[
            ("host_version", env!("CARGO_PKG_VERSION")),
            ("effe", build.effe),
            ("effe_version", build.effe_version),
            ("effe_abi_version", build.effe_abi),
        ])?;
        Ok(())
    }
}

/// The OpenMetrics text of `registry`.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_upper_bounds() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_micros(501));
        h.observe(Duration::from_secs(60));
        let mut got = (0, [0; BOUNDS.len() + 1]);
        h.add_to(&mut got);
        assert_eq!(got.1[0], 1, "0.5 ms is in the 0.5 ms bucket");
        assert_eq!(got.1[1], 1);
        assert_eq!(got.1[BOUNDS.len()], 1, "+Inf");
        assert_eq!(got.0, 500_000 + 501_000 + 60_000_000_000);
    }
}
