//! The read verbs: `list/{resource}` (keyset pages) and `get/{resource}/{id}`.
//!
//! Query shape (measured; see `tessera bench list`): a subject sees tasks of a handful of
//! projects among many. `project_id = any($visible) order by created_at desc` makes Postgres
//! sort every visible row older than the cursor, so page 1 is the slowest page. Instead each
//! visible project contributes an index-ordered top-`limit+1` scan of
//! `tasks_by_project (project_id, created_at desc, id desc)` through `LATERAL`, and the few
//! hundred candidates are merged: every page costs about the same, whatever its depth.
//!
//! The merge runs on keys only: the per-project scans read `(created_at, id)` straight from the
//! index (an index-only scan once the visibility map is set, which autovacuum maintains), and
//! only the `limit+1` winners are fetched from the heap by primary key. Fetching whole rows in
//! the scans cost `limit+1` heap visits per visible project, most of them thrown away by the
//! merge; keys first measured about 35% faster at the SQL level (pgbench, 8 clients, random
//! deep pages, 1M tasks) and halves the buffers a page touches.

use std::time::Instant;

use axum::Extension;
use axum::extract::State;
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::Digest;
use utoipa::ToSchema;
use uuid::Uuid;

use super::super::FederationContext;
use super::super::audit::AuditEntry;
use super::super::cursor::{CursorCodec, Position};
use super::super::guard::{self, Confirmation, ListContext};
use super::super::scope::{Denial, DenyCode, QueryFilter, evaluate};
use crate::app::AppState;
use crate::http::error::{ApiError, ErrorEnvelope};
use crate::http::extract::{Json, Path};
use crate::store::rows::{self, INSIGHT_COLUMNS, NOTE_COLUMNS, PREFERENCE_COLUMNS, TASK_COLUMNS};

const MAX_UUID: Uuid = Uuid::max();

/// Set on a list page when the requested limit was above the grant's cap; its value is the cap.
pub const LIMIT_CAPPED_HEADER: &str = "x-tessera-limit-capped";

