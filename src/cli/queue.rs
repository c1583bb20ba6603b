//! `tessera queue ...`: inspect and steer the job queue from the operator's shell.
//!
//! Like `tessera grant ...`, these commands work on the gateway's database directly (the same
//! functions the admin API under `/api/admin/queues` calls): the operator has the data dir or
//! `DATABASE_URL` at hand, and a stuck queue must be fixable even when the HTTP side is not.
//! Exit codes ([`super::exit`]): 0 ok; 1 the database cannot be reached; 3 rejected (unknown
//! queue or job, a job that cannot be retried); 64 usage (a bad name or status, `drain` without
//! `--yes`).

use std::collections::HashSet;
use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;

use super::exit::Exit;
use crate::config::Config;
use crate::queue::{self, JobView, QueueStats, RetryError};
use crate::services::Database;

#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Every queue with its state and job counts.
    List {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Job counts per status (one queue, or all), paused flag, concurrency, oldest pending job.
    Stats {
        name: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Stop workers from claiming this queue's jobs (running jobs finish).
    Pause { name: String },
    /// Let workers claim this queue's jobs again.
    Resume { name: String },
    /// Jobs of one queue or all.
    #[command(subcommand)]
    Jobs(JobsCommand),
    /// Cancel every pending job of one queue (running jobs finish). Needs --yes.
    Drain {
        name: String,
        /// Confirm: the pending jobs are cancelled, not run.
        #[arg(long)]
        yes: bool,
    },
    /// Put a dead, failed or cancelled job back to pending with a fresh attempt count.
    Retry { job_id: String },
    /// Set how many of this queue's jobs one gateway runs at once (1..=4096; read when workers start).
    Concurrency { name: String, concurrency: i32 },
}

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// The most recently changed jobs, newest last; --follow keeps printing changes.
    Tail {
        name: Option<String>,
        /// Only jobs with this status.
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: i64,
        /// Keep polling and print jobs as they change (Ctrl-C to stop).
        #[arg(long, short)]
        follow: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn rejected(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("rejected: {message}");
    Exit::Refused.into()
}

fn usage(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {message}");
    Exit::Usage.into()
}

fn check_name(name: &str) -> Option<ExitCode> {
    queue::QueueName::parse(name)
        .err()
        .map(|_| usage(format!("'{name}' is not a queue name (1 to 63 characters: a-z, 0-9, '_', '.', '-')")))
}

/// Runs a queue command.
///
/// # Errors
/// The database cannot be opened or queried.
pub async fn run(config: &Config, cmd: QueueCommand) -> anyhow::Result<ExitCode> {
    // Refuse before touching anything: drain is the one destructive command.
    if let QueueCommand::Drain { name, yes: false } = &cmd {
        eprintln!(
            "refusing to drain queue '{name}' without confirmation: every pending job of it would be cancelled.\n\
             To confirm, run:\n  tessera queue drain {name} --yes"
        );
        return Ok(Exit::Usage.into());
    }
    let db = Database::open(config, 2).await?;
    let result = async {
        crate::store::migrate(&db.pool).await?;
        inner(&db.pool, cmd).await
    }
    .await;
    db.close().await;
    result
}

async fn inner(pool: &sqlx::PgPool, cmd: QueueCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        QueueCommand::List { json } | QueueCommand::Stats { name: None, json } => {
            let all = queue::list_queues(pool).await?;
            print_stats(&all, json)?;
        }
        QueueCommand::Stats { name: Some(name), json } => {
            if let Some(code) = check_name(&name) {
                return Ok(code);
            }
            match queue::stats(pool, &name).await? {
                Some(s) => print_stats(std::slice::from_ref(&s), json)?,
                None => return Ok(rejected(format!("no queue '{name}'"))),
            }
        }
        QueueCommand::Pause { name } => {
            if let Some(code) = check_name(&name) {
                return Ok(code);
            }
            queue::set_paused(pool, &name, true).await?;
            eprintln!("queue '{name}' paused: workers stop claiming its jobs within one poll interval");
        }
        QueueCommand::Resume { name } => {
            if let Some(code) = check_name(&name) {
                return Ok(code);
            }
            queue::set_paused(pool, &name, false).await?;
            eprintln!("queue '{name}' resumed");
        }
        QueueCommand::Concurrency { name, concurrency } => {
            if let Some(code) = check_name(&name) {
                return Ok(code);
            }
            if !(1..=4096).contains(&concurrency) {
                return Ok(usage("concurrency must be between 1 and 4096"));
            }
            queue::set_concurrency(pool, &name, concurrency).await?;
            eprintln!("queue '{name}': concurrency {concurrency} per gateway from the next start");
        }
        QueueCommand::Drain { name, .. } => {
            if let Some(code) = check_name(&name) {
                return Ok(code);
            }
            let n = queue::drain(pool, &name).await?;
            eprintln!("queue '{name}' drained: {n} pending job(s) cancelled");
        }
        QueueCommand::Retry { job_id } => match queue::retry(pool, &job_id.to_ascii_lowercase()).await {
            Ok(job) => eprintln!("job {} is pending again (queue '{}')", job.id, job.queue),
            Err(RetryError::NotFound) => return Ok(rejected(format!("no job '{job_id}'"))),
            Err(e @ RetryError::NotRetryable(_)) => return Ok(rejected(e)),
            Err(RetryError::Db(e)) => return Err(e.into()),
        },
        QueueCommand::Jobs(JobsCommand::Tail { name, status, limit, follow, json }) => {
            if let Some(code) = name.as_deref().and_then(check_name) {
                return Ok(code);
            }
            let status = match status.as_deref().map(str::parse::<queue::JobStatus>).transpose() {
                Ok(status) => status,
                Err(e) => return Ok(usage(e)),
            };
            let limit = limit.clamp(1, 1000);
            let mut seen: HashSet<(String, queue::JobStatus, i32)> = HashSet::new();
            loop {
                let mut jobs = queue::recent_jobs(pool, name.as_deref(), status, limit).await?;
                jobs.reverse();
                for job in jobs {
                    if seen.insert((job.id.clone(), job.status, job.attempts)) {
                        print_job(&job, json)?;
                    }
                }
                if !follow {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_stats(all: &[QueueStats], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(all)?);
        return Ok(());
    }
    println!(
        "{:<24} {:<7} {:>5} {:>9} {:>8} {:>10} {:>7} {:>7} {:>9} {:>10}",
        "QUEUE", "STATE", "CONC", "PENDING", "RUNNING", "DONE", "FAILED", "DEAD", "CANCELLED", "OLDEST(s)"
    );
    for s in all {
        println!(
            "{:<24} {:<7} {:>5} {:>9} {:>8} {:>10} {:>7} {:>7} {:>9} {:>10}",
            s.name,
            if s.paused { "paused" } else { "active" },
            s.concurrency,
            s.pending,
            s.running,
            s.done,
            s.failed,
            s.dead,
            s.cancelled,
            s.oldest_pending_secs.map_or_else(|| "-".to_string(), |v| format!("{v:.1}")),
        );
    }
    Ok(())
}

fn print_job(job: &JobView, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(job)?);
    } else {
        println!(
            "{} {} {:<10} {:<9} {}/{} {}{}",
            job.updated_at.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
            job.id,
            job.queue,
            job.status,
            job.attempts,
            job.max_attempts,
            job.kind,
            job.last_error.as_deref().map(|e| format!("  error: {e}")).unwrap_or_default(),
        );
    }
    Ok(())
}
