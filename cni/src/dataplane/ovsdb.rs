//! A small OVSDB (RFC 7047) client for the Open_vSwitch database: `transact` over the
//! server's unix socket, JSON-RPC 1.0, answering the server's `echo`.
//!
//! Why not the `ovsdb-client` crate: it offers list_dbs / get_schema / monitor only (no
//! `transact`, which every bridge and port change needs) and decodes a whole read buffer as
//! one value, while the server may send several messages in one read. Here the stream is
//! framed by parsing consecutive JSON values.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

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
}

/// One connection: request ids, buffered input, echo replies.
struct Session {
    stream: UnixStream,
    buffer: Vec<u8>,
    next_id: u64,
    socket: String,
}

impl Session {
    async fn send(&mut self, message: &Value) -> Result<(), OvsdbError> {
        let bytes = serde_json::to_vec(message).map_err(|e| OvsdbError::Protocol(e.to_string()))?;
        self.stream
            .write_all(&bytes)
            .await
            .map_err(|e| OvsdbError::Io {
                socket: self.socket.clone(),
                reason: e.to_string(),
            })
    }

    /// Sends `method(params)` and returns its result, answering echoes meanwhile.
    async fn call(&mut self, method: &str, params: Value) -> Result<Value, OvsdbError> {
        let id = self.next_id;
        self.next_id += 1;
        // JSON-RPC 1.0: no "jsonrpc" member (the server rejects 2.0 messages).
        self.send(&json!({"method": method, "params": params, "id": id}))
            .await?;
        loop {
            let message = self.next_message().await?;
            if message["method"] == "echo" {
                let reply =
                    json!({"result": message["params"], "error": null, "id": message["id"]});
                self.send(&reply).await?;
                continue;
            }
            if message["id"] == json!(id) {
                if !message["error"].is_null() {
                    return Err(OvsdbError::Protocol(message["error"].to_string()));
                }
                return Ok(message["result"].clone());
            }
        }
    }

