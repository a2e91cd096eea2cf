//! Asset data (M8): a double-entry ledger, per asset, in the style of TigerBeetle's transfers.
//!
//! Every movement is a [`Transfer`] of one amount of one asset from a debit account to a credit account,
//! so postings balance per asset by construction; [`check_entry`] still asserts it. Each account kind has
//! a normal side: customer liabilities (available, held, pending) and the custodian's equity are
//! credit-normal; on-chain wallets, customer receivables and fees are debit-normal. The invariant
//! "a customer's available balance never goes below zero" (A3) is the general rule that no guarded
//! account may go below zero on its normal side.
//!
//! Customer funds and the custodian's own are different accounts (A1): a customer account names the
//! customer; the custodian's equity and fee expense name the custodian; wallets are the on-chain side.
//!
//! Journal entries are hash-chained: each entry's hash commits to the previous entry's hash and to its
//! own canonical encoding, so editing, deleting, inserting or reordering entries is detectable (A2).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{Amount, AssetCode};

/// The hash that the first entry's `prev_hash` holds.
pub const GENESIS_HASH: [u8; 32] = [0; 32];
/// Bound on the transfers one entry may carry; an entry is one business event, never a batch job.
pub const ENTRY_TRANSFERS_MAX: usize = 16;
/// Bound on the length of an entry's reference.
pub const REFERENCE_LEN_MAX: usize = 200;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountKind {
    /// What the customer may withdraw or trade. Credit-normal, never negative (A3).
    Available,
    /// Reserved for a withdrawal in flight. Credit-normal, never negative.
    Held,
    /// Seen on chain, not yet confirmed. Credit-normal, never negative.
    Pending,
    /// What a customer owes the custodian after a credited deposit was reversed by a deep re-org and the
    /// available balance could not cover it. Debit-normal, never negative; non-zero blocks withdrawals.
    Receivable,
    /// Holdings of one on-chain address of the custodian. Debit-normal, never negative.
    Wallet,
    /// The custodian's own capital in this asset (e.g. what it put into the hot wallet). Credit-normal;
    /// may go negative, which means the custodian has lost its own money, never customers'.
    Equity,
    /// Network fees the custodian paid. Debit-normal, never negative.
    NetworkFees,
}

impl AccountKind {
    pub const ALL: [AccountKind; 7] = [
        AccountKind::Available,
        AccountKind::Held,
        AccountKind::Pending,
        AccountKind::Receivable,
        AccountKind::Wallet,
        AccountKind::Equity,
        AccountKind::NetworkFees,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AccountKind::Available => "available",
            AccountKind::Held => "held",
            AccountKind::Pending => "pending",
            AccountKind::Receivable => "receivable",
            AccountKind::Wallet => "wallet",
            AccountKind::Equity => "equity",
            AccountKind::NetworkFees => "network_fees",
        }
    }

    pub fn is_credit_normal(self) -> bool {
        matches!(self, AccountKind::Available | AccountKind::Held | AccountKind::Pending | AccountKind::Equity)
    }

    /// Whether the balance on the normal side must stay at or above zero.
    pub fn is_guarded(self) -> bool {
        !matches!(self, AccountKind::Equity)
    }

    /// Customer accounts hold customers' money (A1); the others are the custodian's or the chain's.
    pub fn is_customer(self) -> bool {
        matches!(self, AccountKind::Available | AccountKind::Held | AccountKind::Pending | AccountKind::Receivable)
    }
}

impl FromStr for AccountKind {
    type Err = LedgerError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AccountKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| LedgerError::MalformedAccount(s.to_string()))
    }
}

/// An account: its kind, its holder (a customer id, a wallet address, or "custodian") and its asset.
/// The canonical text form is `kind:holder:asset`, e.g. `available:c_0193…:ETH`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AccountRef {
    pub kind: AccountKind,
    pub holder: String,
    pub asset: AssetCode,
}

pub const CUSTODIAN: &str = "custodian";
pub const HOLDER_LEN_MAX: usize = 80;

impl AccountRef {
    pub fn customer(kind: AccountKind, customer_id: &str, asset: &AssetCode) -> Self {
        debug_assert!(kind.is_customer());
        AccountRef { kind, holder: customer_id.to_string(), asset: asset.clone() }
    }
    pub fn wallet(address: &str, asset: &AssetCode) -> Self {
        AccountRef { kind: AccountKind::Wallet, holder: address.to_ascii_lowercase(), asset: asset.clone() }
    }
    pub fn equity(asset: &AssetCode) -> Self {
        AccountRef { kind: AccountKind::Equity, holder: CUSTODIAN.into(), asset: asset.clone() }
    }
    pub fn network_fees(asset: &AssetCode) -> Self {
        AccountRef { kind: AccountKind::NetworkFees, holder: CUSTODIAN.into(), asset: asset.clone() }
    }
}

impl fmt::Display for AccountRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.kind.as_str(), self.holder, self.asset)
    }
}

