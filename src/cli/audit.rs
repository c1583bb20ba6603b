//! `tessera audit list|tail|export`: the federation audit log, read through the admin API
//! (`GET /api/admin/audit`), so the operator needs a credential, not the database.
//!
//! Exit codes follow the admin commands: 0 ok, 1 unreachable, 2 authentication, 3 rejected.

use std::io::{IsTerminal as _, Write as _};
use std::process::ExitCode;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::{Args, Subcommand, ValueEnum};
use reqwest::Method;
use uuid::Uuid;

use super::client::{Auth, CliError, CliState, ClientArgs, GatewayClient};
use super::exit::Exit;
use crate::config::Config;
use crate::federation::audit_routes::{AuditPage, AuditRow};

#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: AuditCommand,
}

/// The filters every audit command takes (as in `GET /api/admin/audit`).
#[derive(Debug, Clone, Default, Args)]
pub struct Filters {
    #[arg(long)]
    peer_id: Option<Uuid>,
    #[arg(long)]
    grant_id: Option<Uuid>,
    #[arg(long)]
    subject_user_id: Option<Uuid>,
    /// list, get, capabilities, renew, enroll, ...
    #[arg(long)]
    verb: Option<String>,
    #[arg(long)]
    resource: Option<String>,
    /// allowed or denied (also not_found, enrolled, renewed, revoked, gap).
    #[arg(long)]
    outcome: Option<String>,
    #[arg(long)]
    deny_code: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Rows newest first, one page (`--limit`) or `--all`.
    List {
        #[command(flatten)]
        filters: Filters,
        /// RFC 3339; rows at or after.
        #[arg(long)]
        from: Option<DateTime<Utc>>,
        /// RFC 3339; rows before.
        #[arg(long)]
        to: Option<DateTime<Utc>>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// Every matching row, page after page.
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// The latest rows, oldest first; `--follow` keeps printing new ones (Ctrl-C to stop).
    Tail {
        #[command(flatten)]
        filters: Filters,
        #[arg(long, default_value_t = 20)]
        limit: i64,
        #[arg(long, short)]
        follow: bool,
        #[arg(long)]
        json: bool,
    },
    /// Every row between two instants, streamed page by page (newest first).
    Export {
        #[command(flatten)]
        filters: Filters,
        #[arg(long)]
        from: DateTime<Utc>,
        #[arg(long)]
        to: DateTime<Utc>,
        #[arg(long, value_enum, default_value_t = ExportFormat::Jsonl)]
        format: ExportFormat,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    Jsonl,
    Csv,
}

/// Runs an audit command.
pub async fn run(args: AuditArgs, config: &Config) -> ExitCode {
    let result = async {
        let gw = GatewayClient::new(&args.client, config)?;
        let auth = Auth::from_env_or(&CliState::load_for(&gw.base));
        let reader = Reader { gw: &gw, auth: &auth };
        match args.command {
            AuditCommand::List { filters, from, to, limit, all, json } => {
                let mut cursor = None;
                loop {
                    let page = reader.page(&filters, from, to, limit, cursor.as_deref()).await?;
                    for row in &page.items {
                        print_row(row, json)?;
                    }
                    cursor = page.next_cursor;
                    if !all || cursor.is_none() {
                        return Ok(());
                    }
                }
            }
            AuditCommand::Tail { filters, limit, follow, json } => {
                let page = reader.page(&filters, None, None, limit, None).await?;
                let mut newest = page.items.first().map(|r| (r.at, r.id));
                for row in page.items.iter().rev() {
                    print_row(row, json)?;
                }
                if !follow {
                    return Ok(());
                }
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    // Rows at or after the newest printed, minus those already printed.
                    let since = newest.map(|(at, _)| at);
                    let page =
                        reader.page(&filters, since, None, crate::federation::audit_routes::MAX_LIMIT, None).await?;
                    let fresh: Vec<&AuditRow> =
                        page.items.iter().filter(|r| newest.is_none_or(|n| (r.at, r.id) > n)).collect();
                    for row in fresh.iter().rev() {
                        print_row(row, json)?;
                    }
                    if let Some(first) = fresh.first() {
                        newest = Some((first.at, first.id));
                    }
                }
            }
            AuditCommand::Export { filters, from, to, format } => export(&reader, &filters, from, to, format).await,
        }
    }
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}", e.message);
            ExitCode::from(e.exit)
        }
    }
}

struct Reader<'a> {
    gw: &'a GatewayClient,
    auth: &'a Auth,
}

