//! The master key and its custodian shares (K3, K16).
//!
//! A random 32-byte master key (MK) is the root of the seal: it wraps the KEK(s) and is never stored.
//! It is split with Shamir's secret sharing (the `blahaj` crate, GF(256) byte-wise) into one share per
//! named key custodian; any `threshold` of them give it back. A share file may be protected by its
//! custodian's passphrase: argon2id stretches the passphrase, XChaCha20-Poly1305 seals the share, and the
//! file's identity (custodian, index, threshold) is associated data, so a sealed share cannot be relabelled.
//!
//! The [`SealConfig`] is public: the custodians' names, their share indexes, a sha256 commitment to each
//! raw share (so a wrong or corrupted share is rejected on arrival, before it can poison a combination),
//! and a fingerprint of the MK (so a combination is checked before anything is unwrapped with it).

use std::io::Write;
use std::path::Path;

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

pub const MASTER_KEY_LEN: usize = 32;
pub const SHARE_FILE_VERSION: u32 = 1;
pub const SEAL_CONFIG_VERSION: u32 = 1;
/// Bound on custodians per seal: Shamir over GF(256) allows 255; a seal with more than a handful of
/// custodians is a configuration mistake, not a policy.
pub const CUSTODIANS_MAX: usize = 32;
/// Bound on a custodian's name (it is shown in status output and stored in the seal config).
pub const CUSTODIAN_NAME_LEN_MAX: usize = 64;
/// Share files are tiny; anything bigger is not one.
pub const SHARE_FILE_LEN_MAX: u64 = 64 * 1024;
/// argon2id cost for passphrase envelopes (the OWASP minimum: 19 MiB, 2 passes, 1 lane). Stored in the
/// file so it can be raised without breaking existing files.
pub const ARGON2_M_COST_KIB: u32 = 19 * 1024;
pub const ARGON2_T_COST: u32 = 2;
pub const ARGON2_P_COST: u32 = 1;
/// Upper bounds accepted when reading a file, so a crafted file cannot make opening it take forever.
const ARGON2_M_COST_KIB_MAX: u32 = 1024 * 1024;
const ARGON2_T_COST_MAX: u32 = 16;
const MK_FINGERPRINT_DOMAIN: &[u8] = b"kinko-mk-fp-v1";
const ENVELOPE_AAD_DOMAIN: &[u8] = b"kinko-share-envelope-v1";

#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    #[error("threshold must be between 1 and the number of custodians ({custodians}), got {threshold}")]
    BadThreshold { threshold: usize, custodians: usize },
    #[error("custodians: {0}")]
    BadCustodians(String),
    #[error("not enough distinct shares: have {have}, need {need}")]
    NotEnoughShares { have: usize, need: usize },
    #[error("shares do not fit together: {0}")]
    Inconsistent(&'static str),
    #[error("share file {field}: {reason}")]
    BadFile { field: &'static str, reason: String },
    #[error("share file is protected by a passphrase; none was given")]
    PassphraseRequired,
    /// Wrong passphrase or a tampered envelope: AEAD cannot tell which, on purpose.
    #[error("share file does not open with this passphrase (wrong passphrase or tampered file)")]
    EnvelopeAuthentication,
    #[error("io {path}: {source}")]
    Io { path: String, source: std::io::Error },
}

/// The master key. Zeroized on drop; `Debug` shows nothing of it.
pub struct MasterKey(Zeroizing<[u8; MASTER_KEY_LEN]>);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    /// A fresh MK from the operating system's CSPRNG (K9).
    pub fn generate() -> MasterKey {
        let mut k = Zeroizing::new([0u8; MASTER_KEY_LEN]);
        OsRng.fill_bytes(&mut k[..]);
        MasterKey(k)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<MasterKey, ShareError> {
        let arr: [u8; MASTER_KEY_LEN] =
            bytes.try_into().map_err(|_| ShareError::Inconsistent("combined secret has the wrong length"))?;
        Ok(MasterKey(Zeroizing::new(arr)))
    }

    /// sha256("kinko-mk-fp-v1" || MK), hex. Public: it tells whether a combination is right, nothing more.
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        h.update(MK_FINGERPRINT_DOMAIN);
        h.update(&self.0[..]);
        hex::encode(h.finalize())
    }

    /// The MK as a wrapping key (same AEAD and associated-data scheme as the KEK's), to wrap and unwrap KEKs.
    pub fn wrapping_key(&self) -> crate::kek::Kek {
        // Infallible: the lengths are equal by construction.
        crate::kek::Kek::from_bytes(&self.0[..]).expect("MASTER_KEY_LEN == KEK_LEN")
    }
}