impl FromStr for AccountRef {
    type Err = LedgerError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || LedgerError::MalformedAccount(s.to_string());
        let mut parts = s.split(':');
        let (Some(kind), Some(holder), Some(asset), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        if holder.is_empty() || holder.len() > HOLDER_LEN_MAX {
            return Err(bad());
        }
        Ok(AccountRef { kind: kind.parse()?, holder: holder.to_string(), asset: asset.parse().map_err(|_| bad())? })
    }
}

/// Posted totals of one account. The balance on the normal side is derived, never stored alone, so a
/// torn write cannot make the two disagree.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Balance {
    pub debits: u128,
    pub credits: u128,
}

impl Balance {
    /// Balance on the account's normal side; negative means below zero on that side.
    pub fn normal(self, kind: AccountKind) -> i128 {
        let (plus, minus) =
            if kind.is_credit_normal() { (self.credits, self.debits) } else { (self.debits, self.credits) };
        // Totals stay below 2^127 (checked when posting), so both casts are exact.
        plus as i128 - minus as i128
    }

    /// The normal balance as an amount, or zero when negative (only equity can be).
    pub fn normal_amount(self, kind: AccountKind) -> Amount {
        Amount::from_base_units(u128::try_from(self.normal(kind)).unwrap_or(0))
    }
}

/// Totals are kept below this so that `Balance::normal` never overflows an `i128`.
pub const POSTED_TOTAL_MAX: u128 = i128::MAX as u128;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    CustodianFunding,
    DepositDetected,
    DepositConfirmed,
    DepositDropped,
    DepositReversed,
    WithdrawalHold,
    WithdrawalRelease,
    WithdrawalSettled,
    /// A fiat deposit confirmed on the custodian's bank account and approved by operators (M10).
    FiatDeposit,
    /// An operator-instructed transfer between two of the custodian's own wallets settled (M10).
    CustodianTransfer,
    /// One customer's available balance moved to another customer's, off chain (M7).
    InternalTransfer,
}

impl EntryKind {
    pub const ALL: [EntryKind; 11] = [
        EntryKind::CustodianFunding,
        EntryKind::DepositDetected,
        EntryKind::DepositConfirmed,
        EntryKind::DepositDropped,
        EntryKind::DepositReversed,
        EntryKind::WithdrawalHold,
        EntryKind::WithdrawalRelease,
        EntryKind::WithdrawalSettled,
        EntryKind::FiatDeposit,
        EntryKind::CustodianTransfer,
        EntryKind::InternalTransfer,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::CustodianFunding => "custodian_funding",
            EntryKind::DepositDetected => "deposit_detected",
            EntryKind::DepositConfirmed => "deposit_confirmed",
            EntryKind::DepositDropped => "deposit_dropped",
            EntryKind::DepositReversed => "deposit_reversed",
            EntryKind::WithdrawalHold => "withdrawal_hold",
            EntryKind::WithdrawalRelease => "withdrawal_release",
            EntryKind::WithdrawalSettled => "withdrawal_settled",
            EntryKind::FiatDeposit => "fiat_deposit",
            EntryKind::CustodianTransfer => "custodian_transfer",
            EntryKind::InternalTransfer => "internal_transfer",
        }
    }
}

impl FromStr for EntryKind {
    type Err = LedgerError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EntryKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| LedgerError::MalformedEntry(format!("unknown kind {s:?}")))
    }
}

/// One movement of value between two accounts of the same asset.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    pub debit: AccountRef,
    pub credit: AccountRef,
    pub amount: Amount,
}

impl Transfer {
    pub fn new(debit: AccountRef, credit: AccountRef, amount: Amount) -> Self {
        Transfer { debit, credit, amount }
    }
}

/// What a caller asks the ledger to post: a business event and its transfers, applied atomically.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryDraft {
    pub kind: EntryKind,
    /// What the entry is about, e.g. `deposit:<id>` or `withdrawal:<id>`. Unique per (kind, reference),
    /// which is what makes posting idempotent: re-posting the same event is a no-op, not a duplicate.
    pub reference: String,
    pub transfers: Vec<Transfer>,
}

/// A posted, hash-chained journal entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// 1, 2, 3, … with no gaps.
    pub seq: u64,
    pub recorded_at_ms: i64,
    pub kind: EntryKind,
    pub reference: String,
    pub transfers: Vec<Transfer>,
    pub prev_hash: [u8; 32],
    pub hash: [u8; 32],
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    #[error("entry has no transfers")]
    Empty,
    #[error("entry has more than {ENTRY_TRANSFERS_MAX} transfers")]
    TooManyTransfers,
    #[error("reference must be 1 to {REFERENCE_LEN_MAX} printable ASCII characters")]
    BadReference,
    #[error("transfer {index} has a zero amount")]
    ZeroAmount { index: usize },
    #[error("transfer {index} debits and credits the same account")]
    SameAccount { index: usize },
    #[error("transfer {index} mixes assets {debit} and {credit}")]
    MixedAssets { index: usize, debit: AssetCode, credit: AssetCode },
    #[error("entry does not balance for asset {asset}")]
    Unbalanced { asset: AssetCode },
    #[error("account {account} would go below zero (balance {balance}, change {change})")]
    WouldGoNegative { account: String, balance: i128, change: i128 },
    #[error("account {account} would overflow its posted totals")]
    Overflow { account: String },
    #[error("malformed account {0:?}")]
    MalformedAccount(String),
    #[error("malformed entry: {0}")]
    MalformedEntry(String),
}

