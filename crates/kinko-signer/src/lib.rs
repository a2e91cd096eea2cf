//! The transaction signing system (M9c, K20, L2, O5).
//!
//! Everything that signs goes through [`Signer`], so the pipeline does not care whether the keys sit in
//! this process ([`LocalSigner`], for `kinko dev`), in a separate signer process or in an HSM. Whatever
//! the backend, the contract (docs: "The signer's contract") is the same:
//! - decode the payload with the signer's own code and compare every value-moving field with the intent;
//! - refuse payloads it does not understand or that change control;
//! - count the operators' approvals itself: Ed25519 signatures verified against its own operator registry
//!   (a signed, replayed log) up to its own `[[signer.quorum]]` for the key, asset and amount; no quorum
//!   entry, too few valid approvals or one forged approval, no signature ([`approvals`]);
//! - keep the anti-double-sign record per (key, chain, nonce-or-outpoint);
//! - write the key access log entry durably before returning; no log, no signature;
//! - return a low-S signature verified with an independent library; never key material.

pub mod approvals;
pub mod backend;
pub mod btc;
pub mod btc_multisig;
#[cfg(feature = "online")]
pub mod ed25519;
pub mod evacuation;
pub mod evm;
#[cfg(feature = "online")]
pub mod freeze;
pub mod journal;
#[cfg(feature = "online")]
pub mod local;
#[cfg(feature = "online")]
pub mod pkcs11;
#[cfg(feature = "online")]
pub mod remote;
pub mod safe;
#[cfg(feature = "online")]
pub mod seal;
#[cfg(feature = "online")]
pub mod server;
#[cfg(feature = "online")]
pub mod store_journal;
#[cfg(feature = "online")]
pub mod sweep;
#[cfg(feature = "online")]
pub mod testing;

use serde::{Deserialize, Serialize};

pub use backend::{SecpKey, SoftwareKey};
pub use journal::{JournalError, KeyAccessEntry, SignerJournal, SlotEntry, SlotKey};
#[cfg(feature = "online")]
pub use local::LocalSigner;
#[cfg(feature = "online")]
pub use store_journal::StoreJournal;

/// `(seq, hash)` of the last change of an operator registry log; `None` before genesis.
pub type RegistryHead = Option<(u64, [u8; 32])>;

/// Bound on the registry log entries one [`Signer::registry_log_since`] answer carries; a caller further
/// behind asks again from where the answer ended.
pub const REGISTRY_LOG_PAGE_MAX: usize = 256;

pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// An operator's approval: an Ed25519 signature, with the operator's personal approval key, over
/// `kinko_core::operators::approval_message` of the request's subject. The signer verifies it against its
/// own operator registry and counts it towards its own quorum ([`approvals`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    pub operator_id: String,
    pub signature_hex: String,
}

/// A request to sign one EVM transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvmSignRequest {
    pub key_id: String,
    pub chain_id: u64,
    pub nonce: u64,
    /// EIP-2718 typed *unsigned* EIP-1559 transaction: `0x02 || rlp([chain_id, nonce,
    /// max_priority_fee_per_gas, max_fee_per_gas, gas_limit, to, value, input, access_list])`, i.e.
    /// alloy's `TxEip1559::encode_for_signing`. The signing hash is keccak256 of these bytes.
    #[serde(with = "hex_bytes")]
    pub payload: Vec<u8>,
    pub intent: kinko_core::intent::Intent,
    /// Approvals over `(Process::Signing, intent.id, intent.hash())`; how many must count is the signer's
    /// `[[signer.quorum]]` for (key, asset, amount), never the caller's say.
    pub approvals: Vec<Approval>,
    /// Who asked (operator id, or the pipeline instance for automatic hot-wallet withdrawals).
    pub actor: String,
    /// From where (host, process); goes into the key access log.
    pub terminal: String,
    /// An approved evacuation (K19, S5): the one thing that lets a frozen key sign, after the signer verified
    /// it itself ([`evacuation`]). Ignored when no freeze covers the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evacuation: Option<evacuation::EvacuationOrder>,
}

#[derive(Debug, thiserror::Error)]
pub enum SignerError {
    #[error("signer is sealed")]
    Sealed,
    #[error("unknown key {0:?}")]
    UnknownKey(String),
    #[error("payload is malformed: {0}")]
    Malformed(String),
    #[error("payload {field} is {actual}, but the intent says {expected}")]
    IntentMismatch { field: &'static str, expected: String, actual: String },
    /// A payload class the signer does not sign (contract calls, contract creation, access lists, …).
    #[error("refused: {0}")]
    Refused(String),
    #[error("double sign refused for key {key_id:?}, chain {chain}, slot {slot}: {reason}")]
    DoubleSign { key_id: String, chain: String, slot: String, reason: String },
    /// The anti-double-sign record or the key access log could not be read or written: fail closed.
    #[error("signer journal unavailable: {0}")]
    JournalUnavailable(String),
    #[error("signer internal error: {0}")]
    Internal(String),
}

#[cfg(feature = "online")]
pub trait Signer: Send + Sync {
    /// Returns r(32)||s(32)||y_parity(1), low-S, verified with an independent library before returning.
    fn sign_evm<'a>(&'a self, req: &'a EvmSignRequest) -> BoxFuture<'a, Result<[u8; 65], SignerError>>;

