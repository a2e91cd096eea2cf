//! The policy engine rule by rule (K11, K20, O1): for each rule a request it lets through, one that needs
//! approval and one it refuses, plus the edges the issue names — the whitelist cooling-off to the
//! millisecond, the velocity and rolling windows' ends — and load-time refusal of quorums below what a
//! policy class demands (openbao#3666).

use std::net::IpAddr;

use kinko_core::policy::{
    Cidr, CidrError, DAY_MS, Decision, HISTORY_LEN_MAX, PastWithdrawal, Policy, PolicyClass, PolicyConfig,
    PolicyConfigError, PolicySetConfig, PolicySetError, Reason, Request, Weekday,
};
use kinko_core::{Amount, AssetCode};
use serde_json::{Value, json};

/// Wednesday 2024-01-03 12:00:00 UTC.
const NOW_MS: i64 = 1_704_283_200_000;
const HOUR_MS: i64 = 3_600_000;
const WALLET: &str = "0xaaaa000000000000000000000000000000000001";
const DEST: &str = "0xbbbb000000000000000000000000000000000002";

/// A hot_small policy with only the mandatory limits: per-tx 10 000, rolling 20 000 per day; quorum 1 below
/// 1 000 and 2 from 1 000.
fn base() -> Value {
    json!({
        "wallet": WALLET,
        "asset": "ETH",
        "class": "hot_small",
        "quorum_bands": [
            { "from": "0", "approvals": 1, "approvers": 3 },
            { "from": "1000", "approvals": 2, "approvers": 3 }
        ],
        "per_tx_limit": { "max": "10000" },
        "rolling_limit": { "max": "20000" }
    })
}

fn with(mut cfg: Value, key: &str, rule: Value) -> Value {
    cfg[key] = rule;
    cfg
}

fn load(cfg: Value) -> Result<Policy, PolicyConfigError> {
    let cfg: PolicyConfig = serde_json::from_value(cfg).expect("config deserializes");
    cfg.validate()
}

fn policy(cfg: Value) -> Policy {
    load(cfg).expect("config is valid")
}

fn amt(v: u128) -> Amount {
    Amount::from_base_units(v)
}

fn past(at_ms: i64, amount: u128) -> PastWithdrawal {
    PastWithdrawal { at_ms, amount: amt(amount) }
}

struct Req {
    amount: u128,
    destination: &'static str,
    now_ms: i64,
    ip: Option<IpAddr>,
    history: Vec<PastWithdrawal>,
}

fn req(amount: u128) -> Req {
    Req { amount, destination: DEST, now_ms: NOW_MS, ip: None, history: Vec::new() }
}

impl Req {
    fn at(mut self, now_ms: i64) -> Self {
        self.now_ms = now_ms;
        self
    }
    fn to(mut self, destination: &'static str) -> Self {
        self.destination = destination;
        self
    }
    fn ip(mut self, ip: &str) -> Self {
        self.ip = Some(ip.parse().expect("test ip"));
        self
    }
    fn history(mut self, history: Vec<PastWithdrawal>) -> Self {
        self.history = history;
        self
    }
    fn decide(&self, policy: &Policy) -> Decision {
        let asset: AssetCode = "ETH".parse().expect("asset");
        policy.decide(&Request {
            wallet: WALLET,
            asset: &asset,
            amount: amt(self.amount),
            destination: self.destination,
            now_ms: self.now_ms,
            requester_ip: self.ip,
            history: &self.history,
        })
    }
}

fn assert_auto(d: &Decision) {
    assert_eq!(d, &Decision::Auto, "expected auto");
}

fn approval(d: &Decision) -> (u8, &[Reason]) {
    match d {
        Decision::NeedsApproval { quorum, reasons } => (*quorum, reasons),
        other => panic!("expected needs-approval, got {other:?}"),
    }
}

fn denial(d: &Decision) -> &[Reason] {
    match d {
        Decision::Deny { reasons } => reasons,
        other => panic!("expected deny, got {other:?}"),
    }
}

// ---- per-transaction limit ----

#[test]
fn k20_per_tx_limit_allows_exactly_the_limit() {
    assert_auto(&req(10_000).decide(&policy(base())));
}

