//! The audit trail (L2, L4–L6): an append-only, hash-chained sequence of entries, each signed by the audit
//! key. Pure: the caller passes the time, the previous entry and the key; storage and the key file live at
//! the edges.
//!
//! # Canonical encoding (`kinko-audit-v1`)
//!
//! An entry is encoded as
//!
//! ```text
//! "kinko-audit-v1" 0x00
//! seq            u64 big-endian
//! prev_hash      32 bytes (all zero for the genesis entry)
//! at_ms          i64 big-endian
//! actor_kind     1 byte (1 customer, 2 operator, 3 system, 4 anonymous)
//! actor_id       u32 big-endian length ‖ UTF-8
//! role           u32 big-endian length ‖ UTF-8
//! terminal       u32 big-endian length ‖ UTF-8
//! action         u32 big-endian length ‖ UTF-8
//! object         u32 big-endian length ‖ UTF-8
//! request_digest 32 bytes (sha256 of the request body; sha256 of nothing when there was none)
//! outcome        u32 big-endian length ‖ UTF-8
//! ```
//!
//! Every variable field carries its length, so no two different entries encode alike (a field boundary
//! cannot be moved by shifting text between neighbours). The entry's hash is sha256 of the encoding; the
//! next entry's `prev_hash` is that hash; the signature is Ed25519 (`verify_strict`) over the encoding.
//!
//! Entry 1 is the genesis: action [`GENESIS_ACTION`], object `ed25519:<hex public key>`, pinning the audit
//! key. [`Verifier`] checks the sequence from the genesis on and names the first entry that fails. What it
//! cannot see by itself: a chain cut off at the end (the remaining prefix is a valid chain). That needs a
//! head kept outside the system ([`Verifier::finish_at_least`] and the periodic report's head hash).

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

/// Domain separation for the encoding, so an audit signature can never be presented as any other kinko
/// signature (approvals and registry changes have their own tags).
pub const DOMAIN_TAG: &[u8] = b"kinko-audit-v1\0";
/// The genesis entry's action.
pub const GENESIS_ACTION: &str = "audit.genesis";
/// The genesis entry's object prefix before the hex public key.
pub const GENESIS_KEY_PREFIX: &str = "ed25519:";
/// Bound on each text field, in bytes. Callers shorten longer input ([`clip`]) before building a record.
pub const FIELD_LEN_MAX: usize = 2048;
/// The `prev_hash` of the genesis entry.
pub const ZERO_HASH: [u8; 32] = [0u8; 32];

/// Who acted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ActorKind {
    Customer,
    Operator,
    System,
    Anonymous,
}

impl ActorKind {
    pub const ALL: [ActorKind; 4] = [ActorKind::Customer, ActorKind::Operator, ActorKind::System, ActorKind::Anonymous];

    fn code(self) -> u8 {
        match self {
            ActorKind::Customer => 1,
            ActorKind::Operator => 2,
            ActorKind::System => 3,
            ActorKind::Anonymous => 4,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ActorKind::Customer => "customer",
            ActorKind::Operator => "operator",
            ActorKind::System => "system",
            ActorKind::Anonymous => "anonymous",
        }
    }

    pub fn parse(s: &str) -> Option<ActorKind> {
        ActorKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// What happened, without its place in the chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub actor_kind: ActorKind,
    /// The individual: customer id, operator id, the system component, or what an anonymous caller claimed.
    pub actor_id: String,
    /// The operator's role at the time, `customer`, or the system component's role.
    pub role: String,
    /// The terminal: the client's IP address, or the host/instance for system actions.
    pub terminal: String,
    pub action: String,
    pub object: String,
    /// sha256 of the request body (of nothing for requests without one).
    pub request_digest: [u8; 32],
    pub outcome: String,
}

impl Record {
    /// The digest of a request body.
    pub fn digest(body: &[u8]) -> [u8; 32] {
        Sha256::digest(body).into()
    }
}

/// An entry in its place in the chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    pub prev_hash: [u8; 32],
    pub at_ms: i64,
    pub record: Record,
}

