//! One cosigner of the k-of-n P2WSH cold wallet (K15): the online cosigner and the air-gapped `kinko-offline`
//! run exactly this code (it needs no `online` feature).
//!
//! Before its one signature a cosigner checks, itself, everything it can see:
//! - the transaction against the approved intent ([`crate::btc::check_psbt_against_intent`]: asset, network,
//!   exactly the amount to exactly the destination, fee within the cap), with the wallet's own change rule
//!   (`MultisigWallet::is_own_change`: the change script re-derived at `/1/i` from the cosigners' xpubs);
//! - every input is the wallet's: `witness_script` is the wallet's script at the input's derivation index,
//!   `witness_utxo` pays its P2WSH (`MultisigWallet::check_own_input`);
//! - every signature already in the PSBT is by a key of that input's script and valid over the input's
//!   BIP143 sighash (secp256k1 verification): a cosigner does not add its signature next to a forged or
//!   misplaced one ("each signer checks the others' signatures and the content").
//!
//! Then it signs every input with ONLY its own key — the child `<chain>/<index>` of its BIP48 account private
//! key — over rust-bitcoin's sighash (`Psbt::sighash_ecdsa`), verifies its own signature, and adds it as a
//! partial signature. Finalization (needing the threshold of signatures) is the online side's
//! (`kinko_chain::btc::multisig::finalize_multisig`).
//!
//! What is not here: the anti-double-sign record per outpoint and the key access log are the caller's (the
//! returned [`Cosigned::checked`] lists the spent outpoints, one slot each), written before the PSBT leaves:
//! `LocalSigner`'s `cosign_btc_multisig_psbt` online, `sign-record.json` in `kinko-offline`.

use bitcoin::bip32::{ChildNumber, Xpriv};
use bitcoin::ecdsa::Signature as EcdsaSig;
use bitcoin::psbt::Psbt;
use bitcoin::secp256k1::{Message, Secp256k1};
use bitcoin::sighash::{EcdsaSighashType, SighashCache};
use bitcoin::{Network, PublicKey};
use kinko_core::intent::Intent;
use kinko_keys::btc::{Cosigner, Keychain, MultisigError, MultisigWallet};

use serde::{Deserialize, Serialize};

use crate::SignerError;
use crate::btc::{CheckedBtcTx, check_psbt_against_intent};

/// The key access log's operation for a multisig cosignature.
pub const BTC_COSIGN_OPERATION: &str = "cosign_btc";
/// `kind` of the pinned wallet file (the format `kinko-offline btc-wallet` writes, `btc-wallet.json`).
pub const PINNED_WALLET_KIND: &str = "kinko-offline-btc-wallet-v1";
/// Largest pinned wallet file read. Why: 15 cosigners' fingerprint, path and xpub are about 3 KiB; anything
/// far larger is not such a file.
pub const PINNED_WALLET_BYTES_MAX: usize = 64 * 1024;

/// What the online cosigner returns: the PSBT with its partial signature on every input (not finalized:
/// the threshold needs another cosigner's), after its record was written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BtcCosigned {
    /// The PSBT with this cosigner's partial signatures added (BIP174 binary; hex in JSON).
    #[serde(with = "crate::hex_bytes")]
    pub psbt: Vec<u8>,
    /// The unsigned transaction's txid (segwit: the signed transaction keeps it).
    pub txid: bitcoin::Txid,
    pub fee_sat: u64,
    /// Inputs this cosigner signed (every input).
    pub signed_inputs: usize,
    /// The cosigner's master fingerprint (hex), as the wallet knows it.
    pub cosigner_fingerprint: String,
}

/// The pinned multisig wallet file: the JSON `kinko-offline btc-wallet` writes next to the keystore
/// (`kind`, `network`, `threshold`, every cosigner, `fee_sat_max`), read by the online signer from its own
/// configuration (`[signer.bitcoin] multisig_wallet`) so both cosigners sign for exactly the same wallet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinnedWalletFile {
    /// [`PINNED_WALLET_KIND`].
    pub kind: String,
    pub network: Network,
    pub threshold: usize,
    pub cosigners: Vec<Cosigner>,
    /// The most one transaction may pay in fees, satoshi: the online cosigner's fee cap as well.
    pub fee_sat_max: u64,
}

