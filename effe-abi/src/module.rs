//! The root module every effe exports, and the metadata compiled into it.
//!
//! Ownership and threads, for every entry point:
//! - `init` is called once, first, on the host's main thread.
//! - `start` may be called from any thread, several at once; the [`RawContext`] it returns is
//!   owned by the host from then on.
//! - `run` borrows one Context exclusively for one call, from any thread (possibly a different
//!   one each call); the request and writer are valid only during the call.
//! - `stop` takes a Context back exactly once; the effe frees it.
//!
//! Every entry point returns [`EffeError`] instead of unwinding: the SDK catches panics inside
//! the effe. All strings and buffers cross as `abi_stable` types that carry their own allocator.

use abi_stable::library::RootModule;
use abi_stable::std_types::{RResult, RStr};
use abi_stable::StableAbi;
use abi_stable::{
    declare_root_module_statics, package_version_strings, sabi_types::VersionStrings,
};

use abi_stable::sabi_types::RMut;

use crate::ffi::ResponseSink_TO;
use crate::{EffeError, RawContext, Request};

/// The version of effe-abi this copy was built as. The host compares it with the effe's at load.
pub const ABI_VERSION: &str = env!("CARGO_PKG_VERSION");

/// What an effe says about itself, compiled in from its `Cargo.toml`.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy)]
pub struct EffeInfo {
    name: RStr<'static>,
    version: RStr<'static>,
    description: RStr<'static>,
    abi_version: RStr<'static>,
    nonblocking: bool,
}

impl EffeInfo {
    #[doc(hidden)]
    pub const fn new(
        name: &'static str,
        version: &'static str,
        description: &'static str,
        nonblocking: bool,
    ) -> Self {
        Self {
            name: RStr::from_str(name),
            version: RStr::from_str(version),
            description: RStr::from_str(description),
            abi_version: RStr::from_str(ABI_VERSION),
            nonblocking,
        }
    }

    /// The effe's package name (`CARGO_PKG_NAME`).
    pub fn name(&self) -> &'static str {
        self.name.as_str()
    }

    /// The effe's package version (`CARGO_PKG_VERSION`).
    pub fn version(&self) -> &'static str {
        self.version.as_str()
    }

    /// The effe's package description (`CARGO_PKG_DESCRIPTION`), possibly empty.
    pub fn description(&self) -> &'static str {
        self.description.as_str()
    }

    /// The effe-abi version the effe was built against.
    pub fn abi_version(&self) -> &'static str {
        self.abi_version.as_str()
    }

    /// Whether the effe declared that `run` never blocks ([`Effe::NONBLOCKING`](crate::Effe)).
    pub fn nonblocking(&self) -> bool {
        self.nonblocking
    }
}

/// The writer as the baseline `run` receives it: a trait object over the host's sink.
/// Frozen, like everything the root module reaches; effes write through
/// [`crate::ResponseWriter`], which wraps it.
#[repr(transparent)]
#[derive(StableAbi)]
pub struct ResponseWriter<'a> {
    pub(crate) sink: ResponseSink_TO<'a, RMut<'a, ()>>,
}

/// The root module: metadata and the four entry points.
///
/// Frozen as released in effe-abi 0.1.0, with every type it reaches: abi_stable refuses a
/// library whose root module has fewer fields than the host's, so appending a field would
/// refuse every effe built before it. New entry points are interfaces
/// ([`crate::abi`]).
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = EffeModuleRef)))]
#[sabi(missing_field(panic))]
pub struct EffeModule {
    /// Metadata.
    pub info: EffeInfo,
    /// Once per process, before anything else.
    pub init: extern "C" fn() -> RResult<(), EffeError>,
    /// Makes one Context.
    pub start: extern "C" fn() -> RResult<RawContext, EffeError>,
    /// Handles one request with exclusive use of one Context.
    pub run: for<'a, 'b> extern "C" fn(
        &'b mut RawContext,
        &'b Request<'a>,
        &'b mut ResponseWriter<'a>,
    ) -> RResult<(), EffeError>,
    /// Takes a Context back and closes what `start` opened.
    #[sabi(last_prefix_field)]
    pub stop: extern "C" fn(RawContext) -> RResult<(), EffeError>,
}

impl RootModule for EffeModuleRef {
    declare_root_module_statics! {EffeModuleRef}
    const BASE_NAME: &'static str = "effe";
    const NAME: &'static str = "effe";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}
