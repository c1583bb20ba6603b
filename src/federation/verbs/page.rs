//! What the paging verbs share: the `list` request and page shapes, the keyset bounds, the cursor
//! codec, and how a page goes on the wire (one serialisation, the capped-limit header).

use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::ToSchema;
use uuid::Uuid;

use super::super::cursor::{CursorCodec, Position};
use crate::app::AppState;
use crate::http::error::ApiError;

/// Set on a page when the requested limit was above the grant's cap; its value is the cap.
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

/// A row ready for the wire (already serialised once), with its keyset position.
pub struct Row {
    pub created_at: DateTime<Utc>,
    pub id: Uuid,
    /// The table of a resource that spans two (memory: `insights`, `preferences`).
    pub source: Option<&'static str>,
    pub json: Box<RawValue>,
}

impl Row {
    /// `row` tagged `"_source": "local"`, at its keyset position.
    pub fn local(created_at: DateTime<Utc>, id: Uuid, source: Option<&'static str>, row: impl Serialize) -> Self {
        let json = serde_json::value::to_raw_value(&crate::store::rows::local(row)).expect("rows always serialise");
        Self { created_at, id, source, json }
    }
}

pub use crate::store::rows::before_all as first_bound;

/// The bound after `position`, or the first page's.
pub fn bound_after(position: Option<&Position>) -> (DateTime<Utc>, Uuid) {
    position.map_or_else(first_bound, |p| (p.created_at(), p.id))
}

pub fn cursor_codec(state: &AppState) -> CursorCodec {
    CursorCodec::new(state.sealing.derive_key("federation-cursor-v1"))
}

/// Cuts `rows` (up to `limit + 1` of them) to a page: the extra row only says more follow, and
/// the cursor points after the page's last row.
pub fn list_page(mut rows: Vec<Row>, limit: u32, codec: &CursorCodec, grant_id: Uuid, resource: &str) -> ListResponse {
    let has_more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next_cursor = if has_more {
        rows.last().map(|r| codec.encode(grant_id, &Position::new(resource, r.created_at, r.id, r.source)))
    } else {
        None
    };
    let truncated = next_cursor.is_some().then_some(true);
    ListResponse { items: rows.into_iter().map(|r| r.json).collect(), next_cursor, truncated }
}

/// The JSON answer of an already serialised page, with [`LIMIT_CAPPED_HEADER`] when the
/// request's `limit` was above the grant's `cap`.
pub fn respond(encoded: Vec<u8>, requested: Option<&serde_json::Value>, cap: u32) -> Response {
    let requested = requested.and_then(|l| match l {
        serde_json::Value::String(text) => text.trim().parse::<u64>().ok(),
        other => other.as_u64(),
    });
    let mut response = ([(axum::http::header::CONTENT_TYPE, "application/json")], encoded).into_response();
    if requested.is_some_and(|r| r > u64::from(cap)) {
        response.headers_mut().insert(LIMIT_CAPPED_HEADER, axum::http::HeaderValue::from(cap));
    }
    response
}

/// An empty body (or JSON `null`) means "first page, default limit"; anything else must be the
/// JSON object, with no NUL in its strings (the same rule as the `Json` extractor, which the list
/// handler bypasses). An array is refused: serde would otherwise read it as the fields in order.
///
/// # Errors
/// 400 for a body that is not such an object.
pub fn parse_list_body(raw: &[u8]) -> Result<ListRequest, ApiError> {
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
