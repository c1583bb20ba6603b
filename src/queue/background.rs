//! The background work of `tessera serve`: queue workers (maintenance and diagnostic queues),
//! the periodic-job scheduler and the outbox drainer, started and stopped together.

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::settings::QueueSettings;
use super::{HandlerRegistry, QueueRuntime, diag, schedule};
use crate::app::AppState;
use crate::outbox::OutboxRuntime;

/// Everything `serve` runs besides the HTTP listener.
pub struct BackgroundWork {
    queues: QueueRuntime,
    outbox: OutboxRuntime,
    scheduler: JoinHandle<()>,
    stop_scheduler: watch::Sender<bool>,
    /// Holds the session advisory lock on the node id for the life of the process.
    node_lock: sqlx::PgConnection,
}

/// Makes sure no other live process uses `node_id`; returns the id to use and the connection
/// that holds its lock.
///
/// Start-up hands back every job and delivery leased under this process's node id, which is
/// right for the previous life of this gateway and wrong for a live sibling that happens to
/// share it (two replicas with the same host name and data dir path, for example containers
/// with a pinned `hostname:`). A session advisory lock on the id, held for the life of the
/// process, tells them apart: when it is taken, this process runs under a fresh random id
/// instead (and so reconciles nothing of the sibling's).
///
/// # Errors
/// Database errors.
pub async fn claim_node_id(pool: &sqlx::PgPool, node_id: String) -> anyhow::Result<(String, sqlx::PgConnection)> {
    use sqlx::Connection;
    let mut conn = pool.acquire().await?.detach();
    let lock = "select pg_try_advisory_lock(hashtextextended('tessera-node:' || $1, 0))";
    if sqlx::query_scalar::<_, bool>(lock).bind(&node_id).fetch_one(&mut conn).await? {
        return Ok((node_id, conn));
    }
    let fresh = format!("{node_id}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    tracing::warn!(node_id = %node_id, fresh = %fresh, "another live gateway uses this node id; running under a fresh one");
    if !sqlx::query_scalar::<_, bool>(lock).bind(&fresh).fetch_one(&mut conn).await? {
        conn.close().await.ok();
        anyhow::bail!("cannot take a node id lock");
    }
    Ok((fresh, conn))
}

impl BackgroundWork {
    /// Reads the `TESSERA_QUEUE_*` settings, reconciles this node's leftovers and starts workers.
    ///
    /// # Errors
    /// A malformed setting (naming its variable) or a database error.
    pub async fn start(state: &AppState) -> anyhow::Result<Self> {
        let settings = QueueSettings::from_env()?;
        let pool = &state.pool;
        let (node_id, node_lock) = claim_node_id(pool, super::node_id_for(&state.config.data_dir)).await?;
        let mut registry = HandlerRegistry::new();
        diag::register(&mut registry, pool.clone());
        crate::federation::embeddings::register(&mut registry, pool.clone(), state.config.search.clone());
        schedule::register(&mut registry, pool.clone(), state.sealing.clone(), state.config.audit_retention_days);
        let queues = QueueRuntime::start(pool, &node_id, &[schedule::QUEUE, diag::QUEUE], registry, &settings).await?;
        let targets = crate::outbox::targets::WebhookTargets::from_config(&state.config);
        let outbox = OutboxRuntime::start(pool, state.sealing.clone(), &node_id, &settings, targets).await?;
        let (stop_scheduler, stop_rx) = watch::channel(false);
        let scheduler = tokio::spawn(schedule::run_scheduler(pool.clone(), settings.schedule_tick, stop_rx));
        tracing::info!(node_id = %node_id, "queue workers and outbox drainer started");
        Ok(Self { queues, outbox, scheduler, stop_scheduler, node_lock })
    }

    /// Graceful stop: no new claims; running jobs finish or are released; deliveries in flight end.
    pub async fn stop(self) {
        let _ = self.stop_scheduler.send(true);
        let _ = self.scheduler.await;
        tokio::join!(self.queues.shutdown(), self.outbox.shutdown());
        use sqlx::Connection;
        let _ = self.node_lock.close().await;
    }
}
