//! TLS: the server configuration and the accept loop (rustls + hyper-util, ALPN h2/http1.1).
//!
//! One listener serves everything. rustls verifies a client certificate against the gateway CA
//! when one is presented, but does not demand one (`allow_unauthenticated`), so health, admin and
//! enrollment routes share the port with the mTLS federation verbs; a certificate from another CA
//! fails the handshake. The peer's certificate chain is captured once per connection, right after
//! the handshake, and handed to every request on that connection as a [`ConnectionInfo`]
//! extension. Because it is read from the completed handshake, a resumed session carries exactly
//! the chain rustls verified and no request can skip that step.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
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
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .context("the server certificate and key do not match")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
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

/// Serves `app` on `listener` until `shutdown` resolves, then lets open connections finish for
/// up to `drain`.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    oids: FederationOids,
    handshake_timeout: Duration,
    shutdown: impl std::future::Future<Output = ()>,
    drain: Duration,
) {
    let acceptor = TlsAcceptor::from(tls);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, remote_addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        let oids = oids.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let tls_stream = match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%remote_addr, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%remote_addr, "TLS handshake timed out");
                    return;
                }
            };
            let peer_chain = tls_stream
                .get_ref()
                .1
                .peer_certificates()
                .map(|certs| Arc::new(certs.iter().map(|c| c.clone().into_owned()).collect::<Vec<_>>()));
            let peer_identity =
                peer_chain.as_ref().and_then(|chain| chain.first()).map(|leaf| parse_identity(leaf.as_ref(), &oids));
            let info = ConnectionInfo { remote_addr, peer_chain, peer_identity };
            let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(info.clone());
                app.clone().oneshot(req)
            });
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder.http1().timer(TokioTimer::new()).header_read_timeout(Duration::from_secs(30));
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls_stream), service);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(%remote_addr, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(drain) => tracing::warn!("shutdown drain timed out; closing remaining connections"),
    }
}
