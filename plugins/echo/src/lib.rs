//! Answers, as JSON, the request it received, so that tests (and people) can see that a request
//! crosses the ABI intact. Header values and the body are given as UTF-8 text when they are,
//! and always as hex, so binary data is checkable byte for byte.

use effe_abi::{Effe, Error, Request, ResponseWriter};
use serde_json::{json, Value};

struct Echo;

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn bytes_json(bytes: &[u8]) -> (Value, String) {
    let text = std::str::from_utf8(bytes).map_or(Value::Null, Value::from);
    (text, hex(bytes))
}

impl Effe for Echo {
    type Context = ();
    const NONBLOCKING: bool = true;

    fn init() -> Result<Self, Error> {
        Ok(Echo)
    }

    fn start(&self) -> Result<(), Error> {
        Ok(())
    }

    fn run(
        &self,
        _: &mut (),
        req: &Request<'_>,
        resp: &mut ResponseWriter<'_>,
    ) -> Result<(), Error> {
        let headers: Vec<Value> = req
            .headers()
            .iter()
            .map(|h| {
                let (text, hex) = bytes_json(h.value());
                json!({ "name": h.name(), "value": text, "value_hex": hex })
            })
            .collect();
        let (body, body_hex) = bytes_json(req.body());
        let answer = json!({
            "method": req.method(),
            "path": req.path(),
            "query": req.query(),
            "version": format!("{:?}", http_version(req)),
            "headers": headers,
            "body": body,
            "body_hex": body_hex,
            "body_len": req.body().len(),
            "peer_addr": req.peer_addr(),
            "request_id": req.request_id(),
        });
        resp.header("content-type", "application/json")?;
        resp.body(serde_json::to_vec(&answer)?);
        Ok(())
    }
}

fn http_version(req: &Request<'_>) -> effe_abi::http::Version {
    req.version().into()
}

effe_abi::export_effe!(Echo);

#[cfg(test)]
mod tests {
    use effe_abi::http;
    use effe_abi::testing::TestHost;

    #[test]
    fn answers_the_request_it_received() -> Result<(), effe_abi::Error> {
        let mut host = TestHost::<super::Echo>::new()?;
        let req = http::Request::post("/p?q=1")
            .header("x-a", "1")
            .header("x-a", &b"\xff"[..])
            .header("x-request-id", "echo-1")
            .body(&b"\x00body"[..])?;
        let resp = host.call(req);
        assert_eq!(resp.status(), 200);
        let echoed: serde_json::Value = serde_json::from_slice(resp.body())?;
        assert_eq!(echoed["method"], "POST");
        assert_eq!(
            (echoed["path"].as_str(), echoed["query"].as_str()),
            (Some("/p"), Some("q=1"))
        );
        assert_eq!(echoed["body_hex"], "00626f6479");
        assert_eq!(echoed["request_id"], "echo-1");
        let a: Vec<_> = echoed["headers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|h| h["name"] == "x-a")
            .map(|h| h["value_hex"].as_str().unwrap())
            .collect();
        assert_eq!(a, ["31", "ff"]);
        assert_eq!(host.finish()?.stops, 1);
        Ok(())
    }
}
