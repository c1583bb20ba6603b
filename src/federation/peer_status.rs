//! The reader's view of the peers it calls (gateway A's side): where each client certificate
//! stands in its life, how the last calls and renewals went, and whether the other side has
//! been refusing us.
//!
//! - **Renewal follows the certificate.** A certificate is renewed at about two thirds of its
//!   own lifetime ([`CertLife::renew_point`], ±1/30 of the lifetime of jitter), counted from when
//!   we stored it or its notBefore, whichever is later (issuers back-date notBefore for clock
//!   skew). A failed renewal is retried after 5 s, doubling to 5 minutes, never past expiry
//!   ([`retry_at`]). The local `TESSERA_FEDERATION_CERT_TTL_SECS` plays no part: it is what
//!   *this* gateway issues, not what the peer issued to us.
//! - **The last sixth** of a certificate's life is its warning zone: `peer.certificate_expiring`
//!   once per certificate, status `expiring`, `tessera doctor` warns.
//! - **Calls are recorded** in the peer row: a success sets `last_success_at` and ends a refusal
//!   streak; a failure sets `last_error` (the error's code and message, never a secret) and, for
//!   a 401/403 (the peer's guard refusing our certificate or grant), starts the streak
//!   `refusing_since` if none is running. Successes are written at most once a second per peer
//!   and process, so a busy reader does not write a row per call. A scope denial is a 403 too,
//!   and the peer client keeps only the status, so asking for a resource the grant does not
//!   cover also starts a streak (the next successful call ends it).
//! - **Status** ([`ReaderStatus`]) is derived when read, so an expired certificate shows
//!   `expired` even if nothing ran since it expired.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use utoipa::ToSchema;

use crate::store;

/// Failed renewals in a row from which the reader is `renewal_failing` and the doctor warns.
pub const RENEWAL_FAILURES_WARN: i32 = 3;
/// First retry after a failed renewal; it doubles up to [`RETRY_CAP`].
pub const RETRY_BASE: Duration = Duration::from_secs(5);
pub const RETRY_CAP: Duration = Duration::from_secs(300);
/// Longest cause stored in `last_error`.
const CAUSE_MAX_CHARS: usize = 300;

/// Counter of calls to peers, labelled `peer` and `outcome`.
pub const CALLS_METRIC: &str = "tessera_peer_calls_total";
/// Counter of client-certificate renewals, labelled `peer` and `outcome` (`ok`, `refused`, `failed`).
pub const RENEWALS_METRIC: &str = "tessera_peer_renewals_total";
/// Gauge: notAfter (unix seconds) of each peer client certificate, labelled `peer`.
pub const PEER_CERT_EXPIRY_METRIC: &str = "tessera_peer_client_certificate_expiry_timestamp_seconds";
/// Gauge: notAfter (unix seconds) of this gateway's federation CA.
pub const CA_EXPIRY_METRIC: &str = "tessera_ca_certificate_expiry_timestamp_seconds";
/// Gauge: notAfter (unix seconds) of this gateway's TLS server certificate.
pub const SERVER_CERT_EXPIRY_METRIC: &str = "tessera_server_certificate_expiry_timestamp_seconds";

/// What a stored certificate says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFacts {
    /// Lowercase hex, as the issuer records it.
    pub serial: String,
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
}

/// Reads serial and validity from the first certificate of a PEM document.
///
/// # Errors
/// Not a PEM X.509 certificate.
pub fn cert_facts(pem: &str) -> anyhow::Result<CertFacts> {
    use anyhow::Context;
    use x509_parser::prelude::{FromDer, X509Certificate};
    let der = crate::federation::ca::pem_to_der(pem)?;
    let (_, cert) = X509Certificate::from_der(&der).map_err(|_| anyhow::anyhow!("not an X.509 certificate"))?;
    let instant = |t: x509_parser::time::ASN1Time| {
        DateTime::<Utc>::from_timestamp(t.timestamp(), 0).context("certificate time out of range")
    };
    Ok(CertFacts {
        serial: hex::encode(cert.raw_serial()),
        not_before: instant(cert.validity().not_before)?,
        not_after: instant(cert.validity().not_after)?,
    })
}

