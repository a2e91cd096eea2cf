//! The signer's own view of a Safe (Gnosis Safe 1.4.1) multisig transaction (K15): what an owner key
//! signs, checked against the intent before the owner's signature exists.
//!
//! The Bybit (2025) and WazirX (2024) losses were Safe transactions that the owners signed while their
//! screens showed a transfer: Bybit's was a `delegatecall` into a contract that rewrote the Safe's master
//! copy, WazirX's an upgrade of the wallet's logic. So a kinko signer never signs a hash it is handed. It
//! takes the Safe transaction's fields, computes the EIP-712 hash itself (its own `sol!` struct and
//! domain, not the builder's code), and signs only when:
//! - the operation is Call (DELEGATECALL is refused, by name);
//! - `to` is not the Safe itself (a self-call is how owners, threshold, modules, guard and fallback handler
//!   change) and the call data is not a control call ([`crate::evm::classify_calldata`] refuses owner,
//!   threshold, module, guard, fallback handler, upgrade, allowance calls and nested `execTransaction`);
//! - the value and data are exactly the intent: native: `to` = destination, `value` = amount, no data;
//!   ERC-20: `to` = the signer's own contract for the asset, `value` 0, data = canonical
//!   `transfer(destination, amount)`;
//! - `gasPrice`, `gasToken` and `refundReceiver` are zero (Safe's refund path pays whoever relays from the
//!   Safe's funds; kinko never uses it);
//! - the Safe is one the signer itself has configured for that owner key, and it is the intent's
//!   `source_wallet`.
//!
//! Safe administration (owner, threshold, module, guard changes) is refused whatever the intent says: the
//! flow where an intent is approved as exactly that change is not built. Such a change today is made
//! outside kinko, by the owners' custodians with the Safe's own tooling, and re-registered in the signer's
//! configuration.
//!
//! Everything here is pure (no I/O): the journal, approvals and key use are in [`crate::LocalSigner`].

use alloy_primitives::{Address, B256, Bytes, U256, keccak256};
use alloy_sol_types::{SolStruct, eip712_domain, sol};
use kinko_core::intent::Intent;
use serde::{Deserialize, Serialize};

use crate::evm::{EvmPolicy, classify_calldata};
use crate::journal::SlotKey;
use crate::{Approval, SignerError};

sol! {
    /// Safe 1.4.1's `SafeTx` (its `SAFE_TX_TYPEHASH`), field for field.
    struct SafeTx {
        address to;
        uint256 value;
        bytes data;
        uint8 operation;
        uint256 safeTxGas;
        uint256 baseGas;
        uint256 gasPrice;
        address gasToken;
        address refundReceiver;
        uint256 nonce;
    }
}

/// Safe's `Enum.Operation.Call`.
pub const OPERATION_CALL: u8 = 0;
/// Safe's `Enum.Operation.DelegateCall`.
pub const OPERATION_DELEGATECALL: u8 = 1;
/// Bound on the inner call data: a native transfer has none, an ERC-20 transfer 68 bytes.
pub const SAFE_DATA_LEN_MAX: usize = 16 * 1024;
/// Bound on the Safes one signer is configured for, per key and chain.
pub const SAFES_PER_KEY_MAX: usize = 64;
/// One owner signature in Safe's packed form: r(32) || s(32) || v(1).
pub const SAFE_SIGNATURE_LEN: usize = 65;
/// The key access log's operation for a Safe owner signature.
pub const SAFE_SIGN_OPERATION: &str = "sign_safe";

/// A Safe transaction's fields as the owners sign them (Safe 1.4.1 `SafeTx`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SafeTxFields {
    pub to: Address,
    pub value: U256,
    pub data: Bytes,
    pub operation: u8,
    pub safe_tx_gas: U256,
    pub base_gas: U256,
    pub gas_price: U256,
    pub gas_token: Address,
    pub refund_receiver: Address,
    pub nonce: U256,
}

/// A request for one owner's signature on one Safe transaction. There is no hash in it: the signer
/// computes the hash from the fields.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SafeSignRequest {
    /// The owner key (one of the Safe's owners) held by this signer.
    pub key_id: String,
    pub chain_id: u64,
    pub safe_address: Address,
    pub tx: SafeTxFields,
    /// `source_wallet` is the Safe.
    pub intent: Intent,
    /// Approvals over `(Process::Signing, intent.id, intent.hash())`, counted against the signer's own
    /// `[[signer.quorum]]` for (key, asset, amount) exactly as for `sign_evm`.
    pub approvals: Vec<Approval>,
    pub actor: String,
    pub terminal: String,
}

