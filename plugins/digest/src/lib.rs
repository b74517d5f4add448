//! Large bodies in bounded memory, both ways: the example of an effe that streams its request
//! body, and a generated download to stream a response of any size.
//!
//! - A request without `bytes` in its query (`POST /` with a body of any size) is answered
//!   `<SHA-256 of the body, hex> <its length>\n`. The body is read as it arrives, 64 KiB at a
//!   time ([`STREAM_REQUEST_BODY`](Effe::STREAM_REQUEST_BODY)), with the host's body limit
//!   lifted ([`MAX_STREAMED_BODY_SIZE`](Effe::MAX_STREAMED_BODY_SIZE)): an upload of gigabytes
//!   holds no more than one read buffer here. A body that stalls past the host's
//!   `--body-read-timeout` fails the read and the client gets 408.
//! - `GET /?bytes=N` streams `N` bytes of `application/octet-stream` in which byte `i` is
//!   `i % 251` (a pattern a client can check without a copy). The writes wait while the client
//!   is behind, so a slow client holds back this effe, not the host's memory.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::io::{Read, Write};

use effe_abi::{Effe, Error, Request, ResponseWriter};
use sha2::{Digest as _, Sha256};

/// One read of the body, and one write of a download.
const BUFFER: usize = 64 * 1024;

/// A download is written in blocks of whole periods of its pattern (251 × 261 = 65,511 bytes,
/// just under [`BUFFER`]), so that every block is the same bytes.
const BLOCK: usize = 251 * 261;

struct Digest;

/// A Context keeps its buffer from one request to the next.
struct Buffer(Vec<u8>);

impl Effe for Digest {
    type Context = Buffer;
    const STREAM_REQUEST_BODY: bool = true;
    const MAX_STREAMED_BODY_SIZE: Option<u64> = Some(u64::MAX);

    fn init() -> Result<Self, Error> {
        Ok(Digest)
    }

    fn start(&self) -> Result<Buffer, Error> {
        Ok(Buffer(vec![0; BUFFER]))
    }

    fn run(
        &self,
        buf: &mut Buffer,
        req: &Request<'_>,
        resp: &mut ResponseWriter<'_>,
    ) -> Result<(), Error> {
        match req.query_param("bytes") {
            Some(n) => {
                let n = n.parse().map_err(|_| {
                    Error::bad_request(format!("expected a size, as in ?bytes=1000; got {n:?}"))
                })?;
                download(&mut buf.0, n, resp)
            }
            None => digest(&mut buf.0, req, resp),
        }
    }
}

/// Answers the SHA-256 and the length of the request body.
fn digest(buf: &mut [u8], req: &Request<'_>, resp: &mut ResponseWriter<'_>) -> Result<(), Error> {
    let mut body = req.body_reader();
    let (mut sha, mut len) = (Sha256::new(), 0u64);
    loop {
        // A body past the host's limit or its read timeout is an error here, which the host
        // answers (413, 408): `?` is all it takes.
        let n = body.read(buf)?;
        if n == 0 {
            break;
        }
        sha.update(&buf[..n]);
        len += n as u64;
    }
    resp.text(format!("{} {len}\n", hex(&sha.finalize())));
    Ok(())
}

/// Streams `n` bytes of the pattern.
fn download(buf: &mut [u8], n: u64, resp: &mut ResponseWriter<'_>) -> Result<(), Error> {
    let block = &mut buf[..BLOCK];
    for (i, byte) in block.iter_mut().enumerate() {
        *byte = (i % 251) as u8;
    }
    resp.header("content-type", "application/octet-stream")?;
    // The head goes now; from here on each write goes out as it is made (no need to flush
    // again), and waits while the client is behind.
    resp.flush()?;
    let mut left = n;
    while left > 0 {
        let len = left.min(BLOCK as u64) as usize;
        if let Err(err) = resp.write_all(&block[..len]) {
            effe_abi::log::warn!("client gone with {left} of {n} bytes unsent: {err}");
            return Ok(());
        }
        left -= len as u64;
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

effe_abi::export_effe!(Digest);

#[cfg(test)]
mod tests {
    use effe_abi::http;
    use effe_abi::testing::{Flushes, TestHost};

    fn post(body: Vec<u8>) -> Result<http::Request<Vec<u8>>, http::Error> {
        http::Request::post("/").body(body)
    }

    #[test]
    fn answers_the_sha256_and_length_of_bodies_of_any_size() -> Result<(), effe_abi::Error> {
        let mut host = TestHost::<super::Digest>::new()?;
        // FIPS 180-2's examples; a million bytes take many reads of the 64 KiB buffer.
        for (body, answer) in [
            (
                b"abc".to_vec(),
                "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad 3\n",
            ),
            (
                Vec::new(),
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855 0\n",
            ),
            (
                vec![b'a'; 1_000_000],
                "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0 1000000\n",
            ),
        ] {
            let resp = host.call(post(body)?);
            assert_eq!(resp.status(), 200);
            assert_eq!(String::from_utf8_lossy(resp.body()), answer);
        }
        // One Context, its buffer reused.
        assert_eq!(host.finish()?.starts, 1);
        Ok(())
    }

    #[test]
    fn streams_a_download_of_the_size_asked() -> Result<(), effe_abi::Error> {
        let mut host = TestHost::<super::Digest>::new()?;
        let n = 3 * super::BLOCK + 1000;
        let resp = host.call(http::Request::get(format!("/?bytes={n}")).body("")?);
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "application/octet-stream");
        let body = resp.body();
        assert_eq!(body.len(), n);
        assert!(body
            .iter()
            .enumerate()
            .all(|(i, b)| usize::from(*b) == i % 251));
        let flushes = resp.extensions().get::<Flushes>().expect("flushed");
        assert_eq!(flushes.chunks.iter().sum::<usize>(), n);

        assert_eq!(
            host.call(http::Request::get("/?bytes=0").body("")?).body(),
            b""
        );
        let resp = host.call(http::Request::get("/?bytes=lots").body("")?);
        assert_eq!(resp.status(), 400);
        Ok(())
    }
}
