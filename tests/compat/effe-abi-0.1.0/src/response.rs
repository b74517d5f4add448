//! The response side: the effe writes through a [`ResponseWriter`]; the host supplies the sink.
//!
//! The writer is an `abi_stable` trait object over a sink that lives in the host, so every
//! status, header and body byte is validated and stored by the host's own code and allocator.
//! The sink's methods never panic: they are called through `extern "C"` shims.

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::sabi_types::RMut;
use abi_stable::std_types::{RResult, RSlice, RStr, RString};
use abi_stable::StableAbi;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use crate::ffi::{ResponseSink, ResponseSink_TO};
use crate::Error;

/// Where an effe writes its response during one `run` call.
///
/// Status and headers may be set in any order before `run` returns; the host sends the
/// response once `run` returns. If `run` returns an error and nothing was written, the client
/// gets `500`; if something was written, the client gets what was written.
///
/// # Examples
///
/// ```
/// use std::io::Write;
/// # fn demo(w: &mut effe_abi::ResponseWriter<'_>) -> Result<(), effe_abi::Error> {
/// w.status(201)?.header("content-type", "text/plain")?;
/// w.body("created ");
/// write!(w, "{}", 42)?;
/// # Ok(()) }
/// # let mut buf = effe_abi::ResponseBuffer::new();
/// # demo(&mut buf.writer()).unwrap();
/// # let (status, headers, body) = buf.into_parts();
/// # assert_eq!((status.as_u16(), &body[..]), (201, &b"created 42"[..]));
/// # assert_eq!(headers["content-type"], "text/plain");
/// ```
#[repr(transparent)]
#[derive(StableAbi)]
pub struct ResponseWriter<'a> {
    sink: ResponseSink_TO<'a, RMut<'a, ()>>,
}

impl ResponseWriter<'_> {
    /// Sets the status code.
    ///
    /// # Errors
    ///
    /// If `code` is not a final status (200–999).
    pub fn status(&mut self, code: u16) -> Result<&mut Self, Error> {
        self.sink
            .set_status(code)
            .into_result()
            .map_err(Error::msg)?;
        Ok(self)
    }

    /// Appends a header. Hop-by-hop headers (`content-length`, `transfer-encoding`,
    /// `connection`, …) are ignored: the host frames the response itself.
    ///
    /// # Errors
    ///
    /// If the name or value is not valid in HTTP.
    pub fn header(&mut self, name: &str, value: impl AsRef<[u8]>) -> Result<&mut Self, Error> {
        self.sink
            .append_header(name.into(), value.as_ref().into())
            .into_result()
            .map_err(Error::msg)?;
        Ok(self)
    }

    /// Appends `bytes` to the body.
    pub fn body(&mut self, bytes: impl AsRef<[u8]>) -> &mut Self {
        self.sink.write_body(bytes.as_ref().into());
        self
    }

    /// Writes a whole [`http::Response`]: status, headers, body.
    ///
    /// # Errors
    ///
    /// As [`status`](Self::status) and [`header`](Self::header).
    pub fn send<B: AsRef<[u8]>>(&mut self, response: http::Response<B>) -> Result<(), Error> {
        let (parts, body) = response.into_parts();
        self.status(parts.status.as_u16())?;
        for (name, value) in &parts.headers {
            self.header(name.as_str(), value.as_bytes())?;
        }
        self.body(body);
        Ok(())
    }
}

impl std::io::Write for ResponseWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.body(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The host's sink: collects what an effe writes into an `http` status, header map and body.
///
/// Also useful in an effe's own unit tests, to call `run` without a host.
#[derive(Debug, Default)]
pub struct ResponseBuffer {
    status: Option<StatusCode>,
    headers: HeaderMap,
    body: Vec<u8>,
    written: bool,
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    use http::header::*;
    [
        CONTENT_LENGTH,
        TRANSFER_ENCODING,
        CONNECTION,
        TE,
        TRAILER,
        UPGRADE,
    ]
    .contains(name)
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}

impl ResponseBuffer {
    /// An empty response: status 200, no headers, no body.
    pub fn new() -> Self {
        Self::default()
    }

    /// A writer over this buffer, to pass to `run`.
    pub fn writer(&mut self) -> ResponseWriter<'_> {
        ResponseWriter {
            sink: ResponseSink_TO::from_ptr(self, TD_Opaque),
        }
    }

    /// Whether the effe wrote anything: a status, a header or body bytes.
    pub fn is_written(&self) -> bool {
        self.written
    }

    /// The status (200 unless set), headers and body.
    pub fn into_parts(self) -> (StatusCode, HeaderMap, Vec<u8>) {
        (
            self.status.unwrap_or(StatusCode::OK),
            self.headers,
            self.body,
        )
    }
}

/// An error for the effe; out of line, so that the sink's hot path stays small.
#[cold]
#[inline(never)]
fn refuse(why: std::fmt::Arguments<'_>) -> RResult<(), RString> {
    RResult::RErr(why.to_string().into())
}

impl ResponseSink for ResponseBuffer {
    fn set_status(&mut self, status: u16) -> RResult<(), RString> {
        self.written = true;
        match StatusCode::from_u16(status) {
            Ok(code) if !code.is_informational() => {
                self.status = Some(code);
                RResult::ROk(())
            }
            _ => refuse(format_args!("invalid response status {status}")),
        }
    }

    fn append_header(&mut self, name: RStr<'_>, value: RSlice<'_, u8>) -> RResult<(), RString> {
        self.written = true;
        let name = match HeaderName::from_bytes(name.as_str().as_bytes()) {
            Ok(name) => name,
            Err(_) => return refuse(format_args!("invalid header name {name:?}")),
        };
        let value = match HeaderValue::from_bytes(value.as_slice()) {
            Ok(value) => value,
            Err(_) => return refuse(format_args!("invalid value for header {name}")),
        };
        if !is_hop_by_hop(&name) {
            self.headers.append(name, value);
        }
        RResult::ROk(())
    }

    fn write_body(&mut self, chunk: RSlice<'_, u8>) {
        self.written = true;
        self.body.extend_from_slice(chunk.as_slice());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffer_validates_and_collects() {
        let mut buf = ResponseBuffer::new();
        {
            let mut w = buf.writer();
            assert!(w.status(101).is_err());
            assert!(w.header("bad name", "x").is_err());
            assert!(w.header("x-ok", b"\n").is_err());
            w.status(404).unwrap().header("x-a", "1").unwrap();
            w.header("x-a", "2")
                .unwrap()
                .header("content-length", "9")
                .unwrap();
            w.body("not ").body("found");
        }
        assert!(buf.is_written());
        let (status, headers, body) = buf.into_parts();
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(headers.get_all("x-a").iter().count(), 2);
        assert!(headers.get("content-length").is_none());
        assert_eq!(body, b"not found");
    }

    #[test]
    fn untouched_buffer_is_not_written() {
        let buf = ResponseBuffer::new();
        assert!(!buf.is_written());
        assert_eq!(buf.into_parts().0, StatusCode::OK);
    }
}
