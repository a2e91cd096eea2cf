//! Safe (Gnosis Safe 1.4.1) multisig, the builder's side (K15): the Safe transaction, its EIP-712 hash,
//! the owners' signatures packed the way `Safe.checkSignatures` reads them, the `execTransaction` call
//! data, and the Safe's nonce, threshold and owners read with `eth_call`.
//!
//! The signer never takes this module's hash on trust: kinko-signer recomputes it from the fields with
//! its own code (`kinko_signer::safe`), and the tests check both against the deployed contract's
//! `getTransactionHash`.

use std::time::Duration;

use alloy_network::Ethereum;
use alloy_primitives::{Address, B256, Bytes, U256};
use alloy_provider::{Provider, RootProvider};
use alloy_rpc_types_eth::{TransactionInput, TransactionRequest};
use alloy_sol_types::{Eip712Domain, SolCall, SolStruct, eip712_domain, sol};

sol! {
    /// Safe 1.4.1's `SAFE_TX_TYPEHASH` struct, field for field (the EIP-712 type string is derived from it).
    #[derive(Debug, PartialEq, Eq)]
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

    /// The parts of the Safe 1.4.1 ABI kinko uses.
    interface ISafe {
        function setup(
            address[] _owners,
            uint256 _threshold,
            address to,
            bytes data,
            address fallbackHandler,
            address paymentToken,
            uint256 payment,
            address paymentReceiver
        );
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
        function nonce() returns (uint256);
        function getThreshold() returns (uint256);
        function getOwners() returns (address[]);
        function getTransactionHash(
            address to,
            uint256 value,
            bytes data,
            uint8 operation,
            uint256 safeTxGas,
            uint256 baseGas,
            uint256 gasPrice,
            address gasToken,
            address refundReceiver,
            uint256 _nonce
        ) returns (bytes32);
    }

    interface ISafeProxyFactory {
        function createProxyWithNonce(address _singleton, bytes initializer, uint256 saltNonce) returns (address proxy);
    }
}

