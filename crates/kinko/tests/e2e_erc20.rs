//! ERC-20 end to end on a real anvil with OpenZeppelin's token from npm (K22, C2, M6): a customer's token
//! deposit is detected and credited by the running server, and a token withdrawal requested over the HTTP
//! API is built as `transfer(destination, amount)` to the contract, checked and signed by the real
//! signer with its own token map, broadcast, confirmed and settled: the token amount leaves the
//! customer's token balance and the network fee, paid in ETH, is the custodian's ETH expense.
//! Runs on every test backend (SQLite, and PostgreSQL under scripts/test).

mod support;

use std::time::Duration;

use kinko_chain::anvil::{ACCOUNT0, ACCOUNT1};
use kinko_chain::anvil_erc20::{self, Address, U256};
use kinko_core::AssetCode;
use kinko_core::ledger::{AccountKind, AccountRef, postings};
use kinko_server::erc20::TokenConfig;
use serde_json::{Value, json};
use support::{Customer, Harness, TRANSACTION_PASSWORD, outside_address, wait_for};

const TIMEOUT: Duration = Duration::from_secs(90);
const TOKEN: &str = "TUSD";
/// 6 decimals, like the common dollar tokens (the OpenZeppelin preset itself reports 18; decimals are
/// for display only and every amount here is in base units).
const UNIT: u128 = 1_000_000;

fn hexu(v: &Value) -> u128 {
    u128::from_str_radix(v.as_str().unwrap().trim_start_matches("0x"), 16).unwrap()
}

