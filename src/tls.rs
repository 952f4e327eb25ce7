//! TLS for every listener (`--tls-cert`, `--tls-key`), with rustls and its `ring` provider.
//!
//! The certificate chain and key are PEM files. They sit behind a [`CertStore`] that rustls
//! asks for the certificate at each handshake, so [`CertStore::reload`] (on SIGHUP) swaps
//! them for new connections while open connections keep the session they negotiated. A
//! reload that fails (a half-written file, a key that does not match) keeps the old pair.
//!
//! The files are read only if they are regular files (opened with `O_NONBLOCK`, so a FIFO
//! or a device put in their place cannot block the open), at most [`MAX_PEM_BYTES`] each,
//! and a reload runs on a thread of its own that the caller waits for at most
//! [`RELOAD_TIMEOUT`] ([`CertStore::reload_within`]): a file on a hung network mount cannot
//! stall the signal thread, which must stay free to act on SIGTERM.
//!
//! The lock is taken once per handshake, never per request; without TLS none of this exists.

use std::fmt;
use std::fs::OpenOptions;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

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

/// Largest certificate chain or key file read; a real one is a few KiB.
pub const MAX_PEM_BYTES: u64 = 1 << 20;

/// How long a SIGHUP reload may take before the server gives up on it and keeps the pair it
/// has.
pub const RELOAD_TIMEOUT: Duration = Duration::from_secs(5);

/// The server's certificate and key, reloadable.
pub struct CertStore {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    /// A reload thread is running (perhaps stuck in a read that outlived its deadline): a new
    /// reload is refused rather than piling up threads.
    reloading: AtomicBool,
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
        Ok(CertStore {
            cert_path: cert_path.to_path_buf(),
            key_path: key_path.to_path_buf(),
            current,
            reloading: AtomicBool::new(false),
        })
    }

    /// Reads the files again and uses them for the next handshakes.
    pub fn reload(&self) -> Result<(), String> {
        let pair = load_pair(&self.cert_path, &self.key_path)?;
        *self.current.write() = pair;
        Ok(())
    }

    /// [`CertStore::reload`] on a thread of its own, waiting for it at most `timeout`. A
    /// reload still running after that keeps running (nothing can interrupt a blocked read)
    /// but the caller is free, and the pair changes only if that reload succeeds later.
    pub fn reload_within(self: &Arc<Self>, timeout: Duration) -> Result<(), String> {
        if self.reloading.swap(true, Ordering::SeqCst) {
            return Err("the previous reload is still reading the files".into());
        }
        let (done_tx, done_rx) = mpsc::channel();
        let store = Arc::clone(self);
        std::thread::Builder::new()
            .name("tls-reload".into())
            .spawn(move || {
                let result = store.reload();
                store.reloading.store(false, Ordering::SeqCst);
                let _ = done_tx.send(result);
            })
            .map_err(|e| {
                self.reloading.store(false, Ordering::SeqCst);
                format!("cannot start the reload: {e}")
            })?;
        done_rx.recv_timeout(timeout).unwrap_or_else(|_| {
            Err(format!(
                "reading {} and {} took more than {} s; gave up waiting",
                self.cert_path.display(),
                self.key_path.display(),
                timeout.as_secs()
            ))
        })
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.current.read()))
    }
}

/// The bytes of `path`, which must be a regular file of at most [`MAX_PEM_BYTES`]. Opened
/// non-blocking so that a FIFO in its place fails the check instead of waiting for a writer.
pub(crate) fn read_regular_file(path: &Path) -> Result<Vec<u8>, String> {
    let fail = |e: &dyn fmt::Display| format!("cannot read {}: {e}", path.display());
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| fail(&e))?;
    let metadata = file.metadata().map_err(|e| fail(&e))?;
    if !metadata.is_file() {
        return Err(fail(&"not a regular file"));
    }
    if metadata.len() > MAX_PEM_BYTES {
        return Err(fail(&format_args!("larger than {MAX_PEM_BYTES} bytes")));
    }
    let mut bytes = Vec::with_capacity(metadata.len() as usize);
    file.take(MAX_PEM_BYTES).read_to_end(&mut bytes).map_err(|e| fail(&e))?;
    Ok(bytes)
}

/// Every PEM certificate in `path`.
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    CertificateDer::pem_slice_iter(&read_regular_file(path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("cannot read a certificate from {}: {e}", path.display()))
}

fn load_pair(cert_path: &Path, key_path: &Path) -> Result<Arc<CertifiedKey>, String> {
    let certs = read_certs(cert_path)?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", cert_path.display()));
    }
    let key = PrivateKeyDer::from_pem_slice(&read_regular_file(key_path)?)
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
