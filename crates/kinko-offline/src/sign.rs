//! The offline signing flow (K14): review a bundle against the keystore (every check, nothing secret
//! touched), then — after the operator typed the confirmation — unseal, sign, self-verify, record.

use std::path::Path;

use alloy_consensus::TxEip1559;
use alloy_primitives::{TxKind, U256, keccak256};
use kinko_core::Amount;
use kinko_core::asset::AssetKind;
use kinko_core::operators::{ApprovalSubject, Process, QuorumPolicy};
use kinko_keys::shares::RawShare;
use kinko_signer::SecpKey as _;
use kinko_signer::approvals::{OperatorRegistry, verify_quorum};
use kinko_signer::evm::{self, EvmCall};
use sha2::{Digest, Sha256};

use crate::bundle::{
    BundleError, SignedBundle, UnsignedBundle, assemble_signed, check_unsigned, decode_hex, invalid, verify_signed_with,
};
use crate::keystore::Keystore;
use crate::record::{SignRecord, SlotEntry, slot_key};

/// The requester the offline quorum check is made for. Not an operator id (ids are checked against the
/// registry), so no presented approval is mistaken for a self-approval; separation of duties between the
/// requester and the approvers was enforced online when the request was made, and is not re-provable here
/// because the bundle does not carry a signed request.
pub const OFFLINE_REQUESTER: &str = "kinko-offline";
/// The confirmation the operator must type, exactly.
pub const CONFIRMATION_WORD: &str = "sign";

/// A bundle that passed every offline check and may be signed after confirmation.
#[derive(Debug)]
pub struct Review {
    pub bundle: UnsignedBundle,
    pub tx: TxEip1559,
    pub payload: Vec<u8>,
    /// The human summary shown before the confirmation.
    pub summary: String,
    /// The signing managers whose approvals counted.
    pub approvers: Vec<String>,
    /// The bundle carried a longer registry log than the keystore pinned (pinned after signing).
    pub extends_registry: bool,
    /// Whether the payload is new to the anti-double-sign record (false: the same payload signed before).
    pub new_to_record: bool,
}

fn fmt_units(value: U256, decimals: u8) -> String {
    match u128::try_from(value) {
        Ok(v) => Amount::from_base_units(v).display_with_decimals(decimals),
        Err(_) => format!("{value} base units (beyond u128)"),
    }
}

/// The transaction in human terms, from the decoded payload (never from the intent): asset, amount with
/// decimals, destination, chain, most it can pay in fees, from, nonce; then the intent it claims to carry
/// out. A payload the signer would refuse is shown with the refusal.
pub fn summary(b: &UnsignedBundle, tx: &TxEip1559) -> String {
    let native = match &b.asset.kind {
        AssetKind::EvmNative { .. } => b.asset.code.to_string(),
        AssetKind::Erc20 { .. } => "ETH".to_string(),
    };
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("  {k:<14} {v}\n"));
    let to = match tx.to {
        TxKind::Call(a) => format!("{a:#x}"),
        TxKind::Create => "(contract creation)".into(),
    };
    match (&b.asset.kind, evm::classify_calldata(&tx.input)) {
        (AssetKind::EvmNative { .. }, Ok(EvmCall::None)) => {
            line("asset", format!("{} (native coin, {} decimals)", b.asset.code, b.asset.decimals));
            line(
                "amount",
                format!("{} {}  ({} base units)", fmt_units(tx.value, b.asset.decimals), b.asset.code, tx.value),
            );
            line("destination", to);
        }
        (AssetKind::Erc20 { contract, .. }, Ok(EvmCall::Erc20Transfer { recipient, amount })) => {
            line("asset", format!("{} (ERC-20 {contract}, {} decimals)", b.asset.code, b.asset.decimals));
            line("amount", format!("{} {}  ({amount} base units)", fmt_units(amount, b.asset.decimals), b.asset.code));
            line("destination", format!("{recipient:#x}"));
            line("token contract", to);
            if !tx.value.is_zero() {
                line("also sends", format!("{} {native}", fmt_units(tx.value, 18)));
            }
        }
        (_, Err(e)) => {
            line("call", format!("REFUSED: {e}"));
            line("to", to);
            line("value", format!("{} {native}", fmt_units(tx.value, 18)));
        }
        (_, Ok(call)) => {
            line("call", format!("DOES NOT FIT THE ASSET {}: {call:?}", b.asset.code));
            line("to", to);
            line("value", format!("{} {native}", fmt_units(tx.value, 18)));
        }
    }
    line("chain id", tx.chain_id.to_string());
    let fee = u128::from(tx.gas_limit).checked_mul(tx.max_fee_per_gas);
    line(
        "max fee",
        match fee {
            Some(f) => format!(
                "{} {native}  (gas_limit {} x max_fee_per_gas {} wei)",
                Amount::from_base_units(f).display_with_decimals(18),
                tx.gas_limit,
                tx.max_fee_per_gas
            ),
            None => "overflows u128".into(),
        },
    );
    line("from", format!("{}  (key {})", b.from, b.key_id));
    line("nonce", tx.nonce.to_string());
    line(
        "intent",
        format!(
            "{} ({}): {} {} to {}",
            b.intent.id, b.intent.reason, b.intent.amount, b.intent.asset, b.intent.destination
        ),
    );
    line("approvals", format!("{} presented", b.approvals.len()));
    format!("Transaction to sign with the cold key:\n{out}")
}

/// Decodes the payload for display only (`kinko-offline show`); no check beyond decoding.
pub fn show(b: &UnsignedBundle) -> Result<String, BundleError> {
    let payload = decode_hex("payload_hex", &b.payload_hex)?;
    let tx = evm::decode_eip1559(&payload).map_err(|e| invalid("payload_hex", e.to_string()))?;
    Ok(summary(b, &tx))
}

