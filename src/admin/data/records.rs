//! Record types of the local data API and their `create_*` functions (validation + insert).
//!
//! Every create accepts an optional `id` and `createdAt` so that imports and backfills can keep
//! the identities and history of another system; both default to a fresh UUIDv7 and `now()`.
//! Validation errors name the field; constraint violations are mapped by
//! [`crate::store::constraint::violation`]. The rows and their SQL live in the `store` aggregates.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use sqlx::PgConnection;
use utoipa::ToSchema;
use uuid::Uuid;

use super::Keyed;
use crate::admin::credentials::Secret;
use crate::admin::passwords::{self, PasswordError};
use crate::error::{DomainError, Fault};
use crate::rbac::Role;
use crate::store::constraint::{Violation, violation};
pub use crate::store::memory::{Insight, Preference};
pub use crate::store::notes::MissionTask;
pub use crate::store::projects::{Mission, Project};
/// A task: the one shape peers see too (`store::rows`).
pub use crate::store::tasks::Task;
pub use crate::store::teams::{Team, TeamMember};
pub use crate::store::users::User;
use crate::store::{memory, notes, projects, tasks, teams, users};

/// Why a record was not created. The messages and fields are the data API's wire answers.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// A field breaks a rule (400 naming it).
    #[error("{message}")]
    Invalid { field: String, message: String },
    /// A field refers to a record that does not exist (404 naming it).
    #[error("{field} refers to a record that does not exist")]
    Missing { field: String },
    /// Both ids exist but disagree with each other as stored (409 naming the field).
    #[error("{message}")]
    Conflict { field: String, message: String },
    /// A constraint refused the write (409 / 404 / 400 naming the field).
    #[error(transparent)]
    Violation(Violation),
    #[error(transparent)]
    Password(#[from] PasswordError),
    #[error("the record could not be stored")]
    Database(#[source] sqlx::Error),
}

impl RecordError {
    fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::Invalid { field: field.to_owned(), message: message.into() }
    }
}

impl From<sqlx::Error> for RecordError {
    fn from(e: sqlx::Error) -> Self {
        match violation(&e) {
            Some(v) => Self::Violation(v),
            None => Self::Database(e),
        }
    }
}

impl DomainError for RecordError {
    fn fault(&self) -> Fault {
        match self {
            Self::Invalid { field, .. } => Fault::invalid(field),
            Self::Missing { field } => Fault::not_found(field),
            Self::Conflict { field, .. } => Fault::conflict(field),
            Self::Violation(v) => v.fault(),
            Self::Password(e) => e.fault(),
            Self::Database(_) => Fault::Internal,
        }
    }

    fn details(&self) -> Option<serde_json::Value> {
        match self {
            Self::Violation(v) => v.details(),
            _ => None,
        }
    }
}

/// Length of an insight embedding (`vector(384)`).
pub const EMBEDDING_DIMS: usize = 384;

fn text(field: &str, value: &str, max: usize) -> Result<String, RecordError> {
    let v = value.trim();
    if v.is_empty() {
        return Err(RecordError::invalid(field, format!("{field} must not be empty")));
    }
    if v.chars().count() > max {
        return Err(RecordError::invalid(field, format!("{field} must have at most {max} characters")));
    }
    Ok(v.to_string())
}

fn optional_text(field: &str, value: Option<&str>, max: usize) -> Result<Option<String>, RecordError> {
    value.map(|v| text(field, v, max)).transpose()
}

/// Longest email address stored (characters, after trimming).
pub const MAX_EMAIL_CHARS: usize = 254;

