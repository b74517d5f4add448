//! The HTTP rules hyper leaves to the server: what a request must be to reach the effe.
//!
//! hyper parses the wire and frames messages (it already refuses what RFC 9112 says cannot be
//! framed: a bad `Content-Length`, `Transfer-Encoding` on HTTP/1.0 or without a final
//! `chunked`, bare CR, obsolete line folding); what a parsed request *means* is checked here.
//! Each rule is listed in docs/http-rules.md with the test that covers it. Checked once per
//! request, before anything else, and cheaply for the common case: an origin-form target, one
//! `Host`, no transfer coding.

use http::header::{HOST, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri, Version};

/// Checks `req` (fixing up what the rules say to fix up); `Err` is the status to answer
/// instead of calling the effe, after which an HTTP/1.x connection is closed: a request the
/// host refuses may have been framed in a way the client did not mean.
pub(crate) fn check<B: hyper::body::Body>(req: &mut Request<B>) -> Result<(), StatusCode> {
    if req.version() == Version::HTTP_2 {
        return check_h2(req);
    }
    let origin_form = {
        let uri = req.uri();
        uri.scheme().is_none() && uri.authority().is_none() && uri.path().starts_with('/')
    };
    let http11 = req.version() == Version::HTTP_11;
    // RFC 9112 §3.2: exactly one valid Host on HTTP/1.1, whatever the target's form.
    if http11 && !one_valid_host(req.headers()) {
        return Err(StatusCode::BAD_REQUEST);
    }
    if !origin_form {
        other_target_form(req)?;
    }
    if req.uri().path().contains('%') {
        percent_encoded(req.uri().path())?;
    }
    if !req.body().is_end_stream() && req.headers().contains_key(TRANSFER_ENCODING) {
        transfer_coding(req.headers())?;
    }
    Ok(())
}

/// RFC 9112 §3.2.2–3.2.4, for a target that is not a path: absolute-form (its authority
/// replaces `Host`), authority-form (CONNECT only, which an origin server does not do) and
/// asterisk-form (OPTIONS only).
#[cold]
#[inline(never)]
fn other_target_form<B>(req: &mut Request<B>) -> Result<(), StatusCode> {
    if req.method() == Method::CONNECT {
        return Err(StatusCode::NOT_IMPLEMENTED);
    }
    let uri = req.uri();
    if uri.scheme().is_none() {
        let asterisk = uri.authority().is_none() && uri.path() == "*";
        return if asterisk && req.method() == Method::OPTIONS {
            Ok(())
        } else {
            Err(StatusCode::BAD_REQUEST)
        };
    }
    // Absolute-form: a server MUST accept it, and MUST take the host from it, not from `Host`.
    let authority = authority_of(uri).ok_or(StatusCode::BAD_REQUEST)?;
    req.headers_mut().insert(HOST, authority);
    Ok(())
}

/// The authority of an `http` or `https` target, as a `Host` value; `None` for another
/// scheme, a missing or empty authority, or userinfo (RFC 9110 §4.2.4: not sent, refused).
fn authority_of(uri: &Uri) -> Option<HeaderValue> {
    let scheme = uri.scheme_str()?;
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return None;
    }
    let authority = uri.authority()?.as_str();
    if authority.is_empty() || !valid_host(authority.as_bytes()) {
        return None;
    }
    HeaderValue::from_str(authority).ok()
}

/// RFC 3986 §2.1: `%` starts two hex digits. Refused otherwise (as nginx does), since what
/// such a path means depends on who decodes it.
#[cold]
#[inline(never)]
fn percent_encoded(path: &str) -> Result<(), StatusCode> {
    let mut bytes = path.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_hexdigit());
            if !hex(bytes.next()) || !hex(bytes.next()) {
                return Err(StatusCode::BAD_REQUEST);
            }
        }
    }
    Ok(())
}