#[test]
fn k20_per_tx_limit_denies_one_above_by_default() {
    let d = req(10_001).decide(&policy(base()));
    assert_eq!(denial(&d), [Reason::PerTxLimit { amount: amt(10_001), max: amt(10_000) }]);
}

#[test]
fn k11_per_tx_limit_can_ask_for_approval_with_the_amount_bands_quorum() {
    let p = policy(with(base(), "per_tx_limit", json!({ "max": "500", "on_breach": "needs_approval" })));
    let d = req(501).decide(&p);
    assert_eq!(approval(&d), (1, &[Reason::PerTxLimit { amount: amt(501), max: amt(500) }][..]));
    let (quorum, _) = approval(&req(1_000).decide(&p));
    assert_eq!(quorum, 2, "1 000 is in the second band");
}

// ---- rolling limit ----

#[test]
fn k20_rolling_limit_allows_up_to_the_limit_including_this_withdrawal() {
    let r = req(5_000).history(vec![past(NOW_MS - HOUR_MS, 15_000)]);
    assert_auto(&r.decide(&policy(base())));
}

#[test]
fn k11_rolling_limit_needs_approval_one_above_by_default() {
    let d = req(5_001).history(vec![past(NOW_MS - HOUR_MS, 15_000)]).decide(&policy(base()));
    let (quorum, reasons) = approval(&d);
    assert_eq!(quorum, 2);
    assert_eq!(
        reasons,
        [Reason::RollingLimit { window_ms: DAY_MS, spent: amt(15_000), amount: amt(5_001), max: amt(20_000) }]
    );
}

#[test]
fn k20_rolling_limit_can_deny() {
    let p = policy(with(base(), "rolling_limit", json!({ "max": "20000", "on_breach": "deny" })));
    let d = req(5_001).history(vec![past(NOW_MS - HOUR_MS, 15_000)]).decide(&p);
    assert!(matches!(denial(&d), [Reason::RollingLimit { .. }]));
}

#[test]
fn k20_rolling_limit_window_excludes_a_withdrawal_exactly_window_ms_old() {
    let p = policy(base());
    let out = req(5_001).history(vec![past(NOW_MS - DAY_MS, 15_000)]);
    assert_auto(&out.decide(&p));
    let inside = req(5_001).history(vec![past(NOW_MS - DAY_MS + 1, 15_000)]);
    approval(&inside.decide(&p));
}

#[test]
fn k20_rolling_limit_counts_future_stamped_withdrawals() {
    let d = req(5_001).history(vec![past(NOW_MS + HOUR_MS, 15_000)]).decide(&policy(base()));
    approval(&d);
}

// ---- velocity ----

fn velocity(on_breach: &str) -> Value {
    with(base(), "velocity", json!({ "count_max": 3, "window_ms": HOUR_MS, "on_breach": on_breach }))
}

fn n_recent(n: usize) -> Vec<PastWithdrawal> {
    (0..n).map(|i| past(NOW_MS - 1_000 * (i as i64 + 1), 1)).collect()
}

#[test]
fn k20_velocity_allows_count_max_withdrawals_per_window() {
    assert_auto(&req(1).history(n_recent(2)).decide(&policy(velocity("needs_approval"))));
}

#[test]
fn k11_velocity_needs_approval_above_count_max() {
    let d = req(1).history(n_recent(3)).decide(&policy(velocity("needs_approval")));
    let (quorum, reasons) = approval(&d);
    assert_eq!(quorum, 1);
    assert_eq!(reasons, [Reason::Velocity { window_ms: HOUR_MS, count: 4, count_max: 3 }]);
}

#[test]
fn k20_velocity_can_deny() {
    let d = req(1).history(n_recent(3)).decide(&policy(velocity("deny")));
    assert!(matches!(denial(&d), [Reason::Velocity { count: 4, .. }]));
}

#[test]
fn k20_velocity_window_edge_exactly_window_ms_ago_is_out_one_ms_less_is_in() {
    let p = policy(velocity("deny"));
    let mut h = n_recent(2);
    h.push(past(NOW_MS - HOUR_MS, 1));
    assert_auto(&req(1).history(h.clone()).decide(&p));
    h.pop();
    h.push(past(NOW_MS - HOUR_MS + 1, 1));
    denial(&req(1).history(h).decide(&p));
}

// ---- destination whitelist and cooling-off ----

