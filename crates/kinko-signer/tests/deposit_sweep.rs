//! Deposit-address keys in the signer (K13, C1): derived on demand from the deposit account the signer keeps
//! at unseal, they sign exactly one thing without approval — a transfer of the deposit address's coins or
//! tokens to the signer's OWN hot wallet under a "deposit sweep" intent — and refuse everything else, naming
//! why. The hot key signs a gas top-up without approval only to a deposit address it derives itself, up to its
//! own cap. Real `LocalSigner`, real key derivation (the anvil test mnemonic), no mocks.

use std::sync::Arc;

use alloy_consensus::{SignableTransaction, TxEip1559};
use alloy_eips::eip2930::AccessList;
use alloy_primitives::{Address, Bytes, TxKind, U256};
use kinko_core::asset::{AssetKind, AssetSpec};
use kinko_core::intent::Intent;
use kinko_core::policy::PolicyClass;
use kinko_core::{Amount, ChainId};
use kinko_keys::seed::MasterSeed;
use kinko_signer::approvals::{QuorumBand, SigningQuorum, SigningQuorumConfig};
use kinko_signer::evm::EvmPolicy;
use kinko_signer::sweep::{DEPOSIT_SWEEP_REASON, DepositAccount, DepositSigning, deposit_key_id, gas_top_up_reason};
use kinko_signer::testing::MemoryJournal;
use kinko_signer::{EvmSignRequest, LocalSigner, Signer, SignerError};

const TEST_MNEMONIC: &str = "test test test test test test test test test test test junk";
const CHAIN: u64 = 31337;
const HOT_KEY: &str = "eth-hot-1";
const GWEI: u128 = 1_000_000_000;
const TOKEN: &str = "0x00000000000000000000000000000000000000cc";
const ATTACKER: &str = "0x00000000000000000000000000000000000000ee";
const TOP_UP_CAP: u128 = 1_000_000_000_000_000;

struct Fixture {
    signer: LocalSigner,
    journal: Arc<MemoryJournal>,
    hot: String,
    account: DepositAccount,
}

fn account() -> DepositAccount {
    let seed = MasterSeed::from_mnemonic(TEST_MNEMONIC).unwrap();
    DepositAccount::from_master(&seed.to_bip32_master().unwrap()).unwrap()
}

/// A signer holding the hot key, whose quorum demands one signing manager for everything the hot key signs
/// (so a top-up that signs did so by the top-up rule, not by an automatic band), a USDC token, and the deposit
/// account of the anvil test mnemonic.
fn fixture() -> Fixture {
    let seed = MasterSeed::from_mnemonic(TEST_MNEMONIC).unwrap();
    let secret = kinko_keys::hd::evm_hot_wallet_secret(&seed.to_bip32_master().unwrap()).unwrap();
    let journal = Arc::new(MemoryJournal::new());
    let signer = LocalSigner::new(journal.clone());
    let hot = signer.add_secp256k1_key(HOT_KEY, secret).unwrap();
    let quorum = SigningQuorum::from_configs(&[SigningQuorumConfig {
        key_id: HOT_KEY.into(),
        asset: "ETH".into(),
        class: PolicyClass::HotSmall,
        auto_max: None,
        bands: vec![QuorumBand { from: Amount::from_base_units(0), approvals: 1 }],
    }])
    .unwrap();
    signer.set_quorum(quorum).unwrap();
    let mut policy = EvmPolicy::default();
    let usdc = AssetSpec {
        code: "USDC".parse().unwrap(),
        kind: AssetKind::Erc20 { chain_id: ChainId(CHAIN), contract: TOKEN.into() },
        decimals: 6,
    };
    policy.add_token(CHAIN, &usdc).unwrap();
    signer.set_evm_policy(CHAIN, policy).unwrap();
    signer
        .set_deposit_signing(DepositSigning {
            account: account(),
            hot_key_id: HOT_KEY.into(),
            top_up_cap_wei: TOP_UP_CAP,
        })
        .unwrap();
    Fixture { signer, journal, hot, account: account() }
}

fn intent(id: &str, asset: &str, amount: u128, destination: &str, source: &str, reason: &str) -> Intent {
    Intent {
        id: id.into(),
        asset: asset.parse().unwrap(),
        chain_id: ChainId(CHAIN),
        amount: Amount::from_base_units(amount),
        destination: destination.into(),
        source_wallet: source.into(),
        customer_id: "custodian".into(),
        reason: reason.into(),
    }
}

