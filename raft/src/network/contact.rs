//! When this member last exchanged Raft RPC with each other member: the status page's and
//! `/v1/cluster`'s reachability, as this member sees it. Recorded by the RPC client (answers
//! and failures) and server (requests heard); nothing here sends traffic.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::types::NodeId;

/// Peers tracked at most: only token holders send Raft RPC, but a bound keeps a misbehaving
/// one from growing this map.
const MAX_TRACKED: usize = 4096;

/// The last Raft traffic with one member.
#[derive(Debug, Clone, Default)]
pub struct Contact {
    /// The last Raft RPC received from it (it reached us).
    pub heard: Option<Instant>,
    /// The last RPC of ours it answered.
    pub reached: Option<Instant>,
    /// The last RPC of ours it answered with a result, not an error: its Raft runs (the
    /// leader's membership controller counts a member alive by this).
    pub answered: Option<Instant>,
    /// The last RPC of ours that got no answer, and why.
    pub failed: Option<(Instant, String)>,
}

impl Contact {
    /// Reachable when traffic flowed within `window` and no RPC failed since; unreachable
    /// after a recent failure, or when traffic is `expected` and none flowed within
    /// `window`; `None` when the two members exchange no traffic (two followers).
    pub fn reachable(&self, window: Duration, expected: bool) -> Option<bool> {
        if self
            .failure()
            .is_some_and(|(failed, _)| failed.elapsed() <= window)
        {
            return Some(false);
        }
        match self.heard.max(self.reached) {
            Some(ok) if ok.elapsed() <= window => Some(true),
            _ if expected => Some(false),
            _ => None,
        }
    }
}

impl Contact {
    /// The last failed RPC, when no traffic flowed since.
    pub fn failure(&self) -> Option<(Instant, &str)> {
        let (at, why) = self.failed.as_ref()?;
        let last_ok = self.heard.max(self.reached);
        last_ok
            .is_none_or(|ok| *at > ok)
            .then_some((*at, why.as_str()))
    }
}

#[derive(Debug, Default)]
pub struct Contacts(Mutex<HashMap<NodeId, Contact>>);

impl Contacts {
    fn update(&self, id: NodeId, change: impl FnOnce(&mut Contact)) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_TRACKED && !map.contains_key(&id) {
            return;
        }
        change(map.entry(id).or_default());
    }

    pub fn heard(&self, id: NodeId) {
        self.update(id, |c| c.heard = Some(Instant::now()));
    }

    pub fn reached(&self, id: NodeId) {
        self.update(id, |c| c.reached = Some(Instant::now()));
    }

    /// It answered with a result: reached, and its Raft runs.
    pub fn answered(&self, id: NodeId) {
        let now = Instant::now();
        self.update(id, |c| {
            c.reached = Some(now);
            c.answered = Some(now);
        });
    }

    pub fn failed(&self, id: NodeId, why: &dyn std::fmt::Display) {
        self.update(id, |c| c.failed = Some((Instant::now(), why.to_string())));
    }

    pub fn get(&self, id: NodeId) -> Contact {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&id).cloned().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reachability_follows_the_latest_traffic() {
        let window = Duration::from_secs(60);
        let contacts = Contacts::default();
        assert_eq!(contacts.get(1).reachable(window, false), None);
        assert_eq!(contacts.get(1).reachable(window, true), Some(false));
        contacts.reached(1);
        assert_eq!(contacts.get(1).reachable(window, true), Some(true));
        contacts.failed(1, &"connection refused");
        assert_eq!(contacts.get(1).reachable(window, false), Some(false));
        contacts.heard(1);
        assert_eq!(contacts.get(1).reachable(window, true), Some(true));
        // Old traffic only counts when some is expected.
        assert_eq!(contacts.get(1).reachable(Duration::ZERO, false), None);
        assert_eq!(contacts.get(1).reachable(Duration::ZERO, true), Some(false));
    }
}
