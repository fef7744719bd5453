//! What the daemon knows of the Open_vSwitch database, fed by one `monitor` on its
//! connection: bridges and ports by name (ports with their `evio-owner`), and `cur_cfg`.
//! The monitor's initial reply fills it and every `update` notification keeps it current, so
//! "does this bridge exist", "which port has this name" and "has vswitchd applied
//! configuration N" are answered without asking the server. A cache belongs to one
//! connection: a new connection (after an ovsdb-server restart) starts a new one.

use std::collections::HashMap;
use std::sync::Mutex;

use serde_json::{json, Value};
use tokio::sync::watch;

/// `cur_cfg` as last seen, and whether the connection feeding the cache is gone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Cfg {
    cur_cfg: i64,
    closed: bool,
}

struct PortRow {
    name: String,
    owner: Option<String>,
}

#[derive(Default)]
struct Rows {
    /// Bridge uuid → name.
    bridges: HashMap<String, String>,
    /// Port uuid → name and owner.
    ports: HashMap<String, PortRow>,
}

pub(super) struct Cache {
    rows: Mutex<Rows>,
    cfg: watch::Sender<Cfg>,
}

impl Default for Cache {
    fn default() -> Self {
        Self {
            rows: Mutex::default(),
            cfg: watch::Sender::new(Cfg::default()),
        }
    }
}

/// The monitor's `monitor-requests`: the tables and columns the cache holds.
pub(super) fn monitor_requests() -> Value {
    json!({
        "Bridge": {"columns": ["name"]},
        "Port": {"columns": ["name", "external_ids"]},
        "Open_vSwitch": {"columns": ["cur_cfg"]},
    })
}

/// The `evio-owner` of an OVSDB map column (`["map", [[k, v], ...]]`).
fn owner_of(external_ids: &Value) -> Option<String> {
    external_ids[1]
        .as_array()?
        .iter()
        .find(|p| p[0] == "evio-owner")
        .and_then(|p| p[1].as_str())
        .map(str::to_string)
}

impl Cache {
    fn rows(&self) -> std::sync::MutexGuard<'_, Rows> {
        self.rows.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies `<table-updates>` (the monitor's reply or an `update`'s second parameter):
    /// a row with `new` is added or replaced, one without is deleted.
    pub(super) fn apply(&self, updates: &Value) {
        let Some(tables) = updates.as_object() else {
            return;
        };
        let mut rows = self.rows();
        for (table, changes) in tables {
            for (uuid, change) in changes.as_object().into_iter().flatten() {
                let new = change.get("new").filter(|n| n.is_object());
                match (table.as_str(), new) {
                    ("Bridge", Some(row)) => {
                        let name = row["name"].as_str().unwrap_or_default().to_string();
                        rows.bridges.insert(uuid.clone(), name);
                    }
                    ("Bridge", None) => {
                        rows.bridges.remove(uuid);
                    }
                    ("Port", Some(row)) => {
                        let port = PortRow {
                            name: row["name"].as_str().unwrap_or_default().to_string(),
                            owner: owner_of(&row["external_ids"]),
                        };
                        rows.ports.insert(uuid.clone(), port);
                    }
                    ("Port", None) => {
                        rows.ports.remove(uuid);
                    }
                    ("Open_vSwitch", Some(row)) => {
                        if let Some(cur_cfg) = row["cur_cfg"].as_i64() {
                            self.cfg.send_if_modified(|cfg| {
                                let changed = cfg.cur_cfg != cur_cfg;
                                cfg.cur_cfg = cur_cfg;
                                changed
                            });
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    pub(super) fn bridge_uuid(&self, name: &str) -> Option<String> {
        let rows = self.rows();
        let found = rows.bridges.iter().find(|(_, n)| *n == name);
        found.map(|(uuid, _)| uuid.clone())
    }

    pub(super) fn port_uuid(&self, name: &str) -> Option<String> {
        let rows = self.rows();
        let found = rows.ports.iter().find(|(_, p)| p.name == name);
        found.map(|(uuid, _)| uuid.clone())
    }

    /// Ports carrying an `evio-owner`: (port name, owner).
    pub(super) fn owned_ports(&self) -> Vec<(String, String)> {
        self.rows()
            .ports
            .values()
            .filter_map(|p| Some((p.name.clone(), p.owner.clone()?)))
            .collect()
    }

    /// Waits until vswitchd reports `cur_cfg >= next_cfg` (it may have gone further
    /// meanwhile); `Err(last cur_cfg)` when the connection closed first.
    pub(super) async fn applied(&self, next_cfg: i64) -> Result<(), i64> {
        let mut cfg = self.cfg.subscribe();
        let seen = cfg
            .wait_for(|c| c.cur_cfg >= next_cfg || c.closed)
            .await
            .map(|c| *c)
            .unwrap_or(Cfg {
                cur_cfg: 0,
                closed: true,
            });
        match seen.cur_cfg >= next_cfg {
            true => Ok(()),
            false => Err(seen.cur_cfg),
        }
    }

    pub(super) fn cur_cfg(&self) -> i64 {
        self.cfg.borrow().cur_cfg
    }

    /// The connection ended: waiters stop waiting.
    pub(super) fn close(&self) {
        self.cfg.send_modify(|c| c.closed = true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn initial_state_then_updates() {
        let cache = Cache::default();
        cache.apply(&json!({
            "Bridge": {"b1": {"new": {"name": "br0"}}},
            "Port": {"p1": {"new": {"name": "evio1", "external_ids": ["map", [["evio-owner", "net/c/eth0"]]]}},
                     "p2": {"new": {"name": "br0", "external_ids": ["map", []]}}},
            "Open_vSwitch": {"o": {"new": {"cur_cfg": 7}}},
        }));
        assert_eq!(cache.bridge_uuid("br0").as_deref(), Some("b1"));
        assert_eq!(cache.port_uuid("evio1").as_deref(), Some("p1"));
        assert_eq!(
            cache.owned_ports(),
            vec![("evio1".to_string(), "net/c/eth0".to_string())]
        );
        assert_eq!(cache.applied(7).await, Ok(()));

        cache.apply(&json!({"Port": {"p1": {"old": {"name": "evio1"}}},
                            "Bridge": {"b1": {"old": {"name": "br0"}}}}));
        assert!(cache.port_uuid("evio1").is_none() && cache.bridge_uuid("br0").is_none());
        let waiting = cache.applied(9);
        cache.apply(
            &json!({"Open_vSwitch": {"o": {"old": {"cur_cfg": 7}, "new": {"cur_cfg": 10}}}}),
        );
        assert_eq!(waiting.await, Ok(()));
        let waiting = cache.applied(11);
        cache.close();
        assert_eq!(waiting.await, Err(10));
    }
}
