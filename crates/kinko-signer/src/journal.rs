//! The signer's journal: the anti-double-sign record and the key access log (K20, L2).
//!
//! Both are written in one durable step *before* the signature leaves the signer. The write is a
//! compare-and-append: the signer says which payloads it saw in the slot when it decided, and the journal
//! refuses ([`JournalError::Conflict`]) if the slot holds anything else by now. That keeps two signer
//! instances (or two concurrent requests) on the same records from both signing different payloads for
//! one nonce.

use crate::BoxFuture;
use crate::approvals::LoggedChange;

/// One anti-double-sign slot: a key, a chain and a nonce (EVM) or outpoint (Bitcoin).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SlotKey {
    pub key_id: String,
    /// `evm:<chain id>` or e.g. `btc:regtest`.
    pub chain: String,
    /// Decimal nonce, or `txid:vout`.
    pub slot: String,
}

impl SlotKey {
    pub fn evm(key_id: &str, chain_id: u64, nonce: u64) -> SlotKey {
        SlotKey { key_id: key_id.to_string(), chain: format!("evm:{chain_id}"), slot: nonce.to_string() }
    }

    /// One spent Bitcoin outpoint: chain `btc:<network>` (rust-bitcoin's network name), slot `<txid>:<vout>`.
    pub fn btc(key_id: &str, network: bitcoin::Network, outpoint: &bitcoin::OutPoint) -> SlotKey {
        SlotKey { key_id: key_id.to_string(), chain: format!("btc:{network}"), slot: outpoint.to_string() }
    }
}

/// One payload signed for a slot. The payload itself is kept so the signer can judge a later fee bump
/// against it with its own decoder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotEntry {
    pub payload: Vec<u8>,
    pub payload_sha256: [u8; 32],
    pub intent_hash: [u8; 32],
    pub at_ms: i64,
}

/// One key access log entry (L2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyAccessEntry {
    pub at_ms: i64,
    pub key_id: String,
    /// `"sign"`.
    pub operation: String,
    pub payload_sha256: [u8; 32],
    pub intent_hash: [u8; 32],
    pub actor: String,
    pub terminal: String,
    /// The operators whose approvals the signer verified and counted for this signature (K12); empty when
    /// the signer's quorum needed none.
    pub approvers: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The slot changed since it was read; decide again.
    #[error("slot changed concurrently")]
    Conflict,
    #[error("{0}")]
    Unavailable(String),
}

pub trait SignerJournal: Send + Sync {
    /// Every payload already signed for `slot`.
    fn slot_entries<'a>(&'a self, slot: &'a SlotKey) -> BoxFuture<'a, Result<Vec<SlotEntry>, JournalError>>;

    /// Durably, atomically: if the slot's payload hashes are still exactly `expected_prior`, add `entry`
    /// (a no-op if it is already there) and append `access` to the key access log. Only after `Ok` may
    /// the signature be returned.
    fn record<'a>(
        &'a self,
        slot: &'a SlotKey,
        expected_prior: &'a [[u8; 32]],
        entry: &'a SlotEntry,
        access: &'a KeyAccessEntry,
    ) -> BoxFuture<'a, Result<(), JournalError>>;

    /// The signer's own operator registry log, in `seq` order, exactly as appended. Unreadable rows are an
    /// error (the signer then refuses to start), never skipped.
    fn registry_log(&self) -> BoxFuture<'_, Result<Vec<LoggedChange>, JournalError>>;

    /// Durably appends one verified registry change. A `seq` already taken is [`JournalError::Conflict`];
    /// an existing entry is never overwritten.
    fn append_registry<'a>(&'a self, entry: &'a LoggedChange) -> BoxFuture<'a, Result<(), JournalError>>;

    #[cfg(feature = "online")]
    /// The signer's freeze log (K19, S5), in order. A journal that keeps none fails closed: the signer does
    /// not start on it.
    fn freeze_log(&self) -> BoxFuture<'_, Result<Vec<crate::freeze::FreezeLogEntry>, JournalError>> {
        Box::pin(async { Err(JournalError::Unavailable("this journal keeps no freeze log".into())) })
    }

    #[cfg(feature = "online")]
    /// Durably appends one freeze or lift.
    fn append_freeze<'a>(
        &'a self,
        _entry: &'a crate::freeze::FreezeLogEntry,
    ) -> BoxFuture<'a, Result<(), JournalError>> {
        Box::pin(async { Err(JournalError::Unavailable("this journal keeps no freeze log".into())) })
    }
}
