//! The one error type at the HTTP boundary and its JSON envelope (DESIGN §5):
//! `{"error": {"code": "...", "message": "...", "details"?: {...}}}`.
//!
//! Handlers return `Result<_, ApiError>`. Anything that is not deliberately mapped (a database
//! error, an `anyhow` chain) becomes `500 internal` with a fixed message, and its cause is logged
//! here, in one place, so a forgotten `?` can never leak SQL or become an unlogged 500.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::error::{DomainError, Fault};

/// The stable, machine-readable error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    Unauthorized,
    Forbidden,
    NotFound,
    Gone,
    InvalidRequest,
    ScopeViolation,
    RateLimited,
    Conflict,
    Internal,
}

/// The error envelope every non-2xx JSON response uses.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorEnvelope {
    pub error: ErrorBody,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub code: ErrorCode,
    /// Human-readable; never contains secrets, SQL or stack traces.
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub details: Option<Value>,
}

/// An error on its way to the client.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: ErrorCode,
    message: String,
    details: Option<Value>,
    retry_after_secs: Option<u64>,
    /// The internal cause, logged but never sent.
    cause: Option<anyhow::Error>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), details: None, retry_after_secs: None, cause: None }
    }

    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidRequest, message)
    }

    /// A 400 that names the offending field in `details.field`.
    pub fn invalid_field(field: &str, message: impl Into<String>) -> Self {
        Self::invalid_request(message).with_details(serde_json::json!({ "field": field }))
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, ErrorCode::Forbidden, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, message)
    }

    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(StatusCode::GONE, ErrorCode::Gone, message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, ErrorCode::Conflict, message)
    }

    pub fn rate_limited(retry_after_secs: u64) -> Self {
        let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, ErrorCode::RateLimited, "Too many requests; retry later");
        e.retry_after_secs = Some(retry_after_secs.max(1));
        e
    }

    /// A 503 (code `internal`) with `Retry-After`: a dependency such as Valkey is down and the
    /// request is refused rather than served without its safeguards.
    pub fn unavailable(message: impl Into<String>, retry_after_secs: u64) -> Self {
        let mut e = Self::new(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Internal, message);
        e.retry_after_secs = Some(retry_after_secs.max(1));
        e
    }

    /// A 500 whose cause is logged but not shown.
    pub fn internal(cause: impl Into<anyhow::Error>) -> Self {
        let mut e = Self::new(StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal, "Internal server error");
        e.cause = Some(cause.into());
        e
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn code(&self) -> ErrorCode {
        self.code
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        Self::internal(e)
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        Self::internal(e)
    }
}

/// A domain error becomes the envelope its [`Fault`] names: the message is the error's
/// `Display`, `details.field` the field; an internal fault is a bare 500 with the cause logged.
impl<E: DomainError> From<E> for ApiError {
    fn from(e: E) -> Self {
        let message = e.to_string();
        let details = e.details();
        let (mut error, field) = match e.fault() {
            Fault::Invalid { field } => (Self::invalid_request(message), field),
            Fault::NotFound { field } => (Self::not_found(message), field),
            Fault::Conflict { field } => (Self::conflict(message), field),
            Fault::Forbidden => (Self::forbidden(message), None),
            Fault::Gone => (Self::gone(message), None),
            Fault::Unavailable { retry_after_secs } => (Self::unavailable(message, retry_after_secs), None),
            Fault::Internal => return Self::internal(anyhow::Error::new(e)),
        };
        if let Some(details) = details {
            error = error.with_details(details);
        } else if let Some(field) = field.filter(|f| !f.is_empty()) {
            error = error.with_details(serde_json::json!({ "field": field }));
        }
        error
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Some(cause) = &self.cause {
            tracing::error!(error = format!("{cause:#}"), status = self.status.as_u16(), "request failed");
        }
        let body = ErrorEnvelope { error: ErrorBody { code: self.code, message: self.message, details: self.details } };
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after_secs
            && let Ok(v) = HeaderValue::from_str(&secs.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        response
    }
}

/// The router's fallback: unknown routes get the envelope, not an empty 404.
pub async fn not_found_fallback() -> ApiError {
    ApiError::not_found("No such route")
}

/// Wrong method on a known route.
pub async fn method_not_allowed_fallback() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, ErrorCode::InvalidRequest, "Method not allowed on this route")
}

/// Turns a handler panic into a 500 envelope (the panic message is logged, not sent).
pub fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let detail = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    ApiError::internal(anyhow::anyhow!("handler panicked: {detail}")).into_response()
}
