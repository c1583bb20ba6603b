//! Gateway configuration.
//!
//! Settings come from, in order of precedence: command-line flags, their environment variables
//! (`TESSERA_*`, `DATABASE_URL`, `VALKEY_URL`), an optional TOML file (`--config` /
//! `TESSERA_CONFIG`), and finally built-in defaults. Values are validated here, once, so that a bad
//! setting stops start-up with a message naming the key instead of failing somewhere deep inside.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use serde::{Deserialize, Serialize};

pub use crate::admin::sessions::SignInThrottle;
pub use crate::queue::settings::QueueSettings;

/// Where the gateway keeps its state and which external services it needs (DESIGN §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// Embedded Postgres supervised by the gateway; no Valkey.
    Local,
    /// External `DATABASE_URL`; Valkey optional.
    Standalone,
    /// External Postgres with pgvector and a required Valkey; several replicas.
    Federated,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Local => "local",
            Tier::Standalone => "standalone",
            Tier::Federated => "federated",
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Settings shared by every command that touches the gateway's own state.
///
/// Every field is optional here so that the TOML file can fill what the command line and the
/// environment leave out; [`GatewayArgs::resolve`] turns them into a validated [`Config`]. The
/// same struct is the TOML file's shape (its keys are the field names), so a setting is declared
/// once: its flag, its variable, its key and its help text. Fields marked `serde(skip)` are not
/// file keys (a secret, or the file's own path).
#[derive(Debug, Clone, Default, Args, Deserialize, Serialize)]
#[command(next_help_heading = "Gateway options (every command)")]
#[serde(default, deny_unknown_fields)]
pub struct GatewayArgs {
    /// Optional TOML file with the same settings (keys as in the flags, with underscores).
    #[arg(long = "config", env = "TESSERA_CONFIG", global = true)]
    #[serde(skip)]
    pub config_file: Option<PathBuf>,

    /// Directory for the embedded database, the CA certificate and the sealing key [default: ./.tessera].
    #[arg(long, env = "TESSERA_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,

    /// Address the HTTPS listener binds to [default: 127.0.0.1:8443].
    #[arg(long, env = "TESSERA_LISTEN", global = true)]
    pub listen: Option<String>,

    /// External Postgres (tier `standalone` or `federated`). When unset, the embedded cluster is used.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,

    /// Valkey for shared state between replicas (required in tier `federated`).
    #[arg(long, env = "VALKEY_URL", global = true, hide_env_values = true)]
    pub valkey_url: Option<String>,

    /// `local`, `standalone` or `federated` [default: `local`, or `standalone` when DATABASE_URL is set].
    #[arg(long, env = "TESSERA_TIER", global = true)]
    pub tier: Option<String>,

    /// Directory holding `initdb` and `postgres`; overrides the project bundle and `pg_config`.
    #[arg(long, env = "TESSERA_PG_BIN", global = true)]
    pub pg_bin: Option<PathBuf>,

    /// 64 hex characters (32 bytes) used to seal private keys at rest; by default a key file in the data dir.
    #[arg(long, env = "TESSERA_SEALING_KEY", global = true, hide_env_values = true)]
    #[serde(skip)]
    pub sealing_key: Option<String>,

    /// Public base URL peers use to reach this gateway, printed in enrollment URLs [default:
    /// https://<host>:<port the gateway bound>, host = the listen IP, or the first TLS SAN when the
    /// listen IP is 0.0.0.0 or ::].
    #[arg(long, env = "TESSERA_PUBLIC_URL", global = true)]
    pub public_url: Option<String>,

    /// Log format: `text` or `json`.
    #[arg(long, env = "TESSERA_LOG_FORMAT", global = true, value_enum)]
    pub log_format: Option<LogFormat>,

    /// The server's own settings: flags of `tessera serve`; for other commands read from the
    /// environment and the TOML file only (see [`ServerArgs::from_env`]).
    #[arg(skip)]
    #[serde(skip)]
    pub server: ServerArgs,
}

