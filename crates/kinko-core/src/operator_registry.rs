//! The operator registry as an approved, hash-chained log of changes (K8, O3, O4).
//!
//! Who may approve what is decided by the registry (operator → approval key, grants, revoked flag). If the
//! registry were a table the server could edit, a compromised server could add itself an approver. So the
//! registry is a log of [`RegistryChange`]s: each names its position (`seq`) and the hash of the change before
//! it, and is signed by two administrators (the one who asks and a second one who approves). The signer
//! replays the log and verifies every signature before it believes any of it; the server keeps a copy for
//! its own checks and for the console, but the signer's copy is the one that counts for signing.
//!
//! Rules ([`RegistryState::apply`]):
//! - `seq` is the next position and `prev_hash` the hash of the last change (all zeros for the first);
//! - the first change (genesis, written by `kinko init`) adds the first administrator and is signed by that
//!   administrator's own key: the one-time bootstrap;
//! - every later change is requested by an active administrator, who signs it, and approved by at least one
//!   *other* active administrator; the one exception is bootstrap: while there is exactly one active
//!   administrator, that administrator may add a second administrator alone (there is nobody else yet);
//! - the last active administrator cannot be revoked (nobody could manage people afterwards);
//! - one person holds one role (K8): a grant that would give an operator a second active role is refused,
//!   and one approval key belongs to one operator.
//!
//! # Canonical encoding (version 1)
//!
//! ```text
//! b"kinko-registry-change-v1"   24 bytes
//! seq                            u64 big-endian
//! prev_hash                      32 bytes
//! requested_at_ms                i64 big-endian
//! requested_by                   u8 length, UTF-8 bytes
//! kind                           u8: 1 add operator, 2 grant, 3 revoke grant, 4 revoke operator
//! operator_id                    u8 length, UTF-8 bytes
//! add operator:   public key 32 bytes, role u8 (Role::code), expiry
//! grant:          role u8, expiry
//! revoke grant:   role u8
//! revoke operator: nothing more
//! expiry                         u8 0 (none) or 1 followed by i64 big-endian ms
//! ```
//!
//! [`RegistryChange::hash`] is SHA-256 of these bytes. Approvals of a change are ordinary approval signatures
//! (`operators::approval_message`) over the subject `(Process::Personnel, "registry-<seq>", hash)`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::operators::{ApprovalSubject, Grant, Operator, OperatorError, Process, REQUEST_ID_LEN_MAX, Role};

/// Domain tag at the start of every encoded registry change.
pub const REGISTRY_CHANGE_DOMAIN: &[u8] = b"kinko-registry-change-v1";
/// Bound on the registry log; far above any custodian's staff turnover, but finite.
pub const REGISTRY_LOG_LEN_MAX: u64 = 1_000_000;

/// What one change does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum RegistryChangeKind {
    /// Registers a person with their approval public key (generated on their own terminal by `kinko
    /// operator keygen`) and their one role.
    AddOperator {
        operator_id: String,
        approval_public_key_hex: String,
        role: Role,
        #[serde(default)]
        expires_at_ms: Option<i64>,
    },
    /// Grants a role to a registered operator (who holds no other active role).
    Grant {
        operator_id: String,
        role: Role,
        #[serde(default)]
        expires_at_ms: Option<i64>,
    },
    /// Revokes the operator's active grants of `role`.
    RevokeGrant { operator_id: String, role: Role },
    /// Revokes the operator altogether: their earlier approvals stop counting everywhere.
    RevokeOperator { operator_id: String },
}

impl RegistryChangeKind {
    pub fn operator_id(&self) -> &str {
        match self {
            RegistryChangeKind::AddOperator { operator_id, .. }
            | RegistryChangeKind::Grant { operator_id, .. }
            | RegistryChangeKind::RevokeGrant { operator_id, .. }
            | RegistryChangeKind::RevokeOperator { operator_id } => operator_id,
        }
    }

    fn code(&self) -> u8 {
        match self {
            RegistryChangeKind::AddOperator { .. } => 1,
            RegistryChangeKind::Grant { .. } => 2,
            RegistryChangeKind::RevokeGrant { .. } => 3,
            RegistryChangeKind::RevokeOperator { .. } => 4,
        }
    }
}

