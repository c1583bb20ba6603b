//! The federation audit log's rows and every query on them: the inserts of the writer and of
//! trust events, the filtered keyset page of `GET /api/admin/audit`, the partition retention,
//! and the seeding and counting of `tessera bench audit`.
//!
//! What a row may hold (cleaned texts, length bounds), when rows are written and what a loss
//! means belong to [`crate::federation::audit`]; this module only stores and reads rows, so
//! the table's shape is written in one place. The partitions themselves are made and dropped by
//! SQL functions of the partitioning migration (their DDL names a day, so it is built there);
//! the statements here are all static and checked against the schema at compile time.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgExecutor, PgPool};
use utoipa::ToSchema;
use uuid::Uuid;

/// A row to insert, its texts already cleaned by the caller.
#[derive(Debug, Clone)]
pub struct NewAuditRow {
    /// When the event happened; [`insert`] uses the transaction's time instead.
    pub at: DateTime<Utc>,
    pub grant_id: Option<Uuid>,
    pub peer_id: Option<Uuid>,
    pub subject_user_id: Option<Uuid>,
    pub verb: String,
    pub resource: Option<String>,
    pub query_hash: Option<String>,
    pub outcome: String,
    pub deny_code: Option<String>,
    pub reason: Option<String>,
    pub rows: Option<i32>,
    pub bytes_out: Option<i64>,
    pub latency_ms: Option<f64>,
}

/// One audit row.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditRow {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub grant_id: Option<Uuid>,
    pub peer_id: Option<Uuid>,
    pub subject_user_id: Option<Uuid>,
    pub verb: String,
    pub resource: Option<String>,
    pub query_hash: Option<String>,
    pub outcome: String,
    pub deny_code: Option<String>,
    /// The internal reason (never sent to the peer).
    pub reason: Option<String>,
    pub rows: Option<i32>,
    pub bytes_out: Option<i64>,
    pub latency_ms: Option<f64>,
}

/// Writes one row, stamped with the transaction's time (so a trust event sorts with the change
/// it describes).
///
/// # Errors
/// Database errors.
pub async fn insert(db: impl PgExecutor<'_>, row: &NewAuditRow) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "insert into federation_audit_log
            (grant_id, peer_id, subject_user_id, verb, resource, query_hash, outcome, deny_code, reason, rows, bytes_out, latency_ms)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        row.grant_id,
        row.peer_id,
        row.subject_user_id,
        row.verb,
        row.resource,
        row.query_hash,
        row.outcome,
        row.deny_code,
        row.reason,
        row.rows,
        row.bytes_out,
        row.latency_ms,
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Writes `rows` in one statement (one array per column, unnested).
///
/// # Errors
/// Database errors; then no row of the batch is stored.
pub async fn insert_batch(db: impl PgExecutor<'_>, rows: &[NewAuditRow]) -> Result<(), sqlx::Error> {
    fn col<T>(rows: &[NewAuditRow], f: impl Fn(&NewAuditRow) -> T) -> Vec<T> {
        rows.iter().map(f).collect()
    }
    // Columns that may be null are arrays of `Option`s, which the macro's check (arrays of plain
    // values) does not know; `as _` leaves their type to Postgres.
    sqlx::query!(
        "insert into federation_audit_log
            (at, grant_id, peer_id, subject_user_id, verb, resource, query_hash, outcome, deny_code, reason, rows, bytes_out, latency_ms)
         select * from unnest($1::timestamptz[], $2::uuid[], $3::uuid[], $4::uuid[], $5::text[], $6::text[], $7::text[],
                              $8::text[], $9::text[], $10::text[], $11::int[], $12::bigint[], $13::float8[])",
        &col(rows, |r| r.at),
        col(rows, |r| r.grant_id) as _,
        col(rows, |r| r.peer_id) as _,
        col(rows, |r| r.subject_user_id) as _,
        &col(rows, |r| r.verb.clone()),
        col(rows, |r| r.resource.clone()) as _,
        col(rows, |r| r.query_hash.clone()) as _,
        &col(rows, |r| r.outcome.clone()),
        col(rows, |r| r.deny_code.clone()) as _,
        col(rows, |r| r.reason.clone()) as _,
        col(rows, |r| r.rows) as _,
        col(rows, |r| r.bytes_out) as _,
        col(rows, |r| r.latency_ms) as _,
    )
    .execute(db)
    .await?;
    Ok(())
}

/// The filters of one page; all optional and combined with AND.
#[derive(Debug, Default, Clone, Copy)]
pub struct PageQuery<'a> {
    pub peer_id: Option<Uuid>,
    pub grant_id: Option<Uuid>,
    pub subject_user_id: Option<Uuid>,
    pub verb: Option<&'a str>,
    pub resource: Option<&'a str>,
    pub outcome: Option<&'a str>,
    pub deny_code: Option<&'a str>,
    /// Rows at or after.
    pub from: Option<DateTime<Utc>>,
    /// Rows before.
    pub to: Option<DateTime<Utc>>,
    /// Rows strictly behind this `(at, id)` position.
    pub after: Option<(DateTime<Utc>, i64)>,
    /// Rows to return at most.
    pub limit: i64,
}