/// Settings only the server uses (TLS, federation trust, connection limits, webhooks). They are
/// flags of `tessera serve` alone, so that `tessera <command> --help` shows that command's own
/// options; every one still has its environment variable and TOML key, which other commands read
/// (`peer add` needs the federation OIDs, for instance). Like [`GatewayArgs`], the struct is also
/// the TOML file's shape.
#[derive(Debug, Clone, Default, Args, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerArgs {
    /// Extra subject alternative names for the server certificate, comma separated [default: localhost,127.0.0.1].
    #[arg(long, env = "TESSERA_TLS_SANS", value_delimiter = ',')]
    pub tls_sans: Option<Vec<String>>,

    /// PEM certificate chain to serve instead of one signed by the gateway CA (needs --tls-key).
    #[arg(long, env = "TESSERA_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for --tls-cert.
    #[arg(long, env = "TESSERA_TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// Lifetime of client certificates issued to peers, in seconds [default: 3600].
    #[arg(long, env = "TESSERA_FEDERATION_CERT_TTL_SECS")]
    pub federation_cert_ttl_secs: Option<u64>,

    /// How long a peer's previous certificate stays valid after it renews, in seconds [default: 60].
    #[arg(long, env = "TESSERA_FEDERATION_RENEW_GRACE_SECS")]
    pub federation_renew_grace_secs: Option<u64>,

    /// OID of the client-certificate extension carrying the grant id [default: 1.3.6.1.4.1.99999.1].
    #[arg(long, env = "TESSERA_FEDERATION_GRANT_OID")]
    pub federation_grant_oid: Option<String>,

    /// OID of the client-certificate extension carrying the subject user id [default: 1.3.6.1.4.1.99999.2].
    #[arg(long, env = "TESSERA_FEDERATION_SUBJECT_OID")]
    pub federation_subject_oid: Option<String>,

    /// Federation requests allowed per grant and minute, shared by all replicas; a grant's own
    /// `ratePerMinute` overrides it [default: 600].
    #[arg(long, env = "TESSERA_FEDERATION_RATE_PER_MINUTE")]
    pub federation_rate_per_minute: Option<u32>,

    /// Seconds a client has to finish the TLS handshake [default: 10].
    #[arg(long, env = "TESSERA_HANDSHAKE_TIMEOUT_SECS")]
    pub handshake_timeout_secs: Option<u64>,

    /// Seconds a connection may stay open with no request in flight [default: 60].
    #[arg(long, env = "TESSERA_IDLE_TIMEOUT_SECS")]
    pub idle_timeout_secs: Option<u64>,

    /// Seconds a client has to send a request's headers (HTTP/1.1) [default: 30].
    #[arg(long, env = "TESSERA_HEADER_READ_TIMEOUT_SECS")]
    pub header_read_timeout_secs: Option<u64>,

    /// Most client connections open at once [default: the descriptor limit minus 128, kept for
    /// Postgres, Valkey and the queue].
    #[arg(long, env = "TESSERA_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,

    /// Enrollment redemptions allowed per client address and minute [default: 30].
    #[arg(long, env = "TESSERA_ENROLLMENT_RATE_PER_MINUTE")]
    pub enrollment_rate_per_minute: Option<u32>,

    /// Days of federation audit rows kept; older days are dropped whole [default: 90].
    #[arg(long, env = "TESSERA_AUDIT_RETENTION_DAYS", global = true)]
    pub audit_retention_days: Option<u32>,

    /// Address ranges webhook deliveries may reach although they are loopback, private,
    /// link-local or otherwise not public, comma separated (e.g. `127.0.0.1/32,10.0.0.0/8`);
    /// never the gateway's own listener [default: none].
    #[arg(long, env = "TESSERA_WEBHOOK_ALLOWED_CIDRS", value_delimiter = ',')]
    pub webhook_allowed_cidrs: Option<Vec<String>>,

    /// Name of the embedding model that made the stored insight embeddings (384 dimensions),
    /// announced in `capabilities`; unset: the search verb's vector and hybrid modes are off.
    #[arg(long, env = "TESSERA_EMBEDDING_MODEL")]
    pub embedding_model: Option<String>,

    /// Base URL of an embedding provider with the common `POST /v1/embeddings` interface; it
    /// embeds query text and fills missing insight embeddings [default: none, callers pass vectors].
    #[arg(long, env = "TESSERA_EMBEDDINGS_URL")]
    pub embeddings_url: Option<String>,

    /// Bearer key for the embedding provider (environment only, never in the TOML file).
    #[arg(long, env = "TESSERA_EMBEDDINGS_API_KEY", hide_env_values = true)]
    #[serde(skip)]
    pub embeddings_api_key: Option<String>,

    /// How long the merged admin search waits for each peer, in milliseconds [default: 5000].
    #[arg(long, env = "TESSERA_SEARCH_PEER_TIMEOUT_MS")]
    pub search_peer_timeout_ms: Option<u64>,

    /// Failed sign-ins allowed per account and client address within one window; the address
    /// alone gets five times as many [default: 10].
    #[arg(long, env = "TESSERA_SIGNIN_MAX_FAILURES", help_heading = SIGN_IN)]
    pub signin_max_failures: Option<RawNumber>,

    /// Length of the sign-in throttle's window, in seconds [default: 900].
    #[arg(long, env = "TESSERA_SIGNIN_WINDOW_SECS", help_heading = SIGN_IN)]
    pub signin_window_secs: Option<RawNumber>,

    /// Polling fallback of the queue workers when no NOTIFY arrives, in milliseconds (5..60000)
    /// [default: 1000].
    #[arg(long, env = "TESSERA_QUEUE_POLL_MS", help_heading = QUEUE)]
    pub queue_poll_ms: Option<RawNumber>,

    /// Lease of a claimed job, in seconds (1..86400); the heartbeat renews it every third [default: 30].
    #[arg(long, env = "TESSERA_QUEUE_LEASE_SECS", help_heading = QUEUE)]
    pub queue_lease_secs: Option<RawNumber>,

    /// Claim loops per queue per process (1..64) [default: 1].
    #[arg(long, env = "TESSERA_QUEUE_WORKERS", help_heading = QUEUE)]
    pub queue_workers: Option<RawNumber>,

    /// Most jobs one claim statement takes (1..10000) [default: 256].
    #[arg(long, env = "TESSERA_QUEUE_BATCH", help_heading = QUEUE)]
    pub queue_batch: Option<RawNumber>,

    /// First retry delay of a failed job, in milliseconds; it doubles each attempt, with full
    /// jitter (1..3600000) [default: 1000].
    #[arg(long, env = "TESSERA_QUEUE_BACKOFF_BASE_MS", help_heading = QUEUE)]
    pub queue_backoff_base_ms: Option<RawNumber>,

    /// Longest retry delay of a failed job, in milliseconds (1..86400000) [default: 3600000].
    #[arg(long, env = "TESSERA_QUEUE_BACKOFF_CAP_MS", help_heading = QUEUE)]
    pub queue_backoff_cap_ms: Option<RawNumber>,

    /// How long shutdown waits for running jobs before releasing them, in milliseconds
    /// (0..600000) [default: 10000].
    #[arg(long, env = "TESSERA_QUEUE_SHUTDOWN_GRACE_MS", help_heading = QUEUE)]
    pub queue_shutdown_grace_ms: Option<RawNumber>,

    /// First retry delay of a webhook delivery, in milliseconds (1..3600000) [default: 1000].
    #[arg(long, env = "TESSERA_OUTBOX_BACKOFF_BASE_MS", help_heading = QUEUE)]
    pub outbox_backoff_base_ms: Option<RawNumber>,

    /// Longest retry delay of a webhook delivery, in milliseconds (1..86400000) [default: 3600000].
    #[arg(long, env = "TESSERA_OUTBOX_BACKOFF_CAP_MS", help_heading = QUEUE)]
    pub outbox_backoff_cap_ms: Option<RawNumber>,

    /// Webhook delivery attempts before a delivery is `dead` (1..1000) [default: 12].
    #[arg(long, env = "TESSERA_OUTBOX_MAX_ATTEMPTS", help_heading = QUEUE)]
    pub outbox_max_attempts: Option<RawNumber>,

    /// Timeout of one webhook request, in milliseconds (100..600000) [default: 10000].
    #[arg(long, env = "TESSERA_OUTBOX_TIMEOUT_MS", help_heading = QUEUE)]
    pub outbox_timeout_ms: Option<RawNumber>,

    /// How often the scheduler enqueues due periodic jobs, in milliseconds (10..3600000; at most
    /// the shortest period is used) [default: 15000].
    #[arg(long, env = "TESSERA_SCHEDULE_TICK_MS", help_heading = QUEUE)]
    pub schedule_tick_ms: Option<RawNumber>,
}

