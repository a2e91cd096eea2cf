//! The signer process derives its Bitcoin keys from the master seed when it unseals (`[signer.bitcoin]`,
//! `SignerService::with_bitcoin`): the BIP84 hot account and the multisig cosigner key, from the same stored
//! master seed the EVM keys come from. Signed over the signer's socket with `RemoteSigner`, verified with
//! libbitcoinconsensus, broadcast with the real `BtcRpc` client to the regtest simulator and mined; sealed,
//! nothing signs.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bitcoin::bip32::Xpriv;
use bitcoin::secp256k1::{Secp256k1, SecretKey};
use bitcoin::{Address, Amount, CompressedPublicKey, Network, OutPoint, Psbt};
use kinko_chain::btc::multisig::{Cosigner, MultisigWallet};
use kinko_chain::btc::psbt::{SpendableUtxo, WithdrawalRequest, build_withdrawal};
use kinko_chain::btc::regtest_sim::RegtestSimulator;
use kinko_chain::btc::rpc::BtcRpc;
use kinko_core::Amount as KAmount;
use kinko_core::intent::Intent;
use kinko_keys::btc::{Bip84Account, Keychain};
use kinko_keys::kek::Kek;
use kinko_keys::shares::{self, MasterKey, RawShare, SealConfig};
use kinko_signer::approvals::{QuorumBand, SigningQuorum, SigningQuorumConfig};
use kinko_signer::btc::{BtcSignRequest, btc_chain_id};
use kinko_signer::remote::RemoteSigner;
use kinko_signer::seal::{BtcCosignerConfig, BtcKeysConfig, SealError};
use kinko_signer::server::{SignerService, bind, serve};
use kinko_signer::{Signer, SignerError};
use kinko_store::Store;
use kinko_store::seal_records::{KEK_ACTIVE, KekRecord};
use kinko_store::signer_records::KeyRecord;

const NET: Network = Network::Regtest;
const HOT: &str = "btc-hot";
const COSIGNER: &str = "btc-cold-cosigner";
const FEE_CAP_SAT: u64 = 100_000;
/// A valid BIP39 phrase: the stored master seed of this test's custodian.
const MNEMONIC: &str = "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about";
const KEK_ID: &str = "kek-1";
/// Blocks a coinbase output must wait before it is spent.
const COINBASE_MATURITY: usize = 100;

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

fn seed_master() -> Xpriv {
    kinko_keys::seed::MasterSeed::from_mnemonic(MNEMONIC).unwrap().to_bip32_master().unwrap()
}

fn p2wpkh(byte: u8) -> Address {
    let sk = SecretKey::from_slice(&[byte; 32]).unwrap();
    Address::p2wpkh(&CompressedPublicKey(sk.public_key(&Secp256k1::new())), NET)
}

/// What `kinko init` stores, with a known seed: the seal configuration (1-of-1), the active KEK wrapped by
/// the master key, and the master seed's BIP39 words wrapped by the KEK.
async fn initialised_store(store: &Store) -> RawShare {
    let mk = MasterKey::generate();
    let raw = shares::split(&mk, 1, &["c0".to_string()]).unwrap();
    let config = SealConfig::new(&mk, 1, &raw);
    store.init_seal_config_json(&serde_json::to_string(&config).unwrap()).await.unwrap();
    let kek = Kek::generate();
    let now = now_ms();
    store
        .insert_kek(&KekRecord {
            id: KEK_ID.into(),
            wrapped_by_master_hex: kinko_signer::seal::wrap_kek(&mk, KEK_ID, &kek).unwrap(),
            state: KEK_ACTIVE.into(),
            fingerprint: kek.fingerprint(),
            created_at_ms: now,
            updated_at_ms: now,
        })
        .await
        .unwrap();
    let wrapped = kek.wrap("master-seed", "master_seed", MNEMONIC.as_bytes()).unwrap();
    let seed = KeyRecord {
        id: "master-seed".into(),
        purpose: "master_seed".into(),
        chain: "eip155:1".into(),
        address: String::new(),
        wrapped_hex: hex::encode(wrapped),
        state: "active".into(),
        created_at_ms: now,
    };
    store.insert_key_wrapped_by(&seed, KEK_ID).await.unwrap();
    raw[0].clone()
}