/// Up to `q.limit` rows matching `q`, newest first (`at`, then `id`, descending).
///
/// # Errors
/// Database errors.
pub async fn page(db: impl PgExecutor<'_>, q: &PageQuery<'_>) -> Result<Vec<AuditRow>, sqlx::Error> {
    // Every filter is a bound parameter, and an absent one is `$n is null`: one static
    // statement, planned once.
    sqlx::query_as!(
        AuditRow,
        r#"select id as "id!", at as "at!", grant_id, peer_id, subject_user_id, verb as "verb!", resource, query_hash,
                outcome as "outcome!", deny_code, reason, rows, bytes_out, latency_ms
           from federation_audit_log
          where ($1::uuid is null or peer_id = $1)
            and ($2::uuid is null or grant_id = $2)
            and ($3::uuid is null or subject_user_id = $3)
            and ($4::text is null or verb = $4)
            and ($5::text is null or resource = $5)
            and ($6::text is null or outcome = $6)
            and ($7::text is null or deny_code = $7)
            and ($8::timestamptz is null or at >= $8)
            and ($9::timestamptz is null or at < $9)
            and ($10::timestamptz is null or (at, id) < ($10, $11))
          order by at desc, id desc
          limit $12"#,
        q.peer_id,
        q.grant_id,
        q.subject_user_id,
        q.verb,
        q.resource,
        q.outcome,
        q.deny_code,
        q.from,
        q.to,
        q.after.map(|(at, _)| at),
        q.after.map_or(0, |(_, id)| id),
        q.limit,
    )
    .fetch_all(db)
    .await
}

/// Creates the day partitions from today to `ahead_days` ahead (and for any day whose rows sit
/// in the default partition) in one transaction that waits at most a second for a lock;
/// returns how many it created.
///
/// # Errors
/// Database errors (a lock timeout included).
pub async fn create_partitions(pool: &PgPool, retention_days: i32, ahead_days: i32) -> Result<i32, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query!("set local lock_timeout = '1s'").execute(&mut *tx).await?;
    let created =
        sqlx::query_scalar!(r#"select federation_audit_prepare($1, $2) as "created!""#, retention_days, ahead_days)
            .fetch_one(&mut *tx)
            .await?;
    tx.commit().await?;
    Ok(created)
}

/// The names of the day partitions wholly older than `retention_days`.
///
/// # Errors
/// Database errors.
pub async fn expired_days(db: impl PgExecutor<'_>, retention_days: i32) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar!(r#"select federation_audit_expired_days($1) as "part!""#, retention_days).fetch_all(db).await
}

/// Drops the day partitions `parts` in one transaction that waits at most a second for each
/// lock.
///
/// All drops in one short transaction: each is a catalogue change of a few milliseconds, and
/// one commit (one WAL flush) for all of them kept the whole drop of 30 days at about a tenth
/// of a second in `tessera bench audit`, where a transaction per day took about one.
///
/// # Errors
/// Database errors (a lock timeout included); then none is dropped.
pub async fn drop_days(pool: &PgPool, parts: &[String]) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query!("set local lock_timeout = '1s'").execute(&mut *tx).await?;
    for part in parts {
        sqlx::query!("select federation_audit_drop_day($1)", part).execute(&mut *tx).await?;
    }
    tx.commit().await
}

/// Rows in the log.
///
/// # Errors
/// Database errors.
pub async fn count(db: impl PgExecutor<'_>) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(r#"select count(*) as "n!" from federation_audit_log"#).fetch_one(db).await
}

