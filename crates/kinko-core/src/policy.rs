//! The withdrawal policy engine (K11, K20, O1): per wallet and asset, decides whether a withdrawal goes
//! through on its own, needs M-of-N operator approvals, or is refused.
//!
//! Sans-IO like the rest of the core: the caller passes the time (`now_ms`), the requester's terminal
//! address and the wallet's recent withdrawals; the engine reads no clock, database or randomness, so one
//! input always gives one decision.
//!
//! Loading: a [`PolicyConfig`] is deserialized (TOML/JSON, unknown fields refused so a misspelt rule
//! cannot silently fall back to a default) and then [`PolicyConfig::validate`]d into a [`Policy`]. Only a
//! `Policy` can decide, so an unvalidated config never reaches a withdrawal.
//!
//! Decisions and their defaults (each rule's `on_breach` can be set to `needs_approval` or `deny`):
//!
//! | rule | breached when | default |
//! |---|---|---|
//! | `per_tx_limit` (mandatory) | amount > `max` | deny |
//! | `rolling_limit` (mandatory) | withdrawals in the window + amount > `max` | needs approval |
//! | `velocity` | withdrawals in the window + this one > `count_max` | needs approval |
//! | `whitelist` | destination not listed (`on_unlisted`) | deny |
//! | `whitelist` | destination listed but still cooling off | **always deny** |
//! | `business_hours` | outside the UTC hours/weekdays | needs approval |
//! | `ip_allowlist` | operator terminal address outside every CIDR (customer requests carry none) | deny |
//! | `anomaly` | amount > `multiplier` × median of the last `samples_max` withdrawals | needs approval |
//!
//! A cooling-off entry always denies: the cooling-off period exists so that an entry added by a
//! compromised or coerced insider can be noticed and removed before funds can go there. If approvers could
//! override it, it would collapse into the ordinary approval path that the same insider may be able to
//! influence.
//!
//! Windows (rolling limit and velocity) are half-open: a withdrawal counts while `now_ms - at_ms <
//! window_ms`, so one exactly `window_ms` old has left the window. Withdrawals stamped in the future (clock
//! skew between instances) count, which errs towards refusing.
//!
//! Several policies load together as a [`PolicySetConfig`] (`[[policies]]` in TOML), one per (wallet, asset);
//! a (wallet, asset) without a policy has no `Policy` to ask, and the caller refuses the withdrawal.
//!
//! Deny wins over needs-approval; the quorum of a needs-approval is the largest demanded: the amount's
//! quorum band, the class minimum and any rule's own `quorum`. A quorum of 0 is refused at load time
//! everywhere (openbao#3666: a zero approval count must never mean "no approval needed"), and each
//! [`PolicyClass`] has a minimum quorum below which the config is refused.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};

use crate::{Amount, AssetCode};

/// Most past withdrawals a decision reads. The caller passes the wallet's most recent withdrawals, newest
/// or oldest first, at most this many; a longer slice is refused rather than silently cut.
pub const HISTORY_LEN_MAX: usize = 1024;
/// Most whitelist entries per (wallet, asset).
pub const WHITELIST_LEN_MAX: usize = 4096;
/// Most CIDR blocks in an operator terminal allowlist.
pub const IP_ALLOWLIST_LEN_MAX: usize = 256;
/// Most quorum bands per policy.
pub const QUORUM_BANDS_MAX: usize = 16;
/// Most approvers (N of M-of-N) a band may name; approvals are counted in a `u8`.
pub const APPROVERS_MAX: u8 = 64;
/// Longest window or cooling-off period accepted: 366 days. Longer is almost surely a unit mistake (s vs ms).
pub const WINDOW_MS_MAX: i64 = 366 * DAY_MS;
/// A day in milliseconds: the default rolling-limit window.
pub const DAY_MS: i64 = 86_400_000;
const HOUR_MS: i64 = 3_600_000;

/// What a breached rule yields.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    NeedsApproval,
    Deny,
}

/// Policy classes and the least quorum each demands whenever approval is needed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyClass {
    /// Hot wallet for small amounts: most withdrawals are automatic; an approval needs one operator.
    HotSmall,
    /// Hot wallet for large amounts: approvals need two operators.
    HotLarge,
    /// Cold wallet: every withdrawal needs approval, by at least three operators.
    Cold,
    /// Key generation, storage, activation, destruction (K11: always approved), by at least two operators.
    KeyOperation,
}

