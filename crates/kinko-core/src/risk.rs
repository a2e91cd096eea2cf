//! The risk score of a customer request and the second-channel confirmation rule (U2, U4, U8, U9).
//!
//! A withdrawal is scored from what the server saw: whether the caller's IP address and user agent
//! appeared among the customer's earlier successful logins (a stolen session or a stolen password is
//! used from somewhere else), whether the address is on a configured network list (anonymising networks,
//! hosting ranges), the UTC hour (a configured unusual-hours window), and the customer's recent withdrawal
//! velocity. Each signal adds a configured weight; the score and the reasons are returned so the caller
//! can explain the decision and keep it on record.
//!
//! [`confirmation_reasons`] then says whether the withdrawal must be confirmed over a second channel:
//! the amount reaches the asset's threshold, the destination is new for this customer, or the score
//! reaches the risk threshold. Sans-IO: the caller passes `now_ms`, the history and the address.

use std::collections::BTreeSet;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::Amount;
use crate::policy::Cidr;

/// Bound on configured network lists.
pub const NETWORK_LISTS_MAX: usize = 32;
/// Bound on CIDR entries in one network list.
pub const NETWORK_LIST_CIDRS_MAX: usize = 4_096;
/// Bound on a network list's name (it appears in reasons and notices).
pub const NETWORK_LIST_NAME_LEN_MAX: usize = 64;
/// Bound on earlier login sources the caller passes in; more are ignored (the newest come first).
pub const KNOWN_SOURCES_MAX: usize = 1_000;
/// Bound on recent withdrawals the velocity rule reads; the caller reads at most this many.
pub const VELOCITY_HISTORY_MAX: usize = 1_000;
/// Bound on a single weight, so a sum over every signal cannot overflow and a typo cannot dwarf the rest.
pub const WEIGHT_MAX: u32 = 1_000;
const DAY_MS: i64 = 86_400_000;
const HOUR_MS: i64 = 3_600_000;

/// The caller's address as stored in the login history when the server could not see it.
pub const UNKNOWN_IP: &str = "unknown";

/// `[withdrawal_confirmation.risk]`: the weights of each signal. Unknown fields are refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RiskConfig {
    /// Added when the caller's IP address was not seen in the customer's earlier successful logins.
    #[serde(default = "default_new_ip_weight")]
    pub new_ip_weight: u32,
    /// Added when the caller's user agent was not seen in the customer's earlier successful logins.
    #[serde(default = "default_new_user_agent_weight")]
    pub new_user_agent_weight: u32,
    /// Networks that raise the score when the caller's address is inside them (e.g. Tor exit nodes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub network_lists: Vec<NetworkList>,
    /// A UTC hour window in which requests are unusual for this custodian's customers. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unusual_hours: Option<UnusualHours>,
    /// The customer's withdrawal velocity.
    #[serde(default)]
    pub velocity: Velocity,
}

impl Default for RiskConfig {
    fn default() -> Self {
        RiskConfig {
            new_ip_weight: default_new_ip_weight(),
            new_user_agent_weight: default_new_user_agent_weight(),
            network_lists: Vec::new(),
            unusual_hours: None,
            velocity: Velocity::default(),
        }
    }
}

fn default_new_ip_weight() -> u32 {
    40
}
fn default_new_user_agent_weight() -> u32 {
    20
}

/// A named list of networks and the weight an address inside it adds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkList {
    /// `[a-z0-9_-]`, 1 to 64 characters, e.g. `tor-exits`.
    pub name: String,
    pub weight: u32,
    pub cidrs: Vec<Cidr>,
}

/// `[start_hour_utc, end_hour_utc)`; an end below the start wraps past midnight.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnusualHours {
    pub start_hour_utc: u8,
    pub end_hour_utc: u8,
    pub weight: u32,
}

impl UnusualHours {
    pub fn contains_hour(&self, hour_utc: u8) -> bool {
        if self.start_hour_utc < self.end_hour_utc {
            (self.start_hour_utc..self.end_hour_utc).contains(&hour_utc)
        } else {
            hour_utc >= self.start_hour_utc || hour_utc < self.end_hour_utc
        }
    }
}