impl PinnedWalletFile {
    /// Parses and checks the file's bytes (kind, then `MultisigWallet::new`'s checks); errors name the field.
    pub fn parse(bytes: &[u8]) -> Result<(MultisigWallet, u64), SignerError> {
        if bytes.len() > PINNED_WALLET_BYTES_MAX {
            return Err(SignerError::Malformed(format!(
                "pinned wallet file is {} bytes, more than {PINNED_WALLET_BYTES_MAX}",
                bytes.len()
            )));
        }
        let file: PinnedWalletFile = serde_json::from_slice(bytes)
            .map_err(|e| SignerError::Malformed(format!("pinned wallet file does not parse: {e}")))?;
        if file.kind != PINNED_WALLET_KIND {
            return Err(SignerError::Malformed(format!(
                "pinned wallet file: kind is {:?}, expected {PINNED_WALLET_KIND:?}",
                file.kind
            )));
        }
        let wallet = MultisigWallet::new(file.threshold, file.cosigners, file.network)
            .map_err(|e| SignerError::Malformed(format!("pinned wallet file: {e}")))?;
        Ok((wallet, file.fee_sat_max))
    }
}

/// A cosigner's signing key: its BIP48 account private key and what the wallet knows of it. The private key
/// is erased on drop.
pub struct CosignerKey {
    pub cosigner: Cosigner,
    account: Xpriv,
}

impl Drop for CosignerKey {
    fn drop(&mut self) {
        self.account.private_key.non_secure_erase();
    }
}

impl std::fmt::Debug for CosignerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CosignerKey").field("cosigner", &self.cosigner).finish_non_exhaustive()
    }
}

impl CosignerKey {
    /// The BIP48 P2WSH account of a master key.
    pub fn from_master(master: &Xpriv, network: Network) -> Result<CosignerKey, SignerError> {
        let cosigner = Cosigner::from_master(master, network).map_err(|e| SignerError::Internal(e.to_string()))?;
        let account =
            kinko_keys::btc::bip48_account_xpriv(master, network).map_err(|e| SignerError::Internal(e.to_string()))?;
        Ok(CosignerKey { cosigner, account })
    }

    /// An account private key held on its own, with the cosigner it must be.
    pub fn from_account(cosigner: Cosigner, account: Xpriv) -> Result<CosignerKey, SignerError> {
        if !cosigner.is_account_of(&account) {
            return Err(SignerError::Refused("the account key is not the cosigner's xpub".into()));
        }
        Ok(CosignerKey { cosigner, account })
    }
}

/// What a cosigner checked and added.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cosigned {
    pub checked: CheckedBtcTx,
    /// Inputs this cosigner signed (all of them).
    pub signed_inputs: usize,
    /// Other cosigners' signatures found and verified.
    pub others_verified: usize,
}

fn refused_field(field: String, reason: impl std::fmt::Display) -> SignerError {
    SignerError::Refused(format!("{field}: {reason}"))
}

fn wallet_err(e: MultisigError) -> SignerError {
    match e {
        MultisigError::Psbt { field, reason } => refused_field(field, reason),
        other => SignerError::Refused(other.to_string()),
    }
}

/// What [`check_multisig_psbt`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckedMultisig {
    pub checked: CheckedBtcTx,
    /// Each input's chain and index in the wallet, in input order.
    pub inputs_at: Vec<(Keychain, u32)>,
    /// Signatures already present and verified.
    pub signatures_verified: usize,
}

