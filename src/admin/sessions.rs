//! Sign-in sessions: argon2id sign-in → an HttpOnly, SameSite=Strict, Secure cookie holding a
//! `tss_` secret whose SHA-256 is stored; 7-day expiry; list and revoke server-side; sign-out.
//!
//! Failed sign-ins are throttled through the shared [`crate::ratelimit::RateLimiter`], on two
//! keys: the account at one client address (`signin:<email>:<addr>`, guessing one password) and
//! the client address alone with a larger budget (`signin-addr:<addr>`, spraying many accounts).
//! Keying the account by address as well means an attacker elsewhere cannot lock the real owner
//! out. While a key is over budget even the right password gets 429, or throttling would only
//! slow down the guessing.
//!
//! Every attempt is counted *before* its password is verified (a reservation: one atomic hit that
//! decides), so guesses sent in parallel cannot all pass a check before the first failure is
//! recorded: of N concurrent guesses against a budget of B, at most B are verified and the rest
//! get 429 without a hash being computed. Only failures should use up the budget, so a
//! successful sign-in hands back the reservation it made itself: one slot, in the window that
//! counted it, never below zero. It does not clear the key: the failures already counted stay,
//! and since a refund needs the right password and returns only what that same attempt took,
//! it can never give an attacker more guesses than the budget. A body that is refused before the
//! throttle (malformed JSON, a NUL character, an email or password longer than any stored one)
//! cannot match an account, costs no hash and is not counted.

use std::net::IpAddr;
use std::time::Duration;

use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::credentials::{SESSION_PREFIX, Secret};
use super::data::records::MAX_EMAIL_CHARS;
use super::guard::{Caller, Credential, SESSION_COOKIE};
use crate::app::AppState;
use crate::http::error::{ApiError, ErrorEnvelope};
use crate::http::extract::{Json, Path};
use crate::ratelimit::Decision;
use crate::rbac::Role;
use crate::tls::ConnectionInfo;

/// How long a session lives.
pub const SESSION_DAYS: i64 = 7;

/// Failed sign-in budget (`TESSERA_SIGNIN_MAX_FAILURES`, `TESSERA_SIGNIN_WINDOW_SECS`), part of
/// the gateway's [`crate::config::Config`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignInThrottle {
    /// Failures allowed per account and address within one window (default 10).
    pub max_failures: u32,
    /// Window length (default 15 minutes).
    pub window: Duration,
}

impl Default for SignInThrottle {
    fn default() -> Self {
        Self { max_failures: 10, window: Duration::from_secs(15 * 60) }
    }
}