/// The life of one client certificate as the renewal schedule counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CertLife {
    /// The later of notBefore and when we stored the certificate (never after notAfter).
    pub start: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
}

impl CertLife {
    pub fn new(facts: &CertFacts, received_at: Option<DateTime<Utc>>) -> Self {
        let start = received_at.map_or(facts.not_before, |r| r.max(facts.not_before)).min(facts.not_after);
        Self { start, not_after: facts.not_after }
    }

    pub fn lifetime(&self) -> chrono::Duration {
        self.not_after - self.start
    }

    /// Two thirds into the lifetime, moved by `jitter` (in -1..=1) times a thirtieth of it, so
    /// that readers enrolled together do not all renew in the same second.
    pub fn renew_point(&self, jitter: f64) -> DateTime<Utc> {
        let ms = self.lifetime().num_milliseconds().max(0);
        let spread = (jitter.clamp(-1.0, 1.0) * ms as f64 / 30.0).round() as i64;
        self.start + chrono::Duration::milliseconds(ms * 2 / 3 + spread)
    }

    /// A random [`CertLife::renew_point`].
    pub fn renew_point_jittered(&self) -> DateTime<Utc> {
        use rand::RngExt;
        self.renew_point(rand::rng().random_range(-1.0..=1.0))
    }

    /// Start of the last sixth of the lifetime: the warning zone.
    pub fn expiring_from(&self) -> DateTime<Utc> {
        self.not_after - self.lifetime() / 6
    }
}

/// When to retry after the `failures`-th failed renewal in a row: 5 s doubling to 5 minutes
/// (80–100 % of that, for spread), and never later than a second before the certificate expires,
/// since after expiry the peer's TLS handshake refuses the very certificate renewal needs.
pub fn retry_at(failures: i32, now: DateTime<Utc>, not_after: DateTime<Utc>) -> DateTime<Utc> {
    use rand::RngExt;
    let exp = u32::try_from(failures.saturating_sub(1).clamp(0, 20)).unwrap_or(20);
    let ceiling = RETRY_BASE.saturating_mul(1u32 << exp).min(RETRY_CAP).as_millis() as i64;
    let delay = rand::rng().random_range(ceiling * 4 / 5..=ceiling);
    let wanted = now + chrono::Duration::milliseconds(delay);
    let last_chance = not_after - chrono::Duration::seconds(1);
    wanted.min(last_chance).max(now)
}

/// Where the reader stands with one peer, most serious first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReaderStatus {
    /// The client certificate has expired: calls fail until the peer re-enrolls us.
    Expired,
    /// The peer answered 401/403 (grant revoked, certificate refused...) since `refusingSince`.
    Refusing,
    /// Renewal failed [`RENEWAL_FAILURES_WARN`] times or more in a row.
    RenewalFailing,
    /// The certificate is in the last sixth of its life and not renewed yet.
    Expiring,
    /// The last call failed (network, 5xx, invalid response...).
    Failing,
    Ok,
}

impl ReaderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Expired => "expired",
            Self::Refusing => "refusing",
            Self::RenewalFailing => "renewal_failing",
            Self::Expiring => "expiring",
            Self::Failing => "failing",
            Self::Ok => "ok",
        }
    }

    /// Whether an operator should act (the doctor warns).
    pub fn needs_attention(self) -> bool {
        !matches!(self, Self::Ok | Self::Failing)
    }
}

/// The health columns of a peer row we call (role "we call it").
#[derive(Debug, Clone, Default, sqlx::FromRow)]
pub struct ReaderRow {
    pub client_cert_pem: Option<String>,
    pub client_cert_received_at: Option<DateTime<Utc>>,
    pub renew_at: Option<DateTime<Utc>>,
    pub renewal_failures: i32,
    pub last_renewed_at: Option<DateTime<Utc>>,
    pub last_success_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
    pub refusing_since: Option<DateTime<Utc>>,
}

/// The columns of [`ReaderRow`], for selects that build it.
pub const READER_COLUMNS: &str = "client_cert_pem, client_cert_received_at, renew_at, renewal_failures, \
     last_renewed_at, last_success_at, last_error, last_error_at, refusing_since";

