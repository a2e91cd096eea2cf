//! kinko's air-gapped offline signer (K14).
//!
//! Runs on a machine with no network: it contains no networking code path, and its dependency closure
//! holds no networking crate (a test walks it). The online side exports an [`bundle::UnsignedBundle`]; this
//! crate decodes the transaction itself with the signer's own code, shows it in human terms, checks it
//! against the intent and its own pinned assets and fee bound, verifies the approvals against the operator
//! registry it pinned at key generation (accepting a newer log only as an extension), asks for an explicit
//! confirmation, unseals the cold key with its custodians' shares, signs, and writes a
//! [`bundle::SignedBundle`] that the online side verifies again ([`bundle::verify_signed`]).

pub mod bundle;
pub mod keystore;
pub mod paper;
pub mod psbt_bundle;
pub mod qr;
pub mod record;
pub mod sign;
