//! The export macro and the `extern "C"` shims it instantiates for an effe.
//!
//! Every shim runs the author's code inside `catch_unwind` and turns a panic into an
//! [`EffeError`] of kind `Panicked`: since Rust 1.81 an unwind out of an `extern "C"` function
//! aborts the process, which would take the host down with the effe.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;

use abi_stable::library::RootModuleResult;
use abi_stable::prefix_type::PrefixTypeTrait;
use abi_stable::std_types::RResult;

use abi_stable::std_types::RStr;

use crate::interfaces::{
    ExportedInterfaces, HostCall, Interface, MetaV1, PanicStrategy, RunV2, LOG_V1, META_V1, RUN_V2,
};
use crate::module::{self, EffeInfo, EffeModule, EffeModuleRef};
use crate::{Effe, EffeError, Error, ErrorKind, RawContext, Request, ResponseWriter};

/// Exports an [`Effe`] implementation as the effe of this `cdylib`.
///
/// Use it once per crate, at the top level. The effe's name, version and description are taken
/// from the crate's `Cargo.toml`. The crate needs `crate-type = ["cdylib"]`.
///
/// ```ignore
/// effe_abi::export_effe!(Hello);
/// ```
#[macro_export]
macro_rules! export_effe {
    ($effe:ty) => {
        // Evaluated in the effe's crate, built with its profile's strategy. The host refuses
        // such an effe at load too (meta@1), for effes exported by other means.
        #[cfg(panic = "abort")]
        ::core::compile_error!(
            "an effe must be built with panic = \"unwind\" (the default): under \"abort\", \
             its first panic would end the whole host. Remove `panic = \"abort\"` from the \
             [profile.*] sections of Cargo.toml."
        );

        const _: () = {
            impl $crate::__private::Exported for $effe {
                fn slot() -> &'static ::std::sync::OnceLock<Self> {
                    static SLOT: ::std::sync::OnceLock<$effe> = ::std::sync::OnceLock::new();
                    &SLOT
                }

                const INFO: $crate::abi::EffeInfo = $crate::abi::EffeInfo::new(
                    ::core::env!("CARGO_PKG_NAME"),
                    ::core::env!("CARGO_PKG_VERSION"),
                    ::core::env!("CARGO_PKG_DESCRIPTION"),
                    <$effe as $crate::Effe>::NONBLOCKING,
                );
            }
        };

        // The symbol abi_stable's loader looks up (`abi_stable::library::ROOT_MODULE_LOADER_NAME`).
        // No `allow(unsafe_code)`: it would not compile in a crate that forbids unsafe code,
        // and the lint does not look into another crate's macro anyway.
        #[unsafe(no_mangle)]
        #[doc(hidden)]
        #[allow(non_upper_case_globals)]
        pub static _1as_0lib_1header_0root_bmodule_bloader: $crate::__private::LibHeader =
            $crate::__private::lib_header::<$effe>();

        // Where newer hosts find the interfaces added after the baseline
        // (`effe_abi::interfaces::INTERFACES_SYMBOL`); older hosts never look.
        #[unsafe(no_mangle)]
        #[doc(hidden)]
        #[allow(non_upper_case_globals)]
        pub static effe_abi_interfaces: $crate::abi::ExportedInterfaces =
            $crate::__private::interfaces::<$effe>();
    };
}

/// Implemented by [`export_effe!`]: where the `init` value lives, and the metadata.
pub trait Exported: Effe {
    /// The process-wide instance made by `init`.
    fn slot() -> &'static OnceLock<Self>;
    /// The effe's metadata.
    const INFO: EffeInfo;
}

/// The library header for effe `E`.
pub const fn lib_header<E: Exported>() -> abi_stable::library::LibHeader {
    crate::ffi::lib_header(load_root_module::<E>)
}

/// The interfaces effe `E` offers beyond the baseline.
pub const fn interfaces<E: Exported>() -> ExportedInterfaces {
    ExportedInterfaces::new(get_interface::<E>)
}

