//! Record types of the local data API and their `create_*` functions (validation + insert).
//!
//! Every create accepts an optional `id` and `createdAt` so that imports and backfills can keep
//! the identities and history of another system; both default to a fresh UUIDv7 and `now()`.
//! Validation errors name the field; constraint violations are mapped by [`super::db_error`].

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{Keyed, db_error};
use crate::admin::credentials::Secret;
use crate::admin::passwords;
use crate::http::error::ApiError;

/// Length of an insight embedding (`vector(384)`).
pub const EMBEDDING_DIMS: usize = 384;

fn text(field: &str, value: &str, max: usize) -> Result<String, ApiError> {
    let v = value.trim();
    if v.is_empty() {
        return Err(ApiError::invalid_field(field, format!("{field} must not be empty")));
    }
    if v.chars().count() > max {
        return Err(ApiError::invalid_field(field, format!("{field} must have at most {max} characters")));
    }
    Ok(v.to_string())
}

fn optional_text(field: &str, value: Option<&str>, max: usize) -> Result<Option<String>, ApiError> {
    value.map(|v| text(field, v, max)).transpose()
}

/// Longest email address stored (characters, after trimming).
pub const MAX_EMAIL_CHARS: usize = 254;

/// A trimmed, plausible email address (one `@`, no spaces).
///
/// # Errors
/// 400 naming `email`.
pub fn email(value: &str) -> Result<String, ApiError> {
    let v = text("email", value, MAX_EMAIL_CHARS)?;
    let plausible =
        v.split('@').count() == 2 && !v.starts_with('@') && !v.ends_with('@') && !v.chars().any(char::is_whitespace);
    if plausible { Ok(v) } else { Err(ApiError::invalid_field("email", "email is not a valid address")) }
}

fn id_or_new(id: Option<Uuid>) -> Uuid {
    id.unwrap_or_else(Uuid::now_v7)
}

macro_rules! keyed_by {
    ($ty:ty, $id:ident) => {
        impl Keyed for $ty {
            fn keyset(&self) -> (DateTime<Utc>, Uuid) {
                (self.created_at, self.$id)
            }
        }
    };
}

// ---------------------------------------------------------------- users

#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct User {
    pub id: Uuid,
    pub email: String,
    pub name: String,
    /// `admin` or `member`.
    pub role: String,
    /// Set when the user was disabled: no sign-in, every credential refused.
    pub disabled_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}
keyed_by!(User, id);

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewUser {
    pub id: Option<Uuid>,
    /// One `@`, no spaces, at most 254 characters.
    #[schema(
        min_length = 3,
        max_length = 254,
        pattern = r"^[^@\t\n\u000b\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+@[^@\t\n\u000b\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+$"
    )]
    pub email: String,
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"[^\t\n\u000b\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
    )]
    pub name: String,
    /// At least 8 characters; without one the user cannot sign in (a data-only subject).
    #[schema(value_type = Option<String>, format = Password, min_length = 8, max_length = 256)]
    pub password: Option<Secret>,
    /// `admin` or `member`.
    #[schema(pattern = "^(admin|member)$")]
    pub role: String,
    pub created_at: Option<DateTime<Utc>>,
}

pub const LIST_USERS: &str = "select id, email, name, role, disabled_at, created_at from users
     where (created_at, id) < ($1, $2) order by created_at desc, id desc limit $3";

/// # Errors
/// 400 on a bad field, 409 for a taken email or id.
pub async fn create_user(conn: &mut PgConnection, new: NewUser) -> Result<User, ApiError> {
    let email = email(&new.email)?;
    let name = text("name", &new.name, 200)?;
    if !matches!(new.role.as_str(), "admin" | "member") {
        return Err(ApiError::invalid_field("role", "role must be \"admin\" or \"member\""));
    }
    let password_hash = match new.password {
        Some(pw) => {
            passwords::validate(&pw)?;
            Some(passwords::hash(pw).await?)
        }
        None => None,
    };
    sqlx::query_as::<_, User>(
        "insert into users (id, email, name, role, password_hash, created_at)
         values ($1, $2, $3, $4, $5, coalesce($6, now()))
         returning id, email, name, role, disabled_at, created_at",
    )
    .bind(id_or_new(new.id))
    .bind(email)
    .bind(name)
    .bind(new.role)
    .bind(password_hash)
    .bind(new.created_at)
    .fetch_one(conn)
    .await
    .map_err(db_error)
}

