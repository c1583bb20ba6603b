//! Admin tooling commands: `admin bootstrap` (headless, on the database), `login`, `token ...`
//! (over HTTPS to a gateway) and `import` (on the database).
//!
//! Passwords come from `TESSERA_PASSWORD` or, on a terminal, a prompt that does not echo. Without a
//! terminal the CLI never prompts: it prints the exact command to run next and exits 2.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

use super::client::{Auth, CliError, CliState, ClientArgs, Exit, GatewayClient};
use crate::admin::credentials::Secret;
use crate::admin::data::import::ImportError;
use crate::config::Config;
use crate::services::Database;

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Create the first admin and its first token directly in the database (no gateway needed).
    /// The password comes from TESSERA_PASSWORD or --password-file; the token is printed once.
    Bootstrap {
        #[arg(long)]
        email: String,
        #[arg(long)]
        name: String,
        /// File holding the password (a trailing newline is ignored).
        #[arg(long)]
        password_file: Option<PathBuf>,
        /// Print JSON (user id, email, token id and token) instead of the bare token.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Account email (env TESSERA_EMAIL); the password comes from a prompt or TESSERA_PASSWORD.
    #[arg(long, env = "TESSERA_EMAIL")]
    pub email: Option<String>,
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: TokenCommand,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// List your admin tokens (never their secrets).
    List {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Create an admin token and print its secret (shown once; not saved).
    Create {
        #[arg(long)]
        label: String,
        #[arg(long)]
        expires_in_days: Option<u32>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Revoke one of your admin tokens.
    Revoke { id: Uuid },
    /// Mint a new token, save it as the CLI's token, and optionally revoke the one in use.
    Rotate {
        #[arg(long)]
        revoke_old: bool,
    },
    /// Get a working token back with only email and password: signs in when there is no valid
    /// session, mints a token labelled with the time, and saves it as the CLI's token.
    Recover {
        /// Account email (env TESSERA_EMAIL).
        #[arg(long, env = "TESSERA_EMAIL")]
        email: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// A JSON Lines file, one `{"kind": "user" | "team" | "team_member" | "project" | "mission" |
    /// "task" | "mission_task" | "insight" | "preference", ...}` record a line.
    pub file: PathBuf,
    /// Print the counts per kind as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

fn finish(result: Result<(), CliError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}", e.message);
            e.exit.into()
        }
    }
}

fn read_password_env() -> Option<Secret> {
    std::env::var("TESSERA_PASSWORD").ok().filter(|p| !p.is_empty()).map(Secret::from_plaintext)
}

/// Email and password for a sign-in: flags and environment first, then a prompt on a terminal;
/// without one, the exact next command.
fn sign_in_inputs(email: Option<String>, command: &str, gateway: &str) -> Result<(String, Secret), CliError> {
    let tty = std::io::stdin().is_terminal();
    let email = match email.filter(|e| !e.trim().is_empty()) {
        Some(e) => e,
        None if tty => prompt_line("Email: ")?,
        None => {
            return Err(CliError::new(
                Exit::Trust,
                format!(
                    "No email given and no terminal to ask for one. Run:\n  \
                     TESSERA_PASSWORD=<password> tessera {command} --email <email> --gateway {gateway}"
                ),
            ));
        }
    };
    let password = match read_password_env() {
        Some(p) => p,
        None if tty => rpassword::prompt_password(format!("Password for {email}: "))
            .map(Secret::from_plaintext)
            .map_err(|e| CliError::new(Exit::Usage, format!("Cannot read the password: {e}")))?,
        None => {
            return Err(CliError::new(
                Exit::Trust,
                format!(
                    "No password in TESSERA_PASSWORD and no terminal to ask for one. Run:\n  \
                     TESSERA_PASSWORD=<password> tessera {command} --email {email} --gateway {gateway}"
                ),
            ));
        }
    };
    Ok((email, password))
}

fn prompt_line(prompt: &str) -> Result<String, CliError> {
    use std::io::Write as _;
    eprint!("{prompt}");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).map_err(|e| CliError::new(Exit::Usage, format!("Cannot read input: {e}")))?;
    Ok(line.trim().to_string())
}

