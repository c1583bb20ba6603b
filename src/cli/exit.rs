//! The one exit-code table every command follows (README, "Exit codes").
//!
//! | code | meaning |
//! | --- | --- |
//! | 0 | ok |
//! | 1 | unreachable: the gateway, a peer or the database could not be reached, or the command could not run |
//! | 2 | authentication or trust: a credential or certificate was refused, or a server is not the one we trust |
//! | 3 | refused by the server (or the database): the request was understood and rejected |
//! | 64 | usage: bad arguments, bad configuration, invalid input files |
//!
//! clap's own usage errors exit 64 too (its default, 2, would read as "authentication").

use std::process::ExitCode;

/// A named exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Ok,
    Unreachable,
    Trust,
    Refused,
    Usage,
}

impl Exit {
    pub fn code(self) -> u8 {
        match self {
            Exit::Ok => 0,
            Exit::Unreachable => 1,
            Exit::Trust => 2,
            Exit::Refused => 3,
            Exit::Usage => 64,
        }
    }

    /// The exit code for an error that reached the top of a command: configuration errors are
    /// usage errors, a transport failure is trust or unreachable by its cause, the rest 1.
    pub fn for_error(e: &anyhow::Error) -> Exit {
        for cause in e.chain() {
            if let Some(cli) = cause.downcast_ref::<super::client::CliError>() {
                return cli.exit;
            }
            if cause.downcast_ref::<crate::config::ConfigError>().is_some()
                || cause.downcast_ref::<UsageError>().is_some()
            {
                return Exit::Usage;
            }
            if cause.downcast_ref::<crate::outcome::Refused>().is_some() {
                return Exit::Refused;
            }
            if cause.downcast_ref::<crate::outcome::Untrusted>().is_some() {
                return Exit::Trust;
            }
            if cause.downcast_ref::<reqwest::Error>().is_some() {
                let failure = crate::connect_failure::ConnectFailure::classify(cause);
                return if failure.is_trust() { Exit::Trust } else { Exit::Unreachable };
            }
        }
        Exit::Unreachable
    }
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> Self {
        ExitCode::from(e.code())
    }
}

/// A domain error reaching the top of a command: refusals exit 3 with the domain's message; a
/// dependency that is down or an internal failure exits 1 and prints the whole cause chain (the
/// database's own message included), which the HTTP answer keeps to the log.
impl<E: crate::error::DomainError> From<E> for super::client::CliError {
    fn from(e: E) -> Self {
        use crate::error::{Chain, Fault};
        match e.fault() {
            Fault::Internal | Fault::Unavailable { .. } => Self::new(Exit::Unreachable, Chain(&e).to_string()),
            fault => {
                let message = match fault.field() {
                    Some(field) if !field.is_empty() => format!("{e} (field {field})"),
                    _ => e.to_string(),
                };
                Self::new(Exit::Refused, message)
            }
        }
    }
}

/// An error from code that does not classify itself (a setting, a file, a transport): its exit
/// code by its cause ([`Exit::for_error`]), its whole context chain as the message.
impl From<anyhow::Error> for super::client::CliError {
    fn from(e: anyhow::Error) -> Self {
        Self::new(Exit::for_error(&e), super::describe(&e))
    }
}

/// A database failure outside any domain (a lookup the command makes itself): exit 1 with the
/// database's own message.
impl From<sqlx::Error> for super::client::CliError {
    fn from(e: sqlx::Error) -> Self {
        Self::new(Exit::Unreachable, format!("database: {e}"))
    }
}

/// Invalid input that is not clap's to catch: wrap it so that [`Exit::for_error`] answers 64.
pub use crate::outcome::Usage as UsageError;
