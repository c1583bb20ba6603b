//! Calling a peer's verbs (gateway A's side of DESIGN §5), with typed errors and a per-peer
//! circuit breaker, and the merged local/peer query.
//!
//! Errors map to `peer_not_found`, `peer_inactive`, `peer_misconfigured`, `network`,
//! `peer_untrusted` (the peer's certificate is not signed by the CA pinned at enrollment, or names
//! another host), `certificate_refused` (the peer refused our client certificate),
//! `http_<status>` and `invalid_response`. Each message names the cause and what to do. After [`FAILURES_TO_OPEN`] consecutive network or 5xx
//! failures a peer's circuit opens for [`OPEN_FOR`]: calls fail fast (`network`, "circuit open")
//! instead of waiting on a dead peer; the first call after the cool-down is let through as a
//! probe and closes the circuit when it succeeds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::ToSchema;

use super::client::{OutboundPeer, outbound_peer};
use crate::sealing::SealingKey;

pub const FAILURES_TO_OPEN: u32 = 3;
pub const OPEN_FOR: Duration = Duration::from_secs(30);

/// Why a call to a peer failed (the reader side; [`super::peers::PeerError`] is about the peer
/// records themselves).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("no peer named '{0}'")]
    NotFound(String),
    #[error("peer '{0}' is not active")]
    Inactive(String),
    #[error("peer '{0}' is misconfigured: {1}")]
    Misconfigured(String, String),
    #[error("peer '{0}' is unreachable: {1}")]
    Network(String, String),
    #[error("peer '{0}' is not the gateway we enrolled with: {1}")]
    Untrusted(String, String),
    #[error("peer '{0}' refused our client certificate: {1}")]
    CertificateRefused(String, String),
    #[error("peer '{0}' answered HTTP {1}: {2}")]
    Http(String, u16, String),
    #[error("peer '{0}' sent an invalid response: {1}")]
    InvalidResponse(String, String),
}

impl CallError {
    /// The stable code of DESIGN §5.
    pub fn code(&self) -> String {
        match self {
            Self::NotFound(_) => "peer_not_found".into(),
            Self::Inactive(_) => "peer_inactive".into(),
            Self::Misconfigured(..) => "peer_misconfigured".into(),
            Self::Network(..) => "network".into(),
            Self::Untrusted(..) => "peer_untrusted".into(),
            Self::CertificateRefused(..) => "certificate_refused".into(),
            Self::Http(_, status, _) => format!("http_{status}"),
            Self::InvalidResponse(..) => "invalid_response".into(),
        }
    }

    /// Whether the failure says the peer is down (counts towards opening its circuit).
    fn is_outage(&self) -> bool {
        matches!(self, Self::Network(..)) || matches!(self, Self::Http(_, s, _) if *s >= 500)
    }
}

#[derive(Debug, Default)]
struct Circuit {
    failures: u32,
    open_until: Option<Instant>,
}

/// Per-peer circuit breakers, shared by every call in this process.
#[derive(Debug, Clone, Default)]
pub struct Breakers {
    inner: Arc<Mutex<HashMap<String, Circuit>>>,
    /// Recent call latencies per peer, for its health (p50/p99 over the last hour).
    latencies: Arc<Mutex<HashMap<String, LatencySamples>>>,
    /// When each peer's last success was written to its row (see [`super::peer_status`]).
    successes: super::peer_status::SuccessMemo,
}

/// When each recent call ended and how long it took, in milliseconds.
type LatencySamples = std::collections::VecDeque<(Instant, f64)>;

/// Latency samples kept per peer (the oldest go first; the window is an hour).
const LATENCY_SAMPLES: usize = 10_000;
const LATENCY_WINDOW: std::time::Duration = std::time::Duration::from_secs(3600);