fn tx(nonce: u64, to: &str, value: u128, input: Vec<u8>, gas_limit: u64) -> TxEip1559 {
    TxEip1559 {
        chain_id: CHAIN,
        nonce,
        gas_limit,
        max_fee_per_gas: 2 * GWEI,
        max_priority_fee_per_gas: GWEI,
        to: TxKind::Call(to.parse::<Address>().unwrap()),
        value: U256::from(value),
        access_list: AccessList::default(),
        input: Bytes::from(input),
    }
}

fn transfer_data(recipient: &str, amount: u128) -> Vec<u8> {
    // Built by hand (selector + two words), not with the signer's own ABI code.
    let mut out = hex::decode("a9059cbb").unwrap();
    out.extend_from_slice(&[0u8; 12]);
    out.extend_from_slice(recipient.parse::<Address>().unwrap().as_slice());
    out.extend_from_slice(&U256::from(amount).to_be_bytes::<32>());
    out
}

fn request(key_id: &str, tx: &TxEip1559, intent: Intent) -> EvmSignRequest {
    let mut payload = Vec::new();
    tx.encode_for_signing(&mut payload);
    EvmSignRequest {
        key_id: key_id.into(),
        chain_id: CHAIN,
        nonce: tx.nonce,
        payload,
        intent,
        approvals: vec![],
        actor: "pipeline:test".into(),
        terminal: "test-host".into(),
        evacuation: None,
    }
}

