//! The client of the signer process (S1): [`RemoteSigner`] implements [`Signer`] over the signer's Unix
//! socket, so the withdrawal pipeline is the same whether the signer is in-process or not. It reconnects
//! after a broken connection and bounds every wait.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kinko_keys::shares::RawShare;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::seal::SealStatus;
use crate::server::{LINE_LEN_MAX, Request, WireError, WireHead, WireLoggedChange, WireSecret};
use crate::{Approval, BoxFuture, EvmSignRequest, Signer, SignerError};

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Signing includes the journal's durable write; unsealing includes unwrapping every key.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts per request. A retried request is safe: signing the same payload again is idempotent in the
/// signer's journal, the same custodian's share counts once, sealing twice is sealing, and re-applying the
/// registry change that is already the signer's head is a no-op.
pub const ATTEMPTS_MAX: usize = 2;

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("signer socket {path}: {reason}")]
    Unreachable { path: String, reason: String },
    #[error("signer protocol: {0}")]
    Protocol(String),
    #[error("{}", .0.message)]
    Remote(WireError),
}

type Conn = BufReader<UnixStream>;

pub struct RemoteSigner {
    path: PathBuf,
    conn: tokio::sync::Mutex<Option<Conn>>,
}

impl std::fmt::Debug for RemoteSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteSigner").field("path", &self.path).finish_non_exhaustive()
    }
}

impl RemoteSigner {
    /// Does not connect yet: the first request does, so `kinko serve` can start before the signer.
    pub fn new(path: &Path) -> RemoteSigner {
        RemoteSigner { path: path.to_path_buf(), conn: tokio::sync::Mutex::new(None) }
    }

    pub async fn status(&self) -> Result<SealStatus, RemoteError> {
        let v = self.call(&Request::Status).await?;
        serde_json::from_value(v).map_err(|e| RemoteError::Protocol(format!("status reply: {e}")))
    }

    /// Sends one custodian's share (already decrypted locally). The share travels only over the socket.
    pub async fn unseal(&self, share: &RawShare) -> Result<SealStatus, RemoteError> {
        let request = Request::Unseal {
            custodian: share.custodian.clone(),
            index: share.index,
            threshold: share.threshold,
            share_hex: WireSecret(share.to_hex().to_string()),
        };
        let v = self.call(&request).await?;
        serde_json::from_value(v).map_err(|e| RemoteError::Protocol(format!("unseal reply: {e}")))
    }

    pub async fn seal(&self) -> Result<SealStatus, RemoteError> {
        let v = self.call(&Request::Seal).await?;
        serde_json::from_value(v).map_err(|e| RemoteError::Protocol(format!("seal reply: {e}")))
    }

    /// Signs a raw message with an Ed25519 key in the signer process (see [`crate::ed25519`]); returns the
    /// 64-byte signature, which the signer verified and logged before answering.
    pub async fn sign_ed25519(&self, req: &crate::ed25519::Ed25519SignRequest) -> Result<[u8; 64], SignerError> {
        let v = self.call(&Request::SignEd25519 { request: req.clone() }).await.map_err(signer_error)?;
        let bytes = signature_bytes(&v)?;
        bytes.try_into().map_err(|_| SignerError::Internal("remote signer: signature is not 64 bytes".into()))
    }

    /// One request, one reply; reconnects and retries on a broken connection (see [`ATTEMPTS_MAX`]).
    pub async fn call(&self, request: &Request) -> Result<Value, RemoteError> {
        let line = zeroize::Zeroizing::new(
            serde_json::to_string(request).map_err(|e| RemoteError::Protocol(format!("encoding: {e}")))?,
        );
        let mut guard = self.conn.lock().await;
        let mut last = String::new();
        for _ in 0..ATTEMPTS_MAX {
            if guard.is_none() {
                match tokio::time::timeout(CONNECT_TIMEOUT, UnixStream::connect(&self.path)).await {
                    Ok(Ok(s)) => *guard = Some(BufReader::new(s)),
                    Ok(Err(e)) => {
                        last = e.to_string();
                        continue;
                    }
                    Err(_) => {
                        last = "connect timed out".into();
                        continue;
                    }
                }
            }
            let Some(conn) = guard.as_mut() else { continue };
            match tokio::time::timeout(REQUEST_TIMEOUT, exchange(conn, &line)).await {
                Ok(Ok(reply)) => return decode_reply(&reply),
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = "request timed out".into(),
            }
            // The connection's state is unknown after a failure: never reuse it.
            *guard = None;
        }
        Err(RemoteError::Unreachable { path: self.path.display().to_string(), reason: last })
    }
}

async fn exchange(conn: &mut Conn, line: &str) -> std::io::Result<Vec<u8>> {
    conn.get_mut().write_all(line.as_bytes()).await?;
    conn.get_mut().write_all(b"\n").await?;
    let mut buf = Vec::new();
    let n = (&mut *conn).take(LINE_LEN_MAX as u64 + 1).read_until(b'\n', &mut buf).await?;
    if n == 0 || buf.last() != Some(&b'\n') {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "signer closed the connection"));
    }
    Ok(buf)
}

