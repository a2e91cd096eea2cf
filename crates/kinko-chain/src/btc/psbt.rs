//! Withdrawal PSBTs (M9a, BIP174) for the custodian's BIP84 (P2WPKH) wallet, built online from the
//! account xpub only; the signer decodes and checks them, signs, and the finalized transaction is
//! verified with libbitcoinconsensus ([`super::consensus`]) before broadcast.
//!
//! Rules, all deterministic so that the same UTXO set and request always give the same PSBT:
//! - coin selection is largest-first (ties by outpoint), stopping at the first prefix that pays the
//!   amount and the fee; at most [`MAX_INPUTS`] inputs. UTXOs worth less than the fee of spending them
//!   are skipped (they would lower the amount withdrawn).
//! - one payment output (index 0), then change to `xpub/1/<change_index>` (index 1) unless the change
//!   would be dust, in which case it goes to the fee.
//! - the fee is `fee_rate_sat_per_vb × estimated vsize`, the vsize predicted by rust-bitcoin for
//!   P2WPKH inputs with worst-case (72-byte) signatures, so the real fee rate is never below the target.
//! - every input signals replaceability (BIP125, nSequence 0xfffffffd), so a stuck withdrawal can be
//!   bumped with [`build_fee_bump`]: same inputs, higher fee taken from the change.
//! - every input carries `witness_utxo` (what BIP143 signs: amount and script) and `bip32_derivation`
//!   (master fingerprint and full path), the change output its `bip32_derivation`, and the global map
//!   the account xpub, so a signer holding the master key finds its keys and recognizes change.

use std::collections::{BTreeMap, BTreeSet};

use bitcoin::absolute::LockTime;
use bitcoin::bip32::ChildNumber;
use bitcoin::psbt::{Input, Output, Psbt, PsbtSighashType};
use bitcoin::sighash::EcdsaSighashType;
use bitcoin::transaction::{InputWeightPrediction, Version, predict_weight};
use bitcoin::{Address, Amount, Network, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Witness};
use kinko_keys::btc::{Bip84Account, BtcKeyError, Keychain};

/// Most inputs one withdrawal spends. Why: ~68 vB each, 100 inputs keep the transaction near 7 kvB,
/// far below Core's 100 kvB standardness limit, and bound the signer's work and the fee paid for a
/// single payment; a wallet that needs more should consolidate first.
pub const MAX_INPUTS: usize = 100;
/// Most UTXOs the builder will look at in one call: bounds sorting and validation work.
pub const MAX_UTXOS_CONSIDERED: usize = 10_000;
/// Lowest fee rate accepted: Bitcoin Core's default minimum relay fee (1 sat/vB).
pub const MIN_FEE_RATE_SAT_PER_VB: u64 = 1;
/// Highest fee rate accepted. Why: a fee rate 1000× the usual is far more likely a unit mistake
/// (sat/kvB passed as sat/vB) than a real market, and would burn funds.
pub const MAX_FEE_RATE_SAT_PER_VB: u64 = 5_000;
/// BIP125 rule 4: a replacement pays for its own relay at the incremental relay fee (Core's default,
/// 1 sat/vB) on top of the fee of what it replaces.
pub const INCREMENTAL_RELAY_FEE_SAT_PER_VB: u64 = 1;
/// nSequence of every input: signals BIP125 replaceability, no relative lock time.
pub const RBF_SEQUENCE: Sequence = Sequence::ENABLE_RBF_NO_LOCKTIME;

/// An output of ours that can be spent, as the UTXO tracker records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpendableUtxo {
    pub outpoint: OutPoint,
    pub value: Amount,
    pub keychain: Keychain,
    /// The address index on `keychain`.
    pub index: u32,
    pub script_pubkey: ScriptBuf,
}

/// A withdrawal to build.
#[derive(Clone, Debug)]
pub struct WithdrawalRequest<'a> {
    pub destination: &'a Address,
    pub amount: Amount,
    pub fee_rate_sat_per_vb: u64,
    /// The next unused change index (`xpub/1/<change_index>`), allocated by the caller.
    pub change_index: u32,
}

/// The change output of a built PSBT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChangeOutput {
    /// Its position among the transaction's outputs.
    pub vout: usize,
    /// Its index on the change chain (`xpub/1/<index>`).
    pub index: u32,
    pub value: Amount,
}

