//! The Raft leader returns the leases of deleted Nodes to the pool.
//!
//! Only a Node that is *gone from the API* counts: a Node that stops answering or goes
//! NotReady still exists and keeps its lease, however long. A lease is released once its
//! Node has been absent for longer than the grace period, and only after a direct GET of the
//! Node confirms 404 (a stale watch never releases a re-created Node). Timers live in the
//! leader's memory only: a new leader starts them afresh, which can only delay a release.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use evio_raft::Replica;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};

use tokio_util::sync::CancellationToken;

use super::{KubeStatus, RETRY};
use crate::daemon::backoff::{sleep_or_stop, Backoff};
use crate::daemon::leader::while_leader;

/// Whether a lease owner is a real node name (not a reserved owner such as `legacy:...`).
pub fn is_node_owner(owner: &str) -> bool {
    !owner.contains(':') && evio_raft::validate_node_name(owner).is_ok()
}

/// Grace bookkeeping with the clock passed in: which lease owners have been absent from
/// the Node list for longer than the grace.
#[derive(Debug)]
pub struct GraceBook {
    grace: Duration,
    /// Nodes in the API, once a full list has been seen.
    present: Option<HashSet<String>>,
    /// When each absent owner was first seen absent (deleted, or missing from a list).
    gone_since: HashMap<String, Instant>,
}

impl GraceBook {
    pub fn new(grace: Duration) -> Self {
        Self {
            grace,
            present: None,
            gone_since: HashMap::new(),
        }
    }

    /// A full Node list: replaces what was known.
    pub fn listed<I: IntoIterator<Item = String>>(&mut self, names: I) {
        let present: HashSet<String> = names.into_iter().collect();
        self.gone_since.retain(|name, _| !present.contains(name));
        self.present = Some(present);
    }

    /// A Node was added or modified: it exists.
    pub fn seen(&mut self, name: &str) {
        self.gone_since.remove(name);
        if let Some(present) = &mut self.present {
            present.insert(name.to_string());
        }
    }

    /// A Node was deleted at `now`.
    pub fn deleted(&mut self, name: &str, now: Instant) {
        if let Some(present) = &mut self.present {
            present.remove(name);
        }
        self.gone_since.entry(name.to_string()).or_insert(now);
    }

    /// The owners in `owners` whose Node has been gone longer than the grace at `now`, with
    /// how long. Starts the timer of owners first seen absent now; forgets owners without a
    /// lease (a later lease starts afresh). Nothing is due before the first full list.
    pub fn due<'a, I: IntoIterator<Item = &'a str>>(
        &mut self,
        owners: I,
        now: Instant,
    ) -> Vec<(String, Duration)> {
        let Some(present) = &self.present else {
            return Vec::new();
        };
        let owners: HashSet<&str> = owners.into_iter().filter(|o| is_node_owner(o)).collect();
        self.gone_since
            .retain(|name, _| owners.contains(name.as_str()));
        let mut due = Vec::new();
        for owner in owners {
            if present.contains(owner) {
                continue;
            }
            let since = *self.gone_since.entry(owner.to_string()).or_insert(now);
            let gone_for = now.saturating_duration_since(since);
            if gone_for > self.grace {
                due.push((owner.to_string(), gone_for));
            }
        }
        due.sort();
        due
    }
}

/// Runs until `stop` is cancelled: while this member leads, watches Nodes and releases the
/// leases of deleted ones.
pub async fn run(
    client: kube::Client,
    replica: Arc<Replica>,
    grace: Duration,
    status: KubeStatus,
    stop: CancellationToken,
) {
    while_leader(&replica, &stop, |leading| {
        let mut session = Session {
            api: Api::all(client.clone()),
            replica: replica.clone(),
            book: GraceBook::new(grace),
            backoff: RETRY,
            status: status.clone(),
        };
        let stop = stop.clone();
        async move {
            tracing::info!(grace = ?grace, "leader: watching Nodes to release the leases of deleted ones");
            session.status.update(|s| s.node_gc_active = true);
            session.run(&leading).await;
            session.status.update(|s| s.node_gc_active = false);
            if !stop.is_cancelled() {
                tracing::info!("no longer leader: Node watch stopped");
            }
        }
    })
    .await;
}

