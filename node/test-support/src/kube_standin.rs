//! A small local stand-in for the Kubernetes API server, for tests only: no real API server
//! can be installed on the test machines. It serves the real paths and JSON that evio uses:
//!
//! - `GET /api/v1/nodes`: a `NodeList` with `metadata.resourceVersion`;
//! - `GET /api/v1/nodes?watch=true&resourceVersion=N`: newline-delimited `WatchEvent`s
//!   (`ADDED`, `MODIFIED`, `DELETED`, and a `BOOKMARK` at the start), replaying everything
//!   after `N`, then live; an `ERROR` event with a 410 `Status` when `N` was compacted;
//! - `GET /api/v1/nodes/{name}`: the Node, or 404 with a `Status` body;
//! - `PATCH /api/v1/nodes/{name}`: JSON merge patch (RFC 7386); any other content type gets
//!   415, an unknown node 404 (both with a `Status` body);
//! - `POST /api/v1/namespaces/{ns}/configmaps`: create, 201 with the object (uid and
//!   resourceVersion set), or 409 `AlreadyExists`, atomically as the API server does;
//!   `GET`/`PATCH` (merge patch) `/api/v1/namespaces/{ns}/configmaps/{name}`, 404 `NotFound`.
//!
//! It runs on its own thread and runtime, so blocking test code never starves it.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::mpsc;

#[derive(Default)]
struct Cluster {
    version: u64,
    nodes: BTreeMap<String, Value>,
    /// Every event line with its resource version, for watches that resume.
    history: Vec<(u64, String)>,
    watchers: Vec<mpsc::UnboundedSender<String>>,
    patches: u64,
    lists: u64,
    /// Watches from before this resource version get `410 Gone` (history compacted).
    compacted: u64,
    /// ConfigMaps by (namespace, name).
    config_maps: BTreeMap<(String, String), Value>,
    /// ConfigMap creates answered 201 and 409.
    creates: u64,
    create_conflicts: u64,
}

impl Cluster {
    fn event(&mut self, kind: &str, object: &Value) {
        let line = format!("{}\n", json!({"type": kind, "object": object}));
        self.history.push((self.version, line.clone()));
        self.watchers.retain(|w| w.send(line.clone()).is_ok());
    }

    fn bump(&mut self) -> String {
        self.version += 1;
        self.version.to_string()
    }
}

type Shared = Arc<Mutex<Cluster>>;

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Cluster> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

