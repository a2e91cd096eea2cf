//! Deposit detection (M6) decisions: when a deposit is credited (C2) and what a re-org does to it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DepositStatus {
    /// Seen in a block, fewer than the required confirmations.
    Pending,
    /// Credited to the customer's available balance.
    Credited,
    /// Its block was re-orged away before credit. Terminal.
    Dropped,
    /// Its block was re-orged away after credit; the credit was taken back. Terminal.
    Reversed,
}

use DepositStatus::*;

impl DepositStatus {
    pub const ALL: [DepositStatus; 4] = [Pending, Credited, Dropped, Reversed];

    pub fn as_str(self) -> &'static str {
        match self {
            Pending => "pending",
            Credited => "credited",
            Dropped => "dropped",
            Reversed => "reversed",
        }
    }

    pub fn can_become(self, next: DepositStatus) -> bool {
        matches!((self, next), (Pending, Credited | Dropped) | (Credited, Reversed))
    }

    /// What a re-org that orphans this deposit's block turns it into.
    pub fn on_orphaned(self) -> Option<DepositStatus> {
        match self {
            Pending => Some(Dropped),
            Credited => Some(Reversed),
            Dropped | Reversed => None,
        }
    }
}

impl fmt::Display for DepositStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DepositStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|x| x.as_str() == s).ok_or_else(|| format!("unknown deposit status {s:?}"))
    }
}

/// Confirmations of a transaction included at `included_at` when the chain tip is `tip`: the including
/// block itself counts as one.
pub fn confirmations(tip: u64, included_at: u64) -> u64 {
    tip.checked_sub(included_at).map_or(0, |d| d + 1)
}

/// Whether a pending deposit may be credited.
pub fn is_creditable(tip: u64, included_at: u64, confirmations_min: u64) -> bool {
    confirmations(tip, included_at) >= confirmations_min.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c2_credit_only_after_confirmations() {
        assert_eq!(confirmations(10, 10), 1);
        assert_eq!(confirmations(9, 10), 0);
        assert!(!is_creditable(11, 10, 3));
        assert!(is_creditable(12, 10, 3));
        // A depth of zero is treated as one: nothing is credited before it is in a block.
        assert!(!is_creditable(9, 10, 0));
    }

    #[test]
    fn c2_orphaned_deposits_are_dropped_or_reversed() {
        assert_eq!(Pending.on_orphaned(), Some(Dropped));
        assert_eq!(Credited.on_orphaned(), Some(Reversed));
        assert!(!Dropped.can_become(Credited));
        assert!(!Reversed.can_become(Credited));
    }
}
