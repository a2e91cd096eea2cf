//! The signer as its own process (S1, K20, O5): `kinko signer serve` listens on a Unix socket and owns
//! the seal and the in-process [`LocalSigner`]. It starts sealed.
//!
//! Authentication: the socket file is mode 0600 and every connection's peer uid (SO_PEERCRED) must equal
//! the signer's own uid, so only processes of the signer's user can talk to it, whatever the directory
//! permissions. Across hosts the option is TLS with client certificates (mutual TLS); not built, as the
//! signer and `kinko serve` are meant to share a host with the socket between them.
//!
//! Protocol: one JSON object per line (at most [`LINE_LEN_MAX`] bytes), answered by one line:
//! `{"op":"status"}`, `{"op":"unseal","custodian":…,"index":…,"threshold":…,"share_hex":…}`,
//! `{"op":"seal"}`, `{"op":"sign_evm","request":{…EvmSignRequest…}}`,
//! `{"op":"sign_safe","request":{…safe::SafeSignRequest…}}` → `{"signature":hex}` (K15),
//! `{"op":"sign_btc","request":{…btc::BtcSignRequest…}}` → `{"signed":{"psbt":hex,"raw_tx":hex,"txid":…,"fee_sat":…}}`,
//! `{"op":"cosign_btc","request":{…btc::BtcSignRequest…}}` → `{"cosigned":{…btc_multisig::BtcCosigned…}}` (K15),
//! `{"op":"sign_ed25519","request":{"key_id":…,"message":hex,"actor":…,"terminal":…}}`,
//! `{"op":"registry_apply","change":{…RegistryChange…},"approvals":[{"operator_id":…,"signature_hex":…}]}`
//! → `{"applied":true,"head":…}`, `{"op":"registry_head"}` → `{"head":null}` or
//! `{"head":{"seq":…,"hash":hex}}`, `{"op":"check_approvals","request":{…EvmSignRequest…}}` →
//! `{"approvers":[…]}` (nothing signed), `{"op":"registry_log_since","seq":…}` →
//! `{"entries":[{"change":{…},"approvals":[…],"applied_at_ms":…}]}` (at most
//! [`crate::REGISTRY_LOG_PAGE_MAX`] entries, fewer if the reply line would exceed [`LINE_LEN_MAX`]); each answered `{"ok":…}` or `{"error":{"kind":…,"message":…,"detail":…}}`.
//! There is no operation that returns key material.
//!
//! The operator registry (K8, O3) is loaded from the signer's own log when the service starts, verifying
//! every signature; a log that does not verify stops the signer from starting. Registry changes are accepted
//! sealed or unsealed (they carry no secret), and every signer the service unseals shares that registry.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kinko_keys::kek::Kek;
use kinko_keys::shares::RawShare;
use kinko_store::Store;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use zeroize::{Zeroize, Zeroizing};

use crate::approvals::{LoggedChange, SigningQuorum};
use crate::journal::SignerJournal;
use crate::local::SignerRegistry;
use crate::seal::{self, SealError, SealState, SealStatus, SubmitOutcome};
use crate::{Approval, EvmSignRequest, LocalSigner, SignerError};

/// Bound on one request line (a signing request is a few KiB; this leaves room for large payloads).
pub const LINE_LEN_MAX: usize = 1024 * 1024;
/// Bound on concurrent connections; further ones wait to be accepted.
pub const CONNECTIONS_MAX: usize = 64;
/// A connection that sends nothing for this long is closed, so idle clients cannot hold every slot.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// A share (or other secret) on the wire: zeroized on drop, never shown by `Debug`.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct WireSecret(pub String);

