//! Wallet tiers and the online half of cold storage (K13, K14, C1, M10).
//!
//! Per configured asset (`[[wallet_tiers]]`) the hot wallet has a cap, a floor and a target
//! (`kinko_core::tiers`). Every pipeline cycle [`check`] reads the hot wallet's balance from the node and from
//! the ledger, and
//! - above the cap writes an automatic sweep hot → cold: a `custodian_transfer` withdrawals row, already
//!   `approved`, which the same cycle signs and broadcasts. It needs no cold key and no operator: the signer
//!   signs it without approvals only because the destination is in the signer's OWN `[signer] cold_wallets`
//!   list (a compromised server cannot add an address there);
//! - below the floor opens a `cold_refill` operator request (process signing, subject = the refill's Intent).
//!   Approved and executed by a signing operator ([`execute_cold_refill`]), it becomes a cold → hot
//!   `custodian_transfer` row. The pipeline reserves the cold wallet's nonce and fee plan and parks the row in
//!   `awaiting_offline_signature` ([`reserve_offline`]); it never signs a cold row. `kinko cold export` writes
//!   the unsigned bundle, the air-gapped `kinko-offline sign` signs it, `kinko cold import` verifies it and
//!   moves the row to `signed`; the pipeline broadcasts, confirms and settles it as usual.
//!
//! A cold wallet is a `wallets` row with tier `cold` and the offline key's id; kinko holds no key for it.

use kinko_chain::evm::FeeEstimate;
use kinko_chain::evm::address::{parse_address, to_lower_hex};
use kinko_chain::evm::rpc::{EvmRpc, NonceAt};
use kinko_core::intent::Intent;
use kinko_core::ledger::{AccountKind, AccountRef};
use kinko_core::operators::{Process, SYSTEM_EXECUTOR};
use kinko_core::policy::PolicyClass;
use kinko_core::tiers::{TierAction, TierConfig, decide};
use kinko_core::withdrawal::{CUSTODIAN_CUSTOMER_ID, CUSTODIAN_TRANSFER_REASON};
use kinko_core::{Amount, AssetCode, ChainId};
use kinko_store::Store;
use kinko_store::cold::COLD_REFILL_KIND;
use kinko_store::ops_requests::{NewOpsRequest, insert_ops_request_tx};
use kinko_store::pipeline::FeePlan;
use kinko_store::withdrawals::{CustodianTransferOutcome, NewCustodianTransfer, WithdrawalRow};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::config::ConfigError;
use crate::pipeline::{PipelineError, PipelineSettings};

/// The tier of a cold wallet's `wallets` row.
pub const COLD_TIER: &str = "cold";
/// The id prefix of an automatic sweep's withdrawals row (its intent id).
pub const SWEEP_ID_PREFIX: &str = "tsw_";
/// After operators reject a refill (or its execution fails), kinko waits this long before asking again.
pub const REFILL_RETRY_AFTER_MS: i64 = 60 * 60 * 1000;
/// The terminal recorded for requests kinko opens itself.
pub const SYSTEM_TERMINAL: &str = "kinko";

/// `[[wallet_tiers]]`: one asset's hot-wallet limits and its cold wallet (K13, C1). Amounts are base units
/// (decimal strings). Default: none, so nothing is swept (the dev quick start has no cold wallet).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WalletTierConfig {
    /// The asset (today the chain's native coin, `ETH`).
    pub asset: String,
    /// Above this the hot wallet sweeps down to `hot_target` automatically: the most a hot-key theft loses.
    pub hot_cap: Amount,
    /// Below this kinko opens a `cold_refill` request up to `hot_target`.
    pub hot_floor: Amount,
    pub hot_target: Amount,
    /// The cold wallet's address (its key was generated offline by `kinko-offline keygen`).
    pub cold_address: String,
    /// The offline key's id (the `wallets` row's `key_id`; named in every exported bundle).
    pub cold_key_id: String,
    /// Approvals a refill needs (cold movements always need approval, at least the cold class's minimum).
    #[serde(default = "default_refill_approvals")]
    pub refill_approvals: u8,
}

fn default_refill_approvals() -> u8 {
    PolicyClass::Cold.quorum_min()
}

/// One validated tier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tier {
    pub asset: AssetCode,
    pub limits: TierConfig,
    /// Lower-case 0x-hex.
    pub cold_wallet: String,
    pub cold_key_id: String,
    pub refill_approvals: u8,
}

