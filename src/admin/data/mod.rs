//! The local data API (DESIGN §7): admin-authenticated create and list for the records this
//! gateway is the system of record for, and `tessera import` which loads the same records.
//!
//! - [`records`]: the record types and one `create_*` function per aggregate. HTTP handlers and
//!   the importer both call these, so a record is validated the same way whichever door it uses.
//! - [`routes`]: the handlers.
//! - This module: keyset pagination with opaque cursors. The queries are the `store`
//!   aggregates'; constraint violations become fields in `store::constraint`.
//!
//! Cursors are base64url (no padding) over `{"k": kind, "t": created_at, "i": id}`. They carry the
//! kind so that a cursor of one list is refused by another (400, never a silent first page). They
//! are not MAC'd: every admin may read every row here anyway, so a forged cursor reveals nothing.

pub mod import;
pub mod records;
pub mod routes;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
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

/// Reads one keyset page through `fetch` and cuts it into a page.
///
/// `fetch(after, n)` returns up to `n` rows before `after` in the order `created_at desc, id desc`.
///
/// # Errors
/// 400 for a bad limit or cursor; database errors.
pub async fn list_page<T, F, Fut>(kind: &str, q: &ListQuery, fetch: F) -> Result<Page<T>, ApiError>
where
    T: Keyed,
    F: FnOnce((DateTime<Utc>, Uuid), i64) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<T>, sqlx::Error>>,
{
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::invalid_field("limit", format!("limit must be between 1 and {MAX_LIMIT}")));
    }
    // The first page starts after the largest key: a plain row comparison keeps the index usable.
    let after = match &q.cursor {
        Some(c) => decode_cursor(kind, c)?,
        None => crate::store::rows::before_all(),
    };
    let mut items = fetch(after, i64::from(limit) + 1).await?;
    let next_cursor = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().map(|last| encode_cursor(kind, last.keyset()))
    } else {
        None
    };
    Ok(Page { items, next_cursor })
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
}
