//! The contract between `effe-host` and an *effe*: one function, compiled as a Rust `cdylib`,
//! loaded by the host with `dlopen` and called for every HTTP request.
//!
//! Authors implement the safe [`Effe`] trait and export it with [`export_effe!`]; they write no
//! `unsafe` and no `extern`. The host loads the library through `abi_stable`, which checks at load
//! time that the effe was built against a compatible effe-abi: same major version (same minor
//! while 0.x, or a newer one) and matching type layouts. A mismatch is a clear load error, never
//! undefined behaviour.
//!
//! # A complete effe
//!
//! `Cargo.toml`:
//!
//! ```toml
//! [package]
//! name = "greet"
//! version = "0.1.0"
//! description = "Greets whoever asks"
//! edition = "2021"
//!
//! [lib]
//! crate-type = ["cdylib"]
//!
//! [dependencies]
//! effe-abi = "0.1"
//! ```
//!
//! `src/lib.rs`:
//!
//! ```
//! use effe_abi::{Effe, Error, Request, ResponseWriter};
//!
//! /// Process-wide state, made once by `init`.
//! struct Greet {
//!     greeting: String,
//! }
//!
//! /// One worker's resources; a real effe keeps a database connection here.
//! struct Conn {
//!     served: u64,
//! }
//!
//! impl Effe for Greet {
//!     type Context = Conn;
//!
//!     fn init() -> Result<Self, Error> {
//!         let greeting = std::env::var("GREETING").unwrap_or_else(|_| "Hello".into());
//!         Ok(Greet { greeting })
//!     }
//!
//!     fn start(&self) -> Result<Conn, Error> {
//!         Ok(Conn { served: 0 })
//!     }
//!
//!     fn run(&self, conn: &mut Conn, req: &Request<'_>, resp: &mut ResponseWriter<'_>)
//!         -> Result<(), Error>
//!     {
//!         conn.served += 1;
//!         let name = req.query().unwrap_or("world");
//!         if name.is_empty() {
//!             return Err(Error::msg("empty name")); // logged; the client gets 500
//!         }
//!         resp.header("content-type", "text/plain")?;
//!         resp.body(format!("{}, {name}!", self.greeting));
//!         Ok(())
//!     }
//! }
//!
//! effe_abi::export_effe!(Greet);
//!
//! // Effes can be unit-tested without a host:
//! let greet = Greet::init().unwrap();
//! let mut conn = greet.start().unwrap();
//! let req = Request::new(effe_abi::RequestParts {
//!     method: "GET",
//!     target: "/?effe",
//!     version: effe_abi::HttpVersion::Http11,
//!     headers: &[],
//!     body: b"",
//!     peer_addr: "127.0.0.1:4000",
//!     request_id: "test-1",
//! });
//! let mut out = effe_abi::ResponseBuffer::new();
//! greet.run(&mut conn, &req, &mut out.writer()).unwrap();
//! let (status, _headers, body) = out.into_parts();
//! assert_eq!((status.as_u16(), &body[..]), (200, &b"Hello, effe!"[..]));
//! ```
//!
//! # Versions: what loads where
//!
//! | effe built against | host built against | works? |
//! |---|---|---|
//! | effe-abi 0.1.0 | 0.1.1 or later 0.1.x | yes: the baseline (`run`, the three writer methods) |
//! | 0.1.1 | 0.1.0 | yes: the baseline; [`ResponseWriter::set_header`] returns an error |
//! | 0.1.1 | 0.1.1 | yes: everything, through [`interfaces`] |
//! | 0.1.x | 0.2 (a new baseline) | no: refused at load, exit code 6, "rebuild the effe" |
//!
//! The rules that make this hold (docs/abi.md in the repository tells why):
//!
//! - **The baseline is frozen.** [`EffeModule`] and every type it reaches ([`EffeInfo`],
//!   [`Request`], [`Header`], [`HttpVersion`], [`module::ResponseWriter`], [`ResponseSink`],
//!   [`EffeError`], [`ErrorKind`], [`RawContext`]) keep their names, fields and layouts as
//!   released in 0.1.0. abi_stable checks them at load and would refuse every older effe after
//!   any change, even an appended field: it accepts a library with *more* prefix fields than
//!   the host, never fewer.
//! - **The crate stays 0.1.x** while the baseline holds: abi_stable compares the package name
//!   and (while 0.x) the minor version of every type, and refuses an effe with a lower minor.
//! - **New capabilities are named interfaces**, frozen once released: a change is a new name
//!   (`effe-abi/run@3`), never an edit. See [`interfaces`].
//! - Breaking the baseline means 0.2: every effe must be rebuilt, and hosts refuse the old ones
//!   with a clear error.

#![warn(missing_docs)]

mod effe;
mod error;
mod export;
mod ffi;
pub mod interfaces;
pub mod module;
#[cfg(test)]
mod proptests;
mod request;
mod response;

pub use effe::Effe;
pub use error::{EffeError, Error, ErrorKind};
pub use ffi::{RawContext, ResponseSink, ResponseSink_TO};
pub use module::{EffeInfo, EffeModule, EffeModuleRef, ABI_VERSION};
pub use request::{Header, HttpVersion, Request, RequestParts, DEADLINE_HEADER};
pub use response::{
    ResponseBuffer, ResponseWriter, MAX_RESPONSE_HEADERS, MAX_RESPONSE_HEADER_BYTES,
};

/// Re-exported so that effes can convert to and from the `http` crate's types with the same
/// version the SDK uses.
pub use http;

#[doc(hidden)]
pub mod __private {
    pub use crate::export::{interfaces, lib_header, Exported};
    pub use abi_stable::library::LibHeader;
}
