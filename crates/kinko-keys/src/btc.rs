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

// ---------------------------------------------------------------------------------------------------------------
// BIP48 multisig cosigners and the 2-of-3 P2WSH cold wallet (K15).
//
// Each cosigner is a separate signer with its own seed; what the wallet knows of it is its master fingerprint,
// its BIP48 account path `m/48'/<coin>'/0'/2'` (2' = native segwit P2WSH) and that account's xpub. The wallet is
// the output descriptor `wsh(sortedmulti(k,[fp/48'/c'/0'/2']xpub/<chain>/*,...))`, parsed and derived by
// miniscript — the scripts are never assembled by hand. It lives here, beside the BIP84 account, because the
// online cosigner (kinko-signer) and the offline tool (kinko-offline) both re-derive scripts to check inputs and
// change, and neither may depend on the chain adapter.

/// BIP48's purpose field.
pub const BIP48_PURPOSE: u32 = 48;
/// BIP48's script type for native segwit multisig (P2WSH).
pub const BIP48_SCRIPT_TYPE_P2WSH: u32 = 2;
/// Most cosigners a wallet may have. Why: 15 keys is the widest multisig common hardware signers and Core's
/// P2SH-era policy handle; it bounds the witness (and so the worst-case fee) of every input.
pub const MULTISIG_COSIGNERS_MAX: usize = 15;

/// The BIP48 P2WSH cosigner account path `m/48'/<coin>'/0'/2'`.
pub fn bip48_account_path(network: Network) -> Result<DerivationPath, BtcKeyError> {
    let path = [
        ChildNumber::from_hardened_idx(BIP48_PURPOSE)?,
        ChildNumber::from_hardened_idx(coin_type(network))?,
        ChildNumber::from_hardened_idx(ACCOUNT_INDEX)?,
        ChildNumber::from_hardened_idx(BIP48_SCRIPT_TYPE_P2WSH)?,
    ];
    Ok(DerivationPath::from(path.to_vec()))
}

/// The BIP48 account private key of a master key: what a cosigner signs with (it derives `<chain>/<index>`
/// below it). Never leaves the signer that holds it.
pub fn bip48_account_xpriv(master: &Xpriv, network: Network) -> Result<Xpriv, BtcKeyError> {
    Ok(master.derive_priv(&Secp256k1::new(), &bip48_account_path(network)?)?)
}

/// One cosigner as the wallet knows it: no private key.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cosigner {
    pub master_fingerprint: Fingerprint,
    /// `m/48'/<coin>'/0'/2'`.
    pub path: DerivationPath,
    /// The account xpub (`tpub` on test networks).
    pub xpub: Xpub,
}

impl Cosigner {
    /// The cosigner of a master key (the signer that holds it exports this).
    pub fn from_master(master: &Xpriv, network: Network) -> Result<Cosigner, BtcKeyError> {
        let secp = Secp256k1::new();
        let account = bip48_account_xpriv(master, network)?;
        let mut xpub = Xpub::from_priv(&secp, &account);
        xpub.network = NetworkKind::from(network);
        Ok(Cosigner { master_fingerprint: master.fingerprint(&secp), path: bip48_account_path(network)?, xpub })
    }

    /// Whether `account` (a BIP48 account private key) is this cosigner's.
    pub fn is_account_of(&self, account: &Xpriv) -> bool {
        let derived = Xpub::from_priv(&Secp256k1::new(), account);
        derived.public_key == self.xpub.public_key && derived.chain_code == self.xpub.chain_code
    }

