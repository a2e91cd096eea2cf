//! The in-process signer: unwrapped secp256k1 keys in a key ring, the checks of the signer's contract,
//! and the journal in front of every returned signature. Used by `kinko dev`; the isolated signer
//! process wraps the same type behind a socket.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use alloy_primitives::keccak256;
use bitcoin::secp256k1::ecdsa::{RecoverableSignature, RecoveryId, Signature as SecpSignature};
use bitcoin::secp256k1::{Message, PublicKey, Secp256k1, VerifyOnly};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::backend::{SecpKey, SoftwareKey};
use crate::evm::{self, EvmPolicy};
use crate::journal::{JournalError, KeyAccessEntry, SignerJournal, SlotEntry, SlotKey};
use crate::{BoxFuture, EvmSignRequest, Signer, SignerError};

/// How often the signer re-decides after another writer changed the slot under it. A conflict means a
/// concurrent signature for the same nonce, so a second one almost always ends in a refusal.
pub const SLOT_CONFLICT_RETRIES_MAX: usize = 3;
/// Bound on the payloads one slot may hold (the original plus fee bumps); beyond it the pipeline is
/// looping, not replacing a stuck transaction.
pub const SLOT_PAYLOADS_MAX: usize = 32;

/// One usable key: unwrapped in memory (zeroized on drop) or held in a PKCS#11 token.
struct LocalKey {
    key: Box<dyn SecpKey>,
    public: PublicKey,
    address: String,
}

struct KeyRing {
    sealed: bool,
    keys: HashMap<String, LocalKey>,
    /// Ed25519 keys (see [`crate::ed25519`]): a separate map, so an EVM request can never reach one.
    ed25519: HashMap<String, crate::ed25519::Ed25519Key>,
}

pub struct LocalSigner {
    journal: Arc<dyn SignerJournal>,
    ring: RwLock<KeyRing>,
    policies: RwLock<HashMap<u64, EvmPolicy>>,
    secp: Secp256k1<VerifyOnly>,
    /// Consulted before every signature when set (K2, K3): only an active key within its routine
    /// policy signs. Unset for signers whose keys have no lifecycle record (unit tests).
    key_gate: std::sync::OnceLock<Arc<dyn kinko_core::key_lifecycle::KeyGate>>,
}

/// Key ids and addresses only; never key material.
impl std::fmt::Debug for LocalSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("LocalSigner");
        match self.ring.read() {
            Ok(ring) => {
                let mut keys: Vec<(&str, &str)> =
                    ring.keys.iter().map(|(id, k)| (id.as_str(), k.address.as_str())).collect();
                keys.sort();
                d.field("sealed", &ring.sealed).field("keys", &keys);
            }
            Err(_) => {
                d.field("ring", &"poisoned");
            }
        }
        d.finish_non_exhaustive()
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn poisoned() -> SignerError {
    SignerError::Internal("key ring lock poisoned".into())
}

impl LocalSigner {
    /// An unsealed signer with an empty key ring.
    pub fn new(journal: Arc<dyn SignerJournal>) -> Self {
        LocalSigner {
            journal,
            ring: RwLock::new(KeyRing { sealed: false, keys: HashMap::new(), ed25519: HashMap::new() }),
            policies: RwLock::new(HashMap::new()),
            secp: Secp256k1::verification_only(),
            key_gate: std::sync::OnceLock::new(),
        }
    }

    /// Installs the key-state gate (e.g. `kinko_store::key_lifecycle::StoreKeyGate`). Once only: a gate
    /// that could be swapped out at run time would be a way around it.
    pub fn set_key_gate(&self, gate: Arc<dyn kinko_core::key_lifecycle::KeyGate>) -> Result<(), SignerError> {
        self.key_gate.set(gate).map_err(|_| SignerError::Internal("key gate already set".into()))
    }

    /// Sets the policy for one chain (native asset code, fee cap). Chains without one use
    /// [`EvmPolicy::default`] (ETH, [`evm::FEE_WEI_MAX_DEFAULT`]).
    pub fn set_evm_policy(&self, chain_id: u64, policy: EvmPolicy) -> Result<(), SignerError> {
        self.policies.write().map_err(|_| poisoned())?.insert(chain_id, policy);
        Ok(())
    }

    /// Adds an unwrapped secp256k1 key; returns its lower-case 0x address. Adding the same key under the
    /// same id again is a no-op; another key under a used id is refused.
    pub fn add_secp256k1_key(&self, key_id: &str, secret: Zeroizing<[u8; 32]>) -> Result<String, SignerError> {
        let key = SoftwareKey::from_secret(&secret)
            .map_err(|_| SignerError::Malformed(format!("key {key_id:?} is not a valid secp256k1 secret")))?;
        self.add_key(key_id, Box::new(key))
    }

