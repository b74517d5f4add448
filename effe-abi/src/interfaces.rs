//! How the ABI grows: named interfaces, immutable once released, looked up by each side.
//!
//! The root module ([`EffeModule`](crate::abi::EffeModule)) and everything it reaches are the
//! *baseline*, frozen as released in effe-abi 0.1.0: abi_stable refuses a library whose root
//! module has fewer fields than the host's, or whose types come from a lower 0.x minor
//! version, so the baseline can never change without refusing every effe built before.
//!
//! Everything newer is an *interface*: a `#[repr(C)]` table with a versioned name
//! (`effe-abi/run@2`), frozen once released; a change is a new name (`@3`), never an edit.
//! - The effe lists the interfaces it implements through one more exported symbol,
//!   `effe_abi_interfaces` ([`ExportedInterfaces`]), written by [`export_effe!`](crate::export_effe).
//!   The host asks it for each interface it knows and checks the table's layout with
//!   abi_stable before using it; a mismatch refuses the effe at load. A host older than an
//!   interface never asks for it; an effe older than the symbol simply lacks it.
//! - The host offers its interfaces to the effe per call, through [`HostCall`] (passed to
//!   `run@2`): the baseline services of this version as a field, later ones through
//!   [`HostCall`]'s lookup by name, which checks the layout the effe expects against the
//!   host's.
//!
//! So an effe built against an older effe-abi loads into a newer host and sees only what it
//! knows, and an effe built against a newer effe-abi loads into an older host, where the newer
//! capabilities report that the host lacks them (see
//! [`ResponseWriter::set_header`](crate::ResponseWriter::set_header)).
//!
//! The interfaces of this version are listed in [`crate::abi`].

use std::ffi::c_void;
use std::marker::PhantomData;
use std::ptr::NonNull;

use abi_stable::abi_stability::abi_checking::check_layout_compatibility;
use abi_stable::std_types::{ROption, RResult, RSlice, RSliceMut, RStr, RString};
use abi_stable::type_layout::TypeLayout;
use abi_stable::StableAbi;

use crate::{EffeError, RawContext, Request};

/// Name of [`RunV2`].
pub const RUN_V2: &str = "effe-abi/run@2";
/// Name of [`ResponseV1`].
pub const RESPONSE_V1: &str = "effe-abi/response@1";
/// Name of [`MetaV1`].
pub const META_V1: &str = "effe-abi/meta@1";
/// Name of [`LogV1`].
pub const LOG_V1: &str = "effe-abi/log@1";
/// Name of [`CallV1`].
pub const CALL_V1: &str = "effe-abi/call@1";
/// Name of [`StreamV1`].
pub const STREAM_V1: &str = "effe-abi/stream@1";

/// A table that crosses the boundary under a name. Implemented only here (sealed): each `NAME`
/// belongs to one type, whose layout never changes once released.
pub trait InterfaceTable: sealed::Sealed + StableAbi + Sync + 'static {
    /// The versioned name, `effe-abi/what@N`.
    const NAME: &'static str;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::RunV2 {}
    impl Sealed for super::ResponseV1 {}
    impl Sealed for super::MetaV1 {}
    impl Sealed for super::LogV1 {}
    impl Sealed for super::CallV1 {}
    impl Sealed for super::StreamV1 {}
}

/// `run`, taking a [`HostCall`] for the response (effe-abi 0.1.1 and later): the host calls
/// it instead of the baseline `run` when the effe offers it.
#[repr(C)]
#[derive(StableAbi)]
pub struct RunV2 {
    /// Handles one request with exclusive use of one Context.
    pub run: for<'a, 'b> extern "C" fn(
        &'b mut RawContext,
        &'b Request<'a>,
        HostCall<'b>,
    ) -> RResult<(), EffeError>,
}

// Frozen as released in effe-abi 0.1.1.
impl InterfaceTable for RunV2 {
    const NAME: &'static str = RUN_V2;
}

