//! TLS on both sides of the interception.
//!
//! - Towards the agent: the per-bottle CA (`ca.pem` + `ca-key.pem` next to
//!   the policy file, minted by `bottle up`) signs a leaf certificate for each
//!   host the agent reaches, minted on first use and cached. All leaves share
//!   one key generated at start (a leaf key protects nothing the CA key does
//!   not). Only HTTP/1.1 is offered (ALPN), so every request is parsed by the
//!   same code and checked the same way.
//! - Towards the origin: a rustls client that trusts the webpki roots plus the
//!   optional `upstream-roots.pem`, verifies certificates, and sends the host
//!   that was checked as SNI.
//!
//! The crypto provider is ring, passed explicitly to every config; the build
//! links nothing else.

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The bottle CA's certificate, next to the policy file.
pub const CA_CERT_FILE: &str = "ca.pem";
/// The bottle CA's private key (PKCS#8 PEM), next to the policy file.
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// Extra trust roots for upstream TLS (optional), next to the policy file.
pub const UPSTREAM_ROOTS_FILE: &str = "upstream-roots.pem";

/// A minted leaf is reused for this long, then minted again.
const LEAF_REUSE: Duration = Duration::from_secs(24 * 3600);
/// Leaves are valid from an hour ago (clock skew) for this long.
const LEAF_VALIDITY: time::Duration = time::Duration::days(7);
/// Most leaves cached; the cache is emptied when it is full.
const MAX_CACHED_LEAVES: usize = 1024;

/// The ALPN protocol both sides speak.
const HTTP11: &[u8] = b"http/1.1";
/// The ALPN name of HTTP/2.
pub const H2: &[u8] = b"h2";

/// Why TLS could not be set up at start.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot read the bottle CA {what} {path}: {source}; the sidecar does not start without it (no interception, no egress)")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the bottle CA key {path} is not a PEM private key the sidecar can sign with: {source}"
    )]
    Key {
        path: PathBuf,
        #[source]
        source: rcgen::Error,
    },
    #[error("the bottle CA certificate {path} is not a PEM certificate: {source}")]
    Cert {
        path: PathBuf,
        #[source]
        source: rcgen::Error,
    },
    #[error("the bottle CA certificate {path} does not belong to the key in {key_path}")]
    Mismatch { path: PathBuf, key_path: PathBuf },
    #[error("upstream trust roots {path}: {reason}")]
    Roots { path: PathBuf, reason: String },
    #[error("cannot generate the leaf certificate key: {0}")]
    LeafKey(#[source] rcgen::Error),
    #[error("cannot configure TLS: {0}")]
    Config(#[source] rustls::Error),
}

/// Why a leaf certificate could not be made for a host.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("cannot mint a certificate for {host}: {source}")]
    Mint {
        host: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("cannot use the certificate minted for {host}: {source}")]
    Config {
        host: String,
        #[source]
        source: rustls::Error,
    },
}

/// Everything TLS the sidecar needs, built once at start.
pub struct Tls {
    provider: Arc<CryptoProvider>,
    issuer: Issuer<'static, KeyPair>,
    leaf_key: KeyPair,
    leaf_key_der: Vec<u8>,
    leaves: Mutex<HashMap<String, (Instant, Arc<ServerConfig>)>>,
    /// HTTP/1.1 only: the git gate's relay and WebSocket upgrades.
    upstream: Arc<ClientConfig>,
    /// HTTP/2 preferred, HTTP/1.1 accepted: intercepted requests.
    upstream_h2: Arc<ClientConfig>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").finish_non_exhaustive()
    }
}

fn read(what: &'static str, path: &Path) -> Result<String, TlsSetupError> {
    std::fs::read_to_string(path).map_err(|source| TlsSetupError::Read {
        what,
        path: path.into(),
        source,
    })
}

