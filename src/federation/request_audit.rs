//! The outermost federation layer: every request under `/api/federation/v1/` that reaches HTTP
//! leaves exactly one audit row.
//!
//! The guard and the verbs write the specific row (with the grant's peer, the resource, the
//! rows served, the exact deny code). A request that ends without one gets a row here, derived
//! from its status: a 401 without a client certificate, a malformed body or cursor probe
//! answered 400, an unknown route, a body too large, `capabilities`. The identity is taken from
//! the certificate when it parsed (grant and subject), so probing by a known peer is attributed.
//!
//! It wraps the whole router (not only the verb routes), so unknown paths and methods under the
//! prefix, answered by the router's fallbacks, are audited too.

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;

use super::audit::{AuditEntry, clean, tracking_audit};
use crate::app::AppState;
use crate::tls::ConnectionInfo;

/// The peer-facing routes this layer audits.
pub const PREFIX: &str = "/api/federation/v1/";

/// The verbs that may appear in an audit row; anything else is stored as `unknown`.
const VERBS: [&str; 5] = ["list", "get", "search", "capabilities", "renew"];

/// The verb a federation path names, from a fixed list, so no path text reaches the `verb`
/// column.
pub fn verb_of(path: &str) -> &'static str {
    let first = path.strip_prefix(PREFIX).unwrap_or("").split('/').next().unwrap_or("");
    VERBS.iter().find(|v| **v == first).copied().unwrap_or("unknown")
}

/// The deny code of a request that no verb or guard audited, from its status.
pub fn deny_code_for(status: StatusCode) -> Option<&'static str> {
    Some(match status.as_u16() {
        200..=399 => return None,
        400 => "invalid_request",
        401 => "no_certificate",
        403 => "forbidden",
        404 => "unknown_route",
        405 => "method_not_allowed",
        413 => "payload_too_large",
        415 => "unsupported_media_type",
        429 => "rate_limited",
        431 => "headers_too_large",
        500..=599 => "internal",
        _ => "invalid_request",
    })
}

/// The middleware (see the module docs).
pub async fn one_row_per_request(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if !req.uri().path().starts_with(PREFIX) {
        return next.run(req).await;
    }
    let verb = verb_of(req.uri().path());
    let what = clean(&format!("{} {}", req.method(), req.uri().path()), 200);
    let identity = req.extensions().get::<ConnectionInfo>().and_then(|c| c.peer_identity.clone()).and_then(Result::ok);
    let (response, audited) = tracking_audit(next.run(req)).await;
    if !audited {
        let status = response.status();
        let deny_code = deny_code_for(status);
        state.audit.submit(&AuditEntry {
            grant_id: identity.as_ref().map(|i| i.grant_id),
            subject_user_id: identity.as_ref().map(|i| i.subject_user_id),
            verb,
            outcome: if deny_code.is_some() { "denied" } else { "allowed" },
            deny_code,
            reason: Some(format!("{} for {what}", status.as_u16())),
            ..Default::default()
        });
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs_come_from_a_fixed_list() {
        assert_eq!(verb_of("/api/federation/v1/list/tasks"), "list");
        assert_eq!(verb_of("/api/federation/v1/capabilities"), "capabilities");
        assert_eq!(verb_of("/api/federation/v1/list%00/tasks"), "unknown");
        assert_eq!(verb_of("/api/federation/v1/"), "unknown");
    }

    #[test]
    fn every_error_status_has_a_deny_code() {
        assert_eq!(deny_code_for(StatusCode::OK), None);
        assert_eq!(deny_code_for(StatusCode::UNAUTHORIZED), Some("no_certificate"));
        assert_eq!(deny_code_for(StatusCode::IM_A_TEAPOT), Some("invalid_request"));
        assert_eq!(deny_code_for(StatusCode::BAD_GATEWAY), Some("internal"));
    }
}