/// Safe's `Enum.Operation.Call`: the only operation kinko signs.
pub const OPERATION_CALL: u8 = 0;
/// Safe's `Enum.Operation.DelegateCall`: runs foreign code in the Safe's own storage (the Bybit loss).
pub const OPERATION_DELEGATECALL: u8 = 1;
/// One owner signature in Safe's packed form: r(32) || s(32) || v(1).
pub const SAFE_SIGNATURE_LEN: usize = 65;
/// Bound on the owners whose signatures one transaction carries (Safe itself has no limit; kinko's
/// Safes have a handful of owners).
pub const SAFE_SIGNATURES_MAX: usize = 32;
/// Bound on the owners list a Safe may report before kinko stops reading it.
pub const SAFE_OWNERS_MAX: usize = 64;
/// Upper bound on one `eth_call`.
pub const SAFE_RPC_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum SafeError {
    #[error("node URL is invalid: {0}")]
    BadUrl(String),
    #[error("{call}: {message}")]
    Rpc { call: &'static str, message: String },
    #[error("signatures: {0}")]
    Signatures(String),
    #[error("Safe answer does not decode: {0}")]
    Decode(String),
}

/// Safe 1.4.1's EIP-712 domain: `EIP712Domain(uint256 chainId,address verifyingContract)`, no name, no
/// version, no salt.
pub fn domain(chain_id: u64, safe: Address) -> Eip712Domain {
    eip712_domain! { chain_id: chain_id, verifying_contract: safe, }
}

/// The hash the owners sign (and `getTransactionHash` returns).
pub fn safe_tx_hash(tx: &SafeTx, chain_id: u64, safe: Address) -> B256 {
    tx.eip712_signing_hash(&domain(chain_id, safe))
}

/// A plain call (operation Call, no refund) of `value` wei and `data` to `to`, at the Safe's `nonce`.
pub fn plain_call(to: Address, value: U256, data: Bytes, nonce: u64) -> SafeTx {
    SafeTx {
        to,
        value,
        data,
        operation: OPERATION_CALL,
        safeTxGas: U256::ZERO,
        baseGas: U256::ZERO,
        gasPrice: U256::ZERO,
        gasToken: Address::ZERO,
        refundReceiver: Address::ZERO,
        nonce: U256::from(nonce),
    }
}

/// Packs owner signatures for `execTransaction`: each 65 bytes r||s||v with v 27/28 (a recovery id 0/1 is
/// moved up), sorted by owner address ascending, as `checkNSignatures` requires (it refuses a list that is
/// not strictly increasing with GS026). Refuses duplicates, other `v`s and more than
/// [`SAFE_SIGNATURES_MAX`].
pub fn pack_signatures(signatures: &[(Address, [u8; SAFE_SIGNATURE_LEN])]) -> Result<Bytes, SafeError> {
    if signatures.len() > SAFE_SIGNATURES_MAX {
        return Err(SafeError::Signatures(format!("{} signatures, over {SAFE_SIGNATURES_MAX}", signatures.len())));
    }
    let mut sorted = signatures.to_vec();
    sorted.sort_by_key(|(owner, _)| *owner);
    let mut out = Vec::with_capacity(sorted.len() * SAFE_SIGNATURE_LEN);
    for (i, (owner, sig)) in sorted.iter().enumerate() {
        if i > 0 && sorted[i - 1].0 == *owner {
            return Err(SafeError::Signatures(format!("owner {owner:#x} signed twice")));
        }
        let mut sig = *sig;
        sig[64] = match sig[64] {
            0 | 1 => sig[64] + 27,
            27 | 28 => sig[64],
            v => return Err(SafeError::Signatures(format!("owner {owner:#x}: v = {v}, an ECDSA signature has 27/28"))),
        };
        out.extend_from_slice(&sig);
    }
    Ok(out.into())
}

/// `execTransaction(tx…, signatures)` call data.
pub fn exec_transaction_calldata(tx: &SafeTx, signatures: Bytes) -> Vec<u8> {
    exec_transaction_call(tx, signatures).abi_encode()
}

/// `execTransaction(tx…, signatures)` as a typed call.
pub fn exec_transaction_call(tx: &SafeTx, signatures: Bytes) -> ISafe::execTransactionCall {
    ISafe::execTransactionCall {
        to: tx.to,
        value: tx.value,
        data: tx.data.clone(),
        operation: tx.operation,
        safeTxGas: tx.safeTxGas,
        baseGas: tx.baseGas,
        gasPrice: tx.gasPrice,
        gasToken: tx.gasToken,
        refundReceiver: tx.refundReceiver,
        signatures,
    }
}

/// A Safe's current state as its contract reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SafeState {
    pub nonce: u64,
    pub threshold: u64,
    pub owners: Vec<Address>,
}

