//! The signer's own view of a Bitcoin withdrawal PSBT (BIP174; K20, C4, C5): what it checks before any
//! key signs, independent of whoever built the PSBT.
//!
//! The builder (`kinko_chain::btc::psbt`) runs online and is not trusted here. The signer decodes the
//! unsigned transaction itself and signs only when:
//! - the intent is for asset `BTC` on the chain id of the signer's network ([`btc_chain_id`]);
//! - every input carries `witness_utxo` (the amount and script a segwit v0 signature commits to, so the
//!   fee computed from them is the fee the signature pays) and spends a native segwit v0 output; a legacy
//!   or wrapped input is refused, because its signature does not commit to the amount and the fee could
//!   be lied about (the "segwit fee bug" class);
//! - every input asks for SIGHASH_ALL or nothing (which means ALL): NONE or SINGLE or ANYONECANPAY would let
//!   someone change outputs or add inputs after the signature;
//! - exactly one output pays the intent's destination exactly the intent's amount in satoshi;
//! - at most one other output, and it is change the caller's `is_own_change` recognises (the signer
//!   re-derives it from its own xpub; never trusted from the PSBT alone); no OP_RETURN, no third output;
//! - the fee (inputs − outputs) is at most the signer's cap.
//!
//! Everything here is pure (no I/O, no keys): the journal, approvals and signing are in
//! [`crate::LocalSigner`]; the offline tool runs the very same checks.

use std::collections::BTreeSet;
use std::str::FromStr;

use bitcoin::bip32::{ChildNumber, KeySource, Xpriv};
use bitcoin::hashes::Hash;
use bitcoin::psbt::{Output, Psbt, PsbtSighashType};
use bitcoin::secp256k1::{All, Message, PublicKey, Secp256k1, SecretKey};
use bitcoin::sighash::{EcdsaSighashType, SighashCache};
use bitcoin::{Address, Amount, CompressedPublicKey, Network, OutPoint, ScriptBuf, TxOut, Txid};
use kinko_core::ChainId;
use kinko_core::intent::Intent;
use kinko_keys::btc::{Bip84Account, Keychain};
use serde::{Deserialize, Serialize};

use crate::journal::SlotKey;
use crate::{Approval, SignerError};

/// The asset code a Bitcoin intent carries.
pub const BTC_ASSET: &str = "BTC";

/// Chain ids for Bitcoin intents. `Intent::chain_id` was made for EIP-155 chain ids; a Bitcoin intent needs
/// a value that no EVM chain can ever have, so that an approval of a Bitcoin intent can never be read as
/// one for an EVM chain. EIP-2294 bounds EVM chain ids at 2^63 − 37 (0x7FFF_FFFF_FFFF_FFDB); these sit
/// above that bound and still fit an i64 (what databases store): 0x7FFF_FFFF_FFFF_FFF0 + n.
pub const BTC_CHAIN_ID_BASE: u64 = 0x7FFF_FFFF_FFFF_FFF0;
/// Mainnet: `BTC_CHAIN_ID_BASE + 0` = 9223372036854775792.
pub const BTC_CHAIN_ID_MAINNET: u64 = BTC_CHAIN_ID_BASE;
/// Testnet3: `+ 1`.
pub const BTC_CHAIN_ID_TESTNET: u64 = BTC_CHAIN_ID_BASE + 1;
/// Signet: `+ 2`.
pub const BTC_CHAIN_ID_SIGNET: u64 = BTC_CHAIN_ID_BASE + 2;
/// Regtest: `+ 3` = 9223372036854775795.
pub const BTC_CHAIN_ID_REGTEST: u64 = BTC_CHAIN_ID_BASE + 3;
/// Testnet4: `+ 4`.
pub const BTC_CHAIN_ID_TESTNET4: u64 = BTC_CHAIN_ID_BASE + 4;

/// Most inputs the signer looks at in one PSBT. Why: the builder spends at most 100
/// (`kinko_chain::btc::psbt::MAX_INPUTS`); a little room for other builders, and a bound on the signer's
/// work (one signature and one journal slot per input).
pub const BTC_INPUTS_MAX: usize = 128;
/// Outputs of a withdrawal: the payment and at most one change.
pub const BTC_OUTPUTS_MAX: usize = 2;
/// Largest serialized PSBT accepted in a request. Why: 128 inputs with their metadata stay well below
/// this; anything larger is not a withdrawal this signer builds.
pub const BTC_PSBT_BYTES_MAX: usize = 256 * 1024;

