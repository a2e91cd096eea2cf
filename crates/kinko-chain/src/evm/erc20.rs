//! ERC-20 tokens on EVM chains (K22, C2, M6): the `transfer` call a withdrawal sends, the `Transfer` logs
//! deposit detection reads, and a `balanceOf` reader. Every encoding and decoding goes through
//! alloy-sol-types: nothing here slices ABI words by hand.
//!
//! Deposit logs are fetched per block by the block's hash (EIP-234 `blockHash` filter), so the logs are
//! exactly those of the block the watcher verified against its window, never of a sibling that
//! replaced it between two calls. Each log the node returns is checked before use (emitting contract,
//! block, topic count, data length, presence of tx hash and log index); a log that fails is an error
//! for the whole block (the watcher retries and logs it), never a panic and never a guess.

use std::collections::BTreeSet;

use alloy_consensus::{SignableTransaction, TxEip1559};
use alloy_primitives::{Address, B256, Bytes, TxKind, U256, keccak256};
use alloy_provider::Provider;
use alloy_rpc_types_eth::{Filter, TransactionRequest};
use alloy_sol_types::abi::token::WordToken;
use alloy_sol_types::{SolCall, SolEvent, SolType, sol, sol_data};

use super::FeeEstimate;
use super::build::UnsignedEvmTx;
use super::rpc::{EvmRpc, RpcError, timed};

sol! {
    /// ERC-20 (EIP-20) as far as custody needs it.
    event Transfer(address indexed from, address indexed to, uint256 value);
    function transfer(address to, uint256 amount) returns (bool);
    function balanceOf(address owner) returns (uint256);
}

/// Default gas limit of a token `transfer`: a standard ERC-20 transfer to a fresh holder uses ~52k gas
/// (~35k to an existing one); 100k leaves room for tokens with hooks or extra bookkeeping, and at the
/// signer's fee cap it still bounds the fee. Configurable per token (`gas_limit`).
pub const TOKEN_TRANSFER_GAS_DEFAULT: u64 = 100_000;
/// Upper bound on a configured token gas limit: a `transfer` needing more is not a plain token.
pub const TOKEN_TRANSFER_GAS_MAX: u64 = 500_000;
/// Topics of a standard ERC-20 `Transfer` log: the signature, `from` and `to`. (ERC-721 uses the same
/// signature with a fourth topic, the token id, and is refused here.)
pub const TRANSFER_LOG_TOPICS: usize = 3;
/// Data of a standard ERC-20 `Transfer` log: one 32-byte word, the value.
pub const TRANSFER_LOG_DATA_LEN: usize = 32;
/// Bound on logs accepted for one block: far above any real block's token transfers to configured
/// contracts, low enough that a misbehaving node cannot make the watcher allocate without limit.
pub const LOGS_PER_BLOCK_MAX: usize = 20_000;

/// The ERC-20 `transfer(to, amount)` call data, ABI-encoded by alloy-sol-types.
pub fn transfer_calldata(to: Address, amount: u128) -> Vec<u8> {
    transferCall { to, amount: U256::from(amount) }.abi_encode()
}

/// A token transfer from the custodian's wallet: an EIP-1559 transaction to the token `contract` with no
/// native value and `transfer(to, amount)` as input. The chain id is always set (C3). Network fees are
/// paid in the chain's native coin by the sending wallet.
pub fn token_transfer(
    chain_id: u64,
    nonce: u64,
    contract: Address,
    to: Address,
    amount: u128,
    fees: FeeEstimate,
    gas_limit: u64,
) -> UnsignedEvmTx {
    let tx = TxEip1559 {
        chain_id,
        nonce,
        gas_limit,
        max_fee_per_gas: fees.max_fee_per_gas,
        max_priority_fee_per_gas: fees.max_priority_fee_per_gas,
        to: TxKind::Call(contract),
        value: U256::ZERO,
        access_list: Default::default(),
        input: Bytes::from(transfer_calldata(to, amount)),
    };
    let payload = tx.encoded_for_signing();
    let signing_hash = keccak256(&payload).0;
    UnsignedEvmTx { payload, signing_hash }
}

/// One ERC-20 `Transfer` log, checked and decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenTransfer {
    /// The token contract that emitted the log.
    pub contract: Address,
    pub from: Address,
    pub to: Address,
    pub value: U256,
    pub tx_hash: [u8; 32],
    /// The log's index in its block: part of the deposit id, so two transfers in one transaction differ.
    pub log_index: u64,
}

/// Why a log returned by the node cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    #[error("log of contract {0} that was not asked for")]
    UnexpectedContract(Address),
    #[error("log of block {got:?}, not of the block asked for ({expected})")]
    WrongBlock { expected: String, got: Option<String> },
    #[error("log marked removed (re-orged) in a by-hash query")]
    Removed,
    #[error("log has no {0}")]
    Missing(&'static str),
    #[error("Transfer log has {0} topics, a standard ERC-20 Transfer has {TRANSFER_LOG_TOPICS}")]
    TopicCount(usize),
    #[error("log topic0 is not Transfer(address,address,uint256)")]
    NotTransfer,
    #[error("Transfer log data is {0} bytes, a standard ERC-20 Transfer has {TRANSFER_LOG_DATA_LEN}")]
    DataLen(usize),
    #[error("Transfer log does not decode: {0}")]
    Decode(String),
}