/// RFC 9112 §6.1 and §7: hyper reads a body whose last coding is `chunked`; the host decodes
/// no other coding (501, as the RFC asks), and `chunked` twice is not a framing (400).
#[cold]
#[inline(never)]
fn transfer_coding(headers: &HeaderMap) -> Result<(), StatusCode> {
    let mut chunked = 0;
    for value in headers.get_all(TRANSFER_ENCODING) {
        for coding in value.as_bytes().split(|&b| b == b',') {
            match coding.trim_ascii() {
                [] => {}
                c if c.eq_ignore_ascii_case(b"chunked") => chunked += 1,
                _ => return Err(StatusCode::NOT_IMPLEMENTED),
            }
        }
    }
    if chunked == 1 {
        Ok(())
    } else {
        Err(StatusCode::BAD_REQUEST)
    }
}

/// RFC 9113 §8.3.1 and §8.5: the h2 crate checks the pseudo-headers; the meaning is ours.
/// `:authority` is what an effe reads as `host` (the request view adds it when the client sent
/// no `host`); a `host` naming another is malformed.
fn check_h2<B>(req: &Request<B>) -> Result<(), StatusCode> {
    if req.method() == Method::CONNECT {
        return Err(StatusCode::NOT_IMPLEMENTED);
    }
    let uri = req.uri();
    if uri.path() == "*" && req.method() != Method::OPTIONS {
        return Err(StatusCode::BAD_REQUEST);
    }
    if uri.path().contains('%') {
        percent_encoded(uri.path())?;
    }
    // §8.2.1: a value with leading or trailing whitespace makes the request malformed (HTTP/1.1
    // parsers strip it; HPACK carries it as sent).
    let padded = |v: &HeaderValue| {
        let v = v.as_bytes();
        matches!(v.first(), Some(b' ' | b'\t')) || matches!(v.last(), Some(b' ' | b'\t'))
    };
    if req.headers().values().any(padded) {
        return Err(StatusCode::BAD_REQUEST);
    }
    match (uri.authority(), req.headers().get(HOST)) {
        (Some(authority), Some(host)) if host.as_bytes() != authority.as_str().as_bytes() => {
            Err(StatusCode::BAD_REQUEST)
        }
        _ => Ok(()),
    }
}

/// RFC 9112 §3.2: an HTTP/1.1 request carries exactly one `Host`, whose value is empty (a
/// target without an authority) or `host[:port]`.
fn one_valid_host(headers: &HeaderMap) -> bool {
    let mut hosts = headers.get_all(HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(host), None) => valid_host(host.as_bytes()),
        _ => false,
    }
}

/// The bytes of a reg-name or IPv4 address: unreserved, percent-encoded, sub-delims.
const REG_NAME: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'%'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            );
        b += 1;
    }
    table
};

/// `uri-host [ ":" port ]` (RFC 3986 §3.2.2–3), or empty, in one pass: the `http` crate's
/// `Authority` parse and `port_u16` copy and search, measured at about 1,200 instructions per
/// request.
fn valid_host(host: &[u8]) -> bool {
    if host.first() == Some(&b'[') {
        return valid_ip_literal(&host[1..]);
    }
    // The name up to the first byte a reg-name cannot hold (`:` is one), then the port.
    let name = host
        .iter()
        .position(|&b| !REG_NAME[usize::from(b)])
        .unwrap_or(host.len());
    match &host[name..] {
        [] => true,
        [b':', port @ ..] => valid_port(port),
        _ => false,
    }
}

/// `[` already taken: an IP literal of hex digits, colons and dots (a version or zone is rare
/// and refused), `]`, and an optional port.
#[cold]
#[inline(never)]
fn valid_ip_literal(rest: &[u8]) -> bool {
    let Some(end) = rest.iter().position(|&b| b == b']') else {
        return false;
    };
    let literal = &rest[..end];
    if literal.is_empty()
        || !literal
            .iter()
            .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
    {
        return false;
    }
    match &rest[end + 1..] {
        [] => true,
        [b':', port @ ..] => valid_port(port),
        _ => false,
    }
}

