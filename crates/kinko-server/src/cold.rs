//! The online half of offline signing (K14): export a cold row's unsigned bundle, import the signed file.
//!
//! Export builds the unsigned EIP-1559 transaction from the row's reserved nonce and fee plan (the same
//! builder the pipeline uses), with the row's Intent, the asset's spec, the operators' approvals collected on
//! the refill request and the server's operator registry log, and stores it (`offline_bundles`) before the
//! file is written; exporting again gives the stored bundle back.
//!
//! Import never trusts the operator's copy of the unsigned bundle: the signed file names the bundle by its
//! sha256, kinko loads the bundle IT stored under that hash and has `kinko_offline::bundle::verify_signed`
//! re-derive everything (signature over the stored payload, recovery to the cold wallet, the raw transaction
//! and its hash, the intent). Only then, in one transaction, is the raw transaction stored and the row moved
//! `awaiting_offline_signature → signed`; the pipeline broadcasts, confirms and settles it.

use kinko_chain::evm::FeeEstimate;
use kinko_chain::evm::address::parse_address;
use kinko_chain::evm::build;
use kinko_core::asset::AssetSpec;
use kinko_core::intent::Intent;
use kinko_core::operator_registry::RegistryChange;
use kinko_core::withdrawal::{WithdrawalKind, WithdrawalStatus};
use kinko_offline::bundle::{SignedBundle, UNSIGNED_KIND, UnsignedBundle, unsigned_sha256, verify_signed};
use kinko_signer::Approval;
use kinko_signer::approvals::LoggedChange;
use kinko_store::Store;
use kinko_store::cold::ImportOutcome;
use kinko_store::pipeline::{FeePlan, TxVersion};

use crate::Config;

/// Decimals of the chain's native coin (ETH, wei), shown by the offline tool.
pub const NATIVE_DECIMALS: u8 = 18;