/// The host's response services for one call: set the status, append a header, replace a
/// header, append to the body. Each takes the call's state (see [`HostCall`]); effes reach them
/// only through [`ResponseWriter`](crate::ResponseWriter).
#[repr(C)]
#[derive(StableAbi)]
pub struct ResponseV1 {
    pub(crate) set_status: extern "C" fn(NonNull<c_void>, u16) -> RResult<(), RString>,
    pub(crate) append_header:
        extern "C" fn(NonNull<c_void>, RStr<'_>, RSlice<'_, u8>) -> RResult<(), RString>,
    pub(crate) set_header:
        extern "C" fn(NonNull<c_void>, RStr<'_>, RSlice<'_, u8>) -> RResult<(), RString>,
    pub(crate) write_body: extern "C" fn(NonNull<c_void>, RSlice<'_, u8>),
}

// Frozen as released in effe-abi 0.1.1.
impl InterfaceTable for ResponseV1 {
    const NAME: &'static str = RESPONSE_V1;
}

/// How the effe's code was compiled to handle a panic.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub enum PanicStrategy {
    /// Panics unwind: the SDK catches them at the boundary and the host survives them.
    Unwind,
    /// Panics abort the process: the first one would take the host down.
    Abort,
}

impl PanicStrategy {
    /// The strategy this code is compiled with (the same for every crate of one build).
    pub const CURRENT: PanicStrategy = if cfg!(panic = "unwind") {
        PanicStrategy::Unwind
    } else {
        PanicStrategy::Abort
    };

    /// `unwind` or `abort`, as in `Cargo.toml`.
    pub fn as_str(self) -> &'static str {
        match self {
            PanicStrategy::Unwind => "unwind",
            PanicStrategy::Abort => "abort",
        }
    }
}

/// What an effe says about its build beyond [`EffeInfo`](crate::abi::EffeInfo), which is
/// frozen (effe-abi 0.1.2 and later).
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct MetaV1 {
    /// The host refuses an effe built with [`PanicStrategy::Abort`].
    pub panic: PanicStrategy,
    /// [`Effe::STREAM_REQUEST_BODY`](crate::Effe::STREAM_REQUEST_BODY).
    pub stream_request_body: bool,
    /// [`Effe::MAX_STREAMED_BODY_SIZE`](crate::Effe::MAX_STREAMED_BODY_SIZE); 0 for `None`
    /// (the host's limit).
    pub max_streamed_body_size: u64,
}

// Frozen as released in effe-abi 0.1.2.
impl InterfaceTable for MetaV1 {
    const NAME: &'static str = META_V1;
}

