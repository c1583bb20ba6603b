//! The peer aggregate's rows (`federation_peers`) as the admin plane reads and writes them.
//!
//! Peer rules (name syntax, what a view shows) live in `federation::peers`; this module only
//! stores, with checked queries, and writes the column list of [`PeerRow`] once
//! ([`peer_rows!`]). The reader's renewal bookkeeping (`federation::client`,
//! `federation::peer_status`) still writes its own columns where it runs.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgExecutor};
use utoipa::ToSchema;
use uuid::Uuid;

/// A peer's stored state. For a peer we call, `reader.status` of the peer view says whether
/// calls can work now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type, ToSchema)]
#[sqlx(type_name = "text", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum PeerState {
    Pending,
    Active,
    Degraded,
    Suspended,
    Revoked,
}

impl PeerState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Active => "active",
            Self::Degraded => "degraded",
            Self::Suspended => "suspended",
            Self::Revoked => "revoked",
        }
    }

    /// Active or degraded: this gateway calls the peer.
    pub fn is_callable(self) -> bool {
        matches!(self, Self::Active | Self::Degraded)
    }
}

impl std::fmt::Display for PeerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `federation_peers` row without its secrets (the sealed key and the pinned CA stay here).
#[derive(Debug, Clone)]
pub struct PeerRow {
    pub id: Uuid,
    pub name: String,
    pub state: PeerState,
    pub current_serial: Option<String>,
    pub cert_not_after: Option<DateTime<Utc>>,
    pub endpoint_url: Option<String>,
    pub remote_grant_id: Option<Uuid>,
    pub ca_fingerprint: Option<String>,
    pub client_cert_not_after: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    // Role "we call it": our client certificate and how calls and renewals go.
    pub client_cert_pem: Option<String>,
    pub client_cert_received_at: Option<DateTime<Utc>>,
    pub renew_at: Option<DateTime<Utc>>,
    pub renewal_failures: i32,
    pub last_renewed_at: Option<DateTime<Utc>>,
    pub last_success_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
    pub refusing_since: Option<DateTime<Utc>>,
}

/// A checked statement yielding [`PeerRow`]s: `$head` + the peer columns + `$tail`.
macro_rules! peer_rows {
    ($head:tt, $tail:tt $(, $arg:expr)* $(,)?) => {
        sqlx::query_as!(
            PeerRow,
            $head
                + r#" id, name, state as "state: PeerState", current_serial, cert_not_after, endpoint_url,
                   remote_grant_id, ca_fingerprint, client_cert_not_after, created_at, updated_at,
                   client_cert_pem, client_cert_received_at, renew_at, renewal_failures, last_renewed_at,
                   last_success_at, last_error, last_error_at, refusing_since "#
                + $tail
            $(, $arg)*
        )
    };
}

/// Inserts a peer in state `pending`.
///
/// # Errors
/// Database errors, the unique name included.
pub async fn insert(db: impl PgExecutor<'_>, name: &str, endpoint_url: Option<&str>) -> Result<PeerRow, sqlx::Error> {
    peer_rows!(
        "insert into federation_peers (id, name, endpoint_url) values ($1, $2, $3) returning",
        "",
        Uuid::now_v7(),
        name,
        endpoint_url,
    )
    .fetch_one(db)
    .await
}

/// # Errors
/// Database errors.
pub async fn find(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<PeerRow>, sqlx::Error> {
    peer_rows!("select", "from federation_peers where id = $1", id).fetch_optional(db).await
}

/// The peer named `name`, case-insensitively (names are unique that way).
///
/// # Errors
/// Database errors.
pub async fn find_by_name(db: impl PgExecutor<'_>, name: &str) -> Result<Option<PeerRow>, sqlx::Error> {
    peer_rows!("select", "from federation_peers where lower(name) = lower($1)", name).fetch_optional(db).await
}

/// Every peer, oldest first.
///
/// # Errors
/// Database errors.
pub async fn list(db: impl PgExecutor<'_>) -> Result<Vec<PeerRow>, sqlx::Error> {
    peer_rows!("select", "from federation_peers order by created_at, id").fetch_all(db).await
}

/// The names of the peers `ids`.
///
/// # Errors
/// Database errors.
pub async fn names(db: impl PgExecutor<'_>, ids: &[Uuid]) -> Result<Vec<(Uuid, String)>, sqlx::Error> {
    let rows = sqlx::query!("select id, name from federation_peers where id = any($1)", ids).fetch_all(db).await?;
    Ok(rows.into_iter().map(|r| (r.id, r.name)).collect())
}

/// The stored state of a peer, `None` when there is no such peer.
///
/// # Errors
/// Database errors.
pub async fn state(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<PeerState>, sqlx::Error> {
    sqlx::query_scalar!(r#"select state as "state: PeerState" from federation_peers where id = $1"#, id)
        .fetch_optional(db)
        .await
}

/// The stored state of the peer named `name` (case-insensitively).
///
/// # Errors
/// Database errors.
pub async fn state_by_name(db: impl PgExecutor<'_>, name: &str) -> Result<Option<PeerState>, sqlx::Error> {
    sqlx::query_scalar!(
        r#"select state as "state: PeerState" from federation_peers where lower(name) = lower($1)"#,
        name
    )
    .fetch_optional(db)
    .await
}

/// The peer row remembers the certificate issued to it last and becomes active (display only:
/// the guard checks each grant's own serial).
///
/// # Errors
/// Database errors.
pub async fn record_issued_certificate(
    conn: &mut PgConnection,
    id: Uuid,
    serial: &str,
    not_after: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "update federation_peers set state = 'active', current_serial = $2, cert_not_after = $3, updated_at = now()
         where id = $1",
        id,
        serial,
        not_after,
    )
    .execute(conn)
    .await?;
    Ok(())
}
