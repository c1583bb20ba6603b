//! Domain errors, and the two places they end: the HTTP envelope ([`crate::http::error::ApiError`])
//! and the CLI's exit code ([`crate::cli::client::CliError`]).
//!
//! Each domain has its own error enum (`GrantError`, `PeerError`, `RecordError`, …) that says what
//! went wrong in the domain's words. It implements [`DomainError`], which classifies it as a
//! [`Fault`]; the blanket `From` impls turn that into a status and code at the HTTP boundary, or an
//! exit code and a printed cause in the CLI. Domain code therefore never builds an `ApiError`, and
//! a database failure reaches the CLI with its cause instead of as "Internal server error".
//!
//! Constraint violations are mapped to the field the caller sent in one place:
//! [`crate::store::constraint`].

use std::fmt;

/// How a domain error presents itself to a caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The input is wrong (400 / exit 64 when it came from the command line, 3 from the server).
    /// `field` names the offending input field, as the wire spells it.
    Invalid { field: Option<String> },
    /// A referenced record does not exist (404 / exit 3).
    NotFound { field: Option<String> },
    /// The state refuses the operation: the value is taken, the record is in use (409 / exit 3).
    Conflict { field: Option<String> },
    /// The caller may not do this (403 / exit 3).
    Forbidden,
    /// The thing existed but is no longer usable (410 / exit 3).
    Gone,
    /// A dependency is down; retry later (503 with `Retry-After` / exit 1).
    Unavailable { retry_after_secs: u64 },
    /// Anything else: a database or I/O failure. The HTTP answer is a bare 500 and the cause is
    /// logged; the CLI prints the cause (exit 1).
    Internal,
}

impl Fault {
    pub fn invalid(field: &str) -> Self {
        Self::Invalid { field: Some(field.to_owned()) }
    }

    pub fn not_found(field: &str) -> Self {
        Self::NotFound { field: Some(field.to_owned()) }
    }

    pub fn conflict(field: &str) -> Self {
        Self::Conflict { field: Some(field.to_owned()) }
    }

    /// The field this fault names, if any.
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::Invalid { field } | Self::NotFound { field } | Self::Conflict { field } => field.as_deref(),
            _ => None,
        }
    }
}

/// A domain error: its `Display` is the message a caller may see (never SQL or secrets), its
/// `source()` chain holds the internal cause.
pub trait DomainError: std::error::Error + Send + Sync + 'static {
    fn fault(&self) -> Fault;

    /// The envelope's `details` when the field alone does not say enough (the constraint a
    /// write broke, for example). Replaces `{"field": …}`.
    fn details(&self) -> Option<serde_json::Value> {
        None
    }
}

/// Input refused before it reaches the domain: `field` names it as the wire spells it, the
/// message says the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct InvalidField {
    pub field: &'static str,
    pub message: String,
}

impl InvalidField {
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self { field, message: message.into() }
    }
}

impl DomainError for InvalidField {
    fn fault(&self) -> Fault {
        Fault::invalid(self.field)
    }
}

/// Renders an error with its whole `source()` chain, `a: b: c`, for logs and the CLI.
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("could not save the grant")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn a_chain_prints_every_cause() {
        let e = Outer(std::io::Error::other("connection reset"));
        assert_eq!(Chain(&e).to_string(), "could not save the grant: connection reset");
    }

    #[test]
    fn faults_name_their_field() {
        assert_eq!(Fault::conflict("name").field(), Some("name"));
        assert_eq!(Fault::Internal.field(), None);
    }
}
