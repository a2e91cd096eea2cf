//! EIP-1559 transaction building (M9a). Every encoding goes through alloy: the unsigned payload is what
//! the signer decodes and checks, so it must be exactly the bytes alloy signs over.

use alloy_consensus::{SignableTransaction, TxEip1559, TxEnvelope};
use alloy_eips::eip2718::Encodable2718;
use alloy_primitives::{Address, Bytes, Signature, TxKind, U256, keccak256};
use alloy_rlp::Decodable;

use super::FeeEstimate;

/// The EIP-2718 type byte of EIP-1559 transactions.
pub const EIP1559_TX_TYPE: u8 = 0x02;

/// An unsigned transaction: `payload` is the EIP-2718 typed signing encoding (`0x02 || rlp(fields)`),
/// `signing_hash` its keccak256, the digest the key signs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnsignedEvmTx {
    pub payload: Vec<u8>,
    pub signing_hash: [u8; 32],
}

/// A signed transaction ready for `eth_sendRawTransaction`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedEvmTx {
    pub raw: Vec<u8>,
    pub tx_hash: [u8; 32],
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("payload: not an EIP-1559 (type 0x02) transaction")]
    NotEip1559,
    #[error("payload: cannot be decoded as an EIP-1559 transaction: {0}")]
    Decode(String),
    #[error("payload: {0} trailing bytes after the transaction")]
    TrailingBytes(usize),
    #[error("signature: y_parity must be 0 or 1, got {0}")]
    BadParity(u8),
}

/// A native-value transfer. The chain id is always set (C3): a signature over it cannot be replayed on
/// another chain.
pub fn native_transfer(
    chain_id: u64,
    nonce: u64,
    to: Address,
    value_wei: u128,
    fees: FeeEstimate,
    gas_limit: u64,
) -> UnsignedEvmTx {
    let tx = TxEip1559 {
        chain_id,
        nonce,
        gas_limit,
        max_fee_per_gas: fees.max_fee_per_gas,
        max_priority_fee_per_gas: fees.max_priority_fee_per_gas,
        to: TxKind::Call(to),
        value: U256::from(value_wei),
        access_list: Default::default(),
        input: Bytes::new(),
    };
    let payload = tx.encoded_for_signing();
    let signing_hash = keccak256(&payload).0;
    UnsignedEvmTx { payload, signing_hash }
}

/// Decodes an unsigned payload produced by [`native_transfer`] (or anyone else's EIP-1559 signing
/// encoding). The signer uses this to see what it is asked to sign.
pub fn decode_unsigned(payload: &[u8]) -> Result<TxEip1559, BuildError> {
    let (ty, mut body) = payload.split_first().ok_or(BuildError::NotEip1559)?;
    if *ty != EIP1559_TX_TYPE {
        return Err(BuildError::NotEip1559);
    }
    let tx = TxEip1559::decode(&mut body).map_err(|e| BuildError::Decode(e.to_string()))?;
    if !body.is_empty() {
        return Err(BuildError::TrailingBytes(body.len()));
    }
    Ok(tx)
}

/// Attaches a signature (`r || s || y_parity`) to an unsigned payload and encodes the signed
/// transaction. The signature is not verified here: the signer verifies what it produces.
pub fn assemble_signed(payload: &[u8], signature: &[u8; 65]) -> Result<SignedEvmTx, BuildError> {
    let tx = decode_unsigned(payload)?;
    let parity = match signature[64] {
        0 => false,
        1 => true,
        other => return Err(BuildError::BadParity(other)),
    };
    let sig = Signature::new(U256::from_be_slice(&signature[..32]), U256::from_be_slice(&signature[32..64]), parity);
    let envelope = TxEnvelope::Eip1559(tx.into_signed(sig));
    let raw = envelope.encoded_2718();
    let tx_hash = keccak256(&raw).0;
    Ok(SignedEvmTx { raw, tx_hash })
}

/// Fees for a replacement of a stuck transaction (C4). Nodes only accept a replacement for the same
/// nonce when both fields rise by at least 10 %; 12.5 % rounded up leaves margin. The market may have
/// moved further, so the current estimate wins when it is higher. `None` when the bid would exceed the
/// operator's cap: kinko never bids above it, however stuck a transaction is.
pub fn bump_fees(previous: FeeEstimate, current: FeeEstimate, cap_wei: u128) -> Option<FeeEstimate> {
    let bump = |prev: u128, cur: u128| -> Option<u128> {
        // prev * 1.125 rounded up == prev + ceil(prev / 8)
        let scaled = prev.checked_add(prev.div_ceil(8))?;
        let plus_one = prev.checked_add(1)?;
        Some(cur.max(scaled).max(plus_one))
    };
    let max_fee_per_gas = bump(previous.max_fee_per_gas, current.max_fee_per_gas)?;
    let max_priority_fee_per_gas = bump(previous.max_priority_fee_per_gas, current.max_priority_fee_per_gas)?;
    if max_fee_per_gas > cap_wei {
        return None;
    }
    // A priority fee above the max fee is invalid; the max fee bounds what is paid anyway.
    let max_priority_fee_per_gas = max_priority_fee_per_gas.min(max_fee_per_gas);
    Some(FeeEstimate { max_fee_per_gas, max_priority_fee_per_gas })
}

