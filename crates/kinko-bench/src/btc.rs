//! `btc`: Bitcoin (issue 9) in two tables.
//!
//! - Address derivations/s: the custodian's BIP84 deposit addresses (`kinko_keys::btc::receive_address`,
//!   `xpub/0/i` → P2WPKH → bech32 text) beside raw BIP32 public derivation of the same path (rust-bitcoin
//!   `derive_pub`, no hash160, no bech32) and one step from a cached `xpub/0`.
//! - PSBT signatures/s through the full signer path (`LocalSigner::sign_btc_psbt`: BIP174 decode, checks
//!   against the intent, input and change re-derivation, approvals, BIP143 sighash and ECDSA, BIP174
//!   finalization, libbitcoinconsensus verification, the anti-double-sign record of the spent outpoint and the
//!   key access log) with the in-memory journal and the durable `StoreJournal` on SQLite, beside raw
//!   libsecp256k1 ECDSA signing of the same transactions' precomputed BIP143 sighashes.
//!
//! The PSBTs spend made-up outpoints of the account's receive addresses (the signer checks scripts and
//! derivations, not that an output exists on a chain: that is the node's job), one new outpoint per PSBT,
//! so each signature is a new journal slot, as for the EVM signer benchmark's new nonces.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use bitcoin::bip32::{ChildNumber, Xpriv, Xpub};
use bitcoin::hashes::Hash;
use bitcoin::secp256k1::{Message, Secp256k1};
use bitcoin::sighash::{EcdsaSighashType, SighashCache};
use bitcoin::{Address, Amount, Network, OutPoint, Txid};
use clap::Args;
use kinko_chain::btc::psbt::{SpendableUtxo, WithdrawalRequest, build_withdrawal};
use kinko_core::intent::Intent;
use kinko_keys::btc::{Bip84Account, Keychain};
use kinko_signer::btc::{BtcSignRequest, btc_chain_id};
use kinko_signer::testing::MemoryJournal;
use kinko_signer::{LocalSigner, Signer, SignerJournal, SlotKey, StoreJournal};
use kinko_store::Store;
use sha2::{Digest, Sha256};

use crate::{Row, TEST_MNEMONIC, print_table, time};

#[derive(Args)]
pub struct BtcArgs {
    /// Addresses derived per derivation measurement.
    #[arg(long, default_value_t = 20_000)]
    count: u32,
    /// PSBTs signed per signing measurement (each spending a new outpoint).
    #[arg(long, default_value_t = 1_000)]
    signatures: u32,
}

const KEY_ID: &str = "bench-btc-1";
const NETWORK: Network = Network::Regtest;
/// Upper bound on `--signatures`: every PSBT of a measurement is built and kept in memory first.
const SIGNATURES_MAX: u32 = 200_000;
/// The signer's fee cap in the benchmark: far above what the PSBTs pay.
const FEE_CAP_SAT: u64 = 1_000_000;
/// Each made-up UTXO's value and the amount each withdrawal pays (with change).
const UTXO_SAT: u64 = 100_000_000;
const PAY_SAT: u64 = 10_000_000;

const RAW_DERIVE: &str = "bip32 derive_pub xpub/0/i (no hash160, no bech32)";
const RAW_SIGN: &str = "raw libsecp256k1 sign_ecdsa (precomputed BIP143 sighashes)";

pub fn run(args: BtcArgs) -> Result<()> {
    let master = bench_master()?;
    derive(&master, args.count.max(1))?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(sign(&master, args.signatures.clamp(1, SIGNATURES_MAX)))
}

/// The master key of the well-known test mnemonic: the benchmark needs a key, not a secret.
fn bench_master() -> Result<Xpriv> {
    let seed = kinko_keys::seed::MasterSeed::from_mnemonic(TEST_MNEMONIC)?;
    Ok(seed.to_bip32_master()?)
}

fn derive(master: &Xpriv, count: u32) -> Result<()> {
    let xpub = kinko_keys::btc::account_xpub(master, Network::Bitcoin)?;
    let secp = Secp256k1::verification_only();
    let kinko = time(count, |i| {
        let address = kinko_keys::btc::receive_address(&xpub, Network::Bitcoin, i).expect("non-hardened index");
        black_box(address.to_string());
    });
    let bip32 = time(count, |i| {
        let path = [ChildNumber::Normal { index: 0 }, ChildNumber::Normal { index: i }];
        black_box(xpub.derive_pub(&secp, &path).expect("non-hardened index"));
    });
    let receive = xpub.derive_pub(&secp, &[ChildNumber::Normal { index: 0 }])?;
    let one_step = time(count, |i| {
        black_box(Xpub::ckd_pub(&receive, &secp, ChildNumber::Normal { index: i }).expect("non-hardened index"));
    });
    let rows = vec![
        Row {
            name: "kinko btc receive_address xpub/0/i (P2WPKH, bech32 text)".into(),
            ops: count.into(),
            elapsed: kinko,
        },
        Row { name: RAW_DERIVE.into(), ops: count.into(), elapsed: bip32 },
        Row { name: "bip32 ckd_pub from cached xpub/0 (one step)".into(), ops: count.into(), elapsed: one_step },
    ];
    print_table("Bitcoin deposit-address derivations (BIP84)", "per second", &rows, RAW_DERIVE);
    Ok(())
}

