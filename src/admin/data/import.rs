//! `tessera import <file.jsonl>`: bulk-loads the records of the data API, one
//! `{"kind": "...", ...}` object a line, in a single transaction.
//!
//! All or nothing: the first bad line rolls everything back and is reported with its number and
//! the field at fault, so a file can be fixed and re-run without leaving half an import behind.
//! Records may refer to records of earlier lines (give them an `id`).

use std::collections::BTreeMap;
use std::io::BufRead;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use sqlx::PgPool;
use uuid::Uuid;

use super::records::{self, *};

/// A team membership as a line of an import (the HTTP API takes the team from the path).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImportTeamMember {
    pub team_id: Uuid,
    pub user_id: Uuid,
    pub created_at: Option<DateTime<Utc>>,
}

/// One line of an import file.
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ImportRecord {
    User(NewUser),
    Team(NewTeam),
    TeamMember(ImportTeamMember),
    Project(NewProject),
    Mission(NewMission),
    Task(NewTask),
    MissionTask(NewMissionTask),
    Insight(NewInsight),
    Preference(NewPreference),
}

impl ImportRecord {
    fn kind(&self) -> &'static str {
        match self {
            Self::User(_) => "user",
            Self::Team(_) => "team",
            Self::TeamMember(_) => "team_member",
            Self::Project(_) => "project",
            Self::Mission(_) => "mission",
            Self::Task(_) => "task",
            Self::MissionTask(_) => "mission_task",
            Self::Insight(_) => "insight",
            Self::Preference(_) => "preference",
        }
    }
}

/// Why an import stopped.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("line {line}: {message}")]
    Line { line: usize, message: String },
    #[error("cannot read the import file: {0}")]
    Read(#[from] std::io::Error),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Imports every line of `input`; returns how many records of each kind were created.
///
/// # Errors
/// The first unreadable or rejected line (nothing is kept), or a database failure.
pub async fn import(pool: &PgPool, input: impl BufRead) -> Result<BTreeMap<&'static str, usize>, ImportError> {
    let mut tx = pool.begin().await?;
    let mut counts = BTreeMap::new();
    for (index, line) in input.lines().enumerate() {
        let line_no = index + 1;
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        // The same rule as the HTTP API: Postgres cannot store NUL, so refuse it here, by name.
        if let Some(path) = crate::http::extract::nul_in_json(line.as_bytes()) {
            let field = if path.is_empty() { "the record".to_string() } else { path };
            let message = format!("{field} must not contain the NUL character (U+0000)");
            return Err(ImportError::Line { line: line_no, message });
        }
        let record: ImportRecord = serde_json::from_str(&line)
            .map_err(|e| ImportError::Line { line: line_no, message: format!("not a valid record: {e}") })?;
        let kind = record.kind();
        let conn = &mut *tx;
        let result = match record {
            ImportRecord::User(r) => records::create_user(conn, r).await.map(drop),
            ImportRecord::Team(r) => records::create_team(conn, r).await.map(drop),
            ImportRecord::TeamMember(r) => records::add_team_member(
                conn,
                r.team_id,
                NewTeamMember { user_id: r.user_id, created_at: r.created_at },
            )
            .await
            .map(drop),
            ImportRecord::Project(r) => records::create_project(conn, r).await.map(drop),
            ImportRecord::Mission(r) => records::create_mission(conn, r).await.map(drop),
            ImportRecord::Task(r) => records::create_task(conn, r).await.map(drop),
            ImportRecord::MissionTask(r) => records::create_mission_task(conn, r).await.map(drop),
            ImportRecord::Insight(r) => records::create_insight(conn, r).await.map(drop),
            ImportRecord::Preference(r) => records::create_preference(conn, r).await.map(drop),
        };
        match result {
            Ok(()) => {}
            // A database failure is no fault of the line: it is reported with its cause.
            Err(RecordError::Database(e)) => return Err(ImportError::Database(e)),
            Err(e) => return Err(ImportError::Line { line: line_no, message: format!("{kind}: {e}") }),
        }
        *counts.entry(kind).or_insert(0) += 1;
    }
    tx.commit().await?;
    Ok(counts)
}
