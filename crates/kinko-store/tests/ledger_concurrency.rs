//! Concurrent postings (A3, M8): many tasks place withdrawal holds for one customer at once, each on its
//! own connection. The ledger must serialise them: the sum of accepted holds never exceeds what was
//! available, rejected holds leave no trace, and journal sequence numbers have no gaps. This is what
//! makes several `kinko serve` instances on one PostgreSQL database safe.

use kinko_core::ledger::{AccountKind, AccountRef, LedgerError, postings};
use kinko_core::{Amount, AssetCode};
use kinko_store::StoreError;
use kinko_store::ledger::Posted;
use kinko_store::testing::test_stores;

/// Tasks racing for the same balance; more than the balance can cover.
const TASKS: usize = 24;
const AVAILABLE: u128 = 100;
const HOLD: u128 = 7;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a3_concurrent_holds_never_overdraw_and_leave_no_sequence_gaps() {
    let eth: AssetCode = "ETH".parse().unwrap();
    for ts in test_stores().await {
        let s = ts.store.clone();
        s.post(postings::deposit_detected("d1", "c1", "0xd1", &eth, Amount::from_base_units(AVAILABLE)), 1)
            .await
            .unwrap();
        s.post(postings::deposit_confirmed("d1", "c1", &eth, Amount::from_base_units(AVAILABLE)), 2).await.unwrap();

        let start = std::sync::Arc::new(tokio::sync::Barrier::new(TASKS));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..TASKS {
            let (s, eth, start) = (s.clone(), eth.clone(), start.clone());
            tasks.spawn(async move {
                start.wait().await;
                let draft = postings::withdrawal_hold(&format!("w{i}"), "c1", &eth, Amount::from_base_units(HOLD));
                s.post(draft, 10 + i as i64).await
            });
        }
        let mut accepted = 0u128;
        while let Some(joined) = tasks.join_next().await {
            match joined.expect("task panicked") {
                Ok(Posted::New(_)) => accepted += 1,
                Ok(other) => panic!("[{}] unexpected {other:?}", ts.name),
                // The only acceptable failure is the A3 refusal itself: no lock errors, no deadlocks.
                Err(StoreError::Ledger(LedgerError::WouldGoNegative { .. })) => {}
                Err(e) => panic!("[{}] a concurrent hold failed for a reason other than A3: {e}", ts.name),
            }
        }
        assert_eq!(accepted, AVAILABLE / HOLD, "[{}] every hold that fits is accepted", ts.name);
        let held = s.balance(&AccountRef::customer(AccountKind::Held, "c1", &eth)).await.unwrap();
        let available = s.balance(&AccountRef::customer(AccountKind::Available, "c1", &eth)).await.unwrap();
        assert_eq!(held.normal(AccountKind::Held), (accepted * HOLD) as i128, "[{}]", ts.name);
        assert!(held.normal(AccountKind::Held) <= AVAILABLE as i128, "[{}] holds exceed the deposit", ts.name);
        assert_eq!(available.normal(AccountKind::Available), (AVAILABLE - accepted * HOLD) as i128, "[{}]", ts.name);

        let journal = s.journal_page(1, 10_000).await.unwrap();
        let seqs: Vec<u64> = journal.iter().map(|e| e.seq).collect();
        let expected: Vec<u64> = (1..=2 + accepted as u64).collect();
        assert_eq!(seqs, expected, "[{}] sequence numbers have gaps or duplicates", ts.name);
        let report = s.verify_ledger(|_| {}).await.unwrap_or_else(|e| panic!("[{}] {e}", ts.name));
        assert_eq!(report.entries, 2 + accepted as u64, "[{}]", ts.name);
    }
}
