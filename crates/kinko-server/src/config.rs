//! Configuration: a TOML file with environment overrides (`KINKO_…`). Every field is documented in
//! README.md ("Configuration reference"); keep the two in step.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `sqlite://PATH` (embedded default) or `postgres://…`. Env: `KINKO_DATABASE_URL`.
    pub database_url: String,
    /// Where the HTTP API listens. Env: `KINKO_LISTEN`.
    pub listen: SocketAddr,
    /// Directory for the keystore and other local state. Env: `KINKO_DATA_DIR`.
    pub data_dir: PathBuf,
    /// Names this instance in work leases; two instances must not share a name. Env: `KINKO_INSTANCE_ID`.
    #[serde(default = "default_instance_id")]
    pub instance_id: String,
    /// Dev mode: the signer is unsealed automatically from a KEK file in `data_dir`. Never in production.
    #[serde(default)]
    pub dev: bool,
    pub ethereum: EthereumConfig,
    #[serde(default)]
    pub pipeline: PipelineConfig,
    #[serde(default)]
    pub signer: SignerConfig,
    /// `[[policies]]`: the withdrawal policy of each (wallet, asset) (K11, K20, O1), validated at load. The
    /// wallet is named by its signing key id (`eth-hot-1` for the hot wallet, [`crate::app::HOT_KEY_ID`]), the
    /// same name the signer's `[[signer.quorum]]` uses. An approved policy change stored in the database
    /// overrides the entry here. A withdrawal from a (wallet, asset) with no policy is refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<kinko_core::policy::PolicyConfig>,
    #[serde(default)]
    pub operators: OperatorsConfig,
    #[serde(default)]
    pub customer_auth: CustomerAuthConfig,
    /// `[notices]`: how customer notices leave kinko (SMTP relay, webhook); see
    /// [`crate::notices::NoticesConfig`]. Default: none sent (they stay pending; a warning at start).
    #[serde(default)]
    pub notices: crate::notices::NoticesConfig,
    /// `[login_protection]`: customer login limits (lockout with back-off, per-IP blocks, static block
    /// list); see [`crate::api::login_protection::LoginProtectionConfig`].
    #[serde(default)]
    pub login_protection: crate::api::login_protection::LoginProtectionConfig,
    /// `[address_book]`: saved withdrawal destinations (U13); see [`crate::api::address_book::AddressBookConfig`].
    #[serde(default)]
    pub address_book: crate::api::address_book::AddressBookConfig,
    /// `[aml]`: destination screening, AML rules and purpose/beneficiary fields (U14); see
    /// [`crate::aml::AmlConfig`]. Default: no deny list (screening off, a warning at start).
    #[serde(default)]
    pub aml: crate::aml::AmlConfig,
    /// `[emergency]`: lifting freezes (K19, S5); see [`crate::emergency::EmergencyConfig`].
    #[serde(default)]
    pub emergency: crate::emergency::EmergencyConfig,
    /// `[reconciliation]`: spend and balance reconciliation (L3); see
    /// [`crate::reconciliation::ReconciliationConfig`].
    #[serde(default)]
    pub reconciliation: crate::reconciliation::ReconciliationConfig,
    /// `[audit]`: the audit key file and the periodic inspection report (L2, L4–L6); see
    /// [`crate::audit::AuditConfig`].
    #[serde(default)]
    pub audit: crate::audit::AuditConfig,
    /// `[withdrawal_confirmation]`: when a withdrawal needs the customer's confirmation over a second
    /// channel (U4, U9) and the risk score's weights; see
    /// [`crate::api::withdrawal_confirmation::WithdrawalConfirmationConfig`].
    #[serde(default)]
    pub withdrawal_confirmation: crate::api::withdrawal_confirmation::WithdrawalConfirmationConfig,
    /// `[onboarding]`: e-mail verification and KYC (U1, M3); see
    /// [`crate::api::onboarding::OnboardingConfig`]. `dev_auto_verify` is dev only.
    #[serde(default)]
    pub onboarding: crate::api::onboarding::OnboardingConfig,
    /// `[[wallet_tiers]]`: per asset the hot wallet's cap, floor and target and its cold wallet (K13, K14,
    /// C1); see [`crate::tiers::WalletTierConfig`]. Default: none (nothing is swept; the dev hot wallet holds
    /// its 1000 ETH).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub wallet_tiers: Vec<crate::tiers::WalletTierConfig>,
    /// `[sweep]`: consolidating deposit addresses into the hot wallet (K13, C1); see
    /// [`crate::sweeper::SweepConfig`]. Default: off.
    #[serde(default)]
    pub sweep: crate::sweeper::SweepConfig,
    /// `[bitcoin]`: Bitcoin deposits (issue 9); see [`BitcoinConfig`]. Default: none (Bitcoin off, no BTC asset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bitcoin: Option<BitcoinConfig>,
}

/// `[customer_auth]`: customer second factors (U2). The WebAuthn relying party is the site customers
/// see: passkeys are bound to `rp_id`, and a browser answers only for `rp_origin`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CustomerAuthConfig {
    /// WebAuthn relying party id: the customer site's domain (no scheme, no port). Default `localhost`.
    #[serde(default = "default_rp_id")]
    pub rp_id: String,
    /// The origin the customer site is served from; its host must be `rp_id` or a subdomain of it.
    /// Default `http://localhost:8080`.
    #[serde(default = "default_rp_origin")]
    pub rp_origin: String,
}

impl Default for CustomerAuthConfig {
    fn default() -> Self {
        CustomerAuthConfig { rp_id: default_rp_id(), rp_origin: default_rp_origin() }
    }
}

fn default_rp_id() -> String {
    "localhost".into()
}
fn default_rp_origin() -> String {
    "http://localhost:8080".into()
}

