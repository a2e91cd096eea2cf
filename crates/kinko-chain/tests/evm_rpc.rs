//! The EVM adapter against a real anvil (M5, M9b, C3, C5).

use alloy_primitives::Address;
use k256::ecdsa::SigningKey;
use kinko_chain::anvil::{ACCOUNT0, ACCOUNT1, Anvil};
use kinko_chain::evm::build::{assemble_signed, native_transfer};
use kinko_chain::evm::rpc::{EvmRpc, NonceAt, SendOutcome};
use kinko_chain::evm::{FeeEstimate, NATIVE_TRANSFER_GAS};

/// anvil's account 0 private key (public knowledge; test chain only).
const KEY0: &str = "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";

fn sign(payload: &[u8], hash: &[u8; 32]) -> kinko_chain::evm::build::SignedEvmTx {
    let key = SigningKey::from_slice(&hex::decode(KEY0).unwrap()).unwrap();
    let (sig, recid) = key.sign_prehash_recoverable(hash).unwrap();
    let mut bytes = [0u8; 65];
    bytes[..64].copy_from_slice(&sig.to_bytes());
    bytes[64] = recid.to_byte();
    assemble_signed(payload, &bytes).unwrap()
}

fn addr(s: &str) -> Address {
    s.parse().unwrap()
}

#[tokio::test]
async fn m5_blocks_transfers_and_hashes() {
    let anvil = Anvil::spawn(&[]).await.unwrap();
    let rpc = EvmRpc::new(anvil.url()).unwrap();
    assert_eq!(rpc.chain_id().await.unwrap(), 31337);
    assert_eq!(rpc.block_number().await.unwrap(), 0);
    let tx = anvil.send_eth(ACCOUNT0, ACCOUNT1, 12_345).await.unwrap();
    // A zero-value transaction is not a transfer.
    anvil.send_eth(ACCOUNT0, ACCOUNT1, 0).await.unwrap();
    let b1 = rpc.block(1).await.unwrap().unwrap();
    assert_eq!(b1.header.number, 1);
    assert_eq!(b1.header.parent_hash, rpc.block_hash(0).await.unwrap().unwrap());
    assert_eq!(rpc.block_hash(1).await.unwrap(), Some(b1.header.hash));
    assert_eq!(b1.transfers.len(), 1);
    let t = &b1.transfers[0];
    assert_eq!(format!("0x{}", hex::encode(t.tx_hash)), tx);
    assert_eq!((t.from, t.to, t.value_wei, t.nonce), (addr(ACCOUNT0), addr(ACCOUNT1), 12_345, 0));
    assert_eq!(rpc.block(99).await.unwrap(), None);
    assert_eq!(rpc.block_hash(99).await.unwrap(), None);
}

#[tokio::test]
async fn c3_c5_signed_transfer_is_accepted_tracked_and_resend_is_harmless() {
    let anvil = Anvil::spawn(&[]).await.unwrap();
    let rpc = EvmRpc::new(anvil.url()).unwrap();
    anvil.set_automine(false).await.unwrap();
    let fees = rpc.fee_estimate().await.unwrap();
    assert!(fees.max_priority_fee_per_gas >= 1_000_000_000);
    assert!(fees.max_fee_per_gas > fees.max_priority_fee_per_gas);
    let nonce = rpc.nonce(addr(ACCOUNT0), NonceAt::Pending).await.unwrap();
    let dest = addr("0x1111111111111111111111111111111111111111");
    let u = native_transfer(31337, nonce, dest, 1_000, fees, NATIVE_TRANSFER_GAS);
    let signed = sign(&u.payload, &u.signing_hash);
    assert_eq!(rpc.send_raw(&signed.raw).await.unwrap(), SendOutcome::Accepted);
    assert_eq!(rpc.send_raw(&signed.raw).await.unwrap(), SendOutcome::AlreadyKnown);
    assert_eq!(rpc.nonce(addr(ACCOUNT0), NonceAt::Pending).await.unwrap(), nonce + 1);
    assert_eq!(rpc.nonce(addr(ACCOUNT0), NonceAt::Latest).await.unwrap(), nonce);
    assert_eq!(rpc.receipt(signed.tx_hash).await.unwrap(), None);
    anvil.mine(1).await.unwrap();
    let r = rpc.receipt(signed.tx_hash).await.unwrap().unwrap();
    assert!(r.success);
    assert_eq!(r.block_number, 1);
    assert_eq!(r.gas_used, NATIVE_TRANSFER_GAS);
    assert!(r.effective_gas_price > 0 && r.effective_gas_price <= fees.max_fee_per_gas);
    assert_eq!(rpc.balance(dest).await.unwrap(), 1_000);
    // Same nonce again after it was mined: the node says the nonce is used.
    let again = native_transfer(31337, nonce, dest, 2_000, fees, NATIVE_TRANSFER_GAS);
    let again = sign(&again.payload, &again.signing_hash);
    assert_eq!(rpc.send_raw(&again.raw).await.unwrap(), SendOutcome::NonceConsumed);
}

/// C3: a transaction signed for another chain id is refused by the node.
#[tokio::test]
async fn c3_wrong_chain_id_is_rejected() {
    let anvil = Anvil::spawn(&[]).await.unwrap();
    let rpc = EvmRpc::new(anvil.url()).unwrap();
    let fees = FeeEstimate { max_fee_per_gas: 10_000_000_000, max_priority_fee_per_gas: 1_000_000_000 };
    let u = native_transfer(1, 0, addr(ACCOUNT1), 1, fees, NATIVE_TRANSFER_GAS);
    let signed = sign(&u.payload, &u.signing_hash);
    let err = rpc.send_raw(&signed.raw).await.unwrap_err();
    assert!(err.to_string().contains("eth_sendRawTransaction"), "{err}");
}

/// C2: what the re-org tests rely on — anvil_reorg keeps the height, changes the hashes and removes the
/// original transactions; anvil_rollback lowers the height.
#[tokio::test]
async fn c2_anvil_reorg_replaces_blocks_and_drops_their_txs() {
    let anvil = Anvil::spawn(&[]).await.unwrap();
    let rpc = EvmRpc::new(anvil.url()).unwrap();
    anvil.send_eth(ACCOUNT0, ACCOUNT1, 5).await.unwrap();
    anvil.mine(2).await.unwrap();
    let before = rpc.block(1).await.unwrap().unwrap();
    assert_eq!(before.transfers.len(), 1);
    anvil.reorg(3).await.unwrap();
    assert_eq!(rpc.block_number().await.unwrap(), 3);
    let after = rpc.block(1).await.unwrap().unwrap();
    assert_ne!(after.header.hash, before.header.hash);
    assert!(after.transfers.is_empty());
    assert_eq!(rpc.receipt(before.transfers[0].tx_hash).await.unwrap(), None);
    assert_eq!(rpc.nonce(addr(ACCOUNT0), NonceAt::Pending).await.unwrap(), 0);
    anvil.rollback(2).await.unwrap();
    assert_eq!(rpc.block_number().await.unwrap(), 1);
}
