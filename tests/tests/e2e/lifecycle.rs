//! The Context pool as an effe sees it: Init once, Start/Stop pairs, growth, the queue,
//! shrinking when idle, panics, and shutdown.

use std::time::Duration;

use effe_tests::{count, events, send, wait_events, EventLog, Host, HostCmd, Proto};

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

async fn sleep_req(host: &Host, ms: u64) -> effe_tests::Reply {
    send(
        host.addr,
        Proto::Http1,
        effe_tests::get(&format!("/sleep?{ms}")),
    )
    .await
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_slow_requests_grow_the_pool_up_to_max_then_it_shrinks() {
    let (cmd, log) = fixture();
    let host = cmd
        .args(["--min-contexts", "1", "--max-contexts", "3"])
        .args(["--idle-timeout", "300ms", "--queue-timeout", "10s"])
        .spawn();
    let host = std::sync::Arc::new(host);
    // Three at once, each inside Run for a second: three Contexts.
    let replies = futures(&host, 3, 1000).await;
    assert!(replies.iter().all(|r| r.status == 200));
    assert_eq!(count(&events(&log), "start "), 3);
    let mut served: Vec<String> = replies.iter().map(|r| r.text()).collect();
    served.sort();
    served.dedup();
    assert_eq!(
        served.len(),
        3,
        "each slow request had its own Context: {served:?}"
    );

    // Idle past the timeout: back down to the minimum.
    wait_events(&log, |ev| count(ev, "stop ") == 2);

    // Six at once with max 3: the pool grows again, never past three alive.
    let replies = futures(&host, 6, 300).await;
    assert!(replies.iter().all(|r| r.status == 200));
    let ev = events(&log);
    assert!(count(&ev, "start ") >= 5, "it grew again: {ev:?}");
    assert_eq!(max_alive(&ev), 3, "{ev:?}");

    let host = std::sync::Arc::into_inner(host).unwrap();
    stop_and_check_pairs(host, &log);
}

async fn futures(host: &std::sync::Arc<Host>, n: usize, ms: u64) -> Vec<effe_tests::Reply> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let host = host.clone();
            tokio::spawn(async move { sleep_req(&host, ms).await })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_pool_queues_then_answers_503_with_retry_after() {
    let (cmd, log) = fixture();
    let host = cmd
        .args([
            "--min-contexts",
            "2",
            "--max-contexts",
            "2",
            "--queue-timeout",
            "200ms",
        ])
        .spawn();
    let host = std::sync::Arc::new(host);
    let replies = futures(&host, 3, 1500).await;
    let mut statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
    statuses.sort();
    assert_eq!(statuses, [200, 200, 503]);
    let busy = replies.iter().find(|r| r.status == 503).unwrap();
    assert_eq!(busy.headers["retry-after"], "1");
    // Nothing leaked: the pool serves again.
    assert_eq!(host.get("/").await.status, 200);
    let host = std::sync::Arc::into_inner(host).unwrap();
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
    assert!(host
        .stderr()
        .contains("run panicked: fixture run panic in ctx 1"));
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
    let (cmd, log) = fixture();
    let host = std::sync::Arc::new(cmd.args(["--min-contexts", "2"]).spawn());
    let slow = {
        let host = host.clone();
        tokio::spawn(async move { sleep_req(&host, 2000).await })
    };
    wait_events(&log, |ev| ev.iter().any(|e| e.starts_with("sleep ")));
    // The fast request completes while the slow one is still inside Run.
    let fast = tokio::time::timeout(Duration::from_secs(30), host.get("/"))
        .await
        .unwrap();
    assert_eq!(fast.status, 200);
    assert!(
        !slow.is_finished(),
        "the fast request waited for the blocked one"
    );
    assert_eq!(slow.await.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_requests_finish() {
    let (cmd, log) = fixture();
    let host = std::sync::Arc::new(cmd.spawn());
    let slow = {
        let host = host.clone();
        tokio::spawn(async move { sleep_req(&host, 700).await })
    };
    wait_events(&log, |ev| ev.iter().any(|e| e.starts_with("sleep ")));
    host.sigterm();
    assert_eq!(slow.await.unwrap().status, 200);
    let host = std::sync::Arc::into_inner(host).unwrap();
    let (status, stderr) = host.wait();
    assert!(status.success(), "{stderr}");
    let ev = events(&log);
    assert_eq!(count(&ev, "start "), count(&ev, "stop "), "{ev:?}");
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
        h1.send_request(effe_tests::get("/"))
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
