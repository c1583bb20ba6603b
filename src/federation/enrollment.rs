//! Enrollment (DESIGN §3): single-use tokens, redemption of a CSR for a client certificate,
//! renewal over mTLS, and the public CRL.
//!
//! Redemption claims the token atomically (`... where used_at is null`) *before* anything is
//! issued, and the claim, the certificate record, the grant activation and the peer update
//! commit in one transaction: of 20 concurrent redemptions exactly one gets a certificate, and a
//! failure half-way leaves the token unused and nothing issued.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use utoipa::ToSchema;
use uuid::Uuid;

use super::audit::{self, AuditEntry};
use super::ca::{ClientCertRequest, ClientCertificate};
use super::csr::verified_public_key;
use super::grants::GrantStatus;
use crate::admin::credentials::Secret;
use crate::admin::guard::AdminUser;
use crate::app::AppState;
use crate::error::{DomainError, Fault};
use crate::http::error::{ApiError, ErrorEnvelope};
use crate::http::extract::{Json, Path};
use crate::store;

/// Longest allowed enrollment-token lifetime.
pub const MAX_TOKEN_TTL_SECS: i64 = 900;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateEnrollmentToken {
    pub grant_id: Uuid,
    /// 1..=900 seconds; default 900.
    #[schema(minimum = 1, maximum = 900)]
    #[serde(default, deserialize_with = "crate::http::extract::integer::optional")]
    pub ttl_seconds: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnrollmentToken {
    /// 64 hex characters; shown once.
    pub token: String,
    pub expires_at: DateTime<Utc>,
    /// `https://<this gateway>/api/federation/enrollment/<token>#sha256=<CA fingerprint>`
    pub enrollment_url: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RedeemRequest {
    #[schema(min_length = 1, max_length = 16384, pattern = "-----BEGIN CERTIFICATE REQUEST-----")]
    pub csr_pem: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuedCertificate {
    pub cert_pem: String,
    /// The certificate followed by the issuing CA.
    pub cert_chain_pem: String,
}

/// Why minting, redeeming or renewing was refused, or could not be done.
#[derive(Debug, thiserror::Error)]
pub enum EnrollmentError {
    #[error("ttlSeconds must be between 1 and {MAX_TOKEN_TTL_SECS}")]
    InvalidTtl,
    #[error("No such grant")]
    UnknownGrant,
    #[error(
        "grant is active; to replace its certificate (for example after it expired) mint a re-enrollment \
         token: `tessera grant reenroll <grant>` or POST /api/admin/grants/{{id}}/reenroll"
    )]
    AlreadyActive,
    #[error("grant is {0}; enrollment tokens are only issued for pending grants")]
    NotPending(GrantStatus),
    #[error("grant is {0}; re-enrollment tokens are only issued for active grants")]
    NotActive(GrantStatus),
    /// The CSR does not parse or its signature does not verify.
    #[error("{0}")]
    InvalidCsr(String),
    #[error("Unknown enrollment token")]
    UnknownToken,
    #[error("This enrollment token was already used or has expired")]
    TokenSpent,
    #[error("The grant for this token no longer exists")]
    GrantGone,
    #[error("The grant for this token is no longer {0}")]
    GrantNoLonger(GrantStatus),
    /// A renewal from a certificate that a renewal already superseded (see [`renew`]).
    #[error("{}", super::guard::FORBIDDEN_MESSAGE)]
    Superseded,
    #[error("the certificate could not be issued")]
    Issue(#[source] anyhow::Error),
    #[error("the enrollment store failed")]
    Database(#[from] sqlx::Error),
}

impl DomainError for EnrollmentError {
    fn fault(&self) -> Fault {
        match self {
            Self::InvalidTtl => Fault::invalid("ttlSeconds"),
            Self::UnknownGrant => Fault::not_found("grantId"),
            Self::AlreadyActive | Self::NotPending(_) | Self::NotActive(_) => Fault::Conflict { field: None },
            Self::InvalidCsr(_) => Fault::invalid("csrPem"),
            Self::UnknownToken => Fault::NotFound { field: None },
            Self::TokenSpent | Self::GrantGone | Self::GrantNoLonger(_) => Fault::Gone,
            Self::Superseded => Fault::Forbidden,
            Self::Issue(_) | Self::Database(_) => Fault::Internal,
        }
    }
}

/// 32 random bytes as 64 lowercase hex characters.
fn new_token() -> Secret {
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes);
    Secret::from_plaintext(hex::encode(bytes))
}

/// Mints an enrollment token for a pending grant.
///
/// # Errors
/// A bad TTL, an unknown grant, a grant that is not pending.
pub async fn mint(
    pool: &sqlx::PgPool,
    public_url: &str,
    ca: &super::ca::GatewayCa,
    grant_id: Uuid,
    ttl_seconds: Option<i64>,
) -> Result<EnrollmentToken, EnrollmentError> {
    mint_for(pool, public_url, ca, grant_id, ttl_seconds, TokenKind::Enroll).await
}

/// Mints a re-enrollment token for an active grant: redeeming it issues a new certificate on the
/// same grant and supersedes the old one at once (the way back after a reader's certificate
/// expired while it was away). Single-use and short-lived like any enrollment token.
///
/// # Errors
/// A bad TTL, an unknown grant, a grant that is not active.
pub async fn mint_reenrollment(
    pool: &sqlx::PgPool,
    public_url: &str,
    ca: &super::ca::GatewayCa,
    grant_id: Uuid,
    ttl_seconds: Option<i64>,
) -> Result<EnrollmentToken, EnrollmentError> {
    mint_for(pool, public_url, ca, grant_id, ttl_seconds, TokenKind::Reenroll).await
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TokenKind {
    /// Activates a pending grant.
    Enroll,
    /// Replaces the certificate of an active grant.
    Reenroll,
}

async fn mint_for(
    pool: &sqlx::PgPool,
    public_url: &str,
    ca: &super::ca::GatewayCa,
    grant_id: Uuid,
    ttl_seconds: Option<i64>,
    kind: TokenKind,
) -> Result<EnrollmentToken, EnrollmentError> {
    let ttl = ttl_seconds.unwrap_or(MAX_TOKEN_TTL_SECS);
    if !(1..=MAX_TOKEN_TTL_SECS).contains(&ttl) {
        return Err(EnrollmentError::InvalidTtl);
    }
    let grant = store::grants::find(pool, grant_id).await?.ok_or(EnrollmentError::UnknownGrant)?;
    match (kind, grant.status) {
        (TokenKind::Enroll, GrantStatus::Pending) | (TokenKind::Reenroll, GrantStatus::Active) => {}
        (TokenKind::Enroll, GrantStatus::Active) => return Err(EnrollmentError::AlreadyActive),
        (TokenKind::Enroll, status) => return Err(EnrollmentError::NotPending(status)),
        (TokenKind::Reenroll, status) => return Err(EnrollmentError::NotActive(status)),
    }
    let token = new_token();
    let expires_at = Utc::now() + Duration::seconds(ttl);
    let new = store::enrollment::NewToken {
        token_hash: &token.hash(),
        grant_id: grant.id,
        peer_id: grant.peer_id,
        expires_at,
        reenroll: kind == TokenKind::Reenroll,
    };
    store::enrollment::insert_token(pool, &new).await?;
    let enrollment_url =
        format!("{}/api/federation/enrollment/{}#sha256={}", public_url, token.expose(), ca.fingerprint_sha256());
    Ok(EnrollmentToken { token: token.expose().to_string(), expires_at, enrollment_url })
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateReenrollmentToken {
    /// 1..=900 seconds; default 900.
    #[schema(minimum = 1, maximum = 900)]
    #[serde(default, deserialize_with = "crate::http::extract::integer::optional")]
    pub ttl_seconds: Option<i64>,
}

/// Mint a single-use re-enrollment token for an active grant: the reader redeems it with
/// `tessera peer add <url>` and gets a new certificate on the same grant; the old one is
/// superseded at once.
#[utoipa::path(post, path = "/api/admin/grants/{id}/reenroll", tag = "admin", params(("id" = Uuid, Path)),
    request_body(content = CreateReenrollmentToken, description = "`{}` for the default lifetime"),
    responses(
        (status = 201, body = EnrollmentToken), (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope), (status = 409, body = ErrorEnvelope),
    ))]
pub async fn create_reenrollment_token(
    _admin: AdminUser,
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
    Json(body): Json<CreateReenrollmentToken>,
) -> Result<(StatusCode, Json<EnrollmentToken>), ApiError> {
    let ttl = body.ttl_seconds;
    Ok((StatusCode::CREATED, Json(mint_reenrollment(&state.pool, &state.config.public_url, &state.ca, id, ttl).await?)))
}

/// Mint a single-use enrollment token for a pending grant.
#[utoipa::path(post, path = "/api/federation/enrollment/tokens", tag = "federation", request_body = CreateEnrollmentToken,
    responses(
        (status = 201, body = EnrollmentToken), (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope), (status = 409, body = ErrorEnvelope),
    ))]
