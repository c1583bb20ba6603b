//! Prometheus metrics: the process-wide recorder, `GET /metrics`, and a cheap per-request
//! counter layer.
//!
//! Counters: `tessera_http_requests_total{method, status}` (status class `2xx`...`5xx`, never
//! the path, to keep cardinality bounded) and `tessera_valkey_failures_total` (every failed
//! Valkey operation: boot probe, rate-limit round trip, readiness ping). The gauge
//! `tessera_valkey_up` is 1 while the last readiness check reached Valkey, 0 after a failure.
//! `tessera_federation_guard_decisions_total{source}` and
//! `tessera_federation_guard_unconfirmed_total` show how often the list verb's remembered guard
//! decision was used and how often its page statement sent it back (see `federation::guard`).
//!
//! Certificates and peers (see `federation::peer_status`): the gauges
//! `tessera_ca_certificate_expiry_timestamp_seconds`,
//! `tessera_server_certificate_expiry_timestamp_seconds` and
//! `tessera_peer_client_certificate_expiry_timestamp_seconds{peer}` (notAfter, unix seconds; the
//! CA and peer gauges are read from the database at most every few seconds when scraped, so
//! every replica reports renewals done by another), and the counters
//! `tessera_peer_calls_total{peer, outcome}` and `tessera_peer_renewals_total{peer, outcome}`.

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::app::AppState;
use crate::federation::peer_status;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the global recorder once and returns its handle. When another recorder was
/// installed first (a test harness, an embedding program), `/metrics` renders an empty registry
/// instead of failing.
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics will stay empty");
        }
        metrics::describe_counter!(crate::services::valkey::FAILURES_METRIC, "Failed Valkey operations");
        metrics::describe_counter!("tessera_http_requests_total", "HTTP requests by method and status class");
        metrics::describe_gauge!("tessera_valkey_up", "1 while Valkey answered the last readiness check");
        metrics::describe_counter!(
            crate::federation::guard::DECISIONS_METRIC,
            "Federation guard decisions, read from the database or remembered for the page statement to confirm"
        );
        metrics::describe_counter!(
            crate::federation::guard::UNCONFIRMED_METRIC,
            "Remembered guard decisions the page statement did not confirm"
        );
        metrics::describe_gauge!(peer_status::CA_EXPIRY_METRIC, "notAfter of the federation CA (unix seconds)");
        metrics::describe_gauge!(
            peer_status::SERVER_CERT_EXPIRY_METRIC,
            "notAfter of the TLS server certificate (unix seconds)"
        );
        metrics::describe_gauge!(
            peer_status::PEER_CERT_EXPIRY_METRIC,
            "notAfter of our client certificate for each peer we call (unix seconds)"
        );
        metrics::describe_counter!(peer_status::CALLS_METRIC, "Calls to peers by peer and outcome");
        metrics::describe_counter!(peer_status::RENEWALS_METRIC, "Client-certificate renewals by peer and outcome");
        handle
    })
}

/// Scrapes read certificate expiries from the database at most this often (the endpoint is
/// public, so a scrape storm must not become a query storm).
const EXPIRY_REFRESH: Duration = Duration::from_secs(5);

/// Prometheus text exposition of this process's metrics.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    static REFRESHED: Mutex<Option<Instant>> = Mutex::new(None);
    let due = {
        let mut last = REFRESHED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let due = last.is_none_or(|t| t.elapsed() >= EXPIRY_REFRESH);
        if due {
            *last = Some(Instant::now());
        }
        due
    };
    let handle = install();
    if due && let Err(e) = peer_status::refresh_expiry_gauges(&state.pool).await {
        tracing::warn!(error = %e, "could not read certificate expiries for /metrics");
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], handle.render()).into_response()
}

/// Counts every response by method and status class. Methods outside the standard set count as
/// `other`: a label copied from the request would let any client mint new time series.
pub async fn count_requests(req: Request, next: Next) -> Response {
    use axum::http::Method;
    let method = match *req.method() {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    };
    let response = next.run(req).await;
    let class = match response.status().as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    metrics::counter!("tessera_http_requests_total", "method" => method, "status" => class).increment(1);
    response
}
