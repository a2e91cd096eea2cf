//! The offline keystore of one cold key (K14): a BIP39 cold seed wrapped under a random cold master key that
//! exists only as its custodians' Shamir shares, and what the offline signer pins at key generation.
//!
//! Pinned (and never taken from a bundle): the chain, the assets the key may move (code, decimals, native or
//! the ERC-20 contract), the fee bound, the approval quorum, and the operator registry log. A bundle's
//! registry log is accepted only as an extension of the pinned one; after a signature the keystore pins the
//! longer log, so a later bundle cannot roll the registry back (e.g. to before a revocation).

use std::path::{Path, PathBuf};
use std::str::FromStr;

use bitcoin::bip32::{DerivationPath, Xpriv};
use bitcoin::secp256k1::Secp256k1;
use kinko_core::Amount;
use kinko_core::asset::{AssetKind, AssetSpec};
use kinko_keys::seed::MasterSeed;
use kinko_keys::shares::{self, MasterKey, RawShare, SealConfig, ShareFile};
use kinko_signer::SoftwareKey;
use kinko_signer::approvals::{LoggedChange, OperatorRegistry};
use kinko_signer::evm::EvmPolicy;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::bundle::{BundleError, invalid, read_bounded, write_json_0600};

pub const KEYSTORE_KIND: &str = "kinko-offline-keystore-v1";
pub const KEYSTORE_FILE: &str = "keystore.json";
/// The cold key: BIP44 account 0 of the cold seed, first address (`m/44'/60'/0'/0/0`). The cold seed is its
/// own seed, never the online master seed, so nothing online derives it.
pub const COLD_KEY_PATH: &str = "m/44'/60'/0'/0/0";
/// The account whose xpub is shown and stored (watch-only tools derive the address from it).
pub const COLD_ACCOUNT_PATH: &str = kinko_keys::hd::EVM_DEPOSIT_ACCOUNT_PATH;
/// Bound on the assets one keystore pins.
pub const PINNED_ASSETS_MAX: usize = 64;

/// `DIR/keystore.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Keystore {
    /// [`KEYSTORE_KIND`].
    pub kind: String,
    pub key_id: String,
    /// The cold wallet, lower-case 0x-hex.
    pub address: String,
    /// xpub of [`COLD_ACCOUNT_PATH`].
    pub account_xpub: String,
    /// [`COLD_KEY_PATH`].
    pub derivation_path: String,
    /// The BIP39 seed wrapped (XChaCha20-Poly1305, key id = `key_id`) under the cold master key.
    pub wrapped_seed_hex: String,
    /// The custodians, their share commitments and the master key's fingerprint.
    pub seal: SealConfig,
    pub chain_id: u64,
    /// Exactly the assets this key signs for; a bundle's asset must equal one of them.
    pub assets: Vec<AssetSpec>,
    /// The most one transaction may pay in fees (gas_limit × max_fee_per_gas), wei.
    pub fee_wei_max: Amount,
    /// How many signing managers' approvals a cold signature needs.
    pub quorum: u8,
    /// The operator registry log the approvals are verified against (or an extension of it).
    pub registry_log: Vec<LoggedChange>,
    pub created_at_ms: i64,
}

/// What `keygen` produced, for the caller to write and print.
pub struct Generated {
    pub keystore: Keystore,
    pub shares: Vec<RawShare>,
    /// Shown once only if asked (`--show-mnemonic`), for a paper backup of the seed itself.
    pub mnemonic: Zeroizing<String>,
}

/// Key generation parameters.
pub struct KeygenParams {
    pub key_id: String,
    pub custodians: Vec<String>,
    pub threshold: usize,
    pub chain_id: u64,
    pub assets: Vec<AssetSpec>,
    pub fee_wei_max: u128,
    pub quorum: u8,
    pub registry_log: Vec<LoggedChange>,
    pub now_ms: i64,
}

fn key_err(reason: impl std::fmt::Display) -> BundleError {
    invalid("keystore", reason.to_string())
}

