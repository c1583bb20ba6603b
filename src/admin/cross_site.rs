//! Cookie sessions refuse cross-site writes (DESIGN §9).
//!
//! A browser attaches the session cookie by itself, so a page on another site can make an
//! admin's browser send a request that carries it. `SameSite=Strict` keeps the cookie off most of
//! those, but not all (a sibling subdomain is the "same site"; old browsers ignore the
//! attribute), so a state-changing request (any method but GET, HEAD and OPTIONS) authenticated by
//! the cookie must also pass checks whose inputs a cross-site page cannot forge:
//! 1. `Sec-Fetch-Site`, when sent, is `same-origin` or `none` (the user's own navigation);
//! 2. `Origin`, when sent, is this gateway's own origin: `https://` and the request's `Host`, or
//!    the configured public URL;
//! 3. the request is not one a page may send cross-origin without a CORS preflight (which this
//!    gateway never grants): it has `Content-Type: application/json`, or no body and the header
//!    [`CSRF_HEADER`]. Form, multipart and text content types are refused.
//!
//! Failures are 403 `forbidden` with a message naming the check. Bearer tokens are never attached
//! by a browser on its own, so token calls skip all of this; sign-in (no cookie yet) gets checks 1
//! and 2, and its JSON body already rules out a form.

use axum::http::{HeaderMap, Method, Uri, header};

use crate::http::error::ApiError;

/// The header a cookie-authenticated write without a JSON body must carry (any non-empty value).
/// Browsers let a page add it cross-origin only after a CORS preflight.
pub const CSRF_HEADER: &str = "X-Requested-With";

/// Refuses a state-changing, cookie-authenticated request that could come from another site.
///
/// # Errors
/// 403 `forbidden` naming the failed check.
pub fn refuse_cross_site_write(
    method: &Method,
    headers: &HeaderMap,
    uri: &Uri,
    public_url: &str,
) -> Result<(), ApiError> {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(());
    }
    refuse_foreign_origin(headers, uri, public_url)?;
    refuse_simple_request(headers)
}

