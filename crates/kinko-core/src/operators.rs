//! Operators and separation of duties (K8, K11, K12, O2, O3): who may approve, execute and inspect each
//! key and signing process, and the rules that keep one person from moving value or touching a key alone.
//!
//! The matrix is seed 000 Appendix A, Table A-1 ("表A-1 意思決定を伴う明確な操作を必要とするプロセスについての
//! 権限分離の例"), transcribed in [`TABLE_A1`]. Everything not listed there is refused. The rules are pure
//! functions over what the caller says about operators and the time (`now_ms`); the store keeps the
//! operators, the server collects approvals, and the signer verifies the approval *signatures* itself
//! (`kinko_signer::approvals`) against its own registry, using the same rules from this module.
//!
//! # Canonical approval message (version 1)
//!
//! An approval is an Ed25519 signature, with the operator's personal approval key, over
//! [`approval_message`]:
//!
//! ```text
//! b"kinko-approval-v1"          17 bytes, domain separation: never valid as any other kinko signature
//! process code                   1 byte  (Process::code: 1 key generation, 2 key storage,
//!                                         3 activation/deactivation, 4 signing, 5 destruction)
//! request id length              1 byte  (1..=REQUEST_ID_LEN_MAX)
//! request id                     UTF-8 bytes
//! intent hash                    32 bytes (for signing: kinko_core::intent::Intent::hash)
//! decision                       1 byte  (0x01 approve, 0x00 reject)
//! ```
//!
//! Every field is fixed-length or length-prefixed, so two different (process, request, intent,
//! decision) tuples never encode to the same bytes. The process and request id are inside the signature
//! so an approval given for one request cannot be replayed on another request for the same intent, nor
//! an approval of a key generation be presented as one for signing.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Domain tag at the start of every approval message.
pub const APPROVAL_DOMAIN: &[u8] = b"kinko-approval-v1";
/// Bound on a request id; it is length-prefixed with one byte in the approval message.
pub const REQUEST_ID_LEN_MAX: usize = 128;
/// Bound on the grants one operator record may carry (history included), so a registry entry stays small.
pub const GRANTS_PER_OPERATOR_MAX: usize = 32;
/// The executor recorded for kinko's own processes, which take effect automatically once approved.
pub const SYSTEM_EXECUTOR: &str = "system";
/// Bound on the approvals one request collects: far above any sensible M-of-N, but finite.
pub const APPROVALS_PER_REQUEST_MAX: usize = 32;

/// Operator roles. The first five are Table A-1's; [`Role::Administrator`] is kinko's own addition and
/// manages people only, so it appears nowhere in the matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// 運用責任者: approves key generation, storage and destruction.
    OperationsManager,
    /// 署名責任者: approves activation/deactivation and (high-risk) signing.
    SigningManager,
    /// 鍵操作員: executes key generation, storage and destruction.
    KeyOperator,
    /// 署名操作員: executes activation/deactivation and signing.
    SigningOperator,
    /// ログ検査者: inspects every process afterwards (footnote 10: log inspection, not live witnessing).
    LogInspector,
    /// Grants and revokes roles; cannot approve, execute or inspect any Table A-1 process.
    Administrator,
}

impl Role {
    pub const ALL: [Role; 6] = [
        Role::OperationsManager,
        Role::SigningManager,
        Role::KeyOperator,
        Role::SigningOperator,
        Role::LogInspector,
        Role::Administrator,
    ];

