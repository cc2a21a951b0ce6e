//! HTTPS: `[server] tls_cert` and `tls_key` (PEM) make the host serve TLS only, through
//! rustls, with HTTP/1.1 over it. The handshake counts against the header timeout, so a client
//! that opens a connection and stalls is closed as a silent plain one would be. [`Certificates`]
//! are read again on a reload, so a renewed certificate is served without a restart.

use std::sync::{Arc, PoisonError, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::{ServerConfig, ServerConfigError};

/// The acceptor of `config`'s certificate and key, or `None` when it serves plain HTTP.
pub(crate) fn acceptor(config: &ServerConfig) -> Result<Option<TlsAcceptor>, ServerConfigError> {
    let (cert, key) = match (&config.tls_cert, &config.tls_key) {
        (None, None) => return Ok(None),
        (Some(cert), Some(key)) => (cert, key),
        (Some(_), None) => return Err(tls("tls_key", "tls_cert is set without it".into())),
        (None, Some(_)) => return Err(tls("tls_cert", "tls_key is set without it".into())),
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| tls("tls_cert", format!("{}: {e}", cert.display())))?;
    if chain.is_empty() {
        return Err(tls(
            "tls_cert",
            format!("{}: no certificate in it", cert.display()),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        tls(
            "tls_key",
            format!(
                "{}: {e} (expected an unencrypted PKCS#8, PKCS#1 or SEC1 PEM key)",
                key.display()
            ),
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls("tls_cert", e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| {
            tls(
                "tls_key",
                format!("cannot serve this key with the certificate chain of tls_cert: {e}"),
            )
        })?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(server))))
}

fn tls(field: &'static str, message: String) -> ServerConfigError {
    ServerConfigError::Tls { field, message }
}

/// The certificate a host serves now: connections accepted after a [`Certificates::apply`] get
/// the new one. Cheap to clone.
#[derive(Clone, Default)]
pub struct Certificates(Arc<RwLock<Option<TlsAcceptor>>>);

impl Certificates {
    /// Reads `config`'s certificate and key again, to serve with [`Certificates::apply`]. A
    /// host started with plain HTTP stays plain (`None`), and one serving HTTPS cannot turn
    /// plain without a restart.
    pub fn prepare(&self, config: &ServerConfig) -> Result<Option<Renewed>, ServerConfigError> {
        if self.current().is_none() {
            return Ok(None);
        }
        match acceptor(config)? {
            Some(acceptor) => Ok(Some(Renewed(acceptor))),
            None => Err(tls(
                "tls_cert",
                "a host serving HTTPS cannot turn to plain HTTP without a restart".into(),
            )),
        }
    }

    /// Serves `renewed` to new connections from now on.
    pub fn apply(&self, renewed: Renewed) {
        self.set(Some(renewed.0));
    }

    /// Serves `acceptor` from now on.
    pub(crate) fn set(&self, acceptor: Option<TlsAcceptor>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = acceptor;
    }

    /// The acceptor of new connections, if the host serves HTTPS.
    pub(crate) fn current(&self) -> Option<TlsAcceptor> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// A certificate read again, ready to serve (see [`Certificates::prepare`]).
pub struct Renewed(TlsAcceptor);
