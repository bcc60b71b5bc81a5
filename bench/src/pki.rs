//! Certificates for one run, minted fresh with rcgen: the origin's test CA and
//! its leaf (IP SAN 127.0.0.1), and a bottle CA for the sidecar. Nothing here
//! outlives the run's scratch directory.

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::RootCertStore;
use std::path::Path;

/// A self-signed CA (ECDSA P-256) that can sign leaves.
pub struct Ca {
    params: CertificateParams,
    key: KeyPair,
    cert_pem: String,
    cert_der: CertificateDer<'static>,
}

impl Ca {
    pub fn new(common_name: &str) -> anyhow::Result<Ca> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().context("generating a CA key")?;
        let cert = params.self_signed(&key).context("self-signing a CA")?;
        Ok(Ca {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            params,
            key,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The private key as PKCS#8 PEM (what the sidecar reads as `ca-key.pem`).
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// A store that trusts exactly this CA.
    pub fn roots(&self) -> anyhow::Result<RootCertStore> {
        let mut roots = RootCertStore::empty();
        roots.add(self.cert_der.clone())?;
        Ok(roots)
    }

    /// A server leaf for `san` (a DNS name or an IP literal), with its key.
    pub fn leaf(
        &self,
        san: &str,
    ) -> anyhow::Result<(CertificateDer<'static>, PrivateKeyDer<'static>)> {
        let mut params = CertificateParams::new(vec![san.to_string()])?;
        params.distinguished_name.push(DnType::CommonName, san);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().context("generating a leaf key")?;
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).context("signing a leaf")?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((cert.der().clone(), key))
    }
}

/// A store that trusts the certificates in a PEM file (mitmproxy's CA).
pub fn roots_from_pem_file(path: &Path) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading {}", path.display()))?
    {
        roots.add(cert.with_context(|| format!("parsing {}", path.display()))?)?;
    }
    anyhow::ensure!(!roots.is_empty(), "{} holds no certificate", path.display());
    Ok(roots)
}
