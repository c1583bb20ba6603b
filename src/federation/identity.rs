//! Reading a peer's identity from its client certificate (DESIGN §3).
//!
//! Two non-critical extensions carry it: the grant id (`1.3.6.1.4.1.99999.1` by default) and the
//! subject user id (`…99999.2`), each a DER UTF8String (`0x0C len bytes`). A missing,
//! duplicated or malformed extension is a 401; the database, not the certificate, then decides
//! whether the grant is usable.
//!
//! Only the data holder interprets its own subject ids: tessera's are UUIDs ([`parse_identity`],
//! used by the guard), while a Mosaic peer's user ids are any text (`fed-m3-05-subject`). The
//! reading side ([`parse_issued`], used on certificates a peer issued to us) takes the subject as
//! the text it is and never requires a UUID of it.

use chrono::{DateTime, Utc};
use uuid::Uuid;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The configured extension OIDs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FederationOids {
    pub grant: Vec<u64>,
    pub subject: Vec<u64>,
}

impl Default for FederationOids {
    fn default() -> Self {
        Self { grant: vec![1, 3, 6, 1, 4, 1, 99999, 1], subject: vec![1, 3, 6, 1, 4, 1, 99999, 2] }
    }
}

/// Parses `1.3.6.1...` into arcs.
///
/// # Errors
/// Not a dotted OID with at least two arcs.
pub fn parse_oid(s: &str) -> Result<Vec<u64>, String> {
    let arcs: Result<Vec<u64>, _> = s.trim().split('.').map(str::parse).collect();
    match arcs {
        Ok(a) if a.len() >= 2 => Ok(a),
        _ => Err(format!("'{s}' is not a dotted object identifier like 1.3.6.1.4.1.99999.1")),
    }
}

/// What a client certificate says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    pub grant_id: Uuid,
    pub subject_user_id: Uuid,
    /// Lowercase hex of the certificate serial.
    pub serial: String,
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("not an X.509 certificate")]
    NotACertificate,
    #[error("the {0} extension is missing")]
    Missing(&'static str),
    #[error("the {0} extension appears more than once")]
    Duplicated(&'static str),
    #[error("the {0} extension is not a DER UTF8String holding a valid id")]
    Malformed(&'static str),
}

/// What a certificate a peer issued to us says: the grant (a UUID in Mosaic and tessera alike)
/// and the subject as the issuer's own text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedIdentity {
    pub grant_id: Uuid,
    /// The issuer's subject id, uninterpreted (a UUID for tessera, any text for Mosaic).
    pub subject: String,
    /// Lowercase hex of the certificate serial.
    pub serial: String,
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
}

/// Reads both identity extensions from a DER certificate this gateway issued: the subject must
/// be one of our user ids (a UUID).
///
/// # Errors
/// See [`IdentityError`].
pub fn parse_identity(der: &[u8], oids: &FederationOids) -> Result<PeerIdentity, IdentityError> {
    let issued = parse_issued(der, oids)?;
    let subject_user_id = Uuid::parse_str(&issued.subject).map_err(|_| IdentityError::Malformed("subject user id"))?;
    Ok(PeerIdentity {
        grant_id: issued.grant_id,
        subject_user_id,
        serial: issued.serial,
        not_before: issued.not_before,
        not_after: issued.not_after,
    })
}

/// Reads both identity extensions from a certificate a peer issued to us. The subject is the
/// peer's to interpret: any non-empty UTF8String of at most 1 024 bytes.
///
/// # Errors
/// See [`IdentityError`].
pub fn parse_issued(der: &[u8], oids: &FederationOids) -> Result<IssuedIdentity, IdentityError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|_| IdentityError::NotACertificate)?;
    let grant = text_extension(&cert, &oids.grant, "grant id")?;
    let grant_id = Uuid::parse_str(&grant).map_err(|_| IdentityError::Malformed("grant id"))?;
    let subject = text_extension(&cert, &oids.subject, "subject user id")?;
    if subject.is_empty() || subject.len() > 1024 || subject.contains('\0') {
        return Err(IdentityError::Malformed("subject user id"));
    }
    let instant = |t: x509_parser::time::ASN1Time| {
        DateTime::<Utc>::from_timestamp(t.timestamp(), 0).ok_or(IdentityError::NotACertificate)
    };
    let not_before = instant(cert.validity().not_before)?;
    let not_after = instant(cert.validity().not_after)?;
    Ok(IssuedIdentity { grant_id, subject, serial: hex::encode(cert.raw_serial()), not_before, not_after })
}