pub async fn create_token(
    _admin: AdminUser,
    State(state): State<AppState>,
    Json(body): Json<CreateEnrollmentToken>,
) -> Result<(StatusCode, Json<EnrollmentToken>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(mint(&state.pool, &state.config.public_url, &state.ca, body.grant_id, body.ttl_seconds).await?),
    ))
}

/// Redeem an enrollment token: send a CSR, receive the client certificate.
#[utoipa::path(post, path = "/api/federation/enrollment/{token}", tag = "federation", params(("token" = String, Path)),
    request_body = RedeemRequest,
    responses(
        (status = 200, body = IssuedCertificate), (status = 400, body = ErrorEnvelope),
        (status = 404, description = "Unknown token", body = ErrorEnvelope),
        (status = 410, description = "Used, expired, lost race, or grant not pending", body = ErrorEnvelope),
        (status = 429, description = "Too many redemptions from this address", body = ErrorEnvelope),
    ))]
pub async fn redeem(
    State(state): State<AppState>,
    connection: Option<axum::Extension<crate::tls::ConnectionInfo>>,
    Path(token): Path<String>,
    Json(body): Json<RedeemRequest>,
) -> Result<Json<IssuedCertificate>, ApiError> {
    if let Some(axum::Extension(connection)) = connection {
        redeem_budget(&state, connection.remote_addr.ip()).await?;
    }
    Ok(Json(redeem_token(&state, &token, &body.csr_pem).await?))
}

