//! Reading PEM certificates and private keys, with errors that name the file and what is wrong.

use std::path::{Path, PathBuf};

use rustls::{
    RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};

/// Why TLS files can't be used. Every message names the file; none quotes a key.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {}: {source}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} {} is not a PEM certificate: {reason}", path.display())]
    Certificate {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("{what} {} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)", path.display())]
    NoKey { what: &'static str, path: PathBuf },
    #[error("{what} {} cannot be used: {reason}", path.display())]
    Key {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("the private key {} does not belong to the certificate {}", key.display(), cert.display())]
    Mismatch { cert: PathBuf, key: PathBuf },
    #[error("{what} {} cannot be used as a CA: {reason}", path.display())]
    Ca {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("TLS cannot be set up: {0}")]
    Setup(String),
}

/// A file's bytes, or a `Read` error naming it.
pub fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

/// Every certificate in a PEM file, in order; at least one.
pub fn certificates(
    what: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let invalid = |reason: String| TlsError::Certificate {
        what,
        path: path.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(e.to_string()))?;
    if certs.is_empty() {
        return Err(invalid("no CERTIFICATE section found".to_owned()));
    }
    Ok(certs)
}

/// The first private key in a PEM file.
pub fn private_key(
    what: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<PrivateKeyDer<'static>, TlsError> {
    // The PEM error is not shown: its details could quote bytes of the key.
    PrivateKeyDer::from_pem_slice(pem).map_err(|_| TlsError::NoKey {
        what,
        path: path.to_owned(),
    })
}

/// A trust store holding every certificate in a PEM file; each must be a usable CA.
pub fn roots(what: &'static str, path: &Path, pem: &[u8]) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(what, path, pem)? {
        roots.add(cert).map_err(|e| TlsError::Ca {
            what,
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    }
    Ok(roots)
}

/// Maps rustls's refusal of a certificate and key pair to the files at fault.
pub fn pair_error(error: &rustls::Error, cert: &Path, key: &Path, what: &'static str) -> TlsError {
    match error {
        rustls::Error::InconsistentKeys(_) => TlsError::Mismatch {
            cert: cert.to_owned(),
            key: key.to_owned(),
        },
        other => TlsError::Key {
            what,
            path: key.to_owned(),
            reason: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_without_certificates_is_refused_with_its_name() {
        let error = certificates("the TLS certificate", Path::new("/x/tls.crt"), b"hello")
            .unwrap_err()
            .to_string();
        assert!(error.contains("/x/tls.crt"), "{error}");
        assert!(error.contains("no CERTIFICATE"), "{error}");
    }

    #[test]
    fn broken_pem_is_refused() {
        let pem = b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        assert!(certificates("the TLS certificate", Path::new("c"), pem).is_err());
        assert!(private_key("the TLS private key", Path::new("k"), pem).is_err());
    }

    #[test]
    fn a_key_error_never_quotes_the_file() {
        let pem =
            b"-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1ieXRlcw@@\n-----END PRIVATE KEY-----\n";
        let error = private_key("the TLS private key", Path::new("/k"), pem)
            .unwrap_err()
            .to_string();
        assert!(!error.contains("c2Vj"), "{error}");
        assert!(error.contains("/k"), "{error}");
    }
}