/// Generates the cold seed and key, the master key and its shares, and checks what is pinned: the registry
/// log must replay (every signature verified), the quorum must be at least 1, the assets must be on the chain.
pub fn generate(p: KeygenParams) -> Result<Generated, BundleError> {
    if p.key_id.is_empty() || p.key_id.len() > 64 {
        return Err(invalid("key_id", "must be 1 to 64 bytes"));
    }
    if p.quorum == 0 {
        return Err(invalid("quorum", "must be at least 1: a cold signature always needs approval"));
    }
    if usize::from(p.quorum) > kinko_core::operators::APPROVALS_PER_REQUEST_MAX {
        return Err(invalid("quorum", "exceeds APPROVALS_PER_REQUEST_MAX"));
    }
    if p.registry_log.is_empty() {
        return Err(invalid("registry", "is empty: without operators no approval can count"));
    }
    OperatorRegistry::replay(&p.registry_log, p.now_ms)
        .map_err(|e| invalid("registry", format!("does not verify: {e}")))?;
    let (seed, mnemonic) = MasterSeed::generate();
    let mk = MasterKey::generate();
    let raw = shares::split(&mk, p.threshold, &p.custodians).map_err(|e| invalid("custodians", e.to_string()))?;
    let seal = SealConfig::new(&mk, p.threshold, &raw);
    let wrapped = seed.wrap(&mk.wrapping_key(), &p.key_id).map_err(key_err)?;
    let mut master = seed.to_bip32_master().map_err(key_err)?;
    let xpub = kinko_keys::hd::evm_deposit_xpub(&master).map_err(key_err)?;
    master.private_key.non_secure_erase();
    let address = kinko_keys::hd::evm_deposit_address(&xpub, 0).map_err(key_err)?;
    let keystore = Keystore {
        kind: KEYSTORE_KIND.into(),
        key_id: p.key_id,
        address,
        account_xpub: xpub.to_string(),
        derivation_path: COLD_KEY_PATH.into(),
        wrapped_seed_hex: hex::encode(wrapped),
        seal,
        chain_id: p.chain_id,
        assets: p.assets,
        fee_wei_max: Amount::from_base_units(p.fee_wei_max),
        quorum: p.quorum,
        registry_log: p.registry_log,
        created_at_ms: p.now_ms,
    };
    keystore.validate()?;
    Ok(Generated { keystore, shares: raw, mnemonic })
}

impl Keystore {
    /// Form checks done on every load: kind, path, assets on the pinned chain, quorum.
    pub fn validate(&self) -> Result<(), BundleError> {
        if self.kind != KEYSTORE_KIND {
            return Err(invalid("keystore.kind", format!("is {:?}, expected {KEYSTORE_KIND:?}", self.kind)));
        }
        if self.derivation_path != COLD_KEY_PATH {
            return Err(invalid("keystore.derivation_path", format!("must be {COLD_KEY_PATH}")));
        }
        if self.quorum == 0 {
            return Err(invalid("keystore.quorum", "must be at least 1"));
        }
        if self.assets.is_empty() || self.assets.len() > PINNED_ASSETS_MAX {
            return Err(invalid("keystore.assets", format!("must pin 1 to {PINNED_ASSETS_MAX} assets")));
        }
        for (i, a) in self.assets.iter().enumerate() {
            let chain = match &a.kind {
                AssetKind::EvmNative { chain_id } | AssetKind::Erc20 { chain_id, .. } => chain_id.0,
            };
            if chain != self.chain_id {
                return Err(invalid(
                    format!("keystore.assets[{i}]"),
                    format!("is on chain {chain}, not {}", self.chain_id),
                ));
            }
            if self.assets[..i].iter().any(|b| b.code == a.code) {
                return Err(invalid(format!("keystore.assets[{i}]"), format!("{} is pinned twice", a.code)));
            }
        }
        Ok(())
    }

    pub fn read(path: &Path) -> Result<Keystore, BundleError> {
        let bytes = read_bounded(path)?;
        let ks: Keystore = serde_json::from_slice(&bytes).map_err(|e| BundleError::Io {
            path: path.display().to_string(),
            reason: format!("does not parse: {e}"),
        })?;
        ks.validate()?;
        Ok(ks)
    }

    pub fn write(&self, path: &Path) -> Result<(), BundleError> {
        write_json_0600(path, self)
    }