/// Checks one log from an `eth_getLogs` answer for block `block_hash` over `contracts`, and decodes it.
pub fn decode_transfer_log(
    log: &alloy_rpc_types_eth::Log,
    block_hash: &[u8; 32],
    contracts: &BTreeSet<Address>,
) -> Result<TokenTransfer, LogError> {
    let contract = log.address();
    if !contracts.contains(&contract) {
        return Err(LogError::UnexpectedContract(contract));
    }
    if log.block_hash.map(|h| h.0) != Some(*block_hash) {
        return Err(LogError::WrongBlock {
            expected: format!("0x{}", hex::encode(block_hash)),
            got: log.block_hash.map(|h| h.to_string()),
        });
    }
    if log.removed {
        return Err(LogError::Removed);
    }
    let tx_hash = log.transaction_hash.ok_or(LogError::Missing("transaction hash"))?.0;
    let log_index = log.log_index.ok_or(LogError::Missing("log index"))?;
    let topics = log.topics();
    if topics.first() != Some(&Transfer::SIGNATURE_HASH) {
        return Err(LogError::NotTransfer);
    }
    if topics.len() != TRANSFER_LOG_TOPICS {
        return Err(LogError::TopicCount(topics.len()));
    }
    let data_len = log.data().data.len();
    if data_len != TRANSFER_LOG_DATA_LEN {
        return Err(LogError::DataLen(data_len));
    }
    // The indexed `from` and `to` must be clean ABI addresses (upper 12 bytes zero): decoding alone would
    // silently truncate a dirty word into some other address.
    for topic in &topics[1..] {
        <sol_data::Address as SolType>::type_check(&WordToken(*topic)).map_err(|e| LogError::Decode(e.to_string()))?;
    }
    let event = Transfer::decode_log_data(log.data()).map_err(|e| LogError::Decode(e.to_string()))?;
    Ok(TokenTransfer { contract, from: event.from, to: event.to, value: event.value, tx_hash, log_index })
}

impl EvmRpc {
    /// The `Transfer` logs of `contracts` in the block with hash `block_hash`, checked and decoded, in log
    /// order. An empty contract set asks nothing.
    pub async fn token_transfers(
        &self,
        block_hash: [u8; 32],
        contracts: &BTreeSet<Address>,
    ) -> Result<Vec<TokenTransfer>, RpcError> {
        const CALL: &str = "eth_getLogs";
        if contracts.is_empty() {
            return Ok(Vec::new());
        }
        let filter = Filter::new()
            .at_block_hash(B256::from(block_hash))
            .address(contracts.iter().copied().collect::<Vec<_>>())
            .event_signature(Transfer::SIGNATURE_HASH);
        let logs = timed(CALL, self.provider().get_logs(&filter)).await?;
        if logs.len() > LOGS_PER_BLOCK_MAX {
            return Err(RpcError::BadResponse {
                call: CALL,
                message: format!("{} logs for one block, over {LOGS_PER_BLOCK_MAX}", logs.len()),
            });
        }
        logs.iter()
            .map(|l| {
                decode_transfer_log(l, &block_hash, contracts)
                    .map_err(|e| RpcError::BadResponse { call: CALL, message: e.to_string() })
            })
            .collect()
    }

    /// `balanceOf(holder)` of token `contract` at the latest block.
    pub async fn token_balance(&self, contract: Address, holder: Address) -> Result<U256, RpcError> {
        const CALL: &str = "eth_call";
        let input = balanceOfCall { owner: holder }.abi_encode();
        let req = TransactionRequest::default().to(contract).input(Bytes::from(input).into());
        let out = timed(CALL, self.provider().call(req).into_future()).await?;
        balanceOfCall::abi_decode_returns(&out)
            .map_err(|e| RpcError::BadResponse { call: CALL, message: format!("balanceOf return: {e}") })
    }

    /// `eth_estimateGas` for a call from `from` to `to` with `input` and no value, refused above `cap`.
    /// Useful to check a configured token gas limit against the contract before relying on it.
    pub async fn estimate_call_gas(
        &self,
        from: Address,
        to: Address,
        input: Vec<u8>,
        cap: u64,
    ) -> Result<u64, RpcError> {
        const CALL: &str = "eth_estimateGas";
        let req = TransactionRequest::default().from(from).to(to).input(Bytes::from(input).into());
        let gas = timed(CALL, self.provider().estimate_gas(req).into_future()).await?;
        if gas > cap {
            return Err(RpcError::BadResponse { call: CALL, message: format!("estimate {gas} is over the cap {cap}") });
        }
        Ok(gas)
    }
}

