//! Federation: the gateway CA, trust (peers, grants, enrollment, renewal, revocation, CRL), the
//! mTLS guard, and the peer-facing verbs.

pub mod audit;
pub mod audit_routes;
pub mod ca;
pub mod ca_routes;
pub mod client;
pub mod csr;
pub mod cursor;
pub mod embeddings;
pub mod enrollment;
pub mod explain;
pub mod grants;
pub mod guard;
pub mod identity;
pub mod peer_client;
pub mod peer_health;
pub mod peer_status;
pub mod peers;
pub mod query;
pub mod request_audit;
pub mod scope;
pub mod search;
pub mod verbs;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::app::AppState;

/// What the guard established about an authorised federation request (a request extension).
#[derive(Debug, Clone)]
pub struct FederationContext {
    pub grant_id: Uuid,
    /// Serial of the client certificate the request came with (the current one, or the
    /// previous one inside its renewal grace).
    pub serial: String,
    pub peer_id: Uuid,
    pub subject_user_id: Uuid,
    pub scope: scope::GrantScope,
    pub scope_version: i32,
    /// Whether the subject user exists and is enabled, and its current team memberships, read
    /// in the guard's one query so native RBAC needs no second round trip.
    pub subject_active: bool,
    pub subject_teams: Vec<Uuid>,
}

/// Renews client certificates of peers this gateway calls at two thirds of their own life.
pub const RENEW_CERTS: &str = "federation.renew_certs";
/// Period of the renewal job; each pass renews what falls due within it, waiting for each
/// certificate's moment (see [`client::renew_due`]), so a 90 s certificate renews at about 60 s
/// rather than at the next slot boundary. Short, so that a pass never sleeps long: a job
/// waiting at shutdown holds the shutdown grace.
pub const RENEW_PERIOD: std::time::Duration = std::time::Duration::from_secs(10);
/// Creates the audit log's day partitions ahead and drops the days past retention.
pub const AUDIT_RETENTION: &str = "federation.audit_retention";
/// Deletes enrollment tokens a day past their expiry.
pub const ENROLLMENT_TOKEN_CLEANUP: &str = "federation.enrollment_token_cleanup";

/// Registers federation's jobs with the queue: certificate renewal, audit retention, the
/// enrollment-token clean-up and the insight embeddings.
pub fn register_jobs(
    registry: &mut crate::queue::Registry,
    pool: &sqlx::PgPool,
    sealing: &crate::sealing::SealingKey,
    config: &crate::config::Config,
) {
    use crate::queue::JobError;
    let (p, sealing) = (pool.clone(), sealing.clone());
    registry.periodic(RENEW_CERTS, RENEW_PERIOD, move |_job| {
        let (pool, sealing) = (p.clone(), sealing.clone());
        async move {
            // Failures are recorded per peer (status, retry with backoff, outbox event), not
            // by failing the job: a retry of the job would not be a retry of one peer.
            client::renew_due(&pool, &sealing, RENEW_PERIOD).await;
            Ok(())
        }
    });
    let (p, retention_days) = (pool.clone(), config.audit_retention_days);
    registry.periodic(AUDIT_RETENTION, std::time::Duration::from_secs(3600), move |_job| {
        let pool = p.clone();
        async move { audit::maintain(&pool, retention_days).await.map(|_| ()).map_err(JobError::retryable) }
    });
    let p = pool.clone();
    registry.periodic(ENROLLMENT_TOKEN_CLEANUP, crate::queue::schedule::CLEANUP_PERIOD, move |_job| {
        let pool = p.clone();
        async move { cleanup_enrollment_tokens(&pool).await.map_err(JobError::retryable) }
    });
    let (p, search) = (pool.clone(), config.search.clone());
    registry.periodic(embeddings::EMBED_INSIGHTS, embeddings::EMBED_PERIOD, move |_job| {
        let (pool, search) = (p.clone(), search.clone());
        async move {
            embeddings::fill_missing(&pool, &search)
                .await
                .map(|_| ())
                .map_err(|e| JobError::Retryable(format!("{e:#}")))
        }
    });
}

/// Deletes enrollment tokens a day past their expiry: after that a token answers 404 instead of
/// 410, and nothing else depends on it.
///
/// # Errors
/// Database errors.
pub async fn cleanup_enrollment_tokens(pool: &sqlx::PgPool) -> Result<(), sqlx::Error> {
    crate::store::enrollment::delete_expired_tokens(pool).await
}

/// The peer-facing verbs as declared (their OpenAPI entries), without the guard.
pub fn verbs() -> OpenApiRouter<AppState> {
    verbs::router().merge(verbs::list_router())
}

/// The peer-facing verbs behind the guard, as served. `list` has a guard of its own: its page
/// statement confirms the guard's decision (see `guard`), so a list request costs one query.
/// Layers do not change the OpenAPI document, which is built from [`verbs()`].
pub fn guarded_verbs(state: &AppState) -> OpenApiRouter<AppState> {
    verbs::router().route_layer(axum::middleware::from_fn_with_state(state.clone(), guard::require_peer)).merge(
        verbs::list_router()
            .route_layer(axum::middleware::from_fn_with_state(state.clone(), guard::require_peer_confirmed_by_verb)),
    )
}

/// Routes under `/api/federation` and the peer/grant admin routes, with `verbs` ([`verbs()`] or
/// [`guarded_verbs`]): the guard wraps only the peer-facing verbs; enrollment, the CA and the
/// CRL are public.
pub fn router(verbs: OpenApiRouter<AppState>) -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(ca_routes::get_ca))
        .routes(routes!(enrollment::crl))
        .routes(routes!(enrollment::create_token))
        .routes(routes!(enrollment::redeem))
        .routes(routes!(peers::create_peer, peers::list_peers))
        .routes(routes!(peers::show_peer))
        .routes(routes!(grants::create_grant, grants::list_grants))
        .routes(routes!(grants::show_grant, grants::update_grant))
        .routes(routes!(grants::revoke_grant))
        .routes(routes!(enrollment::create_reenrollment_token))
        .routes(routes!(audit_routes::list_audit))
        .routes(routes!(explain::explain_grant))
        .routes(routes!(explain::explain_scope))
        .routes(routes!(peer_health::peer_health))
        .routes(routes!(query::query))
        .routes(routes!(search::search))
        .merge(verbs)
}
