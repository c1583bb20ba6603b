//! The search verb: `POST /api/federation/v1/search/{resource}` (DESIGN §5), full-text and
//! pgvector search that is never wider than `list`.
//!
//! - **Modes.** `text`: Postgres full text (`websearch_to_tsquery`, configuration `simple`) over
//!   tasks' title and description, notes' text, insights' content and preferences' key and
//!   value, ranked by `ts_rank`. `vector`: cosine similarity (`1 - (embedding <=> $v)`) over
//!   insights' 384-dimension embeddings, through the HNSW index. `hybrid`: reciprocal rank fusion
//!   (`Σ 1 / (60 + rank)`) of the text and the vector ranking. Vector and hybrid cover memory
//!   only (only insights carry embeddings), and only when `TESSERA_EMBEDDING_MODEL` is set.
//!   Default: `hybrid` when a vector is given, else `text`.
//! - **Scope.** Each statement ranks only rows that pass the list verb's own visibility
//!   predicates ([`super::visibility`]: tasks of visible projects, the subject's own notes,
//!   memory: the subject's own rows when personal is on), bound from the same [`QueryFilter`] the list verb
//!   uses: excluded resources, team filters, personal, the row cap and the subject's memberships
//!   as the guard read them on this request. So a search never returns a row list would not, and
//!   a revocation or scope edit bites on the next request (the guard reads the grant each time).
//! - **Pages.** A cursor is the offset of the next result, signed with the list cursors' MAC and
//!   bound to grant, resource and a hash of the query (mode, text, vector): it cannot continue
//!   another search. Results go at most [`MAX_DEPTH`] deep: ranking is a top-k operation, and
//!   HNSW scans do not page deeper cheaply.
//! - **Audit.** One row per request with verb `search` and, as `query_hash`, the SHA-256 of the
//!   query (never its text or vector).

use std::time::Instant;

use axum::Extension;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use sha2::Digest;
use sqlx::{FromRow, Row as _};
use utoipa::ToSchema;

use super::super::FederationContext;
use super::super::scope::{QueryFilter, evaluate};
use pgvector::Vector;
use sqlx::{Postgres, QueryBuilder};

use super::outcome::{Outcome, audit_verb, denial_response};
use super::page::{cursor_codec, respond};
pub use super::visibility::Visibility;
use crate::app::AppState;
use crate::error::InvalidField;
use crate::http::error::{ApiError, ErrorEnvelope};
use crate::http::extract::Path;
use crate::rbac::Resource;
use crate::store::rows::{self, NOTE_COLUMNS, TASK_COLUMNS};

/// Dimension of `insights.embedding`.
pub const DIMENSION: usize = 384;
/// Longest query text, in characters.
pub const MAX_QUERY_CHARS: usize = 1000;
/// Deepest result a search pages to.
pub const MAX_DEPTH: i64 = 1000;
/// The `k` of reciprocal rank fusion (the usual constant from Cormack et al.).
pub const RRF_K: i64 = 60;

/// The full-text document of each searchable table: exactly the expressions of the GIN indexes
/// in `migrations/20261201121000_search.sql`, so the planner uses them.
pub const TASK_TSV: &str = "to_tsvector('simple'::regconfig, t.title || ' ' || coalesce(t.description, ''))";
pub const NOTE_TSV: &str = "to_tsvector('simple'::regconfig, mt.notes)";
pub const INSIGHT_TSV: &str = "to_tsvector('simple'::regconfig, i.content)";
pub const PREFERENCE_TSV: &str = "to_tsvector('simple'::regconfig, p.key || ' ' || p.value::text)";

/// Search modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SearchMode {
    Text,
    Vector,
    Hybrid,
}

impl SearchMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SearchMode::Text => "text",
            SearchMode::Vector => "vector",
            SearchMode::Hybrid => "hybrid",
        }
    }
}