#[cfg(test)]
mod tests {
    use alloy_consensus::Transaction;
    use alloy_eips::eip2718::Decodable2718;

    use super::*;

    fn fees() -> FeeEstimate {
        FeeEstimate { max_fee_per_gas: 3_000_000_000, max_priority_fee_per_gas: 1_000_000_000 }
    }

    fn to() -> Address {
        "0x70997970c51812dc3a010c7d01b50e0d17dc79c8".parse().unwrap()
    }

    #[test]
    fn c3_unsigned_payload_round_trips_with_chain_id() {
        let u = native_transfer(31337, 7, to(), 123_456, fees(), crate::evm::NATIVE_TRANSFER_GAS);
        assert_eq!(u.payload[0], EIP1559_TX_TYPE);
        assert_eq!(u.signing_hash, keccak256(&u.payload).0);
        let tx = decode_unsigned(&u.payload).unwrap();
        assert_eq!(tx.chain_id, 31337);
        assert_eq!(tx.nonce, 7);
        assert_eq!(tx.to, TxKind::Call(to()));
        assert_eq!(tx.value, U256::from(123_456u64));
        assert_eq!(tx.gas_limit, 21_000);
        assert!(tx.input.is_empty() && tx.access_list.is_empty());
        assert_eq!(tx.signature_hash().0, u.signing_hash);
        // A different chain id gives a different digest: the signature cannot be replayed (C3).
        let other = native_transfer(1, 7, to(), 123_456, fees(), 21_000);
        assert_ne!(other.signing_hash, u.signing_hash);
    }

    #[test]
    fn c3_signed_tx_decodes_recovers_and_keeps_chain_id() {
        use k256::ecdsa::SigningKey;
        // anvil's account 0 key: public test key, never used for value.
        let key = SigningKey::from_slice(
            &hex::decode("ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80").unwrap(),
        )
        .unwrap();
        let u = native_transfer(31337, 0, to(), 1, fees(), 21_000);
        let (sig, recid) = key.sign_prehash_recoverable(&u.signing_hash).unwrap();
        let mut bytes = [0u8; 65];
        bytes[..64].copy_from_slice(&sig.to_bytes());
        bytes[64] = recid.to_byte();
        let signed = assemble_signed(&u.payload, &bytes).unwrap();
        assert_eq!(signed.tx_hash, keccak256(&signed.raw).0);
        let env = TxEnvelope::decode_2718(&mut signed.raw.as_slice()).unwrap();
        assert_eq!(env.chain_id(), Some(31337));
        use alloy_consensus::transaction::SignerRecoverable;
        let from = env.recover_signer().unwrap();
        assert_eq!(from, "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266".parse::<Address>().unwrap());
        bytes[64] = 27;
        assert!(matches!(assemble_signed(&u.payload, &bytes), Err(BuildError::BadParity(27))));
    }

    /// M9a, K20: payloads that do not decode as EIP-1559 are refused, never guessed at.
    #[test]
    fn malformed_payloads_are_refused() {
        assert!(matches!(decode_unsigned(&[]), Err(BuildError::NotEip1559)));
        assert!(matches!(decode_unsigned(&[0x01, 0xc0]), Err(BuildError::NotEip1559)));
        assert!(matches!(decode_unsigned(&[0x02, 0xc0]), Err(BuildError::Decode(_))));
        let mut p = native_transfer(1, 0, to(), 1, fees(), 21_000).payload;
        p.push(0);
        assert!(matches!(decode_unsigned(&p), Err(BuildError::TrailingBytes(1))));
    }

    #[test]
    fn c4_bump_rules_and_cap() {
        let prev = FeeEstimate { max_fee_per_gas: 100, max_priority_fee_per_gas: 8 };
        let low = FeeEstimate { max_fee_per_gas: 1, max_priority_fee_per_gas: 1 };
        // 12.5 % rounded up.
        assert_eq!(
            bump_fees(prev, low, 1_000),
            Some(FeeEstimate { max_fee_per_gas: 113, max_priority_fee_per_gas: 9 })
        );
        // The current market wins when higher.
        let high = FeeEstimate { max_fee_per_gas: 500, max_priority_fee_per_gas: 50 };
        assert_eq!(bump_fees(prev, high, 1_000), Some(high));
        // At least +1 even for tiny values.
        let tiny = FeeEstimate { max_fee_per_gas: 1, max_priority_fee_per_gas: 0 };
        assert_eq!(bump_fees(tiny, tiny, 10), Some(FeeEstimate { max_fee_per_gas: 2, max_priority_fee_per_gas: 1 }));
        // Above the cap: no bid.
        assert_eq!(bump_fees(prev, low, 112), None);
        assert_eq!(bump_fees(prev, high, 499), None);
        let huge = FeeEstimate { max_fee_per_gas: u128::MAX, max_priority_fee_per_gas: 1 };
        assert_eq!(bump_fees(huge, huge, u128::MAX), None);
    }
}
