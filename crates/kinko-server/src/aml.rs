//! Anti-money-laundering checks on customer withdrawals (U14).
//!
//! - **Screening:** the destination is checked against a deny list file (`[aml] deny_list_path`, one
//!   address per line, `#` comments). The file is re-read when its modification time or size changes,
//!   looked at no more often than `deny_list_check_interval_ms`. A list that cannot be loaded refuses every
//!   withdrawal (fail closed) until it is fixed; with no file configured screening is off and a warning is
//!   logged. A deny-listed destination is refused (`destination-denied`) and an AML case opened.
//! - **Rules over the customer's history** open cases for compliance review without refusing
//!   (report, don't block): deposit-then-immediate-withdrawal, structuring just under the per-transaction
//!   limit, fan-out to many destinations. They are evaluated before the withdrawal is written and their
//!   cases opened first, so a failed case write stops the withdrawal (fail closed); a withdrawal that is
//!   then refused (insufficient balance, policy) keeps its case as a record of the attempt.
//! - **Purpose and beneficiary** are required above `purpose_required_above`.
//!
//! Every case is written with an `ops_events` row in the same transaction (`aml_case_opened`).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, Once};
use std::time::{Instant, SystemTime};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequest, Query, Request, State};
use axum::http::{StatusCode, header};
use kinko_chain::evm::address::{parse_address, to_lower_hex};
use kinko_core::Amount;
use kinko_store::aml::{AmlCase, CASE_CLOSED, CASE_OPEN, CreditedDeposit, PastWithdrawal};
use kinko_store::ops_requests::NewOpsEvent;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::api::extract::BODY_LIMIT_BYTES;
use crate::api::ops_auth::Operator;
use crate::api::ops_requests::require_endpoint;
use crate::api::problem::{FieldError, Problem};
use crate::config::ConfigError;

/// Bound on the deny list file: far above any published sanctions list of addresses.
pub const DENY_LIST_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// Bound on deny-listed addresses.
pub const DENY_LIST_ENTRIES_MAX: usize = 1_000_000;
/// Bound on `purpose`, in characters.
pub const PURPOSE_CHARS_MAX: usize = 200;
/// Bound on `beneficiary`, in characters.
pub const BENEFICIARY_CHARS_MAX: usize = 200;
/// Bound on the window of any history rule: the history read is bounded too
/// (`kinko_store::aml::HISTORY_ROWS_MAX`).
pub const RULE_WINDOW_MS_MAX: u64 = 90 * 24 * 60 * 60 * 1000;
/// Bound on the count thresholds of the history rules.
pub const RULE_COUNT_MAX: u32 = 1_000;

pub const RULE_DENY_LIST: &str = "deny_list";
pub const RULE_QUICK_WITHDRAWAL: &str = "deposit_then_withdrawal";
pub const RULE_STRUCTURING: &str = "structuring";
pub const RULE_FAN_OUT: &str = "fan_out";

const ETH_WEI: u128 = 1_000_000_000_000_000_000;
const HOUR_MS: u64 = 60 * 60 * 1000;
const DAY_MS: u64 = 24 * HOUR_MS;

