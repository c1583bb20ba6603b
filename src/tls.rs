//! TLS: the server configuration and the accept loop (rustls + hyper-util, ALPN h2/http1.1).
//!
//! One listener serves everything. rustls verifies a client certificate against the gateway CA
//! when one is presented, but does not demand one (`allow_unauthenticated`), so health, admin and
//! enrollment routes share the port with the mTLS federation verbs; a certificate from another CA
//! fails the handshake. The peer's certificate chain is captured once per connection, right after
//! the handshake, and handed to every request on that connection as a [`ConnectionInfo`]
//! extension. Because it is read from the completed handshake, a resumed session carries exactly
//! the chain rustls verified and no request can skip that step.

//!
//! **Limits** (README, "Security"): a handshake must finish within `TESSERA_HANDSHAKE_TIMEOUT_SECS`;
//! a connection with no request in flight for `TESSERA_IDLE_TIMEOUT_SECS` is shut down gracefully
//! (HTTP/1.1 keep-alive, an HTTP/2 connection after its last stream, a half-sent preface alike),
//! and HTTP/2 pings find dead peers; at most `max_connections` client connections are open at
//! once, so a flood of idle sockets can never take the descriptors Postgres, Valkey and the
//! queue need. Accept errors back off and are logged at most once a second with a count.
//!
//! **Resumption is bound to the client certificate** ([`BoundSessions`]): a TLS session that was
//! established with a client certificate can be resumed only until that certificate's notAfter,
//! after which the client must do a full handshake, which rustls refuses for an expired
//! certificate. Keep-alive connections opened before the expiry are refused per request by the
//! guard, which checks the certificate's validity on every request.

use std::cell::Cell;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{StoresServerSessions, WebPkiClientVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::federation::ca::GatewayCa;
use crate::federation::identity::{FederationOids, IdentityError, PeerIdentity, parse_identity};

/// What every request knows about the connection it arrived on.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    pub remote_addr: SocketAddr,
    /// The verified client certificate chain (leaf first), if the peer presented one.
    pub peer_chain: Option<Arc<Vec<CertificateDer<'static>>>>,
    /// The federation identity read from the leaf, parsed once per connection.
    pub peer_identity: Option<Result<PeerIdentity, IdentityError>>,
}

/// Installs the `ring` provider as the process default (idempotent).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Builds the server configuration: our certificate chain, optional client certificates verified
/// against the gateway CA, ALPN h2 then http/1.1.
///
/// # Errors
/// The certificate or key is unusable.
pub fn server_config(
    ca: &GatewayCa,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.cert_der().clone()).context("the gateway CA certificate is not a valid trust anchor")?;
    let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
        .allow_unauthenticated()
        .build()
        .context("cannot build the client certificate verifier")?;
    let mut config = rustls::ServerConfig::builder()
        .with_client_cert_verifier(Arc::new(NotingVerifier(verifier)))
        .with_single_cert(chain, key)
        .context("the server certificate and key do not match")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.session_storage = Arc::new(BoundSessions::new(4096));
    Ok(Arc::new(config))
}

/// Reads an operator-supplied PEM certificate chain and key.
///
/// # Errors
/// Files missing or not PEM.
pub fn load_pem_pair(
    cert: &Path,
    key: &Path,
) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let chain = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("TESSERA_TLS_CERT: cannot read {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("TESSERA_TLS_CERT: {} is not a PEM certificate chain", cert.display()))?;
    if chain.is_empty() {
        anyhow::bail!("TESSERA_TLS_CERT: {} holds no certificate", cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("TESSERA_TLS_KEY: {} is not a PEM private key", key.display()))?;
    Ok((chain, key))
}

/// Limits on client connections (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    /// How long a client may take to send a request's headers (HTTP/1.1).
    pub header_read_timeout: Duration,
    pub max_connections: usize,
}

/// Largest request head read (HTTP/1.1 buffer, HTTP/2 header list). Far above what any client
/// sends, so that an oversized header is read and answered 431 in the error envelope by
/// [`crate::http::limits`] instead of the connection being dropped mid-request.
pub const MAX_HEAD_BYTES: usize = 4 << 20;

