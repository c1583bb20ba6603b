//! Sealing of private keys at rest (DESIGN §3).
//!
//! Every private key the gateway stores (the CA key, client keys for peers it calls) is sealed with
//! AES-256-GCM before it reaches the database. The sealing key comes from `TESSERA_SEALING_KEY`
//! (shared by all replicas) or, on a single machine, from a key file created with mode 0600 in the
//! data dir. A sealed value is `v1:` followed by base64url of `nonce || ciphertext+tag`, so a raw
//! read of the database shows neither PEM nor anything reversible without the key.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

const PREFIX: &str = "v1:";
const NONCE_LEN: usize = 12;

/// The raw configured sealing key; its `Debug` never prints the value.
#[derive(Clone)]
pub struct SealingKeyHex(String);

impl SealingKeyHex {
    pub fn new(raw: String) -> Self {
        Self(raw)
    }
}

impl std::fmt::Debug for SealingKeyHex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealingKeyHex(<redacted>)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SealingError {
    #[error("TESSERA_SEALING_KEY must be 64 hex characters (32 bytes)")]
    BadKey,
    #[error("cannot use the sealing key file {path}: {source}")]
    KeyFile { path: String, source: std::io::Error },
    #[error("sealed value is malformed")]
    Malformed,
    #[error("sealed value does not open with this sealing key (was TESSERA_SEALING_KEY changed?)")]
    WrongKey,
}

/// An AES-256-GCM key. `Debug` is redacted so it cannot reach a log by accident.
#[derive(Clone)]
pub struct SealingKey {
    key: [u8; 32],
}

impl std::fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealingKey(<redacted>)")
    }
}

impl SealingKey {
    /// Loads the key from the configured value, or from (creating if needed) `<data_dir>/sealing.key`.
    ///
    /// # Errors
    /// A malformed configured key, or a key file that cannot be read or created.
    pub fn load(configured: Option<&SealingKeyHex>, data_dir: &Path) -> Result<Self, SealingError> {
        if let Some(SealingKeyHex(raw)) = configured {
            return Self::from_hex(raw.trim());
        }
        let path = data_dir.join("sealing.key");
        let key_err = |source| SealingError::KeyFile { path: path.display().to_string(), source };
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::from_hex(text.trim()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(data_dir).map_err(key_err)?;
                let mut key = [0u8; 32];
                rand::fill(&mut key);
                // create_new: two processes racing on first boot must not overwrite each other's key.
                match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path) {
                    Ok(mut file) => {
                        file.write_all(hex::encode(key).as_bytes()).map_err(key_err)?;
                        file.sync_all().map_err(key_err)?;
                        Ok(Self { key })
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        Self::from_hex(std::fs::read_to_string(&path).map_err(key_err)?.trim())
                    }
                    Err(e) => Err(key_err(e)),
                }
            }
            Err(e) => Err(key_err(e)),
        }
        .inspect(|_| {
            // Tighten permissions in case the file was copied in with a looser mode.
            let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
        })
    }

    /// # Errors
    /// [`SealingError::BadKey`] unless `raw` is exactly 64 hex characters.
    pub fn from_hex(raw: &str) -> Result<Self, SealingError> {
        let bytes = hex::decode(raw).map_err(|_| SealingError::BadKey)?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| SealingError::BadKey)?;
        Ok(Self { key })
    }

    /// A 32-byte key for another purpose (for example cursor MACs), derived with HMAC-SHA256 so
    /// it reveals nothing about the sealing key and is the same on every replica.
    pub fn derive_key(&self, label: &str) -> [u8; 32] {
        use hmac::{Hmac, KeyInit, Mac};
        let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(label.as_bytes());
        mac.finalize().into_bytes().into()
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new_from_slice(&self.key).expect("a 32-byte key is always valid for AES-256")
    }

    /// Seals `plaintext`; `context` (for example `"ca-key"`) is bound as associated data so a sealed
    /// value cannot be moved to another column and opened there.
    pub fn seal(&self, context: &str, plaintext: &[u8]) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        rand::fill(&mut nonce);
        let payload = aes_gcm::aead::Payload { msg: plaintext, aad: context.as_bytes() };
        let ct = self
            .cipher()
            .encrypt(&Nonce::from(nonce), payload)
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(out))
    }

    /// Opens a value made by [`SealingKey::seal`] with the same `context`.
    ///
    /// # Errors
    /// [`SealingError::Malformed`] or [`SealingError::WrongKey`].
    pub fn open(&self, context: &str, sealed: &str) -> Result<Vec<u8>, SealingError> {
        let body = sealed.strip_prefix(PREFIX).ok_or(SealingError::Malformed)?;
        let raw = URL_SAFE_NO_PAD.decode(body).map_err(|_| SealingError::Malformed)?;
        if raw.len() < NONCE_LEN + 16 {
            return Err(SealingError::Malformed);
        }
        let (nonce, ct) = raw.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| SealingError::Malformed)?;
        let payload = aes_gcm::aead::Payload { msg: ct, aad: context.as_bytes() };
        self.cipher().decrypt(&Nonce::from(nonce), payload).map_err(|_| SealingError::WrongKey)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_round_trips_and_hides_the_plaintext() {
        let key = SealingKey::from_hex(&"ab".repeat(32)).unwrap();
        let plaintext = b"private key material: BEGIN";
        let sealed = key.seal("ca-key", plaintext);
        assert!(sealed.starts_with("v1:"));
        assert!(!sealed.contains("BEGIN"));
        assert_eq!(key.open("ca-key", &sealed).unwrap(), plaintext);
    }

    #[test]
    fn wrong_key_context_or_tampering_fails() {
        let key = SealingKey::from_hex(&"ab".repeat(32)).unwrap();
        let other = SealingKey::from_hex(&"cd".repeat(32)).unwrap();
        let sealed = key.seal("ca-key", b"secret");
        assert!(matches!(other.open("ca-key", &sealed), Err(SealingError::WrongKey)));
        assert!(matches!(key.open("peer-key", &sealed), Err(SealingError::WrongKey)));
        let mut tampered = sealed.clone().into_bytes();
        let last = tampered.len() - 2;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        assert!(key.open("ca-key", std::str::from_utf8(&tampered).unwrap()).is_err());
        assert!(matches!(key.open("ca-key", "plain"), Err(SealingError::Malformed)));
    }

    #[test]
    fn bad_configured_key_is_rejected_without_echoing_it() {
        let err = SealingKey::from_hex("not-hex-secret").unwrap_err().to_string();
        assert!(!err.contains("not-hex-secret"));
        assert!(SealingKey::from_hex(&"ab".repeat(31)).is_err());
    }

    #[test]
    fn key_file_is_created_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let a = SealingKey::load(None, dir.path()).unwrap();
        let b = SealingKey::load(None, dir.path()).unwrap();
        assert_eq!(a.key, b.key);
        let mode = std::fs::metadata(dir.path().join("sealing.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!format!("{a:?}").contains(&hex::encode(a.key)));
    }
}
