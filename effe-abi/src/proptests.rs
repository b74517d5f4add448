//! Property tests of the boundary, in process: a request view crosses `run` (the baseline entry
//! point and `run@2`, as the host calls them) intact, and whatever an effe writes, valid or not,
//! comes out of the host's sink as written or is refused with an error, never a panic.
//!
//! The probe effe goes through the shims `export_effe!` instantiates (`lib_header`, the root
//! module, the interfaces table), with no dynamic loading (host/tests/abi_roundtrip.rs loads a
//! real `.so`). Its `run` reads what to write from a thread-local script and records what it saw and
//! what each write returned: `run` is called on the test's own thread.

use std::cell::RefCell;
use std::sync::OnceLock;

use abi_stable::std_types::RResult;
use http::{HeaderName, HeaderValue};
use proptest::prelude::*;

use crate::export::{interfaces, lib_header, Exported};
use crate::interfaces::{EffeInterfaces, ExportedInterfaces, RunV2};
use crate::{
    Effe, EffeInfo, EffeModuleRef, Error, Header, HttpVersion, RawContext, Request, RequestParts,
    ResponseBuffer, ResponseWriter, MAX_RESPONSE_HEADER_BYTES,
};

/// One write of the effe.
#[derive(Debug, Clone)]
enum Op {
    Status(u16),
    Header(String, Vec<u8>),
    SetHeader(String, Vec<u8>),
    Body(Vec<u8>),
}

/// The request as the effe saw it, copied out of the call.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    method: String,
    target: String,
    path: String,
    query: Option<String>,
    version: HttpVersion,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    peer_addr: String,
    request_id: String,
}

thread_local! {
    static SCRIPT: RefCell<Vec<Op>> = const { RefCell::new(Vec::new()) };
    /// What the effe saw, and whether each write was accepted.
    static REPORT: RefCell<Option<(Seen, Vec<bool>)>> = const { RefCell::new(None) };
}

struct Probe;

impl Effe for Probe {
    type Context = ();

    fn init() -> Result<Self, Error> {
        Ok(Probe)
    }

    fn start(&self) -> Result<(), Error> {
        Ok(())
    }

    fn run(
        &self,
        _: &mut (),
        req: &Request<'_>,
        resp: &mut ResponseWriter<'_>,
    ) -> Result<(), Error> {
        let seen = Seen {
            method: req.method().to_owned(),
            target: req.target().to_owned(),
            path: req.path().to_owned(),
            query: req.query().map(str::to_owned),
            version: req.version(),
            headers: req
                .headers()
                .iter()
                .map(|h| (h.name().to_owned(), h.value().to_vec()))
                .collect(),
            body: req.body().to_vec(),
            peer_addr: req.peer_addr().to_owned(),
            request_id: req.request_id().to_owned(),
        };
        let accepted = SCRIPT.with(|script| {
            script
                .borrow()
                .iter()
                .map(|op| match op {
                    Op::Status(code) => resp.status(*code).is_ok(),
                    Op::Header(name, value) => resp.header(name, value).is_ok(),
                    Op::SetHeader(name, value) => resp.set_header(name, value).is_ok(),
                    Op::Body(bytes) => {
                        resp.body(bytes);
                        true
                    }
                })
                .collect()
        });
        REPORT.with(|report| *report.borrow_mut() = Some((seen, accepted)));
        Ok(())
    }
}

// By hand rather than with `export_effe!`: the unit-test binary already exports one effe
// (interfaces.rs), and the symbols are not what is tested here.
impl Exported for Probe {
    fn slot() -> &'static OnceLock<Self> {
        static SLOT: OnceLock<Probe> = OnceLock::new();
        &SLOT
    }
    const INFO: EffeInfo = EffeInfo::new("probe", "0.0.0", "", false);
}

static PROBE_INTERFACES: ExportedInterfaces = interfaces::<Probe>();

/// How the host reaches the probe: its root module and its `run@2`.
struct Loaded {
    module: EffeModuleRef,
    run_v2: &'static RunV2,
}

fn loaded() -> &'static Loaded {
    static LOADED: OnceLock<Loaded> = OnceLock::new();
    LOADED.get_or_init(|| {
        let module = lib_header::<Probe>()
            .init_root_module::<EffeModuleRef>()
            .expect("the probe's root module");
        // Not `init`: it installs the effe's quiet panic hook, process-wide here, which would
        // hide the harness's own failure messages.
        assert!(Probe::slot().set(Probe).is_ok());
        let exported = EffeInterfaces {
            exported: Some(&PROBE_INTERFACES),
        };
        let run_v2 = exported.get::<RunV2>().unwrap().expect("run@2 offered");
        Loaded { module, run_v2 }
    })
}

