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

/// Histogram: request latency by route template and status class.
pub const REQUEST_SECONDS: &str = "tessera_http_request_duration_seconds";
/// Counter: federation requests by verb, outcome and deny code (one per audit row).
pub const FEDERATION_REQUESTS: &str = "tessera_federation_requests_total";
/// Gauge: audit rows waiting in the writer's buffer.
pub const AUDIT_QUEUE_DEPTH: &str = "tessera_audit_queue_depth";
/// Histogram: time to write one audit batch.
pub const AUDIT_BATCH_SECONDS: &str = "tessera_audit_batch_duration_seconds";
/// Counter: audit rows lost, by cause (`buffer_full`, `write_failed`); each loss is also a gap row.
pub const AUDIT_ROWS_LOST: &str = "tessera_audit_rows_lost_total";
/// Counter: job outcomes (`done`, `retry`, `failed`, `dead`).
pub const JOB_OUTCOMES: &str = "tessera_queue_job_outcomes_total";
/// Gauge: pending jobs per queue.
pub const QUEUE_DEPTH: &str = "tessera_queue_depth";
/// Gauge: age in seconds of the oldest pending job per queue (0 when none).
pub const QUEUE_OLDEST_SECONDS: &str = "tessera_queue_oldest_pending_seconds";
/// Gauges: outbox deliveries pending (or in flight) and dead, per endpoint.
pub const OUTBOX_PENDING: &str = "tessera_outbox_pending";
pub const OUTBOX_DEAD: &str = "tessera_outbox_dead";
/// Histogram: webhook delivery attempts by outcome.
pub const DELIVERY_SECONDS: &str = "tessera_outbox_delivery_duration_seconds";
/// Gauge: database pool connections by pool (`main`, `peer_reads`) and state (`in_use`, `idle`).
pub const POOL_CONNECTIONS: &str = "tessera_db_pool_connections";
/// Gauge: each pool's `max_connections`, so `in_use / max` is its saturation.
pub const POOL_MAX_CONNECTIONS: &str = "tessera_db_pool_max_connections";
/// Gauge: how long the sampler's own `acquire()` waited for a connection at its last sample
/// (every 5 s), per pool: about 0 while a connection is idle, the time to open one while the
/// pool grows, and the queueing delay every caller then sees once the pool is exhausted.
/// sqlx does not expose how many tasks wait for a connection; this is the wait itself, probed.
pub const POOL_ACQUIRE_WAIT_SECONDS: &str = "tessera_db_pool_acquire_wait_seconds";
/// The longest the probe waits; past it the gauge shows this bound (the pool is saturated).
const ACQUIRE_PROBE_CAP: Duration = Duration::from_secs(2);

/// Every metric name this process exports (the README table and the dashboard test use it).
pub const EXPORTED: &[&str] = &[
    "tessera_http_requests_total",
    REQUEST_SECONDS,
    FEDERATION_REQUESTS,
    crate::federation::guard::DECISIONS_METRIC,
    crate::federation::guard::UNCONFIRMED_METRIC,
    AUDIT_QUEUE_DEPTH,
    AUDIT_BATCH_SECONDS,
    AUDIT_ROWS_LOST,
    JOB_OUTCOMES,
    QUEUE_DEPTH,
    QUEUE_OLDEST_SECONDS,
    OUTBOX_PENDING,
    OUTBOX_DEAD,
    DELIVERY_SECONDS,
    POOL_CONNECTIONS,
    POOL_MAX_CONNECTIONS,
    POOL_ACQUIRE_WAIT_SECONDS,
    crate::tls::HANDSHAKE_FAILURES_METRIC,
    crate::tls::ACCEPT_ERRORS_METRIC,
    crate::tls::OPEN_CONNECTIONS_METRIC,
    crate::federation::enrollment::UNKNOWN_TOKENS_METRIC,
    crate::services::valkey::FAILURES_METRIC,
    "tessera_valkey_up",
];

/// Samples the gauges that live in the database (queue, outbox) and the pools, every `every`,
/// until `stop` changes. Errors are logged once per sample and the gauges keep their values.
pub async fn sample(
    pool: sqlx::PgPool,
    peer_reads: sqlx::PgPool,
    every: std::time::Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        if let Err(e) = sample_once(&pool, &peer_reads).await {
            tracing::debug!(error = %e, "sampling metrics failed");
        }
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
    }
}

