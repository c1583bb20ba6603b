//! The peer aggregate's rows (`federation_peers`) as the admin plane reads and writes them.
//!
//! Peer rules (name syntax, what a view shows) live in `federation::peers`; this module only
//! stores, with checked queries, and writes the column list of [`PeerRow`] once
//! ([`peer_rows!`]). The reader's side (enrollment, renewal bookkeeping, call outcomes: the
//! statements of `federation::client` and `federation::peer_status`) is the `reader` section
//! at the end; its rules (when to renew, what to announce) stay in those modules.

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

// ---- reader: the peers this gateway calls -------------------------------------------------

/// What a reader stores after an enrollment with a peer: the pinned CA and our client credentials.
#[derive(Debug, Clone, Copy)]
pub struct ClientCredentials<'a> {
    pub endpoint_url: &'a str,
    pub pinned_ca_pem: &'a str,
    pub ca_fingerprint: &'a str,
    pub client_cert_pem: &'a str,
    pub sealed_client_key: &'a str,
    pub client_cert_not_after: DateTime<Utc>,
}

/// A peer already enrolled with the same gateway (CA) and grant.
#[derive(Debug, Clone)]
pub struct EnrolledPeer {
    pub id: Uuid,
    pub name: String,
    pub client_cert_pem: Option<String>,
}

/// The peer enrolled with the gateway whose CA has `fingerprint` under its grant `grant_id`.
///
/// # Errors
/// Database errors.
pub async fn find_enrolled(
    db: impl PgExecutor<'_>,
    fingerprint: &str,
    grant_id: Uuid,
) -> Result<Option<EnrolledPeer>, sqlx::Error> {
    sqlx::query_as!(
        EnrolledPeer,
        "select id, name, client_cert_pem from federation_peers where ca_fingerprint = $1 and remote_grant_id = $2",
        fingerprint,
        grant_id,
    )
    .fetch_optional(db)
    .await
}

/// A re-enrollment: the peer `id` becomes active with new credentials (its name stays).
///
/// # Errors
/// Database errors.
pub async fn reenroll(db: impl PgExecutor<'_>, id: Uuid, new: &ClientCredentials<'_>) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "update federation_peers set
                    state = 'active', pinned_ca_pem = $2, ca_fingerprint = $3, client_cert_pem = $4,
                    sealed_client_key = $5, client_cert_not_after = $6, endpoint_url = $7, updated_at = now()
                 where id = $1",
        id,
        new.pinned_ca_pem,
        new.ca_fingerprint,
        new.client_cert_pem,
        new.sealed_client_key,
        new.client_cert_not_after,
        new.endpoint_url,
    )
    .execute(db)
    .await?;
    Ok(())
}

/// A first enrollment under `name`: inserts the peer active, or takes over the row of that name
/// (case-insensitively). Returns the row's id.
///
/// # Errors
/// Database errors.
pub async fn enroll(
    db: impl PgExecutor<'_>,
    name: &str,
    remote_grant_id: Uuid,
    new: &ClientCredentials<'_>,
) -> Result<Uuid, sqlx::Error> {
    sqlx::query_scalar!(
        "insert into federation_peers
                    (id, name, state, endpoint_url, remote_grant_id, pinned_ca_pem, ca_fingerprint, client_cert_pem,
                     sealed_client_key, client_cert_not_after)
                 values ($1, $2, 'active', $3, $4, $5, $6, $7, $8, $9)
                 on conflict (lower(name)) do update set
                    state = 'active', endpoint_url = excluded.endpoint_url, remote_grant_id = excluded.remote_grant_id,
                    pinned_ca_pem = excluded.pinned_ca_pem, ca_fingerprint = excluded.ca_fingerprint,
                    client_cert_pem = excluded.client_cert_pem, sealed_client_key = excluded.sealed_client_key,
                    client_cert_not_after = excluded.client_cert_not_after, updated_at = now()
                 returning id",
        Uuid::now_v7(),
        name,
        new.endpoint_url,
        remote_grant_id,
        new.pinned_ca_pem,
        new.ca_fingerprint,
        new.client_cert_pem,
        new.sealed_client_key,
        new.client_cert_not_after,
    )
    .fetch_one(db)
    .await
}

