//! ERC-20 deposit detection on a real anvil with OpenZeppelin's token from npm and real databases (K22,
//! C2, M6): credit after N confirmations, reversal by a deep re-org, foreign contracts and malformed
//! Transfer logs never credited. Every test runs on SQLite and, when `KINKO_TEST_POSTGRES_URL` is set, on
//! PostgreSQL.

use alloy_primitives::Address;
use kinko_chain::anvil::{ACCOUNT0, ACCOUNT1, Anvil};
use kinko_chain::anvil_erc20;
use kinko_chain::evm::rpc::EvmRpc;
use kinko_core::deposit::DepositStatus;
use kinko_core::ledger::AccountKind;
use kinko_core::{Amount, AssetCode};
use kinko_server::erc20::{TokenConfig, TokenSet};
use kinko_server::watcher::{ScanReport, WatcherError, scan_once_with_tokens};
use kinko_store::Store;
use kinko_store::sqlx;
use kinko_store::testing::test_stores;
use serde_json::json;

const CHAIN: &str = "eth";
const CUSTOMER: &str = "cus_erc20";
const DEPOSIT_ADDR: &str = "0x00000000000000000000000000000000000000d7";
const OUTSIDER: &str = "0x00000000000000000000000000000000000000e9";
const TOKEN: &str = "TUSD";
const UNITS: u128 = 1_000_000_000_000_000_000;

fn eth() -> AssetCode {
    "ETH".parse().unwrap()
}
fn tusd() -> AssetCode {
    TOKEN.parse().unwrap()
}
fn addr(s: &str) -> Address {
    s.parse().unwrap()
}

fn token_set(entries: &[(&str, Address)]) -> TokenSet {
    let mut c = kinko_server::Config::dev_default("/tmp/x".into(), "127.0.0.1:1".parse().unwrap(), "http://x:1".into());
    c.ethereum.tokens = entries
        .iter()
        .map(|(code, contract)| TokenConfig {
            code: code.to_string(),
            decimals: 18,
            contract: format!("{contract:#x}"),
            gas_limit: 100_000,
        })
        .collect();
    TokenSet::from_config(&c.ethereum).unwrap()
}

async fn setup_customer(store: &Store) {
    sqlx::query("INSERT INTO customers (id, email, password_hash, created_at_ms) VALUES ($1, $2, $3, $4)")
        .bind(CUSTOMER)
        .bind("erc20@example.test")
        .bind("x")
        .bind(1_i64)
        .execute(store.pool())
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO deposit_addresses (address, chain, asset, customer_id, derivation_index, created_at_ms) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(DEPOSIT_ADDR)
    .bind(CHAIN)
    .bind(TOKEN)
    .bind(CUSTOMER)
    .bind(0_i64)
    .bind(1_i64)
    .execute(store.pool())
    .await
    .unwrap();
}

async fn bal(store: &Store, asset: &AssetCode, kind: AccountKind) -> u128 {
    let b = store.customer_balances(CUSTOMER).await.unwrap();
    b.get(&(asset.clone(), kind)).copied().unwrap_or(Amount::ZERO).base_units()
}

async fn try_scan(
    store: &Store,
    rpc: &EvmRpc,
    tokens: &TokenSet,
    confirmations: u64,
) -> Result<ScanReport, WatcherError> {
    scan_once_with_tokens(store, rpc, CHAIN, &eth(), confirmations, Some(0), tokens, 1_000).await
}

async fn scan(store: &Store, rpc: &EvmRpc, tokens: &TokenSet, confirmations: u64) -> ScanReport {
    try_scan(store, rpc, tokens, confirmations).await.unwrap()
}

async fn deposits(store: &Store) -> Vec<kinko_store::deposits::DepositRow> {
    store.deposits_for_customer(CUSTOMER, 10).await.unwrap()
}

/// A fresh token with `ACCOUNT0` holding 1000 units; returns its address (blocks 1 and 2).
async fn token_with_supply(anvil: &Anvil, symbol: &str) -> Address {
    let token = anvil_erc20::deploy_erc20(anvil, ACCOUNT0, &format!("Test {symbol}"), symbol).await.unwrap();
    anvil_erc20::mint(anvil, token, ACCOUNT0, addr(ACCOUNT0), 1_000 * UNITS).await.unwrap();
    token
}