/// A built, unsigned PSBT and what the builder decided.
#[derive(Clone, Debug)]
pub struct BuiltPsbt {
    pub psbt: Psbt,
    pub fee: Amount,
    /// The vsize the fee was computed on (an upper bound of the signed transaction's).
    pub estimated_vsize_vb: u64,
    pub change: Option<ChangeOutput>,
}

impl BuiltPsbt {
    /// The outpoints this PSBT spends, in input order.
    pub fn spent_outpoints(&self) -> Vec<OutPoint> {
        self.psbt.unsigned_tx.input.iter().map(|i| i.previous_output).collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PsbtBuildError {
    #[error("insufficient funds: {needed_sat} sat needed (amount and fee), {available_sat} sat spendable")]
    InsufficientFunds { needed_sat: u64, available_sat: u64 },
    #[error("too many inputs: the amount needs more than {MAX_INPUTS} UTXOs; consolidate first")]
    TooManyInputs,
    #[error("payment of {amount_sat} sat is dust for its destination (at least {dust_limit_sat} sat)")]
    PaymentIsDust { amount_sat: u64, dust_limit_sat: u64 },
    #[error("fee rate {0} sat/vB is outside [{MIN_FEE_RATE_SAT_PER_VB}, {MAX_FEE_RATE_SAT_PER_VB}]")]
    FeeRateOutOfRange(u64),
    #[error("destination {0} is not an address of the wallet's network")]
    WrongNetwork(String),
    #[error("{0} UTXOs offered, more than the {MAX_UTXOS_CONSIDERED} considered at most")]
    TooManyUtxos(usize),
    #[error("utxo {0} offered twice")]
    DuplicateUtxo(OutPoint),
    #[error("utxo {outpoint}: script_pubkey is not our address {keychain:?}/{index}")]
    ForeignUtxo { outpoint: OutPoint, keychain: Keychain, index: u32 },
    #[error("amount arithmetic overflowed")]
    Overflow,
    #[error("fee bump: the original {0}")]
    BumpMalformed(&'static str),
    #[error(
        "fee bump: {new_fee_rate_sat_per_vb} sat/vB does not raise the original's fee rate ({old_fee_sat} sat on {vsize_vb} vB)"
    )]
    BumpNotHigher { new_fee_rate_sat_per_vb: u64, old_fee_sat: u64, vsize_vb: u64 },
    #[error("fee bump: the change ({change_sat} sat) cannot pay the {needed_extra_sat} sat more fee; use CPFP")]
    BumpInsufficientChange { change_sat: u64, needed_extra_sat: u64 },
    #[error("keys: {0}")]
    Keys(#[from] BtcKeyError),
    #[error("psbt: {0}")]
    Psbt(#[from] bitcoin::psbt::Error),
}

/// The estimated vsize of a transaction spending `n_inputs` P2WPKH inputs to outputs with these
/// script lengths, with worst-case signature sizes.
pub fn estimate_vsize_vb(n_inputs: usize, output_script_lens: &[usize]) -> u64 {
    let inputs = std::iter::repeat_n(InputWeightPrediction::P2WPKH_MAX, n_inputs);
    predict_weight(inputs, output_script_lens.iter().copied()).to_vbytes_ceil()
}

pub(crate) fn fee_for(fee_rate_sat_per_vb: u64, vsize_vb: u64) -> Result<Amount, PsbtBuildError> {
    fee_rate_sat_per_vb.checked_mul(vsize_vb).map(Amount::from_sat).ok_or(PsbtBuildError::Overflow)
}

pub(crate) fn check_fee_rate(fee_rate_sat_per_vb: u64) -> Result<(), PsbtBuildError> {
    if (MIN_FEE_RATE_SAT_PER_VB..=MAX_FEE_RATE_SAT_PER_VB).contains(&fee_rate_sat_per_vb) {
        Ok(())
    } else {
        Err(PsbtBuildError::FeeRateOutOfRange(fee_rate_sat_per_vb))
    }
}

/// Builds the withdrawal PSBT: selects coins from `utxos`, pays `request.amount` to the destination and
/// the rest, less the fee, to our change address. See the module documentation for the rules.
pub fn build_withdrawal(
    account: &Bip84Account,
    utxos: &[SpendableUtxo],
    request: &WithdrawalRequest<'_>,
) -> Result<BuiltPsbt, PsbtBuildError> {
    let selection = select_coins::<PsbtBuildError>(
        account.network,
        utxos,
        request,
        |keychain, index| Ok(account.script_pubkey(keychain, index)?),
        |n, lens| Ok(estimate_vsize_vb(n, lens)),
    )?;
    let mut psbt = Psbt::from_unsigned_tx(selection.unsigned_tx(request))?;
    psbt.xpub.insert(account.xpub, (account.master_fingerprint, account.path.clone()));
    for (input, utxo) in psbt.inputs.iter_mut().zip(&selection.selected) {
        *input = our_input(
            account,
            utxo.keychain,
            utxo.index,
            TxOut { value: utxo.value, script_pubkey: utxo.script_pubkey.clone() },
        )?;
    }
    if let Some((c, _)) = &selection.change {
        psbt.outputs[c.vout] = change_output(account, c.index)?;
    }
    Ok(selection.into_built(psbt))
}

/// The coins chosen for a withdrawal and the transaction they make, before any wallet-specific PSBT fields.
pub(crate) struct Selection<'u> {
    pub(crate) selected: Vec<&'u SpendableUtxo>,
    destination: ScriptBuf,
    pub(crate) change: Option<(ChangeOutput, ScriptBuf)>,
    fee: Amount,
    estimated_vsize_vb: u64,
}

impl Selection<'_> {
    /// Payment at output 0, change (if any) at 1, every input BIP125-replaceable.
    pub(crate) fn unsigned_tx(&self, request: &WithdrawalRequest<'_>) -> Transaction {
        let mut output = vec![TxOut { value: request.amount, script_pubkey: self.destination.clone() }];
        if let Some((c, script)) = &self.change {
            output.push(TxOut { value: c.value, script_pubkey: script.clone() });
        }
        Transaction {
            version: Version::TWO,
            // No anti-fee-sniping lock time: the builder does not know the tip height (see the docs).
            lock_time: LockTime::ZERO,
            input: self
                .selected
                .iter()
                .map(|u| TxIn {
                    previous_output: u.outpoint,
                    script_sig: ScriptBuf::new(),
                    sequence: RBF_SEQUENCE,
                    witness: Witness::new(),
                })
                .collect(),
            output,
        }
    }

    pub(crate) fn into_built(self, psbt: Psbt) -> BuiltPsbt {
        BuiltPsbt {
            psbt,
            fee: self.fee,
            estimated_vsize_vb: self.estimated_vsize_vb,
            change: self.change.map(|(c, _)| c),
        }
    }
}

/// The rules every withdrawal builder shares (single-key and multisig): the request and the offered UTXOs are
/// checked (network, dust, bounds, duplicates, each UTXO's script re-derived with `script_at`), then coins are
/// selected largest-first (ties by outpoint) until they pay the amount and the fee, with change to
/// `request.change_index` unless it would be dust. `vsize` is the wallet's estimate of a transaction with `n`
/// of its inputs and outputs of the given script lengths, an upper bound of the signed size.
pub(crate) fn select_coins<'u, E: From<PsbtBuildError>>(
    network: Network,
    utxos: &'u [SpendableUtxo],
    request: &WithdrawalRequest<'_>,
    script_at: impl Fn(Keychain, u32) -> Result<ScriptBuf, E>,
    vsize: impl Fn(usize, &[usize]) -> Result<u64, E>,
) -> Result<Selection<'u>, E> {
    check_fee_rate(request.fee_rate_sat_per_vb)?;
    if !request.destination.as_unchecked().is_valid_for_network(network) {
        return Err(PsbtBuildError::WrongNetwork(request.destination.to_string()).into());
    }
    let destination = request.destination.script_pubkey();
    let dust_limit = destination.minimal_non_dust();
    if request.amount < dust_limit {
        return Err(PsbtBuildError::PaymentIsDust {
            amount_sat: request.amount.to_sat(),
            dust_limit_sat: dust_limit.to_sat(),
        }
        .into());
    }
    if utxos.len() > MAX_UTXOS_CONSIDERED {
        return Err(PsbtBuildError::TooManyUtxos(utxos.len()).into());
    }
    let mut seen = BTreeSet::new();
    for u in utxos {
        if !seen.insert(u.outpoint) {
            return Err(PsbtBuildError::DuplicateUtxo(u.outpoint).into());
        }
        // The UTXO must be ours at the path it claims: the signer derives the key from that path, so a
        // wrong path would only fail later, at signing, with a less clear error.
        if script_at(u.keychain, u.index)? != u.script_pubkey {
            return Err(
                PsbtBuildError::ForeignUtxo { outpoint: u.outpoint, keychain: u.keychain, index: u.index }.into()
            );
        }
    }

    let change_script = script_at(Keychain::Change, request.change_index)?;
    let change_dust_limit = change_script.minimal_non_dust();
    let with_change = [destination.len(), change_script.len()];
    let without_change = [destination.len()];
    // What one more input costs at this fee rate: a UTXO worth no more is not worth spending.
    let input_cost =
        fee_for(request.fee_rate_sat_per_vb, vsize(2, &without_change)?.saturating_sub(vsize(1, &without_change)?))?;

    let mut candidates: Vec<&SpendableUtxo> = utxos.iter().filter(|u| u.value > input_cost).collect();
    candidates.sort_by(|a, b| b.value.cmp(&a.value).then(a.outpoint.cmp(&b.outpoint)));
    let mut available_sat = Amount::ZERO;
    for u in &candidates {
        available_sat = available_sat.checked_add(u.value).ok_or(PsbtBuildError::Overflow)?;
    }

    let mut selected: Vec<&SpendableUtxo> = Vec::new();
    let mut selected_sat = Amount::ZERO;
    // Until an input is selected, what is needed is the amount and the fee of the smallest transaction.
    let mut needed_sat = request
        .amount
        .checked_add(fee_for(request.fee_rate_sat_per_vb, vsize(1, &without_change)?)?)
        .ok_or(PsbtBuildError::Overflow)?;
    for utxo in candidates.iter().copied() {
        if selected.len() == MAX_INPUTS {
            // More inputs are needed than one withdrawal may have. Say which limit binds: the input
            // bound only if all the spendable value could have paid.
            if available_sat < needed_sat {
                break;
            }
            return Err(PsbtBuildError::TooManyInputs.into());
        }
        selected.push(utxo);
        selected_sat = selected_sat.checked_add(utxo.value).ok_or(PsbtBuildError::Overflow)?;
        let n = selected.len();

        let vsize_with_change = vsize(n, &with_change)?;
        let fee_with_change = fee_for(request.fee_rate_sat_per_vb, vsize_with_change)?;
        let pay_with_change = request.amount.checked_add(fee_with_change).ok_or(PsbtBuildError::Overflow)?;
        if let Some(change) = selected_sat.checked_sub(pay_with_change)
            && change >= change_dust_limit
        {
            let change = ChangeOutput { vout: 1, index: request.change_index, value: change };
            return Ok(Selection {
                selected,
                destination,
                change: Some((change, change_script)),
                fee: fee_with_change,
                estimated_vsize_vb: vsize_with_change,
            });
        }

        let vsize_without_change = vsize(n, &without_change)?;
        let fee_without_change = fee_for(request.fee_rate_sat_per_vb, vsize_without_change)?;
        needed_sat = request.amount.checked_add(fee_without_change).ok_or(PsbtBuildError::Overflow)?;
        if selected_sat >= needed_sat {
            // Change would be dust: it is left to the fee rather than creating an output nobody can
            // spend economically.
            let fee = selected_sat - request.amount;
            return Ok(Selection {
                selected,
                destination,
                change: None,
                fee,
                estimated_vsize_vb: vsize_without_change,
            });
        }
    }
    Err(PsbtBuildError::InsufficientFunds { needed_sat: needed_sat.to_sat(), available_sat: available_sat.to_sat() }
        .into())
}

