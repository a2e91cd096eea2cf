//! Bitcoin keys (K6): BIP84 (native segwit, P2WPKH) derivation with rust-bitcoin.
//!
//! Paths (BIP84, coin type 0 on mainnet and 1 on every test network, as BIP44 prescribes):
//! - account: `m/84'/<coin>'/0'` — its xpub is exported; everything below it is public derivation;
//! - receive (deposit) addresses: `xpub/0/i`;
//! - change addresses: `xpub/1/i`.
//!
//! This lives in kinko-keys, not in the chain crate, because the signer and the offline tool need it
//! and must not depend on the chain adapter: the signer re-derives a change address itself and accepts
//! a change output only if it matches ([`Bip84Account::is_own_change`]).

use std::str::FromStr;

use bitcoin::bip32::{ChildNumber, DerivationPath, Fingerprint, KeySource, Xpriv, Xpub};
use bitcoin::secp256k1::Secp256k1;
use bitcoin::{Address, CompressedPublicKey, Network, NetworkKind, Script, ScriptBuf};

/// BIP84's purpose field.
pub const BIP84_PURPOSE: u32 = 84;
/// SLIP-44 coin type of Bitcoin mainnet.
pub const COIN_TYPE_MAINNET: u32 = 0;
/// SLIP-44 coin type every Bitcoin test network shares (testnet, signet, regtest).
pub const COIN_TYPE_TESTNET: u32 = 1;
/// The custodian's single BIP84 account. Per-customer separation is by address index, not by account.
pub const ACCOUNT_INDEX: u32 = 0;

#[derive(Debug, thiserror::Error)]
pub enum BtcKeyError {
    #[error("derivation index {0} is outside the non-hardened range")]
    IndexOutOfRange(u32),
    #[error("bip32: {0}")]
    Bip32(#[from] bitcoin::bip32::Error),
    #[error("master fingerprint is not 8 hex digits")]
    BadFingerprint,
}

/// The two BIP44 chains below an account.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Keychain {
    /// `0`: addresses handed out to receive deposits.
    Receive,
    /// `1`: addresses the custodian pays its own change to.
    Change,
}

impl Keychain {
    /// The chain's index in the path.
    pub fn index(self) -> u32 {
        match self {
            Keychain::Receive => 0,
            Keychain::Change => 1,
        }
    }

    /// The keychain of a path component, if it is one of the two.
    pub fn from_index(index: u32) -> Option<Keychain> {
        match index {
            0 => Some(Keychain::Receive),
            1 => Some(Keychain::Change),
            _ => None,
        }
    }
}

/// BIP44 coin type for a network: 0 on mainnet, 1 on every test network.
pub fn coin_type(network: Network) -> u32 {
    match network {
        Network::Bitcoin => COIN_TYPE_MAINNET,
        _ => COIN_TYPE_TESTNET,
    }
}

/// The BIP84 account path `m/84'/<coin>'/0'` for a network.
pub fn account_path(network: Network) -> Result<DerivationPath, BtcKeyError> {
    let path = [
        ChildNumber::from_hardened_idx(BIP84_PURPOSE)?,
        ChildNumber::from_hardened_idx(coin_type(network))?,
        ChildNumber::from_hardened_idx(ACCOUNT_INDEX)?,
    ];
    Ok(DerivationPath::from(path.to_vec()))
}

/// The account-level xpub (`m/84'/<coin>'/0'`). Its serialization carries the network kind (`xpub` or
/// `tpub`); SLIP-132 `zpub` prefixes are not used: the path says the script type.
pub fn account_xpub(master: &Xpriv, network: Network) -> Result<Xpub, BtcKeyError> {
    let secp = Secp256k1::new();
    let account = master.derive_priv(&secp, &account_path(network)?)?;
    let mut xpub = Xpub::from_priv(&secp, &account);
    xpub.network = NetworkKind::from(network);
    Ok(xpub)
}

/// The compressed public key at `xpub/<chain>/<index>`, public derivation only.
pub fn public_key(xpub: &Xpub, keychain: Keychain, index: u32) -> Result<CompressedPublicKey, BtcKeyError> {
    let secp = Secp256k1::verification_only();
    let child = ChildNumber::from_normal_idx(index).map_err(|_| BtcKeyError::IndexOutOfRange(index))?;
    let key = xpub.derive_pub(&secp, &[ChildNumber::from_normal_idx(keychain.index())?, child])?;
    Ok(key.to_pub())
}

/// The P2WPKH address at `xpub/<chain>/<index>` for `network`.
pub fn address(xpub: &Xpub, network: Network, keychain: Keychain, index: u32) -> Result<Address, BtcKeyError> {
    Ok(Address::p2wpkh(&public_key(xpub, keychain, index)?, network))
}

/// The deposit address `xpub/0/index`.
pub fn receive_address(xpub: &Xpub, network: Network, index: u32) -> Result<Address, BtcKeyError> {
    address(xpub, network, Keychain::Receive, index)
}

/// The change address `xpub/1/index`.
pub fn change_address(xpub: &Xpub, network: Network, index: u32) -> Result<Address, BtcKeyError> {
    address(xpub, network, Keychain::Change, index)
}

/// Whether `candidate` is exactly the change address `xpub/1/index` on `network`. An index out of the
/// non-hardened range is simply not ours (false), never a panic.
pub fn is_own_change(xpub: &Xpub, network: Network, candidate: &Address, index: u32) -> bool {
    matches!(change_address(xpub, network, index), Ok(own) if &own == candidate)
}