/// The log index the node reports for the first log of a transaction.
async fn log_index_of(anvil: &Anvil, tx_hash: &str) -> u64 {
    let r = anvil.rpc("eth_getTransactionReceipt", json!([tx_hash])).await.unwrap();
    u64::from_str_radix(r["logs"][0]["logIndex"].as_str().unwrap().trim_start_matches("0x"), 16).unwrap()
}

/// K22, C2, M6: a token Transfer log to a deposit address is a pending deposit of the token (with the
/// log's real index), credited only once it has N confirmations, in the token asset; ETH is untouched.
#[tokio::test]
async fn k22_erc20_deposit_credited_after_confirmations() {
    for ts in test_stores().await {
        let store = &ts.store;
        let anvil = Anvil::spawn(&[]).await.unwrap();
        let rpc = EvmRpc::new(anvil.url()).unwrap();
        let token = token_with_supply(&anvil, TOKEN).await;
        let tokens = token_set(&[(TOKEN, token)]);
        setup_customer(store).await;
        scan(store, &rpc, &tokens, 3).await;

        let tx = anvil_erc20::transfer(&anvil, token, ACCOUNT0, addr(DEPOSIT_ADDR), 500 * UNITS).await.unwrap(); // block 3
        anvil_erc20::transfer(&anvil, token, ACCOUNT0, addr(OUTSIDER), 7).await.unwrap(); // block 4, not watched
        let r = scan(store, &rpc, &tokens, 3).await;
        assert_eq!(r.deposits_detected.len(), 1, "{}: {r:?}", ts.name);
        assert!(r.deposits_credited.is_empty(), "{}: credited before N confirmations", ts.name);
        let d = deposits(store).await.remove(0);
        assert_eq!((d.status, d.confirmations, d.block_number), (DepositStatus::Pending, 2, 3), "{}", ts.name);
        assert_eq!(d.asset, tusd(), "{}", ts.name);
        assert_eq!(d.amount.base_units(), 500 * UNITS, "{}", ts.name);
        assert_eq!(d.log_index, log_index_of(&anvil, &tx).await, "{}: the real log index", ts.name);
        assert_eq!(bal(store, &tusd(), AccountKind::Pending).await, 500 * UNITS, "{}", ts.name);
        assert_eq!(bal(store, &tusd(), AccountKind::Available).await, 0, "{}", ts.name);

        anvil.mine(1).await.unwrap(); // block 5: third confirmation
        let r = scan(store, &rpc, &tokens, 3).await;
        assert_eq!(r.deposits_credited, vec![d.id.clone()], "{}", ts.name);
        let d = deposits(store).await.remove(0);
        assert_eq!((d.status, d.confirmations), (DepositStatus::Credited, 3), "{}", ts.name);
        assert_eq!(bal(store, &tusd(), AccountKind::Available).await, 500 * UNITS, "{}", ts.name);
        assert_eq!(bal(store, &tusd(), AccountKind::Pending).await, 0, "{}", ts.name);
        assert_eq!(bal(store, &eth(), AccountKind::Available).await, 0, "{}: no ETH credited", ts.name);

        // Later scans credit nothing again.
        anvil.mine(3).await.unwrap();
        let r = scan(store, &rpc, &tokens, 3).await;
        assert!(r.deposits_detected.is_empty() && r.deposits_credited.is_empty(), "{}", ts.name);
        assert_eq!(deposits(store).await.len(), 1, "{}", ts.name);
        store.verify_ledger(|_| {}).await.unwrap();
    }
}