/// More than `count_max` withdrawals (this one included) in the last `window_ms`, or more than the asset's
/// `total_max` in that window, adds `weight`. Failed and cancelled withdrawals do not count.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Velocity {
    #[serde(default = "default_velocity_window_ms")]
    pub window_ms: i64,
    #[serde(default = "default_velocity_count_max")]
    pub count_max: u32,
    /// Per asset code, base units. An asset without an entry has no total limit.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub total_max: std::collections::BTreeMap<String, Amount>,
    #[serde(default = "default_velocity_weight")]
    pub weight: u32,
}

impl Default for Velocity {
    fn default() -> Self {
        Velocity {
            window_ms: default_velocity_window_ms(),
            count_max: default_velocity_count_max(),
            total_max: Default::default(),
            weight: default_velocity_weight(),
        }
    }
}

fn default_velocity_window_ms() -> i64 {
    HOUR_MS
}
fn default_velocity_count_max() -> u32 {
    3
}
fn default_velocity_weight() -> u32 {
    40
}

/// A configuration value that cannot be used, naming the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct RiskConfigError {
    pub field: String,
    pub reason: String,
}

impl RiskConfig {
    /// Checks every bound; the error names the field (relative to `[withdrawal_confirmation.risk]`).
    pub fn validate(&self) -> Result<(), RiskConfigError> {
        let err = |field: String, reason: &str| Err(RiskConfigError { field, reason: reason.into() });
        let weight_ok = |w: u32| w <= WEIGHT_MAX;
        if !weight_ok(self.new_ip_weight) {
            return err("new_ip_weight".into(), "must be at most 1000");
        }
        if !weight_ok(self.new_user_agent_weight) {
            return err("new_user_agent_weight".into(), "must be at most 1000");
        }
        if self.network_lists.len() > NETWORK_LISTS_MAX {
            return err("network_lists".into(), "at most 32 lists");
        }
        let mut names = BTreeSet::new();
        for (i, list) in self.network_lists.iter().enumerate() {
            let ok_name = !list.name.is_empty()
                && list.name.len() <= NETWORK_LIST_NAME_LEN_MAX
                && list.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-".contains(&b));
            if !ok_name {
                return err(format!("network_lists[{i}].name"), "must be 1 to 64 characters of a-z, 0-9, '_', '-'");
            }
            if !names.insert(list.name.as_str()) {
                return err(format!("network_lists[{i}].name"), "is used by another list");
            }
            if !weight_ok(list.weight) {
                return err(format!("network_lists[{i}].weight"), "must be at most 1000");
            }
            if list.cidrs.is_empty() || list.cidrs.len() > NETWORK_LIST_CIDRS_MAX {
                return err(format!("network_lists[{i}].cidrs"), "must hold 1 to 4096 networks");
            }
        }
        if let Some(h) = &self.unusual_hours {
            if h.start_hour_utc > 23 {
                return err("unusual_hours.start_hour_utc".into(), "must be an hour from 0 to 23");
            }
            if h.end_hour_utc > 23 {
                return err("unusual_hours.end_hour_utc".into(), "must be an hour from 0 to 23");
            }
            if h.start_hour_utc == h.end_hour_utc {
                return err("unusual_hours.end_hour_utc".into(), "equal to start_hour_utc is ambiguous");
            }
            if !weight_ok(h.weight) {
                return err("unusual_hours.weight".into(), "must be at most 1000");
            }
        }
        let v = &self.velocity;
        if !(1..=30 * DAY_MS).contains(&v.window_ms) {
            return err("velocity.window_ms".into(), "must be from 1 ms to 30 days");
        }
        if v.count_max == 0 {
            return err("velocity.count_max".into(), "must be at least 1 (the withdrawal being scored counts)");
        }
        if let Some((asset, _)) = v.total_max.iter().find(|(_, a)| a.is_zero()) {
            return err(format!("velocity.total_max.{asset}"), "must be above zero");
        }
        if !weight_ok(v.weight) {
            return err("velocity.weight".into(), "must be at most 1000");
        }
        Ok(())
    }
}

/// One earlier successful login, as the login history recorded it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoginSource {
    /// Canonical text (IPv4-mapped IPv6 as IPv4), or [`UNKNOWN_IP`].
    pub ip: String,
    pub user_agent: String,
}

