//! An effe that calls an upstream HTTPS service and answers what it answered.
//!
//! - `FETCH_URL` (read in Init, required): the upstream, `https://…` (or `http://…`).
//! - `FETCH_TIMEOUT_MS` (default 10000): bound on one upstream call.
//! - Trust: the system CA bundle (`/etc/ssl/certs`), or the file named by `SSL_CERT_FILE` (and
//!   directory `SSL_CERT_DIR`) when set, which replace it as they do for OpenSSL. This is why
//!   the container image carries CA certificates.
//!
//! Each Context owns one HTTPS client (connection pool, TLS sessions) and the small runtime that
//! drives it: made in Start, dropped in Stop. Run blocks on the upstream call, which is fine:
//! the effe does not declare itself NONBLOCKING, so the host runs it off its network threads.
//! Any failure to reach the upstream answers 502 with the reason.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use effe_abi::{Effe, Error, Request, ResponseWriter};
use http_body_util::{BodyExt, Empty};
use hyper::Uri;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::ClientConfig;

struct Fetch {
    url: Uri,
    timeout: Duration,
    tls: Arc<ClientConfig>,
}

struct Upstream {
    runtime: tokio::runtime::Runtime,
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
}

fn trust_roots() -> Result<rustls::RootCertStore, Error> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .first()
            .map_or("no CA certificates found".to_owned(), |e| e.to_string());
        return Err(Error::msg(format!(
            "no trusted CA certificates (install ca-certificates or set SSL_CERT_FILE): {why}"
        )));
    }
    Ok(roots)
}

impl Effe for Fetch {
    type Context = Upstream;

    fn init() -> Result<Self, Error> {
        let url: Uri = std::env::var("FETCH_URL")
            .map_err(|_| Error::msg("FETCH_URL is not set"))?
            .parse()?;
        if !matches!(url.scheme_str(), Some("https" | "http")) {
            return Err(Error::msg(format!(
                "FETCH_URL {url}: expected an https:// URL"
            )));
        }
        let timeout = match std::env::var("FETCH_TIMEOUT_MS") {
            Ok(ms) => Duration::from_millis(ms.parse()?),
            Err(_) => Duration::from_secs(10),
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(trust_roots()?)
            .with_no_client_auth();
        Ok(Fetch {
            url,
            timeout,
            tls: Arc::new(tls),
        })
    }

    fn start(&self) -> Result<Upstream, Error> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config((*self.tls).clone())
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .build();
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(Upstream { runtime, client })
    }

    fn run(
        &self,
        up: &mut Upstream,
        _: &Request<'_>,
        resp: &mut ResponseWriter<'_>,
    ) -> Result<(), Error> {
        let call = async {
            let reply = up.client.get(self.url.clone()).await?;
            let (parts, body) = reply.into_parts();
            let body = body.collect().await?.to_bytes();
            Ok::<_, Error>((parts, body))
        };
        let outcome = up
            .runtime
            .block_on(async { tokio::time::timeout(self.timeout, call).await });
        match outcome {
            Ok(Ok((parts, body))) => {
                resp.status(parts.status.as_u16())?;
                if let Some(ct) = parts.headers.get("content-type") {
                    resp.header("content-type", ct.as_bytes())?;
                }
                resp.body(body);
            }
            Ok(Err(e)) => {
                resp.status(502)?.header("content-type", "text/plain")?;
                resp.body(format!("upstream {}: {e}\n", self.url));
            }
            Err(_) => {
                resp.status(502)?.header("content-type", "text/plain")?;
                resp.body(format!(
                    "upstream {}: timed out after {:?}\n",
                    self.url, self.timeout
                ));
            }
        }
        Ok(())
    }
}

effe_abi::export_effe!(Fetch);

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpListener;

    use effe_abi::http;
    use effe_abi::testing::TestHost;

    use super::*;

    /// An upstream on 127.0.0.1 that answers one request with `reply`, then closes.
    fn upstream(reply: &'static str) -> Uri {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            if let Ok((mut conn, _)) = listener.accept() {
                let mut head = [0u8; 4096];
                let _ = conn.read(&mut head);
                let _ = conn.write_all(reply.as_bytes());
            }
        });
        url.parse().unwrap()
    }

    fn fetch(url: Uri) -> Fetch {
        Fetch {
            url,
            timeout: Duration::from_secs(5),
            tls: Arc::new(
                ClientConfig::builder_with_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
            ),
        }
    }

    #[test]
    fn answers_what_the_upstream_answered() -> Result<(), effe_abi::Error> {
        let url = upstream(
            "HTTP/1.1 201 Created\r\ncontent-type: text/x-up\r\ncontent-length: 2\r\n\
             connection: close\r\n\r\nup",
        );
        let mut host = TestHost::with(fetch(url));
        let resp = host.call(http::Request::get("/").body("")?);
        assert_eq!(resp.status(), 201);
        assert_eq!(resp.headers()["content-type"], "text/x-up");
        assert_eq!(resp.body(), b"up");
        assert_eq!(host.finish()?.stops, 1);
        Ok(())
    }

    #[test]
    fn an_unreachable_upstream_is_502() -> Result<(), effe_abi::Error> {
        // A port that was free a moment ago: refused.
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut host = TestHost::with(fetch(format!("http://127.0.0.1:{port}/").parse()?));
        let resp = host.call(http::Request::get("/").body("")?);
        assert_eq!(resp.status(), 502);
        assert!(String::from_utf8_lossy(resp.body()).starts_with("upstream http://127.0.0.1"));
        Ok(())
    }
}
