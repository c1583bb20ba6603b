//! Admin API of webhooks and the outbox: `/api/admin/webhooks` (register, list, delete) and
//! `/api/admin/outbox/dead` (dead letters and replay). Every route takes [`AdminUser`].

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::DeliveryView;
use super::webhooks::{self, CreateWebhook, WebhookEndpoint};
use crate::admin::guard::AdminUser;
use crate::app::AppState;
use crate::http::error::{ApiError, ErrorEnvelope};
use crate::http::extract::{Json, Path, Query};

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookList {
    pub items: Vec<WebhookEndpoint>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryList {
    pub items: Vec<DeliveryView>,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct DeadFilter {
    /// 1..=500, default 100.
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
}

/// Register a webhook endpoint: URL, secret (HMAC key, never shown again) and event filter.
///
/// The URL's host must resolve to public addresses only, unless `TESSERA_WEBHOOK_ALLOWED_CIDRS`
/// allows its range (400 naming `url` otherwise); each delivery checks again before connecting.
#[utoipa::path(post, path = "/api/admin/webhooks", tag = "webhooks", request_body = CreateWebhook,
    responses(
        (status = 201, body = WebhookEndpoint), (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope),
    ),
    security(("bearer" = []), ("session" = [])))]
pub async fn create_webhook(
    admin: AdminUser,
    State(state): State<AppState>,
    Json(body): Json<CreateWebhook>,
) -> Result<(StatusCode, Json<WebhookEndpoint>), ApiError> {
    let targets = super::targets::WebhookTargets::from_config(&state.config);
    let endpoint = webhooks::create(&state.pool, &state.sealing, &targets, &body).await?;
    tracing::info!(endpoint_id = %endpoint.id, url = %endpoint.url, user_id = %admin.user_id, "webhook endpoint registered");
    Ok((StatusCode::CREATED, Json(endpoint)))
}

/// Registered webhook endpoints with their open and dead delivery counts.
#[utoipa::path(get, path = "/api/admin/webhooks", tag = "webhooks",
    responses((status = 200, body = WebhookList), (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope)),
    security(("bearer" = []), ("session" = [])))]
pub async fn list_webhooks(_admin: AdminUser, State(state): State<AppState>) -> Result<Json<WebhookList>, ApiError> {
    Ok(Json(WebhookList { items: webhooks::list(&state.pool).await? }))
}

/// Delete a webhook endpoint and its undelivered events.
#[utoipa::path(delete, path = "/api/admin/webhooks/{id}", tag = "webhooks", params(("id" = Uuid, Path)),
    responses(
        (status = 204, description = "Deleted"), (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope),
    ),
    security(("bearer" = []), ("session" = [])))]
pub async fn delete_webhook(
    admin: AdminUser,
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    if !webhooks::delete(&state.pool, id).await? {
        return Err(ApiError::not_found("No such webhook endpoint"));
    }
    tracing::info!(endpoint_id = %id, user_id = %admin.user_id, "webhook endpoint deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Dead deliveries (permanent failure or attempt cap), most recent first.
#[utoipa::path(get, path = "/api/admin/outbox/dead", tag = "webhooks", params(DeadFilter),
    responses((status = 200, body = DeliveryList), (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope)),
    security(("bearer" = []), ("session" = [])))]
pub async fn list_dead(
    _admin: AdminUser,
    State(state): State<AppState>,
    Query(filter): Query<DeadFilter>,
) -> Result<Json<DeliveryList>, ApiError> {
    let limit = filter.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::invalid_field("limit", "limit must be between 1 and 500"));
    }
    Ok(Json(DeliveryList { items: super::dead_letters(&state.pool, limit).await? }))
}

/// Replay a dead delivery: back to pending with a fresh attempt count, delivered in order.
#[utoipa::path(post, path = "/api/admin/outbox/dead/{id}/replay", tag = "webhooks", params(("id" = Uuid, Path)),
    responses(
        (status = 200, body = DeliveryView), (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope), (status = 409, body = ErrorEnvelope),
    ),
    security(("bearer" = []), ("session" = [])))]
pub async fn replay(
    admin: AdminUser,
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<Json<DeliveryView>, ApiError> {
    match super::replay(&state.pool, id).await? {
        Some(d) => {
            tracing::info!(delivery_id = %id, user_id = %admin.user_id, "dead delivery replayed");
            Ok(Json(d))
        }
        None => match super::delivery_status(&state.pool, id).await? {
            None => Err(ApiError::not_found("No such delivery")),
            Some(s) => Err(ApiError::conflict(format!("delivery is {s}; only dead deliveries can be replayed"))),
        },
    }
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_webhook, list_webhooks))
        .routes(routes!(delete_webhook))
        .routes(routes!(list_dead))
        .routes(routes!(replay))
}