/// A trimmed, plausible email address (one `@`, no spaces).
///
/// # Errors
/// [`RecordError::Invalid`] naming `email`.
pub fn email(value: &str) -> Result<String, RecordError> {
    let v = text("email", value, MAX_EMAIL_CHARS)?;
    let plausible =
        v.split('@').count() == 2 && !v.starts_with('@') && !v.ends_with('@') && !v.chars().any(char::is_whitespace);
    if plausible { Ok(v) } else { Err(RecordError::invalid("email", "email is not a valid address")) }
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

/// # Errors
/// 400 on a bad field, 409 for a taken email or id.
pub async fn create_user(conn: &mut PgConnection, new: NewUser) -> Result<User, RecordError> {
    let email = email(&new.email)?;
    let name = text("name", &new.name, 200)?;
    let role =
        Role::parse(&new.role).ok_or_else(|| RecordError::invalid("role", "role must be \"admin\" or \"member\""))?;
    let password_hash = match new.password {
        Some(pw) => {
            passwords::validate(&pw)?;
            Some(passwords::hash(pw).await?)
        }
        None => None,
    };
    let new = users::Insert { id: id_or_new(new.id), email, name, role, password_hash, created_at: new.created_at };
    Ok(users::insert(conn, new).await?)
}

// ---------------------------------------------------------------- teams and members

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

/// # Errors
/// 400 on a bad field, 409 for a taken name or id.
pub async fn create_team(conn: &mut PgConnection, new: NewTeam) -> Result<Team, RecordError> {
    let name = text("name", &new.name, 200)?;
    Ok(teams::insert(conn, id_or_new(new.id), &name, new.created_at).await?)
}

keyed_by!(TeamMember, user_id);

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewTeamMember {
    pub user_id: Uuid,
    pub created_at: Option<DateTime<Utc>>,
}

/// # Errors
/// 404 for an unknown team or user, 409 when already a member.
pub async fn add_team_member(
    conn: &mut PgConnection,
    team_id: Uuid,
    new: NewTeamMember,
) -> Result<TeamMember, RecordError> {
    Ok(teams::add_member(conn, team_id, new.user_id, new.created_at).await?)
}

// ---------------------------------------------------------------- projects and missions

keyed_by!(Project, id);
keyed_by!(Mission, id);

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

/// # Errors
/// 400 unless exactly one owner is given; 404 for an unknown owner or team.
pub async fn create_project(conn: &mut PgConnection, new: NewProject) -> Result<Project, RecordError> {
    let name = text("name", &new.name, 200)?;
    if new.owner_user_id.is_some() == new.team_id.is_some() {
        return Err(RecordError::invalid(
            "ownerUserId",
            "give exactly one of ownerUserId (personal project) and teamId (team project)",
        ));
    }
    let owner = (new.owner_user_id, new.team_id);
    Ok(projects::insert(conn, id_or_new(new.id), &name, owner, new.created_at).await?)
}

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

/// # Errors
/// 400 on a bad field; 404 for an unknown project or user.
pub async fn create_mission(conn: &mut PgConnection, new: NewMission) -> Result<Mission, RecordError> {
    let name = text("name", &new.name, 200)?;
    let owner = (new.project_id, new.user_id);
    Ok(projects::insert_mission(conn, id_or_new(new.id), &name, owner, new.created_at).await?)
}

// ---------------------------------------------------------------- tasks and notes

keyed_by!(Task, id);
keyed_by!(MissionTask, id);

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

/// At most this many bytes of JSON in a `metadata` object.
pub const MAX_METADATA_BYTES: usize = 65_536;

fn metadata(value: Option<serde_json::Value>) -> Result<Option<serde_json::Value>, RecordError> {
    match value {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(v @ serde_json::Value::Object(_)) if v.to_string().len() <= MAX_METADATA_BYTES => Ok(Some(v)),
        Some(serde_json::Value::Object(_)) => Err(RecordError::invalid(
            "metadata",
            format!("metadata must be at most {MAX_METADATA_BYTES} bytes of JSON"),
        )),
        Some(_) => Err(RecordError::invalid("metadata", "metadata must be a JSON object")),
    }
}

fn tags(value: Option<Vec<String>>) -> Result<Vec<String>, RecordError> {
    let tags = value.unwrap_or_default();
    if tags.len() > 50 {
        return Err(RecordError::invalid("tags", "tags must have at most 50 entries"));
    }
    tags.iter().enumerate().map(|(i, t)| text(&format!("tags[{i}]"), t, 100)).collect()
}

/// # Errors
/// 400 on a bad field or a mission of another project; 404 for an unknown project or mission.
pub async fn create_task(conn: &mut PgConnection, new: NewTask) -> Result<Task, RecordError> {
    let title = text("title", &new.title, 500)?;
    let description = new.description.filter(|d| !d.trim().is_empty());
    if description.as_ref().is_some_and(|d| d.chars().count() > 100_000) {
        return Err(RecordError::invalid("description", "description must have at most 100000 characters"));
    }
    let status = optional_text("status", new.status.as_deref(), 64)?.unwrap_or_else(|| "todo".into());
    let priority = optional_text("priority", new.priority.as_deref(), 64)?.unwrap_or_else(|| "medium".into());
    let assignee = optional_text("assignee", new.assignee.as_deref(), 200)?;
    let tags = tags(new.tags)?;
    let metadata = metadata(new.metadata)?;
    // Visibility is decided by project_id alone (DESIGN §4), so a mission's task takes its project.
    let project_id = match new.mission_id {
        Some(mission_id) => {
            let mission_project = projects::project_of_mission(conn, mission_id)
                .await?
                .ok_or_else(|| RecordError::Missing { field: "missionId".into() })?;
            if new.project_id.is_some_and(|p| p != mission_project) {
                // Both ids are well formed and exist; they disagree with each other as stored.
                return Err(RecordError::Conflict {
                    field: "projectId".into(),
                    message: "projectId differs from the project of missionId".into(),
                });
            }
            mission_project
        }
        None => new.project_id.ok_or_else(|| RecordError::invalid("projectId", "give projectId, missionId or both"))?,
    };
    let new = tasks::Insert {
        id: id_or_new(new.id),
        title,
        description,
        status,
        priority,
        project_id,
        mission_id: new.mission_id,
        assignee,
        tags,
        due_date: new.due_date,
        metadata,
        created_at: new.created_at,
    };
    Ok(tasks::insert(conn, new).await?)
}

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

/// # Errors
/// 400 on a bad field; 404 for an unknown mission, user or task.
pub async fn create_mission_task(conn: &mut PgConnection, new: NewMissionTask) -> Result<MissionTask, RecordError> {
    if new.content.chars().count() > 100_000 {
        return Err(RecordError::invalid("content", "content must have at most 100000 characters"));
    }
    let status = optional_text("status", new.status.as_deref(), 64)?.unwrap_or_else(|| "open".into());
    let new = notes::Insert {
        id: id_or_new(new.id),
        mission_id: new.mission_id,
        user_id: new.user_id,
        task_id: new.task_id,
        content: new.content,
        status,
        created_at: new.created_at,
    };
    Ok(notes::insert(conn, new).await?)
}

// ---------------------------------------------------------------- memory

keyed_by!(Insight, id);
keyed_by!(Preference, id);

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

/// # Errors
/// 400 on a bad field or embedding; 404 for an unknown user.
pub async fn create_insight(conn: &mut PgConnection, new: NewInsight) -> Result<Insight, RecordError> {
    let content = text("content", &new.content, 100_000)?;
    let category = optional_text("category", new.category.as_deref(), 200)?;
    let source = optional_text("source", new.source.as_deref(), 64)?.unwrap_or_else(|| "agent".into());
    let relevance_score = new.relevance_score.unwrap_or(1.0);
    if !relevance_score.is_finite() {
        return Err(RecordError::invalid("relevanceScore", "relevanceScore must be a finite number"));
    }
    let metadata = metadata(new.metadata)?;
    let embedding = match new.embedding {
        Some(v) if v.len() != EMBEDDING_DIMS => {
            return Err(RecordError::invalid(
                "embedding",
                format!("embedding must have {EMBEDDING_DIMS} numbers, not {}", v.len()),
            ));
        }
        Some(v) if v.iter().any(|x| !x.is_finite()) => {
            return Err(RecordError::invalid("embedding", "embedding must hold finite numbers"));
        }
        other => other.map(pgvector::Vector::from),
    };
    let new = memory::InsightInsert {
        id: id_or_new(new.id),
        user_id: new.user_id,
        content,
        category,
        embedding,
        source,
        relevance_score,
        metadata,
        created_at: new.created_at,
    };
    Ok(memory::insert_insight(conn, new).await?)
}

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

/// # Errors
/// 400 on a bad field; 404 for an unknown user; 409 when the user already has this key.
pub async fn create_preference(conn: &mut PgConnection, new: NewPreference) -> Result<Preference, RecordError> {
    let key = text("key", &new.key, 200)?;
    let category = optional_text("category", new.category.as_deref(), 200)?;
    let source = optional_text("source", new.source.as_deref(), 64)?;
    let new = memory::PreferenceInsert {
        id: id_or_new(new.id),
        user_id: new.user_id,
        key,
        value: new.value,
        category,
        source,
        mutable: new.mutable,
        created_at: new.created_at,
    };
    Ok(memory::insert_preference(conn, new).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_trimmed_and_checked() {
        assert_eq!(email("  ada@example.org ").unwrap(), "ada@example.org");
        for bad in ["", "ada", "@x", "a@", "a@b@c", "a b@c"] {
            assert_eq!(email(bad).unwrap_err().fault(), Fault::invalid("email"), "{bad}");
        }
    }
}