/// The checks of the module documentation without signing: the PSBT against the intent, every input the
/// wallet's, every present signature valid.
pub fn check_multisig_psbt(
    psbt: &Psbt,
    wallet: &MultisigWallet,
    intent: &Intent,
    fee_cap_sat: u64,
) -> Result<CheckedMultisig, SignerError> {
    let checked = check_psbt_against_intent(
        psbt,
        intent,
        wallet.network,
        &|txout, output| wallet.is_own_change(txout, output),
        fee_cap_sat,
    )?;
    let secp = Secp256k1::verification_only();
    let mut cache = SighashCache::new(&psbt.unsigned_tx);
    let mut at = Vec::with_capacity(psbt.inputs.len());
    let mut verified = 0;
    for (n, input) in psbt.inputs.iter().enumerate() {
        let (keychain, index) = wallet.check_own_input(n, input).map_err(wallet_err)?;
        at.push((keychain, index));
        if input.partial_sigs.is_empty() {
            continue;
        }
        let keys = wallet.key_sources(keychain, index).map_err(wallet_err)?;
        let (msg, hash_ty) = psbt
            .sighash_ecdsa(n, &mut cache)
            .map_err(|e| refused_field(format!("inputs[{n}]"), format!("sighash: {e}")))?;
        for (pk, sig) in &input.partial_sigs {
            let field = format!("inputs[{n}].partial_sigs[{pk}]");
            if !pk.compressed || !keys.contains_key(&pk.inner) {
                return Err(refused_field(field, "is not by a key of this input's script"));
            }
            if sig.sighash_type != hash_ty || hash_ty != EcdsaSighashType::All {
                return Err(refused_field(field, format!("sighash type {} is not SIGHASH_ALL", sig.sighash_type)));
            }
            secp.verify_ecdsa(&msg, &sig.signature, &pk.inner)
                .map_err(|_| refused_field(field, "does not verify over this input's sighash"))?;
            verified += 1;
        }
    }
    Ok(CheckedMultisig { checked, inputs_at: at, signatures_verified: verified })
}

/// Checks the PSBT (see the module documentation) and adds this cosigner's signature to every input. On any
/// refusal the PSBT is left unchanged.
pub fn cosign(
    psbt: &mut Psbt,
    wallet: &MultisigWallet,
    key: &CosignerKey,
    intent: &Intent,
    fee_cap_sat: u64,
) -> Result<Cosigned, SignerError> {
    if !wallet.cosigners.contains(&key.cosigner) {
        return Err(SignerError::Refused("this key is not a cosigner of the wallet the PSBT spends".into()));
    }
    let CheckedMultisig { checked, inputs_at: at, signatures_verified: others_verified } =
        check_multisig_psbt(psbt, wallet, intent, fee_cap_sat)?;
    let secp = Secp256k1::new();
    let mut sigs = Vec::with_capacity(at.len());
    {
        let mut cache = SighashCache::new(&psbt.unsigned_tx);
        for (n, (keychain, index)) in at.iter().enumerate() {
            let path = [
                ChildNumber::from_normal_idx(keychain.index()).map_err(|e| SignerError::Internal(e.to_string()))?,
                ChildNumber::from_normal_idx(*index).map_err(|e| SignerError::Internal(e.to_string()))?,
            ];
            let mut child = key.account.derive_priv(&secp, &path).map_err(|e| SignerError::Internal(e.to_string()))?;
            let public = PublicKey::new(child.private_key.public_key(&secp));
            // The key must be the one the PSBT names for this cosigner (check_own_input verified the names).
            let named = psbt.inputs[n].bip32_derivation.get(&public.inner);
            if named.is_none_or(|(fp, _)| *fp != key.cosigner.master_fingerprint) {
                child.private_key.non_secure_erase();
                return Err(refused_field(
                    format!("inputs[{n}].bip32_derivation"),
                    "does not name this cosigner's key",
                ));
            }
            let (msg, hash_ty): (Message, EcdsaSighashType) = psbt
                .sighash_ecdsa(n, &mut cache)
                .map_err(|e| refused_field(format!("inputs[{n}]"), format!("sighash: {e}")))?;
            let signature = secp.sign_ecdsa(&msg, &child.private_key);
            child.private_key.non_secure_erase();
            secp.verify_ecdsa(&msg, &signature, &public.inner)
                .map_err(|_| SignerError::Internal(format!("inputs[{n}]: own signature does not verify")))?;
            sigs.push((public, EcdsaSig { signature, sighash_type: hash_ty }));
        }
    }
    for (input, (public, sig)) in psbt.inputs.iter_mut().zip(sigs) {
        input.partial_sigs.insert(public, sig);
    }
    Ok(Cosigned { checked, signed_inputs: at.len(), others_verified })
}