/// Unknown fields are ignored, as Mosaic's list verb does (a grant's scope JSON stays strict).
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct ListRequest {
    /// A positive integer (or a string of one, `"10"`), capped at the grant's
    /// `max_rows_per_query` (the default).
    #[schema(value_type = Option<u32>)]
    pub limit: Option<serde_json::Value>,
    /// `nextCursor` of the previous page.
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ListResponse {
    /// Rows, newest first, each tagged `"_source": "local"`.
    #[schema(value_type = Vec<Object>)]
    pub items: Vec<Box<RawValue>>,
    /// Absent on the last page.
    #[serde(rename = "nextCursor", skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
    /// True exactly when more rows follow (always with `nextCursor`), as in Mosaic. A requested
    /// limit above the grant's cap is reported in the `X-Tessera-Limit-Capped` header instead.
    #[serde(rename = "_truncated", skip_serializing_if = "Option::is_none")]
    pub truncated: Option<bool>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GetResponse {
    #[schema(value_type = Object)]
    pub item: serde_json::Value,
}

/// A row ready for the wire (already serialised once), with its keyset position.
struct Row {
    created_at: DateTime<Utc>,
    id: Uuid,
    source: Option<&'static str>,
    json: Box<RawValue>,
}

fn raw(value: &impl Serialize) -> Box<RawValue> {
    serde_json::value::to_raw_value(value).expect("rows always serialise")
}

// Visible projects: personal ones when allowed, plus those of the allowed teams.
macro_rules! visible_projects {
    () => {
        "select p.id from projects p where (p.owner_user_id = $1 and $2) or p.team_id = any($3)"
    };
}
pub(super) const VISIBLE_PROJECTS: &str = visible_projects!();
/// The tasks `t` a filter lets the subject see (the parameters of [`scoped`]); shared with search.
pub(super) const TASKS_VISIBLE: &str = concat!("t.project_id in (", visible_projects!(), ")");
/// The notes `mt` a filter lets the subject see: the subject's own, on missions of visible
/// projects (the parameters of [`scoped`]); shared with search.
pub(super) const NOTES_VISIBLE: &str = concat!(
    "mt.user_id = $1 and mt.notes <> '' and exists (select 1 from missions m where m.id = mt.mission_id and m.project_id in (",
    visible_projects!(),
    "))"
);

/// A query over what `f` lets the subject see: binds `$1` subject, `$2` include_personal and
/// `$3` team ids (the parameters of [`VISIBLE_PROJECTS`]); the caller binds the rest.
fn scoped<'q, T>(
    sql: String,
    f: &QueryFilter,
) -> sqlx::query::QueryAs<'q, sqlx::Postgres, T, sqlx::postgres::PgArguments>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>,
{
    sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(f.subject_user_id).bind(f.include_personal).bind(f.team_ids.clone())
}

/// How many rows `f` lets the subject see right now, by the same visibility rules as the pages
/// (scope explain reports it; it never returns the rows).
///
/// # Errors
/// Database errors.
pub async fn visible_count(pool: &sqlx::PgPool, f: &QueryFilter) -> Result<i64, sqlx::Error> {
    let sql = match f.resource.as_str() {
        "tasks" => format!("select count(*) from tasks t where {TASKS_VISIBLE}"),
        "notes" => format!("select count(*) from mission_tasks mt where {NOTES_VISIBLE}"),
        // Memory is personal only: the subject's insights and preferences, when personal is on.
        // `$3` (teams) is bound for every resource by `scoped`; Postgres needs each bound
        // parameter used, hence the `0 *` term.
        _ => "select case when $2 then (select count(*) from insights where user_id = $1)
                                     + (select count(*) from preferences where user_id = $1)
                          else 0 end + 0 * cardinality($3::uuid[])"
            .to_string(),
    };
    let count: (i64,) = scoped(sql, f).fetch_one(pool).await?;
    Ok(count.0)
}

/// A page statement's optional confirmation of the guard's remembered decision: the `with`
/// clause to put in front, and the condition that keeps rows only when the grant checks out.
fn confirming(confirm: Option<&Confirmation>) -> (String, &'static str) {
    match confirm {
        Some(_) => (format!("with {} ", Confirmation::CTE), "(select ok from grant_check)"),
        None => (String::new(), "true"),
    }
}

/// Runs a page statement, binding the confirmation parameters when there are any. `None` means
/// "not confirmed": the grant no longer checks out, or the page is simply empty; either way the
/// caller decides again from the database.
#[tracing::instrument(name = "federation.page_sql", level = "debug", skip_all,
    fields(db.system = "postgresql", confirms_guard = confirm.is_some(), rows = tracing::field::Empty))]
async fn confirmed_page<'q, T>(
    pool: &sqlx::PgPool,
    q: sqlx::query::QueryAs<'q, sqlx::Postgres, T, sqlx::postgres::PgArguments>,
    confirm: Option<&Confirmation>,
) -> Result<Option<Vec<T>>, sqlx::Error>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
{
    let rows = match confirm {
        Some(c) => c.bind(q).fetch_all(pool).await?,
        None => q.fetch_all(pool).await?,
    };
    tracing::Span::current().record("rows", rows.len());
    Ok(if confirm.is_some() && rows.is_empty() { None } else { Some(rows) })
}

async fn tasks_page(
    pool: &sqlx::PgPool,
    f: &QueryFilter,
    confirm: Option<&Confirmation>,
    after: (DateTime<Utc>, Uuid),
    n: i64,
) -> Result<Option<Vec<Row>>, sqlx::Error> {
    let rows = fetch_tasks(pool, f, confirm, after, n).await?;
    Ok(rows.map(|rows| {
        rows.into_iter()
            .map(|r| Row { created_at: r.created_at, id: r.id, source: None, json: raw(&rows::local(r)) })
            .collect()
    }))
}