    /// One Safe owner's signature on a Safe transaction (K15): r(32)||s(32)||v(1) with v = 27/28, Safe's
    /// packed form. The signer computes the EIP-712 hash itself from the fields and refuses delegatecall,
    /// self-calls and control calls, refund payments, Safes it has not configured for the key, and anything
    /// that differs from the intent ([`safe::check_safe_tx`]); approvals, anti-double-sign record
    /// (`safe:<address>:<nonce>`) and key access log as for [`Signer::sign_evm`]. Signers that do not hold
    /// Safe owner keys refuse.
    fn sign_safe_tx<'a>(&'a self, req: &'a safe::SafeSignRequest) -> BoxFuture<'a, Result<[u8; 65], SignerError>> {
        let _ = req;
        Box::pin(async { Err(SignerError::Refused("this signer does not sign Safe transactions".into())) })
    }

    /// Signs one Bitcoin withdrawal PSBT with the signer's BIP84 account (K20, C4, C5). The signer decodes
    /// the PSBT itself and checks it against the intent ([`btc::check_psbt_against_intent`]: payment,
    /// change only to its own `xpub/1/i`, fee cap), signs only inputs it re-derives as its own, records every
    /// spent outpoint in the anti-double-sign record (`btc:<network>`, `txid:vout`; a fee bump of the same
    /// intent is the one thing allowed on an outpoint already signed), finalizes and verifies the transaction
    /// with libbitcoinconsensus before returning it. Approvals, freezes and the key access log as for
    /// [`Signer::sign_evm`]. Signers that hold no Bitcoin account refuse.
    fn sign_btc_psbt<'a>(&'a self, req: &'a btc::BtcSignRequest) -> BoxFuture<'a, Result<btc::BtcSigned, SignerError>> {
        let _ = req;
        Box::pin(async { Err(SignerError::Refused("this signer does not sign Bitcoin transactions".into())) })
    }

    /// Adds this signer's cosignature to a PSBT spending the pinned k-of-n P2WSH multisig cold wallet (K15,
    /// K20): [`btc_multisig::cosign`] (the PSBT against the intent, inputs and change re-derived from the
    /// pinned cosigners, every signature already present verified, then one signature per input with the
    /// signer's BIP48 account), with the gates, approvals, anti-double-sign record per spent outpoint (the
    /// same fee-bump exception) and key access log (`cosign_btc`) of [`Signer::sign_btc_psbt`]. Returns the
    /// partially signed PSBT; finalizing needs the other cosigners'. Signers without a cosigner key refuse.
    fn cosign_btc_multisig_psbt<'a>(
        &'a self,
        req: &'a btc::BtcSignRequest,
    ) -> BoxFuture<'a, Result<btc_multisig::BtcCosigned, SignerError>> {
        let _ = req;
        Box::pin(async { Err(SignerError::Refused("this signer holds no Bitcoin multisig cosigner key".into())) })
    }

    /// Verifies every signature on a registry change against the signer's own registry, applies the
    /// registry rules, makes the change durable in the signer's own log and only then takes it into memory.
    /// A refused change is `Refused`; a failed write is `JournalUnavailable` and changes nothing.
    fn apply_registry_change<'a>(
        &'a self,
        change: &'a kinko_core::operator_registry::RegistryChange,
        approvals: &'a [Approval],
    ) -> BoxFuture<'a, Result<(), SignerError>>;

    /// `(seq, hash)` of the last change in the signer's registry; `None` before genesis.
    fn registry_head(&self) -> BoxFuture<'_, Result<RegistryHead, SignerError>>;

    /// Checks `req`'s approvals against the signer's own registry and quorum exactly as
    /// [`Signer::sign_evm`] would, without signing, recording or decoding anything (`payload` and `nonce` are
    /// ignored). Returns the operators whose approvals counted. The pipeline asks before it reserves a nonce,
    /// so a withdrawal the signer would refuse never holds a nonce that later withdrawals queue behind; the
    /// answer is advisory, `sign_evm` checks again.
    fn check_approvals<'a>(&'a self, req: &'a EvmSignRequest) -> BoxFuture<'a, Result<Vec<String>, SignerError>>;

    /// The signer's registry log from position `seq` on (inclusive), in order, at most
    /// [`REGISTRY_LOG_PAGE_MAX`] entries, and never beyond the head the signer verified; empty when `seq`
    /// is past the head. Works sealed. For the server to catch its copy up after a change the signer
    /// accepted but the server failed to record: the caller verifies what it gets (replays it on top of its
    /// own log) and never trusts the answer as such.
    fn registry_log_since<'a>(&'a self, seq: u64) -> BoxFuture<'a, Result<Vec<approvals::LoggedChange>, SignerError>>;

    /// Emergency freeze (K19, S5): from now on the signer refuses every signature in `freeze`'s scope, whatever
    /// it is asked later, until an approved unfreeze lifts it. Takes effect before it is recorded (stopping is
    /// always safe); a failed record is `JournalUnavailable` and the freeze stays. Works sealed.
    fn freeze<'a>(&'a self, freeze: &'a kinko_core::freeze::Freeze) -> BoxFuture<'a, Result<(), SignerError>>;

    /// Lifts a freeze after verifying the unfreeze request's approvals against the signer's own registry and
    /// its own `unfreeze_approvals` (see [`freeze::verify_lift`]); returns the operators that counted. Works
    /// sealed.
    fn lift_freeze<'a>(&'a self, order: &'a freeze::LiftOrder) -> BoxFuture<'a, Result<Vec<String>, SignerError>>;

    /// The signer's active freezes. Works sealed.
    fn active_freezes(&self) -> BoxFuture<'_, Result<Vec<kinko_core::freeze::Freeze>, SignerError>>;
}

/// Payload bytes as lower-case hex in JSON (for the signer's socket protocol and for logs of requests).
mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        hex::decode(s.strip_prefix("0x").unwrap_or(&s)).map_err(serde::de::Error::custom)
    }
}
