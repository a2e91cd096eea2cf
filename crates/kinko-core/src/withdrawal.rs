//! The customer withdrawal (M13) as a persisted state machine. The store holds the state; this module
//! owns which transitions exist, so that every place that moves a withdrawal asks the same table.
//!
//! The safety rule behind the table: once a transaction for a withdrawal has been signed, it may already
//! be on the network (a crash can land between broadcast and the state write), so from `signed` on the
//! only way out is forward to `settled`. Holds are released only before a nonce is reserved, which is
//! also what keeps the hot wallet's nonce sequence free of gaps.
//!
//! A withdrawal that needs the customer's confirmation over a second channel (U4, U9) waits in
//! `awaiting_confirmation` with its amount held but no operator request and nothing for the pipeline:
//! only a confirmation moves it on (to the `approved` or `pending_approval` the policy decided at
//! creation), and an expiry or a cancel closes it with the hold released. It can never reach `signing`
//! without passing through `approved`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WithdrawalStatus {
    /// Accepted by the API; policy and hold not yet applied.
    Requested,
    /// Held, waiting for the customer's confirmation over a second channel (U4, U9); never claimed by the
    /// pipeline, never signed. Confirmed → the decision taken at creation applies; expired or cancelled →
    /// `cancelled`, hold released.
    AwaitingConfirmation,
    /// Waiting for operator approvals (the operators issue fills this in).
    PendingApproval,
    /// Policy passed and the amount is held; ready to build.
    Approved,
    /// Nonce and fees reserved and persisted; the unsigned payload is stored.
    Signing,
    /// A cold-wallet row (K14): nonce and fees reserved like `signing`, but only the offline signer can
    /// sign it. The pipeline never signs it; importing a verified signed bundle moves it to `signed`. An
    /// operator may still fail or cancel it: nothing has been signed online, and the offline signature,
    /// if one exists, is never imported after that.
    AwaitingOfflineSignature,
    /// The raw signed transaction is stored; it may or may not be on the network yet.
    Signed,
    /// Sent to the node at least once.
    Broadcast,
    /// Included in a block, waiting for the confirmation depth.
    Confirmed,
    /// Final: funds left the wallet, fee posted. Terminal.
    Settled,
    /// Refused or failed before anything was signed; hold released. Terminal.
    Failed,
    /// Cancelled before anything was signed; hold released. Terminal.
    Cancelled,
}

use WithdrawalStatus::*;

impl WithdrawalStatus {
    pub const ALL: [WithdrawalStatus; 12] = [
        Requested,
        AwaitingConfirmation,
        PendingApproval,
        Approved,
        Signing,
        AwaitingOfflineSignature,
        Signed,
        Broadcast,
        Confirmed,
        Settled,
        Failed,
        Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Requested => "requested",
            AwaitingConfirmation => "awaiting_confirmation",
            PendingApproval => "pending_approval",
            Approved => "approved",
            Signing => "signing",
            AwaitingOfflineSignature => "awaiting_offline_signature",
            Signed => "signed",
            Broadcast => "broadcast",
            Confirmed => "confirmed",
            Settled => "settled",
            Failed => "failed",
            Cancelled => "cancelled",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Settled | Failed | Cancelled)
    }

    /// Whether a signed transaction may exist; if so the withdrawal can only move towards `settled`.
    pub fn may_be_on_chain(self) -> bool {
        matches!(self, Signed | Broadcast | Confirmed | Settled)
    }

    /// The only transitions that exist.
    pub fn can_become(self, next: WithdrawalStatus) -> bool {
        matches!(
            (self, next),
            (Requested, AwaitingConfirmation | PendingApproval | Approved | Failed | Cancelled)
                // U4: only a second-channel confirmation moves it on, to what the policy decided.
                | (AwaitingConfirmation, PendingApproval | Approved | Failed | Cancelled)
                | (PendingApproval, Approved | Failed | Cancelled)
                | (Approved, Signing | AwaitingOfflineSignature | Failed | Cancelled)
                | (Signing, Signed)
                // K14: only an imported, verified offline signature moves it on; an operator may abandon it.
                | (AwaitingOfflineSignature, Signed | Failed | Cancelled)
                | (Signed, Broadcast)
                // A replacement transaction (fee bump, C4) goes back through `signed` for the same nonce.
                | (Broadcast, Signed | Confirmed)
                // A shallow re-org can un-include a transaction; it goes back to waiting.
                | (Confirmed, Broadcast | Settled)
        )
    }

    /// Whether the pipeline may ever act on it in this status: never before the customer confirmed (U4) and
    /// never before operators approved.
    pub fn is_pipeline_work(self) -> bool {
        matches!(self, Approved | Signing | Signed | Broadcast | Confirmed)
    }

    /// Whether the amount is held and nothing has been signed: closing it must release the hold.
    pub fn holds_unsigned(self) -> bool {
        matches!(self, AwaitingConfirmation | PendingApproval | Approved)
    }

    /// Whether a row waits for a signature made outside kinko's online signer (K14): the pipeline never
    /// claims it, and only an import moves it to `signed`.
    pub fn awaits_offline_signature(self) -> bool {
        matches!(self, AwaitingOfflineSignature)
    }

    pub fn transition(self, next: WithdrawalStatus) -> Result<WithdrawalStatus, TransitionError> {
        if self.can_become(next) { Ok(next) } else { Err(TransitionError { from: self.as_str(), to: next.as_str() }) }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("transition {from} → {to} is not allowed")]
