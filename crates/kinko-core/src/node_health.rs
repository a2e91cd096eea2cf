//! Node health rules (C6, C7, C10): whether the configured nodes of a chain can be trusted enough to sign
//! and send withdrawals. Pure: the node monitor (kinko-server `node_monitor`) observes the nodes and passes
//! in what they said and when; this module decides.
//!
//! A chain's nodes are **halted** when any of these holds, otherwise **healthy**:
//! - a configured node did not answer (fail closed: an unreachable cross-check node is no cross-check);
//! - a node produced no new block for `stall_after_ms` (C6, C10: a halted chain or a collapsed hash rate
//!   looks like this, and so does a node that lost its peers);
//! - a node is more than `lag_blocks_max` blocks behind the best head (C6);
//! - two nodes report different blocks at a height at or below the confirmation depth, i.e. a height kinko
//!   would treat as settled (C6, C10): one of them is on another chain, or a re-org deeper than the
//!   confirmation depth is under way, and either way "confirmed" no longer means anything;
//! - a node lacks a block at a height at or below its own confirmation depth.
//!
//! Differences above the confirmation depth are normal (the tip churns) and ignored.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Bound on reasons kept in one verdict: enough to name every problem of a handful of nodes, bounded
/// whatever a misbehaving node reports.
pub const REASONS_MAX: usize = 32;
/// Bound on nodes one evaluation considers (the configuration allows fewer).
pub const NODES_MAX: usize = 16;
/// Bound on the length of a node's error text kept in a reason.
pub const ERROR_LEN_MAX: usize = 300;
/// A verdict older than this many monitor polls, and at least [`VERDICT_STALE_MIN_MS`], no longer vouches
/// for the nodes: a monitor that stopped reporting halts withdrawals (fail closed).
pub const VERDICT_STALE_POLLS: u64 = 20;
/// Floor on the staleness bound, so a short poll interval on a loaded machine does not halt by accident.
pub const VERDICT_STALE_MIN_MS: u64 = 30_000;

/// The thresholds of the rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthConfig {
    /// No new block on a node for this long halts; 0 turns the rule off (a dev node that mines on demand).
    pub stall_after_ms: u64,
    /// A node more than this many blocks behind the best head halts.
    pub lag_blocks_max: u64,
    /// The confirmation depth (C2): a block with at least this many confirmations counts as settled.
    pub confirmations: u64,
}

/// What one node said in one poll.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeStatus {
    /// The node did not answer, answered with an error, or reported the wrong chain.
    Unreachable { error: String },
    Answered {
        head: u64,
        /// When the monitor last saw this node's head change (from [`HeadProgress`]).
        last_new_block_at_ms: i64,
        /// Block hashes the monitor asked for, by height; `None`: the node has no block there.
        hashes: BTreeMap<u64, Option<[u8; 32]>>,
    },
}

/// One node's observation; `node` is a label (`read`, `send`, `cross-check-1`), never a URL (node URLs
/// often carry API keys and these labels end up in alerts).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeObservation {
    pub node: String,
    pub status: NodeStatus,
}

/// Why the nodes are halted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum HaltReason {
    NoNodes,
    Unreachable { node: String, error: String },
    Stalled { node: String, last_new_block_at_ms: i64, stalled_for_ms: u64 },
    Lagging { node: String, head: u64, best_head: u64, behind_blocks: u64 },
    Disagree { height: u64, node_a: String, hash_a: String, node_b: String, hash_b: String },
    MissingBlock { node: String, height: u64 },
}

impl std::fmt::Display for HaltReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HaltReason::NoNodes => write!(f, "no node is configured"),
            HaltReason::Unreachable { node, error } => write!(f, "node {node} unreachable: {error}"),
            HaltReason::Stalled { node, stalled_for_ms, .. } => {
                write!(f, "node {node} produced no new block for {} s", stalled_for_ms / 1_000)
            }
            HaltReason::Lagging { node, head, best_head, behind_blocks } => {
                write!(f, "node {node} is {behind_blocks} blocks behind (head {head}, best {best_head})")
            }
            HaltReason::Disagree { height, node_a, hash_a, node_b, hash_b } => write!(
                f,
                "nodes {node_a} and {node_b} disagree on block {height} at or below the confirmation depth \
                 ({hash_a} vs {hash_b})"
            ),
            HaltReason::MissingBlock { node, height } => {
                write!(f, "node {node} has no block at height {height}, at or below its confirmation depth")
            }
        }
    }
}