impl PolicyClass {
    /// The least quorum this class accepts; a band or rule asking for fewer is refused at load time.
    pub const fn quorum_min(self) -> u8 {
        match self {
            PolicyClass::HotSmall => 1,
            PolicyClass::HotLarge => 2,
            PolicyClass::Cold => 3,
            PolicyClass::KeyOperation => 2,
        }
    }

    /// K11: key operations always need approval; cold-wallet movements too, by design of a cold wallet.
    pub const fn always_needs_approval(self) -> bool {
        matches!(self, PolicyClass::Cold | PolicyClass::KeyOperation)
    }
}

impl fmt::Display for PolicyClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PolicyClass::HotSmall => "hot_small",
            PolicyClass::HotLarge => "hot_large",
            PolicyClass::Cold => "cold",
            PolicyClass::KeyOperation => "key_operation",
        })
    }
}

fn deny() -> Action {
    Action::Deny
}
fn needs_approval() -> Action {
    Action::NeedsApproval
}
fn day_ms() -> i64 {
    DAY_MS
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PerTxLimit {
    pub max: Amount,
    #[serde(default = "deny")]
    pub on_breach: Action,
    #[serde(default)]
    pub quorum: Option<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollingLimit {
    pub max: Amount,
    #[serde(default = "day_ms")]
    pub window_ms: i64,
    #[serde(default = "needs_approval")]
    pub on_breach: Action,
    #[serde(default)]
    pub quorum: Option<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Velocity {
    /// Withdrawals allowed per window, this one included.
    pub count_max: u32,
    pub window_ms: i64,
    #[serde(default = "needs_approval")]
    pub on_breach: Action,
    #[serde(default)]
    pub quorum: Option<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WhitelistEntry {
    /// Compared byte for byte with the request's destination: callers canonicalize both (EVM addresses
    /// are lower-case 0x-hex in kinko). A mismatch reads as "not listed", which errs towards refusing.
    pub address: String,
    pub added_at_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Whitelist {
    pub entries: Vec<WhitelistEntry>,
    /// An entry is usable from `added_at_ms + cooling_off_ms` on (inclusive); before that it denies.
    pub cooling_off_ms: i64,
    #[serde(default = "deny")]
    pub on_unlisted: Action,
    #[serde(default)]
    pub quorum: Option<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Weekday {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

impl Weekday {
    const ALL: [Weekday; 7] =
        [Weekday::Mon, Weekday::Tue, Weekday::Wed, Weekday::Thu, Weekday::Fri, Weekday::Sat, Weekday::Sun];

    /// The UTC weekday at `ms` since the Unix epoch (1970-01-01 was a Thursday).
    pub fn at_ms(ms: i64) -> Weekday {
        let days = ms.div_euclid(DAY_MS);
        // rem_euclid(7) is in 0..7, so the index is always in bounds.
        Weekday::ALL[(days + 3).rem_euclid(7) as usize]
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusinessHours {
    /// First UTC hour inside business hours (0–23).
    pub start_hour_utc: u8,
    /// First UTC hour after business hours (0–23, exclusive). Below `start_hour_utc` means the window wraps
    /// past midnight; the weekday is the one at the request's time.
    pub end_hour_utc: u8,
    pub weekdays: Vec<Weekday>,
    #[serde(default = "needs_approval")]
    pub on_breach: Action,
    #[serde(default)]
    pub quorum: Option<u8>,
}

/// An IPv4 or IPv6 network in CIDR form ("10.0.0.0/8", "2001:db8::/32"); a bare address is a /32 or
/// /128. Host bits must be zero: "10.0.0.1/8" is refused as a probable typo.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix_len: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("is not an IPv4 or IPv6 address")]
    Address,
    #[error("prefix length is not a number up to 32 (IPv4) or 128 (IPv6)")]
    PrefixLen,
    #[error("has bits set beyond the prefix length")]
    HostBits,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 client seen on a dual-stack socket arrives as ::ffff:a.b.c.d; compare it as IPv4.
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = prefix_mask_u32(self.prefix_len);
                u32::from(ip) & mask == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = prefix_mask_u128(self.prefix_len);
                u128::from(ip) & mask == u128::from(net)
            }
            _ => false,
        }
    }
}

fn prefix_mask_u32(prefix_len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix_len.min(32))).unwrap_or(0)
}

fn prefix_mask_u128(prefix_len: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix_len.min(128))).unwrap_or(0)
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let network: IpAddr = addr.parse().map_err(|_| CidrError::Address)?;
        let width: u8 = if network.is_ipv4() { 32 } else { 128 };
        let prefix_len = match prefix {
            None => width,
            Some(p) if !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse::<u8>().map_err(|_| CidrError::PrefixLen)?
            }
            Some(_) => return Err(CidrError::PrefixLen),
        };
        if prefix_len > width {
            return Err(CidrError::PrefixLen);
        }
        let host_bits_clear = match network {
            IpAddr::V4(a) => u32::from(a) & !prefix_mask_u32(prefix_len) == 0,
            IpAddr::V6(a) => u128::from(a) & !prefix_mask_u128(prefix_len) == 0,
        };
        if !host_bits_clear {
            return Err(CidrError::HostBits);
        }
        Ok(Cidr { network, prefix_len })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(|e| serde::de::Error::custom(format!("CIDR {s:?} {e}")))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpAllowlist {
    pub cidrs: Vec<Cidr>,
    #[serde(default = "deny")]
    pub on_breach: Action,
    #[serde(default)]
    pub quorum: Option<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Anomaly {
    /// k: an amount strictly above k × the median is anomalous. An integer so the comparison is exact.
    pub multiplier: u32,
    /// The median is taken over at most this many of the most recent withdrawals.
    pub samples_max: usize,
    /// With fewer past withdrawals than this there is no baseline yet.
    pub samples_min: usize,
    #[serde(default = "needs_approval")]
    pub on_breach: Action,
    /// What a request without a baseline yields; absent (the default), the rule abstains and the mandatory
    /// per-transaction and rolling limits bound a young wallet.
    #[serde(default)]
    pub on_thin_history: Option<Action>,
    #[serde(default)]
    pub quorum: Option<u8>,
}

/// One amount band: amounts from `from` (inclusive) up to the next band's `from` need `approvals` of
/// `approvers` operators whenever approval is needed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuorumBand {
    pub from: Amount,
    pub approvals: u8,
    pub approvers: u8,
}

/// The policy of one (wallet, asset), as loaded; [`PolicyConfig::validate`] turns it into a [`Policy`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    pub wallet: String,
    pub asset: AssetCode,
    pub class: PolicyClass,
    pub quorum_bands: Vec<QuorumBand>,
    pub per_tx_limit: PerTxLimit,
    pub rolling_limit: RollingLimit,
    #[serde(default)]
    pub velocity: Option<Velocity>,
    #[serde(default)]
    pub whitelist: Option<Whitelist>,
    #[serde(default)]
    pub business_hours: Option<BusinessHours>,
    #[serde(default)]
    pub ip_allowlist: Option<IpAllowlist>,
    #[serde(default)]
    pub anomaly: Option<Anomaly>,
}

