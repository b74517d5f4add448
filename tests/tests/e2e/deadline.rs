//! `--timeout`: 504 at the deadline, the overrunning Context quarantined then stopped once,
//! liveness past `--max-quarantined`, and the deadline as the effe reads it.

use bytes::Bytes;
use effe_tests::{count, events, send, wait_events, EventLog, Holds, HostCmd, Proto};
use http_body_util::Full;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_past_its_deadline_gets_504_and_its_context_is_stopped_once_it_returns() {
    let log = EventLog::new();
    let holds = Holds::new().await;
    let host = HostCmd::new("fixture-lifecycle")
        .env("EFFE_LIFECYCLE_LOG", &log.path)
        .args([
            "--timeout",
            "200ms",
            "--min-contexts",
            "1",
            "--max-contexts",
            "2",
        ])
        .spawn();
    let path = format!("/hold?{}", holds.port());
    let req = http::Request::get(&path)
        .header("x-request-id", "slow-1")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let slow = tokio::spawn(send(host.addr, Proto::Http1, req));
    // The Run is held for as long as the test likes: the client gets its answer at the deadline.
    let held = holds.next().await;
    assert_eq!(held.who, "ctx 1");
    let reply = slow.await.unwrap();
    assert_eq!(reply.status, 504);
    assert_eq!(reply.headers["x-request-id"], "slow-1");
    host.wait_stderr(|s| s.contains("request_id=slow-1 run failed: timed out after 200ms"));

    // Quarantined: Context 1 is not reused; its slot stays taken, so the next request gets a
    // new Context (max 2), and Context 1 is not stopped while its Run goes on.
    let scrape = host.admin_get("/metrics").await.text();
    assert_eq!(
        effe_tests::metric(&scrape, "effe_contexts{state=\"quarantined\"}"),
        1.0
    );
    assert_eq!(
        effe_tests::metric(&scrape, "effe_run_failures_total{kind=\"timeout\"}"),
        1.0
    );
    let reply = host.get("/").await;
    assert_eq!((reply.status, reply.text().as_str()), (200, "ctx 2\n"));
    assert_eq!(count(&events(&log), "stop "), 0);

    // The Run returns: Context 1 is stopped, once, and never served again.
    held.release().await;
    wait_events(&log, |ev| ev.contains(&"stop 1".to_owned()));
    let reply = host.get("/").await;
    assert_eq!((reply.status, reply.text().as_str()), (200, "ctx 2\n"));
    let scrape = host.admin_get("/metrics").await.text();
    assert_eq!(
        effe_tests::metric(&scrape, "effe_contexts{state=\"quarantined\"}"),
        0.0
    );

    let (status, stderr) = host.stop();
    assert!(status.success(), "{stderr}");
    let ev = events(&log);
    assert_eq!(count(&ev, "start "), count(&ev, "stop "), "{ev:?}");
    assert_eq!(ev.iter().filter(|e| *e == "stop 1").count(), 1, "{ev:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liveness_fails_past_max_quarantined_and_recovers() {
    let log = EventLog::new();
    let holds = Holds::new().await;
    let host = HostCmd::new("fixture-lifecycle")
        .env("EFFE_LIFECYCLE_LOG", &log.path)
        .args(["--timeout", "100ms", "--max-quarantined", "0"])
        .spawn();
    assert_eq!(host.admin_get("/livez").await.status, 200);
    let path = format!("/hold?{}", holds.port());
    let slow = tokio::spawn(send(host.addr, Proto::Http1, effe_tests::get(&path)));
    let held = holds.next().await;
    assert_eq!(slow.await.unwrap().status, 504);
    let probe = host.admin_get("/livez").await;
    assert_eq!(probe.status, 503);
    assert_eq!(
        probe.text(),
        "not live: 1 Contexts quarantined (Runs past their deadline), more than \
         --max-quarantined 0\n"
    );
    held.release().await;
    wait_events(&log, |ev| count(ev, "stop ") == 1);
    assert_eq!(host.admin_get("/livez").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_effe_reads_its_deadline_and_a_client_cannot_set_it() {
    let host = HostCmd::new("fixture-lifecycle")
        .args(["--timeout", "5s"])
        .spawn();
    let left: u64 = host.get("/deadline").await.text().parse().unwrap();
    assert!((1..=5000).contains(&left), "{left} ms left");
    drop(host);

    let host = HostCmd::new("fixture-lifecycle")
        .args(["--timeout", "0"])
        .spawn();
    let forged = http::Request::get("/deadline")
        .header("effe-deadline-ms", "4102444800000")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send(host.addr, Proto::Http2, forged).await.text(), "none");
}
