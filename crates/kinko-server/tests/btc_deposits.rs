//! Bitcoin deposits and the custodian's UTXO set (issue #9; M5, M6, C2, C5), end to end through the production
//! RPC client (`BtcRpc`) against the in-process regtest simulator (the one allowed Bitcoin fake: real
//! consensus-valid blocks, every spend verified by libbitcoinconsensus) and real databases: every test runs on
//! SQLite and, when `KINKO_TEST_POSTGRES_URL` is set, on PostgreSQL.
//!
//! Customers' deposit addresses are BIP84 receive addresses derived from the account xpub; the transactions
//! paying them are signed here with rust-bitcoin (BIP143 sighash) from matured coinbase outputs.

use bitcoin::bip32::Xpriv;
use bitcoin::hashes::Hash as _;
use bitcoin::secp256k1::{Message, Secp256k1, SecretKey};
use bitcoin::sighash::{EcdsaSighashType, SighashCache};
use bitcoin::{
    Address, Amount, CompressedPublicKey, Network, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Witness,
    absolute::LockTime, transaction::Version,
};
use kinko_chain::btc::regtest_sim::RegtestSimulator;
use kinko_chain::btc::rpc::BtcRpc;
use kinko_core::deposit::DepositStatus;
use kinko_core::ledger::AccountKind;
use kinko_keys::btc::{Bip84Account, Keychain};
use kinko_server::btc_watcher::{
    BtcDepositWatcher, BtcScanReport, BtcWatcherConfig, block_effects, btc_deposit_address, btc_new_change_address,
    display_order, scan_once,
};
use kinko_store::Store;
use kinko_store::btc::{BtcAddressRow, KEYCHAIN_CHANGE, KEYCHAIN_RECEIVE, UtxoStatus, btc_asset};
use kinko_store::sqlx;
use kinko_store::testing::test_stores;

const CUSTOMER: &str = "cus_btc1";
const CONFIRMATIONS: u64 = 3;
const DEPOSIT_SAT: u64 = 123_456_789;
const FEE_SAT: u64 = 10_000;
const COINBASE_SAT: u64 = 50 * 100_000_000;

/// A plain single-key P2WPKH wallet outside kinko (the "customer's other wallet" and the miner).
struct Key {
    sk: SecretKey,
    pk: CompressedPublicKey,
    script: ScriptBuf,
}

fn key(byte: u8) -> Key {
    let secp = Secp256k1::new();
    let sk = SecretKey::from_slice(&[byte; 32]).unwrap();
    let pk = CompressedPublicKey(sk.public_key(&secp));
    let script = Address::p2wpkh(&pk, Network::Regtest).script_pubkey();
    Key { sk, pk, script }
}

/// A one-input transaction spending `prev` (a P2WPKH output of `key` worth `prev_value`), signed per BIP143.
fn spend(key: &Key, prev: OutPoint, prev_value: Amount, outputs: Vec<TxOut>) -> Transaction {
    let mut tx = Transaction {
        version: Version::TWO,
        lock_time: LockTime::ZERO,
        input: vec![TxIn {
            previous_output: prev,
            script_sig: ScriptBuf::new(),
            sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
            witness: Witness::new(),
        }],
        output: outputs,
    };
    let sighash =
        SighashCache::new(&tx).p2wpkh_signature_hash(0, &key.script, prev_value, EcdsaSighashType::All).unwrap();
    let signature = Secp256k1::new().sign_ecdsa(&Message::from_digest(sighash.to_byte_array()), &key.sk);
    let signature = bitcoin::ecdsa::Signature { signature, sighash_type: EcdsaSighashType::All };
    tx.input[0].witness = Witness::p2wpkh(&signature, &key.pk.0);
    tx
}

fn master() -> Xpriv {
    Xpriv::new_master(Network::Regtest, &[42u8; 32]).unwrap()
}

/// The custodian's BIP84 account as the online side knows it (xpub only).
fn account() -> Bip84Account {
    let full = Bip84Account::from_master(&master(), Network::Regtest).unwrap();
    Bip84Account::from_exported(&full.master_fingerprint.to_string(), &full.xpub.to_string(), Network::Regtest).unwrap()
}

