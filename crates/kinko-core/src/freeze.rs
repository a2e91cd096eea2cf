//! Emergency freezes (K19, S5, L3): a freeze stops signing and withdrawals for a scope — everything, one
//! chain, one wallet or one key — at once. Setting one needs one person (or the reconciliation that saw an
//! unknown spend); lifting one needs an approved unfreeze request (`operators::Process::Unfreeze`), and the
//! signer verifies those approvals itself.
//!
//! This module is the pure part: what a scope is, how it is written (`all`, `chain:eth`, `wallet:0x…`,
//! `key:ID`) and whether a given (chain, wallet, key) is blocked by a set of active freezes.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Bound on a freeze reason (bytes).
pub const REASON_LEN_MAX: usize = 1024;
/// Bound on a chain name or key id inside a scope (bytes).
pub const SCOPE_NAME_LEN_MAX: usize = 64;
/// Bound on the active freezes one check considers; more than this many at once is refused by the setter.
pub const ACTIVE_FREEZES_MAX: usize = 256;
/// Who set a freeze that the real-time reconciliation set by itself (L3).
pub const SYSTEM_RECONCILIATION: &str = "system:reconciliation";

/// What a freeze stops.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FreezeScope {
    /// Every chain, wallet and key.
    Everything,
    /// One chain, by kinko's storage name (e.g. `eth`).
    Chain(String),
    /// One wallet, by lower-case 0x address.
    Wallet(String),
    /// One signing key, by key id (e.g. `eth-hot-1`).
    Key(String),
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FreezeError {
    #[error("scope {0:?} is not one of all, chain:NAME, wallet:0xADDRESS, key:ID")]
    BadScope(String),
    #[error("scope {scope:?}: {reason}")]
    BadScopeValue { scope: String, reason: &'static str },
    #[error("reason {0}")]
    BadReason(&'static str),
}

impl FreezeScope {
    /// Parses `all`, `chain:NAME`, `wallet:0x…` (40 hex digits; stored lower-case) or `key:ID`.
    pub fn parse(s: &str) -> Result<FreezeScope, FreezeError> {
        let s = s.trim();
        if s == "all" || s == "everything" {
            return Ok(FreezeScope::Everything);
        }
        let (kind, value) = s.split_once(':').ok_or_else(|| FreezeError::BadScope(s.to_string()))?;
        let bad = |reason| FreezeError::BadScopeValue { scope: s.to_string(), reason };
        let name = |v: &str| -> Result<String, FreezeError> {
            if v.is_empty() || v.len() > SCOPE_NAME_LEN_MAX {
                return Err(bad("the name must be 1 to 64 bytes"));
            }
            if !v.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
                return Err(bad("the name may hold only ASCII letters, digits, '-', '_' and '.'"));
            }
            Ok(v.to_string())
        };
        match kind {
            "chain" => Ok(FreezeScope::Chain(name(value)?.to_ascii_lowercase())),
            "key" => Ok(FreezeScope::Key(name(value)?)),
            "wallet" => {
                let hex = value.strip_prefix("0x").ok_or_else(|| bad("the address must start with 0x"))?;
                if hex.len() != 40 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                    return Err(bad("the address must be 0x followed by 40 hex digits"));
                }
                Ok(FreezeScope::Wallet(format!("0x{}", hex.to_ascii_lowercase())))
            }
            _ => Err(FreezeError::BadScope(s.to_string())),
        }
    }

    /// Whether this scope covers an operation on `chain` from `wallet` with `key`.
    pub fn covers(&self, chain: &str, wallet: &str, key: &str) -> bool {
        match self {
            FreezeScope::Everything => true,
            FreezeScope::Chain(c) => c.eq_ignore_ascii_case(chain),
            FreezeScope::Wallet(w) => w.eq_ignore_ascii_case(wallet),
            FreezeScope::Key(k) => k == key,
        }
    }
}

impl fmt::Display for FreezeScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FreezeScope::Everything => f.write_str("all"),
            FreezeScope::Chain(c) => write!(f, "chain:{c}"),
            FreezeScope::Wallet(w) => write!(f, "wallet:{w}"),
            FreezeScope::Key(k) => write!(f, "key:{k}"),
        }
    }
}

impl Serialize for FreezeScope {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for FreezeScope {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        FreezeScope::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// One active freeze.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Freeze {
    pub id: String,
    pub scope: FreezeScope,
    pub reason: String,
    /// `operator:ID`, `cli:USER` or [`SYSTEM_RECONCILIATION`].
    pub set_by: String,
    pub set_at_ms: i64,
}

/// Checks a reason: non-empty after trimming, at most [`REASON_LEN_MAX`] bytes, no control characters
/// (it is shown in logs and problem answers).
pub fn check_reason(reason: &str) -> Result<(), FreezeError> {
    if reason.trim().is_empty() {
        return Err(FreezeError::BadReason("is required"));
    }
    if reason.len() > REASON_LEN_MAX {
        return Err(FreezeError::BadReason("is longer than 1024 bytes"));
    }
    if reason.chars().any(char::is_control) {
        return Err(FreezeError::BadReason("may not contain control characters"));
    }
    Ok(())
}

/// The first active freeze that blocks an operation on `chain` from `wallet` with `key`, if any. Broader
/// scopes are reported first (everything, then chain, wallet, key), so the answer names the widest stop.
pub fn is_blocked<'a>(active: &'a [Freeze], chain: &str, wallet: &str, key: &str) -> Option<&'a Freeze> {
    active.iter().filter(|f| f.scope.covers(chain, wallet, key)).min_by(|a, b| a.scope.cmp(&b.scope))
}