/// The host's log, as it lends it to the effe for the life of the process.
#[repr(C)]
#[derive(StableAbi)]
pub struct HostLogV1 {
    /// The most verbose level the host keeps: 0 off, 1 error, 2 warn, 3 info, 4 debug,
    /// 5 trace (the numbering of the `log` crate's levels).
    pub max_level: u8,
    /// Logs `message` at `level` (1 to 5), from the effe's `target` (its module path), for
    /// the request `request_id` (empty outside `run`).
    pub log: extern "C" fn(level: u8, request_id: RStr<'_>, target: RStr<'_>, message: RStr<'_>),
}

/// How the effe takes the host's log: the host calls `attach` once, after loading and before
/// `init` (effe-abi 0.1.2 and later).
#[repr(C)]
#[derive(StableAbi)]
pub struct LogV1 {
    /// Keeps `log` for the rest of the process.
    pub attach: extern "C" fn(log: &'static HostLogV1),
}

// Frozen as released in effe-abi 0.1.2.
impl InterfaceTable for LogV1 {
    const NAME: &'static str = LOG_V1;
}

/// The host's services for one call beyond the response (effe-abi 0.1.2 and later). Each
/// takes the call's state (see [`HostCall`]).
#[repr(C)]
#[derive(StableAbi)]
pub struct CallV1 {
    /// Stop this call's Context once the call returns, rather than reuse it.
    pub(crate) retire: extern "C" fn(NonNull<c_void>),
    /// Forget the status, headers and body written so far; `false` if the response is broken
    /// (nothing can be written to it any more).
    pub(crate) reset: extern "C" fn(NonNull<c_void>) -> bool,
}

// Frozen as released in effe-abi 0.1.2.
impl InterfaceTable for CallV1 {
    const NAME: &'static str = CALL_V1;
}

/// The host's streaming services for one call (effe-abi 0.1.2 and later): send the response
/// as it is written, read the request body as it arrives. Each takes the call's state.
#[repr(C)]
#[derive(StableAbi)]
pub struct StreamV1 {
    /// Sends the head (first time) and the body written so far.
    pub(crate) flush: extern "C" fn(NonNull<c_void>) -> RResult<(), RString>,
    /// Appends to the body like `write_body`, and says whether the stream has failed.
    pub(crate) write: extern "C" fn(NonNull<c_void>, RSlice<'_, u8>) -> RResult<(), RString>,
    /// Reads the next bytes of the request body into the buffer; 0 at its end.
    pub(crate) read: extern "C" fn(NonNull<c_void>, RSliceMut<'_, u8>) -> RResult<usize, RString>,
}

// Frozen as released in effe-abi 0.1.2.
impl InterfaceTable for StreamV1 {
    const NAME: &'static str = STREAM_V1;
}

/// What the host lends `run@2` for one call: the call's state (only the host knows its type),
/// the host's response services, and a lookup for the host's later interfaces.
///
/// Valid for the call only; never `Send`: the services may only be used during the call, from
/// the thread it runs on.
#[repr(C)]
#[derive(StableAbi)]
pub struct HostCall<'a> {
    state: NonNull<c_void>,
    response: &'static ResponseV1,
    pub(crate) lookup: extern "C" fn(RStr<'_>, NonNull<c_void>) -> ROption<NonNull<c_void>>,
    _call: PhantomData<&'a mut c_void>,
}

impl<'a> HostCall<'a> {
    /// A call over `state`, served by `response`. Only the sink in this crate makes these.
    pub(crate) fn new(state: NonNull<c_void>, response: &'static ResponseV1) -> Self {
        HostCall {
            state,
            response,
            lookup: crate::ffi::host_lookup,
            _call: PhantomData,
        }
    }

    pub(crate) fn state(&self) -> NonNull<c_void> {
        self.state
    }

    pub(crate) fn response(&self) -> &'static ResponseV1 {
        self.response
    }
}

/// One side's table for an interface, with its layout for the other side to check. `layout`
/// is null when the interface is absent.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Interface {
    pub(crate) layout: Option<&'static TypeLayout>,
    pub(crate) table: Option<NonNull<c_void>>,
}

impl Interface {
    /// Absent.
    pub const NONE: Interface = Interface {
        layout: None,
        table: None,
    };

    /// `table`, offered as interface `T`.
    pub fn of<T: InterfaceTable>(table: &'static T) -> Interface {
        Interface {
            layout: Some(T::LAYOUT),
            table: Some(NonNull::from(table).cast()),
        }
    }
}

/// The symbol an effe exports beside its root module: how the host finds the effe's
/// interfaces. Frozen: a magic string and one function.
#[repr(C)]
pub struct ExportedInterfaces {
    magic: [u8; 16],
    pub(crate) get: extern "C" fn(RStr<'_>) -> Interface,
}

/// Guards against a foreign symbol of the same name.
const MAGIC: [u8; 16] = *b"effe-abi/ifaces\0";

/// The name of the [`ExportedInterfaces`] symbol.
pub const INTERFACES_SYMBOL: &str = "effe_abi_interfaces";

impl ExportedInterfaces {
    /// The directory `get` answers for.
    pub const fn new(get: extern "C" fn(RStr<'_>) -> Interface) -> Self {
        ExportedInterfaces { magic: MAGIC, get }
    }

    pub(crate) fn is_genuine(&self) -> bool {
        self.magic == MAGIC
    }
}

/// An interface the effe offers with a layout other than the host's: the effe was built
/// against an effe-abi whose `name` differs from this one's (a broken release).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutMismatch {
    /// The interface.
    pub name: &'static str,
}

impl std::fmt::Display for LayoutMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "its interface {} has another layout than this host's",
            self.name
        )
    }
}