/// Counter: TLS handshakes that failed, by reason.
pub const HANDSHAKE_FAILURES_METRIC: &str = "tessera_tls_handshake_failures_total";
/// Counter: accept() errors (descriptor exhaustion and the like).
pub const ACCEPT_ERRORS_METRIC: &str = "tessera_accept_errors_total";
/// Gauge: open client connections.
pub const OPEN_CONNECTIONS_METRIC: &str = "tessera_open_connections";

/// Serves `app` on `listener` until `shutdown` resolves, then lets open connections finish for
/// up to `drain`.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    oids: FederationOids,
    limits: ConnectionLimits,
    shutdown: impl std::future::Future<Output = ()>,
    drain: Duration,
) {
    let acceptor = TlsAcceptor::from(tls);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let accept_log = Arc::new(OncePerSecond::default());
    let mut backoff = Duration::from_millis(10);
    tokio::pin!(shutdown);
    loop {
        // A slot first: at the cap, further clients wait in the kernel's backlog instead of
        // taking descriptors, and are accepted as soon as an idle connection is closed.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (tcp, remote_addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => {
                    backoff = Duration::from_millis(10);
                    pair
                }
                Err(e) => {
                    // EMFILE and friends: back off (up to a second) instead of spinning, and
                    // log once a second with the count, not once per attempt.
                    metrics::counter!(ACCEPT_ERRORS_METRIC).increment(1);
                    if let Some(count) = accept_log.due("accept") {
                        tracing::warn!(error = %e, count, "accept failed");
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let connection = Connection {
            acceptor: acceptor.clone(),
            app: app.clone(),
            oids: oids.clone(),
            limits,
            stop: stop_rx.clone(),
            log: accept_log.clone(),
        };
        tokio::spawn(async move {
            metrics::gauge!(OPEN_CONNECTIONS_METRIC).increment(1.0);
            // The whole connection runs in the scope: rustls may store session tickets after
            // the handshake future has completed.
            CLIENT_NOT_AFTER.scope(Cell::new(None), connection.run(tcp, remote_addr)).await;
            metrics::gauge!(OPEN_CONNECTIONS_METRIC).decrement(1.0);
            drop(slot);
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    // Every connection holds a slot until it ends: all slots back means all connections closed.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    tokio::select! {
        _ = slots.acquire_many(all) => tracing::info!("all connections closed"),
        () = tokio::time::sleep(drain) => tracing::warn!("shutdown drain timed out; closing remaining connections"),
    }
}

/// One accepted TCP connection: TLS handshake, identity, HTTP until idle, shutdown or close.
struct Connection {
    acceptor: TlsAcceptor,
    app: Router,
    oids: FederationOids,
    limits: ConnectionLimits,
    stop: tokio::sync::watch::Receiver<bool>,
    log: Arc<OncePerSecond>,
}

impl Connection {
    async fn run(mut self, tcp: tokio::net::TcpStream, remote_addr: SocketAddr) {
        let _ = tcp.set_nodelay(true);
        let handshake = self.acceptor.accept(tcp);
        let tls_stream = match tokio::time::timeout(self.limits.handshake_timeout, handshake).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return self.handshake_failed(remote_addr, handshake_failure_reason(&e), &e),
            Err(_) => return self.handshake_failed(remote_addr, "timeout", &"no handshake within the timeout"),
        };
        let peer_chain = tls_stream
            .get_ref()
            .1
            .peer_certificates()
            .map(|certs| Arc::new(certs.iter().map(|c| c.clone().into_owned()).collect::<Vec<_>>()));
        let peer_identity =
            peer_chain.as_ref().and_then(|chain| chain.first()).map(|leaf| parse_identity(leaf.as_ref(), &self.oids));
        let info = ConnectionInfo { remote_addr, peer_chain, peer_identity };

        let activity = Arc::new(Activity::new());
        let app = self.app.clone();
        let seen = activity.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(info.clone());
            let in_flight = seen.begin();
            let response = app.clone().oneshot(req);
            async move {
                let response = response.await;
                drop(in_flight);
                response
            }
        });
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_read_timeout)
            .max_buf_size(MAX_HEAD_BYTES);
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(Some(self.limits.idle_timeout.min(Duration::from_secs(30))))
            .keep_alive_timeout(Duration::from_secs(20))
            .max_header_list_size(u32::try_from(MAX_HEAD_BYTES).unwrap_or(u32::MAX));
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls_stream), service);
        tokio::pin!(conn);
        // After a graceful shutdown starts (idle, or the server stopping), the connection gets
        // this long to finish what is in flight before it is dropped.
        let mut closing: Option<tokio::time::Instant> = None;
        if *self.stop.borrow() {
            conn.as_mut().graceful_shutdown();
            closing = Some(tokio::time::Instant::now() + self.limits.idle_timeout);
        }
        loop {
            let idle_at = activity.idle_deadline(self.limits.idle_timeout);
            tokio::select! {
                ended = conn.as_mut() => {
                    if let Err(e) = ended {
                        tracing::debug!(%remote_addr, error = %e, "connection ended with an error");
                    }
                    return;
                }
                _ = self.stop.changed(), if closing.is_none() => {
                    conn.as_mut().graceful_shutdown();
                    closing = Some(tokio::time::Instant::now() + self.limits.idle_timeout);
                }
                () = tokio::time::sleep_until(idle_at), if closing.is_none() => {
                    if activity.is_idle(self.limits.idle_timeout) {
                        tracing::debug!(%remote_addr, "closing an idle connection");
                        conn.as_mut().graceful_shutdown();
                        closing = Some(tokio::time::Instant::now() + self.limits.idle_timeout);
                    }
                }
                () = sleep_until_some(closing) => {
                    tracing::debug!(%remote_addr, "connection did not finish after shutdown; dropping it");
                    return;
                }
            }
        }
    }

    fn handshake_failed(&mut self, remote_addr: SocketAddr, reason: &'static str, error: &dyn std::fmt::Display) {
        metrics::counter!(HANDSHAKE_FAILURES_METRIC, "reason" => reason).increment(1);
        if let Some(count) = self.log.due(reason) {
            tracing::info!(%remote_addr, reason, count, error = %error, "TLS handshake failed");
        }
    }
}

