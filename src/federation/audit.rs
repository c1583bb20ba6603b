//! The federation audit log (DESIGN §5).
//!
//! Trust events (enrollment, renewal, revocation) are written with [`record`] in the
//! transaction of the change they describe. Per-request rows of the verbs and the guard go
//! through an [`AuditSink`]: a bounded in-memory buffer drained by one task that writes batches
//! (one multi-row insert per 512 rows, or 200 ms after the first row of a batch), so the request
//! path never waits on an audit commit, the writer commits a few times a second under load, and
//! rows land within a second. If the buffer is ever full, the loss is counted and
//! recorded as a `gap` row with the number of rows dropped; it is never silent.
//!
//! **No input makes a row unwritable.** Every text is cleaned on its way in ([`clean`]): NUL
//! bytes (which Postgres `text` refuses) become U+FFFD and each field has a length bound, so a
//! peer cannot poison a batch with a crafted path or body. Should a batch still fail on a data
//! error (a constraint added later, say), it is retried row by row: one bad row never takes the
//! others with it, and a row that still fails becomes a `gap` row that names the database's
//! cause. Only an unreachable database loses a whole batch, and that too is recorded as a gap
//! with its cause once the database is back.
//!
//! **Exactly one row per federation request.** [`one_row_per_request`] wraps every route under
//! `/api/federation/v1/`: the guard and the verbs write the specific row, and a request that
//! ends without one (a 401 without a certificate, a malformed body, an unknown route,
//! `capabilities`) gets a row derived from its status, so probing is never invisible.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::Utc;
use sqlx::{PgExecutor, PgPool};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::store::audit::{self as store, NewAuditRow};

const BUFFER: usize = 16_384;
/// Length bounds, in characters, of the texts an audit row stores.
const MAX_SHORT: usize = 64;
const MAX_REASON: usize = 1_000;
const BATCH: usize = 512;
const FLUSH_EVERY: Duration = Duration::from_millis(200);

/// One audit row.
#[derive(Debug, Default, Clone)]
pub struct AuditEntry<'a> {
    pub grant_id: Option<Uuid>,
    pub peer_id: Option<Uuid>,
    pub subject_user_id: Option<Uuid>,
    pub verb: &'a str,
    pub resource: Option<&'a str>,
    pub query_hash: Option<String>,
    /// `allowed`, `denied`, `not_found`, `enrolled`, `renewed`, `revoked`, `gap`...
    pub outcome: &'a str,
    pub deny_code: Option<&'a str>,
    /// Internal reason; never sent to the peer.
    pub reason: Option<String>,
    pub rows: Option<i32>,
    pub bytes_out: Option<i64>,
    pub latency_ms: Option<f64>,
}

/// Writes one audit row, in `db`'s transaction when it is one.
///
/// # Errors
/// Database errors.
pub async fn record(db: impl PgExecutor<'_>, e: &AuditEntry<'_>) -> Result<(), sqlx::Error> {
    let row = pending(e);
    let _ = REQUEST_AUDITED.try_with(|audited| audited.set(true));
    store::insert(db, &row).await
}

/// Days of partitions created ahead of today by [`maintain`].
pub const PARTITIONS_AHEAD_DAYS: i32 = 7;

/// Retention of the audit log (see the partitioning migration): creates the day partitions
/// for today and the week ahead (and for any day whose rows landed in the default partition),
/// and drops whole days older than `retention_days`. Dropping a partition is a catalogue change,
/// not a delete, so it takes milliseconds whatever the rows; a lock it cannot get within a
/// second is given up and tried on the next run rather than queueing writers behind it.
///
/// # Errors
/// Database errors (a lock timeout included).
pub async fn maintain(pool: &PgPool, retention_days: u32) -> Result<(i32, i32), sqlx::Error> {
    let retention = i32::try_from(retention_days).unwrap_or(i32::MAX);
    let created = store::create_partitions(pool, retention, PARTITIONS_AHEAD_DAYS).await?;
    let expired = store::expired_days(pool, retention).await?;
    store::drop_days(pool, &expired).await?;
    let dropped = i32::try_from(expired.len()).unwrap_or(i32::MAX);
    if created > 0 || dropped > 0 {
        tracing::info!(created, dropped, retention_days, "audit log partitions maintained");
    }
    Ok((created, dropped))
}

