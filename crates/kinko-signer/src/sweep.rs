//! Deposit sweeping in the signer (K13, C1, M10): signing for customer deposit addresses without the server
//! ever holding their keys, and the one narrow thing those keys may sign.
//!
//! At unseal the signer keeps the master seed's deposit *account* key (`m/44'/60'/0'`, the xpriv whose xpub
//! the server derives deposit addresses from) and derives the key of deposit address `i`
//! (`m/44'/60'/0'/0/i`) on demand ([`DepositAccount`]). Its key id is [`deposit_key_id`]`(i)`
//! (`eth-deposit-<i>`: only characters a key freeze may name), the server's `wallets.key_id` for it.
//!
//! The rules are pure functions over the decoded transaction and the intent ([`check_deposit_sweep`],
//! [`check_gas_top_up`]):
//! - a deposit key signs only a transfer to the signer's *own* hot wallet (the address of the hot key it
//!   unsealed, never one the request names): native value with no call data, or ERC-20
//!   `transfer(hot, amount)` on a token contract of the signer's own policy; intent reason
//!   [`DEPOSIT_SWEEP_REASON`]. No operator approval: the money only moves between two of the custodian's own
//!   addresses, so a compromised server can at worst make it sweep early. Anything else is refused, naming why.
//! - the hot key signs a gas top-up (native ETH to a deposit address, so that address can pay the gas of its
//!   token sweep) without approval only when the intent says [`gas_top_up_reason`]`(i)`, the destination is the
//!   address the signer itself derives for `i`, and the amount is at most its configured top-up cap.
//!
//! The signer has no view of the chain, so "value ≤ balance" is not something it can check: an over-balance
//! sweep is refused by the node (insufficient funds) and never lands.

use alloy_consensus::TxEip1559;
use alloy_primitives::{TxKind, U256};
use bitcoin::bip32::{ChildNumber, Xpriv, Xpub};
use bitcoin::secp256k1::Secp256k1;
use kinko_core::intent::Intent;
use zeroize::Zeroizing;

use crate::SignerError;
use crate::evm::{EvmCall, EvmPolicy, classify_calldata};

/// Key ids of deposit-address keys: this prefix and the BIP32 index (`eth-deposit-17`).
pub const DEPOSIT_KEY_PREFIX: &str = "eth-deposit-";
/// The intent reason of a deposit sweep (deposit address → hot wallet).
pub const DEPOSIT_SWEEP_REASON: &str = "deposit sweep";
/// The intent reason of a gas top-up is this prefix and the deposit index (`deposit gas top-up: index 17`):
/// the index is in the intent, so the approved (hashed) intent names which address the signer must derive.
pub const GAS_TOP_UP_REASON_PREFIX: &str = "deposit gas top-up: index ";
/// Default ceiling on one gas top-up when none is configured: 0.01 ETH, a token transfer's gas at a
/// high fee, and a small enough loss should a compromised server spray top-ups.
pub const TOP_UP_CAP_WEI_DEFAULT: u128 = 10_000_000_000_000_000;
/// Length of a BIP32 extended key's serialisation.
const XPRIV_LEN: usize = 78;

/// The key id of deposit address `index`.
pub fn deposit_key_id(index: u32) -> String {
    format!("{DEPOSIT_KEY_PREFIX}{index}")
}

/// The index of a deposit key id, or `None` for any other key id. Only the canonical decimal form counts
/// (no sign, no leading zeros), so one index has exactly one key id.
pub fn parse_deposit_key_id(key_id: &str) -> Option<u32> {
    parse_index(key_id.strip_prefix(DEPOSIT_KEY_PREFIX)?)
}

/// The intent reason of a gas top-up for deposit address `index`.
pub fn gas_top_up_reason(index: u32) -> String {
    format!("{GAS_TOP_UP_REASON_PREFIX}{index}")
}

/// The deposit index named by a gas top-up reason, or `None` for any other reason.
pub fn parse_gas_top_up_reason(reason: &str) -> Option<u32> {
    parse_index(reason.strip_prefix(GAS_TOP_UP_REASON_PREFIX)?)
}

