//! PKCS#11 backend on a real SoftHSM2 token (K21, K9, K3, K20): secp256k1 keys generated inside the token
//! and never extractable, activation by token login, signatures through the same signer checks as
//! software keys, normalised to low-S, accepted by a real anvil.
//!
//! SoftHSM reads `SOFTHSM2_CONF` once, at `C_Initialize`, and a PKCS#11 library is initialised once per
//! process. So that every test has its own configuration and token directory, each test re-runs itself
//! in a child process of this test binary with its own `SOFTHSM2_CONF` (the parent prepares the
//! directory and the token, the child does the work).
//!
//! Without the SoftHSM module the tests skip, unless `KINKO_TEST_REQUIRE_SOFTHSM=1` (set by
//! `scripts/test`), which turns a missing module into a failure.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use alloy_primitives::{Address, U256, keccak256};
use kinko_chain::anvil::{ACCOUNT0, Anvil};
use kinko_chain::evm::build::{assemble_signed, native_transfer};
use kinko_chain::evm::rpc::{EvmRpc, SendOutcome};
use kinko_chain::evm::{FeeEstimate, NATIVE_TRANSFER_GAS};
use kinko_core::intent::Intent;
use kinko_core::{Amount, ChainId};
use kinko_signer::pkcs11::{Pkcs11Error, Pkcs11Token, find_token_slot, module};
use kinko_signer::testing::MemoryJournal;
use kinko_signer::{EvmSignRequest, LocalSigner, SecpKey, Signer, SignerError};
use secrecy::SecretString;

const MODULE_ENV: &str = "KINKO_SOFTHSM_MODULE";
const REQUIRE_ENV: &str = "KINKO_TEST_REQUIRE_SOFTHSM";
const MODULE_DEFAULT: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// Set in the child process to the name of the test it runs.
const CHILD_ENV: &str = "KINKO_PKCS11_TEST_CHILD";
const TOKEN_LABEL: &str = "kinko-test";
const USER_PIN: &str = "4711-user";
const SO_PIN: &str = "4711-so";
const CHAIN: u64 = 31337;
const DEST: &str = "0x00000000000000000000000000000000000000bb";
const GWEI: u128 = 1_000_000_000;
const LOW_S_SAMPLES: u64 = 40;
const RECEIPT_POLLS_MAX: usize = 100;
/// n / 2 for secp256k1: the largest S Ethereum accepts (EIP-2).
const HALF_ORDER_HEX: &str = "7fffffffffffffffffffffffffffffff5d576e7357a4501ddfe92f46681b20a0";

fn module_path() -> PathBuf {
    std::env::var_os(MODULE_ENV).map(PathBuf::from).unwrap_or_else(|| PathBuf::from(MODULE_DEFAULT))
}

fn pin(s: &str) -> SecretString {
    SecretString::from(s.to_string())
}

/// In the parent: prepares a token in a fresh directory, runs `test_name` alone in a child process with
/// that `SOFTHSM2_CONF`, asserts it passed, and returns `false`. In the child: returns `true` (run the
/// test body). Skips (returns `false`) without the module unless it is required.
fn run_isolated(test_name: &str) -> bool {
    if let Ok(child_of) = std::env::var(CHILD_ENV) {
        return child_of == test_name;
    }
    let module = module_path();
    if !module.is_file() {
        let msg = format!(
            "SoftHSM2 module not found at {} (set {MODULE_ENV}, or `apt-get install -y softhsm2`)",
            module.display()
        );
        if std::env::var(REQUIRE_ENV).as_deref() == Ok("1") {
            panic!("{msg}; {REQUIRE_ENV}=1 requires it");
        }
        eprintln!("skipping {test_name}: {msg}");
        return false;
    }

    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::create_dir(&tokens).unwrap();
    let conf = dir.path().join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!("directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n", tokens.display()),
    )
    .unwrap();
    init_token(&conf, &module);

    let out = Command::new(std::env::current_exe().unwrap())
        .args([test_name, "--exact", "--nocapture", "--test-threads", "1"])
        .env(CHILD_ENV, test_name)
        .env("SOFTHSM2_CONF", &conf)
        .env(MODULE_ENV, &module)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // `--exact` with a wrong name passes with 0 tests: insist the test really ran.
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{test_name} failed in its SoftHSM child process ({})\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    false
}

