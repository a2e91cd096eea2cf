//! Journals for unit tests and benchmarks: [`MemoryJournal`] (not durable, same semantics as the store)
//! and [`FailingJournal`] (every write fails, to test that the signer fails closed).

use std::collections::HashMap;
use std::sync::Mutex;

use crate::BoxFuture;
use crate::approvals::{LoggedChange, QuorumBand, SigningQuorum, SigningQuorumConfig};
use crate::journal::{JournalError, KeyAccessEntry, SignerJournal, SlotEntry, SlotKey};

#[derive(Default)]
struct MemoryState {
    slots: HashMap<SlotKey, Vec<SlotEntry>>,
    access_log: Vec<KeyAccessEntry>,
    registry: Vec<LoggedChange>,
    freezes: Vec<crate::freeze::FreezeLogEntry>,
}

/// An in-memory journal with the store's compare-and-append semantics.
#[derive(Default)]
pub struct MemoryJournal {
    state: Mutex<MemoryState>,
}

impl MemoryJournal {
    pub fn new() -> Self {
        Self::default()
    }

    /// A copy of the key access log.
    pub fn access_log(&self) -> Vec<KeyAccessEntry> {
        self.state.lock().map(|s| s.access_log.clone()).unwrap_or_default()
    }
}

fn unavailable() -> JournalError {
    JournalError::Unavailable("memory journal lock poisoned".into())
}

impl SignerJournal for MemoryJournal {
    fn slot_entries<'a>(&'a self, slot: &'a SlotKey) -> BoxFuture<'a, Result<Vec<SlotEntry>, JournalError>> {
        Box::pin(async move {
            let state = self.state.lock().map_err(|_| unavailable())?;
            Ok(state.slots.get(slot).cloned().unwrap_or_default())
        })
    }

    fn record<'a>(
        &'a self,
        slot: &'a SlotKey,
        expected_prior: &'a [[u8; 32]],
        entry: &'a SlotEntry,
        access: &'a KeyAccessEntry,
    ) -> BoxFuture<'a, Result<(), JournalError>> {
        Box::pin(async move {
            let mut guard = self.state.lock().map_err(|_| unavailable())?;
            let state = &mut *guard;
            let entries = state.slots.entry(slot.clone()).or_default();
            let mut present: Vec<[u8; 32]> = entries.iter().map(|e| e.payload_sha256).collect();
            let mut expected = expected_prior.to_vec();
            present.sort();
            expected.sort();
            expected.dedup();
            if present != expected {
                return Err(JournalError::Conflict);
            }
            if !present.contains(&entry.payload_sha256) {
                entries.push(entry.clone());
            }
            state.access_log.push(access.clone());
            Ok(())
        })
    }

    fn registry_log(&self) -> BoxFuture<'_, Result<Vec<LoggedChange>, JournalError>> {
        Box::pin(async move { Ok(self.state.lock().map_err(|_| unavailable())?.registry.clone()) })
    }

    fn append_registry<'a>(&'a self, entry: &'a LoggedChange) -> BoxFuture<'a, Result<(), JournalError>> {
        Box::pin(async move {
            let mut state = self.state.lock().map_err(|_| unavailable())?;
            if state.registry.iter().any(|e| e.change.seq == entry.change.seq) {
                return Err(JournalError::Conflict);
            }
            state.registry.push(entry.clone());
            Ok(())
        })
    }

    fn freeze_log(&self) -> BoxFuture<'_, Result<Vec<crate::freeze::FreezeLogEntry>, JournalError>> {
        Box::pin(async move { Ok(self.state.lock().map_err(|_| unavailable())?.freezes.clone()) })
    }

    fn append_freeze<'a>(
        &'a self,
        entry: &'a crate::freeze::FreezeLogEntry,
    ) -> BoxFuture<'a, Result<(), JournalError>> {
        Box::pin(async move {
            self.state.lock().map_err(|_| unavailable())?.freezes.push(entry.clone());
            Ok(())
        })
    }
}

/// Reads succeed (an empty record); every write fails, as a full disk or a lost database would.
#[derive(Default)]
pub struct FailingJournal;

impl SignerJournal for FailingJournal {
    fn slot_entries<'a>(&'a self, _slot: &'a SlotKey) -> BoxFuture<'a, Result<Vec<SlotEntry>, JournalError>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    fn record<'a>(
        &'a self,
        _slot: &'a SlotKey,
        _expected_prior: &'a [[u8; 32]],
        _entry: &'a SlotEntry,
        _access: &'a KeyAccessEntry,
    ) -> BoxFuture<'a, Result<(), JournalError>> {
        Box::pin(async { Err(JournalError::Unavailable("key access log cannot be written (test)".into())) })
    }

    fn registry_log(&self) -> BoxFuture<'_, Result<Vec<LoggedChange>, JournalError>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    fn append_registry<'a>(&'a self, _entry: &'a LoggedChange) -> BoxFuture<'a, Result<(), JournalError>> {
        Box::pin(async { Err(JournalError::Unavailable("registry log cannot be written (test)".into())) })
    }

    fn freeze_log(&self) -> BoxFuture<'_, Result<Vec<crate::freeze::FreezeLogEntry>, JournalError>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    fn append_freeze<'a>(
        &'a self,
        _entry: &'a crate::freeze::FreezeLogEntry,
    ) -> BoxFuture<'a, Result<(), JournalError>> {
        Box::pin(async { Err(JournalError::Unavailable("freeze log cannot be written (test)".into())) })
    }
}

/// A quorum under which `key_id` signs each of `assets` at any amount without approval: for tests and
/// benchmarks about something other than approvals. A deployment configures `[[signer.quorum]]` instead.
pub fn auto_quorum(key_id: &str, assets: &[&str]) -> SigningQuorum {
    let configs: Vec<SigningQuorumConfig> = assets
        .iter()
        .map(|asset| SigningQuorumConfig {
            key_id: key_id.into(),
            asset: (*asset).into(),
            class: kinko_core::policy::PolicyClass::HotSmall,
            auto_max: Some(kinko_core::Amount::from_base_units(u128::MAX)),
            bands: vec![QuorumBand { from: kinko_core::Amount::from_base_units(0), approvals: 1 }],
        })
        .collect();
    SigningQuorum::from_configs(&configs).expect("auto_quorum builds a valid hot_small quorum")
}