/// Whether the log holds a row of another verb than `verb` (the bench's own rows are `bench`).
///
/// # Errors
/// Database errors.
pub async fn holds_other_verbs(db: impl PgExecutor<'_>, verb: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(r#"select exists (select 1 from federation_audit_log where verb <> $1) as "any!""#, verb)
        .fetch_one(db)
        .await
}

/// Empties the log (every partition).
///
/// # Errors
/// Database errors.
pub async fn truncate(db: impl PgExecutor<'_>) -> Result<(), sqlx::Error> {
    sqlx::query!("truncate federation_audit_log").execute(db).await.map(|_| ())
}

/// Creates the day partitions of today and the `days` days before it.
///
/// # Errors
/// Database errors.
pub async fn ensure_days_back(db: impl PgExecutor<'_>, days: i32) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "select federation_audit_ensure_day(((now() at time zone 'UTC')::date - d)) from generate_series(0, $1::int) d",
        days
    )
    .fetch_all(db)
    .await
    .map(|_| ())
}

/// Inserts the bench rows `from..=to` of a seed of `total` rows spread evenly over the last
/// `span_secs` seconds, oldest first (row i at a fixed point of the span).
///
/// # Errors
/// Database errors.
pub async fn seed_bench_rows(
    db: impl PgExecutor<'_>,
    from: i64,
    to: i64,
    span_secs: f64,
    total: f64,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "insert into federation_audit_log (at, verb, resource, outcome, grant_id, rows, bytes_out, latency_ms, reason)
         select now() - make_interval(secs => $3::float8 - (i * $3::float8 / $4::float8)), 'bench', 'tasks', 'allowed',
                '00000000-0000-7000-8000-000000000001', 20, 4096, 1.5, 'bench seed'
           from generate_series($1::bigint, $2::bigint) i",
        from,
        to,
        span_secs,
        total,
    )
    .execute(db)
    .await
    .map(|_| ())
}

/// Refreshes the planner's statistics of the log.
///
/// # Errors
/// Database errors.
pub async fn analyze(db: impl PgExecutor<'_>) -> Result<(), sqlx::Error> {
    sqlx::query!("analyze federation_audit_log").execute(db).await.map(|_| ())
}

/// A peer's requests as the audit log saw them: the last hour's counts and its latest request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerTraffic {
    pub last_request_at: Option<DateTime<Utc>>,
    pub requests_last_hour: i64,
    pub denied_last_hour: i64,
    pub rate_limited_last_hour: i64,
    pub denials_by_code: std::collections::BTreeMap<String, i64>,
}

/// Reads [`PeerTraffic`] for `peer_id`: only the verbs a peer's own requests are audited under
/// (the admin plane's rows are not its traffic).
///
/// # Errors
/// Database errors.
pub async fn peer_traffic(pool: &PgPool, peer_id: Uuid) -> Result<PeerTraffic, sqlx::Error> {
    let counts = sqlx::query!(
        r#"select count(*) as "requests!", count(*) filter (where outcome = 'denied') as "denied!",
                  count(*) filter (where deny_code = 'rate_limited') as "rate_limited!"
             from federation_audit_log
            where peer_id = $1 and at > now() - interval '1 hour'
              and verb in ('list', 'get', 'search', 'capabilities', 'renew', 'unknown')"#,
        peer_id
    )
    .fetch_one(pool)
    .await?;
    let last_request_at = sqlx::query_scalar!(
        "select at from federation_audit_log
          where peer_id = $1 and verb in ('list', 'get', 'search', 'capabilities', 'renew', 'unknown')
          order by at desc limit 1",
        peer_id
    )
    .fetch_optional(pool)
    .await?;
    let denials_by_code = sqlx::query!(
        r#"select coalesce(deny_code, 'unknown') as "code!", count(*) as "count!" from federation_audit_log
            where peer_id = $1 and at > now() - interval '1 hour' and outcome = 'denied'
            group by 1 order by 1"#,
        peer_id
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|r| (r.code, r.count))
    .collect();
    Ok(PeerTraffic {
        last_request_at,
        requests_last_hour: counts.requests,
        denied_last_hour: counts.denied,
        rate_limited_last_hour: counts.rate_limited,
        denials_by_code,
    })
}
