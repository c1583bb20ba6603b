//! Grants: one local subject user's data, cut to a scope, for one peer. Admin API under
//! `/api/admin/grants`.
//!
//! States `pending → active → revoked | expired`. Activation happens only through enrollment
//! (the peer redeems a token); revocation is irreversible; anything else is 409 `conflict`.

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use sqlx::{PgConnection, PgExecutor};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::audit::{self, AuditEntry};
use super::scope::{GrantScope, ScopeError};
use crate::admin::guard::AdminUser;
use crate::app::AppState;
use crate::error::{DomainError, Fault};
use crate::http::error::{ApiError, ErrorEnvelope};
use crate::http::extract::{Json, Path, Query};
use crate::store;
pub use crate::store::grants::{Grant, GrantStatus};
use crate::store::peers::PeerState;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateGrant {
    pub peer_id: Uuid,
    pub subject_user_id: Uuid,
    #[schema(value_type = GrantScope)]
    pub scope: serde_json::Value,
    pub expires_at: Option<DateTime<Utc>>,
    /// Federation requests per minute for this grant (1..=1000000); the gateway default when absent.
    #[serde(default, deserialize_with = "crate::http::extract::integer::optional")]
    #[schema(minimum = 1, maximum = 1000000)]
    pub rate_per_minute: Option<i32>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateGrant {
    /// A new scope (validated); allowed while pending or active.
    #[schema(value_type = Option<GrantScope>)]
    pub scope: Option<serde_json::Value>,
    /// A status transition; `active` comes only from enrollment, `revoked` is final.
    #[schema(value_type = Option<GrantStatus>)]
    pub status: Option<String>,
    #[schema(max_length = 1000)]
    pub reason: Option<String>,
    /// A new per-grant rate limit (requests per minute, 1..=1000000).
    #[schema(minimum = 1, maximum = 1000000)]
    #[serde(default, deserialize_with = "crate::http::extract::integer::optional")]
    pub rate_per_minute: Option<i32>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RevokeGrant {
    #[schema(
        min_length = 1,
        max_length = 1000,
        pattern = r"[^\t\n\u000b\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
    )]
    pub reason: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
pub struct GrantFilter {
    pub peer_id: Option<Uuid>,
    /// Only grants in this status.
    #[param(value_type = Option<GrantStatus>)]
    pub status: Option<String>,
}

impl GrantFilter {
    /// The status asked for.
    ///
    /// # Errors
    /// [`GrantError::UnknownStatusFilter`].
    pub fn status(&self) -> Result<Option<GrantStatus>, GrantError> {
        self.status.as_deref().map(|s| GrantStatus::parse(s).ok_or(GrantError::UnknownStatusFilter)).transpose()
    }
}

/// Why a grant refuses every request in its stored state, before any certificate is looked at.
/// The guard ([`super::guard`]) and explain ([`super::explain`]) both ask this one function, in
/// this order, so they cannot disagree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantRefusal {
    NotActive(GrantStatus),
    Expired,
    PeerNotActive(PeerState),
}

impl GrantRefusal {
    /// The refusal of a grant in `status`, expiring at `expires_at`, whose peer is in `peer_state`.
    pub fn of(
        status: GrantStatus,
        expires_at: Option<DateTime<Utc>>,
        peer_state: PeerState,
        now: DateTime<Utc>,
    ) -> Option<Self> {
        if status != GrantStatus::Active {
            Some(Self::NotActive(status))
        } else if expires_at.is_some_and(|e| e <= now) {
            Some(Self::Expired)
        } else if peer_state != PeerState::Active {
            Some(Self::PeerNotActive(peer_state))
        } else {
            None
        }
    }

    /// The guard's audit reason: the rule, not the state.
    pub fn reason(self) -> &'static str {
        match self {
            Self::NotActive(_) => "grant is not active",
            Self::Expired => "grant has expired",
            Self::PeerNotActive(_) => "peer is not active",
        }
    }
}

/// Explain's words: the rule and the state.
impl std::fmt::Display for GrantRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotActive(status) => write!(f, "grant is not active ({status})"),
            Self::Expired => f.write_str("grant has expired"),
            Self::PeerNotActive(state) => write!(f, "peer is not active ({state})"),
        }
    }
}

