//! The per-bottle certificate authority the sidecar intercepts TLS with.
//!
//! Minted once, at the first `bottle up` of a bottle, and kept in the state
//! dir: the key (`sidecar/ca-key.pem`, 0600) only ever goes to the sidecar;
//! the agent gets the certificate alone (`agent/bottle-ca.crt`), from a
//! directory that holds nothing else.

use crate::state::{write_private, write_public, StateDir, StateError};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};

/// Failures minting the CA.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cannot mint the bottle's CA: {0}")]
    Mint(#[from] rcgen::Error),
    #[error(transparent)]
    State(#[from] StateError),
}

/// Makes sure the bottle has a CA; returns whether one was minted now.
pub fn ensure(state: &StateDir, bottle: &str) -> Result<bool, CaError> {
    let cert_path = state.sidecar_dir().join("ca.pem");
    let key_path = state.sidecar_dir().join("ca-key.pem");
    let agent_copy = state.agent_dir().join("bottle-ca.crt");
    if cert_path.is_file() && key_path.is_file() {
        // The agent's copy is derived; rewrite it in case it was removed.
        let pem = std::fs::read(&cert_path).map_err(|source| StateError::Write {
            path: cert_path.clone(),
            source,
        })?;
        write_public(&agent_copy, &pem)?;
        return Ok(false);
    }
    let ca = mint(bottle)?;
    write_private(&key_path, ca.key_pem.as_bytes())?;
    write_private(&cert_path, ca.cert_pem.as_bytes())?;
    write_public(&agent_copy, ca.cert_pem.as_bytes())?;
    Ok(true)
}

/// A freshly minted CA, in memory: its certificate and private key (PEM).
pub struct MintedCa {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Mints a CA for `bottle` without writing it anywhere (`ensure` keeps it
/// in the state dir; `bottle render --secrets` puts it in a Secret).
pub fn mint(bottle: &str) -> Result<MintedCa, CaError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, format!("bottle {bottle} egress CA"));
    params
        .distinguished_name
        .push(DnType::OrganizationName, "bottle");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key)?;
    Ok(MintedCa {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}
