//! Reading the federation audit log: `GET /api/admin/audit` (admin), newest first, with keyset
//! cursors and filters. `tessera audit list|tail|export` is a client of this route.
//!
//! The cursor is the last row's `(at, id)`, base64url; rows with the same timestamp are ordered
//! by id, so paging never skips or repeats a row even while the writer appends (new rows are
//! newer than the first page and never move behind a cursor). It is an admin-plane cursor over
//! rows the caller may read in full, so it carries no MAC; a cursor that does not decode is a
//! 400 naming `cursor`.

use axum::extract::State;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::admin::guard::AdminUser;
use crate::app::AppState;
use crate::http::error::{ApiError, ErrorEnvelope};
use crate::http::extract::{Json, Query};

/// Rows per page at most, and by default.
pub const MAX_LIMIT: i64 = 1000;
const DEFAULT_LIMIT: i64 = 100;

/// Filters of `GET /api/admin/audit`; all optional and combined with AND.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditFilter {
    pub peer_id: Option<Uuid>,
    pub grant_id: Option<Uuid>,
    pub subject_user_id: Option<Uuid>,
    /// `list`, `get`, `capabilities`, `renew`, `enroll`, `reenroll`, `revoke`, ...
    pub verb: Option<String>,
    pub resource: Option<String>,
    /// `allowed` or `denied` (also `not_found`, `enrolled`, `renewed`, `revoked`, `gap`, ...).
    pub outcome: Option<String>,
    pub deny_code: Option<String>,
    /// Rows at or after this instant (RFC 3339).
    pub from: Option<DateTime<Utc>>,
    /// Rows before this instant (RFC 3339).
    pub to: Option<DateTime<Utc>>,
    /// 1..=1000, default 100.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// `nextCursor` of the previous page.
    pub cursor: Option<String>,
}

/// One audit row.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct AuditRow {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub grant_id: Option<Uuid>,
    pub peer_id: Option<Uuid>,
    pub subject_user_id: Option<Uuid>,
    pub verb: String,
    pub resource: Option<String>,
    pub query_hash: Option<String>,
    pub outcome: String,
    pub deny_code: Option<String>,
    /// The internal reason (never sent to the peer).
    pub reason: Option<String>,
    pub rows: Option<i32>,
    pub bytes_out: Option<i64>,
    pub latency_ms: Option<f64>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AuditPage {
    pub items: Vec<AuditRow>,
    /// Absent on the last page.
    #[serde(rename = "nextCursor", skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

fn encode_cursor(row: &AuditRow) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{}:{}", row.at.timestamp_micros(), row.id))
}

fn decode_cursor(cursor: &str) -> Option<(DateTime<Utc>, i64)> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(cursor).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (micros, id) = text.split_once(':')?;
    Some((DateTime::from_timestamp_micros(micros.parse().ok()?)?, id.parse().ok()?))
}

/// One page of audit rows, newest first.
///
/// # Errors
/// 400 for a bad limit, text filter or cursor; database errors.
pub async fn page(db: &sqlx::PgPool, filter: &AuditFilter) -> Result<AuditPage, ApiError> {
    let limit = filter.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::invalid_field("limit", format!("limit must be between 1 and {MAX_LIMIT}")));
    }
    for (field, value) in [
        ("verb", &filter.verb),
        ("resource", &filter.resource),
        ("outcome", &filter.outcome),
        ("denyCode", &filter.deny_code),
    ] {
        if value.as_ref().is_some_and(|v| v.len() > 64) {
            return Err(ApiError::invalid_field(field, format!("{field} is at most 64 characters")));
        }
    }
    let after = match filter.cursor.as_deref().map(decode_cursor) {
        None => None,
        Some(Some(position)) => Some(position),
        Some(None) => return Err(ApiError::invalid_field("cursor", "cursor is not a nextCursor of this route")),
    };
    // Every filter is a bound parameter, and an absent one is `$n is null`: one static
    // statement, planned once.
    let mut rows: Vec<AuditRow> = sqlx::query_as(
        "select id, at, grant_id, peer_id, subject_user_id, verb, resource, query_hash, outcome, deny_code, reason,
                rows, bytes_out, latency_ms
           from federation_audit_log
          where ($1::uuid is null or peer_id = $1)
            and ($2::uuid is null or grant_id = $2)
            and ($3::uuid is null or subject_user_id = $3)
            and ($4::text is null or verb = $4)
            and ($5::text is null or resource = $5)
            and ($6::text is null or outcome = $6)
            and ($7::text is null or deny_code = $7)
            and ($8::timestamptz is null or at >= $8)
            and ($9::timestamptz is null or at < $9)
            and ($10::timestamptz is null or (at, id) < ($10, $11))
          order by at desc, id desc
          limit $12",
    )
    .bind(filter.peer_id)
    .bind(filter.grant_id)
    .bind(filter.subject_user_id)
    .bind(&filter.verb)
    .bind(&filter.resource)
    .bind(&filter.outcome)
    .bind(&filter.deny_code)
    .bind(filter.from)
    .bind(filter.to)
    .bind(after.map(|(at, _)| at))
    .bind(after.map_or(0, |(_, id)| id))
    .bind(limit + 1)
    .fetch_all(db)
    .await?;
    let more = rows.len() > usize::try_from(limit).unwrap_or(usize::MAX);
    rows.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    let next_cursor = if more { rows.last().map(encode_cursor) } else { None };
    Ok(AuditPage { items: rows, next_cursor })
}

/// The federation audit log, newest first, filtered; keyset pages.
#[utoipa::path(get, path = "/api/admin/audit", tag = "admin", params(AuditFilter),
    responses(
        (status = 200, body = AuditPage), (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
    ))]
pub async fn list_audit(
    _admin: AdminUser,
    State(state): State<AppState>,
    Query(filter): Query<AuditFilter>,
) -> Result<Json<AuditPage>, ApiError> {
    Ok(Json(page(&state.pool, &filter).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let at = DateTime::from_timestamp_micros(1_764_000_000_123_456).unwrap();
        let row = AuditRow {
            id: 42,
            at,
            grant_id: None,
            peer_id: None,
            subject_user_id: None,
            verb: "list".into(),
            resource: None,
            query_hash: None,
            outcome: "allowed".into(),
            deny_code: None,
            reason: None,
            rows: None,
            bytes_out: None,
            latency_ms: None,
        };
        assert_eq!(decode_cursor(&encode_cursor(&row)), Some((at, 42)));
        assert_eq!(decode_cursor("not-a-cursor"), None);
        assert_eq!(decode_cursor(""), None);
    }
}