fn quorum() -> SigningQuorum {
    let configs: Vec<SigningQuorumConfig> = [HOT, COSIGNER]
        .into_iter()
        .map(|key_id| SigningQuorumConfig {
            key_id: key_id.into(),
            asset: "BTC".into(),
            class: kinko_core::policy::PolicyClass::HotSmall,
            auto_max: Some(KAmount::from_base_units(u128::MAX)),
            bands: vec![QuorumBand { from: KAmount::from_base_units(0), approvals: 1 }],
        })
        .collect();
    SigningQuorum::from_configs(&configs).unwrap()
}

/// The pinned 2-of-3 wallet: the seed's own BIP48 cosigner and two others.
fn wallet_with(own: bool) -> MultisigWallet {
    let mut cosigners: Vec<Cosigner> = [0x22u8, 0x33]
        .map(|s| Cosigner::from_master(&kinko_keys::hd::master_from_seed(&[s; 32]).unwrap(), NET).unwrap())
        .to_vec();
    let third = if own { seed_master() } else { kinko_keys::hd::master_from_seed(&[0x44; 32]).unwrap() };
    cosigners.push(Cosigner::from_master(&third, NET).unwrap());
    MultisigWallet::new(2, cosigners, NET).unwrap()
}

fn keys_config(own_cosigner: bool) -> BtcKeysConfig {
    BtcKeysConfig {
        network: NET,
        key_id: HOT.into(),
        fee_cap_sat: FEE_CAP_SAT,
        cosigner: Some(BtcCosignerConfig {
            key_id: COSIGNER.into(),
            wallet: wallet_with(own_cosigner),
            fee_cap_sat: FEE_CAP_SAT,
        }),
    }
}

fn intent(to: &Address, amount: Amount) -> Intent {
    Intent {
        id: "w1".into(),
        asset: "BTC".parse().unwrap(),
        chain_id: btc_chain_id(NET),
        amount: KAmount::from_base_units(u128::from(amount.to_sat())),
        destination: to.to_string(),
        source_wallet: "btc-hot".into(),
        customer_id: "c1".into(),
        reason: "customer withdrawal".into(),
    }
}

fn request(key_id: &str, intent: &Intent, psbt: &Psbt) -> BtcSignRequest {
    BtcSignRequest {
        key_id: key_id.into(),
        network: NET,
        psbt: psbt.serialize(),
        intent: intent.clone(),
        approvals: vec![],
        actor: "pipeline".into(),
        terminal: "test-host".into(),
    }
}

