//! The response side: the effe writes through a [`ResponseWriter`]; the host supplies the sink.
//!
//! The writer is an `abi_stable` trait object over a sink that lives in the host, so every
//! status, header and body byte is validated and stored by the host's own code and allocator.
//! The sink's methods must never panic: they are called through `extern "C"` shims, where an
//! unwind aborts the host. They use only fallible APIs, cap what an effe can make them store, and
//! catch any panic left.

use std::borrow::Cow;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::sabi_types::RMut;
use abi_stable::std_types::{RResult, RSlice, RStr, RString};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use std::ffi::c_void;
use std::ptr::NonNull;

use crate::ffi::{ResponseSink, ResponseSink_TO};
use crate::interfaces::{CallV1, HostCall, ResponseV1, StreamV1};
use crate::stream::{BodySource, StreamSink, CHUNK};
use crate::{module, Error};

/// Where an effe writes its response during one `run` call.
///
/// Status and headers may be set in any order before `run` returns; the host sends the
/// response once `run` returns. If `run` returns an error and nothing was written (no status,
/// header or body byte was stored: refused writes do not count), the client gets `500`; if
/// something was written, the client gets what was written.
///
/// The headers are capped at [`MAX_RESPONSE_HEADERS`] and [`MAX_RESPONSE_HEADER_BYTES`]. Past a
/// cap, or if the host cannot allocate the body, the response is broken: later writes are
/// refused or dropped, and the client gets `500` whatever `run` returns, rather than a response
/// missing what the effe wrote last.
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
pub struct ResponseWriter<'a> {
    out: Out<'a>,
    /// `stream@1`, once looked up.
    stream: Option<Option<&'static StreamV1>>,
    /// Whether anything was written through this writer (whether the host kept it or not):
    /// an error's answer may replace it only where the host can reset the response.
    touched: bool,
}

/// Where the writes go.
enum Out<'a> {
    /// The baseline sink, in a host that predates `run@2` (effe-abi 0.1.0).
    Sink(ResponseSink_TO<'a, RMut<'a, ()>>),
    /// The host's call services (`run@2`), and in unit tests over a [`ResponseBuffer`].
    Call(HostCall<'a>),
}

impl<'a> ResponseWriter<'a> {
    pub(crate) fn over_sink<'s>(raw: &'a mut module::ResponseWriter<'s>) -> Self {
        ResponseWriter {
            out: Out::Sink(raw.sink.sabi_reborrow_mut()),
            stream: None,
            touched: false,
        }
    }

    pub(crate) fn over_call(call: HostCall<'a>) -> Self {
        ResponseWriter {
            out: Out::Call(call),
            stream: None,
            touched: false,
        }
    }

    /// The host's per-call services, if it has them (effe-abi 0.1.2 and later).
    fn call_services(&self) -> Option<(&'static CallV1, NonNull<c_void>)> {
        match &self.out {
            Out::Sink(_) => None,
            Out::Call(call) => Some((call.lookup::<CallV1>()?, call.state())),
        }
    }

    /// The host's streaming services, looked up once per call.
    fn stream_services(&mut self) -> Option<(&'static StreamV1, NonNull<c_void>)> {
        let Out::Call(call) = &self.out else {
            return None;
        };
        let state = call.state();
        let stream = *self.stream.get_or_insert_with(|| call.lookup::<StreamV1>());
        Some((stream?, state))
    }

    /// Asks the host to stop this call's Context after the call; `false` if it cannot.
    pub(crate) fn retire(&mut self) -> bool {
        self.call_services()
            .map(|(services, state)| (services.retire)(state))
            .is_some()
    }

    /// Answers `status` with `headers` and `body` in place of whatever was written (with
    /// `content-type: text/plain` unless `headers` say otherwise); `false` if that cannot be
    /// done (an older host, after a write; a broken response; an invalid header).
    pub(crate) fn answer(
        &mut self,
        status: u16,
        headers: &[(String, Vec<u8>)],
        body: &str,
    ) -> bool {
        // Checked before anything is reset: an answer that cannot be whole is not begun.
        let valid = headers.iter().all(|(name, value)| {
            HeaderName::from_bytes(name.as_bytes()).is_ok()
                && HeaderValue::from_bytes(value).is_ok()
        });
        if !valid {
            return false;
        }
        let reset = match self.call_services() {
            Some((services, state)) => (services.reset)(state),
            None => !self.touched,
        };
        let typed = headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("content-type"));
        reset
            && self.status(status).is_ok()
            && (typed
                || self
                    .header("content-type", "text/plain; charset=utf-8")
                    .is_ok())
            && headers
                .iter()
                .all(|(name, value)| self.header(name, value).is_ok())
            && {
                self.body(body);
                true
            }
    }
}