/// Runs the probe on `req` with `script`, through `run@2` or the baseline `run`, as the host
/// does: what it saw, what each write returned, and the host's buffer.
fn call(req: &Request<'_>, script: Vec<Op>, baseline: bool) -> (Seen, Vec<bool>, ResponseBuffer) {
    let loaded = loaded();
    SCRIPT.with(|s| *s.borrow_mut() = script);
    let mut ctx: RawContext = (loaded.module.start())().unwrap();
    let mut out = ResponseBuffer::new();
    let result = if baseline {
        (loaded.module.run())(&mut ctx, req, &mut out.raw_writer())
    } else {
        (loaded.run_v2.run)(&mut ctx, req, out.host_call())
    };
    assert!(matches!(result, RResult::ROk(())), "run failed: {result:?}");
    assert!((loaded.module.stop())(ctx).is_ok());
    let (seen, accepted) = REPORT.with(|r| r.borrow_mut().take()).expect("run ran");
    (seen, accepted, out)
}

// ---- Generators ----

const TCHAR: &str = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";

/// A token (RFC 9110 §5.6.2): what methods and header names are made of.
fn token(max: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(proptest::sample::select(TCHAR.as_bytes()), 1..=max)
        .prop_map(|b| String::from_utf8(b).unwrap())
}

/// A valid field value: VCHAR, SP, HTAB and obs-text (0x80–0xFF), so often not UTF-8.
fn field_value() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![
        4 => 0x20u8..=0x7e,
        2 => 0x80u8..=0xff,
        1 => Just(b'\t'),
    ];
    proptest::collection::vec(byte, 0..48)
}

/// A path and query the `http` crate accepts, as hyper hands it to the host: mostly RFC 3986
/// characters, some non-ASCII, now and then any printable ASCII (which `http` may refuse).
fn target() -> impl Strategy<Value = String> {
    const PCHAR: &str = "abcxyzABCXYZ0129-._~!$&'()*+,;=:@%/?#";
    let ch = prop_oneof![
        12 => proptest::sample::select(PCHAR.chars().collect::<Vec<_>>()),
        2 => proptest::char::range('\u{80}', '\u{10ffff}'),
        1 => proptest::char::range(' ', '~'),
    ];
    proptest::collection::vec(ch, 0..40).prop_filter_map("not a path and query", |chars| {
        let t: String = std::iter::once('/').chain(chars).collect();
        let pq = http::uri::PathAndQuery::try_from(t.as_str()).ok()?;
        Some(pq.as_str().to_owned())
    })
}

fn version() -> impl Strategy<Value = HttpVersion> {
    prop_oneof![
        Just(HttpVersion::Http09),
        Just(HttpVersion::Http10),
        Just(HttpVersion::Http11),
        Just(HttpVersion::Http2),
        Just(HttpVersion::Http3),
    ]
}

/// Header names as an effe might write them: valid tokens (some hop-by-hop, some repeated, any
/// case), and anything at all.
fn written_name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => token(12),
        2 => proptest::sample::select(vec!["x-a", "X-A", "set-cookie", "content-type"])
            .prop_map(str::to_owned),
        1 => proptest::sample::select(&HOP_BY_HOP[..]).prop_map(str::to_owned),
        2 => ".{0,12}",
    ]
}

/// Values as an effe might write them: valid, any bytes, and now and then a large one: two of
/// those pass the cap on header bytes, unless one replaced the other; some pass it alone.
fn written_value() -> impl Strategy<Value = Vec<u8>> {
    const MAX: usize = MAX_RESPONSE_HEADER_BYTES;
    prop_oneof![
        12 => field_value(),
        6 => proptest::collection::vec(any::<u8>(), 0..16),
        1 => (MAX / 2..MAX - 16).prop_map(|n| vec![b'v'; n]),
        1 => (MAX - 16..MAX + 8).prop_map(|n| vec![b'v'; n]),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => prop_oneof![100u16..1000, any::<u16>()].prop_map(Op::Status),
        5 => (written_name(), written_value()).prop_map(|(n, v)| Op::Header(n, v)),
        2 => (written_name(), written_value()).prop_map(|(n, v)| Op::SetHeader(n, v)),
        3 => proptest::collection::vec(any::<u8>(), 0..64).prop_map(Op::Body),
    ]
}

// ---- The model of the host's sink, from the RFCs and the documented caps ----

fn is_tchar(b: u8) -> bool {
    TCHAR.as_bytes().contains(&b)
}

