//! The transactional outbox and its drain worker (DESIGN §8).
//!
//! Design choices:
//! - [`emit_event`] writes, in the caller's transaction, one `outbox.deliveries` row per webhook
//!   endpoint whose filter matches (fan-out at write time, in the SQL function `outbox.emit`,
//!   which triggers use too: `grant.revoked` is raised by a trigger on the grant's status, so
//!   every path that revokes a grant, including disabling its subject user, emits it): each delivery then has its own
//!   state, attempts and backoff, and a dead receiver cannot hold up the others. Without a
//!   matching endpoint nothing is written. Every row of one event shares the event id, which is
//!   the `Idempotency-Key` of each delivery, so a retry after a crash is recognisable at the
//!   receiver.
//! - Lifecycle `pending → inflight → done`; a transient failure (network, timeout, 408, 429,
//!   5xx) goes back to `pending` with exponential backoff and jitter; a permanent one (any other
//!   non-2xx) or the attempt cap makes the row `dead`. Admins list dead rows and replay them.
//! - **Order per destination**: the drainer only ever claims the *head* of an endpoint's line
//!   (its oldest row that is `pending` or `inflight`), and only when that head is due; a later
//!   event waits while an earlier one is pending or in flight. `dead` rows leave the line. The
//!   claim is a conditional update (no `skip locked`: skipping a locked head would let the next
//!   row overtake it), so two replicas racing for a head cannot both win.
//! - **Wake-up**: an insert trigger notifies `tessera_outbox` at commit; polling is the fallback.
//! - **Durability of bookkeeping**: the rows themselves commit with the caller's transaction
//!   (durable). The drainer's own state changes (`inflight`, `done`, backoff) use
//!   `synchronous_commit = off`: losing one in a database crash only means a delivery is sent
//!   again, which the idempotency key already covers, and it saves an fsync per delivery.
//! - **Crash recovery**: `inflight` rows carry a lease owned by `<node id>/outbox`; a restarted
//!   gateway takes back its own at once and anyone takes back an expired lease.
//! - **Targets**: every delivery resolves and checks its URL's host first and connects only to
//!   the addresses it checked ([`targets`]); a refused target fails like an unreachable receiver
//!   (retried, then dead) and is logged with the cause, without any connection being opened.

pub mod routes;
pub mod targets;
pub mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::queue::settings::QueueSettings;
use crate::sealing::SealingKey;
use targets::{PinnedClients, WebhookTargets};

/// Channel the insert trigger notifies.
pub const NOTIFY_CHANNEL: &str = "tessera_outbox";

/// Writes the outbox rows for `event` in the caller's transaction and returns the event id.
///
/// # Errors
/// Database errors.
pub async fn emit_event<'e, E: sqlx::PgExecutor<'e>>(
    executor: E,
    event: &str,
    payload: &serde_json::Value,
) -> Result<Uuid, sqlx::Error> {
    // `outbox.emit` (a SQL function, so that triggers emit exactly the same way).
    sqlx::query_scalar!(r#"select outbox.emit($1, $2) as "id!""#, event, payload).fetch_one(executor).await
}

/// Like [`emit_event`], for call sites with no transaction to join whose own operation must not
/// fail because of the outbox (a failed enrollment): a write error is logged, not returned.
pub async fn emit_event_logged(pool: &PgPool, event: &str, payload: &serde_json::Value) {
    if let Err(e) = emit_event(pool, event, payload).await {
        tracing::warn!(event, error = %e, "writing an outbox event failed");
    }
}

/// A delivery as listed in the dead letters.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryView {
    pub id: Uuid,
    pub event_id: Uuid,
    pub endpoint_id: Uuid,
    /// The endpoint URL with any password masked.
    pub url: String,
    pub event: String,
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
    pub status: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The delivery `id`, or (with no id) the `limit` most recent dead deliveries; URLs redacted.
async fn deliveries(
    db: impl sqlx::PgExecutor<'_>,
    id: Option<Uuid>,
    limit: i64,
) -> Result<Vec<DeliveryView>, sqlx::Error> {
    // One statement for both reads, so the listed shape is written once.
    let mut rows = sqlx::query_as!(
        DeliveryView,
        "select d.id, d.event_id, d.endpoint_id, e.url, d.event, d.payload, d.status,
                d.attempts, d.last_error, d.created_at, d.updated_at
           from outbox.deliveries d join outbox.webhook_endpoints e on e.id = d.endpoint_id
          where ($1::uuid is null and d.status = 'dead') or d.id = $1
          order by d.updated_at desc, d.id
          limit $2",
        id,
        limit
    )
    .fetch_all(db)
    .await?;
    for v in &mut rows {
        v.url = crate::config::redact_url(&v.url);
    }
    Ok(rows)
}

/// Dead deliveries, most recent first.
///
/// # Errors
/// Database errors.
pub async fn dead_letters(db: impl sqlx::PgExecutor<'_>, limit: i64) -> Result<Vec<DeliveryView>, sqlx::Error> {
    deliveries(db, None, limit).await
}

/// Puts a dead delivery back to `pending` with a fresh attempt count; `None` unless it was dead.
///
/// # Errors
/// Database errors.
pub async fn replay(db: &PgPool, id: Uuid) -> Result<Option<DeliveryView>, sqlx::Error> {
    let done = sqlx::query!(
        "with up as (
            update outbox.deliveries set status = 'pending', attempts = 0, next_attempt_at = now(),
                   last_error = null, updated_at = now()
             where id = $1 and status = 'dead' returning id
         )
         select pg_notify($2, '') from up",
        id,
        NOTIFY_CHANNEL
    )
    .execute(db)
    .await?;
    if done.rows_affected() == 0 {
        return Ok(None);
    }
    Ok(deliveries(db, Some(id), 1).await?.pop())
}

