//! The persisted ledger (M8) on every backend (SQLite always, PostgreSQL under scripts/test): posting,
//! idempotent re-posting, atomic rejection (A3), and `verify_ledger` catching tampering done with direct
//! SQL behind kinko's back (A2).

use std::collections::BTreeMap;

use kinko_core::ledger::{
    AccountKind, AccountRef, Balance, EntryDraft, EntryKind, JournalEntry, LedgerError, Transfer, VerifyError, postings,
};
use kinko_core::{Amount, AssetCode};
use kinko_store::ledger::{LedgerVerifyError, Posted};
use kinko_store::testing::{TestStore, test_stores};
use kinko_store::{Store, StoreError};

fn eth() -> AssetCode {
    "ETH".parse().unwrap()
}

fn amt(v: u128) -> Amount {
    Amount::from_base_units(v)
}

const HOT: &str = "0x00000000000000000000000000000000000000aa";
const DEPOSIT_ADDR: &str = "0x00000000000000000000000000000000000000d1";

fn available(customer: &str) -> AccountRef {
    AccountRef::customer(AccountKind::Available, customer, &eth())
}

/// A deposit seen and confirmed: `amount` becomes available to `customer`.
async fn credit(store: &Store, deposit: &str, customer: &str, amount: u128) {
    store.post(postings::deposit_detected(deposit, customer, DEPOSIT_ADDR, &eth(), amt(amount)), 1).await.unwrap();
    store.post(postings::deposit_confirmed(deposit, customer, &eth(), amt(amount)), 2).await.unwrap();
}

async fn journal(store: &Store) -> Vec<JournalEntry> {
    store.journal_page(1, 10_000).await.unwrap()
}

/// Everything a posting could change: every balance and the whole journal.
async fn snapshot(store: &Store) -> (BTreeMap<AccountRef, Balance>, Vec<JournalEntry>) {
    (store.all_balances().await.unwrap(), journal(store).await)
}

/// A small, valid history: a funded hot wallet, one credited deposit, a settled and a held withdrawal.
async fn history(ts: &TestStore) {
    let s = &ts.store;
    s.post(postings::custodian_funding("funding:1".into(), HOT, &eth(), amt(1_000)), 1).await.unwrap();
    credit(s, "d1", "c1", 300).await;
    s.post(postings::withdrawal_hold("w1", "c1", &eth(), amt(100)), 3).await.unwrap();
    s.post(postings::withdrawal_settled("w1", "c1", HOT, &eth(), amt(100), amt(2)), 4).await.unwrap();
    s.post(postings::withdrawal_hold("w2", "c1", &eth(), amt(50)), 5).await.unwrap();
    let report =
        s.verify_ledger(|_| {}).await.unwrap_or_else(|e| panic!("[{}] good journal must verify: {e}", ts.name));
    assert_eq!(report.entries, 6, "[{}]", ts.name);
}

#[tokio::test]
async fn m8_posting_updates_balances_and_chains_the_journal() {
    for ts in test_stores().await {
        let s = &ts.store;
        let posted = s.post(postings::deposit_detected("d1", "c1", DEPOSIT_ADDR, &eth(), amt(70)), 10).await.unwrap();
        let Posted::New(first) = posted else { panic!("[{}] first post must be new: {posted:?}", ts.name) };
        assert_eq!(first.seq, 1, "[{}]", ts.name);
        assert_eq!(first.prev_hash, kinko_core::ledger::GENESIS_HASH, "[{}]", ts.name);
        let Posted::New(second) = s.post(postings::deposit_confirmed("d1", "c1", &eth(), amt(70)), 11).await.unwrap()
        else {
            panic!("[{}] second post must be new", ts.name)
        };
        assert_eq!((second.seq, second.prev_hash), (2, first.hash), "[{}] entry 2 commits to entry 1", ts.name);
        assert_eq!(s.balance(&available("c1")).await.unwrap().normal(AccountKind::Available), 70, "[{}]", ts.name);
        let pending = AccountRef::customer(AccountKind::Pending, "c1", &eth());
        assert_eq!(s.balance(&pending).await.unwrap().normal(AccountKind::Pending), 0, "[{}]", ts.name);
        let wallet = AccountRef::wallet(DEPOSIT_ADDR, &eth());
        assert_eq!(s.balance(&wallet).await.unwrap().normal(AccountKind::Wallet), 70, "[{}]", ts.name);
        assert_eq!(journal(s).await, vec![first, second], "[{}] journal reads back as posted", ts.name);
        s.verify_ledger(|_| {}).await.unwrap();
    }
}

