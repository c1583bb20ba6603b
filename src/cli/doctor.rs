//! `tessera doctor`: one entry per check, green / yellow / red. Exit 0 when all are green, 2
//! when the worst is yellow (a warning: act soon, for example a peer client certificate in the
//! last sixth of its life, renewals failing three times in a row, or the CA within 30 days of
//! expiry), 1 on any red (something does not work now).
//!
//! The doctor never starts services itself: in tier `local` it talks to the embedded cluster
//! only if a gateway (or a previous run) left it running, and reports red otherwise, because a
//! stopped database is exactly what an operator runs the doctor to find out.

use std::process::ExitCode;
use std::time::Duration;

use serde::Serialize;
use sqlx::postgres::PgConnectOptions;

use crate::config::{Config, Tier};
use crate::services::postgres;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Green,
    Yellow,
    Red,
}

#[derive(Debug, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub status: Health,
    pub detail: String,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub tier: &'static str,
    pub status: Health,
    pub checks: Vec<Check>,
    /// Every yellow check as `name: detail`, so a script need not filter the checks.
    pub warnings: Vec<String>,
}

/// The exit code of a report: 0 green, 2 yellow (warnings), 1 red.
pub fn exit_code(status: Health) -> ExitCode {
    match status {
        Health::Green => ExitCode::SUCCESS,
        Health::Yellow => ExitCode::from(2),
        Health::Red => ExitCode::FAILURE,
    }
}

fn check(name: &'static str, status: Health, detail: impl Into<String>) -> Check {
    Check { name, status, detail: detail.into() }
}

/// Runs every check and prints the report.
///
/// # Errors
/// Only when the report cannot be printed; failing checks are part of the report.
pub async fn run(config: &Config, json: bool) -> anyhow::Result<ExitCode> {
    let report = diagnose(config).await;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("tier: {}", report.tier);
        for c in &report.checks {
            let mark = match c.status {
                Health::Green => "ok  ",
                Health::Yellow => "warn",
                Health::Red => "FAIL",
            };
            println!("[{mark}] {:<12} {}", c.name, c.detail);
        }
        if !report.warnings.is_empty() {
            println!("{} warning(s): exit 2", report.warnings.len());
        }
    }
    Ok(exit_code(report.status))
}

/// Collects the checks without printing them.
pub async fn diagnose(config: &Config) -> Report {
    let mut checks = vec![check("tier", Health::Green, config.tier.as_str())];
    checks.push(data_dir_check(config));

    let opts: Result<PgConnectOptions, String> = match config.tier {
        Tier::Local => postgres::running_socket_dir(&config.data_dir)
            .map(|socket| {
                PgConnectOptions::new().socket(socket).username(postgres::SUPERUSER).database(postgres::DEFAULT_DB)
            })
            .ok_or_else(|| {
                "embedded Postgres is not running (start the gateway: make run / tessera serve)".to_string()
            }),
        Tier::Standalone | Tier::Federated => match &config.database_url {
            Some(url) => {
                url.expose().parse().map_err(|_| format!("DATABASE_URL {} is not a valid URL", url.redacted()))
            }
            None => Err("DATABASE_URL is not set".to_string()),
        },
    };
    let pool = match opts {
        Ok(opts) => {
            let target = crate::store::describe(&opts);
            match crate::store::connect(opts, 1, Duration::from_secs(5)).await {
                Ok(pool) => {
                    checks.push(check("postgres", Health::Green, format!("reachable at {target}")));
                    Some(pool)
                }
                Err(e) => {
                    checks.push(check("postgres", Health::Red, format!("{e:#}")));
                    None
                }
            }
        }
        Err(reason) => {
            checks.push(check("postgres", Health::Red, reason));
            None
        }
    };

    match &pool {
        Some(pool) => {
            let version = sqlx::query_scalar!("select extversion from pg_extension where extname = 'vector'")
                .fetch_optional(pool)
                .await
                .ok()
                .flatten();
            checks.push(match version {
                Some(v) => check("pgvector", Health::Green, format!("installed, version {v}")),
                None => match crate::store::require_pgvector(pool).await {
                    Ok(()) => {
                        check("pgvector", Health::Yellow, "available but not installed yet (run tessera migrate)")
                    }
                    Err(e) => check("pgvector", Health::Red, format!("{e:#}")),
                },
            });
            checks.push(match crate::store::migrations_applied(pool).await {
                Ok(true) => check("migrations", Health::Green, "all applied"),
                _ => check("migrations", Health::Yellow, "pending (tessera migrate, or start the gateway)"),
            });
            checks.push(ca_check(pool).await);
            checks.push(peers_check(pool).await);
            pool.close().await;
        }
        None => {
            checks.push(check("pgvector", Health::Red, "unknown: database unreachable"));
            checks.push(check("ca", Health::Red, "unknown: database unreachable"));
        }
    }

    checks.push(valkey_check(config).await);

    let status = checks.iter().map(|c| c.status).max().unwrap_or(Health::Green);
    let warnings =
        checks.iter().filter(|c| c.status == Health::Yellow).map(|c| format!("{}: {}", c.name, c.detail)).collect();
    Report { tier: config.tier.as_str(), status, checks, warnings }
}

