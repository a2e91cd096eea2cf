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

use kinko_core::operator_registry::RegistryChange;
use kinko_core::operators::{ApprovalSubject, Process};

use crate::approvals::{LoggedChange, OperatorRegistry, SigningQuorum, verify_quorum};
use crate::backend::{SecpKey, SoftwareKey};
use crate::evm::{self, EvmPolicy};
use crate::journal::{JournalError, KeyAccessEntry, SignerJournal, SlotEntry, SlotKey};
use crate::{Approval, BoxFuture, EvmSignRequest, Signer, SignerError};

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

/// The signer's own operator registry (K8, O3) with its durable log. The signer process's service holds one
/// from startup (so registry changes work while sealed) and shares it with every [`LocalSigner`] it
/// unseals; `kinko dev` loads one per in-process signer.
pub struct SignerRegistry {
    journal: Arc<dyn SignerJournal>,
    registry: RwLock<OperatorRegistry>,
    /// One change at a time: verify, persist, then swap in memory, without another change in between.
    apply_lock: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for SignerRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignerRegistry").field("head", &self.head().ok().flatten()).finish_non_exhaustive()
    }
}

impl SignerRegistry {
    /// A registry before genesis: no approval counts until changes are applied.
    pub fn empty(journal: Arc<dyn SignerJournal>) -> SignerRegistry {
        SignerRegistry {
            journal,
            registry: RwLock::new(OperatorRegistry::new()),
            apply_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Reads the signer's registry log and replays it, verifying every signature. A log that does not
    /// verify (an edited, removed or forged row) is refused: the signer must not start on it.
    pub async fn load(journal: Arc<dyn SignerJournal>, now_ms: i64) -> Result<SignerRegistry, SignerError> {
        let log = journal.registry_log().await.map_err(journal_down)?;
        let registry = OperatorRegistry::replay(&log, now_ms).map_err(|e| {
            SignerError::Refused(format!("the signer's operator registry log (signer_registry_log) is refused: {e}"))
        })?;
        Ok(SignerRegistry { journal, registry: RwLock::new(registry), apply_lock: tokio::sync::Mutex::new(()) })
    }

    /// Verifies `change` and its approvals against the registry, writes it to the log, then takes it into
    /// memory. Refused changes are `Refused`; a failed write is `JournalUnavailable` and leaves memory as
    /// it was.
    pub async fn apply(&self, change: &RegistryChange, approvals: &[Approval], now_ms: i64) -> Result<(), SignerError> {
        let _one_at_a_time = self.apply_lock.lock().await;
        let mut next = self.registry.read().map_err(|_| registry_poisoned())?.clone();
        // The very change that is already the head (a client retrying after a lost reply): applied once, so
        // this is a no-op rather than an error. Its signatures were verified when it was applied.
        if let (Some(head), Ok(hash)) = (next.head(), change.hash())
            && head == (change.seq, hash)
        {
            return Ok(());
        }
        next.apply_change(change, approvals, now_ms).map_err(|e| SignerError::Refused(e.to_string()))?;
        let entry = LoggedChange { change: change.clone(), approvals: approvals.to_vec(), applied_at_ms: now_ms };
        match self.journal.append_registry(&entry).await {
            Ok(()) => {}
            Err(JournalError::Conflict) => {
                return Err(SignerError::Refused(format!(
                    "registry position {} is already taken in the signer's log",
                    change.seq
                )));
            }
            Err(e) => return Err(journal_down(e)),
        }
        *self.registry.write().map_err(|_| registry_poisoned())? = next;
        Ok(())
    }

    pub fn head(&self) -> Result<Option<(u64, [u8; 32])>, SignerError> {
        Ok(self.registry.read().map_err(|_| registry_poisoned())?.head())
    }

    /// The log from position `seq` on, at most [`crate::REGISTRY_LOG_PAGE_MAX`] entries (see
    /// [`Signer::registry_log_since`]). Only what this registry verified is served: rows the journal holds
    /// beyond the in-memory head (a change being applied right now, or a row appended behind the signer's
    /// back) are left out, and a log that disagrees with the verified head is an error, never an answer.
    pub async fn log_since(&self, seq: u64) -> Result<Vec<LoggedChange>, SignerError> {
        let Some((head_seq, head_hash)) = self.head()? else {
            return Ok(Vec::new());
        };
        if seq > head_seq {
            return Ok(Vec::new());
        }
        let log = self.journal.registry_log().await.map_err(journal_down)?;
        let page: Vec<LoggedChange> = log
            .into_iter()
            .filter(|e| e.change.seq >= seq && e.change.seq <= head_seq)
            .take(crate::REGISTRY_LOG_PAGE_MAX)
            .collect();
        let inconsistent =
            |what: &str| SignerError::JournalUnavailable(format!("the signer's registry log {what} (from seq {seq})"));
        if page.is_empty() {
            return Err(inconsistent("has no entries below the verified head"));
        }
        for (i, entry) in page.iter().enumerate() {
            if Some(entry.change.seq) != seq.checked_add(i as u64) {
                return Err(inconsistent("has a gap"));
            }
        }
        if let Some(last) = page.last()
            && last.change.seq == head_seq
            && last.change.hash().ok() != Some(head_hash)
        {
            return Err(inconsistent("does not end in the verified head"));
        }
        Ok(page)
    }

    /// Runs `f` on the current registry (read-locked; `f` must not block).
    pub fn with<T>(&self, f: impl FnOnce(&OperatorRegistry) -> T) -> Result<T, SignerError> {
        let registry = self.registry.read().map_err(|_| registry_poisoned())?;
        Ok(f(&registry))
    }
}

fn registry_poisoned() -> SignerError {
    SignerError::Internal("operator registry lock poisoned".into())
}

pub struct LocalSigner {
    journal: Arc<dyn SignerJournal>,
    /// Whose approvals count (K8); see [`SignerRegistry`].
    registry: RwLock<Arc<SignerRegistry>>,
    /// How many approvals each (key, asset, amount) needs (K11). `None`: nothing signs (fail closed).
    quorum: RwLock<Option<Arc<SigningQuorum>>>,
    ring: RwLock<KeyRing>,
    policies: RwLock<HashMap<u64, EvmPolicy>>,
    secp: Secp256k1<VerifyOnly>,
    /// Consulted before every signature when set (K2, K3): only an active key within its routine
    /// policy signs. Unset for signers whose keys have no lifecycle record (unit tests).
    key_gate: std::sync::OnceLock<Arc<dyn kinko_core::key_lifecycle::KeyGate>>,
    /// Deposit keys and gas top-ups (K13, [`crate::sweep`]): the deposit account key, set at unseal, dropped
    /// (zeroized) at seal. `None`: deposit keys are unknown and top-ups need approvals like anything else.
    deposit: RwLock<Option<crate::sweep::DepositSigning>>,
    /// (owner key id, chain id) → the Safes that key is an owner of, from the signer's own configuration
    /// (K15): a Safe owner signature is only given for one of these.
    safes: RwLock<HashMap<(String, u64), Vec<alloy_primitives::Address>>>,
    /// Emergency freezes (K19, S5), checked before every signature; shared across seal and unseal.
    freezes: RwLock<Arc<crate::freeze::SignerFreezes>>,
    /// The custodian's own cold wallets (K13), from the signer's OWN configuration (`[signer] cold_wallets`,
    /// lower-case 0x-hex): a custodian transfer to one of these needs no operator approval, whatever its
    /// amount, because the money stays the custodian's. A compromised server cannot add an address here.
    cold_wallets: RwLock<std::collections::HashSet<String>>,
    /// Bitcoin BIP84 accounts by key id (issue 9, [`crate::btc`]): the account's extended private key, set at
    /// unseal from the master seed, dropped (erased) at seal.
    btc: RwLock<HashMap<String, Arc<crate::btc::BtcAccountKey>>>,
    /// Multisig cosigner keys by key id (K15, [`crate::btc_multisig`]): a BIP48 account key with the pinned
    /// wallet it cosigns for, set at unseal from the master seed, dropped (erased) at seal.
    btc_cosigners: RwLock<HashMap<String, Arc<BtcCosignerHold>>>,
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
    /// An unsealed signer with an empty key ring, an empty operator registry (call [`Self::load_registry`]
    /// or [`Self::set_registry`]) and no quorum (call [`Self::set_quorum`]; until then it signs nothing).
    pub fn new(journal: Arc<dyn SignerJournal>) -> Self {
        LocalSigner {
            registry: RwLock::new(Arc::new(SignerRegistry::empty(journal.clone()))),
            freezes: RwLock::new(Arc::new(crate::freeze::SignerFreezes::empty(journal.clone()))),
            quorum: RwLock::new(None),
            journal,
            ring: RwLock::new(KeyRing { sealed: false, keys: HashMap::new(), ed25519: HashMap::new() }),
            policies: RwLock::new(HashMap::new()),
            secp: Secp256k1::verification_only(),
            key_gate: std::sync::OnceLock::new(),
            deposit: RwLock::new(None),
            safes: RwLock::new(HashMap::new()),
            cold_wallets: RwLock::new(std::collections::HashSet::new()),
            btc: RwLock::new(HashMap::new()),
            btc_cosigners: RwLock::new(HashMap::new()),
        }
    }

    /// Sets the custodian's cold wallets (`[signer] cold_wallets`, K13): automatic sweeps hot → cold to one
    /// of them sign without approvals. Addresses are compared lower-case.
    pub fn set_cold_wallets(&self, addresses: &[String]) -> Result<(), SignerError> {
        *self.cold_wallets.write().map_err(|_| poisoned())? =
            addresses.iter().map(|a| a.to_ascii_lowercase()).collect();
        Ok(())
    }

    /// Whether `req` is a custodian transfer to one of the signer's own cold wallets (K13): the intent is the
    /// custodian's (reserved customer row and fixed reason) and its destination is in the signer's list. The
    /// payload's destination is checked against the intent before this counts (`check_against_intent`).
    fn is_sweep_to_own_cold_wallet(&self, req: &EvmSignRequest) -> Result<bool, SignerError> {
        let cold = self.cold_wallets.read().map_err(|_| poisoned())?;
        Ok(req.intent.customer_id == kinko_core::withdrawal::CUSTODIAN_CUSTOMER_ID
            && req.intent.reason == kinko_core::withdrawal::CUSTODIAN_TRANSFER_REASON
            && cold.contains(&req.intent.destination.to_ascii_lowercase()))
    }

    /// Lets this signer sign for deposit addresses (keys derived on demand from the deposit account, paying
    /// only the address of its hot key) and gas top-ups up to a cap ([`crate::sweep`], K13).
    pub fn set_deposit_signing(&self, signing: crate::sweep::DepositSigning) -> Result<(), SignerError> {
        if self.is_sealed() {
            return Err(SignerError::Sealed);
        }
        *self.deposit.write().map_err(|_| poisoned())? = Some(signing);
        Ok(())
    }

    /// The most one gas top-up may pay without approval (`[signer] deposit_top_up_cap_wei`).
    pub fn set_top_up_cap_wei(&self, cap_wei: u128) -> Result<(), SignerError> {
        if let Some(d) = self.deposit.write().map_err(|_| poisoned())?.as_mut() {
            d.top_up_cap_wei = cap_wei;
        }
        Ok(())
    }

    /// For a deposit key: `Some(Ok(()))` when the request is a sweep it may sign without approval, `Some(Err)`
    /// naming why not; for a gas top-up by the hot key: `Some(Ok(()))` when the top-up rule holds; `None` when
    /// neither applies and the ordinary approval rules decide. `tx` is `None` for the approval pre-check, which
    /// judges the intent alone.
    fn automatic_rule(
        &self,
        req: &EvmSignRequest,
        tx: Option<&alloy_consensus::TxEip1559>,
    ) -> Option<Result<(), SignerError>> {
        let policy = match self.policy(req.chain_id) {
            Ok(p) => p,
            Err(e) => return Some(Err(e)),
        };
        let Ok(deposit) = self.deposit.read() else { return Some(Err(poisoned())) };
        if crate::sweep::parse_deposit_key_id(&req.key_id).is_some() {
            let Some(d) = deposit.as_ref() else {
                return Some(Err(SignerError::Refused(format!(
                    "key {:?} is a deposit key, but this signer holds no deposit account (no master seed at unseal)",
                    req.key_id
                ))));
            };
            let Some(hot) = self.address(&d.hot_key_id) else {
                return Some(Err(SignerError::Refused(format!(
                    "deposit keys pay only the hot wallet, and the hot key {:?} is not loaded",
                    d.hot_key_id
                ))));
            };
            return Some(match tx {
                Some(tx) => crate::sweep::check_deposit_sweep(tx, &req.key_id, &req.intent, &hot, &policy),
                None if req.intent.reason != crate::sweep::DEPOSIT_SWEEP_REASON
                    || !req.intent.destination.eq_ignore_ascii_case(&hot) =>
                {
                    Err(SignerError::Refused(format!(
                        "deposit key {:?} signs only a {:?} into the signer's own hot wallet {hot}",
                        req.key_id,
                        crate::sweep::DEPOSIT_SWEEP_REASON
                    )))
                }
                None => Ok(()),
            });
        }
        let d = deposit.as_ref()?;
        if req.key_id != d.hot_key_id {
            return None;
        }
        match crate::sweep::check_gas_top_up(&req.intent, &policy, d.top_up_cap_wei, |i| d.account.address(i)) {
            Ok(true) => Some(Ok(())),
            Ok(false) => None,
            Err(e) => Some(Err(e)),
        }
    }

    /// Derives deposit key `key_id` into the key ring when it is one and is not there yet; it is zeroized at
    /// seal with every other key.
    fn derive_deposit_key(&self, key_id: &str) -> Result<(), SignerError> {
        let Some(index) = crate::sweep::parse_deposit_key_id(key_id) else { return Ok(()) };
        if self.is_sealed() {
            return Err(SignerError::Sealed);
        }
        if self.address(key_id).is_some() {
            return Ok(());
        }
        let secret = {
            let deposit = self.deposit.read().map_err(|_| poisoned())?;
            let Some(d) = deposit.as_ref() else {
                return Err(SignerError::Refused(format!(
                    "key {key_id:?} is a deposit key, but this signer holds no deposit account (no master seed at unseal)"
                )));
            };
            d.account.secret(index)?
        };
        self.add_secp256k1_key(key_id, secret)?;
        Ok(())
    }

    /// Installs the key-state gate (e.g. `kinko_store::key_lifecycle::StoreKeyGate`). Once only: a gate
    /// that could be swapped out at run time would be a way around it.
    pub fn set_key_gate(&self, gate: Arc<dyn kinko_core::key_lifecycle::KeyGate>) -> Result<(), SignerError> {
        self.key_gate.set(gate).map_err(|_| SignerError::Internal("key gate already set".into()))
    }

    /// Sets the signer's quorum policy (`[[signer.quorum]]`, validated by [`SigningQuorum::from_configs`]).
    pub fn set_quorum(&self, quorum: SigningQuorum) -> Result<(), SignerError> {
        *self.quorum.write().map_err(|_| poisoned())? = Some(Arc::new(quorum));
        Ok(())
    }

    /// Loads the operator registry from this signer's journal, verifying every signature of its log;
    /// refused (and the registry left as it was) when the log does not verify.
    pub async fn load_registry(&self) -> Result<(), SignerError> {
        let registry = SignerRegistry::load(self.journal.clone(), now_ms()).await?;
        // The freeze log's lifts are verified against this registry, so both load together (K19).
        let snapshot = registry.with(|r| r.clone())?;
        let freezes =
            crate::freeze::SignerFreezes::load(self.journal.clone(), &snapshot, self.unfreeze_approvals()).await?;
        freezes.set_evacuation_approvals(self.evacuation_approvals())?;
        self.set_freezes(Arc::new(freezes))?;
        self.set_registry(Arc::new(registry))
    }

    /// How many signing managers must approve an unfreeze (`[emergency] unfreeze_approvals`, at least 1).
    pub fn set_unfreeze_approvals(&self, m: u8) -> Result<(), SignerError> {
        self.freezes()?.set_unfreeze_approvals(m)
    }

    fn unfreeze_approvals(&self) -> u8 {
        self.freezes.read().map(|f| f.unfreeze_approvals()).unwrap_or(crate::freeze::UNFREEZE_APPROVALS_DEFAULT)
    }

    /// Shares an already loaded freeze state (the signer process's, kept across seal and unseal).
    pub fn set_freezes(&self, freezes: Arc<crate::freeze::SignerFreezes>) -> Result<(), SignerError> {
        *self.freezes.write().map_err(|_| poisoned())? = freezes;
        Ok(())
    }

    pub fn freezes(&self) -> Result<Arc<crate::freeze::SignerFreezes>, SignerError> {
        Ok(self.freezes.read().map_err(|_| poisoned())?.clone())
    }

    /// Shares an already loaded registry (the signer process's, kept across seal and unseal).
    pub fn set_registry(&self, registry: Arc<SignerRegistry>) -> Result<(), SignerError> {
        *self.registry.write().map_err(|_| poisoned())? = registry;
        Ok(())
    }

    pub fn registry(&self) -> Result<Arc<SignerRegistry>, SignerError> {
        Ok(self.registry.read().map_err(|_| poisoned())?.clone())
    }

    /// Checks the approvals of `req` against the signer's own registry and quorum (K8, K11, K12); returns
    /// the operators whose approvals counted.
    fn verify_approvals(&self, req: &EvmSignRequest, now_ms: i64) -> Result<Vec<String>, SignerError> {
        let refused = |e: crate::approvals::ApprovalError| SignerError::Refused(e.to_string());
        let quorum = self.quorum.read().map_err(|_| poisoned())?.clone().ok_or_else(|| {
            SignerError::Refused("no signing quorum is configured ([[signer.quorum]]): the signer signs nothing".into())
        })?;
        let policy = quorum.policy_for(&req.key_id, req.intent.asset.as_str(), req.intent.amount).map_err(refused)?;
        // K13: the hot wallet's automatic sweep to the custodian's own cold wallet needs no operator (the key
        // and asset still need a quorum entry above, so an unconfigured key signs nothing).
        if self.is_sweep_to_own_cold_wallet(req)? {
            return Ok(Vec::new());
        }
        let subject = ApprovalSubject::new(Process::Signing, &req.intent.id, req.intent.hash())
            .map_err(|e| SignerError::Refused(format!("approval subject: {e}")))?;
        let verified = self
            .registry()?
            .with(|registry| verify_quorum(registry, &subject, &req.approvals, policy, &req.actor, now_ms))?
            .map_err(refused)?;
        Ok(verified.approvers)
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
        // No chain or wallet is known for a raw message: only an everything or key freeze can name it.
        self.freezes()?.check("", "", &req.key_id)?;
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
        drop(ring);
        match self.deposit.write() {
            Ok(mut d) => *d = None,
            Err(p) => *p.into_inner() = None,
        }
        match self.btc.write() {
            Ok(mut b) => b.clear(),
            Err(p) => p.into_inner().clear(),
        }
        match self.btc_cosigners.write() {
            Ok(mut b) => b.clear(),
            Err(p) => p.into_inner().clear(),
        }
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
        self.derive_deposit_key(&req.key_id)?;
        let key_address = self.key_address(&req.key_id)?;
        // K19, S5: a frozen scope signs nothing, whatever the request says about approvals — except an
        // evacuation the signer verifies itself below (`crate::evacuation`).
        let evacuation = self.frozen_unless_evacuation(req, &key_address)?;
        if let Some(gate) = self.key_gate.get() {
            gate.may_sign(&req.key_id, now_ms()).await.map_err(SignerError::Refused)?;
        }
        let tx = evm::decode_eip1559(&req.payload)?;
        let policy = self.policy(req.chain_id)?;
        // K13: a deposit key's own rule first, so what it refuses is named as the sweep rule's refusal.
        let automatic = self.automatic_rule(req, Some(&tx)).transpose()?.is_some();
        // K15: `execTransaction` to a Safe configured for this key is a relay of owner-signed Safe
        // transactions, checked as the owners check it; everything else is a plain transfer.
        let safes = self.safes_of(&req.key_id, req.chain_id)?;
        match crate::safe::relayed_safe(&tx, &safes) {
            Some(safe) => crate::safe::check_relay(&tx, req, safe, &safes, &policy)?,
            None => evm::check_against_intent(&tx, req.chain_id, req.nonce, &req.intent, &key_address, &policy)?,
        }
        // The signer's own quorum, over its own registry: what the server says about approvals counts for
        // nothing here (a compromised server can mark an intent approved, it cannot forge the signatures).
        // Deposit sweeps and capped gas top-ups move money only between the custodian's own addresses, by rules
        // the signer checked itself just above: they need no approval (K13).
        let approvers = match evacuation {
            Some(order) => self.verify_evacuation(order, &req.intent, &key_address, Some(&tx))?,
            None if automatic => Vec::new(),
            None => self.verify_approvals(req, now_ms())?,
        };

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
                approvers: approvers.clone(),
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

impl LocalSigner {
    /// Registers `safe` as a Safe that `key_id` serves on `chain_id` (the signer's own configuration, K15): as
    /// one of its owners (`sign_safe_tx`), or as the relayer whose `sign_evm` may submit its `execTransaction`
    /// (see [`crate::safe::check_relay`]). At most [`crate::safe::SAFES_PER_KEY_MAX`] per key and chain.
    pub fn add_safe(&self, key_id: &str, chain_id: u64, safe: alloy_primitives::Address) -> Result<(), SignerError> {
        let mut safes = self.safes.write().map_err(|_| poisoned())?;
        let list = safes.entry((key_id.to_string(), chain_id)).or_default();
        if !list.contains(&safe) {
            if list.len() >= crate::safe::SAFES_PER_KEY_MAX {
                return Err(SignerError::Refused(format!(
                    "key {key_id:?} already has {} Safes on chain {chain_id}",
                    crate::safe::SAFES_PER_KEY_MAX
                )));
            }
            list.push(safe);
        }
        Ok(())
    }

    /// The Safes configured for `key_id` on `chain_id` (see [`Self::add_safe`]).
    fn safes_of(&self, key_id: &str, chain_id: u64) -> Result<Vec<alloy_primitives::Address>, SignerError> {
        let safes = self.safes.read().map_err(|_| poisoned())?;
        Ok(safes.get(&(key_id.to_string(), chain_id)).cloned().unwrap_or_default())
    }

    /// See [`Signer::sign_safe_tx`]: the same gates, approvals, journal and verification as `sign_evm`,
    /// around [`crate::safe::check_safe_tx`].
    async fn sign_safe_inner(&self, req: &crate::safe::SafeSignRequest) -> Result<[u8; 65], SignerError> {
        let key_address = self.key_address(&req.key_id)?;
        let safe_hex = format!("{:#x}", req.safe_address);
        // K19: a freeze of the owner key's address or of the Safe stops the owner signature.
        let freezes = self.freezes()?;
        freezes.check(crate::freeze::EVM_CHAIN, &key_address, &req.key_id)?;
        freezes.check(crate::freeze::EVM_CHAIN, &safe_hex, &req.key_id)?;
        if let Some(gate) = self.key_gate.get() {
            gate.may_sign(&req.key_id, now_ms()).await.map_err(SignerError::Refused)?;
        }
        let configured = self.safes_of(&req.key_id, req.chain_id)?;
        let policy = self.policy(req.chain_id)?;
        let checked = crate::safe::check_safe_tx(req, &configured, &policy)?;
        // The very approval check `sign_evm` runs (registry, quorum for key/asset/amount, actor): payload and
        // nonce play no part in it.
        let as_evm = EvmSignRequest {
            key_id: req.key_id.clone(),
            chain_id: req.chain_id,
            nonce: checked.nonce,
            payload: Vec::new(),
            intent: req.intent.clone(),
            approvals: req.approvals.clone(),
            actor: req.actor.clone(),
            terminal: req.terminal.clone(),
            evacuation: None,
        };
        let approvers = self.verify_approvals(&as_evm, now_ms())?;

        let slot = crate::safe::safe_slot(&req.key_id, req.chain_id, req.safe_address, checked.nonce);
        let payload_sha256: [u8; 32] = Sha256::digest(&checked.preimage).into();
        let intent_hash = req.intent.hash();
        for _ in 0..SLOT_CONFLICT_RETRIES_MAX {
            let prior = self.journal.slot_entries(&slot).await.map_err(journal_down)?;
            // One Safe nonce, one transaction: a Safe transaction has no fee to bump, so anything else already
            // signed for this nonce makes this one a double sign.
            if prior.iter().any(|e| e.payload_sha256 != payload_sha256) {
                return Err(SignerError::DoubleSign {
                    key_id: slot.key_id.clone(),
                    chain: slot.chain.clone(),
                    slot: slot.slot.clone(),
                    reason: "another Safe transaction was already signed for this Safe nonce".into(),
                });
            }
            let signature = crate::safe::to_safe_signature(self.sign_and_verify(&req.key_id, &checked.preimage)?)?;
            let at_ms = now_ms();
            let entry = SlotEntry { payload: checked.preimage.clone(), payload_sha256, intent_hash, at_ms };
            let access = KeyAccessEntry {
                at_ms,
                key_id: req.key_id.clone(),
                operation: crate::safe::SAFE_SIGN_OPERATION.into(),
                payload_sha256,
                intent_hash,
                actor: req.actor.clone(),
                terminal: req.terminal.clone(),
                approvers: approvers.clone(),
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

/// A multisig cosigner key as the signer holds it (K15): its BIP48 account key, the pinned wallet it
/// cosigns for and the fee bound it signs under.
struct BtcCosignerHold {
    key: crate::btc_multisig::CosignerKey,
    wallet: kinko_keys::btc::MultisigWallet,
    fee_cap_sat: u64,
}

impl LocalSigner {
    /// Holds the BIP84 account of `master` for `network` under `key_id` (Bitcoin, issue 9): the account key
    /// `m/84'/<coin>'/0'` is derived and kept, the master is not. Returns the account (fingerprint, path,
    /// xpub) for the online side. Another account under a used id is refused.
    pub fn set_btc_account(
        &self,
        key_id: &str,
        master: &bitcoin::bip32::Xpriv,
        network: bitcoin::Network,
        fee_cap_sat: u64,
    ) -> Result<kinko_keys::btc::Bip84Account, SignerError> {
        if self.is_sealed() {
            return Err(SignerError::Sealed);
        }
        let key = crate::btc::BtcAccountKey::from_master(master, network, fee_cap_sat)?;
        let account = key.account().clone();
        let mut btc = self.btc.write().map_err(|_| poisoned())?;
        if let Some(existing) = btc.get(key_id)
            && existing.account() != &account
        {
            return Err(SignerError::Refused(format!("key id {key_id:?} already holds another Bitcoin account")));
        }
        btc.insert(key_id.to_string(), Arc::new(key));
        Ok(account)
    }

    /// Holds the BIP48 P2WSH account of `master` as the online cosigner `key_id` of the pinned multisig
    /// `wallet` (K15), signing under `fee_cap_sat`. Refused when that account is not one of the wallet's
    /// cosigners (the wallet was pinned for other keys) or when `key_id` already holds another cosigner or
    /// wallet. Returns the cosigner (fingerprint, path, xpub).
    pub fn set_btc_cosigner(
        &self,
        key_id: &str,
        master: &bitcoin::bip32::Xpriv,
        wallet: kinko_keys::btc::MultisigWallet,
        fee_cap_sat: u64,
    ) -> Result<kinko_keys::btc::Cosigner, SignerError> {
        if self.is_sealed() {
            return Err(SignerError::Sealed);
        }
        let key = crate::btc_multisig::CosignerKey::from_master(master, wallet.network)?;
        let cosigner = key.cosigner.clone();
        if !wallet.cosigners.contains(&cosigner) {
            return Err(SignerError::Refused(format!(
                "key {key_id:?}: the signer's BIP48 account {} ({}) is not a cosigner of the pinned multisig wallet",
                cosigner.xpub, cosigner.master_fingerprint
            )));
        }
        let mut held = self.btc_cosigners.write().map_err(|_| poisoned())?;
        if let Some(existing) = held.get(key_id)
            && (existing.key.cosigner != cosigner || existing.wallet != wallet)
        {
            return Err(SignerError::Refused(format!(
                "key id {key_id:?} already holds another multisig cosigner or wallet"
            )));
        }
        held.insert(key_id.to_string(), Arc::new(BtcCosignerHold { key, wallet, fee_cap_sat }));
        Ok(cosigner)
    }

    fn btc_key(&self, key_id: &str) -> Result<Arc<crate::btc::BtcAccountKey>, SignerError> {
        if self.is_sealed() {
            return Err(SignerError::Sealed);
        }
        self.btc
            .read()
            .map_err(|_| poisoned())?
            .get(key_id)
            .cloned()
            .ok_or_else(|| SignerError::UnknownKey(key_id.to_string()))
    }

    fn btc_cosigner(&self, key_id: &str) -> Result<Arc<BtcCosignerHold>, SignerError> {
        if self.is_sealed() {
            return Err(SignerError::Sealed);
        }
        self.btc_cosigners
            .read()
            .map_err(|_| poisoned())?
            .get(key_id)
            .cloned()
            .ok_or_else(|| SignerError::UnknownKey(key_id.to_string()))
    }

    /// The gates every Bitcoin signature passes before its PSBT is even decoded, whatever key signs it: the
    /// request's size, the key's network, the freezes (K19, S5: `chain:btc` or the key; no evacuation path is
    /// built for Bitcoin) and the key lifecycle gate (K2, K3). Returns the decoded PSBT.
    async fn btc_request_gates(
        &self,
        req: &crate::btc::BtcSignRequest,
        key_network: bitcoin::Network,
    ) -> Result<bitcoin::Psbt, SignerError> {
        use crate::btc;
        if req.psbt.len() > btc::BTC_PSBT_BYTES_MAX {
            return Err(SignerError::Malformed(format!(
                "psbt is {} bytes, more than the {} accepted",
                req.psbt.len(),
                btc::BTC_PSBT_BYTES_MAX
            )));
        }
        if key_network != req.network {
            return Err(SignerError::Refused(format!(
                "key {:?} is a {key_network} account; the request is for {}",
                req.key_id, req.network
            )));
        }
        self.freezes()?.check(btc::BTC_FREEZE_CHAIN, "", &req.key_id)?;
        if let Some(gate) = self.key_gate.get() {
            gate.may_sign(&req.key_id, now_ms()).await.map_err(SignerError::Refused)?;
        }
        bitcoin::Psbt::deserialize(&req.psbt)
            .map_err(|e| SignerError::Malformed(format!("psbt does not decode (BIP174): {e}")))
    }

    /// The very approval check `sign_evm` runs (registry, quorum for key/`BTC`/amount, actor) for a Bitcoin
    /// request: payload and nonce play no part in it. Returns the operators that counted.
    fn btc_approvers(&self, req: &crate::btc::BtcSignRequest) -> Result<Vec<String>, SignerError> {
        let as_evm = EvmSignRequest {
            key_id: req.key_id.clone(),
            chain_id: req.intent.chain_id.0,
            nonce: 0,
            payload: Vec::new(),
            intent: req.intent.clone(),
            approvals: req.approvals.clone(),
            actor: req.actor.clone(),
            terminal: req.terminal.clone(),
            evacuation: None,
        };
        self.verify_approvals(&as_evm, now_ms())
    }

    /// Records `spent` (the outpoints `payload` spends) in the anti-double-sign journal for `req.key_id`, with
    /// one key access log entry per outpoint under `operation`; `Ok` only once every slot holds the payload.
    /// Shared by the single-key signature and the multisig cosignature, so both follow the same rules: every
    /// slot is judged ([`judge_btc_slot`]) before any is written, so a refusal on one outpoint leaves the
    /// others unrecorded; then each is written with the journal's compare-and-append, and a concurrent change
    /// means deciding every slot again.
    async fn record_btc_outpoints(
        &self,
        req: &crate::btc::BtcSignRequest,
        operation: &str,
        payload: &[u8],
        spent: &[bitcoin::OutPoint],
        approvers: &[String],
    ) -> Result<(), SignerError> {
        let payload_sha256: [u8; 32] = Sha256::digest(payload).into();
        let intent_hash = req.intent.hash();
        let destination = crate::btc::intent_destination(&req.intent, req.network)?.script_pubkey();
        let new_psbt = bitcoin::Psbt::deserialize(payload)
            .map_err(|e| SignerError::Internal(format!("journal payload does not decode: {e}")))?;
        // A fixed order, so that two requests racing on the same outpoints meet on the first one.
        let mut spent = spent.to_vec();
        spent.sort();
        let slots: Vec<SlotKey> = spent.iter().map(|o| SlotKey::btc(&req.key_id, req.network, o)).collect();
        'attempt: for _ in 0..SLOT_CONFLICT_RETRIES_MAX {
            let mut expected_per_slot: Vec<Vec<[u8; 32]>> = Vec::with_capacity(slots.len());
            for slot in &slots {
                let prior = self.journal.slot_entries(slot).await.map_err(journal_down)?;
                judge_btc_slot(slot, &prior, payload_sha256, intent_hash, &new_psbt, &destination)?;
                expected_per_slot.push(prior.iter().map(|e| e.payload_sha256).collect());
            }
            for (slot, expected) in slots.iter().zip(&expected_per_slot) {
                let at_ms = now_ms();
                let entry = SlotEntry { payload: payload.to_vec(), payload_sha256, intent_hash, at_ms };
                let access = KeyAccessEntry {
                    at_ms,
                    key_id: req.key_id.clone(),
                    operation: operation.into(),
                    payload_sha256,
                    intent_hash,
                    actor: req.actor.clone(),
                    terminal: req.terminal.clone(),
                    approvers: approvers.to_vec(),
                };
                match self.journal.record(slot, expected, &entry, &access).await {
                    Ok(()) => {}
                    // Decide every slot again: the ones recorded already now hold this payload (a no-op).
                    Err(JournalError::Conflict) => continue 'attempt,
                    Err(e) => return Err(journal_down(e)),
                }
            }
            return Ok(());
        }
        Err(SignerError::JournalUnavailable(format!("slots kept changing under {SLOT_CONFLICT_RETRIES_MAX} attempts")))
    }

    /// See [`Signer::sign_btc_psbt`]: the same gates, approvals and journal as `sign_evm`, around
    /// [`crate::btc::check_psbt_against_intent`], with one anti-double-sign slot per spent outpoint.
    async fn sign_btc_inner(&self, req: &crate::btc::BtcSignRequest) -> Result<crate::btc::BtcSigned, SignerError> {
        use crate::btc;
        let key = self.btc_key(&req.key_id)?;
        let mut psbt = self.btc_request_gates(req, key.network()).await?;
        let checked = btc::check_psbt_against_intent(
            &psbt,
            &req.intent,
            req.network,
            &|txout, output| key.is_own_change(txout, output),
            key.fee_cap_sat(),
        )?;
        let approvers = self.btc_approvers(req)?;
        let payload = btc::btc_journal_payload(&psbt)?;

        // Signed, finalized and verified before anything is recorded, but returned only once every slot is.
        // Foreign inputs are refused here (the key of each input is re-derived from its path).
        key.sign(&mut psbt)?;
        kinko_chain::btc::psbt::finalize_p2wpkh(&mut psbt)
            .map_err(|e| SignerError::Internal(format!("finalize: {e}")))?;
        let prevouts = kinko_chain::btc::consensus::prevouts_of(&psbt)
            .map_err(|e| SignerError::Internal(format!("consensus check: {e}")))?;
        let finalized = psbt.serialize();
        let tx = psbt.extract_tx_unchecked_fee_rate();
        kinko_chain::btc::consensus::verify_spend(&tx, &prevouts)
            .map_err(|e| SignerError::Internal(format!("libbitcoinconsensus refuses the signed transaction: {e}")))?;
        let signed = btc::BtcSigned {
            psbt: finalized,
            raw_tx: bitcoin::consensus::encode::serialize(&tx),
            txid: tx.compute_txid(),
            fee_sat: checked.fee_sat,
        };
        self.record_btc_outpoints(req, btc::BTC_SIGN_OPERATION, &payload, &checked.spent, &approvers).await?;
        Ok(signed)
    }

    /// See [`Signer::cosign_btc_multisig_psbt`]: the gates, approvals and anti-double-sign record of
    /// `sign_btc_psbt` around [`crate::btc_multisig::cosign`].
    async fn cosign_btc_inner(
        &self,
        req: &crate::btc::BtcSignRequest,
    ) -> Result<crate::btc_multisig::BtcCosigned, SignerError> {
        let hold = self.btc_cosigner(&req.key_id)?;
        let mut psbt = self.btc_request_gates(req, hold.wallet.network).await?;
        // Approvals before any signature is computed; `cosign` checks the PSBT against the intent, the
        // pinned wallet (inputs and change re-derived) and every signature already present, and leaves the
        // PSBT unchanged on a refusal.
        let approvers = self.btc_approvers(req)?;
        let payload = crate::btc::btc_journal_payload(&psbt)?;
        let cosigned = crate::btc_multisig::cosign(&mut psbt, &hold.wallet, &hold.key, &req.intent, hold.fee_cap_sat)?;
        self.record_btc_outpoints(
            req,
            crate::btc_multisig::BTC_COSIGN_OPERATION,
            &payload,
            &cosigned.checked.spent,
            &approvers,
        )
        .await?;
        Ok(crate::btc_multisig::BtcCosigned {
            psbt: psbt.serialize(),
            txid: cosigned.checked.unsigned_txid,
            fee_sat: cosigned.checked.fee_sat,
            signed_inputs: cosigned.signed_inputs,
            cosigner_fingerprint: hold.key.cosigner.master_fingerprint.to_string(),
        })
    }
}

/// Whether one outpoint's slot may take `payload` (its sha256, the intent it is for, decoded, and the
/// intent's destination script), given what the slot already holds: the same payload again (a retry) or a
/// first one always; another payload only as a BIP125 fee bump of every payload recorded there for the same
/// intent ([`crate::btc::btc_fee_bump_refusal`]), and at most [`SLOT_PAYLOADS_MAX`] of them. Otherwise the
/// double sign, naming the slot.
fn judge_btc_slot(
    slot: &SlotKey,
    prior: &[SlotEntry],
    payload_sha256: [u8; 32],
    intent_hash: [u8; 32],
    new_psbt: &bitcoin::Psbt,
    destination: &bitcoin::Script,
) -> Result<(), SignerError> {
    let double = |reason: String| SignerError::DoubleSign {
        key_id: slot.key_id.clone(),
        chain: slot.chain.clone(),
        slot: slot.slot.clone(),
        reason,
    };
    if prior.iter().any(|e| e.payload_sha256 == payload_sha256) {
        return Ok(());
    }
    if prior.len() >= SLOT_PAYLOADS_MAX {
        return Err(double(format!("outpoint already holds {SLOT_PAYLOADS_MAX} payloads")));
    }
    for old in prior {
        if old.intent_hash != intent_hash {
            return Err(double("the outpoint was already signed for another intent".into()));
        }
        let old_psbt = bitcoin::Psbt::deserialize(&old.payload)
            .map_err(|_| double("a recorded payload for this outpoint does not decode".into()))?;
        if let Some(reason) = crate::btc::btc_fee_bump_refusal(&old_psbt, new_psbt, destination) {
            return Err(double(reason));
        }
    }
    Ok(())
}

fn journal_down(e: JournalError) -> SignerError {
    SignerError::JournalUnavailable(e.to_string())
}

impl Signer for LocalSigner {
    fn sign_evm<'a>(&'a self, req: &'a EvmSignRequest) -> BoxFuture<'a, Result<[u8; 65], SignerError>> {
        Box::pin(self.sign_evm_inner(req))
    }

    fn sign_safe_tx<'a>(
        &'a self,
        req: &'a crate::safe::SafeSignRequest,
    ) -> BoxFuture<'a, Result<[u8; 65], SignerError>> {
        Box::pin(self.sign_safe_inner(req))
    }

    fn sign_btc_psbt<'a>(
        &'a self,
        req: &'a crate::btc::BtcSignRequest,
    ) -> BoxFuture<'a, Result<crate::btc::BtcSigned, SignerError>> {
        Box::pin(self.sign_btc_inner(req))
    }

    fn cosign_btc_multisig_psbt<'a>(
        &'a self,
        req: &'a crate::btc::BtcSignRequest,
    ) -> BoxFuture<'a, Result<crate::btc_multisig::BtcCosigned, SignerError>> {
        Box::pin(self.cosign_btc_inner(req))
    }

    fn apply_registry_change<'a>(
        &'a self,
        change: &'a RegistryChange,
        approvals: &'a [Approval],
    ) -> BoxFuture<'a, Result<(), SignerError>> {
        Box::pin(async move { self.registry()?.apply(change, approvals, now_ms()).await })
    }

    fn registry_head(&self) -> BoxFuture<'_, Result<crate::RegistryHead, SignerError>> {
        Box::pin(async move { self.registry()?.head() })
    }

    fn check_approvals<'a>(&'a self, req: &'a EvmSignRequest) -> BoxFuture<'a, Result<Vec<String>, SignerError>> {
        Box::pin(async move {
            if self.is_sealed() {
                return Err(SignerError::Sealed);
            }
            // The key's own address when it is loaded, else the wallet the intent names: a missing key is
            // `sign_evm`'s to report, a freeze is reported here too.
            let wallet = self.address(&req.key_id).unwrap_or_else(|| req.intent.source_wallet.clone());
            if let Some(order) = self.frozen_unless_evacuation(req, &wallet)? {
                return self.verify_evacuation(order, &req.intent, &wallet, None);
            }
            match self.automatic_rule(req, None) {
                Some(verdict) => verdict.map(|()| Vec::new()),
                None => self.verify_approvals(req, now_ms()),
            }
        })
    }

    fn registry_log_since<'a>(&'a self, seq: u64) -> BoxFuture<'a, Result<Vec<LoggedChange>, SignerError>> {
        Box::pin(async move { self.registry()?.log_since(seq).await })
    }

    fn freeze<'a>(&'a self, freeze: &'a kinko_core::freeze::Freeze) -> BoxFuture<'a, Result<(), SignerError>> {
        Box::pin(async move { self.freezes()?.freeze(freeze).await })
    }

    fn lift_freeze<'a>(
        &'a self,
        order: &'a crate::freeze::LiftOrder,
    ) -> BoxFuture<'a, Result<Vec<String>, SignerError>> {
        Box::pin(async move {
            let registry = self.registry()?;
            // Verified against a snapshot of the registry: the lock is not held across the write.
            let snapshot = registry.with(|r| r.clone())?;
            self.freezes()?.lift(&snapshot, order, now_ms()).await
        })
    }

    fn active_freezes(&self) -> BoxFuture<'_, Result<Vec<kinko_core::freeze::Freeze>, SignerError>> {
        Box::pin(async move { self.freezes()?.active() })
    }
}

