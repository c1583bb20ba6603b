//! `tessera storage ...`: moving the gateway's data between tiers.

use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use sqlx::postgres::PgConnectOptions;

use crate::config::{Config, SecretUrl};
use crate::services::Database;
use crate::store::transfer::{self, TransferOptions};

#[derive(Debug, Subcommand)]
pub enum StorageCommand {
    /// Copy this gateway's database (the embedded one in tier local) into an external Postgres,
    /// table by table in foreign-key order; re-runs are idempotent and row counts are verified.
    MigrateTier {
        /// The external Postgres (with pgvector) to copy into: postgres://user:password@host:port/db.
        /// Prefer the environment variable: a password on the command line shows in `ps`.
        #[arg(long = "to", value_name = "DATABASE_URL", env = "TESSERA_MIGRATE_TO", hide_env_values = true)]
        to: String,
        /// Show what would be copied without writing anything.
        #[arg(long)]
        dry_run: bool,
        /// Merge into a target that already holds rows (rows with the same key are overwritten).
        #[arg(long)]
        allow_non_empty: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a storage command.
///
/// # Errors
/// Connection, copy or verification failures; messages never contain passwords.
pub async fn run(config: &Config, cmd: StorageCommand) -> anyhow::Result<ExitCode> {
    let StorageCommand::MigrateTier { to, dry_run, allow_non_empty, json } = cmd;
    let to = SecretUrl::new(to);
    let opts: PgConnectOptions = to
        .expose()
        .parse()
        .map_err(|_| crate::outcome::Usage(format!("--to {} is not a valid Postgres URL", to.redacted())))?;

    // Copying while a gateway writes to the source would miss its latest rows.
    let lock_path = config.data_dir.join("gateway.lock");
    let _lock = match std::fs::File::options().create(true).truncate(false).write(true).open(&lock_path) {
        Ok(f) if f.try_lock().is_ok() => Some(f),
        Ok(_) if dry_run => None,
        Ok(_) => {
            return Err(crate::outcome::Refused(format!(
                "a gateway is running on data dir {}; stop it first so no write is missed (or use --dry-run)",
                config.data_dir.display()
            ))
            .into());
        }
        Err(_) if dry_run => None,
        Err(e) => {
            anyhow::bail!("cannot open {} to make sure no gateway runs on the data dir: {e}", lock_path.display())
        }
    };

    let source = Database::open(config, 4).await?;
    let result = async {
        if !dry_run {
            crate::store::migrate(&source.pool).await.context("migrating the source database")?;
        }
        let target = crate::store::connect(opts, 4, crate::services::BOOT_PROBE_TIMEOUT)
            .await
            .with_context(|| format!("cannot reach the target {}", to.redacted()))?;
        let report =
            transfer::transfer(&source.pool, &target, TransferOptions { dry_run, allow_non_empty, progress: !json })
                .await;
        target.close().await;
        report
    }
    .await;
    source.close().await;
    let report = result?;

    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for t in &report.tables {
            println!(
                "{:<30} source {:>8}  changed {:>8}  target {:>8}",
                t.table, t.source_rows, t.changed_rows, t.target_rows
            );
        }
        if report.dry_run {
            println!("dry run: nothing was written to {}", to.redacted());
        } else {
            println!(
                "copied into {}; row counts verified. Start the gateway with DATABASE_URL set to it and the same \
                 sealing key (TESSERA_SEALING_KEY, or {}), which opens the CA key and peer keys.",
                to.redacted(),
                config.data_dir.join("sealing.key").display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