pub(crate) fn provider(rpc_url: &str) -> Result<RootProvider<Ethereum>, SafeError> {
    let url: url::Url = rpc_url.parse().map_err(|e: url::ParseError| SafeError::BadUrl(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(SafeError::BadUrl("scheme must be http or https".into()));
    }
    Ok(RootProvider::new_http(url))
}

/// `eth_call` of `call` on `to` at the latest block, decoded with the call's own return type.
pub(crate) async fn eth_call<C: SolCall>(
    provider: &RootProvider<Ethereum>,
    name: &'static str,
    to: Address,
    call: &C,
) -> Result<C::Return, SafeError> {
    let req = TransactionRequest::default().to(to).input(TransactionInput::new(call.abi_encode().into()));
    let out = match tokio::time::timeout(SAFE_RPC_TIMEOUT, provider.call(req).into_future()).await {
        Err(_) => return Err(SafeError::Rpc { call: name, message: "timed out".into() }),
        Ok(Err(e)) => return Err(SafeError::Rpc { call: name, message: rpc_message(&e) }),
        Ok(Ok(out)) => out,
    };
    C::abi_decode_returns(&out).map_err(|e| SafeError::Decode(format!("{name}: {e}")))
}

/// The node's error message, without anything URL-like (node URLs may carry API keys).
pub(crate) fn rpc_message(e: &alloy_transport::TransportError) -> String {
    let m = match e.as_error_resp() {
        Some(p) => format!("{} (code {})", p.message, p.code),
        None => e.to_string(),
    };
    m.split_whitespace().map(|w| if w.contains("://") { "<url>" } else { w }).collect::<Vec<_>>().join(" ")
}

/// Reads the Safe's nonce, threshold and owners.
pub async fn read_state(rpc_url: &str, safe: Address) -> Result<SafeState, SafeError> {
    let p = provider(rpc_url)?;
    let nonce = eth_call(&p, "Safe.nonce", safe, &ISafe::nonceCall {}).await?;
    let threshold = eth_call(&p, "Safe.getThreshold", safe, &ISafe::getThresholdCall {}).await?;
    let owners = eth_call(&p, "Safe.getOwners", safe, &ISafe::getOwnersCall {}).await?;
    if owners.len() > SAFE_OWNERS_MAX {
        return Err(SafeError::Decode(format!("Safe reports {} owners, over {SAFE_OWNERS_MAX}", owners.len())));
    }
    let small = |what: &str, v: U256| {
        u64::try_from(v).map_err(|_| SafeError::Decode(format!("Safe {what} {v} does not fit in 64 bits")))
    };
    Ok(SafeState { nonce: small("nonce", nonce)?, threshold: small("threshold", threshold)?, owners })
}

/// The Safe contract's own `getTransactionHash` for `tx` (to cross-check [`safe_tx_hash`]).
pub async fn contract_tx_hash(rpc_url: &str, safe: Address, tx: &SafeTx) -> Result<B256, SafeError> {
    let p = provider(rpc_url)?;
    let call = ISafe::getTransactionHashCall {
        to: tx.to,
        value: tx.value,
        data: tx.data.clone(),
        operation: tx.operation,
        safeTxGas: tx.safeTxGas,
        baseGas: tx.baseGas,
        gasPrice: tx.gasPrice,
        gasToken: tx.gasToken,
        refundReceiver: tx.refundReceiver,
        _nonce: tx.nonce,
    };
    eth_call(&p, "Safe.getTransactionHash", safe, &call).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn k15_signatures_are_sorted_by_owner_and_v_is_27_or_28() {
        let low: Address = "0x0000000000000000000000000000000000000001".parse().unwrap();
        let high: Address = "0xff00000000000000000000000000000000000000".parse().unwrap();
        let mut a = [0xaa; 65];
        a[64] = 0;
        let mut b = [0xbb; 65];
        b[64] = 28;
        let packed = pack_signatures(&[(high, b), (low, a)]).unwrap();
        assert_eq!(packed.len(), 130);
        assert_eq!(packed[0], 0xaa, "the lower owner's signature comes first");
        assert_eq!(packed[64], 27);
        assert_eq!(packed[129], 28);
        assert!(pack_signatures(&[(low, a), (low, a)]).is_err(), "the same owner twice");
        let mut bad = a;
        bad[64] = 31;
        assert!(pack_signatures(&[(low, bad)]).is_err(), "eth_sign-style v is not produced by kinko");
    }

    #[test]
    fn k15_safe_tx_type_hash_is_safe_1_4_1s() {
        // SAFE_TX_TYPEHASH in Safe.sol 1.4.1.
        let expected: B256 = "0xbb8310d486368db6bd6f849402fdd73ad53d316b5a4b2644ad6efe0f941286d8".parse().unwrap();
        assert_eq!(plain_call(Address::ZERO, U256::ZERO, Bytes::new(), 0).eip712_type_hash(), expected);
    }
}
