//! HTTPS: a rustls server configuration built from PEM files, the certificate swapped in place
//! on SIGHUP, and optional client-certificate verification (mutual TLS), whose client the effe
//! is told of.
//!
//! Policy: TLS 1.2 and 1.3 only, forward-secret AEAD suites only (rustls offers nothing else,
//! and the list is spelled out below), the server's suite order wins, ALPN `h2` then
//! `http/1.1`. A certificate and key are accepted only if the key provably matches the leaf
//! certificate: rustls' own `with_single_cert` lets an undecidable pair through.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::crypto::{ring, CryptoProvider};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::error::{Fatal, TlsFailure};

mod client;
pub use client::ClientCert;

/// The PEM files and limits of the HTTPS listener.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
    pub handshake_timeout: Duration,
}

/// The listener's TLS state, shared by every connection task.
pub struct Tls {
    acceptor: TlsAcceptor,
    current: Arc<CurrentCert>,
    config: TlsConfig,
    provider: Arc<CryptoProvider>,
}

/// The certificate new handshakes get. Open connections keep the one they negotiated.
struct CurrentCert(RwLock<Arc<CertifiedKey>>);

impl fmt::Debug for CurrentCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CurrentCert")
    }
}

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

fn fail(path: &Path, kind: TlsFailure, reason: impl fmt::Display) -> Fatal {
    Fatal::Tls {
        path: path.to_owned(),
        kind,
        reason: reason.to_string(),
    }
}

fn pem_error(path: &Path, missing: TlsFailure, what: &str, err: pem::Error) -> Fatal {
    match err {
        pem::Error::Io(e) => fail(path, TlsFailure::Unreadable, e),
        pem::Error::NoItemsFound => fail(path, missing, format!("no {what} in this PEM file")),
        other => fail(path, missing, format!("malformed PEM: {other}")),
    }
}

fn provider() -> CryptoProvider {
    use rustls::crypto::ring::cipher_suite::*;
    CryptoProvider {
        // Server preference order: AES-GCM first (hardware accelerated), then ChaCha20.
        cipher_suites: vec![
            TLS13_AES_128_GCM_SHA256,
            TLS13_AES_256_GCM_SHA384,
            TLS13_CHACHA20_POLY1305_SHA256,
            TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        ],
        ..ring::default_provider()
    }
}

/// Reads a certificate chain and its key, and checks that they belong together.
fn load_pair(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, Fatal> {
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| pem_error(cert, TlsFailure::NoCertificate, "certificate", e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(cert, TlsFailure::NoCertificate, "certificate", e))?;
    if chain.is_empty() {
        return Err(fail(
            cert,
            TlsFailure::NoCertificate,
            "no certificate in this PEM file",
        ));
    }
    let der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| pem_error(key, TlsFailure::NoKey, "private key", e))?;
    let signing_key = provider
        .key_provider
        .load_private_key(der)
        .map_err(|e| fail(key, TlsFailure::NoKey, format!("unusable private key: {e}")))?;
    let pair = CertifiedKey::new(chain, signing_key);
    pair.keys_match().map_err(|e| {
        let why = match e {
            rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                "does not match"
            }
            _ => "cannot be checked against",
        };
        fail(
            key,
            TlsFailure::KeyMismatch,
            format!(
                "the private key {why} the certificate in {}",
                cert.display()
            ),
        )
    })?;
    Ok(Arc::new(pair))
}

fn client_roots(path: &Path) -> Result<RootCertStore, Fatal> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(path, TlsFailure::NoCertificate, "certificate", e))?
    {
        let cert =
            cert.map_err(|e| pem_error(path, TlsFailure::NoCertificate, "certificate", e))?;
        roots.add(cert).map_err(|e| {
            fail(
                path,
                TlsFailure::BadClientCa,
                format!("unusable CA certificate: {e}"),
            )
        })?;
    }
    if roots.is_empty() {
        return Err(fail(
            path,
            TlsFailure::NoCertificate,
            "no certificate in this PEM file",
        ));
    }
    Ok(roots)
}

impl Tls {
    /// Loads and checks every file; nothing is served until this succeeds.
    pub fn new(config: TlsConfig) -> Result<Tls, Fatal> {
        let provider = Arc::new(provider());
        let pair = load_pair(&config.cert, &config.key, &provider)?;
        let current = Arc::new(CurrentCert(RwLock::new(pair)));
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| fail(&config.cert, TlsFailure::BadClientCa, e))?;
        let builder = match &config.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let verifier = WebPkiClientVerifier::builder_with_provider(
                    Arc::new(client_roots(ca)?),
                    provider.clone(),
                )
                .build()
                .map_err(|e| fail(ca, TlsFailure::BadClientCa, e))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut server = builder.with_cert_resolver(current.clone());
        server.ignore_client_order = true;
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            current,
            config,
            provider,
        })
    }

    /// Re-reads the certificate and key; on success new handshakes use them. On failure the
    /// current pair stays in use and the error is returned.
    pub fn reload(&self) -> Result<(), String> {
        let pair = load_pair(&self.config.cert, &self.config.key, &self.provider)
            .map_err(|e| e.to_string())?;
        *self.current.0.write().unwrap_or_else(|e| e.into_inner()) = pair;
        Ok(())
    }

    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    pub fn handshake_timeout(&self) -> Duration {
        self.config.handshake_timeout
    }

    pub fn describe(&self) -> String {
        format!(
            "cert={} client_auth={}",
            self.config.cert.display(),
            self.config.client_ca.is_some()
        )
    }
}
