//! The online cosigner of the 2-of-3 P2WSH cold wallet inside the signer service (K15, K20): `LocalSigner`'s
//! `cosign_btc_multisig_psbt` runs `btc_multisig::cosign` behind the gates, approvals, anti-double-sign record
//! per spent outpoint and key access log of `sign_btc_psbt`. PSBTs are built by `kinko_chain::btc::multisig`,
//! finalized with miniscript, verified with libbitcoinconsensus and broadcast with the real `BtcRpc` client
//! to the in-process regtest simulator, which mines them.

use std::sync::Arc;

use bitcoin::bip32::Xpriv;
use bitcoin::secp256k1::{Secp256k1, SecretKey};
use bitcoin::{Address, Amount, CompressedPublicKey, Network, OutPoint, Psbt, TxOut};
use kinko_chain::btc::multisig::{Cosigner, MultisigWallet, build_multisig_withdrawal, finalize_multisig};
use kinko_chain::btc::psbt::{BuiltPsbt, SpendableUtxo, WithdrawalRequest};
use kinko_chain::btc::regtest_sim::RegtestSimulator;
use kinko_chain::btc::rpc::BtcRpc;
use kinko_core::Amount as KAmount;
use kinko_core::intent::Intent;
use kinko_keys::btc::Keychain;
use kinko_signer::btc::{BtcSignRequest, btc_chain_id};
use kinko_signer::btc_multisig::{BTC_COSIGN_OPERATION, BtcCosigned};
use kinko_signer::testing::{FailingJournal, MemoryJournal, auto_quorum};
use kinko_signer::{LocalSigner, Signer, SignerError, SignerJournal, SlotKey};

const NET: Network = Network::Regtest;
const FEE_CAP_SAT: u64 = 100_000;
const FEE_RATE_SAT_PER_VB: u64 = 3;
/// The online cosigner's key id in the signer (signer A) and a second signer instance's (signer B).
const KEY_A: &str = "btc-cold-cosigner-a";
const KEY_B: &str = "btc-cold-cosigner-b";
/// Blocks a coinbase output must wait before it is spent.
const COINBASE_MATURITY: usize = 100;

fn master(seed: u8) -> Xpriv {
    kinko_keys::hd::master_from_seed(&[seed; 32]).unwrap()
}

fn p2wpkh(byte: u8) -> Address {
    let sk = SecretKey::from_slice(&[byte; 32]).unwrap();
    Address::p2wpkh(&CompressedPublicKey(sk.public_key(&Secp256k1::new())), NET)
}

/// The 2-of-3 wallet of masters 0x11 (signer A), 0x22 (signer B) and 0x33 (the unused recovery key).
fn wallet() -> MultisigWallet {
    let cosigners = [0x11, 0x22, 0x33].map(|s| Cosigner::from_master(&master(s), NET).unwrap()).to_vec();
    MultisigWallet::new(2, cosigners, NET).unwrap()
}

fn cosigner_signer(journal: Arc<dyn SignerJournal>, key_id: &str, seed: u8) -> LocalSigner {
    let signer = LocalSigner::new(journal);
    signer.set_quorum(auto_quorum(key_id, &["BTC"])).unwrap();
    let cosigner = signer.set_btc_cosigner(key_id, &master(seed), wallet(), FEE_CAP_SAT).unwrap();
    assert_eq!(cosigner, Cosigner::from_master(&master(seed), NET).unwrap());
    signer
}

struct Fixture {
    sim: RegtestSimulator,
    rpc: BtcRpc,
    wallet: MultisigWallet,
    /// Mature coinbase outputs paying the wallet's receive addresses `0/0` and `0/1`.
    utxos: Vec<SpendableUtxo>,
}

async fn funded() -> Fixture {
    let sim = RegtestSimulator::start().await.unwrap();
    let rpc = BtcRpc::new(&sim.url(), None).unwrap();
    let wallet = wallet();
    let mut utxos = Vec::new();
    for index in 0..2u32 {
        let script = wallet.script_pubkey(Keychain::Receive, index).unwrap();
        let hash = sim.mine(1, &script).unwrap()[0];
        let block = rpc.get_block(&hash).await.unwrap();
        assert_eq!(block.txs[0].output[0].script_pubkey, script);
        utxos.push(SpendableUtxo {
            outpoint: OutPoint { txid: block.txs[0].compute_txid(), vout: 0 },
            value: block.txs[0].output[0].value,
            keychain: Keychain::Receive,
            index,
            script_pubkey: script,
        });
    }
    sim.mine(COINBASE_MATURITY, &p2wpkh(1).script_pubkey()).unwrap();
    Fixture { sim, rpc, wallet, utxos }
}