/// Makes `text` storable: NUL bytes become U+FFFD and the text is cut to `max` characters
/// (marked with `…`). Rust strings are valid UTF-8 already; bytes that were not (a lossy
/// decode upstream) arrive as U+FFFD.
pub fn clean(text: &str, max: usize) -> String {
    let mut out: String = text.chars().take(max).map(|c| if c == '\0' { '\u{FFFD}' } else { c }).collect();
    if text.chars().nth(max).is_some() {
        out.pop();
        out.push('…');
    }
    out
}

/// The row of `e`, its texts cleaned.
fn pending(e: &AuditEntry<'_>) -> NewAuditRow {
    let short = |s: &str| clean(s, MAX_SHORT);
    NewAuditRow {
        at: Utc::now(),
        grant_id: e.grant_id,
        peer_id: e.peer_id,
        subject_user_id: e.subject_user_id,
        verb: short(e.verb),
        resource: e.resource.map(short),
        query_hash: e.query_hash.as_deref().map(|q| clean(q, 2 * MAX_SHORT)),
        outcome: short(e.outcome),
        deny_code: e.deny_code.map(short),
        reason: e.reason.as_deref().map(|r| clean(r, MAX_REASON)),
        rows: e.rows,
        bytes_out: e.bytes_out,
        latency_ms: e.latency_ms,
    }
}

/// The `gap` row recording that `lost` rows could not be stored, and why.
fn gap(lost: u64, cause: &str) -> NewAuditRow {
    NewAuditRow {
        at: Utc::now(),
        grant_id: None,
        peer_id: None,
        subject_user_id: None,
        verb: "audit".into(),
        resource: None,
        query_hash: None,
        outcome: "gap".into(),
        deny_code: None,
        reason: Some(clean(&format!("{lost} audit rows lost: {cause}"), MAX_REASON)),
        rows: i32::try_from(lost).ok(),
        bytes_out: None,
        latency_ms: None,
    }
}

/// The per-request audit writer (cheap to clone).
#[derive(Debug, Clone)]
pub struct AuditSink {
    tx: mpsc::Sender<NewAuditRow>,
    dropped: Arc<AtomicU64>,
}

impl AuditSink {
    /// Starts the batch writer on `pool`. It stops, after a final flush, when every sink clone
    /// is dropped.
    pub fn start(pool: PgPool) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(BUFFER);
        let dropped = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(writer(pool, rx, dropped.clone()));
        (Self { tx, dropped }, task)
    }

    /// Queues a row without waiting. A full buffer drops the row and counts it.
    pub fn submit(&self, e: &AuditEntry<'_>) {
        let _ = REQUEST_AUDITED.try_with(|audited| audited.set(true));
        let row = pending(e);
        // The audit step of the request's trace (the batch write itself runs later, elsewhere).
        let _span = tracing::debug_span!(
            "federation.audit",
            verb = %row.verb,
            resource = row.resource.as_deref(),
            outcome = %row.outcome,
            deny_code = row.deny_code.as_deref(),
            grant_id = row.grant_id.map(tracing::field::display),
            rows = row.rows,
        )
        .entered();
        metrics::counter!(
            crate::http::metrics::FEDERATION_REQUESTS,
            "verb" => row.verb.clone(),
            "outcome" => row.outcome.clone(),
            "deny_code" => row.deny_code.clone().unwrap_or_default()
        )
        .increment(1);
        if self.tx.try_send(row).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(crate::http::metrics::AUDIT_ROWS_LOST, "cause" => "buffer_full").increment(1);
        }
        metrics::gauge!(crate::http::metrics::AUDIT_QUEUE_DEPTH).set((BUFFER - self.tx.capacity()) as f64);
    }
}