/// `--help` heading of the sign-in throttle's settings.
const SIGN_IN: &str = "Admin sign-in throttle";
/// `--help` heading of the queue, outbox and scheduler settings.
const QUEUE: &str = "Job queue, outbox and scheduler";

/// A whole-number setting as given: a flag, a variable or a TOML integer (or string). It is
/// checked in [`GatewayArgs::resolve`], not by clap, so that a malformed value stops start-up
/// with a message naming its variable (clap would name the flag, which `serve`'s callers
/// rarely use).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct RawNumber(String);

impl From<String> for RawNumber {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl<'de> Deserialize<'de> for RawNumber {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Integer(i64),
            Text(String),
        }
        Ok(Self(match Raw::deserialize(deserializer)? {
            Raw::Integer(n) => n.to_string(),
            Raw::Text(s) => s,
        }))
    }
}

impl RawNumber {
    /// The value as a whole number in `min..=max`; `None` when unset or blank.
    fn whole(raw: Option<&Self>, key: &'static str, min: u64, max: u64) -> Result<Option<u64>, ConfigError> {
        let Some(v) = raw.map(|r| r.0.as_str()).filter(|v| !v.trim().is_empty()) else { return Ok(None) };
        let n: u64 = v.trim().parse().map_err(|_| bad(key, format!("'{v}' is not a whole number")))?;
        if !(min..=max).contains(&n) {
            return Err(bad(key, format!("must be between {min} and {max}")));
        }
        Ok(Some(n))
    }

    /// The value as a positive integer (the sign-in throttle's wording); `None` when unset or blank.
    fn positive(raw: Option<&Self>, key: &'static str) -> Result<Option<u64>, ConfigError> {
        let Some(v) = raw.map(|r| r.0.as_str()).filter(|v| !v.trim().is_empty()) else { return Ok(None) };
        match v.trim().parse::<u64>() {
            Ok(n) if n > 0 => Ok(Some(n)),
            _ => Err(bad(key, format!("'{v}' is not a positive integer"))),
        }
    }
}

impl ServerArgs {
    /// The server settings from the environment alone, for commands that do not take them as flags.
    ///
    /// # Errors
    /// A variable that does not parse (its message names it).
    pub fn from_env() -> Result<Self, clap::Error> {
        use clap::FromArgMatches as _;
        let matches = Self::augment_args(clap::Command::new("tessera")).try_get_matches_from(["tessera"])?;
        Self::from_arg_matches(&matches)
    }
}

/// A configuration error that names the setting at fault.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {key}: {message}")]
pub struct ConfigError {
    pub key: &'static str,
    pub message: String,
}

fn bad(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError { key, message: message.into() }
}

/// A connection string whose `Debug` and `Display` never show the password.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// The URL with any password replaced by `***`, for logs and error messages.
    pub fn redacted(&self) -> String {
        redact_url(&self.0)
    }
}

impl std::fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl std::fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// The URL with every password replaced by `***`: the one in the user info
/// (`scheme://user:password@host`) and a `password` query parameter (which sqlx and libpq
/// accept). A string that is not a URL is shown only as its scheme, since it cannot be checked.
pub fn redact_url(raw: &str) -> String {
    let Ok(mut url) = url::Url::parse(raw) else {
        return match raw.split_once("://") {
            Some((scheme, _)) => format!("{scheme}://***"),
            None => raw.to_string(),
        };
    };
    if url.password().is_some() {
        let _ = url.set_password(Some("***"));
    }
    if url.query_pairs().any(|(k, _)| k.eq_ignore_ascii_case("password")) {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let v = if k.eq_ignore_ascii_case("password") { "***".to_string() } else { v.into_owned() };
                (k.into_owned(), v)
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.to_string().replace("%2A%2A%2A", "***")
}

/// The validated configuration every command works from.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub tier: Tier,
    pub database_url: Option<SecretUrl>,
    pub valkey_url: Option<SecretUrl>,
    pub pg_bin: Option<PathBuf>,
    /// Raw sealing key setting; parsed by [`crate::sealing::SealingKey::load`].
    pub sealing_key: Option<crate::sealing::SealingKeyHex>,
    pub tls_sans: Vec<String>,
    pub tls_cert: Option<(PathBuf, PathBuf)>,
    /// The gateway's public base URL: TESSERA_PUBLIC_URL, else derived from the listen address
    /// ([`default_public_url`]); `serve` derives it again from the address it really bound.
    pub public_url: String,
    /// Whether TESSERA_PUBLIC_URL was set (else `public_url` is derived).
    pub public_url_configured: bool,
    pub log_format: LogFormat,
    pub connections: ConnectionSettings,
    pub federation: FederationSettings,
    /// Days of federation audit rows kept (whole days are dropped).
    pub audit_retention_days: u32,
    /// Ranges webhook targets may use although they are not public (see [`crate::outbox::targets`]).
    pub webhook_allowed_cidrs: Vec<crate::outbox::targets::Cidr>,
    /// The search verb's embedding model and provider, and the merged search's peer timeout.
    pub search: SearchSettings,
    /// Queue, outbox and scheduler tuning (`TESSERA_QUEUE_*`, `TESSERA_OUTBOX_*`, `TESSERA_SCHEDULE_TICK_MS`).
    pub queue: QueueSettings,
    /// The failed sign-in budget (`TESSERA_SIGNIN_*`).
    pub sign_in: SignInThrottle,
}