/// `[aml]`. Every key is optional.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AmlConfig {
    /// The deny list: one 0x-address per line, `#` starts a comment. Unset: no screening (a warning at
    /// start). Set but unreadable or malformed: every withdrawal is refused until it loads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deny_list_path: Option<PathBuf>,
    /// How often, at most, the file's modification time and size are looked at for a reload. Default 5000.
    #[serde(default = "default_check_interval_ms")]
    pub deny_list_check_interval_ms: u64,
    /// Withdrawals above this amount (base units of the asset withdrawn) must carry `purpose` and
    /// `beneficiary`. Default 100 ETH in wei.
    #[serde(default = "default_purpose_required_above")]
    pub purpose_required_above: Amount,
    /// Deposit-then-withdrawal: a withdrawal within this long of a credited deposit of the same asset…
    /// Default one hour.
    #[serde(default = "default_quick_withdrawal_ms")]
    pub quick_withdrawal_ms: u64,
    /// …of at least this percentage of that deposit opens a case. Default 90.
    #[serde(default = "default_quick_withdrawal_percent")]
    pub quick_withdrawal_percent: u8,
    /// Structuring: withdrawals of one asset within this window… Default 24 h.
    #[serde(default = "default_day_ms")]
    pub structuring_window_ms: u64,
    /// …at least this many of them (the current one included)… Default 3.
    #[serde(default = "default_structuring_count")]
    pub structuring_count: u32,
    /// …each under the policy's per-transaction limit by at most this percentage of it. Default 10.
    #[serde(default = "default_structuring_band_percent")]
    pub structuring_band_percent: u8,
    /// Fan-out: withdrawals (any asset) within this window… Default 24 h.
    #[serde(default = "default_day_ms")]
    pub fan_out_window_ms: u64,
    /// …to at least this many distinct destinations open a case (when the current one adds a new
    /// destination). Default 5.
    #[serde(default = "default_fan_out_destinations")]
    pub fan_out_destinations: u32,
}

fn default_check_interval_ms() -> u64 {
    5_000
}
fn default_purpose_required_above() -> Amount {
    Amount::from_base_units(100 * ETH_WEI)
}
fn default_quick_withdrawal_ms() -> u64 {
    HOUR_MS
}
fn default_quick_withdrawal_percent() -> u8 {
    90
}
fn default_day_ms() -> u64 {
    DAY_MS
}
fn default_structuring_count() -> u32 {
    3
}
fn default_structuring_band_percent() -> u8 {
    10
}
fn default_fan_out_destinations() -> u32 {
    5
}

impl Default for AmlConfig {
    fn default() -> Self {
        AmlConfig {
            deny_list_path: None,
            deny_list_check_interval_ms: default_check_interval_ms(),
            purpose_required_above: default_purpose_required_above(),
            quick_withdrawal_ms: default_quick_withdrawal_ms(),
            quick_withdrawal_percent: default_quick_withdrawal_percent(),
            structuring_window_ms: DAY_MS,
            structuring_count: default_structuring_count(),
            structuring_band_percent: default_structuring_band_percent(),
            fan_out_window_ms: DAY_MS,
            fan_out_destinations: default_fan_out_destinations(),
        }
    }
}

