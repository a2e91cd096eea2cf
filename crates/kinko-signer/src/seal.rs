//! The seal (K3, K16): the signer starts sealed, with no KEK and no key in memory. K shares from K
//! different custodians reconstruct the master key (MK); its fingerprint is checked against the seal
//! config; the MK unwraps the active KEK; the KEK unwraps the signer's keys. Sealing drops (and so
//! zeroizes) all of it. Dev mode goes through exactly this path with a 1-of-1 dev share.

use std::collections::BTreeMap;
use std::sync::Arc;

use kinko_keys::kek::Kek;
use kinko_keys::shares::{self, MasterKey, RawShare, SealConfig};
use kinko_store::Store;
use serde::Serialize;

use crate::journal::SignerJournal;
use crate::{LocalSigner, SignerError};

/// Key id and purpose under which the MK wraps a KEK (associated data of the wrap).
pub const KEK_WRAP_PURPOSE: &str = "kek";

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("no seal configuration: run `kinko init` first")]
    NotInitialised,
    #[error("the signer is already unsealed")]
    AlreadyUnsealed,
    #[error("no custodian named {0:?} in the seal configuration")]
    UnknownCustodian(String),
    /// The share's sha256 differs from the commitment recorded for this custodian: a wrong or corrupted share.
    #[error("share of custodian {0:?} does not match its commitment (wrong or corrupted share)")]
    WrongShare(String),
    #[error("combined master key does not match the recorded fingerprint; collected shares were discarded")]
    FingerprintMismatch,
    #[error("share: {0}")]
    Share(#[from] shares::ShareError),
    #[error("seal configuration: {0}")]
    Config(String),
    #[error("store: {0}")]
    Store(#[from] kinko_store::StoreError),
    #[error("unwrapping {what}: {reason}")]
    Unwrap { what: String, reason: String },
    #[error("signer: {0}")]
    Signer(#[from] SignerError),
}

impl SealError {
    /// Stable machine-readable kind, for the socket protocol.
    pub fn kind(&self) -> &'static str {
        match self {
            SealError::NotInitialised => "not_initialised",
            SealError::AlreadyUnsealed => "already_unsealed",
            SealError::UnknownCustodian(_) => "unknown_custodian",
            SealError::WrongShare(_) => "wrong_share",
            SealError::FingerprintMismatch => "fingerprint_mismatch",
            SealError::Share(_) => "bad_share",
            SealError::Config(_) => "bad_seal_config",
            SealError::Store(_) => "store",
            SealError::Unwrap { .. } => "unwrap",
            SealError::Signer(_) => "signer",
        }
    }
}

/// What the signer shows about its seal: never anything secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct SealStatus {
    pub sealed: bool,
    pub have: usize,
    pub need: usize,
    /// Every custodian of the seal, by name.
    pub custodians: Vec<String>,
    /// Custodians whose share has been accepted since the last seal (while collecting).
    pub submitted: Vec<String>,
}

/// What a submitted share did.
#[derive(Debug)]
pub enum SubmitOutcome {
    /// Still sealed; `duplicate` when this custodian had already submitted (counted once).
    Collecting { have: usize, need: usize, duplicate: bool },
    /// The K-th distinct share: the checked master key. The caller unwraps with it and drops it.
    Unsealed(MasterKey),
}

/// sealed → collecting(have, need) → unsealed → (seal) → sealed.
pub struct SealState {
    config: SealConfig,
    collected: BTreeMap<String, RawShare>,
    unsealed: bool,
}

