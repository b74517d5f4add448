//! Limits and timeouts: connections that send nothing, stalled bodies, the connection cap.

use std::time::Duration;

use effe_tests::{HostCmd, PATIENCE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until the host closes the connection (at most [`PATIENCE`]); returns what it sent.
async fn until_closed(tcp: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    tokio::time::timeout(PATIENCE, tcp.read_to_end(&mut got))
        .await
        .expect("the host closed the connection")
        .ok();
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_sends_nothing_or_part_of_the_h2_preface_is_closed() {
    let host = HostCmd::new("hello")
        .args(["--header-read-timeout", "300ms"])
        .spawn();
    let mut silent = TcpStream::connect(host.addr).await.unwrap();
    let mut preface = TcpStream::connect(host.addr).await.unwrap();
    preface.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    assert_eq!(until_closed(&mut silent).await, b"");
    assert_eq!(until_closed(&mut preface).await, b"");
    // Others are served meanwhile and after.
    assert_eq!(host.get("/").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_gets_408_and_holds_no_context() {
    let host = HostCmd::new("echo")
        .args(["--body-read-timeout", "500ms", "--max-contexts", "1"])
        .spawn();
    let mut slow = TcpStream::connect(host.addr).await.unwrap();
    slow.write_all(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nabc")
        .await
        .unwrap();
    // While that body stalls, the only Context serves others.
    assert_eq!(host.get("/").await.status, 200);
    let answer = String::from_utf8(until_closed(&mut slow).await).unwrap();
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    // A body that keeps coming, slower than the limit in all but not between reads, is fine.
    let mut steady = TcpStream::connect(host.addr).await.unwrap();
    steady
        .write_all(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    for byte in [b"a", b"b", b"c", b"d"] {
        tokio::time::sleep(Duration::from_millis(200)).await;
        steady.write_all(byte).await.unwrap();
    }
    let answer = String::from_utf8(until_closed(&mut steady).await).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(answer.contains(r#""body":"abcd""#), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_max_connections_the_host_waits_then_serves() {
    let host = HostCmd::new("hello")
        .args(["--max-connections", "2", "--threads", "1"])
        .spawn();
    let request = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n";
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut tcp = TcpStream::connect(host.addr).await.unwrap();
        tcp.write_all(request).await.unwrap();
        let mut buf = [0u8; 12];
        tcp.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"HTTP/1.1 200");
        open.push(tcp);
    }
    // A third is accepted by the kernel, then waits: at most one per network thread is taken
    // beyond the cap, and it is not served until a place frees.
    let mut third = TcpStream::connect(host.addr).await.unwrap();
    third.write_all(request).await.unwrap();
    host.wait_stderr(|s| s.contains("at --max-connections: not accepting"));
    let metrics = host.admin_get("/metrics").await.text();
    assert!(
        metrics.contains("effe_connection_cap_reached_total 1"),
        "{metrics}"
    );
    drop(open.pop());
    let mut buf = [0u8; 12];
    tokio::time::timeout(PATIENCE, third.read_exact(&mut buf))
        .await
        .expect("served once a place freed")
        .unwrap();
    assert_eq!(&buf, b"HTTP/1.1 200");
    host.wait_stderr(|s| s.contains("below --max-connections again"));
}

/// One raw HTTP/1.x exchange on a new connection: the status line's code.
async fn status_of(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request).await.unwrap();
    let answer = String::from_utf8_lossy(&until_closed(&mut tcp).await).into_owned();
    answer.get(9..12).unwrap_or(&answer).to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_is_checked_as_rfc_9112_requires() {
    let host = HostCmd::new("hello").spawn();
    let close = "connection: close\r\n";
    for (request, expected) in [
        (format!("GET / HTTP/1.1\r\n{close}\r\n"), "400"),
        (
            format!("GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\n{close}\r\n"),
            "400",
        ),
        (format!("GET / HTTP/1.1\r\nhost: a b\r\n{close}\r\n"), "400"),
        (
            format!("GET / HTTP/1.1\r\nhost: user@a\r\n{close}\r\n"),
            "400",
        ),
        (
            format!("GET / HTTP/1.1\r\nhost: a:99999999\r\n{close}\r\n"),
            "400",
        ),
        (
            format!("GET / HTTP/1.1\r\nhost: example.com:8080\r\n{close}\r\n"),
            "200",
        ),
        (
            format!("GET / HTTP/1.1\r\nhost: [::1]:80\r\n{close}\r\n"),
            "200",
        ),
        (format!("GET / HTTP/1.1\r\nhost:\r\n{close}\r\n"), "200"),
        ("GET / HTTP/1.0\r\n\r\n".to_owned(), "200"),
    ] {
        assert_eq!(
            status_of(host.addr, request.as_bytes()).await,
            expected,
            "{request:?}"
        );
    }
    // HTTP/2 names the authority in :authority; no Host is needed.
    let reply = effe_tests::send(host.addr, effe_tests::Proto::Http2, effe_tests::get("/")).await;
    assert_eq!(reply.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_the_host_waits_says_so_once_and_recovers() {
    // The fewest descriptors the host starts with (the count depends on the build), plus
    // three: three connections are served, the next ones exhaust the host.
    let start = |limit| {
        HostCmd::with_fd_limit("hello", limit)
            .args(["--threads", "1", "--admin-listen", "off"])
            .start()
    };
    let fewest = (10..64)
        .find(|limit| {
            let host = start(*limit);
            let said = host.wait_stderr(|s| s.contains("listening") || s.contains("effe-host: "));
            said.contains("listening")
        })
        .expect("no descriptor limit let the host start");
    let mut host = start(fewest + 3);
    host.wait_listening();
    let mut open = Vec::new();
    for _ in 0..16 {
        let mut tcp = TcpStream::connect(host.addr).await.unwrap();
        tcp.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        open.push(tcp);
    }
    host.wait_stderr(|s| s.contains("cannot accept connections"));
    // Descriptors free up: the host accepts again by itself, and serves. The episode ends at
    // an accept a second after the last failure: keep a client coming until it says so.
    drop(open);
    let deadline = std::time::Instant::now() + PATIENCE;
    while !host.stderr().contains("accepting connections again") {
        assert!(std::time::Instant::now() < deadline, "{}", host.stderr());
        assert_eq!(host.get("/").await.status, 200);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, stderr) = host.stop();
    assert!(status.success(), "{stderr}");
    assert_eq!(
        stderr.matches("cannot accept connections").count(),
        1,
        "one warning per episode: {stderr}"
    );
}
