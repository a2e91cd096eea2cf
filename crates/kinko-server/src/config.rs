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
}
