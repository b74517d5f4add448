//! An effe written against effe-abi 0.1.0 as released (the frozen copy in `../effe-abi-0.1.0`):
//! what an effe author compiled before effe-abi evolved. It answers, as JSON, the request it
//! received and the Context that ran it, so that a newer host can be checked to hand both over
//! intact.
//!
//! - `/panic` panics and `/error` returns an error: the host's firewall must hold for old effes.
//! - Anything else answers `?status=N` (default 200), with `x-compat: 0.1.0`.

use std::sync::atomic::{AtomicU64, Ordering};

use effe_abi::{Effe, Error, Request, ResponseWriter};
use serde_json::{json, Value};

struct Compat {
    /// Numbers the Contexts, so that a client sees which one served it (start, run, stop work).
    started: AtomicU64,
}

/// One worker: its number, in the order `start` made them (from 1).
struct Numbered {
    number: u64,
}

/// The `status=N` pair of the query, if there is one.
fn requested_status(req: &Request<'_>) -> Result<Option<u16>, Error> {
    let value = req.query().and_then(|query| {
        query
            .split('&')
            .find_map(|pair| pair.strip_prefix("status="))
    });
    Ok(value.map(str::parse).transpose()?)
}

impl Effe for Compat {
    type Context = Numbered;
    // Said out loud: a 0.1.0 effe that a host must call where blocking is harmless.
    const NONBLOCKING: bool = false;

    fn init() -> Result<Self, Error> {
        Ok(Compat {
            started: AtomicU64::new(0),
        })
    }

    fn start(&self) -> Result<Numbered, Error> {
        let number = self.started.fetch_add(1, Ordering::Relaxed) + 1;
        Ok(Numbered { number })
    }

    fn run(
        &self,
        ctx: &mut Numbered,
        req: &Request<'_>,
        resp: &mut ResponseWriter<'_>,
    ) -> Result<(), Error> {
        let number = ctx.number;
        match req.path() {
            "/panic" => panic!("compat effe panic in ctx {number}"),
            "/error" => return Err(Error::msg(format!("compat effe error in ctx {number}"))),
            _ => {}
        }
        if let Some(status) = requested_status(req)? {
            resp.status(status)?;
        }
        let headers: Vec<Value> = req
            .headers()
            .iter()
            .map(|h| json!([h.name(), String::from_utf8_lossy(h.value())]))
            .collect();
        let version: effe_abi::http::Version = req.version().into();
        let answer = json!({
            "method": req.method(),
            "path": req.path(),
            "query": req.query(),
            "version": format!("{version:?}"),
            "headers": headers,
            "body_len": req.body().len(),
            "peer_addr": req.peer_addr(),
            "request_id": req.request_id(),
            "ctx": number,
        });
        resp.header("x-compat", "0.1.0")?
            .header("content-type", "application/json")?;
        resp.body(serde_json::to_vec(&answer)?);
        Ok(())
    }
}

effe_abi::export_effe!(Compat);