/// Whether a delivery exists at all (to tell 404 from 409 on replay).
///
/// # Errors
/// Database errors.
pub async fn delivery_status(db: &PgPool, id: Uuid) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar!("select status from outbox.deliveries where id = $1", id).fetch_optional(db).await
}

/// A claimed head of an endpoint's line.
struct Head {
    id: Uuid,
    event_id: Uuid,
    endpoint_id: Uuid,
    event: String,
    payload: serde_json::Value,
    attempts: i32,
    created_at: DateTime<Utc>,
    url: String,
    secret_sealed: String,
}

enum Verdict {
    Delivered,
    Transient(String),
    Permanent(String),
}

/// The running drain worker.
pub struct OutboxRuntime {
    shutdown: watch::Sender<bool>,
    drainer: JoinHandle<()>,
    listener: JoinHandle<()>,
}

struct Drainer {
    /// Connections with `synchronous_commit = off` for the drainer's bookkeeping.
    pool: PgPool,
    sealing: SealingKey,
    owner: String,
    settings: QueueSettings,
    targets: WebhookTargets,
    /// Clients pinned to the addresses checked for each host.
    http: PinnedClients,
    wake: Arc<Notify>,
}

impl OutboxRuntime {
    /// Takes back this node's in-flight deliveries, then starts the drainer and its listener.
    ///
    /// # Errors
    /// Database errors during reconciliation.
    pub async fn start(
        pool: &PgPool,
        sealing: SealingKey,
        node_id: &str,
        settings: &QueueSettings,
        targets: WebhookTargets,
    ) -> anyhow::Result<Self> {
        let opts = (*pool.connect_options()).clone().options([("synchronous_commit", "off")]);
        let fast = crate::store::pool_options(2).connect_lazy_with(opts);
        let owner = format!("{node_id}/outbox");
        let back = sqlx::query!(
            "update outbox.deliveries set status = 'pending', lease_owner = null, lease_expires_at = null,
                    next_attempt_at = now(), updated_at = now()
              where status = 'inflight' and lease_owner = $1",
            owner
        )
        .execute(pool)
        .await?
        .rows_affected();
        if back > 0 {
            tracing::info!(deliveries = back, "returned deliveries left in flight by this node's previous run");
        }
        let http = PinnedClients::new(settings.outbox_timeout);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let wake = Arc::new(Notify::new());
        let drainer =
            Drainer { pool: fast, sealing, owner, settings: settings.clone(), targets, http, wake: wake.clone() };
        Ok(Self {
            shutdown,
            drainer: tokio::spawn(drainer.run(shutdown_rx.clone())),
            listener: tokio::spawn(listen(pool.clone(), wake, shutdown_rx)),
        })
    }

    /// Stops after the deliveries in flight finish (each is bounded by the request timeout).
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.drainer.await;
        self.listener.abort();
    }
}

async fn listen(pool: PgPool, wake: Arc<Notify>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let mut listener = match sqlx::postgres::PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "outbox listener cannot connect; polling meanwhile");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if listener.listen(NOTIFY_CHANNEL).await.is_err() {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        wake.notify_one();
        loop {
            tokio::select! {
                n = listener.recv() => match n {
                    Ok(_) => wake.notify_one(),
                    Err(_) => break,
                },
                _ = shutdown.changed() => return,
            }
        }
    }
}