    /// Adds a key held in a PKCS#11 token (K21); it goes through exactly the same checks as a software
    /// key. The token must stay logged in for the key to sign.
    pub fn add_pkcs11_key(&self, key_id: &str, key: crate::pkcs11::Pkcs11Key) -> Result<String, SignerError> {
        self.add_key(key_id, Box::new(key))
    }

    /// Adds a key from any backend; same id rules as [`Self::add_secp256k1_key`].
    pub fn add_key(&self, key_id: &str, key: Box<dyn SecpKey>) -> Result<String, SignerError> {
        let public = key.public_key();
        let address = kinko_keys::hd::evm_address(&public);
        let mut ring = self.ring.write().map_err(|_| poisoned())?;
        if ring.sealed {
            return Err(SignerError::Sealed);
        }
        if let Some(existing) = ring.keys.get(key_id) {
            return if existing.public == public {
                Ok(existing.address.clone())
            } else {
                Err(SignerError::Refused(format!("key id {key_id:?} already holds another key")))
            };
        }
        ring.keys.insert(key_id.to_string(), LocalKey { key, public, address: address.clone() });
        Ok(address)
    }

    /// Generates an Ed25519 key in memory from the OS CSPRNG and returns its public key. Never exported,
    /// not stored: it is gone after a seal (see [`crate::ed25519`]).
    pub fn generate_ed25519_key(&self, key_id: &str) -> Result<[u8; 32], SignerError> {
        let mut ring = self.ring.write().map_err(|_| poisoned())?;
        if ring.sealed {
            return Err(SignerError::Sealed);
        }
        if ring.keys.contains_key(key_id) || ring.ed25519.contains_key(key_id) {
            return Err(SignerError::Refused(format!("key id {key_id:?} already holds a key")));
        }
        let key = crate::ed25519::Ed25519Key::generate();
        let public = key.public_key();
        ring.ed25519.insert(key_id.to_string(), key);
        Ok(public)
    }

    /// Signs a raw message with an Ed25519 key, after the key access log entry is durable. Ed25519 intents
    /// and chain decoding are not built: see [`crate::ed25519`] for what this does and does not check.
    pub async fn sign_ed25519(&self, req: &crate::ed25519::Ed25519SignRequest) -> Result<[u8; 64], SignerError> {
        crate::ed25519::sign_logged(&*self.journal, req, |message| {
            let ring = self.ring.read().map_err(|_| poisoned())?;
            if ring.sealed {
                return Err(SignerError::Sealed);
            }
            match ring.ed25519.get(&req.key_id) {
                Some(key) => key.sign_verified(message),
                None if ring.keys.contains_key(&req.key_id) => {
                    Err(SignerError::Refused(format!("key {:?} is not an Ed25519 key", req.key_id)))
                }
                None => Err(SignerError::UnknownKey(req.key_id.clone())),
            }
        })
        .await
    }

    /// The address of a loaded key.
    pub fn address(&self, key_id: &str) -> Option<String> {
        self.ring.read().ok()?.keys.get(key_id).map(|k| k.address.clone())
    }

    /// Drops (and so zeroizes) every key; from now on every request is refused with `Sealed`.
    pub fn seal(&self) {
        // A poisoned lock still holds the keys: take them out regardless.
        let mut ring = match self.ring.write() {
            Ok(r) => r,
            Err(p) => p.into_inner(),
        };
        ring.sealed = true;
        ring.keys.clear();
        ring.ed25519.clear();
    }

    pub fn is_sealed(&self) -> bool {
        self.ring.read().map(|r| r.sealed).unwrap_or(true)
    }

    fn policy(&self, chain_id: u64) -> Result<EvmPolicy, SignerError> {
        Ok(self.policies.read().map_err(|_| poisoned())?.get(&chain_id).cloned().unwrap_or_default())
    }

    fn key_address(&self, key_id: &str) -> Result<String, SignerError> {
        let ring = self.ring.read().map_err(|_| poisoned())?;
        if ring.sealed {
            return Err(SignerError::Sealed);
        }
        ring.keys.get(key_id).map(|k| k.address.clone()).ok_or_else(|| SignerError::UnknownKey(key_id.to_string()))
    }

