//! Why an outgoing HTTPS call failed, told apart so that the CLI and the peer client can name the
//! cause and the fix (README, "Exit codes").
//!
//! reqwest wraps the real cause several layers deep (reqwest → hyper-util → hyper → `io::Error`
//! → `rustls::Error`), and its own `Display` says only "error sending request" or "client error
//! (Connect)". [`ConnectFailure::classify`] walks the `source()` chain and looks at the first layer
//! that knows: a TLS alert the server sent (it refused *our* certificate), a certificate error our
//! verifier raised (we refused *theirs*), an `io::ErrorKind`, or reqwest's timeout flag.

use std::error::Error;

use rustls::{AlertDescription, CertificateError};

/// The cause of a failed call, from most to least specific.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectFailure {
    /// The server refused the client certificate we presented (a TLS alert). `expired` when the
    /// alert says it expired.
    CertificateRefused { expired: bool, alert: String },
    /// The server's certificate is not signed by the CA we trust (the pinned CA or `--ca-file`).
    UntrustedServer(String),
    /// The server's certificate does not name the host we dialled.
    NameMismatch(String),
    /// The server's certificate is outside its validity (expired or not yet valid).
    ServerCertificateExpired(String),
    /// Nothing listens on the address (TCP reset on connect).
    ConnectionRefused,
    /// Connect or response timeout.
    Timeout,
    /// The host name did not resolve.
    Dns(String),
    /// Anything else: the innermost message.
    Other(String),
}

impl ConnectFailure {
    /// Classifies an error by its source chain.
    pub fn classify(err: &(dyn Error + 'static)) -> Self {
        let mut innermost = err.to_string();
        let mut timed_out = false;
        let mut current: Option<&(dyn Error + 'static)> = Some(err);
        while let Some(e) = current {
            if let Some(found) = e.downcast_ref::<rustls::Error>().and_then(Self::from_rustls) {
                return found;
            }
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                // tokio-rustls hands TLS failures on as io::Error(InvalidData, rustls::Error), and
                // hyper-util wraps that in another io::Error. `io::Error::source` skips the
                // wrapped error itself, so look inside with `get_ref`.
                let mut io = Some(io);
                while let Some(layer) = io {
                    match layer.kind() {
                        std::io::ErrorKind::ConnectionRefused => return Self::ConnectionRefused,
                        std::io::ErrorKind::TimedOut => timed_out = true,
                        _ => {}
                    }
                    let inner = layer.get_ref();
                    if let Some(found) =
                        inner.and_then(|i| i.downcast_ref::<rustls::Error>()).and_then(Self::from_rustls)
                    {
                        return found;
                    }
                    io = inner.and_then(|i| i.downcast_ref::<std::io::Error>());
                }
            }
            if let Some(r) = e.downcast_ref::<reqwest::Error>()
                && r.is_timeout()
            {
                timed_out = true;
            }
            let text = e.to_string();
            if text.starts_with("dns error") || text.contains("failed to lookup address") {
                let detail = e.source().map_or_else(|| text.clone(), ToString::to_string);
                return Self::Dns(detail);
            }
            if !text.is_empty() {
                innermost = text;
            }
            current = e.source();
        }
        if timed_out { Self::Timeout } else { Self::Other(innermost) }
    }

    fn from_rustls(e: &rustls::Error) -> Option<Self> {
        Some(match e {
            rustls::Error::AlertReceived(alert) => match alert {
                AlertDescription::CertificateExpired => {
                    Self::CertificateRefused { expired: true, alert: format!("{alert:?}") }
                }
                AlertDescription::BadCertificate
                | AlertDescription::UnknownCA
                | AlertDescription::CertificateRevoked
                | AlertDescription::CertificateUnknown
                | AlertDescription::UnsupportedCertificate
                | AlertDescription::CertificateRequired
                | AlertDescription::AccessDenied => {
                    Self::CertificateRefused { expired: false, alert: format!("{alert:?}") }
                }
                other => Self::Other(format!("the server ended the TLS handshake: {other:?}")),
            },
            rustls::Error::InvalidCertificate(cert) => match cert {
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                    Self::NameMismatch(e.to_string())
                }
                CertificateError::Expired
                | CertificateError::ExpiredContext { .. }
                | CertificateError::NotValidYet
                | CertificateError::NotValidYetContext { .. } => Self::ServerCertificateExpired(e.to_string()),
                _ => Self::UntrustedServer(e.to_string()),
            },
            _ => return None,
        })
    }

