//! Evacuation of a compromised wallet (K19, S5), the server's side: the `evacuation` ops request (an
//! operations manager asks, `[emergency] evacuation_approvals` signing managers approve, it executes
//! automatically at quorum), the withdrawals rows its execution writes, and the order the pipeline presents
//! to the signer with each of their signing requests.
//!
//! The wallet stays frozen throughout and afterwards. The server's part opens nothing by itself: the rows
//! pass the pipeline's freeze gate because they are linked to the request, but the signer signs them only
//! after verifying the request's params and approvals against its own registry and quorum, and only for a
//! transaction paying the approved destination (`kinko_signer::evacuation`).

use axum::http::StatusCode;
use kinko_chain::evm::address::parse_address;
use kinko_chain::evm::rpc::EvmRpc;
use kinko_core::asset::AssetKind;
use kinko_core::evacuation::{EvacuationParams, evacuation_withdrawal_id};
use kinko_core::intent::Intent;
use kinko_core::withdrawal::{CUSTODIAN_CUSTOMER_ID, CUSTODIAN_TRANSFER_REASON};
use kinko_core::{Amount, AssetCode};
use kinko_signer::Approval;
use kinko_signer::evacuation::EvacuationOrder;
use kinko_store::ops_requests::OpsRequestRow;
use kinko_store::withdrawals::NewCustodianTransfer;
use kinko_store::{Store, StoreError};
use serde_json::json;

use crate::AppState;
use crate::api::problem::{FieldError, Problem};
use crate::app::{ETH_CHAIN, HOT_KEY_ID};

/// The production floor of `[emergency] evacuation_approvals`: an evacuation moves everything a wallet holds.
pub const EVACUATION_APPROVALS_PRODUCTION_MIN: u8 = kinko_signer::evacuation::EVACUATION_APPROVALS_DEFAULT;

fn field(name: &str) -> String {
    format!("params.{name}")
}

/// Checks an evacuation request's params: each bad field named. Beyond the pure rules
/// (`EvacuationParams::parse`): the wallet is the hot wallet (the one wallet kinko signs for online) and a
/// freeze covers it; the destination is a registered custodian wallet (the new cold address, registered
/// before the request), not the hot wallet and not a deposit address; every asset is supported on its chain.
pub async fn check_evacuation_params(state: &AppState, params: &serde_json::Value) -> Result<Vec<FieldError>, Problem> {
    let parsed = match EvacuationParams::parse(params) {
        Ok(p) => p,
        Err(errors) => return Ok(errors.into_iter().map(|e| FieldError::new(field(&e.field), e.reason)).collect()),
    };
    let mut errors = Vec::new();
    if parsed.wallet != state.hot_wallet {
        errors.push(FieldError::new(
            "params.wallet",
            format!(
                "is not a wallet kinko signs for online (the hot wallet is {}); a cold wallet is moved with the \
                 offline signer",
                state.hot_wallet
            ),
        ));
    } else {
        match crate::emergency::blocking(&state.store, ETH_CHAIN, &parsed.wallet, HOT_KEY_ID).await? {
            Some(_) => {}
            None => errors.push(FieldError::new(
                "params.wallet",
                "is not frozen: freeze it first (`kinko emergency freeze wallet:0x…` or POST /v1/ops/freezes); \
                 an unfrozen wallet's funds move with a custodian_transfer",
            )),
        }
    }
    if state.store.is_deposit_address(&parsed.destination).await? {
        errors.push(FieldError::new("params.destination", "is a customer deposit address"));
    } else {
        match state.store.custodian_wallet_tier(&parsed.destination).await? {
            None => errors.push(FieldError::new(
                "params.destination",
                "is not a registered custodian wallet: register the new offline-generated address first",
            )),
            Some(tier) if tier == kinko_store::withdrawals::HOT_TIER => {
                errors.push(FieldError::new("params.destination", "is a hot wallet, not new offline keys"))
            }
            Some(_) => {}
        }
    }
    for (i, asset) in parsed.assets.iter().enumerate() {
        match crate::api::assets::lookup_asset(&state.config, &format!("params.assets[{i}]"), asset.as_str()) {
            Ok(a) if a.chain == ETH_CHAIN => {}
            Ok(_) => errors.push(FieldError::new(format!("params.assets[{i}]"), "is not on the hot wallet's chain")),
            Err(e) => errors.push(e),
        }
    }
    Ok(errors)
}

