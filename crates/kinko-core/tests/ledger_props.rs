//! Property tests of the in-memory ledger (M8, A1–A3): random sequences of business events and raw
//! transfers between random accounts.
//!
//! - Every accepted posting keeps the invariants: per asset, credits − debits sums to zero; no guarded
//!   account (everything but the custodian's equity) is below zero on its normal side (A3).
//! - Acceptance agrees with an independent oracle written here from the rules, not from `check_entry`.
//! - Every rejected posting changes nothing: balances, `last_seq` and `last_hash` are identical.
//! - The journal chains: replaying it into a fresh ledger gives identical balances and head hash, and
//!   editing any one entry's amount makes replay fail at exactly that entry (A2).

use std::collections::BTreeMap;

use kinko_core::ledger::{
    AccountKind, AccountRef, Balance, EntryDraft, EntryKind, JournalEntry, Ledger, POSTED_TOTAL_MAX, Transfer,
    VerifyError, postings,
};
use kinko_core::{Amount, AssetCode};
use proptest::prelude::*;

const CUSTOMERS: [&str; 3] = ["c0", "c1", "c2"];
const WALLETS: [&str; 3] = ["0xa0", "0xa1", "0xa2"];
const ASSETS: [&str; 2] = ["ETH", "BTC"];
/// Up to this many events per generated sequence.
const EVENTS_MAX: usize = 60;

fn asset(i: usize) -> AssetCode {
    ASSETS[i].parse().expect("valid asset code")
}

fn amt(v: u128) -> Amount {
    Amount::from_base_units(v)
}

/// One business event, with indexes into the small universe above so that events collide often.
#[derive(Clone, Debug)]
enum Event {
    Funding {
        wallet: usize,
        asset: usize,
        amount: u128,
    },
    DepositDetected {
        deposit: usize,
        customer: usize,
        wallet: usize,
        asset: usize,
        amount: u128,
    },
    DepositConfirmed {
        deposit: usize,
        customer: usize,
        asset: usize,
        amount: u128,
    },
    DepositDropped {
        deposit: usize,
        customer: usize,
        wallet: usize,
        asset: usize,
        amount: u128,
    },
    /// `available_now` is read from the ledger when `use_actual` is set, as the watcher does.
    DepositReversed {
        deposit: usize,
        customer: usize,
        wallet: usize,
        asset: usize,
        amount: u128,
        use_actual: bool,
        available_now: u128,
    },
    WithdrawalHold {
        withdrawal: usize,
        customer: usize,
        asset: usize,
        amount: u128,
    },
    WithdrawalRelease {
        withdrawal: usize,
        customer: usize,
        asset: usize,
        amount: u128,
    },
    WithdrawalSettled {
        withdrawal: usize,
        customer: usize,
        wallet: usize,
        asset: usize,
        amount: u128,
        fee: u128,
    },
    /// Transfers between arbitrary accounts, possibly of different assets, zero, or huge.
    Raw {
        transfers: Vec<(RawAccount, RawAccount, u128)>,
    },
}

#[derive(Clone, Debug)]
struct RawAccount {
    kind: usize,
    holder: usize,
    asset: usize,
}

impl RawAccount {
    fn account(&self) -> AccountRef {
        let kind = AccountKind::ALL[self.kind];
        let asset = asset(self.asset);
        match kind {
            AccountKind::Equity => AccountRef::equity(&asset),
            AccountKind::NetworkFees => AccountRef::network_fees(&asset),
            AccountKind::Wallet => AccountRef::wallet(WALLETS[self.holder], &asset),
            _ => AccountRef::customer(kind, CUSTOMERS[self.holder], &asset),
        }
    }
}

/// Mostly small amounts (so balances run out and holds get rejected), sometimes zero, rarely huge enough
/// to overflow the posted totals.
fn amount() -> impl Strategy<Value = u128> {
    prop_oneof![
        8 => 1u128..=200,
        1 => Just(0u128),
        1 => (POSTED_TOTAL_MAX / 2)..=u128::MAX,
    ]
}

fn raw_account() -> impl Strategy<Value = RawAccount> {
    (0..AccountKind::ALL.len(), 0..3usize, 0..ASSETS.len()).prop_map(|(kind, holder, asset)| RawAccount {
        kind,
        holder,
        asset,
    })
}

