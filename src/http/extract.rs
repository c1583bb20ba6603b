//! Extractor wrappers whose rejections use the error envelope.
//!
//! axum's own `Json`, `Path` and `Query` reject with plain-text bodies. These wrappers delegate to
//! them and turn the rejection into a `400 invalid_request` (or 413/415 with the same envelope), so
//! a malformed body never gets a response shape clients do not expect.
//!
//! They also refuse the NUL character (U+0000) in every string they hand on: a JSON string or
//! key, a path parameter, a query parameter name or value. Postgres cannot store NUL in `text` or
//! `jsonb`, so such a value would otherwise reach the database and come back as a 500 (and an
//! `ERROR` in its log). Checking here, once, covers every handler; the few that read a raw body
//! call [`reject_nul_in_json`] themselves. The 400 names the field by its JSON path (`name`,
//! `items[2].title`) in `details.field`, like [`ApiError::invalid_field`] elsewhere.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection, MissingJsonContentType, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, RawPathParams, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

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
        // axum's `Json` in three steps, so that the NUL check sees the bytes before serde does:
        // the same content-type rule, the same body limit, the same deserialiser.
        if !json_content_type(req.headers()) {
            return Err(json_rejection(&JsonRejection::MissingJsonContentType(MissingJsonContentType::default())));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|e| bytes_rejection(&e))?;
        reject_nul_in_json(&bytes)?;
        match axum::Json::<T>::from_bytes(&bytes) {
            Ok(axum::Json(v)) => Ok(Self(v)),
            Err(rejection) => Err(json_rejection(&rejection)),
        }
    }
}

/// `application/json` or any `application/*+json`, exactly as axum's `Json` decides.
fn json_content_type(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<mime::Mime>().ok())
        .is_some_and(|m| {
            m.type_() == "application" && (m.subtype() == "json" || m.suffix().is_some_and(|s| s == "json"))
        })
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
        // The raw (percent-decoded) parameters first: a `%00` is refused by name whatever type
        // the handler asks for.
        if let Ok(raw) = RawPathParams::from_request_parts(parts, state).await
            && let Some((name, _)) = raw.iter().find(|(_, value)| value.contains('\0'))
        {
            return Err(nul_error(name));
        }
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
        reject_nul_in_query(&parts.uri)?;
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Self(v)),
            Err(QueryRejection::FailedToDeserializeQueryString(e)) => {
                let text = e.body_text();
                let error = ApiError::invalid_request(format!("Invalid query string: {text}"));
                // serde names the parameter first (`grantId: UUID parsing failed ...`).
                let field = text
                    .strip_prefix("Failed to deserialize query string: ")
                    .and_then(|rest| rest.split_once(": "))
                    .map(|(field, _)| field)
                    .filter(|f| {
                        !f.is_empty() && f.len() <= 64 && f.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    });
                Err(match field {
                    Some(field) => error.with_details(serde_json::json!({ "field": field })),
                    None => error,
                })
            }
            Err(_) => Err(ApiError::invalid_request("Invalid query string")),
        }
    }
}

/// A query string may carry NUL only as `%00` (a URI cannot hold the raw byte), so only a query
/// with that sequence is decoded pair by pair to name the parameter.
fn reject_nul_in_query(uri: &axum::http::Uri) -> Result<(), ApiError> {
    if !uri.query().is_some_and(|q| q.contains("%00")) {
        return Ok(());
    }
    let Ok(axum::extract::Query(pairs)) = axum::extract::Query::<Vec<(String, String)>>::try_from_uri(uri) else {
        return Ok(()); // not a query string at all: the typed parse reports it
    };
    match pairs.iter().find(|(name, value)| name.contains('\0') || value.contains('\0')) {
        Some((name, _)) if name.contains('\0') => Err(nul_error(&quoted(name))),
        Some((name, _)) => Err(nul_error(name)),
        None => Ok(()),
    }
}

