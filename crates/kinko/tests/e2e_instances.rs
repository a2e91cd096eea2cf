//! Two kinko instances on one PostgreSQL database under the same load (M13, issue #2): work is claimed
//! with row locks and compare-and-set steps, so no withdrawal is processed twice: one nonce each, one
//! signed payload each, each paid exactly once, and the ledger verifies.

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use support::{Customer, ETH, Harness, free_port, outside_address, wait_for};

const WITHDRAWALS: usize = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn m13_two_instances_on_postgres_never_process_one_withdrawal_twice() {
    let Some(ts) = kinko_store::testing::postgres_store().await else {
        eprintln!("no PostgreSQL for this run (KINKO_TEST_POSTGRES_URL unset): skipped");
        return;
    };
    let h = Harness::new(ts, &[], 2, 30_000).await;
    let a = h.start_in_process().await;
    let mut second = h.config.clone();
    second.instance_id = "kinko-2".into();
    second.listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let kek = kinko_server::app::load_kek(&second).unwrap();
    let b = kinko_server::app::start(second, &kek).await.unwrap();
    let bases = [format!("http://{}", a.listen), format!("http://{}", b.listen)];

    let alice = Customer::register(&bases[0], "alice@example.com", &h.mail_dir()).await;
    h.anvil.send_eth(kinko_chain::anvil::ACCOUNT1, &alice.deposit_address, 10 * ETH).await.unwrap();
    wait_for("deposit credit", Duration::from_secs(60), Some(&h.anvil), || async {
        (alice.available().await == 10 * ETH).then_some(())
    })
    .await;

    // The same customer's requests alternate between the two instances' APIs.
    let mut ids = Vec::new();
    for i in 0..WITHDRAWALS {
        let mut via = alice.clone();
        via.base = bases[i % 2].clone();
        let (status, body) =
            via.withdraw(&format!("pair-{i}"), ETH / 10, &outside_address(&format!("pair-{i}"))).await.unwrap();
        assert_eq!(status, 202, "{body}");
        ids.push(body["id"].as_str().unwrap().to_string());
    }
    let store = h.ts.store.clone();
    wait_for("all settled", Duration::from_secs(120), Some(&h.anvil), || async {
        let counts = store.count_withdrawals_by_status().await.ok()?;
        (counts == vec![("settled".to_string(), WITHDRAWALS as i64)]).then_some(())
    })
    .await;

    let mut nonces = BTreeSet::new();
    for (i, id) in ids.iter().enumerate() {
        let w = store.withdrawal(id).await.unwrap().unwrap();
        assert!(nonces.insert(w.nonce.unwrap()), "nonce {:?} used twice", w.nonce);
        let versions = store.tx_versions(id).await.unwrap();
        assert_eq!(versions.len(), 1, "{id}: signed once (no replacement was needed)");
        assert_eq!(h.balance_of(&outside_address(&format!("pair-{i}"))).await, ETH / 10, "{id}: paid once");
    }
    assert_eq!(nonces, (0..WITHDRAWALS as u64).collect(), "nonces are 0..n without gaps");
    assert_eq!(h.nonce_of(&h.hot_wallet).await, WITHDRAWALS as u64);
    store.verify_ledger(|_| {}).await.unwrap();
    a.stop().await;
    b.stop().await;
}