fn decode_reply(line: &[u8]) -> Result<Value, RemoteError> {
    let mut v: Value =
        serde_json::from_slice(line).map_err(|e| RemoteError::Protocol(format!("reply does not parse: {e}")))?;
    if let Some(ok) = v.get_mut("ok") {
        return Ok(ok.take());
    }
    if let Some(err) = v.get_mut("error") {
        let e: WireError = serde_json::from_value(err.take())
            .map_err(|e| RemoteError::Protocol(format!("error reply does not parse: {e}")))?;
        return Err(RemoteError::Remote(e));
    }
    Err(RemoteError::Protocol("reply has neither ok nor error".into()))
}

/// Field names the signer compares with the intent; the wire carries them as text.
/// An unknown name becomes a `Refused` carrying the whole message (nothing is lost, only the type).
const INTENT_FIELDS: &[&str] = &[
    "chain_id",
    "nonce",
    "source_wallet",
    "destination",
    "amount",
    "asset",
    "token contract",
    "token recipient",
    "native value",
    "token amount",
    "calldata",
];

fn signer_error(e: RemoteError) -> SignerError {
    let e = match e {
        RemoteError::Remote(e) => e,
        // Fail closed, and say where: the pipeline records it and retries later.
        other => return SignerError::Internal(format!("remote signer: {other}")),
    };
    let text = |v: &Value| v.as_str().map(str::to_string).unwrap_or_else(|| e.message.clone());
    let field = |name: &str| e.detail.get(name).and_then(Value::as_str).unwrap_or_default().to_string();
    match e.kind.as_str() {
        "sealed" => SignerError::Sealed,
        "unknown_key" => SignerError::UnknownKey(text(&e.detail)),
        "malformed" => SignerError::Malformed(text(&e.detail)),
        "refused" => SignerError::Refused(text(&e.detail)),
        "journal_unavailable" => SignerError::JournalUnavailable(text(&e.detail)),
        "double_sign" => SignerError::DoubleSign {
            key_id: field("key_id"),
            chain: field("chain"),
            slot: field("slot"),
            reason: field("reason"),
        },
        "intent_mismatch" => match INTENT_FIELDS.iter().find(|f| **f == field("field")) {
            Some(name) => {
                SignerError::IntentMismatch { field: name, expected: field("expected"), actual: field("actual") }
            }
            None => SignerError::Refused(e.message.clone()),
        },
        _ => SignerError::Internal(format!("remote signer: {}", e.message)),
    }
}

fn signature_bytes(reply: &Value) -> Result<Vec<u8>, SignerError> {
    let hex_sig = reply
        .get("signature")
        .and_then(Value::as_str)
        .ok_or_else(|| SignerError::Internal("remote signer: reply without a signature".into()))?;
    hex::decode(hex_sig).map_err(|_| SignerError::Internal("remote signer: signature is not hex".into()))
}

impl Signer for RemoteSigner {
    fn sign_evm<'a>(&'a self, req: &'a EvmSignRequest) -> BoxFuture<'a, Result<[u8; 65], SignerError>> {
        Box::pin(async move {
            let v = self.call(&Request::SignEvm { request: Box::new(req.clone()) }).await.map_err(signer_error)?;
            let bytes = signature_bytes(&v)?;
            bytes.try_into().map_err(|_| SignerError::Internal("remote signer: signature is not 65 bytes".into()))
        })
    }

