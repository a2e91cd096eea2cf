//! JSON-RPC block source and broadcaster (M5, M9b) over alloy's HTTP provider. Every call is bounded by
//! [`RPC_TIMEOUT`]: a hung node must stall one cycle, not the watcher or pipeline forever. Errors name
//! the call that failed and never carry the node URL (it may embed an API key).

use std::time::Duration;

use alloy_consensus::Transaction as _;
use alloy_network::{Ethereum, ReceiptResponse, TransactionResponse};
use alloy_primitives::{Address, B256, U256};
use alloy_provider::{Provider, RootProvider};
use alloy_rpc_types_eth::BlockNumberOrTag;
use alloy_transport::TransportError;
use kinko_core::reorg::BlockHeader;

use super::FeeEstimate;

/// Upper bound on one JSON-RPC round trip.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(15);
/// Blocks of history `eth_feeHistory` looks at.
pub const FEE_HISTORY_BLOCKS: u64 = 10;
/// The reward percentile taken as the priority fee.
pub const FEE_REWARD_PERCENTILE: f64 = 50.0;
/// Floor on the priority fee: below it many nodes will not relay or include a transaction.
pub const PRIORITY_FEE_MIN_WEI: u128 = 1_000_000_000;

#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("node URL is invalid: {0}")]
    BadUrl(String),
    #[error("{call}: timed out after {}s", RPC_TIMEOUT.as_secs())]
    Timeout { call: &'static str },
    #[error("{call}: {message}")]
    Transport { call: &'static str, message: String },
    #[error("{call}: the node rejected it: {message}")]
    Rejected { call: &'static str, message: String },
    #[error("{call}: unexpected response: {message}")]
    BadResponse { call: &'static str, message: String },
}

/// A block as deposit detection needs it: its place in the chain and the native-value transfers in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EvmBlock {
    pub header: BlockHeader,
    pub transfers: Vec<NativeTransfer>,
}

/// A top-level transaction that moves native value to an address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NativeTransfer {
    pub tx_hash: [u8; 32],
    pub from: Address,
    pub to: Address,
    pub value_wei: u128,
    pub nonce: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NonceAt {
    Latest,
    Pending,
}

/// What the node said to a broadcast. Re-sending a transaction is harmless, so "already known" is
/// success; "nonce too low" means some transaction with this nonce was mined, which the caller must
/// resolve by hash (C5), not by re-sending.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendOutcome {
    Accepted,
    AlreadyKnown,
    NonceConsumed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxReceiptInfo {
    pub block_number: u64,
    pub block_hash: [u8; 32],
    pub gas_used: u64,
    pub effective_gas_price: u128,
    pub success: bool,
}

#[derive(Clone, Debug)]
pub struct EvmRpc {
    provider: RootProvider<Ethereum>,
}

pub(crate) async fn timed<T>(
    call: &'static str,
    fut: impl Future<Output = Result<T, TransportError>>,
) -> Result<T, RpcError> {
    match tokio::time::timeout(RPC_TIMEOUT, fut).await {
        Err(_) => Err(RpcError::Timeout { call }),
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(classify(call, &e)),
    }
}

fn classify(call: &'static str, e: &TransportError) -> RpcError {
    match e.as_error_resp() {
        Some(payload) => RpcError::Rejected { call, message: format!("{} (code {})", payload.message, payload.code) },
        // Transport errors from reqwest can include the URL; strip to the kind of failure.
        None => RpcError::Transport { call, message: redact_url(&e.to_string()) },
    }
}

/// Removes anything that looks like a URL from an error message: node URLs often carry API keys.
fn redact_url(message: &str) -> String {
    message.split_whitespace().map(|w| if w.contains("://") { "<url>" } else { w }).collect::<Vec<_>>().join(" ")
}

fn u256_to_u128(call: &'static str, field: &str, v: U256) -> Result<u128, RpcError> {
    u128::try_from(v).map_err(|_| RpcError::BadResponse { call, message: format!("{field} {v} exceeds u128") })
}

impl EvmRpc {
    pub fn new(url: &str) -> Result<Self, RpcError> {
        let parsed: url::Url = url.parse().map_err(|e: url::ParseError| RpcError::BadUrl(e.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(RpcError::BadUrl("scheme must be http or https".into()));
        }
        Ok(EvmRpc { provider: RootProvider::new_http(parsed) })
    }

    /// The underlying provider, for the token calls in [`super::erc20`].
    pub(crate) fn provider(&self) -> &RootProvider<Ethereum> {
        &self.provider
    }

    pub async fn chain_id(&self) -> Result<u64, RpcError> {
        timed("eth_chainId", self.provider.get_chain_id().into_future()).await
    }

    pub async fn block_number(&self) -> Result<u64, RpcError> {
        timed("eth_blockNumber", self.provider.get_block_number().into_future()).await
    }

    /// A block with its native-value transfers, or `None` when the node has no block at that height.
    pub async fn block(&self, number: u64) -> Result<Option<EvmBlock>, RpcError> {
        const CALL: &str = "eth_getBlockByNumber";
        let block =
            timed(CALL, self.provider.get_block_by_number(BlockNumberOrTag::Number(number)).full().into_future())
                .await?;
        let Some(block) = block else { return Ok(None) };
        let header = BlockHeader {
            number: block.header.number,
            hash: block.header.hash.0,
            parent_hash: block.header.parent_hash.0,
        };
        if header.number != number {
            return Err(RpcError::BadResponse {
                call: CALL,
                message: format!("asked for block {number}, got {}", header.number),
            });
        }
        let txs = block
            .transactions
            .as_transactions()
            .ok_or(RpcError::BadResponse { call: CALL, message: "block came without full transactions".into() })?;
        let mut transfers = Vec::new();
        for tx in txs {
            let (Some(to), value) = (tx.to(), tx.value()) else { continue };
            if value.is_zero() {
                continue;
            }
            let Ok(value_wei) = u128::try_from(value) else {
                tracing::warn!(tx = %tx.tx_hash(), %value, "transfer value exceeds u128; skipped");
                continue;
            };
            transfers.push(NativeTransfer {
                tx_hash: tx.tx_hash().0,
                from: tx.from(),
                to,
                value_wei,
                nonce: tx.nonce(),
            });
        }
        Ok(Some(EvmBlock { header, transfers }))
    }

    pub async fn block_hash(&self, number: u64) -> Result<Option<[u8; 32]>, RpcError> {
        let block = timed(
            "eth_getBlockByNumber",
            self.provider.get_block_by_number(BlockNumberOrTag::Number(number)).into_future(),
        )
        .await?;
        Ok(block.map(|b| b.header.hash.0))
    }

    /// Fees from `eth_feeHistory`: the median recent priority fee (at least [`PRIORITY_FEE_MIN_WEI`])
    /// and twice the next block's base fee on top, which survives six full blocks of base-fee rises.
    pub async fn fee_estimate(&self) -> Result<FeeEstimate, RpcError> {
        const CALL: &str = "eth_feeHistory";
        let history = timed(
            CALL,
            self.provider.get_fee_history(FEE_HISTORY_BLOCKS, BlockNumberOrTag::Latest, &[FEE_REWARD_PERCENTILE]),
        )
        .await?;
        let base_fee_next = history
            .next_block_base_fee()
            .ok_or(RpcError::BadResponse { call: CALL, message: "no base fee (is EIP-1559 active?)".into() })?;
        let mut rewards: Vec<u128> =
            history.reward.unwrap_or_default().iter().filter_map(|r| r.first().copied()).collect();
        rewards.sort_unstable();
        let median = rewards.get(rewards.len() / 2).copied().unwrap_or(0);
        let priority = median.max(PRIORITY_FEE_MIN_WEI);
        let max_fee = base_fee_next
            .checked_mul(2)
            .and_then(|x| x.checked_add(priority))
            .ok_or(RpcError::BadResponse { call: CALL, message: "fee overflows u128".into() })?;
        Ok(FeeEstimate { max_fee_per_gas: max_fee, max_priority_fee_per_gas: priority })
    }

    pub async fn nonce(&self, address: Address, at: NonceAt) -> Result<u64, RpcError> {
        let req = self.provider.get_transaction_count(address);
        let req = match at {
            NonceAt::Latest => req.latest(),
            NonceAt::Pending => req.pending(),
        };
        timed("eth_getTransactionCount", req.into_future()).await
    }

    pub async fn send_raw(&self, raw: &[u8]) -> Result<SendOutcome, RpcError> {
        const CALL: &str = "eth_sendRawTransaction";
        let fut = self.provider.send_raw_transaction(raw);
        match tokio::time::timeout(RPC_TIMEOUT, fut).await {
            Err(_) => Err(RpcError::Timeout { call: CALL }),
            Ok(Ok(_)) => Ok(SendOutcome::Accepted),
            Ok(Err(e)) => {
                let Some(payload) = e.as_error_resp() else { return Err(classify(CALL, &e)) };
                let m = payload.message.to_ascii_lowercase();
                // Wording differs per client (geth, reth, anvil, erigon, nethermind).
                if m.contains("already known")
                    || m.contains("already imported")
                    || m.contains("already exists")
                    || m.contains("known transaction")
                    || m.contains("already in")
                {
                    Ok(SendOutcome::AlreadyKnown)
                } else if m.contains("nonce too low") || m.contains("nonce is too low") || m.contains("oldnonce") {
                    Ok(SendOutcome::NonceConsumed)
                } else {
                    Err(classify(CALL, &e))
                }
            }
        }
    }

    pub async fn receipt(&self, tx_hash: [u8; 32]) -> Result<Option<TxReceiptInfo>, RpcError> {
        const CALL: &str = "eth_getTransactionReceipt";
        let receipt = timed(CALL, self.provider.get_transaction_receipt(B256::from(tx_hash)).into_future()).await?;
        let Some(r) = receipt else { return Ok(None) };
        // A receipt without a block is a pending one some nodes return; treat it as not yet mined.
        let (Some(block_number), Some(block_hash)) = (r.block_number(), r.block_hash()) else { return Ok(None) };
        Ok(Some(TxReceiptInfo {
            block_number,
            block_hash: block_hash.0,
            gas_used: r.gas_used(),
            effective_gas_price: r.effective_gas_price(),
            success: r.status(),
        }))
    }

    pub async fn balance(&self, address: Address) -> Result<u128, RpcError> {
        const CALL: &str = "eth_getBalance";
        let v = timed(CALL, self.provider.get_balance(address).into_future()).await?;
        u256_to_u128(CALL, "balance", v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// C9, L1: node URLs (which may carry API keys) never appear in errors or logs.
    #[test]
    fn urls_are_redacted_from_errors() {
        let m = redact_url("error sending request for url (https://eth.example/v2/SECRETKEY) refused");
        assert!(!m.contains("SECRETKEY"), "{m}");
        assert!(matches!(EvmRpc::new("ftp://x"), Err(RpcError::BadUrl(_))));
        assert!(matches!(EvmRpc::new("not a url"), Err(RpcError::BadUrl(_))));
    }
}
