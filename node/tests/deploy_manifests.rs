//! deploy/ stays valid and in step with the binaries:
//! - every manifest validates against the Kubernetes 1.27 (minimum) and 1.30 schemas
//!   (kubernetes-validate, strict, offline) and passes yamllint;
//! - every subcommand and `--flag` the DaemonSet passes to evio-node exists in that
//!   subcommand's `--help` of the built binary, and every `$(VAR)` it uses is defined;
//! - the paths it passes and mounts are the ones the binaries use by default (CNI socket,
//!   conflist dir, data dir, OVSDB socket, host-local state, CNI bin dir);
//! - the container build copies binaries and files that exist, and the install script
//!   installs every plugin the conflist names, atomically;
//! - no node is named to bootstrap (the cluster record decides) and the init script runs
//!   config-gen only with a replica;
//! - `kubectl kustomize deploy/` (with and without the etcd-mirror component) renders a
//!   complete, valid install, and refuses to without a cluster token.
//!
//! The Python tools come from scripts/install-py-tools.sh (run by scripts/install-deps.sh);
//! YAML is read through the same venv's PyYAML, so no YAML crate is needed. Under CI=true a
//! missing tool fails the test.
//!
//! One file (over 900 lines) on purpose: one check per property of deploy/, all sharing the YAML
//! loading and DaemonSet parsing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use evio_test_support::output_ok;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_evio-node");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or_else(|| panic!("node/ has a parent"))
        .to_path_buf()
}

fn deploy() -> PathBuf {
    repo().join("deploy")
}

/// The venv with kubernetes-validate, yamllint and PyYAML; None (and a note) outside CI.
fn py_tools() -> Option<PathBuf> {
    let validate = evio_test_support::py_tool("kubernetes-validate")?;
    evio_test_support::py_tool("yamllint")?;
    validate.parent()?.parent().map(Path::to_path_buf)
}

/// The manifests `kubectl apply -k deploy/` applies (the kustomization's resources).
fn manifest_files(tools: &Path) -> Vec<PathBuf> {
    let kustomization = &load_yaml(tools, &deploy().join("kustomization.yaml"))[0];
    kustomization["resources"]
        .as_array()
        .unwrap_or_else(|| panic!("kustomization.yaml has no resources"))
        .iter()
        .map(|r| deploy().join(r.as_str().unwrap_or_else(|| panic!("resource {r}"))))
        .collect()
}

