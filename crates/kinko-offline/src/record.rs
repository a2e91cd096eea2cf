//! The offline anti-double-sign record (K14, K20): one entry per (chain, nonce) the cold key signed, kept next
//! to the keystore. A different transaction for a used nonce is refused unless it is a fee bump of the same
//! transaction (the signer's own rule, `kinko_signer::evm::fee_bump_refusal`). Written before the signed file,
//! so a signature never leaves without its record.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::bundle::{BundleError, invalid, read_bounded, write_json_0600};

pub const RECORD_FILE: &str = "sign-record.json";
pub const RECORD_KIND: &str = "kinko-offline-sign-record-v1";
/// Bound on the payloads one nonce may hold (the original and its fee bumps).
pub const SLOT_PAYLOADS_MAX: usize = 32;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignRecord {
    pub kind: String,
    /// `"<key_id>:evm:<chain id>:<nonce>"` → what was signed for it.
    pub slots: BTreeMap<String, Vec<SlotEntry>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotEntry {
    pub payload_sha256: String,
    /// Kept so a later fee bump can be judged with the signer's decoder.
    pub payload_hex: String,
    pub intent_hash: String,
    pub signed_at_ms: i64,
}

pub fn slot_key(key_id: &str, chain_id: u64, nonce: u64) -> String {
    format!("{key_id}:evm:{chain_id}:{nonce}")
}

impl SignRecord {
    /// Reads the record; a missing file is an empty record (a fresh keystore), an unreadable one an error.
    pub fn read(path: &Path) -> Result<SignRecord, BundleError> {
        if !path.exists() {
            return Ok(SignRecord { kind: RECORD_KIND.into(), slots: BTreeMap::new() });
        }
        let bytes = read_bounded(path)?;
        let r: SignRecord = serde_json::from_slice(&bytes).map_err(|e| BundleError::Io {
            path: path.display().to_string(),
            reason: format!("does not parse: {e}"),
        })?;
        if r.kind != RECORD_KIND {
            return Err(invalid("sign record kind", format!("is {:?}, expected {RECORD_KIND:?}", r.kind)));
        }
        Ok(r)
    }

    pub fn write(&self, path: &Path) -> Result<(), BundleError> {
        write_json_0600(path, self)
    }

    /// Whether `payload` may be signed for `slot`: nothing signed yet, the very same payload again, or a fee
    /// bump of every payload signed for it. Returns whether the payload is new to the slot.
    pub fn check(&self, slot: &str, payload: &[u8], payload_sha256: &str) -> Result<bool, BundleError> {
        let Some(entries) = self.slots.get(slot) else { return Ok(true) };
        if entries.iter().any(|e| e.payload_sha256 == payload_sha256) {
            return Ok(false);
        }
        if entries.len() >= SLOT_PAYLOADS_MAX {
            return Err(invalid("payload_hex.nonce", format!("{slot} already holds {SLOT_PAYLOADS_MAX} payloads")));
        }
        let new = kinko_signer::evm::decode_eip1559(payload).map_err(|e| invalid("payload_hex", e.to_string()))?;
        for e in entries {
            let old_bytes = crate::bundle::decode_hex("sign record payload_hex", &e.payload_hex)?;
            let old = kinko_signer::evm::decode_eip1559(&old_bytes)
                .map_err(|e| invalid("sign record payload_hex", e.to_string()))?;
            if let Some(why) = kinko_signer::evm::fee_bump_refusal(&old, &new) {
                return Err(invalid(
                    "payload_hex.nonce",
                    format!("double sign refused for {slot}: {why} (signed payload sha256 {})", e.payload_sha256),
                ));
            }
        }
        Ok(true)
    }
}
