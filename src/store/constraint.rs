//! The one place a constraint violation becomes the field the caller sent.
//!
//! Postgres reports which constraint a write broke; callers speak of wire fields (`email`,
//! `peerId`). [`violation`] translates: unique constraints through a table of the ones callers can
//! hit (with a message), foreign keys by Postgres's `<table>_<column>_fkey` naming rule, check and
//! not-null constraints by name. Domain error enums wrap the [`Violation`] (or match on it to say
//! it in their own words); anything that is not a violation stays the domain's internal error.

use sqlx::error::ErrorKind;

use crate::error::Fault;

/// A write refused by a constraint, in the caller's terms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// A unique constraint: the value in `field` is taken.
    #[error("{message}")]
    Taken { field: String, message: String },
    /// A foreign key: `field` refers to a record that does not exist.
    #[error("{field} refers to a record that does not exist")]
    Missing { field: String },
    /// A check or not-null constraint.
    #[error("The record violates a constraint")]
    Invalid { constraint: String },
}

impl Violation {
    /// The field the caller sent, when the violation names one.
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::Taken { field, .. } | Self::Missing { field } => Some(field),
            Self::Invalid { .. } => None,
        }
    }

    pub fn fault(&self) -> Fault {
        match self {
            Self::Taken { field, .. } => Fault::conflict(field),
            Self::Missing { field } => Fault::not_found(field),
            Self::Invalid { .. } => Fault::Invalid { field: None },
        }
    }
}

impl crate::error::DomainError for Violation {
    fn fault(&self) -> Fault {
        Violation::fault(self)
    }

    /// A check or not-null violation names its constraint, since it names no field.
    fn details(&self) -> Option<serde_json::Value> {
        match self {
            Self::Invalid { constraint } => Some(serde_json::json!({ "constraint": constraint })),
            _ => None,
        }
    }
}

/// Unique constraints a caller can run into, with the field and the message to give.
const TAKEN: &[(&str, &str, &str)] = &[
    ("users_email_key", "email", "A user with this email already exists"),
    ("teams_name_key", "name", "A team with this name already exists"),
    ("team_members_pkey", "userId", "This user is already a member of the team"),
    ("preferences_user_key", "key", "This user already has a preference with this key"),
    ("federation_peers_name_key", "name", "A peer with this name already exists"),
];

/// The violation behind `e`, or `None` when `e` is not a constraint violation.
pub fn violation(e: &sqlx::Error) -> Option<Violation> {
    let sqlx::Error::Database(d) = e else { return None };
    let constraint = d.constraint().unwrap_or_default();
    match d.kind() {
        ErrorKind::UniqueViolation => {
            let (field, message) = TAKEN
                .iter()
                .find(|(name, _, _)| *name == constraint)
                .map(|(_, field, message)| (*field, *message))
                .unwrap_or(if constraint.ends_with("_pkey") {
                    ("id", "A record with this id already exists")
                } else {
                    ("", "The record conflicts with an existing one")
                });
            Some(Violation::Taken { field: field.to_owned(), message: message.to_owned() })
        }
        ErrorKind::ForeignKeyViolation => {
            let table = d.table().unwrap_or_default();
            // Postgres names foreign keys `<table>_<column>_fkey`.
            let column = constraint
                .strip_prefix(table)
                .and_then(|c| c.strip_prefix('_'))
                .and_then(|c| c.strip_suffix("_fkey"))
                .unwrap_or("id");
            Some(Violation::Missing { field: camel_case(column) })
        }
        ErrorKind::CheckViolation | ErrorKind::NotNullViolation => {
            Some(Violation::Invalid { constraint: constraint.to_owned() })
        }
        _ => None,
    }
}

/// `owner_user_id` → `ownerUserId`, the wire's spelling of a column.
pub fn camel_case(snake: &str) -> String {
    let mut out = String::with_capacity(snake.len());
    let mut upper = false;
    for ch in snake.chars() {
        if ch == '_' {
            upper = true;
        } else if upper {
            out.extend(ch.to_uppercase());
            upper = false;
        } else {
            out.push(ch);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_become_camel_case_fields() {
        assert_eq!(camel_case("owner_user_id"), "ownerUserId");
        assert_eq!(camel_case("id"), "id");
    }

    #[test]
    fn violations_reach_the_envelope_with_their_field_or_constraint() {
        use crate::http::error::ApiError;
        let taken: ApiError = Violation::Taken { field: "email".into(), message: "taken".into() }.into();
        assert_eq!((taken.status().as_u16(), taken.message()), (409, "taken"));
        assert!(format!("{taken:?}").contains(r#""field": String("email")"#));
        let check: ApiError = Violation::Invalid { constraint: "tasks_title_check".into() }.into();
        assert_eq!(check.status().as_u16(), 400);
        assert!(format!("{check:?}").contains(r#""constraint": String("tasks_title_check")"#));
    }

    #[test]
    fn other_errors_are_not_violations() {
        assert_eq!(violation(&sqlx::Error::RowNotFound), None);
    }
}
