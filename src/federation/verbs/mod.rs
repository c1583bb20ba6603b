//! The peer-facing verbs under `/api/federation/v1/*`, all behind the mTLS guard.

pub mod read;

use axum::Extension;
use axum::extract::State;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::FederationContext;
use super::enrollment::{IssuedCertificate, RedeemRequest};
use crate::app::AppState;
use crate::http::error::{ApiError, ErrorEnvelope};
use crate::http::extract::Json;

/// Every verb but `list`; these run behind [`super::guard::require_peer`].
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(renew)).routes(routes!(capabilities)).routes(routes!(read::get))
}

/// `list`, which runs behind [`super::guard::require_peer_confirmed_by_verb`]: it must confirm
/// an unconfirmed context in its page statement.
pub fn list_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(read::list))
}

/// Renew this peer's client certificate with a fresh CSR (mTLS). The previous certificate stays
/// valid for a short grace period so in-flight calls finish.
#[utoipa::path(post, path = "/api/federation/v1/renew", tag = "federation", request_body = RedeemRequest,
    responses(
        (status = 200, body = IssuedCertificate), (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope),
    ))]
pub async fn renew(
    State(state): State<AppState>,
    Extension(ctx): Extension<FederationContext>,
    Json(body): Json<RedeemRequest>,
) -> Result<Json<IssuedCertificate>, ApiError> {
    Ok(Json(super::enrollment::renew(&state, &ctx, &body.csr_pem).await?))
}

/// The verbs this gateway serves.
pub const SUPPORTED_VERBS: [&str; 4] = ["list", "get", "capabilities", "renew"];
/// Resources native RBAC can serve at all; `credentials` and `api_keys` never are.
pub const READABLE_RESOURCES: [&str; 3] = ["tasks", "notes", "memory"];

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Capabilities {
    /// Granted resources this gateway can serve (grant ∩ tasks, notes, memory).
    pub resources: Vec<String>,
    pub excluded_resources: Vec<String>,
    pub max_rows_per_query: u32,
    pub supported_verbs: Vec<String>,
}

/// What the caller's grant allows.
#[utoipa::path(get, path = "/api/federation/v1/capabilities", tag = "federation",
    responses((status = 200, body = Capabilities), (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope)))]
pub async fn capabilities(Extension(ctx): Extension<FederationContext>) -> Json<Capabilities> {
    let scope = &ctx.scope;
    Json(Capabilities {
        resources: scope.resources.iter().filter(|r| READABLE_RESOURCES.contains(&r.as_str())).cloned().collect(),
        excluded_resources: scope.excluded_resources.clone(),
        max_rows_per_query: scope.max_rows(),
        supported_verbs: SUPPORTED_VERBS.iter().map(|v| (*v).to_string()).collect(),
    })
}
