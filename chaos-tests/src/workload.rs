//! The workload: lease clients, replica samplers and pod ADD/DEL loops, all recording into
//! one [`Recorder`]. Runs in the hub namespace (the runtime's threads join it).

use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use evio_api::types::{Consistency, LeaseJson};
use evio_api::ClientError;
use ipnetwork::IpNetwork;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::access::Access;
use crate::cluster::POD_CIDR;
use crate::history::{History, Op, OpKind, Outcome, Probe, ProbeKind, Sample};

/// A client gives up on an operation after this long (the outcome is then unknown).
pub const OP_TIMEOUT: Duration = Duration::from_secs(3);

pub struct Recorder {
    start: Instant,
    next_id: AtomicU64,
    pub history: Mutex<History>,
}

impl Recorder {
    pub fn new() -> Arc<Recorder> {
        Arc::new(Recorder {
            start: Instant::now(),
            next_id: AtomicU64::new(1),
            history: Mutex::new(History::default()),
        })
    }

    pub fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn with<T>(&self, f: impl FnOnce(&mut History) -> T) -> Option<T> {
        self.history.lock().ok().map(|mut h| f(&mut h))
    }

    pub fn record<T>(&self, f: impl FnOnce(&mut History) -> T) {
        let _ = self.with(f);
    }
}

/// What workload tasks need to know about a member.
#[derive(Clone)]
pub struct Member {
    pub index: usize,
    pub base_url: String,
    /// The checker's certificate.
    pub access: Access,
    pub cni_socket: PathBuf,
    pub ipam_dir: PathBuf,
    pub host_lease: LeaseJson,
}

fn outcome_of(error: &ClientError) -> Outcome {
    match error {
        ClientError::Api { status, .. } if (400..500).contains(status) => Outcome::Fail,
        // Refused before any byte went out: nothing was proposed.
        ClientError::Transport { source, .. } if source.is_connect() => Outcome::Fail,
        _ => Outcome::Unknown,
    }
}

/// One lease client: random key, random member, random operation, until `stop`.
pub async fn lease_client(
    client_no: usize,
    seed: u64,
    members: Arc<Vec<Member>>,
    keys: Arc<Vec<String>>,
    recorder: Arc<Recorder>,
    stop: Arc<AtomicBool>,
) {
    let mut rng = StdRng::seed_from_u64(seed ^ (0x9e37_79b9 * (client_no as u64 + 1)));
    while !stop.load(Ordering::Relaxed) {
        let member = &members[rng.random_range(0..members.len())];
        let key = keys[rng.random_range(0..keys.len())].clone();
        let roll: u32 = rng.random_range(0..100);
        let kind = match roll {
            0..45 => OpKind::Acquire,
            45..75 => OpKind::Read,
            _ => OpKind::Release,
        };
        let Ok(client) = member.access.client(&member.base_url) else {
            return;
        };
        let id = recorder.next_id.fetch_add(1, Ordering::Relaxed);
        let invoke_ms = recorder.now_ms();
        let result: Result<Result<Option<IpNetwork>, ClientError>, _> = match kind {
            OpKind::Acquire => {
                tokio::time::timeout(OP_TIMEOUT, async {
                    client
                        .acquire(&key, None)
                        .await
                        .map(|(l, _)| Some(l.subnet))
                })
                .await
            }
            OpKind::Release => {
                tokio::time::timeout(OP_TIMEOUT, async {
                    client.release(&key).await.map(|_| None)
                })
                .await
            }
            OpKind::Read => {
                tokio::time::timeout(OP_TIMEOUT, async {
                    client
                        .get_lease(&key, Consistency::Linearizable)
                        .await
                        .map(|l| l.map(|l| l.subnet))
                })
                .await
            }
        };
        let complete_ms = recorder.now_ms();
        let (outcome, value) = match result {
            Ok(Ok(value)) => (Outcome::Ok, value),
            Ok(Err(e)) => (outcome_of(&e), None),
            Err(_) => (Outcome::Unknown, None),
        };
        recorder.record(|h| {
            h.ops.push(Op {
                id,
                client: client_no,
                member: member.index,
                key,
                kind,
                invoke_ms,
                complete_ms,
                outcome,
                value,
            })
        });
        tokio::time::sleep(Duration::from_millis(rng.random_range(20..120))).await;
    }
}