    /// The byte that names the role in signed encodings (registry changes). Fixed forever.
    pub fn code(self) -> u8 {
        match self {
            Role::OperationsManager => 1,
            Role::SigningManager => 2,
            Role::KeyOperator => 3,
            Role::SigningOperator => 4,
            Role::LogInspector => 5,
            Role::Administrator => 6,
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::OperationsManager => "operations_manager",
            Role::SigningManager => "signing_manager",
            Role::KeyOperator => "key_operator",
            Role::SigningOperator => "signing_operator",
            Role::LogInspector => "log_inspector",
            Role::Administrator => "administrator",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Table A-1's processes: the ones that need an explicit decision rather than automation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Process {
    /// 鍵の生成.
    KeyGeneration,
    /// 鍵の保管: export to and import from offline media.
    KeyStorage,
    /// 鍵の活性化・非活性化: one process for both directions, as in the table.
    Activation,
    /// 署名 (Signing).
    Signing,
    /// 鍵の破棄.
    Destruction,
    /// kinko's own: registering operators, granting and revoking roles ([`RegistryChange`]).
    Personnel,
    /// kinko's own: changing a withdrawal policy (`kinko_core::policy`), including its whitelist (K20, O1).
    PolicyChange,
    /// kinko's own: recording a fiat deposit confirmed on the bank account (M10).
    FiatDeposit,
    /// kinko's own: restoring a customer account the customer deleted, within its rollback window (U6).
    /// Its own process (not a reuse of [`Process::FiatDeposit`]) so an approval for one can never be
    /// replayed as the other, and so that it can never run without an approval.
    CustomerRestore,
    /// kinko's own: lifting an emergency freeze (K19, S5). One person may freeze; lifting needs an
    /// operations manager to ask and a signing manager — who approves signing — to approve, and the signer
    /// verifies those approvals itself before it signs again.
    Unfreeze,
    /// kinko's own: evacuating a frozen (compromised) wallet's funds to new keys generated offline (K19,
    /// S5). Its own process so no other approval — least of all an unfreeze — can be replayed as one; asked
    /// for by an operations manager, approved by signing managers, and verified by the signer itself, which
    /// then signs transfers to exactly the approved destination despite the wallet's freeze.
    Evacuation,
}

impl Process {
    /// Table A-1's five processes.
    pub const TABLE_A1: [Process; 5] =
        [Process::KeyGeneration, Process::KeyStorage, Process::Activation, Process::Signing, Process::Destruction];
    /// Every process, Table A-1's and kinko's own.
    pub const ALL: [Process; 11] = [
        Process::KeyGeneration,
        Process::KeyStorage,
        Process::Activation,
        Process::Signing,
        Process::Destruction,
        Process::Personnel,
        Process::PolicyChange,
        Process::FiatDeposit,
        Process::CustomerRestore,
        Process::Unfreeze,
        Process::Evacuation,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Process::KeyGeneration => "key_generation",
            Process::KeyStorage => "key_storage",
            Process::Activation => "activation",
            Process::Signing => "signing",
            Process::Destruction => "destruction",
            Process::Personnel => "personnel",
            Process::PolicyChange => "policy_change",
            Process::FiatDeposit => "fiat_deposit",
            Process::CustomerRestore => "customer_restore",
            Process::Unfreeze => "unfreeze",
            Process::Evacuation => "evacuation",
        }
    }

    pub fn parse(s: &str) -> Option<Process> {
        Process::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// Whether the process is one of Table A-1's (key and signing processes, which an administrator
    /// may never approve or execute).
    pub fn in_table_a1(self) -> bool {
        Process::TABLE_A1.contains(&self)
    }

    /// The role that may *request* the process. For Table A-1's processes it is the executing role (the
    /// key operator asks for the key generation it will carry out, and may not approve it); kinko's own
    /// processes execute automatically once approved, so they name their requester here.
    pub fn requester_role(self) -> Role {
        match self {
            Process::Personnel => Role::Administrator,
            Process::PolicyChange | Process::Unfreeze | Process::Evacuation => Role::OperationsManager,
            Process::FiatDeposit | Process::CustomerRestore => Role::SigningOperator,
            a1 => role_for(a1, Action::Execute).unwrap_or(Role::Administrator),
        }
    }

    /// The byte that names the process in the approval message. Fixed forever: changing one would
    /// make old approvals verify as a different process.
    pub fn code(self) -> u8 {
        match self {
            Process::KeyGeneration => 1,
            Process::KeyStorage => 2,
            Process::Activation => 3,
            Process::Signing => 4,
            Process::Destruction => 5,
            Process::Personnel => 6,
            Process::PolicyChange => 7,
            Process::FiatDeposit => 8,
            Process::CustomerRestore => 9,
            Process::Unfreeze => 10,
            Process::Evacuation => 11,
        }
    }
}

impl fmt::Display for Process {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Table A-1's operations, in their order: approve → execute → inspect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// 承認.
    Approve,
    /// 実施.
    Execute,
    /// 検査.
    Inspect,
}

impl Action {
    pub const ALL: [Action; 3] = [Action::Approve, Action::Execute, Action::Inspect];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Approve => "approve",
            Action::Execute => "execute",
            Action::Inspect => "inspect",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Seed 000 Appendix A, Table A-1, one row per (process, action): exactly one role each.
///
/// ```text
///                     生成      保管      活性化・非活性化  署名        破棄
/// 運用責任者 (OM)      承認      承認      -                 -           承認
/// 署名責任者 (SM)      -         -         承認              (承認)^11   -
/// 鍵操作員 (KO)        実施      実施      -                 -           実施
/// 署名操作員 (SO)      -         -         実施              実施        -
/// ログ検査者 (LI)      検査      検査      検査              検査        検査
/// ```
///
/// Footnote 11's parentheses ("some limited signatures are approved") are K11: signing needs approval
/// only for transactions meeting the configured high-risk criteria. Whether approval is needed is the
/// quorum policy's question ([`QuorumPolicy`]); *who* approves when it is needed is this table's.
pub const TABLE_A1: [(Process, Action, Role); 15] = [
    (Process::KeyGeneration, Action::Approve, Role::OperationsManager),
    (Process::KeyGeneration, Action::Execute, Role::KeyOperator),
    (Process::KeyGeneration, Action::Inspect, Role::LogInspector),
    (Process::KeyStorage, Action::Approve, Role::OperationsManager),
    (Process::KeyStorage, Action::Execute, Role::KeyOperator),
    (Process::KeyStorage, Action::Inspect, Role::LogInspector),
    (Process::Activation, Action::Approve, Role::SigningManager),
    (Process::Activation, Action::Execute, Role::SigningOperator),
    (Process::Activation, Action::Inspect, Role::LogInspector),
    (Process::Signing, Action::Approve, Role::SigningManager),
    (Process::Signing, Action::Execute, Role::SigningOperator),
    (Process::Signing, Action::Inspect, Role::LogInspector),
    (Process::Destruction, Action::Approve, Role::OperationsManager),
    (Process::Destruction, Action::Execute, Role::KeyOperator),
    (Process::Destruction, Action::Inspect, Role::LogInspector),
];

/// kinko's own processes, in the same shape as [`TABLE_A1`]. They have no `Execute` row: they take
/// effect automatically once their quorum is met (a grant, a policy version, a ledger posting), so
/// nobody can execute them by hand, and an approver is never also the executor.
///
/// ```text
///                     人事 (personnel)   ポリシー変更   法定通貨入金   顧客口座の復元   凍結解除 (unfreeze)
/// 管理者 (admin)       承認               -              -              -                -
/// 運用責任者 (OM)      -                  承認           承認           承認             -
/// 署名責任者 (SM)      -                  -              -              -                承認
/// ログ検査者 (LI)      検査               検査           検査           検査             検査
/// requested by         admin              OM             SO             SO               OM
/// ```
///
/// Evacuation (退避, K19/S5) has the unfreeze column's shape: an operations manager asks, signing managers
/// approve, a log inspector inspects.
pub const KINKO_TABLE: [(Process, Action, Role); 12] = [
    (Process::Personnel, Action::Approve, Role::Administrator),
    (Process::Personnel, Action::Inspect, Role::LogInspector),
    (Process::PolicyChange, Action::Approve, Role::OperationsManager),
    (Process::PolicyChange, Action::Inspect, Role::LogInspector),
    (Process::FiatDeposit, Action::Approve, Role::OperationsManager),
    (Process::FiatDeposit, Action::Inspect, Role::LogInspector),
    (Process::CustomerRestore, Action::Approve, Role::OperationsManager),
    (Process::CustomerRestore, Action::Inspect, Role::LogInspector),
    (Process::Unfreeze, Action::Approve, Role::SigningManager),
    (Process::Unfreeze, Action::Inspect, Role::LogInspector),
    (Process::Evacuation, Action::Approve, Role::SigningManager),
    (Process::Evacuation, Action::Inspect, Role::LogInspector),
];

/// The one role [`TABLE_A1`] or [`KINKO_TABLE`] lists for `action` on `process`; `None` when nobody may
/// (an automatic `Execute` of kinko's own processes).
pub fn role_for(process: Process, action: Action) -> Option<Role> {
    TABLE_A1.iter().chain(KINKO_TABLE.iter()).find(|(p, a, _)| *p == process && *a == action).map(|(_, _, r)| *r)
}

/// Whether the tables let `role` perform `action` on `process`. An administrator appears only in the
/// personnel row, so it can never approve, execute or inspect a key or signing process (K8).
pub fn role_may(role: Role, process: Process, action: Action) -> bool {
    role_for(process, action) == Some(role)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OperatorError {
    #[error(
        "operator {operator:?} may not {action} {process}: nobody does; it takes effect automatically once approved"
    )]
    NobodyMay { operator: String, process: Process, action: Action },
    #[error("operator {operator:?} may not {action} {process}: Table A-1 gives that to {required}")]
    RoleNotAllowed { operator: String, process: Process, action: Action, required: Role },
    #[error(
        "operator {operator:?} cannot hold {requested} while holding {held}: the roles are mutually exclusive (K8, O3)"
    )]
    RolesExclusive { operator: String, held: Role, requested: Role },
    #[error("operator {operator:?}'s grant of {role} expired at {expired_at_ms} ms")]
    GrantExpired { operator: String, role: Role, expired_at_ms: i64 },
    #[error("operator {operator:?} is revoked")]
    Revoked { operator: String },
    #[error("operator {operator:?} is not registered")]
    UnknownOperator { operator: String },
    #[error("operator {operator:?} requested this and may not approve it (O2)")]
    SelfApproval { operator: String },
    #[error("operator {operator:?} approved this and may not execute it (K8)")]
    ExecutorApproved { operator: String },
    #[error("operator {operator:?} took part in this request and may not inspect it (K8, K12)")]
    InspectorInvolved { operator: String },
    #[error("operator {operator:?} already approved this request")]
    DuplicateApproval { operator: String },
    #[error("request has {counted} valid approvals of {required} required")]
    QuorumNotMet { required: u8, counted: usize },
    #[error("quorum for {process} is 0 without the explicit no-approval marker: refused (fail closed)")]
    QuorumZero { process: Process },
    #[error("{process} always needs approval (K11); the no-approval marker applies to signing only")]
    NoneRequiredNotAllowed { process: Process },
    #[error("request cannot {action} while {state}")]
    BadTransition { state: RequestState, action: &'static str },
    #[error("request id {reason}")]
    InvalidRequestId { reason: &'static str },
    #[error("{field} {reason}")]
    Invalid { field: &'static str, reason: &'static str },
}

/// One grant of one role to one operator. Grants expire (Ronin 2022: a grant nobody revoked) and can be
/// revoked individually; the operator record can also be revoked as a whole.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    pub role: Role,
    /// Exclusive end of validity; `None` for no expiry.
    #[serde(default)]
    pub expires_at_ms: Option<i64>,
    #[serde(default)]
    pub revoked: bool,
}

impl Grant {
    pub fn is_active(&self, now_ms: i64) -> bool {
        !self.revoked && self.expires_at_ms.is_none_or(|end| now_ms < end)
    }
}

/// What the rules need to know about an operator: identity, grants and whether the person is revoked.
/// Credentials and approval keys live elsewhere (store, signer registry).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operator {
    pub id: String,
    pub grants: Vec<Grant>,
    #[serde(default)]
    pub revoked: bool,
}