/// POSTs as the customer, stepping up once when the session's step-up ran out.
async fn post(c: &Customer, path: &str, key: Option<&str>, body: &Value) -> (u16, Value) {
    for _ in 0..2 {
        let mut req = c.http.post(format!("{}{path}", c.base)).bearer_auth(&c.token).json(body);
        if let Some(k) = key {
            req = req.header("Idempotency-Key", k);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        if status == 403 && v["type"] == "urn:kinko:problem:step-up-required" {
            c.step_up().await.unwrap();
            continue;
        }
        return (status, v);
    }
    panic!("{path}: still asks for step-up after stepping up");
}

async fn balance(c: &Customer, asset: &str, field: &str) -> u128 {
    let v = c.get("/v1/balances").await.unwrap();
    let b = v.as_array().unwrap().iter().find(|b| b["asset"] == asset).unwrap_or_else(|| panic!("{asset} in {v}"));
    b[field].as_str().unwrap().parse().unwrap()
}

/// K22, C2, M13: token deposit credited by the running server, then a token withdrawal over the API
/// settles: the recipient holds exactly the amount, the customer is debited the token amount, and the
/// fee is posted in ETH to network fees (none in the token).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k22_erc20_withdrawal_settles() {
    for ts in kinko_store::testing::test_stores().await {
        let backend = ts.name;
        let mut h = Harness::new(ts, &[], 3, 30_000).await;
        let token = anvil_erc20::deploy_erc20(&h.anvil, ACCOUNT0, "Test USD", TOKEN).await.unwrap();
        let tusd: AssetCode = TOKEN.parse().unwrap();
        // The token, a withdrawal policy for it on the hot wallet, and the signer's quorum entry for it.
        h.config.ethereum.tokens =
            vec![TokenConfig { code: TOKEN.into(), decimals: 6, contract: format!("{token:#x}"), gas_limit: 100_000 }];
        let mut policy = kinko_server::config::dev_hot_policy();
        policy.asset = tusd.clone();
        h.config.policies.push(policy);
        let mut quorum = kinko_signer::approvals::SigningQuorumConfig::dev_default();
        quorum.asset = TOKEN.into();
        h.config.signer.quorum.push(quorum);
        // The hot wallet's token float, on chain and in the ledger (sweeping deposits into it is H6's part).
        let hot: Address = h.hot_wallet.parse().unwrap();
        anvil_erc20::mint(&h.anvil, token, ACCOUNT0, hot, 1_000 * UNIT).await.unwrap();
        let funding = postings::custodian_funding(
            "fund:tusd".into(),
            &h.hot_wallet,
            &tusd,
            kinko_core::Amount::from_base_units(1_000 * UNIT),
        );
        h.ts.store.post(funding, 1).await.unwrap();
        anvil_erc20::mint(&h.anvil, token, ACCOUNT0, ACCOUNT1.parse().unwrap(), 1_000 * UNIT).await.unwrap();
        let running = h.start_in_process().await;

        let c = Customer::register(&h.api_base(), &format!("erc20-{backend}@example.com"), &h.mail_dir()).await;
        let (status, v) = post(&c, "/v1/deposit-addresses", None, &json!({"asset": TOKEN})).await;
        assert_eq!(status, 200, "{backend}: {v}");
        let deposit: Address = v["address"].as_str().unwrap().parse().unwrap();
        assert_ne!(format!("{deposit:#x}"), c.deposit_address, "{backend}: one address per (customer, asset)");
        anvil_erc20::transfer(&h.anvil, token, ACCOUNT1, deposit, 100 * UNIT).await.unwrap();
        wait_for("token deposit credit", TIMEOUT, Some(&h.anvil), || async {
            (balance(&c, TOKEN, "available").await == 100 * UNIT).then_some(())
        })
        .await;

        let dest = outside_address(&format!("{backend}-erc20-dest"));
        let book = json!({"label": "token dest", "asset": TOKEN, "address": dest});
        let (status, v) = post(&c, "/v1/address-book", None, &book).await;
        assert!(status == 201 || status == 409, "{backend}: save destination: {status} {v}");
        let body = json!({
            "asset": TOKEN, "amount": (40 * UNIT).to_string(), "destination": dest,
            "transaction_password": TRANSACTION_PASSWORD,
        });
        let (status, v) = post(&c, "/v1/withdrawals", Some("erc20-w1"), &body).await;
        assert_eq!(status, 202, "{backend}: {v}");
        let id = v["id"].as_str().unwrap().to_string();
        if v["status"] == "awaiting_confirmation" {
            let token = c.confirmation_token(&id).await;
            let r = c
                .http
                .post(format!("{}/v1/withdrawal-confirmations", c.base))
                .json(&json!({ "token": token }))
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "{backend}: confirm: {}", r.text().await.unwrap_or_default());
        }

        let w = wait_for("token withdrawal settlement", TIMEOUT, Some(&h.anvil), || async {
            let w = c.get(&format!("/v1/withdrawals/{id}")).await.ok()?;
            (w["status"] == "settled").then_some(w)
        })
        .await;
        assert!(w["confirmations"].as_u64().unwrap() >= 3, "{backend}: settled before the depth: {w}");

        // On chain: a call to the token contract with no value; the recipient holds exactly the amount.
        let tx_hash = w["tx_hash"].as_str().unwrap();
        let tx = h.anvil.rpc("eth_getTransactionByHash", json!([tx_hash])).await.unwrap();
        assert_eq!(tx["to"].as_str().unwrap().to_lowercase(), format!("{token:#x}"), "{backend}: {tx}");
        assert_eq!(hexu(&tx["value"]), 0, "{backend}: no ETH moved");
        assert_eq!(tx["chainId"], "0x7a69", "{backend}");
        let got = anvil_erc20::balance_of(&h.anvil, token, dest.parse().unwrap()).await.unwrap();
        assert_eq!(got, U256::from(40 * UNIT), "{backend}: recipient's token balance");
        assert_eq!(h.balance_of(&dest).await, 0, "{backend}: the recipient got no ETH");

        // Ledger: customer debited the token amount; the fee, what the chain charged, is an ETH expense.
        assert_eq!(balance(&c, TOKEN, "available").await, 60 * UNIT, "{backend}");
        assert_eq!(balance(&c, TOKEN, "held").await, 0, "{backend}");
        assert_eq!(balance(&c, "ETH", "available").await, 0, "{backend}: the customer pays no ETH");
        let receipt = h.anvil.rpc("eth_getTransactionReceipt", json!([tx_hash])).await.unwrap();
        let fee = hexu(&receipt["gasUsed"]) * hexu(&receipt["effectiveGasPrice"]);
        assert_eq!(w["fee"].as_str().unwrap(), fee.to_string(), "{backend}: the fee the chain charged");
        let eth: AssetCode = "ETH".parse().unwrap();
        let store = &h.ts.store;
        let eth_fees = store.balance(&AccountRef::network_fees(&eth)).await.unwrap();
        assert_eq!(eth_fees.normal(AccountKind::NetworkFees) as u128, fee, "{backend}: fee in ETH");
        let token_fees = store.balance(&AccountRef::network_fees(&tusd)).await.unwrap();
        assert_eq!(token_fees.normal(AccountKind::NetworkFees), 0, "{backend}: no fee in the token");
        let hot_eth = store.balance(&AccountRef::wallet(&h.hot_wallet, &eth)).await.unwrap();
        assert_eq!(
            hot_eth.normal(AccountKind::Wallet) as u128,
            h.balance_of(&h.hot_wallet).await,
            "{backend}: ETH ledger = chain"
        );
        let hot_tusd = store.balance(&AccountRef::wallet(&h.hot_wallet, &tusd)).await.unwrap();
        let hot_tusd_chain = anvil_erc20::balance_of(&h.anvil, token, hot).await.unwrap();
        assert_eq!(
            U256::from(hot_tusd.normal(AccountKind::Wallet) as u128),
            hot_tusd_chain,
            "{backend}: token ledger = chain"
        );
        store.verify_ledger(|_| {}).await.unwrap();
        running.stop().await;
    }
}

