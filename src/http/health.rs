//! Liveness, readiness and the OpenAPI document.

use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorCode};
use super::extract::Json;
use crate::app::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always `ok` while the process serves requests.
    pub status: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// `ready`.
    pub status: String,
    /// One entry per dependency, each `ok` or a short reason.
    pub checks: std::collections::BTreeMap<String, String>,
}

/// Liveness: the process is up and serving.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "Alive", body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok".into() })
}

/// Readiness: the database answers, every migration is applied, and Valkey (when configured)
/// answers a PING.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Not ready; `details.checks` says which dependency", body = super::error::ErrorEnvelope),
    ))]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Readiness>, ApiError> {
    let mut checks = std::collections::BTreeMap::new();
    let mut ready = true;
    match sqlx::query_scalar!("select 1 as one").fetch_one(&state.pool).await {
        Ok(_) => {
            checks.insert("database".to_string(), "ok".to_string());
            match crate::store::migrations_applied(&state.pool).await {
                Ok(true) => {
                    checks.insert("migrations".to_string(), "ok".to_string());
                }
                _ => {
                    ready = false;
                    checks.insert("migrations".to_string(), "pending".to_string());
                }
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "readiness: database unreachable");
            ready = false;
            checks.insert("database".to_string(), "unreachable".to_string());
        }
    }
    if let Some(valkey) = &state.valkey {
        match valkey.ping().await {
            Ok(()) => {
                metrics::gauge!("tessera_valkey_up").set(1.0);
                checks.insert("valkey".to_string(), "ok".to_string());
            }
            Err(e) => {
                metrics::gauge!("tessera_valkey_up").set(0.0);
                tracing::warn!(error = %e, "readiness: Valkey unreachable");
                ready = false;
                checks.insert("valkey".to_string(), "unreachable".to_string());
            }
        }
    }
    if ready {
        Ok(Json(Readiness { status: "ready".into(), checks }))
    } else {
        Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Internal, "Not ready")
            .with_details(serde_json::json!({ "checks": checks })))
    }
}

/// This document.
#[utoipa::path(get, path = "/api/openapi.json", tag = "health",
    responses((status = 200, description = "The OpenAPI 3.1 document of this gateway", content_type = "application/json")))]
pub async fn openapi_json() -> axum::response::Response {
    use axum::response::IntoResponse;
    ([(axum::http::header::CONTENT_TYPE, "application/json")], crate::http::openapi_document_json()).into_response()
}