impl Operator {
    /// The distinct roles this operator holds right now.
    pub fn active_roles(&self, now_ms: i64) -> Vec<Role> {
        let mut roles: Vec<Role> = self.grants.iter().filter(|g| g.is_active(now_ms)).map(|g| g.role).collect();
        roles.sort();
        roles.dedup();
        roles
    }

    /// The record is well-formed and holds at most one role at `now_ms` (K8 mutual exclusivity; O3).
    /// Administrator counts as a role here too: a person who grants roles and also approves could grant
    /// an accomplice the missing one.
    pub fn validate(&self, now_ms: i64) -> Result<(), OperatorError> {
        if self.id.trim().is_empty() {
            return Err(OperatorError::Invalid { field: "operator id", reason: "is empty" });
        }
        if self.id.len() > REQUEST_ID_LEN_MAX {
            return Err(OperatorError::Invalid { field: "operator id", reason: "is too long" });
        }
        if self.grants.len() > GRANTS_PER_OPERATOR_MAX {
            return Err(OperatorError::Invalid { field: "grants", reason: "exceed GRANTS_PER_OPERATOR_MAX" });
        }
        let roles = self.active_roles(now_ms);
        if let [held, requested, ..] = roles.as_slice() {
            return Err(OperatorError::RolesExclusive {
                operator: self.id.clone(),
                held: *held,
                requested: *requested,
            });
        }
        Ok(())
    }
}