/// The canonical params, intent hash and quorum of an evacuation request: addresses lower-case, assets
/// sorted — what approvers see and sign over, and what the signer checks.
pub async fn evacuation_request(
    state: &AppState,
    id: &str,
    params: &serde_json::Value,
) -> Result<(serde_json::Value, [u8; 32], u8), Problem> {
    let parsed = EvacuationParams::parse(params).map_err(|errors| {
        Problem::validation(errors.into_iter().map(|e| FieldError::new(field(&e.field), e.reason)).collect())
    })?;
    Ok((parsed.to_json(), parsed.intent_hash(id), state.config.emergency.evacuation_approvals))
}

/// The intent of an evacuation row: a custodian transfer from the frozen wallet to the destination, with the
/// row's own id (one per asset). The pipeline rebuilds the same intent from the row.
fn row_intent(id: &str, asset: &AssetCode, chain_id: u64, amount: Amount, p: &EvacuationParams) -> Intent {
    Intent {
        id: id.to_string(),
        asset: asset.clone(),
        chain_id: kinko_core::ChainId(chain_id),
        amount,
        destination: p.destination.clone(),
        source_wallet: p.wallet.clone(),
        customer_id: CUSTODIAN_CUSTOMER_ID.to_string(),
        reason: CUSTODIAN_TRANSFER_REASON.to_string(),
    }
}

fn conflict(kind: &str, title: &str, detail: String) -> Problem {
    Problem::new(StatusCode::CONFLICT, kind, title).detail(detail)
}