/// RFC 9110 §5.5: field-value bytes are VCHAR, obs-text, SP and HTAB.
fn is_field_byte(b: u8) -> bool {
    b == b'\t' || (b >= 0x20 && b != 0x7f)
}

const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "content-length",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "keep-alive",
    "proxy-connection",
];

/// What the sink should make of a script: each write's answer, then the response (or broken).
#[derive(Debug, Default)]
struct Model {
    accepted: Vec<bool>,
    status: Option<u16>,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    written: bool,
    broken: bool,
}

impl Model {
    fn header_bytes(&self) -> usize {
        self.headers.iter().map(|(n, v)| n.len() + v.len()).sum()
    }

    /// `name`/`value` appended; `Some(false)` refused, `None` the response broke.
    fn append(&mut self, name: &str, value: &[u8]) -> Option<bool> {
        let size = name.len() + value.len();
        if size > MAX_RESPONSE_HEADER_BYTES {
            return None;
        }
        if name.is_empty()
            || !name.bytes().all(is_tchar)
            || !value.iter().all(|&b| is_field_byte(b))
        {
            return Some(false);
        }
        let name = name.to_ascii_lowercase();
        if HOP_BY_HOP.contains(&name.as_str()) {
            return Some(true);
        }
        if size > MAX_RESPONSE_HEADER_BYTES - self.header_bytes() {
            return None;
        }
        self.headers.push((name, value.to_vec()));
        self.written = true;
        Some(true)
    }

    fn apply(&mut self, op: &Op, baseline: bool) -> bool {
        if self.broken {
            return matches!(op, Op::Body(_));
        }
        let outcome = match op {
            Op::Status(code) => {
                let ok = (200..=999).contains(code);
                if ok {
                    self.status = Some(*code);
                    self.written = true;
                }
                Some(ok)
            }
            Op::Header(name, value) => self.append(name, value),
            // A host before effe-abi 0.1.1 cannot replace a header: refused, nothing changes.
            Op::SetHeader(..) if baseline => Some(false),
            Op::SetHeader(name, value) => {
                let valid = !name.is_empty()
                    && name.bytes().all(is_tchar)
                    && value.iter().all(|&b| is_field_byte(b));
                if valid {
                    let lower = name.to_ascii_lowercase();
                    self.headers.retain(|(n, _)| *n != lower);
                }
                self.append(name, value)
            }
            Op::Body(bytes) => {
                self.body.extend_from_slice(bytes);
                self.written |= !bytes.is_empty();
                Some(true)
            }
        };
        outcome.unwrap_or_else(|| {
            self.broken = true;
            false
        })
    }
}

