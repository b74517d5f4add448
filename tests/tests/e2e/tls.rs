//! HTTPS: ALPN, protocol versions, key formats, setup errors, SIGHUP rotation, mutual TLS (and
//! what an effe learns of its client), slow handshakes, and an effe calling an HTTPS upstream.

use std::io::{Read, Write};
use std::time::Duration;

use effe_tests::tls::{client, connect, negotiated, pki, served_leaf};
use effe_tests::{get, send_on, Host, HostCmd, Proto};

fn https(plugin: &str, cert: &str, key: &str) -> HostCmd {
    HostCmd::new(plugin)
        .args(["--tls-cert".as_ref(), pki(cert).as_os_str()])
        .args(["--tls-key".as_ref(), pki(key).as_os_str()])
}

async fn hello_over_tls(host: &Host, alpn: &[&str]) -> (Proto, effe_tests::Reply) {
    let stream = connect(host.addr, client(alpn, None))
        .await
        .expect("handshake");
    let proto = negotiated(&stream);
    (proto, send_on(stream, host.addr, proto, get("/")).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_speaks_what_alpn_chose_with_an_intermediate_chain() {
    let host = https("hello", "chain-ec.pem", "leaf-ec.key").spawn();
    for (alpn, proto, version) in [
        (&["h2", "http/1.1"][..], Proto::Http2, http::Version::HTTP_2),
        (&["http/1.1"][..], Proto::Http1, http::Version::HTTP_11),
        (&[][..], Proto::Http1, http::Version::HTTP_11),
    ] {
        let (got, reply) = hello_over_tls(&host, alpn).await;
        assert_eq!(got, proto, "ALPN offer {alpn:?}");
        assert_eq!(reply.version, version);
        assert_eq!(
            (reply.status, reply.text().as_str()),
            (200, "Hello from effe")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pkcs1_rsa_and_pkcs8_keys() {
    for (cert, key) in [
        ("leaf-rsa.pem", "leaf-rsa.key"),
        ("leaf-pkcs8.pem", "leaf-pkcs8.key"),
    ] {
        let host = https("hello", cert, key).spawn();
        let (_, reply) = hello_over_tls(&host, &["h2"]).await;
        assert_eq!(reply.status, 200, "{cert}");
    }
}

/// A minimal ClientHello, as a pre-TLS-1.3 client sends it: `version` is the highest it
/// speaks (no supported_versions extension). It offers suites and extensions the host accepts,
/// so that the version is the only thing that can be refused.
fn client_hello(version: [u8; 2]) -> Vec<u8> {
    fn ext(id: u16, data: &[u8]) -> Vec<u8> {
        let mut e = id.to_be_bytes().to_vec();
        e.extend((data.len() as u16).to_be_bytes());
        e.extend(data);
        e
    }
    let mut exts = Vec::new();
    exts.extend(ext(0x000a, &[0x00, 0x04, 0x00, 0x1d, 0x00, 0x17])); // groups: x25519, P-256
    exts.extend(ext(0x000b, &[0x01, 0x00])); // point formats: uncompressed
    exts.extend(ext(0x000d, &[0x00, 0x04, 0x04, 0x03, 0x08, 0x04])); // sig algs
    let mut body = version.to_vec();
    body.extend([0x42; 32]); // random
    body.push(0); // no session id
                  // ECDHE-ECDSA-AES128-GCM-SHA256 (TLS 1.2), ECDHE-ECDSA-AES128-SHA (TLS 1.0+)
    body.extend([0x00, 0x04, 0xc0, 0x2b, 0xc0, 0x09]);
    body.extend([0x01, 0x00]); // null compression
    body.extend((exts.len() as u16).to_be_bytes());
    body.extend(exts);
    let mut hs = vec![0x01, 0, (body.len() >> 8) as u8, body.len() as u8];
    hs.extend(body);
    let mut record = vec![0x16, 0x03, 0x01, (hs.len() >> 8) as u8, hs.len() as u8];
    record.extend(hs);
    record
}

/// Sends `hello` on a raw TCP connection and returns the first bytes of the answer.
async fn raw_answer(addr: std::net::SocketAddr, hello: Vec<u8>) -> Vec<u8> {
    tokio::task::spawn_blocking(move || {
        let mut tcp = std::net::TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        tcp.write_all(&hello).unwrap();
        let mut answer = vec![0u8; 7];
        tcp.read_exact(&mut answer).unwrap();
        answer
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_1_1_client_is_refused() {
    let host = https("hello", "chain-ec.pem", "leaf-ec.key").spawn();
    // The control: the same hello saying TLS 1.2 gets a ServerHello (handshake record, type 2).
    let answer = raw_answer(host.addr, client_hello([0x03, 0x03])).await;
    assert_eq!((answer[0], answer[5]), (0x16, 0x02), "{answer:x?}");
    // Saying TLS 1.1: a fatal alert (level 2), protocol_version (70).
    let answer = raw_answer(host.addr, client_hello([0x03, 0x02])).await;
    assert_eq!(
        (answer[0], answer[5], answer[6]),
        (0x15, 2, 70),
        "{answer:x?}"
    );
    let (_, reply) = hello_over_tls(&host, &["h2"]).await;
    assert_eq!(reply.status, 200);
}

#[test]
fn tls_setup_errors_have_their_own_codes() {
    let cases = [
        (
            "missing.pem",
            "leaf-ec.key",
            11,
            "missing.pem: No such file",
        ),
        (
            "only-key.pem",
            "leaf-ec.key",
            12,
            "only-key.pem: no certificate in this PEM file",
        ),
        (
            "leaf-ec.pem",
            "only-cert.pem",
            13,
            "only-cert.pem: no private key in this PEM file",
        ),
        (
            "leaf-ec.pem",
            "leaf-rsa.key",
            14,
            "the private key does not match the certificate in",
        ),
    ];
    for (cert, key, code, message) in cases {
        let out = https("hello", cert, key).run();
        assert_eq!(out.code(), Some(code), "{cert} {key}: {}", out.stderr);
        assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
        assert!(out.stderr.starts_with("effe-host: TLS: "), "{}", out.stderr);
        assert!(out.stderr.contains(message), "{}", out.stderr);
    }
    let out = HostCmd::new("hello")
        .args(["--tls-cert".as_ref(), pki("leaf-ec.pem").as_os_str()])
        .run();
    assert_eq!(
        out.code(),
        Some(2),
        "a certificate without a key is a usage error"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rotates_the_certificate_without_dropping_connections() {
    let cmd = HostCmd::new("hello");
    let (cert, key) = (cmd.path("cert.pem"), cmd.path("key.pem"));
    std::fs::copy(pki("chain-ec.pem"), &cert).unwrap();
    std::fs::copy(pki("leaf-ec.key"), &key).unwrap();
    let host = cmd
        .args(["--tls-cert".as_ref(), cert.as_os_str()])
        .args(["--tls-key".as_ref(), key.as_os_str()])
        .spawn();
    let leaf = |name: &str| effe_tests::tls::certs(name).remove(0);

    // A connection opened before the rotation, kept open across it.
    let before = connect(host.addr, client(&["http/1.1"], None))
        .await
        .unwrap();
    assert_eq!(served_leaf(&before), leaf("leaf-ec.pem"));
    let (mut open, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(before))
            .await
            .unwrap();
    tokio::spawn(conn);
    assert_eq!(
        open.send_request(effe_tests::get_h1("/"))
            .await
            .unwrap()
            .status(),
        200
    );

    std::fs::copy(pki("leaf-pkcs8.pem"), &cert).unwrap();
    std::fs::copy(pki("leaf-pkcs8.key"), &key).unwrap();
    host.signal("HUP");
    host.wait_stderr(|s| s.contains("TLS certificate reloaded"));
    let after = connect(host.addr, client(&["h2"], None)).await.unwrap();
    assert_eq!(served_leaf(&after), leaf("leaf-pkcs8.pem"));
    assert_eq!(
        open.send_request(effe_tests::get_h1("/"))
            .await
            .unwrap()
            .status(),
        200,
        "old connection dropped"
    );

    // A bad pair is refused; the current one stays.
    std::fs::copy(pki("leaf-rsa.key"), &key).unwrap();
    host.signal("HUP");
    host.wait_stderr(|s| s.contains("reload refused"));
    let still = connect(host.addr, client(&["h2"], None)).await.unwrap();
    assert_eq!(served_leaf(&still), leaf("leaf-pkcs8.pem"));
    assert_eq!(
        open.send_request(effe_tests::get_h1("/"))
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_accepts_known_clients_and_refuses_others() {
    let host = https("hello", "chain-ec.pem", "leaf-ec.key")
        .args(["--tls-client-ca".as_ref(), pki("ca.pem").as_os_str()])
        .spawn();
    let stream = connect(host.addr, client(&["h2"], Some("client")))
        .await
        .unwrap();
    let reply = send_on(stream, host.addr, Proto::Http2, get("/")).await;
    assert_eq!(reply.status, 200);

    for who in [None, Some("other-client")] {
        // TLS 1.3 clients learn of the refusal on their first read, after the handshake.
        let refused = match connect(host.addr, client(&["http/1.1"], who)).await {
            Err(_) => true,
            Ok(mut stream) => {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let _ = stream.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
                let mut buf = [0u8; 64];
                !matches!(stream.read(&mut buf).await, Ok(n) if n > 0)
            }
        };
        assert!(refused, "client {who:?} was let in");
    }
}

/// `GET /client` of the fixture-response effe (what it learns of its client), carrying the
/// `effe-client-*` headers a client might forge, and with `filler` more headers than the host
/// keeps on its stack (its other path).
fn forged_client_request(filler: bool) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    let mut req = get("/client");
    let headers = req.headers_mut();
    headers.insert("effe-client-subject", "CN=forged".parse().unwrap());
    headers.insert("effe-client-cert", "MAMCAQE=".parse().unwrap());
    if filler {
        for i in 0..30 {
            let name = http::HeaderName::try_from(format!("x-filler-{i}")).unwrap();
            headers.insert(name, "1".parse().unwrap());
        }
    }
    req
}

/// Sends `req` on a new TLS connection offering `alpn` and presenting client certificate `who`.
async fn over_tls(
    host: &Host,
    alpn: &[&str],
    who: Option<&str>,
    req: http::Request<http_body_util::Full<bytes::Bytes>>,
) -> (Proto, effe_tests::Reply) {
    let exchange = async {
        let stream = connect(host.addr, client(alpn, who))
            .await
            .expect("handshake");
        let proto = negotiated(&stream);
        (proto, send_on(stream, host.addr, proto, req).await)
    };
    tokio::time::timeout(effe_tests::PATIENCE, exchange)
        .await
        .expect("an answer in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_effe_reads_the_subject_and_certificate_of_a_mutual_tls_client() {
    let der: String = effe_tests::tls::certs("client.pem")[0]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let expected = format!("subject CN=effe-test-client\ncert {der}\ncopies 2\n");
    // Each way a request reaches Run: on a blocking thread with a deadline, without one, and
    // inline (the fast path).
    for call in [&[][..], &["--timeout", "0"], &["--call-mode", "inline"]] {
        let host = https("fixture-response", "chain-ec.pem", "leaf-ec.key")
            .args(["--tls-client-ca".as_ref(), pki("ca.pem").as_os_str()])
            .args(call)
            .spawn();
        for (alpn, proto) in [(["h2"], Proto::Http2), (["http/1.1"], Proto::Http1)] {
            // The client's own copies give way to the host's, whichever path the headers take.
            for filler in [false, true] {
                let req = forged_client_request(filler);
                let (got, reply) = over_tls(&host, &alpn, Some("client"), req).await;
                assert_eq!(got, proto);
                assert_eq!(
                    (reply.status, reply.text()),
                    (200, expected.clone()),
                    "{call:?} {proto:?}, filler {filler}"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_tell_the_effe_who_it_is() {
    const TOLD_NOTHING: &str = "subject -\ncert -\ncopies 0\n";
    let plain = HostCmd::new("fixture-response").spawn();
    let tls = https("fixture-response", "chain-ec.pem", "leaf-ec.key").spawn();
    for (proto, alpn) in [(Proto::Http1, "http/1.1"), (Proto::Http2, "h2")] {
        for filler in [false, true] {
            let reply = effe_tests::send(plain.addr, proto, forged_client_request(filler)).await;
            assert_eq!(
                (reply.status, reply.text().as_str()),
                (200, TOLD_NOTHING),
                "cleartext {proto:?}, filler {filler}"
            );
            let req = forged_client_request(filler);
            let (_, reply) = over_tls(&tls, &[alpn], None, req).await;
            assert_eq!(
                (reply.status, reply.text().as_str()),
                (200, TOLD_NOTHING),
                "TLS {proto:?}, filler {filler}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_holds_up_no_other_handshake() {
    let host = https("hello", "chain-ec.pem", "leaf-ec.key")
        .args(["--tls-handshake-timeout", "1s", "--threads", "1"])
        .spawn();
    let mut silent = std::net::TcpStream::connect(host.addr).unwrap();
    // Connected and accepted, never a byte: others are served meanwhile.
    for _ in 0..3 {
        let (_, reply) = hello_over_tls(&host, &["h2"]).await;
        assert_eq!(reply.status, 200);
    }
    // And the silent one is dropped at the handshake timeout.
    silent
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut buf = [0u8; 1];
    assert_eq!(silent.read(&mut buf).unwrap(), 0, "closed by the host");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fetch_effe_calls_an_https_upstream_trusting_ssl_cert_file() {
    let upstream = https("hello", "chain-ec.pem", "leaf-ec.key").spawn();
    let url = format!("https://localhost:{}/", upstream.addr.port());
    let fetch = HostCmd::new("fetch")
        .env("FETCH_URL", &url)
        .env("SSL_CERT_FILE", pki("ca.pem"))
        .spawn();
    let reply = fetch.get("/").await;
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (200, "Hello from effe")
    );

    // Trusting another CA only: the upstream's certificate is refused, and the client is told.
    let distrustful = HostCmd::new("fetch")
        .env("FETCH_URL", &url)
        .env("SSL_CERT_FILE", pki("other-ca.pem"))
        .spawn();
    let reply = distrustful.get("/").await;
    assert_eq!(reply.status, 502);
    assert!(reply.text().contains("UnknownIssuer"), "{}", reply.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_cipher_suite_order_wins() {
    use rustls::crypto::ring::cipher_suite::*;
    let host = https("hello", "chain-ec.pem", "leaf-ec.key").spawn();
    for (client_order, version) in [
        (
            vec![
                TLS13_CHACHA20_POLY1305_SHA256,
                TLS13_AES_256_GCM_SHA384,
                TLS13_AES_128_GCM_SHA256,
            ],
            &rustls::version::TLS13,
        ),
        (
            vec![
                TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
                TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            ],
            &rustls::version::TLS12,
        ),
    ] {
        let provider = rustls::crypto::CryptoProvider {
            cipher_suites: client_order,
            ..rustls::crypto::ring::default_provider()
        };
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(effe_tests::tls::certs("ca.pem"));
        let config = rustls::ClientConfig::builder_with_provider(provider.into())
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let stream = connect(host.addr, config.into()).await.unwrap();
        let suite = stream
            .get_ref()
            .1
            .negotiated_cipher_suite()
            .unwrap()
            .suite();
        let expected = if version == &rustls::version::TLS13 {
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
        } else {
            rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        };
        assert_eq!(suite, expected, "{version:?}");
    }
}

/// A connection accepted before SIGTERM whose TLS handshake only starts during the drain.
async fn handshake_during_the_drain(alpn: &[&str]) {
    let host = https("hello", "chain-ec.pem", "leaf-ec.key")
        .args(["--shutdown-timeout", "20s"])
        .env("EFFE_LOG", "info,effe_host::server=debug")
        .spawn();
    let tcp = tokio::net::TcpStream::connect(host.addr).await.unwrap();
    // Accepted by the host (not just queued by the kernel, which a closing listener resets).
    let me = tcp.local_addr().unwrap().to_string();
    host.wait_stderr(|s| s.contains(&format!("accepted peer={me}")));
    host.sigterm();
    host.wait_stderr(|s| s.contains("shutting down"));
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let stream = tokio_rustls::TlsConnector::from(client(alpn, None))
        .connect(name, tcp)
        .await
        .expect("handshake during the drain");
    let proto = negotiated(&stream);
    let reply = send_on(stream, host.addr, proto, get("/")).await;
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (200, "Hello from effe")
    );
    if proto == Proto::Http1 {
        assert_eq!(reply.headers["connection"], "close");
    }
    let (status, stderr) = host.wait();
    assert!(status.success(), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_still_in_its_handshake_at_sigterm_is_served_over_http1() {
    handshake_during_the_drain(&["http/1.1"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_still_in_its_handshake_at_sigterm_is_served_over_h2() {
    handshake_during_the_drain(&["h2"]).await;
}