/// An entry with its hash and the audit key's signature, as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedEntry {
    pub entry: Entry,
    pub hash: [u8; 32],
    pub signature: [u8; 64],
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditError {
    #[error("audit field {field} is {len} bytes long; at most {FIELD_LEN_MAX} are allowed")]
    FieldTooLong { field: &'static str, len: usize },
    #[error("audit sequence number overflow")]
    SeqOverflow,
}

/// Shortens `s` to at most [`FIELD_LEN_MAX`] bytes on a character boundary, marking the cut.
pub fn clip(s: &str) -> String {
    if s.len() <= FIELD_LEN_MAX {
        return s.to_string();
    }
    const MARK: &str = "…";
    let mut end = FIELD_LEN_MAX - MARK.len();
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{MARK}", &s[..end])
}

fn put_text(out: &mut Vec<u8>, field: &'static str, s: &str) -> Result<(), AuditError> {
    if s.len() > FIELD_LEN_MAX {
        return Err(AuditError::FieldTooLong { field, len: s.len() });
    }
    // FIELD_LEN_MAX fits in a u32 by far.
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

impl Entry {
    /// The canonical encoding (module docs).
    pub fn encode(&self) -> Result<Vec<u8>, AuditError> {
        let r = &self.record;
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(DOMAIN_TAG);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.prev_hash);
        out.extend_from_slice(&self.at_ms.to_be_bytes());
        out.push(r.actor_kind.code());
        put_text(&mut out, "actor_id", &r.actor_id)?;
        put_text(&mut out, "role", &r.role)?;
        put_text(&mut out, "terminal", &r.terminal)?;
        put_text(&mut out, "action", &r.action)?;
        put_text(&mut out, "object", &r.object)?;
        out.extend_from_slice(&r.request_digest);
        put_text(&mut out, "outcome", &r.outcome)?;
        Ok(out)
    }

    pub fn hash(&self) -> Result<[u8; 32], AuditError> {
        Ok(Sha256::digest(self.encode()?).into())
    }

    /// The entry that follows `head` (`None`: the chain is empty, so this is entry 1).
    pub fn next(head: Option<(u64, [u8; 32])>, at_ms: i64, record: Record) -> Result<Entry, AuditError> {
        let (seq, prev_hash) = match head {
            None => (1, ZERO_HASH),
            Some((seq, hash)) => (seq.checked_add(1).ok_or(AuditError::SeqOverflow)?, hash),
        };
        Ok(Entry { seq, prev_hash, at_ms, record })
    }
}

/// The audit signing key. `Debug` shows only the public key; the secret is zeroized on drop.
pub struct AuditKey(SigningKey);

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AuditKey(public {})", self.public_key_hex())
    }
}

impl AuditKey {
    /// From 32 secret bytes (generated by the caller from the OS CSPRNG; this module has no randomness).
    pub fn from_secret_bytes(secret: &[u8; 32]) -> AuditKey {
        AuditKey(SigningKey::from_bytes(secret))
    }

    pub fn secret_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    pub fn public_key(&self) -> VerifyingKey {
        self.0.verifying_key()
    }

    pub fn public_key_hex(&self) -> String {
        hex::encode(self.public_key().as_bytes())
    }

    /// Hashes and signs an entry.
    pub fn seal(&self, entry: Entry) -> Result<SignedEntry, AuditError> {
        let bytes = entry.encode()?;
        let hash = Sha256::digest(&bytes).into();
        let signature = self.0.sign(&bytes).to_bytes();
        Ok(SignedEntry { entry, hash, signature })
    }

    /// The genesis record pinning this key.
    pub fn genesis_record(&self, terminal: &str) -> Record {
        Record {
            actor_kind: ActorKind::System,
            actor_id: "kinko".into(),
            role: "audit".into(),
            terminal: terminal.into(),
            action: GENESIS_ACTION.into(),
            object: format!("{GENESIS_KEY_PREFIX}{}", self.public_key_hex()),
            request_digest: Record::digest(b""),
            outcome: "ok".into(),
        }
    }
}

/// Parses a hex Ed25519 public key (64 hex digits).
pub fn parse_public_key(hex_key: &str) -> Option<VerifyingKey> {
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(hex_key.trim(), &mut bytes).ok()?;
    VerifyingKey::from_bytes(&bytes).ok()
}

