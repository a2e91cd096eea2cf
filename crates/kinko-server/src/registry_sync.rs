//! Catching the server's copy of the operator registry up with the signer's (O3, O4).
//!
//! A registry change takes effect on the signer first and only then in the server's `operator_registry_log`
//! (docs: "The operator registry is a signed log"). If the server's write fails after the signer accepted
//! (a crash, a database error), the signer is ahead, and every later change would be refused as out of
//! order. [`reconcile_registry`] closes that gap without trusting the signer: it copies the missing entries
//! only when the server's log is a strict prefix of the signer's (the same hash at the server's head), and
//! only after replaying the server's log plus the new entries with the same verifying code the signer uses
//! (`OperatorRegistry::replay`: every signature, chain link and rule again).
//!
//! Anything else is refused loudly (`tracing::error!`) and changes nothing: logs that differ at one
//! position, or a server log ahead of the signer's. Registry changes then stay refused, by construction
//! rather than by a flag: a change names its position and the hash of the one before (and that hash covers
//! the whole chain), so the signer refuses every change built on a server head that is not its own.
//!
//! An `AddOperator` entry copied here never went through `execute_registry_change`, so nobody saw an
//! enrolment token for it, and none can be shown now. The account is created with no usable token (the
//! hash of a token nobody knows, already expired) and a `registry_reconciled` ops event says so: an
//! administrator must issue a new enrolment before that operator can log in.

use kinko_core::operator_registry::{RegistryChange, RegistryChangeKind};
use kinko_signer::approvals::{LoggedChange, OperatorRegistry};
use kinko_signer::{Approval, REGISTRY_LOG_PAGE_MAX, Signer, SignerError};
use kinko_store::operators::{RegistryLogRow, append_registry_log_tx, create_operator_account_tx};
use kinko_store::ops_requests::{
    NewOpsEvent, STATE_APPROVED, STATE_EXECUTED, append_ops_event_tx, finish_ops_request_tx,
};
use kinko_store::{Store, StoreError};

use crate::api::ops_auth::{random_token, sha256_hex};

/// The ops event written for every entry copied from the signer.
pub const EVENT_REGISTRY_RECONCILED: &str = "registry_reconciled";
/// Bound on the entries one call copies (a gap is normally one change); a caller further behind calls
/// again and continues where this one stopped.
pub const RECONCILE_ENTRIES_MAX: usize = 16 * REGISTRY_LOG_PAGE_MAX;

#[derive(Debug, thiserror::Error)]
pub enum RegistrySyncError {
    #[error("signer: {0}")]
    Signer(#[from] SignerError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("the server's operator_registry_log is refused: {0}")]
    ServerLog(String),
    #[error(
        "the operator registry logs diverge at seq {seq}: operator_registry_log holds change {server_hash}, \
         the signer {signer_hash}"
    )]
    Diverged { seq: u64, server_hash: String, signer_hash: String },
    #[error("the server's operator registry log (head seq {server}) is ahead of the signer's (head {signer:?})")]
    ServerAhead { server: u64, signer: Option<u64> },
    #[error("the signer's registry entries do not verify on top of operator_registry_log: {0}")]
    Unverified(String),
    #[error("the signer's registry log answer is inconsistent: {0}")]
    SignerInconsistent(String),
}

impl RegistrySyncError {
    /// Divergence, a server ahead of the signer, or entries that do not verify: an administrator must look
    /// (possible tampering or a restored backup). The others may pass on a retry.
    pub fn needs_operator(&self) -> bool {
        matches!(
            self,
            RegistrySyncError::ServerLog(_)
                | RegistrySyncError::Diverged { .. }
                | RegistrySyncError::ServerAhead { .. }
                | RegistrySyncError::Unverified(_)
                | RegistrySyncError::SignerInconsistent(_)
        )
    }
}

/// Copies the changes the signer holds beyond the server's registry log into it, verified; returns how
/// many. `Ok(0)` when both heads agree. See the module docs for what is refused.
pub async fn reconcile_registry(store: &Store, signer: &dyn Signer, now_ms: i64) -> Result<usize, RegistrySyncError> {
    let result = reconcile(store, signer, now_ms).await;
    match &result {
        Ok(0) => {}
        Ok(n) => tracing::warn!(copied = n, "operator registry: copied changes from the signer's log"),
        Err(e) if e.needs_operator() => {
            tracing::error!(error = %e, "operator registry: the server's copy and the signer's disagree; registry changes stay refused until an administrator resolves it")
        }
        Err(e) => tracing::warn!(error = %e, "operator registry: could not compare with the signer"),
    }
    result
}

