//! The merged search of the admin plane (`POST /api/admin/federation/search`): this gateway's
//! own data and every peer's search verb, asked at once, each peer within
//! `TESSERA_SEARCH_PEER_TIMEOUT_MS`, and merged by reciprocal rank fusion: an item's `_score`
//! becomes `1 / (60 + its rank in its source)` (its source's own score is kept as
//! `_sourceScore`), so no source's scale dominates. A peer that fails or times out is listed in
//! `errors` and the search answers with the rest, as `/api/admin/federation/query` does.
//!
//! The local part searches every local row (the admin plane is not scoped by a grant), with the
//! same statements as the peer-facing verb ([`super::verbs::search`]).

use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::peer_client::PeerCaller;
use super::query::{QueryError, SourceError, Sources, check_request};
use super::scope::QueryFilter;
use super::verbs::search::{self as verb, RRF_K, SearchMode, Visibility};
use crate::admin::guard::AdminUser;
use crate::app::AppState;
use crate::config::SearchSettings;
use crate::http::error::{ApiError, ErrorEnvelope};
use crate::http::extract::Json;
use crate::rbac::Resource;

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FederatedSearch {
    /// tasks, notes or memory
    #[schema(pattern = "^(tasks|notes|memory)$")]
    pub resource: String,
    /// Search text, 1..=1000 characters (see the search verb).
    #[schema(min_length = 1, max_length = 1000)]
    pub query: Option<String>,
    /// A query embedding of 384 numbers.
    #[schema(value_type = Option<Vec<f32>>, min_items = 384, max_items = 384)]
    pub vector: Option<serde_json::Value>,
    /// [default: `hybrid` with a vector, else `text`]
    pub mode: Option<SearchMode>,
    /// Rows per source and in the merged result, 1..=500 [default: 20].
    #[schema(minimum = 1, maximum = 500)]
    #[serde(default, deserialize_with = "crate::http::extract::integer::optional")]
    pub limit: Option<u32>,
    /// `local`, `peer` (every peer), `peer:<name>` or `all` [default: all]
    #[schema(pattern = "^(local|peer|all|peer:.{1,200})$")]
    pub source: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FederatedSearchResult {
    /// Best first; each with `_source` (`local` or the peer's name), the fused `_score` and the
    /// source's own `_sourceScore`.
    #[schema(value_type = Vec<Object>)]
    pub items: Vec<serde_json::Value>,
    /// The sources that failed (a peer down, timed out, refusing, or a mode it does not offer).
    pub errors: Vec<SourceError>,
}

/// The local part: every local row, ranked by the verb's statements.
async fn local(
    pool: &sqlx::PgPool,
    resource: Resource,
    settings: &SearchSettings,
    q: &FederatedSearch,
    limit: u32,
) -> Result<Vec<serde_json::Value>, SourceError> {
    let fail = |code: &str, message: String| SourceError { source: "local".into(), code: code.into(), message };
    let mode = q.mode.map(|m| serde_json::Value::String(m.as_str().into()));
    let query = q.query.clone().map(serde_json::Value::String);
    let search = verb::validate(
        resource,
        query.as_ref(),
        q.vector.as_ref(),
        mode.as_ref(),
        settings.embedding_model.is_some(),
        settings.embeddings_url.is_some(),
    );
    let mut search = search.map_err(|e| fail("unsupported", e.message))?;
    if search.needs_vector() {
        let v = super::embeddings::embed_query(settings, &search.query).await;
        search.vector = Some(v.map_err(|e| fail("embeddings_unavailable", e.to_string()))?);
    }
    let everything = QueryFilter {
        resource,
        subject_user_id: uuid::Uuid::nil(),
        include_personal: true,
        team_ids: Vec::new(),
        limit,
    };
    verb::run(pool, &everything, Visibility::Everything, &search, 0, i64::from(limit))
        .await
        .map_err(|e| fail("internal", format!("local search failed: {e}")))
}

/// The body sent to each peer's search verb.
fn peer_body(q: &FederatedSearch, limit: u32) -> serde_json::Value {
    let mut body = serde_json::Map::new();
    if let Some(query) = &q.query {
        body.insert("query".into(), query.clone().into());
    }
    if let Some(v) = &q.vector {
        body.insert("vector".into(), v.clone());
    }
    if let Some(m) = q.mode {
        body.insert("mode".into(), m.as_str().into());
    }
    body.insert("limit".into(), limit.into());
    serde_json::Value::Object(body)
}

/// Reciprocal rank fusion of ranked lists from distinct sources.
fn fuse(lists: Vec<Vec<serde_json::Value>>, limit: usize) -> Vec<serde_json::Value> {
    let mut scored: Vec<(f64, usize, serde_json::Value)> = Vec::new();
    for list in lists {
        for (rank, mut item) in list.into_iter().enumerate() {
            let fused = 1.0 / (RRF_K as f64 + rank as f64 + 1.0);
            if let Some(obj) = item.as_object_mut() {
                let own = obj.remove("_score").unwrap_or(serde_json::Value::Null);
                obj.insert("_sourceScore".into(), own);
                obj.insert("_score".into(), fused.into());
            }
            scored.push((fused, rank, item));
        }
    }
    // Equal ranks keep the order of their sources (local first, then peers by name).
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    scored.into_iter().take(limit).map(|(_, _, item)| item).collect()
}

/// Runs a merged search.
///
/// # Errors
/// [`QueryError::Invalid`] for a bad resource, source, limit, query, vector or mode; database
/// errors.
pub async fn run(
    caller: &PeerCaller,
    settings: &SearchSettings,
    q: &FederatedSearch,
) -> Result<FederatedSearchResult, QueryError> {
    let (resource, limit, sources) = check_request(&q.resource, q.limit, 20, q.source.as_deref(), true)?;
    // The body's own shape is checked here whatever the sources do: a bad vector or an empty
    // query is the caller's error, not a source's (mode support is per source).
    let query = q.query.clone().map(serde_json::Value::String);
    let mode = q.mode.map(|m| serde_json::Value::String(m.as_str().into()));
    verb::validate(Resource::Memory, query.as_ref(), q.vector.as_ref(), mode.as_ref(), true, true)?;

    let peers: Vec<String> = match &sources {
        Sources::Local => Vec::new(),
        Sources::Peer(name) => vec![name.clone()],
        Sources::All | Sources::Peers => super::query::callable_peers(&caller.pool).await?,
    };
    let timeout = settings.peer_timeout;
    let mut calls = tokio::task::JoinSet::new();
    for (i, peer) in peers.into_iter().enumerate() {
        let (caller, body, resource) = (caller.clone(), peer_body(q, limit), q.resource.clone());
        calls.spawn(async move {
            let result = match tokio::time::timeout(timeout, caller.search(&peer, &resource, body)).await {
                Ok(Ok(page)) => Ok(page.items),
                Ok(Err(e)) => {
                    Err(SourceError { source: format!("peer:{peer}"), code: e.code(), message: e.to_string() })
                }
                Err(_) => Err(SourceError {
                    source: format!("peer:{peer}"),
                    code: "timeout".into(),
                    message: format!("no answer within {} ms", timeout.as_millis()),
                }),
            };
            (i, result)
        });
    }
    let mut lists = Vec::new();
    let mut errors = Vec::new();
    if matches!(sources, Sources::Local | Sources::All) {
        match local(&caller.pool, resource, settings, q, limit).await {
            Ok(items) => lists.push(items),
            Err(e) => errors.push(e),
        }
    }
    let mut answers = calls.join_all().await;
    answers.sort_by_key(|(i, _)| *i);
    for (_, answer) in answers {
        match answer {
            Ok(items) => lists.push(items),
            Err(e) => errors.push(e),
        }
    }
    Ok(FederatedSearchResult { items: fuse(lists, limit as usize), errors })
}

/// Search local data, one peer, or every peer; results merged by reciprocal rank fusion, each
/// tagged with its `_source`; failed peers listed in `errors`.
#[utoipa::path(post, path = "/api/admin/federation/search", tag = "admin", request_body = FederatedSearch,
    responses(
        (status = 200, body = FederatedSearchResult), (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope),
    ),
    security(("bearer" = []), ("session" = [])))]
pub async fn search(
    _admin: AdminUser,
    State(state): State<AppState>,
    Json(q): Json<FederatedSearch>,
) -> Result<Json<FederatedSearchResult>, ApiError> {
    let caller =
        PeerCaller { pool: state.pool.clone(), sealing: state.sealing.clone(), breakers: state.breakers.clone() };
    Ok(Json(run(&caller, &state.config.search, &q).await?))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn fusion_interleaves_sources_by_rank() {
        let local = vec![json!({"id": "l1", "_score": 9.0}), json!({"id": "l2", "_score": 1.0})];
        let peer = vec![json!({"id": "p1", "_score": 0.1})];
        let merged = fuse(vec![local, peer], 10);
        let ids: Vec<&str> = merged.iter().map(|i| i["id"].as_str().unwrap()).collect();
        assert_eq!(ids, ["l1", "p1", "l2"]);
        assert_eq!(merged[0]["_sourceScore"], 9.0);
        assert!((merged[0]["_score"].as_f64().unwrap() - 1.0 / 61.0).abs() < 1e-12);
        assert_eq!(fuse(vec![vec![json!({"id": 1}), json!({"id": 2})]], 1).len(), 1);
    }
}
