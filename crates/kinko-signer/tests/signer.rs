//! The signer's contract (K20, O5, L2, C4): it refuses what does not match the intent, never signs two
//! different transactions for one nonce (except a fee bump of the same intent), fails closed without its
//! journal, and returns low-S signatures that recover to the key's address.

use std::sync::Arc;

use alloy_consensus::{SignableTransaction, TxEip1559};
use alloy_eips::eip2930::{AccessList, AccessListItem};
use alloy_primitives::{Address, Bytes, TxKind, U256, keccak256};
use kinko_core::intent::Intent;
use kinko_core::{Amount, ChainId};
use kinko_keys::kek::Kek;
use kinko_keys::seed::MasterSeed;
use kinko_signer::testing::{FailingJournal, MemoryJournal};
use kinko_signer::{EvmSignRequest, LocalSigner, Signer, SignerError, SignerJournal, StoreJournal};
use kinko_store::Store;
use kinko_store::signer_records::KeyRecord;
use zeroize::Zeroizing;

const TEST_MNEMONIC: &str = "test test test test test test test test test test test junk";
const CHAIN: u64 = 31337;
const DEST: &str = "0x00000000000000000000000000000000000000aa";
const GWEI: u128 = 1_000_000_000;
const KEY: &str = "hot-1";

fn hot_secret() -> Zeroizing<[u8; 32]> {
    let seed = MasterSeed::from_mnemonic(TEST_MNEMONIC).unwrap();
    kinko_keys::hd::evm_hot_wallet_secret(&seed.to_bip32_master().unwrap()).unwrap()
}

fn signer_with(journal: Arc<dyn SignerJournal>) -> (LocalSigner, String) {
    let signer = LocalSigner::new(journal);
    let address = signer.add_secp256k1_key(KEY, hot_secret()).unwrap();
    signer.set_quorum(kinko_signer::testing::auto_quorum(KEY, &["ETH"])).unwrap();
    (signer, address)
}

fn intent(id: &str, amount: u128, source: &str) -> Intent {
    Intent {
        id: id.into(),
        asset: "ETH".parse().unwrap(),
        chain_id: ChainId(CHAIN),
        amount: Amount::from_base_units(amount),
        destination: DEST.into(),
        source_wallet: source.into(),
        customer_id: "c1".into(),
        reason: "customer withdrawal".into(),
    }
}

fn tx(nonce: u64, value: u128, max_fee_gwei: u128, priority_gwei: u128) -> TxEip1559 {
    TxEip1559 {
        chain_id: CHAIN,
        nonce,
        gas_limit: 21_000,
        max_fee_per_gas: max_fee_gwei * GWEI,
        max_priority_fee_per_gas: priority_gwei * GWEI,
        to: TxKind::Call(DEST.parse::<Address>().unwrap()),
        value: U256::from(value),
        access_list: AccessList::default(),
        input: Bytes::new(),
    }
}

fn payload(tx: &TxEip1559) -> Vec<u8> {
    let mut out = Vec::new();
    tx.encode_for_signing(&mut out);
    out
}

fn request(tx: &TxEip1559, intent: Intent) -> EvmSignRequest {
    EvmSignRequest {
        key_id: KEY.into(),
        chain_id: CHAIN,
        nonce: tx.nonce,
        payload: payload(tx),
        intent,
        approvals: vec![],
        actor: "pipeline".into(),
        terminal: "test-host".into(),
        evacuation: None,
    }
}

fn memory_signer() -> (LocalSigner, Arc<MemoryJournal>, String) {
    let journal = Arc::new(MemoryJournal::new());
    let (signer, address) = signer_with(journal.clone());
    (signer, journal, address)
}

/// Checks the signature with alloy (a third implementation) and libsecp256k1: low S, recovers to `address`.
fn assert_valid(sig: &[u8; 65], payload: &[u8], address: &str) {
    let s = alloy_primitives::Signature::new(
        U256::from_be_slice(&sig[..32]),
        U256::from_be_slice(&sig[32..64]),
        sig[64] == 1,
    );
    assert!(sig[64] <= 1);
    let recovered = s.recover_address_from_prehash(&keccak256(payload)).unwrap();
    assert_eq!(format!("{recovered:#x}"), address);
    let mut normalized = bitcoin::secp256k1::ecdsa::Signature::from_compact(&sig[..64]).unwrap();
    let before = normalized;
    normalized.normalize_s();
    assert_eq!(before, normalized, "signature is high-S");
}