#[tokio::test]
async fn k20_btc_signer_service_derives_bitcoin_keys_at_unseal_and_signs_over_the_socket() {
    let ts = kinko_store::testing::sqlite_store().await;
    let share = initialised_store(&ts.store).await;
    let service = Arc::new(
        SignerService::new(ts.store.clone(), vec![])
            .await
            .unwrap()
            .with_quorum(quorum())
            .with_bitcoin(Some(keys_config(true))),
    );
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("signer.sock");
    let listener = bind(&socket).unwrap();
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(serve(service.clone(), listener, socket.clone(), stop_rx));
    let remote = RemoteSigner::new(&socket);

    // The account the signer will derive from the stored seed: fund its receive address 0/0.
    let account = Bip84Account::from_master(&seed_master(), NET).unwrap();
    let sim = RegtestSimulator::start().await.unwrap();
    let rpc = BtcRpc::new(&sim.url(), None).unwrap();
    let script = account.script_pubkey(Keychain::Receive, 0).unwrap();
    let hash = sim.mine(1, &script).unwrap()[0];
    let coinbase = rpc.get_block(&hash).await.unwrap().txs[0].clone();
    let utxo = SpendableUtxo {
        outpoint: OutPoint { txid: coinbase.compute_txid(), vout: 0 },
        value: coinbase.output[0].value,
        keychain: Keychain::Receive,
        index: 0,
        script_pubkey: script,
    };
    sim.mine(COINBASE_MATURITY, &p2wpkh(1).script_pubkey()).unwrap();
    let to = p2wpkh(2);
    let amount = Amount::from_sat(100_000_000);
    let built = build_withdrawal(
        &account,
        &[utxo],
        &WithdrawalRequest { destination: &to, amount, fee_rate_sat_per_vb: 2, change_index: 0 },
    )
    .unwrap();
    let w = intent(&to, amount);

    // Sealed: refused over the socket, nothing recorded.
    let got = remote.sign_btc_psbt(&request(HOT, &w, &built.psbt)).await;
    assert!(matches!(got, Err(SignerError::Sealed)), "{got:?}");

    // Unsealed: the keys are derived from the master seed and registered in the key store (the key
    // lifecycle gate governs them like any key).
    assert!(!service.unseal(share.clone()).await.unwrap().sealed);
    let hot = ts.store.key(HOT).await.unwrap().expect("the hot account's record");
    assert_eq!(
        (hot.purpose.as_str(), hot.chain.as_str(), hot.state.as_str(), hot.wrapped_hex.as_str()),
        ("btc_account", "btc:regtest", "active", "")
    );
    assert_eq!(hot.address, account.xpub.to_string());
    let cosigner = ts.store.key(COSIGNER).await.unwrap().expect("the cosigner's record");
    assert_eq!(cosigner.address, Cosigner::from_master(&seed_master(), NET).unwrap().xpub.to_string());

    let signed = remote.sign_btc_psbt(&request(HOT, &w, &built.psbt)).await.unwrap();
    let tx: bitcoin::Transaction = bitcoin::consensus::encode::deserialize(&signed.raw_tx).unwrap();
    let finalized = Psbt::deserialize(&signed.psbt).unwrap();
    let prevouts = kinko_chain::btc::consensus::prevouts_of(&finalized).unwrap();
    kinko_chain::btc::consensus::verify_spend(&tx, &prevouts).unwrap();
    assert_eq!(signed.txid, built.psbt.unsigned_tx.compute_txid());
    let log = ts.store.key_access_log(HOT, 10).await.unwrap();
    assert_eq!(log.len(), 1, "one key access log entry in the store");
    let txid = rpc.send_raw_transaction(&tx).await.unwrap();
    sim.mine(1, &p2wpkh(1).script_pubkey()).unwrap();
    let tip = rpc.get_block(&rpc.get_block_hash(rpc.get_block_count().await.unwrap()).await.unwrap()).await.unwrap();
    assert!(tip.txs.iter().any(|t| t.compute_txid() == txid), "the withdrawal is mined");

    // The cosigner op reaches the derived cosigner key over the socket: a PSBT of another wallet is refused
    // by its checks (the key is there and checking), not as an unknown key.
    let got = remote.cosign_btc_multisig_psbt(&request(COSIGNER, &w, &built.psbt)).await;
    assert!(matches!(got, Err(SignerError::Refused(_))), "{got:?}");

    // Sealed again: refused, the keys are gone.
    assert!(service.seal().await.sealed);
    let got = remote.sign_btc_psbt(&request(HOT, &w, &built.psbt)).await;
    assert!(matches!(got, Err(SignerError::Sealed)), "{got:?}");
    let _ = stop.send(true);
    let _ = server.await;

    // A pinned wallet this seed is no cosigner of: the unseal fails naming the key, and the signer stays
    // sealed.
    let wrong = SignerService::new(ts.store.clone(), vec![])
        .await
        .unwrap()
        .with_quorum(quorum())
        .with_bitcoin(Some(keys_config(false)));
    match wrong.unseal(share).await {
        Err(SealError::Signer(SignerError::Refused(m))) => assert!(m.contains(COSIGNER), "{m}"),
        other => panic!("expected a refusal naming the cosigner key, got {other:?}"),
    }
    assert!(wrong.status().await.sealed);
}