/// All documents of a YAML file, as JSON.
fn load_yaml(tools: &Path, path: &Path) -> Vec<Value> {
    let mut python = Command::new(tools.join("bin/python"));
    python
        .args([
            "-c",
            "import json, sys, yaml\n\
             print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None]))",
        ])
        .arg(path);
    let json = output_ok(&mut python);
    serde_json::from_str(&json).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn daemonset(tools: &Path) -> Value {
    let docs = load_yaml(tools, &deploy().join("daemonset.yaml"));
    docs.into_iter()
        .find(|d| d["kind"] == "DaemonSet")
        .unwrap_or_else(|| panic!("daemonset.yaml holds no DaemonSet"))
}

/// RFC 6902 `add` (the only op the overlays use): append with `/-`, else set the member.
fn apply_json_patch(doc: &mut Value, ops: &[Value]) {
    for op in ops {
        assert_eq!(op["op"], "add", "unsupported patch op {op}");
        let path = op["path"]
            .as_str()
            .unwrap_or_else(|| panic!("patch path {op}"));
        let (parent, last) = path.rsplit_once('/').unwrap_or_else(|| panic!("{path}"));
        let target = doc
            .pointer_mut(parent)
            .unwrap_or_else(|| panic!("patch target {parent} does not exist"));
        if last == "-" {
            target
                .as_array_mut()
                .unwrap_or_else(|| panic!("{parent} is not a list"))
                .push(op["value"].clone());
        } else {
            target[last] = op["value"].clone();
        }
    }
}

/// The DaemonSet as the base and with each component: (component dir, DaemonSet). Rendered
/// here without kustomize; `kustomize_renders_a_complete_install` checks it against kubectl.
fn daemonsets(tools: &Path) -> Vec<(&'static str, Value)> {
    let base = daemonset(tools);
    let overlay = deploy().join("etcd-mirror");
    let kustomization = &load_yaml(tools, &overlay.join("kustomization.yaml"))[0];
    assert_eq!(kustomization["kind"], "Component");
    let mut etcd = base.clone();
    for patch in kustomization["patches"].as_array().into_iter().flatten() {
        assert_eq!(patch["target"]["kind"], "DaemonSet");
        let file = patch["path"].as_str().unwrap_or_else(|| panic!("{patch}"));
        let ops = load_yaml(tools, &overlay.join(file));
        let ops = ops[0].as_array().cloned().unwrap_or_else(|| ops.clone());
        apply_json_patch(&mut etcd, &ops);
    }
    vec![("deploy", base), ("deploy/etcd-mirror", etcd)]
}

fn containers(ds: &Value) -> Vec<&Value> {
    let spec = &ds["spec"]["template"]["spec"];
    let mut all: Vec<&Value> = Vec::new();
    for key in ["initContainers", "containers"] {
        if let Some(list) = spec[key].as_array() {
            all.extend(list);
        }
    }
    all
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn validate(tools: &Path, version: &str, files: &[PathBuf]) -> std::process::Output {
    Command::new(tools.join("bin/kubernetes-validate"))
        .args(["--strict", "--no-warn", "-k", version])
        .args(files)
        .output()
        .unwrap_or_else(|e| panic!("kubernetes-validate: {e}"))
}

#[test]
fn manifests_validate_offline_against_kubernetes_schemas() {
    let Some(tools) = py_tools() else { return };
    let files = manifest_files(&tools);
    // Every manifest in deploy/ is applied: none forgotten in the kustomization.
    let mut on_disk: Vec<PathBuf> = std::fs::read_dir(deploy())
        .unwrap_or_else(|e| panic!("{e}"))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .filter(|p| !p.ends_with("kustomization.yaml") && !p.ends_with(".yamllint.yaml"))
        .collect();
    on_disk.sort();
    let mut listed = files.clone();
    listed.sort();
    assert_eq!(
        listed, on_disk,
        "kustomization.yaml resources vs deploy/*.yaml"
    );

    let scratch = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut files = files;
    for (overlay, ds) in daemonsets(&tools).into_iter().skip(1) {
        let rendered = scratch
            .path()
            .join(format!("{}.json", overlay.replace('/', "-")));
        std::fs::write(&rendered, ds.to_string()).unwrap_or_else(|e| panic!("{e}"));
        files.push(rendered);
    }
    for version in ["1.27.0", "1.30.0"] {
        let out = validate(&tools, version, &files);
        assert!(
            out.status.success(),
            "manifests invalid for Kubernetes {version}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // The validator really rejects a bad manifest (an unknown field, a wrong type): a
    // validator that passes everything would prove nothing.
    let mut bad = load_yaml(&tools, &deploy().join("daemonset.yaml"))
        .into_iter()
        .find(|d| d["kind"] == "DaemonSet")
        .unwrap_or_else(|| panic!("no DaemonSet"));
    bad["spec"]["template"]["spec"]["hostNetwork"] = Value::from("yes");
    let bad_file = scratch.path().join("bad.json");
    std::fs::write(&bad_file, bad.to_string()).unwrap_or_else(|e| panic!("{e}"));
    let out = validate(&tools, "1.30.0", &[bad_file]);
    assert!(
        !out.status.success(),
        "kubernetes-validate accepted hostNetwork: \"yes\""
    );
}

#[test]
fn manifests_pass_yamllint() {
    let Some(tools) = py_tools() else { return };
    let mut files = manifest_files(&tools);
    files.push(deploy().join("kustomization.yaml"));
    for file in ["kustomization.yaml", "daemonset-etcd.yaml"] {
        files.push(deploy().join("etcd-mirror").join(file));
    }
    output_ok(
        Command::new(tools.join("bin/yamllint"))
            .arg("-s")
            .arg("-c")
            .arg(deploy().join(".yamllint.yaml"))
            .args(&files),
    );
}

/// One evio-node invocation in the DaemonSet: container, subcommand, flags (name -> value).
struct Invocation {
    container: String,
    subcommand: String,
    flags: Vec<(String, Option<String>)>,
}

/// Flags in `tokens`: `--name=value`, `--name value` or a bare `--name`.
fn parse_flags(tokens: &[String]) -> Vec<(String, Option<String>)> {
    let mut flags = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let token = &tokens[i];
        assert!(
            token.starts_with("--"),
            "unexpected positional argument {token:?} in {tokens:?}"
        );
        if let Some((name, value)) = token.split_once('=') {
            flags.push((name.to_string(), Some(value.to_string())));
        } else if tokens
            .get(i + 1)
            .is_some_and(|next| !next.starts_with("--"))
        {
            flags.push((token.clone(), Some(tokens[i + 1].clone())));
            i += 1;
        } else {
            flags.push((token.clone(), None));
        }
        i += 1;
    }
    flags
}

/// The evio-node calls of every container: a direct `evio-node SUB ...` command, or a shell
/// script (`sh -c SCRIPT NAME` with the flags in `args`) that execs
/// `/usr/local/bin/evio-node SUB "$@"` and
/// may add flags itself (`set -- --flag "$@"`).
fn invocations(ds: &Value) -> Vec<Invocation> {
    let mut found = Vec::new();
    for c in containers(ds) {
        let name = c["name"].as_str().unwrap_or_default().to_string();
        let command = strings(&c["command"]);
        let args = strings(&c["args"]);
        if command.first().is_some_and(|c| c.ends_with("/evio-node")) {
            let mut tokens: Vec<String> = command[1..].to_vec();
            tokens.extend(args);
            let subcommand = tokens.remove(0);
            found.push(Invocation {
                container: name,
                subcommand,
                flags: parse_flags(&tokens),
            });
        } else if command.len() >= 3 && command[0].ends_with("sh") && command[1] == "-c" {
            let script = &command[2];
            let subs: BTreeSet<String> = script
                .split("/bin/evio-node ")
                .skip(1)
                .filter_map(|rest| rest.split_whitespace().next().map(String::from))
                .collect();
            if subs.is_empty() {
                continue;
            }
            assert_eq!(subs.len(), 1, "{name}: one evio-node call per script");
            let mut flags = parse_flags(&args);
            // flags the script adds itself
            for word in script.split_whitespace() {
                let word = word.trim_matches(|c| c == '"' || c == '\'');
                if word.starts_with("--") && word.len() > 2 {
                    flags.push((word.to_string(), None));
                }
            }
            found.push(Invocation {
                container: name,
                subcommand: subs.into_iter().next().unwrap_or_default(),
                flags,
            });
        }
    }
    found
}

/// `flag` as a whole word in `--help` output (so `--data-dir` does not match `--data-dirs`).
fn help_has_flag(help: &str, flag: &str) -> bool {
    help.match_indices(flag).any(|(at, _)| {
        let after = help[at + flag.len()..].chars().next();
        !after.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-')
    })
}

#[test]
fn every_flag_the_daemonset_passes_exists_in_evio_node_help() {
    let Some(tools) = py_tools() else { return };
    // The matcher itself: a real flag is found, a prefix or an invented one is not.
    let run_help = Command::new(BIN)
        .args(["run", "--help"])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let run_help = String::from_utf8_lossy(&run_help.stdout);
    assert!(help_has_flag(&run_help, "--data-dir"));
    assert!(!help_has_flag(&run_help, "--data"));
    assert!(!help_has_flag(&run_help, "--no-such-flag"));
    let mut missing = Vec::new();
    for (overlay, ds) in daemonsets(&tools) {
        let calls = invocations(&ds);
        let subcommands: BTreeSet<&str> = calls.iter().map(|c| c.subcommand.as_str()).collect();
        assert!(
            subcommands.contains("run") && subcommands.contains("config-gen"),
            "the DaemonSet runs evio-node run and config-gen: {subcommands:?}"
        );
        for call in &calls {
            let out = Command::new(BIN)
                .args([&call.subcommand, "--help"])
                .output()
                .unwrap_or_else(|e| panic!("{BIN}: {e}"));
            if !out.status.success() {
                missing.push(format!(
                    "{overlay}: {}: evio-node has no subcommand {:?}",
                    call.container, call.subcommand
                ));
                continue;
            }
            let help = String::from_utf8_lossy(&out.stdout);
            for (flag, _) in &call.flags {
                if !help_has_flag(&help, flag) {
                    missing.push(format!(
                        "{overlay}: {}: evio-node {} has no {flag}",
                        call.container, call.subcommand
                    ));
                }
            }
        }
    }
    missing.dedup();
    assert!(
        missing.is_empty(),
        "flags the manifests pass but the binary lacks:\n{}",
        missing.join("\n")
    );
}

#[test]
fn every_variable_the_daemonset_expands_is_defined() {
    let Some(tools) = py_tools() else { return };
    for (_, ds) in daemonsets(&tools) {
        for c in containers(&ds) {
            let defined: BTreeSet<String> = c["env"]
                .as_array()
                .map(|env| {
                    env.iter()
                        .filter_map(|e| e["name"].as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            let mut words = strings(&c["command"]);
            words.extend(strings(&c["args"]));
            for word in &words {
                // Kubernetes leaves an undefined $(VAR) as it is: the binary would get it literally.
                for part in word.split("$(").skip(1) {
                    let var = part.split(')').next().unwrap_or_default();
                    assert!(
                        defined.contains(var),
                        "{}: $({var}) is not in its env",
                        c["name"]
                    );
                }
                // ${VAR} in a script is the shell's: it must come from the env too.
                for part in word.split("${").skip(1) {
                    let var = part.split(['}', ':']).next().unwrap_or_default();
                    assert!(
                        defined.contains(var),
                        "{}: ${{{var}}} is not in its env",
                        c["name"]
                    );
                }
            }
        }
    }
}

/// container path -> host path, for a container's hostPath mounts.
fn host_mounts(ds: &Value, container: &Value) -> BTreeMap<String, String> {
    let volumes = &ds["spec"]["template"]["spec"]["volumes"];
    let mut mounts = BTreeMap::new();
    for m in container["volumeMounts"].as_array().into_iter().flatten() {
        let name = m["name"].as_str().unwrap_or_default();
        let volume = volumes
            .as_array()
            .and_then(|v| v.iter().find(|v| v["name"] == name))
            .unwrap_or_else(|| panic!("{}: volume {name} is not defined", container["name"]));
        if let Some(host) = volume["hostPath"]["path"].as_str() {
            let at = m["mountPath"].as_str().unwrap_or_default();
            mounts.insert(at.to_string(), host.to_string());
        }
    }
    mounts
}

fn flag_value<'a>(call: &'a Invocation, flag: &str) -> &'a str {
    call.flags
        .iter()
        .find(|(f, _)| f == flag)
        .and_then(|(_, v)| v.as_deref())
        .unwrap_or_else(|| panic!("{}: no {flag} value", call.container))
}

#[test]
fn mounted_paths_are_the_ones_the_binaries_use() {
    let Some(tools) = py_tools() else { return };
    let ds = daemonset(&tools);
    let calls = invocations(&ds);
    let node = containers(&ds)
        .into_iter()
        .find(|c| c["name"] == "evio-node")
        .unwrap_or_else(|| panic!("no evio-node container"));
    let mounts = host_mounts(&ds, node);
    let run = calls
        .iter()
        .find(|c| c.subcommand == "run")
        .unwrap_or_else(|| panic!("no evio-node run"));

    // The socket evio-cni (on the host) dials is the default in every conflist and the
    // daemon serves it inside a host directory at the same path.
    let socket = flag_value(run, "--cni-socket");
    assert_eq!(socket, evio_cni::spec::DEFAULT_SOCKET);
    let socket_dir = Path::new(socket).parent().and_then(Path::to_str);
    assert_eq!(
        socket_dir.and_then(|d| mounts.get(d)).map(String::as_str),
        socket_dir,
        "the CNI socket's directory is the host's"
    );
    // Same host paths at the same container paths for everything the host shares with the
    // daemon: the data dir (its default), the conflist dir kubelet reads, the pod netns,
    // host-local's state (it is exec'd by the daemon), the OVSDB socket's dir, the CNI bin dir.
    let data_dir = flag_value(run, "--data-dir");
    assert_eq!(data_dir, "/var/lib/evio");
    let help = Command::new(BIN)
        .args(["run", "--help"])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        String::from_utf8_lossy(&help.stdout).contains("Default: /var/lib/evio"),
        "evio-node run's default data dir changed: update deploy/"
    );
    let ovsdb_dir = "/run/openvswitch"; // ovsdbSocket default /run/openvswitch/db.sock
    for dir in [
        data_dir,
        flag_value(run, "--cni-conf-dir"),
        "/etc/cni/net.d",
        "/opt/cni/bin",
        "/var/lib/cni",
        "/run/netns",
        "/var/run/netns",
        ovsdb_dir,
    ] {
        assert_eq!(
            mounts.get(dir).map(String::as_str),
            Some(dir),
            "evio-node must see the host's {dir} at {dir}"
        );
    }
    // config-gen writes where the daemon and kubelet read, from the same data dir.
    let config_gen = calls
        .iter()
        .find(|c| c.subcommand == "config-gen")
        .unwrap_or_else(|| panic!("no evio-node config-gen"));
    let init = containers(&ds)
        .into_iter()
        .find(|c| c["name"] == config_gen.container.as_str())
        .unwrap_or_else(|| panic!("no {}", config_gen.container));
    let init_mounts = host_mounts(&ds, init);
    for flag in ["--cni-conf-dir", "--data-dir"] {
        let dir = flag_value(config_gen, flag);
        assert_eq!(flag_value(run, flag), dir, "{flag}: config-gen vs run");
        assert_eq!(
            init_mounts.get(dir).map(String::as_str),
            Some(dir),
            "{flag}"
        );
    }
    assert_eq!(
        flag_value(config_gen, "--net-conf"),
        flag_value(run, "--net-conf")
    );
}

#[test]
fn configmap_net_conf_is_the_original_format_and_parses() {
    let Some(tools) = py_tools() else { return };
    let docs = load_yaml(&tools, &deploy().join("configmap.yaml"));
    let cm = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap")
        .unwrap_or_else(|| panic!("no ConfigMap"));
    let text = cm["data"]["net-conf.json"]
        .as_str()
        .unwrap_or_else(|| panic!("no net-conf.json key"));
    let raw: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("net-conf.json: {e}"));
    // The original's keys, with nodeBits as the string the original tool wrote.
    for key in [
        "cniVersion",
        "name",
        "type",
        "bridge",
        "bridgeType",
        "isGateway",
        "isDefaultGateway",
        "isIPMasq",
        "nodeBits",
        "podCIDR",
        "dataStore",
        "auth",
    ] {
        assert!(
            !raw[key].is_null(),
            "net-conf.json lacks the original key {key}"
        );
    }
    assert!(raw["nodeBits"].is_string());
    let conf: evio_cni::OriginalNetConf =
        serde_json::from_str(text).unwrap_or_else(|e| panic!("net-conf.json: {e}"));
    let bits = evio_raft::Pool::parse_node_bits(&conf.node_bits.as_string())
        .unwrap_or_else(|e| panic!("{e}"));
    evio_raft::Pool::parse(&conf.pod_cidr, bits).unwrap_or_else(|e| panic!("{e}"));
    let voters: usize = cm["data"]["voters"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("voters is not a number"));
    assert!(voters % 2 == 1, "voters must be odd");
}

/// The Containerfile copies what exists, the DaemonSet runs what it installs, and the
/// install script installs every plugin a conflist names.
#[test]
fn container_build_matches_the_workspace_and_the_daemonset() {
    let containerfile = std::fs::read_to_string(deploy().join("Containerfile"))
        .unwrap_or_else(|e| panic!("Containerfile: {e}"));
    let installer = deploy().join("image/evio-install-cni");
    assert!(containerfile
        .contains("COPY deploy/image/evio-install-cni /usr/local/bin/evio-install-cni"));
    // the packages it builds and the binaries it copies
    for (package, bin) in [("evio-node", "evio-node"), ("evio-cni", "evio-cni")] {
        assert!(
            containerfile.contains(&format!("-p {package}")),
            "{package}"
        );
        assert!(
            containerfile.contains(&format!("release/{bin} "))
                || containerfile.contains(&format!("release/{bin}\" ")),
            "copies {bin}"
        );
    }
    assert!(repo().join("cni/src/bin/evio-cni.rs").exists());
    assert!(BIN.ends_with("/evio-node"));
    // the reference plugins' path in Debian's containernetworking-plugins
    assert!(
        containerfile.contains("/usr/lib/cni/host-local /usr/lib/cni/portmap /opt/evio/cni-bin/")
    );
    assert!(containerfile.contains("/opt/evio/cni-bin/evio-cni"));
    assert!(containerfile.contains("/opt/evio/cni-bin/evio-ipam"));
    let script = std::fs::read_to_string(&installer).unwrap_or_else(|e| panic!("{e}"));
    assert!(script.contains("/opt/evio/cni-bin"));
    for plugin in [
        evio_cni::conf::PLUGIN_TYPE,
        evio_cni::dataplane::evio_ipam::PLUGIN,
        "host-local",
        "portmap",
    ] {
        assert!(
            script.contains(&format!(" {plugin}")),
            "evio-install-cni does not install {plugin}"
        );
    }
    // what the DaemonSet execs is where the image puts it
    assert!(containerfile.contains("COPY --from=build /out/evio-node /usr/local/bin/evio-node"));
    if let Some(tools) = py_tools() {
        let ds = daemonset(&tools);
        for c in containers(&ds) {
            let command = strings(&c["command"]).join(" ");
            let execs_known_path = command.starts_with("/usr/local/bin/evio-install-cni ")
                || command.starts_with("/usr/local/bin/evio-node ")
                || command.contains("exec /usr/local/bin/evio-node ");
            assert!(execs_known_path, "{}: runs {command:?}", c["name"]);
            assert_eq!(
                c["image"], "evio:0.1.0",
                "{}: the image kustomize sets",
                c["name"]
            );
        }
    }
    let ignore = std::fs::read_to_string(repo().join(".dockerignore"))
        .unwrap_or_else(|e| panic!(".dockerignore: {e}"));
    assert!(ignore.lines().any(|l| l == "target/"));
}

/// evio-install-cni over a scratch "host" dir: every binary lands executable, replacing the
/// old one; no temp file stays; a missing source fails and keeps what was installed.
#[test]
fn install_script_replaces_binaries_atomically() {
    use std::os::unix::fs::PermissionsExt;
    let scratch = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let src = scratch.path().join("src");
    let dest = scratch.path().join("opt-cni-bin");
    std::fs::create_dir_all(&src).unwrap_or_else(|e| panic!("{e}"));
    std::fs::create_dir_all(&dest).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dest.join("host-local"), "old").unwrap_or_else(|e| panic!("{e}"));
    let plugins = ["evio-cni", "evio-ipam", "host-local", "portmap"];
    for p in plugins {
        std::fs::write(src.join(p), format!("new {p}")).unwrap_or_else(|e| panic!("{e}"));
    }
    let install = |src: &Path| {
        Command::new(deploy().join("image/evio-install-cni"))
            .arg(&dest)
            .env("EVIO_CNI_SRC", src)
            .output()
            .unwrap_or_else(|e| panic!("evio-install-cni: {e}"))
    };
    let out = install(&src);
    assert!(out.status.success(), "{out:?}");
    let listing = |dir: &Path| -> BTreeSet<String> {
        std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{e}"))
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().to_string()))
            .collect()
    };
    assert_eq!(
        listing(&dest),
        plugins.iter().map(|p| p.to_string()).collect()
    );
    for p in plugins {
        let path = dest.join(p);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap_or_default(),
            format!("new {p}")
        );
        let mode = std::fs::metadata(&path)
            .map(|m| m.permissions().mode())
            .unwrap_or(0);
        assert_eq!(mode & 0o777, 0o755, "{p}");
    }
    // portmap missing from the image: the run fails, evio-cni and host-local are the new
    // ones already, portmap stays the installed one and no temp file is left behind.
    std::fs::remove_file(src.join("portmap")).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dest.join("portmap"), "installed").unwrap_or_else(|e| panic!("{e}"));
    let out = install(&src);
    assert!(!out.status.success());
    assert_eq!(
        std::fs::read_to_string(dest.join("portmap")).unwrap_or_default(),
        "installed"
    );
    assert_eq!(
        listing(&dest),
        plugins.iter().map(|p| p.to_string()).collect()
    );
}

