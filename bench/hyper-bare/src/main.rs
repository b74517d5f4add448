//! hyper-bare: the benchmark baseline. A bare hyper 1.x server that answers every request
//! `200 Hello from effe` (`content-type: text/plain`), exactly what effe-host serving the hello
//! effe sends, with none of effe-host's work in between (no body collection, no Context pool, no
//! ABI call): the same connection handling (one task per connection, `TCP_NODELAY`,
//! hyper-util's auto builder for HTTP/1.1 and cleartext HTTP/2 with prior knowledge, the same
//! HTTP/1.1 header-read timeout).
//!
//! By default it runs on tokio's multi-thread runtime, the baseline as the issue defines it.
//! With `--current-thread` it runs on one current-thread runtime instead, the architecture of
//! effe-host (one current-thread runtime per network thread; one under `taskset -c 0`): against
//! it the benchmark shows what the effe layer costs, apart from the choice of runtime.
//!
//! With `--tls-cert` and `--tls-key` it serves HTTPS instead (rustls with the ring provider,
//! ALPN `h2` and `http/1.1`), choosing HTTP/2 or HTTP/1.1 from the negotiated ALPN protocol.
//!
//! When it accepts, it prints `listening addr=IP:PORT scheme=http|https
//! runtime=multi-thread|current-thread` on stderr.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http::{header, HeaderValue, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

const BODY: &[u8] = b"Hello from effe";

/// How long an HTTP/1.1 connection may take to send a request's headers (as effe-host).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A bare hyper hello server: the baseline effe-host is benchmarked against.
#[derive(Parser, Debug)]
#[command(name = "hyper-bare", version, about, max_term_width = 100)]
struct Args {
    /// Address to listen on (port 0 picks a free port; the chosen one is printed).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8090")]
    listen: SocketAddr,

    /// Serve HTTPS with this certificate chain (PEM); needs `--tls-key`.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,

    /// The private key (PEM) of `--tls-cert`.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// Run on one tokio current-thread runtime (effe-host's architecture) instead of the
    /// multi-thread one.
    #[arg(long)]
    current_thread: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => match tls_acceptor(cert, key) {
            Ok(acceptor) => Some(acceptor),
            Err(e) => {
                eprintln!("hyper-bare: {e}");
                return ExitCode::from(2);
            }
        },
        _ => None,
    };
    let (mut builder, flavour) = if args.current_thread {
        (
            tokio::runtime::Builder::new_current_thread(),
            "current-thread",
        )
    } else {
        (tokio::runtime::Builder::new_multi_thread(), "multi-thread")
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hyper-bare: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args.listen, tls, flavour)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hyper-bare: {e}");
            ExitCode::FAILURE
        }
    }
}

fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, String> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate found", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS configuration: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("TLS certificate or key: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

async fn hello(_req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut resp = Response::new(Full::new(Bytes::from_static(BODY)));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Ok(resp)
}

async fn serve(
    listen: SocketAddr,
    tls: Option<TlsAcceptor>,
    flavour: &'static str,
) -> Result<(), String> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    eprintln!("hyper-bare: listening addr={addr} scheme={scheme} runtime={flavour}");

    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let builder = Arc::new(builder);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                eprintln!("hyper-bare: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        match &tls {
            None => {
                let builder = builder.clone();
                tokio::spawn(async move {
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service_fn(hello))
                        .await;
                });
            }
            Some(acceptor) => {
                tokio::spawn(serve_tls(acceptor.clone(), stream));
            }
        }
    }
}

/// One HTTPS connection: the handshake, then HTTP/2 or HTTP/1.1 as ALPN chose (hyper-util's
/// auto builder would sniff the preface instead and ignore ALPN).
async fn serve_tls(acceptor: TlsAcceptor, stream: TcpStream) {
    let Ok(tls) = acceptor.accept(stream).await else {
        return;
    };
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let io = TokioIo::new(tls);
    if h2 {
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .serve_connection(io, service_fn(hello))
            .await;
    } else {
        let _ = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .serve_connection(io, service_fn(hello))
            .await;
    }
}