impl ResponseWriter<'_> {
    /// Sets the status code.
    ///
    /// # Errors
    ///
    /// If `code` is not a final status (200–999), or the response is broken.
    pub fn status(&mut self, code: u16) -> Result<&mut Self, Error> {
        self.touched = true;
        match &mut self.out {
            Out::Sink(sink) => sink.set_status(code),
            Out::Call(call) => (call.response().set_status)(call.state(), code),
        }
        .into_result()
        .map_err(Error::msg)?;
        Ok(self)
    }

    /// Appends a header. Hop-by-hop headers (`content-length`, `transfer-encoding`,
    /// `connection`, …) are validated then ignored: the host frames the response itself.
    ///
    /// # Errors
    ///
    /// If the name or value is not valid in HTTP (nothing is stored; the effe may carry on), or
    /// the header would take the response past [`MAX_RESPONSE_HEADERS`] or
    /// [`MAX_RESPONSE_HEADER_BYTES`], or the response is broken (the client will get `500`).
    pub fn header(&mut self, name: &str, value: impl AsRef<[u8]>) -> Result<&mut Self, Error> {
        let value = value.as_ref();
        self.touched = true;
        match &mut self.out {
            Out::Sink(sink) => sink.append_header(name.into(), value.into()),
            Out::Call(call) => {
                (call.response().append_header)(call.state(), name.into(), value.into())
            }
        }
        .into_result()
        .map_err(Error::msg)?;
        Ok(self)
    }

    /// Sets a header, replacing every value it had (where [`header`](Self::header) appends).
    ///
    /// Needs a host built with effe-abi 0.1.1 or later; an older host cannot replace a header,
    /// and this returns an error there without changing anything (keep what was appended, or
    /// decide not to append before).
    ///
    /// # Errors
    ///
    /// As [`header`](Self::header), and in a host older than effe-abi 0.1.1.
    pub fn set_header(&mut self, name: &str, value: impl AsRef<[u8]>) -> Result<&mut Self, Error> {
        let value = value.as_ref();
        self.touched = true;
        match &mut self.out {
            Out::Sink(_) => {
                return Err(Error::msg(
                    "set_header needs a host built with effe-abi 0.1.1 or later",
                ))
            }
            Out::Call(call) => {
                (call.response().set_header)(call.state(), name.into(), value.into())
            }
        }
        .into_result()
        .map_err(Error::msg)?;
        Ok(self)
    }

    /// Appends `bytes` to the body. If the host cannot allocate them, the response is broken
    /// and the client gets `500`.
    pub fn body(&mut self, bytes: impl AsRef<[u8]>) -> &mut Self {
        let bytes = bytes.as_ref();
        self.touched |= !bytes.is_empty();
        match &mut self.out {
            Out::Sink(sink) => sink.write_body(bytes.into()),
            Out::Call(call) => (call.response().write_body)(call.state(), bytes.into()),
        }
        self
    }

    /// Answers `text` as `text/plain; charset=utf-8` (replacing any content type set before).
    /// The status stays as set (200 unless set).
    pub fn text(&mut self, text: impl AsRef<str>) -> &mut Self {
        // Only a broken response refuses a valid header; the body then goes nowhere too.
        let _ = self.content_type("text/plain; charset=utf-8");
        self.body(text.as_ref())
    }

    /// Sets `content-type`, replacing any set before; appended in a host that cannot replace
    /// a header (older than effe-abi 0.1.1).
    pub(crate) fn content_type(&mut self, value: &str) -> Result<&mut Self, Error> {
        if self.set_header("content-type", value).is_err() {
            self.header("content-type", value)?;
        }
        Ok(self)
    }

    /// Sends what was written so far: the first flush sends the status and headers, and the
    /// response then *streams*: every later write goes to the client as it is made (chunked on
    /// HTTP/1.1, DATA frames on HTTP/2), in chunks of up to 16 KiB, and blocks while the client
    /// is behind. Write with [`std::io::Write`] (`write!`, `write_all`), which fails once the
    /// client has gone; [`body`](Self::body) cannot fail, and its failure shows at the next
    /// flush.
    ///
    /// After the first flush the status and headers can no longer change, and an error or a
    /// panic from `run` *cuts* the stream: HTTP/1.1 closes the connection without the last
    /// chunk, HTTP/2 resets the stream, so the client cannot take it for a whole response.
    ///
    /// A response that is never flushed is sent whole when `run` returns, with its
    /// `content-length`, as before.
    ///
    ///
    /// # Errors
    ///
    /// When the client has gone, the host's `--timeout` has passed (the stream was cut), or the
    /// response is broken.
    ///
    /// A [`NONBLOCKING`](crate::Effe) effe cannot stream (its writes may not block): there,
    /// as in an older host, this does nothing and the response is sent whole.
    ///
    /// ```
    /// use std::io::Write;
    /// # fn events(w: &mut effe_abi::ResponseWriter<'_>) -> Result<(), effe_abi::Error> {
    /// w.header("content-type", "text/event-stream")?;
    /// for n in 1..=3 {
    ///     write!(w, "data: {n}\n\n")?;
    ///     w.flush()?; // this event now, not when run returns
    /// }
    /// # Ok(()) }
    /// ```
    pub fn flush(&mut self) -> Result<(), Error> {
        match self.stream_services() {
            Some((stream, state)) => (stream.flush)(state).into_result().map_err(Error::msg),
            None => Ok(()),
        }
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

/// Writes go to the body. Once the response streams ([`ResponseWriter::flush`]), a write
/// fails when the client has gone: stop writing and return.
impl std::io::Write for ResponseWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.stream_services() {
            Some((stream, state)) => {
                self.touched |= !buf.is_empty();
                (stream.write)(state, buf.into())
                    .into_result()
                    .map_err(|why| {
                        std::io::Error::new(std::io::ErrorKind::BrokenPipe, why.to_string())
                    })?;
            }
            None => {
                self.body(buf);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        ResponseWriter::flush(self).map_err(|e| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, e.message().to_owned())
        })
    }
}

