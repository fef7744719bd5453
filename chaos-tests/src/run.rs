//! One chaos run: start the cluster, run the workload under the seeded fault schedule, heal,
//! wait for convergence, check every invariant, report.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use evio_api::types::{Consistency, LeaseJson};
use evio_api::Client;
use serde::Serialize;

use crate::access::Access;
use crate::checkers::{self, InvariantResult};
use crate::cluster::{Cluster, ClusterError};
use crate::faults::{schedule, Fault};
use crate::history::{FaultWindow, History, MemberState, Outcome};
use crate::workload::{self, Member, Recorder};

mod inject;
use inject::{apply, heal};

pub struct Options {
    pub seed: u64,
    pub duration: Duration,
    pub faults: Vec<Fault>,
    pub clients: usize,
    pub keys: usize,
}

/// Convergence after the final heal must happen within this.
pub const RECOVERY_BOUND: Duration = Duration::from_secs(45);
const READY_TIMEOUT: Duration = Duration::from_secs(40);

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("setup: {0}")]
    Setup(String),
}

#[derive(Debug, Serialize)]
pub struct OpCounts {
    pub ok: usize,
    pub fail: usize,
    pub unknown: usize,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub seed: u64,
    pub nodes: usize,
    pub duration_s: u64,
    pub faults_enabled: Vec<&'static str>,
    pub passed: bool,
    pub invariants: Vec<InvariantResult>,
    pub recovery_ms: Option<u64>,
    pub ops: OpCounts,
    pub samples: usize,
    pub probes: usize,
    pub fault_windows: Vec<FaultWindow>,
    /// Members that were running but failed /healthz at a heal and were restarted.
    pub supervisor_restarts: Vec<String>,
    pub replay: String,
}

impl Report {
    pub fn summary(&self) -> String {
        let mut out = format!(
            "evio-chaos seed {} ({} nodes, {} s): {} ops ({} ok, {} fail, {} unknown), {} samples, {} probes, {} faults, recovery {}\n",
            self.seed,
            self.nodes,
            self.duration_s,
            self.ops.ok + self.ops.fail + self.ops.unknown,
            self.ops.ok,
            self.ops.fail,
            self.ops.unknown,
            self.samples,
            self.probes,
            self.fault_windows.len(),
            self.recovery_ms
                .map(|ms| format!("{ms} ms"))
                .unwrap_or_else(|| "none".into()),
        );
        for r in &self.invariants {
            out.push_str(&format!(
                "{} {:<48} checked {:>6}, violations {}\n",
                if r.passed { "PASS" } else { "FAIL" },
                r.name,
                r.checked,
                r.violation_count
            ));
            for v in &r.violations {
                out.push_str(&format!("       {v}\n"));
            }
        }
        if !self.supervisor_restarts.is_empty() {
            out.push_str(&format!(
                "note: restarted on failed /healthz (Raft stopped): {}\n",
                self.supervisor_restarts.join("; ")
            ));
        }
        if !self.passed {
            out.push_str(&format!(
                "VIOLATION with seed {}; replay: {}\n",
                self.seed, self.replay
            ));
        }
        out
    }
}

/// Whether `GET url` answers 2xx, over TLS with the checker's certificate.
async fn http_ok(cluster: &Cluster, url: &str) -> bool {
    match &cluster.access {
        Some(access) => access.http_ok(url).await,
        None => false,
    }
}

/// A client of `base` with the checker's certificate.
fn client_of(cluster: &Cluster, base: &str) -> Option<Client> {
    cluster.access.as_ref()?.client(base).ok()
}