/// What the checks found, for the signer to record and sign.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckedBtcTx {
    /// The output paying the intent.
    pub payment_vout: u32,
    /// The change output, if any (already checked with `is_own_change`).
    pub change_vout: Option<u32>,
    /// Inputs minus outputs, from the inputs' `witness_utxo`.
    pub fee_sat: u64,
    /// The outpoints spent, in input order: one anti-double-sign slot each.
    pub spent: Vec<OutPoint>,
    /// The txid of the unsigned transaction (segwit: the txid does not change when signed).
    pub unsigned_txid: Txid,
}

/// The chain id a Bitcoin intent on `network` carries (see [`BTC_CHAIN_ID_BASE`]).
pub fn btc_chain_id(network: Network) -> ChainId {
    ChainId(match network {
        Network::Bitcoin => BTC_CHAIN_ID_MAINNET,
        Network::Testnet => BTC_CHAIN_ID_TESTNET,
        Network::Signet => BTC_CHAIN_ID_SIGNET,
        Network::Regtest => BTC_CHAIN_ID_REGTEST,
        Network::Testnet4 => BTC_CHAIN_ID_TESTNET4,
    })
}

/// The network whose chain id this is, if it is a Bitcoin one.
pub fn btc_network_of(chain_id: ChainId) -> Option<Network> {
    [Network::Bitcoin, Network::Testnet, Network::Signet, Network::Regtest, Network::Testnet4]
        .into_iter()
        .find(|n| btc_chain_id(*n) == chain_id)
}

/// The journal's chain name for a network: `btc:bitcoin`, `btc:testnet`, `btc:signet`, `btc:regtest`,
/// `btc:testnet4` (rust-bitcoin's names).
pub fn btc_journal_chain(network: Network) -> String {
    format!("btc:{network}")
}

/// The anti-double-sign slot of one spent outpoint: `(key, btc:<network>, <txid>:<vout>)`.
pub fn btc_slot(key_id: &str, network: Network, outpoint: &OutPoint) -> SlotKey {
    SlotKey::btc(key_id, network, outpoint)
}

fn mismatch(field: &'static str, expected: impl ToString, actual: impl ToString) -> SignerError {
    SignerError::IntentMismatch { field, expected: expected.to_string(), actual: actual.to_string() }
}

fn malformed(what: String) -> SignerError {
    SignerError::Malformed(what)
}

/// The intent's destination as an address of `network`, required to be written canonically (what
/// `Address`'s `Display` prints: lower-case bech32), so that one destination has one spelling in intents,
/// approvals and limits.
pub fn intent_destination(intent: &Intent, network: Network) -> Result<Address, SignerError> {
    let parsed = Address::from_str(&intent.destination).map_err(|e| {
        SignerError::Refused(format!("intent.destination {:?} is not a Bitcoin address: {e}", intent.destination))
    })?;
    let address = parsed.require_network(network).map_err(|_| {
        SignerError::Refused(format!("intent.destination {:?} is not an address of {network}", intent.destination))
    })?;
    let canonical = address.to_string();
    if canonical != intent.destination {
        return Err(mismatch("intent.destination (canonical form)", canonical, &intent.destination));
    }
    Ok(address)
}

/// The intent's amount in satoshi, which must be a valid Bitcoin amount.
pub fn intent_amount(intent: &Intent) -> Result<Amount, SignerError> {
    let sat = u64::try_from(intent.amount.base_units())
        .ok()
        .map(Amount::from_sat)
        .filter(|a| *a <= Amount::MAX_MONEY && *a > Amount::ZERO)
        .ok_or_else(|| {
            SignerError::Refused(format!("intent.amount {} sat is not a valid Bitcoin amount", intent.amount))
        })?;
    Ok(sat)
}

fn add_sat(total: Amount, value: Amount, what: &str) -> Result<Amount, SignerError> {
    total
        .checked_add(value)
        .filter(|t| *t <= Amount::MAX_MONEY)
        .ok_or_else(|| malformed(format!("{what}: the sum exceeds 21 000 000 BTC")))
}

