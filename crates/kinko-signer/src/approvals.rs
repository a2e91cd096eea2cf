//! Approval verification in the signer (K8, K11, K12, O2, O3).
//!
//! The server collects approvals, but a compromised server could claim anything (edit an intent row to
//! read "approved", drop a revocation). So the signer checks the approvals itself: each is an Ed25519
//! signature, with the operator's personal approval key, over the canonical approval message of
//! `kinko_core::operators` (layout documented there), verified against the signer's *own*
//! [`OperatorRegistry`] and the signer's *own* [`SigningQuorum`]. Role and separation-of-duties rules are
//! the same functions the rest of kinko uses (`kinko_core::operators::check_approver`).
//!
//! Where it is called: [`crate::LocalSigner`]'s `sign_evm_inner`, after the key gate and the intent
//! check, with the subject `(Process::Signing, req.intent.id, req.intent.hash())`, `req.approvals`, the
//! [`QuorumPolicy`] the signer's quorum config gives for (key, asset, amount) and `req.actor` as
//! requester; a refusal becomes `SignerError::Refused` and the approvers go into the key access log
//! entry as the K12 evidence.
//!
//! The registry is the replay of a signed, hash-chained log (`kinko_core::operator_registry`): every
//! change carries the Ed25519 signatures of the administrators who requested and approved it, and
//! [`OperatorRegistry::apply_change`] verifies each one before the pure rules of
//! `RegistryState::apply` see the ids. The signer keeps the log in its own table and replays it (verifying
//! again) at startup, so editing the server's copy, or the signer's rows, changes nothing it accepts.
//!
//! Time: grants are judged at the time a change is applied (`now_ms`), and approvals of a signature at the
//! time the signature is asked for. A grant that has since expired simply stops counting for new approvals;
//! it does not undo the changes it once approved.
//!
//! Fail closed throughout: a malformed or forged signature refuses the whole request (it is evidence of
//! tampering, not a missing vote), a quorum of 0 needs the explicit [`QuorumPolicy::NoneRequired`]
//! marker, a (key, asset) without a quorum entry does not sign, and a quorum below what the policy class
//! demands does not load.

use std::collections::BTreeMap;

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use kinko_core::Amount;
use kinko_core::operator_registry::{RegistryChange, RegistryChangeKind, RegistryError, RegistryState};
use kinko_core::operators::{
    APPROVALS_PER_REQUEST_MAX, ApprovalSubject, Decision, Operator, OperatorError, QuorumPolicy, approval_message,
    check_approver,
};
use kinko_core::policy::PolicyClass;
use serde::{Deserialize, Serialize};

use crate::Approval;

/// Bound on the operators one registry holds.
pub const REGISTRY_OPERATORS_MAX: usize = 1024;
/// Bound on the `[[signer.quorum]]` entries.
pub const QUORUM_ENTRIES_MAX: usize = 256;
/// Bound on the amount bands of one quorum entry.
pub const QUORUM_BANDS_MAX: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApprovalError {
    #[error("operator registry: {0}")]
    Registry(String),
    #[error("operator registry: {0}")]
    Change(#[from] RegistryError),
    #[error(transparent)]
    Operator(#[from] OperatorError),
    #[error("approval by {operator:?}: signature_hex {reason}")]
    MalformedSignature { operator: String, reason: &'static str },
    #[error("approval by {operator:?}: signature does not verify for this process, request and intent hash")]
    BadSignature { operator: String },
    #[error("{count} approvals exceed APPROVALS_PER_REQUEST_MAX ({APPROVALS_PER_REQUEST_MAX})")]
    TooManyApprovals { count: usize },
    #[error("quorum not met: {counted} valid approvals of {required} required{}", not_counted_text(.not_counted))]
    QuorumNotMet { required: u8, counted: usize, not_counted: Vec<NotCounted> },
    #[error("no signing quorum is configured for key {key_id:?} and asset {asset:?} ([[signer.quorum]])")]
    NoQuorum { key_id: String, asset: String },
}

fn not_counted_text(not_counted: &[NotCounted]) -> String {
    not_counted.iter().map(|n| format!("; {:?} not counted: {}", n.operator_id, n.reason)).collect()
}

/// An approval whose signature was fine but which does not count (revoked, expired, wrong role, not
/// registered). Kept with its reason so the log inspector sees why (K12).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotCounted {
    pub operator_id: String,
    pub reason: String,
}

/// What the signer accepted: the evidence that goes into the key access log (K12).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifiedQuorum {
    pub subject: ApprovalSubject,
    pub required: u8,
    /// Distinct operators whose approvals counted, in the order presented.
    pub approvers: Vec<String>,
    pub not_counted: Vec<NotCounted>,
}

/// One operator as the signer knows them.
#[derive(Clone, Debug)]
pub struct RegisteredOperator {
    pub operator: Operator,
    pub approval_key: VerifyingKey,
}

/// One applied entry of the registry log, as the signer stores it (and as offline bundles carry it, K14).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggedChange {
    pub change: RegistryChange,
    pub approvals: Vec<Approval>,
    /// When the signer applied it: the time its grants were judged at, and again on replay.
    pub applied_at_ms: i64,
}