pub struct KubeStandIn {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    shared: Shared,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl KubeStandIn {
    pub fn start() -> KubeStandIn {
        let shared: Shared = Arc::default();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let state = shared.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap_or_else(|e| panic!("runtime: {e}"));
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .unwrap_or_else(|e| panic!("bind: {e}"));
                let _ = addr_tx.send(listener.local_addr().map(|a| a.to_string()));
                let app = Router::new()
                    .route("/api/v1/nodes", get(list_or_watch))
                    .route("/api/v1/nodes/{name}", get(get_node).patch(patch_node))
                    .route(
                        "/api/v1/namespaces/{ns}/configmaps",
                        axum::routing::post(create_config_map),
                    )
                    .route(
                        "/api/v1/namespaces/{ns}/configmaps/{name}",
                        get(get_config_map).patch(patch_config_map),
                    )
                    .with_state(state);
                tokio::select! {
                    served = axum::serve(listener, app) => if let Err(e) = served { eprintln!("stand-in: {e}") },
                    _ = stop_rx => {}
                }
            });
            // Dropping the runtime ends the open watch streams.
        });
        let addr = addr_rx
            .recv()
            .unwrap_or_else(|e| panic!("stand-in did not start: {e}"))
            .unwrap_or_else(|e| panic!("stand-in address: {e}"));
        KubeStandIn {
            url: format!("http://{addr}"),
            shared,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// A kubeconfig (YAML, no credentials) pointing at this stand-in, written into `dir`.
    pub fn write_kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: standin\n  cluster:\n    server: {}\n\
             contexts:\n- name: standin\n  context:\n    cluster: standin\n    user: standin\n\
             current-context: standin\nusers:\n- name: standin\n  user: {{}}\n",
            self.url
        );
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
        path
    }

    /// Registers a Node (as the kubelet would), with a new uid.
    pub fn add_node(&self, name: &str) {
        let mut cluster = lock(&self.shared);
        let version = cluster.bump();
        let node = json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "uid": format!("uid-{name}-{version}"),
                "resourceVersion": version,
                "labels": {"kubernetes.io/hostname": name},
            },
            "spec": {},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]},
        });
        cluster.nodes.insert(name.to_string(), node.clone());
        cluster.event("ADDED", &node);
    }

    /// Deletes a Node (as `kubectl delete node` would).
    pub fn delete_node(&self, name: &str) {
        let mut cluster = lock(&self.shared);
        let version = cluster.bump();
        if let Some(mut node) = cluster.nodes.remove(name) {
            node["metadata"]["resourceVersion"] = json!(version);
            cluster.event("DELETED", &node);
        }
    }

    /// Deletes a Node while every watcher is disconnected and the history is compacted, so
    /// no watcher ever sees the DELETED event: only a relist shows the Node is gone.
    pub fn delete_node_unseen(&self, name: &str) {
        let mut cluster = lock(&self.shared);
        cluster.bump();
        cluster.nodes.remove(name);
        cluster.compacted = cluster.version;
        cluster.history.clear();
        cluster.watchers.clear(); // ends the open watch streams
    }

    /// Marks a Node NotReady (a node that stopped answering still exists).
    pub fn set_not_ready(&self, name: &str) {
        let mut cluster = lock(&self.shared);
        let version = cluster.bump();
        let Some(node) = cluster.nodes.get_mut(name) else {
            return;
        };
        node["metadata"]["resourceVersion"] = json!(version);
        node["status"]["conditions"] = json!([{"type": "Ready", "status": "Unknown"}]);
        let node = node.clone();
        cluster.event("MODIFIED", &node);
    }

    pub fn node(&self, name: &str) -> Option<Value> {
        lock(&self.shared).nodes.get(name).cloned()
    }

    /// The Node's annotation `key`, if the Node and the annotation exist.
    pub fn annotation(&self, name: &str, key: &str) -> Option<String> {
        self.node(name)?["metadata"]["annotations"][key]
            .as_str()
            .map(str::to_string)
    }

    /// How many Node lists were served.
    pub fn lists(&self) -> u64 {
        lock(&self.shared).lists
    }

    /// How many merge patches were applied.
    pub fn patches(&self) -> u64 {
        lock(&self.shared).patches
    }

    pub fn config_map(&self, namespace: &str, name: &str) -> Option<Value> {
        lock(&self.shared)
            .config_maps
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// (ConfigMap creates answered 201, answered 409 AlreadyExists).
    pub fn config_map_creates(&self) -> (u64, u64) {
        let cluster = lock(&self.shared);
        (cluster.creates, cluster.create_conflicts)
    }
}

impl Drop for KubeStandIn {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn status(code: StatusCode, reason: &str, message: String) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16(),
    });
    (code, Json(body)).into_response()
}

fn not_found(name: &str) -> Response {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("nodes \"{name}\" not found"),
    )
}

async fn list_or_watch(
    State(shared): State<Shared>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    if query.get("watch").map(String::as_str) != Some("true") {
        let mut cluster = lock(&shared);
        cluster.lists += 1;
        let items: Vec<&Value> = cluster.nodes.values().collect();
        let body = json!({
            "kind": "NodeList", "apiVersion": "v1",
            "metadata": {"resourceVersion": cluster.version.to_string()},
            "items": items,
        });
        return Json(body).into_response();
    }
    let from: u64 = match query.get("resourceVersion").map(|v| v.parse()) {
        None => 0,
        Some(Ok(v)) => v,
        Some(Err(_)) => {
            return status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "resourceVersion must be a number here".into(),
            )
        }
    };
    let (tx, rx) = mpsc::unbounded_channel::<String>();
    {
        let mut cluster = lock(&shared);
        if from < cluster.compacted {
            let gone = json!({"type": "ERROR", "object": {
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": format!("too old resource version: {from} ({})", cluster.compacted),
                "reason": "Expired", "code": 410}});
            let _ = tx.send(format!("{gone}\n"));
            drop(tx); // the stream ends after the error, as the API server's does
        } else {
            let bookmark = json!({"type": "BOOKMARK", "object": {
            "kind": "Node", "apiVersion": "v1",
            "metadata": {"resourceVersion": from.to_string()}}});
            let _ = tx.send(format!("{bookmark}\n"));
            for (version, line) in &cluster.history {
                if *version > from {
                    let _ = tx.send(line.clone());
                }
            }
            cluster.watchers.push(tx);
        }
    }
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        let line = rx.recv().await?;
        Some((Ok::<_, Infallible>(Bytes::from(line)), rx))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|e| {
            status(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                e.to_string(),
            )
        })
}