/// Why a config was refused; `field` is the path in the config.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyConfigError {
    #[error("{field}: a quorum of 0 is never valid (it would read as \"no approval needed\")")]
    QuorumZero { field: String },
    #[error("{field}: quorum {quorum} is below the {min} that policy class {class} demands")]
    QuorumBelowClass { field: String, quorum: u8, min: u8, class: PolicyClass },
    #[error("{field}: {approvals} approvals of {approvers} approvers cannot be met")]
    ApprovalsAboveApprovers { field: String, approvals: u8, approvers: u8 },
    #[error("{field}: {approvers} approvers is above the maximum {APPROVERS_MAX}")]
    TooManyApprovers { field: String, approvers: u8 },
    #[error("quorum_bands: must not be empty")]
    NoQuorumBands,
    #[error("quorum_bands[0].from: the first band must start at 0 so every amount has a quorum")]
    FirstBandNotZero,
    #[error("quorum_bands[{index}].from: bands must be in strictly ascending order of `from`")]
    BandsNotAscending { index: usize },
    #[error("quorum_bands[{index}].approvals: a larger amount must not need fewer approvals")]
    BandQuorumDecreasing { index: usize },
    #[error("{field}: {len} entries is above the maximum {max}")]
    TooMany { field: String, len: usize, max: usize },
    #[error("{field}: must be between 1 and {WINDOW_MS_MAX} ms")]
    WindowOutOfRange { field: String },
    #[error("{field}: must be between 0 and {WINDOW_MS_MAX} ms")]
    CoolingOffOutOfRange { field: String },
    #[error("per_tx_limit.max: must be greater than zero")]
    PerTxLimitZero,
    #[error("velocity.count_max: must be between 1 and {HISTORY_LEN_MAX}")]
    VelocityCountOutOfRange,
    #[error("whitelist.entries[{index}].address: must not be empty")]
    WhitelistAddressEmpty { index: usize },
    #[error("whitelist.entries[{index}].address: {address:?} is listed twice")]
    WhitelistDuplicate { index: usize, address: String },
    #[error("business_hours.{field}: must be an hour from 0 to 23")]
    HourOutOfRange { field: &'static str },
    #[error("business_hours: start_hour_utc equal to end_hour_utc is ambiguous (no hours or all hours)")]
    HoursEmpty,
    #[error("business_hours.weekdays: must name at least one weekday")]
    NoWeekdays,
    #[error("ip_allowlist.cidrs: must not be empty (it would refuse every operator terminal)")]
    NoCidrs,
    #[error("anomaly.multiplier: must be at least 1")]
    MultiplierZero,
    #[error("anomaly: need 1 <= samples_min <= samples_max <= {HISTORY_LEN_MAX}")]
    AnomalySamples,
    #[error("wallet: must not be empty")]
    WalletEmpty,
}

