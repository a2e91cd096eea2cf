//! Chain adapters: blockchain data acquisition (M5), transaction creation (M9a) and sending (M9b).

pub mod anvil;
pub mod anvil_erc20;
pub mod anvil_safe;
pub mod btc;
pub mod evm;
