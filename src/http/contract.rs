//! The answers every route shares, written into the OpenAPI document once.
//!
//! The document is checked against a running gateway by schemathesis (`--checks all`, see
//! `tests/gateway.rs::openapi_contract_holds_under_schemathesis`), so it must list every status a
//! route can answer. Some statuses do not come from a handler but from what every route shares,
//! and writing them into each of the 70 annotations by hand is how they went missing before:
//!
//! - a required JSON request body goes through [`crate::http::extract::Json`]: `400` (not JSON, a
//!   field of the wrong type, a NUL character), `413` (over the body limit) and `415` (no JSON
//!   `Content-Type`); an optional one (the peer-facing `list`) is read as bytes: `400`, `413`;
//! - path and query parameters go through [`crate::http::extract::Path`] / `Query`: `400`;
//! - the admin plane (`/api/admin/...`, and the enrollment-token route) needs an admin credential:
//!   the bearer token or the session cookie, `401` without a valid one, `403` for a non-admin or
//!   a cross-site write with the cookie;
//! - a cookie-authenticated write elsewhere (`/api/auth/...`) can be refused as cross-site: `403`;
//! - the peer-facing verbs (`/api/federation/v1/...`) are authenticated by the client certificate
//!   (security scheme `mutualTLS`): `401` without one, `403` for any refusal by the guard or the
//!   scope, `429` over the grant's rate limit and `503` when the shared limiter (Valkey) is down.
//!
//! A handler's own annotation keeps the statuses only it knows (404, 409, 410 ...) and its
//! descriptions; [`complete`] adds only what is missing, so a more precise description wins.
//!
//! Field bounds, patterns and formats live on the types (`#[schema(...)]`, `#[param(...)]`), next
//! to the code that enforces them. The few rules that tie two fields together, which derive
//! macros cannot say, are added here by [`cross_field_rules`], each naming the code it mirrors.

use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::security::{SecurityRequirement, SecurityScheme};
use utoipa::openapi::{Components, OpenApi, RefOr, Response, ResponseBuilder};

use super::error::ErrorEnvelope;

/// A string with at least one character that is not white space, as Rust's `trim` sees it
/// (the pattern the texts of the data API state; written out because `\s` differs).
const NON_BLANK: &str = r"[^\t\n\u000b\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]";

/// The name of the mutual-TLS security scheme of the peer-facing verbs.
pub const MTLS: &str = "mtls";

/// Adds the shared statuses and security requirements to every operation of `doc`, and the
/// rules between fields.
pub fn complete(mut doc: OpenApi) -> serde_json::Value {
    shared_answers(&mut doc);
    let mut value = serde_json::to_value(&doc).expect("the OpenAPI document always serialises");
    cross_field_rules(&mut value);
    value
}

/// The rules between fields of a request body, as JSON Schema, keyed by component name.
///
/// - `GrantScope` (`federation/scope.rs::GrantScope::validate`): the resource names, at least one
///   granted, none twice. (Two more rules, a resource not both granted and excluded and `filters`
///   naming only granted resources, are said in the schema's description only: as `if`/`then`
///   schemathesis cannot generate from them. Its positive cases are made to keep them by the
///   contract test's hooks.)
/// - `NewProject` (`admin/data/records.rs::create_project`): exactly one of `ownerUserId` and
///   `teamId`;
/// - `NewTask` (`create_task`): at least one of `projectId` and `missionId`;
/// - `DrainRequest` (`queue/routes.rs::drain`): `confirm` must be `true`;
/// - `ListRequest` (`federation/scope.rs::parse_limit`): `limit` is a positive integer or a string
///   of digits naming one, as Mosaic's `parseLimit` accepts.
///
/// And the lists a field's values come from, written from the constants the code checks against:
/// scope resources, webhook event names, and the single-precision range of an embedding.
fn cross_field_rules(doc: &mut serde_json::Value) {
    use serde_json::json;
    let Some(schemas) = doc.pointer_mut("/components/schemas").and_then(serde_json::Value::as_object_mut) else {
        return;
    };
    let uuid = json!({"type": "string", "format": "uuid"});
    if let Some(scope) = schemas.get_mut("GrantScope").and_then(serde_json::Value::as_object_mut) {
        scope.insert(
            "description".into(),
            json!(
                "A grant's scope. Besides the schema: a resource may not be both in `resources` and in \
                   `excluded_resources`, and `filters` may only name resources in `resources`."
            ),
        );
        let known = json!({"type": "string", "enum": crate::rbac::Resource::NAMES});
        if let Some(props) = scope.get_mut("properties") {
            props["resources"]["minItems"] = json!(1);
            props["resources"]["uniqueItems"] = json!(true);
            props["resources"]["items"] = known.clone();
            props["excluded_resources"]["items"] = known.clone();
            props["filters"]["propertyNames"] = known;
        }
    }
    if let Some(project) = schemas.get_mut("NewProject").and_then(serde_json::Value::as_object_mut) {
        project.insert(
            "oneOf".into(),
            json!([
                {"required": ["ownerUserId"], "properties": {"ownerUserId": uuid, "teamId": {"type": "null"}}},
                {"required": ["teamId"], "properties": {"teamId": uuid, "ownerUserId": {"type": "null"}}},
            ]),
        );
    }
    if let Some(task) = schemas.get_mut("NewTask").and_then(serde_json::Value::as_object_mut) {
        task.insert(
            "anyOf".into(),
            json!([
                {"required": ["projectId"], "properties": {"projectId": uuid}},
                {"required": ["missionId"], "properties": {"missionId": uuid}},
            ]),
        );
    }
    if let Some(events) = doc.pointer_mut("/components/schemas/CreateWebhook/properties/events") {
        let mut names: Vec<&str> = crate::outbox::webhooks::EVENTS.to_vec();
        names.push("*");
        events["items"] = json!({"type": "string", "enum": names});
    }
    if let Some(embedding) = doc.pointer_mut("/components/schemas/NewInsight/properties/embedding") {
        // f32::MAX, a little under, so that no value rounds to infinity.
        embedding["items"] = json!({"type": "number", "minimum": -3.4e38, "maximum": 3.4e38});
    }
    if let Some(relevance) = doc.pointer_mut("/components/schemas/NewInsight/properties/relevanceScore") {
        relevance["minimum"] = json!(-3.4e38);
        relevance["maximum"] = json!(3.4e38);
    }
    if let Some(tags) = doc.pointer_mut("/components/schemas/NewTask/properties/tags") {
        // `records.rs::tags`: each tag as `text` checks it, non-blank and at most 100 characters.
        tags["items"] = json!({"type": "string", "minLength": 1, "maxLength": 100, "pattern": NON_BLANK});
    }
    if let Some(limit) = doc.pointer_mut("/components/schemas/ListRequest/properties/limit") {
        *limit = json!({"oneOf": [
            {"type": "integer", "minimum": 1, "maximum": 9_007_199_254_740_991_u64},
            {"type": "string", "pattern": "^0*[1-9][0-9]{0,17}$"},
            {"type": "null"},
        ], "description": "A positive integer, or a string of one (`\"10\"`), capped at the grant's `max_rows_per_query` (the default)."});
    }
    if let Some(confirm) = doc.pointer_mut("/components/schemas/DrainRequest/properties/confirm") {
        confirm["const"] = json!(true);
    }
}

