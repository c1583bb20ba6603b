//! Memory: the rows of `insights` and `preferences`, in the data API's record shapes
//! ([`Insight`], [`Preference`]) and the peers' shapes ([`rows::Insight`], [`rows::Preference`]),
//! and every query of them: the data API's inserts and pages, the list and get verbs' personal
//! reads, and the local federated query's newest rows.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgExecutor};
use utoipa::ToSchema;
use uuid::Uuid;

use super::rows;

// An insight as the data API stores and lists it (a doc comment would change the OpenAPI schema).
#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Insight {
    pub id: Uuid,
    pub user_id: Uuid,
    pub content: String,
    pub category: Option<String>,
    /// Where the insight comes from (`agent` by default); peers see it as `kind`.
    pub source: String,
    pub relevance_score: f32,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
    /// Whether an embedding is stored (the 384 numbers are not echoed back).
    pub has_embedding: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

// A preference as the data API stores and lists it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Preference {
    pub id: Uuid,
    pub user_id: Uuid,
    pub key: String,
    #[schema(value_type = Object)]
    pub value: serde_json::Value,
    pub category: Option<String>,
    pub source: Option<String>,
    /// Whether the preference may be changed (default true).
    pub mutable: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A validated insight to insert.
pub struct InsightInsert {
    pub id: Uuid,
    pub user_id: Uuid,
    pub content: String,
    pub category: Option<String>,
    pub embedding: Option<pgvector::Vector>,
    pub source: String,
    pub relevance_score: f32,
    pub metadata: Option<serde_json::Value>,
    /// Default now; `updated_at` starts equal.
    pub created_at: Option<DateTime<Utc>>,
}

/// # Errors
/// Constraint violations (an unknown user, a taken id); database errors.
pub async fn insert_insight(conn: &mut PgConnection, new: InsightInsert) -> Result<Insight, sqlx::Error> {
    // Unchecked: it binds a pgvector `vector`, whose OID differs per database.
    sqlx::query_as::<_, Insight>(
        "insert into insights (id, user_id, content, category, embedding, created_at, updated_at, source, relevance_score, metadata)
         values ($1, $2, $3, $4, $5, coalesce($6, now()), coalesce($6, now()), $7, $8, $9)
         returning id, user_id, content, category, source, relevance_score, metadata,
                   embedding is not null as has_embedding, created_at, updated_at",
    )
    .bind(new.id)
    .bind(new.user_id)
    .bind(new.content)
    .bind(new.category)
    .bind(new.embedding)
    .bind(new.created_at)
    .bind(new.source)
    .bind(new.relevance_score)
    .bind(new.metadata.map(sqlx::types::Json))
    .fetch_one(conn)
    .await
}

/// Up to `n` insights before `after` in the keyset order `created_at desc, id desc`.
///
/// # Errors
/// Database errors.
pub async fn insight_records(
    db: impl PgExecutor<'_>,
    after: (DateTime<Utc>, Uuid),
    n: i64,
) -> Result<Vec<Insight>, sqlx::Error> {
    sqlx::query_as!(
        Insight,
        r#"select id, user_id, content, category, source, relevance_score, metadata,
                  embedding is not null as "has_embedding!", created_at, updated_at
           from insights where (created_at, id) < ($1, $2) order by created_at desc, id desc limit $3"#,
        after.0,
        after.1,
        n,
    )
    .fetch_all(db)
    .await
}

/// A validated preference to insert.
pub struct PreferenceInsert {
    pub id: Uuid,
    pub user_id: Uuid,
    pub key: String,
    pub value: serde_json::Value,
    pub category: Option<String>,
    pub source: Option<String>,
    /// Default true.
    pub mutable: Option<bool>,
    /// Default now; `updated_at` starts equal.
    pub created_at: Option<DateTime<Utc>>,
}

/// # Errors
/// Constraint violations (an unknown user, a key the user has already, a taken id); database errors.
pub async fn insert_preference(conn: &mut PgConnection, new: PreferenceInsert) -> Result<Preference, sqlx::Error> {
    sqlx::query_as!(
        Preference,
        "insert into preferences (id, user_id, key, value, category, created_at, updated_at, source, mutable)
         values ($1, $2, $3, $4, $5, coalesce($6, now()), coalesce($6, now()), $7, coalesce($8, true))
         returning id, user_id, key, value, category, source, mutable, created_at, updated_at",
        new.id,
        new.user_id,
        new.key,
        new.value,
        new.category,
        new.created_at,
        new.source,
        new.mutable,
    )
    .fetch_one(conn)
    .await
}

