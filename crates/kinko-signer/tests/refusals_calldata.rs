//! The signer's refusals (K20, O5; the Bybit / WazirX lesson): it signs a plain ERC-20 `transfer` only
//! when contract, recipient and amount all match the intent, and refuses — naming what it saw — every
//! payload that grants allowances, runs a Safe transaction (above all with operation = delegatecall),
//! upgrades a proxy or changes owners, thresholds, modules or guards, and any call data it does not know.
//!
//! Call data here is built by hand from the well-known selectors, not with the signer's own ABI
//! definitions, so a wrong signature in the signer would show up as a test failure.

use std::sync::Arc;

use alloy_consensus::{SignableTransaction, TxEip1559};
use alloy_eips::eip2930::AccessList;
use alloy_primitives::{Address, Bytes, TxKind, U256, keccak256};
use kinko_core::asset::{AssetKind, AssetSpec};
use kinko_core::intent::Intent;
use kinko_core::{Amount, ChainId};
use kinko_keys::seed::MasterSeed;
use kinko_signer::evm::EvmPolicy;
use kinko_signer::testing::MemoryJournal;
use kinko_signer::{EvmSignRequest, LocalSigner, Signer, SignerError};
use zeroize::Zeroizing;

const TEST_MNEMONIC: &str = "test test test test test test test test test test test junk";
const CHAIN: u64 = 31337;
const KEY: &str = "hot-1";
const GWEI: u128 = 1_000_000_000;
const TOKEN: &str = "0x00000000000000000000000000000000000000cc";
const OTHER_TOKEN: &str = "0x00000000000000000000000000000000000000cd";
const RECIPIENT: &str = "0x00000000000000000000000000000000000000aa";
const ATTACKER: &str = "0x00000000000000000000000000000000000000ee";
const USDC_UNITS: u128 = 1_500_000;

struct Fixture {
    signer: LocalSigner,
    journal: Arc<MemoryJournal>,
    address: String,
}

fn fixture() -> Fixture {
    let seed = MasterSeed::from_mnemonic(TEST_MNEMONIC).unwrap();
    let secret: Zeroizing<[u8; 32]> = kinko_keys::hd::evm_hot_wallet_secret(&seed.to_bip32_master().unwrap()).unwrap();
    let journal = Arc::new(MemoryJournal::new());
    let signer = LocalSigner::new(journal.clone());
    let address = signer.add_secp256k1_key(KEY, secret).unwrap();
    signer.set_quorum(kinko_signer::testing::auto_quorum(KEY, &["ETH", "USDC", "DAI"])).unwrap();
    let mut policy = EvmPolicy::default();
    let usdc = AssetSpec {
        code: "USDC".parse().unwrap(),
        kind: AssetKind::Erc20 { chain_id: ChainId(CHAIN), contract: TOKEN.into() },
        decimals: 6,
    };
    policy.add_token(CHAIN, &usdc).unwrap();
    signer.set_evm_policy(CHAIN, policy).unwrap();
    Fixture { signer, journal, address }
}

fn intent(asset: &str, amount: u128, source: &str) -> Intent {
    Intent {
        id: "w1".into(),
        asset: asset.parse().unwrap(),
        chain_id: ChainId(CHAIN),
        amount: Amount::from_base_units(amount),
        destination: RECIPIENT.into(),
        source_wallet: source.into(),
        customer_id: "c1".into(),
        reason: "customer withdrawal".into(),
    }
}

/// A 32-byte ABI word holding an address (left-padded with zeros).
fn word_address(a: &str) -> Vec<u8> {
    let mut w = vec![0u8; 12];
    w.extend_from_slice(a.parse::<Address>().unwrap().as_slice());
    w
}

fn word_u256(v: u128) -> Vec<u8> {
    U256::from(v).to_be_bytes::<32>().to_vec()
}

fn calldata(selector: &str, words: &[Vec<u8>]) -> Vec<u8> {
    let mut out = hex::decode(selector).unwrap();
    for w in words {
        out.extend_from_slice(w);
    }
    out
}

fn transfer_data(recipient: &str, amount: u128) -> Vec<u8> {
    calldata("a9059cbb", &[word_address(recipient), word_u256(amount)])
}

fn call_tx(to: &str, value: u128, input: Vec<u8>) -> TxEip1559 {
    TxEip1559 {
        chain_id: CHAIN,
        nonce: 0,
        gas_limit: 100_000,
        max_fee_per_gas: 2 * GWEI,
        max_priority_fee_per_gas: GWEI,
        to: TxKind::Call(to.parse::<Address>().unwrap()),
        value: U256::from(value),
        access_list: AccessList::default(),
        input: Bytes::from(input),
    }
}