const ADDED_MS: i64 = NOW_MS - 10 * DAY_MS;
const COOLING_MS: i64 = 2 * DAY_MS;

fn whitelist(on_unlisted: &str) -> Value {
    with(
        base(),
        "whitelist",
        json!({
            "entries": [{ "address": DEST, "added_at_ms": ADDED_MS }],
            "cooling_off_ms": COOLING_MS,
            "on_unlisted": on_unlisted
        }),
    )
}

#[test]
fn k20_whitelist_allows_a_listed_destination_past_its_cooling_off() {
    assert_auto(&req(1).decide(&policy(whitelist("deny"))));
}

#[test]
fn k20_whitelist_denies_an_unlisted_destination_by_default() {
    let mut cfg = whitelist("deny");
    cfg["whitelist"].as_object_mut().expect("object").remove("on_unlisted");
    let d = req(1).to("0xcccc000000000000000000000000000000000003").decide(&policy(cfg));
    assert_eq!(
        denial(&d),
        [Reason::DestinationNotWhitelisted { destination: "0xcccc000000000000000000000000000000000003".into() }]
    );
}

#[test]
fn k11_whitelist_can_send_unlisted_destinations_to_approval() {
    let d = req(1).to("0xcccc000000000000000000000000000000000003").decide(&policy(whitelist("needs_approval")));
    assert!(matches!(approval(&d), (1, [Reason::DestinationNotWhitelisted { .. }])));
}

#[test]
fn k20_whitelist_cooling_off_denies_one_ms_before_and_allows_at_the_boundary() {
    let p = policy(whitelist("needs_approval"));
    let usable_at_ms = ADDED_MS + COOLING_MS;
    let d = req(1).at(usable_at_ms - 1).decide(&p);
    assert_eq!(
        denial(&d),
        [Reason::DestinationCoolingOff {
            destination: DEST.into(),
            added_at_ms: ADDED_MS,
            usable_at_ms,
            now_ms: usable_at_ms - 1
        }],
        "a cooling entry denies even when unlisted destinations would only need approval"
    );
    assert_auto(&req(1).at(usable_at_ms).decide(&p));
}

#[test]
fn k20_whitelist_entry_whose_cooling_off_overflows_never_becomes_usable() {
    let cfg = with(
        base(),
        "whitelist",
        json!({ "entries": [{ "address": DEST, "added_at_ms": i64::MAX - 5 }], "cooling_off_ms": DAY_MS }),
    );
    denial(&req(1).at(i64::MAX).decide(&policy(cfg)));
}

// ---- business hours ----

fn hours(on_breach: &str) -> Value {
    with(
        base(),
        "business_hours",
        json!({
            "start_hour_utc": 9, "end_hour_utc": 17,
            "weekdays": ["mon", "tue", "wed", "thu", "fri"],
            "on_breach": on_breach
        }),
    )
}

#[test]
fn o1_business_hours_allow_a_weekday_inside_hours() {
    assert_eq!(Weekday::at_ms(NOW_MS), Weekday::Wed);
    assert_auto(&req(1).decide(&policy(hours("needs_approval"))));
    let nine = NOW_MS - 3 * HOUR_MS;
    assert_auto(&req(1).at(nine).decide(&policy(hours("needs_approval"))));
}

#[test]
fn o1_business_hours_need_approval_outside_hours_and_on_weekends() {
    let p = policy(hours("needs_approval"));
    let five_pm = NOW_MS + 5 * HOUR_MS;
    let d = req(1).at(five_pm).decide(&p);
    assert_eq!(approval(&d).1, [Reason::OutsideBusinessHours { hour_utc: 17, weekday: Weekday::Wed }]);
    let just_before_nine = NOW_MS - 3 * HOUR_MS - 1;
    assert_eq!(
        approval(&req(1).at(just_before_nine).decide(&p)).1,
        [Reason::OutsideBusinessHours { hour_utc: 8, weekday: Weekday::Wed }]
    );
    let saturday_noon = NOW_MS + 3 * DAY_MS;
    assert_eq!(
        approval(&req(1).at(saturday_noon).decide(&p)).1,
        [Reason::OutsideBusinessHours { hour_utc: 12, weekday: Weekday::Sat }]
    );
}