/// Redeems `token` for a client certificate on its grant: the claim, the issued certificate,
/// the grant's activation and the peer's update commit together, or nothing does.
///
/// # Errors
/// A bad CSR; an unknown, used or expired token; a grant no longer in the state the token was
/// minted for; the certificate or the database failing.
pub async fn redeem_token(state: &AppState, token: &str, csr_pem: &str) -> Result<IssuedCertificate, EnrollmentError> {
    let hash = Secret::from_plaintext(token.to_string()).hash();
    let public_key = match verified_public_key(csr_pem) {
        Ok(k) => k,
        Err(e) => {
            enrollment_failed(state, "invalid_csr", None).await;
            return Err(EnrollmentError::InvalidCsr(e.to_string()));
        }
    };

    let mut tx = state.pool.begin().await?;
    // The claim comes first: concurrent redeemers serialise on this row and all but one see
    // `used_at` set.
    let claimed = store::enrollment::claim_token(&mut tx, &hash).await?;
    let Some(claimed) = claimed else {
        let known = store::enrollment::token_holder(&mut tx, &hash).await?;
        drop(tx);
        return Err(match known {
            Some(ids) => {
                enrollment_failed(state, "token_used_or_expired", Some(ids)).await;
                EnrollmentError::TokenSpent
            }
            None => {
                metrics::counter!(UNKNOWN_TOKENS_METRIC).increment(1);
                enrollment_failed(state, "unknown_token", None).await;
                EnrollmentError::UnknownToken
            }
        });
    };
    let (grant_id, peer_id, reenroll) = (claimed.grant_id, claimed.peer_id, claimed.reenroll);

    let Some(target) = store::grants::lock_for_enrollment(&mut tx, grant_id, peer_id).await? else {
        drop(tx);
        enrollment_failed(state, "grant_missing", Some((grant_id, peer_id))).await;
        return Err(EnrollmentError::GrantGone);
    };
    let wanted = if reenroll { GrantStatus::Active } else { GrantStatus::Pending };
    let subject = match target.subject_user_id {
        Some(subject) if target.status == wanted => subject,
        _ => {
            // Nothing is issued; the token stays unused (the transaction rolls back) but can
            // never succeed while the grant is not in the state the token was minted for.
            drop(tx);
            enrollment_failed(state, &format!("grant_not_{wanted}"), Some((grant_id, peer_id))).await;
            return Err(EnrollmentError::GrantNoLonger(wanted));
        }
    };
    let (peer_name, superseded) = (target.peer_name, target.current_serial);

    let holder = Holder { peer_id, grant_id, subject_user_id: subject, peer_name: &peer_name };
    let (verb, outcome) = if reenroll { ("reenroll", "reenrolled") } else { ("enroll", "enrolled") };
    let cert = issue_recorded(&mut tx, state, &public_key, &holder, verb, outcome).await?;
    // The new certificate is the grant's only valid one: a re-enrollment supersedes the old
    // serial at once, with no grace (its holder was away, or lost the key).
    store::grants::activate(&mut tx, grant_id, &cert.serial, cert.not_after).await?;
    store::peers::record_issued_certificate(&mut tx, peer_id, &cert.serial, cert.not_after).await?;
    if reenroll {
        crate::outbox::emit_event(
            &mut *tx,
            "peer.reenrolled",
            &serde_json::json!({
                "peerId": peer_id, "peerName": peer_name, "grantId": grant_id,
                "certSerial": cert.serial, "certNotAfter": cert.not_after, "supersededSerial": superseded,
            }),
        )
        .await?;
    } else {
        crate::outbox::emit_event(
            &mut *tx,
            "grant.activated",
            &serde_json::json!({"grantId": grant_id, "peerId": peer_id}),
        )
        .await?;
        crate::outbox::emit_event(
            &mut *tx,
            "peer.enrolled",
            &serde_json::json!({
                "peerId": peer_id, "peerName": peer_name, "grantId": grant_id,
                "certSerial": cert.serial, "certNotAfter": cert.not_after,
            }),
        )
        .await?;
    }
    tx.commit().await?;
    Ok(chain(state, cert))
}

