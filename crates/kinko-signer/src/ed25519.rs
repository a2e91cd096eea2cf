//! Ed25519 in the signer: a key type for the key ring and the raw-message signing operation.
//!
//! What is NOT built: Ed25519 intents and chain decoding (e.g. Solana transactions). The signer's
//! contract says it decodes what it signs and compares it with an intent; for Ed25519 there is no decoder
//! yet, so [`crate::LocalSigner::sign_ed25519`] signs an opaque message. It exists for the benchmark
//! beside OpenBao's transit engine (which signs opaque messages too) and as the base for future Ed25519
//! chains, which must add their decoder and intent check in front of it before any value moves.
//!
//! What it keeps from the contract: the key is generated in the signer from the OS CSPRNG, held only in
//! memory (zeroized on drop and on seal) and never exported; every signature's key access log entry, with
//! the message's sha256, is written durably to the same journal as EVM signing before the signature is
//! returned (no log, no signature); and the signature is verified before it leaves.
//!
//! Keys are ephemeral: they are not wrapped into the keystore and have no lifecycle record, so they are
//! gone after a seal, and the K2/K3 key gate (which reads that record) does not apply to them. A stored
//! Ed25519 key would need both before signing anything of value.

use std::time::{SystemTime, UNIX_EPOCH};

use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::SignerError;
use crate::journal::{JournalError, KeyAccessEntry, SignerJournal, SlotEntry, SlotKey};
use crate::local::SLOT_CONFLICT_RETRIES_MAX;

/// Journal "chain" of raw Ed25519 messages; the slot is the message's sha256, so signing the same
/// message again (Ed25519 is deterministic: the same signature) is one slot, logged again.
pub const RAW_CHAIN: &str = "ed25519:raw";
/// Key access log operation of [`crate::LocalSigner::sign_ed25519`].
pub const OPERATION: &str = "sign_ed25519";
/// Bound on one message: the slot keeps the message, and a future chain's transaction is far smaller.
pub const MESSAGE_LEN_MAX: usize = 64 * 1024;
/// Raw messages have no intent; the log's intent column holds zeros for them.
pub const NO_INTENT: [u8; 32] = [0; 32];

/// An Ed25519 key in the signer's memory. `SigningKey` zeroizes its secret on drop; `Debug` shows only
/// the public key.
pub struct Ed25519Key {
    signing: SigningKey,
}

impl std::fmt::Debug for Ed25519Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ed25519Key").field("public", &hex::encode(self.public_key())).finish_non_exhaustive()
    }
}

impl Ed25519Key {
    /// A fresh key from the OS CSPRNG.
    pub fn generate() -> Ed25519Key {
        let mut secret = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(&mut secret[..]);
        Ed25519Key { signing: SigningKey::from_bytes(&secret) }
    }

    pub fn public_key(&self) -> [u8; 32] {
        self.signing.verifying_key().to_bytes()
    }

    /// Signs and checks the result with `verify_strict` before it leaves. There is no second Ed25519
    /// implementation in the tree, so this catches faults in signing (bit flips, a corrupted key), not a
    /// bug in ed25519-dalek itself.
    pub(crate) fn sign_verified(&self, message: &[u8]) -> Result<[u8; 64], SignerError> {
        let signature = ed25519_dalek::Signer::sign(&self.signing, message);
        self.signing
            .verifying_key()
            .verify_strict(message, &signature)
            .map_err(|_| SignerError::Internal("Ed25519 signature does not verify".into()))?;
        Ok(signature.to_bytes())
    }
}

/// Verifies an Ed25519 signature strictly (for clients and benchmarks that check what they got back).
pub fn verify(public_key: &[u8; 32], message: &[u8], signature: &[u8; 64]) -> bool {
    VerifyingKey::from_bytes(public_key)
        .and_then(|k| k.verify_strict(message, &Signature::from_bytes(signature)))
        .is_ok()
}