async fn reconcile(store: &Store, signer: &dyn Signer, now_ms: i64) -> Result<usize, RegistrySyncError> {
    let server_log = server_entries(store).await?;
    let server =
        OperatorRegistry::replay(&server_log, now_ms).map_err(|e| RegistrySyncError::ServerLog(e.to_string()))?;
    let server_head = server.head();
    let signer_head = signer.registry_head().await?;
    let hex_of = |h: [u8; 32]| hex::encode(h);
    let (signer_seq, _) = match (server_head, signer_head) {
        (a, b) if a == b => return Ok(0),
        (Some((s, _)), None) => return Err(RegistrySyncError::ServerAhead { server: s, signer: None }),
        (Some((s, _)), Some((g, _))) if s > g => {
            return Err(RegistrySyncError::ServerAhead { server: s, signer: Some(g) });
        }
        (Some((s, sh)), Some((g, gh))) if s == g => {
            return Err(RegistrySyncError::Diverged { seq: s, server_hash: hex_of(sh), signer_hash: hex_of(gh) });
        }
        (_, Some(g)) => g,
        (_, None) => return Ok(0),
    };

    // From the server's head (to check the prefix) or from genesis; then everything after it.
    let mut from = server_head.map(|(s, _)| s).unwrap_or(0);
    let mut fresh: Vec<LoggedChange> = Vec::new();
    let mut prefix_checked = server_head.is_none();
    while fresh.len() < RECONCILE_ENTRIES_MAX {
        let page = signer.registry_log_since(from).await?;
        if page.is_empty() {
            return Err(RegistrySyncError::SignerInconsistent(format!("no entries from seq {from} below its head")));
        }
        for (i, entry) in page.into_iter().enumerate() {
            let expected = from.checked_add(i as u64);
            if Some(entry.change.seq) != expected {
                return Err(RegistrySyncError::SignerInconsistent(format!(
                    "entry seq {} where {expected:?} was asked for",
                    entry.change.seq
                )));
            }
            if !prefix_checked {
                // The signer's entry at the server's head must be the server's head itself.
                let (seq, server_hash) = server_head.unwrap_or((0, [0; 32]));
                let signer_hash = entry.change.hash().map_err(|e| RegistrySyncError::Unverified(e.to_string()))?;
                if signer_hash != server_hash {
                    return Err(RegistrySyncError::Diverged {
                        seq,
                        server_hash: hex_of(server_hash),
                        signer_hash: hex_of(signer_hash),
                    });
                }
                prefix_checked = true;
                continue;
            }
            if fresh.len() < RECONCILE_ENTRIES_MAX {
                fresh.push(entry);
            }
        }
        let next = server_head.map(|(s, _)| s + 1).unwrap_or(0) + fresh.len() as u64;
        if next > signer_seq {
            break;
        }
        from = next;
    }
    if fresh.is_empty() {
        return Ok(0);
    }

    // The application time is the signer's; it is not signed, and the server's own replay demands that it
    // never goes backwards nor lies in the future, so it is kept within [the server's last, now].
    let mut last_ms = server_log.last().map(|e| e.applied_at_ms).unwrap_or(i64::MIN);
    for entry in &mut fresh {
        entry.applied_at_ms = entry.applied_at_ms.max(last_ms).min(now_ms);
        last_ms = entry.applied_at_ms;
    }
    // Never trust the signer's answer as such: the whole log, old and new, must verify as one.
    let mut whole = server_log;
    whole.extend(fresh.iter().cloned());
    OperatorRegistry::replay(&whole, now_ms).map_err(|e| RegistrySyncError::Unverified(e.to_string()))?;

    // Reads before the write transaction (SQLite holds its write lock from BEGIN).
    let mut accounts = Vec::with_capacity(fresh.len());
    let mut requests = Vec::with_capacity(fresh.len());
    for entry in &fresh {
        let exists = match &entry.change.change {
            RegistryChangeKind::AddOperator { operator_id, .. } => store.operator_account(operator_id).await?.is_some(),
            _ => true,
        };
        accounts.push(exists);
        requests.push(store.ops_request(&entry.change.request_id()).await?);
    }

    let mut tx = store.begin_write().await?;
    for ((entry, account_exists), request) in fresh.iter().zip(accounts).zip(requests) {
        let change = &entry.change;
        let hash = hex::encode(change.hash().map_err(|e| RegistrySyncError::Unverified(e.to_string()))?);
        append_registry_log_tx(&mut tx, &log_row(change, &entry.approvals, &hash, entry.applied_at_ms)?).await?;
        let mut detail = serde_json::json!({
            "seq": change.seq,
            "hash": hash,
            "source": "signer registry log",
            "signer_applied_at_ms": entry.applied_at_ms,
        });
        if let RegistryChangeKind::AddOperator { operator_id, .. } = &change.change {
            detail["operator_id"] = serde_json::Value::String(operator_id.clone());
            if account_exists {
                detail["account"] = "already existed".into();
            } else {
                // No token can be handed to anyone now, so none is usable: the hash of a token that is
                // dropped at once, expired from the start.
                create_operator_account_tx(&mut tx, operator_id, &sha256_hex(&random_token()), now_ms, now_ms).await?;
                detail["account"] = "created without enrolment".into();
                detail["enrolment"] = "not issued: an administrator must issue a new enrolment".into();
            }
        }
        // The request that asked for this very change, left approved when its server write failed, is done.
        if let Some(row) = request
            && row.state == STATE_APPROVED
            && row.intent_hash == hash
        {
            let result = serde_json::json!({ "applied_seq": change.seq, "reconciled": true }).to_string();
            finish_ops_request_tx(
                &mut tx,
                &row.id,
                STATE_APPROVED,
                STATE_EXECUTED,
                kinko_core::operators::SYSTEM_EXECUTOR,
                &result,
                now_ms,
            )
            .await?;
            detail["request_executed"] = true.into();
        }
        append_ops_event_tx(
            &mut tx,
            &NewOpsEvent {
                operator_id: kinko_core::operators::SYSTEM_EXECUTOR.into(),
                terminal: "server".into(),
                event: EVENT_REGISTRY_RECONCILED.into(),
                request_id: Some(change.request_id()),
                detail_json: detail.to_string(),
                at_ms: now_ms,
            },
        )
        .await?;
    }
    tx.commit().await.map_err(StoreError::from)?;
    Ok(fresh.len())
}

