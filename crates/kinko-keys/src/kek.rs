//! The key-encryption key (KEK) and AEAD wrapping of secrets at rest (K1, K9).
//!
//! A wrapped blob is `version (1) || nonce (24) || ciphertext+tag`, sealed with XChaCha20-Poly1305. The
//! nonce is random: XChaCha's 192-bit nonce makes random nonces safe for any number of wraps under one
//! KEK, so no nonce counter has to be persisted. The key id and purpose are associated data, so a blob
//! copied onto another key's row (or re-labelled to another purpose) fails to unwrap instead of silently
//! handing out the wrong key.

use std::fs;
use std::io::Write;
use std::path::Path;

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

pub const KEK_LEN: usize = 32;
/// Format version of wrapped blobs; part of the associated data too, so a blob cannot be downgraded.
pub const WRAP_VERSION: u8 = 1;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// Bound on the length of key ids and purposes, so the associated data stays small and unambiguous.
pub const LABEL_LEN_MAX: usize = 256;

/// Printed by whoever calls [`dev_kek`]: a KEK in a file next to the data is for development only.
pub const DEV_KEK_WARNING: &str = "DEV MODE: the KEK is a plain file next to the database; anyone who can read the \
data directory can unwrap every key. Never use dev mode with real funds.";

#[derive(Debug, thiserror::Error)]
pub enum KekError {
    #[error("wrapped blob is malformed: {0}")]
    Malformed(&'static str),
    #[error("wrapped blob has unsupported version {0}")]
    UnsupportedVersion(u8),
    /// Wrong KEK, wrong key id or purpose, or a tampered blob: AEAD cannot tell which, on purpose.
    #[error("wrapped blob does not authenticate under this KEK, key id and purpose")]
    Authentication,
    #[error("{field} is longer than {LABEL_LEN_MAX} bytes")]
    LabelTooLong { field: &'static str },
    #[error("KEK must be {KEK_LEN} bytes, got {0}")]
    BadLength(usize),
    #[error("dev KEK file {path}: {reason}")]
    DevFile { path: String, reason: String },
}

/// The key-encryption key. Zeroized on drop; `Debug` shows nothing of it.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct Kek([u8; KEK_LEN]);

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kek(..)")
    }
}

impl Kek {
    /// A fresh KEK from the operating system's CSPRNG (K9).
    pub fn generate() -> Kek {
        let mut k = Kek([0u8; KEK_LEN]);
        OsRng.fill_bytes(&mut k.0);
        k
    }

    /// Takes a KEK from bytes (e.g. reconstructed from custodian shares); the caller zeroizes its copy.
    pub fn from_bytes(bytes: &[u8]) -> Result<Kek, KekError> {
        let arr: [u8; KEK_LEN] = bytes.try_into().map_err(|_| KekError::BadLength(bytes.len()))?;
        Ok(Kek(arr))
    }