#[cfg(test)]
mod tests {
    use alloy_primitives::{LogData, address};

    use super::*;

    const TOKEN: Address = address!("00000000000000000000000000000000000000cc");
    const TO: Address = address!("70997970c51812dc3a010c7d01b50e0d17dc79c8");
    const BLOCK: [u8; 32] = [7; 32];

    fn log(topics: Vec<B256>, data: Vec<u8>) -> alloy_rpc_types_eth::Log {
        alloy_rpc_types_eth::Log {
            inner: alloy_primitives::Log { address: TOKEN, data: LogData::new_unchecked(topics, data.into()) },
            block_hash: Some(B256::from(BLOCK)),
            block_number: Some(5),
            block_timestamp: None,
            transaction_hash: Some(B256::from([9; 32])),
            transaction_index: Some(0),
            log_index: Some(3),
            removed: false,
        }
    }

    fn good() -> alloy_rpc_types_eth::Log {
        let from = Address::repeat_byte(0x11);
        let event = Transfer { from, to: TO, value: U256::from(1234u64) };
        let data = event.encode_log_data();
        log(data.topics().to_vec(), data.data.to_vec())
    }

    fn contracts() -> BTreeSet<Address> {
        BTreeSet::from([TOKEN])
    }

    /// K22, M6: a standard Transfer log decodes with its real log index.
    #[test]
    fn k22_transfer_log_decodes() {
        let t = decode_transfer_log(&good(), &BLOCK, &contracts()).unwrap();
        assert_eq!((t.contract, t.to, t.value, t.log_index), (TOKEN, TO, U256::from(1234u64), 3));
        assert_eq!(t.from, Address::repeat_byte(0x11));
    }

    /// K22, M6: malformed or foreign logs are errors, never panics or credits.
    #[test]
    fn k22_malformed_transfer_logs_are_errors() {
        let c = contracts();
        let mut l = good();
        l.inner.address = Address::repeat_byte(0xee);
        assert!(matches!(decode_transfer_log(&l, &BLOCK, &c), Err(LogError::UnexpectedContract(_))));
        assert!(matches!(decode_transfer_log(&good(), &[8; 32], &c), Err(LogError::WrongBlock { .. })));
        let mut l = good();
        l.removed = true;
        assert_eq!(decode_transfer_log(&l, &BLOCK, &c), Err(LogError::Removed));
        let mut l = good();
        l.log_index = None;
        assert_eq!(decode_transfer_log(&l, &BLOCK, &c), Err(LogError::Missing("log index")));
        let g = good();
        let topics = g.topics().to_vec();
        // ERC-721 shape: a fourth (token id) topic, no data.
        let mut four = topics.clone();
        four.push(B256::ZERO);
        assert_eq!(decode_transfer_log(&log(four, vec![]), &BLOCK, &c), Err(LogError::TopicCount(4)));
        assert_eq!(
            decode_transfer_log(&log(topics[..2].to_vec(), vec![0; 32]), &BLOCK, &c),
            Err(LogError::TopicCount(2))
        );
        assert_eq!(decode_transfer_log(&log(topics.clone(), vec![0; 31]), &BLOCK, &c), Err(LogError::DataLen(31)));
        assert_eq!(decode_transfer_log(&log(topics.clone(), vec![0; 64]), &BLOCK, &c), Err(LogError::DataLen(64)));
        assert_eq!(decode_transfer_log(&log(vec![], vec![]), &BLOCK, &c), Err(LogError::NotTransfer));
        let mut other = topics.clone();
        other[0] = B256::repeat_byte(1);
        assert_eq!(decode_transfer_log(&log(other, vec![0; 32]), &BLOCK, &c), Err(LogError::NotTransfer));
        // An address topic with dirty upper bytes is not a clean address.
        let mut dirty = topics;
        dirty[2] = B256::repeat_byte(0xff);
        assert!(matches!(decode_transfer_log(&log(dirty, vec![0; 32]), &BLOCK, &c), Err(LogError::Decode(_))));
    }

    /// K22: the withdrawal payload is a call to the contract with no value and `transfer(to, amount)`.
    #[test]
    fn k22_token_transfer_payload() {
        let fees = FeeEstimate { max_fee_per_gas: 3, max_priority_fee_per_gas: 1 };
        let u = token_transfer(31337, 4, TOKEN, TO, 5_000, fees, TOKEN_TRANSFER_GAS_DEFAULT);
        let tx = super::super::build::decode_unsigned(&u.payload).unwrap();
        assert_eq!((tx.to, tx.value, tx.chain_id, tx.nonce), (TxKind::Call(TOKEN), U256::ZERO, 31337, 4));
        let call = transferCall::abi_decode(&tx.input).unwrap();
        assert_eq!((call.to, call.amount), (TO, U256::from(5_000u64)));
        assert_eq!(tx.input.len(), 4 + 32 + 32);
    }
}
