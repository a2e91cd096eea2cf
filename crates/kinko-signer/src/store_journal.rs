//! [`SignerJournal`] on kinko-store (SQLite or PostgreSQL): the slot payloads and the key access log row
//! are committed in one transaction before the signature is returned.

use kinko_store::signer_records::{KeyAccessRecord, SlotRecord};
use kinko_store::{Store, StoreError};

use crate::approvals::LoggedChange;
use crate::journal::{JournalError, KeyAccessEntry, SignerJournal, SlotEntry, SlotKey};
use crate::{Approval, BoxFuture};

#[derive(Clone, Debug)]
pub struct StoreJournal(pub Store);

fn store_error(e: StoreError) -> JournalError {
    match e {
        StoreError::Conflict(_) => JournalError::Conflict,
        other => JournalError::Unavailable(other.to_string()),
    }
}

fn corrupt(what: &str) -> JournalError {
    JournalError::Unavailable(format!("signer_slots holds a malformed {what}"))
}

fn hash_from_hex(what: &str, s: &str) -> Result<[u8; 32], JournalError> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).map_err(|_| corrupt(what))?;
    Ok(out)
}

impl SignerJournal for StoreJournal {
    fn slot_entries<'a>(&'a self, slot: &'a SlotKey) -> BoxFuture<'a, Result<Vec<SlotEntry>, JournalError>> {
        Box::pin(async move {
            let rows = self.0.signer_slot_payloads(&slot.key_id, &slot.chain, &slot.slot).await.map_err(store_error)?;
            rows.iter()
                .map(|r| {
                    // Fail closed on unreadable rows: an entry the signer cannot judge blocks the slot.
                    Ok(SlotEntry {
                        payload: hex::decode(&r.payload_hex).map_err(|_| corrupt("payload"))?,
                        payload_sha256: hash_from_hex("payload_sha256", &r.payload_sha256)?,
                        intent_hash: hash_from_hex("intent_hash", &r.intent_hash)?,
                        at_ms: r.created_at_ms,
                    })
                })
                .collect()
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
            let record = SlotRecord {
                key_id: slot.key_id.clone(),
                chain: slot.chain.clone(),
                slot: slot.slot.clone(),
                payload_sha256: hex::encode(entry.payload_sha256),
                payload_hex: hex::encode(&entry.payload),
                intent_hash: hex::encode(entry.intent_hash),
                created_at_ms: entry.at_ms,
            };
            let log = KeyAccessRecord {
                at_ms: access.at_ms,
                key_id: access.key_id.clone(),
                operation: access.operation.clone(),
                payload_sha256: hex::encode(access.payload_sha256),
                intent_hash: hex::encode(access.intent_hash),
                actor: access.actor.clone(),
                terminal: access.terminal.clone(),
                approvers_json: serde_json::to_string(&access.approvers)
                    .map_err(|e| JournalError::Unavailable(format!("encoding approvers: {e}")))?,
            };
            let expected: Vec<String> = expected_prior.iter().map(hex::encode).collect();
            self.0.record_signature(&record, &log, &expected).await.map_err(store_error)?;
            Ok(())
        })
    }

    fn registry_log(&self) -> BoxFuture<'_, Result<Vec<LoggedChange>, JournalError>> {
        Box::pin(async move {
            let rows = self.0.signer_registry_log().await.map_err(store_error)?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                let bad = |what: &str| {
                    JournalError::Unavailable(format!("signer_registry_log row {} holds a malformed {what}", row.seq))
                };
                let change: kinko_core::operator_registry::RegistryChange =
                    serde_json::from_str(&row.change_json).map_err(|_| bad("change_json"))?;
                let approvals: Vec<Approval> =
                    serde_json::from_str(&row.approvals_json).map_err(|_| bad("approvals_json"))?;
                // The stored hash is a second witness of what was applied; the signatures are checked on replay.
                let hash = change.hash().map_err(|_| bad("change"))?;
                if i64::try_from(change.seq).ok() != Some(row.seq) || hex::encode(hash) != row.hash_hex {
                    return Err(bad("seq or hash (the row does not match its change)"));
                }
                out.push(LoggedChange { change, approvals, applied_at_ms: row.applied_at_ms });
            }
            Ok(out)
        })
    }

    fn append_registry<'a>(&'a self, entry: &'a LoggedChange) -> BoxFuture<'a, Result<(), JournalError>> {
        Box::pin(async move {
            let encode = |e: serde_json::Error| JournalError::Unavailable(format!("encoding a registry change: {e}"));
            let hash = entry.change.hash().map_err(|e| JournalError::Unavailable(e.to_string()))?;
            let change_json = serde_json::to_string(&entry.change).map_err(encode)?;
            let approvals_json = serde_json::to_string(&entry.approvals).map_err(encode)?;
            self.0
                .append_signer_registry(
                    entry.change.seq,
                    &hex::encode(hash),
                    &change_json,
                    &approvals_json,
                    entry.applied_at_ms,
                )
                .await
                .map_err(store_error)
        })
    }

    fn freeze_log(&self) -> BoxFuture<'_, Result<Vec<crate::freeze::FreezeLogEntry>, JournalError>> {
        Box::pin(async move {
            let rows = self.0.signer_freeze_log().await.map_err(store_error)?;
            rows.iter()
                .map(|row| {
                    let entry: crate::freeze::FreezeLogEntry = serde_json::from_str(&row.body_json).map_err(|_| {
                        JournalError::Unavailable(format!("signer_freeze_log row {} does not parse", row.seq))
                    })?;
                    // The columns are a second witness of the body; a row whose columns disagree is refused.
                    let event = match &entry {
                        crate::freeze::FreezeLogEntry::Freeze { .. } => "freeze",
                        crate::freeze::FreezeLogEntry::Lift { .. } => "lift",
                    };
                    if row.event != event || row.freeze_id != entry.freeze_id() {
                        return Err(JournalError::Unavailable(format!(
                            "signer_freeze_log row {} does not match its body",
                            row.seq
                        )));
                    }
                    Ok(entry)
                })
                .collect()
        })
    }

    fn append_freeze<'a>(
        &'a self,
        entry: &'a crate::freeze::FreezeLogEntry,
    ) -> BoxFuture<'a, Result<(), JournalError>> {
        Box::pin(async move {
            let body = serde_json::to_string(entry)
                .map_err(|e| JournalError::Unavailable(format!("encoding a freeze log entry: {e}")))?;
            let (event, at_ms) = match entry {
                crate::freeze::FreezeLogEntry::Freeze { freeze } => ("freeze", freeze.set_at_ms),
                crate::freeze::FreezeLogEntry::Lift { at_ms, .. } => ("lift", *at_ms),
            };
            self.0.append_signer_freeze_log(event, entry.freeze_id(), &body, at_ms).await.map_err(store_error)?;
            Ok(())
        })
    }
}