    fn sign_safe_tx<'a>(
        &'a self,
        req: &'a crate::safe::SafeSignRequest,
    ) -> BoxFuture<'a, Result<[u8; 65], SignerError>> {
        Box::pin(async move {
            let v = self.call(&Request::SignSafe { request: Box::new(req.clone()) }).await.map_err(signer_error)?;
            let bytes = signature_bytes(&v)?;
            bytes.try_into().map_err(|_| SignerError::Internal("remote signer: signature is not 65 bytes".into()))
        })
    }

    fn sign_btc_psbt<'a>(
        &'a self,
        req: &'a crate::btc::BtcSignRequest,
    ) -> BoxFuture<'a, Result<crate::btc::BtcSigned, SignerError>> {
        Box::pin(async move {
            let v = self.call(&Request::SignBtc { request: Box::new(req.clone()) }).await.map_err(signer_error)?;
            let signed = v
                .get("signed")
                .cloned()
                .ok_or_else(|| SignerError::Internal("remote signer: reply without a signed transaction".into()))?;
            serde_json::from_value(signed)
                .map_err(|e| SignerError::Internal(format!("remote signer: signed transaction does not parse: {e}")))
        })
    }

    fn cosign_btc_multisig_psbt<'a>(
        &'a self,
        req: &'a crate::btc::BtcSignRequest,
    ) -> BoxFuture<'a, Result<crate::btc_multisig::BtcCosigned, SignerError>> {
        Box::pin(async move {
            let v = self.call(&Request::CosignBtc { request: Box::new(req.clone()) }).await.map_err(signer_error)?;
            let cosigned = v
                .get("cosigned")
                .cloned()
                .ok_or_else(|| SignerError::Internal("remote signer: reply without a cosigned PSBT".into()))?;
            serde_json::from_value(cosigned)
                .map_err(|e| SignerError::Internal(format!("remote signer: cosigned PSBT does not parse: {e}")))
        })
    }

    fn apply_registry_change<'a>(
        &'a self,
        change: &'a kinko_core::operator_registry::RegistryChange,
        approvals: &'a [Approval],
    ) -> BoxFuture<'a, Result<(), SignerError>> {
        Box::pin(async move {
            let request = Request::RegistryApply { change: Box::new(change.clone()), approvals: approvals.to_vec() };
            let v = self.call(&request).await.map_err(signer_error)?;
            // Only an explicit "applied" counts: anything else is not proof the signer took the change.
            if v.get("applied").and_then(Value::as_bool) != Some(true) {
                return Err(SignerError::Internal("remote signer: registry_apply reply without applied".into()));
            }
            Ok(())
        })
    }

    fn check_approvals<'a>(&'a self, req: &'a EvmSignRequest) -> BoxFuture<'a, Result<Vec<String>, SignerError>> {
        Box::pin(async move {
            let v =
                self.call(&Request::CheckApprovals { request: Box::new(req.clone()) }).await.map_err(signer_error)?;
            serde_json::from_value(v.get("approvers").cloned().unwrap_or(Value::Null))
                .map_err(|_| SignerError::Internal("remote signer: check_approvals reply without approvers".into()))
        })
    }

    fn registry_log_since<'a>(
        &'a self,
        seq: u64,
    ) -> BoxFuture<'a, Result<Vec<crate::approvals::LoggedChange>, SignerError>> {
        Box::pin(async move {
            let v = self.call(&Request::RegistryLogSince { seq }).await.map_err(signer_error)?;
            let bad = |what: &str| SignerError::Internal(format!("remote signer: registry_log_since reply {what}"));
            let entries: Vec<WireLoggedChange> =
                serde_json::from_value(v.get("entries").cloned().ok_or_else(|| bad("without entries"))?)
                    .map_err(|_| bad("does not parse"))?;
            // The caller verifies the entries; the bound only keeps a misbehaving peer from flooding it.
            if entries.len() > crate::REGISTRY_LOG_PAGE_MAX {
                return Err(bad("exceeds REGISTRY_LOG_PAGE_MAX entries"));
            }
            Ok(entries.into_iter().map(Into::into).collect())
        })
    }

    fn freeze<'a>(&'a self, freeze: &'a kinko_core::freeze::Freeze) -> BoxFuture<'a, Result<(), SignerError>> {
        Box::pin(async move {
            let v = self.call(&Request::Freeze { freeze: freeze.clone() }).await.map_err(signer_error)?;
            // Only an explicit "frozen" counts as the signer having taken it.
            if v.get("frozen").and_then(Value::as_bool) != Some(true) {
                return Err(SignerError::Internal("remote signer: freeze reply without frozen".into()));
            }
            Ok(())
        })
    }

    fn lift_freeze<'a>(
        &'a self,
        order: &'a crate::freeze::LiftOrder,
    ) -> BoxFuture<'a, Result<Vec<String>, SignerError>> {
        Box::pin(async move {
            let v = self.call(&Request::LiftFreeze { order: Box::new(order.clone()) }).await.map_err(signer_error)?;
            if v.get("lifted").and_then(Value::as_bool) != Some(true) {
                return Err(SignerError::Internal("remote signer: lift_freeze reply without lifted".into()));
            }
            serde_json::from_value(v.get("approvers").cloned().unwrap_or(Value::Null))
                .map_err(|_| SignerError::Internal("remote signer: lift_freeze reply without approvers".into()))
        })
    }

    fn active_freezes(&self) -> BoxFuture<'_, Result<Vec<kinko_core::freeze::Freeze>, SignerError>> {
        Box::pin(async move {
            let v = self.call(&Request::Freezes).await.map_err(signer_error)?;
            let freezes: Vec<kinko_core::freeze::Freeze> =
                serde_json::from_value(v.get("freezes").cloned().unwrap_or(Value::Null))
                    .map_err(|_| SignerError::Internal("remote signer: freezes reply does not parse".into()))?;
            if freezes.len() > kinko_core::freeze::ACTIVE_FREEZES_MAX {
                return Err(SignerError::Internal("remote signer: freezes reply exceeds ACTIVE_FREEZES_MAX".into()));
            }
            Ok(freezes)
        })
    }

    fn registry_head(&self) -> BoxFuture<'_, Result<crate::RegistryHead, SignerError>> {
        Box::pin(async move {
            let v = self.call(&Request::RegistryHead).await.map_err(signer_error)?;
            let bad = |what: &str| SignerError::Internal(format!("remote signer: registry_head reply {what}"));
            let head: Option<WireHead> =
                serde_json::from_value(v.get("head").cloned().ok_or_else(|| bad("without head"))?)
                    .map_err(|_| bad("does not parse"))?;
            head.map(|h| {
                let mut hash = [0u8; 32];
                hex::decode_to_slice(&h.hash, &mut hash).map_err(|_| bad("hash is not 32 bytes of hex"))?;
                Ok((h.seq, hash))
            })
            .transpose()
        })
    }
}
