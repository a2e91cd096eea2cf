//! Onboarding (U1, M3): e-mail verification and the KYC state machine, pure.
//!
//! A customer's identity check moves through
//!
//! ```text
//! not_submitted ──submit──▶ submitted ──take_for_review──▶ under_review ──verify──▶ verified
//!                              ▲                                  │
//!                              └───────────submit──── rejected ◀──┘ reject
//! ```
//!
//! `verified` is final: nothing moves a customer out of it here (ongoing re-checks by risk are a new
//! submission cycle the custodian starts outside this machine). Every other move is refused with
//! [`KycError::IllegalTransition`], so the store and the API never decide a transition themselves.
//!
//! Documents are opaque references (a kind and the custodian's reference into its own document system):
//! kinko never stores the document itself, only what an operator needs to look it up.

use serde::{Deserialize, Serialize};

/// How long an e-mail verification token stays usable by default (24 hours).
pub const EMAIL_TOKEN_TTL_MS: i64 = 24 * 60 * 60 * 1000;
/// Minimum time between two verification mails to one customer (resend rate limit).
pub const EMAIL_RESEND_INTERVAL_MS: i64 = 60 * 1000;
/// Window over which [`EMAIL_TOKENS_PER_WINDOW_MAX`] counts.
pub const EMAIL_RESEND_WINDOW_MS: i64 = 24 * 60 * 60 * 1000;
/// Verification mails (the registration one included) one customer may get per window.
pub const EMAIL_TOKENS_PER_WINDOW_MAX: u32 = 6;

/// Bound on the documents of one submission.
pub const DOCUMENTS_MAX: usize = 10;
/// Bound on a document kind (`passport`, `residence_card`, …).
pub const DOCUMENT_KIND_LEN_MAX: usize = 32;
/// Bound on a document reference, in bytes.
pub const DOCUMENT_REFERENCE_LEN_MAX: usize = 200;
/// Bound on an operator's decision reason, in characters.
pub const REASON_CHARS_MAX: usize = 500;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KycState {
    NotSubmitted,
    Submitted,
    UnderReview,
    Verified,
    Rejected,
}

impl KycState {
    pub const ALL: [KycState; 5] =
        [KycState::NotSubmitted, KycState::Submitted, KycState::UnderReview, KycState::Verified, KycState::Rejected];

    pub fn as_str(self) -> &'static str {
        match self {
            KycState::NotSubmitted => "not_submitted",
            KycState::Submitted => "submitted",
            KycState::UnderReview => "under_review",
            KycState::Verified => "verified",
            KycState::Rejected => "rejected",
        }
    }

    pub fn parse(s: &str) -> Option<KycState> {
        KycState::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Whether money may leave the customer's account (withdrawals, internal transfers): only once
    /// verified. Deposits never depend on this.
    pub fn may_move_funds(self) -> bool {
        self == KycState::Verified
    }

    /// Submitted or under review: a submission is waiting for the operators.
    pub fn is_open(self) -> bool {
        matches!(self, KycState::Submitted | KycState::UnderReview)
    }
}

impl std::fmt::Display for KycState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What someone does to a customer's KYC state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KycAction {
    /// The customer submits documents (first time, or again after a rejection).
    Submit,
    /// An operator takes a submitted case for review.
    TakeForReview,
    /// An operator decides the reviewed case: identity verified.
    Verify,
    /// An operator decides the reviewed case: not verified.
    Reject,
}