impl AmlConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, reason: &str| Err(ConfigError::Invalid { field, reason: reason.into() });
        if self.deny_list_check_interval_ms > 3_600_000 {
            return invalid("aml.deny_list_check_interval_ms", "must be at most 3600000 (one hour)");
        }
        for (field, ms) in [
            ("aml.quick_withdrawal_ms", self.quick_withdrawal_ms),
            ("aml.structuring_window_ms", self.structuring_window_ms),
            ("aml.fan_out_window_ms", self.fan_out_window_ms),
        ] {
            if ms == 0 || ms > RULE_WINDOW_MS_MAX {
                return invalid(field, "must be between 1 and 7776000000 (90 days)");
            }
        }
        if !(1..=100).contains(&self.quick_withdrawal_percent) {
            return invalid("aml.quick_withdrawal_percent", "must be between 1 and 100");
        }
        if !(1..=100).contains(&self.structuring_band_percent) {
            return invalid("aml.structuring_band_percent", "must be between 1 and 100");
        }
        for (field, n) in
            [("aml.structuring_count", self.structuring_count), ("aml.fan_out_destinations", self.fan_out_destinations)]
        {
            if !(2..=RULE_COUNT_MAX).contains(&n) {
                return invalid(field, "must be between 2 and 1000");
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------------------
// Deny list

/// A loaded deny list: lower-case 0x-hex addresses.
pub type DenyList = Arc<HashSet<String>>;

/// Parses deny list text: one address per line, `#` to the end of a line is a comment, blank lines are
/// skipped. An unparsable line fails the whole list, naming the line: a list that silently dropped an
/// entry would let that address through.
pub fn parse_deny_list(text: &str) -> Result<HashSet<String>, String> {
    let mut set = HashSet::new();
    for (i, line) in text.lines().enumerate() {
        let entry = line.split('#').next().unwrap_or_default().trim();
        if entry.is_empty() {
            continue;
        }
        let address = parse_address(entry).map_err(|e| format!("line {}: {e}", i + 1))?;
        if set.len() >= DENY_LIST_ENTRIES_MAX {
            return Err(format!("more than {DENY_LIST_ENTRIES_MAX} entries"));
        }
        set.insert(to_lower_hex(&address));
    }
    Ok(set)
}

fn load_deny_list(path: &Path) -> Result<HashSet<String>, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.len() > DENY_LIST_BYTES_MAX {
        return Err(format!("{}: larger than {DENY_LIST_BYTES_MAX} bytes", path.display()));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse_deny_list(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// What a file looked like when it was last loaded; a change of either means "reload".
type Stamp = (Option<SystemTime>, u64);

struct Cached {
    checked_at: Instant,
    stamp: Option<Stamp>,
    list: Result<DenyList, String>,
}

/// Loaded lists by path. Process-wide (not in `AppState`) so that every handler shares one copy and
/// one reload; keyed by path so configurations with different lists (tests) do not mix.
static DENY_LISTS: LazyLock<Mutex<HashMap<PathBuf, Cached>>> = LazyLock::new(|| Mutex::new(HashMap::new()));
static SCREENING_OFF_WARNING: Once = Once::new();

fn stamp(path: &Path) -> Option<Stamp> {
    std::fs::metadata(path).ok().map(|m| (m.modified().ok(), m.len()))
}

/// The current deny list: `Ok(None)` when screening is off (no file configured), `Err` (the reason, for
/// the log) when the configured file cannot be loaded.
pub fn deny_list(config: &AmlConfig) -> Result<Option<DenyList>, String> {
    let Some(path) = &config.deny_list_path else {
        SCREENING_OFF_WARNING.call_once(|| {
            tracing::warn!("AML screening is off: no [aml] deny_list_path configured (U14)");
        });
        return Ok(None);
    };
    // A poisoned lock only means another thread panicked mid-update; the map itself stays consistent
    // (entries are replaced whole), so carry on with it.
    let mut lists = DENY_LISTS.lock().unwrap_or_else(|p| p.into_inner());
    let interval = std::time::Duration::from_millis(config.deny_list_check_interval_ms);
    if let Some(c) = lists.get(path)
        && c.checked_at.elapsed() < interval
    {
        return c.list.clone().map(Some);
    }
    let now_stamp = stamp(path);
    if let Some(c) = lists.get_mut(path)
        && c.list.is_ok()
        && now_stamp.is_some()
        && c.stamp == now_stamp
    {
        c.checked_at = Instant::now();
        return c.list.clone().map(Some);
    }
    let list = load_deny_list(path).map(Arc::new);
    match &list {
        Ok(l) => tracing::info!(path = %path.display(), entries = l.len(), "AML deny list loaded"),
        Err(e) => tracing::error!(error = %e, "AML deny list failed to load: withdrawals are refused until it loads"),
    }
    lists.insert(path.clone(), Cached { checked_at: Instant::now(), stamp: now_stamp, list: list.clone() });
    list.map(Some)
}

/// Logs at start whether screening is on, and loads the list once so a broken file shows in the log
/// before the first withdrawal. Never fails: a broken list refuses withdrawals, it does not stop the server.
pub fn announce(config: &AmlConfig) {
    let _ = deny_list(config);
}

/// The answer when the deny list cannot be loaded (fail closed).
pub fn screening_unavailable() -> Problem {
    Problem::new(StatusCode::SERVICE_UNAVAILABLE, "aml-screening-unavailable", "destination screening unavailable")
        .detail("the destination deny list could not be loaded; withdrawals are refused until it is fixed")
}

/// Whether `destination` (lower-case 0x-hex) is deny-listed. Screening off → `false`.
pub fn is_denied(config: &AmlConfig, destination: &str) -> Result<bool, Problem> {
    match deny_list(config) {
        Ok(None) => Ok(false),
        Ok(Some(list)) => Ok(list.contains(destination)),
        Err(_) => Err(screening_unavailable()),
    }
}

/// Screens a withdrawal's destination. A deny-listed one opens a case (rule `deny_list`, one per
/// `dedupe_key`, e.g. the idempotency key and request hash) and is refused with `destination-denied`.
pub async fn screen_destination(
    state: &AppState,
    customer_id: &str,
    destination: &str,
    dedupe_key: &str,
    detail: serde_json::Value,
    now_ms: i64,
) -> Result<(), Problem> {
    if !is_denied(&state.config.aml, destination)? {
        return Ok(());
    }
    open_case(state, customer_id, RULE_DENY_LIST, dedupe_key, detail, now_ms).await?;
    Err(Problem::field(
        StatusCode::UNPROCESSABLE_ENTITY,
        "destination-denied",
        "destination refused",
        "destination",
        "is not a destination this custodian can send to",
    ))
}

/// Opens a case and its `aml_case_opened` ops event in one transaction; `false` when a case for the same
/// (rule, dedupe_key) was already open.
pub async fn open_case(
    state: &AppState,
    customer_id: &str,
    rule: &str,
    dedupe_key: &str,
    detail: serde_json::Value,
    now_ms: i64,
) -> Result<bool, Problem> {
    let case = AmlCase {
        id: format!("aml_{}", uuid::Uuid::now_v7().simple()),
        customer_id: customer_id.to_string(),
        rule: rule.to_string(),
        dedupe_key: dedupe_key.to_string(),
        detail_json: detail.to_string(),
        state: CASE_OPEN.to_string(),
        created_at_ms: now_ms,
        closed_at_ms: 0,
    };
    let event = NewOpsEvent {
        operator_id: kinko_core::operators::SYSTEM_EXECUTOR.into(),
        terminal: format!("api:{}", state.config.instance_id),
        event: kinko_store::aml::EVENT_CASE_OPENED.into(),
        request_id: None,
        detail_json:
            serde_json::json!({"case_id": case.id, "customer_id": customer_id, "rule": rule, "detail": detail})
                .to_string(),
        at_ms: now_ms,
    };
    let opened = state.store.open_aml_case(&case, &event).await?;
    if opened {
        tracing::info!(case_id = %case.id, customer_id, rule, "AML case opened");
    }
    Ok(opened)
}

// ---------------------------------------------------------------------------------------------------------
// Bodies with optional members

/// A JSON body like [`crate::api::extract::JsonBody`] (string members only, unknown members refused), with
/// some members optional (absent or `null`). For `purpose`/`beneficiary` on withdrawals and the migration
/// signature of a wallet binding.
pub trait JsonBodyOptional: DeserializeOwned {
    const REQUIRED: &'static [&'static str];
    const OPTIONAL: &'static [&'static str];
}

/// The extractor for [`JsonBodyOptional`] bodies; answers like `ApiJson` (415, 413, 400, 422 naming fields).
pub struct ApiJsonOpt<T>(pub T);

impl<S, T> FromRequest<S> for ApiJsonOpt<T>
where
    S: Send + Sync,
    T: JsonBodyOptional,
{
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Problem> {
        let content_type = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        if !(essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))) {
            return Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "unsupported media type",
            )
            .detail("send the body as application/json"));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "body-too-large", "request body too large")
                    .detail(format!("request bodies are limited to {BODY_LIMIT_BYTES} bytes"))
            } else {
                Problem::new(StatusCode::BAD_REQUEST, "unreadable-body", "request body could not be read")
            }
        })?;
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
            Problem::new(StatusCode::BAD_REQUEST, "malformed-json", "malformed JSON").detail(format!(
                "JSON syntax error at line {} column {}",
                e.line(),
                e.column()
            ))
        })?;
        let Some(object) = value.as_object() else {
            return Err(Problem::validation(vec![FieldError::new("body", "must be a JSON object")]));
        };
        let mut errors = Vec::new();
        for &field in T::REQUIRED.iter().chain(T::OPTIONAL) {
            match object.get(field) {
                None | Some(Value::Null) if T::OPTIONAL.contains(&field) => {}
                None | Some(Value::Null) => errors.push(FieldError::new(field, "is required")),
                Some(Value::String(_)) => {}
                Some(_) => errors.push(FieldError::new(field, "must be a JSON string")),
            }
        }
        for key in object.keys() {
            if !T::REQUIRED.contains(&key.as_str()) && !T::OPTIONAL.contains(&key.as_str()) {
                // Field names are echoed back; bound them.
                errors.push(FieldError::new(key.chars().take(64).collect::<String>(), "is not a known field"));
            }
        }
        if !errors.is_empty() {
            return Err(Problem::validation(errors));
        }
        serde_json::from_value(value).map(ApiJsonOpt).map_err(|_| {
            Problem::validation(vec![FieldError::new("body", "does not match the documented request schema")])
        })
    }
}

