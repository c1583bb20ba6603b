//! The background work of `tessera serve`, started and stopped with the application: the queue's
//! workers and scheduler, with every owner's jobs registered here, and the outbox drainer.
//!
//! This is the one place that knows which domains have background work: the queue stays generic
//! (owners register with [`Registry`]), and each owner keeps its job's logic.

use crate::app::AppState;
use crate::outbox::OutboxRuntime;
use crate::queue::{Registry, Running, diag, schedule};

/// Everything `serve` runs besides the HTTP listener.
pub struct BackgroundWork {
    queues: Running,
    outbox: OutboxRuntime,
    /// Holds the session advisory lock on the node id for the life of the process.
    node_lock: sqlx::PgConnection,
}

/// Every job handler and periodic job of the gateway, registered by their owners.
pub fn registry(state: &AppState) -> Registry {
    let pool = &state.pool;
    let mut registry = Registry::new();
    schedule::register(&mut registry, pool.clone());
    diag::register(&mut registry, pool.clone());
    crate::federation::register_jobs(&mut registry, pool, &state.sealing, &state.config);
    crate::admin::register_jobs(&mut registry, pool);
    crate::outbox::register_jobs(&mut registry, pool);
    registry
}

impl BackgroundWork {
    /// Reconciles this node's leftovers and starts the queue workers, the scheduler and the
    /// outbox drainer, tuned by [`crate::config::Config::queue`].
    ///
    /// # Errors
    /// A database error.
    pub async fn start(state: &AppState) -> anyhow::Result<Self> {
        let settings = &state.config.queue;
        let pool = &state.pool;
        let (node_id, node_lock) =
            crate::queue::claim_node_id(pool, crate::queue::node_id_for(&state.config.data_dir)).await?;
        let queues = registry(state).start(pool, &node_id, settings).await?;
        let targets = crate::outbox::targets::WebhookTargets::from_config(&state.config);
        let outbox = OutboxRuntime::start(pool, state.sealing.clone(), &node_id, settings, targets).await?;
        tracing::info!(node_id = %node_id, "queue workers and outbox drainer started");
        Ok(Self { queues, outbox, node_lock })
    }

    /// Graceful stop: no new claims; running jobs finish or are released; deliveries in flight end.
    pub async fn stop(self) {
        tokio::join!(self.queues.shutdown(), self.outbox.shutdown());
        use sqlx::Connection;
        let _ = self.node_lock.close().await;
    }
}