impl Drainer {
    /// The drain loop. Deliveries run concurrently, one per endpoint (an endpoint whose head is
    /// in flight is not claimed again, which keeps its order); results are recorded in batches of
    /// whatever has finished, and the loop claims again without waiting for slow receivers, so
    /// one receiver that hangs until the timeout holds up only its own line.
    async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let this = Arc::new(self);
        let mut inflight: tokio::task::JoinSet<(Uuid, i32, Verdict)> = tokio::task::JoinSet::new();
        loop {
            if *shutdown.borrow() {
                break;
            }
            let heads = match this.claim().await {
                Ok(h) => h,
                Err(e) => {
                    tracing::warn!(error = %e, "claiming outbox deliveries failed");
                    Vec::new()
                }
            };
            for head in heads {
                let this = this.clone();
                inflight.spawn(async move {
                    let verdict = this.deliver(&head).await;
                    (head.id, head.attempts, verdict)
                });
            }
            // Wait for a result, a wake-up or the poll interval; then record every result that
            // is ready and claim again.
            let mut results = Vec::new();
            tokio::select! {
                Some(r) = inflight.join_next(), if !inflight.is_empty() => results.extend(r.ok()),
                () = this.wake.notified() => {}
                () = tokio::time::sleep(this.settings.poll_interval) => {}
                _ = shutdown.changed() => {}
            }
            while let Some(r) = inflight.try_join_next() {
                results.extend(r.ok());
            }
            this.record_with_retries(&results).await;
        }
        // Shutdown: give the deliveries in flight their timeout, then record what finished; the
        // leases of the rest expire and those deliveries are sent again (at least once).
        let deadline = tokio::time::Instant::now() + this.settings.outbox_timeout + Duration::from_secs(1);
        let mut results = Vec::new();
        while let Ok(Some(r)) = tokio::time::timeout_at(deadline, inflight.join_next()).await {
            results.extend(r.ok());
        }
        this.record_with_retries(&results).await;
    }

    async fn record_with_retries(&self, results: &[(Uuid, i32, Verdict)]) {
        if results.is_empty() {
            return;
        }
        let mut tries = 0u64;
        while let Err(e) = self.record(results).await {
            tries += 1;
            tracing::warn!(error = %e, "recording delivery results failed; retrying");
            if tries > 20 {
                return; // the leases expire and the deliveries are sent again
            }
            tokio::time::sleep(Duration::from_millis(100 * tries)).await;
        }
    }

    /// Claims the due head of each endpoint's line (at most 64 endpoints per round, longest
    /// waiting first, so no endpoint starves behind the first 64).
    async fn claim(&self) -> Result<Vec<Head>, sqlx::Error> {
        // The lease outlives the request timeout, so a slow receiver is not sent a duplicate.
        let lease =
            chrono::Duration::from_std(self.settings.outbox_timeout * 2 + Duration::from_secs(5)).unwrap_or_default();
        sqlx::query_as!(
            Head,
            r#"with heads as (
                select h.id, e.url, e.secret_sealed
                  from outbox.webhook_endpoints e
                  cross join lateral (
                      select d.id, d.status, d.next_attempt_at, d.lease_expires_at
                        from outbox.deliveries d
                       where d.endpoint_id = e.id and d.status in ('pending', 'inflight')
                       order by d.seq limit 1
                  ) h
                 where (h.status = 'pending' and h.next_attempt_at <= now())
                    or (h.status = 'inflight' and h.lease_expires_at < now())
                 order by h.next_attempt_at
                 limit 64
             )
             update outbox.deliveries d
                set status = 'inflight', attempts = d.attempts + 1, lease_owner = $1,
                    lease_expires_at = now() + $2, updated_at = now()
               from heads
              where d.id = heads.id
                and (d.status = 'pending' or (d.status = 'inflight' and d.lease_expires_at < now()))
          returning d.id, d.event_id, d.endpoint_id, d.event, d.payload, d.attempts, d.created_at,
                    heads.url as "url!", heads.secret_sealed as "secret_sealed!""#,
            self.owner,
            // A chrono duration, which sqlx encodes as an interval; the check expects its own type.
            lease as _
        )
        .fetch_all(&self.pool)
        .await
    }

    async fn deliver(&self, head: &Head) -> Verdict {
        let started = std::time::Instant::now();
        let verdict = self.deliver_once(head).await;
        let outcome = match verdict {
            Verdict::Delivered => "delivered",
            Verdict::Transient(_) => "transient",
            Verdict::Permanent(_) => "permanent",
        };
        metrics::histogram!(crate::http::metrics::DELIVERY_SECONDS, "outcome" => outcome)
            .record(started.elapsed().as_secs_f64());
        verdict
    }

    async fn deliver_once(&self, head: &Head) -> Verdict {
        let secret = match self.sealing.open(&webhooks::secret_context(head.endpoint_id), &head.secret_sealed) {
            Ok(s) => s,
            Err(e) => return Verdict::Permanent(format!("cannot open the endpoint secret: {e}")),
        };
        let Ok(url) = reqwest::Url::parse(&head.url) else {
            return Verdict::Permanent("the stored URL does not parse".into());
        };
        // Resolve once and check every address; the client below can reach only those. The lookup
        // and the request are each bounded by the timeout, so both together stay within the lease.
        let addrs = match self.targets.resolve(&url, self.settings.outbox_timeout).await {
            Ok(addrs) => addrs,
            Err(e) => {
                tracing::warn!(delivery_id = %head.id, endpoint_id = %head.endpoint_id, cause = %e,
                    "webhook delivery not sent: its target was refused or did not resolve");
                let what = if e.is_refusal() { "target refused" } else { "request failed" };
                return Verdict::Transient(format!("{what}: {e}"));
            }
        };
        let client = match self.http.for_target(&url, &addrs) {
            Ok(c) => c,
            Err(e) => return Verdict::Transient(format!("cannot build the HTTP client: {}", e.without_url())),
        };
        let body = webhooks::delivery_body(head.event_id, &head.event, head.created_at, &head.payload);
        let t = Utc::now().timestamp();
        let request = client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(webhooks::SIGNATURE_HEADER, webhooks::signature_header(&secret, t, &body))
            .header("Idempotency-Key", head.event_id.to_string())
            .header("Tessera-Event", &head.event)
            .body(body);
        match request.send().await {
            Ok(resp) => {
                let status = resp.status();
                if status.is_success() {
                    Verdict::Delivered
                } else if status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429 {
                    Verdict::Transient(format!("HTTP {}", status.as_u16()))
                } else {
                    Verdict::Permanent(format!("HTTP {}", status.as_u16()))
                }
            }
            // Without the URL: it may carry credentials.
            Err(e) => Verdict::Transient(format!("request failed: {}", e.without_url())),
        }
    }

    async fn record(&self, results: &[(Uuid, i32, Verdict)]) -> Result<(), sqlx::Error> {
        let mut done = Vec::new();
        let (mut ids, mut statuses, mut delays, mut errors) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (id, attempts, verdict) in results {
            match verdict {
                Verdict::Delivered => done.push(*id),
                Verdict::Transient(e) | Verdict::Permanent(e) => {
                    let dead =
                        matches!(verdict, Verdict::Permanent(_)) || *attempts >= self.settings.outbox_max_attempts;
                    ids.push(*id);
                    statuses.push(if dead { "dead" } else { "pending" });
                    delays.push(if dead {
                        0
                    } else {
                        self.settings.outbox_backoff.delay(*attempts).as_millis() as i64
                    });
                    errors.push(e.chars().take(1000).collect::<String>());
                }
            }
        }
        if !done.is_empty() {
            sqlx::query!(
                "update outbox.deliveries
                    set status = 'done', delivered_at = now(), updated_at = now(), last_error = null,
                        lease_owner = null, lease_expires_at = null
                  where id = any($1) and lease_owner = $2 and status = 'inflight'",
                &done,
                self.owner
            )
            .execute(&self.pool)
            .await?;
        }
        if !ids.is_empty() {
            sqlx::query!(
                "update outbox.deliveries d
                    set status = f.status, last_error = f.err, updated_at = now(),
                        next_attempt_at = now() + f.delay_ms * interval '1 millisecond',
                        lease_owner = null, lease_expires_at = null
                   from unnest($1::uuid[], $2::text[], $3::int8[], $4::text[]) as f(id, status, delay_ms, err)
                  where d.id = f.id and d.lease_owner = $5 and d.status = 'inflight'",
                &ids,
                &statuses as &[&str],
                &delays,
                &errors,
                self.owner
            )
            .execute(&self.pool)
            .await?;
        }
        Ok(())
    }
}

/// Deletes delivered webhooks past retention (every [`crate::queue::schedule::CLEANUP_PERIOD`]).
pub const OUTBOX_CLEANUP: &str = "outbox.cleanup";

/// The outbox's periodic job, registered with the queue by the application.
pub fn register_jobs(registry: &mut crate::queue::Registry, pool: &sqlx::PgPool) {
    let pool = pool.clone();
    registry.periodic(OUTBOX_CLEANUP, crate::queue::schedule::CLEANUP_PERIOD, move |_job| {
        let pool = pool.clone();
        async move { cleanup_deliveries(&pool).await.map_err(crate::queue::JobError::retryable) }
    });
}

/// Deletes delivered webhooks older than [`crate::queue::schedule::RETENTION_DAYS`] (kept for
/// inspection until then).
///
/// # Errors
/// Database errors.
pub async fn cleanup_deliveries(pool: &sqlx::PgPool) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "delete from outbox.deliveries where status = 'done' and delivered_at < now() - make_interval(days => $1)",
        crate::queue::schedule::RETENTION_DAYS
    )
    .execute(pool)
    .await?;
    Ok(())
}
