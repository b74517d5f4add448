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
