//! An operator's personal approval key (K8, O2, O4, M12).
//!
//! Approvals are Ed25519 signatures made on the operator's own terminal (`kinko operator keygen` creates the
//! key there; `kinko ops approve` uses it). The private key never leaves that terminal: it is kept in a JSON
//! file sealed with the operator's passphrase, the same envelope as a custodian's share file
//! ([`crate::shares`]): argon2id stretches the passphrase (parameters recorded in the file, so they can be
//! raised later), XChaCha20-Poly1305 seals the 32-byte secret with a random salt and nonce.
//!
//! The operator id and the public key are in the clear (the operator hands the public key to an
//! administrator, and tools can show whose file it is) and are bound as associated data: a file relabelled
//! to another operator, or with its public key swapped, does not open. After decryption the secret must also
//! derive the recorded public key, so a file can never sign with a key other than the one it names.

use std::io::Write;
use std::path::Path;

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use ed25519_dalek::SigningKey;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

pub const OPERATOR_KEY_FILE_VERSION: u32 = 1;
/// The only key type: Ed25519, as `kinko_core::operators::approval_message` signatures are.
pub const KEY_ALGORITHM: &str = "ed25519";
pub const KDF_ARGON2ID: &str = "argon2id";
/// argon2id cost (the OWASP minimum is 19 MiB, 2 passes, 1 lane; an approval key guards signatures over
/// customer funds, and opening it is rare, so twice the memory).
pub const ARGON2_M_COST_KIB: u32 = 38 * 1024;
pub const ARGON2_T_COST: u32 = 2;
pub const ARGON2_P_COST: u32 = 1;
/// Lower bounds accepted when reading a file: a file whose parameters were lowered below OWASP's (by an
/// attacker who wants a cheap brute force of a copied file's successor, or by mistake) is refused.
pub const ARGON2_M_COST_KIB_MIN: u32 = 19 * 1024;
pub const ARGON2_T_COST_MIN: u32 = 2;
/// Upper bounds accepted when reading a file, so a crafted file cannot make opening it take forever.
pub const ARGON2_M_COST_KIB_MAX: u32 = 1024 * 1024;
pub const ARGON2_T_COST_MAX: u32 = 16;
pub const ARGON2_P_COST_MAX: u32 = 16;
pub const SALT_LEN: usize = 16;
pub const NONCE_LEN: usize = 24;
const SECRET_LEN: usize = 32;
/// The AEAD tag adds 16 bytes to the 32-byte secret.
const CIPHERTEXT_LEN: usize = SECRET_LEN + 16;
/// Operator key files are tiny; anything bigger is not one.
pub const OPERATOR_KEY_FILE_LEN_MAX: u64 = 16 * 1024;
/// Same bound as a request id / registry operator id (`kinko_core::operators::REQUEST_ID_LEN_MAX`).
pub const OPERATOR_ID_LEN_MAX: usize = 128;
/// Bound on a passphrase: argon2 accepts far more, but a longer one is a paste accident.
pub const PASSPHRASE_LEN_MAX: usize = 1024;
/// A passphrase shorter than this is refused at generation (the file may be copied off the terminal).
pub const PASSPHRASE_LEN_MIN: usize = 12;
const AAD_DOMAIN: &[u8] = b"kinko-operator-key-v1";

#[derive(Debug, thiserror::Error)]
pub enum OperatorKeyError {
    #[error("operator key file {field}: {reason}")]
    BadFile { field: &'static str, reason: String },
    #[error("passphrase {0}")]
    BadPassphrase(String),
    /// Wrong passphrase or a tampered file: AEAD cannot tell which, on purpose.
    #[error("operator key file does not open with this passphrase (wrong passphrase or tampered file)")]
    Authentication,
    #[error("io {path}: {source}")]
    Io { path: String, source: std::io::Error },
}

fn bad(field: &'static str, reason: impl Into<String>) -> OperatorKeyError {
    OperatorKeyError::BadFile { field, reason: reason.into() }
}

/// The file on disk (JSON). Nothing in it is secret without the passphrase; `Debug` still shows only the
/// clear fields.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OperatorKeyFile {
    pub version: u32,
    pub operator_id: String,
    pub algorithm: String,
    pub public_key_hex: String,
    pub kdf: String,
    pub m_cost_kib: u32,
    pub t_cost: u32,
    pub p_cost: u32,
    pub salt_hex: String,
    pub nonce_hex: String,
    pub ciphertext_hex: String,
}

