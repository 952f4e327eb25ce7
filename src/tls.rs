//! TLS for every listener (`--tls-cert`, `--tls-key`), with rustls and its `ring` provider.
//!
//! The certificate chain and key are PEM files. They sit behind a [`CertStore`] that rustls
//! asks for the certificate at each handshake, so [`CertStore::reload`] (on SIGHUP) swaps
//! them for new connections while open connections keep the session they negotiated. A
//! reload that fails (a half-written file, a key that does not match) keeps the old pair.
//!
//! The lock is taken once per handshake, never per request; without TLS none of this exists.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The crypto provider textkv uses everywhere (ring: builds with a C compiler alone).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server's certificate and key, reloadable.
pub struct CertStore {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore").field("cert", &self.cert_path).field("key", &self.key_path).finish()
    }
}

impl CertStore {
    /// Loads the pair; an error says which file and why.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<CertStore, String> {
        let current = RwLock::new(load_pair(cert_path, key_path)?);
        Ok(CertStore { cert_path: cert_path.to_path_buf(), key_path: key_path.to_path_buf(), current })
    }

    /// Reads the files again and uses them for the next handshakes.
    pub fn reload(&self) -> Result<(), String> {
        let pair = load_pair(&self.cert_path, &self.key_path)?;
        *self.current.write() = pair;
        Ok(())
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.current.read()))
    }
}

/// Every PEM certificate in `path`.
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read a certificate from {}: {e}", path.display()))
}

fn load_pair(cert_path: &Path, key_path: &Path) -> Result<Arc<CertifiedKey>, String> {
    let certs = read_certs(cert_path)?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", cert_path.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key_path)
        .map_err(|e| format!("cannot read a private key from {}: {e}", key_path.display()))?;
    let pair = CertifiedKey::from_der(certs, key, &provider()).map_err(|e| {
        format!("{} and {} do not make a usable pair: {e}", cert_path.display(), key_path.display())
    })?;
    Ok(Arc::new(pair))
}

/// The rustls server configuration: TLS 1.2 and 1.3 with rustls's safe defaults, no client
/// certificates (clients log in with `--users` instead), certificates from `certs`.
pub fn server_config(certs: Arc<CertStore>) -> Result<Arc<rustls::ServerConfig>, String> {
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    Ok(Arc::new(config))
}

/// Where the system's CA bundle usually is (Debian/Ubuntu, Fedora/RHEL, Alpine/macOS), for
/// `kvclient --tls` without `--ca`; `SSL_CERT_FILE` comes first, as in OpenSSL.
const SYSTEM_CA_BUNDLES: &[&str] =
    &["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem"];

/// A client configuration trusting the certificates in the PEM file `ca` (a private CA or a
/// self-signed server certificate), or else the system's CA bundle.
pub fn client_config(ca: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    let system = || {
        let from_env = std::env::var_os("SSL_CERT_FILE").map(PathBuf::from);
        from_env.into_iter().chain(SYSTEM_CA_BUNDLES.iter().map(PathBuf::from)).find(|path| path.is_file())
    };
    let ca = match ca {
        Some(ca) => ca.to_path_buf(),
        None => system().ok_or("no system CA bundle found; pass --ca <file>")?,
    };
    let mut roots = rustls::RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(read_certs(&ca)?);
    if added == 0 {
        return Err(format!("{} holds no usable CA certificate", ca.display()));
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