#[tokio::test]
async fn k20_signs_a_matching_plain_transfer_low_s_recovering_to_the_key() {
    let (signer, journal, address) = memory_signer();
    let t = tx(0, 5, 2, 1);
    let req = request(&t, intent("w1", 5, &address));
    let sig = signer.sign_evm(&req).await.unwrap();
    assert_valid(&sig, &req.payload, &address);
    let log = journal.access_log();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].key_id, KEY);
    assert_eq!(log[0].operation, "sign");
    assert_eq!(log[0].actor, "pipeline");
    assert_eq!(log[0].terminal, "test-host");
    assert_eq!(log[0].intent_hash, req.intent.hash());
    let sha: [u8; 32] =
        sha2::Digest::finalize(sha2::Digest::chain_update(sha2::Sha256::default(), &req.payload)).into();
    assert_eq!(log[0].payload_sha256, sha);
}

#[tokio::test]
async fn k20_many_signatures_are_all_low_s() {
    // Half of raw ECDSA signatures are high-S; 40 nonces make a missed normalisation near-certain to show.
    let (signer, _, address) = memory_signer();
    for nonce in 0..40 {
        let t = tx(nonce, 1_000 + u128::from(nonce), 2, 1);
        let req = request(&t, intent(&format!("w{nonce}"), 1_000 + u128::from(nonce), &address));
        let sig = signer.sign_evm(&req).await.unwrap();
        assert_valid(&sig, &req.payload, &address);
    }
}

async fn refused(signer: &LocalSigner, req: &EvmSignRequest) -> SignerError {
    signer.sign_evm(req).await.expect_err("signer must refuse")
}

#[tokio::test]
async fn o5_refuses_wrong_destination() {
    let (signer, journal, address) = memory_signer();
    let mut i = intent("w1", 5, &address);
    i.destination = "0x00000000000000000000000000000000000000bb".into();
    let e = refused(&signer, &request(&tx(0, 5, 2, 1), i)).await;
    assert!(matches!(e, SignerError::IntentMismatch { field: "destination", .. }), "{e}");
    assert!(journal.access_log().is_empty());
}

#[tokio::test]
async fn o5_refuses_wrong_amount() {
    let (signer, _, address) = memory_signer();
    let e = refused(&signer, &request(&tx(0, 6, 2, 1), intent("w1", 5, &address))).await;
    assert!(matches!(e, SignerError::IntentMismatch { field: "amount", .. }), "{e}");
}

#[tokio::test]
async fn c3_refuses_wrong_chain_id() {
    let (signer, _, address) = memory_signer();
    // The payload is for chain 1, request and intent say 31337.
    let mut t = tx(0, 5, 2, 1);
    t.chain_id = 1;
    let e = refused(&signer, &request(&t, intent("w1", 5, &address))).await;
    assert!(matches!(e, SignerError::IntentMismatch { field: "chain_id", .. }), "{e}");
    // The request says another chain than the intent.
    let mut req = request(&tx(0, 5, 2, 1), intent("w1", 5, &address));
    req.chain_id = 1;
    let e = refused(&signer, &req).await;
    assert!(matches!(e, SignerError::IntentMismatch { field: "chain_id", .. }), "{e}");
}

#[tokio::test]
async fn k20_refuses_wrong_nonce() {
    let (signer, _, address) = memory_signer();
    let mut req = request(&tx(3, 5, 2, 1), intent("w1", 5, &address));
    req.nonce = 4;
    let e = refused(&signer, &req).await;
    assert!(matches!(e, SignerError::IntentMismatch { field: "nonce", .. }), "{e}");
}

#[tokio::test]
async fn o5_refuses_wrong_source_wallet() {
    let (signer, _, _) = memory_signer();
    let e = refused(&signer, &request(&tx(0, 5, 2, 1), intent("w1", 5, "0x00000000000000000000000000000000000000cc")))
        .await;
    assert!(matches!(e, SignerError::IntentMismatch { field: "source_wallet", .. }), "{e}");
}

#[tokio::test]
async fn k20_refuses_calldata_such_as_erc20_approve() {
    let (signer, _, address) = memory_signer();
    let mut t = tx(0, 0, 2, 1);
    let mut data = hex::decode("095ea7b3").unwrap();
    data.extend_from_slice(&[0u8; 12]);
    data.extend_from_slice(&[0xee; 20]);
    data.extend_from_slice(&[0xff; 32]);
    t.input = data.into();
    t.gas_limit = 60_000;
    let e = refused(&signer, &request(&t, intent("w1", 0, &address))).await;
    match e {
        SignerError::Refused(reason) => assert!(reason.contains("0x095ea7b3"), "{reason}"),
        other => panic!("expected Refused, got {other}"),
    }
}

