//! Approval verification in the signer (K8, K11, K12, O2, O3).
//!
//! The server collects approvals, but a compromised server could claim anything (edit an intent row to
//! read "approved", drop a revocation). So the signer checks the approvals itself: each is an Ed25519
//! signature, with the operator's personal approval key, over the canonical approval message of
//! `kinko_core::operators` (layout documented there), verified against the signer's *own*
//! [`OperatorRegistry`] and the quorum the caller's policy class demands. Role and separation-of-duties
//! rules are the same functions the rest of kinko uses (`kinko_core::operators::check_approver`).
//!
//! Where it will be called: [`crate::LocalSigner`]'s `sign_evm_inner`, after the key gate and before the
//! payload is decoded and checked against the intent, with the subject
//! `(Process::Signing, req.intent.id, req.intent.hash())`, `req.approvals`, the policy class's
//! [`QuorumPolicy`] and `req.actor` as requester; a refusal becomes `SignerError::Refused` and the
//! [`VerifiedQuorum`] goes into the key access log entry as the K12 evidence. That wiring, and loading
//! the registry at unseal (registry changes being approved operations themselves), is the next step; it
//! is not done here.
//!
//! Fail closed throughout: a malformed or forged signature refuses the whole request (it is evidence of
//! tampering, not a missing vote), a quorum of 0 needs the explicit [`QuorumPolicy::NoneRequired`]
//! marker, and a registry that gives one person two roles or shares one key between two operators does
//! not load.

use std::collections::BTreeMap;

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use kinko_core::operators::{
    APPROVALS_PER_REQUEST_MAX, ApprovalSubject, Decision, Grant, Operator, OperatorError, QuorumPolicy,
    approval_message, check_approver,
};
use serde::{Deserialize, Serialize};

use crate::Approval;