/// Settings of the search verb (README, "Search").
#[derive(Debug, Clone)]
pub struct SearchSettings {
    /// `TESSERA_EMBEDDING_MODEL`; `None` turns the vector and hybrid modes off.
    pub embedding_model: Option<String>,
    /// `TESSERA_EMBEDDINGS_URL` (base URL, `/v1/embeddings` is appended unless present).
    pub embeddings_url: Option<String>,
    /// `TESSERA_EMBEDDINGS_API_KEY`, sent as a bearer token.
    pub embeddings_api_key: Option<SecretUrl>,
    /// Per-peer wait of the merged admin search.
    pub peer_timeout: Duration,
}

/// Timeouts and limits of client connections (README, "Security").
#[derive(Debug, Clone)]
pub struct ConnectionSettings {
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    pub header_read_timeout: Duration,
    /// `None`: derived from the process's descriptor limit at start.
    pub max_connections: Option<usize>,
    /// Enrollment redemptions per client address and minute.
    pub enrollment_rate_per_minute: u32,
}

/// Settings of the federation trust layer.
#[derive(Debug, Clone)]
pub struct FederationSettings {
    pub oids: crate::federation::identity::FederationOids,
    pub cert_ttl: Duration,
    pub renew_grace: Duration,
    /// Default per-grant budget of federation requests per minute.
    pub rate_per_minute: u32,
}

impl GatewayArgs {
    /// Merges flags, environment and the optional TOML file into a validated [`Config`].
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first setting that is missing or malformed.
    pub fn resolve(&self) -> Result<Config, ConfigError> {
        let (file, file_server) = match &self.config_file {
            Some(path) => read_file(path)?,
            None => Default::default(),
        };
        // Flags and environment win over the file; secrets (`serde(skip)`) come from `self` only.
        let args = layered(self, &file)?;
        let server = layered(&self.server, &file_server)?;

        let data_dir = args.data_dir.clone().unwrap_or_else(|| PathBuf::from(".tessera"));
        if data_dir.as_os_str().is_empty() {
            return Err(bad("TESSERA_DATA_DIR", "must not be empty"));
        }
        let data_dir = absolute(&data_dir);

        let listen_raw = args.listen.clone().unwrap_or_else(|| "127.0.0.1:8443".into());
        let listen: SocketAddr = listen_raw
            .parse()
            .map_err(|_| bad("TESSERA_LISTEN", format!("'{listen_raw}' is not an address like 127.0.0.1:8443")))?;

        let database_url = args.database_url.clone().filter(|s| !s.is_empty());
        if let Some(url) = &database_url
            && !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
        {
            return Err(bad(
                "DATABASE_URL",
                format!("'{}' must start with postgres:// or postgresql://", redact_url(url)),
            ));
        }
        let valkey_url = args.valkey_url.clone().filter(|s| !s.is_empty());
        if let Some(url) = &valkey_url
            && !(url.starts_with("redis://") || url.starts_with("rediss://") || url.starts_with("valkey://"))
        {
            return Err(bad("VALKEY_URL", format!("'{}' must start with redis:// or rediss://", redact_url(url))));
        }

        let tier = match args.tier.clone().as_deref() {
            None | Some("") => {
                if database_url.is_some() {
                    Tier::Standalone
                } else {
                    Tier::Local
                }
            }
            Some("local") => Tier::Local,
            Some("standalone") => Tier::Standalone,
            Some("federated") => Tier::Federated,
            Some(other) => {
                return Err(bad("TESSERA_TIER", format!("'{other}' is not one of local, standalone, federated")));
            }
        };
        match tier {
            Tier::Local if database_url.is_some() => {
                return Err(bad(
                    "TESSERA_TIER",
                    "tier local uses the embedded database; unset DATABASE_URL or choose standalone",
                ));
            }
            Tier::Standalone | Tier::Federated if database_url.is_none() => {
                return Err(bad("DATABASE_URL", format!("tier {} needs an external Postgres", tier.as_str())));
            }
            Tier::Federated if valkey_url.is_none() => {
                return Err(bad("VALKEY_URL", "tier federated needs Valkey for state shared between replicas"));
            }
            _ => {}
        }

        let tls_cert = match (server.tls_cert.clone(), server.tls_key.clone()) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            (Some(_), None) => return Err(bad("TESSERA_TLS_KEY", "TESSERA_TLS_CERT is set but its key is not")),
            (None, Some(_)) => {
                return Err(bad("TESSERA_TLS_CERT", "TESSERA_TLS_KEY is set but its certificate is not"));
            }
        };

