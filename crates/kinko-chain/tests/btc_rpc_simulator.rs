//! The production Bitcoin Core RPC client (`kinko_chain::btc::rpc::BtcRpc`) against the in-process regtest
//! simulator (`kinko_chain::btc::regtest_sim`): real consensus-valid regtest blocks, real P2WPKH signatures
//! (rust-bitcoin's BIP143 sighash), every spend verified by libbitcoinconsensus inside the simulator.
//! Requirements: M5 (blocks), C2 (re-orgs), C4 (fees, RBF), C5 (txid/wtxid, invalid spends refused).

use bitcoin::hashes::Hash as _;
use bitcoin::secp256k1::{Message, Secp256k1, SecretKey};
use bitcoin::sighash::{EcdsaSighashType, SighashCache};
use bitcoin::{
    Address, Amount, BlockHash, CompressedPublicKey, Network, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut,
    Txid, Witness, absolute::LockTime, transaction::Version,
};
use kinko_chain::btc::regtest_sim::{RegtestSimulator, coinbase_height};
use kinko_chain::btc::rpc::{BtcRpc, BtcRpcAuth, RpcError, codes};

const COINBASE_VALUE: Amount = Amount::from_sat(50 * 100_000_000);

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
fn spend(key: &Key, prev: OutPoint, prev_value: Amount, outputs: Vec<TxOut>, sequence: Sequence) -> Transaction {
    let mut tx = Transaction {
        version: Version::TWO,
        lock_time: LockTime::ZERO,
        input: vec![TxIn { previous_output: prev, script_sig: ScriptBuf::new(), sequence, witness: Witness::new() }],
        output: outputs,
    };
    let sighash =
        SighashCache::new(&tx).p2wpkh_signature_hash(0, &key.script, prev_value, EcdsaSighashType::All).unwrap();
    let signature = Secp256k1::new().sign_ecdsa(&Message::from_digest(sighash.to_byte_array()), &key.sk);
    let signature = bitcoin::ecdsa::Signature { signature, sighash_type: EcdsaSighashType::All };
    tx.input[0].witness = Witness::p2wpkh(&signature, &key.pk.0);
    tx
}

fn pay(to: &Key, value: Amount) -> Vec<TxOut> {
    vec![TxOut { value, script_pubkey: to.script.clone() }]
}

/// A simulator with 101 blocks mined to `key(1)`: the coinbase of block 1 is mature.
async fn setup() -> (RegtestSimulator, BtcRpc, Key) {
    let sim = RegtestSimulator::start().await.unwrap();
    let rpc = BtcRpc::new(&sim.url(), None).unwrap();
    let miner = key(1);
    sim.mine(101, &miner.script).unwrap();
    (sim, rpc, miner)
}

/// The coinbase output of the active block at `height`, read through the RPC client.
async fn coinbase_outpoint(rpc: &BtcRpc, height: u64) -> (OutPoint, Amount) {
    let block = rpc.get_block(&rpc.get_block_hash(height).await.unwrap()).await.unwrap();
    (OutPoint { txid: block.txs[0].compute_txid(), vout: 0 }, block.txs[0].output[0].value)
}

fn node_code(result: Result<impl std::fmt::Debug, RpcError>) -> (i64, String) {
    match result {
        Err(RpcError::Node { code, message, .. }) => (code, message),
        other => panic!("expected a node error, got {other:?}"),
    }
}

