//! Test fixture: streams its request body (`STREAM_REQUEST_BODY`) without lifting the host's
//! `--max-body-size`, and answers the body's length. plugins/digest lifts the limit, and the
//! limit is a constant of the effe's type, so checking that the host's limit still holds for
//! a streamed body takes an effe of its own.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use effe_abi::{Effe, Error, Request, ResponseWriter};

struct StreamedBody;

impl Effe for StreamedBody {
    type Context = ();
    const STREAM_REQUEST_BODY: bool = true;

    fn init() -> Result<Self, Error> {
        Ok(StreamedBody)
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
        let len = std::io::copy(&mut req.body_reader(), &mut std::io::sink())?;
        resp.text(format!("{len}\n"));
        Ok(())
    }
}

effe_abi::export_effe!(StreamedBody);
