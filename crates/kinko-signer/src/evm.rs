//! The signer's own view of an EVM payload: decode it (alloy-consensus, independent of whichever builder
//! made it), compare every value-moving field with the intent, and judge fee bumps (K20, O5).

use std::collections::BTreeMap;

use alloy_consensus::{SignableTransaction, TxEip1559};
use alloy_primitives::{Address, TxKind, U256};
use alloy_rlp::Decodable;
use alloy_sol_types::{SolCall, sol};
use kinko_core::asset::{AssetKind, AssetSpec};
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
    /// Asset code → its ERC-20 contract on this chain. The signer's own map, not the caller's: a token
    /// intent is only signed as a `transfer` call to exactly this contract.
    pub tokens: BTreeMap<String, Address>,
}

impl Default for EvmPolicy {
    fn default() -> Self {
        EvmPolicy { native_asset: "ETH".into(), fee_wei_max: FEE_WEI_MAX_DEFAULT, tokens: BTreeMap::new() }
    }
}

impl EvmPolicy {
    /// Adds an ERC-20 asset to the token map; native assets and other chains' tokens are refused so a
    /// configuration mistake cannot map one chain's code to another chain's contract.
    pub fn add_token(&mut self, chain_id: u64, spec: &AssetSpec) -> Result<(), SignerError> {
        match &spec.kind {
            AssetKind::Erc20 { chain_id: c, contract } if c.0 == chain_id => {
                let contract: Address = contract.parse().map_err(|_| {
                    SignerError::Malformed(format!("asset {}: contract {contract:?} is not an address", spec.code))
                })?;
                self.tokens.insert(spec.code.to_string(), contract);
                Ok(())
            }
            AssetKind::Erc20 { chain_id: c, .. } => Err(SignerError::Malformed(format!(
                "asset {} is a token on chain {c}, not on chain {chain_id}",
                spec.code
            ))),
            AssetKind::EvmNative { .. } => {
                Err(SignerError::Malformed(format!("asset {} is a native coin, not a token", spec.code)))
            }
        }
    }
}

sol! {
    // ERC-20: the one call the signer signs, and the ones that hand spending power to someone else.
    function transfer(address to, uint256 amount) returns (bool);
    function approve(address spender, uint256 amount) returns (bool);
    function transferFrom(address from, address to, uint256 amount) returns (bool);
    function increaseAllowance(address spender, uint256 addedValue) returns (bool);
    function decreaseAllowance(address spender, uint256 subtractedValue) returns (bool);
    function permit(address owner, address spender, uint256 value, uint256 deadline, uint8 v, bytes32 r, bytes32 s);
    function setApprovalForAll(address operator, bool approved);
    // Safe (Gnosis) multisig: `operation` is Enum.Operation { Call, DelegateCall }. The Bybit loss was a
    // Safe transaction whose operation was delegatecall into a contract that rewrote the Safe's master copy.
    function execTransaction(
        address to,
        uint256 value,
        bytes data,
        uint8 operation,
        uint256 safeTxGas,
        uint256 baseGas,
        uint256 gasPrice,
        address gasToken,
        address refundReceiver,
        bytes signatures
    ) returns (bool success);
    // Proxy upgrades (UUPS / transparent): replace the code behind the address.
    function upgradeTo(address newImplementation);
    function upgradeToAndCall(address newImplementation, bytes data);
    // Ownership and multisig control.
    function transferOwnership(address newOwner);
    function renounceOwnership();
    function addOwnerWithThreshold(address owner, uint256 _threshold);
    function removeOwner(address prevOwner, address owner, uint256 _threshold);
    function swapOwner(address prevOwner, address oldOwner, address newOwner);
    function changeThreshold(uint256 _threshold);
    function enableModule(address module);
    function disableModule(address prevModule, address module);
    function setGuard(address guard);
    function setFallbackHandler(address handler);
}

/// Safe's `Enum.Operation.DelegateCall`.
pub const SAFE_OPERATION_DELEGATECALL: u8 = 1;
/// A plain ERC-20 transfer: selector + two 32-byte words.
pub const ERC20_TRANSFER_CALLDATA_LEN: usize = 4 + 32 + 32;

/// What the call data of a transaction does, as far as the signer is willing to sign it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EvmCall {
    /// No call data: a plain native transfer (or a call to a contract's receive function).
    None,
    /// ERC-20 `transfer(recipient, amount)`, canonically encoded.
    Erc20Transfer { recipient: Address, amount: U256 },
}

