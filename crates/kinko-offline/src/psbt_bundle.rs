//! Bitcoin PSBTs across the air gap (K14) for the k-of-n P2WSH cold wallet (K15): the offline tool is one
//! cosigner of `wsh(sortedmulti(k, ...))`, its key the BIP48 account `m/48'/<coin>'/0'/2'` of the keystore's cold
//! seed.
//!
//! Files:
//! - the pinned wallet, `btc-wallet.json` next to the keystore ([`PinnedBtcWallet`]): network, threshold, every
//!   cosigner (fingerprint, BIP48 path, xpub) and the fee bound. Written once by `kinko-offline btc-wallet`; a
//!   bundle is signed only for exactly this wallet, so an online attacker cannot swap the other cosigners' keys
//!   (and with them the change address) in a bundle;
//! - the unsigned bundle ([`UnsignedPsbtBundle`]): the intent, the approvals over it, the registry log they are
//!   verified against, and the unsigned PSBT (base64);
//! - the signed file ([`SignedPsbtBundle`]): the PSBT with this cosigner's partial signatures added, naming the
//!   bundle it answers by the sha256 of its canonical JSON.
//!
//! The offline side decodes the PSBT itself and runs the very checks the online cosigner runs
//! ([`kinko_signer::btc_multisig`]: the transaction against the intent, inputs and change re-derived from the
//! pinned cosigners, every signature present verified), shows it in human terms, verifies the approvals against
//! the pinned registry (the same function as EVM bundles, [`crate::sign::verify_approvals`]), and signs after the
//! confirmation. The online side takes the signed file back only through [`verify_signed_psbt`]: the same checks
//! again, and the PSBT must be the exported one with nothing changed but signatures added, one by this cosigner
//! on every input.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use bitcoin::psbt::Psbt;
use bitcoin::{Address, Amount, Denomination, Network};
use kinko_core::intent::Intent;
use kinko_keys::btc::{Cosigner, MultisigWallet};
use kinko_keys::shares::RawShare;
use kinko_signer::Approval;
use kinko_signer::approvals::LoggedChange;
use kinko_signer::btc::{BTC_PSBT_BYTES_MAX, CheckedBtcTx};
use kinko_signer::btc_multisig::{CosignerKey, check_multisig_psbt, cosign};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::bundle::{BundleError, from_signer, invalid, read_bounded, write_json_0600};
use crate::keystore::Keystore;
use crate::record::{SignRecord, SlotEntry};

/// Bound on the entries one record slot of a Bitcoin outpoint or intent holds (re-signs and fee bumps).
pub const BTC_SLOT_ENTRIES_MAX: usize = 32;

pub const UNSIGNED_PSBT_KIND: &str = "kinko-unsigned-btc-psbt-v1";
pub const SIGNED_PSBT_KIND: &str = "kinko-signed-btc-psbt-v1";
pub const BTC_WALLET_KIND: &str = "kinko-offline-btc-wallet-v1";
/// The pinned wallet, next to the keystore.
pub const BTC_WALLET_FILE: &str = "btc-wallet.json";

/// The multisig wallet this keystore cosigns for, pinned offline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinnedBtcWallet {
    /// [`BTC_WALLET_KIND`].
    pub kind: String,
    pub network: Network,
    pub threshold: usize,
    pub cosigners: Vec<Cosigner>,
    /// The most one transaction may pay in fees, satoshi.
    pub fee_sat_max: u64,
}

impl PinnedBtcWallet {
    pub fn wallet(&self) -> Result<MultisigWallet, BundleError> {
        if self.kind != BTC_WALLET_KIND {
            return Err(invalid("btc wallet kind", format!("is {:?}, expected {BTC_WALLET_KIND:?}", self.kind)));
        }
        MultisigWallet::new(self.threshold, self.cosigners.clone(), self.network)
            .map_err(|e| invalid("btc wallet", e.to_string()))
    }