/// Checks `psbt` against `intent` (see the module documentation). `is_own_change(txout, psbt_output)` must
/// re-derive the script from the output's `bip32_derivation` and the signer's own xpub; it is asked only
/// about outputs that do not pay the intent.
pub fn check_psbt_against_intent(
    psbt: &Psbt,
    intent: &Intent,
    network: Network,
    is_own_change: &dyn Fn(&TxOut, &Output) -> bool,
    fee_cap_sat: u64,
) -> Result<CheckedBtcTx, SignerError> {
    if intent.asset.as_str() != BTC_ASSET {
        return Err(mismatch("intent.asset", BTC_ASSET, &intent.asset));
    }
    let chain_id = btc_chain_id(network);
    if intent.chain_id != chain_id {
        return Err(mismatch("intent.chain_id", chain_id, intent.chain_id));
    }
    let destination = intent_destination(intent, network)?.script_pubkey();
    let amount = intent_amount(intent)?;

    let tx = &psbt.unsigned_tx;
    if tx.input.is_empty() || tx.input.len() > BTC_INPUTS_MAX {
        return Err(malformed(format!("psbt has {} inputs; 1 to {BTC_INPUTS_MAX} are signed", tx.input.len())));
    }
    if tx.output.is_empty() || tx.output.len() > BTC_OUTPUTS_MAX {
        return Err(SignerError::Refused(format!(
            "psbt has {} outputs; a withdrawal has the payment and at most one change output",
            tx.output.len()
        )));
    }
    if psbt.inputs.len() != tx.input.len() || psbt.outputs.len() != tx.output.len() {
        return Err(malformed("psbt input or output maps do not match the unsigned transaction".into()));
    }

    let mut spent = Vec::with_capacity(tx.input.len());
    let mut seen = BTreeSet::new();
    let mut inputs_sat = Amount::ZERO;
    for (i, (txin, input)) in tx.input.iter().zip(&psbt.inputs).enumerate() {
        let outpoint = txin.previous_output;
        if !seen.insert(outpoint) {
            return Err(malformed(format!("input {i}: spends {outpoint} twice")));
        }
        let utxo = input.witness_utxo.as_ref().ok_or_else(|| {
            SignerError::Refused(format!(
                "input {i}: no witness_utxo; only native segwit inputs are signed (their signature commits to the amount)"
            ))
        })?;
        if !(utxo.script_pubkey.is_p2wpkh() || utxo.script_pubkey.is_p2wsh()) {
            return Err(SignerError::Refused(format!(
                "input {i}: witness_utxo.script_pubkey is not native segwit v0 (P2WPKH or P2WSH)"
            )));
        }
        // A full previous transaction, when given, must agree with witness_utxo: two different claims about
        // the same output mean someone is lying about the amount.
        if let Some(prev) = &input.non_witness_utxo {
            let agrees = prev.compute_txid() == outpoint.txid
                && prev.output.get(outpoint.vout as usize).is_some_and(|o| o == utxo);
            if !agrees {
                return Err(malformed(format!(
                    "input {i}: non_witness_utxo disagrees with witness_utxo or the outpoint"
                )));
            }
        }
        match input.sighash_type {
            None => {}
            Some(t) if t == PsbtSighashType::from(EcdsaSighashType::All) => {}
            Some(t) => {
                return Err(SignerError::Refused(format!(
                    "input {i}: sighash_type {t} is refused; only SIGHASH_ALL is signed"
                )));
            }
        }
        inputs_sat = add_sat(inputs_sat, utxo.value, "inputs' witness_utxo values")?;
        spent.push(outpoint);
    }

    let mut payment_vout = None;
    let mut change_vout = None;
    let mut outputs_sat = Amount::ZERO;
    for (vout, (txout, output)) in tx.output.iter().zip(&psbt.outputs).enumerate() {
        outputs_sat = add_sat(outputs_sat, txout.value, "outputs' values")?;
        let vout_u32 = vout as u32; // at most BTC_OUTPUTS_MAX
        if txout.script_pubkey == destination {
            if payment_vout.is_some() {
                return Err(SignerError::Refused("more than one output pays the intent's destination".into()));
            }
            if txout.value != amount {
                return Err(mismatch("payment amount (sat)", amount.to_sat(), txout.value.to_sat()));
            }
            payment_vout = Some(vout_u32);
        } else if txout.script_pubkey.is_op_return() {
            return Err(SignerError::Refused(format!("output {vout}: OP_RETURN outputs are not signed")));
        } else if is_own_change(txout, output) {
            if change_vout.is_some() {
                return Err(SignerError::Refused("more than one change output".into()));
            }
            change_vout = Some(vout_u32);
        } else {
            let to = Address::from_script(&txout.script_pubkey, network)
                .map(|a| a.to_string())
                .unwrap_or_else(|_| format!("script {}", txout.script_pubkey.to_hex_string()));
            return Err(mismatch(
                "output destination (neither the intent's destination nor the signer's own change)",
                &intent.destination,
                format!("output {vout} pays {} sat to {to}", txout.value.to_sat()),
            ));
        }
    }
    let payment_vout = payment_vout.ok_or_else(|| mismatch("destination", &intent.destination, "no output pays it"))?;
    let fee = inputs_sat.checked_sub(outputs_sat).ok_or_else(|| {
        malformed(format!("outputs ({} sat) exceed inputs ({} sat)", outputs_sat.to_sat(), inputs_sat.to_sat()))
    })?;
    if fee.to_sat() > fee_cap_sat {
        return Err(SignerError::Refused(format!(
            "fee {} sat is above the signer's cap of {fee_cap_sat} sat",
            fee.to_sat()
        )));
    }
    Ok(CheckedBtcTx { payment_vout, change_vout, fee_sat: fee.to_sat(), spent, unsigned_txid: tx.compute_txid() })
}

