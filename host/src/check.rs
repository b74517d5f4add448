//! `effe-host check`: load an effe as the host would, without calling Init, and say what it
//! is as one JSON object, or fail with the load failure's exit code (a CI or Docker build step).

use crate::cli::CheckArgs;
use crate::error::Fatal;
use crate::plugin::{Info, Plugin};

/// Loads `args.plugin` with every check the host makes before Init, and prints its metadata.
pub fn run(args: &CheckArgs) -> Result<(), Fatal> {
    let plugin = Plugin::load(&args.plugin, args.allow_insecure_plugin)?;
    println!("{}", report(plugin.info()));
    Ok(())
}

/// What `--info` prints, so that the two never drift apart, with the host's own effe-abi
/// beside the effe's, and the panic strategy said even if `--info` stops saying it (`unknown`
/// for an effe built before effe-abi did).
fn report(info: Info) -> serde_json::Value {
    let mut report: serde_json::Value =
        serde_json::from_str(&info.to_json()).expect("Info::to_json writes JSON");
    report["host_abi_version"] = effe_abi::abi::ABI_VERSION.into();
    report["panic"] = info.panic.unwrap_or("unknown").into();
    report
}
