//! The services a gateway stands on, per tier (DESIGN §2): the embedded Postgres supervisor, the
//! bundle lookup, and opening the database for whichever tier is configured.

pub mod bundle;
pub mod os;
pub mod postgres;
pub mod valkey;

use std::time::Duration;

use anyhow::Context;
use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;

use crate::config::{Config, Tier};
use postgres::EmbeddedPostgres;

/// Cap on how long boot waits for an external service before failing with a clear message.
pub const BOOT_PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// An open database, plus the embedded cluster behind it in tier `local`.
#[derive(Debug)]
pub struct Database {
    pub pool: PgPool,
    pub embedded: Option<EmbeddedPostgres>,
}

impl Database {
    /// Opens the configured database: starts (or adopts) the embedded cluster in tier `local`,
    /// connects to `DATABASE_URL` otherwise. Creates the embedded `tessera` database if needed.
    ///
    /// # Errors
    /// The cluster cannot start or the server cannot be reached; messages never hold passwords.
    pub async fn open(config: &Config, max_connections: u32) -> anyhow::Result<Self> {
        match config.tier {
            Tier::Local => {
                let embedded = EmbeddedPostgres::start(&config.data_dir, config.pg_bin.as_deref()).await?;
                ensure_database(&embedded, postgres::DEFAULT_DB).await?;
                let pool = crate::store::connect(
                    embedded.connect_options(postgres::DEFAULT_DB),
                    max_connections,
                    Duration::from_secs(30),
                )
                .await?;
                Ok(Self { pool, embedded: Some(embedded) })
            }
            Tier::Standalone | Tier::Federated => {
                let url = config.database_url.as_ref().context("DATABASE_URL is required")?;
                let opts: PgConnectOptions = url
                    .expose()
                    .parse()
                    .map_err(|_| anyhow::anyhow!("DATABASE_URL '{}' is not a valid Postgres URL", url.redacted()))?;
                let pool = crate::store::connect(opts, max_connections, BOOT_PROBE_TIMEOUT)
                    .await
                    .context("check that Postgres runs and DATABASE_URL points at it")?;
                Ok(Self { pool, embedded: None })
            }
        }
    }

    /// Closes the pool and stops the embedded cluster if this process is responsible for it.
    pub async fn close(self) {
        self.pool.close().await;
        if let Some(pg) = self.embedded
            && let Err(e) = pg.release().await
        {
            tracing::warn!(error = format!("{e:#}"), "stopping embedded Postgres failed");
        }
    }
}

async fn ensure_database(pg: &EmbeddedPostgres, name: &str) -> anyhow::Result<()> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect_with(&pg.connect_options("postgres")).await?;
    let exists =
        sqlx::query_scalar!(r#"select exists (select 1 from pg_database where datname = $1) as "exists!""#, name)
            .fetch_one(&mut conn)
            .await?;
    if !exists {
        // Dynamic: a database name cannot be a bind parameter; it comes from a constant, never input.
        let sql = format!("create database \"{name}\"");
        match sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await {
            Ok(_) => {}
            // Lost a race with another starter: the database exists, which is all we wanted.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
            Err(e) => return Err(e.into()),
        }
    }
    conn.close().await?;
    Ok(())
}