/// Why an entry failed verification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadReason {
    #[error("the chain is empty: no genesis entry")]
    Empty,
    #[error("expected seq {expected} here, found {found}: an entry was deleted, inserted or moved")]
    OutOfSequence { expected: u64, found: u64 },
    #[error("the first entry is not a genesis entry pinning the audit key")]
    NotGenesis,
    #[error("a genesis entry after the first")]
    SecondGenesis,
    #[error("the genesis pins audit key {found}, not the expected {expected}")]
    KeyMismatch { expected: String, found: String },
    #[error("prev_hash does not match the previous entry's hash")]
    PrevHashMismatch,
    #[error("the stored hash does not match the entry's content: the entry was edited")]
    HashMismatch,
    #[error("the signature does not verify under the audit key")]
    BadSignature,
    #[error("the entry cannot be encoded: {0}")]
    Encoding(AuditError),
    #[error("the chain ends at seq {head}, but at least {expected} entries were recorded before: entries were cut off")]
    Truncated { head: u64, expected: u64 },
}

/// The first bad entry: its position in the sequence read (1-based), its seq as stored, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("first bad entry: seq {seq} (position {position}): {reason}")]
pub struct VerifyError {
    pub position: u64,
    pub seq: u64,
    pub reason: BadReason,
}

/// What a successful verification covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub count: u64,
    pub head_seq: u64,
    pub head_hash: [u8; 32],
    pub public_key_hex: String,
}

/// Checks a chain entry by entry (so a long chain is streamed, not held): sequence numbers 1, 2, 3, …
/// with no gap, each `prev_hash` the previous hash, each stored hash the content's hash, each signature
/// valid under the key the genesis pins — which must be `pinned` when given. Stops at the first failure.
#[derive(Debug)]
pub struct Verifier {
    pinned: Option<VerifyingKey>,
    key: Option<VerifyingKey>,
    position: u64,
    head: Option<(u64, [u8; 32])>,
}

impl Verifier {
    pub fn new(pinned: Option<VerifyingKey>) -> Verifier {
        Verifier { pinned, key: None, position: 0, head: None }
    }

    pub fn push(&mut self, e: &SignedEntry) -> Result<(), VerifyError> {
        self.position += 1;
        let bad = |reason| VerifyError { position: self.position, seq: e.entry.seq, reason };
        let (expected_seq, expected_prev) = match self.head {
            None => (1, ZERO_HASH),
            Some((seq, hash)) => (seq.saturating_add(1), hash),
        };
        if e.entry.seq != expected_seq {
            return Err(bad(BadReason::OutOfSequence { expected: expected_seq, found: e.entry.seq }));
        }
        let bytes = e.entry.encode().map_err(|err| bad(BadReason::Encoding(err)))?;
        let hash: [u8; 32] = Sha256::digest(&bytes).into();
        if hash != e.hash {
            return Err(bad(BadReason::HashMismatch));
        }
        if e.entry.prev_hash != expected_prev {
            return Err(bad(BadReason::PrevHashMismatch));
        }
        let is_genesis = e.entry.record.action == GENESIS_ACTION;
        let key = match self.key {
            Some(k) => {
                if is_genesis {
                    return Err(bad(BadReason::SecondGenesis));
                }
                k
            }
            None => {
                let found = e.entry.record.object.strip_prefix(GENESIS_KEY_PREFIX).and_then(parse_public_key);
                let found = match (is_genesis, found) {
                    (true, Some(k)) => k,
                    _ => return Err(bad(BadReason::NotGenesis)),
                };
                if let Some(p) = self.pinned
                    && p != found
                {
                    return Err(bad(BadReason::KeyMismatch {
                        expected: hex::encode(p.as_bytes()),
                        found: hex::encode(found.as_bytes()),
                    }));
                }
                found
            }
        };
        let signature = Signature::from_bytes(&e.signature);
        if key.verify_strict(&bytes, &signature).is_err() {
            return Err(bad(BadReason::BadSignature));
        }
        self.key = Some(key);
        self.head = Some((e.entry.seq, hash));
        Ok(())
    }

    /// The result once every entry was pushed. An empty chain is an error: even a fresh system has its
    /// genesis.
    pub fn finish(self) -> Result<Verified, VerifyError> {
        self.finish_at_least(0)
    }

    /// [`Verifier::finish`], also refusing a chain shorter than `min_seq` (a head seq kept outside the
    /// system, e.g. from a periodic report): the only way to see entries cut off at the end.
    pub fn finish_at_least(self, min_seq: u64) -> Result<Verified, VerifyError> {
        let (Some((head_seq, head_hash)), Some(key)) = (self.head, self.key) else {
            return Err(VerifyError { position: 1, seq: 1, reason: BadReason::Empty });
        };
        if head_seq < min_seq {
            return Err(VerifyError {
                position: self.position + 1,
                seq: head_seq + 1,
                reason: BadReason::Truncated { head: head_seq, expected: min_seq },
            });
        }
        Ok(Verified { count: self.position, head_seq, head_hash, public_key_hex: hex::encode(key.as_bytes()) })
    }
}

