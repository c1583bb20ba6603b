//! The list verb: `list/{resource}`, keyset pages, newest first.
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
//!
//! With a remembered guard decision, the page statement starts with the guard's confirmation
//! CTE ([`Confirmation::push_cte`]) and returns rows only when the grant still checks out.

use std::time::Instant;

use axum::Extension;
use axum::extract::State;
use chrono::{DateTime, Utc};
use sha2::Digest;
use sqlx::{Postgres, QueryBuilder};
use uuid::Uuid;

use super::super::cursor::{CursorCodec, Position};
use super::super::guard::{self, Confirmation, ListContext};
use super::super::scope::{QueryFilter, evaluate};
use super::outcome::{Outcome, audit_verb, denial_response};
use super::page::{self, ListRequest, ListResponse, Row};
use super::visibility::{Visibility, push_visible_projects};
use crate::app::AppState;
use crate::http::error::{ApiError, ErrorEnvelope};
use crate::http::extract::Path;
use crate::rbac::Resource;
use crate::store::rows::{self, NOTE_COLUMNS, TASK_COLUMNS};

/// A page statement: with the confirmation CTE in front when the context is unconfirmed.
fn page_statement(confirm: Option<&Confirmation>) -> QueryBuilder<Postgres> {
    let mut qb = QueryBuilder::new("");
    if let Some(c) = confirm {
        c.push_cte(&mut qb);
    }
    qb
}

/// The condition that keeps a page's rows only when the grant checks out.
fn confirmed(confirm: Option<&Confirmation>) -> &'static str {
    if confirm.is_some() { Confirmation::CHECK } else { "true" }
}

/// Runs a page statement. `None` means "not confirmed": the grant no longer checks out, or the
/// page is simply empty; either way the caller decides again from the database.
#[tracing::instrument(name = "federation.page_sql", level = "debug", skip_all,
    fields(db.system = "postgresql", confirms_guard = confirm.is_some(), rows = tracing::field::Empty))]
async fn confirmed_page<T>(
    pool: &sqlx::PgPool,
    mut qb: QueryBuilder<Postgres>,
    confirm: Option<&Confirmation>,
) -> Result<Option<Vec<T>>, sqlx::Error>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
{
    let rows: Vec<T> = qb.build_query_as().fetch_all(pool).await?;
    tracing::Span::current().record("rows", rows.len());
    Ok(if confirm.is_some() && rows.is_empty() { None } else { Some(rows) })
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

/// Composed at run time: the confirmation CTE is there only for an unconfirmed context.
async fn fetch_tasks(
    pool: &sqlx::PgPool,
    f: &QueryFilter,
    confirm: Option<&Confirmation>,
    after: (DateTime<Utc>, Uuid),
    n: i64,
) -> Result<Option<Vec<rows::Task>>, sqlx::Error> {
    let mut qb = page_statement(confirm);
    qb.push(format_args!("select {TASK_COLUMNS} from (select k.id from ("));
    push_visible_projects(&mut qb, f);
    qb.push(
        ") v cross join lateral (select t.created_at, t.id from tasks t \
         where t.project_id = v.id and (t.created_at, t.id) < (",
    )
    .push_bind(after.0)
    .push(", ")
    .push_bind(after.1)
    .push(") order by t.created_at desc, t.id desc limit ")
    .push_bind(n)
    .push(") k order by k.created_at desc, k.id desc limit ")
    .push_bind(n)
    .push(format_args!(
        ") page join tasks t on t.id = page.id where {} order by t.created_at desc, t.id desc",
        confirmed(confirm)
    ));
    confirmed_page(pool, qb, confirm).await
}

/// Composed at run time: the confirmation CTE is there only for an unconfirmed context.
async fn fetch_notes(
    pool: &sqlx::PgPool,
    f: &QueryFilter,
    confirm: Option<&Confirmation>,
    after: (DateTime<Utc>, Uuid),
    n: i64,
) -> Result<Option<Vec<rows::Note>>, sqlx::Error> {
    let mut qb = page_statement(confirm);
    qb.push(format_args!("select {NOTE_COLUMNS} from mission_tasks mt where {} and ", confirmed(confirm)));
    Visibility::Grant.push_notes(&mut qb, f);
    qb.push(" and (mt.created_at, mt.id) < (")
        .push_bind(after.0)
        .push(", ")
        .push_bind(after.1)
        .push(") order by mt.created_at desc, mt.id desc limit ")
        .push_bind(n);
    confirmed_page(pool, qb, confirm).await
}

/// Memory spans two tables: all insights first, then all preferences, each newest first.
#[tracing::instrument(name = "federation.page_sql", level = "debug", skip_all, fields(db.system = "postgresql"))]
async fn memory_page(
    pool: &sqlx::PgPool,
    f: &QueryFilter,
    after: Option<&Position>,
    n: i64,
) -> Result<Vec<Row>, sqlx::Error> {
    use crate::store::memory;
    if !f.include_personal {
        return Ok(Vec::new());
    }
    let mut rows = Vec::new();
    let in_preferences = after.is_some_and(|p| p.source.as_deref() == Some("preferences"));
    if !in_preferences {
        let insights = memory::insight_page(pool, f.subject_user_id, page::bound_after(after), n).await?;
        rows.extend(insights.into_iter().map(|r| Row::local(r.created_at, r.id, Some("insights"), r)));
    }
    let remaining = n - rows.len() as i64;
    if remaining > 0 {
        let bound = if in_preferences { page::bound_after(after) } else { page::first_bound() };
        let prefs = memory::preference_page(pool, f.subject_user_id, bound, remaining).await?;
        rows.extend(prefs.into_iter().map(|r| Row::local(r.created_at, r.id, Some("preferences"), r)));
    }
    Ok(rows)
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
    let bound = page::bound_after(after.as_ref());
    let rows = match filter.resource {
        Resource::Tasks => fetch_tasks(&state.peer_reads, &filter, confirm, bound, n)
            .await
            .map(|p| p.map(|r| r.into_iter().map(|r| Row::local(r.created_at, r.id, None, r)).collect())),
        Resource::Notes => fetch_notes(&state.peer_reads, &filter, confirm, bound, n)
            .await
            .map(|p| p.map(|r| r.into_iter().map(|r| Row::local(r.created_at, r.id, None, r)).collect())),
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
        (Ok(Path(resource)), Ok(raw)) => page::parse_list_body(&raw).map(|body| (resource, body)),
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
    let codec = page::cursor_codec(&state);
    // At most two rounds: the guard's remembered decision, confirmed by the page statement;
    // failing that, a decision read from the database (see `guard`).
    let (filter, rows) = loop {
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
    let response: ListResponse = page::list_page(rows, filter.limit, &codec, ctx.grant_id, &resource);
    // Serialised once: the same bytes are sent and counted for the audit row.
    let encoded = serde_json::to_vec(&response).map_err(anyhow::Error::from)?;
    let query_hash = hex::encode(sha2::Sha256::digest(format!("{}|{:?}|{}", resource, body.cursor, filter.limit)));
    let o = Outcome {
        outcome: "allowed",
        query_hash: Some(query_hash),
        rows: i32::try_from(response.items.len()).ok(),
        bytes_out: i64::try_from(encoded.len()).ok(),
        latency_ms: Some(started.elapsed().as_secs_f64() * 1000.0),
        ..Default::default()
    };
    audit_verb(&state, &ctx, "list", Some(&resource), o);
    Ok(page::respond(encoded, body.limit.as_ref(), filter.limit))
}
