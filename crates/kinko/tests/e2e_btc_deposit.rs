//! Bitcoin deposits through a running kinko (issue 9; M5, M6, M9, C2): `kinko serve` (in process, on SQLite
//! and on PostgreSQL when the run has it, with anvil for its Ethereum side) configured with `[bitcoin]` at the
//! in-process regtest simulator (the one allowed Bitcoin fake; kinko talks to it through the production
//! `BtcRpc` client with basic auth, the password read from a 0600 file). A customer registered over the API
//! asks for a BTC deposit address, the test pays it from a matured coinbase (signed here with rust-bitcoin),
//! mines, and polls the customer's balances over the API: pending at 1 and 2 confirmations, credited at the
//! configured 3. BTC withdrawals and internal transfers are refused with `asset-not-withdrawable`.

mod support;

use std::time::Duration;

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
use kinko_keys::btc::{Bip84Account, Keychain};
use kinko_server::config::{BitcoinConfig, ConfigError};
use serde_json::{Value, json};
use support::{Customer, Harness, TRANSACTION_PASSWORD, wait_for};

const TIMEOUT: Duration = Duration::from_secs(60);
const RPC_USER: &str = "kinko";
const RPC_PASSWORD: &str = "regtest-rpc-password";
const DEPOSIT_SAT: u64 = 123_456_789;
const FEE_SAT: u64 = 10_000;
const COINBASE_SAT: u64 = 50 * 100_000_000;
/// Blocks mined before kinko starts: the coinbase of block 1 is mature (100 confirmations) at 101.
const PREMINE_BLOCKS: usize = 101;
/// Receive indexes searched for the address kinko handed out (a fresh store starts at 0).
const INDEX_SEARCH_MAX: u32 = 100;

/// The custodian's master key (signer side; the test derives the exported account from it).
fn master() -> Xpriv {
    Xpriv::new_master(Network::Regtest, &[7u8; 32]).unwrap()
}

fn account() -> Bip84Account {
    Bip84Account::from_master(&master(), Network::Regtest).unwrap()
}

/// `[bitcoin]` at the simulator, the password in a mode-0600 file under `dir`.
fn bitcoin_config(dir: &std::path::Path, rpc_url: String) -> BitcoinConfig {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = dir.join("bitcoin-rpc-password");
    let mut f = std::fs::OpenOptions::new().create(true).write(true).truncate(true).mode(0o600).open(&path).unwrap();
    writeln!(f, "{RPC_PASSWORD}").unwrap();
    let a = account();
    BitcoinConfig {
        network: "regtest".into(),
        rpc_url,
        rpc_user: Some(RPC_USER.into()),
        rpc_password_file: Some(path),
        account_xpub: a.xpub.to_string(),
        master_fingerprint: a.master_fingerprint.to_string(),
        confirmations: None,
        poll_interval_ms: 100,
    }
}

/// A plain single-key P2WPKH wallet outside kinko: the miner, whose matured coinbases pay the deposits.
struct Miner {
    sk: SecretKey,
    pk: CompressedPublicKey,
    script: ScriptBuf,
}

fn miner() -> Miner {
    let secp = Secp256k1::new();
    let sk = SecretKey::from_slice(&[1u8; 32]).unwrap();
    let pk = CompressedPublicKey(sk.public_key(&secp));
    let script = Address::p2wpkh(&pk, Network::Regtest).script_pubkey();
    Miner { sk, pk, script }
}

/// Pays `value_sat` to `to` from the coinbase of block `coinbase_height` (change back to the miner), signed per
/// BIP143, and broadcasts it (copied from kinko-server's tests/btc_deposits.rs).
async fn pay(rpc: &BtcRpc, miner: &Miner, coinbase_height: u64, to: &ScriptBuf, value_sat: u64) -> Transaction {
    let block = rpc.get_block(&rpc.get_block_hash(coinbase_height).await.unwrap()).await.unwrap();
    let coinbase = &block.txs[0];
    assert_eq!(coinbase.output[0].value.to_sat(), COINBASE_SAT);
    let mut tx = Transaction {
        version: Version::TWO,
        lock_time: LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint { txid: coinbase.compute_txid(), vout: 0 },
            script_sig: ScriptBuf::new(),
            sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
            witness: Witness::new(),
        }],
        output: vec![
            TxOut { value: Amount::from_sat(value_sat), script_pubkey: to.clone() },
            TxOut { value: Amount::from_sat(COINBASE_SAT - value_sat - FEE_SAT), script_pubkey: miner.script.clone() },
        ],
    };
    let sighash = SighashCache::new(&tx)
        .p2wpkh_signature_hash(0, &miner.script, coinbase.output[0].value, EcdsaSighashType::All)
        .unwrap();
    let signature = Secp256k1::new().sign_ecdsa(&Message::from_digest(sighash.to_byte_array()), &miner.sk);
    let signature = bitcoin::ecdsa::Signature { signature, sighash_type: EcdsaSighashType::All };
    tx.input[0].witness = Witness::p2wpkh(&signature, &miner.pk.0);
    assert_eq!(rpc.send_raw_transaction(&tx).await.unwrap(), tx.compute_txid());
    tx
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