// ---------------------------------------------------------------------------------------------------------
// Purpose and beneficiary

fn bounded_text(field: &str, value: Option<&str>, max: usize) -> Result<Option<String>, FieldError> {
    let Some(v) = value else { return Ok(None) };
    let v = v.trim();
    if v.is_empty() || v.chars().count() > max || v.chars().any(char::is_control) {
        return Err(FieldError::new(field, format!("must be 1 to {max} characters without control characters")));
    }
    Ok(Some(v.to_string()))
}

/// Checks `purpose` and `beneficiary`: bounded when given, required when `amount` is above
/// `purpose_required_above`. Returns them trimmed.
pub fn check_purpose(
    config: &AmlConfig,
    amount: Amount,
    purpose: Option<&str>,
    beneficiary: Option<&str>,
) -> Result<(Option<String>, Option<String>), Problem> {
    let mut errors = Vec::new();
    let purpose = bounded_text("purpose", purpose, PURPOSE_CHARS_MAX).map_err(|e| errors.push(e)).ok().flatten();
    let beneficiary =
        bounded_text("beneficiary", beneficiary, BENEFICIARY_CHARS_MAX).map_err(|e| errors.push(e)).ok().flatten();
    if errors.is_empty() && amount > config.purpose_required_above {
        let reason = format!("is required for withdrawals above {} base units", config.purpose_required_above);
        if purpose.is_none() {
            errors.push(FieldError::new("purpose", reason.clone()));
        }
        if beneficiary.is_none() {
            errors.push(FieldError::new("beneficiary", reason));
        }
    }
    if errors.is_empty() { Ok((purpose, beneficiary)) } else { Err(Problem::validation(errors)) }
}