        let mut tls_sans = server.tls_sans.clone().unwrap_or_else(|| vec!["localhost".into(), "127.0.0.1".into()]);
        tls_sans.retain(|s| !s.trim().is_empty());
        if tls_sans.is_empty() {
            return Err(bad("TESSERA_TLS_SANS", "needs at least one name"));
        }

        let configured_url = args.public_url.clone().filter(|u| !u.trim().is_empty());
        let public_url_configured = configured_url.is_some();
        let public_url = match configured_url {
            Some(url) if url.starts_with("https://") && url::Url::parse(&url).is_ok() => {
                url.trim_end_matches('/').to_string()
            }
            Some(url) => return Err(bad("TESSERA_PUBLIC_URL", format!("'{url}' must be an https:// URL"))),
            None => default_public_url(listen, &tls_sans),
        };

        let sealing_key = self.sealing_key.clone().map(crate::sealing::SealingKeyHex::new);

        let cert_ttl = server.federation_cert_ttl_secs.unwrap_or(3600);
        // Down to 10 s, so expiry and rejoin can be exercised in minutes-long drills and tests.
        if !(10..=30 * 86_400).contains(&cert_ttl) {
            return Err(bad("TESSERA_FEDERATION_CERT_TTL_SECS", "must be between 10 and 2592000 seconds"));
        }
        let renew_grace = server.federation_renew_grace_secs.unwrap_or(60);
        if renew_grace > 3600 {
            return Err(bad("TESSERA_FEDERATION_RENEW_GRACE_SECS", "must be at most 3600 seconds"));
        }
        let mut oids = crate::federation::identity::FederationOids::default();
        if let Some(oid) = server.federation_grant_oid.clone() {
            oids.grant =
                crate::federation::identity::parse_oid(&oid).map_err(|m| bad("TESSERA_FEDERATION_GRANT_OID", m))?;
        }
        if let Some(oid) = server.federation_subject_oid.clone() {
            oids.subject =
                crate::federation::identity::parse_oid(&oid).map_err(|m| bad("TESSERA_FEDERATION_SUBJECT_OID", m))?;
        }
        let rate_per_minute = server.federation_rate_per_minute.unwrap_or(600);
        if !(1..=1_000_000).contains(&rate_per_minute) {
            return Err(bad("TESSERA_FEDERATION_RATE_PER_MINUTE", "must be between 1 and 1000000"));
        }
        let secs = |value: Option<u64>, default: u64, key: &'static str, max: u64| match value.unwrap_or(default) {
            n if (1..=max).contains(&n) => Ok(Duration::from_secs(n)),
            _ => Err(bad(key, format!("must be between 1 and {max} seconds"))),
        };
        let connections = ConnectionSettings {
            handshake_timeout: secs(server.handshake_timeout_secs, 10, "TESSERA_HANDSHAKE_TIMEOUT_SECS", 300)?,
            idle_timeout: secs(server.idle_timeout_secs, 60, "TESSERA_IDLE_TIMEOUT_SECS", 3600)?,
            header_read_timeout: secs(server.header_read_timeout_secs, 30, "TESSERA_HEADER_READ_TIMEOUT_SECS", 300)?,
            max_connections: match server.max_connections {
                Some(0) => return Err(bad("TESSERA_MAX_CONNECTIONS", "must be at least 1")),
                other => other,
            },
            enrollment_rate_per_minute: match server.enrollment_rate_per_minute {
                None => 30,
                Some(n) if (1..=100_000).contains(&n) => n,
                Some(_) => return Err(bad("TESSERA_ENROLLMENT_RATE_PER_MINUTE", "must be between 1 and 100000")),
            },
        };
        let audit_retention_days = server.audit_retention_days.unwrap_or(90);
        if !(1..=3650).contains(&audit_retention_days) {
            return Err(bad("TESSERA_AUDIT_RETENTION_DAYS", "must be between 1 and 3650 days"));
        }
        if oids.grant == oids.subject {
            return Err(bad("TESSERA_FEDERATION_SUBJECT_OID", "must differ from the grant OID"));
        }
        let search = search_settings(&server, self.server.embeddings_api_key.as_deref())?;
        let webhook_allowed_cidrs =
            crate::outbox::targets::parse_cidrs(&server.webhook_allowed_cidrs.clone().unwrap_or_default())
                .map_err(|m| bad("TESSERA_WEBHOOK_ALLOWED_CIDRS", m))?;

        Ok(Config {
            data_dir,
            listen,
            tier,
            database_url: database_url.map(SecretUrl::new),
            valkey_url: valkey_url.map(SecretUrl::new),
            pg_bin: args.pg_bin.clone(),
            sealing_key,
            tls_sans,
            tls_cert,
            public_url,
            public_url_configured,
            log_format: args.log_format.unwrap_or_default(),
            connections,
            audit_retention_days,
            federation: FederationSettings {
                oids,
                cert_ttl: Duration::from_secs(cert_ttl),
                renew_grace: Duration::from_secs(renew_grace),
                rate_per_minute,
            },
            webhook_allowed_cidrs,
            search,
            queue: queue_settings(&server)?,
            sign_in: sign_in_throttle(&server)?,
        })
    }
}

