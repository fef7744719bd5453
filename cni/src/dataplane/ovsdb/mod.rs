//! A small OVSDB (RFC 7047) client for the Open_vSwitch database: `transact` over the
//! server's unix socket, JSON-RPC 1.0 ([`rpc`]), on ONE connection per daemon and socket that
//! every request shares and that is re-opened after ovsdb-server restarts. Each connection
//! starts a `monitor` feeding its [`cache`]: bridge and port lookups and the wait for
//! vswitchd (`cur_cfg`) are answered from it, so an ADD sends one transaction and nothing
//! else. Every call is bounded by a timeout.
//!
//! Why our own layer and not the `ovsdb-client` crate: docs/decisions/ovsdb-client.md.

mod cache;
mod rpc;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::net::UnixStream;

use rpc::Connection;

pub const DEFAULT_SOCKET: &str = "/run/openvswitch/db.sock";
const DB: &str = "Open_vSwitch";

#[derive(Debug, thiserror::Error)]
pub enum OvsdbError {
    #[error("OVSDB at {socket}: {reason}")]
    Io { socket: String, reason: String },
    #[error("OVSDB transaction failed: {0}")]
    Transaction(String),
    #[error("OVSDB: {0}")]
    Protocol(String),
}

pub struct Ovsdb {
    socket: PathBuf,
    timeout: Duration,
    connection: tokio::sync::Mutex<Option<Arc<Connection>>>,
    /// Requests sent to the server (monitors, transactions, pings): what the cache saves.
    requests: AtomicU64,
}

fn named(uuid_name: &str) -> Value {
    json!(["named-uuid", uuid_name])
}

fn map(pairs: &[(&str, &str)]) -> Value {
    json!([
        "map",
        pairs.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>()
    ])
}

/// The operations that make vswitchd apply a change and let us wait for it.
fn bump_cfg() -> Value {
    json!({"op": "mutate", "table": "Open_vSwitch", "where": [],
           "mutations": [["next_cfg", "+=", 1]]})
}