impl std::fmt::Debug for SealState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealState")
            .field("unsealed", &self.unsealed)
            .field("collected", &self.collected.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl SealState {
    pub fn new(config: SealConfig) -> Result<SealState, SealError> {
        if config.threshold == 0 || config.threshold > config.custodians.len() {
            return Err(SealError::Config("threshold must be between 1 and the number of custodians".into()));
        }
        Ok(SealState { config, collected: BTreeMap::new(), unsealed: false })
    }

    /// Loads the seal configuration from the store.
    pub async fn load(store: &Store) -> Result<SealState, SealError> {
        let json = store.seal_config_json().await?.ok_or(SealError::NotInitialised)?;
        let config: SealConfig = serde_json::from_str(&json).map_err(|e| SealError::Config(e.to_string()))?;
        SealState::new(config)
    }

    pub fn config(&self) -> &SealConfig {
        &self.config
    }

    pub fn is_sealed(&self) -> bool {
        !self.unsealed
    }

    pub fn status(&self) -> SealStatus {
        SealStatus {
            sealed: !self.unsealed,
            have: if self.unsealed { self.config.threshold } else { self.collected.len() },
            need: self.config.threshold,
            custodians: self.config.custodians.iter().map(|c| c.name.clone()).collect(),
            submitted: self.collected.keys().cloned().collect(),
        }
    }

    /// Takes one custodian's share. A share that does not match its custodian's commitment is rejected
    /// before it is kept; the same custodian counts once; the K-th distinct share combines.
    pub fn submit(&mut self, share: RawShare) -> Result<SubmitOutcome, SealError> {
        if self.unsealed {
            return Err(SealError::AlreadyUnsealed);
        }
        let commitment = self
            .config
            .custodian(&share.custodian)
            .ok_or_else(|| SealError::UnknownCustodian(share.custodian.clone()))?;
        if commitment.index != share.index || share.sha256_hex() != commitment.share_sha256 {
            return Err(SealError::WrongShare(share.custodian.clone()));
        }
        let need = self.config.threshold;
        if self.collected.contains_key(&share.custodian) {
            return Ok(SubmitOutcome::Collecting { have: self.collected.len(), need, duplicate: true });
        }
        self.collected.insert(share.custodian.clone(), share);
        if self.collected.len() < need {
            return Ok(SubmitOutcome::Collecting { have: self.collected.len(), need, duplicate: false });
        }
        let taken: Vec<RawShare> = std::mem::take(&mut self.collected).into_values().collect();
        let mk = shares::combine(need, &taken)?;
        drop(taken);
        // Unreachable with commitments in place, unless the seal config itself was altered: fail closed.
        if mk.fingerprint() != self.config.mk_fingerprint {
            return Err(SealError::FingerprintMismatch);
        }
        self.unsealed = true;
        Ok(SubmitOutcome::Unsealed(mk))
    }

    /// Back to sealed: collected shares are dropped (zeroized). The caller drops its KEK and keys.
    pub fn seal(&mut self) {
        self.collected.clear();
        self.unsealed = false;
    }

    /// Marks the state sealed again after an unseal whose unwrapping failed.
    pub fn reset(&mut self) {
        self.seal();
    }
}

/// Unwraps the active KEK with the master key.
pub async fn unwrap_active_kek(store: &Store, mk: &MasterKey) -> Result<(String, Kek), SealError> {
    let row = store
        .active_kek()
        .await?
        .ok_or_else(|| SealError::Unwrap { what: "the active KEK".into(), reason: "no active KEK is stored".into() })?;
    let kek = unwrap_kek(mk, &row.id, &row.wrapped_by_master_hex)?;
    Ok((row.id, kek))
}

/// Unwraps one stored KEK blob with the master key.
pub fn unwrap_kek(mk: &MasterKey, kek_id: &str, wrapped_hex: &str) -> Result<Kek, SealError> {
    let err = |reason: String| SealError::Unwrap { what: format!("KEK {kek_id:?}"), reason };
    let blob = hex::decode(wrapped_hex).map_err(|_| err("stored blob is not hex".into()))?;
    let bytes = mk.wrapping_key().unwrap(kek_id, KEK_WRAP_PURPOSE, &blob).map_err(|e| err(e.to_string()))?;
    Kek::from_bytes(&bytes).map_err(|e| err(e.to_string()))
}

/// Wraps a KEK with the master key, for storage in `keks`.
pub fn wrap_kek(mk: &MasterKey, kek_id: &str, kek: &Kek) -> Result<String, SealError> {
    let blob = mk
        .wrapping_key()
        .wrap(kek_id, KEK_WRAP_PURPOSE, kek.expose_bytes())
        .map_err(|e| SealError::Unwrap { what: format!("KEK {kek_id:?}"), reason: e.to_string() })?;
    Ok(hex::encode(blob))
}

/// `[signer.bitcoin]` as the signer takes it (issue 9): which Bitcoin keys it derives from the master seed at
/// unseal. Validated by the configuration loader; the derivation itself is [`load_btc_keys`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BtcKeysConfig {
    pub network: bitcoin::Network,
    /// Key id of the BIP84 hot account `m/84'/<coin>'/0'` (e.g. `btc-hot`).
    pub key_id: String,
    /// The most one withdrawal may pay in fees, satoshi.
    pub fee_cap_sat: u64,
    /// The online cosigner of the pinned multisig cold wallet, when this signer is one (K15).
    pub cosigner: Option<BtcCosignerConfig>,
}

