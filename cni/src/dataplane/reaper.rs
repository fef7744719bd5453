//! Deletes the veths of deleted pods off the DEL path, in batches.
//!
//! Deleting a veth pair whose peer lives in another namespace waits in the kernel for RCU
//! grace periods and for the device's last references (15–40 ms measured here), most of a
//! synchronous DEL, and it holds the RTNL lock for part of that, stalling the next request.
//! DEL therefore *retires* the pair instead: the pod end goes down (the host end loses its
//! carrier, the bridge stops forwarding to it) and is renamed, freeing `CNI_IFNAME` in the pod
//! netns; the host end gets the alias prefix [`RETIRED`] and the link group
//! [`RETIRED_GROUP`]. DEL then releases the address and answers. Once DELs pause (or at the
//! latest [`MAX_DELAY`] after the first), one request deletes the whole group: the kernel
//! pays its waits once per batch instead of once per pod.
//!
//! A retired link is still a link:
//! - an ADD of the same attachment (same host veth name) deletes it first, itself;
//! - links retired before a daemon restart (found by their alias) are deleted at start and
//!   by GC;
//! - only retired links are ever in the group, so a newer veth of the same name is never hit.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rtnetlink::Handle;

use super::netlink::{self, NetlinkError};

/// Alias prefix of a retired host veth; the rest is its former owner alias.
pub const RETIRED: &str = "evio-retired:";

/// The link group of retired host veths ("evio" in ASCII; 0 is every link's default).
pub const RETIRED_GROUP: u32 = 0x6576_696f;

/// A batch is deleted once no DEL has retired a link for this long...
const QUIET: Duration = Duration::from_millis(20);
/// ...or this long after its first link, whichever comes first.
pub const MAX_DELAY: Duration = Duration::from_secs(1);

/// The queue of retired links.
#[derive(Clone)]
pub struct Reaper {
    queue: tokio::sync::mpsc::UnboundedSender<()>,
    pending: Arc<AtomicUsize>,
}

impl Reaper {
    /// Starts the deleting task on the current runtime and queues the links retired before
    /// this daemon started.
    pub fn start(handle: Handle) -> Self {
        let (queue, mut retired) = tokio::sync::mpsc::unbounded_channel::<()>();
        // The start sweep counts as pending until it has queued what it found.
        let pending = Arc::new(AtomicUsize::new(1));
        let reaper = Self {
            queue,
            pending: pending.clone(),
        };
        let sweeper = reaper.clone();
        let sweep_handle = handle.clone();
        tokio::spawn(async move {
            match sweep(&sweep_handle).await {
                Ok(0) => {}
                Ok(count) => {
                    tracing::info!(count, "deleting veths retired before this start");
                    for _ in 0..count {
                        sweeper.delete_later();
                    }
                }
                Err(e) => tracing::warn!(error = %e, "sweeping retired veths failed"),
            }
            sweeper.pending.fetch_sub(1, Ordering::SeqCst);
        });
        tokio::spawn(async move {
            while retired.recv().await.is_some() {
                let mut batch = 1;
                let first = tokio::time::Instant::now();
                while first.elapsed() < MAX_DELAY {
                    match tokio::time::timeout(QUIET, retired.recv()).await {
                        Ok(Some(())) => batch += 1,
                        Ok(None) | Err(_) => break,
                    }
                }
                if let Err(e) = netlink::delete_group(&handle, RETIRED_GROUP).await {
                    tracing::warn!(error = %e, batch, "deleting retired veths failed");
                }
                pending.fetch_sub(batch, Ordering::SeqCst);
            }
        });
        reaper
    }

    /// Queues one more retired link (already in [`RETIRED_GROUP`]) for deletion.
    pub fn delete_later(&self) {
        self.pending.fetch_add(1, Ordering::SeqCst);
        if self.queue.send(()).is_err() {
            // Only when the runtime is shutting down; the next start's sweep finds it.
            self.pending.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Links queued and not yet deleted.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::SeqCst)
    }

    /// Waits until every queued link is deleted (tests, benchmarks).
    pub async fn drained(&self) {
        while self.pending() > 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// Puts every link retired by an earlier daemon (known by its alias) into the group; returns
/// how many there were.
async fn sweep(handle: &Handle) -> Result<usize, NetlinkError> {
    let leftovers = retired_links(handle).await?;
    let mut count = 0;
    for (index, alias) in &leftovers {
        if netlink::retire(handle, *index, alias, RETIRED_GROUP).await? {
            count += 1;
        }
    }
    Ok(count)
}

/// The indexes and aliases of links whose alias marks them retired.
pub async fn retired_links(handle: &Handle) -> Result<Vec<(u32, String)>, NetlinkError> {
    Ok(netlink::links(handle)
        .await?
        .into_iter()
        .filter(|link| link.alias.starts_with(RETIRED))
        .map(|link| (link.index, link.alias))
        .collect())
}
