//! The unsafe core of the boundary: the opaque Context handle, the exported library header,
//! the casts of interface tables and call states back to the types they were made from, and
//! the host's second look into a library for its interfaces. The Context's callers are the
//! generic shims in `export.rs` (the one other module with `unsafe`), instantiated with the
//! effe's own types, so a handle is always read back as the type it was made from. The
//! `ResponseSink` trait lives here too because `#[sabi_trait]` generates `unsafe` code.
#![allow(unsafe_code)]
// `#[sabi_trait]` expands to impls inside a const block.
#![allow(non_local_definitions)]

use std::ffi::c_void;
use std::fmt;
use std::ptr::NonNull;

use abi_stable::library::{CheckTypeLayout, LibHeader, RawLibrary, RootModuleResult};
use abi_stable::sabi_trait;
use abi_stable::std_types::{ROption, RResult, RSlice, RStr, RString};
use abi_stable::type_layout::TypeLayout;
use abi_stable::StableAbi;

use crate::interfaces::{
    CallV1, EffeInterfaces, ExportedInterfaces, HostCall, InterfaceTable, LayoutMismatch,
    ResponseV1, StreamV1, INTERFACES_SYMBOL,
};
use crate::module::EffeModuleRef;
use crate::{Request, ResponseBuffer};

/// An owned, opaque Context: a `Box<E::Context>` made by the effe's `start`, held by the host,
/// lent back to `run` (one call at a time, never concurrently) and given back to `stop`, which
/// frees it with the effe's allocator. Only the effe knows the type behind it.
#[repr(transparent)]
#[derive(StableAbi)]
pub struct RawContext(NonNull<c_void>);

// SAFETY: a RawContext is only ever made from `E::Context`, which the `Effe` trait requires to be
// `Send`, and its owner has exclusive access to it (it is not `Clone` nor `Copy`).
unsafe impl Send for RawContext {}

impl fmt::Debug for RawContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RawContext(..)")
    }
}

impl RawContext {
    pub(crate) fn new<C: Send + 'static>(ctx: C) -> Self {
        RawContext(NonNull::from(Box::leak(Box::new(ctx))).cast())
    }

    /// # Safety
    /// `self` must have been made by `RawContext::new::<C>`.
    pub(crate) unsafe fn as_mut<C>(&mut self) -> &mut C {
        // SAFETY: by this function's contract the pointer came from `Box::<C>::leak`, it is still
        // owned by `self`, and `&mut self` makes the borrow exclusive.
        unsafe { self.0.cast::<C>().as_mut() }
    }

    /// # Safety
    /// `self` must have been made by `RawContext::new::<C>`.
    pub(crate) unsafe fn into_inner<C>(self) -> C {
        // SAFETY: by this function's contract the pointer came from `Box::<C>::leak` in this same
        // library (same allocator), and `self` is consumed, so the box is rebuilt exactly once.
        *unsafe { Box::from_raw(self.0.cast::<C>().as_ptr()) }
    }
}

/// The header `effe-host` finds through the root-module symbol: the abi_stable version, the
/// layout of [`EffeModuleRef`] for the load-time check, and the constructor of the module.
pub(crate) const fn lib_header(constructor: extern "C" fn() -> RootModuleResult) -> LibHeader {
    // SAFETY: `constructor` is `export::load_root_module::<E>`, which returns the module made by
    // `EffeModule::leak_into_prefix`, i.e. exactly an `EffeModuleRef`, the type passed here.
    unsafe { LibHeader::from_constructor::<EffeModuleRef>(constructor, CheckTypeLayout::Yes) }
}

/// What the host does with what an effe writes. Implemented by the host's buffer; effes use it
/// only through [`ResponseWriter`](crate::ResponseWriter).
///
/// Frozen with the baseline (a method added here would refuse every older effe): the host's
/// newer response services are [`ResponseV1`] and its successors.
#[sabi_trait]
pub trait ResponseSink {
    /// Sets the status code (default 200).
    fn set_status(&mut self, status: u16) -> RResult<(), RString>;

    /// Appends a header; repeated names are kept.
    fn append_header(&mut self, name: RStr<'_>, value: RSlice<'_, u8>) -> RResult<(), RString>;

    /// Appends bytes to the body.
    #[sabi(last_prefix_field)]
    fn write_body(&mut self, chunk: RSlice<'_, u8>);
}

/// A table found under `T`'s name, read back as `T`.
///
/// # Safety
///
/// `table` points to a `'static` `T`: it was offered under `T::NAME` and its layout was checked
/// against `T`'s.
pub(crate) unsafe fn table<T: InterfaceTable>(table: NonNull<c_void>) -> &'static T {
    // SAFETY: by this function's contract.
    unsafe { table.cast::<T>().as_ref() }
}

/// Runs `f` on the buffer behind the state of a [`HostCall`] (the response services).
pub(crate) fn with_buffer<T>(
    state: NonNull<c_void>,
    f: impl FnOnce(&mut ResponseBuffer) -> T,
) -> T {
    // SAFETY: a HostCall is made only by `ResponseBuffer::host_call`, from `&mut self` for the
    // HostCall's lifetime, which the call (and so this service) cannot outlive; the services
    // take the buffer one at a time, on the calling thread, and nothing else touches it
    // meanwhile (the effe only holds the HostCall).
    f(unsafe { state.cast::<ResponseBuffer>().as_mut() })
}

