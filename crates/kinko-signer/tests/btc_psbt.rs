//! The signer's Bitcoin withdrawal signing (issue 9; K20, C4, C5): PSBTs built online from the xpub
//! (`kinko_chain::btc::psbt`), checked and signed by `LocalSigner` with its BIP84 account, broadcast with
//! the production `BtcRpc` client to the in-process regtest simulator (which verifies every input with
//! libbitcoinconsensus) and mined.

use std::sync::Arc;

use bitcoin::bip32::Xpriv;
use bitcoin::psbt::{Psbt, PsbtSighashType};
use bitcoin::sighash::EcdsaSighashType;
use bitcoin::{Address, Amount, Network, OutPoint, ScriptBuf, Transaction, TxOut, Txid};
use kinko_chain::btc::psbt::{BuiltPsbt, SpendableUtxo, WithdrawalRequest, build_fee_bump, build_withdrawal};
use kinko_chain::btc::regtest_sim::RegtestSimulator;
use kinko_chain::btc::rpc::BtcRpc;
use kinko_core::intent::Intent;
use kinko_core::{Amount as KAmount, ChainId};
use kinko_keys::btc::{Bip84Account, Keychain};
use kinko_signer::btc::{BtcSignRequest, BtcSigned, btc_chain_id, check_psbt_against_intent};
use kinko_signer::testing::{FailingJournal, MemoryJournal, auto_quorum};
use kinko_signer::{LocalSigner, Signer, SignerError, SignerJournal, SlotKey};

const KEY: &str = "btc-hot-1";
const NETWORK: Network = Network::Regtest;
const FEE_CAP_SAT: u64 = 100_000;
/// Regtest's first-era block subsidy.
const COINBASE_VALUE: Amount = Amount::from_sat(50 * 100_000_000);
/// Blocks a coinbase output must wait before it is spent.
const COINBASE_MATURITY: usize = 100;

fn master() -> Xpriv {
    kinko_keys::hd::master_from_seed(&[0x42; 64]).unwrap()
}

/// A destination nobody in this test holds the key of (P2WPKH of a fixed key).
fn foreign_address(byte: u8) -> Address {
    let secp = bitcoin::secp256k1::Secp256k1::new();
    let sk = bitcoin::secp256k1::SecretKey::from_slice(&[byte; 32]).unwrap();
    Address::p2wpkh(&bitcoin::CompressedPublicKey(sk.public_key(&secp)), NETWORK)
}

struct Fixture {
    sim: RegtestSimulator,
    rpc: BtcRpc,
    signer: LocalSigner,
    journal: Arc<MemoryJournal>,
    account: Bip84Account,
    /// Mature coinbase outputs paying the account's receive addresses `0/0` and `0/1`.
    utxos: Vec<SpendableUtxo>,
}

async fn fixture_with(journal: Arc<dyn SignerJournal>, memory: Arc<MemoryJournal>) -> Fixture {
    let sim = RegtestSimulator::start().await.unwrap();
    let rpc = BtcRpc::new(&sim.url(), None).unwrap();
    let signer = LocalSigner::new(journal);
    signer.set_quorum(auto_quorum(KEY, &["BTC"])).unwrap();
    let account = signer.set_btc_account(KEY, &master(), NETWORK, FEE_CAP_SAT).unwrap();
    assert_eq!(account, Bip84Account::from_master(&master(), NETWORK).unwrap(), "the signer's xpub is the account's");

    // Fund the account by mining to its receive addresses, then let the coinbases mature.
    let mut utxos = Vec::new();
    for index in 0..2u32 {
        let script = account.script_pubkey(Keychain::Receive, index).unwrap();
        let hash = sim.mine(1, &script).unwrap()[0];
        let block = rpc.get_block(&hash).await.unwrap();
        let coinbase = &block.txs[0];
        assert_eq!(coinbase.output[0].script_pubkey, script);
        utxos.push(SpendableUtxo {
            outpoint: OutPoint { txid: coinbase.compute_txid(), vout: 0 },
            value: coinbase.output[0].value,
            keychain: Keychain::Receive,
            index,
            script_pubkey: script,
        });
    }
    sim.mine(COINBASE_MATURITY, &foreign_address(0x01).script_pubkey()).unwrap();
    Fixture { sim, rpc, signer, journal: memory, account, utxos }
}

