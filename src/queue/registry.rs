//! How the queue's users plug in: they register their job handlers and periodic jobs here, and
//! the application starts the lot ([`Registry::start`]).
//!
//! The queue is generic: it knows how to claim, run, retry and schedule jobs, not what the jobs
//! do. Each owner (federation's certificate renewal, the audit log's retention, the admin plane's
//! session clean-up, ...) registers its own work from the application level, so no module of
//! the queue imports a domain and a new periodic job needs no change here.

use std::future::Future;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::schedule;
use super::settings::QueueSettings;
use super::worker::{HandlerRegistry, Job, JobError, QueueRuntime};

/// A periodic job: one job of `kind` per `period` slot, fleet-wide (see [`schedule`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Periodic {
    pub kind: String,
    pub period: Duration,
}

/// Handlers, the queues they run on, and the periodic jobs.
#[derive(Default)]
pub struct Registry {
    handlers: HandlerRegistry,
    queues: Vec<String>,
    periodic: Vec<Periodic>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs jobs of `kind` with `f`; this process works `queue`.
    pub fn handler<F, Fut>(&mut self, queue: &str, kind: &str, f: F) -> &mut Self
    where
        F: Fn(Job) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), JobError>> + Send + 'static,
    {
        if !self.queues.iter().any(|q| q == queue) {
            self.queues.push(queue.to_string());
        }
        self.handlers.register(kind, f);
        self
    }

    /// Runs `f` once per `period` on the maintenance queue ([`schedule::QUEUE`]), fleet-wide.
    pub fn periodic<F, Fut>(&mut self, kind: &str, period: Duration, f: F) -> &mut Self
    where
        F: Fn(Job) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), JobError>> + Send + 'static,
    {
        self.periodic.push(Periodic { kind: kind.to_string(), period });
        self.handler(schedule::QUEUE, kind, f)
    }

    /// The registered periodic jobs, in registration order.
    pub fn periodic_jobs(&self) -> &[Periodic] {
        &self.periodic
    }

    /// The queues this process works, in registration order.
    pub fn queues(&self) -> &[String] {
        &self.queues
    }

    /// Reconciles this node's leftovers, starts the workers of every registered queue and the
    /// scheduler of the periodic jobs.
    ///
    /// # Errors
    /// Database errors during reconciliation.
    pub async fn start(self, pool: &PgPool, node_id: &str, settings: &QueueSettings) -> anyhow::Result<Running> {
        let queues: Vec<&str> = self.queues.iter().map(String::as_str).collect();
        let runtime = QueueRuntime::start(pool, node_id, &queues, self.handlers, settings).await?;
        let (stop_scheduler, stop_rx) = watch::channel(false);
        let scheduler =
            tokio::spawn(schedule::run_scheduler(pool.clone(), settings.schedule_tick, self.periodic, stop_rx));
        Ok(Running { runtime, scheduler, stop_scheduler })
    }
}

/// The workers and the scheduler of a process, stopped together.
pub struct Running {
    runtime: QueueRuntime,
    scheduler: JoinHandle<()>,
    stop_scheduler: watch::Sender<bool>,
}

impl Running {
    /// Stops scheduling, then stops claiming and waits for running jobs (see [`QueueRuntime::shutdown`]).
    pub async fn shutdown(self) {
        let _ = self.stop_scheduler.send(true);
        let _ = self.scheduler.await;
        self.runtime.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periodic_jobs_run_on_the_maintenance_queue_and_each_queue_is_worked_once() {
        let mut registry = Registry::new();
        registry.periodic("a.cleanup", Duration::from_secs(300), |_job| async { Ok(()) });
        registry.handler("diag", "diag.probe", |_job| async { Ok(()) });
        registry.periodic("b.renew", Duration::from_secs(10), |_job| async { Ok(()) });
        assert_eq!(registry.queues(), [schedule::QUEUE, "diag"]);
        let kinds: Vec<&str> = registry.periodic_jobs().iter().map(|p| p.kind.as_str()).collect();
        assert_eq!(kinds, ["a.cleanup", "b.renew"]);
    }
}
