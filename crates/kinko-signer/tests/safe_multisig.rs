//! K15, the multisig cold wallet: a Safe 1.4.1 (the audited contracts from npm `@safe-global/safe-contracts`,
//! deployed on a real anvil) with three owners, each key in its own kinko signer, threshold 2.
//!
//! What is shown: two owner signatures move exactly the amount and advance the Safe's nonce; one does not
//! (the Safe reverts with GS020) and the funds stay; a delegatecall payload, or a self-call that changes
//! owners, threshold or guard, presented under a withdrawal intent is refused by every signer, naming
//! what it is (the Bybit and WazirX lesson); a Safe transaction that differs from the intent in destination
//! or amount is refused; and the signer's hash is the Safe contract's own `getTransactionHash`.
//!
//! The control call data is built here from the function signatures' keccak, not with the signer's own ABI
//! definitions, so a wrong selector in the signer shows up as a failure.

use std::sync::Arc;

use alloy_consensus::{SignableTransaction, TxEip1559};
use alloy_primitives::TxKind;
use alloy_primitives::{Address, Bytes, U256, keccak256};
use kinko_chain::anvil::{ACCOUNT0, ACCOUNT1, Anvil};
use kinko_chain::anvil_safe;
use kinko_chain::evm::rpc::EvmRpc;
use kinko_chain::evm::safe as chain_safe;
use kinko_core::intent::Intent;
use kinko_core::{Amount, ChainId};
use kinko_signer::safe::{OPERATION_CALL, OPERATION_DELEGATECALL, SafeSignRequest, SafeTxFields};
use kinko_signer::testing::MemoryJournal;
use kinko_signer::{EvmSignRequest, LocalSigner, Signer, SignerError};
use zeroize::Zeroizing;

const CHAIN: u64 = 31337;
const ETH: u128 = 1_000_000_000_000_000_000;
/// What the Safe holds at the start of each test.
const SAFE_FUNDS_WEI: u128 = 10 * ETH;
const AMOUNT_WEI: u128 = 3 * ETH / 2;
/// A fresh address with no balance on anvil.
const RECIPIENT: &str = "0x00000000000000000000000000000000000c0de1";
const OTHER: &str = "0x00000000000000000000000000000000000c0de2";

/// One owner: its own signer (own journal, own key ring, own configuration).
struct Owner {
    key_id: String,
    signer: LocalSigner,
    journal: Arc<MemoryJournal>,
    address: Address,
}

fn owner(n: u8, secret: Zeroizing<[u8; 32]>) -> Owner {
    let key_id = format!("safe-owner-{n}");
    let journal = Arc::new(MemoryJournal::new());
    let signer = LocalSigner::new(journal.clone());
    let address = signer.add_secp256k1_key(&key_id, secret).unwrap().parse().unwrap();
    signer.set_quorum(kinko_signer::testing::auto_quorum(&key_id, &["ETH"])).unwrap();
    Owner { key_id, signer, journal, address }
}

struct Fixture {
    anvil: Anvil,
    rpc: EvmRpc,
    safe: Address,
    owners: Vec<Owner>,
}

async fn fixture() -> Fixture {
    let anvil = Anvil::spawn(&[]).await.unwrap();
    let owners = vec![
        owner(1, Zeroizing::new([0x51; 32])),
        owner(2, Zeroizing::new([0x52; 32])),
        // The third owner's key as an offline custodian would load it: from its hex form, into a signer that
        // shares nothing with the other two.
        owner(3, {
            let mut k = Zeroizing::new([0u8; 32]);
            hex::decode_to_slice("5353535353535353535353535353535353535353535353535353535353535353", &mut *k).unwrap();
            k
        }),
    ];
    let addresses: Vec<Address> = owners.iter().map(|o| o.address).collect();
    let funder: Address = ACCOUNT0.parse().unwrap();
    let safe = anvil_safe::deploy_safe(anvil.url(), funder, &addresses, 2).await.unwrap();
    anvil.send_eth(ACCOUNT0, &format!("{safe:#x}"), SAFE_FUNDS_WEI).await.unwrap();
    for o in &owners {
        o.signer.add_safe(&o.key_id, CHAIN, safe).unwrap();
    }
    let rpc = EvmRpc::new(anvil.url()).unwrap();
    let state = chain_safe::read_state(anvil.url(), safe).await.unwrap();
    assert_eq!(state.threshold, 2);
    assert_eq!(state.nonce, 0);
    let mut on_chain = state.owners.clone();
    on_chain.sort();
    let mut expected = addresses.clone();
    expected.sort();
    assert_eq!(on_chain, expected, "the Safe's owners are the three signers' keys");
    assert_eq!(rpc.balance(safe).await.unwrap(), SAFE_FUNDS_WEI);
    Fixture { anvil, rpc, safe, owners }
}