/// Whether `role` may be granted to `operator` at `now_ms`: refused if they hold any other role (K8).
pub fn check_grant(operator: &Operator, role: Role, now_ms: i64) -> Result<(), OperatorError> {
    if operator.revoked {
        return Err(OperatorError::Revoked { operator: operator.id.clone() });
    }
    operator.validate(now_ms)?;
    match operator.active_roles(now_ms).into_iter().find(|held| *held != role) {
        Some(held) => Err(OperatorError::RolesExclusive { operator: operator.id.clone(), held, requested: role }),
        None => Ok(()),
    }
}

/// Whether `operator` may perform `action` on `process` at `now_ms`: not revoked, holding exactly one
/// role, and that role is Table A-1's for the cell with an unexpired, unrevoked grant.
pub fn authorize(operator: &Operator, process: Process, action: Action, now_ms: i64) -> Result<(), OperatorError> {
    if operator.revoked {
        return Err(OperatorError::Revoked { operator: operator.id.clone() });
    }
    // A record that somehow holds two roles (edited storage, a bug in granting) is refused everything.
    operator.validate(now_ms)?;
    let Some(required) = role_for(process, action) else {
        return Err(OperatorError::NobodyMay { operator: operator.id.clone(), process, action });
    };
    if operator.active_roles(now_ms).contains(&required) {
        return Ok(());
    }
    let expired =
        operator.grants.iter().filter(|g| g.role == required && !g.revoked).filter_map(|g| g.expires_at_ms).max();
    match expired {
        Some(expired_at_ms) if expired_at_ms <= now_ms => {
            Err(OperatorError::GrantExpired { operator: operator.id.clone(), role: required, expired_at_ms })
        }
        _ => Err(OperatorError::RoleNotAllowed { operator: operator.id.clone(), process, action, required }),
    }
}

/// Whether an approval by `approver` counts towards a request by `requester` at `now_ms` (O2: nobody
/// approves their own request). Called when the approval is given *and* again when it is counted, so
/// a later revocation or expiry makes it stop counting.
pub fn check_approver(
    approver: &Operator,
    process: Process,
    requester: &str,
    now_ms: i64,
) -> Result<(), OperatorError> {
    if approver.id == requester {
        return Err(OperatorError::SelfApproval { operator: approver.id.clone() });
    }
    authorize(approver, process, Action::Approve, now_ms)
}

/// How many approvals a request needs. Zero is not a number here: a configured 0 silently turned
/// OpenBao's control groups off (openbao#3666), so "no approval" is its own explicit marker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuorumPolicy {
    /// At least this many distinct approvers holding the approving role. `AtLeast(0)` is refused.
    AtLeast(u8),
    /// No approval: only for signing in the hot-wallet-under-limits class (K11: signing needs approval
    /// only when the configured high-risk criteria are met). Refused for every other process.
    NoneRequired,
}

impl QuorumPolicy {
    /// The number of approvals required for `process`, or why this policy is refused.
    pub fn required(self, process: Process) -> Result<u8, OperatorError> {
        match self {
            QuorumPolicy::AtLeast(0) => Err(OperatorError::QuorumZero { process }),
            QuorumPolicy::AtLeast(m) if usize::from(m) > APPROVALS_PER_REQUEST_MAX => {
                Err(OperatorError::Invalid { field: "quorum", reason: "exceeds APPROVALS_PER_REQUEST_MAX" })
            }
            QuorumPolicy::AtLeast(m) => Ok(m),
            // Signing under the hot wallet's limits is automated (K11's parenthesised approval), and a
            // fiat deposit under the configured threshold is booked on the bank's confirmation alone.
            QuorumPolicy::NoneRequired if matches!(process, Process::Signing | Process::FiatDeposit) => Ok(0),
            QuorumPolicy::NoneRequired => Err(OperatorError::NoneRequiredNotAllowed { process }),
        }
    }
}

/// An operator's decision on a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Approve,
    Reject,
}

impl Decision {
    pub fn code(self) -> u8 {
        match self {
            Decision::Approve => 0x01,
            Decision::Reject => 0x00,
        }
    }
}

/// What an approval is about: the request, its process and the intent hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalSubject {
    pub process: Process,
    pub request_id: String,
    pub intent_hash: [u8; 32],
}

impl ApprovalSubject {
    pub fn new(process: Process, request_id: &str, intent_hash: [u8; 32]) -> Result<ApprovalSubject, OperatorError> {
        validate_request_id(request_id)?;
        Ok(ApprovalSubject { process, request_id: request_id.to_owned(), intent_hash })
    }
}

fn validate_request_id(request_id: &str) -> Result<(), OperatorError> {
    if request_id.is_empty() {
        return Err(OperatorError::InvalidRequestId { reason: "is empty" });
    }
    if request_id.len() > REQUEST_ID_LEN_MAX {
        return Err(OperatorError::InvalidRequestId { reason: "is longer than REQUEST_ID_LEN_MAX bytes" });
    }
    Ok(())
}

