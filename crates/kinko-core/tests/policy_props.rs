//! Property tests of the policy engine (K11, K20, O1) over random configs, requests and histories,
//! including extreme times and amounts:
//!
//! - deciding never panics and is deterministic (same input, same decision);
//! - every non-auto decision carries reasons; a needs-approval's quorum is at least 1, the class minimum and
//!   the amount band's quorum (openbao#3666: no path yields "approved by nobody");
//! - a breach of a rule configured to deny, checked by an oracle written here, always denies — so Deny never
//!   degrades to Auto or needs-approval — and an `Auto` never breaks the per-transaction or rolling limit.

use std::net::{IpAddr, Ipv4Addr};

use kinko_core::policy::{Decision, HISTORY_LEN_MAX, PastWithdrawal, Policy, PolicyConfig, Request};
use kinko_core::{Amount, AssetCode};
use proptest::prelude::*;
use serde_json::json;

const WALLET: &str = "0xaaaa000000000000000000000000000000000001";
const DESTS: [&str; 3] = ["0xd0", "0xd1", "0xd2"];
const CLASSES: [(&str, u8); 4] = [("hot_small", 1), ("hot_large", 2), ("cold", 3), ("key_operation", 2)];

fn action(deny: bool) -> &'static str {
    if deny { "deny" } else { "needs_approval" }
}

#[derive(Debug, Clone)]
struct Case {
    class: usize,
    band_quorums: (u8, u8),
    per_tx_max: u128,
    per_tx_deny: bool,
    rolling_max: u128,
    rolling_window_ms: i64,
    rolling_deny: bool,
    velocity: Option<(u32, i64, bool)>,
    whitelist: Option<(i64, i64, bool)>,
    hours: Option<(u8, u8, bool)>,
    cidr_deny: Option<bool>,
    anomaly: Option<(u32, usize, usize, Option<bool>)>,
    amount: u128,
    dest: usize,
    now_ms: i64,
    ip: Option<u32>,
    history: Vec<(i64, u128)>,
}

fn amount() -> impl Strategy<Value = u128> {
    prop_oneof![0u128..2_000, Just(u128::MAX), any::<u128>()]
}

fn time_ms() -> impl Strategy<Value = i64> {
    prop_oneof![1_700_000_000_000i64..1_700_000_000_000 + 10 * 86_400_000, Just(i64::MIN), Just(i64::MAX), any::<i64>()]
}

prop_compose! {
    fn case()(
        class in 0..CLASSES.len(),
        q in 0u8..3,
        q2 in 0u8..3,
        per_tx_max in 1u128..2_000,
        per_tx_deny in any::<bool>(),
        rolling_max in prop_oneof![0u128..5_000, Just(u128::MAX)],
        rolling_window_ms in 1i64..200_000,
        rolling_deny in any::<bool>(),
        velocity in proptest::option::of((1u32..10, 1i64..200_000, any::<bool>())),
        whitelist in proptest::option::of((time_ms(), 0i64..200_000, any::<bool>())),
        hours in proptest::option::of((0u8..24, 0u8..24, any::<bool>())),
        cidr_deny in proptest::option::of(any::<bool>()),
        anomaly in proptest::option::of((1u32..5, 1usize..8, 1usize..8, proptest::option::of(any::<bool>()))),
        amount in amount(),
        dest in 0..DESTS.len(),
        now_ms in time_ms(),
        ip in proptest::option::of(any::<u32>()),
        history in prop_oneof![
            8 => proptest::collection::vec((time_ms(), amount()), 0..40),
            1 => proptest::collection::vec((time_ms(), amount()), HISTORY_LEN_MAX - 1..HISTORY_LEN_MAX + 2),
        ],
    ) -> Case {
        let min = CLASSES[class].1;
        Case {
            class,
            band_quorums: (min + q, min + q + q2),
            per_tx_max, per_tx_deny, rolling_max, rolling_window_ms, rolling_deny,
            velocity, whitelist,
            hours: hours.filter(|(s, e, _)| s != e),
            cidr_deny,
            anomaly: anomaly.map(|(k, a, b, thin)| (k, a.max(b), a.min(b), thin)),
            amount, dest, now_ms, ip, history,
        }
    }
}

