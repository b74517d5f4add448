//! Errors returned by Run reach syslog (a socket the test owns) with the request id, or stderr
//! when no syslog is reachable.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use bytes::Bytes;
use effe_tests::{send, HostCmd, Proto};
use http_body_util::Full;

fn get_with_id(path: &str, id: &str) -> http::Request<Full<Bytes>> {
    http::Request::get(path)
        .header("x-request-id", id)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_error_is_500_and_one_syslog_message_with_the_request_id() {
    let cmd = HostCmd::new("fixture-lifecycle");
    let sock_path = cmd.path("syslog.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let host = cmd
        .args(["--syslog".as_ref(), sock_path.as_os_str()])
        .spawn();

    let reply = send(
        host.addr,
        Proto::Http1,
        get_with_id("/error", "req-error-42"),
    )
    .await;
    assert_eq!(reply.status, 500);
    assert_eq!(reply.headers["x-request-id"], "req-error-42");

    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 2048];
    let n = sock.recv(&mut buf).unwrap();
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    // RFC 3164: <PRI> with facility user (1) and severity err (3) = 11.
    assert!(msg.starts_with("<11>"), "{msg}");
    assert!(msg.contains("effe-host["), "{msg}");
    assert!(msg.contains("effe=fixture-lifecycle"), "{msg}");
    assert!(msg.contains("request_id=req-error-42"), "{msg}");
    assert!(msg.contains("fixture run error in ctx 1"), "{msg}");

    // One message per error: the next one is for the next request.
    let reply = send(host.addr, Proto::Http2, get_with_id("/", "req-fine")).await;
    assert_eq!(reply.status, 200);
    let reply = send(
        host.addr,
        Proto::Http2,
        get_with_id("/panic", "req-panic-43"),
    )
    .await;
    assert_eq!(reply.status, 500);
    let n = sock.recv(&mut buf).unwrap();
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(
        msg.contains("request_id=req-panic-43 run panicked: fixture run panic"),
        "{msg}"
    );
    assert!(
        !host.stderr().contains("run failed"),
        "logged to syslog, not stderr"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_after_writing_sends_what_was_written() {
    let host = HostCmd::new("fixture-lifecycle").spawn();
    let reply = host.get("/error-after-write").await;
    assert_eq!((reply.status, reply.text().as_str()), (418, "partial"));
    host.wait_stderr(|s| s.contains("run failed: fixture error after write"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_syslog() {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let target = format!("udp://{}", sock.local_addr().unwrap());
    let host = HostCmd::new("fixture-lifecycle")
        .args(["--syslog", &target])
        .spawn();
    let reply = send(host.addr, Proto::Http1, get_with_id("/error", "udp-1")).await;
    assert_eq!(reply.status, 500);
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 2048];
    let n = sock.recv(&mut buf).unwrap();
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(msg.contains("request_id=udp-1 run failed"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_reachable_syslog_errors_go_to_stderr_after_one_warning() {
    let cmd = HostCmd::new("fixture-lifecycle");
    let missing = cmd.path("no-such.sock");
    let host = cmd.args(["--syslog".as_ref(), missing.as_os_str()]).spawn();
    for id in ["e-1", "e-2"] {
        let reply = send(host.addr, Proto::Http1, get_with_id("/error", id)).await;
        assert_eq!(reply.status, 500);
    }
    let stderr = host.wait_stderr(|s| s.contains("request_id=e-2"));
    assert_eq!(stderr.matches("syslog unreachable").count(), 1, "{stderr}");
    assert!(stderr.contains("effe=fixture-lifecycle request_id=e-1 run failed: fixture run error"));
}