#[tokio::test]
async fn m5_btc_rpc_reads_simulated_blocks() {
    let (_sim, rpc, miner) = setup().await;
    assert_eq!(rpc.get_block_count().await.unwrap(), 101);
    let genesis = rpc.get_block_hash(0).await.unwrap();
    assert_eq!(genesis, bitcoin::blockdata::constants::genesis_block(Network::Regtest).block_hash());
    let mut prev: Option<BlockHash> = None;
    for height in 0..=101u64 {
        let hash = rpc.get_block_hash(height).await.unwrap();
        let block = rpc.get_block(&hash).await.unwrap();
        assert_eq!((block.hash, block.height, block.prev_hash), (hash, height, prev));
        assert_eq!(block.confirmations, 101 - height as i64 + 1);
        assert_eq!(block.header.block_hash(), hash);
        let header = rpc.get_block_header(&hash).await.unwrap();
        assert_eq!((header.header, header.height, header.prev_hash), (block.header, height, prev));
        if height > 0 {
            let coinbase = &block.txs[0];
            assert!(coinbase.is_coinbase());
            assert_eq!(coinbase_height(coinbase), Some(height), "BIP34 height");
            assert_eq!(coinbase.output[0].value, COINBASE_VALUE);
            assert_eq!(coinbase.output[0].script_pubkey, miner.script);
        }
        prev = Some(hash);
    }
    // Unknown block and height past the tip: Core's codes.
    assert_eq!(node_code(rpc.get_block(&BlockHash::all_zeros()).await).0, codes::RPC_INVALID_ADDRESS_OR_KEY);
    assert_eq!(node_code(rpc.get_block_hash(102).await).0, codes::RPC_INVALID_PARAMETER);
}

#[tokio::test]
async fn m5_btc_spend_is_tracked_in_the_mempool_then_mined() {
    let (sim, rpc, miner) = setup().await;
    let (outpoint, value) = coinbase_outpoint(&rpc, 1).await;
    let fee = Amount::from_sat(10_000);
    let tx = spend(&miner, outpoint, value, pay(&key(2), value - fee), Sequence::ENABLE_LOCKTIME_NO_RBF);
    let txid = rpc.send_raw_transaction(&tx).await.unwrap();
    assert_eq!(txid, tx.compute_txid());
    // Re-sending a transaction the node already has is answered with its txid, as by Core.
    assert_eq!(rpc.send_raw_transaction(&tx).await.unwrap(), txid);
    assert_eq!(rpc.get_raw_mempool().await.unwrap(), vec![txid]);
    let entry = rpc.get_mempool_entry(&txid).await.unwrap();
    assert_eq!(entry.fee_base, fee);
    assert_eq!(entry.wtxid, tx.compute_wtxid());
    assert_ne!(entry.wtxid.to_byte_array(), txid.to_byte_array(), "segwit: wtxid differs from txid");
    assert_eq!(entry.vsize_vb, tx.vsize() as u64);
    assert!(!entry.bip125_replaceable);

    let mined = sim.mine(1, &miner.script).unwrap();
    let block = rpc.get_block(&mined[0]).await.unwrap();
    assert_eq!(block.height, 102);
    assert_eq!(block.txs[1], tx);
    assert_eq!(block.txs[0].output[0].value, COINBASE_VALUE + fee, "the fee goes to the miner");
    let decoded = bitcoin::Block { header: block.header, txdata: block.txs.clone() };
    assert!(decoded.check_witness_commitment(), "segwit block carries a valid witness commitment");
    assert!(rpc.get_raw_mempool().await.unwrap().is_empty());
    assert_eq!(node_code(rpc.get_mempool_entry(&txid).await).0, codes::RPC_INVALID_ADDRESS_OR_KEY);
    assert_eq!(node_code(rpc.send_raw_transaction(&tx).await).0, codes::RPC_VERIFY_ALREADY_IN_CHAIN);
}