impl KycAction {
    pub fn as_str(self) -> &'static str {
        match self {
            KycAction::Submit => "submit",
            KycAction::TakeForReview => "take_for_review",
            KycAction::Verify => "verify",
            KycAction::Reject => "reject",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KycError {
    #[error("cannot {} a KYC case that is {from}", action.as_str())]
    IllegalTransition { from: KycState, action: KycAction },
    #[error("the e-mail address must be verified before identity documents are submitted")]
    EmailUnverified,
    #[error("the operator who reviewed a case may not decide it (four-eyes)")]
    ReviewerDecides,
}

/// The one place a KYC transition is decided.
pub fn transition(from: KycState, action: KycAction) -> Result<KycState, KycError> {
    use KycAction as A;
    use KycState as S;
    match (from, action) {
        (S::NotSubmitted | S::Rejected, A::Submit) => Ok(S::Submitted),
        (S::Submitted, A::TakeForReview) => Ok(S::UnderReview),
        (S::UnderReview, A::Verify) => Ok(S::Verified),
        (S::UnderReview, A::Reject) => Ok(S::Rejected),
        _ => Err(KycError::IllegalTransition { from, action }),
    }
}

/// A customer submits: the e-mail must be verified first (U1: the contact route is proven before the
/// identity), then the state must allow a submission.
pub fn submit(email_verified: bool, from: KycState) -> Result<KycState, KycError> {
    if !email_verified {
        return Err(KycError::EmailUnverified);
    }
    transition(from, KycAction::Submit)
}

/// An operator decides a case under review. The decider must not be the reviewer: one person both
/// examining the documents and signing off is exactly what four eyes prevent.
pub fn decide(from: KycState, verified: bool, reviewer_id: &str, decider_id: &str) -> Result<KycState, KycError> {
    let action = if verified { KycAction::Verify } else { KycAction::Reject };
    let to = transition(from, action)?;
    if reviewer_id == decider_id {
        return Err(KycError::ReviewerDecides);
    }
    Ok(to)
}

/// One identity document, by reference only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KycDocument {
    /// `[a-z0-9_]`, 1 to 32 characters, e.g. `passport`, `residence_card`, `proof_of_address`.
    pub kind: String,
    /// The custodian's reference to the document in its own document system (1 to 200 bytes, printable).
    pub reference: String,
}

/// A document list that cannot be accepted: which entry (`None` for the list itself), which field, why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}: {reason}", self.field_path())]
pub struct DocumentError {
    pub index: Option<usize>,
    /// `kind`, `reference` or (for the whole list) `documents`.
    pub field: &'static str,
    pub reason: &'static str,
}

impl DocumentError {
    /// `documents`, `documents[2].reference`, … — the JSON path of the fault.
    pub fn field_path(&self) -> String {
        match self.index {
            Some(i) => format!("documents[{i}].{}", self.field),
            None => "documents".to_string(),
        }
    }
}

/// Checks every bound of a document list: 1 to [`DOCUMENTS_MAX`] entries, each kind and reference
/// well-formed, no entry twice.
pub fn validate_documents(documents: &[KycDocument]) -> Result<(), DocumentError> {
    let list = |reason| Err(DocumentError { index: None, field: "documents", reason });
    if documents.is_empty() {
        return list("must list at least one document");
    }
    if documents.len() > DOCUMENTS_MAX {
        return list("must list at most 10 documents");
    }
    for (i, d) in documents.iter().enumerate() {
        let bad = |field, reason| Err(DocumentError { index: Some(i), field, reason });
        if d.kind.is_empty()
            || d.kind.len() > DOCUMENT_KIND_LEN_MAX
            || !d.kind.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return bad("kind", "must be 1 to 32 characters of a-z, 0-9 and '_'");
        }
        if d.reference.trim().is_empty()
            || d.reference.len() > DOCUMENT_REFERENCE_LEN_MAX
            || d.reference.chars().any(char::is_control)
        {
            return bad("reference", "must be 1 to 200 bytes of printable text");
        }
        if documents[..i].contains(d) {
            return bad("reference", "is listed twice");
        }
    }
    Ok(())
}

/// Checks an operator's decision reason: required (the record must say why), one bounded paragraph.
pub fn validate_reason(reason: &str) -> Result<(), &'static str> {
    if reason.trim().is_empty() {
        return Err("is required");
    }
    if reason.chars().count() > REASON_CHARS_MAX || reason.chars().any(|c| c.is_control() && c != '\n') {
        return Err("must be at most 500 characters without control characters");
    }
    Ok(())
}

/// An e-mail verification token as stored (by hash), for [`email_token_usable`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EmailToken {
    pub expires_at_ms: i64,
    /// When it was used (or superseded by a newer one); `None` while unused.
    pub used_at_ms: Option<i64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EmailTokenError {
    #[error("unknown token")]
    Unknown,
    #[error("token already used")]
    Used,
    #[error("token expired")]
    Expired,
}

