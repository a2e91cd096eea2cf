//! The files that cross the air gap (K14): the unsigned bundle the online side exports and the signed file the
//! offline tool writes back.
//!
//! Both are JSON with `deny_unknown_fields`, bounded in size, and carry everything a side needs to check the
//! other without trusting it: the unsigned bundle holds the intent, the approvals over it, the operator
//! registry log those approvals are verified against, and the unsigned transaction; the signed file names the
//! unsigned bundle it answers by the sha256 of its canonical JSON and carries the signature and the signed
//! transaction, which the online side re-derives itself ([`verify_signed`]) before it broadcasts anything.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;

use alloy_consensus::{SignableTransaction, TxEip1559, TxEnvelope};
use alloy_eips::eip2718::Encodable2718;
use alloy_primitives::{Address, Signature, U256, keccak256};
use bitcoin::secp256k1::ecdsa::{RecoverableSignature, RecoveryId, Signature as SecpSignature};
use bitcoin::secp256k1::{Message, Secp256k1};
use kinko_core::asset::{AssetKind, AssetSpec};
use kinko_core::intent::Intent;
use kinko_signer::evm::{self, EvmPolicy};
use kinko_signer::{Approval, SignerError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const UNSIGNED_KIND: &str = "kinko-unsigned-evm-v1";
pub const SIGNED_KIND: &str = "kinko-signed-evm-v1";
/// Bound on a bundle file: a transfer, its intent, a handful of approvals and a registry log of a few hundred
/// changes are far below it; a bigger file is not a bundle.
pub const BUNDLE_LEN_MAX: u64 = 4 * 1024 * 1024;

/// What the online side exports for the offline signer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnsignedBundle {
    /// [`UNSIGNED_KIND`].
    pub kind: String,
    pub chain_id: u64,
    /// The cold wallet's address, lower-case 0x-hex.
    pub from: String,
    /// The cold key's id in the offline keystore.
    pub key_id: String,
    /// The unsigned EIP-1559 transaction, `0x02 || rlp(..)` (alloy `encode_for_signing`), 0x-hex; the same bytes
    /// as `EvmSignRequest.payload`.
    pub payload_hex: String,
    pub intent: Intent,
    /// Code, decimals and kind (native or ERC-20 contract) of the intent's asset: for the human display, and for
    /// the token check (the offline side accepts only an asset its keystore pinned, exactly as pinned).
    pub asset: AssetSpec,
    /// Approvals over `(Process::Signing, intent.id, intent.hash())`.
    pub approvals: Vec<Approval>,
    /// The online operator registry log. The offline side accepts it only as an extension of the log it pinned.
    pub registry_log: Vec<kinko_signer::approvals::LoggedChange>,
    pub created_at_ms: i64,
}

/// What the offline signer writes back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedBundle {
    /// [`SIGNED_KIND`].
    pub kind: String,
    /// sha256 hex of the canonical JSON ([`unsigned_sha256`]) of the unsigned bundle it answers.
    pub unsigned_sha256: String,
    /// sha256 of the intent's canonical bytes, hex.
    pub intent_hash: String,
    /// The unsigned payload it signed (must equal the bundle's), 0x-hex.
    pub payload_hex: String,
    /// `r || s || y_parity` (65 bytes), low-S, hex.
    pub signature_hex: String,
    /// The signed EIP-2718 transaction, ready for `eth_sendRawTransaction`, 0x-hex.
    pub raw_tx_hex: String,
    /// keccak256 of the raw transaction, 0x-hex.
    pub tx_hash: String,
}

/// A refused bundle or signed file: which field, and why. Never carries key material.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("{path}: {reason}")]
    Io { path: String, reason: String },
}

impl BundleError {
    /// The field the error is about (`"file"` for I/O errors).
    pub fn field(&self) -> &str {
        match self {
            BundleError::Invalid { field, .. } => field,
            BundleError::Io { .. } => "file",
        }
    }
}

pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> BundleError {
    BundleError::Invalid { field: field.into(), reason: reason.into() }
}

/// A signer refusal about the transaction, with the field it names.
pub(crate) fn from_signer(prefix: &str, e: SignerError) -> BundleError {
    match e {
        SignerError::IntentMismatch { field, expected, actual } => invalid(
            format!("{prefix}{field}"),
            format!("the transaction says {actual}, but the approved intent says {expected}"),
        ),
        other => invalid(prefix.trim_end_matches('.').to_string(), other.to_string()),
    }
}