async fn fixture() -> Fixture {
    let journal = Arc::new(MemoryJournal::new());
    fixture_with(journal.clone(), journal).await
}

fn intent(id: &str, destination: &Address, amount_sat: u64) -> Intent {
    Intent {
        id: id.into(),
        asset: "BTC".parse().unwrap(),
        chain_id: btc_chain_id(NETWORK),
        amount: KAmount::from_base_units(u128::from(amount_sat)),
        destination: destination.to_string(),
        source_wallet: "btc-hot".into(),
        customer_id: "c1".into(),
        reason: "customer withdrawal".into(),
    }
}

fn build(f: &Fixture, utxos: &[SpendableUtxo], destination: &Address, amount_sat: u64, change_index: u32) -> BuiltPsbt {
    let request =
        WithdrawalRequest { destination, amount: Amount::from_sat(amount_sat), fee_rate_sat_per_vb: 2, change_index };
    build_withdrawal(&f.account, utxos, &request).unwrap()
}

fn sign_request(intent: &Intent, psbt: &Psbt) -> BtcSignRequest {
    BtcSignRequest {
        key_id: KEY.into(),
        network: NETWORK,
        psbt: psbt.serialize(),
        intent: intent.clone(),
        approvals: vec![],
        actor: "pipeline".into(),
        terminal: "test-host".into(),
    }
}

fn tx_of(signed: &BtcSigned) -> Transaction {
    bitcoin::consensus::encode::deserialize(&signed.raw_tx).unwrap()
}

/// The block at `height` and whether it holds `txid`.
async fn block_has(rpc: &BtcRpc, height: u64, txid: Txid) -> Option<Transaction> {
    let block = rpc.get_block(&rpc.get_block_hash(height).await.unwrap()).await.unwrap();
    block.txs.into_iter().find(|t| t.compute_txid() == txid)
}

fn mismatch_field(got: Result<BtcSigned, SignerError>) -> String {
    match got {
        Err(SignerError::IntentMismatch { field, expected, actual }) => format!("{field}: {expected} / {actual}"),
        other => panic!("expected an intent mismatch, got {other:?}"),
    }
}

fn refusal(got: Result<BtcSigned, SignerError>) -> String {
    match got {
        Err(SignerError::Refused(m)) => m,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

async fn nothing_recorded(f: &Fixture) {
    assert!(f.journal.access_log().is_empty(), "a refused request leaves no key access log entry");
    for u in &f.utxos {
        let slot = SlotKey::btc(KEY, NETWORK, &u.outpoint);
        assert!(f.journal.slot_entries(&slot).await.unwrap().is_empty(), "and no anti-double-sign entry");
    }
}

#[tokio::test]
async fn c5_btc_withdrawal_with_change_signed_verified_and_mined() {
    let f = fixture().await;
    let destination = foreign_address(0x77);
    let amount_sat = 123_456_789;
    let built = build(&f, &f.utxos, &destination, amount_sat, 0);
    assert_eq!(built.psbt.unsigned_tx.input.len(), 1, "one 50 BTC coinbase pays 1.23 BTC");
    let change = built.change.expect("a change output");
    let w = intent("w1", &destination, amount_sat);

    let signed = f.signer.sign_btc_psbt(&sign_request(&w, &built.psbt)).await.unwrap();
    let tx = tx_of(&signed);
    assert_eq!(signed.txid, tx.compute_txid());
    assert_eq!(signed.txid, built.psbt.unsigned_tx.compute_txid(), "segwit: signing does not change the txid");
    assert_eq!(signed.fee_sat, built.fee.to_sat());
    // The signer already ran it through libbitcoinconsensus; run it again here from the returned PSBT.
    let finalized = Psbt::deserialize(&signed.psbt).unwrap();
    let prevouts = kinko_chain::btc::consensus::prevouts_of(&finalized).unwrap();
    kinko_chain::btc::consensus::verify_spend(&tx, &prevouts).unwrap();

    // Recorded: one slot per spent outpoint, one access log entry per slot, operation sign_btc.
    let slot = SlotKey::btc(KEY, NETWORK, &tx.input[0].previous_output);
    assert_eq!(slot.chain, "btc:regtest");
    assert_eq!(slot.slot, format!("{}:{}", tx.input[0].previous_output.txid, tx.input[0].previous_output.vout));
    let entries = f.journal.slot_entries(&slot).await.unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].intent_hash, w.hash());
    let log = f.journal.access_log();
    assert_eq!(log.len(), 1);
    assert_eq!((log[0].operation.as_str(), log[0].key_id.as_str()), ("sign_btc", KEY));

    // Signing the very same PSBT again (a retry) gives the same transaction: idempotent, not a double sign.
    let again = f.signer.sign_btc_psbt(&sign_request(&w, &built.psbt)).await.unwrap();
    assert_eq!(again.raw_tx, signed.raw_tx, "RFC 6979: same payload, same signature");

    let txid = f.rpc.send_raw_transaction(&tx).await.unwrap();
    assert_eq!(txid, signed.txid);
    assert_eq!(f.rpc.get_raw_mempool().await.unwrap(), vec![txid]);
    f.sim.mine(1, &foreign_address(0x01).script_pubkey()).unwrap();
    let height = f.rpc.get_block_count().await.unwrap();
    let mined = block_has(&f.rpc, height, txid).await.expect("the withdrawal is mined");
    let payment = &mined.output[0];
    assert_eq!(payment.script_pubkey, destination.script_pubkey());
    assert_eq!(payment.value, Amount::from_sat(amount_sat));
    let change_out = &mined.output[change.vout];
    assert_eq!(change_out.script_pubkey, f.account.script_pubkey(Keychain::Change, 0).unwrap());
    assert_eq!(change_out.value, change.value);
    assert_eq!(change.value + Amount::from_sat(amount_sat) + built.fee, COINBASE_VALUE);
    assert!(f.rpc.get_raw_mempool().await.unwrap().is_empty());
}