/// Up to five digits, at most 65535, or empty (RFC 3986 allows `host:`).
fn valid_port(port: &[u8]) -> bool {
    if port.len() > 5 {
        return false;
    }
    let mut n = 0u32;
    for &d in port {
        if !d.is_ascii_digit() {
            return false;
        }
        n = n * 10 + u32::from(d - b'0');
    }
    n <= 65535
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;

    #[test]
    fn host_values() {
        for ok in [
            "",
            "a",
            "example.com",
            "example.com:8080",
            "a:",
            "10.0.0.1:80",
            "[::1]",
            "[::1]:443",
            "xn--bcher-kva.example",
        ] {
            assert!(valid_host(ok.as_bytes()), "{ok:?}");
        }
        for bad in [
            "a b", "user@a", "a:99999", "a:123456", "a:8x", "a:1:2", "[::1", "[]", "[::1]x",
            "[zz]", "a/b",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad:?}");
        }
    }

    fn request(
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
    ) -> Request<Full<&'static [u8]>> {
        let mut req = Request::builder().method(method).uri(target);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        req.body(Full::new(&b"body"[..])).unwrap()
    }

    #[test]
    fn transfer_codings_other_than_one_chunked_are_refused() {
        for (codings, expected) in [
            (&["chunked"][..], Ok(())),
            (&["Chunked "], Ok(())),
            (&["gzip, chunked"], Err(StatusCode::NOT_IMPLEMENTED)),
            (&["gzip", "chunked"], Err(StatusCode::NOT_IMPLEMENTED)),
            (&["chunked, chunked"], Err(StatusCode::BAD_REQUEST)),
            (&["chunked", "chunked"], Err(StatusCode::BAD_REQUEST)),
        ] {
            let headers: Vec<_> = codings.iter().map(|c| ("transfer-encoding", *c)).collect();
            let mut req = request("POST", "/", &[&[("host", "a")][..], &headers].concat());
            assert_eq!(check(&mut req), expected, "{codings:?}");
        }
    }

    #[test]
    fn absolute_form_takes_the_host_from_the_target() {
        let mut req = request("GET", "http://b.example:81/p?q", &[("host", "a")]);
        assert_eq!(check(&mut req), Ok(()));
        assert_eq!(req.headers()[HOST], "b.example:81");
        for target in ["ftp://b/p", "http://user@b/p"] {
            let mut req = request("GET", target, &[("host", "a")]);
            assert_eq!(check(&mut req), Err(StatusCode::BAD_REQUEST), "{target}");
        }
    }

    #[test]
    fn only_options_takes_an_asterisk_and_connect_is_not_done() {
        let mut options = request("OPTIONS", "*", &[("host", "a")]);
        assert_eq!(check(&mut options), Ok(()));
        let mut get = request("GET", "*", &[("host", "a")]);
        assert_eq!(check(&mut get), Err(StatusCode::BAD_REQUEST));
        let mut get = request("GET", "a:80", &[("host", "a")]);
        assert_eq!(check(&mut get), Err(StatusCode::BAD_REQUEST));
        let mut connect = request("CONNECT", "a:443", &[("host", "a")]);
        assert_eq!(check(&mut connect), Err(StatusCode::NOT_IMPLEMENTED));
    }

    #[test]
    fn h2_host_must_agree_with_the_authority() {
        let h2 = |headers: &[(&str, &str)]| {
            let mut req = request("GET", "https://a.example/x", headers);
            *req.version_mut() = Version::HTTP_2;
            req
        };
        assert_eq!(check(&mut h2(&[])), Ok(()));
        assert_eq!(check(&mut h2(&[("host", "a.example")])), Ok(()));
        assert_eq!(
            check(&mut h2(&[("host", "b.example")])),
            Err(StatusCode::BAD_REQUEST)
        );
        assert_eq!(check(&mut h2(&[("a", " x")])), Err(StatusCode::BAD_REQUEST));
        assert_eq!(
            check(&mut h2(&[("a", "x\t")])),
            Err(StatusCode::BAD_REQUEST)
        );
        assert_eq!(check(&mut h2(&[("a", "x y")])), Ok(()));
    }

    #[test]
    fn a_percent_starts_two_hex_digits() {
        for (target, expected) in [
            ("/a%20b", Ok(())),
            ("/a%2F", Ok(())),
            ("/a%zz", Err(StatusCode::BAD_REQUEST)),
            ("/a%2", Err(StatusCode::BAD_REQUEST)),
            ("/a%", Err(StatusCode::BAD_REQUEST)),
            ("/a?q=%zz", Ok(())),
        ] {
            let mut req = request("GET", target, &[("host", "a")]);
            assert_eq!(check(&mut req), expected, "{target}");
        }
    }
}