/// The freeze scope chain name of Bitcoin (`chain:btc`, K19): a Bitcoin signature is checked against it.
pub const BTC_FREEZE_CHAIN: &str = "btc";
/// The key access log's operation for a Bitcoin PSBT signature.
pub const BTC_SIGN_OPERATION: &str = "sign_btc";
/// Default ceiling on the fee of one withdrawal. Why 0.01 BTC: the largest PSBT the builder makes (100
/// inputs, ~6.9 kvB) at 100 sat/vB pays about 0.007 BTC; more is a mistake or an attack on the funds.
pub const BTC_FEE_CAP_SAT_DEFAULT: u64 = 1_000_000;

/// A request to sign one Bitcoin withdrawal PSBT with the signer's BIP84 account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BtcSignRequest {
    /// The BIP84 account's key id in the signer (e.g. `btc-hot-1`).
    pub key_id: String,
    /// The network the PSBT is for; must be the account's.
    pub network: Network,
    /// The unsigned PSBT, BIP174 binary (hex in JSON); at most [`BTC_PSBT_BYTES_MAX`] bytes.
    #[serde(with = "crate::hex_bytes")]
    pub psbt: Vec<u8>,
    /// Asset `BTC`, chain id [`btc_chain_id`], destination the canonical address, amount in satoshi.
    pub intent: Intent,
    /// Approvals over `(Process::Signing, intent.id, intent.hash())`, counted against the signer's own
    /// `[[signer.quorum]]` for (key, `BTC`, amount) exactly as for `sign_evm`.
    pub approvals: Vec<Approval>,
    pub actor: String,
    pub terminal: String,
}

/// What the signer returns: the finalized PSBT and the transaction extracted from it, already verified
/// with libbitcoinconsensus against the outputs it spends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BtcSigned {
    /// The finalized PSBT (BIP174 binary; hex in JSON).
    #[serde(with = "crate::hex_bytes")]
    pub psbt: Vec<u8>,
    /// The signed transaction, consensus-serialized (hex in JSON): what `sendrawtransaction` takes.
    #[serde(with = "crate::hex_bytes")]
    pub raw_tx: Vec<u8>,
    pub txid: Txid,
    pub fee_sat: u64,
}

/// The journal's payload for a PSBT: a PSBT holding only the unsigned transaction and each input's
/// `witness_utxo`. Why not the bytes as sent: the same transaction sent again with other metadata (a
/// proprietary field, a reordered map) must be recognised as the same payload, and a later fee bump needs
/// the spent amounts to judge the fee.
pub fn btc_journal_payload(psbt: &Psbt) -> Result<Vec<u8>, SignerError> {
    let mut bare =
        Psbt::from_unsigned_tx(psbt.unsigned_tx.clone()).map_err(|e| malformed(format!("psbt unsigned_tx: {e}")))?;
    for (bare_input, input) in bare.inputs.iter_mut().zip(&psbt.inputs) {
        bare_input.witness_utxo = input.witness_utxo.clone();
    }
    Ok(bare.serialize())
}