/// A validated policy. Only this type can decide.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    config: PolicyConfig,
}

impl PolicyConfig {
    /// Checks everything a decision relies on, so `Policy::decide` never meets a nonsensical config.
    pub fn validate(self) -> Result<Policy, PolicyConfigError> {
        use PolicyConfigError as E;
        if self.wallet.is_empty() {
            return Err(E::WalletEmpty);
        }
        let class = self.class;
        self.validate_bands()?;
        if self.per_tx_limit.max.is_zero() {
            return Err(E::PerTxLimitZero);
        }
        check_rule_quorum(class, "per_tx_limit.quorum", self.per_tx_limit.quorum)?;
        check_window("rolling_limit.window_ms", self.rolling_limit.window_ms)?;
        check_rule_quorum(class, "rolling_limit.quorum", self.rolling_limit.quorum)?;
        if let Some(v) = &self.velocity {
            check_window("velocity.window_ms", v.window_ms)?;
            if v.count_max == 0 || v.count_max as usize > HISTORY_LEN_MAX {
                return Err(E::VelocityCountOutOfRange);
            }
            check_rule_quorum(class, "velocity.quorum", v.quorum)?;
        }
        if let Some(w) = &self.whitelist {
            if w.entries.len() > WHITELIST_LEN_MAX {
                return Err(E::TooMany {
                    field: "whitelist.entries".into(),
                    len: w.entries.len(),
                    max: WHITELIST_LEN_MAX,
                });
            }
            if !(0..=WINDOW_MS_MAX).contains(&w.cooling_off_ms) {
                return Err(E::CoolingOffOutOfRange { field: "whitelist.cooling_off_ms".into() });
            }
            let mut seen = std::collections::BTreeSet::new();
            for (index, entry) in w.entries.iter().enumerate() {
                if entry.address.is_empty() {
                    return Err(E::WhitelistAddressEmpty { index });
                }
                // Two entries for one address with different `added_at_ms` would make the cooling-off depend
                // on which one the engine found first.
                if !seen.insert(entry.address.as_str()) {
                    return Err(E::WhitelistDuplicate { index, address: entry.address.clone() });
                }
            }
            check_rule_quorum(class, "whitelist.quorum", w.quorum)?;
        }
        if let Some(b) = &self.business_hours {
            if b.start_hour_utc > 23 {
                return Err(E::HourOutOfRange { field: "start_hour_utc" });
            }
            if b.end_hour_utc > 23 {
                return Err(E::HourOutOfRange { field: "end_hour_utc" });
            }
            if b.start_hour_utc == b.end_hour_utc {
                return Err(E::HoursEmpty);
            }
            if b.weekdays.is_empty() {
                return Err(E::NoWeekdays);
            }
            check_rule_quorum(class, "business_hours.quorum", b.quorum)?;
        }
        if let Some(ip) = &self.ip_allowlist {
            if ip.cidrs.is_empty() {
                return Err(E::NoCidrs);
            }
            if ip.cidrs.len() > IP_ALLOWLIST_LEN_MAX {
                return Err(E::TooMany {
                    field: "ip_allowlist.cidrs".into(),
                    len: ip.cidrs.len(),
                    max: IP_ALLOWLIST_LEN_MAX,
                });
            }
            check_rule_quorum(class, "ip_allowlist.quorum", ip.quorum)?;
        }
        if let Some(a) = &self.anomaly {
            if a.multiplier == 0 {
                return Err(E::MultiplierZero);
            }
            if a.samples_min == 0 || a.samples_min > a.samples_max || a.samples_max > HISTORY_LEN_MAX {
                return Err(E::AnomalySamples);
            }
            check_rule_quorum(class, "anomaly.quorum", a.quorum)?;
        }
        Ok(Policy { config: self })
    }

