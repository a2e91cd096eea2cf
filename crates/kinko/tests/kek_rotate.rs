//! KEK rotation killed part-way (K4, issue 3 acceptance): the real `kinko kek rotate` binary is SIGKILLed
//! in the middle of re-wrapping 3000 keys, run again to completion, and then every key unwraps under the
//! new KEK (and under no other), no key was ever under neither KEK, the old KEK is gone, and the hot key
//! unseals through the real unseal path and signs an EIP-1559 transaction that a real anvil mines.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kinko_chain::anvil::{ACCOUNT0, Anvil};
use kinko_chain::evm::build::{assemble_signed, native_transfer};
use kinko_chain::evm::rpc::{EvmRpc, SendOutcome};
use kinko_chain::evm::{FeeEstimate, NATIVE_TRANSFER_GAS};
use kinko_core::intent::Intent;
use kinko_core::{Amount, ChainId};
use kinko_keys::kek::Kek;
use kinko_keys::shares::{self, MasterKey, SealConfig};
use kinko_signer::seal;
use kinko_signer::{EvmSignRequest, Signer};
use kinko_store::Store;
use kinko_store::seal_records::KekRecord;
use rand::RngCore;

/// The command's test-only knob: milliseconds of sleep after each committed batch, so the kill lands
/// part-way (`keys_cli::ROTATE_PAUSE_ENV`).
const ROTATE_PAUSE_ENV: &str = "KINKO_TEST_KEK_ROTATE_PAUSE_MS";
const KEYS: usize = 3000;
const HOT: &str = "eth-hot-1";
const OLD_KEK: &str = "kek-initial";
const CHAIN: u64 = 31337;
const GWEI: u128 = 1_000_000_000;
const DEST: &str = "0x00000000000000000000000000000000000000cc";
const SENT_WEI: u128 = 123_456_789;
const RECEIPT_POLLS_MAX: usize = 100;

/// `kinko kek rotate` as an operator runs it, in its own process.
fn run_rotate(dir: &Path, pause_ms: Option<u64>) -> std::process::Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kinko"));
    cmd.args(["kek", "rotate", "--config"])
        .arg(dir.join("kinko.toml"))
        .arg("--share")
        .arg(dir.join("alice.share"))
        .args(["--actor", "op-alice", "--reason", "annual KEK rotation", "--batch", "50"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    match pause_ms {
        Some(ms) => cmd.env(ROTATE_PAUSE_ENV, ms.to_string()),
        None => cmd.env_remove(ROTATE_PAUSE_ENV),
    };
    cmd.spawn().expect("spawn kinko kek rotate")
}

fn secret() -> [u8; 32] {
    let mut s = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut s);
    s
}

