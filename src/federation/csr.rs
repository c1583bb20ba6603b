//! Checking a certificate signing request before the CA uses its public key (DESIGN §3).
//!
//! The CA copies nothing from a CSR but its public key. The CSR must verify its own signature
//! (proof the requester holds the private key), and the key must be strong: RSA of at least
//! 2048 bits, or an ECDSA curve / Ed25519 that the signer supports. Requested extensions are
//! ignored, so a CSR asking for forged grant or subject OIDs still gets the grant's true values.

use rustls_pki_types::CertificateSigningRequestDer;
use rustls_pki_types::pem::PemObject;
use x509_parser::prelude::{FromDer, X509CertificationRequest};
use x509_parser::public_key::PublicKey;

const MIN_RSA_BITS: usize = 2048;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    #[error("csrPem is not a PEM certificate signing request")]
    NotPem,
    #[error("csrPem is not a valid certificate signing request")]
    Malformed,
    #[error("csrPem signature does not verify")]
    BadSignature,
    #[error("csrPem key is too weak: {0}")]
    WeakKey(String),
}

/// Verifies a PEM CSR and returns its public key in the form the CA signs for.
///
/// # Errors
/// See [`CsrError`].
pub fn verified_public_key(csr_pem: &str) -> Result<rcgen::SubjectPublicKeyInfo, CsrError> {
    let der = CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes()).map_err(|_| CsrError::NotPem)?;
    let (rest, csr) = X509CertificationRequest::from_der(der.as_ref()).map_err(|_| CsrError::Malformed)?;
    if !rest.is_empty() {
        return Err(CsrError::Malformed);
    }
    // Key strength first: ring refuses to verify signatures of weak RSA keys, and "too weak" is
    // the more useful answer.
    let spki = &csr.certification_request_info.subject_pki;
    match spki.parsed() {
        Ok(PublicKey::RSA(rsa)) => {
            let modulus = rsa.modulus.iter().skip_while(|b| **b == 0).count();
            if modulus * 8 < MIN_RSA_BITS {
                return Err(CsrError::WeakKey(format!("RSA keys need at least {MIN_RSA_BITS} bits")));
            }
        }
        Ok(PublicKey::EC(_)) | Ok(PublicKey::Unknown(_)) => {}
        Ok(_) | Err(_) => return Err(CsrError::WeakKey("unsupported key type".into())),
    }
    csr.verify_signature().map_err(|_| CsrError::BadSignature)?;
    // Matches the key's algorithm (and, for EC, its curve) against the signer's supported set:
    // an unknown curve fails here.
    rcgen::SubjectPublicKeyInfo::from_der(spki.raw)
        .map_err(|_| CsrError::WeakKey("unsupported key algorithm or curve".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csr_for(key: &rcgen::KeyPair) -> String {
        rcgen::CertificateParams::new(vec!["peer".into()]).unwrap().serialize_request(key).unwrap().pem().unwrap()
    }

    #[test]
    fn p256_and_p384_keys_are_accepted() {
        for alg in [&rcgen::PKCS_ECDSA_P256_SHA256, &rcgen::PKCS_ECDSA_P384_SHA384] {
            let key = rcgen::KeyPair::generate_for(alg).unwrap();
            assert!(verified_public_key(&csr_for(&key)).is_ok());
        }
    }

    #[test]
    fn a_tampered_csr_fails_its_signature() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let pem = csr_for(&key);
        let mut der = CertificateSigningRequestDer::from_pem_slice(pem.as_bytes()).unwrap().as_ref().to_vec();
        // Flip a byte inside the subject name (well before the signature).
        let i = der.windows(4).position(|w| w == b"peer").unwrap();
        der[i] = b'x';
        let tampered = pem_encode(&der);
        assert_eq!(verified_public_key(&tampered).unwrap_err(), CsrError::BadSignature);
    }

    #[test]
    fn garbage_is_rejected() {
        assert_eq!(verified_public_key("hello").unwrap_err(), CsrError::NotPem);
        let junk = pem_encode(b"not der at all");
        assert_eq!(verified_public_key(&junk).unwrap_err(), CsrError::Malformed);
    }

    fn pem_encode(der: &[u8]) -> String {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        format!("-----BEGIN CERTIFICATE REQUEST-----\n{b64}\n-----END CERTIFICATE REQUEST-----\n")
    }
}