impl Tls {
    /// Loads the CA from `dir` (the policy file's directory) and the optional
    /// upstream roots; refuses to build without a usable CA.
    pub fn load(dir: &Path) -> Result<Tls, TlsSetupError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let cert_pem = read("certificate", &cert_path)?;
        let key_pem = read("key", &key_path)?;
        let key = KeyPair::from_pem(&key_pem).map_err(|source| TlsSetupError::Key {
            path: key_path.clone(),
            source,
        })?;
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| {
            TlsSetupError::Cert {
                path: cert_path.clone(),
                source: rcgen::Error::PemError(e.to_string()),
            }
        })?;
        if !spki_matches(&cert_der, &key) {
            return Err(TlsSetupError::Mismatch {
                path: cert_path,
                key_path,
            });
        }
        let issuer =
            Issuer::from_ca_cert_der(&cert_der, key).map_err(|source| TlsSetupError::Cert {
                path: cert_path.clone(),
                source,
            })?;
        let roots_path = dir.join(UPSTREAM_ROOTS_FILE);
        let extra = match std::fs::read(&roots_path) {
            Ok(pem) => parse_roots(&roots_path, &pem)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                return Err(TlsSetupError::Roots {
                    path: roots_path,
                    reason: e.to_string(),
                })
            }
        };
        Tls::new(issuer, extra, &roots_path)
    }

    fn new(
        issuer: Issuer<'static, KeyPair>,
        extra_roots: Vec<CertificateDer<'static>>,
        roots_path: &Path,
    ) -> Result<Tls, TlsSetupError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        for cert in extra_roots {
            roots.add(cert).map_err(|e| TlsSetupError::Roots {
                path: roots_path.into(),
                reason: format!("a certificate is not a usable trust anchor: {e}"),
            })?;
        }
        let mut upstream = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(TlsSetupError::Config)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        upstream.alpn_protocols = vec![HTTP11.to_vec()];
        let mut upstream_h2 = upstream.clone();
        upstream_h2.alpn_protocols = vec![H2.to_vec(), HTTP11.to_vec()];
        let leaf_key = KeyPair::generate().map_err(TlsSetupError::LeafKey)?;
        let leaf_key_der = leaf_key.serialize_der();
        Ok(Tls {
            provider,
            issuer,
            leaf_key,
            leaf_key_der,
            leaves: Mutex::new(HashMap::new()),
            upstream: Arc::new(upstream),
            upstream_h2: Arc::new(upstream_h2),
        })
    }

    /// The server config presenting a leaf for `host` (a normalised name or an
    /// IP address), minted now or taken from the cache.
    pub fn server_config(&self, host: &str) -> Result<Arc<ServerConfig>, MintError> {
        let now = Instant::now();
        {
            let leaves = self.leaves.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((made, config)) = leaves.get(host) {
                if now.duration_since(*made) < LEAF_REUSE {
                    return Ok(config.clone());
                }
            }
        }
        let config = Arc::new(self.mint(host)?);
        let mut leaves = self.leaves.lock().unwrap_or_else(|p| p.into_inner());
        if leaves.len() >= MAX_CACHED_LEAVES {
            leaves.clear();
        }
        leaves.insert(host.to_string(), (now, config.clone()));
        Ok(config)
    }

    fn mint(&self, host: &str) -> Result<ServerConfig, MintError> {
        let mint_err = |source| MintError::Mint {
            host: host.into(),
            source,
        };
        let mut params = CertificateParams::new(vec![host.to_string()]).map_err(mint_err)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, host);
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + LEAF_VALIDITY;
        let cert = params
            .signed_by(&self.leaf_key, &self.issuer)
            .map_err(mint_err)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.leaf_key_der.clone()));
        let config_err = |source| MintError::Config {
            host: host.into(),
            source,
        };
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(config_err)?
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], key)
            .map_err(config_err)?;
        // The agent may choose HTTP/2 or HTTP/1.1, independently of what the
        // upstream later negotiates with the sidecar.
        config.alpn_protocols = vec![H2.to_vec(), HTTP11.to_vec()];
        Ok(config)
    }

    /// The upstream client config (verification on, ring, webpki roots plus
    /// `upstream-roots.pem`): the git gate's relay uses it too.
    pub fn upstream_config(&self) -> Arc<ClientConfig> {
        self.upstream.clone()
    }

    /// A connector for upstream TLS (verification on) offering HTTP/1.1
    /// only (WebSocket upgrades).
    pub fn connector(&self) -> tokio_rustls::TlsConnector {
        tokio_rustls::TlsConnector::from(self.upstream.clone())
    }

    /// A connector for upstream TLS (verification on) offering HTTP/2 and
    /// HTTP/1.1; the stream's negotiated ALPN says which one to speak.
    pub fn connector_h2(&self) -> tokio_rustls::TlsConnector {
        tokio_rustls::TlsConnector::from(self.upstream_h2.clone())
    }
}