/// One custodian's raw share: `index || y-bytes`. Zeroized on drop; `Debug` shows only who and which.
#[derive(Clone)]
pub struct RawShare {
    pub custodian: String,
    pub index: u8,
    pub threshold: u8,
    bytes: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for RawShare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawShare")
            .field("custodian", &self.custodian)
            .field("index", &self.index)
            .field("threshold", &self.threshold)
            .finish_non_exhaustive()
    }
}

impl RawShare {
    /// Builds a share from its hex form (as carried in a plain share file or over the signer's socket).
    pub fn from_hex(custodian: &str, index: u8, threshold: u8, share_hex: &str) -> Result<RawShare, ShareError> {
        let bytes = Zeroizing::new(
            hex::decode(share_hex.trim())
                .map_err(|_| ShareError::BadFile { field: "share_hex", reason: "not hex".into() })?,
        );
        RawShare::from_bytes(custodian, index, threshold, bytes)
    }

    fn from_bytes(
        custodian: &str,
        index: u8,
        threshold: u8,
        bytes: Zeroizing<Vec<u8>>,
    ) -> Result<RawShare, ShareError> {
        check_name(custodian)?;
        if bytes.len() != 1 + MASTER_KEY_LEN {
            return Err(ShareError::BadFile {
                field: "share_hex",
                reason: format!("must be {} bytes, got {}", 1 + MASTER_KEY_LEN, bytes.len()),
            });
        }
        if bytes[0] != index || index == 0 {
            return Err(ShareError::BadFile { field: "index", reason: "does not match the share".into() });
        }
        if threshold == 0 {
            return Err(ShareError::BadFile { field: "threshold", reason: "must be at least 1".into() });
        }
        Ok(RawShare { custodian: custodian.to_string(), index, threshold, bytes })
    }

    /// sha256 of the raw share bytes, hex: the commitment recorded in the seal config.
    pub fn sha256_hex(&self) -> String {
        hex::encode(Sha256::digest(&self.bytes[..]))
    }

    /// The share as hex, for the signer's socket. The caller keeps the result in a zeroizing wrapper.
    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(&self.bytes[..]))
    }

    /// The share file for this share; with a passphrase, the share is sealed in an argon2id/XChaCha20 envelope.
    pub fn to_file(&self, passphrase: Option<&str>) -> Result<ShareFile, ShareError> {
        let mut file = ShareFile {
            version: SHARE_FILE_VERSION,
            custodian: self.custodian.clone(),
            index: self.index,
            threshold: self.threshold,
            share_hex: None,
            envelope: None,
        };
        match passphrase {
            None => file.share_hex = Some(hex::encode(&self.bytes[..])),
            Some(p) => {
                let mut salt = [0u8; 16];
                OsRng.fill_bytes(&mut salt);
                let key = stretch(p, &salt, ARGON2_M_COST_KIB, ARGON2_T_COST, ARGON2_P_COST)?;
                let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
                let aad = envelope_aad(&file.custodian, file.index, file.threshold);
                let ct = XChaCha20Poly1305::new((&*key).into())
                    .encrypt(&nonce, Payload { msg: &self.bytes[..], aad: &aad })
                    .map_err(|_| ShareError::Inconsistent("share too long to seal"))?;
                file.envelope = Some(Envelope {
                    kdf: "argon2id".into(),
                    m_cost_kib: ARGON2_M_COST_KIB,
                    t_cost: ARGON2_T_COST,
                    p_cost: ARGON2_P_COST,
                    salt_hex: hex::encode(salt),
                    nonce_hex: hex::encode(nonce),
                    ciphertext_hex: hex::encode(ct),
                });
            }
        }
        Ok(file)
    }
}