/// Unknown fields are ignored, as with `list`. Every field is optional, but a search needs a
/// non-empty `query` or a `vector`.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct SearchRequest {
    /// Search text (web-search syntax: words, `"phrases"`, `-not`, `or`), 1..=1000 characters.
    #[schema(value_type = Option<String>, max_length = 1000)]
    pub query: Option<serde_json::Value>,
    /// A query embedding of exactly 384 finite numbers (memory only).
    #[schema(value_type = Option<Vec<f32>>, min_items = 384, max_items = 384)]
    pub vector: Option<serde_json::Value>,
    /// `text`, `vector` or `hybrid` [default: `hybrid` when a vector is given, else `text`].
    #[schema(value_type = Option<SearchMode>)]
    pub mode: Option<serde_json::Value>,
    /// A positive integer (or a string of one), capped at the grant's `max_rows_per_query`.
    #[schema(value_type = Option<u32>, minimum = 1)]
    pub limit: Option<serde_json::Value>,
    /// `nextCursor` of the previous page of the same search.
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SearchResponse {
    /// Rows in the shape `list` returns, best first, each with `"_source": "local"` and `_score`
    /// (text: `ts_rank`; vector: cosine similarity; hybrid: the fused reciprocal rank).
    #[schema(value_type = Vec<Object>)]
    pub items: Vec<serde_json::Value>,
    /// Absent on the last page.
    #[serde(rename = "nextCursor", skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
    /// True exactly when more results follow (always with `nextCursor`).
    #[serde(rename = "_truncated", skip_serializing_if = "Option::is_none")]
    pub truncated: Option<bool>,
}

/// A validated search.
#[derive(Debug, Clone)]
pub struct Search {
    pub mode: SearchMode,
    /// Empty when only a vector was given.
    pub query: String,
    pub vector: Option<Vec<f32>>,
}

impl Search {
    /// SHA-256 of mode, text and vector: what the audit row stores and the cursor is bound to.
    pub fn hash(&self) -> String {
        let mut h = sha2::Sha256::new();
        h.update(self.mode.as_str().as_bytes());
        h.update([0]);
        h.update(self.query.as_bytes());
        h.update([0]);
        for x in self.vector.iter().flatten() {
            h.update(x.to_le_bytes());
        }
        hex::encode(h.finalize())
    }

    /// Whether this search needs a query embedding it does not have yet.
    pub fn needs_vector(&self) -> bool {
        self.mode != SearchMode::Text && self.vector.is_none()
    }
}

/// The modes `resource` supports on a gateway with (or without) an embedding model.
pub fn modes_for(resource: Resource, embeddings: bool) -> Vec<SearchMode> {
    if resource == Resource::Memory && embeddings {
        vec![SearchMode::Text, SearchMode::Vector, SearchMode::Hybrid]
    } else {
        vec![SearchMode::Text]
    }
}

/// Validates the body's `query`, `vector` and `mode` for `resource` (each 400 names its field).
///
/// # Errors
/// 400 naming `query`, `vector` or `mode`.
pub fn validate(
    resource: Resource,
    query: Option<&serde_json::Value>,
    vector: Option<&serde_json::Value>,
    mode: Option<&serde_json::Value>,
    embeddings: bool,
    provider: bool,
) -> Result<Search, InvalidField> {
    let query = match query {
        None | Some(serde_json::Value::Null) => String::new(),
        Some(serde_json::Value::String(q)) => q.trim().to_string(),
        Some(_) => return Err(InvalidField::new("query", "query must be a string")),
    };
    if query.chars().count() > MAX_QUERY_CHARS {
        return Err(InvalidField::new("query", format!("query must be at most {MAX_QUERY_CHARS} characters")));
    }
    let vector = match vector {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Array(xs)) => {
            if xs.len() != DIMENSION {
                return Err(InvalidField::new(
                    "vector",
                    format!("vector must have {DIMENSION} dimensions, got {}", xs.len()),
                ));
            }
            let mut v = Vec::with_capacity(DIMENSION);
            for x in xs {
                match x.as_f64().map(|x| x as f32) {
                    Some(x) if x.is_finite() => v.push(x),
                    _ => return Err(InvalidField::new("vector", "vector must hold finite numbers only")),
                }
            }
            if v.iter().all(|x| *x == 0.0) {
                return Err(InvalidField::new("vector", "vector must not be all zeros (no direction)"));
            }
            Some(v)
        }
        Some(_) => return Err(InvalidField::new("vector", "vector must be an array of numbers")),
    };
    let mode = match mode {
        None | Some(serde_json::Value::Null) => {
            if vector.is_some() {
                SearchMode::Hybrid
            } else {
                SearchMode::Text
            }
        }
        Some(serde_json::Value::String(m)) => match m.as_str() {
            "text" => SearchMode::Text,
            "vector" => SearchMode::Vector,
            "hybrid" => SearchMode::Hybrid,
            _ => return Err(InvalidField::new("mode", "mode must be text, vector or hybrid")),
        },
        Some(_) => return Err(InvalidField::new("mode", "mode must be text, vector or hybrid")),
    };
    if !modes_for(resource, embeddings).contains(&mode) {
        let why = if embeddings {
            format!("mode {} covers memory only (only insights carry embeddings)", mode.as_str())
        } else {
            format!("mode {} is off: this gateway has no embedding model configured", mode.as_str())
        };
        return Err(InvalidField::new("mode", why));
    }
    match mode {
        SearchMode::Text if query.is_empty() => {
            return Err(InvalidField::new("query", "query must not be empty unless a vector is given"));
        }
        SearchMode::Vector | SearchMode::Hybrid if vector.is_none() && (query.is_empty() || !provider) => {
            let why = if provider {
                "give a vector or a query text to embed"
            } else {
                "vector is required: this gateway has no embedding provider to embed the query"
            };
            return Err(InvalidField::new(if query.is_empty() { "query" } else { "vector" }, why));
        }
        _ => {}
    }
    Ok(Search { mode, query, vector })
}