/// The tables of effe `E`, made once at compile time.
trait Tables {
    const RUN_V2: &'static RunV2;
    const META_V1: &'static MetaV1;
}

impl<E: Exported> Tables for E {
    const RUN_V2: &'static RunV2 = &RunV2 { run: run_v2::<E> };
    const META_V1: &'static MetaV1 = &MetaV1 {
        panic: PanicStrategy::CURRENT,
        stream_request_body: E::STREAM_REQUEST_BODY,
        max_streamed_body_size: match E::MAX_STREAMED_BODY_SIZE {
            Some(max) => max,
            None => 0,
        },
    };
}

extern "C" fn get_interface<E: Exported>(name: RStr<'_>) -> Interface {
    match name.as_str() {
        RUN_V2 => Interface::of(<E as Tables>::RUN_V2),
        META_V1 => Interface::of(<E as Tables>::META_V1),
        LOG_V1 => Interface::of(&crate::logging::LOG_V1),
        _ => Interface::NONE,
    }
}

extern "C" fn load_root_module<E: Exported>() -> RootModuleResult {
    abi_stable::library::__call_root_module_loader(root_module::<E>)
}

fn root_module<E: Exported>() -> EffeModuleRef {
    EffeModule {
        info: E::INFO,
        init: init::<E>,
        start: start::<E>,
        run: run::<E>,
        stop: stop::<E>,
    }
    .leak_into_prefix()
}

#[cold]
fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_owned()
    }
}

std::thread_local! {
    /// The message and place of the last panic on this thread, as the quiet hook saw it.
    static LAST_PANIC: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// The effe's panic hook: it prints nothing (the host logs each panic as one record, with the
/// request id) and keeps the message and place for [`guard`], which reports them.
fn quiet_hook(info: &std::panic::PanicHookInfo<'_>) {
    let message = panic_message(info.payload());
    let report = match info.location() {
        Some(at) => format!("{message} (at {}:{}:{})", at.file(), at.line(), at.column()),
        None => message,
    };
    LAST_PANIC.with(|last| *last.borrow_mut() = Some(report));
}

/// Runs `f`, turning an error or a panic into an [`EffeError`].
pub(crate) fn guard<T>(f: impl FnOnce() -> Result<T, Error>) -> RResult<T, EffeError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(value)) => RResult::ROk(value),
        Ok(Err(err)) => RResult::RErr(err.into()),
        Err(payload) => {
            let message = LAST_PANIC
                .with(|last| last.borrow_mut().take())
                .unwrap_or_else(|| panic_message(&*payload));
            // Dropped, or every panic would leak it (found by the soak: ~110 bytes a panic);
            // inside catch_unwind, since a payload whose own `Drop` panics would unwind from
            // here. Only what that drop throws is forgotten.
            if let Err(again) = catch_unwind(AssertUnwindSafe(move || drop(payload))) {
                std::mem::forget(again);
            }
            RResult::RErr(EffeError::new(ErrorKind::Panicked, message))
        }
    }
}

fn instance<E: Exported>() -> Result<&'static E, Error> {
    E::slot()
        .get()
        .ok_or_else(|| Error::msg("entry point called before init"))
}

extern "C" fn init<E: Exported>() -> RResult<(), EffeError> {
    // This library's own std has its own hook, which would print Rust's multi-line panic
    // message beside the host's record. An effe that sets a hook in `init` keeps its own.
    std::panic::set_hook(Box::new(quiet_hook));
    crate::logging::install();
    guard(|| {
        let effe = E::init()?;
        E::slot()
            .set(effe)
            .map_err(|_| Error::msg("init called twice"))
    })
}

extern "C" fn start<E: Exported>() -> RResult<RawContext, EffeError> {
    guard(|| Ok(RawContext::new(instance::<E>()?.start()?)))
}