fn request(tx: &TxEip1559, intent: Intent) -> EvmSignRequest {
    let mut payload = Vec::new();
    tx.encode_for_signing(&mut payload);
    EvmSignRequest {
        key_id: KEY.into(),
        chain_id: CHAIN,
        nonce: tx.nonce,
        payload,
        intent,
        approvals: vec![],
        actor: "pipeline".into(),
        terminal: "test-host".into(),
        evacuation: None,
    }
}

/// Signs a USDC intent for `USDC_UNITS` to `RECIPIENT` with the given payload; expects an error and
/// checks that nothing was logged as signed.
async fn refusal(f: &Fixture, tx: &TxEip1559, asset: &str, amount: u128) -> SignerError {
    let req = request(tx, intent(asset, amount, &f.address));
    let e = f.signer.sign_evm(&req).await.expect_err("the signer must refuse");
    assert!(f.journal.access_log().is_empty(), "a refused request reached the key access log: {e}");
    e
}

fn assert_refused(e: &SignerError, must_contain: &[&str]) {
    match e {
        SignerError::Refused(reason) => {
            for needle in must_contain {
                assert!(reason.contains(needle), "refusal {reason:?} does not name {needle:?}");
            }
        }
        other => panic!("expected Refused naming {must_contain:?}, got {other}"),
    }
}

fn assert_mismatch(e: &SignerError, want: &str) {
    match e {
        SignerError::IntentMismatch { field, .. } => assert_eq!(*field, want, "{e}"),
        other => panic!("expected IntentMismatch {{ field: {want:?} }}, got {other}"),
    }
}

#[tokio::test]
async fn k20_o5_signs_an_erc20_transfer_matching_contract_recipient_and_amount() {
    let f = fixture();
    let t = call_tx(TOKEN, 0, transfer_data(RECIPIENT, USDC_UNITS));
    let req = request(&t, intent("USDC", USDC_UNITS, &f.address));
    let sig = f.signer.sign_evm(&req).await.expect("a matching ERC-20 transfer is signed");
    let s = alloy_primitives::Signature::new(
        U256::from_be_slice(&sig[..32]),
        U256::from_be_slice(&sig[32..64]),
        sig[64] == 1,
    );
    let recovered = s.recover_address_from_prehash(&keccak256(&req.payload)).unwrap();
    assert_eq!(format!("{recovered:#x}"), f.address);
    let log = f.journal.access_log();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].intent_hash, req.intent.hash());
}

#[tokio::test]
async fn o5_erc20_transfer_to_another_recipient_is_a_token_recipient_mismatch() {
    let f = fixture();
    let t = call_tx(TOKEN, 0, transfer_data(ATTACKER, USDC_UNITS));
    let e = refusal(&f, &t, "USDC", USDC_UNITS).await;
    assert_mismatch(&e, "token recipient");
    assert!(e.to_string().contains(ATTACKER), "{e}");
}

#[tokio::test]
async fn o5_erc20_transfer_of_another_amount_is_a_token_amount_mismatch() {
    let f = fixture();
    let t = call_tx(TOKEN, 0, transfer_data(RECIPIENT, USDC_UNITS + 1));
    assert_mismatch(&refusal(&f, &t, "USDC", USDC_UNITS).await, "token amount");
}

#[tokio::test]
async fn o5_erc20_transfer_on_another_contract_is_a_token_contract_mismatch() {
    let f = fixture();
    let t = call_tx(OTHER_TOKEN, 0, transfer_data(RECIPIENT, USDC_UNITS));
    assert_mismatch(&refusal(&f, &t, "USDC", USDC_UNITS).await, "token contract");
    // Sending the token call to the recipient itself is the same mistake.
    let t = call_tx(RECIPIENT, 0, transfer_data(RECIPIENT, USDC_UNITS));
    assert_mismatch(&refusal(&f, &t, "USDC", USDC_UNITS).await, "token contract");
}

#[tokio::test]
async fn o5_erc20_transfer_carrying_native_value_is_refused() {
    let f = fixture();
    let t = call_tx(TOKEN, 1, transfer_data(RECIPIENT, USDC_UNITS));
    assert_mismatch(&refusal(&f, &t, "USDC", USDC_UNITS).await, "native value");
}

#[tokio::test]
async fn k20_erc20_transfer_must_be_exactly_canonical_abi() {
    let f = fixture();
    // Dirty high bytes in the address word: some decoders ignore them, some do not.
    let mut dirty = transfer_data(RECIPIENT, USDC_UNITS);
    dirty[4] = 0x01;
    let e = refusal(&f, &call_tx(TOKEN, 0, dirty), "USDC", USDC_UNITS).await;
    assert_refused(&e, &["0xa9059cbb"]);
    // Trailing bytes after the two words.
    let mut long = transfer_data(RECIPIENT, USDC_UNITS);
    long.extend_from_slice(&[0u8; 32]);
    let e = refusal(&f, &call_tx(TOKEN, 0, long), "USDC", USDC_UNITS).await;
    assert_refused(&e, &["0xa9059cbb", "68"]);
    // Truncated.
    let short = transfer_data(RECIPIENT, USDC_UNITS)[..36].to_vec();
    let e = refusal(&f, &call_tx(TOKEN, 0, short), "USDC", USDC_UNITS).await;
    assert_refused(&e, &["0xa9059cbb"]);
}

