//! Admin API of the queue under `/api/admin/queues` and `/api/admin/jobs` (the same operations as
//! `tessera queue ...`).
//!
//! The routes take the queue's own state ([`QueueState`], the pool) and an [`Operator`]: who
//! is asking, established by the plane that mounts them through [`Operators`] (the admin plane:
//! 401 without a credential, 403 for a non-admin). So the queue knows neither the admin guard
//! nor the application's state, and the router is built, for the OpenAPI document too, without
//! a state value.

use std::future::Future;

use axum::extract::{FromRef, FromRequestParts, State};
use axum::http::request::Parts;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::{JobStatus, JobView, QueueName, QueueStats, RetryError};
use crate::http::error::{ApiError, ErrorEnvelope};
use crate::http::extract::{Json, Path, Query};

/// The queue routes' state: the database the queue lives in.
#[derive(Clone)]
pub struct QueueState {
    pub pool: PgPool,
}

/// Who operates the queue, for the log line of every change.
#[derive(Debug, Clone)]
pub struct Operator {
    pub user_id: Uuid,
}

/// How the plane that mounts the queue routes tells who is asking, or refuses the request.
pub trait Operators: Send + Sync {
    /// The operator behind the request, or the refusal (401, 403) to answer.
    fn operator(&self, parts: &mut Parts) -> impl Future<Output = Result<Operator, ApiError>> + Send;
}

impl<S: Operators> FromRequestParts<S> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        state.operator(parts).await
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct QueueList {
    pub items: Vec<QueueStats>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct JobList {
    pub items: Vec<JobView>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DrainRequest {
    /// Must be `true`: draining cancels every pending job of the queue.
    pub confirm: bool,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DrainResult {
    pub queue: String,
    /// How many pending jobs were cancelled.
    pub cancelled: u64,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SetConcurrency {
    /// 1..=4096 jobs of this queue running at once per gateway process (applies at the next start).
    #[schema(minimum = 1, maximum = 4096)]
    #[serde(deserialize_with = "crate::http::extract::integer::required")]
    pub concurrency: i32,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
pub struct JobFilter {
    /// pending, running, done, failed, dead or cancelled.
    // Text parsed by the handler, so that a value that is no status gets the envelope naming the
    // field; documented as the enum.
    #[param(value_type = Option<JobStatus>)]
    pub status: Option<String>,
    /// 1..=500, default 50.
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
}

fn checked_name(name: &str) -> Result<QueueName, ApiError> {
    QueueName::parse(name).map_err(|e| ApiError::invalid_field("name", e.to_string()))
}

async fn stats_or_404(state: &QueueState, name: &str) -> Result<QueueStats, ApiError> {
    super::stats(&state.pool, name).await?.ok_or_else(|| ApiError::not_found("No such queue"))
}

/// Every queue with its controls and job counts.
#[utoipa::path(get, path = "/api/admin/queues", tag = "queue",
    responses((status = 200, body = QueueList), (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope)),
    security(("bearer" = []), ("session" = [])))]
pub async fn list_queues(_operator: Operator, State(state): State<QueueState>) -> Result<Json<QueueList>, ApiError> {
    Ok(Json(QueueList { items: super::list_queues(&state.pool).await? }))
}

/// One queue's controls and job counts.
#[utoipa::path(get, path = "/api/admin/queues/{name}", tag = "queue", params(("name" = String, Path, pattern = r"^[a-z0-9][a-z0-9_.-]{0,62}$", description = "Queue name")),
    responses(
        (status = 200, body = QueueStats), (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope),
    ),
    security(("bearer" = []), ("session" = [])))]
pub async fn queue_stats(
    _operator: Operator,
    State(state): State<QueueState>,
    Path(name): Path<String>,
) -> Result<Json<QueueStats>, ApiError> {
    let name = checked_name(&name)?;
    Ok(Json(stats_or_404(&state, name.as_str()).await?))
}

/// Pause a queue: workers stop claiming its jobs within one poll interval.
#[utoipa::path(post, path = "/api/admin/queues/{name}/pause", tag = "queue", params(("name" = String, Path, pattern = r"^[a-z0-9][a-z0-9_.-]{0,62}$", description = "Queue name")),
    responses((status = 200, body = QueueStats), (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope)),
    security(("bearer" = []), ("session" = [])))]
pub async fn pause(
    operator: Operator,
    State(state): State<QueueState>,
    Path(name): Path<String>,
) -> Result<Json<QueueStats>, ApiError> {
    let name = checked_name(&name)?;
    super::set_paused(&state.pool, name.as_str(), true).await?;
    tracing::info!(queue = %name, user_id = %operator.user_id, "queue paused");
    Ok(Json(stats_or_404(&state, name.as_str()).await?))
}

/// Resume a paused queue (idle workers are woken at once).
#[utoipa::path(post, path = "/api/admin/queues/{name}/resume", tag = "queue", params(("name" = String, Path, pattern = r"^[a-z0-9][a-z0-9_.-]{0,62}$", description = "Queue name")),
    responses((status = 200, body = QueueStats), (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope)),
    security(("bearer" = []), ("session" = [])))]