#[tokio::test]
async fn c5_btc_simulator_refuses_invalid_spends_with_core_codes() {
    let (_sim, rpc, miner) = setup().await;
    let other = key(2);
    let (outpoint, value) = coinbase_outpoint(&rpc, 1).await;

    // Invalid signature: the output is changed after signing.
    let mut tampered = spend(&miner, outpoint, value, pay(&other, value - Amount::from_sat(1_000)), Sequence::MAX);
    tampered.output[0].value = value - Amount::from_sat(2_000);
    let (code, message) = node_code(rpc.send_raw_transaction(&tampered).await);
    assert_eq!(code, codes::RPC_VERIFY_REJECTED);
    assert!(message.contains("mandatory-script-verify-flag-failed"), "{message}");

    // Signed by the wrong key.
    let wrong = spend(&other, outpoint, value, pay(&other, value - Amount::from_sat(1_000)), Sequence::MAX);
    assert_eq!(node_code(rpc.send_raw_transaction(&wrong).await).0, codes::RPC_VERIFY_REJECTED);

    // More out than in.
    let inflated = spend(&miner, outpoint, value, pay(&other, value + Amount::from_sat(1)), Sequence::MAX);
    let (code, message) = node_code(rpc.send_raw_transaction(&inflated).await);
    assert_eq!(code, codes::RPC_VERIFY_REJECTED);
    assert!(message.contains("bad-txns-in-belowout"), "{message}");

    // Immature coinbase: block 101's coinbase has 1 confirmation, not 100.
    let (young, young_value) = coinbase_outpoint(&rpc, 101).await;
    let premature =
        spend(&miner, young, young_value, pay(&other, young_value - Amount::from_sat(1_000)), Sequence::MAX);
    let (code, message) = node_code(rpc.send_raw_transaction(&premature).await);
    assert_eq!(code, codes::RPC_VERIFY_REJECTED);
    assert!(message.contains("bad-txns-premature-spend-of-coinbase"), "{message}");

    // Double spend: a second spend of the same output, without BIP125 signalling on the first.
    let first = spend(&miner, outpoint, value, pay(&other, value - Amount::from_sat(1_000)), Sequence::MAX);
    rpc.send_raw_transaction(&first).await.unwrap();
    let second = spend(&miner, outpoint, value, pay(&miner, value - Amount::from_sat(50_000)), Sequence::MAX);
    let (code, message) = node_code(rpc.send_raw_transaction(&second).await);
    assert_eq!(code, codes::RPC_VERIFY_REJECTED);
    assert_eq!(message, "txn-mempool-conflict");
    // Spend of an output that does not exist.
    let missing = OutPoint { txid: Txid::all_zeros(), vout: 7 };
    let ghost = spend(&miner, missing, value, pay(&other, Amount::from_sat(1_000)), Sequence::MAX);
    let (code, message) = node_code(rpc.send_raw_transaction(&ghost).await);
    assert_eq!((code, message.as_str()), (codes::RPC_VERIFY_ERROR, "bad-txns-inputs-missingorspent"));
    assert_eq!(rpc.get_raw_mempool().await.unwrap(), vec![first.compute_txid()]);
}

#[tokio::test]
async fn c2_btc_simulator_reorg_changes_the_canonical_chain() {
    let (sim, rpc, miner) = setup().await;
    let (outpoint, value) = coinbase_outpoint(&rpc, 1).await;
    let tx = spend(&miner, outpoint, value, pay(&key(2), value - Amount::from_sat(5_000)), Sequence::MAX);
    let txid = rpc.send_raw_transaction(&tx).await.unwrap();
    let old = sim.mine(1, &miner.script).unwrap()[0];
    assert_eq!(rpc.get_block(&old).await.unwrap().txs[1].compute_txid(), txid);
    let parent = rpc.get_block_hash(101).await.unwrap();

    // A competing branch of 2 blocks from height 102 outgrows the 1-block tip: the node re-orgs to it.
    let branch = sim.mine_competing(102, 2, &key(3).script).unwrap();
    assert_eq!(rpc.get_block_count().await.unwrap(), 103);
    let new = rpc.get_block_hash(102).await.unwrap();
    assert_ne!(new, old, "the block at height 102 changed");
    assert_eq!(new, branch[0]);
    assert_eq!(rpc.get_block(&new).await.unwrap().prev_hash, Some(parent), "the fork point is unchanged");
    assert_eq!(rpc.get_block_header(&old).await.unwrap().confirmations, -1, "the old block is stale");
    assert_eq!(rpc.get_block(&new).await.unwrap().txs.len(), 1, "the competing block holds only its coinbase");

    // The re-orged-out transaction is back in the mempool, and confirms again on the new chain.
    assert_eq!(rpc.get_raw_mempool().await.unwrap(), vec![txid]);
    assert!(rpc.get_mempool_entry(&txid).await.is_ok());
    let next = sim.mine(1, &miner.script).unwrap()[0];
    let block = rpc.get_block(&next).await.unwrap();
    assert_eq!((block.height, block.txs[1].compute_txid()), (104, txid));

    // A branch that does not outgrow the tip is refused.
    assert!(sim.mine_competing(103, 1, &miner.script).is_err());
}

