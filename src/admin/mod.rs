//! The admin plane (DESIGN §6, §7): credentials, the admin guard, first-user bootstrap, sign-in
//! sessions, admin tokens and the local data API.
//!
//! Reading order: [`credentials`] (secret formats) → [`guard`] (who is calling) →
//! [`cross_site`] (what a cookie may authorize) → [`passwords`] → [`bootstrap`] → [`sessions`] →
//! [`tokens`] → [`data`].

pub mod bootstrap;
pub mod credentials;
pub mod cross_site;
pub mod data;
pub mod guard;
pub mod passwords;
pub mod sessions;
pub mod tokens;

use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;

use crate::app::AppState;

#[derive(OpenApi)]
#[openapi(
    modifiers(&SecuritySchemes),
    tags(
        (name = "admin", description = "First-user bootstrap and admin tokens"),
        (name = "auth", description = "Sign-in sessions"),
        (name = "admin-data", description = "The local data API: records this gateway federates"),
    )
)]
struct AdminDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An admin token (`tsr_...`)"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                guard::SESSION_COOKIE,
                "The session cookie set by POST /api/auth/sign-in. A request it authenticates that changes \
                 state (any method but GET, HEAD, OPTIONS) is refused (403) when `Sec-Fetch-Site` or `Origin` \
                 shows another site, and must send `Content-Type: application/json`, or no body and \
                 `X-Requested-With`.",
            ))),
        );
    }
}

/// Deletes sessions a day past their expiry or revocation.
pub const SESSION_CLEANUP: &str = "admin.session_cleanup";

/// Registers the admin plane's jobs with the queue: the session clean-up.
pub fn register_jobs(registry: &mut crate::queue::Registry, pool: &sqlx::PgPool) {
    let pool = pool.clone();
    registry.periodic(SESSION_CLEANUP, crate::queue::schedule::CLEANUP_PERIOD, move |_job| {
        let pool = pool.clone();
        async move { cleanup_sessions(&pool).await.map_err(crate::queue::JobError::retryable) }
    });
}

/// Deletes sessions a day past their expiry or revocation.
///
/// # Errors
/// Database errors.
pub async fn cleanup_sessions(pool: &sqlx::PgPool) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "delete from sessions where expires_at < now() - interval '1 day' or revoked_at < now() - interval '1 day'"
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Routes under `/api/bootstrap`, `/api/auth` and `/api/admin`, including the queue's admin
/// routes, which the admin guard protects ([`crate::queue::routes::Operators`]).
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(AdminDoc::openapi())
        .merge(bootstrap::router())
        .merge(sessions::router())
        .merge(tokens::router())
        .merge(data::routes::router())
        .merge(crate::queue::routes::router())
}

/// The queue's operators are admins: [`guard::AdminUser`] answers 401 without a credential and
/// 403 for a non-admin.
impl crate::queue::routes::Operators for AppState {
    async fn operator(
        &self,
        parts: &mut axum::http::request::Parts,
    ) -> Result<crate::queue::routes::Operator, crate::http::error::ApiError> {
        use axum::extract::FromRequestParts as _;
        let admin = guard::AdminUser::from_request_parts(parts, self).await?;
        Ok(crate::queue::routes::Operator { user_id: admin.user_id })
    }
}