/// The text-search hits of memory (insights and preferences) for the tsquery `q.q`, for
/// visibility `vis`.
fn push_memory_text_hits(qb: &mut QueryBuilder<Postgres>, vis: Visibility, f: &QueryFilter) {
    qb.push(format_args!(
        "select 'insight'::text as kind, i.id, ts_rank({INSIGHT_TSV}, q.q)::float8 as s \
           from insights i, q where {INSIGHT_TSV} @@ q.q and "
    ));
    vis.push_memory(qb, f, "i");
    qb.push(format_args!(
        " union all select 'preference'::text, p.id, ts_rank({PREFERENCE_TSV}, q.q)::float8 \
           from preferences p, q where {PREFERENCE_TSV} @@ q.q and "
    ));
    vis.push_memory(qb, f, "p");
}

/// `nearest`: the `window` insights visible under `vis` nearest to `vector`, with distance `d`.
fn push_nearest(qb: &mut QueryBuilder<Postgres>, vis: Visibility, f: &QueryFilter, vector: &Vector, window: i64) {
    qb.push("nearest as (select i.id, i.embedding <=> ")
        .push_bind(vector.clone())
        .push(" as d from insights i where i.embedding is not null and ");
    vis.push_memory(qb, f, "i");
    qb.push(" order by i.embedding <=> ").push_bind(vector.clone()).push(format_args!(" limit {window})"));
}

/// `offset … limit …` of a ranking.
fn push_page(qb: &mut QueryBuilder<Postgres>, offset: i64, n: i64) {
    qb.push(" offset ").push_bind(offset).push(" limit ").push_bind(n);
}

/// How many candidates the vector scans take for a page ending at `end`: the next power of two
/// (at least 32). It is written into the statement as a constant, not bound: under the generic
/// plans of the peer-read pool a bound `limit` is estimated at a tenth of the table, and the
/// planner then prefers an exact sequential scan to the HNSW index (5 searches a second instead
/// of hundreds, measured). Rounding keeps the number of distinct statements small.
pub fn window(end: i64) -> i64 {
    let end = u64::try_from(end.max(32)).unwrap_or(32);
    i64::try_from(end.next_power_of_two()).unwrap_or(i64::MAX)
}

