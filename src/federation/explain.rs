//! Scope explain: what a grant exposes before a peer uses it.
//!
//! `POST /api/admin/grants/{id}/explain` (a saved grant) and `POST /api/admin/grants/explain`
//! (`{peerId, subjectUserId, scope}`, not saved) answer, per resource: allowed, or the stage and
//! deny code that would refuse it (the guard's and the scope evaluation's own, so explain and
//! `list` cannot disagree), the effective team ids, personal on/off, the row cap, and how many
//! rows the peer would see now. Never the rows themselves. `tessera grant explain` prints it.

use axum::extract::State;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::grants::GrantRefusal;
use super::scope::{GrantScope, ScopeError, evaluate};
use crate::admin::guard::AdminUser;
use crate::app::AppState;
use crate::error::{DomainError, Fault};
use crate::http::error::{ApiError, ErrorEnvelope};
use crate::http::extract::{Json, Path};
use crate::rbac::Resource;
use crate::store::peers::PeerState;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExplainScope {
    pub peer_id: Uuid,
    pub subject_user_id: Uuid,
    /// A scope as a grant would hold it (DESIGN §4).
    #[schema(value_type = crate::federation::scope::GrantScope)]
    pub scope: serde_json::Value,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Explanation {
    /// Set when the grant itself would be refused before any resource (stage `guard`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grant_denial: Option<String>,
    pub resources: Vec<ResourceExplanation>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceExplanation {
    pub resource: String,
    pub allowed: bool,
    /// The stage that refuses (`guard`, `resource_allowlist`, `resource_exclusion`, `native_rbac`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// The deny code the audit log would record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deny_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The subject's current teams that the grant lets through.
    pub team_ids: Vec<Uuid>,
    pub include_personal: bool,
    pub row_cap: u32,
    /// Rows the peer would see now (0 when refused).
    pub visible_rows: i64,
}

/// Why explain was refused, or could not be done.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("No such grant")]
    UnknownGrant,
    #[error("No such peer")]
    UnknownPeer,
    #[error("No such user")]
    UnknownSubject,
    #[error("{0}")]
    InvalidScope(ScopeError),
    #[error("stored grant scope does not parse")]
    StoredScope(#[source] serde_json::Error),
    #[error("explain could not read the database")]
    Database(#[from] sqlx::Error),
}

impl DomainError for ExplainError {
    fn fault(&self) -> Fault {
        match self {
            Self::UnknownGrant => Fault::NotFound { field: None },
            Self::UnknownPeer => Fault::not_found("peerId"),
            Self::UnknownSubject => Fault::not_found("subjectUserId"),
            Self::InvalidScope(_) => Fault::invalid("scope"),
            Self::StoredScope(_) | Self::Database(_) => Fault::Internal,
        }
    }
}

/// What explain needs to know besides the scope.
struct Subject {
    /// `None` when the subject is missing or disabled.
    teams: Option<Vec<Uuid>>,
}

async fn subject(pool: &sqlx::PgPool, user: Uuid) -> Result<Subject, sqlx::Error> {
    Ok(Subject { teams: crate::store::grants::subject_teams(pool, user).await? })
}

/// Explains `scope` for `subject_user_id`, with `grant_denial` (from the grant and peer state)
/// refusing every resource at stage `guard`.
///
/// # Errors
/// Database errors.
async fn explain(
    pool: &sqlx::PgPool,
    scope: &GrantScope,
    subject_user_id: Uuid,
    grant_denial: Option<String>,
) -> Result<Explanation, ExplainError> {
    let subject = subject(pool, subject_user_id).await?;
    let mut resources = Vec::new();
    for resource in Resource::NAMES {
        let mut item = ResourceExplanation {
            resource: resource.to_string(),
            allowed: false,
            stage: None,
            deny_code: None,
            reason: None,
            team_ids: Vec::new(),
            include_personal: false,
            row_cap: scope.max_rows(),
            visible_rows: 0,
        };
        if let Some(reason) = &grant_denial {
            item.stage = Some("guard".into());
            item.deny_code = Some("guard".into());
            item.reason = Some(reason.clone());
        } else {
            match evaluate(scope, subject_user_id, subject.teams.as_deref(), resource, None) {
                Ok(filter) => {
                    item.allowed = true;
                    item.visible_rows = super::verbs::visibility::visible_count(pool, &filter).await?;
                    item.team_ids = filter.team_ids;
                    item.include_personal = filter.include_personal;
                    item.row_cap = filter.limit;
                }
                Err(d) => {
                    item.stage = Some(d.code.stage().into());
                    item.deny_code = Some(d.code.as_str().into());
                    item.reason = Some(d.reason);
                }
            }
        }
        resources.push(item);
    }
    Ok(Explanation { grant_denial, resources })
}

/// Explain what a saved grant exposes now, per resource (never the rows).
#[utoipa::path(post, path = "/api/admin/grants/{id}/explain", tag = "admin", params(("id" = Uuid, Path)),
    responses(
        (status = 200, body = Explanation), (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope),
    ))]
pub async fn explain_grant(
    _admin: AdminUser,
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<Json<Explanation>, ApiError> {
    Ok(Json(explain_saved(&state.pool, id).await?))
}

/// Explains a saved grant (the admin route and `tessera grant explain`).
///
/// # Errors
/// An unknown grant; a stored scope that no longer parses; database errors.
pub async fn explain_saved(pool: &sqlx::PgPool, id: Uuid) -> Result<Explanation, ExplainError> {
    let grant = crate::store::grants::check(pool, id).await?.ok_or(ExplainError::UnknownGrant)?;
    let scope: GrantScope = serde_json::from_value(grant.scope).map_err(ExplainError::StoredScope)?;
    let grant_denial =
        GrantRefusal::of(grant.status, grant.expires_at, grant.peer_state, Utc::now()).map(|r| r.to_string());
    match grant.subject_user_id {
        Some(subject) => explain(pool, &scope, subject, grant_denial).await,
        None => explain(pool, &scope, Uuid::nil(), Some("the subject user was deleted".into())).await,
    }
}

/// Explain what a scope would expose for a peer and subject, before saving it as a grant.
#[utoipa::path(post, path = "/api/admin/grants/explain", tag = "admin", request_body = ExplainScope,
    responses(
        (status = 200, body = Explanation), (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope),
    ))]
pub async fn explain_scope(
    _admin: AdminUser,
    State(state): State<AppState>,
    Json(body): Json<ExplainScope>,
) -> Result<Json<Explanation>, ApiError> {
    Ok(Json(explain_unsaved(&state.pool, &body).await?))
}

/// Explains a scope for a peer and subject as a new grant would hold it.
///
/// # Errors
/// An invalid scope; an unknown peer or subject; database errors.
pub async fn explain_unsaved(pool: &sqlx::PgPool, body: &ExplainScope) -> Result<Explanation, ExplainError> {
    let scope = GrantScope::parse(&body.scope).map_err(ExplainError::InvalidScope)?;
    let peer_state = crate::store::peers::state(pool, body.peer_id).await?.ok_or(ExplainError::UnknownPeer)?;
    if !crate::store::grants::subject_exists(pool, body.subject_user_id).await? {
        return Err(ExplainError::UnknownSubject);
    }
    // A new grant starts pending and becomes active at enrollment; only the peer can refuse now.
    let grant_denial =
        matches!(peer_state, PeerState::Suspended | PeerState::Revoked).then(|| format!("peer is {peer_state}"));
    explain(pool, &scope, body.subject_user_id, grant_denial).await
}
