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
use crate::ratelimit::{Decision, RateLimitError};
use crate::store::grants::GrantCheck;
use crate::tls::ConnectionInfo;

/// The one message every federation 403 carries.
pub const FORBIDDEN_MESSAGE: &str = "Access denied";

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
    row: GrantCheck,
    ctx: FederationContext,
}

/// Grants remembered at most; past that, one entry makes room for each new one.
const MEMO_CAPACITY: usize = 10_000;

impl GrantMemo {
    fn get(&self, grant_id: Uuid) -> Option<Arc<Remembered>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&grant_id).cloned()
    }

    fn remember(&self, grant_id: Uuid, decided: Option<(&GrantCheck, &FederationContext)>) {
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

    fn of(identity: &PeerIdentity, row: &GrantCheck) -> Self {
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
            let peer_id = ctx.peer_id;
            let denial = match state.limiter.hit(&key, limit, RATE_WINDOW).await {
                Ok(Decision::Allowed { .. }) => None,
                Ok(Decision::Denied { retry_after }) => {
                    Some(Denial::OverBudget { identity, peer_id, limit, retry_after })
                }
                Err(error) => Some(Denial::LimiterUnavailable { identity, peer_id, error }),
            };
            if let Some(denial) = denial {
                return Err(denial.respond(&state, &path));
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
    Denial::GrantUnreadable { identity: identity.clone(), error: None }.audit(state, path);
}

/// The identity the accept loop parsed from the client certificate, or the 401.
///
/// The certificate's validity window is checked here, on every request: rustls checks it only
/// at a full handshake, so a keep-alive connection, or a TLS session resumed from a ticket,
/// would otherwise outlive the certificate it was opened with.
fn peer_identity(state: &AppState, req: &Request) -> Result<PeerIdentity, Box<Response>> {
    let denial = match req.extensions().get::<ConnectionInfo>().and_then(|c| c.peer_identity.clone()) {
        Some(Ok(identity)) => {
            let now = Utc::now();
            if identity.not_after <= now {
                Denial::CertificateExpired(identity)
            } else if identity.not_before > now {
                Denial::CertificateNotYetValid(identity)
            } else {
                return Ok(identity);
            }
        }
        Some(Err(e)) => Denial::BadIdentity(e.to_string()),
        None => Denial::NoCertificate,
    };
    Err(Box::new(denial.respond(state, req.uri().path())))
}

/// The grant's budget per window: its own `rate_per_minute`, else the configured default.
fn rate_limit(state: &AppState, row: &GrantCheck) -> u32 {
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
) -> Result<(FederationContext, GrantCheck), Box<Response>> {
    metrics::counter!(DECISIONS_METRIC, "source" => "database").increment(1);
    let row = match crate::store::grants::check(&state.peer_reads, identity.grant_id).await {
        Ok(row) => row,
        Err(error) => {
            // One audit row per request, this one too (it is written once the database is back).
            let denial = Denial::GrantUnreadable { identity: identity.clone(), error: Some(error) };
            return Err(Box::new(denial.respond(state, path)));
        }
    };
    let reason = match &row {
        None => Some("unknown grant"),
        Some(r) => denial(r, identity, Utc::now()),
    };
    if let Some(reason) = reason {
        state.grant_memo.remember(identity.grant_id, None);
        let peer_id = row.as_ref().map(|r| r.peer_id);
        let denial = Denial::Refused { identity: identity.clone(), peer_id, reason };
        return Err(Box::new(denial.respond(state, path)));
    }
    let row = row.expect("a missing row is a denial");
    let ctx = context(state, identity, &row, path)?;
    state.grant_memo.remember(identity.grant_id, Some((&row, &ctx)));
    Ok((ctx, row))
}

/// The guard's rules on one grant/peer row; `None` when the request may go on.
fn denial(r: &GrantCheck, identity: &PeerIdentity, now: DateTime<Utc>) -> Option<&'static str> {
    if let Some(refusal) = super::grants::GrantRefusal::of(r.status, r.expires_at, r.peer_state, now) {
        return Some(refusal.reason());
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
    row: &GrantCheck,
    path: &str,
) -> Result<FederationContext, Box<Response>> {
    let scope = match serde_json::from_value::<GrantScope>(row.scope.clone()) {
        Ok(scope) => scope,
        Err(e) => {
            let denial =
                Denial::ScopeUnreadable { identity: identity.clone(), peer_id: row.peer_id, error: e.to_string() };
            return Err(Box::new(denial.respond(state, path)));
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

/// Writes the `rate_limit.exceeded` webhook event at most once per grant and window (the
/// limiter itself decides, so replicas agree in tier federated): a caller hammering past its
/// budget must not turn every refused request into outbox rows. The event is written off the
/// request path; it announces a condition, not a change, so there is no transaction to join.
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

/// Why the guard refused a request. Each denial knows its audit row (written off the request
/// path), its log line and its answer, so every refusal is audited the same way.
///
/// Every 403 carries [`FORBIDDEN_MESSAGE`]; the specific reason goes to the log and the audit row.
enum Denial {
    /// No client certificate on the connection (401).
    NoCertificate,
    /// A certificate whose grant or subject extensions are missing, duplicated or malformed (401).
    BadIdentity(String),
    /// The certificate's notAfter has passed (401).
    CertificateExpired(PeerIdentity),
    /// The certificate's notBefore is still ahead (401).
    CertificateNotYetValid(PeerIdentity),
    /// The grant, its peer, the serial or the subject refuse ([`denial`]), or there is no such
    /// grant (403).
    Refused { identity: PeerIdentity, peer_id: Option<Uuid>, reason: &'static str },
    /// The stored scope no longer parses (403).
    ScopeUnreadable { identity: PeerIdentity, peer_id: Uuid, error: String },
    /// Over the grant's budget (429 with `Retry-After`, and `rate_limit.exceeded` at most once
    /// per grant and window).
    OverBudget { identity: PeerIdentity, peer_id: Uuid, limit: u32, retry_after: std::time::Duration },
    /// The limiter could not count: fail closed (503).
    LimiterUnavailable { identity: PeerIdentity, peer_id: Uuid, error: RateLimitError },
    /// The grant could not be read (500). `error` is `None` when the caller answers itself
    /// ([`audit_database_failure`]).
    GrantUnreadable { identity: PeerIdentity, error: Option<sqlx::Error> },
}

impl Denial {
    /// The audit row's deny code.
    fn code(&self) -> &'static str {
        match self {
            Self::NoCertificate => "no_certificate",
            Self::BadIdentity(_) => "identity",
            Self::CertificateExpired(_) => "certificate_expired",
            Self::CertificateNotYetValid(_) => "certificate_not_yet_valid",
            Self::Refused { .. } => "guard",
            Self::ScopeUnreadable { .. } => "scope_parse",
            Self::OverBudget { .. } => "rate_limited",
            Self::LimiterUnavailable { .. } => "limiter_unavailable",
            Self::GrantUnreadable { .. } => "internal",
        }
    }

    /// The certificate's identity, when it has one.
    fn identity(&self) -> Option<&PeerIdentity> {
        match self {
            Self::NoCertificate | Self::BadIdentity(_) => None,
            Self::CertificateExpired(identity)
            | Self::CertificateNotYetValid(identity)
            | Self::Refused { identity, .. }
            | Self::ScopeUnreadable { identity, .. }
            | Self::OverBudget { identity, .. }
            | Self::LimiterUnavailable { identity, .. }
            | Self::GrantUnreadable { identity, .. } => Some(identity),
        }
    }

    fn peer_id(&self) -> Option<Uuid> {
        match self {
            Self::Refused { peer_id, .. } => *peer_id,
            Self::ScopeUnreadable { peer_id, .. }
            | Self::OverBudget { peer_id, .. }
            | Self::LimiterUnavailable { peer_id, .. } => Some(*peer_id),
            _ => None,
        }
    }

    /// The internal reason the audit row keeps (never sent to the peer).
    fn reason(&self) -> String {
        match self {
            Self::NoCertificate => "no client certificate".to_string(),
            Self::BadIdentity(e) => e.clone(),
            Self::CertificateExpired(identity) | Self::CertificateNotYetValid(identity) => {
                format!("serial {} valid from {} to {}", identity.serial, identity.not_before, identity.not_after)
            }
            Self::Refused { reason, .. } => (*reason).to_string(),
            Self::ScopeUnreadable { error, .. } => error.clone(),
            Self::OverBudget { limit, .. } => format!("over {limit} requests per minute"),
            Self::LimiterUnavailable { error, .. } => error.to_string(),
            Self::GrantUnreadable { .. } => "the grant could not be read".to_string(),
        }
    }

    /// Records the denial off the request path.
    fn audit(&self, state: &AppState, path: &str) {
        let identity = self.identity();
        state.audit.submit(&AuditEntry {
            grant_id: identity.map(|i| i.grant_id),
            peer_id: self.peer_id(),
            subject_user_id: identity.map(|i| i.subject_user_id),
            verb: super::request_audit::verb_of(path),
            outcome: "denied",
            deny_code: Some(self.code()),
            reason: Some(self.reason()),
            ..Default::default()
        });
    }

    /// Logs the denial, writes its audit row and answers the request.
    fn respond(self, state: &AppState, path: &str) -> Response {
        match &self {
            Self::NoCertificate | Self::BadIdentity(_) => {
                tracing::info!(code = self.code(), reason = %self.reason(), "federation request refused before the grant");
            }
            Self::Refused { identity, reason, .. } => {
                tracing::warn!(grant_id = %identity.grant_id, reason, "federation request denied");
            }
            Self::ScopeUnreadable { identity, error, .. } => {
                tracing::error!(grant_id = %identity.grant_id, error = %error, "stored grant scope does not parse");
            }
            Self::OverBudget { identity, limit, retry_after, .. } => {
                let retry_after_secs = retry_after.as_millis().div_ceil(1000).max(1);
                tracing::info!(grant_id = %identity.grant_id, limit, retry_after_secs, "federation rate limit exceeded");
            }
            _ => {}
        }
        self.audit(state, path);
        let error = match self {
            Self::NoCertificate => ApiError::unauthorized("A client certificate issued at enrollment is required"),
            Self::BadIdentity(_) => {
                ApiError::unauthorized("A client certificate with grant and subject extensions is required")
            }
            Self::CertificateExpired(_) => {
                ApiError::unauthorized("The client certificate has expired; renew or re-enroll")
            }
            Self::CertificateNotYetValid(_) => ApiError::unauthorized("The client certificate is not valid yet"),
            Self::Refused { .. } | Self::ScopeUnreadable { .. } => ApiError::forbidden(FORBIDDEN_MESSAGE),
            Self::OverBudget { identity, peer_id, limit, retry_after } => {
                // The `rate_limit.exceeded` event is written at most once per grant and window
                // (see `announce_exceeded`).
                announce_exceeded(state, identity.grant_id, peer_id, limit);
                let retry_after_secs = retry_after.as_millis().div_ceil(1000).max(1);
                ApiError::rate_limited(u64::try_from(retry_after_secs).unwrap_or(60))
            }
            Self::LimiterUnavailable { error, .. } => ApiError::from(error),
            Self::GrantUnreadable { error, .. } => match error {
                Some(e) => ApiError::from(e),
                None => ApiError::internal(anyhow::anyhow!("the grant could not be read")),
            },
        };
        error.into_response()
    }
}
