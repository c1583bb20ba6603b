//! The public URL the running gateway advertises, recorded at start so that commands working on
//! the database (`tessera grant token`) print the URL the server really serves.

use sqlx::PgExecutor;

/// Records `url` as the gateway's public URL.
///
/// # Errors
/// The database write fails.
pub async fn record(db: impl PgExecutor<'_>, url: &str) -> sqlx::Result<()> {
    sqlx::query!(
        "insert into gateway_public_url (id, url, recorded_at) values (1, $1, now())
         on conflict (id) do update set url = excluded.url, recorded_at = excluded.recorded_at",
        url
    )
    .execute(db)
    .await
    .map(|_| ())
}

/// The URL the last gateway to start on this database recorded, if any has.
///
/// # Errors
/// The database read fails.
pub async fn current(db: impl PgExecutor<'_>) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar!("select url from gateway_public_url where id = 1").fetch_optional(db).await
}