impl Drop for WireSecret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl std::fmt::Debug for WireSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WireSecret(..)")
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Status,
    Unseal {
        custodian: String,
        index: u8,
        threshold: u8,
        share_hex: WireSecret,
    },
    Seal,
    SignEvm {
        request: Box<EvmSignRequest>,
    },
    /// One Safe owner's signature on a Safe transaction (see [`crate::Signer::sign_safe_tx`]) →
    /// `{"signature":hex}` (r||s||v, v 27/28).
    SignSafe {
        request: Box<crate::safe::SafeSignRequest>,
    },
    /// One Bitcoin withdrawal PSBT (see [`crate::Signer::sign_btc_psbt`]) → `{"signed":{…btc::BtcSigned…}}`.
    SignBtc {
        request: Box<crate::btc::BtcSignRequest>,
    },
    /// One cosignature on a PSBT spending the pinned multisig wallet (see
    /// [`crate::Signer::cosign_btc_multisig_psbt`]) → `{"cosigned":{…btc_multisig::BtcCosigned…}}`.
    CosignBtc {
        request: Box<crate::btc::BtcSignRequest>,
    },
    /// Signs a raw message with an Ed25519 key after logging it durably. Ed25519 intents and chain decoding
    /// (e.g. Solana) are not built, so this op is for the benchmark beside OpenBao and for future chains;
    /// it is refused for keys that are not Ed25519 (see [`crate::ed25519`]).
    SignEd25519 {
        request: crate::ed25519::Ed25519SignRequest,
    },
    /// Verifies and applies one operator registry change (see [`crate::Signer::apply_registry_change`]).
    /// The number of approvals is bounded by `APPROVALS_PER_REQUEST_MAX`, the line by [`LINE_LEN_MAX`].
    RegistryApply {
        change: Box<kinko_core::operator_registry::RegistryChange>,
        approvals: Vec<Approval>,
    },
    /// The registry's last `(seq, hash)`.
    RegistryHead,
    /// Checks a signing request's approvals without signing (see [`crate::Signer::check_approvals`]).
    CheckApprovals {
        request: Box<EvmSignRequest>,
    },
    /// The registry log from position `seq` on (see [`crate::Signer::registry_log_since`]).
    RegistryLogSince {
        seq: u64,
    },
    /// Emergency freeze (see [`crate::Signer::freeze`]) → `{"frozen":true}`. Works sealed.
    Freeze {
        freeze: kinko_core::freeze::Freeze,
    },
    /// Lifts a freeze after verifying the unfreeze approvals (see [`crate::Signer::lift_freeze`]) →
    /// `{"lifted":true,"approvers":[…]}`. Works sealed.
    LiftFreeze {
        order: Box<crate::freeze::LiftOrder>,
    },
    /// The active freezes → `{"freezes":[…]}`. Works sealed.
    Freezes,
}

/// One registry log entry on the wire (`approvals::LoggedChange`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireLoggedChange {
    pub change: kinko_core::operator_registry::RegistryChange,
    pub approvals: Vec<Approval>,
    pub applied_at_ms: i64,
}

impl From<LoggedChange> for WireLoggedChange {
    fn from(e: LoggedChange) -> WireLoggedChange {
        WireLoggedChange { change: e.change, approvals: e.approvals, applied_at_ms: e.applied_at_ms }
    }
}

impl From<WireLoggedChange> for LoggedChange {
    fn from(e: WireLoggedChange) -> LoggedChange {
        LoggedChange { change: e.change, approvals: e.approvals, applied_at_ms: e.applied_at_ms }
    }
}

/// The `registry_log_since` reply for `entries`, shortened until its line (as `connection` writes it, with
/// the `{"ok":…}` envelope and the newline) fits in [`LINE_LEN_MAX`], so the client can always read it; the
/// client asks again from where it ended. At least one entry is kept (one change with its bounded
/// approvals is a few KiB).
fn registry_log_reply(entries: Vec<LoggedChange>) -> Value {
    let mut wire: Vec<WireLoggedChange> = entries.into_iter().map(WireLoggedChange::from).collect();
    loop {
        let reply = json!({"entries": wire});
        let line_len = serde_json::to_vec(&json!({"ok": &reply})).map(|v| v.len() + 1).unwrap_or(usize::MAX);
        if line_len <= LINE_LEN_MAX || wire.len() <= 1 {
            return reply;
        }
        wire.truncate(wire.len() / 2);
    }
}

/// The registry head on the wire: `null` before genesis.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireHead {
    pub seq: u64,
    /// Lower-case hex SHA-256 of the last change.
    pub hash: String,
}

impl WireHead {
    pub fn from_head(head: Option<(u64, [u8; 32])>) -> Option<WireHead> {
        head.map(|(seq, hash)| WireHead { seq, hash: hex::encode(hash) })
    }
}

/// An error on the wire. `detail` carries what the client needs to rebuild a typed error.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireError {
    pub kind: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub detail: Value,
}

impl WireError {
    fn new(kind: &str, message: impl Into<String>) -> WireError {
        WireError { kind: kind.into(), message: message.into(), detail: Value::Null }
    }
}