#[test]
fn o1_business_hours_can_deny() {
    denial(&req(1).at(NOW_MS + 3 * DAY_MS).decide(&policy(hours("deny"))));
}

#[test]
fn o1_business_hours_may_wrap_past_midnight() {
    let cfg = with(
        base(),
        "business_hours",
        json!({ "start_hour_utc": 22, "end_hour_utc": 6, "weekdays": ["wed", "thu"], "on_breach": "deny" }),
    );
    let p = policy(cfg);
    let midnight_thu = NOW_MS + 12 * HOUR_MS;
    assert_auto(&req(1).at(midnight_thu - 2 * HOUR_MS).decide(&p));
    assert_auto(&req(1).at(midnight_thu + 6 * HOUR_MS - 1).decide(&p));
    denial(&req(1).at(midnight_thu + 6 * HOUR_MS).decide(&p));
    denial(&req(1).decide(&p));
}

// ---- operator terminal IP allowlist ----

fn terminals(on_breach: &str) -> Value {
    with(base(), "ip_allowlist", json!({ "cidrs": ["10.0.0.0/8", "2001:db8::/32"], "on_breach": on_breach }))
}

#[test]
fn o1_ip_allowlist_allows_terminals_inside_a_cidr_v4_v6_and_mapped() {
    let p = policy(terminals("deny"));
    for ip in ["10.1.2.3", "10.255.255.255", "2001:db8::1", "::ffff:10.1.2.3"] {
        assert_auto(&req(1).ip(ip).decide(&p));
    }
    assert_auto(&req(1).decide(&p));
}

#[test]
fn o1_ip_allowlist_denies_other_terminals_by_default() {
    let mut cfg = terminals("deny");
    cfg["ip_allowlist"].as_object_mut().expect("object").remove("on_breach");
    let p = policy(cfg);
    for ip in ["11.0.0.1", "9.255.255.255", "2001:db9::1", "::1"] {
        let d = req(1).ip(ip).decide(&p);
        assert_eq!(denial(&d), [Reason::TerminalNotAllowed { ip: ip.parse().expect("ip") }], "{ip}");
    }
}

#[test]
fn o1_ip_allowlist_can_ask_for_approval() {
    let d = req(1).ip("192.168.1.1").decide(&policy(terminals("needs_approval")));
    assert!(matches!(approval(&d), (1, [Reason::TerminalNotAllowed { .. }])));
}

#[test]
fn o1_cidr_parsing_refuses_host_bits_bad_prefixes_and_garbage() {
    assert_eq!("10.0.0.1/8".parse::<Cidr>(), Err(CidrError::HostBits));
    assert_eq!("10.0.0.0/33".parse::<Cidr>(), Err(CidrError::PrefixLen));
    assert_eq!("::/129".parse::<Cidr>(), Err(CidrError::PrefixLen));
    assert_eq!("10.0.0.0/".parse::<Cidr>(), Err(CidrError::PrefixLen));
    assert_eq!("10.0.0.0/+8".parse::<Cidr>(), Err(CidrError::PrefixLen));
    assert_eq!("10.0.0/8".parse::<Cidr>(), Err(CidrError::Address));
    let all_v4: Cidr = "0.0.0.0/0".parse().expect("cidr");
    assert!(all_v4.contains("1.2.3.4".parse().expect("ip")));
    assert!(!all_v4.contains("2001:db8::1".parse().expect("ip")), "families never match each other");
    let host: Cidr = "10.0.0.7".parse().expect("bare address is a /32");
    assert!(host.contains("10.0.0.7".parse().expect("ip")));
    assert!(!host.contains("10.0.0.6".parse().expect("ip")));
    assert!(load(with(base(), "ip_allowlist", json!({ "cidrs": [] }))).is_err());
    let bad: Result<PolicyConfig, _> =
        serde_json::from_value(with(base(), "ip_allowlist", json!({ "cidrs": ["10.0.0.1/8"] })));
    assert!(bad.is_err(), "a malformed CIDR fails at load");
}

// ---- anomaly ----

fn anomaly(extra: Value) -> Value {
    let mut rule = json!({ "multiplier": 3, "samples_max": 5, "samples_min": 3 });
    for (k, v) in extra.as_object().expect("object") {
        rule[k] = v.clone();
    }
    with(base(), "anomaly", rule)
}

