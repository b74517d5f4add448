//! Stands in for a host built against effe-abi 0.1.0 as released (the frozen copy in
//! `../effe-abi-0.1.0`): it does at the boundary what effe-host 0.1.0 does, with that copy's
//! types, so that current effes can be checked to keep working in a host that never saw the
//! newer effe-abi.
//!
//! `compat-host-0-1-0 LIB METHOD TARGET [NAME:VALUE ...] [--body TEXT]` loads LIB, calls `init`,
//! `start`, `run` once with that request, then `stop`, and prints one line of JSON on stdout:
//! `{"info": {..}, "status": N, "headers": [[name, value], ..], "body": "..", "run_error": ..}`.
//!
//! Exit codes: 0 once `run` was called (whatever it returned), 2 for bad arguments, 6 when the
//! library cannot be loaded, 7 when `init` or `start` fails. Nothing else goes to stderr.

use std::process::ExitCode;

use abi_stable::library::RootModule;
use effe_abi::{EffeModuleRef, Header, HttpVersion, Request, RequestParts, ResponseBuffer};
use serde_json::{json, Value};

const USAGE: &str = "usage: compat-host-0-1-0 LIB METHOD TARGET [NAME:VALUE ...] [--body TEXT]";

/// The command line.
struct Args {
    lib: String,
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: String,
}

fn parse(mut args: impl Iterator<Item = String>) -> Option<Args> {
    let (lib, method, target) = (args.next()?, args.next()?, args.next()?);
    let mut headers = Vec::new();
    let mut body = String::new();
    while let Some(arg) = args.next() {
        if arg == "--body" {
            body = args.next()?;
        } else {
            let (name, value) = arg.split_once(':')?;
            headers.push((name.to_owned(), value.to_owned()));
        }
    }
    Some(Args {
        lib,
        method,
        target,
        headers,
        body,
    })
}

/// abi_stable's load errors span lines (a layout mismatch, pages): the tests read one line.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn fail(code: u8, message: std::fmt::Arguments<'_>) -> ExitCode {
    eprintln!("compat-host: {message}");
    ExitCode::from(code)
}

fn main() -> ExitCode {
    let Some(args) = parse(std::env::args().skip(1)) else {
        return fail(2, format_args!("{USAGE}"));
    };
    let module = match EffeModuleRef::load_from_file(args.lib.as_ref()) {
        Ok(module) => module,
        Err(err) => {
            let err = one_line(&err.to_string());
            return fail(6, format_args!("cannot load {}: {err}", args.lib));
        }
    };
    let info = module.info();
    if let Err(err) = (module.init())().into_result() {
        return fail(7, format_args!("init failed: {err}"));
    }
    let mut ctx = match (module.start())().into_result() {
        Ok(ctx) => ctx,
        Err(err) => return fail(7, format_args!("start failed: {err}")),
    };

    let headers: Vec<Header<'_>> = args
        .headers
        .iter()
        .map(|(name, value)| Header::new(name, value.as_bytes()))
        .collect();
    let request = Request::new(RequestParts {
        method: &args.method,
        target: &args.target,
        version: HttpVersion::Http11,
        headers: &headers,
        body: args.body.as_bytes(),
        peer_addr: "127.0.0.1:1",
        request_id: "compat-host-1",
    });
    let mut out = ResponseBuffer::new();
    let result = (module.run())(&mut ctx, &request, &mut out.writer()).into_result();
    // effe-host 0.1.0 retires a Context whose run panicked; either way this one is done.
    let stopped = (module.stop())(ctx).into_result();

    let (status, response_headers, body) = out.into_parts();
    let response_headers: Vec<Value> = response_headers
        .iter()
        .map(|(name, value)| json!([name.as_str(), String::from_utf8_lossy(value.as_bytes())]))
        .collect();
    let report = json!({
        "info": {
            "name": info.name(),
            "version": info.version(),
            "abi_version": info.abi_version(),
            "nonblocking": info.nonblocking(),
        },
        "status": status.as_u16(),
        "headers": response_headers,
        "body": String::from_utf8_lossy(&body),
        "run_error": result.err().map(|e| e.to_string()),
        "stop_error": stopped.err().map(|e| e.to_string()),
    });
    println!("{report}");
    ExitCode::SUCCESS
}
