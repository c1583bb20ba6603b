//! The mTLS guard: a tower layer (axum `from_fn_with_state`) on `/api/federation/v1/*`.
//!
//! rustls has already verified the client certificate chain against the gateway CA during the
//! handshake, and the accept loop parsed the leaf's identity extensions once for the connection
//! ([`crate::tls::ConnectionInfo::peer_identity`]). Per request, the guard:
//! 1. requires that identity: no certificate, or missing / duplicated / malformed OIDs → 401;
//! 2. loads grant and peer in one query and requires grant `active` and unexpired, peer
//!    `active`, certificate serial = the grant's current serial (or the previous one inside its
//!    grace period; each grant has its own certificate), and certificate subject = the grant's
//!    subject. The database values are the
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
//! **No grant cache; a remembered decision, confirmed by the page query.** DESIGN §5 allows a
//! short-lived grant/peer cache only if revocation and scope edits bite on the very next
//! request on every replica. Grants change through several paths that cannot all notify
//! Valkey (the admin API, the `tessera grant` CLI writing to the database directly, a trigger
//! that revokes every grant of a disabled or deleted user), so no cached value is ever trusted
//! on its own. What the list route does instead ([`require_peer_confirmed_by_verb`]):
//! - the guard remembers, per grant, the last row that allowed a request ([`GrantMemo`]);
//! - on the next list request it replays the rules on that row in memory (expiry, serial,
//!   subject), counts the rate limit, and hands the verb a context marked *unconfirmed*;
//! - the verb's page statement re-reads the grant, peer, subject and team memberships in a CTE
//!   ([`Confirmation::push_cte`]) and returns rows only if the database still gives the same
//!   decision and the same scope inputs, all in one snapshot with the page itself;
//! - no rows (a changed grant, or simply an empty page) sends the request through the full
//!   read here ([`authorise`]), which denies or yields a fresh context for a second attempt.
//!
//! So the list verb costs one statement per request, and a revocation, scope edit, membership
//! change or renewal still bites on the very next request, on every replica. The other verbs
//! go through [`require_peer`], which always reads the grant first.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::FederationContext;
use super::audit::AuditEntry;
use super::identity::PeerIdentity;
use super::scope::GrantScope;
use crate::app::AppState;
use crate::http::error::ApiError;
use crate::ratelimit::Decision;
use crate::tls::ConnectionInfo;

/// The one message every federation 403 carries.
pub const FORBIDDEN_MESSAGE: &str = "Access denied";

#[derive(sqlx::FromRow, Clone)]
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

/// Counter: guard decisions by where they came from, `source` = `database` (the grant was
/// read) or `remembered` (proposed from memory, for the page statement to confirm).
pub const DECISIONS_METRIC: &str = "tessera_federation_guard_decisions_total";
/// Counter: remembered decisions the page statement did not confirm (a changed grant, or an
/// empty page), each followed by a read of the grant.
pub const UNCONFIRMED_METRIC: &str = "tessera_federation_guard_unconfirmed_total";

/// Length of the rate-limit window.
const RATE_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

/// Renewals allowed per grant and window. Renewal has a budget of its own, so data verbs can
/// never use up the one request that keeps the certificate alive, and a certificate holder
/// cannot mint certificates in a loop either.
pub const RENEW_PER_MINUTE: u32 = 6;

/// Remembered guard decisions, per grant: the last grant/peer row that allowed a request and
/// the context built from it, scope already parsed (see the module docs). Only ever used as a
/// proposal that the list statement confirms.
#[derive(Clone, Default)]
pub struct GrantMemo(Arc<Mutex<HashMap<Uuid, Arc<Remembered>>>>);

struct Remembered {
    row: GrantPeerRow,
    ctx: FederationContext,
}

/// Grants remembered at most; past that, one entry makes room for each new one.
const MEMO_CAPACITY: usize = 10_000;

impl GrantMemo {
    fn get(&self, grant_id: Uuid) -> Option<Arc<Remembered>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&grant_id).cloned()
    }

    fn remember(&self, grant_id: Uuid, decided: Option<(&GrantPeerRow, &FederationContext)>) {
        let mut map = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match decided {
            Some((row, ctx)) => {
                if map.len() >= MEMO_CAPACITY && !map.contains_key(&grant_id) {
                    // Any one entry makes room: a forgotten grant costs one read next time.
                    if let Some(evicted) = map.keys().next().copied() {
                        map.remove(&evicted);
                    }
                }
                map.insert(grant_id, Arc::new(Remembered { row: row.clone(), ctx: ctx.clone() }));
            }
            None => {
                map.remove(&grant_id);
            }
        }
    }
}