/// The account's key at `<keychain>/<index>` (test side: the signer would hold it).
fn account_key(keychain: Keychain, index: u32) -> Key {
    let secp = Secp256k1::new();
    let (_, path) = account().key_source(keychain, index).unwrap();
    let sk = master().derive_priv(&secp, &path).unwrap().private_key;
    let pk = CompressedPublicKey(sk.public_key(&secp));
    let script = Address::p2wpkh(&pk, Network::Regtest).script_pubkey();
    assert_eq!(script, account().script_pubkey(keychain, index).unwrap());
    Key { sk, pk, script }
}

fn cfg() -> BtcWatcherConfig {
    BtcWatcherConfig::new(Network::Regtest, CONFIRMATIONS, None, std::time::Duration::from_secs(1))
}

fn chain() -> String {
    cfg().chain
}

async fn insert_customer(store: &Store, id: &str) {
    sqlx::query("INSERT INTO customers (id, email, password_hash, created_at_ms) VALUES ($1, $2, $3, $4)")
        .bind(id)
        .bind(format!("{id}@example.test"))
        .bind("x")
        .bind(1_i64)
        .execute(store.pool())
        .await
        .unwrap();
}

struct Chain {
    sim: RegtestSimulator,
    rpc: BtcRpc,
    miner: Key,
    /// Next matured coinbase height to spend from.
    next_coinbase: u64,
}

/// A simulator with 101 blocks mined to the miner: the coinbase of block 1 is mature.
async fn chain_with_mature_coinbase() -> Chain {
    let sim = RegtestSimulator::start().await.unwrap();
    let rpc = BtcRpc::new(&sim.url(), None).unwrap();
    let miner = key(1);
    sim.mine(101, &miner.script).unwrap();
    Chain { sim, rpc, miner, next_coinbase: 1 }
}

impl Chain {
    /// Pays `value_sat` to `to` from the miner's next matured coinbase (change back to the miner) and returns
    /// the broadcast transaction (in the mempool, not mined).
    async fn pay(&mut self, to: &ScriptBuf, value_sat: u64) -> Transaction {
        let block = self.rpc.get_block(&self.rpc.get_block_hash(self.next_coinbase).await.unwrap()).await.unwrap();
        self.next_coinbase += 1;
        let coinbase = &block.txs[0];
        assert_eq!(coinbase.output[0].value.to_sat(), COINBASE_SAT);
        let outputs = vec![
            TxOut { value: Amount::from_sat(value_sat), script_pubkey: to.clone() },
            TxOut {
                value: Amount::from_sat(COINBASE_SAT - value_sat - FEE_SAT),
                script_pubkey: self.miner.script.clone(),
            },
        ];
        let prev = OutPoint { txid: coinbase.compute_txid(), vout: 0 };
        let tx = spend(&self.miner, prev, coinbase.output[0].value, outputs);
        assert_eq!(self.rpc.send_raw_transaction(&tx).await.unwrap(), tx.compute_txid());
        tx
    }

    fn mine(&self, n: usize) {
        self.sim.mine(n, &self.miner.script).unwrap();
    }
}

/// Scans until the watcher has caught up with the node (bounded), merging the reports.
async fn scan(store: &Store, rpc: &BtcRpc) -> BtcScanReport {
    let mut all = BtcScanReport::default();
    for _ in 0..20 {
        let r = scan_once(store, rpc, &cfg(), 1_000).await.unwrap();
        all.node_tip = r.node_tip;
        all.processed_tip = r.processed_tip;
        all.blocks_scanned += r.blocks_scanned;
        all.blocks_rewound += r.blocks_rewound;
        all.deposits_detected.extend(r.deposits_detected);
        all.deposits_credited.extend(r.deposits_credited);
        all.deposits_dropped.extend(r.deposits_dropped);
        all.deposits_reversed.extend(r.deposits_reversed);
        all.negative_positions.extend(r.negative_positions);
        all.utxos_added.extend(r.utxos_added);
        all.utxos_spent.extend(r.utxos_spent);
        all.utxos_rolled_back += r.utxos_rolled_back;
        all.spends_undone += r.spends_undone;
        if all.processed_tip == Some(all.node_tip) {
            return all;
        }
    }
    panic!("the watcher did not catch up: {all:?}");
}