#[cfg(test)]
mod tests {
    use alloy_consensus::{SignableTransaction, TxEip1559};
    use alloy_eips::eip2930::AccessList;
    use alloy_primitives::{Address, Bytes, TxKind, U256};
    use kinko_core::intent::Intent;
    use kinko_core::operator_registry::RegistryChangeKind;
    use kinko_core::operators::{Decision, Role};
    use kinko_core::policy::PolicyClass;
    use kinko_core::{Amount, ChainId};

    use super::*;
    use crate::approvals::tests::{add_kind, key, next_change, sign_change, standard_log};
    use crate::approvals::{QuorumBand, SigningQuorumConfig, sign_approval};
    use crate::testing::{FailingJournal, MemoryJournal};

    const KEY: &str = "eth-hot-1";
    const CHAIN: u64 = 31337;
    const DEST: &str = "0x00000000000000000000000000000000000000aa";
    const AUTO_MAX: u128 = 10;
    /// Above `AUTO_MAX` the signer's quorum demands this many signing managers.
    const M: u8 = 2;

    fn quorum() -> SigningQuorum {
        SigningQuorum::from_configs(&[SigningQuorumConfig {
            key_id: KEY.into(),
            asset: "ETH".into(),
            class: PolicyClass::HotSmall,
            auto_max: Some(Amount::from_base_units(AUTO_MAX)),
            bands: vec![QuorumBand { from: Amount::from_base_units(0), approvals: M }],
        }])
        .unwrap()
    }

