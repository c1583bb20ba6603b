//! The grant aggregate's rows (`federation_grants`): the one place that reads and writes them.
//!
//! Grant rules (which transitions are allowed, what a scope may say) live in
//! `federation::grants`; this module only stores, so every statement is a checked query and the
//! column list of [`Grant`] is written once ([`grant_rows!`]). Functions take `impl PgExecutor`
//! or `&mut PgConnection`, so the caller owns the transaction.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgExecutor};
use utoipa::ToSchema;
use uuid::Uuid;

use super::peers::PeerState;

/// Where a grant is in its life: `pending → active → revoked | expired`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type, ToSchema)]
#[sqlx(type_name = "text", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum GrantStatus {
    Pending,
    Active,
    Expired,
    Revoked,
}

impl GrantStatus {
    /// Every status, in the order messages list them.
    pub const ALL: [GrantStatus; 4] = [Self::Pending, Self::Active, Self::Expired, Self::Revoked];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Active => "active",
            Self::Expired => "expired",
            Self::Revoked => "revoked",
        }
    }

    /// The status spelled `s`, as the wire and the database spell it.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == s)
    }

    /// Pending or active: the grant can still be edited or revoked.
    pub fn is_open(self) -> bool {
        matches!(self, Self::Pending | Self::Active)
    }
}

impl std::fmt::Display for GrantStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A grant as stored, and as the admin API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Grant {
    pub id: Uuid,
    pub peer_id: Uuid,
    pub subject_user_id: Option<Uuid>,
    #[schema(value_type = Object)]
    pub scope: serde_json::Value,
    pub scope_version: i32,
    pub status: GrantStatus,
    pub expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub activated_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub revoke_reason: Option<String>,
    /// Federation requests per minute for this grant; null means the gateway default.
    pub rate_per_minute: Option<i32>,
}

/// A checked statement yielding [`Grant`]s: `$head` + the grant columns + `$tail`, so the column
/// list is written once for selects, inserts and updates alike.
macro_rules! grant_rows {
    ($head:tt, $tail:tt $(, $arg:expr)* $(,)?) => {
        sqlx::query_as!(
            Grant,
            $head
                + " id, peer_id, subject_user_id, scope, scope_version, status as \"status: GrantStatus\", \
                   expires_at, created_at, activated_at, revoked_at, revoke_reason, rate_per_minute "
                + $tail
            $(, $arg)*
        )
    };
}

/// # Errors
/// Database errors.
pub async fn find(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<Grant>, sqlx::Error> {
    grant_rows!("select", "from federation_grants where id = $1", id).fetch_optional(db).await
}

/// The grant with a row lock, for a transition inside `conn`'s transaction.
///
/// # Errors
/// Database errors.
pub async fn lock(conn: &mut PgConnection, id: Uuid) -> Result<Option<Grant>, sqlx::Error> {
    grant_rows!("select", "from federation_grants where id = $1 for update", id).fetch_optional(conn).await
}

/// Grants, optionally of one peer and in one status, oldest first.
///
/// # Errors
/// Database errors.
pub async fn list(
    db: impl PgExecutor<'_>,
    peer_id: Option<Uuid>,
    status: Option<GrantStatus>,
) -> Result<Vec<Grant>, sqlx::Error> {
    grant_rows!(
        "select",
        "from federation_grants
          where ($1::uuid is null or peer_id = $1) and ($2::text is null or status = $2)
          order by created_at, id",
        peer_id,
        status as Option<GrantStatus>,
    )
    .fetch_all(db)
    .await
}

/// A grant to insert (status `pending`).
pub struct NewGrant<'a> {
    pub peer_id: Uuid,
    pub subject_user_id: Uuid,
    pub scope: &'a serde_json::Value,
    pub expires_at: Option<DateTime<Utc>>,
    pub rate_per_minute: Option<i32>,
}

/// # Errors
/// Database errors, constraint violations included (unknown peer or subject).
pub async fn insert(conn: &mut PgConnection, new: &NewGrant<'_>) -> Result<Grant, sqlx::Error> {
    grant_rows!(
        "insert into federation_grants (id, peer_id, subject_user_id, scope, expires_at, rate_per_minute)
         values ($1, $2, $3, $4, $5, $6) returning",
        "",
        Uuid::now_v7(),
        new.peer_id,
        new.subject_user_id,
        new.scope,
        new.expires_at,
        new.rate_per_minute,
    )
    .fetch_one(conn)
    .await
}

