//! K14/K15 for Bitcoin: the 2-of-3 P2WSH cold wallet (`wsh(sortedmulti(2, ...))`, BIP48 cosigners) with one
//! cosigner online (kinko-signer's `btc_multisig::cosign`) and one offline (the real `kinko-offline` binary, run
//! without a network under `unshare -rn`), the third unused. The spend is finalized with miniscript, verified
//! with libbitcoinconsensus, broadcast with the real `BtcRpc` client to the regtest simulator and mined.
//! Tampering is refused at both ends; one signature is not enough; change to a foreign address is refused.

mod support;

use std::path::PathBuf;
use std::process::Output;

use bitcoin::bip32::Xpriv;
use bitcoin::secp256k1::{Secp256k1, SecretKey};
use bitcoin::{Address, Amount, CompressedPublicKey, Network, OutPoint, Psbt, TxOut, Witness};
use kinko_chain::btc::multisig::{
    Cosigner, MultisigFinalizeError, MultisigWallet, build_multisig_withdrawal, finalize_multisig,
};
use kinko_chain::btc::psbt::{BuiltPsbt, SpendableUtxo, WithdrawalRequest};
use kinko_chain::btc::regtest_sim::RegtestSimulator;
use kinko_chain::btc::rpc::{BtcRpc, RpcError};
use kinko_core::Amount as KAmount;
use kinko_core::intent::Intent;
use kinko_keys::btc::Keychain;
use kinko_offline::bundle::write_json_0600;
use kinko_offline::psbt_bundle::{
    SignedPsbtBundle, UNSIGNED_PSBT_KIND, UnsignedPsbtBundle, encode_psbt, read_signed_psbt, verify_signed_psbt,
};
use kinko_signer::approvals::LoggedChange;
use kinko_signer::btc::btc_chain_id;
use kinko_signer::btc_multisig::{CosignerKey, cosign};
use support::{M1, M2, approvals, now_ms, registry_log, run, run_offline, text};

const NET: Network = Network::Regtest;
const FEE_SAT_MAX: u64 = 100_000;
const FEE_RATE_SAT_PER_VB: u64 = 3;

fn master(seed: u8) -> Xpriv {
    kinko_keys::hd::master_from_seed(&[seed; 32]).unwrap()
}

/// The three cosigners: the offline keystore's (made by the real `keygen`, its cosigner printed by the real
/// `btc-cosigner`), the online cosigner's and an unused one; and the wallet pinned offline by `btc-wallet`.
struct Setup {
    dir: tempfile::TempDir,
    log: Vec<LoggedChange>,
    wallet: MultisigWallet,
    online: CosignerKey,
    cold: Cosigner,
}

impl Setup {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn path_str(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }
    fn keystore(&self) -> String {
        self.path_str("keys/keystore.json")
    }
    fn share_args(&self) -> Vec<String> {
        vec![
            "--share".into(),
            self.path_str("keys/share-alice.json"),
            "--share".into(),
            self.path_str("keys/share-bob.json"),
        ]
    }