impl std::fmt::Debug for OperatorKeyFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperatorKeyFile")
            .field("operator_id", &self.operator_id)
            .field("public_key_hex", &self.public_key_hex)
            .finish_non_exhaustive()
    }
}

/// Checks an operator id the way the registry encoding will (`operator_registry::push_str`): 1 to 128 bytes,
/// no whitespace or control characters. Checked here too so a key is never made for an id the registry
/// cannot hold.
pub fn check_operator_id(operator_id: &str) -> Result<(), OperatorKeyError> {
    if operator_id.is_empty() || operator_id.len() > OPERATOR_ID_LEN_MAX {
        return Err(bad("operator_id", format!("must be 1 to {OPERATOR_ID_LEN_MAX} bytes")));
    }
    if operator_id.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(bad("operator_id", "must not contain whitespace or control characters"));
    }
    Ok(())
}

fn check_passphrase(passphrase: &str) -> Result<(), OperatorKeyError> {
    if passphrase.len() > PASSPHRASE_LEN_MAX {
        return Err(OperatorKeyError::BadPassphrase(format!("is longer than {PASSPHRASE_LEN_MAX} bytes")));
    }
    Ok(())
}

/// Generates a fresh approval key for `operator_id` (OS CSPRNG) and seals it with `passphrase`. Returns the
/// file and the public key in hex (what the operator gives the administrator who registers them).
pub fn generate(operator_id: &str, passphrase: &str) -> Result<(OperatorKeyFile, String), OperatorKeyError> {
    check_operator_id(operator_id)?;
    check_passphrase(passphrase)?;
    if passphrase.chars().count() < PASSPHRASE_LEN_MIN {
        return Err(OperatorKeyError::BadPassphrase(format!("must be at least {PASSPHRASE_LEN_MIN} characters")));
    }
    let mut secret = Zeroizing::new([0u8; SECRET_LEN]);
    OsRng.fill_bytes(&mut secret[..]);
    let key = SigningKey::from_bytes(&secret);
    let public_key_hex = hex::encode(key.verifying_key().as_bytes());
    let mut salt = [0u8; SALT_LEN];
    OsRng.fill_bytes(&mut salt);
    let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
    let wrapping = stretch(passphrase, &salt, ARGON2_M_COST_KIB, ARGON2_T_COST, ARGON2_P_COST)?;
    let aad = aad(operator_id, &public_key_hex);
    let ciphertext = XChaCha20Poly1305::new((&*wrapping).into())
        .encrypt(&nonce, Payload { msg: &secret[..], aad: &aad })
        .map_err(|_| bad("ciphertext_hex", "could not seal the key"))?;
    let file = OperatorKeyFile {
        version: OPERATOR_KEY_FILE_VERSION,
        operator_id: operator_id.to_owned(),
        algorithm: KEY_ALGORITHM.to_owned(),
        public_key_hex: public_key_hex.clone(),
        kdf: KDF_ARGON2ID.to_owned(),
        m_cost_kib: ARGON2_M_COST_KIB,
        t_cost: ARGON2_T_COST,
        p_cost: ARGON2_P_COST,
        salt_hex: hex::encode(salt),
        nonce_hex: hex::encode(nonce),
        ciphertext_hex: hex::encode(ciphertext),
    };
    Ok((file, public_key_hex))
}