fn fee_of(psbt: &Psbt) -> Option<Amount> {
    let mut inputs = Amount::ZERO;
    for input in &psbt.inputs {
        inputs = inputs.checked_add(input.witness_utxo.as_ref()?.value)?;
    }
    let mut outputs = Amount::ZERO;
    for o in &psbt.unsigned_tx.output {
        outputs = outputs.checked_add(o.value)?;
    }
    inputs.checked_sub(outputs)
}

/// Whether `new` may be signed although `old` (a payload already signed for the same intent and sharing
/// an input) was: only a BIP125 fee bump is. `None` when it is one: exactly the same inputs, the same
/// payment output, and only the change lowered (or dropped) so that the fee is strictly higher. Otherwise
/// the reason it is a double sign. Both were checked against the same intent ([`check_psbt_against_intent`])
/// and `new`'s fee against the cap.
pub fn btc_fee_bump_refusal(old: &Psbt, new: &Psbt, destination: &bitcoin::Script) -> Option<String> {
    let inputs = |p: &Psbt| -> BTreeSet<OutPoint> { p.unsigned_tx.input.iter().map(|i| i.previous_output).collect() };
    if inputs(old) != inputs(new) || old.unsigned_tx.input.len() != new.unsigned_tx.input.len() {
        return Some("an input was already signed in a transaction spending other inputs".into());
    }
    let split = |p: &'_ Psbt| -> (Vec<TxOut>, Vec<TxOut>) {
        p.unsigned_tx.output.iter().cloned().partition(|o| o.script_pubkey.as_script() == destination)
    };
    let (old_payment, old_change) = split(old);
    let (new_payment, new_change) = split(new);
    if old_payment != new_payment {
        return Some("the payment differs from the transaction already signed for these inputs".into());
    }
    match (old_change.as_slice(), new_change.as_slice()) {
        (_, []) => {}
        ([old_c], [new_c]) if old_c.script_pubkey == new_c.script_pubkey && new_c.value < old_c.value => {}
        _ => return Some("not a fee bump: only the change may be lowered or dropped".into()),
    }
    match (fee_of(old), fee_of(new)) {
        (Some(old_fee), Some(new_fee)) if new_fee > old_fee => None,
        (Some(_), Some(_)) => Some("not a fee bump: the fee is not higher than the one already signed".into()),
        _ => Some("a recorded payload for this outpoint has no amounts to compare".into()),
    }
}

/// The custodian's BIP84 account as the signer holds it: the account's extended private key (never the
/// master) and its public half. It signs only inputs it re-derives itself and recognises only change it
/// re-derives itself.
pub struct BtcAccountKey {
    account: Bip84Account,
    account_xpriv: Xpriv,
    fee_cap_sat: u64,
    secp: Secp256k1<All>,
}

/// Key id-free and secret-free.
impl std::fmt::Debug for BtcAccountKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BtcAccountKey")
            .field("xpub", &self.account.xpub.to_string())
            .field("network", &self.account.network)
            .field("fee_cap_sat", &self.fee_cap_sat)
            .finish_non_exhaustive()
    }
}

impl Drop for BtcAccountKey {
    fn drop(&mut self) {
        self.account_xpriv.private_key.non_secure_erase();
        self.account_xpriv.chain_code = bitcoin::bip32::ChainCode::from([0u8; 32]);
    }
}

impl BtcAccountKey {
    /// The BIP84 account `m/84'/<coin>'/0'` of `master` for `network`, with a fee cap.
    pub fn from_master(master: &Xpriv, network: Network, fee_cap_sat: u64) -> Result<BtcAccountKey, SignerError> {
        let secp = Secp256k1::new();
        let keys = |e: kinko_keys::btc::BtcKeyError| SignerError::Internal(format!("bip84 account: {e}"));
        let account = Bip84Account::from_master(master, network).map_err(keys)?;
        let account_xpriv = master
            .derive_priv(&secp, &account.path)
            .map_err(|e| SignerError::Internal(format!("bip84 account: {e}")))?;
        Ok(BtcAccountKey { account, account_xpriv, fee_cap_sat, secp })
    }

    pub fn account(&self) -> &Bip84Account {
        &self.account
    }

    pub fn network(&self) -> Network {
        self.account.network
    }

    pub fn fee_cap_sat(&self) -> u64 {
        self.fee_cap_sat
    }

