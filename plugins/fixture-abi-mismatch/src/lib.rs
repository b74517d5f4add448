//! Test fixture (not published): what an effe built against another, incompatible effe-abi
//! looks like to the host: the same root-module name and version, a different layout (a
//! different metadata type, and `init` returning a plain integer). The host must refuse it at
//! load time with a clear error, never call into it.

use abi_stable::library::RootModule;
use abi_stable::prefix_type::PrefixTypeTrait;
use abi_stable::sabi_types::VersionStrings;
use abi_stable::StableAbi;
use abi_stable::{declare_root_module_statics, export_root_module, package_version_strings};

/// A root module shaped like an older, incompatible effe-abi's.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = EffeModuleRef)))]
#[sabi(missing_field(panic))]
pub struct EffeModule {
    /// Metadata as a bare number instead of `EffeInfo`.
    pub info: u64,
    /// `init` with a C-style status code.
    #[sabi(last_prefix_field)]
    pub init: extern "C" fn() -> u32,
}

impl RootModule for EffeModuleRef {
    declare_root_module_statics! {EffeModuleRef}
    const BASE_NAME: &'static str = "effe";
    const NAME: &'static str = "effe";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

extern "C" fn init() -> u32 {
    0
}

/// Exported the same way `effe_abi::export_effe!` does.
#[export_root_module]
pub fn root_module() -> EffeModuleRef {
    EffeModule { info: 1, init }.leak_into_prefix()
}
