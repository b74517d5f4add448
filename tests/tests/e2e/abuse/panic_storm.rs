//! A storm of panics: every tenth of 100,000 requests panics in Run; each gets 500, every other
//! request 200, and every panicked Context is stopped.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use effe_tests::{count, metric, EventLog};
use tokio::net::TcpStream;

use super::raw::{exchange, get_raw, Outcome};
use super::{fixture, join_all, stop_and_check_pairs};

const STORM: usize = 100_000;
/// Keep-alive connections the storm is sent over.
const STORM_CONNS: usize = 32;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_panics_gets_500_for_each_and_200_for_every_other_request() {
    let log = EventLog::new();
    // A Context for every connection: nothing waits, so only the panics decide the statuses.
    let host = fixture(&log)
        .args(["--max-contexts", &STORM_CONNS.to_string()])
        .args(["--queue-timeout", "10s"])
        .spawn();
    let next = Arc::new(AtomicUsize::new(0));
    let began = Instant::now();
    let clients: Vec<_> = (0..STORM_CONNS)
        .map(|_| {
            let (next, addr) = (next.clone(), host.addr);
            tokio::spawn(async move {
                let (mut ok, mut panicked, mut wrong) = (0usize, 0usize, Vec::new());
                let mut tcp = TcpStream::connect(addr).await.unwrap();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= STORM {
                        return (ok, panicked, wrong);
                    }
                    let panics = i % 10 == 9;
                    let path = if panics { "/panic" } else { "/" };
                    match exchange(&mut tcp, &get_raw(path)).await {
                        Outcome::Answered(a) => {
                            match (panics, a.status) {
                                (true, 500) => panicked += 1,
                                (false, 200) => ok += 1,
                                (_, status) => wrong.push(format!("{path}: {status}")),
                            }
                            if a.closes() {
                                tcp = TcpStream::connect(addr).await.unwrap();
                            }
                        }
                        Outcome::NotTaken(why) | Outcome::Broken(why) => {
                            wrong.push(format!("{path}: {why}"));
                            return (ok, panicked, wrong);
                        }
                    }
                }
            })
        })
        .collect();
    // Bounded: ten times what it takes in a debug build on two CPUs (12 to 16 s).
    let results = join_all(clients, Duration::from_secs(160)).await;
    let took = began.elapsed();
    let (mut ok, mut panicked, mut wrong) = (0, 0, Vec::new());
    for (o, p, w) in results {
        ok += o;
        panicked += p;
        wrong.extend(w);
    }
    eprintln!(
        "panic storm: {STORM} requests over {STORM_CONNS} connections in {took:?} ({:.0}/s): \
         {ok} × 200, {panicked} × 500, {} wrong",
        STORM as f64 / took.as_secs_f64(),
        wrong.len()
    );
    assert!(
        wrong.is_empty(),
        "{} wrong, e.g. {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(10)]
    );
    assert_eq!((ok, panicked), (STORM - STORM / 10, STORM / 10));
    let scrape = host.admin_get("/metrics").await.text();
    assert_eq!(
        metric(&scrape, "effe_run_failures_total{kind=\"panic\"}"),
        (STORM / 10) as f64
    );
    // Still up.
    assert_eq!(host.get("/").await.status, 200);
    let ev = stop_and_check_pairs(host, &log);
    assert!(
        count(&ev, "stop ") > STORM / 10,
        "each panicked Context was stopped"
    );
}
