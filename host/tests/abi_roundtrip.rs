//! Property test of the host's side of the request crossing: whatever hyper could hand over
//! (any method token, path and query, headers with obs-text values and more of them than fit on
//! the stack, any body, a deadline or none) reaches a real effe as sent, through
//! `Plugin::run`. The effe is the echo example, loaded from the target directory as the host
//! loads any effe, which answers with what it saw, byte for byte (hex).

use std::path::Path;
use std::sync::OnceLock;

use bytes::Bytes;
use effe_abi::abi::ResponseBuffer;
use effe_abi::DEADLINE_HEADER;
use effe_host::plugin::{Call, Plugin};
use http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;
use serde_json::Value;

/// The echo effe, loaded and initialised once for the whole test binary.
fn echo() -> Plugin {
    static ECHO: OnceLock<Plugin> = OnceLock::new();
    *ECHO.get_or_init(|| {
        // target/<profile>/deps/abi_roundtrip-<hash> → target/<profile>/libecho.so
        let exe = std::env::current_exe().expect("current exe");
        let path = exe
            .parent()
            .and_then(Path::parent)
            .expect("test binary in target/<profile>/deps")
            .join("libecho.so");
        assert!(
            path.exists(),
            "{} is missing: build the workspace first (make test, or cargo build --workspace)",
            path.display()
        );
        // The build directory's permissions are not what this test is about.
        let plugin = Plugin::load(&path, true).expect("load echo");
        plugin.init().expect("echo init");
        plugin
    })
}

const TCHAR: &str = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";

/// A token (RFC 9110 §5.6.2): methods and header names.
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

/// A path and query the `http` crate accepts: mostly RFC 3986 characters, some non-ASCII, now
/// and then any printable ASCII (which `http` may refuse).
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

/// Request headers: mostly any token, some repeated names, and now and then a client's own
/// deadline header, which the host must drop. Often about as many as the host keeps on its
/// stack (24, with the deadline it adds), where it switches to the heap.
fn headers() -> impl Strategy<Value = Vec<(String, Vec<u8>)>> {
    let header = || {
        let name = prop_oneof![
            20 => token(16),
            8 => proptest::sample::select(vec!["x-a", "Cookie", "accept"]).prop_map(str::to_owned),
            1 => Just(DEADLINE_HEADER.to_owned()),
        ];
        (name, field_value())
    };
    prop_oneof![
        proptest::collection::vec(header(), 0..40),
        proptest::collection::vec(header(), 22..=26),
    ]
}

fn version() -> impl Strategy<Value = http::Version> {
    proptest::sample::select(vec![
        http::Version::HTTP_09,
        http::Version::HTTP_10,
        http::Version::HTTP_11,
        http::Version::HTTP_2,
        http::Version::HTTP_3,
    ])
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// Headers as `(name, values)`, sorted by name: a `HeaderMap` keeps the order of each name's
/// values, not the order between names.
fn grouped(headers: &[(String, Vec<u8>)]) -> Vec<(String, Vec<Vec<u8>>)> {
    let mut out: Vec<(String, Vec<Vec<u8>>)> = Vec::new();
    for (name, value) in headers {
        match out.iter_mut().find(|(n, _)| n == name) {
            Some((_, values)) => values.push(value.clone()),
            None => out.push((name.clone(), vec![value.clone()])),
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn a_request_reaches_the_effe_as_sent(
        method in token(20),
        target in target(),
        version in version(),
        sent in headers(),
        body in proptest::collection::vec(any::<u8>(), 0..512),
        deadline_ms in proptest::option::of(any::<u64>()),
        peer_addr in ".{0,24}",
        request_id in ".{0,24}",
    ) {
        let (mut parts, ()) = http::Request::builder()
            .method(method.as_str())
            .uri(target.as_str())
            .version(version)
            .body(())
            .unwrap()
            .into_parts();
        let mut map = HeaderMap::new();
        for (name, value) in &sent {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_bytes(value).unwrap(),
            );
        }
        parts.headers = map;
        let body = Bytes::from(body);
        let call = Call {
            parts: &parts,
            body: &body,
            peer_addr: &peer_addr,
            request_id: &request_id,
            deadline_ms,
            client: None,
        };
        let plugin = echo();
        let mut ctx = plugin.start().expect("start");
        let mut out = ResponseBuffer::new();
        let ran = plugin.run(&mut ctx, &call, &mut out);
        plugin.stop(ctx).expect("stop");
        prop_assert!(ran.is_ok(), "{:?}", ran.err());
        prop_assert!(!out.is_broken());
        let (status, _, answer) = out.into_parts();
        prop_assert_eq!(status.as_u16(), 200);
        let seen: Value = serde_json::from_slice(&answer).expect("echo answers JSON");

        prop_assert_eq!(seen["method"].as_str(), Some(method.as_str()));
        let seen_target = match seen["query"].as_str() {
            Some(query) => format!("{}?{query}", seen["path"].as_str().unwrap()),
            None => seen["path"].as_str().unwrap().to_owned(),
        };
        prop_assert_eq!(seen_target, target);
        let version = format!("{version:?}");
        prop_assert_eq!(seen["version"].as_str(), Some(version.as_str()));
        prop_assert_eq!(unhex(seen["body_hex"].as_str().unwrap()), &body[..]);
        prop_assert_eq!(seen["peer_addr"].as_str(), Some(peer_addr.as_str()));
        prop_assert_eq!(seen["request_id"].as_str(), Some(request_id.as_str()));

        let mut seen_headers: Vec<(String, Vec<u8>)> = seen["headers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| {
                let name = h["name"].as_str().unwrap().to_owned();
                (name, unhex(h["value_hex"].as_str().unwrap()))
            })
            .collect();
        // The deadline is the host's alone: last, once, and only with one.
        let host_deadline = match seen_headers.last() {
            Some((name, value)) if name == DEADLINE_HEADER => {
                let value = value.clone();
                seen_headers.pop();
                Some(value)
            }
            _ => None,
        };
        prop_assert_eq!(host_deadline, deadline_ms.map(|ms| ms.to_string().into_bytes()));
        let expected: Vec<(String, Vec<u8>)> = sent
            .iter()
            .map(|(n, v)| (n.to_ascii_lowercase(), v.clone()))
            .filter(|(n, _)| n != DEADLINE_HEADER)
            .collect();
        prop_assert_eq!(grouped(&seen_headers), grouped(&expected));
    }
}