/// The statement of one page of `search` over `f.resource`: `n` rows from `offset`, ranking
/// only rows visible under `vis`. `window` ([`window`]) bounds each ranking that feeds a vector
/// or hybrid page. Every statement returns the table's row columns plus `_score` (memory: the
/// columns of insights and preferences side by side, and `_hit`, the table of the row).
///
/// Composed at run time: the mode picks the rankings, the visibility predicates come from
/// [`super::visibility`], and every value is bound as it is pushed.
pub fn statement(
    f: &QueryFilter,
    search: &Search,
    vis: Visibility,
    window: i64,
    offset: i64,
    n: i64,
) -> QueryBuilder<Postgres> {
    let mut qb = QueryBuilder::new("with ");
    let vector = Vector::from(search.vector.clone().unwrap_or_default());
    let text_query = |qb: &mut QueryBuilder<Postgres>| {
        qb.push("q as (select websearch_to_tsquery('simple'::regconfig, ")
            .push_bind(search.query.clone())
            .push(") as q)");
    };
    match (f.resource, search.mode) {
        (Resource::Tasks, _) => {
            text_query(&mut qb);
            qb.push(format_args!(
                ", ranked as (select t.id, ts_rank({TASK_TSV}, q.q)::float8 as _score \
                 from tasks t, q where {TASK_TSV} @@ q.q and "
            ));
            vis.push_tasks(&mut qb, f);
            qb.push(" order by _score desc, t.id");
            push_page(&mut qb, offset, n);
            qb.push(format_args!(
                ") select {TASK_COLUMNS}, r._score from ranked r join tasks t on t.id = r.id order by r._score desc, r.id"
            ));
        }
        (Resource::Notes, _) => {
            text_query(&mut qb);
            qb.push(format_args!(
                ", ranked as (select mt.id, ts_rank({NOTE_TSV}, q.q)::float8 as _score \
                 from mission_tasks mt, q where {NOTE_TSV} @@ q.q and "
            ));
            vis.push_notes(&mut qb, f);
            qb.push(" order by _score desc, mt.id");
            push_page(&mut qb, offset, n);
            qb.push(format_args!(
                ") select {NOTE_COLUMNS}, r._score from ranked r join mission_tasks mt on mt.id = r.id order by r._score desc, r.id"
            ));
        }
        (_, SearchMode::Text) => {
            text_query(&mut qb);
            qb.push(", hits as (");
            push_memory_text_hits(&mut qb, vis, f);
            qb.push("), ranked as (select kind, id, s as _score from hits order by s desc, kind, id");
            push_page(&mut qb, offset, n);
            qb.push(")");
            push_memory_rows(&mut qb);
        }
        (_, SearchMode::Vector) => {
            push_nearest(&mut qb, vis, f, &vector, window);
            qb.push(", ranked as (select 'insight'::text as kind, id, (1 - d)::float8 as _score from nearest order by d, id");
            push_page(&mut qb, offset, n);
            qb.push(")");
            push_memory_rows(&mut qb);
        }
        // Hybrid may come with a vector alone: no text ranking then (and no Postgres notice
        // about a query without lexemes).
        (_, SearchMode::Hybrid) => {
            qb.push("q as (select case when ")
                .push_bind(search.query.clone())
                .push(" = '' then null::tsquery else websearch_to_tsquery('simple'::regconfig, ")
                .push_bind(search.query.clone())
                .push(") end as q), hits as (");
            push_memory_text_hits(&mut qb, vis, f);
            qb.push(format_args!(
                "), by_text as (select kind, id, row_number() over (order by s desc, kind, id) as r \
                 from hits order by s desc, kind, id limit {window}), "
            ));
            push_nearest(&mut qb, vis, f, &vector, window);
            qb.push(format_args!(
                ", by_vector as (select 'insight'::text as kind, id, row_number() over (order by d, id) as r from nearest), \
                 ranked as (select kind, id, sum(1.0 / ({RRF_K} + r))::float8 as _score \
                 from (select * from by_text union all select * from by_vector) u \
                 group by kind, id order by _score desc, kind, id"
            ));
            push_page(&mut qb, offset, n);
            qb.push(")");
            push_memory_rows(&mut qb);
        }
    }
    qb
}

/// Memory rows after the `ranked` CTE: insights and preferences side by side, in the columns
/// their list rows read.
fn push_memory_rows(qb: &mut QueryBuilder<Postgres>) {
    qb.push(
        " select r.kind as _hit, r._score, coalesce(i.id, p.id) as id, \
                case when r.kind = 'insight' then i.source else p.category end as kind, \
                i.content, i.category, i.relevance_score, i.metadata, p.key, p.value, p.source, p.mutable, \
                coalesce(i.created_at, p.created_at) as created_at, coalesce(i.updated_at, p.updated_at) as updated_at \
         from ranked r \
         left join insights i on r.kind = 'insight' and i.id = r.id \
         left join preferences p on r.kind = 'preference' and p.id = r.id \
         order by r._score desc, r.kind, r.id",
    );
}