fn config(c: &Case) -> serde_json::Value {
    let (lo, hi) = c.band_quorums;
    let mut cfg = json!({
        "wallet": WALLET,
        "asset": "ETH",
        "class": CLASSES[c.class].0,
        "quorum_bands": [
            { "from": "0", "approvals": lo, "approvers": 10 },
            { "from": "1000", "approvals": hi, "approvers": 10 }
        ],
        "per_tx_limit": { "max": c.per_tx_max.to_string(), "on_breach": action(c.per_tx_deny) },
        "rolling_limit": {
            "max": c.rolling_max.to_string(), "window_ms": c.rolling_window_ms, "on_breach": action(c.rolling_deny)
        }
    });
    if let Some((count_max, window_ms, deny)) = c.velocity {
        cfg["velocity"] = json!({ "count_max": count_max, "window_ms": window_ms, "on_breach": action(deny) });
    }
    if let Some((added_at_ms, cooling_off_ms, deny)) = c.whitelist {
        cfg["whitelist"] = json!({
            "entries": [{ "address": DESTS[0], "added_at_ms": added_at_ms }, { "address": DESTS[1], "added_at_ms": 0 }],
            "cooling_off_ms": cooling_off_ms,
            "on_unlisted": action(deny)
        });
    }
    if let Some((start, end, deny)) = c.hours {
        cfg["business_hours"] = json!({ "start_hour_utc": start, "end_hour_utc": end, "weekdays": ["mon", "wed", "sat"], "on_breach": action(deny) });
    }
    if let Some(deny) = c.cidr_deny {
        cfg["ip_allowlist"] = json!({ "cidrs": ["10.0.0.0/8", "::/0"], "on_breach": action(deny) });
    }
    if let Some((multiplier, samples_max, samples_min, thin)) = c.anomaly {
        cfg["anomaly"] = json!({
            "multiplier": multiplier, "samples_max": samples_max, "samples_min": samples_min,
            "on_thin_history": thin.map(action)
        });
    }
    cfg
}

fn in_window(at_ms: i64, now_ms: i64, window_ms: i64) -> bool {
    // Written with i128 so the oracle does not share the engine's saturating arithmetic.
    i128::from(now_ms) - i128::from(at_ms) < i128::from(window_ms)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn k20_decisions_never_panic_and_deny_is_never_softened(c in case()) {
        let policy: Policy = serde_json::from_value::<PolicyConfig>(config(&c))
            .expect("generated config deserializes")
            .validate()
            .expect("generated config is valid");
        let asset: AssetCode = "ETH".parse().expect("asset");
        let history: Vec<PastWithdrawal> =
            c.history.iter().map(|&(at_ms, a)| PastWithdrawal { at_ms, amount: Amount::from_base_units(a) }).collect();
        let request = Request {
            wallet: WALLET,
            asset: &asset,
            amount: Amount::from_base_units(c.amount),
            destination: DESTS[c.dest],
            now_ms: c.now_ms,
            requester_ip: c.ip.map(|v| IpAddr::V4(Ipv4Addr::from(v))),
            history: &history,
        };
        let decision = policy.decide(&request);
        prop_assert_eq!(&decision, &policy.decide(&request), "deterministic");

        let class_min = CLASSES[c.class].1;
        let band = if c.amount >= 1000 { c.band_quorums.1 } else { c.band_quorums.0 };
        match &decision {
            Decision::Auto => {}
            Decision::NeedsApproval { quorum, reasons } => {
                prop_assert!(!reasons.is_empty());
                prop_assert!(*quorum >= 1 && *quorum >= class_min && *quorum >= band, "quorum {} class {} band {}", quorum, class_min, band);
            }
            Decision::Deny { reasons } => prop_assert!(!reasons.is_empty()),
        }

        // Oracle for the rules whose breach is plain arithmetic.
        let history_ok = history.len() <= HISTORY_LEN_MAX;
        let per_tx_breached = c.amount > c.per_tx_max;
        let spent: u128 = c.history.iter()
            .filter(|(at, _)| in_window(*at, c.now_ms, c.rolling_window_ms))
            .fold(0u128, |s, (_, a)| s.saturating_add(*a));
        let rolling_breached = spent.saturating_add(c.amount) > c.rolling_max;
        let must_deny = c.amount == 0
            || !history_ok
            || (per_tx_breached && c.per_tx_deny)
            || (rolling_breached && c.rolling_deny);
        if must_deny {
            prop_assert!(matches!(decision, Decision::Deny { .. }), "expected deny, got {:?}", decision);
        }
        if matches!(decision, Decision::Auto) {
            prop_assert!(!per_tx_breached && !rolling_breached);
            prop_assert!(!matches!(CLASSES[c.class].0, "cold" | "key_operation"), "K11: these classes always need approval");
        }
    }
}