#[tokio::test]
async fn k20_token_and_native_intents_are_not_interchangeable() {
    let f = fixture();
    // A native ETH intent cannot be paid with a token call.
    let t = call_tx(RECIPIENT, 0, transfer_data(RECIPIENT, USDC_UNITS));
    assert_refused(&refusal(&f, &t, "ETH", USDC_UNITS).await, &["native"]);
    // A token intent cannot be paid with a native transfer to the token contract.
    let t = call_tx(TOKEN, 0, vec![]);
    assert_refused(&refusal(&f, &t, "USDC", USDC_UNITS).await, &["no transfer call"]);
    // A token the signer's policy does not map is refused, whatever the payload.
    let t = call_tx(TOKEN, 0, transfer_data(RECIPIENT, USDC_UNITS));
    assert_refused(&refusal(&f, &t, "DAI", USDC_UNITS).await, &["DAI"]);
}

#[tokio::test]
async fn k20_refuses_erc20_approve_naming_it() {
    let f = fixture();
    // Even aimed at the intent's own token contract for the intent's amount: an allowance is not a transfer.
    let t = call_tx(TOKEN, 0, calldata("095ea7b3", &[word_address(ATTACKER), word_u256(USDC_UNITS)]));
    assert_refused(&refusal(&f, &t, "USDC", USDC_UNITS).await, &["approve", "0x095ea7b3"]);
}

#[tokio::test]
async fn k20_refuses_erc20_transfer_from_naming_it() {
    let f = fixture();
    let data = calldata("23b872dd", &[word_address(RECIPIENT), word_address(ATTACKER), word_u256(USDC_UNITS)]);
    let t = call_tx(TOKEN, 0, data);
    assert_refused(&refusal(&f, &t, "USDC", USDC_UNITS).await, &["transferFrom", "0x23b872dd"]);
}

#[tokio::test]
async fn k20_refuses_erc20_increase_allowance_naming_it() {
    let f = fixture();
    let t = call_tx(TOKEN, 0, calldata("39509351", &[word_address(ATTACKER), word_u256(u128::MAX)]));
    assert_refused(&refusal(&f, &t, "USDC", USDC_UNITS).await, &["increaseAllowance", "0x39509351"]);
}

alloy_sol_types::sol! {
    // Safe's execTransaction, declared here independently of the signer for building payloads.
    function execTransaction(
        address to, uint256 value, bytes data, uint8 operation, uint256 safeTxGas, uint256 baseGas,
        uint256 gasPrice, address gasToken, address refundReceiver, bytes signatures
    ) returns (bool success);
}

fn safe_exec(operation: u8) -> Vec<u8> {
    use alloy_sol_types::SolCall;
    let call = execTransactionCall {
        to: ATTACKER.parse().unwrap(),
        value: U256::ZERO,
        // What the Bybit attacker's contract did: overwrite slot 0 (the Safe's master copy).
        data: Bytes::from(calldata("a9059cbb", &[word_address(ATTACKER), word_u256(0)])),
        operation,
        safeTxGas: U256::ZERO,
        baseGas: U256::ZERO,
        gasPrice: U256::ZERO,
        gasToken: Address::ZERO,
        refundReceiver: Address::ZERO,
        signatures: Bytes::from(vec![0u8; 65]),
    };
    let data = call.abi_encode();
    assert_eq!(hex::encode(&data[..4]), "6a761202", "Safe execTransaction selector");
    data
}

#[tokio::test]
async fn k20_refuses_safe_exec_with_operation_delegatecall_naming_it() {
    let f = fixture();
    let safe = "0x00000000000000000000000000000000000000dd";
    // Whatever the intent: a native intent to the Safe, and a token intent.
    let t = call_tx(safe, 0, safe_exec(1));
    let mut i = intent("ETH", 0, &f.address);
    i.destination = safe.into();
    let e = f.signer.sign_evm(&request(&t, i)).await.unwrap_err();
    assert_refused(&e, &["execTransaction", "0x6a761202", "operation = delegatecall", ATTACKER]);
    let e = refusal(&f, &call_tx(TOKEN, 0, safe_exec(1)), "USDC", USDC_UNITS).await;
    assert_refused(&e, &["operation = delegatecall"]);
    assert!(f.journal.access_log().is_empty());
}