impl From<&SignerError> for WireError {
    fn from(e: &SignerError) -> WireError {
        let message = e.to_string();
        let (kind, detail) = match e {
            SignerError::Sealed => ("sealed", Value::Null),
            SignerError::UnknownKey(id) => ("unknown_key", json!(id)),
            SignerError::Malformed(m) => ("malformed", json!(m)),
            SignerError::IntentMismatch { field, expected, actual } => {
                ("intent_mismatch", json!({"field": field, "expected": expected, "actual": actual}))
            }
            SignerError::Refused(m) => ("refused", json!(m)),
            SignerError::DoubleSign { key_id, chain, slot, reason } => {
                ("double_sign", json!({"key_id": key_id, "chain": chain, "slot": slot, "reason": reason}))
            }
            SignerError::JournalUnavailable(m) => ("journal_unavailable", json!(m)),
            SignerError::Internal(m) => ("internal", json!(m)),
            #[allow(unreachable_patterns)]
            _ => ("internal", Value::Null),
        };
        WireError { kind: kind.into(), message, detail }
    }
}

impl From<&SealError> for WireError {
    fn from(e: &SealError) -> WireError {
        if let SealError::Signer(s) = e {
            return s.into();
        }
        WireError::new(e.kind(), e.to_string())
    }
}

/// What the signer process serves.
pub struct SignerService {
    store: Store,
    journal: Arc<dyn SignerJournal>,
    key_ids: Vec<String>,
    routine_policy: kinko_store::key_lifecycle::RoutinePolicy,
    /// How to activate keys that live in a PKCS#11 token (K21), when there are any.
    pkcs11: Option<crate::pkcs11::Pkcs11Login>,
    /// The signer's own operator registry, verified at startup; shared with every unsealed signer.
    registry: Arc<SignerRegistry>,
    /// `[[signer.quorum]]`; without it an unsealed signer signs nothing (fail closed).
    quorum: Option<SigningQuorum>,
    /// Emergency freezes (K19, S5), replayed at startup; shared with every unsealed signer.
    freezes: Arc<crate::freeze::SignerFreezes>,
    /// Per-chain EVM policies (native coin, fee cap, the signer's own ERC-20 token map, K22), given to
    /// every signer this service unseals. Chains without one use [`crate::evm::EvmPolicy::default`].
    evm_policies: Vec<(u64, crate::evm::EvmPolicy)>,
    /// `[signer] cold_wallets` (K13): the custodian's cold wallets, given to every signer this service unseals.
    cold_wallets: Vec<String>,
    /// `(key id, chain id, Safe)`: the Safes each key serves as owner or relayer (K15), given to every signer
    /// this service unseals.
    safes: Vec<(String, u64, alloy_primitives::Address)>,
    /// `[signer] deposit_top_up_cap_wei` (K13), given to every signer this service unseals; `None` keeps the
    /// signer's default.
    top_up_cap_wei: Option<u128>,
    /// `[signer.bitcoin]`: the Bitcoin keys every signer this service unseals derives from the master seed.
    btc: Option<seal::BtcKeysConfig>,
    inner: tokio::sync::Mutex<Inner>,
}

struct Inner {
    seal: SealState,
    signer: Option<Arc<LocalSigner>>,
    /// The active KEK while unsealed (for KEK-level operations); dropped, and so zeroized, on seal.
    kek: Option<Kek>,
}

impl SignerService {
    /// A sealed service over the seal configuration stored by `kinko init`; `key_ids` are the keys it
    /// unwraps on unseal. Loads and verifies the operator registry log: a log that does not verify is an
    /// error, and the signer does not start.
    pub async fn new(store: Store, key_ids: Vec<String>) -> Result<SignerService, SealError> {
        let seal = SealState::load(&store).await?;
        let journal: Arc<dyn SignerJournal> = Arc::new(crate::store_journal::StoreJournal(store.clone()));
        let registry = Arc::new(SignerRegistry::load(journal.clone(), now_ms()).await?);
        let snapshot = registry.with(|r| r.clone())?;
        let freezes = Arc::new(
            crate::freeze::SignerFreezes::load(journal.clone(), &snapshot, crate::freeze::UNFREEZE_APPROVALS_DEFAULT)
                .await?,
        );
        Ok(SignerService {
            freezes,
            store,
            journal,
            key_ids,
            routine_policy: Default::default(),
            pkcs11: None,
            registry,
            quorum: None,
            evm_policies: Vec::new(),
            cold_wallets: Vec::new(),
            safes: Vec::new(),
            top_up_cap_wei: None,
            btc: None,
            inner: tokio::sync::Mutex::new(Inner { seal, signer: None, kek: None }),
        })
    }