/// Bound on the operators one registry holds.
pub const REGISTRY_OPERATORS_MAX: usize = 1024;
/// Bound on the registry document read from configuration.
pub const REGISTRY_JSON_LEN_MAX: usize = 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApprovalError {
    #[error("operator registry: {0}")]
    Registry(String),
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

/// The registry document: `{"operators": [{"id", "approval_public_key_hex", "grants": [{"role",
/// "expires_at_ms"?, "revoked"?}], "revoked"?}]}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryFile {
    operators: Vec<RegistryFileEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryFileEntry {
    id: String,
    approval_public_key_hex: String,
    grants: Vec<Grant>,
    #[serde(default)]
    revoked: bool,
}

/// The signer's own operator registry: operator id → approval public key, grants, revoked flag. It is
/// deliberately separate from the server's operator tables, so editing those does not change what the
/// signer accepts.
#[derive(Clone, Debug, Default)]
pub struct OperatorRegistry {
    operators: BTreeMap<String, RegisteredOperator>,
}

impl OperatorRegistry {
    pub fn new() -> OperatorRegistry {
        OperatorRegistry::default()
    }

    /// Parses and validates a registry document (see [`RegistryFile`]'s shape in the type docs).
    pub fn from_json(json: &str, now_ms: i64) -> Result<OperatorRegistry, ApprovalError> {
        if json.len() > REGISTRY_JSON_LEN_MAX {
            return Err(ApprovalError::Registry("document exceeds REGISTRY_JSON_LEN_MAX".into()));
        }
        let file: RegistryFile = serde_json::from_str(json).map_err(|e| ApprovalError::Registry(e.to_string()))?;
        let mut registry = OperatorRegistry::new();
        for entry in file.operators {
            let key = parse_public_key(&entry.id, &entry.approval_public_key_hex)?;
            let operator = Operator { id: entry.id, grants: entry.grants, revoked: entry.revoked };
            registry.insert(operator, key, now_ms)?;
        }
        Ok(registry)
    }

    /// Adds one operator. Refused: a duplicate id, a key already registered to someone else (one
    /// person with two identities would count twice), a weak key, or a record holding two roles (K8).
    pub fn insert(&mut self, operator: Operator, approval_key: VerifyingKey, now_ms: i64) -> Result<(), ApprovalError> {
        operator.validate(now_ms)?;
        if self.operators.len() >= REGISTRY_OPERATORS_MAX {
            return Err(ApprovalError::Registry("exceeds REGISTRY_OPERATORS_MAX operators".into()));
        }
        if self.operators.contains_key(&operator.id) {
            return Err(ApprovalError::Registry(format!("operator {:?} is listed twice", operator.id)));
        }
        if approval_key.is_weak() {
            return Err(ApprovalError::Registry(format!("operator {:?}: approval key is a weak key", operator.id)));
        }
        if let Some(other) = self.operators.values().find(|o| o.approval_key == approval_key) {
            return Err(ApprovalError::Registry(format!(
                "operators {:?} and {:?} share one approval key",
                other.operator.id, operator.id
            )));
        }
        self.operators.insert(operator.id.clone(), RegisteredOperator { operator, approval_key });
        Ok(())
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

fn parse_public_key(operator: &str, hex_text: &str) -> Result<VerifyingKey, ApprovalError> {
    let bad = |what: &str| ApprovalError::Registry(format!("operator {operator:?}: approval_public_key_hex {what}"));
    let bytes = hex::decode(hex_text).map_err(|_| bad("is not hex"))?;
    let bytes: [u8; 32] = bytes.try_into().map_err(|_| bad("is not 32 bytes"))?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| bad("is not a valid Ed25519 point"))
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
mod tests {
    use kinko_core::operators::{Process, Role};

    use super::*;

    const NOW_MS: i64 = 1_700_000_000_000;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn operator(id: &str, role: Role) -> Operator {
        Operator { id: id.into(), grants: vec![Grant { role, expires_at_ms: None, revoked: false }], revoked: false }
    }

    /// Signing managers m1..m3 (keys 1..3), signing operator so (key 10), operations manager om (key 11).
    fn registry() -> OperatorRegistry {
        let mut r = OperatorRegistry::new();
        for (i, id) in ["m1", "m2", "m3"].iter().enumerate() {
            r.insert(operator(id, Role::SigningManager), key(i as u8 + 1).verifying_key(), NOW_MS).unwrap();
        }
        r.insert(operator("so", Role::SigningOperator), key(10).verifying_key(), NOW_MS).unwrap();
        r.insert(operator("om", Role::OperationsManager), key(11).verifying_key(), NOW_MS).unwrap();
        r
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
        // neither may approve signing (Table A-1).
        let approvals = [approve(10, "so", &s), approve(11, "om", &s)];
        let got = verify_quorum(&r, &s, &approvals, QuorumPolicy::AtLeast(1), "p", NOW_MS);
        match got {
            Err(ApprovalError::QuorumNotMet { counted: 0, not_counted, .. }) => assert_eq!(not_counted.len(), 2),
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
        let mut m4 = operator("m4", Role::SigningManager);
        m4.grants[0].expires_at_ms = Some(NOW_MS + 1_000);
        r.insert(m4, key(4).verifying_key(), NOW_MS).unwrap();
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
        assert!(verify_quorum(&registry(), &s, &approvals, QuorumPolicy::AtLeast(2), "p", NOW_MS).is_ok());
        // The same signatures, made before the revocation, presented after it.
        let json = registry_json(true);
        let revoked = OperatorRegistry::from_json(&json, NOW_MS).unwrap();
        let got = verify_quorum(&revoked, &s, &approvals, QuorumPolicy::AtLeast(2), "p", NOW_MS);
        assert_eq!(quorum_not_met(got), (2, 1));
        assert!(verify_quorum(&revoked, &s, &approvals, QuorumPolicy::AtLeast(1), "p", NOW_MS).is_ok());
    }

    fn registry_json(m1_revoked: bool) -> String {
        let entry = |id: &str, seed: u8, role: &str, revoked: bool| {
            serde_json::json!({
                "id": id,
                "approval_public_key_hex": hex::encode(key(seed).verifying_key().as_bytes()),
                "grants": [{"role": role}],
                "revoked": revoked,
            })
        };
        serde_json::json!({"operators": [
            entry("m1", 1, "signing_manager", m1_revoked),
            entry("m2", 2, "signing_manager", false),
        ]})
        .to_string()
    }

    #[test]
    fn k8_registry_refuses_two_roles_shared_keys_and_duplicates() {
        assert_eq!(OperatorRegistry::from_json(&registry_json(false), NOW_MS).unwrap().len(), 2);
        let two_roles = serde_json::json!({"operators": [{
            "id": "m1",
            "approval_public_key_hex": hex::encode(key(1).verifying_key().as_bytes()),
            "grants": [{"role": "signing_manager"}, {"role": "signing_operator"}],
        }]});
        let got = OperatorRegistry::from_json(&two_roles.to_string(), NOW_MS);
        assert!(matches!(got, Err(ApprovalError::Operator(OperatorError::RolesExclusive { .. }))), "{got:?}");

        let mut r = registry();
        let got = r.insert(operator("m9", Role::SigningManager), key(1).verifying_key(), NOW_MS);
        assert!(matches!(got, Err(ApprovalError::Registry(ref m)) if m.contains("share one approval key")), "{got:?}");
        let got = r.insert(operator("m1", Role::SigningManager), key(9).verifying_key(), NOW_MS);
        assert!(matches!(got, Err(ApprovalError::Registry(ref m)) if m.contains("twice")), "{got:?}");

        let unknown_field = r#"{"operators": [], "quorum": 0}"#;
        assert!(OperatorRegistry::from_json(unknown_field, NOW_MS).is_err());
        let short_key = r#"{"operators": [{"id": "x", "approval_public_key_hex": "abcd", "grants": []}]}"#;
        assert!(matches!(OperatorRegistry::from_json(short_key, NOW_MS), Err(ApprovalError::Registry(_))));
    }

    #[test]
    fn o2_unknown_operator_does_not_count() {
        let (r, s) = (registry(), subject());
        let got = verify_quorum(&r, &s, &[approve(7, "stranger", &s)], QuorumPolicy::AtLeast(1), "p", NOW_MS);
        assert_eq!(quorum_not_met(got), (1, 0));
    }
}
