//! The master seed (K5): 24 BIP39 words from the OS CSPRNG (K9), the 64-byte BIP39 seed kept only in
//! zeroizing memory, wrapped by the KEK at rest.
//!
//! The seed, not the mnemonic, is what is kept and wrapped: it is what BIP32 needs, and the mnemonic is
//! shown exactly once, at generation, for the paper backup.

use std::fmt::Write as _;

use bitcoin::bip32::Xpriv;
use rand::RngCore;
use rand::rngs::OsRng;
use zeroize::Zeroizing;

use crate::hd::{self, HdError};
use crate::kek::{Kek, KekError};

/// 256 bits of entropy → 24 words.
pub const ENTROPY_LEN: usize = 32;
pub const SEED_LEN: usize = 64;
/// The purpose label a wrapped master seed carries as associated data.
pub const SEED_PURPOSE: &str = "master-seed";
/// Longest 24-word English mnemonic: 24 words of at most 8 letters and 23 spaces.
const MNEMONIC_LEN_MAX: usize = 24 * 8 + 23;

#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    /// Never includes the words themselves.
    #[error("mnemonic is not valid BIP39: {0}")]
    Mnemonic(&'static str),
    #[error("wrapped seed: {0}")]
    Kek(#[from] KekError),
    #[error("unwrapped seed has {0} bytes, expected {SEED_LEN}")]
    BadLength(usize),
    #[error("bip32: {0}")]
    Hd(#[from] HdError),
}

/// The BIP39 seed. Zeroized on drop; `Debug` shows nothing of it.
pub struct MasterSeed(Zeroizing<[u8; SEED_LEN]>);

impl std::fmt::Debug for MasterSeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterSeed(..)")
    }
}

impl MasterSeed {
    /// A new seed from 256 bits of OS entropy, with its 24-word mnemonic for the paper backup. The
    /// caller shows the mnemonic once and drops it.
    pub fn generate() -> (MasterSeed, Zeroizing<String>) {
        let mut entropy = Zeroizing::new([0u8; ENTROPY_LEN]);
        OsRng.fill_bytes(&mut entropy[..]);
        let mnemonic = match bip39::Mnemonic::from_entropy(&entropy[..]) {
            Ok(m) => m,
            Err(_) => unreachable!("32 bytes is a valid BIP39 entropy length"),
        };
        let mut words = Zeroizing::new(String::with_capacity(MNEMONIC_LEN_MAX));
        // Writing into a pre-sized String never reallocates, so no stray copy of the words is left behind.
        let _ = write!(&mut *words, "{mnemonic}");
        let seed = MasterSeed(Zeroizing::new(mnemonic.to_seed("")));
        (seed, words)
    }

    /// The seed of a mnemonic without a BIP39 passphrase.
    pub fn from_mnemonic(words: &str) -> Result<MasterSeed, SeedError> {
        Self::from_mnemonic_with_passphrase(words, "")
    }

    pub fn from_mnemonic_with_passphrase(words: &str, passphrase: &str) -> Result<MasterSeed, SeedError> {
        let mnemonic = bip39::Mnemonic::parse(words).map_err(|e| {
            SeedError::Mnemonic(match e {
                bip39::Error::BadWordCount(_) => "wrong number of words",
                bip39::Error::UnknownWord(_) => "a word is not in the BIP39 English list",
                bip39::Error::InvalidChecksum => "checksum does not match",
                _ => "malformed",
            })
        })?;
        Ok(MasterSeed(Zeroizing::new(mnemonic.to_seed(passphrase))))
    }

    /// The BIP32 master key (via [`hd::master_from_seed`]).
    pub fn to_bip32_master(&self) -> Result<Xpriv, SeedError> {
        Ok(hd::master_from_seed(&self.0[..])?)
    }

    /// Wraps the seed for storage at rest under `key_id`.
    pub fn wrap(&self, kek: &Kek, key_id: &str) -> Result<Vec<u8>, SeedError> {
        Ok(kek.wrap(key_id, SEED_PURPOSE, &self.0[..])?)
    }

    /// Unwraps a seed stored by [`MasterSeed::wrap`].
    pub fn unwrap_from(kek: &Kek, key_id: &str, blob: &[u8]) -> Result<MasterSeed, SeedError> {
        let plain = kek.unwrap(key_id, SEED_PURPOSE, blob)?;
        let mut seed = Zeroizing::new([0u8; SEED_LEN]);
        if plain.len() != SEED_LEN {
            return Err(SeedError::BadLength(plain.len()));
        }
        seed.copy_from_slice(&plain);
        Ok(MasterSeed(seed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ABANDON: &str =
        "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about";
    const TEST_MNEMONIC: &str = "test test test test test test test test test test test junk";

    #[test]
    fn k5_bip39_official_vector_with_trezor_passphrase() {
        let seed = MasterSeed::from_mnemonic_with_passphrase(ABANDON, "TREZOR").unwrap();
        assert_eq!(
            hex::encode(&seed.0[..]),
            "c55257c360c07c72029aebc1b53c05ed0362ada38ead3e3e9efa3708e53495531f09a6987599d18264c1e1c92f2cf141630c7a3c4ab7c81b2f001698e7463b04"
        );
    }

    #[test]
    fn k5_anvil_mnemonic_derives_anvil_account_zero() {
        let seed = MasterSeed::from_mnemonic(TEST_MNEMONIC).unwrap();
        let xpub = hd::evm_deposit_xpub(&seed.to_bip32_master().unwrap()).unwrap();
        assert_eq!(hd::evm_deposit_address(&xpub, 0).unwrap(), "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266");
    }

    #[test]
    fn k9_generated_mnemonics_are_24_words_fresh_and_reproduce_the_seed() {
        let (a, words_a) = MasterSeed::generate();
        let (b, words_b) = MasterSeed::generate();
        assert_eq!(words_a.split(' ').count(), 24);
        assert_ne!(*words_a, *words_b);
        assert_ne!(a.0[..], b.0[..]);
        assert_eq!(MasterSeed::from_mnemonic(&words_a).unwrap().0[..], a.0[..]);
    }

    #[test]
    fn k5_bad_mnemonics_are_rejected_without_echoing_words() {
        let bad_checksum =
            "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon";
        let e = MasterSeed::from_mnemonic(bad_checksum).unwrap_err();
        assert!(!e.to_string().contains("abandon"), "{e}");
        assert!(MasterSeed::from_mnemonic("test test test").is_err());
        let e =
            MasterSeed::from_mnemonic("zzzzsecret test test test test test test test test test test junk").unwrap_err();
        assert!(!e.to_string().contains("zzzzsecret"), "{e}");
    }

    #[test]
    fn k1_seed_wraps_and_unwraps_under_its_key_id_only() {
        let kek = Kek::generate();
        let seed = MasterSeed::from_mnemonic(TEST_MNEMONIC).unwrap();
        let blob = seed.wrap(&kek, "seed-1").unwrap();
        assert_eq!(MasterSeed::unwrap_from(&kek, "seed-1", &blob).unwrap().0[..], seed.0[..]);
        assert!(MasterSeed::unwrap_from(&kek, "seed-2", &blob).is_err());
    }

    #[test]
    fn k5_debug_shows_no_seed_material() {
        let seed = MasterSeed::from_mnemonic(TEST_MNEMONIC).unwrap();
        let shown = format!("{seed:?} {seed:#?}");
        assert!(!shown.contains(&hex::encode(&seed.0[..4])), "{shown}");
        assert_eq!(shown, "MasterSeed(..) MasterSeed(..)");
    }
}