/// Opens the file with `passphrase`: every field is checked before any work, the envelope is decrypted, and
/// the secret must derive the recorded public key. The key is zeroized when dropped (`SigningKey` is
/// `ZeroizeOnDrop` with ed25519-dalek's `zeroize` feature; its `Debug` shows only the public half).
pub fn open(file: &OperatorKeyFile, passphrase: &str) -> Result<SigningKey, OperatorKeyError> {
    file.validate()?;
    check_passphrase(passphrase)?;
    let salt = hex::decode(&file.salt_hex).map_err(|_| bad("salt_hex", "is not hex"))?;
    let nonce = hex::decode(&file.nonce_hex).map_err(|_| bad("nonce_hex", "is not hex"))?;
    let ciphertext = hex::decode(&file.ciphertext_hex).map_err(|_| bad("ciphertext_hex", "is not hex"))?;
    let wrapping = stretch(passphrase, &salt, file.m_cost_kib, file.t_cost, file.p_cost)?;
    let aad = aad(&file.operator_id, &file.public_key_hex);
    let plain = Zeroizing::new(
        XChaCha20Poly1305::new((&*wrapping).into())
            .decrypt(XNonce::from_slice(&nonce), Payload { msg: &ciphertext, aad: &aad })
            .map_err(|_| OperatorKeyError::Authentication)?,
    );
    let secret: Zeroizing<[u8; SECRET_LEN]> =
        Zeroizing::new(plain.as_slice().try_into().map_err(|_| bad("ciphertext_hex", "does not hold a 32-byte key"))?);
    let key = SigningKey::from_bytes(&secret);
    // The AAD already binds the public key; this catches a file sealed by a buggy or hostile tool with a
    // secret that is not the one it names.
    if hex::encode(key.verifying_key().as_bytes()) != file.public_key_hex {
        return Err(bad("public_key_hex", "does not match the sealed key"));
    }
    Ok(key)
}

impl OperatorKeyFile {
    /// Checks every field's form without the passphrase (what `open` does first).
    pub fn validate(&self) -> Result<(), OperatorKeyError> {
        if self.version != OPERATOR_KEY_FILE_VERSION {
            return Err(bad("version", format!("unsupported (expected {OPERATOR_KEY_FILE_VERSION})")));
        }
        check_operator_id(&self.operator_id)?;
        if self.algorithm != KEY_ALGORITHM {
            return Err(bad("algorithm", format!("must be {KEY_ALGORITHM}")));
        }
        let public = hex::decode(&self.public_key_hex).map_err(|_| bad("public_key_hex", "is not hex"))?;
        let public: [u8; 32] = public.try_into().map_err(|_| bad("public_key_hex", "is not 32 bytes"))?;
        if self.public_key_hex != hex::encode(public) {
            return Err(bad("public_key_hex", "must be lower-case hex"));
        }
        ed25519_dalek::VerifyingKey::from_bytes(&public)
            .map_err(|_| bad("public_key_hex", "is not a valid Ed25519 point"))?;
        if self.kdf != KDF_ARGON2ID {
            return Err(bad("kdf", format!("must be {KDF_ARGON2ID}")));
        }
        if !(ARGON2_M_COST_KIB_MIN..=ARGON2_M_COST_KIB_MAX).contains(&self.m_cost_kib) {
            return Err(bad("m_cost_kib", format!("must be {ARGON2_M_COST_KIB_MIN} to {ARGON2_M_COST_KIB_MAX}")));
        }
        if !(ARGON2_T_COST_MIN..=ARGON2_T_COST_MAX).contains(&self.t_cost) {
            return Err(bad("t_cost", format!("must be {ARGON2_T_COST_MIN} to {ARGON2_T_COST_MAX}")));
        }
        if !(1..=ARGON2_P_COST_MAX).contains(&self.p_cost) {
            return Err(bad("p_cost", format!("must be 1 to {ARGON2_P_COST_MAX}")));
        }
        let lengths = [
            ("salt_hex", &self.salt_hex, SALT_LEN),
            ("nonce_hex", &self.nonce_hex, NONCE_LEN),
            ("ciphertext_hex", &self.ciphertext_hex, CIPHERTEXT_LEN),
        ];
        for (field, text, len) in lengths {
            let bytes = hex::decode(text).map_err(|_| bad(field, "is not hex"))?;
            if bytes.len() != len {
                return Err(bad(field, format!("must be {len} bytes, got {}", bytes.len())));
            }
        }
        Ok(())
    }

    pub fn to_json(&self) -> Result<String, OperatorKeyError> {
        serde_json::to_string_pretty(self).map_err(|e| bad("json", e.to_string()))
    }

    /// Parses a file's text; the fields are checked by [`OperatorKeyFile::validate`] (and by `open`).
    pub fn from_json(text: &str) -> Result<OperatorKeyFile, OperatorKeyError> {
        if text.len() as u64 > OPERATOR_KEY_FILE_LEN_MAX {
            return Err(bad("size", format!("over {OPERATOR_KEY_FILE_LEN_MAX} bytes")));
        }
        let file: OperatorKeyFile = serde_json::from_str(text)
            .map_err(|e| bad("json", format!("does not parse (line {} column {})", e.line(), e.column())))?;
        file.validate()?;
        Ok(file)
    }