fn parse_index(s: &str) -> Option<u32> {
    if s.is_empty() || (s.len() > 1 && s.starts_with('0')) || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let index: u32 = s.parse().ok()?;
    // Deposit addresses are public derivations: hardened indexes never name one.
    (index < (1 << 31)).then_some(index)
}

/// The deposit account key (`m/44'/60'/0'`), kept serialised in zeroizing memory; `Debug` shows nothing.
pub struct DepositAccount {
    encoded: Zeroizing<[u8; XPRIV_LEN]>,
}

impl std::fmt::Debug for DepositAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DepositAccount(..)")
    }
}

impl DepositAccount {
    /// From the BIP32 master key of the master seed.
    pub fn from_master(master: &Xpriv) -> Result<DepositAccount, SignerError> {
        let secp = Secp256k1::signing_only();
        let path: bitcoin::bip32::DerivationPath = kinko_keys::hd::EVM_DEPOSIT_ACCOUNT_PATH
            .parse()
            .map_err(|_| SignerError::Internal("deposit account path does not parse".into()))?;
        let mut account = master
            .derive_priv(&secp, &path)
            .map_err(|e| SignerError::Internal(format!("deriving the deposit account: {e}")))?;
        let encoded = Zeroizing::new(account.encode());
        account.private_key.non_secure_erase();
        Ok(DepositAccount { encoded })
    }

    fn account(&self) -> Result<Xpriv, SignerError> {
        Xpriv::decode(&self.encoded[..])
            .map_err(|_| SignerError::Internal("deposit account key does not decode".into()))
    }

    /// The secret key of deposit address `index` (`account/0/index`). The caller drops it promptly.
    pub fn secret(&self, index: u32) -> Result<Zeroizing<[u8; 32]>, SignerError> {
        let secp = Secp256k1::signing_only();
        let mut account = self.account()?;
        let path = child_path(index)?;
        let derived = account.derive_priv(&secp, &path);
        account.private_key.non_secure_erase();
        let mut child = derived.map_err(|e| SignerError::Internal(format!("deriving deposit key {index}: {e}")))?;
        let secret = Zeroizing::new(child.private_key.secret_bytes());
        child.private_key.non_secure_erase();
        Ok(secret)
    }

    /// The address of deposit address `index`, by the very public derivation the server uses
    /// ([`kinko_keys::hd::evm_deposit_address`]).
    pub fn address(&self, index: u32) -> Result<String, SignerError> {
        let secp = Secp256k1::signing_only();
        let mut account = self.account()?;
        let xpub = Xpub::from_priv(&secp, &account);
        account.private_key.non_secure_erase();
        kinko_keys::hd::evm_deposit_address(&xpub, index)
            .map_err(|e| SignerError::Refused(format!("deposit index {index}: {e}")))
    }
}

fn child_path(index: u32) -> Result<[ChildNumber; 2], SignerError> {
    let bad = |_| SignerError::Refused(format!("deposit index {index} is outside the non-hardened range"));
    Ok([ChildNumber::from_normal_idx(0).map_err(bad)?, ChildNumber::from_normal_idx(index).map_err(bad)?])
}

/// What the signer needs for deposit keys and gas top-ups, set at unseal and dropped at seal.
#[derive(Debug)]
pub struct DepositSigning {
    pub account: DepositAccount,
    /// The signer's own hot key: its address is the only destination a deposit key pays.
    pub hot_key_id: String,
    /// Ceiling on one gas top-up signed without approval.
    pub top_up_cap_wei: u128,
}

fn refused(why: String) -> SignerError {
    SignerError::Refused(why)
}