async fn bal(store: &Store, customer: &str, kind: AccountKind) -> u128 {
    let b = store.customer_balances(customer).await.unwrap();
    b.get(&(btc_asset(), kind)).copied().map_or(0, |a| a.base_units())
}

async fn deposits(store: &Store) -> Vec<kinko_store::deposits::DepositRow> {
    store.deposits_for_customer(CUSTOMER, 100).await.unwrap()
}

fn txid_display(tx: &Transaction) -> [u8; 32] {
    display_order(tx.compute_txid().to_byte_array())
}

fn wtxid_display(tx: &Transaction) -> [u8; 32] {
    display_order(tx.compute_wtxid().to_byte_array())
}

async fn count(store: &Store, table: &str) -> i64 {
    sqlx::query_scalar(kinko_store::sql(format!("SELECT COUNT(*) FROM {table}"))).fetch_one(store.pool()).await.unwrap()
}

/// A customer with a deposit address, the watcher started at the node's tip, and `DEPOSIT_SAT` paid to the
/// address and mined (one confirmation, scanned). Returns the deposit transaction.
async fn deposit_one(store: &Store, c: &mut Chain) -> (BtcAddressRow, Transaction) {
    insert_customer(store, CUSTOMER).await;
    let addr = btc_deposit_address(store, &account(), CUSTOMER, 1_000).await.unwrap();
    let r = scan(store, &c.rpc).await;
    assert_eq!(r.processed_tip, Some(101));
    let tx = c.pay(&ScriptBuf::from_bytes(addr.script_pubkey.clone()), DEPOSIT_SAT).await;
    c.mine(1); // block 102
    (addr, tx)
}

/// M6, C2: a customer's BIP84 deposit address is paid; the deposit is pending until it has N confirmations,
/// then credited once: the customer's BTC balance equals the satoshis received.
#[tokio::test]
async fn m6_btc_deposit_credited_after_confirmations() {
    for ts in test_stores().await {
        let store = &ts.store;
        let n = ts.name;
        let mut c = chain_with_mature_coinbase().await;
        let (addr, tx) = deposit_one(store, &mut c).await;
        assert_eq!(addr.address, account().address(Keychain::Receive, 0).unwrap().to_string(), "{n}");
        assert!(addr.address.starts_with("bcrt1q"), "{n}: P2WPKH on regtest: {}", addr.address);

        let r = scan(store, &c.rpc).await;
        assert_eq!(r.deposits_detected.len(), 1, "{n}: {r:?}");
        assert!(r.deposits_credited.is_empty(), "{n}");
        let d = &deposits(store).await[0];
        assert_eq!((d.status, d.confirmations, d.block_number), (DepositStatus::Pending, 1, 102), "{n}");
        assert_eq!(d.amount.base_units(), u128::from(DEPOSIT_SAT), "{n}");
        assert_eq!((d.chain.as_str(), d.asset.as_str()), ("btc:regtest", "BTC"), "{n}");
        assert_eq!(d.address, addr.address, "{n}");
        assert_eq!(d.tx_hash, tx.compute_txid().to_string(), "{n}: txid in display order");
        assert_eq!(d.log_index, 0, "{n}: the output index");
        assert_eq!(bal(store, CUSTOMER, AccountKind::Pending).await, u128::from(DEPOSIT_SAT), "{n}");
        assert_eq!(bal(store, CUSTOMER, AccountKind::Available).await, 0, "{n}");
        // Not yet spendable at N confirmations.
        let tip = r.processed_tip.unwrap();
        assert!(store.btc_spendable_utxos(&chain(), tip, CONFIRMATIONS, 100).await.unwrap().is_empty(), "{n}");

        c.mine(1); // 2 confirmations
        let r = scan(store, &c.rpc).await;
        assert!(r.deposits_credited.is_empty(), "{n}");
        assert_eq!(deposits(store).await[0].confirmations, 2, "{n}");

        c.mine(1); // 3 confirmations: credited
        let r = scan(store, &c.rpc).await;
        assert_eq!(r.deposits_credited, vec![d.id.clone()], "{n}");
        let d = &deposits(store).await[0];
        assert_eq!((d.status, d.confirmations), (DepositStatus::Credited, 3), "{n}");
        assert_eq!(bal(store, CUSTOMER, AccountKind::Pending).await, 0, "{n}");
        assert_eq!(bal(store, CUSTOMER, AccountKind::Available).await, u128::from(DEPOSIT_SAT), "{n}");
        let spendable = store.btc_spendable_utxos(&chain(), 104, CONFIRMATIONS, 100).await.unwrap();
        assert_eq!(spendable.len(), 1, "{n}");
        assert_eq!((spendable[0].value_sat, spendable[0].vout), (DEPOSIT_SAT, 0), "{n}");

        // More blocks credit nothing more.
        c.mine(3);
        let r = scan(store, &c.rpc).await;
        assert!(r.deposits_detected.is_empty() && r.deposits_credited.is_empty(), "{n}");
        assert_eq!(bal(store, CUSTOMER, AccountKind::Available).await, u128::from(DEPOSIT_SAT), "{n}");
        store.verify_ledger(|_| {}).await.unwrap();
    }
}