pub struct TransitionError {
    pub from: &'static str,
    pub to: &'static str,
}

impl fmt::Display for WithdrawalStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for WithdrawalStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|x| x.as_str() == s).ok_or_else(|| format!("unknown withdrawal status {s:?}"))
    }
}

/// What a withdrawals row pays (M10, M13). Both travel the same pipeline (nonce, signing with the collected
/// approvals, broadcast, confirmation depth); they differ in whose money moves, so the settle step posts
/// by kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WithdrawalKind {
    /// A customer's withdrawal: the customer's held amount leaves the hot wallet.
    CustomerWithdrawal,
    /// An operator-instructed transfer between the custodian's own wallets (M10): one custodian wallet
    /// account to another, customer balances untouched.
    CustodianTransfer,
}

impl WithdrawalKind {
    pub const ALL: [WithdrawalKind; 2] = [WithdrawalKind::CustomerWithdrawal, WithdrawalKind::CustodianTransfer];

    pub fn as_str(self) -> &'static str {
        match self {
            WithdrawalKind::CustomerWithdrawal => "customer_withdrawal",
            WithdrawalKind::CustodianTransfer => "custodian_transfer",
        }
    }

    /// The `reason` of the row's intent: fixed per kind, so the intent (and the hash operators sign) is
    /// rebuilt from the row alone.
    pub fn intent_reason(self) -> &'static str {
        match self {
            WithdrawalKind::CustomerWithdrawal => CUSTOMER_WITHDRAWAL_REASON,
            WithdrawalKind::CustodianTransfer => CUSTODIAN_TRANSFER_REASON,
        }
    }
}

impl fmt::Display for WithdrawalKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for WithdrawalKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|x| x.as_str() == s).ok_or_else(|| format!("unknown withdrawal kind {s:?}"))
    }
}