fn shared_answers(doc: &mut OpenApi) {
    let components = doc.components.get_or_insert_with(Components::new);
    components.add_security_scheme(
        MTLS,
        SecurityScheme::MutualTls {
            description: Some(
                "A client certificate signed by this gateway's CA for a grant (issued by enrollment, renewed \
                 with `renew`), carrying the grant id and subject id in the extensions 1.3.6.1.4.1.99999.1 and \
                 .2. Checked at the TLS handshake and again on every request against the grant as stored."
                    .to_string(),
            ),
            deprecated: None,
            extensions: None,
        },
    );
    for (path, item) in &mut doc.paths.paths {
        let operations = [
            ("get", &mut item.get),
            ("put", &mut item.put),
            ("post", &mut item.post),
            ("delete", &mut item.delete),
            ("patch", &mut item.patch),
        ];
        for (method, op) in operations {
            if let Some(op) = op {
                complete_operation(path, method, op);
            }
        }
    }
}

fn complete_operation(path: &str, method: &str, op: &mut Operation) {
    let admin = path.starts_with("/api/admin/") || path == "/api/federation/enrollment/tokens";
    let peer_facing = path.starts_with("/api/federation/v1/");
    if admin && op.security.is_none() {
        op.security = Some(vec![
            SecurityRequirement::new("bearer", Vec::<String>::new()),
            SecurityRequirement::new("session", Vec::<String>::new()),
        ]);
    }
    if peer_facing {
        op.security = Some(vec![SecurityRequirement::new(MTLS, Vec::<String>::new())]);
    }
    let has_params = op.parameters.as_ref().is_some_and(|params| {
        params
            .iter()
            .any(|p| matches!(p, RefOr::T(p) if matches!(p.parameter_in, ParameterIn::Path | ParameterIn::Query)))
    });
    let body_required = match &op.request_body {
        None => None,
        Some(RefOr::T(b)) => Some(matches!(b.required, Some(utoipa::openapi::Required::True))),
        Some(RefOr::Ref(_)) => Some(true),
    };
    if let Some(required) = body_required {
        add(
            op,
            "400",
            "The body is not valid JSON, a field is missing or invalid (`details.field`), or a text holds a NUL character",
        );
        add(op, "413", "The body is over the size limit");
        // A required body is read by the `Json` extractor, which wants the JSON content type; an
        // optional one (the peer-facing `list`, as in Mosaic) is read as bytes whatever its type.
        if required {
            add(op, "415", "The body is not sent as `Content-Type: application/json`");
        }
    }
    if has_params {
        add(op, "400", "A path or query parameter is invalid (`details.field`)");
    }
    let session_write = method != "get" && op.security.iter().flatten().any(is_session);
    if admin {
        add(op, "401", "No valid credential");
        add(op, "403", "Not an admin, or a cross-site write with the session cookie");
    } else if op.security.iter().flatten().any(|s| !is_mtls(s)) {
        add(op, "401", "No valid credential");
    }
    if session_write {
        add(op, "403", "A cross-site write with the session cookie");
    }
    if peer_facing {
        add(op, "401", "No client certificate");
        add(op, "403", "Access denied (grant, peer, certificate, subject or scope; the reason is in the audit log)");
        add(op, "429", "Over the grant's rate limit (`Retry-After`)");
        add(op, "503", "The shared rate limiter is unreachable (`Retry-After`)");
    }
}

fn is_session(s: &SecurityRequirement) -> bool {
    serde_json::to_value(s).is_ok_and(|v| v.get("session").is_some())
}

fn is_mtls(s: &SecurityRequirement) -> bool {
    serde_json::to_value(s).is_ok_and(|v| v.get(MTLS).is_some())
}

/// Adds `status` with the error envelope unless the operation already documents it.
fn add(op: &mut Operation, status: &str, description: &str) {
    op.responses.responses.entry(status.to_string()).or_insert_with(|| RefOr::T(envelope(description)));
}

fn envelope(description: &str) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            utoipa::openapi::ContentBuilder::new()
                .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                    <ErrorEnvelope as utoipa::ToSchema>::name(),
                ))))
                .build(),
        )
        .build()
}
