//! Admin tokens: create (the plaintext is in that one response), list (never the plaintext) and
//! revoke. An admin manages their own tokens; disabling a user revokes all of theirs.

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::credentials::{AdminToken, Secret, mint_token};
use super::guard::AdminUser;
use crate::app::AppState;
use crate::http::error::{ApiError, ErrorEnvelope};
use crate::http::extract::{Json, Path};

/// Longest lifetime a token may be given.
pub const MAX_EXPIRES_IN_DAYS: u32 = 3650;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateToken {
    /// What the token is for (shown in lists).
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"[^\t\n\u000b\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
    )]
    pub label: String,
    /// 1..=3650; without it the token does not expire.
    #[schema(minimum = 1, maximum = 3650)]
    #[serde(default, deserialize_with = "crate::http::extract::integer::optional")]
    pub expires_in_days: Option<u32>,
}

/// A newly created token, with its plaintext (shown only in this response).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenCreated {
    pub id: Uuid,
    pub label: String,
    pub scope: String,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    /// `tsr_...`: store it now, it cannot be shown again.
    pub plaintext: String,
}

impl TokenCreated {
    pub fn new(token: AdminToken, secret: &Secret) -> Self {
        Self {
            id: token.id,
            label: token.label,
            scope: token.scope,
            expires_at: token.expires_at,
            last_used_at: token.last_used_at,
            created_at: token.created_at,
            plaintext: secret.expose().to_string(),
        }
    }
}

impl std::fmt::Debug for TokenCreated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCreated").field("id", &self.id).field("label", &self.label).finish_non_exhaustive()
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenList {
    pub items: Vec<AdminToken>,
}

/// Creates an admin token for the calling admin.
#[utoipa::path(post, path = "/api/admin/tokens", tag = "admin",
    request_body = CreateToken,
    responses(
        (status = 201, description = "Created; `plaintext` is shown only here", body = TokenCreated),
        (status = 400, description = "A field is invalid (`details.field`)", body = ErrorEnvelope),
        (status = 401, description = "No valid credential", body = ErrorEnvelope),
        (status = 403, description = "Not an admin", body = ErrorEnvelope),
    ),
    security(("bearer" = []), ("session" = [])))]
pub async fn create(
    admin: AdminUser,
    State(state): State<AppState>,
    Json(body): Json<CreateToken>,
) -> Result<(StatusCode, Json<TokenCreated>), ApiError> {
    let label = body.label.trim();
    if label.is_empty() || label.chars().count() > 200 {
        return Err(ApiError::invalid_field("label", "label must have 1 to 200 characters"));
    }
    let expires_at = match body.expires_in_days {
        None => None,
        Some(days @ 1..=MAX_EXPIRES_IN_DAYS) => Some(Utc::now() + chrono::Duration::days(i64::from(days))),
        Some(_) => {
            return Err(ApiError::invalid_field(
                "expiresInDays",
                format!("expiresInDays must be between 1 and {MAX_EXPIRES_IN_DAYS}"),
            ));
        }
    };
    let mut tx = state.pool.begin().await?;
    let (token, secret) = mint_token(&mut *tx, admin.user_id, label, expires_at).await?;
    token_created(&mut tx, &token).await?;
    tx.commit().await?;
    tracing::info!(token_id = %token.id, user_id = %admin.user_id, "admin token created");
    Ok((StatusCode::CREATED, Json(TokenCreated::new(token, &secret))))
}

/// Lists the calling admin's tokens that are not revoked (never their plaintext).
#[utoipa::path(get, path = "/api/admin/tokens", tag = "admin",
    responses(
        (status = 200, description = "Tokens, newest first", body = TokenList),
        (status = 401, description = "No valid credential", body = ErrorEnvelope),
        (status = 403, description = "Not an admin", body = ErrorEnvelope),
    ),
    security(("bearer" = []), ("session" = [])))]
pub async fn list(admin: AdminUser, State(state): State<AppState>) -> Result<Json<TokenList>, ApiError> {
    let items = sqlx::query_as!(
        AdminToken,
        "select id, user_id, label, scope, expires_at, last_used_at, created_at, revoked_at
         from admin_tokens where user_id = $1 and revoked_at is null
         order by created_at desc, id desc",
        admin.user_id
    )
    .fetch_all(&state.pool)
    .await?;
    Ok(Json(TokenList { items }))
}

/// Revokes one of the calling admin's tokens, effective on the next request.
#[utoipa::path(delete, path = "/api/admin/tokens/{id}", tag = "admin",
    params(("id" = Uuid, Path, description = "Token id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, description = "No valid credential", body = ErrorEnvelope),
        (status = 403, description = "Not an admin", body = ErrorEnvelope),
        (status = 404, description = "No such token of yours (or already revoked)", body = ErrorEnvelope),
    ),
    security(("bearer" = []), ("session" = [])))]
pub async fn revoke(
    admin: AdminUser,
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    let mut tx = state.pool.begin().await?;
    let done = sqlx::query!(
        "update admin_tokens set revoked_at = now() where id = $1 and user_id = $2 and revoked_at is null",
        id,
        admin.user_id
    )
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() == 0 {
        return Err(ApiError::not_found("No active token of yours with this id"));
    }
    token_revoked(&mut tx, id, admin.user_id, "revoked by its owner").await?;
    tx.commit().await?;
    tracing::info!(token_id = %id, user_id = %admin.user_id, "admin token revoked");
    Ok(StatusCode::NO_CONTENT)
}

/// The `token.created` outbox event (never the plaintext or its hash), in `conn`'s transaction.
///
/// # Errors
/// Database errors.
pub async fn token_created(conn: &mut sqlx::PgConnection, token: &AdminToken) -> Result<(), sqlx::Error> {
    crate::outbox::emit_event(
        conn,
        "token.created",
        &serde_json::json!({
            "tokenId": token.id, "userId": token.user_id, "label": token.label, "expiresAt": token.expires_at,
        }),
    )
    .await
    .map(|_| ())
}

/// The `token.revoked` outbox event, in `conn`'s transaction.
///
/// # Errors
/// Database errors.
pub async fn token_revoked(
    conn: &mut sqlx::PgConnection,
    token_id: Uuid,
    user_id: Uuid,
    reason: &str,
) -> Result<(), sqlx::Error> {
    crate::outbox::emit_event(
        conn,
        "token.revoked",
        &serde_json::json!({"tokenId": token_id, "userId": user_id, "reason": reason}),
    )
    .await
    .map(|_| ())
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(create, list)).routes(routes!(revoke))
}