/// Records `enrollment.failed`. A failed redemption has no transaction of its own to join (it
/// rolls back), so the event is written on its own; the token itself never appears in it.
///
/// The redeem route takes no credentials, so anyone can fail it at will: at most one event per
/// reason and grant (or per reason, for attempts that name no grant) is written per minute, or a
/// flood of garbage would fill the outbox and queue ahead of real events on every endpoint.
async fn enrollment_failed(state: &AppState, reason: &str, ids: Option<(Uuid, Uuid)>) {
    let key = match ids {
        Some((grant_id, _)) => format!("enroll-failed:{reason}:{grant_id}"),
        None => format!("enroll-failed:{reason}"),
    };
    let first_in_window = state
        .limiter
        .hit(&key, 1, std::time::Duration::from_secs(60))
        .await
        .is_ok_and(crate::ratelimit::Decision::is_allowed);
    if !first_in_window {
        tracing::debug!(reason, "enrollment.failed already announced this minute");
        return;
    }
    let payload = match ids {
        Some((grant_id, peer_id)) => serde_json::json!({"reason": reason, "grantId": grant_id, "peerId": peer_id}),
        None => serde_json::json!({"reason": reason}),
    };
    crate::outbox::emit_event_logged(&state.pool, "enrollment.failed", &payload).await;
}

fn chain(state: &AppState, cert: ClientCertificate) -> IssuedCertificate {
    IssuedCertificate { cert_chain_pem: format!("{}{}", cert.pem, state.ca.cert_pem()), cert_pem: cert.pem }
}

/// Who a certificate is for.
struct Holder<'a> {
    peer_id: Uuid,
    grant_id: Uuid,
    subject_user_id: Uuid,
    peer_name: &'a str,
}

/// Issues a client certificate, records its serial (for the CRL) and audits the issuance, all in
/// `conn`'s transaction.
async fn issue_recorded(
    conn: &mut PgConnection,
    state: &AppState,
    public_key: &rcgen::SubjectPublicKeyInfo,
    holder: &Holder<'_>,
    verb: &str,
    outcome: &str,
) -> Result<ClientCertificate, EnrollmentError> {
    let cert = state
        .ca
        .issue_client_cert(
            public_key,
            &ClientCertRequest {
                peer_name: holder.peer_name,
                grant_id: holder.grant_id,
                subject_user_id: holder.subject_user_id,
                oids: &state.config.federation.oids,
                ttl: state.config.federation.cert_ttl,
            },
        )
        .map_err(EnrollmentError::Issue)?;
    store::enrollment::insert_issued_cert(
        &mut *conn,
        &cert.serial,
        holder.peer_id,
        holder.grant_id,
        cert.not_before,
        cert.not_after,
    )
    .await?;
    let entry = AuditEntry {
        grant_id: Some(holder.grant_id),
        peer_id: Some(holder.peer_id),
        subject_user_id: Some(holder.subject_user_id),
        verb,
        outcome,
        reason: Some(format!("issued serial {}", cert.serial)),
        ..Default::default()
    };
    audit::record(&mut *conn, &entry).await?;
    Ok(cert)
}

