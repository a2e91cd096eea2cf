//! Assets and chains. An asset code is what customers and operators see ("ETH"); its chain and decimals
//! come from configuration. Decimals are for display only: every amount is in base units.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An EVM chain id (EIP-155). Every signed EVM transaction commits to it, so a signature for one chain
/// cannot be replayed on a fork or another network (C3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ChainId(pub u64);

impl fmt::Display for ChainId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Asset codes: 2 to 12 characters, upper-case ASCII letters and digits, starting with a letter.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AssetCode(String);

pub const ASSET_CODE_LEN_MAX: usize = 12;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssetError {
    #[error("must be 2 to {ASSET_CODE_LEN_MAX} upper-case letters or digits, starting with a letter")]
    Malformed,
    #[error("is not an asset this custodian supports")]
    Unknown,
}

impl AssetCode {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for AssetCode {
    type Err = AssetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = (2..=ASSET_CODE_LEN_MAX).contains(&s.len())
            && s.bytes().next().is_some_and(|b| b.is_ascii_uppercase())
            && s.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
        if ok { Ok(AssetCode(s.to_string())) } else { Err(AssetError::Malformed) }
    }
}

impl fmt::Display for AssetCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for AssetCode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for AssetCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// How an asset moves on its chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AssetKind {
    /// The chain's native coin (ETH on an EVM chain).
    EvmNative { chain_id: ChainId },
    /// An ERC-20 token: moved by a `transfer(address,uint256)` call to `contract` (lower-case 0x-hex),
    /// which is also what the signer checks a token payload against (K20).
    Erc20 { chain_id: ChainId, contract: String },
}

/// One supported asset.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssetSpec {
    pub code: AssetCode,
    pub kind: AssetKind,
    /// For display only.
    pub decimals: u8,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// M8: asset codes from input are validated.
    #[test]
    fn asset_codes_are_validated() {
        assert!("ETH".parse::<AssetCode>().is_ok());
        assert!("USDC2".parse::<AssetCode>().is_ok());
        for bad in ["", "E", "eth", "1ETH", "ETH-X", "ABCDEFGHIJKLM"] {
            assert_eq!(bad.parse::<AssetCode>(), Err(AssetError::Malformed), "{bad:?}");
        }
    }

    /// C1, M8: asset kinds (native, ERC-20) round-trip with an explicit tag.
    #[test]
    fn asset_kinds_serialise_with_a_kind_tag() {
        let usdc =
            AssetKind::Erc20 { chain_id: ChainId(1), contract: "0x00000000000000000000000000000000000000cc".into() };
        let json = serde_json::to_value(&usdc).unwrap();
        assert_eq!(json["kind"], "erc20");
        assert_eq!(serde_json::from_value::<AssetKind>(json).unwrap(), usdc);
    }
}
