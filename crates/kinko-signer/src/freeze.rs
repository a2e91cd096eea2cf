//! The signer's own emergency freezes (K19, S5): once told to freeze a scope, the signer refuses every
//! signature in it — whatever the server says afterwards — until it sees an unfreeze request approved by
//! operators whose Ed25519 approvals it verifies itself against its own registry.
//!
//! Freezing needs nobody's approval: stopping is always safe, so a freeze takes effect in memory first and
//! is then written to the signer's log (`signer_freeze_log`); a failed write is reported but the freeze
//! stays. A lift is verified, written, and only then taken out of memory. At start-up the log is replayed
//! and every lift verified again (its grants judged at the time it was applied); a lift that no longer
//! verifies leaves its freeze in place (fail closed).

use std::sync::{Arc, RwLock};

use kinko_core::freeze::{Freeze, UNFREEZE_KIND, is_blocked};
use kinko_core::operators::{ApprovalSubject, Process, QuorumPolicy, request_intent_hash};
use serde::{Deserialize, Serialize};

use crate::approvals::{OperatorRegistry, verify_quorum};
use crate::journal::{JournalError, SignerJournal};
use crate::{Approval, SignerError};

/// The storage name of the one EVM chain kinko serves (`kinko_server::app::ETH_CHAIN`): what a
/// `chain:` freeze names for the signer's EVM signatures.
pub const EVM_CHAIN: &str = "eth";
/// Default approvals an unfreeze needs in the signer (`[emergency] unfreeze_approvals`).
pub const UNFREEZE_APPROVALS_DEFAULT: u8 = 1;

/// An approved unfreeze request, as the server presents it to the signer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiftOrder {
    pub freeze_id: String,
    pub request_id: String,
    pub requester: String,
    /// The request's params exactly as approved (`kinko_core::freeze::unfreeze_params`).
    pub params: serde_json::Value,
    pub approvals: Vec<Approval>,
}

/// One entry of the signer's freeze log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum FreezeLogEntry {
    Freeze { freeze: Freeze },
    Lift { order: LiftOrder, at_ms: i64 },
}

impl FreezeLogEntry {
    pub fn freeze_id(&self) -> &str {
        match self {
            FreezeLogEntry::Freeze { freeze } => &freeze.id,
            FreezeLogEntry::Lift { order, .. } => &order.freeze_id,
        }
    }
}

#[derive(Debug, Default, Clone)]
struct State {
    active: Vec<Freeze>,
    lifted: Vec<String>,
}

/// The signer's active freezes and their durable log. Shared by every signer a service unseals (freezes
/// survive sealing) and served while sealed.
pub struct SignerFreezes {
    journal: Arc<dyn SignerJournal>,
    state: RwLock<State>,
    unfreeze_approvals: std::sync::atomic::AtomicU8,
    /// Approvals an evacuation order needs (`[emergency] evacuation_approvals`, see `crate::evacuation`).
    evacuation_approvals: std::sync::atomic::AtomicU8,
    /// One change at a time, so a lift and a freeze of the same id cannot interleave.
    change_lock: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for SignerFreezes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignerFreezes").field("active", &self.active().map(|a| a.len()).ok()).finish_non_exhaustive()
    }
}

fn poisoned() -> SignerError {
    SignerError::Internal("freeze state lock poisoned".into())
}

fn journal_down(e: JournalError) -> SignerError {
    SignerError::JournalUnavailable(e.to_string())
}

/// Checks `order` against the freeze it names and the registry: the params name this freeze and its
/// scope, and the approvals over `(unfreeze, request id, request_intent_hash(params))` reach `required`
/// from signing managers other than the requester (verified signatures, unrevoked, unexpired grants).
pub fn verify_lift(
    registry: &OperatorRegistry,
    freeze: &Freeze,
    order: &LiftOrder,
    required: u8,
    now_ms: i64,
) -> Result<Vec<String>, SignerError> {
    let refused = |m: String| SignerError::Refused(m);
    if order.freeze_id != freeze.id || order.params.get("freeze_id").and_then(|v| v.as_str()) != Some(&freeze.id) {
        return Err(refused(format!("the unfreeze request does not name freeze {:?}", freeze.id)));
    }
    let scope = freeze.scope.to_string();
    if order.params.get("scope").and_then(|v| v.as_str()) != Some(scope.as_str()) {
        return Err(refused(format!("the unfreeze request does not name the freeze's scope {scope:?}")));
    }
    if registry.get(&order.requester).is_none() {
        return Err(refused(format!("the unfreeze requester {:?} is not a registered operator", order.requester)));
    }
    let hash = request_intent_hash(Process::Unfreeze, &order.request_id, UNFREEZE_KIND, &order.params);
    let subject = ApprovalSubject::new(Process::Unfreeze, &order.request_id, hash)
        .map_err(|e| refused(format!("unfreeze request id: {e}")))?;
    let verified =
        verify_quorum(registry, &subject, &order.approvals, QuorumPolicy::AtLeast(required), &order.requester, now_ms)
            .map_err(|e| refused(format!("unfreeze of {}: {e}", freeze.id)))?;
    Ok(verified.approvers)
}