/// Whether a presented token may verify the e-mail now: known, unused, and not yet expired. Single use:
/// the caller marks it used in the same transaction.
pub fn email_token_usable(token: Option<EmailToken>, now_ms: i64) -> Result<(), EmailTokenError> {
    let token = token.ok_or(EmailTokenError::Unknown)?;
    if token.used_at_ms.is_some() {
        return Err(EmailTokenError::Used);
    }
    if now_ms >= token.expires_at_ms {
        return Err(EmailTokenError::Expired);
    }
    Ok(())
}

/// The resend rate limit: at most one mail per [`EMAIL_RESEND_INTERVAL_MS`] and
/// [`EMAIL_TOKENS_PER_WINDOW_MAX`] per [`EMAIL_RESEND_WINDOW_MS`]. `recent_created_ms` are the creation
/// times of the customer's tokens within the window (any order). `Err` carries when the next mail may go.
pub fn email_resend_allowed(recent_created_ms: &[i64], now_ms: i64) -> Result<(), i64> {
    let window_start = now_ms.saturating_sub(EMAIL_RESEND_WINDOW_MS);
    let mut in_window: Vec<i64> = recent_created_ms.iter().copied().filter(|t| *t > window_start).collect();
    in_window.sort_unstable();
    let mut next_ms = now_ms;
    if let Some(last) = in_window.last() {
        next_ms = next_ms.max(last.saturating_add(EMAIL_RESEND_INTERVAL_MS));
    }
    let max = EMAIL_TOKENS_PER_WINDOW_MAX as usize;
    if in_window.len() >= max {
        // The oldest mail that must leave the window before another fits.
        let oldest = in_window[in_window.len() - max];
        next_ms = next_ms.max(oldest.saturating_add(EMAIL_RESEND_WINDOW_MS));
    }
    if next_ms <= now_ms { Ok(()) } else { Err(next_ms) }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACTIONS: [KycAction; 4] = [KycAction::Submit, KycAction::TakeForReview, KycAction::Verify, KycAction::Reject];

    #[test]
    fn u1_kyc_transition_table_is_exactly_the_documented_one() {
        use KycAction as A;
        use KycState as S;
        let allowed = [
            (S::NotSubmitted, A::Submit, S::Submitted),
            (S::Submitted, A::TakeForReview, S::UnderReview),
            (S::UnderReview, A::Verify, S::Verified),
            (S::UnderReview, A::Reject, S::Rejected),
            (S::Rejected, A::Submit, S::Submitted),
        ];
        let mut legal = 0;
        for from in KycState::ALL {
            for action in ACTIONS {
                let expected = allowed.iter().find(|(f, a, _)| *f == from && *a == action).map(|(_, _, to)| *to);
                match (transition(from, action), expected) {
                    (Ok(to), Some(e)) => {
                        assert_eq!(to, e);
                        legal += 1;
                    }
                    (Err(KycError::IllegalTransition { from: f, action: a }), None) => {
                        assert_eq!((f, a), (from, action));
                    }
                    (got, want) => panic!("{from} {action:?}: got {got:?}, want {want:?}"),
                }
            }
        }
        assert_eq!(legal, allowed.len());
    }

    #[test]
    fn u1_verified_is_final_and_only_verified_moves_funds() {
        for action in ACTIONS {
            assert!(transition(KycState::Verified, action).is_err(), "{action:?}");
        }
        for s in KycState::ALL {
            assert_eq!(s.may_move_funds(), s == KycState::Verified, "{s}");
            assert_eq!(KycState::parse(s.as_str()), Some(s));
        }
        assert_eq!(KycState::parse("Verified"), None);
    }

    #[test]
    fn u1_submission_needs_a_verified_email_and_a_rejection_allows_resubmission() {
        assert_eq!(submit(false, KycState::NotSubmitted), Err(KycError::EmailUnverified));
        assert_eq!(submit(true, KycState::NotSubmitted), Ok(KycState::Submitted));
        assert_eq!(submit(true, KycState::Rejected), Ok(KycState::Submitted));
        assert!(matches!(submit(true, KycState::UnderReview), Err(KycError::IllegalTransition { .. })));
        assert!(matches!(submit(true, KycState::Verified), Err(KycError::IllegalTransition { .. })));
    }

    #[test]
    fn u1_reviewer_never_decides_their_own_review() {
        assert_eq!(decide(KycState::UnderReview, true, "so1", "om1"), Ok(KycState::Verified));
        assert_eq!(decide(KycState::UnderReview, false, "so1", "om1"), Ok(KycState::Rejected));
        assert_eq!(decide(KycState::UnderReview, true, "om1", "om1"), Err(KycError::ReviewerDecides));
        // The state is checked first: deciding a case nobody reviewed is a state error, not four-eyes.
        assert!(matches!(decide(KycState::Submitted, true, "", "om1"), Err(KycError::IllegalTransition { .. })));
    }

    fn doc(kind: &str, reference: &str) -> KycDocument {
        KycDocument { kind: kind.into(), reference: reference.into() }
    }

    #[test]
    fn u1_m3_documents_are_bounded_references() {
        assert!(validate_documents(&[doc("passport", "dms://2026/0001")]).is_ok());
        let err = |docs: &[KycDocument]| validate_documents(docs).unwrap_err().field_path();
        assert_eq!(err(&[]), "documents");
        assert_eq!(err(&vec![doc("passport", "r"); 11]), "documents");
        assert_eq!(err(&[doc("passport", "a"), doc("Passport", "b")]), "documents[1].kind");
        assert_eq!(err(&[doc(&"k".repeat(33), "b")]), "documents[0].kind");
        assert_eq!(err(&[doc("passport", " ")]), "documents[0].reference");
        assert_eq!(err(&[doc("passport", &"r".repeat(201))]), "documents[0].reference");
        assert_eq!(err(&[doc("passport", "a\nb")]), "documents[0].reference");
        assert_eq!(err(&[doc("passport", "a"), doc("passport", "a")]), "documents[1].reference");
        assert!(validate_documents(&vec![doc("passport", &"r".repeat(200)); 1]).is_ok());
    }

    #[test]
    fn u1_decision_reason_required_and_bounded() {
        assert!(validate_reason("documents match").is_ok());
        assert!(validate_reason("  ").is_err());
        assert!(validate_reason(&"x".repeat(501)).is_err());
        assert!(validate_reason("a\u{7}").is_err());
    }

    #[test]
    fn m3_email_token_single_use_and_expiring() {
        let t = EmailToken { expires_at_ms: 1_000, used_at_ms: None };
        assert_eq!(email_token_usable(Some(t), 999), Ok(()));
        assert_eq!(email_token_usable(Some(t), 1_000), Err(EmailTokenError::Expired));
        assert_eq!(email_token_usable(Some(EmailToken { used_at_ms: Some(5), ..t }), 10), Err(EmailTokenError::Used));
        assert_eq!(email_token_usable(None, 10), Err(EmailTokenError::Unknown));
    }

    #[test]
    fn m3_email_resend_rate_limited() {
        let now = 10 * EMAIL_RESEND_WINDOW_MS;
        assert_eq!(email_resend_allowed(&[], now), Ok(()));
        assert_eq!(email_resend_allowed(&[now - 1_000], now), Err(now - 1_000 + EMAIL_RESEND_INTERVAL_MS));
        assert_eq!(email_resend_allowed(&[now - EMAIL_RESEND_INTERVAL_MS], now), Ok(()));
        // Six in the window: the next one waits for the oldest to leave it.
        let six: Vec<i64> = (0..6).map(|i| now - EMAIL_RESEND_WINDOW_MS + 1_000 + i * 3_600_000).collect();
        assert_eq!(email_resend_allowed(&six, now), Err(six[0] + EMAIL_RESEND_WINDOW_MS));
        // Older than the window: not counted.
        let old: Vec<i64> = (0..20).map(|i| now - EMAIL_RESEND_WINDOW_MS - i).collect();
        assert_eq!(email_resend_allowed(&old, now), Ok(()));
    }
}