    /// A signer with the standard registry (a1, a2 administrators; m1..m3 signing managers; so; om) applied
    /// through its own `apply_registry_change`, and the quorum above.
    async fn signer() -> (LocalSigner, Arc<MemoryJournal>, String) {
        let journal = Arc::new(MemoryJournal::new());
        let signer = LocalSigner::new(journal.clone());
        let address = signer.add_secp256k1_key(KEY, Zeroizing::new([0x11; 32])).unwrap();
        signer.set_quorum(quorum()).unwrap();
        for entry in standard_log(now_ms()) {
            signer.apply_registry_change(&entry.change, &entry.approvals).await.unwrap();
        }
        (signer, journal, address)
    }

    fn request(id: &str, nonce: u64, amount: u128, address: &str, approvals: Vec<Approval>) -> EvmSignRequest {
        let tx = TxEip1559 {
            chain_id: CHAIN,
            nonce,
            gas_limit: 21_000,
            max_fee_per_gas: 2_000_000_000,
            max_priority_fee_per_gas: 1_000_000_000,
            to: TxKind::Call(DEST.parse::<Address>().unwrap()),
            value: U256::from(amount),
            access_list: AccessList::default(),
            input: Bytes::new(),
        };
        let mut payload = Vec::new();
        tx.encode_for_signing(&mut payload);
        let intent = Intent {
            id: id.into(),
            asset: "ETH".parse().unwrap(),
            chain_id: ChainId(CHAIN),
            amount: Amount::from_base_units(amount),
            destination: DEST.into(),
            source_wallet: address.into(),
            customer_id: "c1".into(),
            reason: "customer withdrawal".into(),
        };
        EvmSignRequest {
            key_id: KEY.into(),
            chain_id: CHAIN,
            nonce,
            payload,
            intent,
            approvals,
            actor: "pipeline".into(),
            terminal: "test-host".into(),
            evacuation: None,
        }
    }

