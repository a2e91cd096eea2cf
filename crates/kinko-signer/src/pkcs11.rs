//! PKCS#11 key backend (K21, K9, K3): secp256k1 keys generated inside a token, never extractable, used
//! through `CKM_ECDSA` on the 32-byte signing hash. Tested on SoftHSM2; nothing here is SoftHSM-specific.
//!
//! Activation is the token login: [`Pkcs11Token::open`] logs in with the user PIN, and the keys it hands
//! out sign only while that token (its logged-in session) lives. Dropping the token closes the session,
//! which logs out.
//!
//! Tokens return the raw `r || s` of a plain ECDSA signature, high-S about half the time and with no
//! recovery id. [`Pkcs11Key`] normalises S (Ethereum rejects high-S since EIP-2) and finds the recovery
//! id by recovering both candidates with libsecp256k1 and keeping the one that yields the key's own
//! public key.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use bitcoin::secp256k1::ecdsa::{RecoverableSignature, RecoveryId, Signature as SecpSignature};
use bitcoin::secp256k1::{Message, PublicKey, Secp256k1, VerifyOnly};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeInfo, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use secrecy::SecretString;

use crate::SignerError;
use crate::backend::SecpKey;

/// DER of the secp256k1 curve OID 1.3.132.0.10, the `CKA_EC_PARAMS` of every key this backend makes or
/// accepts.
pub const SECP256K1_EC_PARAMS: [u8; 7] = [0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a];
/// Longest key id accepted: it becomes `CKA_LABEL` and `CKA_ID`, which tokens store in small fields.
pub const KEY_ID_LEN_MAX: usize = 64;
/// Bound on the objects one key id may match; more than one private key per id is already an error.
const FIND_OBJECTS_MAX: usize = 4;
/// Length of an uncompressed SEC1 point: `04 || x || y`.
const UNCOMPRESSED_POINT_LEN: usize = 65;

#[derive(Debug, thiserror::Error)]
pub enum Pkcs11Error {
    #[error("pkcs11 module {path:?} cannot be loaded: {reason}")]
    Module { path: PathBuf, reason: String },
    #[error("pkcs11 token {0:?} not found in any slot")]
    TokenNotFound(String),
    /// The PIN itself is never part of any error.
    #[error("pkcs11 token {label:?}: login failed: {reason}")]
    Login { label: String, reason: String },
    #[error("pkcs11 key id {0:?} is invalid: must be 1 to {KEY_ID_LEN_MAX} bytes")]
    BadKeyId(String),
    #[error("pkcs11 key {0:?} already exists in the token")]
    KeyExists(String),
    #[error("pkcs11 key {0:?} not found in the token")]
    KeyNotFound(String),
    #[error("pkcs11 key {key_id:?}: {reason}")]
    BadKey { key_id: String, reason: String },
    #[error("pkcs11 {call}: {reason}")]
    Device { call: &'static str, reason: String },
}

impl From<Pkcs11Error> for SignerError {
    fn from(e: Pkcs11Error) -> Self {
        match e {
            Pkcs11Error::KeyNotFound(id) => SignerError::UnknownKey(id),
            other => SignerError::Internal(other.to_string()),
        }
    }
}

/// Short form of a cryptoki error: the function and the return value's name, not the spec's paragraph.
fn describe(e: &CkError) -> String {
    match e {
        CkError::Pkcs11(rv, function) => format!("{function:?} returned {rv:?}"),
        other => other.to_string(),
    }
}

fn device(call: &'static str) -> impl Fn(CkError) -> Pkcs11Error {
    move |e| Pkcs11Error::Device { call, reason: describe(&e) }
}

/// One initialised context per module path and process. `C_Initialize` may run only once per process
/// (a second gives CKR_CRYPTOKI_ALREADY_INITIALIZED) and `C_Finalize` would pull the library from under
/// every other token opened from it, so contexts are kept for the life of the process.
fn modules() -> &'static Mutex<HashMap<PathBuf, Pkcs11>> {
    static MODULES: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    MODULES.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The process-wide, initialised context of a PKCS#11 module.
pub fn module(path: &Path) -> Result<Pkcs11, Pkcs11Error> {
    let load_err = |reason: String| Pkcs11Error::Module { path: path.to_path_buf(), reason };
    let mut map = modules().lock().map_err(|_| load_err("module registry lock poisoned".into()))?;
    if let Some(ctx) = map.get(path) {
        return Ok(ctx.clone());
    }
    if !path.exists() {
        return Err(load_err("no such file".into()));
    }
    let ctx = Pkcs11::new(path).map_err(|e| load_err(describe(&e)))?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        // Another library in this process (or another path to the same file) initialised it already.
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(load_err(describe(&e))),
    }
    map.insert(path.to_path_buf(), ctx.clone());
    Ok(ctx)
}