/// C2: a competing chain longer than ours re-organises the credited deposit's block away: the credit is
/// reversed, the UTXO rolled back, the balance back to 0. When the transaction confirms again on the new chain
/// it is a new pending deposit and the UTXO is revived at its new height.
#[tokio::test]
async fn c2_btc_reorg_rolls_back_a_deposit() {
    for ts in test_stores().await {
        let store = &ts.store;
        let n = ts.name;
        let mut c = chain_with_mature_coinbase().await;
        let (_, tx) = deposit_one(store, &mut c).await;
        c.mine(2); // 103, 104: 3 confirmations
        let r = scan(store, &c.rpc).await;
        assert_eq!(r.deposits_credited.len(), 1, "{n}");
        assert_eq!(bal(store, CUSTOMER, AccountKind::Available).await, u128::from(DEPOSIT_SAT), "{n}");
        let txid = txid_display(&tx);
        assert_eq!(store.btc_utxo(&chain(), &txid, 0).await.unwrap().unwrap().status, UtxoStatus::Unspent);

        // A deep competing branch from 102 (the deposit's block) to 106, coinbase-only: re-org of 3 blocks.
        c.sim.mine_competing(102, 5, &key(9).script).unwrap();
        let r = scan(store, &c.rpc).await;
        assert_eq!(r.blocks_rewound, 3, "{n}: {r:?}");
        assert_eq!(r.deposits_reversed.len(), 1, "{n}");
        assert!(r.negative_positions.is_empty(), "{n}");
        assert_eq!(r.utxos_rolled_back, 1, "{n}");
        assert_eq!(r.processed_tip, Some(106), "{n}");
        let d = &deposits(store).await[0];
        assert_eq!(d.status, DepositStatus::Reversed, "{n}");
        assert_eq!(bal(store, CUSTOMER, AccountKind::Available).await, 0, "{n}");
        assert_eq!(bal(store, CUSTOMER, AccountKind::Pending).await, 0, "{n}");
        let u = store.btc_utxo(&chain(), &txid, 0).await.unwrap().unwrap();
        assert_eq!(u.status, UtxoStatus::RolledBack, "{n}");
        assert!(store.btc_spendable_utxos(&chain(), 106, 1, 100).await.unwrap().is_empty(), "{n}");

        // The transaction went back to the node's mempool; it confirms again in block 107.
        c.mine(1);
        let r = scan(store, &c.rpc).await;
        assert_eq!(r.deposits_detected.len(), 1, "{n}");
        let again = deposits(store).await.into_iter().find(|x| x.id != d.id).unwrap();
        assert_eq!((again.status, again.block_number), (DepositStatus::Pending, 107), "{n}");
        let u = store.btc_utxo(&chain(), &txid, 0).await.unwrap().unwrap();
        assert_eq!((u.status, u.block_height), (UtxoStatus::Unspent, 107), "{n}");
        assert_eq!(bal(store, CUSTOMER, AccountKind::Pending).await, u128::from(DEPOSIT_SAT), "{n}");
        assert_eq!(bal(store, CUSTOMER, AccountKind::Available).await, 0, "{n}");

        // A second re-org before that deposit has its confirmations: the pending deposit is dropped, never
        // credited, and the UTXO rolled back again.
        c.sim.mine_competing(107, 2, &key(9).script).unwrap();
        let r = scan(store, &c.rpc).await;
        assert_eq!((r.blocks_rewound, r.deposits_dropped.len(), r.utxos_rolled_back), (1, 1, 1), "{n}: {r:?}");
        let again = deposits(store).await.into_iter().find(|x| x.id == again.id).unwrap();
        assert_eq!(again.status, DepositStatus::Dropped, "{n}");
        assert_eq!(bal(store, CUSTOMER, AccountKind::Pending).await, 0, "{n}");
        assert_eq!(bal(store, CUSTOMER, AccountKind::Available).await, 0, "{n}");
        let u = store.btc_utxo(&chain(), &txid, 0).await.unwrap().unwrap();
        assert_eq!(u.status, UtxoStatus::RolledBack, "{n}");
        store.verify_ledger(|_| {}).await.unwrap();
    }
}

