//! Request-head limit: headers larger than [`MAX_HEADER_BYTES`] are answered 431 in the error
//! envelope.
//!
//! The connection layer reads request heads of up to [`crate::tls::MAX_HEAD_BYTES`] (HTTP/1.1
//! buffer and HTTP/2 header list) so that an oversized header reaches this layer and gets an
//! answer; were hyper's own, smaller limit hit first, an HTTP/1.1 client would see the
//! connection reset while it is still sending, with no answer at all.

use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::{ApiError, ErrorCode};

/// The most header bytes (names, values and the request target) a request may carry.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// The middleware (see the module docs).
pub async fn header_size(req: Request, next: Next) -> Response {
    let size = req.uri().to_string().len()
        + req.headers().iter().map(|(name, value)| name.as_str().len() + value.len() + 4).sum::<usize>();
    if size > MAX_HEADER_BYTES {
        return ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ErrorCode::InvalidRequest,
            format!("Request headers are too large ({size} bytes; at most {MAX_HEADER_BYTES})"),
        )
        .into_response();
    }
    next.run(req).await
}
