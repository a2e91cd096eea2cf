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
//! `{"op":"sign_ed25519","request":{"key_id":…,"message":hex,"actor":…,"terminal":…}}` → `{"ok":…}` or
//! `{"error":{"kind":…,"message":…,"detail":…}}`. There is no operation that returns key material.

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

use crate::journal::SignerJournal;
use crate::seal::{self, SealError, SealState, SealStatus, SubmitOutcome};
use crate::{EvmSignRequest, LocalSigner, SignerError};

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
    /// Signs a raw message with an Ed25519 key after logging it durably. Ed25519 intents and chain decoding
    /// (e.g. Solana) are not built, so this op is for the benchmark beside OpenBao and for future chains;
    /// it is refused for keys that are not Ed25519 (see [`crate::ed25519`]).
    SignEd25519 {
        request: crate::ed25519::Ed25519SignRequest,
    },
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
    /// unwraps on unseal.
    pub async fn new(store: Store, key_ids: Vec<String>) -> Result<SignerService, SealError> {
        let seal = SealState::load(&store).await?;
        let journal: Arc<dyn SignerJournal> = Arc::new(crate::store_journal::StoreJournal(store.clone()));
        Ok(SignerService {
            store,
            journal,
            key_ids,
            routine_policy: Default::default(),
            pkcs11: None,
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
                let signer = seal::unlock_signer_with(
                    &self.store,
                    &mk,
                    self.journal.clone(),
                    &self.key_ids,
                    self.routine_policy.clone(),
                    self.pkcs11.as_ref(),
                )
                .await?;
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

    pub async fn sign_evm(&self, req: &EvmSignRequest) -> Result<[u8; 65], SignerError> {
        let signer = self.inner.lock().await.signer.clone().ok_or(SignerError::Sealed)?;
        crate::Signer::sign_evm(&*signer, req).await
    }

    /// See [`Request::SignEd25519`].
    pub async fn sign_ed25519(&self, req: &crate::ed25519::Ed25519SignRequest) -> Result<[u8; 64], SignerError> {
        let signer = self.inner.lock().await.signer.clone().ok_or(SignerError::Sealed)?;
        signer.sign_ed25519(req).await
    }

    /// Generates an Ed25519 key in the unsealed signer; returns its public key. In-process only (no
    /// socket op creates keys); the key is gone after a seal (see [`crate::ed25519`]).
    pub async fn generate_ed25519_key(&self, key_id: &str) -> Result<[u8; 32], SignerError> {
        let signer = self.inner.lock().await.signer.clone().ok_or(SignerError::Sealed)?;
        signer.generate_ed25519_key(key_id)
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
            Request::SignEd25519 { request } => self
                .sign_ed25519(&request)
                .await
                .map(|sig| json!({"signature": hex::encode(sig)}))
                .map_err(|e| WireError::from(&e)),
        }
    }
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
