//! `tessera bench queue`: the two figures of issue 6, both with durable commits
//! (`synchronous_commit = on`, checked and printed):
//!
//! 1. burn-down: N no-op jobs (default 200 000) are enqueued first (multi-row inserts), then the
//!    real workers ([`QueueRuntime`]) run them; the clock stops when the database says every one
//!    is `done` (completions are written in batches, so the handler count alone would flatter);
//! 2. latency: 1 000 sequential samples of "enqueue in a transaction, commit, wait for the
//!    handler to start", measured from the moment `commit` returns to the first line of the
//!    handler (the wake-up travels through LISTEN/NOTIFY).
//!
//! The bench uses its own queue (`bench-<random>`) and node id, and deletes its jobs at the end,
//! so it can run against any gateway database; give it its own data dir to keep it apart.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use tokio::sync::mpsc;

use crate::config::Config;
use crate::queue::settings::QueueSettings;
use crate::queue::{HandlerRegistry, NewJob, QueueRuntime, enqueue, enqueue_many};
use crate::services::Database;

#[derive(Debug, Args)]
pub struct QueueBench {
    /// No-op jobs for the burn-down.
    #[arg(long, default_value_t = 200_000)]
    jobs: u32,
    /// Sequential latency samples.
    #[arg(long, default_value_t = 1_000)]
    samples: u32,
    /// Claim loops for the burn-down.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Most jobs per claim statement.
    #[arg(long, default_value_t = 1_000)]
    batch: i64,
    /// Handlers running at once (split over the claim loops).
    #[arg(long, default_value_t = 4_000)]
    concurrency: i32,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Runs the bench and prints its figures.
///
/// # Errors
/// Database errors, or a server with `synchronous_commit` off.
pub async fn run(config: &Config, args: &QueueBench) -> anyhow::Result<()> {
    let db = Database::open(config, 24).await?;
    let result = bench(&db.pool, args).await;
    db.close().await;
    result
}

async fn bench(pool: &sqlx::PgPool, args: &QueueBench) -> anyhow::Result<()> {
    crate::store::migrate(pool).await?;
    let sync =
        sqlx::query_scalar!(r#"select current_setting('synchronous_commit') as "sync!""#).fetch_one(pool).await?;
    anyhow::ensure!(sync == "on", "synchronous_commit is '{sync}'; the figures must be taken with durable commits");
    let suffix = hex::encode(rand::random::<[u8; 4]>());
    let queue = format!("bench-{suffix}");
    let node = format!("bench{suffix}");
    crate::queue::set_concurrency(pool, &queue, args.concurrency).await?;
    println!("tessera bench queue (synchronous_commit = {sync}, queue {queue})");

    // Earlier runs leave dead rows behind (their jobs are deleted at the end); clear them so that
    // runs are comparable.
    sqlx::query!("vacuum (analyze) queue.jobs").execute(pool).await?;

    // 1. Burn-down.
    let t = Instant::now();
    let mut n = 0u32;
    while n < args.jobs {
        let chunk: Vec<NewJob> = (n..(n + 10_000).min(args.jobs))
            .map(|i| NewJob::new(&queue, "bench.noop", serde_json::json!({ "n": i })))
            .collect();
        n += chunk.len() as u32;
        enqueue_many(pool, &chunk).await?;
    }
    let enqueue_secs = t.elapsed().as_secs_f64();
    println!(
        "  enqueued {} jobs in {:.2} s ({:.0} jobs/s, multi-row inserts)",
        args.jobs,
        enqueue_secs,
        f64::from(args.jobs) / enqueue_secs
    );
    let ran = Arc::new(AtomicU64::new(0));
    let mut registry = HandlerRegistry::new();
    {
        let ran = ran.clone();
        registry.register("bench.noop", move |_job| {
            ran.fetch_add(1, Ordering::Relaxed);
            async { Ok(()) }
        });
    }
    let settings = QueueSettings {
        workers: args.workers.max(1),
        batch: args.batch,
        poll_interval: Duration::from_millis(50),
        lease: Duration::from_secs(120),
        ..QueueSettings::default()
    };
    let t = Instant::now();
    let runtime = QueueRuntime::start(pool, &node, &[&queue], registry, &settings).await?;
    while ran.load(Ordering::Relaxed) < u64::from(args.jobs) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    loop {
        let open: i64 = sqlx::query_scalar!(
            r#"select count(*) as "n!" from queue.jobs where queue = $1 and status in ('pending', 'running')"#,
            queue
        )
        .fetch_one(pool)
        .await?;
        if open == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let burn = t.elapsed();
    runtime.shutdown().await;
    let done =
        sqlx::query_scalar!(r#"select count(*) as "n!" from queue.jobs where queue = $1 and status = 'done'"#, queue)
            .fetch_one(pool)
            .await?;
    println!(
        "  burn-down: {} no-op jobs done in {:.2} s = {:.0} jobs/s ({} claim loops, batch {}, {} done in the database)",
        args.jobs,
        burn.as_secs_f64(),
        f64::from(args.jobs) / burn.as_secs_f64(),
        settings.workers,
        settings.batch,
        done
    );

    // 2. Latency, one job at a time.
    let (tx, mut rx) = mpsc::unbounded_channel::<(u32, Instant)>();
    let mut registry = HandlerRegistry::new();
    registry.register("bench.latency", move |job| {
        let started = Instant::now();
        let seq = job.payload.get("seq").and_then(serde_json::Value::as_u64).unwrap_or(0) as u32;
        let _ = tx.send((seq, started));
        async { Ok(()) }
    });
    let settings = QueueSettings { workers: 1, batch: 16, ..settings };
    let runtime = QueueRuntime::start(pool, &format!("{node}l"), &[&queue], registry, &settings).await?;
    tokio::time::sleep(Duration::from_millis(200)).await; // the listener is connected
    let mut samples = Vec::with_capacity(args.samples as usize);
    for seq in 0..args.samples {
        let mut txn = pool.begin().await?;
        enqueue(&mut *txn, &NewJob::new(&queue, "bench.latency", serde_json::json!({ "seq": seq }))).await?;
        txn.commit().await?;
        let committed = Instant::now();
        loop {
            let Some((got, started)) = rx.recv().await else { anyhow::bail!("the latency handler stopped") };
            if got == seq {
                samples.push(started.saturating_duration_since(committed));
                break;
            }
        }
    }
    runtime.shutdown().await;
    samples.sort();
    let mean = samples.iter().sum::<Duration>() / u32::try_from(samples.len().max(1)).unwrap_or(1);
    println!(
        "  latency (commit returned -> handler start, {} sequential samples): p50 {:.3} ms  p99 {:.3} ms  mean {:.3} ms  max {:.3} ms",
        samples.len(),
        ms(percentile(&samples, 0.50)),
        ms(percentile(&samples, 0.99)),
        ms(mean),
        ms(samples.last().copied().unwrap_or_default()),
    );

    sqlx::query!("delete from queue.jobs where queue = $1", queue).execute(pool).await?;
    sqlx::query!("delete from queue.queues where name = $1", queue).execute(pool).await?;
    Ok(())
}