/// The tasks page query alone (no JSON shaping, no grant confirmation): what `tessera bench
/// list` measures as the ceiling. Returns the number of rows.
///
/// # Errors
/// Database errors.
pub async fn tasks_query(
    pool: &sqlx::PgPool,
    f: &QueryFilter,
    after: (DateTime<Utc>, Uuid),
    n: i64,
) -> Result<usize, sqlx::Error> {
    Ok(fetch_tasks(pool, f, None, after, n).await?.map_or(0, |rows| rows.len()))
}

async fn fetch_tasks(
    pool: &sqlx::PgPool,
    f: &QueryFilter,
    confirm: Option<&Confirmation>,
    after: (DateTime<Utc>, Uuid),
    n: i64,
) -> Result<Option<Vec<rows::Task>>, sqlx::Error> {
    let (with, check) = confirming(confirm);
    let sql = format!(
        "{with}select {TASK_COLUMNS}
         from (
             select k.id
             from ({VISIBLE_PROJECTS}) v
             cross join lateral (
                 select t.created_at, t.id from tasks t
                 where t.project_id = v.id and (t.created_at, t.id) < ($4, $5)
                 order by t.created_at desc, t.id desc
                 limit $6
             ) k
             order by k.created_at desc, k.id desc
             limit $6
         ) page
         join tasks t on t.id = page.id
         where {check}
         order by t.created_at desc, t.id desc"
    );
    confirmed_page(pool, scoped(sql, f).bind(after.0).bind(after.1).bind(n), confirm).await
}

async fn notes_page(
    pool: &sqlx::PgPool,
    f: &QueryFilter,
    confirm: Option<&Confirmation>,
    after: (DateTime<Utc>, Uuid),
    n: i64,
) -> Result<Option<Vec<Row>>, sqlx::Error> {
    let (with, check) = confirming(confirm);
    let sql = format!(
        "{with}select {NOTE_COLUMNS}
         from mission_tasks mt
         where {check} and {NOTES_VISIBLE} and (mt.created_at, mt.id) < ($4, $5)
         order by mt.created_at desc, mt.id desc
         limit $6"
    );
    let rows: Option<Vec<rows::Note>> =
        confirmed_page(pool, scoped(sql, f).bind(after.0).bind(after.1).bind(n), confirm).await?;
    Ok(rows.map(|rows| {
        rows.into_iter()
            .map(|r| Row { created_at: r.created_at, id: r.id, source: None, json: raw(&rows::local(r)) })
            .collect()
    }))
}

/// One keyset page of a memory table (`insights i` or `preferences p`, fixed names).
fn memory_rows<'q, T>(
    table: &'static str,
    columns: &'static str,
    f: &QueryFilter,
    after: (DateTime<Utc>, Uuid),
    n: i64,
) -> sqlx::query::QueryAs<'q, sqlx::Postgres, T, sqlx::postgres::PgArguments>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>,
{
    let sql = format!(
        "select {columns} from {table}
         where user_id = $1 and (created_at, id) < ($2, $3)
         order by created_at desc, id desc limit $4"
    );
    sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(f.subject_user_id).bind(after.0).bind(after.1).bind(n)
}

