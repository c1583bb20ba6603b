//! Extractor wrappers whose rejections use the error envelope.
//!
//! axum's own `Json`, `Path` and `Query` reject with plain-text bodies. These wrappers delegate to
//! them and turn the rejection into a `400 invalid_request` (or 413/415 with the same envelope), so
//! a malformed body never gets a response shape clients do not expect.

use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::error::{ApiError, ErrorCode};

/// JSON body extractor and responder.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Self(v)),
            Err(rejection) => Err(json_rejection(&rejection)),
        }
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

fn json_rejection(rejection: &JsonRejection) -> ApiError {
    let status = rejection.status();
    let message = match rejection {
        JsonRejection::JsonDataError(e) => format!("Invalid request body: {}", e.body_text()),
        JsonRejection::JsonSyntaxError(_) => "Request body is not valid JSON".to_string(),
        JsonRejection::MissingJsonContentType(_) => "Expected Content-Type: application/json".to_string(),
        _ => "Request body could not be read".to_string(),
    };
    let message = trim_serde_prefix(&message);
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => body_too_large(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::new(status, ErrorCode::InvalidRequest, message),
        _ => ApiError::invalid_request(message),
    }
}

fn body_too_large() -> ApiError {
    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::InvalidRequest, "Request body too large")
}

/// The envelope for a raw body (`Bytes`) that could not be read: 413 when over the limit,
/// otherwise the rejection's own status, with a message that carries no internals.
pub fn bytes_rejection(rejection: &BytesRejection) -> ApiError {
    match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => body_too_large(),
        status => ApiError::new(status, ErrorCode::InvalidRequest, "Request body could not be read"),
    }
}

/// axum prefixes serde messages with "Failed to deserialize the JSON body into the target type: ";
/// the field-level part after it is what a client needs.
fn trim_serde_prefix(message: &str) -> String {
    message.replace("Failed to deserialize the JSON body into the target type: ", "")
}

/// Path parameters extractor.
#[derive(Debug)]
pub struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Self(v)),
            Err(PathRejection::FailedToDeserializePathParams(e)) => {
                Err(ApiError::invalid_request(format!("Invalid path parameter: {}", e.body_text())))
            }
            Err(_) => Err(ApiError::invalid_request("Invalid path parameters")),
        }
    }
}

/// Query-string extractor.
#[derive(Debug)]
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Self(v)),
            Err(QueryRejection::FailedToDeserializeQueryString(e)) => {
                Err(ApiError::invalid_request(format!("Invalid query string: {}", e.body_text())))
            }
            Err(_) => Err(ApiError::invalid_request("Invalid query string")),
        }
    }
}