/// Issues a renewed certificate for an authenticated peer: the new serial becomes current and
/// the old one stays accepted until the grace period ends. Called by the renew verb after the
/// guard has checked the caller.
///
/// # Errors
/// A bad CSR; a superseded certificate ([`EnrollmentError::Superseded`], audited and
/// announced); the certificate or the database failing.
pub async fn renew(
    state: &AppState,
    ctx: &super::FederationContext,
    csr_pem: &str,
) -> Result<IssuedCertificate, EnrollmentError> {
    let public_key = verified_public_key(csr_pem).map_err(|e| EnrollmentError::InvalidCsr(e.to_string()))?;
    let mut tx = state.pool.begin().await?;
    let (peer_name, current_serial) = store::grants::lock_for_renewal(&mut tx, ctx.grant_id).await?;
    if current_serial.as_deref() != Some(ctx.serial.as_str()) {
        // The guard let a superseded serial through because it is inside its renewal grace,
        // which is for reads in flight, not for renewing: a renewal from it would hand whoever
        // holds the old key a certificate that outlives the legitimate one. Someone renewing
        // from an old serial most likely holds a copy of the key, so the event is announced.
        refuse_superseded(&mut tx, ctx, &peer_name).await?;
        tx.commit().await?;
        return Err(EnrollmentError::Superseded);
    }
    let holder = Holder {
        peer_id: ctx.peer_id,
        grant_id: ctx.grant_id,
        subject_user_id: ctx.subject_user_id,
        peer_name: &peer_name,
    };
    let cert = issue_recorded(&mut tx, state, &public_key, &holder, "renew", "renewed").await?;
    let grace = Duration::from_std(state.config.federation.renew_grace).unwrap_or_else(|_| Duration::seconds(60));
    store::grants::renewed(&mut tx, ctx.grant_id, &cert.serial, cert.not_after, grace).await?;
    store::peers::record_issued_certificate(&mut tx, ctx.peer_id, &cert.serial, cert.not_after).await?;
    tx.commit().await?;
    Ok(chain(state, cert))
}

/// Counter: redemptions of tokens that never existed (guessing shows here).
pub const UNKNOWN_TOKENS_METRIC: &str = "tessera_enrollment_unknown_tokens_total";

/// The redeem route needs no credential, so each client address gets a small budget of
/// attempts per minute (`TESSERA_ENROLLMENT_RATE_PER_MINUTE`), counted in the shared limiter so
/// replicas agree. A limiter that cannot count refuses (503), as the federation verbs do.
async fn redeem_budget(state: &AppState, ip: std::net::IpAddr) -> Result<(), ApiError> {
    let limit = state.config.connections.enrollment_rate_per_minute;
    let key = format!("enroll:addr:{ip}");
    match state.limiter.hit(&key, limit, std::time::Duration::from_secs(60)).await? {
        crate::ratelimit::Decision::Allowed { .. } => Ok(()),
        crate::ratelimit::Decision::Denied { retry_after } => {
            tracing::info!(%ip, limit, "enrollment redemptions over the per-address budget");
            let secs = u64::try_from(retry_after.as_millis().div_ceil(1000)).unwrap_or(60);
            Err(ApiError::rate_limited(secs))
        }
    }
}

/// Audits a renewal attempt from a superseded certificate and announces it
/// (`peer.superseded_certificate_used`), in the caller's transaction.
async fn refuse_superseded(
    conn: &mut PgConnection,
    ctx: &super::FederationContext,
    peer_name: &str,
) -> Result<(), sqlx::Error> {
    tracing::warn!(peer = peer_name, serial = %ctx.serial, grant_id = %ctx.grant_id, "renewal attempted with a superseded certificate");
    let entry = AuditEntry {
        grant_id: Some(ctx.grant_id),
        peer_id: Some(ctx.peer_id),
        subject_user_id: Some(ctx.subject_user_id),
        verb: "renew",
        outcome: "denied",
        deny_code: Some("superseded_certificate"),
        reason: Some(format!("renewal attempted with superseded serial {}", ctx.serial)),
        ..Default::default()
    };
    audit::record(&mut *conn, &entry).await?;
    let payload = serde_json::json!({
        "peerId": ctx.peer_id,
        "peerName": peer_name,
        "grantId": ctx.grant_id,
        "serial": ctx.serial,
    });
    crate::outbox::emit_event(&mut *conn, "peer.superseded_certificate_used", &payload).await?;
    Ok(())
}

/// The certificate revocation list (DER), signed by this gateway's CA.
#[utoipa::path(get, path = "/api/federation/crl", tag = "federation",
    responses((status = 200, description = "DER-encoded X.509 CRL", content_type = "application/pkix-crl", body = Vec<u8>)))]
pub async fn crl(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let revoked = store::enrollment::revoked_certificates(&state.pool).await?;
    // A CRL number that grows with every revocation, so relying parties can order CRLs.
    let number = revoked.iter().map(|(_, at)| at.timestamp_micros()).max().unwrap_or(0).max(0);
    let der = state.ca.crl_der(&revoked, u64::try_from(number).unwrap_or(0))?;
    Ok(([(header::CONTENT_TYPE, "application/pkix-crl")], der))
}