/// Up to `n` preferences before `after` in the keyset order `created_at desc, id desc`.
///
/// # Errors
/// Database errors.
pub async fn preference_records(
    db: impl PgExecutor<'_>,
    after: (DateTime<Utc>, Uuid),
    n: i64,
) -> Result<Vec<Preference>, sqlx::Error> {
    sqlx::query_as!(
        Preference,
        "select id, user_id, key, value, category, source, mutable, created_at, updated_at
         from preferences where (created_at, id) < ($1, $2) order by created_at desc, id desc limit $3",
        after.0,
        after.1,
        n,
    )
    .fetch_all(db)
    .await
}

// ---------------------------------------------------------------- as peers see them

/// A checked statement yielding [`rows::Insight`]s: the peers' insight columns from `insights i`,
/// then `$tail` (the macros take literal SQL only, so the column list is spliced in here).
macro_rules! peer_insights {
    ($tail:tt $(, $arg:expr)* $(,)?) => {
        sqlx::query_as!(
            rows::Insight,
            "select i.id, i.source as kind, i.content, i.category, i.relevance_score, i.metadata, i.created_at,
                    i.updated_at from insights i " + $tail
            $(, $arg)*
        )
    };
}

/// A checked statement yielding [`rows::Preference`]s: the peers' preference columns from
/// `preferences p`, then `$tail`.
macro_rules! peer_preferences {
    ($tail:tt $(, $arg:expr)* $(,)?) => {
        sqlx::query_as!(
            rows::Preference,
            "select p.id, p.category as kind, p.key, p.value, p.source, p.mutable, p.created_at, p.updated_at
               from preferences p " + $tail
            $(, $arg)*
        )
    };
}

/// Up to `n` of `user_id`'s insights before `after`, newest first, in the peers' shape.
///
/// # Errors
/// Database errors.
pub async fn insight_page(
    db: impl PgExecutor<'_>,
    user_id: Uuid,
    after: (DateTime<Utc>, Uuid),
    n: i64,
) -> Result<Vec<rows::Insight>, sqlx::Error> {
    peer_insights!(
        "where user_id = $1 and (created_at, id) < ($2, $3)
         order by created_at desc, id desc limit $4",
        user_id,
        after.0,
        after.1,
        n,
    )
    .fetch_all(db)
    .await
}

/// Up to `n` of `user_id`'s preferences before `after`, newest first, in the peers' shape.
///
/// # Errors
/// Database errors.
pub async fn preference_page(
    db: impl PgExecutor<'_>,
    user_id: Uuid,
    after: (DateTime<Utc>, Uuid),
    n: i64,
) -> Result<Vec<rows::Preference>, sqlx::Error> {
    peer_preferences!(
        "where user_id = $1 and (created_at, id) < ($2, $3)
         order by created_at desc, id desc limit $4",
        user_id,
        after.0,
        after.1,
        n,
    )
    .fetch_all(db)
    .await
}

/// `user_id`'s insight `id`, in the peers' shape.
///
/// # Errors
/// Database errors.
pub async fn insight_of(
    db: impl PgExecutor<'_>,
    user_id: Uuid,
    id: Uuid,
) -> Result<Option<rows::Insight>, sqlx::Error> {
    peer_insights!("where i.id = $1 and i.user_id = $2", id, user_id).fetch_optional(db).await
}

/// `user_id`'s preference `id`, in the peers' shape.
///
/// # Errors
/// Database errors.
pub async fn preference_of(
    db: impl PgExecutor<'_>,
    user_id: Uuid,
    id: Uuid,
) -> Result<Option<rows::Preference>, sqlx::Error> {
    peer_preferences!("where p.id = $1 and p.user_id = $2", id, user_id).fetch_optional(db).await
}

/// How many insights and preferences `user_id` has.
///
/// # Errors
/// Database errors.
pub async fn count_of(db: impl PgExecutor<'_>, user_id: Uuid) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        r#"select (select count(*) from insights where user_id = $1)
                + (select count(*) from preferences where user_id = $1) as "n!""#,
        user_id
    )
    .fetch_one(db)
    .await
}

/// The `limit` newest insights and the `limit` newest preferences of every user, in the peers'
/// shape (insights first).
///
/// # Errors
/// Database errors.
pub async fn latest(
    pool: &sqlx::PgPool,
    limit: i64,
) -> Result<(Vec<rows::Insight>, Vec<rows::Preference>), sqlx::Error> {
    let insights = peer_insights!("order by created_at desc, id desc limit $1", limit).fetch_all(pool).await?;
    let preferences = peer_preferences!("order by created_at desc, id desc limit $1", limit).fetch_all(pool).await?;
    Ok((insights, preferences))
}
