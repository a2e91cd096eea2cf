//! The server side of the withdrawal policy (K11, K20, O1, M10): which policy applies to a withdrawal, what
//! happens when a customer withdrawal reaches its operator quorum, when a policy change is approved, and
//! when operators instruct a transfer to one of the custodian's own addresses. The ops API calls the last
//! three; the customer API calls [`policy_for`].
//!
//! The server's policy is advisory and stricter; the signer's own quorum (`[[signer.quorum]]`) is binding
//! and verifies every approval itself, so nothing here can make the signer sign with too few approvals.
//!
//! Policies name a wallet by its signing key id: the hot wallet is [`HOT_KEY_ID`] (`eth-hot-1`), the same
//! name the signer's quorum configuration uses.

use axum::http::StatusCode;
use kinko_core::AssetCode;
use kinko_core::policy::{Decision, Policy, PolicyConfig, Reason};
use kinko_core::withdrawal::WithdrawalStatus;
use kinko_signer::Approval;
use kinko_store::policies::{CloseOutcome, QuorumOutcome};
use serde_json::json;

use crate::AppState;
use crate::api::Problem;
use crate::api::problem::FieldError;
use crate::app::HOT_KEY_ID;

/// The ops request kind of a customer withdrawal's approval request.
pub const CUSTOMER_WITHDRAWAL_KIND: &str = "customer_withdrawal";

/// The policy in force for (wallet, asset): the latest approved version in the database, else the
/// configuration file's. None at all refuses (fail closed), naming wallet and asset. A stored version that
/// no longer parses or validates also refuses: silently falling back to the file would undo an approved
/// change.
pub async fn policy_for(state: &AppState, wallet: &str, asset: &AssetCode) -> Result<Policy, Problem> {
    if let Some(v) = state.store.latest_policy_version(wallet, asset.as_str()).await? {
        let config: PolicyConfig = serde_json::from_str(&v.config_json).map_err(|e| {
            Problem::internal(format!("policy_versions {wallet}/{asset} v{} does not parse: {e}", v.version))
        })?;
        return config.validate().map_err(|e| {
            Problem::internal(format!("policy_versions {wallet}/{asset} v{} is invalid: {e}", v.version))
        });
    }
    let Some(config) = state.config.policies.iter().find(|p| p.wallet == wallet && &p.asset == asset) else {
        return Err(Problem::field(
            StatusCode::UNPROCESSABLE_ENTITY,
            "no-policy",
            "no withdrawal policy",
            "asset",
            &format!("no withdrawal policy for wallet {wallet} and asset {asset}: withdrawals are refused"),
        ));
    };
    // Validated at load (`Config::validate`); validating again keeps an unvalidated config from deciding.
    config.clone().validate().map_err(|e| Problem::internal(format!("policies {wallet}/{asset}: {e}")))
}

/// The request field a reason is about, its rule name and a sentence for the problem response.
pub fn describe(reason: &Reason) -> FieldError {
    let (field, text) = match reason {
        Reason::WrongPolicy { wallet, asset } => {
            ("asset", format!("policy mismatch for wallet {wallet} asset {asset}"))
        }
        Reason::ZeroAmount => ("amount", "zero amount".into()),
        Reason::HistoryTooLong { len, max } => ("amount", format!("history of {len} exceeds {max}")),
        Reason::HistoryTruncated { len, .. } => ("amount", format!("history_truncated: {len} recent withdrawals")),
        Reason::ClassNeedsApproval { class } => ("amount", format!("class: {class} always needs approval")),
        Reason::PerTxLimit { amount, max } => ("amount", format!("per_tx_limit: {amount} is above the limit {max}")),
        Reason::RollingLimit { window_ms, spent, amount, max } => (
            "amount",
            format!("rolling_limit: {spent} already withdrawn in {window_ms} ms plus {amount} is above {max}"),
        ),
        Reason::Velocity { window_ms, count, count_max } => {
            ("amount", format!("velocity: {count} withdrawals in {window_ms} ms is above {count_max}"))
        }
        Reason::DestinationNotWhitelisted { .. } => ("destination", "whitelist: destination is not listed".into()),
        Reason::DestinationCoolingOff { usable_at_ms, .. } => {
            ("destination", format!("whitelist: destination is cooling off until {usable_at_ms} ms"))
        }
        Reason::OutsideBusinessHours { hour_utc, weekday } => {
            ("withdrawal", format!("business_hours: {weekday:?} {hour_utc}:00 UTC is outside business hours"))
        }
        Reason::TerminalNotAllowed { ip } => ("terminal", format!("ip_allowlist: terminal {ip} is not allowed")),
        Reason::Anomaly { amount, median, multiplier, .. } => {
            ("amount", format!("anomaly: {amount} is above {multiplier} x the median {median}"))
        }
        Reason::AnomalyNoBaseline { samples, samples_min } => {
            ("amount", format!("anomaly: {samples} past withdrawals, {samples_min} needed for a baseline"))
        }
    };
    FieldError::new(field, text)
}