    /// Approvals by (key seed, operator id) over the request's signing subject.
    fn approvals(id: &str, amount: u128, address: &str, by: &[(u8, &str)]) -> Vec<Approval> {
        let intent = request(id, 0, amount, address, vec![]).intent;
        let subject = ApprovalSubject::new(Process::Signing, id, intent.hash()).unwrap();
        by.iter().map(|(seed, op)| sign_approval(&key(*seed), op, &subject, Decision::Approve).unwrap()).collect()
    }

    fn refusal(got: Result<[u8; 65], SignerError>) -> String {
        match got {
            Err(SignerError::Refused(m)) => m,
            other => panic!("expected Refused, got {other:?}"),
        }
    }

    async fn nothing_recorded(journal: &MemoryJournal, nonce: u64) {
        assert!(journal.access_log().is_empty(), "a refused request leaves no key access log entry");
        let slot = SlotKey::evm(KEY, CHAIN, nonce);
        assert!(journal.slot_entries(&slot).await.unwrap().is_empty(), "and no anti-double-sign entry");
    }

    #[tokio::test]
    async fn o2_signer_refuses_m_minus_one_approvals_above_auto_max_and_records_nothing() {
        let (signer, journal, address) = signer().await;
        let one = approvals("w1", AUTO_MAX + 1, &address, &[(1, "m1")]);
        let m = refusal(signer.sign_evm(&request("w1", 0, AUTO_MAX + 1, &address, one)).await);
        assert!(m.contains("1 valid approvals of 2 required"), "{m}");
        let none = refusal(signer.sign_evm(&request("w1", 0, AUTO_MAX + 1, &address, vec![])).await);
        assert!(none.contains("0 valid approvals of 2 required"), "{none}");
        nothing_recorded(&journal, 0).await;
    }

