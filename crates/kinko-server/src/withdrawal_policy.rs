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

use std::net::IpAddr;

use axum::http::StatusCode;
use kinko_core::intent::Intent;
use kinko_core::policy::{self, Decision, HISTORY_LEN_MAX, PastWithdrawal, Policy, PolicyConfig, Reason};
use kinko_core::withdrawal::{CUSTODIAN_CUSTOMER_ID, CUSTODIAN_TRANSFER_REASON, WithdrawalStatus};
use kinko_core::{Amount, AssetCode, ChainId};
use kinko_signer::Approval;
use kinko_store::policies::{CloseOutcome, QuorumOutcome};
use kinko_store::withdrawals::{CustodianTransferOutcome, NewCustodianTransfer};
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

/// The ops request kind of an operator-instructed transfer between the custodian's own wallets (M10).
pub const CUSTODIAN_TRANSFER_KIND: &str = "custodian_transfer";

/// A custodian transfer's parameters, checked: from the hot wallet to another of the custodian's own
/// wallets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CustodianTransfer {
    pub asset: AssetCode,
    pub chain: &'static str,
    pub chain_id: ChainId,
    pub amount: Amount,
    /// Lower-case 0x-hex.
    pub destination: String,
}

impl CustodianTransfer {
    /// The intent the approvers sign and the signer checks: id = the ops request id, source = the hot
    /// wallet, customer = the reserved custodian row, reason fixed. The pipeline rebuilds the same intent
    /// from the withdrawals row (`WithdrawalKind::CustodianTransfer`).
    pub fn intent(&self, request_id: &str, hot_wallet: &str) -> Intent {
        Intent {
            id: request_id.to_string(),
            asset: self.asset.clone(),
            chain_id: self.chain_id,
            amount: self.amount,
            destination: self.destination.clone(),
            source_wallet: hot_wallet.to_string(),
            customer_id: CUSTODIAN_CUSTOMER_ID.to_string(),
            reason: CUSTODIAN_TRANSFER_REASON.to_string(),
        }
    }

    /// The stored params: what the requester gave, normalised, plus what an approver's terminal needs to
    /// recompute the intent hash (`kinko ops approve` reads the same names as for a customer withdrawal).
    pub fn params(&self, hot_wallet: &str) -> serde_json::Value {
        json!({
            "asset": self.asset.as_str(),
            "amount": self.amount.to_string(),
            "destination": self.destination,
            "customer": CUSTODIAN_CUSTOMER_ID,
            "chain_id": self.chain_id.0,
            "source_wallet": hot_wallet,
            "reason": CUSTODIAN_TRANSFER_REASON,
        })
    }
}

/// Checks a `custodian_transfer` request's params, naming each bad field (`params.asset`, `params.amount`,
/// `params.destination`): a supported asset, a positive amount of base units, and a destination that is a
/// registered custodian wallet (`wallets`), not the hot wallet itself and never a customer deposit address.
/// Fields the server adds (`source_wallet`, `chain_id`, `customer`, `reason`), when present, must be what the
/// server would set.
pub async fn check_custodian_transfer(
    state: &AppState,
    params: &serde_json::Value,
) -> Result<CustodianTransfer, Problem> {
    let mut errors = Vec::new();
    let text = |name: &str| params.get(name).and_then(|v| v.as_str());
    let asset = match text("asset") {
        Some(a) => match crate::api::assets::lookup_asset(&state.config, "params.asset", a) {
            Ok(a) => Some(a),
            Err(e) => {
                errors.push(e);
                None
            }
        },
        None => {
            errors.push(FieldError::new("params.asset", "is required"));
            None
        }
    };
    let amount = match text("amount").map(Amount::parse_positive) {
        Some(Ok(a)) => Some(a),
        Some(Err(e)) => {
            errors.push(FieldError::new("params.amount", e.to_string()));
            None
        }
        None => {
            errors.push(FieldError::new("params.amount", "is required (a decimal string of base units)"));
            None
        }
    };
    let destination = match text("destination").map(kinko_chain::evm::address::parse_address) {
        Some(Ok(a)) => {
            let dest = kinko_chain::evm::address::to_lower_hex(&a);
            if dest == state.hot_wallet {
                errors.push(FieldError::new("params.destination", "is the hot wallet itself"));
            } else if state.store.is_deposit_address(&dest).await? {
                errors.push(FieldError::new(
                    "params.destination",
                    "is a customer deposit address, not one of the custodian's own wallets",
                ));
            } else if state.store.custodian_wallet_tier(&dest).await?.is_none() {
                errors.push(FieldError::new("params.destination", "is not a registered custodian wallet"));
            }
            Some(dest)
        }
        Some(Err(e)) => {
            errors.push(FieldError::new("params.destination", e.to_string()));
            None
        }
        None => {
            errors.push(FieldError::new("params.destination", "is required"));
            None
        }
    };
    // The server sets these; a requester (or a stored row) naming others is refused rather than ignored.
    let expected_chain_id = asset.as_ref().map(|a| a.chain_id.0);
    if let Some(v) = params.get("chain_id")
        && (v.as_u64().is_none() || v.as_u64() != expected_chain_id)
    {
        errors.push(FieldError::new("params.chain_id", "must be the asset's chain id (or left out)"));
    }
    for (field, expected) in [
        ("source_wallet", state.hot_wallet.as_str()),
        ("customer", CUSTODIAN_CUSTOMER_ID),
        ("reason", CUSTODIAN_TRANSFER_REASON),
    ] {
        if params.get(field).is_some_and(|v| v.as_str() != Some(expected)) {
            errors.push(FieldError::new(format!("params.{field}"), format!("must be {expected:?} (or left out)")));
        }
    }
    match (asset, amount, destination) {
        (Some(a), Some(amount), Some(destination)) if errors.is_empty() => {
            Ok(CustodianTransfer { asset: a.code, chain: a.chain, chain_id: a.chain_id, amount, destination })
        }
        _ => Err(Problem::validation(errors)),
    }
}

