//! Database access: the pool, the start-up checks and the embedded migrations.
//!
//! SQL lives with the code that needs it (`store::<aggregate>` modules). Queries use sqlx's
//! run-time checked API (`query_as` with `FromRow`) rather than the compile-time macros, so the
//! crate builds on a machine with no database and no committed `.sqlx/` cache; every query is
//! exercised by the integration tests against real Postgres instead. Data functions take
//! `impl PgExecutor<'_>` or `&mut PgConnection`, so the caller owns the transaction.

pub mod demo;
pub mod transfer;

use std::time::Duration;

use anyhow::{Context, bail};
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

/// The schema, embedded in the binary. sqlx applies pending migrations under a Postgres advisory
/// lock (`pg_advisory_lock`), so replicas starting together cannot race each other.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Opens a pool and checks that the server is reachable within `connect_timeout`.
///
/// # Errors
/// The server cannot be reached; the message carries no credentials.
pub async fn connect(
    opts: PgConnectOptions,
    max_connections: u32,
    connect_timeout: Duration,
) -> anyhow::Result<PgPool> {
    let host = describe(&opts);
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(connect_timeout)
        .connect_with(opts)
        .await
        .with_context(|| format!("cannot connect to Postgres at {host}"))
}

/// `host:port/db` or `socket dir/db`, never a password.
pub fn describe(opts: &PgConnectOptions) -> String {
    match opts.get_socket() {
        Some(socket) => format!("{} (unix socket)/{}", socket.display(), opts.get_database().unwrap_or("")),
        None => format!("{}:{}/{}", opts.get_host(), opts.get_port(), opts.get_database().unwrap_or("")),
    }
}

/// Fails with an actionable message when the server does not ship the pgvector extension.
///
/// # Errors
/// pgvector is not available, or the catalogue cannot be read.
pub async fn require_pgvector(pool: &PgPool) -> anyhow::Result<()> {
    let available: bool =
        sqlx::query_scalar("select exists (select 1 from pg_available_extensions where name = 'vector')")
            .fetch_one(pool)
            .await
            .context("cannot query pg_available_extensions")?;
    if !available {
        bail!(
            "the Postgres server does not provide the pgvector extension ('vector'); \
             use the bundled server (make bundles) or install pgvector on the server"
        );
    }
    Ok(())
}

/// Checks pgvector, then applies pending migrations.
///
/// # Errors
/// pgvector is missing or a migration fails.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    require_pgvector(pool).await?;
    MIGRATOR.run(pool).await.context("applying database migrations failed")?;
    Ok(())
}

/// True when every embedded migration has been applied (used by `/readyz` and `doctor`).
///
/// # Errors
/// The database cannot be queried.
pub async fn migrations_applied(pool: &PgPool) -> anyhow::Result<bool> {
    let applied: Vec<i64> = sqlx::query_scalar("select version from _sqlx_migrations where success order by version")
        .fetch_all(pool)
        .await
        .unwrap_or_default();
    Ok(MIGRATOR.iter().all(|m| applied.contains(&m.version)))
}

#[cfg(test)]
mod tests {
    use super::MIGRATOR;

    /// sqlx keys applied migrations by version: two files with one number would make one of
    /// them silently "applied". Branches that each add a migration are the usual cause.
    #[test]
    fn migration_versions_are_unique() {
        let mut versions: Vec<i64> = MIGRATOR.iter().map(|m| m.version).collect();
        let total = versions.len();
        versions.sort_unstable();
        versions.dedup();
        assert_eq!(versions.len(), total, "two migrations share a version number");
    }
}