/// C5: UTXOs are tracked by outpoint with both the txid and the wtxid of the transaction (they differ for a
/// segwit spend); the custodian's spend of a UTXO marks it spent by that transaction's txid and wtxid, its
/// change output joins the set (keychain 1, not a deposit), and a re-org of the spending block undoes both.
#[tokio::test]
async fn c5_btc_utxos_tracked_by_txid_and_wtxid_and_spends_marked() {
    for ts in test_stores().await {
        let store = &ts.store;
        let n = ts.name;
        let mut c = chain_with_mature_coinbase().await;
        let (addr, deposit_tx) = deposit_one(store, &mut c).await;
        scan(store, &c.rpc).await;
        let deposit_txid = txid_display(&deposit_tx);
        let u = store.btc_utxo(&chain(), &deposit_txid, 0).await.unwrap().unwrap();
        assert_eq!(u.wtxid, wtxid_display(&deposit_tx), "{n}");
        assert_ne!(u.wtxid, u.txid, "{n}: a segwit transaction's wtxid differs from its txid");
        assert_eq!((u.keychain, u.derivation_index, u.value_sat), (KEYCHAIN_RECEIVE, 0, DEPOSIT_SAT), "{n}");
        assert_eq!(u.script_pubkey, addr.script_pubkey, "{n}");
        assert_eq!((u.block_height, u.status, u.coinbase), (102, UtxoStatus::Unspent, false), "{n}");
        // The miner's change output of the same transaction is not the custodian's: not tracked.
        assert!(store.btc_utxo(&chain(), &deposit_txid, 1).await.unwrap().is_none(), "{n}");

        // The custodian spends the deposit (signed with the receive key) to an outside address, change to its
        // own change address 1/0.
        let change = btc_new_change_address(store, &account(), 2_000).await.unwrap();
        assert_eq!(
            (change.keychain, change.derivation_index, change.customer_id.as_deref()),
            (KEYCHAIN_CHANGE, 0, None)
        );
        let change_sat = DEPOSIT_SAT - 50_000_000 - FEE_SAT;
        let outputs = vec![
            TxOut { value: Amount::from_sat(50_000_000), script_pubkey: key(7).script },
            TxOut {
                value: Amount::from_sat(change_sat),
                script_pubkey: ScriptBuf::from_bytes(change.script_pubkey.clone()),
            },
        ];
        let prev = OutPoint { txid: deposit_tx.compute_txid(), vout: 0 };
        let spend_tx = spend(&account_key(Keychain::Receive, 0), prev, Amount::from_sat(DEPOSIT_SAT), outputs);
        c.rpc.send_raw_transaction(&spend_tx).await.unwrap();
        c.mine(1); // block 103
        let r = scan(store, &c.rpc).await;
        assert_eq!(r.utxos_spent, vec![(deposit_txid, 0)], "{n}");
        assert_eq!(r.utxos_added, vec![(txid_display(&spend_tx), 1)], "{n}");
        assert!(r.deposits_detected.is_empty(), "{n}: change is not a deposit");
        let u = store.btc_utxo(&chain(), &deposit_txid, 0).await.unwrap().unwrap();
        assert_eq!(u.status, UtxoStatus::Spent, "{n}");
        assert_eq!(u.spent_by_txid, Some(txid_display(&spend_tx)), "{n}");
        assert_eq!(u.spent_by_wtxid, Some(wtxid_display(&spend_tx)), "{n}");
        assert_eq!(u.spent_height, Some(103), "{n}");
        let ch = store.btc_utxo(&chain(), &txid_display(&spend_tx), 1).await.unwrap().unwrap();
        assert_eq!((ch.keychain, ch.derivation_index, ch.value_sat), (KEYCHAIN_CHANGE, 0, change_sat), "{n}");
        assert_eq!(ch.wtxid, wtxid_display(&spend_tx), "{n}");
        // Spendable set: only the change (the deposit is spent), once it has the confirmations.
        c.mine(2);
        scan(store, &c.rpc).await;
        let spendable = store.btc_spendable_utxos(&chain(), 105, CONFIRMATIONS, 100).await.unwrap();
        assert_eq!(spendable.iter().map(|s| (s.txid, s.vout)).collect::<Vec<_>>(), vec![(txid_display(&spend_tx), 1)]);

        // A re-org from 103 (the spend's block) on: the spend is undone, the change rolled back. The spend goes
        // back to the mempool and is mined again: spent again, change revived.
        c.sim.mine_competing(103, 4, &key(9).script).unwrap();
        let r = scan(store, &c.rpc).await;
        assert_eq!((r.blocks_rewound, r.spends_undone, r.utxos_rolled_back), (3, 1, 1), "{n}: {r:?}");
        let u = store.btc_utxo(&chain(), &deposit_txid, 0).await.unwrap().unwrap();
        assert_eq!((u.status, u.spent_by_txid, u.spent_height), (UtxoStatus::Unspent, None, None), "{n}");
        let ch = store.btc_utxo(&chain(), &txid_display(&spend_tx), 1).await.unwrap().unwrap();
        assert_eq!(ch.status, UtxoStatus::RolledBack, "{n}");
        c.mine(1); // 107
        let r = scan(store, &c.rpc).await;
        assert_eq!(r.utxos_spent, vec![(deposit_txid, 0)], "{n}");
        let ch = store.btc_utxo(&chain(), &txid_display(&spend_tx), 1).await.unwrap().unwrap();
        assert_eq!((ch.status, ch.block_height), (UtxoStatus::Unspent, 107), "{n}");
        // The deposit itself (block 102) was never orphaned: still one deposit, credited.
        let ds = deposits(store).await;
        assert_eq!(ds.len(), 1, "{n}");
        assert_eq!(ds[0].status, DepositStatus::Credited, "{n}");
        store.verify_ledger(|_| {}).await.unwrap();
    }
}

