//! Errors returned by Run reach syslog (a socket the test owns) with the request id, or stderr
//! when no syslog is reachable; a syslog that stops reading never stalls requests.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use bytes::Bytes;
use effe_tests::{reply, send, HostCmd, Proto};
use http_body_util::Full;
use hyper_util::rt::TokioIo;

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

/// `per_conn` sequential `GET /error` on each of `conns` keep-alive HTTP/1.1 connections, with
/// request ids `{prefix}-{conn}-{n}`; the statuses.
async fn errors_over_keep_alive(
    addr: std::net::SocketAddr,
    conns: usize,
    per_conn: usize,
    prefix: &'static str,
) -> Vec<u16> {
    let tasks: Vec<_> = (0..conns)
        .map(|c| {
            tokio::spawn(async move {
                let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
                let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .expect("h1");
                tokio::spawn(conn);
                let mut statuses = Vec::with_capacity(per_conn);
                for n in 0..per_conn {
                    let mut req = get_with_id("/error", &format!("{prefix}-{c}-{n}"));
                    req.headers_mut()
                        .insert(http::header::HOST, addr.to_string().parse().unwrap());
                    tx.ready().await.expect("keep-alive");
                    let resp = tx.send_request(req).await.expect("h1 request");
                    statuses.push(reply(resp).await.status);
                }
                statuses
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.extend(task.await.unwrap());
    }
    statuses
}

/// A syslog socket bound by the test and not read: the kernel queues about 10 datagrams
/// (net.unix.max_dgram_qlen), then a sender blocks.
fn unread_syslog(cmd: HostCmd) -> (effe_tests::Host, UnixDatagram) {
    let sock_path = cmd.path("syslog.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let host = cmd
        .args(["--syslog".as_ref(), sock_path.as_os_str()])
        .args(["--call-mode", "inline"])
        .spawn();
    (host, sock)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_syslog_stalls_no_request_and_the_drops_are_reported() {
    let (host, sock) = unread_syslog(HostCmd::new("fixture-lifecycle"));

    // More failures than the socket and the host's queue (1024) hold together. Run is called
    // on the network threads (inline): a blocking syslog send there would stall them all.
    let statuses = tokio::time::timeout(
        Duration::from_secs(30),
        errors_over_keep_alive(host.addr, 4, 400, "flood"),
    )
    .await
    .expect("requests stalled behind a full syslog");
    assert_eq!(statuses.len(), 1600);
    assert!(statuses.iter().all(|s| *s == 500), "{statuses:?}");
    // The socket is still full: other requests are served.
    let reply = tokio::time::timeout(
        Duration::from_secs(10),
        send(host.addr, Proto::Http1, get_with_id("/", "fine")),
    )
    .await
    .expect("a plain request stalled behind a full syslog");
    assert_eq!(reply.status, 200);

    // Once read, the socket takes the queued messages again, in the RFC 3164 format.
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 2048];
    for _ in 0..50 {
        let n = sock.recv(&mut buf).expect("queued messages reach syslog");
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(msg.starts_with("<11>"), "{msg}");
        assert!(
            msg.contains("effe=fixture-lifecycle request_id=flood-"),
            "{msg}"
        );
        assert!(msg.contains("run failed: fixture run error"), "{msg}");
    }
    // What did not fit is counted and reported once, not line by line.
    let stderr = host.wait_stderr(|s| s.contains("effe log messages dropped"));
    let dropped: usize = stderr
        .split(" effe log messages dropped")
        .next()
        .and_then(|before| before.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no drop count:\n{stderr}"));
    assert!(dropped > 0 && dropped < 1600, "{dropped}");
    assert_eq!(
        stderr.matches("effe log messages dropped").count(),
        1,
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_still_queued_for_a_stuck_syslog_at_exit_go_to_stderr() {
    let (host, _sock) = unread_syslog(HostCmd::new("fixture-lifecycle"));
    let statuses = tokio::time::timeout(
        Duration::from_secs(30),
        errors_over_keep_alive(host.addr, 1, 300, "exit"),
    )
    .await
    .expect("requests stalled behind a full syslog");
    assert!(statuses.iter().all(|s| *s == 500), "{statuses:?}");

    let (status, stderr) = host.stop();
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains("syslog did not take the queued effe errors"),
        "{stderr}"
    );
    // The last failure was still queued behind the stuck send: it is on stderr.
    assert!(
        stderr.contains("effe=fixture-lifecycle request_id=exit-0-299 run failed"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_has_a_line_per_request_and_none_for_probes() {
    let host = HostCmd::new("hello").args(["--access-log"]).spawn();
    let reply = send(host.addr, Proto::Http1, get_with_id("/x?y=1", "acc-1")).await;
    assert_eq!(reply.status, 200);
    let reply = send(host.addr, Proto::Http2, get_with_id("/h2", "acc-2")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(host.admin_get("/livez").await.status, 200);
    let stderr = host.wait_stderr(|s| s.contains("request_id=acc-2"));
    let line = stderr
        .lines()
        .find(|l| l.contains("request_id=acc-1"))
        .unwrap();
    assert!(
        line.contains(
            " access request_id=acc-1 method=GET target=\"/x?y=1\" protocol=http/1.1 \
             status=200 bytes=15 duration_ms="
        ),
        "{line}"
    );
    assert!(line.contains(" peer=127.0.0.1:"), "{line}");
    assert!(stderr.contains("request_id=acc-2 method=GET target=\"/h2\" protocol=h2 status=200"));
    let (status, stderr) = host.stop();
    assert!(status.success());
    assert!(!stderr.contains("livez"), "probes are not logged: {stderr}");
    assert_eq!(stderr.matches(" access ").count(), 2, "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_is_json_with_json_logs_and_off_by_default() {
    let mut host = HostCmd::new("hello")
        .env("EFFE_ACCESS_LOG", "on")
        .args(["--log-format", "json"])
        .start();
    let stderr = host.wait_stderr(|s| s.contains(r#""message":"listening""#));
    let listening = stderr.lines().find(|l| l.contains("listening")).unwrap();
    let listening: serde_json::Value = serde_json::from_str(listening).unwrap();
    host.addr = listening["fields"]["addr"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let reply = send(host.addr, Proto::Http1, get_with_id("/j", "acc-3")).await;
    assert_eq!(reply.status, 200);
    let stderr = host.wait_stderr(|s| s.contains("acc-3"));
    let line = stderr.lines().find(|l| l.contains("acc-3")).unwrap();
    let entry: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(entry["access"], true);
    assert_eq!(entry["target"], "/j");
    assert_eq!(entry["status"], 200);
    assert_eq!(entry["bytes"], 15);
    assert!(entry["duration_ms"].as_f64().unwrap() >= 0.0);
    drop(host);

    let host = HostCmd::new("hello").spawn();
    assert_eq!(host.get("/").await.status, 200);
    let (_, stderr) = host.stop();
    assert!(!stderr.contains(" access "), "{stderr}");
}
