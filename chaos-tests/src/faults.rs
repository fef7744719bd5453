//! The fault menu and the seeded schedule.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// One node cut off from all others.
    Isolate,
    /// The leader and one follower cut off from the other three.
    LeaderMinority,
    /// A random 2 | 3 split.
    Split,
    /// Non-transitive: A..B | B..C, the bridge node B sees both sides, the sides not each other.
    Bridge,
    /// One node hears nobody but can still send.
    OneWay,
    /// 30 % of packets between nodes dropped, everywhere.
    Loss,
    Kill,
    KillLeader,
    KillAll,
    /// SIGSTOP longer than the election timeout.
    Pause,
    PauseLeader,
    /// SIGKILL, wipe the data dir, rejoin.
    Wipe,
    /// Fill the tmpfs data dir of the last node.
    DiskFull,
}

impl Fault {
    pub const ALL: [Fault; 13] = [
        Fault::Isolate,
        Fault::LeaderMinority,
        Fault::Split,
        Fault::Bridge,
        Fault::OneWay,
        Fault::Loss,
        Fault::Kill,
        Fault::KillLeader,
        Fault::KillAll,
        Fault::Pause,
        Fault::PauseLeader,
        Fault::Wipe,
        Fault::DiskFull,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::Isolate => "isolate",
            Fault::LeaderMinority => "leader-minority",
            Fault::Split => "split",
            Fault::Bridge => "bridge",
            Fault::OneWay => "one-way",
            Fault::Loss => "loss",
            Fault::Kill => "kill",
            Fault::KillLeader => "kill-leader",
            Fault::KillAll => "kill-all",
            Fault::Pause => "pause",
            Fault::PauseLeader => "pause-leader",
            Fault::Wipe => "wipe",
            Fault::DiskFull => "disk-full",
        }
    }

    /// Network faults: every process stays up.
    pub fn is_network(self) -> bool {
        matches!(
            self,
            Fault::Isolate
                | Fault::LeaderMinority
                | Fault::Split
                | Fault::Bridge
                | Fault::OneWay
                | Fault::Loss
        )
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown fault {0:?}: use partition, loss, kill, pause, wipe, disk-full, all, or one of {names}", names = Fault::ALL.map(Fault::name).join(", "))]
pub struct UnknownFault(pub String);

/// Parses `--faults a,b,c`: single faults or the groups `partition`, `kill`, `pause`, `all`.
pub fn parse_faults(text: &str) -> Result<Vec<Fault>, UnknownFault> {
    let mut out = Vec::new();
    for word in text.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        let group: Vec<Fault> = match word {
            "all" => Fault::ALL.to_vec(),
            "partition" => vec![
                Fault::Isolate,
                Fault::LeaderMinority,
                Fault::Split,
                Fault::Bridge,
                Fault::OneWay,
            ],
            "kill" => vec![Fault::Kill, Fault::KillLeader, Fault::KillAll],
            "pause" => vec![Fault::Pause, Fault::PauseLeader],
            "diskfull" => vec![Fault::DiskFull],
            other => match Fault::ALL.into_iter().find(|f| f.name() == other) {
                Some(f) => vec![f],
                None => return Err(UnknownFault(other.to_string())),
            },
        };
        for f in group {
            if !out.contains(&f) {
                out.push(f);
            }
        }
    }
    if out.is_empty() {
        return Err(UnknownFault(text.to_string()));
    }
    Ok(out)
}

/// One scheduled fault: what, how long, and random picks for its targets.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Step {
    pub fault: Fault,
    pub hold_ms: u64,
    /// Seeded permutation of the members, used to choose targets.
    pub order: Vec<usize>,
}

/// The schedule for a seed: faults cycle through a seeded shuffle of the enabled set so a
/// short run still covers many kinds.
pub fn schedule(seed: u64, enabled: &[Fault], nodes: usize, steps: usize) -> Vec<Step> {
    use rand::seq::SliceRandom;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut bag: Vec<Fault> = Vec::new();
    let mut out = Vec::new();
    for _ in 0..steps {
        if bag.is_empty() {
            bag = enabled.to_vec();
            bag.shuffle(&mut rng);
        }
        let fault = bag.pop().unwrap_or(Fault::Isolate);
        let mut order: Vec<usize> = (0..nodes).collect();
        order.shuffle(&mut rng);
        out.push(Step {
            fault,
            hold_ms: rng.random_range(1_500..3_500),
            order,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_and_names_parse_and_junk_is_named() {
        assert_eq!(parse_faults("kill").map(|f| f.len()).ok(), Some(3));
        assert_eq!(
            parse_faults("partition,loss,wipe").map(|f| f.len()).ok(),
            Some(7)
        );
        assert_eq!(parse_faults("all").map(|f| f.len()).ok(), Some(13));
        let err = parse_faults("kill,explode").err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("\"explode\"")));
    }

    #[test]
    fn a_seed_gives_the_same_schedule() {
        let a = schedule(7, &Fault::ALL, 5, 20);
        let b = schedule(7, &Fault::ALL, 5, 20);
        assert_eq!(
            serde_json::to_string(&a).ok(),
            serde_json::to_string(&b).ok()
        );
        // The first 13 steps cover every fault once.
        let mut first: Vec<&str> = a[..13].iter().map(|s| s.fault.name()).collect();
        first.sort_unstable();
        first.dedup();
        assert_eq!(first.len(), 13);
    }
}
