//! Bitcoin adapter (issue #9): PSBT building (M9a), consensus verification of signed spends (C5).
//!
//! Key derivation (BIP84 paths, change addresses) lives in `kinko_keys::btc` so that the signer and the
//! offline tool can use it without depending on this crate.

pub mod consensus;
pub mod multisig;
pub mod psbt;
pub mod regtest_sim;
pub mod rpc;
