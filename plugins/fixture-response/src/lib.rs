//! Test fixture (not published): an effe that writes what the host's response sink must refuse,
//! and tells what it learns of a mutual-TLS client.
//!
//! `run` by path:
//! - `/many-headers?N`: appends N distinct headers `x-h-<i>`, carrying on past errors (as an
//!   effe that maps client input to headers might); returns the first error if there was one,
//!   else answers the number of headers accepted.
//! - `/bad-status`: `resp.status(1000)?`.
//! - `/bad-header`: `resp.header("bad name", "x")?`.
//! - `/status?N`: status N with the body `status N\n`, which the host must leave out where HTTP
//!   has no content (HEAD, 204, 205, 304).
//! - `/client`: what the effe learns of a mutual-TLS client, one line each: `subject S`,
//!   `cert HEX` (the whole DER), and `copies N`, the number of `effe-client-*` headers it was
//!   shown (`-` for what it was not told).
//! - anything else: answers `ok`.

use std::fmt::Write as _;

use effe_abi::{Effe, Error, Request, ResponseWriter, CLIENT_CERT_HEADER, CLIENT_SUBJECT_HEADER};

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
            "/client" => {
                let mut text = format!("subject {}\n", req.client_subject().unwrap_or("-"));
                match req.client_certificate() {
                    None => text.push_str("cert -\n"),
                    Some(der) => {
                        text.push_str("cert ");
                        for b in der {
                            let _ = write!(text, "{b:02x}");
                        }
                        text.push('\n');
                    }
                }
                let copies = req
                    .headers()
                    .iter()
                    .filter(|h| [CLIENT_SUBJECT_HEADER, CLIENT_CERT_HEADER].contains(&h.name()))
                    .count();
                let _ = writeln!(text, "copies {copies}");
                resp.body(text);
            }
            _ => {
                resp.body("ok\n");
            }
        }
        Ok(())
    }
}

effe_abi::export_effe!(Fixture);