fn build(f: &Fixture, utxos: &[SpendableUtxo], to: &Address, amount: Amount, change_index: u32) -> BuiltPsbt {
    let req = WithdrawalRequest { destination: to, amount, fee_rate_sat_per_vb: FEE_RATE_SAT_PER_VB, change_index };
    build_multisig_withdrawal(&f.wallet, utxos, &req).unwrap()
}

fn intent(id: &str, to: &Address, amount: Amount) -> Intent {
    Intent {
        id: id.into(),
        asset: "BTC".parse().unwrap(),
        chain_id: btc_chain_id(NET),
        amount: KAmount::from_base_units(u128::from(amount.to_sat())),
        destination: to.to_string(),
        source_wallet: "btc-cold-2of3".into(),
        customer_id: "kinko".into(),
        reason: "cold to hot refill".into(),
    }
}

fn request(key_id: &str, intent: &Intent, psbt: &Psbt) -> BtcSignRequest {
    BtcSignRequest {
        key_id: key_id.into(),
        network: NET,
        psbt: psbt.serialize(),
        intent: intent.clone(),
        approvals: vec![],
        actor: "cold-refill".into(),
        terminal: "test-host".into(),
    }
}

fn psbt_of(c: &BtcCosigned) -> Psbt {
    Psbt::deserialize(&c.psbt).unwrap()
}