/// `[operators]`: settings of operator-instructed custody operations (M10).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OperatorsConfig {
    /// A fiat deposit up to this amount (base units of its currency) is booked on the signing operator's
    /// record of the bank's confirmation alone; above it an operations manager must approve. The default
    /// 0 sends every fiat deposit to approval.
    #[serde(default)]
    pub fiat_deposit_auto_max: kinko_core::Amount,
}

/// Where signatures come from (S1).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SignerConfig {
    /// `remote`: `kinko serve` asks the signer process (`kinko signer serve`) over `socket_path`.
    /// `local`: an in-process signer, accepted only in dev mode.
    #[serde(default)]
    pub mode: SignerMode,
    /// The signer's Unix socket; default `data_dir/signer.sock`. Env: `KINKO_SIGNER_SOCKET`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_path: Option<PathBuf>,
    /// Routine suspension (K3): a key is suspended after this many signatures since its activation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signatures_max: Option<u64>,
    /// Routine suspension (K3): keys sign only from `[start, end)` o'clock UTC, Monday to Friday.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub business_hours_utc: Option<[u8; 2]>,
    /// `[signer.pkcs11]`: the PKCS#11 token that holds the hot key when `kinko init --hot-key-backend
    /// pkcs11` made it there (K21).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pkcs11: Option<Pkcs11Config>,
    /// `[[signer.quorum]]`: how many operator approvals the signer itself demands per (key_id, asset) and
    /// amount band (K11, O2). A (key, asset) without an entry does not sign. Default: the dev hot key
    /// `eth-hot-1` signs ETH up to 10 ETH without approval and above that with one signing manager's.
    #[serde(default = "default_signer_quorum")]
    pub quorum: Vec<kinko_signer::approvals::SigningQuorumConfig>,
    /// The custodian's cold wallets as the SIGNER knows them (K13): a custodian transfer to one of these signs
    /// without operator approvals (the automatic sweep). Read by the signer from its own configuration; the
    /// server's `[[wallet_tiers]]` cannot add to it. Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cold_wallets: Vec<String>,
    /// The most one gas top-up (hot wallet → a deposit address it derives itself, ahead of a token sweep) may
    /// pay without operator approval, in wei (K13). Default 10000000000000000 (0.01 ETH).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deposit_top_up_cap_wei: Option<u128>,
    /// `[[signer.safes]]`: the Safe multisig wallets (K15) a key serves on `ethereum.chain_id`, as one of its
    /// owners or as the relayer that may submit their `execTransaction`. Read by the signer from its own
    /// configuration. Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub safes: Vec<SafeEntry>,
    /// `[signer.bitcoin]`: the Bitcoin keys the signer derives from the master seed when it unseals (issue 9):
    /// the BIP84 hot account and, optionally, its cosigner key of the pinned multisig cold wallet. Read by the
    /// signer from its own configuration. Default: none (Bitcoin requests are refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bitcoin: Option<SignerBitcoinConfig>,
}

/// `[signer.bitcoin]`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SignerBitcoinConfig {
    /// `bitcoin` (mainnet), `testnet`, `testnet4`, `signet` or `regtest` (rust-bitcoin's names).
    pub network: String,
    /// Key id of the BIP84 account `m/84'/<coin>'/0'` (withdrawal PSBTs are signed for it), e.g. `btc-hot`.
    pub key_id: String,
    /// The most one withdrawal may pay in fees, satoshi. Default 1000000 (0.01 BTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fee_cap_sat: Option<u64>,
    /// Key id of this signer's cosigner key (BIP48 `m/48'/<coin>'/0'/2'`) of the multisig cold wallet (K15).
    /// Set together with `multisig_wallet`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multisig_key_id: Option<String>,
    /// The pinned multisig wallet, the JSON file `kinko-offline btc-wallet` wrote (`btc-wallet.json`: network,
    /// threshold, cosigners, `fee_sat_max`, which is also this cosigner's fee cap). Set together with
    /// `multisig_key_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multisig_wallet: Option<PathBuf>,
}

/// Most bytes of a key id in `[signer.bitcoin]` (as for `[[signer.safes]]`).
const SIGNER_KEY_ID_BYTES_MAX: usize = 64;

impl SignerBitcoinConfig {
    /// The validated keys for the signer; errors name the key (`signer.bitcoin.network: …`).
    pub fn keys(&self) -> Result<kinko_signer::seal::BtcKeysConfig, ConfigError> {
        let invalid = |field: &'static str, reason: String| ConfigError::Invalid { field, reason };
        let network = self.network.parse::<bitcoin::Network>().map_err(|_| {
            invalid(
                "signer.bitcoin.network",
                format!("{:?} is not one of bitcoin, testnet, testnet4, signet, regtest", self.network),
            )
        })?;
        let key_id_ok = |id: &str| !id.is_empty() && id.len() <= SIGNER_KEY_ID_BYTES_MAX;
        if !key_id_ok(&self.key_id) {
            return Err(invalid("signer.bitcoin.key_id", format!("must be 1 to {SIGNER_KEY_ID_BYTES_MAX} bytes")));
        }
        let fee_cap_sat = self.fee_cap_sat.unwrap_or(kinko_signer::btc::BTC_FEE_CAP_SAT_DEFAULT);
        if fee_cap_sat == 0 || bitcoin::Amount::from_sat(fee_cap_sat) > bitcoin::Amount::MAX_MONEY {
            return Err(invalid(
                "signer.bitcoin.fee_cap_sat",
                format!("{fee_cap_sat} is not between 1 sat and 21 000 000 BTC"),
            ));
        }
        let cosigner = match (&self.multisig_key_id, &self.multisig_wallet) {
            (None, None) => None,
            (Some(key_id), Some(path)) => {
                if !key_id_ok(key_id) {
                    return Err(invalid(
                        "signer.bitcoin.multisig_key_id",
                        format!("must be 1 to {SIGNER_KEY_ID_BYTES_MAX} bytes"),
                    ));
                }
                if *key_id == self.key_id {
                    return Err(invalid(
                        "signer.bitcoin.multisig_key_id",
                        "must differ from signer.bitcoin.key_id (one key id, one key)".into(),
                    ));
                }
                let wallet_err =
                    |reason: String| invalid("signer.bitcoin.multisig_wallet", format!("{}: {reason}", path.display()));
                let bytes = std::fs::read(path).map_err(|e| wallet_err(e.to_string()))?;
                let (wallet, fee_cap_sat) = kinko_signer::btc_multisig::PinnedWalletFile::parse(&bytes)
                    .map_err(|e| wallet_err(e.to_string()))?;
                if wallet.network != network {
                    return Err(wallet_err(format!(
                        "the wallet is for {}, signer.bitcoin.network is {network}",
                        wallet.network
                    )));
                }
                if fee_cap_sat == 0 {
                    return Err(wallet_err("fee_sat_max is 0: nothing could be signed".into()));
                }
                Some(kinko_signer::seal::BtcCosignerConfig { key_id: key_id.clone(), wallet, fee_cap_sat })
            }
            _ => {
                return Err(invalid(
                    "signer.bitcoin.multisig_wallet",
                    "multisig_key_id and multisig_wallet are set together or not at all".into(),
                ));
            }
        };
        Ok(kinko_signer::seal::BtcKeysConfig { network, key_id: self.key_id.clone(), fee_cap_sat, cosigner })
    }
}