    /// `DIR/btc-wallet.json` for `DIR/keystore.json`.
    pub fn path_for(keystore_path: &Path) -> PathBuf {
        keystore_path.with_file_name(BTC_WALLET_FILE)
    }

    pub fn read(path: &Path) -> Result<PinnedBtcWallet, BundleError> {
        let bytes = read_bounded(path)?;
        let w: PinnedBtcWallet = serde_json::from_slice(&bytes).map_err(|e| BundleError::Io {
            path: path.display().to_string(),
            reason: format!("does not parse: {e}"),
        })?;
        w.wallet()?;
        Ok(w)
    }

    /// Pins the wallet: refuses to overwrite an existing pin (a changed cosigner set is a new wallet and a new
    /// ceremony, not an edit).
    pub fn write_new(&self, path: &Path) -> Result<(), BundleError> {
        self.wallet()?;
        if path.exists() {
            return Err(invalid(
                "btc wallet",
                format!("{} exists: a pinned wallet is never overwritten", path.display()),
            ));
        }
        write_json_0600(path, self)
    }
}

/// What the online side exports for the offline cosigner.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnsignedPsbtBundle {
    /// [`UNSIGNED_PSBT_KIND`].
    pub kind: String,
    /// The keystore (cold key) asked to cosign.
    pub key_id: String,
    pub network: Network,
    /// The unsigned PSBT (BIP174, base64), possibly already carrying other cosigners' signatures.
    pub psbt_base64: String,
    pub intent: Intent,
    /// Approvals over `(Process::Signing, intent.id, intent.hash())`.
    pub approvals: Vec<Approval>,
    /// The online operator registry log; accepted only as an extension of the pinned one.
    pub registry_log: Vec<LoggedChange>,
    pub created_at_ms: i64,
}

/// What the offline cosigner writes back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedPsbtBundle {
    /// [`SIGNED_PSBT_KIND`].
    pub kind: String,
    /// sha256 hex of the canonical JSON of the unsigned bundle it answers ([`unsigned_psbt_sha256`]).
    pub unsigned_sha256: String,
    /// sha256 of the intent's canonical bytes, hex.
    pub intent_hash: String,
    /// The txid of the transaction signed (segwit: unchanged by signatures).
    pub txid: String,
    /// The cosigner who signed: its master fingerprint.
    pub cosigner_fingerprint: String,
    /// The PSBT with this cosigner's partial signatures added, base64.
    pub psbt_base64: String,
}

/// sha256 (hex) of the bundle's canonical JSON (compact serialisation of the parsed struct, fields in order).
pub fn unsigned_psbt_sha256(b: &UnsignedPsbtBundle) -> String {
    // Serialising plain structs of strings and numbers into a Vec cannot fail.
    let json = serde_json::to_vec(b).unwrap_or_default();
    hex::encode(Sha256::digest(json))
}

/// Decodes a base64 PSBT, bounded by the signer's [`BTC_PSBT_BYTES_MAX`].
pub fn decode_psbt(field: &str, text: &str) -> Result<Psbt, BundleError> {
    // base64 is 4/3 of the bytes: bound the text before decoding it.
    if text.len() > BTC_PSBT_BYTES_MAX / 3 * 4 + 4 {
        return Err(invalid(field, format!("is over {BTC_PSBT_BYTES_MAX} bytes")));
    }
    let bytes = base64::engine::general_purpose::STANDARD.decode(text).map_err(|_| invalid(field, "is not base64"))?;
    Psbt::deserialize(&bytes).map_err(|e| invalid(field, format!("is not a PSBT: {e}")))
}

pub fn encode_psbt(psbt: &Psbt) -> String {
    base64::engine::general_purpose::STANDARD.encode(psbt.serialize())
}

/// The record slot of one spent outpoint: `<key_id>:btc:<network>:<txid>:<vout>`.
pub fn outpoint_slot(key_id: &str, network: Network, outpoint: &bitcoin::OutPoint) -> String {
    format!("{key_id}:btc:{network}:{outpoint}")
}

