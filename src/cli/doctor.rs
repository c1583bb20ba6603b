//! `tessera doctor`: one entry per check, green / yellow / red, exit 1 on any red.
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
    }
    Ok(if report.status == Health::Red { ExitCode::FAILURE } else { ExitCode::SUCCESS })
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
            let version: Option<String> =
                sqlx::query_scalar("select extversion from pg_extension where extname = 'vector'")
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
            pool.close().await;
        }
        None => {
            checks.push(check("pgvector", Health::Red, "unknown: database unreachable"));
            checks.push(check("ca", Health::Red, "unknown: database unreachable"));
        }
    }

    checks.push(valkey_check(config).await);

    let status = checks.iter().map(|c| c.status).max().unwrap_or(Health::Green);
    Report { tier: config.tier.as_str(), status, checks }
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
    let row: Result<Option<chrono::DateTime<chrono::Utc>>, _> =
        sqlx::query_scalar("select not_after from gateway_ca where id = 1").fetch_optional(pool).await;
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
