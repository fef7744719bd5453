//! Deletes the veths of deleted pods off the DEL path.
//!
//! Deleting a veth pair whose peer lives in another namespace waits in the kernel for RCU
//! grace periods and for the device's last references (15–40 ms measured here), most of a
//! synchronous DEL. DEL therefore *retires* the host end (down, alias marked [`RETIRED`]: the pod
//! is cut off at once) and frees the interface name in the pod netns, releases the address, answers, and leaves the
//! deletion to this queue. A retired link is still a link:
//! - an ADD of the same attachment (same host veth name) deletes it first, itself;
//! - links retired before a daemon restart are deleted by the sweep at start and by GC;
//! - the queue deletes by interface index, which the kernel does not hand to a new link soon,
//!   so it never removes a newer veth of the same name.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures::TryStreamExt;
use rtnetlink::Handle;

use super::netlink::{self, NetlinkError};

/// Alias prefix of a retired host veth; the rest is its former owner alias.
pub const RETIRED: &str = "evio-retired:";

/// The queue of retired links, deleted one at a time (the kernel serialises them anyway).
#[derive(Clone)]
pub struct Reaper {
    queue: tokio::sync::mpsc::UnboundedSender<u32>,
    pending: Arc<AtomicUsize>,
}

impl Reaper {
    /// Starts the deleting task on the current runtime and queues the links retired before
    /// this daemon started.
    pub fn start(handle: Handle) -> Self {
        let (queue, mut retired) = tokio::sync::mpsc::unbounded_channel::<u32>();
        // The start sweep counts as pending until it has queued what it found.
        let pending = Arc::new(AtomicUsize::new(1));
        let reaper = Self {
            queue,
            pending: pending.clone(),
        };
        let sweeper = reaper.clone();
        let sweep_handle = handle.clone();
        tokio::spawn(async move {
            match retired_links(&sweep_handle).await {
                Ok(leftovers) => {
                    if !leftovers.is_empty() {
                        tracing::info!(
                            count = leftovers.len(),
                            "deleting veths retired before this start"
                        );
                    }
                    for index in leftovers {
                        sweeper.delete_later(index);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "listing retired veths failed"),
            }
            sweeper.pending.fetch_sub(1, Ordering::SeqCst);
        });
        tokio::spawn(async move {
            while let Some(index) = retired.recv().await {
                if let Err(e) = netlink::delete_index(&handle, index).await {
                    tracing::warn!(error = %e, index, "deleting a retired veth failed");
                }
                pending.fetch_sub(1, Ordering::SeqCst);
            }
        });
        reaper
    }

    /// Queues link `index` (already retired) for deletion.
    pub fn delete_later(&self, index: u32) {
        self.pending.fetch_add(1, Ordering::SeqCst);
        if self.queue.send(index).is_err() {
            // Only when the runtime is shutting down; the start sweep will find it.
            self.pending.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Links queued and not yet deleted.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::SeqCst)
    }

    /// Waits until every queued link is deleted (tests, shutdown).
    pub async fn drained(&self) {
        while self.pending() > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    }
}

/// The indexes of links whose alias marks them retired.
pub async fn retired_links(handle: &Handle) -> Result<Vec<u32>, NetlinkError> {
    let mut out = Vec::new();
    let mut stream = handle.link().get().execute();
    while let Some(link) = stream.try_next().await.map_err(|e| NetlinkError {
        action: "listing links".into(),
        reason: e.to_string(),
    })? {
        if netlink::alias_of(&link).starts_with(RETIRED) {
            out.push(link.header.index);
        }
    }
    Ok(out)
}
