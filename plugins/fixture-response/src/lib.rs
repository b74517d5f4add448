//! Test fixture (not published): an effe that writes what the host's response sink must refuse.
//!
//! `run` by path:
//! - `/many-headers?N`: appends N distinct headers `x-h-<i>`, carrying on past errors (as an
//!   effe that maps client input to headers might); returns the first error if there was one,
//!   else answers the number of headers accepted.
//! - `/bad-status`: `resp.status(1000)?`.
//! - `/bad-header`: `resp.header("bad name", "x")?`.
//! - `/status?N`: status N with the body `status N\n`, which the host must leave out where HTTP
//!   has no content (HEAD, 204, 205, 304).
//! - anything else: answers `ok`.

use effe_abi::{Effe, Error, Request, ResponseWriter};

struct Fixture;

impl Effe for Fixture {
    type Context = ();

    fn init() -> Result<Self, Error> {
        Ok(Fixture)
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
        match req.path() {
            "/many-headers" => {
                let n: usize = req.query().unwrap_or("0").parse()?;
                let mut first_error = None;
                let mut accepted = 0;
                for i in 0..n {
                    match resp.header(&format!("x-h-{i}"), "v") {
                        Ok(_) => accepted += 1,
                        Err(e) => {
                            first_error.get_or_insert(e);
                        }
                    }
                }
                if let Some(e) = first_error {
                    return Err(e);
                }
                resp.body(format!("{accepted}\n"));
            }
            "/bad-status" => {
                resp.status(1000)?;
            }
            "/bad-header" => {
                resp.header("bad name", "x")?;
            }
            "/status" => {
                let n: u16 = req.query().unwrap_or("200").parse()?;
                resp.status(n)?.body(format!("status {n}\n"));
            }
            _ => {
                resp.body("ok\n");
            }
        }
        Ok(())
    }
}

effe_abi::export_effe!(Fixture);