fn invalid(i: usize, field: &str, reason: impl std::fmt::Display) -> ConfigError {
    ConfigError::Invalid { field: "wallet_tiers", reason: format!("wallet_tiers[{i}].{field}: {reason}") }
}

/// Validates `[[wallet_tiers]]`: amounts ordered (`hot_floor < hot_target <= hot_cap`), a well-formed cold
/// address that is not the hot wallet's, one tier per asset, the native asset only, and enough approvals.
pub fn tiers_from_config(configs: &[WalletTierConfig]) -> Result<Vec<Tier>, ConfigError> {
    let mut out: Vec<Tier> = Vec::with_capacity(configs.len());
    for (i, c) in configs.iter().enumerate() {
        let asset: AssetCode = c.asset.parse().map_err(|e| invalid(i, "asset", e))?;
        if asset.as_str() != "ETH" {
            return Err(invalid(i, "asset", "only the chain's native coin (ETH) has tiers so far"));
        }
        if out.iter().any(|t| t.asset == asset) {
            return Err(invalid(i, "asset", "has a tier already"));
        }
        let limits =
            TierConfig::new(c.hot_cap, c.hot_floor, c.hot_target).map_err(|e| invalid(i, e.field, e.reason))?;
        let cold = parse_address(&c.cold_address).map_err(|e| invalid(i, "cold_address", e))?;
        if c.cold_key_id.is_empty() || c.cold_key_id.len() > 64 {
            return Err(invalid(i, "cold_key_id", "must be 1 to 64 characters"));
        }
        if c.refill_approvals < PolicyClass::Cold.quorum_min() {
            return Err(invalid(
                i,
                "refill_approvals",
                format!("must be at least {} (the cold class's minimum)", PolicyClass::Cold.quorum_min()),
            ));
        }
        out.push(Tier {
            asset,
            limits,
            cold_wallet: to_lower_hex(&cold),
            cold_key_id: c.cold_key_id.clone(),
            refill_approvals: c.refill_approvals,
        });
    }
    Ok(out)
}