/// `softhsm2-util --init-token --free`, the way an operator initialises a token.
fn init_token(conf: &Path, module: &Path) {
    let out = Command::new("softhsm2-util")
        .args(["--init-token", "--free", "--label", TOKEN_LABEL, "--pin", USER_PIN, "--so-pin", SO_PIN])
        .arg("--module")
        .arg(module)
        .env("SOFTHSM2_CONF", conf)
        .output()
        .unwrap_or_else(|e| panic!("softhsm2-util cannot run ({e}); it comes with the softhsm2 package"));
    assert!(
        out.status.success(),
        "softhsm2-util --init-token failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn open_token() -> Pkcs11Token {
    Pkcs11Token::open(&module_path(), TOKEN_LABEL, &pin(USER_PIN)).unwrap()
}

fn fees() -> FeeEstimate {
    FeeEstimate { max_fee_per_gas: 20 * GWEI, max_priority_fee_per_gas: GWEI }
}

fn intent(id: &str, amount_wei: u128, source: &str) -> Intent {
    Intent {
        id: id.into(),
        asset: "ETH".parse().unwrap(),
        chain_id: ChainId(CHAIN),
        amount: Amount::from_base_units(amount_wei),
        destination: DEST.into(),
        source_wallet: source.into(),
        customer_id: "c1".into(),
        reason: "customer withdrawal".into(),
    }
}

fn request(key_id: &str, nonce: u64, value_wei: u128, intent: Intent) -> EvmSignRequest {
    let unsigned =
        native_transfer(CHAIN, nonce, DEST.parse::<Address>().unwrap(), value_wei, fees(), NATIVE_TRANSFER_GAS);
    EvmSignRequest {
        key_id: key_id.into(),
        chain_id: CHAIN,
        nonce,
        payload: unsigned.payload,
        intent,
        approvals: vec![],
        actor: "pipeline".into(),
        terminal: "pkcs11-test".into(),
        evacuation: None,
    }
}

/// Low S and recovery to `address`, checked with alloy (not the libraries the signer used).
fn assert_low_s_and_recovers(sig: &[u8; 65], payload: &[u8], address: &str) {
    let r = U256::from_be_slice(&sig[..32]);
    let s = U256::from_be_slice(&sig[32..64]);
    let half_order = U256::from_str_radix(HALF_ORDER_HEX, 16).unwrap();
    assert!(s <= half_order, "high-S signature: s = {s:#x}");
    assert!(sig[64] <= 1, "y parity {}", sig[64]);
    let recovered =
        alloy_primitives::Signature::new(r, s, sig[64] == 1).recover_address_from_prehash(&keccak256(payload)).unwrap();
    assert_eq!(format!("{recovered:#x}"), address);
}

/// Acceptance: a key generated in the token signs, through the full signer path, a real EIP-1559
/// transaction that anvil mines successfully; the same intent checks apply as for software keys.
#[tokio::test]
async fn k21_softhsm_key_signs_eip1559_tx_that_anvil_accepts() {
    if !run_isolated("k21_softhsm_key_signs_eip1559_tx_that_anvil_accepts") {
        return;
    }
    let token = open_token();
    let key = token.generate_secp256k1("hsm-hot-1").unwrap();
    let address = key.evm_address();
    assert_eq!(key.address(), address);

    let journal = Arc::new(MemoryJournal::new());
    let signer = LocalSigner::new(journal.clone());
    assert_eq!(signer.add_pkcs11_key("hsm-hot-1", key).unwrap(), address);
    signer.set_quorum(kinko_signer::testing::auto_quorum("hsm-hot-1", &["ETH"])).unwrap();

    let anvil = Anvil::spawn(&[]).await.unwrap();
    anvil.send_eth(ACCOUNT0, &address, 10u128.pow(18)).await.unwrap();
    let rpc = EvmRpc::new(anvil.url()).unwrap();

    // K20: the HSM key gets the same refusals: an amount differing from the intent is not signed.
    let wrong = request("hsm-hot-1", 0, 12_345, intent("w0", 99, &address));
    let err = signer.sign_evm(&wrong).await.unwrap_err();
    assert!(matches!(err, SignerError::IntentMismatch { field: "amount", .. }), "{err}");
    assert!(journal.access_log().is_empty(), "a refusal is not a key use");

    let req = request("hsm-hot-1", 0, 12_345, intent("w1", 12_345, &address));
    let sig = signer.sign_evm(&req).await.unwrap();
    assert_low_s_and_recovers(&sig, &req.payload, &address);
    let log = journal.access_log();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].key_id, "hsm-hot-1");

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
    let receipt = receipt.expect("anvil mined the transaction");
    assert!(receipt.success, "{receipt:?}");
    assert_eq!(rpc.balance(DEST.parse().unwrap()).await.unwrap(), 12_345);
}