/// Where this gateway stands with a peer it calls: its client certificate, renewals, calls.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReaderView {
    /// Derived when read: expired, refusing, renewal_failing, expiring, failing or ok.
    pub status: ReaderStatus,
    /// Serial (lowercase hex) of our current client certificate; null if it cannot be read.
    pub cert_serial: Option<String>,
    pub cert_not_before: Option<DateTime<Utc>>,
    pub cert_not_after: Option<DateTime<Utc>>,
    /// When the next renewal (or retry) is due; null until the renewal job has scheduled it.
    pub renew_at: Option<DateTime<Utc>>,
    pub last_renewed_at: Option<DateTime<Utc>>,
    /// Failed renewals in a row.
    pub renewal_failures: i32,
    /// Last successful call or renewal.
    pub last_success_at: Option<DateTime<Utc>>,
    /// Cause of the last failed call or renewal (error code and message).
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
    /// Since when the peer has refused us (401/403); null once a call succeeds.
    pub refusing_since: Option<DateTime<Utc>>,
}

impl ReaderView {
    /// The view of a row, or `None` for a peer we do not call (no client certificate).
    pub fn from_row(row: &ReaderRow, stored_not_after: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Option<Self> {
        let pem = row.client_cert_pem.as_deref()?;
        let facts = cert_facts(pem).ok();
        let not_after = facts.as_ref().map(|f| f.not_after).or(stored_not_after);
        let life = facts.as_ref().map(|f| CertLife::new(f, row.client_cert_received_at));
        let status = if not_after.is_some_and(|t| t <= now) {
            ReaderStatus::Expired
        } else if row.refusing_since.is_some() {
            ReaderStatus::Refusing
        } else if row.renewal_failures >= RENEWAL_FAILURES_WARN {
            ReaderStatus::RenewalFailing
        } else if life.is_some_and(|l| now >= l.expiring_from()) {
            ReaderStatus::Expiring
        } else if row.last_error_at.is_some_and(|e| row.last_success_at.is_none_or(|s| e > s)) {
            ReaderStatus::Failing
        } else {
            ReaderStatus::Ok
        };
        Some(Self {
            status,
            cert_serial: facts.as_ref().map(|f| f.serial.clone()),
            cert_not_before: facts.as_ref().map(|f| f.not_before),
            cert_not_after: not_after,
            renew_at: row.renew_at,
            last_renewed_at: row.last_renewed_at,
            renewal_failures: row.renewal_failures,
            last_success_at: row.last_success_at,
            last_error: row.last_error.clone(),
            last_error_at: row.last_error_at,
            refusing_since: row.refusing_since,
        })
    }

    /// One line for the doctor and the CLI when the status needs attention.
    pub fn problem(&self, now: DateTime<Utc>) -> Option<String> {
        let left = |t: DateTime<Utc>| format!("{} s", (t - now).num_seconds().max(0));
        let cause = self.last_error.as_deref().map(|e| format!(" (last error: {e})")).unwrap_or_default();
        Some(match self.status {
            ReaderStatus::Expired => format!(
                "client certificate expired at {}; the peer must re-enroll us{cause}",
                self.cert_not_after.map_or_else(|| "-".into(), |t| t.to_rfc3339())
            ),
            ReaderStatus::Refusing => format!(
                "refusing us since {}{cause}",
                self.refusing_since.map_or_else(|| "-".into(), |t| t.to_rfc3339())
            ),
            ReaderStatus::RenewalFailing => format!("renewal failed {} times in a row{cause}", self.renewal_failures),
            ReaderStatus::Expiring => format!(
                "client certificate in the last sixth of its life, expires in {}",
                self.cert_not_after.map_or_else(|| "-".into(), left)
            ),
            ReaderStatus::Failing | ReaderStatus::Ok => return None,
        })
    }
}

/// Shortens a cause for `last_error`.
pub fn short_cause(cause: &str) -> String {
    let mut s: String = cause.chars().filter(|c| !c.is_control()).take(CAUSE_MAX_CHARS).collect();
    if cause.chars().count() > CAUSE_MAX_CHARS {
        s.push('…');
    }
    s
}

/// The `peer` label: names are unique case-insensitively, so one peer is one series.
pub fn peer_label(name: &str) -> String {
    name.to_lowercase()
}

/// How one call to a peer ended, as the metrics count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOutcome {
    Ok,
    /// 401 or 403: the peer's guard refused our certificate or grant.
    Refused,
    RateLimited,
    /// Another non-2xx answer.
    HttpError,
    Network,
    InvalidResponse,
    /// Our own side could not call (credentials unusable, peer not active here).
    Misconfigured,
    Inactive,
    /// Failed fast: the circuit is open after repeated outages.
    CircuitOpen,
}