#[tokio::test]
async fn k20_refuses_access_lists_contract_creation_and_fee_inflation() {
    let (signer, _, address) = memory_signer();
    let mut t = tx(0, 5, 2, 1);
    t.access_list = AccessList(vec![AccessListItem { address: Address::ZERO, storage_keys: vec![] }]);
    let e = refused(&signer, &request(&t, intent("w1", 5, &address))).await;
    assert!(matches!(e, SignerError::Refused(_)), "{e}");

    let mut t = tx(0, 5, 2, 1);
    t.to = TxKind::Create;
    let e = refused(&signer, &request(&t, intent("w1", 5, &address))).await;
    assert!(matches!(e, SignerError::Refused(_)), "{e}");

    // 21000 gas at 10,000 gwei = 0.21 ETH of fees: above the default cap.
    let e = refused(&signer, &request(&tx(0, 5, 10_000, 1), intent("w1", 5, &address))).await;
    assert!(matches!(e, SignerError::Refused(_)), "{e}");

    // A token intent cannot be paid with a native transfer.
    let mut i = intent("w1", 5, &address);
    i.asset = "USDC".parse().unwrap();
    let e = refused(&signer, &request(&tx(0, 5, 2, 1), i)).await;
    assert!(matches!(e, SignerError::Refused(_)), "{e}");
}

#[tokio::test]
async fn k20_refuses_malformed_payloads() {
    let (signer, _, address) = memory_signer();
    let good = request(&tx(0, 5, 2, 1), intent("w1", 5, &address));
    let mut cases: Vec<Vec<u8>> = vec![vec![], vec![0x02], vec![0x01, 0xc0], b"garbage".to_vec()];
    let mut trailing = good.payload.clone();
    trailing.push(0x00);
    cases.push(trailing);
    let mut legacy = good.payload.clone();
    legacy[0] = 0xf8;
    cases.push(legacy);
    for p in cases {
        let mut req = good.clone();
        req.payload = p.clone();
        let e = refused(&signer, &req).await;
        assert!(matches!(e, SignerError::Malformed(_)), "{} → {e}", hex::encode(&p));
    }
}

#[tokio::test]
async fn k20_unknown_key_is_refused() {
    let (signer, _, address) = memory_signer();
    let mut req = request(&tx(0, 5, 2, 1), intent("w1", 5, &address));
    req.key_id = "nope".into();
    assert!(matches!(refused(&signer, &req).await, SignerError::UnknownKey(_)));
}

#[tokio::test]
async fn k20_second_different_payload_for_the_same_nonce_is_double_sign() {
    let (signer, _, address) = memory_signer();
    signer.sign_evm(&request(&tx(7, 5, 2, 1), intent("w1", 5, &address))).await.unwrap();
    // Another withdrawal reusing nonce 7, even with higher fees.
    let e = refused(&signer, &request(&tx(7, 9, 3, 2), intent("w2", 9, &address))).await;
    assert!(matches!(e, SignerError::DoubleSign { .. }), "{e}");
    // Another nonce is a fresh slot.
    signer.sign_evm(&request(&tx(8, 9, 2, 1), intent("w2", 9, &address))).await.unwrap();
}

#[tokio::test]
async fn c4_fee_bump_of_the_same_intent_is_allowed_lower_or_equal_fees_are_not() {
    let (signer, journal, address) = memory_signer();
    let i = intent("w1", 5, &address);
    signer.sign_evm(&request(&tx(0, 5, 2, 1), i.clone())).await.unwrap();
    let bumped = signer.sign_evm(&request(&tx(0, 5, 3, 2), i.clone())).await.unwrap();
    assert_valid(&bumped, &payload(&tx(0, 5, 3, 2)), &address);
    // Each must beat every payload already signed for the slot, not just the first.
    // (2, 1) and (3, 2) themselves are not in the list: re-signing an already signed payload is the
    // idempotent crash-recovery path and hands out no new signature.
    for (fee, tip) in [(4, 2), (3, 3), (2, 2), (3, 1), (1, 1), (2, 0)] {
        let e = refused(&signer, &request(&tx(0, 5, fee, tip), i.clone())).await;
        assert!(matches!(e, SignerError::DoubleSign { .. }), "fee {fee}/{tip}: {e}");
    }
    // Same fees up, but another gas limit: not a fee bump.
    let mut t = tx(0, 5, 5, 3);
    t.gas_limit = 30_000;
    let e = refused(&signer, &request(&t, i.clone())).await;
    assert!(matches!(e, SignerError::DoubleSign { .. }), "{e}");
    signer.sign_evm(&request(&tx(0, 5, 5, 3), i)).await.unwrap();
    assert_eq!(journal.access_log().len(), 3);
}

