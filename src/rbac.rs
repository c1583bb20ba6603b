//! Native visibility rules (DESIGN §4): what a local user may see in this gateway, before any
//! grant narrows it, and the vocabulary those rules speak: [`Resource`] and [`Role`].
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
//! `federation::verbs::visibility`.
//!
//! [`Resource::ALL`] is the one list of resource names: grant scopes validate against it, the
//! verbs serve its readable part, and the OpenAPI enums are written from it.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A resource a grant scope may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, sqlx::Type, ToSchema)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum Resource {
    Tasks,
    Notes,
    Memory,
    /// A valid name (Mosaic scopes carry it); native RBAC never serves it.
    Credentials,
    /// A valid name (Mosaic scopes carry it); native RBAC never serves it.
    ApiKeys,
}

impl Resource {
    /// Every resource, in the order messages and documents list them.
    pub const ALL: [Resource; 5] = [Self::Tasks, Self::Notes, Self::Memory, Self::Credentials, Self::ApiKeys];

    /// The names of [`Self::ALL`], as the wire spells them.
    pub const NAMES: [&'static str; 5] = {
        let mut names = [""; 5];
        let mut i = 0;
        while i < names.len() {
            names[i] = Self::ALL[i].as_str();
            i += 1;
        }
        names
    };

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Tasks => "tasks",
            Self::Notes => "notes",
            Self::Memory => "memory",
            Self::Credentials => "credentials",
            Self::ApiKeys => "api_keys",
        }
    }

    /// The resource named `name` exactly, if there is one.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == name)
    }

    /// Resources native RBAC never federates.
    pub const fn never_federated(self) -> bool {
        matches!(self, Self::Credentials | Self::ApiKeys)
    }

    /// Resources native RBAC can serve at all (tasks, notes, memory).
    pub const fn readable(self) -> bool {
        !self.never_federated()
    }
}

impl std::fmt::Display for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Resources native RBAC never federates (by name; unknown names are not resources at all).
pub fn never_federated(resource: &str) -> bool {
    Resource::parse(resource).is_some_and(Resource::never_federated)
}

/// A local user's role (`users.role`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type, ToSchema)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum Role {
    /// May use the admin plane.
    Admin,
    /// A data subject; no admin plane.
    Member,
}

impl Role {
    pub const ALL: [Role; 2] = [Self::Admin, Self::Member];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Member => "member",
        }
    }

    /// The role named `name` exactly, if there is one.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == name)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_serde_spelling() {
        for r in Resource::ALL {
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
            assert_eq!(Resource::parse(r.as_str()), Some(r));
        }
        assert_eq!(Resource::NAMES, ["tasks", "notes", "memory", "credentials", "api_keys"]);
        for r in Role::ALL {
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
        }
        assert_eq!(Resource::parse("Tasks"), None);
    }

    #[test]
    fn only_tasks_notes_and_memory_are_readable() {
        let readable: Vec<_> = Resource::ALL.into_iter().filter(|r| r.readable()).collect();
        assert_eq!(readable, [Resource::Tasks, Resource::Notes, Resource::Memory]);
        assert!(never_federated("api_keys") && !never_federated("nope"));
    }
}