/// The bytes an operator signs with their approval key (layout in the module docs). Bytes only: the
/// signature itself is made on the operator's terminal and verified in the signer.
pub fn approval_message(subject: &ApprovalSubject, decision: Decision) -> Result<Vec<u8>, OperatorError> {
    validate_request_id(&subject.request_id)?;
    let id = subject.request_id.as_bytes();
    let id_len = u8::try_from(id.len()).map_err(|_| OperatorError::InvalidRequestId { reason: "is too long" })?;
    let mut out = Vec::with_capacity(APPROVAL_DOMAIN.len() + 2 + id.len() + 32 + 1);
    out.extend_from_slice(APPROVAL_DOMAIN);
    out.push(subject.process.code());
    out.push(id_len);
    out.extend_from_slice(id);
    out.extend_from_slice(&subject.intent_hash);
    out.push(decision.code());
    Ok(out)
}

/// Where a request stands. Transitions (anything else is refused):
/// requested → approved (quorum reached) → executed → inspected; requested/approved → rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestState {
    Requested,
    Approved,
    Executed,
    Inspected,
    Rejected,
}

impl fmt::Display for RequestState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RequestState::Requested => "requested",
            RequestState::Approved => "approved",
            RequestState::Executed => "executed",
            RequestState::Inspected => "inspected",
            RequestState::Rejected => "rejected",
        })
    }
}

/// A Table A-1 process instance, carrying who did what so the log inspector can match approvals
/// against execution afterwards (K12).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub subject: ApprovalSubject,
    pub requester: String,
    pub required: u8,
    pub state: RequestState,
    /// Operator ids in the order they approved; each at most once.
    pub approvals: Vec<String>,
    pub rejected_by: Option<String>,
    pub executor: Option<String>,
    pub inspector: Option<String>,
}

impl Request {
    /// Opens a request. With [`QuorumPolicy::NoneRequired`] (signing under limits only) it starts out
    /// approved, since there is nothing to wait for.
    pub fn new(subject: ApprovalSubject, requester: &str, policy: QuorumPolicy) -> Result<Request, OperatorError> {
        validate_request_id(&subject.request_id)?;
        if requester.trim().is_empty() {
            return Err(OperatorError::Invalid { field: "requester", reason: "is empty" });
        }
        let required = policy.required(subject.process)?;
        let state = if required == 0 { RequestState::Approved } else { RequestState::Requested };
        Ok(Request {
            subject,
            requester: requester.to_owned(),
            required,
            state,
            approvals: Vec::new(),
            rejected_by: None,
            executor: None,
            inspector: None,
        })
    }

    /// Records an approval. Reaching the quorum moves requested → approved; approvals after that are
    /// still recorded, as spares in case one of the earlier approvers is revoked before execution.
    pub fn approve(&mut self, approver: &Operator, now_ms: i64) -> Result<RequestState, OperatorError> {
        if !matches!(self.state, RequestState::Requested | RequestState::Approved) {
            return Err(OperatorError::BadTransition { state: self.state, action: "approve" });
        }
        check_approver(approver, self.subject.process, &self.requester, now_ms)?;
        if self.approvals.contains(&approver.id) {
            return Err(OperatorError::DuplicateApproval { operator: approver.id.clone() });
        }
        if self.approvals.len() >= APPROVALS_PER_REQUEST_MAX {
            return Err(OperatorError::Invalid { field: "approvals", reason: "exceed APPROVALS_PER_REQUEST_MAX" });
        }
        self.approvals.push(approver.id.clone());
        if self.approvals.len() >= usize::from(self.required) {
            self.state = RequestState::Approved;
        }
        Ok(self.state)
    }

    /// A rejection by an approving-role operator ends the request.
    pub fn reject(&mut self, approver: &Operator, now_ms: i64) -> Result<RequestState, OperatorError> {
        if !matches!(self.state, RequestState::Requested | RequestState::Approved) {
            return Err(OperatorError::BadTransition { state: self.state, action: "reject" });
        }
        check_approver(approver, self.subject.process, &self.requester, now_ms)?;
        self.rejected_by = Some(approver.id.clone());
        self.state = RequestState::Rejected;
        Ok(self.state)
    }

    /// The approvals that still count at `now_ms`, judged against `registry`'s current view of each
    /// approver: a revoked or expired approver, or one no longer registered, stops counting.
    pub fn valid_approvals(&self, registry: &[Operator], now_ms: i64) -> usize {
        self.approvals
            .iter()
            .filter(|id| {
                registry
                    .iter()
                    .find(|op| &op.id == *id)
                    .is_some_and(|op| check_approver(op, self.subject.process, &self.requester, now_ms).is_ok())
            })
            .count()
    }

    /// approved → executed. The quorum is counted again here, so approvals that stopped counting since
    /// they were given cannot carry the request; nobody executes what they approved.
    pub fn execute(&mut self, executor: &Operator, registry: &[Operator], now_ms: i64) -> Result<(), OperatorError> {
        if self.state != RequestState::Approved {
            return Err(OperatorError::BadTransition { state: self.state, action: "execute" });
        }
        authorize(executor, self.subject.process, Action::Execute, now_ms)?;
        if self.approvals.contains(&executor.id) {
            return Err(OperatorError::ExecutorApproved { operator: executor.id.clone() });
        }
        let counted = self.valid_approvals(registry, now_ms);
        if counted < usize::from(self.required) {
            return Err(OperatorError::QuorumNotMet { required: self.required, counted });
        }
        self.executor = Some(executor.id.clone());
        self.state = RequestState::Executed;
        Ok(())
    }

    /// executed → inspected, by a log inspector who took no part in the request.
    /// Approved → executed for kinko's own processes, which nobody executes by hand: the system applies
    /// them once the quorum (re-counted against `registry` now) is met. Refused for Table A-1's processes,
    /// which always need a person in the executing role.
    pub fn execute_automatically(&mut self, registry: &[Operator], now_ms: i64) -> Result<(), OperatorError> {
        if self.subject.process.in_table_a1() {
            return Err(OperatorError::Invalid {
                field: "process",
                reason: "is a Table A-1 process; a person executes it",
            });
        }
        if self.state != RequestState::Approved {
            return Err(OperatorError::BadTransition { state: self.state, action: "execute" });
        }
        let counted = self.valid_approvals(registry, now_ms);
        if counted < usize::from(self.required) {
            return Err(OperatorError::QuorumNotMet { required: self.required, counted });
        }
        self.executor = Some(SYSTEM_EXECUTOR.to_owned());
        self.state = RequestState::Executed;
        Ok(())
    }