/// Verifies a whole chain held in memory.
pub fn verify<'a>(
    entries: impl IntoIterator<Item = &'a SignedEntry>,
    pinned: Option<VerifyingKey>,
) -> Result<Verified, VerifyError> {
    let mut v = Verifier::new(pinned);
    for e in entries {
        v.push(e)?;
    }
    v.finish()
}

/// What the inspection sees of one operator request: its approvals beside its execution (Table A-1's
/// inspect step, K12).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestFacts {
    pub id: String,
    pub required: i64,
    pub requester: String,
    /// The operator who executed it (the system marker for automatic ones), if executed.
    pub executor: Option<String>,
    pub executed_at_ms: Option<i64>,
    /// Operators who approved (not rejected).
    pub approvers: Vec<String>,
}

/// A mismatch the inspection flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// Machine-readable: `executed_without_quorum`, `executor_is_approver`, `self_approval`,
    /// `executed_after_revocation`, `signature_without_approved_intent`, `audit_chain_broken`.
    pub code: &'static str,
    /// The request, withdrawal, key access log row or audit entry concerned.
    pub subject: String,
    pub detail: String,
}

/// Flags what should not have happened to an executed request: fewer distinct approvals than required,
/// an executor or requester among the approvers, an approver revoked (`revoked_at_ms`, operator → time
/// of the revocation) at or before the execution.
pub fn inspect_request(r: &RequestFacts, revoked_at_ms: &std::collections::BTreeMap<String, i64>) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut approvers: Vec<&str> = r.approvers.iter().map(String::as_str).collect();
    approvers.sort_unstable();
    approvers.dedup();
    let finding = |code, detail: String| Finding { code, subject: r.id.clone(), detail };
    if approvers.contains(&r.requester.as_str()) {
        out.push(finding("self_approval", format!("requester {} approved their own request", r.requester)));
    }
    let Some(executed_at_ms) = r.executed_at_ms else { return out };
    if (approvers.len() as i64) < r.required {
        out.push(finding(
            "executed_without_quorum",
            format!("executed with {} of {} required approvals", approvers.len(), r.required),
        ));
    }
    if let Some(executor) = &r.executor
        && approvers.contains(&executor.as_str())
    {
        out.push(finding("executor_is_approver", format!("{executor} approved and executed it")));
    }
    for a in &approvers {
        if let Some(at) = revoked_at_ms.get(*a)
            && *at <= executed_at_ms
        {
            out.push(finding(
                "executed_after_revocation",
                format!("approver {a} was revoked at {at}, before the execution at {executed_at_ms}"),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(b: u8) -> AuditKey {
        AuditKey::from_secret_bytes(&[b; 32])
    }

    fn record(i: u64) -> Record {
        Record {
            actor_kind: ActorKind::ALL[(i % 4) as usize],
            actor_id: format!("actor-{i}"),
            role: "customer".into(),
            terminal: "127.0.0.1".into(),
            action: "POST /v1/withdrawals".into(),
            object: format!("/v1/withdrawals/{i}"),
            request_digest: Record::digest(format!("body {i}").as_bytes()),
            outcome: "attempt".into(),
        }
    }

    /// A valid chain: the genesis and `n - 1` entries.
    fn chain(k: &AuditKey, n: u64) -> Vec<SignedEntry> {
        let mut out: Vec<SignedEntry> = Vec::new();
        for i in 0..n {
            let head = out.last().map(|e| (e.entry.seq, e.hash));
            let r = if i == 0 { k.genesis_record("host") } else { record(i) };
            out.push(k.seal(Entry::next(head, 1_000 + i as i64, r).unwrap()).unwrap());
        }
        out
    }

    fn first_bad(entries: &[SignedEntry], k: &AuditKey) -> Option<(u64, BadReason)> {
        verify(entries, Some(k.public_key())).err().map(|e| (e.seq, e.reason))
    }

    #[test]
    fn l6_untampered_chain_verifies_with_pinned_key() {
        let k = key(7);
        let c = chain(&k, 10);
        let v = verify(&c, Some(k.public_key())).unwrap();
        assert_eq!((v.count, v.head_seq, v.head_hash), (10, 10, c[9].hash));
        assert_eq!(v.public_key_hex, k.public_key_hex());
        // Without a pinned key the genesis's key is taken (trust on first use).
        assert!(verify(&c, None).is_ok());
    }

    #[test]
    fn l6_edit_of_any_field_names_that_entry() {
        let k = key(1);
        let edits: Vec<fn(&mut Entry)> = vec![
            |e| e.at_ms += 1,
            |e| e.record.actor_kind = ActorKind::System,
            |e| e.record.actor_id.push('x'),
            |e| e.record.role = "administrator".into(),
            |e| e.record.terminal = "10.0.0.9".into(),
            |e| e.record.action.push('x'),
            |e| e.record.object.push('x'),
            |e| e.record.request_digest[0] ^= 1,
            |e| e.record.outcome = "201".into(),
        ];
        for edit in edits {
            let mut c = chain(&k, 6);
            edit(&mut c[3].entry);
            assert_eq!(first_bad(&c, &k), Some((4, BadReason::HashMismatch)));
            // Recomputing the stored hash does not help: the signature no longer matches.
            c[3].hash = c[3].entry.hash().unwrap();
            assert_eq!(first_bad(&c, &k), Some((4, BadReason::BadSignature)));
        }
    }

    #[test]
    fn l6_resigning_with_another_key_is_caught_at_the_genesis_or_signature() {
        let k = key(1);
        let forger = key(2);
        // A whole chain re-signed by another key: the pinned key refuses its genesis.
        let forged = chain(&forger, 4);
        assert!(matches!(first_bad(&forged, &k), Some((1, BadReason::KeyMismatch { .. }))));
        // One entry re-signed by another key, hashes and links intact.
        let mut c = chain(&k, 5);
        c[2] = forger.seal(c[2].entry.clone()).unwrap();
        assert_eq!(first_bad(&c, &k), Some((3, BadReason::BadSignature)));
    }

    #[test]
    fn l6_genesis_rules() {
        let k = key(1);
        assert_eq!(verify(&[], Some(k.public_key())).unwrap_err().reason, BadReason::Empty);
        // A chain whose first entry is an ordinary one.
        let c = vec![k.seal(Entry::next(None, 1, record(1)).unwrap()).unwrap()];
        assert_eq!(first_bad(&c, &k), Some((1, BadReason::NotGenesis)));
        // A second genesis later (an attempt to pin a new key mid-chain) is refused even if signed.
        let mut c = chain(&k, 3);
        let head = Some((c[2].entry.seq, c[2].hash));
        c.push(k.seal(Entry::next(head, 9, k.genesis_record("h")).unwrap()).unwrap());
        assert_eq!(first_bad(&c, &k), Some((4, BadReason::SecondGenesis)));
    }

    #[test]
    fn l6_truncation_is_seen_only_against_an_outside_head() {
        let k = key(1);
        let c = chain(&k, 5);
        let mut v = Verifier::new(Some(k.public_key()));
        for e in &c[..3] {
            v.push(e).unwrap();
        }
        let err = v.finish_at_least(5).unwrap_err();
        assert_eq!((err.seq, err.reason), (4, BadReason::Truncated { head: 3, expected: 5 }));
    }

    #[test]
    fn l6_encoding_is_unambiguous_when_text_moves_between_fields() {
        let k = key(1);
        let mut a = record(1);
        let mut b = record(1);
        a.actor_id = "ab".into();
        a.role = "c".into();
        b.actor_id = "a".into();
        b.role = "bc".into();
        let ea = Entry::next(None, 1, a).unwrap();
        let eb = Entry::next(None, 1, b).unwrap();
        assert_ne!(ea.encode().unwrap(), eb.encode().unwrap());
        assert_ne!(k.seal(ea).unwrap().hash, k.seal(eb).unwrap().hash);
    }

    #[test]
    fn l6_oversized_fields_are_refused_and_clip_bounds_them() {
        let mut r = record(1);
        r.object = "é".repeat(FIELD_LEN_MAX);
        let e = Entry::next(None, 1, r.clone()).unwrap();
        assert!(matches!(e.encode(), Err(AuditError::FieldTooLong { field: "object", .. })));
        r.object = clip(&r.object);
        assert!(r.object.len() <= FIELD_LEN_MAX);
        assert!(Entry::next(None, 1, r).unwrap().encode().is_ok());
        assert_eq!(clip("short"), "short");
        assert_eq!(Entry::next(Some((u64::MAX, ZERO_HASH)), 1, record(1)), Err(AuditError::SeqOverflow));
    }

    #[test]
    fn l6_debug_shows_no_secret() {
        let k = key(9);
        let shown = format!("{k:?}");
        assert!(!shown.contains(&hex::encode(k.secret_bytes())));
        assert!(shown.contains(&k.public_key_hex()));
    }

    fn facts() -> RequestFacts {
        RequestFacts {
            id: "r1".into(),
            required: 2,
            requester: "op-a".into(),
            executor: Some("op-d".into()),
            executed_at_ms: Some(100),
            approvers: vec!["op-b".into(), "op-c".into()],
        }
    }

    fn codes(f: &[Finding]) -> Vec<&'static str> {
        f.iter().map(|f| f.code).collect()
    }

    #[test]
    fn l2_inspection_flags_each_mismatch_and_passes_a_clean_request() {
        let none = std::collections::BTreeMap::new();
        assert!(inspect_request(&facts(), &none).is_empty());
        // The same approver twice counts once.
        let mut r = facts();
        r.approvers = vec!["op-b".into(), "op-b".into()];
        assert_eq!(codes(&inspect_request(&r, &none)), ["executed_without_quorum"]);
        let mut r = facts();
        r.executor = Some("op-c".into());
        assert_eq!(codes(&inspect_request(&r, &none)), ["executor_is_approver"]);
        let mut r = facts();
        r.approvers.push("op-a".into());
        assert_eq!(codes(&inspect_request(&r, &none)), ["self_approval"]);
        let revoked = std::collections::BTreeMap::from([("op-b".to_string(), 100_i64)]);
        assert_eq!(codes(&inspect_request(&facts(), &revoked)), ["executed_after_revocation"]);
        // Revoked after the execution: the approval counted rightly.
        let later = std::collections::BTreeMap::from([("op-b".to_string(), 101_i64)]);
        assert!(inspect_request(&facts(), &later).is_empty());
        // Not executed yet: nothing about execution is flagged.
        let mut r = facts();
        r.executed_at_ms = None;
        r.approvers.clear();
        assert!(inspect_request(&r, &none).is_empty());
    }

    #[derive(Clone, Debug)]
    enum Tamper {
        Edit(usize),
        Delete(usize),
        Insert(usize),
        Swap(usize),
    }

    fn tamper() -> impl Strategy<Value = (usize, Tamper)> {
        (3usize..12).prop_flat_map(|n| {
            (
                Just(n),
                prop_oneof![
                    (0..n).prop_map(Tamper::Edit),
                    // The last entry's deletion is a truncation: see the test above.
                    (0..n - 1).prop_map(Tamper::Delete),
                    (0..n).prop_map(Tamper::Insert),
                    (0..n - 1).prop_map(Tamper::Swap),
                ],
            )
        })
    }

    proptest! {
        /// Any single edit, deletion (not of the last entry), insertion or swap of neighbours is found,
        /// and the reported entry is the first one out of place.
        #[test]
        fn l6_any_tamper_names_the_first_bad_entry((n, t) in tamper()) {
            let k = key(3);
            let forger = key(4);
            let mut c = chain(&k, n as u64);
            let expected_seq = match t {
                Tamper::Edit(i) => {
                    c[i].entry.record.outcome.push('!');
                    i as u64 + 1
                }
                Tamper::Delete(i) => {
                    c.remove(i);
                    // The entry now at position i is seq i + 2 where i + 1 was expected.
                    i as u64 + 2
                }
                Tamper::Insert(i) => {
                    // A forged entry that links correctly to its predecessor and carries the expected seq.
                    let head = if i == 0 { None } else { Some((c[i - 1].entry.seq, c[i - 1].hash)) };
                    let forged = forger.seal(Entry::next(head, 5, record(99)).unwrap()).unwrap();
                    c.insert(i, forged);
                    i as u64 + 1
                }
                Tamper::Swap(i) => {
                    c.swap(i, i + 1);
                    i as u64 + 2
                }
            };
            let err = verify(&c, Some(k.public_key())).unwrap_err();
            prop_assert_eq!(err.seq, expected_seq, "{:?}", err);
        }

        #[test]
        fn l6_untampered_chains_of_any_length_verify(n in 1u64..20) {
            let k = key(5);
            let c = chain(&k, n);
            prop_assert_eq!(verify(&c, Some(k.public_key())).unwrap().count, n);
        }
    }
}