/// A deposit key's rule: the transaction must pay the signer's own `hot_address` and nothing else, under a
/// "deposit sweep" intent. Runs before (and in addition to) [`crate::evm::check_against_intent`], which
/// compares the transaction with the intent field by field.
pub fn check_deposit_sweep(
    tx: &TxEip1559,
    key_id: &str,
    intent: &Intent,
    hot_address: &str,
    policy: &EvmPolicy,
) -> Result<(), SignerError> {
    let who = format!("deposit key {key_id:?} signs only a sweep into the signer's own hot wallet {hot_address}");
    if intent.reason != DEPOSIT_SWEEP_REASON {
        return Err(refused(format!(
            "{who}; this intent's reason is {:?}, not {DEPOSIT_SWEEP_REASON:?}",
            intent.reason
        )));
    }
    if !intent.destination.eq_ignore_ascii_case(hot_address) {
        return Err(refused(format!("{who}; the intent pays {}", intent.destination)));
    }
    let to = match tx.to {
        TxKind::Call(to) => format!("{to:#x}"),
        TxKind::Create => return Err(refused(format!("{who}; the payload creates a contract"))),
    };
    match classify_calldata(&tx.input).map_err(|e| refused(format!("{who}; the payload's call data: {e}")))? {
        EvmCall::None => {
            if intent.asset.as_str() != policy.native_asset {
                return Err(refused(format!("{who}; a {} sweep must be a token transfer call", intent.asset)));
            }
            if !to.eq_ignore_ascii_case(hot_address) {
                return Err(refused(format!("{who}; the payload pays {to}")));
            }
        }
        EvmCall::Erc20Transfer { recipient, .. } => {
            let Some(contract) = policy.tokens.get(intent.asset.as_str()) else {
                return Err(refused(format!(
                    "{who}; the payload calls a token contract, but {} is not a token of the signer's policy",
                    intent.asset
                )));
            };
            if tx.to != TxKind::Call(*contract) {
                return Err(refused(format!("{who}; the payload calls {to}, not the {} contract", intent.asset)));
            }
            let recipient = format!("{recipient:#x}");
            if !recipient.eq_ignore_ascii_case(hot_address) {
                return Err(refused(format!("{who}; the token transfer pays {recipient}")));
            }
            if tx.value != U256::ZERO {
                return Err(refused(format!("{who}; a token sweep carries no native value")));
            }
        }
    }
    Ok(())
}

/// The hot key's gas top-up rule: `Ok(true)` when `intent` is a top-up that may be signed without operator
/// approval (its index derives to its destination, native asset, amount within `cap_wei`), `Ok(false)` when
/// the intent is not a top-up at all (the ordinary approval rules apply), and a refusal when it claims to be
/// one and is not. `derive` gives the signer's own address for a deposit index.
pub fn check_gas_top_up(
    intent: &Intent,
    policy: &EvmPolicy,
    cap_wei: u128,
    derive: impl FnOnce(u32) -> Result<String, SignerError>,
) -> Result<bool, SignerError> {
    if !intent.reason.starts_with(GAS_TOP_UP_REASON_PREFIX) {
        return Ok(false);
    }
    let index = parse_gas_top_up_reason(&intent.reason)
        .ok_or_else(|| refused(format!("gas top-up reason {:?} does not name a deposit index", intent.reason)))?;
    if intent.asset.as_str() != policy.native_asset {
        return Err(refused(format!(
            "a gas top-up pays the native coin {}, not {}",
            policy.native_asset, intent.asset
        )));
    }
    let derived = derive(index)?;
    if !derived.eq_ignore_ascii_case(&intent.destination) {
        return Err(refused(format!(
            "gas top-up destination {} is not deposit address {index} ({derived}) as the signer derives it",
            intent.destination
        )));
    }
    if intent.amount.base_units() > cap_wei {
        return Err(refused(format!(
            "gas top-up of {} wei is above the signer's top-up cap of {cap_wei} wei",
            intent.amount
        )));
    }
    Ok(true)
}

