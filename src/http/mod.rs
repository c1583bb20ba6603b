//! The HTTP surface: one router for every route, its OpenAPI document, and the per-request
//! middleware stack.

pub mod contract;
pub mod error;
pub mod extract;
pub mod health;
pub mod limits;
pub mod metrics;

use std::sync::OnceLock;

use axum::Router;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::AppState;

#[derive(OpenApi)]
#[openapi(
    info(title = "tessera", description = "Federated HTTP gateway: peers read a scoped slice of local data over mutual TLS."),
    components(schemas(error::ErrorEnvelope, error::ErrorBody, error::ErrorCode)),
    tags(
        (name = "health", description = "Liveness, readiness and this document"),
        (name = "federation", description = "Peer-facing federation endpoints"),
        (name = "admin", description = "Admin plane: requires an admin token or session"),
        (name = "queue", description = "The embedded job queue: stats, pause, resume, drain, retry (admin)"),
        (name = "webhooks", description = "Webhook endpoints, outbox dead letters and replay (admin)"),
    )
)]
struct ApiDoc;

/// Every route with its OpenAPI metadata. Each area contributes a router with full paths; the
/// admin plane mounts the queue's. `peer_verbs` are the federation verbs, guarded when served
/// ([`crate::federation::guarded_verbs`]) and bare for the document (layers do not change it).
fn api_router(peer_verbs: OpenApiRouter<AppState>) -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(health::openapi_json))
        .routes(routes!(metrics::metrics))
        .merge(crate::admin::router())
        .merge(crate::federation::router(peer_verbs))
        .merge(crate::outbox::routes::router())
}

/// The OpenAPI document generated from the code.
///
/// As a JSON value: the rules between fields that [`contract::complete`] adds have no typed form
/// in utoipa.
pub fn openapi_document() -> serde_json::Value {
    contract::complete(api_router(crate::federation::verbs()).split_for_parts().1)
}

/// The document as pretty JSON with a trailing newline, exactly as committed in `openapi/tessera.json`.
pub fn openapi_document_json() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut json =
            serde_json::to_string_pretty(&openapi_document()).expect("the OpenAPI document always serialises");
        json.push('\n');
        json
    })
}

/// The application router with its middleware.
///
/// Layer order (outermost first): the request id is set before tracing so every log line of the
/// request carries it; it is propagated to the response after the handler; the request counter
/// sits inside it and outside the panic catcher, so a panic is counted as the 500 it becomes;
/// the federation audit layer sits inside the counter and outside the header limit and the
/// panic catcher, so a 431 or a panic on a federation route still leaves its one audit row;
/// panics are caught innermost so the trace layer still records the resulting 500. The trace
/// layer's `request` span continues an incoming W3C `traceparent` when traces are exported
/// (see [`crate::telemetry`]) and carries the trace id that log lines print.
pub fn router(state: AppState) -> Router {
    let (router, _) = api_router(crate::federation::guarded_verbs(&state)).split_for_parts();
    router
        .fallback(error::not_found_fallback)
        .method_not_allowed_fallback(error::method_not_allowed_fallback)
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
                .layer(
                    TraceLayer::new_for_http()
                        .make_span_with(|req: &axum::http::Request<_>| {
                            let request_id =
                                req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("-");
                            // The trace's server span: an incoming `traceparent` is its parent, and
                            // its trace id is printed with every log line of the request.
                            let span = tracing::info_span!(
                                "request",
                                method = %req.method(),
                                path = %req.uri().path(),
                                request_id,
                                trace_id = tracing::field::Empty,
                                otel.kind = tracing::field::Empty,
                                http.response.status_code = tracing::field::Empty,
                            );
                            crate::telemetry::adopt_remote_parent(&span, req.headers());
                            span
                        })
                        .on_response(
                            |res: &axum::http::Response<_>, latency: std::time::Duration, span: &tracing::Span| {
                                // Only for the trace: log lines keep the fields they always had.
                                if crate::telemetry::enabled() {
                                    span.record("http.response.status_code", res.status().as_u16());
                                }
                                tracing::debug!(
                                    target: "tower_http::trace::on_response",
                                    status = res.status().as_u16(),
                                    ?latency,
                                    "finished processing request"
                                );
                            },
                        ),
                )
                .layer(PropagateRequestIdLayer::x_request_id())
                .layer(axum::middleware::from_fn(metrics::count_requests))
                .layer(axum::middleware::from_fn_with_state(
                    state.clone(),
                    crate::federation::request_audit::one_row_per_request,
                ))
                .layer(axum::middleware::from_fn(limits::header_size))
                .layer(CatchPanicLayer::custom(error::panic_response)),
        )
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    #[test]
    fn committed_openapi_document_matches_the_code() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/tessera.json");
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == super::openapi_document_json(),
            "openapi/tessera.json is out of date with the routes in the code; regenerate it with `make openapi` \
             (cargo run --quiet -- openapi > openapi/tessera.json) and commit the result"
        );
    }

    #[derive(serde::Deserialize)]
    #[expect(dead_code, reason = "only deserialised")]
    struct Body1 {
        email: String,
    }

    async fn echo(super::extract::Json(_): super::extract::Json<Body1>) -> StatusCode {
        StatusCode::NO_CONTENT
    }

    async fn call(body: &'static str, content_type: &str) -> (StatusCode, serde_json::Value) {
        let app = axum::Router::new().route("/x", axum::routing::post(echo));
        let req = Request::post("/x").header("content-type", content_type).body(Body::from(body)).unwrap();
        let resp = app.oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
    }

    #[tokio::test]
    async fn body_rejections_use_the_envelope() {
        let (status, body) = call("{not json", "application/json").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"]["code"], "invalid_request");

        let (status, body) = call("{\"name\": 1}", "application/json").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body["error"]["message"].as_str().unwrap().contains("email"), "{body}");

        let (status, body) = call("{\"email\": \"a\"}", "text/plain").await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert_eq!(body["error"]["code"], "invalid_request");

        let (status, _) = call("{\"email\": \"a\"}", "application/json").await;
        assert_eq!(status, StatusCode::NO_CONTENT);
    }
}