/// The record slot of one intent: `<key_id>:btc-intent:<network>:<intent id>`.
pub fn intent_slot(key_id: &str, network: Network, intent_id: &str) -> String {
    format!("{key_id}:btc-intent:{network}:{intent_id}")
}

/// The anti-double-sign rule for Bitcoin (K20), on the offline record: an outpoint is signed for one intent
/// only (two intents spending one coin means one of them was not what was approved), and an intent is signed
/// spending one set of outpoints only (two disjoint spends for one intent would pay it twice). Re-signing the
/// same transaction, or a fee bump of it (same intent, same inputs), is allowed. Returns whether the
/// transaction is new to the record.
pub fn check_btc_record(
    record: &SignRecord,
    key_id: &str,
    network: Network,
    intent: &Intent,
    tx: &bitcoin::Transaction,
) -> Result<bool, BundleError> {
    let intent_hash = hex::encode(intent.hash());
    let txid = tx.compute_txid().to_string();
    let inputs: Vec<bitcoin::OutPoint> = tx.input.iter().map(|i| i.previous_output).collect();
    let mut new = true;
    for outpoint in &inputs {
        let slot = outpoint_slot(key_id, network, outpoint);
        for e in record.slots.get(&slot).into_iter().flatten() {
            if e.intent_hash != intent_hash {
                return Err(invalid(
                    "psbt_base64.inputs",
                    format!("double sign refused for {slot}: already signed for another intent ({})", e.intent_hash),
                ));
            }
        }
    }
    let slot = intent_slot(key_id, network, &intent.id);
    for e in record.slots.get(&slot).into_iter().flatten() {
        if e.payload_sha256 == txid {
            new = false;
            continue;
        }
        let old_bytes = crate::bundle::decode_hex("sign record payload_hex", &e.payload_hex)?;
        let old: bitcoin::Transaction = bitcoin::consensus::deserialize(&old_bytes)
            .map_err(|err| invalid("sign record payload_hex", err.to_string()))?;
        let old_inputs: Vec<bitcoin::OutPoint> = old.input.iter().map(|i| i.previous_output).collect();
        if old_inputs != inputs || e.intent_hash != intent_hash {
            return Err(invalid(
                "psbt_base64.inputs",
                format!(
                    "double sign refused for {slot}: the intent was signed spending other inputs (txid {})",
                    e.payload_sha256
                ),
            ));
        }
    }
    Ok(new)
}

/// Adds the signed transaction to the record (one entry per outpoint and one for the intent).
fn record_btc(
    record: &mut SignRecord,
    key_id: &str,
    network: Network,
    intent: &Intent,
    tx: &bitcoin::Transaction,
    now_ms: i64,
) -> Result<(), BundleError> {
    let entry = SlotEntry {
        payload_sha256: tx.compute_txid().to_string(),
        payload_hex: bitcoin::consensus::encode::serialize_hex(tx),
        intent_hash: hex::encode(intent.hash()),
        signed_at_ms: now_ms,
    };
    let mut slots: Vec<String> = tx.input.iter().map(|i| outpoint_slot(key_id, network, &i.previous_output)).collect();
    slots.push(intent_slot(key_id, network, &intent.id));
    for slot in slots {
        let entries = record.slots.entry(slot.clone()).or_default();
        if entries.len() >= BTC_SLOT_ENTRIES_MAX {
            return Err(invalid("psbt_base64", format!("{slot} already holds {BTC_SLOT_ENTRIES_MAX} transactions")));
        }
        entries.push(entry.clone());
    }
    Ok(())
}

/// A bundle that passed every offline check and may be signed after confirmation.
#[derive(Debug)]
pub struct PsbtReview {
    pub bundle: UnsignedPsbtBundle,
    pub psbt: Psbt,
    pub checked: CheckedBtcTx,
    pub summary: String,
    pub approvers: Vec<String>,
    pub extends_registry: bool,
    /// Whether the transaction is new to the anti-double-sign record (false: signed before, signed again).
    pub new_to_record: bool,
}