    /// Has the key's backend sign keccak256(payload) low-S (software keys use RFC 6979, so the same
    /// payload always gives the same signature; tokens need not), and checks the result with libsecp256k1
    /// (rust-bitcoin) — a second implementation — including that it recovers to the key's address.
    fn sign_and_verify(&self, key_id: &str, payload: &[u8]) -> Result<[u8; 65], SignerError> {
        let ring = self.ring.read().map_err(|_| poisoned())?;
        if ring.sealed {
            return Err(SignerError::Sealed);
        }
        let key = ring.keys.get(key_id).ok_or_else(|| SignerError::UnknownKey(key_id.to_string()))?;
        let hash = keccak256(payload);
        let out = key.key.sign_prehash(&hash.0)?;
        if out[64] > 1 {
            return Err(SignerError::Internal(format!("{} backend returned a bad recovery id", key.key.backend())));
        }

        let msg = Message::from_digest(hash.0);
        let plain = SecpSignature::from_compact(&out[..64])
            .map_err(|_| SignerError::Internal("signature does not parse in secp256k1".into()))?;
        // libsecp256k1 only accepts low-S signatures, so this also checks the normalisation.
        self.secp
            .verify_ecdsa(&msg, &plain, &key.public)
            .map_err(|_| SignerError::Internal("independent verification failed".into()))?;
        let recid =
            RecoveryId::from_i32(i32::from(out[64])).map_err(|_| SignerError::Internal("bad recovery id".into()))?;
        let recoverable = RecoverableSignature::from_compact(&out[..64], recid)
            .map_err(|_| SignerError::Internal("recoverable signature does not parse".into()))?;
        let recovered = self
            .secp
            .recover_ecdsa(&msg, &recoverable)
            .map_err(|_| SignerError::Internal("signature does not recover".into()))?;
        if kinko_keys::hd::evm_address(&recovered) != key.address {
            return Err(SignerError::Internal("signature recovers to another address".into()));
        }
        Ok(out)
    }

    async fn sign_evm_inner(&self, req: &EvmSignRequest) -> Result<[u8; 65], SignerError> {
        let key_address = self.key_address(&req.key_id)?;
        if let Some(gate) = self.key_gate.get() {
            gate.may_sign(&req.key_id, now_ms()).await.map_err(SignerError::Refused)?;
        }
        let tx = evm::decode_eip1559(&req.payload)?;
        let policy = self.policy(req.chain_id)?;
        evm::check_against_intent(&tx, req.chain_id, req.nonce, &req.intent, &key_address, &policy)?;

        let slot = SlotKey::evm(&req.key_id, req.chain_id, req.nonce);
        let payload_sha256: [u8; 32] = Sha256::digest(&req.payload).into();
        let intent_hash = req.intent.hash();
        let double = |reason: String| SignerError::DoubleSign {
            key_id: slot.key_id.clone(),
            chain: slot.chain.clone(),
            slot: slot.slot.clone(),
            reason,
        };

        for _ in 0..SLOT_CONFLICT_RETRIES_MAX {
            let prior = self.journal.slot_entries(&slot).await.map_err(journal_down)?;
            if !prior.iter().any(|e| e.payload_sha256 == payload_sha256) {
                if prior.len() >= SLOT_PAYLOADS_MAX {
                    return Err(double(format!("slot already holds {SLOT_PAYLOADS_MAX} payloads")));
                }
                for old in &prior {
                    if old.intent_hash != intent_hash {
                        return Err(double("the nonce was already signed for another intent".into()));
                    }
                    let old_tx = evm::decode_eip1559(&old.payload)
                        .map_err(|_| double("a recorded payload for this slot does not decode".into()))?;
                    if let Some(reason) = evm::fee_bump_refusal(&old_tx, &tx) {
                        return Err(double(reason));
                    }
                }
            }
            let signature = self.sign_and_verify(&req.key_id, &req.payload)?;
            let at_ms = now_ms();
            let entry = SlotEntry { payload: req.payload.clone(), payload_sha256, intent_hash, at_ms };
            let access = KeyAccessEntry {
                at_ms,
                key_id: req.key_id.clone(),
                operation: "sign".into(),
                payload_sha256,
                intent_hash,
                actor: req.actor.clone(),
                terminal: req.terminal.clone(),
            };
            let expected: Vec<[u8; 32]> = prior.iter().map(|e| e.payload_sha256).collect();
            match self.journal.record(&slot, &expected, &entry, &access).await {
                Ok(()) => return Ok(signature),
                Err(JournalError::Conflict) => continue,
                Err(e) => return Err(journal_down(e)),
            }
        }
        Err(SignerError::JournalUnavailable(format!("slot kept changing under {SLOT_CONFLICT_RETRIES_MAX} attempts")))
    }
}

fn journal_down(e: JournalError) -> SignerError {
    SignerError::JournalUnavailable(e.to_string())
}

impl Signer for LocalSigner {
    fn sign_evm<'a>(&'a self, req: &'a EvmSignRequest) -> BoxFuture<'a, Result<[u8; 65], SignerError>> {
        Box::pin(self.sign_evm_inner(req))
    }
}
