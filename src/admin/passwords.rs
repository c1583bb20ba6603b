//! Password hashing (argon2id, PHC strings) off the async runtime.
//!
//! Hashing costs tens of milliseconds of CPU and ~19 MiB of memory by design, so it runs on the
//! blocking pool. A sign-in for an unknown email (or a user without a password) still verifies
//! against a dummy hash, so response timing does not reveal which emails have accounts.

use std::sync::OnceLock;

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};

use super::credentials::Secret;
use crate::error::{DomainError, Fault};

/// Why a password was refused or could not be hashed.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("password must have at least {MIN_LEN} characters")]
    TooShort,
    #[error("password must have at most {MAX_LEN} characters")]
    TooLong,
    /// The blocking pool or argon2 failed.
    #[error("password hashing failed: {0}")]
    Hashing(String),
}

impl DomainError for PasswordError {
    fn fault(&self) -> Fault {
        match self {
            Self::TooShort | Self::TooLong => Fault::invalid("password"),
            Self::Hashing(_) => Fault::Internal,
        }
    }
}

/// Shortest password accepted on create.
pub const MIN_LEN: usize = 8;
/// Longest password accepted, in characters (at most 1 KiB of UTF-8; argon2 accepts more, this
/// bounds the work a request can ask for). Characters, not bytes, so that the OpenAPI document
/// can state the rule exactly (`maxLength`).
pub const MAX_LEN: usize = 256;

/// Checks the length rules; the error names the field `password`.
///
/// # Errors
/// [`PasswordError::TooShort`] or [`PasswordError::TooLong`] (400 naming `password`).
pub fn validate(password: &Secret) -> Result<(), PasswordError> {
    let n = password.expose().chars().count();
    if n < MIN_LEN {
        return Err(PasswordError::TooShort);
    }
    if n > MAX_LEN {
        return Err(PasswordError::TooLong);
    }
    Ok(())
}

/// An argon2id PHC string for `password`.
///
/// # Errors
/// [`PasswordError::Hashing`]: only internal failures (the blocking pool or the RNG).
pub async fn hash(password: Secret) -> Result<String, PasswordError> {
    tokio::task::spawn_blocking(move || hash_blocking(&password))
        .await
        .map_err(|e| PasswordError::Hashing(format!("the hashing task failed: {e}")))?
}

fn hash_blocking(password: &Secret) -> Result<String, PasswordError> {
    Argon2::default()
        .hash_password(password.expose().as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| PasswordError::Hashing(format!("argon2: {e}")))
}

/// Whether `password` matches `phc`. With no stored hash it still spends the same work and
/// answers false.
pub async fn verify(password: Secret, phc: Option<String>) -> bool {
    tokio::task::spawn_blocking(move || {
        let (target, real) = match &phc {
            Some(p) => (p.as_str(), true),
            None => (dummy_hash(), false),
        };
        let ok = Argon2::default().verify_password(password.expose().as_bytes(), target).is_ok();
        ok && real
    })
    .await
    .unwrap_or(false)
}

fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        hash_blocking(&Secret::generate("dummy_")).unwrap_or_else(|_| "$argon2id$v=19$m=19456,t=2,p=1$invalid".into())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_are_argon2id_and_verify() {
        let pw = Secret::from_plaintext("correct horse");
        let phc = hash(pw.clone()).await.unwrap();
        assert!(phc.starts_with("$argon2id$"), "{phc}");
        assert!(!phc.contains("correct horse"));
        assert!(verify(pw.clone(), Some(phc.clone())).await);
        assert!(!verify(Secret::from_plaintext("wrong horse"), Some(phc)).await);
        assert!(!verify(pw, None).await, "no stored hash never verifies");
    }

    #[test]
    fn length_rules_name_the_field() {
        let e = validate(&Secret::from_plaintext("short")).unwrap_err();
        assert_eq!(e.fault(), Fault::invalid("password"));
        assert!(validate(&Secret::from_plaintext("long enough")).is_ok());
    }
}