/// Read access to current balances; the store implements it over locked rows, tests over a map.
pub trait BalanceLookup {
    fn balance(&self, account: &AccountRef) -> Balance;
}

impl BalanceLookup for BTreeMap<AccountRef, Balance> {
    fn balance(&self, account: &AccountRef) -> Balance {
        self.get(account).copied().unwrap_or_default()
    }
}

/// Validates a draft against current balances and returns every touched account's new balance.
/// Nothing is written here: the caller persists the result atomically, or nothing at all.
pub fn check_entry(
    balances: &impl BalanceLookup,
    draft: &EntryDraft,
) -> Result<BTreeMap<AccountRef, Balance>, LedgerError> {
    if draft.transfers.is_empty() {
        return Err(LedgerError::Empty);
    }
    if draft.transfers.len() > ENTRY_TRANSFERS_MAX {
        return Err(LedgerError::TooManyTransfers);
    }
    if draft.reference.is_empty()
        || draft.reference.len() > REFERENCE_LEN_MAX
        || !draft.reference.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(LedgerError::BadReference);
    }

    let mut next: BTreeMap<AccountRef, Balance> = BTreeMap::new();
    // Net change per asset in credits-minus-debits terms; must be zero for every asset.
    let mut net: BTreeMap<AssetCode, i128> = BTreeMap::new();
    for (index, t) in draft.transfers.iter().enumerate() {
        if t.amount.is_zero() {
            return Err(LedgerError::ZeroAmount { index });
        }
        if t.debit == t.credit {
            return Err(LedgerError::SameAccount { index });
        }
        if t.debit.asset != t.credit.asset {
            return Err(LedgerError::MixedAssets {
                index,
                debit: t.debit.asset.clone(),
                credit: t.credit.asset.clone(),
            });
        }
        let units = t.amount.base_units();
        let overflow = |a: &AccountRef| LedgerError::Overflow { account: a.to_string() };
        if units > POSTED_TOTAL_MAX {
            return Err(overflow(&t.debit));
        }
        let d = next.entry(t.debit.clone()).or_insert_with(|| balances.balance(&t.debit));
        d.debits = d.debits.checked_add(units).filter(|v| *v <= POSTED_TOTAL_MAX).ok_or_else(|| overflow(&t.debit))?;
        let c = next.entry(t.credit.clone()).or_insert_with(|| balances.balance(&t.credit));
        c.credits =
            c.credits.checked_add(units).filter(|v| *v <= POSTED_TOTAL_MAX).ok_or_else(|| overflow(&t.credit))?;
        let n = net.entry(t.debit.asset.clone()).or_insert(0);
        *n = n.checked_add(units as i128).and_then(|v| v.checked_sub(units as i128)).expect("bounded above");
    }
    // Assert the other space too: a transfer list balances by construction, and we check it anyway so a
    // future multi-leg posting type cannot slip an unbalanced entry through.
    if let Some((asset, _)) = net.iter().find(|(_, v)| **v != 0) {
        return Err(LedgerError::Unbalanced { asset: asset.clone() });
    }
    for (account, after) in &next {
        if account.kind.is_guarded() && after.normal(account.kind) < 0 {
            let before = balances.balance(account).normal(account.kind);
            return Err(LedgerError::WouldGoNegative {
                account: account.to_string(),
                balance: before,
                change: after.normal(account.kind) - before,
            });
        }
    }
    Ok(next)
}

/// The hash of an entry: sha256 over a versioned, length-prefixed canonical encoding of every field but
/// the hash itself. Documented in docs/architecture.md; changing it is a breaking change.
pub fn entry_hash(
    seq: u64,
    recorded_at_ms: i64,
    kind: EntryKind,
    reference: &str,
    transfers: &[Transfer],
    prev_hash: &[u8; 32],
) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"kinko-ledger-entry-v1");
    h.update(seq.to_be_bytes());
    h.update(recorded_at_ms.to_be_bytes());
    h.update(prev_hash);
    put_str(&mut h, kind.as_str());
    put_str(&mut h, reference);
    h.update((transfers.len() as u32).to_be_bytes());
    for t in transfers {
        put_str(&mut h, &t.debit.to_string());
        put_str(&mut h, &t.credit.to_string());
        h.update(t.amount.base_units().to_be_bytes());
    }
    h.finalize().into()
}

fn put_str(h: &mut Sha256, s: &str) {
    h.update((s.len() as u32).to_be_bytes());
    h.update(s.as_bytes());
}

