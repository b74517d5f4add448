//! The request as it crosses the boundary: a borrowed view of what the host received.
//!
//! Everything in a [`Request`] is borrowed from the host for the duration of one `run` call; the
//! host does not copy the body to build it. Copy out what must outlive the call.

use abi_stable::std_types::{RSlice, RStr};
use abi_stable::StableAbi;

use std::time::{Duration, SystemTime};

use crate::Error;

/// The header through which the host tells `run` its deadline: milliseconds since the Unix
/// epoch, as Lambda's `Lambda-Runtime-Deadline-Ms`. The host sets it when it runs with a
/// `--timeout`, and drops any the client sent. Read it with [`Request::deadline`].
pub const DEADLINE_HEADER: &str = "effe-deadline-ms";

/// The header through which the host tells `run` who the client is under mutual TLS: the
/// subject of the certificate it presented, as an RFC 4514 string (`CN=alice,O=Example`, as
/// nginx's `$ssl_client_s_dn`). The host sets it only on connections whose client presented a
/// certificate it verified (`effe-host --tls-client-ca`), and drops any the client sent. Read
/// it with [`Request::client_subject`].
pub const CLIENT_SUBJECT_HEADER: &str = "effe-client-subject";

/// The header through which the host passes the client's certificate itself under mutual TLS:
/// the leaf's DER, in base64 (standard alphabet, padded). Set and dropped as
/// [`CLIENT_SUBJECT_HEADER`] is. Read it with [`Request::client_certificate`].
pub const CLIENT_CERT_HEADER: &str = "effe-client-cert";

/// The HTTP version the request arrived with.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpVersion {
    /// HTTP/0.9.
    Http09,
    /// HTTP/1.0.
    Http10,
    /// HTTP/1.1.
    Http11,
    /// HTTP/2, over TLS (ALPN `h2`) or cleartext with prior knowledge.
    Http2,
    /// HTTP/3.
    Http3,
}

impl From<http::Version> for HttpVersion {
    fn from(v: http::Version) -> Self {
        match v {
            http::Version::HTTP_09 => HttpVersion::Http09,
            http::Version::HTTP_10 => HttpVersion::Http10,
            http::Version::HTTP_2 => HttpVersion::Http2,
            http::Version::HTTP_3 => HttpVersion::Http3,
            _ => HttpVersion::Http11,
        }
    }
}

impl From<HttpVersion> for http::Version {
    fn from(v: HttpVersion) -> Self {
        match v {
            HttpVersion::Http09 => http::Version::HTTP_09,
            HttpVersion::Http10 => http::Version::HTTP_10,
            HttpVersion::Http11 => http::Version::HTTP_11,
            HttpVersion::Http2 => http::Version::HTTP_2,
            HttpVersion::Http3 => http::Version::HTTP_3,
        }
    }
}

/// One request header. Names are lower-case; values are bytes, because HTTP allows values that
/// are not UTF-8.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy)]
pub struct Header<'a> {
    name: RStr<'a>,
    value: RSlice<'a, u8>,
}

impl<'a> Header<'a> {
    /// A header view; the host builds these, effes only read them.
    pub fn new(name: &'a str, value: &'a [u8]) -> Self {
        Self {
            name: name.into(),
            value: value.into(),
        }
    }

    /// The header name, lower-case.
    pub fn name(&self) -> &'a str {
        self.name.as_str()
    }

    /// The raw value.
    pub fn value(&self) -> &'a [u8] {
        self.value.as_slice()
    }

    /// The value if it is UTF-8.
    pub fn value_str(&self) -> Option<&'a str> {
        std::str::from_utf8(self.value()).ok()
    }
}

/// An HTTP request, borrowed from the host for one `run` call.
///
/// Repeated headers appear once per occurrence. Headers are grouped by name (the host's
/// header map keeps them so): a request sent with `a`, `b`, `a` shows `a`, `a`, `b`, and each
/// name's values keep the order they were received in.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy)]
pub struct Request<'a> {
    method: RStr<'a>,
    target: RStr<'a>,
    version: HttpVersion,
    headers: RSlice<'a, Header<'a>>,
    body: RSlice<'a, u8>,
    peer_addr: RStr<'a>,
    request_id: RStr<'a>,
}

/// The parts of a [`Request`], for the host (and for tests of an effe) to build one from.
#[derive(Debug, Clone, Copy)]
pub struct RequestParts<'a> {
    /// `GET`, `POST`, … as received.
    pub method: &'a str,
    /// Path and query as received (`/a/b?x=1`).
    pub target: &'a str,
    /// The protocol version.
    pub version: HttpVersion,
    /// Every header, repeated names kept, in order.
    pub headers: &'a [Header<'a>],
    /// The whole body.
    pub body: &'a [u8],
    /// The client's address as `ip:port`.
    pub peer_addr: &'a str,
    /// The id the host logs this request under.
    pub request_id: &'a str,
}