/// A share file on disk (JSON). `share_hex` (plain) or `envelope` (passphrase-protected), never both.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShareFile {
    pub version: u32,
    pub custodian: String,
    pub index: u8,
    pub threshold: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share_hex: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envelope: Option<Envelope>,
}

impl Drop for ShareFile {
    fn drop(&mut self) {
        self.share_hex.zeroize();
    }
}

impl std::fmt::Debug for ShareFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShareFile")
            .field("custodian", &self.custodian)
            .field("index", &self.index)
            .field("threshold", &self.threshold)
            .field("protected", &self.envelope.is_some())
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    pub kdf: String,
    pub m_cost_kib: u32,
    pub t_cost: u32,
    pub p_cost: u32,
    pub salt_hex: String,
    pub nonce_hex: String,
    pub ciphertext_hex: String,
}

impl ShareFile {
    pub fn is_protected(&self) -> bool {
        self.envelope.is_some()
    }

    /// Opens the file: checks its form and, for a protected file, decrypts with the passphrase.
    pub fn open(&self, passphrase: Option<&str>) -> Result<RawShare, ShareError> {
        let bad = |field, reason: &str| ShareError::BadFile { field, reason: reason.into() };
        if self.version != SHARE_FILE_VERSION {
            return Err(bad("version", "unsupported"));
        }
        match (&self.share_hex, &self.envelope) {
            (Some(h), None) => RawShare::from_hex(&self.custodian, self.index, self.threshold, h),
            (None, Some(env)) => {
                let passphrase = passphrase.ok_or(ShareError::PassphraseRequired)?;
                if env.kdf != "argon2id" {
                    return Err(bad("envelope.kdf", "must be argon2id"));
                }
                if env.m_cost_kib > ARGON2_M_COST_KIB_MAX || env.t_cost > ARGON2_T_COST_MAX || env.p_cost > 16 {
                    return Err(bad("envelope", "argon2 cost beyond the accepted bounds"));
                }
                let salt = hex::decode(&env.salt_hex).map_err(|_| bad("envelope.salt_hex", "not hex"))?;
                let nonce = hex::decode(&env.nonce_hex).map_err(|_| bad("envelope.nonce_hex", "not hex"))?;
                if nonce.len() != 24 {
                    return Err(bad("envelope.nonce_hex", "must be 24 bytes"));
                }
                let ct = hex::decode(&env.ciphertext_hex).map_err(|_| bad("envelope.ciphertext_hex", "not hex"))?;
                let key = stretch(passphrase, &salt, env.m_cost_kib, env.t_cost, env.p_cost)?;
                let aad = envelope_aad(&self.custodian, self.index, self.threshold);
                let plain = XChaCha20Poly1305::new((&*key).into())
                    .decrypt(XNonce::from_slice(&nonce), Payload { msg: &ct, aad: &aad })
                    .map_err(|_| ShareError::EnvelopeAuthentication)?;
                RawShare::from_bytes(&self.custodian, self.index, self.threshold, Zeroizing::new(plain))
            }
            _ => Err(bad("share_hex", "exactly one of share_hex and envelope must be present")),
        }
    }

    /// Writes the file, mode 0600, refusing to overwrite an existing one (it may be the only copy of a share).
    pub fn write(&self, path: &Path) -> Result<(), ShareError> {
        let io = |source| ShareError::Io { path: path.display().to_string(), source };
        let text = Zeroizing::new(
            serde_json::to_string_pretty(self)
                .map_err(|e| ShareError::BadFile { field: "json", reason: e.to_string() })?,
        );
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(path).map_err(io)?;
        file.write_all(text.as_bytes()).map_err(io)?;
        file.write_all(b"\n").map_err(io)?;
        file.sync_all().map_err(io)
    }