/// Seals a checked draft into the next journal entry.
pub fn seal_entry(draft: EntryDraft, seq: u64, recorded_at_ms: i64, prev_hash: [u8; 32]) -> JournalEntry {
    assert!(seq >= 1, "sequence numbers start at 1");
    let hash = entry_hash(seq, recorded_at_ms, draft.kind, &draft.reference, &draft.transfers, &prev_hash);
    JournalEntry {
        seq,
        recorded_at_ms,
        kind: draft.kind,
        reference: draft.reference,
        transfers: draft.transfers,
        prev_hash,
        hash,
    }
}

/// An in-memory ledger: the reference model for property tests and the replay engine for verification.
#[derive(Clone, Debug, Default)]
pub struct Ledger {
    balances: BTreeMap<AccountRef, Balance>,
    last_seq: u64,
    last_hash: [u8; 32],
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("entry {seq}: sequence gap or reorder (expected {expected})")]
    Sequence { seq: u64, expected: u64 },
    #[error("entry {seq}: prev_hash does not match the previous entry's hash")]
    BrokenLink { seq: u64 },
    #[error("entry {seq}: hash does not match its contents")]
    BadHash { seq: u64 },
    #[error("entry {seq}: {error}")]
    Invalid { seq: u64, error: LedgerError },
    #[error("account {account}: stored balance {stored:?} differs from the journal's {replayed:?}")]
    BalanceMismatch { account: String, stored: Balance, replayed: Balance },
}

impl Ledger {
    pub fn new() -> Self {
        Ledger { balances: BTreeMap::new(), last_seq: 0, last_hash: GENESIS_HASH }
    }

    pub fn balances(&self) -> &BTreeMap<AccountRef, Balance> {
        &self.balances
    }

    pub fn balance(&self, account: &AccountRef) -> Balance {
        self.balances.balance(account)
    }

    pub fn last_hash(&self) -> [u8; 32] {
        self.last_hash
    }

    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Posts a draft; on error nothing changes.
    pub fn post(&mut self, draft: EntryDraft, recorded_at_ms: i64) -> Result<JournalEntry, LedgerError> {
        let next = check_entry(&self.balances, &draft)?;
        let entry = seal_entry(draft, self.last_seq + 1, recorded_at_ms, self.last_hash);
        self.balances.extend(next);
        self.last_seq = entry.seq;
        self.last_hash = entry.hash;
        self.assert_invariants();
        Ok(entry)
    }

    /// Replays a journal read back from storage, checking the chain and every invariant, and naming the
    /// first bad entry.
    pub fn replay(&mut self, entry: &JournalEntry) -> Result<(), VerifyError> {
        let expected = self.last_seq + 1;
        if entry.seq != expected {
            return Err(VerifyError::Sequence { seq: entry.seq, expected });
        }
        if entry.prev_hash != self.last_hash {
            return Err(VerifyError::BrokenLink { seq: entry.seq });
        }
        let hash = entry_hash(
            entry.seq,
            entry.recorded_at_ms,
            entry.kind,
            &entry.reference,
            &entry.transfers,
            &entry.prev_hash,
        );
        if hash != entry.hash {
            return Err(VerifyError::BadHash { seq: entry.seq });
        }
        let draft =
            EntryDraft { kind: entry.kind, reference: entry.reference.clone(), transfers: entry.transfers.clone() };
        let next =
            check_entry(&self.balances, &draft).map_err(|error| VerifyError::Invalid { seq: entry.seq, error })?;
        self.balances.extend(next);
        self.last_seq = entry.seq;
        self.last_hash = entry.hash;
        Ok(())
    }

    /// Compares balances stored beside the journal with the replayed ones.
    pub fn compare_stored<'a>(
        &self,
        stored: impl IntoIterator<Item = (&'a AccountRef, &'a Balance)>,
    ) -> Result<(), VerifyError> {
        let stored: BTreeMap<&AccountRef, &Balance> = stored.into_iter().collect();
        for (account, s) in &stored {
            let replayed = self.balance(account);
            if **s != replayed {
                return Err(VerifyError::BalanceMismatch { account: account.to_string(), stored: **s, replayed });
            }
        }
        for (account, replayed) in &self.balances {
            if !stored.contains_key(account) && *replayed != Balance::default() {
                return Err(VerifyError::BalanceMismatch {
                    account: account.to_string(),
                    stored: Balance::default(),
                    replayed: *replayed,
                });
            }
        }
        Ok(())
    }

    /// Asserts what must always hold; a failure is a programming error, not bad input.
    pub fn assert_invariants(&self) {
        // Per asset, total credits and total debits as 256-bit (high, low) sums: each account stays below
        // 2^127, but many of them together overflow any 128-bit accumulator.
        let mut totals: BTreeMap<&AssetCode, [(u128, u128); 2]> = BTreeMap::new();
        let add = |w: &mut (u128, u128), v: u128| {
            let (lo, carry) = w.1.overflowing_add(v);
            w.1 = lo;
            w.0 += u128::from(carry);
        };
        for (account, b) in &self.balances {
            if account.kind.is_guarded() {
                assert!(b.normal(account.kind) >= 0, "guarded account {account} is negative");
            }
            let t = totals.entry(&account.asset).or_default();
            add(&mut t[0], b.credits);
            add(&mut t[1], b.debits);
        }
        for (asset, [credits, debits]) in totals {
            assert_eq!(credits, debits, "ledger does not balance for {asset}");
        }
    }
}