/// sha256 (hex) of the bundle's canonical JSON: `serde_json`'s compact serialisation of the parsed struct
/// (fields in declaration order). Computed over the struct, not the file bytes, so whitespace does not matter
/// and every field does.
pub fn unsigned_sha256(b: &UnsignedBundle) -> String {
    // Serialising plain structs of strings and numbers into a Vec cannot fail.
    let json = serde_json::to_vec(b).unwrap_or_default();
    hex::encode(Sha256::digest(json))
}

/// What [`verify_signed`] accepted: the transaction to broadcast and its values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedTx {
    pub raw: Vec<u8>,
    /// 0x-hex.
    pub tx_hash: String,
    pub nonce: u64,
    pub max_fee_per_gas: u128,
    pub max_priority_fee_per_gas: u128,
    pub gas_limit: u64,
}

pub(crate) fn decode_hex(field: &str, text: &str) -> Result<Vec<u8>, BundleError> {
    let digits = text.strip_prefix("0x").unwrap_or(text);
    hex::decode(digits).map_err(|_| invalid(field, "is not hex"))
}

/// The policy the signer's intent check needs, from an asset spec: the native coin's code, or the token's
/// contract. `fee_wei_max` is the caller's bound.
pub fn policy_for(asset: &AssetSpec, chain_id: u64, fee_wei_max: u128) -> Result<EvmPolicy, BundleError> {
    let mut policy = EvmPolicy { native_asset: String::new(), fee_wei_max, tokens: BTreeMap::new() };
    match &asset.kind {
        AssetKind::EvmNative { chain_id: c } => {
            if c.0 != chain_id {
                return Err(invalid("asset.kind.chain_id", format!("is {c}, but the bundle is for chain {chain_id}")));
            }
            policy.native_asset = asset.code.to_string();
        }
        AssetKind::Erc20 { .. } => {
            // The native code is never a token code; "native" cannot collide with an asset code (upper case).
            policy.native_asset = "native".into();
            policy.add_token(chain_id, asset).map_err(|e| invalid("asset.kind", e.to_string()))?;
        }
    }
    Ok(policy)
}

/// Decodes the bundle's payload with the signer's own decoder and checks it against the intent exactly as
/// the signer does (`kinko_signer::evm::check_against_intent`): chain, source wallet, destination or token
/// contract and recipient, amount, no other call, fee within `fee_wei_max`. Also that the bundle's own
/// header agrees with the intent and the asset spec.
pub fn check_unsigned(b: &UnsignedBundle, fee_wei_max: u128) -> Result<TxEip1559, BundleError> {
    if b.kind != UNSIGNED_KIND {
        return Err(invalid("kind", format!("is {:?}, expected {UNSIGNED_KIND:?}", b.kind)));
    }
    if b.intent.chain_id.0 != b.chain_id {
        return Err(invalid(
            "chain_id",
            format!("is {}, but the intent is for chain {}", b.chain_id, b.intent.chain_id),
        ));
    }
    if b.asset.code != b.intent.asset {
        return Err(invalid("asset.code", format!("is {}, but the intent moves {}", b.asset.code, b.intent.asset)));
    }
    if b.from.parse::<Address>().is_err() || b.from != b.from.to_ascii_lowercase() {
        return Err(invalid("from", "is not a lower-case 0x-hex address"));
    }
    let payload = decode_hex("payload_hex", &b.payload_hex)?;
    let tx = evm::decode_eip1559(&payload).map_err(|e| from_signer("payload_hex.", e))?;
    let policy = policy_for(&b.asset, b.chain_id, fee_wei_max)?;
    evm::check_against_intent(&tx, b.chain_id, tx.nonce, &b.intent, &b.from, &policy)
        .map_err(|e| from_signer("payload_hex.", e))?;
    Ok(tx)
}