/// The scripts decide "this node's data dir already belongs to a cluster" (skip bootstrap;
/// config-gen can work offline) with a grep on identity.json: that check follows the real data
/// dir format — false for a fresh data dir, true once it has joined or bootstrapped.
#[test]
fn scripts_recognise_a_data_dir_that_belongs_to_a_cluster() {
    let Some(tools) = py_tools() else { return };
    const CHECK: &str = "grep -qs '\"clusterId\"' /var/lib/evio/identity.json";
    let ds = daemonset(&tools);
    let container = containers(&ds)
        .into_iter()
        .find(|c| c["name"] == "config-gen")
        .unwrap_or_else(|| panic!("no container config-gen"));
    assert!(
        strings(&container["command"])
            .iter()
            .any(|w| w.contains(CHECK)),
        "config-gen: the script's cluster check changed: update this test"
    );
    let scratch = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let pool = evio_raft::pool::Pool::parse("10.244.0.0/16", 8).unwrap_or_else(|e| panic!("{e}"));
    let belongs = || {
        let script = CHECK.replace("/var/lib/evio", &scratch.path().to_string_lossy());
        Command::new("sh")
            .args(["-c", &script])
            .status()
            .unwrap_or_else(|e| panic!("sh: {e}"))
            .success()
    };
    assert!(!belongs(), "no data dir yet");
    let mut dir =
        evio_raft::data_dir::DataDir::open(scratch.path(), pool).unwrap_or_else(|e| panic!("{e}"));
    assert!(!belongs(), "a fresh data dir belongs to no cluster");
    dir.set_cluster_id("c0ffee")
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(belongs(), "a data dir with a cluster id belongs to it");
}

