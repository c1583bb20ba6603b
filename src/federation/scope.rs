//! Grant scopes (DESIGN §4): the Mosaic-compatible JSON document, its validation, and (for the
//! verbs) its staged evaluation against native RBAC.
//!
//! ```json
//! {"resources": ["tasks", "notes"], "excluded_resources": ["memory"],
//!  "filters": {"tasks": {"include_teams": ["<uuid>"], "include_personal": true}},
//!  "max_rows_per_query": 100}
//! ```
//! Unknown fields are rejected at every level so a typo (`"include_team"`) can never silently
//! widen or narrow a grant.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::rbac::Resource;

/// Upper bound of `max_rows_per_query`.
pub const MAX_ROWS_CAP: u32 = 10_000;
/// `max_rows_per_query` when the scope does not set it.
pub const DEFAULT_MAX_ROWS: u32 = 100;

/// A grant's scope as stored (`federation_grants.scope`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GrantScope {
    /// Non-empty; drawn from tasks, notes, memory, credentials, api_keys.
    pub resources: Vec<String>,
    /// Must not overlap `resources`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excluded_resources: Vec<String>,
    /// Per-resource narrowing; every key must be in `resources`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub filters: BTreeMap<String, ResourceFilter>,
    /// 1..=10000; the cap on (and default of) a request's `limit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(deserialize_with = "crate::http::extract::integer::optional")]
    #[schema(minimum = 1, maximum = 10000)]
    pub max_rows_per_query: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResourceFilter {
    /// Only these teams (intersected with the subject's own teams). Absent: all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_teams: Option<Vec<Uuid>>,
    /// Whether personal data is visible; defaults to true.
    #[serde(default = "yes")]
    pub include_personal: bool,
}

fn yes() -> bool {
    true
}

/// A validation failure naming the field at fault (`scope.resources[1]`, ...).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ScopeError {
    pub field: String,
    pub message: String,
}

fn err(field: impl Into<String>, message: impl Into<String>) -> ScopeError {
    ScopeError { field: field.into(), message: message.into() }
}

impl GrantScope {
    /// Parses and validates a scope document.
    ///
    /// # Errors
    /// A [`ScopeError`] naming the first field that breaks a rule.
    pub fn parse(value: &serde_json::Value) -> Result<Self, ScopeError> {
        let scope: GrantScope = serde_json::from_value(value.clone()).map_err(|e| {
            let msg = e.to_string();
            // serde says "unknown field `x`, expected one of ..."; name the field when it can.
            let field = msg
                .split('`')
                .nth(1)
                .filter(|_| msg.starts_with("unknown field") || msg.starts_with("missing field"))
                .map_or_else(|| "scope".to_string(), |f| format!("scope.{f}"));
            err(field, msg)
        })?;
        scope.validate()?;
        Ok(scope)
    }

    /// Checks the rules of DESIGN §4.
    ///
    /// # Errors
    /// A [`ScopeError`] naming the first field that breaks a rule.
    pub fn validate(&self) -> Result<(), ScopeError> {
        if self.resources.is_empty() {
            return Err(err("scope.resources", "must name at least one resource"));
        }
        for (i, r) in self.resources.iter().enumerate() {
            if Resource::parse(r).is_none() {
                return Err(err(
                    format!("scope.resources[{i}]"),
                    format!("unknown resource '{r}' (expected one of {})", Resource::NAMES.join(", ")),
                ));
            }
            if self.resources[..i].contains(r) {
                return Err(err(format!("scope.resources[{i}]"), format!("'{r}' is listed twice")));
            }
        }
        for (i, r) in self.excluded_resources.iter().enumerate() {
            if Resource::parse(r).is_none() {
                return Err(err(format!("scope.excluded_resources[{i}]"), format!("unknown resource '{r}'")));
            }
            if self.resources.contains(r) {
                return Err(err(
                    format!("scope.excluded_resources[{i}]"),
                    format!("'{r}' is both granted in resources and excluded"),
                ));
            }
        }
        for key in self.filters.keys() {
            if !self.resources.contains(key) {
                return Err(err(
                    format!("scope.filters.{key}"),
                    format!("filter for '{key}', which is not in resources"),
                ));
            }
        }
        if let Some(max) = self.max_rows_per_query
            && !(1..=MAX_ROWS_CAP).contains(&max)
        {
            return Err(err("scope.max_rows_per_query", format!("must be between 1 and {MAX_ROWS_CAP}, got {max}")));
        }
        Ok(())
    }

