//! The visibility SQL of the read verbs, in one place: which tasks, notes and memory rows a
//! [`QueryFilter`] lets the subject see (the native rules of [`crate::rbac`], narrowed by the
//! grant). `list`, `get`, `search` and scope explain all compose their statements from these
//! predicates, so a search can never return a row list would not.
//!
//! Each predicate is pushed onto a [`QueryBuilder`] with its values bound by `push_bind`: the
//! statement's parameter numbers follow from the order of composition, so no two places have to
//! agree on them (the grant-confirmation CTE of [`super::super::guard::Confirmation`] is built
//! the same way).
//!
//! The predicates use fixed table aliases: `t` (tasks), `mt` (mission_tasks), and the alias a
//! memory caller names (`i` insights, `p` preferences).

use sqlx::{Postgres, QueryBuilder};

use super::super::scope::QueryFilter;

/// Whose rows a statement may see.
#[derive(Debug, Clone, Copy)]
pub enum Visibility {
    /// A peer's grant: the native rules narrowed by a [`QueryFilter`].
    Grant,
    /// The local admin plane: every row (as `/api/admin/federation/query`).
    Everything,
}

impl Visibility {
    /// The tasks `t` visible: those of visible projects (personal ones when allowed, plus those
    /// of the allowed teams).
    pub fn push_tasks(self, qb: &mut QueryBuilder<Postgres>, f: &QueryFilter) {
        match self {
            Self::Grant => {
                qb.push("t.project_id in (");
                push_visible_projects(qb, f);
                qb.push(")");
            }
            Self::Everything => {
                qb.push("true");
            }
        }
    }

    /// The notes `mt` visible: the subject's own non-empty notes, on missions of visible projects.
    pub fn push_notes(self, qb: &mut QueryBuilder<Postgres>, f: &QueryFilter) {
        match self {
            Self::Grant => {
                qb.push("mt.user_id = ").push_bind(f.subject_user_id).push(
                    " and mt.notes <> '' and exists (select 1 from missions m where m.id = mt.mission_id and m.project_id in (",
                );
                push_visible_projects(qb, f);
                qb.push("))");
            }
            Self::Everything => {
                qb.push("mt.notes <> ''");
            }
        }
    }

    /// The memory rows of table alias `alias` visible: memory is personal only, the subject's
    /// rows when personal is on.
    pub fn push_memory(self, qb: &mut QueryBuilder<Postgres>, f: &QueryFilter, alias: &str) {
        match self {
            Self::Grant => {
                qb.push(format_args!("{alias}.user_id = "))
                    .push_bind(f.subject_user_id)
                    .push(" and ")
                    .push_bind(f.include_personal);
            }
            Self::Everything => {
                qb.push("true");
            }
        }
    }
}

/// `select p.id from projects p where …`: the projects whose tasks `f` lets the subject see.
pub fn push_visible_projects(qb: &mut QueryBuilder<Postgres>, f: &QueryFilter) {
    qb.push("select p.id from projects p where (p.owner_user_id = ")
        .push_bind(f.subject_user_id)
        .push(" and ")
        .push_bind(f.include_personal)
        .push(") or p.team_id = any(")
        .push_bind(f.team_ids.clone())
        .push(")");
}

/// How many rows `f` lets the subject see right now, by the same visibility rules as the pages
/// (scope explain reports it; it never returns the rows).
///
/// # Errors
/// Database errors.
pub async fn visible_count(pool: &sqlx::PgPool, f: &QueryFilter) -> Result<i64, sqlx::Error> {
    use crate::rbac::Resource;
    // Composed from the visibility predicates above (their binds are numbered as pushed).
    let mut qb = QueryBuilder::new("select count(*) from ");
    match f.resource {
        Resource::Tasks => {
            qb.push("tasks t where ");
            Visibility::Grant.push_tasks(&mut qb, f);
        }
        Resource::Notes => {
            qb.push("mission_tasks mt where ");
            Visibility::Grant.push_notes(&mut qb, f);
        }
        // Memory is personal only: the subject's insights and preferences, when personal is on.
        _ if f.include_personal => return crate::store::memory::count_of(pool, f.subject_user_id).await,
        _ => return Ok(0),
    }
    qb.build_query_scalar().fetch_one(pool).await
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;
    use crate::rbac::Resource;

    #[test]
    fn parameters_are_numbered_in_the_order_they_are_pushed() {
        let f = QueryFilter {
            resource: Resource::Notes,
            subject_user_id: Uuid::nil(),
            include_personal: true,
            team_ids: Vec::new(),
            limit: 10,
        };
        let mut qb = QueryBuilder::<Postgres>::new("select 1 from mission_tasks mt where mt.id = ");
        qb.push_bind(Uuid::nil()).push(" and ");
        Visibility::Grant.push_notes(&mut qb, &f);
        let sql = qb.into_string();
        assert!(sql.contains("mt.id = $1 and mt.user_id = $2"), "{sql}");
        assert!(sql.contains("p.owner_user_id = $3 and $4) or p.team_id = any($5)"), "{sql}");
    }
}