#[tokio::test]
async fn k20_btc_signer_refuses_change_to_a_foreign_address() {
    let f = fixture().await;
    let destination = foreign_address(0x77);
    let w = intent("w1", &destination, 100_000_000);
    let built = build(&f, &f.utxos, &destination, 100_000_000, 3);
    let vout = built.change.unwrap().vout;

    // The change output's script replaced by a foreign address; its bip32_derivation still claims 1/3.
    let mut foreign = built.psbt.clone();
    foreign.unsigned_tx.output[vout].script_pubkey = foreign_address(0x66).script_pubkey();
    let m = mismatch_field(f.signer.sign_btc_psbt(&sign_request(&w, &foreign)).await);
    assert!(m.starts_with("output destination"), "{m}");
    assert!(m.contains(&foreign_address(0x66).to_string()), "the refusal names where the money would go: {m}");

    // Our own receive address `0/3` as "change" (derivation edited to match it): not change.
    let mut receive = built.psbt.clone();
    receive.unsigned_tx.output[vout].script_pubkey = f.account.script_pubkey(Keychain::Receive, 3).unwrap();
    receive.outputs[vout].bip32_derivation.clear();
    let key = f.account.public_key(Keychain::Receive, 3).unwrap().0;
    receive.outputs[vout].bip32_derivation.insert(key, f.account.key_source(Keychain::Receive, 3).unwrap());
    let m = mismatch_field(f.signer.sign_btc_psbt(&sign_request(&w, &receive)).await);
    assert!(m.starts_with("output destination"), "{m}");

    // Our change address 1/4 while the derivation says 1/3: the script is re-derived, so not change.
    let mut wrong_index = built.psbt.clone();
    wrong_index.unsigned_tx.output[vout].script_pubkey = f.account.script_pubkey(Keychain::Change, 4).unwrap();
    let m = mismatch_field(f.signer.sign_btc_psbt(&sign_request(&w, &wrong_index)).await);
    assert!(m.starts_with("output destination"), "{m}");

    // Change of another account (another master) with a correct derivation of *that* account: not ours.
    let other = Bip84Account::from_master(&kinko_keys::hd::master_from_seed(&[0x43; 64]).unwrap(), NETWORK).unwrap();
    let mut other_account = built.psbt.clone();
    other_account.unsigned_tx.output[vout].script_pubkey = other.script_pubkey(Keychain::Change, 3).unwrap();
    other_account.outputs[vout].bip32_derivation.clear();
    other_account.outputs[vout]
        .bip32_derivation
        .insert(other.public_key(Keychain::Change, 3).unwrap().0, other.key_source(Keychain::Change, 3).unwrap());
    let m = mismatch_field(f.signer.sign_btc_psbt(&sign_request(&w, &other_account)).await);
    assert!(m.starts_with("output destination"), "{m}");

    // A third output (an OP_RETURN) is refused whatever it carries.
    let mut op_return = built.psbt.clone();
    op_return.unsigned_tx.output.push(TxOut { value: Amount::ZERO, script_pubkey: ScriptBuf::new_op_return([1u8; 4]) });
    op_return.outputs.push(Default::default());
    let m = refusal(f.signer.sign_btc_psbt(&sign_request(&w, &op_return)).await);
    assert!(m.contains("3 outputs"), "{m}");
    nothing_recorded(&f).await;

    // The untouched PSBT signs: the refusals above were about the edits.
    f.signer.sign_btc_psbt(&sign_request(&w, &built.psbt)).await.unwrap();
}

