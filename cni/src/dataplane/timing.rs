//! Where a request's time goes: ADD and DEL lap their steps and, when the `evio_cni::timing`
//! target is enabled at debug level (`EVIO_LOG=info,evio_cni::timing=debug`), log them as one
//! event per request. `evio-bench pods --breakdown` turns these into per-step medians.

use std::time::{Duration, Instant};

/// The `tracing` target of the per-request step timings.
pub const TARGET: &str = "evio_cni::timing";

/// Laps of one request (or of one branch of it that runs concurrently with others).
pub(super) struct Laps {
    last: Instant,
    laps: Vec<(&'static str, Duration)>,
}

impl Laps {
    pub(super) fn start() -> Self {
        Self {
            last: Instant::now(),
            laps: Vec::new(),
        }
    }

    /// Records the time since the previous lap (or the start) as step `name`.
    pub(super) fn lap(&mut self, name: &'static str) {
        let now = Instant::now();
        self.laps.push((name, now - self.last));
        self.last = now;
    }

    /// Appends the laps of a branch that ran concurrently with this one's last step.
    pub(super) fn extend(&mut self, branch: Laps) {
        self.laps.extend(branch.laps);
    }

    /// Logs the steps of a finished request: `steps` reads `name=ms name=ms ...` in the order
    /// they were lapped; the steps of concurrent branches are named `|name` and follow the step
    /// they ran during.
    pub(super) fn log(&self, verb: &str, network: &str, container: &str, started: Instant) {
        if !tracing::enabled!(target: TARGET, tracing::Level::DEBUG) {
            return;
        }
        let steps = self
            .laps
            .iter()
            .map(|(name, took)| format!("{name}={:.3}", took.as_secs_f64() * 1000.0))
            .collect::<Vec<_>>()
            .join(" ");
        tracing::debug!(
            target: TARGET,
            verb,
            network,
            container,
            total_ms = started.elapsed().as_secs_f64() * 1000.0,
            steps,
            "steps"
        );
    }
}
