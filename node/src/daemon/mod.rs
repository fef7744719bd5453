//! The daemon's composition: what `evio-node run` and `dev` start besides the replica, and how
//! it all stops.
//!
//! - [`Tasks`]: every background task of the daemon, tracked together and stopped by one
//!   cancellation token (a `TaskTracker` and a `CancellationToken` from tokio-util), with a
//!   bounded wait at shutdown;
//! - [`leader`]: the one loop that runs a task only while this member leads (the etcd mirror
//!   and the Node GC);
//! - [`backoff`]: the one retry delay every loop uses.

pub mod backoff;
pub mod leader;

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The daemon's background tasks and the token that stops them.
#[derive(Default)]
pub struct Tasks {
    tracker: TaskTracker,
    stop: CancellationToken,
}

impl Tasks {
    pub fn new() -> Self {
        Self::default()
    }

    /// The token every task watches; cancelled by [`Tasks::shutdown`].
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Spawns `task`, which must return soon after the stop token is cancelled.
    pub fn spawn<F>(&self, name: &'static str, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(async move {
            task.await;
            tracing::debug!(task = name, "task ended");
        });
    }

    /// Cancels the token and waits up to `grace` for every task to return; the ones still
    /// running then are dropped with the runtime.
    pub async fn shutdown(self, grace: Duration) {
        self.stop.cancel();
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                still_running = self.tracker.len(),
                "background tasks did not stop within {grace:?}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[tokio::test]
    async fn shutdown_cancels_and_waits_for_every_task() {
        let tasks = Tasks::new();
        let finished = Arc::new(AtomicUsize::new(0));
        for _ in 0..3 {
            let (stop, finished) = (tasks.stop_token(), finished.clone());
            tasks.spawn("test", async move {
                stop.cancelled().await;
                finished.fetch_add(1, Ordering::SeqCst);
            });
        }
        tasks.shutdown(Duration::from_secs(10)).await;
        assert_eq!(finished.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_task_ignoring_the_token_does_not_hold_shutdown_past_the_grace() {
        let tasks = Tasks::new();
        tasks.spawn("stuck", std::future::pending());
        let stop = tasks.stop_token();
        let returned = tokio::time::timeout(
            Duration::from_secs(30),
            tasks.shutdown(Duration::from_millis(50)),
        )
        .await;
        assert!(returned.is_ok() && stop.is_cancelled());
    }
}