/// The TOML file's settings: the shared ones and the server's, each checked against its own
/// struct so that an unknown key (or a secret, which the file may not hold) is an error.
fn read_file(path: &Path) -> Result<(GatewayArgs, ServerArgs), ConfigError> {
    use clap::Args as _;
    let file_error = |message: String| bad("TESSERA_CONFIG", format!("{}: {message}", path.display()));
    let text = std::fs::read_to_string(path)
        .map_err(|e| bad("TESSERA_CONFIG", format!("cannot read {}: {e}", path.display())))?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| file_error(e.message().to_string()))?;
    // Clap's argument ids are the field names, which are the file's keys.
    let shared = GatewayArgs::augment_args(clap::Command::new("tessera"));
    let (gateway, server): (toml::Table, toml::Table) =
        table.into_iter().partition(|(key, _)| shared.get_arguments().any(|a| a.get_id() == key.as_str()));
    let gateway = gateway.try_into::<GatewayArgs>().map_err(|e| file_error(e.message().to_string()))?;
    let server = server.try_into::<ServerArgs>().map_err(|e| file_error(e.message().to_string()))?;
    Ok((gateway, server))
}

/// `top` with the settings it leaves unset taken from `below`: one generic merge instead of an
/// `or` per field (the structs' serialised forms are objects of optional values).
fn layered<T: Serialize + serde::de::DeserializeOwned>(top: &T, below: &T) -> Result<T, ConfigError> {
    let merge_error = |e: serde_json::Error| bad("TESSERA_CONFIG", format!("cannot merge the settings: {e}"));
    let mut merged = serde_json::to_value(below).map_err(merge_error)?;
    if let (serde_json::Value::Object(merged), serde_json::Value::Object(top)) =
        (&mut merged, serde_json::to_value(top).map_err(merge_error)?)
    {
        merged.extend(top.into_iter().filter(|(_, v)| !v.is_null()));
    }
    serde_json::from_value(merged).map_err(merge_error)
}

/// The queue, outbox and scheduler tuning (defaults in [`QueueSettings::default`]).
fn queue_settings(server: &ServerArgs) -> Result<QueueSettings, ConfigError> {
    let mut s = QueueSettings::default();
    let ms = Duration::from_millis;
    let whole = |raw: &Option<RawNumber>, key, min, max| RawNumber::whole(raw.as_ref(), key, min, max);
    if let Some(v) = whole(&server.queue_poll_ms, "TESSERA_QUEUE_POLL_MS", 5, 60_000)? {
        s.poll_interval = ms(v);
    }
    if let Some(v) = whole(&server.queue_lease_secs, "TESSERA_QUEUE_LEASE_SECS", 1, 86_400)? {
        s.lease = Duration::from_secs(v);
    }
    if let Some(v) = whole(&server.queue_workers, "TESSERA_QUEUE_WORKERS", 1, 64)? {
        s.workers = v as usize;
    }
    if let Some(v) = whole(&server.queue_batch, "TESSERA_QUEUE_BATCH", 1, 10_000)? {
        s.batch = v as i64;
    }
    if let Some(v) = whole(&server.queue_backoff_base_ms, "TESSERA_QUEUE_BACKOFF_BASE_MS", 1, 3_600_000)? {
        s.backoff.base = ms(v);
    }
    if let Some(v) = whole(&server.queue_backoff_cap_ms, "TESSERA_QUEUE_BACKOFF_CAP_MS", 1, 86_400_000)? {
        s.backoff.cap = ms(v);
    }
    if let Some(v) = whole(&server.queue_shutdown_grace_ms, "TESSERA_QUEUE_SHUTDOWN_GRACE_MS", 0, 600_000)? {
        s.shutdown_grace = ms(v);
    }
    if let Some(v) = whole(&server.outbox_backoff_base_ms, "TESSERA_OUTBOX_BACKOFF_BASE_MS", 1, 3_600_000)? {
        s.outbox_backoff.base = ms(v);
    }
    if let Some(v) = whole(&server.outbox_backoff_cap_ms, "TESSERA_OUTBOX_BACKOFF_CAP_MS", 1, 86_400_000)? {
        s.outbox_backoff.cap = ms(v);
    }
    if let Some(v) = whole(&server.outbox_max_attempts, "TESSERA_OUTBOX_MAX_ATTEMPTS", 1, 1000)? {
        s.outbox_max_attempts = v as i32;
    }
    if let Some(v) = whole(&server.outbox_timeout_ms, "TESSERA_OUTBOX_TIMEOUT_MS", 100, 600_000)? {
        s.outbox_timeout = ms(v);
    }
    if let Some(v) = whole(&server.schedule_tick_ms, "TESSERA_SCHEDULE_TICK_MS", 10, 3_600_000)? {
        s.schedule_tick = ms(v);
    }
    Ok(s)
}

/// The failed sign-in budget (defaults in [`SignInThrottle::default`]).
fn sign_in_throttle(server: &ServerArgs) -> Result<SignInThrottle, ConfigError> {
    let mut t = SignInThrottle::default();
    if let Some(n) = RawNumber::positive(server.signin_max_failures.as_ref(), "TESSERA_SIGNIN_MAX_FAILURES")? {
        t.max_failures = u32::try_from(n).map_err(|_| bad("TESSERA_SIGNIN_MAX_FAILURES", "too large"))?;
    }
    if let Some(secs) = RawNumber::positive(server.signin_window_secs.as_ref(), "TESSERA_SIGNIN_WINDOW_SECS")? {
        t.window = Duration::from_secs(secs);
    }
    Ok(t)
}