#[tokio::test]
async fn k20_same_payload_twice_gives_the_same_signature_and_two_log_entries() {
    let (signer, journal, address) = memory_signer();
    let req = request(&tx(0, 5, 2, 1), intent("w1", 5, &address));
    let a = signer.sign_evm(&req).await.unwrap();
    let b = signer.sign_evm(&req).await.unwrap();
    assert_eq!(a, b);
    assert_eq!(journal.access_log().len(), 2);
}

#[tokio::test]
async fn k20_l2_no_journal_no_signature() {
    let (signer, address) = signer_with(Arc::new(FailingJournal));
    let e = refused(&signer, &request(&tx(0, 5, 2, 1), intent("w1", 5, &address))).await;
    assert!(matches!(e, SignerError::JournalUnavailable(_)), "{e}");
}

#[tokio::test]
async fn k3_sealed_signer_refuses_and_takes_no_keys() {
    let (signer, _, address) = memory_signer();
    let req = request(&tx(0, 5, 2, 1), intent("w1", 5, &address));
    signer.sign_evm(&req).await.unwrap();
    signer.seal();
    assert!(signer.is_sealed());
    assert!(matches!(refused(&signer, &req).await, SignerError::Sealed));
    assert!(matches!(signer.add_secp256k1_key(KEY, hot_secret()), Err(SignerError::Sealed)));
    assert_eq!(signer.address(KEY), None);
}

#[tokio::test]
async fn k20_a_key_id_cannot_be_rebound_to_another_key() {
    let (signer, _, address) = memory_signer();
    assert_eq!(signer.add_secp256k1_key(KEY, hot_secret()).unwrap(), address);
    let other = Zeroizing::new([7u8; 32]);
    assert!(matches!(signer.add_secp256k1_key(KEY, other), Err(SignerError::Refused(_))));
    assert!(matches!(signer.add_secp256k1_key("zero", Zeroizing::new([0u8; 32])), Err(SignerError::Malformed(_))));
}

#[test]
fn k1_debug_and_errors_show_no_key_material() {
    let journal = Arc::new(MemoryJournal::new());
    let (signer, address) = signer_with(journal);
    let secret_hex = hex::encode(*hot_secret());
    let shown = format!("{signer:?} {signer:#?}");
    assert!(shown.contains(&address), "{shown}");
    assert!(!shown.contains(&secret_hex), "{shown}");
    assert!(!shown.contains(&secret_hex[..16]), "{shown}");
    let seed = MasterSeed::from_mnemonic(TEST_MNEMONIC).unwrap();
    let kek = Kek::generate();
    let shown = format!("{seed:?} {kek:?}");
    assert!(!shown.contains("test"), "{shown}");
    assert!(!shown.contains(&hex::encode(kek.expose_bytes())[..16]), "{shown}");
}

/// The anti-double-sign record survives a restart: a new signer on a re-opened store still refuses the
/// second payload for a used nonce (K20), and every signature left a key access log row (L2).
#[tokio::test]
async fn k20_l2_store_journal_persists_slots_across_reconnect() {
    for ts in kinko_store::testing::test_stores().await {
        let name = ts.name;
        let (signer, address) = signer_with(Arc::new(StoreJournal(ts.store.clone())));
        let first = request(&tx(0, 5, 2, 1), intent("w1", 5, &address));
        let sig = signer.sign_evm(&first).await.unwrap();
        drop(signer);

        let reopened = Store::connect(&ts.url).await.unwrap();
        let (signer, _) = signer_with(Arc::new(StoreJournal(reopened.clone())));
        let other = request(&tx(0, 9, 3, 2), intent("w2", 9, &address));
        let e = refused(&signer, &other).await;
        assert!(matches!(e, SignerError::DoubleSign { .. }), "{name}: {e}");
        assert_eq!(signer.sign_evm(&first).await.unwrap(), sig, "{name}");
        signer.sign_evm(&request(&tx(0, 5, 3, 2), intent("w1", 5, &address))).await.unwrap();

        let slots = reopened.signer_slot_payloads(KEY, "evm:31337", "0").await.unwrap();
        assert_eq!(slots.len(), 2, "{name}");
        let log = reopened.key_access_log(KEY, 100).await.unwrap();
        assert_eq!(log.len(), 3, "{name}");
        assert!(log.iter().all(|r| r.operation == "sign" && r.terminal == "test-host"), "{name}");
        assert_eq!(log[0].intent_hash, hex::encode(first.intent.hash()), "{name}");
    }
}