/// Every offline check, in this order: the bundle is for this keystore (key, address, chain, a pinned asset);
/// the transaction, decoded here, matches the intent (the signer's own check, with the pinned fee bound);
/// the registry log extends the pinned one and replays; the approvals reach the pinned quorum; the
/// anti-double-sign record allows the payload. Nothing secret is touched.
pub fn review(ks: &Keystore, record: &SignRecord, b: UnsignedBundle, now_ms: i64) -> Result<Review, BundleError> {
    if b.key_id != ks.key_id {
        return Err(invalid("key_id", format!("is {:?}, this keystore holds {:?}", b.key_id, ks.key_id)));
    }
    if b.from != ks.address {
        return Err(invalid("from", format!("is {}, this keystore's cold wallet is {}", b.from, ks.address)));
    }
    if b.chain_id != ks.chain_id {
        return Err(invalid("chain_id", format!("is {}, this keystore signs for chain {}", b.chain_id, ks.chain_id)));
    }
    if !ks.assets.contains(&b.asset) {
        return Err(invalid(
            "asset",
            format!("{} with this kind and decimals is not an asset this keystore pinned", b.asset.code),
        ));
    }
    let tx = check_unsigned(&b, ks.fee_wei_max.base_units())?;
    let payload = decode_hex("payload_hex", &b.payload_hex)?;

    let (approvers, extends_registry) = verify_approvals(ks, &b.registry_log, &b.intent, &b.approvals, now_ms)?;

    let payload_sha256 = hex::encode(Sha256::digest(&payload));
    let new_to_record = record.check(&slot_key(&ks.key_id, ks.chain_id, tx.nonce), &payload, &payload_sha256)?;
    let mut summary = summary(&b, &tx);
    summary.push_str(&format!("  {:<14} {}\n", "approved by", approvers.join(", ")));
    Ok(Review { extends_registry, bundle: b, tx, payload, summary, approvers, new_to_record })
}

/// The approval checks every offline signature needs (EVM bundles and Bitcoin PSBT bundles alike): the bundle's
/// registry log extends the pinned one and replays, and the approvals over `(Signing, intent.id, intent.hash())`
/// reach the pinned quorum. Returns the approvers who counted and whether the log is longer than the pinned one
/// (to be pinned after signing).
pub fn verify_approvals(
    ks: &Keystore,
    registry_log: &[kinko_signer::approvals::LoggedChange],
    intent: &kinko_core::intent::Intent,
    approvals: &[kinko_signer::Approval],
    now_ms: i64,
) -> Result<(Vec<String>, bool), BundleError> {
    let pinned = ks.registry_log.len();
    if registry_log.len() < pinned {
        return Err(invalid(
            "registry_log",
            format!(
                "has {} entries, fewer than the {pinned} pinned: it does not extend the pinned log",
                registry_log.len()
            ),
        ));
    }
    // The changes must be the pinned ones; the approvals on them and the application times are verified again
    // by the replay below (the server's copy and the signer's log carry their own application times).
    if let Some(i) = (0..pinned).find(|&i| registry_log[i].change != ks.registry_log[i].change) {
        return Err(invalid("registry_log", format!("entry {i} differs from the pinned log: it does not extend it")));
    }
    let registry = OperatorRegistry::replay(registry_log, now_ms)
        .map_err(|e| invalid("registry_log", format!("does not verify: {e}")))?;

    let subject = ApprovalSubject::new(Process::Signing, &intent.id, intent.hash())
        .map_err(|e| invalid("intent.id", e.to_string()))?;
    let verified =
        verify_quorum(&registry, &subject, approvals, QuorumPolicy::AtLeast(ks.quorum), OFFLINE_REQUESTER, now_ms)
            .map_err(|e| invalid("approvals", e.to_string()))?;
    Ok((verified.approvers, registry_log.len() > pinned))
}

/// Signs a reviewed bundle: unseals the cold key with `shares`, signs keccak256(payload) low-S, checks the
/// result as the online side will ([`crate::bundle::verify_signed`], with the pinned fee bound), writes the
/// anti-double-sign record, and pins an extended registry log into the keystore. The caller writes the signed
/// file afterwards. The key is zeroized when this returns.
pub fn sign(
    ks: &mut Keystore,
    keystore_path: &Path,
    record: &mut SignRecord,
    review: &Review,
    shares: &[RawShare],
    now_ms: i64,
) -> Result<SignedBundle, BundleError> {
    let key = ks.unseal(shares)?;
    let hash = keccak256(&review.payload).0;
    let sig = key.sign_prehash(&hash).map_err(|e| invalid("signature", e.to_string()))?;
    drop(key);
    let signed = assemble_signed(&review.bundle, &review.tx, &sig);
    verify_signed_with(&review.bundle, &signed, ks.fee_wei_max.base_units())
        .map_err(|e| invalid("self-check", e.to_string()))?;
    if review.new_to_record {
        let slot = slot_key(&ks.key_id, ks.chain_id, review.tx.nonce);
        record.slots.entry(slot).or_default().push(SlotEntry {
            payload_sha256: hex::encode(Sha256::digest(&review.payload)),
            payload_hex: format!("0x{}", hex::encode(&review.payload)),
            intent_hash: hex::encode(review.bundle.intent.hash()),
            signed_at_ms: now_ms,
        });
        record.write(&Keystore::record_path(keystore_path))?;
    }
    if review.extends_registry {
        ks.registry_log = review.bundle.registry_log.clone();
        ks.write(keystore_path)?;
    }
    Ok(signed)
}