/// One entry of the registry log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryChange {
    pub seq: u64,
    #[serde(with = "hex32")]
    pub prev_hash: [u8; 32],
    pub requested_by: String,
    pub requested_at_ms: i64,
    pub change: RegistryChangeKind,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("{field} {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("change seq {got} is out of order: the log's next position is {expected}")]
    OutOfOrder { expected: u64, got: u64 },
    #[error("change {seq}: prev_hash does not match the hash of change {previous}")]
    BrokenChain { seq: u64, previous: u64 },
    #[error("change {seq}: the requester {requester:?} did not sign it")]
    RequesterDidNotSign { seq: u64, requester: String },
    #[error("change {seq}: {requester:?} is not an active administrator")]
    RequesterNotAdministrator { seq: u64, requester: String },
    #[error("change {seq}: needs the approval of a second active administrator (counted: {counted})")]
    SecondAdministratorMissing { seq: u64, counted: usize },
    #[error("change {seq}: the first change must add the first administrator, requested and signed by themselves")]
    BadGenesis { seq: u64 },
    #[error("change {seq}: operator {operator:?} {reason}")]
    Operator { seq: u64, operator: String, reason: String },
    #[error(transparent)]
    Rule(#[from] OperatorError),
}

impl RegistryChange {
    /// The canonical bytes (layout in the module docs).
    pub fn encode(&self) -> Result<Vec<u8>, RegistryError> {
        let mut out = Vec::with_capacity(160);
        out.extend_from_slice(REGISTRY_CHANGE_DOMAIN);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.prev_hash);
        out.extend_from_slice(&self.requested_at_ms.to_be_bytes());
        push_str(&mut out, "requested_by", &self.requested_by)?;
        out.push(self.change.code());
        push_str(&mut out, "operator_id", self.change.operator_id())?;
        match &self.change {
            RegistryChangeKind::AddOperator { approval_public_key_hex, role, expires_at_ms, .. } => {
                out.extend_from_slice(&parse_public_key_hex(approval_public_key_hex)?);
                out.push(role.code());
                push_expiry(&mut out, *expires_at_ms);
            }
            RegistryChangeKind::Grant { role, expires_at_ms, .. } => {
                out.push(role.code());
                push_expiry(&mut out, *expires_at_ms);
            }
            RegistryChangeKind::RevokeGrant { role, .. } => out.push(role.code()),
            RegistryChangeKind::RevokeOperator { .. } => {}
        }
        Ok(out)
    }

    pub fn hash(&self) -> Result<[u8; 32], RegistryError> {
        Ok(Sha256::digest(self.encode()?).into())
    }

    /// The request id under which the change is approved.
    pub fn request_id(&self) -> String {
        format!("registry-{}", self.seq)
    }

    /// What administrators sign to request or approve this change.
    pub fn subject(&self) -> Result<ApprovalSubject, RegistryError> {
        Ok(ApprovalSubject::new(Process::Personnel, &self.request_id(), self.hash()?)?)
    }
}

fn push_str(out: &mut Vec<u8>, field: &'static str, s: &str) -> Result<(), RegistryError> {
    if s.is_empty() || s.len() > REQUEST_ID_LEN_MAX {
        return Err(RegistryError::Invalid { field, reason: format!("must be 1 to {REQUEST_ID_LEN_MAX} bytes") });
    }
    if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(RegistryError::Invalid {
            field,
            reason: "must not contain whitespace or control characters".into(),
        });
    }
    out.push(s.len() as u8);
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

fn push_expiry(out: &mut Vec<u8>, expires_at_ms: Option<i64>) {
    match expires_at_ms {
        None => out.push(0),
        Some(ms) => {
            out.push(1);
            out.extend_from_slice(&ms.to_be_bytes());
        }
    }
}

/// Parses a 32-byte public key in hex (case-insensitive). The curve check is the signer's (it holds the
/// Ed25519 library); here only the shape.
pub fn parse_public_key_hex(hex_text: &str) -> Result<[u8; 32], RegistryError> {
    let bad = |reason: &str| RegistryError::Invalid { field: "approval_public_key_hex", reason: reason.into() };
    let bytes = hex::decode(hex_text).map_err(|_| bad("is not hex"))?;
    bytes.try_into().map_err(|_| bad("is not 32 bytes"))
}

/// One operator in the replayed registry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryEntry {
    pub operator: Operator,
    pub approval_public_key: [u8; 32],
}

/// The registry as replayed from its log: the pure state both the server and the signer compute. The caller
/// verifies the signatures and passes the ids whose signatures verified (`signers`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegistryState {
    entries: BTreeMap<String, RegistryEntry>,
    /// (seq, hash) of the last applied change.
    head: Option<(u64, [u8; 32])>,
}