/// The terminal allowlist's view of an operator's terminal. A terminal that is no IP address cannot be
/// checked against an allowlist: with one configured, it is refused (fail closed).
fn terminal_ip(policy: &Policy, terminal: &str) -> Result<Option<IpAddr>, Problem> {
    match terminal.parse::<IpAddr>() {
        Ok(ip) => Ok(Some(ip)),
        Err(_) if policy.config().ip_allowlist.is_some() => Err(Problem::field(
            StatusCode::UNPROCESSABLE_ENTITY,
            "policy-denied",
            "transfer refused by policy",
            "terminal",
            &format!("ip_allowlist: terminal {terminal:?} is not an IP address"),
        )),
        Err(_) => Ok(None),
    }
}

/// The approvals a custodian transfer needs: Table A-1's signing process always needs its signing manager
/// (at least [`crate::api::ops_requests::OPS_QUORUM`]), and the hot wallet's policy can demand more — its
/// class minimum, the amount's quorum band and any rule that asked.
fn transfer_quorum(policy: &Policy, decision: &Decision, amount: Amount) -> u8 {
    let asked = match decision {
        Decision::NeedsApproval { quorum, .. } => *quorum,
        _ => 0,
    };
    crate::api::ops_requests::OPS_QUORUM
        .max(policy.config().class.quorum_min())
        .max(policy.band_quorum(amount))
        .max(asked)
}

/// Opens a `custodian_transfer` request (M10): checks the params, decides the hot wallet's policy with the
/// requester's terminal (deny → 422 naming the rules), and returns the stored params (normalised, see
/// [`CustodianTransfer::params`]), the approval subject's intent hash — the transfer's `Intent` hash, so the
/// approvals collected on the request are exactly what the signer verifies — and the quorum required.
pub async fn custodian_transfer_request(
    state: &AppState,
    request_id: &str,
    params: &serde_json::Value,
    requester_terminal: &str,
    now_ms: i64,
) -> Result<(serde_json::Value, [u8; 32], u8), Problem> {
    let t = check_custodian_transfer(state, params).await?;
    let policy = policy_for(state, HOT_KEY_ID, &t.asset).await?;
    let requester_ip = terminal_ip(&policy, requester_terminal)?;
    let history = state.store.wallet_history(&state.hot_wallet, t.asset.as_str(), HISTORY_LEN_MAX).await?;
    let decision = policy.decide(&policy::Request {
        wallet: HOT_KEY_ID,
        asset: &t.asset,
        amount: t.amount,
        destination: &t.destination,
        now_ms,
        requester_ip,
        history: &history,
    });
    if matches!(decision, Decision::Deny { .. }) {
        return Err(denied(&decision));
    }
    let required = transfer_quorum(&policy, &decision, t.amount);
    Ok((t.params(&state.hot_wallet), t.intent(request_id, &state.hot_wallet).hash(), required))
}

/// Why an execution's policy check refused.
enum Refusal {
    Denied(Decision),
    Quorum { approvers: usize, quorum: u8 },
}

