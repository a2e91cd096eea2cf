//! The assets the API accepts, from configuration. Today one chain (Ethereum) with its native coin; an
//! ERC-20 is one more entry here (with its own counter or sharing the chain's addresses).

use kinko_core::{AssetCode, ChainId};

use super::problem::FieldError;
use crate::Config;

/// One supported asset and where it lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SupportedAsset {
    pub code: AssetCode,
    /// The `chain` column value for deposits, addresses and withdrawals.
    pub chain: &'static str,
    pub chain_id: ChainId,
    /// Counter that hands out deposit-address derivation indexes on this chain.
    pub deposit_index_counter: &'static str,
    /// Native coin or ERC-20 token (K22).
    pub kind: kinko_core::asset::AssetKind,
}

/// The storage name of the configured EVM chain; one definition shared with the watcher and pipeline.
pub const ETH_CHAIN: &str = crate::app::ETH_CHAIN;
pub const ETH_DEPOSIT_INDEX_COUNTER: &str = "eth_deposit_index";

pub fn supported_assets(config: &Config) -> Vec<SupportedAsset> {
    // "ETH" is a valid code (checked by the test below); the let-else keeps this path panic-free.
    let Ok(eth) = "ETH".parse::<AssetCode>() else { return Vec::new() };
    let chain_id = ChainId(config.ethereum.chain_id);
    let mut out = vec![SupportedAsset {
        code: eth,
        chain: ETH_CHAIN,
        chain_id,
        deposit_index_counter: ETH_DEPOSIT_INDEX_COUNTER,
        kind: kinko_core::asset::AssetKind::EvmNative { chain_id },
    }];
    // K22: configured ERC-20 tokens live on the same chain. Each (customer, token) gets its own deposit
    // address from the chain's counter, so one address never serves two assets. The configuration was
    // validated at load; an invalid one here offers no tokens rather than guessing.
    if let Ok(tokens) = crate::erc20::TokenSet::from_config(&config.ethereum) {
        out.extend(tokens.asset_specs().into_iter().map(|spec| SupportedAsset {
            code: spec.code,
            chain: ETH_CHAIN,
            chain_id,
            deposit_index_counter: ETH_DEPOSIT_INDEX_COUNTER,
            kind: spec.kind,
        }));
    }
    out
}

/// Resolves an asset code from a request; the error names `field`.
pub fn lookup_asset(config: &Config, field: &str, raw: &str) -> Result<SupportedAsset, FieldError> {
    let code: AssetCode = raw.parse().map_err(|e| FieldError::new(field, format!("{e}")))?;
    supported_assets(config)
        .into_iter()
        .find(|a| a.code == code)
        .ok_or_else(|| FieldError::new(field, "is not an asset this custodian supports"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a3_unknown_and_malformed_assets_name_the_field() {
        let c = Config::dev_default("/tmp/x".into(), "127.0.0.1:1".parse().unwrap(), "http://x".into());
        assert_eq!(lookup_asset(&c, "asset", "ETH").unwrap().chain, ETH_CHAIN);
        assert_eq!(lookup_asset(&c, "asset", "BTC").unwrap_err().field, "asset");
        assert_eq!(lookup_asset(&c, "asset", "eth").unwrap_err().field, "asset");
    }
}