/// One `[[signer.safes]]` entry.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SafeEntry {
    /// The signer's key that owns (or relays for) the Safe, e.g. `eth-hot-1`.
    pub key_id: String,
    /// The Safe proxy's address (`0x` + 40 hex).
    pub address: String,
}

impl SignerConfig {
    /// `[signer.bitcoin]` validated (the pinned multisig wallet read and checked), or `None` without it.
    pub fn bitcoin_keys(&self) -> Result<Option<kinko_signer::seal::BtcKeysConfig>, ConfigError> {
        self.bitcoin.as_ref().map(SignerBitcoinConfig::keys).transpose()
    }

    /// `[[signer.safes]]` as `(key id, chain id, address)`, validated; errors name the entry.
    pub fn safes_on(&self, chain_id: u64) -> Result<Vec<(String, u64, alloy_primitives::Address)>, ConfigError> {
        self.safes
            .iter()
            .enumerate()
            .map(|(i, s)| {
                if s.key_id.is_empty() || s.key_id.len() > 64 {
                    return Err(ConfigError::Invalid {
                        field: "signer.safes",
                        reason: format!("signer.safes[{i}].key_id: must be 1 to 64 bytes"),
                    });
                }
                let address = kinko_chain::evm::address::parse_address(&s.address).map_err(|e| {
                    ConfigError::Invalid { field: "signer.safes", reason: format!("signer.safes[{i}].address: {e}") }
                })?;
                Ok((s.key_id.clone(), chain_id, address))
            })
            .collect()
    }
}

impl Default for SignerConfig {
    fn default() -> Self {
        SignerConfig {
            mode: SignerMode::default(),
            socket_path: None,
            signatures_max: None,
            business_hours_utc: None,
            pkcs11: None,
            quorum: default_signer_quorum(),
            cold_wallets: Vec::new(),
            deposit_top_up_cap_wei: None,
            safes: Vec::new(),
            bitcoin: None,
        }
    }
}

fn default_signer_quorum() -> Vec<kinko_signer::approvals::SigningQuorumConfig> {
    vec![kinko_signer::approvals::SigningQuorumConfig::dev_default()]
}

/// A PKCS#11 token (K21). The PIN is never in the file: `pin_env` names the environment variable that
/// holds it (`deny_unknown_fields` rejects a `pin` key).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Pkcs11Config {
    /// The token's PKCS#11 library, e.g. `/usr/lib/softhsm/libsofthsm2.so`.
    pub module_path: PathBuf,
    /// The token's label (`CKA_LABEL` of the token, as `softhsm2-util --init-token --label` set it).
    pub token_label: String,
    /// Id (`CKA_ID`/`CKA_LABEL`) under which `kinko init` generates the hot key in the token.
    #[serde(default = "default_pkcs11_key_id")]
    pub key_id: String,
    /// Name of the environment variable holding the token's user PIN.
    #[serde(default = "default_pkcs11_pin_env")]
    pub pin_env: String,
}

impl Pkcs11Config {
    /// The login for this token, with the PIN read from `pin_env` now.
    pub fn login(&self) -> Result<kinko_signer::pkcs11::Pkcs11Login, ConfigError> {
        let pin = std::env::var(&self.pin_env).map_err(|_| ConfigError::Invalid {
            field: "signer.pkcs11.pin_env",
            reason: format!("environment variable {} (the token's user PIN) is not set", self.pin_env),
        })?;
        Ok(kinko_signer::pkcs11::Pkcs11Login {
            module_path: self.module_path.clone(),
            token_label: self.token_label.clone(),
            pin: secrecy::SecretString::from(pin),
        })
    }
}

fn default_pkcs11_key_id() -> String {
    "kinko-eth-hot-1".into()
}
fn default_pkcs11_pin_env() -> String {
    "KINKO_PKCS11_PIN".into()
}

impl SignerConfig {
    /// The signer's quorum policy, validated (errors name the entry, e.g. `signer.quorum[0].bands[1].approvals`).
    pub fn signing_quorum(&self) -> Result<kinko_signer::approvals::SigningQuorum, ConfigError> {
        kinko_signer::approvals::SigningQuorum::from_configs(&self.quorum)
            .map_err(|e| ConfigError::Invalid { field: "signer.quorum", reason: e.to_string() })
    }