/// What one tier check did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TierOutcome {
    Nothing,
    /// An `approved` sweep row (its id).
    Swept {
        withdrawal_id: String,
        amount: Amount,
    },
    /// A `cold_refill` request opened (its id).
    RefillRequested {
        request_id: String,
        amount: Amount,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum TierError {
    #[error("store: {0}")]
    Store(#[from] kinko_store::StoreError),
    #[error("node: {0}")]
    Rpc(#[from] kinko_chain::evm::rpc::RpcError),
    #[error("{0}")]
    Audit(#[from] crate::audit::AuditUnavailable),
    #[error("cold wallet {address}: {reason}")]
    ColdWallet { address: String, reason: String },
}

/// The largest fee a plain transfer can cost under the pipeline's cap (what a transfer must leave behind).
pub fn fee_reserve(max_fee_per_gas_cap_wei: u128) -> Amount {
    Amount::from_base_units(u128::from(kinko_chain::evm::NATIVE_TRANSFER_GAS).saturating_mul(max_fee_per_gas_cap_wei))
}

/// One tier check per configured asset (K13): register the cold wallet, read the hot wallet's balance on the
/// node and in the ledger, and sweep or request a refill as [`kinko_core::tiers::decide`] says. Fails closed:
/// without an audit sink nothing is written.
pub async fn check(
    store: &Store,
    read: &EvmRpc,
    settings: &PipelineSettings,
    tiers: &[Tier],
    audit: Option<&crate::audit::AuditSink>,
    now_ms: i64,
) -> Result<Vec<TierOutcome>, TierError> {
    let mut out = Vec::with_capacity(tiers.len());
    for tier in tiers {
        out.push(check_one(store, read, settings, tier, audit, now_ms).await?);
    }
    Ok(out)
}

async fn check_one(
    store: &Store,
    read: &EvmRpc,
    s: &PipelineSettings,
    tier: &Tier,
    audit: Option<&crate::audit::AuditSink>,
    now_ms: i64,
) -> Result<TierOutcome, TierError> {
    let audit = audit.ok_or_else(|| {
        crate::audit::AuditUnavailable("the pipeline has no audit sink (Pipeline::with_audit)".into())
    })?;
    // The cold wallet is a `wallets` row (tier cold, the offline key's id): custodian transfers may pay into
    // it, and its nonce is reserved like the hot wallet's. Idempotent; refused if the address is anything else.
    store
        .register_custodian_wallet(&tier.cold_wallet, &s.chain, COLD_TIER, &tier.cold_key_id, now_ms)
        .await
        .map_err(|e| TierError::ColdWallet { address: tier.cold_wallet.clone(), reason: e.to_string() })?;
    let hot = parse_address(&s.hot_wallet)
        .map_err(|e| TierError::ColdWallet { address: s.hot_wallet.clone(), reason: format!("hot wallet: {e}") })?;
    let on_chain = read.balance(hot).await?;
    let ledger = store.balance(&AccountRef::wallet(&s.hot_wallet, &tier.asset)).await?.normal(AccountKind::Wallet);
    let ledger = u128::try_from(ledger).unwrap_or(0);
    if on_chain != ledger {
        // Deposits being swept in or a settlement in progress make them differ for a moment; the smaller one is
        // what is certainly there (reconciliation reports a lasting difference, L3).
        tracing::debug!(on_chain, ledger, wallet = %s.hot_wallet, "hot wallet: node and ledger differ; using the smaller");
    }
    let unsettled = store.unsettled_outflows(&s.hot_wallet, tier.asset.as_str()).await?;
    let spendable = Amount::from_base_units(on_chain.min(ledger).saturating_sub(unsettled.base_units()));
    let closed_since_ms = now_ms.saturating_sub(REFILL_RETRY_AFTER_MS);
    let in_flight =
        store.tier_movements_in_flight(&s.hot_wallet, &tier.cold_wallet, tier.asset.as_str(), closed_since_ms).await?;
    match decide(spendable, in_flight.sweeps, in_flight.refills, &tier.limits) {
        TierAction::None => Ok(TierOutcome::Nothing),
        TierAction::SweepToCold { amount } => sweep(store, s, tier, amount, audit, now_ms).await,
        TierAction::RequestRefill { amount } => request_refill(store, s, tier, amount, audit, now_ms).await,
    }
}

/// The Intent of a movement between the custodian's own wallets (what the pipeline rebuilds from the row).
fn transfer_intent(id: &str, s: &PipelineSettings, asset: &AssetCode, amount: Amount, from: &str, to: &str) -> Intent {
    Intent {
        id: id.to_string(),
        asset: asset.clone(),
        chain_id: ChainId(s.chain_id),
        amount,
        destination: to.to_string(),
        source_wallet: from.to_string(),
        customer_id: CUSTODIAN_CUSTOMER_ID.to_string(),
        reason: CUSTODIAN_TRANSFER_REASON.to_string(),
    }
}

async fn sweep(
    store: &Store,
    s: &PipelineSettings,
    tier: &Tier,
    amount: Amount,
    audit: &crate::audit::AuditSink,
    now_ms: i64,
) -> Result<TierOutcome, TierError> {
    let id = format!("{SWEEP_ID_PREFIX}{}", uuid::Uuid::now_v7().simple());
    let intent = transfer_intent(&id, s, &tier.asset, amount, &s.hot_wallet, &tier.cold_wallet);
    let intent_hash = intent.hash();
    let object = format!("withdrawal:{id} tier sweep {} {amount} hot → cold {}", tier.asset, tier.cold_wallet);
    audit.system("tiers", "system.tier_sweep", &object, intent_hash, "attempt").await?;
    let new = NewCustodianTransfer {
        id: id.clone(),
        asset: tier.asset.clone(),
        chain: s.chain.clone(),
        amount,
        destination: tier.cold_wallet.clone(),
        source_wallet: s.hot_wallet.clone(),
        intent_hash: hex::encode(intent_hash),
    };
    // No policy decision: the destination is the custodian's own cold wallet, and the amount is fixed by the
    // configured cap; the signer's own cold list is what lets it sign.
    let ok = |_: &[kinko_core::policy::PastWithdrawal]| Ok::<(), ()>(());
    let outcome = store.create_custodian_transfer(&new, fee_reserve(s.max_fee_per_gas_cap_wei), 0, ok, now_ms).await?;
    match outcome {
        CustodianTransferOutcome::Created(_) | CustodianTransferOutcome::Existing(_) => {
            tracing::info!(withdrawal = %id, %amount, cold = %tier.cold_wallet, "hot wallet over its cap: sweeping to cold");
            metrics::counter!("kinko_tier_sweeps_total").increment(1);
            Ok(TierOutcome::Swept { withdrawal_id: id, amount })
        }
        CustodianTransferOutcome::Insufficient { uncommitted, needed } => {
            tracing::warn!(%uncommitted, %needed, "tier sweep skipped: the hot wallet's uncommitted balance is short");
            Ok(TierOutcome::Nothing)
        }
        CustodianTransferOutcome::Refused(()) => Ok(TierOutcome::Nothing),
    }
}

/// The params of a `cold_refill` request: what an approver's terminal needs to recompute the Intent hash
/// (the same names as a custodian transfer's), plus the cold key's id.
pub fn refill_params(s: &PipelineSettings, tier: &Tier, amount: Amount) -> serde_json::Value {
    json!({
        "asset": tier.asset.as_str(),
        "amount": amount.to_string(),
        "destination": s.hot_wallet,
        "customer": CUSTODIAN_CUSTOMER_ID,
        "chain_id": s.chain_id,
        "source_wallet": tier.cold_wallet,
        "reason": CUSTODIAN_TRANSFER_REASON,
        "cold_key_id": tier.cold_key_id,
    })
}

async fn request_refill(
    store: &Store,
    s: &PipelineSettings,
    tier: &Tier,
    amount: Amount,
    audit: &crate::audit::AuditSink,
    now_ms: i64,
) -> Result<TierOutcome, TierError> {
    let id = format!("r_{}", uuid::Uuid::now_v7().simple());
    let intent = transfer_intent(&id, s, &tier.asset, amount, &tier.cold_wallet, &s.hot_wallet);
    let params = refill_params(s, tier, amount);
    let object = format!("ops_request:{id} cold_refill {} {amount} cold {} → hot", tier.asset, tier.cold_wallet);
    audit.system("tiers", "system.cold_refill_request", &object, intent.hash(), "attempt").await?;
    let new = NewOpsRequest {
        id: id.clone(),
        process: Process::Signing.as_str().into(),
        kind: COLD_REFILL_KIND.into(),
        params_json: params.to_string(),
        intent_hash: hex::encode(intent.hash()),
        requester: SYSTEM_EXECUTOR.into(),
        requester_terminal: SYSTEM_TERMINAL.into(),
        required: i64::from(tier.refill_approvals),
        reasons_json: json!([{ "rule": "hot_floor", "decision": "needs_approval" }]).to_string(),
        now_ms,
    };
    let mut tx = store.begin_write().await?;
    insert_ops_request_tx(&mut tx, &new).await?;
    tx.commit().await.map_err(kinko_store::StoreError::from)?;
    tracing::warn!(request = %id, %amount, "hot wallet below its floor: cold refill requested (needs approvals and an offline signature)");
    Ok(TierOutcome::RefillRequested { request_id: id, amount })
}

/// Executes an approved `cold_refill` request (K14): rebuilds the refill's Intent from the params, checks it
/// is what was approved, that the source is a registered cold wallet and the destination the hot wallet, and
/// writes one `approved` cold → hot `custodian_transfer` row (id = the request id; executing twice writes
/// one). The pipeline parks it in `awaiting_offline_signature`.
pub async fn execute_cold_refill(
    state: &crate::app::AppState,
    request_id: &str,
    params: &serde_json::Value,
    now_ms: i64,
) -> Result<serde_json::Value, crate::api::Problem> {
    use crate::api::Problem;
    use crate::api::problem::FieldError;
    let text = |f: &'static str| {
        params
            .get(f)
            .and_then(|v| v.as_str())
            .ok_or_else(|| Problem::validation(vec![FieldError::new(format!("params.{f}"), "is required")]))
    };
    let asset = crate::api::assets::lookup_asset(&state.config, "params.asset", text("asset")?)
        .map_err(|e| Problem::validation(vec![e]))?;
    let amount = Amount::parse_positive(text("amount")?)
        .map_err(|e| Problem::validation(vec![FieldError::new("params.amount", e.to_string())]))?;
    let cold = text("source_wallet")?.to_string();
    let destination = text("destination")?.to_string();
    if destination != state.hot_wallet {
        return Err(Problem::validation(vec![FieldError::new("params.destination", "must be the hot wallet")]));
    }
    match state.store.wallet_tier_and_key(&cold).await? {
        Some((tier, _)) if tier == COLD_TIER => {}
        _ => {
            return Err(Problem::validation(vec![FieldError::new(
                "params.source_wallet",
                "is not a registered cold wallet",
            )]));
        }
    }
    let intent = Intent {
        id: request_id.to_string(),
        asset: asset.code.clone(),
        chain_id: asset.chain_id,
        amount,
        destination: destination.clone(),
        source_wallet: cold.clone(),
        customer_id: CUSTODIAN_CUSTOMER_ID.to_string(),
        reason: CUSTODIAN_TRANSFER_REASON.to_string(),
    };
    let intent_hash = hex::encode(intent.hash());
    let request = state.store.ops_request(request_id).await?.ok_or_else(Problem::not_found)?;
    if request.intent_hash != intent_hash {
        return Err(Problem::new(
            axum::http::StatusCode::CONFLICT,
            "intent-mismatch",
            "the refill is not what was approved",
        )
        .detail(format!("request {request_id}: its params no longer hash to the approved intent hash")));
    }
    let new = NewCustodianTransfer {
        id: request_id.to_string(),
        asset: asset.code.clone(),
        chain: asset.chain.to_string(),
        amount,
        destination,
        source_wallet: cold,
        intent_hash,
    };
    let ok = |_: &[kinko_core::policy::PastWithdrawal]| Ok::<(), ()>(());
    let reserve = fee_reserve(state.config.ethereum.max_fee_per_gas_cap_wei);
    match state.store.create_custodian_transfer(&new, reserve, 0, ok, now_ms).await? {
        CustodianTransferOutcome::Created(row) | CustodianTransferOutcome::Existing(row) => Ok(json!({
            "withdrawal": row.id,
            "next": "the pipeline reserves the cold wallet's nonce; then `kinko cold export`, offline signing, `kinko cold import`",
        })),
        CustodianTransferOutcome::Insufficient { uncommitted, needed } => Err(Problem::field(
            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            "insufficient-balance",
            "the cold wallet cannot cover the refill",
            "params.amount",
            &format!("the cold wallet has {uncommitted} not owed to unsettled transfers; the refill needs {needed}"),
        )),
        CustodianTransferOutcome::Refused(()) => Err(Problem::internal("refill refused")),
    }
}

/// The pipeline's `approved` step for a row whose source is a cold wallet (K14): reserve the cold wallet's
/// nonce and a fee plan and park the row in `awaiting_offline_signature`. `None` when the source is not a
/// cold wallet (the pipeline signs it as usual); `Some(moved)` otherwise. Never signs.
///
/// The fee plan's max fee is the configured cap: an offline signature can take days, and EIP-1559 charges
/// only the base fee plus the tip, so a generous ceiling keeps the signed transaction includable.
pub async fn reserve_offline(
    store: &Store,
    read: &EvmRpc,
    s: &PipelineSettings,
    w: &WithdrawalRow,
    now_ms: i64,
) -> Result<Option<bool>, PipelineError> {
    if !is_cold_wallet(store, &s.hot_wallet, &w.source_wallet).await? {
        return Ok(None);
    }
    let wallet = parse_address(&w.source_wallet)
        .map_err(|e| PipelineError::Inconsistent { id: w.id.clone(), reason: format!("source wallet {e}") })?;
    let chain_nonce = read.nonce(wallet, NonceAt::Latest).await?;
    let fees: FeeEstimate = read.fee_estimate().await?;
    let max_fee = s.max_fee_per_gas_cap_wei.max(1);
    let plan = FeePlan {
        max_fee_per_gas: max_fee,
        max_priority_fee_per_gas: fees.max_priority_fee_per_gas.min(max_fee),
        gas_limit: kinko_chain::evm::NATIVE_TRANSFER_GAS,
    };
    let reserved = store.reserve_nonce_offline(&w.id, &w.source_wallet, chain_nonce, plan, now_ms).await?;
    if let Some(nonce) = reserved {
        tracing::info!(withdrawal = %w.id, nonce, "cold row reserved; waiting for its offline signature (`kinko cold export`)");
    }
    Ok(Some(reserved.is_some()))
}

/// Whether `address` is one of the custodian's cold wallets (never the hot wallet).
pub async fn is_cold_wallet(store: &Store, hot_wallet: &str, address: &str) -> Result<bool, kinko_store::StoreError> {
    if address == hot_wallet {
        return Ok(false);
    }
    Ok(matches!(store.wallet_tier_and_key(address).await?, Some((tier, _)) if tier == COLD_TIER))
}
