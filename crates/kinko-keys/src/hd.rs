//! Hierarchical deterministic keys (BIP32 via rust-bitcoin). Deposit addresses are derived from an
//! account-level xpub by public derivation, so the side that hands out addresses and watches the chain
//! holds no private key (K5, K6).
//!
//! Paths (BIP44, coin type 60 for Ethereum):
//! - deposit addresses: `m/44'/60'/0'/0/i` — the xpub at `m/44'/60'/0'` is exported; `0/i` is public.
//! - hot wallet: `m/44'/60'/1'/0/0` — a different hardened account, so the deposit xpub reveals nothing
//!   about it.

use std::str::FromStr;

use bitcoin::NetworkKind;
use bitcoin::bip32::{ChildNumber, DerivationPath, Xpriv, Xpub};
use bitcoin::secp256k1::{PublicKey, Secp256k1};

#[derive(Debug, thiserror::Error)]
pub enum HdError {
    #[error("derivation index {0} is outside the non-hardened range")]
    IndexOutOfRange(u32),
    #[error("bip32: {0}")]
    Bip32(#[from] bitcoin::bip32::Error),
    #[error("mnemonic: {0}")]
    Mnemonic(String),
}

pub const EVM_DEPOSIT_ACCOUNT_PATH: &str = "m/44'/60'/0'";
pub const EVM_HOT_WALLET_PATH: &str = "m/44'/60'/1'/0/0";

/// The master key from a BIP39 seed (64 bytes). The caller zeroizes the seed.
pub fn master_from_seed(seed: &[u8]) -> Result<Xpriv, HdError> {
    Ok(Xpriv::new_master(NetworkKind::Main, seed)?)
}

/// The account-level xpub that deposit addresses are publicly derived from.
pub fn evm_deposit_xpub(master: &Xpriv) -> Result<Xpub, HdError> {
    let secp = Secp256k1::new();
    let path = DerivationPath::from_str(EVM_DEPOSIT_ACCOUNT_PATH)?;
    let account = master.derive_priv(&secp, &path)?;
    Ok(Xpub::from_priv(&secp, &account))
}

/// The hot wallet's 32-byte secret key. The caller wraps or zeroizes it.
pub fn evm_hot_wallet_secret(master: &Xpriv) -> Result<zeroize::Zeroizing<[u8; 32]>, HdError> {
    let secp = Secp256k1::new();
    let path = DerivationPath::from_str(EVM_HOT_WALLET_PATH)?;
    let key = master.derive_priv(&secp, &path)?;
    Ok(zeroize::Zeroizing::new(key.private_key.secret_bytes()))
}

/// The deposit address with index `index`: `xpub/0/index`, public derivation only.
pub fn evm_deposit_address(xpub: &Xpub, index: u32) -> Result<String, HdError> {
    let secp = Secp256k1::verification_only();
    let child = ChildNumber::from_normal_idx(index).map_err(|_| HdError::IndexOutOfRange(index))?;
    let key = xpub.derive_pub(&secp, &[ChildNumber::from_normal_idx(0)?, child])?;
    Ok(evm_address(&key.public_key))
}

/// The EVM address of a secp256k1 public key: the last 20 bytes of keccak256 of the uncompressed
/// point without its 0x04 prefix; lower-case 0x-hex.
pub fn evm_address(public_key: &PublicKey) -> String {
    let uncompressed = public_key.serialize_uncompressed();
    let hash = alloy_primitives::keccak256(&uncompressed[1..]);
    format!("0x{}", hex::encode(&hash[12..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The standard Hardhat/anvil test mnemonic: its account 0 is well known.
    const TEST_MNEMONIC: &str = "test test test test test test test test test test test junk";

    fn master() -> Xpriv {
        let m = bip39::Mnemonic::parse(TEST_MNEMONIC).unwrap();
        master_from_seed(&m.to_seed("")).unwrap()
    }

    #[test]
    fn k5_public_derivation_matches_private_derivation() {
        // m/44'/60'/0'/0/0 of the test mnemonic is anvil's first account.
        let xpub = evm_deposit_xpub(&master()).unwrap();
        assert_eq!(evm_deposit_address(&xpub, 0).unwrap(), "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266");
        assert_eq!(evm_deposit_address(&xpub, 1).unwrap(), "0x70997970c51812dc3a010c7d01b50e0d17dc79c8");
    }

    #[test]
    fn k6_hardened_indexes_are_refused_for_public_derivation() {
        let xpub = evm_deposit_xpub(&master()).unwrap();
        assert!(matches!(evm_deposit_address(&xpub, 1 << 31), Err(HdError::IndexOutOfRange(_))));
    }
}