/// 422 naming every rule that denied.
pub fn denied(decision: &Decision) -> Problem {
    let reasons = match decision {
        Decision::Deny { reasons } => reasons.as_slice(),
        _ => &[],
    };
    let errors: Vec<FieldError> = reasons.iter().map(describe).collect();
    let rules: Vec<String> =
        errors.iter().map(|e| e.reason.split(':').next().unwrap_or_default().to_string()).collect();
    Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "policy-denied", "withdrawal refused by policy")
        .detail(format!("refused by: {}", rules.join(", ")))
        .errors(errors)
}

/// A `customer_withdrawal` request reached its quorum: `pending_approval → approved`, idempotently.
///
/// The ops API has verified each approval's signature; this re-checks only that the number of distinct
/// approvers reaches the request's `required`, so a caller bug cannot release a withdrawal early. The
/// signer verifies the signatures again, against its own registry and quorum, before it signs.
pub async fn on_quorum(
    state: &AppState,
    withdrawal_id: &str,
    approvals: &[Approval],
    now_ms: i64,
) -> Result<(), Problem> {
    let required = state.store.request_required(withdrawal_id).await?.ok_or_else(Problem::not_found)?;
    let mut approvers: Vec<&str> = approvals.iter().map(|a| a.operator_id.as_str()).collect();
    approvers.sort_unstable();
    approvers.dedup();
    if approvers.len() < usize::from(required) {
        return Err(Problem::new(StatusCode::CONFLICT, "quorum-not-met", "quorum not met").detail(format!(
            "{} distinct approvals of {required} required for withdrawal {withdrawal_id}",
            approvers.len()
        )));
    }
    match state.store.approve_pending_withdrawal(withdrawal_id, now_ms).await? {
        None => Err(Problem::not_found()),
        Some(QuorumOutcome::Approved) => {
            tracing::info!(withdrawal = %withdrawal_id, approvers = ?approvers, "withdrawal approved by quorum");
            Ok(())
        }
        Some(QuorumOutcome::AlreadyApproved(_)) => Ok(()),
        Some(QuorumOutcome::Closed(status)) => {
            Err(Problem::new(StatusCode::CONFLICT, "withdrawal-closed", "withdrawal is no longer pending")
                .detail(format!("withdrawal {withdrawal_id} is {status}; an approval cannot revive it")))
        }
    }
}

/// A `customer_withdrawal` request was rejected by an operator: `pending_approval → failed` with the hold
/// released, idempotently (a withdrawal already failed or cancelled is fine). The ops API records the
/// rejection itself; this only closes the withdrawal, so the customer's funds do not stay held forever.
pub async fn on_rejected(state: &AppState, withdrawal_id: &str, now_ms: i64) -> Result<(), Problem> {
    let error = "rejected by an operator";
    match state
        .store
        .close_pending_withdrawal(withdrawal_id, None, WithdrawalStatus::Failed, error, None, now_ms)
        .await?
    {
        None => Err(Problem::not_found()),
        Some(CloseOutcome::Closed)
        | Some(CloseOutcome::NotPending(WithdrawalStatus::Failed | WithdrawalStatus::Cancelled)) => Ok(()),
        Some(CloseOutcome::NotPending(status)) => {
            Err(Problem::new(StatusCode::CONFLICT, "withdrawal-not-pending", "withdrawal is no longer pending")
                .detail(format!("withdrawal {withdrawal_id} is {status}; its quorum was already reached")))
        }
    }
}

