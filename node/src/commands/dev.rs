//! `evio-node dev`: the embedded default. One member bootstraps its own cluster, leases a
//! block for this host, writes the CNI conflist for it and serves the API. Restarting with
//! the same data dir gives the same node id and the same lease.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use evio_cni::dataplane::Limits;
use evio_cni::{BridgeType, NetConf, OvsDatapath};
use evio_raft::{Pool, Replica, ReplicaConfig};

use crate::cni_service::{CniService, IPAM_DIR};
use crate::node_info::NodeInfo;
use crate::serve::{self, spawn_api, ShutdownSignals};

#[derive(clap::Args)]
pub struct DevArgs {
    /// Where the node id, Raft log and lease table live.
    #[arg(long, default_value = "./evio-data")]
    data_dir: PathBuf,
    /// Address of the HTTP API (and Raft RPC).
    #[arg(long, default_value = "127.0.0.1:7700")]
    listen: String,
    /// The pod overlay; host bits are masked.
    #[arg(long, default_value = "10.244.0.0/16")]
    pod_cidr: String,
    /// Bits of the pod CIDR that number the nodes (2^bits node blocks).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u8).range(0..=30))]
    node_bits: u8,
    /// This node's name (a Kubernetes node name); defaults to $NODE_NAME, then the hostname.
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// The CNI socket evio-cni forwards to. Default: <data-dir>/cni.sock.
    #[arg(long)]
    cni_socket: Option<std::path::PathBuf>,
    /// The pods' bridge: OVS or LXBR (a Linux bridge).
    #[arg(long, default_value = "OVS", value_parser = parse_key::<BridgeType>)]
    bridge_type: BridgeType,
    /// The OVS datapath: system (kernel), netdev (userspace) or auto (whatever this host runs:
    /// the kernel datapath when the openvswitch module is loaded, netdev when only userspace
    /// OVS runs, a Linux bridge without OVS; the daemon logs its choice).
    #[arg(long, default_value = "auto", value_parser = parse_key::<OvsDatapath>)]
    ovs_datapath: OvsDatapath,
    /// Seconds the daemon gives one CNI request (IPAM and nft still running then are
    /// killed); keep it below the shim's wait (120 s).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=110))]
    cni_deadline: u64,
}

/// A conflist value (`OVS`, `netdev`, ...) as a flag.
fn parse_key<T: serde::de::DeserializeOwned>(value: &str) -> Result<T, String> {
    serde_json::from_value(serde_json::Value::String(value.into())).map_err(|e| e.to_string())
}

/// Where `dev` keeps the cluster token it generated (pass it to the CLI with --token-file).
pub const TOKEN_FILE: &str = "cluster-token";

/// The data dir's token, generated (mode 0600) on first start.
fn dev_token(path: &std::path::Path) -> anyhow::Result<String> {
    if path.exists() {
        return crate::host::read_token(path);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let token = evio_raft::data_dir::random_hex(32);
    evio_raft::data_dir::write_atomic(path, token.as_bytes(), 0o600)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(token)
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let mut signals = ShutdownSignals::install().context("installing signal handlers")?;
    let pool = Pool::parse(&args.pod_cidr, args.node_bits)?;
    let node_name = crate::host::node_name(args.node_name)?;
    let (listener, addr) = serve::bind(&args.listen).await?;

    let mut config = ReplicaConfig::new(
        args.data_dir.clone(),
        pool,
        node_name.clone(),
        addr.to_string(),
    );
    let token_file = args.data_dir.join(TOKEN_FILE);
    config.token = dev_token(&token_file)?;
    let replica = Replica::open(config).await?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let cni_socket = args
        .cni_socket
        .clone()
        .unwrap_or_else(|| args.data_dir.join("cni.sock"));
    // Absolute: the conflist names it, and kubelet runs evio-cni from anywhere.
    let cni_socket = std::path::absolute(&cni_socket)
        .with_context(|| format!("resolving {}", cni_socket.display()))?;
    let limits = Limits {
        deadline: Duration::from_secs(args.cni_deadline),
        ..Limits::default()
    };
    let cni = CniService::bind(&cni_socket, limits, args.data_dir.join(IPAM_DIR))?;
    let pods = cni.pods();
    let options = evio_api::ApiOptions {
        node: Some(std::sync::Arc::new(NodeInfo {
            cni_socket: cni.path().to_path_buf(),
            pods: pods.clone(),
            kubernetes: None,
        })),
        ..Default::default()
    };
    let mut server = spawn_api(listener, replica.clone(), options, async {
        let _ = stop_rx.await;
    });
    let cni = tokio::spawn(cni.run());

    let setup = async {
        replica.bootstrap_single().await?;
        replica.wait_for_leader(Duration::from_secs(30)).await?;
        let (lease, created) = replica.acquire(&node_name, None).await?;
        pods.allocator().set_node_blocks(lease.subnets());
        let net_d = args.data_dir.join("net.d");
        // The conflist names this daemon's socket, so evio-cni reaches this dev instance.
        let conf = NetConf {
            socket: cni_socket.to_string_lossy().into_owned(),
            bridge_type: args.bridge_type,
            ovs_datapath: args.ovs_datapath,
            ..NetConf::default()
        };
        let written = evio_cni::write_conflist(&net_d, &conf, &lease)?;
        anyhow::Ok((lease, created, net_d, written))
    };
    let outcome = tokio::select! {
        result = setup => result,
        _ = signals.recv() => Err(anyhow::anyhow!("interrupted during start-up")),
    };
    let outcome = match outcome {
        Ok((lease, created, net_d, written)) => {
            tracing::info!(
                api = %format!("http://{addr}"),
                node = %node_name,
                node_id = replica.node_id(),
                subnet = %lease.block.subnet,
                new_lease = created,
                conflist = %net_d.join(evio_cni::CONFLIST_FILE).display(),
                conflist_rewritten = written,
                cni_socket = %cni_socket.display(),
                token_file = %token_file.display(),
                "evio-node dev ready: API at http://{addr} (try: curl http://{addr}/v1/leases)"
            );
            serve::until_signal(&mut signals, &mut server).await
        }
        Err(e) => Err(e),
    };
    let _ = stop_tx.send(());
    cni.abort();
    let _ = cni.await;
    if !server.is_finished() {
        match tokio::time::timeout(Duration::from_secs(10), &mut server).await {
            Ok(_) => {}
            Err(_) => tracing::warn!("API server did not stop within 10 s"),
        }
    }
    replica.shutdown().await;
    outcome
}
