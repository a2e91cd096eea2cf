//! Chain adapters: blockchain data acquisition (M5), transaction creation (M9a) and sending (M9b).

pub mod anvil;
pub mod evm;