    /// K13: a custodian transfer to a cold wallet in the signer's OWN list signs above auto_max without
    /// approvals (the automatic sweep); the same intent to an address not in the list, or a customer's
    /// withdrawal to a listed address, still needs the quorum.
    #[tokio::test]
    async fn k13_sweep_to_the_signers_own_cold_wallet_needs_no_approval() {
        let (signer, journal, address) = signer().await;
        let sweep = |nonce: u64| {
            let mut r = request("sweep1", nonce, AUTO_MAX * 100, &address, vec![]);
            r.intent.customer_id = kinko_core::withdrawal::CUSTODIAN_CUSTOMER_ID.into();
            r.intent.reason = kinko_core::withdrawal::CUSTODIAN_TRANSFER_REASON.into();
            r
        };
        let m = refusal(signer.sign_evm(&sweep(0)).await);
        assert!(m.contains("0 valid approvals of 2 required"), "not a listed cold wallet yet: {m}");
        let customer = request("w1", 0, AUTO_MAX * 100, &address, vec![]);
        signer.set_cold_wallets(&[DEST.to_uppercase().replacen("0X", "0x", 1)]).unwrap();
        let m = refusal(signer.sign_evm(&customer).await);
        assert!(m.contains("0 valid approvals of 2 required"), "a customer withdrawal is no sweep: {m}");
        nothing_recorded(&journal, 0).await;
        signer.sign_evm(&sweep(0)).await.unwrap();
        assert!(journal.access_log()[0].approvers.is_empty());
    }

