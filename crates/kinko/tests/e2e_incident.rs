//! Incident replay end to end with the real binary (L3, K19, S5): `kinko serve` (dev mode, its in-process
//! signer) on a real anvil and a real store. A customer withdrawal kinko signed is matched and passes; then the
//! hot wallet is drained by a transaction kinko never signed (Zaif 2018: anvil impersonates the hot wallet as
//! the thief's stolen key would) and a customer deposit address is emptied the same way (Coincheck 2018). The
//! running server's reconciliation freezes both wallets before any further block, withdrawals are refused with
//! 423, the hot wallet's nonce does not move, `kinko reconcile` reports the shortfall, and
//! `kinko emergency freeze --scope all` from the command line stops everything and shows in
//! `kinko emergency status`. (Lifting, which needs approvals verified by the signer, is covered in
//! `kinko-server/tests/reconciliation.rs`.)

mod support;

use std::process::Command;
use std::time::Duration;

use kinko_core::freeze::FreezeScope;
use serde_json::json;
use support::{Customer, ETH, Harness, outside_address, wait_for};

const TIMEOUT: Duration = Duration::from_secs(60);

fn kinko(args: &[&str], config: &std::path::Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kinko"))
        .args(args)
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run kinko");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// An impersonated spend (the thief's transaction); returns its block.
async fn drain(h: &Harness, from: &str, to: &str, value_wei: u128) -> u64 {
    h.anvil.rpc("anvil_impersonateAccount", json!([from])).await.unwrap();
    let hash = h.anvil.send_eth(from, to, value_wei).await.unwrap();
    h.anvil.rpc("anvil_stopImpersonatingAccount", json!([from])).await.unwrap();
    h.anvil.mined_block(&hash).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l3_k19_s5_e2e_zaif_coincheck_replay_frozen_within_one_block_and_cli_freeze_all() {
    for ts in kinko_store::testing::test_stores().await {
        let name = ts.name;
        let h = Harness::new(ts, &[], 1, 30_000).await;
        let mut serve = h.spawn_serve();
        let base = h.api_base();
        wait_for("kinko serve", TIMEOUT, None, || async {
            reqwest::get(format!("{base}/healthz")).await.ok().filter(|r| r.status().is_success())
        })
        .await;
        let c = Customer::register(&base, &format!("{name}-zaif@example.com"), &h.mail_dir()).await;
        h.anvil.send_eth(kinko_chain::anvil::ACCOUNT1, &c.deposit_address, 2 * ETH).await.unwrap();
        wait_for("deposit credit", TIMEOUT, Some(&h.anvil), || async {
            (c.available().await == 2 * ETH).then_some(())
        })
        .await;

        // kinko's own withdrawal: signed, matched by the reconciliation, nothing frozen.
        let dest = outside_address(&format!("{name}-zaif-dest"));
        let (status, body) = c.withdraw("w-own", ETH / 2, &dest).await.unwrap();
        assert_eq!(status, 202, "{name}: {body}");
        let id = body["id"].as_str().unwrap().to_string();
        wait_for("settlement", TIMEOUT, Some(&h.anvil), || async {
            let w = c.get(&format!("/v1/withdrawals/{id}")).await.ok()?;
            (w["status"] == "settled").then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(h.ts.store.active_freezes().await.unwrap().is_empty(), "{name}: kinko's own spend is not unknown");

        // Zaif: the hot wallet drained by a transaction kinko did not sign. No block is mined after it.
        let thief = outside_address(&format!("{name}-thief"));
        let block = drain(&h, &h.hot_wallet, &thief, 999 * ETH).await;
        let hot_nonce = h.nonce_of(&h.hot_wallet).await;
        let freeze = wait_for("the reconciliation's freeze", TIMEOUT, None, || async {
            h.ts.store
                .active_freezes()
                .await
                .ok()?
                .into_iter()
                .find(|f| f.scope == FreezeScope::Wallet(h.hot_wallet.clone()))
        })
        .await;
        assert_eq!(h.anvil.block_number().await.unwrap(), block, "{name}: frozen within one block of the spend");
        assert_eq!(freeze.set_by, "system:reconciliation", "{name}");

        // Coincheck: a customer deposit address emptied the same way.
        drain(&h, &c.deposit_address, &thief, 2 * ETH - ETH / 10).await;
        wait_for("the deposit address's freeze", TIMEOUT, None, || async {
            let active = h.ts.store.active_freezes().await.ok()?;
            active.iter().any(|f| f.scope == FreezeScope::Wallet(c.deposit_address.clone())).then_some(())
        })
        .await;

        // Withdrawals refused, naming the freeze; nothing leaves the hot wallet.
        let (status, body) = c.withdraw("w-after", ETH / 10, &dest).await.unwrap();
        assert_eq!(status, 423, "{name}: {body}");
        assert!(body["detail"].as_str().is_some_and(|d| d.contains(&freeze.id)), "{name}: {body}");
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(h.nonce_of(&h.hot_wallet).await, hot_nonce, "{name}: no new transaction from the hot wallet");

        // The balance reconciliation on demand: 1.5 ETH owed, far less held.
        let (ok, out) = kinko(&["reconcile"], &h.config_path);
        assert!(!ok && out.contains("SHORTFALL"), "{name}: {out}");

        // The emergency stop from the command line: everything, at once, by one person.
        let (ok, out) = kinko(
            &["emergency", "freeze", "--scope", "all", "--reason", "incident drill", "--by", "alice"],
            &h.config_path,
        );
        assert!(ok, "{name}: {out}");
        assert!(out.contains("\"database\": \"stored\"") && out.contains("\"cli:alice\""), "{name}: {out}");
        let (ok, out) = kinko(&["emergency", "status"], &h.config_path);
        assert!(ok && out.contains("\"all\"") && out.contains("incident drill"), "{name}: {out}");
        let (ok, out) = kinko(&["emergency", "freeze", "--scope", "planet:x", "--reason", "x"], &h.config_path);
        assert!(!ok && out.contains("--scope"), "{name}: {out}");

        let _ = serve.kill();
        let _ = serve.wait();
    }
}
