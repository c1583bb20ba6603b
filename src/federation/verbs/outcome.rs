//! What a verb call leaves behind: its audit row ([`Outcome`], [`audit_verb`]) and, for a scope
//! denial, the wire answer ([`denial_response`]), shared by `list`, `get` and `search`.

use super::super::FederationContext;
use super::super::audit::AuditEntry;
use super::super::scope::{Denial, DenyCode};
use crate::app::AppState;
use crate::http::error::ApiError;

/// Turns a scope denial into the wire response: 400 for malformed requests, otherwise the one
/// generic 403. The specific reason is logged and audited.
pub fn denial_response(state: &AppState, ctx: &FederationContext, verb: &str, resource: &str, d: &Denial) -> ApiError {
    tracing::info!(grant_id = %ctx.grant_id, verb, resource, code = d.code.as_str(), stage = d.code.stage(), reason = %d.reason, "federation request denied by scope");
    let o = Outcome {
        outcome: "denied",
        deny_code: Some(d.code.as_str()),
        reason: Some(d.reason.clone()),
        ..Default::default()
    };
    // Only a resource name this gateway knows is stored as the row's resource; an unknown one
    // (any text a peer put in the path) is named, escaped and bounded, in the reason alone.
    let known = (d.code != DenyCode::InvalidResource).then_some(resource);
    audit_verb(state, ctx, verb, known, o);
    match d.code {
        DenyCode::InvalidLimit => ApiError::invalid_field("limit", "limit must be a positive integer"),
        DenyCode::InvalidResource => ApiError::invalid_field(
            "resource",
            format!("Unknown resource {:?}", super::super::audit::clean(resource, 64)),
        ),
        // Mosaic's FederationScopeViolationError: its own code, the one generic message.
        _ => ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            crate::http::error::ErrorCode::ScopeViolation,
            super::super::guard::FORBIDDEN_MESSAGE,
        ),
    }
}

/// What one verb call leaves in the audit log.
#[derive(Default)]
pub struct Outcome {
    pub outcome: &'static str,
    pub deny_code: Option<&'static str>,
    pub reason: Option<String>,
    pub query_hash: Option<String>,
    pub rows: Option<i32>,
    pub bytes_out: Option<i64>,
    pub latency_ms: Option<f64>,
}

pub fn audit_verb(state: &AppState, ctx: &FederationContext, verb: &str, resource: Option<&str>, o: Outcome) {
    state.audit.submit(&AuditEntry {
        grant_id: Some(ctx.grant_id),
        peer_id: Some(ctx.peer_id),
        subject_user_id: Some(ctx.subject_user_id),
        verb,
        resource,
        query_hash: o.query_hash,
        outcome: o.outcome,
        deny_code: o.deny_code,
        reason: o.reason,
        rows: o.rows,
        bytes_out: o.bytes_out,
        latency_ms: o.latency_ms,
    });
}
