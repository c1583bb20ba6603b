//! The local federated query: one resource from this gateway's own data, a peer, or all of
//! them, merged newest first, every row tagged with its `_source` (`local` or the peer's name).
//! A peer that fails does not fail the query: its error is reported next to the rows.

use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::peer_client::PeerCaller;
use crate::admin::guard::AdminUser;
use crate::app::AppState;
use crate::error::{DomainError, Fault, InvalidField};
use crate::http::error::{ApiError, ErrorEnvelope};
use crate::http::extract::Json;
use crate::rbac::Resource;
use crate::store::rows;

const MAX_LIMIT: u32 = 500;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FederatedQuery {
    /// tasks, notes or memory
    #[schema(pattern = "^(tasks|notes|memory)$")]
    pub resource: String,
    /// `local`, `peer:<name>` or `all` [default: all]
    #[schema(pattern = "^(local|all|peer:.+)$")]
    pub source: Option<String>,
    /// Rows per source and in the merged result, 1..=500 [default: 50].
    #[schema(minimum = 1, maximum = 500)]
    #[serde(default, deserialize_with = "crate::http::extract::integer::optional")]
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SourceError {
    pub source: String,
    /// peer_not_found, peer_inactive, peer_misconfigured, network, http_<status>, invalid_response
    pub code: String,
    pub message: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FederatedResult {
    #[schema(value_type = Vec<Object>)]
    pub items: Vec<serde_json::Value>,
    pub errors: Vec<SourceError>,
}

/// Why a merged query or search was refused or could not run. A peer that fails is not an
/// error of the whole operation: it is listed in the answer's `errors`.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error(transparent)]
    Invalid(#[from] InvalidField),
    #[error("the local read failed")]
    Store(#[from] sqlx::Error),
}

impl DomainError for QueryError {
    fn fault(&self) -> Fault {
        match self {
            Self::Invalid(e) => e.fault(),
            Self::Store(_) => Fault::Internal,
        }
    }
}

/// Which sources a `source` value names.
pub(crate) enum Sources {
    Local,
    /// Every callable peer (search's `peer`).
    Peers,
    Peer(String),
    All,
}

/// The checks a merged query and a merged search share: the resource must be readable, the
/// limit in 1..=[`MAX_LIMIT`] (`default_limit` when absent), and `source` one the operation
/// offers (`every_peer`: whether bare `peer` is one).
pub(crate) fn check_request(
    resource: &str,
    limit: Option<u32>,
    default_limit: u32,
    source: Option<&str>,
    every_peer: bool,
) -> Result<(Resource, u32, Sources), InvalidField> {
    let Some(resource) = Resource::parse(resource).filter(|r| r.readable()) else {
        return Err(InvalidField::new("resource", "resource must be tasks, notes or memory"));
    };
    let limit = limit.unwrap_or(default_limit);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(InvalidField::new("limit", format!("limit must be between 1 and {MAX_LIMIT}")));
    }
    let sources = match source.unwrap_or("all") {
        "local" => Sources::Local,
        "all" => Sources::All,
        "peer" if every_peer => Sources::Peers,
        s => match s.strip_prefix("peer:") {
            Some(name) if !name.is_empty() && name.chars().count() <= 200 => Sources::Peer(name.to_string()),
            _ if every_peer => {
                return Err(InvalidField::new("source", "source must be local, peer, peer:<name> or all"));
            }
            _ => return Err(InvalidField::new("source", "source must be local, peer:<name> or all")),
        },
    };
    Ok((resource, limit, sources))
}

/// This gateway's own rows of `resource`, newest first, in the shapes peers see (`store::rows`).
async fn local_rows(
    pool: &sqlx::PgPool,
    resource: Resource,
    limit: i64,
) -> Result<Vec<serde_json::Value>, sqlx::Error> {
    use crate::store::{memory, notes, tasks};
    fn local<T: Serialize>(rows: Vec<T>) -> impl Iterator<Item = serde_json::Value> {
        rows.into_iter().map(rows::local_json)
    }
    Ok(match resource {
        Resource::Tasks => local(tasks::page(pool, rows::before_all(), limit).await?).collect(),
        Resource::Notes => local(notes::latest(pool, limit).await?).collect(),
        _ => {
            let (insights, preferences) = memory::latest(pool, limit).await?;
            local(insights).chain(local(preferences)).collect()
        }
    })
}

/// The names of the peers this gateway can call now (a client certificate, active or degraded).
///
/// # Errors
/// Database errors.
pub async fn callable_peers(pool: &sqlx::PgPool) -> Result<Vec<String>, sqlx::Error> {
    crate::store::peers::callable_names(pool).await
}

fn created_at(v: &serde_json::Value) -> DateTime<Utc> {
    v["createdAt"].as_str().and_then(|s| s.parse().ok()).unwrap_or_default()
}

/// Runs a federated query.
///
/// # Errors
/// [`QueryError::Invalid`] for a bad resource, source or limit; database errors.
pub async fn run(caller: &PeerCaller, q: &FederatedQuery) -> Result<FederatedResult, QueryError> {
    let (resource, limit, sources) = check_request(&q.resource, q.limit, 50, q.source.as_deref(), false)?;
    let mut items = Vec::new();
    let mut errors = Vec::new();
    if matches!(sources, Sources::Local | Sources::All) {
        items.extend(local_rows(&caller.pool, resource, i64::from(limit)).await?);
    }
    let peers: Vec<String> = match &sources {
        Sources::Local => Vec::new(),
        Sources::Peer(name) => vec![name.clone()],
        Sources::All | Sources::Peers => callable_peers(&caller.pool).await?,
    };
    for peer in peers {
        match caller.list(&peer, &q.resource, Some(limit), None).await {
            Ok(page) => items.extend(page.items),
            Err(e) => {
                errors.push(SourceError { source: format!("peer:{peer}"), code: e.code(), message: e.to_string() })
            }
        }
    }
    items.sort_by_key(|v| std::cmp::Reverse(created_at(v)));
    items.truncate(limit as usize);
    Ok(FederatedResult { items, errors })
}

/// Query local data, one peer, or all peers; rows merged newest first and tagged `_source`.
#[utoipa::path(post, path = "/api/admin/federation/query", tag = "admin", request_body = FederatedQuery,
    responses(
        (status = 200, body = FederatedResult), (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope),
    ))]
pub async fn query(
    _admin: AdminUser,
    State(state): State<AppState>,
    Json(q): Json<FederatedQuery>,
) -> Result<Json<FederatedResult>, ApiError> {
    let caller =
        PeerCaller { pool: state.pool.clone(), sealing: state.sealing.clone(), breakers: state.breakers.clone() };
    Ok(Json(run(&caller, &q).await?))
}