impl Reader<'_> {
    async fn page(
        &self,
        f: &Filters,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
        limit: i64,
        cursor: Option<&str>,
    ) -> Result<AuditPage, CliError> {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        let ids = [("peerId", f.peer_id), ("grantId", f.grant_id), ("subjectUserId", f.subject_user_id)];
        for (key, value) in ids {
            if let Some(v) = value {
                query.append_pair(key, &v.to_string());
            }
        }
        let texts = [("verb", &f.verb), ("resource", &f.resource), ("outcome", &f.outcome), ("denyCode", &f.deny_code)];
        for (key, value) in texts {
            if let Some(v) = value {
                query.append_pair(key, v);
            }
        }
        for (key, value) in [("from", from), ("to", to)] {
            if let Some(v) = value {
                query.append_pair(key, &v.to_rfc3339());
            }
        }
        query.append_pair("limit", &limit.to_string());
        if let Some(c) = cursor {
            query.append_pair("cursor", c);
        }
        let body = self.gw.call(Method::GET, &format!("/api/admin/audit?{}", query.finish()), self.auth, None).await?;
        serde_json::from_value(body)
            .map_err(|e| CliError::new(Exit::Refused, format!("unexpected answer from the gateway: {e}")))
    }
}

fn io_error(e: &std::io::Error) -> CliError {
    CliError::new(Exit::Unreachable, format!("cannot write the output: {e}"))
}

fn print_row(row: &AuditRow, json: bool) -> Result<(), CliError> {
    let line = if json {
        serde_json::to_string(row).map_err(|e| CliError::new(Exit::Unreachable, e.to_string()))?
    } else {
        let id = |v: Option<Uuid>| v.map_or_else(|| "-".to_string(), |u| u.to_string());
        format!(
            "{}  {:<12} {:<9} {:<10} {:<22} grant {} peer {}  {}",
            row.at.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
            row.verb,
            row.resource.as_deref().unwrap_or("-"),
            row.outcome,
            row.deny_code.as_deref().unwrap_or(""),
            id(row.grant_id),
            id(row.peer_id),
            row.reason.as_deref().unwrap_or("")
        )
    };
    writeln!(std::io::stdout(), "{line}").map_err(|e| io_error(&e))
}

const CSV_HEADER: &str = "id,at,grant_id,peer_id,subject_user_id,verb,resource,query_hash,outcome,deny_code,reason,rows,bytes_out,latency_ms";

/// One CSV field: quoted when it holds a comma, quote or line break (RFC 4180).
fn csv_field(value: &str) -> String {
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_string()
    }
}

fn csv_line(r: &AuditRow) -> String {
    let opt = |v: Option<String>| v.unwrap_or_default();
    [
        r.id.to_string(),
        r.at.to_rfc3339(),
        opt(r.grant_id.map(|v| v.to_string())),
        opt(r.peer_id.map(|v| v.to_string())),
        opt(r.subject_user_id.map(|v| v.to_string())),
        r.verb.clone(),
        opt(r.resource.clone()),
        opt(r.query_hash.clone()),
        r.outcome.clone(),
        opt(r.deny_code.clone()),
        opt(r.reason.clone()),
        opt(r.rows.map(|v| v.to_string())),
        opt(r.bytes_out.map(|v| v.to_string())),
        opt(r.latency_ms.map(|v| v.to_string())),
    ]
    .iter()
    .map(|f| csv_field(f))
    .collect::<Vec<_>>()
    .join(",")
}

async fn export(
    reader: &Reader<'_>,
    filters: &Filters,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    format: ExportFormat,
) -> Result<(), CliError> {
    let progress = std::io::stderr().is_terminal();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if format == ExportFormat::Csv {
        writeln!(out, "{CSV_HEADER}").map_err(|e| io_error(&e))?;
    }
    let (mut cursor, mut written) = (None::<String>, 0u64);
    loop {
        let page = reader.page(filters, Some(from), Some(to), 1000, cursor.as_deref()).await?;
        for row in &page.items {
            let line = match format {
                ExportFormat::Jsonl => {
                    serde_json::to_string(row).map_err(|e| CliError::new(Exit::Unreachable, e.to_string()))?
                }
                ExportFormat::Csv => csv_line(row),
            };
            writeln!(out, "{line}").map_err(|e| io_error(&e))?;
            written += 1;
        }
        out.flush().map_err(|e| io_error(&e))?;
        if progress {
            eprint!("\rexported {written} rows");
        }
        cursor = page.next_cursor;
        if cursor.is_none() {
            break;
        }
    }
    if progress {
        eprintln!();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn csv_fields_are_quoted_only_when_needed() {
        assert_eq!(super::csv_field("plain"), "plain");
        assert_eq!(super::csv_field("a,b"), "\"a,b\"");
        assert_eq!(super::csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