fn text_extension(cert: &X509Certificate<'_>, arcs: &[u64], name: &'static str) -> Result<String, IdentityError> {
    let oid = x509_parser::asn1_rs::Oid::from(arcs).map_err(|_| IdentityError::Missing(name))?;
    let ext = cert
        .get_extension_unique(&oid)
        .map_err(|_| IdentityError::Duplicated(name))?
        .ok_or(IdentityError::Missing(name))?;
    decode_utf8string(ext.value).ok_or(IdentityError::Malformed(name))
}

/// A DER UTF8String and nothing after it (strict DER: minimal length encoding).
fn decode_utf8string(der: &[u8]) -> Option<String> {
    yasna::parse_der(der, |r| r.read_utf8string()).ok()
}

/// Encodes `s` as a DER UTF8String, short or long length form as its size needs.
pub fn encode_utf8string(s: &str) -> Vec<u8> {
    yasna::construct_der(|w| w.write_utf8_string(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8string_round_trips_and_rejects_garbage() {
        let id = Uuid::new_v4().to_string();
        let der = encode_utf8string(&id);
        assert_eq!(der[0], 0x0c);
        assert_eq!(decode_utf8string(&der).as_deref(), Some(id.as_str()));
        assert_eq!(decode_utf8string(&[0x13, 1, b'a']), None, "PrintableString is not UTF8String");
        assert_eq!(decode_utf8string(&[0x0c, 5, b'a']), None, "length must match");
        let mut trailing = der.clone();
        trailing.push(0);
        assert_eq!(decode_utf8string(&trailing), None);
    }

    #[test]
    fn utf8string_lengths_of_128_bytes_and_more_use_the_long_form() {
        for n in [127usize, 128, 255, 256, 70_000] {
            let s = "é".repeat(n / 2) + &"a".repeat(n % 2);
            let der = encode_utf8string(&s);
            let header = der.len() - s.len();
            match n {
                0..=127 => assert_eq!(&der[..2], &[0x0c, u8::try_from(n).unwrap()]),
                128..=255 => assert_eq!(&der[..3], &[0x0c, 0x81, u8::try_from(n).unwrap()]),
                256..=65_535 => assert_eq!(der[1], 0x82),
                _ => assert_eq!(der[1], 0x83),
            }
            assert!(header <= 5, "{n}: {header}");
            assert_eq!(decode_utf8string(&der).as_deref(), Some(s.as_str()), "{n} bytes round-trip");
        }
        // A long form where the short one fits is not DER.
        assert_eq!(decode_utf8string(&[0x0c, 0x81, 1, b'a']), None);
    }

    fn cert_with(grant: &str, subject: &str) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        let oids = FederationOids::default();
        for (arcs, value) in [(&oids.grant, grant), (&oids.subject, subject)] {
            params.custom_extensions.push(rcgen::CustomExtension::from_oid_content(arcs, encode_utf8string(value)));
        }
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn the_reading_side_takes_any_text_subject_and_only_the_holder_wants_a_uuid() {
        let grant = Uuid::new_v4();
        let der = cert_with(&grant.to_string(), "fed-m3-05-subject");
        let issued = parse_issued(&der, &FederationOids::default()).unwrap();
        assert_eq!((issued.grant_id, issued.subject.as_str()), (grant, "fed-m3-05-subject"));
        assert_eq!(
            parse_identity(&der, &FederationOids::default()).unwrap_err(),
            IdentityError::Malformed("subject user id"),
            "our own guard still wants one of our user ids"
        );
        let subject = Uuid::new_v4();
        let ours = parse_identity(&cert_with(&grant.to_string(), &subject.to_string()), &FederationOids::default());
        assert_eq!(ours.unwrap().subject_user_id, subject);
        for (g, s) in [("not-a-uuid", "x"), (grant.to_string().as_str(), "")] {
            assert!(parse_issued(&cert_with(g, s), &FederationOids::default()).is_err(), "{g} {s}");
        }
    }

    #[test]
    fn oids_parse() {
        assert_eq!(parse_oid("1.3.6.1.4.1.99999.1").unwrap(), FederationOids::default().grant);
        assert!(parse_oid("1").is_err());
        assert!(parse_oid("1.x.3").is_err());
    }
}