    /// Routine suspension (K3) applied by every signer this service unseals.
    pub fn with_routine_policy(mut self, policy: kinko_store::key_lifecycle::RoutinePolicy) -> Self {
        self.routine_policy = policy;
        self
    }

    /// The token login that activates token-held keys on unseal (K21).
    pub fn with_pkcs11(mut self, login: Option<crate::pkcs11::Pkcs11Login>) -> Self {
        self.pkcs11 = login;
        self
    }

    /// How many signing managers must approve an unfreeze (`[emergency] unfreeze_approvals`). The freeze
    /// log was replayed with the default at startup; a stricter setting applies to lifts from now on.
    pub fn with_unfreeze_approvals(self, m: u8) -> Result<Self, SignerError> {
        self.freezes.set_unfreeze_approvals(m)?;
        Ok(self)
    }

    /// The EVM policy of `chain_id` (e.g. the token map from the signer's own `[[ethereum.tokens]]`, K22),
    /// given to every signer this service unseals.
    pub fn with_evm_policy(mut self, chain_id: u64, policy: crate::evm::EvmPolicy) -> Self {
        self.evm_policies.retain(|(c, _)| *c != chain_id);
        self.evm_policies.push((chain_id, policy));
        self
    }

    /// The Safes each key serves (K15; see [`LocalSigner::add_safe`]): `(key id, chain id, Safe address)`.
    pub fn with_safes(mut self, safes: Vec<(String, u64, alloy_primitives::Address)>) -> Self {
        self.safes = safes;
        self
    }

    /// The custodian's cold wallets (`[signer] cold_wallets`, K13): sweeps to them sign without approvals.
    pub fn with_cold_wallets(mut self, addresses: Vec<String>) -> Self {
        self.cold_wallets = addresses;
        self
    }

    /// The most one gas top-up to a deposit address signs for without approval (K13); `None` keeps the
    /// default.
    pub fn with_deposit_top_up_cap_wei(mut self, cap_wei: Option<u128>) -> Self {
        self.top_up_cap_wei = cap_wei;
        self
    }

    /// The Bitcoin keys (`[signer.bitcoin]`) derived from the master seed at each unseal; `None`: no Bitcoin
    /// key (Bitcoin requests are refused as for an unknown key).
    pub fn with_bitcoin(mut self, btc: Option<seal::BtcKeysConfig>) -> Self {
        self.btc = btc;
        self
    }

    /// How many signing managers must approve an evacuation (`[emergency] evacuation_approvals`, K19, S5); the
    /// freeze state is shared with every signer this service unseals, so it applies to all of them.
    pub fn with_evacuation_approvals(self, m: u8) -> Result<Self, SignerError> {
        self.freezes.set_evacuation_approvals(m)?;
        Ok(self)
    }

    /// The signer's quorum policy (`[[signer.quorum]]`), given to every signer this service unseals.
    pub fn with_quorum(mut self, quorum: SigningQuorum) -> Self {
        self.quorum = Some(quorum);
        self
    }

    pub async fn status(&self) -> SealStatus {
        self.inner.lock().await.seal.status()
    }