/// The customer's BTC balance row over the API.
async fn btc_balance(c: &Customer) -> Value {
    let v = c.get("/v1/balances").await.unwrap();
    v.as_array().unwrap().iter().find(|b| b["asset"] == "BTC").unwrap_or_else(|| panic!("no BTC in {v}")).clone()
}

fn units(v: &Value, field: &str) -> u64 {
    v[field].as_str().unwrap_or_else(|| panic!("{field} in {v}")).parse().unwrap()
}

/// The customer's BTC deposit with this txid, once the server has seen it at `confirmations`.
async fn deposit_at(c: &Customer, txid: &str, confirmations: u64) -> Option<Value> {
    let v = c.get("/v1/deposits").await.ok()?;
    v.as_array()?
        .iter()
        .find(|d| d["asset"] == "BTC" && d["tx_hash"] == txid && d["confirmations"] == confirmations)
        .cloned()
}

/// M6, C2, M5: a BTC deposit through the running server. The address a customer gets over the API is their
/// BIP84 receive address (bech32, the same on asking again); the payment is pending at 1 and 2 confirmations
/// (nothing available) and credited at the configured 3: the available balance equals the satoshis paid, and
/// the deposit names the txid as explorers print it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn m6_btc_deposit_through_the_running_server_credited_after_confirmations() {
    for ts in kinko_store::testing::test_stores().await {
        let backend = ts.name;
        let sim = RegtestSimulator::start_with_auth(RPC_USER, RPC_PASSWORD).await.unwrap();
        let rpc = BtcRpc::new(&sim.url(), None).unwrap();
        let miner = miner();
        sim.mine(PREMINE_BLOCKS, &miner.script).unwrap();
        // The test's own client reads through the same auth the server uses; without it the node refuses.
        assert!(rpc.get_block_count().await.is_err(), "{backend}: the simulator demands basic auth");
        let rpc = BtcRpc::new(
            &sim.url(),
            Some(kinko_chain::btc::rpc::BtcRpcAuth {
                user: RPC_USER.into(),
                password: String::from(RPC_PASSWORD).into(),
            }),
        )
        .unwrap();

        let mut h = Harness::new(ts, &[], 3, 30_000).await;
        h.config.bitcoin = Some(bitcoin_config(h.dir.path(), sim.url()));
        // As `kinko serve --config` reads it: the TOML file, validated at load (the password file read then).
        std::fs::write(&h.config_path, toml::to_string(&h.config).unwrap()).unwrap();
        h.config = kinko_server::Config::load(&h.config_path).unwrap();
        assert!(h.config.bitcoin.is_some(), "{backend}");
        let running = h.start_in_process().await;

        let c = Customer::register(&h.api_base(), &format!("btc-{backend}@example.com"), &h.mail_dir()).await;
        let before = btc_balance(&c).await;
        assert_eq!((units(&before, "available"), units(&before, "pending")), (0, 0), "{backend}: {before}");

        let (status, v) = post(&c, "/v1/deposit-addresses", None, &json!({"asset": "BTC"})).await;
        assert_eq!(status, 200, "{backend}: {v}");
        assert_eq!(v["asset"], "BTC", "{backend}: {v}");
        let address = v["address"].as_str().unwrap().to_string();
        assert!(address.starts_with("bcrt1q"), "{backend}: a regtest bech32 P2WPKH address: {address}");
        let (status, again) = post(&c, "/v1/deposit-addresses", None, &json!({"asset": "BTC"})).await;
        assert_eq!((status, again["address"].as_str()), (200, Some(address.as_str())), "{backend}: the same address");
        let script = address.parse::<Address<_>>().unwrap().require_network(Network::Regtest).unwrap().script_pubkey();
        let index = (0..INDEX_SEARCH_MAX)
            .find(|i| account().script_pubkey(Keychain::Receive, *i).unwrap() == script)
            .unwrap_or_else(|| panic!("{backend}: {address} is not a receive address of the configured account"));
        assert_eq!(account().address(Keychain::Receive, index).unwrap().to_string(), address, "{backend}");

        let tx = pay(&rpc, &miner, 1, &script, DEPOSIT_SAT).await;
        let txid = tx.compute_txid().to_string();
        for confirmations in 1..=2 {
            sim.mine(1, &miner.script).unwrap();
            let d = wait_for(&format!("{backend}: deposit at {confirmations} confirmations"), TIMEOUT, None, || {
                deposit_at(&c, &txid, confirmations)
            })
            .await;
            assert_eq!(d["status"], "pending", "{backend}: {d}");
            assert_eq!(d["amount"], DEPOSIT_SAT.to_string(), "{backend}: {d}");
            assert_eq!(d["address"], address, "{backend}: {d}");
            let b = btc_balance(&c).await;
            assert_eq!(units(&b, "available"), 0, "{backend}: not credited before 3 confirmations: {b}");
            assert_eq!(units(&b, "pending"), DEPOSIT_SAT, "{backend}: {b}");
        }
        sim.mine(1, &miner.script).unwrap();
        let b = wait_for(&format!("{backend}: BTC credited"), TIMEOUT, None, || async {
            let b = btc_balance(&c).await;
            (units(&b, "available") == DEPOSIT_SAT).then_some(b)
        })
        .await;
        assert_eq!((units(&b, "pending"), units(&b, "held")), (0, 0), "{backend}: {b}");
        let d = deposit_at(&c, &txid, 3).await.unwrap_or_else(|| panic!("{backend}: deposit at 3 confirmations"));
        assert_eq!(d["status"], "credited", "{backend}: {d}");
        // The ETH side is untouched by the BTC deposit.
        assert_eq!(c.available().await, 0, "{backend}");

        running.stop().await;
    }
}