/// The most headers one response may carry (repeated names count once per value).
///
/// Enforced by the host's sink (the [`ResponseBuffer`] of the effe-abi the host was built with).
/// Beyond it, [`ResponseWriter::header`] returns an error and the response is broken: the client
/// gets `500`, whatever `run` returns.
//
// Real responses carry tens of headers. The HTTP/1 parsers of hyper and Envoy accept 100 by
// default, curl 5,000. 1,000 leaves room for unusual but legitimate responses (behind a proxy
// configured for them) and stops a runaway effe, e.g. one that makes headers from client input,
// long before memory or the `http` crate's hard limit (it panics near 24K distinct names) matter.
pub const MAX_RESPONSE_HEADERS: usize = 1000;

/// The most bytes of header names and values one response may carry (64 KiB).
///
/// Enforced like [`MAX_RESPONSE_HEADERS`]; no single header may be larger either.
//
// A typical response carries a few KiB of headers, and intermediaries take little more: nginx
// keeps them in one 4–8 KiB proxy buffer by default, Envoy's default limit is 60 KiB, curl warns
// past 60,000 bytes on HTTP/2 (peers may reset the stream) and refuses 300 KiB. A response past
// 64 KiB would not get through most of them anyway.
pub const MAX_RESPONSE_HEADER_BYTES: usize = 64 * 1024;

/// The host's sink: collects what an effe writes into an `http` status, header map and body.
///
/// Also useful in an effe's own unit tests, to call `run` without a host.
///
/// A write that is refused (an invalid status, name or value) stores nothing and leaves the
/// buffer as it was: the effe sees the error and may carry on. A write that cannot be kept
/// (past [`MAX_RESPONSE_HEADERS`] or [`MAX_RESPONSE_HEADER_BYTES`], a body the allocator cannot
/// grow) *breaks* the buffer: it accepts nothing more, and the host answers `500` instead of
/// sending a response that is not the one the effe wrote ([`failure`](Self::failure)).
#[derive(Debug, Default)]
pub struct ResponseBuffer {
    /// What the host lent for streaming, if anything: boxed, so that a buffer that does not
    /// stream (every inline Run) stays small.
    streams: Option<Box<Streams>>,
    /// The head has gone to the stream: `body` holds what is not sent yet.
    streaming: bool,
    status: Option<StatusCode>,
    headers: HeaderMap,
    /// Name and value bytes of `headers`, against [`MAX_RESPONSE_HEADER_BYTES`].
    header_bytes: usize,
    body: Vec<u8>,
    written: bool,
    /// Why the response can no longer be sent; static text where allocating may fail.
    broken: Option<Cow<'static, str>>,
    /// The effe asked for its Context to be stopped after this call.
    retire: bool,
}

/// A buffer's streaming parts, set by the host.
#[derive(Debug, Default)]
struct Streams {
    /// Where the response goes once the effe flushes.
    sink: Option<Box<dyn StreamSink>>,
    /// Why the stream failed (the client went away): later writes are dropped.
    failed: Option<String>,
    /// Where a streamed request body comes from.
    body: Option<Box<dyn BodySource>>,
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

