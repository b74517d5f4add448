//! Streaming both ways: the host's side of a response sent as it is written ([`StreamSink`])
//! and of a request body read as it arrives ([`BodySource`]), the `stream@1` services that
//! reach them, and the effe's [`BodyReader`].
//!
//! Memory stays bounded on both sides: a response's body is handed to the sink in chunks of at
//! most [`CHUNK`] bytes and the sink blocks while the client is behind; a body is read into the
//! effe's own buffer.

use std::ffi::c_void;
use std::fmt;
use std::io;
use std::ptr::NonNull;

use abi_stable::std_types::{RResult, RSlice, RSliceMut, RString};
use http::{HeaderMap, StatusCode};

use crate::abi::ResponseBuffer;
use crate::interfaces::StreamV1;
use crate::Request;

/// Once a response streams, its body goes to the sink in chunks of this many bytes (or at each
/// flush, whichever comes first): small writes are coalesced, large ones split.
pub const CHUNK: usize = 16 * 1024;

/// Where the host sends a response that streams. Implemented by the host; [`ResponseBuffer`]
/// calls it on the effe's flushes and writes, from the thread `run` is called on.
pub trait StreamSink: Send + fmt::Debug {
    /// Sends the status and headers. An error means the client is gone.
    fn head(&mut self, status: StatusCode, headers: HeaderMap) -> Result<(), String>;
    /// Sends a chunk of body, blocking while the client is behind. An error means the client
    /// is gone (or the stream was cut, e.g. at the Run deadline).
    fn data(&mut self, chunk: Vec<u8>) -> Result<(), String>;
    /// Ends the stream as failed: the client must not take what it got for a whole response.
    fn cut(self: Box<Self>);
}

/// Where the host gets a request body that streams. Implemented by the host.
pub trait BodySource: Send + fmt::Debug {
    /// Reads the next bytes into `buf`, blocking until some arrive; `Ok(0)` at the end of the
    /// body. An error (too large, too slow, the client gone) ends it.
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, String>;
}

/// The `stream@1` services the host offers `run@2`.
pub(crate) static STREAM: StreamV1 = StreamV1 {
    flush: stream_flush,
    write: stream_write,
    read: stream_read,
};

extern "C" fn stream_flush(state: NonNull<c_void>) -> RResult<(), RString> {
    crate::ffi::with_buffer(state, |buf| {
        buf.guarded(ResponseBuffer::flush)
            .unwrap_or_else(|| RResult::RErr("the host's response sink panicked".into()))
    })
}

extern "C" fn stream_write(state: NonNull<c_void>, chunk: RSlice<'_, u8>) -> RResult<(), RString> {
    crate::ffi::with_buffer(state, |buf| {
        buf.guarded(|buf| buf.write(chunk.as_slice()))
            .unwrap_or_else(|| RResult::RErr("the host's response sink panicked".into()))
    })
}

extern "C" fn stream_read(
    state: NonNull<c_void>,
    mut into: RSliceMut<'_, u8>,
) -> RResult<usize, RString> {
    crate::ffi::with_buffer(state, |buf| {
        buf.guarded(|buf| buf.read_body(into.as_mut_slice()))
            .unwrap_or_else(|| RResult::RErr("the host's body source panicked".into()))
    })
}

/// The request body as an [`io::Read`]: streamed from the host when the effe declared
/// [`STREAM_REQUEST_BODY`](crate::Effe::STREAM_REQUEST_BODY) and the host streams it, else
/// read from [`Request::body`].
pub struct BodyReader<'a> {
    from: From<'a>,
}

enum From<'a> {
    Memory(&'a [u8]),
    Host(&'static StreamV1, NonNull<c_void>),
}

impl fmt::Debug for BodyReader<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.from {
            From::Memory(left) => write!(f, "BodyReader({} bytes left in memory)", left.len()),
            From::Host(..) => f.write_str("BodyReader(streamed)"),
        }
    }
}

impl<'a> Request<'a> {
    /// The body, as it arrives when streamed (see
    /// [`STREAM_REQUEST_BODY`](crate::Effe::STREAM_REQUEST_BODY)), else from memory. Each
    /// call starts where the last reader stopped; read it during `run` only.
    ///
    /// A read fails when the body is larger than allowed (the client gets `413`), stalls past
    /// the host's `--body-read-timeout` (`408`), or the client goes away.
    ///
    /// ```
    /// use std::io::Read;
    /// # effe_abi::testing::with_request(http::Request::post("/").body("data").unwrap(), |req| {
    /// let mut total = 0;
    /// let mut reader = req.body_reader();
    /// let mut buf = [0u8; 64 * 1024];
    /// loop {
    ///     let n = reader.read(&mut buf)?;
    ///     if n == 0 {
    ///         break;
    ///     }
    ///     total += n; // digest &buf[..n] here
    /// }
    /// assert_eq!(total, 4);
    /// # Ok::<(), std::io::Error>(()) }).unwrap();
    /// ```
    pub fn body_reader(&self) -> BodyReader<'a> {
        let from = match crate::ffi::streamed_body_of(self) {
            Some((stream, state)) => From::Host(stream, state),
            None => From::Memory(self.body()),
        };
        BodyReader { from }
    }
}

impl io::Read for BodyReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.from {
            From::Memory(left) => io::Read::read(left, buf),
            From::Host(stream, state) => (stream.read)(*state, buf.into())
                .into_result()
                .map_err(|why| io::Error::other(why.to_string())),
        }
    }
}
