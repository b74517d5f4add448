//! The testing kit: unit-test an effe with plain `cargo test`, without a `.so` or a host.
//!
//! [`TestHost`] plays the host's part in-process. Requests are built with the `http` crate and
//! answers come back as [`http::Response`]s. Each call goes through the same boundary code as
//! in effe-host (panics caught, errors with a status turned into answers, retiring errors), and
//! the answer follows the host's rules: a panic is `500` and its Context is stopped, a plain
//! error is `500` unless something was written, a broken response is `500`, `x-request-id` is
//! set. Contexts are kept and reused as the host's pool does, one call at a time, and every
//! Context started is stopped by [`finish`](TestHost::finish) (or on drop).
//!
//! ```
//! use effe_abi::testing::TestHost;
//! use effe_abi::{Effe, Error, Request, ResponseWriter};
//!
//! struct Counter;
//!
//! impl Effe for Counter {
//!     type Context = u64;
//!     fn init() -> Result<Self, Error> {
//!         Ok(Counter)
//!     }
//!     fn start(&self) -> Result<u64, Error> {
//!         Ok(0)
//!     }
//!     fn run(&self, n: &mut u64, req: &Request<'_>, resp: &mut ResponseWriter<'_>)
//!         -> Result<(), Error>
//!     {
//!         match req.path() {
//!             "/panic" => panic!("on purpose"),
//!             "/" => {
//!                 *n += 1;
//!                 resp.text(n.to_string());
//!                 Ok(())
//!             }
//!             _ => Err(Error::not_found("no such page")),
//!         }
//!     }
//! }
//!
//! # fn main() -> Result<(), effe_abi::Error> {
//! let mut host = TestHost::<Counter>::new()?;
//! let get = |path: &str| http::Request::get(path).body(Vec::new()).unwrap();
//! assert_eq!(host.call(get("/")).body(), b"1");
//! assert_eq!(host.call(get("/")).body(), b"2", "the same Context, reused");
//! assert_eq!(host.call(get("/nope")).status(), 404);
//! assert_eq!(host.call(get("/panic")).status(), 500);
//! assert!(host.logs().last().unwrap().contains("on purpose"));
//! assert_eq!(host.call(get("/")).body(), b"1", "a fresh Context after the panic");
//! let life = host.finish()?;
//! assert_eq!((life.starts, life.stops, life.panics), (2, 2, 1));
//! # Ok(()) }
//! ```

use std::sync::{Arc, Mutex, MutexGuard};

use http::{HeaderMap, HeaderValue, StatusCode};

use crate::abi::{EffeError, ErrorKind, RequestParts, ResponseBuffer, StreamSink};
use crate::export::{guard, settle};
use crate::{Effe, Error, Header, HttpVersion, Request};

/// The host's part, in-process, for one effe type.
pub struct TestHost<E: Effe> {
    effe: E,
    /// Contexts between calls, the latest on top (as the host's pool hands them out).
    idle: Vec<E::Context>,
    lifecycle: Lifecycle,
    logs: Vec<String>,
    next_id: u64,
}

/// What happened to the Contexts and calls of a [`TestHost`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lifecycle {
    /// `start` calls that made a Context.
    pub starts: u64,
    /// `stop` calls (one for every Context started, once all are stopped).
    pub stops: u64,
    /// `run` calls.
    pub runs: u64,
    /// `run` calls that panicked.
    pub panics: u64,
}

impl<E: Effe> TestHost<E> {
    /// Calls `E::init` as the host does at boot.
    ///
    /// # Errors
    ///
    /// `init`'s error, or its panic as an error.
    pub fn new() -> Result<Self, Error> {
        crate::logging::install();
        let effe = into_error(guard(E::init))?;
        Ok(Self::with(effe))
    }

    /// Over an effe value made by the test (its own configuration), without calling `init`.
    pub fn with(effe: E) -> Self {
        crate::logging::install();
        TestHost {
            effe,
            idle: Vec::new(),
            lifecycle: Lifecycle::default(),
            logs: Vec::new(),
            next_id: 1,
        }
    }

    /// The effe value.
    pub fn effe(&self) -> &E {
        &self.effe
    }

