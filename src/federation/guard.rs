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
//! 3. counts the request against the grant's rate limit (DESIGN §5): the grant's own
//!    `rate_per_minute`, else `TESSERA_FEDERATION_RATE_PER_MINUTE` (600), per minute. The limiter
//!    is in process in tiers local/standalone and in Valkey in tier federated, so replicas share
//!    one budget. Over budget → 429 `rate_limited` with `Retry-After` and one denied audit row
//!    (deny code `rate_limited`). Limiter unavailable (Valkey down) → 503 envelope: fail closed,
//!    never serve without limits.
//!
//! Every 403 carries the same generic message, so a caller cannot enumerate grants; the
//! specific reason goes to the log and the audit row.
//!
//! **No grant cache, on purpose.** DESIGN §5 allows a short-lived grant/peer cache, provided
//! revocation and scope edits bite on the very next request on every replica. Grants change
//! through several paths that cannot all notify Valkey: the admin API, the `tessera grant` CLI
//! writing to the database directly, and a database trigger that revokes every grant of a
//! disabled or deleted user. A cache would therefore still have to read a version from the
//! database on every request to be correct, which is the cost of the query it would save; and
//! any "DB committed, Valkey bump failed" window would serve a revoked grant. The guard instead
//! reads grant, peer and subject in one indexed query per request, which is correct by
//! construction on every replica and tier. The rate limit is the only per-request Valkey trip.

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
use crate::ratelimit::Decision;
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
    rate_per_minute: Option<i32>,
}

/// Length of the rate-limit window.
const RATE_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

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
                coalesce(array(select m.team_id from team_members m where m.user_id = g.subject_user_id), '{}') as subject_teams,
                g.rate_per_minute
         from federation_grants g
         join federation_peers p on p.id = g.peer_id
         left join users u on u.id = g.subject_user_id
         where g.id = $1",
    )
    .bind(identity.grant_id)
    .fetch_optional(&state.peer_reads)
    .await;
    let row = match row {
        Ok(row) => row,
        Err(e) => {
            // One audit row per request, this one too (it is written once the database is back).
            deny_audit(
                &state,
                Some(identity.grant_id),
                None,
                Some(identity.subject_user_id),
                "internal",
                "the grant could not be read".to_string(),
                req.uri().path(),
            );
            return ApiError::from(e).into_response();
        }
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
    let limit = row
        .rate_per_minute
        .and_then(|r| u32::try_from(r).ok())
        .filter(|r| *r > 0)
        .unwrap_or(state.config.federation.rate_per_minute);
    let key = format!("fed:grant:{}", identity.grant_id);
    match state.limiter.hit(&key, limit, RATE_WINDOW).await {
        Ok(Decision::Allowed { .. }) => {}
        Ok(Decision::Denied { retry_after }) => {
            return over_budget(&state, &identity, row.peer_id, limit, retry_after, req.uri().path()).await;
        }
        Err(e) => {
            deny_audit(
                &state,
                Some(identity.grant_id),
                peer_id,
                Some(identity.subject_user_id),
                "limiter_unavailable",
                e.to_string(),
                req.uri().path(),
            );
            return ApiError::from(e).into_response();
        }
    }
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

/// The one place where a request over its grant's budget is answered: 429 `rate_limited` with
/// `Retry-After`, plus one denied audit row.
///
/// The `rate_limit.exceeded` webhook event is written at most once per grant and window (the
/// limiter itself decides, so replicas agree in tier federated): a caller hammering past its
/// budget must not turn every refused request into outbox rows. The event is written off the
/// request path; it announces a condition, not a change, so there is no transaction to join.
async fn over_budget(
    state: &AppState,
    identity: &crate::federation::identity::PeerIdentity,
    peer_id: Uuid,
    limit: u32,
    retry_after: std::time::Duration,
    path: &str,
) -> Response {
    let retry_after_secs = retry_after.as_millis().div_ceil(1000).max(1);
    tracing::info!(grant_id = %identity.grant_id, limit, retry_after_secs, "federation rate limit exceeded");
    deny_audit(
        state,
        Some(identity.grant_id),
        Some(peer_id),
        Some(identity.subject_user_id),
        "rate_limited",
        format!("over {limit} requests per minute"),
        path,
    );
    announce_exceeded(state, identity.grant_id, peer_id, limit);
    ApiError::rate_limited(u64::try_from(retry_after_secs).unwrap_or(60)).into_response()
}

fn announce_exceeded(state: &AppState, grant_id: Uuid, peer_id: Uuid, limit: u32) {
    let (limiter, pool) = (state.limiter.clone(), state.pool.clone());
    tokio::spawn(async move {
        let first_in_window = limiter
            .hit(&format!("fed:grant-exceeded:{grant_id}"), 1, RATE_WINDOW)
            .await
            .is_ok_and(crate::ratelimit::Decision::is_allowed);
        if first_in_window {
            let payload = serde_json::json!({
                "grantId": grant_id,
                "peerId": peer_id,
                "limitPerMinute": limit,
            });
            crate::outbox::emit_event_logged(&pool, "rate_limit.exceeded", &payload).await;
        }
    });
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