#[tokio::test]
async fn k20_btc_signer_refuses_amount_or_destination_differing_from_the_intent() {
    let f = fixture().await;
    let destination = foreign_address(0x77);
    let amount_sat = 100_000_000;
    let built = build(&f, &f.utxos, &destination, amount_sat, 0);

    // The PSBT pays one satoshi more than the intent.
    let m = mismatch_field(
        f.signer.sign_btc_psbt(&sign_request(&intent("w1", &destination, amount_sat - 1), &built.psbt)).await,
    );
    assert!(m.starts_with("payment amount (sat): 99999999 / 100000000"), "{m}");
    // The PSBT pays another address than the intent's.
    let m = mismatch_field(
        f.signer.sign_btc_psbt(&sign_request(&intent("w1", &foreign_address(0x78), amount_sat), &built.psbt)).await,
    );
    assert!(m.starts_with("output destination") && m.contains(&destination.to_string()), "{m}");

    let w = intent("w1", &destination, amount_sat);
    // The intent's destination spelled non-canonically (upper-case bech32), or of another network.
    let mut upper = w.clone();
    upper.destination = w.destination.to_uppercase();
    let m = mismatch_field(f.signer.sign_btc_psbt(&sign_request(&upper, &built.psbt)).await);
    assert!(m.starts_with("intent.destination (canonical form)"), "{m}");
    let mut mainnet = w.clone();
    mainnet.destination = "bc1qcr8te4kr609gcawutmrza0j4xv80jy8z306fyu".into();
    let m = refusal(f.signer.sign_btc_psbt(&sign_request(&mainnet, &built.psbt)).await);
    assert!(m.contains("is not an address of regtest"), "{m}");
    // An EVM intent, or a Bitcoin intent of another network.
    let mut eth = w.clone();
    eth.asset = "ETH".parse().unwrap();
    assert!(mismatch_field(f.signer.sign_btc_psbt(&sign_request(&eth, &built.psbt)).await).starts_with("intent.asset"));
    let mut evm_chain = w.clone();
    evm_chain.chain_id = ChainId(1);
    let m = mismatch_field(f.signer.sign_btc_psbt(&sign_request(&evm_chain, &built.psbt)).await);
    assert!(m.starts_with("intent.chain_id"), "{m}");
    let mut testnet = sign_request(&w, &built.psbt);
    testnet.network = Network::Testnet;
    assert!(refusal(f.signer.sign_btc_psbt(&testnet).await).contains("is a regtest account"));

    // SIGHASH_NONE|ANYONECANPAY on an input: refused, it would let anyone redirect the money.
    let mut none = built.psbt.clone();
    none.inputs[0].sighash_type = Some(PsbtSighashType::from(EcdsaSighashType::NonePlusAnyoneCanPay));
    assert!(refusal(f.signer.sign_btc_psbt(&sign_request(&w, &none)).await).contains("only SIGHASH_ALL"));
    // An input without witness_utxo: its amount (and so the fee) would be unknown.
    let mut no_utxo = built.psbt.clone();
    no_utxo.inputs[0].witness_utxo = None;
    assert!(refusal(f.signer.sign_btc_psbt(&sign_request(&w, &no_utxo)).await).contains("no witness_utxo"));
    // An input that is not ours (its derivation names our path, its script is someone else's).
    let mut foreign_input = built.psbt.clone();
    foreign_input.inputs[0].witness_utxo.as_mut().unwrap().script_pubkey = foreign_address(0x55).script_pubkey();
    let m = refusal(f.signer.sign_btc_psbt(&sign_request(&w, &foreign_input)).await);
    assert!(m.contains("not a P2WPKH address of the signer's own account"), "{m}");
    // A fee above the signer's cap (the change lowered by the cap).
    let mut expensive = built.psbt.clone();
    expensive.unsigned_tx.output[1].value -= Amount::from_sat(FEE_CAP_SAT);
    assert!(refusal(f.signer.sign_btc_psbt(&sign_request(&w, &expensive)).await).contains("above the signer's cap"));
    // Bytes that are not a PSBT.
    let mut garbage = sign_request(&w, &built.psbt);
    garbage.psbt.truncate(20);
    assert!(matches!(f.signer.sign_btc_psbt(&garbage).await, Err(SignerError::Malformed(_))));
    nothing_recorded(&f).await;

    // The pure check (what the offline tool runs) says the same as the signer, and passes the original.
    let own = |_: &TxOut, _: &bitcoin::psbt::Output| true;
    let checked = check_psbt_against_intent(&built.psbt, &w, NETWORK, &own, FEE_CAP_SAT).unwrap();
    assert_eq!((checked.payment_vout, checked.change_vout, checked.fee_sat), (0, Some(1), built.fee.to_sat()));
    assert!(check_psbt_against_intent(&built.psbt, &w, NETWORK, &own, built.fee.to_sat() - 1).is_err());
    f.signer.sign_btc_psbt(&sign_request(&w, &built.psbt)).await.unwrap();
}