    /// Serves `request` as the host would: with an idle Context (started if there is none),
    /// through `run`, to the answer the client would get. A Context whose `start` fails gets
    /// `503`, as in the host.
    ///
    /// The request is passed as received: the host's HTTP checks (a valid `Host`, body size)
    /// and its `effe-deadline-ms` header do not apply. Its `x-request-id` is used if it has
    /// one, else `test-N`.
    pub fn call<B: Into<Vec<u8>>>(&mut self, request: http::Request<B>) -> http::Response<Vec<u8>> {
        let (parts, body) = request.into_parts();
        let body: Vec<u8> = body.into();
        let request_id = match parts.headers.get("x-request-id").map(HeaderValue::to_str) {
            Some(Ok(id)) => id.to_owned(),
            _ => {
                self.next_id += 1;
                format!("test-{}", self.next_id - 1)
            }
        };
        viewed(&parts, &body, &request_id, |request| self.serve(request))
    }

    /// [`call`](Self::call), once the request is a [`Request`].
    fn serve(&mut self, request: &Request<'_>) -> http::Response<Vec<u8>> {
        let request_id = request.request_id();
        let mut ctx = match self.idle.pop() {
            Some(ctx) => ctx,
            None => match into_error(guard(|| self.effe.start())) {
                Ok(ctx) => {
                    self.lifecycle.starts += 1;
                    ctx
                }
                Err(err) => {
                    self.logs.push(format!("start failed: {err}"));
                    let mut resp = plain(StatusCode::SERVICE_UNAVAILABLE, request_id);
                    resp.headers_mut()
                        .insert("retry-after", HeaderValue::from_static("1"));
                    return resp;
                }
            },
        };

        self.lifecycle.runs += 1;
        let mut out = ResponseBuffer::new();
        let collected = Arc::new(Mutex::new(Collected::default()));
        // As in the host: a NONBLOCKING effe's writes may not block, so it cannot stream.
        if !E::NONBLOCKING {
            out.stream_to(Box::new(Collect(collected.clone())));
        }
        let (result, records) = crate::logging::captured(|| {
            let _in_call = crate::ffi::InCall::enter(request, None);
            guard(|| {
                let mut writer = out.writer();
                let result = self.effe.run(&mut ctx, request, &mut writer);
                settle(result, &mut writer)
            })
        });
        self.logs.extend(records);

        // As effe-host's `invoke` decides (host/src/invoke.rs).
        let retire = out.retire_requested();
        if out.is_streaming() {
            let result = result.into_result();
            let panicked = matches!(&result, Err(f) if f.kind() == ErrorKind::Panicked);
            if let Err(failure) = &result {
                self.logs.push(format!(
                    "run {}: {}",
                    failure.kind().as_str(),
                    failure.message()
                ));
                self.lifecycle.panics += u64::from(panicked);
            }
            out.finish_stream(result.is_ok());
            if retire || panicked {
                let _ = self.stop(ctx);
            } else {
                self.idle.push(ctx);
            }
            let collected = std::mem::take(&mut *lock(&collected));
            return collected.into_response(request_id);
        }
        let (resp, keep) = match result.into_result() {
            Ok(()) if !out.is_broken() => (into_response(out, request_id), true),
            Ok(()) => {
                let why = out.failure().unwrap_or_default().to_owned();
                self.logs.push(format!("run failed: {why}"));
                (plain(StatusCode::INTERNAL_SERVER_ERROR, request_id), true)
            }
            Err(failure) => {
                let panicked = failure.kind() == ErrorKind::Panicked;
                self.logs.push(format!(
                    "run {}: {}",
                    failure.kind().as_str(),
                    failure.message()
                ));
                if panicked {
                    self.lifecycle.panics += 1;
                    (plain(StatusCode::INTERNAL_SERVER_ERROR, request_id), false)
                } else if out.is_written() && !out.is_broken() {
                    (into_response(out, request_id), true)
                } else {
                    (plain(StatusCode::INTERNAL_SERVER_ERROR, request_id), true)
                }
            }
        };
        if retire || !keep {
            let _ = self.stop(ctx);
        } else {
            self.idle.push(ctx);
        }
        resp
    }

    /// What the effe logged (through `log`) and what the host would have logged of its calls
    /// (`run failed: …`, `run panicked: …`, `start failed: …`), in order, one line each.
    pub fn logs(&self) -> &[String] {
        &self.logs
    }

    /// The counts so far.
    pub fn lifecycle(&self) -> Lifecycle {
        self.lifecycle
    }

    /// Stops every idle Context, as the host does at shutdown, and returns the final counts.
    ///
    /// # Errors
    ///
    /// The first error or panic of a `stop` (every Context is stopped regardless).
    pub fn finish(mut self) -> Result<Lifecycle, Error> {
        let mut first = None;
        while let Some(ctx) = self.idle.pop() {
            if let Err(err) = self.stop(ctx) {
                first.get_or_insert(err);
            }
        }
        match first {
            None => Ok(self.lifecycle),
            Some(err) => Err(err),
        }
    }

