//! The unsafe core of the boundary: the opaque Context handle and the exported library header.
//! Its only callers are the generic shims in `export.rs` (the one other module with `unsafe`),
//! instantiated with the effe's own types, so a handle is always read back as the type it was
//! made from. The `ResponseSink` trait lives here too because `#[sabi_trait]` generates
//! `unsafe` code.
#![allow(unsafe_code)]
// `#[sabi_trait]` expands to impls inside a const block.
#![allow(non_local_definitions)]

use std::ffi::c_void;
use std::fmt;
use std::ptr::NonNull;

use abi_stable::library::{CheckTypeLayout, LibHeader, RootModuleResult};
use abi_stable::sabi_trait;
use abi_stable::std_types::{RResult, RSlice, RStr, RString};
use abi_stable::StableAbi;

use crate::module::EffeModuleRef;

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
/// only through [`ResponseWriter`].
///
/// New methods are appended after the last one, with `#[sabi(last_prefix_field)]` moved to them.
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