impl CallOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Refused => "refused",
            Self::RateLimited => "rate_limited",
            Self::HttpError => "http_error",
            Self::Network => "network",
            Self::InvalidResponse => "invalid_response",
            Self::Misconfigured => "misconfigured",
            Self::Inactive => "inactive",
            Self::CircuitOpen => "circuit_open",
        }
    }
}

/// When this process last wrote a success per peer, so that a busy reader writes one row a
/// second rather than one per call. Any failure forgets the peer, so the first success after it
/// is written at once (and ends a refusal streak at once).
#[derive(Debug, Clone, Default)]
pub struct SuccessMemo {
    inner: Arc<Mutex<HashMap<String, Instant>>>,
}

impl SuccessMemo {
    const EVERY: Duration = Duration::from_secs(1);

    fn should_write(&self, peer: &str) -> bool {
        let mut map = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match map.get(peer) {
            Some(at) if at.elapsed() < Self::EVERY => false,
            _ => {
                map.insert(peer.to_string(), Instant::now());
                true
            }
        }
    }

    fn forget(&self, peer: &str) {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(peer);
    }
}

/// Counts a call and records its outcome in the peer's row. A write failure is logged, never
/// returned: the caller's answer is the call's, not the bookkeeping's.
pub async fn record_call(pool: &PgPool, memo: &SuccessMemo, name: &str, outcome: CallOutcome, cause: Option<&str>) {
    let label = peer_label(name);
    metrics::counter!(CALLS_METRIC, "peer" => label.clone(), "outcome" => outcome.as_str()).increment(1);
    let result = match outcome {
        // Nothing reached the peer: the row has nothing new to say.
        CallOutcome::CircuitOpen | CallOutcome::Inactive => return,
        CallOutcome::Ok => {
            if !memo.should_write(&label) {
                return;
            }
            store::peers::record_call_success(pool, name).await
        }
        failed => {
            memo.forget(&label);
            let cause = short_cause(cause.unwrap_or(failed.as_str()));
            store::peers::record_call_failure(pool, name, &cause, failed == CallOutcome::Refused).await
        }
    };
    if let Err(e) = result {
        tracing::warn!(peer = %name, error = %e, "recording the outcome of a peer call failed");
    }
}