    fn stop(&mut self, ctx: E::Context) -> Result<(), Error> {
        self.lifecycle.stops += 1;
        into_error(guard(|| self.effe.stop(ctx))).inspect_err(|err| {
            self.logs.push(format!("stop failed: {err}"));
        })
    }
}

impl<E: Effe> Drop for TestHost<E> {
    /// Stops the Contexts left, as [`finish`](TestHost::finish) does, ignoring their errors.
    fn drop(&mut self) {
        while let Some(ctx) = self.idle.pop() {
            let _ = self.stop(ctx);
        }
    }
}

/// Attached to the answer of a call whose response streamed ([`ResponseWriter::flush`]): how
/// it went out.
///
/// [`ResponseWriter::flush`]: crate::ResponseWriter::flush
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Flushes {
    /// The size of each chunk sent, in order: one per flush that had something to send, and
    /// one per 16 KiB written between flushes.
    pub chunks: Vec<usize>,
    /// Whether `run` failed after the first flush: the client would have seen the stream cut
    /// (and the answer's body is what it got before).
    pub cut: bool,
}

/// What a streamed response sent.
#[derive(Debug, Default)]
struct Collected {
    head: Option<(StatusCode, HeaderMap)>,
    body: Vec<u8>,
    flushes: Flushes,
}

impl Collected {
    fn into_response(self, request_id: &str) -> http::Response<Vec<u8>> {
        let (status, headers) = self.head.unwrap_or_default();
        let mut resp = http::Response::new(self.body);
        *resp.status_mut() = status;
        *resp.headers_mut() = headers;
        stamp(&mut resp, request_id);
        resp.extensions_mut().insert(self.flushes);
        resp
    }
}

/// The kit's stream: it keeps what the effe sends.
#[derive(Debug)]
struct Collect(Arc<Mutex<Collected>>);

fn lock(collected: &Mutex<Collected>) -> MutexGuard<'_, Collected> {
    collected.lock().unwrap_or_else(|e| e.into_inner())
}

impl StreamSink for Collect {
    fn head(&mut self, status: StatusCode, headers: HeaderMap) -> Result<(), String> {
        lock(&self.0).head = Some((status, headers));
        Ok(())
    }

    fn data(&mut self, chunk: Vec<u8>) -> Result<(), String> {
        let mut collected = lock(&self.0);
        collected.flushes.chunks.push(chunk.len());
        collected.body.extend_from_slice(&chunk);
        Ok(())
    }

    fn cut(self: Box<Self>) {
        lock(&self.0).flushes.cut = true;
    }
}