/// Signs in and returns the session secret.
async fn sign_in(gw: &GatewayClient, email: &str, password: &Secret) -> Result<Secret, CliError> {
    let body = json!({ "email": email, "password": password.expose() });
    let reply = gw.send(Method::POST, "/api/auth/sign-in", &Auth::None, Some(&body)).await?;
    match reply.status {
        s if s.is_success() => reply
            .session_cookie
            .ok_or_else(|| CliError::new(Exit::Refused, "The gateway signed in but set no session cookie")),
        StatusCode::UNAUTHORIZED => Err(CliError::new(Exit::Trust, format!("Sign-in failed: {}", reply.message()))),
        StatusCode::TOO_MANY_REQUESTS => Err(CliError::new(
            Exit::Trust,
            format!(
                "Sign-in failed: too many failed sign-ins; retry in {} s",
                reply.retry_after.as_deref().unwrap_or("a few")
            ),
        )),
        _ => Err(gw.rejection(&reply)),
    }
}

/// `tessera login`.
pub async fn login(args: LoginArgs, config: &Config) -> ExitCode {
    finish(
        async {
            let gw = GatewayClient::new(&args.client, config)?;
            let (email, password) = sign_in_inputs(args.email, "login", &gw.base)?;
            let session = sign_in(&gw, &email, &password).await?;
            let mut state = CliState::load_for(&gw.base);
            state.session = Some(session);
            let path = state.save()?;
            eprintln!("Signed in to {} as {email}; session saved in {}", gw.base, path.display());
            Ok(())
        }
        .await,
    )
}

/// `tessera token ...`.
pub async fn token(args: TokenArgs, config: &Config) -> ExitCode {
    finish(
        async {
            let gw = GatewayClient::new(&args.client, config)?;
            match args.command {
                TokenCommand::List { json } => list(&gw, json).await,
                TokenCommand::Create { label, expires_in_days, json } => {
                    create(&gw, label, expires_in_days, json).await
                }
                TokenCommand::Revoke { id } => {
                    let auth = Auth::from_env_or(&CliState::load_for(&gw.base));
                    gw.call(Method::DELETE, &format!("/api/admin/tokens/{id}"), &auth, None).await?;
                    eprintln!("Token {id} revoked");
                    Ok(())
                }
                TokenCommand::Rotate { revoke_old } => rotate(&gw, revoke_old).await,
                TokenCommand::Recover { email } => recover(&gw, email).await,
            }
        }
        .await,
    )
}

fn no_credential(gw: &GatewayClient) -> CliError {
    CliError::new(
        Exit::Trust,
        format!(
            "No saved credential for {0}. Run:\n  TESSERA_PASSWORD=<password> tessera token recover --email <email> --gateway {0}",
            gw.base
        ),
    )
}

async fn list(gw: &GatewayClient, json: bool) -> Result<(), CliError> {
    let auth = Auth::from_env_or(&CliState::load_for(&gw.base));
    if matches!(auth, Auth::None) {
        return Err(no_credential(gw));
    }
    let body = gw.call(Method::GET, "/api/admin/tokens", &auth, None).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&body).unwrap_or_default());
        return Ok(());
    }
    for t in body["items"].as_array().into_iter().flatten() {
        println!(
            "{}  {}  expires {}  last used {}",
            t["id"].as_str().unwrap_or("?"),
            t["label"].as_str().unwrap_or(""),
            t["expiresAt"].as_str().unwrap_or("never"),
            t["lastUsedAt"].as_str().unwrap_or("never"),
        );
    }
    Ok(())
}

async fn mint(gw: &GatewayClient, auth: &Auth, label: &str, expires_in_days: Option<u32>) -> Result<Value, CliError> {
    let body = json!({ "label": label, "expiresInDays": expires_in_days });
    gw.call(Method::POST, "/api/admin/tokens", auth, Some(&body)).await
}

async fn create(gw: &GatewayClient, label: String, expires_in_days: Option<u32>, json: bool) -> Result<(), CliError> {
    let auth = Auth::from_env_or(&CliState::load_for(&gw.base));
    if matches!(auth, Auth::None) {
        return Err(no_credential(gw));
    }
    let token = mint(gw, &auth, &label, expires_in_days).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&token).unwrap_or_default());
    } else {
        println!("{}", token["plaintext"].as_str().unwrap_or(""));
        eprintln!("Token {} created; its secret (above) is shown only once.", token["id"].as_str().unwrap_or("?"));
    }
    Ok(())
}