/// What the signer signs, once the checks passed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckedSafeTx {
    /// `0x19 0x01 || domainSeparator || hashStruct(SafeTx)`: keccak256 of these 66 bytes is the Safe
    /// transaction hash, and they are what the anti-double-sign record keeps.
    pub preimage: Vec<u8>,
    pub hash: B256,
    pub nonce: u64,
}

/// The anti-double-sign slot of a Safe transaction: one signature per (owner key, chain, Safe, Safe nonce).
pub fn safe_slot(key_id: &str, chain_id: u64, safe: Address, nonce: u64) -> SlotKey {
    SlotKey { key_id: key_id.to_string(), chain: format!("evm:{chain_id}"), slot: format!("safe:{safe:#x}:{nonce}") }
}

/// EIP-712 preimage and hash of `tx` for the Safe at `safe` on `chain_id` (domain: chainId and
/// verifyingContract only, as Safe 1.4.1 defines it).
pub fn safe_tx_hash(tx: &SafeTxFields, chain_id: u64, safe: Address) -> (Vec<u8>, B256) {
    let domain = eip712_domain! { chain_id: chain_id, verifying_contract: safe, };
    let st = SafeTx {
        to: tx.to,
        value: tx.value,
        data: tx.data.clone(),
        operation: tx.operation,
        safeTxGas: tx.safe_tx_gas,
        baseGas: tx.base_gas,
        gasPrice: tx.gas_price,
        gasToken: tx.gas_token,
        refundReceiver: tx.refund_receiver,
        nonce: tx.nonce,
    };
    let mut preimage = Vec::with_capacity(66);
    preimage.extend_from_slice(&[0x19, 0x01]);
    preimage.extend_from_slice(domain.hash_struct().as_slice());
    preimage.extend_from_slice(st.eip712_hash_struct().as_slice());
    let hash = keccak256(&preimage);
    (preimage, hash)
}

fn mismatch(field: &'static str, expected: impl ToString, actual: impl ToString) -> SignerError {
    SignerError::IntentMismatch { field, expected: expected.to_string(), actual: actual.to_string() }
}

/// The signer's checks on a Safe transaction (see the module docs), in the order that names the most
/// dangerous problem first: delegatecall and control changes are refused before any intent comparison.
/// `configured_safes` are the Safes the signer itself has configured for this key on this chain.
pub fn check_safe_tx(
    req: &SafeSignRequest,
    configured_safes: &[Address],
    policy: &EvmPolicy,
) -> Result<CheckedSafeTx, SignerError> {
    let tx = &req.tx;
    let safe = req.safe_address;
    if tx.data.len() > SAFE_DATA_LEN_MAX {
        return Err(SignerError::Malformed(format!(
            "Safe transaction data is {} bytes, over {SAFE_DATA_LEN_MAX}",
            tx.data.len()
        )));
    }
    match tx.operation {
        OPERATION_CALL => {}
        OPERATION_DELEGATECALL => {
            return Err(SignerError::Refused(format!(
                "Safe transaction with operation = delegatecall to {:#x}: it runs foreign code with the Safe's own \
                 storage and can rewrite its owners or master copy (the Bybit loss); never signed",
                tx.to
            )));
        }
        other => {
            return Err(SignerError::Malformed(format!(
                "Safe transaction operation is {other}; only 0 (call) and 1 (delegatecall) exist"
            )));
        }
    }
    if tx.to == safe {
        return Err(SignerError::Refused(format!(
            "Safe transaction calls the Safe {safe:#x} itself: a self-call changes its owners, threshold, modules, \
             guard or fallback handler; Safe administration needs an intent approved as exactly that change, \
             which kinko does not build, so it is never signed"
        )));
    }
    // Control, upgrade and allowance selectors are refused by name whatever the target.
    let call = classify_calldata(&tx.data).map_err(|e| match e {
        SignerError::Refused(m) => SignerError::Refused(format!("Safe transaction data: {m}")),
        other => other,
    })?;
    if !tx.gas_price.is_zero() || tx.gas_token != Address::ZERO || tx.refund_receiver != Address::ZERO {
        return Err(SignerError::Refused(format!(
            "Safe transaction pays a gas refund (gasPrice {}, gasToken {:#x}, refundReceiver {:#x}) from the Safe's \
             funds; kinko signs only gasPrice 0 with no gas token and no refund receiver",
            tx.gas_price, tx.gas_token, tx.refund_receiver
        )));
    }
    if !tx.base_gas.is_zero() {
        return Err(SignerError::Refused(format!(
            "Safe transaction baseGas is {}, only 0 is signed (it only matters for refunds)",
            tx.base_gas
        )));
    }
    let nonce = u64::try_from(tx.nonce)
        .map_err(|_| SignerError::Malformed(format!("Safe nonce {} does not fit in 64 bits", tx.nonce)))?;

    let intent = &req.intent;
    if req.chain_id != intent.chain_id.0 {
        return Err(mismatch("chain_id", intent.chain_id.0, req.chain_id));
    }
    if !configured_safes.contains(&safe) {
        return Err(SignerError::Refused(format!(
            "Safe {safe:#x} is not a Safe this signer has configured for key {:?} on chain {}",
            req.key_id, req.chain_id
        )));
    }
    let safe_hex = format!("{safe:#x}");
    if !safe_hex.eq_ignore_ascii_case(&intent.source_wallet) {
        return Err(mismatch("source_wallet", &intent.source_wallet, safe_hex));
    }
    crate::evm::check_transfer_matches_intent(tx.to, tx.value, call, intent, policy, "Safe transaction")?;
    let (preimage, hash) = safe_tx_hash(tx, req.chain_id, safe);
    Ok(CheckedSafeTx { preimage, hash, nonce })
}