    /// The routine-suspension policy these settings describe.
    pub fn routine_policy(&self) -> Result<kinko_store::key_lifecycle::RoutinePolicy, ConfigError> {
        let business_hours = self
            .business_hours_utc
            .map(|[start, end]| {
                kinko_core::key_lifecycle::BusinessHours::new(
                    start,
                    end,
                    kinko_core::key_lifecycle::BusinessHours::WEEKDAYS,
                )
            })
            .transpose()
            .map_err(|e| ConfigError::Invalid { field: "signer.business_hours_utc", reason: e.to_string() })?;
        Ok(kinko_store::key_lifecycle::RoutinePolicy { signatures_max: self.signatures_max, business_hours })
    }
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SignerMode {
    #[default]
    Remote,
    Local,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EthereumConfig {
    /// JSON-RPC endpoint used to read blocks. Env: `KINKO_ETH_RPC`.
    pub rpc_url: String,
    /// JSON-RPC endpoint used to send transactions; defaults to `rpc_url` (C7). Env: `KINKO_ETH_SEND_RPC`.
    #[serde(default)]
    pub send_rpc_url: Option<String>,
    /// The chain id kinko expects; the node must report the same or kinko refuses to start (C3).
    pub chain_id: u64,
    /// Confirmations before a deposit is credited and a withdrawal settled (C2). Env: `KINKO_ETH_CONFIRMATIONS`.
    #[serde(default = "default_confirmations")]
    pub confirmations: u64,
    /// Block to start scanning from when the database has none yet (default: the node's tip).
    #[serde(default)]
    pub start_block: Option<u64>,
    /// How often the watcher polls for blocks.
    #[serde(default = "default_poll_ms")]
    pub poll_interval_ms: u64,
    /// A broadcast transaction not included after this long is replaced with higher fees (C4).
    #[serde(default = "default_stuck_ms")]
    pub stuck_after_ms: u64,
    /// Ceiling on max_fee_per_gas, in wei: kinko never bids above it, however stuck a transaction is.
    #[serde(default = "default_max_fee_cap")]
    pub max_fee_per_gas_cap_wei: u128,
    /// Further read nodes (ideally of other operators) that the node monitor cross-checks `rpc_url` against
    /// (C6, C10); an unreachable one halts withdrawals. Default: none (stall and send-node checks only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cross_check_rpc_urls: Vec<String>,
    /// `[ethereum.monitor]`: node-monitor thresholds; see [`crate::node_monitor::NodeMonitorConfig`].
    #[serde(default)]
    pub monitor: crate::node_monitor::NodeMonitorConfig,
    /// `[[ethereum.tokens]]`: ERC-20 tokens on this chain (K22); see [`crate::erc20::TokenConfig`].
    /// Default: none (ETH only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tokens: Vec<crate::erc20::TokenConfig>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// How often the withdrawal pipeline looks for work.
    pub poll_interval_ms: u64,
    /// How long a claimed withdrawal stays leased to this instance.
    pub lease_ms: u64,
    /// Bound on withdrawals advanced per cycle.
    pub batch_max: u32,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig { poll_interval_ms: 500, lease_ms: 15_000, batch_max: 64 }
    }
}

/// Dev and test default: the hot wallet's ETH policy keeps ordinary withdrawals automatic (hot_small, one
/// quorum band of 1 of 2). Above 10 ETH a withdrawal needs one operator's approval, matching the signer's dev
/// `[[signer.quorum]]` (auto up to 10 ETH, then one signing manager), so the server never approves on its own
/// what the signer would refuse; 1000 ETH a day in total is far above what the walkthrough, tests and crash
/// test move.
pub fn dev_hot_policy() -> kinko_core::policy::PolicyConfig {
    use kinko_core::Amount;
    use kinko_core::policy::{Action, PerTxLimit, PolicyClass, PolicyConfig, QuorumBand, RollingLimit};
    const ETH_WEI: u128 = 1_000_000_000_000_000_000;
    PolicyConfig {
        wallet: crate::app::HOT_KEY_ID.to_string(),
        asset: "ETH".parse().expect("ETH is a well-formed asset code"),
        class: PolicyClass::HotSmall,
        quorum_bands: vec![QuorumBand { from: Amount::from_base_units(0), approvals: 1, approvers: 2 }],
        per_tx_limit: PerTxLimit {
            max: Amount::from_base_units(10 * ETH_WEI),
            on_breach: Action::NeedsApproval,
            quorum: None,
        },
        rolling_limit: RollingLimit {
            max: Amount::from_base_units(1_000 * ETH_WEI),
            window_ms: kinko_core::policy::DAY_MS,
            on_breach: Action::NeedsApproval,
            quorum: None,
        },
        velocity: None,
        whitelist: None,
        business_hours: None,
        ip_allowlist: None,
        anomaly: None,
    }
}

fn default_instance_id() -> String {
    "kinko-1".into()
}
fn default_confirmations() -> u64 {
    3
}
fn default_poll_ms() -> u64 {
    500
}
fn default_stuck_ms() -> u64 {
    60_000
}
fn default_max_fee_cap() -> u128 {
    500_000_000_000 // 500 gwei
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("parsing {path}: {source}")]
    Parse { path: PathBuf, source: toml::de::Error },
    #[error("environment variable {name}: {reason}")]
    Env { name: &'static str, reason: String },
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

impl Config {
    /// The embedded default: SQLite under `data_dir`, a local node, dev mode.
    pub fn dev_default(data_dir: PathBuf, listen: SocketAddr, eth_rpc: String) -> Config {
        let mail_dir = data_dir.join("mail");
        Config {
            database_url: format!("sqlite://{}", data_dir.join("kinko.db").display()),
            listen,
            data_dir,
            instance_id: default_instance_id(),
            dev: true,
            ethereum: EthereumConfig {
                rpc_url: eth_rpc,
                send_rpc_url: None,
                chain_id: 31337,
                confirmations: default_confirmations(),
                start_block: Some(0),
                poll_interval_ms: 250,
                stuck_after_ms: 30_000,
                max_fee_per_gas_cap_wei: default_max_fee_cap(),
                cross_check_rpc_urls: Vec::new(),
                // anvil mines only on demand: no new block for minutes is normal there.
                monitor: crate::node_monitor::NodeMonitorConfig { stall_after_ms: 0, ..Default::default() },
                tokens: Vec::new(),
            },
            pipeline: PipelineConfig::default(),
            signer: SignerConfig { mode: SignerMode::Local, ..Default::default() },
            policies: vec![dev_hot_policy()],
            operators: OperatorsConfig::default(),
            customer_auth: CustomerAuthConfig::default(),
            // Dev only: e-mail notices (withdrawal confirmations included) as files to read, and saved
            // destinations usable at once so the quick start can withdraw; `kinko dev` says so at start.
            notices: crate::notices::NoticesConfig {
                mail_dir: Some(mail_dir),
                ..crate::notices::NoticesConfig::default()
            },
            login_protection: Default::default(),
            address_book: crate::api::address_book::AddressBookConfig { cooling_off_ms: 0 },
            aml: crate::aml::AmlConfig::default(),
            emergency: Default::default(),
            reconciliation: Default::default(),
            audit: crate::audit::AuditConfig::default(),
            withdrawal_confirmation: Default::default(),
            // Dev only: new customers are verified at once so the quick start can withdraw (a warning at start).
            onboarding: crate::api::onboarding::OnboardingConfig {
                dev_auto_verify: true,
                ..crate::api::onboarding::OnboardingConfig::default()
            },
            // Off by default: the dev hot wallet is funded with 1000 ETH and has no cold wallet; a cap would
            // sweep it. Configure a cold wallet and a tier to turn sweeps on.
            wallet_tiers: Vec::new(),
            // Off in dev: it would move the deposits the walkthrough and tests check on the deposit addresses.
            sweep: crate::sweeper::SweepConfig::default(),
            // Off in dev: there is no Bitcoin node in the quick start.
            bitcoin: None,
        }
    }

    /// The validated `[[policies]]`; errors name the entry and the field (`policies[0] (wallet …): …`).
    pub fn policy_set(&self) -> Result<kinko_core::policy::PolicySet, ConfigError> {
        kinko_core::policy::PolicySetConfig { policies: self.policies.clone() }
            .validate()
            .map_err(|e| ConfigError::Invalid { field: "policies", reason: e.to_string() })
    }

    /// The signer's socket: `signer.socket_path`, or `signer.sock` in the data directory.
    pub fn signer_socket(&self) -> PathBuf {
        self.signer.socket_path.clone().unwrap_or_else(|| self.data_dir.join("signer.sock"))
    }

    pub fn load(path: &std::path::Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        let mut config: Config =
            toml::from_str(&text).map_err(|source| ConfigError::Parse { path: path.into(), source })?;
        config.apply_env(|name| std::env::var(name).ok())?;
        config.validate()?;
        Ok(config)
    }

    /// Environment overrides, taken through a lookup function so tests need not touch the process env.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(v) = get("KINKO_DATABASE_URL") {
            self.database_url = v;
        }
        if let Some(v) = get("KINKO_LISTEN") {
            self.listen = v.parse().map_err(|e| ConfigError::Env { name: "KINKO_LISTEN", reason: format!("{e}") })?;
        }
        if let Some(v) = get("KINKO_DATA_DIR") {
            self.data_dir = v.into();
        }
        if let Some(v) = get("KINKO_INSTANCE_ID") {
            self.instance_id = v;
        }
        if let Some(v) = get("KINKO_ETH_RPC") {
            self.ethereum.rpc_url = v;
        }
        if let Some(v) = get("KINKO_ETH_SEND_RPC") {
            self.ethereum.send_rpc_url = Some(v);
        }
        if let Some(v) = get("KINKO_SIGNER_SOCKET") {
            self.signer.socket_path = Some(v.into());
        }
        if let Some(v) = get("KINKO_ETH_CONFIRMATIONS") {
            self.ethereum.confirmations =
                v.parse().map_err(|e| ConfigError::Env { name: "KINKO_ETH_CONFIRMATIONS", reason: format!("{e}") })?;
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, reason: &str| Err(ConfigError::Invalid { field, reason: reason.into() });
        if !(self.database_url.starts_with("sqlite:") || self.database_url.starts_with("postgres")) {
            return invalid("database_url", "must start with sqlite:// or postgres://");
        }
        if self.ethereum.confirmations == 0 || self.ethereum.confirmations > kinko_core::reorg::REORG_DEPTH_MAX {
            return invalid("ethereum.confirmations", "must be between 1 and the re-org window (256)");
        }
        if self.instance_id.is_empty() || self.instance_id.len() > 64 {
            return invalid("instance_id", "must be 1 to 64 characters");
        }
        if self.signer.mode == SignerMode::Local && !self.dev {
            return invalid("signer.mode", "an in-process signer is for dev mode only; use \"remote\" (S1)");
        }
        if self.pipeline.batch_max == 0 || self.pipeline.batch_max > 1_000 {
            return invalid("pipeline.batch_max", "must be between 1 and 1000");
        }
        self.policy_set()?;
        crate::erc20::TokenSet::from_config(&self.ethereum)?;
        crate::node_monitor::validate_config(&self.ethereum)?;
        self.signer.signing_quorum()?;
        self.notices.validate()?;
        self.login_protection.validate()?;
        self.address_book.validate()?;
        self.aml.validate()?;
        self.emergency.validate()?;
        self.emergency.validate_for_production(self.dev)?;
        self.reconciliation.validate()?;
        self.withdrawal_confirmation.validate()?;
        self.onboarding.validate()?;
        crate::tiers::tiers_from_config(&self.wallet_tiers)?;
        self.sweep.validate()?;
        self.bitcoin.as_ref().map(BitcoinConfig::validate).transpose()?;
        for (i, a) in self.signer.cold_wallets.iter().enumerate() {
            kinko_chain::evm::address::parse_address(a).map_err(|e| ConfigError::Invalid {
                field: "signer.cold_wallets",
                reason: format!("signer.cold_wallets[{i}]: {e}"),
            })?;
        }
        self.signer.safes_on(self.ethereum.chain_id)?;
        if let Some(p) = &self.signer.pkcs11 {
            if p.token_label.is_empty() || p.token_label.len() > 32 {
                return invalid("signer.pkcs11.token_label", "must be 1 to 32 bytes (a PKCS#11 token label)");
            }
            if p.key_id.is_empty() || p.key_id.len() > kinko_signer::pkcs11::KEY_ID_LEN_MAX {
                return invalid("signer.pkcs11.key_id", "must be 1 to 64 bytes");
            }
            if p.pin_env.is_empty() || !p.pin_env.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return invalid("signer.pkcs11.pin_env", "must name an environment variable (A-Z, 0-9, _)");
            }
        }
        Ok(())
    }
}

