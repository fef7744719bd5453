//! Injecting the scheduled faults into the running cluster and healing them all.

use nix::sys::signal::Signal;

use super::{find_leader, http_ok, wait_ready, RunError};
use crate::cluster::{Cluster, ClusterError, ELECTION_TIMEOUT_MS};
use crate::faults::{Fault, Step};
use crate::history::FaultWindow;

/// Applies a fault; returns its window (end filled in by the caller) and the members to
/// restart at heal.
pub(super) async fn apply(
    cluster: &mut Cluster,
    step: &Step,
    now_ms: u64,
) -> Result<(FaultWindow, Vec<usize>), RunError> {
    let n = cluster.nodes.len();
    let order = &step.order;
    let mut restart = Vec::new();
    let mut minority = Vec::new();
    let detail: String;
    let cut = |cluster: &Cluster, a: &[usize], b: &[usize]| -> Result<(), ClusterError> {
        for &x in a {
            for &y in b {
                cluster.block(x, y, true)?;
                cluster.block(y, x, true)?;
            }
        }
        Ok(())
    };
    match step.fault {
        Fault::Isolate => {
            let rest: Vec<usize> = order[1..].to_vec();
            cut(cluster, &order[..1], &rest)?;
            minority = vec![order[0]];
            detail = format!("member {} alone", order[0]);
        }
        Fault::LeaderMinority => {
            let leader = find_leader(cluster).await.unwrap_or(order[0]);
            let buddy = *order.iter().find(|&&i| i != leader).unwrap_or(&leader);
            minority = vec![leader, buddy];
            let rest: Vec<usize> = (0..n).filter(|i| !minority.contains(i)).collect();
            cut(cluster, &minority, &rest)?;
            detail = format!("leader {leader} with {buddy} | {rest:?}");
        }
        Fault::Split => {
            let small = (n - 1) / 2;
            minority = order[..small].to_vec();
            cut(cluster, &order[..small], &order[small..])?;
            detail = format!("{:?} | {:?}", &order[..small], &order[small..]);
        }
        Fault::Bridge => {
            // order[0] is the bridge; the rest split in two halves that cannot see each other.
            let rest = &order[1..];
            let half = rest.len() / 2;
            cut(cluster, &rest[..half], &rest[half..])?;
            minority = rest[..half].to_vec();
            detail = format!(
                "{:?} | {:?}, bridged by {}",
                &rest[..half],
                &rest[half..],
                order[0]
            );
        }
        Fault::OneWay => {
            for peer in 0..n {
                if peer != order[0] {
                    cluster.block(order[0], peer, false)?;
                }
            }
            minority = vec![order[0]];
            detail = format!("member {} hears nobody", order[0]);
        }
        Fault::Loss => {
            for i in 0..n {
                cluster.lossy(i, 0.3)?;
            }
            detail = "30% loss between all nodes".into();
        }
        Fault::Kill => {
            cluster.kill(order[0]);
            restart.push(order[0]);
            detail = format!("SIGKILL member {}", order[0]);
        }
        Fault::KillLeader => {
            let leader = find_leader(cluster).await.unwrap_or(order[0]);
            cluster.kill(leader);
            restart.push(leader);
            detail = format!("SIGKILL leader {leader}");
        }
        Fault::KillAll => {
            for i in 0..n {
                cluster.kill(i);
                restart.push(i);
            }
            detail = "SIGKILL every member".into();
        }
        Fault::Pause | Fault::PauseLeader => {
            let target = if step.fault == Fault::PauseLeader {
                find_leader(cluster).await.unwrap_or(order[0])
            } else {
                order[0]
            };
            cluster.signal(target, Signal::SIGSTOP);
            detail = format!(
                "SIGSTOP member {target} for {} ms (election timeout {ELECTION_TIMEOUT_MS} ms)",
                step.hold_ms
            );
        }
        Fault::Wipe => {
            cluster.kill(order[0]);
            cluster.wipe(order[0])?;
            restart.push(order[0]);
            detail = format!("SIGKILL member {}, wiped its data dir", order[0]);
        }
        Fault::DiskFull => {
            let target = n - 1;
            cluster.fill_disk(target)?;
            detail = format!("filled member {target}'s tmpfs data dir");
        }
    }
    Ok((
        FaultWindow {
            name: step.fault.name().into(),
            detail,
            start_ms: now_ms,
            end_ms: now_ms,
            partition: step.fault.is_network(),
            minority,
        },
        restart,
    ))
}

/// Undoes every fault: rules flushed, paused members continued, filler removed, dead members
/// restarted (and waited for).
pub(super) async fn heal(
    cluster: &mut Cluster,
    restart: &[usize],
    supervisor_restarts: &mut Vec<usize>,
) -> Result<(), RunError> {
    let n = cluster.nodes.len();
    for i in 0..n {
        cluster.flush_rules(i)?;
        if cluster.nodes[i].paused {
            cluster.signal(i, Signal::SIGCONT);
        }
        if cluster.nodes[i].tmpfs {
            let _ = std::fs::remove_file(cluster.nodes[i].data_dir.join("chaos-filler"));
        }
    }
    let mut started = Vec::new();
    for i in 0..n {
        // What a liveness probe on /healthz does in Kubernetes: a member whose Raft stopped
        // (e.g. on a storage error) is restarted.
        let unhealthy = cluster.alive(i)
            && !restart.contains(&i)
            && !http_ok(cluster, &format!("{}/healthz", cluster.nodes[i].base_url())).await;
        if unhealthy {
            tracing::warn!(
                member = i,
                "/healthz failed: restarting it like a liveness probe"
            );
            supervisor_restarts.push(i);
        }
        if restart.contains(&i) || !cluster.alive(i) || unhealthy {
            cluster.kill(i);
            cluster.start(i, false)?;
            started.push(i);
        }
    }
    for i in started {
        wait_ready(cluster, i).await?;
    }
    Ok(())
}
