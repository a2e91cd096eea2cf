//! Configured ERC-20 tokens (K22): `[[ethereum.tokens]]`, validated once, and the views of them the
//! API (supported assets), the deposit watcher (contracts to read `Transfer` logs of), the pipeline
//! (contract and gas limit per asset) and the signer (its own token map) need.

use std::collections::BTreeSet;

use alloy_primitives::Address;
use kinko_chain::evm::address::{parse_address, to_lower_hex};
use kinko_chain::evm::erc20::{TOKEN_TRANSFER_GAS_DEFAULT, TOKEN_TRANSFER_GAS_MAX};
use kinko_core::AssetCode;
use kinko_core::asset::{AssetKind, AssetSpec, ChainId};
use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, EthereumConfig};

/// Most decimals a token may declare: 10^36 base units still leave u128 room for ~340 whole tokens,
/// and no real token uses more than 24.
pub const TOKEN_DECIMALS_MAX: u8 = 36;
/// Bound on configured tokens per chain (each one is a log filter entry and a signer map entry).
pub const TOKENS_PER_CHAIN_MAX: usize = 64;
/// The native coin's code on the configured EVM chain; a token cannot take it.
pub const NATIVE_ASSET: &str = "ETH";

/// `[[ethereum.tokens]]`: one ERC-20 token contract on the configured chain.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// The asset code customers and operators use (e.g. `USDC`); unique, not `ETH`.
    pub code: String,
    /// For display only (every amount is in base units); at most 36.
    pub decimals: u8,
    /// The token contract: 0x + 40 hex digits (mixed case must carry a valid EIP-55 checksum).
    pub contract: String,
    /// Gas limit of a withdrawal's `transfer` call. A fixed, configured limit rather than a per-withdrawal
    /// estimate: the nonce and fee plan are fixed before signing so a re-sign after a crash gives the same
    /// payload, and a node's estimate must not decide what the hot wallet may burn. Default 100000,
    /// at most 500000.
    #[serde(default = "default_token_gas_limit")]
    pub gas_limit: u64,
}

fn default_token_gas_limit() -> u64 {
    TOKEN_TRANSFER_GAS_DEFAULT
}

/// One validated token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Token {
    pub code: AssetCode,
    pub contract: Address,
    pub decimals: u8,
    pub gas_limit: u64,
}

/// The validated tokens of the configured EVM chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenSet {
    pub chain_id: u64,
    /// The chain's native coin: network fees of token transfers are paid, and posted, in it.
    pub native: AssetCode,
    tokens: Vec<Token>,
}

fn invalid(field: &'static str, reason: String) -> ConfigError {
    ConfigError::Invalid { field, reason }
}

impl TokenSet {
    /// No tokens (native coin only).
    pub fn native_only(chain_id: u64) -> TokenSet {
        // A constant, not input (the unit test below parses it too).
        let native = NATIVE_ASSET.parse().expect("static asset code");
        TokenSet { chain_id, native, tokens: Vec::new() }
    }

    /// Validates `[[ethereum.tokens]]`; errors name the entry (`ethereum.tokens[1].contract: …`).
    pub fn from_config(eth: &EthereumConfig) -> Result<TokenSet, ConfigError> {
        const FIELD: &str = "ethereum.tokens";
        let mut set = TokenSet::native_only(eth.chain_id);
        if eth.tokens.len() > TOKENS_PER_CHAIN_MAX {
            return Err(invalid(FIELD, format!("at most {TOKENS_PER_CHAIN_MAX} tokens")));
        }
        for (i, t) in eth.tokens.iter().enumerate() {
            let at = |what: &str, reason: String| invalid(FIELD, format!("[{i}].{what}: {reason}"));
            let code: AssetCode = t.code.parse().map_err(|e| at("code", format!("{:?} {e}", t.code)))?;
            if code == set.native {
                return Err(at("code", format!("{code} is the chain's native coin, not a token")));
            }
            if set.tokens.iter().any(|x| x.code == code) {
                return Err(at("code", format!("{code} is configured twice")));
            }
            if t.decimals > TOKEN_DECIMALS_MAX {
                return Err(at("decimals", format!("{} is over {TOKEN_DECIMALS_MAX}", t.decimals)));
            }
            let contract = parse_address(&t.contract).map_err(|e| at("contract", format!("{:?} {e}", t.contract)))?;
            if let Some(other) = set.tokens.iter().find(|x| x.contract == contract) {
                return Err(at(
                    "contract",
                    format!("{} is already configured as {}", to_lower_hex(&contract), other.code),
                ));
            }
            if !(kinko_chain::evm::NATIVE_TRANSFER_GAS..=TOKEN_TRANSFER_GAS_MAX).contains(&t.gas_limit) {
                return Err(at(
                    "gas_limit",
                    format!(
                        "{} is outside {}..={TOKEN_TRANSFER_GAS_MAX}",
                        t.gas_limit,
                        kinko_chain::evm::NATIVE_TRANSFER_GAS
                    ),
                ));
            }
            set.tokens.push(Token { code, contract, decimals: t.decimals, gas_limit: t.gas_limit });
        }
        Ok(set)
    }