    /// Takes one share; on the K-th distinct one, unwraps the KEK and the keys into a fresh signer.
    pub async fn unseal(&self, share: RawShare) -> Result<SealStatus, SealError> {
        let mut inner = self.inner.lock().await;
        let outcome = inner.seal.submit(share)?;
        if let SubmitOutcome::Unsealed(mk) = outcome {
            let unlocked = async {
                let (_, kek) = seal::unwrap_active_kek(&self.store, &mk).await?;
                let signer = seal::unlock_signer_full(
                    &self.store,
                    &mk,
                    self.journal.clone(),
                    &self.key_ids,
                    self.routine_policy.clone(),
                    self.pkcs11.as_ref(),
                    self.btc.as_ref(),
                )
                .await?;
                signer.set_registry(self.registry.clone())?;
                signer.set_freezes(self.freezes.clone())?;
                if let Some(quorum) = &self.quorum {
                    signer.set_quorum(quorum.clone())?;
                }
                signer.set_cold_wallets(&self.cold_wallets)?;
                if let Some(cap) = self.top_up_cap_wei {
                    signer.set_top_up_cap_wei(cap)?;
                }
                for (key_id, chain_id, safe) in &self.safes {
                    signer.add_safe(key_id, *chain_id, *safe)?;
                }
                for (chain_id, policy) in &self.evm_policies {
                    signer.set_evm_policy(*chain_id, policy.clone())?;
                }
                Ok::<_, SealError>((kek, signer))
            }
            .await;
            drop(mk);
            match unlocked {
                Ok((kek, signer)) => {
                    inner.kek = Some(kek);
                    inner.signer = Some(Arc::new(signer));
                    tracing::warn!("signer unsealed");
                }
                Err(e) => {
                    inner.seal.reset();
                    return Err(e);
                }
            }
        }
        Ok(inner.seal.status())
    }

    /// Seals: drops the KEK and zeroizes every key, including under requests in flight.
    pub async fn seal(&self) -> SealStatus {
        let mut inner = self.inner.lock().await;
        if let Some(signer) = inner.signer.take() {
            signer.seal();
        }
        inner.kek = None;
        inner.seal.seal();
        tracing::warn!("signer sealed");
        inner.seal.status()
    }

    /// The unsealed signer, or `Sealed`.
    async fn unsealed(&self) -> Result<Arc<LocalSigner>, SignerError> {
        self.inner.lock().await.signer.clone().ok_or(SignerError::Sealed)
    }

    pub async fn sign_evm(&self, req: &EvmSignRequest) -> Result<[u8; 65], SignerError> {
        let signer = self.unsealed().await?;
        crate::Signer::sign_evm(&*signer, req).await
    }

    /// See [`Request::SignEd25519`].
    pub async fn sign_ed25519(&self, req: &crate::ed25519::Ed25519SignRequest) -> Result<[u8; 64], SignerError> {
        let signer = self.unsealed().await?;
        signer.sign_ed25519(req).await
    }

    /// Generates an Ed25519 key in the unsealed signer; returns its public key. In-process only (no
    /// socket op creates keys); the key is gone after a seal (see [`crate::ed25519`]).
    pub async fn generate_ed25519_key(&self, key_id: &str) -> Result<[u8; 32], SignerError> {
        let signer = self.unsealed().await?;
        signer.generate_ed25519_key(key_id)
    }

    /// Verifies, persists and applies a registry change; works sealed or unsealed.
    pub async fn apply_registry_change(
        &self,
        change: &kinko_core::operator_registry::RegistryChange,
        approvals: &[Approval],
    ) -> Result<(), SignerError> {
        self.registry.apply(change, approvals, now_ms()).await
    }

    pub fn registry_head(&self) -> Result<Option<(u64, [u8; 32])>, SignerError> {
        self.registry.head()
    }

    /// See [`crate::Signer::registry_log_since`]; works sealed or unsealed.
    pub async fn registry_log_since(&self, seq: u64) -> Result<Vec<LoggedChange>, SignerError> {
        self.registry.log_since(seq).await
    }

