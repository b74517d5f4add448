//! What the SDK adds at the boundary, through the real host: errors that are the client's
//! answer, errors that retire their Context, and records an effe logs.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use bytes::Bytes;
use effe_tests::{send, wait_events, HostCmd, Proto};
use http_body_util::Full;

fn get_with_id(path: &str, id: &str) -> http::Request<Full<Bytes>> {
    http::Request::get(path)
        .header("x-request-id", id)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

fn recv(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = sock
        .recv(&mut buf)
        .expect("a syslog message within the timeout");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_with_a_status_is_the_answer_and_only_a_5xx_is_logged() {
    let cmd = HostCmd::new("fixture-lifecycle");
    let sock_path = cmd.path("syslog.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let host = cmd
        .args(["--syslog".as_ref(), sock_path.as_os_str()])
        .spawn();

    for proto in [Proto::Http1, Proto::Http2] {
        let reply = send(host.addr, proto, get_with_id("/status?404", "req-404")).await;
        // What Run wrote before failing ("partial", 201) is replaced.
        assert_eq!(
            (reply.status, reply.text().as_str()),
            (404, "fixture status 404")
        );
        assert_eq!(reply.headers["content-type"], "text/plain; charset=utf-8");
        assert_eq!(reply.headers["x-request-id"], "req-404");
    }
    let reply = send(
        host.addr,
        Proto::Http1,
        get_with_id("/status?503", "req-503"),
    )
    .await;
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (503, "fixture status 503")
    );
    // The first message is the 503's: the 404s were not logged.
    let msg = recv(&sock);
    assert!(
        msg.contains("request_id=req-503 run failed: fixture status 503"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retiring_error_stops_its_context_and_the_next_request_gets_a_fresh_one() {
    let cmd = HostCmd::new("fixture-lifecycle");
    let events = cmd.path("events.log");
    let host = cmd
        .env("EFFE_LIFECYCLE_LOG", &events)
        .args(["--max-contexts", "1"])
        .spawn();
    assert_eq!(host.get("/").await.text(), "ctx 1\n");
    assert_eq!(
        host.get("/").await.text(),
        "ctx 1\n",
        "reused while healthy"
    );
    assert_eq!(host.get("/retire").await.status, 500);
    wait_events(&events, |e| e.iter().any(|l| l == "stop 1"));
    assert_eq!(host.get("/").await.text(), "ctx 2\n");
    host.wait_stderr(|s| s.contains("run failed: fixture broken connection"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_an_effe_logs_reaches_the_host_log_with_its_name_and_the_request_id() {
    let cmd = HostCmd::new("fixture-lifecycle");
    let sock_path = cmd.path("syslog.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let host = cmd
        .env("EFFE_LOG", "info,effe_log=debug")
        .args(["--syslog".as_ref(), sock_path.as_os_str()])
        .spawn();
    // From init: no request id.
    let stderr = host.wait_stderr(|s| s.contains("fixture init"));
    let line = stderr.lines().find(|l| l.contains("fixture init")).unwrap();
    assert!(
        line.contains("effe=fixture-lifecycle request_id=- "),
        "{line}"
    );

    let reply = send(host.addr, Proto::Http2, get_with_id("/log", "req-log-7")).await;
    assert_eq!(reply.status, 200);
    // The error goes to syslog, as run failures do.
    let msg = recv(&sock);
    assert!(msg.starts_with("<11>"), "{msg}");
    assert!(
        msg.contains("effe=fixture-lifecycle request_id=req-log-7 error in fixture_lifecycle: fixture log ERROR in ctx 1"),
        "{msg}"
    );
    // The others to the host's log, down to debug as EFFE_LOG says, not trace.
    let stderr = host.wait_stderr(|s| s.contains("fixture log DEBUG"));
    for level in ["WARN", "INFO", "DEBUG"] {
        let line = stderr
            .lines()
            .find(|l| l.contains(&format!("fixture log {level} in ctx 1")))
            .unwrap_or_else(|| panic!("no {level} record in {stderr}"));
        assert!(line.contains("req-log-7"), "{line}");
        assert!(line.contains("fixture-lifecycle"), "{line}");
    }
    assert!(!stderr.contains("fixture log TRACE"), "{stderr}");
}