// ---------------------------------------------------------------- teams and members

#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Team {
    pub id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
}
keyed_by!(Team, id);

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewTeam {
    pub id: Option<Uuid>,
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"[^\t\n\u000b\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
    )]
    pub name: String,
    pub created_at: Option<DateTime<Utc>>,
}

pub const LIST_TEAMS: &str = "select id, name, created_at from teams
     where (created_at, id) < ($1, $2) order by created_at desc, id desc limit $3";

/// # Errors
/// 400 on a bad field, 409 for a taken name or id.
pub async fn create_team(conn: &mut PgConnection, new: NewTeam) -> Result<Team, ApiError> {
    let name = text("name", &new.name, 200)?;
    sqlx::query_as::<_, Team>(
        "insert into teams (id, name, created_at) values ($1, $2, coalesce($3, now()))
         returning id, name, created_at",
    )
    .bind(id_or_new(new.id))
    .bind(name)
    .bind(new.created_at)
    .fetch_one(conn)
    .await
    .map_err(db_error)
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TeamMember {
    pub team_id: Uuid,
    pub user_id: Uuid,
    pub created_at: DateTime<Utc>,
}
keyed_by!(TeamMember, user_id);

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewTeamMember {
    pub user_id: Uuid,
    pub created_at: Option<DateTime<Utc>>,
}

pub const LIST_TEAM_MEMBERS: &str = "select team_id, user_id, created_at from team_members
     where team_id = $4 and (created_at, user_id) < ($1, $2) order by created_at desc, user_id desc limit $3";

/// # Errors
/// 404 for an unknown team or user, 409 when already a member.
pub async fn add_team_member(
    conn: &mut PgConnection,
    team_id: Uuid,
    new: NewTeamMember,
) -> Result<TeamMember, ApiError> {
    sqlx::query_as::<_, TeamMember>(
        "insert into team_members (team_id, user_id, created_at) values ($1, $2, coalesce($3, now()))
         returning team_id, user_id, created_at",
    )
    .bind(team_id)
    .bind(new.user_id)
    .bind(new.created_at)
    .fetch_one(conn)
    .await
    .map_err(db_error)
}

// ---------------------------------------------------------------- projects and missions

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
keyed_by!(Project, id);

/// Exactly one of `ownerUserId` (personal) and `teamId` (team).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewProject {
    pub id: Option<Uuid>,
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"[^\t\n\u000b\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
    )]
    pub name: String,
    pub owner_user_id: Option<Uuid>,
    pub team_id: Option<Uuid>,
    pub created_at: Option<DateTime<Utc>>,
}

pub const LIST_PROJECTS: &str = "select id, name, owner_user_id, team_id, created_at from projects
     where (created_at, id) < ($1, $2) order by created_at desc, id desc limit $3";

/// # Errors
/// 400 unless exactly one owner is given; 404 for an unknown owner or team.
pub async fn create_project(conn: &mut PgConnection, new: NewProject) -> Result<Project, ApiError> {
    let name = text("name", &new.name, 200)?;
    if new.owner_user_id.is_some() == new.team_id.is_some() {
        return Err(ApiError::invalid_field(
            "ownerUserId",
            "give exactly one of ownerUserId (personal project) and teamId (team project)",
        ));
    }
    sqlx::query_as::<_, Project>(
        "insert into projects (id, name, owner_user_id, team_id, created_at)
         values ($1, $2, $3, $4, coalesce($5, now()))
         returning id, name, owner_user_id, team_id, created_at",
    )
    .bind(id_or_new(new.id))
    .bind(name)
    .bind(new.owner_user_id)
    .bind(new.team_id)
    .bind(new.created_at)
    .fetch_one(conn)
    .await
    .map_err(db_error)
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
keyed_by!(Mission, id);

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewMission {
    pub id: Option<Uuid>,
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"[^\t\n\u000b\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
    )]
    pub name: String,
    pub project_id: Uuid,
    pub user_id: Option<Uuid>,
    pub created_at: Option<DateTime<Utc>>,
}

pub const LIST_MISSIONS: &str = "select id, name, project_id, user_id, created_at from missions
     where (created_at, id) < ($1, $2) order by created_at desc, id desc limit $3";