/// Memory spans two tables: all insights first, then all preferences, each newest first.
#[tracing::instrument(name = "federation.page_sql", level = "debug", skip_all, fields(db.system = "postgresql"))]
async fn memory_page(
    pool: &sqlx::PgPool,
    f: &QueryFilter,
    after: Option<&Position>,
    n: i64,
) -> Result<Vec<Row>, sqlx::Error> {
    if !f.include_personal {
        return Ok(Vec::new());
    }
    let mut rows = Vec::new();
    let in_preferences = after.is_some_and(|p| p.source.as_deref() == Some("preferences"));
    if !in_preferences {
        let (t, i) = after.map_or((end_of_time(), MAX_UUID), |p| (p.created_at(), p.id));
        let insights: Vec<rows::Insight> =
            memory_rows("insights i", INSIGHT_COLUMNS, f, (t, i), n).fetch_all(pool).await?;
        rows.extend(insights.into_iter().map(|r| Row {
            created_at: r.created_at,
            id: r.id,
            source: Some("insights"),
            json: raw(&rows::local(r)),
        }));
    }
    let remaining = n - rows.len() as i64;
    if remaining > 0 {
        let (t, i) = match after {
            Some(p) if in_preferences => (p.created_at(), p.id),
            _ => (end_of_time(), MAX_UUID),
        };
        let prefs: Vec<rows::Preference> =
            memory_rows("preferences p", PREFERENCE_COLUMNS, f, (t, i), remaining).fetch_all(pool).await?;
        rows.extend(prefs.into_iter().map(|r| Row {
            created_at: r.created_at,
            id: r.id,
            source: Some("preferences"),
            json: raw(&rows::local(r)),
        }));
    }
    Ok(rows)
}

fn end_of_time() -> DateTime<Utc> {
    // Postgres 'infinity' does not fit chrono; the end of year 9999 is later than any row.
    DateTime::<Utc>::from_timestamp(253_402_300_799, 0).unwrap_or_default()
}

pub(super) fn cursor_codec(state: &AppState) -> CursorCodec {
    CursorCodec::new(state.sealing.derive_key("federation-cursor-v1"))
}

/// Turns a scope denial into the wire response: 400 for malformed requests, otherwise the one
/// generic 403. The specific reason is logged and audited.
pub(super) fn denial_response(
    state: &AppState,
    ctx: &FederationContext,
    verb: &str,
    resource: &str,
    d: &Denial,
) -> ApiError {
    tracing::info!(grant_id = %ctx.grant_id, verb, resource, code = d.code.as_str(), stage = d.code.stage(), reason = %d.reason, "federation request denied by scope");
    let o = Outcome {
        outcome: "denied",
        deny_code: Some(d.code.as_str()),
        reason: Some(d.reason.clone()),
        ..Default::default()
    };
    // Only a resource name this gateway knows is stored as the row's resource; an unknown one
    // (any text a peer put in the path) is named, escaped and bounded, in the reason alone.
    let known = (d.code != DenyCode::InvalidResource).then_some(resource);
    audit_verb(state, ctx, verb, known, o);
    match d.code {
        DenyCode::InvalidLimit => ApiError::invalid_field("limit", "limit must be a positive integer"),
        DenyCode::InvalidResource => ApiError::invalid_field(
            "resource",
            format!("Unknown resource {:?}", super::super::audit::clean(resource, 64)),
        ),
        // Mosaic's FederationScopeViolationError: its own code, the one generic message.
        _ => ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            crate::http::error::ErrorCode::ScopeViolation,
            super::super::guard::FORBIDDEN_MESSAGE,
        ),
    }
}

/// What one verb call leaves in the audit log.
#[derive(Default)]
pub(super) struct Outcome {
    pub(super) outcome: &'static str,
    pub(super) deny_code: Option<&'static str>,
    pub(super) reason: Option<String>,
    pub(super) query_hash: Option<String>,
    pub(super) rows: Option<i32>,
    pub(super) bytes_out: Option<i64>,
    pub(super) latency_ms: Option<f64>,
}

pub(super) fn audit_verb(state: &AppState, ctx: &FederationContext, verb: &str, resource: Option<&str>, o: Outcome) {
    state.audit.submit(&AuditEntry {
        grant_id: Some(ctx.grant_id),
        peer_id: Some(ctx.peer_id),
        subject_user_id: Some(ctx.subject_user_id),
        verb,
        resource,
        query_hash: o.query_hash,
        outcome: o.outcome,
        deny_code: o.deny_code,
        reason: o.reason,
        rows: o.rows,
        bytes_out: o.bytes_out,
        latency_ms: o.latency_ms,
    });
}

