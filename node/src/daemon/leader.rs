//! Work only the Raft leader does (the etcd mirror, the Node GC): run a session each time this
//! member becomes leader, cancel it when leadership is lost or the daemon stops.

use std::future::Future;

use evio_raft::types::ServerState;
use evio_raft::Replica;
use tokio_util::sync::CancellationToken;

/// Runs `session(leading)` each time this member becomes leader, until `stop` is cancelled or
/// Raft stops. `leading` is cancelled when leadership is lost (or on stop); the session then
/// returns, and is awaited before this member waits to lead again, so two sessions never
/// overlap. A session that returns on its own while still leader is not restarted until the
/// next election.
pub async fn while_leader<S, F>(replica: &Replica, stop: &CancellationToken, mut session: S)
where
    S: FnMut(CancellationToken) -> F,
    F: Future<Output = ()>,
{
    let mut metrics = replica.watch_role();
    loop {
        let led = tokio::select! {
            led = metrics.wait_for(|m| m.state == ServerState::Leader) => led.is_ok(),
            _ = stop.cancelled() => false,
        };
        if !led {
            return;
        }
        let leading = stop.child_token();
        let run = session(leading.clone());
        tokio::pin!(run);
        let lost = tokio::select! {
            _ = &mut run => false,
            lost = metrics.wait_for(|m| m.state != ServerState::Leader) => {
                leading.cancel();
                lost.is_ok()
            }
        };
        if lost {
            run.await;
        }
        if stop.is_cancelled() {
            return;
        }
        if !lost {
            // Ended on its own (or Raft stopped): wait for this term to end before the next.
            if metrics
                .wait_for(|m| m.state != ServerState::Leader)
                .await
                .is_err()
            {
                return;
            }
        }
    }
}
