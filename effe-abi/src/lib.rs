//! The contract between `effe-host` and an *effe*: one function, compiled as a Rust `cdylib`,
//! loaded by the host with `dlopen` and called for every HTTP request.
//!
//! Authors implement the safe [`Effe`] trait and export it with [`export_effe!`]; they write no
//! `unsafe` and no `extern`. `effe-host new NAME` makes a crate ready to build, test and serve.
//! The host loads the library through `abi_stable`, which checks at load time that the effe was
//! built against a compatible effe-abi: same major version (same minor while 0.x, or a newer
//! one) and matching type layouts. A mismatch is a clear load error, never undefined behaviour.
//!
//! What an author uses is at the crate root: [`Effe`], [`Request`], [`ResponseWriter`],
//! [`Error`], [`export_effe!`], [`testing`] and [`log`]. What the host needs to cross the
//! boundary is in [`abi`].
//!
//! # A complete effe
//!
//! `Cargo.toml` (`effe-host new` writes one, with the effe-abi dependency resolved):
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
//! effe-abi = { path = "effe-abi" }
//!
//! [profile.release]
//! panic = "unwind" # the default; `abort` is refused: one panic would end the host
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
//!         let name = req.query_param("name").unwrap_or("world".into());
//!         if name.is_empty() {
//!             // The client gets 400 with this text; nothing is logged.
//!             return Err(Error::bad_request("empty name"));
//!         }
//!         effe_abi::log::debug!("greeting {name}"); // to the host's log, with the request id
//!         resp.text(format!("{}, {name}!", self.greeting));
//!         Ok(())
//!     }
//! }
//!
//! effe_abi::export_effe!(Greet);
//!
//! // Unit tests need no host and no `.so` (see `testing`):
//! # fn main() -> Result<(), effe_abi::Error> {
//! let mut host = effe_abi::testing::TestHost::<Greet>::new()?;
//! let resp = host.call(http::Request::get("/?name=effe").body("")?);
//! assert_eq!(resp.status(), 200);
//! assert_eq!(resp.body(), b"Hello, effe!");
//! assert_eq!(host.call(http::Request::get("/?name=").body("")?).status(), 400);
//! let life = host.finish()?;
//! assert_eq!(life.starts, life.stops);
//! # Ok(()) }
//! ```
//!
//! # Errors
//!
//! - A plain [`Error`] (from `?` on any error, or [`Error::msg`]) is logged with the request
//!   id, and the client gets `500` (unless the effe wrote a response before failing).
//! - An error with a status ([`Error::with_status`], [`Error::not_found`], …) is the client's
//!   answer: that status and its public message. Only 5xx ones are logged.
//! - [`Error::retire`] also stops the Context rather than reuse it: a broken connection.
//! - A panic is caught at the boundary: `500`, logged, and the Context is retired.
//!
//! # Versions: what loads where
//!
//! | effe built against | host built against | works? |
//! |---|---|---|
//! | effe-abi 0.1.0 | 0.1.1 or later 0.1.x | yes: the baseline (`run`, the three writer methods) |
//! | 0.1.1 or later | an older 0.1.x | yes: what that host offers; newer calls return an error (e.g. [`ResponseWriter::set_header`] in a 0.1.0 host) |
//! | 0.1.x | the same or a newer 0.1.x | yes: everything |
//! | 0.1.x | 0.2 (a new baseline) | no: refused at load, exit code 6, "rebuild the effe" |
//!
//! [`abi`] says how that holds.

#![warn(missing_docs)]

pub mod abi;
mod effe;
mod error;
mod export;
mod ffi;
mod interfaces;
#[cfg(feature = "json")]
mod json;
mod logging;
mod module;
#[cfg(test)]
mod proptests;
mod query;
mod request;
mod response;
mod stream;
pub mod testing;

pub use effe::Effe;
pub use error::Error;
pub use request::{
    Header, HttpVersion, Request, CLIENT_CERT_HEADER, CLIENT_SUBJECT_HEADER, DEADLINE_HEADER,
};
pub use response::{ResponseWriter, MAX_RESPONSE_HEADERS, MAX_RESPONSE_HEADER_BYTES};
pub use stream::BodyReader;

/// Re-exported so that effes can convert to and from the `http` crate's types with the same
/// version the SDK uses.
pub use http;

/// Re-exported: the logging facade whose records reach the host's log, tagged with the effe's
/// name and the request id (`effe_abi::log::info!("...")`, or `log::info!` with `log` as a
/// dependency of the effe). Errors also go to syslog, as run failures do. Outside `run` (in
/// `init`, `start`, `stop`) records carry no request id.
pub use log;

// The boundary's items at their 0.1.0 and 0.1.1 paths, so that effes written against those
// keep compiling; `abi` is where they live now.
#[doc(hidden)]
pub use abi::{
    EffeError, EffeInfo, EffeModule, EffeModuleRef, ErrorKind, RawContext, RequestParts,
    ResponseBuffer, ResponseSink, ResponseSink_TO, ABI_VERSION,
};

#[doc(hidden)]
pub mod __private {
    pub use crate::export::{interfaces, lib_header, Exported};
    pub use abi_stable::library::LibHeader;
}