/// The postings of each business event. One place decides which accounts move; the store and the
/// pipeline only execute these drafts.
pub mod postings {
    use super::*;

    fn one(kind: EntryKind, reference: String, debit: AccountRef, credit: AccountRef, amount: Amount) -> EntryDraft {
        EntryDraft { kind, reference, transfers: vec![Transfer::new(debit, credit, amount)] }
    }

    /// Holder of the custodian's bank account(s) in the ledger: a fiat deposit is money that arrived there.
    pub const BANK_HOLDER: &str = "bank";

    /// A fiat deposit seen on the custodian's bank account and approved by operators (M10): the bank
    /// account (a `wallet:bank:<ASSET>` account, debit-normal like any holding) now holds it, and the
    /// customer may use it. Reference `fiat_deposit:<request id>`, so one approved request credits once.
    pub fn fiat_deposit_recorded(request_id: &str, customer: &str, asset: &AssetCode, amount: Amount) -> EntryDraft {
        one(
            EntryKind::FiatDeposit,
            format!("fiat_deposit:{request_id}"),
            AccountRef::wallet(BANK_HOLDER, asset),
            AccountRef::customer(AccountKind::Available, customer, asset),
            amount,
        )
    }

    /// A transfer between two of the custodian's own wallets is final (M10): the amount moves from the
    /// source wallet's account to the destination wallet's, and the network fee is the custodian's expense,
    /// paid from the source. No customer account moves: customers' claims are unchanged, only where the
    /// coins sit. Reference `custodian_transfer:<request id>`, so a transfer settles once.
    pub fn custodian_transfer_settled(
        transfer_id: &str,
        source_wallet: &str,
        destination_wallet: &str,
        asset: &AssetCode,
        amount: Amount,
        fee: Amount,
    ) -> EntryDraft {
        custodian_transfer_settled_fee_in(transfer_id, source_wallet, destination_wallet, asset, amount, asset, fee)
    }

    /// [`custodian_transfer_settled`] with the fee paid in `fee_asset` (the chain's native coin when a token
    /// moves, K22): the amount leaves the source's `asset` account, the fee its `fee_asset` account.
    pub fn custodian_transfer_settled_fee_in(
        transfer_id: &str,
        source_wallet: &str,
        destination_wallet: &str,
        asset: &AssetCode,
        amount: Amount,
        fee_asset: &AssetCode,
        fee: Amount,
    ) -> EntryDraft {
        let source = AccountRef::wallet(source_wallet, asset);
        let mut transfers = vec![Transfer::new(AccountRef::wallet(destination_wallet, asset), source, amount)];
        if !fee.is_zero() {
            transfers.push(Transfer::new(
                AccountRef::network_fees(fee_asset),
                AccountRef::wallet(source_wallet, fee_asset),
                fee,
            ));
        }
        EntryDraft {
            kind: EntryKind::CustodianTransfer,
            reference: format!("custodian_transfer:{transfer_id}"),
            transfers,
        }
    }

    /// An internal transfer between customers (M7): the sender's available balance pays the recipient's
    /// available balance, same asset, off chain. Nothing leaves a wallet, so the custodian's holdings and
    /// the sum of customer claims are unchanged; A3 (available never below zero) refuses an over-balance
    /// transfer. Reference `internal_transfer:<transfer id>`, so a retried transfer moves money once.
    pub fn internal_transfer(
        transfer_id: &str,
        sender: &str,
        recipient: &str,
        asset: &AssetCode,
        amount: Amount,
    ) -> EntryDraft {
        one(
            EntryKind::InternalTransfer,
            format!("internal_transfer:{transfer_id}"),
            AccountRef::customer(AccountKind::Available, sender, asset),
            AccountRef::customer(AccountKind::Available, recipient, asset),
            amount,
        )
    }

    /// The custodian puts its own money into one of its wallets (e.g. the dev hot-wallet funding).
    pub fn custodian_funding(reference: String, wallet: &str, asset: &AssetCode, amount: Amount) -> EntryDraft {
        one(
            EntryKind::CustodianFunding,
            reference,
            AccountRef::wallet(wallet, asset),
            AccountRef::equity(asset),
            amount,
        )
    }

    /// A deposit seen on chain: the wallet holds it, the customer sees it as pending.
    pub fn deposit_detected(
        deposit_id: &str,
        customer: &str,
        wallet: &str,
        asset: &AssetCode,
        amount: Amount,
    ) -> EntryDraft {
        one(
            EntryKind::DepositDetected,
            format!("deposit:{deposit_id}"),
            AccountRef::wallet(wallet, asset),
            AccountRef::customer(AccountKind::Pending, customer, asset),
            amount,
        )
    }