/// Recovers the address a 65-byte `r || s || y_parity` signature over `hash` was made by, with libsecp256k1
/// (rust-bitcoin), refusing a high-S signature or a parity byte other than 0 or 1.
pub(crate) fn recover_address(field: &str, hash: &[u8; 32], sig: &[u8]) -> Result<String, BundleError> {
    let sig: &[u8; 65] = sig.try_into().map_err(|_| invalid(field, format!("is {} bytes, expected 65", sig.len())))?;
    if sig[64] > 1 {
        return Err(invalid(field, "recovery byte must be 0 or 1"));
    }
    let mut normalised = SecpSignature::from_compact(&sig[..64]).map_err(|_| invalid(field, "is not a signature"))?;
    normalised.normalize_s();
    if normalised.serialize_compact()[..] != sig[..64] {
        return Err(invalid(field, "is high-S (malleable); only low-S signatures are accepted"));
    }
    let recid = RecoveryId::from_i32(i32::from(sig[64])).map_err(|_| invalid(field, "bad recovery byte"))?;
    let recoverable =
        RecoverableSignature::from_compact(&sig[..64], recid).map_err(|_| invalid(field, "is not a signature"))?;
    let public = Secp256k1::verification_only()
        .recover_ecdsa(&Message::from_digest(*hash), &recoverable)
        .map_err(|_| invalid(field, "does not recover to a public key"))?;
    Ok(kinko_keys::hd::evm_address(&public))
}

/// The signed EIP-2718 encoding of `tx` with `sig` (alloy), and its hash.
pub(crate) fn encode_signed(tx: &TxEip1559, sig: &[u8; 65]) -> (Vec<u8>, [u8; 32]) {
    let signature = Signature::new(U256::from_be_slice(&sig[..32]), U256::from_be_slice(&sig[32..64]), sig[64] == 1);
    let raw = TxEnvelope::Eip1559(tx.clone().into_signed(signature)).encoded_2718();
    let hash = keccak256(&raw).0;
    (raw, hash)
}

/// The signed file for `unsigned`, whose decoded transaction is `tx`, with signature `sig`.
pub fn assemble_signed(unsigned: &UnsignedBundle, tx: &TxEip1559, sig: &[u8; 65]) -> SignedBundle {
    let (raw, hash) = encode_signed(tx, sig);
    SignedBundle {
        kind: SIGNED_KIND.into(),
        unsigned_sha256: unsigned_sha256(unsigned),
        intent_hash: hex::encode(unsigned.intent.hash()),
        payload_hex: unsigned.payload_hex.clone(),
        signature_hex: hex::encode(sig),
        raw_tx_hex: format!("0x{}", hex::encode(raw)),
        tx_hash: format!("0x{}", hex::encode(hash)),
    }
}

/// Online side: checks the signed file against the unsigned bundle the server itself exported (its stored copy,
/// not the file the operator brings back). Kinds, `unsigned_sha256`, `intent_hash`, payload byte-equal, the
/// decoded transaction still matches the intent (the signer's own check, fee bound
/// [`evm::FEE_WEI_MAX_DEFAULT`]), the signature is low-S and recovers to `unsigned.from`, `raw_tx_hex` is exactly
/// payload + signature re-encoded (alloy), and `tx_hash` is keccak256 of it. Any edit is refused, naming the
/// field.
pub fn verify_signed(unsigned: &UnsignedBundle, signed: &SignedBundle) -> Result<VerifiedTx, BundleError> {
    verify_signed_with(unsigned, signed, evm::FEE_WEI_MAX_DEFAULT)
}