/// The host's side of `HostCall::lookup`: its interfaces, each given only for the layout the
/// effe expects.
pub(crate) extern "C" fn host_lookup(
    name: RStr<'_>,
    expected: NonNull<c_void>,
) -> ROption<NonNull<c_void>> {
    // SAFETY: `HostCall::lookup` passes `T::LAYOUT`, a `&'static TypeLayout`.
    let expected = unsafe { expected.cast::<TypeLayout>().as_ref() };
    let found = std::panic::catch_unwind(|| {
        let name = name.as_str();
        crate::interfaces::offer::<ResponseV1>(name, expected, &crate::response::SERVICES)
            .or_else(|| crate::interfaces::offer::<CallV1>(name, expected, &crate::response::CALL))
            .or_else(|| {
                crate::interfaces::offer::<StreamV1>(name, expected, &crate::stream::STREAM)
            })
    });
    found.ok().flatten().into()
}

/// The [`ExportedInterfaces`] of the library at `path`, which the host already loaded through
/// its root module (so opening it again only takes another reference, and it is never
/// unloaded); `None` for an effe built before interfaces existed.
pub(crate) fn find_interfaces(
    path: &std::path::Path,
) -> Result<Option<&'static ExportedInterfaces>, String> {
    let library = RawLibrary::load_at(path).map_err(|e| e.to_string())?;
    let mut symbol = INTERFACES_SYMBOL.as_bytes().to_vec();
    symbol.push(0);
    // SAFETY: a symbol of this name is only made by `export_effe!`, as a static
    // `ExportedInterfaces`; the caller checks its magic before trusting it further.
    let found = unsafe { library.get::<*const ExportedInterfaces>(&symbol) }
        .ok()
        .map(|symbol| *symbol);
    // The library stays loaded for the life of the process (so do its statics).
    std::mem::forget(library);
    // SAFETY: the symbol's address is that of a static in a library that is never unloaded.
    Ok(found.and_then(|ptr| unsafe { ptr.as_ref() }))
}

impl HostCall<'_> {
    /// The host's table for interface `T`, if the host has it with the layout this effe
    /// expects. Look up once and keep the result: the host checks the layout on every lookup.
    pub fn lookup<T: InterfaceTable>(&self) -> Option<&'static T> {
        let expected = NonNull::from(T::LAYOUT).cast::<c_void>();
        (self.lookup)(T::NAME.into(), expected)
            .into_option()
            // SAFETY: the host returns a table only for T's name and a layout it checked
            // against T's (`host_lookup`).
            .map(|found| unsafe { table::<T>(found) })
    }
}

impl EffeInterfaces {
    /// The effe's table for `T`, if it offers one.
    ///
    /// # Errors
    ///
    /// If it offers `T` with another layout.
    pub fn get<T: InterfaceTable>(&self) -> Result<Option<&'static T>, LayoutMismatch> {
        let Some(exported) = self.exported else {
            return Ok(None);
        };
        let found = (exported.get)(T::NAME.into());
        let (Some(layout), Some(found)) = (found.layout, found.table) else {
            return Ok(None);
        };
        if abi_stable::abi_stability::abi_checking::check_layout_compatibility(T::LAYOUT, layout)
            .is_err()
        {
            return Err(LayoutMismatch { name: T::NAME });
        }
        // SAFETY: the effe offered `found` under T's name, with T's layout.
        Ok(Some(unsafe { table::<T>(found) }))
    }
}

/// The `run` call in progress on a thread: its request, and the host's call state and lookup
/// (absent for the baseline `run`).
#[derive(Clone, Copy)]
struct Current {
    request: NonNull<Request<'static>>,
    call: Option<(NonNull<c_void>, LookupFn)>,
}

type LookupFn = extern "C" fn(RStr<'_>, NonNull<c_void>) -> ROption<NonNull<c_void>>;

std::thread_local! {
    /// The `run` call in progress on this thread, for the logger's request id and the body
    /// reader.
    static CURRENT: std::cell::Cell<Option<Current>> = const { std::cell::Cell::new(None) };
}

/// The `run` call of `request` is in progress on this thread until this is dropped.
pub(crate) struct InCall(Option<Current>);

impl InCall {
    pub(crate) fn enter(request: &Request<'_>, call: Option<&HostCall<'_>>) -> InCall {
        let current = Current {
            request: NonNull::from(request).cast::<Request<'static>>(),
            call: call.map(|call| (call.state(), call.lookup)),
        };
        InCall(CURRENT.replace(Some(current)))
    }
}

impl Drop for InCall {
    fn drop(&mut self) {
        CURRENT.set(self.0);
    }
}

/// Runs `f` with the request id of the `run` call in progress on this thread (empty outside
/// one).
pub(crate) fn with_request_id<T>(f: impl FnOnce(&str) -> T) -> T {
    match CURRENT.get() {
        // SAFETY: `CURRENT` holds a request only while the `InCall` made from it lives, and an
        // `InCall` lives within the `run` call that borrows the request (`export::run*`), on this
        // thread: the request outlives every read here. Its lifetime is shortened back to this
        // call by `f`'s signature.
        Some(current) => f(unsafe { current.request.as_ref() }.request_id()),
        None => f(""),
    }
}

/// The host's streaming services and call state, if `request` is the one of the `run` call in
/// progress on this thread and the host streams its body.
pub(crate) fn streamed_body_of(
    request: &Request<'_>,
) -> Option<(&'static StreamV1, NonNull<c_void>)> {
    let current = CURRENT.get()?;
    if current.request.cast::<c_void>() != NonNull::from(request).cast::<c_void>() {
        return None;
    }
    let (state, lookup) = current.call?;
    let expected = NonNull::from(StreamV1::LAYOUT).cast::<c_void>();
    let found = lookup(crate::interfaces::STREAM_V1.into(), expected).into_option()?;
    // SAFETY: the host returns a table only for the name asked and a layout it checked
    // against StreamV1's (`host_lookup`).
    let stream = unsafe { table::<StreamV1>(found) };
    with_buffer(state, |buf| buf.streams_body()).then_some((stream, state))
}
