//! `tessera bench audit`: retention of the partitioned audit log under write load.
//!
//! 1. seed: `--rows` rows (default 10 M) spread evenly over the last `--days` days (default 120),
//!    into day partitions created first, so the rows land where retention finds them; every run
//!    empties the log and seeds afresh, so runs are comparable;
//! 2. writes before: `--writers` tasks write 512-row batches through the audit writer's own
//!    statement for `--seconds`, rows per second;
//! 3. writes during retention: the same load, and one second in, retention
//!    ([`crate::federation::audit::maintain`], `--retention-days`, default 90) drops the days past it;
//!    rows per second over the same span, and how long the drop took.
//!
//! It refuses a database whose audit log holds rows it did not write (verb `bench`): give it a
//! data dir of its own (`--data-dir .tessera-bench-audit`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Args;

use crate::config::Config;
use crate::federation::audit::{AuditEntry, write_batch};
use crate::services::Database;
use crate::store::audit as audit_log;

#[derive(Debug, Args)]
pub struct AuditBench {
    /// Rows to seed (spread over --days).
    #[arg(long, default_value_t = 10_000_000)]
    rows: u64,
    /// Days the seeded rows span, ending today.
    #[arg(long, default_value_t = 120)]
    days: u32,
    /// Days retention keeps.
    #[arg(long, default_value_t = 90)]
    retention_days: u32,
    /// Seconds per measured phase.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Concurrent batch writers.
    #[arg(long, default_value_t = 2)]
    writers: usize,
}

/// Runs the bench and prints its figures.
///
/// # Errors
/// Database errors, or a database with audit rows of its own.
pub async fn run(config: &Config, args: &AuditBench) -> anyhow::Result<()> {
    let db = Database::open(config, 8).await?;
    let result = bench(&db.pool, args).await;
    db.close().await;
    result
}

async fn bench(pool: &sqlx::PgPool, args: &AuditBench) -> anyhow::Result<()> {
    crate::store::migrate(pool).await?;
    let foreign = audit_log::holds_other_verbs(pool, "bench").await?;
    anyhow::ensure!(
        !foreign,
        "this database's audit log holds real rows; run the bench on a data dir of its own (--data-dir .tessera-bench-audit)"
    );
    seed(pool, args).await?;
    let before = measure(pool, args, None).await?;
    let during = measure(pool, args, Some(args.retention_days)).await?;
    println!("audit log retention, {} writers of 512-row batches, {} s per phase", args.writers, args.seconds);
    println!("  rows before retention     {:>12}", before.rows_before);
    println!("  writes before             {:>12.0} rows/s", before.rate);
    println!("  writes during retention   {:>12.0} rows/s ({:.2} of before)", during.rate, during.rate / before.rate);
    if let Some((took, dropped)) = during.retention {
        println!("  retention dropped         {dropped:>12} day partitions in {:.1} ms", took.as_secs_f64() * 1000.0);
    }
    println!("  rows after retention      {:>12}", during.rows_after);
    Ok(())
}

/// Creates the day partitions of the seeded span, then inserts the rows that are missing.
async fn seed(pool: &sqlx::PgPool, args: &AuditBench) -> anyhow::Result<()> {
    audit_log::truncate(pool).await?;
    let want = i64::try_from(args.rows).unwrap_or(i64::MAX);
    audit_log::ensure_days_back(pool, i32::try_from(args.days).unwrap_or(i32::MAX)).await?;
    let started = Instant::now();
    let (mut done, chunk) = (0i64, 1_000_000i64);
    let span_secs = i64::from(args.days) * 86_400;
    while done < want {
        let n = chunk.min(want - done);
        audit_log::seed_bench_rows(pool, done, done + n - 1, span_secs as f64, want as f64).await?;
        done += n;
        eprintln!("seeded {done} of {want} rows ({:.0} s)", started.elapsed().as_secs_f64());
    }
    audit_log::analyze(pool).await?;
    Ok(())
}

struct Phase {
    rate: f64,
    rows_before: i64,
    rows_after: i64,
    retention: Option<(Duration, i32)>,
}

async fn measure(pool: &sqlx::PgPool, args: &AuditBench, retention: Option<u32>) -> anyhow::Result<Phase> {
    let count = || audit_log::count(pool);
    let rows_before = count().await?;
    let written = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    for _ in 0..args.writers {
        let (pool, written) = (pool.clone(), written.clone());
        tasks.push(tokio::spawn(async move {
            let entry = AuditEntry {
                verb: "bench",
                resource: Some("tasks"),
                outcome: "allowed",
                rows: Some(20),
                bytes_out: Some(4096),
                latency_ms: Some(1.5),
                ..Default::default()
            };
            let batch = vec![entry; 512];
            while Instant::now() < until {
                write_batch(&pool, &batch).await?;
                written.fetch_add(512, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    let started = Instant::now();
    let retention = match retention {
        Some(days) => {
            tokio::time::sleep(Duration::from_secs(1).min(Duration::from_secs(args.seconds) / 2)).await;
            let t = Instant::now();
            let (_, dropped) = crate::federation::audit::maintain(pool, days).await?;
            Some((t.elapsed(), dropped))
        }
        None => None,
    };
    for task in tasks {
        task.await??;
    }
    #[expect(clippy::cast_precision_loss, reason = "row counts far below 2^52")]
    let rate = written.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    Ok(Phase { rate, rows_before, rows_after: count().await?, retention })
}
