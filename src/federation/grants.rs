//! Grants: one local subject user's data, cut to a scope, for one peer. Admin API under
//! `/api/admin/grants`.
//!
//! States `pending → active → revoked | expired`. Activation happens only through enrollment
//! (the peer redeems a token); revocation is irreversible; anything else is 409 `conflict`.

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgExecutor};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::audit::{self, AuditEntry};
use super::scope::GrantScope;
use crate::admin::guard::AdminUser;
use crate::app::AppState;
use crate::http::error::{ApiError, ErrorEnvelope};
use crate::http::extract::{Json, Path, Query};

#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct Grant {
    pub id: Uuid,
    pub peer_id: Uuid,
    pub subject_user_id: Option<Uuid>,
    #[schema(value_type = Object)]
    pub scope: serde_json::Value,
    pub scope_version: i32,
    /// pending, active, revoked, expired
    pub status: String,
    pub expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub activated_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub revoke_reason: Option<String>,
    /// Federation requests per minute for this grant; null means the gateway default.
    pub rate_per_minute: Option<i32>,
}

const GRANT_COLUMNS: &str = "id, peer_id, subject_user_id, scope, scope_version, status, expires_at, created_at, \
     activated_at, revoked_at, revoke_reason, rate_per_minute";

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
    #[schema(pattern = "^(pending|active|expired|revoked)$")]
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
    #[param(pattern = "^(pending|active|expired|revoked)$")]
    pub status: Option<String>,
}

/// The statuses a grant can be in.
pub const STATUSES: [&str; 4] = ["pending", "active", "expired", "revoked"];

/// Longest revoke reason kept (characters): it is free text from an admin, stored as `text`.
const MAX_REASON: usize = 1000;

fn check_reason(reason: &str) -> Result<(), ApiError> {
    if reason.chars().count() > MAX_REASON {
        return Err(ApiError::invalid_field("reason", format!("reason must have at most {MAX_REASON} characters")));
    }
    Ok(())
}

fn check_rate(rate: Option<i32>) -> Result<(), ApiError> {
    match rate {
        Some(r) if !(1..=1_000_000).contains(&r) => {
            Err(ApiError::invalid_field("ratePerMinute", "ratePerMinute must be between 1 and 1000000"))
        }
        _ => Ok(()),
    }
}

fn scope_error(e: super::scope::ScopeError) -> ApiError {
    ApiError::invalid_request(format!("invalid scope: {e}")).with_details(serde_json::json!({"field": e.field}))
}