/// Checks 1 and 2: `Sec-Fetch-Site` and `Origin`, each when present.
///
/// # Errors
/// 403 `forbidden` naming the header.
pub fn refuse_foreign_origin(headers: &HeaderMap, uri: &Uri, public_url: &str) -> Result<(), ApiError> {
    if let Some(site) = headers.get("sec-fetch-site") {
        let site = site.to_str().unwrap_or("").trim().to_ascii_lowercase();
        if site != "same-origin" && site != "none" {
            return Err(ApiError::forbidden(format!(
                "Cross-site request refused: Sec-Fetch-Site is '{}'; a session cookie only authorizes \
                 changes made from this gateway's own origin (or use a bearer token)",
                shorten(&site)
            )));
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        let sent = reqwest::Url::parse(origin).ok().map(|u| u.origin());
        let host =
            headers.get(header::HOST).and_then(|h| h.to_str().ok()).or_else(|| uri.authority().map(|a| a.as_str()));
        let own = [host.map(|h| format!("https://{h}")), Some(public_url.to_string())];
        let matches = sent.is_some_and(|sent| {
            own.iter().flatten().filter_map(|o| reqwest::Url::parse(o).ok()).any(|o| o.origin() == sent)
        });
        if !matches {
            return Err(ApiError::forbidden(format!(
                "Cross-site request refused: Origin '{}' is not this gateway's origin; a session cookie only \
                 authorizes changes made from this gateway's own pages (or use a bearer token)",
                shorten(origin)
            )));
        }
    }
    Ok(())
}

/// Check 3: JSON, or no body and [`CSRF_HEADER`].
fn refuse_simple_request(headers: &HeaderMap) -> Result<(), ApiError> {
    match headers.get(header::CONTENT_TYPE) {
        Some(value) => {
            let value = value.to_str().unwrap_or("");
            let essence = value.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
            let json =
                essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"));
            if json {
                Ok(())
            } else {
                Err(ApiError::forbidden(format!(
                    "Cross-site request refused: content type '{}' is what a page on another site can send; \
                     requests authenticated by the session cookie must send JSON (Content-Type: application/json)",
                    shorten(&essence)
                )))
            }
        }
        None if headers.get(CSRF_HEADER).is_some_and(|v| !v.is_empty()) => Ok(()),
        None => Err(ApiError::forbidden(format!(
            "Cross-site request refused: a request authenticated by the session cookie that changes state must \
             send JSON (Content-Type: application/json) or the {CSRF_HEADER} header"
        ))),
    }
}

/// A header value as quoted back in a message: short and printable.
fn shorten(value: &str) -> String {
    value.chars().filter(|c| !c.is_control()).take(100).collect()
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    const PUBLIC: &str = "https://gw.example:8443";

    fn check(method: Method, pairs: &[(&'static str, &'static str)]) -> Result<(), String> {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("localhost:9443"));
        for (k, v) in pairs {
            headers.insert(*k, HeaderValue::from_static(v));
        }
        let uri: Uri = "/api/admin/queues/diag/pause".parse().unwrap();
        refuse_cross_site_write(&method, &headers, &uri, PUBLIC).map_err(|e| {
            assert_eq!(e.status(), axum::http::StatusCode::FORBIDDEN);
            e.message().to_string()
        })
    }

    const JSON: (&str, &str) = ("content-type", "application/json");

    #[test]
    fn reads_are_never_refused() {
        let evil = [("origin", "https://evil.example"), ("sec-fetch-site", "cross-site")];
        for m in [Method::GET, Method::HEAD, Method::OPTIONS] {
            assert_eq!(check(m, &evil), Ok(()));
        }
    }

    #[test]
    fn same_origin_json_and_custom_header_writes_pass() {
        assert_eq!(check(Method::POST, &[JSON]), Ok(()));
        assert_eq!(check(Method::POST, &[("content-type", "application/json; charset=utf-8")]), Ok(()));
        assert_eq!(check(Method::POST, &[("content-type", "application/merge-patch+json")]), Ok(()));
        assert_eq!(check(Method::DELETE, &[("x-requested-with", "XMLHttpRequest")]), Ok(()));
        let own = [("origin", "https://localhost:9443"), ("sec-fetch-site", "same-origin"), JSON];
        assert_eq!(check(Method::POST, &own), Ok(()));
        assert_eq!(check(Method::PUT, &[("origin", "https://LOCALHOST:9443"), JSON]), Ok(()));
        assert_eq!(check(Method::POST, &[("origin", PUBLIC), JSON]), Ok(()), "the configured public URL");
        assert_eq!(check(Method::POST, &[("sec-fetch-site", "none"), JSON]), Ok(()));
    }

    #[test]
    fn foreign_origins_are_refused() {
        for origin in ["https://evil.example", "http://localhost:9443", "https://localhost:9444", "null", ""] {
            let e = check(Method::POST, &[("origin", origin), JSON]).unwrap_err();
            assert!(e.contains("Origin"), "{origin}: {e}");
        }
        for site in ["cross-site", "same-site", "bogus"] {
            let e = check(Method::POST, &[("sec-fetch-site", site), JSON]).unwrap_err();
            assert!(e.contains("Sec-Fetch-Site"), "{site}: {e}");
        }
    }

    #[test]
    fn what_a_form_can_send_is_refused() {
        for ct in ["application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "text/plain"] {
            let e = check(Method::POST, &[("content-type", ct), ("x-requested-with", "x")]).unwrap_err();
            assert!(e.contains("content type"), "{ct}: {e}");
        }
        let e = check(Method::POST, &[]).unwrap_err();
        assert!(e.contains(CSRF_HEADER), "{e}");
        assert!(check(Method::DELETE, &[("x-requested-with", "")]).is_err());
    }
}
