//! Webhook endpoints and the signature on every delivery.
//!
//! Each delivery is `POST <url>` with a JSON body `{"id", "event", "createdAt", "data"}` and the
//! headers `Tessera-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`,
//! `Idempotency-Key: <event id>` and `Tessera-Event: <event name>`. A receiver recomputes the
//! HMAC over the exact bytes it received, compares in constant time, and rejects a timestamp too
//! far from its clock (replays). See [`verify_signature`].
//!
//! The endpoint secret is stored sealed (AES-256-GCM with the gateway's sealing key, bound to the
//! endpoint id), so a raw read of the database never shows it; it is returned by no API.
//! `http://` URLs are accepted on purpose: the signature authenticates the body either way; use
//! `https://` for anything that crosses an untrusted network. Where a URL may point is a separate
//! question ([`super::targets`]): receivers on the same host or an internal network need their
//! range in `TESSERA_WEBHOOK_ALLOWED_CIDRS`.

use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use utoipa::ToSchema;
use uuid::Uuid;

use super::targets::WebhookTargets;
use crate::sealing::SealingKey;

pub const SIGNATURE_HEADER: &str = "Tessera-Signature";

/// The events of DESIGN §8 an endpoint can subscribe to (or `*` for all).
pub const EVENTS: &[&str] = &[
    "grant.created",
    "grant.activated",
    "grant.revoked",
    "peer.enrolled",
    "enrollment.failed",
    "token.created",
    "token.revoked",
    "rate_limit.exceeded",
    "peer.superseded_certificate_used",
    "peer.reenrolled",
    "peer.certificate_expiring",
    "peer.renewal_failed",
];

/// The sealing context of an endpoint's secret: a sealed secret cannot be moved to another row.
pub fn secret_context(endpoint_id: Uuid) -> String {
    format!("webhook-secret:{endpoint_id}")
}

/// The body of a delivery (the same bytes on every attempt).
pub fn delivery_body(event_id: Uuid, event: &str, created_at: DateTime<Utc>, data: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "id": event_id,
        "event": event,
        "createdAt": created_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "data": data,
    }))
    .unwrap_or_default()
}

fn mac(secret: &[u8], t: i64, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// `t=<t>,v1=<hex HMAC-SHA256(secret, "t.body")>`.
pub fn signature_header(secret: &[u8], t: i64, body: &[u8]) -> String {
    format!("t={t},v1={}", hex::encode(mac(secret, t, body).finalize().into_bytes()))
}

/// Why a signature did not verify.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("malformed signature header")]
    Malformed,
    #[error("timestamp outside the allowed window")]
    Stale,
    #[error("signature does not match")]
    Mismatch,
}

/// Verifies a `Tessera-Signature` header over `body`, accepting timestamps within `tolerance_secs`
/// of `now` (unix seconds). The comparison is constant-time.
///
/// # Errors
/// [`SignatureError`].
pub fn verify_signature(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now: i64,
    tolerance_secs: i64,
) -> Result<(), SignatureError> {
    let mut t = None;
    let mut v1 = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => v1.push(hex::decode(v).map_err(|_| SignatureError::Malformed)?),
            _ => {}
        }
    }
    let t = t.ok_or(SignatureError::Malformed)?;
    if v1.is_empty() {
        return Err(SignatureError::Malformed);
    }
    if (now - t).abs() > tolerance_secs {
        return Err(SignatureError::Stale);
    }
    if v1.iter().any(|sig| mac(secret, t, body).verify_slice(sig).is_ok()) {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateWebhook {
    /// `https://...` or `http://...`. Hosts that resolve to loopback, private, link-local, cloud
    /// metadata or other non-public addresses are refused unless the gateway's
    /// `TESSERA_WEBHOOK_ALLOWED_CIDRS` allows them; the gateway itself is always refused.
    #[schema(max_length = 2000, pattern = "^https?://[^@/?#]+")]
    pub url: String,
    /// 16 to 512 characters; used as the HMAC key. Never shown again.
    #[schema(min_length = 16, max_length = 512)]
    pub secret: String,
    /// Event names (see the list in the docs) or `["*"]`.
    #[schema(min_items = 1)]
    pub events: Vec<String>,
}

impl std::fmt::Debug for CreateWebhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateWebhook")
            .field("url", &crate::config::redact_url(&self.url))
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
}

/// A registered endpoint (never with its secret).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookEndpoint {
    pub id: Uuid,
    /// With any password masked.
    pub url: String,
    pub events: Vec<String>,
    pub created_at: DateTime<Utc>,
    /// Deliveries not yet done or dead.
    pub pending: i64,
    pub dead: i64,
}

/// How long registration waits for the URL's host to resolve.
const REGISTRATION_LOOKUP: std::time::Duration = std::time::Duration::from_secs(5);

/// Why an endpoint was not registered.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// A field of the request is wrong; the message names the rule.
    #[error("{message}")]
    Invalid { field: &'static str, message: String },
    #[error("the webhook store failed")]
    Store(#[from] sqlx::Error),
}

impl WebhookError {
    fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid { field, message: message.into() }
    }
}

