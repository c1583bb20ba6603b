//! Failure kinds that code below the CLI can name without knowing about exit codes: the input
//! was wrong ([`Usage`]), the current state refuses the operation ([`Refused`]), or the other
//! side is not the one we trust ([`Untrusted`]). The CLI maps them to its exit codes 64, 3 and 2
//! (`cli::exit`); anything else is "could not run".

/// Invalid input that is not clap's to catch: a setting, a file that does not parse, a value out
/// of range.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Usage(pub String);

/// The operation is understood but the state refuses it (already done, not empty, in use).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// The other side is not the one we trust: a CA whose fingerprint is not the pinned one.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Untrusted(pub String);