/// K22, C2: a re-org deeper than the confirmation depth after the credit removes the token transfer; the
/// credit is reversed through the same path as an ETH deposit's.
#[tokio::test]
async fn k22_c2_erc20_deposit_reversed_by_deep_reorg() {
    for ts in test_stores().await {
        let store = &ts.store;
        let anvil = Anvil::spawn(&[]).await.unwrap();
        let rpc = EvmRpc::new(anvil.url()).unwrap();
        let token = token_with_supply(&anvil, TOKEN).await; // blocks 1, 2
        let tokens = token_set(&[(TOKEN, token)]);
        setup_customer(store).await;
        scan(store, &rpc, &tokens, 2).await;

        anvil_erc20::transfer(&anvil, token, ACCOUNT0, addr(DEPOSIT_ADDR), 40 * UNITS).await.unwrap(); // block 3
        anvil.mine(2).await.unwrap(); // blocks 4, 5
        let r = scan(store, &rpc, &tokens, 2).await;
        assert_eq!(r.deposits_credited.len(), 1, "{}: {r:?}", ts.name);
        assert_eq!(bal(store, &tusd(), AccountKind::Available).await, 40 * UNITS, "{}", ts.name);

        anvil.reorg(3).await.unwrap(); // replaces blocks 3..=5: the transfer is gone
        anvil.mine(1).await.unwrap(); // block 6
        let on_chain = anvil_erc20::balance_of(&anvil, token, addr(DEPOSIT_ADDR)).await.unwrap();
        assert!(on_chain.is_zero(), "{}: the re-org removed the transfer", ts.name);
        let r = scan(store, &rpc, &tokens, 2).await;
        assert_eq!(r.deposits_reversed.len(), 1, "{}: {r:?}", ts.name);
        assert_eq!(r.blocks_rewound, 3, "{}", ts.name);
        assert_eq!(deposits(store).await.remove(0).status, DepositStatus::Reversed, "{}", ts.name);
        assert_eq!(bal(store, &tusd(), AccountKind::Available).await, 0, "{}", ts.name);
        assert_eq!(bal(store, &tusd(), AccountKind::Receivable).await, 0, "{}", ts.name);

        // Nothing comes back later.
        anvil.mine(5).await.unwrap();
        let r = scan(store, &rpc, &tokens, 2).await;
        assert!(r.deposits_detected.is_empty() && r.deposits_credited.is_empty(), "{}", ts.name);
        store.verify_ledger(|_| {}).await.unwrap();
    }
}

/// K22, M6: a Transfer log from a contract that is not configured (a look-alike token), a zero-value
/// transfer (address poisoning), and a malformed Transfer-topic log (no data word) are never credited; the
/// malformed one is an error for its block, not a panic and not a guess.
#[tokio::test]
async fn k22_foreign_and_malformed_transfer_logs_are_not_credited() {
    for ts in test_stores().await {
        let store = &ts.store;
        let anvil = Anvil::spawn(&[]).await.unwrap();
        let rpc = EvmRpc::new(anvil.url()).unwrap();
        let token = token_with_supply(&anvil, TOKEN).await;
        let foreign = token_with_supply(&anvil, "FAKE").await;
        let tokens = token_set(&[(TOKEN, token)]);
        setup_customer(store).await;
        scan(store, &rpc, &tokens, 1).await;

        anvil_erc20::transfer(&anvil, foreign, ACCOUNT0, addr(DEPOSIT_ADDR), 100 * UNITS).await.unwrap();
        anvil_erc20::transfer(&anvil, token, ACCOUNT0, addr(DEPOSIT_ADDR), 0).await.unwrap();
        anvil_erc20::transfer(&anvil, token, ACCOUNT0, addr(OUTSIDER), UNITS).await.unwrap();
        anvil.mine(2).await.unwrap();
        let r = scan(store, &rpc, &tokens, 1).await;
        assert!(r.deposits_detected.is_empty() && r.deposits_credited.is_empty(), "{}: {r:?}", ts.name);
        assert!(deposits(store).await.is_empty(), "{}", ts.name);
        let fake: AssetCode = "FAKE".parse().unwrap();
        assert_eq!(bal(store, &fake, AccountKind::Available).await, 0, "{}", ts.name);

        // A configured contract that emits a Transfer-topic log of the wrong shape.
        let code = anvil_erc20::malformed_transfer_emitter_code(addr(DEPOSIT_ADDR));
        let bad = anvil_erc20::deploy_code(&anvil, ACCOUNT1, &code).await.unwrap();
        let with_bad = token_set(&[(TOKEN, token), ("BAD", bad)]);
        scan(store, &rpc, &with_bad, 1).await; // up to the deployment
        anvil_erc20::send_and_wait(&anvil, ACCOUNT1, Some(bad), &[]).await.unwrap();
        anvil.mine(2).await.unwrap();
        let err = try_scan(store, &rpc, &with_bad, 1).await.unwrap_err();
        assert!(err.to_string().contains("data is 0 bytes"), "{}: {err}", ts.name);
        // Still an error on retry (fail closed), and nothing was recorded from that block.
        assert!(try_scan(store, &rpc, &with_bad, 1).await.is_err(), "{}", ts.name);
        assert!(deposits(store).await.is_empty(), "{}", ts.name);
        let bad_asset: AssetCode = "BAD".parse().unwrap();
        assert_eq!(bal(store, &bad_asset, AccountKind::Pending).await, 0, "{}", ts.name);
        store.verify_ledger(|_| {}).await.unwrap();
    }
}