/// Median 100; the oldest (a 9 000) falls outside `samples_max` = 5.
fn typical() -> Vec<PastWithdrawal> {
    let mut h: Vec<PastWithdrawal> =
        [100, 100, 200, 100, 50].iter().enumerate().map(|(i, a)| past(NOW_MS - 2 * DAY_MS - i as i64, *a)).collect();
    h.push(past(NOW_MS - 3 * DAY_MS, 9_000));
    h
}

#[test]
fn k20_anomaly_allows_up_to_k_times_the_median() {
    assert_auto(&req(300).history(typical()).decide(&policy(anomaly(json!({})))));
}

#[test]
fn k20_anomaly_needs_approval_above_k_times_the_median() {
    let d = req(301).history(typical()).decide(&policy(anomaly(json!({}))));
    assert_eq!(
        approval(&d),
        (1, &[Reason::Anomaly { amount: amt(301), median: amt(100), multiplier: 3, samples: 5 }][..])
    );
}

#[test]
fn k20_anomaly_can_deny() {
    denial(&req(301).history(typical()).decide(&policy(anomaly(json!({ "on_breach": "deny" })))));
}

#[test]
fn k20_anomaly_median_of_an_even_count_averages_the_middle_two() {
    let h = vec![past(NOW_MS - 4, 100), past(NOW_MS - 3, 100), past(NOW_MS - 2, 201), past(NOW_MS - 1, 201)];
    let p = policy(anomaly(json!({ "samples_max": 4 })));
    assert_auto(&req(450).history(h.clone()).decide(&p));
    assert!(
        matches!(approval(&req(451).history(h).decide(&p)).1, [Reason::Anomaly { median, .. }] if *median == amt(150))
    );
}

#[test]
fn k20_anomaly_abstains_without_a_baseline_unless_configured() {
    let thin = vec![past(NOW_MS - DAY_MS / 2, 1), past(NOW_MS - DAY_MS / 3, 1)];
    assert_auto(&req(9_000).history(thin.clone()).decide(&policy(anomaly(json!({})))));
    let d = req(9_000).history(thin.clone()).decide(&policy(anomaly(json!({ "on_thin_history": "needs_approval" }))));
    assert_eq!(approval(&d).1, [Reason::AnomalyNoBaseline { samples: 2, samples_min: 3 }]);
    denial(&req(9_000).history(thin).decide(&policy(anomaly(json!({ "on_thin_history": "deny" })))));
}

// ---- classes, combinations, malformed requests ----

#[test]
fn k11_cold_class_never_decides_auto_and_demands_its_minimum_quorum() {
    let mut cfg = base();
    cfg["class"] = json!("cold");
    cfg["quorum_bands"] = json!([{ "from": "0", "approvals": 3, "approvers": 5 }]);
    let d = req(1).decide(&policy(cfg));
    assert_eq!(approval(&d), (3, &[Reason::ClassNeedsApproval { class: PolicyClass::Cold }][..]));
}

#[test]
fn k11_combined_needs_approval_reasons_all_listed_and_quorum_is_the_largest_demanded() {
    let mut cfg = velocity("needs_approval");
    cfg["velocity"]["quorum"] = json!(3);
    cfg = with(cfg, "ip_allowlist", json!({ "cidrs": ["10.0.0.0/8"], "on_breach": "needs_approval" }));
    let d = req(1).ip("192.0.2.1").history(n_recent(3)).decide(&policy(cfg));
    let (quorum, reasons) = approval(&d);
    assert_eq!(quorum, 3, "velocity asks 3, the band 1");
    assert!(matches!(reasons, [Reason::Velocity { .. }, Reason::TerminalNotAllowed { .. }]), "{reasons:?}");
}

#[test]
fn k20_combined_deny_wins_over_needs_approval() {
    let cfg = with(velocity("needs_approval"), "ip_allowlist", json!({ "cidrs": ["10.0.0.0/8"] }));
    let d = req(10_001).ip("192.0.2.1").history(n_recent(3)).decide(&policy(cfg));
    let reasons = denial(&d);
    assert!(matches!(reasons, [Reason::PerTxLimit { .. }, Reason::TerminalNotAllowed { .. }]), "{reasons:?}");
}

