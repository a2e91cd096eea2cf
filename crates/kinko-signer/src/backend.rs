//! Where a secp256k1 signing key lives (K21): in this process ([`SoftwareKey`], unwrapped from the
//! keystore) or in a token ([`crate::pkcs11::Pkcs11Key`]). The [`crate::LocalSigner`] runs the same
//! checks whatever the backend; a backend only turns a 32-byte hash into a low-S `r || s || v`, and the
//! signer verifies that result independently before it leaves.

use bitcoin::secp256k1::PublicKey;
use k256::ecdsa::SigningKey;

use crate::SignerError;

/// A secp256k1 key that signs prehashed messages and never hands out its secret.
pub trait SecpKey: Send + Sync {
    fn public_key(&self) -> PublicKey;

    /// `r(32) || s(32) || y_parity(1)` over `hash`, S normalised to the lower half of the order.
    fn sign_prehash(&self, hash: &[u8; 32]) -> Result<[u8; 65], SignerError>;

    /// Short name for logs and status ("software", "pkcs11").
    fn backend(&self) -> &'static str;

    /// Lower-case 0x Ethereum address.
    fn address(&self) -> String {
        kinko_keys::hd::evm_address(&self.public_key())
    }
}

/// An unwrapped key in this process's memory. `SigningKey` zeroizes its scalar on drop.
pub struct SoftwareKey {
    signing: SigningKey,
    public: PublicKey,
}

impl SoftwareKey {
    pub fn from_secret(secret: &[u8; 32]) -> Result<Self, SignerError> {
        let signing = SigningKey::from_slice(&secret[..])
            .map_err(|_| SignerError::Malformed("not a valid secp256k1 secret".into()))?;
        let point = signing.verifying_key().to_encoded_point(false);
        let public = PublicKey::from_slice(point.as_bytes())
            .map_err(|_| SignerError::Internal("public key does not parse in secp256k1".into()))?;
        Ok(SoftwareKey { signing, public })
    }
}

impl SecpKey for SoftwareKey {
    fn public_key(&self) -> PublicKey {
        self.public
    }

    fn backend(&self) -> &'static str {
        "software"
    }

    /// RFC 6979, so the same hash always gives the same signature.
    fn sign_prehash(&self, hash: &[u8; 32]) -> Result<[u8; 65], SignerError> {
        let (sig, recid) = self
            .signing
            .sign_prehash_recoverable(hash)
            .map_err(|_| SignerError::Internal("k256 signing failed".into()))?;
        // Negating S mirrors R's y coordinate, so the recovery parity flips with it.
        let (sig, y_odd) = match sig.normalize_s() {
            Some(low) => (low, !recid.is_y_odd()),
            None => (sig, recid.is_y_odd()),
        };
        let mut out = [0u8; 65];
        out[..64].copy_from_slice(&sig.to_bytes());
        out[64] = u8::from(y_odd);
        Ok(out)
    }
}