#[tokio::test]
async fn c4_btc_rbf_replacement_only_one_version_confirms() {
    let (sim, rpc, miner) = setup().await;
    let (outpoint, value) = coinbase_outpoint(&rpc, 1).await;
    let dest = key(2);
    let original =
        spend(&miner, outpoint, value, pay(&dest, value - Amount::from_sat(1_000)), Sequence::ENABLE_RBF_NO_LOCKTIME);
    let original_txid = rpc.send_raw_transaction(&original).await.unwrap();
    assert!(rpc.get_mempool_entry(&original_txid).await.unwrap().bip125_replaceable);

    // Same fee: not a valid replacement (BIP125 rules 3, 4 and 6).
    let same_fee =
        spend(&miner, outpoint, value, pay(&miner, value - Amount::from_sat(1_000)), Sequence::ENABLE_RBF_NO_LOCKTIME);
    let (code, message) = node_code(rpc.send_raw_transaction(&same_fee).await);
    assert_eq!(code, codes::RPC_VERIFY_REJECTED);
    assert!(message.starts_with("insufficient fee"), "{message}");

    // A bump to 5,000 sat replaces it.
    let bumped =
        spend(&miner, outpoint, value, pay(&dest, value - Amount::from_sat(5_000)), Sequence::ENABLE_RBF_NO_LOCKTIME);
    let bumped_txid = rpc.send_raw_transaction(&bumped).await.unwrap();
    assert_eq!(rpc.get_raw_mempool().await.unwrap(), vec![bumped_txid]);
    assert_eq!(rpc.get_mempool_entry(&bumped_txid).await.unwrap().fee_base, Amount::from_sat(5_000));
    assert_eq!(node_code(rpc.get_mempool_entry(&original_txid).await).0, codes::RPC_INVALID_ADDRESS_OR_KEY);

    let block = rpc.get_block(&sim.mine(1, &miner.script).unwrap()[0]).await.unwrap();
    let confirmed: Vec<Txid> = block.txs.iter().skip(1).map(Transaction::compute_txid).collect();
    assert_eq!(confirmed, vec![bumped_txid], "only the replacement confirms");
    // The original can never confirm now: its input is spent.
    let (code, _) = node_code(rpc.send_raw_transaction(&original).await);
    assert_eq!(code, codes::RPC_VERIFY_ERROR);
}

#[tokio::test]
async fn c4_btc_estimatesmartfee_answers_in_exact_sat_per_kvb() {
    let (sim, rpc, miner) = setup().await;
    // No transactions yet: the simulator's floor, Core's minimum relay fee (0.00001000 BTC/kvB).
    let empty = rpc.estimate_smart_fee(6).await.unwrap();
    assert_eq!(empty.fee_rate_sat_per_kvb, Some(1_000));
    assert_eq!(empty.fee_rate_sat_per_vb_ceil(), Some(1));
    assert_eq!(empty.blocks, 6);

    let (outpoint, value) = coinbase_outpoint(&rpc, 1).await;
    let fee = Amount::from_sat(12_345);
    let tx = spend(&miner, outpoint, value, pay(&key(2), value - fee), Sequence::MAX);
    rpc.send_raw_transaction(&tx).await.unwrap();
    sim.mine(1, &miner.script).unwrap();
    let estimate = rpc.estimate_smart_fee(2).await.unwrap();
    assert_eq!(estimate.fee_rate_sat_per_kvb, Some(fee.to_sat() * 1000 / tx.vsize() as u64));
    assert_eq!(node_code(rpc.estimate_smart_fee(0).await).0, codes::RPC_INVALID_PARAMETER);
}

