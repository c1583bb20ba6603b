//! The federation audit log (DESIGN §5). Trust events (enrollment, renewal, revocation) are
//! written in the transaction of the change they describe; per-request rows for the verbs go
//! through the same function.

use sqlx::PgExecutor;
use uuid::Uuid;

/// One audit row.
#[derive(Debug, Default, Clone)]
pub struct AuditEntry<'a> {
    pub grant_id: Option<Uuid>,
    pub peer_id: Option<Uuid>,
    pub subject_user_id: Option<Uuid>,
    pub verb: &'a str,
    pub resource: Option<&'a str>,
    pub query_hash: Option<String>,
    /// `allowed`, `denied`, `enrolled`, `renewed`, `revoked`, `failed`...
    pub outcome: &'a str,
    pub deny_code: Option<&'a str>,
    /// Internal reason; never sent to the peer.
    pub reason: Option<String>,
    pub rows: Option<i32>,
    pub bytes_out: Option<i64>,
    pub latency_ms: Option<f64>,
}

/// Writes one audit row.
///
/// # Errors
/// Database errors.
pub async fn record(db: impl PgExecutor<'_>, e: &AuditEntry<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into federation_audit_log
            (grant_id, peer_id, subject_user_id, verb, resource, query_hash, outcome, deny_code, reason, rows, bytes_out, latency_ms)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(e.grant_id)
    .bind(e.peer_id)
    .bind(e.subject_user_id)
    .bind(e.verb)
    .bind(e.resource)
    .bind(&e.query_hash)
    .bind(e.outcome)
    .bind(e.deny_code)
    .bind(&e.reason)
    .bind(e.rows)
    .bind(e.bytes_out)
    .bind(e.latency_ms)
    .execute(db)
    .await?;
    Ok(())
}
