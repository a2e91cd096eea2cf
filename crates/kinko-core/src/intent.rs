//! The withdrawal intent: what the customer (or an operator) asked for, in a canonical encoding whose
//! hash operators approve and the signer checks against the transaction it is asked to sign (K20, O5).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{Amount, AssetCode, ChainId};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    /// The withdrawal this intent belongs to.
    pub id: String,
    pub asset: AssetCode,
    pub chain_id: ChainId,
    pub amount: Amount,
    /// Destination as the chain adapter normalised it (EVM: lower-case 0x-hex).
    pub destination: String,
    /// The custodian wallet paying (EVM: the hot wallet's lower-case 0x-hex address).
    pub source_wallet: String,
    pub customer_id: String,
    pub reason: String,
}

impl Intent {
    /// Canonical encoding, version 1: a domain tag, then each field as a big-endian u32 length and its
    /// UTF-8 bytes, in declaration order; the chain id as u64 and the amount as u128, big-endian.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(b"kinko-intent-v1");
        for s in [self.id.as_str(), self.asset.as_str()] {
            put(&mut out, s);
        }
        out.extend_from_slice(&self.chain_id.0.to_be_bytes());
        out.extend_from_slice(&self.amount.base_units().to_be_bytes());
        for s in [&self.destination, &self.source_wallet, &self.customer_id, &self.reason] {
            put(&mut out, s);
        }
        out
    }

    pub fn hash(&self) -> [u8; 32] {
        Sha256::digest(self.canonical_bytes()).into()
    }
}

fn put(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn intent() -> Intent {
        Intent {
            id: "w1".into(),
            asset: "ETH".parse().unwrap(),
            chain_id: ChainId(31337),
            amount: Amount::from_base_units(5),
            destination: "0x00000000000000000000000000000000000000aa".into(),
            source_wallet: "0x00000000000000000000000000000000000000bb".into(),
            customer_id: "c1".into(),
            reason: "customer withdrawal".into(),
        }
    }

    #[test]
    fn o5_every_value_moving_field_changes_the_intent_hash() {
        let base = intent().hash();
        let mut i = intent();
        i.amount = Amount::from_base_units(6);
        assert_ne!(i.hash(), base);
        let mut i = intent();
        i.destination.replace_range(41..42, "b");
        assert_ne!(i.hash(), base);
        let mut i = intent();
        i.chain_id = ChainId(1);
        assert_ne!(i.hash(), base);
        // Length prefixes keep field boundaries unambiguous.
        let mut a = intent();
        a.customer_id = "c1x".into();
        a.reason = "y".into();
        let mut b = intent();
        b.customer_id = "c1".into();
        b.reason = "xy".into();
        assert_ne!(a.hash(), b.hash());
    }
}