async fn wait_ready(cluster: &mut Cluster, index: usize) -> Result<(), RunError> {
    let url = format!("{}/readyz", cluster.nodes[index].base_url());
    let deadline = Instant::now() + READY_TIMEOUT;
    while Instant::now() < deadline {
        if http_ok(cluster, &url).await {
            return Ok(());
        }
        if !cluster.alive(index) {
            return Err(RunError::Setup(format!(
                "member {index} exited before it was ready; its log:\n{}",
                tail(&cluster.log_text(index), 20)
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(RunError::Setup(format!(
        "member {index} not ready after {READY_TIMEOUT:?}; its log:\n{}",
        tail(&cluster.log_text(index), 20)
    )))
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The member the most members name as leader (None when nobody answers).
async fn find_leader(cluster: &Cluster) -> Option<usize> {
    for node in &cluster.nodes {
        let Some(client) = client_of(cluster, &node.base_url()) else {
            continue;
        };
        let Ok(Ok(info)) = tokio::time::timeout(Duration::from_secs(1), client.cluster()).await
        else {
            continue;
        };
        let Some(leader) = info.leader_id else {
            continue;
        };
        let addr = info
            .members
            .iter()
            .find(|m| m.id == leader)
            .map(|m| m.addr.clone())?;
        return cluster.nodes.iter().position(|n| n.addr() == addr);
    }
    None
}

async fn member_state(cluster: &Cluster, member: usize) -> Option<MemberState> {
    let client = client_of(cluster, &cluster.nodes[member].base_url())?;
    let info = tokio::time::timeout(Duration::from_secs(2), client.cluster())
        .await
        .ok()?
        .ok()?;
    let leases = tokio::time::timeout(
        Duration::from_secs(2),
        client.list_leases(Consistency::Local),
    )
    .await
    .ok()?
    .ok()?;
    Some(MemberState {
        member,
        node_id: info.node_id,
        leader_id: info.leader_id,
        is_leader: info.leader_id == Some(info.node_id),
        last_applied: info.last_applied,
        leases: leases.into_iter().map(|l| (l.node, l.subnet)).collect(),
    })
}

/// Polls every member until the convergence checker passes or the bound runs out.
async fn converge(cluster: &Cluster, healed_at: Instant) -> (Vec<MemberState>, Option<u64>) {
    let mut last = Vec::new();
    while healed_at.elapsed() < RECOVERY_BOUND {
        let mut states = Vec::new();
        for node in &cluster.nodes {
            if let Some(s) = member_state(cluster, node.index).await {
                states.push(s);
            }
        }
        if states.len() == cluster.nodes.len() {
            let probe = History {
                final_states: states.clone(),
                recovery_ms: Some(0),
                recovery_bound_ms: 1,
                ..History::default()
            };
            if checkers::converged_after_heal(&probe).passed {
                return (states, Some(healed_at.elapsed().as_millis() as u64));
            }
        }
        last = states;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    (last, None)
}

async fn acquire_host_leases(cluster: &Cluster) -> Result<Vec<LeaseJson>, RunError> {
    let mut leases = Vec::new();
    for node in &cluster.nodes {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let client = client_of(cluster, &cluster.nodes[0].base_url())
                .ok_or_else(|| RunError::Setup("no client of member 0".into()))?;
            match client.acquire(&node.name, Some(node.ip)).await {
                Ok((lease, _)) => {
                    leases.push(lease);
                    break;
                }
                Err(e) if Instant::now() > deadline => {
                    return Err(RunError::Setup(format!("host lease {}: {e}", node.name)))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
    // Every member must hold every host lease locally before faults start.
    let deadline = Instant::now() + READY_TIMEOUT;
    for node in &cluster.nodes {
        loop {
            let state = member_state(cluster, node.index).await;
            let has_all = state.is_some_and(|s| {
                leases
                    .iter()
                    .all(|l| s.leases.contains(&(l.node.clone(), l.subnet)))
            });
            if has_all {
                break;
            }
            if Instant::now() > deadline {
                return Err(RunError::Setup(format!(
                    "member {} never replicated the host leases",
                    node.index
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(leases)
}

pub async fn run(cluster: &mut Cluster, options: &Options) -> Result<Report, RunError> {
    cluster.start(0, true)?;
    let access = Access::issue(&cluster.tls_dir(), READY_TIMEOUT)
        .await
        .map_err(|e| RunError::Setup(e.to_string()))?;
    cluster.access = Some(access.clone());
    cluster.keep_ca()?;
    wait_ready(cluster, 0).await?;
    for i in 1..cluster.nodes.len() {
        cluster.start(i, false)?;
        wait_ready(cluster, i).await?;
    }
    let host_leases = acquire_host_leases(cluster).await?;
    tracing::info!(
        nodes = cluster.nodes.len(),
        "cluster up, host leases replicated"
    );

    let recorder = Recorder::new();
    recorder.record(|h| {
        h.host_leases = host_leases
            .iter()
            .map(|l| (l.node.clone(), l.subnet))
            .collect()
    });
    let members: Arc<Vec<Member>> = Arc::new(
        cluster
            .nodes
            .iter()
            .zip(&host_leases)
            .map(|(node, lease)| Member {
                index: node.index,
                base_url: node.base_url(),
                access: access.clone(),
                cni_socket: node.cni_socket.clone(),
                ipam_dir: node.ipam_dir.clone(),
                host_lease: lease.clone(),
            })
            .collect(),
    );
    let keys: Arc<Vec<String>> = Arc::new((0..options.keys).map(|k| format!("k{k}")).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in 0..options.clients {
        tasks.push(tokio::spawn(workload::lease_client(
            c,
            options.seed,
            members.clone(),
            keys.clone(),
            recorder.clone(),
            stop.clone(),
        )));
    }
    for member in members.iter() {
        tasks.push(tokio::spawn(workload::sampler(
            member.clone(),
            recorder.clone(),
            stop.clone(),
        )));
        tasks.push(tokio::spawn(workload::pod_loop(
            member.clone(),
            cluster.tag.clone(),
            cluster.bins.evio_cni.clone(),
            cluster.pod_namespaces.clone(),
            recorder.clone(),
            stop.clone(),
        )));
    }

    let started = Instant::now();
    let steps = schedule(
        options.seed,
        &options.faults,
        cluster.nodes.len(),
        (options.duration.as_secs() as usize).max(1),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut outcome = Ok(());
    let mut supervisor_restarts = Vec::new();
    for step in &steps {
        if started.elapsed() + Duration::from_millis(step.hold_ms) > options.duration {
            break;
        }
        let start_ms = recorder.now_ms();
        let (mut window, restart) = match apply(cluster, step, start_ms).await {
            Ok(applied) => applied,
            Err(e) => {
                outcome = Err(e);
                break;
            }
        };
        tracing::info!(fault = %window.name, detail = %window.detail, "fault");
        tokio::time::sleep(Duration::from_millis(step.hold_ms)).await;
        window.end_ms = recorder.now_ms();
        recorder.record(|h| h.faults.push(window));
        let mut by_supervisor = Vec::new();
        let healed = heal(cluster, &restart, &mut by_supervisor).await;
        for member in by_supervisor {
            supervisor_restarts.push(format!("member {member} after {}", step.fault.name()));
        }
        if let Err(e) = healed {
            outcome = Err(e);
            break;
        }
        tokio::time::sleep(Duration::from_millis(1_000)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    let healed_at = Instant::now();
    let mut by_supervisor = Vec::new();
    let healed = heal(cluster, &[], &mut by_supervisor).await;
    for member in by_supervisor {
        supervisor_restarts.push(format!("member {member} at the final heal"));
    }
    outcome?;
    healed?;
    let (final_states, recovery_ms) = converge(cluster, healed_at).await;

    let mut history = match recorder.history.lock() {
        Ok(mut h) => std::mem::take(&mut *h),
        Err(_) => return Err(RunError::Setup("history lock poisoned".into())),
    };
    history.final_states = final_states;
    history.recovery_ms = recovery_ms;
    history.recovery_bound_ms = RECOVERY_BOUND.as_millis() as u64;
    history.logs = (0..cluster.nodes.len())
        .map(|i| (i, cluster.log_text(i)))
        .collect();
    let invariants = checkers::check_all(&history);
    let count = |o: Outcome| history.ops.iter().filter(|op| op.outcome == o).count();
    Ok(Report {
        seed: options.seed,
        nodes: cluster.nodes.len(),
        duration_s: options.duration.as_secs(),
        faults_enabled: options.faults.iter().map(|f| f.name()).collect(),
        passed: invariants.iter().all(|r| r.passed),
        invariants,
        recovery_ms,
        ops: OpCounts {
            ok: count(Outcome::Ok),
            fail: count(Outcome::Fail),
            unknown: count(Outcome::Unknown),
        },
        samples: history.samples.len(),
        probes: history.probes.len(),
        fault_windows: history.faults.clone(),
        supervisor_restarts,
        replay: format!(
            "evio-chaos --nodes {} --seed {} --duration {}s --faults {}",
            cluster.nodes.len(),
            options.seed,
            options.duration.as_secs(),
            options
                .faults
                .iter()
                .map(|f| f.name())
                .collect::<Vec<_>>()
                .join(",")
        ),
    })
}