/// M9: with `[bitcoin]` configured, BTC is held and deposited but not yet sent: a withdrawal or an internal
/// transfer of BTC is refused with 422 `asset-not-withdrawable` naming the field, not as an unknown asset, and
/// nothing is reserved. Without `[bitcoin]`, BTC is no asset at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn m9_btc_withdrawal_refused_clearly_until_supported() {
    let ts = kinko_store::testing::test_stores().await.into_iter().next().unwrap();
    let sim = RegtestSimulator::start_with_auth(RPC_USER, RPC_PASSWORD).await.unwrap();
    let mut h = Harness::new(ts, &[], 3, 30_000).await;
    h.config.bitcoin = Some(bitcoin_config(h.dir.path(), sim.url()));
    let running = h.start_in_process().await;
    let c = Customer::register(&h.api_base(), "btc-refused@example.com", &h.mail_dir()).await;

    let body = json!({
        "asset": "BTC", "amount": "1000", "destination": "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080",
        "transaction_password": TRANSACTION_PASSWORD,
    });
    let (status, v) = post(&c, "/v1/withdrawals", Some("btc-w1"), &body).await;
    assert_eq!(status, 422, "{v}");
    assert_eq!(v["type"], "urn:kinko:problem:asset-not-withdrawable", "{v}");
    assert_eq!(v["detail"], "BTC withdrawals are not available yet", "{v}");
    assert_eq!(v["errors"][0]["field"], "asset", "{v}");

    let body = json!({
        "to_email": "someone@example.com", "asset": "BTC", "amount": "1000",
        "transaction_password": TRANSACTION_PASSWORD,
    });
    let (status, v) = post(&c, "/v1/internal-transfers", Some("btc-t1"), &body).await;
    assert_eq!(status, 422, "{v}");
    assert_eq!(v["type"], "urn:kinko:problem:asset-not-withdrawable", "{v}");

    let b = btc_balance(&c).await;
    assert_eq!(units(&b, "held"), 0, "{b}");
    let w = c.get("/v1/withdrawals").await.unwrap();
    assert!(w.as_array().is_none_or(|a| a.is_empty()), "no withdrawal was created: {w}");
    running.stop().await;

    // Without `[bitcoin]`: no BTC asset, and asking for a BTC address is an unknown asset.
    let mut plain = h.config.clone();
    plain.bitcoin = None;
    assert!(!kinko_server::api::assets::held_assets(&plain).iter().any(|a| a.as_str() == "BTC"));
    assert!(kinko_server::api::assets::not_withdrawable(&plain, "asset", "BTC").is_none());
    assert_eq!(kinko_server::api::assets::lookup_asset(&plain, "asset", "BTC").unwrap_err().field, "asset");
}