fn event() -> impl Strategy<Value = Event> {
    let c = 0..CUSTOMERS.len();
    let w = 0..WALLETS.len();
    let a = 0..ASSETS.len();
    let id = 0..6usize;
    prop_oneof![
        2 => (w.clone(), a.clone(), amount()).prop_map(|(wallet, asset, amount)| Event::Funding { wallet, asset, amount }),
        4 => (id.clone(), c.clone(), w.clone(), a.clone(), amount())
            .prop_map(|(deposit, customer, wallet, asset, amount)| Event::DepositDetected { deposit, customer, wallet, asset, amount }),
        4 => (id.clone(), c.clone(), a.clone(), amount())
            .prop_map(|(deposit, customer, asset, amount)| Event::DepositConfirmed { deposit, customer, asset, amount }),
        1 => (id.clone(), c.clone(), w.clone(), a.clone(), amount())
            .prop_map(|(deposit, customer, wallet, asset, amount)| Event::DepositDropped { deposit, customer, wallet, asset, amount }),
        1 => (id.clone(), c.clone(), w.clone(), a.clone(), amount(), any::<bool>(), amount()).prop_map(
            |(deposit, customer, wallet, asset, amount, use_actual, available_now)| Event::DepositReversed {
                deposit, customer, wallet, asset, amount, use_actual, available_now
            }
        ),
        4 => (id.clone(), c.clone(), a.clone(), amount())
            .prop_map(|(withdrawal, customer, asset, amount)| Event::WithdrawalHold { withdrawal, customer, asset, amount }),
        1 => (id.clone(), c.clone(), a.clone(), amount())
            .prop_map(|(withdrawal, customer, asset, amount)| Event::WithdrawalRelease { withdrawal, customer, asset, amount }),
        2 => (id, c, w, a, amount(), 0u128..=5).prop_map(|(withdrawal, customer, wallet, asset, amount, fee)| {
            Event::WithdrawalSettled { withdrawal, customer, wallet, asset, amount, fee }
        }),
        3 => prop::collection::vec((raw_account(), raw_account(), amount()), 1..4)
            .prop_map(|transfers| Event::Raw { transfers }),
    ]
}

/// The draft an event produces against the ledger's current state. `n` makes references unique, which
/// the in-memory ledger does not require but the store does (idempotency per (kind, reference)).
fn draft(event: &Event, ledger: &Ledger, n: usize) -> EntryDraft {
    let mut d = match event {
        Event::Funding { wallet, asset: a, amount } => {
            postings::custodian_funding(format!("funding:{n}"), WALLETS[*wallet], &asset(*a), amt(*amount))
        }
        Event::DepositDetected { deposit, customer, wallet, asset: a, amount } => postings::deposit_detected(
            &format!("d{deposit}"),
            CUSTOMERS[*customer],
            WALLETS[*wallet],
            &asset(*a),
            amt(*amount),
        ),
        Event::DepositConfirmed { deposit, customer, asset: a, amount } => {
            postings::deposit_confirmed(&format!("d{deposit}"), CUSTOMERS[*customer], &asset(*a), amt(*amount))
        }
        Event::DepositDropped { deposit, customer, wallet, asset: a, amount } => postings::deposit_dropped(
            &format!("d{deposit}"),
            CUSTOMERS[*customer],
            WALLETS[*wallet],
            &asset(*a),
            amt(*amount),
        ),
        Event::DepositReversed { deposit, customer, wallet, asset: a, amount, use_actual, available_now } => {
            let available = AccountRef::customer(AccountKind::Available, CUSTOMERS[*customer], &asset(*a));
            let available_now = if *use_actual {
                ledger.balance(&available).normal_amount(AccountKind::Available)
            } else {
                amt(*available_now)
            };
            postings::deposit_reversed(
                &format!("d{deposit}"),
                CUSTOMERS[*customer],
                WALLETS[*wallet],
                &asset(*a),
                amt(*amount),
                available_now,
            )
        }
        Event::WithdrawalHold { withdrawal, customer, asset: a, amount } => {
            postings::withdrawal_hold(&format!("w{withdrawal}"), CUSTOMERS[*customer], &asset(*a), amt(*amount))
        }
        Event::WithdrawalRelease { withdrawal, customer, asset: a, amount } => {
            postings::withdrawal_release(&format!("w{withdrawal}"), CUSTOMERS[*customer], &asset(*a), amt(*amount))
        }
        Event::WithdrawalSettled { withdrawal, customer, wallet, asset: a, amount, fee } => {
            postings::withdrawal_settled(
                &format!("w{withdrawal}"),
                CUSTOMERS[*customer],
                WALLETS[*wallet],
                &asset(*a),
                amt(*amount),
                amt(*fee),
            )
        }
        Event::Raw { transfers } => EntryDraft {
            kind: EntryKind::CustodianFunding,
            reference: format!("raw:{n}"),
            transfers: transfers.iter().map(|(d, c, v)| Transfer::new(d.account(), c.account(), amt(*v))).collect(),
        },
    };
    d.reference = format!("{}#{n}", d.reference);
    d
}

