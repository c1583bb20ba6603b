//! The one home of the row shapes a peer sees (DESIGN §3, issue 17): the columns each resource
//! is read with, and the struct that reads and serialises them. The federation verbs
//! (`list`, `get`, and any verb whose items share list's shape), the local federated query and
//! the local data API's task records all use these, so a shape is written once.
//!
//! The shapes follow Mosaic Stack's list verb field for field (its `list-query.service.ts`):
//!
//! | resource | fields |
//! | --- | --- |
//! | tasks | `id, title, description, status, priority, projectId, missionId, assignee, tags, dueDate, metadata, createdAt, updatedAt` |
//! | notes | `id, missionId, taskId, status, content, createdAt, updatedAt` |
//! | memory (insight) | `id, kind, content, category, relevanceScore, metadata, createdAt, updatedAt` |
//! | memory (preference) | `id, kind, key, value, source, mutable, createdAt, updatedAt` |
//!
//! An insight's `kind` is its `source` (`agent`, `user`, ...) and a preference's `kind` its
//! `category`, as Mosaic sets them; a reader tells the two apart by `key`. Every row served by
//! this gateway also carries `"_source": "local"` ([`Sourced`]).
//!
//! The aggregates' modules (`store::tasks`, `store::notes`, `store::memory`) read these shapes
//! with checked queries; the federation read path composes its scoped statements from the
//! column lists below.
//!
//! The column lists use fixed table aliases: `t` (tasks) and `mt` (mission_tasks).

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

/// Columns of [`Task`], for `from tasks t`.
pub const TASK_COLUMNS: &str = "t.id, t.title, t.description, t.status, t.priority, t.project_id, t.mission_id, \
     t.assignee, t.tags, t.due_date, t.metadata, t.created_at, t.updated_at";

/// Columns of [`Note`], for `from mission_tasks mt`. Notes are mission tasks with non-empty notes.
pub const NOTE_COLUMNS: &str =
    "mt.id, mt.mission_id, mt.task_id, mt.status, mt.notes as content, mt.created_at, mt.updated_at";

/// A task, as peers and the local data API see it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Task {
    pub id: Uuid,
    pub title: String,
    pub description: Option<String>,
    pub status: String,
    pub priority: String,
    pub project_id: Option<Uuid>,
    pub mission_id: Option<Uuid>,
    pub assignee: Option<String>,
    /// Never null; empty when the task has no tags.
    pub tags: Vec<String>,
    pub due_date: Option<DateTime<Utc>>,
    /// A JSON object, or null.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A mission note (a mission task's notes, by their author).
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct Note {
    pub id: Uuid,
    pub mission_id: Uuid,
    pub task_id: Option<Uuid>,
    pub status: String,
    pub content: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A memory row from `insights`.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct Insight {
    pub id: Uuid,
    /// The insight's source (`agent` by default).
    pub kind: String,
    pub content: String,
    pub category: Option<String>,
    pub relevance_score: f32,
    pub metadata: Option<serde_json::Value>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A memory row from `preferences`.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct Preference {
    pub id: Uuid,
    /// The preference's category.
    pub kind: Option<String>,
    pub key: String,
    pub value: serde_json::Value,
    pub source: Option<String>,
    pub mutable: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The keyset bound before every row (`created_at desc, id desc` order): where a first page
/// starts. Postgres 'infinity' does not fit chrono; the end of year 9999 is later than any row.
pub fn before_all() -> (DateTime<Utc>, Uuid) {
    (DateTime::<Utc>::from_timestamp(253_402_300_799, 0).unwrap_or_default(), Uuid::max())
}

/// A row tagged with where it comes from: `"_source": "local"` for this gateway's own rows.
#[derive(Debug, Clone, Serialize)]
pub struct Sourced<'a, T> {
    #[serde(flatten)]
    pub row: T,
    #[serde(rename = "_source")]
    pub source: &'a str,
}

/// `row` tagged `"_source": "local"`.
pub fn local<T>(row: T) -> Sourced<'static, T> {
    Sourced { row, source: "local" }
}

/// `row` tagged local, as a JSON value.
pub fn local_json(row: impl Serialize) -> serde_json::Value {
    serde_json::to_value(local(row)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sourced_row_is_the_row_plus_source() {
        let note = Note {
            id: Uuid::nil(),
            mission_id: Uuid::nil(),
            task_id: None,
            status: "open".into(),
            content: "c".into(),
            created_at: DateTime::<Utc>::UNIX_EPOCH,
            updated_at: DateTime::<Utc>::UNIX_EPOCH,
        };
        let v = local_json(note);
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["_source", "content", "createdAt", "id", "missionId", "status", "taskId", "updatedAt"]);
        assert_eq!(v["_source"], "local");
    }
}
