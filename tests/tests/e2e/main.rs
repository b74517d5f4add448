//! End-to-end tests: the real effe-host binary, real effes, real sockets. One binary, one
//! module per area.

mod abuse;
mod admin;
mod authoring;
mod compat;
mod deadline;
mod h2_probes;
mod lifecycle;
mod limits;
mod load;
mod logging;
mod response;
mod sdk;
mod serve;
mod streaming;
mod swap;
mod tls;
mod todo;
mod wire;
