//! JSON-RPC 1.0 over one OVSDB connection, shared by every request of the daemon: calls
//! are multiplexed by id, a reader task routes replies to their callers, answers the
//! server's `echo` probes and feeds the connection's [`Cache`] from its monitor (the reply
//! to [`MONITOR_ID`] and every `update` notification, in the order the server sent them). When the server goes away (e.g. ovsdb-server restarted) the
//! connection is marked closed, pending calls fail, and the owner ([`super::Ovsdb`])
//! connects again on the next call.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::oneshot;

use super::cache::Cache;
use super::{OvsdbError, DB};

/// The request id of the connection's one `monitor` call (calls are numbered from 1).
pub(super) const MONITOR_ID: u64 = 0;

type Reply = Result<Value, OvsdbError>;

/// Calls waiting for their reply, or why the connection closed.
#[derive(Default)]
struct Pending {
    waiting: HashMap<u64, oneshot::Sender<Reply>>,
    closed: Option<String>,
}

pub(super) struct Connection {
    writer: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
    pending: Arc<Mutex<Pending>>,
    pub(super) next_id: AtomicU64,
    socket: String,
    cache: Arc<Cache>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

fn lock(pending: &Mutex<Pending>) -> std::sync::MutexGuard<'_, Pending> {
    pending.lock().unwrap_or_else(|p| p.into_inner())
}