/// Executes an approved evacuation: for each asset, the wallet's full on-chain balance becomes one
/// `custodian_transfer` row to the destination, already approved and linked to the request; the pipeline
/// pays it with the request's approvals as the signer's evacuation order.
///
/// Amounts: a token's whole `balanceOf`; for the native coin the balance less the most every transfer of this
/// evacuation can cost in fees — the sum of their gas limits times `ethereum.max_fee_per_gas_cap_wei`, the cap
/// no fee plan or bump of the pipeline ever exceeds — so no transaction can fail for lack of funds. What is
/// left behind is that reserve less the fees actually paid. An asset with nothing to move gets no row.
/// Executing again returns the rows already written (the balance has moved since).
pub async fn execute_evacuation(
    state: &AppState,
    row: &OpsRequestRow,
    approvals: &[Approval],
    now_ms: i64,
) -> Result<serde_json::Value, Problem> {
    let stored: serde_json::Value = serde_json::from_str(&row.params_json).map_err(Problem::internal)?;
    let params = EvacuationParams::parse_canonical(&stored)
        .map_err(|e| Problem::internal(format!("request {}: stored evacuation params are invalid: {e:?}", row.id)))?;
    if hex::encode(params.intent_hash(&row.id)) != row.intent_hash {
        return Err(conflict(
            "intent-mismatch",
            "the evacuation is not what was approved",
            format!("request {}: its params no longer hash to the approved intent hash", row.id),
        ));
    }
    let existing = state.store.evacuation_transfers(&row.id).await?;
    if !existing.is_empty() {
        let rows: Vec<_> = existing.iter().map(|(w, a)| json!({"withdrawal": w, "asset": a})).collect();
        return Ok(json!({"wallet": params.wallet, "destination": params.destination, "transfers": rows}));
    }
    if crate::emergency::blocking(&state.store, ETH_CHAIN, &params.wallet, HOT_KEY_ID).await?.is_none() {
        return Err(conflict(
            "not-frozen",
            "the wallet is no longer frozen",
            format!("{} was unfrozen since the request; move its funds with a custodian_transfer", params.wallet),
        ));
    }
    let rpc = EvmRpc::new(&state.config.ethereum.rpc_url).map_err(|e| node_down(&e))?;
    let wallet = parse_address(&params.wallet).map_err(|e| Problem::internal(format!("params.wallet: {e}")))?;
    let tokens = crate::erc20::TokenSet::from_config(&state.config.ethereum).map_err(Problem::internal)?;
    let cap = state.config.ethereum.max_fee_per_gas_cap_wei;
    let chain_id = state.config.ethereum.chain_id;

    // Token balances first: their transfers' gas comes out of the native reserve.
    let mut planned: Vec<(AssetCode, Amount)> = Vec::new();
    let mut gas_total: u128 = 0;
    let mut native: Option<AssetCode> = None;
    for asset in &params.assets {
        let spec = crate::api::assets::lookup_asset(&state.config, "params.assets", asset.as_str())
            .map_err(|e| Problem::validation(vec![e]))?;
        match spec.kind {
            AssetKind::EvmNative { .. } => native = Some(asset.clone()),
            AssetKind::Erc20 { .. } => {
                let token = tokens
                    .by_asset(asset)
                    .ok_or_else(|| Problem::internal(format!("asset {asset} has no configured token")))?;
                let balance = rpc.token_balance(token.contract, wallet).await.map_err(|e| node_down(&e))?;
                let balance = u128::try_from(balance).map_err(|_| {
                    Problem::internal(format!("{asset} balance of {} does not fit in 128 bits", params.wallet))
                })?;
                if balance > 0 {
                    gas_total = gas_total.saturating_add(u128::from(token.gas_limit));
                    planned.push((asset.clone(), Amount::from_base_units(balance)));
                }
            }
        }
    }
    let mut skipped: Vec<serde_json::Value> = Vec::new();
    if let Some(asset) = native {
        gas_total = gas_total.saturating_add(u128::from(kinko_chain::evm::NATIVE_TRANSFER_GAS));
        let reserve = gas_total.saturating_mul(cap);
        let balance = rpc.balance(wallet).await.map_err(|e| node_down(&e))?;
        match balance.checked_sub(reserve) {
            Some(amount) if amount > 0 => planned.push((asset, Amount::from_base_units(amount))),
            _ => skipped.push(json!({"asset": asset.as_str(), "balance": balance.to_string(),
                "reason": format!("not above the fee reserve of {reserve} wei")})),
        }
    }
    if planned.is_empty() {
        return Err(conflict(
            "nothing-to-move",
            "the wallet holds nothing to evacuate",
            format!("{}: {}", params.wallet, serde_json::Value::Array(skipped)),
        ));
    }
    let rows: Vec<NewCustodianTransfer> = planned
        .iter()
        .map(|(asset, amount)| {
            let id = evacuation_withdrawal_id(&row.id, asset);
            let intent = row_intent(&id, asset, chain_id, *amount, &params);
            NewCustodianTransfer {
                intent_hash: hex::encode(intent.hash()),
                id,
                asset: asset.clone(),
                chain: ETH_CHAIN.to_string(),
                amount: *amount,
                destination: params.destination.clone(),
                source_wallet: params.wallet.clone(),
            }
        })
        .collect();
    let written = state.store.create_evacuation_transfers(&row.id, &rows, now_ms).await.map_err(|e| match e {
        StoreError::Conflict(d) => conflict("evacuation-conflict", "the evacuation's rows conflict", d),
        other => other.into(),
    })?;
    let approvers: Vec<&str> = approvals.iter().map(|a| a.operator_id.as_str()).collect();
    let transfers: Vec<_> = written
        .iter()
        .map(|w| json!({"withdrawal": w.id, "asset": w.asset.as_str(), "amount": w.amount.to_string()}))
        .collect();
    tracing::warn!(request = %row.id, wallet = %params.wallet, destination = %params.destination,
        ?approvers, "evacuation executed; the pipeline moves the funds while the freeze stays");
    Ok(json!({
        "wallet": params.wallet,
        "destination": params.destination,
        "transfers": transfers,
        "skipped": skipped,
        "fee_reserve_wei": gas_total.saturating_mul(cap).to_string(),
    }))
}

fn node_down(e: &dyn std::fmt::Display) -> Problem {
    Problem::new(StatusCode::SERVICE_UNAVAILABLE, "node-unavailable", "the node cannot be read")
        .detail(format!("the wallet's balances are read from the node: {e}"))
}

/// The evacuation order for a withdrawals row that an evacuation wrote: the request's stored params,
/// requester and approvals, exactly as the approvers signed them. `None` for every other row.
pub async fn order_for_withdrawal(store: &Store, withdrawal_id: &str) -> Result<Option<EvacuationOrder>, StoreError> {
    let Some(request_id) = store.evacuation_request_of(withdrawal_id).await? else { return Ok(None) };
    let row = store.ops_request(&request_id).await?.ok_or(StoreError::NotFound)?;
    let params = serde_json::from_str(&row.params_json)
        .map_err(|e| StoreError::Corrupt(format!("ops_requests.params_json of {request_id}: {e}")))?;
    let approvals = store
        .request_approvals(&request_id)
        .await?
        .into_iter()
        .map(|a| Approval { operator_id: a.operator_id, signature_hex: a.signature_hex })
        .collect();
    Ok(Some(EvacuationOrder { request_id, requester: row.requester, params, approvals }))
}