fn refused_call(selector: [u8; 4], name: &str, why: &str) -> SignerError {
    SignerError::Refused(format!("{name} (0x{}) {why}", hex::encode(selector)))
}

/// Decodes call data with alloy's ABI decoder and refuses every class but a plain ERC-20 transfer,
/// naming what it is: the operator reading the refusal must see "approve" or "delegatecall", not
/// "bad payload" (O5).
pub fn classify_calldata(input: &[u8]) -> Result<EvmCall, SignerError> {
    if input.is_empty() {
        return Ok(EvmCall::None);
    }
    let Some(selector) = input.get(..4).and_then(|s| <[u8; 4]>::try_from(s).ok()) else {
        return Err(SignerError::Refused(format!(
            "call data of {} bytes is shorter than a function selector",
            input.len()
        )));
    };
    const ALLOWANCE: &str = "grants another address power to spend the wallet's tokens; never signed";
    const THIRD_PARTY: &str = "moves tokens through an allowance; the hot wallet only sends its own";
    const UPGRADE: &str = "is a proxy upgrade: it replaces the contract's code; never signed";
    const CONTROL: &str = "changes who controls the contract (owners, threshold, modules, guard); never signed";
    match selector {
        transferCall::SELECTOR => {
            if input.len() != ERC20_TRANSFER_CALLDATA_LEN {
                return Err(SignerError::Refused(format!(
                    "ERC-20 transfer (0xa9059cbb) call data is {} bytes, a plain transfer is exactly \
                     {ERC20_TRANSFER_CALLDATA_LEN}",
                    input.len()
                )));
            }
            // Validation rejects an address word with non-zero padding: such bytes could be read two ways.
            let call = transferCall::abi_decode_validate(input).map_err(|e| {
                SignerError::Refused(format!("ERC-20 transfer (0xa9059cbb) call data is not canonical ABI: {e}"))
            })?;
            if call.abi_encode() != input {
                return Err(SignerError::Refused("ERC-20 transfer (0xa9059cbb) call data is not canonical ABI".into()));
            }
            Ok(EvmCall::Erc20Transfer { recipient: call.to, amount: call.amount })
        }
        execTransactionCall::SELECTOR => Err(match execTransactionCall::abi_decode(input) {
            Ok(exec) if exec.operation == SAFE_OPERATION_DELEGATECALL => refused_call(
                selector,
                "Safe execTransaction",
                &format!(
                    "with operation = delegatecall to {:#x}: it runs foreign code with the Safe's own storage \
                     and can rewrite its owners or master copy; never signed",
                    exec.to
                ),
            ),
            Ok(exec) => refused_call(
                selector,
                "Safe execTransaction",
                &format!("with operation = call to {:#x}: no intent class allows Safe transactions", exec.to),
            ),
            Err(_) => refused_call(selector, "Safe execTransaction", "that does not decode; never signed"),
        }),
        approveCall::SELECTOR => Err(refused_call(selector, "ERC-20 approve", ALLOWANCE)),
        increaseAllowanceCall::SELECTOR => Err(refused_call(selector, "ERC-20 increaseAllowance", ALLOWANCE)),
        decreaseAllowanceCall::SELECTOR => Err(refused_call(selector, "ERC-20 decreaseAllowance", ALLOWANCE)),
        permitCall::SELECTOR => Err(refused_call(selector, "ERC-2612 permit", ALLOWANCE)),
        setApprovalForAllCall::SELECTOR => Err(refused_call(selector, "setApprovalForAll", ALLOWANCE)),
        transferFromCall::SELECTOR => Err(refused_call(selector, "ERC-20 transferFrom", THIRD_PARTY)),
        upgradeToCall::SELECTOR => Err(refused_call(selector, "upgradeTo", UPGRADE)),
        upgradeToAndCallCall::SELECTOR => Err(refused_call(selector, "upgradeToAndCall", UPGRADE)),
        transferOwnershipCall::SELECTOR => Err(refused_call(selector, "transferOwnership", CONTROL)),
        renounceOwnershipCall::SELECTOR => Err(refused_call(selector, "renounceOwnership", CONTROL)),
        addOwnerWithThresholdCall::SELECTOR => Err(refused_call(selector, "Safe addOwnerWithThreshold", CONTROL)),
        removeOwnerCall::SELECTOR => Err(refused_call(selector, "Safe removeOwner", CONTROL)),
        swapOwnerCall::SELECTOR => Err(refused_call(selector, "Safe swapOwner", CONTROL)),
        changeThresholdCall::SELECTOR => Err(refused_call(selector, "Safe changeThreshold", CONTROL)),
        enableModuleCall::SELECTOR => Err(refused_call(selector, "Safe enableModule", CONTROL)),
        disableModuleCall::SELECTOR => Err(refused_call(selector, "Safe disableModule", CONTROL)),
        setGuardCall::SELECTOR => Err(refused_call(selector, "Safe setGuard", CONTROL)),
        setFallbackHandlerCall::SELECTOR => Err(refused_call(selector, "Safe setFallbackHandler", CONTROL)),
        _ => Err(SignerError::Refused(format!(
            "unrecognised calldata 0x{} ({} bytes): only plain native and ERC-20 transfers are signed",
            hex::encode(selector),
            input.len()
        ))),
    }
}

