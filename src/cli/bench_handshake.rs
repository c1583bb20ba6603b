//! `tessera bench handshake`: TLS handshakes per second against the gateway's own accept loop
//! and server configuration, full and resumed, with and without a client certificate.
//!
//! It measures what the resumption policy costs (README, "Security"): sessions established
//! with a client certificate resume only until that certificate's notAfter
//! ([`crate::tls::BoundSessions`]); the alternative, no resumption for client-authenticated
//! connections, would cost each of them a full handshake. Each connection does the handshake,
//! one small HTTP/1.1 request (which also delivers the TLS 1.3 session tickets) and closes. No database is needed: the CA is generated in memory.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use rustls::client::Resumption;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::config::Config;
use crate::federation::ca::{ClientCertRequest, GatewayCa};

#[derive(Debug, Args)]
pub struct HandshakeBench {
    /// Concurrent clients, each with its own session cache.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Seconds per measured phase.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
}

/// Runs the four phases and prints handshakes per second for each.
///
/// # Errors
/// The in-process server or a client could not be set up.
pub async fn run(config: &Config, args: &HandshakeBench) -> anyhow::Result<()> {
    let ca = GatewayCa::ephemeral()?;
    let server = ca.issue_server_cert(&["localhost".to_string()])?;
    let tls = crate::tls::server_config(&ca, server.chain, server.key)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
    let server = tokio::spawn(crate::tls::serve(
        listener,
        tls,
        app,
        config.federation.oids.clone(),
        crate::app::connection_limits(config),
        async {
            let _ = stop_rx.await;
        },
        Duration::from_secs(1),
    ));

    let client_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let csr = rcgen::CertificateParams::default().serialize_request(&client_key)?.pem()?;
    let public_key = crate::federation::csr::verified_public_key(&csr)?;
    let cert = ca.issue_client_cert(
        &public_key,
        &ClientCertRequest {
            peer_name: "bench",
            grant_id: uuid::Uuid::now_v7(),
            subject_user_id: uuid::Uuid::now_v7(),
            oids: &config.federation.oids,
            ttl: Duration::from_secs(3600),
        },
    )?;
    let identity = (
        vec![CertificateDer::from_pem_slice(cert.pem.as_bytes())?],
        PrivateKeyDer::from_pem_slice(client_key.serialize_pem().as_bytes())?,
    );

    println!("TLS handshakes per second, {} clients, {} s per phase", args.concurrency, args.seconds);
    let mut rates = Vec::new();
    for (label, with_cert, resume) in [
        ("full, client certificate", true, false),
        ("resumed, client certificate", true, true),
        ("full, no client certificate", false, false),
        ("resumed, no client certificate", false, true),
    ] {
        // Each client its own session cache, as each peer gateway has.
        let clients = (0..args.concurrency)
            .map(|_| client_config(&ca, with_cert.then(|| (identity.0.clone(), identity.1.clone_key())), resume))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let (rate, resumed) = measure(port, clients, args).await?;
        println!("  {label:<32} {rate:>8.0}/s  ({:.0}% resumed)", resumed * 100.0);
        rates.push(rate);
    }
    println!(
        "  resumption saves client-authenticated connections {:.1}x the handshake cost",
        rates[1] / rates[0].max(1.0)
    );
    let _ = stop_tx.send(());
    let _ = server.await;
    Ok(())
}

fn client_config(
    ca: &GatewayCa,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    resume: bool,
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert_der().clone())?;
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let mut config = match identity {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key)?,
        None => builder.with_no_client_auth(),
    };
    config.resumption = if resume { Resumption::in_memory_sessions(1024) } else { Resumption::disabled() };
    Ok(Arc::new(config))
}

/// Handshakes per second over `args.seconds`, and the fraction that resumed.
async fn measure(
    port: u16,
    clients: Vec<Arc<rustls::ClientConfig>>,
    args: &HandshakeBench,
) -> anyhow::Result<(f64, f64)> {
    // One warm-up handshake per client leaves a ticket to resume from.
    for config in &clients {
        handshake(port, config).await?;
    }
    let until = Instant::now() + Duration::from_secs(args.seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for config in clients {
        tasks.push(tokio::spawn(async move {
            let (mut done, mut resumed) = (0u64, 0u64);
            while Instant::now() < until {
                if handshake(port, &config).await? {
                    resumed += 1;
                }
                done += 1;
            }
            anyhow::Ok((done, resumed))
        }));
    }
    let (mut done, mut resumed) = (0u64, 0u64);
    for task in tasks {
        let (d, r) = task.await.context("a bench client panicked")??;
        done += d;
        resumed += r;
    }
    let secs = started.elapsed().as_secs_f64();
    #[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
    Ok((done as f64 / secs, resumed as f64 / (done.max(1) as f64)))
}

/// One TCP connection, TLS handshake and a one-line HTTP/1.1 request (reading the answer is
/// what delivers the server's TLS 1.3 session tickets); true when the session resumed.
async fn handshake(port: u16, config: &Arc<rustls::ClientConfig>) -> anyhow::Result<bool> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let connector = tokio_rustls::TlsConnector::from(config.clone());
    let mut tls = connector.connect(ServerName::try_from("localhost")?, tcp).await?;
    let resumed = tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await?;
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer).await;
    anyhow::ensure!(answer.starts_with(b"HTTP/1.1 200"), "the bench route did not answer 200");
    Ok(resumed)
}