    pub fn read(path: &Path) -> Result<ShareFile, ShareError> {
        let io = |source| ShareError::Io { path: path.display().to_string(), source };
        let len = std::fs::metadata(path).map_err(io)?.len();
        if len > SHARE_FILE_LEN_MAX {
            return Err(ShareError::BadFile { field: "size", reason: format!("over {SHARE_FILE_LEN_MAX} bytes") });
        }
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(io)?);
        serde_json::from_str(&text)
            .map_err(|e| ShareError::BadFile { field: "json", reason: format!("does not parse: line {}", e.line()) })
    }
}

fn stretch(
    passphrase: &str,
    salt: &[u8],
    m_cost_kib: u32,
    t_cost: u32,
    p_cost: u32,
) -> Result<Zeroizing<[u8; 32]>, ShareError> {
    let params = argon2::Params::new(m_cost_kib, t_cost, p_cost, Some(32))
        .map_err(|e| ShareError::BadFile { field: "envelope", reason: format!("argon2 parameters: {e}") })?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut key = Zeroizing::new([0u8; 32]);
    argon
        .hash_password_into(passphrase.as_bytes(), salt, &mut key[..])
        .map_err(|e| ShareError::BadFile { field: "envelope.salt_hex", reason: format!("argon2: {e}") })?;
    Ok(key)
}

fn envelope_aad(custodian: &str, index: u8, threshold: u8) -> Vec<u8> {
    let mut aad = Vec::with_capacity(ENVELOPE_AAD_DOMAIN.len() + 8 + custodian.len());
    aad.extend_from_slice(ENVELOPE_AAD_DOMAIN);
    aad.extend_from_slice(&(custodian.len() as u32).to_be_bytes());
    aad.extend_from_slice(custodian.as_bytes());
    aad.push(index);
    aad.push(threshold);
    aad
}

fn check_name(name: &str) -> Result<(), ShareError> {
    if name.is_empty() || name.len() > CUSTODIAN_NAME_LEN_MAX {
        return Err(ShareError::BadCustodians(format!("a name must be 1 to {CUSTODIAN_NAME_LEN_MAX} characters")));
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@')) {
        return Err(ShareError::BadCustodians(format!("{name:?}: use letters, digits, '-', '_', '.', '@'")));
    }
    Ok(())
}

/// Splits the MK into one share per custodian (share index = position + 1), any `threshold` of which
/// reconstruct it.
pub fn split(mk: &MasterKey, threshold: usize, custodians: &[String]) -> Result<Vec<RawShare>, ShareError> {
    if custodians.is_empty() || custodians.len() > CUSTODIANS_MAX {
        return Err(ShareError::BadCustodians(format!("need 1 to {CUSTODIANS_MAX} custodians")));
    }
    for (i, name) in custodians.iter().enumerate() {
        check_name(name)?;
        if custodians[..i].contains(name) {
            return Err(ShareError::BadCustodians(format!("{name:?} is named twice")));
        }
    }
    if threshold == 0 || threshold > custodians.len() {
        return Err(ShareError::BadThreshold { threshold, custodians: custodians.len() });
    }
    let t = threshold as u8;
    let dealer = blahaj::Sharks(t).dealer(&mk.0[..]);
    custodians
        .iter()
        .zip(dealer)
        .map(|(name, share)| {
            let bytes = Zeroizing::new(Vec::from(&share));
            let index = bytes[0];
            RawShare::from_bytes(name, index, t, bytes)
        })
        .collect()
}