/// No node is named to create the cluster: evio-node runs with `--kubernetes` (the cluster
/// record decides, in the pod's namespace) and never with `--bootstrap`, and the ConfigMap has
/// no `bootstrap-node`. The init container's script, run by sh with `echo` in place of
/// evio-node and a scratch data dir: config-gen runs only once the data dir belongs to a
/// cluster, and a first start passes without it.
#[test]
fn daemonset_names_no_bootstrap_node_and_runs_config_gen_only_with_a_replica() {
    let Some(tools) = py_tools() else { return };
    let ds = daemonset(&tools);
    let main = containers(&ds)
        .into_iter()
        .find(|c| c["name"] == "evio-node")
        .unwrap_or_else(|| panic!("no container evio-node"));
    let words: Vec<String> = strings(&main["command"])
        .into_iter()
        .chain(strings(&main["args"]))
        .collect();
    assert!(words.iter().any(|w| w == "--kubernetes"), "{words:?}");
    assert!(!words.iter().any(|w| w.contains("bootstrap")), "{words:?}");
    let namespace = main["env"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["name"] == "POD_NAMESPACE")
        .unwrap_or_else(|| panic!("no POD_NAMESPACE: {}", main["env"]));
    assert_eq!(
        namespace["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    let configmap =
        std::fs::read_to_string(deploy().join("configmap.yaml")).unwrap_or_else(|e| panic!("{e}"));
    assert!(!configmap.contains("bootstrap-node:"), "{configmap}");

    let scratch = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let data = scratch.path().join("evio");
    std::fs::create_dir_all(&data).unwrap_or_else(|e| panic!("{e}"));
    let c = containers(&ds)
        .into_iter()
        .find(|c| c["name"] == "config-gen")
        .unwrap_or_else(|| panic!("no container config-gen"));
    // The init step never blocks the node: without a lease it leaves the conflist to the
    // daemon (node/tests/config_gen.rs runs this sequence with the cluster down at first).
    assert!(
        strings(&c["args"]).iter().any(|a| a == "--no-lease-ok"),
        "{}",
        c["args"]
    );
    let config_gen = strings(&c["command"])[2]
        .replace("/usr/local/bin/evio-node", "echo evio-node")
        .replace("/var/lib/evio", &data.to_string_lossy());
    let run = |script: &str| -> String {
        let mut sh = Command::new("sh");
        sh.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("NODE_NAME", "edge-1");
        let out = output_ok(sh.args(["-c", script, "sh", "--data-dir=/var/lib/evio"]));
        out.trim().to_string()
    };
    let skipped = run(&config_gen);
    assert!(!skipped.contains("evio-node config-gen"), "{skipped}");

    let pool = evio_raft::pool::Pool::parse("10.244.0.0/16", 8).unwrap_or_else(|e| panic!("{e}"));
    let mut dir = evio_raft::data_dir::DataDir::open(&data, pool).unwrap_or_else(|e| panic!("{e}"));
    dir.set_cluster_id("c0ffee")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        run(&config_gen),
        "evio-node config-gen --data-dir=/var/lib/evio"
    );
}

/// `kubectl kustomize` (kustomize v5, part of this machine image's kubectl) renders what
/// `kubectl apply -k deploy/` applies: refused without the cluster token file (no install with
/// a shared default secret); with it, every object valid for Kubernetes 1.27 and 1.30, in
/// kube-system, the token in the Secret; with the etcd-mirror component, exactly the
/// DaemonSet the other tests check (their JSON-patch rendering) plus the credentials Secret.
#[test]
fn kustomize_renders_a_complete_install() {
    let Some(tools) = py_tools() else { return };
    let kubectl_present = Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !kubectl_present {
        let msg = "kubectl (with kustomize) not found: it renders deploy/ for this test";
        assert!(!evio_test_support::ci(), "{msg}");
        eprintln!("SKIPPED: {msg}");
        return;
    }
    let scratch = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let copy = scratch.path().join("deploy");
    let status = Command::new("cp")
        .arg("-r")
        .arg(deploy())
        .arg(&copy)
        .status()
        .unwrap_or_else(|e| panic!("cp: {e}"));
    assert!(status.success());
    for stray in [
        "cluster-token",
        "etcd-mirror/username",
        "etcd-mirror/password",
    ] {
        let _ = std::fs::remove_file(copy.join(stray));
    }
    let kustomize = |dir: &Path| {
        Command::new("kubectl")
            .arg("kustomize")
            .arg(dir)
            .output()
            .unwrap_or_else(|e| panic!("kubectl kustomize: {e}"))
    };
    let refused = kustomize(&copy);
    assert!(
        !refused.status.success(),
        "rendered without a cluster token"
    );
    assert!(String::from_utf8_lossy(&refused.stderr).contains("cluster-token"));

    std::fs::write(copy.join("cluster-token"), "t0ken").unwrap_or_else(|e| panic!("{e}"));
    let render = |name: &str| -> (PathBuf, Vec<Value>) {
        let out = kustomize(&copy);
        assert!(
            out.status.success(),
            "kubectl kustomize: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let file = scratch.path().join(name);
        std::fs::write(&file, &out.stdout).unwrap_or_else(|e| panic!("{e}"));
        let docs = load_yaml(&tools, &file);
        (file, docs)
    };
    let (base_file, base) = render("base.yaml");
    let kinds: BTreeSet<String> = base
        .iter()
        .map(|d| {
            format!(
                "{}/{}",
                d["kind"].as_str().unwrap_or(""),
                d["metadata"]["name"]
            )
        })
        .collect();
    for want in [
        "ServiceAccount/\"evio\"",
        "ClusterRole/\"evio\"",
        "ClusterRoleBinding/\"evio\"",
        "Role/\"evio\"",
        "RoleBinding/\"evio\"",
        "ConfigMap/\"evio-config\"",
        "Secret/\"evio-cluster-token\"",
        "Service/\"evio\"",
        "DaemonSet/\"evio\"",
    ] {
        assert!(kinds.contains(want), "{want} not rendered: {kinds:?}");
    }
    for doc in &base {
        if !doc["kind"]
            .as_str()
            .is_some_and(|k| k.starts_with("Cluster"))
        {
            assert_eq!(
                doc["metadata"]["namespace"], "kube-system",
                "{}",
                doc["kind"]
            );
        }
    }
    let secret = base
        .iter()
        .find(|d| d["kind"] == "Secret")
        .unwrap_or_else(|| panic!("no Secret"));
    assert_eq!(secret["data"]["cluster-token"], "dDBrZW4="); // base64("t0ken")
    let rendered_ds = base
        .iter()
        .find(|d| d["kind"] == "DaemonSet")
        .unwrap_or_else(|| panic!("no DaemonSet"));
    let ours = daemonsets(&tools);
    assert_eq!(
        rendered_ds["spec"], ours[0].1["spec"],
        "kustomize changed the DaemonSet"
    );

    // the etcd-mirror component, enabled as the README says
    let kustomization = copy.join("kustomization.yaml");
    let text = std::fs::read_to_string(&kustomization).unwrap_or_else(|e| panic!("{e}"));
    let enabled = text
        .replace("# components:", "components:")
        .replace("#   - etcd-mirror", "  - etcd-mirror");
    assert_ne!(
        text, enabled,
        "kustomization.yaml lost its commented etcd-mirror component"
    );
    std::fs::write(&kustomization, enabled).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(copy.join("etcd-mirror/username"), "u").unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(copy.join("etcd-mirror/password"), "p").unwrap_or_else(|e| panic!("{e}"));
    let (etcd_file, etcd) = render("etcd.yaml");
    assert!(etcd.iter().any(|d| d["kind"] == "Secret"
        && d["metadata"]["name"] == "evio-etcd-credentials"
        && d["metadata"]["namespace"] == "kube-system"));
    let etcd_ds = etcd
        .iter()
        .find(|d| d["kind"] == "DaemonSet")
        .unwrap_or_else(|| panic!("no DaemonSet"));
    assert_eq!(etcd_ds["spec"], ours[1].1["spec"]);

    for version in ["1.27.0", "1.30.0"] {
        let out = validate(&tools, version, &[base_file.clone(), etcd_file.clone()]);
        assert!(
            out.status.success(),
            "rendered install invalid for Kubernetes {version}:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}