fn intent(safe: Address, destination: &str, amount_wei: u128) -> Intent {
    Intent {
        id: "cold-w1".into(),
        asset: "ETH".parse().unwrap(),
        chain_id: ChainId(CHAIN),
        amount: Amount::from_base_units(amount_wei),
        destination: destination.into(),
        source_wallet: format!("{safe:#x}"),
        customer_id: "c1".into(),
        reason: "customer withdrawal".into(),
    }
}

fn transfer(to: &str, value_wei: u128, nonce: u64) -> SafeTxFields {
    SafeTxFields {
        to: to.parse().unwrap(),
        value: U256::from(value_wei),
        data: Bytes::new(),
        operation: OPERATION_CALL,
        safe_tx_gas: U256::ZERO,
        base_gas: U256::ZERO,
        gas_price: U256::ZERO,
        gas_token: Address::ZERO,
        refund_receiver: Address::ZERO,
        nonce: U256::from(nonce),
    }
}

fn request(o: &Owner, safe: Address, tx: SafeTxFields, intent: Intent) -> SafeSignRequest {
    SafeSignRequest {
        key_id: o.key_id.clone(),
        chain_id: CHAIN,
        safe_address: safe,
        tx,
        intent,
        approvals: vec![],
        actor: "cold-ops".into(),
        terminal: "test-host".into(),
    }
}

fn chain_tx(tx: &SafeTxFields) -> chain_safe::SafeTx {
    chain_safe::SafeTx {
        to: tx.to,
        value: tx.value,
        data: tx.data.clone(),
        operation: tx.operation,
        safeTxGas: tx.safe_tx_gas,
        baseGas: tx.base_gas,
        gasPrice: tx.gas_price,
        gasToken: tx.gas_token,
        refundReceiver: tx.refund_receiver,
        nonce: tx.nonce,
    }
}

fn selector(signature: &str) -> Vec<u8> {
    keccak256(signature.as_bytes())[..4].to_vec()
}

fn word_address(a: Address) -> Vec<u8> {
    let mut w = vec![0u8; 12];
    w.extend_from_slice(a.as_slice());
    w
}

fn word_u256(v: u64) -> Vec<u8> {
    U256::from(v).to_be_bytes::<32>().to_vec()
}

fn calldata(signature: &str, words: &[Vec<u8>]) -> Bytes {
    let mut out = selector(signature);
    for w in words {
        out.extend_from_slice(w);
    }
    out.into()
}

fn refusal(got: Result<[u8; 65], SignerError>) -> String {
    match got {
        Err(SignerError::Refused(m)) => m,
        other => panic!("expected Refused, got {other:?}"),
    }
}

fn assert_nothing_recorded(o: &Owner) {
    assert!(o.journal.access_log().is_empty(), "{}: a refusal leaves no key access log entry", o.key_id);
}

