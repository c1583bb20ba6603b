//! The local data API (DESIGN §7): admin-authenticated create and list for the records this
//! gateway is the system of record for, and `tessera import` which loads the same records.
//!
//! - [`records`]: the record types and one `create_*` function per aggregate. HTTP handlers and
//!   the importer both call these, so a record is validated the same way whichever door it uses.
//! - [`routes`]: the handlers.
//! - This module: keyset pagination with opaque cursors, and the one place that turns database
//!   constraint violations into 400/404/409 envelopes naming the field.
//!
//! Cursors are base64url (no padding) over `{"k": kind, "t": created_at, "i": id}`. They carry the
//! kind so that a cursor of one list is refused by another (400, never a silent first page). They
//! are not MAC'd: every admin may read every row here anyway, so a forged cursor reveals nothing.

pub mod import;
pub mod records;
pub mod routes;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgExecutor;
use sqlx::error::ErrorKind;
use sqlx::postgres::PgRow;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::http::error::ApiError;

/// Default and largest page sizes.
pub const DEFAULT_LIMIT: u32 = 50;
pub const MAX_LIMIT: u32 = 500;

/// Query string of every list endpoint.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Page size, 1..=500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    /// `nextCursor` of the previous page, unchanged (opaque; a cursor of another list is refused).
    #[param(min_length = 1, max_length = 1000)]
    pub cursor: Option<String>,
}

/// One page of a list, newest first. `nextCursor` is absent on the last page.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Page<T> {
    pub items: Vec<T>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// A row's position in the keyset order `created_at desc, id desc`.
pub trait Keyed {
    fn keyset(&self) -> (DateTime<Utc>, Uuid);
}

#[derive(Serialize, Deserialize)]
struct Cursor {
    k: String,
    t: DateTime<Utc>,
    i: Uuid,
}

fn encode_cursor(kind: &str, (t, i): (DateTime<Utc>, Uuid)) -> String {
    let json = serde_json::to_vec(&Cursor { k: kind.to_string(), t, i }).unwrap_or_default();
    URL_SAFE_NO_PAD.encode(json)
}

fn decode_cursor(kind: &str, cursor: &str) -> Result<(DateTime<Utc>, Uuid), ApiError> {
    let bad =
        || ApiError::invalid_field("cursor", "Invalid cursor: pass the nextCursor of the previous page unchanged");
    let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| bad())?;
    let c: Cursor = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    if c.k != kind {
        return Err(bad());
    }
    Ok((c.t, c.i))
}

/// Runs a keyset list query and cuts it into a page.
///
/// `sql` binds `$1` (created_at bound), `$2` (id bound), `$3` (limit + 1) and, when `scope` is
/// given, `$4`; it must filter `(created_at, id) < ($1, $2)` and order `created_at desc, id desc`.
///
/// # Errors
/// 400 for a bad limit or cursor; database errors.
pub async fn list_page<T>(
    db: impl PgExecutor<'_>,
    kind: &str,
    sql: &'static str,
    scope: Option<Uuid>,
    q: &ListQuery,
) -> Result<Page<T>, ApiError>
where
    T: for<'r> sqlx::FromRow<'r, PgRow> + Send + Unpin + Keyed,
{
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::invalid_field("limit", format!("limit must be between 1 and {MAX_LIMIT}")));
    }
    // The first page starts after the largest key: a plain row comparison keeps the index usable.
    let (after_t, after_id) = match &q.cursor {
        Some(c) => decode_cursor(kind, c)?,
        None => (Utc.with_ymd_and_hms(9999, 12, 31, 0, 0, 0).single().unwrap_or_default(), Uuid::max()),
    };
    let mut query = sqlx::query_as::<_, T>(sql).bind(after_t).bind(after_id).bind(i64::from(limit) + 1);
    if let Some(scope) = scope {
        query = query.bind(scope);
    }
    let mut items = query.fetch_all(db).await?;
    let next_cursor = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().map(|last| encode_cursor(kind, last.keyset()))
    } else {
        None
    };
    Ok(Page { items, next_cursor })
}

/// Maps a constraint violation to an envelope naming the field; anything else stays a 500.
///
/// - unique → 409 `conflict` (the field whose value is taken);
/// - foreign key → 404 `not_found` (the field holding the unknown id);
/// - check / not null → 400 `invalid_request`.
pub fn db_error(e: sqlx::Error) -> ApiError {
    let sqlx::Error::Database(d) = &e else { return ApiError::internal(e) };
    let constraint = d.constraint().unwrap_or_default();
    let table = d.table().unwrap_or_default();
    match d.kind() {
        ErrorKind::UniqueViolation => {
            let (field, message) = match constraint {
                "users_email_key" => ("email", "A user with this email already exists"),
                "teams_name_key" => ("name", "A team with this name already exists"),
                "team_members_pkey" => ("userId", "This user is already a member of the team"),
                "preferences_user_key" => ("key", "This user already has a preference with this key"),
                c if c.ends_with("_pkey") => ("id", "A record with this id already exists"),
                _ => ("", "The record conflicts with an existing one"),
            };
            ApiError::conflict(message).with_details(serde_json::json!({ "field": field }))
        }
        ErrorKind::ForeignKeyViolation => {
            // Postgres names foreign keys `<table>_<column>_fkey`.
            let column = constraint
                .strip_prefix(table)
                .and_then(|c| c.strip_prefix('_'))
                .and_then(|c| c.strip_suffix("_fkey"))
                .unwrap_or("id");
            let field = camel_case(column);
            ApiError::not_found(format!("{field} refers to a record that does not exist"))
                .with_details(serde_json::json!({ "field": field }))
        }
        ErrorKind::CheckViolation | ErrorKind::NotNullViolation => {
            ApiError::invalid_request("The record violates a constraint").with_details(serde_json::json!({
                "constraint": constraint
            }))
        }
        _ => ApiError::internal(e),
    }
}

fn camel_case(snake: &str) -> String {
    let mut out = String::with_capacity(snake.len());
    let mut upper = false;
    for ch in snake.chars() {
        if ch == '_' {
            upper = true;
        } else if upper {
            out.extend(ch.to_uppercase());
            upper = false;
        } else {
            out.push(ch);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_are_bound_to_their_kind() {
        let key = (Utc::now(), Uuid::now_v7());
        let c = encode_cursor("task", key);
        assert!(!c.contains('=') && !c.contains('+') && !c.contains('/'));
        let (t, i) = decode_cursor("task", &c).unwrap();
        assert_eq!((t, i), key);
        assert_eq!(decode_cursor("user", &c).unwrap_err().status(), 400);
        assert_eq!(decode_cursor("task", "not a cursor").unwrap_err().status(), 400);
        assert_eq!(decode_cursor("task", "").unwrap_err().status(), 400);
    }

    #[test]
    fn columns_become_camel_case_fields() {
        assert_eq!(camel_case("owner_user_id"), "ownerUserId");
        assert_eq!(camel_case("id"), "id");
    }
}