/// The search verb's settings; the provider's key is an environment-only secret.
fn search_settings(server: &ServerArgs, api_key: Option<&str>) -> Result<SearchSettings, ConfigError> {
    let embedding_model = server.embedding_model.clone().filter(|m| !m.trim().is_empty());
    if let Some(m) = &embedding_model
        && (m.len() > 200 || m.chars().any(char::is_control))
    {
        return Err(bad("TESSERA_EMBEDDING_MODEL", "must be at most 200 printable characters"));
    }
    let embeddings_url = server.embeddings_url.clone().filter(|u| !u.trim().is_empty());
    if let Some(u) = &embeddings_url {
        let ok = (u.starts_with("http://") || u.starts_with("https://")) && url::Url::parse(u).is_ok();
        if !ok {
            return Err(bad("TESSERA_EMBEDDINGS_URL", format!("'{}' must be an http(s) URL", redact_url(u))));
        }
        if embedding_model.is_none() {
            return Err(bad(
                "TESSERA_EMBEDDING_MODEL",
                "TESSERA_EMBEDDINGS_URL is set, so the model it serves must be named",
            ));
        }
    }
    let peer_timeout_ms = server.search_peer_timeout_ms.unwrap_or(5000);
    if !(100..=120_000).contains(&peer_timeout_ms) {
        return Err(bad("TESSERA_SEARCH_PEER_TIMEOUT_MS", "must be between 100 and 120000 milliseconds"));
    }
    Ok(SearchSettings {
        embedding_model,
        embeddings_url,
        embeddings_api_key: api_key.filter(|k| !k.is_empty()).map(SecretUrl::new),
        peer_timeout: Duration::from_millis(peer_timeout_ms),
    })
}

/// The public URL when TESSERA_PUBLIC_URL is not set: `https://<host>:<port>` with the listen IP as
/// host, or, for a wildcard listen address (`0.0.0.0`, `::`), the first TLS SAN (default
/// `localhost`): a name the server certificate carries, so a peer's TLS check passes. The port is
/// the one bound (`serve` passes the real address, so `:0` gives the port the kernel chose).
pub fn default_public_url(listen: SocketAddr, tls_sans: &[String]) -> String {
    let host = if listen.ip().is_unspecified() {
        tls_sans.first().cloned().unwrap_or_else(|| "localhost".to_string())
    } else {
        listen.ip().to_string()
    };
    let host = if host.contains(':') && !host.starts_with('[') { format!("[{host}]") } else { host };
    format!("https://{host}:{}", listen.port())
}

impl Config {
    /// Where the public CA certificate is mirrored for local CLI use.
    pub fn ca_cert_path(&self) -> PathBuf {
        self.data_dir.join("ca.pem")
    }
    /// The embedded Postgres cluster directory.
    pub fn pg_data_dir(&self) -> PathBuf {
        self.data_dir.join("pg")
    }
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> GatewayArgs {
        GatewayArgs::default()
    }

    #[test]
    fn defaults_are_local_on_loopback() {
        let c = args().resolve().unwrap();
        assert_eq!(c.tier, Tier::Local);
        assert_eq!(c.listen.to_string(), "127.0.0.1:8443");
        assert!(c.data_dir.ends_with(".tessera"));
        assert_eq!(c.public_url, "https://127.0.0.1:8443");
        assert!(c.webhook_allowed_cidrs.is_empty(), "no webhook target range is opened by default");
    }

    #[test]
    fn the_default_public_url_names_a_host_the_certificate_carries() {
        let sans = vec!["gw.example".to_string(), "localhost".to_string()];
        assert_eq!(default_public_url("0.0.0.0:9443".parse().unwrap(), &sans), "https://gw.example:9443");
        assert_eq!(default_public_url("[::]:9443".parse().unwrap(), &[]), "https://localhost:9443");
        assert_eq!(default_public_url("10.1.2.3:1".parse().unwrap(), &sans), "https://10.1.2.3:1");
        assert_eq!(default_public_url("[::1]:8443".parse().unwrap(), &sans), "https://[::1]:8443");
        let c = GatewayArgs { public_url: Some("https://b.example:443/".into()), ..args() }.resolve().unwrap();
        assert!(c.public_url_configured);
        assert_eq!(c.public_url, "https://b.example:443");
        let e = GatewayArgs { public_url: Some("http://b.example".into()), ..args() }.resolve().unwrap_err();
        assert_eq!(e.key, "TESSERA_PUBLIC_URL");
    }

    #[test]
    fn database_url_implies_standalone() {
        let c = GatewayArgs { database_url: Some("postgres://u:p@h/db".into()), ..args() }.resolve().unwrap();
        assert_eq!(c.tier, Tier::Standalone);
        assert!(!format!("{c:?}").contains(":p@"));
    }

    #[test]
    fn bad_values_name_their_key() {
        let e = GatewayArgs { listen: Some("nope".into()), ..args() }.resolve().unwrap_err();
        assert_eq!(e.key, "TESSERA_LISTEN");
        let e = GatewayArgs { tier: Some("cloud".into()), ..args() }.resolve().unwrap_err();
        assert_eq!(e.key, "TESSERA_TIER");
        let e = GatewayArgs { tier: Some("federated".into()), database_url: Some("postgres://h/d".into()), ..args() }
            .resolve()
            .unwrap_err();
        assert_eq!(e.key, "VALKEY_URL");
        let e = GatewayArgs { database_url: Some("mysql://h/d".into()), ..args() }.resolve().unwrap_err();
        assert_eq!(e.key, "DATABASE_URL");
        let server = ServerArgs { webhook_allowed_cidrs: Some(vec!["127.0.0.1/33".into()]), ..Default::default() };
        let e = GatewayArgs { server, ..args() }.resolve().unwrap_err();
        assert_eq!(e.key, "TESSERA_WEBHOOK_ALLOWED_CIDRS");
        assert!(e.to_string().contains("127.0.0.1/33"), "{e}");
    }