/// Sets the expiry gauges of every peer client certificate and of the CA from the database.
///
/// # Errors
/// Database errors.
pub async fn refresh_expiry_gauges(pool: &PgPool) -> Result<(), sqlx::Error> {
    for (name, not_after) in store::peers::client_cert_expiries(pool).await? {
        metrics::gauge!(PEER_CERT_EXPIRY_METRIC, "peer" => peer_label(&name)).set(not_after.timestamp() as f64);
    }
    let ca = store::ca::not_after(pool).await?;
    if let Some(ca) = ca {
        metrics::gauge!(CA_EXPIRY_METRIC).set(ca.timestamp() as f64);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    fn facts(not_before: i64, not_after: i64) -> CertFacts {
        CertFacts { serial: "01".into(), not_before: at(not_before), not_after: at(not_after) }
    }

    #[test]
    fn renewal_is_two_thirds_into_the_certificate_life_from_receipt() {
        // A 90 s certificate back-dated by a minute, stored when it was issued (t = 0).
        let life = CertLife::new(&facts(-60, 90), Some(at(0)));
        assert_eq!(life.lifetime(), chrono::Duration::seconds(90));
        assert_eq!(life.renew_point(0.0), at(60));
        assert_eq!(life.renew_point(1.0), at(63));
        assert_eq!(life.renew_point(-1.0), at(57));
        assert_eq!(life.expiring_from(), at(75));
        for _ in 0..100 {
            let p = life.renew_point_jittered();
            assert!(p >= at(57) && p <= at(63), "{p}");
        }
        // Without a receipt time (or one before notBefore), notBefore counts.
        assert_eq!(CertLife::new(&facts(0, 3600), None).renew_point(0.0), at(2400));
        assert_eq!(CertLife::new(&facts(0, 3600), Some(at(-10))).renew_point(0.0), at(2400));
        // Stored after expiry: no lifetime left, due at once.
        let late = CertLife::new(&facts(0, 10), Some(at(20)));
        assert_eq!(late.renew_point(0.0), at(10));
    }

    #[test]
    fn retries_back_off_and_never_pass_expiry() {
        let now = at(0);
        let far = at(86_400);
        let secs = |t: DateTime<Utc>| (t - now).num_milliseconds() as f64 / 1000.0;
        assert!((4.0..=5.0).contains(&secs(retry_at(1, now, far))));
        assert!((8.0..=10.0).contains(&secs(retry_at(2, now, far))));
        assert!((16.0..=20.0).contains(&secs(retry_at(3, now, far))));
        assert!((240.0..=300.0).contains(&secs(retry_at(12, now, far))), "capped at 5 minutes");
        assert!((240.0..=300.0).contains(&secs(retry_at(i32::MAX, now, far))));
        // Close to expiry: the last retry is a second before it, never after.
        assert_eq!(retry_at(5, now, at(30)), at(29));
        assert_eq!(retry_at(5, now, at(0)), now);
    }

    fn row(pem: &str) -> ReaderRow {
        ReaderRow { client_cert_pem: Some(pem.into()), ..Default::default() }
    }

    fn pem_valid(not_before: i64, not_after: i64) -> String {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.not_before = time::OffsetDateTime::from_unix_timestamp(at(not_before).timestamp()).unwrap();
        params.not_after = time::OffsetDateTime::from_unix_timestamp(at(not_after).timestamp()).unwrap();
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x0a, 0xbc]));
        params.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn status_is_derived_most_serious_first() {
        let pem = pem_valid(0, 600);
        let status = |r: &ReaderRow, now: i64| ReaderView::from_row(r, None, at(now)).unwrap().status;
        let fresh = row(&pem);
        assert_eq!(status(&fresh, 10), ReaderStatus::Ok);
        let view = ReaderView::from_row(&fresh, None, at(10)).unwrap();
        assert_eq!(view.cert_serial.as_deref(), Some("0abc"));
        assert_eq!(view.cert_not_after, Some(at(600)));
        assert_eq!(status(&fresh, 500), ReaderStatus::Expiring, "last sixth");
        assert_eq!(status(&fresh, 600), ReaderStatus::Expired);

        let failing = ReaderRow { last_error_at: Some(at(5)), last_error: Some("network".into()), ..row(&pem) };
        assert_eq!(status(&failing, 10), ReaderStatus::Failing);
        let recovered = ReaderRow { last_success_at: Some(at(6)), ..failing.clone() };
        assert_eq!(status(&recovered, 10), ReaderStatus::Ok);
        let renewals = ReaderRow { renewal_failures: RENEWAL_FAILURES_WARN, ..failing.clone() };
        assert_eq!(status(&renewals, 10), ReaderStatus::RenewalFailing);
        let refusing = ReaderRow { refusing_since: Some(at(5)), ..renewals };
        assert_eq!(status(&refusing, 10), ReaderStatus::Refusing);
        assert_eq!(status(&refusing, 700), ReaderStatus::Expired, "expiry wins");
        let problem = ReaderView::from_row(&refusing, None, at(10)).unwrap().problem(at(10)).unwrap();
        assert!(problem.contains("refusing us since") && problem.contains("network"), "{problem}");

        assert!(ReaderView::from_row(&ReaderRow::default(), None, at(0)).is_none(), "a peer we do not call");
    }

    #[test]
    fn causes_are_short_and_single_line() {
        let long = format!("a\nb{}", "x".repeat(1000));
        let s = short_cause(&long);
        assert!(!s.contains('\n'));
        assert_eq!(s.chars().count(), CAUSE_MAX_CHARS + 1);
    }
}