async fn sleep_until_some(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// When the connection last started or finished a request, and how many are in flight.
struct Activity {
    started: tokio::time::Instant,
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
}

/// Marks one request in flight until dropped.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Activity {
    fn new() -> Self {
        Self { started: tokio::time::Instant::now(), last_ms: AtomicU64::new(0), in_flight: AtomicUsize::new(0) }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Release);
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.touch();
        InFlight(self.clone())
    }

    fn idle_deadline(&self, idle: Duration) -> tokio::time::Instant {
        self.started + Duration::from_millis(self.last_ms.load(Ordering::Acquire)) + idle
    }

    fn is_idle(&self, idle: Duration) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0 && tokio::time::Instant::now() >= self.idle_deadline(idle)
    }
}

/// Rate limit for repetitive log lines: at most one per key and second, with the number of
/// events since the last line.
#[derive(Default)]
pub struct OncePerSecond(std::sync::Mutex<std::collections::HashMap<&'static str, (std::time::Instant, u64)>>);

impl OncePerSecond {
    /// `Some(count)` when a line for `key` is due (count: events since the last line, this one
    /// included); `None` while the last line is less than a second old.
    pub fn due(&self, key: &'static str) -> Option<u64> {
        let mut map = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = std::time::Instant::now();
        let entry = map.entry(key).or_insert((now - Duration::from_secs(2), 0));
        entry.1 += 1;
        if now.duration_since(entry.0) >= Duration::from_secs(1) {
            let count = entry.1;
            *entry = (now, 0);
            Some(count)
        } else {
            None
        }
    }
}

/// A short, stable reason for a failed handshake (the metric label).
fn handshake_failure_reason(e: &std::io::Error) -> &'static str {
    use rustls::{CertificateError, Error};
    match e.get_ref().and_then(|inner| inner.downcast_ref::<Error>()) {
        Some(Error::InvalidCertificate(CertificateError::Expired | CertificateError::ExpiredContext { .. })) => {
            "certificate_expired"
        }
        Some(Error::InvalidCertificate(CertificateError::UnknownIssuer | CertificateError::BadSignature)) => {
            "untrusted_certificate"
        }
        Some(Error::InvalidCertificate(CertificateError::Revoked)) => "certificate_revoked",
        Some(Error::InvalidCertificate(_)) => "invalid_certificate",
        Some(Error::NoCertificatesPresented) => "no_certificate",
        Some(Error::PeerIncompatible(_)) => "incompatible",
        Some(Error::AlertReceived(_)) => "alert_received",
        Some(Error::InvalidMessage(_) | Error::InappropriateMessage { .. }) => "not_tls",
        Some(_) => "protocol",
        None => match e.kind() {
            std::io::ErrorKind::UnexpectedEof => "eof",
            std::io::ErrorKind::ConnectionReset => "reset",
            _ => "io",
        },
    }
}