    fn validate_bands(&self) -> Result<(), PolicyConfigError> {
        use PolicyConfigError as E;
        let bands = &self.quorum_bands;
        if bands.is_empty() {
            return Err(E::NoQuorumBands);
        }
        if bands.len() > QUORUM_BANDS_MAX {
            return Err(E::TooMany { field: "quorum_bands".into(), len: bands.len(), max: QUORUM_BANDS_MAX });
        }
        if !bands[0].from.is_zero() {
            return Err(E::FirstBandNotZero);
        }
        for (index, band) in bands.iter().enumerate() {
            let field = format!("quorum_bands[{index}].approvals");
            check_quorum(self.class, &field, band.approvals)?;
            if band.approvers > APPROVERS_MAX {
                return Err(E::TooManyApprovers {
                    field: format!("quorum_bands[{index}].approvers"),
                    approvers: band.approvers,
                });
            }
            if band.approvals > band.approvers {
                return Err(E::ApprovalsAboveApprovers { field, approvals: band.approvals, approvers: band.approvers });
            }
            if index > 0 {
                let prev = &bands[index - 1];
                if band.from <= prev.from {
                    return Err(E::BandsNotAscending { index });
                }
                if band.approvals < prev.approvals {
                    return Err(E::BandQuorumDecreasing { index });
                }
            }
        }
        Ok(())
    }
}

fn check_quorum(class: PolicyClass, field: &str, quorum: u8) -> Result<(), PolicyConfigError> {
    if quorum == 0 {
        return Err(PolicyConfigError::QuorumZero { field: field.to_string() });
    }
    if quorum < class.quorum_min() {
        return Err(PolicyConfigError::QuorumBelowClass {
            field: field.to_string(),
            quorum,
            min: class.quorum_min(),
            class,
        });
    }
    Ok(())
}

fn check_rule_quorum(class: PolicyClass, field: &str, quorum: Option<u8>) -> Result<(), PolicyConfigError> {
    match quorum {
        Some(q) => check_quorum(class, field, q),
        None => Ok(()),
    }
}

fn check_window(field: &str, window_ms: i64) -> Result<(), PolicyConfigError> {
    if (1..=WINDOW_MS_MAX).contains(&window_ms) {
        Ok(())
    } else {
        Err(PolicyConfigError::WindowOutOfRange { field: field.to_string() })
    }
}

/// One past withdrawal from the wallet (any status that moved or may still move funds).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PastWithdrawal {
    pub at_ms: i64,
    pub amount: Amount,
}

/// What is being decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request<'a> {
    pub wallet: &'a str,
    pub asset: &'a AssetCode,
    pub amount: Amount,
    pub destination: &'a str,
    pub now_ms: i64,
    /// The operator terminal's address when an operator instructs the transfer; `None` for customer
    /// withdrawals, to which the terminal allowlist does not apply.
    pub requester_ip: Option<IpAddr>,
    /// The wallet's most recent withdrawals, at most [`HISTORY_LEN_MAX`], in any order. It must hold every
    /// withdrawal inside the rolling and velocity windows, or the most recent `HISTORY_LEN_MAX` of them.
    pub history: &'a [PastWithdrawal],
}

