//! The three PEM files a TLS participant needs: the cluster's CA, its certificate and its key.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::TlsError;
use crate::identity::PeerIdentity;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CA that signs every certificate of the cluster; peers are verified against it.
    pub ca: PathBuf,
    /// This participant's certificate chain (leaf first).
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}

/// What was read from the files.
pub(crate) struct Material {
    pub roots: Arc<RootCertStore>,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

/// When and how large each file was, to notice a rotation.
pub(crate) type Stamp = [Option<(SystemTime, u64)>; 3];

impl TlsFiles {
    /// All three paths or none; any other combination is an error naming what is missing.
    pub fn from_parts(
        ca: Option<PathBuf>,
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
    ) -> Result<Option<TlsFiles>, TlsError> {
        match (ca, cert, key) {
            (None, None, None) => Ok(None),
            (Some(ca), Some(cert), Some(key)) => Ok(Some(TlsFiles { ca, cert, key })),
            (ca, cert, key) => {
                let missing: Vec<&str> =
                    [("CA", ca.is_none()), ("certificate", cert.is_none()), ("key", key.is_none())]
                        .into_iter()
                        .filter_map(|(what, absent)| absent.then_some(what))
                        .collect();
                Err(TlsError::Incomplete { missing: missing.join(", ") })
            }
        }
    }

    pub(crate) fn stamp(&self) -> Stamp {
        let of = |path: &Path| std::fs::metadata(path).ok().and_then(|m| Some((m.modified().ok()?, m.len())));
        [of(&self.ca), of(&self.cert), of(&self.key)]
    }

    pub(crate) fn load(&self) -> Result<Material, TlsError> {
        let ca = read_certs("CA file", &self.ca)?;
        let mut roots = RootCertStore::empty();
        for cert in ca {
            roots.add(cert).map_err(|source| TlsError::BadCa { path: self.ca.clone(), source })?;
        }
        let chain = read_certs("certificate", &self.cert)?;
        let key = PrivateKeyDer::from_pem_file(&self.key).map_err(|source| TlsError::Read {
            what: "key",
            path: self.key.clone(),
            source,
        })?;
        Ok(Material { roots: Arc::new(roots), chain, key })
    }

    /// The identity the certificate file names.
    pub fn identity(&self) -> Result<PeerIdentity, TlsError> {
        let chain = read_certs("certificate", &self.cert)?;
        PeerIdentity::from_cert_der(&chain[0])
            .map_err(|e| TlsError::NoIdentity { path: self.cert.clone(), reason: e.to_string() })
    }
}

impl Material {
    /// The same from PEM text held in memory.
    pub(crate) fn from_pem(ca: &str, cert: &str, key: &str) -> Result<Material, TlsError> {
        let certs = |what: &'static str, pem: &str| {
            let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|source| TlsError::Pem { what, source })?;
            if certs.is_empty() {
                return Err(TlsError::NoPem { what });
            }
            Ok(certs)
        };
        let mut roots = RootCertStore::empty();
        for cert in certs("CA", ca)? {
            roots.add(cert).map_err(TlsError::BadCaPem)?;
        }
        let chain = certs("certificate", cert)?;
        let key =
            PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|source| TlsError::Pem { what: "key", source })?;
        Ok(Material { roots: Arc::new(roots), chain, key })
    }
}

fn read_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Read { what, path: path.to_path_buf(), source })?;
    if certs.is_empty() {
        return Err(TlsError::Empty { what, path: path.to_path_buf() });
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_three_files_or_none() {
        assert_eq!(TlsFiles::from_parts(None, None, None).unwrap(), None);
        let all = TlsFiles::from_parts(Some("a".into()), Some("b".into()), Some("c".into())).unwrap().unwrap();
        assert_eq!(all.key, PathBuf::from("c"));
        let err = TlsFiles::from_parts(Some("a".into()), None, None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "give all three of the CA, certificate and key files or none (missing: certificate, key)"
        );
    }
}
