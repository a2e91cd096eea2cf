//! The signer's own view of an EVM payload: decode it (alloy-consensus, independent of whichever builder
//! made it), compare every value-moving field with the intent, and judge fee bumps (K20, O5).

use alloy_consensus::{SignableTransaction, TxEip1559};
use alloy_primitives::{TxKind, U256};
use alloy_rlp::Decodable;
use kinko_core::intent::Intent;

use crate::SignerError;

pub const EIP1559_TX_TYPE: u8 = 0x02;
/// Bound on payload size: a plain transfer is ~100 bytes; anything near this is not one.
pub const PAYLOAD_LEN_MAX: usize = 16 * 1024;
/// Default bound on the most a single transaction may pay in fees (gas_limit × max_fee_per_gas): fees
/// move value too, to the block producer, so a builder that inflates them is refused. 0.1 ETH.
pub const FEE_WEI_MAX_DEFAULT: u128 = 100_000_000_000_000_000;

/// Decodes an unsigned EIP-1559 payload. Only the canonical encoding is accepted: re-encoding the
/// decoded transaction must give back the same bytes, so two byte strings never decode to one
/// transaction (which would let a "different" payload slip past the double-sign record).
pub fn decode_eip1559(payload: &[u8]) -> Result<TxEip1559, SignerError> {
    if payload.len() > PAYLOAD_LEN_MAX {
        return Err(SignerError::Malformed(format!("payload is {} bytes, over {PAYLOAD_LEN_MAX}", payload.len())));
    }
    let (&tx_type, mut body) =
        payload.split_first().ok_or_else(|| SignerError::Malformed("payload is empty".into()))?;
    if tx_type != EIP1559_TX_TYPE {
        return Err(SignerError::Malformed(format!(
            "transaction type is 0x{tx_type:02x}, only EIP-1559 (0x02) is signed"
        )));
    }
    let tx = TxEip1559::decode(&mut body).map_err(|e| SignerError::Malformed(format!("EIP-1559 RLP: {e}")))?;
    if !body.is_empty() {
        return Err(SignerError::Malformed(format!("{} trailing bytes after the transaction", body.len())));
    }
    let mut again = Vec::with_capacity(payload.len());
    tx.encode_for_signing(&mut again);
    if again != payload {
        return Err(SignerError::Malformed("payload is not canonically encoded".into()));
    }
    Ok(tx)
}

/// What the signer's policy needs to know beyond the intent.
#[derive(Clone, Debug)]
pub struct EvmPolicy {
    /// The asset code of the chain's native coin (the only asset a call-data-free transfer can move).
    pub native_asset: String,
    pub fee_wei_max: u128,
}

impl Default for EvmPolicy {
    fn default() -> Self {
        EvmPolicy { native_asset: "ETH".into(), fee_wei_max: FEE_WEI_MAX_DEFAULT }
    }
}

fn mismatch(field: &'static str, expected: impl ToString, actual: impl ToString) -> SignerError {
    SignerError::IntentMismatch { field, expected: expected.to_string(), actual: actual.to_string() }
}

/// Compares the decoded transaction with the request, the intent and the key's address. Every field
/// that moves value is checked; anything but a plain native transfer is refused.
pub fn check_against_intent(
    tx: &TxEip1559,
    req_chain_id: u64,
    req_nonce: u64,
    intent: &Intent,
    key_address: &str,
    policy: &EvmPolicy,
) -> Result<(), SignerError> {
    if req_chain_id != intent.chain_id.0 {
        return Err(mismatch("chain_id", intent.chain_id.0, req_chain_id));
    }
    if tx.chain_id != intent.chain_id.0 {
        return Err(mismatch("chain_id", intent.chain_id.0, tx.chain_id));
    }
    if tx.nonce != req_nonce {
        return Err(mismatch("nonce", req_nonce, tx.nonce));
    }
    if !key_address.eq_ignore_ascii_case(&intent.source_wallet) {
        return Err(mismatch("source_wallet", &intent.source_wallet, key_address));
    }
    let to = match tx.to {
        TxKind::Call(to) => format!("{to:#x}"),
        TxKind::Create => return Err(SignerError::Refused("contract creation is never signed".into())),
    };
    if !tx.input.is_empty() {
        let selector = hex::encode(&tx.input[..tx.input.len().min(4)]);
        // ERC-20 `transfer(address,uint256)` decoding comes with token support; until then any call data
        // (approve 0x095ea7b3, Safe execTransaction, upgradeTo, …) could move value or control.
        return Err(SignerError::Refused(format!("call data (selector 0x{selector}) is not a plain native transfer")));
    }
    if !tx.access_list.is_empty() {
        return Err(SignerError::Refused("a plain transfer carries no access list".into()));
    }
    if intent.asset.as_str() != policy.native_asset {
        return Err(SignerError::Refused(format!(
            "asset {} is not the native coin {} of chain {}; token transfers are not supported yet",
            intent.asset, policy.native_asset, intent.chain_id
        )));
    }
    if !to.eq_ignore_ascii_case(&intent.destination) {
        return Err(mismatch("destination", &intent.destination, to));
    }
    if tx.value != U256::from(intent.amount.base_units()) {
        return Err(mismatch("amount", intent.amount, tx.value));
    }
    if tx.max_priority_fee_per_gas > tx.max_fee_per_gas {
        return Err(SignerError::Malformed("max_priority_fee_per_gas is above max_fee_per_gas".into()));
    }
    let fee_wei_max = u128::from(tx.gas_limit).checked_mul(tx.max_fee_per_gas);
    if fee_wei_max.is_none_or(|f| f > policy.fee_wei_max) {
        return Err(SignerError::Refused(format!(
            "gas_limit {} x max_fee_per_gas {} exceeds the fee cap of {} wei",
            tx.gas_limit, tx.max_fee_per_gas, policy.fee_wei_max
        )));
    }
    Ok(())
}

/// Whether `new` may replace `old` for the same slot: the same transaction in everything but fees, and
/// both fee caps strictly higher (C4 replacement without ever paying twice). `None` if allowed, or the
/// reason it is not.
pub fn fee_bump_refusal(old: &TxEip1559, new: &TxEip1559) -> Option<String> {
    let same = old.chain_id == new.chain_id
        && old.nonce == new.nonce
        && old.to == new.to
        && old.value == new.value
        && old.input == new.input
        && old.gas_limit == new.gas_limit
        && old.access_list == new.access_list;
    if !same {
        return Some("a different transaction was already signed for this nonce".into());
    }
    if new.max_fee_per_gas <= old.max_fee_per_gas || new.max_priority_fee_per_gas <= old.max_priority_fee_per_gas {
        return Some(format!(
            "a replacement must raise both fee caps: signed max_fee_per_gas {} / priority {}, got {} / {}",
            old.max_fee_per_gas, old.max_priority_fee_per_gas, new.max_fee_per_gas, new.max_priority_fee_per_gas
        ));
    }
    None
}