/// # Errors
/// Database errors.
pub async fn find(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<Grant>, sqlx::Error> {
    let sql = format!("select {GRANT_COLUMNS} from federation_grants where id = $1");
    sqlx::query_as::<_, Grant>(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(db).await
}

/// Loads a grant with a row lock, for a transition inside `conn`'s transaction.
async fn lock(conn: &mut PgConnection, id: Uuid) -> Result<Grant, ApiError> {
    let sql = format!("select {GRANT_COLUMNS} from federation_grants where id = $1 for update");
    sqlx::query_as::<_, Grant>(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| ApiError::not_found("No such grant"))
}

/// Revokes a grant and every certificate issued under it, with an audit row, in `conn`'s
/// transaction.
///
/// # Errors
/// 404 for an unknown grant; 409 unless it is pending or active.
pub async fn revoke(conn: &mut PgConnection, id: Uuid, reason: &str) -> Result<Grant, ApiError> {
    let grant = lock(conn, id).await?;
    if !matches!(grant.status.as_str(), "pending" | "active") {
        return Err(ApiError::conflict(format!(
            "grant is {}; only pending or active grants can be revoked",
            grant.status
        )));
    }
    let sql = format!(
        "update federation_grants set status = 'revoked', revoked_at = now(), revoke_reason = $2
         where id = $1 returning {GRANT_COLUMNS}"
    );
    let grant =
        sqlx::query_as::<_, Grant>(sqlx::AssertSqlSafe(sql)).bind(id).bind(reason).fetch_one(&mut *conn).await?;
    sqlx::query("update federation_issued_certs set revoked_at = now() where grant_id = $1 and revoked_at is null")
        .bind(id)
        .execute(&mut *conn)
        .await?;
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
/// 400 for an invalid scope or expiry; 404 naming `peerId` or `subjectUserId` when unknown.
pub async fn create(conn: &mut PgConnection, body: &CreateGrant) -> Result<Grant, ApiError> {
    let scope = GrantScope::parse(&body.scope).map_err(scope_error)?;
    if body.expires_at.is_some_and(|e| e <= Utc::now()) {
        return Err(ApiError::invalid_field("expiresAt", "expiresAt must be in the future"));
    }
    check_rate(body.rate_per_minute)?;
    let sql = format!(
        "insert into federation_grants (id, peer_id, subject_user_id, scope, expires_at, rate_per_minute)
         values ($1, $2, $3, $4, $5, $6) returning {GRANT_COLUMNS}"
    );
    let grant = sqlx::query_as::<_, Grant>(sqlx::AssertSqlSafe(sql))
        .bind(Uuid::now_v7())
        .bind(body.peer_id)
        .bind(body.subject_user_id)
        .bind(serde_json::to_value(&scope).map_err(anyhow::Error::from)?)
        .bind(body.expires_at)
        .bind(body.rate_per_minute)
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| match e {
            sqlx::Error::Database(d) if d.constraint() == Some("federation_grants_peer_id_fkey") => {
                ApiError::not_found("No such peer").with_details(serde_json::json!({"field": "peerId"}))
            }
            sqlx::Error::Database(d) if d.constraint() == Some("federation_grants_subject_user_id_fkey") => {
                ApiError::not_found("No such user").with_details(serde_json::json!({"field": "subjectUserId"}))
            }
            other => other.into(),
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

/// Grants, optionally filtered by peer and status, oldest first.
///
/// # Errors
/// Database errors.
pub async fn list(db: impl PgExecutor<'_>, filter: &GrantFilter) -> Result<Vec<Grant>, sqlx::Error> {
    let sql = format!(
        "select {GRANT_COLUMNS} from federation_grants
         where ($1::uuid is null or peer_id = $1) and ($2::text is null or status = $2)
         order by created_at, id"
    );
    sqlx::query_as::<_, Grant>(sqlx::AssertSqlSafe(sql)).bind(filter.peer_id).bind(&filter.status).fetch_all(db).await
}

/// List grants, optionally by peer and status.
#[utoipa::path(get, path = "/api/admin/grants", tag = "admin", params(GrantFilter),
    responses((status = 200, body = Vec<Grant>), (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope)))]
pub async fn list_grants(
    _admin: AdminUser,
    State(state): State<AppState>,
    Query(filter): Query<GrantFilter>,
) -> Result<Json<Vec<Grant>>, ApiError> {
    if let Some(status) = &filter.status
        && !STATUSES.contains(&status.as_str())
    {
        return Err(ApiError::invalid_field("status", format!("status must be one of {}", STATUSES.join(", "))));
    }
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
    find(&state.pool, id).await?.map(Json).ok_or_else(|| ApiError::not_found("No such grant"))
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
    if let Some(reason) = &body.reason {
        check_reason(reason)?;
    }
    let mut tx = state.pool.begin().await?;
    let grant = lock(&mut tx, id).await?;
    let mut grant = match body.status.as_deref() {
        None => grant,
        Some(s) if s == grant.status => grant,
        Some("revoked") => revoke(&mut tx, id, body.reason.as_deref().unwrap_or("revoked by admin")).await?,
        Some("active") => {
            return Err(ApiError::conflict(format!(
                "grant is {}; a grant becomes active only when its peer redeems an enrollment token",
                grant.status
            )));
        }
        Some("expired") if grant.status == "active" || grant.status == "pending" => {
            let sql =
                format!("update federation_grants set status = 'expired' where id = $1 returning {GRANT_COLUMNS}");
            sqlx::query_as::<_, Grant>(sqlx::AssertSqlSafe(sql)).bind(id).fetch_one(&mut *tx).await?
        }
        Some(s @ ("pending" | "expired")) => {
            return Err(ApiError::conflict(format!("grant is {}; it cannot become {s}", grant.status)));
        }
        Some(other) => return Err(ApiError::invalid_field("status", format!("unknown status '{other}'"))),
    };
    if let Some(scope) = &body.scope {
        if !matches!(grant.status.as_str(), "pending" | "active") {
            return Err(ApiError::conflict(format!("grant is {}; its scope can no longer change", grant.status)));
        }
        let scope = GrantScope::parse(scope).map_err(scope_error)?;
        let sql = format!(
            "update federation_grants set scope = $2, scope_version = scope_version + 1 where id = $1 returning {GRANT_COLUMNS}"
        );
        grant = sqlx::query_as::<_, Grant>(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .bind(serde_json::to_value(&scope).map_err(anyhow::Error::from)?)
            .fetch_one(&mut *tx)
            .await?;
    }
    if let Some(rate) = body.rate_per_minute {
        check_rate(Some(rate))?;
        let sql = format!("update federation_grants set rate_per_minute = $2 where id = $1 returning {GRANT_COLUMNS}");
        grant = sqlx::query_as::<_, Grant>(sqlx::AssertSqlSafe(sql)).bind(id).bind(rate).fetch_one(&mut *tx).await?;
    }
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
        return Err(ApiError::invalid_field("reason", "reason must not be empty"));
    }
    check_reason(body.reason.trim())?;
    let mut tx = state.pool.begin().await?;
    let grant = revoke(&mut tx, id, body.reason.trim()).await?;
    tx.commit().await?;
    Ok(Json(grant))
}