impl crate::error::DomainError for WebhookError {
    fn fault(&self) -> crate::error::Fault {
        match self {
            Self::Invalid { field, .. } => crate::error::Fault::invalid(field),
            Self::Store(_) => crate::error::Fault::Internal,
        }
    }
}

/// Validates and stores an endpoint with its sealed secret.
///
/// # Errors
/// [`WebhookError::Invalid`] naming the bad field (including a target that [`WebhookTargets`]
/// refuses); database errors.
pub async fn create(
    db: impl sqlx::PgExecutor<'_>,
    sealing: &SealingKey,
    targets: &WebhookTargets,
    body: &CreateWebhook,
) -> Result<WebhookEndpoint, WebhookError> {
    let url = body.url.trim();
    let parsed = reqwest::Url::parse(url).map_err(|_| WebhookError::invalid("url", "url is not a valid URL"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none_or(str::is_empty) || url.len() > 2000 {
        return Err(WebhookError::invalid("url", "url must be an http:// or https:// URL with a host"));
    }
    // The URL is stored and listed in clear; credentials belong in the signing secret (or the
    // receiver's network policy), never in the URL.
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(WebhookError::invalid(
            "url",
            "url must not carry a user name or password; receivers authenticate deliveries by their signature",
        ));
    }
    let secret_len = body.secret.chars().count();
    if !(16..=512).contains(&secret_len) {
        return Err(WebhookError::invalid("secret", "secret must have 16 to 512 characters"));
    }
    if body.events.is_empty() {
        return Err(WebhookError::invalid("events", "events must name at least one event (or \"*\")"));
    }
    for e in &body.events {
        if e != "*" && !EVENTS.contains(&e.as_str()) {
            return Err(WebhookError::invalid(
                "events",
                format!("unknown event '{e}'; known: {} or *", EVENTS.join(", ")),
            ));
        }
    }
    // Last, since it may wait on DNS. Every delivery checks again (the answer may change).
    if let Err(e) = targets.resolve(&parsed, REGISTRATION_LOOKUP).await {
        return Err(WebhookError::invalid("url", format!("url refused: {e}")));
    }
    let mut events = body.events.clone();
    events.sort();
    events.dedup();
    let id = Uuid::now_v7();
    let sealed = sealing.seal(&secret_context(id), body.secret.as_bytes());
    let mut row = sqlx::query_as!(
        WebhookEndpoint,
        r#"insert into outbox.webhook_endpoints (id, url, secret_sealed, events) values ($1, $2, $3, $4)
         returning id, url, events, created_at, 0::int8 as "pending!", 0::int8 as "dead!""#,
        id,
        url,
        sealed,
        &events
    )
    .fetch_one(db)
    .await?;
    row.url = crate::config::redact_url(&row.url);
    Ok(row)
}

/// Every endpoint, oldest first, with its open and dead delivery counts.
///
/// # Errors
/// Database errors.
pub async fn list(db: impl sqlx::PgExecutor<'_>) -> Result<Vec<WebhookEndpoint>, sqlx::Error> {
    let mut rows = sqlx::query_as!(
        WebhookEndpoint,
        r#"select e.id, e.url, e.events, e.created_at,
                (select count(*) from outbox.deliveries d where d.endpoint_id = e.id and d.status in ('pending', 'inflight')) as "pending!",
                (select count(*) from outbox.deliveries d where d.endpoint_id = e.id and d.status = 'dead') as "dead!"
           from outbox.webhook_endpoints e order by e.created_at, e.id"#,
    )
    .fetch_all(db)
    .await?;
    for r in &mut rows {
        r.url = crate::config::redact_url(&r.url);
    }
    Ok(rows)
}

/// Deletes an endpoint and its undelivered rows; false when unknown.
///
/// # Errors
/// Database errors.
pub async fn delete(db: impl sqlx::PgExecutor<'_>, id: Uuid) -> Result<bool, sqlx::Error> {
    let done = sqlx::query!("delete from outbox.webhook_endpoints where id = $1", id).execute(db).await?;
    Ok(done.rows_affected() == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_and_detect_tampering_and_staleness() {
        let secret = b"whsec-0123456789abcdef";
        let body = br#"{"id":"x","event":"grant.created"}"#;
        let header = signature_header(secret, 1_700_000_000, body);
        assert!(header.starts_with("t=1700000000,v1="));
        assert_eq!(verify_signature(secret, &header, body, 1_700_000_010, 300), Ok(()));
        assert_eq!(
            verify_signature(secret, &header, br#"{"id":"y","event":"grant.created"}"#, 1_700_000_010, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature(b"another-secret-0000", &header, body, 1_700_000_010, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(verify_signature(secret, &header, body, 1_700_001_000, 300), Err(SignatureError::Stale));
        assert_eq!(verify_signature(secret, "v1=zz", body, 0, 300), Err(SignatureError::Malformed));
    }
}
