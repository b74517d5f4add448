//! Requests and responses crossing the ABI intact, over HTTP/1.1 and h2c.

use bytes::Bytes;
use effe_tests::{send, HostCmd, Proto};
use http_body_util::Full;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_over_http1_and_h2c() {
    let host = HostCmd::new("hello").spawn();
    for (proto, version) in [
        (Proto::Http1, http::Version::HTTP_11),
        (Proto::Http2, http::Version::HTTP_2),
    ] {
        let reply = send(host.addr, proto, effe_tests::get("/any/path?q=1")).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.version, version);
        assert_eq!(reply.text(), "Hello from effe");
        assert_eq!(reply.headers["content-type"], "text/plain");
    }
    let (status, _) = host.stop();
    assert!(status.success());
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// 1 MiB covering every byte value, in a pattern that is not periodic in 256.
fn binary_body() -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..1024 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_round_trips_binary_body_and_50_headers() {
    let host = HostCmd::new("echo").spawn();
    let body = binary_body();
    for proto in [Proto::Http1, Proto::Http2] {
        let mut req = http::Request::post("/a/b%20c?x=1&y=%2F")
            .header("x-request-id", "test-id-7")
            .header(
                "x-bin",
                http::HeaderValue::from_bytes(b"\x80\xfe ok").unwrap(),
            );
        for i in 0..45 {
            req = req.header(format!("x-h-{i}"), format!("value {i}"));
        }
        for v in ["one", "two", "three"] {
            req = req.header("x-rep", v);
        }
        // With x-request-id and x-bin: 50 headers the client set.
        let req = req.body(Full::new(Bytes::from(body.clone()))).unwrap();
        let reply = send(host.addr, proto, req).await;
        assert_eq!(reply.status, 200, "{proto:?}");
        let json = reply.json();
        assert_eq!(json["method"], "POST");
        assert_eq!(json["path"], "/a/b%20c");
        assert_eq!(json["query"], "x=1&y=%2F");
        assert_eq!(json["request_id"], "test-id-7");
        assert_eq!(json["body_len"], body.len());
        assert!(
            json["body_hex"] == hex(&body),
            "{proto:?}: body changed in transit"
        );
        let headers = json["headers"].as_array().unwrap();
        let values = |name: &str| -> Vec<String> {
            headers
                .iter()
                .filter(|h| h["name"] == name)
                .map(|h| h["value_hex"].as_str().unwrap().to_owned())
                .collect()
        };
        for i in 0..45 {
            assert_eq!(
                values(&format!("x-h-{i}")),
                [hex(format!("value {i}").as_bytes())]
            );
        }
        assert_eq!(
            values("x-rep"),
            ["one", "two", "three"].map(|v| hex(v.as_bytes()))
        );
        assert_eq!(values("x-bin"), [hex(b"\x80\xfe ok")]);
        let bin = headers.iter().find(|h| h["name"] == "x-bin").unwrap();
        assert!(bin["value"].is_null(), "non-UTF-8 value must not be text");
        let expected_version = if proto == Proto::Http2 {
            "HTTP/2.0"
        } else {
            "HTTP/1.1"
        };
        assert_eq!(json["version"], expected_version);
        assert!(json["peer_addr"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_method_and_path_reaches_the_effe_and_ids_are_made() {
    let host = HostCmd::new("echo").spawn();
    let mut ids = Vec::new();
    for method in ["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "CUSTOM"] {
        let req = http::Request::builder()
            .method(method)
            .uri("/deep/path/")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let json = send(host.addr, Proto::Http1, req).await.json();
        assert_eq!(json["method"], method);
        assert_eq!(json["path"], "/deep/path/");
        assert!(json["query"].is_null());
        ids.push(json["request_id"].as_str().unwrap().to_owned());
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 6, "generated request ids are unique: {ids:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_over_the_limit_is_413_and_the_host_keeps_serving() {
    let host = HostCmd::new("echo")
        .args(["--max-body-size", "1024"])
        .spawn();
    let big = http::Request::post("/")
        .body(Full::new(Bytes::from(vec![7u8; 4096])))
        .unwrap();
    assert_eq!(send(host.addr, Proto::Http1, big).await.status, 413);
    let ok = http::Request::post("/")
        .body(Full::new(Bytes::from(vec![7u8; 1024])))
        .unwrap();
    assert_eq!(
        send(host.addr, Proto::Http2, ok).await.json()["body_len"],
        1024
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_body_size_takes_a_unit() {
    let host = HostCmd::new("echo")
        .args(["--max-body-size", "1KiB"])
        .spawn();
    let post = |len: usize| {
        http::Request::post("/")
            .body(Full::new(Bytes::from(vec![7u8; len])))
            .unwrap()
    };
    assert_eq!(send(host.addr, Proto::Http1, post(2048)).await.status, 413);
    let reply = send(host.addr, Proto::Http1, post(1024)).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["body_len"], 1024);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_network_thread_serves_and_stops() {
    // Four listeners share the port (SO_REUSEPORT); the kernel spreads connections over them.
    // Called inline, Run runs on the network thread that holds the connection: the effe
    // answers that thread's name.
    let host = HostCmd::new("fixture-lifecycle")
        .args(["--threads", "4", "--call-mode", "inline"])
        .spawn();
    let host = std::sync::Arc::new(host);
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let host = host.clone();
            let proto = if i % 2 == 0 {
                Proto::Http1
            } else {
                Proto::Http2
            };
            tokio::spawn(async move { send(host.addr, proto, effe_tests::get("/thread")).await })
        })
        .collect();
    let mut threads = Vec::new();
    for t in tasks {
        let reply = t.await.unwrap();
        assert_eq!(reply.status, 200);
        threads.push(reply.text());
    }
    threads.sort();
    threads.dedup();
    // 64 connections all hashed to one of four listeners: about 1 in 10^38.
    assert!(threads.len() >= 2, "only {threads:?} served");
    assert!(
        threads.iter().any(|t| t.starts_with("effe-net-")),
        "{threads:?}"
    );
    let host = std::sync::Arc::into_inner(host).unwrap();
    let (status, stderr) = host.stop();
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("threads=4"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_body_over_the_limit_is_refused_before_100_continue() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = HostCmd::new("echo")
        .args(["--max-body-size", "1024"])
        .spawn();
    let mut tcp = tokio::net::TcpStream::connect(host.addr).await.unwrap();
    tcp.write_all(
        b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 4096\r\nexpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    // The client sends nothing more: the first thing it hears must be the refusal.
    let mut head = [0u8; 12];
    tokio::time::timeout(effe_tests::PATIENCE, tcp.read_exact(&mut head))
        .await
        .expect("an answer before the body")
        .unwrap();
    assert_eq!(&head, b"HTTP/1.1 413", "{}", String::from_utf8_lossy(&head));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_carries_an_x_request_id() {
    let host = HostCmd::new("echo")
        .args(["--max-body-size", "16", "--max-contexts", "1"])
        .spawn();
    // Made by the host, or the client's own, on answers from the effe and from the host alike.
    let made = host.get("/").await;
    assert_eq!(made.status, 200);
    let id = made.headers["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(
        made.json()["request_id"],
        id.as_str(),
        "the id the effe saw"
    );
    let sent = http::Request::get("/")
        .header("x-request-id", "client-7")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(
        send(host.addr, Proto::Http2, sent).await.headers["x-request-id"],
        "client-7"
    );
    let big = http::Request::post("/")
        .header("x-request-id", "client-8")
        .body(Full::new(Bytes::from(vec![0u8; 64])))
        .unwrap();
    let refused = send(host.addr, Proto::Http1, big).await;
    assert_eq!(refused.status, 413);
    assert_eq!(refused.headers["x-request-id"], "client-8");
    let big = http::Request::post("/")
        .body(Full::new(Bytes::from(vec![0u8; 64])))
        .unwrap();
    assert!(send(host.addr, Proto::Http1, big)
        .await
        .headers
        .contains_key("x-request-id"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line() {
    let mut host = HostCmd::new("hello").args(["--log-format", "json"]).start();
    let stderr = host.wait_stderr(|s| s.contains(r#""message":"listening""#));
    let line = stderr
        .lines()
        .find(|l| l.contains(r#""message":"listening""#))
        .unwrap();
    let record: serde_json::Value = serde_json::from_str(line).expect("a JSON object");
    assert_eq!(record["level"], "INFO");
    let addr: std::net::SocketAddr = record["fields"]["addr"].as_str().unwrap().parse().unwrap();
    host.addr = addr;
    assert_eq!(host.get("/").await.status, 200);
    let (status, stderr) = host.stop();
    assert!(status.success());
    for line in stderr.lines().filter(|l| !l.is_empty() && *l != "<eof>") {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    }
}
