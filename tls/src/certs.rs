//! Making certificates: a cluster CA, and certificates it issues for an identity. The CLI's
//! `shardkv certs init` and the playground use these; so will the operator.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::error::TlsError;
use crate::identity::PeerIdentity;

const DAY: Duration = Duration::from_secs(24 * 60 * 60);
/// Clocks of the machines may differ a little; a certificate is valid from a bit before now.
const CLOCK_SKEW: Duration = Duration::from_secs(60 * 60);

/// When a certificate is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Validity {
    /// From an hour ago until `days` from now.
    pub fn days_from_now(days: u64) -> Validity {
        let now = SystemTime::now();
        Validity { not_before: now - CLOCK_SKEW, not_after: now + DAY * days as u32 }
    }
}

/// A certificate and its private key, PEM-encoded.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// What a certificate says about itself that the operator reports: never key material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    /// The serial number in lowercase hex (leading zero bytes dropped).
    pub serial: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl CertificateInfo {
    /// Of the first certificate in `cert_pem`.
    pub fn of_pem(cert_pem: &str) -> Result<CertificateInfo, TlsError> {
        let der: rustls_pki_types::CertificateDer<'static> =
            rustls_pki_types::pem::PemObject::from_pem_slice(cert_pem.as_bytes())
                .map_err(|source| TlsError::Pem { what: "certificate", source })?;
        let (serial, not_before, not_after) =
            crate::san::serial_and_validity(&der).map_err(|e| TlsError::Unparsable(e.to_string()))?;
        let significant = serial.iter().position(|b| *b != 0).unwrap_or(serial.len().saturating_sub(1));
        let serial = serial[significant..].iter().map(|b| format!("{b:02x}")).collect();
        Ok(CertificateInfo { serial, not_before, not_after })
    }
}

/// A cluster's certificate authority.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: Issued,
}

impl Ca {
    /// A new self-signed CA for `cluster`.
    pub fn generate(cluster: &str, validity: Validity) -> Result<Ca, TlsError> {
        let mut params = ca_params(cluster);
        params.not_before = validity.not_before.into();
        params.not_after = validity.not_after.into();
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        let pem = Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() };
        Ok(Ca { issuer: Issuer::new(params, key), pem })
    }

    /// The CA `generate` made for `cluster`, from its PEM certificate and key. What it issues
    /// names the issuer as `generate` does (the subject is derived from `cluster`, which spares
    /// a certificate parser).
    pub fn from_pem(cluster: &str, cert_pem: &str, key_pem: &str) -> Result<Ca, TlsError> {
        let issuer = Issuer::new(ca_params(cluster), KeyPair::from_pem(key_pem)?);
        Ok(Ca { issuer, pem: Issued { cert_pem: cert_pem.to_string(), key_pem: key_pem.to_string() } })
    }

    pub fn pem(&self) -> &Issued {
        &self.pem
    }

    /// A certificate for `identity` (its URI SAN), valid as a server for `hosts` (DNS names or
    /// IP addresses) and as a client.
    pub fn issue(&self, identity: &PeerIdentity, hosts: &[String], validity: Validity) -> Result<Issued, TlsError> {
        let mut params = CertificateParams::new(hosts.to_vec())?;
        params.subject_alt_names.push(SanType::URI(identity.uri().try_into()?));
        params.distinguished_name = common_name(&identity.name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = validity.not_before.into();
        params.not_after = validity.not_after.into();
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

/// Subject and usages of a cluster's CA.
fn ca_params(cluster: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name(&format!("shardkv {cluster} CA"));
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params
}

fn common_name(name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn
}

impl Issued {
    /// Writes `<dir>/<stem>.pem` and `<dir>/<stem>-key.pem` (readable by the owner only), each
    /// replaced atomically so a reloading node never reads half a file.
    pub fn write(&self, dir: &Path, stem: &str) -> Result<(PathBuf, PathBuf), TlsError> {
        let cert = dir.join(format!("{stem}.pem"));
        let key = dir.join(format!("{stem}-key.pem"));
        write_atomically(&cert, &self.cert_pem, 0o644)?;
        write_atomically(&key, &self.key_pem, 0o600)?;
        Ok((cert, key))
    }
}

fn write_atomically(path: &Path, contents: &str, mode: u32) -> Result<(), TlsError> {
    use std::os::unix::fs::OpenOptionsExt;
    let error = |source| TlsError::Write { path: path.to_path_buf(), source };
    let tmp = path.with_extension("pem.tmp");
    let mut file =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp).map_err(error)?;
    file.write_all(contents.as_bytes()).and_then(|()| file.sync_all()).map_err(error)?;
    std::fs::rename(&tmp, path).map_err(error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Role;

    #[test]
    fn issued_certificates_name_their_identity_and_the_ca_reloads_from_pem() {
        let ca = Ca::generate("c1", Validity::days_from_now(1)).unwrap();
        let id = PeerIdentity::new("c1", Role::Node, "meta-1").unwrap();
        let issued = ca.issue(&id, &["127.0.0.1".into(), "localhost".into()], Validity::days_from_now(1)).unwrap();
        let der = rustls_pki_types::pem::PemObject::from_pem_slice(issued.cert_pem.as_bytes())
            .map(|c: rustls_pki_types::CertificateDer<'static>| c)
            .unwrap();
        assert_eq!(PeerIdentity::from_cert_der(&der).unwrap(), id);
        let again = Ca::from_pem("c1", &ca.pem().cert_pem, &ca.pem().key_pem).unwrap();
        let client = PeerIdentity::new("c1", Role::Client, "app").unwrap();
        assert!(again.issue(&client, &[], Validity::days_from_now(1)).is_ok());
    }

    #[test]
    fn certificate_info_names_a_new_serial_per_issue() {
        let ca = Ca::generate("c1", Validity::days_from_now(1)).unwrap();
        let id = PeerIdentity::new("c1", Role::Client, "app").unwrap();
        let validity = Validity::days_from_now(3);
        let first = CertificateInfo::of_pem(&ca.issue(&id, &[], validity).unwrap().cert_pem).unwrap();
        let second = CertificateInfo::of_pem(&ca.issue(&id, &[], validity).unwrap().cert_pem).unwrap();
        assert_ne!(first.serial, second.serial);
        assert!(first.serial.bytes().all(|b| b.is_ascii_hexdigit()));
        let seconds = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
        assert_eq!(seconds(first.not_after), seconds(validity.not_after));
        assert!(CertificateInfo::of_pem("not a certificate").is_err());
    }

    #[test]
    fn keys_are_written_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::generate("c1", Validity::days_from_now(1)).unwrap();
        let (cert, key) = ca.pem().write(dir.path(), "ca").unwrap();
        assert_eq!(cert, dir.path().join("ca.pem"));
        assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    }
}
