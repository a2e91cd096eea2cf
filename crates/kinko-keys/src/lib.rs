//! Keys (K1, K5, K6): the BIP39 master seed, BIP32 derivation, and KEK wrapping of secrets at rest.

pub mod btc;
pub mod hd;
pub mod kek;
pub mod operator_key;
pub mod seed;
pub mod shares;