/// The withdrawal request hash (`withdrawals::request_hash`) extended by purpose and beneficiary when
/// either is given, so the same Idempotency-Key with other details is "another request". Without them it
/// is unchanged: requests from before these fields existed hash as they did.
pub fn extend_request_hash(base: String, purpose: Option<&str>, beneficiary: Option<&str>) -> String {
    use sha2::{Digest, Sha256};
    if purpose.is_none() && beneficiary.is_none() {
        return base;
    }
    let mut h = Sha256::new();
    h.update(b"kinko-withdrawal-request-aml-v1");
    for field in [Some(base.as_str()), purpose, beneficiary] {
        match field {
            Some(f) => {
                h.update([1u8]);
                h.update((f.len() as u32).to_be_bytes());
                h.update(f.as_bytes());
            }
            None => h.update([0u8]),
        }
    }
    hex::encode(h.finalize())
}

// ---------------------------------------------------------------------------------------------------------
// History rules

/// A rule that matched, with the numbers it compared.
#[derive(Clone, Debug, PartialEq)]
pub struct RuleHit {
    pub rule: &'static str,
    pub detail: serde_json::Value,
}

/// `amount` ≥ `percent`% of `of`. Saturating: only amounts near 2^128 saturate, and then the comparison
/// errs towards reporting.
fn at_least_percent(amount: Amount, percent: u8, of: Amount) -> bool {
    amount.base_units().saturating_mul(100) >= of.base_units().saturating_mul(u128::from(percent))
}