/// The signer's own operator registry: the replayed [`RegistryState`] plus the parsed approval keys. It is
/// deliberately separate from the server's copy, so editing that does not change what the signer accepts.
/// The only way in is [`OperatorRegistry::apply_change`] (or a replay of applied changes), which verifies
/// every signature.
#[derive(Clone, Debug, Default)]
pub struct OperatorRegistry {
    state: RegistryState,
    operators: BTreeMap<String, RegisteredOperator>,
}

impl OperatorRegistry {
    /// The empty registry (before genesis): no approval counts.
    pub fn new() -> OperatorRegistry {
        OperatorRegistry::default()
    }

    /// Verifies the approvals of `change` and applies it at `now_ms`.
    ///
    /// Each approval is an Ed25519 signature (`verify_strict`) over `approval_message(change.subject(),
    /// Approve)` with the key this registry holds for the operator; for the genesis change, the requester's
    /// key is the one the change itself registers. A malformed or forged signature refuses the whole change;
    /// an unregistered operator's approval does not count. The ids whose signatures verified go to
    /// [`RegistryState::apply`] (chain, genesis, second-administrator and one-role rules). Nothing changes on
    /// error.
    pub fn apply_change(
        &mut self,
        change: &RegistryChange,
        approvals: &[Approval],
        now_ms: i64,
    ) -> Result<(), ApprovalError> {
        if approvals.len() > APPROVALS_PER_REQUEST_MAX {
            return Err(ApprovalError::TooManyApprovals { count: approvals.len() });
        }
        let message = approval_message(&change.subject()?, Decision::Approve)?;
        let genesis_key = match (&change.change, self.state.head()) {
            (RegistryChangeKind::AddOperator { operator_id, approval_public_key_hex, .. }, None) => {
                Some((operator_id.as_str(), parse_public_key(operator_id, approval_public_key_hex)?))
            }
            _ => None,
        };
        let mut signers: Vec<String> = Vec::new();
        for approval in approvals {
            let signature = parse_signature(approval)?;
            let key = match (genesis_key, self.operators.get(&approval.operator_id)) {
                (Some((id, key)), _) if id == approval.operator_id => key,
                (_, Some(registered)) => registered.approval_key,
                // Nothing to verify with: an unknown operator's approval does not count.
                _ => continue,
            };
            key.verify_strict(&message, &signature)
                .map_err(|_| ApprovalError::BadSignature { operator: approval.operator_id.clone() })?;
            if !signers.contains(&approval.operator_id) {
                signers.push(approval.operator_id.clone());
            }
        }
        let mut state = self.state.clone();
        state.apply(change, &signers, now_ms)?;
        let operators = keys_of(&state)?;
        *self = OperatorRegistry { state, operators };
        Ok(())
    }

    /// Rebuilds the registry from its log, verifying every signature again with the keys of the state
    /// before each step, each change judged at the time it was applied. Refused: a broken chain, a forged
    /// or missing signature, a change that breaks a rule, application times that go backwards, lie before
    /// the change was requested or after `now_ms`.
    pub fn replay(entries: &[LoggedChange], now_ms: i64) -> Result<OperatorRegistry, ApprovalError> {
        let mut registry = OperatorRegistry::new();
        let mut last_ms = i64::MIN;
        for (i, entry) in entries.iter().enumerate() {
            // The application time is not signed; bounding it between the previous change and now keeps an
            // edited row from reviving grants that had already expired when the log moved on.
            if entry.applied_at_ms < last_ms || entry.applied_at_ms > now_ms {
                return Err(ApprovalError::Registry(format!(
                    "log entry {i}: applied_at_ms {} is out of order",
                    entry.applied_at_ms
                )));
            }
            last_ms = entry.applied_at_ms;
            registry
                .apply_change(&entry.change, &entry.approvals, entry.applied_at_ms)
                .map_err(|e| ApprovalError::Registry(format!("log entry {i} does not verify: {e}")))?;
        }
        Ok(registry)
    }

    /// The replayed state (operators, grants, head).
    pub fn state(&self) -> &RegistryState {
        &self.state
    }

    /// `(seq, hash)` of the last applied change; `None` before genesis.
    pub fn head(&self) -> Option<(u64, [u8; 32])> {
        self.state.head()
    }

    pub fn get(&self, operator_id: &str) -> Option<&RegisteredOperator> {
        self.operators.get(operator_id)
    }

    pub fn len(&self) -> usize {
        self.operators.len()
    }

    pub fn is_empty(&self) -> bool {
        self.operators.is_empty()
    }
}

/// The verifying keys of a state. Refused: a key that is not a valid Ed25519 point, a weak (small-order)
/// key, or more operators than [`REGISTRY_OPERATORS_MAX`].
fn keys_of(state: &RegistryState) -> Result<BTreeMap<String, RegisteredOperator>, ApprovalError> {
    let mut operators = BTreeMap::new();
    for entry in state.entries() {
        if operators.len() >= REGISTRY_OPERATORS_MAX {
            return Err(ApprovalError::Registry("exceeds REGISTRY_OPERATORS_MAX operators".into()));
        }
        let id = &entry.operator.id;
        let approval_key = verifying_key(id, &entry.approval_public_key)?;
        operators.insert(id.clone(), RegisteredOperator { operator: entry.operator.clone(), approval_key });
    }
    Ok(operators)
}

