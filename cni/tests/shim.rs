//! The real `evio-cni` binary, exec'd as kubelet does, against a stand-in daemon on a real
//! unix socket (the daemon's CNI service lands with the dataplane; this pins the shim's side
//! of the protocol and its CNI error behaviour).

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::Path;

use evio_test_support::cni::exec_cni;
use serde_json::{json, Value};

fn exec(env: &[(&str, &str)], stdin: &str) -> (i32, Value) {
    exec_cni(env.iter().copied(), stdin.as_bytes())
}

fn add_env(container: &str) -> Vec<(&'static str, String)> {
    vec![
        ("CNI_COMMAND", "ADD".into()),
        ("CNI_CONTAINERID", container.into()),
        ("CNI_NETNS", "/run/netns/test".into()),
        ("CNI_IFNAME", "eth0".into()),
        ("CNI_ARGS", "K8S_POD_NAME=p".into()),
        ("CNI_PATH", "/opt/cni/bin".into()),
    ]
}

fn config(socket: &Path) -> String {
    json!({
        "cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "evio-cni",
        "socket": socket, "prevResult": {"cniVersion": "1.0.0", "interfaces": []}
    })
    .to_string()
}

/// Serves one connection: returns the request it received, answers with `reply`.
fn stand_in_daemon(socket: &Path, reply: Vec<u8>) -> std::thread::JoinHandle<Value> {
    let listener = UnixListener::bind(socket).unwrap_or_else(|e| panic!("{e}"));
    std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap_or_else(|e| panic!("{e}"));
        let mut request = Vec::new();
        conn.read_to_end(&mut request)
            .unwrap_or_else(|e| panic!("{e}"));
        conn.write_all(&reply).unwrap_or_else(|e| panic!("{e}"));
        serde_json::from_slice(&request).unwrap_or_else(|e| panic!("request not JSON: {e}"))
    })
}

fn as_refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

#[test]
fn version_is_answered_without_the_daemon() {
    let (code, out) = exec(&[("CNI_COMMAND", "VERSION")], r#"{"cniVersion":"0.3.1"}"#);
    assert_eq!(code, 0);
    assert_eq!(out["cniVersion"], "0.3.1");
    assert_eq!(
        out["supportedVersions"],
        json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
    );
}

#[test]
fn forwards_everything_and_prints_the_daemon_result() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let socket = dir.path().join("cni.sock");
    let result = json!({"cniVersion": "1.0.0", "ips": [{"address": "10.244.3.2/16", "gateway": "10.244.3.1"}]});
    let daemon = stand_in_daemon(
        &socket,
        serde_json::to_vec(&json!({"ok": result})).unwrap_or_default(),
    );
    let env = add_env("c-forward");
    let (code, out) = exec(&as_refs(&env), &config(&socket));
    assert_eq!((code, &out), (0, &result));
    let request = daemon.join().unwrap_or_else(|_| panic!("daemon thread"));
    assert_eq!(request["command"], "ADD");
    assert_eq!(request["containerId"], "c-forward");
    assert_eq!(request["netns"], "/run/netns/test");
    assert_eq!(request["ifname"], "eth0");
    assert_eq!(request["args"], "K8S_POD_NAME=p");
    assert_eq!(request["path"], "/opt/cni/bin");
    assert_eq!(request["config"]["prevResult"]["cniVersion"], "1.0.0");
}

#[test]
fn daemon_errors_and_garbage_become_cni_errors() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let env = add_env("c-err");

    let socket = dir.path().join("err.sock");
    let error = json!({"cniVersion": "1.0.0", "code": 7, "msg": "bad bridge", "details": "x"});
    let daemon = stand_in_daemon(
        &socket,
        serde_json::to_vec(&json!({"error": error})).unwrap_or_default(),
    );
    let (code, out) = exec(&as_refs(&env), &config(&socket));
    assert_eq!((code, &out), (1, &error));
    let _ = daemon.join();

    let socket = dir.path().join("garbage.sock");
    let daemon = stand_in_daemon(&socket, b"<html>".to_vec());
    let (code, out) = exec(&as_refs(&env), &config(&socket));
    assert_eq!(code, 1);
    assert_eq!(out["code"], 5, "{out}");
    let _ = daemon.join();
}

#[test]
fn unreachable_daemon_is_try_again_later_naming_the_socket() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let socket = dir.path().join("nobody.sock");
    let env = add_env("c-none");
    let (code, out) = exec(&as_refs(&env), &config(&socket));
    assert_eq!(code, 1);
    assert_eq!(out["code"], 11, "{out}");
    assert_eq!(out["cniVersion"], "1.0.0");
    assert_eq!(out["details"], socket.to_string_lossy().as_ref());
}

#[test]
fn status_without_the_daemon_is_plugin_not_available() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let socket = dir.path().join("nobody.sock");
    let config = json!({"cniVersion": "1.1.0", "name": "n", "type": "evio-cni", "socket": socket});
    let (code, out) = exec(&[("CNI_COMMAND", "STATUS")], &config.to_string());
    assert_eq!(code, 1);
    assert_eq!(out["code"], 50, "{out}");
    assert!(
        out["msg"]
            .as_str()
            .is_some_and(|m| m.contains("not reachable")),
        "{out}"
    );
}

#[test]
fn bad_invocations_get_the_spec_codes() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let socket = dir.path().join("unused.sock");
    let (code, out) = exec(
        &[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "c")],
        &config(&socket),
    );
    assert_eq!((code, out["code"].as_u64()), (1, Some(4)), "{out}");
    assert!(
        out["msg"]
            .as_str()
            .unwrap_or_default()
            .contains("CNI_NETNS"),
        "{out}"
    );
    let env = add_env("c-bad");
    let (code, out) = exec(&as_refs(&env), "not json");
    assert_eq!((code, out["code"].as_u64()), (1, Some(6)), "{out}");
    let (code, out) = exec(&as_refs(&env), r#"{"cniVersion":"9.9.9"}"#);
    assert_eq!((code, out["code"].as_u64()), (1, Some(1)), "{out}");
}
