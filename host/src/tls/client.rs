//! The certificate a mutual-TLS client presented, as its effe is told of it: the subject as an
//! RFC 4514 string and the DER in base64, worked out once per connection.
//!
//! webpki (rustls' own parser, already in the host) finds the subject; writing it as RFC 4514
//! says takes the hundred lines below. A crate that does both (x509-cert) added 260 KB to the
//! stripped binary, most of it a table of every OID's name, and the container image has a size
//! limit.

use std::fmt::Write as _;
use std::sync::Arc;

/// The certificate a client presented and the host verified, in the form the effe reads it
/// (`effe-client-subject`, `effe-client-cert`): worked out once per connection, after the
/// handshake, and lent to each of its requests.
#[derive(Debug)]
pub struct ClientCert {
    /// The leaf's subject, RFC 4514; `None` if it cannot be read (the certificate is still
    /// passed on).
    subject: Option<Box<str>>,
    /// The leaf's DER, base64.
    der: Box<str>,
}

impl ClientCert {
    /// The client's on `conn`, if it presented one: rustls keeps a client's certificates only
    /// once the verifier has accepted them and the client has proven it holds the key.
    pub fn of(conn: &rustls::ServerConnection) -> Option<Arc<ClientCert>> {
        let leaf = conn.peer_certificates()?.first()?;
        Some(Arc::new(ClientCert::from_der(leaf)))
    }

    fn from_der(der: &rustls_pki_types::CertificateDer<'_>) -> ClientCert {
        let subject = match webpki::EndEntityCert::try_from(der) {
            Ok(cert) => rfc4514(cert.subject()),
            Err(e) => {
                tracing::debug!(error = %e, "cannot parse a client certificate");
                None
            }
        };
        ClientCert {
            subject: subject.map(String::into_boxed_str),
            der: base64(der).into(),
        }
    }

    pub fn subject(&self) -> Option<&str> {
        self.subject.as_deref()
    }

    pub fn der_base64(&self) -> &str {
        &self.der
    }
}

const OID: u8 = 0x06;
const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;

/// Attribute types written by name: RFC 4514's (§3), then two that client certificates often
/// carry, named as OpenSSL (so nginx's `$ssl_client_s_dn`) names them. Keys: the OIDs' DER
/// contents (2.5.4.n is `55 04 n`; UID and DC are 0.9.2342.19200300.100.1.1 and .25).
const NAMES: [(&[u8], &str); 11] = [
    (&[0x55, 0x04, 0x03], "CN"),
    (&[0x55, 0x04, 0x07], "L"),
    (&[0x55, 0x04, 0x08], "ST"),
    (&[0x55, 0x04, 0x0a], "O"),
    (&[0x55, 0x04, 0x0b], "OU"),
    (&[0x55, 0x04, 0x06], "C"),
    (&[0x55, 0x04, 0x09], "STREET"),
    (
        &[0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x19],
        "DC",
    ),
    (
        &[0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x01],
        "UID",
    ),
    (
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01],
        "emailAddress",
    ),
    (&[0x55, 0x04, 0x05], "serialNumber"),
];

/// A certificate's `Name` (the contents of its SEQUENCE, as webpki gives it) as RFC 4514 writes
/// it: the last RDN first, RDNs joined by `,`, the attributes of one by `+`. `None` if it is not
/// a well-formed Name.
fn rfc4514(mut name: &[u8]) -> Option<String> {
    let mut rdns = Vec::new();
    while !name.is_empty() {
        let (rdn, rest) = element(name, SET)?;
        rdns.push(rdn);
        name = rest;
    }
    let mut out = String::new();
    for (i, mut rdn) in rdns.into_iter().rev().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let mut first = true;
        while !rdn.is_empty() {
            let (attribute, rest) = element(rdn, SEQUENCE)?;
            if !first {
                out.push('+');
            }
            first = false;
            type_and_value(&mut out, attribute)?;
            rdn = rest;
        }
    }
    Some(out)
}

/// One `type=value` (§2.3, §2.4): a known type with a string value as text, escaped; any other
/// as its OID, dotted, and `#` and the value's DER in hex.
fn type_and_value(out: &mut String, attribute: &[u8]) -> Option<()> {
    let (oid, value) = element(attribute, OID)?;
    let (tag, content, rest) = any(value)?;
    if !rest.is_empty() {
        return None;
    }
    let name = NAMES.iter().find(|(known, _)| *known == oid);
    match (name, text(tag, content)) {
        (Some((_, name)), Some(text)) => {
            out.push_str(name);
            out.push('=');
            escaped(out, &text);
        }
        (name, _) => {
            match name {
                Some((_, name)) => out.push_str(name),
                None => dotted(out, oid)?,
            }
            out.push_str("=#");
            for b in value {
                let _ = write!(out, "{b:02x}");
            }
        }
    }
    Some(())
}