/// Deposit-then-immediate-withdrawal: `w` comes within `quick_withdrawal_ms` after a deposit of the same
/// asset was credited and is at least `quick_withdrawal_percent`% of it. `deposits` are the customer's
/// credited deposits of `w`'s asset.
pub fn quick_withdrawal_hit(config: &AmlConfig, w: &PastWithdrawal, deposits: &[CreditedDeposit]) -> Option<RuleHit> {
    let window = i64::try_from(config.quick_withdrawal_ms).unwrap_or(i64::MAX);
    let d = deposits.iter().find(|d| {
        d.credited_at_ms <= w.created_at_ms
            && w.created_at_ms.saturating_sub(d.credited_at_ms) <= window
            && at_least_percent(w.amount, config.quick_withdrawal_percent, d.amount)
    })?;
    Some(RuleHit {
        rule: RULE_QUICK_WITHDRAWAL,
        detail: serde_json::json!({
            "withdrawal_id": w.id,
            "asset": w.asset,
            "amount": w.amount.to_string(),
            "deposit_id": d.id,
            "deposit_amount": d.amount.to_string(),
            "credited_at_ms": d.credited_at_ms,
            "after_ms": w.created_at_ms - d.credited_at_ms,
            "window_ms": config.quick_withdrawal_ms,
            "percent_min": config.quick_withdrawal_percent,
        }),
    })
}

/// Structuring: `w` and enough other withdrawals of its asset within `structuring_window_ms` are each just
/// under the per-transaction limit (in `[limit − band%, limit)`). `history` holds the customer's
/// withdrawals in the window, `w` itself included or not.
pub fn structuring_hit(
    config: &AmlConfig,
    w: &PastWithdrawal,
    history: &[PastWithdrawal],
    per_tx_limit: Amount,
) -> Option<RuleHit> {
    let limit = per_tx_limit.base_units();
    let lower = limit
        - limit / 100 * u128::from(config.structuring_band_percent)
        - limit % 100 * u128::from(config.structuring_band_percent) / 100;
    let in_band = |a: Amount| (lower..limit).contains(&a.base_units());
    if !in_band(w.amount) {
        return None;
    }
    let window = i64::try_from(config.structuring_window_ms).unwrap_or(i64::MAX);
    let ids: Vec<&str> = history
        .iter()
        .filter(|h| h.id != w.id && h.asset == w.asset && in_band(h.amount))
        .filter(|h| h.created_at_ms <= w.created_at_ms && w.created_at_ms.saturating_sub(h.created_at_ms) < window)
        .map(|h| h.id.as_str())
        .chain([w.id.as_str()])
        .collect();
    if ids.len() < config.structuring_count as usize {
        return None;
    }
    Some(RuleHit {
        rule: RULE_STRUCTURING,
        detail: serde_json::json!({
            "withdrawal_id": w.id,
            "asset": w.asset,
            "withdrawals": ids,
            "count": ids.len(),
            "count_min": config.structuring_count,
            "per_tx_limit": per_tx_limit.to_string(),
            "band_from": lower.to_string(),
            "window_ms": config.structuring_window_ms,
        }),
    })
}

/// Fan-out: with `w`, the customer's withdrawals within `fan_out_window_ms` went to at least
/// `fan_out_destinations` distinct destinations, and `w`'s destination is a new one among them (so one
/// case marks each step past the threshold, not every later withdrawal to a known destination).
pub fn fan_out_hit(config: &AmlConfig, w: &PastWithdrawal, history: &[PastWithdrawal]) -> Option<RuleHit> {
    let window = i64::try_from(config.fan_out_window_ms).unwrap_or(i64::MAX);
    let earlier: Vec<&PastWithdrawal> = history
        .iter()
        .filter(|h| h.id != w.id)
        .filter(|h| h.created_at_ms <= w.created_at_ms && w.created_at_ms.saturating_sub(h.created_at_ms) < window)
        .collect();
    if earlier.iter().any(|h| h.destination == w.destination) {
        return None;
    }
    let mut destinations: Vec<&str> = earlier.iter().map(|h| h.destination.as_str()).collect();
    destinations.sort_unstable();
    destinations.dedup();
    destinations.push(w.destination.as_str());
    if destinations.len() < config.fan_out_destinations as usize {
        return None;
    }
    Some(RuleHit {
        rule: RULE_FAN_OUT,
        detail: serde_json::json!({
            "withdrawal_id": w.id,
            "destinations": destinations.len(),
            "destinations_min": config.fan_out_destinations,
            "window_ms": config.fan_out_window_ms,
        }),
    })
}