impl Connection {
    /// Starts the reader task on the current runtime.
    pub(super) fn start(stream: UnixStream, socket: String) -> Connection {
        let (mut read, write) = stream.into_split();
        let writer = Arc::new(tokio::sync::Mutex::new(write));
        let pending = Arc::new(Mutex::new(Pending::default()));
        let cache = Arc::new(Cache::default());
        let reader = {
            let writer = writer.clone();
            let pending = pending.clone();
            let cache = cache.clone();
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                let reason = loop {
                    let message = match take_message(&mut buffer) {
                        Ok(Some(message)) => message,
                        Ok(None) => {
                            let mut chunk = [0u8; 16 * 1024];
                            match read.read(&mut chunk).await {
                                Ok(0) => break "connection closed".to_string(),
                                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                                Err(e) => break e.to_string(),
                            }
                            continue;
                        }
                        Err(e) => break e.to_string(),
                    };
                    if message["method"] == "echo" {
                        let reply = json!({"result": message["params"], "error": null, "id": message["id"]});
                        let bytes = serde_json::to_vec(&reply).unwrap_or_default();
                        if let Err(e) = writer.lock().await.write_all(&bytes).await {
                            break e.to_string();
                        }
                        continue;
                    }
                    if message["method"] == "update" {
                        cache.apply(&message["params"][1]);
                        continue;
                    }
                    // Replies carry our numeric id; notifications and stale replies are skipped.
                    let Some(id) = message["id"].as_u64() else {
                        continue;
                    };
                    if id == MONITOR_ID && message["error"].is_null() {
                        // Before any update that follows it.
                        cache.apply(&message["result"]);
                    }
                    let Some(waiter) = lock(&pending).waiting.remove(&id) else {
                        continue;
                    };
                    let reply = if message["error"].is_null() {
                        Ok(message["result"].clone())
                    } else {
                        Err(OvsdbError::Protocol(message["error"].to_string()))
                    };
                    // The caller may have given up (deadline): nothing to tell it.
                    let _ = waiter.send(reply);
                };
                let mut pending = lock(&pending);
                for (_, waiter) in pending.waiting.drain() {
                    let _ = waiter.send(Err(OvsdbError::Io {
                        socket: String::new(),
                        reason: reason.clone(),
                    }));
                }
                pending.closed = Some(reason);
                cache.close();
            })
        };
        Connection {
            writer,
            pending,
            next_id: AtomicU64::new(1),
            socket,
            cache,
            reader,
        }
    }

    /// What the connection's monitor has told it (empty until [`Connection::monitor`]).
    pub(super) fn cache(&self) -> &Cache {
        &self.cache
    }

    /// Starts the connection's monitor; its reply fills the cache, updates keep it current.
    pub(super) async fn monitor(&self, requests: Value) -> Result<(), OvsdbError> {
        self.call_id(MONITOR_ID, "monitor", json!([DB, "evio", requests]))
            .await
            .map(|_| ())
    }

    pub(super) fn is_closed(&self) -> bool {
        lock(&self.pending).closed.is_some()
    }

    fn io(&self, reason: impl Into<String>) -> OvsdbError {
        OvsdbError::Io {
            socket: self.socket.clone(),
            reason: reason.into(),
        }
    }

    /// Sends `method(params)` and returns its result.
    pub(super) async fn call(&self, method: &str, params: Value) -> Result<Value, OvsdbError> {
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        self.call_id(id, method, params).await
    }

    async fn call_id(&self, id: u64, method: &str, params: Value) -> Result<Value, OvsdbError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = lock(&self.pending);
            if let Some(reason) = &pending.closed {
                return Err(self.io(reason.clone()));
            }
            pending.waiting.insert(id, tx);
        }
        // Removes the waiter however this call ends (an answer, an error, a deadline).
        struct Forget<'a>(&'a Mutex<Pending>, u64);
        impl Drop for Forget<'_> {
            fn drop(&mut self) {
                lock(self.0).waiting.remove(&self.1);
            }
        }
        let _forget = Forget(&self.pending, id);
        // JSON-RPC 1.0: no "jsonrpc" member (the server rejects 2.0 messages).
        let bytes = serde_json::to_vec(&json!({"method": method, "params": params, "id": id}))
            .map_err(|e| OvsdbError::Protocol(e.to_string()))?;
        self.writer
            .lock()
            .await
            .write_all(&bytes)
            .await
            .map_err(|e| self.io(e.to_string()))?;
        match rx.await {
            Ok(Err(OvsdbError::Io { reason, .. })) => Err(self.io(reason)),
            Ok(reply) => reply,
            Err(_) => Err(self.io("connection closed")),
        }
    }

    /// Runs `operations` atomically; an error in any operation fails the whole transaction.
    pub(super) async fn transact(&self, operations: Vec<Value>) -> Result<Vec<Value>, OvsdbError> {
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
pub(super) fn take_message(buffer: &mut Vec<u8>) -> Result<Option<Value>, OvsdbError> {
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

#[cfg(test)]
mod tests {
    //! The JSON-RPC layer against a fake server on the other end of a socket pair, which
    //! controls exactly how bytes arrive. tests/ovsdb_crate.rs runs it against a real
    //! ovsdb-server.

    use super::*;
    use std::time::Duration;

    fn pair() -> (Connection, UnixStream) {
        let (ours, server) = UnixStream::pair().unwrap_or_else(|e| panic!("socketpair: {e}"));
        (Connection::start(ours, "socketpair".into()), server)
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
        let (session, mut server) = pair();
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
        let (session, mut server) = pair();
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
        let (session, mut server) = pair();
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
        let (session, mut server) = pair();
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
        let (session, mut server) = pair();
        session.next_id.store(5, Ordering::SeqCst);
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
        let (session, mut server) = pair();
        tokio::spawn(async move {
            let _ = receive(&mut server, &mut Vec::new()).await;
            send_raw(&mut server, r#"{"id":1,"result":["Open_v"#).await;
        });
        match bounded(session.call("list_dbs", json!([]))).await {
            Err(OvsdbError::Io { reason, .. }) => assert!(reason.contains("closed"), "{reason}"),
            other => panic!("expected an I/O error, got {other:?}"),
        }
        // Every later call fails at once, without waiting for an answer.
        assert!(session.is_closed());
        match bounded(session.call("list_dbs", json!([]))).await {
            Err(OvsdbError::Io { .. }) => {}
            other => panic!("expected an I/O error, got {other:?}"),
        }
    }
}