/// Tokens return high-S about half the time; over 40 signatures (all high-S unnormalised with
/// probability 2^-40 of never occurring) every one that leaves the signer is low-S and recovers.
#[tokio::test]
async fn k21_softhsm_signatures_are_always_low_s() {
    if !run_isolated("k21_softhsm_signatures_are_always_low_s") {
        return;
    }
    let token = open_token();
    let key = token.generate_secp256k1("hsm-low-s").unwrap();
    let address = key.evm_address();
    let signer = LocalSigner::new(Arc::new(MemoryJournal::new()));
    signer.add_pkcs11_key("hsm-low-s", key.clone()).unwrap();
    signer.set_quorum(kinko_signer::testing::auto_quorum("hsm-low-s", &["ETH"])).unwrap();
    for nonce in 0..LOW_S_SAMPLES {
        let value = 1_000 + u128::from(nonce);
        let req = request("hsm-low-s", nonce, value, intent(&format!("w{nonce}"), value, &address));
        let sig = signer.sign_evm(&req).await.unwrap();
        assert_low_s_and_recovers(&sig, &req.payload, &address);
    }
    // The backend on its own, on arbitrary hashes, too.
    for i in 0..LOW_S_SAMPLES {
        let hash = keccak256(i.to_be_bytes()).0;
        let sig = key.sign_prehash(&hash).unwrap();
        let s = U256::from_be_slice(&sig[32..64]);
        assert!(s <= U256::from_str_radix(HALF_ORDER_HEX, 16).unwrap(), "high-S from the backend");
    }
}

/// K21: the private key is sensitive and not extractable: the token refuses to return CKA_VALUE and to
/// wrap it out under another key. It is found again by id after the token was closed and reopened.
#[tokio::test]
async fn k21_softhsm_key_is_not_extractable() {
    if !run_isolated("k21_softhsm_key_is_not_extractable") {
        return;
    }
    use cryptoki::mechanism::Mechanism;
    use cryptoki::object::{Attribute, AttributeInfo, AttributeType, KeyType, ObjectClass};

    let address = {
        let token = open_token();
        let key = token.generate_secp256k1("hsm-cold-1").unwrap();
        let p = key.protection().unwrap();
        assert!(p.sensitive && !p.extractable && p.always_sensitive && p.never_extractable, "{p:?}");
        assert!(!p.value_readable, "{p:?}");
        key.evm_address()
    };

    // Closed (logged out) and reopened: the key persisted in the token under its id.
    let token = open_token();
    let key = token.find_key("hsm-cold-1").unwrap();
    assert_eq!(key.evm_address(), address);
    assert!(matches!(token.find_key("no-such-key"), Err(Pkcs11Error::KeyNotFound(_))));
    assert!(matches!(token.generate_secp256k1("hsm-cold-1"), Err(Pkcs11Error::KeyExists(_))));

    // Straight at the token, past kinko's API: the login of `token` covers this session.
    let ctx = module(&module_path()).unwrap();
    let slot = find_token_slot(&ctx, TOKEN_LABEL).unwrap();
    let session = ctx.open_rw_session(slot).unwrap();
    let found = session
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::KeyType(KeyType::EC),
            Attribute::Id(b"hsm-cold-1".to_vec()),
        ])
        .unwrap();
    assert_eq!(found.len(), 1);
    let private = found[0];
    let info = session.get_attribute_info(private, &[AttributeType::Value]).unwrap();
    assert!(matches!(info.as_slice(), [AttributeInfo::Sensitive]), "CKA_VALUE info {info:?}");
    let values = session.get_attributes(private, &[AttributeType::Value]).unwrap();
    assert!(values.iter().all(|a| !matches!(a, Attribute::Value(_))), "CKA_VALUE came back");
    let wrapping = session
        .generate_key(
            &Mechanism::AesKeyGen,
            &[Attribute::Token(false), Attribute::ValueLen(32.into()), Attribute::Wrap(true)],
        )
        .unwrap();
    let wrapped = session.wrap_key(&Mechanism::AesKeyWrapPad, wrapping, private);
    assert!(wrapped.is_err(), "the token wrapped the private key out");
}

/// K3: activation is the token login; a wrong PIN leaves the backend unusable and is not echoed.
#[tokio::test]
async fn k3_softhsm_wrong_pin_fails_activation() {
    if !run_isolated("k3_softhsm_wrong_pin_fails_activation") {
        return;
    }
    let err = Pkcs11Token::open(&module_path(), TOKEN_LABEL, &pin("0000-wrong")).unwrap_err();
    assert!(matches!(err, Pkcs11Error::Login { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("PinIncorrect"), "{text}");
    assert!(!text.contains("0000-wrong") && !text.contains(USER_PIN), "{text}");

    let err = Pkcs11Token::open(&module_path(), "no-such-token", &pin(USER_PIN)).unwrap_err();
    assert!(matches!(err, Pkcs11Error::TokenNotFound(_)), "{err}");

    // The right PIN activates, and the token's Debug output names no PIN.
    let token = open_token();
    assert!(!format!("{token:?}").contains(USER_PIN));
    token.generate_secp256k1("hsm-after-login").unwrap();
}