impl<'a> Request<'a> {
    /// A request view over `parts`.
    pub fn new(parts: RequestParts<'a>) -> Self {
        Self {
            method: parts.method.into(),
            target: parts.target.into(),
            version: parts.version,
            headers: parts.headers.into(),
            body: parts.body.into(),
            peer_addr: parts.peer_addr.into(),
            request_id: parts.request_id.into(),
        }
    }

    /// The method, e.g. `GET`.
    pub fn method(&self) -> &'a str {
        self.method.as_str()
    }

    /// Path and query, as received: `/users/7?fields=name`.
    pub fn target(&self) -> &'a str {
        self.target.as_str()
    }

    /// The path, without the query.
    pub fn path(&self) -> &'a str {
        let t = self.target();
        t.split_once('?').map_or(t, |(path, _)| path)
    }

    /// The query string without the `?`, if there is one.
    pub fn query(&self) -> Option<&'a str> {
        self.target().split_once('?').map(|(_, query)| query)
    }

    /// The HTTP version.
    pub fn version(&self) -> HttpVersion {
        self.version
    }

    /// Every header, grouped by name, each name's values in the order received.
    pub fn headers(&self) -> &'a [Header<'a>] {
        self.headers.as_slice()
    }

    /// The first value of header `name` (compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers()
            .iter()
            .find(|h| h.name().eq_ignore_ascii_case(name))
            .map(|h| h.value())
    }

    /// The first value of header `name` if it is UTF-8.
    pub fn header_str(&self, name: &str) -> Option<&'a str> {
        self.header(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// When the host stops waiting for this `run` (its `--timeout`): the client then gets
    /// `504`, and a Context whose `run` returns later is stopped, not reused. `None` when the
    /// host sets no deadline (or predates deadlines). A `run` that may take long should check
    /// [`time_left`](Self::time_left) and give up early.
    pub fn deadline(&self) -> Option<SystemTime> {
        let ms: u64 = self.header_str(DEADLINE_HEADER)?.parse().ok()?;
        SystemTime::UNIX_EPOCH.checked_add(Duration::from_millis(ms))
    }

    /// Time left until [`deadline`](Self::deadline); zero once it has passed.
    pub fn time_left(&self) -> Option<Duration> {
        let deadline = self.deadline()?;
        Some(
            deadline
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO),
        )
    }

    /// Who the client is, under mutual TLS: the subject of its certificate as an RFC 4514 string,
    /// most specific part first (`CN=alice,OU=Payments,O=Example`), special characters escaped
    /// with `\`. The host has verified the certificate against its `--tls-client-ca`.
    ///
    /// `None` without mutual TLS, and from a host that predates [`CLIENT_SUBJECT_HEADER`] (and
    /// should the host fail to read the subject of a certificate it verified: the certificate
    /// itself is still in [`client_certificate`](Self::client_certificate)). A client cannot
    /// forge it: the host drops that header when a client sends it, on every connection, TLS or
    /// not.
    pub fn client_subject(&self) -> Option<&'a str> {
        self.header_str(CLIENT_SUBJECT_HEADER)
    }

    /// The certificate the client presented under mutual TLS (the leaf, DER-encoded), for what
    /// [`client_subject`](Self::client_subject) does not tell: its serial number, its
    /// subject alternative names, its public key. Parse it with an X.509 crate. Decoded from
    /// [`CLIENT_CERT_HEADER`] on each call.
    ///
    /// `None` without mutual TLS, from a host that predates [`CLIENT_CERT_HEADER`], or if the
    /// header is not valid base64 (never so from the host).
    pub fn client_certificate(&self) -> Option<Vec<u8>> {
        base64_decode(self.header(CLIENT_CERT_HEADER)?)
    }

    /// The whole request body.
    pub fn body(&self) -> &'a [u8] {
        self.body.as_slice()
    }

    /// The client's address, `ip:port` (the proxy's, behind an Ingress).
    pub fn peer_addr(&self) -> &'a str {
        self.peer_addr.as_str()
    }

    /// The id the host logs this request under; also sent back as `x-request-id`.
    pub fn request_id(&self) -> &'a str {
        self.request_id.as_str()
    }

    /// A copy of this request as an [`http::Request`].
    ///
    /// # Errors
    ///
    /// If the method, target or a header does not parse as the `http` crate requires (the host
    /// only forwards what hyper accepted, so this is rare).
    pub fn to_http(&self) -> Result<http::Request<Vec<u8>>, Error> {
        let mut builder = http::Request::builder()
            .method(self.method())
            .uri(self.target())
            .version(self.version.into());
        for h in self.headers() {
            builder = builder.header(h.name(), h.value());
        }
        Ok(builder.body(self.body().to_vec())?)
    }
}

