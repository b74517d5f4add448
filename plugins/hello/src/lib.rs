//! The smallest effe: answers `200 Hello from effe` to every request. It is also the benchmark
//! effe, so `run` stays trivial and declares that it never blocks.
//!
//! It also shows that an effe crate can forbid unsafe code and ask for docs: the export macro
//! needs neither.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use effe_abi::{Effe, Error, Request, ResponseWriter};

struct Hello;

impl Effe for Hello {
    type Context = ();
    const NONBLOCKING: bool = true;

    fn init() -> Result<Self, Error> {
        Ok(Hello)
    }

    fn start(&self) -> Result<(), Error> {
        Ok(())
    }

    fn run(&self, _: &mut (), _: &Request<'_>, resp: &mut ResponseWriter<'_>) -> Result<(), Error> {
        resp.header("content-type", "text/plain")?;
        resp.body("Hello from effe");
        Ok(())
    }
}

effe_abi::export_effe!(Hello);

#[cfg(test)]
mod tests {
    use effe_abi::http;
    use effe_abi::testing::TestHost;

    #[test]
    fn greets_every_request_from_one_reused_context() -> Result<(), effe_abi::Error> {
        let mut host = TestHost::<super::Hello>::new()?;
        for path in ["/", "/anything?x=1"] {
            let resp = host.call(http::Request::get(path).body("")?);
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.headers()["content-type"], "text/plain");
            assert_eq!(resp.body(), b"Hello from effe");
        }
        let life = host.finish()?;
        assert_eq!((life.starts, life.stops, life.runs), (1, 1, 2));
        Ok(())
    }
}