/// The Safe an EVM transaction calls with `execTransaction`, if it is one of `configured`: such a
/// transaction is a relay of an owner-signed Safe transaction (see [`check_relay`]); anything else goes
/// through the plain-transfer checks, which refuse every `execTransaction`.
pub fn relayed_safe(tx: &alloy_consensus::TxEip1559, configured: &[Address]) -> Option<Address> {
    let alloy_primitives::TxKind::Call(to) = tx.to else { return None };
    let is_exec =
        tx.input.get(..4) == Some(&<crate::evm::execTransactionCall as alloy_sol_types::SolCall>::SELECTOR[..]);
    (is_exec && configured.contains(&to)).then_some(to)
}

/// Bound on the owner signatures a relayed `execTransaction` may carry.
pub const RELAY_SIGNATURES_MAX: usize = 32;

/// The hot key as relayer (K15): it may sign an EVM transaction that submits `execTransaction` to `safe`
/// (one of the Safes the signer configured for that key) when the outer transaction moves nothing itself
/// (value 0, no access list, fees within the cap) and the Safe transaction inside passes exactly the checks
/// an owner signer applies ([`check_safe_tx`]: call only, no self-call or control call, no refund, the
/// intent's destination and amount, the Safe as the intent's source). The relayer only pays gas: the
/// Safe moves funds only with its owners' signatures, which the Safe verifies.
pub fn check_relay(
    tx: &alloy_consensus::TxEip1559,
    req: &crate::EvmSignRequest,
    safe: Address,
    configured: &[Address],
    policy: &EvmPolicy,
) -> Result<(), SignerError> {
    use alloy_sol_types::SolCall;
    let intent = &req.intent;
    if req.chain_id != intent.chain_id.0 || tx.chain_id != intent.chain_id.0 {
        return Err(mismatch("chain_id", intent.chain_id.0, tx.chain_id));
    }
    if tx.nonce != req.nonce {
        return Err(mismatch("nonce", req.nonce, tx.nonce));
    }
    if !tx.value.is_zero() {
        return Err(mismatch("native value", 0, tx.value));
    }
    if !tx.access_list.is_empty() {
        return Err(SignerError::Refused("a Safe relay carries no access list".into()));
    }
    let exec = crate::evm::execTransactionCall::abi_decode_validate(&tx.input)
        .map_err(|e| SignerError::Refused(format!("Safe execTransaction call data is not canonical ABI: {e}")))?;
    if exec.abi_encode() != tx.input.as_ref() {
        return Err(SignerError::Refused("Safe execTransaction call data is not canonical ABI".into()));
    }
    let signatures = exec.signatures.len();
    if signatures == 0
        || !signatures.is_multiple_of(SAFE_SIGNATURE_LEN)
        || signatures / SAFE_SIGNATURE_LEN > RELAY_SIGNATURES_MAX
    {
        return Err(SignerError::Refused(format!(
            "Safe execTransaction carries {signatures} signature bytes; owner signatures are 65 bytes each, 1 to \
             {RELAY_SIGNATURES_MAX} of them"
        )));
    }
    let inner = SafeSignRequest {
        key_id: req.key_id.clone(),
        chain_id: req.chain_id,
        safe_address: safe,
        tx: SafeTxFields {
            to: exec.to,
            value: exec.value,
            data: exec.data.clone(),
            operation: exec.operation,
            safe_tx_gas: exec.safeTxGas,
            base_gas: exec.baseGas,
            gas_price: exec.gasPrice,
            gas_token: exec.gasToken,
            refund_receiver: exec.refundReceiver,
            // Not part of execTransaction: the Safe uses its own current nonce.
            nonce: U256::ZERO,
        },
        intent: intent.clone(),
        approvals: Vec::new(),
        actor: req.actor.clone(),
        terminal: req.terminal.clone(),
    };
    check_safe_tx(&inner, configured, policy)?;
    crate::evm::check_fee_cap(tx, policy)
}

