//! The HTTP/1.x wire corpus: raw requests, byte for byte, to the real host, each with what RFC
//! 9110/9112 require of a server (where they leave a choice: what nginx and Envoy do, and
//! docs/http-rules.md). One host per table; every case on its own connection, all at once; a
//! table reports every case that differs, not only the first.

use std::net::SocketAddr;
use std::time::Duration;

use effe_tests::{Host, HostCmd};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a case waits for more bytes before it takes the connection as kept open. The host
/// closes an idle connection at its `--header-read-timeout`, twice this; a stalled body gets 408
/// at its `--body-read-timeout`, well within it.
const WINDOW: Duration = Duration::from_millis(2500);

fn host(plugin: &str) -> Host {
    HostCmd::new(plugin)
        .args(["--header-read-timeout", "5s", "--body-read-timeout", "1s"])
        .args(["--max-body-size", "1KiB"])
        .spawn()
}

/// One thing a case does on its connection.
enum Step {
    Send(Vec<u8>),
    /// A pause, so that what follows comes in a read of its own (nothing tells the client
    /// that the host has read what came before).
    Pause,
    /// Wait for a response (`100 Continue`) before going on.
    AwaitResponse,
    /// Shut down the client's sending side (a half-close: the answer must still come).
    Shutdown,
}

fn send(bytes: impl AsRef<[u8]>) -> Step {
    Step::Send(bytes.as_ref().to_vec())
}

struct Case {
    name: &'static str,
    steps: Vec<Step>,
    expect: Expect,
}

fn case(name: &'static str, bytes: impl AsRef<[u8]>, expect: Expect) -> Case {
    steps(name, vec![send(bytes)], expect)
}

fn steps(name: &'static str, steps: Vec<Step>, expect: Expect) -> Case {
    Case {
        name,
        steps,
        expect,
    }
}