    /// A short, non-secret identifier of this KEK (key check value): lets an operator or a rotation job
    /// tell which KEK wrapped a blob without revealing anything about the key.
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"kinko-kek-fingerprint-v1");
        h.update(self.0);
        hex::encode(&h.finalize()[..8])
    }

    /// Reveals the raw bytes, for splitting into custodian shares. Keep the borrow short.
    pub fn expose_bytes(&self) -> &[u8; KEK_LEN] {
        &self.0
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new((&self.0).into())
    }

    /// Wraps `plaintext` for the key `key_id` with purpose `purpose`.
    pub fn wrap(&self, key_id: &str, purpose: &str, plaintext: &[u8]) -> Result<Vec<u8>, KekError> {
        let aad = associated_data(key_id, purpose)?;
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let ciphertext = self
            .cipher()
            .encrypt(&nonce, Payload { msg: plaintext, aad: &aad })
            // Encryption only fails for plaintexts beyond the cipher's ~256 GiB limit.
            .map_err(|_| KekError::Malformed("plaintext too long to wrap"))?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + ciphertext.len());
        out.push(WRAP_VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        Ok(out)
    }

    /// Unwraps a blob made by [`Kek::wrap`] with the same key id and purpose.
    pub fn unwrap(&self, key_id: &str, purpose: &str, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, KekError> {
        let (&version, rest) = blob.split_first().ok_or(KekError::Malformed("empty"))?;
        if version != WRAP_VERSION {
            return Err(KekError::UnsupportedVersion(version));
        }
        if rest.len() < NONCE_LEN + TAG_LEN {
            return Err(KekError::Malformed("shorter than nonce and tag"));
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let aad = associated_data(key_id, purpose)?;
        let plaintext = self
            .cipher()
            .decrypt(XNonce::from_slice(nonce), Payload { msg: ciphertext, aad: &aad })
            .map_err(|_| KekError::Authentication)?;
        Ok(Zeroizing::new(plaintext))
    }
}

/// Length-prefixed labels, so ("ab", "c") and ("a", "bc") are different associated data.
fn associated_data(key_id: &str, purpose: &str) -> Result<Vec<u8>, KekError> {
    let mut aad = Vec::with_capacity(32 + key_id.len() + purpose.len());
    aad.extend_from_slice(b"kinko-kek-wrap");
    aad.push(WRAP_VERSION);
    for (field, s) in [("key id", key_id), ("purpose", purpose)] {
        if s.len() > LABEL_LEN_MAX {
            return Err(KekError::LabelTooLong { field });
        }
        aad.extend_from_slice(&(s.len() as u32).to_be_bytes());
        aad.extend_from_slice(s.as_bytes());
    }
    Ok(aad)
}

/// DEV MODE ONLY: loads the KEK from `path`, creating it (mode 0600) when missing. The caller must print
/// [`DEV_KEK_WARNING`] loudly. An existing file is never overwritten: that would orphan every key it
/// wrapped. A file readable by group or others is refused.
pub fn dev_kek(path: &Path) -> Result<Kek, KekError> {
    let err = |reason: String| KekError::DevFile { path: path.display().to_string(), reason };
    match fs::read(path) {
        Ok(bytes) => {
            let bytes = Zeroizing::new(bytes);
            check_private(path).map_err(err)?;
            Kek::from_bytes(&bytes).map_err(|e| err(e.to_string()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let kek = Kek::generate();
            let mut options = fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                options.mode(0o600);
            }
            let mut file = options.open(path).map_err(|e| err(format!("create: {e}")))?;
            file.write_all(&kek.0).map_err(|e| err(format!("write: {e}")))?;
            file.sync_all().map_err(|e| err(format!("sync: {e}")))?;
            Ok(kek)
        }
        Err(e) => Err(err(format!("read: {e}"))),
    }
}

#[cfg(unix)]
fn check_private(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(path).map_err(|e| format!("stat: {e}"))?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(format!("mode {:o} lets group or others read it; chmod 600", mode & 0o777));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_path: &Path) -> Result<(), String> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn k1_wrap_unwrap_round_trip() {
        let kek = Kek::generate();
        let blob = kek.wrap("hot-1", "evm-hot-wallet", b"secret key bytes").unwrap();
        assert_eq!(blob[0], WRAP_VERSION);
        assert_eq!(&kek.unwrap("hot-1", "evm-hot-wallet", &blob).unwrap()[..], b"secret key bytes");
        // Random nonces: wrapping twice gives different blobs.
        assert_ne!(blob, kek.wrap("hot-1", "evm-hot-wallet", b"secret key bytes").unwrap());
    }

    #[test]
    fn k1_tampered_blob_fails() {
        let kek = Kek::generate();
        let blob = kek.wrap("hot-1", "evm-hot-wallet", b"secret").unwrap();
        for i in 1..blob.len() {
            let mut bad = blob.clone();
            bad[i] ^= 0x01;
            assert!(matches!(kek.unwrap("hot-1", "evm-hot-wallet", &bad), Err(KekError::Authentication)), "byte {i}");
        }
        let mut bad = blob.clone();
        bad[0] = 9;
        assert!(matches!(kek.unwrap("hot-1", "evm-hot-wallet", &bad), Err(KekError::UnsupportedVersion(9))));
        assert!(matches!(kek.unwrap("hot-1", "evm-hot-wallet", &blob[..20]), Err(KekError::Malformed(_))));
        assert!(matches!(kek.unwrap("hot-1", "evm-hot-wallet", &[]), Err(KekError::Malformed(_))));
    }

    #[test]
    fn k1_blob_moved_to_another_key_id_or_purpose_or_kek_fails() {
        let kek = Kek::generate();
        let blob = kek.wrap("hot-1", "evm-hot-wallet", b"secret").unwrap();
        assert!(matches!(kek.unwrap("hot-2", "evm-hot-wallet", &blob), Err(KekError::Authentication)));
        assert!(matches!(kek.unwrap("hot-1", "master-seed", &blob), Err(KekError::Authentication)));
        // Length prefixes: shifting a character between the labels changes the associated data.
        let blob = kek.wrap("ab", "c", b"secret").unwrap();
        assert!(matches!(kek.unwrap("a", "bc", &blob), Err(KekError::Authentication)));
        assert!(matches!(Kek::generate().unwrap("ab", "c", &blob), Err(KekError::Authentication)));
    }

    #[test]
    fn k1_from_bytes_checks_length_and_fingerprint_is_stable() {
        assert!(matches!(Kek::from_bytes(&[1u8; 31]), Err(KekError::BadLength(31))));
        let a = Kek::from_bytes(&[7u8; 32]).unwrap();
        let b = Kek::from_bytes(&[7u8; 32]).unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), Kek::generate().fingerprint());
        let blob = a.wrap("k", "p", b"x").unwrap();
        assert_eq!(&b.unwrap("k", "p", &blob).unwrap()[..], b"x");
    }

    #[test]
    fn k1_debug_shows_no_key_material() {
        let kek = Kek::from_bytes(&[0xab; 32]).unwrap();
        let shown = format!("{kek:?} {kek:#?}");
        assert!(!shown.contains("ab"), "{shown}");
        assert!(!shown.contains("171"), "{shown}");
    }

    #[test]
    fn k9_dev_kek_is_created_private_and_reloaded() {
        let dir =
            std::env::temp_dir().join(format!("kinko-kek-test-{}-{}", std::process::id(), hex::encode(rand_id())));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("dev.kek");
        let first = dev_kek(&path).unwrap();
        let second = dev_kek(&path).unwrap();
        assert_eq!(first.fingerprint(), second.fingerprint());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
            fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
            assert!(matches!(dev_kek(&path), Err(KekError::DevFile { .. })));
        }
        fs::write(&path, b"short").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        }
        assert!(matches!(dev_kek(&path), Err(KekError::DevFile { .. })));
        fs::remove_dir_all(&dir).unwrap();
    }

    fn rand_id() -> [u8; 8] {
        let mut b = [0u8; 8];
        OsRng.fill_bytes(&mut b);
        b
    }
}