/// The slot whose initialised token carries `label`.
pub fn find_token_slot(ctx: &Pkcs11, label: &str) -> Result<Slot, Pkcs11Error> {
    let slots = ctx.get_slots_with_initialized_token().map_err(device("C_GetSlotList"))?;
    for slot in slots {
        let info = ctx.get_token_info(slot).map_err(device("C_GetTokenInfo"))?;
        if info.label() == label {
            return Ok(slot);
        }
    }
    Err(Pkcs11Error::TokenNotFound(label.to_string()))
}

struct TokenInner {
    label: String,
    /// `Session` is `Send` but not `Sync`: one call at a time, which is also what tokens expect of a
    /// session.
    session: Mutex<Session>,
    secp: Secp256k1<VerifyOnly>,
}

/// A logged-in (activated) token. Cloning shares the session.
#[derive(Clone)]
pub struct Pkcs11Token {
    inner: Arc<TokenInner>,
}

impl std::fmt::Debug for Pkcs11Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Token").field("label", &self.inner.label).finish_non_exhaustive()
    }
}

fn check_key_id(key_id: &str) -> Result<(), Pkcs11Error> {
    if key_id.is_empty() || key_id.len() > KEY_ID_LEN_MAX {
        return Err(Pkcs11Error::BadKeyId(key_id.to_string()));
    }
    Ok(())
}

/// The uncompressed point inside `CKA_EC_POINT`. The standard says a DER OCTET STRING (`04 41 04 …`);
/// some tokens return the bare point, which is accepted too. The point is then checked to be on the
/// curve by libsecp256k1.
fn parse_ec_point(key_id: &str, bytes: &[u8]) -> Result<PublicKey, Pkcs11Error> {
    let bad = |reason: &str| Pkcs11Error::BadKey { key_id: key_id.to_string(), reason: reason.to_string() };
    let point = match bytes {
        // DER OCTET STRING, short-form length 0x41 = 65.
        [0x04, len, rest @ ..]
            if usize::from(*len) == UNCOMPRESSED_POINT_LEN && rest.len() == UNCOMPRESSED_POINT_LEN =>
        {
            rest
        }
        [0x04, ..] if bytes.len() == UNCOMPRESSED_POINT_LEN => bytes,
        _ => return Err(bad("CKA_EC_POINT is not an uncompressed secp256k1 point")),
    };
    PublicKey::from_slice(point).map_err(|_| bad("CKA_EC_POINT is not a point on secp256k1"))
}

impl Pkcs11Token {
    /// Loads `module_path`, finds the token labelled `token_label` and logs in as the user (activation,
    /// K3). A wrong PIN fails here.
    pub fn open(module_path: &Path, token_label: &str, pin: &SecretString) -> Result<Self, Pkcs11Error> {
        let ctx = module(module_path)?;
        let slot = find_token_slot(&ctx, token_label)?;
        let session = ctx.open_rw_session(slot).map_err(device("C_OpenSession"))?;
        let login = |reason: String| Pkcs11Error::Login { label: token_label.to_string(), reason };
        match session.login(UserType::User, Some(pin)) {
            Ok(()) => {}
            // Login state is per application and token: someone in this process already activated it
            // with some PIN. Accepting that would let any PIN through, so refuse.
            Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {
                return Err(login("the token is already logged in by this process; share that Pkcs11Token".into()));
            }
            Err(CkError::Pkcs11(rv @ (RvError::PinIncorrect | RvError::PinLenRange | RvError::PinLocked), _)) => {
                return Err(login(format!("{rv:?}")));
            }
            Err(e) => return Err(login(describe(&e))),
        }
        Ok(Pkcs11Token {
            inner: Arc::new(TokenInner {
                label: token_label.to_string(),
                session: Mutex::new(session),
                secp: Secp256k1::verification_only(),
            }),
        })
    }