fn our_input(account: &Bip84Account, keychain: Keychain, index: u32, spent: TxOut) -> Result<Input, PsbtBuildError> {
    let mut input = Input {
        witness_utxo: Some(spent),
        sighash_type: Some(PsbtSighashType::from(EcdsaSighashType::All)),
        ..Input::default()
    };
    input.bip32_derivation.insert(account.public_key(keychain, index)?.0, account.key_source(keychain, index)?);
    Ok(input)
}

fn change_output(account: &Bip84Account, index: u32) -> Result<Output, PsbtBuildError> {
    let mut output = Output::default();
    output
        .bip32_derivation
        .insert(account.public_key(Keychain::Change, index)?.0, account.key_source(Keychain::Change, index)?);
    Ok(output)
}

/// The change output of a PSBT built for `account`: the one output whose `bip32_derivation` names a
/// change path of the account and whose script is the address derived from it. At most one.
fn find_change(account: &Bip84Account, psbt: &Psbt) -> Result<Option<(usize, u32)>, PsbtBuildError> {
    let mut found = None;
    for (vout, (output, txout)) in psbt.outputs.iter().zip(&psbt.unsigned_tx.output).enumerate() {
        for (fingerprint, path) in output.bip32_derivation.values() {
            let [.., ChildNumber::Normal { index: chain }, ChildNumber::Normal { index }] = path.as_ref() else {
                continue;
            };
            if *fingerprint == account.master_fingerprint
                && *chain == Keychain::Change.index()
                && account.is_own_change_script(&txout.script_pubkey, *index)
            {
                if found.is_some() {
                    return Err(PsbtBuildError::BumpMalformed("has more than one change output"));
                }
                found = Some((vout, *index));
            }
        }
    }
    Ok(found)
}