/// The string types a Name holds, as text; `None` for any other value.
fn text(tag: u8, content: &[u8]) -> Option<String> {
    match tag {
        // UTF8String, and the ASCII ones: NumericString, PrintableString, IA5String,
        // VisibleString.
        0x0c | 0x12 | 0x13 | 0x16 | 0x1a => String::from_utf8(content.to_vec()).ok(),
        // TeletexString: Latin-1 in practice, as OpenSSL and Go read it.
        0x14 => Some(content.iter().map(|&b| char::from(b)).collect()),
        // BMPString: UTF-16BE.
        0x1e if content.len() % 2 == 0 => {
            let units = content
                .chunks_exact(2)
                .map(|u| u16::from_be_bytes([u[0], u[1]]));
            char::decode_utf16(units).collect::<Result<_, _>>().ok()
        }
        // UniversalString: UTF-32BE.
        0x1c if content.len() % 4 == 0 => content
            .chunks_exact(4)
            .map(|c| char::from_u32(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
            .collect(),
        _ => None,
    }
}

/// `value` with what §2.4 escapes escaped; control characters too (as `\hh`), so that the
/// header never carries one.
fn escaped(out: &mut String, value: &str) {
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        match c {
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '#' | ' ' if i == 0 => {
                out.push('\\');
                out.push(c);
            }
            ' ' if i == last => out.push_str("\\ "),
            '\0'..='\x1f' | '\x7f' => {
                let _ = write!(out, "\\{:02x}", u32::from(c));
            }
            _ => out.push(c),
        }
    }
}

/// An OID's DER contents in dotted decimal (`1.2.840.113549`).
fn dotted(out: &mut String, oid: &[u8]) -> Option<()> {
    let mut arc: u64 = 0;
    let mut first = true;
    if oid.last()? & 0x80 != 0 {
        return None;
    }
    for &b in oid {
        arc = arc.checked_mul(128)? | u64::from(b & 0x7f);
        if b & 0x80 != 0 {
            continue;
        }
        if first {
            // The first subidentifier holds two arcs: 40 × the first (0, 1 or 2) + the second.
            let top = (arc / 40).min(2);
            let _ = write!(out, "{top}.{}", arc - top * 40);
            first = false;
        } else {
            let _ = write!(out, ".{arc}");
        }
        arc = 0;
    }
    Some(())
}

/// The contents of the DER element at the start of `input`, which must have tag `tag`, and what
/// follows it.
fn element(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    match any(input)? {
        (t, content, rest) if t == tag => Some((content, rest)),
        _ => None,
    }
}

/// The DER element at the start of `input`: its tag (low-tag-number form only, all a Name
/// uses), its contents, and what follows it.
fn any(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    if tag & 0x1f == 0x1f {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let (bytes, rest) = rest.split_at_checked(usize::from(first & 0x7f))?;
        if bytes.is_empty() || bytes.len() > 4 {
            return None;
        }
        let len = bytes.iter().fold(0, |len, &b| len << 8 | usize::from(b));
        (len, rest)
    };
    let (content, rest) = rest.split_at_checked(len)?;
    Some((tag, content, rest))
}

/// Base64 with the standard alphabet and padding (RFC 4648 §4), once per connection: a few
/// lines rather than a dependency.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let bits = chunk
            .iter()
            .enumerate()
            .fold(0u32, |bits, (i, &b)| bits | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            out.push(if i <= chunk.len() {
                char::from(ALPHABET[(bits >> (18 - 6 * i)) as usize & 63])
            } else {
                '='
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;

    #[test]
    fn base64_is_what_effe_abi_decodes() {
        use effe_abi::{Header, HttpVersion, Request, CLIENT_CERT_HEADER};
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(b"fooba"), "Zm9vYmE=");
        assert_eq!(base64(b"foob"), "Zm9vYg==");
        let all: Vec<u8> = (0..=255).collect();
        for len in [1, 2, 3, 4, 5, 256] {
            let encoded = base64(&all[..len]);
            let headers = [Header::new(CLIENT_CERT_HEADER, encoded.as_bytes())];
            let req = Request::new(effe_abi::abi::RequestParts {
                method: "GET",
                target: "/",
                version: HttpVersion::Http11,
                headers: &headers,
                body: b"",
                peer_addr: "127.0.0.1:9",
                request_id: "r",
            });
            assert_eq!(req.client_certificate().as_deref(), Some(&all[..len]));
        }
    }

    /// A leaf made with `openssl req -x509 -utf8 -multivalue-rdn -subj "/DC=com/DC=example/C=FR
    /// /O=Example, Inc./OU=#ops \+ dev /CN=alice é+UID=42/emailAddress=alice@example.com"`:
    /// characters RFC 4514 escapes, UTF-8, IA5String, a multi-valued RDN.
    const RICH: &str = "\
-----BEGIN CERTIFICATE-----
MIICtTCCAlygAwIBAgIUb3asjJhSR6AucXe+haZODqNvMeIwCgYIKoZIzj0EAwIw
gbAxEzARBgoJkiaJk/IsZAEZFgNjb20xFzAVBgoJkiaJk/IsZAEZFgdleGFtcGxl
MQswCQYDVQQGEwJGUjEWMBQGA1UECgwNRXhhbXBsZSwgSW5jLjEUMBIGA1UECwwL
I29wcyArIGRldiAxIzAPBgNVBAMMCGFsaWNlIMOpMBAGCgmSJomT8ixkAQEMAjQy
MSAwHgYJKoZIhvcNAQkBFhFhbGljZUBleGFtcGxlLmNvbTAgFw0yNjExMjkxNDUw
MTRaGA8yMTI2MTEwNTE0NTAxNFowgbAxEzARBgoJkiaJk/IsZAEZFgNjb20xFzAV
BgoJkiaJk/IsZAEZFgdleGFtcGxlMQswCQYDVQQGEwJGUjEWMBQGA1UECgwNRXhh
bXBsZSwgSW5jLjEUMBIGA1UECwwLI29wcyArIGRldiAxIzAPBgNVBAMMCGFsaWNl
IMOpMBAGCgmSJomT8ixkAQEMAjQyMSAwHgYJKoZIhvcNAQkBFhFhbGljZUBleGFt
cGxlLmNvbTBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABIsVN+Gi3xv2yoaG1Q6Q
f+wpTxAZxM5vTx0h8+DJc5zGQgMkoxedTAJGzl0XK3onBtqp2ENrtapkrgW+PIyP
B4mjUDBOMB0GA1UdDgQWBBSEuf/aK3Yhd5z2WT4S6dJxLFFf2zAfBgNVHSMEGDAW
gBSEuf/aK3Yhd5z2WT4S6dJxLFFf2zAMBgNVHRMBAf8EAjAAMAoGCCqGSM49BAMC
A0cAMEQCIEytxadCNj3xV9f9d7uHOjvHxI41vQrBJfuyB6FcRIlVAiBY/YeOEO/0
KYcTMaXu/6Lu/Wefb+8zXr7eocy9HqCPPg==
-----END CERTIFICATE-----
";

    #[test]
    fn the_subject_of_a_certificate_as_openssl_writes_it() {
        let der = CertificateDer::from_pem_slice(RICH.as_bytes()).unwrap();
        let client = ClientCert::from_der(&der);
        // `openssl x509 -nameopt RFC2253,-esc_msb,utf8` says the same but for the order within
        // the multi-valued RDN, which RFC 4514 leaves free (here: as encoded).
        assert_eq!(
            client.subject(),
            Some(
                "emailAddress=alice@example.com,CN=alice é+UID=42,OU=\\#ops \\+ dev\\ ,\
                 O=Example\\, Inc.,C=FR,DC=example,DC=com"
            )
        );
        assert_eq!(client.der_base64(), base64(&der));

        let unreadable = ClientCert::from_der(&CertificateDer::from(&b"\x30\x03\x02\x01\x01"[..]));
        assert_eq!(unreadable.subject(), None);
        assert_eq!(unreadable.der_base64(), "MAMCAQE=");
    }

    /// One RDN holding one attribute, as DER.
    fn rdn(oid: &[u8], value: &[u8]) -> Vec<u8> {
        let mut attribute = vec![OID, oid.len() as u8];
        attribute.extend(oid);
        attribute.extend(value);
        let mut sequence = vec![SEQUENCE, attribute.len() as u8];
        sequence.extend(attribute);
        let mut set = vec![SET, sequence.len() as u8];
        set.extend(sequence);
        set
    }

    #[test]
    fn every_string_type_and_what_is_none() {
        let cn: &[u8] = &[0x55, 0x04, 0x03];
        let name = [
            rdn(cn, b"\x1e\x04\x00\xe9\x00\x21"),          // BMPString "é!"
            rdn(cn, b"\x1c\x04\x00\x01\xf6\x00"),          // UniversalString "😀"
            rdn(cn, b"\x14\x02\xe9\x3d"),                  // TeletexString "é="
            rdn(cn, b"\x0c\x04a\nb "),                     // a control character
            rdn(cn, b"\x02\x01\x07"),                      // not a string
            rdn(&[0x2a, 0x03, 0x88, 0x37], b"\x0c\x02hi"), // 1.2.3.1079: unknown
            rdn(&[0x55, 0x04, 0x0b], b"\x0c\x03\xff\xfe\xfd"), // not UTF-8
            rdn(&[0x55, 0x04, 0x0b], b"\x0c\x00"),         // empty
        ]
        .concat();
        assert_eq!(
            rfc4514(&name).as_deref(),
            Some(
                "OU=,OU=#0c03fffefd,1.2.3.1079=#0c026869,CN=#020107,CN=a\\0ab\\ ,CN=é=,CN=😀,\
                 CN=é!"
            )
        );
        assert_eq!(rfc4514(b"").as_deref(), Some(""));
        for bad in [
            &b"\x31"[..],                            // cut short
            b"\x31\x05\x30\x03\x06\x01",             // longer than what there is
            b"\x30\x00",                             // not a SET
            b"\x31\x02\x31\x00",                     // not a SEQUENCE inside
            b"\x31\x04\x30\x02\x02\x00",             // no OID
            b"\x31\x07\x30\x05\x06\x01\x80\x0c\x00", // an OID cut short
        ] {
            assert_eq!(rfc4514(bad), None, "{bad:x?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_give_a_name_or_none_and_no_panic(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
        ) {
            let _ = rfc4514(&bytes);
        }
    }
}