/// The interfaces an effe offers, as the host sees them.
#[derive(Clone, Copy)]
pub struct EffeInterfaces {
    pub(crate) exported: Option<&'static ExportedInterfaces>,
}

impl EffeInterfaces {
    /// Those of the effe loaded from `path` (already loaded through its root module). An effe
    /// built before interfaces existed has none.
    ///
    /// # Errors
    ///
    /// If the library cannot be opened again, or exports the symbol without effe-abi's magic.
    pub fn of_library(path: &std::path::Path) -> Result<EffeInterfaces, String> {
        let exported = crate::ffi::find_interfaces(path)?;
        if exported.is_some_and(|e| !e.is_genuine()) {
            return Err(format!("its {INTERFACES_SYMBOL} symbol is not effe-abi's"));
        }
        Ok(EffeInterfaces { exported })
    }
}

/// Serves a lookup from an effe: `table` for `T` if `name` is T's and the effe's expected
/// layout matches the host's.
pub(crate) fn offer<T: InterfaceTable>(
    name: &str,
    expected: &'static TypeLayout,
    table: &'static T,
) -> Option<NonNull<c_void>> {
    (name == T::NAME && check_layout_compatibility(T::LAYOUT, expected).is_ok())
        .then(|| NonNull::from(table).cast())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::{interfaces, Exported};
    use crate::{Effe, Error, ResponseBuffer, ResponseWriter};

    struct Nothing;

    impl Effe for Nothing {
        type Context = ();
        fn init() -> Result<Self, Error> {
            Ok(Nothing)
        }
        fn start(&self) -> Result<(), Error> {
            Ok(())
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

    // Expanded inside effe-abi, the unsafe_code lint sees the `no_mangle` statics (in an
    // effe's crate it does not look into another crate's macro).
    #[allow(unsafe_code)]
    mod exported {
        crate::export_effe!(super::Nothing);
    }

    static REAL: ExportedInterfaces = interfaces::<Nothing>();

    /// Offers the response services under `run@2`'s name: what an effe built against a broken
    /// effe-abi would look like.
    extern "C" fn wrong_layout(name: RStr<'_>) -> Interface {
        match name.as_str() {
            RUN_V2 => Interface::of(&crate::response::SERVICES),
            _ => Interface::NONE,
        }
    }

    static WRONG: ExportedInterfaces = ExportedInterfaces::new(wrong_layout);

    #[test]
    fn the_host_takes_an_effes_interface_only_with_its_own_layout() {
        let real = EffeInterfaces {
            exported: Some(&REAL),
        };
        assert!(real.get::<RunV2>().unwrap().is_some());
        assert!(real.get::<ResponseV1>().unwrap().is_none(), "not offered");
        let wrong = EffeInterfaces {
            exported: Some(&WRONG),
        };
        assert_eq!(
            wrong.get::<RunV2>().err(),
            Some(LayoutMismatch { name: RUN_V2 })
        );
        let older = EffeInterfaces { exported: None };
        assert!(older.get::<RunV2>().unwrap().is_none());
        assert!(REAL.is_genuine() && Nothing::INFO.abi_version() == crate::ABI_VERSION);
    }

    #[test]
    fn the_effe_gets_a_host_interface_only_for_the_layout_it_expects() {
        let mut buf = ResponseBuffer::new();
        let call = buf.host_call();
        assert!(call.lookup::<ResponseV1>().is_some());
        assert!(
            call.lookup::<RunV2>().is_none(),
            "the host does not offer it"
        );
        // The name of one, the layout of another: refused.
        let mismatched = NonNull::from(RunV2::LAYOUT).cast::<c_void>();
        assert!((call.lookup)(RESPONSE_V1.into(), mismatched).is_none());
    }
}
