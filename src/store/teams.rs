//! Teams and their members: the rows of `teams` and `team_members` and the queries the data API
//! makes of them.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgExecutor};
use utoipa::ToSchema;
use uuid::Uuid;

#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Team {
    pub id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TeamMember {
    pub team_id: Uuid,
    pub user_id: Uuid,
    pub created_at: DateTime<Utc>,
}

/// # Errors
/// Constraint violations (a taken name or id); database errors.
pub async fn insert(
    conn: &mut PgConnection,
    id: Uuid,
    name: &str,
    created_at: Option<DateTime<Utc>>,
) -> Result<Team, sqlx::Error> {
    sqlx::query_as!(
        Team,
        "insert into teams (id, name, created_at) values ($1, $2, coalesce($3, now()))
         returning id, name, created_at",
        id,
        name,
        created_at,
    )
    .fetch_one(conn)
    .await
}

/// Up to `n` teams before `after` in the keyset order `created_at desc, id desc`.
///
/// # Errors
/// Database errors.
pub async fn page(db: impl PgExecutor<'_>, after: (DateTime<Utc>, Uuid), n: i64) -> Result<Vec<Team>, sqlx::Error> {
    sqlx::query_as!(
        Team,
        "select id, name, created_at from teams
         where (created_at, id) < ($1, $2) order by created_at desc, id desc limit $3",
        after.0,
        after.1,
        n,
    )
    .fetch_all(db)
    .await
}

/// Whether team `id` exists.
///
/// # Errors
/// Database errors.
pub async fn exists(db: impl PgExecutor<'_>, id: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(r#"select exists (select 1 from teams where id = $1) as "exists!""#, id).fetch_one(db).await
}

/// # Errors
/// Constraint violations (an unknown team or user, already a member); database errors.
pub async fn add_member(
    conn: &mut PgConnection,
    team_id: Uuid,
    user_id: Uuid,
    created_at: Option<DateTime<Utc>>,
) -> Result<TeamMember, sqlx::Error> {
    sqlx::query_as!(
        TeamMember,
        "insert into team_members (team_id, user_id, created_at) values ($1, $2, coalesce($3, now()))
         returning team_id, user_id, created_at",
        team_id,
        user_id,
        created_at,
    )
    .fetch_one(conn)
    .await
}

/// Up to `n` members of `team_id` before `after` in the keyset order `created_at desc, user_id desc`.
///
/// # Errors
/// Database errors.
pub async fn member_page(
    db: impl PgExecutor<'_>,
    team_id: Uuid,
    after: (DateTime<Utc>, Uuid),
    n: i64,
) -> Result<Vec<TeamMember>, sqlx::Error> {
    sqlx::query_as!(
        TeamMember,
        "select team_id, user_id, created_at from team_members
         where team_id = $4 and (created_at, user_id) < ($1, $2) order by created_at desc, user_id desc limit $3",
        after.0,
        after.1,
        n,
        team_id,
    )
    .fetch_all(db)
    .await
}