/// M6: replaying blocks (a crash after a block's commit, the same block read again) and a new watcher
/// instance on a reopened store create nothing twice: no deposit, posting or UTXO is duplicated.
#[tokio::test]
async fn m6_btc_rescan_after_restart_creates_nothing_twice() {
    for ts in test_stores().await {
        let store = &ts.store;
        let n = ts.name;
        let mut c = chain_with_mature_coinbase().await;
        deposit_one(store, &mut c).await;
        c.mine(3);
        let r = scan(store, &c.rpc).await;
        assert_eq!((r.deposits_detected.len(), r.deposits_credited.len()), (1, 1), "{n}");
        let tables = ["deposits", "ledger_entries", "btc_utxos", "chain_blocks"];
        let mut before = Vec::new();
        for t in tables {
            before.push(count(store, t).await);
        }

        // Every recorded block recorded again, as a replay after kill -9 would: nothing is written.
        let mut watched = kinko_server::btc_watcher::BtcWatchedSet::default();
        watched.refresh(store, &chain()).await.unwrap();
        for height in 101..=105u64 {
            let block = c.rpc.get_block(&c.rpc.get_block_hash(height).await.unwrap()).await.unwrap();
            let header = kinko_core::reorg::BlockHeader {
                number: block.height,
                hash: display_order(block.hash.to_byte_array()),
                parent_hash: display_order(block.prev_hash.unwrap().to_byte_array()),
            };
            let again = store
                .btc_record_block(&chain(), &header, &block_effects(&block, &watched), CONFIRMATIONS, 5_000)
                .await
                .unwrap();
            assert!(!again.recorded, "{n}: block {height} was recorded twice");
        }

        // A restart: the store reopened, a new watcher instance, scanning from its persisted window.
        let reopened = Store::connect(&ts.url).await.unwrap();
        let mut watcher = BtcDepositWatcher::new(cfg());
        let r = watcher.scan(&reopened, &c.rpc, 6_000).await.unwrap();
        assert_eq!((r.blocks_scanned, r.blocks_rewound), (0, 0), "{n}: {r:?}");
        assert!(r.deposits_detected.is_empty() && r.utxos_added.is_empty(), "{n}");
        c.mine(1);
        let r = watcher.scan(&reopened, &c.rpc, 7_000).await.unwrap();
        assert_eq!(r.blocks_scanned, 1, "{n}");
        assert!(r.deposits_detected.is_empty() && r.deposits_credited.is_empty(), "{n}");
        for (t, b) in tables.iter().zip(&before) {
            let after = count(&reopened, t).await;
            let expected = if *t == "chain_blocks" { b + 1 } else { *b };
            assert_eq!(after, expected, "{n}: {t}");
        }
        assert_eq!(bal(&reopened, CUSTOMER, AccountKind::Available).await, u128::from(DEPOSIT_SAT), "{n}");
        reopened.verify_ledger(|_| {}).await.unwrap();
    }
}

