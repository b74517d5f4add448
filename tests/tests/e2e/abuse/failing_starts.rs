//! Starts that begin failing under load: 503 with Retry-After for the requests that needed a
//! new Context, never a hang or a 500; when Starts work again the host recovers by itself.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use effe_tests::{metric, EventLog, PATIENCE};
use tokio::net::TcpStream;

use super::raw::{exchange, get_raw, Outcome};
use super::{fixture, join_all, stop_and_check_pairs, wait_until};

/// Which part of the test a response belongs to.
const BEFORE: usize = 0;
const FAILING: usize = 1;
const AFTER: usize = 2;
/// The test's `--queue-timeout` (2 s), plus slack: any later answer is a hang.
const ANSWER_WITHIN: Duration = Duration::from_secs(2 + 3);

#[derive(Default)]
struct Phases {
    now: AtomicUsize,
    /// Per phase: 200s, 500s to `/panic`, 503s.
    ok: [AtomicUsize; 3],
    panicked: [AtomicUsize; 3],
    unavailable: [AtomicUsize; 3],
    /// 200s and 500s in a row, lately.
    served_in_a_row: AtomicUsize,
    wrong: Mutex<Vec<String>>,
    stop: AtomicBool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_that_fail_under_load_give_503_then_the_host_recovers_by_itself() {
    let log = EventLog::new();
    let cmd = fixture(&log);
    let fail_file = cmd.path("starts-fail");
    // Every fifth request panics: its Context is stopped, and the pool needs a new one.
    let host = cmd
        .env("FIXTURE_START_FAIL_FILE", &fail_file)
        .args(["--min-contexts", "1", "--max-contexts", "4"])
        .args(["--queue-timeout", "2s"])
        .spawn();
    let phases = Arc::new(Phases::default());
    let next = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (phases, next, addr) = (phases.clone(), next.clone(), host.addr);
            tokio::spawn(async move {
                let mut tcp = TcpStream::connect(addr).await.unwrap();
                while !phases.stop.load(Ordering::Relaxed) {
                    let panics = next.fetch_add(1, Ordering::Relaxed) % 5 == 4;
                    let path = if panics { "/panic" } else { "/" };
                    // Never a hang: every answer within the queue timeout, and some slack.
                    let answer =
                        tokio::time::timeout(ANSWER_WITHIN, exchange(&mut tcp, &get_raw(path)))
                            .await
                            .unwrap_or_else(|_| {
                                Outcome::Broken(format!("no answer within {ANSWER_WITHIN:?}"))
                            });
                    // The phase the answer came in (a request sent just before Starts began
                    // to fail may be answered 503).
                    let phase = phases.now.load(Ordering::SeqCst);
                    let answer = match answer {
                        Outcome::Answered(a) => a,
                        Outcome::NotTaken(why) | Outcome::Broken(why) => {
                            phases.wrong.lock().unwrap().push(format!("{path}: {why}"));
                            return;
                        }
                    };
                    let counter = match (panics, answer.status) {
                        (false, 200) => &phases.ok,
                        (true, 500) => &phases.panicked,
                        (_, 503) if answer.header("retry-after") == Some("1") => {
                            &phases.unavailable
                        }
                        (_, status) => {
                            let head = answer.head.clone();
                            let what = format!("{path}: {status} in phase {phase}: {head}");
                            phases.wrong.lock().unwrap().push(what);
                            return;
                        }
                    };
                    counter[phase].fetch_add(1, Ordering::Relaxed);
                    if answer.status == 503 {
                        phases.served_in_a_row.store(0, Ordering::Relaxed);
                    } else {
                        phases.served_in_a_row.fetch_add(1, Ordering::Relaxed);
                    }
                    if answer.closes() {
                        tcp = TcpStream::connect(addr).await.unwrap();
                    }
                }
            })
        })
        .collect();
    let sum = |c: &[AtomicUsize; 3]| c.iter().map(|n| n.load(Ordering::Relaxed)).sum::<usize>();
    let wrong = || !phases.wrong.lock().unwrap().is_empty();
    wait_until("200 answers", || sum(&phases.ok) >= 200 || wrong()).await;

    // Starts fail from now on: the panicked Contexts cannot be replaced.
    std::fs::write(&fail_file, b"").unwrap();
    phases.now.store(FAILING, Ordering::SeqCst);
    // Starts fail for a second at least (backoffs of 100, 200, 400 ms, then longer), and four
    // times at least.
    let failing = Instant::now();
    let deadline = failing + PATIENCE;
    while metric(
        &host.admin_get("/metrics").await.text(),
        "effe_context_start_failures_total",
    ) < 4.0
        && !wrong()
    {
        assert!(Instant::now() < deadline, "Starts never failed four times");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep_until((failing + Duration::from_secs(1)).into()).await;

    // They succeed again: the host recovers on its own (after its backoff).
    std::fs::remove_file(&fail_file).unwrap();
    phases.served_in_a_row.store(0, Ordering::Relaxed);
    phases.now.store(AFTER, Ordering::SeqCst);
    let removed = Instant::now();
    wait_until("200 answers in a row", || {
        phases.served_in_a_row.load(Ordering::Relaxed) >= 200 || wrong()
    })
    .await;
    let recovered = removed.elapsed();
    phases.stop.store(true, Ordering::Relaxed);
    join_all(clients, PATIENCE).await;

    let scrape = host.admin_get("/metrics").await.text();
    let load = |c: &[AtomicUsize; 3]| c.each_ref().map(|n| n.load(Ordering::Relaxed));
    eprintln!(
        "failing Starts: 200s {:?}, panics' 500s {:?}, 503s {:?} (before, failing, after); \
         {} failed Starts; 200 served in a row {recovered:?} after Starts worked again",
        load(&phases.ok),
        load(&phases.panicked),
        load(&phases.unavailable),
        metric(&scrape, "effe_context_start_failures_total"),
    );
    let wrong = phases.wrong.lock().unwrap().clone();
    assert!(wrong.is_empty(), "{wrong:#?}");
    assert_eq!(
        phases.unavailable[BEFORE].load(Ordering::Relaxed),
        0,
        "503 before any Start failed"
    );
    // Every 503 was for want of a Context that could not be started, none a queue timeout.
    assert_eq!(
        metric(&scrape, "effe_unavailable_total{reason=\"start_failed\"}"),
        sum(&phases.unavailable) as f64
    );
    assert!(phases.unavailable[FAILING].load(Ordering::Relaxed) > 0);
    stop_and_check_pairs(host, &log);
}