    /// The signer's policy for this chain from the pinned assets only: the native coin's code and the token
    /// contracts, and the pinned fee bound.
    pub fn policy(&self) -> Result<EvmPolicy, BundleError> {
        let mut policy = EvmPolicy {
            native_asset: "native".into(),
            fee_wei_max: self.fee_wei_max.base_units(),
            tokens: Default::default(),
        };
        for a in &self.assets {
            match &a.kind {
                AssetKind::EvmNative { .. } => policy.native_asset = a.code.to_string(),
                AssetKind::Erc20 { .. } => {
                    policy.add_token(self.chain_id, a).map_err(|e| invalid("keystore.assets", e.to_string()))?
                }
            }
        }
        Ok(policy)
    }

    /// The anti-double-sign record kept next to the keystore.
    pub fn record_path(keystore_path: &Path) -> PathBuf {
        keystore_path.with_file_name(crate::record::RECORD_FILE)
    }

    /// Checks the shares against the seal's commitments, combines them, checks the master key's fingerprint and
    /// unwraps the cold seed (zeroized on drop). What every cold signature starts from: the EVM key
    /// ([`Keystore::unseal`]) and the Bitcoin multisig cosigner key (`crate::psbt_bundle`).
    pub fn unseal_seed(&self, shares_in: &[RawShare]) -> Result<MasterSeed, BundleError> {
        for s in shares_in {
            let Some(c) = self.seal.custodian(&s.custodian) else {
                return Err(invalid("share", format!("custodian {:?} holds no share of this keystore", s.custodian)));
            };
            if c.index != s.index || c.share_sha256 != s.sha256_hex() {
                return Err(invalid("share", format!("{:?}'s share does not match its commitment", s.custodian)));
            }
        }
        let mk = shares::combine(self.seal.threshold, shares_in).map_err(|e| invalid("share", e.to_string()))?;
        if mk.fingerprint() != self.seal.mk_fingerprint {
            return Err(invalid("share", "the shares do not combine to this keystore's master key"));
        }
        let wrapped = crate::bundle::decode_hex("keystore.wrapped_seed_hex", &self.wrapped_seed_hex)?;
        let seed = MasterSeed::unwrap_from(&mk.wrapping_key(), &self.key_id, &wrapped)
            .map_err(|e| invalid("keystore.wrapped_seed_hex", e.to_string()))?;
        Ok(seed)
    }

    /// Checks the shares against the seal's commitments, combines them, checks the master key's fingerprint,
    /// unwraps the seed and derives the cold key, which must be the pinned address. Everything secret is
    /// zeroized on drop.
    pub fn unseal(&self, shares_in: &[RawShare]) -> Result<SoftwareKey, BundleError> {
        let seed = self.unseal_seed(shares_in)?;
        let mut master: Xpriv = seed.to_bip32_master().map_err(key_err)?;
        let secp = Secp256k1::new();
        let path = DerivationPath::from_str(COLD_KEY_PATH).map_err(key_err)?;
        let derived = master.derive_priv(&secp, &path);
        master.private_key.non_secure_erase();
        let mut derived = derived.map_err(key_err)?;
        let secret = Zeroizing::new(derived.private_key.secret_bytes());
        derived.private_key.non_secure_erase();
        let key = SoftwareKey::from_secret(&secret).map_err(|e| key_err(e.to_string()))?;
        use kinko_signer::SecpKey as _;
        if key.address() != self.address {
            return Err(invalid("keystore.address", "is not the address of the unsealed cold key"));
        }
        Ok(key)
    }
}

/// Reads a share file, opening a passphrase-protected one with `passphrase`.
pub fn open_share(path: &Path, passphrase: Option<&str>) -> Result<RawShare, BundleError> {
    let file = ShareFile::read(path).map_err(|e| invalid("share", format!("{}: {e}", path.display())))?;
    file.open(passphrase).map_err(|e| invalid("share", format!("{}: {e}", path.display())))
}

/// The name of the environment variable that may carry `custodian`'s share passphrase:
/// `KINKO_SHARE_PASSPHRASE_<NAME>`, upper case, non-alphanumerics as `_`.
pub fn passphrase_env(custodian: &str) -> String {
    let name: String =
        custodian.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect();
    format!("KINKO_SHARE_PASSPHRASE_{name}")
}
