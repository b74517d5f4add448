//! The Context pool as an effe sees it: Init once, Start/Stop pairs, growth, the queue,
//! shrinking when idle, panics, and shutdown.

use std::sync::Arc;

use effe_tests::{count, events, send, wait_events, EventLog, Holds, Host, HostCmd, Proto};

fn fixture() -> (HostCmd, EventLog) {
    let log = EventLog::new();
    let cmd = HostCmd::new("fixture-lifecycle").env("EFFE_LIFECYCLE_LOG", &log.path);
    (cmd, log)
}

/// SIGTERM, exit 0, and every Start matched by one Stop (each Context number once).
fn stop_and_check_pairs(host: Host, log: &std::path::Path) -> Vec<String> {
    let (status, stderr) = host.stop();
    assert!(status.success(), "exit {status:?}: {stderr}");
    let ev = events(log);
    assert_eq!(count(&ev, "init"), 1, "{ev:?}");
    assert_eq!(ev[0], "init", "{ev:?}");
    let starts = count(&ev, "start ");
    assert_eq!(starts, count(&ev, "stop "), "{ev:?}");
    for n in 1..=starts {
        assert_eq!(
            ev.iter().filter(|e| **e == format!("stop {n}")).count(),
            1,
            "{ev:?}"
        );
    }
    ev
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_contexts_start_before_listening_and_stop_at_sigterm() {
    let (cmd, log) = fixture();
    let host = cmd
        .args(["--min-contexts", "3", "--max-contexts", "4"])
        .spawn();
    // Ready means the minimum is up, before any request.
    assert_eq!(events(&log), ["init", "start 1", "start 2", "start 3"]);
    assert_eq!(host.get("/").await.status, 200);
    let ev = stop_and_check_pairs(host, &log);
    assert_eq!(count(&ev, "start "), 3);
}

/// The most Contexts alive at once, replaying the lifecycle log in order.
fn max_alive(events: &[String]) -> usize {
    let mut alive = 0usize;
    let mut max = 0;
    for e in events {
        if e.starts_with("start ") {
            alive += 1;
            max = max.max(alive);
        } else if e.starts_with("stop ") {
            alive -= 1;
        }
    }
    max
}

async fn hold_req(host: &Host, holds: &Holds) -> effe_tests::Reply {
    let path = format!("/hold?{}", holds.port());
    send(host.addr, Proto::Http1, effe_tests::get(&path)).await
}

/// Starts `n` requests that each hold their Context inside Run, and waits until all `n` are
/// in Run (or, past the pool's size, until the ones that got a Context are).
fn hold_many(
    host: &Arc<Host>,
    holds: &Arc<Holds>,
    n: usize,
) -> Vec<tokio::task::JoinHandle<effe_tests::Reply>> {
    (0..n)
        .map(|_| {
            let (host, holds) = (host.clone(), holds.clone());
            tokio::spawn(async move { hold_req(&host, &holds).await })
        })
        .collect()
}

async fn statuses(tasks: Vec<tokio::task::JoinHandle<effe_tests::Reply>>) -> Vec<u16> {
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap().status);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_slow_requests_grow_the_pool_up_to_max_then_it_shrinks() {
    let (cmd, log) = fixture();
    let host = cmd
        .args(["--min-contexts", "1", "--max-contexts", "3"])
        .args(["--idle-timeout", "300ms", "--queue-timeout", "30s"])
        .spawn();
    let (host, holds) = (Arc::new(host), Arc::new(Holds::new().await));
    // Three at once, all inside Run together: three Contexts.
    let tasks = hold_many(&host, &holds, 3);
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(holds.next().await);
    }
    let mut who: Vec<String> = held.iter().map(|h| h.who.clone()).collect();
    who.sort();
    who.dedup();
    assert_eq!(who.len(), 3, "each request has its own Context: {who:?}");
    assert_eq!(count(&events(&log), "start "), 3);
    for h in held {
        h.release().await;
    }
    assert_eq!(statuses(tasks).await, [200; 3]);

    // Idle past the timeout: back down to the minimum.
    wait_events(&log, |ev| count(ev, "stop ") == 2);

    // Six at once with max 3: three in Run, three queued behind them, never past three alive.
    let tasks = hold_many(&host, &holds, 6);
    for _ in 0..2 {
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(holds.next().await);
        }
        for h in held {
            h.release().await;
        }
    }
    assert_eq!(statuses(tasks).await, [200; 6]);
    let ev = events(&log);
    assert!(count(&ev, "start ") >= 5, "it grew again: {ev:?}");
    assert_eq!(max_alive(&ev), 3, "{ev:?}");

    let host = Arc::into_inner(host).unwrap();
    stop_and_check_pairs(host, &log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_pool_queues_then_answers_503_with_retry_after() {
    let (cmd, log) = fixture();
    let host = cmd
        .args(["--min-contexts", "2", "--max-contexts", "2"])
        .args(["--queue-timeout", "200ms"])
        .spawn();
    let (host, holds) = (Arc::new(host), Arc::new(Holds::new().await));
    let tasks = hold_many(&host, &holds, 2);
    let held = [holds.next().await, holds.next().await];
    // Both Contexts are in Run for as long as the test says: the third request times out.
    let busy = host.get("/").await;
    assert_eq!(busy.status, 503);
    assert_eq!(busy.headers["retry-after"], "1");
    for h in held {
        h.release().await;
    }
    assert_eq!(statuses(tasks).await, [200, 200]);
    // Nothing leaked: the pool serves again.
    assert_eq!(host.get("/").await.status, 200);
    let host = Arc::into_inner(host).unwrap();
    let ev = stop_and_check_pairs(host, &log);
    assert_eq!(count(&ev, "start "), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_context_is_stopped_and_replaced() {
    let (cmd, log) = fixture();
    let host = cmd.args(["--min-contexts", "1"]).spawn();
    let reply = host.get("/panic").await;
    assert_eq!(reply.status, 500);
    assert!(reply.headers.contains_key("x-request-id"));
    // Context 1 is stopped, context 2 started in its place (the minimum is kept).
    wait_events(&log, |ev| {
        ev.contains(&"stop 1".into()) && ev.contains(&"start 2".into())
    });
    let reply = host.get("/").await;
    assert_eq!((reply.status, reply.text().as_str()), (200, "ctx 2\n"));
    let stderr = host.stderr();
    // One record, with the place of the panic; not also Rust's own multi-line message (the
    // effe has its own std and panic hook).
    assert!(
        stderr.contains(
            "run panicked: fixture run panic in ctx 1 (at plugins/fixture-lifecycle/src/lib.rs:"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked at"), "{stderr}");
    stop_and_check_pairs(host, &log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_start_answers_503_and_is_logged() {
    let (cmd, _log) = fixture();
    let host = cmd
        .env("FIXTURE_START", "error")
        .args(["--min-contexts", "0"])
        .spawn();
    let reply = host.get("/").await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.headers["retry-after"], "1");
    host.wait_stderr(|s| s.contains("fixture start error"));
    let (status, _) = host.stop();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_run_does_not_delay_other_contexts() {
    let (cmd, _log) = fixture();
    let host = Arc::new(cmd.args(["--min-contexts", "2"]).spawn());
    let holds = Arc::new(Holds::new().await);
    let slow = hold_many(&host, &holds, 1);
    let held = holds.next().await;
    // The fast request completes while the slow one is still inside Run.
    assert_eq!(host.get("/").await.status, 200);
    held.release().await;
    assert_eq!(statuses(slow).await, [200]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_requests_finish() {
    let (cmd, log) = fixture();
    let host = Arc::new(cmd.args(["--min-contexts", "2"]).spawn());
    let holds = Arc::new(Holds::new().await);
    let slow = hold_many(&host, &holds, 1);
    let held = holds.next().await;
    host.sigterm();
    host.wait_stderr(|s| s.contains("shutting down"));
    held.release().await;
    assert_eq!(statuses(slow).await, [200]);
    let host = Arc::into_inner(host).unwrap();
    let (status, stderr) = host.wait();
    assert!(status.success(), "{stderr}");
    let ev = events(&log);
    assert_eq!(count(&ev, "start "), count(&ev, "stop "), "{ev:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_several_h2_streams_in_flight_finish() {
    let (cmd, log) = fixture();
    let host = cmd.args(["--min-contexts", "3"]).spawn();
    let holds = Holds::new().await;
    // One HTTP/2 connection, three streams inside Run when the signal comes.
    let tcp = tokio::net::TcpStream::connect(host.addr).await.unwrap();
    let (h2, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let streams: Vec<_> = (0..3)
        .map(|_| {
            let mut h2 = h2.clone();
            let req = http::Request::get(format!("http://{}/hold?{}", host.addr, holds.port()))
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap();
            tokio::spawn(
                async move { effe_tests::reply(h2.send_request(req).await.unwrap()).await },
            )
        })
        .collect();
    let held = [holds.next().await, holds.next().await, holds.next().await];
    host.sigterm();
    host.wait_stderr(|s| s.contains("shutting down"));
    for h in held {
        h.release().await;
    }
    for s in streams {
        assert_eq!(s.await.unwrap().status, 200);
    }
    stop_and_check_pairs(host, &log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_mid_run_gives_its_context_back() {
    let (cmd, log) = fixture();
    // Thread mode (the fixture's default): Run holds a blocking thread and the only Context.
    let host = cmd
        .args(["--min-contexts", "1", "--max-contexts", "1"])
        .args(["--queue-timeout", "30s"])
        .spawn();
    let (host, holds) = (Arc::new(host), Arc::new(Holds::new().await));
    let gone = hold_many(&host, &holds, 1);
    let held = holds.next().await;
    gone.into_iter().for_each(|t| t.abort());
    // The client is gone; Run returns later, and the Context serves the next request.
    held.release().await;
    let reply = host.get("/").await;
    assert_eq!((reply.status, reply.text().as_str()), (200, "ctx 1\n"));
    let host = Arc::into_inner(host).unwrap();
    let ev = stop_and_check_pairs(host, &log);
    assert_eq!(count(&ev, "start "), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stops_get_their_own_grace_period_after_the_drain_deadline() {
    let (cmd, log) = fixture();
    // Stops take 500 ms; a client keeps a request open (3 of 100 body bytes) past the drain
    // deadline, so that the Contexts are stopped only after it.
    let host = cmd
        .env("FIXTURE_STOP_MS", "500")
        .args(["--min-contexts", "2", "--shutdown-timeout", "1s"])
        .env("EFFE_LOG", "info,effe_host::server=debug")
        .spawn();
    let mut slow = tokio::net::TcpStream::connect(host.addr).await.unwrap();
    let me = slow.local_addr().unwrap().to_string();
    use tokio::io::AsyncWriteExt;
    slow.write_all(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nabc")
        .await
        .unwrap();
    // Accepted, so the drain waits for it until the deadline.
    host.wait_stderr(|s| s.contains(&format!("accepted peer={me}")));
    let ev = stop_and_check_pairs(host, &log);
    assert_eq!(count(&ev, "stop "), 2, "{ev:?}");
    drop(slow);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contexts_not_stopped_by_the_deadline_make_a_non_zero_exit_that_says_why() {
    let (cmd, _log) = fixture();
    let holds = Holds::new().await;
    // One Context in Run, one Start that never returns, at the deadline.
    let host = cmd
        .env("FIXTURE_START_HOLD", holds.port().to_string())
        .args(["--min-contexts", "0", "--max-contexts", "2"])
        .args(["--queue-timeout", "100ms", "--shutdown-timeout", "200ms"])
        .args(["--stop-timeout", "200ms"])
        .start();
    let mut host = host;
    host.wait_listening();
    // The first request's Start is released, then its Run is held.
    let path = format!("/hold?{}", holds.port());
    let in_run = tokio::spawn(send(host.addr, Proto::Http1, effe_tests::get(&path)));
    holds.next().await.release().await;
    let run = holds.next().await;
    assert!(run.who.starts_with("ctx "), "{}", run.who);
    // The second request's Start hangs: the request gets 503 at its queue timeout.
    assert_eq!(host.get("/").await.status, 503);
    let start = holds.next().await;
    assert!(start.who.starts_with("start "), "{}", start.who);
    let (status, stderr) = host.stop();
    assert_eq!(status.code(), Some(16), "{stderr}");
    assert!(
        stderr.contains("2 Context(s) not stopped by the deadline (1 still in Run, 1 still starting, 0 still stopping)"),
        "{stderr}"
    );
    drop((run, start, in_run));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sighup_during_init_does_not_kill_the_host() {
    let holds = Holds::new().await;
    let (cmd, log) = fixture();
    let mut host = cmd
        .env("FIXTURE_INIT_HOLD", holds.port().to_string())
        .start();
    let init = holds.next().await;
    assert_eq!(init.who, "init");
    // A fatal signal is acted on at once: before this change the host died here, inside Init.
    host.signal("HUP");
    init.release().await;
    host.wait_listening();
    // The request was kept, and handled once the host was up.
    host.wait_stderr(|s| s.contains("SIGHUP: no TLS certificate to reload"));
    assert_eq!(host.get("/").await.status, 200);
    stop_and_check_pairs(host, &log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_do_not_hold_up_shutdown() {
    let host = HostCmd::new("hello")
        .args(["--shutdown-timeout", "20s"])
        .spawn();
    // One idle connection of each protocol, open when the signal comes.
    let tcp = tokio::net::TcpStream::connect(host.addr).await.unwrap();
    let (mut h1, conn1) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    let closed1 = tokio::spawn(conn1);
    assert_eq!(
        h1.send_request(effe_tests::get_h1("/"))
            .await
            .unwrap()
            .status(),
        200
    );
    let tcp = tokio::net::TcpStream::connect(host.addr).await.unwrap();
    let (mut h2, conn2) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    let closed2 = tokio::spawn(conn2);
    let req = http::Request::get(format!("http://{}/", host.addr))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    assert_eq!(h2.send_request(req).await.unwrap().status(), 200);

    let (status, stderr) = host.stop();
    assert!(status.success(), "{stderr}");
    assert!(
        !stderr.contains("still open"),
        "idle connections were not closed: {stderr}"
    );
    // The host closed both connections (HTTP/2 with a GOAWAY).
    assert!(closed1.await.unwrap().is_ok());
    assert!(closed2.await.unwrap().is_ok());
}
