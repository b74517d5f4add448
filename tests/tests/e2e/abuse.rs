//! Abuse: hundreds of slow clients at once, SIGTERM under load (HTTP/1.1 and HTTP/2), a storm
//! of panics, Starts that begin failing under load, and running out of file descriptors under
//! load. Each test reports what it measured on stderr (`--nocapture` shows it); none asserts a
//! time it took, only what the host did.

mod descriptors;
mod failing_starts;
mod panic_storm;
mod raw;
mod sigterm;
mod slow_clients;

use std::time::{Duration, Instant};

use effe_tests::{events, EventLog, Host, HostCmd, PATIENCE};

/// Raises this process's soft limit on open files to `need` if it is lower (the hosts started
/// after inherit it).
fn raise_fd_limit(need: u64) {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current.is_none_or(|now| now >= need) {
        return;
    }
    let most = limit.maximum.unwrap_or(u64::MAX);
    assert!(
        most >= need,
        "this test needs {need} open files; the hard limit is {most}"
    );
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(need),
            maximum: limit.maximum,
        },
    )
    .expect("raise the soft limit on open files");
}

/// The lifecycle fixture, recording to `log`.
fn fixture(log: &EventLog) -> HostCmd {
    HostCmd::new("fixture-lifecycle").env("EFFE_LIFECYCLE_LOG", &log.path)
}

/// SIGTERM, exit 0, and every Start matched by exactly one Stop of the same Context (failed
/// Starts take a number too, so the numbers may have gaps). Returns the events.
fn stop_and_check_pairs(host: Host, log: &EventLog) -> Vec<String> {
    let (status, stderr) = host.stop();
    assert!(status.success(), "exit {status:?}: {}", tail(&stderr));
    let ev = events(log);
    let numbers = |prefix: &str| {
        let mut n: Vec<&str> = ev.iter().filter_map(|e| e.strip_prefix(prefix)).collect();
        n.sort_unstable();
        n
    };
    let (starts, stops) = (numbers("start "), numbers("stop "));
    assert_eq!(starts.len(), stops.len(), "Starts and Stops differ");
    assert_eq!(starts, stops, "each Context stopped once");
    ev
}

/// The end of a long stderr, for assertion messages.
fn tail(text: &str) -> &str {
    let from = text.len().saturating_sub(4000);
    let from = (from..text.len())
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(0);
    &text[from..]
}

/// Polls `done` every 10 ms until it holds, for at most [`PATIENCE`]: the load counters the
/// tests wait on are their own, with nothing to be woken by.
async fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "never {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Awaits every task, within `bound` in all.
async fn join_all<T>(tasks: Vec<tokio::task::JoinHandle<T>>, bound: Duration) -> Vec<T> {
    tokio::time::timeout(bound, async {
        let mut out = Vec::with_capacity(tasks.len());
        for t in tasks {
            out.push(t.await.expect("a client task panicked"));
        }
        out
    })
    .await
    .unwrap_or_else(|_| panic!("the clients did not finish within {bound:?}"))
}
