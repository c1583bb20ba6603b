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
}

impl BackgroundWork {
    /// Reads the `TESSERA_QUEUE_*` settings, reconciles this node's leftovers and starts workers.
    ///
    /// # Errors
    /// A malformed setting (naming its variable) or a database error.
    pub async fn start(state: &AppState) -> anyhow::Result<Self> {
        let settings = QueueSettings::from_env()?;
        let node_id = super::node_id_for(&state.config.data_dir);
        let pool = &state.pool;
        let mut registry = HandlerRegistry::new();
        diag::register(&mut registry, pool.clone());
        schedule::register(&mut registry, pool.clone(), state.sealing.clone(), state.config.federation.cert_ttl);
        let queues = QueueRuntime::start(pool, &node_id, &[schedule::QUEUE, diag::QUEUE], registry, &settings).await?;
        let outbox = OutboxRuntime::start(pool, state.sealing.clone(), &node_id, &settings).await?;
        let (stop_scheduler, stop_rx) = watch::channel(false);
        let scheduler = tokio::spawn(schedule::run_scheduler(pool.clone(), settings.schedule_tick, stop_rx));
        tracing::info!(node_id = %node_id, "queue workers and outbox drainer started");
        Ok(Self { queues, outbox, scheduler, stop_scheduler })
    }

    /// Graceful stop: no new claims; running jobs finish or are released; deliveries in flight end.
    pub async fn stop(self) {
        let _ = self.stop_scheduler.send(true);
        let _ = self.scheduler.await;
        tokio::join!(self.queues.shutdown(), self.outbox.shutdown());
    }
}
