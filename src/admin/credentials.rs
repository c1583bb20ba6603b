//! Secrets for admin access: token and session formats, hashing, and minting.
//!
//! Admin tokens look like `tsr_<43 base64url chars>` (the prefix lets secret scanners match
//! them); session secrets use `tss_`. Only the SHA-256 of a secret is stored. Lookups go by hash,
//! and the stored hash is compared again in constant time before it is trusted.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::PgExecutor;
use uuid::Uuid;

pub const TOKEN_PREFIX: &str = "tsr_";
pub const SESSION_PREFIX: &str = "tss_";

/// A plaintext secret. `Debug` is redacted; use [`Secret::expose`] where it must leave.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// A new random secret with `prefix`.
    pub fn generate(prefix: &str) -> Self {
        let mut bytes = [0u8; 32];
        rand::fill(&mut bytes);
        Self(format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes)))
    }

    pub fn from_plaintext(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The value stored in the database.
    pub fn hash(&self) -> Vec<u8> {
        Sha256::digest(self.0.as_bytes()).to_vec()
    }
}

/// Secrets arrive in request bodies (passwords) and live in the CLI's state file, so they
/// (de)serialise as plain strings; only `Debug` hides them.
impl serde::Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Self)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Constant-time comparison of two stored hashes.
pub fn hashes_match(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// An admin token as listed (never with its plaintext).
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdminToken {
    pub id: Uuid,
    #[serde(skip)]
    pub user_id: Uuid,
    pub label: String,
    pub scope: String,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Creates a token for `user_id`; the plaintext is returned once and never stored.
///
/// # Errors
/// Database errors (including a foreign-key violation for an unknown user).
pub async fn mint_token(
    db: impl PgExecutor<'_>,
    user_id: Uuid,
    label: &str,
    expires_at: Option<DateTime<Utc>>,
) -> Result<(AdminToken, Secret), sqlx::Error> {
    let secret = Secret::generate(TOKEN_PREFIX);
    let token = sqlx::query_as!(
        AdminToken,
        "insert into admin_tokens (id, user_id, label, token_hash, expires_at)
         values ($1, $2, $3, $4, $5)
         returning id, user_id, label, scope, expires_at, last_used_at, created_at, revoked_at",
        Uuid::now_v7(),
        user_id,
        label,
        secret.hash(),
        expires_at
    )
    .fetch_one(db)
    .await?;
    Ok((token, secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_prefixed_random_and_hash_stably() {
        let a = Secret::generate(TOKEN_PREFIX);
        let b = Secret::generate(TOKEN_PREFIX);
        assert!(a.expose().starts_with("tsr_"));
        assert_eq!(a.expose().len(), 4 + 43);
        assert_ne!(a, b);
        assert_eq!(a.hash(), Secret::from_plaintext(a.expose()).hash());
        assert!(hashes_match(&a.hash(), &a.hash()));
        assert!(!hashes_match(&a.hash(), &b.hash()));
        assert!(!format!("{a:?}").contains(a.expose()));
    }
}