/// The verdict on a chain's nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    Healthy,
    Halted { reasons: Vec<HaltReason> },
}

impl Health {
    pub fn is_healthy(&self) -> bool {
        matches!(self, Health::Healthy)
    }

    pub fn reasons(&self) -> &[HaltReason] {
        match self {
            Health::Healthy => &[],
            Health::Halted { reasons } => reasons,
        }
    }
}

/// The highest block with at least `confirmations` confirmations under a head of `head` (the height
/// kinko treats as settled, the same count as [`crate::deposit::confirmations`]); `None` while the chain is
/// shorter than the depth.
pub fn settled_height(head: u64, confirmations: u64) -> Option<u64> {
    (head + 1).checked_sub(confirmations.max(1))
}

/// The height whose hash the monitor asks every node for: the settled height under the lowest head
/// among the nodes that answered, so every node should have it. Block hashes chain, so nodes that agree
/// there agree on everything below it too; one height suffices.
pub fn check_height(heads: &[u64], confirmations: u64) -> Option<u64> {
    heads.iter().min().and_then(|&low| settled_height(low, confirmations))
}

/// Applies the rules. `now_ms` is the time of the poll.
pub fn evaluate(observations: &[NodeObservation], config: &HealthConfig, now_ms: i64) -> Health {
    let observations = &observations[..observations.len().min(NODES_MAX)];
    let mut reasons = Vec::new();
    if observations.is_empty() {
        reasons.push(HaltReason::NoNodes);
    }
    let mut answered = Vec::new();
    for o in observations {
        match &o.status {
            NodeStatus::Unreachable { error } => reasons.push(HaltReason::Unreachable {
                node: o.node.clone(),
                error: error.chars().take(ERROR_LEN_MAX).collect(),
            }),
            NodeStatus::Answered { head, last_new_block_at_ms, hashes } => {
                answered.push((o.node.as_str(), *head, hashes));
                let stalled_for_ms = u64::try_from(now_ms.saturating_sub(*last_new_block_at_ms)).unwrap_or(0);
                if config.stall_after_ms > 0 && stalled_for_ms >= config.stall_after_ms {
                    reasons.push(HaltReason::Stalled {
                        node: o.node.clone(),
                        last_new_block_at_ms: *last_new_block_at_ms,
                        stalled_for_ms,
                    });
                }
            }
        }
    }
    if let Some(best_head) = answered.iter().map(|(_, head, _)| *head).max() {
        for (node, head, _) in &answered {
            let behind_blocks = best_head - head;
            if behind_blocks > config.lag_blocks_max {
                reasons.push(HaltReason::Lagging { node: node.to_string(), head: *head, best_head, behind_blocks });
            }
        }
    }
    // Every height some node reported at or below its own settled height: compare all reports there.
    let mut by_height: BTreeMap<u64, Vec<(&str, [u8; 32])>> = BTreeMap::new();
    for (node, head, hashes) in &answered {
        let Some(settled) = settled_height(*head, config.confirmations) else { continue };
        for (&height, hash) in hashes.iter().filter(|(h, _)| **h <= settled) {
            match hash {
                Some(hash) => by_height.entry(height).or_default().push((node, *hash)),
                None => reasons.push(HaltReason::MissingBlock { node: node.to_string(), height }),
            }
        }
    }
    for (height, reports) in by_height {
        let Some((first_node, first_hash)) = reports.first() else { continue };
        if let Some((other_node, other_hash)) = reports.iter().find(|(_, h)| h != first_hash) {
            reasons.push(HaltReason::Disagree {
                height,
                node_a: first_node.to_string(),
                hash_a: format!("0x{}", hex::encode(first_hash)),
                node_b: other_node.to_string(),
                hash_b: format!("0x{}", hex::encode(other_hash)),
            });
        }
    }
    reasons.truncate(REASONS_MAX);
    if reasons.is_empty() { Health::Healthy } else { Health::Halted { reasons } }
}

/// Tracks when a node's head last changed, for the stall rule. A different hash at the same height (a
/// re-org of the tip) counts as a new block; so does a lower head (a rollback), which the other rules judge.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeadProgress {
    last: Option<(u64, [u8; 32], i64)>,
}