/// `count` withdrawal requests, each spending its own made-up outpoint of a receive address, with change.
fn requests(account: &Bip84Account, count: u32) -> Result<Vec<BtcSignRequest>> {
    let destination = Address::p2wpkh(&account.public_key(Keychain::Receive, 1_000_000)?, NETWORK);
    (0..count)
        .map(|i| {
            let index = i % 1_000;
            let txid = Txid::from_byte_array(Sha256::digest(i.to_be_bytes()).into());
            let utxo = SpendableUtxo {
                outpoint: OutPoint { txid, vout: 0 },
                value: Amount::from_sat(UTXO_SAT),
                keychain: Keychain::Receive,
                index,
                script_pubkey: account.script_pubkey(Keychain::Receive, index)?,
            };
            let request = WithdrawalRequest {
                destination: &destination,
                amount: Amount::from_sat(PAY_SAT),
                fee_rate_sat_per_vb: 5,
                change_index: i,
            };
            let built = build_withdrawal(account, &[utxo], &request)?;
            Ok(BtcSignRequest {
                key_id: KEY_ID.into(),
                network: NETWORK,
                psbt: built.psbt.serialize(),
                intent: Intent {
                    id: format!("bench-btc-w{i}"),
                    asset: "BTC".parse()?,
                    chain_id: btc_chain_id(NETWORK),
                    amount: kinko_core::Amount::from_base_units(u128::from(PAY_SAT)),
                    destination: destination.to_string(),
                    source_wallet: "bench-btc".into(),
                    customer_id: "bench".into(),
                    reason: "benchmark".into(),
                },
                approvals: vec![],
                actor: "kinko-bench".into(),
                terminal: "kinko-bench".into(),
            })
        })
        .collect()
}

async fn full_path(name: &str, journal: Arc<dyn SignerJournal>, master: &Xpriv, count: u32) -> Result<Row> {
    let signer = LocalSigner::new(journal);
    let account = signer.set_btc_account(KEY_ID, master, NETWORK, FEE_CAP_SAT)?;
    signer.set_quorum(kinko_signer::testing::auto_quorum(KEY_ID, &["BTC"]))?;
    let reqs = requests(&account, count)?;
    let start = Instant::now();
    for (i, req) in reqs.iter().enumerate() {
        black_box(signer.sign_btc_psbt(req).await.with_context(|| format!("{name}: psbt {i}"))?);
    }
    let row = Row { name: name.to_string(), ops: reqs.len() as u64, elapsed: start.elapsed() };
    eprintln!("  {name}: {} signatures, {:.1}/s", row.ops, row.per_second());
    Ok(row)
}

async fn sign(master: &Xpriv, count: u32) -> Result<()> {
    // The baseline: the same transactions' BIP143 sighashes, computed beforehand, signed with the same
    // library (libsecp256k1 through rust-bitcoin) and the same keys the signer derives.
    let secp = Secp256k1::new();
    let account = Bip84Account::from_master(master, NETWORK)?;
    let account_xpriv = master.derive_priv(&secp, &account.path)?;
    let reqs = requests(&account, count)?;
    let mut work = Vec::with_capacity(reqs.len());
    for (i, req) in reqs.iter().enumerate() {
        let psbt = bitcoin::Psbt::deserialize(&req.psbt)?;
        let utxo = psbt.inputs[0].witness_utxo.clone().context("built PSBT without witness_utxo")?;
        let sighash = SighashCache::new(&psbt.unsigned_tx).p2wpkh_signature_hash(
            0,
            &utxo.script_pubkey,
            utxo.value,
            EcdsaSighashType::All,
        )?;
        let path = [ChildNumber::Normal { index: 0 }, ChildNumber::Normal { index: i as u32 % 1_000 }];
        let key = account_xpriv.derive_priv(&secp, &path)?.private_key;
        work.push((Message::from_digest(sighash.to_byte_array()), key));
    }
    let start = Instant::now();
    for (msg, key) in &work {
        black_box(secp.sign_ecdsa(msg, key));
    }
    let mut rows = vec![Row { name: RAW_SIGN.into(), ops: count.into(), elapsed: start.elapsed() }];

    rows.push(
        full_path("kinko sign_btc_psbt + MemoryJournal (not durable)", Arc::new(MemoryJournal::new()), master, count)
            .await?,
    );
    let dir = tempfile::tempdir()?;
    let store = Store::connect(&format!("sqlite://{}", dir.path().join("signer-btc.db").display())).await?;
    rows.push(
        full_path(
            "kinko sign_btc_psbt + StoreJournal, SQLite (sync=FULL)",
            Arc::new(StoreJournal(store.clone())),
            master,
            count,
        )
        .await?,
    );
    // A silent no-op journal would make the durable row meaningless: check the last outpoint was recorded.
    let last = bitcoin::Psbt::deserialize(&reqs[reqs.len() - 1].psbt)?.unsigned_tx.input[0].previous_output;
    let recorded = StoreJournal(store.clone()).slot_entries(&SlotKey::btc(KEY_ID, NETWORK, &last)).await?;
    store.close().await;
    ensure!(recorded.len() == 1, "StoreJournal holds {} payloads for the last outpoint, expected 1", recorded.len());
    print_table(
        "Bitcoin withdrawal PSBT signatures (1 P2WPKH input, payment + change; each a new outpoint)",
        "per second",
        &rows,
        RAW_SIGN,
    );
    Ok(())
}