async fn get_node(State(shared): State<Shared>, UrlPath(name): UrlPath<String>) -> Response {
    match lock(&shared).nodes.get(&name) {
        Some(node) => Json(node.clone()).into_response(),
        None => not_found(&name),
    }
}

async fn patch_node(
    State(shared): State<Shared>,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if content_type != "application/merge-patch+json" {
        return status(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            format!("the body of the request was in an unknown format - accepted media types include: application/merge-patch+json (got {content_type:?})"),
        );
    }
    let patch: Value = match serde_json::from_slice(&body) {
        Ok(patch) => patch,
        Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", e.to_string()),
    };
    let mut cluster = lock(&shared);
    if !cluster.nodes.contains_key(&name) {
        return not_found(&name);
    }
    let version = cluster.bump();
    let Some(node) = cluster.nodes.get_mut(&name) else {
        return not_found(&name);
    };
    merge_patch(node, &patch);
    node["metadata"]["name"] = json!(name);
    node["metadata"]["resourceVersion"] = json!(version);
    let node = node.clone();
    cluster.patches += 1;
    cluster.event("MODIFIED", &node);
    Json(node).into_response()
}

async fn create_config_map(
    State(shared): State<Shared>,
    UrlPath(namespace): UrlPath<String>,
    body: Bytes,
) -> Response {
    let mut object: Value = match serde_json::from_slice(&body) {
        Ok(object) => object,
        Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", e.to_string()),
    };
    let Some(name) = object["metadata"]["name"].as_str().map(str::to_string) else {
        return status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            "ConfigMap \"\" is invalid: metadata.name: Required value: name is required".into(),
        );
    };
    let mut cluster = lock(&shared);
    let key = (namespace.clone(), name.clone());
    if cluster.config_maps.contains_key(&key) {
        cluster.create_conflicts += 1;
        return status(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("configmaps \"{name}\" already exists"),
        );
    }
    let version = cluster.bump();
    object["apiVersion"] = json!("v1");
    object["kind"] = json!("ConfigMap");
    object["metadata"]["namespace"] = json!(namespace);
    object["metadata"]["uid"] = json!(format!("uid-cm-{name}-{version}"));
    object["metadata"]["resourceVersion"] = json!(version);
    cluster.config_maps.insert(key, object.clone());
    cluster.creates += 1;
    (StatusCode::CREATED, Json(object)).into_response()
}

fn config_map_not_found(name: &str) -> Response {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("configmaps \"{name}\" not found"),
    )
}

async fn get_config_map(
    State(shared): State<Shared>,
    UrlPath((namespace, name)): UrlPath<(String, String)>,
) -> Response {
    match lock(&shared).config_maps.get(&(namespace, name.clone())) {
        Some(object) => Json(object.clone()).into_response(),
        None => config_map_not_found(&name),
    }
}

async fn patch_config_map(
    State(shared): State<Shared>,
    UrlPath((namespace, name)): UrlPath<(String, String)>,
    body: Bytes,
) -> Response {
    let patch: Value = match serde_json::from_slice(&body) {
        Ok(patch) => patch,
        Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", e.to_string()),
    };
    let mut cluster = lock(&shared);
    let version = cluster.bump();
    let Some(object) = cluster.config_maps.get_mut(&(namespace, name.clone())) else {
        return config_map_not_found(&name);
    };
    merge_patch(object, &patch);
    object["metadata"]["resourceVersion"] = json!(version);
    Json(object.clone()).into_response()
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(fields) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    if let Value::Object(map) = target {
        for (key, value) in fields {
            if value.is_null() {
                map.remove(key);
            } else {
                merge_patch(map.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}