/// Headers as `(name, values)`, sorted by name: a `HeaderMap` keeps the order of each name's
/// values, not the order between names (removing one reorders the rest).
fn grouped<'a>(
    headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> Vec<(String, Vec<Vec<u8>>)> {
    let mut out: Vec<(String, Vec<Vec<u8>>)> = Vec::new();
    for (name, value) in headers {
        match out.iter_mut().find(|(n, _)| n == name) {
            Some((_, values)) => values.push(value.to_vec()),
            None => out.push((name.to_owned(), vec![value.to_vec()])),
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn grouped_map(map: &http::HeaderMap) -> Vec<(String, Vec<Vec<u8>>)> {
    grouped(map.iter().map(|(n, v)| (n.as_str(), v.as_bytes())))
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 512,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    /// Every part of a request view reaches `run` as the host built it, through either entry
    /// point, and the SDK's accessors agree with it.
    #[test]
    fn a_request_crosses_intact(
        method in token(20),
        target in target(),
        version in version(),
        headers in proptest::collection::vec((token(16), field_value()), 0..40),
        body in proptest::collection::vec(any::<u8>(), 0..512),
        peer_addr in ".{0,24}",
        request_id in ".{0,24}",
        baseline in any::<bool>(),
    ) {
        let names: Vec<String> = headers.iter().map(|(n, _)| n.to_ascii_lowercase()).collect();
        let views: Vec<Header<'_>> = names
            .iter()
            .zip(&headers)
            .map(|(n, (_, v))| Header::new(n, v))
            .collect();
        let req = Request::new(RequestParts {
            method: &method,
            target: &target,
            version,
            headers: &views,
            body: &body,
            peer_addr: &peer_addr,
            request_id: &request_id,
        });
        let (seen, _, out) = call(&req, Vec::new(), baseline);
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
            None => (target.clone(), None),
        };
        let sent = Seen {
            method: method.clone(),
            target: target.clone(),
            path,
            query,
            version,
            headers: names.iter().cloned().zip(headers.iter().map(|(_, v)| v.clone())).collect(),
            body: body.clone(),
            peer_addr: peer_addr.clone(),
            request_id: request_id.clone(),
        };
        prop_assert_eq!(&seen, &sent);
        prop_assert!(!out.is_written() && !out.is_broken());

        // What the host forwards is valid HTTP: the SDK's copy is identical.
        let copy = req.to_http().expect("a valid request converts");
        prop_assert_eq!(copy.method().as_str(), method.as_str());
        prop_assert_eq!(copy.uri().path_and_query().map(|pq| pq.as_str()), Some(target.as_str()));
        prop_assert_eq!(copy.body(), &body);
        let values = headers.iter().map(|(_, v)| &v[..]);
        let expected = grouped(names.iter().map(String::as_str).zip(values));
        prop_assert_eq!(grouped_map(copy.headers()), expected);
    }

    /// A view the `http` crate would refuse (a host could not build it, but an effe's own
    /// tests can) still crosses intact, and the SDK's conversion refuses it with an error.
    #[test]
    fn an_invalid_request_view_crosses_and_converts_to_an_error(
        method in ".{0,12}",
        target in ".{0,24}",
        name in ".{0,12}",
        value in proptest::collection::vec(any::<u8>(), 0..16),
        baseline in any::<bool>(),
    ) {
        let views = [Header::new(&name, &value)];
        let req = Request::new(RequestParts {
            method: &method,
            target: &target,
            version: HttpVersion::Http11,
            headers: &views,
            body: b"",
            peer_addr: "",
            request_id: "",
        });
        let (seen, _, _) = call(&req, Vec::new(), baseline);
        prop_assert_eq!(&seen.method, &method);
        prop_assert_eq!(&seen.target, &target);
        prop_assert_eq!(&seen.headers, &vec![(name.clone(), value.clone())]);
        let valid = http::Method::from_bytes(method.as_bytes()).is_ok()
            && http::Uri::try_from(target.as_str()).is_ok()
            && HeaderName::from_bytes(name.as_bytes()).is_ok()
            && HeaderValue::from_bytes(&value).is_ok();
        prop_assert_eq!(req.to_http().is_ok(), valid);
    }

    /// Whatever an effe writes, each write is accepted or refused as the RFCs and the caps say,
    /// never with a panic; a response that did not break comes out exactly as written.
    #[test]
    fn a_response_comes_out_as_written_or_is_refused(
        script in proptest::collection::vec(op(), 0..24),
        baseline in any::<bool>(),
    ) {
        let mut model = Model::default();
        model.accepted = script.iter().map(|op| model.apply(op, baseline)).collect();
        let req = Request::new(RequestParts {
            method: "GET",
            target: "/",
            version: HttpVersion::Http11,
            headers: &[],
            body: b"",
            peer_addr: "",
            request_id: "",
        });
        let (_, accepted, out) = call(&req, script, baseline);
        prop_assert_eq!(&accepted, &model.accepted);
        prop_assert_eq!(out.is_broken(), model.broken);
        prop_assert_eq!(out.failure().is_some(), model.broken);
        if model.broken {
            // The host answers 500, whatever was kept.
            return Ok(());
        }
        prop_assert_eq!(out.is_written(), model.written);
        let (status, headers, body) = out.into_parts();
        prop_assert_eq!(status.as_u16(), model.status.unwrap_or(200));
        prop_assert_eq!(
            grouped_map(&headers),
            grouped(model.headers.iter().map(|(n, v)| (n.as_str(), &v[..])))
        );
        prop_assert_eq!(body, model.body);
    }

    /// An `http::Response` written whole with `send` comes out of the sink identical.
    #[test]
    fn a_valid_response_sent_whole_comes_out_identical(
        status in 200u16..1000,
        headers in proptest::collection::vec((token(16), field_value()), 0..24),
        body in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let mut response = http::Response::builder().status(status);
        for (name, value) in &headers {
            response = response.header(name.as_str(), value.as_slice());
        }
        let response = response.body(body.clone()).unwrap();
        let expected = grouped(
            response
                .headers()
                .iter()
                .filter(|(n, _)| !HOP_BY_HOP.contains(&n.as_str()))
                .map(|(n, v)| (n.as_str(), v.as_bytes())),
        );
        let mut out = ResponseBuffer::new();
        prop_assert!(out.writer().send(response).is_ok());
        prop_assert!(!out.is_broken());
        let (got_status, got_headers, got_body) = out.into_parts();
        prop_assert_eq!(got_status.as_u16(), status);
        prop_assert_eq!(grouped_map(&got_headers), expected);
        prop_assert_eq!(got_body, body);
    }
}