/// One try at a list page under `ctx`. `Ok(None)` only for an unconfirmed context: the page
/// statement did not confirm the guard's remembered decision (or the page is empty), or the
/// remembered scope refused the request, or the cursor does not decode. None of those may be
/// answered before the grant is read again: a remembered scope must not deny a grant that has
/// been widened since, nor a 400 go to a grant that has been revoked.
async fn list_attempt(
    state: &AppState,
    lc: &ListContext,
    resource: &str,
    body: &ListRequest,
    codec: &CursorCodec,
) -> Result<Option<(QueryFilter, Vec<Row>)>, ApiError> {
    let (ctx, confirm) = (&lc.ctx, lc.unconfirmed.as_deref());
    let teams = ctx.subject_active.then_some(ctx.subject_teams.as_slice());
    let filter = match evaluate(&ctx.scope, ctx.subject_user_id, teams, resource, body.limit.as_ref()) {
        Ok(filter) => filter,
        Err(_) if confirm.is_some() => return Ok(None),
        Err(d) => return Err(denial_response(state, ctx, "list", resource, &d)),
    };
    let after = match body.cursor.as_deref().map(|c| codec.decode(ctx.grant_id, resource, c)) {
        None => None,
        Some(Ok(position)) => Some(position),
        Some(Err(_)) if confirm.is_some() => return Ok(None),
        Some(Err(e)) => {
            // Cursor probing is audited like any denial (deny code `invalid_cursor`).
            let o = Outcome {
                outcome: "denied",
                deny_code: Some("invalid_cursor"),
                reason: Some(e.to_string()),
                ..Default::default()
            };
            audit_verb(state, ctx, "list", Some(resource), o);
            return Err(ApiError::invalid_field("cursor", e.to_string()));
        }
    };
    let n = i64::from(filter.limit) + 1;
    let bound = after.as_ref().map_or((end_of_time(), MAX_UUID), |p| (p.created_at(), p.id));
    let rows = match resource {
        "tasks" => tasks_page(&state.peer_reads, &filter, confirm, bound, n).await,
        "notes" => notes_page(&state.peer_reads, &filter, confirm, bound, n).await,
        // Two statements, so no confirmation inside them: decide from the database first.
        _ if confirm.is_some() => Ok(None),
        _ => memory_page(&state.peer_reads, &filter, after.as_ref(), n).await.map(Some),
    };
    let rows = rows.map_err(|e| {
        if let Some(c) = confirm {
            // The page statement was this request's only read of the grant.
            guard::audit_database_failure(state, c.identity(), &list_path(resource));
        }
        ApiError::from(e)
    })?;
    Ok(rows.map(|rows| (filter, rows)))
}

/// An empty body (or JSON `null`) means "first page, default limit"; anything else must be the
/// JSON object, with no NUL in its strings (the same rule as the `Json` extractor, which this
/// handler bypasses). An array is refused: serde would otherwise read it as the fields in order.
fn parse_list_body(raw: &[u8]) -> Result<ListRequest, ApiError> {
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Ok(ListRequest::default());
    }
    crate::http::extract::reject_nul_in_json(raw)?;
    let invalid = |e: serde_json::Error| ApiError::invalid_request(format!("Invalid request body: {e}"));
    match serde_json::from_slice::<serde_json::Value>(raw).map_err(invalid)? {
        serde_json::Value::Null => Ok(ListRequest::default()),
        body @ serde_json::Value::Object(_) => serde_json::from_value(body).map_err(invalid),
        _ => Err(ApiError::invalid_request("Invalid request body: expected a JSON object")),
    }
}

fn list_path(resource: &str) -> String {
    format!("/api/federation/v1/list/{resource}")
}

/// Replaces an unconfirmed context with one read from the database (`Ok(true)`), or answers
/// the request with the guard's denial. `Ok(false)`: the context was confirmed already.
async fn reauthorise(state: &AppState, lc: &mut ListContext, resource: &str) -> Result<bool, axum::response::Response> {
    let Some(confirmation) = lc.unconfirmed.take() else { return Ok(false) };
    lc.ctx = guard::authorise(state, confirmation.identity(), &list_path(resource)).await.map_err(|r| *r)?;
    Ok(true)
}