/// Bounds on `[bitcoin] poll_interval_ms`: faster than a block interval is pointless below this, and a
/// watcher slower than this would leave deposits waiting noticeably longer than the confirmations do.
pub const BTC_POLL_MS_MIN: u64 = 100;
pub const BTC_POLL_MS_MAX: u64 = 600_000;
/// Default confirmations before a Bitcoin deposit is credited (C2): 6 on real networks (the common custodial
/// depth), 3 on regtest where blocks are mined on demand.
pub const BTC_CONFIRMATIONS_DEFAULT: u64 = 6;
pub const BTC_CONFIRMATIONS_DEFAULT_REGTEST: u64 = 3;
/// Depth of a BIP84 account xpub (`m/84'/<coin>'/0'`): anything else is not the account the signer exported.
const BIP84_ACCOUNT_DEPTH: u8 = 3;

/// `[bitcoin]`: Bitcoin deposits (issue 9; M5, M6, C2, C5). Absent: Bitcoin is off (no BTC asset, no watcher).
/// The server holds only the account's xpub (K6): customers' deposit addresses are derived from it; the
/// private keys stay with the signer (`[signer.bitcoin]`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BitcoinConfig {
    /// `bitcoin` (mainnet), `testnet`, `testnet4`, `signet` or `regtest` (rust-bitcoin's names).
    pub network: String,
    /// Bitcoin Core's JSON-RPC endpoint, e.g. `http://127.0.0.1:8332/` (no credentials in the URL).
    pub rpc_url: String,
    /// Core's `rpcuser`; set together with `rpc_password_file`. Default: no authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpc_user: Option<String>,
    /// File holding Core's `rpcpassword` (one line; mode 0600 — a file group or others may read is refused).
    /// The password itself is never in this file's configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpc_password_file: Option<PathBuf>,
    /// The BIP84 account xpub `m/84'/<coin>'/0'` as the signer side exported it (`xpub…`/`tpub…`).
    pub account_xpub: String,
    /// The master key's fingerprint, 8 hex digits (PSBTs name keys by it).
    pub master_fingerprint: String,
    /// Confirmations before a deposit is credited (C2), 1 to 256 (the re-org window). Default 3 on regtest,
    /// 6 otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirmations: Option<u64>,
    /// How often the watcher asks the node for new blocks, 100 to 600000 ms. Default 5000.
    #[serde(default = "default_btc_poll_ms")]
    pub poll_interval_ms: u64,
}