/// Base64 with the standard alphabet and padding (RFC 4648 §4), as the host writes it; `None`
/// for anything else. By hand: one small function spares every effe a dependency.
fn base64_decode(text: &[u8]) -> Option<Vec<u8>> {
    fn sextet(c: u8) -> Option<u32> {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        Some(u32::from(v))
    }
    if text.len() % 4 != 0 {
        return None;
    }
    let quads = text.len() / 4;
    let mut out = Vec::with_capacity(quads * 3);
    for (i, quad) in text.chunks_exact(4).enumerate() {
        // One or two `=`, in the last four characters only.
        let pad = match quad {
            [_, _, b'=', b'='] if i + 1 == quads => 2,
            [_, _, _, b'='] if i + 1 == quads => 1,
            _ => 0,
        };
        let mut bits = 0;
        for &c in &quad[..4 - pad] {
            bits = bits << 6 | sextet(c)?;
        }
        bits <<= 6 * pad;
        out.extend_from_slice(&bits.to_be_bytes()[1..4 - pad]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_query_and_headers() {
        let headers = [
            Header::new("x-a", b"1"),
            Header::new("x-a", b"\xff"),
            Header::new("host", b"h"),
        ];
        let req = Request::new(RequestParts {
            method: "POST",
            target: "/p/q?x=1&y",
            version: HttpVersion::Http2,
            headers: &headers,
            body: b"body",
            peer_addr: "127.0.0.1:9",
            request_id: "r1",
        });
        assert_eq!(req.path(), "/p/q");
        assert_eq!(req.query(), Some("x=1&y"));
        assert_eq!(req.header("X-A"), Some(&b"1"[..]));
        assert_eq!(req.headers()[1].value_str(), None);
        assert_eq!(req.header_str("host"), Some("h"));
        assert_eq!(req.header_str("x-missing"), None);
        let h = req.to_http().unwrap();
        assert_eq!(h.headers().get_all("x-a").iter().count(), 2);
        assert_eq!(h.version(), http::Version::HTTP_2);
        assert_eq!(h.body(), b"body");
        assert_eq!(req.deadline(), None);
    }

    #[test]
    fn deadline_from_the_hosts_header() {
        let headers = [Header::new(DEADLINE_HEADER, b"4102444800000")];
        let req = Request::new(RequestParts {
            method: "GET",
            target: "/",
            version: HttpVersion::Http11,
            headers: &headers,
            body: b"",
            peer_addr: "127.0.0.1:9",
            request_id: "r1",
        });
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(4_102_444_800);
        assert_eq!(req.deadline(), Some(at));
        assert!(req.time_left().unwrap() > Duration::from_secs(3600));
    }

    #[test]
    fn base64_as_rfc_4648_says() {
        for (text, bytes) in [
            ("", &b""[..]),
            ("Zg==", b"f"),
            ("Zm8=", b"fo"),
            ("Zm9v", b"foo"),
            ("Zm9vYg==", b"foob"),
            ("Zm9vYmE=", b"fooba"),
            ("Zm9vYmFy", b"foobar"),
            ("+/+/", b"\xfb\xff\xbf"),
            ("AP8=", b"\x00\xff"),
        ] {
            assert_eq!(
                base64_decode(text.as_bytes()).as_deref(),
                Some(bytes),
                "{text}"
            );
        }
        // Unpadded, padding inside, too much padding, the URL-safe alphabet, a space.
        for bad in ["Zg", "Zg=", "Zg==Zm9v", "Z===", "====", "-_-_", "Zm9 "] {
            assert_eq!(base64_decode(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn client_identity_from_the_hosts_headers() {
        let headers = [
            Header::new("host", b"h"),
            Header::new(CLIENT_SUBJECT_HEADER, b"CN=alice,O=Example\\, Inc."),
            Header::new(CLIENT_CERT_HEADER, b"MAEC"),
        ];
        let req = Request::new(RequestParts {
            method: "GET",
            target: "/",
            version: HttpVersion::Http2,
            headers: &headers,
            body: b"",
            peer_addr: "127.0.0.1:9",
            request_id: "r1",
        });
        assert_eq!(req.client_subject(), Some("CN=alice,O=Example\\, Inc."));
        assert_eq!(req.client_certificate(), Some(vec![0x30, 0x01, 0x02]));

        let bare = Request::new(RequestParts {
            method: "GET",
            target: "/",
            version: HttpVersion::Http11,
            headers: &headers[..1],
            body: b"",
            peer_addr: "127.0.0.1:9",
            request_id: "r2",
        });
        assert_eq!(bare.client_subject(), None);
        assert_eq!(bare.client_certificate(), None);
    }
}