/// A `policy_change` request was approved: validate `params.policy` as a PolicyConfig and store it as the
/// (wallet, asset)'s next policy version. Idempotent per request id. Returns {wallet, asset, version, at_ms}.
pub async fn apply_policy_change(
    state: &AppState,
    request_id: &str,
    params: &serde_json::Value,
    now_ms: i64,
) -> Result<serde_json::Value, Problem> {
    let bad = |field: &str, reason: &str| {
        Problem::field(StatusCode::UNPROCESSABLE_ENTITY, "invalid-policy", "invalid policy", field, reason)
    };
    let raw = params.get("policy").ok_or_else(|| bad("policy", "is required"))?;
    let config: PolicyConfig = serde_json::from_value(raw.clone()).map_err(|e| bad("policy", &e.to_string()))?;
    // The error text starts with the field path inside the policy (e.g. "quorum_bands[0].approvals: …").
    let policy = config.validate().map_err(|e| bad("policy", &e.to_string()))?;
    let config = policy.config();
    if config.wallet != HOT_KEY_ID {
        return Err(bad("policy.wallet", &format!("must name a wallet this server signs from ({HOT_KEY_ID})")));
    }
    crate::api::assets::lookup_asset(&state.config, "policy.asset", config.asset.as_str())
        .map_err(|e| bad(&e.field, &e.reason))?;
    let json = serde_json::to_string(config).map_err(Problem::internal)?;
    let v = state.store.insert_policy_version(&config.wallet, config.asset.as_str(), &json, request_id, now_ms).await?;
    tracing::info!(wallet = %v.wallet, asset = %v.asset, version = v.version, request = %request_id, "policy changed");
    Ok(json!({"wallet": v.wallet, "asset": v.asset, "version": v.version, "at_ms": v.at_ms}))
}

/// A `custodian_transfer` request was approved: move funds from the hot wallet to one of the custodian's
/// OWN addresses (M10).
///
/// The parameters are checked in full — the destination must be a registered custodian wallet (`wallets`),
/// not the hot wallet itself and never a customer deposit address — and then the execution is refused with
/// 501: a pipeline row for a transfer without a customer needs a withdrawals row that does not reference a
/// customer, wallet → wallet settlement postings and an intent whose hash is the ops request's, none of which
/// exists yet. Refusing keeps an approved request from half-executing.
pub async fn execute_custodian_transfer(
    state: &AppState,
    request_id: &str,
    params: &serde_json::Value,
    approvals: &[Approval],
    executor: &str,
    now_ms: i64,
) -> Result<serde_json::Value, Problem> {
    let _ = (approvals, now_ms);
    let mut errors = Vec::new();
    let text = |name: &str| params.get(name).and_then(|v| v.as_str());
    match text("asset") {
        Some(a) => {
            if let Err(e) = crate::api::assets::lookup_asset(&state.config, "asset", a) {
                errors.push(e);
            }
        }
        None => errors.push(FieldError::new("asset", "is required")),
    }
    match text("amount").map(kinko_core::Amount::parse_positive) {
        Some(Ok(_)) => {}
        Some(Err(e)) => errors.push(FieldError::new("amount", e.to_string())),
        None => errors.push(FieldError::new("amount", "is required (a decimal string of base units)")),
    }
    match text("destination").map(kinko_chain::evm::address::parse_address) {
        Some(Ok(a)) => {
            let dest = kinko_chain::evm::address::to_lower_hex(&a);
            if dest == state.hot_wallet {
                errors.push(FieldError::new("destination", "is the hot wallet itself"));
            } else if state.store.is_deposit_address(&dest).await? {
                errors.push(FieldError::new("destination", "is a customer deposit address, not the custodian's own"));
            } else if state.store.custodian_wallet_tier(&dest).await?.is_none() {
                errors.push(FieldError::new("destination", "is not a registered custodian wallet"));
            }
        }
        Some(Err(e)) => errors.push(FieldError::new("destination", e.to_string())),
        None => errors.push(FieldError::new("destination", "is required")),
    }
    if !errors.is_empty() {
        return Err(Problem::validation(errors));
    }
    tracing::warn!(request = %request_id, executor = %executor, "custodian transfer approved but not executable yet");
    Err(Problem::new(StatusCode::NOT_IMPLEMENTED, "not-implemented", "custodian transfers cannot be executed yet")
        .detail("the parameters are valid; executing transfers between the custodian's own wallets is not built yet"))
}
