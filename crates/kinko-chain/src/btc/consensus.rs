//! Consensus verification of signed Bitcoin spends (C5): every transaction kinko signs is run through
//! libbitcoinconsensus — Bitcoin Core's own script interpreter, compiled in by rust-bitcoin's
//! `bitcoinconsensus` feature — against the outputs it spends, before it is broadcast.
//!
//! Why Core's interpreter and not a check of our own: a signature that our code (or rust-bitcoin's)
//! believes valid but Core rejects would be a withdrawal stuck in our pipeline; the only authority on
//! "valid" is the network's reference implementation. Script checks run with Core's full flag set
//! (P2SH, strict DER, NULLDUMMY, CLTV, CSV, segwit). That flag set has no taproot (BIP341/342) check: the
//! libbitcoinconsensus API rust-bitcoin 0.32 binds cannot be given all spent outputs, which taproot
//! signatures commit to. A taproot spend would therefore pass unchecked, so it is refused instead
//! (kinko builds none).
//!
//! libbitcoinconsensus checks scripts only. The amount rule it cannot see (outputs may not exceed the
//! inputs; no value above 21 M BTC) is checked here too, because a signed transaction that breaks it
//! is just as unbroadcastable.

use bitcoin::consensus::encode::serialize;
use bitcoin::psbt::Psbt;
use bitcoin::{Amount, Transaction, TxOut};

/// Bounds the work of one verification: far above any transaction kinko builds (the PSBT builder
/// caps inputs at [`super::psbt::MAX_INPUTS`]) and above what fits in a standard transaction.
pub const MAX_VERIFY_INPUTS: usize = 10_000;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConsensusError {
    #[error("transaction has no inputs")]
    NoInputs,
    #[error("transaction has no outputs")]
    NoOutputs,
    #[error("transaction has {0} inputs, more than the {MAX_VERIFY_INPUTS} verified at most")]
    TooManyInputs(usize),
    #[error("{prevouts} prevouts given for {inputs} inputs: each input needs the output it spends")]
    PrevoutCount { inputs: usize, prevouts: usize },
    #[error("input {input}: script verification failed in libbitcoinconsensus: {reason}")]
    Script { input: usize, reason: String },
    #[error("value out of range: the sum of {what} overflows or exceeds 21 000 000 BTC")]
    ValueOutOfRange { what: &'static str },
    #[error("outputs ({outputs_sat} sat) exceed inputs ({inputs_sat} sat)")]
    OutputsExceedInputs { inputs_sat: u64, outputs_sat: u64 },
    #[error("input {input}: spends a taproot output, which this libbitcoinconsensus cannot verify")]
    TaprootUnsupported { input: usize },
    #[error("psbt input {input}: no witness_utxo to verify against")]
    MissingPrevout { input: usize },
}

/// Verifies that `tx` validly spends `prevouts` (one per input, in input order): each input's script
/// with libbitcoinconsensus, then the amounts. The first failing input is named.
pub fn verify_spend(tx: &Transaction, prevouts: &[TxOut]) -> Result<(), ConsensusError> {
    if tx.input.is_empty() {
        return Err(ConsensusError::NoInputs);
    }
    if tx.output.is_empty() {
        return Err(ConsensusError::NoOutputs);
    }
    if tx.input.len() > MAX_VERIFY_INPUTS {
        return Err(ConsensusError::TooManyInputs(tx.input.len()));
    }
    if prevouts.len() != tx.input.len() {
        return Err(ConsensusError::PrevoutCount { inputs: tx.input.len(), prevouts: prevouts.len() });
    }
    let inputs_sat = sum_checked(prevouts.iter().map(|p| p.value), "the spent outputs")?;
    let outputs_sat = sum_checked(tx.output.iter().map(|o| o.value), "the transaction's outputs")?;
    let serialized = serialize(tx);
    for (input, prevout) in prevouts.iter().enumerate() {
        if prevout.script_pubkey.is_p2tr() {
            return Err(ConsensusError::TaprootUnsupported { input });
        }
        prevout
            .script_pubkey
            .verify(input, prevout.value, &serialized)
            .map_err(|e| ConsensusError::Script { input, reason: e.to_string() })?;
    }
    if outputs_sat > inputs_sat {
        return Err(ConsensusError::OutputsExceedInputs {
            inputs_sat: inputs_sat.to_sat(),
            outputs_sat: outputs_sat.to_sat(),
        });
    }
    Ok(())
}

/// The spent outputs recorded in a PSBT (its inputs' `witness_utxo`), in input order: what a
/// transaction extracted from it must be verified against.
pub fn prevouts_of(psbt: &Psbt) -> Result<Vec<TxOut>, ConsensusError> {
    psbt.inputs
        .iter()
        .enumerate()
        .map(|(input, i)| i.witness_utxo.clone().ok_or(ConsensusError::MissingPrevout { input }))
        .collect()
}

fn sum_checked(values: impl Iterator<Item = Amount>, what: &'static str) -> Result<Amount, ConsensusError> {
    let mut total = Amount::ZERO;
    for v in values {
        total = total.checked_add(v).ok_or(ConsensusError::ValueOutOfRange { what })?;
    }
    if total > Amount::MAX_MONEY {
        return Err(ConsensusError::ValueOutOfRange { what });
    }
    Ok(total)
}