/// A peer we call, with what an mTLS client for it needs (any of it may be missing).
#[derive(Debug, Clone)]
pub struct OutboundRow {
    pub id: Uuid,
    pub name: String,
    pub endpoint_url: Option<String>,
    pub pinned_ca_pem: Option<String>,
    pub client_cert_pem: Option<String>,
    pub client_cert_not_after: Option<DateTime<Utc>>,
    pub sealed_client_key: Option<String>,
}

/// The client credentials of the peer named `name` (case-insensitively).
///
/// # Errors
/// Database errors.
pub async fn outbound(db: impl PgExecutor<'_>, name: &str) -> Result<Option<OutboundRow>, sqlx::Error> {
    sqlx::query_as!(
        OutboundRow,
        "select id, name, endpoint_url, pinned_ca_pem, client_cert_pem, client_cert_not_after, sealed_client_key
         from federation_peers where lower(name) = lower($1)",
        name
    )
    .fetch_optional(db)
    .await
}

/// A renewed client certificate and when it renews next.
#[derive(Debug, Clone, Copy)]
pub struct RenewedCertificate<'a> {
    pub cert_pem: &'a str,
    pub sealed_key: &'a str,
    pub not_after: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
    pub renew_at: DateTime<Utc>,
}

/// Stores a renewed certificate. A renewal is also a successful call: it ends a refusal streak
/// and a failure streak, and releases the lease.
///
/// # Errors
/// Database errors.
pub async fn record_renewal(
    db: impl PgExecutor<'_>,
    id: Uuid,
    new: &RenewedCertificate<'_>,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "update federation_peers
            set client_cert_pem = $2, sealed_client_key = $3, client_cert_not_after = $4,
                client_cert_received_at = $5, renew_at = $6, renewal_failures = 0, renewal_lease_until = null,
                last_renewed_at = $5, last_success_at = $5, refusing_since = null, updated_at = now()
          where id = $1",
        id,
        new.cert_pem,
        new.sealed_key,
        new.not_after,
        new.received_at,
        new.renew_at,
    )
    .execute(db)
    .await?;
    Ok(())
}

/// The callable peer whose unleased renewal falls due first, if it does within `within` from
/// now: its id and renewal moment.
///
/// # Errors
/// Database errors.
pub async fn next_due_renewal(
    db: impl PgExecutor<'_>,
    within: sqlx::postgres::types::PgInterval,
) -> Result<Option<(Uuid, DateTime<Utc>)>, sqlx::Error> {
    let row = sqlx::query!(
        r#"select id, renew_at as "renew_at!" from federation_peers
                where state in ('active', 'degraded') and client_cert_pem is not null
                  and client_cert_not_after > now() and renew_at <= now() + $1
                  and (renewal_lease_until is null or renewal_lease_until < now())
                order by renew_at limit 1"#,
        within
    )
    .fetch_optional(db)
    .await?;
    Ok(row.map(|r| (r.id, r.renew_at)))
}

/// A peer whose renewal this job holds the lease of.
#[derive(Debug, Clone)]
pub struct RenewalClaim {
    pub name: String,
    pub renewal_failures: i32,
    pub not_after: DateTime<Utc>,
}

/// Takes the renewal lease of peer `id` for `lease_secs` when it is due and nobody holds it.
///
/// # Errors
/// Database errors.
pub async fn claim_renewal(
    db: impl PgExecutor<'_>,
    id: Uuid,
    lease_secs: f64,
) -> Result<Option<RenewalClaim>, sqlx::Error> {
    sqlx::query_as!(
        RenewalClaim,
        r#"update federation_peers set renewal_lease_until = now() + make_interval(secs => $2)
            where id = $1 and renew_at <= now() and client_cert_not_after > now()
              and (renewal_lease_until is null or renewal_lease_until < now())
            returning name, renewal_failures, client_cert_not_after as "not_after!""#,
        id,
        lease_secs,
    )
    .fetch_optional(db)
    .await
}