    /// A writer over this buffer, to pass to `run`: in an effe's unit tests, what the host does.
    pub fn writer(&mut self) -> ResponseWriter<'_> {
        ResponseWriter::over_call(self.host_call())
    }

    /// This buffer as the host lends it to `run@2`.
    pub fn host_call(&mut self) -> HostCall<'_> {
        HostCall::new(NonNull::from(self).cast(), &SERVICES)
    }

    /// This buffer as the baseline `run` takes it (an effe built against effe-abi 0.1.0).
    pub fn raw_writer(&mut self) -> module::ResponseWriter<'_> {
        module::ResponseWriter {
            sink: ResponseSink_TO::from_ptr(self, TD_Opaque),
        }
    }

    /// Whether the effe wrote anything: a status, a stored header or body bytes. Refused writes
    /// and ignored hop-by-hop headers store nothing and do not count.
    pub fn is_written(&self) -> bool {
        self.written
    }

    /// Whether the effe asked the host to stop this call's Context rather than reuse it
    /// ([`Error::retire`](crate::Error::retire)).
    pub fn retire_requested(&self) -> bool {
        self.retire
    }

    /// Forgets the status, headers and body written so far (an error's answer replaces them);
    /// `false`, changing nothing, if the response is broken or its head has been sent.
    fn reset(&mut self) -> bool {
        if self.broken.is_some() || self.streaming {
            return false;
        }
        self.status = None;
        self.headers.clear();
        self.header_bytes = 0;
        self.body.clear();
        self.written = false;
        true
    }

    /// Whether the response is broken: it cannot be sent as written, and the host answers `500`.
    pub fn is_broken(&self) -> bool {
        self.broken.is_some()
    }

    /// Why the response is broken, if it is: `too many response headers (limit 1000)`, …
    pub fn failure(&self) -> Option<&str> {
        self.broken.as_deref()
    }

    /// Lets the effe stream this response: on its first flush the head goes to `sink`, and the
    /// body follows as it is written. The host then ends the stream with
    /// [`finish_stream`](Self::finish_stream).
    pub fn stream_to(&mut self, sink: Box<dyn StreamSink>) {
        self.streams.get_or_insert_with(Box::default).sink = Some(sink);
    }

    /// Gives the effe the request body from `source`, as it arrives.
    pub fn body_from(&mut self, source: Box<dyn BodySource>) {
        self.streams.get_or_insert_with(Box::default).body = Some(source);
    }

    /// Whether the head has been sent (the effe flushed): the response is the stream's, and
    /// [`into_parts`](Self::into_parts) has nothing to send.
    pub fn is_streaming(&self) -> bool {
        self.streaming
    }

    /// After `run`: sends what is left of a streaming response and ends it, or cuts it if `ok`
    /// is false (`run` failed: the client must not take the stream for a whole response).
    pub fn finish_stream(mut self, ok: bool) {
        let Some(streams) = self.streams.take() else {
            return;
        };
        let Some(mut sink) = streams.sink else {
            return;
        };
        let ok = ok && self.broken.is_none() && streams.failed.is_none();
        if ok && !self.body.is_empty() && sink.data(std::mem::take(&mut self.body)).is_err() {
            return;
        }
        if !ok {
            sink.cut();
        }
    }

    /// The status (200 unless set), headers and body. For a broken response, what was kept before
    /// it broke: do not send it.
    pub fn into_parts(self) -> (StatusCode, HeaderMap, Vec<u8>) {
        (
            self.status.unwrap_or(StatusCode::OK),
            self.headers,
            self.body,
        )
    }

    /// Runs one sink method. A panic must not reach the `extern "C"` shim, where it would abort
    /// the host: none is known (this is defence in depth), but one breaks the response instead.
    /// Free when nothing panics.
    pub(crate) fn guarded<T>(&mut self, method: impl FnOnce(&mut Self) -> T) -> Option<T> {
        match catch_unwind(AssertUnwindSafe(|| method(&mut *self))) {
            Ok(out) => Some(out),
            Err(_) => {
                self.broken = Some(Cow::Borrowed("the host's response sink panicked"));
                None
            }
        }
    }

    /// The error for a write to a broken response.
    #[cold]
    #[inline(never)]
    fn refuse_broken(&self) -> RResult<(), RString> {
        refuse(format_args!(
            "{}",
            self.failure().unwrap_or("response broken")
        ))
    }

    /// Breaks the response for a cap and tells the effe why.
    #[cold]
    #[inline(never)]
    fn break_for(&mut self, cap: Cap) -> RResult<(), RString> {
        let why = cap.to_string();
        let err = RResult::RErr(RString::from(why.as_str()));
        self.broken = Some(Cow::Owned(why));
        err
    }

    fn store_status(&mut self, status: u16) -> RResult<(), RString> {
        if self.broken.is_some() {
            return self.refuse_broken();
        }
        if self.streaming {
            return refuse(format_args!("the response head has been sent (flushed)"));
        }
        match StatusCode::from_u16(status) {
            Ok(code) if !code.is_informational() => {
                self.status = Some(code);
                self.written = true;
                RResult::ROk(())
            }
            _ => refuse(format_args!("invalid response status {status}")),
        }
    }

    /// Replaces every value of `name` with `value`: the old ones go, then it is appended, with
    /// the same checks. Refused (nothing changes) if the new value is invalid.
    fn replace_header(&mut self, name: &str, value: &[u8]) -> RResult<(), RString> {
        if self.broken.is_some() {
            return self.refuse_broken();
        }
        let (Ok(parsed), Ok(_)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value),
        ) else {
            // The same refusal `store_header` gives, before anything is removed.
            return self.store_header(name, value);
        };
        if let http::header::Entry::Occupied(entry) = self.headers.entry(parsed) {
            let (name, old) = entry.remove_entry_mult();
            let freed: usize = old.map(|v| name.as_str().len() + v.len()).sum();
            self.header_bytes -= freed;
        }
        self.store_header(name, value)
    }

    fn store_header(&mut self, name: &str, value: &[u8]) -> RResult<(), RString> {
        if self.broken.is_some() {
            return self.refuse_broken();
        }
        if self.streaming {
            return refuse(format_args!("the response head has been sent (flushed)"));
        }
        let size = name.len() + value.len();
        // Before parsing, which copies: bounds what one call can make the host allocate.
        if size > MAX_RESPONSE_HEADER_BYTES {
            return self.break_for(Cap::Bytes);
        }
        let (name, value) = match recent::get(name, value) {
            Some(parsed) => parsed,
            None => match parse_header(name, value) {
                Ok(Some(parsed)) => parsed,
                // Validated, then dropped: the host frames the response. Nothing is stored, so
                // this neither counts against the caps nor makes the response written.
                Ok(None) => return RResult::ROk(()),
                Err(refused) => return refused,
            },
        };
        if self.headers.len() >= MAX_RESPONSE_HEADERS {
            return self.break_for(Cap::Count);
        }
        if size > MAX_RESPONSE_HEADER_BYTES - self.header_bytes {
            return self.break_for(Cap::Bytes);
        }
        // The `http` crate's own limit is far above ours; `append` would panic on it.
        if self.headers.try_append(name, value).is_err() {
            return self.break_for(Cap::Count);
        }
        self.header_bytes += size;
        self.written = true;
        RResult::ROk(())
    }

    /// The body cannot grow: frees it (memory is short) and breaks the response.
    #[cold]
    #[inline(never)]
    fn body_failed(&mut self) {
        self.body = Vec::new();
        self.broken = Some(Cow::Borrowed(
            "response body too large: the host could not allocate it",
        ));
    }

    fn store_body(&mut self, chunk: &[u8]) {
        if self.broken.is_some() || chunk.is_empty() {
            return;
        }
        // `extend_from_slice` aborts the process when the allocator fails (or panics past
        // `isize::MAX`); the effe cannot be told, so the response breaks and the host answers 500
        // rather than send a truncated body.
        if self.streaming {
            return self.stream_body(chunk);
        }
        if self.body.try_reserve(chunk.len()).is_err() {
            return self.body_failed();
        }
        self.body.extend_from_slice(chunk);
        self.written = true;
    }

    /// A write once streaming: into chunks of at most [`CHUNK`], each sent when full.
    #[inline(never)]
    fn stream_body(&mut self, mut chunk: &[u8]) {
        while !chunk.is_empty() && self.stream_failure().is_none() {
            let room = CHUNK - self.body.len().min(CHUNK);
            let (now, later) = chunk.split_at(room.min(chunk.len()));
            self.body.extend_from_slice(now);
            chunk = later;
            if self.body.len() >= CHUNK {
                self.send_body();
            }
        }
    }

    /// Sends `body` down the stream; a failure is kept, and what is written after it dropped.
    fn send_body(&mut self) {
        let Some(streams) = &mut self.streams else {
            return;
        };
        let Some(sink) = &mut streams.sink else {
            return;
        };
        let chunk = std::mem::replace(&mut self.body, Vec::with_capacity(CHUNK));
        if let Err(why) = sink.data(chunk) {
            streams.failed = Some(why);
            self.body = Vec::new();
        }
    }

    /// Why the stream failed, if it did.
    fn stream_failure(&self) -> Option<&str> {
        self.streams.as_ref()?.failed.as_deref()
    }

    /// `stream@1`'s flush: the head the first time, then the body written since.
    pub(crate) fn flush(&mut self) -> RResult<(), RString> {
        if self.broken.is_some() {
            return self.refuse_broken();
        }
        if let Some(why) = self.stream_failure() {
            return refuse(format_args!("{why}"));
        }
        // Where the host lends no stream (a NONBLOCKING effe's writes may not block), the
        // response is sent whole when `run` returns, as in an older host: correct, only late.
        let Some(sink) = self.streams.as_mut().and_then(|s| s.sink.as_mut()) else {
            return RResult::ROk(());
        };
        if !self.streaming {
            let status = self.status.unwrap_or(StatusCode::OK);
            if let Err(why) = sink.head(status, std::mem::take(&mut self.headers)) {
                let shown = refuse(format_args!("{why}"));
                if let Some(streams) = &mut self.streams {
                    streams.failed = Some(why);
                }
                return shown;
            }
            self.streaming = true;
            self.written = true;
        }
        if !self.body.is_empty() {
            self.send_body();
        }
        match self.stream_failure() {
            Some(why) => refuse(format_args!("{why}")),
            None => RResult::ROk(()),
        }
    }

    /// `stream@1`'s write: as `write_body`, and the stream's failure if it has failed.
    pub(crate) fn write(&mut self, chunk: &[u8]) -> RResult<(), RString> {
        self.store_body(chunk);
        match (self.stream_failure(), &self.broken) {
            (Some(why), _) => refuse(format_args!("{why}")),
            (None, Some(_)) => self.refuse_broken(),
            (None, None) => RResult::ROk(()),
        }
    }

    /// `stream@1`'s read: the streamed body, or nothing when the host did not stream it (the
    /// effe's reader then reads `Request::body`).
    pub(crate) fn read_body(&mut self, into: &mut [u8]) -> RResult<usize, RString> {
        match self.streams.as_mut().and_then(|s| s.body.as_mut()) {
            Some(source) => source.read(into).map_err(RString::from).into(),
            None => RResult::ROk(0),
        }
    }

    /// Whether the host streams this call's request body.
    pub(crate) fn streams_body(&self) -> bool {
        self.streams.as_ref().is_some_and(|s| s.body.is_some())
    }
}