fn verifying_key(operator: &str, bytes: &[u8; 32]) -> Result<VerifyingKey, ApprovalError> {
    let bad = |what: &str| ApprovalError::Registry(format!("operator {operator:?}: approval_public_key_hex {what}"));
    let key = VerifyingKey::from_bytes(bytes).map_err(|_| bad("is not a valid Ed25519 point"))?;
    if key.is_weak() {
        return Err(bad("is a weak key"));
    }
    Ok(key)
}

fn parse_public_key(operator: &str, hex_text: &str) -> Result<VerifyingKey, ApprovalError> {
    let bytes = kinko_core::operator_registry::parse_public_key_hex(hex_text)?;
    verifying_key(operator, &bytes)
}

/// One amount band of a signing quorum: from `from` (inclusive) up to the next band's `from`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuorumBand {
    pub from: Amount,
    pub approvals: u8,
}

/// One `[[signer.quorum]]` entry: how many approvals the signer demands for a (key, asset) by amount.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningQuorumConfig {
    pub key_id: String,
    pub asset: String,
    pub class: PolicyClass,
    /// Amounts up to and including this need no approval (hot wallets only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_max: Option<Amount>,
    pub bands: Vec<QuorumBand>,
}

impl SigningQuorumConfig {
    /// The embedded/dev default: the dev hot key `eth-hot-1` signs ETH up to 10 ETH without approval, and
    /// above that with one signing manager's approval.
    pub fn dev_default() -> SigningQuorumConfig {
        SigningQuorumConfig {
            key_id: "eth-hot-1".into(),
            asset: "ETH".into(),
            class: PolicyClass::HotSmall,
            auto_max: Some(Amount::from_base_units(10_000_000_000_000_000_000)),
            bands: vec![QuorumBand { from: Amount::from_base_units(0), approvals: 1 }],
        }
    }
}

/// A refused quorum configuration; `field` is the path, e.g. `signer.quorum[0].bands[1].approvals`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {reason}")]
pub struct QuorumConfigError {
    pub field: String,
    pub reason: String,
}

/// The signer's quorum policy per (key, asset), validated at load time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SigningQuorum {
    entries: BTreeMap<(String, String), SigningQuorumConfig>,
}

impl SigningQuorum {
    /// Validates `configs` (named `signer.quorum[i]` in errors). Refused: no bands, a first band not
    /// starting at 0, bands not strictly ascending, approvals decreasing with the amount, approvals of 0 or
    /// below the class's `quorum_min()` (so "1 where the class demands 2" never loads), `auto_max` for a
    /// class that always needs approval, and a (key, asset) listed twice.
    pub fn from_configs(configs: &[SigningQuorumConfig]) -> Result<SigningQuorum, QuorumConfigError> {
        let err = |field: String, reason: String| QuorumConfigError { field, reason };
        if configs.len() > QUORUM_ENTRIES_MAX {
            return Err(err("signer.quorum".into(), format!("has more than {QUORUM_ENTRIES_MAX} entries")));
        }
        let mut entries = BTreeMap::new();
        for (i, c) in configs.iter().enumerate() {
            let at = |f: &str| format!("signer.quorum[{i}].{f}");
            if c.key_id.is_empty() || c.key_id.len() > 64 {
                return Err(err(at("key_id"), "must be 1 to 64 bytes".into()));
            }
            if c.asset.parse::<kinko_core::asset::AssetCode>().is_err() {
                return Err(err(at("asset"), "is not an asset code (e.g. \"ETH\")".into()));
            }
            if c.auto_max.is_some() && c.class.always_needs_approval() {
                return Err(err(
                    at("auto_max"),
                    format!("is not allowed for class {}: it always needs approval", c.class),
                ));
            }
            if c.bands.is_empty() || c.bands.len() > QUORUM_BANDS_MAX {
                return Err(err(at("bands"), format!("must list 1 to {QUORUM_BANDS_MAX} bands")));
            }
            let min = c.class.quorum_min().max(1);
            for (j, band) in c.bands.iter().enumerate() {
                let band_at = |f: &str| at(&format!("bands[{j}].{f}"));
                if j == 0 && !band.from.is_zero() {
                    return Err(err(band_at("from"), "must be \"0\" for the first band".into()));
                }
                if j > 0 && band.from <= c.bands[j - 1].from {
                    return Err(err(band_at("from"), "must be above the previous band's".into()));
                }
                if band.approvals < min {
                    return Err(err(
                        band_at("approvals"),
                        format!("is {}, below the {} the class {} demands", band.approvals, min, c.class),
                    ));
                }
                if usize::from(band.approvals) > APPROVALS_PER_REQUEST_MAX {
                    return Err(err(band_at("approvals"), "exceeds APPROVALS_PER_REQUEST_MAX".into()));
                }
                if j > 0 && band.approvals < c.bands[j - 1].approvals {
                    return Err(err(band_at("approvals"), "must not be below the previous band's".into()));
                }
            }
            let key = (c.key_id.clone(), c.asset.clone());
            if entries.insert(key, c.clone()).is_some() {
                return Err(err(at("key_id"), format!("{:?} with asset {:?} is listed twice", c.key_id, c.asset)));
            }
        }
        Ok(SigningQuorum { entries })
    }

