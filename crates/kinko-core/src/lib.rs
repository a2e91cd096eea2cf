//! kinko's domain core. Everything here is pure and deterministic: no I/O, no clocks, no randomness.
//! Callers pass in what the outside world said (blocks, times, balances) and get decisions back, so the
//! same code runs under unit tests, property tests, a fault-injecting simulator and in production.

pub mod amount;
pub mod asset;
pub mod audit;
pub mod deposit;
pub mod evacuation;
pub mod freeze;
pub mod intent;
pub mod key_lifecycle;
pub mod ledger;
pub mod node_health;
pub mod onboarding;
pub mod operator_registry;
pub mod operators;
pub mod policy;
pub mod reorg;
pub mod risk;
pub mod tiers;
pub mod withdrawal;

pub use amount::{Amount, AmountError};
pub use asset::{AssetCode, AssetError, ChainId};