    #[tokio::test]
    async fn k12_signer_signs_with_m_approvals_and_logs_the_approvers() {
        let (signer, journal, address) = signer().await;
        let two = approvals("w1", AUTO_MAX + 1, &address, &[(1, "m1"), (2, "m2")]);
        signer.sign_evm(&request("w1", 0, AUTO_MAX + 1, &address, two)).await.unwrap();
        // At or below auto_max nothing is needed, and the log says so.
        signer.sign_evm(&request("w2", 1, AUTO_MAX, &address, vec![])).await.unwrap();
        let log = journal.access_log();
        assert_eq!(log.len(), 2);
        assert_eq!(log[0].approvers, vec!["m1".to_string(), "m2".to_string()]);
        assert!(log[1].approvers.is_empty());
    }

    #[tokio::test]
    async fn o2_revoked_operators_earlier_approvals_stop_counting_in_the_signer() {
        let (signer, journal, address) = signer().await;
        // Signed while m1 was active, presented after m1 is revoked.
        let two = approvals("w1", AUTO_MAX + 1, &address, &[(1, "m1"), (2, "m2")]);
        let registry = signer.registry().unwrap();
        let revoke = registry
            .with(|r| next_change(r, "a1", now_ms(), RegistryChangeKind::RevokeOperator { operator_id: "m1".into() }));
        let revoke = revoke.unwrap();
        signer.apply_registry_change(&revoke, &sign_change(&revoke, &[(100, "a1"), (101, "a2")])).await.unwrap();
        let m = refusal(signer.sign_evm(&request("w1", 0, AUTO_MAX + 1, &address, two)).await);
        assert!(m.contains("1 valid approvals of 2 required") && m.contains("\"m1\" not counted"), "{m}");
        nothing_recorded(&journal, 0).await;
    }