    pub fn label(&self) -> &str {
        &self.inner.label
    }

    fn session(&self) -> Result<std::sync::MutexGuard<'_, Session>, Pkcs11Error> {
        self.inner
            .session
            .lock()
            .map_err(|_| Pkcs11Error::Device { call: "session", reason: "session lock poisoned".into() })
    }

    fn find(session: &Session, key_id: &str, class: ObjectClass) -> Result<Option<ObjectHandle>, Pkcs11Error> {
        let template =
            [Attribute::Class(class), Attribute::KeyType(KeyType::EC), Attribute::Id(key_id.as_bytes().to_vec())];
        let mut found = Vec::new();
        for handle in session.iter_objects(&template).map_err(device("C_FindObjectsInit"))? {
            found.push(handle.map_err(device("C_FindObjects"))?);
            if found.len() >= FIND_OBJECTS_MAX {
                break;
            }
        }
        match found.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some(*one)),
            _ => Err(Pkcs11Error::BadKey {
                key_id: key_id.to_string(),
                reason: "more than one object has this id".into(),
            }),
        }
    }

    /// Generates a secp256k1 key pair inside the token (K9: the token's RNG, K21: never extractable),
    /// stored on the token under `key_id` (as `CKA_LABEL` and `CKA_ID`). Refuses a used id.
    pub fn generate_secp256k1(&self, key_id: &str) -> Result<Pkcs11Key, Pkcs11Error> {
        check_key_id(key_id)?;
        {
            let session = self.session()?;
            if Self::find(&session, key_id, ObjectClass::PRIVATE_KEY)?.is_some()
                || Self::find(&session, key_id, ObjectClass::PUBLIC_KEY)?.is_some()
            {
                return Err(Pkcs11Error::KeyExists(key_id.to_string()));
            }
            let id = key_id.as_bytes().to_vec();
            let public = [
                Attribute::Token(true),
                Attribute::Private(false),
                Attribute::Verify(true),
                Attribute::EcParams(SECP256K1_EC_PARAMS.to_vec()),
                Attribute::Label(id.clone()),
                Attribute::Id(id.clone()),
            ];
            let private = [
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Sign(true),
                Attribute::Label(id.clone()),
                Attribute::Id(id),
            ];
            session
                .generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private)
                .map_err(device("C_GenerateKeyPair"))?;
        }
        self.find_key(key_id)
    }

    /// The key stored under `key_id`. Refuses keys that are not secp256k1, not sensitive or extractable:
    /// a key that could have left the token is not one this backend vouches for.
    pub fn find_key(&self, key_id: &str) -> Result<Pkcs11Key, Pkcs11Error> {
        check_key_id(key_id)?;
        let session = self.session()?;
        let bad = |reason: &str| Pkcs11Error::BadKey { key_id: key_id.to_string(), reason: reason.to_string() };
        let private = Self::find(&session, key_id, ObjectClass::PRIVATE_KEY)?
            .ok_or_else(|| Pkcs11Error::KeyNotFound(key_id.to_string()))?;
        let public_handle = Self::find(&session, key_id, ObjectClass::PUBLIC_KEY)?
            .ok_or_else(|| bad("the public key object is missing"))?;

        let attrs = session
            .get_attributes(
                private,
                &[AttributeType::EcParams, AttributeType::Sensitive, AttributeType::Extractable, AttributeType::Sign],
            )
            .map_err(device("C_GetAttributeValue"))?;
        let (mut params, mut sensitive, mut extractable, mut can_sign) = (None, None, None, None);
        for a in attrs {
            match a {
                Attribute::EcParams(p) => params = Some(p),
                Attribute::Sensitive(v) => sensitive = Some(v),
                Attribute::Extractable(v) => extractable = Some(v),
                Attribute::Sign(v) => can_sign = Some(v),
                _ => {}
            }
        }
        if params.as_deref() != Some(&SECP256K1_EC_PARAMS[..]) {
            return Err(bad("not a secp256k1 key"));
        }
        if sensitive != Some(true) || extractable != Some(false) {
            return Err(bad("the private key is extractable or not sensitive"));
        }
        if can_sign != Some(true) {
            return Err(bad("the private key may not sign"));
        }

        let point = session
            .get_attributes(public_handle, &[AttributeType::EcPoint])
            .map_err(device("C_GetAttributeValue"))?
            .into_iter()
            .find_map(|a| match a {
                Attribute::EcPoint(p) => Some(p),
                _ => None,
            })
            .ok_or_else(|| bad("the public key has no CKA_EC_POINT"))?;
        let public = parse_ec_point(key_id, &point)?;
        Ok(Pkcs11Key { token: self.clone(), key_id: key_id.to_string(), private, public })
    }
}

