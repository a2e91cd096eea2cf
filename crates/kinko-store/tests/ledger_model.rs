//! The store against the in-memory model (M8): after a random sequence of business events, the
//! persisted ledger (SQLite) and `kinko_core::ledger::Ledger` agree on every balance, the journal, the
//! head hash, and on which postings were refused. The core's own property tests (kinko-core
//! tests/ledger_props.rs) cover the rules at many more cases; this one checks the persistence path.

use kinko_core::ledger::{Ledger, postings};
use kinko_core::{Amount, AssetCode};
use kinko_store::ledger::Posted;
use kinko_store::testing::sqlite_store;
use proptest::prelude::*;

const CUSTOMERS: [&str; 2] = ["c0", "c1"];
const WALLETS: [&str; 2] = ["0xa0", "0xa1"];

#[derive(Clone, Debug)]
enum Op {
    Fund(usize, u128),
    Detect(usize, usize, u128),
    Confirm(usize, u128),
    Hold(usize, u128),
    Release(usize, u128),
    Settle(usize, usize, u128, u128),
    Reverse(usize, usize, u128),
}

fn op() -> impl Strategy<Value = Op> {
    let v = 0u128..150;
    prop_oneof![
        (0..2usize, v.clone()).prop_map(|(w, a)| Op::Fund(w, a)),
        (0..2usize, 0..2usize, v.clone()).prop_map(|(c, w, a)| Op::Detect(c, w, a)),
        (0..2usize, v.clone()).prop_map(|(c, a)| Op::Confirm(c, a)),
        (0..2usize, v.clone()).prop_map(|(c, a)| Op::Hold(c, a)),
        (0..2usize, v.clone()).prop_map(|(c, a)| Op::Release(c, a)),
        (0..2usize, 0..2usize, v.clone(), 0u128..3).prop_map(|(c, w, a, f)| Op::Settle(c, w, a, f)),
        (0..2usize, 0..2usize, v).prop_map(|(c, w, a)| Op::Reverse(c, w, a)),
    ]
}

fn draft(op: &Op, n: usize, model: &Ledger) -> kinko_core::ledger::EntryDraft {
    let eth: AssetCode = "ETH".parse().unwrap();
    let a = Amount::from_base_units;
    let id = format!("x{n}");
    match *op {
        Op::Fund(w, v) => postings::custodian_funding(format!("funding:{n}"), WALLETS[w], &eth, a(v)),
        Op::Detect(c, w, v) => postings::deposit_detected(&id, CUSTOMERS[c], WALLETS[w], &eth, a(v)),
        Op::Confirm(c, v) => postings::deposit_confirmed(&id, CUSTOMERS[c], &eth, a(v)),
        Op::Hold(c, v) => postings::withdrawal_hold(&id, CUSTOMERS[c], &eth, a(v)),
        Op::Release(c, v) => postings::withdrawal_release(&id, CUSTOMERS[c], &eth, a(v)),
        Op::Settle(c, w, v, f) => postings::withdrawal_settled(&id, CUSTOMERS[c], WALLETS[w], &eth, a(v), a(f)),
        Op::Reverse(c, w, v) => {
            let available = kinko_core::ledger::AccountRef::customer(
                kinko_core::ledger::AccountKind::Available,
                CUSTOMERS[c],
                &eth,
            );
            let now = model.balance(&available).normal_amount(kinko_core::ledger::AccountKind::Available);
            postings::deposit_reversed(&id, CUSTOMERS[c], WALLETS[w], &eth, a(v), now)
        }
    }
}

proptest! {
    // Each case opens a fresh SQLite database and commits every posting durably, so cases are few.
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn m8_store_and_model_agree_after_random_events(ops in prop::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let ts = sqlite_store().await;
            let mut model = Ledger::new();
            let mut model_journal = Vec::new();
            for (n, op) in ops.iter().enumerate() {
                let d = draft(op, n, &model);
                let now_ms = 1_000 + n as i64;
                let expected = model.post(d.clone(), now_ms);
                let got = ts.store.post(d.clone(), now_ms).await;
                match (expected, got) {
                    (Ok(e), Ok(Posted::New(g))) => {
                        prop_assert_eq!(&e, &g);
                        model_journal.push(e);
                    }
                    (Err(e), Err(kinko_store::StoreError::Ledger(g))) => prop_assert_eq!(e, g),
                    (e, g) => prop_assert!(false, "model and store disagree on {d:?}: model {e:?}, store {g:?}"),
                }
            }
            prop_assert_eq!(&ts.store.all_balances().await.unwrap(), model.balances());
            prop_assert_eq!(ts.store.journal_page(1, 10_000).await.unwrap(), model_journal);
            let report = ts.store.verify_ledger(|_| {}).await.map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(report.head_hash, hex::encode(model.last_hash()));
            Ok(())
        })?;
    }
}