impl HeadProgress {
    /// Records the head seen at `now_ms`; returns when this node's head last changed. The first
    /// observation counts as a change: the monitor cannot know how long the node sat there before.
    pub fn observe(&mut self, head: u64, head_hash: [u8; 32], now_ms: i64) -> i64 {
        match self.last {
            Some((h, hash, since_ms)) if h == head && hash == head_hash => since_ms,
            _ => {
                self.last = Some((head, head_hash, now_ms));
                now_ms
            }
        }
    }
}

/// Whether a stored verdict lets withdrawals proceed at `now_ms`: only a healthy one whose `valid_until_ms`
/// (its check time plus [`stale_after_ms`]) has not passed. No verdict (the monitor has not reported yet)
/// halts (fail closed).
pub fn withdrawals_may_proceed(verdict: Option<(bool, i64)>, now_ms: i64) -> bool {
    matches!(verdict, Some((true, valid_until_ms)) if now_ms < valid_until_ms)
}

/// How old a verdict may be before it no longer counts.
pub fn stale_after_ms(poll_interval_ms: u64) -> u64 {
    poll_interval_ms.saturating_mul(VERDICT_STALE_POLLS).max(VERDICT_STALE_MIN_MS)
}

/// What changed between the stored verdict and the new one: the monitor raises an alert on `Halted` and
/// records the recovery on `Resumed`, once each, however many polls a halt lasts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    Unchanged,
    Halted,
    Resumed,
}

