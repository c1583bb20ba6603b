//! What the admin-tooling commands share: how to reach the gateway (URL, CA, credential), the
//! CLI's state file, and the mapping of outcomes to exit codes.
//!
//! Exit codes follow [`super::exit`]: 1 the gateway could not be reached (with the cause: refused,
//! timeout, DNS); 2 authentication or trust (sign-in failed, expired or revoked credential, "User
//! is not an admin", the gateway's certificate not signed by the CA we trust, a name mismatch);
//! 3 the server rejected the request (status, error code and message of the envelope).
//!
//! State lives in `TESSERA_CONFIG_DIR` (default `$XDG_CONFIG_HOME/tessera` or
//! `~/.config/tessera`), in `credentials.json`, mode 0600, replaced atomically (temp file +
//! rename) so a crash never leaves half a file and a reader never sees one.

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::admin::credentials::Secret;
use crate::admin::guard::SESSION_COOKIE;
use crate::config::Config;

pub use super::exit::Exit;
use crate::connect_failure::ConnectFailure;

/// Where the gateway is and how to trust it.
#[derive(Debug, Clone, Default, Args)]
pub struct ClientArgs {
    /// Gateway base URL [default: the local gateway, https://<TESSERA_LISTEN>].
    #[arg(long, env = "TESSERA_GATEWAY", global = true)]
    pub gateway: Option<String>,
    /// PEM CA certificate to trust for the gateway [default for the local gateway: <data dir>/ca.pem].
    #[arg(long, env = "TESSERA_CA_FILE", global = true)]
    pub ca_file: Option<PathBuf>,
}

/// A failure with its exit code; the message is printed to stderr.
#[derive(Debug)]
pub struct CliError {
    pub exit: Exit,
    pub message: String,
}

impl CliError {
    pub fn new(exit: Exit, message: impl Into<String>) -> Self {
        Self { exit, message: message.into() }
    }
}

/// The message, so a `CliError` can travel as the cause of an `anyhow::Error` to `main`, which
/// prints it and exits with its code ([`Exit::for_error`]).
impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CliError {}

/// The CLI's saved credentials, for one gateway.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CliState {
    pub gateway: Option<String>,
    pub token: Option<Secret>,
    pub token_id: Option<Uuid>,
    pub session: Option<Secret>,
}

/// The state directory.
pub fn config_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TESSERA_CONFIG_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("tessera")
}

pub fn state_path() -> PathBuf {
    config_dir().join("credentials.json")
}

impl CliState {
    /// The saved state, or an empty one when there is none (or it cannot be parsed).
    pub fn load() -> Self {
        std::fs::read(state_path()).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
    }

    /// The saved state if it belongs to `gateway`, else an empty one for it.
    pub fn load_for(gateway: &str) -> Self {
        let s = Self::load();
        if s.gateway.as_deref() == Some(gateway) {
            s
        } else {
            Self { gateway: Some(gateway.to_string()), ..Self::default() }
        }
    }

    /// Writes the state atomically with mode 0600 (the directory 0700).
    ///
    /// # Errors
    /// The directory or file cannot be written.
    pub fn save(&self) -> Result<PathBuf, CliError> {
        let path = state_path();
        let write = || -> std::io::Result<()> {
            let dir = path.parent().unwrap_or(Path::new("."));
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
            let tmp = dir.join(format!(".credentials.json.{}.tmp", std::process::id()));
            let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
            f.write_all(&serde_json::to_vec_pretty(self).unwrap_or_default())?;
            f.sync_all()?;
            drop(f);
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|e| {
            CliError::new(Exit::Unreachable, format!("Cannot save CLI state to {}: {e}", path.display()))
        })?;
        Ok(path)
    }
}

/// The credential a request carries.
#[derive(Debug, Clone)]
pub enum Auth {
    None,
    Token(Secret),
    Session(Secret),
}

