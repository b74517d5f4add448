//! TLS helpers: the committed test PKI (`tests/testdata/pki`, made by its `gen.sh`) and rustls
//! clients that verify against its root CA.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// A file of the test PKI.
pub fn pki(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/pki")
        .join(name)
}

/// The certificates in PEM file `name` of the test PKI.
pub fn certs(name: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(pki(name))
        .expect("read PEM")
        .collect::<Result<_, _>>()
        .expect("parse PEM")
}

/// A client that trusts the test root CA, offers `alpn`, and presents `client` (a name in the
/// PKI, e.g. `"client"` for client.pem + client.key) if given.
pub fn client(alpn: &[&str], client: Option<&str>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for c in certs("ca.pem") {
        roots.add(c).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some(name) => {
            let key = PrivateKeyDer::from_pem_file(pki(&format!("{name}.key"))).unwrap();
            builder
                .with_client_auth_cert(certs(&format!("{name}.pem")), key)
                .unwrap()
        }
    };
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Arc::new(config)
}

/// Connects and completes the handshake for server name `localhost`.
pub async fn connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    TlsConnector::from(config).connect(name, tcp).await
}

/// The protocol ALPN chose on `stream` (HTTP/1.1 when none).
pub fn negotiated(stream: &TlsStream<TcpStream>) -> crate::Proto {
    match stream.get_ref().1.alpn_protocol() {
        Some(b"h2") => crate::Proto::Http2,
        _ => crate::Proto::Http1,
    }
}

/// The leaf certificate the server presented.
pub fn served_leaf(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream
        .get_ref()
        .1
        .peer_certificates()
        .expect("server certificates")[0]
        .clone()
        .into_owned()
}
