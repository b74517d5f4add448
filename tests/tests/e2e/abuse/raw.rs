//! A raw HTTP/1.1 client: it knows exactly how many bytes of a response arrived (hyper's client
//! does not say), and it is cheap enough for a hundred thousand requests in a debug build.

use effe_tests::PATIENCE;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A whole response.
pub(super) struct Answer {
    pub(super) status: u16,
    /// The head, lower-cased.
    pub(super) head: String,
}

impl Answer {
    pub(super) fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (n, v) = line.split_once(':')?;
            (n == name).then(|| v.trim())
        })
    }

    /// The host said it closes the connection after this response.
    pub(super) fn closes(&self) -> bool {
        self.header("connection") == Some("close")
    }
}

/// How one request on a raw HTTP/1.1 connection ended.
pub(super) enum Outcome {
    Answered(Answer),
    /// The connection ended (closed or reset) before a single byte of a response: the host
    /// never took the request.
    NotTaken(String),
    /// Anything else: part of a response, something that is not one, or no end in time.
    Broken(String),
}

/// Writes `request` and reads one whole response (framed by `content-length`), within
/// [`PATIENCE`].
pub(super) async fn exchange(tcp: &mut TcpStream, request: &[u8]) -> Outcome {
    tokio::time::timeout(PATIENCE, exchange_unbounded(tcp, request))
        .await
        .unwrap_or_else(|_| Outcome::Broken(format!("no whole answer within {PATIENCE:?}")))
}

async fn exchange_unbounded(tcp: &mut TcpStream, request: &[u8]) -> Outcome {
    if let Err(e) = tcp.write_all(request).await {
        return Outcome::NotTaken(format!("write: {e}"));
    }
    let mut got = Vec::with_capacity(512);
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            let status = head.get(9..12).and_then(|s| s.parse().ok());
            let length = head.lines().find_map(|l| {
                l.strip_prefix("content-length:")
                    .and_then(|v| v.trim().parse::<usize>().ok())
            });
            let (Some(status), Some(length)) = (status, length) else {
                return Outcome::Broken(format!("not a framed response: {head:?}"));
            };
            let whole = end + 4 + length;
            if got.len() > whole {
                return Outcome::Broken(format!("{} bytes after the response", got.len() - whole));
            }
            if got.len() == whole {
                return Outcome::Answered(Answer { status, head });
            }
        }
        let why = match tcp.read(&mut chunk).await {
            Ok(0) => "closed".to_owned(),
            Ok(n) => {
                got.extend_from_slice(&chunk[..n]);
                continue;
            }
            Err(e) => e.to_string(),
        };
        return if got.is_empty() {
            Outcome::NotTaken(why)
        } else {
            let shown = String::from_utf8_lossy(&got[..got.len().min(120)]).into_owned();
            Outcome::Broken(format!("{why} after {} bytes: {shown:?}", got.len()))
        };
    }
}

/// `GET path`, keep-alive.
pub(super) fn get_raw(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").into_bytes()
}
