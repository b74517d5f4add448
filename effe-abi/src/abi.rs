//! The boundary itself: what `effe-host` uses to load an effe and call it. Effe authors need
//! nothing from here; it is public for the host (and for tools that inspect effes).
//!
//! # How the ABI stays stable
//!
//! - **The baseline is frozen.** [`EffeModule`] and every type it reaches ([`EffeInfo`],
//!   [`Request`](crate::Request), [`Header`](crate::Header),
//!   [`HttpVersion`](crate::HttpVersion), [`RawResponseWriter`], [`ResponseSink`],
//!   [`EffeError`], [`ErrorKind`], [`RawContext`]) keep their names, fields and layouts as
//!   released in 0.1.0. abi_stable checks them at load and would refuse every older effe after
//!   any change, even an appended field: it accepts a library with *more* prefix fields than
//!   the host, never fewer.
//! - **The crate stays 0.1.x** while the baseline holds: abi_stable compares the package name
//!   and (while 0.x) the minor version of every type, and refuses an effe with a lower minor.
//! - **New capabilities are named interfaces**, frozen once released: a change is a new name
//!   (`effe-abi/run@3`), never an edit. Each side looks up the other's by name and checks its
//!   layout ([`EffeInterfaces`], [`HostCall::lookup`]).
//! - Breaking the baseline means 0.2: every effe must be rebuilt, and hosts refuse the old ones
//!   with a clear error.
//!
//! Interfaces in this version:
//!
//! | name | since | offered by | what |
//! |---|---|---|---|
//! | [`RUN_V2`] | 0.1.1 | the effe | `run` with a [`HostCall`] instead of the baseline writer |
//! | [`RESPONSE_V1`] | 0.1.1 | the host | the response services: the baseline's, and `set_header` |
//! | [`META_V1`] | 0.1.2 | the effe | metadata beyond [`EffeInfo`]: the panic strategy |
//! | [`LOG_V1`] | 0.1.2 | the effe | takes the host's log ([`HostLogV1`]) once, before `init` |
//! | [`CALL_V1`] | 0.1.2 | the host | per call: retire the Context, reset the response |
//! | [`STREAM_V1`] | 0.1.2 | the host | per call: flush the response, write to it, read the request body as it arrives |

pub use crate::error::{EffeError, ErrorKind};
pub use crate::ffi::{RawContext, ResponseSink, ResponseSink_TO};
pub use crate::interfaces::{
    CallV1, EffeInterfaces, ExportedInterfaces, HostCall, HostLogV1, Interface, InterfaceTable,
    LayoutMismatch, LogV1, MetaV1, PanicStrategy, ResponseV1, RunV2, StreamV1, CALL_V1,
    INTERFACES_SYMBOL, LOG_V1, META_V1, RESPONSE_V1, RUN_V2, STREAM_V1,
};
pub use crate::module::ABI_VERSION;
pub use crate::module::{EffeInfo, EffeModule, EffeModuleRef, ResponseWriter as RawResponseWriter};
pub use crate::request::RequestParts;
pub use crate::response::ResponseBuffer;
pub use crate::stream::{BodySource, StreamSink, CHUNK};
