//! `evio-node run`: the production daemon. One member of the lease cluster: bootstraps it
//! (first node only) or joins it through any listed peer, serves the API and Raft RPC, and
//! — while leader — keeps the voter set healthy.
//!
//! - [`settings`]: flags over the `--config` file over defaults, validated;
//! - [`join`]: admission through a peer;
//! - this module: the start-up order, then the daemon's tasks ([`crate::daemon::Tasks`]).

mod join;
mod settings;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use evio_api::ApiOptions;
use evio_raft::{MembershipController, Replica, ReplicaConfig};

use crate::cni_service::{CniService, IPAM_DIR};
use crate::daemon::Tasks;
use crate::etcd::mirror::EtcdMirror;
use crate::host::API_ADDRESS_FILE;
use crate::kube::KubeStatus;
use crate::node_info::NodeInfo;
use crate::serve::{self, spawn_api, ShutdownSignals};

pub use settings::RunArgs;

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let mut signals = ShutdownSignals::install().context("installing signal handlers")?;
    let settings = args.settings()?;
    let (listener, bound) = serve::bind(&settings.listen).await?;
    let advertise = settings.advertise_addr(bound)?;
    // Before anything is written: a bad kubeconfig leaves no data dir behind.
    let kube_client = if settings.kubernetes || settings.join_from_kubernetes {
        Some(crate::kube::client(settings.kubeconfig.as_deref()).await?)
    } else {
        None
    };

    let mut config = ReplicaConfig::new(
        settings.data_dir.clone(),
        settings.pool,
        settings.node_name.clone(),
        advertise.clone(),
    );
    config.tuning = settings.tuning.clone();
    config.token = settings.token.clone();
    let tls = crate::tls::context(&settings.tls, &settings.data_dir)?;
    config.tls = tls.clone();
    let replica = Replica::open(config).await?;
    let initialized = replica.is_initialized().await?;
    if settings.bootstrap && (initialized || replica.cluster_id().is_some()) {
        replica.shutdown().await;
        bail!(
            "--bootstrap refused: data dir {} already belongs to cluster {}; restart without --bootstrap",
            settings.data_dir.display(),
            replica.cluster_id().unwrap_or_else(|| "(unnamed)".into())
        );
    }

    // config-gen finds this daemon's API here when the daemon holds the replica's lock.
    evio_raft::data_dir::write_atomic(
        &settings.data_dir.join(API_ADDRESS_FILE),
        advertise.as_bytes(),
        0o644,
    )
    .context("recording the API address in the data dir")?;
    let tasks = Tasks::new();
    let mirror = settings
        .etcd
        .clone()
        .map(|etcd| EtcdMirror::new(etcd, replica.clone()));
    let cni = match CniService::bind(
        &settings.cni_socket,
        settings.cni_limits,
        settings.data_dir.join(IPAM_DIR),
    ) {
        Ok(service) => service,
        Err(e) => {
            replica.shutdown().await;
            return Err(e.into());
        }
    };
    let kube_status = settings
        .kubernetes
        .then(|| KubeStatus::enabled(&settings.node_name));
    let node_info = NodeInfo {
        cni_socket: cni.path().to_path_buf(),
        pods: cni.pods(),
        kubernetes: kube_status.clone(),
    };
    let server_stop = tasks.stop_token();
    let mut server = spawn_api(
        listener,
        replica.clone(),
        ApiOptions {
            auth_reads: settings.auth_reads,
            etcd_mirror: mirror.as_ref().map(EtcdMirror::status),
            node: Some(Arc::new(node_info)),
        },
        server_stop.cancelled_owned(),
    );
    tasks.spawn(
        "evio-ipam blocks",
        crate::cni_service::follow_lease(replica.clone(), cni.pods(), tasks.stop_token()),
    );
    // The CNI service stops with the runtime: a request in flight must not hold up shutdown.
    let cni = tokio::spawn(cni.run());
    let controller =
        MembershipController::new(replica.clone(), settings.voters, settings.voter_grace);
    tasks.spawn(
        "membership",
        controller.run(tasks.stop_token().cancelled_owned()),
    );
    if let Some(mirror) = mirror {
        tasks.spawn("etcd mirror", mirror.run(tasks.stop_token()));
    }
    if let Some((dir, conf)) = settings.cni_conf.clone() {
        tasks.spawn(
            "conflist",
            crate::conflist::keep_current(
                replica.clone(),
                advertise.clone(),
                settings.token.clone(),
                dir,
                conf,
                tasks.stop_token(),
            ),
        );
    }
    if let Some(tls) = tls.clone() {
        tasks.spawn(
            "certificate renewal",
            crate::tls::keep_renewed(tls, tasks.stop_token()),
        );
    }
    if let (Some(status), Some(client)) = (&kube_status, &kube_client) {
        tasks.spawn(
            "node annotations",
            crate::kube::annotate::run(
                client.clone(),
                replica.clone(),
                settings.node_name.clone(),
                advertise.clone(),
                status.clone(),
                tasks.stop_token(),
            ),
        );
        tasks.spawn(
            "node GC",
            crate::kube::node_gc::run(
                client.clone(),
                replica.clone(),
                settings.node_gc_grace,
                status.clone(),
                tasks.stop_token(),
            ),
        );
    }

    let start = async {
        if !initialized {
            let record = kube_client.as_ref().filter(|_| settings.kubernetes);
            // With --kubernetes the cluster record decides, so that exactly one node per
            // install ever bootstraps (an explicit --bootstrap only if it agrees).
            let bootstrap = match record {
                Some(client) => {
                    let role = crate::kube::bootstrap::claim(
                        client,
                        &settings.kube_namespace,
                        &settings.node_name,
                        replica.node_id(),
                    )
                    .await;
                    match role {
                        crate::kube::bootstrap::Role::Bootstrap => true,
                        crate::kube::bootstrap::Role::Join { bootstrapper }
                            if settings.bootstrap =>
                        {
                            bail!("--bootstrap refused: {bootstrapper} already created this install's cluster (ConfigMap {}/{}); restart without --bootstrap to join it", settings.kube_namespace, crate::kube::bootstrap::RECORD)
                        }
                        crate::kube::bootstrap::Role::Join { .. } => false,
                    }
                }
                None => settings.bootstrap,
            };
            if bootstrap {
                replica.bootstrap_single().await?;
                tracing::info!(cluster = ?replica.cluster_id(), "bootstrapped a new cluster");
                if let Some(tls) = &tls {
                    let cluster = replica.cluster_id().unwrap_or_default();
                    crate::tls::create_authority(
                        tls,
                        &cluster,
                        replica.node_id(),
                        &settings.node_name,
                    )?;
                }
                if let (Some(client), Some(id)) = (record, replica.cluster_id()) {
                    crate::kube::bootstrap::record_cluster_id(
                        client,
                        &settings.kube_namespace,
                        &id,
                    )
                    .await;
                    if let Some(ca) = tls.as_ref().and_then(|t| t.ca_pem().ok()) {
                        crate::kube::bootstrap::record_ca(client, &settings.kube_namespace, &ca)
                            .await;
                    }
                }
            } else {
                join::join(&replica, &settings, kube_client.as_ref()).await?;
            }
        } else if let Some(tls) = &tls {
            if !tls.has_files() {
                bail!(
                    "this member has no TLS certificate ({} is missing): restore it, or use an empty data dir to join again",
                    settings.data_dir.join(evio_raft::tls::TLS_DIR).display()
                );
            }
        }
        if let Some(tls) = &tls {
            crate::tls::log_ca_hash(tls);
        }
        anyhow::Ok(())
    };
    let outcome = tokio::select! {
        result = start => match result {
            Ok(()) => {
                let scheme = replica.peers().scheme();
                tracing::info!(
                    api = %format!("{scheme}://{advertise}"),
                    node = %settings.node_name,
                    node_id = replica.node_id(),
                    cluster = ?replica.cluster_id(),
                    "evio-node running: API at {scheme}://{advertise}"
                );
                serve::until_signal(&mut signals, &mut server).await
            }
            Err(e) => Err(e),
        },
        _ = signals.recv() => Ok(()),
    };
    let stop = tasks.stop_token();
    stop.cancel();
    cni.abort();
    let _ = cni.await;
    let _ = tokio::time::timeout(Duration::from_secs(10), &mut server).await;
    tasks.shutdown(Duration::from_secs(10)).await;
    replica.shutdown().await;
    outcome
}