/// Evaluates every history rule for the withdrawal `w` about to be written (or just written) and opens a
/// case per rule that matches, keyed by the withdrawal id (re-evaluating opens nothing new). Returns the
/// rules that matched. A failed read or case write is an error: the caller must not go on.
pub async fn review_withdrawal(
    state: &AppState,
    customer_id: &str,
    w: &PastWithdrawal,
    per_tx_limit: Amount,
    now_ms: i64,
) -> Result<Vec<&'static str>, Problem> {
    let config = &state.config.aml;
    let longest = config.structuring_window_ms.max(config.fan_out_window_ms);
    let since = w.created_at_ms.saturating_sub(i64::try_from(longest).unwrap_or(i64::MAX));
    let history = state.store.customer_withdrawals_between(customer_id, since, w.created_at_ms).await?;
    let deposits_since = w.created_at_ms.saturating_sub(i64::try_from(config.quick_withdrawal_ms).unwrap_or(i64::MAX));
    let deposits = state.store.credited_deposits_since(customer_id, &w.asset, deposits_since).await?;
    let hits = [
        quick_withdrawal_hit(config, w, &deposits),
        structuring_hit(config, w, &history, per_tx_limit),
        fan_out_hit(config, w, &history),
    ];
    let mut matched = Vec::new();
    for hit in hits.into_iter().flatten() {
        open_case(state, customer_id, hit.rule, &w.id, hit.detail, now_ms).await?;
        matched.push(hit.rule);
    }
    Ok(matched)
}