/// A request to sign one raw message with an Ed25519 key (see the module docs for what is not checked).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ed25519SignRequest {
    pub key_id: String,
    #[serde(with = "crate::hex_bytes")]
    pub message: Vec<u8>,
    /// Who asked; goes into the key access log.
    pub actor: String,
    /// From where (host, process); goes into the key access log.
    pub terminal: String,
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Signs with `sign` (the key ring's lookup + [`Ed25519Key::sign_verified`]) and records the slot and the
/// key access log entry durably; only then returns the signature.
pub(crate) async fn sign_logged(
    journal: &dyn SignerJournal,
    req: &Ed25519SignRequest,
    sign: impl FnOnce(&[u8]) -> Result<[u8; 64], SignerError>,
) -> Result<[u8; 64], SignerError> {
    if req.message.len() > MESSAGE_LEN_MAX {
        return Err(SignerError::Malformed(format!(
            "message is {} bytes; at most {MESSAGE_LEN_MAX} are signed",
            req.message.len()
        )));
    }
    let signature = sign(&req.message)?;
    let message_sha256: [u8; 32] = Sha256::digest(&req.message).into();
    let slot = SlotKey { key_id: req.key_id.clone(), chain: RAW_CHAIN.into(), slot: hex::encode(message_sha256) };
    let at_ms = now_ms();
    let entry =
        SlotEntry { payload: req.message.clone(), payload_sha256: message_sha256, intent_hash: NO_INTENT, at_ms };
    let access = KeyAccessEntry {
        at_ms,
        key_id: req.key_id.clone(),
        operation: OPERATION.into(),
        payload_sha256: message_sha256,
        intent_hash: NO_INTENT,
        actor: req.actor.clone(),
        terminal: req.terminal.clone(),
        // Ed25519 requests carry no intent, so there is no approval subject to count approvals over.
        approvers: Vec::new(),
    };
    // A new message's slot is empty, so one write suffices; a repeated message conflicts once and is
    // then recorded against what the slot holds (itself).
    let mut expected: Vec<[u8; 32]> = Vec::new();
    for _ in 0..SLOT_CONFLICT_RETRIES_MAX {
        match journal.record(&slot, &expected, &entry, &access).await {
            Ok(()) => return Ok(signature),
            Err(JournalError::Conflict) => {
                let prior = journal.slot_entries(&slot).await.map_err(journal_down)?;
                expected = prior.iter().map(|e| e.payload_sha256).collect();
            }
            Err(e) => return Err(journal_down(e)),
        }
    }
    Err(SignerError::JournalUnavailable(format!("slot kept changing under {SLOT_CONFLICT_RETRIES_MAX} attempts")))
}

fn journal_down(e: JournalError) -> SignerError {
    SignerError::JournalUnavailable(e.to_string())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::LocalSigner;
    use crate::testing::{FailingJournal, MemoryJournal};

    fn request(key_id: &str, message: &[u8]) -> Ed25519SignRequest {
        Ed25519SignRequest {
            key_id: key_id.into(),
            message: message.to_vec(),
            actor: "test".into(),
            terminal: "unit".into(),
        }
    }

    #[tokio::test]
    async fn l2_ed25519_signature_verifies_and_is_logged_with_the_message_sha256() {
        let journal = Arc::new(MemoryJournal::new());
        let signer = LocalSigner::new(journal.clone());
        let public = signer.generate_ed25519_key("ed-1").unwrap();
        let message = b"kinko ed25519 unit test";
        let sig = signer.sign_ed25519(&request("ed-1", message)).await.unwrap();
        assert!(verify(&public, message, &sig));
        assert!(!verify(&public, b"another message", &sig), "the check must be able to fail");

        let log = journal.access_log();
        assert_eq!(log.len(), 1);
        assert_eq!(log[0].operation, OPERATION);
        assert_eq!(log[0].key_id, "ed-1");
        assert_eq!(log[0].payload_sha256, <[u8; 32]>::from(Sha256::digest(message)));

        // Deterministic, and the repeated message is logged again.
        assert_eq!(signer.sign_ed25519(&request("ed-1", message)).await.unwrap(), sig);
        assert_eq!(journal.access_log().len(), 2);
    }

    #[tokio::test]
    async fn l2_ed25519_journal_failure_refuses_the_signature() {
        let signer = LocalSigner::new(Arc::new(FailingJournal));
        signer.generate_ed25519_key("ed-1").unwrap();
        let got = signer.sign_ed25519(&request("ed-1", b"no log, no signature")).await;
        assert!(matches!(got, Err(SignerError::JournalUnavailable(_))), "{got:?}");
    }

    /// K20, K3: the Ed25519 op refuses other key types, unknown keys and a sealed signer.
    #[tokio::test]
    async fn ed25519_refused_for_other_key_types_unknown_keys_and_when_sealed() {
        let journal = Arc::new(MemoryJournal::new());
        let signer = LocalSigner::new(journal.clone());
        signer.add_secp256k1_key("secp-1", Zeroizing::new([7u8; 32])).unwrap();
        let got = signer.sign_ed25519(&request("secp-1", b"m")).await;
        assert!(matches!(got, Err(SignerError::Refused(_))), "{got:?}");
        assert!(matches!(signer.generate_ed25519_key("secp-1"), Err(SignerError::Refused(_))));
        let got = signer.sign_ed25519(&request("nope", b"m")).await;
        assert!(matches!(got, Err(SignerError::UnknownKey(_))), "{got:?}");
        let big = vec![0u8; MESSAGE_LEN_MAX + 1];
        signer.generate_ed25519_key("ed-1").unwrap();
        assert!(matches!(signer.sign_ed25519(&request("ed-1", &big)).await, Err(SignerError::Malformed(_))));
        signer.seal();
        let got = signer.sign_ed25519(&request("ed-1", b"m")).await;
        assert!(matches!(got, Err(SignerError::Sealed)), "{got:?}");
        assert!(journal.access_log().is_empty(), "nothing refused was logged");
    }
}
