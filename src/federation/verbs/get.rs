//! The get verb: `get/{resource}/{id}`, one row by id. 404 when it does not exist *or* lies
//! outside the grant, so the verb is no existence oracle.

use std::time::Instant;

use axum::Extension;
use axum::extract::State;
use serde::Serialize;
use sqlx::{Postgres, QueryBuilder};
use utoipa::ToSchema;
use uuid::Uuid;

use super::super::FederationContext;
use super::super::scope::{QueryFilter, evaluate};
use super::outcome::{Outcome, audit_verb, denial_response};
use super::visibility::Visibility;
use crate::app::AppState;
use crate::http::error::{ApiError, ErrorEnvelope};
use crate::http::extract::{Json, Path};
use crate::rbac::Resource;
use crate::store::rows::{self, NOTE_COLUMNS, TASK_COLUMNS};

#[derive(Debug, Serialize, ToSchema)]
pub struct GetResponse {
    #[schema(value_type = Object)]
    pub item: serde_json::Value,
}

/// The row `id` of `f`'s resource, when `f` lets the subject see it, tagged local.
async fn visible_row(pool: &sqlx::PgPool, f: &QueryFilter, id: Uuid) -> Result<Option<serde_json::Value>, sqlx::Error> {
    use crate::store::memory;
    // Tasks and notes are composed from the visibility predicates (their binds numbered as pushed).
    let mut qb = QueryBuilder::<Postgres>::new("");
    Ok(match f.resource {
        Resource::Tasks => {
            qb.push(format_args!("select {TASK_COLUMNS} from tasks t where t.id = ")).push_bind(id).push(" and ");
            Visibility::Grant.push_tasks(&mut qb, f);
            qb.build_query_as::<rows::Task>().fetch_optional(pool).await?.map(rows::local_json)
        }
        Resource::Notes => {
            qb.push(format_args!("select {NOTE_COLUMNS} from mission_tasks mt where mt.id = "))
                .push_bind(id)
                .push(" and ");
            Visibility::Grant.push_notes(&mut qb, f);
            qb.build_query_as::<rows::Note>().fetch_optional(pool).await?.map(rows::local_json)
        }
        // Memory is personal only.
        _ if f.include_personal => match memory::insight_of(pool, f.subject_user_id, id).await? {
            Some(r) => Some(rows::local_json(r)),
            None => memory::preference_of(pool, f.subject_user_id, id).await?.map(rows::local_json),
        },
        _ => None,
    })
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
    let item = visible_row(&state.peer_reads, &filter, id).await?;
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
