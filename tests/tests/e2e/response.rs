//! Responses the host's sink must refuse: past the header caps (once an abort of the whole host),
//! an invalid status or header name (once a `200` with an empty body).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use effe_tests::{get, send, Host, HostCmd, Proto, Reply};

/// `GET path` on a new connection, bounded: a host that died fails the test, never hangs it.
async fn fetch(host: &Host, proto: Proto, path: &str) -> Reply {
    tokio::time::timeout(Duration::from_secs(30), send(host.addr, proto, get(path)))
        .await
        .unwrap_or_else(|_| panic!("no answer to {path}"))
}

/// The plain `500` of a failed `run`, with the request id the failure is logged under.
fn assert_internal_error(reply: &Reply, path: &str) {
    assert_eq!(reply.status, 500, "{path}: {reply:?}");
    assert!(
        reply.headers.contains_key("x-request-id"),
        "{path}: {reply:?}"
    );
    assert_eq!(reply.text(), "Internal Server Error\n", "{path}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_thousand_response_headers_answer_500_and_the_host_stays_up() {
    let host = HostCmd::new("fixture-response").spawn();
    // The effe returns the cap's error after 1000 headers were stored: they count as written,
    // but the response is broken, so the client gets the plain 500, not the partial headers.
    let reply = fetch(&host, Proto::Http1, "/many-headers?30000").await;
    assert_internal_error(&reply, "/many-headers?30000");
    assert!(!reply.headers.contains_key("x-h-0"), "{reply:?}");

    let reply = fetch(&host, Proto::Http1, "/many-headers?10").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "10\n");
    assert_eq!(reply.headers["x-h-9"], "v");

    let (status, stderr) = host.stop();
    assert!(status.success(), "exit {status:?}: {stderr}");
    assert!(
        stderr.contains("run failed: too many response headers (limit 1000)"),
        "{stderr}"
    );
}

/// `GET path` over HTTP/1.1 on a plain socket, the whole response as text: hyper's clients take
/// at most 100 response headers (HTTP/1) or 16 KiB of them (h2) by default.
fn fetch_raw(host: &Host, path: &str) -> String {
    let mut sock = TcpStream::connect(host.addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        sock,
        "GET {path} HTTP/1.1\r\nhost: {}\r\nconnection: close\r\n\r\n",
        host.addr
    )
    .unwrap();
    let mut text = String::new();
    sock.read_to_string(&mut text).unwrap();
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_up_to_the_cap_are_sent_one_more_answers_500() {
    let host = HostCmd::new("fixture-response").spawn();
    let text = fetch_raw(&host, "/many-headers?1000");
    let (head, body) = text.split_once("\r\n\r\n").expect("a whole response");
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    let sent = head.lines().filter(|l| l.starts_with("x-h-"));
    assert_eq!(sent.count(), 1000);
    assert_eq!(body, "1000\n");

    let reply = fetch(&host, Proto::Http1, "/many-headers?1001").await;
    assert_internal_error(&reply, "/many-headers?1001");

    let (status, stderr) = host.stop();
    assert!(status.success(), "exit {status:?}: {stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_status_or_header_name_answers_500() {
    let host = HostCmd::new("fixture-response").spawn();
    for path in ["/bad-status", "/bad-header"] {
        let reply = fetch(&host, Proto::Http1, path).await;
        assert_internal_error(&reply, path);
    }
    let (status, stderr) = host.stop();
    assert!(status.success(), "exit {status:?}: {stderr}");
    assert!(
        stderr.contains("run failed: invalid response status 1000"),
        "{stderr}"
    );
    assert!(
        stderr.contains(r#"run failed: invalid header name "bad name""#),
        "{stderr}"
    );
}
