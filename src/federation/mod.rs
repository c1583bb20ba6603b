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

/// Routes under `/api/federation` and the peer/grant admin routes. `state` is `None` only when
/// the router is built to produce the OpenAPI document (layers do not change the document).
pub fn router(state: Option<AppState>) -> OpenApiRouter<AppState> {
    // The guard wraps only the peer-facing verbs; enrollment, the CA and the CRL are public.
    // `list` has a guard of its own: its page statement confirms the guard's decision (see
    // `guard`), so a list request costs one query.
    let verbs = match state {
        Some(state) => {
            verbs::router().route_layer(axum::middleware::from_fn_with_state(state.clone(), guard::require_peer)).merge(
                verbs::list_router()
                    .route_layer(axum::middleware::from_fn_with_state(state, guard::require_peer_confirmed_by_verb)),
            )
        }
        None => verbs::router().merge(verbs::list_router()),
    };
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