/// The online multisig cosigner: its key id, the pinned wallet (the file `kinko-offline btc-wallet` wrote)
/// and the fee bound (the pinned file's `fee_sat_max`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BtcCosignerConfig {
    pub key_id: String,
    pub wallet: kinko_keys::btc::MultisigWallet,
    pub fee_cap_sat: u64,
}

/// The key-store purpose of the BIP84 hot account's record.
pub const BTC_ACCOUNT_PURPOSE: &str = "btc_account";
/// The key-store purpose of the multisig cosigner's record.
pub const BTC_COSIGNER_PURPOSE: &str = "btc_cosigner";

/// The BIP32 master of the stored master seed (the one `kinko init` made; the EVM hot key and the deposit
/// account come from it too), unwrapped with `keks`. Exactly one active master seed must be stored.
pub async fn unwrap_master_seed(
    store: &Store,
    keks: &BTreeMap<String, Kek>,
) -> Result<bitcoin::bip32::Xpriv, SealError> {
    use kinko_store::key_lifecycle::MASTER_SEED_PURPOSE;
    let err = |reason: String| SealError::Unwrap { what: "the master seed".into(), reason };
    let seeds = store.keys_by_purpose(MASTER_SEED_PURPOSE).await?;
    let [seed] = seeds.as_slice() else {
        return Err(err(format!("{} master seeds are stored; exactly one is needed", seeds.len())));
    };
    if seed.state != "active" || seed.wrapped_hex.is_empty() {
        return Err(err(format!("it is {}; only an active seed is used", seed.state)));
    }
    let kek_id = store.key_kek_id(&seed.id).await?.unwrap_or_default();
    let kek = keks.get(&kek_id).ok_or_else(|| err(format!("its KEK {kek_id:?} is not available")))?;
    let blob = hex::decode(&seed.wrapped_hex).map_err(|_| err("stored blob is not hex".into()))?;
    // Never the seed itself in an error: only why it did not open.
    let plain = kek.unwrap(&seed.id, &seed.purpose, &blob).map_err(|e| err(e.to_string()))?;
    match std::str::from_utf8(&plain) {
        Ok(words) => kinko_keys::seed::MasterSeed::from_mnemonic(words)
            .and_then(|s| s.to_bip32_master())
            .map_err(|e| err(e.to_string())),
        Err(_) if plain.len() == kinko_keys::seed::SEED_LEN => {
            kinko_keys::hd::master_from_seed(&plain).map_err(|e| err(e.to_string()))
        }
        Err(_) => Err(err("the unwrapped seed is neither BIP39 words nor a 64-byte seed".into())),
    }
}