/// `previous_healthy`: the stored verdict, `None` when there is none (a first start counts as healthy
/// before: a first verdict that halts alerts, a first healthy one records nothing).
pub fn transition(previous_healthy: Option<bool>, now_healthy: bool) -> Transition {
    match (previous_healthy.unwrap_or(true), now_healthy) {
        (true, false) => Transition::Halted,
        (false, true) => Transition::Resumed,
        _ => Transition::Unchanged,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: HealthConfig = HealthConfig { stall_after_ms: 60_000, lag_blocks_max: 3, confirmations: 3 };
    const NOW: i64 = 1_000_000;

    fn node(name: &str, head: u64, last_new_block_at_ms: i64, hashes: &[(u64, u8)]) -> NodeObservation {
        NodeObservation {
            node: name.into(),
            status: NodeStatus::Answered {
                head,
                last_new_block_at_ms,
                hashes: hashes.iter().map(|(h, b)| (*h, Some([*b; 32]))).collect(),
            },
        }
    }

    #[test]
    fn c6_two_agreeing_fresh_nodes_are_healthy() {
        let h = evaluate(&[node("read", 100, NOW, &[(98, 7)]), node("cross-check-1", 100, NOW, &[(98, 7)])], &CFG, NOW);
        assert_eq!(h, Health::Healthy);
    }

    #[test]
    fn c10_disagreement_at_the_confirmation_depth_halts() {
        // Head 100, 3 confirmations: block 98 is settled.
        let h = evaluate(&[node("read", 100, NOW, &[(98, 7)]), node("cross-check-1", 100, NOW, &[(98, 8)])], &CFG, NOW);
        match h.reasons() {
            [HaltReason::Disagree { height: 98, node_a, node_b, .. }] => {
                assert_eq!((node_a.as_str(), node_b.as_str()), ("read", "cross-check-1"))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn c10_disagreement_above_the_confirmation_depth_is_tip_churn_and_ignored() {
        let h = evaluate(&[node("read", 100, NOW, &[(99, 7)]), node("cross-check-1", 100, NOW, &[(99, 8)])], &CFG, NOW);
        assert_eq!(h, Health::Healthy, "block 99 has 2 confirmations: not settled");
    }

    #[test]
    fn c6_stall_after_the_configured_time_halts_and_zero_turns_it_off() {
        let obs = [node("read", 100, NOW - 60_000, &[])];
        assert!(matches!(evaluate(&obs, &CFG, NOW).reasons(), [HaltReason::Stalled { stalled_for_ms: 60_000, .. }]));
        assert!(evaluate(&obs, &CFG, NOW - 1).is_healthy(), "one millisecond short of the limit");
        assert!(evaluate(&obs, &HealthConfig { stall_after_ms: 0, ..CFG }, NOW + 10_000_000).is_healthy());
    }

    #[test]
    fn c6_a_lagging_node_halts_beyond_the_limit_only() {
        let at_limit = [node("read", 100, NOW, &[]), node("cross-check-1", 97, NOW, &[])];
        assert!(evaluate(&at_limit, &CFG, NOW).is_healthy());
        let beyond = [node("read", 100, NOW, &[]), node("cross-check-1", 96, NOW, &[])];
        assert_eq!(
            evaluate(&beyond, &CFG, NOW).reasons(),
            [HaltReason::Lagging { node: "cross-check-1".into(), head: 96, best_head: 100, behind_blocks: 4 }]
        );
    }

    #[test]
    fn c6_an_unreachable_node_halts_fail_closed_and_no_node_halts() {
        let obs = [
            node("read", 100, NOW, &[]),
            NodeObservation {
                node: "cross-check-1".into(),
                status: NodeStatus::Unreachable { error: "x".repeat(999) },
            },
        ];
        match evaluate(&obs, &CFG, NOW).reasons() {
            [HaltReason::Unreachable { node, error }] => {
                assert_eq!((node.as_str(), error.len()), ("cross-check-1", ERROR_LEN_MAX))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(evaluate(&[], &CFG, NOW).reasons(), [HaltReason::NoNodes]);
    }

    #[test]
    fn c10_a_missing_settled_block_halts() {
        let obs = [NodeObservation {
            node: "cross-check-1".into(),
            status: NodeStatus::Answered { head: 100, last_new_block_at_ms: NOW, hashes: [(98, None)].into() },
        }];
        assert_eq!(
            evaluate(&obs, &CFG, NOW).reasons(),
            [HaltReason::MissingBlock { node: "cross-check-1".into(), height: 98 }]
        );
    }

    #[test]
    fn c10_check_height_is_the_settled_height_under_the_lowest_head() {
        assert_eq!(settled_height(100, 3), Some(98));
        assert_eq!(settled_height(1, 3), None);
        assert_eq!(settled_height(2, 3), Some(0));
        assert_eq!(check_height(&[100, 90, 95], 3), Some(88));
        assert_eq!(check_height(&[], 3), None);
        // The settled height has exactly `confirmations` confirmations by the ledger's own count.
        assert_eq!(crate::deposit::confirmations(100, 98), 3);
    }

    #[test]
    fn c6_head_progress_counts_new_heights_and_new_tip_hashes() {
        let mut p = HeadProgress::default();
        assert_eq!(p.observe(10, [1; 32], 100), 100);
        assert_eq!(p.observe(10, [1; 32], 200), 100, "same head: no progress");
        assert_eq!(p.observe(10, [2; 32], 300), 300, "re-orged tip: a new block");
        assert_eq!(p.observe(11, [3; 32], 400), 400);
    }

    #[test]
    fn c6_only_a_fresh_healthy_verdict_lets_withdrawals_proceed() {
        assert!(!withdrawals_may_proceed(None, NOW), "no verdict yet: halted");
        assert!(withdrawals_may_proceed(Some((true, NOW + 1)), NOW));
        assert!(!withdrawals_may_proceed(Some((false, NOW + 1_000)), NOW));
        assert!(!withdrawals_may_proceed(Some((true, NOW)), NOW), "stale monitor: halted");
        assert_eq!(stale_after_ms(1_000), 30_000);
        assert_eq!(stale_after_ms(5_000), 100_000);
    }

    #[test]
    fn c10_transitions_alert_once_per_halt_and_record_the_resume() {
        assert_eq!(transition(None, false), Transition::Halted);
        assert_eq!(transition(None, true), Transition::Unchanged);
        assert_eq!(transition(Some(true), false), Transition::Halted);
        assert_eq!(transition(Some(false), false), Transition::Unchanged, "still halted: no second alert");
        assert_eq!(transition(Some(false), true), Transition::Resumed);
    }

    #[test]
    fn c10_reasons_are_bounded_and_serialise_with_a_kind() {
        let many: Vec<_> = (0..40)
            .map(|i| NodeObservation { node: format!("n{i}"), status: NodeStatus::Unreachable { error: "e".into() } })
            .collect();
        assert_eq!(evaluate(&many, &CFG, NOW).reasons().len(), NODES_MAX.min(REASONS_MAX));
        let json =
            serde_json::to_value(HaltReason::Lagging { node: "a".into(), head: 1, best_head: 9, behind_blocks: 8 })
                .unwrap();
        assert_eq!(json["kind"], "lagging");
    }
}