/// An effe's header, validated and parsed; `None` for a hop-by-hop one (the host frames the
/// response itself). Kept in [`recent`] for the next response.
#[cold]
#[inline(never)]
fn parse_header(
    name: &str,
    value: &[u8],
) -> Result<Option<(HeaderName, HeaderValue)>, RResult<(), RString>> {
    let parsed = match HeaderName::from_bytes(name.as_bytes()) {
        Ok(parsed) => parsed,
        Err(_) => return Err(refuse(format_args!("invalid header name {}", Shown(name)))),
    };
    let value = match HeaderValue::from_bytes(value) {
        Ok(value) => value,
        Err(_) => return Err(refuse(format_args!("invalid value for header {parsed}"))),
    };
    if is_hop_by_hop(&parsed) {
        return Ok(None);
    }
    recent::keep(name, &parsed, &value);
    Ok(Some((parsed, value)))
}

/// The headers this thread parsed last. An effe sends the same few headers on every response
/// (`content-type: text/plain`): parsing one (name lookup, value check, a copy into its own
/// allocation) cost about 450 instructions per request; finding it here costs a comparison
/// of its bytes, and the parsed value is shared, not copied.
mod recent {
    use std::cell::RefCell;

    use http::{HeaderName, HeaderValue};

    /// Enough for the usual handful of headers per response.
    const KEPT: usize = 8;