    /// The full path from the master of `<chain>/<index>`, when `source` is one of this cosigner's keys.
    fn child_of(&self, source: &KeySource) -> Option<(Keychain, u32)> {
        let (fingerprint, path) = source;
        if *fingerprint != self.master_fingerprint {
            return None;
        }
        let tail = path.as_ref().strip_prefix(self.path.as_ref())?;
        match tail {
            [ChildNumber::Normal { index: chain }, ChildNumber::Normal { index }] => {
                Some((Keychain::from_index(*chain)?, *index))
            }
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MultisigError {
    #[error(
        "threshold {threshold} of {cosigners} cosigners: need 1 <= threshold <= cosigners <= {MULTISIG_COSIGNERS_MAX}"
    )]
    Threshold { threshold: usize, cosigners: usize },
    #[error("cosigners[{0}]: path is not the BIP48 P2WSH account path of the wallet's network")]
    CosignerPath(usize),
    #[error("cosigners[{0}]: xpub is for another network kind")]
    CosignerNetwork(usize),
    #[error("cosigners[{0}]: same xpub as another cosigner")]
    DuplicateCosigner(usize),
    #[error("descriptor: {0}")]
    Descriptor(String),
    #[error("{field}: {reason}")]
    Psbt { field: String, reason: String },
    #[error("keys: {0}")]
    Keys(#[from] BtcKeyError),
}

fn psbt_err(field: impl Into<String>, reason: impl Into<String>) -> MultisigError {
    MultisigError::Psbt { field: field.into(), reason: reason.into() }
}

/// A k-of-n P2WSH multisig wallet of BIP48 cosigners: `wsh(sortedmulti(k, ...))`, receive chain `/0/*`, change
/// chain `/1/*`.
#[derive(Clone, Debug)]
pub struct MultisigWallet {
    pub threshold: usize,
    pub cosigners: Vec<Cosigner>,
    pub network: Network,
    receive: miniscript::Descriptor<miniscript::DescriptorPublicKey>,
    change: miniscript::Descriptor<miniscript::DescriptorPublicKey>,
}

impl PartialEq for MultisigWallet {
    fn eq(&self, other: &Self) -> bool {
        self.threshold == other.threshold && self.cosigners == other.cosigners && self.network == other.network
    }
}
impl Eq for MultisigWallet {}

impl MultisigWallet {
    /// Checks the cosigners (BIP48 path of `network`, network kind, all distinct) and parses the descriptor.
    pub fn new(threshold: usize, cosigners: Vec<Cosigner>, network: Network) -> Result<MultisigWallet, MultisigError> {
        if threshold == 0 || threshold > cosigners.len() || cosigners.len() > MULTISIG_COSIGNERS_MAX {
            return Err(MultisigError::Threshold { threshold, cosigners: cosigners.len() });
        }
        let path = bip48_account_path(network)?;
        for (i, c) in cosigners.iter().enumerate() {
            if c.path != path {
                return Err(MultisigError::CosignerPath(i));
            }
            if c.xpub.network != NetworkKind::from(network) {
                return Err(MultisigError::CosignerNetwork(i));
            }
            if cosigners[..i].iter().any(|o| o.xpub.public_key == c.xpub.public_key) {
                return Err(MultisigError::DuplicateCosigner(i));
            }
        }
        let parse = |keychain: Keychain| {
            let text = descriptor_text(threshold, &cosigners, keychain);
            miniscript::Descriptor::<miniscript::DescriptorPublicKey>::from_str(&text)
                .map_err(|e| MultisigError::Descriptor(e.to_string()))
        };
        Ok(MultisigWallet {
            receive: parse(Keychain::Receive)?,
            change: parse(Keychain::Change)?,
            threshold,
            cosigners,
            network,
        })
    }

    /// The descriptor of one chain, e.g. `wsh(sortedmulti(2,[fp/48'/1'/0'/2']tpub.../1/*,...))#checksum`.
    pub fn descriptor(&self, keychain: Keychain) -> &miniscript::Descriptor<miniscript::DescriptorPublicKey> {
        match keychain {
            Keychain::Receive => &self.receive,
            Keychain::Change => &self.change,
        }
    }

    /// The definite descriptor at `<chain>/<index>` (miniscript refuses a hardened index).
    pub fn definite(
        &self,
        keychain: Keychain,
        index: u32,
    ) -> Result<miniscript::Descriptor<miniscript::DefiniteDescriptorKey>, MultisigError> {
        if index >= (1 << 31) {
            return Err(BtcKeyError::IndexOutOfRange(index).into());
        }
        self.descriptor(keychain).at_derivation_index(index).map_err(|e| MultisigError::Descriptor(e.to_string()))
    }

    /// The P2WSH output script at `<chain>/<index>`.
    pub fn script_pubkey(&self, keychain: Keychain, index: u32) -> Result<ScriptBuf, MultisigError> {
        Ok(self.definite(keychain, index)?.script_pubkey())
    }

    /// The witness script (`k <sorted keys> n CHECKMULTISIG`) at `<chain>/<index>`.
    pub fn witness_script(&self, keychain: Keychain, index: u32) -> Result<ScriptBuf, MultisigError> {
        self.definite(keychain, index)?.explicit_script().map_err(|e| MultisigError::Descriptor(e.to_string()))
    }

    pub fn address(&self, keychain: Keychain, index: u32) -> Result<Address, MultisigError> {
        self.definite(keychain, index)?.address(self.network).map_err(|e| MultisigError::Descriptor(e.to_string()))
    }

    /// Every cosigner's key at `<chain>/<index>` with its origin: a PSBT's `bip32_derivation` for it.
    pub fn key_sources(
        &self,
        keychain: Keychain,
        index: u32,
    ) -> Result<std::collections::BTreeMap<bitcoin::secp256k1::PublicKey, KeySource>, MultisigError> {
        let child = ChildNumber::from_normal_idx(index).map_err(|_| BtcKeyError::IndexOutOfRange(index))?;
        let mut out = std::collections::BTreeMap::new();
        for c in &self.cosigners {
            let key = public_key(&c.xpub, keychain, index)?;
            let path =
                c.path.extend([ChildNumber::from_normal_idx(keychain.index()).map_err(BtcKeyError::from)?, child]);
            out.insert(key.0, (c.master_fingerprint, path));
        }
        Ok(out)
    }

    /// The `<chain>/<index>` a `bip32_derivation` map names under this wallet's cosigners: every entry must name
    /// a cosigner's key at the same chain and index (and be that key). None if no entry is ours.
    pub fn derivation_of(
        &self,
        field: &str,
        derivation: &std::collections::BTreeMap<bitcoin::secp256k1::PublicKey, KeySource>,
    ) -> Result<Option<(Keychain, u32)>, MultisigError> {
        let mut found: Option<(Keychain, u32)> = None;
        for (key, source) in derivation {
            let Some((cosigner, at)) = self.cosigners.iter().find_map(|c| c.child_of(source).map(|at| (c, at))) else {
                continue;
            };
            if found.is_some_and(|f| f != at) {
                return Err(psbt_err(field, "names keys at different derivation indexes"));
            }
            if public_key(&cosigner.xpub, at.0, at.1)?.0 != *key {
                return Err(psbt_err(field, format!("key for {} is not the cosigner's key at that path", source.1)));
            }
            found = Some(at);
        }
        Ok(found)
    }

    /// Whether an output is change to this wallet: its `bip32_derivation` names the change chain `1/i` of our
    /// cosigners and its script is exactly the wallet's script re-derived at `1/i`. Anything else (no
    /// derivation, the receive chain, a script that does not match, inconsistent entries) is not ours.
    pub fn is_own_change(&self, txout: &bitcoin::TxOut, output: &bitcoin::psbt::Output) -> bool {
        match self.derivation_of("output.bip32_derivation", &output.bip32_derivation) {
            Ok(Some((Keychain::Change, index))) => {
                matches!(self.script_pubkey(Keychain::Change, index), Ok(own) if own == txout.script_pubkey)
            }
            _ => false,
        }
    }

    /// Checks that PSBT input `n` spends this wallet: its `bip32_derivation` names our cosigners at one
    /// `<chain>/<index>`, its `witness_script` is the wallet's script there and its `witness_utxo` pays that
    /// script's P2WSH. Returns the chain and index.
    pub fn check_own_input(&self, n: usize, input: &bitcoin::psbt::Input) -> Result<(Keychain, u32), MultisigError> {
        let field = format!("inputs[{n}].bip32_derivation");
        let (keychain, index) = self
            .derivation_of(&field, &input.bip32_derivation)?
            .ok_or_else(|| psbt_err(&field, "names no key of this wallet's cosigners"))?;
        let script = self.witness_script(keychain, index)?;
        if input.witness_script.as_ref() != Some(&script) {
            return Err(psbt_err(
                format!("inputs[{n}].witness_script"),
                format!("is not the wallet's script at {}/{index}", keychain.index()),
            ));
        }
        let spent = input
            .witness_utxo
            .as_ref()
            .ok_or_else(|| psbt_err(format!("inputs[{n}].witness_utxo"), "is missing (BIP143 signs the amount)"))?;
        if spent.script_pubkey != ScriptBuf::new_p2wsh(&script.wscript_hash()) {
            return Err(psbt_err(format!("inputs[{n}].witness_utxo"), "does not pay the wallet's P2WSH script"));
        }
        Ok((keychain, index))
    }
}

/// The descriptor text of one chain (without checksum; miniscript computes and checks it).
fn descriptor_text(threshold: usize, cosigners: &[Cosigner], keychain: Keychain) -> String {
    let keys: Vec<String> = cosigners
        .iter()
        .map(|c| format!("[{}/{}]{}/{}/*", c.master_fingerprint, c.path, c.xpub, keychain.index()))
        .collect();
    format!("wsh(sortedmulti({threshold},{}))", keys.join(","))
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

    fn cosigner_master(word: &str) -> Xpriv {
        crate::hd::master_from_seed(&sha2_seed(word)).unwrap()
    }

    fn sha2_seed(word: &str) -> [u8; 32] {
        use sha2::Digest;
        sha2::Sha256::digest(word.as_bytes()).into()
    }

    fn wallet() -> MultisigWallet {
        let cosigners = ["a", "b", "c"]
            .iter()
            .map(|w| Cosigner::from_master(&cosigner_master(w), Network::Regtest).unwrap())
            .collect();
        MultisigWallet::new(2, cosigners, Network::Regtest).unwrap()
    }

    #[test]
    fn k15_bip48_wallet_derives_p2wsh_sortedmulti_and_recognizes_only_its_change() {
        let w = wallet();
        assert_eq!(w.cosigners[0].path.to_string(), "48'/1'/0'/2'");
        let text = w.descriptor(Keychain::Change).to_string();
        assert!(text.starts_with("wsh(sortedmulti(2,[") && text.contains("/1/*"), "{text}");
        let script = w.witness_script(Keychain::Change, 4).unwrap();
        assert_eq!(w.script_pubkey(Keychain::Change, 4).unwrap(), ScriptBuf::new_p2wsh(&script.wscript_hash()));
        assert!(w.address(Keychain::Receive, 0).unwrap().to_string().starts_with("bcrt1q"));
        // The keys are sorted (BIP67): cosigner order does not change the script.
        let mut reordered = w.cosigners.clone();
        reordered.reverse();
        let w2 = MultisigWallet::new(2, reordered, Network::Regtest).unwrap();
        assert_eq!(w2.script_pubkey(Keychain::Receive, 9).unwrap(), w.script_pubkey(Keychain::Receive, 9).unwrap());

        let output = bitcoin::psbt::Output {
            bip32_derivation: w.key_sources(Keychain::Change, 4).unwrap(),
            ..Default::default()
        };
        let own = bitcoin::TxOut {
            value: bitcoin::Amount::from_sat(1),
            script_pubkey: w.script_pubkey(Keychain::Change, 4).unwrap(),
        };
        assert!(w.is_own_change(&own, &output));
        let foreign = bitcoin::TxOut { script_pubkey: w.script_pubkey(Keychain::Change, 5).unwrap(), ..own.clone() };
        assert!(!w.is_own_change(&foreign, &output));
        let receive = bitcoin::psbt::Output {
            bip32_derivation: w.key_sources(Keychain::Receive, 4).unwrap(),
            ..Default::default()
        };
        assert!(!w.is_own_change(
            &bitcoin::TxOut { script_pubkey: w.script_pubkey(Keychain::Receive, 4).unwrap(), ..own },
            &receive
        ));
        assert!(matches!(
            MultisigWallet::new(4, w.cosigners.clone(), Network::Regtest),
            Err(MultisigError::Threshold { .. })
        ));
        assert!(matches!(
            MultisigWallet::new(2, w.cosigners.clone(), Network::Bitcoin),
            Err(MultisigError::CosignerPath(0))
        ));
    }
}