/// Saves a freshly minted token as the CLI's token for this gateway.
fn save_token(gw: &GatewayClient, state: &mut CliState, token: &Value) -> Result<PathBuf, CliError> {
    let plaintext =
        token["plaintext"].as_str().ok_or_else(|| CliError::new(Exit::Refused, "The gateway returned no token"))?;
    state.gateway = Some(gw.base.clone());
    state.token = Some(Secret::from_plaintext(plaintext));
    state.token_id = token["id"].as_str().and_then(|s| s.parse().ok());
    state.save()
}

fn timestamp_label(prefix: &str) -> String {
    format!("{prefix} {}", chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ"))
}

async fn rotate(gw: &GatewayClient, revoke_old: bool) -> Result<(), CliError> {
    let mut state = CliState::load_for(&gw.base);
    let auth = Auth::from_env_or(&state);
    if matches!(auth, Auth::None) {
        return Err(no_credential(gw));
    }
    let me = gw.call(Method::GET, "/api/auth/session", &auth, None).await?;
    let token = mint(gw, &auth, &timestamp_label("rotated"), None).await?;
    let path = save_token(gw, &mut state, &token)?;
    eprintln!("New token {} saved in {}", token["id"].as_str().unwrap_or("?"), path.display());
    if revoke_old {
        if me["credential"]["kind"] == "token" {
            let old = me["credential"]["id"].as_str().unwrap_or_default();
            // Revoke with the new token: it is the credential the CLI keeps from now on.
            let new_auth = state.token.clone().map_or(Auth::None, Auth::Token);
            gw.call(Method::DELETE, &format!("/api/admin/tokens/{old}"), &new_auth, None).await?;
            eprintln!("Old token {old} revoked");
        } else {
            eprintln!("The old credential was a session, not a token; nothing to revoke");
        }
    }
    Ok(())
}

async fn recover(gw: &GatewayClient, email: Option<String>) -> Result<(), CliError> {
    let mut state = CliState::load_for(&gw.base);
    // A still-valid saved session is enough; otherwise sign in inline.
    let mut session = None;
    if let Some(s) = state.session.clone() {
        let reply = gw.send(Method::GET, "/api/auth/session", &Auth::Session(s.clone()), None).await?;
        if reply.status.is_success() {
            session = Some(s);
        }
    }
    let session = match session {
        Some(s) => s,
        None => {
            let (email, password) = sign_in_inputs(email, "token recover", &gw.base)?;
            let s = sign_in(gw, &email, &password).await?;
            state.session = Some(s.clone());
            state.save()?;
            s
        }
    };
    let token = mint(gw, &Auth::Session(session), &timestamp_label("recovered"), None).await?;
    let path = save_token(gw, &mut state, &token)?;
    eprintln!(
        "Recovered: token {} ({}) saved in {}",
        token["id"].as_str().unwrap_or("?"),
        token["label"].as_str().unwrap_or(""),
        path.display()
    );
    Ok(())
}

/// An admin exists already: on a terminal, offer to recover a token for it (the installer-style
/// inline recovery of the seed plan); without one, print the exact command and exit 3.
async fn already_bootstrapped(config: &Config, email: &str, refused: CliError) -> Result<(), CliError> {
    let args = ClientArgs::default();
    let gateway = GatewayClient::new(&args, config).map(|gw| gw.base).unwrap_or_else(|_| config.public_url.clone());
    let command = format!("TESSERA_PASSWORD=<password> tessera token recover --email {email} --gateway {gateway}");
    let tty = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    if tty {
        eprintln!("{}", refused.message);
        let answer = prompt_line(&format!("Recover a token for {email} now (the gateway must be running)? [y/N] "))?;
        if matches!(answer.to_ascii_lowercase().as_str(), "y" | "yes") {
            let gw = GatewayClient::new(&args, config)?;
            return recover(&gw, Some(email.to_string())).await;
        }
    }
    Err(CliError::new(
        Exit::Refused,
        format!(
            "{}\nAn admin already exists, so there is nothing to bootstrap. To get a new token for an admin, run:\n  {command}",
            refused.message
        ),
    ))
}

/// `tessera admin bootstrap`.
pub async fn bootstrap(command: AdminCommand, config: &Config) -> ExitCode {
    let AdminCommand::Bootstrap { email, name, password_file, json } = command;
    finish(
        async {
            let password = match password_file {
                Some(path) => std::fs::read_to_string(&path)
                    .map(|p| Secret::from_plaintext(p.trim_end_matches(['\r', '\n'])))
                    .map_err(|e| CliError::new(Exit::Usage, format!("Cannot read {}: {e}", path.display())))?,
                None => read_password_env().ok_or_else(|| {
                    CliError::new(
                        Exit::Trust,
                        format!(
                            "No password given. Run:\n  TESSERA_PASSWORD=<password> tessera admin bootstrap --email {email} --name '{name}'"
                        ),
                    )
                })?,
            };
            let db = Database::open(config, 2).await.map_err(|e| CliError::new(Exit::for_error(&e), format!("{e:#}")))?;
            let result = async {
                crate::store::migrate(&db.pool).await.map_err(|e| CliError::new(Exit::for_error(&e), format!("{e:#}")))?;
                let req = crate::admin::bootstrap::SetupRequest { email: email.clone(), name, password };
                crate::admin::bootstrap::setup(&db.pool, req).await.map_err(|e| {
                    // Already done: refused; invalid input (a short password, a bad email) is a
                    // usage error; anything else could not run, and its cause is printed.
                    use crate::error::{Chain, DomainError as _, Fault};
                    match e.fault() {
                        Fault::Conflict { .. } => CliError::new(Exit::Refused, format!("Bootstrap refused: {e}")),
                        Fault::Invalid { .. } => CliError::new(Exit::Usage, format!("Bootstrap refused: {e}")),
                        _ => CliError::new(Exit::Unreachable, format!("Bootstrap failed: {}", Chain(&e))),
                    }
                })
            }
            .await;
            db.close().await;
            let created = match result {
                Err(e) if e.exit == Exit::Refused => return already_bootstrapped(config, &email, e).await,
                other => other?,
            };
            let mut state = CliState::load_for(&config.public_url);
            state.token = Some(Secret::from_plaintext(created.token.plaintext.clone()));
            state.token_id = Some(created.token.id);
            let path = state.save()?;
            if json {
                let out = json!({
                    "userId": created.user.id,
                    "email": created.user.email,
                    "tokenId": created.token.id,
                    "token": created.token.plaintext,
                });
                println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
            } else {
                println!("{}", created.token.plaintext);
            }
            eprintln!(
                "Created admin {} with token {} (printed above, shown once; also saved in {})",
                created.user.email,
                created.token.id,
                path.display()
            );
            Ok(())
        }
        .await,
    )
}

/// `tessera import`.
pub async fn import(args: ImportArgs, config: &Config) -> ExitCode {
    finish(
        async {
            let file = std::fs::File::open(&args.file)
                .map_err(|e| CliError::new(Exit::Usage, format!("Cannot open {}: {e}", args.file.display())))?;
            let db =
                Database::open(config, 2).await.map_err(|e| CliError::new(Exit::for_error(&e), format!("{e:#}")))?;
            let result = async {
                crate::store::migrate(&db.pool)
                    .await
                    .map_err(|e| CliError::new(Exit::for_error(&e), format!("{e:#}")))?;
                crate::admin::data::import::import(&db.pool, std::io::BufReader::new(file)).await.map_err(|e| {
                    // A line that does not validate is the input's fault (64); a database that
                    // fails is not (1).
                    let exit = match e {
                        ImportError::Database(_) => Exit::Unreachable,
                        ImportError::Line { .. } | ImportError::Read(_) => Exit::Usage,
                    };
                    CliError::new(exit, format!("Import failed, nothing was imported: {e}"))
                })
            }
            .await;
            db.close().await;
            let counts = result?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&counts).unwrap_or_default());
            }
            let total: usize = counts.values().sum();
            let parts: Vec<String> = counts.iter().map(|(k, n)| format!("{n} {k}")).collect();
            eprintln!("Imported {total} records: {}", parts.join(", "));
            Ok(())
        }
        .await,
    )
}