fn double_sign(got: Result<BtcCosigned, SignerError>) -> String {
    match got {
        Err(SignerError::DoubleSign { reason, .. }) => reason,
        other => panic!("expected a double sign refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn k15_btc_multisig_cosigner_in_the_signer_records_outpoints_and_refuses_a_second_payload() {
    let f = funded().await;
    let journal = Arc::new(MemoryJournal::new());
    let signer = cosigner_signer(journal.clone(), KEY_A, 0x11);
    let to = p2wpkh(2);
    let amount = Amount::from_sat(150_000_000);
    let built = build(&f, &f.utxos[..1], &to, amount, 0);
    let i1 = intent("refill-1", &to, amount);

    // Before the cosigner: a signer without a cosigner key refuses (the trait's own refusal is for signers
    // without any), an unknown key id is unknown, and nothing is recorded.
    let plain = LocalSigner::new(journal.clone());
    assert!(matches!(
        plain.cosign_btc_multisig_psbt(&request(KEY_A, &i1, &built.psbt)).await,
        Err(SignerError::UnknownKey(_))
    ));
    assert!(matches!(
        signer.cosign_btc_multisig_psbt(&request("btc-cold-other", &i1, &built.psbt)).await,
        Err(SignerError::UnknownKey(_))
    ));
    assert!(journal.access_log().is_empty());

    let cosigned = signer.cosign_btc_multisig_psbt(&request(KEY_A, &i1, &built.psbt)).await.unwrap();
    assert_eq!(cosigned.txid, built.psbt.unsigned_tx.compute_txid());
    assert_eq!(cosigned.fee_sat, built.fee.to_sat());
    assert_eq!(cosigned.signed_inputs, 1);
    assert_eq!(cosigned.cosigner_fingerprint, master(0x11).fingerprint(&Secp256k1::new()).to_string());
    let partial = psbt_of(&cosigned);
    assert_eq!(partial.unsigned_tx, built.psbt.unsigned_tx, "the transaction is unchanged");
    assert_eq!(partial.inputs[0].partial_sigs.len(), 1, "one signature, the signer's own: not finalizable alone");
    assert!(finalize_multisig(&mut partial.clone()).is_err());

    // Recorded: the spent outpoint's slot under the cosigner key, one access log entry, operation cosign_btc.
    let slot = SlotKey::btc(KEY_A, NET, &f.utxos[0].outpoint);
    assert_eq!(slot.chain, "btc:regtest");
    let entries = journal.slot_entries(&slot).await.unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].intent_hash, i1.hash());
    let log = journal.access_log();
    assert_eq!(log.len(), 1);
    assert_eq!((log[0].operation.as_str(), log[0].key_id.as_str()), (BTC_COSIGN_OPERATION, KEY_A));
    assert_eq!(log[0].actor, "cold-refill");
    // The other coin is not recorded.
    assert!(journal.slot_entries(&SlotKey::btc(KEY_A, NET, &f.utxos[1].outpoint)).await.unwrap().is_empty());

    // The same PSBT again (a retry): the same signature (RFC 6979), no new slot entry.
    let again = signer.cosign_btc_multisig_psbt(&request(KEY_A, &i1, &built.psbt)).await.unwrap();
    assert_eq!(again.psbt, cosigned.psbt);
    assert_eq!(journal.slot_entries(&slot).await.unwrap().len(), 1);
    assert_eq!(journal.access_log().len(), 2, "every signature returned is logged, a retry too");

    // A second payload on the same coin: another intent to another destination, refused as a double sign.
    let thief = p2wpkh(9);
    let other = build(&f, &f.utxos[..1], &thief, amount, 1);
    let reason = double_sign(
        signer.cosign_btc_multisig_psbt(&request(KEY_A, &intent("refill-2", &thief, amount), &other.psbt)).await,
    );
    assert!(reason.contains("another intent"), "{reason}");
    // The same intent but another change address: not a fee bump, refused.
    let moved_change = build(&f, &f.utxos[..1], &to, amount, 7);
    let reason = double_sign(signer.cosign_btc_multisig_psbt(&request(KEY_A, &i1, &moved_change.psbt)).await);
    assert!(reason.contains("fee bump"), "{reason}");
    // Two coins, one of them taken: refused, and the free coin stays unrecorded.
    let two = build(&f, &f.utxos, &to, Amount::from_sat(6_000_000_000), 0);
    assert_eq!(two.psbt.inputs.len(), 2);
    let reason = double_sign(
        signer
            .cosign_btc_multisig_psbt(&request(
                KEY_A,
                &intent("refill-3", &to, Amount::from_sat(6_000_000_000)),
                &two.psbt,
            ))
            .await,
    );
    assert!(reason.contains("another intent"), "{reason}");
    assert!(journal.slot_entries(&SlotKey::btc(KEY_A, NET, &f.utxos[1].outpoint)).await.unwrap().is_empty());

    // The one thing allowed on a signed coin: a BIP125 fee bump of the same intent (same inputs and payment,
    // the change lowered), recorded as a second entry of the slot; going back to the lower fee is not.
    let mut bump = built.psbt.clone();
    let change_vout = built.change.expect("change").vout;
    bump.unsigned_tx.output[change_vout].value -= Amount::from_sat(2_000);
    signer.cosign_btc_multisig_psbt(&request(KEY_A, &i1, &bump)).await.unwrap();
    assert_eq!(journal.slot_entries(&slot).await.unwrap().len(), 2);
    assert_eq!(journal.access_log().len(), 3);
    let mut lower = built.psbt.clone();
    lower.unsigned_tx.output[change_vout].value -= Amount::from_sat(1_000);
    let reason = double_sign(signer.cosign_btc_multisig_psbt(&request(KEY_A, &i1, &lower)).await);
    assert!(reason.contains("not a fee bump"), "{reason}");

    // The PSBT is checked as the offline cosigner checks it: change to a foreign address is refused, and
    // nothing is recorded for it.
    let mut redirected = build(&f, &f.utxos[1..], &to, amount, 0);
    let cv = redirected.change.expect("change").vout;
    redirected.psbt.unsigned_tx.output[cv] =
        TxOut { value: redirected.psbt.unsigned_tx.output[cv].value, script_pubkey: thief.script_pubkey() };
    let got =
        signer.cosign_btc_multisig_psbt(&request(KEY_A, &intent("refill-4", &to, amount), &redirected.psbt)).await;
    assert!(matches!(got, Err(SignerError::IntentMismatch { .. })), "{got:?}");
    assert!(journal.slot_entries(&SlotKey::btc(KEY_A, NET, &f.utxos[1].outpoint)).await.unwrap().is_empty());

    // The signer process's protocol carries the request (`{"op":"cosign_btc",…}`) and the answer unchanged.
    let req = request(KEY_A, &i1, &built.psbt);
    let line = serde_json::json!({"op": "cosign_btc", "request": req}).to_string();
    match serde_json::from_str::<kinko_signer::server::Request>(&line).unwrap() {
        kinko_signer::server::Request::CosignBtc { request } => assert_eq!(*request, req),
        other => panic!("parsed as {other:?}"),
    }
    let back: BtcCosigned = serde_json::from_value(serde_json::to_value(&cosigned).unwrap()).unwrap();
    assert_eq!(back, cosigned);

    // Sealed: nothing signs, and the cosigner key is gone.
    signer.seal();
    assert!(matches!(signer.cosign_btc_multisig_psbt(&req).await, Err(SignerError::Sealed)));
    assert_eq!(journal.access_log().len(), 3, "refusals are not logged as signatures");
}