/// What the token says about a private key's protection, for audits and tests (K21). Reading it never
/// reveals key material: `value_readable` is whether the token *would* return `CKA_VALUE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyProtection {
    pub sensitive: bool,
    pub extractable: bool,
    pub always_sensitive: bool,
    pub never_extractable: bool,
    pub value_readable: bool,
}

/// A secp256k1 private key held in a token. Holds only the object handle and the public key.
#[derive(Clone)]
pub struct Pkcs11Key {
    token: Pkcs11Token,
    key_id: String,
    private: ObjectHandle,
    public: PublicKey,
}

impl std::fmt::Debug for Pkcs11Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Key")
            .field("token", &self.token.inner.label)
            .field("key_id", &self.key_id)
            .field("address", &kinko_keys::hd::evm_address(&self.public))
            .finish_non_exhaustive()
    }
}

impl Pkcs11Key {
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Lower-case 0x Ethereum address of the key.
    pub fn evm_address(&self) -> String {
        kinko_keys::hd::evm_address(&self.public)
    }

    pub fn protection(&self) -> Result<KeyProtection, Pkcs11Error> {
        let session = self.token.session()?;
        let value =
            session.get_attribute_info(self.private, &[AttributeType::Value]).map_err(device("C_GetAttributeValue"))?;
        let value_readable = matches!(value.first(), Some(AttributeInfo::Available(_)));
        let attrs = session
            .get_attributes(
                self.private,
                &[
                    AttributeType::Sensitive,
                    AttributeType::Extractable,
                    AttributeType::AlwaysSensitive,
                    AttributeType::NeverExtractable,
                ],
            )
            .map_err(device("C_GetAttributeValue"))?;
        // Absent attributes count as the unsafe answer.
        let mut p = KeyProtection {
            sensitive: false,
            extractable: true,
            always_sensitive: false,
            never_extractable: false,
            value_readable,
        };
        for a in attrs {
            match a {
                Attribute::Sensitive(v) => p.sensitive = v,
                Attribute::Extractable(v) => p.extractable = v,
                Attribute::AlwaysSensitive(v) => p.always_sensitive = v,
                Attribute::NeverExtractable(v) => p.never_extractable = v,
                _ => {}
            }
        }
        Ok(p)
    }

    /// Plain ECDSA over the 32-byte hash in the token: `r || s` as the token returns it (S may be high).
    fn sign_raw(&self, hash: &[u8; 32]) -> Result<[u8; 64], Pkcs11Error> {
        let session = self.token.session()?;
        let raw = session.sign(&Mechanism::Ecdsa, self.private, hash).map_err(device("C_Sign"))?;
        raw.as_slice().try_into().map_err(|_| Pkcs11Error::Device {
            call: "C_Sign",
            reason: format!("signature is {} bytes, expected 64 (r || s)", raw.len()),
        })
    }
}

impl SecpKey for Pkcs11Key {
    fn public_key(&self) -> PublicKey {
        self.public
    }

    fn backend(&self) -> &'static str {
        "pkcs11"
    }

    fn sign_prehash(&self, hash: &[u8; 32]) -> Result<[u8; 65], SignerError> {
        let raw = self.sign_raw(hash)?;
        let mut sig = SecpSignature::from_compact(&raw)
            .map_err(|_| SignerError::Internal("pkcs11 signature does not parse as secp256k1 r || s".into()))?;
        sig.normalize_s();
        let compact = sig.serialize_compact();
        let msg = Message::from_digest(*hash);
        for parity in 0..=1u8 {
            let recid =
                RecoveryId::from_i32(i32::from(parity)).map_err(|_| SignerError::Internal("bad recovery id".into()))?;
            let Ok(recoverable) = RecoverableSignature::from_compact(&compact, recid) else { continue };
            if self.token.inner.secp.recover_ecdsa(&msg, &recoverable).is_ok_and(|pk| pk == self.public) {
                let mut out = [0u8; 65];
                out[..64].copy_from_slice(&compact);
                out[64] = parity;
                return Ok(out);
            }
        }
        Err(SignerError::Internal(format!("pkcs11 signature of key {:?} recovers to neither parity", self.key_id)))
    }
}