/// The key record of a Bitcoin key derived at unseal: registered on the first unseal (state `active`,
/// address = the account xpub, nothing wrapped: the key is derived from the master seed, never stored), so
/// the key lifecycle gate (K2, K3) governs it like any other key; on later unseals the record must name the
/// same account, or the unseal fails naming the key (a key id reused for another account).
async fn ensure_btc_key_record(
    store: &Store,
    key_id: &str,
    purpose: &str,
    network: bitcoin::Network,
    xpub: &bitcoin::bip32::Xpub,
) -> Result<(), SealError> {
    let chain = crate::btc::btc_journal_chain(network);
    let address = xpub.to_string();
    let record = kinko_store::signer_records::KeyRecord {
        id: key_id.to_string(),
        purpose: purpose.to_string(),
        chain: chain.clone(),
        address: address.clone(),
        wrapped_hex: String::new(),
        state: "active".into(),
        created_at_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0),
    };
    store.insert_key(&record).await?;
    let stored = store.key(key_id).await?.ok_or_else(|| SealError::Unwrap {
        what: format!("key {key_id:?}"),
        reason: "its record was not stored".into(),
    })?;
    if stored.purpose != purpose || stored.chain != chain || stored.address != address {
        return Err(SealError::Unwrap {
            what: format!("key {key_id:?}"),
            reason: format!(
                "the key store records it as {} on {} ({}), not as this signer's {purpose} {address} on {chain}",
                stored.purpose, stored.chain, stored.address
            ),
        });
    }
    Ok(())
}

/// Derives the Bitcoin keys of `config` from the master seed into `signer` (`set_btc_account`, and
/// `set_btc_cosigner` for the multisig cosigner, whose BIP48 account must be one of the pinned wallet's).
pub async fn load_btc_keys(
    store: &Store,
    keks: &BTreeMap<String, Kek>,
    signer: &LocalSigner,
    config: &BtcKeysConfig,
) -> Result<(), SealError> {
    let mut master = unwrap_master_seed(store, keks).await?;
    let loaded = async {
        let account = signer.set_btc_account(&config.key_id, &master, config.network, config.fee_cap_sat)?;
        ensure_btc_key_record(store, &config.key_id, BTC_ACCOUNT_PURPOSE, config.network, &account.xpub).await?;
        if let Some(c) = &config.cosigner {
            let cosigner = signer.set_btc_cosigner(&c.key_id, &master, c.wallet.clone(), c.fee_cap_sat)?;
            ensure_btc_key_record(store, &c.key_id, BTC_COSIGNER_PURPOSE, c.wallet.network, &cosigner.xpub).await?;
        }
        Ok::<_, SealError>(())
    }
    .await;
    master.private_key.non_secure_erase();
    loaded
}

/// Builds an unsealed in-process signer: unwraps each key in `key_ids` with the KEK that wrapped it
/// (the active one, or any non-destroyed one the MK opens, so a half-finished KEK rotation still unseals)
/// and checks it against its recorded address.
pub async fn unlock_signer(
    store: &Store,
    mk: &MasterKey,
    journal: Arc<dyn SignerJournal>,
    key_ids: &[String],
    routine_policy: kinko_store::key_lifecycle::RoutinePolicy,
) -> Result<LocalSigner, SealError> {
    unlock_signer_with(store, mk, journal, key_ids, routine_policy, None).await
}

/// [`unlock_signer`], where keys whose record says they live in a PKCS#11 token (K21) are activated by
/// logging in to that token with `pkcs11` instead of being unwrapped. The token is logged in once per
/// unseal and stays logged in while the signer holds its keys; sealing drops them, which logs out.
pub async fn unlock_signer_with(
    store: &Store,
    mk: &MasterKey,
    journal: Arc<dyn SignerJournal>,
    key_ids: &[String],
    routine_policy: kinko_store::key_lifecycle::RoutinePolicy,
    pkcs11: Option<&crate::pkcs11::Pkcs11Login>,
) -> Result<LocalSigner, SealError> {
    unlock_signer_full(store, mk, journal, key_ids, routine_policy, pkcs11, None).await
}

