//! Deposit detection on a real anvil and real databases (M5, M6, C2): credit after N confirmations,
//! re-orgs before and after credit, negative positions, and crash-replay idempotency. Every test runs
//! on SQLite and, when `KINKO_TEST_POSTGRES_URL` is set, on PostgreSQL.

use kinko_chain::anvil::{ACCOUNT0, Anvil};
use kinko_chain::evm::rpc::EvmRpc;
use kinko_core::deposit::DepositStatus;
use kinko_core::ledger::{AccountKind, postings};
use kinko_core::{Amount, AssetCode};
use kinko_server::watcher::{ScanReport, scan_once};
use kinko_store::Store;
use kinko_store::sqlx;
use kinko_store::testing::test_stores;

const CHAIN: &str = "eth";
const CUSTOMER: &str = "cus_test1";
const DEPOSIT_ADDR: &str = "0x00000000000000000000000000000000000000d1";
/// A custodian hot wallet (only in the ledger; withdrawals in these tests are simulated by postings).
const HOT: &str = "0x00000000000000000000000000000000000000a0";
const ONE_ETH: u128 = 1_000_000_000_000_000_000;

fn eth() -> AssetCode {
    "ETH".parse().unwrap()
}

async fn setup_customer(store: &Store) {
    sqlx::query("INSERT INTO customers (id, email, password_hash, created_at_ms) VALUES ($1, $2, $3, $4)")
        .bind(CUSTOMER)
        .bind("c1@example.test")
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
    .bind("ETH")
    .bind(CUSTOMER)
    .bind(0_i64)
    .bind(1_i64)
    .execute(store.pool())
    .await
    .unwrap();
}

async fn bal(store: &Store, kind: AccountKind) -> u128 {
    let b = store.customer_balances(CUSTOMER).await.unwrap();
    b.get(&(eth(), kind)).copied().unwrap_or(Amount::ZERO).base_units()
}

async fn scan(store: &Store, rpc: &EvmRpc, confirmations: u64) -> ScanReport {
    scan_once(store, rpc, CHAIN, &eth(), confirmations, Some(0), 1_000).await.unwrap()
}

async fn only_deposit(store: &Store) -> kinko_store::deposits::DepositRow {
    let mut d = store.deposits_for_customer(CUSTOMER, 10).await.unwrap();
    assert_eq!(d.len(), 1, "{d:?}");
    d.remove(0)
}