/// Marks the grant revoked and its issued certificates with it (they enter the CRL).
///
/// # Errors
/// Database errors.
pub async fn set_revoked(conn: &mut PgConnection, id: Uuid, reason: &str) -> Result<Grant, sqlx::Error> {
    let grant = grant_rows!(
        "update federation_grants set status = 'revoked', revoked_at = now(), revoke_reason = $2 where id = $1 returning",
        "",
        id,
        reason,
    )
    .fetch_one(&mut *conn)
    .await?;
    sqlx::query!(
        "update federation_issued_certs set revoked_at = now() where grant_id = $1 and revoked_at is null",
        id
    )
    .execute(conn)
    .await?;
    Ok(grant)
}

/// # Errors
/// Database errors.
pub async fn set_expired(conn: &mut PgConnection, id: Uuid) -> Result<Grant, sqlx::Error> {
    grant_rows!("update federation_grants set status = 'expired' where id = $1 returning", "", id).fetch_one(conn).await
}

/// A new scope (already validated), bumping its version.
///
/// # Errors
/// Database errors.
pub async fn set_scope(conn: &mut PgConnection, id: Uuid, scope: &serde_json::Value) -> Result<Grant, sqlx::Error> {
    grant_rows!(
        "update federation_grants set scope = $2, scope_version = scope_version + 1 where id = $1 returning",
        "",
        id,
        scope,
    )
    .fetch_one(conn)
    .await
}

/// # Errors
/// Database errors.
pub async fn set_rate(conn: &mut PgConnection, id: Uuid, rate_per_minute: i32) -> Result<Grant, sqlx::Error> {
    grant_rows!("update federation_grants set rate_per_minute = $2 where id = $1 returning", "", id, rate_per_minute)
        .fetch_one(conn)
        .await
}

/// A grant and its peer as enrollment reads them, both locked.
pub struct EnrollmentTarget {
    /// The status, with an active grant past its expiry read as expired.
    pub status: GrantStatus,
    pub subject_user_id: Option<Uuid>,
    pub peer_name: String,
    pub current_serial: Option<String>,
}

/// # Errors
/// Database errors.
pub async fn lock_for_enrollment(
    conn: &mut PgConnection,
    grant_id: Uuid,
    peer_id: Uuid,
) -> Result<Option<EnrollmentTarget>, sqlx::Error> {
    sqlx::query_as!(
        EnrollmentTarget,
        r#"select case when g.status = 'active' and g.expires_at <= now() then 'expired' else g.status end
                    as "status!: GrantStatus",
                  g.subject_user_id, p.name as peer_name, g.current_serial
             from federation_grants g join federation_peers p on p.id = g.peer_id
            where g.id = $1 and p.id = $2 for update of g, p"#,
        grant_id,
        peer_id,
    )
    .fetch_optional(conn)
    .await
}