/// Why a decision is not `Auto`. Each names its rule and the numbers it compared.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "rule", rename_all = "snake_case")]
pub enum Reason {
    /// The request is for another wallet or asset than this policy's: a caller bug, refused.
    WrongPolicy {
        wallet: String,
        asset: String,
    },
    ZeroAmount,
    HistoryTooLong {
        len: usize,
        max: usize,
    },
    /// The history is full and its oldest entry is still inside a window, so sums and counts may be low.
    HistoryTruncated {
        len: usize,
        oldest_at_ms: i64,
    },
    ClassNeedsApproval {
        class: PolicyClass,
    },
    PerTxLimit {
        amount: Amount,
        max: Amount,
    },
    /// `spent` is what the window already held, without this withdrawal's `amount`.
    RollingLimit {
        window_ms: i64,
        spent: Amount,
        amount: Amount,
        max: Amount,
    },
    /// `count` includes this withdrawal.
    Velocity {
        window_ms: i64,
        count: u64,
        count_max: u32,
    },
    DestinationNotWhitelisted {
        destination: String,
    },
    DestinationCoolingOff {
        destination: String,
        added_at_ms: i64,
        usable_at_ms: i64,
        now_ms: i64,
    },
    OutsideBusinessHours {
        hour_utc: u8,
        weekday: Weekday,
    },
    TerminalNotAllowed {
        ip: IpAddr,
    },
    Anomaly {
        amount: Amount,
        median: Amount,
        multiplier: u32,
        samples: usize,
    },
    AnomalyNoBaseline {
        samples: usize,
        samples_min: usize,
    },
}

/// The engine's verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    /// No rule objected.
    Auto,
    /// `quorum` (never 0) distinct operators must approve; `reasons` lists every rule that asked.
    NeedsApproval { quorum: u8, reasons: Vec<Reason> },
    /// Refused whatever the approvals. `reasons` lists only the rules that denied: a rule that would merely
    /// have asked for approval does not change the outcome and would blur which rule refused.
    Deny { reasons: Vec<Reason> },
}

/// Accumulates breaches; the `if`s of each rule stay in `decide`, this only folds them.
struct Verdict {
    deny: Vec<Reason>,
    approve: Vec<Reason>,
    quorum: u8,
}

impl Verdict {
    fn add(&mut self, action: Action, quorum: Option<u8>, reason: Reason) {
        match action {
            Action::Deny => self.deny.push(reason),
            Action::NeedsApproval => {
                self.quorum = self.quorum.max(quorum.unwrap_or(0));
                self.approve.push(reason);
            }
        }
    }
}

/// True while a withdrawal at `at_ms` is inside the half-open window `(now - window, now]`, or in the
/// future (clock skew), which errs towards counting it.
fn in_window(at_ms: i64, now_ms: i64, window_ms: i64) -> bool {
    now_ms.saturating_sub(at_ms) < window_ms
}

/// Median of non-empty `amounts` (sorted in place); the lower-upper average for an even count, rounded down
/// and computed without overflow.
fn median(amounts: &mut [u128]) -> u128 {
    amounts.sort_unstable();
    let mid = amounts.len() / 2;
    if amounts.len() % 2 == 1 {
        amounts[mid]
    } else {
        let (a, b) = (amounts[mid - 1], amounts[mid]);
        a / 2 + b / 2 + (a % 2 + b % 2) / 2
    }
}

impl Policy {
    pub fn config(&self) -> &PolicyConfig {
        &self.config
    }

    /// The quorum band's approvals for `amount`. Validation makes the first band start at 0, so a band always
    /// matches; were none to, `u8::MAX` demands more approvals than any band can have (fail closed).
    pub fn band_quorum(&self, amount: Amount) -> u8 {
        self.config.quorum_bands.iter().rev().find(|b| b.from <= amount).map_or(u8::MAX, |b| b.approvals)
    }