/// Automining can land a moment after `eth_sendTransaction` answers on a loaded machine; the assertions
/// below are about specific heights, so wait for them (bounded).
async fn wait_for_height(anvil: &Anvil, height: u64) {
    for _ in 0..100 {
        if anvil.block_number().await.unwrap() >= height {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("anvil did not reach block {height}");
}

async fn verify(store: &Store) {
    store.verify_ledger(|_| {}).await.unwrap();
}

/// C2: a deposit stays pending until it has N confirmations, then is credited exactly once.
#[tokio::test]
async fn c2_deposit_credited_only_after_n_confirmations() {
    for ts in test_stores().await {
        let store = &ts.store;
        let anvil = Anvil::spawn(&[]).await.unwrap();
        let rpc = EvmRpc::new(anvil.url()).unwrap();
        setup_customer(store).await;
        scan(store, &rpc, 3).await;
        anvil.send_eth(ACCOUNT0, DEPOSIT_ADDR, ONE_ETH).await.unwrap(); // block 1
        // A transfer to an address nobody watches is ignored.
        anvil.send_eth(ACCOUNT0, HOT, 5).await.unwrap(); // block 2
        wait_for_height(&anvil, 2).await;
        let r = scan(store, &rpc, 3).await;
        assert_eq!(r.deposits_detected.len(), 1, "{}", ts.name);
        assert!(r.deposits_credited.is_empty(), "{}", ts.name);
        let d = only_deposit(store).await;
        assert_eq!((d.status, d.confirmations, d.block_number), (DepositStatus::Pending, 2, 1), "{}", ts.name);
        assert_eq!(d.amount.base_units(), ONE_ETH);
        assert_eq!(d.address, DEPOSIT_ADDR);
        assert_eq!(bal(store, AccountKind::Pending).await, ONE_ETH, "{}", ts.name);
        assert_eq!(bal(store, AccountKind::Available).await, 0, "{}", ts.name);

        anvil.mine(1).await.unwrap(); // block 3: third confirmation
        let r = scan(store, &rpc, 3).await;
        assert_eq!(r.deposits_credited, vec![d.id.clone()], "{}", ts.name);
        let d = only_deposit(store).await;
        assert_eq!((d.status, d.confirmations), (DepositStatus::Credited, 3), "{}", ts.name);
        assert_eq!(bal(store, AccountKind::Pending).await, 0, "{}", ts.name);
        assert_eq!(bal(store, AccountKind::Available).await, ONE_ETH, "{}", ts.name);

        anvil.mine(3).await.unwrap();
        let r = scan(store, &rpc, 3).await;
        assert!(r.deposits_credited.is_empty() && r.deposits_detected.is_empty(), "{}", ts.name);
        assert_eq!(bal(store, AccountKind::Available).await, ONE_ETH, "{}", ts.name);
        verify(store).await;
    }
}

/// C2: `anvil_reorg` before N confirmations → the deposit is dropped, never credited, pending back to 0.
#[tokio::test]
async fn c2_reorg_before_confirmations_drops_pending_deposit() {
    for ts in test_stores().await {
        let store = &ts.store;
        let anvil = Anvil::spawn(&[]).await.unwrap();
        let rpc = EvmRpc::new(anvil.url()).unwrap();
        setup_customer(store).await;
        scan(store, &rpc, 3).await;
        anvil.send_eth(ACCOUNT0, DEPOSIT_ADDR, ONE_ETH).await.unwrap(); // block 1
        anvil.mine(1).await.unwrap(); // block 2
        scan(store, &rpc, 3).await;
        assert_eq!(only_deposit(store).await.status, DepositStatus::Pending, "{}", ts.name);
        assert_eq!(bal(store, AccountKind::Pending).await, ONE_ETH, "{}", ts.name);

        // Replace blocks 1 and 2; the height stays 2, so only the hash comparison at our tip sees it.
        anvil.reorg(2).await.unwrap();
        let r = scan(store, &rpc, 3).await;
        assert_eq!(r.blocks_rewound, 2, "{}", ts.name);
        assert_eq!(r.deposits_dropped.len(), 1, "{}", ts.name);
        let d = only_deposit(store).await;
        assert_eq!(d.status, DepositStatus::Dropped, "{}", ts.name);
        assert_eq!(bal(store, AccountKind::Pending).await, 0, "{}", ts.name);

        // Long after: the orphaned transaction is gone and nothing is ever credited.
        anvil.mine(10).await.unwrap();
        let r = scan(store, &rpc, 3).await;
        assert!(r.deposits_detected.is_empty() && r.deposits_credited.is_empty(), "{}", ts.name);
        assert_eq!(only_deposit(store).await.status, DepositStatus::Dropped, "{}", ts.name);
        assert_eq!(bal(store, AccountKind::Available).await, 0, "{}", ts.name);
        assert_eq!(bal(store, AccountKind::Pending).await, 0, "{}", ts.name);
        verify(store).await;
    }
}

/// C2: a re-org deeper than N after credit reverses the credit. Detected through a parent mismatch:
/// the node is past our tip when we look.
#[tokio::test]
async fn c2_reorg_deeper_than_confirmations_reverses_credit() {
    for ts in test_stores().await {
        let store = &ts.store;
        let anvil = Anvil::spawn(&[]).await.unwrap();
        let rpc = EvmRpc::new(anvil.url()).unwrap();
        setup_customer(store).await;
        scan(store, &rpc, 2).await;
        anvil.send_eth(ACCOUNT0, DEPOSIT_ADDR, ONE_ETH).await.unwrap(); // block 1
        anvil.mine(2).await.unwrap(); // blocks 2, 3
        let r = scan(store, &rpc, 2).await;
        assert_eq!(r.deposits_credited.len(), 1, "{}", ts.name);
        assert_eq!(bal(store, AccountKind::Available).await, ONE_ETH, "{}", ts.name);

        anvil.reorg(3).await.unwrap(); // replaces blocks 1..=3
        anvil.mine(1).await.unwrap(); // block 4, child of the new block 3
        let r = scan(store, &rpc, 2).await;
        assert_eq!(r.deposits_reversed.len(), 1, "{}", ts.name);
        assert_eq!(r.blocks_rewound, 3, "{}", ts.name);
        assert_eq!(r.processed_tip, Some(4), "{}", ts.name);
        assert_eq!(only_deposit(store).await.status, DepositStatus::Reversed, "{}", ts.name);
        assert_eq!(bal(store, AccountKind::Available).await, 0, "{}", ts.name);
        assert_eq!(bal(store, AccountKind::Receivable).await, 0, "{}", ts.name);
        verify(store).await;
    }
}

/// C2, A3: the customer already withdrew the credited deposit; the reversal leaves a receivable (a
/// negative position) instead of a negative available balance.
#[tokio::test]
async fn c2_reversal_after_withdrawal_leaves_negative_position() {
    for ts in test_stores().await {
        let store = &ts.store;
        let anvil = Anvil::spawn(&[]).await.unwrap();
        let rpc = EvmRpc::new(anvil.url()).unwrap();
        setup_customer(store).await;
        scan(store, &rpc, 2).await;
        anvil.send_eth(ACCOUNT0, DEPOSIT_ADDR, ONE_ETH).await.unwrap();
        anvil.mine(1).await.unwrap();
        scan(store, &rpc, 2).await;
        assert_eq!(bal(store, AccountKind::Available).await, ONE_ETH, "{}", ts.name);

        // An earlier withdrawal of most of it, paid from the hot wallet.
        let paid = ONE_ETH - 1_000;
        store
            .post(postings::custodian_funding("fund:1".into(), HOT, &eth(), Amount::from_base_units(10 * ONE_ETH)), 2)
            .await
            .unwrap();
        store.post(postings::withdrawal_hold("w1", CUSTOMER, &eth(), Amount::from_base_units(paid)), 3).await.unwrap();
        store
            .post(
                postings::withdrawal_settled("w1", CUSTOMER, HOT, &eth(), Amount::from_base_units(paid), Amount::ZERO),
                4,
            )
            .await
            .unwrap();
        assert_eq!(bal(store, AccountKind::Available).await, 1_000, "{}", ts.name);

        anvil.reorg(2).await.unwrap(); // blocks 1, 2 replaced (same height)
        let r = scan(store, &rpc, 2).await;
        assert_eq!(r.deposits_reversed.len(), 1, "{}", ts.name);
        assert_eq!(r.negative_positions.len(), 1, "{}: the customer is flagged for operators", ts.name);
        assert_eq!(bal(store, AccountKind::Available).await, 0, "{}", ts.name);
        assert_eq!(bal(store, AccountKind::Receivable).await, paid, "{}", ts.name);
        verify(store).await;
    }
}

/// M6: after a crash (store dropped and reopened) replaying scans never credits twice — including a
/// replay of blocks whose window rows are missing.
#[tokio::test]
async fn m6_rescan_after_crash_never_double_credits() {
    for ts in test_stores().await {
        let anvil = Anvil::spawn(&[]).await.unwrap();
        let rpc = EvmRpc::new(anvil.url()).unwrap();
        setup_customer(&ts.store).await;
        scan(&ts.store, &rpc, 2).await;
        anvil.send_eth(ACCOUNT0, DEPOSIT_ADDR, ONE_ETH).await.unwrap(); // block 1
        scan(&ts.store, &rpc, 2).await; // detected, pending
        anvil.mine(2).await.unwrap();
        ts.store.close().await;

        let store = Store::connect(&ts.url).await.unwrap();
        let r = scan(&store, &rpc, 2).await;
        assert_eq!(r.deposits_credited.len(), 1, "{}", ts.name);
        // Forget the window above block 0 as if those records were never made: the replay finds the
        // same deposit ids and posts nothing again.
        sqlx::query("DELETE FROM chain_blocks WHERE chain = $1 AND number > 0")
            .bind(CHAIN)
            .execute(store.pool())
            .await
            .unwrap();
        store.close().await;
        let store = Store::connect(&ts.url).await.unwrap();
        let r = scan(&store, &rpc, 2).await;
        assert_eq!(r.blocks_scanned, 3, "{}", ts.name);
        assert!(r.deposits_detected.is_empty() && r.deposits_credited.is_empty(), "{r:?} {}", ts.name);
        assert_eq!(only_deposit(&store).await.status, DepositStatus::Credited, "{}", ts.name);
        assert_eq!(bal(&store, AccountKind::Available).await, ONE_ETH, "{}", ts.name);
        assert_eq!(bal(&store, AccountKind::Pending).await, 0, "{}", ts.name);
        verify(&store).await;
    }
}