/// [`unlock_signer_with`], also deriving the Bitcoin keys of `[signer.bitcoin]` from the master seed
/// ([`load_btc_keys`]). A configured Bitcoin key that cannot be derived fails the unseal: the operator asked
/// for it, and a signer that silently lacks it would only refuse later.
pub async fn unlock_signer_full(
    store: &Store,
    mk: &MasterKey,
    journal: Arc<dyn SignerJournal>,
    key_ids: &[String],
    routine_policy: kinko_store::key_lifecycle::RoutinePolicy,
    pkcs11: Option<&crate::pkcs11::Pkcs11Login>,
    btc: Option<&BtcKeysConfig>,
) -> Result<LocalSigner, SealError> {
    let mut token: Option<crate::pkcs11::Pkcs11Token> = None;
    let signer = LocalSigner::new(journal);
    // Only keys in state `active` sign (K2); the routine-suspension policy (K3) is applied at each
    // signature. Every unsealed signer gets the gate, in-process or in the signer process.
    let gate = kinko_store::key_lifecycle::StoreKeyGate::new(store.clone(), routine_policy);
    signer.set_key_gate(Arc::new(gate))?;
    let mut keks: BTreeMap<String, Kek> = BTreeMap::new();
    for row in store.keks().await? {
        if row.state != kinko_store::seal_records::KEK_DESTROYED {
            keks.insert(row.id.clone(), unwrap_kek(mk, &row.id, &row.wrapped_by_master_hex)?);
        }
    }
    for key_id in key_ids {
        let err = |reason: String| SealError::Unwrap { what: format!("key {key_id:?}"), reason };
        let record = store.key(key_id).await?.ok_or_else(|| err("no such key is stored".into()))?;
        if let Some(at) =
            crate::pkcs11::TokenKeyRef::from_marker(&record.wrapped_hex).map_err(|e| err(e.to_string()))?
        {
            let login = pkcs11.ok_or_else(|| {
                err(format!("it lives in PKCS#11 token {:?}: configure [signer.pkcs11]", at.token_label))
            })?;
            if login.token_label != at.token_label {
                return Err(err(format!(
                    "it lives in PKCS#11 token {:?}, but [signer.pkcs11] names token {:?}",
                    at.token_label, login.token_label
                )));
            }
            if token.is_none() {
                token = Some(login.open().map_err(|e| err(e.to_string()))?);
            }
            let held = token.as_ref().ok_or_else(|| err("token not open".into()))?;
            let key = held.find_key(&at.key_id).map_err(|e| err(e.to_string()))?;
            let address = signer.add_pkcs11_key(key_id, key)?;
            if address != record.address {
                signer.seal();
                return Err(err("the token's key does not match its recorded address".into()));
            }
            continue;
        }
        let kek_id = store.key_kek_id(key_id).await?.unwrap_or_default();
        let kek = keks.get(&kek_id).ok_or_else(|| err(format!("its KEK {kek_id:?} is not available")))?;
        let wrapped = hex::decode(&record.wrapped_hex).map_err(|_| err("stored blob is not hex".into()))?;
        let secret = kek.unwrap(key_id, &record.purpose, &wrapped).map_err(|e| err(e.to_string()))?;
        let secret: zeroize::Zeroizing<[u8; 32]> = zeroize::Zeroizing::new(
            secret.as_slice().try_into().map_err(|_| err("unwrapped key has the wrong length".into()))?,
        );
        let address = signer.add_secp256k1_key(key_id, secret)?;
        if !record.address.is_empty() && address != record.address {
            signer.seal();
            return Err(err("unwrapped key does not match its recorded address".into()));
        }
    }
    // K13: deposit-address keys are derived on demand from the master seed's deposit account, never stored.
    if let Some(deposit) = crate::sweep::load_deposit_signing(store, &keks, key_ids).await? {
        signer.set_deposit_signing(deposit)?;
    }
    if let Some(config) = btc
        && let Err(e) = load_btc_keys(store, &keks, &signer, config).await
    {
        signer.seal();
        return Err(e);
    }
    Ok(signer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(k: usize, n: usize) -> (MasterKey, Vec<RawShare>, SealState) {
        let mk = MasterKey::generate();
        let names: Vec<String> = (0..n).map(|i| format!("c{i}")).collect();
        let shares = shares::split(&mk, k, &names).unwrap();
        let state = SealState::new(SealConfig::new(&mk, k, &shares)).unwrap();
        (mk, shares, state)
    }

    #[test]
    fn k16_k_minus_one_shares_stay_sealed_and_k_unseal() {
        let (mk, shares, mut state) = setup(3, 5);
        assert!(state.is_sealed());
        assert!(matches!(state.submit(shares[4].clone()), Ok(SubmitOutcome::Collecting { have: 1, need: 3, .. })));
        assert!(matches!(state.submit(shares[1].clone()), Ok(SubmitOutcome::Collecting { have: 2, need: 3, .. })));
        assert!(state.is_sealed());
        assert_eq!(state.status().submitted, vec!["c1".to_string(), "c4".to_string()]);
        match state.submit(shares[2].clone()).unwrap() {
            SubmitOutcome::Unsealed(got) => assert_eq!(got.fingerprint(), mk.fingerprint()),
            other => panic!("expected unsealed, got {other:?}"),
        }
        assert!(!state.is_sealed());
        assert!(matches!(state.submit(shares[0].clone()), Err(SealError::AlreadyUnsealed)));
        state.seal();
        assert_eq!(
            state.status(),
            SealStatus {
                sealed: true,
                have: 0,
                need: 3,
                custodians: (0..5).map(|i| format!("c{i}")).collect(),
                submitted: vec![]
            }
        );
    }

    #[test]
    fn k16_same_custodian_counts_once() {
        let (_mk, shares, mut state) = setup(2, 3);
        state.submit(shares[0].clone()).unwrap();
        assert!(matches!(
            state.submit(shares[0].clone()),
            Ok(SubmitOutcome::Collecting { have: 1, need: 2, duplicate: true })
        ));
        assert!(state.is_sealed());
    }

    #[test]
    fn k16_wrong_and_corrupted_shares_are_rejected_on_arrival() {
        let (_mk, shares, mut state) = setup(2, 3);
        // Another seal's share under a valid custodian name.
        let (_other_mk, other_shares, _) = setup(2, 3);
        assert!(matches!(state.submit(other_shares[0].clone()), Err(SealError::WrongShare(_))));
        // A corrupted share: one flipped byte.
        let mut hex = shares[1].to_hex().to_string();
        let flipped = if hex.ends_with('0') { '1' } else { '0' };
        hex.pop();
        hex.push(flipped);
        let bad = RawShare::from_hex("c1", shares[1].index, 2, &hex).unwrap();
        assert!(matches!(state.submit(bad), Err(SealError::WrongShare(_))));
        // Someone else's share presented as c2's.
        let relabelled = RawShare::from_hex("c2", shares[0].index, 2, &shares[0].to_hex()).unwrap();
        assert!(matches!(state.submit(relabelled), Err(SealError::WrongShare(_))));
        let stranger = RawShare::from_hex("mallory", shares[0].index, 2, &shares[0].to_hex()).unwrap();
        assert!(matches!(state.submit(stranger), Err(SealError::UnknownCustodian(_))));
        assert_eq!(state.status().have, 0, "nothing rejected was kept");
    }

    #[test]
    fn k16_altered_fingerprint_fails_closed() {
        let (mk, shares, _) = setup(2, 2);
        let mut config = SealConfig::new(&mk, 2, &shares);
        config.mk_fingerprint = "00".repeat(32);
        let mut state = SealState::new(config).unwrap();
        state.submit(shares[0].clone()).unwrap();
        assert!(matches!(state.submit(shares[1].clone()), Err(SealError::FingerprintMismatch)));
        assert!(state.is_sealed());
        assert_eq!(state.status().have, 0);
    }

    #[test]
    fn k4_kek_wrap_round_trips_only_under_its_id() {
        let mk = MasterKey::generate();
        let kek = Kek::generate();
        let wrapped = wrap_kek(&mk, "kek-1", &kek).unwrap();
        assert_eq!(unwrap_kek(&mk, "kek-1", &wrapped).unwrap().fingerprint(), kek.fingerprint());
        assert!(unwrap_kek(&mk, "kek-2", &wrapped).is_err());
        assert!(unwrap_kek(&MasterKey::generate(), "kek-1", &wrapped).is_err());
    }
}
