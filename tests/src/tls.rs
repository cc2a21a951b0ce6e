//! Certificates made in the test: a private CA, and a certificate it signs for `localhost` and
//! `127.0.0.1`, written as PEM files.

use std::path::PathBuf;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// A CA and a server certificate it signed, in a temporary directory.
pub struct TestCerts {
    _dir: tempfile::TempDir,
    /// The CA's certificate (what a client trusts).
    pub ca: PathBuf,
    /// The server's certificate.
    pub cert: PathBuf,
    /// The server's private key.
    pub key: PathBuf,
}

impl TestCerts {
    /// A fresh CA and server certificate.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("a directory: {e}"));
        let made =
            |what: &str, error: rcgen::Error| -> ! { panic!("cannot make the {what}: {error}") };
        let ca_key = KeyPair::generate().unwrap_or_else(|e| made("CA key", e));
        let mut ca_params = CertificateParams::new(Vec::new()).unwrap_or_else(|e| made("CA", e));
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "opshost test CA");
        let ca = ca_params
            .self_signed(&ca_key)
            .unwrap_or_else(|e| made("CA", e));
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().unwrap_or_else(|e| made("server key", e));
        let params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap_or_else(|e| made("server certificate", e));
        let cert = params
            .signed_by(&key, &issuer)
            .unwrap_or_else(|e| made("server certificate", e));
        let write = |name: &str, pem: String| {
            let path = dir.path().join(name);
            std::fs::write(&path, pem).unwrap_or_else(|e| panic!("cannot write {name}: {e}"));
            path
        };
        Self {
            ca: write("ca.pem", ca.pem()),
            cert: write("server.pem", cert.pem()),
            key: write("server-key.pem", key.serialize_pem()),
            _dir: dir,
        }
    }
}

impl Default for TestCerts {
    fn default() -> Self {
        Self::new()
    }
}