/// The canonical params of an unfreeze request (what its approvers sign over through
/// `operators::request_intent_hash`): the freeze's id and scope, and the requester's note. The signer
/// rebuilds the scope from its own record and refuses params that name another one.
pub fn unfreeze_params(freeze: &Freeze, note: &str) -> serde_json::Value {
    serde_json::json!({ "freeze_id": freeze.id, "scope": freeze.scope.to_string(), "note": note })
}

/// The kind of an unfreeze request in `ops_requests`.
pub const UNFREEZE_KIND: &str = "unfreeze";

#[cfg(test)]
mod tests {
    use super::*;

    fn freeze(id: &str, scope: &str) -> Freeze {
        Freeze {
            id: id.into(),
            scope: FreezeScope::parse(scope).unwrap(),
            reason: "test".into(),
            set_by: "operator:om1".into(),
            set_at_ms: 1,
        }
    }

    const HOT: &str = "0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc";

    #[test]
    fn k19_scopes_parse_and_print_round_trip() {
        for s in ["all", "chain:eth", "wallet:0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc", "key:eth-hot-1"] {
            assert_eq!(FreezeScope::parse(s).unwrap().to_string(), s);
        }
        // Addresses are stored lower-case; chain names too.
        let w = FreezeScope::parse("wallet:0x3C44CDDDB6A900FA2B585DD299E03D12FA4293BC").unwrap();
        assert_eq!(w, FreezeScope::Wallet(HOT.into()));
        assert_eq!(FreezeScope::parse("chain:ETH").unwrap(), FreezeScope::Chain("eth".into()));
        assert_eq!(FreezeScope::parse(" everything ").unwrap(), FreezeScope::Everything);
        let json = serde_json::to_string(&w).unwrap();
        assert_eq!(serde_json::from_str::<FreezeScope>(&json).unwrap(), w);
    }

    #[test]
    fn k19_bad_scopes_are_refused_naming_the_problem() {
        for bad in [
            "",
            "al",
            "wallet:",
            "wallet:3c44cdddb6a900fa2b585dd299e03d12fa4293bc",
            "wallet:0x3c44",
            "wallet:0xzz44cdddb6a900fa2b585dd299e03d12fa4293bc",
            "key:",
            "key:a b",
            "chain:e th",
            "planet:mars",
        ] {
            assert!(FreezeScope::parse(bad).is_err(), "{bad:?} must be refused");
        }
        let long = format!("key:{}", "k".repeat(SCOPE_NAME_LEN_MAX + 1));
        assert!(FreezeScope::parse(&long).is_err());
        assert!(serde_json::from_str::<FreezeScope>("\"planet:mars\"").is_err());
    }

    #[test]
    fn s5_is_blocked_by_each_scope_and_names_the_widest() {
        let none: Vec<Freeze> = vec![];
        assert!(is_blocked(&none, "eth", HOT, "eth-hot-1").is_none());
        let wallet = vec![freeze("f1", &format!("wallet:{HOT}"))];
        assert_eq!(is_blocked(&wallet, "eth", HOT, "eth-hot-1").unwrap().id, "f1");
        assert!(is_blocked(&wallet, "eth", "0x0000000000000000000000000000000000000001", "k2").is_none());
        let key = vec![freeze("f2", "key:eth-hot-1")];
        assert!(is_blocked(&key, "eth", HOT, "eth-hot-1").is_some());
        assert!(is_blocked(&key, "eth", HOT, "eth-hot-2").is_none());
        let chain = vec![freeze("f3", "chain:eth")];
        assert!(is_blocked(&chain, "ETH", HOT, "x").is_some());
        assert!(is_blocked(&chain, "btc", HOT, "x").is_none());
        let all = vec![freeze("f5", "key:eth-hot-1"), freeze("f4", "all"), freeze("f6", "chain:eth")];
        assert_eq!(is_blocked(&all, "btc", "0xabc", "other").unwrap().id, "f4");
        assert_eq!(is_blocked(&all, "eth", HOT, "eth-hot-1").unwrap().id, "f4", "the widest scope is named");
        let narrow = vec![freeze("f5", "key:eth-hot-1"), freeze("f6", "chain:eth")];
        assert_eq!(is_blocked(&narrow, "eth", HOT, "eth-hot-1").unwrap().id, "f6");
    }

    #[test]
    fn k19_reasons_are_bounded_and_printable() {
        assert!(check_reason("hot wallet drained").is_ok());
        assert!(check_reason("  ").is_err());
        assert!(check_reason(&"x".repeat(REASON_LEN_MAX + 1)).is_err());
        assert!(check_reason("a\u{7}b").is_err());
    }

    /// K19, S5: lifting a freeze is asked by an operations manager and approved by a signing manager: two
    /// roles, so nobody lifts a freeze alone; it takes effect automatically (no Execute row).
    #[test]
    fn k19_unfreeze_is_requested_by_one_role_and_approved_by_another() {
        use crate::operators::{Action, Process, Role, role_for};
        assert_eq!(Process::Unfreeze.requester_role(), Role::OperationsManager);
        assert_eq!(role_for(Process::Unfreeze, Action::Approve), Some(Role::SigningManager));
        assert_eq!(role_for(Process::Unfreeze, Action::Execute), None);
        assert_eq!(role_for(Process::Unfreeze, Action::Inspect), Some(Role::LogInspector));
        assert_eq!(Process::parse("unfreeze"), Some(Process::Unfreeze));
        assert_eq!(Process::Unfreeze.code(), 10);
        assert!(!Process::Unfreeze.in_table_a1());
    }

    #[test]
    fn k19_unfreeze_params_name_the_freeze_and_its_scope() {
        let f = freeze("f1", "all");
        let p = unfreeze_params(&f, "cleared");
        assert_eq!(p["freeze_id"], "f1");
        assert_eq!(p["scope"], "all");
        assert_eq!(p["note"], "cleared");
    }
}