impl RegistryState {
    pub fn new() -> RegistryState {
        RegistryState::default()
    }

    /// The next change's `seq` and `prev_hash`.
    pub fn next_position(&self) -> (u64, [u8; 32]) {
        match self.head {
            None => (0, [0; 32]),
            Some((seq, hash)) => (seq + 1, hash),
        }
    }

    pub fn head(&self) -> Option<(u64, [u8; 32])> {
        self.head
    }

    pub fn get(&self, operator_id: &str) -> Option<&RegistryEntry> {
        self.entries.get(operator_id)
    }

    pub fn entries(&self) -> impl Iterator<Item = &RegistryEntry> {
        self.entries.values()
    }

    /// The operators, for `operators::Request::valid_approvals` and the like.
    pub fn operators(&self) -> Vec<Operator> {
        self.entries.values().map(|e| e.operator.clone()).collect()
    }

    fn active_administrators(&self, now_ms: i64) -> Vec<&str> {
        self.entries
            .values()
            .filter(|e| !e.operator.revoked && e.operator.active_roles(now_ms).contains(&Role::Administrator))
            .map(|e| e.operator.id.as_str())
            .collect()
    }

    /// Checks `change` against the log and the rules (module docs) and applies it. `signers` are the operator
    /// ids whose Ed25519 signatures over [`RegistryChange::subject`] the caller has verified with the keys this
    /// state holds (for genesis: with the key the change itself registers). Nothing changes on error.
    pub fn apply(&mut self, change: &RegistryChange, signers: &[String], now_ms: i64) -> Result<(), RegistryError> {
        let (expected_seq, expected_prev) = self.next_position();
        if change.seq != expected_seq {
            return Err(RegistryError::OutOfOrder { expected: expected_seq, got: change.seq });
        }
        if change.seq >= REGISTRY_LOG_LEN_MAX {
            return Err(RegistryError::Invalid { field: "seq", reason: "exceeds REGISTRY_LOG_LEN_MAX".into() });
        }
        if change.prev_hash != expected_prev {
            return Err(RegistryError::BrokenChain { seq: change.seq, previous: expected_seq.saturating_sub(1) });
        }
        let hash = change.hash()?;
        let seq = change.seq;
        if !signers.contains(&change.requested_by) {
            return Err(RegistryError::RequesterDidNotSign { seq, requester: change.requested_by.clone() });
        }
        let mut next = self.entries.clone();
        if self.head.is_none() {
            match &change.change {
                RegistryChangeKind::AddOperator { operator_id, role: Role::Administrator, .. }
                    if *operator_id == change.requested_by => {}
                _ => return Err(RegistryError::BadGenesis { seq }),
            }
        } else {
            let admins = self.active_administrators(now_ms);
            if !admins.contains(&change.requested_by.as_str()) {
                return Err(RegistryError::RequesterNotAdministrator { seq, requester: change.requested_by.clone() });
            }
            let seconds = signers.iter().filter(|s| **s != change.requested_by && admins.contains(&s.as_str())).count();
            let bootstrap = admins.len() == 1
                && matches!(change.change, RegistryChangeKind::AddOperator { role: Role::Administrator, .. });
            if seconds == 0 && !bootstrap {
                return Err(RegistryError::SecondAdministratorMissing { seq, counted: seconds });
            }
        }
        let operator_error = |operator: &str, reason: &str| RegistryError::Operator {
            seq,
            operator: operator.to_owned(),
            reason: reason.to_owned(),
        };
        match &change.change {
            RegistryChangeKind::AddOperator { operator_id, approval_public_key_hex, role, expires_at_ms } => {
                let key = parse_public_key_hex(approval_public_key_hex)?;
                if next.contains_key(operator_id) {
                    return Err(operator_error(operator_id, "is already registered"));
                }
                if next.values().any(|e| e.approval_public_key == key) {
                    return Err(operator_error(operator_id, "has an approval key already registered to someone else"));
                }
                check_expiry(seq, operator_id, *expires_at_ms, change.requested_at_ms)?;
                let operator = Operator {
                    id: operator_id.clone(),
                    grants: vec![Grant { role: *role, expires_at_ms: *expires_at_ms, revoked: false }],
                    revoked: false,
                };
                operator.validate(now_ms)?;
                next.insert(operator_id.clone(), RegistryEntry { operator, approval_public_key: key });
            }
            RegistryChangeKind::Grant { operator_id, role, expires_at_ms } => {
                check_expiry(seq, operator_id, *expires_at_ms, change.requested_at_ms)?;
                let entry =
                    next.get_mut(operator_id).ok_or_else(|| operator_error(operator_id, "is not registered"))?;
                if entry.operator.revoked {
                    return Err(operator_error(operator_id, "is revoked"));
                }
                entry.operator.grants.push(Grant { role: *role, expires_at_ms: *expires_at_ms, revoked: false });
                // One person, one role (K8): a second active role is refused here, not discovered later.
                crate::operators::check_grant(&entry.operator, *role, now_ms)?;
            }
            RegistryChangeKind::RevokeGrant { operator_id, role } => {
                let entry =
                    next.get_mut(operator_id).ok_or_else(|| operator_error(operator_id, "is not registered"))?;
                let mut revoked_any = false;
                for grant in entry.operator.grants.iter_mut().filter(|g| g.role == *role && !g.revoked) {
                    grant.revoked = true;
                    revoked_any = true;
                }
                if !revoked_any {
                    return Err(operator_error(operator_id, "holds no such grant"));
                }
            }
            RegistryChangeKind::RevokeOperator { operator_id } => {
                let entry =
                    next.get_mut(operator_id).ok_or_else(|| operator_error(operator_id, "is not registered"))?;
                if entry.operator.revoked {
                    return Err(operator_error(operator_id, "is already revoked"));
                }
                entry.operator.revoked = true;
            }
        }
        let remaining = RegistryState { entries: next.clone(), head: None };
        if self.head.is_some() && remaining.active_administrators(now_ms).is_empty() {
            return Err(operator_error(change.change.operator_id(), "is the last active administrator"));
        }
        self.entries = next;
        self.head = Some((seq, hash));
        Ok(())
    }
}