    std::thread_local! {
        static RECENT: RefCell<Kept> = const { RefCell::new(Kept { entries: Vec::new(), next: 0 }) };
    }

    struct Kept {
        entries: Vec<(HeaderName, HeaderValue)>,
        /// The entry replaced next, once all are taken.
        next: usize,
    }

    /// The parsed header for `name: value`, if this thread parsed it lately. Only names that
    /// were already lower-case are kept: the comparison is of the bytes as sent.
    pub(super) fn get(name: &str, value: &[u8]) -> Option<(HeaderName, HeaderValue)> {
        RECENT.with(|kept| {
            let kept = kept.try_borrow().ok()?;
            kept.entries
                .iter()
                .find(|(n, v)| n.as_str() == name && v.as_bytes() == value)
                .cloned()
        })
    }

    pub(super) fn keep(name: &str, parsed: &HeaderName, value: &HeaderValue) {
        // A value that differs on every response (a date, an id) would only push others out.
        if parsed.as_str() != name || value.len() > 128 {
            return;
        }
        RECENT.with(|kept| {
            let Ok(mut kept) = kept.try_borrow_mut() else {
                return;
            };
            let entry = (parsed.clone(), value.clone());
            if kept.entries.len() < KEPT {
                kept.entries.push(entry);
            } else {
                let at = kept.next;
                kept.entries[at] = entry;
                kept.next = (at + 1) % KEPT;
            }
        });
    }
}

/// A cap on the response headers, as the effe and the log read it.
#[derive(Debug, Clone, Copy)]
enum Cap {
    Count,
    Bytes,
}

impl fmt::Display for Cap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cap::Count => write!(
                f,
                "too many response headers (limit {MAX_RESPONSE_HEADERS})"
            ),
            Cap::Bytes => write!(
                f,
                "response headers too large (limit {MAX_RESPONSE_HEADER_BYTES} bytes of names \
                 and values)"
            ),
        }
    }
}

/// An effe's header name in an error message: its start, so that the message stays one line.
struct Shown<'a>(&'a str);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MAX_CHARS: usize = 64;
        match self.0.char_indices().nth(MAX_CHARS) {
            Some((end, _)) => write!(f, "{:?}…", &self.0[..end]),
            None => write!(f, "{:?}", self.0),
        }
    }
}

/// An error for the effe; out of line, so that the sink's hot path stays small.
#[cold]
#[inline(never)]
fn refuse(why: fmt::Arguments<'_>) -> RResult<(), RString> {
    RResult::RErr(why.to_string().into())
}

/// The per-call services the host offers `run@2` beyond the response.
pub(crate) static CALL: CallV1 = CallV1 {
    retire: call_retire,
    reset: call_reset,
};

extern "C" fn call_retire(state: NonNull<c_void>) {
    crate::ffi::with_buffer(state, |buf| buf.retire = true)
}

extern "C" fn call_reset(state: NonNull<c_void>) -> bool {
    crate::ffi::with_buffer(state, |buf| {
        buf.guarded(ResponseBuffer::reset) == Some(true)
    })
}

/// The response services the host offers `run@2` (and unit tests use through
/// [`ResponseBuffer::writer`]). Each runs `guarded`, like the sink's methods.
pub(crate) static SERVICES: ResponseV1 = ResponseV1 {
    set_status: call_set_status,
    append_header: call_append_header,
    set_header: call_set_header,
    write_body: call_write_body,
};

// The state is always the buffer `host_call` lent: `HostCall` is made nowhere else.

extern "C" fn call_set_status(state: NonNull<c_void>, status: u16) -> RResult<(), RString> {
    crate::ffi::with_buffer(state, |buf| buf.set_status(status))
}

extern "C" fn call_append_header(
    state: NonNull<c_void>,
    name: RStr<'_>,
    value: RSlice<'_, u8>,
) -> RResult<(), RString> {
    crate::ffi::with_buffer(state, |buf| buf.append_header(name, value))
}