/// Refuses a JSON document with U+0000 in any string or object key, naming where it is.
///
/// # Errors
/// 400 `invalid_request` with the JSON path in `details.field` (none when the whole document is
/// the string). A malformed document passes: the typed parse that follows reports it.
pub fn reject_nul_in_json(raw: &[u8]) -> Result<(), ApiError> {
    match nul_in_json(raw) {
        None => Ok(()),
        Some(path) if path.is_empty() => {
            Err(ApiError::invalid_request("The request body must not contain the NUL character (U+0000)"))
        }
        Some(path) => Err(nul_error(&path)),
    }
}

/// The JSON path (`name`, `items[2].title`, `value["a b"]`) of the first string or key of `raw`
/// that holds U+0000; `Some("")` when the document is itself such a string.
///
/// Inside JSON a NUL can only be written as the escape `\u0000` (a raw control byte is a syntax
/// error), so the documents without that sequence, nearly all of them, skip the second parse.
pub fn nul_in_json(raw: &[u8]) -> Option<String> {
    if !raw.windows(6).any(|w| w == br"\u0000") {
        return None;
    }
    // The sequence may be an escaped backslash followed by `u0000`: only the parse can tell.
    let value: Value = serde_json::from_slice(raw).ok()?;
    let mut path = String::new();
    find_nul(&value, &mut path).then_some(path)
}