fn mismatch(field: &'static str, expected: impl ToString, actual: impl ToString) -> SignerError {
    SignerError::IntentMismatch { field, expected: expected.to_string(), actual: actual.to_string() }
}

/// The one rule for what a transfer may be (shared by `sign_evm` and Safe owner signatures, so the two can
/// never drift): a native transfer is `to` = destination and `value` = amount with no call; a token transfer
/// is a call to the signer's OWN contract for the asset with no value and exactly `transfer(destination,
/// amount)`. `what` names the thing checked in refusals ("payload", "Safe transaction").
pub(crate) fn check_transfer_matches_intent(
    to: Address,
    value: U256,
    call: EvmCall,
    intent: &Intent,
    policy: &EvmPolicy,
    what: &str,
) -> Result<(), SignerError> {
    if intent.asset.as_str() == policy.native_asset {
        if call != EvmCall::None {
            return Err(SignerError::Refused(format!(
                "intent is a native {} transfer, but the {what} calls a contract",
                policy.native_asset
            )));
        }
        let to = format!("{to:#x}");
        if !to.eq_ignore_ascii_case(&intent.destination) {
            return Err(mismatch("destination", &intent.destination, to));
        }
        if value != U256::from(intent.amount.base_units()) {
            return Err(mismatch("amount", intent.amount, value));
        }
    } else {
        let Some(contract) = policy.tokens.get(intent.asset.as_str()) else {
            return Err(SignerError::Refused(format!(
                "asset {} is neither the native coin {} nor a token the signer knows on chain {}",
                intent.asset, policy.native_asset, intent.chain_id
            )));
        };
        if to != *contract {
            return Err(mismatch("token contract", format!("{contract:#x}"), format!("{to:#x}")));
        }
        if !value.is_zero() {
            return Err(mismatch("native value", 0, value));
        }
        let EvmCall::Erc20Transfer { recipient, amount } = call else {
            return Err(SignerError::Refused(format!(
                "intent is a {} token transfer, but the {what} carries no transfer call",
                intent.asset
            )));
        };
        let recipient = format!("{recipient:#x}");
        if !recipient.eq_ignore_ascii_case(&intent.destination) {
            return Err(mismatch("token recipient", &intent.destination, recipient));
        }
        if amount != U256::from(intent.amount.base_units()) {
            return Err(mismatch("token amount", intent.amount, amount));
        }
    }
    Ok(())
}

/// Compares the decoded transaction with the request, the intent and the key's address. Every field
/// that moves value is checked; anything but a plain native or ERC-20 transfer is refused.
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
        TxKind::Call(to) => to,
        TxKind::Create => return Err(SignerError::Refused("contract creation is never signed".into())),
    };
    // Before looking at the intent: control-changing call data is refused whatever the intent says.
    let call = classify_calldata(&tx.input)?;
    if !tx.access_list.is_empty() {
        return Err(SignerError::Refused("a plain transfer carries no access list".into()));
    }
    check_transfer_matches_intent(to, tx.value, call, intent, policy, "payload")?;
    check_fee_cap(tx, policy)
}

/// The fee a transaction may burn at most (gas limit × max fee per gas) is within the policy's cap, and its
/// tip is not above its max fee.
pub(crate) fn check_fee_cap(tx: &TxEip1559, policy: &EvmPolicy) -> Result<(), SignerError> {
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
