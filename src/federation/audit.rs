//! The federation audit log (DESIGN §5).
//!
//! Trust events (enrollment, renewal, revocation) are written with [`record`] in the
//! transaction of the change they describe. Per-request rows of the verbs and the guard go
//! through an [`AuditSink`]: a bounded in-memory buffer drained by one task that writes batches
//! (one multi-row insert per 512 rows, or 200 ms after the first row of a batch), so the request
//! path never waits on an audit commit, the writer commits a few times a second under load, and
//! rows land within a second. If the buffer is ever full, the loss is counted and
//! recorded as a `gap` row with the number of rows dropped; it is never silent.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, PgPool};
use tokio::sync::mpsc;
use uuid::Uuid;

const BUFFER: usize = 16_384;
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

/// An owned audit row waiting in the buffer.
#[derive(Debug, Clone)]
struct Pending {
    at: DateTime<Utc>,
    grant_id: Option<Uuid>,
    peer_id: Option<Uuid>,
    subject_user_id: Option<Uuid>,
    verb: String,
    resource: Option<String>,
    query_hash: Option<String>,
    outcome: String,
    deny_code: Option<String>,
    reason: Option<String>,
    rows: Option<i32>,
    bytes_out: Option<i64>,
    latency_ms: Option<f64>,
}

/// The per-request audit writer (cheap to clone).
#[derive(Debug, Clone)]
pub struct AuditSink {
    tx: mpsc::Sender<Pending>,
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
        let row = Pending {
            at: Utc::now(),
            grant_id: e.grant_id,
            peer_id: e.peer_id,
            subject_user_id: e.subject_user_id,
            verb: e.verb.to_string(),
            resource: e.resource.map(str::to_string),
            query_hash: e.query_hash.clone(),
            outcome: e.outcome.to_string(),
            deny_code: e.deny_code.map(str::to_string),
            reason: e.reason.clone(),
            rows: e.rows,
            bytes_out: e.bytes_out,
            latency_ms: e.latency_ms,
        };
        if self.tx.try_send(row).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn writer(pool: PgPool, mut rx: mpsc::Receiver<Pending>, dropped: Arc<AtomicU64>) {
    let mut batch = Vec::with_capacity(BATCH);
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
            batch.push(Pending {
                at: Utc::now(),
                grant_id: None,
                peer_id: None,
                subject_user_id: None,
                verb: "audit".into(),
                resource: None,
                query_hash: None,
                outcome: "gap".into(),
                deny_code: None,
                reason: Some(format!("{lost} audit rows dropped: buffer full")),
                rows: i32::try_from(lost).ok(),
                bytes_out: None,
                latency_ms: None,
            });
        }
        if !batch.is_empty() {
            if let Err(e) = insert_batch(&pool, &batch).await {
                tracing::error!(error = %e, rows = batch.len(), "could not write federation audit rows");
                dropped.fetch_add(batch.len() as u64, Ordering::Relaxed);
            }
            batch.clear();
        }
        if closed {
            return;
        }
    }
}

async fn insert_batch(pool: &PgPool, rows: &[Pending]) -> Result<(), sqlx::Error> {
    macro_rules! col {
        ($f:ident) => {
            rows.iter().map(|r| r.$f.clone()).collect::<Vec<_>>()
        };
    }
    sqlx::query(
        "insert into federation_audit_log
            (at, grant_id, peer_id, subject_user_id, verb, resource, query_hash, outcome, deny_code, reason, rows, bytes_out, latency_ms)
         select * from unnest($1::timestamptz[], $2::uuid[], $3::uuid[], $4::uuid[], $5::text[], $6::text[], $7::text[],
                              $8::text[], $9::text[], $10::text[], $11::int[], $12::bigint[], $13::float8[])",
    )
    .bind(col!(at))
    .bind(col!(grant_id))
    .bind(col!(peer_id))
    .bind(col!(subject_user_id))
    .bind(col!(verb))
    .bind(col!(resource))
    .bind(col!(query_hash))
    .bind(col!(outcome))
    .bind(col!(deny_code))
    .bind(col!(reason))
    .bind(col!(rows))
    .bind(col!(bytes_out))
    .bind(col!(latency_ms))
    .execute(pool)
    .await?;
    Ok(())
}