    /// Whether this is a trust or authentication failure (exit 2) rather than the other side
    /// being out of reach (exit 1).
    pub fn is_trust(&self) -> bool {
        matches!(
            self,
            Self::CertificateRefused { .. }
                | Self::UntrustedServer(_)
                | Self::NameMismatch(_)
                | Self::ServerCertificateExpired(_)
        )
    }

    /// The cause in one phrase, without advice.
    pub fn cause(&self) -> String {
        match self {
            Self::CertificateRefused { expired: true, .. } => {
                "the server refused our client certificate: it has expired".into()
            }
            Self::CertificateRefused { alert, .. } => {
                format!("the server refused our client certificate (TLS alert {alert})")
            }
            Self::UntrustedServer(d) => format!("the server's certificate is not signed by the CA we trust ({d})"),
            Self::NameMismatch(d) => format!("the server's certificate does not name this host ({d})"),
            Self::ServerCertificateExpired(d) => format!("the server's certificate is not valid now ({d})"),
            Self::ConnectionRefused => "connection refused: nothing listens on that address and port".into(),
            Self::Timeout => "timed out: no answer from the address".into(),
            Self::Dns(d) => format!("the host name does not resolve ({d})"),
            Self::Other(d) => d.clone(),
        }
    }
}

impl std::fmt::Display for ConnectFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.cause())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wrap(&'static str, Box<dyn Error + Send + Sync>);
    impl std::fmt::Display for Wrap {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl Error for Wrap {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(self.1.as_ref())
        }
    }

    fn chain(inner: impl Into<Box<dyn Error + Send + Sync>>) -> Wrap {
        Wrap("error sending request", Box::new(Wrap("client error (Connect)", inner.into())))
    }

    #[test]
    fn tls_causes_are_told_apart_through_the_chain() {
        // As hyper-util hands them on: io::Error(Other, io::Error(InvalidData, rustls::Error)).
        let io = |e: rustls::Error| std::io::Error::other(std::io::Error::new(std::io::ErrorKind::InvalidData, e));
        let c =
            ConnectFailure::classify(&chain(io(rustls::Error::AlertReceived(AlertDescription::CertificateExpired))));
        assert_eq!(c, ConnectFailure::CertificateRefused { expired: true, alert: "CertificateExpired".into() });
        assert!(c.is_trust() && c.cause().contains("expired"));
        let c = ConnectFailure::classify(&chain(io(rustls::Error::AlertReceived(AlertDescription::BadCertificate))));
        assert!(matches!(c, ConnectFailure::CertificateRefused { expired: false, .. }), "{c:?}");
        let c = ConnectFailure::classify(&chain(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)));
        assert!(matches!(c, ConnectFailure::UntrustedServer(_)) && c.is_trust(), "{c:?}");
        let c =
            ConnectFailure::classify(&chain(io(rustls::Error::InvalidCertificate(CertificateError::NotValidForName))));
        assert!(matches!(c, ConnectFailure::NameMismatch(_)), "{c:?}");
    }

    #[test]
    fn network_causes_are_not_trust_failures() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let c = ConnectFailure::classify(&chain(refused));
        assert_eq!(c, ConnectFailure::ConnectionRefused);
        assert!(!c.is_trust());
        let c = ConnectFailure::classify(&chain(std::io::Error::from(std::io::ErrorKind::TimedOut)));
        assert_eq!(c, ConnectFailure::Timeout);
        let dns = Wrap("dns error", Box::new(std::io::Error::other("failed to lookup address information")));
        assert!(matches!(ConnectFailure::classify(&chain(dns)), ConnectFailure::Dns(_)));
        let c = ConnectFailure::classify(&chain(std::io::Error::other("something odd")));
        assert_eq!(c, ConnectFailure::Other("something odd".into()));
    }
}