/// M6, K6: a customer asking again gets the same address; each customer gets the next unused receive index,
/// never one handed out before, also under concurrent first requests; change addresses count separately.
#[tokio::test]
async fn m6_btc_same_customer_same_address_index_unique() {
    for ts in test_stores().await {
        let store = &ts.store;
        let n = ts.name;
        let acct = account();
        for id in ["cus_a", "cus_b", "cus_c"] {
            insert_customer(store, id).await;
        }
        let a1 = btc_deposit_address(store, &acct, "cus_a", 1_000).await.unwrap();
        let a2 = btc_deposit_address(store, &acct, "cus_a", 2_000).await.unwrap();
        assert_eq!(a1, a2, "{n}");
        assert_eq!((a1.derivation_index, a1.keychain), (0, KEYCHAIN_RECEIVE), "{n}");
        let b = btc_deposit_address(store, &acct, "cus_b", 3_000).await.unwrap();
        assert_eq!(b.derivation_index, 1, "{n}");
        assert_ne!(b.address, a1.address, "{n}");
        assert_eq!(b.address, acct.address(Keychain::Receive, 1).unwrap().to_string(), "{n}");

        // Concurrent first requests of one customer: one address, one index.
        let (x, y, z) = tokio::join!(
            btc_deposit_address(store, &acct, "cus_c", 4_000),
            btc_deposit_address(store, &acct, "cus_c", 4_000),
            btc_deposit_address(store, &acct, "cus_c", 4_000),
        );
        let (x, y, z) = (x.unwrap(), y.unwrap(), z.unwrap());
        assert_eq!((&x, &x), (&y, &z), "{n}");
        assert_eq!(x.derivation_index, 2, "{n}");

        // The deposit address is the watched address of the generic deposit path.
        let w = store.watched_address("btc:regtest", &a1.address).await.unwrap().unwrap();
        assert_eq!((w.customer_id.as_str(), w.asset.as_str()), ("cus_a", "BTC"), "{n}");
        assert_eq!(count(store, "deposit_addresses").await, 3, "{n}");
        assert_eq!(count(store, "btc_addresses").await, 3, "{n}");

        // Change addresses use their own keychain and counter.
        let c0 = btc_new_change_address(store, &acct, 5_000).await.unwrap();
        let c1 = btc_new_change_address(store, &acct, 5_000).await.unwrap();
        assert_eq!((c0.derivation_index, c1.derivation_index), (0, 1), "{n}");
        assert_eq!(c0.address, acct.address(Keychain::Change, 0).unwrap().to_string(), "{n}");

        // The schema itself refuses a second row at a taken index.
        let dup = sqlx::query(
            "INSERT INTO btc_addresses (chain, script_pubkey, address, keychain, derivation_index, customer_id, \
             created_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind("btc:regtest")
        .bind("0014ff")
        .bind("bcrt1qdup")
        .bind(0_i64)
        .bind(1_i64)
        .bind("cus_a")
        .bind(1_i64)
        .execute(store.pool())
        .await;
        assert!(dup.is_err(), "{n}: duplicate receive index accepted");
    }
}

/// C5: a deposit and the custodian's spend of it confirmed in the same block: the output is added and marked
/// spent by the later transaction of that block, and the change joins the set.
#[tokio::test]
async fn c5_btc_spend_in_the_same_block_as_its_deposit_is_tracked() {
    for ts in test_stores().await {
        let store = &ts.store;
        let n = ts.name;
        let mut c = chain_with_mature_coinbase().await;
        insert_customer(store, CUSTOMER).await;
        let addr = btc_deposit_address(store, &account(), CUSTOMER, 1_000).await.unwrap();
        let change = btc_new_change_address(store, &account(), 1_000).await.unwrap();
        scan(store, &c.rpc).await;
        let deposit_tx = c.pay(&ScriptBuf::from_bytes(addr.script_pubkey.clone()), DEPOSIT_SAT).await;
        let outputs = vec![TxOut {
            value: Amount::from_sat(DEPOSIT_SAT - FEE_SAT),
            script_pubkey: ScriptBuf::from_bytes(change.script_pubkey.clone()),
        }];
        let prev = OutPoint { txid: deposit_tx.compute_txid(), vout: 0 };
        let spend_tx = spend(&account_key(Keychain::Receive, 0), prev, Amount::from_sat(DEPOSIT_SAT), outputs);
        c.rpc.send_raw_transaction(&spend_tx).await.unwrap();
        c.mine(1); // 102: both
        let r = scan(store, &c.rpc).await;
        assert_eq!(r.utxos_added, vec![(txid_display(&deposit_tx), 0), (txid_display(&spend_tx), 0)], "{n}");
        assert_eq!(r.utxos_spent, vec![(txid_display(&deposit_tx), 0)], "{n}");
        let u = store.btc_utxo(&chain(), &txid_display(&deposit_tx), 0).await.unwrap().unwrap();
        assert_eq!((u.status, u.spent_height), (UtxoStatus::Spent, Some(102)), "{n}");
        assert_eq!(r.deposits_detected.len(), 1, "{n}: the deposit is still the customer's deposit");
    }
}

/// M5: an RPC failure stops the scan and changes nothing (fail closed); the next scan after the node is back
/// carries on from the same window.
#[tokio::test]
async fn m5_btc_rpc_failure_changes_nothing() {
    for ts in test_stores().await {
        let store = &ts.store;
        let n = ts.name;
        let mut c = chain_with_mature_coinbase().await;
        deposit_one(store, &mut c).await;
        let window_before = store.chain_window(&chain()).await.unwrap();
        let dead = BtcRpc::new("http://127.0.0.1:9/", None).unwrap();
        assert!(scan_once(store, &dead, &cfg(), 2_000).await.is_err(), "{n}");
        assert_eq!(store.chain_window(&chain()).await.unwrap(), window_before, "{n}");
        assert!(deposits(store).await.is_empty(), "{n}");
        let r = scan(store, &c.rpc).await;
        assert_eq!(r.deposits_detected.len(), 1, "{n}");
    }
}