/// M5, C2: `[bitcoin]` is validated at load, errors naming the key: an xpub of another network, a non-account
/// key, a bad fingerprint, confirmations outside the re-org window, a readable or missing password file, a
/// user without a password file. Confirmations default to 3 on regtest and 6 elsewhere.
#[test]
fn m5_btc_config_validated_at_load_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let good = bitcoin_config(dir.path(), "http://127.0.0.1:18443/".into());
    good.validate().unwrap();
    assert_eq!(good.confirmations().unwrap(), 3);
    let field = |c: &BitcoinConfig| match c.validate() {
        Err(ConfigError::Invalid { field, reason }) => {
            assert!(!reason.is_empty());
            field
        }
        other => panic!("{other:?}"),
    };
    let mainnet =
        Bip84Account::from_master(&Xpriv::new_master(Network::Bitcoin, &[7u8; 32]).unwrap(), Network::Bitcoin).unwrap();
    let c = BitcoinConfig { account_xpub: mainnet.xpub.to_string(), ..good.clone() };
    assert_eq!(field(&c), "bitcoin.account_xpub", "a mainnet xpub on regtest");
    let c = BitcoinConfig { network: "bitcoin".into(), ..good.clone() };
    assert_eq!(field(&c), "bitcoin.account_xpub", "a tpub on mainnet");
    let c = BitcoinConfig { network: "mainnet-ish".into(), ..good.clone() };
    assert_eq!(field(&c), "bitcoin.network");
    let master_xpub = bitcoin::bip32::Xpub::from_priv(&Secp256k1::new(), &master());
    let c = BitcoinConfig { account_xpub: master_xpub.to_string(), ..good.clone() };
    assert_eq!(field(&c), "bitcoin.account_xpub", "the master key is not the account");
    let c = BitcoinConfig { account_xpub: "xpub-nonsense".into(), ..good.clone() };
    assert_eq!(field(&c), "bitcoin.account_xpub");
    let c = BitcoinConfig { master_fingerprint: "xyz".into(), ..good.clone() };
    assert_eq!(field(&c), "bitcoin.master_fingerprint");
    for n in [0, 257] {
        let c = BitcoinConfig { confirmations: Some(n), ..good.clone() };
        assert_eq!(field(&c), "bitcoin.confirmations");
    }
    let c = BitcoinConfig { poll_interval_ms: 0, ..good.clone() };
    assert_eq!(field(&c), "bitcoin.poll_interval_ms");
    let c = BitcoinConfig { rpc_password_file: None, ..good.clone() };
    assert_eq!(field(&c), "bitcoin.rpc_password_file", "a user without a password file");
    let c = BitcoinConfig { rpc_password_file: Some(dir.path().join("missing")), ..good.clone() };
    assert_eq!(field(&c), "bitcoin.rpc_password_file");
    let c = BitcoinConfig { rpc_url: "http://kinko:pw@127.0.0.1:18443/".into(), ..good.clone() };
    assert_eq!(field(&c), "bitcoin.rpc_url", "credentials in the URL");
    {
        use std::os::unix::fs::PermissionsExt as _;
        let path = good.rpc_password_file.clone().unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(field(&good), "bitcoin.rpc_password_file", "a password file others may read");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let testnet =
        Bip84Account::from_master(&Xpriv::new_master(Network::Testnet, &[7u8; 32]).unwrap(), Network::Testnet).unwrap();
    let c = BitcoinConfig { network: "testnet".into(), account_xpub: testnet.xpub.to_string(), ..good.clone() };
    c.validate().unwrap();
    assert_eq!(c.confirmations().unwrap(), 6);

    // Through the whole configuration: TOML with a [bitcoin] table loads and validates; a password inline is an
    // unknown key.
    let mut config = kinko_server::Config::dev_default(
        dir.path().to_path_buf(),
        "127.0.0.1:8080".parse().unwrap(),
        "http://127.0.0.1:8545".into(),
    );
    config.bitcoin = Some(good);
    let text = toml::to_string(&config).unwrap();
    assert!(text.contains("[bitcoin]"), "{text}");
    let back: kinko_server::Config = toml::from_str(&text).unwrap();
    back.validate().unwrap();
    assert_eq!(back, config);
    let inline = text.replace("[bitcoin]\n", "[bitcoin]\nrpc_password = \"secret\"\n");
    assert!(toml::from_str::<kinko_server::Config>(&inline).is_err(), "an inline password is refused");
}
