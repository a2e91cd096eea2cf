//! The customer withdrawal end to end on a real anvil, through the HTTP API and the pipeline, on every
//! test backend (SQLite, and PostgreSQL under scripts/test).

mod support;

use std::time::Duration;

use kinko_core::ledger::{AccountKind, AccountRef};
use serde_json::json;
use support::{Customer, ETH, Harness, outside_address, wait_for};

const TIMEOUT: Duration = Duration::from_secs(60);

async fn credited_customer(h: &Harness, email: &str, amount: u128) -> Customer {
    let c = Customer::register(&h.api_base(), email, &h.mail_dir()).await;
    h.anvil.send_eth(kinko_chain::anvil::ACCOUNT1, &c.deposit_address, amount).await.unwrap();
    wait_for("deposit credit", TIMEOUT, Some(&h.anvil), || async { (c.available().await == amount).then_some(()) })
        .await;
    c
}

/// M13, C2, C3, A2: a withdrawal is signed for the configured chain id, broadcast, confirmed, and settled
/// only after the confirmation depth, with the fee the chain charged posted; the destination receives
/// exactly the amount and the ledger's hot wallet equals the chain's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn m13_c2_c3_withdrawal_confirms_and_settles_with_fee_posted() {
    for ts in kinko_store::testing::test_stores().await {
        let backend = ts.name;
        let h = Harness::new(ts, &[], 3, 30_000).await;
        let running = h.start_in_process().await;
        let c = credited_customer(&h, "alice@example.com", 2 * ETH).await;

        let dest = outside_address(&format!("{backend}-dest"));
        let (status, body) = c.withdraw("w-1", ETH / 2, &dest).await.unwrap();
        assert_eq!(status, 202, "{backend}: {body}");
        let id = body["id"].as_str().unwrap().to_string();

        let w = wait_for("settlement", TIMEOUT, Some(&h.anvil), || async {
            let w = c.get(&format!("/v1/withdrawals/{id}")).await.ok()?;
            (w["status"] == "settled").then_some(w)
        })
        .await;
        assert!(w["confirmations"].as_u64().unwrap() >= 3, "{backend}: settled before the confirmation depth: {w}");

        let tx_hash = w["tx_hash"].as_str().unwrap();
        let receipt = h.anvil.rpc("eth_getTransactionReceipt", json!([tx_hash])).await.unwrap();
        let hexu =
            |v: &serde_json::Value| u128::from_str_radix(v.as_str().unwrap().trim_start_matches("0x"), 16).unwrap();
        let fee = hexu(&receipt["gasUsed"]) * hexu(&receipt["effectiveGasPrice"]);
        assert_eq!(w["fee"].as_str().unwrap(), fee.to_string(), "{backend}: fee posted is what the chain charged");
        let tx = h.anvil.rpc("eth_getTransactionByHash", json!([tx_hash])).await.unwrap();
        assert_eq!(tx["chainId"], "0x7a69", "{backend}: EIP-155 chain id 31337 is in the signed tx (C3)");
        assert_eq!(tx["type"], "0x2", "{backend}: EIP-1559");

        assert_eq!(h.balance_of(&dest).await, ETH / 2, "{backend}: destination got exactly the amount");
        assert_eq!(c.available().await, 2 * ETH - ETH / 2, "{backend}: customer available");
        let eth: kinko_core::AssetCode = "ETH".parse().unwrap();
        let hot = h.ts.store.balance(&AccountRef::wallet(&h.hot_wallet, &eth)).await.unwrap();
        assert_eq!(
            hot.normal(AccountKind::Wallet) as u128,
            h.balance_of(&h.hot_wallet).await,
            "{backend}: ledger = chain"
        );
        let fees = h.ts.store.balance(&AccountRef::network_fees(&eth)).await.unwrap();
        assert_eq!(fees.normal(AccountKind::NetworkFees) as u128, fee, "{backend}: fee expensed to the custodian");
        h.ts.store.verify_ledger(|_| {}).await.unwrap();
        running.stop().await;
    }
}

/// C4, C5: with mining stopped the withdrawal's transaction is stuck; the pipeline replaces it with the
/// same nonce and higher fees; when mining resumes exactly one version lands and the customer is paid once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c4_c5_stuck_transaction_is_replaced_and_only_one_lands() {
    let ts = kinko_store::testing::sqlite_store().await;
    let h = Harness::new(ts, &["--no-mining"], 2, 1_500).await;
    let running = h.start_in_process().await;
    let c = credited_customer(&h, "bob@example.com", 3 * ETH).await;

    let dest = outside_address("stuck-dest");
    let (status, body) = c.withdraw("w-stuck", ETH, &dest).await.unwrap();
    assert_eq!(status, 202, "{body}");
    let id = body["id"].as_str().unwrap().to_string();

    // No blocks: wait for at least one replacement.
    let versions = wait_for("a replacement transaction", TIMEOUT, None, || async {
        let v = h.ts.store.tx_versions(&id).await.ok()?;
        (v.len() >= 2).then_some(v)
    })
    .await;
    assert!(versions.iter().all(|v| v.nonce == versions[0].nonce), "replacements reuse the nonce");
    assert!(versions[1].fees.max_fee_per_gas > versions[0].fees.max_fee_per_gas, "replacement bids more");
    assert!(versions[1].fees.max_priority_fee_per_gas > versions[0].fees.max_priority_fee_per_gas);

    let w = wait_for("settlement", TIMEOUT, Some(&h.anvil), || async {
        let w = c.get(&format!("/v1/withdrawals/{id}")).await.ok()?;
        (w["status"] == "settled").then_some(w)
    })
    .await;
    let mut landed = 0;
    for v in h.ts.store.tx_versions(&id).await.unwrap() {
        let receipt = h.anvil.rpc("eth_getTransactionReceipt", json!([v.tx_hash])).await.unwrap();
        if !receipt.is_null() {
            landed += 1;
            assert_eq!(w["tx_hash"].as_str().unwrap(), v.tx_hash, "the settled hash is the one that landed");
        }
    }
    assert_eq!(landed, 1, "exactly one version is on chain");
    assert_eq!(h.balance_of(&dest).await, ETH, "paid once");
    assert_eq!(h.nonce_of(&h.hot_wallet).await, 1, "one nonce used");
    h.ts.store.verify_ledger(|_| {}).await.unwrap();
    running.stop().await;
}
