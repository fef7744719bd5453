//! A small OVSDB (RFC 7047) client for the Open_vSwitch database: `transact` over the
//! server's unix socket, JSON-RPC 1.0, answering the server's `echo`.
//!
//! Why our own layer and not the `ovsdb-client` crate (0.0.1) the design names:
//! cni/tests/ovsdb_crate.rs runs both against a real ovsdb-server. The crate's list_dbs,
//! get_schema and monitor work, but it has no `transact` (every bridge and port change needs
//! one; a hand-written one through jsonrpsee's generic `request` is all its transport offers),
//! and its connection dies when two messages arrive in one read (its codec parses the whole
//! buffer as one value), on the first error reply (not a JSON-RPC 2.0 error object), and when
//! the server's `echo` probes go unanswered. Here the stream is framed by parsing consecutive
//! JSON values, echoes are answered, and error replies are returned as errors.

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
    fn new(stream: UnixStream, socket: String) -> Session {
        Session {
            stream,
            buffer: Vec::new(),
            next_id: 1,
            socket,
        }
    }

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

    /// The next complete JSON value from the stream (several may arrive in one read, one may
    /// span several reads).
    async fn next_message(&mut self) -> Result<Value, OvsdbError> {
        loop {
            if let Some(message) = take_message(&mut self.buffer)? {
                return Ok(message);
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

/// Takes the first complete JSON value off the front of `buffer`; `None` while it is still
/// incomplete. OVSDB has no other framing than the values themselves.
fn take_message(buffer: &mut Vec<u8>) -> Result<Option<Value>, OvsdbError> {
    let mut values = serde_json::Deserializer::from_slice(buffer).into_iter::<Value>();
    match values.next() {
        Some(Ok(value)) => {
            let used = values.byte_offset();
            buffer.drain(..used);
            Ok(Some(value))
        }
        Some(Err(e)) if !e.is_eof() => {
            Err(OvsdbError::Protocol(format!("undecodable message: {e}")))
        }
        _ => Ok(None),
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
        Ok(Session::new(stream, shown))
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

#[cfg(test)]
mod tests {
    //! The JSON-RPC layer against a fake server on the other end of a socket pair, which
    //! controls exactly how bytes arrive. tests/ovsdb_crate.rs runs it against a real
    //! ovsdb-server.

    use super::*;

    fn pair() -> (Session, UnixStream) {
        let (ours, server) = UnixStream::pair().unwrap_or_else(|e| panic!("socketpair: {e}"));
        (Session::new(ours, "socketpair".into()), server)
    }

    /// The fake server's side: the next message the client sent.
    async fn receive(server: &mut UnixStream, buffer: &mut Vec<u8>) -> Value {
        loop {
            if let Some(message) = take_message(buffer).unwrap_or_else(|e| panic!("{e}")) {
                return message;
            }
            let mut chunk = [0u8; 4096];
            let n = server
                .read(&mut chunk)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(n > 0, "client closed the connection");
            buffer.extend_from_slice(&chunk[..n]);
        }
    }

    /// Bounds a call so that a missing answer fails the test instead of hanging it.
    async fn bounded<T>(call: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(10), call)
            .await
            .unwrap_or_else(|_| panic!("no answer within 10 s"))
    }

    async fn send_raw(server: &mut UnixStream, bytes: &str) {
        server
            .write_all(bytes.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn frames_concatenated_and_split_messages() {
        let first = r#"{"id":1,"result":[],"error":null}"#;
        let second = r#"{"id":"echo","method":"echo","params":[]}"#;
        let third = r#"{"id":2,"result":[{"rows":[{"name":"br\"0"}]}],"error":null}"#;
        let (head, tail) = third.split_at(20);
        let mut buffer = format!("{first}{second}\n{head}").into_bytes();

        let taken = take_message(&mut buffer).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(taken, Some(json!({"id": 1, "result": [], "error": null})));
        let taken = take_message(&mut buffer).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(taken.as_ref().map(|m| &m["method"]), Some(&json!("echo")));
        // Only part of the third has arrived: nothing yet, and nothing lost.
        assert_eq!(take_message(&mut buffer).ok(), Some(None));
        assert_eq!(take_message(&mut buffer).ok(), Some(None));
        buffer.extend_from_slice(tail.as_bytes());
        let taken = take_message(&mut buffer).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            taken.map(|m| m["result"][0]["rows"][0]["name"].clone()),
            Some(json!("br\"0"))
        );
        assert_eq!(take_message(&mut buffer).ok(), Some(None));
        assert!(buffer.iter().all(u8::is_ascii_whitespace), "{buffer:?}");
    }

    #[test]
    fn rejects_bytes_that_are_not_json() {
        let mut buffer = br#"{"id":1,"result":[],"error":null}]"#.to_vec();
        assert!(matches!(take_message(&mut buffer), Ok(Some(_))));
        match take_message(&mut buffer) {
            Err(OvsdbError::Protocol(reason)) => {
                assert!(reason.contains("undecodable"), "{reason}")
            }
            other => panic!("expected a protocol error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn transact_speaks_json_rpc_1_0_and_returns_the_results() {
        let (mut session, mut server) = pair();
        let fake = tokio::spawn(async move {
            let mut buffer = Vec::new();
            let request = receive(&mut server, &mut buffer).await;
            // A reply split in two writes, the first one ending mid-string.
            let reply = json!({"id": request["id"], "result": [{"rows": []}], "error": null});
            let reply = reply.to_string();
            let (head, tail) = reply.split_at(reply.len() / 2);
            send_raw(&mut server, head).await;
            send_raw(&mut server, tail).await;
            request
        });
        let select = json!({"op": "select", "table": "Bridge", "where": [], "columns": ["name"]});
        let results = bounded(session.transact(vec![select.clone()]))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(results, vec![json!({"rows": []})]);

        let request = bounded(fake).await.unwrap_or_else(|e| panic!("{e}"));
        assert!(request.get("jsonrpc").is_none(), "{request}");
        assert_eq!(request["method"], "transact");
        assert_eq!(request["params"], json!([DB, select]));
        assert!(request["id"].is_u64(), "{request}");
    }

    #[tokio::test]
    async fn transact_reports_a_failed_operation() {
        let (mut session, mut server) = pair();
        tokio::spawn(async move {
            let request = receive(&mut server, &mut Vec::new()).await;
            let reply = json!({"id": request["id"], "error": null, "result": [
                {"uuid": ["uuid", "2a4b3c5d-0000-4000-8000-000000000000"]},
                {"error": "constraint violation",
                 "details": "Transaction causes multiple rows in \"Port\" table to have identical values"}]});
            send_raw(&mut server, &reply.to_string()).await;
        });
        match bounded(session.transact(vec![json!({"op": "insert"})])).await {
            Err(OvsdbError::Transaction(reason)) => {
                assert!(reason.contains("constraint violation"), "{reason}")
            }
            other => panic!("expected a failed transaction, got {other:?}"),
        }
    }

    /// ovsdb-server 3.1 sends an error reply with an "error" object and no "result" member.
    #[tokio::test]
    async fn returns_the_servers_error_reply_and_stays_usable() {
        let (mut session, mut server) = pair();
        tokio::spawn(async move {
            let mut buffer = Vec::new();
            let request = receive(&mut server, &mut buffer).await;
            let reply = json!({"id": request["id"], "error": {"error": "unknown database",
                "details": "transact request specifies unknown database Open_vSwitch"}});
            send_raw(&mut server, &reply.to_string()).await;
            let request = receive(&mut server, &mut buffer).await;
            let reply = json!({"id": request["id"], "result": ["_Server"], "error": null});
            send_raw(&mut server, &reply.to_string()).await;
        });
        match bounded(session.call("transact", json!([DB]))).await {
            Err(OvsdbError::Protocol(reason)) => {
                assert!(reason.contains("unknown database"), "{reason}")
            }
            other => panic!("expected the server's error, got {other:?}"),
        }
        let databases = bounded(session.call("list_dbs", json!([]))).await;
        assert_eq!(databases.ok(), Some(json!(["_Server"])));
    }

    #[tokio::test]
    async fn answers_an_echo_before_the_reply() {
        let (mut session, mut server) = pair();
        let fake = tokio::spawn(async move {
            let mut buffer = Vec::new();
            let request = receive(&mut server, &mut buffer).await;
            send_raw(
                &mut server,
                r#"{"id":"echo","method":"echo","params":["probe",7]}"#,
            )
            .await;
            // The reply comes only once the echo has been answered.
            let answer = receive(&mut server, &mut buffer).await;
            let reply = json!({"id": request["id"], "result": ["Open_vSwitch"], "error": null});
            send_raw(&mut server, &reply.to_string()).await;
            answer
        });
        let databases = bounded(session.call("list_dbs", json!([]))).await;
        assert_eq!(databases.ok(), Some(json!(["Open_vSwitch"])));
        let answer = bounded(fake).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            answer,
            json!({"id": "echo", "result": ["probe", 7], "error": null})
        );
    }

    /// An echo, a notification and a stale reply arrive in the same read as our reply.
    #[tokio::test]
    async fn skips_what_is_not_its_reply_in_one_read() {
        let (mut session, mut server) = pair();
        session.next_id = 5;
        let fake = tokio::spawn(async move {
            let mut buffer = Vec::new();
            let request = receive(&mut server, &mut buffer).await;
            let burst = format!(
                "{}{}{}{}",
                r#"{"id":"echo","method":"echo","params":[]}"#,
                r#"{"id":null,"method":"update","params":[null,{}]}"#,
                r#"{"id":4,"result":["stale"],"error":null}"#,
                json!({"id": request["id"], "result": ["fresh"], "error": null}),
            );
            send_raw(&mut server, &burst).await;
            receive(&mut server, &mut buffer).await
        });
        let result = bounded(session.call("list_dbs", json!([]))).await;
        assert_eq!(result.ok(), Some(json!(["fresh"])));
        let answer = bounded(fake).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(answer, json!({"id": "echo", "result": [], "error": null}));
    }

    #[tokio::test]
    async fn a_connection_closed_mid_message_is_an_io_error() {
        let (mut session, mut server) = pair();
        tokio::spawn(async move {
            let _ = receive(&mut server, &mut Vec::new()).await;
            send_raw(&mut server, r#"{"id":1,"result":["Open_v"#).await;
        });
        match bounded(session.call("list_dbs", json!([]))).await {
            Err(OvsdbError::Io { reason, .. }) => assert!(reason.contains("closed"), "{reason}"),
            other => panic!("expected an I/O error, got {other:?}"),
        }
    }
}
