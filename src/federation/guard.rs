//! The mTLS guard: a tower layer (axum `from_fn_with_state`) on `/api/federation/v1/*`.
//!
//! rustls has already verified the client certificate chain against the gateway CA during the
//! handshake, and the accept loop parsed the leaf's identity extensions once for the connection
//! ([`crate::tls::ConnectionInfo::peer_identity`]). Per request, the guard:
//! 1. requires that identity: no certificate, or missing / duplicated / malformed OIDs → 401;
//! 2. loads grant and peer in one query and requires grant `active` and unexpired, peer
//!    `active`, certificate serial = the peer's current serial (or the previous one inside its
//!    grace period), and certificate subject = the grant's subject. The database values are the
//!    ones used, so a revocation bites on the very next request on every replica.
//!
//! Every 403 carries the same generic message, so a caller cannot enumerate grants; the
//! specific reason goes to the log and the audit row.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::FederationContext;
use super::audit::AuditEntry;
use super::scope::GrantScope;
use crate::app::AppState;
use crate::http::error::ApiError;
use crate::tls::ConnectionInfo;

/// The one message every federation 403 carries.
pub const FORBIDDEN_MESSAGE: &str = "Access denied";

#[derive(sqlx::FromRow)]
struct GrantPeerRow {
    status: String,
    expires_at: Option<DateTime<Utc>>,
    subject_user_id: Option<Uuid>,
    scope: serde_json::Value,
    scope_version: i32,
    peer_id: Uuid,
    peer_state: String,
    current_serial: Option<String>,
    previous_serial: Option<String>,
    previous_serial_grace_until: Option<DateTime<Utc>>,
    subject_active: bool,
    subject_teams: Vec<Uuid>,
}

/// The guard middleware.
pub async fn require_peer(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let identity = req.extensions().get::<ConnectionInfo>().and_then(|c| c.peer_identity.clone());
    let identity = match identity {
        Some(Ok(identity)) => identity,
        Some(Err(e)) => {
            tracing::info!(reason = %e, "federation request with an unusable client certificate");
            deny_audit(&state, None, None, None, "identity", e.to_string(), req.uri().path());
            return ApiError::unauthorized("A client certificate with grant and subject extensions is required")
                .into_response();
        }
        None => {
            return ApiError::unauthorized("A client certificate issued at enrollment is required").into_response();
        }
    };

    let row: Result<Option<GrantPeerRow>, sqlx::Error> = sqlx::query_as(
        "select g.status, g.expires_at, g.subject_user_id, g.scope, g.scope_version, g.peer_id,
                p.state as peer_state, p.current_serial, p.previous_serial, p.previous_serial_grace_until,
                coalesce(u.disabled_at is null, false) as subject_active,
                coalesce(array(select m.team_id from team_members m where m.user_id = g.subject_user_id), '{}') as subject_teams
         from federation_grants g
         join federation_peers p on p.id = g.peer_id
         left join users u on u.id = g.subject_user_id
         where g.id = $1",
    )
    .bind(identity.grant_id)
    .fetch_optional(&state.pool)
    .await;
    let row = match row {
        Ok(row) => row,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let now = Utc::now();
    let denial = match &row {
        None => Some("unknown grant"),
        Some(r) if r.status != "active" => Some("grant is not active"),
        Some(r) if r.expires_at.is_some_and(|e| e <= now) => Some("grant has expired"),
        Some(r) if r.peer_state != "active" => Some("peer is not active"),
        Some(r) if r.subject_user_id != Some(identity.subject_user_id) => {
            Some("certificate subject does not match the grant")
        }
        Some(r) => {
            let current = r.current_serial.as_deref() == Some(identity.serial.as_str());
            let previous = r.previous_serial.as_deref() == Some(identity.serial.as_str())
                && r.previous_serial_grace_until.is_some_and(|g| g > now);
            if current || previous { None } else { Some("certificate serial is not current") }
        }
    };
    let peer_id = row.as_ref().map(|r| r.peer_id);
    if let Some(reason) = denial {
        tracing::warn!(grant_id = %identity.grant_id, reason, "federation request denied");
        deny_audit(
            &state,
            Some(identity.grant_id),
            peer_id,
            Some(identity.subject_user_id),
            "guard",
            reason.to_string(),
            req.uri().path(),
        );
        return ApiError::forbidden(FORBIDDEN_MESSAGE).into_response();
    }
    let row = row.expect("denial covers the missing row");
    let scope = match serde_json::from_value::<GrantScope>(row.scope) {
        Ok(scope) => scope,
        Err(e) => {
            tracing::error!(grant_id = %identity.grant_id, error = %e, "stored grant scope does not parse");
            deny_audit(
                &state,
                Some(identity.grant_id),
                peer_id,
                Some(identity.subject_user_id),
                "scope_parse",
                e.to_string(),
                req.uri().path(),
            );
            return ApiError::forbidden(FORBIDDEN_MESSAGE).into_response();
        }
    };
    req.extensions_mut().insert(FederationContext {
        grant_id: identity.grant_id,
        peer_id: row.peer_id,
        subject_user_id: identity.subject_user_id,
        scope,
        scope_version: row.scope_version,
        subject_active: row.subject_active,
        subject_teams: row.subject_teams,
    });
    next.run(req).await
}

/// Records a denial off the request path.
fn deny_audit(
    state: &AppState,
    grant_id: Option<Uuid>,
    peer_id: Option<Uuid>,
    subject_user_id: Option<Uuid>,
    deny_code: &'static str,
    reason: String,
    path: &str,
) {
    let verb = path.trim_start_matches("/api/federation/v1/").split('/').next().unwrap_or("");
    state.audit.submit(&AuditEntry {
        grant_id,
        peer_id,
        subject_user_id,
        verb,
        outcome: "denied",
        deny_code: Some(deny_code),
        reason: Some(reason),
        ..Default::default()
    });
}