/// # Errors
/// 400 on a bad field; 404 for an unknown project or user.
pub async fn create_mission(conn: &mut PgConnection, new: NewMission) -> Result<Mission, ApiError> {
    let name = text("name", &new.name, 200)?;
    sqlx::query_as::<_, Mission>(
        "insert into missions (id, name, project_id, user_id, created_at)
         values ($1, $2, $3, $4, coalesce($5, now()))
         returning id, name, project_id, user_id, created_at",
    )
    .bind(id_or_new(new.id))
    .bind(name)
    .bind(new.project_id)
    .bind(new.user_id)
    .bind(new.created_at)
    .fetch_one(conn)
    .await
    .map_err(db_error)
}

// ---------------------------------------------------------------- tasks and notes

/// A task: the one shape peers see too (`store::rows`).
pub use crate::store::rows::Task;
keyed_by!(Task, id);

/// At least one of `projectId` and `missionId`; with only `missionId`, the task joins the
/// mission's project.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewTask {
    pub id: Option<Uuid>,
    #[schema(
        min_length = 1,
        max_length = 500,
        pattern = r"[^\t\n\u000b\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
    )]
    pub title: String,
    #[schema(max_length = 100000)]
    pub description: Option<String>,
    /// Default `todo`.
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = r"[^\t\n\u000b\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
    )]
    pub status: Option<String>,
    /// Default `medium`.
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = r"[^\t\n\u000b\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
    )]
    pub priority: Option<String>,
    pub project_id: Option<Uuid>,
    pub mission_id: Option<Uuid>,
    /// Who the task is assigned to (free text, at most 200 characters).
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"[^\t\n\u000b\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
    )]
    pub assignee: Option<String>,
    /// At most 50 tags of at most 100 characters each.
    #[schema(max_items = 50)]
    pub tags: Option<Vec<String>>,
    pub due_date: Option<DateTime<Utc>>,
    /// A JSON object.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
    pub created_at: Option<DateTime<Utc>>,
}

pub const LIST_TASKS: &str = "select t.id, t.title, t.description, t.status, t.priority, t.project_id, t.mission_id, \
     t.assignee, t.tags, t.due_date, t.metadata, t.created_at, t.updated_at
     from tasks t where (t.created_at, t.id) < ($1, $2) order by t.created_at desc, t.id desc limit $3";

/// At most this many bytes of JSON in a `metadata` object.
pub const MAX_METADATA_BYTES: usize = 65_536;

fn metadata(value: Option<serde_json::Value>) -> Result<Option<serde_json::Value>, ApiError> {
    match value {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(v @ serde_json::Value::Object(_)) if v.to_string().len() <= MAX_METADATA_BYTES => Ok(Some(v)),
        Some(serde_json::Value::Object(_)) => Err(ApiError::invalid_field(
            "metadata",
            format!("metadata must be at most {MAX_METADATA_BYTES} bytes of JSON"),
        )),
        Some(_) => Err(ApiError::invalid_field("metadata", "metadata must be a JSON object")),
    }
}

fn tags(value: Option<Vec<String>>) -> Result<Vec<String>, ApiError> {
    let tags = value.unwrap_or_default();
    if tags.len() > 50 {
        return Err(ApiError::invalid_field("tags", "tags must have at most 50 entries"));
    }
    tags.iter().enumerate().map(|(i, t)| text(&format!("tags[{i}]"), t, 100)).collect()
}