// ---------------------------------------------------------------------------------------------------------
// Operators' view

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CasesQuery {
    /// `open` or `closed`; all when absent.
    pub state: Option<String>,
    /// 1 to 500, default 100.
    pub limit: Option<u32>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct AmlCaseView {
    pub id: String,
    pub customer_id: String,
    /// `deny_list`, `deposit_then_withdrawal`, `structuring` or `fan_out`.
    pub rule: String,
    /// The numbers the rule compared.
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
    /// `open` or `closed`.
    pub state: String,
    pub created_at_ms: i64,
    pub closed_at_ms: Option<i64>,
}

/// AML cases for compliance review, newest first (log inspectors, operations managers).
#[utoipa::path(
    get, path = "/v1/ops/aml-cases", tag = "operators", security(("bearer" = [])), params(CasesQuery),
    responses(
        (status = 200, body = [AmlCaseView]),
        (status = 401, description = "no valid operator session", body = crate::api::problem::ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "role not allowed", body = crate::api::problem::ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "bad state or limit", body = crate::api::problem::ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn list_cases(
    State(state): State<AppState>,
    op: Operator,
    Query(q): Query<CasesQuery>,
) -> Result<Json<Vec<AmlCaseView>>, Problem> {
    require_endpoint(&op, "get", "/v1/ops/aml-cases")?;
    let mut errors = Vec::new();
    if let Some(s) = &q.state
        && s != CASE_OPEN
        && s != CASE_CLOSED
    {
        errors.push(FieldError::new("state", "must be open or closed"));
    }
    let limit = q.limit.unwrap_or(100);
    if !(1..=kinko_store::aml::CASES_PAGE_MAX).contains(&limit) {
        errors.push(FieldError::new("limit", "must be an integer from 1 to 500"));
    }
    if !errors.is_empty() {
        return Err(Problem::validation(errors));
    }
    let rows = state.store.aml_cases(q.state.as_deref(), limit).await?;
    rows.into_iter()
        .map(|c| {
            Ok(AmlCaseView {
                detail: serde_json::from_str(&c.detail_json).map_err(Problem::internal)?,
                id: c.id,
                customer_id: c.customer_id,
                rule: c.rule,
                state: c.state,
                created_at_ms: c.created_at_ms,
                closed_at_ms: (c.closed_at_ms != 0).then_some(c.closed_at_ms),
            })
        })
        .collect::<Result<Vec<_>, Problem>>()
        .map(Json)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(id: &str, amount: u128, dest: &str, at: i64) -> PastWithdrawal {
        PastWithdrawal {
            id: id.into(),
            asset: "ETH".into(),
            amount: Amount::from_base_units(amount),
            destination: dest.into(),
            created_at_ms: at,
        }
    }

    #[test]
    fn u14_deny_list_parsing_names_the_bad_line() {
        let text = "# sanctioned\n0x70997970C51812dc3A010C7d01b50e0d17dc79C8  # tornado\n\n  0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266\n";
        let set = parse_deny_list(text).unwrap();
        assert_eq!(set.len(), 2);
        assert!(set.contains("0x70997970c51812dc3a010c7d01b50e0d17dc79c8"));
        let err = parse_deny_list("0x70997970c51812dc3a010c7d01b50e0d17dc79c8\n0x1234\n").unwrap_err();
        assert!(err.starts_with("line 2:"), "{err}");
        let err = parse_deny_list("0x70997970C51812dc3A010C7d01b50e0d17dc79c8\n").unwrap_err();
        assert!(err.contains("EIP-55"), "{err}");
    }

    #[test]
    fn u14_purpose_required_only_above_the_threshold_and_bounded() {
        let c = AmlConfig { purpose_required_above: Amount::from_base_units(100), ..Default::default() };
        assert_eq!(check_purpose(&c, Amount::from_base_units(100), None, None).unwrap(), (None, None));
        let p = check_purpose(&c, Amount::from_base_units(101), None, Some("me")).unwrap_err();
        assert_eq!(p.body.errors.iter().map(|e| e.field.as_str()).collect::<Vec<_>>(), ["purpose"]);
        let p = check_purpose(&c, Amount::from_base_units(1), Some(&"x".repeat(201)), Some("\u{7}")).unwrap_err();
        assert_eq!(p.body.errors.len(), 2);
        assert!(check_purpose(&c, Amount::from_base_units(101), Some(" rent "), Some("Alice")).is_ok());
    }

    #[test]
    fn u14_structuring_band_and_count_thresholds() {
        let c = AmlConfig::default(); // 3 within 24 h, 10% band
        let limit = Amount::from_base_units(1000);
        let h = vec![w("a", 900, "0x1", 0), w("b", 999, "0x1", 10)];
        assert!(structuring_hit(&c, &w("c", 950, "0x1", 20), &h, limit).is_some(), "3 in band");
        assert!(structuring_hit(&c, &w("c", 899, "0x1", 20), &h, limit).is_none(), "current below the band");
        assert!(structuring_hit(&c, &w("c", 1000, "0x1", 20), &h, limit).is_none(), "at the limit is not under it");
        assert!(structuring_hit(&c, &w("c", 950, "0x1", 20), &h[..1], limit).is_none(), "only 2");
    }

    #[test]
    fn u14_fan_out_counts_distinct_new_destinations() {
        let c = AmlConfig { fan_out_destinations: 3, ..Default::default() };
        let h = vec![w("a", 1, "0x1", 0), w("b", 1, "0x2", 1), w("b2", 1, "0x2", 2)];
        assert!(fan_out_hit(&c, &w("c", 1, "0x3", 3), &h).is_some());
        assert!(fan_out_hit(&c, &w("c", 1, "0x2", 3), &h).is_none(), "known destination adds nothing");
        assert!(fan_out_hit(&c, &w("c", 1, "0x3", 3), &h[..1]).is_none(), "only 2 distinct");
    }
}