    pub fn decide(&self, req: &Request<'_>) -> Decision {
        let c = &self.config;
        let mut v = Verdict { deny: Vec::new(), approve: Vec::new(), quorum: 0 };

        if req.wallet != c.wallet || req.asset != &c.asset {
            v.deny.push(Reason::WrongPolicy { wallet: req.wallet.to_string(), asset: req.asset.to_string() });
        }
        if req.amount.is_zero() {
            v.deny.push(Reason::ZeroAmount);
        }
        if req.history.len() > HISTORY_LEN_MAX {
            // Nothing computed from a history the caller did not bound can be trusted.
            v.deny.push(Reason::HistoryTooLong { len: req.history.len(), max: HISTORY_LEN_MAX });
            return finish(self, v, req.amount);
        }
        let now_ms = req.now_ms;
        let amount = req.amount;

        if c.class.always_needs_approval() {
            v.add(Action::NeedsApproval, None, Reason::ClassNeedsApproval { class: c.class });
        }

        let window_max_ms = c.rolling_limit.window_ms.max(c.velocity.as_ref().map_or(0, |vel| vel.window_ms));
        if req.history.len() == HISTORY_LEN_MAX
            && let Some(oldest_at_ms) = req.history.iter().map(|h| h.at_ms).min()
            && in_window(oldest_at_ms, now_ms, window_max_ms)
        {
            v.add(Action::NeedsApproval, None, Reason::HistoryTruncated { len: req.history.len(), oldest_at_ms });
        }

        let ptl = &c.per_tx_limit;
        if amount > ptl.max {
            v.add(ptl.on_breach, ptl.quorum, Reason::PerTxLimit { amount, max: ptl.max });
        }

        let rl = &c.rolling_limit;
        let spent = req
            .history
            .iter()
            .filter(|h| in_window(h.at_ms, now_ms, rl.window_ms))
            .fold(0u128, |sum, h| sum.saturating_add(h.amount.base_units()));
        if spent.saturating_add(amount.base_units()) > rl.max.base_units() {
            v.add(
                rl.on_breach,
                rl.quorum,
                Reason::RollingLimit {
                    window_ms: rl.window_ms,
                    spent: Amount::from_base_units(spent),
                    amount,
                    max: rl.max,
                },
            );
        }

        if let Some(vel) = &c.velocity {
            let count = req.history.iter().filter(|h| in_window(h.at_ms, now_ms, vel.window_ms)).count() as u64 + 1;
            if count > u64::from(vel.count_max) {
                v.add(
                    vel.on_breach,
                    vel.quorum,
                    Reason::Velocity { window_ms: vel.window_ms, count, count_max: vel.count_max },
                );
            }
        }

        if let Some(wl) = &c.whitelist {
            match wl.entries.iter().find(|e| e.address == req.destination) {
                None => v.add(
                    wl.on_unlisted,
                    wl.quorum,
                    Reason::DestinationNotWhitelisted { destination: req.destination.to_string() },
                ),
                Some(entry) => {
                    // An overflowing sum can never be reached, so the entry never becomes usable.
                    let usable_at_ms = entry.added_at_ms.saturating_add(wl.cooling_off_ms);
                    let usable = entry.added_at_ms.checked_add(wl.cooling_off_ms).is_some_and(|t| now_ms >= t);
                    if !usable {
                        v.add(
                            Action::Deny,
                            None,
                            Reason::DestinationCoolingOff {
                                destination: req.destination.to_string(),
                                added_at_ms: entry.added_at_ms,
                                usable_at_ms,
                                now_ms,
                            },
                        );
                    }
                }
            }
        }

        if let Some(bh) = &c.business_hours {
            // rem_euclid keeps pre-1970 times in 0..24 too.
            let hour_utc = (now_ms.rem_euclid(DAY_MS) / HOUR_MS) as u8;
            let weekday = Weekday::at_ms(now_ms);
            let in_hours = if bh.start_hour_utc < bh.end_hour_utc {
                (bh.start_hour_utc..bh.end_hour_utc).contains(&hour_utc)
            } else {
                hour_utc >= bh.start_hour_utc || hour_utc < bh.end_hour_utc
            };
            if !in_hours || !bh.weekdays.contains(&weekday) {
                v.add(bh.on_breach, bh.quorum, Reason::OutsideBusinessHours { hour_utc, weekday });
            }
        }

        if let (Some(al), Some(ip)) = (&c.ip_allowlist, req.requester_ip)
            && !al.cidrs.iter().any(|cidr| cidr.contains(ip))
        {
            v.add(al.on_breach, al.quorum, Reason::TerminalNotAllowed { ip });
        }

        if let Some(an) = &c.anomaly {
            let mut recent: Vec<PastWithdrawal> = req.history.to_vec();
            recent.sort_unstable_by_key(|h| std::cmp::Reverse(h.at_ms));
            recent.truncate(an.samples_max);
            if recent.len() < an.samples_min {
                if let Some(action) = an.on_thin_history {
                    v.add(
                        action,
                        an.quorum,
                        Reason::AnomalyNoBaseline { samples: recent.len(), samples_min: an.samples_min },
                    );
                }
            } else {
                let mut amounts: Vec<u128> = recent.iter().map(|h| h.amount.base_units()).collect();
                let med = median(&mut amounts);
                // A threshold beyond u128 cannot be exceeded by any amount.
                let anomalous =
                    med.checked_mul(u128::from(an.multiplier)).is_some_and(|threshold| amount.base_units() > threshold);
                if anomalous {
                    v.add(
                        an.on_breach,
                        an.quorum,
                        Reason::Anomaly {
                            amount,
                            median: Amount::from_base_units(med),
                            multiplier: an.multiplier,
                            samples: recent.len(),
                        },
                    );
                }
            }
        }

        finish(self, v, amount)
    }
}