#[tokio::test]
async fn k20_btc_signer_refuses_an_input_already_signed_for_another_payload() {
    let f = fixture().await;
    let only_first = &f.utxos[..1];
    let first = build(&f, only_first, &foreign_address(0x77), 100_000_000, 0);
    let w1 = intent("w1", &foreign_address(0x77), 100_000_000);
    f.signer.sign_btc_psbt(&sign_request(&w1, &first.psbt)).await.unwrap();

    // Another withdrawal spending the same coinbase output: another intent, refused by name.
    let second = build(&f, only_first, &foreign_address(0x78), 200_000_000, 1);
    let w2 = intent("w2", &foreign_address(0x78), 200_000_000);
    match f.signer.sign_btc_psbt(&sign_request(&w2, &second.psbt)).await {
        Err(SignerError::DoubleSign { key_id, chain, slot, reason }) => {
            assert_eq!((key_id.as_str(), chain.as_str()), (KEY, "btc:regtest"));
            assert_eq!(slot, only_first[0].outpoint.to_string());
            assert!(reason.contains("another intent"), "{reason}");
        }
        other => panic!("expected a double-sign refusal, got {other:?}"),
    }
    // The same intent with another payment (amount edited in PSBT and intent alike is another intent; here
    // the same intent, but the change index moved): not a fee bump, refused.
    let same_intent_other_tx = build(&f, only_first, &foreign_address(0x77), 100_000_000, 9);
    match f.signer.sign_btc_psbt(&sign_request(&w1, &same_intent_other_tx.psbt)).await {
        Err(SignerError::DoubleSign { reason, .. }) => assert!(reason.contains("not a fee bump"), "{reason}"),
        other => panic!("expected a double-sign refusal, got {other:?}"),
    }
    // An unrelated output still signs.
    let unrelated = build(&f, &f.utxos[1..], &foreign_address(0x78), 200_000_000, 1);
    f.signer.sign_btc_psbt(&sign_request(&w2, &unrelated.psbt)).await.unwrap();
    assert_eq!(f.journal.access_log().len(), 2, "refusals are not logged as key use");
}