fn btc(amount: Amount) -> String {
    // Always all 8 decimals ("1.00000000 BTC"), formatted by rust-bitcoin from integer satoshi.
    format!("{:.8} BTC  ({} sat)", amount.display_in(Denomination::Bitcoin), amount.to_sat())
}

/// The transaction in human terms, from the decoded PSBT (never from the intent).
pub fn psbt_summary(b: &UnsignedPsbtBundle, psbt: &Psbt, checked: &CheckedBtcTx, wallet: &MultisigWallet) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("  {k:<14} {v}\n"));
    let tx = &psbt.unsigned_tx;
    let to_text = |vout: u32| {
        tx.output
            .get(vout as usize)
            .map(|o| {
                let to = Address::from_script(&o.script_pubkey, b.network)
                    .map(|a| a.to_string())
                    .unwrap_or_else(|_| format!("script {}", o.script_pubkey.to_hex_string()));
                (o.value, to)
            })
            .unwrap_or((Amount::ZERO, "(missing)".into()))
    };
    let (amount, destination) = to_text(checked.payment_vout);
    line("asset", "BTC (8 decimals)".into());
    line("amount", btc(amount));
    line("destination", destination);
    line("network", b.network.to_string());
    line("fee", btc(Amount::from_sat(checked.fee_sat)));
    if let Some(vout) = checked.change_vout {
        let (value, to) = to_text(vout);
        line("change", format!("{} to {to} (this wallet's change chain, re-derived)", btc(value)));
    }
    // Saturating: the summary must not panic on a PSBT it is asked to show (the checks bound the sums anyway).
    let total = psbt
        .inputs
        .iter()
        .filter_map(|i| i.witness_utxo.as_ref())
        .fold(0u64, |t, u| t.saturating_add(u.value.to_sat()));
    line("inputs", format!("{} of this wallet, {}", tx.input.len(), btc(Amount::from_sat(total))));
    line("wallet", format!("{}-of-{} P2WSH multisig", wallet.threshold, wallet.cosigners.len()));
    line("txid", checked.unsigned_txid.to_string());
    line(
        "intent",
        format!(
            "{} ({}): {} sat of {} to {}",
            b.intent.id, b.intent.reason, b.intent.amount, b.intent.asset, b.intent.destination
        ),
    );
    line("approvals", format!("{} presented", b.approvals.len()));
    format!("Bitcoin transaction to cosign with the cold key:\n{out}")
}

/// Every offline check of a PSBT bundle: it is for this keystore and the pinned wallet's network; the PSBT,
/// decoded here, passes the cosigner's checks against the intent with the pinned cosigners and fee bound; the
/// approvals reach the pinned quorum over a registry log extending the pinned one. Nothing secret is touched.
pub fn review_psbt(
    ks: &Keystore,
    record: &SignRecord,
    pinned: &PinnedBtcWallet,
    b: UnsignedPsbtBundle,
    now_ms: i64,
) -> Result<PsbtReview, BundleError> {
    if b.kind != UNSIGNED_PSBT_KIND {
        return Err(invalid("kind", format!("is {:?}, expected {UNSIGNED_PSBT_KIND:?}", b.kind)));
    }
    if b.key_id != ks.key_id {
        return Err(invalid("key_id", format!("is {:?}, this keystore holds {:?}", b.key_id, ks.key_id)));
    }
    if b.network != pinned.network {
        return Err(invalid("network", format!("is {}, the pinned wallet is on {}", b.network, pinned.network)));
    }
    let wallet = pinned.wallet()?;
    let psbt = decode_psbt("psbt_base64", &b.psbt_base64)?;
    let checked = check_multisig_psbt(&psbt, &wallet, &b.intent, pinned.fee_sat_max)
        .map_err(|e| from_signer("psbt_base64.", e))?
        .checked;
    let (approvers, extends_registry) =
        crate::sign::verify_approvals(ks, &b.registry_log, &b.intent, &b.approvals, now_ms)?;
    let new_to_record = check_btc_record(record, &ks.key_id, b.network, &b.intent, &psbt.unsigned_tx)?;
    let mut summary = psbt_summary(&b, &psbt, &checked, &wallet);
    summary.push_str(&format!("  {:<14} {}\n", "approved by", approvers.join(", ")));
    Ok(PsbtReview { bundle: b, psbt, checked, summary, approvers, extends_registry, new_to_record })
}