/// Failures per address (any account) are allowed this many times the per-account budget.
const ADDRESS_FACTOR: u32 = 5;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SignInRequest {
    #[schema(max_length = 254)]
    pub email: String,
    #[schema(value_type = String, format = Password, max_length = 256)]
    pub password: Secret,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionUser {
    pub id: Uuid,
    pub email: String,
    pub name: String,
    pub role: Role,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionSummary {
    pub id: Uuid,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub user_agent: Option<String>,
    pub client_addr: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SignInResponse {
    pub user: SessionUser,
    /// The session; its secret travels only in the `tessera_session` cookie.
    pub session: SessionSummary,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CurrentCredential {
    /// `token` or `session`.
    pub kind: String,
    pub id: Uuid,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CurrentSession {
    pub user: SessionUser,
    pub credential: CurrentCredential,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SessionList {
    pub items: Vec<SessionSummary>,
}

fn client_ip(conn: Option<&ConnectionInfo>) -> String {
    conn.map(|c| c.remote_addr.ip()).map_or_else(|| "unknown".into(), |ip: IpAddr| ip.to_string())
}

fn retry_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

fn limited(decision: Decision) -> Result<(), ApiError> {
    match decision {
        Decision::Allowed { .. } => Ok(()),
        Decision::Denied { retry_after } => Err(ApiError::rate_limited(retry_secs(retry_after))),
    }
}

fn session_cookie(value: &str, max_age_secs: i64) -> HeaderValue {
    let cookie = format!("{SESSION_COOKIE}={value}; Path=/; Max-Age={max_age_secs}; HttpOnly; Secure; SameSite=Strict");
    HeaderValue::from_str(&cookie).unwrap_or_else(|_| HeaderValue::from_static("tessera_session=; Max-Age=0"))
}

struct SignInRow {
    id: Uuid,
    email: String,
    name: String,
    role: Role,
    password_hash: Option<String>,
    disabled_at: Option<DateTime<Utc>>,
}

/// Signs in with email and password; sets the session cookie.
#[utoipa::path(post, path = "/api/auth/sign-in", tag = "auth",
    request_body = SignInRequest,
    responses(
        (status = 200, description = "Signed in; `Set-Cookie: tessera_session=...`", body = SignInResponse),
        (status = 400, description = "Malformed body, a NUL character, or an email or password longer than any account has (`details.field`); not counted by the throttle", body = ErrorEnvelope),
        (status = 401, description = "Wrong email or password, or the user is disabled", body = ErrorEnvelope),
        (status = 403, description = "Sent from another site (`Sec-Fetch-Site` or `Origin`)", body = ErrorEnvelope),
        (status = 429, description = "Too many failed sign-ins; see `Retry-After`", body = ErrorEnvelope),
    ))]
pub async fn sign_in(
    State(state): State<AppState>,
    conn: Option<Extension<ConnectionInfo>>,
    headers: HeaderMap,
    uri: Uri,
    Json(body): Json<SignInRequest>,
) -> Result<Response, ApiError> {
    // A page on another site must not sign the browser in to an account of its choosing.
    super::cross_site::refuse_foreign_origin(&headers, &uri, &state.config.public_url)?;
    let throttle = state.config.sign_in;
    let ip = client_ip(conn.as_ref().map(|e| &e.0));
    // Longer than any stored value (both are checked on create): refused before the throttle,
    // the database or a hash, and so before they can cost anyone budget.
    if body.email.trim().chars().count() > MAX_EMAIL_CHARS {
        return Err(ApiError::invalid_field("email", format!("email must have at most {MAX_EMAIL_CHARS} characters")));
    }
    if body.password.expose().chars().count() > super::passwords::MAX_LEN {
        let max = super::passwords::MAX_LEN;
        return Err(ApiError::invalid_field("password", format!("password must have at most {max} characters")));
    }
    let email = body.email.trim().to_lowercase();
    let account_key = format!("signin:{email}:{ip}");
    let address_key = format!("signin-addr:{ip}");
    let address_limit = throttle.max_failures.saturating_mul(ADDRESS_FACTOR);
    let limiter = &state.limiter;
    let account = limiter.reserve(&account_key, throttle.max_failures, throttle.window).await?;
    if let Err(e) = limited(account.decision) {
        tracing::debug!(client = %ip, "sign-in refused: account budget spent");
        return Err(e);
    }
    let address = limiter.reserve(&address_key, address_limit, throttle.window).await?;
    if let Err(e) = limited(address.decision) {
        tracing::debug!(client = %ip, "sign-in refused: address budget spent");
        // Nothing was verified, so the account's slot goes back; the address stays over budget.
        limiter.refund(account).await;
        return Err(e);
    }

    let row = sqlx::query_as!(
        SignInRow,
        r#"select id, email, name, role as "role: Role", password_hash, disabled_at from users where lower(email) = $1"#,
        email
    )
    .fetch_optional(&state.pool)
    .await?;
    let phc = row.as_ref().and_then(|r| r.password_hash.clone());
    let password_ok = super::passwords::verify(body.password, phc).await;
    let row = match row {
        Some(r) if password_ok && r.disabled_at.is_none() => r,
        _ => {
            // The reservations stay counted: this was a failure.
            tracing::info!(client = %ip, "sign-in failed");
            return Err(ApiError::unauthorized("Invalid email or password"));
        }
    };
    limiter.refund(account).await;
    limiter.refund(address).await;

    let secret = Secret::generate(SESSION_PREFIX);
    let user_agent =
        headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).map(|s| s.chars().take(300).collect::<String>());
    let session = sqlx::query_as!(
        SessionSummary,
        "insert into sessions (id, user_id, token_hash, expires_at, user_agent, client_addr)
         values ($1, $2, $3, now() + make_interval(days => $4), $5, $6)
         returning id, created_at, expires_at, user_agent, client_addr",
        Uuid::now_v7(),
        row.id,
        secret.hash(),
        i32::try_from(SESSION_DAYS).unwrap_or(7),
        user_agent,
        ip,
    )
    .fetch_one(&state.pool)
    .await?;
    tracing::info!(user_id = %row.id, session_id = %session.id, "signed in");
    let user = SessionUser { id: row.id, email: row.email, name: row.name, role: row.role };
    let mut response = Json(SignInResponse { user, session }).into_response();
    response.headers_mut().insert(header::SET_COOKIE, session_cookie(secret.expose(), SESSION_DAYS * 86_400));
    Ok(response)
}

/// Ends the current session and clears the cookie.
#[utoipa::path(post, path = "/api/auth/sign-out", tag = "auth",
    responses(
        (status = 204, description = "Signed out; the cookie is cleared"),
        (status = 401, description = "No valid session", body = ErrorEnvelope),
        (status = 403, description = "Called with a token (revoke tokens with DELETE /api/admin/tokens/{id}), or sent from another site, or without JSON or `X-Requested-With`", body = ErrorEnvelope),
    ),
    security(("session" = [])))]
pub async fn sign_out(caller: Caller, State(state): State<AppState>) -> Result<Response, ApiError> {
    let Credential::Session(id) = caller.credential else {
        // A well-formed request with a credential this route does not serve: refused, not malformed.
        return Err(ApiError::forbidden("sign-out ends a session; revoke a token with DELETE /api/admin/tokens/{id}"));
    };
    sqlx::query!("update sessions set revoked_at = now() where id = $1 and revoked_at is null", id)
        .execute(&state.pool)
        .await?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(header::SET_COOKIE, session_cookie("", 0));
    Ok(response)
}

/// Who the caller is and which credential they used (any role).
#[utoipa::path(get, path = "/api/auth/session", tag = "auth",
    responses(
        (status = 200, description = "The caller", body = CurrentSession),
        (status = 401, description = "No valid credential", body = ErrorEnvelope),
    ),
    security(("bearer" = []), ("session" = [])))]