/// Valkey in every tier: not used in `local`, optional in `standalone`, required in `federated`.
/// A configured Valkey that does not answer is red in any tier, because the gateway refuses to
/// start without it.
async fn valkey_check(config: &Config) -> Check {
    match (config.tier, &config.valkey_url) {
        (Tier::Local, _) => check("valkey", Health::Green, "not used in tier local (in-process rate limits)"),
        (Tier::Standalone, None) => {
            check("valkey", Health::Green, "not configured (optional in tier standalone; in-process rate limits)")
        }
        (Tier::Federated, None) => check("valkey", Health::Red, "VALKEY_URL is not set (required in tier federated)"),
        (_, Some(url)) => match crate::services::valkey::Valkey::connect_within(url, Duration::from_secs(5)).await {
            Ok(v) => {
                let address = v.address().to_string();
                v.close().await;
                check("valkey", Health::Green, format!("reachable at {address}"))
            }
            Err(e) => check("valkey", Health::Red, e.to_string()),
        },
    }
}

fn data_dir_check(config: &Config) -> Check {
    let dir = &config.data_dir;
    if !dir.exists() {
        return check(
            "data_dir",
            Health::Yellow,
            format!("{} does not exist yet (created on first start)", dir.display()),
        );
    }
    let probe = dir.join(".doctor-probe");
    match std::fs::write(&probe, b"ok") {
        Ok(()) => {
            let _ = std::fs::remove_file(&probe);
            check("data_dir", Health::Green, format!("{} is writable", dir.display()))
        }
        Err(e) => check("data_dir", Health::Red, format!("{} is not writable: {e}", dir.display())),
    }
}

async fn ca_check(pool: &sqlx::PgPool) -> Check {
    let row = sqlx::query_scalar!("select not_after from gateway_ca where id = 1").fetch_optional(pool).await;
    match row {
        Ok(Some(not_after)) => {
            let days = (not_after - chrono::Utc::now()).num_days();
            let status = if days < 0 {
                Health::Red
            } else if days < 30 {
                Health::Yellow
            } else {
                Health::Green
            };
            check("ca", status, format!("expires {} ({days} days)", not_after.to_rfc3339()))
        }
        Ok(None) => check("ca", Health::Yellow, "not created yet (created on first start)"),
        Err(_) => check("ca", Health::Yellow, "not created yet (migrations pending)"),
    }
}

/// The client certificates of the peers we call: yellow when one is in the last sixth of its
/// life, expired, refused, or failing to renew three times in a row (each named with its cause).
/// A failing peer is a warning, not red: this gateway itself works, and the fix is with the
/// peer relationship.
async fn peers_check(pool: &sqlx::PgPool) -> Check {
    let peers = match crate::federation::peers::list(pool).await {
        Ok(p) => p,
        Err(_) => return check("peers", Health::Yellow, "unknown (migrations pending)"),
    };
    let now = chrono::Utc::now();
    let called: Vec<_> = peers.iter().filter_map(|p| p.reader.as_ref().map(|r| (p, r))).collect();
    if called.is_empty() {
        return check("peers", Health::Green, "no peers called from this gateway");
    }
    let problems: Vec<String> = called
        .iter()
        .filter(|(p, r)| matches!(p.state.as_str(), "active" | "degraded") && r.status.needs_attention())
        .filter_map(|(p, r)| r.problem(now).map(|problem| format!("{}: {problem}", p.name)))
        .collect();
    if problems.is_empty() {
        let next = called.iter().filter_map(|(_, r)| r.cert_not_after).min();
        let detail = format!(
            "{} peer(s) called, client certificates renewing on schedule{}",
            called.len(),
            next.map(|t| format!(" (earliest expiry {})", t.to_rfc3339())).unwrap_or_default()
        );
        check("peers", Health::Green, detail)
    } else {
        check("peers", Health::Yellow, problems.join("; "))
    }
}