#[tokio::test]
async fn k15_safe_withdrawal_with_two_owner_signatures_succeeds() {
    let f = fixture().await;
    let tx = transfer(RECIPIENT, AMOUNT_WEI, 0);
    let shown = intent(f.safe, RECIPIENT, AMOUNT_WEI);

    // The signer's hash (its own code) = the builder's = the Safe contract's own getTransactionHash.
    let (_, signer_hash) = kinko_signer::safe::safe_tx_hash(&tx, CHAIN, f.safe);
    assert_eq!(signer_hash, chain_safe::safe_tx_hash(&chain_tx(&tx), CHAIN, f.safe));
    assert_eq!(signer_hash, chain_safe::contract_tx_hash(f.anvil.url(), f.safe, &chain_tx(&tx)).await.unwrap());

    // Owners 3 (the "offline" one) and 1 sign; 2 is not asked.
    let mut signatures = Vec::new();
    for o in [&f.owners[2], &f.owners[0]] {
        let sig = o.signer.sign_safe_tx(&request(o, f.safe, tx.clone(), shown.clone())).await.unwrap();
        assert!(sig[64] == 27 || sig[64] == 28, "Safe's v");
        signatures.push((o.address, sig));
        let log = o.journal.access_log();
        assert_eq!(log.len(), 1, "{}: one key access log entry", o.key_id);
        assert_eq!(log[0].operation, "sign_safe");
        assert_eq!(log[0].intent_hash, shown.hash());
    }
    let packed = chain_safe::pack_signatures(&signatures).unwrap();
    let relayer: Address = ACCOUNT1.parse().unwrap();
    anvil_safe::exec_safe_tx(f.anvil.url(), relayer, f.safe, &chain_tx(&tx), packed).await.unwrap();

    let recipient: Address = RECIPIENT.parse().unwrap();
    assert_eq!(f.rpc.balance(recipient).await.unwrap(), AMOUNT_WEI, "the recipient got exactly the amount");
    assert_eq!(f.rpc.balance(f.safe).await.unwrap(), SAFE_FUNDS_WEI - AMOUNT_WEI, "gas was the relayer's");
    assert_eq!(chain_safe::read_state(f.anvil.url(), f.safe).await.unwrap().nonce, 1, "the Safe nonce advanced");

    // The same owner asked again for the same transaction: the same signature (RFC 6979), no harm. A
    // different transaction for the used Safe nonce: a double sign.
    let o = &f.owners[0];
    let again = o.signer.sign_safe_tx(&request(o, f.safe, tx.clone(), shown.clone())).await.unwrap();
    assert_eq!(again, signatures[1].1);
    let other = transfer(OTHER, AMOUNT_WEI, 0);
    let got = o.signer.sign_safe_tx(&request(o, f.safe, other, intent(f.safe, OTHER, AMOUNT_WEI))).await;
    assert!(matches!(got, Err(SignerError::DoubleSign { ref slot, .. }) if slot.starts_with("safe:")), "{got:?}");
}

#[tokio::test]
async fn k15_safe_withdrawal_with_one_signature_fails() {
    let f = fixture().await;
    let tx = transfer(RECIPIENT, AMOUNT_WEI, 0);
    let o = &f.owners[1];
    let sig = o.signer.sign_safe_tx(&request(o, f.safe, tx.clone(), intent(f.safe, RECIPIENT, AMOUNT_WEI))).await;
    let packed = chain_safe::pack_signatures(&[(o.address, sig.unwrap())]).unwrap();
    let relayer: Address = ACCOUNT1.parse().unwrap();
    let got = anvil_safe::exec_safe_tx(f.anvil.url(), relayer, f.safe, &chain_tx(&tx), packed).await;
    // GS020: "Signatures data too short" — one 65-byte signature where the threshold needs two.
    match got {
        Err(e) => assert!(e.to_string().contains("GS020"), "{e}"),
        Ok(hash) => panic!("execTransaction with one of two signatures succeeded: {hash}"),
    }
    // The same signature twice does not make two either (GS026: owners must be strictly increasing).
    let twice = [sig_bytes(o, &f, &tx).await, sig_bytes(o, &f, &tx).await].concat();
    let got = anvil_safe::exec_safe_tx(f.anvil.url(), relayer, f.safe, &chain_tx(&tx), twice.into()).await;
    assert!(matches!(got, Err(ref e) if e.to_string().contains("GS026")), "{got:?}");
    let recipient: Address = RECIPIENT.parse().unwrap();
    assert_eq!(f.rpc.balance(recipient).await.unwrap(), 0);
    assert_eq!(f.rpc.balance(f.safe).await.unwrap(), SAFE_FUNDS_WEI, "the funds stay in the Safe");
    assert_eq!(chain_safe::read_state(f.anvil.url(), f.safe).await.unwrap().nonce, 0);
}

async fn sig_bytes(o: &Owner, f: &Fixture, tx: &SafeTxFields) -> Vec<u8> {
    let req = request(o, f.safe, tx.clone(), intent(f.safe, RECIPIENT, AMOUNT_WEI));
    o.signer.sign_safe_tx(&req).await.unwrap().to_vec()
}