#[tokio::test]
async fn k15_btc_multisig_two_signer_instances_sign_and_the_spend_verifies_and_mines() {
    let f = funded().await;
    let journal_a = Arc::new(MemoryJournal::new());
    let journal_b = Arc::new(MemoryJournal::new());
    let a = cosigner_signer(journal_a.clone(), KEY_A, 0x11);
    let b = cosigner_signer(journal_b.clone(), KEY_B, 0x22);
    // A signer whose BIP48 account is not one of the pinned wallet's cannot be made its cosigner.
    let stranger = LocalSigner::new(journal_a.clone());
    assert!(matches!(
        stranger.set_btc_cosigner("x", &master(0x44), wallet(), FEE_CAP_SAT),
        Err(SignerError::Refused(_))
    ));

    let to = p2wpkh(2);
    let amount = Amount::from_sat(150_000_000);
    let built = build(&f, &f.utxos[..1], &to, amount, 0);
    let change = built.change.expect("a 50 BTC coinbase pays 1.5 BTC with change");
    let i = intent("refill-1", &to, amount);

    // Each signer instance signs the unsigned PSBT with its own key; the PSBTs are combined.
    let from_a = psbt_of(&a.cosign_btc_multisig_psbt(&request(KEY_A, &i, &built.psbt)).await.unwrap());
    let from_b = psbt_of(&b.cosign_btc_multisig_psbt(&request(KEY_B, &i, &built.psbt)).await.unwrap());
    let mut psbt = from_a.clone();
    psbt.combine(from_b).unwrap();
    assert_eq!(psbt.inputs[0].partial_sigs.len(), 2);
    // B signing A's PSBT (checking A's signature first) gives the same two signatures: a retry for B.
    let chained = psbt_of(&b.cosign_btc_multisig_psbt(&request(KEY_B, &i, &from_a)).await.unwrap());
    assert_eq!(chained.inputs[0].partial_sigs, psbt.inputs[0].partial_sigs);
    assert_eq!(journal_b.slot_entries(&SlotKey::btc(KEY_B, NET, &f.utxos[0].outpoint)).await.unwrap().len(), 1);
    // Each signer kept its own record and access log.
    for (journal, key) in [(&journal_a, KEY_A), (&journal_b, KEY_B)] {
        let log = journal.access_log();
        assert!(!log.is_empty() && log.iter().all(|e| e.key_id == key && e.operation == BTC_COSIGN_OPERATION));
    }

    // Finalized with miniscript and verified with libbitcoinconsensus (inside finalize_multisig, and again here).
    let prevouts = kinko_chain::btc::consensus::prevouts_of(&psbt).unwrap();
    let tx = finalize_multisig(&mut psbt).unwrap();
    kinko_chain::btc::consensus::verify_spend(&tx, &prevouts).unwrap();
    assert_eq!(tx.compute_txid(), built.psbt.unsigned_tx.compute_txid());

    let txid = f.rpc.send_raw_transaction(&tx).await.unwrap();
    assert_eq!(f.rpc.get_raw_mempool().await.unwrap(), vec![txid]);
    f.sim.mine(1, &p2wpkh(1).script_pubkey()).unwrap();
    let tip =
        f.rpc.get_block(&f.rpc.get_block_hash(f.rpc.get_block_count().await.unwrap()).await.unwrap()).await.unwrap();
    let mined = tip.txs.iter().find(|t| t.compute_txid() == txid).expect("the spend is mined");
    assert_eq!(mined.output[0], TxOut { value: amount, script_pubkey: to.script_pubkey() });
    assert_eq!(
        mined.output[change.vout],
        TxOut { value: change.value, script_pubkey: f.wallet.script_pubkey(Keychain::Change, 0).unwrap() }
    );
    assert!(f.rpc.get_raw_mempool().await.unwrap().is_empty());
}

#[tokio::test]
async fn k20_btc_multisig_cosigner_journal_failure_means_no_signature() {
    let f = funded().await;
    let signer = cosigner_signer(Arc::new(FailingJournal), KEY_A, 0x11);
    let to = p2wpkh(2);
    let amount = Amount::from_sat(150_000_000);
    let built = build(&f, &f.utxos[..1], &to, amount, 0);
    let got = signer.cosign_btc_multisig_psbt(&request(KEY_A, &intent("refill-1", &to, amount), &built.psbt)).await;
    assert!(matches!(got, Err(SignerError::JournalUnavailable(_))), "{got:?}");
}