    /// The effective per-query row cap.
    pub fn max_rows(&self) -> u32 {
        self.max_rows_per_query.unwrap_or(DEFAULT_MAX_ROWS)
    }
}

/// Why a federation request was refused by the scope service; each stage has its own code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyCode {
    /// scope_parse
    InvalidScope,
    /// resource_allowlist: not a resource name at all
    InvalidResource,
    /// resource_allowlist: a resource the grant does not name
    ResourceNotGranted,
    /// resource_exclusion
    ResourceExcluded,
    /// native_rbac
    NativeRbacDenied,
    /// row_cap: limit is not a positive integer
    InvalidLimit,
}

impl DenyCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidScope => "invalid_scope",
            Self::InvalidResource => "invalid_resource",
            Self::ResourceNotGranted => "resource_not_granted",
            Self::ResourceExcluded => "resource_excluded",
            Self::NativeRbacDenied => "native_rbac_denied",
            Self::InvalidLimit => "invalid_limit",
        }
    }

    pub fn stage(self) -> &'static str {
        match self {
            Self::InvalidScope => "scope_parse",
            Self::InvalidResource | Self::ResourceNotGranted => "resource_allowlist",
            Self::ResourceExcluded => "resource_exclusion",
            Self::NativeRbacDenied => "native_rbac",
            Self::InvalidLimit => "row_cap",
        }
    }
}

/// A denial with its internal reason (for the log and the audit row, never the wire).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub code: DenyCode,
    pub reason: String,
}

fn deny(code: DenyCode, reason: impl Into<String>) -> Denial {
    Denial { code, reason: reason.into() }
}

/// The result of evaluation: exactly what the query may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryFilter {
    pub resource: Resource,
    pub subject_user_id: Uuid,
    pub include_personal: bool,
    /// Subject's current teams ∩ the grant's `include_teams`.
    pub team_ids: Vec<Uuid>,
    pub limit: u32,
}

/// Parses a request's `limit`: absent → the cap; a positive integer, or a string of one (`"10"`,
/// as Mosaic's `parseLimit` accepts) → at most the cap; anything else (0, negative, fractional, a
/// non-numeric string, a boolean) → `invalid_limit`.
///
/// # Errors
/// [`DenyCode::InvalidLimit`].
pub fn parse_limit(limit: Option<&serde_json::Value>, cap: u32) -> Result<u32, Denial> {
    match limit {
        None | Some(serde_json::Value::Null) => Ok(cap),
        // `5.0` is the integer 5 to JSON (and to JavaScript, whose clients may send it).
        Some(serde_json::Value::Number(n)) => match n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0 && (1.0..1.8e19).contains(f)).map(|f| f as u64))
        {
            Some(v) if v >= 1 => Ok(u32::try_from(v).unwrap_or(u32::MAX).min(cap)),
            _ => Err(deny(DenyCode::InvalidLimit, format!("limit {n} is not a positive integer"))),
        },
        Some(serde_json::Value::String(text)) => match text.trim().parse::<u64>() {
            Ok(v) if v >= 1 && text.trim().chars().all(|c| c.is_ascii_digit()) => {
                Ok(u32::try_from(v).unwrap_or(u32::MAX).min(cap))
            }
            _ => Err(deny(
                DenyCode::InvalidLimit,
                format!("limit {:?} is not a positive integer", super::audit::clean(text, 32)),
            )),
        },
        Some(other) => Err(deny(DenyCode::InvalidLimit, format!("limit {other} is not a positive integer"))),
    }
}

impl GrantScope {
    /// The staged evaluation of DESIGN §4, minus the native-RBAC lookup (see [`evaluate`]):
    /// allowlist → exclusion → never-federated resources → row cap.
    ///
    /// # Errors
    /// The first stage that refuses.
    pub fn check_resource(&self, name: &str, limit: Option<&serde_json::Value>) -> Result<(Resource, u32), Denial> {
        let Some(resource) = Resource::parse(name) else {
            return Err(deny(
                DenyCode::InvalidResource,
                format!("{:?} is not a resource", super::audit::clean(name, 64)),
            ));
        };
        if self.excluded_resources.iter().any(|r| r == resource.as_str()) {
            return Err(deny(DenyCode::ResourceExcluded, format!("'{resource}' is excluded by the grant")));
        }
        if !self.resources.iter().any(|r| r == resource.as_str()) {
            return Err(deny(DenyCode::ResourceNotGranted, format!("'{resource}' is not in the grant")));
        }
        if resource.never_federated() {
            return Err(deny(DenyCode::NativeRbacDenied, format!("'{resource}' is never federated")));
        }
        Ok((resource, parse_limit(limit, self.max_rows())?))
    }
}