/// A `custodian_transfer` request was approved and a signing operator executes it: move funds from the hot
/// wallet to one of the custodian's OWN wallets (M10).
///
/// The params are checked again and the transfer's intent rebuilt; its hash must be the request's (what the
/// approvers signed). The hot wallet's policy decides again, now with the executing operator's terminal and
/// the wallet's history at this moment: deny → 422; a quorum above the approvals collected → 409. Then one
/// withdrawals row of kind `custodian_transfer` (id = the request id, status `approved`) is written, and
/// the pipeline reserves the nonce, has the signer verify the collected approvals against its own registry
/// and `[[signer.quorum]]` and sign, broadcasts and settles it wallet → wallet. Executing again (a retry
/// after a crash before the request was marked executed) finds the row and writes nothing: one transfer.
pub async fn execute_custodian_transfer(
    state: &AppState,
    request_id: &str,
    params: &serde_json::Value,
    approvals: &[Approval],
    executor: &str,
    executor_terminal: &str,
    now_ms: i64,
) -> Result<serde_json::Value, Problem> {
    let t = check_custodian_transfer(state, params).await?;
    let intent = t.intent(request_id, &state.hot_wallet);
    let intent_hash = hex::encode(intent.hash());
    let request = state.store.ops_request(request_id).await?.ok_or_else(Problem::not_found)?;
    if request.intent_hash != intent_hash {
        // The params or the hash were edited after approval: what would be signed is not what was approved.
        return Err(Problem::new(StatusCode::CONFLICT, "intent-mismatch", "the transfer is not what was approved")
            .detail(format!("request {request_id}: its params no longer hash to the approved intent hash")));
    }
    let mut approvers: Vec<&str> = approvals.iter().map(|a| a.operator_id.as_str()).collect();
    approvers.sort_unstable();
    approvers.dedup();
    let policy = policy_for(state, HOT_KEY_ID, &t.asset).await?;
    let executor_ip = terminal_ip(&policy, executor_terminal)?;
    let new = NewCustodianTransfer {
        id: request_id.to_string(),
        asset: t.asset.clone(),
        chain: t.chain.to_string(),
        amount: t.amount,
        destination: t.destination.clone(),
        source_wallet: state.hot_wallet.clone(),
        intent_hash,
    };
    let decide = |history: &[PastWithdrawal]| {
        let decision = policy.decide(&policy::Request {
            wallet: HOT_KEY_ID,
            asset: &t.asset,
            amount: t.amount,
            destination: &t.destination,
            now_ms,
            requester_ip: executor_ip,
            history,
        });
        if matches!(decision, Decision::Deny { .. }) {
            return Err(Refusal::Denied(decision));
        }
        let quorum = transfer_quorum(&policy, &decision, t.amount);
        if approvers.len() < usize::from(quorum) {
            return Err(Refusal::Quorum { approvers: approvers.len(), quorum });
        }
        Ok(())
    };
    // The pipeline caps the fee per gas; a plain transfer's fee never exceeds its gas times that cap.
    let fee_reserve = Amount::from_base_units(
        u128::from(kinko_chain::evm::NATIVE_TRANSFER_GAS).saturating_mul(state.config.ethereum.max_fee_per_gas_cap_wei),
    );
    let outcome = state.store.create_custodian_transfer(&new, fee_reserve, HISTORY_LEN_MAX, decide, now_ms).await?;
    let row = match outcome {
        CustodianTransferOutcome::Created(row) => {
            tracing::info!(request = %request_id, executor = %executor, destination = %row.destination,
                amount = %row.amount, approvers = ?approvers, "custodian transfer executed; the pipeline pays it");
            row
        }
        CustodianTransferOutcome::Existing(row) => row,
        CustodianTransferOutcome::Refused(Refusal::Denied(decision)) => return Err(denied(&decision)),
        CustodianTransferOutcome::Refused(Refusal::Quorum { approvers, quorum }) => {
            return Err(Problem::new(StatusCode::CONFLICT, "quorum-not-met", "quorum not met").detail(format!(
                "the hot wallet's policy now asks {quorum} approvals for this transfer; {approvers} were collected"
            )));
        }
        CustodianTransferOutcome::Insufficient { uncommitted, needed } => {
            return Err(Problem::field(
                StatusCode::UNPROCESSABLE_ENTITY,
                "insufficient-balance",
                "the hot wallet cannot cover the transfer",
                "params.amount",
                &format!(
                    "the hot wallet has {uncommitted} not owed to unsettled withdrawals; the transfer needs {needed} \
                     (amount plus the largest fee)"
                ),
            ));
        }
    };
    Ok(json!({
        "withdrawal": row.id,
        "status": row.status.as_str(),
        "asset": row.asset.as_str(),
        "amount": row.amount.to_string(),
        "destination": row.destination,
        "source_wallet": row.source_wallet,
        "executed_by": executor,
    }))
}
