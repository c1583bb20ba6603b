//! Native visibility rules (DESIGN §4): what a local user may see in this gateway, before any
//! grant narrows it.
//!
//! - tasks: tasks of projects the user owns (personal) or of projects of the user's teams;
//!   tasks of missions belong to the mission's project, so the same rule covers them;
//! - notes: the user's own non-empty mission notes, in missions of visible projects; never
//!   another user's note, even on a shared team mission;
//! - memory: the user's insights and preferences (personal only);
//! - credentials and api_keys: never federated.
//!
//! The subject's current memberships are read by the federation guard in the same query as
//! the grant (`FederationContext::subject_teams`); the rules above are the SQL in
//! `federation::verbs::read`.

/// Resources native RBAC never federates.
pub fn never_federated(resource: &str) -> bool {
    matches!(resource, "credentials" | "api_keys")
}