/// The custodian's BIP84 account as the online side knows it: the master key's fingerprint, the account
/// path and xpub — enough to derive every address and to fill a PSBT's `bip32_derivation` so that a
/// signer holding the master key can find and check its keys, with no private key here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bip84Account {
    pub master_fingerprint: Fingerprint,
    pub path: DerivationPath,
    pub xpub: Xpub,
    pub network: Network,
}

impl Bip84Account {
    /// The account of a master key (signer side, or tests).
    pub fn from_master(master: &Xpriv, network: Network) -> Result<Bip84Account, BtcKeyError> {
        let secp = Secp256k1::new();
        Ok(Bip84Account {
            master_fingerprint: master.fingerprint(&secp),
            path: account_path(network)?,
            xpub: account_xpub(master, network)?,
            network,
        })
    }

    /// The account from its exported parts (online side): fingerprint as 8 hex digits and xpub text.
    pub fn from_exported(master_fingerprint: &str, xpub: &str, network: Network) -> Result<Bip84Account, BtcKeyError> {
        Ok(Bip84Account {
            master_fingerprint: Fingerprint::from_str(master_fingerprint).map_err(|_| BtcKeyError::BadFingerprint)?,
            path: account_path(network)?,
            xpub: Xpub::from_str(xpub)?,
            network,
        })
    }

    pub fn public_key(&self, keychain: Keychain, index: u32) -> Result<CompressedPublicKey, BtcKeyError> {
        public_key(&self.xpub, keychain, index)
    }

    pub fn address(&self, keychain: Keychain, index: u32) -> Result<Address, BtcKeyError> {
        address(&self.xpub, self.network, keychain, index)
    }

    /// The P2WPKH output script at `<chain>/<index>`.
    pub fn script_pubkey(&self, keychain: Keychain, index: u32) -> Result<ScriptBuf, BtcKeyError> {
        Ok(ScriptBuf::new_p2wpkh(&self.public_key(keychain, index)?.wpubkey_hash()))
    }

    /// The BIP174 key origin of `<chain>/<index>`: master fingerprint and the full path from the master.
    pub fn key_source(&self, keychain: Keychain, index: u32) -> Result<KeySource, BtcKeyError> {
        let child = ChildNumber::from_normal_idx(index).map_err(|_| BtcKeyError::IndexOutOfRange(index))?;
        let path = self.path.extend([ChildNumber::from_normal_idx(keychain.index())?, child]);
        Ok((self.master_fingerprint, path))
    }

    /// Whether `script_pubkey` pays exactly the change address `1/index` (what a signer checks on a
    /// PSBT's change output, where only scripts, not addresses, are present).
    pub fn is_own_change_script(&self, script_pubkey: &Script, index: u32) -> bool {
        matches!(self.script_pubkey(Keychain::Change, index), Ok(own) if own.as_script() == script_pubkey)
    }

    /// Whether `candidate` is exactly the change address `1/index` of this account.
    pub fn is_own_change(&self, candidate: &Address, index: u32) -> bool {
        is_own_change(&self.xpub, self.network, candidate, index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// BIP84's test mnemonic (no passphrase).
    const BIP84_MNEMONIC: &str =
        "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about";

    fn master() -> Xpriv {
        let m = bip39::Mnemonic::parse(BIP84_MNEMONIC).unwrap();
        crate::hd::master_from_seed(&m.to_seed("")).unwrap()
    }

    #[test]
    fn k6_bip84_first_receive_and_change_addresses() {
        let xpub = account_xpub(&master(), Network::Bitcoin).unwrap();
        assert_eq!(
            receive_address(&xpub, Network::Bitcoin, 0).unwrap().to_string(),
            "bc1qcr8te4kr609gcawutmrza0j4xv80jy8z306fyu"
        );
        assert_eq!(
            change_address(&xpub, Network::Bitcoin, 0).unwrap().to_string(),
            "bc1q8c6fshw2dlwun7ekn9qwf37cu2rn755upcp6el"
        );
    }

    #[test]
    fn k6_own_change_is_recognized_and_foreign_is_not() {
        let account = Bip84Account::from_master(&master(), Network::Regtest).unwrap();
        let own = account.address(Keychain::Change, 7).unwrap();
        assert!(account.is_own_change(&own, 7));
        // The same key on the receive chain, another index, or a hardened index is not change.
        assert!(!account.is_own_change(&account.address(Keychain::Receive, 7).unwrap(), 7));
        assert!(!account.is_own_change(&own, 8));
        assert!(!account.is_own_change(&own, 1 << 31));
        assert!(account.is_own_change_script(&own.script_pubkey(), 7));
        assert!(!account.is_own_change_script(&own.script_pubkey(), 6));
    }

    #[test]
    fn k6_key_source_is_the_full_path_from_the_master() {
        let account = Bip84Account::from_master(&master(), Network::Regtest).unwrap();
        let (fp, path) = account.key_source(Keychain::Change, 3).unwrap();
        assert_eq!(fp.to_string(), "73c5da0a");
        assert_eq!(path.to_string(), "84'/1'/0'/1/3");
        assert!(matches!(account.key_source(Keychain::Change, 1 << 31), Err(BtcKeyError::IndexOutOfRange(_))));
    }
}