/// Runs `f` with `request` as a [`Request`], as `run` would see it: for unit tests of code that
/// takes a `&Request`.
pub fn with_request<B: AsRef<[u8]>, T>(
    request: http::Request<B>,
    f: impl FnOnce(&Request<'_>) -> T,
) -> T {
    let (parts, body) = request.into_parts();
    viewed(&parts, body.as_ref(), "test-1", f)
}

/// Runs `f` with a [`Request`] over `parts` and `body`, as the host builds one.
fn viewed<T>(
    parts: &http::request::Parts,
    body: &[u8],
    request_id: &str,
    f: impl FnOnce(&Request<'_>) -> T,
) -> T {
    let headers: Vec<Header<'_>> = parts
        .headers
        .iter()
        .map(|(name, value)| Header::new(name.as_str(), value.as_bytes()))
        .collect();
    f(&Request::new(RequestParts {
        method: parts.method.as_str(),
        target: parts.uri.path_and_query().map_or("/", |pq| pq.as_str()),
        version: HttpVersion::from(parts.version),
        headers: &headers,
        body,
        peer_addr: "127.0.0.1:1",
        request_id,
    }))
}

fn into_error<T>(result: abi_stable::std_types::RResult<T, EffeError>) -> Result<T, Error> {
    result.into_result().map_err(Error::msg)
}

fn into_response(out: ResponseBuffer, request_id: &str) -> http::Response<Vec<u8>> {
    let (status, headers, body) = out.into_parts();
    let body = if status == StatusCode::RESET_CONTENT {
        Vec::new()
    } else {
        body
    };
    let mut resp = http::Response::new(body);
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    stamp(&mut resp, request_id);
    resp
}

/// The host's own answers: the reason phrase as text.
fn plain(status: StatusCode, request_id: &str) -> http::Response<Vec<u8>> {
    let text = status.canonical_reason().unwrap_or("Error");
    let mut resp = http::Response::new(format!("{text}\n").into_bytes());
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    stamp(&mut resp, request_id);
    resp
}

fn stamp(resp: &mut http::Response<Vec<u8>>, request_id: &str) {
    if let Ok(id) = HeaderValue::from_str(request_id) {
        resp.headers_mut().insert("x-request-id", id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ResponseWriter;

    /// Answers by path: what each of the SDK's error paths does.
    struct Paths;

    impl Effe for Paths {
        type Context = u32;
        fn init() -> Result<Self, Error> {
            Ok(Paths)
        }
        fn start(&self) -> Result<u32, Error> {
            Ok(0)
        }
        fn run(
            &self,
            n: &mut u32,
            req: &Request<'_>,
            w: &mut ResponseWriter<'_>,
        ) -> Result<(), Error> {
            *n += 1;
            match req.path() {
                "/written-then-404" => {
                    w.status(201)?.header("x-partial", "1")?.body("partial");
                    Err(Error::not_found("no such thing"))
                }
                "/503" => Err(Error::with_status(503, "database down")),
                "/405" => {
                    w.header("x-partial", "1")?;
                    Err(Error::with_status(405, "{\"error\":\"use GET\"}")
                        .header("allow", "GET")
                        .header("content-type", "application/json"))
                }
                "/bad-header" => Err(Error::not_found("x").header("bad name", "v")),
                "/retire" => Err(Error::msg("connection lost").retire()),
                "/retire-404" => Err(Error::not_found("gone").retire()),
                "/log" => {
                    log::info!("hello from {}", req.request_id());
                    Ok(())
                }
                "/plain" => Err(Error::msg("plain")),
                _ => {
                    w.header("x-context-calls", n.to_string())?;
                    Ok(())
                }
            }
        }
    }

    fn get(path: &str) -> http::Request<Vec<u8>> {
        http::Request::get(path).body(Vec::new()).unwrap()
    }

    #[test]
    fn an_error_with_a_status_replaces_what_was_written_and_is_not_logged() {
        let mut host = TestHost::<Paths>::new().unwrap();
        let resp = host.call(get("/written-then-404"));
        assert_eq!(resp.status(), 404);
        assert_eq!(resp.body(), b"no such thing");
        assert_eq!(resp.headers()["content-type"], "text/plain; charset=utf-8");
        assert!(resp.headers().get("x-partial").is_none());
        assert!(resp.headers().contains_key("x-request-id"));
        assert!(host.logs().is_empty(), "{:?}", host.logs());
    }

    #[test]
    fn an_error_with_a_status_may_carry_headers() {
        let mut host = TestHost::<Paths>::new().unwrap();
        let resp = host.call(get("/405"));
        assert_eq!(resp.status(), 405);
        assert_eq!(resp.headers()["allow"], "GET");
        assert_eq!(resp.headers()["content-type"], "application/json");
        assert_eq!(resp.headers().get_all("content-type").iter().count(), 1);
        assert!(resp.headers().get("x-partial").is_none());
        assert_eq!(resp.body(), br#"{"error":"use GET"}"#);
        // An invalid header: a plain error, logged.
        assert_eq!(host.call(get("/bad-header")).status(), 500);
        assert_eq!(host.logs(), ["run failed: x"]);
    }

    #[test]
    fn a_5xx_status_error_is_answered_and_logged() {
        let mut host = TestHost::<Paths>::new().unwrap();
        let resp = host.call(get("/503"));
        assert_eq!(
            (resp.status().as_u16(), &resp.body()[..]),
            (503, &b"database down"[..])
        );
        assert_eq!(host.logs(), ["run failed: database down"]);
        assert_eq!(host.call(get("/plain")).status(), 500);
        assert_eq!(host.logs()[1], "run failed: plain");
    }

    #[test]
    fn a_retiring_error_stops_the_context() {
        let mut host = TestHost::<Paths>::new().unwrap();
        assert_eq!(host.call(get("/")).headers()["x-context-calls"], "1");
        assert_eq!(host.call(get("/retire")).status(), 500);
        assert_eq!(
            host.call(get("/")).headers()["x-context-calls"],
            "1",
            "a fresh Context"
        );
        assert_eq!(host.call(get("/retire-404")).status(), 404);
        assert_eq!(host.call(get("/")).headers()["x-context-calls"], "1");
        let life = host.finish().unwrap();
        assert_eq!((life.starts, life.stops, life.runs), (3, 3, 5));
    }

    #[test]
    fn records_logged_in_run_are_kept_with_the_call() {
        let mut host = TestHost::<Paths>::new().unwrap();
        let resp = host.call(
            http::Request::get("/log")
                .header("x-request-id", "abc")
                .body(Vec::new())
                .unwrap(),
        );
        assert_eq!(resp.headers()["x-request-id"], "abc");
        assert_eq!(host.logs(), ["info: hello from abc"]);
    }

    #[test]
    fn an_older_host_cannot_replace_what_was_written() {
        // The baseline sink (a host before effe-abi 0.1.1) has no reset: an error's status is
        // answered only if nothing was written.
        let mut buf = ResponseBuffer::new();
        {
            let mut raw = buf.raw_writer();
            let mut w = ResponseWriter::over_sink(&mut raw);
            assert!(settle(Err(Error::not_found("x")), &mut w).is_ok());
        }
        assert_eq!(buf.into_parts().0, 404);

        let mut buf = ResponseBuffer::new();
        {
            let mut raw = buf.raw_writer();
            let mut w = ResponseWriter::over_sink(&mut raw);
            w.body("partial");
            let err = settle(Err(Error::not_found("x").retire()), &mut w).unwrap_err();
            assert_eq!(err.status(), Some(404));
        }
        assert!(!buf.retire_requested(), "no way to retire there");
        assert_eq!(buf.into_parts().2, b"partial");
    }

    struct Streams;

    impl Effe for Streams {
        type Context = ();
        const STREAM_REQUEST_BODY: bool = true;
        fn init() -> Result<Self, Error> {
            Ok(Streams)
        }
        fn start(&self) -> Result<(), Error> {
            Ok(())
        }
        fn run(
            &self,
            _: &mut (),
            req: &Request<'_>,
            w: &mut ResponseWriter<'_>,
        ) -> Result<(), Error> {
            use std::io::{Read, Write};
            let mut body = Vec::new();
            req.body_reader().read_to_end(&mut body)?;
            w.header("content-type", "text/plain")?;
            write!(w, "got {} bytes;", body.len())?;
            w.flush()?;
            assert!(w.status(404).is_err(), "the head has been sent");
            w.write_all(&vec![b'x'; 40 * 1024])?;
            w.flush()?;
            w.write_all(b"end")?;
            if req.path() == "/fail" {
                return Err(Error::not_found("too late for a status"));
            }
            Ok(())
        }
    }

    #[test]
    fn a_flushed_response_streams_in_chunks_and_an_error_after_it_cuts_it() {
        let mut host = TestHost::<Streams>::new().unwrap();
        let resp = host.call(http::Request::post("/").body("12345").unwrap());
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "text/plain");
        assert!(resp.body().starts_with(b"got 5 bytes;xx"));
        assert_eq!(resp.body().len(), "got 5 bytes;".len() + 40 * 1024 + 3);
        let flushes = resp.extensions().get::<Flushes>().unwrap();
        // The head's flush with 12 bytes, then 40 KiB as 16 + 16 + 8, then the tail at the end.
        assert_eq!(flushes.chunks, [12, 16384, 16384, 8192, 3]);
        assert!(!flushes.cut);

        let resp = host.call(http::Request::post("/fail").body("").unwrap());
        assert_eq!(resp.status(), 200, "the head was sent before the error");
        assert!(resp.extensions().get::<Flushes>().unwrap().cut);
        assert_eq!(host.logs(), ["run failed: too late for a status"]);
    }

    #[test]
    fn a_start_failure_is_503_and_a_stop_failure_is_reported() {
        struct Flaky;
        impl Effe for Flaky {
            type Context = ();
            fn init() -> Result<Self, Error> {
                Ok(Flaky)
            }
            fn start(&self) -> Result<(), Error> {
                Err(Error::msg("no database"))
            }
            fn run(
                &self,
                _: &mut (),
                _: &Request<'_>,
                _: &mut ResponseWriter<'_>,
            ) -> Result<(), Error> {
                Ok(())
            }
        }
        let mut host = TestHost::<Flaky>::new().unwrap();
        let resp = host.call(get("/"));
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers()["retry-after"], "1");
        assert_eq!(host.logs(), ["start failed: no database"]);
        assert_eq!(host.finish().unwrap().starts, 0);
    }
}
