//! The peer-facing verbs under `/api/federation/v1/*`, all behind the mTLS guard.
//!
//! - [`list`] and [`get`] read rows, [`search`] ranks them; all three see exactly what
//!   [`visibility`] lets a grant's subject see, answer a scope denial and leave their audit row
//!   through [`outcome`], and (list and search) shape their pages through [`page`].
//! - `capabilities` and `renew` are here.

pub mod get;
pub mod list;
pub mod outcome;
pub mod page;
pub mod search;
pub mod visibility;

use axum::Extension;
use axum::extract::State;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::FederationContext;
use super::enrollment::{IssuedCertificate, RedeemRequest};
use crate::app::AppState;
use crate::http::error::{ApiError, ErrorEnvelope};
use crate::http::extract::Json;
use crate::rbac::Resource;

/// Every verb but `list`; these run behind [`super::guard::require_peer`].
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(renew))
        .routes(routes!(capabilities))
        .routes(routes!(get::get))
        .routes(routes!(search::search))
}

/// `list`, which runs behind [`super::guard::require_peer_confirmed_by_verb`]: it must confirm
/// an unconfirmed context in its page statement.
pub fn list_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list::list))
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
pub const SUPPORTED_VERBS: [&str; 5] = ["list", "get", "search", "capabilities", "renew"];

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Capabilities {
    /// Granted resources this gateway can serve (grant ∩ tasks, notes, memory).
    pub resources: Vec<String>,
    pub excluded_resources: Vec<String>,
    pub max_rows_per_query: u32,
    pub supported_verbs: Vec<String>,
    pub search: SearchCapabilities,
}

/// What the search verb offers under this grant.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct SearchCapabilities {
    /// Granted resources that can be searched (the same as `resources`).
    pub resources: Vec<String>,
    /// Per searchable resource, its modes: `text` everywhere; `vector` and `hybrid` for memory
    /// when an embedding model is configured.
    pub modes: std::collections::BTreeMap<String, Vec<search::SearchMode>>,
    /// `TESSERA_EMBEDDING_MODEL`; absent when vector search is off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embedding_model: Option<String>,
    /// Dimension of the vectors the vector modes take (384); absent when vector search is off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embedding_dimension: Option<u32>,
}

/// What the caller's grant allows.
#[utoipa::path(get, path = "/api/federation/v1/capabilities", tag = "federation",
    responses((status = 200, body = Capabilities), (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope)))]
pub async fn capabilities(
    State(state): State<AppState>,
    Extension(ctx): Extension<FederationContext>,
) -> Json<Capabilities> {
    let scope = &ctx.scope;
    let resources: Vec<Resource> =
        scope.resources.iter().filter_map(|r| Resource::parse(r)).filter(|r| r.readable()).collect();
    let model = state.config.search.embedding_model.clone();
    let names: Vec<String> = resources.iter().map(|r| r.as_str().to_string()).collect();
    let search = SearchCapabilities {
        resources: names.clone(),
        modes: resources.iter().map(|r| (r.as_str().to_string(), search::modes_for(*r, model.is_some()))).collect(),
        embedding_dimension: model.as_ref().map(|_| search::DIMENSION as u32),
        embedding_model: model,
    };
    Json(Capabilities {
        resources: names,
        excluded_resources: scope.excluded_resources.clone(),
        max_rows_per_query: scope.max_rows(),
        supported_verbs: SUPPORTED_VERBS.iter().map(|v| (*v).to_string()).collect(),
        search,
    })
}

#[cfg(test)]
mod tests {
    use crate::rbac::Resource;

    /// The `{resource}` path parameters state their values as a pattern (an attribute literal):
    /// it must name exactly [`Resource::ALL`].
    #[test]
    fn the_resource_path_pattern_names_every_resource() {
        let pattern = format!("^({})$", Resource::NAMES.join("|"));
        for source in [include_str!("list.rs"), include_str!("get.rs"), include_str!("search.rs")] {
            assert!(source.contains(&format!("pattern = \"{pattern}\"")), "{pattern}");
        }
    }
}
