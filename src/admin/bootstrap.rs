//! First-user bootstrap: while no user exists, one call creates the first admin and its first
//! admin token; afterwards setup always answers 409.
//!
//! Race safety: the check "no user yet" and the insert run in one transaction under a
//! transaction-scoped advisory lock, so of N concurrent setups exactly one sees an empty table.
//! (A unique constraint alone would not do: two different emails do not collide.)

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::credentials::{Secret, mint_token};
use super::data::records::{self, NewUser, RecordError, User};
use super::passwords::PasswordError;
use super::tokens::TokenCreated;
use crate::app::AppState;
use crate::error::{DomainError, Fault};
use crate::http::error::{ApiError, ErrorEnvelope};
use crate::http::extract::Json;

/// Key of the advisory lock that serialises setups.
const SETUP_LOCK: i64 = 7_316_001;

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BootstrapStatus {
    /// True while no user exists: `POST /api/bootstrap/setup` will work.
    pub needs_setup: bool,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SetupRequest {
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
    /// At least 8 characters.
    #[schema(value_type = String, format = Password, min_length = 8, max_length = 256)]
    pub password: Secret,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SetupResponse {
    pub user: User,
    /// The first admin token; its `plaintext` is shown here and never again.
    pub token: TokenCreated,
}

/// Whether the gateway still needs its first admin.
#[utoipa::path(get, path = "/api/bootstrap/status", tag = "admin",
    responses((status = 200, description = "Status", body = BootstrapStatus)))]
pub async fn status(State(state): State<AppState>) -> Result<Json<BootstrapStatus>, ApiError> {
    let any = any_user(&state.pool).await?;
    Ok(Json(BootstrapStatus { needs_setup: !any }))
}

/// Creates the first admin and its first token (only while no user exists).
#[utoipa::path(post, path = "/api/bootstrap/setup", tag = "admin",
    request_body = SetupRequest,
    responses(
        (status = 201, description = "Created; the token plaintext is shown only here", body = SetupResponse),
        (status = 400, description = "A field is invalid (`details.field`)", body = ErrorEnvelope),
        (status = 409, description = "Setup was already done", body = ErrorEnvelope),
    ))]
pub async fn setup_route(
    State(state): State<AppState>,
    Json(body): Json<SetupRequest>,
) -> Result<(StatusCode, Json<SetupResponse>), ApiError> {
    let created = setup(&state.pool, body).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// Why the first admin was not created.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// A user exists already: setup happens once.
    #[error("Setup is already done; sign in with an existing admin instead")]
    AlreadyDone,
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error(transparent)]
    Password(#[from] PasswordError),
    #[error("the first admin could not be stored")]
    Store(#[from] sqlx::Error),
}

impl DomainError for BootstrapError {
    fn fault(&self) -> Fault {
        match self {
            Self::AlreadyDone => Fault::Conflict { field: None },
            Self::Record(e) => e.fault(),
            Self::Password(e) => e.fault(),
            Self::Store(_) => Fault::Internal,
        }
    }
}

/// The setup itself, shared by the HTTP route and `tessera admin bootstrap`.
///
/// # Errors
/// A bad field, [`BootstrapError::AlreadyDone`] once any user exists, database errors.
pub async fn setup(pool: &PgPool, req: SetupRequest) -> Result<SetupResponse, BootstrapError> {
    // Validate and hash before taking the lock: argon2 is the slow part.
    records::email(&req.email)?;
    super::passwords::validate(&req.password)?;
    let new =
        NewUser { id: None, email: req.email, name: req.name, password: None, role: "admin".into(), created_at: None };
    let password_hash = super::passwords::hash(req.password).await?;

    let mut tx = pool.begin().await?;
    sqlx::query!("select pg_advisory_xact_lock($1)", SETUP_LOCK).execute(&mut *tx).await?;
    let any = any_user(&mut *tx).await?;
    if any {
        return Err(BootstrapError::AlreadyDone);
    }
    let user = records::create_user(&mut tx, new).await?;
    sqlx::query!("update users set password_hash = $2 where id = $1", user.id, password_hash).execute(&mut *tx).await?;
    let (token, secret) = mint_token(&mut *tx, user.id, "bootstrap", None).await?;
    super::tokens::token_created(&mut tx, &token).await?;
    tx.commit().await?;
    tracing::info!(user_id = %user.id, "first admin created");
    Ok(SetupResponse { user, token: TokenCreated::new(token, &secret) })
}

/// Whether any user exists yet.
async fn any_user(db: impl sqlx::PgExecutor<'_>) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(r#"select exists (select 1 from users) as "any!""#).fetch_one(db).await
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(status)).routes(routes!(setup_route))
}