    pub fn tokens(&self) -> &[Token] {
        &self.tokens
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    pub fn by_asset(&self, code: &AssetCode) -> Option<&Token> {
        self.tokens.iter().find(|t| &t.code == code)
    }

    pub fn by_contract(&self, contract: &Address) -> Option<&Token> {
        self.tokens.iter().find(|t| &t.contract == contract)
    }

    /// The contracts whose `Transfer` logs deposit detection reads.
    pub fn contracts(&self) -> BTreeSet<Address> {
        self.tokens.iter().map(|t| t.contract).collect()
    }

    /// The tokens as asset specs (for the signer's token map and the API).
    pub fn asset_specs(&self) -> Vec<AssetSpec> {
        self.tokens
            .iter()
            .map(|t| AssetSpec {
                code: t.code.clone(),
                kind: AssetKind::Erc20 { chain_id: ChainId(self.chain_id), contract: to_lower_hex(&t.contract) },
                decimals: t.decimals,
            })
            .collect()
    }

    /// The signer's EVM policy for this chain: the default fee cap and native coin, and the token map
    /// built from THIS process's configuration (the signer process reads its own file; K20, K22).
    pub fn signer_policy(&self) -> Result<kinko_signer::evm::EvmPolicy, ConfigError> {
        let mut policy = kinko_signer::evm::EvmPolicy { native_asset: self.native.to_string(), ..Default::default() };
        for spec in self.asset_specs() {
            policy.add_token(self.chain_id, &spec).map_err(|e| invalid("ethereum.tokens", e.to_string()))?;
        }
        Ok(policy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eth_config(tokens: Vec<TokenConfig>) -> EthereumConfig {
        let mut c = crate::Config::dev_default("/tmp/x".into(), "127.0.0.1:1".parse().unwrap(), "http://x:1".into());
        c.ethereum.tokens = tokens;
        c.ethereum
    }

    fn token(code: &str, contract: &str) -> TokenConfig {
        TokenConfig { code: code.into(), decimals: 6, contract: contract.into(), gas_limit: TOKEN_TRANSFER_GAS_DEFAULT }
    }

    const A: &str = "0x00000000000000000000000000000000000000aa";
    const B: &str = "0x00000000000000000000000000000000000000bb";

    /// K22, M1: `[[ethereum.tokens]]` round-trips through TOML, `gas_limit` defaults, unknown keys are refused,
    /// and `Config::validate` runs the token checks.
    #[test]
    fn k22_tokens_round_trip_through_toml_and_validate_at_load() {
        let mut c = crate::Config::dev_default("/tmp/x".into(), "127.0.0.1:1".parse().unwrap(), "http://x:1".into());
        c.ethereum.tokens = vec![token("USDC", A)];
        let text = toml::to_string(&c).unwrap();
        assert!(text.contains("[[ethereum.tokens]]"), "{text}");
        let back: crate::Config = toml::from_str(&text).unwrap();
        assert_eq!(back, c);
        back.validate().unwrap();
        let t: TokenConfig = toml::from_str(
            "code = \"DAI\"\ndecimals = 18\ncontract = \"0x00000000000000000000000000000000000000bb\"\n",
        )
        .unwrap();
        assert_eq!(t.gas_limit, TOKEN_TRANSFER_GAS_DEFAULT);
        assert!(
            toml::from_str::<TokenConfig>("code = \"DAI\"\ndecimals = 18\ncontract = \"0x00\"\nconfirmations = 3\n")
                .is_err()
        );
        c.ethereum.tokens.push(token("ETH", B));
        assert!(matches!(c.validate(), Err(ConfigError::Invalid { field: "ethereum.tokens", .. })));
    }

    /// K22, M8: token configuration is validated; errors name the entry and the field.
    #[test]
    fn k22_token_config_is_validated() {
        assert_eq!(NATIVE_ASSET.parse::<AssetCode>().unwrap().as_str(), "ETH");
        let ok = TokenSet::from_config(&eth_config(vec![token("USDC", A), token("DAI", B)])).unwrap();
        assert_eq!(ok.tokens().len(), 2);
        assert_eq!(ok.by_asset(&"DAI".parse().unwrap()).unwrap().contract, B.parse::<Address>().unwrap());
        let policy = ok.signer_policy().unwrap();
        assert_eq!(policy.tokens.len(), 2);
        let err = |tokens| match TokenSet::from_config(&eth_config(tokens)) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("accepted"),
        };
        assert!(err(vec![token("ETH", A)]).contains("[0].code"));
        assert!(err(vec![token("USDC", A), token("USDC", B)]).contains("[1].code"));
        assert!(err(vec![token("usdc", A)]).contains("[0].code"));
        assert!(err(vec![token("USDC", "0x1234")]).contains("[0].contract"));
        assert!(err(vec![token("USDC", "0x0000000000000000000000000000000000000000")]).contains("[0].contract"));
        assert!(err(vec![token("USDC", A), token("DAI", A)]).contains("[1].contract"));
        let mut t = token("USDC", A);
        t.decimals = 37;
        assert!(err(vec![t]).contains("[0].decimals"));
        let mut t = token("USDC", A);
        t.gas_limit = 10_000_000;
        assert!(err(vec![t]).contains("[0].gas_limit"));
    }
}
