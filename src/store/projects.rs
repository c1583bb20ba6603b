//! Projects and their missions: the rows of `projects` and `missions` and the queries the data
//! API makes of them. (Which projects a federation subject sees is the read path's visibility
//! SQL, `federation::verbs::visibility`.)

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgExecutor};
use utoipa::ToSchema;
use uuid::Uuid;

#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Project {
    pub id: Uuid,
    pub name: String,
    /// Set for a personal project.
    pub owner_user_id: Option<Uuid>,
    /// Set for a team project.
    pub team_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Mission {
    pub id: Uuid,
    pub name: String,
    pub project_id: Uuid,
    pub user_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
}

/// Inserts a project with exactly one of `owner_user_id` and `team_id`, created at `created_at`
/// (default now).
///
/// # Errors
/// Constraint violations (an unknown owner or team, a taken id); database errors.
pub async fn insert(
    conn: &mut PgConnection,
    id: Uuid,
    name: &str,
    (owner_user_id, team_id): (Option<Uuid>, Option<Uuid>),
    created_at: Option<DateTime<Utc>>,
) -> Result<Project, sqlx::Error> {
    sqlx::query_as!(
        Project,
        "insert into projects (id, name, owner_user_id, team_id, created_at)
         values ($1, $2, $3, $4, coalesce($5, now()))
         returning id, name, owner_user_id, team_id, created_at",
        id,
        name,
        owner_user_id,
        team_id,
        created_at,
    )
    .fetch_one(conn)
    .await
}

/// Up to `n` projects before `after` in the keyset order `created_at desc, id desc`.
///
/// # Errors
/// Database errors.
pub async fn page(db: impl PgExecutor<'_>, after: (DateTime<Utc>, Uuid), n: i64) -> Result<Vec<Project>, sqlx::Error> {
    sqlx::query_as!(
        Project,
        "select id, name, owner_user_id, team_id, created_at from projects
         where (created_at, id) < ($1, $2) order by created_at desc, id desc limit $3",
        after.0,
        after.1,
        n,
    )
    .fetch_all(db)
    .await
}

/// Inserts a mission of `project_id`, created at `created_at` (default now).
///
/// # Errors
/// Constraint violations (an unknown project or user, a taken id); database errors.
pub async fn insert_mission(
    conn: &mut PgConnection,
    id: Uuid,
    name: &str,
    (project_id, user_id): (Uuid, Option<Uuid>),
    created_at: Option<DateTime<Utc>>,
) -> Result<Mission, sqlx::Error> {
    sqlx::query_as!(
        Mission,
        "insert into missions (id, name, project_id, user_id, created_at)
         values ($1, $2, $3, $4, coalesce($5, now()))
         returning id, name, project_id, user_id, created_at",
        id,
        name,
        project_id,
        user_id,
        created_at,
    )
    .fetch_one(conn)
    .await
}

/// Up to `n` missions before `after` in the keyset order `created_at desc, id desc`.
///
/// # Errors
/// Database errors.
pub async fn mission_page(
    db: impl PgExecutor<'_>,
    after: (DateTime<Utc>, Uuid),
    n: i64,
) -> Result<Vec<Mission>, sqlx::Error> {
    sqlx::query_as!(
        Mission,
        "select id, name, project_id, user_id, created_at from missions
         where (created_at, id) < ($1, $2) order by created_at desc, id desc limit $3",
        after.0,
        after.1,
        n,
    )
    .fetch_all(db)
    .await
}

/// The project of mission `id`, or `None` when there is no such mission.
///
/// # Errors
/// Database errors.
pub async fn project_of_mission(conn: &mut PgConnection, id: Uuid) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar!("select project_id from missions where id = $1", id).fetch_optional(conn).await
}