#[tokio::test]
async fn m8_reposting_the_same_event_is_a_no_op() {
    for ts in test_stores().await {
        let s = &ts.store;
        credit(s, "d1", "c1", 100).await;
        s.post(postings::withdrawal_hold("w1", "c1", &eth(), amt(40)), 3).await.unwrap();
        let before = snapshot(s).await;
        // The same event again, and even with other contents: (kind, reference) identifies the event.
        for draft in [
            postings::withdrawal_hold("w1", "c1", &eth(), amt(40)),
            postings::withdrawal_hold("w1", "c1", &eth(), amt(60)),
        ] {
            let again = s.post(draft, 4).await.unwrap();
            assert_eq!(again, Posted::AlreadyPosted { seq: 3 }, "[{}]", ts.name);
        }
        assert_eq!(snapshot(s).await, before, "[{}] a re-post changed the ledger", ts.name);
    }
}

#[tokio::test]
async fn a3_posting_that_would_overdraw_is_rejected_and_changes_nothing() {
    for ts in test_stores().await {
        let s = &ts.store;
        credit(s, "d1", "c1", 100).await;
        let before = snapshot(s).await;

        let err = s.post(postings::withdrawal_hold("w1", "c1", &eth(), amt(101)), 3).await.unwrap_err();
        assert!(
            matches!(err, StoreError::Ledger(LedgerError::WouldGoNegative { ref account, .. }) if account.starts_with("available:c1:")),
            "[{}] {err}",
            ts.name
        );
        assert_eq!(snapshot(s).await, before, "[{}] a rejected hold changed the ledger", ts.name);

        // Two transfers where only the second breaks A3: the first must not land either.
        let two_legs = EntryDraft {
            kind: EntryKind::WithdrawalHold,
            reference: "withdrawal:w2".into(),
            transfers: vec![
                Transfer::new(available("c1"), AccountRef::customer(AccountKind::Held, "c1", &eth()), amt(60)),
                Transfer::new(available("c1"), AccountRef::customer(AccountKind::Held, "c1", &eth()), amt(41)),
            ],
        };
        assert!(s.post(two_legs, 4).await.is_err(), "[{}]", ts.name);
        assert_eq!(snapshot(s).await, before, "[{}] half of a rejected entry landed", ts.name);

        // A malformed draft (zero amount) is refused the same way.
        let zero = postings::withdrawal_hold("w3", "c1", &eth(), amt(0));
        assert!(matches!(s.post(zero, 5).await, Err(StoreError::Ledger(LedgerError::ZeroAmount { index: 0 }))));
        assert_eq!(snapshot(s).await, before, "[{}]", ts.name);

        // The rejected event's reference stays free: the valid version posts as entry 3.
        let ok = s.post(postings::withdrawal_hold("w1", "c1", &eth(), amt(100)), 6).await.unwrap();
        assert!(matches!(ok, Posted::New(ref e) if e.seq == 3), "[{}] {ok:?}", ts.name);
        s.verify_ledger(|_| {}).await.unwrap();
    }
}

#[tokio::test]
async fn m8_posting_inside_a_rolled_back_transaction_leaves_no_trace() {
    for ts in test_stores().await {
        let s = &ts.store;
        credit(s, "d1", "c1", 100).await;
        let before = snapshot(s).await;
        let mut tx = s.begin_write().await.unwrap();
        let posted = s.post_entry(&mut tx, postings::withdrawal_hold("w1", "c1", &eth(), amt(10)), 3).await.unwrap();
        assert!(matches!(posted, Posted::New(_)), "[{}]", ts.name);
        tx.rollback().await.unwrap();
        assert_eq!(snapshot(s).await, before, "[{}]", ts.name);
        s.verify_ledger(|_| {}).await.unwrap();
    }
}

