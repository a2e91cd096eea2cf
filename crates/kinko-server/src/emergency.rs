//! Emergency freezes on the server side (K19, S5): setting one (one person, or the reconciliation), the
//! gates that refuse withdrawals and keep the pipeline from signing or broadcasting in a frozen scope, the
//! unfreeze request (`Process::Unfreeze`: an operations manager asks, signing managers approve, it executes
//! automatically at quorum) and keeping the signer's freezes and the database's in step.
//!
//! The signer keeps its own freezes and verifies unfreeze approvals itself, so these gates are the first
//! line, not the only one: a server that ignored them would still get a refusal from the signer.

use kinko_core::freeze::{Freeze, FreezeScope, UNFREEZE_KIND, check_reason, is_blocked, unfreeze_params};
use kinko_core::operators::{Process, request_intent_hash};
use kinko_signer::freeze::LiftOrder;
use kinko_signer::{Approval, Signer};
use kinko_store::ops_requests::{NewOpsEvent, OpsRequestRow, append_ops_event_tx};
use kinko_store::{Store, StoreError};
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::api::problem::{FieldError, Problem};
use crate::app::{ETH_CHAIN, HOT_KEY_ID};

/// `[emergency]`: how freezes are lifted.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EmergencyConfig {
    /// Signing managers' approvals an unfreeze needs (at least 1; default 1). The signer process reads the
    /// same setting and verifies the approvals itself.
    #[serde(default = "default_unfreeze_approvals")]
    pub unfreeze_approvals: u8,
    /// Signing managers' approvals an evacuation needs (K19, S5; default 2, never below 2 outside dev mode).
    /// The signer process reads the same setting and verifies the approvals itself.
    #[serde(default = "default_evacuation_approvals")]
    pub evacuation_approvals: u8,
}

impl Default for EmergencyConfig {
    fn default() -> Self {
        EmergencyConfig {
            unfreeze_approvals: default_unfreeze_approvals(),
            evacuation_approvals: default_evacuation_approvals(),
        }
    }
}

fn default_unfreeze_approvals() -> u8 {
    kinko_signer::freeze::UNFREEZE_APPROVALS_DEFAULT
}

fn default_evacuation_approvals() -> u8 {
    kinko_signer::evacuation::EVACUATION_APPROVALS_DEFAULT
}

impl EmergencyConfig {
    pub fn validate(&self) -> Result<(), crate::config::ConfigError> {
        if self.unfreeze_approvals == 0
            || usize::from(self.unfreeze_approvals) > kinko_core::operators::APPROVALS_PER_REQUEST_MAX
        {
            return Err(crate::config::ConfigError::Invalid {
                field: "emergency.unfreeze_approvals",
                reason: "must be between 1 and 32 (0 would let one person lift a freeze alone)".into(),
            });
        }
        if self.evacuation_approvals == 0
            || usize::from(self.evacuation_approvals) > kinko_core::operators::APPROVALS_PER_REQUEST_MAX
        {
            return Err(crate::config::ConfigError::Invalid {
                field: "emergency.evacuation_approvals",
                reason: "must be between 1 and 32".into(),
            });
        }
        Ok(())
    }

    /// Outside dev mode an evacuation needs at least two signing managers: it moves everything a wallet holds
    /// while the wallet is frozen.
    pub fn validate_for_production(&self, dev: bool) -> Result<(), crate::config::ConfigError> {
        if !dev && self.evacuation_approvals < crate::evacuation::EVACUATION_APPROVALS_PRODUCTION_MIN {
            return Err(crate::config::ConfigError::Invalid {
                field: "emergency.evacuation_approvals",
                reason: "must be at least 2 outside dev mode (one person must never evacuate a wallet alone)".into(),
            });
        }
        Ok(())
    }
}

/// Parses a scope as the command line and the API accept it; `chain:ethereum` names the EVM chain kinko
/// stores as `eth`.
pub fn parse_scope(s: &str) -> Result<FreezeScope, kinko_core::freeze::FreezeError> {
    match FreezeScope::parse(s)? {
        FreezeScope::Chain(c) if c == "ethereum" => Ok(FreezeScope::Chain(ETH_CHAIN.into())),
        other => Ok(other),
    }
}