fn default_btc_poll_ms() -> u64 {
    5_000
}

impl BitcoinConfig {
    fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid { field, reason: reason.into() }
    }

    pub fn network(&self) -> Result<bitcoin::Network, ConfigError> {
        self.network.parse::<bitcoin::Network>().map_err(|_| {
            Self::invalid(
                "bitcoin.network",
                format!("{:?} is not one of bitcoin, testnet, testnet4, signet, regtest", self.network),
            )
        })
    }

    /// The watched account (xpub only), checked against `network`: an xpub of another network would hand out
    /// addresses nobody watches for on this one.
    pub fn account(&self) -> Result<kinko_keys::btc::Bip84Account, ConfigError> {
        use std::str::FromStr as _;
        let network = self.network()?;
        bitcoin::bip32::Fingerprint::from_str(&self.master_fingerprint).map_err(|_| {
            Self::invalid("bitcoin.master_fingerprint", "must be 8 hex digits (the master key's fingerprint)")
        })?;
        let xpub = bitcoin::bip32::Xpub::from_str(&self.account_xpub)
            .map_err(|e| Self::invalid("bitcoin.account_xpub", format!("not an extended public key: {e}")))?;
        if xpub.network != bitcoin::NetworkKind::from(network) {
            return Err(Self::invalid(
                "bitcoin.account_xpub",
                format!("is a {:?} key but bitcoin.network is {network}", xpub.network),
            ));
        }
        if xpub.depth != BIP84_ACCOUNT_DEPTH {
            return Err(Self::invalid(
                "bitcoin.account_xpub",
                format!("has depth {}; a BIP84 account key m/84'/<coin>'/0' has depth 3", xpub.depth),
            ));
        }
        kinko_keys::btc::Bip84Account::from_exported(&self.master_fingerprint, &self.account_xpub, network)
            .map_err(|e| Self::invalid("bitcoin.account_xpub", e.to_string()))
    }

    /// The configured confirmations or the network's default.
    pub fn confirmations(&self) -> Result<u64, ConfigError> {
        let default = if self.network()? == bitcoin::Network::Regtest {
            BTC_CONFIRMATIONS_DEFAULT_REGTEST
        } else {
            BTC_CONFIRMATIONS_DEFAULT
        };
        let n = self.confirmations.unwrap_or(default);
        if n == 0 || n > kinko_core::reorg::REORG_DEPTH_MAX {
            return Err(Self::invalid("bitcoin.confirmations", "must be between 1 and the re-org window (256)"));
        }
        Ok(n)
    }

    /// The node's credentials, the password read from `rpc_password_file` now (a file group or others may
    /// read is refused, as for the audit key).
    pub fn rpc_auth(&self) -> Result<Option<kinko_chain::btc::rpc::BtcRpcAuth>, ConfigError> {
        let (user, path) = match (&self.rpc_user, &self.rpc_password_file) {
            (None, None) => return Ok(None),
            (Some(user), Some(path)) => (user, path),
            _ => {
                return Err(Self::invalid(
                    "bitcoin.rpc_password_file",
                    "rpc_user and rpc_password_file are set together or not at all",
                ));
            }
        };
        if user.is_empty() || user.contains(':') {
            return Err(Self::invalid("bitcoin.rpc_user", "must be non-empty and contain no ':' (HTTP basic auth)"));
        }
        let file_err =
            |reason: String| Self::invalid("bitcoin.rpc_password_file", format!("{}: {reason}", path.display()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path).map_err(|e| file_err(e.to_string()))?.permissions().mode();
            if mode & 0o077 != 0 {
                return Err(file_err(format!("mode {:o} lets group or others read it; chmod 600", mode & 0o777)));
            }
        }
        let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|e| file_err(e.to_string()))?);
        // One line; the newline an editor or `echo` adds is not part of the password.
        let password = text.trim_end_matches(['\r', '\n']);
        if password.is_empty() || password.contains(['\r', '\n']) {
            return Err(file_err("must hold the password on one non-empty line".into()));
        }
        Ok(Some(kinko_chain::btc::rpc::BtcRpcAuth {
            user: user.clone(),
            password: secrecy::SecretString::from(password.to_string()),
        }))
    }

    /// The node's client (no request made).
    pub fn rpc(&self) -> Result<kinko_chain::btc::rpc::BtcRpc, ConfigError> {
        let auth = self.rpc_auth()?;
        kinko_chain::btc::rpc::BtcRpc::new(&self.rpc_url, auth)
            .map_err(|e| Self::invalid("bitcoin.rpc_url", e.to_string()))
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.account()?;
        self.confirmations()?;
        if !(BTC_POLL_MS_MIN..=BTC_POLL_MS_MAX).contains(&self.poll_interval_ms) {
            return Err(Self::invalid("bitcoin.poll_interval_ms", "must be between 100 and 600000"));
        }
        self.rpc()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// K11: the signer's quorum is validated when the configuration loads; errors name the entry and field,
    /// and the dev default (what `kinko config-example` prints) carries the hot key's ETH entry.
    #[test]
    fn k11_signer_quorum_validated_at_load_and_in_the_dev_default() {
        let mut c =
            Config::dev_default("/tmp/x".into(), "127.0.0.1:8080".parse().unwrap(), "http://127.0.0.1:8545".into());
        assert_eq!(c.signer.quorum, vec![kinko_signer::approvals::SigningQuorumConfig::dev_default()]);
        c.validate().unwrap();
        let text = toml::to_string(&c).unwrap();
        assert!(text.contains("[[signer.quorum]]") && text.contains("auto_max = \"10000000000000000000\""), "{text}");
        let back: Config = toml::from_str(&text).unwrap();
        assert_eq!(back.signer.quorum, c.signer.quorum);
        c.signer.quorum[0]
            .bands
            .push(kinko_signer::approvals::QuorumBand { from: kinko_core::Amount::from_base_units(100), approvals: 0 });
        match c.validate() {
            Err(e @ ConfigError::Invalid { field: "signer.quorum", .. }) => {
                assert!(e.to_string().contains("signer.quorum[0].bands[1].approvals"), "{e}")
            }
            other => panic!("{other:?}"),
        }
    }

    /// K15: `[[signer.safes]]` parses from TOML and reaches the signer as (key, chain, address); a bad address
    /// is refused at load, naming the entry.
    #[test]
    fn k15_signer_safes_parse_and_a_bad_address_names_the_entry() {
        let mut c =
            Config::dev_default("/tmp/x".into(), "127.0.0.1:8080".parse().unwrap(), "http://127.0.0.1:8545".into());
        let text = format!(
            "{}\n[[signer.safes]]\nkey_id = \"eth-hot-1\"\naddress = \"0x{}\"\n",
            toml::to_string(&c).unwrap(),
            "ab".repeat(20)
        );
        let back: Config = toml::from_str(&text).unwrap();
        back.validate().unwrap();
        let safes = back.signer.safes_on(back.ethereum.chain_id).unwrap();
        assert_eq!(safes.len(), 1);
        assert_eq!((safes[0].0.as_str(), safes[0].1), ("eth-hot-1", back.ethereum.chain_id));
        assert_eq!(safes[0].2, alloy_primitives::Address::repeat_byte(0xab));
        c.signer.safes = vec![SafeEntry { key_id: "eth-hot-1".into(), address: "0x1234".into() }];
        match c.validate() {
            Err(e @ ConfigError::Invalid { field: "signer.safes", .. }) => {
                assert!(e.to_string().contains("signer.safes[0].address"), "{e}")
            }
            other => panic!("{other:?}"),
        }
    }

    /// C2: configuration is validated (confirmations within the re-org window) and env overrides are checked.
    #[test]
    fn env_overrides_and_validation() {
        let mut c =
            Config::dev_default("/tmp/x".into(), "127.0.0.1:8080".parse().unwrap(), "http://127.0.0.1:8545".into());
        c.apply_env(|n| (n == "KINKO_ETH_CONFIRMATIONS").then(|| "0".to_string())).unwrap();
        assert!(matches!(c.validate(), Err(ConfigError::Invalid { field: "ethereum.confirmations", .. })));
        assert!(c.apply_env(|n| (n == "KINKO_LISTEN").then(|| "nope".to_string())).is_err());
    }

    #[test]
    fn k21_pkcs11_section_names_the_pin_variable_and_refuses_a_pin() {
        let text = "module_path = \"/usr/lib/softhsm/libsofthsm2.so\"\ntoken_label = \"kinko\"\n";
        let p: Pkcs11Config = toml::from_str(text).unwrap();
        assert_eq!((p.key_id.as_str(), p.pin_env.as_str()), ("kinko-eth-hot-1", "KINKO_PKCS11_PIN"));
        let with_pin = format!("{text}pin = \"1234\"\n");
        assert!(toml::from_str::<Pkcs11Config>(&with_pin).is_err(), "a PIN in the file is rejected");
        let mut c = Config::dev_default("/tmp/x".into(), "127.0.0.1:8080".parse().unwrap(), "http://x:1".into());
        c.signer.pkcs11 = Some(Pkcs11Config { pin_env: "not a var".into(), ..p });
        assert!(matches!(c.validate(), Err(ConfigError::Invalid { field: "signer.pkcs11.pin_env", .. })));
    }

    /// M1: the documented dev configuration is valid TOML that loads back unchanged.
    #[test]
    fn dev_config_round_trips_through_toml() {
        let c = Config::dev_default("/tmp/x".into(), "127.0.0.1:8080".parse().unwrap(), "http://127.0.0.1:8545".into());
        let text = toml::to_string(&c).unwrap();
        let back: Config = toml::from_str(&text).unwrap();
        assert_eq!(back, c);
    }

    /// Issue 9: `[signer.bitcoin]` parses from TOML into the keys the signer derives at unseal; every mistake
    /// is refused naming the key.
    #[test]
    fn k20_signer_bitcoin_keys_parse_and_mistakes_name_the_key() {
        use bitcoin::Network;
        let c = Config::dev_default("/tmp/x".into(), "127.0.0.1:8080".parse().unwrap(), "http://127.0.0.1:8545".into());
        assert_eq!(c.signer.bitcoin_keys().unwrap(), None, "no [signer.bitcoin]: no Bitcoin keys");
        // A directory of this test's own (no tempfile dependency here): removed at the end.
        let dir = std::env::temp_dir().join(format!("kinko-config-btc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let wallet_path = dir.join("btc-wallet.json");
        let cosigners: Vec<kinko_keys::btc::Cosigner> = [1u8, 2, 3]
            .map(|s| {
                let master = kinko_keys::hd::master_from_seed(&[s; 32]).unwrap();
                kinko_keys::btc::Cosigner::from_master(&master, Network::Regtest).unwrap()
            })
            .to_vec();
        let file = kinko_signer::btc_multisig::PinnedWalletFile {
            kind: kinko_signer::btc_multisig::PINNED_WALLET_KIND.into(),
            network: Network::Regtest,
            threshold: 2,
            cosigners,
            fee_sat_max: 50_000,
        };
        std::fs::write(&wallet_path, serde_json::to_vec(&file).unwrap()).unwrap();
        let text = format!(
            "{}\n[signer.bitcoin]\nnetwork = \"regtest\"\nkey_id = \"btc-hot\"\nmultisig_key_id = \"btc-cold\"\nmultisig_wallet = {:?}\n",
            toml::to_string(&c).unwrap(),
            wallet_path.display().to_string()
        );
        let back: Config = toml::from_str(&text).unwrap();
        let keys = back.signer.bitcoin_keys().unwrap().unwrap();
        assert_eq!((keys.network, keys.key_id.as_str()), (Network::Regtest, "btc-hot"));
        assert_eq!(keys.fee_cap_sat, kinko_signer::btc::BTC_FEE_CAP_SAT_DEFAULT);
        let cosigner = keys.cosigner.unwrap();
        assert_eq!(
            (cosigner.key_id.as_str(), cosigner.fee_cap_sat, cosigner.wallet.threshold),
            ("btc-cold", 50_000, 2)
        );

        let base = back.signer.bitcoin.clone().unwrap();
        let refused = |b: SignerBitcoinConfig| match b.keys() {
            Err(ConfigError::Invalid { field, reason }) => format!("{field}: {reason}"),
            other => panic!("expected a refusal, got {other:?}"),
        };
        let e = refused(SignerBitcoinConfig { network: "mainnet".into(), ..base.clone() });
        assert!(e.starts_with("signer.bitcoin.network"), "{e}");
        let e = refused(SignerBitcoinConfig { key_id: String::new(), ..base.clone() });
        assert!(e.starts_with("signer.bitcoin.key_id"), "{e}");
        let e = refused(SignerBitcoinConfig { fee_cap_sat: Some(0), ..base.clone() });
        assert!(e.starts_with("signer.bitcoin.fee_cap_sat"), "{e}");
        let e = refused(SignerBitcoinConfig { multisig_wallet: None, ..base.clone() });
        assert!(e.starts_with("signer.bitcoin.multisig_wallet") && e.contains("together"), "{e}");
        let e = refused(SignerBitcoinConfig { multisig_key_id: Some("btc-hot".into()), ..base.clone() });
        assert!(e.starts_with("signer.bitcoin.multisig_key_id"), "{e}");
        let e = refused(SignerBitcoinConfig { network: "signet".into(), ..base.clone() });
        assert!(e.starts_with("signer.bitcoin.multisig_wallet") && e.contains("regtest"), "{e}");
        let e = refused(SignerBitcoinConfig { multisig_wallet: Some(dir.join("missing.json")), ..base.clone() });
        assert!(e.starts_with("signer.bitcoin.multisig_wallet") && e.contains("missing.json"), "{e}");
        std::fs::write(&wallet_path, b"{\"kind\":\"other\"}").unwrap();
        let e = refused(base);
        assert!(e.starts_with("signer.bitcoin.multisig_wallet"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