/// Samples one member's local replica and probes that its own lease reads locally.
pub async fn sampler(member: Member, recorder: Arc<Recorder>, stop: Arc<AtomicBool>) {
    let Ok(client) = member.access.client(&member.base_url) else {
        return;
    };
    while !stop.load(Ordering::Relaxed) {
        let invoke_ms = recorder.now_ms();
        let result = tokio::time::timeout(
            Duration::from_secs(2),
            client.list_leases(Consistency::Local),
        )
        .await;
        let complete_ms = recorder.now_ms();
        let (ok, detail) = match result {
            Ok(Ok(leases)) => {
                let own = leases.iter().find(|l| l.node == member.host_lease.node);
                let ok = own.map(|l| l.subnet) == Some(member.host_lease.subnet);
                let sample = Sample {
                    member: member.index,
                    at_ms: complete_ms,
                    leases: leases.into_iter().map(|l| (l.node, l.subnet)).collect(),
                };
                recorder.record(|h| h.samples.push(sample));
                (
                    ok,
                    if ok {
                        String::new()
                    } else {
                        "own lease missing".into()
                    },
                )
            }
            Ok(Err(e)) => (false, e.to_string()),
            Err(_) => (false, "timed out after 2 s".into()),
        };
        recorder.record(|h| {
            h.probes.push(Probe {
                member: member.index,
                kind: ProbeKind::LocalRead,
                invoke_ms,
                complete_ms,
                ok,
                detail,
            })
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The CNI network config for a member's lease (Linux bridge inside the host namespace).
pub fn cni_config(member: &Member) -> serde_json::Value {
    let lease = &member.host_lease;
    json!({
        "cniVersion": "1.0.0", "name": "evio-chaos", "type": "evio-cni",
        "socket": member.cni_socket,
        "bridge": "cni0", "bridgeType": "LXBR",
        "bridgeIPv4": format!("{}/{}", lease.gateway, lease.pod_cidr.prefix()),
        "isGateway": true, "isDefaultGateway": true, "mtu": 1400, "isIPMasq": false,
        "nodeSubnet": lease.subnet.to_string(), "podCIDR": POD_CIDR,
        "ipam": {
            "type": "host-local",
            "dataDir": member.ipam_dir,
            "ranges": [[{"subnet": POD_CIDR, "rangeStart": lease.range_start.to_string(),
                         "rangeEnd": lease.range_end.to_string(),
                         "gateway": lease.gateway.to_string()}]],
        },
    })
}

async fn run_cni(
    evio_cni: &std::path::Path,
    command: &str,
    container: &str,
    netns: &str,
    config: &serde_json::Value,
) -> Result<(), String> {
    let mut child = tokio::process::Command::new(evio_cni)
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", evio_cni.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        let mut bytes = Vec::new();
        let _ = write!(bytes, "{config}");
        use tokio::io::AsyncWriteExt;
        stdin
            .write_all(&bytes)
            .await
            .map_err(|e| format!("stdin: {e}"))?;
    }
    match tokio::time::timeout(Duration::from_secs(10), child.wait_with_output()).await {
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => Err(format!(
            "exit {:?}: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).trim()
        )),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out after 10 s".into()),
    }
}

/// Pod ADD then DEL through the real evio-cni on one member, in a fresh pod namespace.
pub async fn pod_loop(
    member: Member,
    tag: String,
    evio_cni: PathBuf,
    pod_namespaces: Arc<Mutex<Vec<String>>>,
    recorder: Arc<Recorder>,
    stop: Arc<AtomicBool>,
) {
    let config = cni_config(&member);
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let ns = format!("{tag}-p{}-{n}", member.index);
        if crate::cluster::sh("ip", &["netns", "add", &ns]).is_err() {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        if let Ok(mut list) = pod_namespaces.lock() {
            list.push(ns.clone());
        }
        let netns = format!("/run/netns/{ns}");
        let container = format!("{tag}-c{}-{n}", member.index);
        for (command, kind) in [("ADD", ProbeKind::PodAdd), ("DEL", ProbeKind::PodDel)] {
            let invoke_ms = recorder.now_ms();
            let result = run_cni(&evio_cni, command, &container, &netns, &config).await;
            let complete_ms = recorder.now_ms();
            recorder.record(|h| {
                h.probes.push(Probe {
                    member: member.index,
                    kind,
                    invoke_ms,
                    complete_ms,
                    ok: result.is_ok(),
                    detail: result.err().unwrap_or_default(),
                })
            });
        }
        let _ = crate::cluster::sh("ip", &["netns", "del", &ns]);
        if let Ok(mut list) = pod_namespaces.lock() {
            list.retain(|x| x != &ns);
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
}
