//! Server-sent events: the small example of a streaming effe. `GET /?5` answers
//! `text/event-stream` with the events `data: 1` … `data: 5`, one every 100 ms, each flushed as
//! soon as it is written, so that the client sees it then and not when `run` returns.
//!
//! A count that is not a number is a 400. When the client goes away, the next write fails:
//! the effe logs it (warn, with the request id) and stops. For tests, `/?N&fail=K` (1 ≤ K ≤ N)
//! returns an error right after event K: the head is already sent, so the host cuts the
//! stream (an HTTP/1.1 body without its last chunk, an HTTP/2 RST_STREAM) and logs the error.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::io::Write;
use std::time::Duration;

use effe_abi::{Effe, Error, Request, ResponseWriter};

/// Between two events.
const INTERVAL: Duration = Duration::from_millis(100);

struct Sse;

impl Effe for Sse {
    type Context = ();
    // Not NONBLOCKING: `run` sleeps, and writes wait for the client (only effes on the
    // blocking pool can stream).

    fn init() -> Result<Self, Error> {
        Ok(Sse)
    }

    fn start(&self) -> Result<(), Error> {
        Ok(())
    }

    fn run(
        &self,
        _: &mut (),
        req: &Request<'_>,
        resp: &mut ResponseWriter<'_>,
    ) -> Result<(), Error> {
        let (count, fail_after) = ask(req)?;
        resp.header("content-type", "text/event-stream")?
            .header("cache-control", "no-cache")?;
        for n in 1..=count {
            if n > 1 {
                std::thread::sleep(INTERVAL);
            }
            if let Err(err) = send_event(resp, n) {
                // The client went away (or the Run deadline passed): nobody is left to read
                // the rest, so stop. It is no failure of this effe: a warning, not an error.
                effe_abi::log::warn!("stopped at event {n} of {count}: {err}");
                return Ok(());
            }
            if fail_after == Some(n) {
                return Err(Error::msg(format!("failing after event {n}, as asked")));
            }
        }
        Ok(())
    }
}

/// Writes event `n` and sends it at once: the first flush sends the head too.
fn send_event(resp: &mut ResponseWriter<'_>, n: u32) -> Result<(), Error> {
    // `write!` (unlike `body`) reports a client that has gone.
    write!(resp, "data: {n}\n\n")?;
    resp.flush()
}

/// The count of events (the query's first part) and the event to fail after, if any.
fn ask(req: &Request<'_>) -> Result<(u32, Option<u32>), Error> {
    let first = req.query().and_then(|q| q.split('&').next()).unwrap_or("");
    let count = first.parse().map_err(|_| {
        Error::bad_request(format!(
            "expected a count of events, as in /?5; got {first:?}"
        ))
    })?;
    let fail_after = match req.query_param("fail") {
        None => None,
        Some(k) => Some(k.parse().map_err(|_| {
            Error::bad_request(format!("expected an event number, as in fail=2; got {k:?}"))
        })?),
    };
    Ok((count, fail_after))
}

effe_abi::export_effe!(Sse);

#[cfg(test)]
mod tests {
    use effe_abi::http;
    use effe_abi::testing::{Flushes, TestHost};

    fn get(path: &str) -> Result<http::Request<&'static str>, http::Error> {
        http::Request::get(path).body("")
    }

    #[test]
    fn sends_each_event_in_a_flush_of_its_own() -> Result<(), effe_abi::Error> {
        let mut host = TestHost::<super::Sse>::new()?;
        let resp = host.call(get("/?3")?);
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        assert_eq!(resp.headers()["cache-control"], "no-cache");
        assert_eq!(resp.body(), b"data: 1\n\ndata: 2\n\ndata: 3\n\n");
        let flushes = resp.extensions().get::<Flushes>().expect("flushed");
        assert_eq!(flushes.chunks, [9, 9, 9], "one event per flush");
        assert!(host.logs().is_empty(), "{:?}", host.logs());
        assert_eq!(host.finish()?.stops, 1);
        Ok(())
    }

    #[test]
    fn a_bad_count_is_a_400_before_anything_is_sent() -> Result<(), effe_abi::Error> {
        let mut host = TestHost::<super::Sse>::new()?;
        for path in ["/", "/?five", "/?-1", "/?3&fail=x"] {
            let resp = host.call(get(path)?);
            assert_eq!(resp.status(), 400, "{path}");
            assert!(resp.extensions().get::<Flushes>().is_none(), "{path}");
        }
        Ok(())
    }

    #[test]
    fn an_error_after_a_flush_is_logged_and_ends_the_stream() -> Result<(), effe_abi::Error> {
        let mut host = TestHost::<super::Sse>::new()?;
        let resp = host.call(get("/?3&fail=2")?);
        // The head went out with the first event: the status cannot change any more.
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.body(), b"data: 1\n\ndata: 2\n\n");
        assert!(resp.extensions().get::<Flushes>().expect("flushed").cut);
        let logs = host.logs().join("\n");
        assert!(logs.contains("failing after event 2, as asked"), "{logs}");
        Ok(())
    }
}