/// The acceptance rule, restated from the requirements rather than from `check_entry`: a non-empty entry of
/// at most 16 positive transfers, each between two different accounts of one asset, whose totals stay
/// below 2^127, and after which no account other than the custodian's equity is below zero.
fn oracle_accepts(balances: &BTreeMap<AccountRef, Balance>, d: &EntryDraft) -> bool {
    if d.transfers.is_empty() || d.transfers.len() > 16 {
        return false;
    }
    let mut after = balances.clone();
    for t in &d.transfers {
        let v = t.amount.base_units();
        if v == 0 || t.debit == t.credit || t.debit.asset != t.credit.asset {
            return false;
        }
        let db = after.entry(t.debit.clone()).or_default();
        match db.debits.checked_add(v) {
            Some(x) if x <= i128::MAX as u128 => db.debits = x,
            _ => return false,
        }
        let cb = after.entry(t.credit.clone()).or_default();
        match cb.credits.checked_add(v) {
            Some(x) if x <= i128::MAX as u128 => cb.credits = x,
            _ => return false,
        }
    }
    after.iter().all(|(a, b)| a.kind == AccountKind::Equity || normal_side(a.kind, *b) >= 0)
}

fn normal_side(kind: AccountKind, b: Balance) -> i128 {
    let credit_normal =
        matches!(kind, AccountKind::Available | AccountKind::Held | AccountKind::Pending | AccountKind::Equity);
    let (plus, minus) = if credit_normal { (b.credits, b.debits) } else { (b.debits, b.credits) };
    plus as i128 - minus as i128
}

/// Invariants checked here, independently of `Ledger::assert_invariants` (which is also called).
fn check_invariants(l: &Ledger) -> Result<(), TestCaseError> {
    l.assert_invariants();
    // Totals across accounts can exceed u128 (each account stays below 2^127, but there are many), so
    // they are summed exactly in 256 bits: per asset, (credits, debits).
    let mut totals: BTreeMap<&AssetCode, (Wide, Wide)> = BTreeMap::new();
    for (a, b) in l.balances() {
        let t = totals.entry(&a.asset).or_default();
        t.0.add(b.credits);
        t.1.add(b.debits);
        if a.kind != AccountKind::Equity {
            prop_assert!(normal_side(a.kind, *b) >= 0, "A3: {a} is below zero: {b:?}");
        }
    }
    for (asset, (credits, debits)) in totals {
        prop_assert_eq!(credits, debits, "entries must balance per asset ({})", asset);
    }
    Ok(())
}

/// A 256-bit unsigned accumulator: (high, low) 128-bit words.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Wide(u128, u128);

impl Wide {
    fn add(&mut self, v: u128) {
        let (lo, carry) = self.1.overflowing_add(v);
        self.1 = lo;
        self.0 += u128::from(carry);
    }
}

fn replay(journal: &[JournalEntry]) -> Result<Ledger, VerifyError> {
    let mut l = Ledger::new();
    for e in journal {
        l.replay(e)?;
    }
    Ok(l)
}