/// What an unconfirmed context was decided from: the verb binds it into
/// [`Confirmation::push_cte`] so its own statement checks that the database still agrees.
#[derive(Debug)]
pub struct Confirmation {
    identity: PeerIdentity,
    scope: serde_json::Value,
    rate_per_minute: Option<i32>,
    subject_active: bool,
    subject_teams: Vec<Uuid>,
}

impl Confirmation {
    /// Pushes `with grant_check as (…)` onto a statement being built: a CTE with one boolean
    /// column `ok`, true when the grant, its peer, the certificate serial and subject still pass
    /// every rule of the guard, and scope, rate and the subject's state and teams are what the
    /// context was built from. Its values are bound with `push_bind`, so their parameter numbers
    /// follow whatever the statement bound before and after. A missing grant gives no row, so
    /// [`Self::CHECK`] filters everything out.
    pub fn push_cte(&self, qb: &mut sqlx::QueryBuilder<sqlx::Postgres>) {
        let id = &self.identity;
        qb.push("with grant_check as (select g.status = 'active' and (g.expires_at is null or g.expires_at > now())")
            .push(" and p.state = 'active' and g.subject_user_id = ")
            .push_bind(id.subject_user_id)
            .push(" and (g.current_serial = ")
            .push_bind(id.serial.clone())
            .push(" or (g.previous_serial = ")
            .push_bind(id.serial.clone())
            .push(" and g.previous_serial_grace_until > now())) and g.scope = ")
            .push_bind(self.scope.clone())
            .push(" and g.rate_per_minute is not distinct from ")
            .push_bind(self.rate_per_minute)
            .push(" and coalesce(u.disabled_at is null, false) = ")
            .push_bind(self.subject_active)
            .push(" and array(select m.team_id from team_members m where m.user_id = g.subject_user_id order by m.team_id) = ")
            .push_bind(self.subject_teams.clone())
            .push(
                " as ok from federation_grants g join federation_peers p on p.id = g.peer_id \
                 left join users u on u.id = g.subject_user_id where g.id = ",
            )
            .push_bind(id.grant_id)
            .push(") ");
    }

    /// The condition that keeps a page's rows only when [`Self::push_cte`]'s grant checks out.
    pub const CHECK: &'static str = "(select ok from grant_check)";

    fn of(identity: &PeerIdentity, row: &GrantPeerRow) -> Self {
        Self {
            identity: identity.clone(),
            scope: row.scope.clone(),
            rate_per_minute: row.rate_per_minute,
            subject_active: row.subject_active,
            subject_teams: row.subject_teams.clone(),
        }
    }

    /// The identity to re-authorise when the statement did not confirm.
    pub fn identity(&self) -> &PeerIdentity {
        &self.identity
    }
}

/// The guard middleware for every verb: reads the grant before the request goes on.
pub async fn require_peer(State(state): State<AppState>, req: Request, next: Next) -> Response {
    guarded(state, req, next, false).await
}

/// The guard middleware for `list`: may decide from the remembered row, leaving the page
/// statement to confirm the decision (see the module docs).
pub async fn require_peer_confirmed_by_verb(State(state): State<AppState>, req: Request, next: Next) -> Response {
    guarded(state, req, next, true).await
}

/// Runs the guard in its own `federation.guard` span (ended before the verb runs, so its
/// duration is the guard's alone) and then the verb, or answers with the guard's denial.
async fn guarded(state: AppState, req: Request, next: Next, may_remember: bool) -> Response {
    use tracing::Instrument as _;
    let span = tracing::debug_span!(
        "federation.guard",
        verb = super::request_audit::verb_of(req.uri().path()),
        grant_id = tracing::field::Empty,
        source = tracing::field::Empty,
        outcome = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
    );
    match guard(state, req, may_remember).instrument(span.clone()).await {
        Ok(req) => {
            span.record("outcome", "allowed");
            drop(span);
            next.run(req).await
        }
        Err(response) => {
            span.record("outcome", "denied");
            span.record("http.response.status_code", response.status().as_u16());
            response
        }
    }
}