    /// `kinko-offline sign-psbt` of `bundle` (written to NAME.json) offline, confirming with `confirm`.
    fn sign(&self, bundle: &UnsignedPsbtBundle, name: &str, confirm: &str) -> Output {
        write_json_0600(&self.path(&format!("{name}.json")), bundle).unwrap();
        let mut args: Vec<String> = vec!["sign-psbt".into(), "--keystore".into(), self.keystore()];
        args.extend(self.share_args());
        args.extend([
            "--bundle".into(),
            self.path_str(&format!("{name}.json")),
            "--out".into(),
            self.path_str(&format!("{name}.signed.json")),
        ]);
        run_offline(&args, confirm)
    }
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let log = registry_log(now_ms() - 60_000);
    let registry = dir.path().join("registry.json");
    std::fs::write(&registry, serde_json::to_vec(&log).unwrap()).unwrap();
    let keys = dir.path().join("keys");
    let o = run(
        &[
            "keygen",
            "--out",
            keys.to_str().unwrap(),
            "--key-id",
            "cold-1",
            "--custodian",
            "alice",
            "--custodian",
            "bob",
            "--custodian",
            "carol",
            "--threshold",
            "2",
            "--registry",
            registry.to_str().unwrap(),
            "--quorum",
            "2",
            "--chain-id",
            "31337",
        ],
        "",
    );
    assert!(o.status.success(), "keygen: {}", text(&o));
    let ks = keys.join("keystore.json").display().to_string();
    let cold_file = dir.path().join("cosigner-cold.json");
    let o = run(
        &[
            "btc-cosigner",
            "--keystore",
            &ks,
            "--share",
            keys.join("share-alice.json").to_str().unwrap(),
            "--share",
            keys.join("share-carol.json").to_str().unwrap(),
            "--network",
            "regtest",
            "--out",
            cold_file.to_str().unwrap(),
        ],
        "",
    );
    assert!(o.status.success(), "btc-cosigner: {}", text(&o));
    let cold: Cosigner = serde_json::from_slice(&std::fs::read(&cold_file).unwrap()).unwrap();
    assert_eq!(cold.path.to_string(), "48'/1'/0'/2'");
    assert!(text(&o).contains(&cold.xpub.to_string()), "{}", text(&o));

    let online = CosignerKey::from_master(&master(7), NET).unwrap();
    let unused = Cosigner::from_master(&master(9), NET).unwrap();
    let mut files = Vec::new();
    for (name, c) in [("online", &online.cosigner), ("unused", &unused)] {
        let p = dir.path().join(format!("cosigner-{name}.json"));
        std::fs::write(&p, serde_json::to_vec(c).unwrap()).unwrap();
        files.push(p.display().to_string());
    }
    let cosigners = vec![online.cosigner.clone(), cold.clone(), unused];
    let o = run(
        &[
            "btc-wallet",
            "--keystore",
            &ks,
            "--network",
            "regtest",
            "--threshold",
            "2",
            "--cosigner",
            &files[0],
            "--cosigner",
            cold_file.to_str().unwrap(),
            "--cosigner",
            &files[1],
            "--fee-sat-max",
            &FEE_SAT_MAX.to_string(),
        ],
        "",
    );
    assert!(o.status.success(), "btc-wallet: {}", text(&o));
    let wallet = MultisigWallet::new(2, cosigners, NET).unwrap();
    assert!(text(&o).contains(&wallet.address(Keychain::Receive, 0).unwrap().to_string()), "{}", text(&o));
    Setup { dir, log, wallet, online, cold }
}