/// Makes `serial` the grant's only valid certificate and the grant active (enrollment and
/// re-enrollment: no grace for the serial it replaces).
///
/// # Errors
/// Database errors.
pub async fn activate(
    conn: &mut PgConnection,
    id: Uuid,
    serial: &str,
    not_after: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "update federation_grants set status = 'active', activated_at = coalesce(activated_at, now()),
                current_serial = $2, cert_not_after = $3, previous_serial = null, previous_serial_grace_until = null
         where id = $1",
        id,
        serial,
        not_after,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// The grant's peer name and current serial, the grant locked, for a renewal.
///
/// # Errors
/// Database errors (a missing grant included).
pub async fn lock_for_renewal(conn: &mut PgConnection, id: Uuid) -> Result<(String, Option<String>), sqlx::Error> {
    let row = sqlx::query!(
        "select p.name, g.current_serial
           from federation_grants g join federation_peers p on p.id = g.peer_id
          where g.id = $1 for update of g",
        id
    )
    .fetch_one(conn)
    .await?;
    Ok((row.name, row.current_serial))
}

/// Makes `serial` current and keeps the previous one accepted for `grace`.
///
/// # Errors
/// Database errors.
pub async fn renewed(
    conn: &mut PgConnection,
    id: Uuid,
    serial: &str,
    not_after: DateTime<Utc>,
    grace: chrono::Duration,
) -> Result<(), sqlx::Error> {
    let grace = sqlx::postgres::types::PgInterval::try_from(grace).map_err(sqlx::Error::Encode)?;
    sqlx::query!(
        "update federation_grants
            set previous_serial = current_serial, previous_serial_grace_until = now() + $3,
                current_serial = $2, cert_not_after = $4, renewed_at = now()
          where id = $1",
        id,
        serial,
        grace,
        not_after,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// A grant, its peer and its subject as the guard and explain judge them.
#[derive(Debug, Clone)]
pub struct GrantCheck {
    pub status: GrantStatus,
    pub expires_at: Option<DateTime<Utc>>,
    pub subject_user_id: Option<Uuid>,
    pub scope: serde_json::Value,
    pub scope_version: i32,
    pub peer_id: Uuid,
    pub peer_state: PeerState,
    pub current_serial: Option<String>,
    pub previous_serial: Option<String>,
    pub previous_serial_grace_until: Option<DateTime<Utc>>,
    /// The subject exists and is enabled.
    pub subject_active: bool,
    /// The subject's teams, ordered.
    pub subject_teams: Vec<Uuid>,
    pub rate_per_minute: Option<i32>,
}

/// Grant, peer and subject in one statement.
///
/// # Errors
/// Database errors.
pub async fn check(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<GrantCheck>, sqlx::Error> {
    sqlx::query_as!(
        GrantCheck,
        r#"select g.status as "status: GrantStatus", g.expires_at, g.subject_user_id, g.scope, g.scope_version,
                  g.peer_id, p.state as "peer_state: PeerState", g.current_serial, g.previous_serial,
                  g.previous_serial_grace_until,
                  coalesce(u.disabled_at is null, false) as "subject_active!",
                  array(select m.team_id from team_members m where m.user_id = g.subject_user_id order by m.team_id)
                    as "subject_teams!",
                  g.rate_per_minute
             from federation_grants g
             join federation_peers p on p.id = g.peer_id
             left join users u on u.id = g.subject_user_id
            where g.id = $1"#,
        id
    )
    .fetch_optional(db)
    .await
}

/// The certificate facts of one grant, for a peer's health.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GrantCertificate {
    pub grant_id: Uuid,
    pub status: GrantStatus,
    pub serial: Option<String>,
    pub not_after: Option<DateTime<Utc>>,
    pub renewed_at: Option<DateTime<Utc>>,
}

/// The certificates of a peer's grants, oldest grant first.
///
/// # Errors
/// Database errors.
pub async fn certificates_of_peer(
    db: impl PgExecutor<'_>,
    peer_id: Uuid,
) -> Result<Vec<GrantCertificate>, sqlx::Error> {
    sqlx::query_as!(
        GrantCertificate,
        r#"select id as grant_id, status as "status: GrantStatus", current_serial as serial,
                  cert_not_after as not_after, renewed_at
             from federation_grants where peer_id = $1 order by created_at, id"#,
        peer_id
    )
    .fetch_all(db)
    .await
}

/// The id of the user with this email (case-insensitively), to name a grant's subject.
///
/// # Errors
/// Database errors.
pub async fn subject_by_email(db: impl PgExecutor<'_>, email: &str) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar!("select id from users where lower(email) = lower($1)", email).fetch_optional(db).await
}

/// Email and name of the subjects `ids`, to show beside a grant's ids.
///
/// # Errors
/// Database errors.
pub async fn subject_names(db: impl PgExecutor<'_>, ids: &[Uuid]) -> Result<Vec<(Uuid, String, String)>, sqlx::Error> {
    let rows = sqlx::query!("select id, email, name from users where id = any($1)", ids).fetch_all(db).await?;
    Ok(rows.into_iter().map(|r| (r.id, r.email, r.name)).collect())
}

/// Whether the user exists (enabled or not), to name as a grant's subject.
///
/// # Errors
/// Database errors.
pub async fn subject_exists(db: impl PgExecutor<'_>, id: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(r#"select exists (select 1 from users where id = $1) as "exists!""#, id).fetch_one(db).await
}

/// The subject's teams, ordered; `None` when the subject is missing or disabled.
///
/// # Errors
/// Database errors.
pub async fn subject_teams(
    db: impl sqlx::Acquire<'_, Database = sqlx::Postgres>,
    id: Uuid,
) -> Result<Option<Vec<Uuid>>, sqlx::Error> {
    let mut conn = db.acquire().await?;
    let active = sqlx::query_scalar!(r#"select disabled_at is null as "active!" from users where id = $1"#, id)
        .fetch_optional(&mut *conn)
        .await?;
    if active != Some(true) {
        return Ok(None);
    }
    let teams = sqlx::query_scalar!("select team_id from team_members where user_id = $1 order by team_id", id)
        .fetch_all(&mut *conn)
        .await?;
    Ok(Some(teams))
}