struct Proc(std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `kinko signer serve` with `config`, unsealed with the dev share through `kinko unseal`.
async fn signer_process(h: &Harness, config: &kinko_server::Config, name: &str) -> Proc {
    let path = h.dir.path().join(format!("{name}.toml"));
    std::fs::write(&path, toml::to_string(config).unwrap()).unwrap();
    let socket = config.signer_socket();
    let _ = std::fs::remove_file(&socket);
    let log = std::fs::OpenOptions::new().create(true).append(true).open(h.dir.path().join("signer.log")).unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_kinko"))
        .args(["signer", "serve", "--config"])
        .arg(&path)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::from(log.try_clone().unwrap()))
        .stderr(std::process::Stdio::from(log))
        .spawn()
        .expect("spawn kinko signer serve");
    let proc = Proc(child);
    wait_for("signer socket", TIMEOUT, None, || async { socket.exists().then_some(()) }).await;
    let share = config.data_dir.join("dev-share.json");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_kinko"))
        .args(["unseal", "--config"])
        .arg(&path)
        .arg("--share")
        .arg(&share)
        .output()
        .unwrap();
    assert!(o.status.success(), "unseal: {}", String::from_utf8_lossy(&o.stderr));
    proc
}

/// K22, K20, S1: the signer process builds its token map from ITS OWN configuration. A signer whose file
/// does not list the token refuses the server's token withdrawal (nothing is signed or sent); the same
/// signer restarted with the token in its file signs the identical reserved payload and it settles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k22_signer_process_token_map_comes_from_its_own_config() {
    let ts = kinko_store::testing::sqlite_store().await;
    let mut h = Harness::new(ts, &[], 2, 30_000).await;
    let token = anvil_erc20::deploy_erc20(&h.anvil, ACCOUNT0, "Test USD", TOKEN).await.unwrap();
    let tusd: AssetCode = TOKEN.parse().unwrap();
    let hot: Address = h.hot_wallet.parse().unwrap();
    anvil_erc20::mint(&h.anvil, token, ACCOUNT0, hot, 1_000 * UNIT).await.unwrap();
    let funding = postings::custodian_funding(
        "fund:tusd".into(),
        &h.hot_wallet,
        &tusd,
        kinko_core::Amount::from_base_units(1_000 * UNIT),
    );
    h.ts.store.post(funding, 1).await.unwrap();
    anvil_erc20::mint(&h.anvil, token, ACCOUNT0, ACCOUNT1.parse().unwrap(), 1_000 * UNIT).await.unwrap();
    let mut policy = kinko_server::config::dev_hot_policy();
    policy.asset = tusd.clone();
    h.config.policies.push(policy);
    let mut quorum = kinko_signer::approvals::SigningQuorumConfig::dev_default();
    quorum.asset = TOKEN.into();
    h.config.signer.quorum.push(quorum);
    h.config.signer.mode = kinko_server::config::SignerMode::Remote;
    // The signer's file first WITHOUT the token; the server's with it.
    let signer_without = h.config.clone();
    h.config.ethereum.tokens =
        vec![TokenConfig { code: TOKEN.into(), decimals: 6, contract: format!("{token:#x}"), gas_limit: 100_000 }];
    let signer = signer_process(&h, &signer_without, "signer-without-token").await;
    let running = h.start_in_process().await;

    let c = Customer::register(&h.api_base(), "erc20-remote@example.com", &h.mail_dir()).await;
    let (status, v) = post(&c, "/v1/deposit-addresses", None, &json!({"asset": TOKEN})).await;
    assert_eq!(status, 200, "{v}");
    let deposit: Address = v["address"].as_str().unwrap().parse().unwrap();
    anvil_erc20::transfer(&h.anvil, token, ACCOUNT1, deposit, 100 * UNIT).await.unwrap();
    wait_for("token deposit credit", TIMEOUT, Some(&h.anvil), || async {
        (balance(&c, TOKEN, "available").await == 100 * UNIT).then_some(())
    })
    .await;
    let dest = outside_address("erc20-remote-dest");
    let book = json!({"label": "token dest", "asset": TOKEN, "address": dest});
    let (status, v) = post(&c, "/v1/address-book", None, &book).await;
    assert!(status == 201 || status == 409, "save destination: {status} {v}");
    let body = json!({
        "asset": TOKEN, "amount": (25 * UNIT).to_string(), "destination": dest,
        "transaction_password": TRANSACTION_PASSWORD,
    });
    let (status, v) = post(&c, "/v1/withdrawals", Some("erc20-remote-w1"), &body).await;
    assert_eq!(status, 202, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    if v["status"] == "awaiting_confirmation" {
        let t = c.confirmation_token(&id).await;
        let r = c.http.post(format!("{}/v1/withdrawal-confirmations", c.base)).json(&json!({ "token": t })).send();
        assert!(r.await.unwrap().status().is_success());
    }
    let row = wait_for("the signer's refusal", TIMEOUT, None, || async {
        let w = h.ts.store.withdrawal(&id).await.ok()??;
        w.error.as_deref().is_some_and(|e| e.contains("nor a token the signer knows")).then_some(w)
    })
    .await;
    assert!(row.tx_hash.is_none(), "nothing signed: {row:?}");
    assert!(h.ts.store.tx_versions(&id).await.unwrap().is_empty(), "nothing signed");

    // The same signer, now with the token in its own file.
    drop(signer);
    let mut signer_with = h.config.clone();
    signer_with.ethereum.tokens = h.config.ethereum.tokens.clone();
    let _signer = signer_process(&h, &signer_with, "signer-with-token").await;
    let w = wait_for("token withdrawal settlement", TIMEOUT, Some(&h.anvil), || async {
        let w = c.get(&format!("/v1/withdrawals/{id}")).await.ok()?;
        (w["status"] == "settled").then_some(w)
    })
    .await;
    let got = anvil_erc20::balance_of(&h.anvil, token, dest.parse().unwrap()).await.unwrap();
    assert_eq!(got, U256::from(25 * UNIT), "recipient's token balance: {w}");
    assert_eq!(balance(&c, TOKEN, "available").await, 75 * UNIT);
    h.ts.store.verify_ledger(|_| {}).await.unwrap();
    running.stop().await;
}