/// Safe's packed form of one owner signature: r||s||v with v = 27 + recovery id.
pub fn to_safe_signature(mut rsv: [u8; 65]) -> Result<[u8; 65], SignerError> {
    rsv[64] = match rsv[64] {
        0 | 1 => rsv[64] + 27,
        v => return Err(SignerError::Internal(format!("recovery id {v} is not 0 or 1"))),
    };
    Ok(rsv)
}

#[cfg(test)]
mod tests {
    use kinko_core::{Amount, ChainId};

    use super::*;

    const CHAIN: u64 = 31337;

    fn safe() -> Address {
        "0x00000000000000000000000000000000000005af".parse().unwrap()
    }

    fn dest() -> Address {
        "0x00000000000000000000000000000000000000aa".parse().unwrap()
    }

    fn request(tx: SafeTxFields) -> SafeSignRequest {
        SafeSignRequest {
            key_id: "owner-1".into(),
            chain_id: CHAIN,
            safe_address: safe(),
            tx,
            intent: Intent {
                id: "w1".into(),
                asset: "ETH".parse().unwrap(),
                chain_id: ChainId(CHAIN),
                amount: Amount::from_base_units(1000),
                destination: format!("{:#x}", dest()),
                source_wallet: format!("{:#x}", safe()),
                customer_id: "c1".into(),
                reason: "cold withdrawal".into(),
            },
            approvals: vec![],
            actor: "op".into(),
            terminal: "t".into(),
        }
    }

    fn transfer() -> SafeTxFields {
        SafeTxFields {
            to: dest(),
            value: U256::from(1000),
            data: Bytes::new(),
            operation: OPERATION_CALL,
            safe_tx_gas: U256::ZERO,
            base_gas: U256::ZERO,
            gas_price: U256::ZERO,
            gas_token: Address::ZERO,
            refund_receiver: Address::ZERO,
            nonce: U256::from(3),
        }
    }

    fn refusal(tx: SafeTxFields) -> String {
        match check_safe_tx(&request(tx), &[safe()], &EvmPolicy::default()) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("expected a refusal"),
        }
    }

    #[test]
    fn k15_plain_transfer_matching_the_intent_passes() {
        let checked = check_safe_tx(&request(transfer()), &[safe()], &EvmPolicy::default()).unwrap();
        assert_eq!(checked.nonce, 3);
        assert_eq!(checked.preimage.len(), 66);
        assert_eq!(keccak256(&checked.preimage), checked.hash);
    }

    #[test]
    fn k15_refusals_name_the_problem() {
        let mut t = transfer();
        t.operation = OPERATION_DELEGATECALL;
        assert!(refusal(t).contains("delegatecall"));
        let mut t = transfer();
        t.to = safe();
        assert!(refusal(t).contains("calls the Safe"));
        let mut t = transfer();
        t.gas_price = U256::from(1);
        assert!(refusal(t).contains("gas refund"));
        let mut t = transfer();
        t.refund_receiver = dest();
        assert!(refusal(t).contains("refund"));
        let mut t = transfer();
        t.value = U256::from(1001);
        assert!(refusal(t).contains("amount"));
        let mut t = transfer();
        t.to = "0x00000000000000000000000000000000000000bb".parse().unwrap();
        assert!(refusal(t).contains("destination"));
        // Not one of the signer's Safes.
        let got = check_safe_tx(&request(transfer()), &[dest()], &EvmPolicy::default());
        assert!(matches!(got, Err(SignerError::Refused(m)) if m.contains("not a Safe this signer has configured")));
    }
}