#[tokio::test]
async fn k15_delegatecall_payload_presented_as_transfer_is_refused_by_every_signer() {
    let f = fixture().await;
    // The intent every owner is shown: a plain withdrawal to RECIPIENT.
    let shown = intent(f.safe, RECIPIENT, AMOUNT_WEI);
    let attacker: Address = OTHER.parse().unwrap();

    // Bybit: the transaction's fields are a transfer to RECIPIENT, but operation = delegatecall.
    let mut delegate = transfer(RECIPIENT, AMOUNT_WEI, 0);
    delegate.operation = OPERATION_DELEGATECALL;
    // And the attacker contract variant: delegatecall into some contract with a "sweep" call.
    let mut delegate_contract = transfer(OTHER, 0, 0);
    delegate_contract.operation = OPERATION_DELEGATECALL;
    delegate_contract.data = calldata("sweepETH(address)", &[word_address(attacker)]);
    for tx in [delegate, delegate_contract] {
        for o in &f.owners {
            let m = refusal(o.signer.sign_safe_tx(&request(o, f.safe, tx.clone(), shown.clone())).await);
            assert!(m.contains("delegatecall"), "{}: {m}", o.key_id);
        }
    }

    // Self-calls that change control, presented under the same withdrawal intent.
    let self_calls = [
        (
            "addOwnerWithThreshold",
            calldata("addOwnerWithThreshold(address,uint256)", &[word_address(attacker), word_u256(1)]),
        ),
        ("changeThreshold", calldata("changeThreshold(uint256)", &[word_u256(1)])),
        ("setGuard", calldata("setGuard(address)", &[word_address(attacker)])),
    ];
    for (name, data) in &self_calls {
        let mut tx = transfer(&format!("{:#x}", f.safe), 0, 0);
        tx.data = data.clone();
        for o in &f.owners {
            let m = refusal(o.signer.sign_safe_tx(&request(o, f.safe, tx.clone(), shown.clone())).await);
            assert!(m.contains("calls the Safe") && m.contains("threshold"), "{} {name}: {m}", o.key_id);
        }
        // The same call data aimed anywhere else is refused by name.
        let mut tx = transfer(RECIPIENT, 0, 0);
        tx.data = data.clone();
        for o in &f.owners {
            let m = refusal(o.signer.sign_safe_tx(&request(o, f.safe, tx.clone(), shown.clone())).await);
            assert!(m.contains(name), "{} {name}: {m}", o.key_id);
        }
    }
    // A refund paid from the Safe to whoever relays is refused too.
    let mut refund = transfer(RECIPIENT, AMOUNT_WEI, 0);
    refund.gas_price = U256::from(1_000_000_000u64);
    refund.refund_receiver = attacker;
    for o in &f.owners {
        let m = refusal(o.signer.sign_safe_tx(&request(o, f.safe, refund.clone(), shown.clone())).await);
        assert!(m.contains("refund"), "{}: {m}", o.key_id);
        assert_nothing_recorded(o);
    }
    assert_eq!(f.rpc.balance(f.safe).await.unwrap(), SAFE_FUNDS_WEI);
}

#[tokio::test]
async fn k15_safe_tx_that_differs_from_the_intent_is_refused() {
    let f = fixture().await;
    let shown = intent(f.safe, RECIPIENT, AMOUNT_WEI);
    for o in &f.owners {
        let wrong_destination = transfer(OTHER, AMOUNT_WEI, 0);
        let got = o.signer.sign_safe_tx(&request(o, f.safe, wrong_destination, shown.clone())).await;
        assert!(matches!(got, Err(SignerError::IntentMismatch { field: "destination", .. })), "{}: {got:?}", o.key_id);
        let wrong_amount = transfer(RECIPIENT, AMOUNT_WEI + 1, 0);
        let got = o.signer.sign_safe_tx(&request(o, f.safe, wrong_amount, shown.clone())).await;
        assert!(matches!(got, Err(SignerError::IntentMismatch { field: "amount", .. })), "{}: {got:?}", o.key_id);
        // Value hidden in call data to the right destination: refused, the intent is a plain transfer.
        let mut with_data = transfer(RECIPIENT, AMOUNT_WEI, 0);
        with_data.data = calldata("transfer(address,uint256)", &[word_address(OTHER.parse().unwrap()), word_u256(1)]);
        let m = refusal(o.signer.sign_safe_tx(&request(o, f.safe, with_data, shown.clone())).await);
        assert!(m.contains("calls a contract"), "{}: {m}", o.key_id);
        // A Safe the signer has not been configured for (e.g. one the attacker controls).
        let foreign: Address = OTHER.parse().unwrap();
        let m = refusal(
            o.signer
                .sign_safe_tx(&request(
                    o,
                    foreign,
                    transfer(RECIPIENT, AMOUNT_WEI, 0),
                    intent(foreign, RECIPIENT, AMOUNT_WEI),
                ))
                .await,
        );
        assert!(m.contains("not a Safe this signer has configured"), "{}: {m}", o.key_id);
        assert_nothing_recorded(o);
    }
    // The intent's source wallet must be the Safe.
    let o = &f.owners[0];
    let mut elsewhere = shown.clone();
    elsewhere.source_wallet = OTHER.into();
    let got = o.signer.sign_safe_tx(&request(o, f.safe, transfer(RECIPIENT, AMOUNT_WEI, 0), elsewhere)).await;
    assert!(matches!(got, Err(SignerError::IntentMismatch { field: "source_wallet", .. })), "{got:?}");
}

