//! EVM addresses from outside input. A mixed-case address must carry a valid EIP-55 checksum: a typo
//! in a checksummed address is the most common way to send funds nowhere, so it is refused, not fixed.
//! All-lower-case and all-upper-case hex carry no checksum and are accepted as written.

use alloy_primitives::Address;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("must start with 0x")]
    MissingPrefix,
    #[error("must be 0x followed by 40 hexadecimal digits")]
    Malformed,
    #[error("has an invalid EIP-55 checksum (mixed case that does not match)")]
    BadChecksum,
    #[error("must not be the zero address")]
    Zero,
}

/// Parses an address a person or client typed.
pub fn parse_address(s: &str) -> Result<Address, AddressError> {
    let hex = s.strip_prefix("0x").ok_or(AddressError::MissingPrefix)?;
    if hex.len() != 40 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(AddressError::Malformed);
    }
    let has_lower = hex.bytes().any(|b| b.is_ascii_lowercase());
    let has_upper = hex.bytes().any(|b| b.is_ascii_uppercase());
    let address = if has_lower && has_upper {
        Address::parse_checksummed(s, None).map_err(|_| AddressError::BadChecksum)?
    } else {
        s.parse::<Address>().map_err(|_| AddressError::Malformed)?
    };
    if address.is_zero() {
        return Err(AddressError::Zero);
    }
    Ok(address)
}

/// The form kinko stores and compares: lower-case 0x-hex.
pub fn to_lower_hex(address: &Address) -> String {
    format!("{address:#x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a3_addresses_with_bad_checksums_are_refused() {
        let good = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266";
        assert_eq!(to_lower_hex(&parse_address(good).unwrap()), "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266");
        assert!(parse_address(&good.to_ascii_lowercase()).is_ok());
        assert!(parse_address(&format!("0x{}", good[2..].to_ascii_uppercase())).is_ok());
        assert_eq!(parse_address("0xF39Fd6e51aad88F6F4ce6aB8827279cffFb92266"), Err(AddressError::BadChecksum));
        assert_eq!(parse_address("f39fd6e51aad88f6f4ce6ab8827279cfffb92266"), Err(AddressError::MissingPrefix));
        assert_eq!(parse_address("0x1234"), Err(AddressError::Malformed));
        assert_eq!(parse_address("0xg39fd6e51aad88f6f4ce6ab8827279cfffb92266"), Err(AddressError::Malformed));
        assert_eq!(parse_address("0x0000000000000000000000000000000000000000"), Err(AddressError::Zero));
    }
}