/// The cosigner key of a keystore: the BIP48 account of its cold seed, unsealed with `shares`.
pub fn cosigner_key(ks: &Keystore, shares: &[RawShare], network: Network) -> Result<CosignerKey, BundleError> {
    let seed = ks.unseal_seed(shares)?;
    let mut master = seed.to_bip32_master().map_err(|e| invalid("keystore", e.to_string()))?;
    drop(seed);
    let key = CosignerKey::from_master(&master, network);
    master.private_key.non_secure_erase();
    key.map_err(|e| invalid("keystore", e.to_string()))
}

/// Signs a reviewed bundle: unseals the cold key, requires it to be one of the pinned cosigners, adds its
/// signature to every input (the cosigner's own checks run again), checks the result as the online side will
/// ([`verify_signed_psbt`]), writes the anti-double-sign record (fail closed: no record, no signed file) and
/// pins an extended registry log. The caller writes the signed file.
pub fn sign_psbt(
    ks: &mut Keystore,
    keystore_path: &Path,
    record: &mut SignRecord,
    pinned: &PinnedBtcWallet,
    review: &PsbtReview,
    shares: &[RawShare],
    now_ms: i64,
) -> Result<SignedPsbtBundle, BundleError> {
    let wallet = pinned.wallet()?;
    let key = cosigner_key(ks, shares, pinned.network)?;
    if !wallet.cosigners.contains(&key.cosigner) {
        return Err(invalid(
            "btc wallet",
            format!("this keystore's key {} is not one of the pinned cosigners", key.cosigner.master_fingerprint),
        ));
    }
    let mut psbt = review.psbt.clone();
    cosign(&mut psbt, &wallet, &key, &review.bundle.intent, pinned.fee_sat_max)
        .map_err(|e| from_signer("psbt_base64.", e))?;
    let signed = SignedPsbtBundle {
        kind: SIGNED_PSBT_KIND.into(),
        unsigned_sha256: unsigned_psbt_sha256(&review.bundle),
        intent_hash: hex::encode(review.bundle.intent.hash()),
        txid: review.checked.unsigned_txid.to_string(),
        cosigner_fingerprint: key.cosigner.master_fingerprint.to_string(),
        psbt_base64: encode_psbt(&psbt),
    };
    drop(key);
    verify_signed_psbt(&review.bundle, &signed, &wallet, pinned.fee_sat_max)
        .map_err(|e| invalid("self-check", e.to_string()))?;
    if review.new_to_record {
        let tx = &review.psbt.unsigned_tx;
        record_btc(record, &ks.key_id, pinned.network, &review.bundle.intent, tx, now_ms)?;
        record.write(&Keystore::record_path(keystore_path))?;
    }
    if review.extends_registry {
        ks.registry_log = review.bundle.registry_log.clone();
        ks.write(keystore_path)?;
    }
    Ok(signed)
}

