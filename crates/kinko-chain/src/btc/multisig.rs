//! The 2-of-3 P2WSH cold wallet (K15): withdrawal PSBTs for a `wsh(sortedmulti(k, ...))` wallet of BIP48
//! cosigners, and their finalization once enough cosigners have signed.
//!
//! The wallet itself (descriptor, scripts, addresses, `is_own_change`, the input ownership check) is
//! [`kinko_keys::btc::MultisigWallet`], re-exported here: the online cosigner (kinko-signer) and the air-gapped
//! `kinko-offline` use it too and must not depend on this crate.
//!
//! The builder follows the same rules as the single-key builder ([`super::psbt`]): largest-first coin
//! selection (ties by outpoint), at most [`super::psbt::MAX_INPUTS`] inputs, one payment output then change to `/1/<i>`
//! unless dust, every input BIP125-replaceable, the fee from an upper bound of the vsize. Only the input weight
//! differs: a P2WSH multisig input's witness is the CHECKMULTISIG dummy, `threshold` worst-case (72-byte DER +
//! sighash byte) signatures and the witness script. Each input carries `witness_utxo` (BIP143 signs its amount),
//! `witness_script` and the `bip32_derivation` of every cosigner's key, so each signer finds its own key and can
//! check the script itself; the change output carries the cosigners' derivations at `/1/<i>`.
//!
//! Finalization is miniscript's (`PsbtExt::finalize_mut` then `extract`, which runs miniscript's interpreter on
//! the result), then libbitcoinconsensus ([`super::consensus::verify_spend`]) before anything is returned.

use bitcoin::psbt::{Input, Output, Psbt, PsbtSighashType};
use bitcoin::secp256k1::Secp256k1;
use bitcoin::sighash::EcdsaSighashType;
use bitcoin::transaction::{InputWeightPrediction, predict_weight};
use bitcoin::{Transaction, TxOut};
use kinko_keys::btc::Keychain;
pub use kinko_keys::btc::{Cosigner, MultisigError, MultisigWallet};
use miniscript::psbt::PsbtExt as _;

use super::consensus::{self, ConsensusError};
use super::psbt::{BuiltPsbt, PsbtBuildError, SpendableUtxo, WithdrawalRequest, select_coins};

/// Worst-case size of one ECDSA signature in a witness: 72 bytes of DER (high-R) plus the sighash byte.
const SIGNATURE_LEN_MAX: usize = 73;