pub async fn resume(
    operator: Operator,
    State(state): State<QueueState>,
    Path(name): Path<String>,
) -> Result<Json<QueueStats>, ApiError> {
    let name = checked_name(&name)?;
    super::set_paused(&state.pool, name.as_str(), false).await?;
    tracing::info!(queue = %name, user_id = %operator.user_id, "queue resumed");
    Ok(Json(stats_or_404(&state, name.as_str()).await?))
}

/// Cancel every pending job of a queue (`{"confirm": true}` required); running jobs finish.
#[utoipa::path(post, path = "/api/admin/queues/{name}/drain", tag = "queue", params(("name" = String, Path, pattern = r"^[a-z0-9][a-z0-9_.-]{0,62}$", description = "Queue name")),
    request_body = DrainRequest,
    responses((status = 200, body = DrainResult), (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope)),
    security(("bearer" = []), ("session" = [])))]
pub async fn drain(
    operator: Operator,
    State(state): State<QueueState>,
    Path(name): Path<String>,
    Json(body): Json<DrainRequest>,
) -> Result<Json<DrainResult>, ApiError> {
    let name = checked_name(&name)?;
    if !body.confirm {
        return Err(ApiError::invalid_field("confirm", "draining cancels every pending job; send {\"confirm\": true}"));
    }
    let cancelled = super::drain(&state.pool, name.as_str()).await?;
    tracing::info!(queue = %name, cancelled, user_id = %operator.user_id, "queue drained");
    Ok(Json(DrainResult { queue: name.to_string(), cancelled }))
}

/// Set how many of a queue's jobs one gateway process runs at once (read when workers start).
#[utoipa::path(put, path = "/api/admin/queues/{name}/concurrency", tag = "queue", params(("name" = String, Path, pattern = r"^[a-z0-9][a-z0-9_.-]{0,62}$", description = "Queue name")),
    request_body = SetConcurrency,
    responses((status = 200, body = QueueStats), (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope)),
    security(("bearer" = []), ("session" = [])))]
pub async fn set_concurrency(
    operator: Operator,
    State(state): State<QueueState>,
    Path(name): Path<String>,
    Json(body): Json<SetConcurrency>,
) -> Result<Json<QueueStats>, ApiError> {
    let name = checked_name(&name)?;
    if !(1..=4096).contains(&body.concurrency) {
        return Err(ApiError::invalid_field("concurrency", "concurrency must be between 1 and 4096"));
    }
    super::set_concurrency(&state.pool, name.as_str(), body.concurrency).await?;
    tracing::info!(queue = %name, concurrency = body.concurrency, user_id = %operator.user_id, "queue concurrency set");
    Ok(Json(stats_or_404(&state, name.as_str()).await?))
}

/// The most recently changed jobs of a queue, newest first.
#[utoipa::path(get, path = "/api/admin/queues/{name}/jobs", tag = "queue", params(("name" = String, Path, pattern = r"^[a-z0-9][a-z0-9_.-]{0,62}$", description = "Queue name"), JobFilter),
    responses((status = 200, body = JobList), (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope)),
    security(("bearer" = []), ("session" = [])))]
pub async fn list_jobs(
    _operator: Operator,
    State(state): State<QueueState>,
    Path(name): Path<String>,
    Query(filter): Query<JobFilter>,
) -> Result<Json<JobList>, ApiError> {
    let name = checked_name(&name)?;
    let status = match filter.status.as_deref().map(str::parse::<JobStatus>).transpose() {
        Ok(status) => status,
        Err(e) => return Err(ApiError::invalid_field("status", e.to_string())),
    };
    let limit = filter.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::invalid_field("limit", "limit must be between 1 and 500"));
    }
    let items = super::recent_jobs(&state.pool, Some(name.as_str()), status, limit).await?;
    Ok(Json(JobList { items }))
}

/// Put a dead, failed or cancelled job back to pending with a fresh attempt count.
#[utoipa::path(post, path = "/api/admin/jobs/{id}/retry", tag = "queue", params(("id" = String, Path, pattern = "^[0-9a-fA-F]{64}$", description = "Job id: 64 hex characters")),
    responses(
        (status = 200, body = JobView), (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope), (status = 409, body = ErrorEnvelope),
    ),
    security(("bearer" = []), ("session" = [])))]
pub async fn retry_job(
    operator: Operator,
    State(state): State<QueueState>,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::invalid_field("id", "a job id is 64 hex characters"));
    }
    match super::retry(&state.pool, &id.to_ascii_lowercase()).await {
        Ok(job) => {
            tracing::info!(job_id = %job.id, user_id = %operator.user_id, "job retried");
            Ok(Json(job))
        }
        Err(RetryError::NotFound) => Err(ApiError::not_found("No such job")),
        Err(e @ RetryError::NotRetryable(_)) => Err(ApiError::conflict(e.to_string())),
        Err(RetryError::Db(e)) => Err(e.into()),
    }
}

/// The queue's admin routes, for any application state that tells the operator and holds a
/// [`QueueState`].
pub fn router<S>() -> OpenApiRouter<S>
where
    S: Operators + Clone + Send + Sync + 'static,
    QueueState: FromRef<S>,
{
    OpenApiRouter::new()
        .routes(routes!(list_queues))
        .routes(routes!(queue_stats))
        .routes(routes!(pause))
        .routes(routes!(resume))
        .routes(routes!(drain))
        .routes(routes!(set_concurrency))
        .routes(routes!(list_jobs))
        .routes(routes!(retry_job))
}
