//! The gateway's certificate authority (DESIGN §3, §7).
//!
//! One ECDSA P-256 CA per gateway, created at first boot and stored in `gateway_ca` with its key
//! sealed. It signs this gateway's TLS server certificate (unless the operator supplies one) and,
//! through enrollment, the client certificates of peers. Replicas sharing a database share the CA:
//! the first to boot inserts it, the others read the winner.

use std::sync::Arc;

use anyhow::Context;
use chrono::{DateTime, Utc};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::Digest;
use sqlx::PgPool;

use crate::sealing::SealingKey;
use crate::store;

/// Sealing context of the CA key: a sealed value only opens in the column it was made for.
const SEAL_CONTEXT: &str = "gateway-ca-key";
const CA_VALIDITY_DAYS: i64 = 3650;
const SERVER_CERT_VALIDITY_DAYS: i64 = 90;

/// The loaded CA: certificate plus an issuer holding the (unsealed, in-memory only) key.
pub struct GatewayCa {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    not_after: DateTime<Utc>,
}

impl std::fmt::Debug for GatewayCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayCa").field("fingerprint", &self.fingerprint_sha256()).finish_non_exhaustive()
    }
}

/// A freshly issued certificate chain and its private key.
pub struct IssuedKeyPair {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl GatewayCa {
    /// Loads the CA from the database, creating it on first boot.
    ///
    /// # Errors
    /// Database errors, or a stored key that does not open with this sealing key.
    pub async fn load_or_create(pool: &PgPool, sealing: &SealingKey) -> anyhow::Result<Arc<Self>> {
        if let Some(ca) = Self::load(pool, sealing).await? {
            return Ok(Arc::new(ca));
        }
        let (cert_pem, key, not_after) = generate_ca()?;
        let sealed = sealing.seal(SEAL_CONTEXT, key.serialize_pem().as_bytes());
        store::ca::insert_if_absent(pool, &cert_pem, &sealed, not_after)
            .await
            .context("cannot store the gateway CA")?;
        tracing::info!("created the gateway CA (first boot)");
        // Another replica may have won the insert; everyone uses the stored row.
        Self::load(pool, sealing).await?.map(Arc::new).context("gateway CA vanished after insert")
    }

    /// A CA that lives only in memory, for benchmarks that need no database.
    ///
    /// # Errors
    /// rcgen refuses the parameters.
    pub fn ephemeral() -> anyhow::Result<Self> {
        let (cert_pem, key, not_after) = generate_ca()?;
        let cert_der = CertificateDer::from(pem_to_der(&cert_pem)?);
        let issuer = Issuer::from_ca_cert_der(&cert_der, key).context("generated CA certificate is invalid")?;
        Ok(Self { cert_pem, cert_der, issuer, not_after })
    }

    async fn load(pool: &PgPool, sealing: &SealingKey) -> anyhow::Result<Option<Self>> {
        let row = store::ca::load(pool).await.context("cannot read the gateway CA")?;
        let Some(row) = row else { return Ok(None) };
        let (cert_pem, sealed_key, not_after) = (row.cert_pem, row.sealed_key, row.not_after);
        let key_pem = sealing
            .open(SEAL_CONTEXT, &sealed_key)
            .context("cannot unseal the gateway CA key; TESSERA_SEALING_KEY (or sealing.key) must match the one used at first boot")?;
        let key = KeyPair::from_pem(std::str::from_utf8(&key_pem).context("CA key is not UTF-8")?)
            .context("stored CA key is not a valid key")?;
        let cert_der = CertificateDer::from(pem_to_der(&cert_pem)?);
        let issuer = Issuer::from_ca_cert_der(&cert_der, key).context("stored CA certificate is invalid")?;
        Ok(Some(Self { cert_pem, cert_der, issuer, not_after }))
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    pub fn not_after(&self) -> DateTime<Utc> {
        self.not_after
    }

    pub fn issuer(&self) -> &Issuer<'static, KeyPair> {
        &self.issuer
    }

    /// Lowercase hex SHA-256 of the CA certificate's DER: the pin carried in enrollment URLs.
    pub fn fingerprint_sha256(&self) -> String {
        hex::encode(sha2::Sha256::digest(self.cert_der.as_ref()))
    }

    /// Issues a TLS server certificate for `sans` (DNS names or IP addresses) with a fresh key.
    ///
    /// # Errors
    /// rcgen refuses the parameters (for example an empty or invalid name).
    pub fn issue_server_cert(&self, sans: &[String]) -> anyhow::Result<IssuedKeyPair> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans
            .iter()
            .map(|s| match s.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => Ok(SanType::DnsName(s.clone().try_into()?)),
            })
            .collect::<Result<_, rcgen::Error>>()?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, sans.first().cloned().unwrap_or_else(|| "tessera".into()));
        params.distinguished_name = dn;
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(5);
        params.not_after = now + time::Duration::days(SERVER_CERT_VALIDITY_DAYS);
        params.serial_number = Some(random_serial());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedKeyPair {
            chain: vec![cert.der().clone(), self.cert_der.clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        })
    }
}