/// Longest revoke reason kept (characters): it is free text from an admin, stored as `text`.
const MAX_REASON: usize = 1000;

/// Why a grant operation was refused, or could not be done.
#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    #[error("No such grant")]
    NotFound,
    #[error("No such peer")]
    UnknownPeer,
    #[error("No such user")]
    UnknownSubject,
    #[error("invalid scope: {0}")]
    InvalidScope(ScopeError),
    #[error("expiresAt must be in the future")]
    ExpiryNotInFuture,
    #[error("ratePerMinute must be between 1 and 1000000")]
    InvalidRate,
    #[error("reason must not be empty")]
    EmptyReason,
    #[error("reason must have at most {MAX_REASON} characters")]
    ReasonTooLong,
    #[error("status must be one of pending, active, expired, revoked")]
    UnknownStatusFilter,
    #[error("unknown status '{0}'")]
    UnknownStatus(String),
    #[error("grant is {0}; only pending or active grants can be revoked")]
    NotRevocable(GrantStatus),
    #[error("grant is {0}; a grant becomes active only when its peer redeems an enrollment token")]
    ActiveOnlyByEnrollment(GrantStatus),
    #[error("grant is {from}; it cannot become {to}")]
    Transition { from: GrantStatus, to: GrantStatus },
    #[error("grant is {0}; its scope can no longer change")]
    ScopeFrozen(GrantStatus),
    #[error("the grant store failed")]
    Database(#[from] sqlx::Error),
}

impl DomainError for GrantError {
    fn fault(&self) -> Fault {
        match self {
            Self::NotFound => Fault::NotFound { field: None },
            Self::UnknownPeer => Fault::not_found("peerId"),
            Self::UnknownSubject => Fault::not_found("subjectUserId"),
            Self::InvalidScope(e) => Fault::invalid(&e.field),
            Self::ExpiryNotInFuture => Fault::invalid("expiresAt"),
            Self::InvalidRate => Fault::invalid("ratePerMinute"),
            Self::EmptyReason | Self::ReasonTooLong => Fault::invalid("reason"),
            Self::UnknownStatusFilter | Self::UnknownStatus(_) => Fault::invalid("status"),
            Self::NotRevocable(_)
            | Self::ActiveOnlyByEnrollment(_)
            | Self::Transition { .. }
            | Self::ScopeFrozen(_) => Fault::Conflict { field: None },
            Self::Database(_) => Fault::Internal,
        }
    }
}

fn check_reason(reason: &str) -> Result<(), GrantError> {
    if reason.chars().count() > MAX_REASON {
        return Err(GrantError::ReasonTooLong);
    }
    Ok(())
}

fn check_rate(rate: Option<i32>) -> Result<(), GrantError> {
    match rate {
        Some(r) if !(1..=1_000_000).contains(&r) => Err(GrantError::InvalidRate),
        _ => Ok(()),
    }
}

/// A scope document validated and in its stored form.
fn checked_scope(scope: &serde_json::Value) -> Result<serde_json::Value, GrantError> {
    let scope = GrantScope::parse(scope).map_err(GrantError::InvalidScope)?;
    Ok(serde_json::to_value(&scope).expect("a parsed scope serialises"))
}

