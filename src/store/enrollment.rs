//! Enrollment's rows: the single-use tokens (`federation_enrollment_tokens`) and the register of
//! certificates issued to peers (`federation_issued_certs`) that the CRL is built from.
//!
//! The enrollment rules (who may mint, what a redemption issues, the audit and events around
//! it) live in `federation::enrollment`; this module only stores, with checked queries, so the
//! caller owns the transaction.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

/// A token to store: only its hash is kept.
#[derive(Debug, Clone, Copy)]
pub struct NewToken<'a> {
    pub token_hash: &'a [u8],
    pub grant_id: Uuid,
    pub peer_id: Uuid,
    pub expires_at: DateTime<Utc>,
    /// Redeeming it replaces the certificate of an active grant.
    pub reenroll: bool,
}

/// # Errors
/// Database errors.
pub async fn insert_token(db: impl PgExecutor<'_>, new: &NewToken<'_>) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "insert into federation_enrollment_tokens (id, token_hash, grant_id, peer_id, expires_at, reenroll)
         values ($1, $2, $3, $4, $5, $6)",
        Uuid::now_v7(),
        new.token_hash,
        new.grant_id,
        new.peer_id,
        new.expires_at,
        new.reenroll,
    )
    .execute(db)
    .await?;
    Ok(())
}

/// A token claimed for redemption.
#[derive(Debug, Clone, Copy)]
pub struct ClaimedToken {
    pub grant_id: Uuid,
    pub peer_id: Uuid,
    pub reenroll: bool,
}

/// Marks the unused, unexpired token with hash `token_hash` used. Concurrent redeemers
/// serialise on the row and all but one get `None`.
///
/// # Errors
/// Database errors.
pub async fn claim_token(conn: &mut PgConnection, token_hash: &[u8]) -> Result<Option<ClaimedToken>, sqlx::Error> {
    sqlx::query_as!(
        ClaimedToken,
        "update federation_enrollment_tokens set used_at = now()
         where token_hash = $1 and used_at is null and expires_at > now()
         returning grant_id, peer_id, reenroll",
        token_hash,
    )
    .fetch_optional(conn)
    .await
}

/// The grant and peer of the token with hash `token_hash`, used or not.
///
/// # Errors
/// Database errors.
pub async fn token_holder(conn: &mut PgConnection, token_hash: &[u8]) -> Result<Option<(Uuid, Uuid)>, sqlx::Error> {
    let row =
        sqlx::query!("select grant_id, peer_id from federation_enrollment_tokens where token_hash = $1", token_hash)
            .fetch_optional(conn)
            .await?;
    Ok(row.map(|r| (r.grant_id, r.peer_id)))
}

/// Registers a certificate issued to `peer_id` under `grant_id`.
///
/// # Errors
/// Database errors.
pub async fn insert_issued_cert(
    conn: &mut PgConnection,
    serial: &str,
    peer_id: Uuid,
    grant_id: Uuid,
    not_before: DateTime<Utc>,
    not_after: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "insert into federation_issued_certs (serial, peer_id, grant_id, not_before, not_after) values ($1, $2, $3, $4, $5)",
        serial,
        peer_id,
        grant_id,
        not_before,
        not_after,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Every revoked certificate's serial and revocation time, oldest revocation first.
///
/// # Errors
/// Database errors.
pub async fn revoked_certificates(db: impl PgExecutor<'_>) -> Result<Vec<(String, DateTime<Utc>)>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"select serial, revoked_at as "revoked_at!" from federation_issued_certs
            where revoked_at is not null order by revoked_at, serial"#
    )
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|r| (r.serial, r.revoked_at)).collect())
}

/// Deletes enrollment tokens a day past their expiry (used or not).
///
/// # Errors
/// Database errors.
pub async fn delete_expired_tokens(db: impl PgExecutor<'_>) -> Result<(), sqlx::Error> {
    sqlx::query!("delete from federation_enrollment_tokens where expires_at < now() - interval '1 day'")
        .execute(db)
        .await?;
    Ok(())
}