    async fn handle(&self, line: &[u8]) -> Result<Value, WireError> {
        let request: Request = serde_json::from_slice(line)
            .map_err(|e| WireError::new("bad_request", format!("request does not parse: {e}")))?;
        match request {
            Request::Status => Ok(json!(self.status().await)),
            Request::Unseal { custodian, index, threshold, share_hex } => {
                let share = RawShare::from_hex(&custodian, index, threshold, &share_hex.0)
                    .map_err(|e| WireError::from(&SealError::Share(e)))?;
                drop(share_hex);
                self.unseal(share).await.map(|s| json!(s)).map_err(|e| WireError::from(&e))
            }
            Request::Seal => Ok(json!(self.seal().await)),
            Request::SignEvm { request } => self
                .sign_evm(&request)
                .await
                .map(|sig| json!({"signature": hex::encode(sig)}))
                .map_err(|e| WireError::from(&e)),
            Request::SignSafe { request } => {
                let signer = self.unsealed().await.map_err(|e| WireError::from(&e))?;
                crate::Signer::sign_safe_tx(&*signer, &request)
                    .await
                    .map(|sig| json!({"signature": hex::encode(sig)}))
                    .map_err(|e| WireError::from(&e))
            }
            Request::SignBtc { request } => {
                let signer = self.unsealed().await.map_err(|e| WireError::from(&e))?;
                crate::Signer::sign_btc_psbt(&*signer, &request)
                    .await
                    .map(|signed| json!({"signed": signed}))
                    .map_err(|e| WireError::from(&e))
            }
            Request::CosignBtc { request } => {
                let signer = self.unsealed().await.map_err(|e| WireError::from(&e))?;
                crate::Signer::cosign_btc_multisig_psbt(&*signer, &request)
                    .await
                    .map(|cosigned| json!({"cosigned": cosigned}))
                    .map_err(|e| WireError::from(&e))
            }
            Request::SignEd25519 { request } => self
                .sign_ed25519(&request)
                .await
                .map(|sig| json!({"signature": hex::encode(sig)}))
                .map_err(|e| WireError::from(&e)),
            Request::RegistryApply { change, approvals } => {
                self.apply_registry_change(&change, &approvals).await.map_err(|e| WireError::from(&e))?;
                let head = self.registry_head().map_err(|e| WireError::from(&e))?;
                Ok(json!({"applied": true, "head": WireHead::from_head(head)}))
            }
            Request::CheckApprovals { request } => {
                let signer = self.unsealed().await.map_err(|e| WireError::from(&e))?;
                crate::Signer::check_approvals(&*signer, &request)
                    .await
                    .map(|approvers| json!({"approvers": approvers}))
                    .map_err(|e| WireError::from(&e))
            }
            Request::RegistryLogSince { seq } => {
                self.registry_log_since(seq).await.map(registry_log_reply).map_err(|e| WireError::from(&e))
            }
            Request::Freeze { freeze } => {
                self.freezes.freeze(&freeze).await.map_err(|e| WireError::from(&e))?;
                Ok(json!({"frozen": true}))
            }
            Request::LiftFreeze { order } => {
                let registry = self.registry.with(|r| r.clone()).map_err(|e| WireError::from(&e))?;
                let approvers =
                    self.freezes.lift(&registry, &order, now_ms()).await.map_err(|e| WireError::from(&e))?;
                Ok(json!({"lifted": true, "approvers": approvers}))
            }
            Request::Freezes => self.freezes.active().map(|f| json!({"freezes": f})).map_err(|e| WireError::from(&e)),
            Request::RegistryHead => self
                .registry_head()
                .map(|head| json!({"head": WireHead::from_head(head)}))
                .map_err(|e| WireError::from(&e)),
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Binds the signer's socket (mode 0600), replacing a stale socket file but never any other file.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_socket() {
            std::fs::remove_file(path)?;
        } else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves connections until `shutdown` turns true. Connections from another uid are refused.
pub async fn serve(
    service: Arc<SignerService>,
    listener: UnixListener,
    socket_path: PathBuf,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    // The signer created the socket, so the socket's owner is the signer's own uid.
    let own_uid = std::fs::metadata(&socket_path)?.uid();
    let slots = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS_MAX));
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.map_err(|_| std::io::Error::other("connection slots closed"))?,
            _ = shutdown.wait_for(|s| *s) => break,
        };
        let (stream, _) = tokio::select! {
            a = listener.accept() => a?,
            _ = shutdown.wait_for(|s| *s) => break,
        };
        let service = service.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = connection(service, stream, own_uid).await {
                tracing::debug!(error = %e, "signer connection ended");
            }
        });
    }
    let _ = std::fs::remove_file(&socket_path);
    Ok(())
}