/// Builds a BIP125 replacement of `original` (a PSBT this module built and that is stuck): the same
/// inputs and payment, a higher fee taken from the change. The replacement pays at least
/// `new_fee_rate_sat_per_vb` on its estimated vsize, strictly more than the original's fee rate
/// (rule 6), and at least the original fee plus the incremental relay fee on its own size (rules 3
/// and 4). If the reduced change would be dust, the change output is dropped and all of it goes to fee.
pub fn build_fee_bump(
    account: &Bip84Account,
    original: &Psbt,
    new_fee_rate_sat_per_vb: u64,
) -> Result<BuiltPsbt, PsbtBuildError> {
    check_fee_rate(new_fee_rate_sat_per_vb)?;
    let tx = &original.unsigned_tx;
    if tx.input.is_empty() || tx.input.len() > MAX_INPUTS || original.inputs.len() != tx.input.len() {
        return Err(PsbtBuildError::BumpMalformed("has no inputs, too many, or inconsistent input maps"));
    }
    if original.outputs.len() != tx.output.len() {
        return Err(PsbtBuildError::BumpMalformed("has inconsistent output maps"));
    }
    if !tx.input.iter().all(|i| i.sequence.is_rbf()) {
        return Err(PsbtBuildError::BumpMalformed("does not signal replaceability (BIP125)"));
    }
    let mut inputs_sat = Amount::ZERO;
    for input in &original.inputs {
        let spent =
            input.witness_utxo.as_ref().ok_or(PsbtBuildError::BumpMalformed("has an input without witness_utxo"))?;
        inputs_sat = inputs_sat.checked_add(spent.value).ok_or(PsbtBuildError::Overflow)?;
    }
    let mut outputs_sat = Amount::ZERO;
    for o in &tx.output {
        outputs_sat = outputs_sat.checked_add(o.value).ok_or(PsbtBuildError::Overflow)?;
    }
    let old_fee =
        inputs_sat.checked_sub(outputs_sat).ok_or(PsbtBuildError::BumpMalformed("pays out more than it spends"))?;
    let (change_vout, change_index) = find_change(account, original)?
        .ok_or(PsbtBuildError::BumpMalformed("has no change output of ours to take the fee from"))?;
    let change_value = tx.output[change_vout].value;

    let script_lens: Vec<usize> = tx.output.iter().map(|o| o.script_pubkey.len()).collect();
    let vsize_vb = estimate_vsize_vb(tx.input.len(), &script_lens);
    let target_fee = fee_for(new_fee_rate_sat_per_vb, vsize_vb)?;
    // Rule 6: the new fee rate must beat the original's, measured on the same transaction shape.
    if target_fee <= old_fee {
        return Err(PsbtBuildError::BumpNotHigher { new_fee_rate_sat_per_vb, old_fee_sat: old_fee.to_sat(), vsize_vb });
    }
    let relay_floor =
        old_fee.checked_add(fee_for(INCREMENTAL_RELAY_FEE_SAT_PER_VB, vsize_vb)?).ok_or(PsbtBuildError::Overflow)?;
    let new_fee = target_fee.max(relay_floor);
    let extra = new_fee - old_fee;

    let mut outputs: Vec<TxOut> = tx.output.clone();
    let mut output_maps: Vec<Output> = original.outputs.clone();
    let change_script = &tx.output[change_vout].script_pubkey;
    let (fee, estimated_vsize_vb, change) = match change_value.checked_sub(extra) {
        Some(reduced) if reduced >= change_script.minimal_non_dust() => {
            outputs[change_vout].value = reduced;
            (new_fee, vsize_vb, Some(ChangeOutput { vout: change_vout, index: change_index, value: reduced }))
        }
        _ => {
            // Dropping the change: all of it becomes fee. That must still satisfy the rules on the
            // smaller transaction, which it does unless the change was too small to begin with.
            outputs.remove(change_vout);
            output_maps.remove(change_vout);
            if outputs.is_empty() {
                return Err(PsbtBuildError::BumpMalformed("has no payment output"));
            }
            let lens: Vec<usize> = outputs.iter().map(|o| o.script_pubkey.len()).collect();
            let smaller_vb = estimate_vsize_vb(tx.input.len(), &lens);
            let fee_all = old_fee.checked_add(change_value).ok_or(PsbtBuildError::Overflow)?;
            let needed = fee_for(new_fee_rate_sat_per_vb, smaller_vb)?.max(
                old_fee
                    .checked_add(fee_for(INCREMENTAL_RELAY_FEE_SAT_PER_VB, smaller_vb)?)
                    .ok_or(PsbtBuildError::Overflow)?,
            );
            if fee_all < needed {
                return Err(PsbtBuildError::BumpInsufficientChange {
                    change_sat: change_value.to_sat(),
                    needed_extra_sat: (needed - old_fee).to_sat(),
                });
            }
            (fee_all, smaller_vb, None)
        }
    };

    let replacement = Transaction {
        version: tx.version,
        lock_time: tx.lock_time,
        input: tx
            .input
            .iter()
            .map(|i| TxIn {
                previous_output: i.previous_output,
                script_sig: ScriptBuf::new(),
                sequence: RBF_SEQUENCE,
                witness: Witness::new(),
            })
            .collect(),
        output: outputs,
    };
    let mut psbt = Psbt::from_unsigned_tx(replacement)?;
    psbt.xpub = original.xpub.clone();
    // The inputs' metadata is carried over without any signature: the replacement must be signed anew.
    for (new, old) in psbt.inputs.iter_mut().zip(&original.inputs) {
        *new = Input {
            witness_utxo: old.witness_utxo.clone(),
            sighash_type: old.sighash_type,
            bip32_derivation: old.bip32_derivation.clone(),
            ..Input::default()
        };
    }
    psbt.outputs = output_maps;
    Ok(BuiltPsbt { psbt, fee, estimated_vsize_vb, change })
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FinalizeError {
    #[error("input {input}: no witness_utxo")]
    MissingWitnessUtxo { input: usize },
    #[error("input {input}: spends a non-P2WPKH output, which this finalizer does not handle")]
    NotP2wpkh { input: usize },
    #[error("input {input}: no signature by the key the spent output pays to")]
    MissingSignature { input: usize },
}

/// The BIP174 input finalizer for P2WPKH inputs: moves each input's signature and key into its
/// `final_script_witness` and clears the other fields, as the BIP requires. The signature must be by
/// the key whose hash the spent output pays to; any other partial signature is ignored.
pub fn finalize_p2wpkh(psbt: &mut Psbt) -> Result<(), FinalizeError> {
    for (index, input) in psbt.inputs.iter_mut().enumerate() {
        let spent = input.witness_utxo.as_ref().ok_or(FinalizeError::MissingWitnessUtxo { input: index })?;
        if !spent.script_pubkey.is_p2wpkh() {
            return Err(FinalizeError::NotP2wpkh { input: index });
        }
        let (key, sig) = input
            .partial_sigs
            .iter()
            .find(|(pk, _)| pk.wpubkey_hash().is_ok_and(|h| ScriptBuf::new_p2wpkh(&h) == spent.script_pubkey))
            .ok_or(FinalizeError::MissingSignature { input: index })?;
        let witness = Witness::p2wpkh(sig, &key.inner);
        input.final_script_witness = Some(witness);
        input.partial_sigs = BTreeMap::new();
        input.sighash_type = None;
        input.redeem_script = None;
        input.witness_script = None;
        input.bip32_derivation = BTreeMap::new();
    }
    Ok(())
}