    #[tokio::test]
    async fn k8_expired_grant_approval_does_not_count_in_the_signer() {
        let (signer, journal, address) = signer().await;
        let day_ms = 86_400_000;
        // Granted ten days ago for eight days: expired yesterday.
        let expired_at_ms = now_ms() - day_ms;
        let add = signer
            .registry()
            .unwrap()
            .with(|r| {
                next_change(
                    r,
                    "a1",
                    now_ms() - 10 * day_ms,
                    add_kind("m4", 4, Role::SigningManager, Some(expired_at_ms)),
                )
            })
            .unwrap();
        signer.apply_registry_change(&add, &sign_change(&add, &[(100, "a1"), (101, "a2")])).await.unwrap();
        let with_expired = approvals("w1", AUTO_MAX + 1, &address, &[(1, "m1"), (4, "m4")]);
        let m = refusal(signer.sign_evm(&request("w1", 0, AUTO_MAX + 1, &address, with_expired)).await);
        assert!(m.contains("1 valid approvals of 2 required") && m.contains("\"m4\" not counted"), "{m}");
        nothing_recorded(&journal, 0).await;
    }

    #[tokio::test]
    async fn k12_forged_approval_refuses_the_whole_signing_request() {
        let (signer, journal, address) = signer().await;
        // Two valid approvals would be enough; a third, forged under m3's name, refuses the request.
        let mut presented = approvals("w1", AUTO_MAX + 1, &address, &[(1, "m1"), (2, "m2")]);
        presented.extend(approvals("w1", AUTO_MAX + 1, &address, &[(9, "m3")]));
        let m = refusal(signer.sign_evm(&request("w1", 0, AUTO_MAX + 1, &address, presented)).await);
        assert!(m.contains("\"m3\"") && m.contains("does not verify"), "{m}");
        // An approval of another intent (another amount) is forged for this one.
        let other = approvals("w1", AUTO_MAX + 2, &address, &[(1, "m1"), (2, "m2")]);
        let m = refusal(signer.sign_evm(&request("w1", 0, AUTO_MAX + 1, &address, other)).await);
        assert!(m.contains("does not verify"), "{m}");
        nothing_recorded(&journal, 0).await;
    }

