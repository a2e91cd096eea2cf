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

/// Display decimals of BTC (1 BTC = 10^8 satoshi; amounts are always in satoshi).
pub const BTC_DECIMALS: u8 = 8;

/// The Bitcoin asset (issue 9), offered only when `[bitcoin]` is configured. Not a [`SupportedAsset`]: those
/// are what the EVM withdrawal pipeline, policies, tiers and sweeps can move, and BTC is deposited and held
/// but not yet withdrawn ([`not_withdrawable`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BitcoinAsset {
    pub code: AssetCode,
    /// The `chain` column value: `btc:<network>`.
    pub chain: String,
    pub network: bitcoin::Network,
    pub decimals: u8,
}

/// BTC when `[bitcoin]` is configured (validated at load; an invalid network here offers nothing).
pub fn bitcoin_asset(config: &Config) -> Option<BitcoinAsset> {
    let network = config.bitcoin.as_ref()?.network().ok()?;
    Some(BitcoinAsset {
        code: kinko_store::btc::btc_asset(),
        chain: kinko_store::btc::btc_chain(&network.to_string()),
        network,
        decimals: BTC_DECIMALS,
    })
}

/// Every asset a customer can hold, in display order: the supported (EVM) assets, then BTC when configured.
pub fn held_assets(config: &Config) -> Vec<AssetCode> {
    let mut out: Vec<AssetCode> = supported_assets(config).into_iter().map(|a| a.code).collect();
    out.extend(bitcoin_asset(config).map(|b| b.code));
    out
}

/// The refusal for moving an asset customers hold but kinko cannot send yet (BTC: the withdrawal pipeline
/// is EVM-only). `None` for every other asset, which the usual lookup then checks. 422
/// `asset-not-withdrawable`, naming the field.
pub fn not_withdrawable(config: &Config, field: &str, raw: &str) -> Option<super::problem::Problem> {
    let btc = bitcoin_asset(config)?;
    (raw == btc.code.as_str()).then(|| {
        super::problem::Problem::field(
            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            "asset-not-withdrawable",
            "asset not withdrawable",
            field,
            "BTC withdrawals are not available yet",
        )
        .detail("BTC withdrawals are not available yet")
    })
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

    /// M9, issue 9: BTC is held (balances) only with `[bitcoin]`, and moving it is refused with its own
    /// problem type naming the field; other assets pass through to the usual lookup.
    #[test]
    fn m9_btc_held_only_with_bitcoin_and_not_withdrawable() {
        let mut c = Config::dev_default("/tmp/x".into(), "127.0.0.1:1".parse().unwrap(), "http://x".into());
        assert!(bitcoin_asset(&c).is_none() && not_withdrawable(&c, "asset", "BTC").is_none());
        assert_eq!(held_assets(&c).iter().map(|a| a.as_str()).collect::<Vec<_>>(), ["ETH"]);
        c.bitcoin = Some(crate::config::BitcoinConfig {
            network: "regtest".into(),
            rpc_url: "http://127.0.0.1:18443/".into(),
            rpc_user: None,
            rpc_password_file: None,
            account_xpub: String::new(),
            master_fingerprint: String::new(),
            confirmations: None,
            poll_interval_ms: 1_000,
        });
        let btc = bitcoin_asset(&c).unwrap();
        assert_eq!((btc.chain.as_str(), btc.decimals), ("btc:regtest", 8));
        assert_eq!(held_assets(&c).iter().map(|a| a.as_str()).collect::<Vec<_>>(), ["ETH", "BTC"]);
        let p = not_withdrawable(&c, "asset", "BTC").unwrap();
        assert_eq!(p.status, axum::http::StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(p.body.kind, "urn:kinko:problem:asset-not-withdrawable");
        assert_eq!(p.body.errors[0].field, "asset");
        assert!(not_withdrawable(&c, "asset", "ETH").is_none());
        assert!(lookup_asset(&c, "asset", "BTC").is_err(), "BTC is not an EVM pipeline asset");
    }
}
