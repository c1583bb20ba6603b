//! Database access: the pool, the start-up checks, the embedded migrations, and one module per
//! aggregate that owns its rows and queries (`users`, `teams`, `projects`, `tasks`, `notes`,
//! `memory`, `peers`, `grants`, `enrollment`, `ca`, `audit`), plus the row shapes peers see
//! (`rows`), constraint violations in the caller's terms (`constraint`), the demo seed and the
//! tier move (`transfer`).
//!
//! Static SQL goes through sqlx's compile-time checked macros (`query!`, `query_as!`,
//! `query_scalar!`). Builds read the committed `.sqlx/` offline data, so building needs no
//! database; `scripts/sqlx.sh` re-describes every query against a freshly migrated schema, and
//! `make lint` fails when `.sqlx/` is stale. SQL built at run time (`QueryBuilder`, or
//! `AssertSqlSafe` over a `format!`) is kept where the statement's shape depends on its input,
//! each with a comment saying why. Data functions take `impl PgExecutor<'_>` or
//! `&mut PgConnection`, so the caller owns the transaction.
pub mod advertised_url;
pub mod audit;
pub mod ca;
pub mod constraint;
pub mod demo;
pub mod enrollment;
pub mod grants;
pub mod memory;
pub mod notes;
pub mod peers;
pub mod projects;
pub mod rows;
pub mod tasks;
pub mod teams;
pub mod transfer;
pub mod users;

use std::time::Duration;

use anyhow::{Context, bail};
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

/// The schema, embedded in the binary. sqlx applies pending migrations under a Postgres advisory
/// lock (`pg_advisory_lock`), so replicas starting together cannot race each other.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Drops and re-creates `database` in the embedded cluster with every migration applied: the
/// schema the compile-time checked queries are described against (`tessera db schema`).
///
/// # Errors
/// The name is not a plain identifier, or Postgres refuses.
pub async fn recreate_migrated(pg: &crate::services::postgres::EmbeddedPostgres, database: &str) -> anyhow::Result<()> {
    use sqlx::Connection as _;
    anyhow::ensure!(
        !database.is_empty() && database.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
        crate::outcome::Usage(format!("database name '{database}' must be letters, digits and '_'"))
    );
    let mut admin = sqlx::PgConnection::connect_with(&pg.connect_options("postgres")).await?;
    // The name is checked above; identifiers cannot be bound as parameters.
    for sql in
        [format!("drop database if exists \"{database}\" with (force)"), format!("create database \"{database}\"")]
    {
        sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut admin).await?;
    }
    admin.close().await.ok();
    let pool = PgPool::connect_with(pg.connect_options(database)).await?;
    migrate(&pool).await?;
    pool.close().await;
    Ok(())
}

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
    pool_options(max_connections)
        .acquire_timeout(connect_timeout)
        .connect_with(opts)
        .await
        .with_context(|| format!("cannot connect to Postgres at {host}"))
}

/// A connection idle for less than this is handed out without a liveness ping.
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);

/// Pool settings every pool of the gateway shares.
///
/// By default sqlx pings each idle connection before handing it out: one more round trip, and
/// one more wake-up of a Postgres backend, for every query. On the federation list path that
/// was two pings per request (guard and page). A connection that finished a query less than
/// [`PING_IF_IDLE_FOR`] ago is as alive as a ping would show, so only connections idle for
/// longer are pinged; a connection that still fails mid-query is dropped by sqlx as broken.
pub fn pool_options(max_connections: u32) -> PgPoolOptions {
    PgPoolOptions::new().max_connections(max_connections).test_before_acquire(false).before_acquire(|conn, meta| {
        Box::pin(async move {
            if meta.idle_for >= PING_IF_IDLE_FOR {
                sqlx::Connection::ping(conn).await?;
            }
            Ok(true)
        })
    })
}

/// A second pool on the same database for the peer-facing federation path: the guard's grant
/// read and the verbs' pages.
///
/// Two reasons for a pool of its own:
/// - **Generic plans.** Its sessions run with `plan_cache_mode = force_generic_plan`. Postgres
///   otherwise re-plans the list query on every execution (its custom plans never look more
///   expensive than the generic one), and planning the `LATERAL` merge cost more than running
///   it: with pgbench, 8 clients, random deep pages over 1M tasks, 3 870 q/s re-planned
///   against 7 250 q/s with the plan cached. The verbs' statements are keyset scans whose best
///   plan does not depend on the parameter values, so one plan per connection is right for
///   every call. The rest of the gateway keeps the default (`auto`), where a generic plan
///   could miss a partial index or a skewed value.
/// - **A bulkhead.** Peers hammering the verbs queue for these connections, not for those the
///   admin plane, the queue and the outbox need.
pub fn peer_read_pool(pool: &PgPool, max_connections: u32) -> PgPool {
    // The search verb's HNSW scans: a wider candidate list than pgvector's default 40 (recall of
    // a top-20 well above 0.95, see `tessera bench search`), and iterative scans in exact order,
    // so that filtering by subject after the index scan never starves a page.
    let opts = (*pool.connect_options()).clone().options([
        ("plan_cache_mode", "force_generic_plan"),
        ("hnsw.ef_search", "100"),
        // Peer requests are small top-k statements; a parallel plan (the search verb's generic
        // plans estimate thousands of text matches) spent ~20 ms starting workers on two cores.
        ("max_parallel_workers_per_gather", "0"),
        ("hnsw.iterative_scan", "strict_order"),
    ]);
    pool_options(max_connections).acquire_timeout(Duration::from_secs(5)).connect_lazy_with(opts)
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
    let available = sqlx::query_scalar!(
        r#"select exists (select 1 from pg_available_extensions where name = 'vector') as "available!""#
    )
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