/// Direct SQL on `ledger_entries.transfers`: the amount of entry 4 is changed.
#[tokio::test]
async fn a2_verify_names_the_entry_whose_amount_was_edited() {
    for ts in test_stores().await {
        history(&ts).await;
        let s = &ts.store;
        let text: String = sqlx::query_scalar("SELECT transfers FROM ledger_entries WHERE seq = $1")
            .bind(4_i64)
            .fetch_one(s.pool())
            .await
            .unwrap();
        let mut transfers: Vec<Transfer> = serde_json::from_str(&text).unwrap();
        transfers[0].amount = amt(99);
        let edited = serde_json::to_string(&transfers).unwrap();
        sqlx::query("UPDATE ledger_entries SET transfers = $1 WHERE seq = $2")
            .bind(edited)
            .bind(4_i64)
            .execute(s.pool())
            .await
            .unwrap();
        let err = s.verify_ledger(|_| {}).await.unwrap_err();
        assert!(matches!(err, LedgerVerifyError::Journal(VerifyError::BadHash { seq: 4 })), "[{}] {err}", ts.name);
        assert!(err.to_string().contains("entry 4"), "[{}] the message names the entry: {err}", ts.name);
    }
}

/// Direct SQL: a journal row is deleted (from the middle, then the last one).
#[tokio::test]
async fn a2_verify_detects_a_deleted_entry() {
    for ts in test_stores().await {
        history(&ts).await;
        let s = &ts.store;
        sqlx::query("DELETE FROM ledger_entries WHERE seq = $1").bind(3_i64).execute(s.pool()).await.unwrap();
        let err = s.verify_ledger(|_| {}).await.unwrap_err();
        assert!(
            matches!(err, LedgerVerifyError::Journal(VerifyError::Sequence { seq: 4, expected: 3 })),
            "[{}] {err}",
            ts.name
        );
        assert!(err.to_string().contains("entry 4"), "[{}] {err}", ts.name);
    }
    for ts in test_stores().await {
        history(&ts).await;
        let s = &ts.store;
        sqlx::query("DELETE FROM ledger_entries WHERE seq = $1").bind(6_i64).execute(s.pool()).await.unwrap();
        let err = s.verify_ledger(|_| {}).await.unwrap_err();
        assert!(
            matches!(err, LedgerVerifyError::Head { head_seq: 6, journal_seq: 5 }),
            "[{}] deleting the newest entry is caught by the head: {err}",
            ts.name
        );
    }
}

/// Direct SQL on `ledger_accounts`: a stored balance no longer matches the journal.
#[tokio::test]
async fn a2_verify_detects_an_edited_stored_balance() {
    for ts in test_stores().await {
        history(&ts).await;
        let s = &ts.store;
        let account = available("c1").to_string();
        sqlx::query("UPDATE ledger_accounts SET credits = $1 WHERE account = $2")
            .bind("1000000")
            .bind(&account)
            .execute(s.pool())
            .await
            .unwrap();
        let err = s.verify_ledger(|_| {}).await.unwrap_err();
        assert!(
            matches!(err, LedgerVerifyError::Journal(VerifyError::BalanceMismatch { account: ref a, .. }) if *a == account),
            "[{}] {err}",
            ts.name
        );
    }
}

/// Direct SQL: an entry is re-written consistently (amount and its own hash recomputed), which breaks the
/// link from the next entry.
#[tokio::test]
async fn a2_verify_detects_a_rehashed_entry_by_the_broken_link() {
    for ts in test_stores().await {
        history(&ts).await;
        let s = &ts.store;
        let mut entries = journal(s).await;
        let e = &mut entries[2];
        e.transfers[0].amount = amt(1);
        let hash =
            kinko_core::ledger::entry_hash(e.seq, e.recorded_at_ms, e.kind, &e.reference, &e.transfers, &e.prev_hash);
        sqlx::query("UPDATE ledger_entries SET transfers = $1, hash = $2 WHERE seq = $3")
            .bind(serde_json::to_string(&e.transfers).unwrap())
            .bind(hex::encode(hash))
            .bind(e.seq as i64)
            .execute(s.pool())
            .await
            .unwrap();
        let err = s.verify_ledger(|_| {}).await.unwrap_err();
        assert!(matches!(err, LedgerVerifyError::Journal(VerifyError::BrokenLink { seq: 4 })), "[{}] {err}", ts.name);
    }
}
