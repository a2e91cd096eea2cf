//! Amounts in an asset's base unit (wei, satoshi). Never floats: an amount is a `u128` and travels as a
//! decimal string, because JSON numbers above 2^53 lose precision in most clients.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A non-negative amount in base units. `u128` covers every ETH supply with room to spare; a 256-bit
/// token amount above `u128::MAX` is refused at the edge rather than truncated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Amount(u128);

/// The longest decimal string we accept: `u128::MAX` has 39 digits.
pub const AMOUNT_DIGITS_MAX: usize = 39;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("must not be empty")]
    Empty,
    #[error("must be a decimal integer in base units (digits 0-9 only, no sign, no fraction, no exponent)")]
    NotDecimalInteger,
    #[error("must not have leading zeros")]
    LeadingZero,
    #[error("is too large (more than {AMOUNT_DIGITS_MAX} digits or above 2^128-1)")]
    TooLarge,
    #[error("must be greater than zero")]
    Zero,
    #[error("arithmetic overflow")]
    Overflow,
    #[error("arithmetic underflow")]
    Underflow,
}

impl Amount {
    pub const ZERO: Amount = Amount(0);

    pub const fn from_base_units(units: u128) -> Self {
        Amount(units)
    }

    pub const fn base_units(self) -> u128 {
        self.0
    }

    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }

    pub fn checked_add(self, other: Amount) -> Result<Amount, AmountError> {
        self.0.checked_add(other.0).map(Amount).ok_or(AmountError::Overflow)
    }

    pub fn checked_sub(self, other: Amount) -> Result<Amount, AmountError> {
        self.0.checked_sub(other.0).map(Amount).ok_or(AmountError::Underflow)
    }

    /// Parses a strictly positive amount, as every value-moving request needs.
    pub fn parse_positive(s: &str) -> Result<Amount, AmountError> {
        let amount: Amount = s.parse()?;
        if amount.is_zero() {
            return Err(AmountError::Zero);
        }
        Ok(amount)
    }

    /// Renders the amount with `decimals` places for display only (e.g. 1.5 ETH). Never parsed back.
    pub fn display_with_decimals(self, decimals: u8) -> String {
        let digits = self.0.to_string();
        let decimals = usize::from(decimals);
        if decimals == 0 {
            return digits;
        }
        let padded = format!("{digits:0>width$}", width = decimals + 1);
        let (whole, frac) = padded.split_at(padded.len() - decimals);
        let frac = frac.trim_end_matches('0');
        if frac.is_empty() { whole.to_string() } else { format!("{whole}.{frac}") }
    }
}

impl FromStr for Amount {
    type Err = AmountError;

    /// Accepts only canonical decimal integers: "0", "1", "1000". Rejects "", "+1", "-1", "1.0",
    /// "1e18", " 1", "01" and anything above `u128::MAX`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(AmountError::Empty);
        }
        if !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(AmountError::NotDecimalInteger);
        }
        if s.len() > 1 && s.starts_with('0') {
            return Err(AmountError::LeadingZero);
        }
        if s.len() > AMOUNT_DIGITS_MAX {
            return Err(AmountError::TooLarge);
        }
        s.parse::<u128>().map(Amount).map_err(|_| AmountError::TooLarge)
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl Serialize for Amount {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a3_amount_parsing_accepts_only_canonical_base_units() {
        assert_eq!("0".parse::<Amount>(), Ok(Amount(0)));
        assert_eq!("1000000000000000000".parse::<Amount>(), Ok(Amount(10u128.pow(18))));
        assert_eq!(u128::MAX.to_string().parse::<Amount>(), Ok(Amount(u128::MAX)));
        for bad in ["", "-1", "+1", "1.0", "1e18", " 1", "1 ", "0x10", "01", "１"] {
            assert!(bad.parse::<Amount>().is_err(), "{bad:?} must be rejected");
        }
        assert_eq!("340282366920938463463374607431768211456".parse::<Amount>(), Err(AmountError::TooLarge));
        assert_eq!(Amount::parse_positive("0"), Err(AmountError::Zero));
    }

    /// A3: decimals are for display only; amounts stay integers in base units.
    #[test]
    fn amounts_display_with_decimals_for_humans_only() {
        assert_eq!(Amount(1_500_000_000_000_000_000).display_with_decimals(18), "1.5");
        assert_eq!(Amount(1).display_with_decimals(18), "0.000000000000000001");
        assert_eq!(Amount(0).display_with_decimals(8), "0");
        assert_eq!(Amount(12).display_with_decimals(0), "12");
    }

    /// A3: amounts travel as decimal strings, never JSON numbers.
    #[test]
    fn amounts_serialize_as_strings() {
        let json = serde_json::to_string(&Amount(u128::MAX)).unwrap();
        assert_eq!(json, format!("\"{}\"", u128::MAX));
        assert!(serde_json::from_str::<Amount>("1").is_err(), "JSON numbers are refused");
    }

    /// A3: balance arithmetic never wraps.
    #[test]
    fn checked_arithmetic_never_wraps() {
        assert_eq!(Amount(u128::MAX).checked_add(Amount(1)), Err(AmountError::Overflow));
        assert_eq!(Amount(0).checked_sub(Amount(1)), Err(AmountError::Underflow));
    }
}