tokio::task_local! {
    /// The notAfter (unix seconds) of the client certificate verified during this handshake.
    static CLIENT_NOT_AFTER: Cell<Option<i64>>;
}

/// rustls' client verifier, which also notes the verified certificate's notAfter for
/// [`BoundSessions`].
#[derive(Debug)]
struct NotingVerifier(Arc<dyn ClientCertVerifier>);

impl ClientCertVerifier for NotingVerifier {
    fn offer_client_auth(&self) -> bool {
        self.0.offer_client_auth()
    }
    fn client_auth_mandatory(&self) -> bool {
        self.0.client_auth_mandatory()
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.0.root_hint_subjects()
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.0.verify_client_cert(end_entity, intermediates, now)?;
        let not_after = x509_parser::parse_x509_certificate(end_entity.as_ref())
            .map(|(_, cert)| cert.validity().not_after.timestamp())
            .map_err(|_| rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding))?;
        // Outside a handshake scope (never in this server) there is nothing to bind.
        let _ = CLIENT_NOT_AFTER.try_with(|slot| slot.set(Some(not_after)));
        Ok(verified)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// A stored session and the notAfter (unix seconds) of the client certificate it carries.
type StoredSession = (Vec<u8>, Option<i64>);

/// The server's session store (TLS 1.3 stateful tickets, TLS 1.2 session ids): a session
/// established with a client certificate resumes only until that certificate's notAfter.
#[derive(Debug)]
pub struct BoundSessions {
    entries: std::sync::Mutex<std::collections::HashMap<Vec<u8>, StoredSession>>,
    capacity: usize,
}

impl BoundSessions {
    pub fn new(capacity: usize) -> Self {
        Self { entries: std::sync::Mutex::default(), capacity }
    }

    /// The stored session if its certificate is still valid. A resumed connection issues new
    /// tickets of its own, with no certificate verified on it, so the certificate's notAfter is
    /// handed on to them through the connection's scope.
    fn usable((value, not_after): StoredSession) -> Option<Vec<u8>> {
        let now = chrono::Utc::now().timestamp();
        if not_after.is_some_and(|t| t <= now) {
            return None;
        }
        if not_after.is_some() {
            let _ = CLIENT_NOT_AFTER.try_with(|slot| slot.set(not_after));
        }
        Some(value)
    }
}

impl StoresServerSessions for BoundSessions {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        let not_after = CLIENT_NOT_AFTER.try_with(Cell::get).ok().flatten();
        let mut entries = self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if entries.len() >= self.capacity
            && !entries.contains_key(&key)
            && let Some(evicted) = entries.keys().next().cloned()
        {
            entries.remove(&evicted);
        }
        entries.insert(key, (value, not_after));
        true
    }
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        let entry = self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(key).cloned();
        entry.and_then(Self::usable)
    }
    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        let entry = self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(key);
        entry.and_then(Self::usable)
    }
    fn can_cache(&self) -> bool {
        true
    }
}