async fn writer(pool: PgPool, mut rx: mpsc::Receiver<NewAuditRow>, dropped: Arc<AtomicU64>) {
    let mut batch = Vec::with_capacity(BATCH);
    // Rows the last write could not store, and why: a gap row in the next batch.
    let mut unwritten: Option<(u64, String)> = None;
    loop {
        let first = tokio::time::timeout(FLUSH_EVERY, rx.recv()).await;
        let mut closed = matches!(first, Ok(None));
        if let Ok(Some(row)) = first {
            // Collect for up to FLUSH_EVERY after the first row, or until the batch is full: one
            // commit (one WAL flush) per batch. Writing whatever had arrived at once made a small
            // transaction per handful of requests under load, and those commits cost the list
            // verb about 15% of its throughput in `bench list`.
            batch.push(row);
            let deadline = tokio::time::Instant::now() + FLUSH_EVERY;
            while batch.len() < BATCH && !closed {
                let room = BATCH - batch.len();
                match tokio::time::timeout_at(deadline, rx.recv_many(&mut batch, room)).await {
                    Ok(0) => closed = true,
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        }
        let lost = dropped.swap(0, Ordering::Relaxed);
        if lost > 0 {
            batch.push(gap(lost, "buffer full"));
        }
        if let Some((n, cause)) = unwritten.take() {
            batch.push(gap(n, &cause));
        }
        if !batch.is_empty() {
            let started = std::time::Instant::now();
            unwritten = write(&pool, &batch).await;
            metrics::histogram!(crate::http::metrics::AUDIT_BATCH_SECONDS).record(started.elapsed().as_secs_f64());
            if let Some((n, _)) = &unwritten {
                metrics::counter!(crate::http::metrics::AUDIT_ROWS_LOST, "cause" => "write_failed").increment(*n);
            }
            batch.clear();
        }
        // Record a loss at once; only if even that fails (no database) does it wait for the
        // next batch.
        if let Some((n, cause)) = unwritten.take()
            && store::insert_batch(&pool, &[gap(n, &cause)]).await.is_err()
        {
            unwritten = Some((n, cause));
        }
        if closed {
            return;
        }
    }
}

/// Writes `rows` in one statement; on a data error, row by row. Returns how many rows could not
/// be stored and the database's cause, for a gap row.
async fn write(pool: &PgPool, rows: &[NewAuditRow]) -> Option<(u64, String)> {
    let e = match store::insert_batch(pool, rows).await {
        Ok(()) => return None,
        Err(e) => e,
    };
    // A data error belongs to some row; anything else (no connection, a timeout) would fail
    // each row alike, so retrying one by one would only multiply the wait.
    if !matches!(e, sqlx::Error::Database(_)) || rows.len() == 1 {
        tracing::error!(error = %e, rows = rows.len(), "could not write federation audit rows");
        return Some((rows.len() as u64, e.to_string()));
    }
    let mut failed = 0u64;
    let mut cause = String::new();
    for row in rows {
        if let Err(e) = store::insert_batch(pool, std::slice::from_ref(row)).await {
            tracing::error!(error = %e, verb = %row.verb, outcome = %row.outcome, "could not write a federation audit row");
            failed += 1;
            cause = e.to_string();
        }
    }
    (failed > 0).then_some((failed, cause))
}

/// Writes `entries` in one statement, exactly as the batch writer does (benchmarks measure
/// the writer's own statement with it).
///
/// # Errors
/// Database errors.
pub async fn write_batch(pool: &PgPool, entries: &[AuditEntry<'_>]) -> Result<(), sqlx::Error> {
    let rows: Vec<NewAuditRow> = entries.iter().map(pending).collect();
    store::insert_batch(pool, &rows).await
}

tokio::task_local! {
    /// Set while a federation request runs; [`AuditSink::submit`] marks it.
    static REQUEST_AUDITED: std::cell::Cell<bool>;
}

/// Runs `fut` (one federation request) and reports whether it submitted an audit row.
pub async fn tracking_audit<F: std::future::Future>(fut: F) -> (F::Output, bool) {
    REQUEST_AUDITED
        .scope(std::cell::Cell::new(false), async move {
            let out = fut.await;
            (out, REQUEST_AUDITED.with(std::cell::Cell::get))
        })
        .await
}
