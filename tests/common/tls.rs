//! Raw TLS for the tests that look below HTTP clients: a rustls client configuration trusting a
//! gateway's CA (with a client certificate, ALPN protocols, or neither), and one HTTP/1.1 GET
//! over a fresh connection that reports how the handshake went (full or resumed).

use std::sync::Arc;

use rustls::{ClientConfig, HandshakeKind, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A client configuration trusting only `ca_pem`; with `identity` (key PEM, certificate PEM) it
/// presents that client certificate. One configuration keeps one session cache, so a second
/// connection made with it can resume.
pub fn client_config(ca_pem: &[u8], identity: Option<(&[u8], &[u8])>, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    tessera::tls::install_crypto_provider();
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca_pem).expect("CA PEM")).expect("CA certificate");
    let builder = ClientConfig::builder().with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some((key_pem, cert_pem)) => {
            let chain = vec![CertificateDer::from_pem_slice(cert_pem).expect("certificate PEM")];
            let key = PrivateKeyDer::from_pem_slice(key_pem).expect("key PEM");
            builder.with_client_auth_cert(chain, key).expect("client certificate")
        }
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// A connector for `config`.
pub fn connector(config: Arc<ClientConfig>) -> tokio_rustls::TlsConnector {
    tokio_rustls::TlsConnector::from(config)
}

/// Sends `GET path` over HTTP/1.1 on a fresh TLS connection to `localhost:port` made with
/// `config`; the status code and how the handshake went, or `None` when the handshake was
/// refused or the connection closed without a status line.
pub async fn try_raw_get(port: u16, config: Arc<ClientConfig>, path: &str) -> Option<(u16, HandshakeKind)> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
    let name = ServerName::try_from("localhost").expect("server name");
    let mut tls = connector(config).connect(name, tcp).await.ok()?;
    let kind = tls.get_ref().1.handshake_kind()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    let _ = tls.read_to_end(&mut response).await;
    let text = String::from_utf8_lossy(&response);
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok())?;
    Some((status, kind))
}

/// [`try_raw_get`] where the request must be answered.
pub async fn raw_get(port: u16, config: Arc<ClientConfig>, path: &str) -> (u16, HandshakeKind) {
    try_raw_get(port, config, path).await.expect("a TLS handshake and an HTTP status line")
}