extern "C" fn call_set_header(
    state: NonNull<c_void>,
    name: RStr<'_>,
    value: RSlice<'_, u8>,
) -> RResult<(), RString> {
    crate::ffi::with_buffer(state, |buf| {
        buf.guarded(|buf| buf.replace_header(name.as_str(), value.as_slice()))
            .unwrap_or_else(|| buf.refuse_broken())
    })
}

extern "C" fn call_write_body(state: NonNull<c_void>, chunk: RSlice<'_, u8>) {
    crate::ffi::with_buffer(state, |buf| buf.write_body(chunk))
}

// Each method runs `guarded`: these are called through `extern "C"` shims.
impl ResponseSink for ResponseBuffer {
    fn set_status(&mut self, status: u16) -> RResult<(), RString> {
        self.guarded(|buf| buf.store_status(status))
            .unwrap_or_else(|| self.refuse_broken())
    }

    fn append_header(&mut self, name: RStr<'_>, value: RSlice<'_, u8>) -> RResult<(), RString> {
        self.guarded(|buf| buf.store_header(name.as_str(), value.as_slice()))
            .unwrap_or_else(|| self.refuse_broken())
    }

    fn write_body(&mut self, chunk: RSlice<'_, u8>) {
        // A panic has already broken the response: nothing more to do.
        let _ = self.guarded(|buf| buf.store_body(chunk.as_slice()));
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
    fn headers_parsed_lately_are_reused_only_for_the_same_bytes() {
        // The second response finds `x-a: 1` and `content-type` among this thread's recent
        // headers; a differing value, a name in capitals and a hop-by-hop header do not.
        for round in 0..2 {
            let mut buf = ResponseBuffer::new();
            {
                let mut w = buf.writer();
                w.header("content-type", "text/plain").unwrap();
                w.header("x-a", "1").unwrap();
                w.header("x-a", format!("round {round}")).unwrap();
                w.header("X-Upper", "u").unwrap();
                w.header("connection", "close").unwrap();
                assert!(w.header("x-bad", b"\n").is_err());
            }
            let (_, headers, _) = buf.into_parts();
            let a: Vec<_> = headers
                .get_all("x-a")
                .iter()
                .map(|v| v.as_bytes())
                .collect();
            assert_eq!(a, [&b"1"[..], format!("round {round}").as_bytes()]);
            assert_eq!(headers["content-type"], "text/plain");
            assert_eq!(headers["x-upper"], "u");
            assert!(headers.get("connection").is_none());
            assert!(headers.get("x-bad").is_none());
        }
    }

    #[test]
    fn untouched_buffer_is_not_written() {
        let buf = ResponseBuffer::new();
        assert!(!buf.is_written());
        assert_eq!(buf.into_parts().0, StatusCode::OK);
    }

    /// The message of a refused write.
    fn refusal(result: Result<&mut ResponseWriter<'_>, Error>) -> String {
        match result {
            Ok(_) => panic!("accepted"),
            Err(e) => e.message().to_owned(),
        }
    }

    fn header_count(buf: ResponseBuffer) -> usize {
        buf.into_parts().1.len()
    }

    #[test]
    fn refused_writes_and_hop_by_hop_headers_leave_it_unwritten() {
        let mut buf = ResponseBuffer::new();
        {
            let mut w = buf.writer();
            assert!(w.status(1000).is_err());
            assert!(w.status(199).is_err());
            assert!(w.header("bad name", "x").is_err());
            assert!(w.header("x-ok", b"\r\n").is_err());
            assert!(w.header("connection", "close").is_ok());
            assert!(w.header("content-length", b"\n").is_err());
            w.body("");
        }
        assert!(!buf.is_written());
        assert!(!buf.is_broken());
        buf.writer().body("x");
        assert!(buf.is_written());

        let mut buf = ResponseBuffer::new();
        buf.writer().status(204).unwrap();
        assert!(buf.is_written());
        let mut buf = ResponseBuffer::new();
        buf.writer().header("x-a", "1").unwrap();
        assert!(buf.is_written());
    }

    #[test]
    fn past_the_header_count_cap_the_response_breaks() {
        let mut buf = ResponseBuffer::new();
        {
            let mut w = buf.writer();
            // Ignored headers are not stored, so they do not count.
            for _ in 0..10 {
                w.header("connection", "close").unwrap();
            }
            w.header("x-same", "0").unwrap();
            for i in 1..MAX_RESPONSE_HEADERS {
                w.header(&format!("x-h-{i}"), "v").unwrap();
            }
            assert_eq!(
                refusal(w.header("x-one-more", "v")),
                "too many response headers (limit 1000)"
            );
            // Broken: nothing more is accepted.
            assert!(w.header("x-same", "1").is_err());
            assert!(w.status(404).is_err());
            w.body("dropped");
        }
        assert!(buf.is_broken());
        assert_eq!(
            buf.failure(),
            Some("too many response headers (limit 1000)")
        );
        let (status, headers, body) = buf.into_parts();
        assert_eq!(headers.len(), MAX_RESPONSE_HEADERS);
        assert_eq!(status, StatusCode::OK);
        assert!(body.is_empty());
    }

    #[test]
    fn repeated_names_count_against_the_cap_too() {
        let mut buf = ResponseBuffer::new();
        {
            let mut w = buf.writer();
            for _ in 0..MAX_RESPONSE_HEADERS {
                w.header("set-cookie", "a=b").unwrap();
            }
            assert!(w.header("set-cookie", "a=b").is_err());
        }
        assert!(buf.is_broken());
        assert_eq!(header_count(buf), MAX_RESPONSE_HEADERS);
    }

    #[test]
    fn thirty_thousand_distinct_names_are_an_error_not_a_panic() {
        // The `http` crate panics near 24K distinct names; through the `extern "C"` shim that
        // was an abort of the whole host.
        let mut buf = ResponseBuffer::new();
        let mut errors = 0;
        {
            let mut w = buf.writer();
            for i in 0..30_000 {
                if w.header(&format!("x-h-{i}"), "v").is_err() {
                    errors += 1;
                }
            }
        }
        assert_eq!(errors, 30_000 - MAX_RESPONSE_HEADERS);
        assert!(buf.is_broken());
        assert_eq!(header_count(buf), MAX_RESPONSE_HEADERS);
    }

    #[test]
    fn header_bytes_are_capped_at_names_plus_values() {
        let fill = "v".repeat(MAX_RESPONSE_HEADER_BYTES - "x-big".len() - "x-a1".len());
        let mut buf = ResponseBuffer::new();
        {
            let mut w = buf.writer();
            w.header("x-a", "1").unwrap();
            w.header("content-length", "5").unwrap();
            w.header("x-big", &fill).unwrap();
            // Exactly at the cap; one more byte is past it.
            let err = refusal(w.header("x", ""));
            assert!(err.starts_with("response headers too large (limit 65536 bytes"));
        }
        assert!(buf.is_broken());
        assert_eq!(header_count(buf), 2);

        // One header larger than the whole cap, even an ignored one, is refused before parsing.
        let mut buf = ResponseBuffer::new();
        let huge = "v".repeat(MAX_RESPONSE_HEADER_BYTES);
        assert!(buf.writer().header("connection", &huge).is_err());
        assert!(buf.is_broken());
    }

    #[test]
    fn a_panic_in_a_sink_method_breaks_the_response() {
        let mut buf = ResponseBuffer::new();
        buf.writer().header("x-a", "1").unwrap();
        assert_eq!(buf.guarded(|_| 7), Some(7));
        assert!(!buf.is_broken());
        assert_eq!(buf.guarded(|_| -> () { panic!("sink bug") }), None);
        assert_eq!(buf.failure(), Some("the host's response sink panicked"));
        assert_eq!(
            refusal(buf.writer().header("x-b", "2")),
            "the host's response sink panicked"
        );
    }

    #[test]
    fn a_body_that_cannot_grow_breaks_the_response() {
        let mut buf = ResponseBuffer::new();
        buf.writer().body("partial");
        buf.body_failed();
        buf.writer().body("more");
        assert!(buf.is_broken());
        assert!(buf.failure().unwrap().contains("body"));
        assert!(buf.into_parts().2.is_empty());
    }

    #[test]
    fn a_long_bad_name_is_shown_shortened() {
        let name = format!("bad name {}", "é".repeat(1000));
        let err = refusal(ResponseBuffer::new().writer().header(&name, "x"));
        assert!(err.ends_with('…'), "{err}");
        assert!(err.chars().count() < 100, "{err}");
    }

    #[test]
    fn set_header_replaces_every_value_and_frees_their_bytes() {
        let mut buf = ResponseBuffer::new();
        {
            let mut w = buf.writer();
            w.header("x-a", "1").unwrap().header("x-a", "2").unwrap();
            w.header("x-b", "b").unwrap();
            w.set_header("x-a", "3").unwrap();
            w.set_header("x-new", "n").unwrap();
            // Refused before anything is removed.
            assert!(w.set_header("x-a", b"\n").is_err());
        }
        assert_eq!(buf.header_bytes, "x-a3x-bbx-newn".len());
        let (_, headers, _) = buf.into_parts();
        let a: Vec<_> = headers.get_all("x-a").iter().collect();
        assert_eq!(a, ["3"]);
        assert_eq!(headers["x-b"], "b");
        assert_eq!(headers["x-new"], "n");
    }

    #[test]
    fn the_baseline_writer_reaches_the_same_buffer() {
        let mut buf = ResponseBuffer::new();
        {
            let mut raw = buf.raw_writer();
            let mut w = ResponseWriter::over_sink(&mut raw);
            w.status(201).unwrap().header("x-a", "1").unwrap().body("b");
            // An older host (the baseline sink) cannot replace a header.
            let err = w.set_header("x-a", "2").err().unwrap();
            assert!(err.message().contains("effe-abi 0.1.1"), "{err}");
        }
        let (status, headers, body) = buf.into_parts();
        assert_eq!((status.as_u16(), &body[..]), (201, &b"b"[..]));
        assert_eq!(headers["x-a"], "1");
    }
}