/// # Errors
/// Database errors.
pub async fn find(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<Grant>, GrantError> {
    Ok(store::grants::find(db, id).await?)
}

/// Loads a grant with a row lock, for a transition inside `conn`'s transaction.
async fn lock(conn: &mut PgConnection, id: Uuid) -> Result<Grant, GrantError> {
    store::grants::lock(conn, id).await?.ok_or(GrantError::NotFound)
}

/// Revokes a grant and every certificate issued under it, with an audit row, in `conn`'s
/// transaction.
///
/// # Errors
/// Unknown grant; not pending or active; database errors.
pub async fn revoke(conn: &mut PgConnection, id: Uuid, reason: &str) -> Result<Grant, GrantError> {
    let grant = lock(conn, id).await?;
    if !grant.status.is_open() {
        return Err(GrantError::NotRevocable(grant.status));
    }
    let grant = store::grants::set_revoked(conn, id, reason).await?;
    audit::record(
        &mut *conn,
        &AuditEntry {
            grant_id: Some(id),
            peer_id: Some(grant.peer_id),
            subject_user_id: grant.subject_user_id,
            verb: "revoke",
            outcome: "revoked",
            reason: Some(reason.to_string()),
            ..Default::default()
        },
    )
    .await?;
    // `grant.revoked` is emitted by a trigger on the status change (every revocation path).
    Ok(grant)
}

/// Creates a pending grant after validating its scope, with its `grant.created` outbox event,
/// in `conn`'s transaction.
///
/// # Errors
/// An invalid scope, expiry or rate; an unknown peer or subject; database errors.
pub async fn create(conn: &mut PgConnection, body: &CreateGrant) -> Result<Grant, GrantError> {
    let scope = checked_scope(&body.scope)?;
    if body.expires_at.is_some_and(|e| e <= Utc::now()) {
        return Err(GrantError::ExpiryNotInFuture);
    }
    check_rate(body.rate_per_minute)?;
    let new = store::grants::NewGrant {
        peer_id: body.peer_id,
        subject_user_id: body.subject_user_id,
        scope: &scope,
        expires_at: body.expires_at,
        rate_per_minute: body.rate_per_minute,
    };
    let grant = store::grants::insert(conn, &new).await.map_err(|e| {
        match store::constraint::violation(&e).as_ref().and_then(|v| v.field()) {
            Some("peerId") => GrantError::UnknownPeer,
            Some("subjectUserId") => GrantError::UnknownSubject,
            _ => GrantError::Database(e),
        }
    })?;
    crate::outbox::emit_event(
        &mut *conn,
        "grant.created",
        &serde_json::json!({
            "grantId": grant.id, "peerId": grant.peer_id, "subjectUserId": grant.subject_user_id,
            "status": grant.status, "expiresAt": grant.expires_at,
        }),
    )
    .await?;
    Ok(grant)
}

/// Applies an admin's edit: a status transition (checked), a new scope, a new rate, in `conn`'s
/// transaction.
///
/// # Errors
/// Unknown grant; an invalid field; a transition or edit the grant's status refuses.
pub async fn update(conn: &mut PgConnection, id: Uuid, body: &UpdateGrant) -> Result<Grant, GrantError> {
    if let Some(reason) = &body.reason {
        check_reason(reason)?;
    }
    let grant = lock(conn, id).await?;
    let wanted = match body.status.as_deref() {
        None => None,
        Some(s) => Some(GrantStatus::parse(s).ok_or_else(|| GrantError::UnknownStatus(s.to_string()))?),
    };
    let mut grant = match wanted {
        None => grant,
        Some(s) if s == grant.status => grant,
        Some(GrantStatus::Revoked) => revoke(conn, id, body.reason.as_deref().unwrap_or("revoked by admin")).await?,
        Some(GrantStatus::Active) => return Err(GrantError::ActiveOnlyByEnrollment(grant.status)),
        Some(GrantStatus::Expired) if grant.status.is_open() => store::grants::set_expired(conn, id).await?,
        Some(to) => return Err(GrantError::Transition { from: grant.status, to }),
    };
    if let Some(scope) = &body.scope {
        if !grant.status.is_open() {
            return Err(GrantError::ScopeFrozen(grant.status));
        }
        grant = store::grants::set_scope(conn, id, &checked_scope(scope)?).await?;
    }
    if let Some(rate) = body.rate_per_minute {
        check_rate(Some(rate))?;
        grant = store::grants::set_rate(conn, id, rate).await?;
    }
    Ok(grant)
}

/// Grants, optionally filtered by peer and status, oldest first.
///
/// # Errors
/// An unknown status; database errors.
pub async fn list(db: impl PgExecutor<'_>, filter: &GrantFilter) -> Result<Vec<Grant>, GrantError> {
    let status = filter.status()?;
    Ok(store::grants::list(db, filter.peer_id, status).await?)
}

/// Create a grant (status `pending`).
#[utoipa::path(post, path = "/api/admin/grants", tag = "admin", request_body = CreateGrant,
    responses(
        (status = 201, body = Grant), (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope),
    ))]
