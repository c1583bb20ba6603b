//! Notes: the rows of `mission_tasks` (a mission task's notes, by their author) and the queries
//! the data API makes of them. Peers see a note in the shape [`super::rows::Note`].

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgExecutor};
use utoipa::ToSchema;
use uuid::Uuid;

use super::rows::Note;

#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MissionTask {
    pub id: Uuid,
    pub mission_id: Uuid,
    pub user_id: Uuid,
    pub task_id: Option<Uuid>,
    /// The note text (the column `notes`; `content` on the wire, as in Mosaic).
    pub content: String,
    pub status: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A validated mission task to insert.
pub struct Insert {
    pub id: Uuid,
    pub mission_id: Uuid,
    pub user_id: Uuid,
    pub task_id: Option<Uuid>,
    pub content: String,
    pub status: String,
    /// Default now; `updated_at` starts equal.
    pub created_at: Option<DateTime<Utc>>,
}

/// # Errors
/// Constraint violations (an unknown mission, user or task, a taken id); database errors.
pub async fn insert(conn: &mut PgConnection, new: Insert) -> Result<MissionTask, sqlx::Error> {
    sqlx::query_as!(
        MissionTask,
        r#"insert into mission_tasks (id, mission_id, user_id, task_id, notes, status, created_at, updated_at)
           values ($1, $2, $3, $4, $5, $6, coalesce($7, now()), coalesce($7, now()))
           returning id, mission_id, user_id, task_id, notes as content, status, created_at, updated_at"#,
        new.id,
        new.mission_id,
        new.user_id,
        new.task_id,
        new.content,
        new.status,
        new.created_at,
    )
    .fetch_one(conn)
    .await
}

/// Up to `n` mission tasks before `after` in the keyset order `created_at desc, id desc`.
///
/// # Errors
/// Database errors.
pub async fn page(
    db: impl PgExecutor<'_>,
    after: (DateTime<Utc>, Uuid),
    n: i64,
) -> Result<Vec<MissionTask>, sqlx::Error> {
    sqlx::query_as!(
        MissionTask,
        "select id, mission_id, user_id, task_id, notes as content, status, created_at, updated_at
         from mission_tasks where (created_at, id) < ($1, $2) order by created_at desc, id desc limit $3",
        after.0,
        after.1,
        n,
    )
    .fetch_all(db)
    .await
}

/// The `limit` newest non-empty notes of every user, in the peers' shape.
///
/// # Errors
/// Database errors.
pub async fn latest(db: impl PgExecutor<'_>, limit: i64) -> Result<Vec<Note>, sqlx::Error> {
    sqlx::query_as!(
        Note,
        r#"select mt.id, mt.mission_id, mt.task_id, mt.status, mt.notes as content, mt.created_at, mt.updated_at
           from mission_tasks mt where mt.notes <> '' order by created_at desc, id desc limit $1"#,
        limit
    )
    .fetch_all(db)
    .await
}