#[tokio::test]
async fn c4_btc_rbf_bump_of_a_stuck_withdrawal_only_one_version_confirms() {
    let f = fixture().await;
    let destination = foreign_address(0x77);
    let amount_sat = 100_000_000;
    let w = intent("w1", &destination, amount_sat);
    let original = build(&f, &f.utxos, &destination, amount_sat, 0);
    let signed = f.signer.sign_btc_psbt(&sign_request(&w, &original.psbt)).await.unwrap();
    let original_txid = f.rpc.send_raw_transaction(&tx_of(&signed)).await.unwrap();
    assert_eq!(f.rpc.get_raw_mempool().await.unwrap(), vec![original_txid]);

    // Stuck: bump it (same inputs and payment, fee from the change), signed as a bump of the same intent.
    let bump = build_fee_bump(&f.account, &original.psbt, 20).unwrap();
    assert!(bump.fee > original.fee);
    let bumped = f.signer.sign_btc_psbt(&sign_request(&w, &bump.psbt)).await.unwrap();
    assert_ne!(bumped.txid, original_txid);
    assert_eq!(bumped.fee_sat, bump.fee.to_sat());
    let slot = SlotKey::btc(KEY, NETWORK, &original.psbt.unsigned_tx.input[0].previous_output);
    assert_eq!(f.journal.slot_entries(&slot).await.unwrap().len(), 2, "the bump is a second entry of the slot");

    // A "bump" that pays another destination, under the same intent: refused by the intent check; under a new
    // intent for that destination: refused as a double sign of the outpoint.
    let mut redirected = bump.psbt.clone();
    redirected.unsigned_tx.output[0].script_pubkey = foreign_address(0x66).script_pubkey();
    mismatch_field(f.signer.sign_btc_psbt(&sign_request(&w, &redirected)).await);
    let w_other = intent("w1", &foreign_address(0x66), amount_sat);
    assert!(matches!(
        f.signer.sign_btc_psbt(&sign_request(&w_other, &redirected)).await,
        Err(SignerError::DoubleSign { .. })
    ));
    // Going back to a lower fee than what was already signed is no bump either.
    let lower = build_fee_bump(&f.account, &original.psbt, 10).unwrap();
    match f.signer.sign_btc_psbt(&sign_request(&w, &lower.psbt)).await {
        Err(SignerError::DoubleSign { reason, .. }) => assert!(reason.contains("not a fee bump"), "{reason}"),
        other => panic!("expected a double-sign refusal, got {other:?}"),
    }

    let bump_txid = f.rpc.send_raw_transaction(&tx_of(&bumped)).await.unwrap();
    assert_eq!(f.rpc.get_raw_mempool().await.unwrap(), vec![bump_txid], "the replacement evicted the original");
    f.sim.mine(1, &foreign_address(0x01).script_pubkey()).unwrap();
    let tip = f.rpc.get_block_count().await.unwrap();
    let mined = block_has(&f.rpc, tip, bump_txid).await.expect("the bump confirms");
    assert_eq!(mined.output[0].script_pubkey, destination.script_pubkey());
    assert_eq!(mined.output[0].value, Amount::from_sat(amount_sat));
    for height in 0..=tip {
        assert!(block_has(&f.rpc, height, original_txid).await.is_none(), "the original is in no block");
    }
    // The original can no longer be broadcast: its input is spent.
    assert!(f.rpc.send_raw_transaction(&tx_of(&signed)).await.is_err());
}

#[tokio::test]
async fn k20_btc_journal_failure_means_no_signature() {
    let f = fixture_with(Arc::new(FailingJournal), Arc::new(MemoryJournal::new())).await;
    let destination = foreign_address(0x77);
    let built = build(&f, &f.utxos, &destination, 100_000_000, 0);
    let got = f.signer.sign_btc_psbt(&sign_request(&intent("w1", &destination, 100_000_000), &built.psbt)).await;
    assert!(matches!(got, Err(SignerError::JournalUnavailable(_))), "{got:?}");
}

#[tokio::test]
async fn k20_btc_sealed_signer_or_unknown_key_signs_nothing() {
    let f = fixture().await;
    let destination = foreign_address(0x77);
    let built = build(&f, &f.utxos, &destination, 100_000_000, 0);
    let w = intent("w1", &destination, 100_000_000);
    let mut unknown = sign_request(&w, &built.psbt);
    unknown.key_id = "btc-hot-2".into();
    assert!(matches!(f.signer.sign_btc_psbt(&unknown).await, Err(SignerError::UnknownKey(_))));
    f.signer.seal();
    assert!(matches!(f.signer.sign_btc_psbt(&sign_request(&w, &built.psbt)).await, Err(SignerError::Sealed)));
    nothing_recorded(&f).await;
}