/// Combines shares into the MK. Needs `threshold` shares with distinct indexes; the caller checks the
/// result against the seal config's fingerprint (a wrong share gives a wrong key, not an error).
pub fn combine(threshold: usize, shares: &[RawShare]) -> Result<MasterKey, ShareError> {
    let mut indexes: Vec<u8> = shares.iter().map(|s| s.index).collect();
    indexes.sort_unstable();
    indexes.dedup();
    if threshold == 0 || indexes.len() < threshold {
        return Err(ShareError::NotEnoughShares { have: indexes.len(), need: threshold });
    }
    if indexes.len() != shares.len() {
        return Err(ShareError::Inconsistent("two shares carry the same index"));
    }
    let parsed: Vec<blahaj::Share> = shares
        .iter()
        .map(|s| blahaj::Share::try_from(&s.bytes[..]))
        .collect::<Result<_, _>>()
        .map_err(|_| ShareError::Inconsistent("a share does not parse"))?;
    let secret = Zeroizing::new(
        blahaj::Sharks(threshold as u8)
            .recover(parsed.iter())
            .map_err(|_| ShareError::Inconsistent("shares do not recover a secret"))?,
    );
    MasterKey::from_bytes(&secret)
}

/// Public description of a seal: who holds which share, and the commitments that check them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealConfig {
    pub version: u32,
    pub threshold: usize,
    pub shares: usize,
    pub mk_fingerprint: String,
    pub custodians: Vec<CustodianCommitment>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustodianCommitment {
    pub name: String,
    pub index: u8,
    pub share_sha256: String,
}

impl SealConfig {
    pub fn new(mk: &MasterKey, threshold: usize, shares: &[RawShare]) -> SealConfig {
        SealConfig {
            version: SEAL_CONFIG_VERSION,
            threshold,
            shares: shares.len(),
            mk_fingerprint: mk.fingerprint(),
            custodians: shares
                .iter()
                .map(|s| CustodianCommitment {
                    name: s.custodian.clone(),
                    index: s.index,
                    share_sha256: s.sha256_hex(),
                })
                .collect(),
        }
    }

    pub fn custodian(&self, name: &str) -> Option<&CustodianCommitment> {
        self.custodians.iter().find(|c| c.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("custodian-{i}")).collect()
    }

    #[test]
    fn k16_threshold_shares_reconstruct_and_fewer_do_not() {
        let mk = MasterKey::generate();
        let shares = split(&mk, 3, &names(5)).unwrap();
        assert_eq!(shares.len(), 5);
        let config = SealConfig::new(&mk, 3, &shares);
        // Every 3-subset gives the MK back.
        for a in 0..5 {
            for b in a + 1..5 {
                for c in b + 1..5 {
                    let got = combine(3, &[shares[a].clone(), shares[b].clone(), shares[c].clone()]).unwrap();
                    assert_eq!(got.fingerprint(), config.mk_fingerprint);
                }
            }
        }
        // K-1 shares: refused by count, and forced through the interpolation they give another key.
        assert!(matches!(combine(3, &shares[..2]), Err(ShareError::NotEnoughShares { have: 2, need: 3 })));
        let forced = combine(2, &shares[..2]).unwrap();
        assert_ne!(forced.fingerprint(), config.mk_fingerprint, "K-1 shares must not reconstruct");
    }

    #[test]
    fn k16_split_rejects_bad_parameters() {
        let mk = MasterKey::generate();
        assert!(matches!(split(&mk, 0, &names(3)), Err(ShareError::BadThreshold { .. })));
        assert!(matches!(split(&mk, 4, &names(3)), Err(ShareError::BadThreshold { .. })));
        assert!(split(&mk, 1, &["a".into(), "a".into()]).is_err());
        assert!(split(&mk, 1, &["bad name".into()]).is_err());
        assert!(split(&mk, 1, &names(CUSTODIANS_MAX + 1)).is_err());
    }