async fn guard(state: AppState, mut req: Request, may_remember: bool) -> Result<Request, Response> {
    let identity = match peer_identity(&state, &req) {
        Ok(identity) => identity,
        Err(response) => return Err(*response),
    };
    tracing::Span::current().record("grant_id", tracing::field::display(identity.grant_id));
    let path = req.uri().path().to_string();
    let renewal = super::request_audit::verb_of(&path) == "renew";
    let key =
        if renewal { format!("fed:renew:{}", identity.grant_id) } else { format!("fed:grant:{}", identity.grant_id) };

    // The remembered decision, if there is one and its budget allows the request. A request the
    // limiter refuses (or cannot count) on the remembered limit is answered only after a read of
    // the grant: a revoked grant gets its 403, not a 429. Such a request is counted twice; it
    // was over budget (or unlimited by an outage) either way. A changed rate fails the page
    // statement's confirmation, so it applies from the request after the one that finds it
    // (that one was already counted on the old rate).
    let mut remembered = None;
    let memo = if may_remember { state.grant_memo.get(identity.grant_id) } else { None };
    if let Some(memo) = memo.filter(|m| denial(&m.row, &identity, Utc::now()).is_none())
        && let Ok(Decision::Allowed { .. }) = state.limiter.hit(&key, rate_limit(&state, &memo.row), RATE_WINDOW).await
    {
        metrics::counter!(DECISIONS_METRIC, "source" => "remembered").increment(1);
        tracing::Span::current().record("source", "remembered");
        let unconfirmed = Some(Arc::new(Confirmation::of(&identity, &memo.row)));
        remembered = Some(ListContext { ctx: memo.ctx.clone(), unconfirmed });
    }
    let list_ctx = match remembered {
        Some(list_ctx) => list_ctx,
        None => {
            tracing::Span::current().record("source", "database");
            let (ctx, row) = match authorise_row(&state, &identity, &path).await {
                Ok(decided) => decided,
                Err(response) => return Err(*response),
            };
            let limit = if renewal { RENEW_PER_MINUTE } else { rate_limit(&state, &row) };
            match state.limiter.hit(&key, limit, RATE_WINDOW).await {
                Ok(Decision::Allowed { .. }) => {}
                Ok(Decision::Denied { retry_after }) => {
                    return Err(over_budget(&state, &identity, ctx.peer_id, limit, retry_after, &path).await);
                }
                Err(e) => {
                    deny_audit(
                        &state,
                        Some(identity.grant_id),
                        Some(ctx.peer_id),
                        Some(identity.subject_user_id),
                        "limiter_unavailable",
                        e.to_string(),
                        &path,
                    );
                    return Err(ApiError::from(e).into_response());
                }
            }
            ListContext { ctx, unconfirmed: None }
        }
    };
    // Only the list route receives a `ListContext`; every other verb extracts a plain
    // `FederationContext`, which only a database read produces, so a verb that cannot confirm
    // a remembered decision can never be handed one.
    if may_remember {
        req.extensions_mut().insert(list_ctx);
    } else {
        req.extensions_mut().insert(list_ctx.ctx);
    }
    Ok(req)
}

/// What the list guard hands the list verb: the request context and, when it was decided from
/// memory, what the page statement must confirm ([`Confirmation::push_cte`]) before any answer.
#[derive(Debug, Clone)]
pub struct ListContext {
    pub ctx: FederationContext,
    pub unconfirmed: Option<Arc<Confirmation>>,
}

/// Writes the audit row of a request whose remembered decision could not be confirmed because
/// the database failed (the guard writes the same row when its own read fails).
pub fn audit_database_failure(state: &AppState, identity: &PeerIdentity, path: &str) {
    deny_audit(
        state,
        Some(identity.grant_id),
        None,
        Some(identity.subject_user_id),
        "internal",
        "the grant could not be read".to_string(),
        path,
    );
}

/// The identity the accept loop parsed from the client certificate, or the 401.
///
/// The certificate's validity window is checked here, on every request: rustls checks it only
/// at a full handshake, so a keep-alive connection, or a TLS session resumed from a ticket,
/// would otherwise outlive the certificate it was opened with.
fn peer_identity(state: &AppState, req: &Request) -> Result<PeerIdentity, Box<Response>> {
    let path = req.uri().path();
    let unauthorized = |code: &'static str, reason: String, message: &str| {
        tracing::info!(code, %reason, "federation request refused before the grant");
        deny_audit(state, None, None, None, code, reason, path);
        Err(Box::new(ApiError::unauthorized(message).into_response()))
    };
    match req.extensions().get::<ConnectionInfo>().and_then(|c| c.peer_identity.clone()) {
        Some(Ok(identity)) => {
            let now = Utc::now();
            let refused = if identity.not_after <= now {
                Some(("certificate_expired", "The client certificate has expired; renew or re-enroll"))
            } else if identity.not_before > now {
                Some(("certificate_not_yet_valid", "The client certificate is not valid yet"))
            } else {
                None
            };
            match refused {
                None => Ok(identity),
                Some((code, message)) => {
                    let reason = format!(
                        "serial {} valid from {} to {}",
                        identity.serial, identity.not_before, identity.not_after
                    );
                    deny_audit(
                        state,
                        Some(identity.grant_id),
                        None,
                        Some(identity.subject_user_id),
                        code,
                        reason,
                        path,
                    );
                    Err(Box::new(ApiError::unauthorized(message).into_response()))
                }
            }
        }
        Some(Err(e)) => unauthorized(
            "identity",
            e.to_string(),
            "A client certificate with grant and subject extensions is required",
        ),
        None => unauthorized(
            "no_certificate",
            "no client certificate".to_string(),
            "A client certificate issued at enrollment is required",
        ),
    }
}