fn check_expiry(seq: u64, operator: &str, expires_at_ms: Option<i64>, at_ms: i64) -> Result<(), RegistryError> {
    match expires_at_ms {
        Some(end) if end <= at_ms => Err(RegistryError::Operator {
            seq,
            operator: operator.to_owned(),
            reason: "grant would expire before it is made".into(),
        }),
        _ => Ok(()),
    }
}

mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let text = String::deserialize(d)?;
        let bytes = hex::decode(&text).map_err(serde::de::Error::custom)?;
        bytes.try_into().map_err(|_| serde::de::Error::custom("expected 32 bytes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW_MS: i64 = 1_700_000_000_000;

    fn change(state: &RegistryState, by: &str, kind: RegistryChangeKind) -> RegistryChange {
        let (seq, prev_hash) = state.next_position();
        RegistryChange { seq, prev_hash, requested_by: by.into(), requested_at_ms: NOW_MS, change: kind }
    }

    fn add(id: &str, key: u8, role: Role) -> RegistryChangeKind {
        RegistryChangeKind::AddOperator {
            operator_id: id.into(),
            approval_public_key_hex: hex::encode([key; 32]),
            role,
            expires_at_ms: None,
        }
    }

    fn s(ids: &[&str]) -> Vec<String> {
        ids.iter().map(|x| x.to_string()).collect()
    }

    fn bootstrapped() -> RegistryState {
        let mut state = RegistryState::new();
        let genesis = change(&state, "admin1", add("admin1", 1, Role::Administrator));
        state.apply(&genesis, &s(&["admin1"]), NOW_MS).unwrap();
        let second = change(&state, "admin1", add("admin2", 2, Role::Administrator));
        state.apply(&second, &s(&["admin1"]), NOW_MS).unwrap();
        state
    }

    #[test]
    fn o4_genesis_adds_the_first_administrator_only() {
        let mut state = RegistryState::new();
        let not_admin = change(&state, "x", add("x", 1, Role::SigningManager));
        assert!(matches!(state.apply(&not_admin, &s(&["x"]), NOW_MS), Err(RegistryError::BadGenesis { .. })));
        let other = change(&state, "a", add("b", 1, Role::Administrator));
        assert!(matches!(state.apply(&other, &s(&["a"]), NOW_MS), Err(RegistryError::BadGenesis { .. })));
        assert_eq!(state, RegistryState::new(), "a refused change leaves nothing behind");
    }

    #[test]
    fn k8_grants_need_a_second_administrator_after_bootstrap() {
        let mut state = bootstrapped();
        let add_sm = change(&state, "admin1", add("sm", 3, Role::SigningManager));
        let got = state.apply(&add_sm, &s(&["admin1"]), NOW_MS);
        assert!(matches!(got, Err(RegistryError::SecondAdministratorMissing { .. })), "{got:?}");
        // A non-administrator's signature is not a second administrator.
        let got = state.apply(&add_sm, &s(&["admin1", "sm"]), NOW_MS);
        assert!(matches!(got, Err(RegistryError::SecondAdministratorMissing { .. })), "{got:?}");
        // Someone else's approval does not stand in for the requester's own signature.
        let got = state.apply(&add_sm, &s(&["admin2"]), NOW_MS);
        assert!(matches!(got, Err(RegistryError::RequesterDidNotSign { .. })), "{got:?}");
        state.apply(&add_sm, &s(&["admin1", "admin2"]), NOW_MS).unwrap();
        assert_eq!(state.get("sm").unwrap().operator.active_roles(NOW_MS), vec![Role::SigningManager]);
    }

    #[test]
    fn k8_second_role_for_one_person_is_refused() {
        let mut state = bootstrapped();
        state
            .apply(&change(&state, "admin1", add("sm", 3, Role::SigningManager)), &s(&["admin1", "admin2"]), NOW_MS)
            .unwrap();
        let grant = change(
            &state,
            "admin1",
            RegistryChangeKind::Grant { operator_id: "sm".into(), role: Role::SigningOperator, expires_at_ms: None },
        );
        let got = state.apply(&grant, &s(&["admin1", "admin2"]), NOW_MS);
        assert!(matches!(got, Err(RegistryError::Rule(OperatorError::RolesExclusive { .. }))), "{got:?}");
    }

    #[test]
    fn o3_chain_is_checked_and_keys_are_unique() {
        let mut state = bootstrapped();
        let mut bad = change(&state, "admin1", add("sm", 3, Role::SigningManager));
        bad.prev_hash = [9; 32];
        assert!(matches!(state.apply(&bad, &s(&["admin1", "admin2"]), NOW_MS), Err(RegistryError::BrokenChain { .. })));
        let mut late = change(&state, "admin1", add("sm", 3, Role::SigningManager));
        late.seq += 1;
        assert!(matches!(state.apply(&late, &s(&["admin1", "admin2"]), NOW_MS), Err(RegistryError::OutOfOrder { .. })));
        let reused = change(&state, "admin1", add("sm", 1, Role::SigningManager));
        assert!(matches!(state.apply(&reused, &s(&["admin1", "admin2"]), NOW_MS), Err(RegistryError::Operator { .. })));
    }

    #[test]
    fn k8_last_administrator_cannot_be_revoked() {
        let mut state = bootstrapped();
        let revoke = change(&state, "admin1", RegistryChangeKind::RevokeOperator { operator_id: "admin2".into() });
        state.apply(&revoke, &s(&["admin1", "admin2"]), NOW_MS).unwrap();
        let revoke_self = change(&state, "admin1", RegistryChangeKind::RevokeOperator { operator_id: "admin1".into() });
        // With admin2 revoked there is no second administrator either; add one through bootstrap again.
        let got = state.apply(&revoke_self, &s(&["admin1"]), NOW_MS);
        assert!(matches!(got, Err(RegistryError::SecondAdministratorMissing { .. })), "{got:?}");
    }

    #[test]
    fn o3_encoding_is_injective_over_fields() {
        let state = bootstrapped();
        let a = change(&state, "admin1", add("sm", 3, Role::SigningManager));
        let mut b = a.clone();
        b.change = add("sm", 3, Role::SigningOperator);
        let mut c = a.clone();
        c.requested_at_ms += 1;
        let mut d = a.clone();
        d.change = RegistryChangeKind::AddOperator {
            operator_id: "sm".into(),
            approval_public_key_hex: hex::encode([3; 32]),
            role: Role::SigningManager,
            expires_at_ms: Some(NOW_MS + 1),
        };
        let hashes: std::collections::BTreeSet<[u8; 32]> = [&a, &b, &c, &d].iter().map(|x| x.hash().unwrap()).collect();
        assert_eq!(hashes.len(), 4);
        let json = serde_json::to_string(&a).unwrap();
        let back: RegistryChange = serde_json::from_str(&json).unwrap();
        assert_eq!(back.hash().unwrap(), a.hash().unwrap());
    }
}