/// Two signer instances on one database race for the same nonce with different payloads: exactly one
/// wins (K20).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k20_concurrent_signers_on_one_store_sign_one_payload_per_nonce() {
    for ts in kinko_store::testing::test_stores().await {
        let name = ts.name;
        let (a, address) = signer_with(Arc::new(StoreJournal(ts.store.clone())));
        let (b, _) = signer_with(Arc::new(StoreJournal(ts.store.clone())));
        let (a, b) = (Arc::new(a), Arc::new(b));
        for nonce in 0..8u64 {
            let ra = request(&tx(nonce, 5, 2, 1), intent(&format!("a{nonce}"), 5, &address));
            let rb = request(&tx(nonce, 7, 2, 1), intent(&format!("b{nonce}"), 7, &address));
            let (sa, sb) = (a.clone(), b.clone());
            let ja = tokio::spawn(async move { sa.sign_evm(&ra).await });
            let jb = tokio::spawn(async move { sb.sign_evm(&rb).await });
            let (x, y) = (ja.await.unwrap(), jb.await.unwrap());
            assert_eq!(x.is_ok() as u8 + y.is_ok() as u8, 1, "{name} nonce {nonce}: {x:?} / {y:?}");
            let slots = ts.store.signer_slot_payloads(KEY, "evm:31337", &nonce.to_string()).await.unwrap();
            assert_eq!(slots.len(), 1, "{name} nonce {nonce}");
        }
    }
}

/// Keys at rest: wrapped by the KEK in the `keys` table, unwrapped into the signer (K1).
#[tokio::test]
async fn k1_wrapped_key_round_trips_through_the_keys_table() {
    for ts in kinko_store::testing::test_stores().await {
        let name = ts.name;
        let kek = Kek::generate();
        let secret = hot_secret();
        let blob = kek.wrap("hot-1", "evm-hot-wallet", &secret[..]).unwrap();
        let record = KeyRecord {
            id: "hot-1".into(),
            purpose: "evm-hot-wallet".into(),
            chain: "evm:31337".into(),
            address: "0x0".into(),
            wrapped_hex: hex::encode(&blob),
            state: "active".into(),
            created_at_ms: 1,
        };
        assert!(ts.store.insert_key(&record).await.unwrap(), "{name}");
        let mut again = record.clone();
        again.state = "other".into();
        assert!(!ts.store.insert_key(&again).await.unwrap(), "{name}: insert is idempotent on id");
        let loaded = ts.store.key("hot-1").await.unwrap().unwrap();
        assert_eq!(loaded, record, "{name}");
        assert!(!format!("{loaded:?}").contains(&record.wrapped_hex), "{name}");
        assert_eq!(ts.store.keys_by_purpose("evm-hot-wallet").await.unwrap().len(), 1, "{name}");
        assert!(ts.store.keys_by_purpose("master-seed").await.unwrap().is_empty(), "{name}");
        assert!(ts.store.key("missing").await.unwrap().is_none(), "{name}");

        let plain = kek.unwrap(&loaded.id, &loaded.purpose, &hex::decode(&loaded.wrapped_hex).unwrap()).unwrap();
        let mut bytes = Zeroizing::new([0u8; 32]);
        bytes.copy_from_slice(&plain);
        let signer = LocalSigner::new(Arc::new(MemoryJournal::new()));
        let address = signer.add_secp256k1_key(&loaded.id, bytes).unwrap();
        signer.set_quorum(kinko_signer::testing::auto_quorum(&loaded.id, &["ETH"])).unwrap();
        signer.sign_evm(&request(&tx(0, 5, 2, 1), intent("w1", 5, &address))).await.unwrap();
    }
}
