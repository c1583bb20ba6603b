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
use crate::store::audit as store;

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

pub use crate::store::audit::AuditRow;

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
    let query = store::PageQuery {
        peer_id: filter.peer_id,
        grant_id: filter.grant_id,
        subject_user_id: filter.subject_user_id,
        verb: filter.verb.as_deref(),
        resource: filter.resource.as_deref(),
        outcome: filter.outcome.as_deref(),
        deny_code: filter.deny_code.as_deref(),
        from: filter.from,
        to: filter.to,
        after,
        limit: limit + 1,
    };
    let mut rows = store::page(db, &query).await?;
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
