//! What `pods` and `fill` share, so their figures compare: the daemon and one network per
//! plugin (each its own /16, bridge and IPAM state), the pod namespaces made before the clock
//! starts, the exec of a plugin as a runtime does it, and the leftover checks after the DELs.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use crate::cluster::{free_addr, scratch_dir, wait_for, Process};
use crate::Bins;

/// Where Debian installs the reference plugins (host-local, bridge).
const CNI_PLUGIN_DIR: &str = "/usr/lib/cni";

/// One plugin under test: its binary, its network config and its own pod namespaces.
pub(super) struct Plugin {
    pub label: String,
    /// evio with evio-ipam (its own goals).
    pub evio_ipam: bool,
    binary: PathBuf,
    pub config: Value,
    ipam_dir: PathBuf,
    bridge: String,
}

/// Everything a run created on the host, removed on drop (also on error).
struct Scratch {
    namespaces: Vec<String>,
    bridges: Vec<String>,
    ovs_bridges: Vec<String>,
    subnets: Vec<ipnetwork::Ipv4Network>,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        for bridge in &self.ovs_bridges {
            let _ = Command::new("ovs-vsctl")
                .args(["--if-exists", "del-br", bridge])
                .output();
        }
        for bridge in &self.bridges {
            let _ = Command::new("ip").args(["link", "del", bridge]).output();
        }
        for subnet in &self.subnets {
            let _ = evio_cni::dataplane::masquerade::remove(*subnet);
        }
    }
}

/// `10.<octet>.3.0/24` is the node block of a plugin's `10.<octet>.0.0/16`.
fn evio_config(
    name: &str,
    bridge: &str,
    kind: &str,
    octet: u8,
    socket: &Path,
    ipam: &Path,
    evio_ipam: bool,
) -> Value {
    let mut ipam = host_local(octet, ipam);
    if evio_ipam {
        ipam["type"] = json!(evio_cni::dataplane::evio_ipam::PLUGIN);
        if let Some(o) = ipam.as_object_mut() {
            o.remove("dataDir");
        }
    }
    json!({
        "cniVersion": "1.0.0", "name": name, "type": "evio-cni",
        "bridge": bridge, "bridgeType": kind, "ovsDatapath": "netdev",
        "bridgeIPv4": format!("10.{octet}.3.1/16"),
        "isGateway": true, "isDefaultGateway": true, "isIPMasq": true, "mtu": 1500,
        "nodeSubnet": format!("10.{octet}.3.0/24"), "podCIDR": format!("10.{octet}.0.0/16"),
        "socket": socket,
        "ipam": ipam,
    })
}

fn bridge_config(name: &str, bridge: &str, octet: u8, ipam: &Path) -> Value {
    json!({
        "cniVersion": "1.0.0", "name": name, "type": "bridge",
        "bridge": bridge, "isGateway": true, "isDefaultGateway": true, "ipMasq": true, "mtu": 1500,
        // isDefaultGateway adds the default route itself; an IPAM one too would collide.
        "ipam": {"type": "host-local", "dataDir": ipam, "ranges": host_local(octet, ipam)["ranges"]},
    })
}

fn host_local(octet: u8, data_dir: &Path) -> Value {
    json!({
        "type": "host-local", "dataDir": data_dir,
        "ranges": [[{"subnet": format!("10.{octet}.0.0/16"), "rangeStart": format!("10.{octet}.3.2"),
                     "rangeEnd": format!("10.{octet}.3.254"), "gateway": format!("10.{octet}.3.1")}]],
        "routes": [{"dst": "0.0.0.0/0"}],
    })
}