/// Runs a sequence and returns the ledger and its journal, checking every step.
fn run(events: &[Event]) -> Result<(Ledger, Vec<JournalEntry>), TestCaseError> {
    let mut ledger = Ledger::new();
    let mut journal = Vec::new();
    for (n, ev) in events.iter().enumerate() {
        let d = draft(ev, &ledger, n);
        let expect_ok = oracle_accepts(ledger.balances(), &d);
        let (before, seq, hash) = (ledger.balances().clone(), ledger.last_seq(), ledger.last_hash());
        match ledger.post(d.clone(), 1_000 + n as i64) {
            Ok(entry) => {
                prop_assert!(expect_ok, "accepted a posting the rules forbid: {d:?}");
                prop_assert_eq!(entry.seq, seq + 1);
                prop_assert_eq!(entry.prev_hash, hash);
                prop_assert_eq!(ledger.last_hash(), entry.hash);
                // Only accounts the entry names may change.
                let touched: Vec<&AccountRef> = d.transfers.iter().flat_map(|t| [&t.debit, &t.credit]).collect();
                for (a, b) in ledger.balances() {
                    if !touched.contains(&a) {
                        prop_assert_eq!(Some(b), before.get(a), "untouched account {} changed", a);
                    }
                }
                check_invariants(&ledger)?;
                journal.push(entry);
            }
            Err(e) => {
                prop_assert!(!expect_ok, "rejected a valid posting ({e}): {d:?}");
                prop_assert_eq!(ledger.balances(), &before, "a rejected posting changed balances");
                prop_assert_eq!(ledger.last_seq(), seq);
                prop_assert_eq!(ledger.last_hash(), hash);
            }
        }
    }
    Ok((ledger, journal))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// A3, A1: random events keep every invariant; rejected ones change nothing.
    #[test]
    fn a3_random_postings_keep_invariants_and_rejections_change_nothing(
        events in prop::collection::vec(event(), 1..EVENTS_MAX)
    ) {
        run(&events)?;
    }

    /// A2: replaying the journal reproduces the balances and the head hash exactly.
    #[test]
    fn a2_replaying_the_journal_reproduces_balances_and_hash(events in prop::collection::vec(event(), 1..EVENTS_MAX)) {
        let (ledger, journal) = run(&events)?;
        let replayed = replay(&journal).map_err(|e| TestCaseError::fail(format!("replay of a good journal failed: {e}")))?;
        prop_assert_eq!(replayed.balances(), ledger.balances());
        prop_assert_eq!(replayed.last_hash(), ledger.last_hash());
        prop_assert_eq!(replayed.last_seq(), ledger.last_seq());
        prop_assert!(replayed.compare_stored(ledger.balances().iter()).is_ok());
    }

    /// A2: editing one amount anywhere in the journal is caught at exactly that entry.
    #[test]
    fn a2_editing_any_entry_is_detected_at_that_entry(
        events in prop::collection::vec(event(), 1..EVENTS_MAX),
        pick in any::<prop::sample::Index>(),
        delta in 1u128..1000,
    ) {
        let (_, mut journal) = run(&events)?;
        prop_assume!(!journal.is_empty());
        let i = pick.index(journal.len());
        let t = &mut journal[i].transfers[0];
        t.amount = amt(t.amount.base_units().wrapping_add(delta));
        prop_assert_eq!(replay(&journal).err(), Some(VerifyError::BadHash { seq: journal[i].seq }));
    }
}

/// A3 at the boundary: holding exactly the available balance works; one more base unit is refused.
#[test]
fn a3_hold_of_exactly_available_succeeds_and_one_more_fails() {
    let eth = asset(0);
    let mut l = Ledger::new();
    l.post(postings::deposit_detected("d", "c0", "0xa0", &eth, amt(50)), 1).unwrap();
    l.post(postings::deposit_confirmed("d", "c0", &eth, amt(50)), 2).unwrap();
    let snapshot = (l.balances().clone(), l.last_seq(), l.last_hash());
    assert!(l.post(postings::withdrawal_hold("w1", "c0", &eth, amt(51)), 3).is_err());
    assert_eq!((l.balances().clone(), l.last_seq(), l.last_hash()), snapshot);
    l.post(postings::withdrawal_hold("w1", "c0", &eth, amt(50)), 3).unwrap();
    let available = AccountRef::customer(AccountKind::Available, "c0", &eth);
    assert_eq!(l.balance(&available).normal(AccountKind::Available), 0);
}

/// A3 with totals near the limit: three customers each holding 1.5 * 2^126 is a valid ledger (every account
/// is below 2^127), so checking the invariants over it must not overflow.
#[test]
fn a3_invariant_check_survives_totals_near_the_limit() {
    let eth = asset(0);
    let big = amt(3 << 125);
    let mut l = Ledger::new();
    for (i, c) in CUSTOMERS.iter().enumerate() {
        let d = format!("d{i}");
        l.post(postings::deposit_detected(&d, c, WALLETS[i], &eth, big), 1).unwrap();
        l.post(postings::deposit_confirmed(&d, c, &eth, big), 2).unwrap();
    }
    l.assert_invariants();
    check_invariants(&l).unwrap();
}