    pub fn inspect(&mut self, inspector: &Operator, now_ms: i64) -> Result<(), OperatorError> {
        if self.state != RequestState::Executed {
            return Err(OperatorError::BadTransition { state: self.state, action: "inspect" });
        }
        authorize(inspector, self.subject.process, Action::Inspect, now_ms)?;
        let involved = inspector.id == self.requester
            || self.approvals.contains(&inspector.id)
            || self.executor.as_deref() == Some(inspector.id.as_str());
        if involved {
            return Err(OperatorError::InspectorInvolved { operator: inspector.id.clone() });
        }
        self.inspector = Some(inspector.id.clone());
        self.state = RequestState::Inspected;
        Ok(())
    }
}

/// Domain tag of [`request_intent_hash`].
pub const OPS_REQUEST_DOMAIN: &[u8] = b"kinko-ops-request-v1";

/// The intent hash of an operator request that is not a withdrawal or a registry change (a key process, a
/// policy change, a fiat deposit): SHA-256 over
///
/// ```text
/// b"kinko-ops-request-v1" || process code (1 byte) || u32 BE length || request id
///                        || u32 BE length || kind || u32 BE length || params as canonical JSON
/// ```
///
/// Canonical JSON is `serde_json`'s compact encoding of a [`serde_json::Value`], whose objects keep their keys
/// sorted; the approver's terminal recomputes this from the parameters it shows the operator, so what is
/// signed is what was shown, never a hash the server supplied.
pub fn request_intent_hash(process: Process, request_id: &str, kind: &str, params: &serde_json::Value) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let params = serde_json::to_vec(params).unwrap_or_default();
    let mut h = Sha256::new();
    h.update(OPS_REQUEST_DOMAIN);
    h.update([process.code()]);
    for part in [request_id.as_bytes(), kind.as_bytes(), params.as_slice()] {
        h.update((part.len() as u32).to_be_bytes());
        h.update(part);
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW_MS: i64 = 1_700_000_000_000;

    fn op(id: &str, role: Role) -> Operator {
        Operator { id: id.into(), grants: vec![Grant { role, expires_at_ms: None, revoked: false }], revoked: false }
    }

    fn subject(process: Process) -> ApprovalSubject {
        ApprovalSubject::new(process, "req-1", [7; 32]).unwrap()
    }

    /// Table A-1 written out independently of TABLE_A1, cell by cell, so a wrong row in either fails.
    fn expected(role: Role, process: Process, action: Action) -> bool {
        use Action::*;
        use Process::*;
        use Role::*;
        matches!(
            (role, process, action),
            (OperationsManager, KeyGeneration | KeyStorage | Destruction, Approve)
                | (SigningManager, Activation | Signing, Approve)
                | (KeyOperator, KeyGeneration | KeyStorage | Destruction, Execute)
                | (SigningOperator, Activation | Signing, Execute)
                | (LogInspector, _, Inspect)
        )
    }

    #[test]
    fn k8_table_a1_matrix_allows_only_the_listed_cells() {
        let mut allowed = 0;
        for role in Role::ALL {
            let operator = op("alice", role);
            for process in Process::TABLE_A1 {
                for action in Action::ALL {
                    let want = expected(role, process, action);
                    assert_eq!(role_may(role, process, action), want, "{role} {action} {process}");
                    let got = authorize(&operator, process, action, NOW_MS);
                    assert_eq!(got.is_ok(), want, "{role} {action} {process}: {got:?}");
                    if !want {
                        assert!(matches!(got, Err(OperatorError::RoleNotAllowed { .. })), "{got:?}");
                    }
                    allowed += usize::from(want);
                }
            }
        }
        // 5 processes × 3 actions, one role each; the administrator has none.
        assert_eq!(allowed, 15);
        for process in Process::TABLE_A1 {
            for action in Action::ALL {
                assert_eq!(TABLE_A1.iter().filter(|(p, a, _)| *p == process && *a == action).count(), 1);
                assert_ne!(role_for(process, action), Some(Role::Administrator));
            }
        }
    }

    #[test]
    fn k8_o3_one_person_cannot_hold_two_roles() {
        for held in Role::ALL {
            let operator = op("alice", held);
            assert!(check_grant(&operator, held, NOW_MS).is_ok(), "re-granting the same role is fine");
            for requested in Role::ALL.into_iter().filter(|r| *r != held) {
                let got = check_grant(&operator, requested, NOW_MS);
                assert!(matches!(got, Err(OperatorError::RolesExclusive { .. })), "{held} + {requested}: {got:?}");
            }
        }
        // A record that already holds two roles is refused everything, including its own cells.
        let mut two = op("mallory", Role::OperationsManager);
        two.grants.push(Grant { role: Role::KeyOperator, expires_at_ms: None, revoked: false });
        assert!(matches!(
            authorize(&two, Process::KeyGeneration, Action::Approve, NOW_MS),
            Err(OperatorError::RolesExclusive { .. })
        ));
        assert!(matches!(
            authorize(&two, Process::KeyGeneration, Action::Execute, NOW_MS),
            Err(OperatorError::RolesExclusive { .. })
        ));
        // Once the first grant has expired, the other role may be granted.
        let mut expired = op("bob", Role::OperationsManager);
        expired.grants[0].expires_at_ms = Some(NOW_MS);
        assert!(check_grant(&expired, Role::KeyOperator, NOW_MS).is_ok());
    }

    #[test]
    fn o2_self_approval_refused() {
        let manager = op("alice", Role::OperationsManager);
        let mut request = Request::new(subject(Process::KeyGeneration), "alice", QuorumPolicy::AtLeast(1)).unwrap();
        assert!(matches!(request.approve(&manager, NOW_MS), Err(OperatorError::SelfApproval { .. })));
        assert_eq!(request.state, RequestState::Requested);
        assert!(request.approvals.is_empty());
    }

    #[test]
    fn k8_executing_what_you_approved_refused() {
        // Only reachable through a corrupted record (approver and executor roles are exclusive), which
        // is why the check exists independently of the role check.
        let mut request = Request::new(subject(Process::Signing), "req", QuorumPolicy::AtLeast(1)).unwrap();
        let manager = op("alice", Role::SigningManager);
        request.approve(&manager, NOW_MS).unwrap();
        let same_person_as_operator = op("alice", Role::SigningOperator);
        let got = request.execute(&same_person_as_operator, &[manager], NOW_MS);
        assert!(matches!(got, Err(OperatorError::ExecutorApproved { .. })), "{got:?}");
        assert_eq!(request.state, RequestState::Approved);
    }

    #[test]
    fn k8_expired_grant_refused() {
        let mut manager = op("alice", Role::OperationsManager);
        manager.grants[0].expires_at_ms = Some(NOW_MS + 1);
        assert!(authorize(&manager, Process::Destruction, Action::Approve, NOW_MS).is_ok());
        let got = authorize(&manager, Process::Destruction, Action::Approve, NOW_MS + 1);
        assert!(matches!(got, Err(OperatorError::GrantExpired { expired_at_ms, .. }) if expired_at_ms == NOW_MS + 1));
    }

    #[test]
    fn o2_revoked_operators_earlier_approval_stops_counting() {
        let mut request = Request::new(subject(Process::KeyStorage), "ko", QuorumPolicy::AtLeast(2)).unwrap();
        let mut a = op("a", Role::OperationsManager);
        let b = op("b", Role::OperationsManager);
        assert_eq!(request.approve(&a, NOW_MS).unwrap(), RequestState::Requested);
        assert_eq!(request.approve(&b, NOW_MS).unwrap(), RequestState::Approved);
        a.revoked = true;
        let registry = vec![a, b.clone()];
        let executor = op("ko2", Role::KeyOperator);
        let got = request.execute(&executor, &registry, NOW_MS);
        assert!(matches!(got, Err(OperatorError::QuorumNotMet { required: 2, counted: 1 })), "{got:?}");
        // A spare approval from a third manager restores the quorum.
        let c = op("c", Role::OperationsManager);
        request.approve(&c, NOW_MS).unwrap();
        let registry = vec![registry[0].clone(), b, c];
        request.execute(&executor, &registry, NOW_MS).unwrap();
        assert_eq!(request.state, RequestState::Executed);
    }

    #[test]
    fn o2_execution_without_quorum_refused_and_full_cycle() {
        let mut request = Request::new(subject(Process::Activation), "so1", QuorumPolicy::AtLeast(2)).unwrap();
        let m1 = op("m1", Role::SigningManager);
        let m2 = op("m2", Role::SigningManager);
        let so = op("so2", Role::SigningOperator);
        let li = op("li", Role::LogInspector);
        request.approve(&m1, NOW_MS).unwrap();
        let got = request.execute(&so, &[m1.clone(), m2.clone()], NOW_MS);
        assert!(matches!(got, Err(OperatorError::BadTransition { state: RequestState::Requested, .. })), "{got:?}");
        assert!(matches!(request.approve(&m1, NOW_MS), Err(OperatorError::DuplicateApproval { .. })));
        assert!(matches!(request.inspect(&li, NOW_MS), Err(OperatorError::BadTransition { .. })));
        request.approve(&m2, NOW_MS).unwrap();
        // The wrong role cannot execute even with the quorum in place.
        assert!(matches!(
            request.execute(&op("ko", Role::KeyOperator), &[m1.clone(), m2.clone()], NOW_MS),
            Err(OperatorError::RoleNotAllowed { .. })
        ));
        request.execute(&so, &[m1, m2], NOW_MS).unwrap();
        request.inspect(&li, NOW_MS).unwrap();
        assert_eq!(request.state, RequestState::Inspected);
        assert_eq!(request.inspector.as_deref(), Some("li"));
        assert!(matches!(request.inspect(&li, NOW_MS), Err(OperatorError::BadTransition { .. })));
    }

    #[test]
    fn k8_kinko_processes_admin_approves_personnel_only_and_nobody_executes_them() {
        for process in [Process::Personnel, Process::PolicyChange, Process::FiatDeposit, Process::CustomerRestore] {
            assert!(!process.in_table_a1());
            for role in Role::ALL {
                assert!(!role_may(role, process, Action::Execute), "{role} may not execute {process}");
            }
            assert!(role_may(Role::LogInspector, process, Action::Inspect));
        }
        assert!(role_may(Role::Administrator, Process::Personnel, Action::Approve));
        // U6: a customer restore is asked for by a signing operator and approved by an operations manager.
        assert_eq!(Process::CustomerRestore.requester_role(), Role::SigningOperator);
        assert_eq!(role_for(Process::CustomerRestore, Action::Approve), Some(Role::OperationsManager));
        assert_eq!(Process::CustomerRestore.code(), 9);
        assert_eq!(Process::parse("customer_restore"), Some(Process::CustomerRestore));
        for process in Process::TABLE_A1 {
            for action in Action::ALL {
                assert!(!role_may(Role::Administrator, process, action), "admin {action} {process}");
            }
        }
        let codes: std::collections::BTreeSet<u8> = Process::ALL.iter().map(|p| p.code()).collect();
        assert_eq!(codes.len(), Process::ALL.len(), "process codes are distinct");
        let mut request = Request::new(subject(Process::PolicyChange), "om1", QuorumPolicy::AtLeast(1)).unwrap();
        let om2 = op("om2", Role::OperationsManager);
        assert!(matches!(
            request.execute(&op("so", Role::SigningOperator), std::slice::from_ref(&om2), NOW_MS),
            Err(OperatorError::BadTransition { .. })
        ));
        request.approve(&om2, NOW_MS).unwrap();
        let got = request.execute(&op("so", Role::SigningOperator), std::slice::from_ref(&om2), NOW_MS);
        assert!(matches!(got, Err(OperatorError::NobodyMay { .. })), "{got:?}");
        // A revoked approver no longer counts when the system executes.
        let mut revoked = om2.clone();
        revoked.revoked = true;
        let got = request.clone().execute_automatically(&[revoked], NOW_MS);
        assert!(matches!(got, Err(OperatorError::QuorumNotMet { .. })), "{got:?}");
        request.execute_automatically(&[om2], NOW_MS).unwrap();
        assert_eq!(request.executor.as_deref(), Some(SYSTEM_EXECUTOR));
    }

    #[test]
    fn o3_request_intent_hash_binds_every_field_and_ignores_key_order() {
        let params: serde_json::Value = serde_json::from_str(r#"{"b":1,"a":"x"}"#).unwrap();
        let reordered: serde_json::Value = serde_json::from_str(r#"{"a":"x","b":1}"#).unwrap();
        let base = request_intent_hash(Process::Activation, "r1", "key_transition", &params);
        assert_eq!(base, request_intent_hash(Process::Activation, "r1", "key_transition", &reordered));
        assert_ne!(base, request_intent_hash(Process::Destruction, "r1", "key_transition", &params));
        assert_ne!(base, request_intent_hash(Process::Activation, "r2", "key_transition", &params));
        assert_ne!(base, request_intent_hash(Process::Activation, "r1", "key_transitio", &params));
        let changed: serde_json::Value = serde_json::from_str(r#"{"b":2,"a":"x"}"#).unwrap();
        assert_ne!(base, request_intent_hash(Process::Activation, "r1", "key_transition", &changed));
    }

    #[test]
    fn k12_inspector_who_requested_refused() {
        let mut request = Request::new(subject(Process::Signing), "li", QuorumPolicy::AtLeast(1)).unwrap();
        request.approve(&op("m", Role::SigningManager), NOW_MS).unwrap();
        request.execute(&op("so", Role::SigningOperator), &[op("m", Role::SigningManager)], NOW_MS).unwrap();
        let got = request.inspect(&op("li", Role::LogInspector), NOW_MS);
        assert!(matches!(got, Err(OperatorError::InspectorInvolved { .. })), "{got:?}");
    }

    #[test]
    fn k8_rejection_ends_the_request() {
        let mut request = Request::new(subject(Process::Destruction), "ko", QuorumPolicy::AtLeast(1)).unwrap();
        request.reject(&op("m", Role::OperationsManager), NOW_MS).unwrap();
        assert!(matches!(
            request.approve(&op("m2", Role::OperationsManager), NOW_MS),
            Err(OperatorError::BadTransition { .. })
        ));
    }

    #[test]
    fn k11_quorum_zero_needs_the_explicit_marker_and_only_for_signing() {
        for process in Process::ALL {
            assert!(matches!(QuorumPolicy::AtLeast(0).required(process), Err(OperatorError::QuorumZero { .. })));
            let none = QuorumPolicy::NoneRequired.required(process);
            if matches!(process, Process::Signing | Process::FiatDeposit) {
                assert_eq!(none, Ok(0));
            } else {
                assert!(matches!(none, Err(OperatorError::NoneRequiredNotAllowed { .. })), "{process}");
            }
        }
        let request = Request::new(subject(Process::Signing), "pipeline", QuorumPolicy::NoneRequired).unwrap();
        assert_eq!(request.state, RequestState::Approved);
        assert!(Request::new(subject(Process::Signing), "pipeline", QuorumPolicy::AtLeast(0)).is_err());
    }

    #[test]
    fn k12_approval_message_layout_is_fixed_and_binds_every_field() {
        let s = ApprovalSubject::new(Process::Signing, "w1", [0xab; 32]).unwrap();
        let m = approval_message(&s, Decision::Approve).unwrap();
        let mut want = b"kinko-approval-v1".to_vec();
        want.extend_from_slice(&[4, 2, b'w', b'1']);
        want.extend_from_slice(&[0xab; 32]);
        want.push(1);
        assert_eq!(m, want);
        let variants = [
            approval_message(&s, Decision::Reject).unwrap(),
            approval_message(&ApprovalSubject { process: Process::Activation, ..s.clone() }, Decision::Approve)
                .unwrap(),
            approval_message(&ApprovalSubject { request_id: "w2".into(), ..s.clone() }, Decision::Approve).unwrap(),
            approval_message(&ApprovalSubject { intent_hash: [0xac; 32], ..s.clone() }, Decision::Approve).unwrap(),
        ];
        for v in variants {
            assert_ne!(v, m);
        }
        assert!(ApprovalSubject::new(Process::Signing, "", [0; 32]).is_err());
        assert!(ApprovalSubject::new(Process::Signing, &"x".repeat(REQUEST_ID_LEN_MAX + 1), [0; 32]).is_err());
    }
}