impl SignerFreezes {
    /// No freezes (unit tests, a signer without a log yet).
    pub fn empty(journal: Arc<dyn SignerJournal>) -> SignerFreezes {
        SignerFreezes {
            journal,
            state: RwLock::new(State::default()),
            unfreeze_approvals: std::sync::atomic::AtomicU8::new(UNFREEZE_APPROVALS_DEFAULT),
            evacuation_approvals: std::sync::atomic::AtomicU8::new(crate::evacuation::EVACUATION_APPROVALS_DEFAULT),
            change_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Replays the signer's freeze log. Each lift is verified again against `registry` at the time it was
    /// applied; one that does not verify is logged and its freeze stays (fail closed). An unreadable log is
    /// an error: the signer does not start on it.
    pub async fn load(
        journal: Arc<dyn SignerJournal>,
        registry: &OperatorRegistry,
        unfreeze_approvals: u8,
    ) -> Result<SignerFreezes, SignerError> {
        let log = journal.freeze_log().await.map_err(journal_down)?;
        let mut state = State::default();
        for entry in log {
            match entry {
                FreezeLogEntry::Freeze { freeze } => {
                    if !state.lifted.contains(&freeze.id) && !state.active.iter().any(|f| f.id == freeze.id) {
                        state.active.push(freeze);
                    }
                }
                FreezeLogEntry::Lift { order, at_ms } => {
                    let Some(pos) = state.active.iter().position(|f| f.id == order.freeze_id) else { continue };
                    match verify_lift(registry, &state.active[pos], &order, unfreeze_approvals, at_ms) {
                        Ok(_) => {
                            let f = state.active.remove(pos);
                            state.lifted.push(f.id);
                        }
                        Err(e) => {
                            tracing::error!(freeze = %order.freeze_id, error = %e, "a logged unfreeze does not verify; the freeze stays")
                        }
                    }
                }
            }
        }
        let out = SignerFreezes::empty(journal);
        out.set_unfreeze_approvals(unfreeze_approvals)?;
        *out.state.write().map_err(|_| poisoned())? = state;
        Ok(out)
    }

    /// How many signing managers' approvals a lift needs (at least 1).
    pub fn set_unfreeze_approvals(&self, m: u8) -> Result<(), SignerError> {
        if m == 0 {
            return Err(SignerError::Refused("unfreeze_approvals must be at least 1".into()));
        }
        self.unfreeze_approvals.store(m, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    pub fn unfreeze_approvals(&self) -> u8 {
        self.unfreeze_approvals.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// How many signing managers' approvals an evacuation order needs (at least 1; the server's configuration
    /// refuses below 2 outside dev mode).
    pub fn set_evacuation_approvals(&self, m: u8) -> Result<(), SignerError> {
        if m == 0 {
            return Err(SignerError::Refused("evacuation_approvals must be at least 1".into()));
        }
        self.evacuation_approvals.store(m, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    pub fn evacuation_approvals(&self) -> u8 {
        self.evacuation_approvals.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn active(&self) -> Result<Vec<Freeze>, SignerError> {
        Ok(self.state.read().map_err(|_| poisoned())?.active.clone())
    }

    /// `Err(Refused)` naming the freeze when one covers (chain, wallet, key).
    pub fn check(&self, chain: &str, wallet: &str, key_id: &str) -> Result<(), SignerError> {
        let state = self.state.read().map_err(|_| poisoned())?;
        if state.active.len() >= kinko_core::freeze::ACTIVE_FREEZES_MAX {
            return Err(SignerError::Refused("frozen: too many active freezes; everything is stopped".into()));
        }
        match is_blocked(&state.active, chain, wallet, key_id) {
            None => Ok(()),
            Some(f) => Err(SignerError::Refused(format!(
                "frozen: freeze {} ({}) set by {}: {}",
                f.id, f.scope, f.set_by, f.reason
            ))),
        }
    }

    /// Takes `freeze` into effect now, then records it. Freezing an active id again is a no-op; a lifted id
    /// is refused (a new freeze needs a new id).
    pub async fn freeze(&self, freeze: &Freeze) -> Result<(), SignerError> {
        kinko_core::freeze::check_reason(&freeze.reason).map_err(|e| SignerError::Malformed(e.to_string()))?;
        if freeze.id.is_empty() || freeze.id.len() > kinko_core::operators::REQUEST_ID_LEN_MAX {
            return Err(SignerError::Malformed("freeze id must be 1 to 128 bytes".into()));
        }
        let _one = self.change_lock.lock().await;
        {
            let mut state = self.state.write().map_err(|_| poisoned())?;
            if state.active.iter().any(|f| f.id == freeze.id) {
                return Ok(());
            }
            if state.lifted.contains(&freeze.id) {
                return Err(SignerError::Refused(format!("freeze {} was already lifted; use a new id", freeze.id)));
            }
            if state.active.len() >= kinko_core::freeze::ACTIVE_FREEZES_MAX {
                // `check` already refuses everything at this many; holding more would only grow memory.
                return Err(SignerError::Refused("too many active freezes; everything is stopped".into()));
            }
            state.active.push(freeze.clone());
        }
        tracing::warn!(freeze = %freeze.id, scope = %freeze.scope, set_by = %freeze.set_by, "signer frozen");
        self.journal.append_freeze(&FreezeLogEntry::Freeze { freeze: freeze.clone() }).await.map_err(journal_down)
    }

    /// Verifies `order` against the active freeze it names and `registry`, records the lift, then lifts it.
    /// Returns the operators whose approvals counted. A freeze this signer does not hold is refused.
    pub async fn lift(
        &self,
        registry: &OperatorRegistry,
        order: &LiftOrder,
        now_ms: i64,
    ) -> Result<Vec<String>, SignerError> {
        let _one = self.change_lock.lock().await;
        let freeze = self
            .state
            .read()
            .map_err(|_| poisoned())?
            .active
            .iter()
            .find(|f| f.id == order.freeze_id)
            .cloned()
            .ok_or_else(|| SignerError::Refused(format!("the signer holds no active freeze {:?}", order.freeze_id)))?;
        let required = self.unfreeze_approvals.load(std::sync::atomic::Ordering::SeqCst);
        let approvers = verify_lift(registry, &freeze, order, required, now_ms)?;
        self.journal
            .append_freeze(&FreezeLogEntry::Lift { order: order.clone(), at_ms: now_ms })
            .await
            .map_err(journal_down)?;
        let mut state = self.state.write().map_err(|_| poisoned())?;
        state.active.retain(|f| f.id != order.freeze_id);
        state.lifted.push(order.freeze_id.clone());
        tracing::warn!(freeze = %order.freeze_id, request = %order.request_id, ?approvers, "signer freeze lifted");
        Ok(approvers)
    }
}

#[cfg(test)]
mod tests {
    use kinko_core::freeze::FreezeScope;
    use kinko_core::operators::Decision;

    use super::*;
    use crate::approvals::sign_approval;
    use crate::approvals::tests::{key, standard_log};
    use crate::testing::MemoryJournal;

    fn now_ms() -> i64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
    }

    fn hot_freeze() -> Freeze {
        Freeze {
            id: "f1".into(),
            scope: FreezeScope::Wallet("0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc".into()),
            reason: "unknown spend".into(),
            set_by: kinko_core::freeze::SYSTEM_RECONCILIATION.into(),
            set_at_ms: now_ms(),
        }
    }

    /// An unfreeze request for `freeze` by `requester`, approved by `(seed, operator)` pairs.
    fn order(freeze: &Freeze, requester: &str, by: &[(u8, &str)]) -> LiftOrder {
        let params = kinko_core::freeze::unfreeze_params(freeze, "cleared");
        let hash = request_intent_hash(Process::Unfreeze, "r_1", UNFREEZE_KIND, &params);
        let subject = ApprovalSubject::new(Process::Unfreeze, "r_1", hash).unwrap();
        let approvals =
            by.iter().map(|(s, id)| sign_approval(&key(*s), id, &subject, Decision::Approve).unwrap()).collect();
        LiftOrder {
            freeze_id: freeze.id.clone(),
            request_id: "r_1".into(),
            requester: requester.into(),
            params,
            approvals,
        }
    }

    fn registry() -> OperatorRegistry {
        OperatorRegistry::replay(&standard_log(now_ms()), now_ms()).unwrap()
    }

    #[tokio::test]
    async fn k19_signer_freeze_refuses_until_a_verified_unfreeze_and_survives_restart() {
        let journal = Arc::new(MemoryJournal::new());
        let freezes = SignerFreezes::empty(journal.clone());
        let f = hot_freeze();
        let hot = "0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc";
        freezes.check(EVM_CHAIN, hot, "eth-hot-1").unwrap();
        freezes.freeze(&f).await.unwrap();
        freezes.freeze(&f).await.unwrap();
        assert_eq!(freezes.active().unwrap().len(), 1, "the same freeze twice is one freeze");
        let refused = freezes.check(EVM_CHAIN, hot, "eth-hot-1").unwrap_err().to_string();
        assert!(refused.contains("frozen: freeze f1"), "{refused}");
        freezes.check(EVM_CHAIN, "0x0000000000000000000000000000000000000001", "other").unwrap();

        // A restarted signer is still frozen.
        let r = registry();
        let reloaded = SignerFreezes::load(journal.clone(), &r, 1).await.unwrap();
        assert!(reloaded.check(EVM_CHAIN, hot, "eth-hot-1").is_err());

        // No approval, the requester's own approval, an approval by the wrong role, a forged one, or params
        // naming another scope: all refused, and the freeze stays.
        let cases = [
            order(&f, "om", &[]),
            order(&f, "m1", &[(1, "m1")]),
            order(&f, "om", &[(10, "so")]),
            order(&f, "om", &[(2, "m1")]),
            order(&Freeze { scope: FreezeScope::Everything, ..f.clone() }, "om", &[(1, "m1")]),
            order(&f, "nobody", &[(1, "m1")]),
        ];
        for bad in &cases {
            let got = reloaded.lift(&r, bad, now_ms()).await;
            assert!(matches!(got, Err(SignerError::Refused(_))), "{bad:?}: {got:?}");
        }
        // Two approvals required: one is not enough.
        reloaded.set_unfreeze_approvals(2).unwrap();
        let one = reloaded.lift(&r, &order(&f, "om", &[(1, "m1")]), now_ms()).await.unwrap_err().to_string();
        assert!(one.contains("1 valid approvals of 2 required"), "{one}");
        assert!(reloaded.check(EVM_CHAIN, hot, "eth-hot-1").is_err());
        assert!(reloaded.set_unfreeze_approvals(0).is_err(), "a quorum of 0 is refused");

        let approvers = reloaded.lift(&r, &order(&f, "om", &[(1, "m1"), (2, "m2")]), now_ms()).await.unwrap();
        assert_eq!(approvers, vec!["m1".to_string(), "m2".to_string()]);
        reloaded.check(EVM_CHAIN, hot, "eth-hot-1").unwrap();
        assert!(reloaded.freeze(&f).await.is_err(), "a lifted freeze id is not reused");

        // Replayed with the lift: unfrozen. Replayed against a registry where the approvers are unknown (a
        // lift row written behind the signer's back): the freeze stays.
        let again = SignerFreezes::load(journal.clone(), &r, 2).await.unwrap();
        again.check(EVM_CHAIN, hot, "eth-hot-1").unwrap();
        let stranger = SignerFreezes::load(journal.clone(), &OperatorRegistry::new(), 2).await.unwrap();
        assert!(stranger.check(EVM_CHAIN, hot, "eth-hot-1").is_err());
    }

    #[tokio::test]
    async fn s5_freeze_takes_effect_even_when_it_cannot_be_recorded() {
        let freezes = SignerFreezes::empty(Arc::new(crate::testing::FailingJournal));
        let got = freezes.freeze(&hot_freeze()).await;
        assert!(matches!(got, Err(SignerError::JournalUnavailable(_))), "{got:?}");
        assert!(freezes.check(EVM_CHAIN, "0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc", "k").is_err());
        let all = Freeze { id: "f2".into(), scope: FreezeScope::Everything, ..hot_freeze() };
        let _ = freezes.freeze(&all).await;
        assert!(freezes.check("", "", "any").is_err(), "everything covers raw-message keys too");
    }
}