/// # Errors
/// 400 on a bad field or a mission of another project; 404 for an unknown project or mission.
pub async fn create_task(conn: &mut PgConnection, new: NewTask) -> Result<Task, ApiError> {
    let title = text("title", &new.title, 500)?;
    let description = new.description.filter(|d| !d.trim().is_empty());
    if description.as_ref().is_some_and(|d| d.chars().count() > 100_000) {
        return Err(ApiError::invalid_field("description", "description must have at most 100000 characters"));
    }
    let status = optional_text("status", new.status.as_deref(), 64)?.unwrap_or_else(|| "todo".into());
    let priority = optional_text("priority", new.priority.as_deref(), 64)?.unwrap_or_else(|| "medium".into());
    let assignee = optional_text("assignee", new.assignee.as_deref(), 200)?;
    let tags = tags(new.tags)?;
    let metadata = metadata(new.metadata)?;
    // Visibility is decided by project_id alone (DESIGN §4), so a mission's task takes its project.
    let project_id = match new.mission_id {
        Some(mission_id) => {
            let mission_project: Option<Uuid> = sqlx::query_scalar("select project_id from missions where id = $1")
                .bind(mission_id)
                .fetch_optional(&mut *conn)
                .await?;
            let mission_project = mission_project.ok_or_else(|| {
                ApiError::not_found("missionId refers to a record that does not exist")
                    .with_details(serde_json::json!({ "field": "missionId" }))
            })?;
            if new.project_id.is_some_and(|p| p != mission_project) {
                // Both ids are well formed and exist; they disagree with each other as stored.
                return Err(ApiError::conflict("projectId differs from the project of missionId")
                    .with_details(serde_json::json!({ "field": "projectId" })));
            }
            mission_project
        }
        None => {
            new.project_id.ok_or_else(|| ApiError::invalid_field("projectId", "give projectId, missionId or both"))?
        }
    };
    sqlx::query_as::<_, Task>(
        "insert into tasks as t (id, title, description, status, priority, project_id, mission_id, created_at, updated_at,
                                 assignee, tags, due_date, metadata)
         values ($1, $2, $3, $4, $5, $6, $7, coalesce($8, now()), coalesce($8, now()), $9, $10, $11, $12)
         returning t.id, t.title, t.description, t.status, t.priority, t.project_id, t.mission_id,
                   t.assignee, t.tags, t.due_date, t.metadata, t.created_at, t.updated_at",
    )
    .bind(id_or_new(new.id))
    .bind(title)
    .bind(description)
    .bind(status)
    .bind(priority)
    .bind(project_id)
    .bind(new.mission_id)
    .bind(new.created_at)
    .bind(assignee)
    .bind(tags)
    .bind(new.due_date)
    .bind(metadata.map(sqlx::types::Json))
    .fetch_one(conn)
    .await
    .map_err(db_error)
}

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
keyed_by!(MissionTask, id);

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewMissionTask {
    pub id: Option<Uuid>,
    pub mission_id: Uuid,
    pub user_id: Uuid,
    /// The note text; `notes` is accepted as its older name.
    #[serde(alias = "notes")]
    #[schema(max_length = 100000)]
    pub content: String,
    pub task_id: Option<Uuid>,
    /// Default `open`.
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = r"[^\t\n\u000b\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
    )]
    pub status: Option<String>,
    pub created_at: Option<DateTime<Utc>>,
}

pub const LIST_MISSION_TASKS: &str =
    "select id, mission_id, user_id, task_id, notes as content, status, created_at, updated_at
     from mission_tasks where (created_at, id) < ($1, $2) order by created_at desc, id desc limit $3";

/// # Errors
/// 400 on a bad field; 404 for an unknown mission, user or task.
pub async fn create_mission_task(conn: &mut PgConnection, new: NewMissionTask) -> Result<MissionTask, ApiError> {
    if new.content.chars().count() > 100_000 {
        return Err(ApiError::invalid_field("content", "content must have at most 100000 characters"));
    }
    let status = optional_text("status", new.status.as_deref(), 64)?.unwrap_or_else(|| "open".into());
    sqlx::query_as::<_, MissionTask>(
        "insert into mission_tasks (id, mission_id, user_id, task_id, notes, status, created_at, updated_at)
         values ($1, $2, $3, $4, $5, $6, coalesce($7, now()), coalesce($7, now()))
         returning id, mission_id, user_id, task_id, notes as content, status, created_at, updated_at",
    )
    .bind(id_or_new(new.id))
    .bind(new.mission_id)
    .bind(new.user_id)
    .bind(new.task_id)
    .bind(new.content)
    .bind(status)
    .bind(new.created_at)
    .fetch_one(conn)
    .await
    .map_err(db_error)
}

// ---------------------------------------------------------------- memory

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
keyed_by!(Insight, id);

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewInsight {
    pub id: Option<Uuid>,
    pub user_id: Uuid,
    #[schema(
        min_length = 1,
        max_length = 100000,
        pattern = r"[^\t\n\u000b\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
    )]
    pub content: String,
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"[^\t\n\u000b\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
    )]
    pub category: Option<String>,
    /// Default `agent`; at most 64 characters.
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = r"[^\t\n\u000b\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
    )]
    pub source: Option<String>,
    /// A finite number; default 1.
    pub relevance_score: Option<f32>,
    /// A JSON object.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
    /// Exactly 384 finite numbers.
    #[schema(min_items = 384, max_items = 384)]
    pub embedding: Option<Vec<f32>>,
    pub created_at: Option<DateTime<Utc>>,
}

const INSIGHT_RECORD: &str = "id, user_id, content, category, source, relevance_score, metadata, \
     embedding is not null as has_embedding, created_at, updated_at";