    /// `(keychain, index)` when `source` is `<our fingerprint>/<account path>/<0|1>/<index>`.
    fn own_path(&self, source: &KeySource) -> Option<(Keychain, u32)> {
        let (fingerprint, path) = source;
        if *fingerprint != self.account.master_fingerprint {
            return None;
        }
        let account = self.account.path.as_ref();
        let path = path.as_ref();
        if path.len() != account.len() + 2 || &path[..account.len()] != account {
            return None;
        }
        match path[account.len()..] {
            [ChildNumber::Normal { index: chain }, ChildNumber::Normal { index }] => {
                Keychain::from_index(chain).map(|k| (k, index))
            }
            _ => None,
        }
    }

    /// Whether `txout` pays the change address its `bip32_derivation` names, re-derived from this account's
    /// xpub (`xpub/1/i`). A receive address, another account's or a foreign script is not change.
    pub fn is_own_change(&self, txout: &TxOut, output: &Output) -> bool {
        output.bip32_derivation.values().any(|source| {
            matches!(self.own_path(source), Some((Keychain::Change, index))
                if self.account.is_own_change_script(&txout.script_pubkey, index))
        })
    }

    /// The private key of every input, in input order: derived from the path the input's
    /// `bip32_derivation` names, and refused unless the input's `witness_utxo` is exactly the P2WPKH of
    /// that key. An input of anyone else is refused, not skipped: a half-signed PSBT is nobody's withdrawal.
    fn input_keys(&self, psbt: &Psbt) -> Result<Vec<SecretKey>, SignerError> {
        let mut keys = Vec::with_capacity(psbt.inputs.len());
        for (i, input) in psbt.inputs.iter().enumerate() {
            let utxo = input
                .witness_utxo
                .as_ref()
                .ok_or_else(|| SignerError::Refused(format!("input {i}: no witness_utxo")))?;
            let found = input.bip32_derivation.iter().find_map(|(public, source)| {
                let (keychain, index) = self.own_path(source)?;
                let path =
                    [ChildNumber::from_normal_idx(keychain.index()).ok()?, ChildNumber::from_normal_idx(index).ok()?];
                let child = self.account_xpriv.derive_priv(&self.secp, &path).ok()?;
                let derived = PublicKey::from_secret_key(&self.secp, &child.private_key);
                let script = ScriptBuf::new_p2wpkh(&CompressedPublicKey(derived).wpubkey_hash());
                (derived == *public && script == utxo.script_pubkey).then_some(child.private_key)
            });
            keys.push(found.ok_or_else(|| {
                SignerError::Refused(format!(
                    "input {i}: spends {} which is not a P2WPKH address of the signer's own account (by its bip32_derivation)",
                    psbt.unsigned_tx.input[i].previous_output
                ))
            })?);
        }
        Ok(keys)
    }

    /// Signs every input (BIP143 SIGHASH_ALL, rust-bitcoin's sighash, libsecp256k1's RFC 6979 low-S ECDSA),
    /// verifies each signature, and puts it in the input's `partial_sigs`. Refuses foreign inputs first.
    pub fn sign(&self, psbt: &mut Psbt) -> Result<(), SignerError> {
        let keys = self.input_keys(psbt)?;
        let mut cache = SighashCache::new(&psbt.unsigned_tx);
        let mut signatures = Vec::with_capacity(keys.len());
        for (i, (input, key)) in psbt.inputs.iter().zip(&keys).enumerate() {
            let utxo = input
                .witness_utxo
                .as_ref()
                .ok_or_else(|| SignerError::Refused(format!("input {i}: no witness_utxo")))?;
            let sighash = cache
                .p2wpkh_signature_hash(i, &utxo.script_pubkey, utxo.value, EcdsaSighashType::All)
                .map_err(|e| SignerError::Refused(format!("input {i}: sighash: {e}")))?;
            let msg = Message::from_digest(sighash.to_byte_array());
            let signature = self.secp.sign_ecdsa(&msg, key);
            let public = PublicKey::from_secret_key(&self.secp, key);
            self.secp
                .verify_ecdsa(&msg, &signature, &public)
                .map_err(|_| SignerError::Internal(format!("input {i}: signature does not verify")))?;
            signatures.push((public, bitcoin::ecdsa::Signature { signature, sighash_type: EcdsaSighashType::All }));
        }
        for (input, (public, signature)) in psbt.inputs.iter_mut().zip(signatures) {
            input.partial_sigs.insert(bitcoin::PublicKey::new(public), signature);
        }
        Ok(())
    }
}