async fn sample_once(pool: &sqlx::PgPool, peer_reads: &sqlx::PgPool) -> Result<(), sqlx::Error> {
    for (name, p) in [("main", pool), ("peer_reads", peer_reads)] {
        let (size, idle) = (f64::from(p.size()), p.num_idle() as f64);
        metrics::gauge!(POOL_CONNECTIONS, "pool" => name, "state" => "in_use").set(size - idle);
        metrics::gauge!(POOL_CONNECTIONS, "pool" => name, "state" => "idle").set(idle);
        metrics::gauge!(POOL_MAX_CONNECTIONS, "pool" => name).set(f64::from(p.options().get_max_connections()));
        // Queued behind every caller already waiting (sqlx hands connections out fairly); the
        // connection goes straight back to the pool.
        let started = Instant::now();
        let probe = tokio::time::timeout(ACQUIRE_PROBE_CAP, p.acquire()).await;
        let waited = started.elapsed().min(ACQUIRE_PROBE_CAP);
        drop(probe);
        metrics::gauge!(POOL_ACQUIRE_WAIT_SECONDS, "pool" => name).set(waited.as_secs_f64());
    }
    let queues = sqlx::query!(
        r#"select queue, count(*) filter (where status = 'pending') as "depth!",
                coalesce(extract(epoch from now() - min(run_at) filter (where status = 'pending' and run_at <= now())), 0)::float8 as "oldest!"
           from queue.jobs group by queue"#,
    )
    .fetch_all(pool)
    .await?;
    for q in queues {
        let (queue, depth, oldest) = (q.queue, q.depth, q.oldest);
        metrics::gauge!(QUEUE_DEPTH, "queue" => queue.clone()).set(depth as f64);
        metrics::gauge!(QUEUE_OLDEST_SECONDS, "queue" => queue).set(oldest);
    }
    let outbox = sqlx::query!(
        r#"select e.id, count(d.id) filter (where d.status in ('pending', 'inflight')) as "pending!",
                count(d.id) filter (where d.status = 'dead') as "dead!"
           from outbox.webhook_endpoints e left join outbox.deliveries d on d.endpoint_id = e.id
          group by e.id"#,
    )
    .fetch_all(pool)
    .await?;
    for o in outbox {
        let (endpoint, pending, dead) = (o.id, o.pending, o.dead);
        metrics::gauge!(OUTBOX_PENDING, "endpoint" => endpoint.to_string()).set(pending as f64);
        metrics::gauge!(OUTBOX_DEAD, "endpoint" => endpoint.to_string()).set(dead as f64);
    }
    Ok(())
}

/// Installs the global recorder once and returns its handle. When another recorder was
/// installed first (a test harness, an embedding program), `/metrics` renders an empty registry
/// instead of failing.
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
            .unwrap_or_else(|_| PrometheusBuilder::new())
            .build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics will stay empty");
        }
        metrics::describe_counter!(crate::services::valkey::FAILURES_METRIC, "Failed Valkey operations");
        // Losses are rare: export the series at zero from the start, so a dashboard or an alert
        // sees 0, not "no data".
        for cause in ["buffer_full", "write_failed"] {
            metrics::counter!(AUDIT_ROWS_LOST, "cause" => cause).increment(0);
        }
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
    // The route template, never the path itself: bounded cardinality.
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |m| m.as_str().to_string());
    let started = std::time::Instant::now();
    let response = next.run(req).await;
    let class = match response.status().as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    metrics::counter!("tessera_http_requests_total", "method" => method, "status" => class).increment(1);
    metrics::histogram!(REQUEST_SECONDS, "route" => route, "status" => class).record(started.elapsed().as_secs_f64());
    response
}

/// The metric names a dashboard expression references (`tessera_...`, without the histogram
/// suffixes `_bucket`, `_sum` and `_count`).
pub fn referenced_metrics(dashboard: &serde_json::Value) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut stack = vec![dashboard];
    while let Some(v) = stack.pop() {
        match v {
            serde_json::Value::Object(map) => {
                if let Some(serde_json::Value::String(expr)) = map.get("expr") {
                    for (i, _) in expr.match_indices("tessera_") {
                        let name: String = expr[i..]
                            .chars()
                            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                            .collect();
                        let base = ["_bucket", "_sum", "_count"]
                            .iter()
                            .find_map(|suffix| name.strip_suffix(suffix))
                            .unwrap_or(&name)
                            .to_string();
                        names.insert(base);
                    }
                }
                stack.extend(map.values());
            }
            serde_json::Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    names
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_dashboard_uses_only_exported_metrics() {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/ops/grafana/tessera.json")).unwrap();
        let names = super::referenced_metrics(&serde_json::from_str(&text).unwrap());
        assert!(names.len() >= 10, "{names:?}");
        for name in &names {
            assert!(
                super::EXPORTED.contains(&name.as_str()),
                "the dashboard uses {name}, which tessera does not export"
            );
        }
    }

    #[test]
    fn the_readme_documents_every_exported_metric() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
        for name in super::EXPORTED {
            assert!(readme.contains(&format!("`{name}`")), "README.md does not document {name}");
        }
    }
}