struct Session {
    api: Api<Node>,
    replica: Arc<Replica>,
    book: GraceBook,
    backoff: Backoff,
    status: KubeStatus,
}

impl Session {
    /// List + watch, resuming from the last resource version; relists after 410 Gone.
    async fn run(&mut self, stop: &CancellationToken) {
        let tick_every =
            (self.book.grace / 4).clamp(Duration::from_millis(200), Duration::from_secs(30));
        let mut tick = tokio::time::interval(tick_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut version: Option<String> = None;
        loop {
            let from = match &version {
                Some(v) => v.clone(),
                None => match self.api.list(&ListParams::default()).await {
                    Ok(list) => {
                        self.book
                            .listed(list.items.iter().filter_map(|n| n.metadata.name.clone()));
                        let v = list.metadata.resource_version.unwrap_or_default();
                        version = Some(v.clone());
                        v
                    }
                    Err(e) => {
                        if self.retry_later("listing Nodes", &e, stop).await {
                            return;
                        }
                        continue;
                    }
                },
            };
            let params = WatchParams::default().timeout(290);
            let mut events = match self.api.watch(&params, &from).await {
                Ok(events) => events.boxed(),
                Err(e) => {
                    if is_gone(&e) {
                        version = None;
                    }
                    if self.retry_later("watching Nodes", &e, stop).await {
                        return;
                    }
                    continue;
                }
            };
            let watch_started = Instant::now();
            loop {
                tokio::select! {
                    event = events.next() => match event {
                        None => break, // the server ended the watch: resume from `version`
                        Some(Ok(event)) => match event {
                            WatchEvent::Added(node) | WatchEvent::Modified(node) => {
                                if let Some(name) = &node.metadata.name { self.book.seen(name) }
                                version = node.metadata.resource_version.or(version);
                            }
                            WatchEvent::Deleted(node) => {
                                if let Some(name) = &node.metadata.name {
                                    tracing::info!(node = %name, "Node deleted; its lease is released after the grace period unless it comes back");
                                    self.book.deleted(name, Instant::now());
                                }
                                version = node.metadata.resource_version.or(version);
                            }
                            WatchEvent::Bookmark(mark) => version = Some(mark.metadata.resource_version),
                            WatchEvent::Error(status) => {
                                if status.code == 410 {
                                    version = None;
                                } else {
                                    tracing::warn!(error = %status.message, "Node watch error");
                                    self.status.failed("node GC: Node watch", &status.message);
                                }
                                break;
                            }
                        },
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "Node watch broke; resuming");
                            self.status.failed("node GC: Node watch", &e);
                            break;
                        }
                    },
                    _ = tick.tick() => self.release_due().await,
                    _ = stop.cancelled() => return,
                }
            }
            // A watch that ends at once again and again must not become a busy loop.
            if watch_started.elapsed() < Duration::from_secs(1) {
                let delay = self.backoff.next_delay();
                if sleep_or_stop(delay, stop).await {
                    return;
                }
            } else {
                self.backoff.reset();
            }
        }
    }

    async fn retry_later(
        &mut self,
        what: &str,
        error: &kube::Error,
        stop: &CancellationToken,
    ) -> bool {
        let delay = self.backoff.next_delay();
        tracing::warn!(error = %error, retry_in = ?delay, "node GC: {what} failed");
        self.status.failed(&format!("node GC: {what}"), error);
        sleep_or_stop(delay, stop).await
    }

    async fn release_due(&mut self) {
        let leases: HashMap<String, String> = self
            .replica
            .local()
            .read()
            .table
            .leases()
            .into_iter()
            .map(|l| (l.record.node.clone(), l.block.subnet.to_string()))
            .collect();
        let due = self
            .book
            .due(leases.keys().map(String::as_str), Instant::now());
        for (node, gone_for) in due {
            // The watch may lag: only the API's own 404 proves the Node is gone now.
            match self.api.get_opt(&node).await {
                Ok(Some(_)) => {
                    self.book.seen(&node);
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(node = %node, error = %e, "node GC: cannot confirm the Node is gone; retrying later");
                    self.status
                        .failed(&format!("node GC: reading Node {node}"), &e);
                    return;
                }
            }
            match self.replica.release(&node).await {
                Ok(existed) => {
                    if existed {
                        evio_api::metrics::node_gc_releases().inc();
                        tracing::info!(
                            node = %node,
                            subnet = leases.get(&node).map(String::as_str).unwrap_or(""),
                            gone_for = %humantime::format_duration(round_ms(gone_for)),
                            "released the lease of a deleted Node"
                        );
                    }
                }
                Err(e) => {
                    tracing::warn!(node = %node, error = %e, "node GC: release failed; retrying later");
                    return;
                }
            }
        }
    }
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn is_gone(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 410)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(600);

    /// A grace book that has listed the Nodes `listed`, and the time it starts at.
    fn listing(listed: &[&str]) -> (Instant, GraceBook) {
        let mut book = GraceBook::new(GRACE);
        book.listed(names(listed));
        (Instant::now(), book)
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn nothing_is_due_before_the_first_list() {
        let t0 = Instant::now();
        let mut book = GraceBook::new(GRACE);
        book.deleted("a", t0);
        assert!(book.due(["a"], t0 + GRACE * 3).is_empty());
    }

    #[test]
    fn deleted_node_is_due_only_after_the_grace() {
        let (t0, mut book) = listing(&["a", "b"]);
        assert!(book.due(["a", "b"], t0).is_empty());
        book.deleted("a", t0);
        assert!(book.due(["a", "b"], t0 + GRACE).is_empty());
        let due = book.due(["a", "b"], t0 + GRACE + Duration::from_secs(1));
        assert_eq!(due, vec![("a".to_string(), GRACE + Duration::from_secs(1))]);
    }

    #[test]
    fn node_recreated_within_the_grace_keeps_its_lease() {
        let (t0, mut book) = listing(&["a"]);
        book.deleted("a", t0);
        book.seen("a");
        assert!(book.due(["a"], t0 + GRACE * 2).is_empty());
        // deleted again later: the timer starts from the second deletion
        book.deleted("a", t0 + GRACE * 2);
        assert!(book.due(["a"], t0 + GRACE * 3).is_empty());
        assert_eq!(book.due(["a"], t0 + GRACE * 4).len(), 1);
    }

    #[test]
    fn owner_never_listed_counts_from_first_observed_absence() {
        let (t0, mut book) = listing(&["a"]);
        assert!(book.due(["a", "ghost"], t0 + GRACE * 5).is_empty());
        assert!(book
            .due(["a", "ghost"], t0 + GRACE * 6 - Duration::from_secs(1))
            .is_empty());
        assert_eq!(
            book.due(["a", "ghost"], t0 + GRACE * 6 + Duration::from_secs(1)),
            vec![("ghost".to_string(), GRACE + Duration::from_secs(1))]
        );
    }

    #[test]
    fn a_relist_that_finds_the_node_clears_its_timer() {
        let (t0, mut book) = listing(&["a"]);
        book.deleted("a", t0);
        book.listed(names(&["a"]));
        assert!(book.due(["a"], t0 + GRACE * 2).is_empty());
    }

    #[test]
    fn reserved_owners_and_released_leases_are_ignored() {
        let t0 = Instant::now();
        let mut book = GraceBook::new(GRACE);
        book.listed(Vec::new());
        assert!(book
            .due(["legacy:10.244.1.2,10.244.1.254,10.244.1.1"], t0)
            .is_empty());
        assert!(book
            .due(
                ["legacy:10.244.1.2,10.244.1.254,10.244.1.1"],
                t0 + GRACE * 2
            )
            .is_empty());
        // a lease released and acquired again starts a new timer
        book.deleted("b", t0);
        assert!(book.due([], t0 + GRACE).is_empty());
        assert!(book.due(["b"], t0 + GRACE * 2).is_empty());
        assert_eq!(
            book.due(["b"], t0 + GRACE * 3 + Duration::from_secs(1))
                .len(),
            1
        );
    }
}