impl Auth {
    /// `TESSERA_TOKEN` wins over the saved token, which wins over the saved session.
    pub fn from_env_or(state: &CliState) -> Self {
        if let Some(t) = std::env::var("TESSERA_TOKEN").ok().filter(|t| !t.trim().is_empty()) {
            return Self::Token(Secret::from_plaintext(t.trim()));
        }
        match (&state.token, &state.session) {
            (Some(t), _) => Self::Token(t.clone()),
            (None, Some(s)) => Self::Session(s.clone()),
            (None, None) => Self::None,
        }
    }
}

/// A response: status, body as JSON (or `Null`), and the session cookie if one was set.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
    pub excerpt: String,
    pub retry_after: Option<String>,
    pub session_cookie: Option<Secret>,
}

impl Reply {
    /// `HTTP <status> <code>: <message>` from the error envelope, or the body's excerpt.
    pub fn describe(&self) -> String {
        match self.body["error"]["code"].as_str() {
            Some(code) => format!("HTTP {} {code}: {}", self.status.as_u16(), self.message()),
            None => format!("HTTP {}: {}", self.status.as_u16(), self.excerpt),
        }
    }

    /// The server's error message, if the body is the error envelope.
    pub fn message(&self) -> String {
        self.body["error"]["message"].as_str().map_or_else(|| self.excerpt.clone(), str::to_string)
    }
}

/// The gateway as seen from the CLI.
pub struct GatewayClient {
    pub base: String,
    http: reqwest::Client,
    /// Which CA the client trusts, for the advice in a trust failure.
    ca_hint: String,
}

impl GatewayClient {
    /// Resolves the URL and the CA to trust.
    ///
    /// # Errors
    /// A malformed URL or an unreadable CA file (exit 64).
    pub fn new(args: &ClientArgs, config: &Config) -> Result<Self, CliError> {
        let base = args.gateway.clone().unwrap_or_else(|| config.public_url.clone()).trim_end_matches('/').to_string();
        let url = reqwest::Url::parse(&base)
            .map_err(|_| CliError::new(Exit::Usage, format!("--gateway / TESSERA_GATEWAY: '{base}' is not a URL")))?;
        let ca_path = match &args.ca_file {
            Some(p) => Some(p.clone()),
            None if is_local(&url, config) && config.ca_cert_path().exists() => Some(config.ca_cert_path()),
            None => None,
        };
        let ca_hint = match (&args.ca_file, &ca_path) {
            (Some(p), _) => format!("--ca-file / TESSERA_CA_FILE ({})", p.display()),
            (None, Some(p)) => format!("the local gateway's CA file {} (or pass --ca-file)", p.display()),
            (None, None) => "the system trust store (pass --ca-file with the gateway's CA)".to_string(),
        };
        let mut builder = reqwest::Client::builder()
            .tls_backend_rustls()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .user_agent(concat!("tessera-cli/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = ca_path {
            let pem = std::fs::read(&path)
                .map_err(|e| CliError::new(Exit::Usage, format!("Cannot read the CA file {}: {e}", path.display())))?;
            let ca = reqwest::Certificate::from_pem(&pem)
                .map_err(|_| CliError::new(Exit::Usage, format!("{} is not a PEM certificate", path.display())))?;
            builder = builder.tls_certs_only([ca]);
        }
        let http = builder
            .build()
            .map_err(|e| CliError::new(Exit::Unreachable, format!("Cannot build the HTTPS client: {e}")))?;
        Ok(Self { base, http, ca_hint })
    }

    /// Sends one request. Only a transport failure is an error here (exit 1); statuses are the
    /// caller's to judge.
    ///
    /// # Errors
    /// The gateway could not be reached.
    pub async fn send(&self, method: Method, path: &str, auth: &Auth, body: Option<&Value>) -> Result<Reply, CliError> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        match auth {
            Auth::None => {}
            Auth::Token(t) => req = req.bearer_auth(t.expose()),
            Auth::Session(s) => {
                // Cookie-authenticated writes need JSON or this header (see `admin::cross_site`).
                req = req
                    .header(reqwest::header::COOKIE, format!("{SESSION_COOKIE}={}", s.expose()))
                    .header(crate::admin::cross_site::CSRF_HEADER, "tessera-cli");
            }
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| self.transport_error(&e))?;
        let status = resp.status();
        let retry_after =
            resp.headers().get(reqwest::header::RETRY_AFTER).and_then(|v| v.to_str().ok()).map(str::to_string);
        let session_cookie = resp
            .headers()
            .get_all(reqwest::header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|v| v.split(';').next()?.trim().strip_prefix(&format!("{SESSION_COOKIE}=")).map(str::to_string))
            .find(|v| !v.is_empty())
            .map(Secret::from_plaintext);
        let text = resp.text().await.unwrap_or_default();
        let excerpt: String = text.chars().take(200).collect();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok(Reply { status, body, excerpt, retry_after, session_cookie })
    }

