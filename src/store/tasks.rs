//! Tasks: inserts and reads of `tasks` in the one row shape ([`Task`], from [`super::rows`]).
//! The federation read path composes its scoped task statements from the same columns
//! ([`super::rows::TASK_COLUMNS`]).

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

pub use super::rows::Task;

/// A validated task to insert.
pub struct Insert {
    pub id: Uuid,
    pub title: String,
    pub description: Option<String>,
    pub status: String,
    pub priority: String,
    pub project_id: Uuid,
    pub mission_id: Option<Uuid>,
    pub assignee: Option<String>,
    pub tags: Vec<String>,
    pub due_date: Option<DateTime<Utc>>,
    pub metadata: Option<serde_json::Value>,
    /// Default now; `updated_at` starts equal.
    pub created_at: Option<DateTime<Utc>>,
}

/// # Errors
/// Constraint violations (an unknown project or mission, a taken id); database errors.
pub async fn insert(conn: &mut PgConnection, new: Insert) -> Result<Task, sqlx::Error> {
    sqlx::query_as!(
        Task,
        "insert into tasks as t (id, title, description, status, priority, project_id, mission_id, created_at, updated_at,
                                 assignee, tags, due_date, metadata)
         values ($1, $2, $3, $4, $5, $6, $7, coalesce($8, now()), coalesce($8, now()), $9, $10, $11, $12)
         returning t.id, t.title, t.description, t.status, t.priority, t.project_id, t.mission_id,
                   t.assignee, t.tags, t.due_date, t.metadata, t.created_at, t.updated_at",
        new.id,
        new.title,
        new.description,
        new.status,
        new.priority,
        new.project_id,
        new.mission_id,
        new.created_at,
        new.assignee,
        &new.tags,
        new.due_date,
        new.metadata,
    )
    .fetch_one(conn)
    .await
}

/// Up to `n` tasks before `after` in the keyset order `created_at desc, id desc`.
///
/// # Errors
/// Database errors.
pub async fn page(db: impl PgExecutor<'_>, after: (DateTime<Utc>, Uuid), n: i64) -> Result<Vec<Task>, sqlx::Error> {
    sqlx::query_as!(
        Task,
        "select t.id, t.title, t.description, t.status, t.priority, t.project_id, t.mission_id,
                t.assignee, t.tags, t.due_date, t.metadata, t.created_at, t.updated_at
         from tasks t where (t.created_at, t.id) < ($1, $2) order by t.created_at desc, t.id desc limit $3",
        after.0,
        after.1,
        n,
    )
    .fetch_all(db)
    .await
}