/// Runs one page of a search: `n` rows from `offset`, shaped as the list verb's rows and tagged
/// with `_source: local` and `_score`.
///
/// # Errors
/// Database errors.
pub async fn run(
    pool: &sqlx::PgPool,
    f: &QueryFilter,
    vis: Visibility,
    search: &Search,
    offset: i64,
    n: i64,
) -> Result<Vec<serde_json::Value>, sqlx::Error> {
    // Binds a vector: unchecked by nature (pgvector's type has no fixed OID).
    let rows = statement(f, search, vis, window(offset + n), offset, n).build().fetch_all(pool).await?;
    let mut items = Vec::with_capacity(rows.len());
    for row in rows {
        let score: f64 = row.try_get("_score")?;
        let mut item = match f.resource {
            Resource::Tasks => rows::local_json(rows::Task::from_row(&row)?),
            Resource::Notes => rows::local_json(rows::Note::from_row(&row)?),
            _ => match row.try_get::<String, _>("_hit")?.as_str() {
                "insight" => rows::local_json(rows::Insight::from_row(&row)?),
                _ => rows::local_json(rows::Preference::from_row(&row)?),
            },
        };
        if let Some(obj) = item.as_object_mut() {
            obj.insert("_score".into(), score.into());
        }
        items.push(item);
    }
    Ok(items)
}

/// The cursor binding of a search: resource and query hash.
fn binding(resource: &str, hash: &str) -> String {
    format!("search/{resource}/{hash}")
}

#[derive(Serialize, Deserialize)]
struct Offset {
    #[serde(rename = "o")]
    offset: i64,
}

fn parse_body(raw: &[u8]) -> Result<SearchRequest, ApiError> {
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Ok(SearchRequest::default());
    }
    crate::http::extract::reject_nul_in_json(raw)?;
    serde_json::from_slice(raw).map_err(|e| ApiError::invalid_request(format!("Invalid request body: {e}")))
}

/// Ranked rows of a resource the grant allows, never a row `list` would not return.
#[utoipa::path(post, path = "/api/federation/v1/search/{resource}", tag = "federation",
    params(("resource" = String, Path, pattern = "^(tasks|notes|memory|credentials|api_keys)$", description = "tasks, notes or memory (credentials and api_keys are names a scope may carry; reading them is always denied)")), request_body = SearchRequest,
    responses(
        (status = 200, body = SearchResponse,
            headers(("x-tessera-limit-capped" = u32, description = "The grant's cap, when the requested limit was above it"))),
        (status = 400, description = "A bad body, query, vector, mode, limit, cursor or resource; `details.field` names it", body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope),
        (status = 413, body = ErrorEnvelope),
        (status = 429, body = ErrorEnvelope), (status = 503, body = ErrorEnvelope),
    ))]