fn finish(policy: &Policy, v: Verdict, amount: Amount) -> Decision {
    if !v.deny.is_empty() {
        return Decision::Deny { reasons: v.deny };
    }
    if v.approve.is_empty() {
        return Decision::Auto;
    }
    // Validation already holds every band at or above the class minimum; taking it again here means a
    // future path around validation still cannot produce a quorum below it.
    let quorum = v.quorum.max(policy.config.class.quorum_min()).max(policy.band_quorum(amount));
    Decision::NeedsApproval { quorum, reasons: v.approve }
}

/// Most (wallet, asset) policies in one set.
pub const POLICIES_MAX: usize = 4096;

/// Every policy of a deployment, as loaded (`[[policies]]` in TOML).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySetConfig {
    pub policies: Vec<PolicyConfig>,
}

/// Why a policy set was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicySetError {
    #[error("policies[{index}] (wallet {wallet}, asset {asset}): {source}")]
    Policy { index: usize, wallet: String, asset: AssetCode, source: PolicyConfigError },
    #[error("policies[{index}]: wallet {wallet} asset {asset} already has a policy")]
    Duplicate { index: usize, wallet: String, asset: AssetCode },
    #[error("policies: {len} entries is above the maximum {POLICIES_MAX}")]
    TooMany { len: usize },
}

/// Validated policies keyed by (wallet, asset).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicySet {
    policies: std::collections::BTreeMap<(String, AssetCode), Policy>,
}

impl PolicySetConfig {
    /// Validates every policy; one bad policy refuses the whole set, so a typo cannot leave one wallet
    /// running on an older or absent policy while the rest load.
    pub fn validate(self) -> Result<PolicySet, PolicySetError> {
        if self.policies.len() > POLICIES_MAX {
            return Err(PolicySetError::TooMany { len: self.policies.len() });
        }
        let mut policies = std::collections::BTreeMap::new();
        for (index, config) in self.policies.into_iter().enumerate() {
            let key = (config.wallet.clone(), config.asset.clone());
            if policies.contains_key(&key) {
                return Err(PolicySetError::Duplicate { index, wallet: key.0, asset: key.1 });
            }
            let policy = config.validate().map_err(|source| PolicySetError::Policy {
                index,
                wallet: key.0.clone(),
                asset: key.1.clone(),
                source,
            })?;
            policies.insert(key, policy);
        }
        Ok(PolicySet { policies })
    }
}

impl PolicySet {
    pub fn get(&self, wallet: &str, asset: &AssetCode) -> Option<&Policy> {
        self.policies.get(&(wallet.to_string(), asset.clone()))
    }

    pub fn len(&self) -> usize {
        self.policies.len()
    }

    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }
}
