//! An ordinary effe, exported with `export_effe!`, in a workspace built with panic = "abort":
//! the macro must stop the build with its own message (checked by the end-to-end tests).
#![forbid(unsafe_code)]

use effe_abi::{Effe, Error, Request, ResponseWriter};

struct Ordinary;

impl Effe for Ordinary {
    type Context = ();

    fn init() -> Result<Self, Error> {
        Ok(Ordinary)
    }

    fn start(&self) -> Result<(), Error> {
        Ok(())
    }

    fn run(&self, _: &mut (), _: &Request<'_>, resp: &mut ResponseWriter<'_>) -> Result<(), Error> {
        resp.text("unreachable: this effe never builds");
        Ok(())
    }
}

effe_abi::export_effe!(Ordinary);