async fn connection(service: Arc<SignerService>, stream: UnixStream, own_uid: u32) -> std::io::Result<()> {
    let peer = stream.peer_cred()?;
    let (read, mut write) = stream.into_split();
    if peer.uid() != own_uid {
        tracing::warn!(peer_uid = peer.uid(), "refused a connection from another user");
        let line = json!({"error": WireError::new("unauthenticated", "peer uid is not the signer's uid")});
        write.write_all(format!("{line}\n").as_bytes()).await?;
        return Ok(());
    }
    let mut reader = BufReader::new(read);
    loop {
        let mut buf = Zeroizing::new(Vec::new());
        let n = match tokio::time::timeout(
            IDLE_TIMEOUT,
            (&mut reader).take(LINE_LEN_MAX as u64 + 1).read_until(b'\n', &mut buf),
        )
        .await
        {
            Ok(r) => r?,
            Err(_) => return Ok(()),
        };
        if n == 0 {
            return Ok(());
        }
        if buf.last() != Some(&b'\n') {
            let too_long = buf.len() > LINE_LEN_MAX;
            let line = json!({"error": WireError::new(
                "bad_request",
                if too_long { format!("request line longer than {LINE_LEN_MAX} bytes") } else { "request line not terminated".into() },
            )});
            write.write_all(format!("{line}\n").as_bytes()).await?;
            return Ok(());
        }
        let reply = match service.handle(&buf).await {
            Ok(v) => json!({ "ok": v }),
            Err(e) => json!({ "error": e }),
        };
        write.write_all(format!("{reply}\n").as_bytes()).await?;
    }
}

#[cfg(test)]
mod tests {
    use kinko_keys::shares::{self, MasterKey, SealConfig};

    use super::*;
    use crate::Signer;
    use crate::approvals::OperatorRegistry;
    use crate::approvals::tests::{add_kind, next_change, sign_change, standard_log};
    use crate::remote::RemoteSigner;

    async fn sealed_store() -> kinko_store::testing::TestStore {
        let ts = kinko_store::testing::sqlite_store().await;
        let mk = MasterKey::generate();
        let raw = shares::split(&mk, 1, &["c0".to_string()]).unwrap();
        let config = SealConfig::new(&mk, 1, &raw);
        ts.store.init_seal_config_json(&serde_json::to_string(&config).unwrap()).await.unwrap();
        ts
    }

    #[test]
    fn o3_registry_log_reply_fits_in_one_line() {
        // Entries padded with approvals until a whole page would not fit in LINE_LEN_MAX.
        let mut r = OperatorRegistry::new();
        let genesis =
            next_change(&r, "a1", now_ms(), add_kind("a1", 100, kinko_core::operators::Role::Administrator, None));
        let approvals = sign_change(&genesis, &[(100, "a1")]);
        r.apply_change(&genesis, &approvals, now_ms()).unwrap();
        let padded: Vec<Approval> = (0..kinko_core::operators::APPROVALS_PER_REQUEST_MAX)
            .map(|i| Approval { operator_id: format!("{i:0>64}"), signature_hex: "ab".repeat(64) })
            .collect();
        let entry = LoggedChange { change: genesis, approvals: padded, applied_at_ms: now_ms() };
        let page = vec![entry; crate::REGISTRY_LOG_PAGE_MAX];
        let full_len = serde_json::to_vec(
            &json!({"ok": {"entries": page.iter().cloned().map(WireLoggedChange::from).collect::<Vec<_>>()}}),
        )
        .unwrap()
        .len();
        assert!(full_len > LINE_LEN_MAX, "the test must exceed the line bound ({full_len})");
        let reply = registry_log_reply(page);
        let line_len = serde_json::to_vec(&json!({ "ok": reply })).unwrap().len() + 1;
        assert!(line_len <= LINE_LEN_MAX, "{line_len}");
        assert!(!reply["entries"].as_array().unwrap().is_empty());
    }

    /// K19, S5: a freeze reaches the signer over the socket while it is sealed, is listed, survives a
    /// restart, and a lift without the approvals is refused over the wire.
    #[tokio::test]
    async fn k19_freeze_over_the_socket_while_sealed_survives_restart() {
        let ts = sealed_store().await;
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("signer.sock");
        let service = Arc::new(SignerService::new(ts.store.clone(), vec![]).await.unwrap());
        let listener = bind(&socket).unwrap();
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let server = tokio::spawn(serve(service.clone(), listener, socket.clone(), stop_rx));
        let remote = RemoteSigner::new(&socket);
        for entry in &standard_log(now_ms()) {
            remote.apply_registry_change(&entry.change, &entry.approvals).await.unwrap();
        }
        let freeze = kinko_core::freeze::Freeze {
            id: "f_sock".into(),
            scope: kinko_core::freeze::FreezeScope::Everything,
            reason: "drill".into(),
            set_by: "cli:alice".into(),
            set_at_ms: now_ms(),
        };
        assert!(remote.active_freezes().await.unwrap().is_empty());
        remote.freeze(&freeze).await.unwrap();
        assert_eq!(remote.active_freezes().await.unwrap(), vec![freeze.clone()]);
        let order = crate::freeze::LiftOrder {
            freeze_id: "f_sock".into(),
            request_id: "r_1".into(),
            requester: "om".into(),
            params: kinko_core::freeze::unfreeze_params(&freeze, "n"),
            approvals: vec![],
        };
        let got = remote.lift_freeze(&order).await;
        assert!(matches!(got, Err(SignerError::Refused(ref m)) if m.contains("0 valid approvals")), "{got:?}");
        let _ = stop.send(true);
        let _ = server.await;
        let restarted = SignerService::new(ts.store.clone(), vec![]).await.unwrap();
        assert_eq!(restarted.freezes.active().unwrap(), vec![freeze]);
    }

