//! Assembling and running the gateway: services, migrations, CA, TLS, the HTTP router and the
//! background work ([`background`]).
//!
//! [`AppState`] is the one application value: built in one place ([`AppState::new`], used by
//! `serve` and by the list bench), shared behind one `Arc`.

pub mod background;

use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sqlx::PgPool;

use crate::config::Config;
use crate::federation::ca::GatewayCa;
use crate::sealing::SealingKey;
use crate::services::Database;

/// Shared state handed to every handler: one `Arc` around [`App`], so a clone is a pointer copy.
#[derive(Clone)]
pub struct AppState(Arc<App>);

impl Deref for AppState {
    type Target = App;

    fn deref(&self) -> &App {
        &self.0
    }
}

/// What the application is made of: the services it started and the state built on them.
pub struct App {
    pub pool: PgPool,
    /// The peer-facing federation path's own pool (generic plans; see
    /// [`crate::store::peer_read_pool`]).
    pub peer_reads: PgPool,
    /// The guard's remembered decisions per grant (proposals the list statement confirms).
    pub grant_memo: crate::federation::guard::GrantMemo,
    pub config: Config,
    pub ca: Arc<GatewayCa>,
    pub sealing: SealingKey,
    /// Shared rate limiter (in process in tiers local/standalone; Valkey in federated).
    pub limiter: crate::ratelimit::RateLimiter,
    /// Batched, off-request-path writer of federation audit rows.
    pub audit: crate::federation::audit::AuditSink,
    /// Circuit breakers for the peers this gateway calls.
    pub breakers: crate::federation::peer_client::Breakers,
    /// Valkey, when the tier uses it (required in federated, optional in standalone).
    pub valkey: Option<crate::services::valkey::Valkey>,
}

/// The started services and settings an [`AppState`] is built from.
pub struct Services {
    pub pool: PgPool,
    /// See [`App::peer_reads`].
    pub peer_reads: PgPool,
    pub config: Config,
    pub ca: Arc<GatewayCa>,
    pub sealing: SealingKey,
    pub valkey: Option<crate::services::valkey::Valkey>,
}

impl AppState {
    /// Builds the application value and starts the federation audit writer, returned so that
    /// the caller can wait for it to flush once the last state is dropped. The rate limiter
    /// lives in Valkey when there is one, else in process.
    pub fn new(services: Services) -> (Self, tokio::task::JoinHandle<()>) {
        let Services { pool, peer_reads, config, ca, sealing, valkey } = services;
        let limiter = match &valkey {
            Some(v) => crate::ratelimit::RateLimiter::valkey(v.clone()),
            None => crate::ratelimit::RateLimiter::in_memory(),
        };
        tracing::info!(backend = limiter.backend(), "rate limiter");
        let (audit, audit_writer) = crate::federation::audit::AuditSink::start(pool.clone());
        let app = App {
            pool,
            peer_reads,
            grant_memo: Default::default(),
            config,
            ca,
            sealing,
            limiter,
            audit,
            breakers: Default::default(),
            valkey,
        };
        (Self(Arc::new(app)), audit_writer)
    }
}

impl axum::extract::FromRef<AppState> for crate::queue::routes::QueueState {
    fn from_ref(state: &AppState) -> Self {
        Self { pool: state.pool.clone() }
    }
}