async fn count(store: &Store, sql: &'static str, bind: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(sql).bind(bind).fetch_one(store.pool()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn k4_kek_rotation_sigkilled_part_way_resumes_every_key_still_signs_and_the_old_kek_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let config = kinko_server::Config::dev_default(
        dir.path().to_path_buf(),
        "127.0.0.1:0".parse().unwrap(),
        "http://127.0.0.1:1".into(),
    );
    std::fs::write(dir.path().join("kinko.toml"), toml::to_string(&config).unwrap()).unwrap();
    let store = Store::connect(&config.database_url).await.unwrap();

    // The seal: a 1-of-1 master key, the initial KEK wrapped by it.
    let mk = MasterKey::generate();
    let raw = shares::split(&mk, 1, &["alice".to_string()]).unwrap();
    store.init_seal_config_json(&serde_json::to_string(&SealConfig::new(&mk, 1, &raw)).unwrap()).await.unwrap();
    raw[0].to_file(None).unwrap().write(&dir.path().join("alice.share")).unwrap();
    let old_kek = Kek::generate();
    store
        .insert_kek(&KekRecord {
            id: OLD_KEK.into(),
            wrapped_by_master_hex: seal::wrap_kek(&mk, OLD_KEK, &old_kek).unwrap(),
            state: "active".into(),
            fingerprint: old_kek.fingerprint(),
            created_at_ms: 1,
            updated_at_ms: 1,
        })
        .await
        .unwrap();

    // The hot key and 3000 more keys, all under the initial KEK.
    let hot_secret = secret();
    let probe = kinko_signer::LocalSigner::new(Arc::new(kinko_signer::StoreJournal(store.clone())));
    let hot_address = probe.add_secp256k1_key("probe", zeroize::Zeroizing::new(hot_secret)).unwrap();
    let mut tx = store.begin_write().await.unwrap();
    let mut rows = vec![(HOT.to_string(), "hot_wallet", hot_address.clone(), hot_secret)];
    for i in 0..KEYS {
        rows.push((format!("key-{i:05}"), "cold_wallet", format!("0x{:040x}", i + 1), secret()));
    }
    for (id, purpose, address, s) in &rows {
        sqlx::query(
            "INSERT INTO keys (id, purpose, chain, address, wrapped, state, created_at_ms, kek_id) \
             VALUES ($1, $2, 'eth', $3, $4, 'active', 1, $5)",
        )
        .bind(id)
        .bind(*purpose)
        .bind(address)
        .bind(hex::encode(old_kek.wrap(id, purpose, s).unwrap()))
        .bind(OLD_KEK)
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
    let total = rows.len() as i64;

    // Run 1: slowed down, killed once some but not all batches are committed.
    let mut child = run_rotate(dir.path(), Some(40));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(Instant::now() < deadline, "rotation never got going");
        assert!(child.try_wait().unwrap().is_none(), "the slowed rotation finished before it could be killed");
        let moved = count(&store, "SELECT COUNT(*) FROM keys WHERE kek_id <> $1", OLD_KEK).await;
        // No limbo while it runs: every key row names the old KEK or the new one, never neither.
        if let Some(open) = store.open_kek_rotation().await.unwrap() {
            let in_limbo =
                sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM keys WHERE kek_id <> $1 AND kek_id <> $2")
                    .bind(OLD_KEK)
                    .bind(&open.new_kek_id)
                    .fetch_one(store.pool())
                    .await
                    .unwrap();
            assert_eq!(in_limbo, 0, "keys under neither KEK mid-rotation");
        }
        if moved >= 500 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    child.wait().unwrap();

    let open = store.open_kek_rotation().await.unwrap().expect("the killed rotation is still open");
    let under_old = count(&store, "SELECT COUNT(*) FROM keys WHERE kek_id = $1", OLD_KEK).await;
    let under_new = count(&store, "SELECT COUNT(*) FROM keys WHERE kek_id = $1", &open.new_kek_id).await;
    assert!(under_old > 0 && under_new > 0, "killed part-way: {under_old} old, {under_new} new");
    assert_eq!(under_old + under_new, total, "every key is under exactly one KEK at every moment");
    assert_eq!(store.kek(OLD_KEK).await.unwrap().unwrap().state, "retiring");
    // Half-way, the real unseal path still opens the hot key (it tries every non-destroyed KEK).
    let journal = Arc::new(kinko_signer::StoreJournal(store.clone()));
    let mid = seal::unlock_signer(&store, &mk, journal.clone(), &[HOT.to_string()], Default::default()).await.unwrap();
    assert_eq!(mid.address(HOT).as_deref(), Some(hot_address.as_str()));

    // Run 2: resumes the open rotation and finishes.
    let status = run_rotate(dir.path(), None).wait().unwrap();
    assert!(status.success(), "the resumed rotation failed: {status}");

    assert!(store.open_kek_rotation().await.unwrap().is_none());
    let done = store.kek_rotation(&open.id).await.unwrap().unwrap();
    assert_eq!(done.state, "done");
    let old = store.kek(OLD_KEK).await.unwrap().unwrap();
    assert_eq!(old.state, "destroyed");
    assert_eq!(old.wrapped_by_master_hex, "", "the old KEK's wrapped blob is deleted");
    assert!(seal::unwrap_kek(&mk, OLD_KEK, &old.wrapped_by_master_hex).is_err());
    let new_row = store.active_kek().await.unwrap().unwrap();
    assert_eq!(new_row.id, open.new_kek_id);
    assert_eq!(count(&store, "SELECT COUNT(*) FROM keys WHERE kek_id = $1", &new_row.id).await, total);

    // Every key unwraps under the new KEK to exactly what was stored, and under no other.
    let new_kek = seal::unwrap_kek(&mk, &new_row.id, &new_row.wrapped_by_master_hex).unwrap();
    for (id, purpose, _, s) in &rows {
        let rec = store.key(id).await.unwrap().unwrap();
        let blob = hex::decode(&rec.wrapped_hex).unwrap();
        assert_eq!(&new_kek.unwrap(id, purpose, &blob).unwrap()[..], &s[..], "{id}");
        assert!(old_kek.unwrap(id, purpose, &blob).is_err());
    }

    // The hot key unseals through the real path after the rotation and matches its address.
    let signer = seal::unlock_signer(&store, &mk, journal, &[HOT.to_string()], Default::default()).await.unwrap();
    signer.set_quorum(kinko_signer::testing::auto_quorum(HOT, &["ETH"])).unwrap();
    assert_eq!(signer.address(HOT).as_deref(), Some(hot_address.as_str()));

    // …and still SIGNS: a real EIP-1559 transfer through the full signer path (intent check, journal,
    // independent verification), assembled and mined by a real anvil.
    let anvil = Anvil::spawn(&[]).await.expect("start anvil");
    anvil.send_eth(ACCOUNT0, &hot_address, 10u128.pow(18)).await.unwrap();
    let rpc = EvmRpc::new(anvil.url()).unwrap();
    let fees = FeeEstimate { max_fee_per_gas: 20 * GWEI, max_priority_fee_per_gas: GWEI };
    let dest = kinko_chain::evm::address::parse_address(DEST).unwrap();
    let unsigned = native_transfer(CHAIN, 0, dest, SENT_WEI, fees, NATIVE_TRANSFER_GAS);
    let req = EvmSignRequest {
        key_id: HOT.into(),
        chain_id: CHAIN,
        nonce: 0,
        payload: unsigned.payload,
        intent: Intent {
            id: "k4-after-rotation".into(),
            asset: "ETH".parse().unwrap(),
            chain_id: ChainId(CHAIN),
            amount: Amount::from_base_units(SENT_WEI),
            destination: DEST.into(),
            source_wallet: hot_address.clone(),
            customer_id: "c1".into(),
            reason: "signs after KEK rotation".into(),
        },
        approvals: vec![],
        actor: "kek-rotate-test".into(),
        terminal: "kek_rotate.rs".into(),
        evacuation: None,
    };
    let sig = signer.sign_evm(&req).await.expect("the re-wrapped hot key signs");
    let signed = assemble_signed(&req.payload, &sig).unwrap();
    assert_eq!(rpc.send_raw(&signed.raw).await.unwrap(), SendOutcome::Accepted);
    let mut receipt = None;
    for _ in 0..RECEIPT_POLLS_MAX {
        receipt = rpc.receipt(signed.tx_hash).await.unwrap();
        if receipt.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let receipt = receipt.expect("anvil mined the transaction signed after the rotation");
    assert!(receipt.success, "{receipt:?}");
    assert_eq!(rpc.balance(dest).await.unwrap(), SENT_WEI);
    let accesses = sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM key_access_log WHERE key_id = $1")
        .bind(HOT)
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(accesses, 1, "the signature is in the key access log");

    // Both KEK moves are on record with who and why.
    let old_history = store.key_transitions("kek", OLD_KEK).await.unwrap();
    let moves: Vec<(&str, &str)> = old_history.iter().map(|t| (t.from.as_str(), t.to.as_str())).collect();
    assert_eq!(moves, vec![("active", "retiring"), ("retiring", "destroyed")]);
    assert!(old_history.iter().all(|t| t.actor == "op-alice" && t.reason == "annual KEK rotation"));
}