    #[tokio::test]
    async fn o3_registry_apply_and_head_over_the_socket_while_sealed() {
        let ts = sealed_store().await;
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("signer.sock");
        let service = Arc::new(SignerService::new(ts.store.clone(), vec![]).await.unwrap());
        let listener = bind(&socket).unwrap();
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let server = tokio::spawn(serve(service.clone(), listener, socket.clone(), stop_rx));
        let remote = RemoteSigner::new(&socket);

        assert_eq!(remote.registry_head().await.unwrap(), None);
        let log = standard_log(now_ms());
        for entry in &log {
            remote.apply_registry_change(&entry.change, &entry.approvals).await.unwrap();
        }
        let expected = OperatorRegistry::replay(&log, now_ms()).unwrap().head();
        assert!(expected.is_some());
        assert_eq!(remote.registry_head().await.unwrap(), expected);

        // A change whose second administrator's approval is forged is refused over the wire, typed.
        let mut local = OperatorRegistry::replay(&log, now_ms()).unwrap();
        let change =
            next_change(&local, "a1", now_ms(), add_kind("m9", 9, kinko_core::operators::Role::SigningManager, None));
        let mut forged = sign_change(&change, &[(100, "a1")]);
        forged.extend(sign_change(&change, &[(9, "a2")]));
        let got = remote.apply_registry_change(&change, &forged).await;
        assert!(matches!(got, Err(SignerError::Refused(ref m)) if m.contains("\"a2\"")), "{got:?}");
        assert_eq!(remote.registry_head().await.unwrap(), expected, "a refused change changes nothing");
        let approvals = sign_change(&change, &[(100, "a1"), (101, "a2")]);
        remote.apply_registry_change(&change, &approvals).await.unwrap();
        local.apply_change(&change, &approvals, now_ms()).unwrap();
        assert_eq!(remote.registry_head().await.unwrap(), local.head());

        // The log over the wire, while sealed: from any position to the head, the same changes and
        // approvals the signer verified; past the head, nothing.
        let all = remote.registry_log_since(0).await.unwrap();
        let mut expected_log: Vec<_> = log.iter().map(|e| (e.change.clone(), e.approvals.clone())).collect();
        expected_log.push((change.clone(), approvals.clone()));
        assert_eq!(all.iter().map(|e| (e.change.clone(), e.approvals.clone())).collect::<Vec<_>>(), expected_log);
        assert_eq!(OperatorRegistry::replay(&all, now_ms()).unwrap().head(), local.head());
        let tail = remote.registry_log_since(6).await.unwrap();
        assert_eq!(tail.iter().map(|e| e.change.seq).collect::<Vec<_>>(), vec![6, 7]);
        assert!(remote.registry_log_since(8).await.unwrap().is_empty());
        assert!(remote.registry_log_since(u64::MAX).await.unwrap().is_empty());

        let _ = stop.send(true);
        let _ = server.await;

        // A restarted signer loads the same registry from its own table, verified.
        let restarted = SignerService::new(ts.store.clone(), vec![]).await.unwrap();
        assert_eq!(restarted.registry_head().unwrap(), local.head());

        // A row appended behind the signer's back with a forged approval: the signer does not start.
        let evil = next_change(
            &local,
            "a1",
            now_ms(),
            add_kind("evil", 66, kinko_core::operators::Role::SigningManager, None),
        );
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
        match SignerService::new(ts.store.clone(), vec![]).await {
            Err(e) => assert!(e.to_string().contains("signer_registry_log"), "{e}"),
            Ok(_) => panic!("a signer with a tampered registry log must not start"),
        }
    }
}