pub async fn current(caller: Caller, State(state): State<AppState>) -> Result<Json<CurrentSession>, ApiError> {
    let user = sqlx::query_as!(
        SessionUser,
        r#"select id, email, name, role as "role: Role" from users where id = $1"#,
        caller.user_id
    )
    .fetch_one(&state.pool)
    .await?;
    let credential = match caller.credential {
        Credential::Token(id) => CurrentCredential { kind: "token".into(), id },
        Credential::Session(id) => CurrentCredential { kind: "session".into(), id },
    };
    Ok(Json(CurrentSession { user, credential }))
}

/// The caller's active sessions, newest first.
#[utoipa::path(get, path = "/api/auth/sessions", tag = "auth",
    responses(
        (status = 200, description = "Active sessions", body = SessionList),
        (status = 401, description = "No valid credential", body = ErrorEnvelope),
    ),
    security(("bearer" = []), ("session" = [])))]
pub async fn list(caller: Caller, State(state): State<AppState>) -> Result<Json<SessionList>, ApiError> {
    let items = sqlx::query_as!(
        SessionSummary,
        "select id, created_at, expires_at, user_agent, client_addr from sessions
         where user_id = $1 and revoked_at is null and expires_at > now()
         order by created_at desc, id desc",
        caller.user_id
    )
    .fetch_all(&state.pool)
    .await?;
    Ok(Json(SessionList { items }))
}

/// Revokes one of the caller's sessions, effective on its next request.
#[utoipa::path(delete, path = "/api/auth/sessions/{id}", tag = "auth",
    params(("id" = Uuid, Path, description = "Session id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, description = "No valid credential", body = ErrorEnvelope),
        (status = 403, description = "Cookie session: sent from another site, or without `X-Requested-With`", body = ErrorEnvelope),
        (status = 404, description = "No active session of yours with this id", body = ErrorEnvelope),
    ),
    security(("bearer" = []), ("session" = [])))]
pub async fn revoke(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    let done = sqlx::query!(
        "update sessions set revoked_at = now() where id = $1 and user_id = $2 and revoked_at is null",
        id,
        caller.user_id
    )
    .execute(&state.pool)
    .await?;
    if done.rows_affected() == 0 {
        return Err(ApiError::not_found("No active session of yours with this id"));
    }
    Ok(StatusCode::NO_CONTENT)
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(sign_in))
        .routes(routes!(sign_out))
        .routes(routes!(current))
        .routes(routes!(list))
        .routes(routes!(revoke))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_secs(Duration::from_secs(3)), 3);
        assert_eq!(retry_secs(Duration::from_millis(2500)), 3);
    }

    #[test]
    fn the_cookie_is_http_only_strict_and_secure() {
        let c = session_cookie("tss_x", 604_800);
        let c = c.to_str().unwrap();
        for attr in ["tessera_session=tss_x", "HttpOnly", "Secure", "SameSite=Strict", "Max-Age=604800", "Path=/"] {
            assert!(c.contains(attr), "{c} lacks {attr}");
        }
    }
}
