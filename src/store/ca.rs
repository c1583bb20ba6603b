//! The gateway CA's row (`gateway_ca`, a single row with id 1): its certificate, its sealed key
//! and its expiry. Issuing and sealing live in `federation::ca`; this module only stores.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

/// The stored CA: certificate PEM, sealed key, expiry.
#[derive(Debug, Clone)]
pub struct StoredCa {
    pub cert_pem: String,
    pub sealed_key: String,
    pub not_after: DateTime<Utc>,
}

/// Stores the CA unless one is stored already (another replica may win the first boot).
///
/// # Errors
/// Database errors.
pub async fn insert_if_absent(
    db: impl PgExecutor<'_>,
    cert_pem: &str,
    sealed_key: &str,
    not_after: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "insert into gateway_ca (id, cert_pem, sealed_key, not_after) values (1, $1, $2, $3)
             on conflict (id) do nothing",
        cert_pem,
        sealed_key,
        not_after,
    )
    .execute(db)
    .await?;
    Ok(())
}

/// The stored CA, `None` before the first boot.
///
/// # Errors
/// Database errors.
pub async fn load(db: impl PgExecutor<'_>) -> Result<Option<StoredCa>, sqlx::Error> {
    sqlx::query_as!(StoredCa, "select cert_pem, sealed_key, not_after from gateway_ca where id = 1")
        .fetch_optional(db)
        .await
}

/// When the stored CA expires, `None` before the first boot.
///
/// # Errors
/// Database errors.
pub async fn not_after(db: impl PgExecutor<'_>) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    sqlx::query_scalar!("select not_after from gateway_ca where id = 1").fetch_optional(db).await
}