/// One of the customer's recent withdrawals of the scored asset (failed and cancelled left out).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecentWithdrawal {
    pub at_ms: i64,
    pub amount: Amount,
}

/// What the risk score is computed from.
#[derive(Clone, Debug)]
pub struct RiskInput<'a> {
    pub now_ms: i64,
    /// The caller's address; `None` when the server could not see it.
    pub ip: Option<IpAddr>,
    /// Already bounded by the caller; empty when none was sent.
    pub user_agent: &'a str,
    /// The customer's successful logins before the current session, newest first (at most
    /// [`KNOWN_SOURCES_MAX`] are read).
    pub known_sources: &'a [LoginSource],
    pub asset: &'a str,
    /// The amount of the request being scored.
    pub amount: Amount,
    /// The customer's withdrawals of `asset`, newest first (at most [`VELOCITY_HISTORY_MAX`] are read).
    pub recent: &'a [RecentWithdrawal],
}

/// Why the score went up. Serialised into the confirmation record and the notice.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "signal", rename_all = "snake_case")]
pub enum RiskReason {
    /// The IP address was not among the customer's earlier successful logins.
    NewIp,
    /// The user agent was not among the customer's earlier successful logins.
    NewUserAgent,
    /// The IP address is inside a configured network list.
    NetworkList { list: String },
    /// The request came inside the unusual-hours window.
    UnusualHours { hour_utc: u8 },
    /// Too many withdrawals, or too much, in the velocity window (this one included).
    Velocity { count: u32, total: Amount },
}

/// The score and every reason that contributed to it (in a fixed order).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RiskAssessment {
    pub score: u32,
    pub reasons: Vec<RiskReason>,
}

impl RiskAssessment {
    fn add(&mut self, weight: u32, reason: RiskReason) {
        // A signal configured with weight 0 is off; it is not reported either.
        if weight > 0 {
            self.score = self.score.saturating_add(weight);
            self.reasons.push(reason);
        }
    }
}

/// Scores one request. Pure; total over any input.
pub fn assess(config: &RiskConfig, input: &RiskInput<'_>) -> RiskAssessment {
    let mut out = RiskAssessment::default();
    let known = &input.known_sources[..input.known_sources.len().min(KNOWN_SOURCES_MAX)];
    let ip_text = input.ip.map_or_else(|| UNKNOWN_IP.to_string(), |ip| ip.to_canonical().to_string());
    if !known.iter().any(|s| s.ip == ip_text) {
        out.add(config.new_ip_weight, RiskReason::NewIp);
    }
    if !known.iter().any(|s| s.user_agent == input.user_agent) {
        out.add(config.new_user_agent_weight, RiskReason::NewUserAgent);
    }
    if let Some(ip) = input.ip {
        for list in &config.network_lists {
            if list.cidrs.iter().any(|c| c.contains(ip)) {
                out.add(list.weight, RiskReason::NetworkList { list: list.name.clone() });
            }
        }
    }
    if let Some(h) = &config.unusual_hours {
        // rem_euclid keeps pre-1970 times in 0..24 too.
        let hour_utc = (input.now_ms.rem_euclid(DAY_MS) / HOUR_MS) as u8;
        if h.contains_hour(hour_utc) {
            out.add(h.weight, RiskReason::UnusualHours { hour_utc });
        }
    }
    let v = &config.velocity;
    let recent = &input.recent[..input.recent.len().min(VELOCITY_HISTORY_MAX)];
    // Half-open like the policy engine's windows: a withdrawal exactly `window_ms` old no longer counts.
    let in_window = recent.iter().filter(|w| input.now_ms.saturating_sub(w.at_ms) < v.window_ms);
    let (count, total) = in_window.fold((1u32, input.amount), |(n, t), w| {
        (n.saturating_add(1), t.checked_add(w.amount).unwrap_or(Amount::from_base_units(u128::MAX)))
    });
    let over_total = v.total_max.get(input.asset).is_some_and(|max| total > *max);
    if count > v.count_max || over_total {
        out.add(v.weight, RiskReason::Velocity { count, total });
    }
    out
}