/// [`verify_signed`] with another fee bound (the offline side's self-check uses its pinned one).
pub fn verify_signed_with(
    unsigned: &UnsignedBundle,
    signed: &SignedBundle,
    fee_wei_max: u128,
) -> Result<VerifiedTx, BundleError> {
    if signed.kind != SIGNED_KIND {
        return Err(invalid("kind", format!("is {:?}, expected {SIGNED_KIND:?}", signed.kind)));
    }
    let tx = check_unsigned(unsigned, fee_wei_max)?;
    if !signed.unsigned_sha256.eq_ignore_ascii_case(&unsigned_sha256(unsigned)) {
        return Err(invalid("unsigned_sha256", "does not match the unsigned bundle this server exported"));
    }
    if !signed.intent_hash.eq_ignore_ascii_case(&hex::encode(unsigned.intent.hash())) {
        return Err(invalid("intent_hash", "does not match the exported intent"));
    }
    let payload = decode_hex("payload_hex", &unsigned.payload_hex)?;
    if decode_hex("payload_hex", &signed.payload_hex)? != payload {
        return Err(invalid("payload_hex", "differs from the exported unsigned transaction"));
    }
    let sig = decode_hex("signature_hex", &signed.signature_hex)?;
    let hash = keccak256(&payload).0;
    let signer = recover_address("signature_hex", &hash, &sig)?;
    if signer != unsigned.from {
        return Err(invalid(
            "signature_hex",
            format!("recovers to {signer}, not to the cold wallet {}", unsigned.from),
        ));
    }
    let sig: [u8; 65] = sig.try_into().map_err(|_| invalid("signature_hex", "is not 65 bytes"))?;
    let (raw, tx_hash) = encode_signed(&tx, &sig);
    if decode_hex("raw_tx_hex", &signed.raw_tx_hex)? != raw {
        return Err(invalid("raw_tx_hex", "is not the exported transaction with this signature"));
    }
    let tx_hash = format!("0x{}", hex::encode(tx_hash));
    if !signed.tx_hash.eq_ignore_ascii_case(&tx_hash) {
        return Err(invalid("tx_hash", format!("is not keccak256 of raw_tx_hex ({tx_hash})")));
    }
    Ok(VerifiedTx {
        raw,
        tx_hash,
        nonce: tx.nonce,
        max_fee_per_gas: tx.max_fee_per_gas,
        max_priority_fee_per_gas: tx.max_priority_fee_per_gas,
        gas_limit: tx.gas_limit,
    })
}

fn io_err(path: &Path, reason: impl std::fmt::Display) -> BundleError {
    BundleError::Io { path: path.display().to_string(), reason: reason.to_string() }
}

/// Reads a file of at most [`BUNDLE_LEN_MAX`] bytes.
pub fn read_bounded(path: &Path) -> Result<Vec<u8>, BundleError> {
    let file = std::fs::File::open(path).map_err(|e| io_err(path, e))?;
    let mut bytes = Vec::new();
    file.take(BUNDLE_LEN_MAX + 1).read_to_end(&mut bytes).map_err(|e| io_err(path, e))?;
    if bytes.len() as u64 > BUNDLE_LEN_MAX {
        return Err(io_err(path, format!("is over {BUNDLE_LEN_MAX} bytes")));
    }
    Ok(bytes)
}

fn parse<T: for<'de> Deserialize<'de>>(path: &Path, bytes: &[u8]) -> Result<T, BundleError> {
    serde_json::from_slice(bytes).map_err(|e| io_err(path, format!("does not parse: {e}")))
}

pub fn read_unsigned(path: &Path) -> Result<UnsignedBundle, BundleError> {
    let b: UnsignedBundle = parse(path, &read_bounded(path)?)?;
    if b.kind != UNSIGNED_KIND {
        return Err(invalid("kind", format!("is {:?}, expected {UNSIGNED_KIND:?}", b.kind)));
    }
    Ok(b)
}

pub fn read_signed(path: &Path) -> Result<SignedBundle, BundleError> {
    let b: SignedBundle = parse(path, &read_bounded(path)?)?;
    if b.kind != SIGNED_KIND {
        return Err(invalid("kind", format!("is {:?}, expected {SIGNED_KIND:?}", b.kind)));
    }
    Ok(b)
}

/// Writes `value` as pretty JSON, mode 0600, via a temporary file renamed into place (a reader never sees a
/// half-written file), synced. Overwrites an existing file at `path`.
pub fn write_json_0600(path: &Path, value: &impl Serialize) -> Result<(), BundleError> {
    let mut text = serde_json::to_vec_pretty(value).map_err(|e| io_err(path, e))?;
    text.push(b'\n');
    let file_name = path.file_name().ok_or_else(|| io_err(path, "has no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp).map_err(|e| io_err(&tmp, e))?;
    #[cfg(unix)]
    {
        // A stale temporary file keeps its old mode through `open`; set it explicitly.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(|e| io_err(&tmp, e))?;
    }
    file.write_all(&text).map_err(|e| io_err(&tmp, e))?;
    file.sync_all().map_err(|e| io_err(&tmp, e))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(|e| io_err(path, e))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && let Ok(d) = std::fs::File::open(dir)
    {
        // Best effort: makes the rename durable on filesystems that need the directory synced.
        let _ = d.sync_all();
    }
    Ok(())
}