/// The SNI / verification name for `host` (a normalised name or IP address).
pub fn server_name(host: &str) -> Option<ServerName<'static>> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Some(ServerName::IpAddress(ip.into()));
    }
    ServerName::try_from(host.to_string()).ok()
}

fn parse_roots(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsSetupError::Roots {
            path: path.into(),
            reason: format!("not a PEM certificate list: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsSetupError::Roots {
            path: path.into(),
            reason: "the file holds no certificate".into(),
        });
    }
    Ok(certs)
}

/// Does `cert` carry `key`'s public key? Checked so a CA certificate and key
/// from two different mints fail at start, not at the first handshake.
fn spki_matches(cert: &CertificateDer<'_>, key: &KeyPair) -> bool {
    let raw = key.public_key_raw();
    !raw.is_empty() && cert.as_ref().windows(raw.len()).any(|w| w == raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes a fresh CA (as the CLI mints it) into a temp dir, removed
    /// when the returned guard is dropped.
    fn ca_dir(name: &str) -> tempfile::TempDir {
        let guard = tempfile::Builder::new()
            .prefix(&format!("bottle-tls-{name}-"))
            .tempdir()
            .unwrap();
        let dir = guard.path();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "bottle test egress CA");
        params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.join(CA_CERT_FILE), cert.pem()).unwrap();
        std::fs::write(dir.join(CA_KEY_FILE), key.serialize_pem()).unwrap();
        guard
    }

    #[test]
    fn mints_and_caches_leaves_for_names_and_addresses() {
        let tls = Tls::load(ca_dir("mint").path()).unwrap();
        let a = tls.server_config("api.example.com").unwrap();
        let b = tls.server_config("api.example.com").unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        tls.server_config("127.0.0.1").unwrap();
        tls.server_config("fd00::1").unwrap();
        assert_eq!(a.alpn_protocols, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
    }

    #[test]
    fn refuses_to_start_without_a_matching_ca() {
        let guard = ca_dir("missing");
        let dir = guard.path();
        std::fs::remove_file(dir.join(CA_KEY_FILE)).unwrap();
        let err = Tls::load(dir).unwrap_err();
        assert!(
            err.to_string().contains("cannot read the bottle CA key"),
            "{err}"
        );
        let other = ca_dir("other");
        std::fs::copy(other.path().join(CA_KEY_FILE), dir.join(CA_KEY_FILE)).unwrap();
        let mine = ca_dir("mine");
        std::fs::copy(mine.path().join(CA_CERT_FILE), dir.join(CA_CERT_FILE)).unwrap();
        let err = Tls::load(dir).unwrap_err();
        assert!(matches!(err, TlsSetupError::Mismatch { .. }), "{err}");
    }

    #[test]
    fn bad_upstream_roots_are_refused() {
        let guard = ca_dir("roots");
        let dir = guard.path();
        std::fs::write(dir.join(UPSTREAM_ROOTS_FILE), "not pem").unwrap();
        let err = Tls::load(dir).unwrap_err();
        assert!(matches!(err, TlsSetupError::Roots { .. }), "{err}");
    }

    #[test]
    fn server_names_for_names_and_ips() {
        assert!(matches!(
            server_name("10.0.0.1"),
            Some(ServerName::IpAddress(_))
        ));
        assert!(matches!(
            server_name("api.example.com"),
            Some(ServerName::DnsName(_))
        ));
    }
}
