//! An effe built with panic = "abort" (this workspace's profile) that exports itself by hand,
//! writing what `export_effe!` writes minus the macro's compile-time refusal: what an author
//! who copied the macro's expansion, or another exporter, would ship. Its meta@1 interface says
//! "abort" (effe-abi reads the strategy it was built with), and the host must refuse it at load:
//! its first panic would end the host.

use std::sync::OnceLock;

use effe_abi::__private::{interfaces, lib_header, Exported, LibHeader};
use effe_abi::abi::{EffeInfo, ExportedInterfaces};
use effe_abi::{Effe, Error, Request, ResponseWriter};

struct Abort;

impl Effe for Abort {
    type Context = ();

    fn init() -> Result<Self, Error> {
        Ok(Abort)
    }

    fn start(&self) -> Result<(), Error> {
        Ok(())
    }

    fn run(&self, _: &mut (), _: &Request<'_>, _: &mut ResponseWriter<'_>) -> Result<(), Error> {
        // Never reached: the host refuses the library before Init.
        panic!("a panic here would abort the whole host")
    }
}

impl Exported for Abort {
    fn slot() -> &'static OnceLock<Self> {
        static SLOT: OnceLock<Abort> = OnceLock::new();
        &SLOT
    }

    const INFO: EffeInfo = EffeInfo::new(
        env!("CARGO_PKG_NAME"),
        env!("CARGO_PKG_VERSION"),
        env!("CARGO_PKG_DESCRIPTION"),
        false,
    );
}

// The two symbols export_effe! writes, by the same names: abi_stable's root module loader
// (`abi_stable::library::ROOT_MODULE_LOADER_NAME`) and effe-abi's interfaces
// (`effe_abi::abi::INTERFACES_SYMBOL`).
// SAFETY: no other item in this library, or in any library loaded with it by the host, defines
// these unmangled names (one effe per host); this is what export_effe! itself writes.
#[allow(unsafe_code, non_upper_case_globals)]
#[unsafe(no_mangle)]
pub static _1as_0lib_1header_0root_bmodule_bloader: LibHeader = lib_header::<Abort>();

// SAFETY: as above.
#[allow(unsafe_code, non_upper_case_globals)]
#[unsafe(no_mangle)]
pub static effe_abi_interfaces: ExportedInterfaces = interfaces::<Abort>();