#[tokio::test]
async fn k20_refuses_every_safe_exec_while_no_intent_class_allows_it() {
    let f = fixture();
    let e = refusal(&f, &call_tx(TOKEN, 0, safe_exec(0)), "USDC", USDC_UNITS).await;
    assert_refused(&e, &["execTransaction", "0x6a761202", "operation = call", "no intent class"]);
    // A Safe exec whose arguments do not decode is still named and refused.
    let e = refusal(&f, &call_tx(TOKEN, 0, calldata("6a761202", &[word_u256(1)])), "USDC", USDC_UNITS).await;
    assert_refused(&e, &["execTransaction", "0x6a761202"]);
}

#[tokio::test]
async fn k20_refuses_proxy_upgrades_naming_them() {
    let f = fixture();
    let t = call_tx(TOKEN, 0, calldata("3659cfe6", &[word_address(ATTACKER)]));
    assert_refused(&refusal(&f, &t, "USDC", USDC_UNITS).await, &["upgradeTo", "0x3659cfe6", "proxy upgrade"]);
    // upgradeToAndCall(address, bytes ""): address, offset 0x40, length 0.
    let data = calldata("4f1ef286", &[word_address(ATTACKER), word_u256(0x40), word_u256(0)]);
    let t = call_tx(TOKEN, 0, data);
    assert_refused(&refusal(&f, &t, "USDC", USDC_UNITS).await, &["upgradeToAndCall", "0x4f1ef286", "proxy upgrade"]);
}

#[tokio::test]
async fn k20_refuses_owner_threshold_module_and_guard_changes_naming_them() {
    let f = fixture();
    let sentinel = "0x0000000000000000000000000000000000000001";
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("transferOwnership", calldata("f2fde38b", &[word_address(ATTACKER)])),
        ("addOwnerWithThreshold", calldata("0d582f13", &[word_address(ATTACKER), word_u256(1)])),
        ("removeOwner", calldata("f8dc5dd9", &[word_address(sentinel), word_address(RECIPIENT), word_u256(1)])),
        ("swapOwner", calldata("e318b52b", &[word_address(sentinel), word_address(RECIPIENT), word_address(ATTACKER)])),
        ("changeThreshold", calldata("694e80c3", &[word_u256(1)])),
        ("enableModule", calldata("610b5925", &[word_address(ATTACKER)])),
        ("setGuard", calldata("e19a9dd9", &[word_address(ATTACKER)])),
    ];
    for (name, data) in cases {
        let selector = format!("0x{}", hex::encode(&data[..4]));
        let e = refusal(&f, &call_tx(TOKEN, 0, data), "USDC", USDC_UNITS).await;
        assert_refused(&e, &[name, &selector, "controls"]);
    }
}

#[tokio::test]
async fn k20_refuses_unrecognised_calldata_naming_the_selector() {
    let f = fixture();
    // multicall(bytes[]) — harmless-looking, but the signer cannot see inside what it does not decode.
    let t = call_tx(TOKEN, 0, calldata("ac9650d8", &[word_u256(0x20), word_u256(0)]));
    assert_refused(&refusal(&f, &t, "USDC", USDC_UNITS).await, &["unrecognised calldata 0xac9650d8"]);
    // The same on a native intent, and call data shorter than a selector.
    let t = call_tx(RECIPIENT, 5, vec![0xde, 0xad, 0xbe, 0xef, 0x00]);
    assert_refused(&refusal(&f, &t, "ETH", 5).await, &["unrecognised calldata 0xdeadbeef"]);
    let t = call_tx(RECIPIENT, 5, vec![0xde, 0xad]);
    assert_refused(&refusal(&f, &t, "ETH", 5).await, &["shorter than a function selector"]);
}

#[test]
fn k20_the_token_map_takes_only_this_chains_erc20_assets() {
    let mut policy = EvmPolicy::default();
    let other_chain = AssetSpec {
        code: "USDC".parse().unwrap(),
        kind: AssetKind::Erc20 { chain_id: ChainId(1), contract: TOKEN.into() },
        decimals: 6,
    };
    assert!(policy.add_token(CHAIN, &other_chain).is_err());
    let native = AssetSpec {
        code: "ETH".parse().unwrap(),
        kind: AssetKind::EvmNative { chain_id: ChainId(CHAIN) },
        decimals: 18,
    };
    assert!(policy.add_token(CHAIN, &native).is_err());
    let bad = AssetSpec {
        code: "USDC".parse().unwrap(),
        kind: AssetKind::Erc20 { chain_id: ChainId(CHAIN), contract: "0xnot-an-address".into() },
        decimals: 6,
    };
    assert!(policy.add_token(CHAIN, &bad).is_err());
    assert!(policy.tokens.is_empty());
}