/// What the client must get.
struct Expect {
    /// Every response's status in order, interim ones included.
    statuses: Vec<u16>,
    /// Whether the host closes the connection after them (or keeps it open).
    closed: bool,
    /// Of the last response: headers (`None`: absent), body, status-line version...
    headers: Vec<(&'static str, Option<&'static str>)>,
    body: Option<&'static str>,
    version: Option<&'static str>,
    /// ... and what the echo effe says it saw: a JSON pointer into its answer, or `header:NAME`
    /// (the values of header NAME, in order), or `hex:NAME` (the same in hex).
    saw: Vec<(&'static str, Value)>,
}

fn answers(statuses: &[u16], closed: bool) -> Expect {
    Expect {
        statuses: statuses.to_vec(),
        closed,
        headers: Vec::new(),
        body: None,
        version: None,
        saw: Vec::new(),
    }
}

fn open(status: u16) -> Expect {
    answers(&[status], false)
}

fn closed(status: u16) -> Expect {
    answers(&[status], true)
}

/// One 200 from the echo effe on a connection kept open, the effe having seen `fields`.
fn saw<const N: usize>(fields: [(&'static str, Value); N]) -> Expect {
    Expect {
        saw: fields.into(),
        ..open(200)
    }
}

fn saw_body(body: &str) -> Expect {
    saw([("/body", json!(body))])
}

impl Expect {
    fn then_closed(mut self) -> Self {
        self.closed = true;
        self
    }

    fn header(mut self, name: &'static str, value: Option<&'static str>) -> Self {
        self.headers.push((name, value));
        self
    }

    fn body(mut self, body: &'static str) -> Self {
        self.body = Some(body);
        self
    }

    fn version(mut self, version: &'static str) -> Self {
        self.version = Some(version);
        self
    }

    fn and_saw(mut self, key: &'static str, value: Value) -> Self {
        self.saw.push((key, value));
        self
    }
}

/// `GET target HTTP/1.1`, `host: x`, `fields` (each line with its CRLF), the empty line.
fn get(target: &str, fields: &str) -> String {
    format!("GET {target} HTTP/1.1\r\nhost: x\r\n{fields}\r\n")
}

/// `POST / HTTP/1.1`, `host: x`, `fields`, the empty line, then `rest`.
fn post(fields: &str, rest: &str) -> String {
    format!("POST / HTTP/1.1\r\nhost: x\r\n{fields}\r\n{rest}")
}

const HELLO_CHUNKED: &str = "5\r\nhello\r\n0\r\n\r\n";

/// `hello`, chunked, under the field line `te` (with its CRLF).
fn chunked(te: &str) -> String {
    post(te, HELLO_CHUNKED)
}

/// `transfer-encoding: chunked`, as a field line.
const TE: &str = "transfer-encoding: chunked\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framing_and_smuggling() {
    run(&host("echo"), framing_and_smuggling_cases()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_and_lines() {
    run(&host("echo"), heads_and_lines_cases()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_management() {
    run(&host("echo"), connection_management_cases()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_framing() {
    run(&host("fixture-response"), response_framing_cases()).await;
}

#[rustfmt::skip]
fn framing_and_smuggling_cases() -> Vec<Case> {
    vec![
        // RFC 9112 §6.1, §6.3: Content-Length beside Transfer-Encoding may be smuggling: the
        // server MAY refuse it or read the body as chunked, and MUST close after it. hyper does
        // the second and drops the Content-Length (docs/http-rules.md: where we differ from
        // nginx and Envoy, which refuse it); nothing after the chunked body is read.
        case("cl-then-te", post(&format!("content-length: 5\r\n{TE}"), "0\r\n\r\n"),
            saw([("/body", json!("")), ("header:content-length", json!([]))]).then_closed()),
        case("te-then-cl", post(&format!("{TE}content-length: 5\r\n"), "0\r\n\r\n"),
            saw([("/body", json!("")), ("header:content-length", json!([]))]).then_closed()),
        case("cl-te-smuggled-request",
            post(&format!("content-length: 6\r\n{TE}"), "0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: x\r\n\r\n"),
            saw([("/body", json!(""))]).then_closed()),
        case("te-cl-smuggled-request",
            post(&format!("{TE}content-length: 3\r\n"), "5\r\nhello\r\n0\r\n\r\n"),
            saw([("/body", json!("hello"))]).then_closed()),
        // RFC 9112 §6.3: chunked not the final coding of a request: 400, close. §6.1: a coding
        // the server does not know: 501 (the plan), close; on HTTP/1.0, faulty framing. §7:
        // coding names are case-insensitive. RFC 9110 §5.5: OWS around a value is not part of
        // it; §5.3: field lines of one name make one list. RFC 9112 §5.1: whitespace before the
        // colon, MUST 400.
        case("te-xchunked", chunked("transfer-encoding: xchunked\r\n"), closed(400)),
        case("te-leading-spaces", chunked("transfer-encoding:   chunked\r\n"), saw_body("hello")),
        case("te-tab-before-value", chunked("transfer-encoding:\tchunked\r\n"), saw_body("hello")),
        case("te-trailing-space", chunked("transfer-encoding: chunked \r\n"), saw_body("hello")),
        case("te-uppercase", chunked("transfer-encoding: CHUNKED\r\n"), saw_body("hello")),
        case("te-chunked-identity", chunked("transfer-encoding: chunked, identity\r\n"), closed(400)),
        case("te-identity-chunked", chunked("transfer-encoding: identity, chunked\r\n"), closed(501)),
        case("te-gzip-chunked", chunked("transfer-encoding: gzip, chunked\r\n"), closed(501)),
        case("te-space-before-colon", chunked("transfer-encoding : chunked\r\n"), closed(400)),
        case("te-split-chunked-then-identity",
            chunked("transfer-encoding: chunked\r\ntransfer-encoding: identity\r\n"), closed(400)),
        case("te-split-gzip-then-chunked",
            chunked("transfer-encoding: gzip\r\ntransfer-encoding: chunked\r\n"), closed(501)),
        case("te-empty", post("transfer-encoding:\r\n", "hello"), closed(400)),
        case("te-on-http10", format!("POST / HTTP/1.0\r\n{TE}\r\n{HELLO_CHUNKED}"), closed(400)),
        // RFC 9112 §6.3: a Content-Length that is not 1*DIGIT, or several that differ: 400,
        // close. RFC 9110 §8.6 lets identical repeats count as one or be refused: hyper counts
        // repeated lines as one and refuses a list (nginx and Envoy refuse both). RFC 9110
        // §15.5.14: over the limit, 413 (the body is unread: close). docs/http-rules.md: a
        // body that stalls gets 408, close.
        case("cl-repeated-same", post("content-length: 5\r\ncontent-length: 5\r\n", "hello"), saw_body("hello")),
        case("cl-list-same", post("content-length: 5, 5\r\n", "hello"), closed(400)),
        case("cl-repeated-differ", post("content-length: 5\r\ncontent-length: 6\r\n", "hello!"), closed(400)),
        case("cl-list-differ", post("content-length: 5, 6\r\n", "hello!"), closed(400)),
        case("cl-plus", post("content-length: +5\r\n", "hello"), closed(400)),
        case("cl-minus", post("content-length: -5\r\n", "hello"), closed(400)),
        case("cl-hex", post("content-length: 0x5\r\n", "hello"), closed(400)),
        case("cl-inner-space", post("content-length: 1 0\r\n", "helloworld"), closed(400)),
        case("cl-empty", post("content-length:\r\n", "hello"), closed(400)),
        case("cl-20-digits", post("content-length: 99999999999999999999\r\n", "hello"), closed(400)),
        case("cl-ows", post("content-length: \t5 \r\n", "hello"), saw_body("hello")),
        case("cl-leading-zeros", post("content-length: 0005\r\n", "hello"), saw_body("hello")),
        case("cl-zero", post("content-length: 0\r\n", ""), saw([("/body_len", json!(0))])),
        case("cl-on-get", "GET / HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello",
            saw([("/method", json!("GET")), ("/body", json!("hello"))])),
        case("cl-over-limit-unsent", post("content-length: 1000000000000\r\n", "hello"), closed(413)),
        case("cl-body-stalls", post("content-length: 10\r\n", "hello"), closed(408)),
        // RFC 9112 §7.1: chunk-size is 1*HEXDIG; CRLF ends the size line and the data (a bare
        // LF may end only a start-line or field line, §2.2); then the last chunk, a trailer
        // section (§7.1.2), CRLF. §7.1.1: BWS around extensions; the server limits their length
        // (4xx). An invalid chunk: 400, close; an incomplete one: 408, close.
        case("chunked", chunked(TE), saw_body("hello")),
        case("chunked-two-chunks-uppercase-hex", post(TE, "2\r\nhe\r\nA\r\nllo world!\r\n0\r\n\r\n"),
            saw_body("hello world!")),
        case("chunk-size-not-hex", post(TE, "z\r\nhello\r\n0\r\n\r\n"), closed(400)),
        case("chunk-size-negative", post(TE, "-5\r\nhello\r\n0\r\n\r\n"), closed(400)),
        case("chunk-size-0x", post(TE, "0x5\r\nhello\r\n0\r\n\r\n"), closed(400)),
        case("chunk-size-overflow", post(TE, "10000000000000005\r\nhello\r\n0\r\n\r\n"), closed(400)),
        case("chunk-size-missing", post(TE, "\r\nhello\r\n0\r\n\r\n"), closed(400)),
        case("chunk-size-leading-space", post(TE, " 5\r\nhello\r\n0\r\n\r\n"), closed(400)),
        case("chunk-size-bare-lf", post(TE, "5\nhello\r\n0\r\n\r\n"), closed(400)),
        case("chunk-data-bare-lf", post(TE, "5\r\nhello\n0\r\n\r\n"), closed(400)),
        case("chunk-last-bare-lf", post(TE, "5\r\nhello\r\n0\n\n"), closed(400)),
        case("chunk-data-without-crlf", post(TE, "5\r\nhelloX0\r\n\r\n"), closed(400)),
        case("chunk-data-longer-than-size", post(TE, "3\r\nhello\r\n0\r\n\r\n"), closed(400)),
        case("chunk-size-larger-than-data", post(TE, "10\r\nhello\r\n0\r\n\r\n"), closed(408)),
        case("chunk-no-last-chunk", post(TE, "5\r\nhello\r\n"), closed(408)),
        case("chunk-ext", post(TE, "5;name=value\r\nhello\r\n0\r\n\r\n"), saw_body("hello")),
        case("chunk-ext-bws-quoted", post(TE, "5 ; a = \"b c\"\r\nhello\r\n0\r\n\r\n"), saw_body("hello")),
        case("chunk-ext-20k", post(TE, &format!("5;a={}\r\nhello\r\n0\r\n\r\n", "x".repeat(20_000))),
            closed(400)),
        case("chunk-ext-bare-lf", post(TE, "5;a=b\nhello\r\n0\r\n\r\n"), closed(400)),
        case("chunk-ext-bare-cr", post(TE, "5;a=b\rc\r\nhello\r\n0\r\n\r\n"), closed(400)),
        case("chunked-trailer", post(TE, "5\r\nhello\r\n0\r\nx-t: v\r\n\r\n"), saw_body("hello")),
        case("chunked-trailer-without-colon", post(TE, "5\r\nhello\r\n0\r\nbad trailer\r\n\r\n"),
            closed(400)),
    ]
}

#[rustfmt::skip]
fn heads_and_lines_cases() -> Vec<Case> {
    let huge = "a".repeat(70_000);
    let hundred: String = (1..100).map(|i| format!("x-h-{i}: v\r\n")).collect();
    let long_path = format!("/{}", &huge[..7999]);
    vec![
        // RFC 9112 §2.2: a bare LF MAY end a start-line or field line (hyper and nginx take
        // it); a bare CR makes its element invalid: 400. A server SHOULD ignore an empty line
        // before the request-line. Whitespace before the first field line: 400, or the line
        // ignored (and then Host is missing: 400). §5.2: obs-fold: 400 (nginx), or SP.
        case("bare-lf-line-ends", "GET /lf HTTP/1.1\nhost: x\n\n", saw([("/path", json!("/lf"))])),
        case("bare-lf-after-request-line", "GET /lf HTTP/1.1\nhost: x\r\n\r\n",
            saw([("/path", json!("/lf"))])),
        case("bare-cr-after-request-line", "GET / HTTP/1.1\rhost: x\r\n\r\n", closed(400)),
        case("bare-cr-in-field-value", get("/", "x-a: b\rc\r\n"), closed(400)),
        case("empty-line-before-request", "\r\nGET /p HTTP/1.1\r\nhost: x\r\n\r\n",
            saw([("/path", json!("/p"))])),
        case("space-before-first-field", "GET / HTTP/1.1\r\n host: x\r\n\r\n", closed(400)),
        case("obs-fold", get("/", "x-a: b\r\n c\r\n"), closed(400)),
        case("obs-fold-tab", get("/", "x-a: b\r\n\tc\r\n"), closed(400)),
        // RFC 9110 §5.1, §5.5: a field name is a token; a value is VCHAR, obs-text, SP, HTAB
        // (OWS around it is not part of it). NUL, CR, LF MUST be refused (or made SP); other
        // controls are not field content: 400. RFC 9112 §5.1: whitespace before the colon,
        // MUST 400.
        case("nul-in-field-name", get("/", "x-\0a: b\r\n"), closed(400)),
        case("nul-in-field-value", get("/", "x-a: b\0c\r\n"), closed(400)),
        case("del-in-field-name", get("/", "x-\x7fa: b\r\n"), closed(400)),
        case("del-in-field-value", get("/", "x-a: b\x7fc\r\n"), closed(400)),
        case("esc-in-field-name", get("/", "x\x1ba: b\r\n"), closed(400)),
        case("ctl-in-field-value", get("/", "x-a: b\x01c\r\n"), closed(400)),
        case("vt-before-te-value", chunked("transfer-encoding:\x0bchunked\r\n"), closed(400)),
        case("obs-text-in-field-value", &b"GET / HTTP/1.1\r\nhost: x\r\nx-a: caf\xc3\xa9 \xff\r\n\r\n"[..],
            saw([("hex:x-a", json!(["636166c3a920ff"]))])),
        case("htab-in-field-value", get("/", "x-a: a\tb\r\n"), saw([("header:x-a", json!(["a\tb"]))])),
        case("ows-around-field-value", get("/", "x-a: \t v \t\r\n"), saw([("header:x-a", json!(["v"]))])),
        case("empty-field-value", get("/", "x-a:\r\n"), saw([("header:x-a", json!([""]))])),
        case("field-name-any-case", get("/", "X-Mixed-Case: v\r\n"),
            saw([("header:x-mixed-case", json!(["v"]))])),
        case("space-before-colon", get("/", "x-a : b\r\n"), closed(400)),
        case("tab-before-colon", get("/", "x-a\t: b\r\n"), closed(400)),
        case("empty-field-name", get("/", ": b\r\n"), closed(400)),
        case("field-without-colon", get("/", "x-a b\r\n"), closed(400)),
        case("non-token-field-name", get("/", "x@a: b\r\n"), closed(400)),
        // RFC 9112 §3: method SP request-target SP HTTP-version, single SPs (the leniency the
        // RFC allows invites smuggling: nginx and Envoy refuse it); a method longer than any the
        // server implements SHOULD get 501, a target longer than it parses MUST get 414;
        // request-lines of 8000 octets are RECOMMENDED. hyper's head buffer (--max-header-size)
        // fills before it looks at the method or target: 431 (docs/http-rules.md). RFC 9110
        // §9.1: a method is a case-sensitive token, passed on as sent.
        case("method-lowercase", "get / HTTP/1.1\r\nhost: x\r\n\r\n", saw([("/method", json!("get"))])),
        case("method-unknown-token", "BREW /pot HTTP/1.1\r\nhost: x\r\n\r\n", saw([("/method", json!("BREW"))])),
        case("method-non-token", "GE(T / HTTP/1.1\r\nhost: x\r\n\r\n", closed(400)),
        case("method-missing", " / HTTP/1.1\r\nhost: x\r\n\r\n", closed(400)),
        case("method-70k", format!("{} / HTTP/1.1\r\nhost: x\r\n\r\n", huge.to_uppercase()), closed(431)),
        case("tab-separator", "GET\t/ HTTP/1.1\r\nhost: x\r\n\r\n", closed(400)),
        case("double-space-separator", "GET  / HTTP/1.1\r\nhost: x\r\n\r\n", closed(400)),
        case("target-70k", get(&format!("/{huge}"), ""), closed(431)),
        case("target-8000", get(&long_path, ""), saw([("/path", json!(long_path))])),
        // RFC 9112 §3.2, RFC 3986: a target is URI characters (no controls, spaces, raw
        // non-ASCII, bad percent-encodings), and origin-form starts with `/` and has no
        // fragment: an invalid request-line SHOULD get 400. The `http` crate takes raw UTF-8
        // (as nginx does) and drops a fragment before the host sees it (docs/http-rules.md).
        // What is valid reaches the effe as sent (dot-segments included: the effe routes).
        case("nul-in-target", "GET /a\0b HTTP/1.1\r\nhost: x\r\n\r\n", closed(400)),
        case("del-in-target", "GET /a\x7fb HTTP/1.1\r\nhost: x\r\n\r\n", closed(400)),
        case("ctl-in-target", "GET /a\x01b HTTP/1.1\r\nhost: x\r\n\r\n", closed(400)),
        case("space-in-target", "GET /a b HTTP/1.1\r\nhost: x\r\n\r\n", closed(400)),
        case("obs-text-in-target", &b"GET /caf\xc3\xa9 HTTP/1.1\r\nhost: x\r\n\r\n"[..],
            saw([("/path", json!("/caf\u{e9}"))])),
        case("invalid-utf8-in-target", &b"GET /caf\xff HTTP/1.1\r\nhost: x\r\n\r\n"[..], closed(400)),
        case("bad-percent-encoding", get("/a%zz", ""), closed(400)),
        case("fragment", get("/p#f", ""), saw([("/path", json!("/p"))])),
        case("target-without-slash", get("p", ""), closed(400)),
        case("percent-encoded", get("/a%20b%2F?x=%41&y", ""),
            saw([("/path", json!("/a%20b%2F")), ("/query", json!("x=%41&y"))])),
        case("dot-segments-as-sent", get("/a/../../b", ""), saw([("/path", json!("/a/../../b"))])),
        case("empty-query", get("/p?", ""), saw([("/path", json!("/p")), ("/query", json!(""))])),
        // RFC 9110 §2.5: a higher minor version SHOULD be served as the highest one known
        // (1.1); a major version not supported MAY get 505 (nginx). httparse knows 1.0 and 1.1
        // only: 400 for both (docs/http-rules.md). RFC 9112 §2.3: HTTP-name is
        // case-sensitive, then DIGIT "." DIGIT.
        case("version-1.2", "GET / HTTP/1.2\r\nhost: x\r\n\r\n", closed(400)),
        case("version-2.0", "GET / HTTP/2.0\r\nhost: x\r\n\r\n", closed(400)),
        case("version-0.9-style", "GET /\r\n\r\n", closed(400)),
        case("version-lowercase", "GET / http/1.1\r\nhost: x\r\n\r\n", closed(400)),
        case("version-without-minor", "GET / HTTP/1\r\nhost: x\r\n\r\n", closed(400)),
        // RFC 9112 §3.2.2: absolute-form: the target's authority replaces Host (the plan),
        // http and https only. §3.2.3: authority-form is CONNECT's, which an origin server
        // refuses: 501 (the plan, as nginx). §3.2.4: asterisk-form is OPTIONS' alone.
        case("absolute-form", "GET http://a.example:8080/p?q HTTP/1.1\r\nhost: other\r\n\r\n",
            saw([("/path", json!("/p")), ("/query", json!("q")), ("header:host", json!(["a.example:8080"]))])),
        case("absolute-form-https-no-path", "GET https://a.example HTTP/1.1\r\nhost: a.example\r\n\r\n",
            saw([("/path", json!("/")), ("header:host", json!(["a.example"]))])),
        case("absolute-form-other-scheme", "GET ftp://a.example/p HTTP/1.1\r\nhost: a.example\r\n\r\n",
            closed(400)),
        case("absolute-form-without-host", "GET http://a.example/p HTTP/1.1\r\n\r\n", closed(400)),
        case("connect-authority-form", "CONNECT a.example:443 HTTP/1.1\r\nhost: a.example:443\r\n\r\n",
            closed(501)),
        case("authority-form-with-get", "GET a.example:443 HTTP/1.1\r\nhost: a.example:443\r\n\r\n",
            closed(400)),
        case("asterisk-with-options", "OPTIONS * HTTP/1.1\r\nhost: x\r\n\r\n",
            saw([("/method", json!("OPTIONS")), ("/path", json!("*"))])),
        case("asterisk-with-get", get("*", ""), closed(400)),
        // RFC 9112 §3.2: HTTP/1.1 needs exactly one Host, a valid `uri-host[:port]` or empty:
        // else 400 (and the host closes, docs/http-rules.md). HTTP/1.0 needs none.
        case("host-missing", "GET / HTTP/1.1\r\n\r\n", closed(400)),
        case("host-repeated-same", "GET / HTTP/1.1\r\nhost: x\r\nhost: x\r\n\r\n", closed(400)),
        case("host-repeated-differ", "GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n", closed(400)),
        case("host-list", "GET / HTTP/1.1\r\nhost: a, b\r\n\r\n", closed(400)),
        case("host-empty", "GET / HTTP/1.1\r\nhost:\r\n\r\n", saw([("header:host", json!([""]))])),
        case("host-userinfo", "GET / HTTP/1.1\r\nhost: u@a\r\n\r\n", closed(400)),
        case("host-port-too-big", "GET / HTTP/1.1\r\nhost: a:99999\r\n\r\n", closed(400)),
        case("host-port-not-digits", "GET / HTTP/1.1\r\nhost: a:8x\r\n\r\n", closed(400)),
        case("host-ipv6", "GET / HTTP/1.1\r\nhost: [::1]:8080\r\n\r\n",
            saw([("header:host", json!(["[::1]:8080"]))])),
        case("host-missing-on-http10", "GET / HTTP/1.0\r\n\r\n",
            saw([("/version", json!("HTTP/1.0"))]).then_closed()),
        // --max-headers (100) and --max-header-size (64 KiB), as the host sets them for hyper:
        // beyond, 431 (RFC 6585 §5), close.
        case("headers-100", get("/", &hundred), open(200)),
        case("headers-101", get("/", &format!("{hundred}x-h-100: v\r\n")), closed(431)),
        case("head-60k", get("/", &format!("x-big: {}\r\n", &huge[..60_000])), open(200)),
        case("head-70k", get("/", &format!("x-big: {huge}\r\n")), closed(431)),
    ]
}

#[rustfmt::skip]
fn connection_management_cases() -> Vec<Case> {
    let expect_5 = "POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n";
    let keep_alive_10 = "GET / HTTP/1.0\r\nconnection: keep-alive\r\n\r\n";
    vec![
        // RFC 9112 §9.3: HTTP/1.1 persists unless "close"; §9.6: after "close" the server MUST
        // NOT process more requests, closes, and SHOULD say "close". HTTP/1.0 persists only
        // with "keep-alive" (Appendix C.2.2), which the server then says.
        case("http11-persists", get("/", ""), open(200)),
        // RFC 9112 §9.6: a client may half-close after its request; the answer still comes
        // (hyper's half_close, on in the host), then the connection closes.
        steps("half-close-after-request", vec![send(get("/", "")), Step::Shutdown], closed(200)),
        case("http11-connection-close", get("/", "connection: close\r\n"),
            closed(200).header("connection", Some("close"))),
        case("connection-close-any-case", get("/", "Connection: CLOSE\r\n"), closed(200)),
        case("connection-close-in-list", get("/", "connection: keep-alive, close\r\n"), closed(200)),
        case("connection-close-second-line", get("/", "connection: keep-alive\r\nconnection: close\r\n"),
            closed(200)),
        case("http10-closes", "GET / HTTP/1.0\r\n\r\n", closed(200)),
        case("http10-keep-alive", keep_alive_10, open(200).header("connection", Some("keep-alive"))),
        case("http10-keep-alive-twice", keep_alive_10.repeat(2), answers(&[200, 200], false)),
        // RFC 9112 §9.3.2: pipelined requests are answered in order; §2.2: an empty line
        // before a request-line is ignored. After a request that cannot be parsed nothing on
        // the connection can be trusted: its 400, then close.
        case("pipelined-two", get("/1", "") + &get("/2", ""),
            answers(&[200, 200], false).and_saw("/path", json!("/2"))),
        case("pipelined-ten", get("/", "").repeat(10), answers(&[200; 10], false)),
        case("pipelined-after-content-length", post("content-length: 5\r\n", "hello") + &get("/2", ""),
            answers(&[200, 200], false).and_saw("/path", json!("/2"))),
        case("pipelined-after-chunked", chunked(TE) + &get("/2", ""),
            answers(&[200, 200], false).and_saw("/path", json!("/2"))),
        case("pipelined-empty-line-between", get("/1", "") + "\r\n" + &get("/2", ""),
            answers(&[200, 200], false).and_saw("/path", json!("/2"))),
        case("pipelined-bad-then-good", get("/", "x a\r\n") + &get("/2", ""), closed(400)),
        case("pipelined-close-then-more", get("/1", "connection: close\r\n") + &get("/2", ""), closed(200)),
        case("pipelined-http10-then-more", "GET /1 HTTP/1.0\r\n\r\n".to_owned() + &get("/2", ""),
            closed(200)),
        case("garbage-after-request", get("/", "") + "xyz\r\n\r\n", answers(&[200, 400], true)),
        // A request in pieces is one request.
        steps("split-writes",
            vec![send("GE"), Step::Pause, send("T /split HTTP/1.1\r\nho"), Step::Pause, send("st: x\r\n\r\n")],
            saw([("/path", json!("/split"))])),
        steps("split-inside-crlf", vec![send("GET /split HTTP/1.1\r\nhost: x\r"), Step::Pause, send("\n\r\n")],
            saw([("/path", json!("/split"))])),
        steps("split-body", vec![send(post("content-length: 5\r\n", "he")), Step::Pause, send("llo")],
            saw_body("hello")),
        // RFC 9110 §10.1.1: to 100-continue, an interim 100 then the final response, or a
        // final response alone (413 for a declared body over the limit, docs/http-rules.md;
        // the body may follow: close). On HTTP/1.0 the expectation MUST be ignored. An unknown
        // expectation MAY get 417: nginx ignores it.
        steps("expect-100-continue", vec![send(expect_5), Step::AwaitResponse, send("hello")],
            answers(&[100, 200], false).and_saw("/body", json!("hello"))),
        steps("expect-100-body-never-sent", vec![send(expect_5)], answers(&[100, 408], true)),
        case("expect-100-over-limit", post("content-length: 4096\r\nexpect: 100-continue\r\n", ""),
            closed(413)),
        case("expect-100-on-http10",
            "POST / HTTP/1.0\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\nhello",
            saw_body("hello").then_closed()),
        case("expect-unknown", get("/", "expect: teapot\r\n"), open(200)),
        // RFC 9110 §15.5.14: a body over the limit: 413; the server MAY close, nginx does.
        case("body-over-limit", post("content-length: 2048\r\n", &"a".repeat(2048)), closed(413)),
        case("chunked-body-over-limit",
            post(TE, &format!("320\r\n{0}\r\n320\r\n{0}\r\n0\r\n\r\n", "a".repeat(800))),
            closed(413)),
        // RFC 9110 §7.8: a server MAY ignore Upgrade (and RFC 9113 §3.1 retired h2c's).
        case("upgrade-h2c-ignored",
            get("/", "connection: upgrade, http2-settings\r\nupgrade: h2c\r\nhttp2-settings: AAMAAABkAAQAAP__\r\n"),
            open(200)),
    ]
}

#[rustfmt::skip]
fn response_framing_cases() -> Vec<Case> {
    let status = |n: u16| get(&format!("/status?{n}"), "");
    let head = |n: u16| format!("HEAD /status?{n} HTTP/1.1\r\nhost: x\r\n\r\n");
    vec![
        // RFC 9112 §6.3: no content after HEAD, 1xx, 204, 304 (the next bytes are the next
        // response). RFC 9110 §9.3.2: HEAD gets GET's fields (Content-Length too, SHOULD).
        // §8.6, RFC 9112 §6.1: no Content-Length or Transfer-Encoding in a 204. RFC 9110
        // §15.3.6: no content in a 205, said by `content-length: 0` (or chunked, or close).
        // RFC 9112 §6.1: no chunked to HTTP/1.0. RFC 9110 §2.5: the server's own version
        // (1.1) on the status line, whatever the request's.
        case("get-200", status(200), open(200).header("content-length", Some("11")).body("status 200\n")),
        case("get-404", status(404), open(404).body("status 404\n")),
        case("head-200", head(200), open(200).header("content-length", Some("11")).body("")),
        case("head-then-get", head(200) + &status(200), answers(&[200, 200], false).body("status 200\n")),
        case("head-404-then-get", head(404) + &status(200), answers(&[404, 200], false)),
        case("get-204", status(204), open(204).header("content-length", None).body("")),
        case("get-204-then-get", status(204) + &status(200), answers(&[204, 200], false)),
        case("get-304-then-get", status(304) + &status(200), answers(&[304, 200], false)),
        case("get-205", status(205), open(205).header("content-length", Some("0")).body("")),
        // RFC 9110 §2.5: the response SHOULD say HTTP/1.1; hyper answers in the request's
        // version (docs/http-rules.md). Either way, no chunked framing for an HTTP/1.0 client.
        case("get-on-http10", "GET /status?200 HTTP/1.0\r\n\r\n",
            closed(200).header("transfer-encoding", None).header("content-length", Some("11")).version("HTTP/1.0")),
    ]
}

/// Runs every case at once, each on its own connection to `host`; fails with every case whose
/// outcome differs from the expected one.
async fn run(host: &Host, cases: Vec<Case>) {
    let total = cases.len();
    let runs: Vec<_> = cases
        .into_iter()
        .map(|case| {
            let addr = host.addr;
            tokio::spawn(async move {
                // Bounded twice over: by WINDOW per wait inside, by this around it all.
                let got = tokio::time::timeout(Duration::from_secs(10), exchange(addr, &case))
                    .await
                    .unwrap_or_else(|_| Got::fault("no outcome within 10 s"));
                (case, got)
            })
        })
        .collect();
    let mut failures = Vec::new();
    for run in runs {
        let (case, got) = run.await.expect("a case panicked");
        let differences = differences(&case.expect, &got);
        if !differences.is_empty() {
            failures.push(format!(
                "{}:\n    {}",
                case.name,
                differences.join("\n    ")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {total} cases differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// What came back on a case's connection.
#[derive(Debug, Default)]
struct Got {
    responses: Vec<Response>,
    closed: bool,
    /// What is wrong with what the host sent (malformed, misframed), or with the exchange.
    fault: Option<String>,
}

impl Got {
    fn fault(why: &str) -> Got {
        Got {
            fault: Some(why.to_owned()),
            ..Got::default()
        }
    }
}

#[derive(Debug)]
struct Response {
    version: String,
    status: u16,
    /// Names lowercased, values as sent.
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

impl Response {
    fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }
}

async fn exchange(addr: SocketAddr, case: &Case) -> Got {
    let head = matches!(case.steps.first(), Some(Step::Send(b)) if b.starts_with(b"HEAD "));
    let Ok(mut tcp) = TcpStream::connect(addr).await else {
        return Got::fault("cannot connect");
    };
    let mut received = Vec::new();
    let mut eof = false;
    for step in &case.steps {
        match step {
            // A failed write is no failure: the host may have answered and closed already (a
            // 431 before the end of a head too large), and what it sent is read below.
            Step::Send(bytes) => {
                if tcp.write_all(bytes).await.is_err() {
                    break;
                }
            }
            Step::Pause => tokio::time::sleep(Duration::from_millis(50)).await,
            Step::Shutdown => {
                let _ = tcp.shutdown().await;
            }
            Step::AwaitResponse => {
                let some = |r: &[u8]| !parse(r, head, false).responses.is_empty();
                eof = read_until(&mut tcp, &mut received, some).await;
                if eof {
                    break;
                }
            }
        }
    }
    if !eof {
        eof = read_until(&mut tcp, &mut received, |_| false).await;
    }
    let mut got = parse(&received, head, eof);
    got.closed = eof;
    got
}

/// Reads until `enough` holds on what came, or nothing more comes for [`WINDOW`]; whether the
/// host closed (a reset counts: the host closing with bytes unread).
async fn read_until(
    tcp: &mut TcpStream,
    buf: &mut Vec<u8>,
    enough: impl Fn(&[u8]) -> bool,
) -> bool {
    while !enough(buf) {
        match tokio::time::timeout(WINDOW, tcp.read_buf(buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
    false
}

/// The responses in `bytes`, read as strictly as RFC 9112 (§4–§7) and RFC 9110 (§6.6.1, §8.6)
/// ask of a server's. The first final one answers a HEAD if `head`; `closed`: the bytes end
/// where the host closed.
fn parse(mut bytes: &[u8], mut head: bool, closed: bool) -> Got {
    let mut got = Got::default();
    while !bytes.is_empty() {
        match response(bytes, head, closed) {
            Ok((resp, rest)) => {
                head &= resp.status < 200;
                got.responses.push(resp);
                bytes = rest;
            }
            Err(fault) => {
                let n = got.responses.len() + 1;
                got.fault = Some(format!("response {n}: {fault}"));
                break;
            }
        }
    }
    got
}

fn find(bytes: &[u8], what: &[u8]) -> Option<usize> {
    bytes.windows(what.len()).position(|w| w == what)
}

fn response(bytes: &[u8], head: bool, closed: bool) -> Result<(Response, &[u8]), String> {
    let end =
        find(bytes, b"\r\n\r\n").ok_or_else(|| format!("incomplete head {}", shown(bytes)))?;
    let lines = crlf_lines(&bytes[..end])?;
    let (version, status) =
        status_line(lines[0]).ok_or_else(|| format!("bad status line {}", shown(lines[0])))?;
    let mut headers = Vec::new();
    for line in &lines[1..] {
        let tchar = |b: &u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b);
        let vchar = |b: &u8| *b == b'\t' || (*b >= b' ' && *b != 0x7f);
        let field = line
            .iter()
            .position(|&b| b == b':')
            .map(|colon| (&line[..colon], line[colon + 1..].trim_ascii()))
            .filter(|(name, value)| {
                !name.is_empty() && name.iter().all(tchar) && value.iter().all(vchar)
            });
        let (name, value) = field.ok_or_else(|| format!("bad field line {}", shown(line)))?;
        headers.push((
            String::from_utf8_lossy(name).to_ascii_lowercase(),
            value.to_vec(),
        ));
    }
    let mut resp = Response {
        version,
        status,
        headers,
        body: Vec::new(),
    };
    let lengths: Vec<&[u8]> = resp.values("content-length").collect();
    let codings: Vec<&[u8]> = resp.values("transfer-encoding").collect();
    if !lengths.is_empty() && !codings.is_empty() {
        return Err("Content-Length and Transfer-Encoding (RFC 9112 §6.2)".into());
    }
    if (status < 200 || status == 204) && !(lengths.is_empty() && codings.is_empty()) {
        return Err(format!(
            "Content-Length or Transfer-Encoding in a {status} (RFC 9110 §8.6)"
        ));
    }
    if (200..500).contains(&status) && resp.values("date").next().is_none() {
        return Err(format!("no Date in a {status} (RFC 9110 §6.6.1)"));
    }
    let rest = &bytes[end + 4..];
    let (body, rest) = if status < 200 || status == 204 || status == 304 || head {
        (Vec::new(), rest)
    } else if !codings.is_empty() {
        if codings.len() != 1 || !codings[0].eq_ignore_ascii_case(b"chunked") {
            return Err(format!("transfer-encoding {codings:?}"));
        }
        dechunk(rest)?
    } else {
        match lengths[..] {
            [] if closed => (rest.to_vec(), &[][..]),
            [] => return Err("no framing, and the connection is open".into()),
            [length] => {
                let n: usize = std::str::from_utf8(length)
                    .ok()
                    .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| format!("content-length {}", shown(length)))?;
                if rest.len() < n {
                    return Err(format!("content-length {n}, {} bytes came", rest.len()));
                }
                (rest[..n].to_vec(), &rest[n..])
            }
            _ => return Err(format!("{} Content-Length fields", lengths.len())),
        }
    };
    resp.body = body;
    Ok((resp, rest))
}

/// The lines of a head, each of which must end in CRLF (RFC 9112 §2.2: no bare CR or LF).
fn crlf_lines(head: &[u8]) -> Result<Vec<&[u8]>, String> {
    let mut lines: Vec<&[u8]> = head.split(|&b| b == b'\n').collect();
    let last = lines.len() - 1;
    for (i, line) in lines.iter_mut().enumerate() {
        let ended = if i < last {
            line.strip_suffix(b"\r")
        } else {
            Some(*line)
        };
        match ended {
            Some(l) if !l.contains(&b'\r') => *line = l,
            _ => return Err(format!("a bare CR or LF in the head {}", shown(head))),
        }
    }
    Ok(lines)
}

/// `HTTP/1.x SP 3DIGIT SP [reason]` (RFC 9112 §4): the version and the status.
fn status_line(line: &[u8]) -> Option<(String, u16)> {
    let rest = line.strip_prefix(b"HTTP/1.")?;
    let (&minor, rest) = rest.split_first()?;
    let rest = rest.strip_prefix(b" ")?;
    let (code, reason) = (rest.get(..3)?, rest.get(3..)?.strip_prefix(b" ")?);
    let reason_ok = reason
        .iter()
        .all(|&b| b == b'\t' || (b >= b' ' && b != 0x7f));
    if !(b"01".contains(&minor) && code.iter().all(u8::is_ascii_digit) && reason_ok) {
        return None;
    }
    let status = std::str::from_utf8(code).ok()?.parse().ok()?;
    Some((format!("HTTP/1.{}", minor as char), status))
}

/// A chunked body (RFC 9112 §7.1) and what follows it.
fn dechunk(mut bytes: &[u8]) -> Result<(Vec<u8>, &[u8]), String> {
    let mut body = Vec::new();
    loop {
        let eol = find(bytes, b"\r\n").ok_or("chunk size line cut short")?;
        let size = std::str::from_utf8(&bytes[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s, 16).ok())
            .ok_or_else(|| format!("chunk size {}", shown(&bytes[..eol])))?;
        bytes = &bytes[eol + 2..];
        if size == 0 {
            // Trailer fields, to the empty line.
            loop {
                let eol = find(bytes, b"\r\n").ok_or("trailer section cut short")?;
                let line = &bytes[..eol];
                bytes = &bytes[eol + 2..];
                if line.is_empty() {
                    return Ok((body, bytes));
                }
            }
        }
        if bytes.len() < size + 2 || &bytes[size..size + 2] != b"\r\n" {
            return Err("chunk data cut short or without CRLF".into());
        }
        body.extend_from_slice(&bytes[..size]);
        bytes = &bytes[size + 2..];
    }
}

/// Bytes as an escaped string, at most 120 characters of it.
fn shown(bytes: &[u8]) -> String {
    let text = bytes.escape_ascii().to_string();
    match text.char_indices().nth(120) {
        Some((cut, _)) => format!("\"{}…\" ({} bytes)", &text[..cut], bytes.len()),
        None => format!("\"{text}\""),
    }
}

/// How `got` differs from `expect`, one line per difference.
fn differences(expect: &Expect, got: &Got) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(fault) = &got.fault {
        out.push(format!("malformed: {fault}"));
    }
    let conn = |closed| if closed { "then closed" } else { "kept open" };
    let statuses: Vec<u16> = got.responses.iter().map(|r| r.status).collect();
    let last = got.responses.last();
    if statuses != expect.statuses || got.closed != expect.closed {
        let body = last.map_or(String::new(), |r| format!(", last body {}", shown(&r.body)));
        out.push(format!(
            "expected {:?} {}, got {statuses:?} {}{body}",
            expect.statuses,
            conn(expect.closed),
            conn(got.closed)
        ));
    }
    let Some(last) = last else {
        return out;
    };
    let mut compare = |what: String, expected: Value, actual: Value| {
        if expected != actual {
            out.push(format!("{what}: expected {expected}, got {actual}"));
        }
    };
    for (name, value) in &expect.headers {
        let actual = last
            .values(name)
            .next()
            .map(|v| String::from_utf8_lossy(v).into_owned());
        compare(format!("header {name}"), json!(value), json!(actual));
    }
    if let Some(body) = expect.body {
        compare(
            "body".into(),
            json!(body),
            json!(String::from_utf8_lossy(&last.body)),
        );
    }
    if let Some(version) = expect.version {
        compare("version".into(), json!(version), json!(last.version));
    }
    if !expect.saw.is_empty() {
        let echo: Value = serde_json::from_slice(&last.body).unwrap_or(Value::Null);
        for (key, value) in &expect.saw {
            compare(
                format!("the effe saw {key}"),
                value.clone(),
                seen(&echo, key),
            );
        }
    }
    out
}

/// In the echo effe's answer: a JSON pointer, or the values of a header (`header:NAME`,
/// `hex:NAME`).
fn seen(echo: &Value, key: &str) -> Value {
    let values = |name: &str, field: &str| -> Value {
        let headers = echo["headers"].as_array().map_or(&[][..], Vec::as_slice);
        headers
            .iter()
            .filter(|h| h["name"] == name)
            .map(|h| h[field].clone())
            .collect()
    };
    if let Some(name) = key.strip_prefix("header:") {
        values(name, "value")
    } else if let Some(name) = key.strip_prefix("hex:") {
        values(name, "value_hex")
    } else {
        echo.pointer(key).cloned().unwrap_or(Value::Null)
    }
}