    /// The next complete JSON value from the stream (several may arrive in one read).
    async fn next_message(&mut self) -> Result<Value, OvsdbError> {
        loop {
            let mut values =
                serde_json::Deserializer::from_slice(&self.buffer).into_iter::<Value>();
            match values.next() {
                Some(Ok(value)) => {
                    let used = values.byte_offset();
                    self.buffer.drain(..used);
                    return Ok(value);
                }
                Some(Err(e)) if !e.is_eof() => {
                    return Err(OvsdbError::Protocol(format!("undecodable message: {e}")))
                }
                _ => {}
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = self
                .stream
                .read(&mut chunk)
                .await
                .map_err(|e| OvsdbError::Io {
                    socket: self.socket.clone(),
                    reason: e.to_string(),
                })?;
            if n == 0 {
                return Err(OvsdbError::Io {
                    socket: self.socket.clone(),
                    reason: "connection closed".into(),
                });
            }
            self.buffer.extend_from_slice(&chunk[..n]);
        }
    }

    /// Runs `operations` atomically; an error in any operation fails the whole transaction.
    async fn transact(&mut self, operations: Vec<Value>) -> Result<Vec<Value>, OvsdbError> {
        let mut params = vec![json!(DB)];
        params.extend(operations);
        let result = self.call("transact", Value::Array(params)).await?;
        let results = result
            .as_array()
            .cloned()
            .ok_or_else(|| OvsdbError::Protocol(format!("transact returned {result}")))?;
        if let Some(failure) = results
            .iter()
            .find(|r| r.get("error").is_some_and(|e| !e.is_null()))
        {
            return Err(OvsdbError::Transaction(failure.to_string()));
        }
        Ok(results)
    }
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
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            timeout: Duration::from_secs(10),
        }
    }

    async fn session(&self) -> Result<Session, OvsdbError> {
        let shown = self.socket.display().to_string();
        let stream = tokio::time::timeout(self.timeout, UnixStream::connect(&self.socket))
            .await
            .map_err(|_| OvsdbError::Io {
                socket: shown.clone(),
                reason: "connect timed out".into(),
            })?
            .map_err(|e| OvsdbError::Io {
                socket: shown.clone(),
                reason: e.to_string(),
            })?;
        Ok(Session {
            stream,
            buffer: Vec::new(),
            next_id: 1,
            socket: shown,
        })
    }

    /// Runs a change plus a `next_cfg` bump, then waits until vswitchd has applied it.
    async fn apply(&self, mut operations: Vec<Value>) -> Result<(), OvsdbError> {
        let mut session = self.session().await?;
        operations.push(bump_cfg());
        operations.push(
            json!({"op": "select", "table": "Open_vSwitch", "where": [], "columns": ["next_cfg"]}),
        );
        let results = tokio::time::timeout(self.timeout, session.transact(operations))
            .await
            .map_err(|_| OvsdbError::Protocol("transaction timed out".into()))??;
        let next_cfg = results
            .last()
            .and_then(|r| r["rows"][0]["next_cfg"].as_i64())
            .ok_or_else(|| OvsdbError::Protocol("no next_cfg in the answer".into()))?;
        // vswitchd sets cur_cfg to next_cfg once it has applied everything up to it; other
        // changes may bump it further meanwhile, hence ">=" by polling (OVSDB `wait` only
        // knows == and !=).
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let rows = session
                .transact(vec![
                    json!({"op": "select", "table": "Open_vSwitch", "where": [],
                                      "columns": ["cur_cfg"]}),
                ])
                .await?;
            let cur_cfg = rows
                .first()
                .and_then(|r| r["rows"][0]["cur_cfg"].as_i64())
                .unwrap_or(0);
            if cur_cfg >= next_cfg {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(OvsdbError::Protocol(format!(
                    "ovs-vswitchd did not apply configuration {next_cfg} in time (at {cur_cfg})"
                )));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(())
    }

    async fn select(
        &self,
        table: &str,
        conditions: Value,
        columns: &[&str],
    ) -> Result<Vec<Value>, OvsdbError> {
        let mut session = self.session().await?;
        let results = session
            .transact(vec![
                json!({"op": "select", "table": table, "where": conditions, "columns": columns}),
            ])
            .await?;
        Ok(results
            .first()
            .and_then(|r| r["rows"].as_array().cloned())
            .unwrap_or_default())
    }

    pub async fn bridge_exists(&self, bridge: &str) -> Result<bool, OvsdbError> {
        Ok(!self
            .select("Bridge", json!([["name", "==", bridge]]), &["name"])
            .await?
            .is_empty())
    }

    /// Creates the bridge (with its internal interface) unless it exists, as `ovs-vsctl
    /// --may-exist add-br` does: one transaction, then waits for vswitchd.
    pub async fn ensure_bridge(&self, bridge: &str, datapath_type: &str) -> Result<(), OvsdbError> {
        if self.bridge_exists(bridge).await? {
            return Ok(());
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
            // A concurrent creator won: names are unique, so the whole insert failed.
            Err(OvsdbError::Transaction(_)) if self.bridge_exists(bridge).await? => Ok(()),
            other => other,
        }
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
        let rows = self
            .select("Port", json!([["name", "==", port]]), &["_uuid"])
            .await?;
        let Some(uuid) = rows.first().map(|r| r["_uuid"].clone()) else {
            return Ok(false);
        };
        // Ports are not root rows: dropping the reference deletes the port and interface.
        let operations = vec![json!({"op": "mutate", "table": "Bridge", "where": [],
                                     "mutations": [["ports", "delete", ["set", [uuid]]]]})];
        self.apply(operations).await?;
        Ok(true)
    }

    /// Ports carrying an `evio-owner` external id: (port name, owner).
    pub async fn owned_ports(&self) -> Result<Vec<(String, String)>, OvsdbError> {
        let rows = self
            .select("Port", json!([]), &["name", "external_ids"])
            .await?;
        Ok(rows
            .iter()
            .filter_map(|row| {
                let name = row["name"].as_str()?.to_string();
                let pairs = row["external_ids"][1].as_array()?;
                let owner = pairs
                    .iter()
                    .find(|p| p[0] == "evio-owner")
                    .and_then(|p| p[1].as_str())?
                    .to_string();
                Some((name, owner))
            })
            .collect())
    }
}