/// The signer process's protocol carries the request and the answer unchanged (`{"op":"sign_btc",…}`).
#[tokio::test]
async fn k20_btc_sign_request_and_answer_round_trip_on_the_signer_wire() {
    let f = fixture().await;
    let destination = foreign_address(0x77);
    let built = build(&f, &f.utxos, &destination, 100_000_000, 0);
    let req = sign_request(&intent("w1", &destination, 100_000_000), &built.psbt);
    let line = serde_json::json!({"op": "sign_btc", "request": req}).to_string();
    match serde_json::from_str::<kinko_signer::server::Request>(&line).unwrap() {
        kinko_signer::server::Request::SignBtc { request } => assert_eq!(*request, req),
        other => panic!("parsed as {other:?}"),
    }
    assert!(line.contains("\"network\":\"regtest\""), "{line}");
    let signed = f.signer.sign_btc_psbt(&req).await.unwrap();
    let back: BtcSigned = serde_json::from_value(serde_json::to_value(&signed).unwrap()).unwrap();
    assert_eq!(back, signed);
}

/// The same anti-double-sign rules on the durable journal (SQLite, and PostgreSQL when the run has one): the
/// original and its bump recorded on the outpoint, another intent refused, and a second signer instance on
/// the same store sees the record.
#[tokio::test]
async fn k20_btc_outpoint_record_in_the_store_allows_only_a_fee_bump() {
    let f = fixture().await;
    let destination = foreign_address(0x77);
    let w1 = intent("w1", &destination, 100_000_000);
    let original = build(&f, &f.utxos[..1], &destination, 100_000_000, 0);
    let bump = build_fee_bump(&f.account, &original.psbt, 20).unwrap();
    let other = build(&f, &f.utxos[..1], &foreign_address(0x78), 100_000_000, 1);
    let w2 = intent("w2", &foreign_address(0x78), 100_000_000);
    for ts in kinko_store::testing::test_stores().await {
        let journal: Arc<dyn SignerJournal> = Arc::new(kinko_signer::StoreJournal(ts.store.clone()));
        let signer = LocalSigner::new(journal.clone());
        signer.set_quorum(auto_quorum(KEY, &["BTC"])).unwrap();
        signer.set_btc_account(KEY, &master(), NETWORK, FEE_CAP_SAT).unwrap();
        signer.sign_btc_psbt(&sign_request(&w1, &original.psbt)).await.unwrap();
        signer.sign_btc_psbt(&sign_request(&w1, &bump.psbt)).await.unwrap();
        let slot = SlotKey::btc(KEY, NETWORK, &f.utxos[0].outpoint);
        assert_eq!(journal.slot_entries(&slot).await.unwrap().len(), 2, "{}", ts.name);

        let second = LocalSigner::new(journal.clone());
        second.set_quorum(auto_quorum(KEY, &["BTC"])).unwrap();
        second.set_btc_account(KEY, &master(), NETWORK, FEE_CAP_SAT).unwrap();
        let got = second.sign_btc_psbt(&sign_request(&w2, &other.psbt)).await;
        assert!(matches!(got, Err(SignerError::DoubleSign { .. })), "{}: {got:?}", ts.name);
    }
}

/// A withdrawal spending two outpoints, one of them already signed for another intent: refused, and the free
/// outpoint is not recorded either (every slot is judged before any is written).
#[tokio::test]
async fn k20_btc_refusal_on_one_input_records_none_of_the_others() {
    let f = fixture().await;
    let taken = build(&f, &f.utxos[1..], &foreign_address(0x78), 100_000_000, 0);
    f.signer
        .sign_btc_psbt(&sign_request(&intent("w1", &foreign_address(0x78), 100_000_000), &taken.psbt))
        .await
        .unwrap();

    let amount_sat = 60 * 100_000_000;
    let both = build(&f, &f.utxos, &foreign_address(0x77), amount_sat, 1);
    assert_eq!(both.psbt.unsigned_tx.input.len(), 2);
    let got =
        f.signer.sign_btc_psbt(&sign_request(&intent("w2", &foreign_address(0x77), amount_sat), &both.psbt)).await;
    match got {
        Err(SignerError::DoubleSign { slot, .. }) => assert_eq!(slot, f.utxos[1].outpoint.to_string()),
        other => panic!("expected a double-sign refusal, got {other:?}"),
    }
    let free = SlotKey::btc(KEY, NETWORK, &f.utxos[0].outpoint);
    assert!(f.journal.slot_entries(&free).await.unwrap().is_empty(), "the free outpoint stays free");
    assert_eq!(f.journal.access_log().len(), 1);
}