/// A new freeze id.
pub fn new_freeze_id() -> String {
    format!("f_{}", uuid::Uuid::now_v7().simple())
}

/// What setting a freeze did: stored in the database (`false` when that id was already there) and what the
/// signer said (`Err` text when it could not be told; the freeze still stands in the database, and the
/// server's sync tells the signer again).
#[derive(Debug)]
pub struct FreezeOutcome {
    pub stored: Result<bool, StoreError>,
    pub signer: Result<(), String>,
}

/// Records `freeze` with an ops event and tells the signer. Both are tried whatever the other did: a freeze
/// must stop as much as it can.
pub async fn set_freeze(
    store: &Store,
    signer: &dyn Signer,
    freeze: &Freeze,
    operator_id: &str,
    terminal: &str,
    now_ms: i64,
) -> FreezeOutcome {
    let event = NewOpsEvent {
        operator_id: operator_id.into(),
        terminal: terminal.into(),
        event: "freeze_set".into(),
        request_id: None,
        detail_json: serde_json::json!({
            "freeze_id": freeze.id, "scope": freeze.scope.to_string(), "reason": freeze.reason,
            "set_by": freeze.set_by,
        })
        .to_string(),
        at_ms: now_ms,
    };
    let stored = store.set_freeze(freeze, &event).await;
    let signer = signer.freeze(freeze).await.map_err(|e| e.to_string());
    if let Err(e) = &stored {
        tracing::error!(freeze = %freeze.id, error = %e, "freeze could not be recorded in the database");
    }
    if let Err(e) = &signer {
        tracing::error!(freeze = %freeze.id, error = %e, "the signer could not be told about the freeze");
    }
    tracing::warn!(freeze = %freeze.id, scope = %freeze.scope, set_by = %freeze.set_by, "emergency freeze set");
    FreezeOutcome { stored, signer }
}

/// The active freeze that blocks an operation on `chain` from `wallet` with `key`, if any. A store error is
/// an error: callers treat it as "cannot tell", i.e. refuse (fail closed).
pub async fn blocking(store: &Store, chain: &str, wallet: &str, key: &str) -> Result<Option<Freeze>, StoreError> {
    let active = store.active_freezes().await?;
    Ok(is_blocked(&active, chain, wallet, key).cloned())
}

/// 423 Locked naming the freeze.
pub fn frozen_problem(f: &Freeze) -> Problem {
    Problem::new(axum::http::StatusCode::LOCKED, "frozen", "withdrawals are frozen").detail(format!(
        "freeze {} ({}) set by {}: {}; lifting it needs an approved unfreeze request",
        f.id, f.scope, f.set_by, f.reason
    ))
}

/// The withdrawal gate: 423 while a freeze covers the hot wallet (its chain, address or key); 503 when the
/// freezes cannot be read.
pub async fn refuse_withdrawal_if_frozen(state: &AppState) -> Result<(), Problem> {
    match blocking(&state.store, ETH_CHAIN, &state.hot_wallet, HOT_KEY_ID).await {
        Ok(None) => Ok(()),
        Ok(Some(f)) => Err(frozen_problem(&f)),
        Err(e) => Err(Problem::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "freeze-state-unavailable",
            "the freeze state cannot be read",
        )
        .detail(format!("withdrawals are refused until it can (fail closed): {e}"))),
    }
}

/// The pipeline gate: `Some(reason)` while a freeze covers the withdrawal's wallet, chain or key.
pub async fn pipeline_frozen(
    store: &Store,
    chain: &str,
    wallet: &str,
    key: &str,
) -> Result<Option<String>, StoreError> {
    Ok(blocking(store, chain, wallet, key)
        .await?
        .map(|f| format!("frozen: freeze {} ({}) set by {}: {}", f.id, f.scope, f.set_by, f.reason)))
}