#[test]
fn k20_wrong_wallet_zero_amount_and_unbounded_history_are_refused() {
    let p = policy(base());
    let asset: AssetCode = "ETH".parse().expect("asset");
    let d = p.decide(&Request {
        wallet: "0xother",
        asset: &asset,
        amount: amt(1),
        destination: DEST,
        now_ms: NOW_MS,
        requester_ip: None,
        history: &[],
    });
    assert!(matches!(denial(&d), [Reason::WrongPolicy { .. }]));
    assert_eq!(denial(&req(0).decide(&p)), [Reason::ZeroAmount]);
    let long = vec![past(NOW_MS - 10 * DAY_MS, 1); HISTORY_LEN_MAX + 1];
    assert_eq!(
        denial(&req(1).history(long).decide(&p)),
        [Reason::HistoryTooLong { len: HISTORY_LEN_MAX + 1, max: HISTORY_LEN_MAX }]
    );
}

#[test]
fn k20_a_full_history_reaching_into_the_window_needs_approval() {
    let p = policy(base());
    let full = vec![past(NOW_MS - HOUR_MS, 1); HISTORY_LEN_MAX];
    assert!(matches!(approval(&req(1).history(full).decide(&p)).1, [Reason::HistoryTruncated { .. }]));
    let full_but_old = vec![past(NOW_MS - DAY_MS, 1); HISTORY_LEN_MAX];
    assert_auto(&req(1).history(full_but_old).decide(&p));
}

// ---- load-time validation ----

fn bands(class: &str, bands: Value) -> Result<Policy, PolicyConfigError> {
    let mut cfg = base();
    cfg["class"] = json!(class);
    cfg["quorum_bands"] = bands;
    load(cfg)
}

#[test]
fn k11_quorum_zero_is_refused_for_every_class() {
    for class in ["hot_small", "hot_large", "cold", "key_operation"] {
        let r = bands(class, json!([{ "from": "0", "approvals": 0, "approvers": 3 }]));
        assert_eq!(r, Err(PolicyConfigError::QuorumZero { field: "quorum_bands[0].approvals".into() }), "{class}");
    }
}

#[test]
fn k11_quorum_of_one_is_refused_where_the_class_demands_more() {
    for (class, min) in [("hot_large", 2), ("cold", 3), ("key_operation", 2)] {
        let r = bands(class, json!([{ "from": "0", "approvals": min - 1, "approvers": 5 }]));
        assert!(matches!(r, Err(PolicyConfigError::QuorumBelowClass { min: m, .. }) if m == min), "{class}: {r:?}");
        let r = bands(
            class,
            json!([{ "from": "0", "approvals": min, "approvers": 5 }, { "from": "100", "approvals": 1, "approvers": 5 }]),
        );
        assert!(matches!(r, Err(PolicyConfigError::QuorumBelowClass { .. })), "{class}: a later band: {r:?}");
        assert!(bands(class, json!([{ "from": "0", "approvals": min, "approvers": 5 }])).is_ok(), "{class}");
    }
    assert!(bands("hot_small", json!([{ "from": "0", "approvals": 1, "approvers": 1 }])).is_ok());
}

#[test]
fn k11_a_rules_own_quorum_below_the_class_minimum_is_refused() {
    let mut cfg = velocity("needs_approval");
    cfg["velocity"]["quorum"] = json!(0);
    assert_eq!(load(cfg).err(), Some(PolicyConfigError::QuorumZero { field: "velocity.quorum".into() }));
    let mut cfg = base();
    cfg["class"] = json!("hot_large");
    cfg["quorum_bands"] = json!([{ "from": "0", "approvals": 2, "approvers": 3 }]);
    cfg["per_tx_limit"]["quorum"] = json!(1);
    assert!(
        matches!(load(cfg), Err(PolicyConfigError::QuorumBelowClass { field, .. }) if field == "per_tx_limit.quorum")
    );
}