impl Breakers {
    /// `closed`, `open` or `half_open` (the next call probes), as this process sees the peer.
    pub fn state(&self, peer: &str) -> &'static str {
        let map = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match map.get(&peer.to_lowercase()).and_then(|c| c.open_until) {
            Some(until) if Instant::now() < until => "open",
            Some(_) => "half_open",
            None => "closed",
        }
    }

    fn record_latency(&self, peer: &str, ms: f64) {
        let mut map = self.latencies.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let samples = map.entry(peer.to_lowercase()).or_default();
        if samples.len() >= LATENCY_SAMPLES {
            samples.pop_front();
        }
        samples.push_back((Instant::now(), ms));
    }

    /// Calls in the last hour and their latency p50 and p99, in milliseconds.
    pub fn latency(&self, peer: &str) -> (usize, Option<f64>, Option<f64>) {
        let map = self.latencies.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut recent: Vec<f64> = map
            .get(&peer.to_lowercase())
            .map(|s| s.iter().filter(|(at, _)| at.elapsed() < LATENCY_WINDOW).map(|(_, ms)| *ms).collect())
            .unwrap_or_default();
        recent.sort_by(f64::total_cmp);
        let pick = |q: f64| {
            #[expect(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                clippy::cast_precision_loss,
                reason = "an index into a short vector"
            )]
            let i = ((recent.len() as f64 - 1.0) * q).round() as usize;
            recent.get(i).copied()
        };
        (recent.len(), pick(0.5), pick(0.99))
    }

    fn check(&self, peer: &str) -> Result<(), CallError> {
        let mut map = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let circuit = map.entry(peer.to_lowercase()).or_default();
        match circuit.open_until {
            Some(until) if Instant::now() < until => {
                Err(CallError::Network(peer.to_string(), "circuit open after repeated failures; failing fast".into()))
            }
            Some(_) => {
                // Half-open: let this call probe; a failure re-opens at once.
                circuit.open_until = None;
                circuit.failures = FAILURES_TO_OPEN - 1;
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn record(&self, peer: &str, result: Result<(), &CallError>) {
        let mut map = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let circuit = map.entry(peer.to_lowercase()).or_default();
        match result {
            Ok(()) => *circuit = Circuit::default(),
            Err(e) if e.is_outage() => {
                circuit.failures += 1;
                if circuit.failures >= FAILURES_TO_OPEN {
                    circuit.open_until = Some(Instant::now() + OPEN_FOR);
                }
            }
            Err(_) => {}
        }
    }
}

/// One page from a peer, rows tagged with the peer's name.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PeerPage {
    #[schema(value_type = Vec<Object>)]
    pub items: Vec<serde_json::Value>,
    #[serde(rename = "nextCursor", skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Calls peers by name.
#[derive(Debug, Clone)]
pub struct PeerCaller {
    pub pool: PgPool,
    pub sealing: SealingKey,
    pub breakers: Breakers,
}

impl PeerCaller {
    async fn peer(&self, name: &str) -> Result<OutboundPeer, CallError> {
        let state = crate::store::peers::state_by_name(&self.pool, name)
            .await
            .map_err(|e| CallError::Misconfigured(name.into(), e.to_string()))?;
        match state {
            None => return Err(CallError::NotFound(name.into())),
            Some(state) if state.is_callable() => {}
            Some(_) => return Err(CallError::Inactive(name.into())),
        }
        match outbound_peer(&self.pool, &self.sealing, name).await {
            Ok(Some(peer)) => Ok(peer),
            Ok(None) => Err(CallError::NotFound(name.into())),
            Err(e) => Err(CallError::Misconfigured(name.into(), format!("{e:#}"))),
        }
    }

    /// Sends one request to a peer's verb and returns the JSON body. Every outcome is counted
    /// and recorded in the peer's row (last success, last error, refusal streak). The
    /// `peer.call` span is the client side of the trace the peer continues (see `telemetry`).
    #[tracing::instrument(name = "peer.call", level = "debug", skip_all, fields(
        peer = name,
        verb = super::request_audit::verb_of(path),
        otel.kind = "client",
        outcome = tracing::field::Empty,
        error.code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    ))]
    async fn call(
        &self,
        name: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, CallError> {
        use super::peer_status::{CallOutcome, record_call};
        if let Err(e) = self.breakers.check(name) {
            record_call(&self.pool, &self.breakers.successes, name, CallOutcome::CircuitOpen, None).await;
            return Err(e);
        }
        let started = Instant::now();
        let result = self.call_once(name, method, path, body).await;
        self.breakers.record(name, result.as_ref().map(|_| ()));
        self.breakers.record_latency(name, started.elapsed().as_secs_f64() * 1000.0);
        let outcome = match &result {
            Ok(_) => Some(CallOutcome::Ok),
            // A name we do not know is not a peer: no row to record in, and no label to mint.
            Err(CallError::NotFound(_)) => None,
            Err(CallError::Inactive(_)) => Some(CallOutcome::Inactive),
            Err(CallError::Misconfigured(..)) => Some(CallOutcome::Misconfigured),
            Err(CallError::Network(..)) => Some(CallOutcome::Network),
            // Our certificate refused at the handshake (expired, revoked): the peer refuses us.
            Err(CallError::CertificateRefused(..)) => Some(CallOutcome::Refused),
            // The peer's certificate is not signed by the CA we pinned: we cannot call it.
            Err(CallError::Untrusted(..)) => Some(CallOutcome::Misconfigured),
            Err(CallError::Http(_, 401 | 403, _)) => Some(CallOutcome::Refused),
            Err(CallError::Http(_, 429, _)) => Some(CallOutcome::RateLimited),
            Err(CallError::Http(..)) => Some(CallOutcome::HttpError),
            Err(CallError::InvalidResponse(..)) => Some(CallOutcome::InvalidResponse),
        };
        let span = tracing::Span::current();
        match &result {
            Ok(_) => span.record("outcome", "ok"),
            Err(e) => {
                span.record("outcome", "error").record("error.code", e.code()).record("otel.status_code", "ERROR")
            }
        };
        if let Some(outcome) = outcome {
            let cause = result.as_ref().err().map(|e| format!("{} ({e})", e.code()));
            record_call(&self.pool, &self.breakers.successes, name, outcome, cause.as_deref()).await;
        }
        result
    }

    async fn call_once(
        &self,
        name: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, CallError> {
        let peer = self.peer(name).await?;
        let mut req = crate::telemetry::inject(peer.client.request(method, format!("{}{path}", peer.endpoint_url)));
        if let Some(body) = body {
            req = req.json(&body);
        }
        let response = req.send().await.map_err(|e| {
            // A TLS 1.3 server refuses an expired client certificate after the client has
            // finished its half of the handshake, so the alert can lose the race with the
            // request and arrive as a bare "connection closed". Our own expiry is a fact we
            // hold: name it rather than the race.
            match peer.cert_not_after {
                Some(not_after) if not_after <= chrono::Utc::now() => {
                    CallError::CertificateRefused(peer.name.clone(), format!("it expired at {not_after}; {REJOIN}"))
                }
                _ => transport_error(&peer.name, &e),
            }
        })?;
        let status = response.status();
        let text = response.text().await.map_err(|e| transport_error(&peer.name, &e))?;
        if !status.is_success() {
            let envelope = serde_json::from_str::<serde_json::Value>(&text).ok();
            let message = envelope
                .as_ref()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
                .unwrap_or_else(|| text.chars().take(200).collect());
            let message = match envelope.as_ref().and_then(|v| v["error"]["code"].as_str()) {
                Some(code) => format!("{code}: {message}"),
                None => message,
            };
            let message = match status.as_u16() {
                // The guard's 401/403 is deliberately generic; the likely causes are ours to list.
                401 | 403 => format!(
                    "{message}. Our certificate or grant is no longer accepted (revoked, expired or \
                     superseded): {REJOIN}"
                ),
                _ => message,
            };
            return Err(CallError::Http(peer.name, status.as_u16(), message));
        }
        serde_json::from_str(&text).map_err(|e| CallError::InvalidResponse(peer.name, e.to_string()))
    }

    /// One page of `resource` from `peer`, each row's `_source` set to the peer's name.
    ///
    /// # Errors
    /// See [`CallError`].
    pub async fn list(
        &self,
        peer: &str,
        resource: &str,
        limit: Option<u32>,
        cursor: Option<&str>,
    ) -> Result<PeerPage, CallError> {
        let body = list_body(limit, cursor);
        let value =
            self.call(peer, reqwest::Method::POST, &format!("/api/federation/v1/list/{resource}"), Some(body)).await?;
        tagged_page(peer, value)
    }

    /// One page of a search of `resource` on `peer` (`body` as the search verb takes it), each
    /// row's `_source` set to the peer's name.
    ///
    /// # Errors
    /// See [`CallError`].
    pub async fn search(&self, peer: &str, resource: &str, body: serde_json::Value) -> Result<PeerPage, CallError> {
        let value = self
            .call(peer, reqwest::Method::POST, &format!("/api/federation/v1/search/{resource}"), Some(body))
            .await?;
        tagged_page(peer, value)
    }

    /// One row by id from `peer`, tagged with the peer's name.
    ///
    /// # Errors
    /// See [`CallError`].
    pub async fn get(&self, peer: &str, resource: &str, id: &str) -> Result<serde_json::Value, CallError> {
        let mut value =
            self.call(peer, reqwest::Method::POST, &format!("/api/federation/v1/get/{resource}/{id}"), None).await?;
        match value.get_mut("item").and_then(serde_json::Value::as_object_mut) {
            Some(obj) => {
                obj.insert("_source".into(), peer.into());
            }
            None => return Err(CallError::InvalidResponse(peer.into(), "no item".into())),
        }
        Ok(value)
    }

    /// The peer's capabilities for our grant.
    ///
    /// # Errors
    /// See [`CallError`].
    pub async fn capabilities(&self, peer: &str) -> Result<serde_json::Value, CallError> {
        self.call(peer, reqwest::Method::GET, "/api/federation/v1/capabilities", None).await
    }
}

/// The way back for a reader whose certificate the data holder no longer accepts (issue 14, point 2).
pub const REJOIN: &str = "ask the data holder for `tessera grant reenroll <grant>` and run `tessera peer add <url>` \
     with the URL it prints";

/// A failed call classified by its cause, with what to do about it. Messages never carry the URL
/// (reqwest's `Display` embeds it, query string included).
pub fn transport_error(peer: &str, e: &reqwest::Error) -> CallError {
    use crate::connect_failure::ConnectFailure;
    let failure = ConnectFailure::classify(e);
    let name = peer.to_string();
    match &failure {
        ConnectFailure::CertificateRefused { expired: true, .. } => {
            CallError::CertificateRefused(name, format!("it has expired; {REJOIN}"))
        }
        ConnectFailure::CertificateRefused { alert, .. } => CallError::CertificateRefused(
            name,
            format!("TLS alert {alert} (revoked, superseded or from another CA); {REJOIN}"),
        ),
        ConnectFailure::UntrustedServer(_) | ConnectFailure::NameMismatch(_) => CallError::Untrusted(
            name,
            format!(
                "{failure}. The CA pinned at enrollment no longer matches: if the peer replaced its CA, \
                 enroll again with a fresh enrollment URL (`tessera peer add <url>`)"
            ),
        ),
        ConnectFailure::ServerCertificateExpired(_) => CallError::Untrusted(
            name,
            format!("{failure}. Check both clocks; the peer issues a fresh server certificate when it restarts"),
        ),
        ConnectFailure::ConnectionRefused | ConnectFailure::Timeout | ConnectFailure::Dns(_) => {
            CallError::Network(name, format!("{failure}; check that the peer is running and its endpoint URL"))
        }
        ConnectFailure::Other(detail) => CallError::Network(name, strip_url(detail)),
    }
}

/// A list request body with only what is set, as JSON.stringify would send it: a Mosaic peer
/// answers `{"limit": null}` with 400.
fn list_body(limit: Option<u32>, cursor: Option<&str>) -> serde_json::Value {
    let mut body = serde_json::Map::new();
    if let Some(limit) = limit {
        body.insert("limit".into(), limit.into());
    }
    if let Some(cursor) = cursor {
        body.insert("cursor".into(), cursor.into());
    }
    serde_json::Value::Object(body)
}

/// reqwest errors embed the URL; keep the message short and free of query strings.
fn strip_url(message: &str) -> String {
    let mut e = message.to_string();
    if let Some(i) = e.find(" for url") {
        e.truncate(i);
    }
    e
}

/// A page of list or search from `peer`, each item's `_source` set to the peer's name.
fn tagged_page(peer: &str, value: serde_json::Value) -> Result<PeerPage, CallError> {
    let mut page: PeerPage =
        serde_json::from_value(value).map_err(|e| CallError::InvalidResponse(peer.into(), e.to_string()))?;
    for item in &mut page.items {
        let Some(obj) = item.as_object_mut() else {
            return Err(CallError::InvalidResponse(peer.into(), "an item is not an object".into()));
        };
        obj.insert("_source".into(), peer.into());
    }
    Ok(page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_circuit_opens_after_repeated_outages_and_half_opens_later() {
        let b = Breakers::default();
        let down = CallError::Network("b".into(), "refused".into());
        for _ in 0..FAILURES_TO_OPEN {
            assert!(b.check("b").is_ok());
            b.record("b", Err(&down));
        }
        let e = b.check("B").unwrap_err();
        assert_eq!(e.code(), "network");
        assert!(e.to_string().contains("circuit open"));
        assert!(b.check("other").is_ok(), "circuits are per peer");
        // A 404 from a live peer is not an outage.
        let c = Breakers::default();
        for _ in 0..5 {
            c.record("b", Err(&CallError::Http("b".into(), 404, "x".into())));
        }
        assert!(c.check("b").is_ok());
        // After the cool-down one probe goes through; success closes the circuit.
        b.inner.lock().unwrap().get_mut("b").unwrap().open_until = Some(Instant::now());
        assert!(b.check("b").is_ok());
        b.record("b", Ok(()));
        assert!(b.check("b").is_ok());
    }

    #[test]
    fn list_bodies_carry_no_nulls() {
        assert_eq!(super::list_body(None, None).to_string(), "{}");
        assert_eq!(super::list_body(Some(5), None).to_string(), r#"{"limit":5}"#);
        assert_eq!(super::list_body(None, Some("c")).to_string(), r#"{"cursor":"c"}"#);
    }

    #[test]
    fn codes_follow_the_design() {
        assert_eq!(CallError::NotFound("x".into()).code(), "peer_not_found");
        assert_eq!(CallError::Inactive("x".into()).code(), "peer_inactive");
        assert_eq!(CallError::Misconfigured("x".into(), "y".into()).code(), "peer_misconfigured");
        assert_eq!(CallError::Http("x".into(), 403, "y".into()).code(), "http_403");
        assert_eq!(CallError::Untrusted("x".into(), "y".into()).code(), "peer_untrusted");
        assert_eq!(CallError::CertificateRefused("x".into(), "y".into()).code(), "certificate_refused");
        assert_eq!(CallError::InvalidResponse("x".into(), "y".into()).code(), "invalid_response");
    }
}
