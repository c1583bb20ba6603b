//! The admin guard: an extractor every `/api/admin/*` handler takes.
//!
//! Accepts `Authorization: Bearer tsr_...` (an admin token) or the `tessera_session` cookie.
//! Missing, unknown, expired or revoked credentials, or a disabled user → 401 `unauthorized`.
//! A valid credential of a user whose role is not `admin` → 403 "User is not an admin".
//! A write authenticated by the cookie must also show that it comes from this gateway's own
//! origin ([`super::cross_site`]), or it is refused with 403 before the session is looked up.
//!
//! `last_used_at` of a token is written at most about once a minute: the guard only issues the
//! update when the value it just read is older than that, so a busy script does not turn every
//! request into a write.

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::credentials::{Secret, hashes_match};
use crate::app::AppState;
use crate::http::error::ApiError;
use crate::rbac::Role;

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "tessera_session";
/// The exact 403 message for authenticated non-admins.
pub const NOT_ADMIN: &str = "User is not an admin";

/// How the caller authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    Token(Uuid),
    Session(Uuid),
}

/// An authenticated caller (any role). Handlers that need admins take [`AdminUser`].
#[derive(Debug, Clone)]
pub struct Caller {
    pub user_id: Uuid,
    pub role: Role,
    pub credential: Credential,
}

/// An authenticated admin.
#[derive(Debug, Clone)]
pub struct AdminUser {
    pub user_id: Uuid,
    pub credential: Credential,
}

struct CredentialRow {
    id: Uuid,
    user_id: Uuid,
    token_hash: Vec<u8>,
    expires_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
    last_used_at: Option<DateTime<Utc>>,
    role: Role,
    disabled_at: Option<DateTime<Utc>>,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        if let Some(token) = bearer(parts) {
            return authenticate_token(state, &Secret::from_plaintext(token)).await;
        }
        if let Some(session) = cookie(parts, SESSION_COOKIE) {
            // The browser sends the cookie by itself, also on requests another site starts.
            super::cross_site::refuse_cross_site_write(
                &parts.method,
                &parts.headers,
                &parts.uri,
                &state.config.public_url,
            )?;
            return authenticate_session(state, &Secret::from_plaintext(session)).await;
        }
        Err(ApiError::unauthorized("Authentication required: send an admin token or a session cookie"))
    }
}

impl FromRequestParts<AppState> for AdminUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let caller = Caller::from_request_parts(parts, state).await?;
        if caller.role != Role::Admin {
            return Err(ApiError::forbidden(NOT_ADMIN));
        }
        Ok(Self { user_id: caller.user_id, credential: caller.credential })
    }
}

fn invalid() -> ApiError {
    ApiError::unauthorized("Invalid, expired or revoked credentials")
}

async fn authenticate_token(state: &AppState, secret: &Secret) -> Result<Caller, ApiError> {
    let hash = secret.hash();
    let row = sqlx::query_as!(
        CredentialRow,
        r#"select t.id, t.user_id, t.token_hash, t.expires_at, t.revoked_at, t.last_used_at, u.role as "role: Role", u.disabled_at
         from admin_tokens t join users u on u.id = t.user_id
         where t.token_hash = $1"#,
        hash
    )
    .fetch_optional(&state.pool)
    .await?;
    let row = check(row, &hash)?;
    let stale = row.last_used_at.is_none_or(|t| Utc::now() - t > chrono::Duration::seconds(60));
    if stale {
        sqlx::query!(
            "update admin_tokens set last_used_at = now()
             where id = $1 and (last_used_at is null or last_used_at < now() - interval '60 seconds')",
            row.id
        )
        .execute(&state.pool)
        .await?;
    }
    Ok(Caller { user_id: row.user_id, role: row.role, credential: Credential::Token(row.id) })
}

async fn authenticate_session(state: &AppState, secret: &Secret) -> Result<Caller, ApiError> {
    let hash = secret.hash();
    let row = sqlx::query_as!(
        CredentialRow,
        r#"select s.id, s.user_id, s.token_hash, s.expires_at as "expires_at?", s.revoked_at,
                null::timestamptz as last_used_at, u.role as "role: Role", u.disabled_at
         from sessions s join users u on u.id = s.user_id
         where s.token_hash = $1"#,
        hash
    )
    .fetch_optional(&state.pool)
    .await?;
    let row = check(row, &hash)?;
    Ok(Caller { user_id: row.user_id, role: row.role, credential: Credential::Session(row.id) })
}

fn check(row: Option<CredentialRow>, hash: &[u8]) -> Result<CredentialRow, ApiError> {
    let row = row.ok_or_else(invalid)?;
    let now = Utc::now();
    let usable = hashes_match(&row.token_hash, hash)
        && row.revoked_at.is_none()
        && row.expires_at.is_none_or(|e| e > now)
        && row.disabled_at.is_none();
    if usable { Ok(row) } else { Err(invalid()) }
}

fn bearer(parts: &Parts) -> Option<String> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_string()).filter(|t| !t.is_empty())
}

/// The value of cookie `name`, if sent.
pub fn cookie(parts: &Parts, name: &str) -> Option<String> {
    parts
        .headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}
