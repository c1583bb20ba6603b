//! Native visibility rules (DESIGN §4): what a local user may see in this gateway, before any
//! grant narrows it.
//!
//! - tasks: tasks of projects the user owns (personal) or of projects of the user's teams;
//!   tasks of missions belong to the mission's project, so the same rule covers them;
//! - notes: the user's own non-empty mission notes, in missions of visible projects; never
//!   another user's note, even on a shared team mission;
//! - memory: the user's insights and preferences (personal only);
//! - credentials and api_keys: never federated.

use sqlx::PgExecutor;
use uuid::Uuid;

/// The user's current team memberships, or `None` when the user does not exist or is disabled.
///
/// # Errors
/// Database errors.
pub async fn active_memberships(db: impl PgExecutor<'_>, user_id: Uuid) -> Result<Option<Vec<Uuid>>, sqlx::Error> {
    let row: Option<(bool, Vec<Uuid>)> = sqlx::query_as(
        "select u.disabled_at is null,
                coalesce(array(select team_id from team_members m where m.user_id = u.id order by team_id), '{}')
         from users u where u.id = $1",
    )
    .bind(user_id)
    .fetch_optional(db)
    .await?;
    Ok(match row {
        Some((true, teams)) => Some(teams),
        _ => None,
    })
}

/// Resources native RBAC never federates.
pub fn never_federated(resource: &str) -> bool {
    matches!(resource, "credentials" | "api_keys")
}