    #[test]
    fn toml_file_fills_gaps_and_rejects_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:9999\"\n").unwrap();
        let c = GatewayArgs { config_file: Some(path.clone()), ..args() }.resolve().unwrap();
        assert_eq!(c.listen.port(), 9999);
        let c = GatewayArgs { config_file: Some(path.clone()), listen: Some("127.0.0.1:1".into()), ..args() }
            .resolve()
            .unwrap();
        assert_eq!(c.listen.port(), 1, "flags and env win over the file");
        std::fs::write(&path, "lisen = \"x\"\n").unwrap();
        let e = GatewayArgs { config_file: Some(path), ..args() }.resolve().unwrap_err();
        assert_eq!(e.key, "TESSERA_CONFIG");
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(redact_url("postgres://app:s3cret@db:5432/x"), "postgres://app:***@db:5432/x");
        assert_eq!(redact_url("redis://:pw@h:6379"), "redis://:***@h:6379");
        assert_eq!(redact_url("postgres://db/x"), "postgres://db/x");
        assert_eq!(
            redact_url("postgres://u@db/x?password=s3cret&sslmode=require"),
            "postgres://u@db/x?password=***&sslmode=require"
        );
        assert_eq!(redact_url("postgres://u@db/x?PASSWORD=s3cret"), "postgres://u@db/x?PASSWORD=***");
        let config =
            GatewayArgs { database_url: Some("postgres://u@h/d?password=hunter2".into()), ..args() }.resolve().unwrap();
        assert!(!format!("{config:?}").contains("hunter2"), "{config:?}");
    }

    /// The server settings as `tessera serve` parses them (the same clap arguments read the
    /// variables; the variables' path is exercised by the integration tests, which set them).
    fn serve(flags: &[&str]) -> ServerArgs {
        use clap::FromArgMatches as _;
        let command = ServerArgs::augment_args(clap::Command::new("serve"));
        let matches = command.try_get_matches_from(std::iter::once("serve").chain(flags.iter().copied())).unwrap();
        ServerArgs::from_arg_matches(&matches).unwrap()
    }

    #[test]
    fn queue_and_sign_in_settings_come_from_flags_and_the_file() {
        let c = args().resolve().unwrap();
        assert_eq!(c.queue.poll_interval, Duration::from_secs(1));
        assert_eq!(c.sign_in, SignInThrottle::default());

        let server = serve(&["--queue-poll-ms", "50", "--signin-max-failures", "3", "--schedule-tick-ms", "200"]);
        let c = GatewayArgs { server, ..args() }.resolve().unwrap();
        assert_eq!(c.queue.poll_interval, Duration::from_millis(50));
        assert_eq!(c.queue.schedule_tick, Duration::from_millis(200));
        assert_eq!(c.sign_in.max_failures, 3);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        std::fs::write(&path, "queue_workers = 4\noutbox_max_attempts = \"5\"\nsignin_window_secs = 60\n").unwrap();
        let file = GatewayArgs { config_file: Some(path.clone()), ..args() };
        let c = file.resolve().unwrap();
        assert_eq!((c.queue.workers, c.queue.outbox_max_attempts), (4, 5));
        assert_eq!(c.sign_in.window, Duration::from_secs(60));
        let c = GatewayArgs { server: serve(&["--queue-workers", "2"]), ..file }.resolve().unwrap();
        assert_eq!(c.queue.workers, 2, "flags and env win over the file");
    }

    #[test]
    fn bad_queue_and_sign_in_values_name_their_variable() {
        let bad = |flags: &[&str]| GatewayArgs { server: serve(flags), ..args() }.resolve().unwrap_err().to_string();
        assert_eq!(
            bad(&["--queue-poll-ms", "soon"]),
            "invalid configuration: TESSERA_QUEUE_POLL_MS: 'soon' is not a whole number"
        );
        assert_eq!(
            bad(&["--queue-workers", "65"]),
            "invalid configuration: TESSERA_QUEUE_WORKERS: must be between 1 and 64"
        );
        assert_eq!(
            bad(&["--signin-window-secs", "0"]),
            "invalid configuration: TESSERA_SIGNIN_WINDOW_SECS: '0' is not a positive integer"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        std::fs::write(&path, "outbox_timeout_ms = 5\n").unwrap();
        let e = GatewayArgs { config_file: Some(path.clone()), ..args() }.resolve().unwrap_err();
        assert_eq!(e.key, "TESSERA_OUTBOX_TIMEOUT_MS");
        std::fs::write(&path, "sealing_key = \"00\"\n").unwrap();
        let e = GatewayArgs { config_file: Some(path), ..args() }.resolve().unwrap_err();
        assert_eq!(e.key, "TESSERA_CONFIG", "a secret is no file key");
    }

    #[test]
    fn every_setting_is_in_help_and_the_example_file_holds_the_defaults() {
        let example = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/tessera.example.toml");
        let text = std::fs::read_to_string(example).unwrap();
        let mut help = ServerArgs::augment_args(clap::Command::new("serve"));
        let help = help.render_long_help().to_string();
        for var in ["TESSERA_QUEUE_POLL_MS", "TESSERA_SCHEDULE_TICK_MS", "TESSERA_SIGNIN_MAX_FAILURES"] {
            assert!(help.contains(var), "{var} in serve --help");
        }
        let commands =
            [GatewayArgs::augment_args(clap::Command::new("t")), ServerArgs::augment_args(clap::Command::new("t"))];
        let secrets = ["config_file", "sealing_key", "embeddings_api_key"];
        for arg in commands.iter().flat_map(|c| c.get_arguments()) {
            let key = arg.get_id().as_str();
            if !secrets.contains(&key) {
                assert!(text.contains(&format!("{key} = ")), "{key} is in the example file");
            }
        }
        let with_file = GatewayArgs { config_file: Some(example.into()), ..args() }.resolve().unwrap();
        assert_eq!(format!("{with_file:?}"), format!("{:?}", args().resolve().unwrap()));
    }
}