/// The hot key as relayer: `execTransaction` to a Safe configured for it, value 0, carrying a Safe
/// transaction that matches the intent exactly as an owner would check it.
struct Relayer {
    signer: LocalSigner,
    address: Address,
}

const RELAYER_KEY: &str = "hot-relay-1";
const RELAY_GAS: u64 = 300_000;

async fn relayer(f: &Fixture, configure_safe: bool) -> Relayer {
    let signer = LocalSigner::new(Arc::new(MemoryJournal::new()));
    let address: Address = signer.add_secp256k1_key(RELAYER_KEY, Zeroizing::new([0x61; 32])).unwrap().parse().unwrap();
    signer.set_quorum(kinko_signer::testing::auto_quorum(RELAYER_KEY, &["ETH"])).unwrap();
    if configure_safe {
        signer.add_safe(RELAYER_KEY, CHAIN, f.safe).unwrap();
    }
    f.anvil.send_eth(ACCOUNT0, &format!("{address:#x}"), ETH).await.unwrap();
    Relayer { signer, address }
}

async fn relay_request(
    f: &Fixture,
    r: &Relayer,
    exec_data: Vec<u8>,
    outer_value_wei: u128,
    shown: Intent,
) -> EvmSignRequest {
    let fees = f.rpc.fee_estimate().await.unwrap();
    let nonce = f.rpc.nonce(r.address, kinko_chain::evm::rpc::NonceAt::Pending).await.unwrap();
    let tx = TxEip1559 {
        chain_id: CHAIN,
        nonce,
        gas_limit: RELAY_GAS,
        max_fee_per_gas: fees.max_fee_per_gas,
        max_priority_fee_per_gas: fees.max_priority_fee_per_gas,
        to: TxKind::Call(f.safe),
        value: U256::from(outer_value_wei),
        access_list: Default::default(),
        input: exec_data.into(),
    };
    let mut payload = Vec::new();
    tx.encode_for_signing(&mut payload);
    EvmSignRequest {
        key_id: RELAYER_KEY.into(),
        chain_id: CHAIN,
        nonce,
        payload,
        intent: shown,
        approvals: vec![],
        actor: "pipeline".into(),
        terminal: "test-host".into(),
        evacuation: None,
    }
}

async fn owner_signatures(f: &Fixture, tx: &SafeTxFields, shown: &Intent) -> Bytes {
    let mut signatures = Vec::new();
    for o in &f.owners[..2] {
        let sig = o.signer.sign_safe_tx(&request(o, f.safe, tx.clone(), shown.clone())).await.unwrap();
        signatures.push((o.address, sig));
    }
    chain_safe::pack_signatures(&signatures).unwrap()
}