    /// The quorum for signing `amount` of `asset` with `key_id`: none up to `auto_max`, else the approvals
    /// of the highest band whose `from` the amount reaches. No entry: refused (fail closed).
    pub fn policy_for(&self, key_id: &str, asset: &str, amount: Amount) -> Result<QuorumPolicy, ApprovalError> {
        let no_quorum = || ApprovalError::NoQuorum { key_id: key_id.to_owned(), asset: asset.to_owned() };
        let entry = self.entries.get(&(key_id.to_owned(), asset.to_owned())).ok_or_else(no_quorum)?;
        if entry.auto_max.is_some_and(|max| amount <= max) {
            return Ok(QuorumPolicy::NoneRequired);
        }
        let band = entry.bands.iter().rev().find(|b| amount >= b.from).ok_or_else(no_quorum)?;
        Ok(QuorumPolicy::AtLeast(band.approvals))
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn parse_signature(approval: &Approval) -> Result<Signature, ApprovalError> {
    let bad = |reason| ApprovalError::MalformedSignature { operator: approval.operator_id.clone(), reason };
    let bytes = hex::decode(&approval.signature_hex).map_err(|_| bad("is not hex"))?;
    let bytes: [u8; 64] = bytes.try_into().map_err(|_| bad("is not 64 bytes"))?;
    Ok(Signature::from_bytes(&bytes))
}

/// Makes an approval: what `kinko ops approve` will do on the operator's own terminal. Here so that the
/// signing and the verification of the message cannot drift apart.
pub fn sign_approval(
    key: &SigningKey,
    operator_id: &str,
    subject: &ApprovalSubject,
    decision: Decision,
) -> Result<Approval, ApprovalError> {
    let message = approval_message(subject, decision)?;
    Ok(Approval { operator_id: operator_id.to_owned(), signature_hex: hex::encode(key.sign(&message).to_bytes()) })
}

/// Checks `approvals` for `subject` against `registry` at `now_ms`, for a request made by `requester`.
///
/// Each approval's signature is verified with `verify_strict` over the approve message; its operator
/// must be registered, unrevoked, hold the approving role of Table A-1 for the process with an
/// unexpired grant, and not be the requester. Each operator counts once. The count must reach what
/// `policy` requires for the process: `AtLeast(0)` is refused, and zero is accepted only through
/// [`QuorumPolicy::NoneRequired`], which applies to signing only.
pub fn verify_quorum(
    registry: &OperatorRegistry,
    subject: &ApprovalSubject,
    approvals: &[Approval],
    policy: QuorumPolicy,
    requester: &str,
    now_ms: i64,
) -> Result<VerifiedQuorum, ApprovalError> {
    let required = policy.required(subject.process)?;
    if approvals.len() > APPROVALS_PER_REQUEST_MAX {
        return Err(ApprovalError::TooManyApprovals { count: approvals.len() });
    }
    let message = approval_message(subject, Decision::Approve)?;
    let mut approvers: Vec<String> = Vec::new();
    let mut not_counted = Vec::new();
    for approval in approvals {
        if approval.operator_id == requester {
            return Err(OperatorError::SelfApproval { operator: approval.operator_id.clone() }.into());
        }
        let signature = parse_signature(approval)?;
        let Some(registered) = registry.get(&approval.operator_id) else {
            // Without a key there is nothing to verify; an unknown operator's approval simply does not count.
            not_counted.push(NotCounted { operator_id: approval.operator_id.clone(), reason: "not registered".into() });
            continue;
        };
        // Verified before any role check: a forged approval refuses the request even when the claimed
        // operator is revoked, so tampering is never silently skipped.
        registered
            .approval_key
            .verify_strict(&message, &signature)
            .map_err(|_| ApprovalError::BadSignature { operator: approval.operator_id.clone() })?;
        if let Err(e) = check_approver(&registered.operator, subject.process, requester, now_ms) {
            not_counted.push(NotCounted { operator_id: approval.operator_id.clone(), reason: e.to_string() });
            continue;
        }
        if !approvers.contains(&approval.operator_id) {
            approvers.push(approval.operator_id.clone());
        }
    }
    if approvers.len() < usize::from(required) {
        return Err(ApprovalError::QuorumNotMet { required, counted: approvers.len(), not_counted });
    }
    Ok(VerifiedQuorum { subject: subject.clone(), required, approvers, not_counted })
}

#[cfg(test)]
pub(crate) mod tests {
    use kinko_core::operators::{Process, Role};

    use super::*;

    const NOW_MS: i64 = 1_700_000_000_000;

    pub(crate) fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    /// Administrators a1 (key 100) and a2 (key 101).
    const A1: u8 = 100;
    const A2: u8 = 101;

    /// A change at the registry's next position, requested by `by`.
    pub(crate) fn next_change(r: &OperatorRegistry, by: &str, at_ms: i64, kind: RegistryChangeKind) -> RegistryChange {
        let (seq, prev_hash) = r.head().map(|(s, h)| (s + 1, h)).unwrap_or((0, [0; 32]));
        RegistryChange { seq, prev_hash, requested_by: by.into(), requested_at_ms: at_ms, change: kind }
    }

    pub(crate) fn add_kind(id: &str, seed: u8, role: Role, expires_at_ms: Option<i64>) -> RegistryChangeKind {
        RegistryChangeKind::AddOperator {
            operator_id: id.into(),
            approval_public_key_hex: hex::encode(key(seed).verifying_key().as_bytes()),
            role,
            expires_at_ms,
        }
    }

    pub(crate) fn sign_change(change: &RegistryChange, signers: &[(u8, &str)]) -> Vec<Approval> {
        let subject = change.subject().unwrap();
        signers.iter().map(|(seed, id)| sign_approval(&key(*seed), id, &subject, Decision::Approve).unwrap()).collect()
    }

    /// The log that builds the standard test registry: genesis a1, bootstrap a2, then signing managers
    /// m1..m3 (keys 1..3), signing operator so (key 10), operations manager om (key 11), each requested by
    /// a1 and approved by a2.
    pub(crate) fn standard_log(at_ms: i64) -> Vec<LoggedChange> {
        let mut r = OperatorRegistry::new();
        let mut log = Vec::new();
        let mut push = |r: &mut OperatorRegistry, kind: RegistryChangeKind, signers: &[(u8, &str)]| {
            let change = next_change(r, "a1", at_ms, kind);
            let approvals = sign_change(&change, signers);
            r.apply_change(&change, &approvals, at_ms).unwrap();
            log.push(LoggedChange { change, approvals, applied_at_ms: at_ms });
        };
        push(&mut r, add_kind("a1", A1, Role::Administrator, None), &[(A1, "a1")]);
        push(&mut r, add_kind("a2", A2, Role::Administrator, None), &[(A1, "a1")]);
        for (seed, id, role) in [
            (1, "m1", Role::SigningManager),
            (2, "m2", Role::SigningManager),
            (3, "m3", Role::SigningManager),
            (10, "so", Role::SigningOperator),
            (11, "om", Role::OperationsManager),
        ] {
            push(&mut r, add_kind(id, seed, role, None), &[(A1, "a1"), (A2, "a2")]);
        }
        log
    }

    fn registry() -> OperatorRegistry {
        OperatorRegistry::replay(&standard_log(NOW_MS), NOW_MS).unwrap()
    }

    /// Applies a change requested by a1 and approved by a2.
    fn apply(r: &mut OperatorRegistry, kind: RegistryChangeKind, at_ms: i64) -> Result<(), ApprovalError> {
        let change = next_change(r, "a1", at_ms, kind);
        let approvals = sign_change(&change, &[(A1, "a1"), (A2, "a2")]);
        r.apply_change(&change, &approvals, at_ms)
    }

    fn subject() -> ApprovalSubject {
        ApprovalSubject::new(Process::Signing, "w-42", [9; 32]).unwrap()
    }

    fn approve(seed: u8, id: &str, subject: &ApprovalSubject) -> Approval {
        sign_approval(&key(seed), id, subject, Decision::Approve).unwrap()
    }

    fn quorum_not_met(r: Result<VerifiedQuorum, ApprovalError>) -> (u8, usize) {
        match r {
            Err(ApprovalError::QuorumNotMet { required, counted, .. }) => (required, counted),
            other => panic!("expected QuorumNotMet, got {other:?}"),
        }
    }

    #[test]
    fn o2_m_minus_one_valid_approvals_refused_m_accepted() {
        let (r, s) = (registry(), subject());
        let two = [approve(1, "m1", &s), approve(2, "m2", &s)];
        let got = verify_quorum(&r, &s, &two[..1], QuorumPolicy::AtLeast(2), "pipeline", NOW_MS);
        assert_eq!(quorum_not_met(got), (2, 1));
        let ok = verify_quorum(&r, &s, &two, QuorumPolicy::AtLeast(2), "pipeline", NOW_MS).unwrap();
        assert_eq!(ok.approvers, vec!["m1".to_string(), "m2".to_string()]);
        assert_eq!(ok.required, 2);
    }

    #[test]
    fn o2_duplicate_approvals_from_one_operator_count_once() {
        let (r, s) = (registry(), subject());
        let twice = [approve(1, "m1", &s), approve(1, "m1", &s)];
        assert_eq!(quorum_not_met(verify_quorum(&r, &s, &twice, QuorumPolicy::AtLeast(2), "p", NOW_MS)), (2, 1));
    }

    #[test]
    fn k12_signature_over_other_intent_process_or_request_refused() {
        let (r, s) = (registry(), subject());
        let others = [
            ApprovalSubject { intent_hash: [8; 32], ..s.clone() },
            ApprovalSubject { process: Process::Activation, ..s.clone() },
            ApprovalSubject { request_id: "w-43".into(), ..s.clone() },
        ];
        for other in others {
            let got = verify_quorum(&r, &s, &[approve(1, "m1", &other)], QuorumPolicy::AtLeast(1), "p", NOW_MS);
            assert!(matches!(got, Err(ApprovalError::BadSignature { .. })), "{other:?}: {got:?}");
        }
        // A reject decision is not an approval.
        let reject = sign_approval(&key(1), "m1", &s, Decision::Reject).unwrap();
        let got = verify_quorum(&r, &s, &[reject], QuorumPolicy::AtLeast(1), "p", NOW_MS);
        assert!(matches!(got, Err(ApprovalError::BadSignature { .. })), "{got:?}");
        // Signed by someone else's key under m1's name.
        let got = verify_quorum(&r, &s, &[approve(2, "m1", &s)], QuorumPolicy::AtLeast(1), "p", NOW_MS);
        assert!(matches!(got, Err(ApprovalError::BadSignature { .. })), "{got:?}");
        let malformed = Approval { operator_id: "m1".into(), signature_hex: "zz".into() };
        let got = verify_quorum(&r, &s, &[malformed], QuorumPolicy::AtLeast(1), "p", NOW_MS);
        assert!(matches!(got, Err(ApprovalError::MalformedSignature { .. })), "{got:?}");
    }

    #[test]
    fn k11_required_zero_without_the_explicit_marker_refused() {
        let (r, s) = (registry(), subject());
        let got = verify_quorum(&r, &s, &[], QuorumPolicy::AtLeast(0), "p", NOW_MS);
        assert!(matches!(got, Err(ApprovalError::Operator(OperatorError::QuorumZero { .. }))), "{got:?}");
        let ok = verify_quorum(&r, &s, &[], QuorumPolicy::NoneRequired, "p", NOW_MS).unwrap();
        assert!(ok.approvers.is_empty());
        // The marker is for signing only: key processes always need approval (K11).
        let gen_subject = ApprovalSubject { process: Process::KeyGeneration, ..s };
        let got = verify_quorum(&r, &gen_subject, &[], QuorumPolicy::NoneRequired, "p", NOW_MS);
        assert!(matches!(got, Err(ApprovalError::Operator(OperatorError::NoneRequiredNotAllowed { .. }))), "{got:?}");
    }

    #[test]
    fn o2_self_approval_refused_by_the_signer() {
        let (r, s) = (registry(), subject());
        let got = verify_quorum(&r, &s, &[approve(1, "m1", &s)], QuorumPolicy::AtLeast(1), "m1", NOW_MS);
        assert!(matches!(got, Err(ApprovalError::Operator(OperatorError::SelfApproval { .. }))), "{got:?}");
    }

    #[test]
    fn k8_wrong_role_approvals_do_not_count() {
        let (r, s) = (registry(), subject());
        // The signing operator executes signing and the operations manager approves key processes:
        // neither may approve signing (Table A-1). Nor may an administrator.
        let approvals = [approve(10, "so", &s), approve(11, "om", &s), approve(A1, "a1", &s)];
        let got = verify_quorum(&r, &s, &approvals, QuorumPolicy::AtLeast(1), "p", NOW_MS);
        match got {
            Err(ApprovalError::QuorumNotMet { counted: 0, not_counted, .. }) => assert_eq!(not_counted.len(), 3),
            other => panic!("{other:?}"),
        }
        // The operations manager does count for key generation.
        let gen_subject = ApprovalSubject { process: Process::KeyGeneration, ..s };
        let ok =
            verify_quorum(&r, &gen_subject, &[approve(11, "om", &gen_subject)], QuorumPolicy::AtLeast(1), "ko", NOW_MS);
        assert_eq!(ok.unwrap().approvers, vec!["om".to_string()]);
    }

    #[test]
    fn k8_expired_grant_refused_by_the_signer() {
        let mut r = registry();
        apply(&mut r, add_kind("m4", 4, Role::SigningManager, Some(NOW_MS + 1_000)), NOW_MS).unwrap();
        let s = subject();
        let approvals = [approve(4, "m4", &s)];
        assert!(verify_quorum(&r, &s, &approvals, QuorumPolicy::AtLeast(1), "p", NOW_MS).is_ok());
        let got = verify_quorum(&r, &s, &approvals, QuorumPolicy::AtLeast(1), "p", NOW_MS + 1_000);
        assert_eq!(quorum_not_met(got), (1, 0));
    }

    #[test]
    fn o2_revoked_operators_earlier_approvals_stop_counting() {
        let s = subject();
        let approvals = [approve(1, "m1", &s), approve(2, "m2", &s)];
        let mut r = registry();
        assert!(verify_quorum(&r, &s, &approvals, QuorumPolicy::AtLeast(2), "p", NOW_MS).is_ok());
        // The same signatures, made before the revocation, presented after it.
        apply(&mut r, RegistryChangeKind::RevokeOperator { operator_id: "m1".into() }, NOW_MS).unwrap();
        let got = verify_quorum(&r, &s, &approvals, QuorumPolicy::AtLeast(2), "p", NOW_MS);
        assert_eq!(quorum_not_met(got), (2, 1));
        assert!(verify_quorum(&r, &s, &approvals, QuorumPolicy::AtLeast(1), "p", NOW_MS).is_ok());
    }

    #[test]
    fn o2_unknown_operator_does_not_count() {
        let (r, s) = (registry(), subject());
        let got = verify_quorum(&r, &s, &[approve(7, "stranger", &s)], QuorumPolicy::AtLeast(1), "p", NOW_MS);
        assert_eq!(quorum_not_met(got), (1, 0));
    }

    #[test]
    fn o4_genesis_is_signed_by_the_key_it_registers() {
        let mut r = OperatorRegistry::new();
        let genesis = next_change(&r, "a1", NOW_MS, add_kind("a1", A1, Role::Administrator, None));
        // Signed with another key than the one registered: refused, nothing applied.
        let forged = sign_change(&genesis, &[(A2, "a1")]);
        let got = r.apply_change(&genesis, &forged, NOW_MS);
        assert!(matches!(got, Err(ApprovalError::BadSignature { .. })), "{got:?}");
        // Unsigned: the requester did not sign.
        let got = r.apply_change(&genesis, &[], NOW_MS);
        assert!(matches!(got, Err(ApprovalError::Change(RegistryError::RequesterDidNotSign { .. }))), "{got:?}");
        assert!(r.head().is_none() && r.is_empty());
        r.apply_change(&genesis, &sign_change(&genesis, &[(A1, "a1")]), NOW_MS).unwrap();
        assert_eq!(r.head().map(|(seq, _)| seq), Some(0));
        assert_eq!(r.get("a1").unwrap().approval_key, key(A1).verifying_key());
    }

    #[test]
    fn k8_registry_change_with_a_forged_signature_refused_whole() {
        let mut r = registry();
        let change = next_change(&r, "a1", NOW_MS, add_kind("m5", 5, Role::SigningManager, None));
        // a2's approval forged with m1's key: even with a valid requester signature the change is refused,
        // and a forged signature is not merely "not counted".
        let mut approvals = sign_change(&change, &[(A1, "a1")]);
        approvals.push(sign_change(&change, &[(1, "a2")]).remove(0));
        let head = r.head();
        let got = r.apply_change(&change, &approvals, NOW_MS);
        assert!(matches!(got, Err(ApprovalError::BadSignature { ref operator }) if operator == "a2"), "{got:?}");
        let malformed = vec![
            sign_change(&change, &[(A1, "a1")]).remove(0),
            Approval { operator_id: "a2".into(), signature_hex: "00".into() },
        ];
        let got = r.apply_change(&change, &malformed, NOW_MS);
        assert!(matches!(got, Err(ApprovalError::MalformedSignature { .. })), "{got:?}");
        assert_eq!(r.head(), head, "a refused change leaves the registry as it was");
        assert!(r.get("m5").is_none());
    }

    #[test]
    fn k8_registry_change_needs_a_second_administrator_signature() {
        let mut r = registry();
        let change = next_change(&r, "a1", NOW_MS, add_kind("m5", 5, Role::SigningManager, None));
        let alone = sign_change(&change, &[(A1, "a1")]);
        let got = r.apply_change(&change, &alone, NOW_MS);
        assert!(matches!(got, Err(ApprovalError::Change(RegistryError::SecondAdministratorMissing { .. }))), "{got:?}");
        // A signing manager's valid signature is not a second administrator's.
        let with_manager = sign_change(&change, &[(A1, "a1"), (1, "m1")]);
        let got = r.apply_change(&change, &with_manager, NOW_MS);
        assert!(matches!(got, Err(ApprovalError::Change(RegistryError::SecondAdministratorMissing { .. }))), "{got:?}");
        r.apply_change(&change, &sign_change(&change, &[(A1, "a1"), (A2, "a2")]), NOW_MS).unwrap();
        assert!(r.get("m5").is_some());
    }

    #[test]
    fn o3_replay_of_a_tampered_log_refused() {
        let log = standard_log(NOW_MS);
        assert_eq!(OperatorRegistry::replay(&log, NOW_MS).unwrap().len(), 7);

        // An edited change (another key for m1): its hash changes, so the signatures no longer verify and
        // the next change's prev_hash no longer matches.
        let mut edited = log.clone();
        if let RegistryChangeKind::AddOperator { approval_public_key_hex, .. } = &mut edited[2].change.change {
            *approval_public_key_hex = hex::encode(key(66).verifying_key().as_bytes());
        }
        assert!(OperatorRegistry::replay(&edited, NOW_MS).is_err());

        // A dropped approval (only the requester's signature left).
        let mut dropped = log.clone();
        dropped[3].approvals.truncate(1);
        let got = OperatorRegistry::replay(&dropped, NOW_MS);
        assert!(matches!(got, Err(ApprovalError::Registry(ref m)) if m.contains("log entry 3")), "{got:?}");

        // A removed entry breaks the chain.
        let mut removed = log.clone();
        removed.remove(4);
        assert!(OperatorRegistry::replay(&removed, NOW_MS).is_err());

        // Application times going backwards or into the future.
        let mut backwards = log.clone();
        backwards[5].applied_at_ms = NOW_MS - 1;
        assert!(OperatorRegistry::replay(&backwards, NOW_MS).is_err());
        assert!(OperatorRegistry::replay(&log, NOW_MS - 1).is_err());
    }

    fn band(from: u128, approvals: u8) -> QuorumBand {
        QuorumBand { from: Amount::from_base_units(from), approvals }
    }

    fn quorum_config(class: PolicyClass, auto_max: Option<u128>, bands: Vec<QuorumBand>) -> SigningQuorumConfig {
        SigningQuorumConfig {
            key_id: "eth-hot-1".into(),
            asset: "ETH".into(),
            class,
            auto_max: auto_max.map(Amount::from_base_units),
            bands,
        }
    }

    fn field_of(got: Result<SigningQuorum, QuorumConfigError>) -> String {
        got.expect_err("the quorum config should be refused").field
    }

    #[test]
    fn k11_quorum_of_zero_or_below_the_class_minimum_refused_at_load() {
        let zero = quorum_config(PolicyClass::HotSmall, None, vec![band(0, 0)]);
        assert_eq!(field_of(SigningQuorum::from_configs(&[zero])), "signer.quorum[0].bands[0].approvals");
        let one_for_large = quorum_config(PolicyClass::HotLarge, None, vec![band(0, 2), band(100, 1)]);
        assert_eq!(field_of(SigningQuorum::from_configs(&[one_for_large])), "signer.quorum[0].bands[1].approvals");
        let two_for_cold = quorum_config(PolicyClass::Cold, None, vec![band(0, 2)]);
        assert_eq!(field_of(SigningQuorum::from_configs(&[two_for_cold])), "signer.quorum[0].bands[0].approvals");
        let auto_on_cold = quorum_config(PolicyClass::Cold, Some(1), vec![band(0, 3)]);
        assert_eq!(field_of(SigningQuorum::from_configs(&[auto_on_cold])), "signer.quorum[0].auto_max");
        let auto_on_key_op = quorum_config(PolicyClass::KeyOperation, Some(1), vec![band(0, 2)]);
        assert_eq!(field_of(SigningQuorum::from_configs(&[auto_on_key_op])), "signer.quorum[0].auto_max");
    }

    #[test]
    fn k11_quorum_band_shape_refused_at_load() {
        let none = quorum_config(PolicyClass::HotSmall, None, vec![]);
        assert_eq!(field_of(SigningQuorum::from_configs(&[none])), "signer.quorum[0].bands");
        let late_start = quorum_config(PolicyClass::HotSmall, None, vec![band(5, 1)]);
        assert_eq!(field_of(SigningQuorum::from_configs(&[late_start])), "signer.quorum[0].bands[0].from");
        let unordered = quorum_config(PolicyClass::HotSmall, None, vec![band(0, 1), band(10, 2), band(10, 3)]);
        assert_eq!(field_of(SigningQuorum::from_configs(&[unordered])), "signer.quorum[0].bands[2].from");
        let decreasing = quorum_config(PolicyClass::HotSmall, None, vec![band(0, 2), band(10, 1)]);
        assert_eq!(field_of(SigningQuorum::from_configs(&[decreasing])), "signer.quorum[0].bands[1].approvals");
        let ok = quorum_config(PolicyClass::HotSmall, None, vec![band(0, 1)]);
        assert_eq!(field_of(SigningQuorum::from_configs(&[ok.clone(), ok])), "signer.quorum[1].key_id");
        let json = r#"{"key_id":"k","asset":"ETH","class":"hot_small","bands":[{"from":"0","approvals":1}],"m":0}"#;
        assert!(serde_json::from_str::<SigningQuorumConfig>(json).is_err(), "unknown fields are refused");
    }

    #[test]
    fn k11_quorum_policy_by_amount_and_fail_closed_without_entry() {
        let config = quorum_config(PolicyClass::HotLarge, Some(100), vec![band(0, 2), band(1_000, 3)]);
        let q = SigningQuorum::from_configs(&[config]).unwrap();
        let at = |amount: u128| q.policy_for("eth-hot-1", "ETH", Amount::from_base_units(amount));
        assert_eq!(at(100).unwrap(), QuorumPolicy::NoneRequired);
        assert_eq!(at(101).unwrap(), QuorumPolicy::AtLeast(2));
        assert_eq!(at(999).unwrap(), QuorumPolicy::AtLeast(2));
        assert_eq!(at(1_000).unwrap(), QuorumPolicy::AtLeast(3));
        let got = q.policy_for("eth-hot-1", "USDC", Amount::from_base_units(1));
        assert!(matches!(got, Err(ApprovalError::NoQuorum { .. })), "{got:?}");
        let got = q.policy_for("eth-cold-1", "ETH", Amount::from_base_units(1));
        assert!(matches!(got, Err(ApprovalError::NoQuorum { .. })), "{got:?}");
        let dev = SigningQuorum::from_configs(&[SigningQuorumConfig::dev_default()]).unwrap();
        let ten_eth = Amount::from_base_units(10_000_000_000_000_000_000);
        assert_eq!(dev.policy_for("eth-hot-1", "ETH", ten_eth).unwrap(), QuorumPolicy::NoneRequired);
    }
}