    /// Writes the file, mode 0600, refusing to overwrite an existing one (it may be the only copy of a key).
    pub fn write(&self, path: &Path) -> Result<(), OperatorKeyError> {
        let io = |source| OperatorKeyError::Io { path: path.display().to_string(), source };
        let text = self.to_json()?;
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

    pub fn read(path: &Path) -> Result<OperatorKeyFile, OperatorKeyError> {
        let io = |source| OperatorKeyError::Io { path: path.display().to_string(), source };
        let len = std::fs::metadata(path).map_err(io)?.len();
        if len > OPERATOR_KEY_FILE_LEN_MAX {
            return Err(bad("size", format!("over {OPERATOR_KEY_FILE_LEN_MAX} bytes")));
        }
        OperatorKeyFile::from_json(&std::fs::read_to_string(path).map_err(io)?)
    }
}

fn stretch(
    passphrase: &str,
    salt: &[u8],
    m_cost_kib: u32,
    t_cost: u32,
    p_cost: u32,
) -> Result<Zeroizing<[u8; 32]>, OperatorKeyError> {
    let params = argon2::Params::new(m_cost_kib, t_cost, p_cost, Some(32))
        .map_err(|e| bad("m_cost_kib", format!("argon2 parameters: {e}")))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut key = Zeroizing::new([0u8; 32]);
    argon
        .hash_password_into(passphrase.as_bytes(), salt, &mut key[..])
        .map_err(|e| bad("salt_hex", format!("argon2: {e}")))?;
    Ok(key)
}

/// Associated data: domain, then the operator id and the public key hex, each length-prefixed so the two
/// cannot be re-split.
fn aad(operator_id: &str, public_key_hex: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(AAD_DOMAIN.len() + 8 + operator_id.len() + public_key_hex.len());
    out.extend_from_slice(AAD_DOMAIN);
    for part in [operator_id.as_bytes(), public_key_hex.as_bytes()] {
        out.extend_from_slice(&(part.len() as u32).to_be_bytes());
        out.extend_from_slice(part);
    }
    out
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::{Signer, Verifier};

    use super::*;

    const PASS: &str = "correct horse battery staple";

    type Mutation = Box<dyn Fn(&mut OperatorKeyFile)>;

    fn fresh() -> (OperatorKeyFile, String) {
        generate("admin1", PASS).unwrap()
    }

    #[test]
    fn o4_round_trip_signs_with_the_recorded_public_key() {
        let (file, public_hex) = fresh();
        assert_eq!(file.public_key_hex, public_hex);
        assert_eq!((file.m_cost_kib, file.t_cost, file.p_cost), (ARGON2_M_COST_KIB, ARGON2_T_COST, ARGON2_P_COST));
        let text = file.to_json().unwrap();
        assert!(!text.contains(PASS));
        let back = OperatorKeyFile::from_json(&text).unwrap();
        assert_eq!(back, file);
        let key = open(&back, PASS).unwrap();
        assert_eq!(hex::encode(key.verifying_key().as_bytes()), public_hex);
        let signature = key.sign(b"message");
        assert!(key.verifying_key().verify(b"message", &signature).is_ok());
        // Two keys for one operator are different keys (fresh randomness, salt and nonce).
        let (other, _) = fresh();
        assert_ne!(other.public_key_hex, file.public_key_hex);
        assert_ne!(other.salt_hex, file.salt_hex);
        assert_ne!(other.nonce_hex, file.nonce_hex);
    }

    #[test]
    fn o4_wrong_passphrase_is_a_clear_error() {
        let (file, _) = fresh();
        let got = open(&file, "correct horse battery stapler");
        assert!(matches!(got, Err(OperatorKeyError::Authentication)), "{got:?}");
        let message = got.err().unwrap().to_string();
        assert!(message.contains("wrong passphrase"), "{message}");
    }

    #[test]
    fn m12_short_passphrase_refused_at_generation() {
        let got = generate("admin1", "short");
        assert!(matches!(got, Err(OperatorKeyError::BadPassphrase(_))), "{got:?}");
        assert!(generate("admin one", PASS).is_err(), "whitespace in an operator id");
        assert!(generate("", PASS).is_err());
    }

    #[test]
    fn o4_tampered_public_key_or_operator_id_does_not_open() {
        let (file, _) = fresh();
        // Another operator's (valid) public key in place of this one's: the AAD no longer matches.
        let (other, _) = generate("admin2", PASS).unwrap();
        let mut swapped = file.clone();
        swapped.public_key_hex = other.public_key_hex.clone();
        assert!(matches!(open(&swapped, PASS), Err(OperatorKeyError::Authentication)));
        let mut relabelled = file.clone();
        relabelled.operator_id = "admin2".into();
        assert!(matches!(open(&relabelled, PASS), Err(OperatorKeyError::Authentication)));
        // The ciphertext of another file under this file's labels.
        let mut spliced = file.clone();
        spliced.ciphertext_hex = other.ciphertext_hex.clone();
        spliced.salt_hex = other.salt_hex.clone();
        spliced.nonce_hex = other.nonce_hex.clone();
        assert!(matches!(open(&spliced, PASS), Err(OperatorKeyError::Authentication)));
        let mut flipped = file.clone();
        let mut ct = hex::decode(&flipped.ciphertext_hex).unwrap();
        ct[0] ^= 1;
        flipped.ciphertext_hex = hex::encode(ct);
        assert!(matches!(open(&flipped, PASS), Err(OperatorKeyError::Authentication)));
    }

    #[test]
    fn o4_truncated_or_malformed_files_are_errors_not_panics() {
        let (file, _) = fresh();
        let text = file.to_json().unwrap();
        for cut in [0, 1, text.len() / 3, text.len() / 2, text.len() - 2] {
            let got = OperatorKeyFile::from_json(&text[..cut]);
            assert!(matches!(got, Err(OperatorKeyError::BadFile { field: "json", .. })), "cut {cut}: {got:?}");
        }
        let field_cases: Vec<(&str, Mutation)> = vec![
            ("version", Box::new(|f| f.version = 2)),
            ("operator_id", Box::new(|f| f.operator_id = String::new())),
            ("algorithm", Box::new(|f| f.algorithm = "secp256k1".into())),
            ("public_key_hex", Box::new(|f| f.public_key_hex = "zz".into())),
            ("public_key_hex", Box::new(|f| f.public_key_hex.truncate(10))),
            ("public_key_hex", Box::new(|f| f.public_key_hex = f.public_key_hex.to_uppercase())),
            ("kdf", Box::new(|f| f.kdf = "pbkdf2".into())),
            ("m_cost_kib", Box::new(|f| f.m_cost_kib = 8)),
            ("m_cost_kib", Box::new(|f| f.m_cost_kib = u32::MAX)),
            ("t_cost", Box::new(|f| f.t_cost = 1)),
            ("t_cost", Box::new(|f| f.t_cost = 1_000)),
            ("p_cost", Box::new(|f| f.p_cost = 0)),
            ("salt_hex", Box::new(|f| f.salt_hex = "00".into())),
            ("nonce_hex", Box::new(|f| f.nonce_hex.truncate(46))),
            ("nonce_hex", Box::new(|f| f.nonce_hex = "g".repeat(48))),
            ("ciphertext_hex", Box::new(|f| f.ciphertext_hex.truncate(64))),
        ];
        for (field, mutate) in field_cases {
            let mut bad_file = file.clone();
            mutate(&mut bad_file);
            let got = open(&bad_file, PASS);
            match got {
                Err(OperatorKeyError::BadFile { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: expected BadFile, got {other:?}"),
            }
            let text = serde_json::to_string(&bad_file).unwrap();
            assert!(OperatorKeyFile::from_json(&text).is_err(), "{field}");
        }
        let unknown = text.replacen('{', "{\"extra\": 1,", 1);
        assert!(OperatorKeyFile::from_json(&unknown).is_err());
        assert!(OperatorKeyFile::from_json(&" ".repeat(OPERATOR_KEY_FILE_LEN_MAX as usize + 1)).is_err());
    }

    #[test]
    fn o4_file_is_written_0600_and_never_overwritten() {
        let dir = tempfile_dir();
        let path = dir.join("admin1.key.json");
        let (file, _) = fresh();
        file.write(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        assert!(matches!(file.write(&path), Err(OperatorKeyError::Io { .. })));
        assert_eq!(OperatorKeyFile::read(&path).unwrap(), file);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("kinko-operator-key-{}", hex::encode(rand::random::<[u8; 8]>())));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