fn p2wpkh(byte: u8) -> Address {
    let sk = SecretKey::from_slice(&[byte; 32]).unwrap();
    Address::p2wpkh(&CompressedPublicKey(sk.public_key(&Secp256k1::new())), NET)
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

fn bundle(s: &Setup, intent: &Intent, psbt: &Psbt) -> UnsignedPsbtBundle {
    UnsignedPsbtBundle {
        kind: UNSIGNED_PSBT_KIND.into(),
        key_id: "cold-1".into(),
        network: NET,
        psbt_base64: encode_psbt(psbt),
        approvals: approvals(intent, &[(M1, "m1"), (M2, "m2")]),
        intent: intent.clone(),
        registry_log: s.log.clone(),
        created_at_ms: now_ms(),
    }
}

/// Coinbase UTXOs at the wallet's receive addresses 0 and 1 (blocks 1 and 2), matured by 100 more blocks.
async fn funded(s: &Setup) -> (RegtestSimulator, BtcRpc, Vec<SpendableUtxo>) {
    let sim = RegtestSimulator::start().await.unwrap();
    let rpc = BtcRpc::new(&sim.url(), None).unwrap();
    let mut utxos = Vec::new();
    for index in 0..2u32 {
        let script = s.wallet.script_pubkey(Keychain::Receive, index).unwrap();
        sim.mine(1, &script).unwrap();
        let height = u64::from(index) + 1;
        let block = rpc.get_block(&rpc.get_block_hash(height).await.unwrap()).await.unwrap();
        assert_eq!(block.txs[0].output[0].script_pubkey, script);
        utxos.push(SpendableUtxo {
            outpoint: OutPoint { txid: block.txs[0].compute_txid(), vout: 0 },
            value: block.txs[0].output[0].value,
            keychain: Keychain::Receive,
            index,
            script_pubkey: script,
        });
    }
    sim.mine(100, &p2wpkh(1).script_pubkey()).unwrap();
    (sim, rpc, utxos)
}

fn build(s: &Setup, utxos: &[SpendableUtxo], to: &Address, amount: Amount, change_index: u32) -> BuiltPsbt {
    let req = WithdrawalRequest { destination: to, amount, fee_rate_sat_per_vb: FEE_RATE_SAT_PER_VB, change_index };
    build_multisig_withdrawal(&s.wallet, utxos, &req).unwrap()
}

#[tokio::test]
async fn k15_btc_2_of_3_multisig_spend_with_one_offline_signer() {
    let s = setup();
    let (sim, rpc, utxos) = funded(&s).await;
    let to = p2wpkh(2);
    let amount = Amount::from_sat(150_000_000);
    let built = build(&s, &utxos, &to, amount, 0);
    let change = built.change.expect("a 50 BTC coinbase pays 1.5 BTC with change");
    assert_eq!(built.psbt.inputs.len(), 1);
    let i = intent("btc-cold-1", &to, amount);
    let b = bundle(&s, &i, &built.psbt);

    // Online cosigner: checks and signs with its own key only.
    let mut online_psbt = built.psbt.clone();
    let done = cosign(&mut online_psbt, &s.wallet, &s.online, &i, FEE_SAT_MAX).unwrap();
    assert_eq!((done.signed_inputs, done.others_verified), (1, 0));
    assert_eq!(done.checked.change_vout, Some(1));
    assert_eq!(online_psbt.inputs[0].partial_sigs.len(), 1);

    // Offline cosigner: the real binary without a network, after showing the transaction in human terms.
    let o = s.sign(&b, "refill", "sign\n");
    assert!(o.status.success(), "offline sign-psbt: {}", text(&o));
    let shown = text(&o);
    for part in ["1.50000000 BTC", &to.to_string(), "regtest", "fee", "approved by", "m1, m2", "2-of-3"] {
        assert!(shown.contains(part), "the summary must show {part}: {shown}");
    }
    let fee_btc =
        format!("{:.8} BTC  ({} sat)", built.fee.display_in(bitcoin::Denomination::Bitcoin), built.fee.to_sat());
    assert!(fee_btc.starts_with("0.0000") && shown.contains(&fee_btc), "fee in BTC, 8 decimals ({fee_btc}): {shown}");

    // Online import: the server's own copy of the bundle verifies the signed file.
    let signed = read_signed_psbt(&s.path("refill.signed.json")).unwrap();
    assert_eq!(signed.cosigner_fingerprint, s.cold.master_fingerprint.to_string());
    let offline_psbt = verify_signed_psbt(&b, &signed, &s.wallet, FEE_SAT_MAX).unwrap();
    assert_eq!(offline_psbt.inputs[0].partial_sigs.len(), 1);

    // Combine, finalize with miniscript, verify with libbitcoinconsensus (inside finalize_multisig).
    let mut psbt = online_psbt.clone();
    psbt.combine(offline_psbt).unwrap();
    assert_eq!(psbt.inputs[0].partial_sigs.len(), 2);
    let prevouts = kinko_chain::btc::consensus::prevouts_of(&psbt).unwrap();
    let tx = finalize_multisig(&mut psbt).unwrap();
    kinko_chain::btc::consensus::verify_spend(&tx, &prevouts).unwrap();
    assert_eq!(tx.input[0].witness.len(), 4, "dummy, two signatures, witness script");
    assert!(tx.vsize() as u64 <= built.estimated_vsize_vb, "the fee estimate is an upper bound");

    // Broadcast with the real RPC client and mine.
    let txid = rpc.send_raw_transaction(&tx).await.unwrap();
    assert_eq!(rpc.get_raw_mempool().await.unwrap(), vec![txid]);
    sim.mine(1, &p2wpkh(1).script_pubkey()).unwrap();
    let tip = rpc.get_block(&rpc.get_block_hash(rpc.get_block_count().await.unwrap()).await.unwrap()).await.unwrap();
    let mined = tip.txs.iter().find(|t| t.compute_txid() == txid).expect("the spend is mined");
    assert_eq!(mined.output[0], TxOut { value: amount, script_pubkey: to.script_pubkey() });
    assert_eq!(
        mined.output[1],
        TxOut { value: change.value, script_pubkey: s.wallet.script_pubkey(Keychain::Change, 0).unwrap() }
    );
    assert_eq!(utxos[0].value - amount - change.value, built.fee);
}

#[tokio::test]
async fn k15_btc_multisig_one_signature_is_not_enough() {
    let s = setup();
    let (_sim, rpc, utxos) = funded(&s).await;
    let to = p2wpkh(2);
    let amount = Amount::from_sat(100_000_000);
    let built = build(&s, &utxos, &to, amount, 0);
    let i = intent("btc-cold-2", &to, amount);

    let mut one = built.psbt.clone();
    cosign(&mut one, &s.wallet, &s.online, &i, FEE_SAT_MAX).unwrap();
    let e = finalize_multisig(&mut one.clone()).expect_err("one of two signatures");
    assert!(matches!(e, MultisigFinalizeError::Finalize(_)), "{e}");

    // The same key signing twice does not make two signatures.
    let mut twice = one.clone();
    cosign(&mut twice, &s.wallet, &s.online, &i, FEE_SAT_MAX).unwrap();
    assert_eq!(twice.inputs[0].partial_sigs.len(), 1);
    assert!(finalize_multisig(&mut twice).is_err());

    // A transaction carrying only one of the two signatures is refused by the node too: take a properly
    // 2-of-3 signed spend and drop one signature from its witness.
    let mut both = built.psbt.clone();
    cosign(&mut both, &s.wallet, &s.online, &i, FEE_SAT_MAX).unwrap();
    let unused = CosignerKey::from_master(&master(9), NET).unwrap();
    cosign(&mut both, &s.wallet, &unused, &i, FEE_SAT_MAX).unwrap();
    let mut tx = finalize_multisig(&mut both).unwrap();
    let items: Vec<Vec<u8>> = tx.input[0].witness.iter().map(|w| w.to_vec()).collect();
    assert_eq!(items.len(), 4);
    tx.input[0].witness = Witness::from_slice(&[&items[0][..], &items[1][..], &items[3][..]]);
    match rpc.send_raw_transaction(&tx).await {
        Err(RpcError::Node { .. }) => {}
        other => panic!("the node must refuse a spend with one signature: {other:?}"),
    }
}

fn refused(o: &Output, s: &Setup, name: &str, field: &str) {
    assert!(!o.status.success(), "{name} must be refused: {}", text(o));
    assert!(text(o).contains(field), "{name}: the refusal must name {field}: {}", text(o));
    assert!(!s.path(&format!("{name}.signed.json")).exists(), "{name}: no signed file may be written");
}

#[tokio::test]
async fn k14_btc_psbt_bundle_with_edited_destination_is_refused_offline() {
    let s = setup();
    let (_sim, _rpc, utxos) = funded(&s).await;
    let to = p2wpkh(2);
    let attacker = p2wpkh(0xee);
    let amount = Amount::from_sat(100_000_000);
    let built = build(&s, &utxos, &to, amount, 0);
    let i = intent("btc-cold-3", &to, amount);
    let b = bundle(&s, &i, &built.psbt);

    // The intent's destination edited (the PSBT still pays the approved address).
    let mut edited = b.clone();
    edited.intent.destination = attacker.to_string();
    refused(&s.sign(&edited, "intent-dest", "sign\n"), &s, "intent-dest", "destination");

    // The PSBT's destination edited (the intent still names the approved address).
    let mut edited = b.clone();
    edited.psbt_base64 = encode_psbt(&build(&s, &utxos, &attacker, amount, 0).psbt);
    refused(&s.sign(&edited, "psbt-dest", "sign\n"), &s, "psbt-dest", "psbt_base64.");

    // Both edited consistently: the approvals are over the original intent.
    let mut edited =
        bundle(&s, &intent("btc-cold-3", &attacker, amount), &build(&s, &utxos, &attacker, amount, 0).psbt);
    edited.approvals = b.approvals.clone();
    refused(&s.sign(&edited, "both", "sign\n"), &s, "both", "approvals");

    // The PSBT carries another cosigner's signature that does not verify: refused, naming it.
    let mut forged = built.psbt.clone();
    cosign(&mut forged, &s.wallet, &s.online, &i, FEE_SAT_MAX).unwrap();
    let other = build(&s, &utxos, &to, amount, 1).psbt; // same inputs, another change index: another sighash
    let mut other_signed = other.clone();
    cosign(&mut other_signed, &s.wallet, &s.online, &intent("x", &to, amount), FEE_SAT_MAX).unwrap();
    forged.inputs[0].partial_sigs = other_signed.inputs[0].partial_sigs.clone();
    let mut edited = b.clone();
    edited.psbt_base64 = encode_psbt(&forged);
    refused(&s.sign(&edited, "forged-sig", "sign\n"), &s, "forged-sig", "partial_sigs");

    // Not confirmed with exactly "sign": nothing is signed; confirmed, the untouched bundle signs.
    let o = s.sign(&b, "unconfirmed", "yes\n");
    refused(&o, &s, "unconfirmed", "not confirmed");
    assert!(text(&o).contains("1.00000000 BTC") && text(&o).contains("0.00000"), "8 decimals: {}", text(&o));
    let o = s.sign(&b, "good", "sign\n");
    assert!(o.status.success(), "{}", text(&o));

    // K20 on the offline record: the same bundle again signs (the same transaction); another intent spending
    // the same coin is refused, and so is the same intent spending other coins (it would pay twice).
    let o = s.sign(&b, "again", "sign\n");
    assert!(o.status.success(), "{}", text(&o));
    let i2 = intent("btc-cold-3b", &to, amount);
    let o = s.sign(&bundle(&s, &i2, &built.psbt), "other-intent", "sign\n");
    refused(&o, &s, "other-intent", "double sign refused");
    // Every coin but the one the signed transaction spends (equal coinbase values tie on the outpoint, so which
    // coin that is depends on the txids).
    let spent = built.spent_outpoints();
    let others: Vec<_> = utxos.iter().filter(|u| !spent.contains(&u.outpoint)).cloned().collect();
    let other_coin = build(&s, &others, &to, amount, 0).psbt;
    assert!(other_coin.unsigned_tx.input.iter().all(|i| !spent.contains(&i.previous_output)));
    let o = s.sign(&bundle(&s, &i, &other_coin), "other-coin", "sign\n");
    refused(&o, &s, "other-coin", "double sign refused");

    // Online: an edited signed file is refused on import, naming the field.
    let signed = read_signed_psbt(&s.path("good.signed.json")).unwrap();
    verify_signed_psbt(&b, &signed, &s.wallet, FEE_SAT_MAX).unwrap();
    let refused_online = |e: SignedPsbtBundle, field: &str| {
        let err = verify_signed_psbt(&b, &e, &s.wallet, FEE_SAT_MAX).expect_err(field);
        assert!(err.to_string().contains(field), "{field}: {err}");
    };
    let mut psbt = kinko_offline::psbt_bundle::decode_psbt("t", &signed.psbt_base64).unwrap();
    psbt.unsigned_tx.output[0].script_pubkey = attacker.script_pubkey();
    refused_online(SignedPsbtBundle { psbt_base64: encode_psbt(&psbt), ..signed.clone() }, "psbt_base64");
    let mut psbt = kinko_offline::psbt_bundle::decode_psbt("t", &signed.psbt_base64).unwrap();
    psbt.inputs[0].partial_sigs.clear();
    refused_online(SignedPsbtBundle { psbt_base64: encode_psbt(&psbt), ..signed.clone() }, "partial_sigs");
    let mut psbt = kinko_offline::psbt_bundle::decode_psbt("t", &signed.psbt_base64).unwrap();
    psbt.inputs[0].partial_sigs = other_signed.inputs[0].partial_sigs.clone();
    refused_online(SignedPsbtBundle { psbt_base64: encode_psbt(&psbt), ..signed.clone() }, "psbt_base64");
    let mut e = signed.clone();
    e.unsigned_sha256 = "00".repeat(32);
    refused_online(e, "unsigned_sha256");
    let mut e = signed.clone();
    e.intent_hash = "00".repeat(32);
    refused_online(e, "intent_hash");
}

#[tokio::test]
async fn k15_btc_cosigner_refuses_change_to_a_foreign_address() {
    let s = setup();
    let (_sim, _rpc, utxos) = funded(&s).await;
    let to = p2wpkh(2);
    let amount = Amount::from_sat(100_000_000);
    let built = build(&s, &utxos, &to, amount, 0);
    let i = intent("btc-cold-4", &to, amount);
    let vout = built.change.unwrap().vout;

    // The change re-pointed to an attacker's wallet (their key in place of the unused cosigner's), with the
    // derivation metadata of that wallet: the script is not ours at /1/0.
    let mut foreign_cosigners = s.wallet.cosigners.clone();
    foreign_cosigners[2] = Cosigner::from_master(&master(0xee), NET).unwrap();
    let foreign = MultisigWallet::new(2, foreign_cosigners, NET).unwrap();
    let mut psbt = built.psbt.clone();
    psbt.unsigned_tx.output[vout].script_pubkey = foreign.script_pubkey(Keychain::Change, 0).unwrap();
    psbt.outputs[vout].bip32_derivation = foreign.key_sources(Keychain::Change, 0).unwrap();
    let before = psbt.clone();
    let e = cosign(&mut psbt, &s.wallet, &s.online, &i, FEE_SAT_MAX).expect_err("foreign change");
    assert!(e.to_string().contains("output destination"), "{e}");
    assert_eq!(psbt, before, "a refused PSBT is left unsigned");

    // Our own change derivation claimed for a script that is not ours there (a P2WPKH of the attacker).
    let mut psbt = built.psbt.clone();
    psbt.unsigned_tx.output[vout].script_pubkey = p2wpkh(0xee).script_pubkey();
    assert!(cosign(&mut psbt, &s.wallet, &s.online, &i, FEE_SAT_MAX).is_err());

    // Our script, but claimed on the receive chain: change goes only to /1/i.
    let mut psbt = built.psbt.clone();
    psbt.unsigned_tx.output[vout].script_pubkey = s.wallet.script_pubkey(Keychain::Receive, 0).unwrap();
    psbt.outputs[vout].bip32_derivation = s.wallet.key_sources(Keychain::Receive, 0).unwrap();
    assert!(cosign(&mut psbt, &s.wallet, &s.online, &i, FEE_SAT_MAX).is_err());

    // An input whose witness script is not the wallet's at its index is refused, naming the field.
    let mut psbt = built.psbt.clone();
    psbt.inputs[0].witness_script = Some(s.wallet.witness_script(Keychain::Receive, 5).unwrap());
    let e = cosign(&mut psbt, &s.wallet, &s.online, &i, FEE_SAT_MAX).expect_err("foreign witness script");
    assert!(e.to_string().contains("inputs[0].witness_script"), "{e}");

    // The offline side refuses the foreign change too, before asking for confirmation.
    let mut psbt = built.psbt.clone();
    psbt.unsigned_tx.output[vout].script_pubkey = foreign.script_pubkey(Keychain::Change, 0).unwrap();
    psbt.outputs[vout].bip32_derivation = foreign.key_sources(Keychain::Change, 0).unwrap();
    let mut edited = bundle(&s, &i, &psbt);
    edited.psbt_base64 = encode_psbt(&psbt);
    refused(&s.sign(&edited, "foreign-change", "sign\n"), &s, "foreign-change", "output destination");

    // And the untouched PSBT is signed (the refusals were about the edits).
    let mut psbt = built.psbt.clone();
    cosign(&mut psbt, &s.wallet, &s.online, &i, FEE_SAT_MAX).unwrap();
    assert_eq!(psbt.inputs[0].partial_sigs.len(), 1);
}