/// Why a withdrawal needs confirmation over a second channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "rule", rename_all = "snake_case")]
pub enum ConfirmationReason {
    /// The amount reaches the asset's confirmation threshold.
    Amount { amount: Amount, threshold: Amount },
    /// The destination never received one of this customer's settled withdrawals.
    NewDestination,
    /// The risk score reaches the threshold.
    Risk { score: u32, threshold: u32, signals: Vec<RiskReason> },
}

/// What [`confirmation_reasons`] decides over.
#[derive(Clone, Debug)]
pub struct ConfirmationInput<'a> {
    pub amount: Amount,
    /// The asset's threshold; `None`: no amount rule for this asset.
    pub amount_threshold: Option<Amount>,
    /// Whether one of the customer's settled withdrawals went to this destination.
    pub destination_known: bool,
    pub risk: &'a RiskAssessment,
    pub risk_threshold: u32,
}

/// Every rule that demands confirmation; empty: none needed.
pub fn confirmation_reasons(input: &ConfirmationInput<'_>) -> Vec<ConfirmationReason> {
    let mut out = Vec::new();
    if let Some(threshold) = input.amount_threshold.filter(|t| input.amount >= *t) {
        out.push(ConfirmationReason::Amount { amount: input.amount, threshold });
    }
    if !input.destination_known {
        out.push(ConfirmationReason::NewDestination);
    }
    if input.risk.score >= input.risk_threshold {
        out.push(ConfirmationReason::Risk {
            score: input.risk.score,
            threshold: input.risk_threshold,
            signals: input.risk.reasons.clone(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const UA: &str = "Mozilla/5.0 test";

    fn known() -> Vec<LoginSource> {
        vec![LoginSource { ip: "192.0.2.10".into(), user_agent: UA.into() }]
    }

    fn input<'a>(known: &'a [LoginSource], recent: &'a [RecentWithdrawal], ip: &str, ua: &'a str) -> RiskInput<'a> {
        RiskInput {
            now_ms: 12 * HOUR_MS,
            ip: Some(ip.parse().unwrap()),
            user_agent: ua,
            known_sources: known,
            asset: "ETH",
            amount: Amount::from_base_units(5),
            recent,
        }
    }

    #[test]
    fn u9_known_device_scores_zero_and_new_device_scores_both_signals() {
        let c = RiskConfig::default();
        let k = known();
        let r = assess(&c, &input(&k, &[], "192.0.2.10", UA));
        assert_eq!(r, RiskAssessment::default());
        let r = assess(&c, &input(&k, &[], "198.51.100.7", "curl/8"));
        assert_eq!(r.score, 60);
        assert_eq!(r.reasons, [RiskReason::NewIp, RiskReason::NewUserAgent]);
        // IPv4-mapped IPv6 is the same address as IPv4.
        let r = assess(&c, &input(&k, &[], "::ffff:192.0.2.10", UA));
        assert_eq!(r.score, 0);
        // No history at all: everything is new.
        let r = assess(&c, &input(&[], &[], "192.0.2.10", UA));
        assert_eq!(r.reasons, [RiskReason::NewIp, RiskReason::NewUserAgent]);
    }

    #[test]
    fn u9_network_list_raises_the_score() {
        let mut c = RiskConfig::default();
        c.network_lists.push(NetworkList {
            name: "tor-exits".into(),
            weight: 70,
            cidrs: vec!["203.0.113.0/24".parse().unwrap(), "2001:db8::/32".parse().unwrap()],
        });
        c.validate().unwrap();
        let k = known();
        let r = assess(&c, &input(&k, &[], "203.0.113.9", UA));
        assert!(r.reasons.contains(&RiskReason::NetworkList { list: "tor-exits".into() }), "{r:?}");
        assert_eq!(r.score, 70 + 40);
        let r = assess(&c, &input(&k, &[], "2001:db8::1", UA));
        assert!(r.reasons.contains(&RiskReason::NetworkList { list: "tor-exits".into() }));
        let r = assess(&c, &input(&k, &[], "192.0.2.10", UA));
        assert_eq!(r.score, 0);
    }

    #[test]
    fn u9_unusual_hours_wrap_past_midnight() {
        let c = RiskConfig {
            unusual_hours: Some(UnusualHours { start_hour_utc: 22, end_hour_utc: 5, weight: 25 }),
            ..RiskConfig::default()
        };
        c.validate().unwrap();
        let k = known();
        for (hour, unusual) in [(21, false), (22, true), (0, true), (4, true), (5, false), (12, false)] {
            let mut i = input(&k, &[], "192.0.2.10", UA);
            i.now_ms = 100 * DAY_MS + hour * HOUR_MS + 59 * 60_000;
            let r = assess(&c, &i);
            assert_eq!(r.score == 25, unusual, "hour {hour}: {r:?}");
        }
    }

    #[test]
    fn u8_velocity_counts_this_withdrawal_and_the_window_is_half_open() {
        let mut c = RiskConfig::default();
        c.velocity.total_max.insert("ETH".into(), Amount::from_base_units(100));
        let k = known();
        let now = 12 * HOUR_MS;
        let w = |ago: i64, amount: u128| RecentWithdrawal { at_ms: now - ago, amount: Amount::from_base_units(amount) };
        // Three in the window (two earlier + this one) is at count_max: fine.
        let recent = [w(1, 1), w(2, 1), w(HOUR_MS, 1)];
        assert_eq!(assess(&c, &input(&k, &recent, "192.0.2.10", UA)).score, 0);
        // A fourth inside the window trips it.
        let recent = [w(1, 1), w(2, 1), w(HOUR_MS - 1, 1)];
        let r = assess(&c, &input(&k, &recent, "192.0.2.10", UA));
        assert_eq!(r.reasons, [RiskReason::Velocity { count: 4, total: Amount::from_base_units(8) }]);
        // The total: 96 + 5 > 100.
        let r = assess(&c, &input(&k, &[w(10, 96)], "192.0.2.10", UA));
        assert_eq!(r.reasons, [RiskReason::Velocity { count: 2, total: Amount::from_base_units(101) }]);
        // Another asset has no total limit.
        let one = [w(10, 96)];
        let mut i = input(&k, &one, "192.0.2.10", UA);
        i.asset = "USDC";
        assert_eq!(assess(&c, &i).score, 0);
    }

    #[test]
    fn u9_zero_weight_turns_a_signal_off() {
        let c = RiskConfig { new_ip_weight: 0, new_user_agent_weight: 0, ..RiskConfig::default() };
        let r = assess(&c, &input(&[], &[], "198.51.100.7", "x"));
        assert_eq!(r, RiskAssessment::default());
    }

    #[test]
    fn u4_each_rule_demands_confirmation_and_none_when_all_quiet() {
        let quiet = RiskAssessment::default();
        let risky = RiskAssessment { score: 60, reasons: vec![RiskReason::NewIp, RiskReason::NewUserAgent] };
        let base = ConfirmationInput {
            amount: Amount::from_base_units(10),
            amount_threshold: Some(Amount::from_base_units(100)),
            destination_known: true,
            risk: &quiet,
            risk_threshold: 50,
        };
        assert!(confirmation_reasons(&base).is_empty());
        let at = ConfirmationInput { amount: Amount::from_base_units(100), ..base.clone() };
        assert_eq!(
            confirmation_reasons(&at),
            [ConfirmationReason::Amount {
                amount: Amount::from_base_units(100),
                threshold: Amount::from_base_units(100)
            }]
        );
        let new_dest = ConfirmationInput { destination_known: false, ..base.clone() };
        assert_eq!(confirmation_reasons(&new_dest), [ConfirmationReason::NewDestination]);
        let r = ConfirmationInput { risk: &risky, ..base.clone() };
        assert!(matches!(confirmation_reasons(&r)[..], [ConfirmationReason::Risk { score: 60, threshold: 50, .. }]));
        let no_threshold =
            ConfirmationInput { amount: Amount::from_base_units(u128::MAX), amount_threshold: None, ..base };
        assert!(confirmation_reasons(&no_threshold).is_empty());
    }

    #[test]
    fn u4_reasons_serialise_with_amounts_as_strings() {
        let r = ConfirmationReason::Amount {
            amount: Amount::from_base_units(u128::MAX),
            threshold: Amount::from_base_units(1),
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["rule"], "amount");
        assert_eq!(v["amount"], u128::MAX.to_string());
        let back: ConfirmationReason = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn u9_config_validation_names_the_field() {
        let bad = |f: &dyn Fn(&mut RiskConfig)| {
            let mut c = RiskConfig::default();
            f(&mut c);
            c.validate().unwrap_err().field
        };
        assert_eq!(bad(&|c| c.new_ip_weight = WEIGHT_MAX + 1), "new_ip_weight");
        assert_eq!(bad(&|c| c.velocity.count_max = 0), "velocity.count_max");
        assert_eq!(bad(&|c| c.velocity.window_ms = 0), "velocity.window_ms");
        assert_eq!(
            bad(&|c| {
                c.velocity.total_max.insert("ETH".into(), Amount::from_base_units(0));
            }),
            "velocity.total_max.ETH"
        );
        assert_eq!(
            bad(&|c| c.unusual_hours = Some(UnusualHours { start_hour_utc: 3, end_hour_utc: 3, weight: 1 })),
            "unusual_hours.end_hour_utc"
        );
        assert_eq!(
            bad(&|c| c.network_lists.push(NetworkList { name: "Tor".into(), weight: 1, cidrs: vec![] })),
            "network_lists[0].name"
        );
        let parsed: Result<RiskConfig, _> = serde_json::from_value(serde_json::json!({"new_ip_wieght": 3}));
        assert!(parsed.is_err(), "unknown fields are refused");
        RiskConfig::default().validate().unwrap();
    }

    proptest! {
        /// U9: the score is the sum of the weights of the reported signals, never overflows, and adding
        /// the caller's own source to the known list never raises it.
        #[test]
        fn u9_score_is_the_sum_of_reported_signals(
            ip in any::<[u8; 4]>(),
            ua in "[a-z]{0,8}",
            known_ips in proptest::collection::vec(any::<[u8; 4]>(), 0..5),
            hour_ms in 0i64..DAY_MS,
            ago in proptest::collection::vec((0i64..2 * HOUR_MS, any::<u64>()), 0..8),
            amount in any::<u128>(),
        ) {
            let mut c = RiskConfig {
                unusual_hours: Some(UnusualHours { start_hour_utc: 1, end_hour_utc: 4, weight: 15 }),
                ..RiskConfig::default()
            };
            c.network_lists.push(NetworkList { name: "n".into(), weight: 33, cidrs: vec!["10.0.0.0/8".parse().unwrap()] });
            c.velocity.total_max.insert("ETH".into(), Amount::from_base_units(1_000));
            let ip = IpAddr::from(ip);
            let known: Vec<LoginSource> = known_ips.iter()
                .map(|k| LoginSource { ip: IpAddr::from(*k).to_string(), user_agent: "k".into() }).collect();
            let now = 50 * DAY_MS + hour_ms;
            let recent: Vec<RecentWithdrawal> =
                ago.iter().map(|(a, amt)| RecentWithdrawal { at_ms: now - a, amount: Amount::from_base_units(u128::from(*amt)) }).collect();
            let i = RiskInput { now_ms: now, ip: Some(ip), user_agent: &ua, known_sources: &known, asset: "ETH",
                amount: Amount::from_base_units(amount), recent: &recent };
            let r = assess(&c, &i);
            let weight = |reason: &RiskReason| match reason {
                RiskReason::NewIp => c.new_ip_weight,
                RiskReason::NewUserAgent => c.new_user_agent_weight,
                RiskReason::NetworkList { .. } => 33,
                RiskReason::UnusualHours { .. } => 15,
                RiskReason::Velocity { .. } => c.velocity.weight,
            };
            prop_assert_eq!(r.score, r.reasons.iter().map(weight).sum::<u32>());
            let mut more = known.clone();
            more.push(LoginSource { ip: ip.to_string(), user_agent: ua.clone() });
            let j = RiskInput { known_sources: &more, ..i };
            prop_assert!(assess(&c, &j).score <= r.score);
            prop_assert!(!assess(&c, &j).reasons.contains(&RiskReason::NewIp));
        }
    }
}