pub const LIST_INSIGHTS: &str =
    "select id, user_id, content, category, source, relevance_score, metadata, embedding is not null as has_embedding,
            created_at, updated_at
     from insights where (created_at, id) < ($1, $2) order by created_at desc, id desc limit $3";

/// # Errors
/// 400 on a bad field or embedding; 404 for an unknown user.
pub async fn create_insight(conn: &mut PgConnection, new: NewInsight) -> Result<Insight, ApiError> {
    let content = text("content", &new.content, 100_000)?;
    let category = optional_text("category", new.category.as_deref(), 200)?;
    let source = optional_text("source", new.source.as_deref(), 64)?.unwrap_or_else(|| "agent".into());
    let relevance = new.relevance_score.unwrap_or(1.0);
    if !relevance.is_finite() {
        return Err(ApiError::invalid_field("relevanceScore", "relevanceScore must be a finite number"));
    }
    let metadata = metadata(new.metadata)?;
    let embedding = match new.embedding {
        Some(v) if v.len() != EMBEDDING_DIMS => {
            return Err(ApiError::invalid_field(
                "embedding",
                format!("embedding must have {EMBEDDING_DIMS} numbers, not {}", v.len()),
            ));
        }
        Some(v) if v.iter().any(|x| !x.is_finite()) => {
            return Err(ApiError::invalid_field("embedding", "embedding must hold finite numbers"));
        }
        other => other.map(pgvector::Vector::from),
    };
    sqlx::query_as::<_, Insight>(sqlx::AssertSqlSafe(format!(
        "insert into insights (id, user_id, content, category, embedding, created_at, updated_at, source, relevance_score, metadata)
         values ($1, $2, $3, $4, $5, coalesce($6, now()), coalesce($6, now()), $7, $8, $9)
         returning {INSIGHT_RECORD}"
    )))
    .bind(id_or_new(new.id))
    .bind(new.user_id)
    .bind(content)
    .bind(category)
    .bind(embedding)
    .bind(new.created_at)
    .bind(source)
    .bind(relevance)
    .bind(metadata.map(sqlx::types::Json))
    .fetch_one(conn)
    .await
    .map_err(db_error)
}

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
keyed_by!(Preference, id);

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewPreference {
    pub id: Option<Uuid>,
    pub user_id: Uuid,
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"[^\t\n\u000b\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
    )]
    pub key: String,
    /// Any JSON value.
    #[schema(value_type = Object)]
    pub value: serde_json::Value,
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"[^\t\n\u000b\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
    )]
    pub category: Option<String>,
    /// At most 64 characters.
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = r"[^\t\n\u000b\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
    )]
    pub source: Option<String>,
    /// Default true.
    pub mutable: Option<bool>,
    pub created_at: Option<DateTime<Utc>>,
}

pub const LIST_PREFERENCES: &str = "select id, user_id, key, value, category, source, mutable, created_at, updated_at
     from preferences where (created_at, id) < ($1, $2) order by created_at desc, id desc limit $3";

/// # Errors
/// 400 on a bad field; 404 for an unknown user; 409 when the user already has this key.
pub async fn create_preference(conn: &mut PgConnection, new: NewPreference) -> Result<Preference, ApiError> {
    let key = text("key", &new.key, 200)?;
    let category = optional_text("category", new.category.as_deref(), 200)?;
    let source = optional_text("source", new.source.as_deref(), 64)?;
    sqlx::query_as::<_, Preference>(
        "insert into preferences (id, user_id, key, value, category, created_at, updated_at, source, mutable)
         values ($1, $2, $3, $4, $5, coalesce($6, now()), coalesce($6, now()), $7, coalesce($8, true))
         returning id, user_id, key, value, category, source, mutable, created_at, updated_at",
    )
    .bind(id_or_new(new.id))
    .bind(new.user_id)
    .bind(key)
    .bind(sqlx::types::Json(new.value))
    .bind(category)
    .bind(new.created_at)
    .bind(source)
    .bind(new.mutable)
    .fetch_one(conn)
    .await
    .map_err(db_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_trimmed_and_checked() {
        assert_eq!(email("  ada@example.org ").unwrap(), "ada@example.org");
        for bad in ["", "ada", "@x", "a@", "a@b@c", "a b@c"] {
            assert_eq!(email(bad).unwrap_err().status(), 400, "{bad}");
        }
    }
}