#[test]
fn k11_malformed_bands_are_refused() {
    use PolicyConfigError as E;
    assert_eq!(bands("hot_small", json!([])).err(), Some(E::NoQuorumBands));
    assert_eq!(
        bands("hot_small", json!([{ "from": "5", "approvals": 1, "approvers": 1 }])).err(),
        Some(E::FirstBandNotZero)
    );
    assert!(matches!(
        bands("hot_small", json!([{ "from": "0", "approvals": 3, "approvers": 2 }])),
        Err(E::ApprovalsAboveApprovers { .. })
    ));
    assert_eq!(
        bands(
            "hot_small",
            json!([{ "from": "0", "approvals": 1, "approvers": 3 }, { "from": "0", "approvals": 2, "approvers": 3 }])
        )
        .err(),
        Some(E::BandsNotAscending { index: 1 })
    );
    assert_eq!(
        bands(
            "hot_small",
            json!([{ "from": "0", "approvals": 2, "approvers": 3 }, { "from": "9", "approvals": 1, "approvers": 3 }])
        )
        .err(),
        Some(E::BandQuorumDecreasing { index: 1 })
    );
}

#[test]
fn k11_malformed_rules_are_refused_at_load() {
    use PolicyConfigError as E;
    let mut cfg = base();
    cfg["per_tx_limit"]["on_breech"] = json!("needs_approval");
    assert!(serde_json::from_value::<PolicyConfig>(cfg).is_err(), "a misspelt field must not fall back to a default");
    assert_eq!(
        load(with(base(), "velocity", json!({ "count_max": 0, "window_ms": 1 }))).err(),
        Some(E::VelocityCountOutOfRange)
    );
    assert!(matches!(
        load(with(base(), "velocity", json!({ "count_max": 1, "window_ms": 0 }))),
        Err(E::WindowOutOfRange { .. })
    ));
    assert_eq!(
        load(with(base(), "business_hours", json!({ "start_hour_utc": 9, "end_hour_utc": 9, "weekdays": ["mon"] })))
            .err(),
        Some(E::HoursEmpty)
    );
    assert!(matches!(
        load(with(base(), "business_hours", json!({ "start_hour_utc": 24, "end_hour_utc": 9, "weekdays": ["mon"] }))),
        Err(E::HourOutOfRange { .. })
    ));
    assert_eq!(
        load(with(base(), "anomaly", json!({ "multiplier": 0, "samples_max": 5, "samples_min": 3 }))).err(),
        Some(E::MultiplierZero)
    );
    assert_eq!(
        load(with(base(), "anomaly", json!({ "multiplier": 2, "samples_max": 2, "samples_min": 3 }))).err(),
        Some(E::AnomalySamples)
    );
    let dup = json!({ "entries": [{ "address": DEST, "added_at_ms": 0 }, { "address": DEST, "added_at_ms": 5 }], "cooling_off_ms": 0 });
    assert!(matches!(load(with(base(), "whitelist", dup)), Err(E::WhitelistDuplicate { index: 1, .. })));
    let mut cfg = base();
    cfg["per_tx_limit"]["max"] = json!("0");
    assert_eq!(load(cfg).err(), Some(E::PerTxLimitZero));
}

#[test]
fn k11_a_policy_set_refuses_duplicates_and_any_invalid_member() {
    let other = {
        let mut cfg = base();
        cfg["asset"] = json!("USDC");
        cfg
    };
    let set: PolicySetConfig = serde_json::from_value(json!({ "policies": [base(), other.clone()] })).expect("set");
    let set = set.validate().expect("valid set");
    assert_eq!(set.len(), 2);
    let eth: AssetCode = "ETH".parse().expect("asset");
    assert!(set.get(WALLET, &eth).is_some());
    assert!(set.get("0xunknown", &eth).is_none(), "no policy: the caller refuses");

    let dup: PolicySetConfig = serde_json::from_value(json!({ "policies": [base(), other, base()] })).expect("set");
    assert!(matches!(dup.validate(), Err(PolicySetError::Duplicate { index: 2, .. })));

    let mut bad = base();
    bad["asset"] = json!("BTC");
    bad["quorum_bands"][0]["approvals"] = json!(0);
    let set: PolicySetConfig = serde_json::from_value(json!({ "policies": [base(), bad] })).expect("set");
    let err = set.validate().expect_err("a zero quorum refuses the whole set");
    assert!(matches!(err, PolicySetError::Policy { index: 1, source: PolicyConfigError::QuorumZero { .. }, .. }));
    assert!(err.to_string().contains("policies[1]") && err.to_string().contains("quorum_bands[0].approvals"), "{err}");
}