/// One page of a resource the grant allows, newest first.
#[utoipa::path(post, path = "/api/federation/v1/list/{resource}", tag = "federation",
    params(("resource" = String, Path, pattern = "^(tasks|notes|memory|credentials|api_keys)$", description = "tasks, notes or memory (credentials and api_keys are names a scope may carry; reading them is always denied)")), request_body = Option<ListRequest>,
    responses(
        (status = 200, body = ListResponse), (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope),
    ))]
pub async fn list(
    State(state): State<AppState>,
    Extension(lc): Extension<ListContext>,
    path: Result<Path<String>, ApiError>,
    raw: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<axum::response::Response, ApiError> {
    let started = Instant::now();
    let mut lc = lc;
    // Even a malformed request is answered only once the grant is known to stand: with a
    // remembered decision, read the grant before any 400 or 413.
    let parsed = match (path, raw) {
        (Ok(Path(resource)), Ok(raw)) => parse_list_body(&raw).map(|body| (resource, body)),
        (Err(e), _) => Err(e),
        (_, Err(e)) => Err(crate::http::extract::bytes_rejection(&e)),
    };
    let (resource, body) = match parsed {
        Ok(parsed) => parsed,
        Err(e) => {
            if let Err(response) = reauthorise(&state, &mut lc, "").await {
                return Ok(response);
            }
            return Err(e);
        }
    };
    let requested = body.limit.as_ref().and_then(|l| match l {
        serde_json::Value::String(text) => text.trim().parse::<u64>().ok(),
        other => other.as_u64(),
    });
    let codec = cursor_codec(&state);
    // At most two rounds: the guard's remembered decision, confirmed by the page statement;
    // failing that, a decision read from the database (see `guard`).
    let (filter, mut rows) = loop {
        if let Some(page) = list_attempt(&state, &lc, &resource, &body, &codec).await? {
            break page;
        }
        match reauthorise(&state, &mut lc, &resource).await {
            Ok(true) => {}
            // Only an unconfirmed context comes back without a page; never loop on a confirmed one.
            Ok(false) => return Err(ApiError::internal(anyhow::anyhow!("list: a confirmed context returned no page"))),
            Err(response) => return Ok(response),
        }
    };
    let ctx = lc.ctx;
    let has_more = rows.len() > filter.limit as usize;
    rows.truncate(filter.limit as usize);
    let next_cursor = if has_more {
        rows.last().map(|r| codec.encode(ctx.grant_id, &Position::new(&resource, r.created_at, r.id, r.source)))
    } else {
        None
    };
    let truncated = next_cursor.is_some().then_some(true);
    let response = ListResponse { items: rows.into_iter().map(|r| r.json).collect(), next_cursor, truncated };
    // Serialised once: the same bytes are sent and counted for the audit row.
    let encoded = serde_json::to_vec(&response).map_err(anyhow::Error::from)?;
    let bytes = i64::try_from(encoded.len()).ok();
    let query_hash = hex::encode(sha2::Sha256::digest(format!("{}|{:?}|{}", resource, body.cursor, filter.limit)));
    let o = Outcome {
        outcome: "allowed",
        query_hash: Some(query_hash),
        rows: i32::try_from(response.items.len()).ok(),
        bytes_out: bytes,
        latency_ms: Some(started.elapsed().as_secs_f64() * 1000.0),
        ..Default::default()
    };
    audit_verb(&state, &ctx, "list", Some(&resource), o);
    let mut response = ([(axum::http::header::CONTENT_TYPE, "application/json")], encoded).into_response();
    if requested.is_some_and(|r| r > u64::from(filter.limit)) {
        response.headers_mut().insert(LIMIT_CAPPED_HEADER, axum::http::HeaderValue::from(filter.limit));
    }
    Ok(response)
}

/// One row by id. 404 when it does not exist *or* lies outside the grant (no existence oracle).
#[utoipa::path(post, path = "/api/federation/v1/get/{resource}/{id}", tag = "federation",
    params(("resource" = String, Path, pattern = "^(tasks|notes|memory|credentials|api_keys)$"), ("id" = Uuid, Path)),
    responses(
        (status = 200, body = GetResponse), (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope),
    ))]