    #[tokio::test]
    async fn k11_signer_without_quorum_config_or_entry_refuses() {
        let journal = Arc::new(MemoryJournal::new());
        let signer = LocalSigner::new(journal.clone());
        let address = signer.add_secp256k1_key(KEY, Zeroizing::new([0x11; 32])).unwrap();
        let m = refusal(signer.sign_evm(&request("w1", 0, 1, &address, vec![])).await);
        assert!(m.contains("no signing quorum"), "{m}");
        // A quorum for another key does not cover this one.
        signer.set_quorum(crate::testing::auto_quorum("eth-hot-2", &["ETH"])).unwrap();
        let m = refusal(signer.sign_evm(&request("w1", 0, 1, &address, vec![])).await);
        assert!(m.contains("no signing quorum is configured for key \"eth-hot-1\""), "{m}");
        nothing_recorded(&journal, 0).await;
    }

    #[tokio::test]
    async fn o3_registry_change_is_durable_before_it_counts() {
        // The log cannot be written: the change is refused and memory is unchanged.
        let signer = LocalSigner::new(Arc::new(FailingJournal));
        let genesis = standard_log(now_ms()).remove(0);
        let got = signer.apply_registry_change(&genesis.change, &genesis.approvals).await;
        assert!(matches!(got, Err(SignerError::JournalUnavailable(_))), "{got:?}");
        assert_eq!(signer.registry_head().await.unwrap(), None);

        // Written: a second signer on the same journal loads it, verified.
        let journal = Arc::new(MemoryJournal::new());
        let first = LocalSigner::new(journal.clone());
        first.apply_registry_change(&genesis.change, &genesis.approvals).await.unwrap();
        let second = LocalSigner::new(journal.clone());
        second.load_registry().await.unwrap();
        assert_eq!(second.registry_head().await.unwrap(), first.registry_head().await.unwrap());
        // The same change again (a retry) is a no-op; another change for a taken position is refused.
        second.apply_registry_change(&genesis.change, &genesis.approvals).await.unwrap();
        assert_eq!(second.registry_head().await.unwrap(), first.registry_head().await.unwrap());
        let mut other = genesis.change.clone();
        other.requested_at_ms += 1;
        let got = second.apply_registry_change(&other, &sign_change(&other, &[(100, "a1")])).await;
        assert!(matches!(got, Err(SignerError::Refused(ref m)) if m.contains("out of order")), "{got:?}");
    }

    #[tokio::test]
    async fn o3_registry_log_since_is_bounded_and_stops_at_the_verified_head() {
        let journal = Arc::new(MemoryJournal::new());
        let signer = LocalSigner::new(journal.clone());
        let at_ms = now_ms();
        for entry in standard_log(at_ms) {
            signer.apply_registry_change(&entry.change, &entry.approvals).await.unwrap();
        }
        // More signing managers than one page holds, each added by a1 and a2.
        let extra = crate::REGISTRY_LOG_PAGE_MAX + 10;
        for i in 0..extra {
            let mut seed = [0x5a; 32];
            seed[..8].copy_from_slice(&(i as u64).to_le_bytes());
            let kind = RegistryChangeKind::AddOperator {
                operator_id: format!("sm{i}"),
                approval_public_key_hex: hex::encode(ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key()),
                role: Role::SigningManager,
                expires_at_ms: None,
            };
            let change = signer.registry().unwrap().with(|r| next_change(r, "a1", at_ms, kind)).unwrap();
            signer.apply_registry_change(&change, &sign_change(&change, &[(100, "a1"), (101, "a2")])).await.unwrap();
        }
        let (head_seq, head_hash) = signer.registry_head().await.unwrap().unwrap();
        assert_eq!(head_seq as usize, 7 + extra - 1);

        let first = signer.registry_log_since(0).await.unwrap();
        assert_eq!(first.len(), crate::REGISTRY_LOG_PAGE_MAX, "one answer is bounded");
        assert!(first.iter().enumerate().all(|(i, e)| e.change.seq == i as u64));
        let rest = signer.registry_log_since(crate::REGISTRY_LOG_PAGE_MAX as u64).await.unwrap();
        assert_eq!(rest.len(), 7 + extra - crate::REGISTRY_LOG_PAGE_MAX);
        assert_eq!(rest.last().unwrap().change.hash().unwrap(), head_hash);
        // Replaying both pages gives the signer's head: the answer is the verified log itself.
        let whole: Vec<LoggedChange> = first.into_iter().chain(rest).collect();
        assert_eq!(OperatorRegistry::replay(&whole, now_ms()).unwrap().head(), Some((head_seq, head_hash)));
        assert!(signer.registry_log_since(head_seq + 1).await.unwrap().is_empty());
        assert!(signer.registry_log_since(u64::MAX).await.unwrap().is_empty());

        // A row appended to the journal behind the signer's back is beyond its verified head: not served.
        let evil = signer
            .registry()
            .unwrap()
            .with(|r| next_change(r, "a1", at_ms, add_kind("evil", 66, Role::SigningManager, None)))
            .unwrap();
        let evil = LoggedChange { approvals: sign_change(&evil, &[(100, "a1")]), change: evil, applied_at_ms: at_ms };
        journal.append_registry(&evil).await.unwrap();
        let tail = signer.registry_log_since(head_seq).await.unwrap();
        assert_eq!(tail.len(), 1);
        assert_eq!(tail[0].change.seq, head_seq);
        assert!(signer.registry_log_since(head_seq + 1).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn o3_tampered_registry_log_in_the_store_is_refused_at_load() {
        for ts in kinko_store::testing::test_stores().await {
            let journal: Arc<dyn SignerJournal> = Arc::new(crate::StoreJournal(ts.store.clone()));
            let signer = LocalSigner::new(journal.clone());
            for entry in standard_log(now_ms()) {
                signer.apply_registry_change(&entry.change, &entry.approvals).await.unwrap();
            }
            let head = signer.registry_head().await.unwrap();
            let reloaded = SignerRegistry::load(journal.clone(), now_ms()).await.unwrap();
            assert_eq!(reloaded.head().unwrap(), head, "{}", ts.name);

            // A row appended behind the signer's back (as a compromised server might): a well-formed change
            // whose second administrator's approval is forged.
            let evil =
                reloaded.with(|r| next_change(r, "a1", now_ms(), add_kind("evil", 66, Role::SigningManager, None)));
            let evil = evil.unwrap();
            let mut forged = sign_change(&evil, &[(100, "a1")]);
            forged.extend(sign_change(&evil, &[(66, "a2")]));
            ts.store
                .append_signer_registry(
                    evil.seq,
                    &hex::encode(evil.hash().unwrap()),
                    &serde_json::to_string(&evil).unwrap(),
                    &serde_json::to_string(&forged).unwrap(),
                    now_ms(),
                )
                .await
                .unwrap();
            let got = SignerRegistry::load(journal.clone(), now_ms()).await;
            match got {
                Err(SignerError::Refused(m)) => assert!(m.contains("log entry 7"), "{}: {m}", ts.name),
                other => panic!("{}: expected a refusal, got {other:?}", ts.name),
            }
            let fresh = LocalSigner::new(journal);
            assert!(fresh.load_registry().await.is_err(), "{}", ts.name);
        }
    }
}
