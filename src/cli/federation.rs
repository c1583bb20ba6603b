//! `tessera peer ...` and `tessera grant ...`: federation trust from the operator's shell.
//!
//! These commands run on the gateway's machine and work on its database directly (the same
//! service functions the admin API calls), like `tessera migrate`: an operator setting up trust
//! has the data dir at hand, and the embedded cluster is reused when the gateway is running.
//! Rejections (unknown peer, invalid scope, wrong state) exit 3 with the reason; a database
//! failure exits 1 with the database's own message (domain errors become a [`CliError`]). One
//! exception to "the database only": `peer health` also asks the running gateway (admin API, like
//! `tessera audit`) for the circuit breaker and call latencies, which live in that process only.

use std::process::ExitCode;

use clap::Subcommand;
use uuid::Uuid;

use super::client::CliError;
use super::exit::{Exit, UsageError};
use crate::config::Config;
use crate::federation::{client, enrollment, grants, peers};
use crate::sealing::SealingKey;
use crate::services::Database;

#[derive(Debug, Subcommand)]
pub enum PeerCommand {
    /// Register a peer that will call this gateway.
    Create {
        name: String,
        /// Where the peer is reached, if this gateway also calls it.
        #[arg(long)]
        endpoint: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List peers with state, CA fingerprint and certificate expiry; for peers we call, where we
    /// stand (ok, expiring, expired, refusing...), our certificate serial, renewals and last calls.
    List {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show one peer (by name or id), with our certificate, renewals, last success and last error.
    Show {
        peer: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// A peer's health both ways: its requests and denials over the last hour and its grants'
    /// certificates (inbound), and where we stand calling it (outbound: status, certificate
    /// expiry, last success, last error and its cause). The circuit breaker and the latency
    /// p50/p99 live in the serving process: they are asked of the running gateway
    /// (`GET /api/admin/peers/{id}/health`, with `tessera login` or TESSERA_TOKEN), and the
    /// output says why when it cannot be asked.
    Health {
        peer: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: super::client::ClientArgs,
    },
    /// Enroll with a remote gateway from the enrollment URL its admin gave you.
    ///
    /// The peer's CA must be pinned before anything is sent: by the URL's `#sha256=` fragment
    /// (tessera's URLs carry one), by `--ca-fingerprint` (for URLs without one, such as Mosaic's),
    /// or, on a terminal, by confirming the fingerprint shown. Without any of these it refuses.
    Add {
        /// `https://host:port/api/federation/enrollment/<token>[#sha256=<fingerprint>]`
        enrollment_url: String,
        /// Local name for the peer [default: the URL's host].
        #[arg(long)]
        name: Option<String>,
        /// SHA-256 of the peer's CA certificate, from its admin (64 hex characters; colons and a
        /// `sha256=` prefix are accepted). Must agree with the URL's pin if it has one.
        #[arg(long, value_name = "SHA256")]
        ca_fingerprint: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum GrantCommand {
    /// Create a pending grant of one local user's data to a peer.
    Create {
        /// Peer name or id.
        #[arg(long)]
        peer: String,
        /// Subject user: email or id.
        #[arg(long)]
        user: String,
        /// Scope JSON file (DESIGN §4).
        #[arg(long)]
        scope: std::path::PathBuf,
        /// RFC 3339 expiry.
        #[arg(long)]
        expires_at: Option<chrono::DateTime<chrono::Utc>>,
        /// Federation requests per minute for this grant, overriding TESSERA_FEDERATION_RATE_PER_MINUTE.
        #[arg(long, value_parser = clap::value_parser!(i32).range(1..=1_000_000))]
        rate_per_minute: Option<i32>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List grants.
    List {
        #[arg(long)]
        peer: Option<String>,
        #[arg(long)]
        status: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show one grant.
    Show {
        id: Uuid,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a grant (irreversible).
    Revoke {
        id: Uuid,
        #[arg(long)]
        reason: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Mint a single-use enrollment token (and URL) for a pending grant.
    Token {
        id: Uuid,
        /// Token lifetime in seconds (at most 900).
        #[arg(long)]
        ttl: Option<i64>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// What a grant exposes now, per resource: allowed or the stage that refuses, teams,
    /// personal, row cap and how many rows the peer would see (never the rows).
    Explain {
        id: Uuid,
        #[arg(long)]
        json: bool,
    },
    /// Mint a single-use re-enrollment token (and URL) for an active grant: the reader runs
    /// `tessera peer add <url>` and gets a new certificate on the same grant (for example after
    /// its certificate expired); the old certificate stops working at once.
    Reenroll {
        id: Uuid,
        /// Token lifetime in seconds (at most 900).
        #[arg(long)]
        ttl: Option<i64>,
        #[arg(long)]
        json: bool,
    },
}

/// The URL the running gateway serves (it records it at start), not one guessed from this
/// shell's TESSERA_LISTEN; this shell's configuration only when no gateway has run yet.
async fn advertised_url(pool: &sqlx::PgPool, config: &Config) -> anyhow::Result<String> {
    Ok(match crate::store::advertised_url::current(pool).await? {
        Some(url) => url,
        None => {
            tracing::warn!(
                url = %config.public_url,
                "no gateway has recorded its public URL on this database yet (start `tessera serve`); \
                 using this shell's configuration"
            );
            config.public_url.clone()
        }
    })
}

fn print<T: serde::Serialize>(json: bool, value: &T, text: impl FnOnce(&T) -> String) -> Result<(), CliError> {
    if json {
        println!("{}", serde_json::to_string_pretty(value).map_err(anyhow::Error::from)?);
    } else {
        println!("{}", text(value));
    }
    Ok(())
}

/// Runs a command on the gateway's database: opens and migrates it, runs `command`, closes it.
/// A failure reaches `main` as a [`CliError`], which prints it and exits with its code (a
/// refusal 3 with the domain's message, a database failure 1 with the database's).
async fn on_database<F>(config: &Config, command: F) -> anyhow::Result<ExitCode>
where
    F: AsyncFnOnce(&sqlx::PgPool) -> Result<(), CliError>,
{
    let db = Database::open(config, 2).await?;
    crate::store::migrate(&db.pool).await?;
    let result = command(&db.pool).await;
    db.close().await;
    result?;
    Ok(ExitCode::SUCCESS)
}

/// One line per peer. For a peer we call, the state column shows where we stand now
/// (`expired`, `refusing`...) rather than the stored `active`, and the certificate, renewal and
/// call columns follow.
fn peer_line(p: &peers::Peer) -> String {
    let time = |t: Option<chrono::DateTime<chrono::Utc>>| t.map_or_else(|| "-".to_string(), |t| t.to_rfc3339());
    let status = match &p.reader {
        Some(r) if p.state.is_callable() && r.status != crate::federation::peer_status::ReaderStatus::Ok => {
            r.status.as_str()
        }
        _ => p.state.as_str(),
    };
    let mut line = format!(
        "{}  {:<20} {:<15} ca={} cert_expires={} endpoint={}",
        p.id,
        p.name,
        status,
        p.ca_fingerprint.as_deref().map_or("-", |f| &f[..16.min(f.len())]),
        time(p.cert_not_after.or(p.client_cert_not_after)),
        p.endpoint_url.as_deref().unwrap_or("-")
    );
    if let Some(r) = &p.reader {
        line.push_str(&format!(
            " serial={} renewed={} renew_at={} last_success={}",
            r.cert_serial.as_deref().unwrap_or("-"),
            time(r.last_renewed_at),
            time(r.renew_at),
            time(r.last_success_at),
        ));
        if r.renewal_failures > 0 {
            line.push_str(&format!(" renewal_failures={}", r.renewal_failures));
        }
        if let Some(since) = r.refusing_since {
            line.push_str(&format!(" refusing_since={}", since.to_rfc3339()));
        }
        if let Some(e) = &r.last_error {
            line.push_str(&format!(" last_error_at={} last_error={e:?}", time(r.last_error_at)));
        }
    }
    line
}

/// `peer show`: one field a line.
fn peer_detail(p: &peers::Peer) -> String {
    let time = |t: Option<chrono::DateTime<chrono::Utc>>| t.map_or_else(|| "-".to_string(), |t| t.to_rfc3339());
    let mut lines = vec![
        format!("id:               {}", p.id),
        format!("name:             {}", p.name),
        format!("state:            {}", p.state),
    ];
    if p.current_serial.is_some() || p.cert_not_after.is_some() {
        lines.push(format!("their serial:     {}", p.current_serial.as_deref().unwrap_or("-")));
        lines.push(format!("their cert until: {}", time(p.cert_not_after)));
    }
    if let Some(endpoint) = &p.endpoint_url {
        lines.push(format!("endpoint:         {endpoint}"));
    }
    if let Some(f) = &p.ca_fingerprint {
        lines.push(format!("ca sha256:        {f}"));
    }
    if let Some(r) = &p.reader {
        let now = chrono::Utc::now();
        lines.push(format!("status:           {}", r.status.as_str()));
        if let Some(problem) = r.problem(now) {
            lines.push(format!("problem:          {problem}"));
        }
        lines.push(format!("cert serial:      {}", r.cert_serial.as_deref().unwrap_or("-")));
        lines.push(format!("cert valid:       {} .. {}", time(r.cert_not_before), time(r.cert_not_after)));
        lines.push(format!("next renewal:     {}", time(r.renew_at)));
        lines.push(format!("last renewal:     {}", time(r.last_renewed_at)));
        lines.push(format!("renewal failures: {}", r.renewal_failures));
        lines.push(format!("last success:     {}", time(r.last_success_at)));
        lines.push(format!("refusing since:   {}", time(r.refusing_since)));
        lines.push(format!(
            "last error:       {}{}",
            r.last_error.as_deref().unwrap_or("-"),
            r.last_error_at.map(|t| format!(" (at {})", t.to_rfc3339())).unwrap_or_default()
        ));
    }
    lines.join("\n")
}

/// A grant as the CLI shows it: the stored grant plus the names behind its ids, so an operator
/// reads `peer=acme subject=ada@example.org` rather than two UUIDs.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct GrantView {
    #[serde(flatten)]
    grant: grants::Grant,
    peer_name: Option<String>,
    subject_email: Option<String>,
    subject_name: Option<String>,
}

/// Looks up the peer and subject names of `all` in two queries.
async fn named(pool: &sqlx::PgPool, all: Vec<grants::Grant>) -> Result<Vec<GrantView>, CliError> {
    let peer_ids: Vec<Uuid> = all.iter().map(|g| g.peer_id).collect();
    let user_ids: Vec<Uuid> = all.iter().filter_map(|g| g.subject_user_id).collect();
    let peers: std::collections::HashMap<Uuid, String> =
        crate::store::peers::names(pool, &peer_ids).await?.into_iter().collect();
    let users: std::collections::HashMap<Uuid, (String, String)> = crate::store::grants::subject_names(pool, &user_ids)
        .await?
        .into_iter()
        .map(|(id, email, name)| (id, (email, name)))
        .collect();
    Ok(all
        .into_iter()
        .map(|grant| {
            let user = grant.subject_user_id.and_then(|u| users.get(&u));
            GrantView {
                peer_name: peers.get(&grant.peer_id).cloned(),
                subject_email: user.map(|u| u.0.clone()),
                subject_name: user.map(|u| u.1.clone()),
                grant,
            }
        })
        .collect())
}

/// One grant, with its names.
async fn named_one(pool: &sqlx::PgPool, grant: grants::Grant) -> Result<GrantView, CliError> {
    Ok(named(pool, vec![grant]).await?.remove(0))
}

fn grant_line(v: &GrantView) -> String {
    let g = &v.grant;
    format!(
        "{}  peer={} ({}) subject={} ({}) status={} scope={}",
        g.id,
        v.peer_name.as_deref().unwrap_or("-"),
        g.peer_id,
        v.subject_email.as_deref().unwrap_or("-"),
        g.subject_user_id.map_or_else(|| "-".to_string(), |u| u.to_string()),
        g.status,
        g.scope
    )
}

pub async fn peer(config: &Config, cmd: PeerCommand) -> anyhow::Result<ExitCode> {
    on_database(config, async |pool| peer_inner(config, pool, cmd).await).await
}

async fn peer_inner(config: &Config, pool: &sqlx::PgPool, cmd: PeerCommand) -> Result<(), CliError> {
    match cmd {
        PeerCommand::Health { peer, json, client } => {
            let p = peers::resolve(pool, &peer).await?;
            let inbound = crate::federation::peer_health::inbound(pool, p.id).await?;
            let live = match &p.reader {
                Some(_) => Some(live_outbound(config, &client, p.id).await),
                None => None,
            };
            let (outbound, unavailable) = match live {
                Some(Ok(o)) => (Some(o), None),
                Some(Err(why)) => (None, Some(why)),
                None => (None, None),
            };
            let health = serde_json::json!({
                "peerId": p.id, "name": p.name, "inbound": inbound, "reader": p.reader,
                "outbound": outbound, "outboundUnavailable": unavailable,
            });
            print(json, &health, |_| {
                let mut lines = vec![format!(
                    "{}: inbound {} requests in the last hour, {} denied ({} over the rate limit), last request {}",
                    p.name,
                    inbound.requests_last_hour,
                    inbound.denied_last_hour,
                    inbound.rate_limited_last_hour,
                    inbound.last_request_at.map_or_else(|| "never".to_string(), |t| t.to_rfc3339()),
                )];
                for (code, n) in &inbound.denials_by_code {
                    lines.push(format!("  denied {n} x {code}"));
                }
                for c in &inbound.certificates {
                    lines.push(format!(
                        "  grant {} ({}): certificate {} until {}",
                        c.grant_id,
                        c.status,
                        c.serial.as_deref().unwrap_or("-"),
                        c.not_after.map_or_else(|| "-".to_string(), |t| t.to_rfc3339())
                    ));
                }
                if let Some(r) = &p.reader {
                    lines.extend(outbound_lines(r, outbound.as_ref(), unavailable.as_deref()));
                }
                lines.join("\n")
            })?;
        }
        PeerCommand::Create { name, endpoint, json } => {
            let p = peers::create(pool, &name, endpoint.as_deref()).await?;
            print(json, &p, peer_line)?;
        }
        PeerCommand::List { json } => {
            let all = peers::list(pool).await?;
            print(json, &all, |all| all.iter().map(peer_line).collect::<Vec<_>>().join("\n"))?;
        }
        PeerCommand::Show { peer, json } => print(json, &peers::resolve(pool, &peer).await?, peer_detail)?,
        PeerCommand::Add { enrollment_url, name, ca_fingerprint, json } => {
            let mut url = client::parse_enrollment_url(&enrollment_url)?;
            url.pin = Some(enrollment_pin(&url, &enrollment_url, name.as_deref(), ca_fingerprint.as_deref()).await?);
            let sealing =
                SealingKey::load(config.sealing_key.as_ref(), &config.data_dir).map_err(anyhow::Error::from)?;
            let opts = client::AddPeer { url: &url, name: name.as_deref(), oids: &config.federation.oids };
            let enrolled = client::add_peer(pool, &sealing, &opts).await?;
            print(json, &enrolled, |e| match &e.replaced {
                None => format!(
                    "enrolled with {} as peer '{}' (grant {}, certificate valid until {})",
                    e.endpoint_url, e.name, e.remote_grant_id, e.cert_not_after
                ),
                Some(old) => format!(
                    "re-enrolled with {} as peer '{}' on the same grant {}: replaces certificate {} ({} {}); \
                     the new one is valid until {}",
                    e.endpoint_url,
                    e.name,
                    e.remote_grant_id,
                    old.serial,
                    if old.not_after <= chrono::Utc::now() { "expired" } else { "valid until" },
                    old.not_after,
                    e.cert_not_after
                ),
            })?;
        }
    }
    Ok(())
}

/// Single-quotes `s` for a POSIX shell.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The CA pin for `peer add`: the URL's, `--ca-fingerprint` (which must agree with it), or on a
/// terminal the fingerprint of the CA the peer serves, once the operator confirms it. Without a
/// terminal and without a pin it refuses (exit 2) and prints the command to run: there is no
/// trust on first use.
async fn enrollment_pin(
    url: &client::EnrollmentUrl,
    raw_url: &str,
    name: Option<&str>,
    flag: Option<&str>,
) -> anyhow::Result<String> {
    use std::io::{BufRead as _, IsTerminal as _, Write as _};
    let flag =
        flag.map(client::parse_fingerprint).transpose().map_err(|e| UsageError(format!("--ca-fingerprint: {e}")))?;
    match (&url.pin, flag) {
        (Some(pin), Some(flag)) if *pin != flag => {
            return Err(UsageError(format!(
                "the enrollment URL pins sha256={pin} but --ca-fingerprint gives sha256={flag}; \
                 ask the peer's admin which is right (nothing was sent)"
            ))
            .into());
        }
        (Some(pin), _) => return Ok(pin.clone()),
        (None, Some(flag)) => return Ok(flag),
        (None, None) => {}
    }
    let command = format!(
        "tessera peer add {}{} --ca-fingerprint <sha256 of the peer's CA, from its admin>",
        shell_quote(raw_url),
        name.map(|n| format!(" --name {}", shell_quote(n))).unwrap_or_default()
    );
    if !(std::io::stdin().is_terminal() && std::io::stderr().is_terminal()) {
        return Err(crate::outcome::Untrusted(format!(
            "Cannot trust {}: the enrollment URL carries no #sha256= pin, and there is no terminal to confirm the \
             CA's fingerprint (tessera never trusts a CA on first use). Ask the peer's admin for the SHA-256 \
             fingerprint of its CA and run:\n  {command}",
            url.origin
        ))
        .into());
    }
    let ca_pem = client::fetch_ca_unverified(&url.origin).await?;
    let actual = client::pem_fingerprint(&ca_pem)?;
    let mut err = std::io::stderr();
    write!(
        err,
        "The enrollment URL carries no CA pin. The gateway at {} presents a CA with\n  sha256={actual}\n\
         Compare it with the fingerprint the peer's admin gave you. Trust this CA? Type yes to continue: ",
        url.origin
    )?;
    err.flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if matches!(answer.trim().to_ascii_lowercase().as_str(), "yes" | "y") {
        Ok(actual)
    } else {
        Err(crate::outcome::Untrusted(format!(
            "not trusted: refusing to enroll with {} (nothing was sent). With the fingerprint from the peer's admin, run:\n  {command}",
            url.origin
        ))
        .into())
    }
}

/// The reader's side of `tessera peer health`, one fact a line.
fn outbound_lines(
    r: &crate::federation::peer_status::ReaderView,
    live: Option<&crate::federation::peer_health::OutboundHealth>,
    unavailable: Option<&str>,
) -> Vec<String> {
    let at = |t: Option<chrono::DateTime<chrono::Utc>>| t.map_or_else(|| "never".to_string(), |t| t.to_rfc3339());
    let mut lines = vec![
        format!("outbound: {}", r.status.as_str()),
        format!(
            "  certificate {} until {}",
            r.cert_serial.as_deref().unwrap_or("-"),
            r.cert_not_after.map_or_else(|| "-".to_string(), |t| t.to_rfc3339())
        ),
        format!("  last success {}", at(r.last_success_at)),
        match &r.last_error {
            Some(e) => format!("  last error {e} at {}", at(r.last_error_at)),
            None => "  last error none".to_string(),
        },
    ];
    let ms = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.1} ms"));
    match (live, unavailable) {
        (Some(o), _) => {
            lines.push(format!("  circuit {}", o.circuit));
            lines.push(format!(
                "  {} calls in the last hour, latency p50 {}, p99 {}",
                o.calls_last_hour,
                ms(o.latency_p50_ms),
                ms(o.latency_p99_ms)
            ));
        }
        (None, why) => {
            lines.push(format!("  circuit and latency unknown: {}", why.unwrap_or("the serving gateway was not asked")))
        }
    }
    lines
}

/// The circuit and latencies of `peer_id`, from the running gateway that holds them, or why
/// they could not be had (no credential, gateway down, refused).
async fn live_outbound(
    config: &Config,
    args: &super::client::ClientArgs,
    peer_id: Uuid,
) -> Result<crate::federation::peer_health::OutboundHealth, String> {
    use super::client::{Auth, CliState, GatewayClient};
    let gw = GatewayClient::new(args, config).map_err(|e| e.message)?;
    let auth = Auth::from_env_or(&CliState::load_for(&gw.base));
    if matches!(auth, Auth::None) {
        return Err(format!("no credential for {} (run `tessera login` or set TESSERA_TOKEN)", gw.base));
    }
    let reply = gw
        .send(reqwest::Method::GET, &format!("/api/admin/peers/{peer_id}/health"), &auth, None)
        .await
        .map_err(|e| format!("the gateway at {} could not be asked: {}", gw.base, e.message))?;
    if !reply.status.is_success() {
        return Err(format!("the gateway at {} answered {}", gw.base, reply.describe()));
    }
    serde_json::from_value(reply.body["outbound"].clone())
        .map_err(|_| format!("the gateway at {} does not call this peer", gw.base))
}

pub async fn grant(config: &Config, cmd: GrantCommand) -> anyhow::Result<ExitCode> {
    on_database(config, async |pool| grant_inner(config, pool, cmd).await).await
}

/// The CA and the URL an enrollment token is minted with.
async fn minting(
    config: &Config,
    pool: &sqlx::PgPool,
) -> anyhow::Result<(std::sync::Arc<crate::federation::ca::GatewayCa>, String)> {
    let sealing = SealingKey::load(config.sealing_key.as_ref(), &config.data_dir)?;
    let ca = crate::federation::ca::GatewayCa::load_or_create(pool, &sealing).await?;
    Ok((ca, advertised_url(pool, config).await?))
}

async fn grant_inner(config: &Config, pool: &sqlx::PgPool, cmd: GrantCommand) -> Result<(), CliError> {
    match cmd {
        GrantCommand::Create { peer, user, scope, expires_at, rate_per_minute, json } => {
            let peer = peers::resolve(pool, &peer).await?;
            let subject = match Uuid::parse_str(&user) {
                Ok(id) => Some(id),
                Err(_) => crate::store::grants::subject_by_email(pool, &user).await?,
            };
            let Some(subject_user_id) = subject else {
                return Err(CliError::new(Exit::Refused, format!("no user '{user}'")));
            };
            let text = std::fs::read_to_string(&scope)
                .map_err(|e| UsageError(format!("--scope: cannot read {}: {e}", scope.display())))
                .map_err(anyhow::Error::from)?;
            let scope: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| UsageError(format!("--scope: {} is not JSON: {e}", scope.display())))
                .map_err(anyhow::Error::from)?;
            let body = grants::CreateGrant { peer_id: peer.id, subject_user_id, scope, expires_at, rate_per_minute };
            let mut tx = pool.begin().await?;
            let g = grants::create(&mut tx, &body).await?;
            tx.commit().await?;
            print(json, &named_one(pool, g).await?, grant_line)?;
        }
        GrantCommand::List { peer, status, json } => {
            let peer_id = match peer {
                Some(p) => Some(peers::resolve(pool, &p).await?.id),
                None => None,
            };
            let all = named(pool, grants::list(pool, &grants::GrantFilter { peer_id, status }).await?).await?;
            print(json, &all, |all| all.iter().map(grant_line).collect::<Vec<_>>().join("\n"))?;
        }
        GrantCommand::Show { id, json } => {
            let g = grants::find(pool, id).await?.ok_or(grants::GrantError::NotFound)?;
            print(json, &named_one(pool, g).await?, grant_line)?;
        }
        GrantCommand::Revoke { id, reason, json } => {
            let mut tx = pool.begin().await?;
            let g = grants::revoke(&mut tx, id, &reason).await?;
            tx.commit().await?;
            print(json, &named_one(pool, g).await?, grant_line)?;
        }
        GrantCommand::Token { id, ttl, json } => {
            let (ca, public_url) = minting(config, pool).await?;
            let t = enrollment::mint(pool, &public_url, &ca, id, ttl).await?;
            print(json, &t, |t| t.enrollment_url.clone())?;
        }
        GrantCommand::Explain { id, json } => {
            let e = crate::federation::explain::explain_saved(pool, id).await?;
            print(json, &e, |e| {
                let mut lines = Vec::new();
                if let Some(d) = &e.grant_denial {
                    lines.push(format!("the grant itself is refused: {d}"));
                }
                for r in &e.resources {
                    lines.push(if r.allowed {
                        format!(
                            "{:<12} allowed: {} rows visible now, personal {}, {} teams, at most {} per page",
                            r.resource,
                            r.visible_rows,
                            if r.include_personal { "on" } else { "off" },
                            r.team_ids.len(),
                            r.row_cap
                        )
                    } else {
                        format!(
                            "{:<12} refused at {} ({}): {}",
                            r.resource,
                            r.stage.as_deref().unwrap_or("-"),
                            r.deny_code.as_deref().unwrap_or("-"),
                            r.reason.as_deref().unwrap_or("")
                        )
                    });
                }
                lines.join("\n")
            })?;
        }
        GrantCommand::Reenroll { id, ttl, json } => {
            let (ca, public_url) = minting(config, pool).await?;
            let t = enrollment::mint_reenrollment(pool, &public_url, &ca, id, ttl).await?;
            print(json, &t, |t| t.enrollment_url.clone())?;
        }
    }
    Ok(())
}

#[derive(Debug, Subcommand)]
pub enum FederationCommand {
    /// List a resource from a peer (rows tagged with the peer's name).
    List {
        #[arg(long)]
        peer: String,
        /// tasks, notes or memory
        resource: String,
        #[arg(long)]
        limit: Option<u32>,
        /// Start after this cursor (the nextCursor of a previous page).
        #[arg(long)]
        cursor: Option<String>,
        /// Follow nextCursor to the last page.
        #[arg(long)]
        all_pages: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Fetch one row from a peer.
    Get {
        #[arg(long)]
        peer: String,
        resource: String,
        id: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// What our grant at a peer allows.
    Capabilities {
        #[arg(long)]
        peer: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Search a resource at a peer: full text, or with `--vector-file` a vector (hybrid by
    /// default); rows best first, tagged with the peer's name, with `_score`.
    Search {
        #[arg(long)]
        peer: String,
        /// tasks, notes or memory
        resource: String,
        /// The search text (may be empty with --vector-file).
        query: String,
        /// A JSON file holding the query embedding: an array of 384 numbers.
        #[arg(long)]
        vector_file: Option<std::path::PathBuf>,
        /// text, vector or hybrid [default: hybrid with --vector-file, else text]
        #[arg(long)]
        mode: Option<String>,
        #[arg(long)]
        limit: Option<u32>,
        /// Continue after this cursor (the nextCursor of a previous page of the same search).
        #[arg(long)]
        cursor: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Local data, one peer or all peers, merged newest first (`--source local|peer:<name>|all`).
    Query {
        resource: String,
        #[arg(long, default_value = "all")]
        source: String,
        #[arg(long)]
        limit: Option<u32>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Exit 1 when the peer cannot be reached (like an unreachable gateway), 2 when trust failed
/// either way (its certificate, or ours refused), 3 when it refused the request.
fn peer_failed(e: &crate::federation::peer_client::CallError) -> ExitCode {
    use crate::federation::peer_client::CallError;
    eprintln!("{} ({})", e, e.code());
    match e {
        CallError::Network(..) => Exit::Unreachable,
        CallError::Untrusted(..) | CallError::CertificateRefused(..) => Exit::Trust,
        CallError::Http(_, 401 | 403, _) => Exit::Trust,
        _ => Exit::Refused,
    }
    .into()
}

fn item_line(v: &serde_json::Value) -> String {
    let label = ["title", "notes", "content", "key"].iter().find_map(|k| v[*k].as_str()).unwrap_or("");
    format!(
        "{}  {}  [{}]  {}",
        v["createdAt"].as_str().unwrap_or("-"),
        v["id"].as_str().unwrap_or("-"),
        v["_source"].as_str().unwrap_or("-"),
        label
    )
}

pub async fn federation(config: &Config, cmd: FederationCommand) -> anyhow::Result<ExitCode> {
    let db = Database::open(config, 2).await?;
    crate::store::migrate(&db.pool).await?;
    let sealing = SealingKey::load(config.sealing_key.as_ref(), &config.data_dir)?;
    let caller =
        crate::federation::peer_client::PeerCaller { pool: db.pool.clone(), sealing, breakers: Default::default() };
    let result = federation_inner(&caller, cmd).await;
    db.close().await;
    result
}

async fn federation_inner(
    caller: &crate::federation::peer_client::PeerCaller,
    cmd: FederationCommand,
) -> anyhow::Result<ExitCode> {
    match cmd {
        FederationCommand::List { peer, resource, limit, cursor, all_pages, json } => {
            let mut items = Vec::new();
            let mut cursor = cursor;
            let bar = indicatif::ProgressBar::new_spinner();
            loop {
                let page = match caller.list(&peer, &resource, limit, cursor.as_deref()).await {
                    Ok(p) => p,
                    Err(e) => return Ok(peer_failed(&e)),
                };
                items.extend(page.items);
                cursor = page.next_cursor;
                if all_pages && !json {
                    bar.set_message(format!("{} rows", items.len()));
                }
                if !all_pages || cursor.is_none() {
                    break;
                }
            }
            bar.finish_and_clear();
            let out = serde_json::json!({"items": items, "nextCursor": cursor});
            print(json, &out, |o| {
                let mut lines: Vec<String> = o["items"].as_array().into_iter().flatten().map(item_line).collect();
                if let Some(c) = o["nextCursor"].as_str() {
                    lines.push(format!("next page: --cursor {c}"));
                }
                lines.join("\n")
            })?;
        }
        FederationCommand::Get { peer, resource, id, json } => match caller.get(&peer, &resource, &id).await {
            Ok(v) => print(json, &v, |v| item_line(&v["item"]))?,
            Err(e) => return Ok(peer_failed(&e)),
        },
        FederationCommand::Capabilities { peer, json } => match caller.capabilities(&peer).await {
            Ok(v) => print(json, &v, |v| {
                format!(
                    "resources: {}\nexcluded: {}\nmax rows per query: {}\nverbs: {}",
                    v["resources"], v["excluded_resources"], v["max_rows_per_query"], v["supported_verbs"]
                )
            })?,
            Err(e) => return Ok(peer_failed(&e)),
        },
        FederationCommand::Search { peer, resource, query, vector_file, mode, limit, cursor, json } => {
            let mut body = serde_json::Map::new();
            if !query.trim().is_empty() {
                body.insert("query".into(), query.into());
            }
            if let Some(path) = vector_file {
                let text = match std::fs::read_to_string(&path) {
                    Ok(t) => t,
                    Err(e) => {
                        eprintln!("cannot read {}: {e}", path.display());
                        return Ok(Exit::Usage.into());
                    }
                };
                match serde_json::from_str::<serde_json::Value>(&text) {
                    Ok(v @ serde_json::Value::Array(_)) => {
                        body.insert("vector".into(), v);
                    }
                    _ => {
                        eprintln!("{}: must hold a JSON array of numbers", path.display());
                        return Ok(Exit::Usage.into());
                    }
                }
            }
            for (key, value) in [("mode", mode), ("cursor", cursor)] {
                if let Some(v) = value {
                    body.insert(key.into(), v.into());
                }
            }
            if let Some(limit) = limit {
                body.insert("limit".into(), limit.into());
            }
            match caller.search(&peer, &resource, serde_json::Value::Object(body)).await {
                Ok(page) => print(json, &page, |p| {
                    let mut lines: Vec<String> = p
                        .items
                        .iter()
                        .map(|i| format!("{:>8.4}  {}", i["_score"].as_f64().unwrap_or(0.0), item_line(i)))
                        .collect();
                    if let Some(c) = &p.next_cursor {
                        lines.push(format!("next page: --cursor {c}"));
                    }
                    lines.join("\n")
                })?,
                Err(e) => return Ok(peer_failed(&e)),
            }
        }
        FederationCommand::Query { resource, source, limit, json } => {
            let q = crate::federation::query::FederatedQuery { resource, source: Some(source), limit };
            let r = crate::federation::query::run(caller, &q).await?;
            print(json, &r, |r| {
                let mut lines: Vec<String> = r.items.iter().map(item_line).collect();
                lines.extend(r.errors.iter().map(|e| format!("error from {}: {} ({})", e.source, e.message, e.code)));
                lines.join("\n")
            })?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