#[derive(Debug, thiserror::Error)]
pub enum MultisigBuildError {
    #[error(transparent)]
    Build(#[from] PsbtBuildError),
    #[error("wallet: {0}")]
    Wallet(#[from] MultisigError),
    #[error("utxo {outpoint}: {reason}")]
    Descriptor { outpoint: bitcoin::OutPoint, reason: String },
}

/// What one input of `wallet` adds to a transaction's weight, with worst-case signatures.
fn input_prediction(wallet: &MultisigWallet) -> Result<InputWeightPrediction, MultisigError> {
    // Every index gives a witness script of the same length (n compressed keys), so index 0 stands for all.
    let script_len = wallet.witness_script(Keychain::Receive, 0)?.len();
    let elements: Vec<usize> = std::iter::once(0)
        .chain(std::iter::repeat_n(SIGNATURE_LEN_MAX, wallet.threshold))
        .chain(std::iter::once(script_len))
        .collect();
    Ok(InputWeightPrediction::new(0, elements))
}

/// The estimated vsize of a transaction spending `n_inputs` inputs of `wallet` to outputs with these script
/// lengths, with worst-case signatures: an upper bound of the signed transaction's.
pub fn estimate_multisig_vsize_vb(
    wallet: &MultisigWallet,
    n_inputs: usize,
    output_script_lens: &[usize],
) -> Result<u64, MultisigError> {
    let input = input_prediction(wallet)?;
    Ok(predict_weight(std::iter::repeat_n(input, n_inputs), output_script_lens.iter().copied()).to_vbytes_ceil())
}

/// Builds the withdrawal PSBT from the multisig wallet's UTXOs (see the module documentation for the rules).
/// `utxos[i].keychain/index` say where each UTXO's script is derived; a UTXO whose script is not the wallet's
/// there is refused.
pub fn build_multisig_withdrawal(
    wallet: &MultisigWallet,
    utxos: &[SpendableUtxo],
    request: &WithdrawalRequest<'_>,
) -> Result<BuiltPsbt, MultisigBuildError> {
    let selection = select_coins::<MultisigBuildError>(
        wallet.network,
        utxos,
        request,
        |keychain, index| Ok(wallet.script_pubkey(keychain, index)?),
        |n, lens| Ok(estimate_multisig_vsize_vb(wallet, n, lens)?),
    )?;
    let mut psbt = Psbt::from_unsigned_tx(selection.unsigned_tx(request)).map_err(PsbtBuildError::from)?;
    for c in &wallet.cosigners {
        psbt.xpub.insert(c.xpub, (c.master_fingerprint, c.path.clone()));
    }
    for (n, utxo) in selection.selected.iter().enumerate() {
        psbt.inputs[n] = Input {
            witness_utxo: Some(TxOut { value: utxo.value, script_pubkey: utxo.script_pubkey.clone() }),
            sighash_type: Some(PsbtSighashType::from(EcdsaSighashType::All)),
            ..Input::default()
        };
        // miniscript fills witness_script and every cosigner's bip32_derivation, and checks that the
        // descriptor's script is the one witness_utxo pays.
        let definite = wallet.definite(utxo.keychain, utxo.index)?;
        psbt.update_input_with_descriptor(n, &definite)
            .map_err(|e| MultisigBuildError::Descriptor { outpoint: utxo.outpoint, reason: e.to_string() })?;
    }
    if let Some((c, _)) = &selection.change {
        psbt.outputs[c.vout] =
            Output { bip32_derivation: wallet.key_sources(Keychain::Change, c.index)?, ..Output::default() };
        psbt.outputs[c.vout].witness_script = Some(wallet.witness_script(Keychain::Change, c.index)?);
    }
    Ok(selection.into_built(psbt))
}

#[derive(Debug, thiserror::Error)]
pub enum MultisigFinalizeError {
    #[error("finalize: {0}")]
    Finalize(String),
    #[error("extract: {0}")]
    Extract(String),
    #[error("consensus: {0}")]
    Consensus(#[from] ConsensusError),
}

/// Finalizes every input with miniscript (the satisfier picks `threshold` valid signatures of the witness
/// script's keys; too few is an error naming the input), extracts the transaction (miniscript re-runs its
/// interpreter on it), and verifies it with libbitcoinconsensus against the PSBT's `witness_utxo`s. On error
/// `psbt` may be partly finalized; nothing is returned to broadcast.
pub fn finalize_multisig(psbt: &mut Psbt) -> Result<Transaction, MultisigFinalizeError> {
    let prevouts = consensus::prevouts_of(psbt)?;
    let secp = Secp256k1::verification_only();
    psbt.finalize_mut(&secp).map_err(|errors| {
        MultisigFinalizeError::Finalize(errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))
    })?;
    let tx = psbt.extract(&secp).map_err(|e| MultisigFinalizeError::Extract(e.to_string()))?;
    consensus::verify_spend(&tx, &prevouts)?;
    Ok(tx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::hashes::Hash as _;
    use bitcoin::{Amount, Network, OutPoint, Txid};

    fn wallet() -> MultisigWallet {
        let cosigners = [1u8, 2, 3]
            .iter()
            .map(|b| {
                Cosigner::from_master(&kinko_keys::hd::master_from_seed(&[*b; 32]).unwrap(), Network::Regtest).unwrap()
            })
            .collect();
        MultisigWallet::new(2, cosigners, Network::Regtest).unwrap()
    }

    #[test]
    fn k15_multisig_withdrawal_carries_scripts_and_all_derivations() {
        let w = wallet();
        let utxos: Vec<SpendableUtxo> = (0..3u32)
            .map(|i| SpendableUtxo {
                outpoint: OutPoint { txid: Txid::from_byte_array([i as u8 + 1; 32]), vout: i },
                value: Amount::from_sat(100_000 * u64::from(i + 1)),
                keychain: Keychain::Receive,
                index: i,
                script_pubkey: w.script_pubkey(Keychain::Receive, i).unwrap(),
            })
            .collect();
        let dest = w.address(Keychain::Receive, 50).unwrap();
        let req = WithdrawalRequest {
            destination: &dest,
            amount: Amount::from_sat(250_000),
            fee_rate_sat_per_vb: 5,
            change_index: 7,
        };
        let built = build_multisig_withdrawal(&w, &utxos, &req).unwrap();
        assert_eq!(built.psbt.inputs.len(), 1, "largest first: 300k pays 250k");
        let input = &built.psbt.inputs[0];
        assert_eq!(input.bip32_derivation.len(), 3);
        assert_eq!(w.check_own_input(0, input).unwrap(), (Keychain::Receive, 2));
        let change = built.change.unwrap();
        assert!(w.is_own_change(&built.psbt.unsigned_tx.output[change.vout], &built.psbt.outputs[change.vout]));
        assert_eq!(built.fee, Amount::from_sat(5 * built.estimated_vsize_vb));
        assert!(built.psbt.unsigned_tx.input.iter().all(|i| i.sequence.is_rbf()));
        // A UTXO claimed at the wrong index is refused.
        let mut wrong = utxos.clone();
        wrong[0].index = 9;
        assert!(matches!(
            build_multisig_withdrawal(&w, &wrong, &req),
            Err(MultisigBuildError::Build(PsbtBuildError::ForeignUtxo { .. }))
        ));
    }
}