/// Depth-first; `path` holds the path of `value` and, on `true`, of the NUL found under it.
/// (serde_json refuses documents nested deeper than 128, which bounds the recursion.)
fn find_nul(value: &Value, path: &mut String) -> bool {
    let len = path.len();
    match value {
        Value::String(s) => return s.contains('\0'),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                path.push_str(&format!("[{i}]"));
                if find_nul(item, path) {
                    return true;
                }
                path.truncate(len);
            }
        }
        Value::Object(map) => {
            for (key, item) in map {
                push_key(path, key);
                if key.contains('\0') || find_nul(item, path) {
                    return true;
                }
                path.truncate(len);
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
    false
}

/// `.key` for a plain key (no dot at the start of the path), `["..."]` for any other, so that a
/// key holding `.`, `[`, spaces or NUL still names one field unambiguously.
fn push_key(path: &mut String, key: &str) {
    let plain = !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !plain {
        path.push_str(&quoted(key));
        return;
    }
    if !path.is_empty() {
        path.push('.');
    }
    path.push_str(key);
}

/// `["..."]` with JSON escapes, so a NUL in a key shows as `\u0000` rather than raw.
fn quoted(key: &str) -> String {
    format!("[{}]", serde_json::to_string(key).unwrap_or_default())
}

fn nul_error(field: &str) -> ApiError {
    ApiError::invalid_field(field, format!("{field} must not contain the NUL character (U+0000)"))
}

/// serde helpers for integer fields of request bodies: JSON has one number type, so `36.0` is
/// the integer 36 (as JSON Schema and JavaScript see it); a fraction, or a value out of the
/// field's range, is refused by serde with the field's name.
pub mod integer {
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer};

    fn from_number<E: serde::de::Error, T: TryFrom<i64>>(n: &serde_json::Number) -> Result<T, E> {
        let whole = n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.is_finite() && f.fract() == 0.0 && f.abs() < 9.0e15).map(|f| f as i64));
        let whole = whole.ok_or_else(|| E::custom(format!("expected an integer, got {n}")))?;
        T::try_from(whole).map_err(|_| E::custom(format!("{n} is out of range")))
    }

    /// For a required integer field: `#[serde(deserialize_with = "integer::required")]`.
    ///
    /// # Errors
    /// Not a number, a fraction, or out of `T`'s range.
    pub fn required<'de, D: Deserializer<'de>, T: TryFrom<i64>>(d: D) -> Result<T, D::Error> {
        from_number(&serde_json::Number::deserialize(d)?)
    }

    /// For an optional one: `#[serde(default, deserialize_with = "integer::optional")]`.
    ///
    /// # Errors
    /// As [`required`]; `null` is `None`.
    pub fn optional<'de, D: Deserializer<'de>, T: TryFrom<i64>>(d: D) -> Result<Option<T>, D::Error> {
        match Option::<serde_json::Value>::deserialize(d)? {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::Number(n)) => from_number(&n).map(Some),
            Some(other) => Err(D::Error::custom(format!("expected an integer, got {other}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nul(json: &str) -> Option<String> {
        nul_in_json(json.as_bytes())
    }

    #[test]
    fn the_path_names_the_field_holding_the_nul() {
        assert_eq!(nul(r#"{"name": "a\u0000b"}"#).as_deref(), Some("name"));
        assert_eq!(nul(r#"{"items": [{"title": "x"}, {}, {"title": "\u0000"}]}"#).as_deref(), Some("items[2].title"));
        assert_eq!(nul(r#"{"value": {"deep": [1, [null, "\u0000"]]}}"#).as_deref(), Some("value.deep[1][1]"));
        assert_eq!(nul(r#"[0, {"a": "\u0000"}]"#).as_deref(), Some("[1].a"));
        assert_eq!(nul(r#""\u0000""#).as_deref(), Some(""));
    }

    #[test]
    fn keys_are_checked_and_quoted_when_not_plain() {
        assert_eq!(nul(r#"{"value": {"k\u0000": 1}}"#).as_deref(), Some(r#"value["k\u0000"]"#));
        assert_eq!(nul(r#"{"a.b": {"c d": "\u0000"}}"#).as_deref(), Some(r#"["a.b"]["c d"]"#));
        assert_eq!(nul(r#"{"": "\u0000"}"#).as_deref(), Some(r#"[""]"#));
    }

    #[test]
    fn documents_without_a_nul_pass() {
        for ok in [
            r#"{"name": "plain"}"#,
            // An escaped backslash followed by the letters u0000 is six characters, not a NUL.
            r#"{"name": "\\u0000"}"#,
            r#"{"name": "\u0010 \u1000 u0000"}"#,
            // Malformed: left to the typed parse, which says why.
            r#"{"name": "\u0000""#,
            "",
        ] {
            assert_eq!(nul(ok), None, "{ok}");
        }
        assert_eq!(nul(r#"{"a": "\\\u0000"}"#).as_deref(), Some("a"), "backslash, then a real NUL");
    }

    #[test]
    fn the_error_names_the_field_in_the_envelope() {
        let e = reject_nul_in_json(br#"{"items": [{"title": "\u0000"}]}"#).unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert!(e.message().contains("items[0].title"), "{}", e.message());
        let e = reject_nul_in_json(br#""\u0000""#).unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
    }

    #[derive(Debug, serde::Deserialize)]
    struct Ints {
        #[serde(deserialize_with = "integer::required")]
        a: u32,
        #[serde(default, deserialize_with = "integer::optional")]
        b: Option<i64>,
    }

    #[test]
    fn integers_may_be_written_with_a_zero_fraction() {
        let v: Ints = serde_json::from_str(r#"{"a": 36.0, "b": 150}"#).unwrap();
        assert_eq!((v.a, v.b), (36, Some(150)));
        let v: Ints = serde_json::from_str(r#"{"a": 1}"#).unwrap();
        assert_eq!(v.b, None);
        let v: Ints = serde_json::from_str(r#"{"a": 1, "b": null}"#).unwrap();
        assert_eq!(v.b, None);
        for bad in [r#"{"a": 1.5}"#, r#"{"a": -1}"#, r#"{"a": 4294967296}"#, r#"{"a": "1"}"#, r#"{"a": 1, "b": 1e300}"#]
        {
            assert!(serde_json::from_str::<Ints>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn query_parameters_are_named_by_their_name() {
        let uri = |q: &str| format!("/x?{q}").parse::<axum::http::Uri>().unwrap();
        assert!(reject_nul_in_query(&uri("status=active&limit=5")).is_ok());
        assert!(reject_nul_in_query(&uri("status=%2500")).is_ok(), "an encoded percent sign, then 00");
        let e = reject_nul_in_query(&uri("limit=5&status=a%00b")).unwrap_err();
        assert!(e.message().starts_with("status "), "{}", e.message());
        let e = reject_nul_in_query(&uri("st%00=1")).unwrap_err();
        assert!(e.message().starts_with(r#"["st\u0000"] "#), "{}", e.message());
    }
}