/// Evaluates a request for `resource` as the grant's subject: the grant can only narrow what
/// native RBAC allows, never widen it. `subject_teams` are the subject's *current* memberships
/// (`None` when the subject is missing or disabled), read by the guard in the same query as the
/// grant.
///
/// # Errors
/// A [`Denial`] from the first stage that refuses.
pub fn evaluate(
    scope: &GrantScope,
    subject_user_id: Uuid,
    subject_teams: Option<&[Uuid]>,
    resource: &str,
    limit: Option<&serde_json::Value>,
) -> Result<QueryFilter, Denial> {
    // The scope step of a federation trace: the resource only once it is one the grant allows
    // (never a name a peer made up), the deny code otherwise.
    let span = tracing::debug_span!(
        "federation.scope",
        resource = tracing::field::Empty,
        outcome = tracing::field::Empty,
        deny_code = tracing::field::Empty,
        teams = tracing::field::Empty,
        row_cap = tracing::field::Empty,
    );
    let _entered = span.enter();
    let result = evaluate_stages(scope, subject_user_id, subject_teams, resource, limit);
    match &result {
        Ok(f) => {
            span.record("resource", f.resource.as_str());
            span.record("outcome", "allowed");
            span.record("teams", f.team_ids.len());
            span.record("row_cap", f.limit);
        }
        Err(d) => {
            span.record("outcome", "denied");
            span.record("deny_code", d.code.as_str());
        }
    }
    result
}