/// The baseline `run`, which hosts built before `run@2` call.
extern "C" fn run<'a, E: Exported>(
    ctx: &mut RawContext,
    req: &Request<'a>,
    resp: &mut module::ResponseWriter<'a>,
) -> RResult<(), EffeError> {
    let _in_call = crate::ffi::InCall::enter(req, None);
    guard(|| run_on::<E>(ctx, req, &mut ResponseWriter::over_sink(resp)))
}

/// `run@2`: the response goes through the host's call services.
extern "C" fn run_v2<'a, 'b, E: Exported>(
    ctx: &'b mut RawContext,
    req: &'b Request<'a>,
    call: HostCall<'b>,
) -> RResult<(), EffeError> {
    let _in_call = crate::ffi::InCall::enter(req, Some(&call));
    guard(|| run_on::<E>(ctx, req, &mut ResponseWriter::over_call(call)))
}

/// Both `run`s, whatever the writer goes to.
fn run_on<E: Exported>(
    ctx: &mut RawContext,
    req: &Request<'_>,
    writer: &mut ResponseWriter<'_>,
) -> Result<(), Error> {
    let effe = instance::<E>()?;
    // SAFETY: the host only passes back handles that `start::<E>` made.
    #[allow(unsafe_code)]
    let ctx = unsafe { ctx.as_mut::<E::Context>() };
    let result = effe.run(ctx, req, writer);
    settle(result, writer)
}

/// What `run`'s result means for the host: an error with a status becomes the answer (and
/// stays an error, to be logged, only for a 5xx), and a retiring error asks for the Context to
/// be stopped. Shared with the testing kit, so that tests see what the host would send.
pub(crate) fn settle(
    result: Result<(), Error>,
    writer: &mut ResponseWriter<'_>,
) -> Result<(), Error> {
    let Err(err) = result else {
        return Ok(());
    };
    settle_error(err, writer)
}

#[cold]
#[inline(never)]
fn settle_error(err: Error, writer: &mut ResponseWriter<'_>) -> Result<(), Error> {
    if err.retires() {
        writer.retire();
    }
    match err.status() {
        Some(status) if writer.answer(status, err.headers(), err.message()) => {
            if status >= 500 {
                Err(err)
            } else {
                Ok(())
            }
        }
        _ => Err(err),
    }
}

extern "C" fn stop<E: Exported>(ctx: RawContext) -> RResult<(), EffeError> {
    guard(|| {
        // SAFETY: the host only passes back handles that `start::<E>` made, each once.
        #[allow(unsafe_code)]
        let ctx = unsafe { ctx.into_inner::<E::Context>() };
        instance::<E>()?.stop(ctx)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn exported_symbol_is_abi_stables_loader_name() {
        // Must match the name spelled in `export_effe!`.
        assert_eq!(
            abi_stable::library::ROOT_MODULE_LOADER_NAME,
            "_1as_0lib_1header_0root_bmodule_bloader"
        );
    }

    #[test]
    fn guard_drops_the_panic_payload() {
        use std::sync::atomic::{AtomicBool, Ordering};
        static DROPPED: AtomicBool = AtomicBool::new(false);
        struct Payload;
        impl Drop for Payload {
            fn drop(&mut self) {
                DROPPED.store(true, Ordering::SeqCst);
            }
        }
        let _ = super::guard::<()>(|| std::panic::panic_any(Payload));
        assert!(DROPPED.load(Ordering::SeqCst), "the payload leaked");
    }

    #[test]
    fn guard_survives_a_payload_whose_drop_panics() {
        struct Bomb;
        impl Drop for Bomb {
            fn drop(&mut self) {
                panic!("drop");
            }
        }
        let err = super::guard::<()>(|| std::panic::panic_any(Bomb)).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Panicked);
    }

    #[test]
    fn guard_catches_panics_with_their_message() {
        let err = super::guard::<()>(|| panic!("boom {}", 7)).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Panicked);
        assert_eq!(err.message(), "boom 7");
        let err = super::guard::<()>(|| panic!("static")).unwrap_err();
        assert_eq!(err.message(), "static");
    }
}
