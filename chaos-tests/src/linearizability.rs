//! Per-key linearizability of the lease history, by a Wing & Gong / Lowe style search:
//! repeatedly pick a pending operation that may take effect next (no other pending operation
//! completed before it was invoked), apply it to a sequential model of one lease, backtrack on
//! contradiction, and memoise (set of linearized ops, model state) to cut repeats.
//!
//! Definite failures are dropped (never applied). Unknown writes may take effect at any time
//! after their invocation, or never; unknown reads are dropped (they observed nothing).

use std::collections::HashSet;

use ipnetwork::IpNetwork;

use crate::history::{Op, OpKind, Outcome};

/// The sequential model of one lease key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Model {
    Absent,
    Held(IpNetwork),
    /// Held with a subnet nobody has observed yet (an unknown acquire took effect).
    HeldUnseen,
}

fn step(model: Model, op: &Op) -> Option<Model> {
    match (op.kind, op.outcome) {
        (OpKind::Acquire, Outcome::Ok) => {
            let got = op.value?;
            match model {
                Model::Absent | Model::HeldUnseen => Some(Model::Held(got)),
                Model::Held(held) if held == got => Some(model),
                Model::Held(_) => None,
            }
        }
        (OpKind::Acquire, _) => Some(match model {
            Model::Absent => Model::HeldUnseen,
            held => held,
        }),
        (OpKind::Release, _) => Some(Model::Absent),
        (OpKind::Read, _) => match (model, op.value) {
            (Model::Absent, None) => Some(model),
            (Model::Held(held), Some(seen)) if held == seen => Some(model),
            (Model::HeldUnseen, Some(seen)) => Some(Model::Held(seen)),
            _ => None,
        },
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// No order explains the history; the ids of the ops involved (all of the key's ops).
    NotLinearizable {
        key: String,
        ops: Vec<u64>,
    },
    /// The search gave up after this many states (reported, never counted as a pass).
    Inconclusive {
        key: String,
        states: usize,
    },
}

/// States explored per key before giving up.
pub const SEARCH_BUDGET: usize = 2_000_000;

/// Checks one key's operations (all with the same key).
pub fn check_key(key: &str, ops: &[Op]) -> Verdict {
    let mut ops: Vec<&Op> = ops
        .iter()
        .filter(|op| match op.outcome {
            Outcome::Fail => false,
            Outcome::Unknown => op.kind != OpKind::Read,
            Outcome::Ok => true,
        })
        .collect();
    ops.sort_by_key(|op| op.invoke_ms);
    let n = ops.len();
    // Unknown ops never complete: they constrain nothing and need not be linearized.
    let complete: Vec<u64> = ops
        .iter()
        .map(|op| match op.outcome {
            Outcome::Ok => op.complete_ms,
            _ => u64::MAX,
        })
        .collect();
    let required = ops.iter().filter(|op| op.outcome == Outcome::Ok).count();
    let words = n.div_ceil(64).max(1);

    let mut seen: HashSet<(Vec<u64>, Model)> = HashSet::new();
    // Depth-first: (linearized set, model, number of required ops done).
    let mut stack: Vec<(Vec<u64>, Model, usize)> = vec![(vec![0; words], Model::Absent, 0)];
    while let Some((done, model, required_done)) = stack.pop() {
        if required_done == required {
            return Verdict::Linearizable;
        }
        if seen.len() >= SEARCH_BUDGET {
            return Verdict::Inconclusive {
                key: key.to_string(),
                states: seen.len(),
            };
        }
        if !seen.insert((done.clone(), model)) {
            continue;
        }
        let is_done = |i: usize| done[i / 64] & (1 << (i % 64)) != 0;
        // The earliest completion among pending ops bounds which ops may go next.
        let horizon = (0..n)
            .filter(|&i| !is_done(i))
            .map(|i| complete[i])
            .min()
            .unwrap_or(u64::MAX);
        for i in (0..n).rev() {
            if is_done(i) || ops[i].invoke_ms > horizon {
                continue;
            }
            if let Some(next) = step(model, ops[i]) {
                let mut next_done = done.clone();
                next_done[i / 64] |= 1 << (i % 64);
                let bump = usize::from(ops[i].outcome == Outcome::Ok);
                stack.push((next_done, next, required_done + bump));
            }
        }
    }
    Verdict::NotLinearizable {
        key: key.to_string(),
        ops: ops.iter().map(|op| op.id).collect(),
    }
}

/// Checks every key; returns the number of keys and one verdict per key that is not
/// linearizable (or inconclusive).
pub fn check(ops: &[Op]) -> (usize, Vec<Verdict>) {
    let mut keys: Vec<&str> = ops.iter().map(|op| op.key.as_str()).collect();
    keys.sort_unstable();
    keys.dedup();
    let mut bad = Vec::new();
    for key in &keys {
        let of_key: Vec<Op> = ops.iter().filter(|op| op.key == *key).cloned().collect();
        match check_key(key, &of_key) {
            Verdict::Linearizable => {}
            verdict => bad.push(verdict),
        }
    }
    (keys.len(), bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Option<IpNetwork> {
        Some(s.parse().unwrap_or_else(|e| panic!("{e}")))
    }

    fn op(
        id: u64,
        kind: OpKind,
        span: (u64, u64),
        outcome: Outcome,
        value: Option<IpNetwork>,
    ) -> Op {
        Op {
            id,
            client: 0,
            member: 0,
            key: "k".into(),
            kind,
            invoke_ms: span.0,
            complete_ms: span.1,
            outcome,
            value,
        }
    }

    /// A history of key "k" from `kind from-to outcome value` items separated by `,`: kind
    /// `acq`, `rel` or `read`; outcome `ok`, `fail` or `?` (unknown); value `-` (none) or
    /// `N` for 10.0.N.0/24. Ops get ids 1, 2, ... in order.
    fn history(text: &str) -> Vec<Op> {
        let items = text.split(',').map(|item| {
            let words: Vec<&str> = item.split_whitespace().collect();
            let [kind, span, outcome, value] = words[..] else {
                panic!("bad op {item:?}")
            };
            let kind = match kind {
                "acq" => OpKind::Acquire,
                "rel" => OpKind::Release,
                "read" => OpKind::Read,
                _ => panic!("bad kind {kind:?}"),
            };
            let outcome = match outcome {
                "ok" => Outcome::Ok,
                "fail" => Outcome::Fail,
                "?" => Outcome::Unknown,
                _ => panic!("bad outcome {outcome:?}"),
            };
            let (from, to) = span.split_once('-').unwrap_or_else(|| panic!("{span:?}"));
            let at = |t: &str| t.parse().unwrap_or_else(|e| panic!("{t:?}: {e}"));
            let value = (value != "-").then(|| format!("10.0.{value}.0/24"));
            (kind, (at(from), at(to)), outcome, value)
        });
        items
            .enumerate()
            .map(|(i, (kind, span, outcome, value))| {
                op(
                    i as u64 + 1,
                    kind,
                    span,
                    outcome,
                    value.as_deref().and_then(net),
                )
            })
            .collect()
    }

    #[test]
    fn verdict_of_each_history() {
        let cases = [
            // a sequential history
            (true, "read 0-1 ok -, acq 2-3 ok 1, read 4-5 ok 1, acq 6-7 ok 1, rel 8-9 ok -, read 10-11 ok -, acq 12-13 ok 2"),
            // a read invoked after an acknowledged acquire that sees no lease is stale
            (false, "acq 0-3 ok 1, read 4-5 ok -"),
            // a read concurrent with an acquire may see either side
            (true, "acq 0-10 ok 1, read 1-2 ok -, read 3-4 ok 1"),
            // both reads overlap the acquire, but once one saw it a later read cannot miss it
            (false, "acq 0-10 ok 1, read 1-2 ok 1, read 3-4 ok -"),
            // a changed subnet without a release
            (false, "acq 0-1 ok 1, acq 2-3 ok 2"),
            // an unknown release may or may not have happened ...
            (true, "acq 0-1 ok 1, rel 2-3 ? -, read 4-5 ok 1, read 6-7 ok -"),
            // ... but it cannot undo itself
            (false, "acq 0-1 ok 1, rel 2-3 ? -, read 4-5 ok -, read 6-7 ok 1"),
            // an unknown acquire binds its subnet at first sight
            (false, "acq 0-1 ? -, read 4-5 ok 3, read 6-7 ok 4"),
            // a failed op is never applied
            (false, "acq 0-1 fail -, read 2-3 ok 1"),
        ];
        for (linearizable, text) in cases {
            let verdict = check_key("k", &history(text));
            if linearizable {
                assert_eq!(verdict, Verdict::Linearizable, "{text}");
            } else {
                assert!(
                    matches!(verdict, Verdict::NotLinearizable { .. }),
                    "{text}: {verdict:?}"
                );
            }
        }
    }

    #[test]
    fn check_reports_only_bad_keys() {
        let mut ops = vec![
            op(1, OpKind::Acquire, (0, 3), Outcome::Ok, net("10.0.1.0/24")),
            op(2, OpKind::Read, (4, 5), Outcome::Ok, None),
        ];
        let mut good = op(3, OpKind::Read, (0, 1), Outcome::Ok, None);
        good.key = "other".into();
        ops.push(good);
        let (keys, bad) = check(&ops);
        assert_eq!(keys, 2);
        assert_eq!(bad.len(), 1);
    }
}
