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
    // Three connections are served, the next ones exhaust the host.
    let host = HostCmd::hello_short_of_descriptors(3);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_head_or_too_many_headers_get_431() {
    let host = HostCmd::new("hello")
        .args(["--max-header-size", "16KiB", "--max-headers", "4"])
        .spawn();
    let big = format!(
        "GET / HTTP/1.1\r\nhost: x\r\nx-big: {}\r\nconnection: close\r\n\r\n",
        "a".repeat(20_000)
    );
    assert_eq!(status_of(host.addr, big.as_bytes()).await, "431");
    let many =
        "GET / HTTP/1.1\r\nhost: x\r\na: 1\r\nb: 2\r\nc: 3\r\nd: 4\r\nconnection: close\r\n\r\n";
    assert_eq!(status_of(host.addr, many.as_bytes()).await, "431");
    let fine = "GET / HTTP/1.1\r\nhost: x\r\na: 1\r\nconnection: close\r\n\r\n";
    assert_eq!(status_of(host.addr, fine.as_bytes()).await, "200");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_connection_gets_at_most_max_streams_at_once() {
    let holds = effe_tests::Holds::new().await;
    let host = HostCmd::new("fixture-lifecycle")
        .args(["--max-streams", "2", "--min-contexts", "3"])
        .spawn();
    let tcp = TcpStream::connect(host.addr).await.unwrap();
    let (h2, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    // One exchange first, so that the client has the server's SETTINGS before it opens more.
    let warm_up = http::Request::get(format!("http://{}/", host.addr))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    assert_eq!(
        h2.clone().send_request(warm_up).await.unwrap().status(),
        200
    );
    let streams: Vec<_> = (0..3)
        .map(|_| {
            let mut h2 = h2.clone();
            let uri = format!("http://{}/hold?{}", host.addr, holds.port());
            let req = http::Request::get(uri)
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap();
            tokio::spawn(async move { h2.send_request(req).await.map(|r| r.status()) })
        })
        .collect();
    let [one, two] = [holds.next().await, holds.next().await];
    // The client keeps the third stream until one of the two ends (the server's SETTINGS):
    // nothing more checks in meanwhile.
    let early = tokio::time::timeout(Duration::from_millis(300), holds.next()).await;
    assert!(early.is_err(), "a third stream ran beside two");
    one.release().await;
    holds.next().await.release().await;
    two.release().await;
    for s in streams {
        assert_eq!(s.await.unwrap().unwrap(), 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_peer_that_does_not_answer_pings_is_closed() {
    let host = HostCmd::new("hello")
        .args([
            "--h2-ping-interval",
            "200ms",
            "--header-read-timeout",
            "60s",
        ])
        .spawn();
    let mut deaf = TcpStream::connect(host.addr).await.unwrap();
    // The preface and an empty SETTINGS frame, then nothing: no SETTINGS ACK, no PING ACK.
    deaf.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let began = std::time::Instant::now();
    let _ = until_closed(&mut deaf).await;
    assert!(
        began.elapsed() < Duration::from_secs(20),
        "closed by the PING timeout, not by the 60 s header timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_disconnected_at_the_write_timeout() {
    let host = HostCmd::new("echo")
        .args(["--write-timeout", "500ms"])
        .env("EFFE_LOG", "info,effe_host::server=debug")
        .spawn();
    // A small receive window and a large answer (echo returns the body in hex: ~8 MiB).
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut tcp = socket.connect(host.addr).await.unwrap();
    let body = vec![0xffu8; 4 << 20];
    let head = format!(
        "POST / HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(&body).await.unwrap();
    // Read nothing: the host's writes wait, then it gives up on the connection.
    host.wait_stderr(|s| s.contains("the client read nothing within the write timeout"));
    let got = until_closed(&mut tcp).await;
    assert!(
        got.len() < 8 << 20,
        "the whole answer arrived ({} bytes): nothing was cut",
        got.len()
    );
    // Others are served all along.
    assert_eq!(host.get("/").await.status, 200);
}

/// The HTTP/2 frames the host sends on `tcp` until it closes: (type, flags, stream, payload).
/// PINGs are answered if `answer_pings`.
async fn h2_frames_until_closed(
    tcp: &mut TcpStream,
    answer_pings: bool,
) -> Vec<(u8, u8, u32, Vec<u8>)> {
    let mut frames = Vec::new();
    let read = async {
        loop {
            let mut head = [0u8; 9];
            if tcp.read_exact(&mut head).await.is_err() {
                return;
            }
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0; len];
            if tcp.read_exact(&mut payload).await.is_err() {
                return;
            }
            let (kind, flags) = (head[3], head[4]);
            if kind == PING && flags & 1 == 0 && answer_pings {
                let mut ack = vec![0, 0, 8, PING, 1, 0, 0, 0, 0];
                ack.extend_from_slice(&payload);
                let _ = tcp.write_all(&ack).await;
            }
            let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & !(1 << 31);
            frames.push((kind, flags, stream, payload));
        }
    };
    tokio::time::timeout(PATIENCE, read)
        .await
        .expect("the host closed the connection");
    frames
}

const PING: u8 = 6;
const GOAWAY: u8 = 7;
const HEADERS: u8 = 1;

/// The h2 preface, an empty SETTINGS, and `GET path` on stream 1 (HPACK: indexed `:method GET`
/// and `:scheme http`, a literal `:path`, a literal `:authority x`).
fn h2_get(path: &str) -> Vec<u8> {
    let mut block = vec![0x82, 0x86, 0x04, path.len() as u8];
    block.extend_from_slice(path.as_bytes());
    block.extend_from_slice(&[0x41, 0x01, b'x']);
    let mut bytes =
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00".to_vec();
    let len = (block.len() as u32).to_be_bytes();
    // HEADERS, END_STREAM | END_HEADERS, stream 1.
    bytes.extend_from_slice(&[len[1], len[2], len[3], HEADERS, 0x05, 0, 0, 0, 1]);
    bytes.extend_from_slice(&block);
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_at_the_keep_alive_timeout() {
    let host = HostCmd::new("fixture-lifecycle")
        .args(["--keep-alive-timeout", "700ms"])
        .spawn();
    let keep_alive = Duration::from_millis(700);

    // HTTP/2: a GOAWAY once the connection has been idle, and only after the answer of the
    // request that took longer than the timeout; the final GOAWAY says NO_ERROR, last stream 1.
    let mut h2 = TcpStream::connect(host.addr).await.unwrap();
    h2.write_all(&h2_get("/sleep?1200")).await.unwrap();
    let began = std::time::Instant::now();
    let frames = h2_frames_until_closed(&mut h2, true).await;
    let closed_after = began.elapsed();
    let answer = frames
        .iter()
        .position(|f| f.0 == HEADERS)
        .expect("an answer");
    let goaways: Vec<_> = (0..frames.len())
        .filter(|&i| frames[i].0 == GOAWAY)
        .collect();
    assert!(
        answer < goaways[0],
        "a GOAWAY came before the answer: {frames:?}"
    );
    assert_eq!(frames[*goaways.last().unwrap()].3, [0, 0, 0, 1, 0, 0, 0, 0]);
    assert!(
        closed_after >= Duration::from_millis(1200) + keep_alive,
        "{closed_after:?}"
    );

    // A peer that does not answer the graceful close's PING (gone, or deaf) is closed after as
    // long again.
    let mut deaf = TcpStream::connect(host.addr).await.unwrap();
    deaf.write_all(&h2_get("/")).await.unwrap();
    let began = std::time::Instant::now();
    let frames = h2_frames_until_closed(&mut deaf, false).await;
    assert!(frames.iter().any(|f| f.0 == GOAWAY), "{frames:?}");
    assert!(began.elapsed() >= keep_alive * 2, "{:?}", began.elapsed());

    // HTTP/1.1: kept open (no `connection: close`) through a long request, closed once idle.
    let mut h1 = TcpStream::connect(host.addr).await.unwrap();
    h1.write_all(b"GET /sleep?1200 HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let began = std::time::Instant::now();
    let got = String::from_utf8(until_closed(&mut h1).await).unwrap();
    let closed_after = began.elapsed();
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(!got.contains("connection: close"), "{got}");
    assert!(
        closed_after >= Duration::from_millis(1200) + keep_alive,
        "{closed_after:?}"
    );

    // The keep-alive timeout is not a limit on the first request (that is the header read
    // timeout's, 30 s by default here): a client slower than 700 ms to send it is served.
    let mut slow = TcpStream::connect(host.addr).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    tokio::time::sleep(keep_alive * 2).await;
    slow.write_all(b"host: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let got = String::from_utf8(until_closed(&mut slow).await).unwrap();
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
}