/// The grant's budget per window: its own `rate_per_minute`, else the configured default.
fn rate_limit(state: &AppState, row: &GrantPeerRow) -> u32 {
    row.rate_per_minute
        .and_then(|r| u32::try_from(r).ok())
        .filter(|r| *r > 0)
        .unwrap_or(state.config.federation.rate_per_minute)
}

/// Reads grant, peer and subject in one query and applies every rule: a confirmed context, or
/// the response (403, or 503 when the database is unavailable) with its audit row written.
/// The verb calls this when its statement did not confirm an unconfirmed context.
///
/// # Errors
/// The response to send instead.
pub async fn authorise(
    state: &AppState,
    identity: &PeerIdentity,
    path: &str,
) -> Result<FederationContext, Box<Response>> {
    metrics::counter!(UNCONFIRMED_METRIC).increment(1);
    authorise_row(state, identity, path).await.map(|(ctx, _)| ctx)
}

async fn authorise_row(
    state: &AppState,
    identity: &PeerIdentity,
    path: &str,
) -> Result<(FederationContext, GrantPeerRow), Box<Response>> {
    metrics::counter!(DECISIONS_METRIC, "source" => "database").increment(1);
    let row: Result<Option<GrantPeerRow>, sqlx::Error> = sqlx::query_as(
        "select g.status, g.expires_at, g.subject_user_id, g.scope, g.scope_version, g.peer_id,
                p.state as peer_state, g.current_serial, g.previous_serial, g.previous_serial_grace_until,
                coalesce(u.disabled_at is null, false) as subject_active,
                array(select m.team_id from team_members m where m.user_id = g.subject_user_id order by m.team_id) as subject_teams,
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
            audit_database_failure(state, identity, path);
            return Err(Box::new(ApiError::from(e).into_response()));
        }
    };
    let reason = match &row {
        None => Some("unknown grant"),
        Some(r) => denial(r, identity, Utc::now()),
    };
    if let Some(reason) = reason {
        state.grant_memo.remember(identity.grant_id, None);
        tracing::warn!(grant_id = %identity.grant_id, reason, "federation request denied");
        let peer_id = row.as_ref().map(|r| r.peer_id);
        deny_audit(
            state,
            Some(identity.grant_id),
            peer_id,
            Some(identity.subject_user_id),
            "guard",
            reason.to_string(),
            path,
        );
        return Err(Box::new(ApiError::forbidden(FORBIDDEN_MESSAGE).into_response()));
    }
    let row = row.expect("a missing row is a denial");
    let ctx = context(state, identity, &row, path)?;
    state.grant_memo.remember(identity.grant_id, Some((&row, &ctx)));
    Ok((ctx, row))
}

/// The guard's rules on one grant/peer row; `None` when the request may go on.
fn denial(r: &GrantPeerRow, identity: &PeerIdentity, now: DateTime<Utc>) -> Option<&'static str> {
    if r.status != "active" {
        return Some("grant is not active");
    }
    if r.expires_at.is_some_and(|e| e <= now) {
        return Some("grant has expired");
    }
    if r.peer_state != "active" {
        return Some("peer is not active");
    }
    if r.subject_user_id != Some(identity.subject_user_id) {
        return Some("certificate subject does not match the grant");
    }
    let current = r.current_serial.as_deref() == Some(identity.serial.as_str());
    let previous = r.previous_serial.as_deref() == Some(identity.serial.as_str())
        && r.previous_serial_grace_until.is_some_and(|g| g > now);
    if current || previous { None } else { Some("certificate serial is not current") }
}

/// The request context from an allowing row; a stored scope that no longer parses is a 403.
fn context(
    state: &AppState,
    identity: &PeerIdentity,
    row: &GrantPeerRow,
    path: &str,
) -> Result<FederationContext, Box<Response>> {
    let scope = match serde_json::from_value::<GrantScope>(row.scope.clone()) {
        Ok(scope) => scope,
        Err(e) => {
            tracing::error!(grant_id = %identity.grant_id, error = %e, "stored grant scope does not parse");
            deny_audit(
                state,
                Some(identity.grant_id),
                Some(row.peer_id),
                Some(identity.subject_user_id),
                "scope_parse",
                e.to_string(),
                path,
            );
            return Err(Box::new(ApiError::forbidden(FORBIDDEN_MESSAGE).into_response()));
        }
    };
    Ok(FederationContext {
        grant_id: identity.grant_id,
        serial: identity.serial.clone(),
        peer_id: row.peer_id,
        subject_user_id: identity.subject_user_id,
        scope,
        scope_version: row.scope_version,
        subject_active: row.subject_active,
        subject_teams: row.subject_teams.clone(),
    })
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
    identity: &PeerIdentity,
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
    let verb = super::request_audit::verb_of(path);
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