#[tokio::test]
async fn m5_btc_rpc_basic_auth_is_sent_and_required() {
    let sim = RegtestSimulator::start_with_auth("kinko", "s3cret").await.unwrap();
    let anonymous = BtcRpc::new(&sim.url(), None).unwrap();
    assert!(matches!(anonymous.get_block_count().await, Err(RpcError::HttpStatus { status: 401, .. })));
    let wrong = BtcRpcAuth { user: "kinko".into(), password: "guess".to_owned().into() };
    let wrong = BtcRpc::new(&sim.url(), Some(wrong)).unwrap();
    assert!(matches!(wrong.get_block_count().await, Err(RpcError::HttpStatus { status: 401, .. })));
    let auth = BtcRpcAuth { user: "kinko".into(), password: "s3cret".to_owned().into() };
    let rpc = BtcRpc::new(&sim.url(), Some(auth)).unwrap();
    assert_eq!(rpc.get_block_count().await.unwrap(), 0);
    // The password never shows in the client's Debug output.
    assert!(!format!("{rpc:?}").contains("s3cret"));
}

#[tokio::test]
async fn c4_btc_replacing_a_parent_evicts_its_unconfirmed_child() {
    let (sim, rpc, miner) = setup().await;
    let (outpoint, value) = coinbase_outpoint(&rpc, 1).await;
    let parent_value = value - Amount::from_sat(1_000);
    let parent = spend(&miner, outpoint, value, pay(&miner, parent_value), Sequence::ENABLE_RBF_NO_LOCKTIME);
    let parent_txid = rpc.send_raw_transaction(&parent).await.unwrap();
    // A child spending the unconfirmed parent: it depends on it and inherits its BIP125 replaceability.
    let child_outpoint = OutPoint { txid: parent_txid, vout: 0 };
    let child = spend(
        &miner,
        child_outpoint,
        parent_value,
        pay(&key(2), parent_value - Amount::from_sat(1_000)),
        Sequence::MAX,
    );
    let child_txid = rpc.send_raw_transaction(&child).await.unwrap();
    let entry = rpc.get_mempool_entry(&child_txid).await.unwrap();
    assert_eq!(entry.depends, vec![parent_txid]);
    assert!(entry.bip125_replaceable, "replaceable through its signalling parent");
    assert_eq!(entry.fee_ancestor, Amount::from_sat(2_000));
    assert_eq!(rpc.get_mempool_entry(&parent_txid).await.unwrap().fee_descendant, Amount::from_sat(2_000));

    // A replacement must pay for both evicted transactions (BIP125 rule 3): 1,500 sat is not enough.
    let cheap = spend(&miner, outpoint, value, pay(&key(3), value - Amount::from_sat(1_500)), Sequence::MAX);
    let (code, message) = node_code(rpc.send_raw_transaction(&cheap).await);
    assert_eq!(code, codes::RPC_VERIFY_REJECTED);
    assert!(message.contains("less fees than conflicting txs"), "{message}");
    let replacement = spend(&miner, outpoint, value, pay(&key(3), value - Amount::from_sat(10_000)), Sequence::MAX);
    let replacement_txid = rpc.send_raw_transaction(&replacement).await.unwrap();
    assert_eq!(rpc.get_raw_mempool().await.unwrap(), vec![replacement_txid], "parent and child evicted");
    let block = rpc.get_block(&sim.mine(1, &miner.script).unwrap()[0]).await.unwrap();
    let confirmed: Vec<Txid> = block.txs.iter().skip(1).map(Transaction::compute_txid).collect();
    assert_eq!(confirmed, vec![replacement_txid]);
}