/// Runs `tessera serve` until SIGINT/SIGTERM.
///
/// Start-up order (README, "Start-up"): everything that can be checked without starting a
/// service is checked first — the settings (already resolved by [`Config`], the sign-in throttle
/// and queue tuning among them), the sealing key, the data-dir lock and the listen socket — so
/// that a bad setting or a taken port stops start-up with one line naming the setting, before
/// Valkey, Postgres, the CA or any worker has started. Only then do the services start.
///
/// # Errors
/// Anything that prevents start-up; the message names the failing piece.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    // A configured key is checked before anything is created; a key file lives in the data dir.
    let sealing_error = |e: crate::sealing::SealingError| match (&e, config.sealing_key.is_some()) {
        (crate::sealing::SealingError::BadKey, true) => crate::config::ConfigError {
            key: "TESSERA_SEALING_KEY",
            message: "must be 64 hex characters (32 bytes); generate one with `openssl rand -hex 32`".into(),
        },
        _ => crate::config::ConfigError { key: "TESSERA_DATA_DIR", message: e.to_string() },
    };
    if config.sealing_key.is_some() {
        SealingKey::load(config.sealing_key.as_ref(), &config.data_dir).map_err(sealing_error)?;
    }
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("TESSERA_DATA_DIR: cannot create {}", config.data_dir.display()))?;
    // One gateway per data dir: the kernel releases this lock even after kill -9.
    let lock_path = config.data_dir.join("gateway.lock");
    let gateway_lock = std::fs::File::create(&lock_path)?;
    if gateway_lock.try_lock().is_err() {
        anyhow::bail!("another tessera gateway is already running on data dir {}", config.data_dir.display());
    }
    let sealing = SealingKey::load(config.sealing_key.as_ref(), &config.data_dir).map_err(sealing_error)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("TESSERA_LISTEN: cannot bind {}", config.listen))?;
    let bound = listener.local_addr()?;
    let mut config = config;
    if !config.public_url_configured {
        config.public_url = crate::config::default_public_url(bound, &config.tls_sans);
    }

    crate::http::metrics::install();
    let limits = connection_limits(&config);
    // Probe Valkey before Postgres: both are capped at 5 s, and a configured Valkey that is down
    // stops start-up rather than being replaced by in-process state.
    let valkey = connect_valkey(&config).await?;
    let mut db = Database::open(&config, 16).await?;
    if let Some(pg) = db.embedded.as_mut() {
        // An orphan adopted after a crash is ours to stop now.
        pg.take_ownership();
    }
    let result = run(&config, &db.pool, valkey.clone(), Started { listener, sealing, limits }).await;
    db.close().await;
    if let Some(v) = valkey {
        v.close().await;
    }
    drop(gateway_lock);
    result
}

/// What [`serve`] prepared before any service started.
struct Started {
    listener: tokio::net::TcpListener,
    sealing: SealingKey,
    limits: crate::tls::ConnectionLimits,
}

/// Connects to Valkey when the tier uses it (DESIGN §2): required in `federated`, optional in
/// `standalone` (used when `VALKEY_URL` is set), never in `local`.
///
/// # Errors
/// Valkey is configured but unreachable within 5 s; the message names it and its address.
pub async fn connect_valkey(config: &Config) -> anyhow::Result<Option<crate::services::valkey::Valkey>> {
    use crate::config::Tier;
    match (config.tier, &config.valkey_url) {
        (Tier::Local, Some(url)) => {
            tracing::warn!(valkey = %url, "tier local keeps its state in process; VALKEY_URL is ignored");
            Ok(None)
        }
        (Tier::Local, None) | (Tier::Standalone, None) => Ok(None),
        (Tier::Federated, None) => anyhow::bail!("VALKEY_URL: tier federated needs Valkey"),
        (_, Some(url)) => Ok(Some(crate::services::valkey::Valkey::connect(url).await?)),
    }
}

/// Raises the descriptor limit and sizes the connection cap below it (see `tls`).
pub fn connection_limits(config: &Config) -> crate::tls::ConnectionLimits {
    use crate::services::os;
    let settings = &config.connections;
    let capacity = match os::raise_descriptor_limit() {
        Ok((soft, hard)) => {
            let capacity = os::connection_capacity(soft);
            tracing::info!(soft, hard, capacity, "open descriptor limit");
            capacity
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the descriptor limit; capping connections at 1024");
            1024
        }
    };
    let max_connections = match settings.max_connections {
        Some(wanted) if wanted > capacity => {
            tracing::warn!(
                wanted,
                capacity,
                "TESSERA_MAX_CONNECTIONS is above what the descriptor limit allows; using the limit"
            );
            capacity
        }
        Some(wanted) => wanted,
        None => capacity,
    };
    crate::tls::ConnectionLimits {
        handshake_timeout: settings.handshake_timeout,
        idle_timeout: settings.idle_timeout,
        header_read_timeout: settings.header_read_timeout,
        max_connections,
    }
}

