//! The admin listener: probes that follow boot, drain and a stuck network thread, and metrics
//! that move with what the host does.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use effe_tests::{send, EventLog, Holds, Host, HostCmd, Proto, Reply};

/// A port that was free a moment ago, for an admin listener that must be known before the host
/// says it listens (during boot).
fn free_port() -> SocketAddr {
    let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    socket.local_addr().unwrap()
}

async fn probe(admin: SocketAddr, path: &str) -> (u16, String) {
    let reply = send(admin, Proto::Http1, effe_tests::get(path)).await;
    (reply.status, reply.text())
}

async fn scrape(host: &Host) -> String {
    let reply = host.admin_get("/metrics").await;
    assert_eq!(reply.status, 200);
    assert!(
        reply.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text"),
        "{:?}",
        reply.headers
    );
    reply.text()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_boot_and_drain_and_liveness_holds() {
    let holds = Holds::new().await;
    let admin = free_port();
    let log = EventLog::new();
    let mut host = HostCmd::new("fixture-lifecycle")
        .env("EFFE_LIFECYCLE_LOG", &log.path)
        .env("FIXTURE_START_HOLD", holds.port().to_string())
        .args(["--admin-listen", &admin.to_string(), "--min-contexts", "1"])
        .start();
    // The boot Start is held: not ready yet, but alive.
    let start = holds.next().await;
    assert_eq!(
        probe(admin, "/readyz").await,
        (503, "not ready: starting\n".into())
    );
    assert_eq!(probe(admin, "/livez").await, (200, "ok\n".into()));
    start.release().await;
    host.wait_listening();
    assert_eq!(host.admin, Some(admin));
    assert_eq!(probe(admin, "/readyz").await, (200, "ready\n".into()));
    assert_eq!(probe(admin, "/healthz").await.0, 200);
    assert_eq!(probe(admin, "/nope").await.0, 404);

    // A request in Run when the signal comes: draining, so not ready; still alive.
    let path = format!("/hold?{}", holds.port());
    let held = tokio::spawn(send(host.addr, Proto::Http1, effe_tests::get(&path)));
    let run = holds.next().await;
    host.sigterm();
    host.wait_stderr(|s| s.contains("shutting down"));
    assert_eq!(
        probe(admin, "/readyz").await,
        (503, "not ready: draining\n".into())
    );
    assert_eq!(probe(admin, "/livez").await.0, 200);
    run.release().await;
    assert_eq!(held.await.unwrap().status, 200);
    let (status, stderr) = host.wait();
    assert!(status.success(), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_while_starts_fail_with_no_context_alive() {
    let host = HostCmd::new("fixture-lifecycle")
        .env("FIXTURE_START", "error")
        .args(["--min-contexts", "0"])
        .spawn();
    assert_eq!(
        host.admin_get("/readyz").await.status,
        200,
        "nothing failed yet"
    );
    assert_eq!(host.get("/").await.status, 503);
    let (status, text) = probe(host.admin.unwrap(), "/readyz").await;
    assert_eq!(
        (status, text.as_str()),
        (
            503,
            "not ready: Starts are failing and no Context is alive\n"
        )
    );
    let metrics = scrape(&host).await;
    assert_eq!(
        effe_tests::metric(&metrics, "effe_context_start_failures_total"),
        1.0
    );
    assert_eq!(
        effe_tests::metric(&metrics, "effe_unavailable_total{reason=\"start_failed\"}"),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_requests_errors_panics_starts_and_503s() {
    let holds = Holds::new().await;
    let host = HostCmd::new("fixture-lifecycle")
        .args(["--min-contexts", "1", "--max-contexts", "1"])
        .args(["--queue-timeout", "100ms"])
        .spawn();
    let before = scrape(&host).await;
    assert_eq!(
        effe_tests::metric(&before, "effe_context_starts_total"),
        1.0
    );
    assert_eq!(
        effe_tests::metric(&before, "effe_contexts{state=\"idle\"}"),
        1.0
    );
    assert!(effe_tests::metric(&before, "effe_init_duration_seconds") > 0.0);
    assert!(before.contains("effe_build_info{host_version=\"0.1.0\",effe=\"fixture-lifecycle\",effe_version=\"0.1.0\",effe_abi_version=\"0.1.2\"} 1"), "{before}");

    for _ in 0..3 {
        assert_eq!(host.get("/").await.status, 200);
    }
    assert_eq!(
        send(host.addr, Proto::Http2, effe_tests::get("/"))
            .await
            .status,
        200
    );
    assert_eq!(host.get("/error").await.status, 500);
    assert_eq!(host.get("/panic").await.status, 500);
    // The only Context in Run: the next request times out in the queue.
    let path = format!("/hold?{}", holds.port());
    let held = tokio::spawn(send(host.addr, Proto::Http1, effe_tests::get(&path)));
    let run = holds.next().await;
    let during = scrape(&host).await;
    assert_eq!(
        effe_tests::metric(&during, "effe_contexts{state=\"busy\"}"),
        1.0
    );
    assert_eq!(effe_tests::metric(&during, "effe_requests_in_flight"), 1.0);
    assert_eq!(host.get("/").await.status, 503);
    run.release().await;
    let reply: Reply = held.await.unwrap();
    assert_eq!(reply.status, 200);

    let after = scrape(&host).await;
    let h1 = |class: &str| {
        effe_tests::metric(
            &after,
            &format!("effe_requests_total{{protocol=\"http/1.1\",code=\"{class}\"}}"),
        )
    };
    assert_eq!(h1("2xx"), 4.0, "three GETs and the held one");
    assert_eq!(h1("5xx"), 3.0, "the error, the panic and the 503");
    assert_eq!(
        effe_tests::metric(&after, "effe_requests_total{protocol=\"h2\",code=\"2xx\"}"),
        1.0
    );
    assert_eq!(
        effe_tests::metric(&after, "effe_request_duration_seconds_count"),
        8.0
    );
    assert_eq!(
        effe_tests::metric(&after, "effe_run_failures_total{kind=\"error\"}"),
        1.0
    );
    assert_eq!(
        effe_tests::metric(&after, "effe_run_failures_total{kind=\"panic\"}"),
        1.0
    );
    // The panicking Context was stopped and replaced.
    assert_eq!(effe_tests::metric(&after, "effe_context_starts_total"), 2.0);
    assert_eq!(effe_tests::metric(&after, "effe_context_stops_total"), 1.0);
    assert_eq!(
        effe_tests::metric(&after, "effe_context_start_duration_seconds_count"),
        2.0
    );
    assert_eq!(
        effe_tests::metric(&after, "effe_unavailable_total{reason=\"queue_timeout\"}"),
        1.0
    );
    assert!(effe_tests::metric(&after, "effe_context_wait_seconds_count") >= 1.0);
    assert_eq!(effe_tests::metric(&after, "effe_requests_in_flight"), 0.0);
    let (status, stderr) = host.stop();
    assert!(status.success(), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_connections_are_counted_by_protocol() {
    let host = HostCmd::new("hello").spawn();
    let tcp = tokio::net::TcpStream::connect(host.addr).await.unwrap();
    let (mut h2, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    let closed = tokio::spawn(conn);
    let req = http::Request::get(format!("http://{}/", host.addr))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    assert_eq!(h2.send_request(req).await.unwrap().status(), 200);
    let open = scrape(&host).await;
    let series = "effe_connections_open{protocol=\"h2\",tls=\"false\"}";
    assert_eq!(effe_tests::metric(&open, series), 1.0);
    drop(h2);
    let _ = closed.await;
    // The host notices the close on its own time: bounded polling, no fixed sleep.
    let deadline = Instant::now() + effe_tests::PATIENCE;
    while effe_tests::metric(&scrape(&host).await, series) != 0.0 {
        assert!(
            Instant::now() < deadline,
            "the closed connection is still counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_thread_stuck_in_an_inline_run_fails_liveness() {
    let holds = Holds::new().await;
    let host = HostCmd::new("fixture-lifecycle")
        .args([
            "--threads",
            "2",
            "--call-mode",
            "inline",
            "--min-contexts",
            "2",
        ])
        .spawn();
    // Find a connection served by the second network thread (not the one the admin listener
    // shares), then block that thread inside Run.
    let mut tries = 0;
    let mut sender = loop {
        tries += 1;
        assert!(tries < 200, "no connection reached effe-net-1");
        let tcp = tokio::net::TcpStream::connect(host.addr).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .unwrap();
        tokio::spawn(conn);
        sender.ready().await.unwrap();
        let reply = sender.send_request(request("/thread")).await.unwrap();
        let reply = effe_tests::reply(reply).await;
        if reply.text() == "effe-net-1" {
            break sender;
        }
    };
    let path = format!("/hold?{}", holds.port());
    let mut blocked = tokio::spawn(async move {
        sender.ready().await?;
        sender
            .send_request(request(&path))
            .await
            .map(|r| r.status())
    });
    // The Run is in progress (inline, on effe-net-1) once it checks in.
    let held = tokio::select! {
        held = holds.next() => held,
        answered = &mut blocked => panic!("/hold answered {answered:?}:\n{}", host.stderr()),
    };
    assert_eq!(host.admin_get("/livez").await.status, 200);
    // Silent past the limit (10 s): not live. Bounded polling: liveness is a matter of time.
    let deadline = Instant::now() + effe_tests::PATIENCE;
    let text = loop {
        let (status, text) = probe(host.admin.unwrap(), "/livez").await;
        if status == 503 {
            break text;
        }
        assert!(Instant::now() < deadline, "still live:\n{}", host.stderr());
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        text.starts_with("not live: network thread 1 has not run for"),
        "{text}"
    );
    held.release().await;
    let _ = blocked.await;
}

fn request(path: &str) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    http::Request::get(path)
        .header(http::header::HOST, "localhost")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap()
}

/// `effe-host --probe ARGS`: its exit code and what it printed (stdout, then stderr).
fn probe_mode(args: &[&str]) -> (Option<i32>, String) {
    let out = std::process::Command::new(effe_tests::host_bin())
        .arg("--probe")
        .args(args)
        .env_remove("EFFE_PLUGIN")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shutdown_delay_serves_while_not_ready_and_probe_mode_says_so() {
    let host = HostCmd::new("hello")
        .args(["--shutdown-delay", "60s"])
        .spawn();
    let admin = host.admin.unwrap().to_string();
    assert_eq!(
        probe_mode(&["--admin-listen", &admin]),
        (Some(0), "200 ready\n".into())
    );
    assert_eq!(
        probe_mode(&["/livez", "--admin-listen", &admin]),
        (Some(0), "200 ok\n".into())
    );

    host.sigterm();
    host.wait_stderr(|s| s.contains("still serving for the shutdown delay"));
    assert_eq!(
        probe(host.admin.unwrap(), "/readyz").await,
        (503, "not ready: draining\n".into())
    );
    let (code, said) = probe_mode(&["--admin-listen", &admin]);
    assert_eq!(code, Some(1), "{said}");
    assert_eq!(said, "effe-host: probe /readyz: 503 not ready: draining\n");
    // Not ready, but serving: a new connection is answered, nothing drains yet.
    assert_eq!(host.get("/").await.status, 200);
    assert!(!host.stderr().contains("draining in-flight"));

    // A second signal ends the delay (the test does not wait the 60 s).
    host.sigterm();
    let (status, stderr) = host.wait();
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("draining in-flight"), "{stderr}");
}

#[test]
fn probe_mode_fails_in_one_line_when_nothing_answers() {
    let closed = free_port().to_string();
    let (code, said) = probe_mode(&[&format!("http://{closed}/readyz")]);
    assert_eq!(code, Some(1), "{said}");
    assert_eq!(said.lines().count(), 1, "{said}");
    assert!(said.contains("Connection refused"), "{said}");
    let (code, said) = probe_mode(&["--admin-listen", "off"]);
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("the admin listener is off"), "{said}");
}