/// What `keys.wrapped` holds for a key that lives in a token: this prefix and a [`TokenKeyRef`] as JSON.
/// It names the token and the key and holds no secret; it is never hex, so nothing takes it for a blob.
pub const TOKEN_MARKER_PREFIX: &str = "pkcs11:";
/// What `keys.kek_id` holds for a key that lives in a token: no KEK wraps it, so KEK rotation passes it by.
pub const TOKEN_KEK_ID: &str = "pkcs11-token";

/// Where a token-held key is: the token's label and the key's id in it (`CKA_ID`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenKeyRef {
    pub token_label: String,
    pub key_id: String,
}

impl TokenKeyRef {
    /// The `keys.wrapped` marker for this key.
    pub fn marker(&self) -> String {
        let json = serde_json::json!({ "token_label": self.token_label, "key_id": self.key_id });
        format!("{TOKEN_MARKER_PREFIX}{json}")
    }

    /// `None` when `wrapped` is not a token marker (a wrapped blob); an error when it is one but garbled.
    pub fn from_marker(wrapped: &str) -> Result<Option<TokenKeyRef>, Pkcs11Error> {
        let Some(json) = wrapped.strip_prefix(TOKEN_MARKER_PREFIX) else { return Ok(None) };
        let r: TokenKeyRef = serde_json::from_str(json).map_err(|e| Pkcs11Error::BadKey {
            key_id: String::new(),
            reason: format!("stored token marker does not parse: {e}"),
        })?;
        check_key_id(&r.key_id)?;
        Ok(Some(r))
    }
}

/// How to activate a token: its module, its label and the user PIN. `Debug` never shows the PIN.
#[derive(Debug)]
pub struct Pkcs11Login {
    pub module_path: PathBuf,
    pub token_label: String,
    pub pin: SecretString,
}

impl Pkcs11Login {
    /// Logs in (activation, K3).
    pub fn open(&self) -> Result<Pkcs11Token, Pkcs11Error> {
        Pkcs11Token::open(&self.module_path, &self.token_label, &self.pin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn k21_ec_point_accepts_der_wrapped_and_bare_points_only() {
        let secp = Secp256k1::new();
        let sk = bitcoin::secp256k1::SecretKey::from_slice(&[7u8; 32]).unwrap();
        let pk = PublicKey::from_secret_key(&secp, &sk);
        let bare = pk.serialize_uncompressed();
        let mut der = vec![0x04, 0x41];
        der.extend_from_slice(&bare);
        assert_eq!(parse_ec_point("k", &der).unwrap(), pk);
        assert_eq!(parse_ec_point("k", &bare).unwrap(), pk);
        assert!(parse_ec_point("k", &der[..66]).is_err(), "truncated");
        assert!(parse_ec_point("k", &pk.serialize()).is_err(), "compressed");
        let mut off_curve = der.clone();
        off_curve[66] ^= 1;
        assert!(parse_ec_point("k", &off_curve).is_err(), "not on the curve");
        assert!(parse_ec_point("k", &[]).is_err());
    }

    #[test]
    fn k21_token_marker_round_trips_and_is_never_a_blob() {
        let r = TokenKeyRef { token_label: "kinko".into(), key_id: "eth-hot-1".into() };
        let m = r.marker();
        assert!(m.starts_with(TOKEN_MARKER_PREFIX) && hex::decode(&m).is_err(), "{m}");
        assert_eq!(TokenKeyRef::from_marker(&m).unwrap(), Some(r));
        assert_eq!(TokenKeyRef::from_marker("00ff").unwrap(), None);
        assert!(TokenKeyRef::from_marker("pkcs11:{").is_err());
        assert!(TokenKeyRef::from_marker(r#"pkcs11:{"token_label":"t","key_id":""}"#).is_err());
    }

    #[test]
    fn k21_missing_module_is_a_clear_error() {
        let err = module(Path::new("/nonexistent/libpkcs11.so")).unwrap_err();
        assert!(err.to_string().contains("cannot be loaded"), "{err}");
    }
}