pub async fn create_grant(
    _admin: AdminUser,
    State(state): State<AppState>,
    Json(body): Json<CreateGrant>,
) -> Result<(StatusCode, Json<Grant>), ApiError> {
    let mut tx = state.pool.begin().await?;
    let grant = create(&mut tx, &body).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(grant)))
}

/// List grants, optionally by peer and status.
#[utoipa::path(get, path = "/api/admin/grants", tag = "admin", params(GrantFilter),
    responses((status = 200, body = Vec<Grant>), (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope)))]
pub async fn list_grants(
    _admin: AdminUser,
    State(state): State<AppState>,
    Query(filter): Query<GrantFilter>,
) -> Result<Json<Vec<Grant>>, ApiError> {
    Ok(Json(list(&state.pool, &filter).await?))
}

/// Show one grant.
#[utoipa::path(get, path = "/api/admin/grants/{id}", tag = "admin", params(("id" = Uuid, Path)),
    responses((status = 200, body = Grant), (status = 404, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope)))]
pub async fn show_grant(
    _admin: AdminUser,
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<Json<Grant>, ApiError> {
    Ok(Json(find(&state.pool, id).await?.ok_or(GrantError::NotFound)?))
}

/// Edit a grant's scope, or move it to another status (checked; invalid transitions are 409).
#[utoipa::path(patch, path = "/api/admin/grants/{id}", tag = "admin", params(("id" = Uuid, Path)), request_body = UpdateGrant,
    responses(
        (status = 200, body = Grant), (status = 400, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope),
        (status = 409, body = ErrorEnvelope),
    ))]
pub async fn update_grant(
    _admin: AdminUser,
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
    Json(body): Json<UpdateGrant>,
) -> Result<Json<Grant>, ApiError> {
    let mut tx = state.pool.begin().await?;
    let grant = update(&mut tx, id, &body).await?;
    tx.commit().await?;
    Ok(Json(grant))
}

/// Revoke a grant (irreversible). Its certificates are listed in the CRL from now on.
#[utoipa::path(post, path = "/api/admin/grants/{id}/revoke", tag = "admin", params(("id" = Uuid, Path)), request_body = RevokeGrant,
    responses((status = 200, body = Grant), (status = 404, body = ErrorEnvelope), (status = 409, body = ErrorEnvelope)))]
pub async fn revoke_grant(
    _admin: AdminUser,
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
    Json(body): Json<RevokeGrant>,
) -> Result<Json<Grant>, ApiError> {
    if body.reason.trim().is_empty() {
        return Err(GrantError::EmptyReason.into());
    }
    check_reason(body.reason.trim())?;
    let mut tx = state.pool.begin().await?;
    let grant = revoke(&mut tx, id, body.reason.trim()).await?;
    tx.commit().await?;
    Ok(Json(grant))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_spelled_as_stored() {
        for status in GrantStatus::ALL {
            assert_eq!(GrantStatus::parse(status.as_str()), Some(status));
            assert_eq!(serde_json::to_value(status).unwrap(), status.as_str());
        }
        assert_eq!(GrantStatus::parse("Active"), None);
    }

    #[test]
    fn the_grant_state_rule_checks_status_then_expiry_then_peer() {
        let now = Utc::now();
        let past = Some(now - chrono::Duration::seconds(1));
        let of = |status, expires_at, peer| GrantRefusal::of(status, expires_at, peer, now);
        assert_eq!(of(GrantStatus::Active, None, PeerState::Active), None);
        assert_eq!(of(GrantStatus::Active, Some(now + chrono::Duration::hours(1)), PeerState::Active), None);
        let revoked = of(GrantStatus::Revoked, past, PeerState::Suspended).unwrap();
        assert_eq!(
            (revoked.reason(), revoked.to_string().as_str()),
            ("grant is not active", "grant is not active (revoked)")
        );
        assert_eq!(of(GrantStatus::Active, past, PeerState::Suspended), Some(GrantRefusal::Expired));
        let peer = of(GrantStatus::Active, None, PeerState::Degraded).unwrap();
        assert_eq!((peer.reason(), peer.to_string().as_str()), ("peer is not active", "peer is not active (degraded)"));
    }
}