fn refusal(r: Result<[u8; 65], SignerError>) -> String {
    match r {
        Err(SignerError::Refused(m)) => m,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn k13_deposit_key_refuses_anything_but_a_transfer_to_hot() {
    let f = fixture();
    let key = deposit_key_id(1);
    let source = f.account.address(1).unwrap();
    assert_eq!(source, "0x70997970c51812dc3a010c7d01b50e0d17dc79c8", "anvil's account 1 is deposit index 1");
    let sweep_intent =
        |id: &str, asset: &str, amount: u128| intent(id, asset, amount, &f.hot, &source, DEPOSIT_SWEEP_REASON);

    // To another destination (intent and payload agree on it): refused by the deposit rule.
    let m = refusal(
        f.signer
            .sign_evm(&request(
                &key,
                &tx(0, ATTACKER, 5, vec![], 21_000),
                intent("s1", "ETH", 5, ATTACKER, &source, DEPOSIT_SWEEP_REASON),
            ))
            .await,
    );
    assert!(m.contains("signs only a sweep into the signer's own hot wallet") && m.contains("the intent pays"), "{m}");
    // The intent names hot, the payload pays someone else.
    let m = refusal(
        f.signer.sign_evm(&request(&key, &tx(0, ATTACKER, 5, vec![], 21_000), sweep_intent("s1", "ETH", 5))).await,
    );
    assert!(m.contains(&format!("the payload pays {ATTACKER}")), "{m}");
    // Call data on a native sweep: an approve that would hand the address's tokens to the attacker.
    let mut approve = hex::decode("095ea7b3").unwrap();
    approve.extend_from_slice(&transfer_data(ATTACKER, u128::MAX)[4..]);
    let m = refusal(
        f.signer.sign_evm(&request(&key, &tx(0, &f.hot, 0, approve, 60_000), sweep_intent("s1", "ETH", 0))).await,
    );
    assert!(m.contains("call data") && m.contains("approve"), "{m}");
    // Under a withdrawal intent, even to hot.
    let withdrawal = intent("w1", "ETH", 5, &f.hot, &source, "customer withdrawal");
    let m = refusal(f.signer.sign_evm(&request(&key, &tx(0, &f.hot, 5, vec![], 21_000), withdrawal.clone())).await);
    assert!(m.contains("reason is \"customer withdrawal\""), "{m}");
    // ... and the approval pre-check (the pipeline's, before a nonce is reserved) says the same.
    let m = match f.signer.check_approvals(&request(&key, &tx(0, &f.hot, 5, vec![], 21_000), withdrawal)).await {
        Err(SignerError::Refused(m)) => m,
        other => panic!("expected a refusal, got {other:?}"),
    };
    assert!(m.contains("signs only a \"deposit sweep\""), "{m}");
    // A token sweep to someone else, and a token transfer on a contract the signer does not know.
    let m = refusal(
        f.signer
            .sign_evm(&request(
                &key,
                &tx(0, TOKEN, 0, transfer_data(ATTACKER, 7), 100_000),
                sweep_intent("s2", "USDC", 7),
            ))
            .await,
    );
    assert!(m.contains(&format!("the token transfer pays {ATTACKER}")), "{m}");
    let m = refusal(
        f.signer
            .sign_evm(&request(
                &key,
                &tx(0, ATTACKER, 0, transfer_data(&f.hot, 7), 100_000),
                sweep_intent("s2", "USDC", 7),
            ))
            .await,
    );
    assert!(m.contains("not the USDC contract"), "{m}");
    assert!(f.journal.access_log().is_empty(), "nothing refused was signed or logged");

    // What it does sign, without any approval: ETH to hot, and transfer(hot, amount) on USDC.
    f.signer.sign_evm(&request(&key, &tx(0, &f.hot, 5, vec![], 21_000), sweep_intent("s3", "ETH", 5))).await.unwrap();
    f.signer
        .sign_evm(&request(&key, &tx(1, TOKEN, 0, transfer_data(&f.hot, 7), 100_000), sweep_intent("s4", "USDC", 7)))
        .await
        .unwrap();
    let log = f.journal.access_log();
    assert_eq!(log.len(), 2);
    assert!(log.iter().all(|e| e.key_id == key && e.approvers.is_empty()), "{log:?}");
    assert_eq!(f.signer.address(&key).as_deref(), Some(source.as_str()), "derived on demand into the key ring");

    // A deposit key of a signer without a deposit account is refused, and sealing forgets the derived keys.
    let bare = LocalSigner::new(Arc::new(MemoryJournal::new()));
    let m =
        refusal(bare.sign_evm(&request(&key, &tx(0, &f.hot, 5, vec![], 21_000), sweep_intent("s5", "ETH", 5))).await);
    assert!(m.contains("holds no deposit account"), "{m}");
    f.signer.seal();
    assert!(f.signer.address(&key).is_none());
    let r = f.signer.sign_evm(&request(&key, &tx(2, &f.hot, 5, vec![], 21_000), sweep_intent("s6", "ETH", 5))).await;
    assert!(matches!(r, Err(SignerError::Sealed | SignerError::UnknownKey(_))), "{r:?}");
}

#[tokio::test]
async fn k13_hot_key_tops_up_only_derivable_deposit_addresses_within_its_cap() {
    let f = fixture();
    let three = f.account.address(3).unwrap();
    let top_up =
        |id: &str, to: &str, index: u32, amount: u128| intent(id, "ETH", amount, to, &f.hot, &gas_top_up_reason(index));
    // The destination is not what index 3 derives to.
    let m = refusal(
        f.signer.sign_evm(&request(HOT_KEY, &tx(0, ATTACKER, 10, vec![], 21_000), top_up("t1", ATTACKER, 3, 10))).await,
    );
    assert!(m.contains("is not deposit address 3"), "{m}");
    // Over the signer's cap.
    let over = TOP_UP_CAP + 1;
    let m = refusal(
        f.signer.sign_evm(&request(HOT_KEY, &tx(0, &three, over, vec![], 21_000), top_up("t2", &three, 3, over))).await,
    );
    assert!(m.contains("above the signer's top-up cap"), "{m}");
    // An ordinary custodian transfer to the same address still needs its approval.
    let plain = intent("t3", "ETH", 10, &three, &f.hot, "custodian transfer");
    let m = refusal(f.signer.sign_evm(&request(HOT_KEY, &tx(0, &three, 10, vec![], 21_000), plain)).await);
    assert!(m.contains("0 valid approvals of 1 required"), "{m}");
    assert!(f.journal.access_log().is_empty());
    // A capped top-up to the derived address signs without approval.
    f.signer
        .sign_evm(&request(HOT_KEY, &tx(0, &three, TOP_UP_CAP, vec![], 21_000), top_up("t4", &three, 3, TOP_UP_CAP)))
        .await
        .unwrap();
    assert!(f.journal.access_log()[0].approvers.is_empty());
}