    #[test]
    fn k16_passphrase_envelope_round_trips_and_wrong_passphrase_fails() {
        let mk = MasterKey::generate();
        let shares = split(&mk, 2, &names(2)).unwrap();
        let file = shares[0].to_file(Some("correct horse")).unwrap();
        assert!(file.share_hex.is_none());
        let text = serde_json::to_string(&file).unwrap();
        assert!(!text.contains(&*shares[0].to_hex()), "the share is not in the file in the clear");
        let back: ShareFile = serde_json::from_str(&text).unwrap();
        let opened = back.open(Some("correct horse")).unwrap();
        assert_eq!(opened.sha256_hex(), shares[0].sha256_hex());
        assert!(matches!(back.open(Some("wrong horse")), Err(ShareError::EnvelopeAuthentication)));
        assert!(matches!(back.open(None), Err(ShareError::PassphraseRequired)));
        // Relabelling a sealed share to another custodian breaks the associated data.
        let mut relabelled = back.clone();
        relabelled.custodian = "custodian-1".into();
        assert!(matches!(relabelled.open(Some("correct horse")), Err(ShareError::EnvelopeAuthentication)));
    }

    #[test]
    fn k16_tampered_files_fail() {
        let mk = MasterKey::generate();
        let shares = split(&mk, 2, &names(3)).unwrap();
        let config = SealConfig::new(&mk, 2, &shares);
        // Sealed file: any flipped ciphertext byte fails authentication.
        let file = shares[0].to_file(Some("pw")).unwrap();
        let mut bad = file.clone();
        let env = bad.envelope.as_mut().unwrap();
        let mut ct = hex::decode(&env.ciphertext_hex).unwrap();
        ct[5] ^= 1;
        env.ciphertext_hex = hex::encode(ct);
        assert!(matches!(bad.open(Some("pw")), Err(ShareError::EnvelopeAuthentication)));
        // Plain file: a flipped share byte opens, but no longer matches its commitment and combines wrong.
        let mut plain = shares[1].to_file(None).unwrap();
        let mut bytes = hex::decode(plain.share_hex.as_ref().unwrap()).unwrap();
        bytes[7] ^= 1;
        plain.share_hex = Some(hex::encode(bytes));
        let tampered = plain.open(None).unwrap();
        assert_ne!(tampered.sha256_hex(), config.custodians[1].share_sha256);
        let wrong = combine(2, &[shares[0].clone(), tampered]).unwrap();
        assert_ne!(wrong.fingerprint(), config.mk_fingerprint);
        // Structural damage is named.
        let mut both = shares[2].to_file(None).unwrap();
        both.envelope = file.envelope.clone();
        assert!(matches!(both.open(Some("pw")), Err(ShareError::BadFile { field: "share_hex", .. })));
        let mut short = shares[2].to_file(None).unwrap();
        short.share_hex = Some("0301".into());
        assert!(matches!(short.open(None), Err(ShareError::BadFile { .. })));
    }

    #[test]
    fn k16_share_files_are_private_and_not_overwritten() {
        let dir = std::env::temp_dir().join(format!("kinko-shares-{}-{}", std::process::id(), OsRng.next_u64()));
        std::fs::create_dir_all(&dir).unwrap();
        let mk = MasterKey::generate();
        let shares = split(&mk, 1, &names(1)).unwrap();
        let path = dir.join("s.json");
        shares[0].to_file(None).unwrap().write(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        assert!(shares[0].to_file(None).unwrap().write(&path).is_err());
        let back = ShareFile::read(&path).unwrap().open(None).unwrap();
        assert_eq!(combine(1, &[back]).unwrap().fingerprint(), mk.fingerprint());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn k16_debug_shows_no_secret() {
        let mk = MasterKey::generate();
        let shares = split(&mk, 1, &names(1)).unwrap();
        let hex_share = shares[0].to_hex();
        let file = shares[0].to_file(None).unwrap();
        let shown = format!("{mk:?} {:?} {file:?}", shares[0]);
        assert!(!shown.contains(&hex_share[2..]), "{shown}");
    }
}