/// Checks an unfreeze request's params (`freeze_id`, `note`); the errors name each field.
pub async fn check_unfreeze_params(state: &AppState, params: &serde_json::Value) -> Result<Vec<FieldError>, Problem> {
    let mut errors = Vec::new();
    let allowed = ["freeze_id", "note"];
    if let Some(obj) = params.as_object() {
        for k in obj.keys().filter(|k| !allowed.contains(&k.as_str())) {
            errors.push(FieldError::new(format!("params.{k}"), "is not a field of an unfreeze request"));
        }
    }
    match params.get("note").and_then(|v| v.as_str()) {
        Some(n) if check_reason(n).is_ok() => {}
        _ => errors.push(FieldError::new("params.note", "is required: why the freeze may be lifted (1 to 1024 bytes)")),
    }
    match params.get("freeze_id").and_then(|v| v.as_str()) {
        None => errors.push(FieldError::new("params.freeze_id", "is required (a non-empty string)")),
        Some(id) => match state.store.freeze_row(id).await? {
            None => errors.push(FieldError::new("params.freeze_id", "is not a freeze")),
            Some(row) if row.lifted_at_ms.is_some() => {
                errors.push(FieldError::new("params.freeze_id", "is already lifted"))
            }
            Some(_) => {}
        },
    }
    Ok(errors)
}

/// The canonical params, intent hash and quorum of an unfreeze request: the params gain the freeze's scope
/// (what approvers see and sign over, and what the signer checks against its own record).
pub async fn unfreeze_request(
    state: &AppState,
    id: &str,
    params: &serde_json::Value,
) -> Result<(serde_json::Value, [u8; 32], u8), Problem> {
    let freeze_id = params.get("freeze_id").and_then(|v| v.as_str()).unwrap_or_default();
    let note = params.get("note").and_then(|v| v.as_str()).unwrap_or_default();
    let row = state.store.freeze_row(freeze_id).await?.ok_or_else(Problem::not_found)?;
    let canonical = unfreeze_params(&row.freeze, note);
    let hash = request_intent_hash(Process::Unfreeze, id, UNFREEZE_KIND, &canonical);
    Ok((canonical, hash, state.config.emergency.unfreeze_approvals))
}

/// Executes an approved unfreeze: the signer first (it verifies the approvals against its own registry and
/// refuses otherwise), then the database with an ops event. A freeze the signer does not hold (it was never
/// reached) is lifted in the database only.
pub async fn execute_unfreeze(
    state: &AppState,
    row: &OpsRequestRow,
    approvals: &[Approval],
    now_ms: i64,
) -> Result<serde_json::Value, Problem> {
    let params: serde_json::Value = serde_json::from_str(&row.params_json).map_err(Problem::internal)?;
    let freeze_id = params.get("freeze_id").and_then(|v| v.as_str()).unwrap_or_default().to_string();
    let stored = state.store.freeze_row(&freeze_id).await?.ok_or_else(Problem::not_found)?;
    if stored.lifted_at_ms.is_some() {
        return Err(Problem::new(axum::http::StatusCode::CONFLICT, "already-lifted", "the freeze is already lifted")
            .detail(format!("freeze {freeze_id}")));
    }
    let order = LiftOrder {
        freeze_id: freeze_id.clone(),
        request_id: row.id.clone(),
        requester: row.requester.clone(),
        params,
        approvals: approvals.to_vec(),
    };
    let held = state.signer.active_freezes().await.map_err(|e| signer_refused(&e.to_string()))?;
    let approvers = if held.iter().any(|f| f.id == freeze_id) {
        state.signer.lift_freeze(&order).await.map_err(|e| signer_refused(&e.to_string()))?
    } else {
        Vec::new()
    };
    let mut tx = state.store.begin_write().await?;
    state.store.lift_freeze_tx(&mut tx, &freeze_id, &row.id, now_ms).await.map_err(|e| match e {
        StoreError::Conflict(d) => {
            Problem::new(axum::http::StatusCode::CONFLICT, "already-lifted", "the freeze is already lifted").detail(d)
        }
        other => other.into(),
    })?;
    let detail = serde_json::json!({ "freeze_id": freeze_id, "signer_approvers": approvers });
    append_ops_event_tx(
        &mut tx,
        &crate::api::ops_registry::system_event(&row.id, "freeze_lifted", detail.clone(), now_ms),
    )
    .await?;
    tx.commit().await.map_err(Problem::internal)?;
    tracing::warn!(freeze = %freeze_id, request = %row.id, "emergency freeze lifted");
    Ok(detail)
}