    /// Enough confirmations: pending becomes available (C2).
    pub fn deposit_confirmed(deposit_id: &str, customer: &str, asset: &AssetCode, amount: Amount) -> EntryDraft {
        one(
            EntryKind::DepositConfirmed,
            format!("deposit:{deposit_id}"),
            AccountRef::customer(AccountKind::Pending, customer, asset),
            AccountRef::customer(AccountKind::Available, customer, asset),
            amount,
        )
    }

    /// A re-org dropped a deposit before it was credited.
    pub fn deposit_dropped(
        deposit_id: &str,
        customer: &str,
        wallet: &str,
        asset: &AssetCode,
        amount: Amount,
    ) -> EntryDraft {
        one(
            EntryKind::DepositDropped,
            format!("deposit:{deposit_id}"),
            AccountRef::customer(AccountKind::Pending, customer, asset),
            AccountRef::wallet(wallet, asset),
            amount,
        )
    }

    /// A re-org deeper than the confirmation depth dropped a credited deposit. Whatever the available
    /// balance cannot cover becomes a receivable: the customer's position goes negative, visibly, while
    /// no guarded account does (A3), and withdrawals stay blocked until it is settled.
    pub fn deposit_reversed(
        deposit_id: &str,
        customer: &str,
        wallet: &str,
        asset: &AssetCode,
        amount: Amount,
        available_now: Amount,
    ) -> EntryDraft {
        let from_available = amount.min(available_now);
        let shortfall = amount.checked_sub(from_available).expect("min");
        let wallet = AccountRef::wallet(wallet, asset);
        let mut transfers = Vec::new();
        if !from_available.is_zero() {
            transfers.push(Transfer::new(
                AccountRef::customer(AccountKind::Available, customer, asset),
                wallet.clone(),
                from_available,
            ));
        }
        if !shortfall.is_zero() {
            transfers.push(Transfer::new(
                AccountRef::customer(AccountKind::Receivable, customer, asset),
                wallet,
                shortfall,
            ));
        }
        EntryDraft { kind: EntryKind::DepositReversed, reference: format!("deposit:{deposit_id}"), transfers }
    }

    /// A withdrawal is accepted: available → held (A3: fails when the balance is short).
    pub fn withdrawal_hold(withdrawal_id: &str, customer: &str, asset: &AssetCode, amount: Amount) -> EntryDraft {
        one(
            EntryKind::WithdrawalHold,
            format!("withdrawal:{withdrawal_id}"),
            AccountRef::customer(AccountKind::Available, customer, asset),
            AccountRef::customer(AccountKind::Held, customer, asset),
            amount,
        )
    }

    /// A withdrawal failed or was cancelled before anything was paid: held → available.
    pub fn withdrawal_release(withdrawal_id: &str, customer: &str, asset: &AssetCode, amount: Amount) -> EntryDraft {
        one(
            EntryKind::WithdrawalRelease,
            format!("withdrawal:{withdrawal_id}"),
            AccountRef::customer(AccountKind::Held, customer, asset),
            AccountRef::customer(AccountKind::Available, customer, asset),
            amount,
        )
    }

    /// The withdrawal's transaction is final: the held amount leaves the hot wallet, and the network fee
    /// is the custodian's expense, paid from the same wallet.
    pub fn withdrawal_settled(
        withdrawal_id: &str,
        customer: &str,
        wallet: &str,
        asset: &AssetCode,
        amount: Amount,
        fee: Amount,
    ) -> EntryDraft {
        withdrawal_settled_fee_in(withdrawal_id, customer, wallet, asset, amount, asset, fee)
    }