#[tokio::test]
async fn k15_hot_key_relays_exec_transaction_only_for_a_configured_safe_and_the_intent() {
    let f = fixture().await;
    let shown = intent(f.safe, RECIPIENT, AMOUNT_WEI);
    let tx = transfer(RECIPIENT, AMOUNT_WEI, 0);
    let packed = owner_signatures(&f, &tx, &shown).await;
    let exec = chain_safe::exec_transaction_calldata(&chain_tx(&tx), packed.clone());

    // A hot signer without the Safe in its configuration refuses it as a plain transfer: the intent's source
    // is the Safe, not its key.
    let stranger = relayer(&f, false).await;
    let got = stranger.signer.sign_evm(&relay_request(&f, &stranger, exec.clone(), 0, shown.clone()).await).await;
    assert!(matches!(got, Err(SignerError::IntentMismatch { field: "source_wallet", .. })), "{got:?}");
    // And with an intent naming its own address as source, the execTransaction itself is refused.
    let mut own = shown.clone();
    own.source_wallet = format!("{:#x}", stranger.address);
    let m = refusal(stranger.signer.sign_evm(&relay_request(&f, &stranger, exec.clone(), 0, own).await).await);
    assert!(m.contains("execTransaction"), "{m}");

    let r = relayer(&f, true).await;
    // The outer transaction moves nothing itself.
    let got = r.signer.sign_evm(&relay_request(&f, &r, exec.clone(), 1, shown.clone()).await).await;
    assert!(matches!(got, Err(SignerError::IntentMismatch { field: "native value", .. })), "{got:?}");
    // The inner Safe transaction is checked as an owner checks it: another destination, or delegatecall.
    let mut elsewhere = tx.clone();
    elsewhere.to = OTHER.parse().unwrap();
    let bad = chain_safe::exec_transaction_calldata(&chain_tx(&elsewhere), packed.clone());
    let got = r.signer.sign_evm(&relay_request(&f, &r, bad, 0, shown.clone()).await).await;
    assert!(matches!(got, Err(SignerError::IntentMismatch { field: "destination", .. })), "{got:?}");
    let mut delegate = tx.clone();
    delegate.operation = OPERATION_DELEGATECALL;
    let bad = chain_safe::exec_transaction_calldata(&chain_tx(&delegate), packed.clone());
    let m = refusal(r.signer.sign_evm(&relay_request(&f, &r, bad, 0, shown.clone()).await).await);
    assert!(m.contains("delegatecall"), "{m}");

    // The matching relay is signed, broadcast and executed.
    let req = relay_request(&f, &r, exec, 0, shown.clone()).await;
    let sig = r.signer.sign_evm(&req).await.unwrap();
    let signed = kinko_chain::evm::build::assemble_signed(&req.payload, &sig).unwrap();
    f.rpc.send_raw(&signed.raw).await.unwrap();
    // Anvil mines on arrival, but the receipt can lag the send under load: poll, bounded.
    let deadline = std::time::Instant::now() + kinko_chain::anvil_safe::RECEIPT_TIMEOUT;
    let receipt = loop {
        if let Some(r) = f.rpc.receipt(signed.tx_hash).await.unwrap() {
            break r;
        }
        assert!(std::time::Instant::now() < deadline, "the relayed execTransaction was not mined in time");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(receipt.success);
    let recipient: Address = RECIPIENT.parse().unwrap();
    assert_eq!(f.rpc.balance(recipient).await.unwrap(), AMOUNT_WEI);
    assert_eq!(f.rpc.balance(f.safe).await.unwrap(), SAFE_FUNDS_WEI - AMOUNT_WEI, "the relayer paid the gas");
    assert_eq!(chain_safe::read_state(f.anvil.url(), f.safe).await.unwrap().nonce, 1);
}

/// The socket protocol carries the Safe request as `sign_safe`, round-tripping every field.
#[test]
fn k15_sign_safe_socket_request_round_trips() {
    let safe: Address = OTHER.parse().unwrap();
    let o = owner(1, Zeroizing::new([0x51; 32]));
    let mut tx = transfer(RECIPIENT, AMOUNT_WEI, 7);
    tx.data = calldata("transfer(address,uint256)", &[word_address(safe), word_u256(5)]);
    let req = request(&o, safe, tx, intent(safe, RECIPIENT, AMOUNT_WEI));
    let wire = kinko_signer::server::Request::SignSafe { request: Box::new(req.clone()) };
    let line = serde_json::to_string(&wire).unwrap();
    assert!(line.contains("\"op\":\"sign_safe\""), "{line}");
    match serde_json::from_str(&line).unwrap() {
        kinko_signer::server::Request::SignSafe { request } => assert_eq!(*request, req),
        other => panic!("decoded as {other:?}"),
    }
}