#[derive(Debug, thiserror::Error)]
pub enum ColdError {
    #[error("store: {0}")]
    Store(#[from] kinko_store::StoreError),
    #[error("bundle: {0}")]
    Bundle(#[from] kinko_offline::bundle::BundleError),
    #[error("{0}")]
    Refused(String),
}

fn refused(reason: impl Into<String>) -> ColdError {
    ColdError::Refused(reason.into())
}

/// The server's operator registry log as logged changes (what the offline keystore pins at keygen, and what
/// every bundle carries). Each row's seq and hash are checked against its change; the offline side replays
/// the signatures.
pub async fn registry_log(store: &Store) -> Result<Vec<LoggedChange>, ColdError> {
    let rows = store.registry_log().await?;
    let mut entries = Vec::with_capacity(rows.len());
    for row in rows {
        let bad = |what: String| refused(format!("operator registry log seq {}: {what}", row.seq));
        let change: RegistryChange =
            serde_json::from_str(&row.change_json).map_err(|e| bad(format!("change_json: {e}")))?;
        let approvals: Vec<Approval> =
            serde_json::from_str(&row.approvals_json).map_err(|e| bad(format!("approvals_json: {e}")))?;
        let hash = change.hash().map_err(|e| bad(e.to_string()))?;
        if hex::encode(hash) != row.hash || i64::try_from(change.seq).ok() != Some(row.seq) {
            return Err(bad("stored hash or seq does not match its change".into()));
        }
        entries.push(LoggedChange { change, approvals, applied_at_ms: row.applied_at_ms });
    }
    Ok(entries)
}

/// The exported bundle of a cold row and its sha256. Built and stored on the first call; later calls return
/// the stored one unchanged.
pub async fn export_bundle(
    store: &Store,
    config: &Config,
    withdrawal_id: &str,
    now_ms: i64,
) -> Result<(UnsignedBundle, String), ColdError> {
    if let Some(stored) = store.offline_bundle(withdrawal_id).await? {
        return parse_stored(&stored.unsigned_json, &stored.unsigned_sha256);
    }
    let w = store.withdrawal(withdrawal_id).await?.ok_or_else(|| refused(format!("no withdrawal {withdrawal_id}")))?;
    if w.kind != WithdrawalKind::CustodianTransfer || w.status != WithdrawalStatus::AwaitingOfflineSignature {
        return Err(refused(format!(
            "withdrawal {withdrawal_id} is a {} in status {}, not a cold transfer awaiting its offline signature",
            w.kind, w.status
        )));
    }
    let key_id = match store.wallet_tier_and_key(&w.source_wallet).await? {
        Some((tier, key_id)) if tier == crate::tiers::COLD_TIER => key_id,
        _ => return Err(refused(format!("source {} is not a registered cold wallet", w.source_wallet))),
    };
    let nonce = w.nonce.ok_or_else(|| refused(format!("withdrawal {withdrawal_id} has no reserved nonce")))?;
    let plan = store.fee_plan(withdrawal_id).await?.ok_or_else(|| refused("no fee plan reserved"))?;
    let asset = crate::api::assets::lookup_asset(config, "asset", w.asset.as_str())
        .map_err(|e| refused(format!("{}: {}", e.field, e.reason)))?;
    if !matches!(asset.kind, kinko_core::asset::AssetKind::EvmNative { .. }) {
        return Err(refused(format!("asset {}: only the native coin moves through cold storage so far", w.asset)));
    }
    let to = parse_address(&w.destination).map_err(|e| refused(format!("destination: {e}")))?;
    let fees =
        FeeEstimate { max_fee_per_gas: plan.max_fee_per_gas, max_priority_fee_per_gas: plan.max_priority_fee_per_gas };
    let unsigned =
        build::native_transfer(config.ethereum.chain_id, nonce, to, w.amount.base_units(), fees, plan.gas_limit);
    let intent = Intent {
        id: w.id.clone(),
        asset: w.asset.clone(),
        chain_id: asset.chain_id,
        amount: w.amount,
        destination: w.destination.clone(),
        source_wallet: w.source_wallet.clone(),
        customer_id: w.customer_id.clone(),
        reason: w.kind.intent_reason().into(),
    };
    if hex::encode(intent.hash()) != w.intent_hash {
        return Err(refused("the row's fields no longer hash to its approved intent"));
    }
    let approvals: Vec<Approval> = store
        .request_approvals(withdrawal_id)
        .await?
        .into_iter()
        .map(|a| Approval { operator_id: a.operator_id, signature_hex: a.signature_hex })
        .collect();
    let bundle = UnsignedBundle {
        kind: UNSIGNED_KIND.into(),
        chain_id: config.ethereum.chain_id,
        from: w.source_wallet.clone(),
        key_id,
        payload_hex: format!("0x{}", hex::encode(&unsigned.payload)),
        intent,
        asset: AssetSpec { code: asset.code, kind: asset.kind, decimals: NATIVE_DECIMALS },
        approvals,
        registry_log: registry_log(store).await?,
        created_at_ms: now_ms,
    };
    let sha = unsigned_sha256(&bundle);
    let json = serde_json::to_string(&bundle).map_err(|e| refused(format!("serialising the bundle: {e}")))?;
    // A concurrent export may have stored first: what is stored is what counts.
    let stored = store.record_offline_bundle(withdrawal_id, &json, &sha, now_ms).await?;
    parse_stored(&stored.unsigned_json, &stored.unsigned_sha256)
}

fn parse_stored(json: &str, sha: &str) -> Result<(UnsignedBundle, String), ColdError> {
    let bundle: UnsignedBundle =
        serde_json::from_str(json).map_err(|e| refused(format!("the stored bundle does not parse: {e}")))?;
    if unsigned_sha256(&bundle) != sha {
        return Err(refused("the stored bundle does not hash to its recorded sha256 (edited in the database?)"));
    }
    Ok((bundle, sha.to_string()))
}

/// What an import did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Imported {
    pub withdrawal_id: String,
    pub tx_hash: String,
    pub outcome: ImportOutcome,
}

/// Imports a signed file (K14): verified against the bundle kinko stored under the sha256 the file names,
/// then stored and moved to `signed` atomically. Refused (nothing stored, nothing broadcast) when the file
/// was edited, answers another bundle, or a different transaction was imported for the row before.
pub async fn import_signed(store: &Store, signed: &SignedBundle, now_ms: i64) -> Result<Imported, ColdError> {
    let stored = store
        .offline_bundle_by_sha256(&signed.unsigned_sha256)
        .await?
        .ok_or_else(|| refused("unsigned_sha256: names no bundle kinko exported"))?;
    let (unsigned, sha) = parse_stored(&stored.unsigned_json, &stored.unsigned_sha256)?;
    let verified = verify_signed(&unsigned, signed)?;
    let w = store.withdrawal(&stored.withdrawal_id).await?.ok_or_else(|| refused("the bundle's withdrawal is gone"))?;
    if hex::encode(unsigned.intent.hash()) != w.intent_hash {
        return Err(refused("the bundle's intent is not the withdrawal's approved intent"));
    }
    let tx_hash = verified.tx_hash.to_ascii_lowercase();
    let version = TxVersion {
        tx_hash: tx_hash.clone(),
        nonce: verified.nonce,
        fees: FeePlan {
            max_fee_per_gas: verified.max_fee_per_gas,
            max_priority_fee_per_gas: verified.max_priority_fee_per_gas,
            gas_limit: verified.gas_limit,
        },
        raw: verified.raw,
        created_at_ms: now_ms,
        broadcast_at_ms: None,
    };
    let outcome = store.import_offline_signature(&stored.withdrawal_id, &sha, &version, now_ms).await?;
    Ok(Imported { withdrawal_id: stored.withdrawal_id, tx_hash, outcome })
}