    /// [`withdrawal_settled`] with the fee paid in `fee_asset`: a token withdrawal (K22) takes the token
    /// amount from the customer's held token and the wallet's token account, and the network fee, paid in
    /// the chain's native coin, from the wallet's native account to the native coin's fee expense.
    pub fn withdrawal_settled_fee_in(
        withdrawal_id: &str,
        customer: &str,
        wallet: &str,
        asset: &AssetCode,
        amount: Amount,
        fee_asset: &AssetCode,
        fee: Amount,
    ) -> EntryDraft {
        let wallet_asset = AccountRef::wallet(wallet, asset);
        let mut transfers =
            vec![Transfer::new(AccountRef::customer(AccountKind::Held, customer, asset), wallet_asset, amount)];
        if !fee.is_zero() {
            transfers.push(Transfer::new(
                AccountRef::network_fees(fee_asset),
                AccountRef::wallet(wallet, fee_asset),
                fee,
            ));
        }
        EntryDraft { kind: EntryKind::WithdrawalSettled, reference: format!("withdrawal:{withdrawal_id}"), transfers }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eth() -> AssetCode {
        "ETH".parse().unwrap()
    }
    fn amt(v: u128) -> Amount {
        Amount::from_base_units(v)
    }

    #[test]
    fn a3_withdrawal_hold_beyond_available_is_rejected_and_changes_nothing() {
        let mut l = Ledger::new();
        l.post(postings::deposit_detected("d1", "c1", "0xaa", &eth(), amt(100)), 1).unwrap();
        l.post(postings::deposit_confirmed("d1", "c1", &eth(), amt(100)), 2).unwrap();
        let before = l.balances().clone();
        let err = l.post(postings::withdrawal_hold("w1", "c1", &eth(), amt(101)), 3).unwrap_err();
        assert!(matches!(err, LedgerError::WouldGoNegative { .. }), "{err}");
        assert_eq!(l.balances(), &before);
        assert_eq!(l.last_seq(), 2);
    }

    #[test]
    fn m7_internal_transfer_moves_available_between_customers_once_and_never_below_zero() {
        let mut l = Ledger::new();
        l.post(postings::deposit_detected("d1", "c1", "0xaa", &eth(), amt(100)), 1).unwrap();
        l.post(postings::deposit_confirmed("d1", "c1", &eth(), amt(100)), 2).unwrap();
        let available = |l: &Ledger, c: &str| l.balance(&AccountRef::customer(AccountKind::Available, c, &eth()));
        let before = l.balances().clone();
        let err = l.post(postings::internal_transfer("t0", "c1", "c2", &eth(), amt(101)), 3).unwrap_err();
        assert!(matches!(err, LedgerError::WouldGoNegative { .. }), "{err}");
        assert_eq!(l.balances(), &before, "a refused transfer moves nothing");
        l.post(postings::internal_transfer("t1", "c1", "c2", &eth(), amt(40)), 3).unwrap();
        assert_eq!(available(&l, "c1").normal(AccountKind::Available), 60);
        assert_eq!(available(&l, "c2").normal(AccountKind::Available), 40);
        // Same (kind, reference): the store treats it as already posted; the draft itself is stable.
        assert_eq!(postings::internal_transfer("t1", "c1", "c2", &eth(), amt(40)).reference, "internal_transfer:t1");
        let self_transfer = l.post(postings::internal_transfer("t2", "c1", "c1", &eth(), amt(1)), 4).unwrap_err();
        assert!(matches!(self_transfer, LedgerError::SameAccount { .. }), "{self_transfer}");
        l.assert_invariants();
    }

    #[test]
    fn a1_customer_and_custodian_funds_are_separate_accounts() {
        let mut l = Ledger::new();
        l.post(postings::custodian_funding("f1".into(), "0xhot", &eth(), amt(1000)), 1).unwrap();
        let customers: u128 =
            l.balances().iter().filter(|(a, _)| a.kind.is_customer()).map(|(a, b)| b.normal(a.kind) as u128).sum();
        assert_eq!(customers, 0, "custodian funding never shows up as customer money");
        assert_eq!(l.balance(&AccountRef::equity(&eth())).normal(AccountKind::Equity), 1000);
    }

    #[test]
    fn m10_custodian_transfer_moves_wallet_to_wallet_and_leaves_customers_alone() {
        let mut l = Ledger::new();
        l.post(postings::custodian_funding("f".into(), "0xhot", &eth(), amt(1000)), 0).unwrap();
        l.post(postings::deposit_detected("d1", "c1", "0xdep", &eth(), amt(100)), 1).unwrap();
        l.post(postings::deposit_confirmed("d1", "c1", &eth(), amt(100)), 2).unwrap();
        let customers = |l: &Ledger| -> Vec<(AccountRef, Balance)> {
            l.balances().iter().filter(|(a, _)| a.kind.is_customer()).map(|(a, b)| (a.clone(), *b)).collect()
        };
        let before = customers(&l);
        l.post(postings::custodian_transfer_settled("r1", "0xhot", "0xcold", &eth(), amt(600), amt(3)), 3).unwrap();
        assert_eq!(customers(&l), before, "no customer account moves");
        let wallet = |w: &str| l.balance(&AccountRef::wallet(w, &eth())).normal(AccountKind::Wallet);
        assert_eq!((wallet("0xhot"), wallet("0xcold")), (397, 600));
        assert_eq!(l.balance(&AccountRef::network_fees(&eth())).normal(AccountKind::NetworkFees), 3);
        // Settles once per request; a transfer the source cannot cover is refused whole (A3).
        let again = postings::custodian_transfer_settled("r2", "0xhot", "0xcold", &eth(), amt(397), amt(1));
        assert!(matches!(l.post(again, 4).unwrap_err(), LedgerError::WouldGoNegative { .. }));
        l.assert_invariants();
    }

    #[test]
    fn c2_deep_reorg_reversal_turns_shortfall_into_receivable() {
        let mut l = Ledger::new();
        l.post(postings::custodian_funding("f".into(), "0xhot", &eth(), amt(1000)), 0).unwrap();
        l.post(postings::deposit_detected("d1", "c1", "0xdep", &eth(), amt(100)), 1).unwrap();
        l.post(postings::deposit_confirmed("d1", "c1", &eth(), amt(100)), 2).unwrap();
        l.post(postings::withdrawal_hold("w1", "c1", &eth(), amt(70)), 3).unwrap();
        l.post(postings::withdrawal_settled("w1", "c1", "0xhot", &eth(), amt(70), amt(1)), 4).unwrap();
        let available = l
            .balance(&AccountRef::customer(AccountKind::Available, "c1", &eth()))
            .normal_amount(AccountKind::Available);
        assert_eq!(available, amt(30));
        l.post(postings::deposit_reversed("d1", "c1", "0xdep", &eth(), amt(100), available), 5).unwrap();
        let receivable = AccountRef::customer(AccountKind::Receivable, "c1", &eth());
        assert_eq!(l.balance(&receivable).normal(AccountKind::Receivable), 70);
        assert_eq!(
            l.balance(&AccountRef::customer(AccountKind::Available, "c1", &eth())).normal(AccountKind::Available),
            0
        );
        l.assert_invariants();
    }

    #[test]
    fn a2_replay_detects_edit_delete_and_reorder() {
        let mut l = Ledger::new();
        let mut journal = vec![
            l.post(postings::deposit_detected("d1", "c1", "0xaa", &eth(), amt(5)), 1).unwrap(),
            l.post(postings::deposit_confirmed("d1", "c1", &eth(), amt(5)), 2).unwrap(),
            l.post(postings::withdrawal_hold("w1", "c1", &eth(), amt(5)), 3).unwrap(),
        ];
        let replay = |j: &[JournalEntry]| {
            let mut r = Ledger::new();
            j.iter().try_for_each(|e| r.replay(e)).map(|_| r)
        };
        let r = replay(&journal).unwrap();
        r.compare_stored(l.balances().iter()).unwrap();

        let mut edited = journal.clone();
        edited[1].transfers[0].amount = amt(6);
        assert_eq!(replay(&edited).unwrap_err(), VerifyError::BadHash { seq: 2 });

        let mut deleted = journal.clone();
        deleted.remove(1);
        assert_eq!(replay(&deleted).unwrap_err(), VerifyError::Sequence { seq: 3, expected: 2 });

        journal.swap(1, 2);
        assert!(matches!(replay(&journal).unwrap_err(), VerifyError::Sequence { seq: 3, .. }));
    }

    #[test]
    fn a2_stored_balance_tamper_is_detected() {
        let mut l = Ledger::new();
        let e = l.post(postings::deposit_detected("d1", "c1", "0xaa", &eth(), amt(5)), 1).unwrap();
        let mut r = Ledger::new();
        r.replay(&e).unwrap();
        let mut stored = l.balances().clone();
        stored.get_mut(&AccountRef::customer(AccountKind::Pending, "c1", &eth())).unwrap().credits = 500;
        assert!(matches!(r.compare_stored(stored.iter()), Err(VerifyError::BalanceMismatch { .. })));
    }

    /// A3, M8: malformed postings are rejected before anything is written.
    #[test]
    fn entries_reject_malformed_drafts() {
        let l = Ledger::new();
        let eth = eth();
        let a = AccountRef::equity(&eth);
        let b = AccountRef::wallet("0xaa", &eth);
        let d = |transfers| EntryDraft { kind: EntryKind::CustodianFunding, reference: "r".into(), transfers };
        assert_eq!(check_entry(l.balances(), &d(vec![])), Err(LedgerError::Empty));
        assert_eq!(
            check_entry(l.balances(), &d(vec![Transfer::new(b.clone(), a.clone(), amt(0))])),
            Err(LedgerError::ZeroAmount { index: 0 })
        );
        assert_eq!(
            check_entry(l.balances(), &d(vec![Transfer::new(a.clone(), a.clone(), amt(1))])),
            Err(LedgerError::SameAccount { index: 0 })
        );
        let btc = AccountRef::wallet("0xaa", &"BTC".parse().unwrap());
        assert!(matches!(
            check_entry(l.balances(), &d(vec![Transfer::new(btc, a.clone(), amt(1))])),
            Err(LedgerError::MixedAssets { .. })
        ));
        let huge = Transfer::new(b.clone(), a.clone(), Amount::from_base_units(u128::MAX));
        assert!(matches!(check_entry(l.balances(), &d(vec![huge])), Err(LedgerError::Overflow { .. })));
        let mut bad_ref = d(vec![Transfer::new(b, a, amt(1))]);
        bad_ref.reference = "has space".into();
        assert_eq!(check_entry(l.balances(), &bad_ref), Err(LedgerError::BadReference));
    }

    /// A2, M8: account names round-trip exactly, so stored balances map to one account.
    #[test]
    fn account_refs_round_trip_through_text() {
        let a = AccountRef::customer(AccountKind::Available, "c_1", &eth());
        assert_eq!(a.to_string().parse::<AccountRef>().unwrap(), a);
        assert!("available:c1".parse::<AccountRef>().is_err());
        assert!("nope:c1:ETH".parse::<AccountRef>().is_err());
    }
}