/// Records a failed renewal (the streak's length `failures`, the retry at `retry`), releases the
/// lease, and starts a refusal streak when the peer `refused`.
///
/// # Errors
/// Database errors.
pub async fn record_renewal_failure(
    conn: &mut PgConnection,
    id: Uuid,
    failures: i32,
    retry: DateTime<Utc>,
    cause: &str,
    refused: bool,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "update federation_peers
            set renewal_failures = $2, renew_at = $3, renewal_lease_until = null,
                last_error = $4, last_error_at = now(),
                refusing_since = case when $5 then coalesce(refusing_since, now()) else refusing_since end
          where id = $1",
        id,
        failures,
        retry,
        cause,
        refused,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// A stored client certificate: peer id, PEM, and when it was received (if known).
pub type StoredCertificate = (Uuid, String, Option<DateTime<Utc>>);

/// Client certificates that have no renewal moment yet.
///
/// # Errors
/// Database errors.
pub async fn unscheduled_certificates(db: impl PgExecutor<'_>) -> Result<Vec<StoredCertificate>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"select id, client_cert_pem as "pem!", client_cert_received_at from federation_peers
            where client_cert_pem is not null and renew_at is null"#
    )
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|r| (r.id, r.pem, r.client_cert_received_at)).collect())
}

/// Sets the renewal moment of peer `id`, only if its certificate is still `pem` and has none (a
/// concurrent renewal wins).
///
/// # Errors
/// Database errors.
pub async fn schedule_renewal(
    db: impl PgExecutor<'_>,
    id: Uuid,
    renew_at: DateTime<Utc>,
    pem: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "update federation_peers set renew_at = $2 where id = $1 and client_cert_pem = $3 and renew_at is null",
        id,
        renew_at,
        pem,
    )
    .execute(db)
    .await?;
    Ok(())
}

/// A callable peer's client certificate whose expiry was not announced yet.
#[derive(Debug, Clone)]
pub struct UnannouncedCertificate {
    pub id: Uuid,
    pub name: String,
    pub pem: String,
    pub client_cert_received_at: Option<DateTime<Utc>>,
    pub renewal_failures: i32,
    pub last_error: Option<String>,
}

/// Client certificates of callable peers whose expiry was not announced yet.
///
/// # Errors
/// Database errors.
pub async fn unannounced_certificates(db: impl PgExecutor<'_>) -> Result<Vec<UnannouncedCertificate>, sqlx::Error> {
    sqlx::query_as!(
        UnannouncedCertificate,
        r#"select id, name, client_cert_pem as "pem!", client_cert_received_at, renewal_failures, last_error
             from federation_peers
            where client_cert_pem is not null and expiring_notified_at is null and state in ('active', 'degraded')"#
    )
    .fetch_all(db)
    .await
}

/// Marks the expiry of peer `id`'s certificate `pem` announced; `false` when it changed or was
/// announced meanwhile.
///
/// # Errors
/// Database errors.
pub async fn mark_expiry_announced(conn: &mut PgConnection, id: Uuid, pem: &str) -> Result<bool, sqlx::Error> {
    let marked = sqlx::query!(
        "update federation_peers set expiring_notified_at = now()
              where id = $1 and client_cert_pem = $2 and expiring_notified_at is null",
        id,
        pem,
    )
    .execute(conn)
    .await?
    .rows_affected();
    Ok(marked == 1)
}

/// A call to the peer named `name` succeeded: it ends a refusal streak.
///
/// # Errors
/// Database errors.
pub async fn record_call_success(db: impl PgExecutor<'_>, name: &str) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "update federation_peers set last_success_at = now(), refusing_since = null
                  where lower(name) = lower($1)",
        name
    )
    .execute(db)
    .await?;
    Ok(())
}

/// A call to the peer named `name` failed with `cause`; a refusal starts (or continues) a
/// refusal streak.
///
/// # Errors
/// Database errors.
pub async fn record_call_failure(
    db: impl PgExecutor<'_>,
    name: &str,
    cause: &str,
    refused: bool,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "update federation_peers
                    set last_error = $2, last_error_at = now(),
                        refusing_since = case when $3 then coalesce(refusing_since, now()) else refusing_since end
                  where lower(name) = lower($1)",
        name,
        cause,
        refused,
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Every stored client certificate's expiry, by peer name.
///
/// # Errors
/// Database errors.
pub async fn client_cert_expiries(db: impl PgExecutor<'_>) -> Result<Vec<(String, DateTime<Utc>)>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"select name, client_cert_not_after as "not_after!" from federation_peers
            where client_cert_pem is not null and client_cert_not_after is not null"#
    )
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|r| (r.name, r.not_after)).collect())
}

/// The names of the peers this gateway can call now (a client certificate, active or degraded).
///
/// # Errors
/// Database errors.
pub async fn callable_names(db: impl PgExecutor<'_>) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar!(
        "select name from federation_peers where client_cert_pem is not null and state in ('active', 'degraded') order by name"
    )
    .fetch_all(db)
    .await
}