/// Runs one CNI command through the plugin binary, as a runtime does; returns its wall time.
pub(super) fn exec(
    plugin: &Plugin,
    command: &str,
    container: &str,
    netns: &str,
) -> Result<Duration> {
    let cni_path = format!(
        "{}:{CNI_PLUGIN_DIR}",
        plugin
            .binary
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    );
    let config = serde_json::to_vec(&plugin.config)?;
    let started = Instant::now();
    let mut child = Command::new(&plugin.binary)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", &cni_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("exec {}", plugin.binary.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(&config)?;
    }
    let out = child.wait_with_output()?;
    let took = started.elapsed();
    if !out.status.success() {
        bail!(
            "{} {command} {container}: {}{}",
            plugin.label,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(took)
}

/// How long until no retired evio veth is left (DEL leaves their deletion to a queue).
pub(super) async fn retired_drained() -> Result<Duration> {
    let started = Instant::now();
    loop {
        let out = Command::new("ip")
            .args(["-o", "link", "show"])
            .output()
            .context("ip link show")?;
        if !String::from_utf8_lossy(&out.stdout).contains(evio_cni::dataplane::reaper::RETIRED) {
            return Ok(started.elapsed());
        }
        if started.elapsed() > Duration::from_secs(60) {
            return Err(anyhow!(
                "retired evio veths still present 60 s after the last DEL"
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Links, OVS ports and host-local reservations a plugin left behind after its DELs.
pub(super) fn leftovers(plugin: &Plugin) -> Result<usize> {
    let reservations = std::fs::read_dir(
        plugin
            .ipam_dir
            .join(plugin.config["name"].as_str().unwrap_or_default()),
    )
    .map(|dir| {
        dir.filter_map(Result::ok)
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .parse::<std::net::IpAddr>()
                    .is_ok()
            })
            .count()
    })
    .unwrap_or(0);
    let out = Command::new("ip")
        .args(["-o", "link", "show", "master", &plugin.bridge])
        .output()
        .context("ip link show master")?;
    let linux_ports = String::from_utf8_lossy(&out.stdout).lines().count();
    let ovs_ports = if plugin.config["bridgeType"] == "OVS" {
        let out = Command::new("ovs-vsctl")
            .args(["list-ports", &plugin.bridge])
            .output()
            .context("ovs-vsctl list-ports")?;
        String::from_utf8_lossy(&out.stdout).lines().count()
    } else {
        0
    };
    Ok(reservations + linux_ports + ovs_ports)
}

pub(super) struct Setup {
    pub plugins: Vec<Plugin>,
    /// Per plugin, `count` pod namespaces.
    pub netns: Vec<Vec<String>>,
    /// The daemon's log (JSON lines with its step timings under `--breakdown`).
    pub daemon_log: PathBuf,
    _scratch: Scratch,
    _daemon: Process,
    _dir: tempfile::TempDir,
}

/// The daemon serving its CNI socket, one network per plugin of `kind` × `ipam`, and `count`
/// pod namespaces per plugin, all before the clock starts. With `breakdown` the daemon logs
/// each request's step timings (JSON lines, `evio_cni::timing` at debug level).
pub(super) async fn setup(
    bins: &Bins,
    evio_cni: &Path,
    kind: &str,
    ipam: &str,
    count: usize,
    breakdown: bool,
) -> Result<Setup> {
    let kinds = kinds(kind, ipam)?;
    if !nix::unistd::geteuid().is_root() {
        bail!("pod benchmarks need root (network namespaces, bridges)");
    }
    let reference = Path::new(CNI_PLUGIN_DIR).join("bridge");
    for needed in [
        reference.as_path(),
        &Path::new(CNI_PLUGIN_DIR).join("host-local"),
        evio_cni,
    ] {
        if !needed.is_file() {
            bail!("{} not found (scripts/install-deps.sh installs the reference plugins; build evio-cni)", needed.display());
        }
    }
    let dir = scratch_dir("pods")?;
    let socket = dir.path().join("cni.sock");
    let daemon_log = dir.path().join("evio-node.log");
    let (mut args, mut env) = (Vec::new(), Vec::new());
    if breakdown {
        args.extend(["--log-format".to_string(), "json".to_string()]);
        let filter = format!(
            "info,openraft=warn,sled=warn,{}=debug",
            evio_cni::dataplane::timing::TARGET
        );
        env.push(("EVIO_LOG".to_string(), filter));
    }
    args.extend([
        "dev".into(),
        "--data-dir".into(),
        dir.path().join("data").display().to_string(),
        "--listen".into(),
        free_addr()?,
        "--pod-cidr".into(),
        "10.208.0.0/12".into(),
        "--node-bits".into(),
        "1".into(),
        "--node-name".into(),
        "bench".into(),
        "--cni-socket".into(),
        socket.display().to_string(),
    ]);
    let daemon = Process::start_with_env(
        "evio-node dev",
        &bins.evio_node,
        args,
        env,
        daemon_log.clone(),
    )?;
    let tag = format!("{:05x}", std::process::id() & 0xfffff);
    let mut scratch = Scratch {
        namespaces: Vec::new(),
        bridges: Vec::new(),
        ovs_bridges: Vec::new(),
        subnets: Vec::new(),
    };
    wait_for_socket(&socket).await?;
    // The node's block (a /13 of 10.208.0.0/12): every plugin's 10.<octet>.0.0/16 inside it.
    let block = node_block(&dir.path().join("data")).await?;
    let first_octet = block.ip().octets()[1] + 1;
    let mut plugins = Vec::new();
    for (i, (kind, evio_ipam)) in kinds.iter().copied().enumerate() {
        let octet = first_octet + i as u8;
        let suffix = if evio_ipam { "e" } else { "" };
        let bridge = format!("evb{}{suffix}{tag}", &kind[..1].to_lowercase());
        let name = format!("evio-bench-{}{suffix}", kind.to_lowercase());
        let ipam_dir = match evio_ipam {
            true => dir.path().join("data").join("ipam"),
            false => dir.path().join(format!("ipam-{kind}")),
        };
        let (label, binary, config) = if kind == "bridge" {
            scratch.bridges.push(bridge.clone());
            (
                "bridge".to_string(),
                reference.clone(),
                bridge_config(&name, &bridge, octet, &ipam_dir),
            )
        } else {
            if kind == "OVS" {
                scratch.ovs_bridges.push(bridge.clone());
            }
            scratch.bridges.push(bridge.clone());
            scratch.subnets.push(format!("10.{octet}.3.0/24").parse()?);
            let label = match (kind, evio_ipam) {
                ("OVS", false) => "evio OVS netdev",
                ("OVS", true) => "evio OVS evio-ipam",
                (_, false) => "evio LXBR",
                (_, true) => "evio LXBR evio-ipam",
            };
            (
                label.to_string(),
                evio_cni.to_path_buf(),
                evio_config(&name, &bridge, kind, octet, &socket, &ipam_dir, evio_ipam),
            )
        };
        plugins.push(Plugin {
            label,
            evio_ipam,
            binary,
            config,
            ipam_dir,
            bridge,
        });
    }
    let mut netns = Vec::new();
    for i in 0..plugins.len() {
        netns.push(namespaces(&mut scratch, i, count)?);
    }
    Ok(Setup {
        plugins,
        netns,
        daemon_log,
        _scratch: scratch,
        _daemon: daemon,
        _dir: dir,
    })
}

/// Pod namespaces `count` per plugin, created before the clock starts.
fn namespaces(scratch: &mut Scratch, plugin: usize, count: usize) -> Result<Vec<String>> {
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let name = format!("evb-{}-{plugin}-{i}", std::process::id());
        let status = Command::new("ip").args(["netns", "add", &name]).output()?;
        if !status.status.success() {
            bail!(
                "ip netns add {name}: {}",
                String::from_utf8_lossy(&status.stderr)
            );
        }
        scratch.namespaces.push(name.clone());
        out.push(format!("/run/netns/{name}"));
    }
    Ok(out)
}

async fn wait_for_socket(path: &Path) -> Result<()> {
    wait_for(
        "evio-node dev's CNI socket",
        Duration::from_secs(30),
        || async { path.exists().then_some(()) },
    )
    .await
}

/// The bridge kinds × IPAMs to measure (whether evio-ipam), the reference `bridge` last.
fn kinds(kind: &str, ipam: &str) -> Result<Vec<(&'static str, bool)>> {
    let bridges: &[&str] = match kind {
        "both" => &["OVS", "LXBR"],
        "ovs" | "OVS" => &["OVS"],
        "lxbr" | "LXBR" => &["LXBR"],
        other => return Err(anyhow!("--kind {other:?}: ovs, lxbr or both")),
    };
    let ipams: &[bool] = match ipam {
        "host-local" => &[false],
        "evio-ipam" => &[true],
        "both" => &[false, true],
        other => return Err(anyhow!("--ipam {other:?}: host-local, evio-ipam or both")),
    };
    let mut out: Vec<(&str, bool)> = bridges
        .iter()
        .flat_map(|b| ipams.iter().map(move |i| (*b, *i)))
        .collect();
    out.push(("bridge", false));
    Ok(out)
}

/// The block `evio-node dev` leased (the conflist it writes once it holds the lease names
/// it; the CNI socket is up before that).
async fn node_block(data_dir: &Path) -> Result<ipnetwork::Ipv4Network> {
    let path = data_dir.join("net.d").join(evio_cni::CONFLIST_FILE);
    wait_for(
        "evio-node dev's conflist",
        Duration::from_secs(30),
        || async { path.exists().then_some(()) },
    )
    .await?;
    let bytes = std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
    let conflist: Value = serde_json::from_slice(&bytes)?;
    conflist["plugins"][0]["nodeSubnet"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("{}: no nodeSubnet", path.display()))
}