fn signer_refused(detail: &str) -> Problem {
    Problem::new(axum::http::StatusCode::CONFLICT, "signer-refused", "the signer refused to lift the freeze")
        .detail(detail.to_string())
}

/// Brings the signer's freezes and the database's together: a freeze only the database holds is sent to
/// the signer (it may have been unreachable when the freeze was set), one only the signer holds is recorded
/// in the database (so it can be seen and lifted through a request). Never lifts anything.
pub async fn sync_with_signer(store: &Store, signer: &dyn Signer, now_ms: i64) -> Result<(), String> {
    let ours = store.active_freezes().await.map_err(|e| e.to_string())?;
    let theirs = signer.active_freezes().await.map_err(|e| e.to_string())?;
    for f in ours.iter().filter(|f| !theirs.iter().any(|t| t.id == f.id)) {
        if let Err(e) = signer.freeze(f).await {
            tracing::error!(freeze = %f.id, error = %e, "could not tell the signer about a freeze");
        }
    }
    for f in theirs.iter().filter(|t| !ours.iter().any(|f| f.id == t.id)) {
        // A freeze the database once lifted while the signer still holds it stays lifted here: the signer
        // alone keeps refusing until an unfreeze the signer verifies (fail closed on the signing side).
        if store.freeze_row(&f.id).await.map_err(|e| e.to_string())?.is_some() {
            continue;
        }
        let event = NewOpsEvent {
            operator_id: "system:signer-sync".into(),
            terminal: "server".into(),
            event: "freeze_set".into(),
            request_id: None,
            detail_json: serde_json::json!({"freeze_id": f.id, "scope": f.scope.to_string(), "from": "signer"})
                .to_string(),
            at_ms: now_ms,
        };
        store.set_freeze(f, &event).await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// K19: a quorum of 0 for unfreezing would let one person lift a freeze alone: refused at load, naming
    /// the key; `chain:ethereum` names the chain kinko stores as `eth`.
    #[test]
    fn k19_unfreeze_approvals_of_zero_refused_and_chain_alias() {
        assert!(EmergencyConfig::default().validate().is_ok());
        let zero = EmergencyConfig { unfreeze_approvals: 0, ..Default::default() };
        let e = zero.validate().unwrap_err().to_string();
        assert!(e.contains("emergency.unfreeze_approvals"), "{e}");
        assert!(EmergencyConfig { unfreeze_approvals: 33, ..Default::default() }.validate().is_err());
        // K19: an evacuation needs 2 signing managers outside dev mode; dev may use 1; 0 never.
        let one = EmergencyConfig { evacuation_approvals: 1, ..Default::default() };
        assert!(one.validate().is_ok() && one.validate_for_production(true).is_ok());
        let e = one.validate_for_production(false).unwrap_err().to_string();
        assert!(e.contains("emergency.evacuation_approvals"), "{e}");
        assert!(EmergencyConfig { evacuation_approvals: 0, ..Default::default() }.validate().is_err());
        assert!(EmergencyConfig::default().validate_for_production(false).is_ok());
        assert_eq!(parse_scope("chain:ethereum").unwrap(), FreezeScope::Chain(ETH_CHAIN.into()));
        assert_eq!(parse_scope("chain:eth").unwrap(), FreezeScope::Chain(ETH_CHAIN.into()));
        let bad = crate::reconciliation::ReconciliationConfig { alert_recipient: "a b".into(), ..Default::default() };
        assert!(bad.validate().is_err());
    }
}
