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

use std::sync::OnceLock;

use axum::extract::Request;
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

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
        handle
    })
}

/// Prometheus text exposition of this process's metrics.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub async fn metrics() -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], install().render()).into_response()
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