fn evaluate_stages(
    scope: &GrantScope,
    subject_user_id: Uuid,
    subject_teams: Option<&[Uuid]>,
    resource: &str,
    limit: Option<&serde_json::Value>,
) -> Result<QueryFilter, Denial> {
    let (resource, limit) = scope.check_resource(resource, limit)?;
    let Some(teams) = subject_teams else {
        return Err(deny(DenyCode::NativeRbacDenied, "subject user is missing or disabled"));
    };
    let filter = scope.filters.get(resource.as_str());
    let team_ids = match filter.and_then(|f| f.include_teams.as_ref()) {
        Some(allowed) => teams.iter().copied().filter(|t| allowed.contains(t)).collect(),
        None => teams.to_vec(),
    };
    let include_personal = filter.is_none_or(|f| f.include_personal);
    // Memory is personal only: teams never widen it.
    let team_ids = if resource == Resource::Memory { Vec::new() } else { team_ids };
    Ok(QueryFilter { resource, subject_user_id, include_personal, team_ids, limit })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(v: serde_json::Value) -> Result<GrantScope, ScopeError> {
        GrantScope::parse(&v)
    }

    #[test]
    fn a_full_scope_parses_with_defaults() {
        let t = Uuid::new_v4();
        let s = parse(json!({
            "resources": ["tasks", "notes"],
            "excluded_resources": ["memory"],
            "filters": {"tasks": {"include_teams": [t]}},
            "max_rows_per_query": 50
        }))
        .unwrap();
        assert!(s.filters["tasks"].include_personal, "include_personal defaults to true");
        assert_eq!(s.max_rows(), 50);
        assert_eq!(parse(json!({"resources": ["memory"]})).unwrap().max_rows(), DEFAULT_MAX_ROWS);
    }

    #[test]
    fn resources_must_be_non_empty() {
        assert_eq!(parse(json!({"resources": []})).unwrap_err().field, "scope.resources");
        assert_eq!(parse(json!({})).unwrap_err().field, "scope.resources");
    }

    #[test]
    fn unknown_resource_is_named() {
        let e = parse(json!({"resources": ["tasks", "secrets"]})).unwrap_err();
        assert_eq!(e.field, "scope.resources[1]");
        assert!(e.message.contains("secrets"));
    }

    #[test]
    fn duplicate_resource_is_rejected() {
        assert_eq!(parse(json!({"resources": ["tasks", "tasks"]})).unwrap_err().field, "scope.resources[1]");
    }

    #[test]
    fn excluded_must_not_overlap_resources() {
        let e = parse(json!({"resources": ["tasks"], "excluded_resources": ["tasks"]})).unwrap_err();
        assert_eq!(e.field, "scope.excluded_resources[0]");
    }

    #[test]
    fn excluded_must_be_known() {
        let e = parse(json!({"resources": ["tasks"], "excluded_resources": ["x"]})).unwrap_err();
        assert_eq!(e.field, "scope.excluded_resources[0]");
    }

    #[test]
    fn filter_keys_must_be_granted_resources() {
        let e = parse(json!({"resources": ["tasks"], "filters": {"notes": {}}})).unwrap_err();
        assert_eq!(e.field, "scope.filters.notes");
    }

    #[test]
    fn max_rows_bounds() {
        for bad in [0, 10_001] {
            let e = parse(json!({"resources": ["tasks"], "max_rows_per_query": bad})).unwrap_err();
            assert_eq!(e.field, "scope.max_rows_per_query");
        }
        for good in [1, 10_000] {
            assert!(parse(json!({"resources": ["tasks"], "max_rows_per_query": good})).is_ok());
        }
        assert!(parse(json!({"resources": ["tasks"], "max_rows_per_query": -1})).is_err());
    }

    #[test]
    fn unknown_fields_are_rejected_at_every_level() {
        let e = parse(json!({"resources": ["tasks"], "resource": ["notes"]})).unwrap_err();
        assert_eq!(e.field, "scope.resource");
        let e = parse(json!({"resources": ["tasks"], "filters": {"tasks": {"include_team": []}}})).unwrap_err();
        assert!(e.message.contains("include_team"), "{e}");
    }

    #[test]
    fn limits_must_be_positive_integers_and_are_capped() {
        assert_eq!(parse_limit(None, 50), Ok(50));
        assert_eq!(parse_limit(Some(&json!(10)), 50), Ok(10));
        assert_eq!(parse_limit(Some(&json!(5000)), 50), Ok(50));
        for bad in [json!(0), json!(-1), json!(1.5), json!("abc"), json!(false), json!([])] {
            assert_eq!(parse_limit(Some(&bad), 50).unwrap_err().code, DenyCode::InvalidLimit, "{bad}");
        }
    }

    #[test]
    fn resource_stages_deny_in_order() {
        let s = parse(json!({"resources": ["tasks", "credentials"], "excluded_resources": ["notes"]})).unwrap();
        assert_eq!(s.check_resource("nope", None).unwrap_err().code, DenyCode::InvalidResource);
        assert_eq!(s.check_resource("notes", None).unwrap_err().code, DenyCode::ResourceExcluded);
        assert_eq!(s.check_resource("memory", None).unwrap_err().code, DenyCode::ResourceNotGranted);
        assert_eq!(s.check_resource("credentials", None).unwrap_err().code, DenyCode::NativeRbacDenied);
        assert_eq!(s.check_resource("tasks", Some(&json!(0))).unwrap_err().code, DenyCode::InvalidLimit);
        assert_eq!(s.check_resource("tasks", None), Ok((Resource::Tasks, DEFAULT_MAX_ROWS)));
    }

    #[test]
    fn evaluation_only_narrows_native_rbac() {
        let (t1, t2, t3) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let subject = Uuid::new_v4();
        let mine = [t1, t2];
        let s = parse(json!({"resources": ["tasks", "memory"], "filters": {"tasks": {"include_teams": [t1, t3]}}}))
            .unwrap();
        let f = evaluate(&s, subject, Some(&mine), "tasks", None).unwrap();
        assert_eq!(f.team_ids, vec![t1], "t3 is not the subject's team; t2 is filtered out");
        assert!(f.include_personal);
        let f = evaluate(&s, subject, Some(&mine), "memory", None).unwrap();
        assert!(f.team_ids.is_empty(), "memory is personal only");
        assert_eq!(evaluate(&s, subject, None, "tasks", None).unwrap_err().code, DenyCode::NativeRbacDenied);
        let s = parse(json!({"resources": ["tasks"], "filters": {"tasks": {"include_personal": false}}})).unwrap();
        assert!(!evaluate(&s, subject, Some(&mine), "tasks", None).unwrap().include_personal);
    }

    #[test]
    fn include_teams_must_be_uuids() {
        assert!(parse(json!({"resources": ["tasks"], "filters": {"tasks": {"include_teams": ["nope"]}}})).is_err());
    }
}