/// A client certificate issued to a peer.
#[derive(Debug, Clone)]
pub struct ClientCertificate {
    pub pem: String,
    /// Lowercase hex of the serial, as [`crate::federation::identity::PeerIdentity::serial`] reads it.
    pub serial: String,
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
}

/// What goes into a peer's client certificate besides its public key.
#[derive(Debug, Clone)]
pub struct ClientCertRequest<'a> {
    pub peer_name: &'a str,
    pub grant_id: uuid::Uuid,
    pub subject_user_id: uuid::Uuid,
    pub oids: &'a crate::federation::identity::FederationOids,
    pub ttl: std::time::Duration,
}

impl GatewayCa {
    /// Issues a client certificate for `public_key` (taken from a verified CSR). Nothing else of
    /// the CSR is used: CN is the peer name, KU digitalSignature, EKU clientAuth, a random
    /// 128-bit serial, a short validity, and the two identity extensions, both non-critical
    /// (webpki rejects unknown critical extensions).
    ///
    /// # Errors
    /// rcgen refuses the parameters.
    pub fn issue_client_cert(
        &self,
        public_key: &rcgen::SubjectPublicKeyInfo,
        req: &ClientCertRequest<'_>,
    ) -> anyhow::Result<ClientCertificate> {
        use crate::federation::identity::encode_utf8string;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, req.peer_name);
        params.distinguished_name = dn;
        let now = time::OffsetDateTime::now_utc();
        // A minute of back-dating absorbs clock skew between the two gateways.
        params.not_before = now - time::Duration::minutes(1);
        params.not_after = now + time::Duration::try_from(req.ttl).context("certificate lifetime out of range")?;
        let serial = random_serial();
        let serial_hex = hex::encode(serial.to_bytes());
        params.serial_number = Some(serial);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        for (arcs, value) in [(&req.oids.grant, req.grant_id), (&req.oids.subject, req.subject_user_id)] {
            let mut ext = rcgen::CustomExtension::from_oid_content(arcs, encode_utf8string(&value.to_string()));
            ext.set_criticality(false);
            params.custom_extensions.push(ext);
        }
        let cert = params.signed_by(public_key, &self.issuer)?;
        let ts = |t: time::OffsetDateTime| DateTime::<Utc>::from_timestamp(t.unix_timestamp(), 0).unwrap_or_default();
        Ok(ClientCertificate {
            pem: cert.pem(),
            serial: serial_hex,
            not_before: ts(params.not_before),
            not_after: ts(params.not_after),
        })
    }

    /// A DER CRL listing `revoked` serials (hex) with their revocation times, signed by the CA.
    ///
    /// # Errors
    /// rcgen refuses the parameters (for example a malformed serial).
    pub fn crl_der(&self, revoked: &[(String, DateTime<Utc>)], crl_number: u64) -> anyhow::Result<Vec<u8>> {
        let now = time::OffsetDateTime::now_utc();
        let revoked_certs = revoked
            .iter()
            .map(|(serial, at)| {
                Ok(rcgen::RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&hex::decode(serial).context("stored serial is not hex")?),
                    revocation_time: time::OffsetDateTime::from_unix_timestamp(at.timestamp()).unwrap_or(now),
                    reason_code: None,
                    invalidity_date: None,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let params = rcgen::CertificateRevocationListParams {
            this_update: now - time::Duration::minutes(1),
            next_update: now + time::Duration::hours(1),
            crl_number: SerialNumber::from(crl_number),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer)?.der().to_vec())
    }
}

/// A positive random 128-bit serial (the top bit cleared so DER needs no sign byte games).
pub fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    rand::fill(&mut bytes);
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

fn generate_ca() -> anyhow::Result<(String, KeyPair, DateTime<Utc>)> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "tessera gateway CA");
    dn.push(DnType::OrganizationName, "tessera");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::days(CA_VALIDITY_DAYS);
    params.serial_number = Some(random_serial());
    let cert = params.self_signed(&key)?;
    let not_after =
        DateTime::<Utc>::from_timestamp(params.not_after.unix_timestamp(), 0).context("CA expiry out of range")?;
    Ok((cert.pem(), key, not_after))
}

/// Decodes the first certificate of a PEM document.
///
/// # Errors
/// No certificate in `pem`.
pub fn pem_to_der(pem: &str) -> anyhow::Result<Vec<u8>> {
    use rustls_pki_types::pem::PemObject;
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).context("not a PEM certificate")?;
    Ok(der.to_vec())
}