    /// The exit code and message for a call that got no HTTP answer: the cause and what to do.
    fn transport_error(&self, e: &reqwest::Error) -> CliError {
        let failure = ConnectFailure::classify(e);
        let base = &self.base;
        let advice = match &failure {
            ConnectFailure::UntrustedServer(_) => format!(
                "The CLI trusts {}. Check that it is the CA of the gateway at {base} \
                 (the gateway mirrors it to <data dir>/ca.pem; GET /api/federation/ca serves it).",
                self.ca_hint
            ),
            ConnectFailure::NameMismatch(_) => "Use the host name the gateway's certificate was issued for in \
                --gateway, or add this name to the gateway's TESSERA_TLS_SANS and restart it."
                .into(),
            ConnectFailure::ServerCertificateExpired(_) => {
                "Check the clocks of both machines; restart the gateway to issue a fresh server certificate.".into()
            }
            ConnectFailure::CertificateRefused { .. } => {
                "The gateway does not accept the client certificate this CLI presented.".into()
            }
            ConnectFailure::ConnectionRefused => format!(
                "Is the gateway running (tessera serve) and listening on that port? Check --gateway / \
                 TESSERA_GATEWAY ({base})."
            ),
            ConnectFailure::Timeout => "Check the address, the network path and firewalls.".into(),
            ConnectFailure::Dns(_) => "Check the host name in --gateway / TESSERA_GATEWAY.".into(),
            ConnectFailure::Other(_) => "Check --gateway / TESSERA_GATEWAY and that the gateway is running.".into(),
        };
        let exit = if failure.is_trust() { Exit::Trust } else { Exit::Unreachable };
        let what = if failure.is_trust() { "Cannot trust the gateway at" } else { "Could not reach gateway at" };
        CliError::new(exit, format!("{what} {base}: {failure}.\n  {advice}"))
    }

    /// Sends and requires a 2xx; otherwise maps the status to an exit code and message.
    ///
    /// # Errors
    /// Unreachable (1), 401/403 (2), any other rejection (3).
    pub async fn call(&self, method: Method, path: &str, auth: &Auth, body: Option<&Value>) -> Result<Value, CliError> {
        let reply = self.send(method, path, auth, body).await?;
        if reply.status.is_success() {
            return Ok(reply.body);
        }
        Err(self.rejection(&reply))
    }

    /// The exit code and message for a non-2xx reply to an authenticated request.
    pub fn rejection(&self, reply: &Reply) -> CliError {
        match reply.status {
            StatusCode::UNAUTHORIZED => CliError::new(
                Exit::Trust,
                format!(
                    "Authentication failed: {} (the session or token is missing, expired or revoked).\n\
                     Get a new token with: tessera token recover --email <email> --gateway {}",
                    reply.message(),
                    self.base
                ),
            ),
            StatusCode::FORBIDDEN => CliError::new(Exit::Trust, reply.message()),
            _ => CliError::new(Exit::Refused, format!("The gateway rejected the request: {}", reply.describe())),
        }
    }
}

fn is_local(url: &reqwest::Url, config: &Config) -> bool {
    let local_host = matches!(url.host_str(), Some("localhost" | "127.0.0.1" | "[::1]" | "::1"));
    local_host && url.port_or_known_default() == Some(config.listen.port())
}