fn log_row(
    change: &RegistryChange,
    approvals: &[Approval],
    hash: &str,
    applied_at_ms: i64,
) -> Result<RegistryLogRow, RegistrySyncError> {
    let encode = |e: serde_json::Error| RegistrySyncError::Unverified(format!("encoding change {}: {e}", change.seq));
    Ok(RegistryLogRow {
        seq: i64::try_from(change.seq).map_err(|_| RegistrySyncError::Unverified("seq out of range".into()))?,
        hash: hash.to_string(),
        change_json: serde_json::to_string(change).map_err(encode)?,
        approvals_json: serde_json::to_string(approvals).map_err(encode)?,
        applied_at_ms,
    })
}

/// The server's log as entries, each row's stored seq and hash checked against its change (as
/// `api::ops_registry::load_registry` does); the signatures are checked by the replay.
async fn server_entries(store: &Store) -> Result<Vec<LoggedChange>, RegistrySyncError> {
    let rows = store.registry_log().await?;
    let mut entries = Vec::with_capacity(rows.len());
    for row in rows {
        let bad = |what: String| RegistrySyncError::ServerLog(format!("seq {}: {what}", row.seq));
        let change: RegistryChange =
            serde_json::from_str(&row.change_json).map_err(|e| bad(format!("change_json: {e}")))?;
        let approvals: Vec<Approval> =
            serde_json::from_str(&row.approvals_json).map_err(|e| bad(format!("approvals_json: {e}")))?;
        let hash = change.hash().map_err(|e| bad(e.to_string()))?;
        if hex::encode(hash) != row.hash || i64::try_from(change.seq).ok() != Some(row.seq) {
            return Err(bad("stored hash or seq does not match its change".into()));
        }
        entries.push(LoggedChange { change, approvals, applied_at_ms: row.applied_at_ms });
    }
    Ok(entries)
}