impl Ovsdb {
    /// No connection is made until the first call.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self::with_timeout(socket, Duration::from_secs(10))
    }

    /// `timeout` bounds every call (connect, transaction, waiting for vswitchd).
    pub fn with_timeout(socket: impl Into<PathBuf>, timeout: Duration) -> Self {
        Self {
            socket: socket.into(),
            timeout,
            connection: tokio::sync::Mutex::new(None),
            requests: AtomicU64::new(0),
        }
    }

    /// Requests sent to ovsdb-server so far (the cache answers lookups without one).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub fn socket(&self) -> &std::path::Path {
        &self.socket
    }

    fn io(&self, reason: impl Into<String>) -> OvsdbError {
        OvsdbError::Io {
            socket: self.socket.display().to_string(),
            reason: reason.into(),
        }
    }

    /// The shared connection with its monitor running, opened again when the last one
    /// closed.
    async fn connection(&self) -> Result<Arc<Connection>, OvsdbError> {
        let mut current = self.connection.lock().await;
        if let Some(connection) = current.as_ref().filter(|c| !c.is_closed()) {
            return Ok(connection.clone());
        }
        let stream = tokio::time::timeout(self.timeout, UnixStream::connect(&self.socket))
            .await
            .map_err(|_| self.io("connect timed out"))?
            .map_err(|e| self.io(e.to_string()))?;
        if current.is_some() {
            tracing::info!(socket = %self.socket.display(), "reconnected to ovsdb-server");
        }
        let connection = Arc::new(Connection::start(stream, self.socket.display().to_string()));
        self.requests.fetch_add(1, Ordering::Relaxed);
        // Not kept unless its monitor runs: a cache that never fills would answer wrongly.
        tokio::time::timeout(self.timeout, connection.monitor(cache::monitor_requests()))
            .await
            .map_err(|_| OvsdbError::Protocol("monitor timed out".into()))??;
        *current = Some(connection.clone());
        Ok(connection)
    }

    /// One transaction, bounded by the timeout.
    async fn transact(&self, operations: Vec<Value>) -> Result<Vec<Value>, OvsdbError> {
        let connection = self.connection().await?;
        self.transact_on(&connection, operations).await
    }

    async fn transact_on(
        &self,
        connection: &Connection,
        operations: Vec<Value>,
    ) -> Result<Vec<Value>, OvsdbError> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        tokio::time::timeout(self.timeout, connection.transact(operations))
            .await
            .map_err(|_| OvsdbError::Protocol("transaction timed out".into()))?
    }

    /// Runs a change plus a `next_cfg` bump, then waits until vswitchd has applied it. The
    /// monitor reports vswitchd's `cur_cfg` after the change's own updates, so the cache
    /// shows the change when this returns.
    async fn apply(&self, mut operations: Vec<Value>) -> Result<(), OvsdbError> {
        operations.push(bump_cfg());
        operations.push(
            json!({"op": "select", "table": "Open_vSwitch", "where": [], "columns": ["next_cfg"]}),
        );
        let connection = self.connection().await?;
        let results = self.transact_on(&connection, operations).await?;
        let next_cfg = results
            .last()
            .and_then(|r| r["rows"][0]["next_cfg"].as_i64())
            .ok_or_else(|| OvsdbError::Protocol("no next_cfg in the answer".into()))?;
        // vswitchd sets cur_cfg to next_cfg once it has applied everything up to it; other
        // changes may bump it further meanwhile, hence ">=".
        match tokio::time::timeout(self.timeout, connection.cache().applied(next_cfg)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(self.io("connection closed while waiting for ovs-vswitchd")),
            Err(_) => Err(OvsdbError::Protocol(format!(
                "ovs-vswitchd did not apply configuration {next_cfg} in time (at {})",
                connection.cache().cur_cfg()
            ))),
        }
    }

    async fn select(
        &self,
        table: &str,
        conditions: Value,
        columns: &[&str],
    ) -> Result<Vec<Value>, OvsdbError> {
        let results = self
            .transact(vec![
                json!({"op": "select", "table": table, "where": conditions, "columns": columns}),
            ])
            .await?;
        Ok(results
            .first()
            .and_then(|r| r["rows"].as_array().cloned())
            .unwrap_or_default())
    }

    /// From the monitor's cache: no request.
    pub async fn bridge_exists(&self, bridge: &str) -> Result<bool, OvsdbError> {
        Ok(self
            .connection()
            .await?
            .cache()
            .bridge_uuid(bridge)
            .is_some())
    }

    /// Asks the server itself (where the cache may not have heard yet).
    async fn bridge_recorded(&self, bridge: &str) -> Result<bool, OvsdbError> {
        Ok(!self
            .select("Bridge", json!([["name", "==", bridge]]), &["name"])
            .await?
            .is_empty())
    }

    /// Whether ovsdb-server answers.
    pub async fn ping(&self) -> Result<(), OvsdbError> {
        let connection = self.connection().await?;
        self.requests.fetch_add(1, Ordering::Relaxed);
        tokio::time::timeout(self.timeout, connection.call("list_dbs", json!([])))
            .await
            .map_err(|_| OvsdbError::Protocol("list_dbs timed out".into()))??;
        Ok(())
    }

    /// Creates the bridge (with its internal interface) unless it exists, as `ovs-vsctl
    /// --may-exist add-br` does: one transaction, then waits for vswitchd. Returns whether
    /// this call created it.
    pub async fn ensure_bridge(
        &self,
        bridge: &str,
        datapath_type: &str,
    ) -> Result<bool, OvsdbError> {
        if self.bridge_exists(bridge).await? {
            return Ok(false);
        }
        let operations = vec![
            json!({"op": "insert", "table": "Interface", "uuid-name": "iface",
                   "row": {"name": bridge, "type": "internal"}}),
            json!({"op": "insert", "table": "Port", "uuid-name": "port",
                   "row": {"name": bridge, "interfaces": named("iface")}}),
            json!({"op": "insert", "table": "Bridge", "uuid-name": "bridge",
                   "row": {"name": bridge, "ports": named("port"), "datapath_type": datapath_type}}),
            json!({"op": "mutate", "table": "Open_vSwitch", "where": [],
                   "mutations": [["bridges", "insert", ["set", [named("bridge")]]]]}),
        ];
        match self.apply(operations).await {
            Ok(()) => Ok(true),
            // A concurrent creator won: names are unique, so the whole insert failed.
            Err(OvsdbError::Transaction(_)) if self.bridge_recorded(bridge).await? => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Removes `bridge` with its ports; absent is fine.
    pub async fn del_bridge(&self, bridge: &str) -> Result<(), OvsdbError> {
        let Some(uuid) = self.connection().await?.cache().bridge_uuid(bridge) else {
            return Ok(());
        };
        let uuid = json!(["uuid", uuid]);
        // Bridges are referenced from the root row: dropping the reference deletes it.
        self.apply(vec![
            json!({"op": "mutate", "table": "Open_vSwitch", "where": [],
                               "mutations": [["bridges", "delete", ["set", [uuid]]]]}),
        ])
        .await
    }

    /// Adds `port` (an existing netdev, e.g. a veth end) to `bridge`, tagged with
    /// `external_ids` (container id and ifname).
    pub async fn add_port(
        &self,
        bridge: &str,
        port: &str,
        external_ids: &[(&str, &str)],
    ) -> Result<(), OvsdbError> {
        let operations = vec![
            json!({"op": "insert", "table": "Interface", "uuid-name": "iface",
                   "row": {"name": port, "external_ids": map(external_ids)}}),
            json!({"op": "insert", "table": "Port", "uuid-name": "port",
                   "row": {"name": port, "interfaces": named("iface"), "external_ids": map(external_ids)}}),
            json!({"op": "mutate", "table": "Bridge", "where": [["name", "==", bridge]],
                   "mutations": [["ports", "insert", ["set", [named("port")]]]]}),
        ];
        self.apply(operations).await
    }

    /// Removes `port` from whatever bridge holds it; absent is fine. Returns whether it existed.
    pub async fn del_port(&self, port: &str) -> Result<bool, OvsdbError> {
        let Some(uuid) = self.connection().await?.cache().port_uuid(port) else {
            return Ok(false);
        };
        let uuid = json!(["uuid", uuid]);
        // Ports are not root rows: dropping the reference deletes the port and interface.
        let operations = vec![json!({"op": "mutate", "table": "Bridge", "where": [],
                                     "mutations": [["ports", "delete", ["set", [uuid]]]]})];
        self.apply(operations).await?;
        Ok(true)
    }

    /// Ports carrying an `evio-owner` external id: (port name, owner), from the cache.
    pub async fn owned_ports(&self) -> Result<Vec<(String, String)>, OvsdbError> {
        Ok(self.connection().await?.cache().owned_ports())
    }
}