/// Online side: checks the signed file against the unsigned bundle the server itself exported (its stored
/// copy). Kind, `unsigned_sha256`, `intent_hash`, `txid`; the signed PSBT is the exported one with nothing
/// changed but partial signatures added (the transaction, every input's and output's other fields, the
/// signatures already exported); it passes the cosigner checks again (intent, inputs, change, every signature
/// valid); and the named cosigner of `wallet` signed every input. Returns the signed PSBT to combine. Any edit
/// is refused, naming the field.
pub fn verify_signed_psbt(
    unsigned: &UnsignedPsbtBundle,
    signed: &SignedPsbtBundle,
    wallet: &MultisigWallet,
    fee_cap_sat: u64,
) -> Result<Psbt, BundleError> {
    if signed.kind != SIGNED_PSBT_KIND {
        return Err(invalid("kind", format!("is {:?}, expected {SIGNED_PSBT_KIND:?}", signed.kind)));
    }
    if !signed.unsigned_sha256.eq_ignore_ascii_case(&unsigned_psbt_sha256(unsigned)) {
        return Err(invalid("unsigned_sha256", "does not match the unsigned bundle this server exported"));
    }
    if !signed.intent_hash.eq_ignore_ascii_case(&hex::encode(unsigned.intent.hash())) {
        return Err(invalid("intent_hash", "does not match the exported intent"));
    }
    let exported = decode_psbt("unsigned psbt_base64", &unsigned.psbt_base64)?;
    let psbt = decode_psbt("psbt_base64", &signed.psbt_base64)?;
    if psbt.unsigned_tx != exported.unsigned_tx {
        return Err(invalid("psbt_base64", "its transaction differs from the exported one"));
    }
    if signed.txid != psbt.unsigned_tx.compute_txid().to_string() {
        return Err(invalid("txid", "is not the txid of the signed PSBT's transaction"));
    }
    if psbt.outputs != exported.outputs || psbt.xpub != exported.xpub || psbt.inputs.len() != exported.inputs.len() {
        return Err(invalid("psbt_base64", "its outputs or global fields differ from the exported PSBT"));
    }
    let cosigner = wallet
        .cosigners
        .iter()
        .find(|c| c.master_fingerprint.to_string().eq_ignore_ascii_case(&signed.cosigner_fingerprint))
        .ok_or_else(|| invalid("cosigner_fingerprint", "is not a cosigner of this wallet"))?;
    for (n, (now, before)) in psbt.inputs.iter().zip(&exported.inputs).enumerate() {
        let mut stripped = now.clone();
        stripped.partial_sigs.retain(|pk, _| before.partial_sigs.contains_key(pk));
        if &stripped != before {
            return Err(invalid(
                format!("psbt_base64.inputs[{n}]"),
                "differs from the exported input beyond signatures",
            ));
        }
        let own = now.bip32_derivation.iter().any(|(pk, (fp, _))| {
            *fp == cosigner.master_fingerprint && now.partial_sigs.contains_key(&bitcoin::PublicKey::new(*pk))
        });
        if !own {
            return Err(invalid(
                format!("psbt_base64.inputs[{n}].partial_sigs"),
                format!("has no signature by cosigner {}", cosigner.master_fingerprint),
            ));
        }
    }
    check_multisig_psbt(&psbt, wallet, &unsigned.intent, fee_cap_sat).map_err(|e| from_signer("psbt_base64.", e))?;
    Ok(psbt)
}

pub fn read_unsigned_psbt(path: &Path) -> Result<UnsignedPsbtBundle, BundleError> {
    let b: UnsignedPsbtBundle = serde_json::from_slice(&read_bounded(path)?)
        .map_err(|e| BundleError::Io { path: path.display().to_string(), reason: format!("does not parse: {e}") })?;
    if b.kind != UNSIGNED_PSBT_KIND {
        return Err(invalid("kind", format!("is {:?}, expected {UNSIGNED_PSBT_KIND:?}", b.kind)));
    }
    Ok(b)
}

pub fn read_signed_psbt(path: &Path) -> Result<SignedPsbtBundle, BundleError> {
    let b: SignedPsbtBundle = serde_json::from_slice(&read_bounded(path)?)
        .map_err(|e| BundleError::Io { path: path.display().to_string(), reason: format!("does not parse: {e}") })?;
    if b.kind != SIGNED_PSBT_KIND {
        return Err(invalid("kind", format!("is {:?}, expected {SIGNED_PSBT_KIND:?}", b.kind)));
    }
    Ok(b)
}