/// The intent reason of a customer withdrawal (the API and the pipeline use the same text).
pub const CUSTOMER_WITHDRAWAL_REASON: &str = "customer withdrawal";
/// The intent reason of a custodian transfer (M10).
pub const CUSTODIAN_TRANSFER_REASON: &str = "custodian transfer";
/// The reserved `customers` row a custodian transfer's withdrawals row names (inserted by migration 0011):
/// `withdrawals.customer_id` is `NOT NULL REFERENCES customers`, and the custodian is nobody's customer.
/// It has no usable e-mail or password, no deposit address and no ledger accounts; it is also the
/// intent's `customer_id`, so the approved intent says whose transfer it is.
pub const CUSTODIAN_CUSTOMER_ID: &str = "custodian";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn m13_nothing_signed_is_ever_released_or_failed() {
        for s in WithdrawalStatus::ALL.into_iter().filter(|s| s.may_be_on_chain()) {
            assert!(!s.can_become(Failed), "{s} → failed would release a hold for money that may be paid");
            assert!(!s.can_become(Cancelled), "{s} → cancelled");
        }
        // And nothing leaves a terminal state.
        for from in WithdrawalStatus::ALL.into_iter().filter(|s| s.is_terminal()) {
            for to in WithdrawalStatus::ALL {
                assert!(!from.can_become(to), "{from} → {to}");
            }
        }
    }

    #[test]
    fn m13_signing_cannot_be_abandoned() {
        // Signing holds a reserved nonce; abandoning it would leave a gap that stalls every later nonce.
        assert_eq!(Signing.transition(Failed).unwrap_err().to, "failed");
        assert!(Signing.can_become(Signed));
    }

    /// M13: persisted withdrawal statuses read back as the same state.
    #[test]
    fn m10_withdrawal_kinds_round_trip() {
        for k in WithdrawalKind::ALL {
            assert_eq!(k.as_str().parse::<WithdrawalKind>().unwrap(), k);
        }
        assert_ne!(
            WithdrawalKind::CustodianTransfer.intent_reason(),
            WithdrawalKind::CustomerWithdrawal.intent_reason()
        );
    }

    /// U4: an unconfirmed withdrawal never reaches the signer: nothing leads from `awaiting_confirmation`
    /// to `signing` except through `approved`, the pipeline has no work in it, and it can only be
    /// confirmed (to what the policy decided), cancelled or failed, each before anything is signed.
    #[test]
    fn u4_awaiting_confirmation_never_reaches_the_signer_directly() {
        assert!(!AwaitingConfirmation.is_pipeline_work());
        assert!(!AwaitingConfirmation.may_be_on_chain());
        assert!(!AwaitingConfirmation.is_terminal());
        assert!(AwaitingConfirmation.holds_unsigned());
        let next: Vec<_> = WithdrawalStatus::ALL.into_iter().filter(|s| AwaitingConfirmation.can_become(*s)).collect();
        assert_eq!(next, [PendingApproval, Approved, Failed, Cancelled]);
        // Only `requested` leads into it: nothing once approved or later can go back to waiting.
        let into: Vec<_> = WithdrawalStatus::ALL.into_iter().filter(|s| s.can_become(AwaitingConfirmation)).collect();
        assert_eq!(into, [Requested]);
        assert_eq!(AwaitingConfirmation.as_str(), "awaiting_confirmation");
        assert_eq!(serde_json::to_value(AwaitingConfirmation).unwrap(), "awaiting_confirmation");
    }

    /// M13: the only status that leads to `signing` is `approved`; pipeline work is exactly the statuses
    /// from `approved` up to `confirmed`.
    #[test]
    fn m13_signing_is_entered_only_from_approved() {
        let into: Vec<_> = WithdrawalStatus::ALL.into_iter().filter(|s| s.can_become(Signing)).collect();
        assert_eq!(into, [Approved]);
        for s in WithdrawalStatus::ALL {
            // A status holding unsigned money can always be closed (hold released) or move on; once the
            // pipeline owns a nonce it cannot.
            if s.holds_unsigned() {
                assert!(s.can_become(Cancelled) && s.can_become(Failed), "{s}");
            }
            assert!(!(s.holds_unsigned() && s.may_be_on_chain()), "{s}");
        }
    }

    proptest::proptest! {
        /// U4, M13: along any sequence of allowed transitions from `requested`, `signing` is reached only
        /// after `approved`, a path through `awaiting_confirmation` got there only by leaving it first, and
        /// once `signed` nothing releases the hold (no `failed`/`cancelled`).
        #[test]
        fn u4_every_walk_respects_the_confirmation_and_crash_invariants(
            picks in proptest::collection::vec(0usize..WithdrawalStatus::ALL.len(), 0..40),
        ) {
            let mut s = Requested;
            let mut seen_approved = false;
            let mut seen_signed = false;
            let mut seen_offline = false;
            for p in picks {
                let options: Vec<_> = WithdrawalStatus::ALL.into_iter().filter(|n| s.can_become(*n)).collect();
                if options.is_empty() {
                    proptest::prop_assert!(s.is_terminal());
                    break;
                }
                let next = options[p % options.len()];
                proptest::prop_assert!(s.transition(next).is_ok());
                if next == Signing || next == AwaitingOfflineSignature {
                    proptest::prop_assert!(seen_approved, "signing without approved");
                    proptest::prop_assert_eq!(s, Approved);
                }
                // K14: a signature comes from the online signer (`signing`), the offline one, or a fee bump of
                // an already broadcast transaction; never straight from an unsigned, unreserved status.
                if next == Signed {
                    proptest::prop_assert!(matches!(s, Signing | AwaitingOfflineSignature | Broadcast), "{} → signed", s);
                }
                if seen_signed {
                    proptest::prop_assert!(!matches!(next, Failed | Cancelled), "released after signing");
                }
                if seen_offline && next == Signing {
                    proptest::prop_assert!(false, "an offline row was handed to the online signer");
                }
                seen_approved |= next == Approved;
                seen_signed |= next == Signed;
                seen_offline |= next == AwaitingOfflineSignature;
                s = next;
            }
        }
    }

    /// K14: a cold row's only ways out are an imported signature (`signed`) or an operator closing it; the
    /// pipeline never works on it, and it is entered only from `approved`.
    #[test]
    fn k14_awaiting_offline_signature_is_entered_from_approved_and_left_by_import() {
        let s = AwaitingOfflineSignature;
        assert!(!s.is_pipeline_work() && !s.may_be_on_chain() && !s.is_terminal() && s.awaits_offline_signature());
        let next: Vec<_> = WithdrawalStatus::ALL.into_iter().filter(|n| s.can_become(*n)).collect();
        assert_eq!(next, [Signed, Failed, Cancelled]);
        let into: Vec<_> = WithdrawalStatus::ALL.into_iter().filter(|n| n.can_become(s)).collect();
        assert_eq!(into, [Approved]);
        assert_eq!(s.as_str().parse::<WithdrawalStatus>().unwrap(), s);
    }

    #[test]
    fn statuses_round_trip() {
        for s in WithdrawalStatus::ALL {
            assert_eq!(s.as_str().parse::<WithdrawalStatus>().unwrap(), s);
        }
    }
}
