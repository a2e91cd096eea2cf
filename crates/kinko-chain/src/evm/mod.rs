//! The EVM adapter (Ethereum and EVM-compatible chains), on alloy.

pub mod address;
pub mod build;
pub mod erc20;
pub mod rpc;
pub mod safe;

/// Gas a plain value transfer to an account without code uses; it is exact, so no estimate is needed.
pub const NATIVE_TRANSFER_GAS: u64 = 21_000;

/// EIP-1559 fee bids, in wei per gas.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FeeEstimate {
    pub max_fee_per_gas: u128,
    pub max_priority_fee_per_gas: u128,
}