/// At unseal: the deposit account of the stored master seed (`keys` row of purpose `master_seed`, wrapped by
/// a KEK in `keks`), for a signer whose hot key is the one among `key_ids` of purpose `hot_wallet`. `None` (and
/// a warning) when there is no active master seed or no hot key: deposit keys then refuse to sign, and nothing
/// else changes. The seed is stored as its BIP39 words (`kinko init`); a raw 64-byte seed is accepted too.
#[cfg(feature = "online")]
pub async fn load_deposit_signing(
    store: &kinko_store::Store,
    keks: &std::collections::BTreeMap<String, kinko_keys::kek::Kek>,
    key_ids: &[String],
) -> Result<Option<DepositSigning>, SignerError> {
    use kinko_store::key_lifecycle::MASTER_SEED_PURPOSE;
    let store_err = |e: kinko_store::StoreError| SignerError::Internal(format!("store: {e}"));
    let mut hot_key_id = None;
    for id in key_ids {
        if store.key(id).await.map_err(store_err)?.is_some_and(|k| k.purpose == "hot_wallet") {
            hot_key_id = Some(id.clone());
        }
    }
    let Some(hot_key_id) = hot_key_id else { return Ok(None) };
    let seeds = store.keys_by_purpose(MASTER_SEED_PURPOSE).await.map_err(store_err)?;
    let [seed] = seeds.as_slice() else {
        if !seeds.is_empty() {
            tracing::warn!(count = seeds.len(), "several master seeds are stored; deposit keys stay unavailable");
        }
        return Ok(None);
    };
    if seed.state != "active" || seed.wrapped_hex.is_empty() {
        tracing::warn!(state = %seed.state, "the master seed is not active; deposit keys stay unavailable");
        return Ok(None);
    }
    let kek_id = store.key_kek_id(&seed.id).await.map_err(store_err)?.unwrap_or_default();
    let unwrapped = || -> Result<DepositAccount, String> {
        let kek = keks.get(&kek_id).ok_or_else(|| format!("its KEK {kek_id:?} is not available"))?;
        let blob = hex::decode(&seed.wrapped_hex).map_err(|_| "stored blob is not hex".to_string())?;
        let plain = kek.unwrap(&seed.id, &seed.purpose, &blob).map_err(|e| e.to_string())?;
        let mut master = match std::str::from_utf8(&plain) {
            Ok(words) => kinko_keys::seed::MasterSeed::from_mnemonic(words)
                .and_then(|s| s.to_bip32_master())
                .map_err(|e| e.to_string())?,
            Err(_) if plain.len() == kinko_keys::seed::SEED_LEN => {
                kinko_keys::hd::master_from_seed(&plain).map_err(|e| e.to_string())?
            }
            Err(_) => return Err("the unwrapped seed is neither BIP39 words nor a 64-byte seed".into()),
        };
        let account = DepositAccount::from_master(&master).map_err(|e| e.to_string());
        master.private_key.non_secure_erase();
        account
    };
    match unwrapped() {
        Ok(account) => Ok(Some(DepositSigning { account, hot_key_id, top_up_cap_wei: TOP_UP_CAP_WEI_DEFAULT })),
        // Never the seed itself in the message: only why it did not open.
        Err(why) => {
            tracing::warn!(key = %seed.id, %why, "the master seed did not unwrap; deposit keys stay unavailable");
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use alloy_primitives::{Address, Bytes};
    use kinko_core::{Amount, ChainId};

    use super::*;

    const TEST_MNEMONIC: &str = "test test test test test test test test test test test junk";
    const HOT: &str = "0x00000000000000000000000000000000000000bb";
    const OTHER: &str = "0x00000000000000000000000000000000000000cc";

    fn account() -> DepositAccount {
        let seed = kinko_keys::seed::MasterSeed::from_mnemonic(TEST_MNEMONIC).unwrap();
        DepositAccount::from_master(&seed.to_bip32_master().unwrap()).unwrap()
    }

    fn intent(destination: &str, reason: &str, asset: &str, amount: u128) -> Intent {
        Intent {
            id: "w1".into(),
            asset: asset.parse().unwrap(),
            chain_id: ChainId(31337),
            amount: Amount::from_base_units(amount),
            destination: destination.into(),
            source_wallet: "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266".into(),
            customer_id: "custodian".into(),
            reason: reason.into(),
        }
    }

    fn tx(to: &str, value: u128, input: Vec<u8>) -> TxEip1559 {
        TxEip1559 {
            chain_id: 31337,
            nonce: 0,
            gas_limit: 21_000,
            max_fee_per_gas: 2,
            max_priority_fee_per_gas: 1,
            to: TxKind::Call(to.parse::<Address>().unwrap()),
            value: U256::from(value),
            access_list: Default::default(),
            input: Bytes::from(input),
        }
    }

    #[test]
    fn k13_deposit_key_ids_and_top_up_reasons_round_trip_canonically() {
        assert_eq!(deposit_key_id(17), "eth-deposit-17");
        assert_eq!(parse_deposit_key_id("eth-deposit-17"), Some(17));
        for bad in ["eth-deposit-", "eth-deposit-017", "eth-deposit--1", "eth-deposit-2147483648", "eth-hot-1"] {
            assert_eq!(parse_deposit_key_id(bad), None, "{bad}");
        }
        assert_eq!(parse_gas_top_up_reason(&gas_top_up_reason(3)), Some(3));
        assert_eq!(parse_gas_top_up_reason("deposit gas top-up: index 3 "), None);
    }

    #[test]
    fn k13_signer_derives_the_same_addresses_as_the_server_and_hides_the_key() {
        let a = account();
        // m/44'/60'/0'/0/0 and /1 of the test mnemonic are anvil's first two accounts.
        assert_eq!(a.address(0).unwrap(), "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266");
        assert_eq!(a.address(1).unwrap(), "0x70997970c51812dc3a010c7d01b50e0d17dc79c8");
        let secret = a.secret(0).unwrap();
        assert_eq!(hex::encode(&secret[..]), "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80");
        assert_eq!(format!("{a:?}"), "DepositAccount(..)");
    }

    #[test]
    fn k13_deposit_sweep_rule_accepts_only_a_plain_transfer_to_hot() {
        let p = EvmPolicy::default();
        let ok = intent(HOT, DEPOSIT_SWEEP_REASON, "ETH", 5);
        check_deposit_sweep(&tx(HOT, 5, vec![]), "eth-deposit-0", &ok, HOT, &p).unwrap();
        let why = |r: Result<(), SignerError>| r.unwrap_err().to_string();
        let e = why(check_deposit_sweep(&tx(OTHER, 5, vec![]), "eth-deposit-0", &ok, HOT, &p));
        assert!(e.contains("pays 0x00000000000000000000000000000000000000cc"), "{e}");
        let e = why(check_deposit_sweep(
            &tx(OTHER, 5, vec![]),
            "k",
            &intent(OTHER, DEPOSIT_SWEEP_REASON, "ETH", 5),
            HOT,
            &p,
        ));
        assert!(e.contains("the intent pays"), "{e}");
        let e =
            why(check_deposit_sweep(&tx(HOT, 5, vec![]), "k", &intent(HOT, "customer withdrawal", "ETH", 5), HOT, &p));
        assert!(e.contains("reason is \"customer withdrawal\""), "{e}");
        let e = why(check_deposit_sweep(&tx(HOT, 0, vec![0x09, 0x5e, 0xa7, 0xb3]), "k", &ok, HOT, &p));
        assert!(e.contains("call data"), "{e}");
    }

    #[test]
    fn k13_top_up_needs_the_derived_address_and_the_cap() {
        let a = account();
        let p = EvmPolicy::default();
        let dest = a.address(4).unwrap();
        let derive = |i| a.address(i);
        assert!(check_gas_top_up(&intent(&dest, &gas_top_up_reason(4), "ETH", 100), &p, 100, derive).unwrap());
        assert!(!check_gas_top_up(&intent(OTHER, "custodian transfer", "ETH", 100), &p, 100, derive).unwrap());
        let e = check_gas_top_up(&intent(&dest, &gas_top_up_reason(5), "ETH", 100), &p, 100, derive).unwrap_err();
        assert!(e.to_string().contains("is not deposit address 5"), "{e}");
        let e = check_gas_top_up(&intent(&dest, &gas_top_up_reason(4), "ETH", 101), &p, 100, derive).unwrap_err();
        assert!(e.to_string().contains("above the signer's top-up cap"), "{e}");
        let e = check_gas_top_up(&intent(&dest, "deposit gas top-up: index x", "ETH", 1), &p, 100, derive).unwrap_err();
        assert!(e.to_string().contains("does not name a deposit index"), "{e}");
    }
}