pub async fn search(
    State(state): State<AppState>,
    Extension(ctx): Extension<FederationContext>,
    Path(resource): Path<String>,
    raw: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<axum::response::Response, ApiError> {
    let started = Instant::now();
    let raw = raw.map_err(|e| crate::http::extract::bytes_rejection(&e))?;
    let body = parse_body(&raw)?;
    let teams = ctx.subject_active.then_some(ctx.subject_teams.as_slice());
    let filter = match evaluate(&ctx.scope, ctx.subject_user_id, teams, &resource, body.limit.as_ref()) {
        Ok(filter) => filter,
        Err(d) => return Err(denial_response(&state, &ctx, "search", &resource, &d)),
    };
    let settings = &state.config.search;
    let mut search = validate(
        filter.resource,
        body.query.as_ref(),
        body.vector.as_ref(),
        body.mode.as_ref(),
        settings.embedding_model.is_some(),
        settings.embeddings_url.is_some(),
    )?;
    // The hash is of the request as the caller sent it, before any embedding of its text.
    let hash = search.hash();
    let codec = cursor_codec(&state);
    let offset = match body.cursor.as_deref().map(|c| codec.open(ctx.grant_id, &binding(&resource, &hash), c)) {
        None => 0,
        Some(Ok(payload)) => match serde_json::from_slice::<Offset>(&payload) {
            Ok(o) if (0..MAX_DEPTH).contains(&o.offset) => o.offset,
            _ => return Err(invalid_cursor(&state, &ctx, &resource)),
        },
        Some(Err(_)) => return Err(invalid_cursor(&state, &ctx, &resource)),
    };
    if search.needs_vector() {
        let embedded = crate::federation::embeddings::embed_query(settings, &search.query).await;
        search.vector = Some(embedded.map_err(|e| {
            tracing::warn!(error = %e, "embedding a search query failed");
            ApiError::unavailable("The embedding provider is unavailable; pass a vector or retry", 5)
        })?);
    }
    let limit = i64::from(filter.limit).min(MAX_DEPTH - offset);
    let mut items = run(&state.peer_reads, &filter, Visibility::Grant, &search, offset, limit + 1).await?;
    let has_more = items.len() as i64 > limit && offset + limit < MAX_DEPTH;
    items.truncate(usize::try_from(limit).unwrap_or(0));
    let next_cursor = has_more.then(|| {
        let payload = serde_json::to_vec(&Offset { offset: offset + limit }).unwrap_or_default();
        codec.sign(ctx.grant_id, &binding(&resource, &hash), &payload)
    });
    let truncated = next_cursor.is_some().then_some(true);
    let response = SearchResponse { items, next_cursor, truncated };
    let encoded = serde_json::to_vec(&response).map_err(anyhow::Error::from)?;
    let o = Outcome {
        outcome: "allowed",
        query_hash: Some(hash),
        rows: i32::try_from(response.items.len()).ok(),
        bytes_out: i64::try_from(encoded.len()).ok(),
        latency_ms: Some(started.elapsed().as_secs_f64() * 1000.0),
        ..Default::default()
    };
    audit_verb(&state, &ctx, "search", Some(&resource), o);
    Ok(respond(encoded, body.limit.as_ref(), filter.limit))
}

fn invalid_cursor(state: &AppState, ctx: &FederationContext, resource: &str) -> ApiError {
    let o = Outcome {
        outcome: "denied",
        deny_code: Some("invalid_cursor"),
        reason: Some("Invalid cursor for this search".into()),
        ..Default::default()
    };
    audit_verb(state, ctx, "search", Some(resource), o);
    ApiError::invalid_field("cursor", "Invalid cursor for this search")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn field(e: &InvalidField) -> &'static str {
        e.field
    }

    #[test]
    fn each_bad_field_is_named() {
        let v = |n: usize| json!(vec![0.5; n]);
        let cases = [
            (json!(null), Some(v(3)), None, "vector"),
            (json!("x"), Some(json!("no")), None, "vector"),
            (json!("x"), Some(json!([1, "a"])), None, "vector"),
            (json!(""), None, None, "query"),
            (json!(null), None, None, "query"),
            (json!(7), None, None, "query"),
            (json!("x"), None, Some(json!("fuzzy")), "mode"),
            (json!("x"), None, Some(json!(3)), "mode"),
        ];
        for (q, vec, mode, want) in cases {
            let e = validate(Resource::Memory, Some(&q), vec.as_ref(), mode.as_ref(), true, false).unwrap_err();
            assert_eq!(field(&e), want, "{q} {vec:?} {mode:?}: {}", e.message);
        }
        // Vector modes: memory only, and only with a model.
        let e = validate(Resource::Tasks, Some(&json!("x")), Some(&v(DIMENSION)), None, true, false).unwrap_err();
        assert_eq!(field(&e), "mode");
        let e = validate(Resource::Memory, Some(&json!("x")), Some(&v(DIMENSION)), None, false, false).unwrap_err();
        assert_eq!(field(&e), "mode");
        // Query text alone in vector mode needs a provider.
        let e = validate(Resource::Memory, Some(&json!("x")), None, Some(&json!("vector")), true, false).unwrap_err();
        assert_eq!(field(&e), "vector");
        let s = validate(Resource::Memory, Some(&json!("x")), None, Some(&json!("vector")), true, true).unwrap();
        assert!(s.needs_vector());
    }

    #[test]
    fn the_default_mode_follows_the_vector_and_the_hash_hides_the_text() {
        let s =
            validate(Resource::Memory, Some(&json!(" deploy ")), Some(&json!(vec![0.1; DIMENSION])), None, true, false)
                .unwrap();
        assert_eq!((s.mode, s.query.as_str()), (SearchMode::Hybrid, "deploy"));
        let t = validate(Resource::Tasks, Some(&json!("deploy")), None, None, false, false).unwrap();
        assert_eq!(t.mode, SearchMode::Text);
        assert_ne!(s.hash(), t.hash());
        assert!(!t.hash().contains("deploy") && t.hash().len() == 64);
    }
}