async fn run(
    config: &Config,
    pool: &PgPool,
    valkey: Option<crate::services::valkey::Valkey>,
    started: Started,
) -> anyhow::Result<()> {
    let Started { listener, sealing, limits } = started;
    crate::store::migrate(pool).await?;
    crate::store::advertised_url::record(pool, &config.public_url).await?;
    // Today's audit partition (and the week ahead) before the first request; the periodic job
    // keeps it so. A failure is not fatal: rows go to the default partition meanwhile.
    if let Err(e) = crate::federation::audit::maintain(pool, config.audit_retention_days).await {
        tracing::warn!(error = %e, "could not prepare the audit log partitions");
    }
    let ca = GatewayCa::load_or_create(pool, &sealing).await?;
    write_ca_file(config, &ca)?;

    let (chain, key) = match &config.tls_cert {
        Some((cert, key)) => crate::tls::load_pem_pair(cert, key)?,
        None => {
            let issued = ca
                .issue_server_cert(&config.tls_sans)
                .context("TESSERA_TLS_SANS: cannot issue a server certificate")?;
            (issued.chain, issued.key)
        }
    };
    record_expiry_gauges(&ca, &chain);
    let tls = crate::tls::server_config(&ca, chain, key)?;

    let (state, audit_writer) = AppState::new(Services {
        pool: pool.clone(),
        peer_reads: crate::store::peer_read_pool(pool, 16),
        config: config.clone(),
        ca,
        sealing,
        valkey,
    });
    let app = crate::http::router(state.clone());

    // Queue workers (certificate renewal and clean-up are periodic jobs), the outbox drainer.
    // They stop as soon as the shutdown signal arrives, alongside the HTTP drain, not after it.
    let background = background::BackgroundWork::start(&state).await?;
    let (stopping, mut stop_rx) = tokio::sync::watch::channel(false);
    let background = tokio::spawn(async move {
        let _ = stop_rx.changed().await;
        background.stop().await;
    });
    let sampler = tokio::spawn(crate::http::metrics::sample(
        state.pool.clone(),
        state.peer_reads.clone(),
        Duration::from_secs(5),
        stopping.subscribe(),
    ));
    let signal = async move {
        shutdown_signal().await;
        let _ = stopping.send(true);
    };
    let local = listener.local_addr()?;
    tracing::info!(listen = %local, public_url = %config.public_url, tier = config.tier.as_str(), data_dir = %config.data_dir.display(), "tessera is serving");
    crate::tls::serve(listener, tls, app, config.federation.oids.clone(), limits, signal, Duration::from_secs(10))
        .await;
    let _ = background.await;
    let _ = sampler.await;
    // Dropping the last sink lets the audit writer flush what is buffered and stop.
    let peer_reads = state.peer_reads.clone();
    drop(state);
    let _ = tokio::time::timeout(Duration::from_secs(5), audit_writer).await;
    peer_reads.close().await;
    tracing::info!("shutting down");
    Ok(())
}

/// Sets the CA and server-certificate expiry gauges (the CA's is refreshed on scrape too).
fn record_expiry_gauges(ca: &GatewayCa, chain: &[rustls_pki_types::CertificateDer<'_>]) {
    use crate::federation::peer_status::{CA_EXPIRY_METRIC, SERVER_CERT_EXPIRY_METRIC};
    metrics::gauge!(CA_EXPIRY_METRIC).set(ca.not_after().timestamp() as f64);
    let leaf = chain.first().and_then(|der| x509_parser::parse_x509_certificate(der.as_ref()).ok());
    if let Some((_, cert)) = leaf {
        metrics::gauge!(SERVER_CERT_EXPIRY_METRIC).set(cert.validity().not_after.timestamp() as f64);
    }
}

/// Mirrors the CA certificate into the data dir so local CLI commands can trust the gateway.
fn write_ca_file(config: &Config, ca: &GatewayCa) -> anyhow::Result<()> {
    let path = config.ca_cert_path();
    let tmp = path.with_extension("pem.tmp");
    std::fs::write(&tmp, ca.cert_pem())?;
    std::fs::rename(&tmp, &path)?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