pub async fn get(
    State(state): State<AppState>,
    Extension(ctx): Extension<FederationContext>,
    Path((resource, id)): Path<(String, Uuid)>,
) -> Result<Json<GetResponse>, ApiError> {
    let started = Instant::now();
    let teams = ctx.subject_active.then_some(ctx.subject_teams.as_slice());
    let filter = match evaluate(&ctx.scope, ctx.subject_user_id, teams, &resource, None) {
        Ok(f) => f,
        Err(d) => return Err(denial_response(&state, &ctx, "get", &resource, &d)),
    };
    let item = match resource.as_str() {
        "tasks" => {
            let sql = format!(
                "select {TASK_COLUMNS}
                 from tasks t where t.id = $4 and {TASKS_VISIBLE}"
            );
            let row: Option<rows::Task> = scoped(sql, &filter).bind(id).fetch_optional(&state.peer_reads).await?;
            row.map(rows::local_json)
        }
        "notes" => {
            let sql = format!(
                "select {NOTE_COLUMNS}
                 from mission_tasks mt
                 where mt.id = $4 and {NOTES_VISIBLE}"
            );
            let row: Option<rows::Note> = scoped(sql, &filter).bind(id).fetch_optional(&state.peer_reads).await?;
            row.map(rows::local_json)
        }
        _ if filter.include_personal => {
            let insight: Option<rows::Insight> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "select {INSIGHT_COLUMNS} from insights i where i.id = $1 and i.user_id = $2"
            )))
            .bind(id)
            .bind(filter.subject_user_id)
            .fetch_optional(&state.peer_reads)
            .await?;
            match insight {
                Some(r) => Some(rows::local_json(r)),
                None => {
                    let pref: Option<rows::Preference> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                        "select {PREFERENCE_COLUMNS} from preferences p where p.id = $1 and p.user_id = $2"
                    )))
                    .bind(id)
                    .bind(filter.subject_user_id)
                    .fetch_optional(&state.peer_reads)
                    .await?;
                    pref.map(rows::local_json)
                }
            }
        }
        _ => None,
    };
    let found = item.is_some();
    let o = Outcome {
        outcome: if found { "allowed" } else { "not_found" },
        query_hash: Some(id.to_string()),
        rows: Some(i32::from(found)),
        latency_ms: Some(started.elapsed().as_secs_f64() * 1000.0),
        ..Default::default()
    };
    audit_verb(&state, &ctx, "get", Some(&resource), o);
    item.map(|item| Json(GetResponse { item })).ok_or_else(|| ApiError::not_found("Not found"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_body_refuses_a_nul_like_every_json_body() {
        let e = parse_list_body(br#"{"cursor": "abc\u0000"}"#).unwrap_err();
        assert_eq!(e.status(), axum::http::StatusCode::BAD_REQUEST);
        assert!(e.message().starts_with("cursor "), "{}", e.message());
        assert!(parse_list_body(br#"{"limit": "5", "extra": {"x": "\u0000"}}"#).is_err(), "ignored fields too");
        assert!(parse_list_body(b" ").is_ok());
        assert!(parse_list_body(b"null").is_ok(), "null is no body");
        assert!(parse_list_body(b"[null, null]").is_err(), "an array is not the fields in order");
        assert!(parse_list_body(b"5").is_err());
        assert!(parse_list_body(br#"{"limit": 5, "cursor": "\\u0000"}"#).is_ok());
    }
}
